#!/bin/bash
# While one VM's backup runs, hvstord is busy for that VM only. Other VMs
# are created, changed, given and relieved of disks, resized and deleted
# meanwhile; another VM's backup and checkpoint asked for during it wait
# their turn (they never nest inside it) and succeed; only changes of the
# busy VM itself are refused, with a message naming what it is busy with.
# Every backup restores to exactly what was written (cmp).
source "$(dirname "$0")/hvstord_lib.sh"
source "$(dirname "$0")/snap_lib.sh"
hv_setup
need qemu-io qemu-img python3 cmp

hv_start
MA=$HV_TMP/modelA.raw
MB=$HV_TMP/modelB.raw
truncate -s 64M "$MA" "$MB"
for v in a b; do
    hvctl vm create $v --initiator "$INI" >/dev/null || hv_fail "vm create $v"
    hvctl disk attach $v --controller 0 --slot 0 --vhd "$HV_TMP/$v.vhd" --create 64M >/dev/null ||
        hv_fail "disk of $v"
done
wr a 0 0 0x1a 0 16M "$MA"
wr b 0 0 0x2b 8M 4M "$MB"

# A's backup reads 16 MiB at 1 MiB/s: it runs for many seconds.
hvctl --json backup create a --to "$HV_TMP/bka" --consistency crash --max-rate 1M \
    >"$HV_TMP/a.json" 2>"$HV_TMP/a.err" &
client_a=$!
for _ in $(seq 200); do [ -e "$HV_TMP/bka/backup.lock" ] && break; sleep 0.05; done
[ -e "$HV_TMP/bka/backup.lock" ] || hv_fail "a's backup did not start: $(cat "$HV_TMP/a.err")"

# ---- other VMs change meanwhile
t0=$(date +%s%N)
hvctl vm create c --initiator "$INI" >/dev/null || hv_fail "vm create c during a's backup"
hvctl disk attach b --controller 0 --slot 1 --vhd "$HV_TMP/b1.vhd" --create 16M >/dev/null ||
    hv_fail "attach to b during a's backup"
hvctl disk resize b --controller 0 --slot 1 32M >/dev/null || hv_fail "resize b's disk during a's backup"
hvctl disk detach b --controller 0 --slot 1 >/dev/null || hv_fail "detach from b during a's backup"
hvctl vm set b --initiator "$INI" --initiator iqn.2026-11.org.hvstor.test:other >/dev/null ||
    hv_fail "vm set b during a's backup"
hvctl disk attach c --controller 0 --slot 0 --vhd "$HV_TMP/c.vhd" --create 16M >/dev/null ||
    hv_fail "attach to c during a's backup"
# vm show of a VM with an agent does not ask it while a's backup runs (it
# would run turns inside it) and says so, not that the agent is dead.
hvctl vm set c --agent "hvstor-vss:$HV_TMP/c-agent.sock" >/dev/null || hv_fail "vm set c --agent"
hvctl --json vm show c >"$HV_TMP/c.json" || hv_fail "vm show c during a's backup"
[ "$(json_get "$HV_TMP/c.json" 'j["agent"]["answers"]')" = None ] || hv_fail "c's agent: $(cat "$HV_TMP/c.json")"
hvctl vm show c | grep -q "not asked: another request is running" || hv_fail "vm show c: $(hvctl vm show c)"
hvctl vm delete c >/dev/null || hv_fail "vm delete c during a's backup"
took=$(( ($(date +%s%N) - t0) / 1000000 ))
# The order is the point: all of the above was answered while a's backup
# still ran (it takes 16 s; they take a fraction of one).
kill -0 $client_a 2>/dev/null || hv_fail "a's backup ended before the other VMs' changes: it must outlast them"
echo "during a's backup: vm create/set/delete, disk attach/resize/detach of other VMs answered (10 hvctl calls: $took ms)"

# ---- the busy VM itself: refused, saying with what
hvctl disk detach a --controller 0 --slot 0 2>"$HV_TMP/busy.err" && hv_fail "detach from a during its backup"
grep -q "busy with backup.create of VM 'a'" "$HV_TMP/busy.err" ||
    hv_fail "detach from a: $(cat "$HV_TMP/busy.err")"
