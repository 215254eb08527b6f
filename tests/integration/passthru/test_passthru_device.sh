#!/bin/bash
# A local block device (a loop device: not SCSI, so the raw path) handed
# whole to one VM: the guest reads and writes it through its controller, the
# device is claimed O_EXCL while attached (another exclusive opener, a mount,
# another VM are refused), a signature is refused without --force and named,
# a mounted device is refused even with --force, --full-scsi is refused on
# it (not SCSI). No SCSI device exists on this machine: the SG_IO path is
# tested in a guest with scsi_debug (test_guest_sgio.sh).
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v losetup >/dev/null && command -v qemu-io >/dev/null && command -v mkfs.ext4 >/dev/null \
    || skip "losetup, qemu-io or mkfs.ext4 missing"
truncate -s 64M "$WORK/dev.img"
LOOP=$(losetup -f --show "$WORK/dev.img" 2>/dev/null) || skip "no loop device available"
cleanup_loop() { umount "$WORK/mnt" 2>/dev/null; losetup -d "$LOOP" 2>/dev/null; }
trap 'rc=$?; cleanup_loop; (exit $rc); pt_cleanup' EXIT   # keep the test's status
echo "loop device $LOOP"
out=$WORK/out

hvd_start 1
hvctl_ 1 vm create a >/dev/null && hvctl_ 1 vm create b >/dev/null || fail "vm create"

step "a loop device is no SCSI disk: --full-scsi is refused, it is served emulated"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" --full-scsi > "$out" 2>&1 &&
    fail "--full-scsi on a loop device"
cat "$out"; grep -q "is not a SCSI disk" "$out" || fail "--full-scsi refusal does not say why"

step "attach the blank loop device to VM a"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" | tee "$out" || fail "attach"
grep -q "SBC emulation over the raw device: not a SCSI disk" "$out" || fail "not said emulated"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target a 0),lun=0,initiator-name=$(guest_iqn a)"
qemu-io --image-opts "$OPTS" -c "write -P 0x3c 2M 512k" -c flush \
    -c "read -P 0x3c 2M 512k" > "$out" 2>&1 \
    || { cat "$out"; fail "guest I/O"; }
grep -q "failed" "$out" && { cat "$out"; fail "guest I/O"; }
python3 - "$WORK/dev.img" <<'PY' || fail "the write is not on the device"
import sys
f = open(sys.argv[1], "rb"); f.seek(2 << 20)
assert f.read(512 << 10) == b"\x3c" * (512 << 10)
print("the guest's write is on the device")
PY

step "while attached, the device is claimed: O_EXCL open and another VM are refused"
python3 -c "import os,sys; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)" "$LOOP" 2>"$out" \
    && fail "another exclusive opener got the device"
grep -q "Device or resource busy" "$out" || { cat "$out"; fail "not EBUSY"; }
hvctl_ 1 disk attach b --controller 0 --slot 0 --device "$LOOP" > "$out" 2>&1 && fail "b got it"
cat "$out"; grep -q "is held by VM 'a' controller 0 slot 0" "$out" || fail "holder not named"
hvctl_ 1 disk detach a --controller 0 --slot 0 >/dev/null || fail "detach"

step "a signature is refused without --force, with what libblkid found"
mkfs.ext4 -q -F -L hostdata "$LOOP" || fail "mkfs"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" > "$out" 2>&1 &&
    fail "ext4 device attached"
cat "$out"; grep -q "libblkid found TYPE=ext4 LABEL=hostdata" "$out" || fail "no finding"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" --force | tee "$out" ||
    fail "--force"
grep -q "forced over: libblkid found TYPE=ext4" "$out" || fail "no note of the forced signature"
mkdir -p "$WORK/mnt"
mount "$LOOP" "$WORK/mnt" 2>"$out" && { umount "$WORK/mnt"; fail "mounted a device a VM holds"; }
cat "$out"
hvctl_ 1 disk detach a --controller 0 --slot 0 >/dev/null || fail "detach"

step "a mounted device is refused, even with --force"
mount "$LOOP" "$WORK/mnt" || skip "cannot mount the loop device here"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" --force > "$out" 2>&1 \
    && fail "a mounted device was attached"
cat "$out"; grep -q "in use on this host: mounted on $WORK/mnt" "$out" || fail "reason"
umount "$WORK/mnt"

step "restart: the device is claimed again"
hvctl_ 1 disk attach a --controller 0 --slot 0 --device "$LOOP" --force >/dev/null || fail "attach"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" || fail "exit"
hvd_start 1
python3 -c "import os,sys; os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)" "$LOOP" 2>/dev/null \
    && fail "not claimed after restart"
hvctl_ 1 --json vm show a | json_get - 'j["controllers"][0]["luns"][0]["state"]' | grep -q online \
    || fail "offline after restart"
echo PASS
