/*
 * tools/kmctl/cmd_sync.c - fleet-wide limits (README "Fleet-wide limits"):
 * `sync`, the agent that keeps a segment's fleet credit topped up from the
 * ledger in Redis (tools/sync/agent.c), and `fleet`, what the ledger knows
 * (hosts, demand, grants, per key).  The store client is tools/sync/store.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kmctl.h"
#include "../sync/agent.h"
#include "../sync/store.h"

#define SYNC_PASSWORD_ENV "KEYMESH_STORE_PASSWORD"

const char usage_sync[] =
    "Usage: kmctl sync NAME --store redis://HOST[:PORT][/DB] --host-id ID [options]\n"
    "\n"
    "Run the fleet agent of segment NAME until SIGTERM or SIGINT: every sync\n"
    "period it reports this host's use of the segment's fleet keys to the\n"
    "ledger in Redis and tops up their credit with what the ledger grants\n"
    "(README, \"Fleet-wide limits\").  One agent per segment and one host id\n"
    "per agent.  On SIGTERM it hands unused credit back and exits 0.  Log\n"
    "lines go to standard error; the password never appears in them.\n"
    "\n"
    "Options:\n"
    "  --store URL                 redis://[USER@]HOST[:PORT][/DB] (no password in it)\n"
    "  --host-id ID                this host's name in the fleet, [A-Za-z0-9_.-]{1,64}\n"
    "  --fleet NAME                the fleet (ledger keys {km:NAME}:...); default 'default'\n"
    "  --store-password-env VAR    the password from this environment variable\n"
    "                              (default " SYNC_PASSWORD_ENV ")\n"
    "  --store-password-file PATH  else from this file (mode 0600 or stricter)\n"
    "  --sync-ms MS                sync period S (default 250)\n"
    "  --valid-ms MS               credit validity V (default 1000, >= S)\n"
    "  --fallback-ms MS            fallback period F (default 15000, >= V)\n"
    "  --policy stop|local         when credit and fallback have lapsed: refuse\n"
    "                              (stop, the default) or the local limits alone\n"
    "  --timeout-ms MS             connect and reply timeout (default 1000)\n"
    "  -h, --help                  show this help\n"
    "\n"
    "Exit status: 0 stopped by SIGTERM/SIGINT (credit handed back, or the\n"
    "store did not answer); 1 failure; 2 usage error; 3 no such segment, or\n"
    "another live agent holds it.\n"
    "\n"
    "Example:\n"
    "  KEYMESH_STORE_PASSWORD=... kmctl sync llm --store redis://10.0.0.5:6379 --host-id web-1\n";

const char usage_fleet[] =
    "Usage: kmctl fleet NAME --store redis://HOST[:PORT][/DB] [options]\n"
    "\n"
    "Show what the fleet ledger in Redis knows: its epoch, every host (when\n"
    "it last synced, whether it may be on its fallback share) and, per key\n"
    "and window, each host's demand, share, credit out and fallback share,\n"
    "and the bucket's room and credit reserved.  Keys of segment NAME are\n"
    "named by pool and key id; others by their fleet id.  Read only.\n"
    "\n"
    "Options:\n"
    "  --store URL                 redis://[USER@]HOST[:PORT][/DB]\n"
    "  --fleet NAME                the fleet; default 'default'\n"
    "  --store-password-env VAR    the password from this environment variable\n"
    "                              (default " SYNC_PASSWORD_ENV ")\n"
    "  --store-password-file PATH  else from this file\n"
    "  --timeout-ms MS             connect and reply timeout (default 1000)\n"
    "  --json                      one JSON document\n"
    "  -h, --help                  show this help\n"
    "\n"
    "Exit status: 0 success; 1 failure (store unreachable, wrong password,\n"
    "...); 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl fleet llm --store redis://10.0.0.5:6379\n";

typedef struct sync_opts {
    const char *store, *host_id, *fleet, *pw_env, *pw_file, *policy;
    opt_u32 sync_ms, valid_ms, fallback_ms, timeout_ms;
    int json;
} sync_opts;

static const opt_spec sync_opt_spec[] = {
    OPT_STR("store", 1, 0, sync_opts, store),
    OPT_STR("host-id", 2, 0, sync_opts, host_id),
    OPT_STR("fleet", 3, 0, sync_opts, fleet),
    OPT_STR("store-password-env", 4, 0, sync_opts, pw_env),
    OPT_STR("store-password-file", 5, 0, sync_opts, pw_file),
    OPT_U32("sync-ms", 6, 0, sync_opts, sync_ms, 1, 60000),
    OPT_U32("valid-ms", 7, 0, sync_opts, valid_ms, 1, 600000),
    OPT_U32("fallback-ms", 8, 0, sync_opts, fallback_ms, 1, 3600000),
    OPT_STR("policy", 9, 0, sync_opts, policy),
    OPT_U32("timeout-ms", 10, 0, sync_opts, timeout_ms, 1, 60000),
};

static const opt_spec fleet_opt_spec[] = {
    OPT_STR("store", 1, 0, sync_opts, store),
    OPT_STR("fleet", 3, 0, sync_opts, fleet),
    OPT_STR("store-password-env", 4, 0, sync_opts, pw_env),
    OPT_STR("store-password-file", 5, 0, sync_opts, pw_file),
    OPT_U32("timeout-ms", 10, 0, sync_opts, timeout_ms, 1, 60000),
    OPT_FLAG("json", 11, 0, sync_opts, json),
};

const cmd_syntax sync_syntax = {usage_sync, "NAME", sync_opt_spec, N_OPTS(sync_opt_spec)};
const cmd_syntax fleet_syntax = {usage_fleet, "NAME", fleet_opt_spec, N_OPTS(fleet_opt_spec)};

static int valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > KMS_ID_MAX)
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

/* The store options both commands share: URL, fleet, password.  -1 to go
 * on (*pw to free with kms_password_free), else an exit status. */
