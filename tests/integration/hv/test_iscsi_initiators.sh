#!/bin/bash
# Real initiators against the hv/iscsi target: libiscsi's tools (iscsi-inq,
# iscsi-readcapacity16, iscsi-ls), qemu-img/qemu-io over iscsi:// writing
# and reading back (compared with the file behind the LUN), CRC32C header
# digests, two LUNs on one target, and a clean drain on SIGTERM.
. "$(dirname "$0")/iscsi_lib.sh"
need iscsi-inq iscsi-readcapacity16 iscsi-ls qemu-img qemu-io cmp

T=iqn.2026-01.org.hvstor.test:initiators
truncate -s 64M "$WORK/lun0.img"
truncate -s 8M "$WORK/lun1.img"
start_testd --target "$T" --raw "$WORK/lun0.img" --raw "$WORK/lun1.img"
URL="iscsi://127.0.0.1:$PORT/$T"

iscsi-inq "$URL/0" >"$WORK/inq" || fail "iscsi-inq"
grep -q "Vendor:HVSTOR" "$WORK/inq" || fail "INQUIRY vendor: $(cat "$WORK/inq")"
iscsi-readcapacity16 "$URL/1" >"$WORK/cap" || fail "iscsi-readcapacity16"
grep -q "Total size:8388608" "$WORK/cap" || fail "LUN 1 size: $(cat "$WORK/cap")"
iscsi-ls -s "iscsi://127.0.0.1:$PORT" >"$WORK/ls" || fail "iscsi-ls"
grep -q "Target:$T Portal:127.0.0.1:$PORT,1" "$WORK/ls" || fail "discovery: $(cat "$WORK/ls")"
[ "$(grep -c '^Lun:' "$WORK/ls")" = 2 ] || fail "iscsi-ls did not see two LUNs: $(cat "$WORK/ls")"

# qemu-img writes 24 MiB of random data (large writes: immediate data,
# R2T, many Data-Out), reads it back over iSCSI, and the file behind the
# LUN must hold exactly those bytes.
head -c 24M /dev/urandom >"$WORK/src"
qemu-img convert -n -f raw -O raw "$WORK/src" "$URL/0" 2>"$WORK/q.err" || fail "qemu-img write: $(cat "$WORK/q.err")"
qemu-img convert -f raw -O raw "$URL/0" "$WORK/back" 2>"$WORK/q.err" || fail "qemu-img read: $(cat "$WORK/q.err")"
cmp -n 25165824 "$WORK/src" "$WORK/back" || fail "data read over iSCSI differs from what was written"
cmp -n 25165824 "$WORK/src" "$WORK/lun0.img" || fail "the file behind LUN 0 differs from what was written"

# Small unaligned-size patterns with qemu-io, header digests on.
OPTS="driver=iscsi,transport=tcp,portal=127.0.0.1:$PORT,target=$T,lun=1,header-digest=crc32c"
qemu-io --image-opts -c 'write -P 0xa5 4096 300k' -c 'write -P 0x3c 1M 4k' \
    -c 'read -P 0xa5 4096 300k' -c 'read -P 0x3c 1M 4k' -c 'aio_write -P 0x11 2M 64k' \
    -c 'aio_flush' -c 'read -P 0x11 2M 64k' "$OPTS" >"$WORK/qio" 2>&1 || fail "qemu-io: $(cat "$WORK/qio")"
! grep -qi "fail\|mismatch" "$WORK/qio" || fail "qemu-io pattern check: $(cat "$WORK/qio")"
grep -q "+HeaderDigest" "$WORK/testd.log" || fail "header digest was not negotiated"
cmp -n 4096 <(head -c 4096 /dev/zero | tr '\0' '\245') <(tail -c +4097 "$WORK/lun1.img" | head -c 4096) ||
    fail "LUN 1 file does not hold the qemu-io pattern"

# Many sessions at once: eight qemu-io processes, each its own session,
# write their own pattern to their own 1 MiB, then each region is checked.
pids=()
for i in $(seq 0 7); do
    qemu-io -f raw -c "write -P $((0x40 + i)) $((32 + i))M 1M" -c "read -P $((0x40 + i)) $((32 + i))M 1M" \
        "$URL/0" >"$WORK/par$i" 2>&1 &
    pids+=($!)
done
for i in $(seq 0 7); do
    wait "${pids[$i]}" || fail "parallel session $i: $(cat "$WORK/par$i")"
    ! grep -qi "fail\|mismatch" "$WORK/par$i" || fail "parallel session $i: $(cat "$WORK/par$i")"
    want=$(printf '%02x' $((0x40 + i)))
    got=$(od -v -An -tx1 -j $(((32 + i) * 1048576)) -N 1048576 "$WORK/lun0.img" | tr -s ' \n' '\n' | sort -u | grep -v '^$')
    [ "$got" = "$want" ] || fail "region $i of LUN 0 holds $got, not $want"
done

stop_testd

# Keepalive: a target with a 100 ms NOP interval pings an idle qemu-io,
# which answers, and the session is still there for the next read.
HVSTOR_LOG=debug start_testd --nop-ms 100 --target "$T" --raw "$WORK/lun1.img"
qemu-io -f raw -c 'read 0 4k' -c 'sleep 1500' -c 'read 0 4k' \
    "iscsi://127.0.0.1:$PORT/$T/0" >"$WORK/idle" 2>&1 || fail "idle session: $(cat "$WORK/idle")"
[ "$(grep -c '^read 4096/4096' "$WORK/idle")" = 2 ] || fail "idle session lost a read: $(cat "$WORK/idle")"
grep -q "NOP-Out answers ping" "$WORK/testd.log" || fail "no NOP-In ping was answered"
! grep -q "no answer to NOP-In" "$WORK/testd.log" || fail "keepalive dropped a live initiator"
stop_testd
echo "ok"
