#!/usr/bin/env bash
# Online growth of VHD disks attached to a VM: dynamic, fixed and
# differencing VHDs are written through iSCSI (qemu-io), grown with `hvctl
# disk resize` while initiators stay logged in and another keeps writing,
# and then: a fresh READ CAPACITY(16) with the VM's initiator name reports
# the exact new size, each logged-in client gets CAPACITY DATA HAS CHANGED
# and carries on, writes in flight during the resize complete (held and
# resumed), data written before is intact, the new space reads zeroes and
# takes writes, shrinking and sizes past 2040 GiB are refused clearly, and
# after SIGTERM `vhd check` is clean and qemu's vpc driver and libvhdi
# (vhdiinfo) read the new size. The 10 GiB and 40 GiB disks (2 MiB blocks)
# have no spare BAT entries: every growth of theirs moves the BAT.
# The grown 10 GiB disk also gives 16 MiB back (UNMAP) before it is closed:
# the blocks' places below the moved BAT must not stay as leaked space.
# (`qemu-img check` does not check vpc images: it exits 63 for any.)
. "$(dirname "$0")/hvstord_lib.sh"
need qemu-img qemu-io iscsi-readcapacity16 python3 vhdiinfo
hv_setup
hv_start

ini=iqn.2026-11.org.hvstor.test:resize
hvctl vm create rs --initiator "$ini" >/dev/null
hvctl disk attach rs --controller 0 --slot 0 --vhd "$HV_TMP/dyn.vhd" --create 64M >/dev/null
"$HVSTOR_BIN/vhd" create --type fixed -s 16M "$HV_TMP/fixed.vhd" >/dev/null
hvctl disk attach rs --controller 0 --slot 1 --vhd "$HV_TMP/fixed.vhd" >/dev/null
"$HVSTOR_BIN/vhd" create -s 10G "$HV_TMP/d10g.vhd" >/dev/null
hvctl disk attach rs --controller 0 --slot 2 --vhd "$HV_TMP/d10g.vhd" >/dev/null
# A differencing disk over a 40 GiB parent that holds data (written by
# qemu's own vpc driver).
"$HVSTOR_BIN/vhd" create -s 40G "$HV_TMP/base40g.vhd" >/dev/null
qemu-io -f vpc "$HV_TMP/base40g.vhd" -c "write -P 0xe1 20G 1M" -c "write -P 0xe2 39G 1M" \
    >"$HV_TMP/base.txt" 2>&1 || { cat "$HV_TMP/base.txt"; hv_fail "writing the parent"; }
"$HVSTOR_BIN/vhd" create --type differencing --parent "$HV_TMP/base40g.vhd" \
    "$HV_TMP/child.vhd" >/dev/null
hvctl disk attach rs --controller 0 --slot 3 --vhd "$HV_TMP/child.vhd" >/dev/null

capacity()   # capacity LUN: bytes as READ CAPACITY(16) reports them
{
    iscsi-readcapacity16 -s -i "$ini" "$(hv_url rs 0 "$1")"
}

qio()   # qio LUN COMMAND...: qemu-io commands, failing on any error
{
    local lun=$1 out
    shift
    out=$HV_TMP/qio$lun.txt
    qemu-io --image-opts "$(hv_qemu_opts rs 0 "$lun" "$ini")" "$@" >"$out" 2>&1 ||
        hv_fail "qemu-io LUN $lun: $(tail -3 "$out")"
    ! grep -qi "pattern verification failed\|error" "$out" ||
        hv_fail "qemu-io LUN $lun: $(grep -i 'fail\|error' "$out" | head -3)"
}

[ "$(capacity 0)" = $((64 << 20)) ] || hv_fail "dynamic VHD: capacity $(capacity 0) before resize"
[ "$(capacity 1)" = $((16 << 20)) ] || hv_fail "fixed VHD: capacity $(capacity 1) before resize"
qio 0 -c "write -P 0xa1 0 1M" -c "write -P 0xa2 63M 1M" -c flush
qio 1 -c "write -P 0xb1 0 1M" -c "write -P 0xb2 15M 1M" -c flush

# A client that stays logged in across the resize: qemu-io fed from a fifo.
mkfifo "$HV_TMP/cmd"
qemu-io --image-opts "$(hv_qemu_opts rs 0 0 "$ini")" <"$HV_TMP/cmd" >"$HV_TMP/live.txt" 2>&1 &
live=$!
HV_EXTRA_PIDS+=("$live")
exec 3>"$HV_TMP/cmd"
echo "write -P 0xa3 2M 64k" >&3
sleep 0.5

