#!/usr/bin/env bash
# SG_IO pass-through of a local SCSI disk, on a real SCSI disk: this machine
# has none, so the test runs inside a guest (Debian's kernel under
# qemu-system-x86_64, TCG, busybox initramfs) whose kernel has scsi_debug.
# The guest carries hvstord, hvctl, pt-cdb, pt-tmf and libiscsi's tools, brings up
# loopback, starts hvstord on 127.0.0.1, hands /dev/sda (scsi_debug) to a VM
# with `hvctl disk attach --device`, and through the VM's iSCSI target:
#   - INQUIRY shows scsi_debug's own vendor/product (the CDB reached the
#     device, not hvstor's emulation), READ CAPACITY(16) matches sysfs
#   - data written on the host before the attach reads back through the
#     target; data written through the target is on the disk after the
#     detach (read with O_DIRECT), both compared byte for byte
#   - residuals SG_IO cannot report: read underflow and overflow computed
#     from the CDB, a write asking for more than was sent refused untouched
#   - a CDB the filter does not list gets ILLEGAL REQUEST / INVALID COMMAND
#     OPERATION CODE, and reaches the device (GOOD) with --full-scsi
#   - the device's own sense comes back: READ(16) past the end gets
#     scsi_debug's LBA OUT OF RANGE, a write under its software write
#     protect (iscsi-swp: MODE SELECT to the device) its DATA PROTECT
#   - a second VM attaching the same disk is refused, naming the holder
#   - iscsi-perf with 32 requests in flight: more than one command was in
#     the device at once (queue depth > 1, `disk stats` max_in_device)
#   - a raw disk on the same VM answers while a command is held in
#     scsi_debug (SG_IO runs off the reactor)
#   - a checkpoint of the VM is refused, naming the SG_IO disk; a backup
#     covers it (verified, restored, the guest's data in it)
#   - an hvstord restart finds the disk again by its designator after
#     sda and sdb swapped names; another VM is refused it by designator
#   - ABORT TASK and LUN RESET reach the SG_IO disk's LU; it answers after
#   - the same disk as an FC LUN (`--fc-lun`, a fake FC HBA tree from
#     fake-fc-agent whose LUN's block device is the scsi_debug sd): served
#     by SG_IO too (scsi_debug's INQUIRY, the filter, --full-scsi lifting it,
#     a backup, `--device` of it refused), the vport up with it, brought
#     back at a restart, deleted with the detach
#   - the disk removed under the guest: NOT READY / LOGICAL UNIT NOT
#     SUPPORTED, and `vm show` says why
# The guest prints "HVSTOR-GUEST-RESULT: PASS|FAIL why" and powers off.
# Label: slow (about a minute under TCG here).
set -u
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

: "${HVSTOR_BIN:?HVSTOR_BIN not set}" "${HVSTOR_BUILD:?HVSTOR_BUILD not set}"
: "${HVSTOR_SRC:?HVSTOR_SRC not set}"
[ "${HVSTOR_SANITIZE:-0}" = 1 ] || [ "${HVSTOR_SANITIZE:-}" = ON ] &&
    skip "sanitizer build: the guest has no sanitizer runtime"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed"
for tool in cpio gzip ldd readelf; do command -v $tool >/dev/null || skip "$tool is not installed"; done
PT_CDB=$HVSTOR_BUILD/tests/integration/pt-cdb
PT_TMF=$HVSTOR_BUILD/tests/integration/pt-tmf
AGENT=$HVSTOR_BUILD/tests/integration/fake-fc-agent
for b in "$HVSTOR_BIN/hvstord" "$HVSTOR_BIN/hvctl" "$HVSTOR_BIN/vhd" "$PT_CDB" "$PT_TMF" "$AGENT"; do
    [ -x "$b" ] || skip "$b is not built"
done
tools=()
for t in iscsi-inq iscsi-readcapacity16 iscsi-swp iscsi-perf; do
    p=$(command -v $t) || skip "$t is not installed (libiscsi-bin)"
    tools+=(--bin "$p")
