/*
 * src/config.c - parse a JSON configuration into a struct km_config.
 *
 * The format is documented in docs/config.md.  Everything is validated here,
 * before a segment exists, so that km_create() never meets a value it cannot
 * lay out: unknown fields, out-of-range numbers, duplicate names and limits
 * that GCRA cannot realise are all refused with one line naming the origin
 * and the field ("pool.json: pools[0].keys[1].limits.rpm: must be a positive
 * integer") or, for JSON syntax, the line and column.
 *
 * Secrets: no message ever contains a secret value.  Field errors name the
 * field, never its value; jansson's syntax errors quote the token near the
 * error ("... near '\"sk-abc'"), so that quote is dropped unless the token is
 * a punctuation character (it may be, or contain, a secret).  Parsed secrets are wiped
 * with explicit_bzero() when the configuration is freed, and so is the file
 * buffer of km_config_parse_file().  (The copies jansson makes while parsing
 * are freed without wiping: jansson's allocator is process-global and a
 * library must not replace it.)
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include "internal.h"

#define KM__WEIGHT_MAX 1000000u

/* Parsing context: where messages go and what to call the source. */
typedef struct cfg_ctx {
    const char *origin;
    char *errbuf;
    size_t errlen;
    uint32_t cap_inflight; /* known before any key is parsed */
} cfg_ctx;

