#!/bin/bash
# The life-of-an-image commands through the `vhd` tool, on real chains:
# merge, compact, resize, set-parent and repair. Every result is compared
# byte for byte with a raw `vhd convert` of what the original read (vhd
# compare and cmp), checked clean, and read by qemu-img (dynamic/fixed) and
# libvhdi (vhdiinfo; vhdimount through FUSE where /dev/fuse exists).
source "$(dirname "$0")/lib.sh"
need qemu-img vhdiinfo cmp

same() { "$VHD" compare "$1" "$2" >/dev/null || fail "$1 does not read as $2"; }
clean() { "$VHD" check "$1" >/dev/null || fail "$1 is not clean: $("$VHD" check "$1")"; }
write_pattern()  # IMAGE OFFSET COUNT SIZE BYTE
{
    "$VHD" bench -w -q -o "$2" -c "$3" -s "$4" --pattern="$(($5))" "$1" ||
        fail "writing into $1"
}
vhdi_size() { vhdiinfo "$1" | sed -n 's/.*Media size.*(\([0-9]*\) bytes).*/\1/p'; }
qemu_size() { qemu-img info -f vpc --output=json "$1" | json_field virtual-size; }

# ---------------------------------------------------------------- merge
half_zero_raw "$tmp/base.raw" $((32 * 1048576))
"$VHD" convert -O vhd "$tmp/base.raw" "$tmp/base.vhd" >/dev/null
"$VHD" create -t differencing -b "$tmp/base.vhd" "$tmp/snap1.vhd" >/dev/null
write_pattern "$tmp/snap1.vhd" 1048576 40 65536 0x5a
write_pattern "$tmp/snap1.vhd" $((9 * 1048576 + 4096)) 3 4096 0x00
"$VHD" create -t differencing -b "$tmp/snap1.vhd" "$tmp/snap2.vhd" >/dev/null
write_pattern "$tmp/snap2.vhd" $((2 * 1048576)) 64 131072 0xc3
write_pattern "$tmp/snap2.vhd" $((31 * 1048576)) 1 1048576 0x11
"$VHD" convert -O raw "$tmp/snap2.vhd" "$tmp/chain.raw" >/dev/null

"$VHD" merge -p --json "$tmp/snap2.vhd" >"$tmp/merge.json" 2>"$tmp/merge.err" ||
    fail "merge: $(cat "$tmp/merge.err")"
[ "$(json_field merged-images <"$tmp/merge.json")" = 1 ] || fail "merge json: $(cat "$tmp/merge.json")"
[ ! -e "$tmp/snap2.vhd" ] || fail "the merged child still exists"
same "$tmp/snap1.vhd" "$tmp/chain.raw"
clean "$tmp/snap1.vhd"
vhdiinfo "$tmp/snap1.vhd" >/dev/null || fail "vhdiinfo cannot read the merged child"
vhdimount_cmp "$tmp/snap1.vhd" "$tmp/chain.raw"
note "merge: snap2 folded into snap1, which reads as the chain did"

"$VHD" merge "$tmp/snap1.vhd" >/dev/null
same "$tmp/base.vhd" "$tmp/chain.raw"
clean "$tmp/base.vhd"
qemu-img compare -q -f vpc "$tmp/base.vhd" -F raw "$tmp/chain.raw" || fail "qemu-img: merged base differs"
vhdimount_cmp "$tmp/base.vhd" "$tmp/chain.raw"
note "merge: snap1 folded into base; qemu-img and vhdimount agree"

# A sibling: refused unless --force, with the sibling named.
"$VHD" create -t differencing -b "$tmp/base.vhd" "$tmp/a.vhd" >/dev/null
"$VHD" create -t differencing -b "$tmp/base.vhd" "$tmp/b.vhd" >/dev/null
if "$VHD" merge "$tmp/a.vhd" 2>"$tmp/err"; then fail "merge with a sibling succeeded"; fi
grep -q "b.vhd" "$tmp/err" || fail "refusal does not name the sibling: $(cat "$tmp/err")"
"$VHD" merge --force "$tmp/a.vhd" >/dev/null || fail "forced merge"
rm -f "$tmp/b.vhd"
note "merge: refuses while another image uses the parent; --force overrides"

