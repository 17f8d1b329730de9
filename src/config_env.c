/*
 * src/config_env.c - km_config_from_env(): a configuration from environment
 * variables, in the convention Python key-pool libraries use (NUM_P,
 * P_API_KEY_1..N, P_RPM, P_<PARAM>_i ...; docs/config.md, "Environment
 * variables").
 *
 * It turns the variables of each provider into the JSON tree a
 * configuration file would hold and parses that with the file's parser
 * (km__cfg_parse_root): one set of rules for both sources.  Keys name their
 * secret by "secret_env", so the tree holds variable names, never secrets.
 * Its own checks come first, so that its messages name the variable
 * ("NUM_OPENAI is not set", "OPENAI_RPM_2: must be a positive integer").
 * Messages and warnings name variables, never values.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config_int.h"

extern char **environ;

#define KM__ENV_PROVIDER_MAX (KM_ID_MAX - 6) /* room for "-65536" in key ids */

typedef struct env_provider {
    char lower[KM__ENV_PROVIDER_MAX + 1]; /* pool name, key id prefix */
    char upper[KM__ENV_PROVIDER_MAX + 1]; /* variable prefix */
    size_t len;
} env_provider;

typedef struct env_ctx {
    km__cfg_ctx *c;
    void (*warn)(void *ctx, const char *msg);
    void *warn_ctx;
    const env_provider *prov;
    size_t n_prov;
} env_ctx;

static void env_warn(env_ctx *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void env_warn(env_ctx *e, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    if (!e->warn)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    e->warn(e->warn_ctx, msg);
}

/* A decimal integer in [min, max]: digits only, no sign, no spaces. */
static int env_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* A limit from variable `var` (value `val`): a positive integer that GCRA
 * can realise as a token bucket.  Added to `limits` as window `w`. */
static int env_limit(env_ctx *e, const char *var, const char *val, int w,
                     json_t *limits)
{
    uint64_t n, t, tau, b;
    if (env_uint(val, 1, UINT64_MAX, &n) != 0)
        return km__cfg_err(e->c, KM_ECONFIG, "%s: must be a positive integer", var);
    km__limit_cfg l = {n, 0, KM_MODE_TOKEN_BUCKET};
    if (km__limit_gcra(&l, km__window_period_ns(w), &t, &tau, &b) != KM_OK)
        return km__cfg_err(e->c, KM_ECONFIG,
                           "%s: cannot be realised (limit too large)", var);
    if (json_object_set_new(limits, km_window_name(w),
                            json_integer((json_int_t)n)) < 0)
        return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    return KM_OK;
}

/* The window whose upper-case name is `s` ("RPM"), or -1. */
static int env_window(const char *s, size_t len)
{
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        const char *n = km_window_name(w);
        if (strlen(n) != len)
            continue;
        size_t i = 0;
        while (i < len && s[i] == n[i] - 'a' + 'A')
            i++;
        if (i == len)
            return w;
    }
    return -1;
}

/* Parameter names that may hold a credential: never copied into metadata,
 * which inspect and snapshots show.  (A variable of another provider, e.g.
 * AZURE_OPENAI_API_KEY_1 seen as AZURE's OPENAI_API_KEY, lands here.) */
static int env_param_secretish(const char *p, size_t len)
{
    static const char *const words[] = {"KEY", "SECRET", "PASSWORD",
                                        "PASSWD", "CREDENTIAL", NULL};
    for (const char *const *w = words; *w; w++) {
        size_t wl = strlen(*w);
        for (size_t i = 0; i + wl <= len; i++)
            if (memcmp(p + i, *w, wl) == 0)
                return 1;
    }
    return len >= 5 && memcmp(p + len - 5, "TOKEN", 5) == 0;
}

/* One variable "P_<PARAM>_<i>=value" of provider `pv`: a key's limit,
 * weight or metadata.  `keys[i-1]` is NULL for a skipped key.  single: the
 * one key came from P_API_KEY (no NUM_P). */
