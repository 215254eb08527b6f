#!/usr/bin/env bash
# A chain that is wrong is refused with a message naming the files, never
# read: a parent whose unique id is not the one the child recorded, a loop,
# a chain deeper than the limit (64 images; 64 itself opens). `vhd info
# --chain` still draws what it found and exits 1.
source "$(dirname "$0")/lib.sh"

note "parent replaced by another image of the same size: refused, both files named"
"$VHD" create -t dynamic -s 8M "$tmp/p.vhd" >/dev/null
"$VHD" create -t differencing -b "$tmp/p.vhd" "$tmp/c.vhd" >/dev/null
mv "$tmp/p.vhd" "$tmp/p-real.vhd"
"$VHD" create -t dynamic -s 8M "$tmp/p.vhd" >/dev/null
if out=$("$VHD" info --chain "$tmp/c.vhd" 2>&1); then fail "wrong parent accepted: $out"; fi
grep -q "IDENTITY MISMATCH" <<<"$out" || fail "tree does not show the mismatch: $out"
grep -q "c.vhd: parent $tmp/p.vhd (found by W2ru) has unique id .*, but the child records" \
    <<<"$out" || fail "message does not name both files: $out"
{ "$VHD" info --chain --json "$tmp/c.vhd" 2>/dev/null || true; } | python3 -c '
import json, sys
o = json.load(sys.stdin)
assert o["parent"]["uuid-matches"] is False, o
assert o["problem"]["errno"] == 22, o' || fail "--json does not show the mismatch"
for cmd in map "compare $tmp/c.vhd"; do
    if out=$("$VHD" $cmd "$tmp/c.vhd" 2>&1); then fail "engine opened a wrong parent ($cmd)"; fi
    grep -q "c.vhd: parent $tmp/p.vhd has unique id" <<<"$out" || fail "engine message: $out"
done
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null; then
    mkdir "$tmp/mnt"
    if out=$("$VHD" mount "$tmp/c.vhd" "$tmp/mnt" 2>&1); then
        "$VHD" unmount "$tmp/mnt"
        fail "mount of a chain with a wrong parent succeeded"
    fi
    grep -q "has unique id" <<<"$out" || fail "mount message: $out"
    ! mountpoint -q "$tmp/mnt" || fail "a failed mount left a mount behind"
fi
note "with the right parent back in place the chain is whole again"
mv "$tmp/p.vhd" "$tmp/decoy.vhd"; mv "$tmp/p-real.vhd" "$tmp/p.vhd"
"$VHD" info --chain "$tmp/c.vhd" | grep -q "identity ok" || fail "restored chain not ok"

note "a parent whose timestamp alone changed is accepted, and shown as such"
end=$(($(file_size "$tmp/p.vhd") - 512))
for at in 0 "$end"; do
    put_be32 "$tmp/p.vhd" $((at + 24)) 12345
    fix_footer_checksum "$tmp/p.vhd" "$at"
done
out=$("$VHD" info --chain "$tmp/c.vhd") || fail "timestamp change refused: $out"
grep -q "identity ok, timestamp 12345 differs from the recorded .* (accepted)" <<<"$out" ||
    fail "timestamp difference not shown: $out"
"$VHD" map "$tmp/c.vhd" >/dev/null || fail "engine refused a parent with another timestamp"

note "a loop: the parent locator leads back into the chain"
"$VHD" create -t dynamic -s 8M "$tmp/l0.vhd" >/dev/null
"$VHD" create -t differencing -b "$tmp/l0.vhd" "$tmp/l1.vhd" >/dev/null
"$VHD" create -t differencing -b "$tmp/l1.vhd" "$tmp/l2.vhd" >/dev/null
rm "$tmp/l0.vhd"
ln -s l2.vhd "$tmp/l0.vhd"          # l2 -> l1 -> "l0" = l2
if out=$("$VHD" info --chain "$tmp/l2.vhd" 2>&1); then fail "loop accepted: $out"; fi
grep -q "is already in the chain (a loop)" <<<"$out" || fail "loop message: $out"
if out=$("$VHD" map "$tmp/l2.vhd" 2>&1); then fail "engine opened a loop"; fi
grep -q "a loop" <<<"$out" || fail "engine loop message: $out"

note "64 images open, 65 are refused"
"$VHD" create -t dynamic -s 4M "$tmp/d0.vhd" >/dev/null
"$VHD" bench -w -q -s 64k -c 1 -d 1 --pattern=9 "$tmp/d0.vhd"
for i in $(seq 1 64); do
    "$VHD" create -t differencing -b "$tmp/d$((i - 1)).vhd" "$tmp/d$i.vhd" >/dev/null
done
"$VHD" info --chain "$tmp/d63.vhd" >"$tmp/tree" || fail "a chain of 64 images was refused"
[ "$(wc -l <"$tmp/tree")" = 64 ] || fail "tree of 64 has $(wc -l <"$tmp/tree") lines"
"$VHD" map --json "$tmp/d63.vhd" | grep -q '"depth": 63, "present": true' ||
    fail "map of 64 does not show the base at depth 63"
if out=$("$VHD" info --chain "$tmp/d64.vhd" 2>&1 >/dev/null); then fail "65 images accepted"; fi
grep -q "chain deeper than 64 images" <<<"$out" || fail "depth message: $out"
if out=$("$VHD" map "$tmp/d64.vhd" 2>&1); then fail "engine opened 65 images"; fi
grep -q "chain deeper than 64 images" <<<"$out" || fail "engine depth message: $out"
echo "PASS"
