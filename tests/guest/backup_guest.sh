# The two-disk guest that is backed up while it writes (sourced after
# tests/integration/hv/hvstord_lib.sh and hv_setup; used by
# tests/integration/snapshot/test_guest_backup.sh and
# tests/bench/bench_guest_backup.sh). bg_boot starts hvstord with VM "guest":
# two dynamic VHDs at controller 0 slots 0 and 1 ($HV_TMP/disk0.vhd,
# disk1.vhd), agent hvstor-vss on $VSS_SOCK; and boots QEMU (TCG) with both
# LUNs on virtio-scsi (scsi-block over libiscsi), the hvstor-vss port on
# $VSS_SOCK and qemu-ga's on $QGA_SOCK, running tests/guest/init-backup.
# It returns once the guest's application has written 20 records.
#
#   BG_DISK_SIZE   size of each disk (default 64M)
#   BG_APPEND      extra kernel command line words (e.g. hvfill=MiB)
#   BG_BINS        array of extra programs for the initramfs (/sbin)
#
#   last_record        the last record the guest announced (every tenth)
#   guest_check        fail when the guest said FAIL or QEMU is gone
#   wait_record N S    until the guest has written record N (S seconds)

VSS_SOCK=$HV_TMP/vss.sock
QGA_SOCK=$HV_TMP/qga.sock
CONSOLE=$HV_TMP/console.log
QEMU_PID=

last_record() { grep -ao "HVSTOR-GUEST-RECORD [0-9]*" "$CONSOLE" 2>/dev/null | tail -1 | cut -d' ' -f2; }

guest_check()
{
    ! grep -aq "HVSTOR-GUEST-FAIL" "$CONSOLE" 2>/dev/null || hv_fail "guest: $(grep -a FAIL "$CONSOLE" | tr -d '\r')"
    kill -0 "$QEMU_PID" 2>/dev/null || hv_fail "QEMU exited: $(tail -c 1500 "$CONSOLE")"
}

wait_record()   # wait_record N SECONDS
{
    local deadline=$((SECONDS + $2))
    until [ "$(last_record || true)" -ge "$1" ] 2>/dev/null; do
        guest_check
        [ $SECONDS -lt $deadline ] ||
            hv_fail "the guest did not reach record $1 in $2 s: $(tail -c 1500 "$CONSOLE")"
        sleep 0.2
    done
}

bg_boot()
{
    local qga rc=0 b bins=()
    qga=$(command -v qemu-ga || ls /usr/sbin/qemu-ga 2>/dev/null || true)
    [ -n "$qga" ] || { echo "SKIP: qemu-ga not installed (package qemu-guest-agent)"; exit 77; }
    [ -x "$HVSTOR_BIN/hvstor-vss" ] || { echo "SKIP: hvstor-vss not built"; exit 77; }
    for b in ${BG_BINS[@]+"${BG_BINS[@]}"}; do bins+=(--bin "$b"); done
    "$HVSTOR_SRC/tests/guest/build-initramfs.sh" --module virtio_console \
        --bin "$HVSTOR_BIN/hvstor-vss" --bin "$qga" ${bins[@]+"${bins[@]}"} \
        --init "$HVSTOR_SRC/tests/guest/init-backup" \
        "$HV_TMP/guest.cpio.gz" >"$HV_TMP/kernel.txt" 2>"$HV_TMP/initramfs.err" || rc=$?
    [ $rc -eq 77 ] && { cat "$HV_TMP/initramfs.err"; exit 77; }
    [ $rc -eq 0 ] || hv_fail "initramfs: $(cat "$HV_TMP/initramfs.err")"

    hv_start
    hvctl vm create guest --agent "hvstor-vss:$VSS_SOCK" >/dev/null   # qemu -name guest's initiator
    for s in 0 1; do
        hvctl disk attach guest --controller 0 --slot $s --vhd "$HV_TMP/disk$s.vhd" \
            --create "${BG_DISK_SIZE:-64M}" >/dev/null
    done

    local port=${HV_PORTAL##*:} accel=tcg t0=$SECONDS
    drive() { echo "file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:$port,file.target=iqn.2026-11.org.hvstor:guest.c0,file.lun=$1,format=raw,if=none,id=d$1,cache=none"; }
    # TCG: KVM under this machine's nesting hangs in the BIOS; HVSTOR_GUEST_KVM=1 opts in.
    [ -w /dev/kvm ] && [ -n "${HVSTOR_GUEST_KVM:-}" ] && accel=kvm:tcg
    timeout 900 qemu-system-x86_64 -machine accel=$accel -m 512 -nographic -no-reboot \
        -name guest -kernel "$(cat "$HV_TMP/kernel.txt")" -initrd "$HV_TMP/guest.cpio.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 ${BG_APPEND:-}" \
        -device virtio-scsi-pci,id=scsi0 \
        -drive "$(drive 0)" -device scsi-block,drive=d0,bus=scsi0.0,scsi-id=0,lun=0 \
        -drive "$(drive 1)" -device scsi-block,drive=d1,bus=scsi0.0,scsi-id=0,lun=1 \
        -device virtio-serial-pci \
        -chardev "socket,id=vss,path=$VSS_SOCK,server=on,wait=off" \
        -device virtserialport,chardev=vss,name=org.hvstor.vss.0 \
        -chardev "socket,id=qga,path=$QGA_SOCK,server=on,wait=off" \
        -device virtserialport,chardev=qga,name=org.qemu.guest_agent.0 \
        >"$CONSOLE" 2>&1 </dev/null &
    QEMU_PID=$!
    HV_EXTRA_PIDS+=($QEMU_PID)
    wait_record 20 300
    grep -ao "HVSTOR-GUEST-READY.*" "$CONSOLE" | tr -d '\r'
    echo "guest up and writing in $((SECONDS - t0)) s ($accel)"
}
