#!/usr/bin/env bash
# Backups of a running Linux guest on hvstord, the guest's two disks cut at
# one instant. One TCG boot of Debian's kernel with a busybox initramfs; its
# two disks are dynamic VHDs on hvstord (controller 0, slots 0 and 1) reached
# through virtio-scsi + scsi-block over libiscsi. In the guest: ext4 on both,
# hvstor-vss on the virtio-serial port org.hvstor.vss.0 with its DEFAULT
# filesystem selection, Debian's qemu-ga on org.qemu.guest_agent.0, and an
# application that appends numbered records alternately to /log on disk 1
# (odd numbers) and disk 2 (even numbers), each synced before the next one
# starts. While it writes, `hvctl backup create`, then `hvctl backup restore`
# and `vhd convert` to raw on the host, four times:
#   1. agent hvstor-vss: an app-consistent cut. Both restored filesystems are
#      clean for `e2fsck -fn` WITHOUT journal replay (no needs_recovery).
#   1b. the same VM with --consistency crash: the guest is not frozen, the
#      cut is crash-consistent (checked as in 2).
#   2. no agent (`vm set --no-agent`): a crash-consistent cut. After journal
#      replay (e2fsck -fy on the copy) both filesystems are clean.
#   3. agent qemu-ga (`vm set --agent qemu-ga:SOCK`): app-consistent again,
#      the requestor driving guest-fsfreeze-* of the real qemu-ga.
# Every time: disk 1 holds exactly the odd records 1..N1, disk 2 exactly the
# even records 2..N2, and |N1 - N2| = 1: the one record that may be in flight
# at the cut is the only difference, so both disks were cut at one instant.
# The cut also lies between what the guest had written before the backup
# started and after it finished. After the four backups the guest still
# writes. A control shows that the record checks refuse two disks each
# copied while the guest was frozen (through qemu-ga), 30 records apart. Once hvstord is stopped, the VM's own
# disks (the backups' children merged back live) pass `vhd check` and hold
# complete records too.
# Label: slow (about 90 s here under TCG).
. "$(dirname "$0")/../hv/hvstord_lib.sh"
need qemu-system-x86_64 qemu-img cpio gzip python3 e2fsck dumpe2fs debugfs
hv_setup
"$HVSTOR_BIN/hvctl" backup --help >/dev/null 2>&1 ||
    { echo "SKIP: hvctl has no 'backup' command yet ('hvctl backup --help' fails): nothing to test"; exit 77; }
[ -x "$HVSTOR_BIN/hvstor-vss" ] && [ -x "$HVSTOR_BIN/vhd" ] ||
    { echo "SKIP: hvstor-vss or vhd not built"; exit 77; }

# ---- hvstord with the VM "guest" (two 64 MiB dynamic VHDs, agent
# hvstor-vss), booted and writing records
. "$HVSTOR_SRC/tests/guest/backup_guest.sh"
bg_boot

agent_answers()   # agent_answers NAME: vm show says the agent answers, as NAME
{
    # Until the agent has started in the guest, a probe may miss; once it
    # answered, every probe must (vm show gives it 3 s, and hvstor-vss
    # reopens its hung-up port within 200 ms, even in a TCG guest).
    local deadline=$((SECONDS + 60)) t0=$SECONDS
    while :; do
        hvctl --json vm show guest >"$HV_TMP/show.json"
        [ "$(json_get "$HV_TMP/show.json" '(j.get("agent") or {}).get("answers")')" = True ] && break
        guest_check
        [ $SECONDS -lt $deadline ] || hv_fail "vm show: the agent does not answer: $(cat "$HV_TMP/show.json")"
        sleep 1
    done
    local took=""
    for n in 1 2 3; do
        local t1=$(date +%s%N)
        hvctl --json vm show guest >"$HV_TMP/show.json"
        took="$took $(( ($(date +%s%N) - t1) / 1000000 ))"
        [ "$(json_get "$HV_TMP/show.json" '(j.get("agent") or {}).get("answers")')" = True ] ||
            hv_fail "vm show: probe $n after the agent answered missed it: $(cat "$HV_TMP/show.json")"
    done
    json_get "$HV_TMP/show.json" 'j["agent"]["version"]' | grep -q "^$1" ||
        hv_fail "vm show: the agent is not $1: $(cat "$HV_TMP/show.json")"
    echo "ok: vm show: $(json_get "$HV_TMP/show.json" 'j["agent"]["spec"].split(":")[0] + " answers, " + j["agent"]["version"]') (after $((SECONDS - t0)) s; then 3 of 3 probes answered, vm show took$took ms)"
}