# A second client keeps writes in flight during the resize (8M-56M, about a
# second): the daemon holds new ones, drains, resizes, resumes.
qemu-img bench --image-opts "$(hv_qemu_opts rs 0 0 "$ini")" -w -d 8 -s 4k -c 12288 \
    -o 8M -S 4k --pattern=0x77 >"$HV_TMP/bench.txt" 2>&1 &
bench=$!
HV_EXTRA_PIDS+=("$bench")
sleep 0.3
kill -0 "$bench" 2>/dev/null || echo "note: the writer finished before the resize"
hvctl disk resize rs --controller 0 --slot 0 200M >"$HV_TMP/r0.txt" 2>&1 ||
    hv_fail "resize of the dynamic VHD: $(cat "$HV_TMP/r0.txt")"
wait "$bench" || hv_fail "writer during the resize failed: $(tail -3 "$HV_TMP/bench.txt")"
grep -q "Run completed" "$HV_TMP/bench.txt" || hv_fail "writer: $(tail -3 "$HV_TMP/bench.txt")"
hvctl disk resize rs --controller 0 --slot 1 24M >"$HV_TMP/r1.txt" 2>&1 ||
    hv_fail "resize of the fixed VHD: $(cat "$HV_TMP/r1.txt")"
if hvctl disk resize rs --controller 0 --slot 0 100M >"$HV_TMP/r2.txt" 2>&1; then
    hv_fail "shrinking online was accepted"
fi
grep -qi "shrink" "$HV_TMP/r2.txt" || hv_fail "shrink refused unclearly: $(cat "$HV_TMP/r2.txt")"
echo "shrink refused: $(cat "$HV_TMP/r2.txt")"

# 10 GiB -> 40 GiB -> 127 GiB + 4 KiB, with a client logged in throughout
# and another writing during the first growth.
G=$((1 << 30))
qio 2 -c "write -P 0xc1 0 1M" -c "write -P 0xc2 $((10 * G - (1 << 20))) 1M" -c flush
mkfifo "$HV_TMP/cmd2"
qemu-io --image-opts "$(hv_qemu_opts rs 0 2 "$ini")" <"$HV_TMP/cmd2" >"$HV_TMP/live2.txt" 2>&1 &
live2=$!
HV_EXTRA_PIDS+=("$live2")
exec 4>"$HV_TMP/cmd2"
echo "write -P 0xc3 $((5 * G)) 64k" >&4
qemu-img bench --image-opts "$(hv_qemu_opts rs 0 2 "$ini")" -w -d 8 -s 4k -c 12288 \
    -o $((4 * G)) -S 4k --pattern=0x78 >"$HV_TMP/bench2.txt" 2>&1 &
bench2=$!
HV_EXTRA_PIDS+=("$bench2")
sleep 0.3
kill -0 "$bench2" 2>/dev/null || echo "note: the 10 GiB writer finished before the resize"
hvctl disk resize rs --controller 0 --slot 2 40G >"$HV_TMP/r3.txt" 2>&1 ||
    hv_fail "resize of the 10 GiB VHD to 40 GiB: $(cat "$HV_TMP/r3.txt")"
wait "$bench2" || hv_fail "writer during the 10 GiB resize failed: $(tail -3 "$HV_TMP/bench2.txt")"
grep -q "Run completed" "$HV_TMP/bench2.txt" || hv_fail "writer: $(tail -3 "$HV_TMP/bench2.txt")"
[ "$(capacity 2)" = $((40 * G)) ] || hv_fail "10 GiB VHD: capacity $(capacity 2) after 40G"
qio 2 -c "write -P 0xc5 $((40 * G - (1 << 20))) 1M" -c flush
hvctl disk resize rs --controller 0 --slot 2 $((127 * G + 4096)) >"$HV_TMP/r4.txt" 2>&1 ||
    hv_fail "resize of the 40 GiB VHD to 127 GiB + 4 KiB: $(cat "$HV_TMP/r4.txt")"
[ "$(capacity 2)" = $((127 * G + 4096)) ] ||
    hv_fail "VHD: capacity $(capacity 2) after 127 GiB + 4 KiB"
# (qemu-io keeps the size it opened with: it writes below the old end.)
echo "write -P 0xc4 $((6 * G)) 64k" >&4
echo "read -P 0xc3 $((5 * G)) 64k" >&4
echo "read -P 0xc4 $((6 * G)) 64k" >&4
echo "quit" >&4
exec 4>&-
wait "$live2" || hv_fail "the client logged in to LUN 2 failed: $(tail -3 "$HV_TMP/live2.txt")"
grep -q "CAPACITY_DATA_HAS_CHANGED" "$HV_TMP/live2.txt" ||
    hv_fail "LUN 2's logged-in client saw no CAPACITY DATA HAS CHANGED: $(cat "$HV_TMP/live2.txt")"
