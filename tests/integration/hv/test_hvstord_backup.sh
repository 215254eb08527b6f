#!/bin/bash
# Backups of a running VM through hvstord: a VHD disk (live child) and a raw
# disk (copy-before-write), a real guest agent, data written over iSCSI.
# A model of each disk (the same byte patterns written into a plain file)
# gives the expected image at every backup: a full then three incrementals
# (one after a clean restart, so tracking survives it), each restored and
# compared byte for byte with cmp; each incremental reads and writes exactly
# the 64 KiB units written since the previous one. verify passes, then fails
# naming the file after one byte of a copy is changed. hvstord killed (-9)
# in the middle of a rate-limited backup: the VM comes back whole, the next
# run cleans up, says what it removed and why it is full. A destination that
# fills up and a dead agent fail cleanly, the VM unchanged; an agent that
# dies during the freeze leaves a crash-consistent backup that says why.
source "$(dirname "$0")/hvstord_lib.sh"
source "$(dirname "$0")/snap_lib.sh"
hv_setup
need qemu-io qemu-img python3 cmp

snap_agent_start
hv_start
M0=$HV_TMP/model0.raw
M1=$HV_TMP/model1.raw
truncate -s 64M "$M0"
truncate -s 32M "$HV_TMP/d1.raw"
truncate -s 32M "$M1"
hvctl vm create bk --initiator "$INI" --agent "hvstor-vss:$AGENT_SOCK" >/dev/null
hvctl disk attach bk --controller 0 --slot 0 --vhd "$HV_TMP/d0.vhd" --create 64M >/dev/null
hvctl disk attach bk --controller 0 --slot 1 --raw "$HV_TMP/d1.raw" >/dev/null
BK=$HV_TMP/backups

# Expected read/write bytes of backup N per disk, checked against its JSON.
check_bytes()   # check_bytes JSON C0S0_BYTES C0S1_BYTES
{
    local got
    got=$(json_get "$1" '" ".join("%d/%d" % (d["bytes_read"], d["bytes_written"]) for d in sorted(j["disks"], key=lambda d: d["slot"]))')
    [ "$got" = "$2/$2 $3/$3" ] || hv_fail "bytes read/written $got, expected $2/$2 $3/$3: $(cat "$1")"
}

snapshot_models() { cp "$M0" "$M0.$1"; cp "$M1" "$M1.$1"; }

# ---- full
wr bk 0 0 0x11 0 2M "$M0"
wr bk 0 0 0x12 40M 512k "$M0"
wr bk 0 1 0x21 0 1M "$M1"
hvctl --json backup create bk --to "$BK" >"$HV_TMP/b0.json" || hv_fail "full backup"
[ "$(json_get "$HV_TMP/b0.json" 'j["incremental"]')" = False ] || hv_fail "first backup not full"
[ "$(json_get "$HV_TMP/b0.json" 'j["checkpoint"]["consistency"]')" = app ] || hv_fail "not app-consistent"
snapshot_models 0
echo "backup #0 full: $(json_get "$HV_TMP/b0.json" 'j["seconds"]') s"

# ---- incremental 1: 1 MiB on disk 0, 128 KiB on disk 1
wr bk 0 0 0x31 4M 1M "$M0"
wr bk 0 1 0x41 1M 128k "$M1"
hvctl --json backup create bk --to "$BK" --incremental >"$HV_TMP/b1.json" || hv_fail "incremental 1"
[ "$(json_get "$HV_TMP/b1.json" 'j["incremental"]')" = True ] || hv_fail "not incremental: $(cat "$HV_TMP/b1.json")"
check_bytes "$HV_TMP/b1.json" $((1024 * 1024)) $((128 * 1024))
snapshot_models 1

# ---- incremental 2: overlapping and new ranges (units of 64 KiB)
wr bk 0 0 0x32 4608k 64k "$M0"
wr bk 0 0 0x33 10M 192k "$M0"
wr bk 0 1 0x42 0 64k "$M1"
hvctl --json backup create bk --to "$BK" --incremental >"$HV_TMP/b2.json" || hv_fail "incremental 2"
[ "$(json_get "$HV_TMP/b2.json" 'j["incremental"]')" = True ] || hv_fail "not incremental"
check_bytes "$HV_TMP/b2.json" $((256 * 1024)) $((64 * 1024))
snapshot_models 2

# ---- a clean restart keeps the tracking: incremental 3
hv_stop
hv_start
wr bk 0 0 0x34 20M 64k "$M0"
hvctl --json backup create bk --to "$BK" --incremental >"$HV_TMP/b3.json" || hv_fail "incremental 3"
[ "$(json_get "$HV_TMP/b3.json" 'j["incremental"]')" = True ] ||
    hv_fail "tracking lost across a clean restart: $(cat "$HV_TMP/b3.json")"
check_bytes "$HV_TMP/b3.json" $((64 * 1024)) 0
snapshot_models 3
echo "incrementals 1-3 read exactly what was written (1 MiB+128 KiB, 256+64 KiB, 64 KiB), #3 after a restart"