static int store_setup(sync_opts *o, kms_url *url, char **pw)
{
    char err[512];
    *pw = NULL;
    if (!o->store)
        return usage_error("--store URL is required");
    if (!o->fleet)
        o->fleet = "default";
    if (!valid_id(o->fleet))
        return usage_error("--fleet: '%s' is not 1-64 characters of [A-Za-z0-9_.-]", o->fleet);
    if (kms_url_parse(o->store, url, err, sizeof err) != KMS_OK)
        return usage_error("--store: %s", err);
    if (kms_password_load(o->pw_env ? o->pw_env : SYNC_PASSWORD_ENV, o->pw_file, pw, err,
                          sizeof err) != KMS_OK) {
        errline("%s", err);
        return EX_FAILED;
    }
    if (!o->timeout_ms.given)
        o->timeout_ms.v = 1000;
    return -1;
}

/* ------------------------------------------------------------------- sync */

static volatile sig_atomic_t g_stop;

static void on_stop(int sig)
{
    (void)sig;
    g_stop = 1;
}

int cmd_sync(int argc, char **argv)
{
    sync_opts o = {0};
    kms_url url;
    char *pw = NULL;
    km_env *env = NULL;
    int rc, policy = KM_FLEET_STOP;

    if ((rc = parse_args(&sync_syntax, argc, argv, &o)) >= 0)
        return rc;
    const char *name = argv[optind];
    if (!o.host_id)
        return usage_error("--host-id ID is required");
    if (!valid_id(o.host_id))
        return usage_error("--host-id: '%s' is not 1-64 characters of [A-Za-z0-9_.-]", o.host_id);
    if (o.policy && strcmp(o.policy, "stop") != 0) {
        if (strcmp(o.policy, "local") != 0)
            return usage_error("--policy: '%s' is not stop or local", o.policy);
        policy = KM_FLEET_LOCAL;
    }
    unsigned S = o.sync_ms.given ? o.sync_ms.v : 250;
    unsigned V = o.valid_ms.given ? o.valid_ms.v : (S > 1000 ? 4 * S : 1000);
    unsigned F = o.fallback_ms.given ? o.fallback_ms.v : (V > 15000 ? V : 15000);
    if (V < S || F < V)
        return usage_error("need --sync-ms <= --valid-ms <= --fallback-ms (%u, %u, %u)", S, V, F);
    if ((rc = store_setup(&o, &url, &pw)) >= 0)
        return rc;
    if ((rc = open_seg(name, &env)) != EX_SUCCESS) {
        kms_password_free(pw);
        return rc;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    kma_opts ao = {.segment = name,
                   .host_id = o.host_id,
                   .fleet = o.fleet,
                   .url = &url,
                   .password = pw,
                   .sync_ms = S,
                   .valid_ms = V,
                   .fallback_ms = F,
                   .timeout_ms = o.timeout_ms.v,
                   .policy = policy,
                   .log = stderr};
    rc = kma_run(env, &ao, &g_stop);
    km_close(env);
    kms_password_free(pw);
    return rc == KMA_EX_OK ? EX_SUCCESS : rc == KMA_EX_BUSY ? EX_NOTFOUND : EX_FAILED;
}

/* ------------------------------------------------------------------ fleet */

/* A fleet id of segment NAME's keys, with its pool and key id, and the
 * model of a model's windows ("" for the key's own). */
typedef struct kid_name {
    char kid[KMS_ID_MAX + 1];
    char pool[KM_ID_MAX + 1], key[KM_ID_MAX + 1], model[KM_ID_MAX + 1];
} kid_name;

/* Room for one more name in *out; NULL when out of memory. */
static kid_name *kid_push(kid_name **out, size_t *n, size_t *cap)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 16;
        kid_name *g = realloc(*out, c * sizeof *g);
        if (!g)
            return NULL;
        *out = g;
        *cap = c;
    }
    kid_name *x = &(*out)[(*n)++];
    memset(x, 0, sizeof *x);
    return x;
}

