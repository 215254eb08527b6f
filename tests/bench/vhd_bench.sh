#!/usr/bin/env bash
# Benchmark of the VHD engine and `vhd convert` against their real peers, in
# one run on the same disk (not a test; nothing here gates CI):
#   1. 64 KiB writes at queue depth 16 with O_DIRECT into a fresh image:
#      hvstor dynamic VHD (`vhd bench`) vs a sparse raw file and a fresh
#      dynamic vpc (`qemu-img bench -f raw|vpc`);
#   2. the same writes again over the now allocated images (rewrites);
#   3. the same pattern read back;
#   4. `vhd convert` vs `qemu-img convert -O vpc` of a half-zero 2 GiB raw.
# Goals: allocating writes >= 0.8x raw, rewrites and reads >= 0.9x raw,
# convert >= 2x qemu-img.
#
# Usage: tests/bench/vhd_bench.sh [BUILD_DIR]
#   BENCH_DIR   where the images go (default /var/tmp; must do O_DIRECT)
#   BENCH_MIB   bytes written by the bench runs, in MiB (default 1024)
#   CONVERT_MIB size of the convert source, in MiB (default 2048)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
VHD=$build/bin/vhd
[ -x "$VHD" ] || { echo "build first: $VHD not found" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img is needed" >&2; exit 1; }

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-bench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
mib=${BENCH_MIB:-1024}
count=$((mib * 16))                    # 64 KiB requests
size=$(((mib + 2) * 1048576))          # room so that no run wraps around
cmib=${CONVERT_MIB:-2048}
common=(-s 64k -d 16 -c "$count" --pattern=165)

echo "hvstor VHD benchmark: $(date -u '+%F %T UTC'), $(nproc) CPUs, images in $dir"
echo "disk: $(df -h "$dir" | awk 'NR==2 {print $1, $2}'), qemu: $(qemu-img --version | head -1)"
echo

secs()  # CMD...: run, print the seconds from "Run completed in X seconds."
{
    "$@" >"$dir/out.log" 2>&1 || { cat "$dir/out.log" >&2; exit 1; }
    sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' "$dir/out.log"
}
mbs() { awk -v s="$1" -v m="$mib" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }   # speed a vs b = tb/ta

line()  # LABEL SECONDS PEER_SECONDS PEER_NAME
{
    printf "  %-34s %7.3f s %6s MiB/s   %sx %s\n" "$1" "$2" "$(mbs "$2")" "$(ratio "$2" "$3")" "$4"
}

rm -f "$dir"/*.img "$dir"/*.vhd
truncate -s "$size" "$dir/raw.img"
"$VHD" create --type dynamic --size "$size" "$dir/hv.vhd" >/dev/null
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$dir/qemu.vhd" "$size"

echo "1. allocating writes: ${mib} MiB as 64 KiB writes, QD16, O_DIRECT (-t none), fresh images"
# The raw peer gets its faster AIO mode (threads or native) so it is not
# handicapped; the vpc peer runs as qemu-img bench does by default.
t_raw_threads=$(secs qemu-img bench -f raw -w -t none "${common[@]}" "$dir/raw.img")
rm -f "$dir/raw.img"; truncate -s "$size" "$dir/raw.img"
t_raw_native=$(secs qemu-img bench -f raw -w -t none -i native "${common[@]}" "$dir/raw.img")
t_raw=$(awk -v a="$t_raw_threads" -v b="$t_raw_native" 'BEGIN { print (a < b ? a : b) }')
t_hv=$(secs "$VHD" bench -w -t none "${common[@]}" "$dir/hv.vhd")
t_qv=$(secs qemu-img bench -f vpc -w -t none "${common[@]}" "$dir/qemu.vhd")
echo "  command: vhd bench -w -t none -s 64k -d 16 -c $count --pattern=165 FILE"
line "raw file (qemu-img bench -f raw)" "$t_raw" "$t_raw" "raw"
line "qemu vpc (qemu-img bench -f vpc)" "$t_qv" "$t_raw" "raw"
line "hvstor dynamic VHD (vhd bench)" "$t_hv" "$t_raw" "raw (goal >= 0.80)"
echo "  (raw: threads $t_raw_threads s, native $t_raw_native s)"
alloc_ratio=$(ratio "$t_hv" "$t_raw")
echo

echo "2. rewrites of the allocated range (same command again)"
r_raw=$(secs qemu-img bench -f raw -w -t none -i native "${common[@]}" "$dir/raw.img")
r_hv=$(secs "$VHD" bench -w -t none "${common[@]}" "$dir/hv.vhd")
r_qv=$(secs qemu-img bench -f vpc -w -t none "${common[@]}" "$dir/qemu.vhd")
line "raw file" "$r_raw" "$r_raw" "raw"
line "qemu vpc" "$r_qv" "$r_raw" "raw"
line "hvstor dynamic VHD" "$r_hv" "$r_raw" "raw (goal >= 0.90)"
rewrite_ratio=$(ratio "$r_hv" "$r_raw")
echo

echo "3. reads of the allocated range (64 KiB, QD16, O_DIRECT)"
rd=(-s 64k -d 16 -c "$count")
d_raw=$(secs qemu-img bench -f raw -t none -i native "${rd[@]}" "$dir/raw.img")
d_hv=$(secs "$VHD" bench -t none "${rd[@]}" "$dir/hv.vhd")
d_qv=$(secs qemu-img bench -f vpc -t none "${rd[@]}" "$dir/qemu.vhd")
line "raw file" "$d_raw" "$d_raw" "raw"
line "qemu vpc" "$d_qv" "$d_raw" "raw"
line "hvstor dynamic VHD" "$d_hv" "$d_raw" "raw (goal >= 0.90)"
read_ratio=$(ratio "$d_hv" "$d_raw")
"$VHD" check "$dir/hv.vhd" >/dev/null || echo "  WARNING: vhd check of the benchmarked image is not clean"
rm -f "$dir/raw.img" "$dir/hv.vhd" "$dir/qemu.vhd"
echo

echo "4. convert a half-zero ${cmib} MiB raw (every other 2 MiB random, the rest holes) to a dynamic VHD"
truncate -s $((cmib * 1048576)) "$dir/src.raw"
for ((i = 0; i < cmib / 2; i += 2)); do echo "$i"; done |
    xargs -P 2 -I{} sh -c "head -c 2097152 /dev/urandom | dd of='$dir/src.raw' bs=2M seek={} conv=notrunc status=none"
sync
cat "$dir/src.raw" >/dev/null          # same starting point: source in the page cache
ms()  # CMD...: wall-clock milliseconds, including the final flush
{
    local t0 t1
    t0=$(date +%s%N)
    "$@" >"$dir/out.log" 2>&1 || { cat "$dir/out.log" >&2; exit 1; }
    sync -f "$dir"
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
# Three rounds, alternating, median of each: the disk is shared and noisy.
# Every time includes making the output durable (syncfs): vhd convert
# returns with its output durable; qemu-img convert's default output cache
# is "unsafe" (no flush), so its output is synced by hand to compare equal
# work. -t none is qemu's crash-safe mode (O_DIRECT, a flush per BAT update).
q_ms=(); qn_ms=(); hv_ms=()
for round in 1 2 3; do
    rm -f "$dir/q.vhd" "$dir/qn.vhd" "$dir/h.vhd"
    q_ms+=("$(ms qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$dir/src.raw" "$dir/q.vhd")")
    hv_ms+=("$(ms "$VHD" convert -f raw -O vhd "$dir/src.raw" "$dir/h.vhd")")
    qn_ms+=("$(ms qemu-img convert -t none -f raw -O vpc -o subformat=dynamic,force_size=on "$dir/src.raw" "$dir/qn.vhd")")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
c_q=$(median "${q_ms[@]}"); c_qn=$(median "${qn_ms[@]}"); c_hv=$(median "${hv_ms[@]}")
sec() { awk -v m="$1" 'BEGIN { printf "%.3f", m / 1000 }'; }
echo "  (medians of 3 rounds; ms per round: qemu ${q_ms[*]}; qemu -t none ${qn_ms[*]}; vhd ${hv_ms[*]})"
printf "  %-58s %7s s\n" "qemu-img convert -f raw -O vpc SRC DST (+ sync)" "$(sec "$c_q")"
printf "  %-58s %7s s\n" "qemu-img convert -t none -f raw -O vpc SRC DST" "$(sec "$c_qn")"
printf "  %-58s %7s s   %sx qemu-img, %sx qemu-img -t none (goal >= 2)\n" \
    "vhd convert -f raw -O vhd SRC DST" "$(sec "$c_hv")" "$(ratio "$c_hv" "$c_q")" "$(ratio "$c_hv" "$c_qn")"
convert_ratio=$(ratio "$c_hv" "$c_q")
convert_ratio_none=$(ratio "$c_hv" "$c_qn")
"$VHD" compare "$dir/h.vhd" "$dir/src.raw" >/dev/null && echo "  vhd compare: output identical to the source" ||
    echo "  WARNING: vhd convert output differs from the source"
qemu-img compare -q -f vpc -F raw "$dir/h.vhd" "$dir/src.raw" && echo "  qemu-img compare: identical" ||
    echo "  WARNING: qemu-img reads the vhd convert output differently"
echo "  file sizes: vhd $(du -h --apparent-size "$dir/h.vhd" | cut -f1), qemu $(du -h --apparent-size "$dir/q.vhd" | cut -f1)"
echo

echo "summary: allocating writes ${alloc_ratio}x raw (goal 0.8), rewrites ${rewrite_ratio}x raw (0.9)," \
     "reads ${read_ratio}x raw (0.9), convert ${convert_ratio}x qemu-img / ${convert_ratio_none}x qemu-img -t none (2)"
