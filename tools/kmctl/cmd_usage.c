/*
 * tools/kmctl/cmd_usage.c - kmctl persist (usage events into SQLite) and
 * kmctl usage (the report from that database).  The one file of kmctl
 * that includes sqlite3.h: the library never links SQLite, and kmctl's
 * other commands do not need it.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kmctl.h"

const char usage_persist[] =
    "Usage: kmctl persist NAME --db FILE [--interval SECONDS] [--once]\n"
    "                     [--snapshot FILE [--every SECONDS]\n"
    "                      [--include-secrets (--key-file F | --key-env V)]]\n"
    "\n"
    "Drain the usage events of segment NAME (one per released lease: key,\n"
    "model, tokens, outcome, latency, time) into the SQLite database FILE,\n"
    "table usage, every --interval seconds (default 1), and with --snapshot\n"
    "write a snapshot every --every seconds (default 60).  On SIGTERM or\n"
    "SIGINT it drains once more, writes a final snapshot and exits 0.\n"
    "Events overwritten before they were drained (each process slot keeps\n"
    "capacity.usage_events of them) are counted, never waited for:\n"
    "workers never block on persist.  One persist per segment at a time: a\n"
    "second one fails (status 1), saying another process drains the events.\n"
    "Killed at any point, persist loses no event and stores none twice: it\n"
    "consumes the events of a drain only once its transaction has committed,\n"
    "and the next persist stores what it is handed again only once (each\n"
    "event's identity is a unique key).  An older database is migrated.\n"
    "\n"
    "Options:\n"
    "  --db FILE            the SQLite database (created if missing)\n"
    "  --interval SECONDS   drain period (default 1)\n"
    "  --once               drain once and exit\n"
    "  --snapshot FILE      also write snapshots to FILE (mode 0600, atomic)\n"
    "  --every SECONDS      snapshot period (default 60)\n"
    "  --include-secrets, --key-file F, --key-env V   as for snapshot\n"
    "  -h, --help           show this help\n"
    "\n"
    "Exit status: 0 stopped by a signal (or --once done); 1 failure; 2 usage\n"
    "error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl persist llm --db /var/lib/keymesh/usage.db --snapshot /var/lib/keymesh/llm.json\n";

const char usage_usage[] =
    "Usage: kmctl usage NAME --db FILE [--since DURATION] [--by FIELDS] [--json]\n"
    "\n"
    "Report the usage of segment NAME recorded by `kmctl persist` in FILE:\n"
    "requests, tokens, outcomes and mean latency, grouped by FIELDS (a comma\n"
    "list of pool, key, model, outcome; default key,model) over the last\n"
    "DURATION (e.g. 90s, 15m, 1h, 7d; default 1h).\n"
    "\n"
    "Options:\n"
    "  --db FILE          the database `kmctl persist` writes\n"
    "  --since DURATION   how far back (default 1h)\n"
    "  --by FIELDS        grouping (default key,model)\n"
    "  -j, --json         print one JSON document instead (docs/kmctl.md):\n"
    "                     \"rows\", each with the FIELDS and requests,\n"
    "                     tokens, success, rate_limited, failed,\n"
    "                     latency_avg_us (null: none reported)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit status: 0 reported; 1 failure; 2 usage error; 3 no such segment\n"
    "(NAME is neither in FILE nor a segment on this host).\n"
    "\n"
    "Example:\n"
    "  kmctl usage llm --db /var/lib/keymesh/usage.db --since 24h --by key\n";

/* --------------------------------------------------------------- persist */

static volatile sig_atomic_t g_stop;
static void on_stop(int sig) { (void)sig; g_stop = 1; }

typedef struct persist_ctx {
    sqlite3 *db;
    sqlite3_stmt *ins;
    const char *segment;
    uint64_t again; /* events the database had already (handed out again) */
    int failed;
} persist_ctx;

static const char *outcome_text(int kind)
{
    return kind == KM_OUT_COUNT ? "abandoned" : km_outcome_name(kind);
}