static int env_key_var(env_ctx *e, const env_provider *pv, const char *var,
                       size_t var_len, const char *val, json_t **keys,
                       uint64_t n_keys, int single)
{
    const char *rest = var + pv->len + 1;
    size_t rlen = var_len - pv->len - 1;
    char name[256];
    int rc;

    /* Belongs to a provider with a longer prefix ("AZURE_OPENAI_..." when
     * both azure and azure_openai are asked for)? */
    for (size_t j = 0; j < e->n_prov; j++) {
        const env_provider *q = &e->prov[j];
        if (q->len > pv->len && var_len > q->len + 1 &&
            memcmp(var, q->upper, q->len) == 0 && var[q->len] == '_')
            return KM_OK;
    }
    /* "<PARAM>_<i>": i without leading zeros, PARAM of [A-Z0-9_]. */
    size_t us = rlen;
    while (us > 0 && rest[us - 1] >= '0' && rest[us - 1] <= '9')
        us--;
    if (us == rlen || us < 2 || rest[us - 1] != '_' || rest[us] == '0' ||
        rlen - us > 6)
        return KM_OK;
    size_t plen = us - 1;
    for (size_t i = 0; i < plen; i++)
        if (!((rest[i] >= 'A' && rest[i] <= 'Z') ||
              (rest[i] >= '0' && rest[i] <= '9') || rest[i] == '_'))
            return KM_OK;
    if (var_len >= sizeof name)
        return KM_OK; /* no such parameter is that long */
    memcpy(name, var, var_len);
    name[var_len] = '\0';
    uint64_t idx = strtoull(rest + us, NULL, 10);
    if (idx > n_keys) {
        if (single)
            env_warn(e, "%s: there is no key %llu (%s_API_KEY is the only "
                     "key); ignored", name, (unsigned long long)idx,
                     pv->upper);
        else
            env_warn(e, "%s: there is no key %llu (NUM_%s is %llu); ignored",
                     name, (unsigned long long)idx, pv->upper,
                     (unsigned long long)n_keys);
        return KM_OK;
    }
    json_t *k = keys[idx - 1];
    if (!k)
        return KM_OK; /* its key was skipped (warned already) */
    if (plen == 7 && memcmp(rest, "API_KEY", 7) == 0)
        return KM_OK; /* the secret, resolved by the parser */

    int w = env_window(rest, plen);
    if (w >= 0) {
        json_t *lim = json_object_get(k, "limits");
        if (!lim) {
            if (!(lim = json_object()) ||
                json_object_set_new(k, "limits", lim) < 0)
                return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
        }
        return env_limit(e, name, val, w, lim);
    }
    if (plen == 6 && memcmp(rest, "WEIGHT", 6) == 0) {
        uint64_t wt;
        if (env_uint(val, 1, KM__WEIGHT_MAX, &wt) != 0)
            return km__cfg_err(e->c, KM_ECONFIG,
                               "%s: must be an integer from 1 to %u", name,
                               KM__WEIGHT_MAX);
        if (json_object_set_new(k, "weight", json_integer((json_int_t)wt)) < 0)
            return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
        return KM_OK;
    }

    /* Anything else is metadata {"<param lower-case>": value}. */
    if (plen == 0)
        return KM_OK;
    if (env_param_secretish(rest, plen)) {
        env_warn(e, "%s: may hold a credential; not used as metadata", name);
        return KM_OK;
    }
    if (plen > KM__META_NAME_MAX) {
        env_warn(e, "%s: metadata name longer than %d bytes; ignored", name,
                 KM__META_NAME_MAX);
        return KM_OK;
    }
    if (!km__cfg_meta_value_ok(val, strlen(val))) {
        env_warn(e, "%s: value is not printable ASCII; ignored", name);
        return KM_OK;
    }
    char mname[KM__META_NAME_MAX + 1];
    for (size_t i = 0; i < plen; i++)
        mname[i] = rest[i] >= 'A' && rest[i] <= 'Z' ? (char)(rest[i] - 'A' + 'a')
                                                    : rest[i];
    mname[plen] = '\0';
    json_t *meta = json_object_get(k, "meta");
    if (!meta) {
        if (!(meta = json_object()) || json_object_set_new(k, "meta", meta) < 0)
            return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    }
    if ((rc = json_object_set_new(meta, mname, json_string(val))) < 0)
        return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    return KM_OK;
}

