#!/bin/bash
# A SAN LUN for exactly one VM, against a real tgtd: masking checked with
# the VM's own IQN before attach (and granted with the commands `hvctl vm
# zoning` prints), the VM's guest reads and writes the LUN through its
# controller (libiscsi tools, qemu-io), a second VM refused (not masked, then
# held by the first), the second VM's own name refused by tgt directly, an
# ext4 LUN refused without --force, the CDB filter, the reservation the host
# took, and the disk back with the same identity after a daemon restart.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
for t in iscsi-inq iscsi-readcapacity16 qemu-io mkfs.ext4; do
    command -v $t >/dev/null || skip "$t not installed"
done

truncate -s 64M "$WORK/lun1.img"
truncate -s 32M "$WORK/lun2.img"
mkfs.ext4 -q -F "$WORK/lun2.img" || fail "mkfs.ext4"
tgt_start
pt_target 2 "$ADMIN"

hvd_start 1
out=$WORK/out

step "VMs get their own initiator identities at create"
hvctl_ 1 vm create alpha >/dev/null || fail "vm create alpha"
hvctl_ 1 vm create bravo >/dev/null || fail "vm create bravo"
hvctl_ 1 --json vm show alpha > "$out" || fail "vm show"
IQN_A=$(json_get "$out" 'j["identity"]["iqn"]')
IQN_B=$(hvctl_ 1 --json vm show bravo | json_get - 'j["identity"]["iqn"]')
echo "alpha: $IQN_A  bravo: $IQN_B"
[ "$IQN_A" = "iqn.2026-11.org.hvstor.test.host1:vm.alpha" ] || fail "alpha's IQN is $IQN_A"
json_get "$out" 'j["identity"]["fc"]["a"]["wwpn"]' | grep -q '^50:01:12:2' \
    || fail "alpha's WWPN is not NAA-5 with the OUI"

step "san add / san luns (as the SAN's management name)"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" || fail "san add"
hvctl_ 1 san luns tgt1 | tee "$out"
grep -q "$T1 *1 *64 MiB *naa\.6" "$out" || fail "san luns: LUN 1 missing"
grep -q "$T1 *2 *32 MiB" "$out" || fail "san luns: LUN 2 missing"

step "attach before tgt lets alpha in: refused, not masked"
hvctl_ 1 disk attach alpha --controller 0 --slot 0 --lun "tgt1:$T1:1" > "$out" 2>&1 &&
    fail "attached unmasked"
cat "$out"
grep -q "not masked: target $T1 at $PORTAL did not let $IQN_A in" "$out" || fail "refusal reason"

step "grant alpha with the exact tgtadm line 'hvctl vm zoning' prints"
hvctl_ 1 vm zoning alpha --target "$T1" --tid 1 > "$WORK/zoning.txt" || fail "vm zoning"
cat "$WORK/zoning.txt"
hvctl_ 1 --json vm zoning alpha --target "$T1" --tid 1 > "$WORK/zoning.json" || fail "zoning json"
json_get "$WORK/zoning.json" '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant_a"
[ -s "$WORK/grant_a" ] || fail "no tgtadm line"
grep -qF "$(head -1 "$WORK/grant_a")" "$WORK/zoning.txt" || fail "text and JSON differ"
while read -r line; do tgt_run_printed "$line"; done < "$WORK/grant_a"

step "a LUN tgt does not report: refused, naming the LUN"
hvctl_ 1 disk attach alpha --controller 0 --slot 0 --lun "tgt1:$T1:9" > "$out" 2>&1 &&
    fail "attached LUN 9"
cat "$out"
grep -q "not masked: LUN 9 is not reported to $IQN_A by $T1 (it reports: 0, 1, 2)" "$out" ||
    fail "reason"

step "attach LUN 1 to alpha"
hvctl_ 1 disk attach alpha --controller 0 --slot 0 --lun "tgt1:$T1:1" | tee "$out" || fail "attach"
grep -q "attached" "$out" || fail "attach output"
DESIG=$(hvctl_ 1 --json vm show alpha |
    json_get - 'j["controllers"][0]["luns"][0]["passthru"]["designator"]')
echo "designator $DESIG"
for _ in $(seq 50); do
    st=$(hvctl_ 1 --json vm show alpha |
        json_get - 'j["controllers"][0]["luns"][0]["passthru"]["state"]')
    [ "$st" = ready ] && break; sleep 0.1
done
[ "$st" = ready ] || fail "pass-through state $st"
hvctl_ 1 vm show alpha | tee "$out"
grep -q "SAN identity: $IQN_A" "$out" || fail "vm show: no identity"
grep -q "LUN 0  lun /san/tgt1/$T1/1 *$DESIG ready" "$out" || fail "vm show: LUN line"

