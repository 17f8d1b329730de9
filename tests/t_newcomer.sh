#!/usr/bin/env bash
# tests/t_newcomer.sh - the documentation, executed on the built tree, so
# that what a newcomer copies from README.md and docs/*.md works (issue 14):
#   1. every ```c block compiles with the project's warnings and -Werror
#      (tests/newcomer/docblocks.py wraps a fragment marked
#      <!-- snippet: body|decl --> in a program); README's quick start and
#      reconfiguration snippets run: against a missing segment the quick
#      start says "no segment" and exits 1, km_key_add's error is caught;
#      examples/quickstart too;
#   2. every shell block of README.md and docs/*.md is either run here, as
#      written, or skipped for a reason stated in the table below (a block
#      in neither fails: say what to do with it);
#   3. the sizes and lines docs/kmctl.md shows for its example pool.json are
#      what kmctl prints;
#   4. README's "Not yet" names nothing that exists;
#   5. examples/demo.sh runs from another directory (issue 14 item 14).
# How blocks run: in a clean environment (env -i, PATH first $TMP/bin), in
# $TMP/work, which holds the pool.json of docs/kmctl.md's examples (pools
# openai with keys a and b, b's secret from OPENAI_API_KEY_2, and anthropic
# with c; capacity 8 keys, 8 pools, 8 processes, 64 leases per key).
# $TMP/bin/kmctl is the built kmctl with segment "llm" mapped to this test's
# segment (and back in its output); /etc/keymesh and /var/lib/keymesh are
# mapped under $TMP/root; `# ... reboot ...` becomes `kmctl destroy llm`
# (a reboot empties /dev/shm).  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin newcomer
REPO=$(cd "$(dirname "$0")/.." && pwd)
case "$B" in /*) ;; *) B="$REPO/$B" ;; esac
KMCTL="$B/kmctl"
DOCS="/usr/bin/python3 $REPO/tests/newcomer/docblocks.py"
MDS=(README.md docs/*.md)
SECRETS=(sk-test-nc-aaaa1111 sk-test-nc-bbbb2222 sk-test-nc-cccc3333)

for f in "$B/examples/quickstart" "$B/examples/demo"; do
    [ -x "$f" ] || { echo "Bail out! $f not built (make test builds the examples)"; exit 1; }
done

# ------------------------------------------------------------ the doc setting
mkdir -p "$TMP/bin" "$TMP/work" "$TMP/home" "$TMP/root"
cat >"$TMP/bin/kmctl" <<EOF
#!/bin/bash
# The documentation's kmctl: segment "llm" is $SEG.
args=()
for a in "\$@"; do [ "\$a" = llm ] && a=$SEG; args+=("\$a"); done
o=\$(mktemp) e=\$(mktemp)
"$KMCTL" "\${args[@]}" >"\$o" 2>"\$e"
rc=\$?
sed 's/$SEG/llm/g' "\$e" >&2
sed 's/$SEG/llm/g' "\$o"
rm -f "\$o" "\$e"
exit \$rc
EOF
chmod +x "$TMP/bin/kmctl"
cat >"$TMP/work/pool.json" <<EOF
{
  "capacity": {"keys": 8, "pools": 8, "processes": 8, "inflight_per_key": 64},
  "pools": [
    {"name": "openai", "strategy": "least_busy", "cooldown_s": 60, "max_failures": 5,
     "model_limits": "per_model",
     "models": {"gpt-4o": {"rpm": 500, "tpm": 30000}, "gpt-4o-mini": {}},
     "budget": {"usd": 100, "hard": true},
     "keys": [{"id": "a", "secret": "${SECRETS[0]}", "limits": {"rpm": 60, "tpm": 100000},
               "meta": {"org": "org-1"}},
              {"id": "b", "secret_env": "OPENAI_API_KEY_2",
               "limits": {"rpm": 30, "rpd": 1000, "tpm": 100000}, "max_inflight": 8}]},
    {"name": "anthropic", "keys": [{"id": "c", "secret": "${SECRETS[2]}"}]}
  ]
}
EOF
# in_doc CMD...: run CMD as the documentation's reader would, in $TMP/work.
in_doc() {
    (cd "$TMP/work" && env -i PATH="$TMP/bin:/usr/bin:/bin" HOME="$TMP/home" \
        ${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="$LD_LIBRARY_PATH"} "$@")
}
# doc_script FILE: a block's text with the mappings above.
doc_script() {
    sed -e "s|/etc/keymesh|$TMP/root/etc/keymesh|g" -e "s|/var/lib/keymesh|$TMP/root/var/lib/keymesh|g" \
        -e 's|^# \.\.\. reboot \.\.\.$|kmctl destroy llm|' "$1"
}
# same EXPECTED ACTUAL: line by line; an expected line ending in "..." is a prefix.
same() {
    local -a e a
    local i
    mapfile -t e <"$1"
    mapfile -t a <"$2"
    [ "${#e[@]}" -eq "${#a[@]}" ] || return 1
    for i in "${!e[@]}"; do
        case "${e[$i]}" in
        *...) [ "${a[$i]#"${e[$i]%...}"}" != "${a[$i]}" ] || return 1 ;;
        *) [ "${e[$i]}" = "${a[$i]}" ] || return 1 ;;
        esac
    done
}
show_diff() { diag "expected:" "$(cat "$1")" "got:" "$(cat "$2")"; }
fresh() { "$KMCTL" destroy "$SEG" >/dev/null 2>&1; }
make_llm() { fresh; in_doc env OPENAI_API_KEY_2=sk-test-nc-bbbb2222 kmctl create llm --config pool.json >/dev/null; }
# block FILE REGEX: the one block of FILE matching REGEX, into $TMP/block.
block() {
    if ! $DOCS find "$REPO/$1" "$2" >"$TMP/block" 2>"$TMP/find.err"; then
        ok 1 "$1 still has the block this test runs ($(cat "$TMP/find.err"))"
        return 1
    fi
}

# ------------------------------------------------------------ 1. C snippets
WARN=(-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
    -Wformat=2 -Wno-format-nonliteral -Wpointer-arith -Wcast-align=strict -Wvla -Wundef -Werror)
SAN=()
nm "$B/obj/shm/segment.o" 2>/dev/null | grep -q __asan_ && SAN+=(-fsanitize=address)
nm "$B/obj/shm/segment.o" 2>/dev/null | grep -q __ubsan_ && SAN+=(-fsanitize=undefined)
(cd "$REPO" && $DOCS csnippets "$TMP/snip" "${MDS[@]}") >"$TMP/snip.list" 2>"$TMP/snip.err"
ok $? "every \`\`\`c block of README.md and docs/*.md is a program or a marked fragment"
[ -s "$TMP/snip.err" ] && diag "$(cat "$TMP/snip.err")"
while read -r n kind where; do
    # Fragments may leave the variables they declare for the reader unused.
    extra=()
    [ "$kind" = program ] || extra=(-Wno-unused-variable -Wno-unused-but-set-variable)
    cc "${WARN[@]}" "${extra[@]}" "${SAN[@]}" -I"$REPO/include" -o "$TMP/snip/$n" "$TMP/snip/$n.c" \
        "$B/libkeymesh.a" $(pkg-config --libs ck jansson libsodium) -lpthread -lm 2>"$TMP/cc.err"
    ok $? "$where ($kind) compiles with -Werror"
    [ -s "$TMP/cc.err" ] && diag "$(head -n 20 "$TMP/cc.err")"
done <"$TMP/snip.list"
QS=$(grep -l 'km_acquire(env, &req, &lease)' "$TMP"/snip/*.c | head -n 1)
RC=$(grep -l 'km_key_add(env, pool' "$TMP"/snip/*.c | head -n 1)
ok $([ -n "$QS" ] && [ -n "$RC" ]; echo $?) "README has its quick start and reconfiguration snippets"
QS=${QS%.c} RC_SNIP=${RC%.c}
# Under ASan, not the leak check: a fragment leaves its handle open at exit,
# as the program around it would close it later.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

fresh
run "$QS" "$SEG"
ok $([ "$RC" -eq 1 ] && grep -q "km_open $SEG: no segment of that name" <<<"$ERR"; echo $?) \
    "README's quick start, no segment: 'no segment of that name', exit 1 (exit $RC: $ERR)"
run "$B/examples/quickstart" "$SEG" openai
ok $([ "$RC" -eq 1 ] && grep -q 'no segment of that name' <<<"$ERR"; echo $?) \
    "examples/quickstart, no segment: 'no segment of that name', exit 1 (exit $RC)"
make_llm
run "$QS" "$SEG"
ok $([ "$RC" -eq 0 ] && grep -q '^acquired key [ab]$' <<<"$OUT" && no_secret "$OUT$ERR"; echo $?) \
    "README's quick start on a segment: acquires, releases, exit 0 (exit $RC: $(tr '\n' ' ' <<<"$OUT$ERR"))"
run "$B/examples/quickstart" "$SEG" openai
ok $([ "$RC" -eq 0 ] && grep -q '^released key [ab]: success$' <<<"$OUT" && no_secret "$OUT$ERR"; echo $?) \
    "examples/quickstart on a segment: exit 0 (exit $RC: $(tr '\n' ' ' <<<"$OUT"))"
run env -u OPENAI_KEY_C "$RC_SNIP" "$SEG"
ok $([ "$RC" -eq 1 ] && grep -q '^km_key_add: invalid configuration: .*OPENAI_KEY_C' <<<"$ERR"; echo $?) \
    "README's reconfiguration snippet, OPENAI_KEY_C unset: km_key_add's error caught, exit 1 ($ERR)"
run env OPENAI_KEY_C=sk-test-nc-dddd4444 "$RC_SNIP" "$SEG"
ok $([ "$RC" -eq 0 ] && [ -z "$ERR" ]; echo $?) "... with it set: add, weight, limits, remove, exit 0 (exit $RC: $ERR)"

# ------------------------------------------------------------ 2. shell blocks
# Every shell block of README.md and docs/*.md: run (below) or skipped, why.
cat >"$TMP/table" <<'EOF'
skip	README.md	^make demo +#	make demo and make test are what CI runs around this suite (make test would run itself); demo.sh, the demo, runs below, and make's dependency check in t_newcomer_build.sh
skip	README.md	^make examples	builds, installs into the system and runs the suites; t_newcomer_build.sh installs into a temporary PREFIX
skip	README.md	^cc -o app app\.c \$\(pkg-config --cflags --libs keymesh\)$	run by t_newcomer_build.sh against a temporary PREFIX (an app.c of its own)
skip	README.md	^# libkeymesh\.a	run by t_newcomer_build.sh against a temporary PREFIX (an app.c of its own)
skip	README.md	^kmctl create NAME --config FILE	a synopsis: NAME, FILE, POOL... are placeholders
skip	README.md	^export KEYMESH_STORE_PASSWORD=	needs the fleet's Redis (10.0.0.5); tests/fleet/t_agent runs sync and fleet against a redis-server of its own
skip	docs/kmctl.md	^KEYMESH_STORE_PASSWORD=\$\(cat	needs the fleet's Redis; tests/fleet/t_agent runs sync and fleet against a redis-server of its own
skip	docs/kmctl.md	^\$ kmctl fleet llm	its output is that of a fleet of two hosts on a Redis of their own; tests/fleet/t_agent checks kmctl fleet --json against one
skip	docs/kmctl.md	^kmctl \[-h	a synopsis
run	docs/config.md	^export OPENAI_API_KEY=	commented transcript
run	docs/config.md	^export NUM_OPENAI=3	commented transcript
run	docs/kmctl.md	^\$ env NUM_OPENAI=3	transcript
run	docs/kmctl.md	^kmctl keygen /etc/keymesh/snapshot\.key	script
skip	docs/kmctl.md	^\$ kmctl usage llm	its output is that of a database of real traffic (t_usage runs persist and usage)
run	docs/kmctl.md	^\$ export OPENAI_KEY_C=	transcript
run	docs/kmctl.md	^kmctl set-limits llm openai a '\{"rpm"	script
run	docs/kmctl.md	^\$ export MISTRAL_KEY_0=	transcript
skip	docs/kmctl.md	^kmctl set-limits llm openai tier5	the keys of docs/config.md's tiered example, not of this pool.json; t_kmctl.sh runs set-limits --model
skip	docs/kmctl.md	^kmctl ps llm +# the dead worker	needs a worker killed holding leases: t_reapctl.sh runs this sequence
run	docs/kmctl.md	^kmctl create llm --config pool\.json --mode 0660	script
EOF
(cd "$REPO" && $DOCS classify "$TMP/table" "${MDS[@]}") >"$TMP/classes"
while read -r what where rest; do
    case "$what" in
    skip) diag "skipped: $where: $rest" ;;
    none | many)
        ok 1 "$where: a shell block that this test neither runs nor skips ($what rows match: $rest); add a row for it to tests/t_newcomer.sh" ;;
    stale) ok 1 "a row of tests/t_newcomer.sh matches no block of $where ($rest): the documentation changed; update the row" ;;
    esac
done <"$TMP/classes"
nrun=$(grep -c '^run ' "$TMP/classes")
ok $([ "$nrun" -eq 8 ]; echo $?) "8 documentation blocks to run, found ($nrun)"

# A commented transcript: the block is one script; its "# " lines after the
# commands are the output (stderr, then stdout).
commented() { # commented FILE REGEX NAME
    block "$1" "$2" || return
    grep -v '^# ' "$TMP/block" >"$TMP/block.sh"
    sed -n 's/^# //p' "$TMP/block" >"$TMP/want"
    fresh
    in_doc bash "$TMP/block.sh" >"$TMP/got" 2>&1
    same "$TMP/want" "$TMP/got"
    ok $? "$1: $3: the output is the one shown"
    same "$TMP/want" "$TMP/got" || show_diff "$TMP/want" "$TMP/got"
}
commented docs/config.md '^export OPENAI_API_KEY=' "export OPENAI_API_KEY=...; kmctl create llm --from-env openai"
commented docs/config.md '^export NUM_OPENAI=3' "NUM_OPENAI=3 without key 2"

# A transcript: "$ " commands (with "\" continuation lines), each followed by
# its output (stderr, then stdout).  One shell runs them all, in order, so an
# export holds for the commands after it.
transcript() { # transcript FILE REGEX NAME
    block "$1" "$2" || return
    rm -rf "$TMP/tx"
    /usr/bin/python3 - "$TMP/block" "$TMP/tx" <<'PY'
import os, sys
lines = open(sys.argv[1]).read().rstrip("\n").split("\n")
d = sys.argv[2]
os.makedirs(d)
cmds, cont = [], False
for l in lines:
    if cont:
        cmds[-1][0] += "\n" + l
        cont = l.endswith("\\")
    elif l.startswith("$ "):
        cmds.append([l[2:], []])
        cont = l.endswith("\\")
    elif cmds:
        cmds[-1][1].append(l)
with open(os.path.join(d, "run.sh"), "w") as f:
    for i, (c, out) in enumerate(cmds, 1):
        open(os.path.join(d, "%d.cmd" % i), "w").write(c + "\n")
        open(os.path.join(d, "%d.want" % i), "w").write("".join(o + "\n" for o in out))
        f.write("{ %s\n} >%s/%d.got 2>&1\n" % (c, d, i))
PY
    local i r=0
    in_doc bash "$TMP/tx/run.sh"
    for i in $(ls "$TMP/tx"/*.cmd | sed 's|.*/||; s|\.cmd$||' | sort -n); do
        if ! same "$TMP/tx/$i.want" "$TMP/tx/$i.got"; then
            r=1
            diag "\$ $(cat "$TMP/tx/$i.cmd")"
            show_diff "$TMP/tx/$i.want" "$TMP/tx/$i.got"
        fi
    done
    ok $r "$1: $3: each command prints what is shown"
}
fresh
transcript docs/kmctl.md '^\$ env NUM_OPENAI=3' "create --from-env with key 2 missing"
make_llm
transcript docs/kmctl.md '^\$ export OPENAI_KEY_C=' "add-key, then the same id again"
make_llm
transcript docs/kmctl.md '^\$ export MISTRAL_KEY_0=' "add-pool, set-pool, remove-pool"

