#!/usr/bin/env bash
# tests/t_php_fpm_kill.sh - t_php_fpm.sh's rig (4 static php-fpm workers
# behind nginx, the binding preloaded) with a worker killed by SIGKILL in
# the middle of a request, as t_gunicorn_kill.sh does to gunicorn.  A
# request to /hold takes a lease and sleeps; the worker serving it is
# killed, and php-fpm forks a replacement.
#   kill 1: while curl keeps loading the other workers.  The replacement
#           attaches on its first request, which reaps the dead worker.
#   kill 2: with no load, so nothing attaches before kmctl looks: ps shows
#           the dead worker and its lease, check reports it, reap releases it.
# After each: kmctl reap, then kmctl check is clean, in-flight 0, and exactly
# one more lease counted abandoned (the killed one: no leaked lease); zero
# 429s from the upstream (limits match it) and all load answered 200.
# Last, php-fpm's fast stop (SIGTERM, systemd's default) kills every worker
# without exit handlers: their slots are left for a reaper, which frees them
# with nothing to release.
# TAP output (plan at the end).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin php-fpm-kill
e2e_need /usr/sbin/php-fpm8.2 php cgi-fcgi /usr/sbin/nginx curl "$PY"
e2e_setup
# shellcheck source=tests/php/php.sh
. "$REPO/tests/php/php.sh"
php_needs_plain_library
# shellcheck source=tests/php/fpm.sh
. "$REPO/tests/php/fpm.sh"
on_cleanup() { e2e_cleanup; }

