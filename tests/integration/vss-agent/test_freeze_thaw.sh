#!/bin/bash
# A real ext4 on a loop device, frozen and thawed through the protocol: a
# write to it waits while frozen and completes after the thaw. Then the
# agent is fed garbage of every kind and keeps serving.
. "$(dirname "$0")/lib.sh"

make_fs
check_only_our_fs
start_agent --thaw-timeout 30
open_client

req '{"id":1,"cmd":"hello","versions":[1,7],"requestor":"test_freeze_thaw"}'
expect '"ok":true'; expect '"version":1'; expect "\"mount\":\"$MNT\""
pass "hello: version 1 chosen, our filesystem listed"

req '{"id":2,"cmd":"freeze"}'
expect '"id":2'; expect '"ok":true'; expect '"state":"frozen"'; expect "\"frozen\":[\"$MNT\"]"
[ -f "$STATE" ] || fail "no state file while frozen"
grep -qF "\"$MNT\"" "$STATE" || fail "state file does not list $MNT"
pass "freeze: $(grep -o '"timings":{[^}]*}' <<<"$R")"

start_blocked_write data1
write_is_blocked 1.5 || fail "a write to the frozen filesystem completed"
pass "a synced write waits while frozen"

req '{"id":3,"cmd":"status"}'
expect '"state":"frozen"'; expect '"thaw_in_ms":'

req '{"id":4,"cmd":"freeze"}'
expect '"code":"bad-state"'

req '{"id":5,"cmd":"thaw"}'
expect '"id":5'; expect '"ok":true'; expect '"state":"idle"'; expect '"frozen_us":'
write_completes_within 5 || fail "the write did not complete after the thaw"
[ -s "$MNT/data1" ] || fail "the written file is empty"
[ ! -e "$STATE" ] || fail "state file left after thaw"
pass "thaw: the write completed, $(grep -o '"frozen_us":[0-9]*' <<<"$R")"

req '{"id":6,"cmd":"thaw"}'
expect '"code":"bad-state"'
pass "a second thaw is refused"

# prepare, then freeze from prepared, then abort
req '{"id":7,"cmd":"prepare"}'
expect '"ok":true'; expect '"state":"prepared"'
req '{"id":8,"cmd":"freeze","thaw_timeout_ms":20000}'
expect '"state":"frozen"'
req '{"id":9,"cmd":"abort"}'
expect '"ok":true'; expect '"state":"idle"'
fs_is_writable 3 || fail "abort left the filesystem frozen"
pass "prepare, freeze, abort"

# ---- someone else's freeze is neither doubled nor undone
fsfreeze -f "$MNT" || fail "fsfreeze -f"
req '{"id":30,"cmd":"freeze"}'
expect '"code":"freeze-failed"'; expect 'already frozen by someone else'; expect '"state":"idle"'
start_blocked_write other
write_is_blocked 1 || fail "the agent thawed a freeze that was not its own"
fsfreeze -u "$MNT"
write_completes_within 5 || fail "the write did not complete after fsfreeze -u"
pass "a filesystem frozen by someone else: freeze-failed, and left as it was"

# ---- malformed input: each gets an error reply, nothing takes the agent down
bad() {   # bad LINE CODE
    req "$1"
    expect '"ok":false' "${1:0:60}"
    expect "\"code\":\"$2\"" "${1:0:60}"
}
bad 'not json at all' parse
bad '[1,2,3]' parse
bad '{"id":1,"cmd":"freeze"} trailing' parse
bad '{"id":10}' bad-request
bad '{"cmd":"status"}' bad-request
bad '{"id":-1,"cmd":"status"}' bad-request
bad '{"id":1.5,"cmd":"status"}' bad-request
bad '{"id":"7","cmd":"status"}' bad-request
bad '{"id":9007199254740992,"cmd":"status"}' bad-request
bad '{"id":11,"cmd":"explode"}' unknown-command
bad '{"id":12,"cmd":7}' bad-request
bad '{"id":13,"cmd":"hello"}' bad-request
bad '{"id":14,"cmd":"hello","versions":[]}' bad-request
bad '{"id":15,"cmd":"hello","versions":[2,3]}' unsupported-version
bad '{"id":16,"cmd":"freeze","thaw_timeout_ms":0}' bad-request
bad '{"id":17,"cmd":"freeze","thaw_timeout_ms":"soon"}' bad-request
bad '{"id":18,"id":19,"cmd":"status"}' parse
bad '{"id":20,"cmd":"status","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[' parse
req '{"id":21,"cmd":"thaw"}'; expect '"code":"bad-state"'
# the id is echoed when it could be read, null otherwise
req '{"id":22,"cmd":"explode"}'; expect '"id":22'
req 'garbage'; expect '"id":null'
# binary bytes and NULs
printf '\x00\x01\xff\xfe{"id":\x00}\n' >&$CL_IN
IFS= read -r -t 30 R <&$CL_OUT || fail "no reply to binary input"
expect '"code":"parse"'
# an empty line is not a message either
req ''; expect '"code":"parse"'
# a line over the 64 KiB limit: one too-long reply, then the stream is in sync again
head -c 70000 /dev/zero | tr '\0' 'a' >&$CL_IN
printf '\n' >&$CL_IN
IFS= read -r -t 30 R <&$CL_OUT || fail "no reply to an over-long line"
expect '"code":"too-long"'
# a line just under the limit, valid JSON with a huge ignored field
pad=$(head -c 65000 /dev/zero | tr '\0' 'b')
req "{\"id\":23,\"cmd\":\"status\",\"pad\":\"$pad\"}"
expect '"id":23'; expect '"ok":true'
req '{"id":24,"cmd":"status"}'
expect '"id":24'; expect '"ok":true'; expect '"state":"idle"'
kill -0 "$AGENT_PID" || fail "the agent died"
pass "malformed, binary and over-long input: error replies, agent still serving"

# ---- one host at a time: a second connection is turned away, the first keeps working
second=$("$AGENT_BIN" --send "unix:$SOCK" '{"id":1,"cmd":"status"}' 2>>"$LOG")
grep -qF '"code":"busy"' <<<"$second" || fail "a second host was not refused: $second"
req '{"id":25,"cmd":"status"}'; expect '"ok":true'
pass "a second host connection is refused with busy"

close_client
# the listening agent takes the next host after the first one left
out=$("$AGENT_BIN" --send "unix:$SOCK" '{"id":1,"cmd":"status"}' 2>>"$LOG") || fail "reconnect: $out"
grep -qF '"ok":true' <<<"$out" || fail "reconnect: $out"
pass "a new host connection after the first hung up"

stop_agent
finish