/* The pool object of provider `pv`. */
static int env_pool(env_ctx *e, const env_provider *pv, json_t *pool)
{
    char var[KM__ENV_PROVIDER_MAX + 32], one_var[KM__ENV_PROVIDER_MAX + 16];
    json_t **keys = NULL, *karr, *limits;
    uint64_t n, usable = 0;
    const char *v, *one;
    int rc = KM_OK, single = 0;

    /* NUM_P and P_API_KEY_1..N; or, without NUM_P, the common single-key
     * variable P_API_KEY as a pool of one key (id "p-1", so P_<PARAM>_1
     * applies to it).  NUM_P wins when both are set: it is the explicit
     * form, and a stray P_API_KEY beside it is warned about. */
    snprintf(var, sizeof var, "NUM_%s", pv->upper);
    snprintf(one_var, sizeof one_var, "%s_API_KEY", pv->upper);
    one = getenv(one_var);
    if (!(v = getenv(var))) {
        if (!one)
            return km__cfg_err(e->c, KM_ECONFIG,
                               "%s is not set (the number of %s keys), nor is "
                               "%s (a single key)", var, pv->lower, one_var);
        if (!*one)
            return km__cfg_err(e->c, KM_ECONFIG,
                               "%s is empty (and %s is not set)", one_var, var);
        n = 1;
        single = 1;
    } else if (env_uint(v, 1, KM_KEYS_MAX, &n) != 0) {
        return km__cfg_err(e->c, KM_ECONFIG, "%s: must be an integer from 1 to %d",
                           var, KM_KEYS_MAX);
    } else if (one) {
        env_warn(e, "%s is ignored: %s is set, so the keys are %s_API_KEY_1..%llu",
                 one_var, var, pv->upper, (unsigned long long)n);
    }
    if (json_object_set_new(pool, "name", json_string(pv->lower)) < 0)
        return km__cfg_err(e->c, KM_ENOMEM, "out of memory");

    snprintf(var, sizeof var, "%s_STRATEGY", pv->upper);
    if ((v = getenv(var))) {
        char names[128];
        if (km__cfg_strategy_of(v) < 0)
            return km__cfg_err(e->c, KM_ECONFIG, "%s: must be %s", var,
                               km__cfg_strategy_list(names, sizeof names));
        if (json_object_set_new(pool, "strategy", json_string(v)) < 0)
            return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    }

    if (!(limits = json_object()) ||
        json_object_set_new(pool, "limits", limits) < 0)
        return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        size_t off = (size_t)snprintf(var, sizeof var, "%s_", pv->upper);
        for (const char *c = km_window_name(w); *c; c++)
            var[off++] = (char)(*c - 'a' + 'A');
        var[off] = '\0';
        if ((v = getenv(var)) && (rc = env_limit(e, var, v, w, limits)))
            return rc;
    }

    /* The keys: P_API_KEY_1..N (a gap is skipped with a warning), or
     * P_API_KEY alone (checked not to be empty above). */
    if (!(keys = calloc((size_t)n, sizeof *keys)))
        return km__cfg_err(e->c, KM_ENOMEM, "out of memory");
    for (uint64_t i = 1; i <= n; i++) {
        char id[KM_ID_MAX + 1];
        if (single)
            snprintf(var, sizeof var, "%s", one_var);
        else
            snprintf(var, sizeof var, "%s_API_KEY_%llu", pv->upper,
                     (unsigned long long)i);
        v = getenv(var);
        if (!v || !*v) {
            env_warn(e, "%s is %s; key %llu skipped", var,
                     v ? "empty" : "not set", (unsigned long long)i);
            continue;
        }
        if (strlen(v) > KM_SECRET_MAX || !km__cfg_name_ok(v, 0)) {
            rc = km__cfg_err(e->c, KM_ECONFIG,
                             "%s: must be at most %d bytes of printable ASCII "
                             "without spaces", var, KM_SECRET_MAX);
            goto out;
        }
        snprintf(id, sizeof id, "%s-%llu", pv->lower, (unsigned long long)i);
        if (!(keys[i - 1] = json_pack("{s:s, s:s}", "id", id, "secret_env",
                                      var))) {
            rc = km__cfg_err(e->c, KM_ENOMEM, "out of memory");
            goto out;
        }
        usable++;
    }
    if (usable == 0) {
        rc = km__cfg_err(e->c, KM_ECONFIG,
                         "%s: no key: none of %s_API_KEY_1..%llu is set",
                         pv->lower, pv->upper, (unsigned long long)n);
        goto out;
    }

    /* Per-key variables P_<PARAM>_i. */
    for (char **ep = environ; ep && *ep; ep++) {
        const char *eq = strchr(*ep, '=');
        if (!eq)
            continue;
        size_t vlen = (size_t)(eq - *ep);
        if (vlen <= pv->len + 1 || memcmp(*ep, pv->upper, pv->len) != 0 ||
            (*ep)[pv->len] != '_')
            continue;
        if ((rc = env_key_var(e, pv, *ep, vlen, eq + 1, keys, n, single)) != KM_OK)
            goto out;
    }

    /* Metadata too long for a key: say which key and which variables. */
    for (uint64_t i = 0; i < n; i++) {
        json_t *meta = keys[i] ? json_object_get(keys[i], "meta") : NULL;
        char text[KM_META_MAX + 1];
        size_t len;
        int mrc = meta ? km__cfg_meta_dump(meta, text, &len) : KM_OK;
        if (mrc == KM_ENOMEM) {
            rc = km__cfg_err(e->c, KM_ENOMEM, "out of memory");
            goto out;
        }
        if (mrc != KM_OK) {
            rc = km__cfg_err(e->c, KM_ECONFIG,
                             "%s-%llu: metadata from the %s_<PARAM>_%llu "
                             "variables is %zu bytes as JSON, more than %d",
                             pv->lower, (unsigned long long)i + 1, pv->upper,
                             (unsigned long long)i + 1, len, KM_META_MAX);
            goto out;
        }
    }

    if (!(karr = json_array()) || json_object_set_new(pool, "keys", karr) < 0) {
        rc = km__cfg_err(e->c, KM_ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!keys[i])
            continue;
        json_t *k = keys[i];
        keys[i] = NULL; /* appended: the array owns it now */
        if (json_array_append_new(karr, k) < 0) {
            rc = km__cfg_err(e->c, KM_ENOMEM, "out of memory");
            goto out;
        }
    }
