# Helpers for the san/ integration tests: a private tgtd (tests/testlib/tgtd.sh)
# on a free loopback port with its own control socket (-C), stopped on exit
# even on failure. Sourced by test_*.sh; not a test itself.

source "$(dirname "${BASH_SOURCE[0]}")/../../testlib/tgtd.sh"

SAN_ITEST=${HVSTOR_BUILD:?HVSTOR_BUILD not set}/tests/integration/san-itest
IQN_PREFIX=iqn.2026-11.org.hvstor.test
VM_A=iqn.2026-11.org.hvstor:vm.alpha
VM_B=iqn.2026-11.org.hvstor:vm.bravo
VM_C=iqn.2026-11.org.hvstor:vm.charlie

tgt_require
[ -x "$SAN_ITEST" ] || fail "$SAN_ITEST not built"

WORK=$(mktemp -d /var/tmp/hvstor-san-XXXXXX)
tgt_pick_ports
cleanup() {
    tgt_cleanup
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
