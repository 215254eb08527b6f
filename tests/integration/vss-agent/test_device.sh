#!/bin/bash
# --device mode: the agent on a character device (a raw pty standing in for
# the virtio-serial port), freezing through it, and thawing when the host
# end goes away. Then it keeps retrying the port, as it does in a guest
# before QEMU's side connects.
. "$(dirname "$0")/lib.sh"
PTY_HOST=${HVSTOR_BUILD:?}/tests/integration/vss-pty-host
[ -x "$PTY_HOST" ] || fail "$PTY_HOST is not built"

make_fs
check_only_our_fs

coproc CL { exec "$PTY_HOST"; }
CLIENT_PID=$CL_PID
exec {CL_IN}>&"${CL[1]}" {CL_OUT}<&"${CL[0]}"
eval "exec ${CL[1]}>&- ${CL[0]}<&-"
IFS= read -r -t 10 PORT <&$CL_OUT || fail "no pty"
[ -c "$PORT" ] || fail "$PORT is not a character device"

"$AGENT_BIN" --device "$PORT" --fs "$MNT" --state "$STATE" --writers "$WRITERS" \
    --thaw-timeout 60 -v >>"$LOG" 2>&1 &
AGENT_PID=$!
sleep 0.3
req '{"id":1,"cmd":"hello","versions":[1]}'
expect '"ok":true'; expect "\"mount\":\"$MNT\""
req '{"id":2,"cmd":"freeze"}'
expect '"state":"frozen"'
start_blocked_write dev1
write_is_blocked 1 || fail "not frozen through the device"
pass "freeze through the device"

close_client
write_completes_within 3 || fail "still frozen after the host end of the port went away"
pass "the port hanging up thaws"
sleep 1.5
kill -0 "$AGENT_PID" || fail "the agent died when its port went away"
grep -q "retrying" "$LOG" || fail "the agent does not retry its port"
pass "the agent keeps retrying its port"
stop_agent
finish
