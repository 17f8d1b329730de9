/*
 * tools/kmctl/cmd_pools.c - add-pool, set-pool, remove-pool: pools changed
 * while workers run (km_pool_add, km_pool_set, km_pool_remove).  Each
 * prints one line saying what changed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kmctl.h"

const char usage_add_pool[] =
    "Usage: kmctl add-pool NAME --config FILE [--timeout MS]\n"
    "\n"
    "Add a pool to segment NAME while workers acquire and release.  FILE\n"
    "holds one pool as in the configuration (an element of \"pools\": name,\n"
    "strategy, limits, models, budget, keys..., or a preset), or a whole\n"
    "configuration with exactly one pool (its \"capacity\" is ignored: the\n"
    "segment's stands).  Secrets are checked against the segment's keys.\n"
    "Workers attached find the pool by name without attaching again.  Pools\n"
    "are bounded by capacity.pools, keys by capacity.keys, both fixed at\n"
    "creation; a removed pool's row is reused once its leases are back.\n"
    "Prints one line: the pool added, its strategy and keys.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE  the pool (JSON)\n"
    "  --timeout MS       longest wait for a grace period (default 1000)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit status: 0 added; 1 failure (invalid pool, a pool of that name\n"
    "already, capacity full: the message says which); 2 usage error; 3 no\n"
    "such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl add-pool llm --config groq.json\n";

const char usage_set_pool[] =
    "Usage: kmctl set-pool NAME POOL JSON [--timeout MS]\n"
    "\n"
    "Change pool POOL while workers run.  JSON names what changes:\n"
    "  \"strategy\", \"cooldown_s\", \"max_cooldown_s\", \"max_failures\";\n"
    "  \"budget\": an object as in the configuration, or null for none;\n"
    "  \"limits\": windows (rpm, rph, rpd, tpm, tph, tpd) set on every key of\n"
    "      the pool and for keys added later; null removes a window; a\n"
    "      window's debt carries over in units, as with set-limits;\n"
    "  \"models\": {\"NAME\": {limits}}: a model of the pool gets these limits\n"
    "      (per_model pools; a key's own limits of it stand); a model not in\n"
    "      it is appended, up to capacity.models, if the pool has a models list.\n"
    "A model cannot be removed or renamed, nor the pool's name,\n"
    "model_limits, price or max_inflight changed (recreate the pool).  An\n"
    "acquire that starts after the command returns sees only the new\n"
    "settings.  While limits change (one grace period) acquirers skip the\n"
    "pool's keys.  Prints one line: each setting that changed, old -> new.\n"
    "\n"
    "Options:\n"
    "  --timeout MS   longest wait for a grace period (default 1000)\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 changed; 1 failure (invalid settings, capacity, a stalled\n"
    "reader: the message says which); 2 usage error; 3 no such segment or\n"
    "pool.\n"
    "\n"
    "Example:\n"
    "  kmctl set-pool llm openai '{\"strategy\": \"least_busy\", \"limits\": {\"rpm\": 500}}'\n";

const char usage_remove_pool[] =
    "Usage: kmctl remove-pool NAME POOL [--timeout-ms MS] [--force]\n"
    "\n"
    "Remove pool POOL from segment NAME.  Acquires are refused at once; the\n"
    "command then waits for the pool's leases to come back.  If some are\n"
    "still out after the timeout nothing is removed (the pool is handed out\n"
    "again) and the command fails, unless --force: then the pool goes and\n"
    "those leases' releases are stale (counted, nothing charged).  After it\n"
    "returns no acquire gets a key of the pool.  Prints one line: the pool\n"
    "removed and its keys.\n"
    "\n"
    "Options:\n"
    "  --timeout-ms MS  longest wait for the pool's leases (default 10000)\n"
    "  -f, --force      remove even if leases are still out then\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: 0 removed; 1 failure (leases still out, a stalled reader:\n"
    "nothing removed); 2 usage error; 3 no such segment or pool.\n"
    "\n"
    "Example:\n"
    "  kmctl remove-pool llm groq --timeout-ms 30000\n";

typedef struct pool_opts {
    const char *config;
    opt_u32 timeout_ms, wait_ms;
    int force;
} pool_opts;

static const opt_spec add_pool_optv[] = {
    OPT_STR("config", 'c', 1, pool_opts, config),
    OPT_U32("timeout", 't', 0, pool_opts, timeout_ms, 0, 3600000),
};
static const opt_spec set_pool_optv[] = {
    OPT_U32("timeout", 't', 0, pool_opts, timeout_ms, 0, 3600000),
};
static const opt_spec remove_pool_optv[] = {
    OPT_U32("timeout-ms", 't', 0, pool_opts, wait_ms, 0, 86400000),
    OPT_FLAG("force", 'f', 1, pool_opts, force),
};

const cmd_syntax add_pool_syntax = {usage_add_pool, "NAME", add_pool_optv, N_OPTS(add_pool_optv)};
const cmd_syntax set_pool_syntax = {usage_set_pool, "NAME POOL JSON", set_pool_optv,
                                    N_OPTS(set_pool_optv)};
const cmd_syntax remove_pool_syntax = {usage_remove_pool, "NAME POOL", remove_pool_optv,
                                       N_OPTS(remove_pool_optv)};

/* The pool object of FILE (a pool, or a configuration of one pool) as
 * JSON text (malloc'd), or NULL after an errline. */
