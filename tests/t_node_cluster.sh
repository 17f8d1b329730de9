#!/usr/bin/env bash
# tests/t_node_cluster.sh - the Node binding under `cluster`, end to end:
# t_gunicorn.sh's scenario with a Node primary and 4 workers
# (tests/node/cluster_app.mjs) in front of the same mock upstream
# (tests/e2e/upstream.py: per-key rpm in any 60 s window, 429 with
# Retry-After beyond), and the same assertions (tests/e2e/e2e.sh).  The
# primary creates the segment and removes it when it stops.  Load comes from
# curl (--parallel).  TAP output (plan at the end).  Binaries from
# ${KM_BUILD:-build}.
#
# Pool "llm": 4 keys whose limit matches the upstream's exactly (sliding,
# rpm RPM, burst RPM).  The test lasts far less than 60 s, so "zero 429"
# means the pool never handed out a key more than RPM times, over the 4
# processes together.
#   phase 1: 2*RPM requests through acquire()/release() by hand: round robin
#            spreads them evenly (each worker's cursor gives every key its
#            share within 1: any two keys within W);
#   phase 2: 2*RPM + EXTRA requests through keymeshFetch: each key reaches
#            exactly RPM at the upstream, never RPM + 1; the EXTRA ones get
#            503 (no key within the 300 ms acquire timeout, waited for in the
#            workers' waiter threads).
# Pool "loose" (the negative control): keys configured at twice the
# upstream's rpm draw 429s, which are reported and cool the keys.
# Then examples/node-cluster.mjs is run as README says, against the mock.
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/e2e/e2e.sh
. "$(dirname "$0")/e2e/e2e.sh"

begin node-cluster
e2e_need node curl "$PY"
e2e_setup
on_cleanup() { e2e_cleanup; }
if [ ! -e "$B/node/keymesh.node" ]; then
    echo "Bail out! $B/node/keymesh.node not built (make needs Node's headers: make deps-test)"
    exit 1
fi
export KM_BUILD="$B"
unset KEYMESH_NODE_ADDON

# start_node_cluster CONFIG: tests/node/cluster_app.mjs, $KMT_WORKERS (4)
# workers; its primary creates $SEG.  Sets NC_PID, NC_PORT; log in
# $TMP/cluster.log.
start_node_cluster() {
    export KMT_SEG="$SEG" KMT_CONFIG="$1" KMT_UPSTREAM="$UP_PORT"
    export KMT_WORKERS=${KMT_WORKERS:-4} KMT_HOLD_FILE="$TMP/hold.pid"
    bg_start NC_PID "${SANENV[@]}" node "$REPO/tests/node/cluster_app.mjs" 2>"$TMP/cluster.log"
    local i
    NC_PORT=
    for i in $(seq 200); do
        NC_PORT=$(sed -n 's/^primary [0-9]* listening on \([0-9]*\)$/\1/p' "$TMP/cluster.log")
        [ -n "$NC_PORT" ] && [ "$(grep -c '^worker [0-9]* ready' "$TMP/cluster.log")" -ge "$KMT_WORKERS" ] && break
        sleep 0.05
    done
    if [ -z "$NC_PORT" ]; then
        echo "Bail out! the Node cluster did not start: $(tail -n 20 "$TMP/cluster.log")"
        exit 1
    fi
}

e2e_pool node
start_upstream "$RPM"
KMT_WORKERS=$W start_node_cluster "$TMP/pool.json"
URL="http://127.0.0.1:$NC_PORT"
diag "upstream on port $UP_PORT, Node cluster on port $NC_PORT (primary $NC_PID)"

"$KMCTL" inspect "$SEG" >/dev/null 2>&1
ok $? "the cluster's primary created segment $SEG"

# ------------------------------------------------------------ phase 1
load "$URL/call?pool=llm" $((2 * RPM)) 8 "$TMP/p1"
n200=$(count 200 "$TMP/p1")
ok $([ "$n200" -eq $((2 * RPM)) ]; echo $?) "phase 1: all $((2 * RPM)) requests answered 200 (got $n200)"
[ "$n200" -eq $((2 * RPM)) ] || diag "statuses: $(cut -d' ' -f1 "$TMP/p1" | sort | uniq -c | tr '\n' ' ')" \
    "$(tail -n 5 "$TMP/cluster.log")"