step "the host holds the reservation on tgt (Write Exclusive - Registrants Only)"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$ADMIN" -l 1 -c 5e010000000000002000 -r 32 > "$out"
cat "$out"
# READ RESERVATION: additional length 16, then the key, scope/type byte = 05h
python3 - "$out" "$WORK/st1/pr_key" <<'PY' || fail "no WE-RO reservation by the host's key"
import sys
data = bytes.fromhex(open(sys.argv[1]).read().split("data ")[1].split()[0])
key = open(sys.argv[2]).read().strip()
assert int.from_bytes(data[4:8], "big") == 16, "not reserved"
assert data[8:16].hex() == key, "held by %s, host key %s" % (data[8:16].hex(), key)
assert data[21] & 0xF == 5, "type %d" % (data[21] & 0xF)
print("reserved by host key", key, "type 5 (Write Exclusive - Registrants Only)")
PY
G_A=$(guest_iqn alpha)
URL=$(guest_url 1 alpha 0 0)

step "the guest (libiscsi tools) sees the SAN's LUN through its controller"
iscsi-inq -i "$G_A" "$URL" > "$out" 2>&1 || { cat "$out"; fail "iscsi-inq"; }
grep -q "^Vendor:IET" "$out" || { cat "$out"; fail "INQUIRY is not tgt's"; }
iscsi-inq -i "$G_A" -e 1 -c 0x83 "$URL" > "$out" 2>&1 || fail "vpd 83"
iscsi-readcapacity16 -i "$G_A" "$URL" > "$out" 2>&1 || { cat "$out"; fail "readcapacity16"; }
grep -q "LOGICAL BLOCK LENGTH IN BYTES:512" "$out" || { cat "$out"; fail "capacity"; }
grep -q "RETURNED LOGICAL BLOCK ADDRESS:131071" "$out" || { cat "$out"; fail "64 MiB"; }

step "the guest writes with qemu-io; the bytes are on tgt's backing file"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target alpha 0),lun=0,initiator-name=$G_A"
qemu-io --image-opts "$OPTS" -c "write -P 0x5a 1M 256k" -c "write -P 0xc3 60M 64k" -c flush \
    > "$out" 2>&1 || { cat "$out"; fail "qemu-io write"; }
qemu-io --image-opts "$OPTS" -c "read -P 0x5a 1M 256k" -c "read -P 0xc3 60M 64k" \
    > "$out" 2>&1 || { cat "$out"; fail "qemu-io read"; }
grep -q "Pattern verification failed" "$out" && fail "read back differs"
python3 - "$WORK/lun1.img" <<'PY' || fail "backing file does not hold the guest's writes"
import sys
f = open(sys.argv[1], "rb")
f.seek(1 << 20); a = f.read(256 << 10)
f.seek(60 << 20); b = f.read(64 << 10)
assert a == b"\x5a" * len(a) and b == b"\xc3" * len(b)
print("backing file holds both writes")
PY

step "unlisted CDBs get ILLEGAL REQUEST through the controller, never reach tgt"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 -c 1d0400000000 > "$out"
cat "$out"; grep -q "status 0x02 sense 5/20h/00h" "$out" ||
    fail "SEND DIAGNOSTIC passed the filter"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 -c 040000000000 > "$out"
cat "$out"; grep -q "status 0x02 sense 5/20h/00h" "$out" || fail "FORMAT UNIT passed the filter"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 \
    -c a41f00000000000000000000 > "$out"
cat "$out"; grep -q "status 0x02 sense 5/20h/00h" "$out" || fail "MAINTENANCE OUT passed"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 \
    -c 9e10000000000000000000000020 -r 32 > "$out"
cat "$out"; grep -q "status 0x00" "$out" || fail "READ CAPACITY(16) refused"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 \
    -c 9e11000000000000000000000020 -r 32 > "$out"
cat "$out"; grep -q "status 0x02 sense 5/20h/00h" "$out" || fail "9Eh/11h passed"
echo "tgt answers SEND DIAGNOSTIC itself:"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$IQN_A" -l 1 -c 1d0400000000 | tee "$out"
grep -q "status 0x00" "$out" || fail "tgt refuses SEND DIAGNOSTIC: the filter test proves nothing"

step "bravo: tgt refuses bravo's own name directly"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$IQN_B" -l 1 -c 00000000000000 > "$out"; rc=$?
cat "$out"; [ $rc = 3 ] || fail "tgt let $IQN_B in (exit $rc)"

