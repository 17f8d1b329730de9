#!/usr/bin/env bash
# tests/t_php_fpm.sh - the PHP binding under php-fpm (Debian's php8.2-fpm),
# end to end: t_gunicorn.sh's scenario with 4 static php-fpm workers behind
# nginx's FastCGI.  The segment is made by kmctl before php-fpm starts (as
# an operator's unit would); php-fpm preloads the binding (ffi.preload for
# the FFI declarations, opcache.preload for the classes); each worker
# attaches on its first request and keeps that attachment for its life.
# Each request (tests/php/app.php) acquires a key (0.3 s timeout), calls a
# mock upstream on 127.0.0.1 that allows RPM requests per key in any 60 s
# window and answers 429 with Retry-After beyond, and releases the key with
# the upstream's status, headers and body.  Load from curl (--parallel).
#   phase 1: 2*RPM requests: even spread (each worker keeps its round-robin
#            cursor across requests: max - min <= 4 workers), and the 4
#            workers are the only processes attached, once each;
#   phase 2: 2*RPM + EXTRA requests: each key reaches exactly RPM, never
#            more: zero 429s; the EXTRA ones get 503 (no key within 0.3 s);
#   control: pool "loose" (twice the upstream's rpm) does draw 429s, and
#            the app reports them (keys cooling).
# Then the worker lifecycle: a worker told to exit (SIGQUIT) and a reload
# of every worker (SIGUSR2) leave no dead process in the table (each worker
# detaches as it exits: the exit hook); stopping php-fpm leaves none.
# And php-fpm without the preload: FFI restricted (ffi.enable=preload, PHP's
# default) gives an exception saying what to set; ffi.enable=true in a
# pool's php_admin_value runs the binding through FFI::cdef, and workers
# recycled by pm.max_requests detach as they exit.
# TAP output (plan at the end).  Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin php-fpm
e2e_need /usr/sbin/php-fpm8.2 php cgi-fcgi /usr/sbin/nginx curl "$PY"
e2e_setup
# shellcheck source=tests/php/php.sh
. "$REPO/tests/php/php.sh"
php_needs_plain_library
# shellcheck source=tests/php/fpm.sh
. "$REPO/tests/php/fpm.sh"
on_cleanup() { e2e_cleanup; }

e2e_pool fpm
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "kmctl create $SEG, before php-fpm starts"
start_upstream "$RPM"
FPM_PORT=$(free_port)
fpm_conf ""
fpm_pool "" km "$FPM_PORT" "$W" "$SEG"
start_fpm FPM_PID "" "${PRELOAD[@]}"
start_nginx_fcgi "$FPM_PORT"
diag "upstream on port $UP_PORT, php-fpm on $FPM_PORT (master $FPM_PID), nginx at $URL"

WORKERS=$(fpm_workers "$FPM_PID")
ok $([ "$(echo "$WORKERS" | wc -l)" = "$W" ]; echo $?) "php-fpm started $W workers ($(echo $WORKERS))"
a=$(attached)
ok $([ "$a" = "0 0" ]; echo $?) "no process attached before the first request: the master never attaches (alive, dead: $a)"
info=$(curl -s "$URL/info")
how=$(echo "$info" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["how"])' 2>/dev/null)
ok $([ "$how" = preload ]; echo $?) "the workers run the declarations ffi.preload loaded ($info)"

# ------------------------------------------------------------ phase 1
load "$URL/call?pool=llm" $((2 * RPM)) 8 "$TMP/p1"
n200=$(count 200 "$TMP/p1")
ok $([ "$n200" -eq $((2 * RPM)) ]; echo $?) "phase 1: all $((2 * RPM)) requests answered 200 (got $n200)"
[ "$n200" -eq $((2 * RPM)) ] || diag "statuses: $(cut -d' ' -f1 "$TMP/p1" | sort | uniq -c | tr '\n' ' ')" \
    "$(tail -n 5 "$TMP/php-error.log" 2>/dev/null)"