static int cfg_err(cfg_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Write "<origin>: <message>" into the caller's buffer; return `code`. */
static int cfg_err(cfg_ctx *c, int code, const char *fmt, ...)
{
    if (c->errbuf && c->errlen > 0) {
        int n = snprintf(c->errbuf, c->errlen, "%s: ", c->origin);
        if (n >= 0 && (size_t)n < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->errbuf + n, c->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
        /* One line, whatever the origin or a field name held. */
        for (char *p = c->errbuf; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return code;
}

/* Refuse any member of `obj` not in the NULL-terminated list `allowed`. */
static int check_fields(cfg_ctx *c, json_t *obj, const char *path,
                        const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        const char *const *a;
        for (a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                break;
        if (!*a)
            return cfg_err(c, KM_ECONFIG, "%s%s%.64s: unknown field", path,
                           path[0] ? "." : "", k);
    }
    return KM_OK;
}

/* An integer member in [min, max]; absent leaves *out unchanged. */
static int get_uint(cfg_ctx *c, json_t *obj, const char *path,
                    const char *field, uint64_t min, uint64_t max,
                    uint64_t *out)
{
    json_t *v = json_object_get(obj, field);
    const char *dot = path[0] ? "." : "";
    if (!v)
        return KM_OK;
    if (!json_is_integer(v))
        return cfg_err(c, KM_ECONFIG, "%s%s%s: must be an integer", path, dot,
                       field);
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
        return cfg_err(c, KM_ECONFIG,
                       "%s%s%s: must be an integer from %llu to %llu", path,
                       dot, field, (unsigned long long)min,
                       (unsigned long long)max);
    *out = (uint64_t)i;
    return KM_OK;
}

static int get_u32(cfg_ctx *c, json_t *obj, const char *path,
                   const char *field, uint32_t min, uint32_t max,
                   uint32_t *out)
{
    uint64_t v = *out;
    int rc = get_uint(c, obj, path, field, min, max, &v);
    if (rc == KM_OK)
        *out = (uint32_t)v;
    return rc;
}

/* A string member of 1..maxlen bytes; *out is NULL when it is absent. */
static int get_str(cfg_ctx *c, json_t *obj, const char *path,
                   const char *field, size_t maxlen, const char **out,
                   size_t *len)
{
    json_t *v = json_object_get(obj, field);
    const char *dot = path[0] ? "." : "";
    *out = NULL;
    if (!v)
        return KM_OK;
    if (!json_is_string(v))
        return cfg_err(c, KM_ECONFIG, "%s%s%s: must be a string", path, dot,
                       field);
    *len = json_string_length(v);
    if (*len == 0)
        return cfg_err(c, KM_ECONFIG, "%s%s%s: must not be empty", path, dot,
                       field);
    if (*len > maxlen)
        return cfg_err(c, KM_ECONFIG, "%s%s%s: longer than %zu bytes", path,
                       dot, field, maxlen);
    *out = json_string_value(v);
    return KM_OK;
}

/* Pool names: [A-Za-z0-9_.-].  Key ids: printable ASCII without space, so
 * they survive a shell command line and a table column unquoted. */
static int name_ok(const char *s, int strict)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (strict) {
            if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
                  ch == '-'))
                return 0;
        } else if (ch < 0x21 || ch > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------- limits */

static int window_of(const char *name)
{
    for (int w = 0; w < KM_WIN_COUNT; w++)
        if (strcmp(name, km_window_name(w)) == 0)
            return w;
    return -1;
}

/* One limit: a positive integer (token_bucket, default burst) or an object
 * {"limit", "mode", "burst"}.  `path` names the window, e.g.
 * "pools[0].limits.rpm".  Validated by km__limit_gcra(), so every limit that
 * gets past here can be laid out. */
static int parse_limit(cfg_ctx *c, json_t *v, const char *path, int w,
                       km__limit_cfg *out)
{
    static const char *const fields[] = {"limit", "mode", "burst", NULL};
    km__limit_cfg l = {0, 0, KM_MODE_TOKEN_BUCKET};
    int rc;

    if (json_is_integer(v)) {
        if (json_integer_value(v) <= 0)
            return cfg_err(c, KM_ECONFIG, "%s: must be a positive integer",
                           path);
        l.limit = (uint64_t)json_integer_value(v);
    } else if (json_is_object(v)) {
        if ((rc = check_fields(c, v, path, fields)) != KM_OK)
            return rc;
        json_t *lim = json_object_get(v, "limit");
        if (!lim)
            return cfg_err(c, KM_ECONFIG, "%s.limit: missing", path);
        if (!json_is_integer(lim) || json_integer_value(lim) <= 0)
            return cfg_err(c, KM_ECONFIG,
                           "%s.limit: must be a positive integer", path);
        l.limit = (uint64_t)json_integer_value(lim);
        json_t *mode = json_object_get(v, "mode");
        if (mode) {
            const char *m = json_is_string(mode) ? json_string_value(mode) : "";
            if (strcmp(m, "token_bucket") == 0)
                l.mode = KM_MODE_TOKEN_BUCKET;
            else if (strcmp(m, "sliding") == 0)
                l.mode = KM_MODE_SLIDING;
            else
                return cfg_err(c, KM_ECONFIG,
                               "%s.mode: must be \"token_bucket\" or "
                               "\"sliding\"", path);
        }
        json_t *burst = json_object_get(v, "burst");
        if (burst) {
            if (!json_is_integer(burst) || json_integer_value(burst) <= 0)
                return cfg_err(c, KM_ECONFIG,
                               "%s.burst: must be a positive integer", path);
            l.burst = (uint64_t)json_integer_value(burst);
        }
        if (l.mode == KM_MODE_SLIDING && l.burst > l.limit)
            return cfg_err(c, KM_ECONFIG,
                           "%s.burst: must not exceed limit (%llu) in sliding "
                           "mode", path, (unsigned long long)l.limit);
    } else {
        return cfg_err(c, KM_ECONFIG,
                       "%s: must be a positive integer or an object "
                       "{\"limit\", \"mode\", \"burst\"}", path);
    }

    uint64_t t, tau, b;
    if (km__limit_gcra(&l, km__window_period_ns(w), &t, &tau, &b) != KM_OK)
        return cfg_err(c, KM_ECONFIG,
                       "%s: cannot be realised (limit or burst too large)",
                       path);
    l.burst = b; /* the configuration always carries an explicit burst */
    *out = l;
    return KM_OK;
}

/* A "limits" object: windows rpm..tpd, each optional. */
static int parse_limits(cfg_ctx *c, json_t *obj, const char *owner,
                        km__limit_cfg out[KM_WIN_COUNT])
{
    static const char *const fields[] = {"rpm", "rph", "rpd",
                                         "tpm", "tph", "tpd", NULL};
    char path[128];
    const char *k;
    json_t *v;
    int rc;

    snprintf(path, sizeof path, "%s%slimits", owner, owner[0] ? "." : "");
    if (!json_is_object(obj))
        return cfg_err(c, KM_ECONFIG, "%s: must be an object", path);
    if ((rc = check_fields(c, obj, path, fields)) != KM_OK)
        return rc;
    json_object_foreach(obj, k, v) {
        char wpath[160];
        int w = window_of(k);
        snprintf(wpath, sizeof wpath, "%s.%s", path, k);
        if ((rc = parse_limit(c, v, wpath, w, &out[w])) != KM_OK)
            return rc;
    }
    return KM_OK;
}

/* ------------------------------------------------------------------ keys */

typedef struct pool_defaults {
    km__limit_cfg limits[KM_WIN_COUNT];
    uint32_t max_inflight;
} pool_defaults;

/* Resolve a secret from "secret" or "secret_env" (exactly one). */
static int parse_secret(cfg_ctx *c, json_t *kobj, const char *path,
                        km__key_cfg *k)
{
    json_t *sv = json_object_get(kobj, "secret");
    json_t *ev = json_object_get(kobj, "secret_env");
    const char *s = NULL;
    size_t len = 0;
    int rc;

    if (sv && ev)
        return cfg_err(c, KM_ECONFIG,
                       "%s: give either secret or secret_env, not both", path);
    if (!sv && !ev)
        return cfg_err(c, KM_ECONFIG, "%s: missing secret or secret_env",
                       path);
    if (sv) {
        /* get_str names the field and the length, never the value. */
        if ((rc = get_str(c, kobj, path, "secret", KM_SECRET_MAX, &s, &len)))
            return rc;
    } else {
        const char *var;
        size_t vlen;
        if ((rc = get_str(c, kobj, path, "secret_env", 255, &var, &vlen)))
            return rc;
        if (strchr(var, '='))
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret_env: not a valid variable name", path);
        s = getenv(var);
        if (!s)
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret_env: environment variable %s is not set",
                           path, var);
        len = strlen(s);
        if (len == 0)
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret_env: environment variable %s is empty",
                           path, var);
        if (len > KM_SECRET_MAX)
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret_env: environment variable %s is longer "
                           "than %d bytes", path, var, KM_SECRET_MAX);
    }
    /* A secret goes into an HTTP header: printable ASCII, no spaces, so no
     * CR/LF injection and an unambiguous mask.  (Every provider's keys fit.) */
    if (!name_ok(s, 0)) {
        if (sv)
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret: must be printable ASCII without "
                           "spaces", path);
        return cfg_err(c, KM_ECONFIG,
                       "%s.secret_env: environment variable %s must hold "
                       "printable ASCII without spaces",
                       path, json_string_value(ev));
    }
    memcpy(k->secret, s, len);
    k->secret[len] = '\0';
    k->secret_len = (uint32_t)len;
    return KM_OK;
}

