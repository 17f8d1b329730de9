#!/usr/bin/env bash
# tests/t_kmctl.sh - kmctl end to end: create / inspect / snapshot / enable /
# disable / destroy, bad configurations leaving no segment behind, exit
# codes, error lines, and secrets never printed (ps, reap and check around a
# dead worker: t_reapctl.sh).  TAP output (plan at the end).  Binaries from
# ${KM_BUILD:-build}.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

begin kmctl
new_seg BADSEG kmctl-bad
new_seg MODESEG kmctl-mode
new_seg MODELSEG kmctl-models
new_seg BUDSEG kmctl-budget
new_seg RECSEG kmctl-reconf
new_seg POOLSEG kmctl-pools
new_seg KMODSEG kmctl-keymodels

SECRET_A="sk-test-aaaa1111"
SECRET_B="sk-test-bbbb2222"
SECRET_G="gsk_zzzzzzzzzzzzzzzzzz9999"
SECRETS=("$SECRET_A" "$SECRET_B" "$SECRET_G")
export KMT_KMCTL_KEY_B="$SECRET_B"

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 8},
 "pools": [{"name": "openai", "strategy": "least_busy",
            "limits": {"rpm": 60, "tpm": {"limit": 100000, "mode": "sliding", "burst": 5000}},
            "keys": [{"id": "a", "secret": "$SECRET_A", "weight": 2},
                     {"id": "b", "secret_env": "KMT_KMCTL_KEY_B", "limits": {"rpm": 30}, "max_inflight": 8}]},
           {"name": "groq", "keys": [{"id": "g1", "secret": "$SECRET_G"}]}]}
EOF

# ------------------------------------------------------------ version, usage
run "$KMCTL" -V
expect 0 "-V"
echo "$OUT" | grep -Eq '^kmctl [0-9]+\.[0-9]+\.[0-9]+ \(segment format [0-9]+\)$'
ok $? "-V prints 'kmctl VERSION (segment format N)'"
run "$KMCTL" --version
ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q '^kmctl '; echo $?) "--version"

run "$KMCTL" --help
expect 0 "--help"
echo "$OUT" | grep -q 'Exit status' && echo "$OUT" | grep -q 'create NAME --config FILE'
ok $? "--help lists commands and exit status"
for c in create inspect snapshot destroy enable disable ps reap check; do
    run "$KMCTL" "$c" --help
    ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q "^Usage: kmctl $c"; echo $?) "$c --help"
done

run "$KMCTL"
expect 2 "no command: usage error"
run "$KMCTL" frobnicate
expect 2 "unknown command: usage error"
echo "$ERR" | grep -q "^kmctl: usage: unknown command 'frobnicate'"
ok $? "unknown command message"
run "$KMCTL" --bogus
expect 2 "unknown global option"
run "$KMCTL" create "$SEG"
expect 2 "create without --config"
echo "$ERR" | grep -q '^kmctl: create: missing --config FILE'
ok $? "create without --config: message"
run "$KMCTL" create --config "$TMP/pool.json"
expect 2 "create without NAME"
run "$KMCTL" create "$SEG" --config "$TMP/pool.json" --mode 9x
expect 2 "create --mode not octal"
run "$KMCTL" inspect "$SEG" extra
expect 2 "inspect with too many arguments"
run "$KMCTL" inspect "$SEG" --frob
expect 2 "inspect unknown option"
run "$KMCTL" enable "$SEG" openai
expect 2 "enable without KEY_ID"
run "$KMCTL" snapshot "$SEG" -o
expect 2 "snapshot -o without FILE"

# ----------------------------------------------------------- happy path
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"
no_secret "$OUT$ERR"
ok $? "create prints no secret"
if [ -d /dev/shm ]; then
    mode=$(stat -c %a "/dev/shm/$SEG" 2>/dev/null)
    ok $([ "$mode" = 600 ]; echo $?) "segment mode 0600 by default (got $mode)"
fi

run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 1 "create on an existing name fails"
echo "$ERR" | grep -q "^kmctl: create: segment '$SEG': "
ok $? "create on an existing name: message"

run "$KMCTL" inspect "$SEG"
expect 0 "inspect"
echo "$OUT" | grep -q '^pool openai: least_busy, 2 keys' &&
    echo "$OUT" | grep -q '^pool groq: round_robin, 1 key'
ok $? "inspect shows pool headers"
echo "$OUT" | grep -q 'ID  *SECRET  *STATE  *W  *INFLIGHT  *RPM  *TPM  *ACQ  *OK  *429  *FAIL  *EMA_US  *COOLDOWN_MS'
ok $? "inspect shows the key columns"
echo "$OUT" | grep -Eq '^  b +[^ ]*2222 +active +1 +0/8 +30/30 '
ok $? "inspect row of key b (masked secret, state, weight, in-flight, rpm)"
echo "$OUT" | grep -q '^processes: 0 attached$' && ! echo "$OUT" | grep -q 'this kmctl'
ok $? "inspect ends with the processes section; kmctl, read-only, is not in it"
no_secret "$OUT"
ok $? "inspect shows no secret"

