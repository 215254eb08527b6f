#!/usr/bin/env bash
# The README's run command works: scripts/demo.sh starts hvstord on its
# embedded default, and qemu-img/qemu-io reach the demo disk over iscsi://.
set -euo pipefail
: "${HVSTOR_BUILD:?}" "${HVSTOR_SRC:?}"
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || { echo "SKIP: qemu-utils"; exit 77; }
[ -x "$HVSTOR_BUILD/bin/hvstord" ] || { echo "SKIP: hvstord not built"; exit 77; }
out=$("$HVSTOR_SRC/scripts/demo.sh" "$HVSTOR_BUILD" --check 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -q "virtual size: 8 GiB" || { echo "FAIL: demo disk is not 8 GiB: $out"; exit 1; }
echo "$out" | grep -q "demo check: OK" || { echo "FAIL: $out"; exit 1; }
echo PASS
