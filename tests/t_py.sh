#!/usr/bin/env bash
# tests/t_py.sh - the Python binding (bindings/python/keymesh) on its own:
# ctypes layouts against the C compiler's, private and shared pools, the
# legacy API (acquire/release/mark_failed/mark_rate_limited/status/
# available_count), lease() outcomes from exceptions and reports, fork, the
# asyncio KeyPool never blocking its loop, add_key (km_key_add), secrets
# never shown.  tests/e2e/test_binding.py prints the TAP; this adds the
# library-discovery checks.  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin py
e2e_need "$PY" gcc
e2e_setup
export KMCTL

if ! gcc -I"$REPO/include" -o "$TMP/layout" "$E2E_DIR/layout.c" 2>"$TMP/gcc.err"; then
    echo "Bail out! tests/e2e/layout.c does not build: $(cat "$TMP/gcc.err")"
    exit 1
fi
"$TMP/layout" >"$TMP/layout.txt"

# The TAP of test_binding.py, renumbered after ours (plan at the end).
"${SANENV[@]}" "$PY" "$E2E_DIR/test_binding.py" "$TMP/layout.txt" >"$TMP/tap" 2>"$TMP/py.err"
prc=$?
while IFS= read -r line; do
    case "$line" in
    "ok "*) ok 0 "${line#ok [0-9]* - }" ;;
    "not ok "*) ok 1 "${line#not ok [0-9]* - }" ;;
    "1.."*) planned=${line#1..} ;;
    *) echo "$line" ;;
    esac
done <"$TMP/tap"
ok $([ "$prc" = 0 ] && [ "${planned:-0}" -gt 0 ]; echo $?) "test_binding.py ran to its plan (exit $prc, ${planned:-no} tests)"
[ "$prc" = 0 ] || diag "$(tail -n 20 "$TMP/py.err")"
no_secret "$(cat "$TMP/tap" "$TMP/py.err")"
ok $? "no secret in the binding's output"

# Library discovery: an explicit KEYMESH_LIBRARY that does not load is an
# error naming it; without it, $KM_BUILD is used.
run env KEYMESH_LIBRARY=/nonexistent/libkeymesh.so.0 "$PY" -c 'import keymesh; keymesh.SyncKeyPool(keys=["sk-x-1"])'
[ "$RC" -ne 0 ] && echo "$ERR" | grep -q 'KEYMESH_LIBRARY=/nonexistent/libkeymesh.so.0'
ok $? "KEYMESH_LIBRARY that does not load: an error naming it"
run env -u KEYMESH_LIBRARY KM_BUILD="$B" "${SANENV[@]}" "$PY" -c 'import keymesh; print(keymesh.library_path())'
[ "$RC" -eq 0 ] && [ "$OUT" = "$B/libkeymesh.so.0" ]
ok $? "without KEYMESH_LIBRARY: \$KM_BUILD/libkeymesh.so.0 ($OUT)"
leftover=$(ls /dev/shm | grep -c "^kmt-py-\|^keymesh-py-" || true)
ok $([ "$leftover" = 0 ]; echo $?) "no segment left in /dev/shm ($leftover)"
no_sanitizer_report
finish