! grep -v "CheckCondition" "$HV_TMP/live2.txt" | grep -qi "pattern verification failed\|error" ||
    hv_fail "LUN 2's logged-in client: $(grep -i 'fail\|error' "$HV_TMP/live2.txt" | head -3)"

# The differencing disk: 40 GiB -> 127 GiB + 4 KiB with a writer, then the
# largest VHD, 2040 GiB; one sector more is refused.
qemu-img bench --image-opts "$(hv_qemu_opts rs 0 3 "$ini")" -w -d 8 -s 4k -c 12288 \
    -o $((30 * G)) -S 4k --pattern=0x79 >"$HV_TMP/bench3.txt" 2>&1 &
bench3=$!
HV_EXTRA_PIDS+=("$bench3")
sleep 0.3
hvctl disk resize rs --controller 0 --slot 3 $((127 * G + 4096)) >"$HV_TMP/r5.txt" 2>&1 ||
    hv_fail "resize of the differencing VHD: $(cat "$HV_TMP/r5.txt")"
wait "$bench3" || hv_fail "writer during the differencing resize: $(tail -3 "$HV_TMP/bench3.txt")"
grep -q "Run completed" "$HV_TMP/bench3.txt" || hv_fail "writer: $(tail -3 "$HV_TMP/bench3.txt")"
[ "$(capacity 3)" = $((127 * G + 4096)) ] || hv_fail "differencing VHD: capacity $(capacity 3)"
hvctl disk resize rs --controller 0 --slot 3 2040G >"$HV_TMP/r6.txt" 2>&1 ||
    hv_fail "resize of the differencing VHD to 2040 GiB: $(cat "$HV_TMP/r6.txt")"
[ "$(capacity 3)" = $((2040 * G)) ] || hv_fail "differencing VHD: capacity $(capacity 3)"
if hvctl disk resize rs --controller 0 --slot 3 $((2040 * G + 512)) >"$HV_TMP/r7.txt" 2>&1; then
    hv_fail "a VHD larger than 2040 GiB was accepted"
fi
grep -q "2040 GiB" "$HV_TMP/r7.txt" || hv_fail "too large refused unclearly: $(cat "$HV_TMP/r7.txt")"
echo "too large refused: $(cat "$HV_TMP/r7.txt")"

[ "$(capacity 0)" = $((200 << 20)) ] || hv_fail "dynamic VHD: capacity $(capacity 0) after resize"
[ "$(capacity 1)" = $((24 << 20)) ] || hv_fail "fixed VHD: capacity $(capacity 1) after resize"
echo "READ CAPACITY(16) after resize: $(capacity 0) and $(capacity 1) bytes"

# The logged-in client carries on after the unit attention.
echo "write -P 0xa4 3M 64k" >&3
echo "read -P 0xa3 2M 64k" >&3
echo "read -P 0xa4 3M 64k" >&3
echo "quit" >&3
exec 3>&-
wait "$live" || hv_fail "the logged-in client failed: $(tail -3 "$HV_TMP/live.txt")"
grep -q "CAPACITY_DATA_HAS_CHANGED" "$HV_TMP/live.txt" ||
    hv_fail "the logged-in client saw no CAPACITY DATA HAS CHANGED: $(cat "$HV_TMP/live.txt")"
! grep -v "CheckCondition" "$HV_TMP/live.txt" | grep -qi "pattern verification failed\|error" ||
    hv_fail "the logged-in client: $(grep -i 'fail\|error' "$HV_TMP/live.txt" | head -3)"

# Old data intact, new space zero and writable, through fresh sessions.
qio 0 -c "read -P 0xa1 0 1M" -c "read -P 0xa2 63M 1M" -c "read -P 0 64M 136M" \
    -c "read -P 0x77 8M 48M" \
    -c "write -P 0xa5 199M 1M" -c "read -P 0xa5 199M 1M" -c flush
qio 1 -c "read -P 0xb1 0 1M" -c "read -P 0xb2 15M 1M" -c "read -P 0 16M 8M" \
    -c "write -P 0xb5 23M 1M" -c "read -P 0xb5 23M 1M" -c flush