# A script: the block run as it is (with the mappings).
make_llm
block docs/kmctl.md '^kmctl set-limits llm openai a' && {
    doc_script "$TMP/block" >"$TMP/block.sh"
    in_doc bash -e "$TMP/block.sh" >"$TMP/got" 2>&1
    ok $? "docs/kmctl.md: kmctl set-limits, both examples, succeed ($(cat "$TMP/got"))"
}
block docs/kmctl.md '^kmctl keygen /etc/keymesh/snapshot\.key' && {
    doc_script "$TMP/block" >"$TMP/block.sh"
    in_doc bash -e "$TMP/block.sh" >"$TMP/got" 2>&1
    ok $? "docs/kmctl.md: keygen, snapshot --include-secrets, (reboot), restore succeed ($(cat "$TMP/got"))"
    in_doc kmctl inspect llm >"$TMP/got" 2>&1
    ok $([ $? -eq 0 ] && grep -q '^  a ' "$TMP/got" && no_secret "$(cat "$TMP/got" "$TMP/root/var/lib/keymesh/llm.json")"; echo $?) \
        "... the restored segment has its keys; no secret in clear in the snapshot or the table"
}
fresh
block docs/kmctl.md '^kmctl create llm --config pool\.json --mode 0660' && {
    doc_script "$TMP/block" >"$TMP/block.sh"
    in_doc bash "$TMP/block.sh" >"$TMP/got" 2>"$TMP/err"
    ok $([ "$(tail -n 1 "$TMP/got")" = "no segment llm" ] && grep -q '"state": "disabled"' "$TMP/got" &&
        ! grep -q '^kmctl:' "$TMP/err"; echo $?) \
        "docs/kmctl.md, Example: each command works; it ends with 'no segment llm'"
    grep -q '^kmctl:' "$TMP/err" && diag "$(cat "$TMP/err")"
    ok $(grep -q '"pools"' "$TMP/root/var/lib/keymesh/llm.json"; echo $?) "... and its snapshot is written to /var/lib/keymesh/llm.json"
}

