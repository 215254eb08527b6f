#!/usr/bin/env bash
# A restart brings back every VM, disk and ACL exactly; SIGTERM while a
# client is writing drains the I/O and exits 0 with the VHD clean; a disk
# whose file vanished while the daemon was down comes back offline with the
# reason, without taking the VM or the daemon down.
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-img qemu-io iscsi-inq python3
hv_setup
hv_start

ini=iqn.2026-11.org.hvstor.test:restart
hvctl vm create web --initiator "$ini" --controllers 2 >/dev/null
hvctl vm create db >/dev/null                                  # default (QEMU) initiators
hvctl disk attach web --controller 0 --slot 0 --vhd "$HV_TMP/web0.vhd" --create 256M >/dev/null
truncate -s 32M "$HV_TMP/web1.raw"
hvctl disk attach web --controller 1 --slot 63 --raw "$HV_TMP/web1.raw" --read-only >/dev/null
truncate -s 16M "$HV_TMP/db.raw"
hvctl disk attach db --controller 0 --slot 0 --raw "$HV_TMP/db.raw" >/dev/null

qemu-io --image-opts "$(hv_qemu_opts web 0 0 "$ini")" -c "write -P 0x42 0 2M" \
    -c "write -P 0x43 100M 1M" >/dev/null 2>&1 || hv_fail "initial write failed"

# SIGTERM in the middle of a stream of writes (to a second VHD of the VM, so
# the stream may run long and wrap around without touching what is checked).
hvctl disk attach web --controller 0 --slot 1 --vhd "$HV_TMP/web-scratch.vhd" --create 64M >/dev/null
qemu-img bench -w -t none -c 100000000 -d 32 -s 4k -S 4k \
    --image-opts "$(hv_qemu_opts web 0 1 "$ini"),cache.direct=on" \
    >"$HV_TMP/bench.txt" 2>&1 &
bench=$!
HV_EXTRA_PIDS+=($bench)
sleep 1.5
hvctl --json vm show web >"$HV_TMP/web-before.json"
hvctl --json vm show db >"$HV_TMP/db-before.json"
kill -0 $bench 2>/dev/null || hv_fail "the write stream ended before SIGTERM: $(tail -2 "$HV_TMP/bench.txt")"
start=$(date +%s%N)
hv_stop
echo "SIGTERM to exit with a client writing: $((($(date +%s%N) - start) / 1000000)) ms"
# qemu's driver keeps trying to reconnect to a stopped target: end it.
kill $bench 2>/dev/null || true
wait $bench 2>/dev/null || true
grep -q "draining" "$HV_LOG" || hv_fail "no drain logged"
grep -q "flushed and closed" "$HV_LOG" || hv_fail "images not reported closed"
hv_vhd_check "$HV_TMP/web-scratch.vhd" "after SIGTERM under writes"
hv_vhd_check "$HV_TMP/web0.vhd" "after SIGTERM"

# Restart: the same VMs, UUIDs, targets, disks, read-only flags, ACLs.
hv_start
hvctl --json vm show web >"$HV_TMP/web-after.json"
hvctl --json vm show db >"$HV_TMP/db-after.json"
python3 - "$HV_TMP" <<'PY' || hv_fail "VM definitions differ after restart"
import json, sys
d = sys.argv[1]
for vm in ("web", "db"):
    before = json.load(open(f"{d}/{vm}-before.json"))
    after = json.load(open(f"{d}/{vm}-after.json"))
    for j in (before, after):
        j.pop("portal")
        for c in j["controllers"]:
            for l in c["luns"]:
                l.pop("url")
                l.pop("image", None)
    if before != after:
        print(json.dumps(before, indent=1), json.dumps(after, indent=1))
        sys.exit(1)
PY
qemu-io --image-opts "$(hv_qemu_opts web 0 0 "$ini")" -c "read -P 0x43 100M 1M" \
    >"$HV_TMP/r.txt" 2>&1 || hv_fail "read after restart failed"
grep -qi "verification failed" "$HV_TMP/r.txt" && hv_fail "data written before restart is gone"
qemu-io --image-opts "$(hv_qemu_opts web 1 63 "$ini")" -c "write -P 1 0 4k" \
    >"$HV_TMP/w.txt" 2>&1 && hv_fail "read-only flag lost across restart"
grep -qi "write protected" "$HV_TMP/w.txt" || hv_fail "read-only disk after restart: $(cat "$HV_TMP/w.txt")"
iscsi-inq -i "iqn.2008-11.org.linux-kvm:db" "$(hv_url db 0 0)" >/dev/null 2>&1 ||
    hv_fail "db's default QEMU initiator name refused after restart"
iscsi-inq -i "$ini" "$(hv_url db 0 0)" >/dev/null 2>&1 && hv_fail "ACL of db lost across restart"

# A disk file gone while hvstord was down: that slot is offline, the rest serves.
hv_stop
mv "$HV_TMP/db.raw" "$HV_TMP/db.raw.away"
hv_start
hvctl --json vm show db >"$HV_TMP/db-offline.json"
[ "$(json_get "$HV_TMP/db-offline.json" 'j["controllers"][0]["luns"][0]["state"]')" = offline ] ||
    hv_fail "missing disk not reported offline"
json_get "$HV_TMP/db-offline.json" 'j["controllers"][0]["luns"][0]["error"]' | grep -q "db.raw" ||
    hv_fail "offline reason does not name the file"
hvctl vm show db | grep -q OFFLINE || hv_fail "text vm show does not say OFFLINE"
qemu-io --image-opts "$(hv_qemu_opts web 0 0 "$ini")" -c "read -P 0x42 0 1M" \
    >/dev/null 2>&1 || hv_fail "other VM not served while one disk is offline"
# Detach the offline slot, bring the file back, attach again.
hvctl disk detach db --controller 0 --slot 0 >/dev/null
mv "$HV_TMP/db.raw.away" "$HV_TMP/db.raw"
hvctl disk attach db --controller 0 --slot 0 --raw "$HV_TMP/db.raw" >/dev/null
iscsi-inq -i "iqn.2008-11.org.linux-kvm:db" "$(hv_url db 0 0)" >/dev/null 2>&1 ||
    hv_fail "re-attached disk not served"

# Two daemons on one state dir: the second refuses to start.
if "$HVSTOR_BIN/hvstord" --state-dir "$HV_STATE" --portal 127.0.0.1:0 2>"$HV_TMP/second.err"; then
    hv_fail "a second hvstord started on the same state dir"
fi
grep -q "another hvstord" "$HV_TMP/second.err" || hv_fail "second daemon: $(cat "$HV_TMP/second.err")"
hv_stop
echo PASS
