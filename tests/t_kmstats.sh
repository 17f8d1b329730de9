#!/usr/bin/env bash
# tests/t_kmstats.sh - kmctl stats: counters against what forked workers
# counted themselves (tests/helpers/loadgen.c), the JSON document's shape
# (json_schema, kind, segment_format), window arithmetic (used + left =
# burst), the filters and their errors, units named in the table's titles,
# and no secret anywhere.  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

LOADGEN="$B/tests/helpers/loadgen"
PY=/usr/bin/python3
begin kmstats "$LOADGEN"

SECRET_A="sk-test-stats-aaaa1111"
SECRET_B="sk-test-stats-bbbb2222"
SECRETS=("$SECRET_A" "$SECRET_B")

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 16},
 "pools": [{"name": "p", "strategy": "round_robin",
            "limits": {"rpd": 100000, "tpd": {"limit": 10000000, "mode": "sliding", "burst": 1000000}},
            "model_limits": "per_model", "models": {"m1": {"rpd": 50000}, "m2": {}},
            "price": {"output_per_1k": 0.5}, "budget": {"usd": 1000, "hard": false},
            "keys": [{"id": "a", "secret": "$SECRET_A"},
                     {"id": "b", "secret": "$SECRET_B"}]},
           {"name": "q", "keys": [{"id": "c", "secret": "sk-test-stats-cccc3333"}]}]}
EOF

run "$KMCTL" stats --help
ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q '^Usage: kmctl stats NAME'; echo $?) "stats --help"
run "$KMCTL" stats "$SEG"
expect 3 "stats of a missing segment: status 3"
echo "$ERR" | grep -q "^kmctl: stats: segment '$SEG': no segment of that name"
ok $? "stats of a missing segment: message"

run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"

# 3 workers x 40 op/s x 1.5 s on pool p, model m1, 20 tokens each.
run "$LOADGEN" "$SEG" p 3 40 1.5 "$TMP/load" 20 m1
expect 0 "load generator ran"
cat "$TMP"/load.* >"$TMP/counts"

run "$KMCTL" stats "$SEG" --json
expect 0 "stats --json"
echo "$OUT" >"$TMP/stats.json"
fmt=$("$KMCTL" -V | sed -n 's/.*segment format \([0-9]*\)).*/\1/p')
"$PY" - "$TMP/stats.json" "$TMP/counts" "$SEG" "$fmt" >"$TMP/checks" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
want = {}
for line in open(sys.argv[2]):
    f = line.split()
    if f[0] == "refused":
        continue
    w = want.setdefault(f[0], [0, 0, 0, 0])
    for i in range(4):
        w[i] += int(f[i + 1])
def ok(cond, name):
    print(0 if cond else 1, name)
ok(doc["json_schema"] == 1 and doc["kind"] == "stats", "stats: json_schema 1, kind stats")
ok(doc["segment"] == sys.argv[3] and doc["segment_format"] == int(sys.argv[4]),
   "stats: segment and segment_format (%s, as kmctl -V says)" % doc.get("segment_format"))
p = doc["pools"][0]
keys = {k["id"]: k for k in p["keys"]}
ok(sorted(keys) == sorted(want), "stats: the keys the workers used (%s vs %s)" % (sorted(keys), sorted(want)))
for kid, w in sorted(want.items()):
    c = keys[kid]["counters"]
    got = [c["requests"], c["success"], c["failure"], c["tokens"]]
    ok(got == w, "key %s: requests, success, failure, tokens %s = workers' %s" % (kid, got, w))
tot = [sum(w[i] for w in want.values()) for i in range(4)]
c = p["counters"]
ok([c["requests"], c["success"], c["failure"], c["tokens"]] == tot,
   "pool: totals = workers' totals %s" % tot)
ok(tot[0] >= 150, "the workers did most of their 180 operations (%d)" % tot[0])
ok(p["keys_total"] == 2 and p["keys_by_state"]["active"] == 2, "pool: 2 keys, both active")
ok(abs(p["spent_usd"] - tot[3] * 0.5 / 1000) < 1e-6 and p["budget_usd"] == 1000.0
   and p["budget_hard"] is False,
   "pool: spent at $0.5/1k tokens against a soft budget of $1000 (spent %s)" % p["spent_usd"])
good = True
for k in p["keys"]:
    for wn, w in k["windows"].items():
        good &= w["used"] + w["left"] == w["burst"] and w["period_s"] == 86400
ok(good, "windows: used + left = burst, period 1 day")
# Every request named m1: each key's m1 counters are its own, m2's are 0.
for k in p["keys"]:
    km = {m["name"]: m["counters"] for m in k["models"]}
    ok(km["m1"] == k["counters"] and km["m2"]["requests"] == 0 and km["m2"]["tokens"] == 0,
       "key %s x m1: counters = the key's (%s); x m2: none" % (k["id"], km["m1"]))
