#!/usr/bin/env bash
# Only a VM's own initiators reach its targets: another initiator name, a
# wrong or missing CHAP secret, and the target of another VM are all refused
# at login, and discovery shows each initiator only the targets it may use.
# Deleting a VM drops its sessions and its targets disappear.
. "$(dirname "$0")/hvstord_lib.sh"
need iscsi-ls iscsi-inq qemu-io python3
hv_setup
hv_start

a=iqn.2026-11.org.hvstor.test:vm-a
a2=iqn.1993-08.org.debian:01:second-a
b=iqn.2026-11.org.hvstor.test:vm-b
m=iqn.2026-11.org.hvstor.test:vm-m
stranger=iqn.2026-11.org.hvstor.test:stranger

hvctl vm create alpha --initiator "$a" --initiator "$a2" >/dev/null
hvctl vm create beta --initiator "$b" --chap beta-user:beta-secret-123 >/dev/null
hvctl vm create mu --initiator "$m" --chap mu-user:mu-initiator-secret \
    --mutual-chap mu-target:mu-target-secret >/dev/null
for vm in alpha beta mu; do
    truncate -s 16M "$HV_TMP/$vm.raw"
    hvctl disk attach $vm --controller 0 --slot 0 --raw "$HV_TMP/$vm.raw" >/dev/null
done
hvctl disk attach alpha --controller 1 --slot 2 --vhd "$HV_TMP/alpha1.vhd" --create 16M >/dev/null

inq()   # inq INITIATOR URL: succeeds when the login and INQUIRY succeed
{
    iscsi-inq -i "$1" "$2" >"$HV_TMP/inq.txt" 2>&1
}

# The VM's own initiators: both names work, on both controllers.
inq "$a" "$(hv_url alpha 0 0)" || hv_fail "alpha's initiator refused: $(cat "$HV_TMP/inq.txt")"
inq "$a2" "$(hv_url alpha 1 2)" || hv_fail "alpha's second initiator refused on c1"
grep -qi "HVSTOR" "$HV_TMP/inq.txt" || hv_fail "INQUIRY does not name HVSTOR: $(cat "$HV_TMP/inq.txt")"

# Another initiator name, and the target of another VM.
inq "$stranger" "$(hv_url alpha 0 0)" && hv_fail "a stranger logged in to alpha"
inq "$b" "$(hv_url alpha 0 0)" && hv_fail "beta's initiator logged in to alpha's target"
inq "$a" "$(hv_url beta 0 0)" && hv_fail "alpha's initiator logged in to beta's target"
inq "$a" "iscsi://$HV_PORTAL/iqn.2026-11.org.hvstor:nosuchvm.c0/0" && hv_fail "login to a missing target"
# qemu's driver with the wrong name fails too (a real guest, not only libiscsi's tools).
qemu-io --image-opts "$(hv_qemu_opts alpha 0 0 "$stranger")" -c "read 0 4k" \
    >"$HV_TMP/q.txt" 2>&1 && hv_fail "qemu with a stranger's name read alpha's disk"

# CHAP, one-way: right secret in, wrong or none out.
inq "$b" "iscsi://beta-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" ||
    hv_fail "beta with the right CHAP secret refused: $(cat "$HV_TMP/inq.txt")"
inq "$b" "iscsi://beta-user%wrong-secret-99@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" &&
    hv_fail "beta logged in with a wrong CHAP secret"
inq "$b" "iscsi://other-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" &&
    hv_fail "beta logged in with a wrong CHAP user"
inq "$b" "$(hv_url beta 0 0)" && hv_fail "beta logged in without CHAP"

# Mutual CHAP: the target must prove itself with its own secret.
mu_url="iscsi://mu-user%mu-initiator-secret@$HV_PORTAL/iqn.2026-11.org.hvstor:mu.c0/0"
inq "$m" "$mu_url?target_user=mu-target&target_password=mu-target-secret" ||
    hv_fail "mutual CHAP login refused: $(cat "$HV_TMP/inq.txt")"
inq "$m" "$mu_url?target_user=mu-target&target_password=not-the-target-secret" &&
    hv_fail "initiator accepted a target that proved itself with the wrong secret"

# Discovery: each initiator sees exactly its own VM's targets.
discover()   # discover INITIATOR [URL-CREDENTIALS]
{
    iscsi-ls -i "$1" "iscsi://${2:-}$HV_PORTAL" 2>/dev/null | grep -o 'iqn\.2026-11\.org\.hvstor:[^ ]*' | sort || true
}
[ "$(discover "$a" | tr '\n' ' ')" = "iqn.2026-11.org.hvstor:alpha.c0 iqn.2026-11.org.hvstor:alpha.c1 " ] ||
    hv_fail "alpha's discovery: $(discover "$a")"
# beta requires CHAP, so its discovery does too: with the right secret it
# lists beta's target; with a wrong or no secret the discovery login itself
# is refused (authentication failure), so nothing is listed.
[ "$(discover "$b" beta-user%beta-secret-123@ | tr '\n' ' ')" = "iqn.2026-11.org.hvstor:beta.c0 " ] ||
    hv_fail "beta's discovery: $(discover "$b" beta-user%beta-secret-123@)"
