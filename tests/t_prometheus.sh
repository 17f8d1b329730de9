#!/usr/bin/env bash
# tests/t_prometheus.sh - kmctl serve scraped by the real thing: Debian's
# prometheus server on 127.0.0.1 (free ports) with a scrape config for
# `kmctl serve`, forked workers (tests/helpers/loadgen.c) drive load through the
# segment and count what they did, and Prometheus' own HTTP query API must
# show the series, the workers' exact counts, and
# rate(keymesh_key_requests_total[..]) equal to the workers' rate (within
# 15%: Prometheus samples every second); promtool check metrics passes on
# what serve served.  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

LOADGEN="$B/tests/helpers/loadgen"
PY=/usr/bin/python3
begin prometheus "$LOADGEN"
for t in prometheus promtool; do
    command -v $t >/dev/null || { echo "Bail out! $t not installed (apt-get install prometheus)"; exit 1; }
done

PIDS=()
on_cleanup() {
    local p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do
        kill "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
}
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# query PROMQL [TIME]: the JSON answer of /api/v1/query
query() {
    "$PY" - "$PROM" "$1" "${2:-}" <<'PYEOF'
import json, sys, urllib.parse, urllib.request
args = {"query": sys.argv[2]}
if sys.argv[3]:
    args["time"] = sys.argv[3]
url = "http://%s/api/v1/query?%s" % (sys.argv[1], urllib.parse.urlencode(args))
print(urllib.request.urlopen(url, timeout=10).read().decode())
PYEOF
}
# value JSON [LABEL=VALUE]: the value of the (matching) sample; "" if none
value() {
    "$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
want = dict(a.split("=", 1) for a in sys.argv[2:])
for r in d["data"]["result"]:
    if all(r["metric"].get(k) == v for k, v in want.items()):
        print(r["value"][1])
        break
' "$@"
}

WORKERS=3
RATE=40     # operations per second per worker
DURATION=20 # seconds

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 16},
 "pools": [{"name": "p", "strategy": "round_robin", "limits": {"rpm": 100000},
            "keys": [{"id": "k1", "secret": "sk-test-prom-11111111"},
                     {"id": "k2", "secret": "sk-test-prom-22222222"},
                     {"id": "k3", "secret": "sk-test-prom-33333333"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"

SPORT=$(free_port)
"$KMCTL" serve "$SEG" --listen "127.0.0.1:$SPORT" >"$TMP/serve.out" 2>&1 &
PIDS+=($!)
PPORT=$(free_port)
PROM="127.0.0.1:$PPORT"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: keymesh
    static_configs:
      - targets: ["127.0.0.1:$SPORT"]
EOF
run promtool check config "$TMP/prometheus.yml"
expect 0 "promtool check config"
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="$PROM" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PIDS+=($!)

up=""
for _ in $(seq 300); do
    up=$(value "$(query 'up{job="keymesh"}' 2>/dev/null)" 2>/dev/null)
    [ "$up" = 1 ] && break
    sleep 0.1
done
ok $([ "$up" = 1 ]; echo $?) "prometheus scrapes kmctl serve: up{job=\"keymesh\"} = 1"
[ "$up" = 1 ] || diag "$(tail -5 "$TMP/prometheus.log")"

curl -s "http://127.0.0.1:$SPORT/metrics" >"$TMP/m.txt"
run promtool check metrics <"$TMP/m.txt"
ok $([ "$RC" -eq 0 ] && [ -s "$TMP/m.txt" ] && [ -z "$OUT$ERR" ]; echo $?) "promtool check metrics on what serve serves"

# The load: WORKERS x RATE op/s for DURATION s, on an absolute schedule.
sleep 2
T0=$(date +%s.%N)
run "$LOADGEN" "$SEG" p "$WORKERS" "$RATE" "$DURATION" "$TMP/load" 10
T1=$(date +%s.%N)
expect 0 "load generator ran"
cat "$TMP"/load.* >"$TMP/counts"
total=$(awk '$1 != "refused" {r += $2} END {print r + 0}' "$TMP/counts")
refused=$(awk '$1 == "refused" {r += $2} END {print r + 0}' "$TMP/counts")
planned=$((WORKERS * RATE * DURATION))
ok $([ "$total" = "$planned" ] && [ "$refused" = 0 ]; echo $?) "workers did all $planned operations ($total, $refused refused)"
sleep 3 # two more scrapes after the last operation

# Exact: the counters Prometheus holds now are the workers' counts.
J=$(query 'keymesh_key_requests_total{job="keymesh"}')
for k in k1 k2 k3; do
    want=$(awk -v k=$k '$1 == k {r += $2} END {print r + 0}' "$TMP/counts")
    got=$(value "$J" key=$k pool=p)
    ok $([ "$got" = "$want" ] && [ "$want" -gt 0 ]; echo $?) "keymesh_key_requests_total{key=$k} = $got, workers counted $want"
done
J=$(query 'sum(keymesh_key_outcomes_total{job="keymesh",outcome="failure"})')
want=$(awk '$1 != "refused" {r += $4} END {print r + 0}' "$TMP/counts")
ok $([ "$(value "$J")" = "$want" ]; echo $?) "failures summed over keys = workers' $want"

# Rate: inside the load (from 4 s after it began to 4 s before it ended),
# rate over that window against the workers' own rate.
W=$(( DURATION - 8 ))
AT=$("$PY" -c "print('%.3f' % ($T0 + $DURATION - 4))")
wrate=$("$PY" -c "print($total / ($T1 - $T0))")
J=$(query "sum(rate(keymesh_key_requests_total{job=\"keymesh\"}[${W}s]))" "$AT")
prate=$(value "$J")
ok $("$PY" -c "import sys; sys.exit(0 if abs($prate / $wrate - 1) <= 0.15 else 1)" 2>/dev/null; echo $?) \
    "sum(rate(keymesh_key_requests_total[${W}s])) = $prate/s, workers did $wrate/s"
J=$(query "rate(keymesh_key_requests_total{job=\"keymesh\"}[${W}s])" "$AT")
for k in k1 k2 k3; do
    want=$(awk -v k=$k '$1 == k {r += $2} END {print r + 0}' "$TMP/counts")
    kw=$("$PY" -c "print($want / ($T1 - $T0))")
    got=$(value "$J" key=$k)
    ok $("$PY" -c "import sys; sys.exit(0 if abs($got / $kw - 1) <= 0.15 else 1)" 2>/dev/null; echo $?) \
        "rate of key $k = $got/s, workers did $kw/s on it"
done

# The series exist, with their labels.
for q in 'keymesh_pool_keys{pool="p",state="active"}' 'keymesh_key_window_used_requests{key="k1",window="rpm"}' \
         'keymesh_key_state{key="k2",state="active"}' 'keymesh_segment_info' 'keymesh_key_latency_ema_seconds{key="k3"}'; do
    J=$(query "$q")
    n=$("$PY" -c 'import json,sys; print(len(json.loads(sys.argv[1])["data"]["result"]))' "$J")
    ok $([ "$n" = 1 ]; echo $?) "series $q exists in Prometheus"
done
ok $([ "$(value "$(query 'keymesh_pool_keys{pool="p",state="active"}')")" = 3 ]; echo $?) "keymesh_pool_keys{state=active} = 3"

finish
