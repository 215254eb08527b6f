#!/bin/bash
# san/'s command path against qemu's own libiscsi block driver on the same tgt
# LUN, in one run: `qemu-img bench` over iscsi:// versus `san-itest bench`
# issuing the same requests (same size, depth, offsets) through a
# san_session in the reactor. Prints both rates and san/qemu.
# Usage: HVSTOR_BUILD=build tests/bench/san/bench_san.sh
set -u
HVSTOR_BUILD=${HVSTOR_BUILD:-$(cd "$(dirname "$0")/../../.." && pwd)/build}
source "$(dirname "$0")/../../integration/san/tgt_lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"

T=$IQN_PREFIX:bench
fallocate -l 512M "$WORK/bench.img"
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T" || fail "target"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/bench.img" || fail "lun"
tgtadm_ --mode target --op bind --tid 1 --initiator-address ALL || fail "acl"
# warm the page cache under tgtd so both runs read the same memory
cat "$WORK/bench.img" > /dev/null

qemu_rate() { # count depth size [-w]
    local t
    t=$(qemu-img bench -f raw -c "$1" -d "$2" -s "$3" ${4:-} "iscsi://$PORTAL/$T/1" 2>&1 \
        | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
    [ -n "$t" ] || fail "qemu-img bench produced no timing"
    python3 -c "print(round($1 / $t))"
}
san_rate() {
    local line
    line=$("$SAN_ITEST" bench -p "$PORTAL" -t "$T" -i "$VM_A" -l 1 -c "$1" -d "$2" -s "$3" \
           ${4:-} 2>/dev/null | grep '^san:') || fail "san-itest bench failed"
    echo "$line" | sed -n 's/.* \([0-9]*\) requests\/s.*/\1/p'
}

printf "%-28s %12s %12s %8s\n" "workload" "qemu req/s" "san req/s" "san/qemu"
for spec in "20000 32 4096 " "20000 32 4096 -w" "4000 16 65536 " "4000 16 65536 -w"; do
    set -- $spec
    # best of three alternating runs each: the machine is shared
    q=0; s=0
    for _ in 1 2 3; do
        r=$(qemu_rate "$1" "$2" "$3" "${4:-}"); [ "$r" -gt "$q" ] && q=$r
        r=$(san_rate "$1" "$2" "$3" "${4:-}"); [ "$r" -gt "$s" ] && s=$r
    done
    if [ -n "${4:-}" ]; then op=write; else op=read; fi
    name="$(( $3 / 1024 )) KiB $op depth $2"
    printf "%-28s %12s %12s %8s\n" "$name" "$q" "$s" "$(python3 -c "print(f'{$s/$q:.2f}')")"
done
