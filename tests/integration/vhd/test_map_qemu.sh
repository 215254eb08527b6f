#!/usr/bin/env bash
# `vhd map --json` prints what `qemu-img map --output=json` prints for the
# same image: a dynamic VHD written by qemu itself, compared field by field
# (start, length, depth, data, offset). "present" differs on purpose: qemu's
# vpc driver knows no chains and calls an unallocated block present; hvstor
# says present only for what some image of the chain holds, as qemu does for
# formats with backing files (qcow2).
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

img=$tmp/q.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" 64M
qemu-io -f vpc -c 'write -P 5 0 1M' -c 'write -P 6 5M 64k' -c 'write -P 7 8M 3M' \
    -c 'write -P 8 40M 4k' "$img" >/dev/null
qemu-img map -f vpc --output=json "$img" >"$tmp/qemu.json"
"$VHD" map --json "$img" >"$tmp/hvstor.json"
python3 - "$tmp/qemu.json" "$tmp/hvstor.json" <<'PY'
import json, sys
qemu, ours = (json.load(open(p)) for p in sys.argv[1:])
keys = ("start", "length", "depth", "data", "offset")
q = [tuple(e.get(k) for k in keys) for e in qemu]
o = [tuple(e.get(k) for k in keys) for e in ours]
if q != o:
    sys.exit("maps differ:\nqemu   %s\nhvstor %s" % (q, o))
for e in ours:
    assert e["present"] == e["data"], e
print("# %d ranges alike" % len(o))
PY

note "a chain: the child's own writes at depth 0, the rest at depth 1"
"$VHD" create -t differencing -b "$img" "$tmp/c.vhd" >/dev/null
"$VHD" bench -w -q -s 4k -c 1 -d 1 -o 40M --pattern=9 "$tmp/c.vhd"
"$VHD" map --json "$tmp/c.vhd" | python3 -c '
import json, sys
m = json.load(sys.stdin)
own = [e for e in m if e["depth"] == 0]
assert [(e["start"], e["length"]) for e in own] == [(40 << 20, 4096)], own
assert all(e["depth"] == 1 for e in m if e["start"] != 40 << 20), m
assert sum(e["length"] for e in m) == 64 << 20, m'
"$VHD" map "$tmp/c.vhd" | grep -q "c.vhd" || fail "plain map does not name the child"
echo "PASS"