static int parse_key(cfg_ctx *c, json_t *kobj, const char *path,
                     const pool_defaults *pd, km__key_cfg *k)
{
    static const char *const fields[] = {"id", "secret", "secret_env",
                                         "weight", "limits", "max_inflight",
                                         NULL};
    km__limit_cfg own[KM_WIN_COUNT];
    const char *id;
    size_t len;
    int rc;

    if (!json_is_object(kobj))
        return cfg_err(c, KM_ECONFIG, "%s: must be an object", path);
    if ((rc = check_fields(c, kobj, path, fields)) != KM_OK)
        return rc;

    if ((rc = get_str(c, kobj, path, "id", KM_ID_MAX, &id, &len)) != KM_OK)
        return rc;
    if (!id)
        return cfg_err(c, KM_ECONFIG, "%s.id: missing", path);
    if (!name_ok(id, 0))
        return cfg_err(c, KM_ECONFIG,
                       "%s.id: must be printable ASCII without spaces", path);
    memcpy(k->id, id, len + 1);

    if ((rc = parse_secret(c, kobj, path, k)) != KM_OK)
        return rc;

    k->weight = KM__DEF_WEIGHT;
    if ((rc = get_u32(c, kobj, path, "weight", 1, KM__WEIGHT_MAX, &k->weight)))
        return rc;

    k->max_inflight = pd->max_inflight;
    if ((rc = get_u32(c, kobj, path, "max_inflight", 0, c->cap_inflight,
                      &k->max_inflight)))
        return rc;

    memset(own, 0, sizeof own);
    json_t *lim = json_object_get(kobj, "limits");
    if (lim && (rc = parse_limits(c, lim, path, own)) != KM_OK)
        return rc;
    /* Merge per window: the key's own limit if it set one, else the pool's.
     * Both were validated (and their bursts resolved) when parsed. */
    for (int w = 0; w < KM_WIN_COUNT; w++)
        k->limits[w] = own[w].limit ? own[w] : pd->limits[w];
    return KM_OK;
}

