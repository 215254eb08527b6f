#!/bin/bash
# A SAN LUN attach whose checks finish while its VM is in the middle of a
# backup waits until the backup is done: the LUN never appears mid-backup.
# tgtd is paused (SIGSTOP) so that the attach's SAN login hangs; the attach
# is accepted (a job), then VM a's rate-limited backup starts, tgtd resumes,
# the checks pass, and hvstord says the attach waits. Meanwhile the job is
# "running" and VM a shows no LUN in that slot; after the backup the LUN is
# attached and the backup restores to the VM's disk. Deleting the VM then
# removes its tracking state, which its closing disks do not write back.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v qemu-io >/dev/null && command -v qemu-img >/dev/null || skip "qemu-io/qemu-img not installed"
out=$WORK/out
ADMIN=iqn.2026-11.org.hvstor.test:san-admin
truncate -s 64M "$WORK/lun1.img"
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/lun1.img" || fail "lun 1"
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$ADMIN" || fail "admin acl"

hvd_start 1
hvctl_ 1 vm create a >/dev/null || fail "vm create"
hvctl_ 1 disk attach a --controller 0 --slot 0 --vhd "$WORK/a.vhd" --create 32M >/dev/null || fail "a's disk"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target a 0),lun=0,initiator-name=$(guest_iqn a)"
qemu-io --image-opts "$OPTS" -c "write -P 0x5c 0 8M" -c flush >"$out" 2>&1 || { cat "$out"; fail "a's guest write"; }
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" >/dev/null || fail "san add"
IQN_A=$(hvctl_ 1 --json vm show a | json_get - 'j["identity"]["iqn"]')
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$IQN_A" || fail "acl for a"

job_status() {   # job_status N: the daemon's raw answer to job.status
    python3 - "$WORK/st1/hvstord.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((json.dumps({"op": "job.status", "job": int(sys.argv[2])}) + "\n").encode())
buf = b""
while not buf.endswith(b"\n"):
    d = s.recv(65536)
    if not d: break
    buf += d
print(buf.decode().strip())
PY
}

step "the SAN pauses; a's attach is accepted and waits on its login"
TGT_PID=$(cat "$WORK/tgtd.pid")
kill -STOP "$TGT_PID"
rc=0
hvctl_ 1 --timeout 300 disk attach a --controller 0 --slot 1 --lun "tgt1:$T1:1" >"$out" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "still waiting on the SAN" "$out" || { kill -CONT "$TGT_PID"; cat "$out"; fail "the attach did not wait on the paused SAN"; }
JOB=$(sed -n 's/.*(job \([0-9]*\)).*/\1/p' "$out")
[ -n "$JOB" ] || { kill -CONT "$TGT_PID"; fail "no job number: $(cat "$out")"; }

step "a's backup starts; the SAN resumes; the checked attach waits for the backup"
hvctl_ 1 --json backup create a --to "$WORK/bk" --consistency crash --max-rate 1M \
    >"$WORK/bk.json" 2>"$WORK/bk.err" &
BK=$!
for _ in $(seq 200); do [ -e "$WORK/bk/backup.lock" ] && break; sleep 0.05; done
[ -e "$WORK/bk/backup.lock" ] || { kill -CONT "$TGT_PID"; fail "the backup did not start: $(cat "$WORK/bk.err")"; }
kill -CONT "$TGT_PID"
for _ in $(seq 300); do
    grep -q "attach at controller 0 slot 1 is checked; it waits" "$WORK/hvstord1.log" && break
    kill -0 $BK 2>/dev/null || break
    sleep 0.05
done
grep -q "attach at controller 0 slot 1 is checked; it waits" "$WORK/hvstord1.log" ||
    fail "the attach did not wait for the backup (log: $(tail -5 "$WORK/hvstord1.log"))"
job_status "$JOB" >"$out"
grep -q '"running":true' "$out" || fail "job $JOB during the backup: $(cat "$out")"
hvctl_ 1 --json vm show a >"$out" || fail "vm show a"
[ "$(json_get "$out" 'len(j["controllers"][0]["luns"])')" = 1 ] ||
    fail "the LUN appeared in the middle of the backup: $(cat "$out")"
echo "job $JOB: checked, running, not attached while the backup runs"

step "the backup ends; then the LUN is attached"
wait $BK || fail "a's backup: $(cat "$WORK/bk.err")"
for _ in $(seq 100); do
    job_status "$JOB" >"$out"
    grep -q '"running":true' "$out" || break
    sleep 0.05
done
grep -q '"ok":true' "$out" || fail "job $JOB after the backup: $(cat "$out")"
hvctl_ 1 --json vm show a >"$out" || fail "vm show a"
[ "$(json_get "$out" 'len(j["controllers"][0]["luns"])')" = 2 ] || fail "the LUN is not attached: $(cat "$out")"
hvctl_ 1 backup restore "$WORK/bk" --to "$WORK/rs" >/dev/null || fail "restore"
qemu-img convert -f vpc -O raw "$WORK/rs/c0-s0.vhd" "$WORK/rs.raw"
head -c 8M "$WORK/rs.raw" | tr -d '\134' | wc -c | grep -qx 0 || fail "the backup does not hold a's 8 MiB"
step "vm delete: the VM's tracking state (its VHD's and its SAN LUN's) goes, and stays gone"
[ -d "$WORK/st1/cbt/a" ] || fail "no tracking state for a: $(ls -R "$WORK/st1")"
echo "cbt/a before the delete: $(ls "$WORK/st1/cbt/a" | tr "\n" " ")"
hvctl_ 1 vm delete a >/dev/null || fail "vm delete a"
[ ! -e "$WORK/st1/cbt/a" ] || fail "cbt/a left by vm delete: $(ls "$WORK/st1/cbt/a")"
kill -TERM "${HVD_PID[1]}"
wait "${HVD_PID[1]}" || fail "hvstord exited $? at SIGTERM"
HVD_PID[1]=
[ ! -e "$WORK/st1/cbt/a" ] || fail "cbt/a written back when a's disks closed: $(ls "$WORK/st1/cbt/a")"
grep -i "cbt.*No such file" "$WORK/hvstord1.log" && fail "closing a deleted VM's disks tried to write its state"
echo "PASS"