static int persist_event(void *ctx, const km_usage_event *ev)
{
    persist_ctx *p = ctx;
    sqlite3_stmt *st = p->ins;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(ev->start_unix_ns / 1000000));
    sqlite3_bind_text(st, 2, p->segment, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ev->pool, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, ev->key_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, ev->model, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)ev->tokens);
    sqlite3_bind_text(st, 7, outcome_text(ev->outcome), -1, SQLITE_STATIC);
    if (ev->latency_us == UINT64_MAX)
        sqlite3_bind_null(st, 8);
    else
        sqlite3_bind_int64(st, 8, (sqlite3_int64)ev->latency_us);
    sqlite3_bind_int(st, 9, (int)ev->pid);
    /* The event's identity, under the unique index usage_event: an event
     * handed out again (its persist was killed after COMMIT, before
     * km_usage_commit) is ignored, so each is stored once. */
    sqlite3_bind_int64(st, 10, (sqlite3_int64)ev->segment_ns);
    sqlite3_bind_int(st, 11, ev->ring);
    sqlite3_bind_int64(st, 12, (sqlite3_int64)ev->seq);
    if (sqlite3_step(st) != SQLITE_DONE) {
        p->failed = 1;
        return 1; /* stop: nothing of this drain is consumed */
    }
    if (!sqlite3_changes(p->db))
        p->again++;
    return 0;
}

/* Columns that databases of an older kmctl lack: added by db_migrate,
 * NULL in the rows stored before (a unique index holds any number of
 * those). */
static const struct {
    const char *table, *column;
} db_added[] = {
    {"usage", "seg_ns"}, {"usage", "ring"}, {"usage", "seq"}, /* the event's identity */
    {"drops", "seg_ns"}, {"drops", "total"}, /* dropped_total after the drain */
};

/* Bring the tables to this kmctl's schema, in one transaction: BEGIN
 * IMMEDIATE so that two persists (of two segments) opening one old
 * database migrate it once. */
static int db_migrate(sqlite3 *db)
{
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    for (size_t i = 0; i < sizeof db_added / sizeof db_added[0]; i++) {
        sqlite3_stmt *st;
        int have = -1;
        if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2", -1,
                               &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, db_added[i].table, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, db_added[i].column, -1, SQLITE_STATIC);
            if (sqlite3_step(st) == SQLITE_ROW)
                have = sqlite3_column_int(st, 0);
            sqlite3_finalize(st);
        }
        char sql[128];
        snprintf(sql, sizeof sql, "ALTER TABLE %s ADD COLUMN %s INTEGER", db_added[i].table,
                 db_added[i].column);
        if (have < 0 || (!have && sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK))
            goto fail;
    }
    if (sqlite3_exec(db,
                     "CREATE UNIQUE INDEX IF NOT EXISTS usage_event ON usage(segment, seg_ns, ring, seq);"
                     "COMMIT",
                     NULL, NULL, NULL) == SQLITE_OK)
        return 0;
fail:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static int db_open(const char *path, sqlite3 **db)
{
    static const char schema[] =
        "CREATE TABLE IF NOT EXISTS usage(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL,"
        " pool TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL,"
        " outcome TEXT NOT NULL, latency_us INTEGER, pid INTEGER,"
        " seg_ns INTEGER, ring INTEGER, seq INTEGER);"
        "CREATE INDEX IF NOT EXISTS usage_seg_ts ON usage(segment, ts_ms);"
        "CREATE TABLE IF NOT EXISTS drops(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL,"
        " dropped INTEGER NOT NULL, seg_ns INTEGER, total INTEGER);";
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(*db, 5000) != SQLITE_OK ||
        sqlite3_exec(*db, "PRAGMA journal_mode=WAL;", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(*db, schema, NULL, NULL, NULL) != SQLITE_OK || db_migrate(*db) != 0) {
        errline("database '%s': %s", path, *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return EX_FAILED;
    }
    chmod(path, 0600);
    return EX_SUCCESS;
}

/* Record this drain's drops once: a drain after a killed persist finds
 * again the drops its predecessor recorded (and maybe more).  `total` is
 * the segment's count after the drain; the increment over the last total
 * recorded for this segment is what is new, and never more than the drain
 * found (the database may have missed drains: another one was used). */
static void persist_drops(sqlite3 *db, const char *name, uint64_t seg_ns, const km_usage_report *r)
{
    sqlite3_stmt *st;
    uint64_t last = 0, add = r->dropped;
    if (sqlite3_prepare_v2(db, "SELECT MAX(total) FROM drops WHERE segment = ?1 AND seg_ns = ?2", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)seg_ns);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            last = (uint64_t)sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    uint64_t fresh = r->dropped_total > last ? r->dropped_total - last : 0;
    if (fresh < add)
        add = fresh;
    if (!add)
        return;
    if (sqlite3_prepare_v2(db, "INSERT INTO drops(ts_ms, segment, dropped, seg_ns, total)"
                               " VALUES(?1, ?2, ?3, ?4, ?5)", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (sqlite3_int64)time(NULL) * 1000);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)add);
        sqlite3_bind_int64(st, 4, (sqlite3_int64)seg_ns);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)r->dropped_total);
        sqlite3_step(st);
        sqlite3_finalize(st);
    }
}