/* ----------------------------------------------------------------- pools */

static int cmp_key_idx(const void *a, const void *b, void *keys)
{
    const km__key_cfg *k = keys;
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    int d = strcmp(k[i].id, k[j].id);
    return d ? d : (i > j) - (i < j);
}

/* Duplicate ids within one pool: sort indices by (id, index) and compare
 * neighbours; report the earliest second occurrence. */
static int check_dup_ids(cfg_ctx *c, uint32_t pool, const km__key_cfg *keys,
                         uint32_t n)
{
    uint32_t *idx, dup = UINT32_MAX, first = 0;
    if (n < 2)
        return KM_OK;
    idx = malloc(n * sizeof *idx);
    if (!idx)
        return cfg_err(c, KM_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, n, sizeof *idx, cmp_key_idx, (void *)keys);
    for (uint32_t i = 1; i < n; i++)
        if (strcmp(keys[idx[i]].id, keys[idx[i - 1]].id) == 0 &&
            idx[i] < dup) {
            dup = idx[i];
            /* the run is sorted by index: its head is the first occurrence */
            uint32_t h = i - 1;
            while (h > 0 && strcmp(keys[idx[h - 1]].id, keys[idx[i]].id) == 0)
                h--;
            first = idx[h];
        }
    free(idx);
    if (dup != UINT32_MAX)
        return cfg_err(c, KM_ECONFIG,
                       "pools[%u].keys[%u].id: duplicate key id \"%s\" (also "
                       "pools[%u].keys[%u])", pool, dup, keys[dup].id, pool,
                       first);
    return KM_OK;
}

