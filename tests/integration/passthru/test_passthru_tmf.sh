#!/bin/bash
# Task management and unit attentions across a pass-through LUN, against a
# real tgtd. Two guest nexuses (G1, G2: one initiator name, two ISIDs) stay
# logged in to VM alpha's controller; D is another initiator logged in to
# tgt directly. Shown:
#  - a unit attention the SAN raises (D resets the LUN on tgt) reaches both
#    guest nexuses, though the SAN holds it for hvstord's one nexus;
#  - the guest's LOGICAL UNIT RESET reaches tgt (D sees tgt's reset UA) and
#    each guest nexus sees exactly one reset UA (tgt's, raised for our own
#    reset, is consumed by hvstord);
#  - the guest's TARGET WARM RESET becomes a LUN RESET at the SAN (tgt has
#    no target reset; hvstord never sends one: the SAN target holds other
#    hosts' LUNs);
#  - ABORT TASK of a READ that is at the SAN (tgtd stopped meanwhile) is
#    forwarded, the aborted READ is never answered, and a WRITE the guest
#    sends next completes after tgt answered, with the data in place;
#  - after tgtd restarts, the power-on UA that hvstord's own reconnect
#    checks meet (no guest command carries it) reaches both guest nexuses.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
PT_TMF=$HVSTOR_BUILD/tests/integration/pt-tmf
[ -x "$PT_TMF" ] || fail "$PT_TMF not built"
out=$WORK/out
truncate -s 64M "$WORK/lun1.img"
tgt_start
pt_target 1 "$ADMIN"

hvd_start 1
hvctl_ 1 vm create alpha >/dev/null || fail "vm create"
IQN_A=$(hvctl_ 1 --json vm show alpha | json_get - 'j["identity"]["iqn"]')
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$IQN_A" || fail "acl"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" >/dev/null || fail "san add"
hvctl_ 1 disk attach alpha --controller 0 --slot 0 --lun "tgt1:$T1:1" >/dev/null || fail "attach"

# client NAME ARGS...: a pt-tmf session fed through a fifo
declare -A CFD
client() {
    local name=$1; shift
    mkfifo "$WORK/$name.in"
    "$PT_TMF" "$@" < "$WORK/$name.in" > "$WORK/$name.out" 2>&1 &
    EXTRA_PIDS+=($!)
    exec {fd}>"$WORK/$name.in"
    CFD[$name]=$fd
    for _ in $(seq 200); do
        grep -q '^ready' "$WORK/$name.out" && return 0
        grep -q '^error' "$WORK/$name.out" && break
        sleep 0.05
    done
    cat "$WORK/$name.out"; fail "$name did not log in"
}
# say NAME CMD: send one command, wait for its last line, print its lines to $out
say() {
    local name=$1 cmd=$2 before
    before=$(wc -l < "$WORK/$name.out")
    echo "$cmd" >&"${CFD[$name]}"
    for _ in $(seq 600); do
        tail -n +"$((before + 1))" "$WORK/$name.out" > "$out"
        grep -qE '^(good|tur|tmf |write |read |error|unknown)' "$out" && break
        sleep 0.05
    done
    sed "s/^/  $name: /" "$out"
    grep -q '^error' "$out" && fail "$name: session broke"
    return 0
}
count_ua() { grep -c "^ua 6/29h/00h" "$out"; }
tm() { hvctl_ 1 --json vm show alpha |
       json_get - "j['controllers'][0]['luns'][0]['passthru']['task_management']['$1']"; }

GUEST=$(guest_iqn alpha)
client G1 -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$GUEST" -l 0 -I 0x111111
client G2 -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$GUEST" -l 0 -I 0x222222
client D -p "$PORTAL" -t "$T1" -i "$ADMIN" -l 1
for c in G1 G2 D; do say $c tur; done

step "the SAN raises a unit attention (another initiator resets the LUN on tgt): both guest nexuses get it"
say D reset; grep -q "response 0" "$out" || fail "D's reset"
say D tur
say G1 tur; [ "$(count_ua)" = 1 ] || fail "G1 did not get the SAN's UA"
say G2 tur; [ "$(count_ua)" = 1 ] || fail "G2 did not get the SAN's UA (it was swallowed)"
say G2 tur; grep -qx good "$out" || fail "G2 still has a UA"