run "$KMCTL" inspect "$SEG" --json
expect 0 "inspect --json"
echo "$OUT" | grep -q '"keymesh": ' && echo "$OUT" | grep -q '"name": "openai"' &&
    echo "$OUT" | grep -q '"id": "g1"' && echo "$OUT" | grep -q '"rate_limited": 0'
ok $? "inspect --json has the snapshot fields"
no_secret "$OUT"
ok $? "inspect --json shows no secret"

run "$KMCTL" snapshot "$SEG"
expect 0 "snapshot to stdout"
no_secret "$OUT"
ok $? "snapshot to stdout shows no secret"

mkdir "$TMP/snap"
echo old >"$TMP/snap/s.json"
run "$KMCTL" snapshot "$SEG" -o "$TMP/snap/s.json"
expect 0 "snapshot -o FILE"
grep -q '"format": 2' "$TMP/snap/s.json" && grep -q '"name": "groq"' "$TMP/snap/s.json"
ok $? "snapshot file holds the JSON"
ok $([ "$(stat -c %a "$TMP/snap/s.json")" = 600 ]; echo $?) "snapshot file mode 0600"
ok $([ "$(ls -A "$TMP/snap" | wc -l)" -eq 1 ]; echo $?) "no temporary file left beside it"
no_secret "$(cat "$TMP/snap/s.json")"
ok $? "snapshot file shows no secret"
run "$KMCTL" snapshot "$SEG" -o "$TMP/nodir/s.json"
expect 1 "snapshot into a missing directory fails"
echo "$ERR" | grep -q "^kmctl: snapshot: $TMP/nodir/s.json: "
ok $? "snapshot failure names the file"

# key state of id $1 in the snapshot JSON on stdin
state_of() { grep -A3 "\"id\": \"$1\"" | sed -n 's/.*"state": "\([a-z]*\)".*/\1/p'; }

run "$KMCTL" disable "$SEG" openai b
expect 0 "disable"
st=$("$KMCTL" inspect "$SEG" --json | state_of b)
ok $([ "$st" = disabled ]; echo $?) "disable: inspect --json shows disabled (got '$st')"
st=$("$KMCTL" inspect "$SEG" --json | state_of a)
ok $([ "$st" = active ]; echo $?) "disable: other keys untouched (got '$st')"
run "$KMCTL" enable "$SEG" openai b
expect 0 "enable"
st=$("$KMCTL" inspect "$SEG" --json | state_of b)
ok $([ "$st" = active ]; echo $?) "enable: inspect --json shows active (got '$st')"

run "$KMCTL" enable "$SEG" openai zz
expect 3 "enable an unknown key"
echo "$ERR" | grep -q "^kmctl: enable: key 'zz' in pool 'openai': "
ok $? "unknown key: message"
run "$KMCTL" disable "$SEG" nopool a
expect 3 "disable in an unknown pool"
echo "$ERR" | grep -q "^kmctl: disable: pool 'nopool': "
ok $? "unknown pool: message"

run "$KMCTL" destroy "$SEG"
expect 0 "destroy"
run "$KMCTL" inspect "$SEG"
expect 3 "inspect after destroy: no segment"
echo "$ERR" | grep -q "^kmctl: inspect: segment '$SEG': "
ok $? "no segment: message"
run "$KMCTL" destroy "$SEG"
expect 3 "destroy twice: no segment"
run "$KMCTL" snapshot "$SEG"
expect 3 "snapshot of a missing segment"
run "$KMCTL" enable "$SEG" openai a
expect 3 "enable on a missing segment"

run "$KMCTL" create "$MODESEG" --config "$TMP/pool.json" --mode 0640
expect 0 "create --mode 0640"
if [ -d /dev/shm ]; then
    mode=$(stat -c %a "/dev/shm/$MODESEG" 2>/dev/null)
    ok $([ "$mode" = 640 ]; echo $?) "segment mode 0640 (got $mode)"
fi
"$KMCTL" destroy "$MODESEG" >/dev/null 2>&1

# Unsafe modes: world-writable only with --force; set-id and sticky bits
# never; nothing is created when refused; the line gives the object's mode.
for m in 0777 0666 0602; do
    run "$KMCTL" create "$MODESEG" --config "$TMP/pool.json" --mode $m
    expect 2 "create --mode $m (world-writable) without --force: refused"
    echo "$ERR" | grep -q "^kmctl: create: --mode $m makes the segment world-writable: .*add --force" &&
        [ ! -e "/dev/shm/$MODESEG" ]
    ok $? "create --mode $m: says why and what to do, creates nothing"
