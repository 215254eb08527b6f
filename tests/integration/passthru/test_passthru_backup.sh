#!/bin/bash
# Backups of a VM with a SAN LUN (real tgtd) and a VHD disk, one instant
# across both, app-consistent through a real hvstor-vss agent. The LUN has
# no differencing child: copy-before-write saves the old data of every
# block a guest write is about to change before the write is forwarded.
# A model of each disk (the same byte patterns written into a plain file)
# gives the expected image: patterns written before the backup; then, from
# the agent's freeze hook one write (before the cut: in the backup); from
# its thaw hook (right after the cut), one write through the VM's
# controller and a writer that overwrites ranges (WRITE(16), one WRITE
# SAME(10), a write across a chunk boundary) while the rate-limited backup
# reads. The restored LUN equals the "before" model byte for byte, the LUN
# on tgt equals the "after" model (every guest write landed), and the
# running backup saved at least the thaw write's chunk first. Incrementals
# read exactly the 64 KiB chunks written since the previous cut, also after
# a clean restart of hvstord. A --full-scsi LUN makes the backup refuse up
# front, naming the LUN and why.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
for t in qemu-io qemu-img cmp; do command -v $t >/dev/null || skip "$t not installed"; done
[ -x "$HVSTOR_BIN/hvstor-vss" ] || skip "hvstor-vss not built"

truncate -s 32M "$WORK/lun1.img"
truncate -s 16M "$WORK/lun2.img"
tgt_start
pt_target 2 "$ADMIN"
hvd_start 1
out=$WORK/out
G_A=$(guest_iqn alpha)
opts() { echo "driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target alpha 0),lun=$1,initiator-name=$G_A"; }

# ---- the guest agent; its thaw hook writes to the LUN and starts the writer
AGENT_SOCK=$WORK/agent.sock
mkdir -p "$WORK/writers.d"
cat >"$WORK/writers.d/10-app" <<EOF
#!/bin/sh
[ -e "$WORK/hook-writes" ] || exit 0
# An application flushing its state at the freeze: before the cut, so in
# the backup.
if [ "\$1" = freeze ]; then
    qemu-io --image-opts "$(opts 0)" -c "write -P 0x5f 14M 64k" >"$WORK/freeze-write.log" 2>&1 ||
        echo failed >>"$WORK/freeze-write.log"
    exit 0
fi
[ "\$1" = thaw ] || exit 0
qemu-io --image-opts "$(opts 0)" -c "write -P 0x7a 12M 64k" >"$WORK/thaw-write.log" 2>&1 ||
    echo failed >>"$WORK/thaw-write.log"
touch "$WORK/cut-done"
exit 0
EOF
chmod +x "$WORK/writers.d/10-app"
"$HVSTOR_BIN/hvstor-vss" --listen "unix:$AGENT_SOCK" --no-fs --writers "$WORK/writers.d" \
    --state "$WORK/agent-frozen" --thaw-timeout 30 --writer-timeout 20 >>"$WORK/agent.log" 2>&1 &
EXTRA_PIDS+=($!)
for _ in $(seq 100); do [ -S "$AGENT_SOCK" ] && break; sleep 0.05; done
[ -S "$AGENT_SOCK" ] || fail "hvstor-vss did not start: $(cat "$WORK/agent.log")"

step "VM alpha: SAN LUN 1 at c0-s0, a VHD at c0-s1, the agent"
hvctl_ 1 vm create alpha --agent "hvstor-vss:$AGENT_SOCK" >/dev/null || fail "vm create"
IQN_A=$(hvctl_ 1 --json vm show alpha | json_get - 'j["identity"]["iqn"]')
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$IQN_A" || fail "acl"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" >/dev/null || fail "san add"
hvctl_ 1 disk attach alpha --controller 0 --slot 0 --lun "tgt1:$T1:1" >/dev/null || fail "attach lun"
hvctl_ 1 disk attach alpha --controller 0 --slot 1 --vhd "$WORK/d1.vhd" --create 16M >/dev/null ||
    fail "attach vhd"
view() { hvctl_ 1 --json vm show alpha | json_get - "j['controllers'][0]['luns'][0]['passthru']['backup']$1"; }
for _ in $(seq 100); do [ "$(view "['view']")" = ready ] && break; sleep 0.1; done
[ "$(view "['view']")" = ready ] || fail "the LUN's backup view is not ready: $(view "")"
[ "$(view "['size_bytes']")" = $((32 << 20)) ] || fail "view size $(view "['size_bytes']")"