# -------------------------------------------------------------- compact
"$VHD" create -t dynamic -s 40M "$tmp/c.vhd" >/dev/null
write_pattern "$tmp/c.vhd" 0 20 2097152 0x77
write_pattern "$tmp/c.vhd" $((4 * 1048576)) 4 2097152 0x00          # zero blocks
"$VHD" convert -O raw "$tmp/c.vhd" "$tmp/c.raw" >/dev/null
before=$(file_size "$tmp/c.vhd")
"$VHD" compact -p --json "$tmp/c.vhd" >"$tmp/compact.json" 2>/dev/null || fail "compact"
[ "$(json_field blocks-freed <"$tmp/compact.json")" = 4 ] || fail "compact json: $(cat "$tmp/compact.json")"
after=$(file_size "$tmp/c.vhd")
[ "$after" -lt $((before - 4 * 2097152)) ] || fail "compact: $before -> $after bytes"
same "$tmp/c.vhd" "$tmp/c.raw"
clean "$tmp/c.vhd"
qemu-img compare -q -f vpc "$tmp/c.vhd" -F raw "$tmp/c.raw" || fail "qemu-img: compacted image differs"
vhdimount_cmp "$tmp/c.vhd" "$tmp/c.raw"
note "compact: $before -> $after bytes, same content"

# --------------------------------------------------------------- resize
for type in dynamic fixed; do
    img=$tmp/r-$type.vhd
    "$VHD" create -t $type -s 10M "$img" >/dev/null
    write_pattern "$img" 0 10 1048576 0x3c
    "$VHD" resize "$img" 3000M >/dev/null || fail "grow $type"
    [ "$(vhdi_size "$img")" = $((3000 * 1048576)) ] || fail "vhdiinfo: $type size after grow"
    [ "$(qemu_size "$img")" = $((3000 * 1048576)) ] || fail "qemu-img: $type size after grow"
    clean "$img"
    if "$VHD" resize "$img" 5M 2>/dev/null; then fail "$type: shrink over data succeeded"; fi
    "$VHD" resize --force "$img" $((5 * 1048576 + 512)) >/dev/null || fail "forced shrink $type"
    [ "$(vhdi_size "$img")" = $((5 * 1048576 + 512)) ] || fail "vhdiinfo: $type size after shrink"
    head -c $((5 * 1048576 + 512)) "$tmp/c.raw" >/dev/null
    "$VHD" convert -O raw "$img" "$tmp/r.raw" >/dev/null
    [ "$(file_size "$tmp/r.raw")" = $((5 * 1048576 + 512)) ] || fail "$type: raw size"
    [ "$(od -An -tx1 -j 5242879 -N 1 "$tmp/r.raw" | tr -d ' ')" = 3c ] || fail "$type: data lost"
    clean "$img"
    rm -f "$tmp/r.raw"
done
note "resize: dynamic and fixed grow to 3000 MiB and shrink to 5 MiB + 512 exactly"

# ----------------------------------------------------------- set-parent
mkdir -p "$tmp/old" "$tmp/new"
"$VHD" create -t dynamic -s 8M "$tmp/old/p.vhd" >/dev/null
write_pattern "$tmp/old/p.vhd" 0 8 1048576 0x42
"$VHD" create -t differencing -b "$tmp/old/p.vhd" "$tmp/kid.vhd" >/dev/null
write_pattern "$tmp/kid.vhd" 1048576 1 4096 0x43
"$VHD" convert -O raw "$tmp/kid.vhd" "$tmp/kid.raw" >/dev/null
mv "$tmp/old/p.vhd" "$tmp/new/moved.vhd"
if "$VHD" compare "$tmp/kid.vhd" "$tmp/kid.raw" 2>/dev/null; then fail "parent found after the move?"; fi
"$VHD" set-parent "$tmp/kid.vhd" "$tmp/new/moved.vhd" >/dev/null || fail "set-parent"
same "$tmp/kid.vhd" "$tmp/kid.raw"
clean "$tmp/kid.vhd"
"$VHD" info --json "$tmp/kid.vhd" | grep -q 'new/moved.vhd' || fail "locators not rewritten"
# libvhdi looks for the parent only by its name beside the child: a copy
# beside it (the same disk: same unique id) is accepted, and vhdimount
# then finds it through the rewritten name.
cp "$tmp/new/moved.vhd" "$tmp/beside.vhd"
"$VHD" set-parent "$tmp/kid.vhd" "$tmp/beside.vhd" >/dev/null || fail "set-parent to a copy"
same "$tmp/kid.vhd" "$tmp/kid.raw"
vhdimount_cmp "$tmp/kid.vhd" "$tmp/kid.raw"
"$VHD" create -t dynamic -s 8M "$tmp/stranger.vhd" >/dev/null
if "$VHD" set-parent "$tmp/kid.vhd" "$tmp/stranger.vhd" 2>/dev/null; then fail "foreign parent accepted"; fi
note "set-parent: relinked after a move (locators) and to a copy beside it (name, vhdimount)"