static int parse_pool(cfg_ctx *c, json_t *pobj, uint32_t pi,
                      km__pool_cfg *p, km__key_cfg *keys)
{
    static const char *const fields[] = {
        "name", "strategy", "limits", "cooldown_s", "max_cooldown_s",
        "max_failures", "max_inflight", "keys", NULL};
    pool_defaults pd;
    char path[48];
    const char *name;
    size_t len;
    int rc;

    snprintf(path, sizeof path, "pools[%u]", pi);
    if ((rc = check_fields(c, pobj, path, fields)) != KM_OK)
        return rc;

    if ((rc = get_str(c, pobj, path, "name", KM_ID_MAX, &name, &len)))
        return rc;
    if (!name)
        return cfg_err(c, KM_ECONFIG, "%s.name: missing", path);
    if (!name_ok(name, 1))
        return cfg_err(c, KM_ECONFIG,
                       "%s.name: may hold only A-Z a-z 0-9 _ . -", path);
    memcpy(p->name, name, len + 1);

    p->strategy = KM_STRATEGY_ROUND_ROBIN;
    json_t *st = json_object_get(pobj, "strategy");
    if (st) {
        const char *s = json_is_string(st) ? json_string_value(st) : "";
        if (strcmp(s, "round_robin") == 0)
            p->strategy = KM_STRATEGY_ROUND_ROBIN;
        else if (strcmp(s, "least_busy") == 0)
            p->strategy = KM_STRATEGY_LEAST_BUSY;
        else if (strcmp(s, "weighted") == 0)
            p->strategy = KM_STRATEGY_WEIGHTED;
        else
            return cfg_err(c, KM_ECONFIG,
                           "%s.strategy: must be \"round_robin\", "
                           "\"least_busy\" or \"weighted\"", path);
    }

    p->cooldown_s = KM__DEF_COOLDOWN_S;
    p->max_cooldown_s = KM__DEF_MAX_COOLDOWN_S;
    p->max_failures = KM__DEF_MAX_FAILURES;
    if ((rc = get_u32(c, pobj, path, "cooldown_s", 1, UINT32_MAX,
                      &p->cooldown_s)) ||
        (rc = get_u32(c, pobj, path, "max_cooldown_s", 1, UINT32_MAX,
                      &p->max_cooldown_s)) ||
        (rc = get_u32(c, pobj, path, "max_failures", 1, UINT32_MAX,
                      &p->max_failures)))
        return rc;
    if (p->max_cooldown_s < p->cooldown_s) {
        /* Only one of the two may have been given: name what was. */
        if (json_object_get(pobj, "max_cooldown_s"))
            return cfg_err(c, KM_ECONFIG,
                           "%s.max_cooldown_s: must be at least cooldown_s "
                           "(%u)", path, p->cooldown_s);
        return cfg_err(c, KM_ECONFIG,
                       "%s.cooldown_s: must not exceed max_cooldown_s (%u)",
                       path, p->max_cooldown_s);
    }

    memset(&pd, 0, sizeof pd);
    if ((rc = get_u32(c, pobj, path, "max_inflight", 0, c->cap_inflight,
                      &pd.max_inflight)))
        return rc;
    json_t *lim = json_object_get(pobj, "limits");
    if (lim && (rc = parse_limits(c, lim, path, pd.limits)) != KM_OK)
        return rc;

    /* Array shape was checked by the caller when it counted the keys. */
    json_t *ka = json_object_get(pobj, "keys");
    size_t i;
    json_t *kobj;
    uint64_t total_weight = 0;
    json_array_foreach(ka, i, kobj) {
        char kpath[96];
        snprintf(kpath, sizeof kpath, "%s.keys[%zu]", path, i);
        if ((rc = parse_key(c, kobj, kpath, &pd, &keys[i])) != KM_OK)
            return rc;
        total_weight += keys[i].weight;
    }
    /* Weighted choice keeps running sums of weights in 32 bits. */
    if (total_weight > UINT32_MAX)
        return cfg_err(c, KM_ECONFIG,
                       "%s.keys: total weight %llu exceeds %u", path,
                       (unsigned long long)total_weight, UINT32_MAX);
    return check_dup_ids(c, pi, keys, p->n_keys);
}

/* -------------------------------------------------------------- top level */

static int parse_capacity(cfg_ctx *c, json_t *cap, km_config *cfg,
                          int *keys_given, int *pools_given)
{
    static const char *const fields[] = {"keys", "processes", "pools",
                                         "inflight_per_key", NULL};
    int rc;
    *keys_given = *pools_given = 0;
    if (!cap)
        return KM_OK;
    if (!json_is_object(cap))
        return cfg_err(c, KM_ECONFIG, "capacity: must be an object");
    if ((rc = check_fields(c, cap, "capacity", fields)) ||
        (rc = get_u32(c, cap, "capacity", "keys", 1, KM_KEYS_MAX,
                      &cfg->cap_keys)) ||
        (rc = get_u32(c, cap, "capacity", "processes", 1, KM_PROCS_MAX,
                      &cfg->cap_procs)) ||
        (rc = get_u32(c, cap, "capacity", "pools", 1, KM_POOLS_MAX,
                      &cfg->cap_pools)) ||
        (rc = get_u32(c, cap, "capacity", "inflight_per_key", 1,
                      KM_INFLIGHT_MAX, &cfg->cap_inflight)))
        return rc;
    *keys_given = json_object_get(cap, "keys") != NULL;
    *pools_given = json_object_get(cap, "pools") != NULL;
    return KM_OK;
}

