#!/usr/bin/env bash
# hvstord serves VHD and raw disks to real initiators: qemu-img/qemu-io over
# iscsi:// write and read back, the bytes land in the image files (read with
# qemu's own vpc driver afterwards), read-only disks refuse writes, hot
# attach/detach show up in REPORT LUNS, stats count the I/O, resize is online
# or refused clearly, and bad requests get clear errors.
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-img qemu-io iscsi-ls iscsi-inq python3
hv_setup
hv_start

ini=iqn.2026-11.org.hvstor.test:disks
hvctl vm create alpha --initiator "$ini" >/dev/null
hvctl --json vm show alpha >"$HV_TMP/show0.json"
[ "$(json_get "$HV_TMP/show0.json" 'j["controllers"][0]["target"]')" = \
  "iqn.2026-11.org.hvstor:alpha.c0" ] || hv_fail "vm show: wrong target name"

# A dynamic VHD made by hvstor, a raw file, and a read-only raw file on controller 1.
hvctl disk attach alpha --controller 0 --slot 0 --vhd "$HV_TMP/boot.vhd" --create 64M >/dev/null
truncate -s 32M "$HV_TMP/data.raw"
hvctl disk attach alpha --controller 0 --slot 1 --raw "$HV_TMP/data.raw" >/dev/null
python3 -c 'import sys; sys.stdout.buffer.write(bytes([0x5a]) * (8 << 20))' >"$HV_TMP/ro.raw"
hvctl disk attach alpha --controller 1 --slot 3 --raw "$HV_TMP/ro.raw" --read-only >/dev/null
hvctl --json vm show alpha >"$HV_TMP/show.json"
[ "$(json_get "$HV_TMP/show.json" 'j["controllers"][0]["luns"][0]["url"]')" = "$(hv_url alpha 0 0)" ] ||
    hv_fail "vm show: LUN 0 URL is not $(hv_url alpha 0 0)"
[ "$(json_get "$HV_TMP/show.json" 'j["controllers"][1]["target"]')" = \
  "iqn.2026-11.org.hvstor:alpha.c1" ] || hv_fail "attaching to controller 1 did not add it"
[ "$(json_get "$HV_TMP/show.json" 'j["controllers"][0]["luns"][0]["size_bytes"]')" = $((64 << 20)) ] ||
    hv_fail "VHD size is not exactly 64 MiB"
hvctl vm show alpha | grep -q "LUN 1  raw" || hv_fail "text vm show lacks the raw LUN"

# Discovery with this VM's name lists both targets and their LUNs.
iscsi-ls -s -i "$ini" "iscsi://$HV_PORTAL" >"$HV_TMP/ls.txt" || hv_fail "iscsi-ls failed"
grep -q "alpha.c0" "$HV_TMP/ls.txt" && grep -q "alpha.c1" "$HV_TMP/ls.txt" ||
    hv_fail "discovery misses a target: $(cat "$HV_TMP/ls.txt")"
grep -q "Lun:1" "$HV_TMP/ls.txt" || hv_fail "iscsi-ls -s does not show LUN 1: $(cat "$HV_TMP/ls.txt")"

# Write through iSCSI, read back through iSCSI, with patterns qemu-io checks.
for lun in 0 1; do
    qemu-io --image-opts "$(hv_qemu_opts alpha 0 $lun "$ini")" \
        -c "write -P 0xa$lun 0 1M" -c "write -P 0xc$lun 5M 64k" -c "write -z 6M 128k" \
        -c "read -P 0xa$lun 0 1M" -c "read -P 0xc$lun 5M 64k" -c "read -P 0 6M 128k" \
        -c flush >"$HV_TMP/io$lun.txt" 2>&1 || hv_fail "qemu-io on LUN $lun: $(tail -3 "$HV_TMP/io$lun.txt")"
    grep -qi "pattern verification failed\|error" "$HV_TMP/io$lun.txt" &&
        hv_fail "qemu-io LUN $lun: $(grep -i 'fail\|error' "$HV_TMP/io$lun.txt" | head -3)"
done

