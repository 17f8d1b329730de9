#!/usr/bin/env bash
# .ci/check-layers.sh [BUILD] - the layering rules of issue 16, on the built tree.
#
#   shm/ is a substrate under src/: no file under shm/ includes a header of
#   src/, and no object of shm/ references a symbol that an object of src/
#   defines (nm: undefined in $BUILD/obj/shm/*.o, defined in $BUILD/obj/src/*.o).
#   tools/ and bindings/ see only include/keymesh.h: their C files include no
#   header of src/ or shm/, and their objects (compiled here with $CC $CFLAGS,
#   which must not add -Isrc or -Ishm) reference no km__* internal and no km_*
#   name that keymesh.h does not declare; every km_* name the Python (ctypes)
#   and Lua (ffi.cdef) bindings use is declared in keymesh.h.
#
# Prints one line per edge, "FILE[:LINE]: NAME (why)", and exits 1 if there
# is any (2 if the tree is not built).  `make check-layers` builds and runs it.
set -u
cd "$(dirname "$0")/.." || exit 2
B=${1:-build}
CC=${CC:-cc}
CFLAGS=${CFLAGS:--std=c11 -D_GNU_SOURCE -Iinclude}
edges=0
edge() { echo "$*"; edges=$((edges + 1)); }
tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT

# The object of every source under DIR (not those a build dir keeps of
# removed files); a source without one stops the check.
objs() { find "$1" -name '*.c' | sort | while read -r s; do
    o="$B/obj/${s%.c}.o"
    [ -f "$o" ] || { echo "check-layers: $o missing (make first)" >&2; echo MISSING; }
    echo "$o"; done; }
# Line of the first use of NAME in FILE that is not in a comment line.
line() { grep -nw -- "$2" "$1" | grep -vE '^[0-9]+:\s*(\*|/\*|//)' | head -1 | cut -d: -f1; }
# What `#include "X"` in FILE means: the file next to it, else include/X,
# else what -Isrc / -Ishm would find; printed relative to the top.
resolve() { local d; d=$(dirname "$1")
    for c in "$d/$2" "include/$2" "src/$2" "shm/$2"; do
        [ -f "$c" ] && { realpath --relative-to=. "$c"; return; }; done; echo "?/$2"; }
# includes FILE ALLOWED_DIR...: an edge for each quoted include outside them.
includes() { local f=$1 n h r a; shift
    grep -nE '^\s*#\s*include\s*"' "$f" | while IFS=: read -r n h; do
        h=${h#*\"}; h=${h%%\"*}; r=$(resolve "$f" "$h")
        for a in "$@"; do case $r in "$a"/*) continue 2 ;; esac; done
        echo "$f:$n: #include \"$h\" ($r)"
    done; }

objs shm >"$tmp/shm_objs" && objs src >"$tmp/src_objs" || exit 2
! grep -qx MISSING "$tmp/shm_objs" "$tmp/src_objs" || exit 2

# keymesh.h's names: every km_ identifier of the header without its comments.
$CC -E -P -Iinclude include/keymesh.h 2>/dev/null | grep -oE '\bkm_[a-z0-9_]+' | sort -u >"$tmp/api"
[ -s "$tmp/api" ] || { echo "check-layers: cannot preprocess include/keymesh.h with $CC"; exit 2; }

# 1. shm/ -> src/: includes, then symbols.
for f in shm/*.[ch]; do
    while read -r l; do edge "$l"; done < <(includes "$f" shm include)
done
while read -r o; do nm -g -P --defined-only "$o" | awk -v s="${o#"$B"/obj/}" '{ print $1, s }'
done <"$tmp/src_objs" | sed 's/\.o$/.c/' | sort -k1,1 >"$tmp/src_defs"
while read -r o; do
    c=${o#"$B"/obj/}; c=${c%.o}.c
    nm -u -P "$o" | awk '{ print $1 }' | sort -u | join - "$tmp/src_defs" >"$tmp/up"
    while read -r sym def; do
        edge "$c:$(line "$c" "$sym"): $sym (defined in $def)"
    done <"$tmp/up"
done <"$tmp/shm_objs"

# 2. tools/ and bindings/, C: includes, then the symbols of their objects.
while read -r f; do
    top=${f%%/*}
    while read -r l; do edge "$l"; done < <(includes "$f" "$top" include)
    o="$tmp/$(echo "$f" | tr / _).o"
    # shellcheck disable=SC2086  # CFLAGS is a list of flags
    # The Python extension includes Python.h as a system header, nothing else.
    extra=""
    case $f in bindings/python/*) extra="-isystem $(${PYTHON:-/usr/bin/python3} -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" ;; esac
    # The Node addon includes node_api.h the same way; without Node's
    # headers (make deps-test installs them) its includes are checked above,
    # its symbols are not.
    case $f in bindings/node/*)
        extra="-isystem ${NODE_INCLUDE:-/usr/include/node}"
        if [ ! -f "${NODE_INCLUDE:-/usr/include/node}/node_api.h" ]; then
            echo "check-layers: $f: no node_api.h (make deps-test): its symbols are not checked" >&2
            continue
        fi ;;
    esac
    # shellcheck disable=SC2086  # CFLAGS and extra are lists of flags
    if ! $CC $CFLAGS $extra -O0 -w -c "$f" -o "$o" 2>"$tmp/cc.err"; then
        edge "$f: does not compile against include/ alone: $(grep -m1 error "$tmp/cc.err")"
        continue
    fi
    for sym in $(nm -u -P "$o" | awk '$1 ~ /^km_/ { print $1 }'); do
        case $sym in
        km__*) edge "$f:$(line "$f" "$sym"): $sym (library internal)" ;;
        *) grep -qx "$sym" "$tmp/api" || edge "$f:$(line "$f" "$sym"): $sym (not in include/keymesh.h)" ;;
        esac
    done
done < <(find tools bindings -name '*.c' | sort)

# 3. bindings/, Python and Lua: every km_ name outside comments.
while read -r f; do
    case $f in *.py) cm='#' ;; *) cm='--' ;; esac
    awk -v cm="$cm" '{ sub(cm ".*", ""); while (match($0, /(^|[^A-Za-z0-9_])km_[a-z0-9_]+/)) {
        w = substr($0, RSTART, RLENGTH); sub(/^[^k]*/, "", w); print FILENAME ":" FNR ": " w
        $0 = substr($0, RSTART + RLENGTH) } }' "$f"
done < <(find bindings -name '*.py' -o -name '*.lua' | sort) | while read -r at w; do
    grep -qx "$w" "$tmp/api" || echo "$at $w (bound, not in include/keymesh.h)"
done >"$tmp/bind"
while read -r l; do edge "$l"; done <"$tmp/bind"

[ "$edges" -eq 0 ] || { echo "check-layers: $edges edges against the layers"; exit 1; }
echo "check-layers: ok"