static int parse_root(cfg_ctx *c, json_t *root, km_config *cfg)
{
    static const char *const fields[] = {"capacity", "pools", NULL};
    int keys_given, pools_given, rc;
    size_t i, total = 0;
    json_t *pobj;

    if (!json_is_object(root))
        return cfg_err(c, KM_ECONFIG, "top level: must be a JSON object");
    if ((rc = check_fields(c, root, "", fields)) != KM_OK)
        return rc;

    cfg->cap_keys = KM__DEF_CAP_KEYS;
    cfg->cap_procs = KM__DEF_CAP_PROCS;
    cfg->cap_pools = KM__DEF_CAP_POOLS;
    cfg->cap_inflight = KM__DEF_CAP_INFLIGHT;
    if ((rc = parse_capacity(c, json_object_get(root, "capacity"), cfg,
                             &keys_given, &pools_given)))
        return rc;
    c->cap_inflight = cfg->cap_inflight;

    json_t *pools = json_object_get(root, "pools");
    if (!pools)
        return cfg_err(c, KM_ECONFIG, "pools: missing");
    if (!json_is_array(pools))
        return cfg_err(c, KM_ECONFIG, "pools: must be an array");
    size_t np = json_array_size(pools);
    if (np == 0)
        return cfg_err(c, KM_ECONFIG, "pools: no pools");

    /* First pass: shapes and sizes, so that keys can be stored contiguously
     * and capacity errors come before per-field ones deep inside. */
    json_array_foreach(pools, i, pobj) {
        if (!json_is_object(pobj))
            return cfg_err(c, KM_ECONFIG, "pools[%zu]: must be an object", i);
        json_t *ka = json_object_get(pobj, "keys");
        if (!ka)
            return cfg_err(c, KM_ECONFIG, "pools[%zu].keys: missing", i);
        if (!json_is_array(ka))
            return cfg_err(c, KM_ECONFIG, "pools[%zu].keys: must be an array",
                           i);
        if (json_array_size(ka) == 0)
            return cfg_err(c, KM_ECONFIG, "pools[%zu].keys: no keys", i);
        total += json_array_size(ka);
    }
    if (np > cfg->cap_pools) {
        if (pools_given)
            return cfg_err(c, KM_ECONFIG,
                           "more pools (%zu) than capacity.pools (%u)", np,
                           cfg->cap_pools);
        if (np > KM_POOLS_MAX)
            return cfg_err(c, KM_ECONFIG,
                           "more pools (%zu) than the maximum (%d)", np,
                           KM_POOLS_MAX);
        cfg->cap_pools = (uint32_t)np;
    }
    if (total > cfg->cap_keys) {
        if (keys_given)
            return cfg_err(c, KM_ECONFIG,
                           "more keys (%zu) than capacity.keys (%u)", total,
                           cfg->cap_keys);
        if (total > KM_KEYS_MAX)
            return cfg_err(c, KM_ECONFIG,
                           "more keys (%zu) than the maximum (%d)", total,
                           KM_KEYS_MAX);
        cfg->cap_keys = (uint32_t)total;
    }

    cfg->pools = calloc(np, sizeof *cfg->pools);
    cfg->keys = calloc(total, sizeof *cfg->keys);
    if (!cfg->pools || !cfg->keys)
        return cfg_err(c, KM_ENOMEM, "out of memory");
    /* Counts are final from here on, so a failure below wipes every slot. */
    cfg->n_pools = (uint32_t)np;
    cfg->n_keys = (uint32_t)total;

    uint32_t first = 0;
    json_array_foreach(pools, i, pobj) {
        km__pool_cfg *p = &cfg->pools[i];
        p->first_key = first;
        p->n_keys = (uint32_t)json_array_size(json_object_get(pobj, "keys"));
        if ((rc = parse_pool(c, pobj, (uint32_t)i, p, &cfg->keys[first])))
            return rc;
        first += p->n_keys;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->pools[j].name, p->name) == 0)
                return cfg_err(c, KM_ECONFIG,
                               "pools[%zu].name: duplicate pool name \"%s\" "
                               "(also pools[%zu])", i, p->name, j);
    }
    return KM_OK;
}