done
kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
[ -n "$kernel" ] && [ -r "$kernel" ] || skip "no readable /boot/vmlinuz-* (linux-image-amd64)"
kver=${kernel#/boot/vmlinuz-}
ls /lib/modules/"$kver"/kernel/drivers/scsi/scsi_debug.ko* >/dev/null 2>&1 ||
    skip "the guest kernel $kver has no scsi_debug module"

WORK=$(mktemp -d /var/tmp/hvstor-sgio-XXXXXX)
QEMU_PID=
cleanup() {
    local rc=$?
    [ -n "$QEMU_PID" ] && kill -9 "$QEMU_PID" 2>/dev/null
    if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$WORK/console.log" ]; then
        echo "---- guest console (tail)"; tail -60 "$WORK/console.log"
    fi
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT

cat >"$WORK/init" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /var/hv
finish() {
    echo "HVSTOR-GUEST-RESULT: $*"
    [ -n "${HVD:-}" ] && kill -TERM $HVD 2>/dev/null
    case "$*" in PASS*) ;; *) echo "---- hvstord log"; tail -30 /tmp/hvstord.log ;; esac
    sync
    reboot -f
    sleep 5
}
step() { echo "HVSTOR-GUEST-STEP: $*"; }
for m in $(cat /etc/modules); do
    case $m in scsi_debug.ko) continue ;; esac
    insmod /lib/modules/$m 2>/dev/null
done
# 64 MiB, and 2 ms per command: long enough that commands sent together
# are in the device together, which is what the queue-depth check looks at.
# Two targets (sda, sdb: distinct designators, one shared store) so that a
# restart can find them renamed.
insmod /lib/modules/scsi_debug.ko dev_size_mb=64 ndelay=2000000 num_tgts=2 ||
    finish "FAIL insmod scsi_debug"
wait_dev() {
    i=0
    while [ ! -b $1 ]; do
        i=$((i + 1)); [ $i -gt 300 ] && finish "FAIL no $1 from scsi_debug"
        sleep 0.1
    done
}
wait_dev /dev/sda
wait_dev /dev/sdb
DEV=/dev/sda
WWID=$(cat /sys/block/sda/device/wwid)
VENDOR=$(cat /sys/block/sda/device/vendor | sed 's/ *$//')
MODEL=$(cat /sys/block/sda/device/model | sed 's/ *$//')
SECTORS=$(cat /sys/block/sda/size)
step "scsi_debug: $DEV '$VENDOR' '$MODEL' $SECTORS sectors"

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || finish "FAIL loopback"
ST=/var/hv
hvstord --state-dir $ST --portal 127.0.0.1:3260 --log-level info 2>>/tmp/hvstord.log &
HVD=$!
i=0
while [ ! -S $ST/hvstord.sock ]; do
    i=$((i + 1)); [ $i -gt 200 ] && finish "FAIL hvstord did not start: $(tail -3 /tmp/hvstord.log)"
    sleep 0.1
done
hv() { hvctl --state-dir $ST "$@"; }
hv vm create a >/dev/null && hv vm create b >/dev/null || finish "FAIL vm create"
IQN=iqn.2008-11.org.linux-kvm:a
URL=iscsi://127.0.0.1:3260/iqn.2026-11.org.hvstor:a.c0/0
cdb() { pt-cdb -p 127.0.0.1:3260 -t iqn.2026-11.org.hvstor:a.c0 -i $IQN -l 0 "$@"; }

# Data the host puts on the disk before the attach, for the guest to read.
dd if=/dev/urandom of=/tmp/host.bin bs=4096 count=16 2>/dev/null
dd if=/tmp/host.bin of=$DEV bs=4096 seek=1024 conv=fsync 2>/dev/null || finish "FAIL host write"

hv disk attach a --controller 0 --slot 0 --device $DEV >/tmp/attach.txt 2>&1 ||
    finish "FAIL attach: $(cat /tmp/attach.txt)"
grep -q "SCSI pass-through (SG_IO): $VENDOR $MODEL, naa\." /tmp/attach.txt ||
    finish "FAIL not passed through with SG_IO: $(cat /tmp/attach.txt)"
step "$(tail -1 /tmp/attach.txt)"

iscsi-inq -i $IQN $URL >/tmp/inq.txt 2>&1 || finish "FAIL iscsi-inq: $(cat /tmp/inq.txt)"
grep -q "Vendor:$VENDOR" /tmp/inq.txt && grep -q "Product:$MODEL" /tmp/inq.txt ||
    finish "FAIL INQUIRY is not the device's: $(cat /tmp/inq.txt)"
step "INQUIRY through the target: $(grep -E 'Vendor|Product' /tmp/inq.txt | tr '\n' ' ')"

iscsi-readcapacity16 -i $IQN $URL >/tmp/rc.txt 2>&1 || finish "FAIL readcapacity16: $(cat /tmp/rc.txt)"
BLOCK=$(sed -n 's/^LOGICAL BLOCK LENGTH IN BYTES:\([0-9]*\).*/\1/p' /tmp/rc.txt)
LBA_MAX=$(sed -n 's/^RETURNED LOGICAL BLOCK ADDRESS:\([0-9]*\).*/\1/p' /tmp/rc.txt)
[ -n "$BLOCK" ] && [ -n "$LBA_MAX" ] || finish "FAIL READ CAPACITY(16) output: $(cat /tmp/rc.txt)"
[ $(( (LBA_MAX + 1) * BLOCK )) = $((SECTORS * 512)) ] ||
    finish "FAIL READ CAPACITY: $((LBA_MAX + 1)) x $BLOCK bytes, sysfs says $SECTORS sectors"
