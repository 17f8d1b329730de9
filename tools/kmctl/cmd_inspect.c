/*
 * tools/kmctl/cmd_inspect.c - kmctl inspect (pools and keys, processes,
 * epochs) and kmctl ps, which prints the same process table.  Both attach
 * read-only (KM_OPEN_READONLY): no process slot, nothing written, so they
 * work on a full process table and kmctl is not in the table it shows.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kmctl.h"

const char usage_inspect[] =
    "Usage: kmctl inspect NAME [--json]\n"
    "\n"
    "Show segment NAME: capacity, then for each pool a header line (name,\n"
    "strategy, key count, cooldown settings), its models and budget if it\n"
    "has them, and a table with one row per key:\n"
    "  ID          key id\n"
    "  SECRET      the secret, masked\n"
    "  STATE       active, cooling, probing, disabled, invalid or exhausted\n"
    "  W           weight\n"
    "  INFLIGHT    leases out / most leases allowed at once\n"
    "  RPM, TPM    available now / limit (\"-\": no limit); RPH, RPD, TPH,\n"
    "              TPD appear when a key of the pool has such a limit\n"
    "  ACQ         leases acquired\n"
    "  OK, 429     releases with success, with rate_limited\n"
    "  FAIL        releases with failure, auth or quota\n"
    "  EMA_US      moving average of latency in microseconds (\"-\": no\n"
    "              sample yet), as latency_ema_us in --json\n"
    "  COOLDOWN_MS milliseconds of cooldown left, rounded up (\"-\": none),\n"
    "              as cooldown_remaining_ms in --json\n"
    "  SPENT_USD   US dollars spent (/ budget, if the key has one); shown\n"
    "              when a key of the pool has a price or a budget\n"
    "  META        the key's metadata (JSON); shown when a key has some\n"
    "\n"
    "Then the attached processes, as `kmctl ps` lists them.  kmctl looks\n"
    "read-only: it takes no process slot and writes nothing.\n"
    "\n"
    "Options:\n"
    "  -j, --json   print one JSON document instead (docs/kmctl.md): the\n"
    "               snapshot's pools and keys, \"processes\" as `kmctl ps\n"
    "               --json` lists them, and \"epochs\"\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 shown; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl inspect llm\n";

const char usage_ps[] =
    "Usage: kmctl ps NAME [--json]\n"
    "\n"
    "List the processes attached to segment NAME, one row per slot of its\n"
    "process table in use:\n"
    "  SLOT        slot in the process table\n"
    "  PID         process id (\"-\": still attaching)\n"
    "  ALIVE       yes, or no: it died without detaching and `kmctl reap`\n"
    "              will release what it held\n"
    "  LEASES      leases it holds now\n"
    "  ATTACHED_MS milliseconds since it attached (attached_ms in --json)\n"
    "kmctl looks read-only: it takes no process slot (it works on a full\n"
    "table) and is not in the list.\n"
    "\n"
    "Options:\n"
    "  -j, --json   print one JSON document instead (docs/kmctl.md) whose\n"
    "               \"processes\" has one object per process: {\"slot\",\n"
    "               \"pid\", \"alive\", \"leases\", \"attached_ms\", \"self\"}\n"
    "               (attached_ms: null while attaching; self: always\n"
    "               false, kmctl takes no slot)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 listed; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl ps llm\n";

/* --------------------------------------------------------- pools and keys */

/* Display width of UTF-8 text: code points, not bytes (masks hold "…"). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

enum {
    COL_ID, COL_SECRET, COL_STATE, COL_W, COL_INFLIGHT,
    COL_RPM, COL_RPH, COL_RPD, COL_TPM, COL_TPH, COL_TPD,
    COL_ACQ, COL_OK, COL_429, COL_FAIL, COL_EMA, COL_COOL, COL_SPENT,
    COL_META, NCOLS
};

static const char *const col_title[NCOLS] = {
    "ID", "SECRET", "STATE", "W", "INFLIGHT", "RPM", "RPH", "RPD",
    "TPM", "TPH", "TPD", "ACQ", "OK", "429", "FAIL", "EMA_US", "COOLDOWN_MS",
    "SPENT_USD", "META"};

/* Micro-USD as dollars with 2 to 6 decimals: 100.00, 0.0025, 1.234567. */
static void usd(uint64_t micro, char *b, size_t n)
{
    int len = snprintf(b, n, "%" PRIu64 ".%06" PRIu64, micro / 1000000,
                       micro % 1000000);
    if (len < 0 || (size_t)len >= n)
        return;
    char *dot = strchr(b, '.');
    while (b + len - 1 > dot + 2 && b[len - 1] == '0')
        b[--len] = '\0';
}

