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
# The SDKs come from npm into the build tree (make node-test-deps, run here:
# tests/node/package-lock.json, cached in $B/node/npm-cache).  Needs node,
# npm, gcc (make deps-test).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin node
e2e_need node npm gcc
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
