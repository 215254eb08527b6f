#!/bin/bash
# Checkpoints of a running two-disk VM through hvstord, with a real guest
# agent (hvstor-vss on a Unix socket; its writer hook writes through iSCSI
# while the guest is "frozen"): create (app-consistent, default name), list,
# show, delete (live merge), apply (revert), each checked by the data an
# iSCSI client reads; checkpoints, layers and the agent survive a restart,
# a merge that finished just before hvstord died is completed at start,
# and the newest checkpoint still merges live after it; a dead agent makes
# an app checkpoint fail without changing anything while a crash one works.
# Also the usage errors of the new commands.
source "$(dirname "$0")/hvstord_lib.sh"
source "$(dirname "$0")/snap_lib.sh"
hv_setup
need qemu-io qemu-img python3

snap_agent_start
hv_start

# ---- usage errors (exit 2), no daemon state needed
usage_exit2 checkpoint
usage_exit2 checkpoint frob vm
usage_exit2 checkpoint create
usage_exit2 checkpoint show vm
usage_exit2 checkpoint delete vm a b
usage_exit2 checkpoint create vm --consistency maybe
usage_exit2 checkpoint list vm --name x
usage_exit2 backup
usage_exit2 backup create vm
usage_exit2 backup create vm --to /tmp/x --seq 1
usage_exit2 backup create vm --to /tmp/x --max-rate fast
usage_exit2 backup verify
usage_exit2 backup verify a --incremental
usage_exit2 backup restore dir
usage_exit2 vm create x --agent ssh:/tmp/s
usage_exit2 vm create x --no-agent
hvctl checkpoint --help | grep -q "checkpoint create VM" || hv_fail "checkpoint --help"
hvctl backup create --help | grep -q -- "--incremental" || hv_fail "backup --help"
echo "usage errors: exit 2"

hvctl vm create app --initiator "$INI" --agent "hvstor-vss:$AGENT_SOCK" >/dev/null
hvctl disk attach app --controller 0 --slot 0 --vhd "$HV_TMP/d0.vhd" --create 64M >/dev/null
hvctl disk attach app --controller 0 --slot 1 --vhd "$HV_TMP/d1.vhd" --create 64M >/dev/null
lun_opts app 0 0 >"$HV_TMP/hook-opts"

hvctl --json vm show app >"$HV_TMP/show.json"
[ "$(json_get "$HV_TMP/show.json" 'j["agent"]["answers"]')" = True ] ||
    hv_fail "vm show: the agent should answer: $(cat "$HV_TMP/show.json")"
json_get "$HV_TMP/show.json" 'j["agent"]["version"]' | grep -q "^hvstor-vss" ||
    hv_fail "vm show: agent version"
echo "vm show: agent $(json_get "$HV_TMP/show.json" 'j["agent"]["version"]') answers"

wr app 0 0 0x11 0 1M
wr app 0 1 0x21 0 1M

# ---- create, app-consistent: the hook's freeze write is in it, the thaw one is not
touch "$HV_TMP/hook-writes"
: >"$CALLS"
hvctl --json checkpoint create app --name one >"$HV_TMP/cp1.json" || hv_fail "checkpoint create one"
rm "$HV_TMP/hook-writes"
[ "$(json_get "$HV_TMP/cp1.json" 'j["consistency"]')" = app ] || hv_fail "not app: $(cat "$HV_TMP/cp1.json")"
[ "$(json_get "$HV_TMP/cp1.json" 'len(j["disks"])')" = 2 ] || hv_fail "two disks expected"
[ "$(tr '\n' ' ' <"$CALLS")" = "prepare freeze thaw " ] || hv_fail "hook calls: $(cat "$CALLS")"
grep -q failed "$CALLS" && hv_fail "a hook's write through iSCSI failed while frozen"
for f in $(json_get "$HV_TMP/cp1.json" '" ".join(d["child"] for d in j["disks"])'); do
    [ -f "$f" ] || hv_fail "child $f missing"