# ---- every backup restores to exactly its model
restore_and_compare()   # restore_and_compare SEQ
{
    rm -rf "$HV_TMP/rs"
    hvctl --json backup restore "$BK" --to "$HV_TMP/rs" --seq "$1" >/dev/null 2>"$HV_TMP/rs.err" ||
        hv_fail "restore #$1: $(cat "$HV_TMP/rs.err")"
    for k in 0 1; do
        qemu-img convert -f vpc -O raw "$HV_TMP/rs/c0-s$k.vhd" "$HV_TMP/rs/c0-s$k.raw"
        local m=$M0
        [ $k = 1 ] && m=$M1
        cmp "$HV_TMP/rs/c0-s$k.raw" "$m.$1" || hv_fail "backup #$1 disk c0-s$k differs from the disk at its checkpoint"
    done
}
for n in 0 1 2 3; do restore_and_compare $n; done
echo "restore #0..#3: both disks identical (cmp) to the disks at each checkpoint"

# ---- verify, and a corrupted copy
hvctl backup verify "$BK" >"$HV_TMP/verify.txt" || hv_fail "verify: $(cat "$HV_TMP/verify.txt")"
cp -a "$BK" "$HV_TMP/corrupt"
python3 - "$HV_TMP/corrupt/1-c0-s0.vhd" <<'PY'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
at = data.find(bytes([0x31]) * 4096)
assert at > 0
data[at + 100] ^= 0xFF
open(p, "wb").write(data)
PY
rc=0
hvctl backup verify "$HV_TMP/corrupt" >/dev/null 2>"$HV_TMP/verify.err" || rc=$?
[ $rc = 1 ] || hv_fail "verify of a corrupted backup exited $rc"
grep -q "1-c0-s0.vhd" "$HV_TMP/verify.err" || hv_fail "verify must name the file: $(cat "$HV_TMP/verify.err")"
echo "verify: ok; one byte changed -> exit 1: $(grep 1-c0-s0 "$HV_TMP/verify.err" | head -1)"

# ---- hvstord killed in the middle of a backup
wr bk 0 0 0x51 24M 16M "$M0"
hvctl backup create bk --to "$BK" --incremental --max-rate 2M -p >"$HV_TMP/killed.out" 2>"$HV_TMP/killed.err" &
client=$!
for _ in $(seq 100); do [ -e "$BK/backup.lock" ] && break; sleep 0.05; done
[ -e "$BK/backup.lock" ] || hv_fail "the rate-limited backup did not start"
sleep 1.5
# Meanwhile: reads are served, changes are refused.
hvctl vm show bk >/dev/null || hv_fail "vm show during a backup"
hvctl disk detach bk --controller 0 --slot 1 2>"$HV_TMP/busy.err" && hv_fail "detach during a backup"
grep -q "busy" "$HV_TMP/busy.err" || hv_fail "detach during a backup: $(cat "$HV_TMP/busy.err")"
rd bk 0 0 0x11 0 2M
kill -9 "$HV_PID"
wait "$HV_PID" 2>/dev/null || true
HV_PID=
wait "$client" && hv_fail "hvctl succeeded although hvstord was killed"
grep -q "written" "$HV_TMP/killed.err" || hv_fail "-p showed no progress: $(cat "$HV_TMP/killed.err")"
hv_start
lun_image bk 0 0 "$HV_TMP/now0.raw"
cmp "$HV_TMP/now0.raw" "$M0" || hv_fail "disk 0 after kill -9 differs from what was written"
lun_image bk 0 1 "$HV_TMP/now1.raw"
cmp "$HV_TMP/now1.raw" "$M1" || hv_fail "disk 1 after kill -9 differs from what was written"
hvctl --json backup create bk --to "$BK" --incremental >"$HV_TMP/b4.json" || hv_fail "backup after kill -9"
json_get "$HV_TMP/b4.json" 'j["recovered"]' | grep -q "did not finish" ||
    hv_fail "the next run must say it cleaned up: $(cat "$HV_TMP/b4.json")"
json_get "$HV_TMP/b4.json" 'j["recovered"]' | grep -q "merged it back" ||
    hv_fail "the next run must say it merged the cut back: $(cat "$HV_TMP/b4.json")"
[ "$(json_get "$HV_TMP/b4.json" 'j["incremental"]')" = False ] || hv_fail "incremental after an unclean stop"
json_get "$HV_TMP/b4.json" 'j["why_full"]' | grep -q "cleanly" || hv_fail "why full: $(cat "$HV_TMP/b4.json")"
[ ! -e "$BK/backup.lock" ] || hv_fail "backup.lock left"
snapshot_models 4
restore_and_compare 4
hvctl backup verify "$BK" >/dev/null || hv_fail "verify after the recovery"
echo "kill -9 mid-backup: disks whole (cmp), next run: $(json_get "$HV_TMP/b4.json" 'j["recovered"]' | cut -c1-160)...; full because $(json_get "$HV_TMP/b4.json" 'j["why_full"]' | cut -c1-100)"

