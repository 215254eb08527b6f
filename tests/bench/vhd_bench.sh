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
#   BENCH_ROUNDS rounds of the write/read benchmarks (default 3; medians)
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

# CMD...: run; print "RUN WALL": the seconds of "Run completed in X seconds."
# and the wall-clock seconds of the whole process (open and close included:
# the engine writes its BAT back at close, qemu's vpc while running).
secs()
{
    local t0 t1
    t0=$(date +%s%N)
    "$@" >"$dir/out.log" 2>&1 || { cat "$dir/out.log" >&2; exit 1; }
    t1=$(date +%s%N)
    echo "$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' "$dir/out.log")" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
}
run_of() { echo "${1% *}"; }
wall_of() { echo "${1#* }"; }
mbs() { awk -v s="$1" -v m="$mib" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }   # speed a vs b = tb/ta

line()  # LABEL "RUN WALL" "PEER_RUN PEER_WALL" PEER_NAME
{
    local r w pr pw
    r=$(run_of "$2"); w=$(wall_of "$2"); pr=$(run_of "$3"); pw=$(wall_of "$3")
    printf "  %-34s %7.3f s %6s MiB/s %5sx | whole process %6.3f s %5sx  %s\n" "$1" "$r" \
        "$(mbs "$r")" "$(ratio "$r" "$pr")" "$w" "$(ratio "$w" "$pw")" "$4"
}

# Rounds of (fresh images, allocating writes, rewrites, reads); each figure
# is the median over the rounds, because the disk is shared and noisy.
# The raw peer uses native AIO, its faster mode here (aio=threads is shown
# once for reference); the vpc peer runs as qemu-img bench does by default.
rounds=${BENCH_ROUNDS:-3}
declare -A res
median3() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }'; }
pick()  # KIND: "RUN WALL" medians over the rounds
{
    local runs=() walls=() i
    for ((i = 1; i <= rounds; i++)); do
        runs+=("$(run_of "${res[$1.$i]}")"); walls+=("$(wall_of "${res[$1.$i]}")")
    done
    echo "$(median3 "${runs[@]}") $(median3 "${walls[@]}")"
}
all_runs() { local i o=""; for ((i = 1; i <= rounds; i++)); do o+="$(run_of "${res[$1.$i]}") "; done; echo "$o"; }

truncate -s "$size" "$dir/threads.img"
t_raw_threads=$(secs qemu-img bench -f raw -w -t none "${common[@]}" "$dir/threads.img")
rm -f "$dir/threads.img"
for ((i = 1; i <= rounds; i++)); do
    rm -f "$dir"/*.img "$dir"/*.vhd
    truncate -s "$size" "$dir/raw.img"
    "$VHD" create --type dynamic --size "$size" "$dir/hv.vhd" >/dev/null
    qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$dir/qemu.vhd" "$size"
    res[a_raw.$i]=$(secs qemu-img bench -f raw -w -t none -i native "${common[@]}" "$dir/raw.img")
    res[a_hv.$i]=$(secs "$VHD" bench -w -t none "${common[@]}" "$dir/hv.vhd")
    res[a_qv.$i]=$(secs qemu-img bench -f vpc -w -t none "${common[@]}" "$dir/qemu.vhd")
    res[r_raw.$i]=$(secs qemu-img bench -f raw -w -t none -i native "${common[@]}" "$dir/raw.img")
    res[r_hv.$i]=$(secs "$VHD" bench -w -t none "${common[@]}" "$dir/hv.vhd")
    res[r_qv.$i]=$(secs qemu-img bench -f vpc -w -t none "${common[@]}" "$dir/qemu.vhd")
    rd=(-s 64k -d 16 -c "$count")
    res[d_raw.$i]=$(secs qemu-img bench -f raw -t none -i native "${rd[@]}" "$dir/raw.img")
    res[d_hv.$i]=$(secs "$VHD" bench -t none "${rd[@]}" "$dir/hv.vhd")
    res[d_qv.$i]=$(secs qemu-img bench -f vpc -t none "${rd[@]}" "$dir/qemu.vhd")
    "$VHD" check "$dir/hv.vhd" >/dev/null ||
        echo "  WARNING: vhd check of the benchmarked image is not clean (round $i)"
done
rm -f "$dir"/*.img "$dir"/*.vhd

echo "1. allocating writes: ${mib} MiB as 64 KiB writes, QD16, O_DIRECT (-t none), fresh images"
echo "   command: vhd bench -w -t none -s 64k -d 16 -c $count --pattern=165 FILE (qemu-img bench: same flags)"
echo "   columns: the run as the tool reports it, MiB/s, ratio to the peer | the whole process (open+close)"
t_raw=$(pick a_raw); t_hv=$(pick a_hv); t_qv=$(pick a_qv)
line "raw file (qemu-img bench -f raw)" "$t_raw" "$t_raw" "raw"
line "qemu vpc (qemu-img bench -f vpc)" "$t_qv" "$t_raw" "raw"
line "hvstor dynamic VHD (vhd bench)" "$t_hv" "$t_raw" "raw (goal >= 0.80)"
echo "   medians of $rounds rounds; runs (s): raw $(all_runs a_raw)| vpc $(all_runs a_qv)| hvstor $(all_runs a_hv)"
echo "   (raw with aio=threads instead of native: $(run_of "$t_raw_threads") s)"
alloc_ratio=$(ratio "$(run_of "$t_hv")" "$(run_of "$t_raw")")
alloc_ratio_wall=$(ratio "$(wall_of "$t_hv")" "$(wall_of "$t_raw")")
echo

echo "2. rewrites of the allocated range (same command again)"
r_raw=$(pick r_raw); r_hv=$(pick r_hv); r_qv=$(pick r_qv)
line "raw file" "$r_raw" "$r_raw" "raw"
line "qemu vpc" "$r_qv" "$r_raw" "raw"
line "hvstor dynamic VHD" "$r_hv" "$r_raw" "raw (goal >= 0.90)"
echo "   runs (s): raw $(all_runs r_raw)| vpc $(all_runs r_qv)| hvstor $(all_runs r_hv)"
rewrite_ratio=$(ratio "$(run_of "$r_hv")" "$(run_of "$r_raw")")
echo

echo "3. reads of the allocated range (64 KiB, QD16, O_DIRECT)"
d_raw=$(pick d_raw); d_hv=$(pick d_hv); d_qv=$(pick d_qv)
line "raw file" "$d_raw" "$d_raw" "raw"
line "qemu vpc" "$d_qv" "$d_raw" "raw"
line "hvstor dynamic VHD" "$d_hv" "$d_raw" "raw (goal >= 0.90)"
echo "   runs (s): raw $(all_runs d_raw)| vpc $(all_runs d_qv)| hvstor $(all_runs d_hv)"
read_ratio=$(ratio "$(run_of "$d_hv")" "$(run_of "$d_raw")")
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
c_q=$(median3 "${q_ms[@]}"); c_qn=$(median3 "${qn_ms[@]}"); c_hv=$(median3 "${hv_ms[@]}")
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

echo "summary: allocating writes ${alloc_ratio}x raw (${alloc_ratio_wall}x whole process; goal 0.8), rewrites ${rewrite_ratio}x raw (0.9)," \
     "reads ${read_ratio}x raw (0.9), convert ${convert_ratio}x qemu-img / ${convert_ratio_none}x qemu-img -t none (2)"
