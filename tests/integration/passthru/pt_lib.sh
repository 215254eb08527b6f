# Shared by the passthru test_*.sh scripts (sourced, not a test itself): a
# private tgtd on a free loopback port with its own control socket, and one
# or two hvstord with private state dirs, all stopped on exit even on failure.
#
#   pt_setup                 scratch dir, skip (77) when tools are missing
#   tgt_start / tgt_stop     tgtd on $PORTAL, control port $CTL (<= 32767)
#   tgtadm_ ARGS...          tgtadm on that tgtd (these three: tests/testlib/tgtd.sh)
#   pt_target N [IQN...]     target 1 ($T1), LUNs 1..N on $WORK/lunK.img, IQNs let in
#   hvd_start N              hvstord number N (1 or 2): HVD_PORTAL[N], state $WORK/stN
#   hvctl_ N ARGS...         hvctl on daemon N
set -u

source "$(dirname "${BASH_SOURCE[0]}")/../../testlib/tgtd.sh"
step() { echo "--- $*"; }

PT_CDB=${HVSTOR_BUILD:?HVSTOR_BUILD not set}/tests/integration/pt-cdb
: "${HVSTOR_BIN:?HVSTOR_BIN not set}"
TEST_OUI=00:11:22            # tests only: any OUI will do in a private tgtd
T1=iqn.2026-11.org.hvstor.test:pt1
ADMIN=iqn.2026-11.org.hvstor.test:san-admin   # the SAN administrator's own initiator

pt_setup() {
    tgt_require
    for b in hvstord hvctl; do [ -x "$HVSTOR_BIN/$b" ] || skip "$b not built"; done
    [ -x "$PT_CDB" ] || fail "$PT_CDB not built"
    WORK=$(mktemp -d /var/tmp/hvstor-pt-XXXXXX)
    tgt_pick_ports
    HVD_PID=("" "" "")
    HVD_PORTAL=("" "" "")
    EXTRA_PIDS=()
    trap pt_cleanup EXIT
}

pt_cleanup() {
    local rc=$?
    for p in "${EXTRA_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for n in 1 2; do
        local pid=${HVD_PID[$n]}
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    tgt_cleanup
    if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
        for n in 1 2; do
            [ -f "$WORK/hvstord$n.log" ] || continue
            echo "---- hvstord $n log (tail)"; tail -25 "$WORK/hvstord$n.log"
        done
    fi
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}

pt_target() {   # pt_target N [INITIATOR...]
    local n=$1 i
    shift
    tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target"
    for i in $(seq "$n"); do
        tgtadm_ --mode logicalunit --op new --tid 1 --lun "$i" -b "$WORK/lun$i.img" ||
            fail "lun $i"
    done
    for i in "$@"; do
        tgtadm_ --mode target --op bind --tid 1 --initiator-name "$i" || fail "acl for $i"
    done
}

# Run a tgtadm command line as `hvctl vm zoning` printed it, on our tgtd.
tgt_run_printed() {
    local line=$1
    case "$line" in
        "tgtadm --lld iscsi "*) ;;
        *) fail "not a tgtadm line: $line" ;;
    esac
    echo "+ $line"
    eval "tgtadm -C $CTL ${line#tgtadm }" || fail "tgtadm failed: $line"
}

hvd_start() {   # hvd_start N [extra hvstord args]
    local n=$1; shift
    local st=$WORK/st$n
    mkdir -p "$st"
    rm -f "$st/portal"
    "$HVSTOR_BIN/hvstord" --state-dir "$st" --portal 127.0.0.1:0 --no-direct-io \
        --wwn-oui "$TEST_OUI" --iqn-prefix "iqn.2026-11.org.hvstor.test.host$n" \
        --host-id "$n" --log-level "${PT_LOG_LEVEL:-info}" "$@" \
        >>"$WORK/hvstord$n.out" 2>>"$WORK/hvstord$n.log" &
    HVD_PID[$n]=$!
    for _ in $(seq 100); do
        [ -S "$st/hvstord.sock" ] && [ -s "$st/portal" ] && break
        kill -0 "${HVD_PID[$n]}" 2>/dev/null ||
            fail "hvstord $n exited: $(tail -3 "$WORK/hvstord$n.log")"
        sleep 0.1
    done
    [ -s "$st/portal" ] || fail "hvstord $n did not start"
    HVD_PORTAL[$n]=$(cat "$st/portal")
}

hvctl_() { local n=$1; shift; "$HVSTOR_BIN/hvctl" --state-dir "$WORK/st$n" "$@"; }

json_get() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1]) if sys.argv[1]!="-" else sys.stdin); print(eval(sys.argv[2]))' "$@"
}

# The controller target of VM on daemon N, and QEMU's default guest name for it.
ctl_target() { echo "iqn.2026-11.org.hvstor:$1.c$2"; }
guest_iqn() { echo "iqn.2008-11.org.linux-kvm:$1"; }
guest_url() { echo "iscsi://${HVD_PORTAL[$1]}/$(ctl_target "$2" "$3")/$4"; }