/* The names of key k's model windows (a per_model pool's models), after
 * the key's own name x. */
static int kid_models(km_env *env, int p, const km_pool_info *pi, int k, kid_name **out,
                      size_t *n, size_t *cap)
{
    char model[KM_ID_MAX + 1];
    km_limit_info li[KM_WIN_COUNT];
    for (uint32_t m = 0; pi->model_mode == KM_MODELS_PER_MODEL && m < pi->n_models; m++) {
        if (km_model_info_get(env, p, (int)m, k, model, li) != KM_OK)
            continue;
        size_t key = *n - 1; /* the key's own entry: *out may move */
        kid_name *x = kid_push(out, n, cap);
        if (!x)
            return KM_ENOMEM;
        const kid_name *y = &(*out)[key];
        memcpy(x->pool, y->pool, sizeof x->pool);
        memcpy(x->key, y->key, sizeof x->key);
        snprintf(x->model, sizeof x->model, "%s", model);
        kms_kid(x->pool, x->key, NULL, model, x->kid);
    }
    return KM_OK;
}

static int kid_names(km_env *env, kid_name **out, size_t *n)
{
    km_info in;
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    int rc = km_info_get(env, &in);
    if (rc != KM_OK)
        return rc;
    for (uint32_t p = 0; p < in.n_pools; p++) {
        km_pool_info pi;
        if (km_pool_info_get(env, (int)p, &pi) != KM_OK)
            continue;
        if (pi.budget_microusd) { /* the pool's budget, if the fleet counts it */
            kid_name *x = kid_push(out, n, &cap);
            if (!x)
                return KM_ENOMEM;
            snprintf(x->pool, sizeof x->pool, "%s", pi.name);
            x->key[0] = '\0';
            kms_pool_bid(pi.name, x->kid);
        }
        for (uint32_t i = 0; i < pi.n_keys; i++) {
            int k = km_pool_key(env, (int)p, (int)i);
            km_key_info ki;
            if (k < 0 || km_key_info_get(env, k, &ki) != KM_OK)
                continue;
            kid_name *x = kid_push(out, n, &cap);
            if (!x)
                return KM_ENOMEM;
            snprintf(x->pool, sizeof x->pool, "%s", pi.name);
            snprintf(x->key, sizeof x->key, "%s", ki.id);
            if (kms_fleet_id(pi.name, ki.id, x->kid) != KMS_OK)
                x->kid[0] = '\0';
            if ((rc = kid_models(env, (int)p, &pi, k, out, n, &cap)) != KM_OK)
                return rc;
        }
    }
    return KM_OK;
}

