#!/usr/bin/env bash
# The control plane on its own (no initiator needed): every hvctl command and
# its --help and --json, the JSON protocol on the socket (errors as
# {"ok": false, "error": ...}), persistence of definitions across a restart,
# one daemon per state dir, clean SIGTERM.
. "$(dirname "$0")/hvstord_lib.sh"
need python3
hv_setup

# --help works everywhere without a daemon, and usage errors exit 2.
for args in "--help" "vm --help" "vm create --help" "vm set --help" "vm list --help" \
            "vm show --help" "vm delete --help" "disk --help" "disk attach --help" \
            "disk detach --help" "disk resize --help" "disk stats --help" "status --help"; do
    # shellcheck disable=SC2086
    "$HVSTOR_BIN/hvctl" $args >"$HV_TMP/help.txt" 2>&1 || hv_fail "hvctl $args exited non-zero"
    grep -q "usage" "$HV_TMP/help.txt" || hv_fail "hvctl $args printed no usage"
done
"$HVSTOR_BIN/hvstord" --help | grep -q "state-dir" || hv_fail "hvstord --help"
rc=0; "$HVSTOR_BIN/hvctl" frobnicate >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || hv_fail "unknown command: exit $rc, expected 2"
rc=0; "$HVSTOR_BIN/hvctl" disk attach x --controller 0 >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || hv_fail "disk attach without --slot: exit $rc, expected 2"
rc=0; "$HVSTOR_BIN/hvstord" --portal nonsense >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || hv_fail "hvstord --portal nonsense: exit $rc"
# No daemon: a clear message, exit 1.
out=$(hvctl vm list 2>&1) && hv_fail "vm list without a daemon succeeded"
echo "$out" | grep -q "cannot reach hvstord" || hv_fail "no-daemon message: $out"

hv_start
hvctl --json status >"$HV_TMP/status.json"
[ "$(json_get "$HV_TMP/status.json" 'j["portal"]')" = "$HV_PORTAL" ] || hv_fail "status portal"
grep -q "listening on $HV_PORTAL" "$HV_TMP/hvstord.out" || hv_fail "hvstord did not print its portal"

# Defaults: QEMU's initiator names for the VM, by name and by UUID.
hvctl --json vm create web >"$HV_TMP/web.json"
uuid=$(json_get "$HV_TMP/web.json" 'j["uuid"]')
[ "$(json_get "$HV_TMP/web.json" '" ".join(j["initiators"])')" = \
  "iqn.2008-11.org.linux-kvm:web iqn.2008-11.org.linux-kvm:$uuid" ] || hv_fail "default initiators"
[ "$(json_get "$HV_TMP/web.json" 'j["controllers"][0]["target"]')" = "iqn.2026-11.org.hvstor:web.c0" ] ||
    hv_fail "target name"
hvctl vm create db --initiator iqn.2026-11.org.hvstor.test:db --chap db:db-secret-0001 \
    --mutual-chap tgt:tgt-secret-0002 --controllers 4 >/dev/null
hvctl --json vm show db >"$HV_TMP/db.json"
[ "$(json_get "$HV_TMP/db.json" 'len(j["controllers"])')" = 4 ] || hv_fail "4 controllers"
[ "$(json_get "$HV_TMP/db.json" 'j["chap"]["mutual"]')" = True ] || hv_fail "mutual CHAP not shown"
grep -q "db-secret" "$HV_TMP/db.json" && hv_fail "vm show leaks the CHAP secret"
hvctl vm show db | grep -q "CHAP: mutual, user db" || hv_fail "text show of CHAP"
[ "$(stat -c %a "$HV_STATE/vms/db.json")" = 600 ] || hv_fail "definition file is not 0600"

# Disks: attach (controller added on demand), show, detach.
truncate -s 8M "$HV_TMP/a.raw" "$HV_TMP/b.raw"
hvctl disk attach web --controller 2 --slot 5 --raw "$HV_TMP/a.raw" --read-only >/dev/null
(cd "$HV_TMP" && hvctl disk attach web --controller 0 --slot 0 --raw b.raw >/dev/null)  # relative path
hvctl --json vm show web >"$HV_TMP/web2.json"
[ "$(json_get "$HV_TMP/web2.json" 'len(j["controllers"])')" = 3 ] || hv_fail "controller 2 not added"
[ "$(json_get "$HV_TMP/web2.json" 'j["controllers"][2]["luns"][0]["url"]')" = \
  "iscsi://$HV_PORTAL/iqn.2026-11.org.hvstor:web.c2/5" ] || hv_fail "LUN URL"