step "READ CAPACITY(16): $((LBA_MAX + 1)) blocks of $BLOCK bytes, as sysfs"

# read what the host wrote: 64 KiB at byte 4 MiB
LBA=$((4194304 / BLOCK)); N=$((65536 / BLOCK))
hex() { printf "%0${2}x" "$1"; }
READ10="28 00 $(hex $LBA 8) 00 $(hex $N 4) 00"
READ10=$(echo "$READ10" | tr -d ' ')
cdb -c "$READ10" -r 65536 -o /tmp/got.bin >/tmp/r.txt || finish "FAIL READ(10): $(cat /tmp/r.txt)"
grep -q "status 0x00 residual 0" /tmp/r.txt || finish "FAIL READ(10): $(cat /tmp/r.txt)"
cmp -s /tmp/got.bin /tmp/host.bin || finish "FAIL the guest does not read what the host wrote"
step "READ(10) of 64 KiB the host wrote before the attach: identical"

# write a pattern through the target: 64 KiB at byte 8 MiB, read it back
dd if=/dev/urandom of=/tmp/guest.bin bs=4096 count=16 2>/dev/null
WLBA=$((8388608 / BLOCK))
WRITE10=$(echo "2a 00 $(hex $WLBA 8) 00 $(hex $N 4) 00" | tr -d ' ')
READ10W=$(echo "28 00 $(hex $WLBA 8) 00 $(hex $N 4) 00" | tr -d ' ')
cdb -c "$WRITE10" -w 65536 -f /tmp/guest.bin >/tmp/w.txt || finish "FAIL WRITE(10): $(cat /tmp/w.txt)"
grep -q "status 0x00" /tmp/w.txt || finish "FAIL WRITE(10): $(cat /tmp/w.txt)"
cdb -c "$READ10W" -r 65536 -o /tmp/back.bin >/tmp/r.txt || finish "FAIL READ(10) back"
cmp -s /tmp/back.bin /tmp/guest.bin || finish "FAIL written data does not read back"
step "WRITE(10) + READ(10) of 64 KiB through the target: identical"

# residuals against the initiator's expected length, which SG_IO cannot
# tell: computed from the CDB. Underflow, read overflow (the initiator gets
# its part), and a write asking for more data than was sent is refused.
R1=$(echo "28 00 $(hex $WLBA 8) 00 $(hex 1 4) 00" | tr -d ' ')
R2=$(echo "28 00 $(hex $WLBA 8) 00 $(hex 2 4) 00" | tr -d ' ')
W2=$(echo "2a 00 $(hex $WLBA 8) 00 $(hex 2 4) 00" | tr -d ' ')
cdb -c "$R1" -r $((2 * BLOCK)) >/tmp/u.txt
grep -q "status 0x00 residual $BLOCK\$" /tmp/u.txt || finish "FAIL read underflow: $(head -1 /tmp/u.txt)"
cdb -c "$R2" -r $BLOCK -o /tmp/o.bin >/tmp/o.txt
grep -q "status 0x00 residual $BLOCK overflow" /tmp/o.txt || finish "FAIL read overflow: $(cat /tmp/o.txt)"
head -c $BLOCK /tmp/guest.bin | cmp -s - /tmp/o.bin || finish "FAIL read overflow data"
cdb -c "$W2" -w $BLOCK >/tmp/wo.txt
grep -q "status 0x02 sense 5/24h/00h" /tmp/wo.txt || finish "FAIL write overflow: $(cat /tmp/wo.txt)"
cdb -c "$R2" -r $((2 * BLOCK)) -o /tmp/o2.bin >/dev/null
head -c $((2 * BLOCK)) /tmp/guest.bin | cmp -s - /tmp/o2.bin ||
    finish "FAIL the refused write changed the disk"
step "residuals: underflow '$(head -1 /tmp/u.txt)', read overflow '$(cat /tmp/o.txt)', write overflow refused '$(cat /tmp/wo.txt)'"

# the filter: SEND DIAGNOSTIC (self-test) is not on the list
cdb -c 1d0400000000 >/tmp/sd.txt
grep -q "status 0x02 sense 5/20h/00h" /tmp/sd.txt || finish "FAIL SEND DIAGNOSTIC: $(cat /tmp/sd.txt)"
step "SEND DIAGNOSTIC filtered: $(cat /tmp/sd.txt)"