step "bravo: attach refused, not masked"
hvctl_ 1 disk attach bravo --controller 0 --slot 0 --lun "tgt1:$T1:1" > "$out" 2>&1 &&
    fail "bravo attached"
cat "$out"; grep -q "not masked: target $T1 .* did not let $IQN_B in" "$out" || fail "reason"

step "bravo granted on tgt: attach refused, alpha holds the LUN"
hvctl_ 1 --json vm zoning bravo --target "$T1" --tid 1 |
    json_get - '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant_b"
while read -r line; do tgt_run_printed "$line"; done < "$WORK/grant_b"
hvctl_ 1 disk attach bravo --controller 0 --slot 0 --lun "tgt1:$T1:1" > "$out" 2>&1 &&
    fail "bravo attached"
cat "$out"; grep -q "is held by VM 'alpha' (controller 0 slot 0)" "$out" || fail "holder not named"
hvctl_ 1 san luns tgt1 > "$out"; cat "$out"
grep -q "$T1 *1 .*VM 'alpha' (controller 0 slot 0)" "$out" || fail "san luns: holder"

step "bravo's own name on tgt cannot write: the host's reservation (WE-RO) fences it"
"$PT_CDB" -p "$PORTAL" -t "$T1" -i "$IQN_B" -l 1 -c 2a00000000000000010000 -w 512 > "$out"
cat "$out"; grep -q "status 0x18" "$out" || fail "an unregistered nexus wrote to the reserved LUN"

step "ext4 on LUN 2: refused with what libblkid found; --force takes it"
hvctl_ 1 disk attach alpha --controller 0 --slot 1 --lun "tgt1:$T1:2" > "$out" 2>&1 &&
    fail "ext4 LUN attached"
cat "$out"; grep -q "libblkid found TYPE=ext4" "$out" || fail "no blkid finding"
hvctl_ 1 disk attach alpha --controller 0 --slot 1 --lun "tgt1:$T1:2" --force | tee "$out" ||
    fail "--force"
grep -q "warning: forced: libblkid found TYPE=ext4" "$out" || fail "no warning"
hvctl_ 1 disk detach alpha --controller 0 --slot 1 >/dev/null || fail "detach"

step "restart: the LUN comes back pinned to the same designator and reserved again"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" || fail "hvstord exit status"
hvd_start 1
for _ in $(seq 50); do
    st=$(hvctl_ 1 --json vm show alpha |
        json_get - 'j["controllers"][0]["luns"][0]["passthru"]["state"]')
    [ "$st" = ready ] && break; sleep 0.1
done
[ "$st" = ready ] || fail "after restart: $st"
d2=$(hvctl_ 1 --json vm show alpha |
    json_get - 'j["controllers"][0]["luns"][0]["passthru"]["designator"]')
[ "$d2" = "$DESIG" ] || fail "designator $d2 != $DESIG"
qemu-io --image-opts "driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target alpha 0),lun=0,initiator-name=$G_A" \
    -c "read -P 0x5a 1M 256k" > "$out" 2>&1 || { cat "$out"; fail "read after restart"; }
grep -q "Pattern verification failed" "$out" && fail "data after restart"

step "a different LUN at the same address: offline, NOT READY, never the wrong data"
tgtadm_ --mode logicalunit --op delete --tid 1 --lun 1 || fail "delete lun 1"
truncate -s 64M "$WORK/other.img"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/other.img" || fail "new lun 1"
# tgt derives its NAA id from tid/LUN: give the new LU its own identity
tgtadm_ --mode logicalunit --op update --tid 1 --lun 1 \
    --params scsi_id=hvstor-other-lun,scsi_sn=OTHER0001 || fail "scsi_id"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}"
hvd_start 1
for _ in $(seq 50); do
    st=$(hvctl_ 1 --json vm show alpha |
        json_get - 'j["controllers"][0]["luns"][0]["passthru"]["state"]')
    [ "$st" = offline ] && break; sleep 0.1
done
[ "$st" = offline ] || fail "a swapped LUN is $st"
grep "offline" "$WORK/hvstord1.log" | tail -1 | tee "$out"
grep -q "is now .*expected $DESIG: a different LUN at the same address is refused" "$out" \
    || fail "no clear log line naming both designators"
"$PT_CDB" -p "${HVD_PORTAL[1]}" -t "$(ctl_target alpha 0)" -i "$G_A" -l 0 -c 28000000000000000100 \
    -r 512 > "$out"
cat "$out"; grep -q "status 0x02 sense 2/25h/00h" "$out" || fail "read of a swapped LUN"
echo PASS
