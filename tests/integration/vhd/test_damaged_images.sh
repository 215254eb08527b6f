#!/usr/bin/env bash
# A corpus of damaged images, made here from good ones: `vhd check`, `info`
# and `convert` must fail cleanly on each (a message naming the file, a
# non-zero exit), never crash (signal), hang (timeout) or write to the
# damaged files (sha256 before and after).
source "$(dirname "$0")/lib.sh"

# --- a good dynamic image with several allocated blocks, 1 MiB... -------
half_zero_raw "$tmp/data.raw" $((16 * 1048576))
"$VHD" convert -O vhd "$tmp/data.raw" "$tmp/good.vhd" >/dev/null
"$VHD" check "$tmp/good.vhd" >/dev/null || fail "the good image does not check clean"

size=$(file_size "$tmp/good.vhd")
foot=$((size - 512))
hdr=$(get_be64 "$tmp/good.vhd" 16)            # footer.data_offset
bat=$(get_be64 "$tmp/good.vhd" $((hdr + 16)))  # header.table_offset
entries=$(get_be32 "$tmp/good.vhd" $((hdr + 28)))
b0=$(get_be32 "$tmp/good.vhd" "$bat")
note "good.vhd: $size bytes, header at $hdr, BAT at $bat ($entries entries), block 0 at sector $b0"
[ "$b0" != 4294967295 ] || fail "block 0 of the half-zero image is not allocated"

cases=()
mkcase()  # NAME: copy of good.vhd to edit
{
    mkdir -p "$tmp/$1"
    cp --sparse=always "$tmp/good.vhd" "$tmp/$1/image.vhd"
    cases+=("$1")
}
img() { echo "$tmp/$1/image.vhd"; }
both_footers()  # CASE FUNC ARGS...: apply an edit to the footer and its copy
{
    local f; f=$(img "$1"); shift
    "$@" "$f" 0
    "$@" "$f" "$foot"
    fix_footer_checksum "$f" 0
    fix_footer_checksum "$f" "$foot"
}

mkcase bad_footer_checksum;      flip_byte "$(img bad_footer_checksum)" $((foot + 70))
mkcase bad_footer_and_copy;      flip_byte "$(img bad_footer_and_copy)" $((foot + 70))
                                 flip_byte "$(img bad_footer_and_copy)" 70
mkcase bad_header_checksum;      flip_byte "$(img bad_header_checksum)" $((hdr + 64))
mkcase bad_cookie_footer;        put_bytes "$(img bad_cookie_footer)" "$foot" "636f6e6563746979"
                                 fix_footer_checksum "$(img bad_cookie_footer)" "$foot"
mkcase bad_cookie_header;        put_bytes "$(img bad_cookie_header)" "$hdr" "6378737061727379"
                                 fix_header_checksum "$(img bad_cookie_header)" "$hdr"
mkcase footer_copy_mismatch;     put_be64 "$(img footer_copy_mismatch)" 48 $((32 * 1048576))
                                 fix_footer_checksum "$(img footer_copy_mismatch)" 0
size_huge() { put_be64 "$1" $(($2 + 48)) $((1 << 62)); }
mkcase impossible_size_huge;     both_footers impossible_size_huge size_huge
size_beyond_bat() { put_be64 "$1" $(($2 + 48)) $((entries * 2097152 * 4)); }
mkcase size_beyond_bat;          both_footers size_beyond_bat size_beyond_bat
size_odd() { put_be64 "$1" $(($2 + 48)) 1000001; }
mkcase size_not_sectors;         both_footers size_not_sectors size_odd
type_bad() { put_be32 "$1" $(($2 + 60)) 7; }
mkcase bad_disk_type;            both_footers bad_disk_type type_bad
offset_out() { put_be64 "$1" $(($2 + 16)) $((size * 4)); }
mkcase header_offset_outside;    both_footers header_offset_outside offset_out
mkcase bat_entry_outside;        put_be32 "$(img bat_entry_outside)" "$bat" $((0x7FFFFFF0))
# Two allocated entries, the second pointed 8 sectors into the first's block.
low=-1; other=-1
for ((i = 0; i < entries; i++)); do
    e=$(get_be32 "$tmp/good.vhd" $((bat + 4 * i)))
    [ "$e" = 4294967295 ] && continue
    if [ "$low" = -1 ] || [ "$e" -lt "$(get_be32 "$tmp/good.vhd" $((bat + 4 * low)))" ]; then
        [ "$low" != -1 ] && other=$low
        low=$i
    else
        other=$i
    fi
