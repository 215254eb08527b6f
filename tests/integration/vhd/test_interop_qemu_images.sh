#!/usr/bin/env bash
# Images qemu-img creates (fixed and dynamic, with and without force_size,
# data written by qemu-io) read the same through `vhd convert -O raw` as
# through `qemu-img convert -O raw`, report the same virtual size, check
# clean, and compare equal with `vhd compare`.
source "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

n=0
for sub in dynamic fixed; do
    for force in off on; do
        for size in 10M 33554944 100000000; do
            img=$tmp/q.$sub.$force.vhd
            rm -f "$img" "$tmp/a.raw" "$tmp/b.raw"
            qemu-img create -q -f vpc -o subformat=$sub,force_size=$force "$img" "$size"
            vsize=$(qemu-img info -f vpc --output=json "$img" | json_field virtual-size)
            last=$(((vsize - 8192) / 512 * 512))
            qemu-io -f vpc -c "write -P 0xab 0 1M" -c "write -P 0xcd 3M 64k" \
                -c "write -P 0x11 $((vsize / 2 + 512)) 7k" -c "write -P 0xee $last 4k" \
                -c "write -z 3M 4k" "$img" >/dev/null
            "$VHD" convert -O raw "$img" "$tmp/a.raw"
            qemu-img convert -f vpc -O raw "$img" "$tmp/b.raw"
            cmp "$tmp/a.raw" "$tmp/b.raw" ||
                fail "$sub force_size=$force $size: vhd and qemu-img read different content"
            ours=$("$VHD" info --json "$img" | json_field virtual-size)
            [ "$ours" = "$vsize" ] ||
                fail "$sub force_size=$force $size: vhd says $ours bytes, qemu-img $vsize"
            rc=0; "$VHD" check "$img" >"$tmp/check.log" || rc=$?
            [ "$rc" = 0 ] || fail "$sub force_size=$force $size: vhd check exit $rc: $(cat "$tmp/check.log")"
            "$VHD" compare "$img" "$tmp/b.raw" >/dev/null ||
                fail "$sub force_size=$force $size: vhd compare says they differ"
            note "$sub force_size=$force $size ($vsize bytes): same content, size, clean"
            n=$((n + 1))
        done
    done
done
echo "PASS: $n qemu-made images read the same through hvstor and qemu-img"
