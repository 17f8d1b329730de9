# tests/e2e/e2e.sh - helpers of the end-to-end tests (t_py*.sh, t_gunicorn*.sh,
# t_nginx*.sh).  Sourced after tests/lib.sh and `begin`:
#
#   e2e_setup              $PY, $LIBKM, PYTHONPATH, KEYMESH_LIBRARY; SANENV
#                          (LD_PRELOAD etc. when libkeymesh is a sanitizer build)
#   e2e_need CMD...        bail out unless every command exists (make deps)
#   e2e_pool TAG           the scenario the server tests share: RPM, EXTRA, W,
#                          SECRETS (sk-test-TAG-...), LLM_KEYS, LOOSE_KEYS and
#                          $TMP/pool.json (pool "llm" at RPM, "loose" at 2 RPM)
#   start_upstream RPM     mock upstream (tests/e2e/upstream.py): UP_PID, UP_PORT
#   bg_start VAR CMD...    start CMD in the background, its pid in VAR, killed at exit
#   wait_file FILE [S]     wait up to S (10) seconds for FILE to exist
#   load URL N PAR OUT     N requests by curl, PAR at once; "STATUS PID KEY_ID"
#                          a line in OUT (X-Worker-Pid and X-Key-Id headers)
#   count CODE FILE        how many lines of FILE are CODE
#   snap EXPR              evaluate a Python expression over the segment's
#                          snapshot (kmctl inspect --json) bound to `s`
#   upstats EXPR           the same over the upstream's /stats bound to `u`
#   no_sanitizer_report    ok unless a sanitizer wrote a report under $TMP
# shellcheck shell=bash

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
PY=/usr/bin/python3
E2E_PIDS=()
SANENV=(env)

e2e_need() {
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "$c" ]; then
            echo "Bail out! $c not installed (run make deps)"
            exit 1
        fi
    done
}