/* "<kid>/<window>" into the key's name in this segment ("pool/key", "pool/key
 * model M" for a model's windows, or the kid) and the window's name. */
static void kw_split(const char *kw, const kid_name *names, size_t n, char *who, size_t wlen,
                     const char **win)
{
    char kid[2 * KMS_ID_MAX + 8];
    snprintf(kid, sizeof kid, "%s", kw);
    char *slash = strrchr(kid, '/');
    *win = "?";
    if (slash) {
        *slash = '\0';
        const char *w = km_window_name(atoi(slash + 1));
        *win = w ? w : "?";
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i].kid, kid) == 0) {
            if (names[i].model[0]) /* a model's windows on the key */
                snprintf(who, wlen, "%s/%s model %s", names[i].pool, names[i].key, names[i].model);
            else
                snprintf(who, wlen, "%s/%s", names[i].pool, names[i].key);
            return;
        }
    snprintf(who, wlen, "%s", kid);
}

/* A budget's id (its key's fleet id, or its pool's) into the key's name
 * ("pool/key") or the pool's ("pool NAME") in this segment. */
static void bid_name(const char *bid, const kid_name *names, size_t n, char *who, size_t wlen)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i].kid, bid) == 0) {
            if (names[i].key[0])
                snprintf(who, wlen, "%s/%s", names[i].pool, names[i].key);
            else /* a pool's budget */
                snprintf(who, wlen, "pool %s", names[i].pool);
            return;
        }
    snprintf(who, wlen, "%s", bid);
}

