# Helpers for the san/ integration tests: a private tgtd on a free loopback
# port with its own control socket (-C), stopped on exit even on failure.
# Sourced by test_*.sh; not a test itself.

SAN_ITEST=${HVSTOR_BUILD:?HVSTOR_BUILD not set}/tests/integration/san-itest
IQN_PREFIX=iqn.2026-11.org.hvstor.test
VM_A=iqn.2026-11.org.hvstor:vm.alpha
VM_B=iqn.2026-11.org.hvstor:vm.bravo
VM_C=iqn.2026-11.org.hvstor:vm.charlie

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

command -v tgtd >/dev/null && command -v tgtadm >/dev/null \
    || skip "tgtd/tgtadm not installed"
[ -x "$SAN_ITEST" ] || fail "$SAN_ITEST not built"
[ "$(id -u)" = 0 ] || skip "tgtd needs root for its control socket"

WORK=$(mktemp -d /var/tmp/hvstor-san-XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORTAL=127.0.0.1:$PORT
# tgtd's control "port" names its socket /var/run/tgtd/socket.N (N < 32768);
# pick one no other tgtd on this machine uses
CTL=$(( PORT % 20000 + 10000 ))
while [ -e "/var/run/tgtd/socket.$CTL" ]; do CTL=$(( (CTL + 7) % 20000 + 10000 )); done

tgt_stop() {
    if [ -s "$WORK/tgtd.pid" ]; then
        local pid; pid=$(cat "$WORK/tgtd.pid")
        kill -9 "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        : > "$WORK/tgtd.pid"
    fi
}
cleanup() {
    tgt_stop
    rm -f "/var/run/tgtd/socket.$CTL" "/var/run/tgtd/socket.$CTL.lock"
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

tgtadm_() { tgtadm -C "$CTL" --lld iscsi "$@"; }

tgt_start() {
    tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT" >>"$WORK/tgtd.log" 2>&1 &
    echo $! > "$WORK/tgtd.pid"
    disown
    for _ in $(seq 100); do
        kill -0 "$(cat "$WORK/tgtd.pid")" 2>/dev/null || break
        tgtadm_ --mode target --op show >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    fail "tgtd did not come up on $PORTAL (see $WORK/tgtd.log)"
}