hvctl vm delete a 2>"$HV_TMP/busy.err" && hv_fail "vm delete a during its backup"
grep -q "busy with backup.create of VM 'a'" "$HV_TMP/busy.err" || hv_fail "delete a: $(cat "$HV_TMP/busy.err")"
hvctl checkpoint create a --consistency crash 2>"$HV_TMP/busy.err" && hv_fail "checkpoint of a during its backup"
grep -q "busy with backup.create of VM 'a'" "$HV_TMP/busy.err" || hv_fail "checkpoint a: $(cat "$HV_TMP/busy.err")"
# The same image cannot go to another VM.
hvctl disk attach b --controller 0 --slot 2 --vhd "$HV_TMP/a.vhd" 2>"$HV_TMP/busy.err" &&
    hv_fail "a's image attached to b"
grep -q "already attached to VM 'a'\|already attached to a\|VM 'a'" "$HV_TMP/busy.err" ||
    hv_fail "a's image to b: $(cat "$HV_TMP/busy.err")"
echo "the busy VM: $(head -c 140 "$HV_TMP/busy.err")"

# ---- b's backup and checkpoint asked for now: they wait for a's, then run
hvctl --json backup create b --to "$HV_TMP/bkb" --consistency crash >"$HV_TMP/b.json" 2>"$HV_TMP/b.err" &
client_b=$!
hvctl --json checkpoint create b --name during-a --consistency crash >"$HV_TMP/cpb.json" 2>"$HV_TMP/cpb.err" &
client_cp=$!
wr a 0 0 0x3a 32M 1M        # a's guest writes after its cut: not in backup #0
wait $client_a || hv_fail "a's backup: $(cat "$HV_TMP/a.err")"
wait $client_b || hv_fail "b's backup asked for during a's: $(cat "$HV_TMP/b.err")"
wait $client_cp || hv_fail "b's checkpoint asked for during a's: $(cat "$HV_TMP/cpb.err")"
[ "$(json_get "$HV_TMP/cpb.json" 'j["name"]')" = during-a ] || hv_fail "checkpoint: $(cat "$HV_TMP/cpb.json")"
grep -q "busy" "$HV_TMP/b.err" "$HV_TMP/cpb.err" && hv_fail "b's requests were refused"
echo "b's backup and checkpoint asked for during a's backup: both done after it"

# ---- two backups at once (a's and b's, started together): both complete
hvctl --json backup create a --to "$HV_TMP/bka" --incremental --consistency crash \
    >"$HV_TMP/a2.json" 2>"$HV_TMP/a2.err" &
client_a=$!
hvctl --json backup create b --to "$HV_TMP/bkb2" --consistency crash >"$HV_TMP/b2.json" 2>"$HV_TMP/b2.err" &
client_b=$!
wait $client_a || hv_fail "a's second backup: $(cat "$HV_TMP/a2.err")"
wait $client_b || hv_fail "b's second backup: $(cat "$HV_TMP/b2.err")"
[ "$(json_get "$HV_TMP/a2.json" 'j["incremental"]')" = True ] || hv_fail "a2: $(cat "$HV_TMP/a2.json")"

restore_cmp()   # restore_cmp DIR SEQ MODEL
{
    rm -rf "$HV_TMP/rs"
    hvctl backup restore "$1" --to "$HV_TMP/rs" --seq "$2" >/dev/null 2>"$HV_TMP/rs.err" ||
        hv_fail "restore $1 #$2: $(cat "$HV_TMP/rs.err")"
    qemu-img convert -f vpc -O raw "$HV_TMP/rs/c0-s0.vhd" "$HV_TMP/rs/c0-s0.raw"
    cmp "$HV_TMP/rs/c0-s0.raw" "$3" || hv_fail "backup $1 #$2 differs from its disk"
}
cp "$MA" "$MA.0"
python3 - "$MA" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(32 << 20); f.write(bytes([0x3a]) * (1 << 20))
PY
restore_cmp "$HV_TMP/bka" 0 "$MA.0"
restore_cmp "$HV_TMP/bka" 1 "$MA"
restore_cmp "$HV_TMP/bkb" 0 "$MB"
restore_cmp "$HV_TMP/bkb2" 0 "$MB"
lun_image b 0 0 "$HV_TMP/nowb.raw"
cmp "$HV_TMP/nowb.raw" "$MB" || hv_fail "b's disk after its checkpoint and backups"
hvctl vm show a >/dev/null || hv_fail "vm show a"
echo "every backup restores to its disk (cmp); two VMs' backups at once both done"
hv_stop
echo "PASS"
