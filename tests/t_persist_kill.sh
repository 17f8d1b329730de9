#!/usr/bin/env bash
# tests/t_persist_kill.sh - kmctl persist loses no usage event and stores
# none twice, however it dies (issue 17, "no lost usage data").
#
#   - a database of an older kmctl (no identity columns) is migrated: its
#     rows stay, the columns and the unique index are added, new rows carry
#     the identity (seg_ns, ring, seq);
#   - a persist killed between its SQLite COMMIT and km_usage_commit (gdb
#     stops it there; skipped without gdb): the next persist is handed the
#     same events again and stores none of them twice ("N stored already"),
#     nor the drops of an overrun ring;
#   - random kills: workers (tests/helpers/loadgen.c, which counts what it
#     released) release leases with success and failure outcomes while
#     persist is started and SIGKILLed at random points dozens of times;
#     a last `persist --once` then leaves exactly one row per release, per
#     outcome, no duplicate identity, no drop.
# Before the two-phase drain a kill after the drain and before COMMIT lost
# the events drained (thousands in a few seconds).  TAP (plan at the end).
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"

LOADGEN="$B/tests/helpers/loadgen"
PY=/usr/bin/python3
begin persist_kill "$LOADGEN"
KILLS=${KM_PERSIST_KILLS:-40}

cat >"$TMP/pool.json" <<EOF
{"capacity": {"keys": 4, "processes": 16, "usage_events": 65536},
 "pools": [{"name": "p", "keys": [{"id": "a", "secret": "sk-test-pk-aaaa1111"},
                                  {"id": "b", "secret": "sk-test-pk-bbbb2222"}]}]}
EOF
run "$KMCTL" create "$SEG" --config "$TMP/pool.json"
expect 0 "create"

# ------------------------------------------------ an older database: migrated
DB="$TMP/old.db"
"$PY" - "$DB" "$SEG" <<'PYEOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("""
CREATE TABLE usage(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL, pool TEXT NOT NULL,
  key TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL, outcome TEXT NOT NULL,
  latency_us INTEGER, pid INTEGER);
