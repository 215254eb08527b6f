#!/bin/bash
# Writer hooks: called in name order (reverse for thaw and abort), each with
# a time limit. A hook that fails or overruns aborts the freeze, and nothing
# stays frozen: not the filesystem, not the writers already called.
. "$(dirname "$0")/lib.sh"

make_fs
check_only_our_fs
CALLS=$WORK/calls.log

# Every hook records "name phase"; behaviour per hook and phase comes from
# files the test drops in $WORK (fail.NAME.PHASE, hang.NAME.PHASE).
make_writer() {
    cat >"$WRITERS/$1" <<EOF
#!/bin/sh
echo "$1 \$1" >>"$CALLS"
[ -e "$WORK/hang.$1.\$1" ] && sleep 6007
[ -e "$WORK/fail.$1.\$1" ] && exit 3
exit 0
EOF
    chmod +x "$WRITERS/$1"
}
make_writer 10-db
make_writer 20-queue
make_writer 30-cache
printf '#!/bin/sh\nexit 1\n' >"$WRITERS/40-not-executable"    # no x bit: ignored
printf 'x' >"$WRITERS/.hidden"                                 # hidden: ignored
calls() { tr '\n' ',' <"$CALLS"; }

start_agent --thaw-timeout 30 --writer-timeout 1
open_client
req '{"id":1,"cmd":"hello","versions":[1]}'
expect '"writers":["10-db","20-queue","30-cache"]'
pass "hello lists the executable hooks in name order"

# ---- a full cycle
: >"$CALLS"
req '{"id":2,"cmd":"freeze"}'
expect '"state":"frozen"'
req '{"id":3,"cmd":"thaw"}'
expect '"ok":true'
want="10-db prepare,20-queue prepare,30-cache prepare,10-db freeze,20-queue freeze,30-cache freeze,30-cache thaw,20-queue thaw,10-db thaw,"
[ "$(calls)" = "$want" ] || fail "hook calls: $(calls)"
pass "prepare and freeze in name order, thaw in reverse"

# ---- a hook that fails its freeze
: >"$CALLS"
touch "$WORK/fail.20-queue.freeze"
req '{"id":4,"cmd":"freeze"}'
expect '"ok":false'; expect '"code":"writer-failed"'; expect '20-queue'; expect '"state":"idle"'
expect '"frozen":[]'
fs_is_writable 3 || fail "a failed freeze left the filesystem frozen"
want="10-db prepare,20-queue prepare,30-cache prepare,10-db freeze,20-queue freeze,30-cache abort,20-queue abort,10-db abort,"
[ "$(calls)" = "$want" ] || fail "hook calls after a failing writer: $(calls)"
rm "$WORK/fail.20-queue.freeze"
pass "a failing writer aborts the freeze: $(grep -o '"message":"[^"]*"' <<<"$R")"

# ---- a hook that fails its prepare: only the hooks already called get abort
: >"$CALLS"
touch "$WORK/fail.20-queue.prepare"
req '{"id":5,"cmd":"prepare"}'
expect '"code":"writer-failed"'; expect '"state":"idle"'
want="10-db prepare,20-queue prepare,20-queue abort,10-db abort,"
[ "$(calls)" = "$want" ] || fail "hook calls after a failing prepare: $(calls)"
rm "$WORK/fail.20-queue.prepare"
pass "a failing prepare aborts the writers already called"

# ---- a hook that overruns its 1 s limit (and its helper process dies with it)
: >"$CALLS"
touch "$WORK/hang.30-cache.freeze"
t0=$SECONDS
req '{"id":6,"cmd":"freeze"}'
expect '"code":"writer-timeout"'; expect '30-cache'; expect '"state":"idle"'
[ $((SECONDS - t0)) -le 5 ] || fail "the timeout took $((SECONDS - t0)) s"
fs_is_writable 3 || fail "a timed-out writer left the filesystem frozen"
want="10-db prepare,20-queue prepare,30-cache prepare,10-db freeze,20-queue freeze,30-cache freeze,30-cache abort,20-queue abort,10-db abort,"
[ "$(calls)" = "$want" ] || fail "hook calls after a hanging writer: $(calls)"
sleep 0.2
pgrep -f "sleep 6007" >/dev/null && fail "the hanging hook's helper process survived"
rm "$WORK/hang.30-cache.freeze"
pass "a writer over its time limit is killed and the freeze aborted"

# ---- while a hook runs, the agent still answers, and abort cancels it
: >"$CALLS"
stop_agent
close_client
start_agent --thaw-timeout 30 --writer-timeout 20
open_client
touch "$WORK/hang.20-queue.prepare"
printf '%s\n' '{"id":7,"cmd":"freeze"}' >&$CL_IN
sleep 0.5
req '{"id":8,"cmd":"status"}'
expect '"id":8'; expect '"state":"preparing"'
req '{"id":9,"cmd":"thaw"}'
expect '"code":"busy"'
printf '%s\n' '{"id":10,"cmd":"abort"}' >&$CL_IN
IFS= read -r -t 10 R <&$CL_OUT || fail "no reply to the cancelled freeze"
expect '"id":7'; expect '"code":"aborted"'
IFS= read -r -t 10 R <&$CL_OUT || fail "no reply to abort"
expect '"id":10'; expect '"ok":true'; expect '"state":"idle"'
want="10-db prepare,20-queue prepare,20-queue abort,10-db abort,"
[ "$(calls)" = "$want" ] || fail "hook calls after abort: $(calls)"
rm "$WORK/hang.20-queue.prepare"
pass "status answers and abort cancels while a hook runs"

# ---- the thaw deadline also bounds slow writer freezes
: >"$CALLS"
stop_agent
close_client
start_agent --thaw-timeout 1 --writer-timeout 20
open_client
touch "$WORK/hang.10-db.freeze"
req '{"id":11,"cmd":"freeze"}'
expect '"code":"aborted"'; expect 'thaw deadline'
fs_is_writable 3 || fail "frozen after the deadline"
rm "$WORK/hang.10-db.freeze"
pass "a freeze that cannot finish within the thaw deadline is rolled back"
close_client
stop_agent
finish