/* One drain in one transaction, in two phases so that a kill at any point
 * loses nothing: the drain defers consuming the events (KM_USAGE_DEFER),
 * the transaction commits, then km_usage_commit consumes them.  Killed
 * before the COMMIT, the transaction is rolled back and the events are
 * still in the segment; killed after it, the next drain hands them out
 * again and the unique index on their identity ignores them.  Returns an
 * exit status. */
static int persist_once(km_env *env, const char *name, sqlite3 *db, sqlite3_stmt *ins,
                        uint64_t seg_ns, uint64_t *total, uint64_t *again, uint64_t *dropped)
{
    persist_ctx p = {db, ins, name, 0, 0};
    km_usage_report r;
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        errline("database: %s", sqlite3_errmsg(db));
        return EX_FAILED;
    }
    int rc = km_usage_drain_ex(env, KM_USAGE_DEFER, persist_event, &p, &r);
    if (rc < 0) { /* nothing consumed */
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        /* KM_EBUSY from a drain means one thing only, and not what
         * km_strerror says of it elsewhere (a stalled reader). */
        if (rc == KM_EBUSY) {
            errline("segment '%s': another process is draining its usage events (a kmctl persist "
                    "already running?): one persist per segment at a time",
                    name);
            return EX_FAILED;
        }
        return seg_error(name, rc);
    }
    if (r.dropped && !p.failed)
        persist_drops(db, name, seg_ns, &r);
    /* Nothing is consumed yet: a failed transaction leaves the events in
     * the segment, for the next persist. */
    if (p.failed || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        errline("database: %s (the %llu events of this drain stay in the segment)",
                sqlite3_errmsg(db), (unsigned long long)r.events);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return EX_FAILED;
    }
    if ((rc = km_usage_commit(env)) != KM_OK) { /* stored, not consumed: handed out again */
        /* Not km_strerror: KM_EBUSY's text speaks of stalled readers. */
        errline("segment '%s': another process took over draining its usage events before this "
                "persist consumed what it stored (it will not be stored twice)",
                name);
        return EX_FAILED;
    }
    *total += r.events - p.again;
    *again += p.again;
    *dropped = r.dropped_total;
    return EX_SUCCESS;
}

/* Attach with a process slot (a drainer needs one).  kmctl does not reap
 * on its own (main.c, open_seg), but a persist restarted after kills
 * (systemd's Restart=) must not find the table full of its dead
 * predecessors: on a full table it reaps, as a worker's attach would, and
 * tries once more. */
static int persist_open(const char *name, km_env **env)
{
    int rc = km_open_flags(name, KM_OPEN_NO_REAP, env);
    if (rc == KM_EPROCS) {
        km_env *r;
        if (km_open_flags(name, KM_OPEN_NO_REAP | KM_OPEN_NO_SLOT, &r) == KM_OK) {
            km_reap_report rr;
            km_reap(r, &rr);
            km_close(r);
        }
        rc = km_open_flags(name, KM_OPEN_NO_REAP, env);
    }
    return rc == KM_OK ? EX_SUCCESS : seg_error(name, rc);
}

