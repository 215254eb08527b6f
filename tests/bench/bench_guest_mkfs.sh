#!/usr/bin/env bash
# A real Linux guest formats a 40 GiB disk with mkfs.ext4: a dynamic VHD
# behind hvstord against a sparse raw file behind tgt (tgtd on another
# loopback port), same guest, same kernel, same QEMU (virtio-scsi +
# scsi-block over libiscsi), in one run. Prints both times and the ratio.
#
#   tests/bench/bench_guest_mkfs.sh BUILD_DIR [SIZE] [RUNS]
# Goal (issue 4): hvstord's time no longer than tgt's.
set -euo pipefail
source "$(dirname "$0")/../testlib/tgtd.sh"
build=$(cd "${1:?usage: bench_guest_mkfs.sh BUILD_DIR [SIZE] [RUNS]}" && pwd)
size=${2:-40G}
runs=${3:-3}
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d /var/tmp/hvstor-bench-mkfs.XXXXXX)
WORK=$tmp    # tgtd's log and pid file
hv_pid=
cleanup()
{
    [ -n "$hv_pid" ] && kill -TERM "$hv_pid" 2>/dev/null && wait "$hv_pid" 2>/dev/null
    tgt_cleanup
    rm -rf "$tmp"
}
trap cleanup EXIT

kernel=$("$src/tests/guest/build-initramfs.sh" "$tmp/guest.cpio.gz")

# hvstord: VM "guest" (QEMU's default initiator for -name guest is allowed).
"$build/bin/hvstord" --state-dir "$tmp/state" --portal 127.0.0.1:0 >/dev/null 2>"$tmp/hvstord.log" &
hv_pid=$!
for _ in $(seq 100); do [ -s "$tmp/state/portal" ] && break; sleep 0.1; done
hv_portal=$(cat "$tmp/state/portal")
hvctl() { "$build/bin/hvctl" --state-dir "$tmp/state" "$@"; }
hvctl vm create guest >/dev/null

# tgt with a sparse raw file of the same size.
tgt_pick_ports
tgt_start
tgt_target=iqn.2026-11.org.hvstor.bench:mkfs
tgtadm_ --op new --mode target --tid 1 -T "$tgt_target"
tgtadm_ --op bind --mode target --tid 1 -I ALL

boot_mkfs()   # boot_mkfs PORTAL TARGET LUN: prints mkfs seconds inside the guest
{
    timeout 600 qemu-system-x86_64 -machine accel=tcg -m 512 -nographic -no-reboot \
        -name guest -kernel "$kernel" -initrd "$tmp/guest.cpio.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 hvtest=mkfs" \
        -device virtio-scsi-pci,id=scsi0 \
        -drive "file.driver=iscsi,file.transport=tcp,file.portal=$1,file.target=$2,file.lun=$3,format=raw,if=none,id=d0,cache=none" \
        -device scsi-block,drive=d0,bus=scsi0.0 >"$tmp/console.log" 2>&1 || true
    grep -aq "HVSTOR-GUEST-RESULT: PASS" "$tmp/console.log" ||
        { echo "guest failed: $(tail -c 800 "$tmp/console.log")" >&2; exit 1; }
    grep -a "mkfs.ext4 seconds:" "$tmp/console.log" | tr -d '\r' | sed 's/.*seconds: //'
}

hv_times=()
tgt_times=()
for run in $(seq "$runs"); do
    rm -f "$tmp/disk.vhd"
    hvctl disk attach guest --controller 0 --slot 0 --vhd "$tmp/disk.vhd" --create "$size" >/dev/null
    hv_times+=("$(boot_mkfs "$hv_portal" iqn.2026-11.org.hvstor:guest.c0 0)")
    hvctl disk detach guest --controller 0 --slot 0 >/dev/null

    # A fresh file and LUN per run (tgt refuses to delete a LUN that was in use).
    truncate -s "$size" "$tmp/disk$run.raw"
    tgtadm_ --op new --mode logicalunit --tid 1 --lun "$run" \
        -b "$tmp/disk$run.raw"
    tgt_times+=("$(boot_mkfs "$PORTAL" "$tgt_target" "$run")")
    rm -f "$tmp/disk$run.raw"
    echo "run $run: hvstord (dynamic VHD) ${hv_times[-1]} s, tgt (raw file) ${tgt_times[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
hv=$(median "${hv_times[@]}")
tg=$(median "${tgt_times[@]}")
echo "mkfs.ext4 of a $size disk in the guest, median of $runs: hvstord $hv s, tgt $tg s," \
     "ratio tgt/hvstord $(awk -v a="$tg" -v b="$hv" 'BEGIN { printf "%.2f", a / b }') (>= 1 is the goal)"
