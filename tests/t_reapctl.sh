#!/usr/bin/env bash
# tests/t_reapctl.sh - kmctl ps / check / reap / inspect's process section
# around a worker that dies without detaching.  A helper
# (tests/helpers/hold.c) attaches, takes leases and is killed with SIGKILL;
# kmctl must show it dead with its leases, check must report it, reap must
# release exactly what it held, and afterwards the segment must check clean.
# TAP output (plan at the end).
# Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

HOLD="$B/tests/helpers/hold"
HOLD_PID=
begin reapctl "$HOLD"
MISSING="kmt-reapctl-missing-$$" # never created
on_cleanup() { # the holder goes before its segment
    if [ -n "$HOLD_PID" ]; then
        kill -9 "$HOLD_PID" 2>/dev/null
        wait "$HOLD_PID" 2>/dev/null
    fi
}
EXPECT_SHOWS_STDOUT=1
check_text() { # check_text NAME: ok if the last command ran, else show output
    local s=$?
    ok $s "$1"
    [ $s -eq 0 ] || diag "stdout: $OUT" "stderr: $ERR"
}
# sum FIELD: sum of every "FIELD": <integer> in the JSON on stdin
sum() { grep -o "\"$1\": [0-9]*" | awk '{ s += $2 } END { print s + 0 }'; }

# hold N: start the helper with N leases on pool p; wait for "held N".
hold() {
    "$HOLD" "$SEG" p "$1" >"$TMP/hold" 2>"$TMP/hold.err" &
    HOLD_PID=$!
    for _ in $(seq 100); do
        grep -q "^held $1\$" "$TMP/hold" 2>/dev/null && return 0
        kill -0 "$HOLD_PID" 2>/dev/null || break
        sleep 0.1
    done
    diag "the helper did not hold $1 leases: $(cat "$TMP/hold.err")"
    return 1
}
# die: SIGKILL the holder and collect it (no zombie: it is dead to kmctl).
die() {
    kill -9 "$HOLD_PID"
    wait "$HOLD_PID" 2>/dev/null
    DEAD_PID=$HOLD_PID
    HOLD_PID=
}

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 4, "processes": 8},
 "pools": [{"name": "p", "limits": {"rpm": 600, "tpm": 100000},
            "keys": [{"id": "a", "secret": "sk-test-aaaa1111"},
                     {"id": "b", "secret": "sk-test-bbbb2222"}]}]}
EOF

# --------------------------------------------------------------- usage
run "$KMCTL" --help
ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q '^  ps NAME' &&
    echo "$OUT" | grep -q '^  reap NAME' && echo "$OUT" | grep -q '^  check NAME'
    echo $?) "--help lists ps, reap and check"
for c in ps reap check; do
    run "$KMCTL" "$c" --help
    ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q "^Usage: kmctl $c NAME"; echo $?) "$c --help"
done
run "$KMCTL" check --help
echo "$OUT" | grep -q '1 violations found'
check_text "check --help: status 1 means violations found"

for c in ps reap check; do
    run "$KMCTL" "$c"
    expect 2 "$c without NAME"
    echo "$ERR" | grep -q "^kmctl: $c: missing NAME" &&
        echo "$ERR" | grep -q "^Try 'kmctl $c --help'.\$"
    check_text "$c without NAME: message"
    run "$KMCTL" "$c" "$SEG" extra
    expect 2 "$c with too many arguments"
    run "$KMCTL" "$c" "$SEG" --bogus
    expect 2 "$c with an unknown option"
    echo "$ERR" | grep -q "^kmctl: $c: unknown option '--bogus'"
    check_text "$c with an unknown option: message"
done
run "$KMCTL" check "$SEG" --quiet --bogus
expect 2 "check --bogus: usage error"
run "$KMCTL" reap "$SEG" --quiet
expect 2 "reap has no --quiet"

# ------------------------------------------------------- missing segment
for c in ps reap check; do
    run "$KMCTL" "$c" "$MISSING"
    expect 3 "$c on a missing segment"
    echo "$ERR" | grep -q "^kmctl: $c: segment '$MISSING': "
    check_text "$c on a missing segment: message"