done
rd app 0 0 0x7a 32M 64k
echo "checkpoint one: app-consistent, held $(json_get "$HV_TMP/cp1.json" 'j["hold_ms"]') ms; hooks: prepare freeze thaw"

hvctl disk resize app --controller 0 --slot 0 128M 2>"$HV_TMP/resize.err" &&
    hv_fail "resize of a disk with a checkpoint succeeded"
grep -q "checkpoints" "$HV_TMP/resize.err" || hv_fail "resize refusal: $(cat "$HV_TMP/resize.err")"
hvctl disk detach app --controller 0 --slot 1 2>"$HV_TMP/detach.err" &&
    hv_fail "detach of a disk whose data is in a checkpoint child succeeded"
grep -q "has checkpoints" "$HV_TMP/detach.err" || hv_fail "detach refusal: $(cat "$HV_TMP/detach.err")"

wr app 0 0 0x12 0 1M
wr app 0 1 0x22 0 1M
hvctl --json checkpoint create app >"$HV_TMP/cp2.json" || hv_fail "checkpoint create (default name)"
cp2=$(json_get "$HV_TMP/cp2.json" 'j["name"]')
[[ "$cp2" =~ ^cp-[0-9]{8}-[0-9]{6}$ ]] || hv_fail "default name '$cp2'"
wr app 0 0 0x13 0 1M

hvctl --json checkpoint list app >"$HV_TMP/list.json"
[ "$(json_get "$HV_TMP/list.json" '" ".join(c["name"] for c in j)')" = "one $cp2" ] ||
    hv_fail "list: $(cat "$HV_TMP/list.json")"
[ "$(hvctl --json checkpoint show app one | json_get - 'j["name"]')" = one ] || hv_fail "show one"
hvctl checkpoint show app nope >/dev/null 2>&1 && hv_fail "show of a missing checkpoint succeeded"
hvctl checkpoint create app --name one >/dev/null 2>&1 && hv_fail "duplicate name accepted"
hvctl checkpoint delete app one 2>"$HV_TMP/del.err" && hv_fail "deleting a checkpoint that is not the newest"
grep -q "not the newest" "$HV_TMP/del.err" || hv_fail "why: $(cat "$HV_TMP/del.err")"
echo "list oldest first, show, duplicate and out-of-order delete refused"

# ---- delete the newest: its child merges live, the current data stays
child2=$(json_get "$HV_TMP/cp2.json" 'j["disks"][0]["child"]')
hvctl checkpoint delete app "$cp2" >/dev/null || hv_fail "delete $cp2"
[ ! -e "$child2" ] || hv_fail "$child2 still there after the merge"
rd app 0 0 0x13 0 1M
rd app 0 1 0x22 0 1M
[ "$(hvctl --json checkpoint list app | json_get - '" ".join(c["name"] for c in j)')" = one ] ||
    hv_fail "list after delete"
echo "delete $cp2: merged live, data 0x13/0x22 kept"

# ---- apply: back to checkpoint one on both disks
hvctl checkpoint apply app one >/dev/null || hv_fail "apply one"
rd app 0 0 0x11 0 1M
rd app 0 0 0x5f 32M 64k
rd app 0 1 0x21 0 1M
hv_vhd_check "$HV_TMP/d0.vhd" "checkpoint image of disk 0"
echo "apply one: disk 0 reads 0x11 and the hook's freeze write, disk 1 reads 0x21"

# ---- restart: checkpoints, layers and the agent come back
wr app 0 0 0x14 1M 1M
hv_stop
hv_start
[ "$(hvctl --json checkpoint list app | json_get - '" ".join(c["name"] for c in j)')" = one ] ||
    hv_fail "checkpoints lost across restart"
