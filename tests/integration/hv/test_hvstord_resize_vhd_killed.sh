#!/usr/bin/env bash
# hvstord killed (SIGKILL) inside an online VHD resize that moves the BAT, at
# each of its switch points (HVSTOR_TEST_KILL_AT): after the new BAT is
# durable, after the header points at it, after the footer at the end says
# the new size. Each time `vhd check` finds no corruption (clean, or exit 3
# for leaked space or the resize interrupted between the footer and its
# copy, named as such), the restarted daemon serves the disk at the old or
# the new size as the point says, with every flushed byte, and asking for
# the size again finishes the resize: clean after SIGTERM.
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-io iscsi-readcapacity16 python3
hv_setup
[ -x "$HVSTOR_BIN/vhd" ] || { echo "SKIP: vhd tool not built"; exit 77; }

G=$((1 << 30))
ini=iqn.2026-11.org.hvstor.test:killed
img=$HV_TMP/d.vhd
"$HVSTOR_BIN/vhd" create -s 10G "$img" >/dev/null

capacity()
{
    iscsi-readcapacity16 -s -i "$ini" "$(hv_url k 0 0)"
}

qio()   # qio COMMAND...: qemu-io commands on LUN 0, failing on any error
{
    local out=$HV_TMP/qio.txt
    qemu-io --image-opts "$(hv_qemu_opts k 0 0 "$ini")" "$@" >"$out" 2>&1 ||
        hv_fail "qemu-io: $(tail -3 "$out")"
    ! grep -v "CheckCondition" "$out" | grep -qi "pattern verification failed\|error" ||
        hv_fail "qemu-io: $(grep -i 'fail\|error' "$out" | head -3)"
}

check_exit()   # check_exit: vhd check's exit status of the image
{
    local rc=0
    "$HVSTOR_BIN/vhd" check "$img" >"$HV_TMP/check.txt" 2>&1 || rc=$?
    echo $rc
}

size=$((10 * G))
first=1
for point in online-resize-bat online-resize-header online-resize-footer; do
    export HVSTOR_TEST_KILL_AT=$point
    hv_start
    unset HVSTOR_TEST_KILL_AT
    if [ $first = 1 ]; then
        hvctl vm create k --initiator "$ini" >/dev/null
        hvctl disk attach k --controller 0 --slot 0 --vhd "$img" >/dev/null
        qio -c "write -P 0xa1 0 1M" -c "write -P 0xa2 $((10 * G - (1 << 20))) 1M" -c flush
        first=0
    fi
    new=$((size + 30 * G))
    # Data in blocks of its own in this session, flushed before the resize.
    qio -c "write -P 0xb$((size / (40 * G))) $((size - 2 * (1 << 20))) 64k" -c flush
    if hvctl disk resize k --controller 0 --slot 0 $new >"$HV_TMP/r.txt" 2>&1; then
        hv_fail "$point: the resize completed; hvstord was to be killed there"
    fi
    rc=0
    wait "$HV_PID" || rc=$?
    HV_PID=
    [ $rc = 137 ] || hv_fail "$point: hvstord exited with $rc, not killed (SIGKILL, 137)"

    rc=$(check_exit)
    case $point:$rc in
    online-resize-bat:3 | online-resize-header:0) ;;
    online-resize-footer:3)
        grep -q "interrupted resize" "$HV_TMP/check.txt" ||
            hv_fail "$point: check does not name the interrupted resize: $(cat "$HV_TMP/check.txt")" ;;
    *) hv_fail "$point: vhd check exit $rc: $(cat "$HV_TMP/check.txt")" ;;
    esac
    echo "$point: vhd check exit $rc: $(tail -1 "$HV_TMP/check.txt")"

    hv_start
    want=$size
    [ $point != online-resize-footer ] || want=$new
    [ "$(capacity)" = $want ] || hv_fail "$point: restarted, serves $(capacity) bytes, not $want"
    qio -c "read -P 0xa1 0 1M" -c "read -P 0xa2 $((10 * G - (1 << 20))) 1M" \
        -c "read -P 0xb$((size / (40 * G))) $((size - 2 * (1 << 20))) 64k"
    hvctl disk resize k --controller 0 --slot 0 $new >"$HV_TMP/r.txt" 2>&1 ||
        hv_fail "$point: resizing again after the restart: $(cat "$HV_TMP/r.txt")"
    [ "$(capacity)" = $new ] || hv_fail "$point: $(capacity) bytes after resizing again"
    qio -c "read -P 0 $((new - (1 << 20))) 1M" -c "write -P 0xc1 $((new - (1 << 20))) 1M" \
        -c "read -P 0xc1 $((new - (1 << 20))) 1M" -c flush
    hv_stop
    hv_vhd_check "$img" "after $point, the restart, the resize again and SIGTERM"
    size=$new
done
echo "PASS"
