#!/usr/bin/env bash
# tests/t_ls.sh - kmctl ls and kmctl presets.
#
# ls: a segment made here is listed with its size, mode, owner, format and
# processes (a dead one counted as attached, not alive); the temporaries of
# a creation whose creator died and of one whose creator runs; another
# program's object; an empty object; a directory and a FIFO (listed, never
# opened: a FIFO would block); objects another user may not read, listed
# with what is known.  ls touches nothing: the segment's bytes are the same
# before and after (sha256), it takes no process slot (it works on a full
# table, and ps then shows the holder alone), it reaps nothing (the dead
# process stays).  --json parses and has kmctl's one shape.  kmctl metrics
# counts the processes ls counts (not itself: it attaches read-only).
# presets: the table of the compiled-in presets (limits, source, date
# read), one PROVIDER, --json, KEYMESH_PRESETS, an unknown provider (a
# usage error naming the known ones), a malformed file.
# TAP output (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

HOLD="$B/tests/helpers/hold"
PY=/usr/bin/python3
begin ls "$HOLD"
new_seg FULL ls-full

FOREIGN="kmt-ls-foreign-$$"
EMPTY="kmt-ls-empty-$$"
DIR="kmt-ls-dir-$$"
FIFO="kmt-ls-fifo-$$"
HOLD_PID=
SLEEP_PID=
DEAD_TMP=
LIVE_TMP=
on_cleanup() {
    local p
    for p in $HOLD_PID $SLEEP_PID; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null # (bash reports the kill on stderr otherwise)
    done
    rm -f "/dev/shm/$FOREIGN" "/dev/shm/$EMPTY" "/dev/shm/$FIFO"
    [ -z "$DEAD_TMP" ] || rm -f "/dev/shm/$DEAD_TMP"
    [ -z "$LIVE_TMP" ] || rm -f "/dev/shm/$LIVE_TMP"
    rmdir "/dev/shm/$DIR" 2>/dev/null
}
FMT=$("$KMCTL" -V | sed -n 's/.*segment format \([0-9]*\)).*/\1/p')

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 4, "processes": 4},
 "pools": [{"name": "p", "keys": [{"id": "a", "secret": "sk-test-ls-aaaa1111"},
                                 {"id": "b", "secret": "sk-test-ls-bbbb2222"}]},
           {"name": "q", "keys": [{"id": "c", "secret": "sk-test-ls-cccc3333"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/pool.json" --mode 0640
expect 0 "create a segment to list (mode 0640)"
sed 's/"processes": 4/"processes": 1/' "$TMP/pool.json" >"$TMP/full.json"
run "$KMCTL" create "$FULL" --config "$TMP/full.json"
expect 0 "create a segment of one process slot"

head -c 4096 /dev/urandom >"/dev/shm/$FOREIGN"
: >"/dev/shm/$EMPTY"
mkdir "/dev/shm/$DIR"
mkfifo "/dev/shm/$FIFO"
# The temporary of a creation whose creator died: a child that exited.
sh -c 'exit 0' &
dead=$!
wait "$dead"
DEAD_TMP=".kmtmp.$dead.12345.0.$SEG-t"
cp "/dev/shm/$SEG" "/dev/shm/$DEAD_TMP"
# ... and of one whose creator runs (its pid and start time, as the library
# names them: field 22 of /proc/PID/stat).
sleep 300 &
SLEEP_PID=$!
start=$(sed 's/.*) //' "/proc/$SLEEP_PID/stat" | cut -d' ' -f20)
LIVE_TMP=".kmtmp.$SLEEP_PID.$start.1.$SEG-u"
head -c 4096 /dev/zero >"/dev/shm/$LIVE_TMP"

# A process that holds a lease, then dies without detaching: attached, not
# alive.  And one that fills the table of $FULL.
"$HOLD" "$SEG" p 1 >"$TMP/hold" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q held "$TMP/hold" 2>/dev/null && break; sleep 0.05; done
kill -KILL "$pid"
wait "$pid" 2>/dev/null
"$HOLD" "$FULL" p 1 >"$TMP/hold2" 2>&1 &
HOLD_PID=$!
for _ in $(seq 100); do grep -q held "$TMP/hold2" 2>/dev/null && break; sleep 0.05; done

sum() { sha256sum "/dev/shm/$1" | cut -d' ' -f1; }
before=$(sum "$SEG")
before_full=$(sum "$FULL")

# ---------------------------------------------------------------- the table
run timeout 20 "$KMCTL" ls
expect 0 "ls (a FIFO in /dev/shm does not make it block)"
echo "$OUT" >"$TMP/ls.txt"
# row NAME: the table's row of NAME, its cells separated by single spaces
row() { awk -v n="$1" '$1 == n' "$TMP/ls.txt" | tr -s ' '; }
ok $([ "$(head -1 "$TMP/ls.txt" | tr -s ' ')" = "NAME KIND BYTES OWNER GROUP MODE PROCS ALIVE FORMAT NOTE" ]; echo $?) \
    "ls: the titles ($(head -1 "$TMP/ls.txt" | tr -s ' '))"
size=$(stat -c %s "/dev/shm/$SEG")
me=$(id -un)
grp=$(id -gn)
ok $([ "$(row "$SEG")" = "$SEG keymesh $size $me $grp 0640 1 0 $FMT 2 pools, 3/4 keys; 1 dead process (kmctl reap $SEG)" ]; echo $?) \
    "ls: the segment: kind, size, owner, mode 0640, 1 process attached none alive, format $FMT ($(row "$SEG"))"
ok $([ "$(row "$FULL" | cut -d' ' -f2,7,8)" = "keymesh 1 1" ]; echo $?) \
    "ls: a full process table: its holder, alive ($(row "$FULL"))"
ok $([ "$(row "$DEAD_TMP" | cut -d' ' -f2,3)" = "temporary $size" ] &&
     row "$DEAD_TMP" | grep -q "creation of '$SEG-t' by pid $dead, which died (kmctl reap $SEG-t)"; echo $?) \
    "ls: the temporary of a dead creation ($(row "$DEAD_TMP"))"
ok $([ "$(row "$LIVE_TMP" | cut -d' ' -f2,3)" = "temporary 4096" ] &&
     row "$LIVE_TMP" | grep -q "creation of '$SEG-u' by pid $SLEEP_PID, running"; echo $?) \
    "ls: the temporary of a creation still running ($(row "$LIVE_TMP"))"
ok $([ "$(row "$FOREIGN" | cut -d' ' -f2,3,7,8,9)" = "foreign 4096 - - -" ]; echo $?) \
    "ls: another program's object ($(row "$FOREIGN"))"
ok $([ "$(row "$EMPTY" | cut -d' ' -f2,3)" = "empty 0" ]; echo $?) "ls: an empty object ($(row "$EMPTY"))"
ok $([ "$(row "$DIR" | cut -d' ' -f2)" = foreign ] && row "$DIR" | grep -q "a directory" &&
     [ "$(row "$FIFO" | cut -d' ' -f2)" = foreign ] && row "$FIFO" | grep -q "a fifo"; echo $?) \
    "ls: a directory and a FIFO, listed ($(row "$DIR" | cut -d' ' -f2-); $(row "$FIFO" | cut -d' ' -f2-))"

# ---------------------------------------------------------- touches nothing
ok $([ "$(sum "$SEG")" = "$before" ] && [ "$(sum "$FULL")" = "$before_full" ]; echo $?) \
    "ls changed no byte of either segment (sha256 before and after)"
run "$KMCTL" ps "$SEG" --json
ok $("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(not (len(d["processes"]) == 1 and not d["processes"][0]["alive"]))' "$OUT"; echo $?) \
    "ls reaped nothing: the dead process is still in the table"
run "$KMCTL" ps "$FULL" --json
ok $("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(not ([p["pid"] for p in d["processes"]] == [int(sys.argv[2])]))' "$OUT" "$HOLD_PID"; echo $?) \
    "ls took no process slot: the holder alone in the table"

# metrics counts what ls counts: the holder, or the dead process not yet
# reaped; the exporter itself attaches read-only (its HELP says so).
run "$KMCTL" metrics "$FULL"
m_full=$(echo "$OUT" | sed -n 's/^keymesh_segment_processes_attached //p')
help=$(echo "$OUT" | grep '^# HELP keymesh_segment_processes_attached ')
run "$KMCTL" metrics "$SEG"
m_seg=$(echo "$OUT" | sed -n 's/^keymesh_segment_processes_attached //p')
ok $([ "$m_full" = 1 ] && [ "$m_seg" = 1 ] && [ "$(row "$FULL" | cut -d' ' -f7)" = 1 ] &&
     echo "$help" | grep -q "not yet reaped (the exporter attaches read-only and is not one of them)"; echo $?) \
    "metrics: keymesh_segment_processes_attached as ls's PROCS ($m_full, $m_seg), the exporter not counted ($help)"

# --------------------------------------------------------------------- JSON
run "$KMCTL" ls --json
expect 0 "ls --json"
echo "$OUT" >"$TMP/ls.json"
"$PY" - "$TMP/ls.json" "$SEG" "$FULL" "$DEAD_TMP" "$LIVE_TMP" "$FOREIGN" "$EMPTY" "$DIR" "$FIFO" \
    "$size" "$FMT" "$(id -u)" "$me" "$dead" >"$TMP/checks" <<'PYEOF'
import json, sys
path, seg, full, dtmp, ltmp, foreign, empty, dr, fifo, size, fmt, uid, user, dead = sys.argv[1:15]
def ok(c, name):
    print(0 if c else 1, name)
try:
    d = json.load(open(path))
except Exception as e:
    ok(False, "ls --json: not JSON (%s)" % e)
    sys.exit(0)
ok(list(d)[:2] == ["json_schema", "kind"] and d["json_schema"] == 1 and d["kind"] == "ls"
   and "segment" not in d, "ls --json: begins json_schema 1, kind ls; no segment (%s)" % list(d)[:3])
o = {x["name"]: x for x in d["objects"]}
ok(all(n in o for n in (seg, full, dtmp, ltmp, foreign, empty, dr, fifo)), "ls --json: every object listed")
s = o[seg]
ok((s["kind"], s["type"], s["size_bytes"], s["mode"], s["uid"], s["user"], s["status"], s["segment_format"],
    s["processes_attached"], s["processes_alive"], s["pools"], s["keys"], s["capacity_keys"],
    s["capacity_processes"]) == ("keymesh", "file", int(size), "0640", int(uid), user, "OK", int(fmt), 1, 0, 2, 3, 4, 4)
   and s["created_unix_ms"] > 1.7e12, "ls --json: the segment's fields (%s)" % s)
t = o[dtmp]
ok((t["kind"], t["target"], t["creator_pid"], t["creator_alive"]) == ("temporary", seg + "-t", int(dead), False),
   "ls --json: the dead creation's temporary (%s)" % t)
ok(o[ltmp]["kind"] == "temporary" and o[ltmp]["creator_alive"] is True, "ls --json: the live creation's temporary")
f = o[foreign]
ok((f["kind"], f["status"], f["segment_format"], f["processes_attached"]) == ("foreign", "ENOTKM", None, None),
   "ls --json: another program's object (%s)" % f)
ok(o[empty]["kind"] == "empty" and o[empty]["size_bytes"] == 0, "ls --json: the empty object")
ok((o[dr]["kind"], o[dr]["type"], o[dr]["status"]) == ("foreign", "directory", None)
   and (o[fifo]["kind"], o[fifo]["type"]) == ("foreign", "fifo"), "ls --json: the directory and the FIFO")
ok(not any("format" == k for x in d["objects"] for k in x), "ls --json: no bare format")
PYEOF
while read -r st name; do ok "$st" "$name"; done <"$TMP/checks"

# ------------------------------------------------ objects it may not read
if [ "$(id -u)" = 0 ]; then
    run setpriv --reuid=nobody --regid=nogroup --clear-groups "$KMCTL" ls --json
    expect 0 "ls as another user (nobody) refuses nothing"
    ok $("$PY" -c '
import json, sys
o = {x["name"]: x for x in json.loads(sys.argv[1])["objects"]}
s, t = o[sys.argv[2]], o[sys.argv[3]]
sys.exit(not ((s["kind"], s["status"], s["size_bytes"], s["mode"], s["processes_attached"]) == ("unreadable", "EACCES", int(sys.argv[4]), "0640", None)
              and (t["kind"], t["status"], t["creator_alive"]) == ("temporary", "EACCES", False)))' \
        "$OUT" "$SEG" "$DEAD_TMP" "$size"; echo $?) \
        "... an object it may not read: unreadable, with its size and mode; a temporary still named as one"
else
    ok 0 "# SKIP not root: no other user to list as"
    ok 0 "# SKIP not root"
fi

# -------------------------------------------------------------- usage
run "$KMCTL" ls extra
expect 2 "ls takes no operand"
run "$KMCTL" ls --help
ok $([ "$RC" = 0 ] && echo "$OUT" | grep -q '^Usage: kmctl ls'; echo $?) "ls --help"

# ------------------------------------------------------------ completion
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KMCTL_ABS=$(cd "$(dirname "$KMCTL")" && pwd)/$(basename "$KMCTL")
comp() { # comp WORDS...: the completions of the last word, sorted, on one line
    (
        # shellcheck source=tools/kmctl/kmctl.bash
        . "$ROOT/tools/kmctl/kmctl.bash"
        COMP_WORDS=("$KMCTL_ABS" "$@")
        COMP_CWORD=$#
        _kmctl
        [ "${#COMPREPLY[@]}" = 0 ] || printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' '
    )
}
ok $([ "$(comp l)" = "ls " ] && [ "$(comp pr)" = "presets " ] && [ "$(comp ls -)" = "--help --json " ]; echo $?) \
    "completion: ls, presets, ls's options"
ok $([ "$(comp presets '')" = "anthropic cerebras groq openai openrouter " ] && [ "$(comp presets --json o)" = "openai openrouter " ] &&
     [ -z "$(comp presets groq '')" ]; echo $?) "completion: presets' PROVIDER from the presets, one of them ($(comp presets ''))"

# ------------------------------------------------------------------ presets
run "$KMCTL" presets
expect 0 "presets"
echo "$OUT" >"$TMP/presets.txt"
ok $([ "$(head -1 "$TMP/presets.txt")" = "presets: presets/presets.json (built in)" ]; echo $?) \
    "presets: says where they come from ($(head -1 "$TMP/presets.txt"))"
ok $(grep -q '^PROVIDER  *TIER  *MODEL  *RPM  *RPH  *RPD  *TPM  *TPH  *TPD$' "$TMP/presets.txt" &&
     [ "$(awk '$1 == "groq" && $3 == "llama-3.3-70b-versatile"' "$TMP/presets.txt" | tr -s ' ')" = \
       "groq free llama-3.3-70b-versatile 30 - 1000 12000 - 100000" ]; echo $?) \
    "presets: a model's limits, '-' for a window it lacks"
ok $([ "$(awk '$1 == "anthropic" && $3 == "(all"' "$TMP/presets.txt" | tr -s ' ')" = \
       "anthropic tier_1 (all models) 50 - - - - -" ]; echo $?) "presets: limits on the key as a whole"
ok $(grep -q '^PROVIDER  *TIER  *READ  *SOURCE$' "$TMP/presets.txt" &&
     grep -Eq '^groq +free +2026-12-02 +https://console.groq.com/docs/rate-limits$' "$TMP/presets.txt" &&
     [ "$(grep -c '^openai ' "$TMP/presets.txt")" -ge 5 ]; echo $?) "presets: each tier's source and the date it was read"
run "$KMCTL" presets groq
ok $([ "$RC" = 0 ] && [ -z "$(echo "$OUT" | awk 'NR > 2 && NF && $1 != "groq" && $1 != "PROVIDER"')" ] &&
     echo "$OUT" | grep -q '^groq .*whisper-large-v3 '; echo $?) "presets groq: groq's rows alone"
run "$KMCTL" presets groq --json
expect 0 "presets groq --json"
ok $("$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
sys.exit(not (list(d)[:2] == ["json_schema", "kind"] and d["kind"] == "presets" and d["presets_schema"] == 1
              and list(d["providers"]) == ["groq"]
              and d["providers"]["groq"]["tiers"]["free"]["models"]["llama-3.3-70b-versatile"]["rpd"] == 1000
              and d["providers"]["groq"]["tiers"]["free"]["sources"][0]["read"] == "2026-12-02"))' "$OUT"; echo $?) \
    "presets groq --json: kmctl's shape, the provider alone, its limits and sources"
run "$KMCTL" presets nosuch
ok $([ "$RC" = 2 ] && echo "$ERR" | grep -q "^kmctl: presets: unknown provider 'nosuch' (known: groq, cerebras, openai, anthropic, openrouter)$"; echo $?) \
    "presets nosuch: status 2, the known providers named ($ERR)"
run "$KMCTL" presets groq extra
expect 2 "presets takes one PROVIDER at most"
cat >"$TMP/acme.json" <<'EOF'
{"presets_schema": 1,
 "providers": {"acme": {"name": "Acme AI", "tiers": {"gold": {
   "sources": [{"url": "https://acme.example/limits", "read": "2026-11-30"}],
   "limits": {"rpm": 100},
   "models": {"acme-large": {"rpm": 20, "tpm": {"limit": 40000, "mode": "sliding"}}}}}}}}
EOF
KEYMESH_PRESETS="$TMP/acme.json" run "$KMCTL" presets
ok $([ "$RC" = 0 ] && [ "$(echo "$OUT" | head -1)" = "presets: $TMP/acme.json" ] &&
     [ "$(echo "$OUT" | awk '$3 == "acme-large"' | tr -s ' ')" = "acme gold acme-large 20 40000 sliding" ] &&
     echo "$OUT" | grep -Eq '^acme +gold +2026-11-30 +https://acme.example/limits$'; echo $?) \
    "KEYMESH_PRESETS: its file, a window written as an object, only the windows it has"
KEYMESH_PRESETS="$TMP/acme.json" run "$KMCTL" presets groq
ok $([ "$RC" = 2 ] && echo "$ERR" | grep -q "(known: acme)"; echo $?) "KEYMESH_PRESETS: groq is then unknown ($ERR)"
echo '{"presets_schema": 1, "providers": {' >"$TMP/bad.json"
KEYMESH_PRESETS="$TMP/bad.json" run "$KMCTL" presets
ok $([ "$RC" = 1 ] && echo "$ERR" | grep -q "^kmctl: presets: $TMP/bad.json:[0-9]*:[0-9]*: "; echo $?) \
    "a malformed KEYMESH_PRESETS: status 1, file:line:column ($ERR)"

finish