# the device's own sense: READ(16) one block past the end
READ16=$(echo "88 00 $(hex $((LBA_MAX + 1)) 16) $(hex 1 8) 00 00" | tr -d ' ')
cdb -c "$READ16" -r $BLOCK >/tmp/oor.txt
grep -q "status 0x02 sense 5/21h/00h" /tmp/oor.txt ||
    finish "FAIL READ(16) past the end: $(cat /tmp/oor.txt)"
step "READ(16) past the end: scsi_debug's own LBA OUT OF RANGE ($(cat /tmp/oor.txt))"

# MODE SELECT reaches the device: its software write protect, then its
# DATA PROTECT on a write
iscsi-swp -i $IQN -s on $URL >/tmp/swp.txt 2>&1 || finish "FAIL iscsi-swp on: $(cat /tmp/swp.txt)"
cdb -c "$WRITE10" -w 65536 -f /tmp/guest.bin >/tmp/wp.txt
iscsi-swp -i $IQN -s off $URL >>/tmp/swp.txt 2>&1 || finish "FAIL iscsi-swp off: $(cat /tmp/swp.txt)"
grep -q "status 0x02 sense 7/27h/" /tmp/wp.txt ||
    finish "FAIL write under the device's SWP: $(cat /tmp/wp.txt) / $(cat /tmp/swp.txt)"
cdb -c "$WRITE10" -w 65536 -f /tmp/guest.bin >/tmp/w.txt
grep -q "status 0x00" /tmp/w.txt || finish "FAIL WRITE after SWP off: $(cat /tmp/w.txt)"
step "software write protect set through the target: $(cat /tmp/wp.txt)"

# another VM cannot have it
hv disk attach b --controller 0 --slot 0 --device $DEV >/tmp/b.txt 2>&1 &&
    finish "FAIL VM b got the disk VM a holds"
grep -q "held by VM 'a' controller 0 slot 0" /tmp/b.txt || finish "FAIL holder not named: $(cat /tmp/b.txt)"
step "second VM refused: $(cat /tmp/b.txt)"

# queue depth: 32 reads in flight, 2 ms each in the device
# (iscsi-perf reads until it is stopped)
timeout -s INT 4 iscsi-perf -i $IQN -m 32 -b 16 $URL >/tmp/perf.txt 2>&1
grep -qi "error\|failed" /tmp/perf.txt && finish "FAIL iscsi-perf: $(tail -3 /tmp/perf.txt)"
hv --json disk stats a --controller 0 --slot 0 >/tmp/stats.json 2>&1 || finish "FAIL disk stats"
MAXQ=$(tr -d ' \n' </tmp/stats.json | sed -n 's/.*"max_in_device":\([0-9]*\).*/\1/p')
[ -n "$MAXQ" ] && [ "$MAXQ" -gt 1 ] || finish "FAIL max_in_device '$MAXQ': $(cat /tmp/stats.json)"
step "iscsi-perf -m 32: $(tr '\r' '\n' </tmp/perf.txt | grep 'iops average' | tail -1 | sed 's/.*\(iops average [^,]*\).*/\1/'); at most $MAXQ commands in the device at once"

# hvstord cannot snapshot what the guest drives itself: refused, named
hv checkpoint create a --consistency crash >/tmp/ck.txt 2>&1 && finish "FAIL checkpoint of an SG_IO disk"
grep -q "is a pass-through LUN (/dev/sda)" /tmp/ck.txt ||
    finish "FAIL checkpoint refusal: $(cat /tmp/ck.txt)"
step "checkpoint refused: $(cat /tmp/ck.txt)"

# a backup of the running VM covers the SG_IO disk (copy-before-write on
# the pass-through LU, as for a SAN LUN): verified, restored, and the
# guest's 64 KiB at 8 MiB are in it
hv backup create a --to /tmp/bk --consistency crash >/tmp/bk.txt 2>&1 ||
    finish "FAIL backup: $(cat /tmp/bk.txt)"
hvctl backup verify /tmp/bk >/tmp/bkv.txt 2>&1 || finish "FAIL backup verify: $(cat /tmp/bkv.txt)"
hvctl backup restore /tmp/bk --to /tmp/rs >/tmp/rs.txt 2>&1 || finish "FAIL restore: $(cat /tmp/rs.txt)"
vhd convert -O raw /tmp/rs/c0-s0.vhd /tmp/rs.raw >/tmp/cv.txt 2>&1 || finish "FAIL convert: $(cat /tmp/cv.txt)"
dd if=/tmp/rs.raw of=/tmp/rs.bin bs=4096 skip=2048 count=16 2>/dev/null
cmp -s /tmp/rs.bin /tmp/guest.bin || finish "FAIL the restored backup lacks the guest's data"
rm -f /tmp/rs.raw
step "backup of the SG_IO disk: $(tail -1 /tmp/bk.txt); verified, restored, guest data in it"