/* jansson's message, without the quoted token near the error unless it is
 * harmless: a string, number or bare word there may be (part of) a secret,
 * e.g. "invalid token near 'sk'" for an unquoted key.  Kept: a single
 * punctuation character ("near ','") and the name of a duplicate key. */
static void syntax_text(const json_error_t *e, char *out, size_t outlen)
{
    const char *near = strstr(e->text, " near '");
    size_t n = strlen(e->text);
    if (near && json_error_code(e) != json_error_duplicate_key) {
        const char *tok = near + 7;
        int punct = tok[0] && tok[1] == '\'' && tok[2] == '\0' &&
                    strchr("{}[]:,", tok[0]);
        if (!punct)
            n = (size_t)(near - e->text);
    }
    snprintf(out, outlen, "%.*s", (int)n, e->text);
}

static void config_destroy(km_config *cfg)
{
    if (cfg->keys) {
        explicit_bzero(cfg->keys, (size_t)cfg->n_keys * sizeof *cfg->keys);
        free(cfg->keys);
    }
    free(cfg->pools);
    free(cfg);
}

KM_EXTERN int km_config_parse(const char *json, size_t len, const char *origin,
                              km_config **out, char *errbuf, size_t errlen)
{
    cfg_ctx c = {origin ? origin : "<config>", errbuf, errlen,
                 KM__DEF_CAP_INFLIGHT};
    json_error_t jerr;
    km_config *cfg;
    json_t *root;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || (!json && len))
        return cfg_err(&c, KM_EINVAL, "invalid argument");
    *out = NULL;

    root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char text[JSON_ERROR_TEXT_LENGTH];
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return cfg_err(&c, KM_ENOMEM, "out of memory");
        syntax_text(&jerr, text, sizeof text);
        /* cfg_err adds "<origin>: "; jansson's position follows directly. */
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s:%d:%d: %s", c.origin, jerr.line,
                     jerr.column, text);
        return KM_ECONFIG;
    }

    cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        json_decref(root);
        return cfg_err(&c, KM_ENOMEM, "out of memory");
    }
    rc = parse_root(&c, root, cfg);
    json_decref(root);
    if (rc != KM_OK) {
        config_destroy(cfg); /* wipes every key slot, parsed or not */
        return rc;
    }
    *out = cfg;
    return KM_OK;
}

KM_EXTERN int km_config_parse_file(const char *path, km_config **out,
                                   char *errbuf, size_t errlen)
{
    cfg_ctx c = {path ? path : "<config>", errbuf, errlen, 0};
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int fd, rc, saved;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!path || !out)
        return cfg_err(&c, KM_EINVAL, "invalid argument");
    *out = NULL;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        goto sys_error;
    if (fstat(fd, &st) < 0)
        goto sys_error_fd;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto sys_error_fd;
    }
    /* Regular files are read in one go; pipes and the like grow the buffer. */
    cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1
                                                : 4096;
    buf = malloc(cap);
    if (!buf) {
        errno = ENOMEM;
        goto sys_error_fd;
    }
    for (;;) {
        if (len == cap) {
            char *nb;
            if (cap > SIZE_MAX / 2 || !(nb = malloc(cap * 2))) {
                errno = ENOMEM;
                goto sys_error_fd;
            }
            /* copy and wipe instead of realloc, which would free unwiped */
            memcpy(nb, buf, len);
            explicit_bzero(buf, len);
            free(buf);
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            goto sys_error_fd;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);

    rc = km_config_parse(buf, len, path, out, errbuf, errlen);
    explicit_bzero(buf, cap);
    free(buf);
    return rc;

sys_error_fd:
    saved = errno;
    close(fd);
    errno = saved;
sys_error:
    saved = errno;
    if (buf) {
        explicit_bzero(buf, len);
        free(buf);
    }
    if (saved == ENOMEM) {
        errno = saved;
        return cfg_err(&c, KM_ENOMEM, "out of memory");
    }
    cfg_err(&c, KM_ESYS, "%s", strerror(saved));
    errno = saved;
    return KM_ESYS;
}

KM_EXTERN void km_config_free(km_config *cfg)
{
    if (cfg)
        config_destroy(cfg);
}
