#!/usr/bin/env bash
# tests/t_admin.sh - kmctl as the repair tool of issue 17 (findings 5, 6, 9):
#   - a full process table (capacity.processes 2, both slots held by dead
#     workers with leases): kmctl ps, check and reap still work, since none
#     takes a process slot; after the reap check is clean;
#   - the commands that look (inspect, ps, check, stats, metrics, snapshot)
#     write nothing: the segment's bytes are the same before and after;
#   - `kmctl create` of a 4000-key configuration killed with SIGKILL at
#     random points, 15 times: the name never answers "not initialised" (it
#     is absent, or the segment is complete), at most one temporary of a dead
#     creator is left, which the next create removes before it succeeds;
#     `kmctl reap NAME` removes such a temporary when there is no segment;
#   - `kmctl destroy` removes a KeyMesh segment and the temporary of a dead
#     creation, refuses anything else in /dev/shm, saying what it is, and
#     removes it with --force, saying what it was.
# TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

HOLD="$B/tests/helpers/hold"
begin admin "$HOLD"
new_seg BIG admin-big
new_seg FOREIGN admin-foreign
HOLDS=()
on_cleanup() {
    local p
    for p in ${HOLDS[@]+"${HOLDS[@]}"}; do kill -KILL "$p" 2>/dev/null; done
    rm -f "/dev/shm/$FOREIGN"
    for p in /dev/shm/.kmtmp.*."$BIG"; do [ -e "$p" ] && rm -f "$p"; done
}

