# Shared by tests/integration/hv/test_hvstord_*.sh and test_guest_*.sh (sourced,
# not a test itself): a scratch directory, hvstord on a free loopback port
# with a private state dir, stopped even when a test fails.
#
#   hv_setup                 needs HVSTOR_BIN; skips (77) without the binaries
#   hv_start [ARGS...]       start hvstord; sets HV_PID, HV_PORTAL, HV_STATE
#   hv_stop                  SIGTERM, wait, fail unless it exits 0
#   hvctl ARGS...            the built hvctl on this daemon's state dir
#   hv_fail MESSAGE          print, dump the daemon log tail, exit 1
set -euo pipefail

hv_setup()
{
    : "${HVSTOR_BIN:?HVSTOR_BIN must point at the built binaries}"
    for b in hvstord hvctl; do
        [ -x "$HVSTOR_BIN/$b" ] || { echo "SKIP: $HVSTOR_BIN/$b not built"; exit 77; }
    done
    HV_TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/hvstor-it.XXXXXX")
    HV_STATE=$HV_TMP/state
    HV_LOG=$HV_TMP/hvstord.log
    HV_PID=
    HV_EXTRA_PIDS=()
    trap hv_cleanup EXIT
    # A test killed by ctest's timeout still stops its daemon and guests.
    trap 'exit 143' TERM INT
}

hv_cleanup()
{
    local rc=$?
    local p
    # TERM first: `timeout` passes it on to the QEMU it runs, KILL would orphan it.
    for p in "${HV_EXTRA_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    [ ${#HV_EXTRA_PIDS[@]} -eq 0 ] || sleep 0.5
    for p in "${HV_EXTRA_PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ -n "${HV_PID:-}" ] && kill -0 "$HV_PID" 2>/dev/null; then
        kill -TERM "$HV_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$HV_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$HV_PID" 2>/dev/null || true
    fi
    if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "${HV_LOG:-/nonexistent}" ]; then
        echo "---- hvstord log (last 30 lines) ----"
        tail -30 "$HV_LOG"
    fi
    if [ -n "${HVSTOR_KEEP_TMP:-}" ]; then
        echo "kept $HV_TMP"
    else
        rm -rf "$HV_TMP"
    fi
    exit $rc
}

hv_fail()
{
    echo "FAIL: $*" >&2
    exit 1
}

hv_start()
{
    rm -f "$HV_STATE/portal"
    "$HVSTOR_BIN/hvstord" --state-dir "$HV_STATE" --portal 127.0.0.1:0 "$@" \
        >>"$HV_TMP/hvstord.out" 2>>"$HV_LOG" &
    HV_PID=$!
    for _ in $(seq 100); do
        [ -S "$HV_STATE/hvstord.sock" ] && [ -s "$HV_STATE/portal" ] && break
        kill -0 "$HV_PID" 2>/dev/null || hv_fail "hvstord exited at start: $(tail -3 "$HV_LOG")"
        sleep 0.1
    done
    [ -s "$HV_STATE/portal" ] || hv_fail "hvstord did not start in 10 s"
    HV_PORTAL=$(cat "$HV_STATE/portal")
}

hv_stop()
{
    local rc=0
    kill -TERM "$HV_PID"
    wait "$HV_PID" || rc=$?
    HV_PID=
    [ $rc -eq 0 ] || hv_fail "hvstord exited with status $rc after SIGTERM"
    [ ! -e "$HV_STATE/hvstord.sock" ] || hv_fail "control socket left behind after SIGTERM"
}

hvctl()
{
    "$HVSTOR_BIN/hvctl" --state-dir "$HV_STATE" "$@"
}

# json_get FILE|- PYTHON-EXPR: evaluate EXPR with `j` bound to the JSON.
json_get()
{
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1]) if sys.argv[1]!="-" else sys.stdin); print(eval(sys.argv[2]))' "$@"
}

# `vhd check FILE` when the vhd tool is built: anything but clean (exit 0),
# leaked space included, fails the test.
hv_vhd_check()   # hv_vhd_check FILE WHEN
{
    local rc=0
    [ -x "$HVSTOR_BIN/vhd" ] || { echo "vhd check $2: vhd tool not built, skipped"; return 0; }
    "$HVSTOR_BIN/vhd" check "$1" >"$HV_TMP/check.txt" 2>&1 || rc=$?
    [ $rc -eq 0 ] || hv_fail "vhd check $2 (exit $rc): $(cat "$HV_TMP/check.txt")"
    echo "vhd check $2: clean"
}

# A target URL for a VM controller and LUN on this daemon.
hv_url()   # hv_url VM CONTROLLER LUN
{
    echo "iscsi://$HV_PORTAL/iqn.2026-11.org.hvstor:$1.c$2/$3"
}

# qemu's iscsi driver options for a LUN with a given initiator name.
hv_qemu_opts()   # hv_qemu_opts VM CONTROLLER LUN INITIATOR
{
    echo "driver=iscsi,transport=tcp,portal=$HV_PORTAL,target=iqn.2026-11.org.hvstor:$1.c$2,lun=$3,initiator-name=$4"
}

need()   # need TOOL...: skip when a real peer is missing
{
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
    done
}

# Sum of the allocated bytes of an image according to qemu's own driver
# (qemu-img map reads the VHD's BAT independently of hvstor).
allocated_bytes()   # allocated_bytes FILE FORMAT
{
    qemu-img map --output=json -f "$2" "$1" |
        python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}
