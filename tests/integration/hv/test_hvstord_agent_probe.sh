#!/bin/bash
# `vm show` asks the VM's guest agent whether it answers. A slow guest (its
# replies come 2 s late, as hvstor-vss's do under TCG while it reopens its
# virtio-serial port) still counts as answering, every time; an agent that
# accepts and never replies, and one whose socket is gone, are reported as
# not answering with the reason, and `vm show` returns (it does not hang).
# The real hvstor-vss sits behind a relay that delays what it sends.
source "$(dirname "$0")/hvstord_lib.sh"
source "$(dirname "$0")/snap_lib.sh"
hv_setup
need python3

snap_agent_start
python3 - "$HV_TMP/slow.sock" "$AGENT_SOCK" "$HV_TMP/dead.sock" <<'PY' >>"$HV_TMP/relay.log" 2>&1 &
import os, socket, sys, threading, time
slow, real, dead = sys.argv[1:4]
def relay(src, dst, delay):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            time.sleep(delay)
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve_slow(l):
    while True:
        host, _ = l.accept()
        agent = socket.socket(socket.AF_UNIX); agent.connect(real)
        threading.Thread(target=relay, args=(host, agent, 0), daemon=True).start()
        threading.Thread(target=relay, args=(agent, host, 2.0), daemon=True).start()
held = []
def serve_dead(l):
    while True:
        c, _ = l.accept(); held.append(c)   # accepted, never answered
ls = []
for path, fn in ((slow, serve_slow), (dead, serve_dead)):
    l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(8); ls.append(l)
    threading.Thread(target=fn, args=(l,), daemon=True).start()
open(slow + ".ready", "w").close()
while True:
    time.sleep(60)
PY
HV_EXTRA_PIDS+=($!)
for _ in $(seq 100); do [ -e "$HV_TMP/slow.sock.ready" ] && break; sleep 0.05; done
[ -e "$HV_TMP/slow.sock.ready" ] || hv_fail "the relay did not start: $(cat "$HV_TMP/relay.log")"

hv_start
hvctl vm create slow --agent "hvstor-vss:$HV_TMP/slow.sock" >/dev/null || hv_fail "vm create slow"
hvctl vm create dead --agent "hvstor-vss:$HV_TMP/dead.sock" >/dev/null || hv_fail "vm create dead"
hvctl vm create gone --agent "hvstor-vss:$HV_TMP/none.sock" >/dev/null || hv_fail "vm create gone"

for n in 1 2 3; do
    hvctl --json vm show slow >"$HV_TMP/slow.json" || hv_fail "vm show slow"
    [ "$(json_get "$HV_TMP/slow.json" 'j["agent"]["answers"]')" = True ] ||
        hv_fail "probe $n: a slow agent is said not to answer: $(cat "$HV_TMP/slow.json")"
done
json_get "$HV_TMP/slow.json" 'j["agent"]["version"]' | grep -q "^hvstor-vss" ||
    hv_fail "slow agent version: $(cat "$HV_TMP/slow.json")"
echo "an agent whose replies come 2 s late answers, 3 probes out of 3"

hvctl --json vm show dead >"$HV_TMP/dead.json" || hv_fail "vm show dead"
[ "$(json_get "$HV_TMP/dead.json" 'j["agent"]["answers"]')" = False ] || hv_fail "dead: $(cat "$HV_TMP/dead.json")"
json_get "$HV_TMP/dead.json" 'j["agent"]["error"]' | grep -q "dead.sock" ||
    hv_fail "dead agent: the error must say which and why: $(cat "$HV_TMP/dead.json")"
hvctl --json vm show gone >"$HV_TMP/gone.json" || hv_fail "vm show gone"
[ "$(json_get "$HV_TMP/gone.json" 'j["agent"]["answers"]')" = False ] || hv_fail "gone: $(cat "$HV_TMP/gone.json")"
json_get "$HV_TMP/gone.json" 'j["agent"]["error"]' | grep -q "none.sock" ||
    hv_fail "missing agent socket: $(cat "$HV_TMP/gone.json")"
hvctl vm show dead | grep -qi "agent.*not answer\|does not answer\|no answer" ||
    hv_fail "text vm show of a dead agent: $(hvctl vm show dead)"
echo "dead agent: $(json_get "$HV_TMP/dead.json" 'j["agent"]["error"]')"

# Changing the VM while its probe waits: the change waits for the probe's
# end (the probe holds the VM's definition), then is made; nothing refused.
hvctl --json vm show dead >"$HV_TMP/dead2.json" 2>"$HV_TMP/dead2.err" &
show=$!
for _ in $(seq 100); do [ -n "$(ss -x 2>/dev/null | grep -F "$HV_TMP/dead.sock")" ] && break; sleep 0.02; done
hvctl vm set dead --no-agent >/dev/null 2>"$HV_TMP/set.err" || hv_fail "vm set during the probe: $(cat "$HV_TMP/set.err")"
hvctl vm create during-probe >/dev/null || hv_fail "vm create during the probe"
wait $show || hv_fail "vm show during a change: $(cat "$HV_TMP/dead2.err")"
[ "$(json_get "$HV_TMP/dead2.json" 'j["agent"]["answers"]')" = False ] || hv_fail "probe: $(cat "$HV_TMP/dead2.json")"
[ "$(hvctl --json vm show dead | json_get - 'j.get("agent")')" = None ] || hv_fail "--no-agent was lost"
echo "vm set of the VM whose agent is being asked waited for the probe, then was made"
echo "no socket: $(json_get "$HV_TMP/gone.json" 'j["agent"]["error"]')"
hv_stop
echo "PASS"
