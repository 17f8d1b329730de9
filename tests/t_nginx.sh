#!/usr/bin/env bash
# tests/t_nginx.sh - the LuaJIT FFI binding (bindings/lua/keymesh.lua) in
# nginx with Debian's libnginx-mod-http-lua, end to end: t_gunicorn.sh's
# scenario through nginx.  init_by_lua in the master creates the segment;
# 4 worker processes attach in init_worker; per request access_by_lua
# acquires a key (waiting with ngx.sleep, never blocking the event loop),
# proxy_pass sends it to the mock upstream (at most RPM per key in any 60 s,
# 429 with Retry-After beyond), log_by_lua releases it with the upstream's
# status and Retry-After.  Load from curl (--parallel).
#   phase 1: 2*RPM requests: even spread (round robin, each worker rotating
#            its own cursor, no key ever skipped: max - min <= 4 workers);
#   phase 2: 2*RPM + EXTRA requests: each key reaches exactly RPM, never
#            more: zero 429s; the EXTRA ones get 503 (no key in 0.3 s);
#   control: pool "loose" (twice the upstream's rpm) does draw 429s, and
#            log_by_lua reports them (keys cooling).
# In-flight 0 and kmctl check clean at the end.  TAP output (plan at the end).
# Binaries from ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin nginx
e2e_need /usr/sbin/nginx curl "$PY"
if [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
    echo "Bail out! libnginx-mod-http-lua not installed (run make deps)"
    exit 1
fi
e2e_setup
on_cleanup() { e2e_cleanup; }

e2e_pool ngx

start_upstream "$RPM"
# nginx cannot listen on port 0 and tell: take a free port from the kernel
# (a small race with other programs; bail out if nginx cannot bind it).
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
USER_LINE=
[ "$(id -u)" = 0 ] && USER_LINE="user root;"
sed -e "s|@USER@|$USER_LINE|; s|@WORKERS@|$W|g; s|@TMP@|$TMP|g; s|@REPO@|$REPO|g; s|@SEG@|$SEG|g" \
    -e "s|@CONFIG@|$TMP/pool.json|g; s|@UPSTREAM@|$UP_PORT|g; s|@PORT@|$PORT|g" \
    "$E2E_DIR/nginx.conf.in" >"$TMP/nginx.conf"
bg_start NGX_PID "${SANENV[@]}" /usr/sbin/nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
URL="http://127.0.0.1:$PORT"
for _ in $(seq 100); do
    curl -sf -o /dev/null "$URL/ping" && break
    sleep 0.05
done
if ! curl -sf -o /dev/null "$URL/ping"; then
    echo "Bail out! nginx did not start: $(tail -n 20 "$TMP/nginx-error.log")"
    exit 1
fi
diag "upstream on port $UP_PORT, nginx on port $PORT (master $NGX_PID)"
"$KMCTL" inspect "$SEG" >/dev/null 2>&1
ok $? "the nginx master created segment $SEG (init_by_lua)"
nproc=$("$KMCTL" ps "$SEG" --json | "$PY" -c 'import json, sys; print(sum(1 for p in json.load(sys.stdin)["processes"] if p["alive"] and not p["self"]))')
ok $([ "$nproc" -eq $W ]; echo $?) "the $W workers attached, once each; the master detached ($nproc)"

load "$URL/call?pool=llm" $((2 * RPM)) 8 "$TMP/p1"
n200=$(count 200 "$TMP/p1")
ok $([ "$n200" -eq $((2 * RPM)) ]; echo $?) "phase 1: all $((2 * RPM)) requests answered 200 (got $n200)"
[ "$n200" -eq $((2 * RPM)) ] || diag "statuses: $(cut -d' ' -f1 "$TMP/p1" | sort | uniq -c | tr '\n' ' ')" \
    "$(tail -n 5 "$TMP/nginx-error.log")"
npids=$(awk '$1 == 200 { print $2 }' "$TMP/p1" | sort -u | wc -l)
diag "phase 1: $npids worker processes served"
ok $([ "$npids" -ge 2 ]; echo $?) "phase 1: requests served by several workers ($npids of $W)"
check_spread

check_capacity "$URL/call?pool=llm"

check_control "$URL/call?pool=loose"

check_end
! grep -q '\[error\]\|\[alert\]\|\[crit\]\|\[emerg\]' "$TMP/nginx-error.log"
ok $? "no error in nginx's error log"
grep '\[error\]\|\[alert\]\|\[crit\]\|\[emerg\]' "$TMP/nginx-error.log" | head -n 5 | while read -r l; do diag "$l"; done
no_secret "$(cat "$TMP/nginx-error.log" "$TMP/nginx-access.log" "$TMP/snap.json")"
ok $? "no secret in nginx's logs or the snapshot"
stop_pid "$NGX_PID"
dead=$("$KMCTL" ps "$SEG" --json | "$PY" -c 'import json, sys; print(sum(1 for p in json.load(sys.stdin)["processes"] if not p["self"]))')
ok $([ "$dead" = 0 ]; echo $?) "nginx's workers detached when they exited (exit_worker_by_lua) ($dead left)"
no_sanitizer_report
finish
