#!/usr/bin/env bash
# tests/t_man.sh - the man pages and the bash completion, checked against
# what they describe so they cannot drift: every scdoc source builds and
# renders without a groff warning; kmctl(1) has a section for every command
# of kmctl's table (`kmctl --complete`) naming each of its long options;
# keymesh(3) names every function keymesh.h exports; keymesh-config(5)
# names every field of docs/config.md's tables; the completion (sourced in
# bash) completes commands, options, option arguments and NAME from the
# table; `make help` lists the targets; `make install` installs the pages
# and the completion under DESTDIR.  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin man
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KMCTL_ABS=$(cd "$(dirname "$KMCTL")" && pwd)/$(basename "$KMCTL")
for t in scdoc groff; do
    command -v $t >/dev/null || { echo "Bail out! $t not installed (make deps)"; exit 1; }
done

# -------------------------------------------------------------- the pages
for src in "$ROOT"/docs/man/*.scd; do
    page=$(basename "$src" .scd)
    scdoc <"$src" >"$TMP/$page" 2>"$TMP/scdoc.err"
    ok $? "scdoc builds $page $(head -c 200 "$TMP/scdoc.err")"
    w=$(groff -man -Tutf8 -ww -z "$TMP/$page" 2>&1)
    ok $([ -z "$w" ] && [ -s "$TMP/$page" ]; echo $?) "$page renders without a groff warning $w"
done
ok $([ -s "$TMP/kmctl.1" ] && [ -s "$TMP/keymesh.3" ] && [ -s "$TMP/keymesh-config.5" ]; echo $?) \
    "kmctl(1), keymesh(3) and keymesh-config(5) exist"

# kmctl(1): a "## CMD" section per command, naming each of its options.
SCD="$ROOT/docs/man/kmctl.1.scd"
cmds=$("$KMCTL" --complete)
ok $([ "$(echo "$cmds" | wc -l)" -ge 20 ]; echo $?) "kmctl --complete lists the commands ($(echo $cmds | wc -w))"
missing=""
for c in $cmds; do
    section=$(awk -v c="## $c" '$0 == c {on = 1; next} /^#/ {on = 0} on' "$SCD")
    if [ -z "$section" ]; then
        missing="$missing $c(no section)"
        continue
    fi
    for o in $("$KMCTL" --complete "$c" | sed -n 's/=.*//; /^--/p'); do
        [ "$o" = --help ] && continue
        grep -q -- "\*$o\*" <<<"$section" || missing="$missing $c:$o"
    done
done
ok $([ -z "$missing" ]; echo $?) "kmctl(1) documents every command and option of the table${missing:+ (missing:$missing)}"
for c in $cmds; do
    "$KMCTL" "$c" --help >/dev/null 2>&1 || missing="$missing $c"
done
ok $([ -z "$missing" ]; echo $?) "every command of the table answers --help"

# keymesh(3): every exported function of keymesh.h.
fns=$(grep -o 'KM_EXTERN [^(]*(' "$ROOT/include/keymesh.h" | grep -o 'km_[a-z0-9_]*(' | tr -d '(' | sort -u)
missing=""
for f in $fns; do grep -q "\*$f\*" "$ROOT/docs/man/keymesh.3.scd" || missing="$missing $f"; done
ok $([ "$(echo "$fns" | wc -l)" -ge 50 ] && [ -z "$missing" ]; echo $?) \
    "keymesh(3) names every function keymesh.h exports ($(echo "$fns" | wc -l))${missing:+ (missing:$missing)}"

