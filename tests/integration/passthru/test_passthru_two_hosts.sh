#!/bin/bash
# Two hvstord on one machine (two state dirs, two portals, two PR keys)
# sharing one tgtd: the second host cannot write to the LUN the first holds
# (tgt answers RESERVATION CONFLICT: the SAN enforces it, not hvstor), and
# after the first is killed (kill -9, no clean release) `hvctl disk takeover`
# preempts its key and the second host's guest writes; a detach releases.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v qemu-io >/dev/null || skip "qemu-io not installed"

truncate -s 64M "$WORK/lun1.img"
tgt_start
pt_target 1
out=$WORK/out

hvd_start 1
hvd_start 2
for n in 1 2; do
    hvctl_ $n vm create web >/dev/null || fail "vm create on host $n"
    hvctl_ $n --json vm zoning web --target "$T1" --tid 1 |
        json_get - '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant$n"
    while read -r line; do tgt_run_printed "$line"; done < "$WORK/grant$n"
    hvctl_ $n san add tgt1 --portal "$PORTAL" \
        --initiator "$(hvctl_ $n --json vm show web | json_get - 'j["identity"]["iqn"]')" \
        >/dev/null || fail "san add on host $n"
done
KEY1=$(cat "$WORK/st1/pr_key"); KEY2=$(cat "$WORK/st2/pr_key")
echo "host keys: $KEY1 $KEY2"
[ "$KEY1" != "$KEY2" ] || fail "two hosts share a PR key"

state() {   # state N
    hvctl_ "$1" --json vm show web |
        json_get - 'j["controllers"][0]["luns"][0]["passthru"]["state"]'
}
wait_state() {  # wait_state N STATE
    local s
    for _ in $(seq 100); do s=$(state "$1"); [ "$s" = "$2" ] && return 0; sleep 0.1; done
    fail "host $1: pass-through state $s, expected $2"
}
G=$(guest_iqn web)
write_via() {   # write_via N: one WRITE(10) of 512 bytes through host N's controller
    "$PT_CDB" -p "${HVD_PORTAL[$1]}" -t "$(ctl_target web 0)" -i "$G" -l 0 \
        -c 2a00000000080000010000 -w 512
}

step "host 1 attaches and reserves"
hvctl_ 1 disk attach web --controller 0 --slot 0 --lun "tgt1:$T1:1" || fail "attach on 1"
wait_state 1 ready
write_via 1 | tee "$out"; grep -q "status 0x00" "$out" || fail "host 1 cannot write"

step "host 2 attaches: told the LUN is reserved by another host; its writes get RESERVATION CONFLICT"
hvctl_ 2 disk attach web --controller 0 --slot 0 --lun "tgt1:$T1:1" | tee "$out" ||
    fail "attach on 2"
grep -q "reserved by another host (key 0x$KEY1)" "$out" || fail "no warning naming host 1's key"
wait_state 2 fenced
write_via 2 | tee "$out"; grep -q "status 0x18" "$out" || fail "host 2 wrote to host 1's LUN"
"$PT_CDB" -p "${HVD_PORTAL[2]}" -t "$(ctl_target web 0)" -i "$G" -l 0 -c 28000000000000000100 \
    -r 512 | grep -q "status 0x00" || fail "host 2 cannot even read (WE-RO allows reads)"
echo "host 1 still writes:"
write_via 1 | tee "$out"; grep -q "status 0x00" "$out" || fail "host 1 lost its LUN"

step "host 1 dies (kill -9, nothing released): its reservation stays on tgt"
kill -9 "${HVD_PID[1]}"; wait "${HVD_PID[1]}" 2>/dev/null; HVD_PID[1]=
write_via 2 | grep -q "status 0x18" || fail "the reservation vanished with host 1's process"

step "hvctl disk takeover on host 2 preempts host 1's key"
hvctl_ 2 disk takeover web --controller 0 --slot 0 | tee "$out" || fail "takeover"
grep -q "taken over from key 0x$KEY1" "$out" || fail "takeover message"
wait_state 2 ready
write_via 2 | tee "$out"; grep -q "status 0x00" "$out" || fail "host 2 cannot write after takeover"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[2]},target=$(ctl_target web 0),lun=0,initiator-name=$G"
qemu-io --image-opts "$OPTS" -c "write -P 0x77 4M 1M" -c "read -P 0x77 4M 1M" > "$out" 2>&1 \
    || { cat "$out"; fail "guest I/O on host 2"; }
grep -q "failed" "$out" && { cat "$out"; fail "guest I/O on host 2"; }

step "on tgt: host 2's key holds a type 5 reservation, host 1's key is gone"
ADMIN_IQN=$(hvctl_ 2 --json vm show web | json_get - 'j["identity"]["iqn"]')
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN_IQN" -I 0x123456 -l 1 -c 5e000000000000004000 -r 64 > \
    "$WORK/keys"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN_IQN" -I 0x123456 -l 1 -c 5e010000000000002000 -r 32 > \
    "$WORK/resv"
python3 - "$WORK/keys" "$WORK/resv" "$KEY1" "$KEY2" <<'PY' || fail "reservation state"
import sys
keys = bytes.fromhex(open(sys.argv[1]).read().split("data ")[1].split()[0])
resv = bytes.fromhex(open(sys.argv[2]).read().split("data ")[1].split()[0])
n = int.from_bytes(keys[4:8], "big") // 8
registered = {keys[8 + 8 * i:16 + 8 * i].hex() for i in range(n)}
print("registered keys:", sorted(registered))
assert sys.argv[3] not in registered, "host 1's key survived the preemption"
assert sys.argv[4] in registered
assert resv[8:16].hex() == sys.argv[4] and resv[21] & 0xF == 5
print("reservation: host 2's key, type 5")
PY
step "host 2 detaches: the LUN leaves the host, its key and reservation go with it"
hvctl_ 2 disk detach web --controller 0 --slot 0 >/dev/null || fail "detach"
for _ in $(seq 50); do grep -q "released (key 0x$KEY2 unregistered)" "$WORK/hvstord2.log" &&
    break; sleep 0.1; done
grep "released" "$WORK/hvstord2.log" || fail "no release in the log"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN_IQN" -I 0x123456 -l 1 -c 5e000000000000004000 -r 64 > \
    "$WORK/keys"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN_IQN" -I 0x123456 -l 1 -c 5e010000000000002000 -r 32 > \
    "$WORK/resv"
python3 - "$WORK/keys" "$WORK/resv" <<'PY' || fail "the LUN is still reserved after the detach"
import sys
keys = bytes.fromhex(open(sys.argv[1]).read().split("data ")[1].split()[0])
resv = bytes.fromhex(open(sys.argv[2]).read().split("data ")[1].split()[0])
assert int.from_bytes(keys[4:8], "big") == 0, "keys left: %s" % keys[8:].hex()
assert int.from_bytes(resv[4:8], "big") == 0, "still reserved"
print("no key registered, no reservation: another host can attach it without a takeover")
PY
echo PASS