M0=$WORK/model-lun.raw
M1=$WORK/model-vhd.raw
truncate -s 32M "$M0"
truncate -s 16M "$M1"
CHANGED=$WORK/changed.txt   # "offset length" of every LUN write since the last cut
: >"$CHANGED"
model() {   # model FILE PATTERN OFF LEN: the same bytes into the model
    python3 - "$@" <<'PY'
import sys
def size(t):
    m = {"k": 1 << 10, "M": 1 << 20}
    return int(t[:-1]) * m[t[-1]] if t[-1] in m else int(t)
path, pat, off, ln = sys.argv[1], int(sys.argv[2], 0), size(sys.argv[3]), size(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes([pat]) * ln)
PY
}
wr() {   # wr LUN PATTERN OFF LEN: through the VM's controller, into the model
    qemu-io --image-opts "$(opts "$1")" -c "write -P $2 $3 $4" >"$out" 2>&1 &&
        ! grep -qi "error\|failed" "$out" || fail "write $2 at $3 to LUN $1: $(cat "$out")"
    if [ "$1" = 0 ]; then model "$M0" "$2" "$3" "$4"; echo "$3 $4" >>"$CHANGED"; else model "$M1" "$2" "$3" "$4"; fi
}
# Bytes of the 64 KiB chunks the listed writes touch.
changed_bytes() {
    python3 - "$CHANGED" <<'PY'
import sys
def size(t):
    m = {"k": 1 << 10, "M": 1 << 20}
    return int(t[:-1]) * m[t[-1]] if t[-1] in m else int(t)
chunks = set()
for line in open(sys.argv[1]):
    off, ln = (size(x) for x in line.split())
    chunks.update(range(off >> 16, (off + ln - 1 >> 16) + 1))
print(len(chunks) << 16)
PY
}
lun_bytes_read() { json_get "$1" '[d["bytes_read"] for d in j["disks"] if d["slot"] == 0][0]'; }
restore_and_compare() {   # restore_and_compare SEQ LUN_MODEL VHD_MODEL
    rm -rf "$WORK/rs"
    hvctl_ 1 backup restore "$WORK/bk" --to "$WORK/rs" --seq "$1" >/dev/null 2>"$out" ||
        fail "restore #$1: $(cat "$out")"
    qemu-img convert -f vpc -O raw "$WORK/rs/c0-s0.vhd" "$WORK/rs/lun.raw" || fail "convert"
    qemu-img convert -f vpc -O raw "$WORK/rs/c0-s1.vhd" "$WORK/rs/vhd.raw" || fail "convert"
    cmp "$WORK/rs/lun.raw" "$2" || fail "backup #$1: the SAN LUN differs from the LUN at the cut"
    cmp "$WORK/rs/vhd.raw" "$3" || fail "backup #$1: the VHD differs from the disk at the cut"
}

step "before the backup: known patterns on both disks"
wr 0 0x11 0 4M
wr 0 0x12 8M 1M
wr 0 0x13 30M 2M
wr 1 0x21 0 1M
cp "$M0" "$M0.before"
cp "$M1" "$M1.before"
model "$M0.before" 0x5f 14M 64k
model "$M0" 0x5f 14M 64k

step "full backup; from the cut on, the guest overwrites the LUN while the backup reads it"
# The writer starts when the thaw hook has run: every one of its writes
# comes after the cut, so none of them may be in the backup.
: >"$CHANGED"
touch "$WORK/hook-writes"
WS_LBA=$(( (24 << 20) / 512 ))
(
    for _ in $(seq 600); do [ -e "$WORK/cut-done" ] && break; sleep 0.05; done
    [ -e "$WORK/cut-done" ] || { echo "no cut" >"$WORK/writer.err"; exit 1; }
    for w in "0x51 0 64k" "0x52 1M 256k" "0x53 8320k 64k" "0x54 16M 512k" "0x55 31M 64k" \
             "0x56 4092k 8k"; do
        set -- $w
        qemu-io --image-opts "$(opts 0)" -c "write -P $1 $2 $3" >>"$WORK/writer.log" 2>&1 ||
            { echo "write $w" >"$WORK/writer.err"; exit 1; }
    done
    # WRITE SAME(10): 128 blocks of pt-cdb's 512-byte pattern (0xA5 ^ i)
    "$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 \
        -c "4100$(printf %08x "$WS_LBA")00008000" -w 512 >>"$WORK/writer.log" 2>&1 ||
        { echo "write same" >"$WORK/writer.err"; exit 1; }
) &
WRITER=$!
hvctl_ 1 --json backup create alpha --to "$WORK/bk" --max-rate 8M >"$WORK/b0.json" 2>"$out" ||
    fail "full backup: $(cat "$out")"
wait "$WRITER" || fail "writer: $(cat "$WORK/writer.err" "$WORK/writer.log" 2>/dev/null)"
rm -f "$WORK/hook-writes"
grep -q failed "$WORK/thaw-write.log" && fail "thaw write: $(cat "$WORK/thaw-write.log")"
grep -q failed "$WORK/freeze-write.log" && fail "freeze write: $(cat "$WORK/freeze-write.log")"
grep -q "status 0x00" "$WORK/writer.log" || fail "WRITE SAME: $(cat "$WORK/writer.log")"
[ "$(json_get "$WORK/b0.json" 'j["checkpoint"]["consistency"]')" = app ] ||
    fail "not app-consistent: $(cat "$WORK/b0.json")"
