#!/bin/bash
# A Fibre Channel LUN for one VM, through the VM's own NPIV vport. No FC
# hardware exists here: hvstord --sysfs-root points at the fake HBA tree of
# the npiv tests (fake-fc-agent plays the kernel's FC transport, the fabric's
# zoning and the array's masking), and --dev-root maps the LUN's block device
# name to a real loop device, which the guest then reads and writes through
# its controller. Shown: no NPIV vport left, not zoned, not masked, each
# refused with its reason; the attach (vport up with set A, set B checked,
# LUN pinned by VPD 0x83); a second VM refused with the holder named; the
# vport deleted on stop and brought back on restart; a swapped LUN at the
# same address left offline; the vport deleted on detach.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
AGENT=$HVSTOR_BUILD/tests/integration/fake-fc-agent
[ -x "$AGENT" ] || fail "$AGENT not built"
command -v losetup >/dev/null && command -v qemu-io >/dev/null || skip "losetup or qemu-io missing"
truncate -s 64M "$WORK/lun.img"
LOOP=$(losetup -f --show "$WORK/lun.img" 2>/dev/null) || skip "no loop device available"
AGENT_PID=
stop_agent() {
    [ -n "$AGENT_PID" ] || return 0
    kill -TERM "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
    AGENT_PID=
}
# pt_cleanup exits with $?: keep the test's status through our own cleanup
trap 'rc=$?; stop_agent; losetup -d "$LOOP" 2>/dev/null; (exit $rc); pt_cleanup' EXIT
echo "loop device $LOOP"
out=$WORK/out
SYS=$WORK/sys
mkdir -p "$WORK/dev"

