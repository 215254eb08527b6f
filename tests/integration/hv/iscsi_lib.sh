# Sourced by the iSCSI integration scripts: a scratch directory, iscsi-testd
# on a free loopback port, and cleanup that stops it even on failure.
set -euo pipefail

: "${HVSTOR_BIN:?HVSTOR_BIN must point at the built binaries}"
TESTD="$HVSTOR_BIN/iscsi-testd"
[ -x "$TESTD" ] || { echo "SKIP: $TESTD not built"; exit 77; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/hvstor-iscsi.XXXXXX")
TESTD_PID=
cleanup() {
    if [ -n "$TESTD_PID" ]; then
        kill "$TESTD_PID" 2>/dev/null || true
        wait "$TESTD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
    done
}

fail() {
    echo "FAIL: $*" >&2
    if [ -f "$WORK/testd.log" ]; then
        echo "--- iscsi-testd log (last 20 lines)" >&2
        tail -20 "$WORK/testd.log" >&2
    fi
    exit 1
}

# start_testd ARGS...: start the target, set PORT.
start_testd() {
    rm -f "$WORK/port"
    "$TESTD" --port 0 --port-file "$WORK/port" "$@" >"$WORK/testd.out" 2>"$WORK/testd.log" &
    TESTD_PID=$!
    for _ in $(seq 100); do
        [ -s "$WORK/port" ] && break
        kill -0 "$TESTD_PID" 2>/dev/null || fail "iscsi-testd exited at start"
        sleep 0.05
    done
    [ -s "$WORK/port" ] || fail "iscsi-testd did not start listening"
    PORT=$(cat "$WORK/port")
}

# stop_testd: SIGTERM, which must drain and exit 0.
stop_testd() {
    kill -TERM "$TESTD_PID"
    local rc=0
    wait "$TESTD_PID" || rc=$?
    TESTD_PID=
    [ "$rc" = 0 ] || fail "iscsi-testd exited $rc after SIGTERM"
}

# expect_fail DESCRIPTION COMMAND...: the command must fail.
expect_fail() {
    local what=$1
    shift
    if "$@" >"$WORK/expect_fail.out" 2>&1; then
        fail "$what: succeeded but must fail"
    fi
}