/* A period's start (UTC seconds) as "YYYY-MM-DDTHH:MM:SSZ"; 0: "lifetime". */
static const char *period_text(uint64_t start, char *b, size_t n)
{
    if (!start) {
        snprintf(b, n, "lifetime");
        return b;
    }
    time_t t = (time_t)start;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(b, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return b;
}

/* The spend budgets the ledger counts (ledger version 2): JSON rows. */
static json_t *fleet_budgets_json(const kms_info *in, const kid_name *names, size_t nn)
{
    json_t *a = json_array();
    char who[2 * KMS_ID_MAX + 8];
    for (size_t i = 0; a && i < in->n_budgets; i++) {
        const kms_info_budget *b = &in->budgets[i];
        bid_name(b->bid, names, nn, who, sizeof who);
        json_array_append_new(
            a, json_pack("{s:s,s:s,s:o,s:o,s:o,s:o}", "budget", b->bid, "key", who,
                         "period_start", ju64(b->period_start), "spent_microusd", ju64(b->total),
                         "prev_period_start", ju64(b->prev_start), "prev_spent_microusd",
                         ju64(b->prev_total)));
    }
    return a;
}

static int fleet_budgets_text(const kms_info *in, const kid_name *names, size_t nn)
{
    char who[2 * KMS_ID_MAX + 8], p1[32], p2[32];
    table t;
    if (!in->n_budgets)
        return EX_SUCCESS;
    printf("budgets (spend reported by every host, USD):\n");
    tbl_init(&t, 5);
    const char *hd[] = {"KEY", "PERIOD FROM", "SPENT", "PREVIOUS FROM", "PREVIOUS SPENT"};
    for (size_t i = 0; i < 5; i++)
        tbl_cell(&t, "%s", hd[i]);
    for (size_t i = 0; i < in->n_budgets; i++) {
        const kms_info_budget *b = &in->budgets[i];
        bid_name(b->bid, names, nn, who, sizeof who);
        tbl_cell(&t, "%s", who);
        tbl_cell(&t, "%s", period_text(b->period_start, p1, sizeof p1));
        tbl_cell(&t, "%.6f", (double)b->total / 1e6);
        tbl_cell(&t, "%s", b->prev_start ? period_text(b->prev_start, p2, sizeof p2) : "-");
        tbl_cell(&t, "%.6f", (double)b->prev_total / 1e6);
    }
    int rc = tbl_print(&t, "  ");
    tbl_free(&t);
    return rc;
}

static int fleet_json(const sync_opts *o, const char *name, km_env *env, const kms_url *url,
                      const kms_info *in, const kid_name *names, size_t nn)
{
    json_t *d = jdoc("fleet", name, env), *hosts = json_array(), *keys = json_array();
    char who[3 * KMS_ID_MAX + 16];
    const char *win;
    if (!d || !hosts || !keys) {
        json_decref(hosts);
        json_decref(keys);
        return jemit(NULL);
    }
    json_object_set_new(d, "fleet", jstr(o->fleet));
    json_object_set_new(d, "store", json_pack("{s:s,s:I,s:I}", "host", url->host, "port",
                                              (json_int_t)url->port, "db", (json_int_t)url->db));
    json_object_set_new(d, "ledger_version", json_integer(in->version));
    json_object_set_new(d, "epoch", ju64(in->epoch));
    json_object_set_new(d, "learn_ms", ju64(in->learn_ms));
    for (size_t i = 0; i < in->n_kws; i++) {
        const kms_info_kw *k = &in->kws[i];
        kw_split(k->kw, names, nn, who, sizeof who, &win);
        json_array_append_new(
            keys, json_pack("{s:s,s:s,s:s,s:o,s:o,s:o,s:s,s:b,s:I,s:o}", "kw", k->kw, "key", who,
                            "window", win, "limit", ju64(k->limit), "burst", ju64(k->burst),
                            "period_ms", ju64(k->period_ms), "mode", mode_name(k->mode), "strict",
                            k->strict, "room", (json_int_t)k->room, "reserved",
                            ju64(k->reserved)));
    }
    for (size_t h = 0; h < in->n_hosts; h++) {
        const kms_info_host *x = &in->hosts[h];
        json_t *rows = json_array();
        for (size_t r = 0; r < x->n_rows; r++) {
            const kms_info_row *w = &x->rows[r];
            kw_split(w->kw, names, nn, who, sizeof who, &win);
            json_array_append_new(
                rows, json_pack("{s:s,s:s,s:s,s:o,s:I,s:o,s:I}", "kw", w->kw, "key", who, "window",
                                win, "demand", ju64(w->demand), "share_ppm",
                                (json_int_t)w->share_ppm, "out", ju64(w->out), "fb_ppm",
                                (json_int_t)w->fb_ppm));
        }
        json_array_append_new(hosts, json_pack("{s:s,s:o,s:b,s:o}", "host", x->host, "age_ms",
                                               ju64(x->age_ms), "silent", x->silent, "rows",
                                               rows));
    }
    json_object_set_new(d, "hosts", hosts);
    json_object_set_new(d, "keys", keys);
    json_object_set_new(d, "budgets", fleet_budgets_json(in, names, nn));
    return jemit(d);
}

static int fleet_text(const sync_opts *o, const kms_url *url, const kms_info *in,
                      const kid_name *names, size_t nn)
{
    char who[3 * KMS_ID_MAX + 16];
    const char *win;
    table t;
    printf("fleet '%s' at %s:%u/%u: ledger version %d, epoch %" PRIu64, o->fleet, url->host,
           url->port, url->db, in->version, in->epoch);
    if (in->learn_ms)
        printf(", learning for %" PRIu64 " ms more", in->learn_ms);
    printf(", %zu host%s\n", in->n_hosts, in->n_hosts == 1 ? "" : "s");
    if (in->n_kws) {
        printf("keys:\n");
        tbl_init(&t, 9);
        const char *hd[] = {"KEY", "WINDOW", "LIMIT", "PERIOD", "BURST", "MODE", "STRICT",
                            "ROOM", "RESERVED"};
        for (size_t i = 0; i < 9; i++)
            tbl_cell(&t, "%s", hd[i]);
        for (size_t i = 0; i < in->n_kws; i++) {
            const kms_info_kw *k = &in->kws[i];
            kw_split(k->kw, names, nn, who, sizeof who, &win);
            tbl_cell(&t, "%s", who);
            tbl_cell(&t, "%s", win);
            tbl_cell(&t, "%" PRIu64, k->limit);
            tbl_cell(&t, "%" PRIu64 " ms", k->period_ms);
            tbl_cell(&t, "%" PRIu64, k->burst);
            tbl_cell(&t, "%s", mode_name(k->mode));
            tbl_cell(&t, "%s", k->strict ? "yes" : "no");
            tbl_cell(&t, "%" PRId64, k->room);
            tbl_cell(&t, "%" PRIu64, k->reserved);
        }
        if (tbl_print(&t, "  ") != EX_SUCCESS) {
            tbl_free(&t);
            return EX_FAILED;
        }
        tbl_free(&t);
    }
    if (in->n_hosts) {
        printf("hosts:\n");
        tbl_init(&t, 9);
        const char *hd[] = {"HOST", "AGE", "SILENT", "KEY", "WINDOW", "DEMAND/S", "SHARE",
                            "CREDIT OUT", "FALLBACK"};
        for (size_t i = 0; i < 9; i++)
            tbl_cell(&t, "%s", hd[i]);
        for (size_t h = 0; h < in->n_hosts; h++) {
            const kms_info_host *x = &in->hosts[h];
            for (size_t r = 0; r < (x->n_rows ? x->n_rows : 1); r++) {
                tbl_cell(&t, "%s", r ? "" : x->host);
                if (r)
                    tbl_cell(&t, "%s", "");
                else
                    tbl_cell(&t, "%" PRIu64 " ms", x->age_ms);
                tbl_cell(&t, "%s", r ? "" : x->silent ? "yes" : "no");
                if (!x->n_rows) {
                    for (int c = 0; c < 6; c++)
                        tbl_cell(&t, "-");
                    continue;
                }
                const kms_info_row *w = &x->rows[r];
                kw_split(w->kw, names, nn, who, sizeof who, &win);
                tbl_cell(&t, "%s", who);
                tbl_cell(&t, "%s", win);
                tbl_cell(&t, "%" PRIu64, w->demand);
                tbl_cell(&t, "%.1f%%", w->share_ppm / 1e4);
                tbl_cell(&t, "%" PRIu64, w->out);
                tbl_cell(&t, "%.1f%%", w->fb_ppm / 1e4);
            }
        }
        if (tbl_print(&t, "  ") != EX_SUCCESS) {
            tbl_free(&t);
            return EX_FAILED;
        }
        tbl_free(&t);
    }
    if (fleet_budgets_text(in, names, nn) != EX_SUCCESS)
        return EX_FAILED;
    return flush_stdout(EX_SUCCESS);
}

int cmd_fleet(int argc, char **argv)
{
    sync_opts o = {0};
    kms_url url;
    char *pw = NULL, err[512];
    km_env *env = NULL;
    kms_store *st = NULL;
    kms_info in = {0};
    kid_name *names = NULL;
    size_t nn = 0;
    int rc;

    if ((rc = parse_args(&fleet_syntax, argc, argv, &o)) >= 0)
        return rc;
    const char *name = argv[optind];
    if ((rc = store_setup(&o, &url, &pw)) >= 0)
        return rc;
    if ((rc = open_seg_as(name, KM_OPEN_READONLY, &env)) != EX_SUCCESS) {
        kms_password_free(pw);
        return rc;
    }
    signal(SIGPIPE, SIG_IGN);
    kms_opts so = {.url = &url,
                   .password = pw,
                   .fleet = o.fleet,
                   .connect_timeout_ms = o.timeout_ms.v,
                   .io_timeout_ms = o.timeout_ms.v};
    if ((rc = kid_names(env, &names, &nn)) != KM_OK) {
        rc = seg_error(name, rc);
        goto out;
    }
    if (kms_open(&so, &st, err, sizeof err) != KMS_OK || kms_info_get(st, &in, err, sizeof err)) {
        errline("%s", err);
        rc = EX_FAILED;
        goto out;
    }
    rc = o.json ? fleet_json(&o, name, env, &url, &in, names, nn)
                : fleet_text(&o, &url, &in, names, nn);
out:
    kms_info_free(&in);
    if (st)
        kms_close(st);
    free(names);
    km_close(env);
    kms_password_free(pw);
    return rc;
}
