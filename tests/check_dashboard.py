#!/usr/bin/python3
"""tests/check_dashboard.py DASHBOARD EXPOSITION [--all]

Check that a Grafana dashboard uses only metrics and labels that an
exposition (the output of `kmctl metrics`) has: every keymesh_* name in a
panel's PromQL or a template query must be a family of the exposition
(its "# TYPE" line), and every label a query groups or selects by, or a
legend shows ({{label}}), must be a label of some sample of the exposition.
With --all, every family of the exposition must also appear on the
dashboard.  Prints one line per problem and exits 1 if there is any; used
by tests/t_metrics.sh (not a test itself: prove does not run .py files).
"""
import json
import re
import sys

NAME = re.compile(r"\bkeymesh_[a-zA-Z0-9_]+")
BY = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
SEL = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def strings(node, keys):
    """Every string under one of `keys` anywhere in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys and isinstance(v, str):
                yield k, v
            else:
                yield from strings(v, keys)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v, keys)


def main(argv):
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--all"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    dash = json.load(open(argv[1]))
    families, labels = set(), set()
    for line in open(argv[2]):
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            m = SEL.search(line.split(" ")[0])
            if m:
                labels.update(MATCHER.findall(m.group(1)))
    if not families:
        print("%s: no metric family (empty exposition?)" % argv[2])
        return 1
    problems, used, queries = [], set(), 0
    for key, s in strings(dash, {"expr", "query", "definition", "legendFormat"}):
        if key == "legendFormat":
            for lab in LEGEND.findall(s):
                if lab not in labels:
                    problems.append("legend %r: label %r is not exported" % (s, lab))
            continue
        queries += 1
        for name in NAME.findall(s):
            used.add(name)
            if name not in families:
                problems.append("%s: %r is not an exported metric" % (key, name))
        for group in BY.findall(s):
            for lab in (x.strip() for x in group.split(",")):
                if lab and lab not in labels:
                    problems.append("%s %r: label %r is not exported" % (key, s, lab))
        for sel in SEL.findall(s):
            for lab in MATCHER.findall(sel):
                if lab not in labels:
                    problems.append("%s %r: label %r is not exported" % (key, s, lab))
    if not used:
        problems.append("the dashboard uses no keymesh_ metric at all")
    if len(argv) == 4:
        for name in sorted(families - used):
            problems.append("exported family %s is not on the dashboard" % name)
    for p in problems:
        print(p)
    print("# %d queries, %d metric names used, %d families exported"
          % (queries, len(used), len(families)), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
