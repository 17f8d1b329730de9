#!/usr/bin/env bash
# tests/t_top.sh - kmctl top under tmux (a private server: new-session,
# send-keys, capture-pane): the header, pool totals and key rows, request
# rates against the load forked workers put through (tests/helpers/loadgen.c),
# limit bars, pool switching, sorting, a 20x10 terminal (from the start and
# after a resize), the segment vanishing and coming back, and `q` quitting
# with status 0; outside a terminal it refuses with a clear line.  TAP
# output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

LOADGEN="$B/tests/helpers/loadgen"
begin top "$LOADGEN"
command -v tmux >/dev/null || { echo "Bail out! tmux not installed (make deps)"; exit 1; }

SOCK="kmt-top-$$"
LOADPID=
on_cleanup() {
    [ -z "$LOADPID" ] || kill "$LOADPID" 2>/dev/null
    tmux -L "$SOCK" kill-server 2>/dev/null
}
tm() { tmux -L "$SOCK" "$@"; }
screen_of() { tm capture-pane -p -t "$1"; }
# wait_for SESSION REGEX: up to 5 s until the screen matches
wait_for() {
    for _ in $(seq 50); do
        screen_of "$1" | grep -Eq "$2" && return 0
        sleep 0.1
    done
    return 1
}
# start SESSION COLS ROWS ARGS...: kmctl top in a new tmux session; its
# exit status goes to $TMP/rc.SESSION
start() {
    local s=$1 x=$2 y=$3
    shift 3
    tm new-session -d -s "$s" -x "$x" -y "$y" \
        "$(printf '%q ' "$KMCTL" top "$@"); echo \$? >$TMP/rc.$s; sleep 30"
}

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 8, "processes": 16},
 "pools": [{"name": "alpha", "strategy": "round_robin",
            "limits": {"rpm": 100000, "tpm": {"limit": 10000000, "mode": "sliding", "burst": 1000000}},
            "keys": [{"id": "a1", "secret": "sk-test-top-aaaa1111"},
                     {"id": "a2", "secret": "sk-test-top-aaaa2222"}]},
           {"name": "beta", "keys": [{"id": "b1", "secret": "sk-test-top-bbbb1111"}]}]}
EOF

run "$KMCTL" top --help
ok $([ "$RC" -eq 0 ] && echo "$OUT" | grep -q '^Usage: kmctl top NAME'; echo $?) "top --help"
run "$KMCTL" top "$SEG"
expect 1 "top outside a terminal: status 1"
echo "$ERR" | grep -q '^kmctl: top: standard input and output must be a terminal'
ok $? "top outside a terminal: clear message"
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"

# Load: 2 workers x 20 op/s for 30 s on pool alpha (round robin: about
# 20 req/s on each key), 50 tokens each.
"$LOADGEN" "$SEG" alpha 2 20 30 "$TMP/load" 50 >/dev/null 2>&1 &
LOADPID=$!

start main 100 24 "$SEG"
wait_for main "^$SEG  pool alpha \(1/2\)"
ok $? "header: segment and pool alpha (1 of 2)"
wait_for main '^KEY +STATE +INFL +REQ/S +TOK/S +COOL_MS +RPM +TPM'
ok $? "column titles with a bar per limit window (RPM, TPM)"
# After two readings the rates show; look at a few screens.
sleep 2.5
S=$(screen_of main)
r1=$(echo "$S" | awk '$1 == "a1" {print $4}')
t1=$(echo "$S" | awk '$1 == "a1" {print $5}')
ok $(awk -v r="$r1" 'BEGIN {exit !(r >= 12 && r <= 28)}'; echo $?) "a1: REQ/S $r1 (workers put ~20/s on it)"
ok $(awk -v r="$r1" -v t="$t1" 'BEGIN {exit !(t >= 40 * r && t <= 60 * r)}'; echo $?) "a1: TOK/S $t1 = 50 tokens x REQ/S"
echo "$S" | grep -Eq '^a2 +active +[0-9]+/64 '
ok $? "a2: state and in-flight"
echo "$S" | grep -Eq '^keys 2: 2 active +infl [0-9]+/128 +req/s [0-9.]+ '
ok $? "pool totals: keys by state, in flight, req/s"
echo "$S" | grep -Eq '^a1 .* [#.]+ +[0-9]+% +[#.]+ +[0-9]+%$'
ok $? "limit use as bars with a percentage"
echo "$S" | grep -q '^q quit  TAB pool  s sort:KEY'
ok $? "the footer names the keys"
no_secret "$S"
ok $? "no secret on the screen"

tm send-keys -t main Tab
wait_for main "^$SEG  pool beta \(2/2\)" && wait_for main '^b1 +active'
ok $? "TAB: pool beta and its key"
tm send-keys -t main Left
wait_for main "^$SEG  pool alpha \(1/2\)"
ok $? "left arrow: back to pool alpha"
tm send-keys -t main s
wait_for main '^KEY +STATEv '
ok $? "s: sorted by STATE (marked)"
tm send-keys -t main s s
wait_for main 'REQ/Sv' && wait_for main 's sort:REQ/S'
ok $? "s s: sorted by REQ/S"

# 20x10: after a resize, and from the start.
tm resize-window -t main -x 20 -y 10
sleep 1.5
S=$(screen_of main)
ok $([ "$(echo "$S" | wc -l)" -le 10 ] && [ "$(echo "$S" | awk '{ if (length($0) > m) m = length($0) } END {print m}')" -le 20 ]; echo $?) \
    "20x10 after a resize: the screen fits"
echo "$S" | grep -Eq '^a1 +active' && echo "$S" | grep -Eq '^a2 +active'
ok $? "20x10: each key's id and state still shown"
start small 20 10 "$SEG" --pool beta
wait_for small '^b1 +active'
ok $? "20x10 from the start, --pool beta: key b1 shown"
tm send-keys -t small q
for _ in $(seq 50); do [ -s "$TMP/rc.small" ] && break; sleep 0.1; done
ok $([ "$(cat "$TMP/rc.small" 2>/dev/null)" = 0 ]; echo $?) "q quits with status 0 (20x10)"

# The segment vanishes and comes back.
tm resize-window -t main -x 100 -y 24
kill "$LOADPID" 2>/dev/null
wait "$LOADPID" 2>/dev/null
LOADPID=
run "$KMCTL" destroy "$SEG"
wait_for main "segment '$SEG': no segment of that name"
ok $? "segment destroyed: top says so"
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
wait_for main '^a1 +active +0/64 '
ok $? "segment back: top shows it again"
tm send-keys -t main q
for _ in $(seq 50); do [ -s "$TMP/rc.main" ] && break; sleep 0.1; done
ok $([ "$(cat "$TMP/rc.main" 2>/dev/null)" = 0 ]; echo $?) "q quits with status 0"

run "$KMCTL" top "$SEG" --pool nope </dev/null
expect 1 "not a terminal is checked first"
tm new-session -d -s badpool -x 80 -y 24 "$(printf '%q ' "$KMCTL" top "$SEG" --pool nope) 2>$TMP/err.badpool; echo \$? >$TMP/rc.badpool; sleep 30"
for _ in $(seq 50); do [ -s "$TMP/rc.badpool" ] && break; sleep 0.1; done
ok $([ "$(cat "$TMP/rc.badpool" 2>/dev/null)" = 3 ] && grep -q "^kmctl: top: pool 'nope': no pool of that name" "$TMP/err.badpool"; echo $?) \
    "--pool nope: status 3 and a clear line"

finish