[ "$(json_get "$WORK/b0.json" 'len(j["disks"])')" = 2 ] || fail "disks: $(cat "$WORK/b0.json")"
echo "backup #0: $(json_get "$WORK/b0.json" 'j["seconds"]') s"
# what the guest wrote after the cut, into the "after" model
echo "12M 64k" >>"$CHANGED"; model "$M0" 0x7a 12M 64k
for w in "0x51 0 64k" "0x52 1M 256k" "0x53 8320k 64k" "0x54 16M 512k" "0x55 31M 64k" \
         "0x56 4092k 8k"; do
    set -- $w; model "$M0" "$1" "$2" "$3"; echo "$2 $3" >>"$CHANGED"
done
python3 - "$M0" "$WS_LBA" <<'PY'
import sys
block = bytes((0xA5 ^ i) & 0xFF for i in range(512))
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) * 512)
    f.write(block * 128)
PY
echo "24M 64k" >>"$CHANGED"
SAVED=$(view "['chunks_saved_before_write']")
echo "chunks saved before a guest write: $SAVED"
[ "$SAVED" -ge 1 ] || fail "the thaw write's chunk was not saved first: $(view "")"

step "the restored LUN is the LUN at the cut; tgt's LUN has every guest write"
restore_and_compare 0 "$M0.before" "$M1.before"
cmp "$WORK/lun1.img" "$M0" || fail "the LUN on tgt lacks guest writes"
echo "restore #0 = before (cmp), tgt's LUN = after (cmp)"

step "incremental: exactly the chunks written since the cut"
wr 0 0x61 20M 128k
wr 1 0x62 2M 64k
EXPECT=$(changed_bytes)
cp "$M0" "$M0.1"; cp "$M1" "$M1.1"
hvctl_ 1 --json backup create alpha --to "$WORK/bk" --incremental >"$WORK/b1.json" 2>"$out" ||
    fail "incremental: $(cat "$out")"
[ "$(json_get "$WORK/b1.json" 'j["incremental"]')" = True ] || fail "not incremental: $(cat "$WORK/b1.json")"
[ "$(lun_bytes_read "$WORK/b1.json")" = "$EXPECT" ] ||
    fail "LUN read $(lun_bytes_read "$WORK/b1.json") bytes, $EXPECT changed: $(cat "$WORK/b1.json")"
restore_and_compare 1 "$M0.1" "$M1.1"
echo "incremental #1 read $EXPECT bytes of the LUN and restores to the disks at its cut"

step "a clean restart keeps the LUN's tracking"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" 2>/dev/null
hvd_start 1
for _ in $(seq 100); do [ "$(view "['view']")" = ready ] && break; sleep 0.1; done
[ "$(view "['view']")" = ready ] || fail "view after restart: $(view "")"
: >"$CHANGED"
wr 0 0x71 2M 64k
cp "$M0" "$M0.2"; cp "$M1" "$M1.2"
hvctl_ 1 --json backup create alpha --to "$WORK/bk" --incremental >"$WORK/b2.json" 2>"$out" ||
    fail "incremental 2: $(cat "$out")"
[ "$(json_get "$WORK/b2.json" 'j["incremental"]')" = True ] ||
    fail "tracking lost across a restart: $(cat "$WORK/b2.json")"
[ "$(lun_bytes_read "$WORK/b2.json")" = $((64 << 10)) ] || fail "read: $(cat "$WORK/b2.json")"
restore_and_compare 2 "$M0.2" "$M1.2"
hvctl_ 1 backup verify "$WORK/bk" >"$out" 2>&1 || fail "verify: $(cat "$out")"

step "a --full-scsi LUN: the backup refuses up front and says why"
hvctl_ 1 disk attach alpha --controller 0 --slot 2 --lun "tgt1:$T1:2" --full-scsi >/dev/null ||
    fail "attach full-scsi"
ls "$WORK/bk" >"$WORK/bk.before"
rc=0
hvctl_ 1 backup create alpha --to "$WORK/bk" --incremental >"$out" 2>&1 || rc=$?
cat "$out"
[ $rc -ne 0 ] || fail "a backup with a --full-scsi LUN ran"
grep -q "controller 0 slot 2" "$out" && grep -q -- "--full-scsi" "$out" &&
    grep -q "silently wrong" "$out" || fail "refusal does not say which LUN and why"
ls "$WORK/bk" | cmp - "$WORK/bk.before" || fail "the refused backup left files"
hvctl_ 1 disk detach alpha --controller 0 --slot 2 >/dev/null || fail "detach"
echo "PASS"