static char *pool_text(const char *path)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je), *pool = root;
    char *text = NULL;
    if (!root) {
        /* jansson's position and text; the token is not shown (a secret
         * may be near it), as the library's parser does not show it. */
        errline("config '%s':%d:%d: %s", path, je.line, je.column,
                json_error_code(&je) == json_error_cannot_open_file ? strerror(errno)
                                                                     : "invalid JSON");
        return NULL;
    }
    json_t *pools = json_is_object(root) ? json_object_get(root, "pools") : NULL;
    if (pools) {
        if (!json_is_array(pools) || json_array_size(pools) != 1) {
            errline("config '%s': a configuration given to add-pool must hold exactly one pool",
                    path);
            json_decref(root);
            return NULL;
        }
        pool = json_array_get(pools, 0);
    }
    text = json_dumps(pool, JSON_COMPACT);
    json_decref(root);
    if (!text)
        errline("config '%s': out of memory", path);
    return text;
}

int cmd_add_pool(int argc, char **argv)
{
    pool_opts o = {.timeout_ms = {.v = 1000}};
    km_env *env;
    char err[512] = "";
    int rc;
    if ((rc = parse_args(&add_pool_syntax, argc, argv, &o)) >= 0)
        return rc;
    if (!o.config)
        return usage_error("--config FILE is required");
    char *text = pool_text(o.config);
    if (!text)
        return EX_FAILED;
    if ((rc = open_seg(argv[optind], &env)) != EX_SUCCESS) {
        explicit_bzero(text, strlen(text));
        free(text);
        return rc;
    }
    km_set_admin_timeout(env, o.timeout_ms.v);
    int p = km_pool_add(env, text, err, sizeof err);
    explicit_bzero(text, strlen(text)); /* it holds the secrets */
    free(text);
    km_pool_info pi;
    if (p >= 0 && km_pool_info_get(env, p, &pi) == KM_OK) {
        printf("added pool '%.*s' to segment '%s' (%s, %" PRIu32 " key%s, %" PRIu32 " model%s)\n",
               KM_ID_MAX, pi.name, argv[optind], km_strategy_name(pi.strategy), pi.n_keys,
               pi.n_keys == 1 ? "" : "s", pi.n_models, pi.n_models == 1 ? "" : "s");
        rc = flush_stdout(EX_SUCCESS);
    } else if (p >= 0) {
        printf("added a pool to segment '%s'\n", argv[optind]);
        rc = flush_stdout(EX_SUCCESS);
    } else {
        errline("segment '%s': %s%s%s", argv[optind], err_text(p, errno), err[0] ? ": " : "", err);
        rc = exit_for(p == KM_ENOPOOL ? KM_EINVAL : p);
    }
    km_close(env);
    return rc;
}

/* ", what old -> new" for each setting that differs, into b at *n. */
static void pool_diff(const km_pool_info *a, const km_pool_info *b, char *s, size_t len, size_t *n)
{
#define KM__DIFF(cond, ...)                                                        \
    do {                                                                           \
        if ((cond) && *n < len)                                                    \
            *n += (size_t)snprintf(s + *n, len - *n, "%s", *n ? ", " : ""),        \
                *n += *n < len ? (size_t)snprintf(s + *n, len - *n, __VA_ARGS__) : 0; \
    } while (0)
    KM__DIFF(a->strategy != b->strategy, "strategy %s -> %s", km_strategy_name(a->strategy),
             km_strategy_name(b->strategy));
    KM__DIFF(a->cooldown_s != b->cooldown_s, "cooldown_s %" PRIu32 " -> %" PRIu32, a->cooldown_s,
             b->cooldown_s);
    KM__DIFF(a->max_cooldown_s != b->max_cooldown_s, "max_cooldown_s %" PRIu32 " -> %" PRIu32,
             a->max_cooldown_s, b->max_cooldown_s);
    KM__DIFF(a->max_failures != b->max_failures, "max_failures %" PRIu32 " -> %" PRIu32,
             a->max_failures, b->max_failures);
    KM__DIFF(a->budget_microusd != b->budget_microusd || a->budget_hard != b->budget_hard ||
                 a->budget.period != b->budget.period,
             "budget %.2f USD %s %s -> %.2f USD %s %s", (double)a->budget_microusd / 1e6,
             a->budget_hard ? "hard" : "soft", budget_period_name(a->budget.period),
             (double)b->budget_microusd / 1e6, b->budget_hard ? "hard" : "soft",
             budget_period_name(b->budget.period));
    KM__DIFF(a->n_models != b->n_models, "models %" PRIu32 " -> %" PRIu32, a->n_models, b->n_models);
#undef KM__DIFF
}

