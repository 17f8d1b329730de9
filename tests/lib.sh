# tests/lib.sh - the prologue shared by KeyMesh's shell tests (t_*.sh).
# Sourced, never run (not executable, not named t_*, so prove skips it):
#
#   . "$(dirname "$0")/lib.sh"
#   begin NAME [BINARY...]  bail out (a failure) unless $KMCTL and every
#                           BINARY are built; make $TMP (removed at exit)
#                           and register SEG=kmt-NAME-$$
#   new_seg VAR NAME        VAR=kmt-NAME-$$, destroyed at exit
#   ok STATUS NAME          "ok N - NAME" if STATUS is 0, else "not ok N - NAME"
#   diag LINE...            "# LINE" comments
#   run CMD...              sets RC, OUT (stdout), ERR (stderr); with RUN_LOG
#                           set, also appends stdout and stderr to that file
#   expect RC_WANTED NAME   ok if $RC is RC_WANTED; on failure shows stderr
#                           (and stdout too with EXPECT_SHOWS_STDOUT=1)
#   no_secret TEXT          true if none of "${SECRETS[@]}" appears in TEXT
#   py_checks <FILE         one ok per "STATUS NAME" line (0: pass), e.g. what
#                           a Python check script printed (from a file, not a
#                           pipe: ok must run in this shell to count)
#   finish                  the plan (at the end) and the exit status
#
# Binaries come from ${KM_BUILD:-build}: $B, $KMCTL.  A test may define
# on_cleanup(); it runs at exit before the segments are destroyed.
# shellcheck shell=bash
set -u

B="${KM_BUILD:-build}"
KMCTL="$B/kmctl"

N=0
FAILED=0
RUN_LOG=
EXPECT_SHOWS_STDOUT=0
KM_SEGS=()
TMP=

ok() { # ok COND_STATUS NAME
    N=$((N + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $N - $2"
    else
        echo "not ok $N - $2"
        FAILED=$((FAILED + 1))
    fi
}
diag() { printf '# %s\n' "$@"; }

new_seg() { # new_seg VAR NAME
    printf -v "$1" 'kmt-%s-%s' "$2" "$$"
    KM_SEGS+=("${!1}")
}

km_cleanup() {
    local s
    if declare -F on_cleanup >/dev/null; then
        on_cleanup
    fi
    for s in ${KM_SEGS[@]+"${KM_SEGS[@]}"}; do
        "$KMCTL" destroy "$s" >/dev/null 2>&1
    done
    [ -z "$TMP" ] || rm -rf "$TMP"
}

begin() { # begin NAME [BINARY...]
    local name=$1 f
    shift
    for f in "$KMCTL" "$@"; do
        if [ ! -x "$f" ]; then
            # A missing binary is a broken build, not a reason to pass.
            echo "Bail out! $f not built (run make first)"
            exit 1
        fi
    done
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/kmt-$name.XXXXXX") || exit 1
    new_seg SEG "$name"
    trap km_cleanup EXIT
    trap 'exit 130' INT TERM
}

# run CMD...: sets RC, OUT (stdout), ERR (stderr)
run() {
    "$@" >"$TMP/out" 2>"$TMP/err"
    RC=$?
    OUT=$(cat "$TMP/out")
    ERR=$(cat "$TMP/err")
    [ -z "$RUN_LOG" ] || cat "$TMP/out" "$TMP/err" >>"$RUN_LOG"
}
expect() { # expect RC_WANTED NAME  (checks $RC, prints output on failure)
    [ "$RC" -eq "$1" ]
    local s=$?
    ok $s "$2 (exit $RC, want $1)"
    if [ $s -ne 0 ]; then
        if [ "$EXPECT_SHOWS_STDOUT" = 1 ]; then
            diag "stdout: $OUT" "stderr: $ERR"
        else
            diag "stderr: $ERR"
        fi
    fi
}
no_secret() { # no_secret TEXT
    local s
    for s in "${SECRETS[@]}"; do
        case "$1" in *"$s"*) return 1 ;; esac
    done
    return 0
}

py_checks() {
    local st name
    while read -r st name; do
        ok "$st" "$name"
    done
}

finish() {
    echo "1..$N"
    [ "$FAILED" -eq 0 ]
}
