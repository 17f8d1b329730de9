#!/usr/bin/env bash
# tests/t_php.sh - the PHP binding (bindings/php, on PHP's FFI) in PHP's CLI.
#   layout   every struct the binding declares (bindings/php/src/keymesh.h,
#            libc.h) against the C compiler's layout: tests/e2e/layout.c and
#            tests/php/libc_layout.c print the offsets, tests/php/layout.php
#            compares them with FFI\CType's;
#   binding  (not with a sanitizer build of the library: tests/php/php.sh)
#            tests/php/binding.php twice: the declarations given to
#            FFI::cdef (how the CLI runs it), then preloaded by ffi.preload
#            from a header written by bin/keymesh-ffi-header (how php-fpm
#            runs it).
# The PHP programs print TAP, renumbered here.  Needs php8.2-cli with FFI
# and pcntl, and gcc (make deps-test).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin php
e2e_need php gcc
e2e_setup
# shellcheck source=tests/php/php.sh
. "$REPO/tests/php/php.sh"
PHPDIR="$REPO/tests/php"
for m in FFI pcntl posix; do
    if ! php -m | grep -qx "$m"; then
        echo "Bail out! php has no $m extension (php8.2-cli: make deps-test)"
        exit 1
    fi
done

# php_tap NAME CMD...: run a PHP TAP program, its lines renumbered into ours
php_tap() {
    local name=$1 planned= rc line
    shift
    "$@" >"$TMP/tap" 2>"$TMP/php.err"
    rc=$?
    while IFS= read -r line; do
        case "$line" in
        "ok "*) ok 0 "$name: ${line#ok [0-9]* - }" ;;
        "not ok "*) ok 1 "$name: ${line#not ok [0-9]* - }" ;;
        "1.."*) planned=${line#1..} ;;
        *) echo "$line" ;;
        esac
    done <"$TMP/tap"
    ok "$([ "$rc" = 0 ] && [ "${planned:-0}" -gt 0 ]; echo $?)" "$name ran to its plan (exit $rc, ${planned:-no} tests)"
    [ "$rc" = 0 ] || diag "$(tail -n 20 "$TMP/php.err")"
}

# ------------------------------------------------------------------ layout
if ! gcc -I"$REPO/include" -o "$TMP/layout" "$E2E_DIR/layout.c" 2>"$TMP/gcc.err" ||
    ! gcc -o "$TMP/libc_layout" "$PHPDIR/libc_layout.c" 2>>"$TMP/gcc.err"; then
    echo "Bail out! the layout programs do not build: $(cat "$TMP/gcc.err")"
    exit 1
fi
"$TMP/layout" >"$TMP/layout.txt"
"$TMP/libc_layout" >"$TMP/libc_layout.txt"
php_tap layout php "$PHPDIR/layout.php" "$TMP/layout.txt" "$TMP/libc_layout.txt"

# ------------------------------------------------------------------ binding
if php_sanitized; then
    ok 0 "the binding's tests # SKIP $PHP_SKIP_WHY"
    finish
    exit
fi
export KMCTL KMT_TMP="$TMP" REPO
run_binding() { # run_binding HOW PHP...
    local how=$1
    shift
    # binding.php removes its segments as it exits; if it crashes, begin's trap does
    KM_SEGS+=("kmt-php-$how-$$-a" "kmt-php-$how-$$-b" "kmt-php-$how-$$-bad")
    KMT_HOW=$how KMT_TAG="$how-$$" KMT_PHP=$("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@") \
        php_tap "binding ($how)" "${SANENV[@]}" "$@" "$PHPDIR/binding.php"
}
run_binding cdef php

php "$REPO/bindings/php/bin/keymesh-ffi-header" --lib "$LIBKM" -o "$TMP/keymesh.h"
grep -q "^#define FFI_LIB \"$LIBKM\"\$" "$TMP/keymesh.h"
ok $? "bin/keymesh-ffi-header --lib writes the header with FFI_LIB set to the library"
run_binding preload php -d "ffi.preload=$TMP/keymesh.h:$REPO/bindings/php/src/libc.h"

# Loading checks every declared struct's size against km_struct_size(): a
# km_lease declared one word longer is refused, by name, before any use.
sed '/^typedef struct km_lease {/,/^} km_lease;/s/uint64_t reserved\[4\];/uint64_t reserved[5];/' \
    "$TMP/keymesh.h" >"$TMP/keymesh-bad.h"
out=$("${SANENV[@]}" php -d "ffi.preload=$TMP/keymesh-bad.h:$REPO/bindings/php/src/libc.h" -r '
require getenv("REPO") . "/bindings/php/src/autoload.php";
try { KeyMesh\Pool::open("kmt-php-none-'$$'"); echo "opened\n"; } catch (KeyMesh\Exception $e) { echo get_class($e), ": ", $e->getMessage(), "\n"; }' 2>&1)
case "$out" in
"KeyMesh\Exception: keymesh: $LIBKM does not match this binding (km_lease: 664 bytes in libkeymesh, 672 in this binding)"*) r=0 ;;
*) r=1 ;;
esac
ok $r "a binding whose km_lease differs from the library's is refused at load, naming it"
[ $r = 0 ] || diag "$out"

# ------------------------------------------------------------------ example
new_seg EXSEG php-example
ex() { KEYMESH_SEGMENT=$EXSEG "${SANENV[@]}" php "$REPO/examples/laravel-style.php" 2>&1; }
out1=$(ex)
rc1=$?
out2=$(ex)
rc2=$?
ok $([ "$rc1" = 0 ] && [ "$rc2" = 0 ] && grep -q "^created segment $EXSEG\$" <<<"$out1" &&
    ! grep -q '^created' <<<"$out2" && [ "$(grep -c '^request .*: 200 hello' <<<"$out1")" = 9 ] &&
    [ "$(grep -c '^request .*: 502 upstream answered 429' <<<"$out1")" = 1 ]; echo $?) \
    "examples/laravel-style.php: creates the segment, then reuses it; 9 answers and the 429 (exit $rc1, $rc2)"
[ "$rc1" = 0 ] || diag "$out1"
acq=$("$KMCTL" inspect "$EXSEG" --json | "$PY" -c 'import json, sys; s = json.load(sys.stdin); print(sum(k["counters"]["acquired"] for p in s["pools"] for k in p["keys"]), s["processes_attached"])')
ok $([ "$acq" = "20 0" ]; echo $?) "... 20 keys acquired over the two runs; nothing attached after they exited (kmctl inspect attaches read-only, without a slot) ($acq)"
run "$KMCTL" check "$EXSEG"
expect 0 "... kmctl check clean"
SECRETS+=(sk-example-aaaa1111 sk-example-bbbb2222)
no_secret "$out1$out2"
ok $? "... no secret in its output"

# binding.php's secrets are random, all "sk-test-php-..."
! cat "$TMP"/*.err 2>/dev/null | grep -q 'sk-test-php-\|sk-example-'
ok $? "no secret on the PHP programs' standard error"
no_sanitizer_report
finish
