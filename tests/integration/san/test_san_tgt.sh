#!/bin/bash
# san/ against a real tgtd: discovery, per-initiator ACLs (the VM's own name
# gets in, another does not), CHAP one-way and mutual, REPORT LUNS / INQUIRY /
# READ CAPACITY(16) / VPD 0x83 designators, CDB pass-through round trip with
# sense and residuals, SCSI-3 persistent reservations (register, reserve type 5,
# conflict, preempt-and-abort of a dead holder), the ISID and the reservation
# across a reconnect, and a different LUN at the same address refused.
set -u
source "$(dirname "$0")/tgt_lib.sh"

T1=$IQN_PREFIX:san1
T2=$IQN_PREFIX:chap
truncate -s 64M "$WORK/lun1.img"
truncate -s 32M "$WORK/lun2.img"
truncate -s 16M "$WORK/chap.img"
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target new"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/lun1.img" || fail "lun 1"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 2 -b "$WORK/lun2.img" || fail "lun 2"
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$VM_A" || fail "acl A"
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$VM_B" || fail "acl B"
tgtadm_ --mode target --op new --tid 2 -T "$T2" || fail "target 2"
tgtadm_ --mode logicalunit --op new --tid 2 --lun 1 -b "$WORK/chap.img" || fail "chap lun"
tgtadm_ --mode target --op bind --tid 2 --initiator-name "$VM_A" || fail "acl chap"
tgtadm_ --mode account --op new --user vmalpha --password alpha-secret-1 || fail "account"
tgtadm_ --mode account --op new --user sanbox --password target-secret-2 || fail "account"
tgtadm_ --mode account --op bind --tid 2 --user vmalpha || fail "account bind"
tgtadm_ --mode account --op bind --tid 2 --user sanbox --outgoing || fail "outgoing bind"

out=$WORK/out
step() { echo "--- $*"; }

step "SendTargets discovery lists both targets"
"$SAN_ITEST" discover -p "$PORTAL" -i "$VM_A" > "$out" 2>&1 || { cat "$out"; fail "discovery"; }
cat "$out"
grep -q "^TARGET $T1 127.0.0.1:$PORT" "$out" || fail "discovery misses $T1"
grep -q "^TARGET $T2 " "$out" || fail "discovery misses $T2"

step "the VM's own name is let in and sees its LUNs"
"$SAN_ITEST" luns -p "$PORTAL" -t "$T1" -i "$VM_A" > "$out" 2>&1 \
    || { cat "$out"; fail "luns as $VM_A"; }
cat "$out"
grep -q "^LUN 1 type 0 vendor 'IET' product 'VIRTUAL-DISK' size 67108864 block 512 designator naa\.6" \
    "$out" || fail "LUN 1 not reported as a 64 MiB disk with an NAA-6 designator"
grep -q "^LUN 2 type 0 .* size 33554432 block 512 designator naa\.6" "$out" || fail "LUN 2 wrong"
d1=$(awk '/^LUN 1 /{print $NF}' "$out"); d2=$(awk '/^LUN 2 /{print $NF}' "$out")
[ "$d1" != "$d2" ] || fail "LUN 1 and 2 share designator $d1"

step "a name not in the ACL is refused (exit 3 = login refused)"
"$SAN_ITEST" luns -p "$PORTAL" -t "$T1" -i "$VM_C" > "$out" 2>&1; rc=$?
cat "$out"
[ $rc = 3 ] || fail "unlisted initiator: exit $rc, expected 3"
grep -q "login as $VM_C" "$out" || fail "refusal does not name the initiator"

step "CRC32C header digest required: negotiated with tgt"
"$SAN_ITEST" luns -p "$PORTAL" -t "$T1" -i "$VM_A" -D > "$out" 2>&1 \
    || { cat "$out"; fail "digest"; }
grep -q "^LUN 1 " "$out" || fail "digest session sees no LUN 1"

step "CHAP: refused without or with a wrong secret; one-way and mutual in; wrong target secret refused"
"$SAN_ITEST" luns -p "$PORTAL" -t "$T2" -i "$VM_A" > "$out" 2>&1; rc=$?
[ $rc != 0 ] || { cat "$out"; fail "CHAP target let us in without CHAP"; }
"$SAN_ITEST" luns -p "$PORTAL" -t "$T2" -i "$VM_A" -u vmalpha:wrong-secret-9 > "$out" 2>&1
rc=$?
[ $rc != 0 ] || { cat "$out"; fail "wrong CHAP secret accepted"; }
"$SAN_ITEST" luns -p "$PORTAL" -t "$T2" -i "$VM_A" -u vmalpha:alpha-secret-1 > "$out" 2>&1 \
    || { cat "$out"; fail "one-way CHAP"; }
grep -q "^LUN 1 .* size 16777216" "$out" || fail "one-way CHAP: LUN 1 missing"
"$SAN_ITEST" luns -p "$PORTAL" -t "$T2" -i "$VM_A" -u vmalpha:alpha-secret-1 \
    -m sanbox:target-secret-2 > "$out" 2>&1 || { cat "$out"; fail "mutual CHAP"; }
"$SAN_ITEST" luns -p "$PORTAL" -t "$T2" -i "$VM_A" -u vmalpha:alpha-secret-1 \
    -m sanbox:not-the-secret > "$out" 2>&1; rc=$?
[ $rc != 0 ] || { cat "$out"; fail "mutual CHAP accepted a target with the wrong secret"; }
echo "CHAP checks passed"

step "CDB pass-through: write/read round trip, residual, sense"
"$SAN_ITEST" rw -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "rw"
# what the target wrote to its backing file is what we sent
"$SAN_ITEST" rw -p "$PORTAL" -t "$T1" -i "$VM_A" -l 2 > "$out" 2>&1 || { cat "$out"; fail "rw lun 2"; }

step "persistent reservations between two VMs"
"$SAN_ITEST" pr -p "$PORTAL" -t "$T1" -i "$VM_A" -j "$VM_B" -l 1 > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "pr"

step "ISID and reservation across a reconnect; fencing holds across one"
"$SAN_ITEST" isid -p "$PORTAL" -t "$T1" -i "$VM_A" -j "$VM_B" -l 2 > "$out" 2>&1; rc=$?
cat "$out"; [ $rc = 0 ] || fail "isid"

step "a different LUN at the same address: session offline"
cat > "$WORK/swap.sh" <<HOOK
tgtadm -C $CTL --lld iscsi --mode logicalunit --op update --tid 1 --lun 1 \
    --params scsi_id=hvstor-other-lun,scsi_sn=OTHER0001
HOOK
"$SAN_ITEST" offline -p "$PORTAL" -t "$T1" -i "$VM_A" -l 1 -H "$WORK/swap.sh" > "$out" 2>&1
rc=$?
cat "$out"; [ $rc = 0 ] || fail "offline"
grep -q "is now naa.*expected $d1: a different LUN at the same address is refused" "$out" \
    || fail "no clear log line for the LUN swap"
grep -q "ok: first login with the old designator" "$out" || fail "first-login designator check"
echo "PASS"
