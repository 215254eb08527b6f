#!/bin/bash
# libiscsi's conformance suite against the hv/iscsi target:
#   iscsi-test-cu -d iscsi://127.0.0.1:PORT/<target>/0
# on a VHD-backed LUN when this build has the VHD engine (a raw file
# otherwise), with both of the suite's initiator names allowed. Prints the
# pass count and every failing test; fails when a test fails that is not in
# iscsi_conformance_known_failures.txt (each listed with its reason), so a
# regression shows while known gaps stay documented. Takes about a minute
# (labels integration and slow, from its name).
. "$(dirname "$0")/iscsi_lib.sh"
need iscsi-test-cu python3 qemu-img

T=iqn.2026-01.org.hvstor.test:conformance
I1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
I2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2
KNOWN="$(dirname "$0")/iscsi_conformance_known_failures.txt"

# A dynamic VHD when iscsi-testd has the VHD engine; a raw file otherwise.
LUN=(--raw "$WORK/disk.img")
truncate -s 256M "$WORK/disk.img"
if qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$WORK/disk.vhd" 256M; then
    "$TESTD" --port 0 --port-file "$WORK/probe" --target probe --vhd "$WORK/disk.vhd" \
        >/dev/null 2>"$WORK/probe.log" &
    probe=$!
    for _ in $(seq 100); do
        [ -s "$WORK/probe" ] && break
        kill -0 "$probe" 2>/dev/null || break
        sleep 0.05
    done
    [ -s "$WORK/probe" ] && LUN=(--vhd "$WORK/disk.vhd")
    kill "$probe" 2>/dev/null || true
    wait "$probe" 2>/dev/null || true
fi
echo "LUN: ${LUN[*]}"
start_testd --target "$T" --allow "$I1" --allow "$I2" "${LUN[@]}"

start=$(date +%s)
(cd "$WORK" && iscsi-test-cu -d -x "iscsi://127.0.0.1:$PORT/$T/0" >"$WORK/cu.log" 2>&1) || true
echo "iscsi-test-cu ran $(( $(date +%s) - start )) s"
[ -s "$WORK/CUnitAutomated-Results.xml" ] || fail "iscsi-test-cu wrote no results: $(tail -5 "$WORK/cu.log")"

python3 - "$WORK/CUnitAutomated-Results.xml" "$KNOWN" "$WORK/cu.log" <<'PY'
import re, sys, xml.etree.ElementTree as ET
results, known_path, log = sys.argv[1:4]
root = ET.parse(results).getroot()
summary = None
for rec in root.iter("CUNIT_RUN_SUMMARY_RECORD"):
    if rec.find("TYPE").text.strip() == "Test Cases":
        summary = [int(rec.find(k).text) for k in ("TOTAL", "SUCCEEDED", "FAILED")]
failed = {}
for suite in root.iter("CUNIT_RUN_SUITE_SUCCESS"):
    name = suite.find("SUITE_NAME").text.strip()
    for f in suite.iter("CUNIT_RUN_TEST_FAILURE"):
        test = f.find("TEST_NAME").text.strip()
        where = "%s:%s" % (f.find("FILE_NAME").text.strip(), f.find("LINE_NUMBER").text.strip())
        failed.setdefault(name + "." + test, where)
known = {}
for line in open(known_path):
    line = line.strip()
    if line and not line.startswith("#"):
        test, _, reason = line.partition(" ")
        known[test] = reason.strip()
if summary:
    total, passed, nfail = summary
    print(f"iscsi-test-cu: {passed} of {total} test cases passed, {nfail} failed "
          f"({len(failed)} distinct tests; suites run in several families)")
for test in sorted(failed):
    print(f"  FAILED {test} ({failed[test]}){' -- known: ' + known[test] if test in known else ''}")
new = sorted(set(failed) - set(known))
fixed = sorted(set(known) - set(failed))
for test in fixed:
    print(f"  now passing (remove from the known list): {test}")
if new:
    print("unexpected failures: " + ", ".join(new))
    sys.exit(1)
PY
stop_testd
echo "ok"
