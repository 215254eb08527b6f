#!/bin/bash
# Pass-through overhead: the same tgt LUN driven by `qemu-img bench` over
# iscsi:// directly (qemu's libiscsi -> tgtd) and through a VM's controller as
# a pass-through LUN (qemu -> hvstord's iSCSI target -> passthru/san ->
# tgtd), in one run: 4 KiB reads and writes at QD32, 64 KiB at QD16.
# Prints both rates and passthru/direct (goal >= 0.9x).
#
#   tests/bench/passthru_bench.sh [BUILD_DIR]
# Environment: COUNT4K (default 100000), COUNT64K (default 20000).
set -u
BUILD=${1:-$(cd "$(dirname "$0")/../.." && pwd)/build}
export HVSTOR_BUILD=$BUILD HVSTOR_BIN=$BUILD/bin
source "$(dirname "$0")/../integration/passthru/pt_lib.sh"
pt_setup
command -v qemu-img >/dev/null || skip "qemu-img not installed"
COUNT4K=${COUNT4K:-100000}
COUNT64K=${COUNT64K:-20000}

ADMIN=iqn.2026-11.org.hvstor.test:bench-direct
fallocate -l 512M "$WORK/bench.img"
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/bench.img" || fail "lun"
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$ADMIN" || fail "acl"
cat "$WORK/bench.img" > /dev/null     # same warm page cache under tgtd for both

PT_LOG_LEVEL=warn hvd_start 1
hvctl_ 1 vm create bench >/dev/null || fail "vm create"
hvctl_ 1 --json vm zoning bench --target "$T1" --tid 1 |
    json_get - '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant"
while read -r line; do tgt_run_printed "$line" >/dev/null; done < "$WORK/grant"
DIRECT="driver=iscsi,transport=tcp,portal=$PORTAL,target=$T1,lun=1,initiator-name=$ADMIN"
VIA="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target bench 0),lun=0,initiator-name=$(guest_iqn bench)"

rate() {   # rate OPTS COUNT DEPTH SIZE [-w]: requests per second
    local opts=$1 count=$2 depth=$3 size=$4 secs
    shift 4
    secs=$(qemu-img bench --image-opts "$opts" -t none "$@" \
               -c "$count" -d "$depth" -s "$size" 2>&1 |
           sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$secs" ] || fail "qemu-img bench failed on $opts"
    python3 -c "print(f'{$count / $secs:.0f}')"
}

SPECS=("4k-read 4096 32 $COUNT4K" "4k-write 4096 32 $COUNT4K -w"
       "64k-read 65536 16 $COUNT64K" "64k-write 65536 16 $COUNT64K -w")
# Direct first: once hvstor holds the LUN (Write Exclusive - Registrants
# Only) an unregistered direct initiator can no longer write to it.
declare -A D P
for spec in "${SPECS[@]}"; do
    set -- $spec; name=$1 size=$2 depth=$3 count=$4; shift 4
    D[$name]=$(rate "$DIRECT" "$count" "$depth" "$size" "$@") || exit 1
done
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" >/dev/null || fail "san add"
hvctl_ 1 disk attach bench --controller 0 --slot 0 --lun "tgt1:$T1:1" >/dev/null || fail "attach"
sleep 0.5

sleep 0.5
for spec in "${SPECS[@]}"; do
    set -- $spec; name=$1 size=$2 depth=$3 count=$4; shift 4
    P[$name]=$(rate "$VIA" "$count" "$depth" "$size" "$@") || exit 1
done

echo "tgt LUN 512 MiB, page cache warm; qemu-img bench -t none, one run"
printf '%-22s %14s %14s %8s\n' "test" "direct" "passthru" "ratio"
for spec in "${SPECS[@]}"; do
    set -- $spec; name=$1 size=$2 depth=$3
    python3 - "$name" "${D[$name]}" "${P[$name]}" "$size" "$depth" <<'PY'
import sys
name, d, p, size, depth = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
fmt = lambda r: f"{r:,.0f} IOPS" if size <= 4096 else f"{r * size / 1e6:,.0f} MB/s"
print(f"{name + ' (QD' + depth + ')':<22} {fmt(d):>14} {fmt(p):>14} {p / d:7.2f}x")
PY
done
