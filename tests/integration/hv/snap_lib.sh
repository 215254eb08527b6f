# Shared by tests/integration/hv/test_hvstord_checkpoint.sh and
# test_hvstord_backup.sh (sourced after hvstord_lib.sh, not a test itself):
# a real guest agent (hvstor-vss on a Unix socket, writer hooks only: no
# filesystem of this host is ever frozen) and data helpers over real iSCSI
# clients (qemu-io, qemu-img).
#
#   snap_agent_start         hvstor-vss --listen unix:$AGENT_SOCK --no-fs, hooks in $HOOKS
#   snap_agent_kill          kill -9 it (a dead agent)
#   wr VM C L PATTERN OFF LEN [MODEL]   write a byte pattern through iSCSI (and into MODEL)
#   rd VM C L PATTERN OFF LEN           read it back; fails the test if it differs
#   lun_image VM C L OUT     the whole LUN, read through iSCSI, as a raw file

INI=iqn.2026-11.org.hvstor.test:snap
AGENT_SOCK=
AGENT_PID=
HOOKS=
CALLS=

snap_agent_start()
{
    AGENT_SOCK=$HV_TMP/agent.sock
    HOOKS=$HV_TMP/writers.d
    CALLS=$HV_TMP/hook-calls.log
    mkdir -p "$HOOKS"
    # The hook records its phase; with $HV_TMP/hook-writes present it also
    # writes through iSCSI at freeze (an application flushing its state:
    # must be in the checkpoint) and at thaw (after the cut: must not be).
    cat >"$HOOKS/10-app" <<EOF
#!/bin/sh
echo "\$1" >>"$CALLS"
# The agent dying in the middle of a freeze.
[ "\$1" = freeze ] && [ -e "$HV_TMP/hook-kill" ] && kill -9 "\$(cat "$HV_TMP/agent.pid")"
[ -e "$HV_TMP/hook-writes" ] || exit 0
opts=\$(cat "$HV_TMP/hook-opts")
case "\$1" in
freeze) qemu-io --image-opts "\$opts" -c "write -P 0x5f 32M 64k" >/dev/null 2>&1 || echo "freeze-write-failed" >>"$CALLS" ;;
thaw) qemu-io --image-opts "\$opts" -c "write -P 0x7a 32M 64k" >/dev/null 2>&1 || echo "thaw-write-failed" >>"$CALLS" ;;
esac
exit 0
EOF
    chmod +x "$HOOKS/10-app"
    "$HVSTOR_BIN/hvstor-vss" --listen "unix:$AGENT_SOCK" --no-fs --writers "$HOOKS" \
        --state "$HV_TMP/agent-frozen" --thaw-timeout 30 --writer-timeout 20 \
        >>"$HV_TMP/agent.log" 2>&1 &
    AGENT_PID=$!
    echo "$AGENT_PID" >"$HV_TMP/agent.pid"
    HV_EXTRA_PIDS+=("$AGENT_PID")
    for _ in $(seq 100); do
        [ -S "$AGENT_SOCK" ] && return 0
        kill -0 "$AGENT_PID" 2>/dev/null || hv_fail "hvstor-vss exited at start: $(tail -3 "$HV_TMP/agent.log")"
        sleep 0.05
    done
    hv_fail "hvstor-vss did not create $AGENT_SOCK"
}

snap_agent_kill()
{
    kill -9 "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
}

# An iSCSI client's view of one LUN, as this test's initiator.
lun_opts() { hv_qemu_opts "$1" "$2" "$3" "$INI"; }

wr()   # wr VM C L PATTERN OFF LEN [MODEL]
{
    local out
    out=$(qemu-io --image-opts "$(lun_opts "$1" "$2" "$3")" -c "write -P $4 $5 $6" 2>&1) ||
        hv_fail "write $4 at $5 ($6) to $1 c$2 LUN $3: $out"
    grep -qi "error\|failed" <<<"$out" && hv_fail "write to $1 c$2 LUN $3: $out"
    [ -z "${7:-}" ] || python3 - "$7" "$4" "$5" "$6" <<'PY'
import sys
def size(t):
    m = {"k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(t[:-1]) * m[t[-1]] if t[-1] in m else int(t)
path, pat, off, ln = sys.argv[1], int(sys.argv[2], 0), size(sys.argv[3]), size(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes([pat]) * ln)
PY
    return 0
}

rd()   # rd VM C L PATTERN OFF LEN
{
    local out
    out=$(qemu-io --image-opts "$(lun_opts "$1" "$2" "$3")" -c "read -P $4 $5 $6" 2>&1) ||
        hv_fail "read $4 at $5 ($6) from $1 c$2 LUN $3: $out"
    grep -qi "verification failed\|error" <<<"$out" &&
        hv_fail "$1 c$2 LUN $3 at $5: expected pattern $4: $out"
    return 0
}

lun_image()   # lun_image VM C L OUT
{
    qemu-img convert --image-opts "$(lun_opts "$1" "$2" "$3")" -O raw "$4" 2>"$HV_TMP/convert.err" ||
        hv_fail "qemu-img convert of $1 c$2 LUN $3: $(cat "$HV_TMP/convert.err")"
}

# usage VERB...: hvctl must refuse the command line with exit 2.
usage_exit2()
{
    local rc=0
    hvctl "$@" >/dev/null 2>"$HV_TMP/usage.err" || rc=$?
    [ $rc -eq 2 ] || hv_fail "hvctl $* exited $rc, not 2 (usage): $(cat "$HV_TMP/usage.err")"
}