done
[ "$other" != -1 ] || fail "fewer than two allocated blocks in good.vhd"
mkcase bat_entries_overlap;      put_be32 "$(img bat_entries_overlap)" $((bat + 4 * other)) \
                                     $(($(get_be32 "$tmp/good.vhd" $((bat + 4 * low))) + 8))
mkcase bat_overlaps_header;      put_be32 "$(img bat_overlaps_header)" "$bat" $((hdr / 512))
mkcase bat_overlaps_bat;         put_be32 "$(img bat_overlaps_bat)" "$bat" $((bat / 512))
mkcase huge_max_table_entries;   put_be32 "$(img huge_max_table_entries)" $((hdr + 28)) $((0xFFFFFFF0))
                                 fix_header_checksum "$(img huge_max_table_entries)" "$hdr"
mkcase few_max_table_entries;    put_be32 "$(img few_max_table_entries)" $((hdr + 28)) 1
                                 fix_header_checksum "$(img few_max_table_entries)" "$hdr"
mkcase bad_block_size;           put_be32 "$(img bad_block_size)" $((hdr + 32)) 1536
                                 fix_header_checksum "$(img bad_block_size)" "$hdr"
mkcase zero_block_size;          put_be32 "$(img zero_block_size)" $((hdr + 32)) 0
                                 fix_header_checksum "$(img zero_block_size)" "$hdr"
mkcase bat_offset_outside;       put_be64 "$(img bat_offset_outside)" $((hdr + 16)) $((size * 8))
                                 fix_header_checksum "$(img bat_offset_outside)" "$hdr"
mkcase truncated_half;           truncate -s $((size / 2)) "$(img truncated_half)"
mkcase truncated_tiny;           truncate -s 100 "$(img truncated_tiny)"
mkcase truncated_header;         truncate -s $((hdr + 300)) "$(img truncated_header)"

# A fixed image with damage of its own.
"$VHD" create --type fixed --size 3M "$tmp/fixed.vhd" >/dev/null
fsize=$(file_size "$tmp/fixed.vhd")
mkdir -p "$tmp/fixed_bad_checksum" "$tmp/fixed_truncated" "$tmp/fixed_size_larger"
cp "$tmp/fixed.vhd" "$tmp/fixed_bad_checksum/image.vhd"
flip_byte "$tmp/fixed_bad_checksum/image.vhd" $((fsize - 512 + 70))
head -c $((fsize - 4096)) "$tmp/fixed.vhd" >"$tmp/fixed_truncated/image.vhd"
cp "$tmp/fixed.vhd" "$tmp/fixed_size_larger/image.vhd"
put_be64 "$tmp/fixed_size_larger/image.vhd" $((fsize - 512 + 48)) $((64 * 1048576))
fix_footer_checksum "$tmp/fixed_size_larger/image.vhd" $((fsize - 512))
cases+=(fixed_bad_checksum fixed_truncated fixed_size_larger)

# A loop in a parent chain: a child whose recorded parent identity is its
# own, with a copy of itself at the parent's path, so following the chain
# comes back to the same image forever.
mkdir -p "$tmp/parent_loop"
"$VHD" create --type dynamic --size 4M "$tmp/parent_loop/base.vhd" >/dev/null
(cd "$tmp/parent_loop" && "$VHD" create --type differencing --parent base.vhd image.vhd >/dev/null)
loopimg=$tmp/parent_loop/image.vhd
lsize=$(file_size "$loopimg")
lhdr=$(get_be64 "$loopimg" 16)
dd if="$loopimg" of="$loopimg" bs=1 skip=$((lsize - 512 + 68)) seek=$((lhdr + 40)) count=16 \
   conv=notrunc status=none                                    # parent uuid := own uuid
dd if="$loopimg" of="$loopimg" bs=1 skip=$((lsize - 512 + 24)) seek=$((lhdr + 56)) count=4 \
   conv=notrunc status=none                                    # parent time := own time
fix_header_checksum "$loopimg" "$lhdr"
cp "$loopimg" "$tmp/parent_loop/base.vhd"
cases+=(parent_loop)