# restored_log MODE RAW OUT: the records of one restored disk into OUT, once
# its file system is clean: app = as it is, crash = after journal replay.
restored_log()
{
    local mode=$1 raw=$2 out=$3 feats rc=0
    feats=$(dumpe2fs -h "$raw" 2>/dev/null | sed -n 's/^Filesystem features:[[:space:]]*//p')
    [ -n "$feats" ] || hv_fail "$raw: dumpe2fs reads no ext4 superblock"
    if [ "$mode" = app ]; then
        case " $feats " in *" needs_recovery "*)
            hv_fail "$raw: the app-consistent cut needs journal recovery ($feats)" ;;
        esac
        e2fsck -fn "$raw" >"$raw.fsck" 2>&1 || hv_fail "$raw: not clean without journal replay: $(cat "$raw.fsck")"
    else
        RECOVERY=$RECOVERY${RECOVERY:+,}$(case " $feats " in *" needs_recovery "*) echo replayed ;; *) echo clean ;; esac)
        e2fsck -fy "$raw" >"$raw.fsck" 2>&1 || rc=$?
        [ $rc -le 1 ] || hv_fail "$raw: e2fsck -fy could not repair it (exit $rc): $(cat "$raw.fsck")"
        e2fsck -fn "$raw" >"$raw.fsck2" 2>&1 || hv_fail "$raw: not clean after journal replay: $(cat "$raw.fsck2")"
    fi
    debugfs -R "cat /log" "$raw" >"$out" 2>/dev/null || hv_fail "$raw: debugfs cannot read /log"
}

