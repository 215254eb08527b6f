#!/bin/bash
# Never a frozen guest: the agent thaws on its own after the deadline, when
# the host connection drops, and when it is killed with SIGKILL and
# restarted (from its state file); `hvstor-vss --thaw-now` thaws from a shell.
. "$(dirname "$0")/lib.sh"

make_fs
check_only_our_fs

# ---- 1. no thaw within --thaw-timeout 2
start_agent --thaw-timeout 2
open_client
req '{"id":1,"cmd":"freeze"}'
expect '"state":"frozen"'
t0=$SECONDS
start_blocked_write timeout1
write_is_blocked 1 || fail "the write went through a frozen filesystem"
write_completes_within 6 || fail "still frozen 7 s after a freeze with a 2 s thaw timeout"
pass "auto-thaw after the 2 s deadline (write done after $((SECONDS - t0)) s)"
req '{"id":2,"cmd":"status"}'
expect '"state":"idle"'; expect '"last_auto_thaw":"timeout"'
req '{"id":3,"cmd":"thaw"}'
expect '"code":"auto-thawed"'
pass "a late thaw is told that the snapshot is not consistent"
[ ! -e "$STATE" ] || fail "state file left after the auto-thaw"

# a requestor may ask for a shorter deadline than the agent's, never a longer one
req '{"id":4,"cmd":"freeze","thaw_timeout_ms":500}'
expect '"state":"frozen"'
grep -qE '"thaw_in_ms":([1-9]|[1-9][0-9]|[1-4][0-9]{2}|500)[,}]' <<<"$R" || fail "thaw_in_ms not <= 500: $R"
fs_is_writable 4 || fail "the 500 ms deadline was not honoured"
pass "per-freeze thaw_timeout_ms"
close_client
stop_agent

# ---- 2. the host hangs up while the guest is frozen
start_agent --thaw-timeout 60
open_client
req '{"id":1,"cmd":"freeze"}'
expect '"state":"frozen"'
start_blocked_write hangup1
write_is_blocked 1 || fail "the write went through a frozen filesystem"
t0=$(date +%s%N)
close_client
write_completes_within 3 || fail "still frozen after the host hung up"
pass "auto-thaw when the host connection drops ($((($(date +%s%N) - t0) / 1000000)) ms)"
out=$("$AGENT_BIN" --send "unix:$SOCK" '{"id":9,"cmd":"status"}' 2>>"$LOG")
grep -qF '"last_auto_thaw":"hangup"' <<<"$out" || fail "status after hang-up: $out"
stop_agent

# Freeze through a client, then SIGKILL the agent: the filesystem stays
# frozen with nobody left to thaw it but the state file.
freeze_then_kill_agent() {
    open_client
    req '{"id":1,"cmd":"freeze"}'
    expect '"state":"frozen"'
    kill -9 "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null
    AGENT_PID=
    close_client
}

# ---- 3. SIGKILL while frozen, then a restart thaws from the state file
start_agent --thaw-timeout 60
freeze_then_kill_agent
start_blocked_write killed1
write_is_blocked 1.5 || fail "the filesystem thawed although nobody thawed it"
[ -f "$STATE" ] || fail "no state file after the agent was killed"
pass "after SIGKILL the filesystem stays frozen and the state file remains"
start_agent --thaw-timeout 60
write_completes_within 3 || fail "the restarted agent did not thaw"
[ ! -e "$STATE" ] || fail "the restarted agent left the state file"
out=$("$AGENT_BIN" --send "unix:$SOCK" '{"id":9,"cmd":"status"}' 2>>"$LOG")
grep -qF '"last_auto_thaw":"startup"' <<<"$out" || fail "status after restart: $out"
pass "a restarted agent thaws what its killed predecessor froze"

# ---- 4. hvstor-vss --thaw-now from a shell
freeze_then_kill_agent
start_blocked_write thawnow1
write_is_blocked 1 || fail "not frozen before --thaw-now"
out=$("$AGENT_BIN" --thaw-now --state "$STATE" --fs "$MNT" 2>>"$LOG") || fail "--thaw-now: $out"
grep -q "thawed 1 filesystem" <<<"$out" || fail "--thaw-now said: $out"
write_completes_within 3 || fail "still frozen after --thaw-now"
pass "--thaw-now: $out"

# ---- 5. SIGTERM while frozen: the agent thaws before it exits
start_agent --thaw-timeout 60
open_client
req '{"id":1,"cmd":"freeze"}'
expect '"state":"frozen"'
kill -TERM "$AGENT_PID"
wait "$AGENT_PID"
rc=$?
AGENT_PID=
[ $rc = 0 ] || fail "the agent exited with $rc on SIGTERM"
fs_is_writable 3 || fail "SIGTERM left the filesystem frozen"
close_client
pass "SIGTERM thaws before exiting"

finish