qio 2 -c "read -P 0xc1 0 1M" -c "read -P 0xc2 $((10 * G - (1 << 20))) 1M" \
    -c "read -P 0x78 $((4 * G)) 48M" -c "read -P 0 $((10 * G)) 1M" -c "read -P 0 $((39 * G)) 1M" \
    -c "discard $((4 * G + (32 << 20))) 16M" -c "read -P 0 $((4 * G + (32 << 20))) 16M" \
    -c "read -P 0xc5 $((40 * G - (1 << 20))) 1M" -c "read -P 0 $((40 * G)) 1M" \
    -c "read -P 0 $((127 * G - (1 << 20))) 1M" -c "read -P 0xc4 $((6 * G)) 64k" \
    -c "write -P 0xc6 $((100 * G)) 1M" -c "read -P 0xc6 $((100 * G)) 1M" \
    -c "write -P 0xc7 $((127 * G - 61440)) 64k" -c "read -P 0xc7 $((127 * G - 61440)) 64k" -c flush
qio 3 -c "read -P 0xe1 $((20 * G)) 1M" -c "read -P 0xe2 $((39 * G)) 1M" \
    -c "read -P 0x79 $((30 * G)) 48M" -c "read -P 0 $((40 * G)) 1M" \
    -c "write -P 0xd1 $((2040 * G - (1 << 20))) 1M" -c "read -P 0xd1 $((2040 * G - (1 << 20))) 1M" \
    -c flush

hv_stop
hv_vhd_check "$HV_TMP/dyn.vhd" "of the dynamic VHD after SIGTERM"
hv_vhd_check "$HV_TMP/fixed.vhd" "of the fixed VHD after SIGTERM"
hv_vhd_check "$HV_TMP/d10g.vhd" "of the 10 GiB VHD grown to 127 GiB + 4 KiB after SIGTERM"
hv_vhd_check "$HV_TMP/child.vhd" "of the differencing VHD grown to 2040 GiB after SIGTERM"
hv_vhd_check "$HV_TMP/base40g.vhd" "of the differencing VHD's parent"
for f in dyn:$((200 << 20)) fixed:$((24 << 20)) d10g:$((127 * G + 4096)) child:$((2040 * G)); do
    size=$(qemu-img info --output=json -f vpc "$HV_TMP/${f%%:*}.vhd" | json_get - 'j["virtual-size"]')
    [ "$size" = "${f#*:}" ] || hv_fail "qemu-img sees ${f%%:*}.vhd as $size bytes"
    media=$(vhdiinfo "$HV_TMP/${f%%:*}.vhd" | sed -n 's/.*Media size.*(\([0-9]*\) bytes).*/\1/p')
    [ "$media" = "${f#*:}" ] || hv_fail "vhdiinfo sees ${f%%:*}.vhd as $media bytes"
done
echo "qemu-img and vhdiinfo read the new sizes"
qemu-io -f vpc -r "$HV_TMP/d10g.vhd" -c "read -P 0xc1 0 1M" -c "read -P 0x78 $((4 * G)) 32M" \
    -c "read -P 0 $((4 * G + (32 << 20))) 16M" \
    -c "read -P 0xc3 $((5 * G)) 64k" -c "read -P 0xc5 $((40 * G - (1 << 20))) 1M" \
    -c "read -P 0xc6 $((100 * G)) 1M" -c "read -P 0xc4 $((6 * G)) 64k" \
    -c "read -P 0xc7 $((127 * G - 61440)) 64k" \
    >"$HV_TMP/final2.txt" 2>&1
! grep -qi "pattern verification failed\|error" "$HV_TMP/final2.txt" ||
    hv_fail "qemu's vpc driver reads d10g.vhd differently: $(head -3 "$HV_TMP/final2.txt")"
# qemu's vpc driver reads a differencing image without its parent: only
# what the child holds.
qemu-io -f vpc -r "$HV_TMP/child.vhd" -c "read -P 0x79 $((30 * G)) 48M" -c "read -P 0xd1 $((2040 * G - (1 << 20))) 1M" \
    >"$HV_TMP/final3.txt" 2>&1
! grep -qi "pattern verification failed\|error" "$HV_TMP/final3.txt" ||
    hv_fail "qemu's vpc driver reads child.vhd differently: $(head -3 "$HV_TMP/final3.txt")"
qemu-io -f vpc -r "$HV_TMP/dyn.vhd" -c "read -P 0xa1 0 1M" -c "read -P 0xa4 3M 64k" \
    -c "read -P 0xa5 199M 1M" >"$HV_TMP/final.txt" 2>&1
! grep -qi "pattern verification failed\|error" "$HV_TMP/final.txt" ||
    hv_fail "qemu's vpc driver reads different data: $(head -3 "$HV_TMP/final.txt")"
echo "PASS"
