#!/usr/bin/env bash
# The README's "run": start hvstord on an embedded default and show how to
# use it.
#
#   scripts/demo.sh BUILD_DIR            serve until Ctrl-C
#   scripts/demo.sh BUILD_DIR --check    start, read the demo disk over
#                                        iscsi:// with qemu-img, stop (tests)
#
# The state lives in BUILD_DIR/demo-state: a VM "demo" with an 8 GiB dynamic
# VHD on controller 0, LUN 0. It accepts QEMU's default initiator names
# (iqn.2008-11.org.linux-kvm, which qemu-img sends, and ...:demo, which
# `qemu-system-x86_64 -name demo` sends), so the printed commands work as is.
set -euo pipefail

build=${1:?usage: scripts/demo.sh BUILD_DIR [--check]}
mode=${2:-serve}
build=$(cd "$build" && pwd)
bin=$build/bin
for b in hvstord hvctl; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b is not built (cmake --build $build)" >&2; exit 1; }
done

if [ "$mode" = --check ]; then
    state=$(mktemp -d "$build/demo-check.XXXXXX")
    portal=127.0.0.1:0
else
    state=$build/demo-state
    # The standard iSCSI port when it is free, any free port otherwise.
    portal=127.0.0.1:3260
    if ss -Hltn 'sport = :3260' 2>/dev/null | grep -q .; then
        portal=127.0.0.1:0
    fi
fi
mkdir -p "$state"
log=$state/hvstord.log
hvctl() { "$bin/hvctl" --state-dir "$state" "$@"; }

rm -f "$state/portal"
# tee ignores Ctrl-C so that the shutdown lines still reach the terminal and the log.
"$bin/hvstord" --state-dir "$state" --portal "$portal" 2> >(trap "" INT TERM; exec tee -a "$log" >&2) >/dev/null &
pid=$!
stop()
{
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    fi
}
trap stop EXIT
for _ in $(seq 100); do
    [ -S "$state/hvstord.sock" ] && [ -s "$state/portal" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "demo: hvstord did not start (see $log)" >&2; exit 1; }
    sleep 0.1
done
[ -s "$state/portal" ] || { echo "demo: hvstord did not start in 10 s" >&2; exit 1; }
portal=$(cat "$state/portal")

if ! hvctl vm show demo >/dev/null 2>&1; then
    hvctl vm create demo --initiator iqn.2008-11.org.linux-kvm \
        --initiator iqn.2008-11.org.linux-kvm:demo >/dev/null
fi
if ! hvctl --json vm show demo | grep -q '"lun": 0'; then
    if [ -e "$state/demo.vhd" ]; then
        hvctl disk attach demo --controller 0 --slot 0 --vhd "$state/demo.vhd" >/dev/null
    else
        hvctl disk attach demo --controller 0 --slot 0 --vhd "$state/demo.vhd" --create 8G >/dev/null
    fi
fi
target=iqn.2026-11.org.hvstor:demo.c0
url=iscsi://$portal/$target/0
kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)

if [ "$mode" = --check ]; then
    qemu-img info "$url"
    qemu-io -c "write -P 0x5c 1M 64k" -c "read -P 0x5c 1M 64k" "$url" | grep -v '^ *$'
    stop
    trap - EXIT
    rm -rf "$state"
    echo "demo check: OK"
    exit 0
fi

cat <<EOF

hvstord is serving VM "demo" (state in $state, log in $log).

  iSCSI URL of its disk (8 GiB dynamic VHD, $state/demo.vhd):
    $url

  Look at it and write to it with qemu's tools:
    qemu-img info $url
    qemu-io -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' $url

  Boot a guest on it (the guest's kernel drives the virtual SCSI controller):
    qemu-system-x86_64 -machine accel=tcg -m 512 -nographic -name demo \\
      -kernel ${kernel:-/boot/vmlinuz-VERSION} -append console=ttyS0 \\
      -device virtio-scsi-pci,id=scsi0 \\
      -drive file.driver=iscsi,file.portal=$portal,file.target=$target,file.lun=0,if=none,id=d0 \\
      -device scsi-hd,drive=d0,bus=scsi0.0

  Manage it:
    $bin/hvctl --state-dir $state vm show demo
    $bin/hvctl --state-dir $state disk stats demo

Ctrl-C stops hvstord cleanly (in-flight I/O drains, the VHD is flushed).
EOF
trap 'stop; exit 0' INT TERM
wait "$pid"
