#!/usr/bin/env bash
# Online growth of VHD disks attached to a VM: a dynamic VHD and a fixed VHD
# are written through iSCSI (qemu-io), grown with `hvctl disk resize` while
# an initiator stays logged in, and then: a fresh READ CAPACITY(16) with the
# VM's initiator name reports the exact new size, the logged-in client keeps
# working (it gets CAPACITY DATA HAS CHANGED and carries on), writes in
# flight during the resize complete (held and resumed), data written
# before is intact, the new space reads zeroes and takes writes, shrinking
# is refused clearly, and after SIGTERM `vhd check` is clean and qemu's vpc
# driver reads the new size.
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-img qemu-io iscsi-readcapacity16 python3
hv_setup
hv_start

ini=iqn.2026-11.org.hvstor.test:resize
hvctl vm create rs --initiator "$ini" >/dev/null
hvctl disk attach rs --controller 0 --slot 0 --vhd "$HV_TMP/dyn.vhd" --create 64M >/dev/null
"$HVSTOR_BIN/vhd" create --type fixed -s 16M "$HV_TMP/fixed.vhd" >/dev/null
hvctl disk attach rs --controller 0 --slot 1 --vhd "$HV_TMP/fixed.vhd" >/dev/null

capacity()   # capacity LUN: bytes as READ CAPACITY(16) reports them
{
    iscsi-readcapacity16 -s -i "$ini" "$(hv_url rs 0 "$1")"
}

qio()   # qio LUN COMMAND...: qemu-io commands, failing on any error
{
    local lun=$1 out
    shift
    out=$HV_TMP/qio$lun.txt
    qemu-io --image-opts "$(hv_qemu_opts rs 0 "$lun" "$ini")" "$@" >"$out" 2>&1 ||
        hv_fail "qemu-io LUN $lun: $(tail -3 "$out")"
    ! grep -qi "pattern verification failed\|error" "$out" ||
        hv_fail "qemu-io LUN $lun: $(grep -i 'fail\|error' "$out" | head -3)"
}

[ "$(capacity 0)" = $((64 << 20)) ] || hv_fail "dynamic VHD: capacity $(capacity 0) before resize"
[ "$(capacity 1)" = $((16 << 20)) ] || hv_fail "fixed VHD: capacity $(capacity 1) before resize"
qio 0 -c "write -P 0xa1 0 1M" -c "write -P 0xa2 63M 1M" -c flush
qio 1 -c "write -P 0xb1 0 1M" -c "write -P 0xb2 15M 1M" -c flush

# A client that stays logged in across the resize: qemu-io fed from a fifo.
mkfifo "$HV_TMP/cmd"
qemu-io --image-opts "$(hv_qemu_opts rs 0 0 "$ini")" <"$HV_TMP/cmd" >"$HV_TMP/live.txt" 2>&1 &
live=$!
HV_EXTRA_PIDS+=("$live")
exec 3>"$HV_TMP/cmd"
echo "write -P 0xa3 2M 64k" >&3
sleep 0.5

# A second client keeps writes in flight during the resize (8M-56M, about a
# second): the daemon holds new ones, drains, resizes, resumes.
qemu-img bench --image-opts "$(hv_qemu_opts rs 0 0 "$ini")" -w -d 8 -s 4k -c 12288 \
    -o 8M -S 4k --pattern=0x77 >"$HV_TMP/bench.txt" 2>&1 &
bench=$!
HV_EXTRA_PIDS+=("$bench")
sleep 0.3
kill -0 "$bench" 2>/dev/null || echo "note: the writer finished before the resize"
hvctl disk resize rs --controller 0 --slot 0 200M >"$HV_TMP/r0.txt" 2>&1 ||
    hv_fail "resize of the dynamic VHD: $(cat "$HV_TMP/r0.txt")"
wait "$bench" || hv_fail "writer during the resize failed: $(tail -3 "$HV_TMP/bench.txt")"
grep -q "Run completed" "$HV_TMP/bench.txt" || hv_fail "writer: $(tail -3 "$HV_TMP/bench.txt")"
hvctl disk resize rs --controller 0 --slot 1 24M >"$HV_TMP/r1.txt" 2>&1 ||
    hv_fail "resize of the fixed VHD: $(cat "$HV_TMP/r1.txt")"
if hvctl disk resize rs --controller 0 --slot 0 100M >"$HV_TMP/r2.txt" 2>&1; then
    hv_fail "shrinking online was accepted"
fi
grep -qi "shrink" "$HV_TMP/r2.txt" || hv_fail "shrink refused unclearly: $(cat "$HV_TMP/r2.txt")"
echo "shrink refused: $(cat "$HV_TMP/r2.txt")"

[ "$(capacity 0)" = $((200 << 20)) ] || hv_fail "dynamic VHD: capacity $(capacity 0) after resize"
[ "$(capacity 1)" = $((24 << 20)) ] || hv_fail "fixed VHD: capacity $(capacity 1) after resize"
echo "READ CAPACITY(16) after resize: $(capacity 0) and $(capacity 1) bytes"

# The logged-in client carries on after the unit attention.
echo "write -P 0xa4 3M 64k" >&3
echo "read -P 0xa3 2M 64k" >&3
echo "read -P 0xa4 3M 64k" >&3
echo "quit" >&3
exec 3>&-
wait "$live" || hv_fail "the logged-in client failed: $(tail -3 "$HV_TMP/live.txt")"
! grep -qi "pattern verification failed\|error" "$HV_TMP/live.txt" ||
    hv_fail "the logged-in client: $(grep -i 'fail\|error' "$HV_TMP/live.txt" | head -3)"

# Old data intact, new space zero and writable, through fresh sessions.
qio 0 -c "read -P 0xa1 0 1M" -c "read -P 0xa2 63M 1M" -c "read -P 0 64M 136M" \
    -c "read -P 0x77 8M 48M" \
    -c "write -P 0xa5 199M 1M" -c "read -P 0xa5 199M 1M" -c flush
qio 1 -c "read -P 0xb1 0 1M" -c "read -P 0xb2 15M 1M" -c "read -P 0 16M 8M" \
    -c "write -P 0xb5 23M 1M" -c "read -P 0xb5 23M 1M" -c flush

hv_stop
hv_vhd_check "$HV_TMP/dyn.vhd" "of the dynamic VHD after SIGTERM"
hv_vhd_check "$HV_TMP/fixed.vhd" "of the fixed VHD after SIGTERM"
for f in dyn:200 fixed:24; do
    size=$(qemu-img info --output=json -f vpc "$HV_TMP/${f%%:*}.vhd" | json_get - 'j["virtual-size"]')
    [ "$size" = $((${f#*:} << 20)) ] || hv_fail "qemu-img sees ${f%%:*}.vhd as $size bytes"
done
qemu-io -f vpc -r "$HV_TMP/dyn.vhd" -c "read -P 0xa1 0 1M" -c "read -P 0xa4 3M 64k" \
    -c "read -P 0xa5 199M 1M" >"$HV_TMP/final.txt" 2>&1
! grep -qi "pattern verification failed\|error" "$HV_TMP/final.txt" ||
    hv_fail "qemu's vpc driver reads different data: $(head -3 "$HV_TMP/final.txt")"
echo "PASS"