RPM=150
W=4
SECRETS=(sk-test-pkill-aaaa1111 sk-test-pkill-bbbb2222 sk-test-pkill-cccc3333 sk-test-pkill-dddd4444)
cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 16},
 "pools": [{"name": "llm", "strategy": "round_robin",
            "limits": {"rpm": {"limit": $RPM, "mode": "sliding", "burst": $RPM}},
            "keys": [{"id": "k1", "secret": "${SECRETS[0]}"}, {"id": "k2", "secret": "${SECRETS[1]}"},
                     {"id": "k3", "secret": "${SECRETS[2]}"}, {"id": "k4", "secret": "${SECRETS[3]}"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "kmctl create $SEG"
start_upstream "$RPM"
FPM_PORT=$(free_port)
fpm_conf ""
fpm_pool "" km "$FPM_PORT" "$W" "$SEG"
start_fpm FPM_PID "" "${PRELOAD[@]}"
start_nginx_fcgi "$FPM_PORT"
diag "upstream on port $UP_PORT, php-fpm on $FPM_PORT (master $FPM_PID), nginx at $URL"

abandoned() { snap 'sum(k["counters"]["abandoned"] for k in K("llm"))'; }
inflight() { snap 'sum(k["inflight"] for k in K("llm"))'; }
# hold: a request that takes a lease and sleeps; HOLDER = the worker's pid
hold() {
    rm -f "$TMP/hold.pid"
    bg_start HOLD_CURL curl -s -o /dev/null "$URL/hold?pool=llm"
    if wait_file "$TMP/hold.pid" 10; then
        HOLDER=$(cat "$TMP/hold.pid")
    else
        HOLDER=
    fi
    local leases
    leases=$("$KMCTL" ps "$SEG" --json | "$PY" -c '
import json, sys
print(sum(p["leases"] for p in json.load(sys.stdin)["processes"] if p["pid"] == int(sys.argv[1] or 0) and p["alive"]))' "$HOLDER")
    ok $([ -n "$HOLDER" ] && [ "$leases" = 1 ]; echo $?) "$1: worker $HOLDER holds one lease mid-request (kmctl ps: $leases)"
}
# after_kill NAME ABANDONED_WANTED: reap, then everything is clean
after_kill() {
    run "$KMCTL" reap "$SEG" --json
    expect 0 "$1: kmctl reap"
    diag "$1: reap: $(echo $OUT)"
    local a i ab
    a=$(attached)
    ok $([ "${a#* }" = 0 ]; echo $?) "$1: no dead process left in the table (alive, dead: $a)"
    run "$KMCTL" check "$SEG"
    expect 0 "$1: kmctl check clean after the reap"
    i=$(inflight)
    ab=$(abandoned)
    ok $([ "$i" = 0 ]; echo $?) "$1: in-flight 0 (got $i)"
    ok $([ "$ab" = "$2" ]; echo $?) "$1: exactly the killed lease was released, as abandoned ($ab, want $2)"
}
replaced() { # replaced PID: php-fpm has W workers again, PID not among them
    for _ in $(seq 100); do
        fpm_workers "$FPM_PID" | grep -qx "$1" || { [ "$(fpm_workers "$FPM_PID" | wc -l)" = "$W" ] && return 0; }
        sleep 0.05
    done
    return 1
}

load "$URL/call?pool=llm" 100 4 "$TMP/warm"
n=$(count 200 "$TMP/warm")
ok $([ "$n" = 100 ]; echo $?) "warm-up: 100 requests answered 200 ($n)"

# ------------------------------------------------------- kill 1, under load
hold "kill 1"
bg_start LOAD_PID load "$URL/call?pool=llm" 200 3 "$TMP/l1"
sleep 0.3
kill -KILL "$HOLDER"
wait "$LOAD_PID"
wait "$HOLD_CURL" 2>/dev/null
n=$(count 200 "$TMP/l1")
ok $([ "$n" = 200 ]; echo $?) "kill 1: the load around the kill answered 200 (200 of 200: $n)"
[ "$n" = 200 ] || diag "statuses: $(cut -d' ' -f1 "$TMP/l1" | sort | uniq -c | tr '\n' ' ')"
ok $([ "$(awk '{ print $2 }' "$TMP/l1" | grep -c "^$HOLDER\$")" = 0 ]; echo $?) "kill 1: the killed worker served none of it"
replaced "$HOLDER"
ok $? "kill 1: php-fpm forked a replacement ($(echo $(fpm_workers "$FPM_PID")))"
after_kill "kill 1" 1

# ---------------------------------------------------- kill 2, segment quiet
hold "kill 2"
kill -KILL "$HOLDER"
wait "$HOLD_CURL" 2>/dev/null
replaced "$HOLDER"
run "$KMCTL" ps "$SEG" --json
echo "$OUT" | "$PY" -c '
import json, sys
d = [p for p in json.load(sys.stdin)["processes"] if p["pid"] == int(sys.argv[1])]
sys.exit(0 if len(d) == 1 and not d[0]["alive"] and d[0]["leases"] == 1 else 1)' "$HOLDER"
ok $? "kill 2: kmctl ps shows worker $HOLDER dead with its lease"
run "$KMCTL" check "$SEG"
echo "$OUT" | grep -q "process $HOLDER (slot [0-9]*) died without detaching, holding 1 lease"
ok $([ "$RC" = 1 ]; echo $?) "kill 2: kmctl check reports the dead worker (exit $RC)"
run "$KMCTL" reap "$SEG" --json
echo "$OUT" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if d["processes"] == 1 and d["leases"] == 1 else 1)'
ok $? "kill 2: kmctl reap releases its one lease ($(echo $OUT))"
after_kill "kill 2" 2

# ---------------------------------------------------- and it goes on
load "$URL/call?pool=llm" 200 8 "$TMP/l2"
n=$(count 200 "$TMP/l2")
ok $([ "$n" = 200 ]; echo $?) "after the kills: 200 requests answered 200 ($n)"
npids=$(awk '$1 == 200 { print $2 }' "$TMP/l2" | sort -u | wc -l)
ok $([ "$npids" = $W ]; echo $?) "after the kills: $W live workers serve ($npids)"
up429=$(upstats 'sum(v["429"] for v in u["keys"].values())')
ok $([ "$up429" = 0 ]; echo $?) "zero 429s from the upstream ($up429)"
spread=$(upstats '" ".join(str(u["keys"].get("…" + s[-4:], {}).get("ok", 0)) for s in "'"${SECRETS[*]}"'".split())')
read -r a b c d <<<"$spread"
min=$(printf '%s\n' "$a" "$b" "$c" "$d" | sort -n | head -n1)
max=$(printf '%s\n' "$a" "$b" "$c" "$d" | sort -n | tail -n1)
# Every worker process that ever served (4 + 2 replacements) adds at most 1.
ok $([ $((max - min)) -le $((W + 2)) ]; echo $?) "even spread over the run: max - min = $((max - min)) <= $((W + 2)) ($spread)"
i=$(inflight)
ok $([ "$i" = 0 ]; echo $?) "in-flight 0 at the end ($i)"
run "$KMCTL" check "$SEG"
expect 0 "kmctl check clean at the end"
no_secret "$(cat "$TMP"/php-fpm*.log "$TMP/snap.json" "$TMP/php-error.log" 2>/dev/null)"
ok $? "no secret in php-fpm's or PHP's log or the snapshot"

# ------------------------------------------- fast stop: SIGTERM to php-fpm
stop_pid "$FPM_PID"
a=$(attached)
ok $([ "$a" = "0 $W" ]; echo $?) "php-fpm's fast stop (SIGTERM) kills the workers without exit handlers (alive, dead: $a)"
run "$KMCTL" reap "$SEG" --json
echo "$OUT" | "$PY" -c 'import json, sys; d = json.load(sys.stdin); sys.exit(0 if d["processes"] == int(sys.argv[1]) and d["leases"] == 0 else 1)' "$W"
ok $? "kmctl reap frees their $W slots, with no lease to release ($(echo $OUT))"
run "$KMCTL" check "$SEG"
expect 0 "kmctl check clean after that reap"
no_sanitizer_report
finish