[ "$(json_get "$HV_TMP/web2.json" 'j["controllers"][0]["luns"][0]["path"]')" = "$HV_TMP/b.raw" ] ||
    hv_fail "relative path not made absolute"
[ "$(json_get "$HV_TMP/web2.json" 'j["controllers"][2]["luns"][0]["read_only"]')" = True ] ||
    hv_fail "read-only flag"
hvctl vm list | grep -q "^web .* 3 *2 *0$" || hv_fail "vm list row: $(hvctl vm list)"
hvctl --json vm list | python3 -c 'import json,sys; assert [v["name"] for v in json.load(sys.stdin)] == ["db", "web"]' ||
    hv_fail "vm list --json not sorted by name"

# Errors: JSON on the socket, a sentence and exit 1 from hvctl, nothing changed.
rc=0; out=$(hvctl --json vm create web 2>"$HV_TMP/err.txt") || rc=$?
[ $rc -eq 1 ] || hv_fail "duplicate create: exit $rc"
echo "$out" | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["ok"] is False and "already exists" in j["error"]' ||
    hv_fail "--json error reply: $out"
grep -q "already exists" "$HV_TMP/err.txt" || hv_fail "error not on stderr"
sock() { python3 - "$HV_STATE/hvstord.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().strip())
PY
}
sock '{"op":"no.such"}' | grep -q '"ok":false.*unknown request' || hv_fail "unknown op"
sock '[1,2]' | grep -q '"ok":false' || hv_fail "non-object request"
sock '{"op":"vm.create","name":"x","controllers":9}' | grep -q '"ok":false.*controllers' ||
    hv_fail "out-of-range controllers"
sock '{"op":"disk.attach","vm":"web","controller":0,"slot":1,"kind":"raw","path":"rel.raw"}' |
    grep -q 'must be absolute' || hv_fail "relative path over the socket"
python3 - "$HV_STATE/hvstord.sock" <<'PY' || hv_fail "oversized request not refused"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b"x" * (2 << 20))
except OSError:
    pass
r = s.makefile().readline()
assert "longer than" in r, r
PY
hvctl vm list >/dev/null || hv_fail "daemon unhealthy after bad requests"

# Restart: same definitions, UUIDs, disks.
hv_stop
hv_start
hvctl --json vm show web >"$HV_TMP/web3.json"
[ "$(json_get "$HV_TMP/web3.json" 'j["uuid"]')" = "$uuid" ] || hv_fail "UUID changed across restart"
[ "$(json_get "$HV_TMP/web3.json" 'len(j["controllers"])')" = 3 ] || hv_fail "controllers lost"
[ "$(json_get "$HV_TMP/web3.json" 'j["controllers"][2]["luns"][0]["state"]')" = online ] ||
    hv_fail "disk not online after restart"

# Delete and detach persist.
hvctl disk detach web --controller 2 --slot 5 >/dev/null
hvctl vm delete db >/dev/null
hv_stop
hv_start
[ "$(hvctl --json vm list | json_get - '[v["name"] for v in j]')" = "['web']" ] ||
    hv_fail "deleted VM came back"
[ "$(hvctl --json vm show web | json_get - 'len(j["controllers"][2]["luns"])')" = 0 ] ||
    hv_fail "detached disk came back"

# One daemon per state dir.
if "$HVSTOR_BIN/hvstord" --state-dir "$HV_STATE" --portal 127.0.0.1:0 2>"$HV_TMP/second.err" >/dev/null; then
    hv_fail "second daemon started on the same state dir"
fi
grep -q "another hvstord" "$HV_TMP/second.err" || hv_fail "second daemon: $(cat "$HV_TMP/second.err")"
hvctl vm list >/dev/null || hv_fail "first daemon hurt by the second's attempt"

# A damaged definition stops the start with the file's name (no VM silently
# losing its ACL).
hv_stop
echo '{"version": 1, "name": "web"' >"$HV_STATE/vms/web.json"
if "$HVSTOR_BIN/hvstord" --state-dir "$HV_STATE" --portal 127.0.0.1:0 2>"$HV_TMP/bad.err" >/dev/null; then
    hv_fail "hvstord started with a damaged definition"
fi
grep -q "web.json" "$HV_TMP/bad.err" || hv_fail "damaged definition not named: $(cat "$HV_TMP/bad.err")"
echo PASS