[ "$(hvctl --json vm show app | json_get - 'j["agent"]["answers"]')" = True ] || hv_fail "agent lost across restart"
rd app 0 0 0x11 0 1M
rd app 0 0 0x14 1M 1M
hvctl checkpoint apply app one >/dev/null || hv_fail "apply one after restart"
rd app 0 0 0x11 0 1M
rd app 0 0 0 1M 1M
wr app 0 0 0x15 2M 64k
hvctl checkpoint delete app one >/dev/null || hv_fail "delete one after restart (live merge)"
rd app 0 0 0x11 0 1M
rd app 0 0 0x15 2M 64k
rd app 0 1 0x21 0 1M
hvctl --json vm show app >"$HV_TMP/show2.json"
[ "$(json_get "$HV_TMP/show2.json" 'j["controllers"][0]["luns"][0]["top"] == j["controllers"][0]["luns"][0]["path"]')" = True ] ||
    hv_fail "top is not the attached image again: $(cat "$HV_TMP/show2.json")"
[ "$(ls "$HV_TMP"/d0*.vhd | wc -l)" = 1 ] || hv_fail "files left: $(ls "$HV_TMP")"
hv_vhd_check "$HV_TMP/d0.vhd" "after the last merge"
echo "restart keeps checkpoints and agent; apply and live delete work after it"

# ---- killed in the last step of a live merge: `<child>.merged` names the
# parent as the top. Staged here with a checkpoint nothing was written after
# (so the parent already reads what the merged chain would).
hvctl --json checkpoint create app --name merging --consistency crash >"$HV_TMP/cpm.json"
childm=$(json_get "$HV_TMP/cpm.json" 'j["disks"][0]["child"]')
hv_stop
printf '%s' "$HV_TMP/d0.vhd" >"$childm.merged"
hv_start
grep -q "live merge of $childm had finished" "$HV_LOG" || hv_fail "recovery not logged"
[ ! -e "$childm" ] && [ ! -e "$childm.merged" ] || hv_fail "the merged child or its marker stayed"
hvctl --json checkpoint show app merging >"$HV_TMP/cpm2.json" || hv_fail "checkpoint gone for disk 1 too"
[ "$(json_get "$HV_TMP/cpm2.json" 'len(j["disks"])')" = 1 ] || hv_fail "disk 0 still in the checkpoint: $(cat "$HV_TMP/cpm2.json")"
rd app 0 0 0x11 0 1M
rd app 0 0 0x15 2M 64k
hvctl checkpoint delete app merging >/dev/null || hv_fail "delete the rest of 'merging'"
[ "$(hvctl --json checkpoint list app | json_get - 'len(j)')" = 0 ] || hv_fail "list after recovery"
rd app 0 1 0x21 0 1M
echo "restart after a merge finished but unrecorded: top fixed, child removed, the checkpoint keeps disk 1 only"

# ---- killed between the cut and recording the checkpoint: the definition
# names the child as the top but no checkpoint owns it (staged by removing
# the record). The next checkpoint operation merges it back and says so.
hvctl checkpoint create app --name orphan --consistency crash >/dev/null
wr app 0 0 0x16 3M 64k
hv_stop
python3 - "$HV_STATE/vms/app.json" <<'PY'
import json, sys
p = sys.argv[1]
j = json.load(open(p))
j["checkpoints"] = [c for c in j["checkpoints"] if c["name"] != "orphan"]
if not j["checkpoints"]:
    del j["checkpoints"]
json.dump(j, open(p, "w"))
PY
hv_start
hvctl --json checkpoint create app --name after --consistency crash >"$HV_TMP/after.json" ||
    hv_fail "checkpoint after an unrecorded one"
json_get "$HV_TMP/after.json" 'j["recovered"]' | grep -q "interrupted checkpoint had left" ||
    hv_fail "the leftover was not reported: $(cat "$HV_TMP/after.json")"
rd app 0 0 0x16 3M 64k
hvctl checkpoint delete app after >/dev/null || hv_fail "delete after"
[ "$(ls "$HV_TMP"/d0*.vhd | wc -l)" = 1 ] || hv_fail "files left: $(ls "$HV_TMP")"
echo "an unrecorded checkpoint child: merged back by the next operation, which says so"