done
for m in 4777 2660 1600 4600; do
    for f in "" --force; do
        run "$KMCTL" create "$MODESEG" --config "$TMP/pool.json" --mode $m $f
        expect 2 "create --mode $m $f: set-id/sticky bits refused"
        echo "$ERR" | grep -q "^kmctl: create: --mode $m: the setuid, setgid and sticky bits" &&
            [ ! -e "/dev/shm/$MODESEG" ]
        ok $? "create --mode $m $f: says why, creates nothing"
    done
done
run "$KMCTL" create "$MODESEG" --config "$TMP/pool.json" --mode 0666 --force
expect 0 "create --mode 0666 --force"
mode=$(stat -c %04a "/dev/shm/$MODESEG" 2>/dev/null)
[ "$mode" = 0666 ] && echo "$OUT" | grep -q ", mode 0666$"
ok $? "--force: the segment is 0666 and the line says so (stat: $mode; $OUT)"
"$KMCTL" destroy "$MODESEG" >/dev/null 2>&1
run "$KMCTL" restore "$MODESEG" "$TMP/none.json" --key-env KMT_NO_KEY --mode 0666
expect 2 "restore --mode 0666 without --force: refused"
echo "$ERR" | grep -q "^kmctl: restore: --mode 0666 makes the segment world-writable"
ok $? "restore --mode 0666: says why"
(umask 0077 && "$KMCTL" create "$MODESEG" --config "$TMP/pool.json" --mode 0660 --json) >"$TMP/out"
mode=$(stat -c %04a "/dev/shm/$MODESEG" 2>/dev/null)
[ "$mode" = 0660 ] && grep -q '"mode": *"0660"' "$TMP/out"
ok $? "create --json under umask 0077: mode 0660 as stat shows it (stat: $mode; $(cat "$TMP/out"))"
"$KMCTL" destroy "$MODESEG" >/dev/null 2>&1

# ------------------------------------ models, prices, budgets, metadata
cat >"$TMP/models.json" <<EOF
{"pools": [{"name": "openai", "strategy": "latency", "model_limits": "per_model",
            "models": {"gpt-4o": {"rpm": 500, "tpm": {"limit": 30000, "mode": "sliding"}},
                       "gpt-4o-mini": {}},
            "price": {"input_per_1k": 0.0025, "output_per_1k": 0.01},
            "budget": {"usd": 100},
            "keys": [{"id": "a", "secret": "$SECRET_A", "meta": {"org": "org-1"}},
                     {"id": "b", "secret": "$SECRET_B", "budget": {"usd": 5.5, "hard": false}}]},
           {"name": "groq", "models": {"llama-3.1-8b": {}},
            "keys": [{"id": "g1", "secret": "$SECRET_G"}]}]}
EOF
run "$KMCTL" create "$MODELSEG" --config "$TMP/models.json"
expect 0 "create with models, prices, budgets and meta"
run "$KMCTL" inspect "$MODELSEG"
expect 0 "inspect (models)"
echo "$OUT" | grep -q '^pool openai: latency, 2 keys'
ok $? "inspect: strategy name latency"
echo "$OUT" | grep -q '^  models (per_model limits): gpt-4o (rpm 500, tpm 30000), gpt-4o-mini$'
ok $? "inspect: per_model models with their limits"
echo "$OUT" | grep -q '^  models (global limits): llama-3.1-8b$'
ok $? "inspect: global pool's model list"
echo "$OUT" | grep -q '^  budget: \$0.00 spent of \$100.00 (hard'
ok $? "inspect: pool budget in USD"
echo "$OUT" | grep -q 'COOLDOWN_MS  *SPENT_USD  *META$' &&
    echo "$OUT" | grep -Eq '^  a .* 0\.00 +\{"org":"org-1"\}$' &&
    echo "$OUT" | grep -Eq '^  b .* 0\.00/5\.50 \(soft\) +-$'
ok $? "inspect: SPENT_USD (with key budget) and META columns"
! echo "$OUT" | grep -A2 '^pool groq' | grep -q 'SPENT_USD'
ok $? "inspect: no SPENT_USD column where nothing is priced"
no_secret "$OUT"
ok $? "inspect (models) shows no secret"
run "$KMCTL" inspect "$MODELSEG" --json
expect 0 "inspect --json (models)"
echo "$OUT" | grep -q '"model_limits": "per_model"' &&
    echo "$OUT" | grep -A3 '"models": \[' | grep -q '"gpt-4o-mini"' &&
    echo "$OUT" | grep -q '"input_per_1k": 0.0025,' &&
    echo "$OUT" | grep -A2 '"budget": {' | grep -q '"usd": 100.0,' &&
    echo "$OUT" | grep -q '"org": "org-1"' &&
    echo "$OUT" | grep -q '"success_rate": ' &&
    echo "$OUT" | grep -q '"waiters": 0'
