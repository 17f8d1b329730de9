#!/usr/bin/env bash
# tests/t_py.sh - the Python binding (bindings/python/keymesh) on its own.
#
# tests/py (pytest, Debian's python3-pytest) runs twice: on the C extension
# keymesh._ext (built by make into $B/python/keymesh; the run fails if it
# is not the implementation in use) and with KEYMESH_NO_EXT=1 on ctypes.
# Each test case becomes one TAP line (tests/py/junit2tap.py reads pytest's
# --junitxml report).  tests/e2e/test_binding.py (its own TAP: ctypes
# layouts against the C compiler's, the legacy API, fork, asyncio) runs on
# both too.  Then the library-discovery checks.  Binaries from
# ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin py
e2e_need "$PY" gcc
e2e_setup
export KMCTL KM_BUILD="$B"
SECRETS=(sk-test-py-aaaa1111 sk-test-py-bbbb2222 sk-test-py-cccc3333 sk-test-pyt-aaaa1111
    sk-test-pyt-bbbb2222 sk-test-pyt-cccc3333 sk-test-pyt-dddd4444)

if ! gcc -I"$REPO/include" -o "$TMP/layout" "$E2E_DIR/layout.c" 2>"$TMP/gcc.err"; then
    echo "Bail out! tests/e2e/layout.c does not build: $(cat "$TMP/gcc.err")"
    exit 1
fi
"$TMP/layout" >"$TMP/layout.txt"

tap_in() { # tap_in FILE: renumber TAP lines after ours
    local line
    while IFS= read -r line; do
        case "$line" in
        "ok "*) ok 0 "${line#ok*- }" ;;
        "not ok "*) ok 1 "${line#not ok*- }" ;;
        "1.."*) planned=${line#1..} ;;
        *) echo "$line" ;;
        esac
    done <"$1"
}

for impl in c-extension ctypes; do
    noext=
    [ "$impl" = ctypes ] && noext=1
    # pytest: one TAP line per test case
    rm -f "$TMP/junit.xml"
    "${SANENV[@]}" KEYMESH_EXPECT_IMPL=$impl KEYMESH_NO_EXT=$noext PYTHONDONTWRITEBYTECODE=1 \
        "$PY" -m pytest -q -p no:cacheprovider --junitxml="$TMP/junit.xml" "$REPO/tests/py" \
        >"$TMP/pytest.out" 2>&1
    prc=$?
    if [ -s "$TMP/junit.xml" ]; then
        "$PY" "$REPO/tests/py/junit2tap.py" "$TMP/junit.xml" "[$impl]" >"$TMP/ptap"
        tap_in "$TMP/ptap"
    fi
    ok $([ "$prc" = 0 ]; echo $?) "[$impl] pytest tests/py: $(tail -n 1 "$TMP/pytest.out")"
    [ "$prc" = 0 ] || diag "$(tail -n 30 "$TMP/pytest.out")"
    no_secret "$(cat "$TMP/pytest.out")"
    ok $? "[$impl] no secret in pytest's output"

    # test_binding.py: its own TAP, renumbered after ours (plan at the end)
    planned=
    "${SANENV[@]}" KEYMESH_NO_EXT=$noext "$PY" "$E2E_DIR/test_binding.py" "$TMP/layout.txt" \
        >"$TMP/tap" 2>"$TMP/py.err"
    prc=$?
    tap_in "$TMP/tap"
    ok $([ "$prc" = 0 ] && [ "${planned:-0}" -gt 0 ]; echo $?) "[$impl] test_binding.py ran to its plan (exit $prc, ${planned:-no} tests)"
    [ "$prc" = 0 ] || diag "$(tail -n 20 "$TMP/py.err")"
    no_secret "$(cat "$TMP/tap" "$TMP/py.err")"
    ok $? "[$impl] no secret in the binding's output"
done

# Library discovery: an explicit KEYMESH_LIBRARY that does not load is an
# error naming it; without it, $KM_BUILD is used.
run env KEYMESH_LIBRARY=/nonexistent/libkeymesh.so.0 "$PY" -c 'import keymesh; keymesh.SyncKeyPool(keys=["sk-x-1"])'
[ "$RC" -ne 0 ] && echo "$ERR" | grep -q 'KEYMESH_LIBRARY=/nonexistent/libkeymesh.so.0'
ok $? "KEYMESH_LIBRARY that does not load: an error naming it"
run env -u KEYMESH_LIBRARY KM_BUILD="$B" "${SANENV[@]}" "$PY" -c 'import keymesh; print(keymesh.library_path())'
[ "$RC" -eq 0 ] && [ "$OUT" = "$B/libkeymesh.so.0" ]
ok $? "without KEYMESH_LIBRARY: \$KM_BUILD/libkeymesh.so.0 ($OUT)"
run env -u KEYMESH_LIBRARY KM_BUILD="$B" "${SANENV[@]}" "$PY" -c 'import keymesh; print(keymesh.implementation())'
[ "$RC" -eq 0 ] && [ "$OUT" = c-extension ]
ok $? "the extension beside \$KM_BUILD's library is found ($OUT)"
# Names carry the pid of the process that made them: one whose process is
# gone was left behind.  A live process's name is another run's, in use
# (suites may run side by side on one machine).
leftover=0 left=
for n in $(ls /dev/shm | grep "^kmt-py-[0-9]\|^kmt-pyt-[0-9]\|^keymesh-py-[0-9]"); do
    pid=$(sed 's/^[a-z-]*-\([0-9]*\).*/\1/' <<<"$n")
    kill -0 "$pid" 2>/dev/null || { leftover=$((leftover + 1)); left="$left $n"; }
done
# The names are in the line itself: prove shows a failing line, not its comments.
ok $([ "$leftover" = 0 ]; echo $?) "no segment left in /dev/shm by a process that is gone ($leftover${left:+:$left})"
no_sanitizer_report
finish