# keymesh.h: every exported function's comment (the one right above it,
# or above the group of declarations it belongs to) carries an LMDB-style
# @note on thread safety.
nonote=$(awk '/^$/ || /^\/\*/ { blk = "" } /^$/ { next } { blk = blk "\n" $0 }
    /^KM_EXTERN / { if (blk !~ /@note/) { match($0, /km_[a-z0-9_]*\(/); print substr($0, RSTART, RLENGTH - 1) } }' \
    "$ROOT/include/keymesh.h" | tr '\n' ' ')
nfn=$(grep -c '^KM_EXTERN ' "$ROOT/include/keymesh.h")
ok $([ "$nfn" -ge 50 ] && [ -z "$nonote" ]; echo $?) \
    "keymesh.h: a @note on thread safety for every function ($nfn)${nonote:+ (missing: $nonote)}"

# keymesh-config(5): every field of docs/config.md's tables.
fields=$(grep -o '^| `[a-z_0-9]*`' "$ROOT/docs/config.md" | tr -d '|` ' | sort -u)
missing=""
for f in $fields; do
    grep -q "\*$f\*" "$ROOT/docs/man/keymesh-config.5.scd" || missing="$missing $f"
done
ok $([ "$(echo "$fields" | wc -l)" -ge 30 ] && [ -z "$missing" ]; echo $?) \
    "keymesh-config(5) names every field of docs/config.md ($(echo "$fields" | wc -l))${missing:+ (missing:$missing)}"

# ------------------------------------------------------------ completion
run "$KMCTL" create "$SEG" --config /dev/stdin <<EOF
{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "sk-test-man-aaaa1111"}]}]}
EOF
expect 0 "a segment to complete"
mkdir "$TMP/files" && touch "$TMP/files/pool.json" "$TMP/files/other.txt"
# comp WORDS...: the completions of the last word, one a line, sorted
comp() {
    (
        cd "$TMP/files" || exit 1
        # shellcheck source=tools/kmctl/kmctl.bash
        . "$ROOT/tools/kmctl/kmctl.bash"
        COMP_WORDS=("$KMCTL_ABS" "$@")
        COMP_CWORD=$#
        _kmctl
        printf '%s\n' "${COMPREPLY[@]}" | sort
    )
}
ok $([ "$(comp st | tr '\n' ' ')" = "stats " ]; echo $?) "completes 'kmctl st' to stats"
ok $([ "$(comp '' | wc -l)" = "$(echo "$cmds" | wc -l)" ]; echo $?) "completes every command of the table"
ok $([ "$(comp stats x --p | tr '\n' ' ')" = "--pool " ]; echo $?) "completes 'kmctl stats x --p' to --pool"
ok $([ "$(comp check x -- | tr '\n' ' ')" = "--help --json --quiet " ]; echo $?) "completes check's options ($(comp check x -- | tr '\n' ' '))"
ok $([ "$(comp create x --config p | tr '\n' ' ')" = "pool.json " ]; echo $?) "completes --config FILE with a file name"
ok $([ "$(comp create x --mode 0666 --fo | tr '\n' ' ')" = "--force " ]; echo $?) "completes create's --force"
ok $([ "$(comp remove-pool x p -- | tr '\n' ' ')" = "--force --help --timeout-ms " ]; echo $?) \
    "completes remove-pool's options ($(comp remove-pool x p -- | tr '\n' ' '))"
ok $([ "$(comp add-pool x --config p | tr '\n' ' ')" = "pool.json " ]; echo $?) "completes add-pool's --config FILE"
ok $([ -z "$(comp stats x --pool '')" ]; echo $?) "no file names for --pool's argument"
comp inspect "${SEG%-*}" | grep -qx "$SEG"
ok $? "completes NAME from the segments of this host"
ok $([ "$(comp restore "$SEG" o | tr '\n' ' ')" = "other.txt " ]; echo $?) "completes restore's FILE operand with a file name"
ok $([ "$(comp stats --json "$SEG" --pool p --k | tr '\n' ' ')" = "--key " ]; echo $?) "options after operands and option arguments"

# ------------------------------------------------------------ make
run make -s -C "$ROOT" help
ok $([ "$RC" = 0 ] && echo "$OUT" | grep -q '^make man ' && echo "$OUT" | grep -q '^make install ' &&
     echo "$OUT" | grep -q '^make test '; echo $?) "make help lists man, install, test"
run make -s -C "$ROOT" BUILD="$B" install DESTDIR="$TMP/d" PREFIX=/usr
expect 0 "make install DESTDIR=... PREFIX=/usr"
for f in share/man/man1/kmctl.1 share/man/man3/keymesh.3 share/man/man5/keymesh-config.5 \
         share/bash-completion/completions/kmctl bin/kmctl; do
    ok $([ -s "$TMP/d/usr/$f" ]; echo $?) "installed /usr/$f"
done
run make -s -C "$ROOT" BUILD="$B" uninstall DESTDIR="$TMP/d" PREFIX=/usr
ok $([ "$RC" = 0 ] && [ -z "$(find "$TMP/d" -type f)" ]; echo $?) "make uninstall removes all of it"

finish
