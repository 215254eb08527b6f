#!/bin/bash
# Fault test: tgtd is killed (SIGKILL) in the middle of a stream of writes and
# started again with the same configuration.
#  1. back within the replacement timeout: every write completes GOOD, in
#     order, and every one is on the LUN afterwards;
#  2. back only after the timeout (3 s here): the writes fail with a transport
#     failure and a NOT READY sense instead of hanging, and once tgtd is back
#     the session reconnects by itself and new writes work.
#  2b. writes that overlap (two to the same blocks in flight at once) across a
#     restart: replayed in submission order, the newest is what the LUN holds.
#  2c. the target itself ends the session and refuses the VM's name for 6 s
#     (ACL withdrawn, then granted again): logins are retried, commands fail
#     past the timeout, and the session comes back once the name is let in.
#  3. tgtd hangs (SIGSTOP) with its connection up: the NOP-Out ping notices,
#     the writes fail after the timeout, and after SIGCONT the session is back.
set -u
source "$(dirname "$0")/tgt_lib.sh"

T1=$IQN_PREFIX:fault
truncate -s 64M "$WORK/lun1.img"
configure() {
    tgtadm_ --mode target --op new --tid 1 -T "$T1" &&
    tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/lun1.img" &&
    tgtadm_ --mode target --op bind --tid 1 --initiator-name "$VM_A"
}
tgt_start
configure || fail "configure tgtd"

# the hooks run as children of san-itest: hand them what they need
export WORK PORT CTL T1 VM_A
export -f tgt_start tgt_stop tgtadm_ configure fail
cat > "$WORK/restart_fast.sh" <<'HOOK'
tgt_stop
echo "hook: tgtd killed at $(date +%T.%N | cut -c1-12)"
sleep 2
tgt_start && configure || exit 1
echo "hook: tgtd back at $(date +%T.%N | cut -c1-12)"
HOOK
cat > "$WORK/restart_slow.sh" <<'HOOK'
tgt_stop
echo "hook: tgtd killed at $(date +%T.%N | cut -c1-12)"
sleep 6
tgt_start && configure || exit 1
echo "hook: tgtd back at $(date +%T.%N | cut -c1-12)"
HOOK

cat > "$WORK/hang.sh" <<'HOOK'
kill -STOP "$(cat "$WORK/tgtd.pid")"
echo "hook: tgtd stopped at $(date +%T.%N | cut -c1-12)"
sleep 8
kill -CONT "$(cat "$WORK/tgtd.pid")"
echo "hook: tgtd continued at $(date +%T.%N | cut -c1-12)"
HOOK

cat > "$WORK/acl.sh" <<'HOOK'
tgtadm_ --mode target --op unbind --tid 1 --initiator-name "$VM_A" || exit 1
for sid in $(tgtadm_ --mode target --op show | sed -n 's/^ *I_T nexus: \([0-9]*\)$/\1/p'); do
    tgtadm_ --mode conn --op delete --tid 1 --sid "$sid" --cid 0 || exit 1
    echo "hook: target ended session $sid"
done
sleep 6
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$VM_A" || exit 1
echo "hook: $VM_A let in again"
HOOK

out=$WORK/out
echo "--- tgtd restarted within the 30 s replacement timeout"
"$SAN_ITEST" fault -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/restart_fast.sh" \
    -T 30000 -n 96 -e ok > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "writes across a restart within the timeout"
grep -q "replaying queued commands in order" "$out" || fail "no replay after the reconnect"
grep -q "unit attentions consumed after the reconnect: [1-9]" "$out" \
    || fail "the restarted target's UNIT ATTENTION was not met before the replay"

echo "--- overlapping writes replayed in order across a restart"
"$SAN_ITEST" fault -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/restart_fast.sh" \
    -T 30000 -n 97 -O -P "$WORK/tgtd.pid" -e ok > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "overlapping writes across a restart"
grep -q "replaying queued commands in order" "$out" || fail "no replay after the reconnect"
grep -q "tgtd stopped: the last" "$out" || fail "writes were not in flight at the kill"

echo "--- tgtd back only after a 3 s replacement timeout"
"$SAN_ITEST" fault -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/restart_slow.sh" \
    -T 3000 -n 96 -e fail > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "writes past the timeout"
grep -q "failfast" "$out" || fail "session never went failfast"
grep -q "first failed write .*transport failed" "$out" || fail "failure not a transport failure"
echo "--- the target ends the session and refuses the name for 6 s, 3 s timeout"
"$SAN_ITEST" fault -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/acl.sh" \
    -T 3000 -n 96 -e fail > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "session ended by the target"
grep -q "hook: target ended session" "$out" || fail "the hook found no session to end"

echo "--- tgtd hangs with the connection up (SIGSTOP for 8 s), 3 s timeout, 1 s NOP-Out"
"$SAN_ITEST" fault -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/hang.sh" \
    -T 3000 -N 1000 -n 96 -e fail > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "writes to a hung target"
grep -q "did not answer a NOP-Out" "$out" || fail "the hang was not noticed by the NOP-Out ping"
echo "PASS"