done
run "$KMCTL" check "$MISSING" --quiet
expect 3 "check --quiet on a missing segment"

# --------------------------------------------------------- clean segment
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create a segment with 2 keys"

run "$KMCTL" check "$SEG"
expect 0 "check a fresh segment"
[ -z "$OUT" ] && [ "$ERR" = "0 violations" ]
check_text "check a fresh segment: no violation line, '0 violations' on stderr"
run "$KMCTL" reap "$SEG"
expect 0 "reap a fresh segment"
[ "$OUT" = "reaped 0 dead processes, 0 leases released, 0 keys recounted" ]
check_text "reap a fresh segment: nothing reaped"
run "$KMCTL" ps "$SEG"
expect 0 "ps a fresh segment"
echo "$OUT" | head -1 | grep -Eq '^  SLOT +PID +ALIVE +LEASES +ATTACHED_MS$' &&
    [ "$(echo "$OUT" | wc -l)" -eq 1 ]
check_text "ps a fresh segment: the header only (kmctl looks read-only, without a slot)"

# ---------------------------------------------------- a live holder
hold 2
ok $? "the helper attached and holds 2 leases"
run "$KMCTL" ps "$SEG"
expect 0 "ps with a live holder"
echo "$OUT" | grep -Eq "^  [0-9]+ +$HOLD_PID +yes +2 +[0-9]+\$"
check_text "ps: the holder is alive with 2 leases"
run "$KMCTL" ps "$SEG" --json
expect 0 "ps --json with a live holder"
echo "$OUT" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["processes"]
h = [x for x in p if x["pid"] == int(sys.argv[1])]
sys.exit(0 if d["json_schema"] == 1 and d["kind"] == "ps" and len(h) == 1 and h[0]["alive"]
         and h[0]["leases"] == 2 and isinstance(h[0]["attached_ms"], int) and not h[0]["self"]
         and len(p) == 1 else 1)' "$HOLD_PID"
check_text "ps --json: the holder alone in \"processes\" (kmctl takes no slot)"
run "$KMCTL" check "$SEG"
expect 0 "check with a live holder: its leases are legitimate"

# --------------------------------------------------- the holder is killed
die
run "$KMCTL" check "$SEG"
expect 1 "check after SIGKILL: violations found"
echo "$OUT" | grep -q "^violation: process $DEAD_PID (slot [0-9]*) died without detaching"
check_text "check names the dead process"
echo "$ERR" | grep -Eq '^[1-9][0-9]* violations?$'
check_text "check: summary on stderr"
! echo "$OUT" | grep -qv '^violation: '
check_text "check: stdout holds only violation lines"
run "$KMCTL" check "$SEG" --quiet
expect 1 "check --quiet after SIGKILL"
[ -z "$OUT" ] && echo "$ERR" | grep -Eq '^[1-9][0-9]* violations?$'
check_text "check --quiet prints only the summary"

run "$KMCTL" ps "$SEG"
expect 0 "ps after SIGKILL"
echo "$OUT" | grep -Eq "^  [0-9]+ +$DEAD_PID +no +2 +[0-9]+\$"
check_text "ps: the dead process, alive no, still holding 2 leases"
run "$KMCTL" ps "$SEG" --json
echo "$OUT" | /usr/bin/python3 -c '
import json, sys
h = [x for x in json.load(sys.stdin)["processes"] if x["pid"] == int(sys.argv[1])]
sys.exit(0 if len(h) == 1 and not h[0]["alive"] and h[0]["leases"] == 2 else 1)' "$DEAD_PID"
check_text "ps --json: alive false, leases 2"
run "$KMCTL" inspect "$SEG"
expect 0 "inspect after SIGKILL"
echo "$OUT" | grep -q "^processes: 1 attached, 1 dead" &&
    echo "$OUT" | grep -Eq "^  [0-9]+ +$DEAD_PID +no +2 +[0-9]+\$" &&
    ! echo "$OUT" | grep -q 'this kmctl'
