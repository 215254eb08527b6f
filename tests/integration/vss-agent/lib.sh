# Shared by the vss-agent integration tests (sourced, not run).
#
# Each test freezes ONLY its own ext4 on a loop device: the agent always gets
# --fs "$MNT", and before any freeze the test checks that the agent's hello
# lists exactly that one filesystem. A frozen root filesystem would hang the
# machine, so a test that cannot prove this stops before freezing anything.
#
# The host side of the protocol is `hvstor-vss --send unix:SOCK` run as a
# bash coprocess: it copies our lines to the agent and its replies back, and
# closing its stdin closes the connection (the "host hangs up" case).

set -u
BIN=${HVSTOR_BIN:?HVSTOR_BIN is not set}
AGENT_BIN=$BIN/hvstor-vss

skip() { echo "SKIP: $*"; exit 77; }
fail() {
    echo "FAIL: $*" >&2
    [ -f "${LOG:-}" ] && { echo "--- agent log (last 30 lines)" >&2; tail -n 30 "$LOG" >&2; }
    exit 1
}
pass() { echo "ok: $*"; }

[ "$(id -u)" = 0 ] || skip "needs root for loop devices and FIFREEZE"
for tool in mkfs.ext4 losetup mount umount fsfreeze dd; do
    command -v $tool >/dev/null || skip "$tool is not installed"
done
[ -x "$AGENT_BIN" ] || fail "$AGENT_BIN is not built"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/hvstor-vss-test.XXXXXX")
MNT=$WORK/mnt
SOCK=$WORK/agent.sock
STATE=$WORK/state/frozen
WRITERS=$WORK/writers.d
LOG=$WORK/agent.log
LOOP=
AGENT_PID=
mkdir -p "$MNT" "$WRITERS"

cleanup() {
    local rc=$?
    declare -F extra_cleanup >/dev/null && extra_cleanup
    # Thaw first: everything below (and the blocked dd's) needs a live fs.
    [ -n "$LOOP" ] && fsfreeze -u "$MNT" 2>/dev/null
    [ -n "${CLIENT_PID:-}" ] && kill "$CLIENT_PID" 2>/dev/null
    [ -n "$AGENT_PID" ] && kill -9 "$AGENT_PID" 2>/dev/null
    [ -n "$LOOP" ] && fsfreeze -u "$MNT" 2>/dev/null
    jobs -p | xargs -r kill 2>/dev/null
    wait 2>/dev/null
    if [ -n "$LOOP" ]; then
        umount "$MNT" 2>/dev/null || { sleep 1; umount -l "$MNT"; }
        losetup -d "$LOOP" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

make_fs() {
    dd if=/dev/zero of="$WORK/disk.img" bs=1M count=64 status=none || fail "dd"
    mkfs.ext4 -q -F "$WORK/disk.img" || fail "mkfs.ext4"
    LOOP=$(losetup -f --show "$WORK/disk.img") || skip "no free loop device"
    mount "$LOOP" "$MNT" || { losetup -d "$LOOP"; LOOP=; skip "cannot mount a loop device here"; }
    MNT=$(realpath "$MNT")
}

# Start the agent on our socket, restricted to our filesystem. Extra
# options (--thaw-timeout 2, --writer-timeout 1, ...) are passed through.
start_agent() {
    rm -f "$SOCK"
    "$AGENT_BIN" --listen "unix:$SOCK" --fs "$MNT" --state "$STATE" --writers "$WRITERS" \
        -v "$@" >>"$LOG" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 100); do
        [ -S "$SOCK" ] && return 0
        kill -0 "$AGENT_PID" 2>/dev/null || fail "the agent exited at start"
        sleep 0.05
    done
    fail "the agent did not create $SOCK"
}

stop_agent() {
    kill "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID"
    local rc=$?
    AGENT_PID=
    [ $rc = 0 ] || fail "the agent exited with status $rc on SIGTERM"
}

# The end of every test: no sanitizer report from any of our processes.
finish() {
    grep -q "Sanitizer\|runtime error" "$LOG" && fail "sanitizer report in the agent log"
    exit 0
}

# The safety check: the agent must see exactly our mount point and nothing else.
check_only_our_fs() {
    local hello
    hello=$("$AGENT_BIN" --list --fs "$MNT" --writers "$WRITERS" -q) || fail "--list failed"
    local n
    n=$(grep -o '"mount":"[^"]*"' <<<"$hello" | wc -l)
    [ "$n" = 1 ] || fail "expected exactly one filesystem in $hello"
    grep -q "\"mount\":\"$MNT\"" <<<"$hello" || fail "our mount point is not the one: $hello"
}

open_client() {
    coproc CL { exec "$AGENT_BIN" --send "unix:$SOCK" 2>>"$LOG"; }
    CLIENT_PID=$CL_PID
    exec {CL_IN}>&"${CL[1]}" {CL_OUT}<&"${CL[0]}"
    # Keep only our copies, so that closing CL_IN really closes the pipe.
    eval "exec ${CL[1]}>&- ${CL[0]}<&-"
}

close_client() {
    exec {CL_IN}>&-
    wait "$CLIENT_PID" 2>/dev/null
    exec {CL_OUT}<&-
    CLIENT_PID=
}

# req JSON -> the reply in $R (fails the test when none comes in 30 s)
req() {
    printf '%s\n' "$1" >&$CL_IN
    IFS= read -r -t 30 R <&$CL_OUT || fail "no reply to: ${1:0:200}"
}

expect() {   # expect PATTERN [what]: $R must contain PATTERN
    grep -qF -- "$1" <<<"$R" || fail "${2:-reply}: expected $1 in: ${R:0:600}"
}

# A write that must wait while the filesystem is frozen.
start_blocked_write() {
    dd if=/dev/urandom of="$MNT/${1:-probe}" bs=64k count=4 conv=fsync status=none &
    WRITER_PID=$!
}
write_is_blocked() {   # still running after $1 seconds?
    sleep "${1:-1}"
    kill -0 "$WRITER_PID" 2>/dev/null
}
write_completes_within() {   # finished within $1 seconds?
    local deadline=$((SECONDS + $1))
    while kill -0 "$WRITER_PID" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
    wait "$WRITER_PID"
}
# Kernel truth, not the agent's word: a small synced write finishes at once
# on a thawed filesystem and waits (unkillably) on a frozen one. A probe
# left waiting finishes by itself after the thaw.
fs_is_writable() {   # fs_is_writable SECONDS
    dd if=/dev/zero of="$MNT/.probe.$RANDOM" bs=4k count=1 conv=fsync status=none &
    local pid=$! deadline=$((SECONDS + ${1:-3}))
    while kill -0 $pid 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
    return 0
}