# other disks do not wait on this one: with scsi_debug answering after
# 1250 jiffies (1.25 s at HZ=1000, 5 s at 250), a raw disk on the same VM
# answers while a command is still in scsi_debug
truncate -s 16M /tmp/other.img
hv disk attach a --controller 0 --slot 1 --raw /tmp/other.img >/dev/null || finish "FAIL attach raw"
echo 1250 >/sys/bus/pseudo/drivers/scsi_debug/delay || finish "FAIL scsi_debug delay"
cdb -c "$READ10W" -r 65536 -o /tmp/slow.bin >/tmp/slow.txt &
SLOW=$!
i=0
until tr -d ' \n' </tmp/stats.json | grep -q '"inflight":[1-9]'; do
    i=$((i + 1)); [ $i -gt 100 ] && finish "FAIL no command reached scsi_debug"
    hv --json disk stats a --controller 0 --slot 0 >/tmp/stats.json 2>&1
done
pt-cdb -p 127.0.0.1:3260 -t iqn.2026-11.org.hvstor:a.c0 -i $IQN -l 1 -c 28000000000000000800 \
    -r 4096 >/tmp/fast.txt
grep -q "status 0x00" /tmp/fast.txt || finish "FAIL raw disk read: $(cat /tmp/fast.txt)"
kill -0 $SLOW 2>/dev/null || finish "FAIL the slow command finished before the other disk answered"
wait $SLOW
grep -q "status 0x00" /tmp/slow.txt && cmp -s /tmp/slow.bin /tmp/guest.bin ||
    finish "FAIL the slow read: $(cat /tmp/slow.txt)"
echo 1 >/sys/bus/pseudo/drivers/scsi_debug/delay
hv disk detach a --controller 0 --slot 1 >/dev/null || finish "FAIL detach raw"
step "a raw disk on the same VM answered while scsi_debug held a command"

# restart with the disks renamed (remove both, rescan target 1 first: it
# becomes sda, the attached disk sdb): the slot finds its disk by designator
kill -TERM $HVD; wait $HVD
HOST=
for h in /sys/class/scsi_host/host*; do
    [ "$(cat $h/proc_name)" = scsi_debug ] && HOST=$h
done
[ -n "$HOST" ] || finish "FAIL no scsi_debug host"
echo 1 >/sys/block/sdb/device/delete && echo 1 >/sys/block/sda/device/delete ||
    finish "FAIL removing the disks"
while [ -b /dev/sda ] || [ -b /dev/sdb ]; do sleep 0.1; done
echo "0 1 0" >$HOST/scan && wait_dev /dev/sda
echo "0 0 0" >$HOST/scan && wait_dev /dev/sdb
[ "$(cat /sys/block/sda/device/wwid)" != "$WWID" ] && [ "$(cat /sys/block/sdb/device/wwid)" = "$WWID" ] ||
    finish "FAIL the disks were not renamed: sda $(cat /sys/block/sda/device/wwid), sdb $(cat /sys/block/sdb/device/wwid)"
DEV=/dev/sdb
hvstord --state-dir $ST --portal 127.0.0.1:3260 --log-level info 2>>/tmp/hvstord.log &
HVD=$!
i=0
while ! hv vm show a >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 200 ] && finish "FAIL hvstord did not restart"
    sleep 0.1
done
iscsi-inq -i $IQN $URL >/tmp/inq2.txt 2>&1 && grep -q "Product:$MODEL" /tmp/inq2.txt ||
    finish "FAIL after restart: $(cat /tmp/inq2.txt) $(hv vm show a)"
hv vm show a >/tmp/show.txt
grep -q "SG_IO /dev/sdb" /tmp/show.txt || finish "FAIL not found as sdb: $(cat /tmp/show.txt)"
cdb -c "$READ10W" -r 65536 -o /tmp/back.bin >/tmp/r.txt
cmp -s /tmp/back.bin /tmp/guest.bin || finish "FAIL the renamed disk does not hold the guest's data"
step "restart after sda became sdb: $(grep 'SG_IO' /tmp/show.txt | sed 's/^ *//')"
# the slot still says /dev/sda; the disk is known by its designator
hv disk attach b --controller 0 --slot 0 --device /dev/sdb >/tmp/b.txt 2>&1 &&
    finish "FAIL VM b got the renamed disk"
grep -q "/dev/sdb (naa\.[0-9a-f]*) is held by VM 'a' controller 0 slot 0" /tmp/b.txt ||
    finish "FAIL renamed disk: holder not named: $(cat /tmp/b.txt)"