static int col_window(int col)
{
    return col >= COL_RPM && col <= COL_TPD ? KM_WIN_RPM + (col - COL_RPM)
                                            : -1;
}

static void cell(const km_key_info *k, int col, uint64_t now, char *b,
                 size_t n)
{
    char u1[32], u2[32];
    int w = col_window(col);
    if (w >= 0) {
        const km_limit_info *l = &k->limits[w];
        if (l->limit)
            snprintf(b, n, "%" PRIu64 "/%" PRIu64, l->available, l->limit);
        else
            snprintf(b, n, "-");
        return;
    }
    switch (col) {
    case COL_ID:
        snprintf(b, n, "%s", k->id);
        break;
    case COL_SECRET:
        snprintf(b, n, "%s", k->secret_masked);
        break;
    case COL_STATE:
        snprintf(b, n, "%s", km_key_state_name(k->state));
        break;
    case COL_W:
        snprintf(b, n, "%" PRIu32, k->weight);
        break;
    case COL_INFLIGHT:
        snprintf(b, n, "%" PRIu32 "/%" PRIu32, k->inflight, k->max_inflight);
        break;
    case COL_ACQ:
        snprintf(b, n, "%" PRIu64, k->acquired);
        break;
    case COL_OK:
        snprintf(b, n, "%" PRIu64, k->outcomes[KM_OUT_SUCCESS]);
        break;
    case COL_429:
        snprintf(b, n, "%" PRIu64, k->outcomes[KM_OUT_RATE_LIMITED]);
        break;
    case COL_FAIL:
        snprintf(b, n, "%" PRIu64,
                 k->outcomes[KM_OUT_FAILURE] + k->outcomes[KM_OUT_AUTH] +
                     k->outcomes[KM_OUT_QUOTA]);
        break;
    case COL_EMA:
        if (k->latency_ema_us)
            snprintf(b, n, "%" PRIu64, k->latency_ema_us);
        else
            snprintf(b, n, "-");
        break;
    case COL_COOL:
        if (k->cooldown_until_ns > now)
            snprintf(b, n, "%" PRIu64, (k->cooldown_until_ns - now + 999999) / 1000000);
        else
            snprintf(b, n, "-");
        break;
    case COL_SPENT:
        usd(k->spent_microusd, u1, sizeof u1);
        if (k->budget_microusd) {
            usd(k->budget_microusd, u2, sizeof u2);
            snprintf(b, n, "%s/%s%s%s%s", u1, u2,
                     k->budget.period ? " per " : "",
                     k->budget.period ? budget_period_name(k->budget.period) : "",
                     k->budget_hard ? "" : " (soft)");
        } else {
            snprintf(b, n, "%s", u1);
        }
        break;
    case COL_META:
        snprintf(b, n, "%s", k->meta[0] ? k->meta : "-");
        break;
    default:
        b[0] = '\0';
    }
}

static void print_cell(const char *s, size_t w, int last)
{
    fputs(s, stdout);
    if (!last)
        for (size_t i = width(s); i < w + 2; i++)
            putchar(' ');
}

/* A key of the pool without own limits of model i (km_model_own_get),
 * else `first`. */
static int pool_limits_key(km_env *env, int pool, int i, uint32_t n_keys, int first)
{
    for (uint32_t j = 0; j < n_keys; j++) {
        int k = km_pool_key(env, pool, (int)j);
        uint32_t own = 1;
        if (k >= 0 && km_model_own_get(env, pool, i, k, &own) == KM_OK && own == 0)
            return k;
    }
    return first;
}

/* Per key with own limits of a model of the pool, one line: "key a, model
 * gpt-4o: rpm 10000 (own), tpm 30000" (the limits in force, the key's own
 * marked; the others are the pool's). */
static void own_model_lines(km_env *env, int pool, uint32_t n_models, const km_key_info *keys,
                            uint32_t n_keys)
{
    for (uint32_t j = 0; j < n_keys; j++) {
        int k = km_key_find(env, pool, keys[j].id);
        for (uint32_t i = 0; k >= 0 && i < n_models; i++) {
            char mname[KM_ID_MAX + 1];
            km_limit_info lim[KM_WIN_COUNT];
            uint32_t own = 0;
            if (km_model_own_get(env, pool, (int)i, k, &own) != KM_OK || !own ||
                km_model_info_get(env, pool, (int)i, k, mname, lim) != KM_OK)
                continue;
            printf("  key %s, model %s:", keys[j].id, mname);
            int any = 0;
            for (int w = 0; w < KM_WIN_COUNT; w++)
                if (lim[w].limit) {
                    printf("%s %s %" PRIu64 "%s%s", any ? "," : "", km_window_name(w), lim[w].limit,
                           lim[w].mode == KM_MODE_SLIDING ? " sliding" : "",
                           (own >> w) & 1 ? " (own)" : "");
                    any = 1;
                }
            putchar('\n');
        }
    }
}

