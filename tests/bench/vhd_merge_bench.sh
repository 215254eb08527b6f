#!/usr/bin/env bash
# Benchmark of `vhd merge` (not a test; nothing here gates CI): merging a
# child that holds 2 GiB of data into its parent, against a flat `vhd
# convert` of the same chain (the same 2 GiB read and written into a new
# dynamic image), in one run on the same disk. Goal: merge at least as fast
# as the convert.
#
# qemu-img has no peer for this: it cannot open, create or commit
# differencing VHDs (its vpc driver refuses them). The closest thing it
# does, `qemu-img convert -O vpc` of the same 2 GiB as a raw file, is timed
# for reference.
#
# Usage: tests/bench/vhd_merge_bench.sh [BUILD_DIR]
#   BENCH_DIR   where the images go (default /var/tmp; must do O_DIRECT)
#   MERGE_MIB   data in the child, in MiB (default 2048)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
VHD=$build/bin/vhd
[ -x "$VHD" ] || { echo "build first: $VHD not found" >&2; exit 1; }

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-merge-bench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
mib=${MERGE_MIB:-2048}
size=$(((mib + 64) * 1048576))

echo "hvstor merge benchmark: $(date -u '+%F %T UTC'), $(nproc) CPUs, images in $dir"
echo "disk: $(df -h "$dir" | awk 'NR==2 {print $1, $2}')"

# Seconds the command takes, whole process.
secs()
{
    local t0 t1
    t0=$(date +%s%N)
    "$@" >"$dir/out.log" 2>&1 || { cat "$dir/out.log" >&2; exit 1; }
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'
}
mbs() { awk -v s="$1" -v m="$mib" 'BEGIN { printf "%.0f", m / s }'; }

# The chain: an empty dynamic parent, a child with MERGE_MIB of data written
# through the engine with O_DIRECT (1 MiB requests), so that nothing of it is
# in the page cache and both runs read it from the disk.
"$VHD" create -t dynamic -s "$size" "$dir/parent.vhd" >/dev/null
"$VHD" create -t differencing -b "$dir/parent.vhd" "$dir/child.vhd" >/dev/null
"$VHD" bench -w -q -t none -s 1M -d 16 -c "$mib" --pattern=90 "$dir/child.vhd"
sync

t_convert=$(secs "$VHD" convert -t dynamic "$dir/child.vhd" "$dir/flat.vhd")
rm -f "$dir/flat.vhd"
t_merge=$(secs "$VHD" merge "$dir/child.vhd")
"$VHD" check "$dir/parent.vhd" >/dev/null || { echo "merged parent is not clean" >&2; exit 1; }

qemu=""
if command -v qemu-img >/dev/null; then
    "$VHD" convert -O raw "$dir/parent.vhd" "$dir/data.raw" >/dev/null
    sync
    t_qemu=$(secs qemu-img convert -f raw -O vpc -t none "$dir/data.raw" "$dir/qemu.vhd")
    qemu=1
fi

echo
printf "  %-46s %7.3f s %6s MiB/s\n" "vhd merge (child into parent)" "$t_merge" "$(mbs "$t_merge")"
printf "  %-46s %7.3f s %6s MiB/s\n" "vhd convert (same chain, flat dynamic)" "$t_convert" \
    "$(mbs "$t_convert")"
[ -n "$qemu" ] && printf "  %-46s %7.3f s %6s MiB/s\n" \
    "qemu-img convert -O vpc (same data, raw source)" "$t_qemu" "$(mbs "$t_qemu")"
echo
printf "  merge vs convert: %sx (goal >= 1.00)\n" \
    "$(awk -v a="$t_merge" -v b="$t_convert" 'BEGIN { printf "%.2f", b / a }')"
[ -n "$qemu" ] && printf "  merge vs qemu-img convert -O vpc: %sx (no qemu-img equivalent of a merge)\n" \
    "$(awk -v a="$t_merge" -v b="$t_qemu" 'BEGIN { printf "%.2f", b / a }')"
exit 0