ok $? "snapshot: model_limits, models, price, budget, meta, success_rate, waiters"
echo "$OUT" | grep -A3 '"gpt-4o": {' | grep -q '"rpm": {'
ok $? "snapshot: per-key limits of each model"
no_secret "$OUT"
ok $? "inspect --json (models) shows no secret"
"$KMCTL" destroy "$MODELSEG" >/dev/null 2>&1

# ----------------------------------------------------- bad configurations
# bad_config NAME WANT FILE: create fails with status 1, stderr
# "kmctl: create: FILE..." containing WANT, no secret, and no segment left.
bad_config() {
    run "$KMCTL" create "$BADSEG" --config "$3"
    expect 1 "$1: create fails"
    case "$ERR" in
    "kmctl: create: $3"*"$2"*) ok 0 "$1: message names it" ;;
    *) ok 1 "$1: message names it"; diag "stderr: $ERR" "wanted: $2" ;;
    esac
    no_secret "$ERR"
    ok $? "$1: no secret in the message"
    run "$KMCTL" inspect "$BADSEG"
    expect 3 "$1: no segment left behind"
}

cat >"$TMP/syntax.json" <<EOF
{"pools": [
  {"name": "p", "keys": [{"id": "a", "secret": "$SECRET_A"},,]}
]}
EOF
bad_config "syntax error" ":2:" "$TMP/syntax.json"

cat >"$TMP/unterminated.json" <<EOF
{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "$SECRET_A
EOF
bad_config "unterminated secret" ":1:" "$TMP/unterminated.json"

cat >"$TMP/unknown.json" <<EOF
{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "$SECRET_A", "colour": "red"}]}]}
EOF
bad_config "unknown field" "pools[0].keys[0].colour: unknown field" "$TMP/unknown.json"

cat >"$TMP/dup.json" <<EOF
{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "$SECRET_A"},
                                  {"id": "a", "secret": "$SECRET_B"}]}]}
EOF
bad_config "duplicate id" "pools[0].keys[1].id: duplicate key id" "$TMP/dup.json"

cat >"$TMP/env.json" <<EOF
{"pools": [{"name": "p", "keys": [{"id": "a", "secret": "$SECRET_A"},
                                  {"id": "b", "secret_env": "KMT_KMCTL_UNSET_$$"}]}]}
EOF
unset "KMT_KMCTL_UNSET_$$" 2>/dev/null
bad_config "missing env var" \
    "pools[0].keys[1].secret_env: environment variable KMT_KMCTL_UNSET_$$ is not set" \
    "$TMP/env.json"

{
    printf '{"capacity": {"keys": 2}, "pools": [{"name": "p", "keys": ['
    printf '{"id": "a", "secret": "%s"}, {"id": "b", "secret": "%s"}, ' "$SECRET_A" "$SECRET_B"
    printf '{"id": "c", "secret": "%s"}]}]}\n' "$SECRET_G"
} >"$TMP/many.json"
bad_config "too many keys" "more keys (3) than capacity.keys (2)" "$TMP/many.json"

cat >"$TMP/limit.json" <<EOF
{"pools": [{"name": "p", "limits": {"rpm": 0}, "keys": [{"id": "a", "secret": "$SECRET_A"}]}]}
EOF
bad_config "zero limit" "pools[0].limits.rpm: must be a positive integer" "$TMP/limit.json"

bad_config "missing file" "No such file or directory" "$TMP/nonexistent.json"

cat >"$TMP/modellim.json" <<EOF
{"pools": [{"name": "p", "models": {"gpt-4o": {"rpm": 5}},
            "keys": [{"id": "a", "secret": "$SECRET_A"}]}]}
EOF
bad_config "model limit in a global pool" \
    'pools[0].models.gpt-4o: limits need "model_limits": "per_model"' "$TMP/modellim.json"

# ------------------------------------------------------- reconfiguration
cat >"$TMP/rec.json" <<EOF
{"capacity": {"keys": 4}, "pools": [{"name": "p", "limits": {"rpm": 600},
  "keys": [{"id": "a", "secret": "$SECRET_A"}, {"id": "b", "secret": "$SECRET_B"}]}]}