static int inspect_pool(km_env *env, const char *name, int pool)
{
    km_pool_info pi;
    km_key_info *keys;
    size_t wid[NCOLS];
    int show[NCOLS], last = 0, rc;
    char b[KM_META_MAX + 64];
    uint64_t now;

    if ((rc = km_pool_info_get(env, pool, &pi)) != KM_OK)
        return seg_error(name, rc);
    printf("\npool %s: %s, %" PRIu32 " key%s, cooldown %" PRIu32
           "s (max %" PRIu32 "s), max_failures %" PRIu32,
           pi.name, km_strategy_name(pi.strategy), pi.n_keys,
           pi.n_keys == 1 ? "" : "s", pi.cooldown_s, pi.max_cooldown_s,
           pi.max_failures);
    if (pi.waiters)
        printf(", %" PRIu32 " waiting", pi.waiters);
    putchar('\n');
    if (pi.n_keys == 0)
        return EX_SUCCESS;
    if (pi.n_models || pi.model_mode == KM_MODELS_PER_MODEL) {
        int first = km_pool_key(env, pool, 0);
        printf("  models (%s limits):",
               pi.model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global");
        for (uint32_t i = 0; first >= 0 && i < pi.n_models; i++) {
            char mname[KM_ID_MAX + 1];
            km_limit_info lim[KM_WIN_COUNT];
            /* The pool's limits of the model: those of a key that has no
             * own limits of it (the first key if every key has). */
            int from = pool_limits_key(env, pool, (int)i, pi.n_keys, first);
            if (km_model_info_get(env, pool, i, from, mname, lim))
                break;
            printf("%s %s", i ? "," : "", mname);
            /* Per-model limits are the pool's on every key but those
             * listed below: show them once. */
            int any = 0;
            for (int w = 0; w < KM_WIN_COUNT; w++)
                if (lim[w].limit) {
                    printf("%s%s %" PRIu64, any ? ", " : " (", km_window_name(w),
                           lim[w].limit);
                    any = 1;
                }
            if (any)
                putchar(')');
        }
        putchar('\n');
    }
    if (pi.budget_microusd) {
        char pz[64] = "";
        km_budget_tz(env, pool, -1, pz, sizeof pz);
        fmt_budget_line("  budget: ", pi.budget_microusd, pi.budget_hard, pi.spent_microusd,
                        pi.budget.prev_spent_microusd, pi.budget.period_end_unix_ns, pi.budget.period,
                        pi.budget.tz_min, pz, pi.budget.warnings);
    } else if (pi.spent_microusd) {
        usd(pi.spent_microusd, b, sizeof b);
        printf("  spent: $%s\n", b);
    }
    keys = calloc(pi.n_keys, sizeof *keys);
    if (!keys) {
        errline("out of memory");
        return EX_FAILED;
    }
    /* Read every key once, then lay out from those copies.  A key removed
     * meanwhile (or still listed after a removal) is left out. */
    uint32_t nk = 0;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        int k = km_pool_key(env, pool, i);
        if (k == KM_ENOKEY || (k >= 0 && (rc = km_key_info_get(env, k, &keys[nk])) == KM_ENOKEY))
            continue;
        if (k < 0 || rc) {
            free(keys);
            return seg_error(name, k < 0 ? k : rc);
        }
        nk++;
    }
    pi.n_keys = nk;
    now = km_now_ns();
    for (int c = 0; c < NCOLS; c++) {
        int w = col_window(c);
        show[c] = 1;
        /* RPM and TPM always; the other windows only if some key uses them */
        if (w >= 0 && w != KM_WIN_RPM && w != KM_WIN_TPM) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].limits[w].limit != 0;
        }
        /* Spend where something is priced or budgeted; metadata if any. */
        if (c == COL_SPENT) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].price_in_microusd_per_1k != 0 ||
                           keys[i].price_out_microusd_per_1k != 0 ||
                           keys[i].budget_microusd != 0 ||
                           keys[i].spent_microusd != 0;
        }
        if (c == COL_META) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].meta[0] != '\0';
        }
        if (!show[c])
            continue;
        last = c;
        wid[c] = strlen(col_title[c]);
        for (uint32_t i = 0; i < pi.n_keys; i++) {
            cell(&keys[i], c, now, b, sizeof b);
            if (width(b) > wid[c])
                wid[c] = width(b);
        }
    }
    fputs("  ", stdout);
    for (int c = 0; c < NCOLS; c++)
        if (show[c])
            print_cell(col_title[c], wid[c], c == last);
    putchar('\n');
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        fputs("  ", stdout);
        for (int c = 0; c < NCOLS; c++) {
            if (!show[c])
                continue;
            cell(&keys[i], c, now, b, sizeof b);
            print_cell(b, wid[c], c == last);
        }
        putchar('\n');
    }
    if (pi.model_mode == KM_MODELS_PER_MODEL)
        own_model_lines(env, pool, pi.n_models, keys, pi.n_keys);
    free(keys);
    return EX_SUCCESS;
}