int cmd_set_pool(int argc, char **argv)
{
    pool_opts o = {.timeout_ms = {.v = 1000}};
    km_env *env;
    int pool, key, rc;
    char err[512] = "";
    if ((rc = parse_args(&set_pool_syntax, argc, argv, &o)) >= 0)
        return rc;
    if ((rc = open_pool_key(argv[optind], argv[optind + 1], NULL, &env, &pool, &key)) >= 0)
        return rc;
    km_set_admin_timeout(env, o.timeout_ms.v);
    const char *pname = argv[optind + 1], *js = argv[optind + 2];
    km_pool_info before, after;
    int known = km_pool_info_get(env, pool, &before) == KM_OK;
    rc = km_pool_set(env, pool, js, err, sizeof err);
    if (rc != KM_OK) {
        errline("pool '%s': %s%s%s", pname, err_text(rc, errno), err[0] ? ": " : "", err);
        rc = exit_for(rc);
        km_close(env);
        return rc;
    }
    char line[1024];
    size_t n = 0;
    line[0] = '\0';
    if (known && km_pool_info_get(env, pool, &after) == KM_OK)
        pool_diff(&before, &after, line, sizeof line, &n);
    json_t *root = json_loads(js, 0, NULL), *lim = root ? json_object_get(root, "limits") : NULL;
    if (lim && n < sizeof line) {
        char *t = json_dumps(lim, JSON_COMPACT);
        n += (size_t)snprintf(line + n, sizeof line - n, "%slimits %s on its %" PRIu32 " key%s",
                              n ? ", " : "", t ? t : "?", known ? after.n_keys : 0,
                              known && after.n_keys == 1 ? "" : "s");
        free(t);
    }
    json_t *mo = root ? json_object_get(root, "models") : NULL;
    if (mo && json_object_size(mo) && n < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n, "%smodels given: %zu", n ? ", " : "",
                              json_object_size(mo));
    json_decref(root);
    printf("pool '%s' of segment '%s': %s\n", pname, argv[optind], n ? line : "nothing changed");
    rc = flush_stdout(EX_SUCCESS);
    km_close(env);
    return rc;
}

int cmd_remove_pool(int argc, char **argv)
{
    pool_opts o = {.wait_ms = {.v = 10000}};
    km_env *env;
    int pool, key, rc;
    if ((rc = parse_args(&remove_pool_syntax, argc, argv, &o)) >= 0)
        return rc;
    if ((rc = open_pool_key(argv[optind], argv[optind + 1], NULL, &env, &pool, &key)) >= 0)
        return rc;
    const char *pname = argv[optind + 1];
    km_pool_info pi;
    uint32_t nk = km_pool_info_get(env, pool, &pi) == KM_OK ? pi.n_keys : 0;
    uint64_t t0 = km_now_ns();
    rc = km_pool_remove(env, pool, o.wait_ms.v, o.force ? KM_POOL_FORCE : 0);
    if (rc == KM_OK) {
        printf("removed pool '%s' (%" PRIu32 " key%s) from segment '%s'\n", pname, nk,
               nk == 1 ? "" : "s", argv[optind]);
        rc = flush_stdout(EX_SUCCESS);
    } else {
        km_pool_stats ps;
        uint32_t out = km_pool_stats_get(env, pool, &ps, sizeof ps) == KM_OK ? ps.inflight : 0;
        if (rc == KM_EBUSY && out)
            errline("pool '%s': %" PRIu32 " lease%s still out after %" PRIu64
                    " ms; nothing removed (retry later, or --force: their releases are then stale)",
                    pname, out, out == 1 ? "" : "s", (km_now_ns() - t0) / 1000000);
        else
            errline("pool '%s': %s; nothing removed", pname, err_text(rc, errno));
        if (rc == KM_EBUSY && !out)
            explain_busy(env);
        rc = exit_for(rc);
    }
    km_close(env);
    return rc;
}