# A differencing image whose parent is gone, and one whose parent changed.
mkdir -p "$tmp/parent_missing" "$tmp/parent_mismatch"
"$VHD" create --type dynamic --size 4M "$tmp/parent_missing/base.vhd" >/dev/null
(cd "$tmp/parent_missing" && "$VHD" create --parent base.vhd image.vhd >/dev/null)
rm "$tmp/parent_missing/base.vhd"
"$VHD" create --type dynamic --size 4M "$tmp/parent_mismatch/base.vhd" >/dev/null
(cd "$tmp/parent_mismatch" && "$VHD" create --parent base.vhd image.vhd >/dev/null)
rm "$tmp/parent_mismatch/base.vhd"
"$VHD" create --type dynamic --size 4M "$tmp/parent_mismatch/base.vhd" >/dev/null
cases+=(parent_missing parent_mismatch)

# Cases whose metadata of the image itself is sound (the damage is in the
# chain): `check` looks at one file and may call them clean; opening them
# (info is per file too, convert opens the chain) must fail.
chain_only=" parent_loop parent_missing parent_mismatch "

run()  # LOGNAME CMD...: run with a time limit; prints the exit status
{
    local log=$1; shift
    local rc=0
    timeout -k 5 60 "$@" >"$log.out" 2>"$log.err" || rc=$?
    echo "$rc"
}

failures=0
bad() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

for c in "${cases[@]}"; do
    dir=$tmp/$c
    f=$dir/image.vhd
    before=$(cd "$dir" && sha256sum -- * | sort)
    for sub in check info convert; do
        log=$tmp/log.$c.$sub
        case $sub in
        check) rc=$(run "$log" "$VHD" check "$f") ;;
        info) rc=$(run "$log" "$VHD" info "$f") ;;
        convert) rc=$(run "$log" "$VHD" convert -f vhd -O raw "$f" "$tmp/out.$c.raw") ;;
        esac
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            bad "$c: vhd $sub hung (killed after 60 s)"
            continue
        fi
        if [ "$rc" -ge 128 ]; then
            bad "$c: vhd $sub died of signal $((rc - 128)): $(head -c 300 "$log.err")"
            continue
        fi
        if grep -q "AddressSanitizer\|runtime error" "$log.err"; then
            bad "$c: vhd $sub: sanitizer report: $(grep -m1 "ERROR\|runtime error" "$log.err")"
        fi
        case $sub in
        check)
            if [[ $chain_only == *" $c "* ]]; then
                [ "$rc" -le 3 ] || bad "$c: vhd check exit $rc"
            elif [ "$rc" != 2 ] && [ "$rc" != 1 ]; then
                bad "$c: vhd check exit $rc, expected 2 (corrupt) or 1 (cannot check): $(cat "$log.out")"
            fi
            if [ "$rc" = 2 ] && ! grep -q "ERROR" "$log.out"; then
                bad "$c: vhd check exit 2 without listing a problem"
            fi
            ;;
        info)
            # info shows one file's metadata; a bad checksum with the rest
            # intact may be shown (with the checksum marked BAD) instead.
            if [ "$rc" = 0 ]; then
                case $c in
                bad_footer_checksum|bad_header_checksum|footer_copy_mismatch|fixed_bad_checksum|parent_*) ;;
                *) bad "$c: vhd info accepted a damaged image: $(head -3 "$log.out")" ;;
                esac
                if [[ $c == bad_*checksum || $c == fixed_bad_checksum ]] && ! grep -q BAD "$log.out"; then
                    bad "$c: vhd info did not mark the bad checksum"
                fi
            fi
            ;;
        convert)
            if [ "$rc" = 0 ]; then
                case $c in
                bad_footer_checksum|footer_copy_mismatch) ;;  # readable from the intact copy
                *) bad "$c: vhd convert accepted a damaged image" ;;
                esac
            elif [ -e "$tmp/out.$c.raw" ]; then
                bad "$c: vhd convert failed but left $tmp/out.$c.raw behind"
            fi
            ;;
        esac
        # check lists problems on stdout, the others report on stderr
        if [ "$rc" != 0 ] && ! cat "$log.err" "$log.out" | grep -q -e "$f" -e "$dir/"; then
            bad "$c: vhd $sub failed without naming the file: $(head -c 300 "$log.err")"
        fi
        rm -f "$tmp/out.$c.raw"
    done
    after=$(cd "$dir" && sha256sum -- * | sort)
    [ "$before" = "$after" ] || bad "$c: the damaged files were modified"
    note "$c: check '$(head -1 "$tmp/log.$c.check.out" "$tmp/log.$c.check.err" 2>/dev/null | grep -v '^==>' | grep -v '^$' | head -1)'"
done

[ "$failures" = 0 ] || fail "$failures problems over ${#cases[@]} damaged images"
echo "PASS: ${#cases[@]} damaged images, check/info/convert fail cleanly and write nothing"
