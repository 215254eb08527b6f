#!/bin/bash
# Freeze/thaw cost of hvstor-vss against util-linux fsfreeze, the real peer,
# on the same loop-mounted ext4 in the same run: idle, and with 16 MiB of
# dirty data that the freeze must sync. Prints medians and ratios.
#   HVSTOR_BIN=build/bin bash tests/bench/vss-agent/bench_freeze.sh [ROUNDS]
# Only the benchmark's own loop filesystem is ever frozen (--fs).
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../../integration/vss-agent/lib.sh"
ROUNDS=${1:-15}

now_us() { echo $(( $(date +%s%N) / 1000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
field() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -1 | cut -d: -f2; }

make_fs
check_only_our_fs
start_agent --thaw-timeout 60
open_client

for mode in idle dirty; do
    : >"$WORK/agent_freeze"; : >"$WORK/agent_thaw"; : >"$WORK/agent_rt"
    : >"$WORK/peer_freeze"; : >"$WORK/peer_thaw"
    for ((i = 0; i < ROUNDS; i++)); do
        [ $mode = dirty ] && dd if=/dev/urandom of="$MNT/d" bs=1M count=16 status=none
        t0=$(now_us)
        req "{\"id\":$i,\"cmd\":\"freeze\"}"
        t1=$(now_us)
        expect '"state":"frozen"'
        field filesystems_us "$R" >>"$WORK/agent_freeze"
        echo $((t1 - t0)) >>"$WORK/agent_rt"
        req "{\"id\":$i,\"cmd\":\"thaw\"}"
        expect '"ok":true'
        field filesystems_us "$R" >>"$WORK/agent_thaw"

        [ $mode = dirty ] && dd if=/dev/urandom of="$MNT/d" bs=1M count=16 status=none
        t0=$(now_us); fsfreeze -f "$MNT"; t1=$(now_us); fsfreeze -u "$MNT"; t2=$(now_us)
        echo $((t1 - t0)) >>"$WORK/peer_freeze"
        echo $((t2 - t1)) >>"$WORK/peer_thaw"
    done
    af=$(median <"$WORK/agent_freeze"); at=$(median <"$WORK/agent_thaw")
    ar=$(median <"$WORK/agent_rt")
    pf=$(median <"$WORK/peer_freeze"); pt=$(median <"$WORK/peer_thaw")
    printf '%-5s freeze: agent FIFREEZE %6d us (request round trip %6d us), fsfreeze -f %6d us, ratio %.2f\n' \
        $mode "$af" "$ar" "$pf" "$(awk "BEGIN {print $ar / ($pf ? $pf : 1)}")"
    printf '%-5s thaw:   agent FITHAW   %6d us,                             fsfreeze -u %6d us\n' \
        $mode "$at" "$pt"
done
close_client
stop_agent
finish
