#!/bin/bash
# The checks of `disk attach --lun` (the SAN login with the VM's name, REPORT
# LUNS, INQUIRY, libblkid) and `san luns` wait on the SAN; they run beside
# the daemon's reactor, not on it. Shown with a SAN that accepts the connection and never
# answers (tgtd stopped, a silent listener on its port): while VM a's attach
# waits on it, VM b's guest writes and reads its own disk through hvstord and
# hvctl keeps answering; then a's attach fails with the login timeout, and a
# later attach against the real SAN works.
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v qemu-io >/dev/null || skip "qemu-io not installed"
out=$WORK/out
truncate -s 64M "$WORK/lun1.img"
tgt_start
pt_target 1 "$ADMIN"

hvd_start 1
hvctl_ 1 vm create a >/dev/null && hvctl_ 1 vm create b >/dev/null || fail "vm create"
truncate -s 32M "$WORK/b.raw"
hvctl_ 1 disk attach b --controller 0 --slot 0 --raw "$WORK/b.raw" >/dev/null || fail "b's disk"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$ADMIN" >/dev/null || fail "san add"
IQN_A=$(hvctl_ 1 --json vm show a | json_get - 'j["identity"]["iqn"]')
tgtadm_ --mode target --op bind --tid 1 --initiator-name "$IQN_A" || fail "acl for a"

step "the SAN stops answering: tgtd gone, a listener on its port that never replies"
tgt_stop
python3 - "$PORT" "$WORK/accepted" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
open(sys.argv[2] + ".listening", "w").write("yes\n")
held = []
while True:
    c, _ = s.accept(); held.append(c)
    open(sys.argv[2], "a").write("accepted\n")
PY
EXTRA_PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/accepted.listening" ] && break; sleep 0.05; done
[ -s "$WORK/accepted.listening" ] || fail "the silent listener did not start"

step "VM a's attach waits on the silent SAN..."
hvctl_ 1 disk attach a --controller 0 --slot 0 --lun "tgt1:$T1:1" > "$WORK/attach.out" 2>&1 &
ATTACH=$!
hvctl_ 1 san luns tgt1 > "$WORK/luns.out" 2>&1 &
LUNS=$!
for _ in $(seq 100); do [ -s "$WORK/accepted" ] && break; sleep 0.05; done
[ -s "$WORK/accepted" ] || fail "the attach never reached the SAN"
kill -0 $ATTACH 2>/dev/null || { cat "$WORK/attach.out"; fail "the attach did not wait"; }

step "...while VM b's guest I/O completes and hvctl answers"
OPTS="driver=iscsi,transport=tcp,portal=${HVD_PORTAL[1]},target=$(ctl_target b 0),lun=0,initiator-name=$(guest_iqn b)"
qemu-io --image-opts "$OPTS" -c "write -P 0x7e 0 1M" -c flush -c "read -P 0x7e 0 1M" \
    > "$out" 2>&1 || { cat "$out"; fail "b's guest I/O"; }
grep -q "failed" "$out" && { cat "$out"; fail "b's guest I/O"; }
hvctl_ 1 vm list > "$out" || fail "hvctl did not answer"
# The order is the point: b's I/O and the control request were served while
# a's check still waited (it gives up only after the 5 s login timeout).
kill -0 $ATTACH 2>/dev/null || fail "a's attach finished before b's I/O did: it was in the way"
echo "b's guest wrote and read 1 MiB while a's attach was waiting on the SAN"
wait $LUNS && fail "san luns listed a SAN that does not answer"
cat "$WORK/luns.out"
grep -q "SAN 'tgt1'" "$WORK/luns.out" || fail "san luns: the SAN is not named"

step "a's attach then fails with the SAN's silence named, and the slot stays empty"
wait $ATTACH && fail "attached through a SAN that does not answer"
cat "$WORK/attach.out"
grep -q "VM 'a'" "$WORK/attach.out" || fail "the refusal does not name the VM"
hvctl_ 1 --json vm show a | json_get - 'len(j["controllers"][0]["luns"])' | grep -qx 0 ||
    fail "a slot was filled"

step "the SAN is back: the same attach works"
kill "${EXTRA_PIDS[0]}"; wait "${EXTRA_PIDS[0]}" 2>/dev/null; EXTRA_PIDS=()
tgt_start
pt_target 1 "$IQN_A"
hvctl_ 1 disk attach a --controller 0 --slot 0 --lun "tgt1:$T1:1" || fail "attach"
echo PASS