[ -z "$(discover "$b")" ] || hv_fail "beta discovers without CHAP: $(discover "$b")"
[ -z "$(discover "$b" beta-user%wrong-secret-99@)" ] ||
    hv_fail "beta discovers with a wrong secret: $(discover "$b" beta-user%wrong-secret-99@)"
iscsi-ls -i "$b" "iscsi://beta-user%wrong-secret-99@$HV_PORTAL" >"$HV_TMP/ls.txt" 2>&1 &&
    hv_fail "discovery login with a wrong secret succeeded: $(cat "$HV_TMP/ls.txt")"
# Another VM's credentials never show beta's target, nor alpha's to beta.
[ -z "$(discover "$b" mu-user%mu-initiator-secret@)" ] ||
    hv_fail "beta's name with mu's CHAP discovers: $(discover "$b" mu-user%mu-initiator-secret@)"
[ "$(discover "$m" mu-user%mu-initiator-secret@ | tr '\n' ' ')" = "iqn.2026-11.org.hvstor:mu.c0 " ] ||
    hv_fail "mu's discovery: $(discover "$m" mu-user%mu-initiator-secret@)"
[ -z "$(discover "$stranger")" ] || hv_fail "a stranger discovers: $(discover "$stranger")"
out=$(iscsi-ls -s -i "$stranger" "iscsi://$HV_PORTAL" 2>&1 || true)
echo "$out" | grep -q "hvstor:" && hv_fail "iscsi-ls -s shows a stranger targets: $out"

# Changing the ACL: the new name gets in, the old one no longer does.
hvctl vm set beta --initiator "$stranger" >/dev/null || hv_fail "vm set beta failed"
inq "$stranger" "iscsi://beta-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" ||
    hv_fail "new initiator of beta refused after vm set"
inq "$b" "iscsi://beta-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" &&
    hv_fail "beta's old initiator still gets in after vm set"
hvctl vm set beta --initiator "$b" --chap beta-user:beta-secret-456 >/dev/null
inq "$b" "iscsi://beta-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" &&
    hv_fail "beta's old CHAP secret still works after vm set"
inq "$b" "iscsi://beta-user%beta-secret-456@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/0" ||
    hv_fail "beta's new CHAP secret refused"
hvctl vm set beta --chap beta-user:beta-secret-123 >/dev/null

# Deleting a VM while its guest is logged in: the session is dropped, the
# target is gone from discovery and refuses new logins, the file is free.
qemu-io --image-opts "$(hv_qemu_opts alpha 0 0 "$a")" -c "write -P 0x11 0 64k" \
    >/dev/null 2>&1 || hv_fail "write to alpha before delete failed"
python3 - "$HV_PORTAL" >"$HV_TMP/held.txt" 2>&1 <<'PY' &
import socket, sys, time
# Hold a TCP connection to the portal open: delete and shutdown must not
# wait on an idle connection that never logs in.
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
time.sleep(30)
PY
HV_EXTRA_PIDS+=($!)
disown $!
# ... and a guest in the middle of writing to alpha's raw disk.
timeout 8 qemu-img bench -w -t none -c 1000000 -d 16 -s 4k \
    --image-opts "$(hv_qemu_opts alpha 0 0 "$a")" >"$HV_TMP/bench.txt" 2>&1 &
bench=$!
sleep 1.5
kill -0 $bench 2>/dev/null || hv_fail "the writer ended before the delete: $(tail -3 "$HV_TMP/bench.txt")"
hvctl vm delete alpha >/dev/null || hv_fail "vm delete alpha failed"
wait $bench 2>/dev/null || true
grep -q "dropped" "$HV_LOG" || hv_fail "no session drop logged"
kill -0 "$HV_PID" || hv_fail "hvstord died deleting a VM under I/O"
[ -z "$(discover "$a")" ] || hv_fail "deleted VM still discovered: $(discover "$a")"
inq "$a" "$(hv_url alpha 0 0)" && hv_fail "login to a deleted VM's target succeeded"
hvctl vm list | grep -q "^alpha " && hv_fail "deleted VM still listed"
[ ! -e "$HV_STATE/vms/alpha.json" ] || hv_fail "deleted VM's definition still on disk"
# Its images are free again once idle: another VM may take them.
sleep 0.3
hvctl disk attach beta --controller 0 --slot 1 --vhd "$HV_TMP/alpha1.vhd" >/dev/null ||
    hv_fail "a deleted VM's VHD stayed busy"
hvctl disk attach beta --controller 0 --slot 2 --raw "$HV_TMP/alpha.raw" >/dev/null ||
    hv_fail "a deleted VM's raw disk stayed busy"
grep -q "alpha.raw: closed after detach" "$HV_LOG" || hv_fail "deleted VM's disk not closed"

# Restart: ACLs and CHAP come back from the state dir.
hv_stop
hv_start
inq "$b" "iscsi://beta-user%beta-secret-123@$HV_PORTAL/iqn.2026-11.org.hvstor:beta.c0/1" ||
    hv_fail "after restart beta's CHAP login fails: $(cat "$HV_TMP/inq.txt")"
inq "$b" "$(hv_url beta 0 0)" && hv_fail "after restart beta logs in without CHAP"
inq "$stranger" "$(hv_url beta 0 0)" && hv_fail "after restart a stranger logs in"
[ -z "$(discover "$stranger")" ] || hv_fail "after restart a stranger discovers targets"
hv_stop
echo PASS