# ------------------------------------------------------------ 3. kmctl.md's sizes
# The example pool.json above is the one docs/kmctl.md shows: its create
# line, inspect's first lines and the snapshot's size_bytes are checked.
fresh
in_doc env OPENAI_API_KEY_2=sk-test-nc-bbbb2222 kmctl create llm --config pool.json >"$TMP/created" 2>&1
want=$(grep -o "created segment\$" -A1 "$REPO/docs/kmctl.md" >/dev/null;
    tr '\n' ' ' <"$REPO/docs/kmctl.md" | grep -o "\`created segment 'llm': 2 pools, 3 keys, [0-9]* bytes, mode 0600\`" | tr -d '`')
ok $([ -n "$want" ] && [ "$want" = "$(cat "$TMP/created")" ]; echo $?) \
    "docs/kmctl.md's create line is kmctl's: $(cat "$TMP/created") (doc: $want)"
block docs/kmctl.md '^segment llm: ' && {
    head -n 2 "$TMP/block" >"$TMP/want"
    in_doc kmctl inspect llm | head -n 2 >"$TMP/got"
    same "$TMP/want" "$TMP/got"
    ok $? "docs/kmctl.md's inspect header and capacity lines are kmctl's"
    same "$TMP/want" "$TMP/got" || show_diff "$TMP/want" "$TMP/got"
}
block docs/kmctl.md '"size_bytes": ' && {
    want=$(grep -o '"size_bytes": [0-9]*' "$TMP/block")
    got=$(in_doc kmctl snapshot llm | grep -o '"size_bytes": [0-9]*')
    ok $([ -n "$want" ] && [ "$want" = "$got" ]; echo $?) "docs/kmctl.md's snapshot: $want (kmctl: $got)"
}
fresh

