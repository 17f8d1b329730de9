#!/usr/bin/env bash
# tests/t_node.sh - the Node.js binding (bindings/node): its node:test files
# tests/node/test_*.mjs, one TAP line per test (tests/node/tap_reporter.mjs),
# then the package built as `npm install` builds it (node-gyp, offline,
# against the installed Node headers) and used from there.
#   test_binding.mjs  loading, layout against tests/e2e/layout.c, bad input,
#                     leases, outcomes, waiting without blocking the event
#                     loop, other processes and threads, exit and kill
#   test_fetch.mjs    keymeshFetch against a mock provider, and the OpenAI
#                     and Anthropic SDKs through their `fetch` option
# then README's Node example, run as written against tests/e2e/upstream.py,
# The SDKs come from npm into the build tree (make node-test-deps, run here:
# tests/node/package-lock.json, cached in $B/node/npm-cache).  Needs node,
# npm, gcc (make deps-test).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin node
e2e_need node npm gcc "$PY"
e2e_setup
on_cleanup() { e2e_cleanup; }
NODE_ADDON="$B/node/keymesh.node"
if [ ! -e "$NODE_ADDON" ]; then
    echo "Bail out! $NODE_ADDON not built (make needs Node's headers: make deps-test)"
    exit 1
fi
export KM_BUILD="$B"
unset KEYMESH_NODE_ADDON

if ! make -s -C "$REPO" BUILD="$B" node-test-deps >"$TMP/npm.log" 2>&1; then
    echo "Bail out! npm packages of the tests: $(tail -n 5 "$TMP/npm.log")"
    exit 1
fi

if ! gcc -I"$REPO/include" -o "$TMP/layout" "$E2E_DIR/layout.c" 2>"$TMP/gcc.err"; then
    echo "Bail out! tests/e2e/layout.c does not build: $(cat "$TMP/gcc.err")"
    exit 1
fi
"$TMP/layout" >"$TMP/layout.txt"
export KMT_LAYOUT="$TMP/layout.txt"

# run_node_tests FILE: its tests as TAP lines of this script
run_node_tests() {
    local f=$1 line tag name rest nres=0
    "${SANENV[@]}" node --test-reporter="$REPO/tests/node/tap_reporter.mjs" \
        "$REPO/tests/node/$f" >"$TMP/$f.out" 2>"$TMP/$f.err"
    local rc=$?
    while IFS=$'\t' read -r tag name rest; do
        case "$tag" in
        PASS) ok 0 "$f: $name"; nres=$((nres + 1)) ;;
        FAIL) ok 1 "$f: $name"; nres=$((nres + 1)) ;;
        SKIP) N=$((N + 1)); echo "ok $N - $f: $name # SKIP $rest"; nres=$((nres + 1)) ;;
        DIAG) diag "$name${rest:+ $rest}" ;;
        *) diag "$tag $name $rest" ;;
        esac
    done <"$TMP/$f.out"
    ok "$([ "$nres" -gt 0 ]; echo $?)" "$f ran ($nres tests, exit $rc)"
    [ -s "$TMP/$f.err" ] && diag "$f stderr: $(tail -n 20 "$TMP/$f.err")"
}

SECRETS=(sk-test-node-)
run_node_tests test_binding.mjs
run_node_tests test_fetch.mjs
no_secret "$(cat "$TMP"/*.mjs.out "$TMP"/*.mjs.err)"
ok $? "no secret in the tests' output"

# ------------------------------------------------- README's Node example
# The block as a reader runs it, in a directory where 'keymesh' and
# 'openai' resolve (node_modules: the binding and the tests' SDK), against
# the mock upstream (tests/e2e/upstream.py): the SDK through
# OPENAI_BASE_URL, the fetch by hand with the URL replaced, segment "llm"
# with the test's name.
new_seg RSEG readme
start_upstream 100
mkdir -p "$TMP/readme/node_modules"
ln -s "$REPO/bindings/node" "$TMP/readme/node_modules/keymesh"
ln -s "$B/node/deps/tests/node_modules/openai" "$TMP/readme/node_modules/openai"
SECRETS+=(sk-test-readme-aaaa7001 sk-test-readme-bbbb7002)
cat >"$TMP/readme/pool.json" <<EOF
{"pools": [{"name": "openai", "strategy": "round_robin",
            "keys": [{"id": "r1", "secret": "${SECRETS[1]}"}, {"id": "r2", "secret": "${SECRETS[2]}"}]}]}
