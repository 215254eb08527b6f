#!/bin/bash
# The requestor against Debian's real qemu-ga (package qemu-guest-agent),
# started on a Unix socket. qemu-ga's guest-fsfreeze-freeze freezes every
# filesystem it can see and has no option to restrict it, so on this host it
# would freeze the root: the freeze commands are disabled (--block-rpcs) and
# no fsfreeze hook is configured. What is tested for real: the sync
# handshake (guest-sync-delimited), guest-info, guest-fsfreeze-status, the
# error path of a disabled freeze, and that a checkpoint through qemu-ga
# then falls back to crash consistency and says why.
set -u
BIN=${HVSTOR_BIN:?}
DEMO=$HVSTOR_BUILD/tests/integration/snap-demo
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; [ -f "${LOG:-}" ] && tail -n 20 "$LOG" >&2; exit 1; }
pass() { echo "ok: $*"; }
command -v qemu-ga >/dev/null || skip "qemu-ga is not installed (package qemu-guest-agent)"
[ -x "$DEMO" ] || fail "$DEMO is not built"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/snap-qga.XXXXXX")
SOCK=$WORK/qga.sock
LOG=$WORK/qga.log
QGA_PID=
cleanup() {
    [ -n "$QGA_PID" ] && kill "$QGA_PID" 2>/dev/null && wait "$QGA_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

BLOCK=guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw
mkdir -p "$WORK/state"
qemu-ga -m unix-listen -p "$SOCK" -f "$WORK/qga.pid" -t "$WORK/state" -b "$BLOCK" \
    -l "$LOG" &
QGA_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || fail "qemu-ga did not create $SOCK"

out=$("$DEMO" agent "qemu-ga:$SOCK" --info-only) || fail "info: $out"
grep -q '"name": "qemu-ga [0-9]' <<<"$out" || fail "guest-info: $out"
grep -q '"was_frozen": false' <<<"$out" || fail "guest-fsfreeze-status: $out"
pass "guest-sync-delimited, guest-info, guest-fsfreeze-status: $(grep -o '"name": "[^"]*"' <<<"$out")"

out=$("$DEMO" agent "qemu-ga:$SOCK") || fail "$out"
grep -q '"freeze": ".*has been disabled' <<<"$out" || fail "a disabled freeze must say so: $out"
pass "a refused freeze comes back as qemu-ga's own error"

out=$("$DEMO" checkpoint "$WORK/vm" --disks 2 --runs 1 --merge --agent "qemu-ga:$SOCK") ||
    fail "checkpoint: $out"
grep -q '"consistency":"crash"' <<<"$out" || fail "$out"
grep -q 'could not freeze.*disabled' <<<"$out" || fail "the reason must be given: $out"
pass "a checkpoint through qemu-ga without freeze is crash-consistent, with the reason"

# Several requestors one after the other: stale output never confuses the next.
for i in 1 2 3; do
    "$DEMO" agent "qemu-ga:$SOCK" --info-only >/dev/null || fail "reconnect $i"
done
pass "reconnects resynchronise with guest-sync-delimited"
