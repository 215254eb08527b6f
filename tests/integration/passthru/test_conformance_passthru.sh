#!/bin/bash
# libiscsi's iscsi-test-cu on a tgt LUN twice in one run: against tgtd
# directly, then through a VM's controller with the LUN passed through
# (--full-scsi, so no command is filtered). Per-test results are compared;
# every difference must be one that passthru_conformance_differences.txt
# explains (one test name per line, with the reason in a comment above).
# Label: slow (about five minutes).
source "$(dirname "$0")/pt_lib.sh"
pt_setup
command -v iscsi-test-cu >/dev/null || skip "iscsi-test-cu not installed"
I1=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test
I2=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2
KNOWN=$(dirname "$0")/passthru_conformance_differences.txt

truncate -s 256M "$WORK/cu.img"
tgt_start
tgtadm_ --mode target --op new --tid 1 -T "$T1" || fail "target"
tgtadm_ --mode logicalunit --op new --tid 1 --lun 1 -b "$WORK/cu.img" || fail "lun"
for i in "$I1" "$I2"; do
    tgtadm_ --mode target --op bind --tid 1 --initiator-name "$i" || fail "acl"
done

run_cu() {   # run_cu NAME URL
    mkdir -p "$WORK/$1"
    local start; start=$(date +%s)
    (cd "$WORK/$1" && timeout 900 iscsi-test-cu -d -x "$2" > "$WORK/$1/cu.log" 2>&1) || true
    [ -s "$WORK/$1/CUnitAutomated-Results.xml" ] ||
        fail "$1: no results: $(tail -5 "$WORK/$1/cu.log")"
    echo "$1: iscsi-test-cu ran $(( $(date +%s) - start )) s"
}

step "tgt's own run"
run_cu tgt "iscsi://$PORTAL/$T1/1"

step "through a VM's controller, LUN passed through with --full-scsi"
hvd_start 1
hvctl_ 1 vm create cu --initiator "$I1" --initiator "$I2" >/dev/null || fail "vm create"
hvctl_ 1 --json vm zoning cu --target "$T1" --tid 1 |
    json_get - '"\n".join(j["commands"]["tgtadm"])' > "$WORK/grant"
while read -r line; do tgt_run_printed "$line"; done < "$WORK/grant"
hvctl_ 1 san add tgt1 --portal "$PORTAL" --initiator "$I1" >/dev/null || fail "san add"
# the suite leaves data behind: the LUN is not blank any more
hvctl_ 1 disk attach cu --controller 0 --slot 0 --lun "tgt1:$T1:1" --full-scsi --force >/dev/null \
    || fail "attach"
sleep 0.5
run_cu hvstor "iscsi://${HVD_PORTAL[1]}/$(ctl_target cu 0)/0"

python3 - "$WORK/tgt/CUnitAutomated-Results.xml" "$WORK/hvstor/CUnitAutomated-Results.xml" \
    "$KNOWN" <<'PY' || fail "unexplained differences"
import sys, xml.etree.ElementTree as ET
def results(path):
    # libiscsi runs some suites more than once (once per test family) and
    # writes one record per failed assertion: a test is "suite#n.test",
    # n counting the suite's runs, and fails when any of its records does.
    out, seen = {}, {}
    for suite in ET.parse(path).getroot().iter("CUNIT_RUN_SUITE_SUCCESS"):
        name = suite.find("SUITE_NAME").text.strip()
        seen[name] = seen.get(name, 0) + 1
        prefix = name if seen[name] == 1 else "%s#%d" % (name, seen[name])
        for rec in suite.iter("CUNIT_RUN_TEST_RECORD"):
            for res in rec:
                test = prefix + "." + res.find("TEST_NAME").text.strip()
                if res.tag == "CUNIT_RUN_TEST_FAILURE":
                    out[test] = "FAIL"
                else:
                    out.setdefault(test, "pass")
    return out
def summary(path):
    for rec in ET.parse(path).getroot().iter("CUNIT_RUN_SUMMARY_RECORD"):
        if rec.find("TYPE").text.strip() == "Test Cases":
            return int(rec.find("TOTAL").text), int(rec.find("SUCCEEDED").text)
    return 0, 0
for who, path in (("tgt", sys.argv[1]), ("hvstor", sys.argv[2])):
    total, ok = summary(path)
    print("%s: CUnit summary: %d of %d test cases succeeded" % (who, ok, total))
tgt, hv = results(sys.argv[1]), results(sys.argv[2])
known = {l.strip() for l in open(sys.argv[3]) if l.strip() and not l.startswith("#")}
print("tgt: %d of %d pass; through hvstor: %d of %d pass" % (
    sum(v == "pass" for v in tgt.values()), len(tgt),
    sum(v == "pass" for v in hv.values()), len(hv)))
diff = sorted(t for t in set(tgt) | set(hv) if tgt.get(t) != hv.get(t))
unexplained = []
import re
for t in diff:
    is_known = re.sub(r"#\d+\.", ".", t) in known      # the same test in a suite's later run
    mark = "known" if is_known else "UNEXPLAINED"
    print("  %-60s tgt %-5s hvstor %-5s %s" % (t, tgt.get(t, "-"), hv.get(t, "-"), mark))
    if not is_known:
        unexplained.append(t)
sys.exit(1 if unexplained else 0)
PY
echo PASS