# ------------------------------------------------- a full process table
cat >"$TMP/small.json" <<EOF
{"capacity": {"keys": 4, "processes": 2},
 "pools": [{"name": "p", "keys": [{"id": "a", "secret": "sk-test-admin-aaaa1111"},
                                  {"id": "b", "secret": "sk-test-admin-bbbb2222"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/small.json"
expect 0 "create a segment of 2 process slots"
for i in 1 2; do
    "$HOLD" "$SEG" p 2 >"$TMP/hold$i" 2>&1 &
    HOLDS+=($!)
done
for i in 1 2; do
    for _ in $(seq 100); do grep -q held "$TMP/hold$i" && break; sleep 0.05; done
done
ok $(grep -q held "$TMP/hold1" && grep -q held "$TMP/hold2"; echo $?) "two workers hold 2 leases each"
for p in "${HOLDS[@]}"; do kill -KILL "$p"; wait "$p" 2>/dev/null; done
HOLDS=()
run "$KMCTL" ps "$SEG"
expect 0 "ps on a full table of dead workers"
ok $([ "$(echo "$OUT" | grep -Ec '^  [0-9]+ +[0-9]+ +no +2 ')" = 2 ]; echo $?) "ps lists both dead, 2 leases each"
ok $(echo "$OUT" | grep -vq "this kmctl"; echo $?) "kmctl is not in the table it shows"
run "$KMCTL" check "$SEG"
expect 1 "check on the full table: violations (the dead workers), not an error"
ok $(echo "$OUT" | grep -q "died without detaching" && ! echo "$ERR" | grep -q "table full"; echo $?) \
    "check names the dead workers"
run "$KMCTL" reap "$SEG"
expect 0 "reap on the full table"
ok $(echo "$OUT" | grep -q "^reaped 2 dead processes, 4 leases released"; echo $?) "reap: $OUT"
run "$KMCTL" check "$SEG"
expect 0 "check clean after the reap"

# ------------------------------------------------------- looking writes nothing
"$HOLD" "$SEG" p 1 >"$TMP/hold3" 2>&1 &
HOLDS+=($!)
for _ in $(seq 100); do grep -q held "$TMP/hold3" && break; sleep 0.05; done
cp "/dev/shm/$SEG" "$TMP/before"
for c in inspect ps check stats metrics snapshot "inspect --json" "stats --json"; do
    # shellcheck disable=SC2086
    "$KMCTL" $c "$SEG" >/dev/null 2>&1
done
cp "/dev/shm/$SEG" "$TMP/after"
ok $(cmp -s "$TMP/before" "$TMP/after"; echo $?) \
    "inspect, ps, check, stats, metrics and snapshot leave every byte of the segment as it was"
{ kill -KILL "${HOLDS[0]}"; wait "${HOLDS[0]}"; } 2>/dev/null
wait "${HOLDS[0]}" 2>/dev/null
HOLDS=()
"$KMCTL" reap "$SEG" >/dev/null

# --------------------------------------------------- a create killed at random
python3 -c '
import json, sys
keys = [{"id": "k%d" % i, "secret": "sk-test-admin-big-%08d" % i} for i in range(4000)]
json.dump({"capacity": {"keys": 4000, "processes": 8}, "pools": [{"name": "p", "keys": keys}]}, sys.stdout)
' >"$TMP/big.json"
tmps() { find /dev/shm -maxdepth 1 -name ".kmtmp.*.$BIG" | wc -l; }
never_half=0 kills=0 complete=0 too_many=0 recreate=0
for i in $(seq 15); do
    "$KMCTL" create "$BIG" --config "$TMP/big.json" >/dev/null 2>&1 &
    pid=$!
    sleep "0.0$(printf %02d $((RANDOM % 25)))"
    kill -KILL "$pid" 2>/dev/null && kills=$((kills + 1))
    wait "$pid" 2>/dev/null
    run "$KMCTL" inspect "$BIG"
    case $RC in
    0) complete=$((complete + 1)) ;;
    3) ;;
    *) never_half=$((never_half + 1)); diag "after kill $i: exit $RC: $ERR" ;;
    esac
    [ "$(tmps)" -le 1 ] || too_many=$((too_many + 1))
    if [ "$RC" = 3 ] && [ $((i % 3)) = 0 ] && [ "$(tmps)" = 1 ]; then
        # A reap of the absent name removes its creation's temporary.
        run "$KMCTL" reap "$BIG"
        [ "$RC" = 0 ] && [ "$(tmps)" = 0 ] || { recreate=$((recreate + 1)); diag "reap: $RC $OUT $ERR"; }
    fi
    "$KMCTL" destroy "$BIG" >/dev/null 2>&1
    run "$KMCTL" create "$BIG" --config "$TMP/big.json"
    if [ "$RC" != 0 ] || [ "$(tmps)" != 0 ]; then
        recreate=$((recreate + 1))
        diag "create after kill $i: exit $RC, $(tmps) temporaries: $ERR"
    fi
    "$KMCTL" destroy "$BIG" >/dev/null 2>&1
done
diag "$kills creates killed, $complete had finished"
ok $([ "$kills" -ge 10 ]; echo $?) "kmctl create of 4000 keys killed $kills times"
ok $never_half "no kill left a half-made segment under the name (never \"not initialised\")"
ok $too_many "no kill left more than one temporary"
ok $recreate "after each kill a new create succeeds and no temporary is left"

# ------------------------------------------------------------ destroy
head -c 4096 /dev/urandom >"/dev/shm/$FOREIGN"
run "$KMCTL" destroy "$FOREIGN"
expect 1 "destroy refuses an object that is not KeyMesh's"
ok $(echo "$ERR" | grep -q "not a KeyMesh segment.*4096 bytes.*--force" && [ -e "/dev/shm/$FOREIGN" ]; echo $?) \
    "it says what it is and leaves it: $ERR"
run "$KMCTL" destroy "$FOREIGN" --force
expect 0 "destroy --force removes it"
ok $(echo "$OUT" | grep -q "^removed '$FOREIGN': not a KeyMesh segment" && [ ! -e "/dev/shm/$FOREIGN" ]; echo $?) \
    "and says what it was: $OUT"
: >"/dev/shm/$FOREIGN"
run "$KMCTL" destroy "$FOREIGN"
expect 1 "destroy refuses an empty object"
echo "$ERR" | grep -q "an empty shared-memory object (another program's, or a creation that died before sizing it)"
ok $? "destroy says what an empty object is: $ERR"
# Every other command says what it is and how to remove it, not "not
# initialised (being created?)".
for c in inspect stats ps check snapshot; do
    run "$KMCTL" $c "$FOREIGN"
    [ "$RC" = 1 ] && [ "$ERR" = "kmctl: $c: segment '$FOREIGN': an empty shared-memory object (0 bytes, mode $(stat -c %04a "/dev/shm/$FOREIGN"), uid $(id -u)), not a KeyMesh segment: another program's, or a creation that died before sizing it; remove it with 'kmctl destroy --force $FOREIGN' or 'rm /dev/shm/$FOREIGN'" ]
    ok $? "$c on an empty object: what it is and how to remove it (exit $RC: $ERR)"
done
run "$KMCTL" destroy --force "$FOREIGN"
expect 0 "the command it names removes it"
ok $([ ! -e "/dev/shm/$FOREIGN" ]; echo $?) "the empty object is gone"
head -c 100 /dev/urandom >"/dev/shm/$FOREIGN"
run "$KMCTL" inspect "$FOREIGN"
echo "$ERR" | grep -q "^kmctl: inspect: segment '$FOREIGN': not a KeyMesh segment: an object of 100 bytes .*kmctl destroy --force $FOREIGN'$"
ok $? "inspect on another program's object: what it is and how to remove it ($ERR)"
rm -f "/dev/shm/$FOREIGN"
# A temporary of a creation that died: destroy removes it, without --force.
"$KMCTL" create "$BIG" --config "$TMP/big.json" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 200); do [ "$(tmps)" = 1 ] && break; sleep 0.001; done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
t=$(find /dev/shm -maxdepth 1 -name ".kmtmp.*.$BIG" -printf '%f\n' | head -1)
if [ -n "$t" ]; then
    run "$KMCTL" destroy "$t"
    expect 0 "destroy removes the temporary of a dead creation"
else
    "$KMCTL" destroy "$BIG" >/dev/null 2>&1
    ok 0 "destroy removes the temporary of a dead creation (the create had finished: nothing left)"
fi
ok $([ "$(tmps)" = 0 ]; echo $?) "no temporary left"
run "$KMCTL" destroy "$SEG"
expect 0 "destroy removes a KeyMesh segment"
finish