# check_records LABEL FILE1 FILE2 LOW HIGH: odd records on disk 1, even on
# disk 2, each complete from the first; the last ones one apart; the cut
# between LOW (written before) and HIGH (written after).
check_records()
{
    local label=$1 f1=$2 f2=$3 low=$4 high=$5 n1 n2
    n1=$(wc -l <"$f1") n2=$(wc -l <"$f2")
    seq 1 2 $((2 * n1)) | sed 's/^/record /' | cmp -s - "$f1" ||
        hv_fail "$label: disk 1 does not hold exactly the odd records 1..$((2 * n1 - 1)): $(tail -3 "$f1" | tr '\n' '|')"
    seq 2 2 $((2 * n2)) | sed 's/^/record /' | cmp -s - "$f2" ||
        hv_fail "$label: disk 2 does not hold exactly the even records 2..$((2 * n2)): $(tail -3 "$f2" | tr '\n' '|')"
    N1=$((n1 ? 2 * n1 - 1 : 0)) N2=$((2 * n2))
    local d=$((N1 - N2))
    [ ${d#-} -eq 1 ] || hv_fail "$label: disk 1 ends at record $N1, disk 2 at $N2: not one instant"
    local top=$((N1 > N2 ? N1 : N2))
    [ "$top" -ge "$low" ] && [ "$top" -le "$high" ] ||
        hv_fail "$label: the cut is at record $top, the guest was at $low before the backup and $high after"
}

# backup LABEL MODE WHY [OPTIONS]: back up while the guest writes (with
# these `backup create` options), restore, convert and check both disks; the
# cut must give WHY as its reason ("" for an app cut).
backup()
{
    local label=$1 mode=$2 want_why=$3 dir=$HV_TMP/backup-$1 rdir=$HV_TMP/restore-$1 before after s
    shift 3
    guest_check
    before=$(last_record)
    hvctl --json backup create guest --to "$dir" "$@" >"$HV_TMP/$label.json" 2>"$HV_TMP/$label.err" ||
        hv_fail "$label: backup create failed: $(cat "$HV_TMP/$label.err" "$HV_TMP/$label.json")"
    # Console lines come every 10 records and the serial line may be a line
    # behind: the guest is at most 20 records past the last one seen.
    after=$(($(last_record) + 20))
    local got why hold secs
    got=$(json_get "$HV_TMP/$label.json" 'j["checkpoint"]["consistency"]')
    why=$(json_get "$HV_TMP/$label.json" 'j["checkpoint"]["why"]')
    hold=$(json_get "$HV_TMP/$label.json" '"%.3f" % j["checkpoint"]["hold_ms"]')
    secs=$(json_get "$HV_TMP/$label.json" '"%.1f" % j["seconds"]')
    [ "$got" = "$mode" ] || hv_fail "$label: the backup is $got-consistent, expected $mode (why: $why)"
    # An app cut has no excuse to give, a crash cut says why it is one.
    [ "$why" = "$want_why" ] || hv_fail "$label: a $mode-consistent cut with why '$why'"
    [ "$(json_get "$HV_TMP/$label.json" 'len(j["disks"])')" = 2 ] ||
        hv_fail "$label: the backup does not have two disks: $(cat "$HV_TMP/$label.json")"
    hvctl backup verify "$dir" >"$HV_TMP/$label.verify" 2>&1 ||
        hv_fail "$label: backup verify: $(cat "$HV_TMP/$label.verify")"
    hvctl backup restore "$dir" --to "$rdir" >"$HV_TMP/$label.restore" 2>&1 ||
        hv_fail "$label: backup restore: $(cat "$HV_TMP/$label.restore")"
    RECOVERY=
    for s in 0 1; do
        [ -f "$rdir/c0-s$s.vhd" ] || hv_fail "$label: restore wrote no $rdir/c0-s$s.vhd: $(ls "$rdir")"
        hv_vhd_check "$rdir/c0-s$s.vhd" "$label: restored c0-s$s.vhd" >/dev/null
        "$HVSTOR_BIN/vhd" convert -O raw "$rdir/c0-s$s.vhd" "$rdir/d$s.raw" >/dev/null 2>"$rdir/convert.err" ||
            hv_fail "$label: vhd convert c0-s$s.vhd: $(cat "$rdir/convert.err")"
        restored_log "$mode" "$rdir/d$s.raw" "$rdir/log$s"
    done
    check_records "$label" "$rdir/log0" "$rdir/log1" "$before" "$after"
    echo "ok: $label: $mode-consistent${why:+ ($why)}, hold $hold ms, $secs s;" \
         "records: disk 1 ends at $N1, disk 2 at $N2 (guest at $before..$after);" \
         "$([ "$mode" = app ] && echo "both clean without journal replay" || echo "journals: $RECOVERY")"
    rm -f "$rdir"/d?.raw
    # The guest goes on writing after the backup.
    wait_record $((after + 20)) 120
}

agent_answers hvstor-vss
backup vss app ""
for m in /mnt/d1 /mnt/d2; do
    [ "$(grep -ac "hvstor-vss: froze $m" "$CONSOLE")" = 1 ] ||
        hv_fail "the guest's hvstor-vss did not say once that it froze $m"
done

# Crash asked for although the agent answers: the guest is not frozen.
backup vss-crash crash "crash consistency was asked for" --consistency crash
for m in /mnt/d1 /mnt/d2; do
    [ "$(grep -ac "hvstor-vss: froze $m" "$CONSOLE")" = 1 ] ||
        hv_fail "--consistency crash froze $m in the guest all the same"
done

hvctl vm set guest --no-agent >/dev/null
hvctl --json vm show guest >"$HV_TMP/show.json"
[ "$(json_get "$HV_TMP/show.json" 'j.get("agent")')" = None ] ||
    hv_fail "vm show still lists an agent after --no-agent: $(cat "$HV_TMP/show.json")"
backup noagent crash "the VM has no guest agent"

hvctl vm set guest --agent "qemu-ga:$QGA_SOCK" >/dev/null
agent_answers qemu-ga
backup qemu-ga app ""

# The control: what the checks say about a copy that is NOT one instant.
# Each LUN is read through hvstord (qemu-img over iSCSI, as the guest's
# initiator) while the guest is frozen through qemu-ga, so that each copy is
# clean on its own, but with the guest writing at least 30 records between
# the two: the record checks must refuse the pair, or they would pass anything.
frozen_copy()   # frozen_copy LUN OUT: freeze the guest, read the LUN, thaw
{
    python3 - "$QGA_SOCK" "$HV_PORTAL" "$1" "$2" <<'PY' || hv_fail "the control copy of LUN $1 failed"
import json, random, socket, subprocess, sys
sock, portal, lun, out = sys.argv[1:]
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sock)
f = s.makefile("rwb")
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
    f.flush()
    while True:
        line = f.readline().strip(b"\xff\r\n ")
        if not line:
            continue
        r = json.loads(line)
        if "error" in r:
            sys.exit(f"{name}: {r['error']}")
        if "return" in r:
            return r["return"]
tag = random.randrange(1 << 30)
while cmd("guest-sync", id=tag) != tag:   # skip replies left from an earlier client
    pass
frozen = cmd("guest-fsfreeze-freeze")
try:
    src = {"file": {"driver": "iscsi", "transport": "tcp", "portal": portal,
                    "target": "iqn.2026-11.org.hvstor:guest.c0", "lun": int(lun),
                    "initiator-name": "iqn.2008-11.org.linux-kvm:guest"}}
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                    "json:" + json.dumps(src), out], check=True)
finally:
    cmd("guest-fsfreeze-thaw")
