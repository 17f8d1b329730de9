#!/usr/bin/env bash
# tests/t_newcomer_build.sh - building and installing as README's "Setup"
# and "Build and install" say (issue 14 items 1-4), on the built tree:
#   1. a dependency missing (PKG_CONFIG_LIBDIR at an empty folder, then at
#      one without sqlite3): make stops before it compiles anything, with
#      README's message, and leaves no library; a link without the
#      dependencies' -l fails (-z defs) and leaves no libkeymesh.so either;
#   2. README's table of what each deps target installs is the Makefile's
#      and the fragments' lists; deps as another user than root says what it
#      would install and that it needs root, and installs nothing;
#   3. a program calling km_snapshot_json (libsodium) links from an installed
#      prefix with README's pkg-config commands, shared, with libkeymesh.a,
#      and fully static, and runs;
#   4. `make install PREFIX=A` then `make install DESTDIR=D PREFIX=/usr`
#      installs a keymesh.pc for /usr; ldconfig runs for a searched libdir,
#      as root, without DESTDIR, and not otherwise.
# make runs with the parent's MAKEFLAGS removed, in temporary build
# directories, except `install`, which uses ${KM_BUILD:-build} unless that
# is a sanitizer build (then a plain build is made under $TMP: README's
# commands link without -fsanitize).  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin newcomer-build
REPO=$(cd "$(dirname "$0")/.." && pwd)
case "$B" in /*) ;; *) B="$REPO/$B" ;; esac
KMCTL="$B/kmctl"
DOCS="/usr/bin/python3 $REPO/tests/newcomer/docblocks.py"
# make as a user types it: not the parent make's flags, nor the variables
# its command line exported (SAN=..., under make SAN=... test).
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SAN make -C "$REPO" --no-print-directory "$@"; }
# The build's own flags (SAN): a sanitizer build's objects link only with them.
SAN=
nm "$B/obj/shm/segment.o" 2>/dev/null | grep -q __asan_ && SAN=address
nm "$B/obj/shm/segment.o" 2>/dev/null | grep -q __ubsan_ && SAN=${SAN:+$SAN,}undefined

# ------------------------------------------------------------ 1. missing deps
mkdir -p "$TMP/empty"
run env -u PKG_CONFIG_PATH PKG_CONFIG_LIBDIR="$TMP/empty" \
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SAN make -C "$REPO" --no-print-directory BUILD="$TMP/b1" all
ok $([ "$RC" -ne 0 ]; echo $?) "make without ck, jansson, libsodium fails (exit $RC)"
want=$($DOCS find "$REPO/README.md" '^make: lib needs ' | grep '^make: ')
got=$(grep '^make: ' <<<"$ERR" | grep -v '\*\*\*')
ok $([ -n "$want" ] && [ "$got" = "$want" ]; echo $?) "it says what README's Setup says: run make deps (as root) or install: ..."
[ "$got" = "$want" ] || diag "README: $want" "make:   $got"
ok $([ ! -e "$TMP/b1" ]; echo $?) "it stopped before compiling: no build directory, no libkeymesh.so"

# Only kmctl's SQLite missing: the modules of ck, jansson, libsodium and
# kmctl's libmicrohttpd and ncursesw, not sqlite3.
mkdir -p "$TMP/pc3"
# Every module pkg-config knows but sqlite3 (libmicrohttpd's .pc requires
# gnutls's and so on: copying a closure by hand would drift).
for m in $(pkg-config --list-all | awk '{print $1}'); do
    [ "$m" = sqlite3 ] || cp "$(pkg-config --variable=pcfiledir "$m")/$m.pc" "$TMP/pc3/" 2>/dev/null
done
run env -u PKG_CONFIG_PATH PKG_CONFIG_LIBDIR="$TMP/pc3" \
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SAN make -C "$REPO" --no-print-directory BUILD="$TMP/b2" all
ok $([ "$RC" -ne 0 ] && grep -qx 'make: run make deps (as root) or install: libsqlite3-dev' <<<"$ERR" &&
    [ ! -e "$TMP/b2" ]; echo $?) "without sqlite3 only: make names libsqlite3-dev, before compiling"
[ "$RC" -ne 0 ] || diag "exit $RC"
grep -q 'install: libsqlite3-dev' <<<"$ERR" || diag "stderr: $ERR"

# A link without the dependencies' libraries (DEPS_LIBS emptied: the -l a
# pkg-config without the modules gave before the check existed) fails, and
# leaves neither the library nor its temporary.  The objects come from the
# build tree (times kept), so only the link runs.
mkdir -p "$TMP/b3"
cp -a "$B/pic" "$B/gen" "$TMP/b3/"
run mk BUILD="$TMP/b3" SAN="$SAN" DEPS_LIBS= "$TMP/b3/libkeymesh.so.0.1.0"
ok $([ "$RC" -ne 0 ] && grep -q "undefined reference to \`json_" <<<"$ERR"; echo $?) \
    "linking libkeymesh.so without -ljansson -lsodium fails (-z defs)"
ok $([ -z "$(ls "$TMP/b3" | grep '^libkeymesh\.so')" ]; echo $?) "... and leaves no libkeymesh.so* behind ($(ls "$TMP/b3" | tr '\n' ' '))"
run mk BUILD="$TMP/b3" SAN="$SAN" "$TMP/b3/libkeymesh.so.0.1.0"
ok $([ "$RC" -eq 0 ] && [ -f "$TMP/b3/libkeymesh.so.0.1.0" ] && [ ! -e "$TMP/b3/libkeymesh.so.0.1.0.tmp" ]; echo $?) \
    "the control: with them it links (exit $RC)"
[ "$RC" -eq 0 ] || diag "$(tail -n 5 <<<"$ERR")"

# ------------------------------------------------------------ 2. what deps installs
# README's Setup table, row by row: the packages in backquotes.
row() { grep -F "| \`make $1" "$REPO/README.md" | cut -d'|' -f3 | grep -o '`[^` ]*`' | tr -d '`' | sort -u | tr '\n' ' '; }
# The packages a fragment's recipe adds: missing="$$missing PKG".
frag() { grep -o 'missing="\$\$missing [^"]*"' "$REPO/$1" | sed 's/.*missing \([^"]*\)"/\1/' | sort -u; }
lists=$(mk -s -f Makefile -f tests/newcomer/print.mk km-print-deps)
deps=$(sed -n 's/^deps //p' <<<"$lists" | tr ' ' '\n' | sort -u)
want=$(tr '\n' ' ' <<<"$deps")
got=$(row 'deps` (run by')
ok $([ "$got" = "$want" ]; echo $?) "README: make deps installs $got(the Makefile: $want)"
test_pkgs=$( (sed -n 's/^deps-test //p' <<<"$lists" | tr ' ' '\n'; frag bindings/bindings.mk; frag tools/sync/sync.mk) |
    sort -u | comm -23 - <(printf '%s\n' $deps) | tr '\n' ' ')
got=$(row 'deps-test` (run by')
ok $([ "$got" = "$test_pkgs" ]; echo $?) "README: make deps-test adds $got(the Makefile, bindings.mk and sync.mk: $test_pkgs)"
want=$(frag bench/bench.mk | tr '\n' ' ')
got=$(row 'bench`')
ok $([ "$got" = "$want" ]; echo $?) "README: make bench adds $got(bench.mk: $want)"
want=$(grep -o 'apt-get install -y -qq [a-z0-9.+-]*' "$REPO/tests/fuzz/fuzz.mk" | sed 's/.* //' | sort -u | tr '\n' ' ')
got=$(row 'fuzz`')
ok $([ -n "$want" ] && [ "$got" = "$want" ]; echo $?) "README: make fuzz installs $got(fuzz.mk: $want)"

# deps as another user: it checks first, names the packages, installs
# nothing.  (The Makefile and its fragments are copied where that user can
# read them; PKG_CONFIG_LIBDIR empty: every library is "missing".)
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$TMP/mk"
    (cd "$REPO" && cp --parents Makefile bench/bench.mk bindings/bindings.mk tests/fuzz/fuzz.mk "$TMP/mk/")
    chmod -R a+rX "$TMP"
    run setpriv --reuid=65534 --regid=65534 --clear-groups env -u PKG_CONFIG_PATH \
        PKG_CONFIG_LIBDIR="$TMP/empty" env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u SAN \
        make -C "$TMP/mk" --no-print-directory deps-test
else
    run env -u PKG_CONFIG_PATH PKG_CONFIG_LIBDIR="$TMP/empty" mk deps-test
fi
ok $([ "$RC" -ne 0 ] && grep -q '^deps: need root to install: .*libck-dev' <<<"$ERR" &&
    ! grep -q 'installing' <<<"$OUT$ERR"; echo $?) "deps as another user: 'need root to install: ...', never 'installing'"
diag "$(head -n 1 <<<"$ERR")"

# ------------------------------------------------------------ 4. install, keymesh.pc, ldconfig
# From the build tree, or a plain build when that is a sanitizer one.
IB=$B
if [ -n "$SAN" ]; then
    IB="$TMP/plain"
    run mk BUILD="$IB" all
    expect 0 "a plain build to install (the tree is a sanitizer build)"
fi
# A stand-in for ldconfig: lists what the real one searches (-v), records a run.
printf '#!/bin/sh\n[ "$1" = -v ] && exec ldconfig "$@"\necho called >>"%s"\n' "$TMP/ldconfig.log" >"$TMP/ldconfig"
chmod +x "$TMP/ldconfig"
run mk BUILD="$IB" install PREFIX="$TMP/a" LDCONFIG="$TMP/ldconfig"
expect 0 "make install PREFIX=$TMP/a"
ok $(grep -qx "prefix=$TMP/a" "$TMP/a/lib/pkgconfig/keymesh.pc"; echo $?) "its keymesh.pc says prefix=$TMP/a"
ok $([ ! -e "$TMP/ldconfig.log" ]; echo $?) "no ldconfig for a libdir the dynamic linker does not search"
run mk BUILD="$IB" install DESTDIR="$TMP/d" PREFIX=/usr
expect 0 "then make install DESTDIR=$TMP/d PREFIX=/usr"
ok $(grep -qx 'prefix=/usr' "$TMP/d/usr/lib/pkgconfig/keymesh.pc" &&
    grep -qx 'libdir=/usr/lib' "$TMP/d/usr/lib/pkgconfig/keymesh.pc"; echo $?) \
    "its keymesh.pc is made again: prefix=/usr, libdir=/usr/lib (not the last install's)"
grep -qx 'prefix=/usr' "$TMP/d/usr/lib/pkgconfig/keymesh.pc" || diag "$(cat "$TMP/d/usr/lib/pkgconfig/keymesh.pc")"
ok $(grep -qx 'Requires.private: ck jansson libsodium' "$TMP/d/usr/lib/pkgconfig/keymesh.pc" &&
    grep -qx 'Libs.private: -lpthread -lm' "$TMP/d/usr/lib/pkgconfig/keymesh.pc"; echo $?) \
    "keymesh.pc: Requires.private ck jansson libsodium, Libs.private -lpthread -lm"
# ldconfig: libdir declared searched (KM_LDCONFIG_DIRS), with and without DESTDIR.
run mk BUILD="$IB" install PREFIX="$TMP/a" LDCONFIG="$TMP/ldconfig" KM_LDCONFIG_DIRS="/nowhere $TMP/a/lib"
calls=$(cat "$TMP/ldconfig.log" 2>/dev/null | wc -l)
if [ "$(id -u)" = 0 ]; then
    ok $([ "$RC" -eq 0 ] && [ "$calls" -eq 1 ]; echo $?) "as root, a searched libdir, no DESTDIR: ldconfig runs (calls: $calls)"
else
    ok $([ "$RC" -eq 0 ] && [ "$calls" -eq 0 ]; echo $?) "not root: no ldconfig (calls: $calls)"
fi
rm -f "$TMP/ldconfig.log"
run mk BUILD="$IB" install PREFIX="$TMP/a" DESTDIR="$TMP/d" LDCONFIG="$TMP/ldconfig" KM_LDCONFIG_DIRS="$TMP/a/lib"
ok $([ "$RC" -eq 0 ] && [ ! -e "$TMP/ldconfig.log" ]; echo $?) "with DESTDIR: no ldconfig"

# ------------------------------------------------------------ 3. README's link commands
# Against the PREFIX=$TMP/a install, in a folder holding app.c; each command
# as README writes it.  A segment to read: created by the installed kmctl.
mkdir -p "$TMP/w"
cp "$REPO/tests/newcomer/snapshot_app.c" "$TMP/w/app.c"
export PKG_CONFIG_PATH="$TMP/a/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
cat >"$TMP/pool.json" <<EOF
{"pools": [{"name": "openai", "keys": [{"id": "a", "secret": "sk-test-ncb-aaaa1111"}]}]}
EOF
"$TMP/a/bin/kmctl" create "$SEG" --config "$TMP/pool.json" >/dev/null
ok $? "the installed kmctl creates $SEG"
SECRETS=(sk-test-ncb-aaaa1111)
# link_run NAME REGEX: run README's command matching REGEX in $TMP/w, then the app.
link_run() {
    local cmd
    cmd=$($DOCS find "$REPO/README.md" "$2" | grep -E -e "$2" | head -n 1)
    if [ -z "$cmd" ]; then
        ok 1 "$1: README has a command matching $2"
        return 1
    fi
    (cd "$TMP/w" && rm -f app && bash -c "$cmd") >"$TMP/out" 2>"$TMP/err"
    ok $? "$1: \`$cmd\` builds"
    [ -s "$TMP/err" ] && diag "$(head -n 5 "$TMP/err")"
    LD_LIBRARY_PATH="$TMP/a/lib" "$TMP/w/app" "$SEG" >"$TMP/out" 2>"$TMP/err"
    ok $([ $? -eq 0 ] && grep -q '"pools"' "$TMP/out" && no_secret "$(cat "$TMP/out")"; echo $?) \
        "$1: the program prints the segment's snapshot"
}
link_run shared '^cc -o app app\.c \$\(pkg-config --cflags --libs keymesh\)'
ok $(readelf -d "$TMP/w/app" | grep -q 'NEEDED.*libkeymesh\.so\.0'; echo $?) "shared: it needs libkeymesh.so.0"
link_run 'libkeymesh.a' 'libkeymesh\.a /'
ok $(! readelf -d "$TMP/w/app" | grep -q 'NEEDED.*libkeymesh'; echo $?) "libkeymesh.a: it does not need libkeymesh.so"
link_run static '^cc -static '
ok $(! readelf -d "$TMP/w/app" 2>/dev/null | grep -q NEEDED; echo $?) "static: it needs no shared library"
# The flags README replaced: without libsodium the same program does not link.
(cd "$TMP/w" && cc -o app-old app.c -I"$TMP/a/include" "$TMP/a/lib/libkeymesh.a" -lpthread -lck -ljansson $(pkg-config --libs-only-L ck)) \
    >/dev/null 2>"$TMP/err"
ok $([ $? -ne 0 ] && grep -q 'randombytes_buf\|llround' "$TMP/err"; echo $?) \
    "the control: README's former flags (-lpthread -lck -ljansson) do not link it"
"$TMP/a/bin/kmctl" destroy "$SEG" >/dev/null
finish