check_text "inspect: processes section with the dead holder (kmctl is not in it)"
inflight=$("$KMCTL" inspect "$SEG" --json | sum inflight)
ok $([ "$inflight" -eq 2 ]; echo $?) "the dead holder's 2 leases are still in flight (got $inflight)"

# ------------------------------------------------------------------- reap
run "$KMCTL" reap "$SEG"
expect 0 "reap"
[ "$OUT" = "reaped 1 dead process, 2 leases released, 0 keys recounted" ]
check_text "reap: 1 process, 2 leases"
run "$KMCTL" check "$SEG"
expect 0 "check after reap"
[ -z "$OUT" ] && [ "$ERR" = "0 violations" ]
check_text "check after reap: 0 violations"
run "$KMCTL" inspect "$SEG" --json
inflight=$(echo "$OUT" | sum inflight)
abandoned=$(echo "$OUT" | sum abandoned)
ok $([ "$inflight" -eq 0 ]; echo $?) "after reap: inflight 0 in total (got $inflight)"
ok $([ "$abandoned" -eq 2 ]; echo $?) "after reap: abandoned 2 in total (got $abandoned)"
run "$KMCTL" ps "$SEG"
! echo "$OUT" | grep -Eq " no +[0-9]+ +[0-9-]+\$" && [ "$(echo "$OUT" | wc -l)" -eq 1 ]
check_text "ps after reap: no process left"
run "$KMCTL" reap "$SEG"
expect 0 "reap again"
[ "$OUT" = "reaped 0 dead processes, 0 leases released, 0 keys recounted" ]
check_text "reap again: nothing left"

# ------------------------------------------------ reap --json, second death
hold 1
ok $? "a second holder takes 1 lease"
die
run "$KMCTL" reap "$SEG" --json
expect 0 "reap --json"
echo "$OUT" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d["kind"] == "reap" and [d[k] for k in ("processes", "leases", "recounted", "pending", "repaired")] == [1, 1, 0, 0, 0] else 1)'
check_text "reap --json: the report as a JSON document"
run "$KMCTL" check "$SEG" --quiet
expect 0 "check --quiet after the second reap"
[ -z "$OUT" ] && [ "$ERR" = "0 violations" ]
check_text "check --quiet: only '0 violations'"
abandoned=$("$KMCTL" inspect "$SEG" --json | sum abandoned)
ok $([ "$abandoned" -eq 3 ]; echo $?) "abandoned 3 in total (got $abandoned)"

# ------------------------------------------ a live holder /proc does not show
# Workers under several users share a segment, and /proc is mounted with
# hidepid=2: a reaper of another user cannot read a live holder's /proc
# entry.  It must not take the holder's lease over (a live lease with two
# writers); once the holder is dead, the lease is reaped.
new_seg HSEG hidden
run "$KMCTL" create "$HSEG" --config "$TMP/pool.json" --mode 0666 --force
expect 0 "create a segment every user may attach (0666, --force)"
MAIN_SEG=$SEG
SEG=$HSEG
hold 1
ok $? "a root process holds 1 lease"
if unshare -m --propagation private sh -c 'mount -t proc -o hidepid=2 proc /proc' 2>/dev/null; then
    run unshare -m --propagation private sh -c \
        'mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$0" reap "$1"' \
        "$KMCTL" "$HSEG"
    expect 0 "reap as nobody with /proc mounted hidepid=2"
    inflight=$("$KMCTL" inspect "$HSEG" --json | sum inflight)
    ok $([ "$inflight" -eq 1 ]; echo $?) "the live holder it cannot see keeps its lease (in flight: $inflight)"
else
    for t in "reap as nobody with /proc mounted hidepid=2" "the live holder it cannot see keeps its lease"; do
        N=$((N + 1))
        echo "ok $N # skip $t: cannot mount /proc in a new mount namespace here"
    done
fi
die
run "$KMCTL" reap "$HSEG"
[ "$OUT" = "reaped 1 dead process, 1 lease released, 0 keys recounted" ]
check_text "dead, it is reaped: 1 process, 1 lease"
SEG=$MAIN_SEG

finish