/* ------------------------------------------------------------- processes */

typedef struct proc_row {
    uint32_t slot;
    km_proc_info pi;
} proc_row;

/* Read every used slot of the process table into *rows (malloc'd, *n rows).
 * Each slot is read once; a process may attach or leave meanwhile. */
static int read_procs(km_env *env, const char *name, proc_row **rows,
                      uint32_t *n)
{
    km_info info;
    int rc = km_info_get(env, &info);
    if (rc != KM_OK)
        return seg_error(name, rc);
    *n = 0;
    *rows = calloc(info.cap_procs ? info.cap_procs : 1, sizeof **rows);
    if (!*rows) {
        errline("out of memory");
        return EX_FAILED;
    }
    for (uint32_t s = 0; s < info.cap_procs; s++) {
        rc = km_proc_info_get(env, s, &(*rows)[*n].pi);
        if (rc == KM_ENOSLOT) /* a free slot */
            continue;
        if (rc != KM_OK) {
            free(*rows);
            *rows = NULL;
            return seg_error(name, rc);
        }
        (*rows)[(*n)++].slot = s;
    }
    return EX_SUCCESS;
}

/* Whole milliseconds since `attached_ns` (as attached_ms in the JSON), or
 * "-" while the process attaches. */
static void attached_ms(uint64_t attached_ns, uint64_t now, char *b, size_t n)
{
    if (!attached_ns)
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%" PRIu64,
                 (now > attached_ns ? now - attached_ns : 0) / 1000000);
}

enum { PCOL_SLOT, PCOL_PID, PCOL_ALIVE, PCOL_LEASES, PCOL_ATTACHED, NPCOLS };

static const char *const pcol_title[NPCOLS] = {"SLOT", "PID", "ALIVE",
                                               "LEASES", "ATTACHED_MS"};

static void pcell(const proc_row *r, int col, uint64_t now, char *b, size_t n)
{
    switch (col) {
    case PCOL_SLOT:
        snprintf(b, n, "%" PRIu32, r->slot);
        break;
    case PCOL_PID:
        if (r->pi.pid)
            snprintf(b, n, "%" PRIu32, r->pi.pid);
        else
            snprintf(b, n, "-");
        break;
    case PCOL_ALIVE:
        snprintf(b, n, "%s", r->pi.alive ? "yes" : "no");
        break;
    case PCOL_LEASES:
        snprintf(b, n, "%" PRIu32, r->pi.leases);
        break;
    default:
        attached_ms(r->pi.attached_ns, now, b, n);
    }
}

/* The process table, indented by two spaces, kmctl's own row marked. */
static void print_proc_table(const proc_row *rows, uint32_t n, uint64_t now)
{
    size_t wid[NPCOLS];
    char b[32];
    uint32_t self = (uint32_t)getpid();

    for (int c = 0; c < NPCOLS; c++) {
        wid[c] = strlen(pcol_title[c]);
        for (uint32_t i = 0; i < n; i++) {
            pcell(&rows[i], c, now, b, sizeof b);
            if (strlen(b) > wid[c])
                wid[c] = strlen(b);
        }
    }
    fputs("  ", stdout);
    for (int c = 0; c < NPCOLS; c++)
        print_cell(pcol_title[c], wid[c], c == NPCOLS - 1);
    putchar('\n');
    for (uint32_t i = 0; i < n; i++) {
        int mine = rows[i].pi.pid == self;
        fputs("  ", stdout);
        for (int c = 0; c < NPCOLS; c++) {
            pcell(&rows[i], c, now, b, sizeof b);
            print_cell(b, wid[c], c == NPCOLS - 1 && !mine);
        }
        if (mine)
            fputs("(this kmctl)", stdout);
        putchar('\n');
    }
}