if frozen != 2:
    sys.exit(f"qemu-ga froze {frozen} file systems, not 2")
PY
}
naive=$HV_TMP/naive
mkdir -p "$naive"
frozen_copy 0 "$naive/d0.raw"
wait_record $(($(last_record) + 30)) 120
frozen_copy 1 "$naive/d1.raw"
for s in 0 1; do
    restored_log app "$naive/d$s.raw" "$naive/log$s"
done
if (check_records control "$naive/log0" "$naive/log1" 0 999999999) >"$naive/out" 2>&1; then
    hv_fail "the record checks accept two disks copied 30 records apart: $(cat "$naive/out")"
fi
grep -q "not one instant" "$naive/out" ||
    hv_fail "the control copy was refused for another reason: $(cat "$naive/out")"
echo "ok: control: two clean disks copied 30 records apart are refused ($(sed 's/^FAIL: control: //' "$naive/out"))"
rm -rf "$naive"

# The VM's own disks after the backups merged their children back: stop the
# guest (mid-write: a crash for its file systems) and hvstord, then check them.
kill -TERM $QEMU_PID 2>/dev/null || true
wait $QEMU_PID 2>/dev/null || true
hv_stop
final=$(last_record)
for s in 0 1; do
    hv_vhd_check "$HV_TMP/disk$s.vhd" "of the VM's disk c0-s$s after four backups"
    "$HVSTOR_BIN/vhd" convert -O raw "$HV_TMP/disk$s.vhd" "$HV_TMP/final$s.raw" >/dev/null ||
        hv_fail "vhd convert of the VM's disk c0-s$s"
    restored_log crash "$HV_TMP/final$s.raw" "$HV_TMP/final-log$s"
done
check_records "the VM's own disks" "$HV_TMP/final-log0" "$HV_TMP/final-log1" "$final" $((final + 10))
echo "ok: the VM's disks after the backups: records 1..$((N1 > N2 ? N1 : N2)) complete on both"
! grep -aq "Sanitizer\|runtime error" "$CONSOLE" "$HV_LOG" ||
    hv_fail "sanitizer report: $(grep -a -m3 "Sanitizer\|runtime error" "$CONSOLE" "$HV_LOG")"
echo PASS
