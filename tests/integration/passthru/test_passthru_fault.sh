#!/bin/bash
# tgtd killed (kill -9) in the middle of a guest's writes through a
# pass-through LUN and started again within the replacement timeout: the
# guest's I/O completes, every acknowledged write is on the LUN, and the
# reservation (which tgt forgets on restart) is taken again by hvstor. Past
# the timeout the guest gets NOT READY, hvstord keeps running, and once tgtd
# is back the disk comes back by itself.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v qemu-io >/dev/null || skip "qemu-io not installed"

truncate -s 256M "$WORK/lun1.img"
out=$WORK/out
tgt_config() {
    pt_target 1 "$ADMIN"
    [ -s "$WORK/grant" ] || return 0
    while read -r line; do tgt_run_printed "$line" >/dev/null; done < "$WORK/grant"
    return 0
}
tgt_start; tgt_config
hvd_start 1
hvctl_ 1 vm create db >/dev/null || fail "vm create"
hvctl_ 1 --json vm zoning db --target "$T1" --tid 1 |
    json_get - '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant"
while read -r line; do tgt_run_printed "$line"; done < "$WORK/grant"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" \
    --replacement-timeout 5000 >/dev/null \
    || fail "san add"
hvctl_ 1 disk attach db --controller 0 --slot 0 --lun "tgt1:$T1:1" >/dev/null || fail "attach"
KEY=$(cat "$WORK/st1/pr_key")
state() {
    hvctl_ 1 --json vm show db | json_get - 'j["controllers"][0]["luns"][0]["passthru"]["state"]'
}
wait_state() {
    local s
    for _ in $(seq "${2:-100}"); do s=$(state); [ "$s" = "$1" ] && return 0; sleep 0.1; done
    fail "pass-through state $s, expected $1"
}
reservation_is_ours() {
    for _ in $(seq 50); do
        "$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN" -l 1 -c 5e010000000000002000 -r 32 > "$out"
        python3 - "$out" "$KEY" <<'PY' && return 0
import sys
d = bytes.fromhex(open(sys.argv[1]).read().split("data ")[1].split()[0])
sys.exit(0 if int.from_bytes(d[4:8], "big") == 16 and d[8:16].hex() == sys.argv[2] and d[21] & 0xF == 5 else 1)
PY
        sleep 0.2
    done
    return 1
}
wait_state ready
reservation_is_ours || fail "no reservation before the fault"
G=$(guest_iqn db)
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target db 0),lun=0,initiator-name=$G"

step "kill -9 tgtd during 200 MiB of guest writes, start it again 2 s later (timeout 5 s)"
cmds=()
for i in $(seq 0 199); do cmds+=(-c "write -P $(( i % 255 + 1 )) ${i}M 1M"); done
cmds+=(-c flush)
qemu-io --image-opts "$OPTS" "${cmds[@]}" > "$WORK/qemu-io.log" 2>&1 &
QIO=$!
EXTRA_PIDS+=("$QIO")
sleep 0.3
kill -0 $QIO 2>/dev/null || fail "the guest's writes finished before the kill: make them longer"
tgt_stop
echo "tgtd killed; guest writes so far: $(grep -c '^wrote' "$WORK/qemu-io.log")"
sleep 2
tgt_start; tgt_config
echo "tgtd back"
wait $QIO; rc=$?
echo "qemu-io exit $rc, $(grep -c '^wrote' "$WORK/qemu-io.log") writes acknowledged"
[ $rc = 0 ] || {
    tail "$WORK/qemu-io.log"; fail "guest I/O failed across a restart within the timeout"; }
if grep -qi "failed\|error" "$WORK/qemu-io.log"; then
    grep -i "failed\|error" "$WORK/qemu-io.log" | head; fail "a write failed"
fi
[ "$(grep -c '^wrote' "$WORK/qemu-io.log")" = 200 ] || fail "not every write was acknowledged"
python3 - "$WORK/lun1.img" <<'PY' || fail "acknowledged writes missing on the LUN"
import sys
f = open(sys.argv[1], "rb")
for i in range(200):
    f.seek(i << 20)
    block = f.read(1 << 20)
    want = bytes([i % 255 + 1]) * (1 << 20)
    assert block == want, "MiB %d does not hold its write" % i
print("all 200 acknowledged writes are on tgt's backing file")
PY
grep -c "reconnected; checking the reservation" "$WORK/hvstord1.log" >/dev/null \
    || fail "no reconnect in the log"
reservation_is_ours || fail "the reservation was not taken again after tgt forgot it"
echo "reservation re-established by hvstor: key $KEY, type 5"

step "past the timeout: the guest gets NOT READY, hvstord keeps running"
tgt_stop
sleep 7
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target db 0)" -i "$G" -l 0 -c 28000000000000000100 \
    -r 512 > "$out"
cat "$out"; grep -q "status 0x02 sense 2/04h/00h" "$out" || fail "guest did not get NOT READY"
kill -0 "${HVD_PID[1]}" || fail "hvstord died"
[ "$(state)" = failed ] || fail "state $(state), expected failed"

step "tgtd back: the disk comes back by itself"
tgt_start; tgt_config
wait_state ready 300
qemu-io --image-opts "$OPTS" -c "read -P 7 6M 1M" > "$out" 2>&1 ||
    { cat "$out"; fail "read after"; }
grep -q "Pattern verification failed" "$out" && fail "data after the outage"
reservation_is_ours || fail "no reservation after the long outage"
echo PASS
