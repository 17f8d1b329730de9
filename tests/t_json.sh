#!/usr/bin/env bash
# tests/t_json.sh - kmctl's one JSON shape: every --json document (create,
# inspect, stats, ps, reap, check, restore, usage) is one object beginning
# json_schema, kind, segment and (where it read a segment) segment_format
# equal to what `kmctl -V` reads (ls and presets, about the host: json_schema
# and kind, no segment); inspect --json names the snapshot's
# format snapshot_format; one unit per quantity across every document (no
# latency in ms, no cooldown or attach time in s); check --json lists
# violations with status 1; and the commands that change a key print one
# line saying what changed.  TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

HOLD="$B/tests/helpers/hold"
LOADGEN="$B/tests/helpers/loadgen"
PY=/usr/bin/python3
begin json "$HOLD" "$LOADGEN"
new_seg RSEG json-restored

SECRET_A="sk-test-json-aaaa1111"
SECRET_C="sk-test-json-cccc3333"
SECRETS=("$SECRET_A" "$SECRET_C")
HOLD_PID=
on_cleanup() { [ -z "$HOLD_PID" ] || kill -KILL "$HOLD_PID" 2>/dev/null; }
FMT=$("$KMCTL" -V | sed -n 's/.*segment format \([0-9]*\)).*/\1/p')

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 8},
 "pools": [{"name": "p", "strategy": "round_robin",
            "limits": {"rpm": 600, "tpm": {"limit": 100000, "mode": "sliding", "burst": 5000}},
            "keys": [{"id": "a", "secret": "$SECRET_A", "weight": 2},
                     {"id": "b", "secret": "sk-test-json-bbbb2222", "limits": {"rpm": 30}}]}]}
EOF

