#!/bin/bash
# Who may reach what: an initiator outside a target's ACL is refused with
# authorization failure, an unknown target with "not found", CHAP (one-way
# and mutual) admits the right secret and refuses a wrong one, and
# discovery shows each initiator only the targets it may use.
. "$(dirname "$0")/iscsi_lib.sh"
need iscsi-inq iscsi-ls

A=iqn.2026-01.org.hvstor.test:vm-a.c0
B=iqn.2026-01.org.hvstor.test:vm-b.c0
IA=iqn.2026-01.org.hvstor.test:guest-a
IB=iqn.2026-01.org.hvstor.test:guest-b
truncate -s 16M "$WORK/a.img" "$WORK/b.img"
start_testd --target "$A" --allow "$IA" --chap alice:alice-secret-1 --mutual vm-a:target-secret-a \
    --raw "$WORK/a.img" --target "$B" --allow "$IB" --raw "$WORK/b.img"
H=127.0.0.1:$PORT

# B has no CHAP: its own initiator gets in, anybody else is refused.
iscsi-inq -i "$IB" "iscsi://$H/$B/0" >/dev/null || fail "allowed initiator refused on $B"
expect_fail "initiator of A logging in to B" iscsi-inq -i "$IA" "iscsi://$H/$B/0"
grep -q "Authorization failure" "$WORK/expect_fail.out" || fail "wrong status: $(cat "$WORK/expect_fail.out")"
expect_fail "unknown target" iscsi-inq -i "$IB" "iscsi://$H/$B.nope/0"
grep -q "Target not found" "$WORK/expect_fail.out" || fail "wrong status: $(cat "$WORK/expect_fail.out")"

# A: one-way CHAP.
iscsi-inq -i "$IA" "iscsi://alice%alice-secret-1@$H/$A/0" >/dev/null || fail "right CHAP refused"
expect_fail "wrong CHAP secret" iscsi-inq -i "$IA" "iscsi://alice%wrong@$H/$A/0"
grep -q "Authentication failure" "$WORK/expect_fail.out" || fail "wrong status: $(cat "$WORK/expect_fail.out")"
expect_fail "wrong CHAP user" iscsi-inq -i "$IA" "iscsi://mallory%alice-secret-1@$H/$A/0"
expect_fail "no CHAP at all" iscsi-inq -i "$IA" "iscsi://$H/$A/0"
expect_fail "right CHAP, wrong initiator" iscsi-inq -i "$IB" "iscsi://alice%alice-secret-1@$H/$A/0"
grep -q "Authorization failure" "$WORK/expect_fail.out" || fail "wrong status: $(cat "$WORK/expect_fail.out")"

# A: mutual CHAP; the initiator checks the target's answer.
LIBISCSI_CHAP_TARGET_USERNAME=vm-a LIBISCSI_CHAP_TARGET_PASSWORD=target-secret-a \
    iscsi-inq -i "$IA" "iscsi://alice%alice-secret-1@$H/$A/0" >/dev/null || fail "mutual CHAP refused"
LIBISCSI_CHAP_TARGET_USERNAME=vm-a LIBISCSI_CHAP_TARGET_PASSWORD=not-the-target \
    expect_fail "mutual CHAP with the wrong target secret" \
    iscsi-inq -i "$IA" "iscsi://alice%alice-secret-1@$H/$A/0"
grep -q "Invalid CHAP_R response from the target" "$WORK/expect_fail.out" ||
    fail "initiator did not catch the target's wrong answer: $(cat "$WORK/expect_fail.out")"

# Discovery: each guest sees its own target only; a stranger sees none.
iscsi-ls -i "$IA" "iscsi://alice%alice-secret-1@$H" >"$WORK/ls-a" || fail "discovery for A"
# A needs CHAP, so its discovery does too: no or a wrong secret is refused.
expect_fail "discovery for A without CHAP" iscsi-ls -i "$IA" "iscsi://$H"
expect_fail "discovery for A, wrong secret" iscsi-ls -i "$IA" "iscsi://alice%wrong@$H"
iscsi-ls -i "$IB" "iscsi://$H" >"$WORK/ls-b" || fail "discovery for B"
iscsi-ls -i iqn.2026-01.org.hvstor.test:stranger "iscsi://$H" >"$WORK/ls-x" || fail "discovery for a stranger"
grep -q "Target:$A " "$WORK/ls-a" && ! grep -q "$B" "$WORK/ls-a" || fail "A's discovery: $(cat "$WORK/ls-a")"
grep -q "Target:$B " "$WORK/ls-b" && ! grep -q "$A" "$WORK/ls-b" || fail "B's discovery: $(cat "$WORK/ls-b")"
! grep -q "Target:" "$WORK/ls-x" || fail "a stranger discovered: $(cat "$WORK/ls-x")"

stop_testd
echo "ok"
