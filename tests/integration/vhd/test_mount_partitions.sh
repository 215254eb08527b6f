#!/usr/bin/env bash
# A mounted VHD holds a partitioned disk: an MBR written into MOUNTPOINT/disk
# is found by `losetup -P`, each partition carries its own ext4, and after
# `vhd unmount` the image is clean and a read-only mount shows the files.
# The partition table is written by hand (printf), so nothing beyond
# util-linux and e2fsprogs is needed. Needs root and /dev/fuse.
source "$(dirname "$0")/lib.sh"
need losetup mkfs.ext4 fusermount3 md5sum mount umount
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (loop devices, mount)"; exit 77; }
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }

mnt=$tmp/mnt fs=$tmp/fs loop=""
mkdir -p "$mnt" "$fs"
teardown()
{
    if mountpoint -q "$fs"; then umount "$fs" || umount -l "$fs"; fi
    if [ -n "$loop" ]; then losetup -d "$loop" || true; loop=""; fi
    if mountpoint -q "$mnt"; then "$VHD" unmount "$mnt" || fusermount3 -u -z "$mnt"; fi
}
cleanup_hooks+=(teardown)

le32() { printf '%08x' "$1" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/'; }
# MBR partition entry: not bootable, CHS fields unused (LBA), Linux (0x83).
entry() { echo "00ffffff83ffffff$(le32 "$1")$(le32 "$2")"; }

# Wait for the kernel to create the partition device nodes of $loop.
wait_parts()
{
    local i
    for ((i = 0; i < 50; i++)); do
        [ -b "${loop}p1" ] && [ -b "${loop}p2" ] && return 0
        sleep 0.1
    done
    fail "losetup -P made no ${loop}p1/p2"
}

# Some kernels are built without partition table support (no
# CONFIG_MSDOS_PARTITION): then `losetup -P` finds nothing even in a plain
# file, and there is nothing to test here.
truncate -s 96M "$tmp/probe.raw"
put_bytes "$tmp/probe.raw" 446 "$(entry 2048 81920)$(entry 83968 110592)"
put_bytes "$tmp/probe.raw" 510 "55aa"
loop=$(losetup -f --show -P "$tmp/probe.raw")
sleep 0.3
if [ ! -e "/sys/block/$(basename "$loop")/$(basename "$loop")p1" ]; then
    losetup -d "$loop"; loop=""
    echo "SKIP: this kernel does not read MBR partition tables (losetup -P on a plain file)"
    exit 77
fi
losetup -d "$loop"; loop=""

img=$tmp/parts.vhd
"$VHD" create -t dynamic -s 96M "$img" >/dev/null
"$VHD" mount "$img" "$mnt"
put_bytes "$mnt/disk" 446 "$(entry 2048 81920)$(entry 83968 110592)"
put_bytes "$mnt/disk" 510 "55aa"
loop=$(losetup -f --show -P "$mnt/disk")
wait_parts
[ "$(blockdev --getsz "${loop}p1")" = 81920 ] || fail "p1 has the wrong size"
[ "$(blockdev --getsz "${loop}p2")" = 110592 ] || fail "p2 has the wrong size"
for p in 1 2; do
    mkfs.ext4 -q "${loop}p$p"
    mount "${loop}p$p" "$fs"
    random_file "$fs/data$p" $((3 * 1048576 + p))
    md5sum <"$fs/data$p" >"$tmp/sum$p"
    umount "$fs"
done
losetup -d "$loop"; loop=""
"$VHD" unmount "$mnt"
"$VHD" check "$img" >/dev/null || fail "check after unmount"
# Data only where the partitions are: nothing before the first one's start.
"$VHD" map --json "$img" | python3 -c '
import json, sys
m = json.load(sys.stdin)
first = min(e["start"] for e in m if e["data"] and e["start"] > 0)
assert first >= 2048 * 512 - 2 * 1048576, m' || fail "map shows data outside the partitions"

"$VHD" mount --read-only "$img" "$mnt"
loop=$(losetup -f --show -P -r "$mnt/disk")
wait_parts
for p in 1 2; do
    mount -o ro,noload "${loop}p$p" "$fs"
    [ "$(md5sum <"$fs/data$p")" = "$(cat "$tmp/sum$p")" ] || fail "partition $p: file differs"
    umount "$fs"
done
losetup -d "$loop"; loop=""
"$VHD" unmount "$mnt"
echo "PASS"
