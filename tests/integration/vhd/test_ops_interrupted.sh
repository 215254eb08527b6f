#!/bin/bash
# `vhd resize` and `vhd merge` killed with SIGKILL at their switch points
# (HVSTOR_TEST_KILL_AT, a test-only hook in the library): `vhd check` must
# name the interrupted operation and what the image reads as, exit 3 (never
# 2), the data must read as that, and the named command must finish the job.
source "$(dirname "$0")/lib.sh"
need cmp

write_pattern()  # IMAGE OFFSET COUNT SIZE BYTE
{
    "$VHD" bench -w -q -o "$2" -c "$3" -s "$4" --pattern="$(($5))" "$1" ||
        fail "writing into $1"
}
killed_at()  # POINT COMMAND...: the command must die of SIGKILL there
{
    local point=$1 rc=0
    shift
    (HVSTOR_TEST_KILL_AT=$point exec "$@") >"$tmp/killed.log" 2>&1 || rc=$?
    [ "$rc" = 137 ] || fail "$* at $point: exit $rc, not killed: $(cat "$tmp/killed.log")"
}
check_says()  # IMAGE EXIT PATTERN
{
    local rc=0
    "$VHD" check "$1" >"$tmp/check.out" 2>&1 || rc=$?
    [ "$rc" = "$2" ] || fail "vhd check $1: exit $rc, want $2: $(cat "$tmp/check.out")"
    grep -q -- "$3" "$tmp/check.out" ||
        fail "vhd check $1 does not say '$3': $(cat "$tmp/check.out")"
}
clean() { "$VHD" check "$1" >/dev/null || fail "$1 is not clean: $("$VHD" check "$1")"; }
size_of() { "$VHD" info --json "$1" | json_field virtual-size; }

# ---------------------------------------------------------------- resize
for grow in 64M 16M; do
    img=$tmp/r$grow.vhd
    rm -f "$tmp"/r.*.raw
    "$VHD" create -t dynamic -s 32M "$img" >/dev/null
    write_pattern "$img" 0 4 1M 0x5a
    "$VHD" convert -O raw "$img" "$tmp/r.before.raw" >/dev/null
    killed_at resize-footer "$VHD" resize "$img" "$grow"
    want=$(($(numfmt --from=iec "$grow")))
    check_says "$img" 3 "interrupted resize: reads at the new size $want"
    grep -q "vhd repair" "$tmp/check.out" || fail "check does not name vhd repair"
    "$VHD" check --json "$img" >"$tmp/check.json" || true
    grep -q '"interrupted"' "$tmp/check.json" || fail "check --json: $(cat "$tmp/check.json")"
    [ "$(size_of "$img")" = "$want" ] || fail "$img does not read at $want after the kill"
    "$VHD" convert -O raw "$img" "$tmp/r.after.raw" >/dev/null
    cmp -n "$(numfmt --from=iec 16M)" "$tmp/r.before.raw" "$tmp/r.after.raw" ||
        fail "resize interrupted at the copy changed the data"
    "$VHD" repair "$img" >/dev/null || fail "vhd repair $img"
    clean "$img"
    note "resize to $grow killed between footer and copy: check exit 3, repaired clean"
done

# ---------------------------------------------------------------- merge
setup_chain()
{
    rm -f "$tmp"/m*.vhd "$tmp"/m*.vhd.merging "$tmp"/m.*.raw
    "$VHD" create -t dynamic -s 16M "$tmp/mbase.vhd" >/dev/null
    write_pattern "$tmp/mbase.vhd" 0 8 1M 0x11
    "$VHD" create -t differencing -b "$tmp/mbase.vhd" "$tmp/mc1.vhd" >/dev/null
    write_pattern "$tmp/mc1.vhd" 1M 2 1M 0x22
    "$VHD" create -t differencing -b "$tmp/mc1.vhd" "$tmp/mc2.vhd" >/dev/null
    write_pattern "$tmp/mc2.vhd" 3M 2 1M 0x33
    "$VHD" convert -O raw "$tmp/mc2.vhd" "$tmp/m.want.raw" >/dev/null
}
reads_want() { rm -f "$tmp/m.got.raw"; "$VHD" convert -O raw "$1" "$tmp/m.got.raw" >/dev/null &&
               cmp -s "$tmp/m.want.raw" "$tmp/m.got.raw" || fail "$1 does not read as it should"; }

# Killed while copying: reads as before, run again.
setup_chain
killed_at merge-copied "$VHD" merge --into "$tmp/mbase.vhd" "$tmp/mc2.vhd"
[ -f "$tmp/mbase.vhd.merging" ] || fail "no merge marker after a kill"
check_says "$tmp/mc2.vhd" 3 "interrupted: the chain reads as before; run \`vhd merge"
check_says "$tmp/mbase.vhd" 3 "reads as before"
reads_want "$tmp/mc2.vhd"
"$VHD" merge --into "$tmp/mbase.vhd" "$tmp/mc2.vhd" >/dev/null || fail "merge again"
[ ! -e "$tmp/mc2.vhd" ] && [ ! -e "$tmp/mbase.vhd.merging" ] || fail "merge left files behind"
clean "$tmp/mbase.vhd"
reads_want "$tmp/mbase.vhd"
note "merge killed while copying: check says before, merged again clean"

# Killed with the data durable, before any deletion: reads as after.
setup_chain
killed_at merge-durable "$VHD" merge --into "$tmp/mbase.vhd" "$tmp/mc2.vhd"
check_says "$tmp/mc2.vhd" 3 "the data is durable, .*mbase.vhd reads as after; run \`vhd merge"
check_says "$tmp/mbase.vhd" 3 "reads as after"
reads_want "$tmp/mbase.vhd"
"$VHD" merge --into "$tmp/mbase.vhd" "$tmp/mc2.vhd" >/dev/null || fail "merge again"
clean "$tmp/mbase.vhd"
note "merge killed with the data durable: check says after, merged again clean"

# Killed after deleting CHILD, before the intermediate child: only the
# ancestor can be asked, and it names what is left.
setup_chain
killed_at merge-deleting "$VHD" merge --into "$tmp/mbase.vhd" "$tmp/mc2.vhd"
[ ! -e "$tmp/mc2.vhd" ] && [ -e "$tmp/mc1.vhd" ] || fail "kill point merge-deleting misplaced"
check_says "$tmp/mbase.vhd" 3 "mc1.vhd) are no longer needed: delete them"
reads_want "$tmp/mbase.vhd"
rm "$tmp/mc1.vhd" "$tmp/mbase.vhd.merging"
clean "$tmp/mbase.vhd"
note "merge killed while deleting: check names the children left"
echo "PASS"