start_agent() {     # start_agent CONFIG
    stop_agent
    : > "$WORK/agent.log"
    "$AGENT" "$SYS" "$1" >> "$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 100); do
        grep -q '^ready' "$WORK/agent.log" && return 0
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/agent.log"; fail "fake-fc-agent did not start"
}
# fc_hosts_with WWPN: how many fc_hosts carry this port name (a vport that is up)
fc_hosts_with() { grep -l -x "0x$1" "$SYS"/class/fc_host/*/port_name 2>/dev/null | wc -l; }
in_use() { cat "$SYS/class/fc_host/host5/npiv_vports_inuse"; }

hvd_start 1 --sysfs-root "$SYS" --dev-root "$WORK/dev"
hvctl_ 1 vm create a >/dev/null && hvctl_ 1 vm create b >/dev/null || fail "vm create"
wwpn() {    # wwpn VM a|b -> 16 hex digits
    hvctl_ 1 --json vm show "$1" | json_get - "j['identity']['fc']['$2']['wwpn'].replace(':','')"
}
A_A=$(wwpn a a); A_B=$(wwpn a b); B_A=$(wwpn b a); B_B=$(wwpn b b)
echo "VM a: set A $A_A, set B $A_B; VM b: set A $B_A, set B $B_B"
T1=500a098000001111
T2=500a098000002222
T1C=50:0a:09:80:00:00:11:11
NAA=600a0980383030523424457a4f6e6b31

step "an HBA with no NPIV vport left: refused, saying so"
cat > "$WORK/full.cfg" <<EOF
hba 5 4 4
target $T1
zone $T1 $A_A
mask $T1 $A_A 1 sdb $NAA
EOF
start_agent "$WORK/full.cfg"
hvctl_ 1 disk attach a --controller 0 --slot 0 --fc-lun "$T1C:1" > "$out" 2>&1 &&
    fail "attached with no vport left"
cat "$out"
grep -q "no NPIV vports left (npiv_vports_inuse 4 of max_npiv_vports 4)" "$out" ||
    fail "reason not given"
grep -q "vport_create" "$WORK/agent.log" && fail "a vport_create was written to a full HBA"

step "the fabric and the array: T1 zoned with both VMs' sets, LUN 1 masked to them; T2 zoned with nobody, LUN 2 masked to nobody"
cat > "$WORK/fabric.cfg" <<EOF
hba 5 64 0
target $T1
target $T2
zone $T1 $A_A
zone $T1 $A_B
zone $T1 $B_A
zone $T1 $B_B
mask $T1 $A_A 1 sdb $NAA
mask $T1 $A_B 1 sdc $NAA
mask $T1 $B_A 1 sdd $NAA
mask $T1 $B_B 1 sde $NAA
mask $T1 $B_A 3 sdf $NAA
mask $T1 $B_B 3 sdg $NAA
mask $T1 5000000000000999 2
EOF
start_agent "$WORK/fabric.cfg"
ln -s "$LOOP" "$WORK/dev/sdb"     # what VM a's vport shows LUN 1 as

step "not zoned: the target port is not visible to the VM's vport"
hvctl_ 1 disk attach a --controller 0 --slot 0 --fc-lun "500a098000002222:1" > "$out" 2>&1 &&
    fail "attached through a port that is not zoned"
cat "$out"
grep -q "not zoned: target port 50:0a:09:80:00:00:22:22 is not visible to vport" "$out" ||
    fail "not-zoned reason"
grep -q "address set A" "$out" || fail "the set is not named"
[ "$(in_use)" = 0 ] || fail "the vport of the refused attach is still there"

step "not masked: the LUN is not reported to the VM's vport"
hvctl_ 1 disk attach a --controller 0 --slot 0 --fc-lun "$T1C:2" > "$out" 2>&1 &&
    fail "attached a LUN that is not masked"
cat "$out"
grep -q "not masked: LUN 2 of target $T1C is not reported to vport" "$out" ||
    fail "not-masked reason"
grep -q "LUNs it reports: 1" "$out" || fail "what the vport sees is not said"
[ "$(in_use)" = 0 ] || fail "the vport of the refused attach is still there"

step "--full-scsi on a LUN whose block device is no SCSI disk (the loop device): refused, saying why"
hvctl_ 1 disk attach a --controller 0 --slot 0 --fc-lun "$T1C:1" --full-scsi > "$out" 2>&1 &&
    fail "--full-scsi attached over a loop device"
cat "$out"
grep -q -- "--full-scsi: FC LUN /fc/$T1C/1: $WORK/dev/sdb (loop[0-9]*) is not a SCSI disk" "$out" ||
    fail "--full-scsi refusal"
[ "$(in_use)" = 0 ] || fail "the vport of the refused attach is still there"

step "attach: set A comes up and stays, set B is checked and deleted again; the loop device is emulated, the answer says why"
hvctl_ 1 disk attach a --controller 0 --slot 0 --fc-lun "$T1C:1" | tee "$out" || fail "attach"
grep -q "FC LUN $T1C:1 (naa.$NAA, $WORK/dev/sdb" "$out" || fail "attach output"
grep -q "SBC emulation over the raw device: $WORK/dev/sdb (loop[0-9]*) is not a SCSI disk" "$out" ||
    fail "the emulation's reason is not in the answer"
[ "$(fc_hosts_with "$A_A")" = 1 ] || fail "VM a's vport (set A) is not up"
[ "$(fc_hosts_with "$A_B")" = 0 ] || fail "set B was left up"
grep -q "vport_create $A_B:" "$WORK/agent.log" || fail "set B was not checked"
grep -q "vport_delete $A_B:" "$WORK/agent.log" || fail "set B was not deleted"
hvctl_ 1 --json vm show a > "$out"
json_get "$out" 'j["controllers"][0]["luns"][0]["kind"]' | grep -qx fc || fail "kind"
json_get "$out" 'j["controllers"][0]["luns"][0]["state"]' | grep -qx online || fail "offline"
json_get "$out" '"emulated" if "fc" in j["controllers"][0]["luns"][0].get("image", {}) else "sg_io"' |
    grep -qx emulated || fail "not served by the emulation"

step "the guest reads and writes the LUN through its controller"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target a 0),lun=0,initiator-name=$(guest_iqn a)"
qemu-io --image-opts "$OPTS" -c "write -P 0x5a 1M 256k" -c flush -c "read -P 0x5a 1M 256k" \
    > "$out" 2>&1 || { cat "$out"; fail "guest I/O"; }
grep -q "failed" "$out" && { cat "$out"; fail "guest I/O"; }
python3 - "$WORK/lun.img" <<'PY' || fail "the write is not on the LUN's device"
import sys
f = open(sys.argv[1], "rb"); f.seek(1 << 20)
assert f.read(256 << 10) == b"\x5a" * (256 << 10)
print("the guest's write is on the LUN")
PY

step "a second VM is refused, the holder named: at the same address, and at another LUN number that is the same LUN (same VPD 0x83 designator)"
hvctl_ 1 disk attach b --controller 0 --slot 0 --fc-lun "$T1C:1" > "$out" 2>&1 &&
    fail "b got a's LUN"
cat "$out"
grep -q "(naa.$NAA) is held by VM 'a' (controller 0 slot 0)" "$out" || fail "holder not named"
hvctl_ 1 disk attach b --controller 0 --slot 0 --fc-lun "$T1C:3" > "$out" 2>&1 &&
    fail "b got a's LUN under another number"
cat "$out"
grep -q "(naa.$NAA) is held by VM 'a' (controller 0 slot 0)" "$out" || fail "holder not named"
[ "$(fc_hosts_with "$B_A")" = 0 ] || fail "b's vport was left up"

step "stop: the vport goes with the daemon; restart brings it back and the LUN is checked again"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" || fail "hvstord exit"
[ "$(fc_hosts_with "$A_A")" = 0 ] || fail "the vport outlived the daemon"
hvd_start 1 --sysfs-root "$SYS" --dev-root "$WORK/dev"
[ "$(fc_hosts_with "$A_A")" = 1 ] || fail "the vport did not come back"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target a 0),lun=0,initiator-name=$(guest_iqn a)"
hvctl_ 1 --json vm show a | json_get - 'j["controllers"][0]["luns"][0]["state"]' |
    grep -qx online || fail "offline after restart"
qemu-io --image-opts "$OPTS" -c "read -P 0x5a 1M 256k" > "$out" 2>&1 || { cat "$out"; fail "read"; }
grep -q "failed" "$out" && { cat "$out"; fail "read after restart"; }

step "the array maps another LUN at that address: the restart leaves the slot offline, never serves it"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" || fail "hvstord exit"
NAA2=600a0980383030523424457a4f6e6b32
sed "s/^mask $T1 $A_A 1 sdb $NAA\$/mask $T1 $A_A 1 sdb $NAA2/" "$WORK/fabric.cfg" > "$WORK/swapped.cfg"
grep -q "$NAA2" "$WORK/swapped.cfg" || fail "test setup: no swap"
start_agent "$WORK/swapped.cfg"
hvd_start 1 --sysfs-root "$SYS" --dev-root "$WORK/dev"
hvctl_ 1 --json vm show a > "$out"
json_get "$out" 'j["controllers"][0]["luns"][0]["state"]' | grep -qx offline || fail "served a swapped LUN"
json_get "$out" 'j["controllers"][0]["luns"][0]["error"]' | tee "$WORK/why"
grep -q "is now naa.$NAA2, expected naa.$NAA" "$WORK/why" || fail "the reason"
[ "$(fc_hosts_with "$A_A")" = 0 ] || fail "the vport stayed up for an offline slot"
kill -TERM "${HVD_PID[1]}"; wait "${HVD_PID[1]}" || fail "hvstord exit"
start_agent "$WORK/fabric.cfg"
hvd_start 1 --sysfs-root "$SYS" --dev-root "$WORK/dev"
hvctl_ 1 --json vm show a | json_get - 'j["controllers"][0]["luns"][0]["state"]' |
    grep -qx online || fail "not back online with the right LUN"

step "detach: the VM's last FC disk goes, its vport is deleted"
hvctl_ 1 disk detach a --controller 0 --slot 0 >/dev/null || fail "detach"
[ "$(fc_hosts_with "$A_A")" = 0 ] || fail "vport still up after detach"
[ "$(in_use)" = 0 ] || fail "npiv_vports_inuse is $(in_use)"
grep -q "vport_delete $A_A:" "$WORK/agent.log" || fail "no vport_delete was written"
echo PASS