step "second VM refused by designator: $(cat /tmp/b.txt)"

# task management on the SG_IO disk: an ABORT TASK for a read in the
# device (it completes: SG_IO has no abort), a LUN RESET, then the disk
# still answers (LBA 0 was never written: zeros)
printf 'read-abort 8\nreset\ntur\nread 0\n' |
    pt-tmf -p 127.0.0.1:3260 -t iqn.2026-11.org.hvstor:a.c0 -i $IQN -l 0 >/tmp/tmf.txt 2>&1 ||
    finish "FAIL pt-tmf: $(cat /tmp/tmf.txt)"
grep -q "tmf abort-task response" /tmp/tmf.txt && grep -q "tmf lun-reset response 0" /tmp/tmf.txt &&
    grep -q "^good" /tmp/tmf.txt && grep -q "^read ok" /tmp/tmf.txt ||
    finish "FAIL task management: $(cat /tmp/tmf.txt)"
step "task management: $(grep tmf /tmp/tmf.txt | tr '\n' ';')"

# --full-scsi lets SEND DIAGNOSTIC reach the device
hv disk detach a --controller 0 --slot 0 >/dev/null || finish "FAIL detach"
hv disk attach a --controller 0 --slot 0 --device $DEV --full-scsi >/tmp/attach.txt 2>&1 ||
    finish "FAIL attach --full-scsi: $(cat /tmp/attach.txt)"
cdb -c 1d0400000000 >/tmp/sd.txt
grep -q "status 0x00" /tmp/sd.txt || finish "FAIL SEND DIAGNOSTIC with --full-scsi: $(cat /tmp/sd.txt)"
step "SEND DIAGNOSTIC with --full-scsi: $(cat /tmp/sd.txt)"
hv disk detach a --controller 0 --slot 0 >/dev/null || finish "FAIL detach"

# after the detach, the host reads the guest's write from the disk itself
dd if=$DEV of=/tmp/disk.bin bs=4096 skip=2048 count=16 iflag=direct 2>/dev/null ||
    { echo 3 >/proc/sys/vm/drop_caches; dd if=$DEV of=/tmp/disk.bin bs=4096 skip=2048 count=16 2>/dev/null; }
cmp -s /tmp/disk.bin /tmp/guest.bin || finish "FAIL the disk does not hold what the guest wrote"
step "after the detach $DEV holds the guest's 64 KiB"