# doc FILE KIND [nofmt|host]: "STATUS NAME" lines about the document's
# header (host: a document about the host, ls and presets: no segment)
doc() {
    "$PY" - "$1" "$2" "$SEG" "$FMT" "${3:-}" <<'PYEOF'
import json, sys
path, kind, seg, fmt, nofmt = sys.argv[1:6]
host = nofmt == "host"
try:
    d = json.load(open(path))
except Exception as e:
    print(1, "%s: not JSON (%s)" % (kind, e))
    sys.exit(0)
keys = list(d)
want = ["json_schema", "kind"] + ([] if host else ["segment"]) + ([] if nofmt else ["segment_format"])
print(0 if keys[:len(want)] == want else 1, "%s: begins %s (%s)" % (kind, ",".join(want), ",".join(keys[:4])))
print(0 if d["json_schema"] == 1 and d["kind"] == kind and (host and "segment" not in d and "segment_format" not in d
                                                            or not host and d["segment"] in (seg, seg + "-r")) else 1,
      "%s: json_schema 1, kind %s, %s" % (kind, kind, "no segment" if host else "segment"))
if not nofmt:
    print(0 if d["segment_format"] == int(fmt) else 1,
          "%s: segment_format %s = kmctl -V's %s" % (kind, d.get("segment_format"), fmt))
# One unit per quantity: these names must never appear.
bad = {"latency_ema_ms", "latency_ms", "cooldown_remaining_s", "cooldown_s_left", "attached_s",
       "format", "latency_avg_ms"}
found = set()
def walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k in bad:
                found.add(k)
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
walk(d)
print(0 if not found else 1, "%s: one unit per quantity, no bare format (found %s)" % (kind, sorted(found)))
PYEOF
}
checks() { # checks: read "STATUS NAME" lines from $TMP/checks
    local st name
    while read -r st name; do ok "$st" "$name"; done <"$TMP/checks"
}
# jq-like: jget FILE EXPR -> Python expression over d
jget() { "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

run "$KMCTL" create "$SEG" --config "$TMP/pool.json" --json
expect 0 "create --json"
echo "$OUT" >"$TMP/create.json"
doc "$TMP/create.json" create >"$TMP/checks"; checks
ok $([ "$(jget "$TMP/create.json" 'd["pools"], d["keys"], d["mode"], d["size_bytes"] > 0')" = "1 2 0600 True" ]; echo $?) \
    "create --json: pools, keys, mode, size_bytes"

run "$LOADGEN" "$SEG" p 1 40 0.5 "$TMP/load" 10
expect 0 "some load"

for c in inspect stats ps reap check; do
    run "$KMCTL" "$c" "$SEG" --json
    expect 0 "$c --json"
    echo "$OUT" >"$TMP/$c.json"
    doc "$TMP/$c.json" "$c" >"$TMP/checks"; checks
    no_secret "$OUT"
    ok $? "$c --json shows no secret"
done
ok $([ "$(jget "$TMP/inspect.json" 'd["snapshot_format"], len(d["pools"][0]["keys"]), len(d["processes"]), sorted(d["epochs"])')" = \
       "2 2 0 ['epoch', 'lagging_readers', 'reclaimed_up_to', 'reconfigurations']" ]; echo $?) \
    "inspect --json: snapshot_format 2, the keys, processes (none: kmctl takes no slot) and epochs"
ok $([ "$(jget "$TMP/inspect.json" 'd["pools"][0]["keys"][0]["latency_ema_us"] > 0, "cooldown_remaining_ms" in d["pools"][0]["keys"][0]')" = "True True" ]; echo $?) \
    "inspect --json: latency_ema_us and cooldown_remaining_ms"
ok $([ "$(jget "$TMP/check.json" 'd["count"], d["violations"]')" = "0 []" ]; echo $?) "check --json: no violation"

# check --json with a dead process: status 1, the violation listed.
"$HOLD" "$SEG" p 1 >"$TMP/hold" 2>&1 &
HOLD_PID=$!
for _ in $(seq 100); do grep -q held "$TMP/hold" 2>/dev/null && break; sleep 0.05; done
"$KMCTL" ps "$SEG" --json >"$TMP/ps.json"
ok $([ "$(jget "$TMP/ps.json" '[(p["self"], type(p["attached_ms"]).__name__) for p in d["processes"]]')" = "[(False, 'int')]" ]; echo $?) \
    "ps --json: the holder alone (kmctl takes no slot), attached_ms an integer"
kill -KILL "$HOLD_PID"
wait "$HOLD_PID" 2>/dev/null # (bash reports the kill on stderr: expected)
run "$KMCTL" check "$SEG" --json
expect 1 "check --json with a dead process: status 1"
echo "$OUT" >"$TMP/check2.json"
ok $([ "$(jget "$TMP/check2.json" 'd["count"] >= 1 and any("died without detaching" in v for v in d["violations"])')" = True ] && [ -z "$ERR" ]; echo $?) \
    "check --json: the violation listed, count, nothing on stderr"
run "$KMCTL" reap "$SEG" --json
echo "$OUT" >"$TMP/reap2.json"
ok $([ "$(jget "$TMP/reap2.json" 'd["processes"], d["leases"]')" = "1 1" ]; echo $?) "reap --json: 1 process, 1 lease"
HOLD_PID=

# restore --json
run "$KMCTL" keygen "$TMP/key"
run "$KMCTL" snapshot "$SEG" -o "$TMP/snap.json" --include-secrets --key-file "$TMP/key"
expect 0 "snapshot with secrets"
run "$KMCTL" restore "$RSEG" "$TMP/snap.json" --key-file "$TMP/key" --json
expect 0 "restore --json"
echo "$OUT" >"$TMP/restore.json"
SEG_SAVED=$SEG
SEG=$RSEG
doc "$TMP/restore.json" restore >"$TMP/checks"; checks
SEG=$SEG_SAVED
ok $([ "$(jget "$TMP/restore.json" 'd["keys"], d["from"] == sys.argv[1].replace("restore.json", "snap.json")')" = "2 True" ]; echo $?) \
    "restore --json: keys and the file it came from"

# usage --json, from a database persist wrote.
run "$KMCTL" persist "$SEG" --db "$TMP/usage.db" --once
expect 0 "persist --once"
run "$KMCTL" usage "$SEG" --db "$TMP/usage.db" --by key --json
expect 0 "usage --json"
echo "$OUT" >"$TMP/usage.json"
doc "$TMP/usage.json" usage nofmt >"$TMP/checks"; checks
want=$(awk '$1 != "refused" {r += $2} END {print r + 0}' "$TMP"/load.*)
# Events: the workers' releases, and the dead holder's lease (abandoned).
ok $([ "$(jget "$TMP/usage.json" 'd["by"], sum(r["success"] + r["failed"] for r in d["rows"]), sum(r["requests"] for r in d["rows"]), all(isinstance(r["latency_avg_us"], int) for r in d["rows"])')" = "['key'] $want $((want + 1)) True" ]; echo $?) \
    "usage --json: rows by key, the workers' $want releases and the reaped lease, latency_avg_us"

# ------------------------------------------ commands that change a key
run "$KMCTL" disable "$SEG" p b
ok $([ "$RC" = 0 ] && [ "$OUT" = "disabled key 'b' in pool 'p' of segment '$SEG' (was active)" ]; echo $?) "disable: one line ($OUT)"
run "$KMCTL" enable "$SEG" p b
ok $([ "$RC" = 0 ] && [ "$OUT" = "enabled key 'b' in pool 'p' of segment '$SEG' (was disabled)" ]; echo $?) "enable: one line ($OUT)"
run "$KMCTL" set-weight "$SEG" p a 5
ok $([ "$RC" = 0 ] && [ "$OUT" = "key 'a' in pool 'p' of segment '$SEG': weight 2 -> 5" ]; echo $?) "set-weight: one line ($OUT)"
run "$KMCTL" set-limits "$SEG" p a '{"rpm": 500, "rph": 1000, "tpm": null}'
ok $([ "$RC" = 0 ] && [ "$OUT" = "key 'a' in pool 'p' of segment '$SEG': rpm 600 -> 500, rph none -> 1000, tpm 100000 (sliding) -> none" ]; echo $?) \
    "set-limits: one line naming each window that changed ($OUT)"
run "$KMCTL" set-limits "$SEG" p a '{"rpm": 500}'
ok $([ "$RC" = 0 ] && [ "$OUT" = "key 'a' in pool 'p' of segment '$SEG': limits unchanged: rpm 500, rph 1000" ]; echo $?) \
    "set-limits with nothing new: says so ($OUT)"
export KMT_JSON_SECRET_C="$SECRET_C"
run "$KMCTL" add-key "$SEG" p c --secret-env KMT_JSON_SECRET_C --weight 3
ok $([ "$RC" = 0 ] && [ "$OUT" = "added key 'c' to pool 'p' of segment '$SEG' (weight 3, max_inflight 64, rpm 600, tpm 100000 (sliding))" ]; echo $?) \
    "add-key: one line ($OUT)"
no_secret "$OUT$ERR"
ok $? "add-key: no secret printed"
run "$KMCTL" remove-key "$SEG" p c
ok $([ "$RC" = 0 ] && [ "$OUT" = "removed key 'c' from pool 'p' of segment '$SEG'" ]; echo $?) "remove-key: one line ($OUT)"

# ------------------------- documents about the host: ls, presets
for c in ls presets; do
    run "$KMCTL" "$c" --json
    expect 0 "$c --json"
    echo "$OUT" >"$TMP/$c.json"
    doc "$TMP/$c.json" "$c" host >"$TMP/checks"; checks
done
ok $([ "$(jget "$TMP/ls.json" "[(o['kind'], o['segment_format'], o['size_bytes'] > 0, o['mode']) for o in d['objects'] if o['name'] == '$SEG']")" = \
       "[('keymesh', $FMT, True, '0600')]" ]; echo $?) "ls --json: the segment, its segment_format, size_bytes and mode"
ok $([ "$(jget "$TMP/presets.json" 'd["presets_schema"], sorted(d["providers"])[:2]')" = "1 ['anthropic', 'cerebras']" ]; echo $?) \
    "presets --json: presets_schema and the providers"

finish
