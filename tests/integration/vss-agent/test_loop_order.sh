#!/bin/bash
# A loop filesystem whose image lives on another frozen filesystem must
# freeze first: the other way round its FIFREEZE would wait forever for its
# own sync to reach the frozen image. Depth order alone gets this wrong here
# (the image's filesystem is mounted deeper), so the agent orders by the
# loop device's backing file too.
. "$(dirname "$0")/lib.sh"

MNT=$WORK/deep/er/mnta
MNTB=$WORK/mntb
LOOPB=
mkdir -p "$MNT" "$MNTB"
extra_cleanup() {
    fsfreeze -u "$MNT" 2>/dev/null
    [ -n "$LOOPB" ] && fsfreeze -u "$MNTB" 2>/dev/null
    fsfreeze -u "$MNT" 2>/dev/null
    [ -n "$AGENT_PID" ] && kill -9 "$AGENT_PID" 2>/dev/null
    wait 2>/dev/null
    if [ -n "$LOOPB" ]; then
        umount "$MNTB" 2>/dev/null || { sleep 1; umount -l "$MNTB"; }
        losetup -d "$LOOPB" 2>/dev/null
    fi
}

make_fs
dd if=/dev/zero of="$MNT/b.img" bs=1M count=24 status=none || fail "dd"
mkfs.ext4 -q -F "$MNT/b.img" || fail "mkfs.ext4 b"
LOOPB=$(losetup -f --show "$MNT/b.img") || skip "no second loop device"
mount "$LOOPB" "$MNTB" || fail "mount b"
MNTB=$(realpath "$MNTB")

list=$("$AGENT_BIN" --list --fs "$MNT" --fs "$MNTB" --writers "$WRITERS" -q)
[ "$(grep -o '"mount":"[^"]*"' <<<"$list" | wc -l)" = 2 ] || fail "expected our two: $list"
order=$(grep -o '"mount":"[^"]*"' <<<"$list" | tr '\n' ' ')
[ "$order" = "\"mount\":\"$MNTB\" \"mount\":\"$MNT\" " ] || fail "freeze order: $order"
pass "the loop filesystem comes before the one holding its image"

start_agent --fs "$MNTB" --thaw-timeout 30
# dirty data on the loop filesystem: its freeze must sync it into the image
dd if=/dev/urandom of="$MNTB/dirty" bs=1M count=8 status=none || fail "dd dirty"
open_client
req '{"id":1,"cmd":"freeze"}'
expect '"ok":true'; expect "\"frozen\":[\"$MNTB\",\"$MNT\"]"
req '{"id":2,"cmd":"thaw"}'
expect '"ok":true'
fs_is_writable 3 || fail "still frozen"
pass "freeze and thaw of a loop filesystem and its image's filesystem"
close_client
stop_agent
finish
