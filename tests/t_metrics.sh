#!/usr/bin/env bash
# tests/t_metrics.sh - kmctl metrics and kmctl serve: the exposition passes
# `promtool check metrics`, its values equal what forked workers counted
# (tests/helpers/loadgen.c), label values are escaped, no secret appears; serve
# answers /metrics, /healthz, 404 and 405, refuses a port in use (status
# 1, a clear line), answers 503 with a clear line while the segment is
# gone and follows it when it is back, and stops on SIGTERM; the Grafana
# dashboard uses only exported names (tests/check_dashboard.py), and that
# check fails on a dashboard that does not.  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

LOADGEN="$B/tests/helpers/loadgen"
PY=/usr/bin/python3
begin metrics "$LOADGEN"
for t in promtool curl; do
    command -v $t >/dev/null || { echo "Bail out! $t not installed (make deps)"; exit 1; }
done

SECRET_A='sk-test-metrics-aaaa1111'
SECRET_B='sk-test-metrics-bbbb2222'
SECRETS=("$SECRET_A" "$SECRET_B")
SERVE_PIDS=()
on_cleanup() {
    local p
    for p in ${SERVE_PIDS[@]+"${SERVE_PIDS[@]}"}; do
        kill "$p" 2>/dev/null
    done
}
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# sample NAME LABELS: the value of one sample of $TMP/m.txt
# (ENVIRON, not -v: awk -v would interpret the label's backslashes)
sample() { K="$1{$2}" awk '$1 == ENVIRON["K"] {print $2}' "$TMP/m.txt"; }

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 16},
 "pools": [{"name": "p", "strategy": "round_robin",
            "limits": {"rpd": 100000, "tpd": {"limit": 10000000, "mode": "sliding", "burst": 1000000}},
            "model_limits": "per_model", "models": {"m1": {"rpd": 50000, "tpd": 5000000}, "m2": {}},
            "price": {"output_per_1k": 0.5}, "budget": {"usd": 1000},
            "keys": [{"id": "a", "secret": "$SECRET_A", "budget": {"usd": 10, "hard": false}},
                     {"id": "we\\"ird\\\\id", "secret": "$SECRET_B"}]}]}
EOF

run "$KMCTL" metrics --help
ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q '^Usage: kmctl metrics NAME'; echo $?) "metrics --help"
run "$KMCTL" metrics "$SEG"
expect 3 "metrics of a missing segment: status 3"
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"
run "$LOADGEN" "$SEG" p 2 50 1 "$TMP/load" 30 m1
expect 0 "load generator ran"
cat "$TMP"/load.* >"$TMP/counts"

run "$KMCTL" metrics "$SEG"
expect 0 "metrics"
echo "$OUT" >"$TMP/m.txt"
nfam=$(grep -c '^# TYPE keymesh_' "$TMP/m.txt")
ok $([ "$nfam" -ge 40 ]; echo $?) "exposition has the keymesh families ($nfam)"
run promtool check metrics <"$TMP/m.txt"
ok $([ "$RC" -eq 0 ] && [ -z "$OUT$ERR" ]; echo $?) "promtool check metrics: no problem ($OUT$ERR)"
no_secret "$(cat "$TMP/m.txt")"
ok $? "exposition shows no secret"
grep -q '^keymesh_key_requests_total{pool="p",key="we\\"ird\\\\id"} ' "$TMP/m.txt"
ok $? "a label value with a quote and a backslash is escaped"

for kid in a 'we"ird\id'; do
    lid=${kid//\\/\\\\}
    lid=${lid//\"/\\\"}
    want=$(K="$kid" awk '$1 == ENVIRON["K"] {r += $2; s += $3; f += $4; t += $5} END {print r + 0, s + 0, f + 0, t + 0}' "$TMP/counts")
    got="$(sample keymesh_key_requests_total "pool=\"p\",key=\"$lid\"") $(sample keymesh_key_outcomes_total "pool=\"p\",key=\"$lid\",outcome=\"success\"") $(sample keymesh_key_outcomes_total "pool=\"p\",key=\"$lid\",outcome=\"failure\"") $(sample keymesh_key_tokens_total "pool=\"p\",key=\"$lid\"")"
    ok $([ "$got" = "$want" ] && [ "${want%% *}" -gt 0 ]; echo $?) "key $kid: requests, success, failure, tokens $got = workers' $want"
done
ok $([ "$(sample keymesh_pool_keys 'pool="p",state="active"')" = 2 ]; echo $?) "keymesh_pool_keys{state=active} 2"
ok $([ "$(sample keymesh_key_state 'pool="p",key="a",state="active"')" = 1 ] &&
     [ "$(sample keymesh_key_state 'pool="p",key="a",state="cooling"')" = 0 ]; echo $?) "keymesh_key_state: 1 for active, 0 for cooling"
lat=$(sample keymesh_key_latency_ema_seconds 'pool="p",key="a"')
ok $(awk -v l="$lat" 'BEGIN {exit !(l >= 0.0009 && l <= 0.0011)}'; echo $?) "latency in seconds ($lat, workers reported 1 ms)"
used=$(sample keymesh_key_window_used_requests 'pool="p",key="a",window="rpd"')
left=$(sample keymesh_key_window_left_requests 'pool="p",key="a",window="rpd"')
burst=$(sample keymesh_key_window_burst_requests 'pool="p",key="a",window="rpd"')
ok $([ $((used + left)) = "$burst" ] && [ "$burst" = 100000 ]; echo $?) "rpd window: used $used + left $left = burst $burst"
grep -q '^keymesh_key_window_limit_tokens{pool="p",key="a",window="tpd",mode="sliding"} 10000000$' "$TMP/m.txt"
ok $? "tpd limit with its mode label"
grep -Eq '^keymesh_key_model_window_used_tokens\{pool="p",key="a",model="m1",window="tpd"\} [1-9]' "$TMP/m.txt"
ok $? "key x model window (m1's tpd on key a) used"
# Every request of the workers named m1: key x m1 counters are the key's.
want=$(awk '$1 == "a" {r += $2; s += $3; t += $5} END {print r + 0, s + 0, t + 0}' "$TMP/counts")
got="$(sample keymesh_key_model_requests_total 'pool="p",key="a",model="m1"') $(sample keymesh_key_model_outcomes_total 'pool="p",key="a",model="m1",outcome="success"') $(sample keymesh_key_model_tokens_total 'pool="p",key="a",model="m1"')"
ok $([ "$got" = "$want" ] && [ "${want%% *}" -gt 0 ]; echo $?) "key a x m1: requests, success, tokens $got = workers' $want"
grep -q '^keymesh_key_model_abandoned_total{pool="p",key="a",model="m1"} 0$' "$TMP/m.txt" &&
    grep -q '^keymesh_key_model_stale_releases_total{pool="p",key="a",model="m1"} 0$' "$TMP/m.txt" &&
    ! grep -q '^keymesh_key_model_requests_total{pool="p",key="a",model="m2"}' "$TMP/m.txt"
ok $? "key x model counters: abandoned, stale 0; a model never requested (m2) has no series"
grep -q '^keymesh_key_budget_usd{pool="p",key="a",hard="false"} 10$' "$TMP/m.txt" &&
    grep -q '^keymesh_pool_budget_usd{pool="p",hard="true"} 1000$' "$TMP/m.txt"
ok $? "budgets in US dollars with their hard label"
grep -Eq "^keymesh_segment_info\\{segment=\"$SEG\",version=\"[0-9.]+\",segment_format=\"[0-9]+\"\\} 1$" "$TMP/m.txt"
ok $? "keymesh_segment_info names the segment, version and format"

# ------------------------------------------------------------ dashboard
run "$PY" tests/check_dashboard.py examples/grafana-dashboard.json "$TMP/m.txt" --all
ok $([ "$RC" -eq 0 ]; echo $?) "grafana dashboard uses only exported names, and all of them ($OUT)"
sed 's/keymesh_key_tokens_total/keymesh_key_token_total/; s/by (pool, key)/by (pool, kee)/' \
    examples/grafana-dashboard.json >"$TMP/bad.json"
run "$PY" tests/check_dashboard.py "$TMP/bad.json" "$TMP/m.txt"
echo "$OUT" | grep -q "'keymesh_key_token_total' is not an exported metric" &&
    echo "$OUT" | grep -q "label 'kee' is not exported"
ok $([ "$RC" -eq 1 ] && echo "$OUT" | grep -q keymesh_key_token_total && echo "$OUT" | grep -q "'kee'"; echo $?) \
    "the dashboard check fails on an unknown metric and label"

# ---------------------------------------------------------------- serve
PORT=$(free_port)
"$KMCTL" serve "$SEG" --listen "127.0.0.1:$PORT" >"$TMP/serve.out" 2>"$TMP/serve.err" &
SPID=$!
SERVE_PIDS+=("$SPID")
for _ in $(seq 100); do
    grep -q 'on http://' "$TMP/serve.out" 2>/dev/null && break
    sleep 0.05
done
grep -q "^kmctl serve: segment '$SEG' on http://127.0.0.1:$PORT/metrics$" "$TMP/serve.out"
ok $? "serve says where it listens"
URL="http://127.0.0.1:$PORT"
code=$(curl -s -o "$TMP/sm.txt" -w '%{http_code} %{content_type}' "$URL/metrics")
ok $([ "$code" = "200 text/plain; version=0.0.4; charset=utf-8" ]; echo $?) "/metrics: 200, exposition content type ($code)"
diff <(grep '^# TYPE' "$TMP/m.txt") <(grep '^# TYPE' "$TMP/sm.txt") >/dev/null
ok $? "/metrics serves the families of kmctl metrics"
promtool check metrics <"$TMP/sm.txt" >/dev/null 2>&1
ok $? "/metrics passes promtool check metrics"
code=$(curl -s -o "$TMP/h.txt" -w '%{http_code}' "$URL/healthz")
ok $([ "$code" = 200 ] && [ "$(cat "$TMP/h.txt")" = ok ]; echo $?) "/healthz: 200 ok"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/nope")
ok $([ "$code" = 404 ]; echo $?) "unknown path: 404"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/metrics")
ok $([ "$code" = 405 ]; echo $?) "POST: 405"

run "$KMCTL" serve "$SEG" --listen "127.0.0.1:$PORT"
expect 1 "a second serve on the same port: status 1"
ok $([ "$ERR" = "kmctl: serve: --listen 127.0.0.1:$PORT: Address already in use" ]; echo $?) \
    "port in use: one clear line ($ERR)"
run "$KMCTL" serve "$SEG" --listen nonsense
expect 2 "--listen without a port: usage error"

run "$KMCTL" destroy "$SEG"
expect 0 "destroy the segment while serve runs"
code=$(curl -s -o "$TMP/gone.txt" -w '%{http_code}' "$URL/metrics")
ok $([ "$code" = 503 ] && grep -q "^kmctl serve: segment '$SEG': no segment of that name; serving again once it is back$" "$TMP/gone.txt"; echo $?) \
    "segment gone: /metrics 503 with a clear line ($code: $(cat "$TMP/gone.txt"))"
code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthz")
ok $([ "$code" = 503 ]; echo $?) "segment gone: /healthz 503"
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "the segment is back"
code=$(curl -s -o "$TMP/back.txt" -w '%{http_code}' "$URL/metrics")
ok $([ "$code" = 200 ] && grep -q '^keymesh_key_requests_total{pool="p",key="a"} 0$' "$TMP/back.txt"; echo $?) \
    "segment back: /metrics 200, from the new segment (counters at 0)"
kill -TERM "$SPID"
wait "$SPID"
rc=$?
SERVE_PIDS=()
ok $([ "$rc" = 0 ] && grep -Eq '^kmctl serve: stopped by SIGTERM after [0-9]+ scrapes \(1 answered 503\)$' "$TMP/serve.out"; echo $?) \
    "SIGTERM: serve stops, status 0, counts its scrapes ($(tail -1 "$TMP/serve.out"))"

finish