EOF
"$KMCTL" create "$RECSEG" --config "$TMP/rec.json" >/dev/null
export KMT_KMCTL_KEY_G="$SECRET_G"
run "$KMCTL" add-key "$RECSEG" p g
expect 2 "add-key without a secret source is a usage error"
run "$KMCTL" add-key "$RECSEG" p g --secret-env KMT_KMCTL_KEY_G --weight 3 --limits '{"tpm": 5000}'
expect 0 "add-key --secret-env --weight --limits"
run "$KMCTL" inspect "$RECSEG"
ok $(echo "$OUT" | grep -Eq '^  g +…9999 +active +3 '; echo $?) "inspect shows the added key with its weight"
run "$KMCTL" add-key "$RECSEG" p g --secret-env KMT_KMCTL_KEY_G
expect 1 "add-key refuses an id already in the pool"
ok $(echo "$ERR" | grep -q "already exists"; echo $?) "... and says so"
run "$KMCTL" set-weight "$RECSEG" p a 5
expect 0 "set-weight"
run "$KMCTL" set-limits "$RECSEG" p a '{"rpm": 60, "tpm": null}'
expect 0 "set-limits"
run "$KMCTL" set-limits "$RECSEG" p a '{"qpm": 1}'
expect 1 "set-limits refuses an unknown window"
run "$KMCTL" inspect "$RECSEG"
ok $(echo "$OUT" | grep -Eq '^  a +sk-…1111 +active +5 +0/64 +60/60 '; echo $?) "inspect shows a's new weight and rpm"
run "$KMCTL" remove-key "$RECSEG" p b
expect 0 "remove-key"
run "$KMCTL" remove-key "$RECSEG" p b
expect 3 "removing it again: no such key"
run "$KMCTL" inspect "$RECSEG"
ok $(echo "$OUT" | grep -q "^  b "; [ $? -ne 0 ]; echo $?) "the removed key is gone from inspect"
ok $(echo "$OUT" | grep -q "^epochs: .* 4 reconfigurations"; echo $?) "inspect counts 4 reconfigurations"
run "$KMCTL" check "$RECSEG"
expect 0 "check is clean after reconfiguration"
no_secret "$OUT$ERR"
ok $? "no secret printed"

# ------------------------------------------- pools changed live (issue 18, 1)
cat >"$TMP/pools.json" <<EOF
{"capacity": {"keys": 5, "pools": 2, "processes": 8},
 "pools": [{"name": "openai", "keys": [{"id": "a", "secret": "$SECRET_A"}]}]}
EOF
cat >"$TMP/groq.json" <<EOF
{"name": "groq", "strategy": "fill_first", "limits": {"rpm": 30},
 "keys": [{"id": "g0", "secret": "$SECRET_G"}, {"id": "g1", "secret": "$SECRET_B"}]}
EOF
cat >"$TMP/third.json" <<EOF
{"pools": [{"name": "third", "keys": [{"id": "t", "secret": "sk-test-third-3333"}]}]}
EOF
"$KMCTL" create "$POOLSEG" --config "$TMP/pools.json" >/dev/null
for c in add-pool set-pool remove-pool; do
    run "$KMCTL" "$c" --help
    ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q "^Usage: kmctl $c"; echo $?) "$c --help"
done
run "$KMCTL" add-pool "$POOLSEG"
expect 2 "add-pool without --config: usage error"
run "$KMCTL" add-pool "$POOLSEG" --config "$TMP/groq.json"
expect 0 "add-pool"
ok $([ "$OUT" = "added pool 'groq' to segment '$POOLSEG' (fill_first, 2 keys, 0 models)" ]; echo $?) \
    "add-pool prints the pool added (got: $OUT)"
run "$KMCTL" add-pool "$POOLSEG" --config "$TMP/groq.json"
expect 1 "add-pool of a name already there: status 1"
ok $(echo "$ERR" | grep -q 'pool "groq" already exists'; echo $?) "... and says so"
echo '{"name": "x", "keys": [' >"$TMP/badpool.json"
run "$KMCTL" add-pool "$POOLSEG" --config "$TMP/badpool.json"
ok $([ "$RC" -eq 1 ] && echo "$ERR" | grep -q "config '$TMP/badpool.json':2:0: invalid JSON"; echo $?) \
    "add-pool of bad JSON: status 1, file:line:column ($ERR)"
run "$KMCTL" add-pool "$POOLSEG" --config "$TMP/third.json"
ok $([ "$RC" -eq 1 ] && echo "$ERR" | grep -q "no free pool row: capacity.pools is 2"; echo $?) \
    "add-pool beyond capacity.pools: status 1, says so ($ERR)"
run "$KMCTL" set-pool "$POOLSEG" groq '{"strategy": "least_busy", "cooldown_s": 5, "limits": {"rpm": 60}}'
expect 0 "set-pool"
ok $([ "$OUT" = "pool 'groq' of segment '$POOLSEG': strategy fill_first -> least_busy, cooldown_s 60 -> 5, limits {\"rpm\":60} on its 2 keys" ]
    echo $?) "set-pool says what changed (got: $OUT)"
run "$KMCTL" inspect "$POOLSEG"
ok $(echo "$OUT" | grep -q '^pool groq: least_busy, 2 keys, cooldown 5s' &&
    echo "$OUT" | grep -Eq '^  g1 .* 60/60 '; echo $?) "inspect shows the new strategy, cooldown and rpm"
run "$KMCTL" set-pool "$POOLSEG" groq '{"name": "other"}'
ok $([ "$RC" -eq 1 ] && echo "$ERR" | grep -q "name: cannot be changed live"; echo $?) \
    "set-pool refuses what cannot change live, saying so"
