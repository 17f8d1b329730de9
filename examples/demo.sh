#!/bin/sh
# examples/demo.sh - KeyMesh in a few seconds: one segment, four prefork
# workers, limits that demand exceeds.  Run by `make demo`; runnable by hand
# from any directory:  sh examples/demo.sh  (or /path/to/examples/demo.sh).
# The binaries come from $KM_BUILD if set (a build directory, relative to the
# current directory or absolute; `make demo` sets it), else from the build/
# directory beside this script's examples/.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
B=${KM_BUILD:-$HERE/../build}
KMCTL=$B/kmctl
DEMO=$B/examples/demo
CONFIG=$HERE/demo.json
SEG=keymesh-demo-$$
WORKERS=${DEMO_WORKERS:-4}
SECONDS_RUN=${DEMO_SECONDS:-4}

for f in "$KMCTL" "$DEMO"; do
    if [ ! -x "$f" ]; then
        echo "demo.sh: $f not built (run make demo in $(cd "$HERE/.." && pwd), or set KM_BUILD)" >&2
        exit 1
    fi
done

created=0
cleanup() {
    if [ "$created" = 1 ]; then
        "$KMCTL" destroy "$SEG" >/dev/null 2>&1 || true
        created=0
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

heading() {
    printf '\n== %s\n' "$1"
}

heading "1. Create segment '$SEG' from $CONFIG"
echo "   One shared-memory segment holds the pool 'openai': 4 keys, each limited"
echo "   to rpm 600 (burst 20) and tpm 240000 (burst 5000), cooldown_s 2."
"$KMCTL" create "$SEG" --config "$CONFIG"
created=1

heading "2. Before: every key active, nothing acquired, full buckets"
"$KMCTL" inspect "$SEG"

heading "3. Run: $WORKERS prefork workers for ${SECONDS_RUN} s, each as fast as it can"
echo "   Each worker attaches to the same segment and loops: acquire, 'call the"
echo "   provider' (sleep 2-6 ms), release with an outcome (~3% 429, ~2% 5xx)."
echo "   Demand (~1000 requests/s) is far above what 4 keys allow (~40/s)."
echo "   Look at: every worker used every key (keys shared); 'held' against each"
echo "   key's rpm bound (limits hold for all processes together, not per worker);"
echo "   KM_EAGAIN answers, where a worker slept until retry_at instead of"
echo "   sending a request that would have got a 429."
"$DEMO" "$SEG" "$WORKERS" "$SECONDS_RUN"

heading "4. After: counters per key, by outcome; cooldowns applied"
echo "   Keys that got a 429 cooled down (Retry-After 1 s); 3 consecutive 5xx"
echo "   would cool a key for cooldown_s, then let one probe lease through."
"$KMCTL" inspect "$SEG"

heading "5. Destroy the segment"
"$KMCTL" destroy "$SEG"
created=0
echo "   done."