e2e_setup() {
    case "$B" in /*) ;; *) B="$REPO/$B" ;; esac
    KMCTL="$B/kmctl"
    LIBKM="$B/libkeymesh.so.0"
    if [ ! -e "$LIBKM" ]; then
        echo "Bail out! $LIBKM not built (run make first)"
        exit 1
    fi
    export KEYMESH_LIBRARY="$LIBKM"
    export PYTHONPATH="$REPO/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
    # A library built with -fsanitize=address needs the ASan runtime loaded
    # first in any program that dlopen()s it (python3, nginx): preload it,
    # keep going on leaks (the interpreters' own are not ours) and write any
    # report under $TMP, where no_sanitizer_report looks.
    if ldd "$LIBKM" 2>/dev/null | grep -q 'libasan'; then
        local pre
        pre=$(gcc -print-file-name=libasan.so)
        if ldd "$LIBKM" | grep -q 'libubsan'; then
            pre="$pre $(gcc -print-file-name=libubsan.so)"
        fi
        SANENV=(env "LD_PRELOAD=$pre"
            "ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$TMP/asan-report"
            "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$TMP/ubsan-report")
        diag "libkeymesh is a sanitizer build: preloading $pre"
    fi
}

e2e_cleanup() {
    local p
    for p in ${E2E_PIDS[@]+"${E2E_PIDS[@]}"}; do
        kill -TERM "$p" 2>/dev/null
    done
    for p in ${E2E_PIDS[@]+"${E2E_PIDS[@]}"}; do
        for _ in $(seq 50); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    E2E_PIDS=()
}

bg_start() { # bg_start VAR CMD...
    local var=$1
    shift
    "$@" &
    printf -v "$var" '%s' "$!"
    E2E_PIDS+=("$!")
}

wait_file() { # wait_file FILE [SECONDS]
    local i
    for i in $(seq $((${2:-10} * 20))); do
        [ -s "$1" ] && return 0
        sleep 0.05
    done
    return 1
}

e2e_pool() { # e2e_pool TAG
    local t=$1
    RPM=100
    EXTRA=40
    W=4
    SECRETS=(sk-test-$t-aaaa1111 sk-test-$t-bbbb2222 sk-test-$t-cccc3333 sk-test-$t-dddd4444
        sk-test-$t-eeee5555 sk-test-$t-ffff6666)
    LLM_KEYS="${SECRETS[*]:0:4}"
    LOOSE_KEYS="${SECRETS[*]:4:2}"
    cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 12, "processes": 16},
 "pools": [{"name": "llm", "strategy": "round_robin",
            "limits": {"rpm": {"limit": $RPM, "mode": "sliding", "burst": $RPM}},
            "keys": [{"id": "k1", "secret": "${SECRETS[0]}"}, {"id": "k2", "secret": "${SECRETS[1]}"},
                     {"id": "k3", "secret": "${SECRETS[2]}"}, {"id": "k4", "secret": "${SECRETS[3]}"}]},
           {"name": "loose", "strategy": "round_robin",
            "limits": {"rpm": $((2 * RPM))},
            "keys": [{"id": "x1", "secret": "${SECRETS[4]}"}, {"id": "x2", "secret": "${SECRETS[5]}"}]}]}
EOF
}

start_upstream() { # start_upstream RPM
    bg_start UP_PID "$PY" "$E2E_DIR/upstream.py" --rpm "$1" --port-file "$TMP/upstream.port" \
        2>"$TMP/upstream.err"
    if ! wait_file "$TMP/upstream.port"; then
        echo "Bail out! mock upstream did not start: $(cat "$TMP/upstream.err")"
        exit 1
    fi
    UP_PORT=$(cat "$TMP/upstream.port")
}

load() { # load URL N PAR OUT
    local i
    : >"$TMP/curl.cfg"
    for i in $(seq "$2"); do
        printf 'url = "%s"\noutput = "/dev/null"\n' "$1" >>"$TMP/curl.cfg"
    done
    curl -s --parallel --parallel-immediate --parallel-max "$3" -K "$TMP/curl.cfg" \
        -w "%{http_code} %header{x-worker-pid} %header{x-key-id}\n" >"$4" 2>>"$TMP/curl.err"
}

count() { grep -c "^$1 " "$2"; }

snap() { # snap EXPR: over kmctl inspect --json (s); pools by name: P["llm"]
    "$KMCTL" inspect "$SEG" --json >"$TMP/snap.json" || return 1
    "$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
P = {p["name"]: p for p in s["pools"]}
K = lambda pool: P[pool]["keys"]
print(eval(sys.argv[2]))' "$TMP/snap.json" "$1"
}

upstats() { # upstats EXPR: over the upstream's /stats (u)
    curl -s "http://127.0.0.1:$UP_PORT/stats" >"$TMP/stats.json" || return 1
    "$PY" -c '
import json, sys
u = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$TMP/stats.json" "$1"
}

# per_key KEYS: the upstream's 200 count of each secret, in order; n429
# KEYS: its 429 count over these secrets (keys known by their last 4
# characters).
per_key() { upstats '" ".join(str(u["keys"].get("…" + s[-4:], {}).get("ok", 0)) for s in "'"$1"'".split())'; }
n429() { upstats 'sum(v["429"] for k, v in u["keys"].items() if k[-4:] in "'"$1"'")'; }

# The assertions the gunicorn and nginx scenarios share.  They read RPM,
# EXTRA, W, LLM_KEYS, LOOSE_KEYS, TMP and SEG from the test.

check_spread() { # after phase 1 (2 * RPM requests): the upstream's view
    local spread a b c d min max acq
    spread=$(per_key "$LLM_KEYS")
    read -r a b c d <<<"$spread"
    min=$(printf '%s\n' "$a" "$b" "$c" "$d" | sort -n | head -n1)
    max=$(printf '%s\n' "$a" "$b" "$c" "$d" | sort -n | tail -n1)
    ok $([ $((a + b + c + d)) -eq $((2 * RPM)) ]; echo $?) "phase 1: the upstream saw $((2 * RPM)) requests on the 4 keys ($spread)"
    ok $([ $((max - min)) -le $W ]; echo $?) "phase 1: even spread, max - min = $((max - min)) <= $W (keys: $spread)"
    acq=$(snap '" ".join(str(k["counters"]["acquired"]) for k in K("llm"))')
    ok $([ "$acq" = "$spread" ]; echo $?) "phase 1: KeyMesh's acquired counters equal the upstream's ($acq)"
}

check_capacity() { # check_capacity URL: phase 2, demand above the pool's limits
    local n200 n503 c429 up429 full
    load "$1" $((2 * RPM + EXTRA)) 8 "$TMP/p2"
    n200=$(count 200 "$TMP/p2")
    n503=$(count 503 "$TMP/p2")
    c429=$(count 429 "$TMP/p2")
    ok $([ "$n200" -eq $((2 * RPM)) ] && [ "$n503" -eq "$EXTRA" ]; echo $?) \
        "phase 2: $((2 * RPM)) answered 200 and $EXTRA got 503 (no key) (got $n200 and $n503)"
    up429=$(n429 "$LLM_KEYS")
    ok $([ "$up429" -eq 0 ] && [ "$c429" -eq 0 ]; echo $?) "zero 429s from the upstream on pool llm (upstream $up429, clients $c429)"
    full=$(per_key "$LLM_KEYS")
    ok $([ "$full" = "$RPM $RPM $RPM $RPM" ]; echo $?) "phase 2: each key reached exactly its limit, $RPM (got $full)"
}

check_control() { # check_control URL: pool "loose" has limits above the upstream's
    local l429 lup429 krl st
    load "$1" $((2 * RPM + EXTRA)) 8 "$TMP/p3"
    l429=$(count 429 "$TMP/p3")
    lup429=$(n429 "$LOOSE_KEYS")
    ok $([ "$lup429" -ge 1 ] && [ "$l429" -eq "$lup429" ]; echo $?) \
        "control: limits above the upstream's draw 429s ($lup429 at the upstream, $l429 seen by clients)"
    krl=$(snap 'sum(k["counters"]["rate_limited"] for k in K("loose"))')
    ok $([ "$krl" -eq "$lup429" ]; echo $?) "control: every 429 reported to KeyMesh as rate_limited ($krl)"
    st=$(snap '" ".join(k["state"] for k in K("loose"))')
    ok $([ "$st" = "cooling cooling" ]; echo $?) "control: the 429'd keys cool down (Retry-After) (states: $st)"
}

check_end() { # nothing left out, every lease released once, check clean
    local infl cons
    infl=$(snap 'sum(k["inflight"] for p in s["pools"] for k in p["keys"])')
    ok $([ "$infl" = 0 ]; echo $?) "in-flight 0 at the end (got $infl)"
    cons=$(snap 'all(k["counters"]["acquired"] == sum(k["counters"][c] for c in ("success", "rate_limited", "failure", "auth", "quota", "cancelled", "abandoned")) for p in s["pools"] for k in p["keys"])')
    ok $([ "$cons" = True ]; echo $?) "every lease acquired was released once (acquired = sum of outcomes)"
    run "$KMCTL" check "$SEG"
    expect 0 "kmctl check: no violation"
}

no_sanitizer_report() {
    local f
    f=$(ls "$TMP"/asan-report* "$TMP"/ubsan-report* 2>/dev/null | head -n 1)
    if [ -n "$f" ]; then
        ok 1 "no sanitizer report"
        diag "$(head -n 30 "$f")"
    else
        ok 0 "no sanitizer report"
    fi
}

# start_gunicorn CONFIG_JSON: gunicorn (Debian's) with tests/e2e/app.py and
# gunicorn_conf.py, $KMT_WORKERS (4) sync workers; its master creates $SEG.
# Sets GU_PID, GU_PORT; log in $TMP/gunicorn.log.
start_gunicorn() {
    export KMT_SEG="$SEG" KMT_CONFIG="$1" KMT_UPSTREAM="$UP_PORT"
    export KMT_WORKERS=${KMT_WORKERS:-4} KMT_HOLD_FILE="$TMP/hold.pid"
    bg_start GU_PID "${SANENV[@]}" /usr/bin/gunicorn -c "$E2E_DIR/gunicorn_conf.py" \
        --chdir "$E2E_DIR" app:app 2>"$TMP/gunicorn.log"
    local i
    GU_PORT=
    for i in $(seq 200); do
        GU_PORT=$(sed -n 's|.*Listening at: http://127.0.0.1:\([0-9]*\).*|\1|p' "$TMP/gunicorn.log")
        [ -n "$GU_PORT" ] && [ "$(grep -c 'Booting worker' "$TMP/gunicorn.log")" -ge "$KMT_WORKERS" ] &&
            break
        sleep 0.05
    done
    if [ -z "$GU_PORT" ]; then
        echo "Bail out! gunicorn did not start: $(tail -n 20 "$TMP/gunicorn.log")"
        exit 1
    fi
}

stop_pid() { # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
