#!/usr/bin/env bash
# Build the initramfs of hvstor's test guest: busybox, the host kernel's
# virtio-scsi / SCSI disk / ext4 modules (dependencies resolved from
# modules.dep), mkfs.ext4 / e2fsck / fstrim with their shared libraries, and
# an /init that runs the steps named on the kernel command line
# (hvtest=ext4-trim), prints "HVSTOR-GUEST-RESULT: PASS|FAIL <why>" and
# powers off.
#
#   tests/guest/build-initramfs.sh [OPTIONS] OUT.cpio.gz [KERNEL_VERSION]
#
#   --module NAME     load this kernel module too (its dependencies first)
#   --bin PATH        copy this program to /sbin, with every library it needs
#   --file SRC:DST    copy one file (mode kept) to DST inside the guest
#   --init PATH       use this /init instead of tests/guest/init
#
# Every guest test builds its guest here, so the module, library and loader
# handling lives in one place; a test adds only what its guest runs.
# Uses the newest /boot/vmlinuz-* when KERNEL_VERSION is not given; prints the
# kernel image path on stdout so the caller boots the matching kernel.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage="usage: build-initramfs.sh [--module NAME]... [--bin PATH]... [--file SRC:DST]... [--init PATH] OUT.cpio.gz [KERNEL_VERSION]"
extra_modules=() extra_bins=() extra_files=() init_script=$here/init
while [ $# -gt 0 ]; do
    case "$1" in
    --module) extra_modules+=("${2:?$usage}"); shift 2 ;;
    --bin) extra_bins+=("${2:?$usage}"); shift 2 ;;
    --file) extra_files+=("${2:?$usage}"); shift 2 ;;
    --init) init_script=${2:?$usage}; shift 2 ;;
    --) shift; break ;;
    -*) echo "build-initramfs: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
    *) break ;;
    esac
done
out=${1:?$usage}
kver=${2:-}
if [ -z "$kver" ]; then
    kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$kernel" ] || { echo "build-initramfs: no /boot/vmlinuz-* (install linux-image-amd64)" >&2; exit 77; }
    kver=${kernel#/boot/vmlinuz-}
fi
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || { echo "build-initramfs: $kernel is not readable" >&2; exit 77; }
[ -f "$moddir/modules.dep" ] || { echo "build-initramfs: $moddir/modules.dep missing" >&2; exit 77; }
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
    # busybox-static installs a static /bin/busybox; the dynamic one would need its libraries.
    [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -n "$busybox" ] || { echo "build-initramfs: busybox not found (install busybox-static)" >&2; exit 77; }

root=$(mktemp -d "${TMPDIR:-/tmp}/hvstor-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,mnt,tmp,lib/modules,lib64,run}

cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Modules in load order: each one's dependencies (modules.dep lists them
# deepest last) before it, each file once.
wanted=(virtio_pci virtio_scsi sd_mod crc32c_generic ext4 ${extra_modules[@]+"${extra_modules[@]}"})
declare -A seen=()
order=()
add_module()   # add_module RELATIVE_PATH
{
    local rel=$1 dep line
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    line=$(grep -m1 "^$rel:" "$moddir/modules.dep" || true)
    for dep in ${line#*:}; do
        add_module "$dep"
    done
    order+=("$rel")
}
for m in "${wanted[@]}"; do
    rel=$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n);
                               gsub(/-/, "_", n); if (n == m) { print $1; exit } }' \
          "$moddir/modules.dep")
    if [ -z "$rel" ]; then
        # Built into the kernel: nothing to load.
        grep -q "/$m.ko" "$moddir/modules.builtin" 2>/dev/null ||
            echo "build-initramfs: module $m not found for $kver (assuming built in)" >&2
        continue
    fi
    add_module "$rel"
done
: >"$root/etc/modules"
for rel in "${order[@]}"; do
    name=$(basename "$rel")
    case "$name" in
    *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" >"$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *.ko.gz) gzip -dc "$moddir/$rel" >"$root/lib/modules/${name%.gz}"; name=${name%.gz} ;;
    *) cp "$moddir/$rel" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >>"$root/etc/modules"
done

# Real e2fsprogs and util-linux tools, with every library ldd names.
copy_with_libs()   # copy_with_libs BINARY
{
    local bin=$1 lib
    cp "$bin" "$root/sbin/$(basename "$bin")"
    for lib in $(ldd "$bin" | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }'); do
        [ -f "$lib" ] || continue
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
}
for tool in mke2fs e2fsck fstrim; do
    path=$(command -v "$tool" || ls /sbin/$tool /usr/sbin/$tool 2>/dev/null | head -1 || true)
    [ -n "$path" ] || { echo "build-initramfs: $tool not found (e2fsprogs, util-linux)" >&2; exit 77; }
    copy_with_libs "$path"
done
for bin in ${extra_bins[@]+"${extra_bins[@]}"}; do
    [ -x "$bin" ] || { echo "build-initramfs: $bin is not an executable" >&2; exit 1; }
    copy_with_libs "$bin"
done
for spec in ${extra_files[@]+"${extra_files[@]}"}; do
    src=${spec%%:*} dst=${spec#*:}
    [ -f "$src" ] && [ "$dst" != "$spec" ] || { echo "build-initramfs: --file $spec: need SRC:DST with SRC a file" >&2; exit 1; }
    mkdir -p "$root$(dirname "$dst")"
    cp -p "$src" "$root$dst"
done
# The dynamic loader at the path the binaries ask for.
interp=$(readelf -l "$(command -v mke2fs || echo /sbin/mke2fs)" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
mkdir -p "$root$(dirname "$interp")"
cp -L "$interp" "$root$interp"
ln -sf /sbin/mke2fs "$root/sbin/mkfs.ext4"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"

install -m 0755 "$init_script" "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
echo "$kernel"
