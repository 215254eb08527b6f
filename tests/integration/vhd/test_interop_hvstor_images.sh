#!/usr/bin/env bash
# Images hvstor creates open in the real tools with the same virtual size,
# identity and content: qemu-img (fixed and dynamic; qemu's vpc driver has no
# differencing support) and libvhdi's vhdiinfo/vhdimount (all three types,
# chains included). Odd sizes on purpose: none of them is a CHS geometry.
source "$(dirname "$0")/lib.sh"
need qemu-img vhdiinfo

vhdi_size() { vhdiinfo "$1" | sed -n 's/.*Media size.*(\([0-9]*\) bytes).*/\1/p'; }
vhdi_id() { vhdiinfo "$1" | sed -n 's/^[[:space:]]*Identifier[[:space:]]*: *//p' | head -1; }
qemu_size() { qemu-img info -f vpc --output=json "$1" | json_field virtual-size; }

# Sizes: a sector over 1 MiB; 9.5 MiB and a bit; just under a 2 MiB block
# boundary; 65 MiB + 3 sectors. None is a whole number of CHS cylinders.
sizes=(1049088 10000384 $((6 * 1048576 - 512)) $((65 * 1048576 + 1536)))

for type in fixed dynamic; do
    for size in "${sizes[@]}"; do
        src=$tmp/src.raw
        rm -f "$src" "$tmp/img.vhd" "$tmp/out.raw" "$tmp/empty.vhd"
        # Data in a few places, zero elsewhere: first and last sector, a
        # block-crossing run, a sprinkle in the middle.
        truncate -s "$size" "$src"
        head -c 512 /dev/urandom | dd of="$src" conv=notrunc status=none
        head -c 512 /dev/urandom | dd of="$src" bs=512 seek=$((size / 512 - 1)) conv=notrunc status=none
        head -c 300000 /dev/urandom | dd of="$src" bs=1 seek=$((size / 3)) conv=notrunc status=none
        head -c 4096 /dev/urandom | dd of="$src" bs=512 seek=$((size / 1024)) conv=notrunc status=none

        "$VHD" convert -f raw -O vhd --type "$type" "$src" "$tmp/img.vhd"
        "$VHD" check "$tmp/img.vhd" >/dev/null || fail "$type $size: vhd check is not clean"
        info=$("$VHD" info --json "$tmp/img.vhd")
        [ "$(json_field virtual-size <<<"$info")" = "$size" ] ||
            fail "$type $size: vhd info says $(json_field virtual-size <<<"$info")"
        uuid=$(json_field uuid <<<"$info")

        [ "$(qemu_size "$tmp/img.vhd")" = "$size" ] ||
            fail "$type $size: qemu-img says $(qemu_size "$tmp/img.vhd") bytes"
        [ "$(vhdi_size "$tmp/img.vhd")" = "$size" ] ||
            fail "$type $size: vhdiinfo says $(vhdi_size "$tmp/img.vhd") bytes"
        [ "$(vhdi_id "$tmp/img.vhd")" = "$uuid" ] ||
            fail "$type $size: vhdiinfo identifier '$(vhdi_id "$tmp/img.vhd")' is not $uuid"

        qemu-img convert -f vpc -O raw "$tmp/img.vhd" "$tmp/out.raw"
        cmp "$tmp/out.raw" "$src" || fail "$type $size: qemu-img reads different content"
        vhdimount_cmp "$tmp/img.vhd" "$src"

        # An empty image reads as zeroes everywhere, to every reader.
        "$VHD" create --type "$type" --size "$size" "$tmp/empty.vhd" >/dev/null
        [ "$(qemu_size "$tmp/empty.vhd")" = "$size" ] || fail "empty $type $size: qemu size"
        [ "$(vhdi_size "$tmp/empty.vhd")" = "$size" ] || fail "empty $type $size: vhdi size"
        truncate -s 0 "$tmp/zero.raw"; truncate -s "$size" "$tmp/zero.raw"
        qemu-img compare -q -f vpc -F raw "$tmp/empty.vhd" "$tmp/zero.raw" ||
            fail "empty $type $size: qemu-img does not read zeroes"
        if [ "$type" = fixed ]; then
            # preallocated, not sparse
            alloc=$(($(stat -c %b "$tmp/empty.vhd") * $(stat -c %B "$tmp/empty.vhd")))
            [ "$alloc" -ge "$size" ] || fail "fixed $size: only $alloc bytes allocated"
        fi
        note "$type $size: qemu-img, vhdiinfo$([ $has_vhdimount = 1 ] && echo ", vhdimount") agree"
    done
done

# A chain: base (dynamic, data) <- child (writes) <- grandchild (writes).
# qemu cannot open differencing images; libvhdi and hvstor itself can.
size=$((20 * 1048576 + 512))
cd "$tmp"
half_zero_raw base.raw $((20 * 1048576))
truncate -s "$size" base.raw
"$VHD" convert -O vhd base.raw base.vhd
"$VHD" create --type differencing --parent base.vhd child.vhd >/dev/null
# vhd bench writes a fill pattern: 8 x 64 KiB, one per MiB from 512 KiB.
"$VHD" bench -w -c 8 -d 4 -s 64k -S 1M -o 512k --pattern=90 child.vhd >/dev/null
"$VHD" create --parent child.vhd grandchild.vhd >/dev/null
"$VHD" bench -w -c 3 -d 2 -s 4k -S 3M -o 4096 --pattern=165 grandchild.vhd >/dev/null
cp base.raw expect.raw
for i in 0 1 2 3 4 5 6 7; do
    head -c 65536 /dev/zero | tr '\0' '\132' |
        dd of=expect.raw bs=1 seek=$((524288 + i * 1048576)) conv=notrunc status=none
done
for i in 0 1 2; do
    head -c 4096 /dev/zero | tr '\0' '\245' |
        dd of=expect.raw bs=1 seek=$((4096 + i * 3145728)) conv=notrunc status=none
done

for img in base child grandchild; do
    "$VHD" check "$img.vhd" >/dev/null || fail "$img.vhd: vhd check is not clean"
    [ "$(vhdi_size "$img.vhd")" = "$size" ] || fail "$img.vhd: vhdiinfo size $(vhdi_size "$img.vhd")"
done
vhdiinfo grandchild.vhd >vi.txt
grep -qi "Disk type.*Differential" vi.txt || fail "vhdiinfo: grandchild is not differencing: $(cat vi.txt)"
child_uuid=$("$VHD" info --json child.vhd | json_field uuid)
grep -qi "Parent identifier.*$child_uuid" vi.txt ||
    fail "vhdiinfo: grandchild's parent is not $child_uuid: $(cat vi.txt)"
"$VHD" info grandchild.vhd | grep -q "parent:.*child.vhd" || fail "vhd info: parent name"

"$VHD" convert -O raw grandchild.vhd flat.raw
cmp flat.raw expect.raw || fail "the flattened chain reads differently from the expectation"
"$VHD" compare grandchild.vhd expect.raw >/dev/null || fail "vhd compare: chain != expectation"
"$VHD" convert grandchild.vhd flat.vhd
qemu-img convert -f vpc -O raw flat.vhd flat2.raw
cmp flat2.raw expect.raw || fail "qemu-img reads the flattened chain differently"
# libvhdi finds the parents through the locators hvstor wrote.
vhdimount_cmp grandchild.vhd expect.raw
echo "PASS: hvstor's fixed, dynamic and differencing images read the same in qemu-img and libvhdi"
