#!/usr/bin/env bash
# tests/t_gunicorn.sh - the Python binding under gunicorn (Debian's), end to
# end.  The gunicorn master creates the segment (on_starting) and forks 4
# sync workers; each request acquires a key, calls a mock upstream on
# 127.0.0.1 that allows RPM requests per key in any 60 s window and answers
# 429 with Retry-After beyond, and reports the outcome.  Load comes from curl
# (--parallel).  TAP output (plan at the end).  Binaries from ${KM_BUILD:-build}.
#
# Pool "llm": 4 keys whose limit matches the upstream's exactly (sliding,
# rpm RPM, burst RPM: never more than RPM in any 60 s window).  The whole
# test lasts far less than 60 s, so every request of a key falls in one
# upstream window and "zero 429" means: the pool never handed out a key more
# than RPM times, over 4 processes together.
#   phase 1: 2*RPM requests (half the capacity) through Lease: round robin
#            must spread them evenly.  Each worker rotates its own cursor over
#            the keys and no key is ever skipped (no limit is reached), so each
#            worker gives every key its share within 1; 4 workers: the counts
#            of any two keys differ by at most 4 (the tolerance asserted).
#   phase 2: 2*RPM + EXTRA requests through the legacy API (acquire, release,
#            mark_rate_limited): demand exceeds what is left; each key reaches
#            exactly RPM at the upstream, never RPM + 1; the EXTRA ones get
#            503 from the app (no key within its 0.3 s acquire_timeout).
# Pool "loose": the negative control.  Its keys are configured at twice the
# upstream's rpm, so the upstream must answer 429s, and the app must see and
# report them (keys cooling): the check that counts 429s can fail.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin gunicorn
e2e_need /usr/bin/gunicorn curl "$PY"
e2e_setup
on_cleanup() { e2e_cleanup; }

e2e_pool gun

start_upstream "$RPM"
KMT_WORKERS=$W start_gunicorn "$TMP/pool.json"
URL="http://127.0.0.1:$GU_PORT"
diag "upstream on port $UP_PORT, gunicorn on port $GU_PORT (master $GU_PID)"

"$KMCTL" inspect "$SEG" >/dev/null 2>&1
ok $? "the gunicorn master created segment $SEG"

# ------------------------------------------------------------ phase 1
load "$URL/call?pool=llm" $((2 * RPM)) 8 "$TMP/p1"
n200=$(count 200 "$TMP/p1")
ok $([ "$n200" -eq $((2 * RPM)) ]; echo $?) "phase 1: all $((2 * RPM)) requests answered 200 (got $n200)"
[ "$n200" -eq $((2 * RPM)) ] || diag "statuses: $(cut -d' ' -f1 "$TMP/p1" | sort | uniq -c | tr '\n' ' ')" \
    "$(tail -n 5 "$TMP/gunicorn.log")"
npids=$(awk '$1 == 200 { print $2 }' "$TMP/p1" | sort -u | wc -l)
ok $([ "$npids" -eq $W ]; echo $?) "phase 1: all $W workers served requests (got $npids)"
check_spread

# ------------------------------------------------------------ phase 2
check_capacity "$URL/call?pool=llm&api=legacy"

# ---------------------------------------------- negative control: "loose"
check_control "$URL/call?pool=loose"

# ------------------------------------------------------------ the end
check_end
no_secret "$(cat "$TMP/gunicorn.log" "$TMP/p1" "$TMP/p2" "$TMP/p3" "$TMP/snap.json")"
ok $? "no secret in gunicorn's log, the responses or the snapshot"

stop_pid "$GU_PID"
grep -q 'Shutting down: Master' "$TMP/gunicorn.log"
ok $? "gunicorn stopped"
run "$KMCTL" inspect "$SEG"
expect 3 "the master removed the segment when it exited"
no_sanitizer_report
finish
