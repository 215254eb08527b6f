#!/bin/bash
# `vm delete` and what a VM leaves behind. Its change-tracking state
# (STATE/cbt/<vm>/) goes with it, and is not written back when its disks
# close later. A VM with a checkpoint (its newest data in a child file the
# attached image does not name) is refused, naming the checkpoint and the
# file; --force deletes it and says which file holds the newest data, and
# that file, attached to another VM, reads exactly what was written last.
source "$(dirname "$0")/hvstord_lib.sh"
source "$(dirname "$0")/snap_lib.sh"
hv_setup
need qemu-io qemu-img python3

hv_start
usage_exit2 vm delete
usage_exit2 vm delete a b
usage_exit2 vm delete a --forse
hvctl vm --help | grep -q -- "--force" || hv_fail "vm --help does not tell of --force"

# ---- a VM without checkpoints: its tracking state goes with it
hvctl vm create plain --initiator "$INI" >/dev/null
hvctl disk attach plain --controller 0 --slot 0 --vhd "$HV_TMP/p.vhd" --create 16M >/dev/null
wr plain 0 0 0x44 0 1M
hvctl backup create plain --to "$HV_TMP/bkp" --consistency crash >/dev/null || hv_fail "backup of plain"
[ -d "$HV_STATE/cbt/plain" ] || hv_fail "no tracking state for plain: $(ls -R "$HV_STATE")"
hvctl vm delete plain >"$HV_TMP/del.out" || hv_fail "vm delete plain"
[ ! -e "$HV_STATE/cbt/plain" ] || hv_fail "cbt/plain left by vm delete: $(ls "$HV_STATE/cbt/plain")"
echo "vm delete of a VM without checkpoints: $(cat "$HV_TMP/del.out"); cbt/plain removed"

# ---- a VM with a checkpoint: refused, then --force
M=$HV_TMP/model.raw
truncate -s 16M "$M"
hvctl vm create cp --initiator "$INI" >/dev/null
hvctl disk attach cp --controller 0 --slot 0 --vhd "$HV_TMP/d.vhd" --create 16M >/dev/null
wr cp 0 0 0x11 0 1M "$M"
hvctl --json checkpoint create cp --name first --consistency crash >"$HV_TMP/cp.json" ||
    hv_fail "checkpoint create"
child=$(json_get "$HV_TMP/cp.json" 'j["disks"][0]["child"]')
[ -f "$child" ] || hv_fail "no child file: $(cat "$HV_TMP/cp.json")"
wr cp 0 0 0x22 1M 1M "$M"
[ -d "$HV_STATE/cbt/cp" ] || hv_fail "no tracking state for cp"

rc=0
hvctl vm delete cp 2>"$HV_TMP/refused.err" || rc=$?
[ $rc = 1 ] || hv_fail "vm delete of a VM with a checkpoint exited $rc: $(cat "$HV_TMP/refused.err")"
for want in "first" "$child" "$HV_TMP/d.vhd" "--force"; do
    grep -qF -- "$want" "$HV_TMP/refused.err" || hv_fail "the refusal does not name $want: $(cat "$HV_TMP/refused.err")"
done
hvctl vm show cp >/dev/null || hv_fail "the refused delete removed the VM"
rd cp 0 0 0x22 1M 1M
echo "refused: $(cut -c1-200 "$HV_TMP/refused.err")..."

hvctl --json vm delete cp --force >"$HV_TMP/forced.json" || hv_fail "vm delete --force"
[ "$(json_get "$HV_TMP/forced.json" 'j["newest_data"][0]["newest"]')" = "$child" ] ||
    hv_fail "--force must name the file with the newest data: $(cat "$HV_TMP/forced.json")"
[ ! -e "$HV_STATE/cbt/cp" ] || hv_fail "cbt/cp left by vm delete --force"
hvctl vm show cp 2>/dev/null && hv_fail "cp still exists after --force"

# The newest data is where it said: attached to another VM, it reads all of it.
hvctl vm create heir --initiator "$INI" >/dev/null
hvctl disk attach heir --controller 0 --slot 0 --vhd "$child" >/dev/null ||
    hv_fail "attach the kept child to another VM"
lun_image heir 0 0 "$HV_TMP/heir.raw"
cmp "$HV_TMP/heir.raw" "$M" || hv_fail "the kept child does not hold the deleted VM's newest data"
echo "--force: newest data in $(basename "$child"), read back whole (cmp) through another VM"

# The disks of deleted VMs close at shutdown without writing tracking state back.
hv_stop
for v in plain cp; do
    [ ! -e "$HV_STATE/cbt/$v" ] || hv_fail "cbt/$v written back when its disks closed"
done
grep -i "cbt.*No such file" "$HV_LOG" && hv_fail "closing a deleted VM's disks tried to write its state"
echo "PASS"