npids=$(awk '$1 == 200 { print $2 }' "$TMP/p1" | sort -u | wc -l)
ok $([ "$npids" -eq $W ]; echo $?) "phase 1: all $W workers served requests (got $npids)"
check_spread

# ------------------------------------------------------------ phase 2
check_capacity "$URL/call?pool=llm&api=fetch"

# ---------------------------------------------- negative control: "loose"
check_control "$URL/call?pool=loose"

# ------------------------------------------------------------ the end
EXPECT_SHOWS_STDOUT=1 # kmctl check's violations are on stdout
check_end
EXPECT_SHOWS_STDOUT=0
no_secret "$(cat "$TMP/cluster.log" "$TMP/p1" "$TMP/p2" "$TMP/p3" "$TMP/snap.json")"
ok $? "no secret in the cluster's log, the responses or the snapshot"

t0=$(date +%s%N)
stop_pid "$NC_PID"
t1=$(date +%s%N)
grep -q 'primary stopped, segment removed' "$TMP/cluster.log"
ok $? "the cluster stopped (in $(((t1 - t0) / 1000000)) ms of stop_pid's 10 s)"
grep -q 'primary stopped, segment removed' "$TMP/cluster.log" ||
    { diag "the cluster's last lines:"; tail -n 12 "$TMP/cluster.log" | sed 's/^/#   /'; }
run "$KMCTL" inspect "$SEG"
expect 3 "the primary removed the segment when it stopped"

# ------------------------------------------- examples/node-cluster.mjs
# As README says: a segment from a config, 2 workers, an OpenAI-compatible
# upstream (the mock), requests through keymeshFetch.
new_seg XSEG example
cat >"$TMP/example.json" <<EOF
{"pools": [{"name": "openai", "limits": {"rpm": 20},
            "keys": [{"id": "e1", "secret": "sk-test-example-7777"}, {"id": "e2", "secret": "sk-test-example-8888"}]}]}
EOF
SECRETS+=(sk-test-example-7777 sk-test-example-8888)
XPORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
bg_start EX_PID env KEYMESH_SEGMENT="$XSEG" KEYMESH_CONFIG="$TMP/example.json" WORKERS=2 PORT="$XPORT" \
    UPSTREAM_URL="http://127.0.0.1:$UP_PORT/v1" "${SANENV[@]}" node "$REPO/examples/node-cluster.mjs" 2>"$TMP/example.log"
for _ in $(seq 100); do grep -q 'listening on' "$TMP/example.log" && break; sleep 0.05; done
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$XPORT/chat?q=hi" && break; sleep 0.05; done
before=$(per_key "sk-test-example-7777 sk-test-example-8888")
for i in $(seq 20); do curl -s "http://127.0.0.1:$XPORT/chat?q=hi$i"; echo; done >"$TMP/example.out"
after=$(per_key "sk-test-example-7777 sk-test-example-8888")
nans=$(grep -c '"answer":"ok"' "$TMP/example.out")
ok $([ "$nans" = 20 ]; echo $?) "examples/node-cluster.mjs: 20 answers through keymeshFetch ($nans; upstream per key $before -> $after)"
[ "$nans" = 20 ] || diag "$(head -n 3 "$TMP/example.out")" "$(tail -n 5 "$TMP/example.log")"
read -r b1 b2 <<<"$before"
read -r a1 a2 <<<"$after"
d1=$((a1 - b1))
d2=$((a2 - b2))
# Each worker alternates the 2 keys: with 2 workers, within 2 of even.
ok $([ $((d1 + d2)) = 20 ] && [ $((d1 - d2)) -le 2 ] && [ $((d2 - d1)) -le 2 ]; echo $?) \
    "examples/node-cluster.mjs: the upstream saw the 20 on both keys, round robin ($d1 and $d2)"
stop_pid "$EX_PID"
run "$KMCTL" inspect "$XSEG"
expect 3 "examples/node-cluster.mjs: its primary removed the segment it created"
no_secret "$(cat "$TMP/example.log" "$TMP/example.out")"
ok $? "no secret in the example's log or answers"
no_sanitizer_report
finish