EOF
"$KMCTL" create "$RSEG" --config "$TMP/readme/pool.json" >/dev/null
if /usr/bin/python3 "$REPO/tests/newcomer/docblocks.py" find "$REPO/README.md" "^import \{ Pool, keymeshFetch \} from 'keymesh';" \
    >"$TMP/readme/block.mjs" 2>"$TMP/readme/find.err"; then
    sed -e "s|Pool.open('llm'|Pool.open('$RSEG'|" -e "s|https://api.openai.com/v1|http://127.0.0.1:$UP_PORT/v1|" \
        "$TMP/readme/block.mjs" >"$TMP/readme/app.mjs"
    out=$(cd "$TMP/readme" && "${SANENV[@]}" OPENAI_BASE_URL="http://127.0.0.1:$UP_PORT/v1" node app.mjs 2>&1)
    ok "$(case "$out" in $'ok\nr'[12]' 200') echo 0 ;; *) echo 1 ;; esac)" \
        "README's Node example runs: the SDK's answer, then a lease by hand ($(echo $out))"
    run "$KMCTL" inspect "$RSEG" --json
    echo "$OUT" | "$PY" -c '
import json, sys
k = json.load(sys.stdin)["pools"][0]["keys"]
c = [x["counters"] for x in k]
sys.exit(0 if sum(x["success"] for x in c) == 2 and sum(x["inflight"] for x in k) == 0 and sum(x["tokens_used"] for x in k) == 15 else 1)'
    ok $? "README's Node example: 2 leases released as successes, in-flight 0, usage settled by hand (15 tokens; the SDK's keeps its estimate, 0)"
    no_secret "$out"
    ok $? "README's Node example prints no secret"
else
    ok 1 "README.md still has its Node example ($(cat "$TMP/readme/find.err"))"
fi

# ------------------------------------------------- npm install (node-gyp)
# The package as a user installs it: a copy of bindings/node, built by npm's
# own node-gyp against /usr/include/node (--nodedir: nothing downloaded),
# then loaded from there (its build/Release/keymesh.node comes first).
NODE_GYP_DIR=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
mkdir -p "$TMP/app/node_modules"
cp -r "$REPO/bindings/node" "$TMP/app/node_modules/keymesh"
rm -rf "$TMP/app/node_modules/keymesh/build"
(cd "$TMP/app/node_modules/keymesh" &&
    KEYMESH_INCLUDE="$REPO/include" npm install --nodedir=/usr --offline --no-audit --no-fund \
        --cache "$TMP/npm-cache" >"$TMP/gyp.log" 2>&1)
grc=$?
ok "$([ "$grc" = 0 ] && [ -f "$TMP/app/node_modules/keymesh/build/Release/keymesh.node" ]; echo $?)" \
    "npm install builds the addon with node-gyp, offline (exit $grc)"
[ "$grc" = 0 ] || diag "$(tail -n 15 "$TMP/gyp.log")" "node-gyp under: $NODE_GYP_DIR"
new_seg GSEG gyp
cat >"$TMP/app/app.mjs" <<'EOF'
import { Segment, Pool, library } from 'keymesh';
const seg = Segment.create(process.argv[2], { pools: [{ name: 'p', keys: [{ id: 'k1', secret: 'sk-test-node-gyp-1' }] }] });
const pool = Pool.open(process.argv[2], 'p');
const l = await pool.acquire({ tokens: 5 });
console.log(library.addon.includes('/node_modules/keymesh/build/Release/') ? 'gyp-addon' : 'other-addon', l.keyId, pool.release(l));
pool.close();
seg.close();
EOF
out=$(cd "$TMP/app" && "${SANENV[@]}" KEYMESH_LIBRARY="$LIBKM" node app.mjs "$GSEG" 2>&1)
ok "$([ "$out" = "gyp-addon k1 true" ]; echo $?)" "the node-gyp build loads (import 'keymesh') and leases a key ($out)"
no_sanitizer_report
finish