# A random 4 MiB file copied in with qemu-img convert, then read back whole.
head -c $((4 << 20)) /dev/urandom >"$HV_TMP/random.bin"
qemu-img convert -n "$HV_TMP/random.bin" \
    --target-image-opts "$(hv_qemu_opts alpha 0 0 "$ini")" 2>"$HV_TMP/conv.err" ||
    hv_fail "qemu-img convert into LUN 0: $(cat "$HV_TMP/conv.err")"
qemu-img convert --image-opts "$(hv_qemu_opts alpha 0 0 "$ini")" -O raw "$HV_TMP/lun0.bin"
cmp -n $((4 << 20)) "$HV_TMP/random.bin" "$HV_TMP/lun0.bin" || hv_fail "LUN 0 read back differs"
[ "$(stat -c %s "$HV_TMP/lun0.bin")" -eq $((64 << 20)) ] || hv_fail "LUN 0 is not 64 MiB over iSCSI"

# The read-only disk reads its content and refuses writes.
qemu-io -r --image-opts "$(hv_qemu_opts alpha 1 3 "$ini")" -c "read -P 0x5a 0 1M" \
    >"$HV_TMP/ro.txt" 2>&1 || hv_fail "read of the read-only disk failed: $(cat "$HV_TMP/ro.txt")"
grep -qi "verification failed" "$HV_TMP/ro.txt" && hv_fail "read-only disk returned wrong data"
# qemu reads the WP bit of MODE SENSE and refuses a read-write open.
qemu-io --image-opts "$(hv_qemu_opts alpha 1 3 "$ini")" -c "write -P 1 0 4k" \
    >"$HV_TMP/row.txt" 2>&1 && hv_fail "a read-write open of a read-only disk succeeded"
grep -qi "write protected" "$HV_TMP/row.txt" || hv_fail "read-only disk: $(cat "$HV_TMP/row.txt")"
cmp -n $((1 << 20)) "$HV_TMP/ro.raw" <(python3 -c 'import sys; sys.stdout.buffer.write(bytes([0x5a]) * (1 << 20))') ||
    hv_fail "the read-only file changed"

# Statistics count what was done.
hvctl --json disk stats alpha --controller 0 --slot 1 >"$HV_TMP/stats.json"
[ "$(json_get "$HV_TMP/stats.json" 'j["disks"][0].get("bytes_written", 0) > 0')" = True ] ||
    hv_fail "disk stats show no bytes written: $(cat "$HV_TMP/stats.json")"
hvctl disk stats alpha >/dev/null || hv_fail "disk stats for the whole VM failed"

# Hot detach and attach: REPORT LUNS follows.
hvctl disk detach alpha --controller 0 --slot 1 >/dev/null
iscsi-ls -s -i "$ini" "iscsi://$HV_PORTAL" >"$HV_TMP/ls2.txt"
grep -A3 "alpha.c0" "$HV_TMP/ls2.txt" | grep -q "Lun:1" && hv_fail "detached LUN 1 still reported"
hvctl disk attach alpha --controller 0 --slot 7 --raw "$HV_TMP/data.raw" >/dev/null
qemu-io --image-opts "$(hv_qemu_opts alpha 0 7 "$ini")" -c "read -P 0xa1 0 1M" \
    >"$HV_TMP/io7.txt" 2>&1 || hv_fail "read after re-attach at slot 7 failed"
grep -qi "verification failed" "$HV_TMP/io7.txt" && hv_fail "data differs after re-attach"