served=$(awk '$1 == 200 { print $2 }' "$TMP/p1" | sort -un)
ok $([ "$served" = "$WORKERS" ]; echo $?) "phase 1: the $W workers served ($(echo $served))"
check_spread
pids=$("$KMCTL" ps "$SEG" --json | "$PY" -c '
import json, sys
print("\n".join(sorted((str(p["pid"]) for p in json.load(sys.stdin)["processes"] if not p["self"]), key=int)))')
ok $([ "$pids" = "$WORKERS" ]; echo $?) "after $((2 * RPM)) requests the attached processes are the $W workers, once each ($(echo $pids))"

# ------------------------------------------------------------ phase 2
check_capacity "$URL/call?pool=llm"

# ---------------------------------------------- negative control: "loose"
check_control "$URL/call?pool=loose"

check_end

# ---------------------------------------------------- worker lifecycle
victim=$(echo "$WORKERS" | head -n 1)
kill -QUIT "$victim"
for _ in $(seq 100); do
    kill -0 "$victim" 2>/dev/null || break
    sleep 0.05
done
for _ in $(seq 100); do
    [ "$(fpm_workers "$FPM_PID" | wc -l)" = "$W" ] && break
    sleep 0.05
done
a=$(attached)
ok $([ "$a" = "$((W - 1)) 0" ]; echo $?) "a worker told to exit (SIGQUIT) detached as it exited; php-fpm forked another (alive, dead: $a)"
run "$KMCTL" check "$SEG"
expect 0 "kmctl check clean without a reap"
kill -USR2 "$FPM_PID"
for _ in $(seq 200); do
    now=$(fpm_workers "$FPM_PID")
    [ "$(echo "$now" | wc -l)" = "$W" ] && [ -z "$(comm -12 <(echo "$now" | sort) <(echo "$WORKERS" | sort))" ] && break
    sleep 0.05
done
for _ in $(seq 100); do fpm_ping "$FPM_PORT" && break; sleep 0.05; done
# pool "llm" spent its rpm in phase 2: these acquires wait 0.3 s and get
# none (503), but each worker attaches to ask.
load "$URL/pair?pool=llm" 40 8 "$TMP/after"
a=$(attached)
ok $([ "$a" = "$W 0" ]; echo $?) "after a reload (SIGUSR2) and 40 requests: the $W new workers attached, no dead process (alive, dead: $a)"
run "$KMCTL" check "$SEG"
expect 0 "kmctl check clean after the reload"

no_secret "$(cat "$TMP/p1" "$TMP/p2" "$TMP/p3" "$TMP/snap.json" "$TMP"/php-fpm*.log "$TMP"/nginx-*.log \
    "$TMP/php-error.log" 2>/dev/null)"
ok $? "no secret in php-fpm's, PHP's or nginx's logs, the responses or the snapshot"
! grep -qi 'fatal\|warning' "$TMP/php-error.log" 2>/dev/null
ok $? "no PHP warning or fatal error in the workers' log"
grep -i 'fatal\|warning' "$TMP/php-error.log" 2>/dev/null | head -n 5 | while read -r l; do diag "$l"; done

# A graceful stop (SIGQUIT: each worker finishes its request and exits).
# SIGTERM, php-fpm's fast stop (and systemd's default), kills the workers
# without exit handlers: t_php_fpm_kill.sh covers what that leaves.
kill -QUIT "$FPM_PID"
for _ in $(seq 200); do
    kill -0 "$FPM_PID" 2>/dev/null || break
    sleep 0.05
done
wait "$FPM_PID" 2>/dev/null
a=$(attached)
ok $([ "$a" = "0 0" ]; echo $?) "php-fpm stopped gracefully (SIGQUIT): every worker detached (alive, dead: $a)"
run "$KMCTL" check "$SEG"
expect 0 "kmctl check clean at the end"

# ------------------------------------------- php-fpm without the preload
new_seg SEG2 php-fpm2
run "$KMCTL" create "$SEG2" --config "$TMP/pool.json"
P1=$(free_port)
P2=$(free_port)
fpm_conf 2
fpm_pool 2 restricted "$P1" 1 "$SEG2"
fpm_pool 2 cdef "$P2" 1 "$SEG2" "php_admin_value[ffi.enable] = 1" "env[KEYMESH_LIBRARY] = $LIBKM" \
    "pm.max_requests = 4"
start_fpm FPM2_PID 2
r=$(fcgi "$P1" "/pair?pool=llm")
echo "$r" | grep -q '^Status: 500' && echo "$r" | grep -q 'ffi.preload=' && echo "$r" | grep -q 'ffi.enable=true'
ok $? "FFI restricted (ffi.enable=preload) and nothing preloaded: a KeyMesh exception naming ffi.preload and ffi.enable"
diag "$(echo "$r" | tail -n 1)"
r=$(fcgi "$P2" "/info")
echo "$r" | grep -q '"how":"cdef"'
ok $? "ffi.enable=1 in the pool: the binding runs through FFI::cdef ($(echo "$r" | tail -n 1))"
# pm.max_requests = 4: each worker exits after 4 requests (php-fpm's ping at
# start and /info count too), so 10 more are served by 3 workers in turn;
# each attaches on its first /pair and detaches as it exits: no dead slot,
# at most the last worker still attached.
n=0
pids=
for _ in $(seq 10); do
    r=$(fcgi "$P2" "/pair?pool=llm")
    grep -q '^ok$' <<<"$r" && n=$((n + 1))
    pids="$pids $(sed -n 's/^X-Worker-Pid: *\([0-9]*\).*/\1/p' <<<"$r")"
done
nw=$(tr ' ' '\n' <<<"$pids" | sort -u | grep -c .)
SEG_SAVE=$SEG
SEG=$SEG2
a=$(attached)
SEG=$SEG_SAVE
ok $([ "$n" = 10 ] && [ "$nw" -ge 3 ] && { [ "$a" = "1 0" ] || [ "$a" = "0 0" ]; }; echo $?) \
    "FFI::cdef, pm.max_requests 4: 10 requests served by $nw workers in turn; the ones that exited detached ($n ok; alive, dead: $a)"
stop_pid "$FPM2_PID"
no_sanitizer_report
finish
