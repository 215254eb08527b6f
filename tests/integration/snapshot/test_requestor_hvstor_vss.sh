#!/bin/bash
# The requestor against the real guest agent: hvstor-vss on a Unix socket,
# restricted (--fs) to an ext4 on a loop device that this test makes. A
# checkpoint of a 2-disk group with the agent is application-consistent and
# the filesystem really is frozen between freeze and thaw; a thaw after the
# agent's own auto-thaw is reported as "auto-thawed" and the checkpoint says
# it is only crash-consistent, and why; a dead agent makes the cut
# crash-consistent without failing it.
# The vss-agent tests' library does the loop ext4 and the safety checks.
source "$HVSTOR_SRC/tests/integration/vss-agent/lib.sh"
DEMO=$HVSTOR_BUILD/tests/integration/snap-demo
[ -x "$DEMO" ] || fail "$DEMO is not built"

make_fs
check_only_our_fs
start_agent --thaw-timeout 5

# 1. Plain requestor calls: hello (version check), prepare, freeze, thaw.
out=$("$DEMO" agent "hvstor-vss:$SOCK" --sleep-ms 300) || fail "snap-demo agent: $out"
grep -q '"name": "hvstor-vss' <<<"$out" || fail "hello: $out"
grep -q '"filesystems": 1' <<<"$out" || fail "the agent must see only our fs: $out"
grep -q '"freeze": "ok"' <<<"$out" || fail "freeze: $out"
grep -q '"frozen_after_freeze": true' <<<"$out" || fail "status after freeze: $out"
grep -q '"thaw": "ok"' <<<"$out" || fail "thaw: $out"
fs_is_writable 5 || fail "the filesystem is still frozen after the thaw"
pass "hello, prepare, freeze, thaw through the requestor"

# 2. While frozen, a synced write on the guest fs blocks (kernel truth).
"$DEMO" agent "hvstor-vss:$SOCK" --sleep-ms 1500 >"$WORK/frozen.json" &
DEMO_PID=$!
sleep 0.5
fs_is_writable 0.7 && fail "a synced write went through while the requestor had it frozen"
wait $DEMO_PID || fail "snap-demo agent failed: $(cat "$WORK/frozen.json")"
fs_is_writable 5 || fail "not writable after the requestor's thaw"
pass "the filesystem is frozen between the requestor's freeze and thaw"

# 3. Late thaw: the agent auto-thaws after 1 s; our thaw after 2 s fails
#    with auto-thawed (ETIMEDOUT).
out=$("$DEMO" agent "hvstor-vss:$SOCK" --thaw-timeout-ms 1000 --sleep-ms 2000) || fail "$out"
grep -q 'auto-thawed' <<<"$out" || fail "late thaw should fail with auto-thawed: $out"
grep -q '"thaw_errno": 110' <<<"$out" || fail "late thaw should be ETIMEDOUT: $out"
pass "a thaw after the agent's auto-thaw is reported as auto-thawed"

# 4. Checkpoints of a 2-disk group with writers in flight: app-consistent.
out=$("$DEMO" checkpoint "$WORK/vm" --disks 2 --runs 2 --merge --agent "hvstor-vss:$SOCK") ||
    fail "checkpoint: $out"
[ "$(grep -c '"consistency":"app"' <<<"$out")" = 2 ] || fail "not app-consistent: $out"
fs_is_writable 5 || fail "frozen after the checkpoints"
pass "checkpoints with the agent are application-consistent: $(grep -o '"hold_ms":[0-9.]*' <<<"$out" | tr '\n' ' ')"

# 5. The agent auto-thaws before our thaw (1 ms limit; the cut itself
#    takes microseconds, so a slow on_cut handler holds the thaw back 200
#    ms): the checkpoint is kept but says crash, and why.
out=$("$DEMO" checkpoint "$WORK/vm2" --disks 2 --runs 1 --merge --thaw-timeout-ms 1 \
      --cut-delay-ms 200 --agent "hvstor-vss:$SOCK") || fail "checkpoint: $out"
grep -q '"consistency":"crash"' <<<"$out" || fail "expected crash consistency: $out"
grep -q 'auto-thawed' <<<"$out" || fail "the reason should name the auto-thaw: $out"
pass "an auto-thaw before the host's thaw downgrades the cut to crash-consistent"

# 6. A dead agent: the checkpoint still happens, crash-consistent, with the reason.
kill -9 "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null; AGENT_PID=
"$DEMO" checkpoint "$WORK/vm3" --disks 2 --runs 1 --agent "hvstor-vss:$SOCK" >"$WORK/dead.out" 2>&1 &&
    fail "opening a dead agent should fail: $(cat "$WORK/dead.out")"
grep -q "connect" "$WORK/dead.out" || fail "the error should say why: $(cat "$WORK/dead.out")"
out=$("$DEMO" checkpoint "$WORK/vm4" --disks 2 --runs 1 2>&1) || fail "$out"
grep -q '"why":"the VM has no guest agent"' <<<"$out" || fail "$out"
fs_is_writable 5 || fail "the guest fs is frozen after the agent was killed"
pass "without an agent the same cut is crash-consistent"
finish