# Errors: clear message, non-zero exit, nothing changed.
expect_error()   # expect_error SUBSTRING hvctl-args...
{
    local want=$1 out rc=0
    shift
    out=$(hvctl "$@" 2>&1) && rc=0 || rc=$?
    [ $rc -ne 0 ] || hv_fail "hvctl $* succeeded, expected an error"
    echo "$out" | grep -qi -- "$want" || hv_fail "hvctl $*: expected '$want' in: $out"
}
truncate -s 1M "$HV_TMP/spare.raw"
expect_error "already holds" disk attach alpha --controller 0 --slot 0 --raw "$HV_TMP/spare.raw"
expect_error "already attached" disk attach alpha --controller 2 --slot 0 --raw "$HV_TMP/data.raw"
expect_error "No such file" disk attach alpha --controller 0 --slot 9 --vhd "$HV_TMP/missing.vhd"
expect_error "no VM named" disk attach nobody --controller 0 --slot 0 --raw "$HV_TMP/data.raw"
expect_error "already exists" vm create alpha
expect_error "must start with\|not allowed" vm create "Bad_Name"
expect_error "96 bits" vm create gamma --chap user:short
expect_error "is empty" disk detach alpha --controller 0 --slot 30
expect_error "controller" disk attach alpha --controller 4 --slot 0 --raw "$HV_TMP/data.raw"
printf 'garbage\n' | python3 -c '
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"not json\n")
r=s.makefile().readline(); assert "\"ok\":false" in r.replace(" ","") and "not JSON" in r, r' \
    "$HV_STATE/hvstord.sock" || hv_fail "garbage on the control socket did not get a JSON error"

# Files in use are locked: QEMU opening the raw file itself is refused, and a
# second hvstord (its own state dir) cannot attach it either.
qemu-io -f raw -c "write 0 4k" "$HV_TMP/data.raw" >"$HV_TMP/lock.txt" 2>&1 &&
    hv_fail "QEMU wrote to a raw file hvstord serves"
grep -qi "lock" "$HV_TMP/lock.txt" || hv_fail "QEMU's refusal does not mention the lock: $(cat "$HV_TMP/lock.txt")"
"$HVSTOR_BIN/hvstord" --state-dir "$HV_TMP/state2" --portal 127.0.0.1:0 >/dev/null 2>"$HV_TMP/d2.log" &
d2=$!
HV_EXTRA_PIDS+=($d2)
for _ in $(seq 100); do [ -S "$HV_TMP/state2/hvstord.sock" ] && break; sleep 0.1; done
"$HVSTOR_BIN/hvctl" --state-dir "$HV_TMP/state2" vm create other >/dev/null
out=$("$HVSTOR_BIN/hvctl" --state-dir "$HV_TMP/state2" disk attach other --controller 0 --slot 0 \
      --raw "$HV_TMP/data.raw" 2>&1) && hv_fail "a second hvstord attached a raw file in use"
echo "$out" | grep -q "in use by another process" || hv_fail "second daemon's refusal: $out"
out=$("$HVSTOR_BIN/hvctl" --state-dir "$HV_TMP/state2" disk attach other --controller 0 --slot 0 \
      --vhd "$HV_TMP/boot.vhd" 2>&1) && hv_fail "a second hvstord attached a VHD in use"
kill -TERM $d2
wait $d2 || hv_fail "second hvstord did not stop cleanly"

# Online resize: grows, or says plainly that this back end cannot.
if out=$(hvctl disk resize alpha --controller 0 --slot 7 48M 2>&1); then
    [ "$(stat -c %s "$HV_TMP/data.raw")" -eq $((48 << 20)) ] || hv_fail "raw resize did not grow the file"
    qemu-img info --image-opts "$(hv_qemu_opts alpha 0 7 "$ini")" | grep -q "48 MiB" ||
        hv_fail "initiator does not see the new size"
    echo "raw resize: online"
else
    echo "$out" | grep -qi "online\|support" || hv_fail "resize failed unclearly: $out"
    echo "raw resize: $out"
fi
if out=$(hvctl disk resize alpha --controller 0 --slot 0 128M 2>&1); then
    echo "vhd resize: online"
else
    echo "$out" | grep -qi "online\|support" || hv_fail "VHD resize failed unclearly: $out"
    echo "vhd resize: $out"
fi

# Clean stop; the VHD reads back through qemu's own vpc driver.
hv_stop
qemu-img convert -f vpc -O raw "$HV_TMP/boot.vhd" "$HV_TMP/boot.bin"
cmp -n $((4 << 20)) "$HV_TMP/random.bin" "$HV_TMP/boot.bin" || hv_fail "VHD content differs read by qemu"
hv_vhd_check "$HV_TMP/boot.vhd" "after SIGTERM"
echo "PASS"