# --------------------------------------------------------------- repair
cp "$tmp/c.vhd" "$tmp/d.vhd"
len=$(file_size "$tmp/d.vhd")
head -c 512 /dev/urandom | dd of="$tmp/d.vhd" bs=512 seek=$((len / 512 - 1)) conv=notrunc status=none
rc=0; "$VHD" check "$tmp/d.vhd" >/dev/null || rc=$?
[ "$rc" = 2 ] || fail "check of a destroyed footer: exit $rc"
"$VHD" repair --dry-run "$tmp/d.vhd" | grep -q "would: footer" || fail "dry run says nothing"
rc=0; "$VHD" check "$tmp/d.vhd" >/dev/null || rc=$?
[ "$rc" = 2 ] || fail "the dry run changed the image"
"$VHD" repair --json "$tmp/d.vhd" >"$tmp/repair.json" || fail "repair: $(cat "$tmp/repair.json")"
grep -q '"sound"' "$tmp/repair.json" || fail "repair json: $(cat "$tmp/repair.json")"
clean "$tmp/d.vhd"
same "$tmp/d.vhd" "$tmp/c.raw"
note "repair: destroyed footer rebuilt from the copy, content intact"

# ------------------------------------------------ images qemu-img wrote
# qemu's layout differs (BAT right after the header, blocks packed without
# alignment): compact and resize (BAT relocation) must work on it, and qemu
# must keep using the result.
if command -v qemu-io >/dev/null; then
    qemu-img create -q -f vpc "$tmp/q.vhd" 64M
    qemu-io -f vpc -c "write -P 0x11 0 8M" -c "write -P 0 8M 6M" -c "write -P 0x22 20M 2M" \
        -c "write -P 0x33 60M 4M" "$tmp/q.vhd" >/dev/null
    "$VHD" convert -O raw "$tmp/q.vhd" "$tmp/q.raw" >/dev/null
    "$VHD" compact --json "$tmp/q.vhd" >"$tmp/qc.json" || fail "compact of a qemu image"
    [ "$(json_field blocks-freed <"$tmp/qc.json")" = 3 ] || fail "qemu image: $(cat "$tmp/qc.json")"
    qemu-img compare -q -f vpc "$tmp/q.vhd" -F raw "$tmp/q.raw" || fail "qemu image changed by compact"
    clean "$tmp/q.vhd"
    "$VHD" resize "$tmp/q.vhd" 3G >/dev/null || fail "resize of a qemu image"
    [ "$(qemu_size "$tmp/q.vhd")" = 3221225472 ] || fail "qemu-img: size after resize"
    qemu-io -f vpc -c "write -P 0x44 2G 1M" "$tmp/q.vhd" >/dev/null || fail "qemu-io after resize"
    clean "$tmp/q.vhd"
    qemu-io -f vpc -c "read -P 0x44 2G 1M" -c "read -P 0x33 60M 4M" "$tmp/q.vhd" >"$tmp/qio.log" 2>&1
    if grep -q "verification failed" "$tmp/qio.log" || ! grep -q "read 4194304" "$tmp/qio.log"; then
        fail "qemu reads the resized image wrongly: $(cat "$tmp/qio.log")"
    fi
    note "qemu-img's own images: compacted, grown past their BAT, still used by qemu"
fi
