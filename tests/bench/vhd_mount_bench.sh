#!/usr/bin/env bash
# Sequential throughput of a `vhd mount`ed disk file against the same dd on
# a plain file on the same file system (the peer: what the host's page cache
# and disk give without FUSE and VHD), in one run. Not a test.
#   write: dd bs=4M conv=fsync of random data into a fresh dynamic VHD
#   read:  dd bs=4M of it back, page cache dropped first
# Modes: the default (page cache, write-through in 1 MiB requests, 4 MiB
# readahead) and -o direct_io.
#
# Usage: tests/bench/vhd_mount_bench.sh [BUILD_DIR]    (root: drops caches)
#   BENCH_DIR (default /var/tmp), BENCH_MIB (default 1024)
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$top/build}
VHD=$build/bin/vhd
[ -x "$VHD" ] || { echo "build first: $VHD not found" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "no /dev/fuse" >&2; exit 1; }

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-mount-bench-XXXXXX")
mnt=$dir/mnt
mkdir "$mnt"
trap 'mountpoint -q "$mnt" && "$VHD" unmount "$mnt"; rm -rf "$dir"' EXIT
mib=${BENCH_MIB:-1024}

settle() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
secs()   # CMD...: wall seconds
{
    local t0 t1
    t0=$(date +%s%N)
    "$@"
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'
}
mbs() { awk -v s="$1" -v m="$mib" 'BEGIN { printf "%.0f", m / s }'; }

head -c $((mib * 1048576)) /dev/urandom >"$dir/src"
echo "vhd mount benchmark: $(date -u '+%F %T UTC'), $(nproc) CPUs, $mib MiB, in $dir"
printf "  %-28s %8s %7s %8s %7s\n" "" "write s" "MiB/s" "read s" "MiB/s"

settle
w=$(secs dd if="$dir/src" of="$dir/plain" bs=4M conv=fsync status=none)
settle
r=$(secs dd if="$dir/plain" of=/dev/null bs=4M status=none)
printf "  %-28s %8.3f %7s %8.3f %7s\n" "plain file (peer)" "$w" "$(mbs "$w")" "$r" "$(mbs "$r")"
rm -f "$dir/plain"

for mode in "" direct_io; do
    rm -f "$dir/d.vhd"
    "$VHD" create -t dynamic -s $(((mib + 16) * 1048576)) "$dir/d.vhd" >/dev/null
    "$VHD" mount ${mode:+-o "$mode"} "$dir/d.vhd" "$mnt"
    settle
    w=$(secs dd if="$dir/src" of="$mnt/disk" bs=4M conv=notrunc,fsync status=none)
    settle
    r=$(secs dd if="$mnt/disk" of=/dev/null bs=4M count=$((mib / 4)) status=none)
    "$VHD" unmount "$mnt"
    printf "  %-28s %8.3f %7s %8.3f %7s\n" "vhd mount ${mode:-(default)}" "$w" "$(mbs "$w")" \
        "$r" "$(mbs "$r")"
done