# An FC LUN whose sd is this disk. No FC HBA here: fake-fc-agent plays the
# kernel's FC transport in a tree of its own (hvstord --sysfs-root), and the
# LUN, as VM f's vport sees it, shows $DEV as its block device (--dev-root
# /dev) with $DEV's own VPD page 0x83. `--fc-lun` must reach scsi_debug
# through SG_IO, as `--device` does.
kill -TERM $HVD; wait $HVD
FCSYS=/tmp/fcsys
FCOPTS="--sysfs-root $FCSYS --dev-root /dev --wwn-oui 00:11:22 --iqn-prefix iqn.2026-11.org.hvstor.guest --host-id 1"
start_hvd() {
    hvstord --state-dir $ST --portal 127.0.0.1:3260 --log-level info $FCOPTS 2>>/tmp/hvstord.log &
    HVD=$!
    i=0
    while ! hv vm show a >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -gt 200 ] && finish "FAIL hvstord did not start: $(tail -3 /tmp/hvstord.log)"
        sleep 0.1
    done
}
start_hvd
hv vm create f >/dev/null || finish "FAIL vm create f"
hv --json vm show f | tr -d ' \n' >/tmp/f.json
FWWPN=$(sed -n 's/.*"fc":{"a":{"wwpn":"\([0-9a-f:]*\)","wwnn":"[0-9a-f:]*"},"b":{"wwpn":"\([0-9a-f:]*\)".*/\1 \2/p' /tmp/f.json)
FA=$(echo $FWWPN | cut -d' ' -f1 | tr -d :); FB=$(echo $FWWPN | cut -d' ' -f2 | tr -d :)
[ -n "$FA" ] && [ -n "$FB" ] || finish "FAIL VM f has no FC identity: $(cat /tmp/f.json)"
T=500a098000001111
cat >/tmp/fc.cfg <<CFG
hba 5 64 0
target $T
zone $T $FA
zone $T $FB
mask $T $FA 1 ${DEV#/dev/} /sys/block/${DEV#/dev/}/device/vpd_pg83
mask $T $FB 1
CFG
fake-fc-agent $FCSYS /tmp/fc.cfg >/tmp/agent.log 2>&1 &
AGENT=$!
i=0
until grep -q '^ready' /tmp/agent.log; do
    i=$((i + 1)); [ $i -gt 100 ] && finish "FAIL fake-fc-agent: $(cat /tmp/agent.log)"
    sleep 0.1
done
vport_up() { grep -l -x "0x$FA" $FCSYS/class/fc_host/*/port_name 2>/dev/null | wc -l; }
IQNF=iqn.2008-11.org.linux-kvm:f
hv disk attach f --controller 0 --slot 0 --fc-lun $T:1 >/tmp/fc.txt 2>&1 ||
    finish "FAIL --fc-lun attach: $(cat /tmp/fc.txt)"
grep -q "SCSI pass-through (SG_IO): $VENDOR $MODEL, " /tmp/fc.txt ||
    finish "FAIL the FC LUN is not passed through with SG_IO: $(cat /tmp/fc.txt)"
[ "$(vport_up)" = 1 ] || finish "FAIL VM f's vport is not up"
step "$(tr '\n' ' ' </tmp/fc.txt)"
TF=$(hv --json vm show f | tr -d ' \n' | sed -n 's/.*"target":"\([^"]*:f\.c0\)".*/\1/p')
[ -n "$TF" ] || finish "FAIL VM f's target: $(hv --json vm show f)"
cdbf() { pt-cdb -p 127.0.0.1:3260 -t $TF -i $IQNF -l 0 "$@"; }
fc_checks() {   # INQUIRY, the guest's data, the filter: what SG_IO to scsi_debug gives
    iscsi-inq -i $IQNF iscsi://127.0.0.1:3260/$TF/0 >/tmp/inqf.txt 2>&1 ||
        finish "FAIL iscsi-inq on the FC LUN: $(cat /tmp/inqf.txt)"
    grep -q "Vendor:$VENDOR" /tmp/inqf.txt && grep -q "Product:$MODEL" /tmp/inqf.txt ||
        finish "FAIL the FC LUN's INQUIRY is not scsi_debug's: $(cat /tmp/inqf.txt)"
    cdbf -c "$READ10W" -r 65536 -o /tmp/fcback.bin >/tmp/r.txt
    cmp -s /tmp/fcback.bin /tmp/guest.bin || finish "FAIL the FC LUN does not hold the guest's data: $(cat /tmp/r.txt)"
    cdbf -c 1d0400000000 >/tmp/sdf.txt
    grep -q "status 0x02 sense 5/20h/00h" /tmp/sdf.txt ||
        finish "FAIL SEND DIAGNOSTIC on the FC LUN without --full-scsi: $(cat /tmp/sdf.txt)"
}
fc_checks
hv vm show f >/tmp/show.txt
grep -q "SG_IO $DEV" /tmp/show.txt || finish "FAIL vm show f: $(cat /tmp/show.txt)"
step "FC LUN through SG_IO: $(grep -E 'Vendor|Product' /tmp/inqf.txt | tr '\n' ' '); the guest's data read back; SEND DIAGNOSTIC filtered: $(cat /tmp/sdf.txt)"

# the sd is one disk whichever way it is named: --device by another VM is refused
hv disk attach a --controller 0 --slot 0 --device $DEV >/tmp/b.txt 2>&1 &&
    finish "FAIL VM a got the disk VM f holds as an FC LUN"
grep -q "is held by VM 'f' controller 0 slot 0" /tmp/b.txt || finish "FAIL FC holder not named: $(cat /tmp/b.txt)"
step "--device of the FC LUN's sd refused: $(cat /tmp/b.txt)"

# backups: the SG_IO disk's stack (copy-before-write on the pass-through LU)
hv backup create f --to /tmp/bkf --consistency crash >/tmp/bk.txt 2>&1 ||
    finish "FAIL backup of the FC LUN: $(cat /tmp/bk.txt)"
hvctl backup verify /tmp/bkf >/tmp/bkv.txt 2>&1 || finish "FAIL backup verify: $(cat /tmp/bkv.txt)"
rm -rf /tmp/bkf
step "backup of the FC LUN: $(tail -1 /tmp/bk.txt); verified"

# restart: the vport goes with hvstord and comes back; the LUN is found
# under it and opened by SG_IO again
kill -TERM $HVD; wait $HVD
[ "$(vport_up)" = 0 ] || finish "FAIL the vport outlived hvstord"
start_hvd
[ "$(vport_up)" = 1 ] || finish "FAIL the vport did not come back with hvstord"
fc_checks
step "restart: vport brought back, the FC LUN is scsi_debug's by SG_IO again"

# --full-scsi lets SEND DIAGNOSTIC reach scsi_debug; the detach deletes the vport
hv disk detach f --controller 0 --slot 0 >/dev/null || finish "FAIL detach f"
[ "$(vport_up)" = 0 ] || finish "FAIL the vport outlived the last FC disk"
hv disk attach f --controller 0 --slot 0 --fc-lun $T:1 --full-scsi >/tmp/fc.txt 2>&1 ||
    finish "FAIL --fc-lun --full-scsi: $(cat /tmp/fc.txt)"
grep -q "SG_IO.*, full SCSI" /tmp/fc.txt || finish "FAIL --full-scsi not in the answer: $(cat /tmp/fc.txt)"
cdbf -c 1d0400000000 >/tmp/sdf.txt
grep -q "status 0x00" /tmp/sdf.txt || finish "FAIL SEND DIAGNOSTIC on the FC LUN with --full-scsi: $(cat /tmp/sdf.txt)"
hv disk detach f --controller 0 --slot 0 >/dev/null || finish "FAIL detach f"
[ "$(vport_up)" = 0 ] || finish "FAIL the vport outlived the detach"
kill -TERM $AGENT; wait $AGENT
step "FC LUN --full-scsi: SEND DIAGNOSTIC $(cat /tmp/sdf.txt); vport deleted with the detach"

# the disk goes away under the guest: the device's removal becomes NOT
# READY / LOGICAL UNIT NOT SUPPORTED and the slot says why
hv disk attach a --controller 0 --slot 0 --device $DEV >/dev/null || finish "FAIL re-attach"
echo 1 >/sys/block/${DEV#/dev/}/device/delete || finish "FAIL deleting $DEV"
cdb -c "$READ10W" -r 65536 >/tmp/gone.txt
grep -q "status 0x02 sense 2/25h/00h" /tmp/gone.txt || finish "FAIL read after removal: $(cat /tmp/gone.txt)"
hv vm show a >/tmp/show.txt 2>&1
grep -q "offline" /tmp/show.txt || finish "FAIL vm show after removal: $(cat /tmp/show.txt)"
step "removed under the guest: $(cat /tmp/gone.txt); $(grep -A1 offline /tmp/show.txt | tail -1 | sed 's/^ *//')"
hv disk detach a --controller 0 --slot 0 >/dev/null || finish "FAIL detach after removal"
# hvstord stops cleanly (a sanitizer build reports leaks at exit)
kill -TERM $HVD; wait $HVD || finish "FAIL hvstord exit status $?: $(tail -5 /tmp/hvstord.log)"
HVD=
grep -q "Sanitizer\|runtime error" /tmp/hvstord.log &&
    finish "FAIL sanitizer report: $(grep -A10 Sanitizer /tmp/hvstord.log | head -20)"
finish PASS
EOF

"$HVSTOR_SRC/tests/guest/build-initramfs.sh" --module scsi_debug \
    --bin "$HVSTOR_BIN/hvstord" --bin "$HVSTOR_BIN/hvctl" --bin "$HVSTOR_BIN/vhd" \
    --bin "$PT_CDB" --bin "$PT_TMF" --bin "$AGENT" \
    "${tools[@]}" \
    --init "$WORK/init" "$WORK/guest.cpio.gz" "$kver" >/dev/null 2>"$WORK/initramfs.err"
rc=$?
[ $rc -eq 77 ] && { cat "$WORK/initramfs.err"; exit 77; }
[ $rc -eq 0 ] || fail "building the initramfs: $(cat "$WORK/initramfs.err")"

# TCG: KVM under this machine's nesting hangs in the BIOS; HVSTOR_GUEST_KVM=1 opts in.
accel=tcg
[ -w /dev/kvm ] && [ -n "${HVSTOR_GUEST_KVM:-}" ] && accel=kvm:tcg
t0=$SECONDS
timeout 240 qemu-system-x86_64 -machine accel=$accel -m 768 -smp 1 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$WORK/guest.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1" -nic none \
    >"$WORK/console.log" 2>&1 </dev/null &
QEMU_PID=$!
wait "$QEMU_PID"
QEMU_PID=
tr -d '\r' <"$WORK/console.log" >"$WORK/console.txt"
grep -a "HVSTOR-GUEST-STEP" "$WORK/console.txt" | sed 's/^.*HVSTOR-GUEST-STEP: /  /'
result=$(grep -a "HVSTOR-GUEST-RESULT" "$WORK/console.txt" | tail -1 | sed 's/^.*HVSTOR-GUEST-RESULT: //')
[ -n "$result" ] || fail "no result from the guest in $((SECONDS - t0)) s"
[ "$result" = PASS ] || fail "guest: $result"
echo "PASS (guest ran $((SECONDS - t0)) s, $accel)"