run "$KMCTL" set-pool "$POOLSEG" nopool '{"strategy": "fill_first"}'
expect 3 "set-pool of an unknown pool: status 3"
"$B/tests/helpers/hold" "$POOLSEG" groq 1 >"$TMP/hold.out" 2>&1 &
HOLD=$!
for _ in $(seq 50); do
    grep -q held "$TMP/hold.out" 2>/dev/null && break
    sleep 0.1
done
run "$KMCTL" remove-pool "$POOLSEG" groq --timeout-ms 300
ok $([ "$RC" -eq 1 ] && echo "$ERR" | grep -Eq "^kmctl: remove-pool: pool 'groq': 1 lease still out after [0-9]+ ms; nothing removed"; echo $?) \
    "remove-pool with a lease out times out: status 1, nothing removed ($ERR)"
run "$KMCTL" inspect "$POOLSEG"
ok $(echo "$OUT" | grep -q '^pool groq:'; echo $?) "... the pool is still there"
kill "$HOLD" 2>/dev/null
wait "$HOLD" 2>/dev/null
run "$KMCTL" remove-pool "$POOLSEG" groq
expect 0 "remove-pool once its lease is back (its dead holder reaped)"
ok $([ "$OUT" = "removed pool 'groq' (2 keys) from segment '$POOLSEG'" ]; echo $?) "remove-pool prints the pool removed ($OUT)"
run "$KMCTL" remove-pool "$POOLSEG" groq
expect 3 "remove-pool again: no such pool"
run "$KMCTL" inspect "$POOLSEG"
ok $(echo "$OUT" | grep -q '^segment .*: segment format [0-9]*, 1 pool,' && ! echo "$OUT" | grep -q '^pool groq'; echo $?) \
    "inspect: one pool left"
run "$KMCTL" add-pool "$POOLSEG" --config "$TMP/third.json"
expect 0 "add-pool of a configuration of one pool, in the removed pool's row"
run "$KMCTL" snapshot "$POOLSEG"
ok $(echo "$OUT" | python3 -c 'import json,sys; print(*[p["name"] for p in json.load(sys.stdin)["pools"]])' | grep -qx "openai third"; echo $?) \
    "snapshot lists the pools there are"
run "$KMCTL" check "$POOLSEG"
expect 0 "check is clean after pools changed"
no_secret "$OUT$ERR"
ok $? "no secret printed"

# ----------------------------------------------- a key's own model limits
cat >"$TMP/kmod.json" <<EOF
{"pools": [{"name": "p", "model_limits": "per_model",
  "models": {"gpt-4o": {"rpm": 500, "tpm": 30000}, "o1": {"rpm": 20}},
  "keys": [{"id": "a", "secret": "$SECRET_A", "models": {"gpt-4o": {"rpm": 10000}}},
           {"id": "b", "secret": "$SECRET_B"}]}]}
EOF
run "$KMCTL" create "$KMODSEG" --config "$TMP/kmod.json"
expect 0 "create with a key's own model limits"
run "$KMCTL" inspect "$KMODSEG"
ok $(echo "$OUT" | grep -q "models (per_model limits): gpt-4o (rpm 500, tpm 30000), o1 (rpm 20)"; echo $?) \
    "inspect: the pool's model limits (not a key's own)"
ok $(echo "$OUT" | grep -qx "  key a, model gpt-4o: rpm 10000 (own), tpm 30000"; echo $?) \
    "inspect: a's own rpm of gpt-4o, the pool's tpm"
ok $(echo "$OUT" | grep -q "key b, model"; [ $? -ne 0 ]; echo $?) "inspect: b has no line of its own"
run "$KMCTL" set-limits "$KMODSEG" p b '{"tpm": 60000}' --model gpt-4o
expect 0 "set-limits --model"
ok $(echo "$OUT" | grep -qx "key 'b' in pool 'p' of segment '$KMODSEG', model 'gpt-4o': tpm 30000 -> 60000"; echo $?) \
    "set-limits --model says what changed"
run "$KMCTL" inspect "$KMODSEG" --json
echo "$OUT" >"$TMP/kmod-inspect.json"
python3 - "$TMP/kmod-inspect.json" >"$TMP/kmod-checks" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keys = {k["id"]: k for k in d["pools"][0]["keys"]}
a, b = keys["a"]["models"]["gpt-4o"], keys["b"]["models"]["gpt-4o"]
print(0 if a["rpm"]["limit"] == 10000 and a["rpm"].get("own") is True and "own" not in a["tpm"] else 1,
      "inspect --json: a's own rpm of gpt-4o marked own, its tpm not")
print(0 if b["tpm"]["limit"] == 60000 and b["tpm"].get("own") is True and "own" not in b["rpm"] else 1,
      "inspect --json: b's own tpm of gpt-4o (set live) marked own")