pm = {m["name"]: m["counters"] for m in p["models"]}
ok(pm["m1"] == p["counters"] and pm["m2"]["requests"] == 0,
   "model m1 over the pool: the pool's counters; m2: none")
ok(set(keys["a"]["windows"]) == {"rpd", "tpd"} and keys["a"]["windows"]["tpd"]["mode"] == "sliding",
   "key a: windows rpd and tpd (sliding)")
m1 = [m for m in p["models"] if m["name"] == "m1"][0]
ok(m1["windows"]["rpd"]["keys"] == 2 and m1["windows"]["rpd"]["limit"] == 100000,
   "model m1: rpd over 2 keys, limits summed")
km1 = [m for m in keys["a"]["models"] if m["name"] == "m1"][0]["windows"]["rpd"]
ok(km1["limit"] == 50000 and km1["used"] >= 1, "key a x m1: its rpd (50000) used %d" % km1["used"])
ok(all(isinstance(k["latency_ema_us"], int) and 900 <= k["latency_ema_us"] <= 1100 for k in p["keys"]),
   "latency_ema_us near the workers' 1000 us")
ok(all(k["cooldown_remaining_ms"] == 0 for k in p["keys"]), "cooldown_remaining_ms 0 (no cooldown)")
ok(doc["pools"][1]["name"] == "q" and doc["pools"][1]["keys"][0]["latency_ema_us"] is None,
   "a key without samples has latency_ema_us null")
PYEOF
ok $? "the checks of stats --json ran to the end"
py_checks <"$TMP/checks"
no_secret "$OUT"
ok $? "stats --json shows no secret"

# ------------------------------------------------------------ the table
run "$KMCTL" stats "$SEG"
expect 0 "stats"
no_secret "$OUT"
ok $? "stats shows no secret"
echo "$OUT" | grep -q '^pool p (round_robin): 2 keys: 2 active' &&
    echo "$OUT" | grep -Eq '^  KEY +STATE +COOLDOWN_MS +INFLIGHT +REQUESTS .* LAT_EMA_US +OK_%$'
ok $? "stats: pool line and key table with units in the titles"
reqa=$(awk '$1 == "a" {r += $2} END {print r + 0}' "$TMP/counts")
echo "$OUT" | grep -Eq "^  a +active +- +0/[0-9]+ +$reqa "
ok $? "stats: key a's row shows its $reqa requests"
echo "$OUT" | grep -Eq '^  rpd +\(pool, 2 keys\) +token_bucket +200000 '
ok $? "stats: the pool's rpd summed over its keys"
echo "$OUT" | grep -Eq '^  m1 +rpd +a +token_bucket +50000 '
ok $? "stats: model m1's rpd on key a"
echo "$OUT" | grep -Eq "^  m1 +a +$reqa( +[0-9]+){7}$" &&
    echo "$OUT" | grep -Eq '^  m2 +b( +0){8}$' &&
    echo "$OUT" | grep -Eq '^  MODEL +KEY +REQUESTS +OK +429 +FAIL +CANCELLED +ABANDONED +STALE +TOKENS$'
ok $? "stats: key x model counters (m1 on a: its $reqa requests; m2 on b: none)"

# ------------------------------------------------------------ filters
run "$KMCTL" stats "$SEG" --json --pool q
"$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if [p["name"] for p in d["pools"]] == ["q"] else 1)' <<<"$OUT"
ok $? "--pool q: only pool q"
run "$KMCTL" stats "$SEG" --json --key b
"$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if [k["id"] for p in d["pools"] for k in p["keys"]] == ["b"] else 1)' <<<"$OUT"
ok $? "--key b: only key b"
run "$KMCTL" stats "$SEG" --json --model m2
"$PY" -c 'import json,sys; d=json.load(sys.stdin); p=d["pools"][0]; sys.exit(0 if [m["name"] for m in p["models"]] == ["m2"] and all([m["name"] for m in k["models"]] == ["m2"] for k in p["keys"]) else 1)' <<<"$OUT"
ok $? "--model m2: only model m2"
run "$KMCTL" stats "$SEG" --pool nope
expect 3 "--pool nope: status 3"
echo "$ERR" | grep -q "^kmctl: stats: pool 'nope': no pool of that name$"
ok $? "--pool nope: message"
run "$KMCTL" stats "$SEG" --pool p --key zz
expect 3 "--key zz: status 3"
echo "$ERR" | grep -q "^kmctl: stats: key 'zz' in pool 'p': no key of that id$"
ok $? "--key zz: message"
run "$KMCTL" stats "$SEG" --model gpt-9
expect 3 "--model gpt-9: status 3"
echo "$ERR" | grep -q "^kmctl: stats: model 'gpt-9': no model of that name in the pool$"
ok $? "--model gpt-9: message"
run "$KMCTL" stats "$SEG" --bogus
expect 2 "unknown option: usage error"

finish