# ------------------------------------------------------------ 4. README's "Not yet"
notyet=$(sed -n '/^## Not yet/,/^## /p' "$REPO/README.md")
words=$(grep -o '<!-- not-yet: [^>]*-->' <<<"$notyet" | sed 's/<!-- not-yet: //; s/ *-->//')
ok $([ -n "$words" ]; echo $?) "README's Not yet names, per item, what it would add"
help=$("$KMCTL" --help 2>&1)
for w in $words; do
    case "$w" in
    km_*) ! grep -qw "$w" "$REPO/include/keymesh.h" ;;
    *) ! grep -qE "^  $w( |\$)" <<<"$help" ;;
    esac
    ok $? "Not yet: $w does not exist yet (else move its item out of Not yet)"
done
if [ -n "$(ls "$REPO/bench/baselines" 2>/dev/null)" ]; then
    ! grep -qi 'baseline' <<<"$notyet"
    ok $? "Not yet does not list the bench baselines, which exist (bench/baselines/)"
fi

# ------------------------------------------------------------ 5. demo.sh from elsewhere
# A checkout whose build/ is this build, and a directory that is not it.
mkdir -p "$TMP/repo/examples" "$TMP/elsewhere"
cp "$REPO/examples/demo.sh" "$REPO/examples/demo.json" "$TMP/repo/examples/"
ln -s "$B" "$TMP/repo/build"
(cd "$TMP/elsewhere" && env -u KM_BUILD DEMO_SECONDS=1 DEMO_WORKERS=2 sh ../repo/examples/demo.sh) \
    >"$TMP/demo.out" 2>&1
