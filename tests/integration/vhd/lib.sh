# Shared by the vhd integration tests (sourced, not a test itself).
# Gives: $VHD (the tool), $tmp (a scratch directory under /var/tmp, removed
# at exit), fail/note, need TOOL..., byte editing helpers for damaging
# images (od/dd/printf only, so nothing beyond coreutils is needed), vmount
# (vhd mount, sanitizer-aware) and vhdimount_cmp (libvhdi's view of an image).
set -euo pipefail

VHD=${HVSTOR_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/build/bin}/vhd
[ -x "$VHD" ] || { echo "SKIP: $VHD not built"; exit 77; }

tmp=$(mktemp -d /var/tmp/hvstor-vhd-test-XXXXXX)
cleanup_hooks=()
cleanup()
{
    local h
    for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
note() { echo "# $*"; }

need()
{
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
    done
}

# SIZE random bytes into FILE (content is compared, never hard-coded).
random_file() { head -c "$2" /dev/urandom >"$1"; }

# A raw image of SIZE bytes (multiple of 4 MiB) where every other 2 MiB
# (one VHD block) holds random data and the rest is zero (sparse): the
# "half-zero" image.
half_zero_raw()  # FILE SIZE
{
    local file=$1 chunks=$(($2 / 2097152)) i
    truncate -s "$2" "$file"
    for ((i = 0; i < chunks; i += 2)); do
        head -c 2097152 /dev/urandom | dd of="$file" bs=2M seek="$i" conv=notrunc status=none
    done
}

# Bytes [OFF, OFF+LEN) of FILE as decimal numbers, one per line.
bytes_at() { od -An -v -tu1 -j "$2" -N "$3" "$1" | tr -s ' ' '\n' | sed '/^$/d'; }

put_bytes()  # FILE OFF HEXSTRING (e.g. "ffffffff")
{
    local esc
    esc=$(printf '%s' "$3" | sed 's/../\\x&/g')
    printf "$esc" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# Flip the top bit of the byte at OFF: the byte sum (and so a VHD checksum)
# always changes, unlike writing a fixed value that may sum the same.
flip_byte()  # FILE OFF
{
    local b
    b=$(od -An -v -tu1 -j "$2" -N 1 "$1" | tr -d ' ')
    put_bytes "$1" "$2" "$(printf '%02x' $((b ^ 0x80)))"
}
put_be32() { put_bytes "$1" "$2" "$(printf '%08x' "$3")"; }
put_be64() { put_bytes "$1" "$2" "$(printf '%016x' "$3")"; }
get_be32() { od -An -v -tx1 -j "$2" -N 4 "$1" | tr -d ' \n' | sed 's/^/0x/' | xargs printf '%d\n'; }
get_be64() { od -An -v -tx1 -j "$2" -N 8 "$1" | tr -d ' \n' | sed 's/^/0x/' | xargs printf '%d\n'; }

# Recompute a checksum: ones' complement of the byte sum of LEN bytes at
# OFF with the 4 checksum bytes at OFF+AT counted as zero.
fix_checksum()  # FILE OFF LEN AT
{
    local file=$1 off=$2 len=$3 at=$4 sum
    put_be32 "$file" $((off + at)) 0
    sum=$(bytes_at "$file" "$off" "$len" | awk '{s += $1} END {print s}')
    put_be32 "$file" $((off + at)) $(((~sum) & 0xFFFFFFFF))
}
fix_footer_checksum() { fix_checksum "$1" "$2" 512 64; }
fix_header_checksum() { fix_checksum "$1" "$2" 1024 36; }

file_size() { stat -c %s "$1"; }

# vhd mount ARGS...: as a daemon; under the sanitizers in the foreground in
# the background instead, so that their reports land in a log we can read.
vmount()
{
    local i
    if [ "${HVSTOR_SANITIZE:-0}" = 1 ]; then
        "$VHD" mount -f "$@" 2>>"$tmp/daemon.log" &
        for ((i = 0; i < 100; i++)); do
            mountpoint -q "${@: -1}" && return 0
            sleep 0.1
        done
        cat "$tmp/daemon.log" >&2
        fail "foreground mount did not appear"
    fi
    "$VHD" mount "$@"
}

# libvhdi's vhdimount (FUSE 2) where the machine has it: has_vhdimount=1.
has_vhdimount=0
if command -v vhdimount >/dev/null && [ -c /dev/fuse ] && command -v fusermount >/dev/null; then
    has_vhdimount=1
fi

# IMAGE as vhdimount serves it must read as RAW (nothing is checked without
# vhdimount).
vhdimount_cmp()  # IMAGE RAW
{
    [ "$has_vhdimount" = 1 ] || return 0
    local mnt=$tmp/vhdimount i top
    if [ ! -d "$mnt" ]; then
        mkdir -p "$mnt"
        cleanup_hooks+=("mountpoint -q '$mnt' && fusermount -u '$mnt'")
    fi
    vhdimount "$1" "$mnt" >"$tmp/vhdimount.log" 2>&1 ||
        fail "vhdimount $1: $(cat "$tmp/vhdimount.log")"
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -e "$mnt/vhdi1" ] && break; sleep 0.2; done
    # vhdimount serves every layer of a chain, base first: vhdi1 is the
    # oldest parent, the last vhdiN the image itself over its parents.
    top=$(ls "$mnt" | sort -V | tail -1)
    cmp "$mnt/$top" "$2" || { fusermount -u "$mnt"; fail "vhdimount of $1 ($top) reads differently"; }
    fusermount -u "$mnt"
}

# Value of KEY in `vhd info --json` / qemu-img's JSON (numbers and strings).
json_field()  # KEY < json
{
    sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -1
}
