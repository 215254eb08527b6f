#!/bin/bash
# The cost of SCSI emulation on the I/O path: builds bench_scsi_disk against
# an existing build tree and runs it on a scratch file, printing bdev-direct
# and through-SCSI rates and their ratio.
#   tests/bench/hv/bench_scsi_disk.sh [BUILD_DIR] [seconds] [queue-depth] [block-bytes]
set -euo pipefail
src=$(cd "$(dirname "$0")/../../.." && pwd)
build=${1:-$src/build}
seconds=${2:-3}
depth=${3:-32}
bs=${4:-4096}
# BENCH_DIR=/dev/shm measures CPU cost alone (page cache, no device)
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hvstor-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
cc -O2 -D_FILE_OFFSET_BITS=64 -I"$src/common" -I"$src/hv" \
    "$src/tests/bench/hv/bench_scsi_disk.c" -o "$work/bench_scsi_disk" \
    "$build/hv/libhvstor_hv.a" "$build/common/libhvstor_common.a" \
    -laio $(pkg-config --libs jansson libxxhash)
# 1 GiB, fully written so reads hit allocated blocks
dd if=/dev/zero of="$work/disk.img" bs=1M count=1024 status=none
"$work/bench_scsi_disk" "$work/disk.img" "$seconds" "$depth" "$bs"
