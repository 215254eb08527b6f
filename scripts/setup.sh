#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root, or with sudo):
#   scripts/setup.sh run    install what is missing, build, start the demo
#   scripts/setup.sh test   install what is missing, build, run the whole suite
#                           (plain build, then the ASan+UBSan build)
# Installing is idempotent: only Debian packages that are missing are fetched.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-run}
jobs=$(nproc)

packages=(
    # build
    gcc make cmake pkg-config clang libclang-rt-14-dev
    libaio-dev libblkid-dev libxxhash-dev libjansson-dev libcmocka-dev
    libiscsi-dev libfuse3-dev
    # run and test: real peers, not mocks
    fuse3 tgt qemu-utils libvhdi-utils libiscsi-bin qemu-system-x86 qemu-guest-agent
    linux-image-amd64 busybox-static e2fsprogs util-linux kmod cpio
    iproute2 procps psmisc python3
)

install_missing()
{
    local missing=() p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "setup: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

build()  # build DIR [cmake args...]
{
    local dir=$1; shift
    cmake -S "$top" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
}

case "$mode" in
run)
    install_missing
    build "$top/build"
    exec "$top/scripts/demo.sh" "$top/build"
    ;;
test)
    install_missing
    build "$top/build"
    (cd "$top/build" && ctest -j "$jobs" --output-on-failure --timeout 900)
    # The same suite under ASan+UBSan, less what only measures real guests
    # and is covered by the plain run (label "slow").
    build "$top/build-asan" -DHVSTOR_SANITIZE=ON
    (cd "$top/build-asan" && ctest -j "$jobs" --output-on-failure -LE slow --timeout 900)
    ;;
*)
    echo "usage: scripts/setup.sh run|test" >&2
    exit 2
    ;;
esac