# ---- a dead agent: app fails and changes nothing, crash works
snap_agent_kill
start_ns=$(date +%s%N)
hvctl --json vm show app >"$HV_TMP/show3.json" || hv_fail "vm show with a dead agent"
echo "vm show with a dead agent: $((($(date +%s%N) - start_ns) / 1000000)) ms"
[ "$(json_get "$HV_TMP/show3.json" 'j["agent"]["answers"]')" = False ] || hv_fail "a dead agent answers?"
hvctl checkpoint create app --name dead 2>"$HV_TMP/dead.err" && hv_fail "app checkpoint with a dead agent succeeded"
grep -q "agent" "$HV_TMP/dead.err" || hv_fail "the error should name the agent: $(cat "$HV_TMP/dead.err")"
[ "$(hvctl --json checkpoint list app | json_get - 'len(j)')" = 0 ] || hv_fail "a failed checkpoint was recorded"
[ "$(ls "$HV_TMP"/d0*.vhd | wc -l)" = 1 ] || hv_fail "a failed checkpoint left files: $(ls "$HV_TMP")"
hvctl --json checkpoint create app --name crash1 --consistency crash >"$HV_TMP/crash.json" ||
    hv_fail "crash checkpoint with a dead agent"
[ "$(json_get "$HV_TMP/crash.json" 'j["consistency"]')" = crash ] || hv_fail "crash expected"
grep -q "crash consistency was asked for" "$HV_TMP/crash.json" || hv_fail "why: $(cat "$HV_TMP/crash.json")"
hvctl vm set app --no-agent >/dev/null
[ "$(hvctl --json checkpoint create app | json_get - 'j["why"]')" = "the VM has no guest agent" ] ||
    hv_fail "without an agent the default is crash, and it says why"
echo "dead agent: app checkpoint refused ($(head -c 150 "$HV_TMP/dead.err")...), crash works"

# ---- qemu-ga: QEMU's agent, its freeze disabled (it would freeze this
# host's root: it cannot be restricted). It answers; an app checkpoint whose
# freeze fails is removed again and the command fails, saying why.
if command -v qemu-ga >/dev/null; then
    mkdir -p "$HV_TMP/qga"
    qemu-ga -m unix-listen -p "$HV_TMP/qga.sock" -f "$HV_TMP/qga/pid" -t "$HV_TMP/qga" \
        -b guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw \
        -l "$HV_TMP/qga/log" &
    HV_EXTRA_PIDS+=("$!")
    for _ in $(seq 100); do [ -S "$HV_TMP/qga.sock" ] && break; sleep 0.05; done
    hvctl vm set app --agent "qemu-ga:$HV_TMP/qga.sock" >/dev/null
    hvctl --json vm show app >"$HV_TMP/show4.json"
    json_get "$HV_TMP/show4.json" 'j["agent"]["version"]' | grep -q "^qemu-ga" ||
        hv_fail "qemu-ga does not answer: $(cat "$HV_TMP/show4.json")"
    before=$(hvctl --json checkpoint list app | json_get - 'len(j)')
    hvctl checkpoint create app --name qga 2>"$HV_TMP/qga.err" && hv_fail "app checkpoint with a disabled freeze"
    grep -q "crash-consistent" "$HV_TMP/qga.err" || hv_fail "why: $(cat "$HV_TMP/qga.err")"
    [ "$(hvctl --json checkpoint list app | json_get - 'len(j)')" = "$before" ] || hv_fail "the refused checkpoint stayed"
    hvctl checkpoint create app --name qga --consistency crash >/dev/null || hv_fail "crash checkpoint with qemu-ga"
    echo "qemu-ga: answers ($(json_get "$HV_TMP/show4.json" 'j["agent"]["version"]')); app refused: $(head -c 160 "$HV_TMP/qga.err")..."
else
    echo "qemu-ga: not installed, skipped"
fi
hv_stop
echo "PASS"
