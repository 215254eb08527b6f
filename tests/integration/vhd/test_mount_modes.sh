#!/usr/bin/env bash
# Every cache mode of `vhd mount` (page cache, -o direct_io,
# and the engine without O_DIRECT, -o buffered) keeps what is written:
# large sequential writes, writes at odd offsets and lengths (read-modify-
# write of partial sectors), writes past the end cut short; after `vhd
# unmount` the image is clean and a read-only mount reads the same bytes.
source "$(dirname "$0")/lib.sh"
need fusermount3 cmp
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }

mnt=$tmp/mnt
mkdir -p "$mnt"
cleanup_hooks+=('if mountpoint -q "$mnt"; then "$VHD" unmount "$mnt" || fusermount3 -u -z "$mnt"; fi')
size=$((40 * 1048576 + 3 * 512))      # not a multiple of 4 KiB: the last page is partial

for mode in "" direct_io buffered; do
    note "mode: ${mode:-page cache}"
    img=$tmp/m-${mode:-default}.vhd
    "$VHD" create -t dynamic -s "$size" "$img" >/dev/null
    vmount ${mode:+-o "$mode"} "$img" "$mnt"
    [ "$(stat -c %s "$mnt/disk")" = "$size" ] || fail "$mode: wrong size"
    random_file "$tmp/src" "$size"
    dd if="$tmp/src" of="$mnt/disk" bs=4M conv=notrunc,fsync status=none
    # Odd pieces at odd places, applied to the reference the same way.
    for spec in "1 1" "511 2" "513 4097" "4095 70000" "1048575 1048577" \
                "$((size - 700)) 700"; do
        set -- $spec
        random_file "$tmp/piece" "$2"
        dd if="$tmp/piece" of="$mnt/disk" bs="$2" seek="$1" oflag=seek_bytes conv=notrunc \
            status=none
        dd if="$tmp/piece" of="$tmp/src" bs="$2" seek="$1" oflag=seek_bytes conv=notrunc \
            status=none
    done
    # Past the end: cut short, the file does not grow.
    dd if=/dev/zero of="$mnt/disk" bs=4096 seek=$((size / 4096)) count=2 conv=notrunc \
        status=none 2>/dev/null || true
    [ "$(stat -c %s "$mnt/disk")" = "$size" ] || fail "$mode: the disk grew"
    dd if=/dev/zero of="$tmp/src" bs=1 seek=$((size / 4096 * 4096)) \
        count=$((size - size / 4096 * 4096)) conv=notrunc status=none
    sync "$mnt/disk" 2>/dev/null || sync
    cmp "$tmp/src" "$mnt/disk" || fail "$mode: reads differ from what was written"
    "$VHD" unmount "$mnt"
    "$VHD" check "$img" >/dev/null || fail "$mode: check after unmount"
    vmount --read-only "$img" "$mnt"
    cmp "$tmp/src" "$mnt/disk" || fail "$mode: data lost at unmount"
    "$VHD" unmount "$mnt"
done
if [ -s "$tmp/daemon.log" ]; then
    cat "$tmp/daemon.log" >&2
    fail "the mount daemon reported problems"
fi
echo "PASS"
