#!/usr/bin/python3
"""tests/newcomer/docblocks.py - the fenced blocks of Markdown files, for
the tests that execute the documentation (tests/t_newcomer*.sh).

    docblocks.py csnippets OUTDIR FILE...
        Write every ```c block of FILEs as a C file OUTDIR/NN.c that can be
        compiled, and print one line per block: "NN KIND FILE:LINE".  KIND
        comes from an HTML comment right above the block:
          (none)                   the block must be a whole program (main)
          <!-- snippet: program -->  the same, said explicitly
          <!-- snippet: body       the block is the body of main(argc, argv);
          DECLARATIONS -->         the comment's other lines go before it
          <!-- snippet: decl -->   file-scope declarations (checked against
                                   keymesh.h by the compiler)
        Bodies and declarations get <stdint.h>, <stdio.h>, <stdlib.h>,
        <string.h>, <time.h>, "keymesh.h" and sleep_until() (as in
        examples/quickstart.c); their #include lines go to the top.  A block
        without main and without a marker is an error (exit 1): a fragment
        must say what it needs, so that it is compiled and cannot drift.

    docblocks.py find FILE REGEX
        Print the one block of FILE whose text matches REGEX (exit 1 if none
        or several match).

    docblocks.py classify TABLE FILE...
        For every shell block of FILEs (```sh, ```console, or an unlabelled
        block whose first line starts with "$ " or "kmctl "), find the rows
        of TABLE ("run|skip<TAB>FILE<TAB>REGEX<TAB>REASON" lines) whose FILE
        is the block's and whose REGEX matches its text, and print
        "run FILE:LINE", "skip FILE:LINE REASON", or "none FILE:LINE FIRST"
        (no row) or "many FILE:LINE FIRST" (several rows).  Then, for each
        row that matched no block, "stale FILE REGEX".
"""
import os
import re
import sys

FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"<!--\s*snippet:\s*(\w+)(.*?)-->", re.S)

PRELUDE = r"""#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "keymesh.h"
%s
/* As in examples/quickstart.c: sleep until CLOCK_MONOTONIC reaches at_ns. */
static inline void sleep_until(uint64_t at_ns)
{
    struct timespec ts = {(time_t)(at_ns / 1000000000u), (long)(at_ns %% 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}
"""


def blocks(path):
    """(line, info, text, comment) for each fenced block of a Markdown file;
    comment is the HTML comment ending on the last non-blank line above the
    fence, if any."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, fence, info = i, m.group(2), m.group(3)
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        text = "\n".join(lines[i + 1:j])
        # The comment right above (blank lines allowed between).
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        comment = None
        if k >= 0 and lines[k].rstrip().endswith("-->"):
            e = k
            while k >= 0 and "<!--" not in lines[k]:
                k -= 1
            if k >= 0:
                comment = "\n".join(lines[k:e + 1])
        out.append((start + 1, info, text, comment))
        i = j + 1
    return out


def csnippets(outdir, files):
    os.makedirs(outdir, exist_ok=True)
    n = 0
    bad = 0
    for f in files:
        for line, info, text, comment in blocks(f):
            if info != "c":
                continue
            n += 1
            where = "%s:%d" % (f, line)
            m = MARKER.search(comment or "")
            kind = m.group(1) if m else ("program" if re.search(r"\bmain\s*\(", text) else None)
            if kind is None:
                print("%s: a ```c block without main() and without a <!-- snippet: body|decl --> "
                      "marker; say what it needs so it can be compiled" % where, file=sys.stderr)
                bad += 1
                continue
            if kind not in ("program", "body", "decl"):
                print("%s: unknown snippet kind %r" % (where, kind), file=sys.stderr)
                bad += 1
                continue
            head = "/* %s (%s) */\n" % (where, kind)
            if kind == "program":
                src = head + "#line %d \"%s\"\n%s\n" % (line + 1, f, text)
            else:
                incs = [l for l in text.split("\n") if l.lstrip().startswith("#include")]
                rest = [l if not l.lstrip().startswith("#include") else "" for l in text.split("\n")]
                decls = m.group(2).strip("\n") if m else ""
                src = head + PRELUDE % "\n".join(incs)
                if kind == "decl":
                    src += "#line %d \"%s\"\n%s\n" % (line + 1, f, "\n".join(rest))
                    src += "int main(void)\n{\n    return 0;\n}\n"
                else:
                    src += "int main(int argc, char **argv)\n{\n    (void)argc;\n    (void)argv;\n"
                    if decls:
                        src += "#line %d \"%s <!-- snippet -->\"\n%s\n" % (line, f, decls)
                    src += "#line %d \"%s\"\n%s\n" % (line + 1, f, "\n".join(rest))
                    src += "    return 0;\n}\n"
            name = "%02d" % n
            with open(os.path.join(outdir, name + ".c"), "w") as o:
                o.write(src)
            print(name, kind, where)
    return 1 if bad else 0


def find(path, regex):
    r = re.compile(regex, re.M)
    hits = [b for b in blocks(path) if r.search(b[2])]
    if len(hits) != 1:
        print("%s: %d blocks match %r (want 1)" % (path, len(hits), regex), file=sys.stderr)
        return 1
    sys.stdout.write(hits[0][2] + "\n")
    return 0


def is_shell(info, text):
    if info in ("sh", "shell", "console", "bash"):
        return True
    first = text.lstrip().split("\n", 1)[0]
    return info == "" and (first.startswith("$ ") or first.startswith("kmctl "))


def classify(table, files):
    rows = []
    for l in open(table, encoding="utf-8"):
        l = l.rstrip("\n")
        if not l.strip() or l.startswith("#"):
            continue
        what, f, regex, reason = (l.split("\t") + ["", "", ""])[:4]
        rows.append([what, f, re.compile(regex, re.M), reason, 0])
    for f in files:
        for line, info, text, _ in blocks(f):
            if not is_shell(info, text):
                continue
            where = "%s:%d" % (f, line)
            first = text.strip().split("\n", 1)[0]
            hit = [r for r in rows if r[1] == f and r[2].search(text)]
            for r in hit:
                r[4] += 1
            if not hit:
                print("none", where, first)
            elif len(hit) > 1:
                print("many", where, first)
            elif hit[0][0] == "run":
                print("run", where)
            else:
                print("skip", where, hit[0][3])
    for r in rows:
        if r[4] == 0:
            print("stale", r[1], r[2].pattern)
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "csnippets":
        return csnippets(argv[2], argv[3:])
    if len(argv) == 4 and argv[1] == "find":
        return find(argv[2], argv[3])
    if len(argv) >= 3 and argv[1] == "classify":
        return classify(argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