CREATE INDEX usage_seg_ts ON usage(segment, ts_ms);
CREATE TABLE drops(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL, dropped INTEGER NOT NULL);
""")
db.execute("INSERT INTO usage VALUES(1, ?, 'p', 'a', '', 5, 'success', 10, 1)", (sys.argv[2],))
db.execute("INSERT INTO drops VALUES(1, ?, 3)", (sys.argv[2],))
db.commit()
PYEOF
run "$LOADGEN" "$SEG" p 1 200 0.1 "$TMP/mig"
expect 0 "20 releases"
run "$KMCTL" persist "$SEG" --db "$DB" --once
expect 0 "persist --once on a database of an older kmctl"
"$PY" - "$DB" "$SEG" >"$TMP/checks" <<'PYEOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
seg = sys.argv[2]
def check(cond, name):
    print(0 if cond else 1, name)
cols = {r[1] for r in db.execute("PRAGMA table_info(usage)")}
check({"seg_ns", "ring", "seq"} <= cols, "migrated: usage has seg_ns, ring, seq (%s)" % sorted(cols))
dcols = {r[1] for r in db.execute("PRAGMA table_info(drops)")}
check({"seg_ns", "total"} <= dcols, "migrated: drops has seg_ns, total")
idx = [r for r in db.execute("PRAGMA index_list(usage)") if r[1] == "usage_event"]
check(idx and idx[0][2] == 1, "migrated: a unique index usage_event")
try:
    old = db.execute("SELECT COUNT(*) FROM usage WHERE seg_ns IS NULL").fetchone()[0]
    new = db.execute("SELECT COUNT(*), COUNT(DISTINCT seg_ns), COUNT(DISTINCT seq) FROM usage"
                     " WHERE seg_ns IS NOT NULL").fetchone()
except sqlite3.OperationalError: # not migrated
    old, new = -1, ()
check(old == 1, "migrated: the older row is kept, without identity (%d)" % old)
check(new == (20, 1, 20), "migrated: 20 new rows, one segment, 20 sequence numbers (%s)" % (new,))
PYEOF
py_checks <"$TMP/checks"
run "$KMCTL" persist "$SEG" --db "$DB" --once
ok $([ "$RC" = 0 ] && echo "$OUT" | grep -q "^persisted 0 events"; echo $?) \
    "a second persist --once on the migrated database: nothing new ($OUT)"

# ----------------------------------------- killed mid-drain (gdb)
count() { # count DB: the rows of table usage
    "$PY" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM usage').fetchone()[0])" "$1"
}
DB="$TMP/mid.db"
run "$LOADGEN" "$SEG" p 2 200 0.1 "$TMP/mid"
expect 0 "40 releases, 20 in each of two rings"
if command -v gdb >/dev/null 2>&1; then
    # Kill persist as it stores the 26th event: it has read the first
    # ring to its end (a drain that consumes as it reads stored that
    # ring's cursor then).
    gdb -q -batch -ex 'break persist_event' -ex 'ignore 1 25' -ex run -ex kill \
        --args "$KMCTL" persist "$SEG" --db "$DB" --once >"$TMP/gdb.out" 2>&1
    ok $(grep -q "Breakpoint 1, .*persist_event" "$TMP/gdb.out"; echo $?) \
        "persist killed in its drain, at the 26th event, second ring"
    run "$KMCTL" persist "$SEG" --db "$DB" --once
    stored=$(count "$DB")
    ok $([ "$RC" = 0 ] && [ "$stored" = 40 ]; echo $?) \
        "the next persist stores all 40 ($stored; $OUT)"
else
    for t in "killed in its drain" "the next persist stores all 40"; do
        ok 0 "$t # SKIP gdb not installed"
    done
fi

# ------------------------------------- killed between the two commits (gdb)
DB="$TMP/gdb.db"
run "$LOADGEN" "$SEG" p 2 200 0.1 "$TMP/gdb"
expect 0 "40 releases"
if command -v gdb >/dev/null 2>&1; then
    # Stop persist where km_usage_commit starts (SQLite has committed),
    # and kill it there.
    gdb -q -batch -ex 'break km_usage_commit' -ex run -ex kill \
        --args "$KMCTL" persist "$SEG" --db "$DB" --once >"$TMP/gdb.out" 2>&1
    stored=$(count "$DB")
    ok $([ "$stored" = 40 ] && grep -q "Breakpoint 1, .*km_usage_commit" "$TMP/gdb.out"; echo $?) \
        "persist killed after its COMMIT, before km_usage_commit: 40 rows stored ($stored)"
    run "$KMCTL" persist "$SEG" --db "$DB" --once
    ok $([ "$RC" = 0 ] && echo "$OUT" | grep -q "^persisted 0 events .*; 40 stored already)"; echo $?) \
        "the next persist is handed the 40 again and stores none twice ($OUT)"
    stored=$(count "$DB")
    ok $([ "$stored" = 40 ]; echo $?) "... 40 rows ($stored)"
    # The same with drops: 8 events per ring, 20 released, 12 overwritten.
    new_seg SMALL small
    sed 's/"usage_events": 65536/"usage_events": 16/' "$TMP/pool.json" >"$TMP/small.json"
    "$KMCTL" create "$SMALL" --config "$TMP/small.json" >/dev/null
    "$LOADGEN" "$SMALL" p 1 200 0.1 "$TMP/small" >/dev/null
    DB="$TMP/drops.db"
    gdb -q -batch -ex 'break km_usage_commit' -ex run -ex kill \
        --args "$KMCTL" persist "$SMALL" --db "$DB" --once >"$TMP/gdb.out" 2>&1
    run "$KMCTL" persist "$SMALL" --db "$DB" --once
    got=$("$PY" -c "import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); print(d.execute('SELECT COUNT(*) FROM usage').fetchone()[0], d.execute('SELECT SUM(dropped) FROM drops').fetchone()[0])" "$DB")
    ok $([ "$got" = "8 12" ] && echo "$OUT" | grep -q "(12 dropped in all; 8 stored already)"; echo $?) \
        "an overrun ring, persist killed between its commits: 8 rows, 12 drops counted once ($got; $OUT)"
else
    for t in "killed after its COMMIT" "handed out again" "40 rows" "12 drops counted once"; do
        ok 0 "$t # SKIP gdb not installed"
    done
fi

# ---------------------------------------------------------- random kills
DB="$TMP/usage.db"
run "$KMCTL" persist "$SEG" --db "$DB" --once # consume what came before
expect 0 "persist --once: a clean start"
# 4 workers x 1500 op/s x 6 s, every 7th a failure; persist killed at
# random meanwhile.
"$LOADGEN" "$SEG" p 4 1500 6 "$TMP/load" >"$TMP/load.out" 2>&1 &
LOADPID=$!
on_cleanup() {
    kill -9 "$LOADPID" "${PP:-}" 2>/dev/null
}
kills=0
while kill -0 "$LOADPID" 2>/dev/null || [ "$kills" -lt "$KILLS" ]; do
    "$KMCTL" persist "$SEG" --db "$DB" --interval 1 >/dev/null 2>>"$TMP/persist.err" &
    PP=$!
    # 0 to 60 ms: opening the segment and the database, draining and
    # inserting a backlog, the two commits, or the sleep.
    ms=$((RANDOM % ${KM_PERSIST_KILL_MS:-60}))
    sleep "$(printf '0.%03d' "$ms")"
    kill -9 "$PP" 2>/dev/null
    wait "$PP" 2>/dev/null
    kills=$((kills + 1))
done
wait "$LOADPID"
ok $? "the workers ran (4 x 1500 op/s x 6 s)"
before=$(count "$DB")
run "$KMCTL" persist "$SEG" --db "$DB" --once
expect 0 "a last persist --once"
diag "$kills kills; $before rows stored by the killed persists; the last: $OUT"
ok $([ "$kills" -ge "$KILLS" ] && [ "$before" -gt 0 ]; echo $?) \
    "persist was killed $kills times, after storing $before rows"
# Killed persists leave dead process slots, which nothing else reaps here:
# a persist on a full table reaps its predecessors.
ok $([ ! -s "$TMP/persist.err" ]; echo $?) \
    "every persist started (a full table of dead ones is reaped): $(sort "$TMP/persist.err" | uniq -c | head -3)"

cat "$TMP"/load.* >"$TMP/counts"
"$PY" - "$DB" "$SEG" "$TMP/counts" >"$TMP/checks" <<'PYEOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
seg = sys.argv[2]
def check(cond, name):
    print(0 if cond else 1, name)
req = suc = fail = 0
for line in open(sys.argv[3]):
    f = line.split()
    if f[0] == "refused":
        continue
    req += int(f[1]); suc += int(f[2]); fail += int(f[3])
rows = dict(db.execute("SELECT outcome, COUNT(*) FROM usage WHERE segment = ? GROUP BY outcome",
                       (seg,)).fetchall())
n = db.execute("SELECT COUNT(*) FROM usage WHERE segment = ?", (seg,)).fetchone()[0]
try:
    ids = db.execute("SELECT COUNT(DISTINCT seg_ns || '.' || ring || '.' || seq) FROM usage"
                     " WHERE segment = ?", (seg,)).fetchone()[0]
except sqlite3.OperationalError: # a kmctl without the identity columns
    ids = -1
drops = db.execute("SELECT COALESCE(SUM(dropped), 0) FROM drops").fetchone()[0]
check(req > 20000, "the workers released %d leases (%d success, %d failure)" % (req, suc, fail))
check(rows.get("success", 0) == suc,
      "one row per success: %d rows, %d released" % (rows.get("success", 0), suc))
check(rows.get("failure", 0) == fail,
      "one row per failure: %d rows, %d released" % (rows.get("failure", 0), fail))
check(n == req and set(rows) <= {"success", "failure"},
      "lost 0, duplicated 0: %d rows for %d releases (%s)" % (n, req, rows))
check(ids == n, "each identity once (%d distinct of %d)" % (ids, n))
check(drops == 0, "no event dropped (%d)" % drops)
PYEOF
py_checks <"$TMP/checks"
finish