/* The process table as a JSON array (ps --json, inspect --json). */
static json_t *procs_json(const proc_row *rows, uint32_t n, uint64_t now)
{
    uint32_t self = (uint32_t)getpid();
    json_t *a = json_array();
    for (uint32_t i = 0; a && i < n; i++) {
        const km_proc_info *p = &rows[i].pi;
        json_t *o = json_pack("{s:o, s:o, s:b, s:o, s:o, s:b}", "slot", ju64(rows[i].slot),
                              "pid", ju64(p->pid), "alive", p->alive, "leases", ju64(p->leases),
                              "attached_ms",
                              p->attached_ns ? ju64((now > p->attached_ns ? now - p->attached_ns
                                                                          : 0) / 1000000)
                                             : json_null(),
                              "self", p->pid == self);
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* inspect's last section: "processes: N attached[, D dead]" and the table. */
static int inspect_procs(km_env *env, const char *name)
{
    proc_row *rows;
    uint32_t n, dead = 0;
    int rc = read_procs(env, name, &rows, &n);
    if (rc != EX_SUCCESS)
        return rc;
    for (uint32_t i = 0; i < n; i++)
        dead += !rows[i].pi.alive;
    printf("\nprocesses: %" PRIu32 " attached", n);
    if (dead)
        printf(", %" PRIu32 " dead (`kmctl reap %s` releases what they hold)",
               dead, name);
    putchar('\n');
    print_proc_table(rows, n, km_now_ns());
    free(rows);
    return EX_SUCCESS;
}

/* ---------------------------------------------------------------- epochs */

int lagging_readers(km_env *env, void (*fn)(void *ctx, const km_reader_info *ri), void *ctx)
{
    km_info info;
    km_epoch_info ei;
    int rc, n = 0;
    if ((rc = km_info_get(env, &info)) != KM_OK || (rc = km_epoch_info_get(env, &ei)) != KM_OK)
        return rc;
    for (uint32_t s = 0; s < info.cap_procs; s++)
        for (uint32_t r = 0; r < ei.rows_per_process; r++) {
            km_reader_info ri;
            if (km_reader_info_get(env, s, r, &ri) != KM_OK || !ri.alive || !ri.epochs_behind)
                continue;
            fn(ctx, &ri);
            n++;
        }
    return n;
}

/* One row of inspect's reader table, under its title the first time. */
static void reader_row(void *ctx, const km_reader_info *ri)
{
    int *rows = ctx;
    char tid[16];
    if ((*rows)++ == 0)
        printf("readers holding back reclamation:\n"
               "  PID      TID      EPOCHS_BEHIND  INSIDE_S\n");
    snprintf(tid, sizeof tid, "%" PRIu32, ri->tid);
    printf("  %-8" PRIu32 " %-8s %-14" PRIu64 " %.3f\n", ri->pid,
           ri->shared ? "shared" : tid, ri->epochs_behind, (double)ri->inside_ns / 1e9);
}

/* One reader holding back reclamation, as JSON (inspect --json). */
static void reader_json(void *ctx, const km_reader_info *ri)
{
    json_array_append_new(ctx, json_pack("{s:o, s:o, s:b, s:o, s:o}", "pid", ju64(ri->pid),
                                         "tid", ri->shared ? json_null() : ju64(ri->tid),
                                         "shared", ri->shared, "epochs_behind",
                                         ju64(ri->epochs_behind), "inside_ms",
                                         ju64(ri->inside_ns / 1000000)));
}

/* inspect's epoch section: the global epoch and every reader inside an
 * acquire that began before it (those hold back reclamation). */
static int inspect_epochs(km_env *env, const char *name)
{
    km_epoch_info ei;
    int rc = km_epoch_info_get(env, &ei), rows = 0;
    if (rc != KM_OK)
        return seg_error(name, rc);
    printf("\nepochs: epoch %" PRIu64 ", reclaimed up to %" PRIu64 ", %" PRIu64
           " reconfiguration%s\n", ei.epoch, ei.synced, ei.reconfigs,
           ei.reconfigs == 1 ? "" : "s");
    if ((rc = lagging_readers(env, reader_row, &rows)) < 0)
        return seg_error(name, rc);
    if (rows == 0)
        printf("no reader holds back reclamation\n");
    return EX_SUCCESS;
}

/* --------------------------------------------------------------- inspect */

/* ------------------------------------------------------------------ fleet */

static const char *store_state_name(int st)
{
    static const char *const n[] = {"none", "ok", "learning", "unreachable", "error"};
    return st >= 0 && st < (int)(sizeof n / sizeof n[0]) ? n[st] : "unknown";
}

/* Signed milliseconds from now to t (CLOCK_MONOTONIC ns). */
static int64_t ms_to(uint64_t t, uint64_t now)
{
    return t >= now ? (int64_t)((t - now) / 1000000) : -(int64_t)((now - t) / 1000000);
}

/* "in 1.2 s", "1.2 s ago", or "none" (t == 0). */
static void when(uint64_t t, uint64_t now, char *b, size_t n)
{
    if (!t) {
        snprintf(b, n, "none");
        return;
    }
    int64_t ms = ms_to(t, now);
    snprintf(b, n, ms >= 0 ? "in %.1f s" : "%.1f s ago", (double)(ms >= 0 ? ms : -ms) / 1000.0);
}

/* A fleet key's budget across the fleet: what this host and the others
 * spent in the period (the others' as the agent last applied it). */
static json_t *fleet_budget_json(const km_key_info *ki, const km_fleet_key_info *fi)
{
    return json_pack("{s:o, s:b, s:o, s:o, s:o}", "budget_microusd", ju64(ki->budget_microusd),
                     "hard", ki->budget_hard != 0, "spent_here_microusd",
                     ju64(ki->spent_microusd), "spent_others_microusd",
                     ju64(fi->spend_others_microusd), "spent_fleet_microusd",
                     ju64(ki->spent_microusd + fi->spend_others_microusd));
}

/* A fleet key's (or a model's on it) windows under the fleet into o:
 * "windows", "credit", "deadline_in_ms", ("share_ppm" for a key),
 * "fallback_ppm", "fallback_until_in_ms"; returns o. */
static json_t *fleet_info_json(json_t *o, const km_fleet_key_info *fi, uint64_t now, int share)
{
    json_t *cr = json_object(), *ws = json_array();
    for (int w = 0; w < KM_WIN_COUNT; w++)
        if (fi->mask & (1u << w)) {
            json_array_append_new(ws, json_string(km_window_name(w)));
            json_object_set_new(cr, km_window_name(w), ju64(fi->credit[w]));
        }
    json_object_set_new(o, "windows", ws);
    json_object_set_new(o, "credit", cr);
    json_object_set_new(o, "deadline_in_ms",
                        fi->deadline_ns ? json_integer(ms_to(fi->deadline_ns, now)) : json_null());
    if (share)
        json_object_set_new(o, "share_ppm", json_integer(fi->fb_ppm));
    json_object_set_new(o, "fallback_ppm", json_integer(fi->fb_ppm));
    json_object_set_new(o, "fallback_until_in_ms",
                        fi->fb_until_ns ? json_integer(ms_to(fi->fb_until_ns, now)) : json_null());
    return o;
}

/* The rest of a fleet line after its name: " credit rpm N ..., deadline
 * ..., share (fallback) P%, fallback until ...". */
static void fleet_info_print(const km_fleet_key_info *fi, uint64_t now)
{
    char b1[48], b2[48];
    printf(": credit");
    for (int w = 0; w < KM_WIN_COUNT; w++)
        if (fi->mask & (1u << w))
            printf(" %s %" PRIu64, km_window_name(w), fi->credit[w]);
    when(fi->deadline_ns, now, b1, sizeof b1);
    when(fi->fb_until_ns, now, b2, sizeof b2);
    printf(", deadline %s, share (fallback) %.1f%%, fallback until %s\n", b1,
           (double)fi->fb_ppm / 1e4, b2);
}

/* A fleet key's model windows (a per_model pool): per model under the
 * fleet, its credit per window, deadline and fallback share
 * (km_fleet_model_info_get).  Added to o as "models", or printed one line
 * each under the key's (print), or only counted; how many. */
static int inspect_fleet_models(km_env *env, int pool, const km_pool_info *pi, int k,
                                uint64_t now, json_t *o, int print)
{
    json_t *ms = o ? json_array() : NULL;
    char name[KM_ID_MAX + 1];
    km_limit_info li[KM_WIN_COUNT];
    int n = 0;
    for (uint32_t m = 0; pi->model_mode == KM_MODELS_PER_MODEL && m < pi->n_models; m++) {
        km_fleet_key_info fi;
        if (km_fleet_model_info_get(env, (uint32_t)k, m, &fi) != KM_OK || !fi.mask ||
            km_model_info_get(env, pool, (int)m, k, name, li) != KM_OK)
            continue;
        n++;
        if (!print && !o)
            continue;
        if (o) {
            json_array_append_new(ms, fleet_info_json(json_pack("{s:s}", "model", name), &fi, now, 0));
            continue;
        }
        printf("    model %s", name);
        fleet_info_print(&fi, now);
    }
    if (o)
        json_object_set_new(o, "models", ms);
    return n;
}

/* The fleet: the agent's status (km_fleet_status_get) and, per fleet key,
 * its share, credit per window, deadline and fallback window
 * (km_fleet_key_info_get), and its model windows' (inspect_fleet_models).
 * Printed (j NULL) or added to j as "fleet";
 * nothing for a segment without fleet keys or agent. */
static int inspect_fleet(km_env *env, const char *name, json_t *j)
{
    km_fleet_status st;
    km_info info;
    int rc;
    if ((rc = km_fleet_status_get(env, &st)) != KM_OK || (rc = km_info_get(env, &info)) != KM_OK)
        return seg_error(name, rc);
    uint64_t now = km_now_ns();
    json_t *keys = j ? json_array() : NULL;
    int header = 0;
    char b1[48], b2[48];
    for (uint32_t p = 0; p < info.n_pools; p++) {
        km_pool_info pi;
        if (km_pool_info_get(env, (int)p, &pi) != KM_OK)
            continue;
        for (uint32_t i = 0; i < pi.n_keys; i++) {
            int k = km_pool_key(env, (int)p, i);
            km_key_info ki;
            km_fleet_key_info fi;
            if (k < 0 || km_key_info_get(env, k, &ki) != KM_OK ||
                km_fleet_key_info_get(env, (uint32_t)k, &fi) != KM_OK ||
                (!fi.mask && !fi.spend_fleet && !inspect_fleet_models(env, (int)p, &pi, k, now, NULL, 0)))
                continue;
            if (j) {
                json_t *ko = fleet_info_json(json_pack("{s:s, s:s}", "pool", pi.name, "key", ki.id),
                                             &fi, now, 1);
                inspect_fleet_models(env, (int)p, &pi, k, now, ko, 0);
                if (fi.spend_fleet)
                    json_object_set_new(ko, "budget", fleet_budget_json(&ki, &fi));
                json_array_append_new(keys, ko);
                continue;
            }
            if (!header) {
                when(st.last_sync_ns, now, b1, sizeof b1);
                when(st.next_sync_ns, now, b2, sizeof b2);
                printf("\nfleet: store %s, epoch %" PRIu64 ", %" PRIu32 " host%s, last sync %s, "
                       "next sync %s%s\n",
                       store_state_name(st.store_state), st.epoch, st.n_hosts,
                       st.n_hosts == 1 ? "" : "s", b1, b2,
                       st.learn_ms ? ", learning" : "");
                header = 1;
            }
            printf("  %s/%s", pi.name, ki.id);
            fleet_info_print(&fi, now);
            if (fi.spend_fleet)
                printf("    budget (fleet-wide, %s): %.6f of %.6f USD spent by the fleet "
                       "(%.6f here, %.6f by the other hosts)\n",
                       ki.budget_hard ? "hard" : "soft",
                       (double)(ki.spent_microusd + fi.spend_others_microusd) / 1e6,
                       (double)ki.budget_microusd / 1e6, (double)ki.spent_microusd / 1e6,
                       (double)fi.spend_others_microusd / 1e6);
            inspect_fleet_models(env, (int)p, &pi, k, now, NULL, 1);
        }
    }
    if (j) {
        if (json_array_size(keys) == 0 && st.store_state == KM_FLEET_STORE_NONE && !st.epoch) {
            json_decref(keys);
            return EX_SUCCESS;
        }
        json_object_set_new(
            j, "fleet",
            json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "store_state",
                      store_state_name(st.store_state), "epoch", ju64(st.epoch), "seq",
                      ju64(st.seq), "ack", ju64(st.ack), "hosts", ju64(st.n_hosts), "learn_ms",
                      ju64(st.learn_ms), "last_sync_ago_ms",
                      st.last_sync_ns ? json_integer(-ms_to(st.last_sync_ns, now)) : json_null(),
                      "next_sync_in_ms",
                      st.next_sync_ns ? json_integer(ms_to(st.next_sync_ns, now)) : json_null(),
                      "keys", keys));
    }
    return EX_SUCCESS;
}

static int inspect_table(km_env *env, const char *name)
{
    km_info info;
    int rc = km_info_get(env, &info);
    if (rc != KM_OK)
        return seg_error(name, rc);
    uint32_t live = 0; /* info.n_pools counts removed pools' rows too */
    for (uint32_t p = 0; p < info.n_pools; p++) {
        km_pool_info pi;
        live += km_pool_info_get(env, (int)p, &pi) == KM_OK;
    }
    printf("segment %s: segment format %" PRIu32 ", %" PRIu32 " pool%s, %" PRIu32
           " key%s, %" PRIu64 " bytes, %" PRIu32
           " process%s attached\n",
           name, info.format, live, live == 1 ? "" : "s",
           info.n_keys, info.n_keys == 1 ? "" : "s", info.size_bytes,
           info.n_procs, info.n_procs == 1 ? "" : "es");
    printf("capacity: %" PRIu32 " key%s, %" PRIu32 " pool%s, %" PRIu32
           " process%s, %" PRIu32 " lease%s per key\n",
           info.cap_keys, info.cap_keys == 1 ? "" : "s", info.cap_pools,
           info.cap_pools == 1 ? "" : "s", info.cap_procs, info.cap_procs == 1 ? "" : "es",
           info.cap_inflight, info.cap_inflight == 1 ? "" : "s");
    for (uint32_t p = 0; p < info.n_pools; p++) {
        km_pool_info pi;
        if (km_pool_info_get(env, (int)p, &pi) == KM_ENOPOOL)
            continue; /* a pool removed live: its index stays unused */
        if ((rc = inspect_pool(env, name, (int)p)) != EX_SUCCESS)
            return rc;
    }
    if ((rc = inspect_fleet(env, name, NULL)) != EX_SUCCESS)
        return rc;
    if ((rc = inspect_procs(env, name)) != EX_SUCCESS)
        return rc;
    return inspect_epochs(env, name);
}

/* inspect --json: the snapshot's fields, its "format" named
 * "snapshot_format" (it versions the snapshot, not the segment), then the
 * process table and the epochs, under kmctl's document header. */
static int inspect_json(km_env *env, const char *name)
{
    char *js;
    json_error_t jerr;
    int rc = km_snapshot_json(env, &js);
    if (rc != KM_OK)
        return seg_error(name, rc);
    json_t *snap = json_loads(js, 0, &jerr), *d = jdoc("inspect", name, env);
    free(js);
    if (!snap || !d || !json_is_object(snap)) {
        json_decref(snap);
        json_decref(d);
        errline("segment '%s': cannot read the snapshot JSON", name);
        return EX_FAILED;
    }
    const char *k;
    json_t *v;
    json_object_foreach(snap, k, v)
        json_object_set(d, strcmp(k, "format") == 0 ? "snapshot_format" : k, v);
    json_decref(snap);
    proc_row *rows;
    uint32_t n;
    if ((rc = read_procs(env, name, &rows, &n)) != EX_SUCCESS) {
        json_decref(d);
        return rc;
    }
    json_object_set_new(d, "processes", procs_json(rows, n, km_now_ns()));
    free(rows);
    if ((rc = inspect_fleet(env, name, d)) != EX_SUCCESS) {
        json_decref(d);
        return rc;
    }
    km_epoch_info ei;
    if ((rc = km_epoch_info_get(env, &ei)) != KM_OK) {
        json_decref(d);
        return seg_error(name, rc);
    }
    json_t *readers = json_array();
    if ((rc = lagging_readers(env, reader_json, readers)) < 0) {
        json_decref(readers);
        json_decref(d);
        return seg_error(name, rc);
    }
    json_object_set_new(d, "epochs",
                        json_pack("{s:o, s:o, s:o, s:o}", "epoch", ju64(ei.epoch), "reclaimed_up_to",
                                  ju64(ei.synced), "reconfigurations", ju64(ei.reconfigs),
                                  "lagging_readers", readers));
    return jemit(d);
}

static const opt_spec json_optv[] = {OPT_FLAG("json", 'j', 1, flag_opts, on)};

const cmd_syntax inspect_syntax = {usage_inspect, "NAME", json_optv, N_OPTS(json_optv)};

int cmd_inspect(int argc, char **argv)
{
    flag_opts json = {0};
    const char *name;
    km_env *env;
    int rc;

    if ((rc = parse_and_open(&inspect_syntax, argc, argv, &json, &name, &env)) >= 0)
        return rc;
    rc = json.on ? inspect_json(env, name) : flush_stdout(inspect_table(env, name));
    km_close(env);
    return rc;
}

/* -------------------------------------------------------------------- ps */

const cmd_syntax ps_syntax = {usage_ps, "NAME", json_optv, N_OPTS(json_optv)};

int cmd_ps(int argc, char **argv)
{
    flag_opts json = {0};
    proc_row *rows;
    uint32_t n;
    const char *name;
    km_env *env;
    int rc;

    if ((rc = parse_and_open(&ps_syntax, argc, argv, &json, &name, &env)) >= 0)
        return rc;
    rc = read_procs(env, name, &rows, &n);
    if (rc == EX_SUCCESS && json.on) {
        json_t *d = jdoc("ps", name, env);
        if (d)
            json_object_set_new(d, "processes", procs_json(rows, n, km_now_ns()));
        free(rows);
        rc = jemit(d);
    } else if (rc == EX_SUCCESS) {
        print_proc_table(rows, n, km_now_ns());
        free(rows);
        rc = flush_stdout(rc);
    }
    km_close(env);
    return rc;
}