typedef struct persist_opts {
    snap_opts snap;
    const char *db;
    opt_u32 interval_s, every_s;
    int once;
} persist_opts;

static const opt_spec persist_optv[] = {
    OPT_STR("db", 'd', 0, persist_opts, db),
    OPT_U32("interval", 'i', 0, persist_opts, interval_s, 1, 86400),
    OPT_U32("every", 'E', 0, persist_opts, every_s, 1, 86400 * 7),
    OPT_FLAG("once", '1', 0, persist_opts, once),
    OPT_STR("snapshot", 'S', 0, persist_opts, snap.out),
    OPT_FLAG("include-secrets", 's', 0, persist_opts, snap.secrets),
    OPT_STR("key-file", 'k', 0, persist_opts, snap.key_file),
    OPT_STR("key-env", 'K', 0, persist_opts, snap.key_env),
};

const cmd_syntax persist_syntax = {usage_persist, "NAME", persist_optv,
                                          N_OPTS(persist_optv)};

int cmd_persist(int argc, char **argv)
{
    persist_opts o = {.interval_s = {1, 0}, .every_s = {60, 0}};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    km_env *env;
    int rc;

    if ((rc = parse_args(&persist_syntax, argc, argv, &o)) >= 0)
        return rc;
    if (!o.db)
        return usage_error("missing --db FILE");
    if (!o.snap.secrets && (o.snap.key_file || o.snap.key_env))
        return usage_error("--key-file and --key-env go with --include-secrets");
    if (o.snap.secrets && !o.snap.out)
        return usage_error("--include-secrets goes with --snapshot FILE");
    if (o.snap.secrets && (rc = load_key(&o.snap, key)) >= 0)
        return rc;
    const char *name = argv[optind];
    if ((rc = persist_open(name, &env)) != EX_SUCCESS)
        return rc;
    if ((rc = db_open(o.db, &db)) != EX_SUCCESS)
        goto out;
    km_info in;
    if ((rc = km_info_get(env, &in)) != KM_OK) {
        rc = seg_error(name, rc);
        goto out;
    }
    if (sqlite3_prepare_v2(db,
                           "INSERT OR IGNORE INTO usage(ts_ms, segment, pool, key, model, tokens,"
                           " outcome, latency_us, pid, seg_ns, ring, seq)"
                           " VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &ins, NULL) != SQLITE_OK) {
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
        rc = EX_FAILED;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    uint64_t total = 0, again = 0, dropped = 0, next_snap = 0;
    for (;;) {
        int last = o.once || g_stop;
        if ((rc = persist_once(env, name, db, ins, in.created_wall_ns, &total, &again, &dropped)) !=
            EX_SUCCESS)
            goto out;
        uint64_t now = km_now_ns();
        if (o.snap.out && (last || now >= next_snap)) {
            if ((rc = emit_snapshot(env, name, &o.snap, o.snap.secrets ? key : NULL)) != EX_SUCCESS)
                goto out;
            next_snap = now + (uint64_t)o.every_s.v * 1000000000u;
        }
        if (last)
            break;
        struct timespec ts = {(time_t)o.interval_s.v, 0};
        nanosleep(&ts, NULL); /* a signal ends the sleep early */
    }
    printf("persisted %llu events of segment '%s' to %s (%llu dropped in all", (unsigned long long)total,
           name, o.db, (unsigned long long)dropped);
    if (again) /* a persist before was killed between its two commits */
        printf("; %llu stored already", (unsigned long long)again);
    printf(")\n");
    rc = flush_stdout(EX_SUCCESS);
out:
    explicit_bzero(key, sizeof key);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    km_close(env);
    return rc;
}

/* ----------------------------------------------------------------- usage */

/* "90s", "15m", "1h", "7d" -> milliseconds; 0 if invalid. */
static uint64_t parse_duration_ms(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-' || end[0] == '\0' || end[1] != '\0')
        return 0;
    uint64_t unit = end[0] == 's' ? 1000 : end[0] == 'm' ? 60000 : end[0] == 'h' ? 3600000
                    : end[0] == 'd' ? 86400000 : 0;
    return v && unit && v < UINT64_MAX / unit ? v * unit : 0;
}

/* Whether NAME is worth a report: it has rows in the database (history
 * outlives the segment), or a segment of that name exists here.  A name
 * that is neither is an error, not an empty report, so that a mistyped
 * NAME does not pass for "no usage".  -1 to go on, else an exit status. */
static int usage_known(sqlite3 *db, const char *name)
{
    sqlite3_stmt *st;
    km_env *env;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM usage WHERE segment = ?1 LIMIT 1", -1, &st,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
    }
    if (found)
        return -1;
    int rc = km_open_flags(name, KM_OPEN_NO_REAP, &env);
    if (rc == KM_OK)
        km_close(env);
    /* Anything else (no permission, another format, ...) means something
     * of that name exists: report what the database holds, i.e. nothing. */
    return rc == KM_ENOENT || rc == KM_ENAME ? seg_error(name, rc) : -1;
}

typedef struct usage_opts {
    const char *db, *since, *by;
    int json;
} usage_opts;

/* usage --json: the rows of the prepared statement as one document; the
 * statement's first ncols columns are the fields named in cols. */
static int usage_json(sqlite3 *db, sqlite3_stmt *st, const char *name, const usage_opts *o,
                      const char *cols, int ncols, uint64_t since_ms)
{
    json_t *d = jdoc("usage", name, NULL), *rows = json_array(), *by = json_array();
    const char *names[4];
    char buf[128];
    snprintf(buf, sizeof buf, "%s", cols);
    char *save = NULL, *tok = strtok_r(buf, ", ", &save);
    for (int i = 0; i < ncols && tok; i++, tok = strtok_r(NULL, ", ", &save)) {
        names[i] = tok;
        json_array_append_new(by, json_string(tok));
    }
    int rc = SQLITE_DONE;
    while (d && rows && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *r = json_object();
        for (int i = 0; r && i < ncols; i++) {
            const unsigned char *t = sqlite3_column_text(st, i);
            json_object_set_new(r, names[i], jstr(t ? (const char *)t : ""));
        }
        if (!r)
            break;
        json_object_set_new(r, "requests", json_integer(sqlite3_column_int64(st, ncols)));
        json_object_set_new(r, "tokens", json_integer(sqlite3_column_int64(st, ncols + 1)));
        json_object_set_new(r, "success", json_integer(sqlite3_column_int64(st, ncols + 2)));
        json_object_set_new(r, "rate_limited", json_integer(sqlite3_column_int64(st, ncols + 3)));
        json_object_set_new(r, "failed", json_integer(sqlite3_column_int64(st, ncols + 4)));
        json_object_set_new(r, "latency_avg_us",
                            sqlite3_column_type(st, ncols + 5) == SQLITE_NULL
                                ? json_null()
                                : json_integer((json_int_t)(sqlite3_column_double(st, ncols + 5) + 0.5)));
        json_array_append_new(rows, r);
    }
    if (d && rows && rc != SQLITE_DONE) {
        errline("database '%s': %s", o->db, sqlite3_errmsg(db));
        json_decref(d);
        json_decref(rows);
        json_decref(by);
        return EX_FAILED;
    }
    if (d) {
        json_object_set_new(d, "since", jstr(o->since));
        json_object_set_new(d, "since_ms", ju64(since_ms));
        json_object_set_new(d, "by", by);
        json_object_set_new(d, "rows", rows);
    } else {
        json_decref(by);
        json_decref(rows);
    }
    return jemit(d);
}

static const opt_spec usage_optv[] = {
    OPT_STR("db", 'd', 0, usage_opts, db),
    OPT_STR("since", 's', 0, usage_opts, since),
    OPT_STR("by", 'b', 0, usage_opts, by),
    OPT_FLAG("json", 'j', 1, usage_opts, json),
};

const cmd_syntax usage_syntax = {usage_usage, "NAME", usage_optv, N_OPTS(usage_optv)};

int cmd_usage(int argc, char **argv)
{
    usage_opts o = {NULL, "1h", "key,model", 0};
    char cols[128] = "", sql[1024];
    int rc, ncols = 0;
    if ((rc = parse_args(&usage_syntax, argc, argv, &o)) >= 0)
        return rc;
    if (!o.db)
        return usage_error("missing --db FILE");
    uint64_t since = parse_duration_ms(o.since);
    if (!since)
        return usage_error("--since: '%s' is not a duration (e.g. 90s, 15m, 1h, 7d)", o.since);
    /* Only known column names reach the SQL text. */
    const char *p = o.by;
    while (*p) {
        size_t n = strcspn(p, ",");
        static const char *const ok_cols[] = {"pool", "key", "model", "outcome"};
        int found = 0;
        for (int i = 0; i < 4; i++)
            if (n == strlen(ok_cols[i]) && !strncmp(p, ok_cols[i], n)) {
                snprintf(cols + strlen(cols), sizeof cols - strlen(cols), "%s%s", ncols ? ", " : "",
                         ok_cols[i]);
                ncols++;
                found = 1;
            }
        if (!found || ncols > 4)
            return usage_error("--by: '%.*s' is not one of pool, key, model, outcome", (int)n, p);
        p += n + (p[n] == ',');
    }
    if (!ncols)
        return usage_error("--by: no field");
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(o.db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        errline("database '%s': %s", o.db, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return EX_FAILED;
    }
    snprintf(sql, sizeof sql,
             "SELECT %s, COUNT(*), SUM(tokens), SUM(outcome = 'success'),"
             " SUM(outcome = 'rate_limited'), SUM(outcome IN ('failure', 'auth', 'quota')),"
             " AVG(latency_us) FROM usage WHERE segment = ?1 AND ts_ms >= ?2"
             " GROUP BY %s ORDER BY %s",
             cols, cols, cols);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
        sqlite3_close(db);
        return EX_FAILED;
    }
    if ((rc = usage_known(db, argv[optind])) >= 0) {
        sqlite3_finalize(st);
        sqlite3_close(db);
        return rc;
    }
    sqlite3_bind_text(st, 1, argv[optind], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)((uint64_t)time(NULL) * 1000 - since));
    if (o.json) {
        rc = usage_json(db, st, argv[optind], &o, cols, ncols, since);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return rc;
    }
    for (int i = 0; i < ncols; i++) {
        char up[16];
        const char *c = cols;
        for (int j = 0; j < i; j++)
            c = strstr(c, ", ") + 2;
        size_t n = strcspn(c, ",");
        for (size_t k = 0; k < n && k < sizeof up - 1; k++)
            up[k] = (char)(c[k] >= 'a' && c[k] <= 'z' ? c[k] - 32 : c[k]);
        up[n < sizeof up - 1 ? n : sizeof up - 1] = '\0';
        printf("%-20s ", up);
    }
    printf("%10s %12s %10s %10s %10s %12s\n", "REQUESTS", "TOKENS", "SUCCESS", "429", "FAILED",
           "AVG_LAT_US");
    int rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < ncols; i++) {
            const unsigned char *t = sqlite3_column_text(st, i);
            printf("%-20s ", t && *t ? (const char *)t : "-");
        }
        printf("%10lld %12lld %10lld %10lld %10lld ", sqlite3_column_int64(st, ncols),
               sqlite3_column_int64(st, ncols + 1), sqlite3_column_int64(st, ncols + 2),
               sqlite3_column_int64(st, ncols + 3), sqlite3_column_int64(st, ncols + 4));
        if (sqlite3_column_type(st, ncols + 5) == SQLITE_NULL)
            printf("%12s\n", "-");
        else
            printf("%12.0f\n", sqlite3_column_double(st, ncols + 5));
        rows++;
    }
    int ok = rc == SQLITE_DONE;
    if (!ok)
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (ok && !rows)
        printf("(no usage in the last %s)\n", o.since);
    return ok ? flush_stdout(EX_SUCCESS) : EX_FAILED;
}
