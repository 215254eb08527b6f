#!/usr/bin/env bash
# `vhd mount` serves a VHD as a file that the host's loop driver and ext4 use
# like any disk: mkfs, mount, write files, unmount, and the image is clean
# (`vhd check`) and reads the files back after a second mount. A read-only
# mount refuses writes and leaves the image byte-identical; a mounted
# differencing child takes every write and leaves its parent byte-identical.
# Needs root, /dev/fuse, losetup and mkfs.ext4 (skips otherwise).
source "$(dirname "$0")/lib.sh"
need losetup mkfs.ext4 fusermount3 md5sum sha256sum mount umount
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (loop devices, mount)"; exit 77; }
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }

mnt=$tmp/mnt        # the FUSE mount: $mnt/disk
fs=$tmp/fs          # the ext4 on the loop device
mkdir -p "$mnt" "$fs"
loop=""

# Undo whatever is set up, innermost first; also runs on failure (trap).
teardown()
{
    if mountpoint -q "$fs"; then umount "$fs" || umount -l "$fs"; fi
    if [ -n "$loop" ]; then losetup -d "$loop" || true; loop=""; fi
    if mountpoint -q "$mnt"; then "$VHD" unmount "$mnt" || fusermount3 -u -z "$mnt"; fi
}
cleanup_hooks+=(teardown)

attach()  # FILE [losetup flags]: the loop device
{
    loop=$(losetup -f --show "${@:2}" "$1")
    [ -b "$loop" ] || fail "losetup gave no device for $1"
}

detach_all()
{
    umount "$fs"
    losetup -d "$loop"
    loop=""
    "$VHD" unmount "$mnt"
    ! mountpoint -q "$mnt" || fail "$mnt still mounted after vhd unmount"
}

img=$tmp/disk.vhd
"$VHD" create -t dynamic -s 300M "$img" >/dev/null

note "mount, mkfs.ext4 through a loop device, write files"
vmount "$img" "$mnt"
[ "$(stat -c %s "$mnt/disk")" = $((300 * 1048576)) ] || fail "disk file has the wrong size"
attach "$mnt/disk"
mkfs.ext4 -q "$loop"
mount "$loop" "$fs"
random_file "$fs/big.bin" $((24 * 1048576))
random_file "$fs/odd.bin" 123457
mkdir "$fs/dir"
for i in $(seq 1 50); do random_file "$fs/dir/f$i" $((i * 1000)); done
(cd "$fs" && find . -type f | sort | xargs md5sum) >"$tmp/sums"
sync
detach_all

note "vhd check is clean after unmount"
"$VHD" check "$img" >"$tmp/check.log" || { cat "$tmp/check.log"; fail "check after unmount"; }

note "mount again and read the files back"
vmount "$img" "$mnt"
attach "$mnt/disk"
mount -o ro "$loop" "$fs"
(cd "$fs" && md5sum --quiet -c "$tmp/sums") || fail "files differ after remount"
detach_all
"$VHD" check "$img" >/dev/null || fail "check after the read-back mount"

note "read-only mount refuses writes and changes nothing"
before=$(sha256sum <"$img")
vmount --read-only "$img" "$mnt"
if dd if=/dev/zero of="$mnt/disk" bs=4k count=1 conv=notrunc status=none 2>/dev/null; then
    fail "a write into a read-only mount succeeded"
fi
attach "$mnt/disk" -r
mount -o ro,noload "$loop" "$fs"
(cd "$fs" && md5sum --quiet -c "$tmp/sums") || fail "files differ through the read-only mount"
detach_all
[ "$(sha256sum <"$img")" = "$before" ] || fail "read-only mount changed the image"

note "a differencing child takes the writes; the parent stays byte-identical"
child=$tmp/child.vhd
"$VHD" create -t differencing -b "$img" "$child" >/dev/null
vmount "$child" "$mnt"
attach "$mnt/disk"
mount "$loop" "$fs"
(cd "$fs" && md5sum --quiet -c "$tmp/sums") || fail "child does not show the parent's files"
random_file "$fs/new.bin" $((5 * 1048576))
rm "$fs/odd.bin"
md5sum <"$fs/new.bin" >"$tmp/new.sum"
sync
detach_all
[ "$(sha256sum <"$img")" = "$before" ] || fail "writing through the child changed the parent"
"$VHD" check "$child" >/dev/null || fail "check of the child after unmount"

vmount --read-only "$child" "$mnt"
attach "$mnt/disk" -r
mount -o ro,noload "$loop" "$fs"
[ "$(md5sum <"$fs/new.bin")" = "$(cat "$tmp/new.sum")" ] || fail "new file differs in the child"
[ ! -e "$fs/odd.bin" ] || fail "deleted file is back"
detach_all

note "unaligned writes straight into the disk file (read-modify-write)"
vmount "$child" "$mnt"
head -c 16384 "$mnt/disk" >"$tmp/before"
random_file "$tmp/patch" 3000
random_file "$tmp/patch2" 100
dd if="$tmp/patch" of="$mnt/disk" bs=3000 seek=1001 oflag=seek_bytes conv=notrunc status=none
dd if="$tmp/patch2" of="$mnt/disk" bs=100 seek=9000 oflag=seek_bytes conv=notrunc status=none
# What the first 16 KiB must read now, built from the bytes before.
{ head -c 1001 "$tmp/before"; cat "$tmp/patch"; head -c 9000 "$tmp/before" | tail -c +4002
  cat "$tmp/patch2"; tail -c +9101 "$tmp/before"; } >"$tmp/expect"
[ "$(stat -c %s "$tmp/expect")" = 16384 ] || fail "test bug: expected image is not 16 KiB"
cmp "$tmp/expect" <(head -c 16384 "$mnt/disk") || fail "unaligned writes did not read back"
"$VHD" unmount "$mnt"
"$VHD" check "$child" >/dev/null || fail "check after unaligned writes"
vmount --read-only "$child" "$mnt"
cmp "$tmp/expect" <(head -c 16384 "$mnt/disk") || fail "unaligned writes lost at unmount"
"$VHD" unmount "$mnt"
if [ -s "$tmp/daemon.log" ]; then
    cat "$tmp/daemon.log" >&2
    fail "the mount daemon reported problems"
fi
echo "PASS"