print(0 if "own" not in json.dumps(keys["b"]["models"]["o1"]) else 1, "inspect --json: o1 the pool's on b")
PY
py_checks <"$TMP/kmod-checks"
run "$KMCTL" set-limits "$KMODSEG" p b '{"tpm": null}' --model gpt-4o
expect 0 "set-limits --model with null"
ok $(echo "$OUT" | grep -q "tpm 60000 -> 30000 (the pool's limits of the model)"; echo $?) \
    "null gives the window back to the pool's"
run "$KMCTL" set-limits "$KMODSEG" p b '{"rpm": 5}' --model gpt-5
expect 3 "set-limits --model of a model the pool does not list: not found"
ok $(echo "$ERR" | grep -q 'pool "p" lists no model "gpt-5"'; echo $?) "... and says which"
run "$KMCTL" set-limits "$RECSEG" p a '{"rpm": 5}' --model gpt-4o
expect 3 "set-limits --model in a pool without models: not found"
run "$KMCTL" set-limits "$KMODSEG" p b '{"rpm": 0}' --model gpt-4o
expect 1 "set-limits --model refuses a bad number"
run "$KMCTL" check "$KMODSEG"
expect 0 "check is clean after the model limits changed"
cat >"$TMP/kmod-bad.json" <<EOF
{"pools": [{"name": "p", "models": {"gpt-4o": {}},
  "keys": [{"id": "a", "secret": "$SECRET_A", "models": {"gpt-4o": {"rpm": 10000}}}]}]}
EOF
bad_config "a key's own model limits in a global pool" \
    "pools[0].keys[0].models: a key's own model limits need its pool's \"model_limits\": \"per_model\"" \
    "$TMP/kmod-bad.json"