ok $([ $? -eq 0 ] && grep -q 'held' "$TMP/demo.out" && ! grep -q 'EXCEEDED' "$TMP/demo.out" &&
    grep -q 'done\.' "$TMP/demo.out"; echo $?) "demo.sh from another directory finds build/ beside its examples/"
grep -q 'done\.' "$TMP/demo.out" || diag "$(tail -n 5 "$TMP/demo.out")"
(cd "$TMP/elsewhere" && KM_BUILD="$B" DEMO_SECONDS=1 DEMO_WORKERS=2 sh "$REPO/examples/demo.sh") \
    >"$TMP/demo.out" 2>&1
ok $([ $? -eq 0 ] && grep -q 'done\.' "$TMP/demo.out"; echo $?) "demo.sh from another directory with KM_BUILD"
(cd "$TMP/elsewhere" && KM_BUILD=nowhere sh "$REPO/examples/demo.sh") >"$TMP/demo.out" 2>&1
ok $([ $? -ne 0 ] && grep -q 'nowhere/kmctl not built' "$TMP/demo.out"; echo $?) \
    "demo.sh with a KM_BUILD that has no kmctl says so ($(head -n 1 "$TMP/demo.out"))"

# ------------------------------------------------------------ 6. LICENSE, CHANGELOG
ok $(head -n 1 "$REPO/LICENSE" | grep -qx 'MIT License' &&
    grep -qx 'Copyright (c) 2026 the KeyMesh authors' "$REPO/LICENSE"; echo $?) "LICENSE: MIT, the KeyMesh authors"
fmt=$("$KMCTL" -V | sed -n 's/.*segment format \([0-9]*\).*/\1/p')
unrel=$(sed -n '/^## Unreleased/,/^## [0-9]/p' "$REPO/CHANGELOG.md")
ok $([ -n "$fmt" ] && grep -q "^Segment format $fmt\b" <<<"$unrel"; echo $?) \
    "CHANGELOG's Unreleased names the segment format kmctl -V prints ($fmt)"
finish
