#!/usr/bin/python3
"""junit2tap.py JUNIT.xml PREFIX: one TAP line per test case of a pytest
--junitxml report, for tests/t_py.sh (which numbers them).  A failure or an
error is "not ok" with the message as diagnostics; a skipped test is
"not ok ... # skipped" (this suite has no reason to skip: a skip means
something is missing, and is reported as a failure, not a pass).  Prints
"ok - ..." / "not ok - ..." without numbers; exit 1 if the report holds no
test case at all."""
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
prefix = sys.argv[2]
n = 0
for tc in root.iter("testcase"):
    n += 1
    name = "%s %s::%s" % (prefix, tc.get("classname", "").split(".")[-1], tc.get("name"))
    bad = [c for c in tc if c.tag in ("failure", "error", "skipped")]
    if not bad:
        print("ok - %s" % name)
        continue
    why = bad[0].tag
    print("not ok - %s (%s)" % (name, why))
    text = (bad[0].get("message") or "") + "\n" + (bad[0].text or "")
    for line in text.strip().splitlines()[-25:]:
        print("# %s" % line)
sys.exit(0 if n else 1)