# ------------------------------------ usage: its own errors (issue 14, 8)
"$KMCTL" persist "$RECSEG" --db "$TMP/u.db" --once >/dev/null # the schema, no event
run "$KMCTL" usage "$RECSEG" --db "$TMP/u.db" --by colour
expect 2 "usage --by colour: usage error"
ok $([ "$ERR" = "kmctl: usage: --by: 'colour' is not one of pool, key, model, outcome
Try 'kmctl usage --help'." ]; echo $?) "usage's errors point at 'kmctl usage --help'"
run "$KMCTL"
ok $([ "$RC" -eq 2 ] && [ "$ERR" = "kmctl: usage: no command given
Try 'kmctl --help'." ]; echo $?) "without a command the hint is still 'kmctl --help'"
run "$KMCTL" usage "$RECSEG" --db "$TMP/u.db"
expect 0 "usage of a segment with no usage yet"
ok $(echo "$OUT" | grep -qx '(no usage in the last 1h)'; echo $?) "... says so"
run "$KMCTL" usage "$SEG-none" --db "$TMP/u.db"
expect 3 "usage of a segment that does not exist: status 3"
ok $([ -z "$OUT" ] && [ "$ERR" = "kmctl: usage: segment '$SEG-none': no segment of that name" ]
    echo $?) "... one error line, nothing on stdout"

# ------------------------- persist: one at a time, and it says so (issue 17, 7)
"$KMCTL" persist "$RECSEG" --db "$TMP/p1.db" --interval 1 >/dev/null 2>"$TMP/p1.err" &
P1=$!
for _ in $(seq 50); do # its first drain follows the database's creation
    [ -e "$TMP/p1.db" ] && break
    sleep 0.1
done
sleep 0.5
run "$KMCTL" persist "$RECSEG" --db "$TMP/p2.db" --once
expect 1 "a second persist while one runs: status 1"
ok $([ "$ERR" = "kmctl: persist: segment '$RECSEG': another process is draining its usage events (a kmctl persist already running?): one persist per segment at a time" ]
    echo $?) "... saying another drains, not a stalled reader (got: $ERR)"
kill -0 "$P1" 2>/dev/null
ok $? "... while the first goes on draining"
kill -TERM "$P1"
wait "$P1"
ok $? "the first exits 0 on SIGTERM"
run "$KMCTL" persist "$RECSEG" --db "$TMP/p2.db" --once
expect 0 "once it has gone, persist drains again"

# ------------------------------------------------------------ budgets by period
cat >"$TMP/budget.json" <<EOF
{"pools": [{"name": "openai", "price": {"output_per_1k": 1},
            "budget": {"usd": 500, "period": "month", "mode": "soft", "tz": "+02:00"},
            "keys": [{"id": "a", "secret": "$SECRET_A", "budget": {"usd": 5, "period": "day"}},
                     {"id": "b", "secret": "$SECRET_B"}]}]}
EOF
run "$KMCTL" create "$BUDSEG" --config "$TMP/budget.json"
expect 0 "create with budgets by period"
run "$KMCTL" inspect "$BUDSEG"
echo "$OUT" | grep -Eq '^  budget: \$0\.00 spent of \$500\.00 this month \(resets [0-9]{4}-[0-9]{2}-01 00:00 \+02:00; previous month \$0\.00\) \(soft: .*0 warnings\)$'
ok $? "inspect: the pool's period, its end in its zone, the previous period, warnings"
echo "$OUT" | grep -Eq '^  a .* 0\.00/5\.00 per day$'
ok $? "inspect: a key's budget per day"
run "$KMCTL" stats "$BUDSEG" --json
echo "$OUT" | python3 -c '
import json, sys
p = json.load(sys.stdin)["pools"][0]
k = p["keys"][0]
assert (p["budget_period"], p["budget_tz"], p["budget_over"], p["budget_warnings"]) == ("month", "+02:00", False, 0), p
assert p["prev_spent_usd"] == 0 and p["period_end_unix_ms"] > 0
assert (k["budget_period"], k["budget_tz"]) == ("day", "UTC"), k
assert p["keys"][1]["budget_period"] is None and p["keys"][1]["period_end_unix_ms"] is None
'
ok $? "stats --json: budget_period, budget_tz, prev_spent_usd, period_end_unix_ms, warnings, over"
run "$KMCTL" metrics "$BUDSEG"
echo "$OUT" | grep -q '^keymesh_pool_budget_over{pool="openai"} 0$' &&
    echo "$OUT" | grep -q '^keymesh_pool_budget_warnings_total{pool="openai"} 0$' &&
    echo "$OUT" | grep -Eq '^keymesh_pool_budget_period_end_seconds\{pool="openai"\} [0-9]+$'
ok $? "metrics: the soft budget's over flag and warnings, the period's end"
run "$KMCTL" reset-spend "$BUDSEG" openai
expect 0 "reset-spend of a pool"
ok $([ "$OUT" = "reset spend of pool 'openai' of segment '$BUDSEG': \$0.00 -> \$0 (month budget \$500.00)" ]
    echo $?) "... says what changed (got: $OUT)"
run "$KMCTL" reset-spend "$BUDSEG" openai a
ok $([ "$RC" -eq 0 ] && [ "$OUT" = "reset spend of key 'a' in pool 'openai' of segment '$BUDSEG': \$0.00 -> \$0 (day budget \$5.00)" ]
    echo $?) "reset-spend of a key (got: $OUT)"
run "$KMCTL" reset-spend "$BUDSEG" openai nokey
expect 3 "reset-spend of an unknown key: status 3"
run "$KMCTL" reset-spend "$BUDSEG"
expect 2 "reset-spend without its POOL: usage error"
run "$KMCTL" reset-spend "$BUDSEG" nopool a
expect 3 "reset-spend in an unknown pool: status 3"
sed 's/"month"/"fortnight"/' "$TMP/budget.json" >"$TMP/bad.json"
run "$KMCTL" create "$BUDSEG-bad" --config "$TMP/bad.json"
ok $([ "$RC" -ne 0 ] && echo "$ERR" | grep -q 'budget.period: "fortnight" is not a period'; echo $?) \
    "create refuses a period that does not exist ($ERR)"
sed 's/"+02:00"/"Mars\/Olympus"/' "$TMP/budget.json" >"$TMP/bad.json"
run "$KMCTL" create "$BUDSEG-bad" --config "$TMP/bad.json"
ok $([ "$RC" -ne 0 ] && echo "$ERR" | grep -q 'budget.tz: time zone "Mars/Olympus": .*/Mars/Olympus: No such file' &&
     ! "$KMCTL" inspect "$BUDSEG-bad" >/dev/null 2>&1; echo $?) \
    "create refuses a zone that does not exist, naming the path; nothing created ($ERR)"
"$KMCTL" destroy "$BUDSEG" >/dev/null 2>&1
sed 's/"+02:00"/"Europe\/Paris"/' "$TMP/budget.json" >"$TMP/paris.json"
run "$KMCTL" create "$BUDSEG" --config "$TMP/paris.json"
expect 0 "create with a budget in a named zone (Europe/Paris)"
run "$KMCTL" inspect "$BUDSEG"
echo "$OUT" | grep -Eq '^  budget: \$0\.00 spent of \$500\.00 this month \(resets [0-9]{4}-[0-9]{2}-01 00:00 Europe/Paris; '
ok $? "inspect: the period ends at 00:00 on the 1st, Paris time, the zone named"
run "$KMCTL" stats "$BUDSEG" --json
echo "$OUT" | python3 -c '
import json, sys
p = json.load(sys.stdin)["pools"][0]
assert p["budget_tz"] == "Europe/Paris", p["budget_tz"]
assert p["keys"][0]["budget_tz"] == "UTC"
'
ok $? "stats --json: budget_tz is the zone's name"
run "$KMCTL" inspect "$BUDSEG" --json
echo "$OUT" | grep -q '"tz": "Europe/Paris"'
ok $? "inspect --json: the zone's name as configured"
"$KMCTL" destroy "$BUDSEG" >/dev/null 2>&1

finish