out:
    for (uint64_t i = 0; i < n; i++)
        json_decref(keys[i]);
    free(keys);
    return rc;
}

/* Split "openai, anthropic" into providers: names of [A-Za-z0-9_], pool
 * names in lower case, variable prefixes in upper case. */
static int env_providers(km__cfg_ctx *c, const char *list, env_provider **out,
                         size_t *n_out)
{
    env_provider *pv;
    size_t n = 1, i = 0;

    for (const char *s = list; *s; s++)
        n += *s == ',';
    if (n > KM_POOLS_MAX)
        return km__cfg_err(c, KM_ECONFIG, "providers: more than %d", KM_POOLS_MAX);
    if (!(pv = calloc(n, sizeof *pv)))
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    for (const char *s = list;; i++) {
        const char *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        while (s < end && (*s == ' ' || *s == '\t'))
            s++;
        const char *e = end;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        size_t len = (size_t)(e - s);
        if (len == 0) {
            free(pv);
            return km__cfg_err(c, KM_ECONFIG,
                               "providers: empty provider name in \"%.100s\"", list);
        }
        if (len > KM__ENV_PROVIDER_MAX) {
            free(pv);
            return km__cfg_err(c, KM_ECONFIG,
                               "providers: \"%.*s...\": longer than %d bytes", 20,
                               s, KM__ENV_PROVIDER_MAX);
        }
        for (size_t j = 0; j < len; j++) {
            unsigned char ch = (unsigned char)s[j];
            if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '_')) {
                free(pv);
                return km__cfg_err(c, KM_ECONFIG,
                                   "providers: \"%.*s\": may hold only A-Z a-z 0-9 _",
                                   (int)len, s);
            }
            pv[i].lower[j] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
            pv[i].upper[j] = (char)(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
        }
        pv[i].len = len;
        for (size_t j = 0; j < i; j++)
            if (strcmp(pv[j].lower, pv[i].lower) == 0) {
                int rc = km__cfg_err(c, KM_ECONFIG,
                                     "providers: duplicate provider \"%s\"",
                                     pv[i].lower);
                free(pv);
                return rc;
            }
        if (!*end)
            break;
        s = end + 1;
    }
    *out = pv;
    *n_out = i + 1;
    return KM_OK;
}

KM_EXTERN int km_config_from_env(const char *providers, km_config **out,
                                 void (*warn)(void *ctx, const char *msg),
                                 void *ctx, char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {"environment", errbuf, errlen, KM__DEF_CAP_INFLIGHT, NULL};
    env_provider *pv = NULL;
    json_t *root = NULL, *pools;
    km_config *cfg = NULL;
    size_t np = 0;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || !providers)
        return km__cfg_err(&c, KM_EINVAL, "invalid argument");
    *out = NULL;
    if ((rc = env_providers(&c, providers, &pv, &np)) != KM_OK)
        return rc;
    env_ctx e = {&c, warn, ctx, pv, np};

    if (!(root = json_object()) || !(pools = json_array()) ||
        json_object_set_new(root, "pools", pools) < 0) {
        rc = km__cfg_err(&c, KM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < np; i++) {
        json_t *pool = json_object();
        if (!pool || json_array_append_new(pools, pool) < 0) {
            rc = km__cfg_err(&c, KM_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = env_pool(&e, &pv[i], pool)) != KM_OK)
            goto out;
    }
    /* The parser resolves each secret_env and applies every default and
     * check a configuration file gets. */
    if (!(cfg = calloc(1, sizeof *cfg))) {
        rc = km__cfg_err(&c, KM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = km__cfg_parse_root(&c, root, cfg)) != KM_OK) {
        km__cfg_destroy(cfg);
        goto out;
    }
    *out = cfg;
out:
    json_decref(root);
    json_decref(c.presets); /* none: the environment names no preset */
    free(pv);
    return rc;
}

