#!/usr/bin/env bash
# tests/t_lua_layout.sh - the LuaJIT binding's ffi.cdef structs
# (bindings/lua/keymesh.lua) against the C compiler's layout, as t_py.sh
# checks the ctypes ones: tests/e2e/layout.c prints every field's offset,
# tests/e2e/lua_layout.lua compares (TAP, renumbered here).  Needs gcc and
# luajit (make deps).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin lua-layout
e2e_need gcc luajit

if ! gcc -I"$REPO/include" -o "$TMP/layout" "$E2E_DIR/layout.c" 2>"$TMP/gcc.err"; then
    echo "Bail out! tests/e2e/layout.c does not build: $(cat "$TMP/gcc.err")"
    exit 1
fi
"$TMP/layout" >"$TMP/layout.txt"

luajit "$E2E_DIR/lua_layout.lua" "$TMP/layout.txt" "$REPO/bindings/lua/keymesh.lua" \
    >"$TMP/tap" 2>"$TMP/lua.err"
lrc=$?
planned=
while IFS= read -r line; do
    case "$line" in
    "ok "*) ok 0 "${line#ok [0-9]* - }" ;;
    "not ok "*) ok 1 "${line#not ok [0-9]* - }" ;;
    "1.."*) planned=${line#1..} ;;
    *) echo "$line" ;;
    esac
done <"$TMP/tap"
ok "$([ "$lrc" = 0 ] && [ "${planned:-0}" -gt 0 ]; echo $?)" "lua_layout.lua ran to its plan (exit $lrc, ${planned:-no} tests)"
[ "$lrc" = 0 ] || diag "$(tail -n 20 "$TMP/lua.err")"

# Loading the library checks the cdef's sizes against km_struct_size(): the
# real library passes, and a struct declared with another size is named.
cat >"$TMP/sizes.lua" <<'EOF'
package.path = arg[1] .. "/?.lua;" .. package.path
local km = require "keymesh"
local l = km.load(arg[2])
local ok = #km.size_mismatches(l) == 0
local bad = km.size_mismatches(l, { km_request = 2 }) -- km_request against KM_ST_LEASE
print((ok and "agree " or "differ ") .. #bad .. " " .. (bad[1] or ""))
EOF
e2e_setup # $LIBKM; SANENV preloads the sanitizer runtime for a SAN= build
out=$("${SANENV[@]}" luajit "$TMP/sizes.lua" "$REPO/bindings/lua" "$LIBKM" 2>&1)
ok "$(case "$out" in "agree 1 km_request: "*" bytes in libkeymesh, "*" in this binding") echo 0 ;; *) echo 1 ;; esac)" \
    "keymesh.load() checks every cdef struct's size against km_struct_size, and names one that differs"
[ "${out#agree 1}" != "$out" ] || diag "$out"
finish
