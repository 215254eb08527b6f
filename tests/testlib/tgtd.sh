# tgtd.sh — a private tgtd for tests and benchmarks (sourced, not run): on a
# free loopback port, with a control socket of its own so that it never
# talks to (or stops) another tgtd on the machine.
#
#   tgt_require        skip (77) unless tgtd and tgtadm are installed and we are root
#   tgt_pick_ports     PORT (free loopback port), PORTAL=127.0.0.1:$PORT, CTL
#                      (control port: /var/run/tgtd/socket.$CTL, unused, < 32768)
#   tgt_start          start tgtd on $PORT (log $WORK/tgtd.log, pid $WORK/tgtd.pid)
#                      and wait until it answers; fails when it does not
#   tgtadm_ ARGS...    tgtadm on that tgtd (--lld iscsi)
#   tgt_stop           stop it (SIGKILL: tgtd ignores SIGTERM while it holds targets)
#   tgt_cleanup        tgt_stop, and remove its control socket files (for the EXIT trap)
#   free_port          print a TCP port on 127.0.0.1 that was free a moment ago
#
# The caller sets WORK (its scratch directory) before tgt_start. skip and fail
# are defined here unless the caller has its own. Safe under set -euo pipefail.

declare -F skip >/dev/null || skip() { echo "SKIP: $*"; exit 77; }
declare -F fail >/dev/null || fail() { echo "FAIL: $*"; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

tgt_require() {
    command -v tgtd >/dev/null && command -v tgtadm >/dev/null || skip "tgtd/tgtadm not installed"
    [ "$(id -u)" = 0 ] || skip "tgtd needs root for its control socket"
}

tgt_pick_ports() {
    PORT=$(free_port)
    PORTAL=127.0.0.1:$PORT
    # tgtd's control "port" names its socket /var/run/tgtd/socket.N (N < 32768);
    # pick one no other tgtd on this machine uses
    CTL=$(( PORT % 20000 + 10000 ))
    while [ -e "/var/run/tgtd/socket.$CTL" ]; do CTL=$(( (CTL + 7) % 20000 + 10000 )); done
}

tgtadm_() { tgtadm -C "$CTL" --lld iscsi "$@"; }

tgt_start() {
    # Only WORK, PORT and CTL: hook scripts get these exported (and the
    # functions with export -f) to restart tgtd from a child process.
    tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT" >>"$WORK/tgtd.log" 2>&1 &
    echo $! > "$WORK/tgtd.pid"
    disown
    for _ in $(seq 100); do
        kill -0 "$(cat "$WORK/tgtd.pid")" 2>/dev/null || break
        tgtadm_ --mode target --op show >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    fail "tgtd did not come up on 127.0.0.1:$PORT (see $WORK/tgtd.log)"
}

tgt_stop() {
    if [ -s "$WORK/tgtd.pid" ]; then
        local pid; pid=$(cat "$WORK/tgtd.pid")
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        : > "$WORK/tgtd.pid"
    fi
}

tgt_cleanup() {
    [ -n "${WORK:-}" ] && tgt_stop
    if [ -n "${CTL:-}" ]; then
        rm -f "/var/run/tgtd/socket.$CTL" "/var/run/tgtd/socket.$CTL.lock"
    fi
}
