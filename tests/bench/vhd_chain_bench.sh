#!/usr/bin/env bash
# Reads through differencing chains of depth 1, 4 and 16 against a flat
# image of the same data, in one run on the same disk (not a test).
#
# Each chain: a dynamic base full of random data, then depth-1 differencing
# images, each of which wrote 64 KiB into every 2 MiB block at its own place
# (a snapshot's worth of scattered writes: every layer holds a piece of
# every block, so a read must consult every layer's bitmap). The flat image
# is `vhd convert` of that chain (one dynamic VHD), and a raw copy is the
# floor. A second set puts 15 empty differencing images over the base: pure
# chain-walk cost, no extra fragmentation.
# Reads: `vhd bench -t none` (O_DIRECT): 1 MiB requests over the whole disk
# at queue depth 16 and over half of it at depth 1 (latency of a request
# split across layers), 4 KiB requests at depth 32 over the first quarter.
# Chain and flat runs alternate; the best of BENCH_RUNS counts.
# Goal: depth 16 within 0.8x of flat (ratio = flat time / chain time >= 0.8).
#
# Usage: tests/bench/vhd_chain_bench.sh [BUILD_DIR]
#   BENCH_DIR   where the images go (default /var/tmp; must do O_DIRECT)
#   BENCH_MIB   virtual disk size in MiB (default 1024)
#   BENCH_RUNS  runs per measurement, the best counts (default 3)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
VHD=$build/bin/vhd
[ -x "$VHD" ] || { echo "build first: $VHD not found" >&2; exit 1; }

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-chain-bench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
mib=${BENCH_MIB:-1024}
runs=${BENCH_RUNS:-3}
size=$((mib * 1048576))
blocks=$((mib / 2))

echo "hvstor chain read benchmark: $(date -u '+%F %T UTC'), $(nproc) CPUs, ${mib} MiB disk in $dir"

# Dirty pages of freshly written images would be written back under the
# first O_DIRECT read: settle them before any measurement.
settle() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }

# "Run completed in X seconds" of one vhd bench ARGS...
one()
{
    "$VHD" bench -t none "$@" >"$dir/out.log" 2>&1 || { cat "$dir/out.log" >&2; exit 1; }
    sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' "$dir/out.log"
}
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a < b) ? a : b }'; }

# pair "BENCH ARGS" CHAIN FLAT: best of $runs for each, runs alternating so
# that the machine's other load falls on both alike. Prints "CHAIN FLAT".
pair()
{
    local i c="" f=""
    settle
    for ((i = 0; i < runs; i++)); do
        c=$(min "$(one $1 "$2")" "$c")
        f=$(min "$(one $1 "$3")" "$f")
    done
    echo "$c $f"
}
mbs() { awk -v s="$1" -v m="$2" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v chain="$1" -v flat="$2" 'BEGIN { printf "%.2f", flat / chain }'; }

head -c "$size" /dev/urandom >"$dir/data.raw"
"$VHD" convert -O vhd "$dir/data.raw" "$dir/base.vhd" >/dev/null

declare -A tops
# chain DEPTH: base copy + DEPTH-1 layers of scattered writes; prints top path.
chain()
{
    local d=$1 i prev
    mkdir -p "$dir/c$d"
    cp "$dir/base.vhd" "$dir/c$d/l0.vhd"
    prev=$dir/c$d/l0.vhd
    for ((i = 1; i < d; i++)); do
        "$VHD" create -t differencing -b "$prev" "$dir/c$d/l$i.vhd" >/dev/null
        "$VHD" bench -w -q -t none -s 64k -S 2M -o $((i * 65536)) -c "$blocks" -d 16 \
            --pattern=$((i + 1)) "$dir/c$d/l$i.vhd"
        prev=$dir/c$d/l$i.vhd
    done
    echo "$prev"
}

for d in 1 4 16; do
    tops[$d]=$(chain "$d")
    "$VHD" convert "${tops[$d]}" "$dir/flat$d.vhd" >/dev/null
done
"$VHD" convert -O raw "${tops[16]}" "$dir/flat16.raw" >/dev/null

# row LABEL "BENCH ARGS" CHAIN FLAT MIB
row()
{
    local t
    t=$(pair "$2" "$3" "$4")
    printf "  %-30s %9.3f %8s %9.3f %7sx\n" "$1" "${t% *}" "$(mbs "${t% *}" "$5")" "${t#* }" \
        "$(ratio "${t% *}" "${t#* }")"
}

printf "\n  %-30s %9s %8s %9s %8s\n" "O_DIRECT reads" "chain s" "MiB/s" "flat s" "ratio"
for d in 1 4 16; do
    row "depth $d, 1 MiB QD16" "-s 1M -d 16 -c $mib" "${tops[$d]}" "$dir/flat$d.vhd" "$mib"
done
for d in 1 4 16; do
    row "depth $d, 1 MiB QD1" "-s 1M -d 1 -c $((mib / 2))" "${tops[$d]}" "$dir/flat$d.vhd" \
        $((mib / 2))
done
for d in 1 4 16; do
    row "depth $d, 4 KiB QD32" "-s 4k -d 32 -c $((mib * 64))" "${tops[$d]}" "$dir/flat$d.vhd" \
        $((mib / 4))
done
row "depth 16 vs raw, 1 MiB QD16" "-s 1M -d 16 -c $mib" "${tops[16]}" "$dir/flat16.raw" "$mib"

# Pure walk: 15 empty differencing images over the base.
mkdir -p "$dir/e"
prev=$dir/base.vhd
for ((i = 1; i < 16; i++)); do
    "$VHD" create -t differencing -b "$prev" "$dir/e/l$i.vhd" >/dev/null
    prev=$dir/e/l$i.vhd
done
row "15 empty layers, 1 MiB QD16" "-s 1M -d 16 -c $mib" "$prev" "$dir/base.vhd" "$mib"
row "15 empty layers, 4 KiB QD32" "-s 4k -d 32 -c $((mib * 64))" "$prev" "$dir/base.vhd" \
    $((mib / 4))
echo
echo "ratio = flat time / chain time (1.00 = as fast as flat; goal for depth 16: >= 0.80)"
