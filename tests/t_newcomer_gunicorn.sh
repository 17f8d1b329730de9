#!/usr/bin/env bash
# tests/t_newcomer_gunicorn.sh - examples/python_gunicorn.py as its
# docstring runs it (`PYTHONPATH=bindings/python gunicorn -w 4 -b ...
# -c examples/python_gunicorn.py --chdir examples python_gunicorn:app`, from
# the repository, on a free port of 127.0.0.1 instead of 8000), twice at
# once with one segment name (issue 14 item 13):
#   - B, started while A runs, shares A's segment and unlinks nothing;
#   - stopping A leaves B working: the name still there, B's workers (a new
#     one too) still served; stopping B then removes it, with no traceback;
#   - a segment no master runs on (made by kmctl create) is used as it is
#     and left in place.
# TAP output (plan at the end).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin newcomer-gunicorn
e2e_need /usr/bin/gunicorn curl "$PY"
e2e_setup
on_cleanup() { e2e_cleanup; }
export KEYMESH_SEGMENT="$SEG" PYTHONDONTWRITEBYTECODE=1   # nothing written under examples/

# start_example NAME: gunicorn with the example, from the repository; sets
# NAME_PID and NAME_PORT, log in $TMP/NAME.log.
start_example() {
    local n=$1 port= i
    bg_start "${n}_PID" env -C "$REPO" PYTHONPATH=bindings/python "${SANENV[@]}" \
        /usr/bin/gunicorn -w 4 -b 127.0.0.1:0 -c examples/python_gunicorn.py \
        --chdir examples python_gunicorn:app 2>"$TMP/$n.log"
    for i in $(seq 200); do
        port=$(sed -n 's|.*Listening at: http://127.0.0.1:\([0-9]*\).*|\1|p' "$TMP/$n.log")
        [ -n "$port" ] && [ "$(grep -c 'Booting worker' "$TMP/$n.log")" -ge 4 ] && break
        sleep 0.05
    done
    if [ -z "$port" ]; then
        echo "Bail out! gunicorn $n did not start: $(tail -n 20 "$TMP/$n.log")"
        exit 1
    fi
    printf -v "${n}_PORT" '%s' "$port"
}

# served PORT N: N requests, all answered 200 "served with key ..."
served() {
    local i out
    for i in $(seq "$2"); do
        out=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$1/") || return 1
        case "$out" in "served with key "*" 200") ;; *) diag "got: $out"; return 1 ;; esac
    done
}

seg_exists() { "$KMCTL" inspect "$SEG" >/dev/null 2>&1; }

# ------------------------------------------------ A, then B on the same name
start_example A
grep -q "keymesh: created segment $SEG" "$TMP/A.log"
ok $? "A's master created segment $SEG"
served "$A_PORT" 2
ok $? "A serves"

start_example B
grep -q "keymesh: sharing segment $SEG" "$TMP/B.log"
ok $? "B's master shares A's segment instead of replacing it"
served "$B_PORT" 2 && served "$A_PORT" 2
ok $? "A and B both serve"
n=$(snap 'sum(k["counters"]["acquired"] for p in s["pools"] for k in p["keys"])')
ok $([ "$n" = 6 ]; echo $?) "one segment: it counted the requests of both (6, got $n)"

# ------------------------------------------------ stop A: B keeps working
stop_pid "$A_PID"
grep -q "keymesh: leaving segment $SEG to the master still running on it" "$TMP/A.log"
ok $? "A, stopping, leaves the segment to B"
seg_exists
ok $? "the segment's name is still there after A stopped"
# New workers of B attach by name: kill them all, gunicorn starts others.
# (The pool allows 2 keys x burst 10 at once: the whole test stays below.)
old=$(pgrep -P "$B_PID" | sort | tr '\n' ' ')
kill -KILL $old
for _ in $(seq 200); do
    [ "$(grep -c 'Booting worker' "$TMP/B.log")" -ge 8 ] && break
    sleep 0.05
done
served "$B_PORT" 6
ok $? "B's new workers serve after A stopped (old workers: $old)"

# ------------------------------------------------ stop B: the last one removes it
stop_pid "$B_PID"
grep -q "keymesh: removed segment $SEG" "$TMP/B.log"
ok $? "B, the last master, removes the segment"
seg_exists
ok $([ $? -ne 0 ]; echo $?) "no segment $SEG left"
! grep -q -E 'Traceback|KeyMeshError' "$TMP/A.log" "$TMP/B.log"
ok $? "no traceback in either master's log"
grep -E 'Traceback|KeyMeshError' -A3 "$TMP/A.log" "$TMP/B.log" | head -n 20 | while read -r l; do diag "$l"; done

# ------------------------------------------------ a segment nobody runs on
cat >"$TMP/other.json" <<EOF
{"pools": [{"name": "openai", "keys": [{"id": "z", "secret": "sk-test-nc-zzzz9999"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/other.json"
expect 0 "kmctl create makes $SEG, which no master runs on"
start_example C
grep -q "keymesh: segment $SEG exists and no master runs on it" "$TMP/C.log"
ok $? "C warns that it uses a segment it did not make, as it is"
out=$(curl -s "http://127.0.0.1:$C_PORT/")
case "$out" in "served with key z "*) r=0 ;; *) r=1 ;; esac
ok $r "C serves from that segment's key z ($out)"
stop_pid "$C_PID"
grep -q "keymesh: leaving segment $SEG to its maker" "$TMP/C.log"
ok $? "C, stopping, leaves it to its maker"
seg_exists
ok $? "the segment kmctl made is still there"
no_sanitizer_report
finish