# ---- a destination that fills up
mkdir -p "$HV_TMP/small"
if mount -t tmpfs -o size=1m tmpfs "$HV_TMP/small" 2>/dev/null; then
    rc=0
    hvctl backup create bk --to "$HV_TMP/small/b" 2>"$HV_TMP/full.err" || rc=$?
    umount "$HV_TMP/small"
    [ $rc = 1 ] || hv_fail "a backup into a full file system exited $rc"
    grep -qi "space" "$HV_TMP/full.err" || hv_fail "why: $(cat "$HV_TMP/full.err")"
    hvctl --json vm show bk >"$HV_TMP/show.json"
    [ "$(json_get "$HV_TMP/show.json" 'j["controllers"][0]["luns"][0]["top"] == j["controllers"][0]["luns"][0]["path"]')" = True ] ||
        hv_fail "the cut of the failed backup stayed: $(cat "$HV_TMP/show.json")"
    wr bk 0 0 0x61 8M 64k "$M0"
    lun_image bk 0 0 "$HV_TMP/now0.raw"
    cmp "$HV_TMP/now0.raw" "$M0" || hv_fail "disk 0 after a failed backup"
    echo "destination full: $(head -c 160 "$HV_TMP/full.err"); VM unchanged"
else
    echo "destination full: skipped (cannot mount a tmpfs here)"
fi

# ---- SIGTERM during a backup: the backup finishes, then hvstord exits 0
wr bk 0 0 0x71 40M 4M "$M0"
hvctl --json backup create bk --to "$BK" --incremental --max-rate 2M >"$HV_TMP/b6.json" 2>"$HV_TMP/b6.err" &
client=$!
for _ in $(seq 100); do [ -e "$BK/backup.lock" ] && break; sleep 0.05; done
sleep 0.5
kill -TERM "$HV_PID"
wait "$client" || hv_fail "the backup interrupted by SIGTERM failed: $(cat "$HV_TMP/b6.err")"
rc=0
wait "$HV_PID" || rc=$?
HV_PID=
[ $rc = 0 ] || hv_fail "hvstord exited $rc after SIGTERM during a backup"
grep -q "stopping once backup.create is done" "$HV_LOG" || hv_fail "the deferred stop is not logged"
[ "$(json_get "$HV_TMP/b6.json" 'j["incremental"]')" = True ] || hv_fail "b6: $(cat "$HV_TMP/b6.json")"
# 4 MiB, and the 64 KiB written after the failed backup into the full destination
check_bytes "$HV_TMP/b6.json" $(((4096 + 64) * 1024)) 0
hv_start
seq=$(json_get "$HV_TMP/b6.json" 'j["seq"]')
snapshot_models "$seq"
restore_and_compare "$seq"
echo "SIGTERM during a backup: it completed (incremental, 4 MiB), then hvstord exited 0"

# ---- the agent dies during the freeze: the backup goes on, crash-consistent,
# and says why; the VM is untouched
touch "$HV_TMP/hook-kill"
hvctl --json backup create bk --to "$HV_TMP/b7" >"$HV_TMP/b7.json" 2>"$HV_TMP/b7.err" ||
    hv_fail "backup whose agent died during the freeze: $(cat "$HV_TMP/b7.err")"
rm "$HV_TMP/hook-kill"
[ "$(json_get "$HV_TMP/b7.json" 'j["checkpoint"]["consistency"]')" = crash ] || hv_fail "b7: $(cat "$HV_TMP/b7.json")"
json_get "$HV_TMP/b7.json" 'j["checkpoint"]["why"]' | grep -q "agent" || hv_fail "b7 why: $(cat "$HV_TMP/b7.json")"
kill -0 "$AGENT_PID" 2>/dev/null && hv_fail "the hook did not kill the agent"
hvctl backup verify "$HV_TMP/b7" >/dev/null || hv_fail "verify b7"
lun_image bk 0 0 "$HV_TMP/now0.raw"
cmp "$HV_TMP/now0.raw" "$M0" || hv_fail "disk 0 after the agent died mid-freeze"
echo "agent killed during the freeze: crash-consistent backup, why: $(json_get "$HV_TMP/b7.json" 'j["checkpoint"]["why"]' | cut -c1-120)"

# ---- a dead agent: app refused, crash works
snap_agent_kill
hvctl backup create bk --to "$HV_TMP/b5" 2>"$HV_TMP/dead.err" && hv_fail "app backup with a dead agent"
grep -q "agent" "$HV_TMP/dead.err" || hv_fail "why: $(cat "$HV_TMP/dead.err")"
[ -z "$(ls -A "$HV_TMP/b5" 2>/dev/null)" ] || hv_fail "files left by a refused backup: $(ls "$HV_TMP/b5")"
hvctl --json backup create bk --to "$HV_TMP/b5" --consistency crash >"$HV_TMP/b5.json" || hv_fail "crash backup"
[ "$(json_get "$HV_TMP/b5.json" 'j["checkpoint"]["consistency"]')" = crash ] || hv_fail "crash expected"
echo "dead agent: app backup refused, crash backup made"
hv_stop
echo "PASS"
