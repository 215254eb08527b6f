#!/usr/bin/env bash
# A real Linux guest on hvstord: Debian's kernel under qemu-system-x86_64
# (TCG) with a busybox initramfs, its disk a dynamic VHD reached through
# virtio-scsi + scsi-block over libiscsi, so the guest kernel's own SCSI
# commands (INQUIRY/VPD, READ CAPACITY, WRITE, SYNCHRONIZE CACHE, UNMAP...)
# reach our controller.
#   boot 1: mkfs.ext4, write 48 MiB, remount, verify, e2fsck clean
#   boot 2: verify after a reboot, delete, fstrim, e2fsck clean
#   boot 3: a raw disk hot-attached to the VM at LUN 1 (hvctl, then QEMU's
#           blockdev-add/device_add as a VM manager would) appears in the
#           running guest with the right content, and an online resize
#           reaches its kernel as CAPACITY DATA HAS CHANGED
# Between and after the boots hvstord is stopped with SIGTERM and the VHD is
# measured with qemu's own vpc driver: fstrim must really give blocks back.
# Label: slow (about a minute here).
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-system-x86_64 qemu-img cpio python3
hv_setup
rc=0
"$HVSTOR_SRC/tests/guest/build-initramfs.sh" "$HV_TMP/guest.cpio.gz" >"$HV_TMP/kernel.txt" \
    2>"$HV_TMP/initramfs.err" || rc=$?
[ $rc -eq 77 ] && { cat "$HV_TMP/initramfs.err"; exit 77; }
[ $rc -eq 0 ] || hv_fail "initramfs: $(cat "$HV_TMP/initramfs.err")"
kernel=$(cat "$HV_TMP/kernel.txt")

hv_start
hvctl vm create guest >/dev/null          # allows iqn.2008-11.org.linux-kvm:guest (qemu -name guest)
hvctl disk attach guest --controller 0 --slot 0 --vhd "$HV_TMP/guest.vhd" --create 1G >/dev/null
vhd_check() { hv_vhd_check "$HV_TMP/guest.vhd" "$1"; }

guest_start()   # guest_start TEST [KERNEL-ARGS]: boot in the background (GUEST_PID)
{
    local t=$1 port=${HV_PORTAL##*:}
    timeout 150 qemu-system-x86_64 -machine accel=tcg -m 512 -nographic -no-reboot \
        -name guest -kernel "$kernel" -initrd "$HV_TMP/guest.cpio.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 hvtest=$t ${2:-}" \
        -device virtio-scsi-pci,id=scsi0 \
        -drive "file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$port,file.target=iqn.2026-11.org.hvstor:guest.c0,file.lun=0,format=raw,if=none,id=d0,cache=none" \
        -device scsi-block,drive=d0,bus=scsi0.0 \
        -qmp "unix:$HV_TMP/qmp.sock,server=on,wait=off" >"$HV_TMP/console-$t.log" 2>&1 &
    GUEST_PID=$!
    GUEST_START=$(date +%s)
    HV_EXTRA_PIDS+=($GUEST_PID)
}

guest_wait_step()   # guest_wait_step TEST TEXT: until the guest prints the step
{
    for _ in $(seq 1200); do
        grep -aq "HVSTOR-GUEST-STEP: $2" "$HV_TMP/console-$1.log" && return 0
        grep -aq "HVSTOR-GUEST-RESULT" "$HV_TMP/console-$1.log" && break
        kill -0 "$GUEST_PID" 2>/dev/null || break
        sleep 0.1
    done
    hv_fail "guest $1 never got to '$2': $(tail -c 1500 "$HV_TMP/console-$1.log")"
}

boot()   # boot TEST [KERNEL-ARGS]: run the guest to its end, require its PASS line
{
    local t=$1
    [ -n "${GUEST_PID:-}" ] || guest_start "$@"
    wait "$GUEST_PID" || true
    GUEST_PID=
    grep -a "HVSTOR-GUEST" "$HV_TMP/console-$t.log" | tr -d '\r' | sed 's/.*HVSTOR-GUEST/  HVSTOR-GUEST/'
    grep -aq "HVSTOR-GUEST-RESULT: PASS" "$HV_TMP/console-$t.log" ||
        hv_fail "guest $t did not pass: $(tail -c 1500 "$HV_TMP/console-$t.log")"
    echo "guest $t: $(($(date +%s) - GUEST_START)) s"
}

boot ext4-write
grep -aq "disk HVSTOR" "$HV_TMP/console-ext4-write.log" ||
    hv_fail "the guest's disk does not answer INQUIRY as HVSTOR (is scsi-block passing through?)"
hv_stop
vhd_check "after the write boot"
before=$(allocated_bytes "$HV_TMP/guest.vhd" vpc)
before_disk=$(($(stat -c '%b * %B' "$HV_TMP/guest.vhd")))

hv_start
boot ext4-trim
hvctl --json disk stats guest >"$HV_TMP/stats.json"
hv_stop
vhd_check "after fstrim"
after=$(allocated_bytes "$HV_TMP/guest.vhd" vpc)
after_disk=$(($(stat -c '%b * %B' "$HV_TMP/guest.vhd")))
echo "VHD blocks allocated (qemu-img map): $((before >> 20)) MiB after writing, $((after >> 20)) MiB after fstrim"
echo "VHD file space on the host (st_blocks): $((before_disk >> 20)) MiB -> $((after_disk >> 20)) MiB"
[ "$before" -ge $((48 << 20)) ] || hv_fail "only $before bytes allocated after writing 48 MiB"
[ $((before - after)) -ge $((32 << 20)) ] ||
    hv_fail "fstrim gave back only $((before - after)) bytes of the 48 MiB deleted"
[ $((before_disk - after_disk)) -ge $((32 << 20)) ] ||
    hv_fail "the host file kept its space: $before_disk -> $after_disk bytes"

# Hot attach and online resize seen by the running guest's kernel.
hv_start
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 16 * 4096)' >"$HV_TMP/hot.raw"
md5=$(head -c 4096 "$HV_TMP/hot.raw" | md5sum | cut -d' ' -f1)
guest_start hotplug "hvmd5=$md5"
guest_wait_step hotplug "ready for hot attach"
hvctl disk attach guest --controller 0 --slot 1 --raw "$HV_TMP/hot.raw" >/dev/null
# QEMU maps one iSCSI LUN to one guest device, so the VM manager plugs the new
# LUN into the running QEMU, as it would for any hot-added disk.
python3 - "$HV_TMP/qmp.sock" "$HV_PORTAL" <<'PY' || hv_fail "QMP hot plug failed"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r:
            return r
        if "error" in r:
            sys.exit(f"{name}: {r['error']}")
json.loads(f.readline())                       # greeting
cmd("qmp_capabilities")
cmd("blockdev-add", **{"driver": "iscsi", "node-name": "hot", "transport": "tcp",
                       "portal": sys.argv[2], "target": "iqn.2026-11.org.hvstor:guest.c0",
                       "lun": 1, "initiator-name": "iqn.2008-11.org.linux-kvm:guest"})
cmd("device_add", driver="scsi-block", drive="hot", bus="scsi0.0", lun=1, id="hotdisk")
PY
guest_wait_step hotplug "ready for resize"
hvctl disk resize guest --controller 0 --slot 1 32M >/dev/null
boot hotplug
hv_stop
echo PASS
