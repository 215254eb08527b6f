#!/usr/bin/env bash
# A real Linux guest on hvstord: Debian's kernel under qemu-system-x86_64
# (TCG) with a busybox initramfs, its disk a dynamic VHD reached through
# virtio-scsi + scsi-block over libiscsi, so the guest kernel's own SCSI
# commands (INQUIRY/VPD, READ CAPACITY, WRITE, SYNCHRONIZE CACHE, UNMAP...)
# reach our controller.
#   boot 1: mkfs.ext4, write 48 MiB, remount, verify, e2fsck clean
#   boot 2: verify after a reboot, delete, fstrim, e2fsck clean
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
vhd_check()
{
    if [ -x "$HVSTOR_BIN/vhd" ]; then
        "$HVSTOR_BIN/vhd" check "$HV_TMP/guest.vhd" >"$HV_TMP/check.txt" 2>&1 ||
            hv_fail "vhd check $1: $(cat "$HV_TMP/check.txt")"
    fi
}

boot()   # boot TEST: run the guest, require its PASS line
{
    local t=$1 start=$(date +%s) port=${HV_PORTAL##*:}
    timeout 150 qemu-system-x86_64 -machine accel=tcg -m 512 -nographic -no-reboot \
        -name guest -kernel "$kernel" -initrd "$HV_TMP/guest.cpio.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 hvtest=$t" \
        -device virtio-scsi-pci,id=scsi0 \
        -drive "file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$port,file.target=iqn.2026-11.org.hvstor:guest.c0,file.lun=0,format=raw,if=none,id=d0,cache=none" \
        -device scsi-block,drive=d0,bus=scsi0.0 >"$HV_TMP/console-$t.log" 2>&1 || true
    grep -a "HVSTOR-GUEST" "$HV_TMP/console-$t.log" | tr -d '\r' | sed 's/.*HVSTOR-GUEST/  HVSTOR-GUEST/'
    grep -aq "HVSTOR-GUEST-RESULT: PASS" "$HV_TMP/console-$t.log" ||
        hv_fail "guest $t did not pass: $(tail -c 1500 "$HV_TMP/console-$t.log")"
    echo "guest $t: $(($(date +%s) - start)) s"
}

boot ext4-write
grep -aq "disk HVSTOR" "$HV_TMP/console-ext4-write.log" ||
    hv_fail "the guest's disk does not answer INQUIRY as HVSTOR (is scsi-block passing through?)"
hv_stop
vhd_check "after the write boot"
before=$(allocated_bytes "$HV_TMP/guest.vhd" vpc)

hv_start
boot ext4-trim
hvctl --json disk stats guest >"$HV_TMP/stats.json"
hv_stop
vhd_check "after fstrim"
after=$(allocated_bytes "$HV_TMP/guest.vhd" vpc)
echo "VHD allocated (qemu-img map): $((before >> 20)) MiB after writing, $((after >> 20)) MiB after fstrim"
[ "$before" -ge $((48 << 20)) ] || hv_fail "only $before bytes allocated after writing 48 MiB"
[ $((before - after)) -ge $((32 << 20)) ] ||
    hv_fail "fstrim gave back only $((before - after)) bytes of the 48 MiB deleted"
echo PASS
