#!/bin/bash
# iSCSI target benchmark: the same 1 GiB file served by tgt (tgtd, its
# rdwr back end, on one loopback port) and by hvstor (on another), both
# driven by `qemu-img bench` over iscsi:// in the same run: 4 KiB reads and
# writes at queue depth 32, 64 KiB reads and writes at depth 16. Prints
# rates and hvstor/tgt ratios.
#
# hvstor is hvstord by default: a VM with the file attached as its LUN 0,
# so the figure includes everything a guest's I/O goes through (the VM's
# quiesce gate, change tracking, the switchable top of a VHD disk).
# BENCH_SERVER=testd serves it with iscsi-testd instead (the target and
# SCSI emulation alone, straight on the image), to see what the stack costs.
#
#   tests/bench/iscsi_bench.sh [BUILD_DIR]
# Environment: BENCH_DIR (where the 1 GiB file goes; default /var/tmp),
# BENCH_VHD=1 (hvstor serves the same data as a fully allocated dynamic VHD,
# the issue's "VHD-backed LUN"; tgt keeps the raw file),
# BENCH_DIRECT=1 (hvstor opens the file O_DIRECT; default buffered like
# tgt's rdwr), COUNT4K (default 200000), COUNT64K (default 20000),
# BENCH_SERVER=hvstord|testd (default hvstord).
set -euo pipefail
source "$(dirname "$0")/../testlib/tgtd.sh"

BUILD=${1:-$(dirname "$0")/../../build}
TESTD=$BUILD/bin/iscsi-testd
SERVER=${BENCH_SERVER:-hvstord}
case "$SERVER" in
hvstord) SERVER_BINS=("$BUILD/bin/hvstord" "$BUILD/bin/hvctl") ;;
testd) SERVER_BINS=("$TESTD") ;;
*) echo "iscsi_bench: BENCH_SERVER is hvstord or testd, not '$SERVER'" >&2; exit 2 ;;
esac
for tool in tgtd tgtadm qemu-img "${SERVER_BINS[@]}"; do
    command -v "$tool" >/dev/null || { echo "iscsi_bench: $tool not found" >&2; exit 2; }
done
COUNT4K=${COUNT4K:-200000}
COUNT64K=${COUNT64K:-20000}
DIR=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-iscsi-bench.XXXXXX")
WORK=$DIR                           # tgtd's log and pid file
HV_PID=
cleanup() {
    tgt_cleanup
    if [ -n "$HV_PID" ]; then
        kill "$HV_PID" 2>/dev/null || true
        wait "$HV_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

echo "preparing a 1 GiB file in $DIR ..."
if [ "${BENCH_VHD:-0}" = 1 ]; then
    # Data everywhere, so that no read of the VHD is an unallocated block
    # answered with zeroes; hvstor serves the same bytes as a dynamic VHD.
    dd if=/dev/urandom of="$DIR/disk.img" bs=1M count=1024 status=none
    "$BUILD/bin/vhd" convert -O vhd --type dynamic "$DIR/disk.img" "$DIR/disk.vhd" >/dev/null
else
    dd if=/dev/zero of="$DIR/disk.img" bs=1M count=1024 status=none
fi
sync

tgt_pick_ports
tgt_start
TGT_IQN=iqn.2026-01.org.hvstor.bench:tgt
tgtadm_ --mode target --op new --tid 1 --targetname "$TGT_IQN"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$DIR/disk.img"
tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL

if [ "$SERVER" = testd ]; then
    HV_IQN=iqn.2026-01.org.hvstor.bench:hvstor
    DIRECT=()
    [ "${BENCH_DIRECT:-0}" = 1 ] && DIRECT=(--direct)
    BACKING=(--raw "$DIR/disk.img")
    [ "${BENCH_VHD:-0}" = 1 ] && BACKING=(--vhd "$DIR/disk.vhd")
    "$TESTD" --port 0 --port-file "$DIR/hv.port" --target "$HV_IQN" "${DIRECT[@]}" \
        "${BACKING[@]}" >/dev/null 2>"$DIR/hv.log" &
    HV_PID=$!
    for _ in $(seq 50); do [ -s "$DIR/hv.port" ] && break; sleep 0.1; done
    HV_URL=iscsi://127.0.0.1:$(cat "$DIR/hv.port")/$HV_IQN/0
else
    # hvstord opens images O_DIRECT unless told not to; tgt's rdwr is buffered.
    NO_DIRECT=(--no-direct-io)
    [ "${BENCH_DIRECT:-0}" = 1 ] && NO_DIRECT=()
    "$BUILD/bin/hvstord" --state-dir "$DIR/state" --portal 127.0.0.1:0 "${NO_DIRECT[@]}" \
        >/dev/null 2>"$DIR/hv.log" &
    HV_PID=$!
    for _ in $(seq 100); do [ -s "$DIR/state/portal" ] && [ -S "$DIR/state/hvstord.sock" ] && break; sleep 0.1; done
    [ -s "$DIR/state/portal" ] || { echo "iscsi_bench: hvstord did not start: $(tail -3 "$DIR/hv.log")" >&2; exit 1; }
    BACKING=(--raw "$DIR/disk.img")
    [ "${BENCH_VHD:-0}" = 1 ] && BACKING=(--vhd "$DIR/disk.vhd")
    # qemu-img's own initiator name (libiscsi's default in QEMU).
    "$BUILD/bin/hvctl" --state-dir "$DIR/state" vm create bench \
        --initiator iqn.2008-11.org.linux-kvm >/dev/null
    "$BUILD/bin/hvctl" --state-dir "$DIR/state" disk attach bench --controller 0 --slot 0 \
        "${BACKING[@]}" >/dev/null
    HV_URL=iscsi://$(cat "$DIR/state/portal")/$("$BUILD/bin/hvctl" --state-dir "$DIR/state" --json \
        vm show bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["controllers"][0]["target"])')/0
fi

TGT_URL=iscsi://$PORTAL/$TGT_IQN/1

# rate URL COUNT DEPTH SIZE [-w]: requests per second
rate() {
    local url=$1 count=$2 depth=$3 size=$4
    shift 4
    local secs
    secs=$(qemu-img bench -f raw -t none "$@" -c "$count" -d "$depth" -s "$size" "$url" 2>&1 |
           sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$secs" ] || { echo "qemu-img bench failed on $url" >&2; exit 1; }
    python3 -c "print(f'{$count / $secs:.0f}')"
}

lun_kind=raw
[ "${BENCH_VHD:-0}" = 1 ] && lun_kind="dynamic VHD"
echo "hvstor: $SERVER, $lun_kind LUN; tgt: rdwr on the raw file"
printf '%-22s %14s %14s %8s\n' "test" "tgt" "hvstor" "ratio"
for spec in "4k-read 4096 32 $COUNT4K" "4k-write 4096 32 $COUNT4K -w" \
            "64k-read 65536 16 $COUNT64K" "64k-write 65536 16 $COUNT64K -w"; do
    set -- $spec
    name=$1 size=$2 depth=$3 count=$4
    shift 4
    t=$(rate "$TGT_URL" "$count" "$depth" "$size" "$@")
    h=$(rate "$HV_URL" "$count" "$depth" "$size" "$@")
    unit="IOPS"
    python3 - "$name" "$t" "$h" "$size" <<'PY'
import sys
name, t, h, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
fmt = lambda r: f"{r:,.0f}/s" if size <= 4096 else f"{r * size / 1e6:,.0f} MB/s"
print(f"{name + ' (QD%s)' % ('32' if size <= 4096 else '16'):<22} {fmt(t):>14} {fmt(h):>14} {h / t:7.2f}x")
PY
done
