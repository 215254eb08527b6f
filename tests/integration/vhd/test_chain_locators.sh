#!/usr/bin/env bash
# Parents are found the way Windows and Xen find them, W2ru, then W2ku, then
# MacX, then the parent's name beside the child, and each kind alone is
# enough: files are moved (and locators spoiled) so that only one works at a
# time. `vhd info --chain` says which kind found the parent, and the engine
# (`vhd map`, `vhd compare`) reads the chain through the same file.
source "$(dirname "$0")/lib.sh"

# Data offset of the first locator with platform CODE (e.g. 0x57326b75) in
# FILE's dynamic header.
locator_offset()  # FILE CODE
{
    local hdr i at
    hdr=$(get_be64 "$1" 16)
    for ((i = 0; i < 8; i++)); do
        at=$((hdr + 576 + 24 * i))
        if [ "$(get_be32 "$1" "$at")" = $(($2)) ]; then
            get_be64 "$1" $((at + 16))
            return
        fi
    done
    fail "$1: no locator $2"
}
W2RU=0x57327275 W2KU=0x57326b75 MACX=0x4d616358

# The first path character of a locator becomes 'Q': the path leads nowhere.
spoil_locator()  # FILE CODE
{
    put_bytes "$1" "$(locator_offset "$1" "$2")" "51"
}

expect_found_by()  # CHILD KIND REF
{
    local out
    out=$("$VHD" info --chain "$1") || fail "info --chain $1: $out"
    grep -q "parent found by $2, identity ok" <<<"$out" || fail "$1: expected $2: $out"
    "$VHD" compare "$1" "$3" >/dev/null || fail "$1 does not read as its reference"
    # The engine opened the same parent file that the walk found.
    walked=$("$VHD" info --chain --json "$1" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["parent"]["filename"])')
    "$VHD" map --json "$1" | python3 -c '
import json, sys
names = {e["filename"] for e in json.load(sys.stdin) if e["depth"] == 1 and e["present"]}
sys.exit(0 if names == {sys.argv[1]} else "engine read the parent from %s" % names)' "$walked"
    note "$1: parent found by $2 ($walked)"
}

# A parent with data in its first two blocks, a child with a bit of its own.
make_pair()  # DIR PARENT_SUBPATH
{
    mkdir -p "$(dirname "$1/$2")"
    "$VHD" create -t dynamic -s 16M "$1/$2" >/dev/null
    "$VHD" bench -w -q -s 1M -c 4 -d 1 --pattern=17 "$1/$2"
    "$VHD" create -t differencing -b "$1/$2" "$1/child.vhd" >/dev/null
    "$VHD" bench -w -q -s 64k -c 3 -d 1 -o 1M --pattern=34 "$1/child.vhd"
    "$VHD" convert -O raw "$1/child.vhd" "$1/ref.raw" >/dev/null
}

note "W2ru: parent and child moved together to another directory"
make_pair "$tmp/a" p.vhd
mv "$tmp/a" "$tmp/a2"
expect_found_by "$tmp/a2/child.vhd" W2ru "$tmp/a2/ref.raw"

note "W2ku: the child moved alone"
make_pair "$tmp/b" p.vhd
mkdir "$tmp/b-elsewhere"
mv "$tmp/b/child.vhd" "$tmp/b-elsewhere/"
expect_found_by "$tmp/b-elsewhere/child.vhd" W2ku "$tmp/b/ref.raw"

note "MacX: the child moved alone and its W2ku locator leads nowhere"
make_pair "$tmp/c" p.vhd
spoil_locator "$tmp/c/child.vhd" $W2KU
mkdir "$tmp/c-elsewhere"
mv "$tmp/c/child.vhd" "$tmp/c-elsewhere/"
expect_found_by "$tmp/c-elsewhere/child.vhd" MacX "$tmp/c/ref.raw"

note "name: the parent moved from a subdirectory to beside the child"
make_pair "$tmp/d" sub/p.vhd
mv "$tmp/d/sub/p.vhd" "$tmp/d/p.vhd"
expect_found_by "$tmp/d/child.vhd" name "$tmp/d/ref.raw"

note "W2ku past junk: a file that is not a VHD at the W2ru path does not hide the parent"
make_pair "$tmp/f" p.vhd
mkdir "$tmp/f-elsewhere"
mv "$tmp/f/child.vhd" "$tmp/f-elsewhere/"
printf 'not a vhd at all' >"$tmp/f-elsewhere/p.vhd"     # where W2ru (./p.vhd) points now
expect_found_by "$tmp/f-elsewhere/child.vhd" W2ku "$tmp/f/ref.raw"

note "only junk: the error says what was wrong with the candidate"
make_pair "$tmp/g" p.vhd
printf 'junk' >"$tmp/g/p.vhd"
if out=$("$VHD" info --chain "$tmp/g/child.vhd" 2>&1); then fail "junk parent accepted"; fi
grep -q "parent candidate.*p.vhd" <<<"$out" || fail "walk message: $out"
if out=$("$VHD" map "$tmp/g/child.vhd" 2>&1); then fail "engine opened a junk parent"; fi
grep -q "parent candidate.*p.vhd" <<<"$out" || fail "engine message: $out"

note "no candidate at all: a clear error listing what was tried"
make_pair "$tmp/e" p.vhd
mv "$tmp/e/p.vhd" "$tmp/e/renamed.vhd"
if out=$("$VHD" info --chain "$tmp/e/child.vhd" 2>&1); then fail "missing parent accepted"; fi
grep -q "parent not found (tried .*p.vhd" <<<"$out" || fail "message: $out"
if out=$("$VHD" map "$tmp/e/child.vhd" 2>&1); then fail "engine opened a chain without parent"; fi
grep -q "parent not found" <<<"$out" || fail "engine message: $out"
echo "PASS"