step "the guest's LOGICAL UNIT RESET reaches tgt"
say G1 reset; grep -q "response 0" "$out" || fail "G1's reset was not done"
say D tur; [ "$(count_ua)" = 1 ] || fail "tgt did not see the guest's reset"
say G1 tur; [ "$(count_ua)" = 1 ] || fail "G1: want exactly one reset UA"
say G2 tur; [ "$(count_ua)" = 1 ] || fail "G2: want exactly one reset UA"
[ "$(tm lun_resets_forwarded)" = 1 ] || fail "resets forwarded: $(tm lun_resets_forwarded)"

step "the guest's TARGET WARM RESET: a LUN RESET at the SAN, never a target reset"
say G2 target-reset; grep -q "response 0" "$out" || fail "target reset not done"
say D tur; [ "$(count_ua)" = 1 ] || fail "tgt's LUN was not reset"
say G1 tur; [ "$(count_ua)" = 1 ] || fail "G1: want exactly one reset UA"
say G2 tur; [ "$(count_ua)" = 1 ] || fail "G2: want exactly one reset UA"
[ "$(tm lun_resets_forwarded)" = 2 ] || fail "resets forwarded: $(tm lun_resets_forwarded)"
grep -q "TARGET WARM RESET\|Unknown task management" "$WORK/tgtd.log" &&
    fail "a target reset reached tgt"

step "ABORT TASK of a READ at the SAN (tgtd stopped): forwarded; the next WRITE waits for tgt's answer"
say G1 "write 11"; grep -qx "write ok" "$out" || fail "write"
TGT_PID=$(cat "$WORK/tgtd.pid")
kill -STOP "$TGT_PID"
say G1 "read-abort 2048"
grep -q "tmf abort-task response 0, read not answered" "$out" || { kill -CONT "$TGT_PID"; fail "abort"; }
before=$(wc -l < "$WORK/G1.out")
echo "write 5a" >&"${CFD[G1]}"
kill -CONT "$TGT_PID"
for _ in $(seq 600); do
    tail -n +"$((before + 1))" "$WORK/G1.out" | grep -q '^write' && break; sleep 0.05
done
tail -n +"$((before + 1))" "$WORK/G1.out" | tee "$out"
grep -qx "write ok" "$out" || fail "the write after the abort"
say G1 "read 5a"; grep -qx "read ok" "$out" || fail "the data"
[ "$(tm aborts_forwarded)" -ge 1 ] || fail "no ABORT TASK reached the SAN"
say G2 "read 5a"; grep -qx "read ok" "$out" || fail "G2's read"
step "tgtd restarts: the power-on UA that hvstord's own reconnect checks meet reaches both guest nexuses"
say G1 tur; say G2 tur
setups=$(grep -c "registered and reserved" "$WORK/hvstord1.log")
tgt_stop
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/lun1.img" || fail "lun 1"
for i in "$ADMIN" "$IQN_A"; do tgtadm_ --mode target --op bind --tid 1 --initiator-name "$i"; done
for _ in $(seq 300); do
    [ "$(grep -c "registered and reserved" "$WORK/hvstord1.log")" -gt "$setups" ] && break
    sleep 0.1
done
[ "$(grep -c "registered and reserved" "$WORK/hvstord1.log")" -gt "$setups" ] ||
    fail "hvstord did not log in to the restarted tgt"
[ "$(tm san_unit_attentions)" -ge 1 ] || fail "the reconnect's UA was not reported"
say G1 tur; [ "$(count_ua)" -ge 1 ] || fail "G1 did not hear of the SAN's power-on"
say G2 tur; [ "$(count_ua)" -ge 1 ] || fail "G2 did not hear of the SAN's power-on"
say G1 "read 5a"; grep -qx "read ok" "$out" || fail "the data after the SAN's restart"
echo "aborts forwarded: $(tm aborts_forwarded), LUN resets forwarded: $(tm lun_resets_forwarded), SAN UAs reported: $(tm san_unit_attentions)"
echo PASS
