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
 *
 * km_config_from_env() builds the same JSON tree from environment variables
 * (keys refer to their secrets by "secret_env", so no secret ever enters a
 * JSON text) and runs it through the same parser: one set of rules for both
 * sources.  Its own checks come first, so that its messages name the
 * variable ("NUM_OPENAI is not set", "OPENAI_RPM_2: must be a positive
 * integer").
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

#define KM__META_NAME_MAX 32     /* bytes of a metadata name */
#define KM__PRICE_MAX_USD 1e6    /* per 1000 tokens */
#define KM__BUDGET_MAX_USD 1e9   /* 1e15 micro-USD: far from 2^63 */

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

static const char *const window_fields[] = {"rpm", "rph", "rpd",
                                            "tpm", "tph", "tpd", NULL};

/* The windows rpm..tpd of `obj`, each optional, at `path` (the object's own
 * path, e.g. "pools[0].limits" or "pools[0].models.gpt-4o"). */
static int parse_windows(cfg_ctx *c, json_t *obj, const char *path,
                         km__limit_cfg out[KM_WIN_COUNT])
{
    const char *k;
    json_t *v;
    int rc;

    if ((rc = check_fields(c, obj, path, window_fields)) != KM_OK)
        return rc;
    json_object_foreach(obj, k, v) {
        char wpath[192];
        int w = window_of(k);
        snprintf(wpath, sizeof wpath, "%s.%s", path, k);
        if ((rc = parse_limit(c, v, wpath, w, &out[w])) != KM_OK)
            return rc;
    }
    return KM_OK;
}

/* A "limits" member of `owner` (a pool or key path). */
static int parse_limits(cfg_ctx *c, json_t *obj, const char *owner,
                        km__limit_cfg out[KM_WIN_COUNT])
{
    char path[128];

    snprintf(path, sizeof path, "%s%slimits", owner, owner[0] ? "." : "");
    if (!json_is_object(obj))
        return cfg_err(c, KM_ECONFIG, "%s: must be an object", path);
    return parse_windows(c, obj, path, out);
}

/* ------------------------------------------------- strategies and money */

/* Configuration names of the strategies, in the order of km_strategy. */
static const char *const strategy_names[KM_STRATEGY_COUNT] = {
    [KM_STRATEGY_ROUND_ROBIN] = "round_robin",
    [KM_STRATEGY_LEAST_BUSY] = "least_busy",
    [KM_STRATEGY_WEIGHTED] = "weighted",
    [KM_STRATEGY_LATENCY] = "latency",
    [KM_STRATEGY_COST] = "cost",
    [KM_STRATEGY_RELIABILITY] = "reliability",
    [KM_STRATEGY_FILL_FIRST] = "fill_first",
};
_Static_assert(KM_STRATEGY_COUNT == 8, "a strategy without a config name");
#define KM__STRATEGY_LIST                                                      \
    "\"round_robin\", \"least_busy\", \"weighted\", \"latency\", "         \
    "\"cost\", \"reliability\" or \"fill_first\""

/* KM_STRATEGY_* of a configuration name, or -1. */
static int strategy_of(const char *s)
{
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        if (strategy_names[i] && strcmp(s, strategy_names[i]) == 0)
            return i;
    return -1;
}

/* US dollars (a JSON integer or real in [min, max]) to micro-USD, rounded
 * to nearest.  Absent leaves *out unchanged; *given says whether it was. */
static int get_usd(cfg_ctx *c, json_t *obj, const char *path,
                   const char *field, double max, uint64_t *out, int *given)
{
    json_t *v = json_object_get(obj, field);
    *given = v != NULL;
    if (!v)
        return KM_OK;
    double d = json_is_number(v) ? json_number_value(v) : -1.0;
    if (!(d >= 0.0 && d <= max)) /* also refuses NaN */
        return cfg_err(c, KM_ECONFIG,
                       "%s.%s: must be a number of US dollars from 0 to %.0f",
                       path, field, max);
    *out = (uint64_t)(d * 1e6 + 0.5);
    return KM_OK;
}

/* "price": {"input_per_1k", "output_per_1k"}, each optional; fields given
 * replace *in / *out (micro-USD per 1000 tokens), others stay. */
static int parse_price(cfg_ctx *c, json_t *v, const char *owner,
                       uint64_t *in, uint64_t *out)
{
    static const char *const fields[] = {"input_per_1k", "output_per_1k",
                                         NULL};
    char path[128];
    int given, rc;

    snprintf(path, sizeof path, "%s.price", owner);
    if (!json_is_object(v))
        return cfg_err(c, KM_ECONFIG,
                       "%s: must be an object {\"input_per_1k\", "
                       "\"output_per_1k\"}", path);
    if ((rc = check_fields(c, v, path, fields)) ||
        (rc = get_usd(c, v, path, "input_per_1k", KM__PRICE_MAX_USD, in,
                      &given)) ||
        (rc = get_usd(c, v, path, "output_per_1k", KM__PRICE_MAX_USD, out,
                      &given)))
        return rc;
    return KM_OK;
}

/* "budget": {"usd" (required, > 0), "hard" (default true)}. */
static int parse_budget(cfg_ctx *c, json_t *v, const char *owner,
                        uint64_t *microusd, int *hard)
{
    static const char *const fields[] = {"usd", "hard", NULL};
    char path[128];
    uint64_t m = 0;
    int given, rc;

    snprintf(path, sizeof path, "%s.budget", owner);
    if (!json_is_object(v))
        return cfg_err(c, KM_ECONFIG,
                       "%s: must be an object {\"usd\", \"hard\"}", path);
    if ((rc = check_fields(c, v, path, fields)) ||
        (rc = get_usd(c, v, path, "usd", KM__BUDGET_MAX_USD, &m, &given)))
        return rc;
    if (!given)
        return cfg_err(c, KM_ECONFIG, "%s.usd: missing", path);
    if (m == 0) /* 0, or less than half a micro-dollar */
        return cfg_err(c, KM_ECONFIG,
                       "%s.usd: must be at least 0.000001 (a budget of 0 is "
                       "no budget: leave it out)", path);
    json_t *h = json_object_get(v, "hard");
    if (h && !json_is_boolean(h))
        return cfg_err(c, KM_ECONFIG, "%s.hard: must be true or false", path);
    *microusd = m;
    *hard = h ? json_is_true(h) : 1;
    return KM_OK;
}

/* ---------------------------------------------------------------- models */

/* Model names: [A-Za-z0-9_.:/-] ("gpt-4o", "models/gemini-1.5-pro",
 * "ft:gpt-4o-mini:org:x"). */
static int model_name_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
              (ch >= '0' && ch <= '9') || strchr("_.:/-", ch)))
            return 0;
    }
    return 1;
}

/* "model_limits" and "models" of pool `path`.  In a global pool each model
 * is {} (the names only restrict what a request may name); in a per_model
 * pool each holds that model's limits on every key. */
static int parse_models(cfg_ctx *c, json_t *pobj, const char *path,
                        km__pool_cfg *p)
{
    json_t *mm = json_object_get(pobj, "model_limits");
    json_t *mo = json_object_get(pobj, "models");
    const char *name;
    json_t *v;
    size_t i = 0;
    int rc;

    p->model_mode = KM_MODELS_GLOBAL;
    if (mm) {
        const char *m = json_is_string(mm) ? json_string_value(mm) : "";
        if (strcmp(m, "global") == 0)
            p->model_mode = KM_MODELS_GLOBAL;
        else if (strcmp(m, "per_model") == 0)
            p->model_mode = KM_MODELS_PER_MODEL;
        else
            return cfg_err(c, KM_ECONFIG,
                           "%s.model_limits: must be \"global\" or "
                           "\"per_model\"", path);
    }
    if (mo && !json_is_object(mo))
        return cfg_err(c, KM_ECONFIG,
                       "%s.models: must be an object {\"<model name>\": "
                       "{limits}, ...}", path);
    size_t n = mo ? json_object_size(mo) : 0;
    if (n == 0) {
        if (p->model_mode == KM_MODELS_PER_MODEL)
            return cfg_err(c, KM_ECONFIG,
                           "%s.models: \"model_limits\": \"per_model\" needs "
                           "at least one model", path);
        return KM_OK;
    }
    /* n <= KM_MODELS_MAX: checked with the capacities. */
    if (!(p->models = calloc(n, sizeof *p->models)))
        return cfg_err(c, KM_ENOMEM, "out of memory");
    p->n_models = (uint32_t)n;
    json_object_foreach(mo, name, v) {
        km__model_cfg *m = &p->models[i++];
        char mpath[160];
        size_t len = strlen(name);
        if (len == 0)
            return cfg_err(c, KM_ECONFIG,
                           "%s.models: a model name must not be empty", path);
        if (len > KM_ID_MAX)
            return cfg_err(c, KM_ECONFIG,
                           "%s.models.%.*s...: model name longer than %d bytes",
                           path, 40, name, KM_ID_MAX);
        snprintf(mpath, sizeof mpath, "%s.models.%s", path, name);
        if (!model_name_ok(name))
            return cfg_err(c, KM_ECONFIG,
                           "%s: model name may hold only A-Z a-z 0-9 _ . : / -",
                           mpath);
        memcpy(m->name, name, len + 1);
        if (!json_is_object(v))
            return cfg_err(c, KM_ECONFIG,
                           "%s: must be an object (the model's limits, or {})",
                           mpath);
        if ((rc = check_fields(c, v, mpath, window_fields)) != KM_OK)
            return rc;
        if (p->model_mode == KM_MODELS_GLOBAL && json_object_size(v) > 0)
            return cfg_err(c, KM_ECONFIG,
                           "%s: limits need \"model_limits\": \"per_model\"",
                           mpath);
        if ((rc = parse_windows(c, v, mpath, m->limits)) != KM_OK)
            return rc;
    }
    return KM_OK;
}

/* ------------------------------------------------------------------ meta */

static int meta_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > KM__META_NAME_MAX || strlen(s) != len)
        return 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

/* Printable ASCII, spaces allowed, no NUL inside. */
static int meta_value_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* Serialise a checked metadata object: compact, keys sorted, so equal
 * metadata is equal text.  "" for an empty object.  KM_ECONFIG (*len set)
 * if longer than KM_META_MAX. */
static int meta_dump(json_t *m, char out[KM_META_MAX + 1], size_t *len)
{
    out[0] = '\0';
    *len = 0;
    if (json_object_size(m) == 0)
        return KM_OK;
    char *s = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
    if (!s)
        return KM_ENOMEM;
    *len = strlen(s);
    int rc = *len > KM_META_MAX ? KM_ECONFIG : KM_OK;
    if (rc == KM_OK)
        memcpy(out, s, *len + 1);
    free(s);
    return rc;
}

/* "meta": {"name": "value", ...} of key `path`. */
static int parse_meta(cfg_ctx *c, json_t *m, const char *path,
                      char out[KM_META_MAX + 1])
{
    const char *k;
    json_t *v;
    size_t len;

    if (!json_is_object(m))
        return cfg_err(c, KM_ECONFIG,
                       "%s.meta: must be an object of strings", path);
    json_object_foreach(m, k, v) {
        if (!meta_name_ok(k, strlen(k)))
            return cfg_err(c, KM_ECONFIG,
                           "%s.meta: name \"%.40s\" is not 1..%d bytes of "
                           "A-Z a-z 0-9 _ -", path, k, KM__META_NAME_MAX);
        if (!json_is_string(v))
            return cfg_err(c, KM_ECONFIG, "%s.meta.%s: must be a string", path,
                           k);
        if (!meta_value_ok(json_string_value(v), json_string_length(v)))
            return cfg_err(c, KM_ECONFIG,
                           "%s.meta.%s: must be printable ASCII", path, k);
    }
    int rc = meta_dump(m, out, &len);
    if (rc == KM_ENOMEM)
        return cfg_err(c, KM_ENOMEM, "out of memory");
    if (rc != KM_OK)
        return cfg_err(c, KM_ECONFIG,
                       "%s.meta: %zu bytes as JSON, more than %d", path, len,
                       KM_META_MAX);
    return KM_OK;
}

/* ------------------------------------------------------------------ keys */

typedef km__pool_defaults pool_defaults;

/* Resolve a secret from "secret" or "secret_env" (exactly one). */
static int parse_secret(cfg_ctx *c, json_t *kobj, const char *path,
                        km__key_cfg *k)
{
    json_t *sv = json_object_get(kobj, "secret");
    json_t *ev = json_object_get(kobj, "secret_env");
    json_t *fv = json_object_get(kobj, "secret_file");
    const char *s = NULL;
    char fbuf[KM_SECRET_MAX + 3];
    size_t len = 0;
    int rc;

    if (!!sv + !!ev + !!fv > 1)
        return cfg_err(c, KM_ECONFIG,
                       "%s: give one of secret, secret_env and secret_file", path);
    if (!sv && !ev && !fv)
        return cfg_err(c, KM_ECONFIG, "%s: missing secret, secret_env or secret_file",
                       path);
    if (fv) {
        /* The file's content, without its trailing newline. */
        const char *fname;
        size_t flen;
        if ((rc = get_str(c, kobj, path, "secret_file", PATH_MAX, &fname, &flen)))
            return rc;
        int fd = open(fname, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd < 0 ? -1 : read(fd, fbuf, sizeof fbuf - 1);
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (got < 0)
            return cfg_err(c, KM_ECONFIG, "%s.secret_file: %s: %s", path, fname, strerror(e));
        while (got > 0 && (fbuf[got - 1] == '\n' || fbuf[got - 1] == '\r'))
            got--;
        fbuf[got] = '\0';
        if (got == 0 || (size_t)got > KM_SECRET_MAX) {
            explicit_bzero(fbuf, sizeof fbuf);
            return cfg_err(c, KM_ECONFIG, "%s.secret_file: %s: %s", path, fname,
                           got ? "longer than a secret may be" : "empty");
        }
        s = fbuf;
        len = (size_t)got;
    } else if (sv) {
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
    /* A NUL inside (a secret_file may hold one) would end the checked text
     * early and let the bytes after it through. */
    if (!name_ok(s, 0) || strlen(s) != len) {
        explicit_bzero(fbuf, sizeof fbuf);
        if (fv)
            return cfg_err(c, KM_ECONFIG,
                           "%s.secret_file: must hold printable ASCII without spaces", path);
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
    explicit_bzero(fbuf, sizeof fbuf);
    return KM_OK;
}

static int parse_key(cfg_ctx *c, json_t *kobj, const char *path,
                     const pool_defaults *pd, km__key_cfg *k)
{
    static const char *const fields[] = {"id", "secret", "secret_env", "secret_file",
                                         "weight", "limits", "max_inflight",
                                         "price", "budget", "meta", NULL};
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

    /* Prices: the pool's, field by field replaced by the key's. */
    k->price_in = pd->price_in;
    k->price_out = pd->price_out;
    json_t *v = json_object_get(kobj, "price");
    if (v && (rc = parse_price(c, v, path, &k->price_in, &k->price_out)))
        return rc;
    /* A pool's budget is the pool's own: not copied to its keys. */
    if ((v = json_object_get(kobj, "budget")) &&
        (rc = parse_budget(c, v, path, &k->budget_microusd, &k->budget_hard)))
        return rc;
    if ((v = json_object_get(kobj, "meta")) &&
        (rc = parse_meta(c, v, path, k->meta)))
        return rc;
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
        "max_failures", "max_inflight", "keys", "model_limits", "models",
        "price", "budget", NULL};
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
        int id = strategy_of(json_is_string(st) ? json_string_value(st) : "");
        if (id < 0)
            return cfg_err(c, KM_ECONFIG,
                           "%s.strategy: must be " KM__STRATEGY_LIST, path);
        p->strategy = id;
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
    if ((rc = parse_models(c, pobj, path, p)) != KM_OK)
        return rc;
    json_t *v = json_object_get(pobj, "price");
    if (v && (rc = parse_price(c, v, path, &pd.price_in, &pd.price_out)))
        return rc;
    if ((v = json_object_get(pobj, "budget")) &&
        (rc = parse_budget(c, v, path, &p->budget_microusd, &p->budget_hard)))
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
    p->defaults = pd;
    /* Weighted choice keeps running sums of weights in 32 bits. */
    if (total_weight > UINT32_MAX)
        return cfg_err(c, KM_ECONFIG,
                       "%s.keys: total weight %llu exceeds %u", path,
                       (unsigned long long)total_weight, UINT32_MAX);
    return check_dup_ids(c, pi, keys, p->n_keys);
}

/* -------------------------------------------------------------- top level */

static int parse_capacity(cfg_ctx *c, json_t *cap, km_config *cfg,
                          int *keys_given, int *pools_given, int *models_given)
{
    static const char *const fields[] = {"keys", "processes", "pools",
                                         "inflight_per_key", "models",
                                         "usage_events", NULL};
    int rc;
    *keys_given = *pools_given = *models_given = 0;
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
                      KM_INFLIGHT_MAX, &cfg->cap_inflight)) ||
        (rc = get_u32(c, cap, "capacity", "models", 1, KM_MODELS_MAX,
                      &cfg->cap_models)) ||
        (rc = get_u32(c, cap, "capacity", "usage_events", 0, KM__MAX_CAP_USAGE,
                      &cfg->cap_usage)))
        return rc;
    /* A power of two, at least 2: a process slot's two rings take half
     * each, and a ring's index is a mask. */
    if (cfg->cap_usage & (cfg->cap_usage - 1)) {
        uint32_t p = 1;
        while (p < cfg->cap_usage)
            p <<= 1;
        cfg->cap_usage = p;
    }
    if (cfg->cap_usage == 1)
        cfg->cap_usage = 2;
    *keys_given = json_object_get(cap, "keys") != NULL;
    *pools_given = json_object_get(cap, "pools") != NULL;
    *models_given = json_object_get(cap, "models") != NULL;
    return KM_OK;
}

static int parse_root(cfg_ctx *c, json_t *root, km_config *cfg)
{
    static const char *const fields[] = {"capacity", "pools", NULL};
    int keys_given, pools_given, models_given, rc;
    size_t i, total = 0, most_models = 0;
    json_t *pobj;

    if (!json_is_object(root))
        return cfg_err(c, KM_ECONFIG, "top level: must be a JSON object");
    if ((rc = check_fields(c, root, "", fields)) != KM_OK)
        return rc;

    cfg->cap_keys = KM__DEF_CAP_KEYS;
    cfg->cap_procs = KM__DEF_CAP_PROCS;
    cfg->cap_pools = KM__DEF_CAP_POOLS;
    cfg->cap_inflight = KM__DEF_CAP_INFLIGHT;
    cfg->cap_models = KM__DEF_CAP_MODELS;
    cfg->cap_usage = KM__DEF_CAP_USAGE;
    if ((rc = parse_capacity(c, json_object_get(root, "capacity"), cfg,
                             &keys_given, &pools_given, &models_given)))
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
        /* A "models" of another type is refused by parse_models(). */
        json_t *mo = json_object_get(pobj, "models");
        size_t nm = json_is_object(mo) ? json_object_size(mo) : 0;
        if (models_given && nm > cfg->cap_models)
            return cfg_err(c, KM_ECONFIG,
                           "pools[%zu].models: more models (%zu) than "
                           "capacity.models (%u)", i, nm, cfg->cap_models);
        if (nm > KM_MODELS_MAX)
            return cfg_err(c, KM_ECONFIG,
                           "pools[%zu].models: more models (%zu) than the "
                           "maximum (%d)", i, nm, KM_MODELS_MAX);
        if (nm > most_models)
            most_models = nm;
    }
    if (!models_given && most_models > cfg->cap_models)
        cfg->cap_models = (uint32_t)most_models;
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
    if (cfg->pools)
        for (uint32_t p = 0; p < cfg->n_pools; p++)
            free(cfg->pools[p].models);
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

/* Parse one JSON text for reconfiguration; the object is handed to `fn`. */
static int parse_one(cfg_ctx *c, const char *json,
                     int (*fn)(cfg_ctx *, json_t *, void *), void *arg)
{
    json_error_t jerr;
    json_t *root;
    int rc;

    if (c->errbuf && c->errlen)
        c->errbuf[0] = '\0';
    if (!json)
        return cfg_err(c, KM_EINVAL, "invalid argument");
    root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char text[JSON_ERROR_TEXT_LENGTH];
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return cfg_err(c, KM_ENOMEM, "out of memory");
        syntax_text(&jerr, text, sizeof text);
        if (c->errbuf && c->errlen)
            snprintf(c->errbuf, c->errlen, "%s:%d:%d: %s", c->origin,
                     jerr.line, jerr.column, text);
        return KM_ECONFIG;
    }
    rc = fn(c, root, arg);
    json_decref(root);
    return rc;
}

typedef struct key_job {
    const pool_defaults *pd;
    km__key_cfg *out;
} key_job;

static int key_job_run(cfg_ctx *c, json_t *root, void *arg)
{
    key_job *j = arg;
    return parse_key(c, root, "key", j->pd, j->out);
}

int km__config_parse_key(const char *json, const km__pool_defaults *pd,
                         uint32_t cap_inflight, km__key_cfg *out,
                         char *errbuf, size_t errlen)
{
    cfg_ctx c = {"json", errbuf, errlen, cap_inflight};
    key_job j = {pd, out};
    memset(out, 0, sizeof *out);
    int rc = parse_one(&c, json, key_job_run, &j);
    if (rc != KM_OK)
        explicit_bzero(out, sizeof *out); /* a secret may have been copied */
    return rc;
}

typedef struct limits_job {
    km__limit_cfg *out;
    uint32_t *set;
} limits_job;

static int limits_job_run(cfg_ctx *c, json_t *root, void *arg)
{
    limits_job *j = arg;
    const char *k;
    json_t *v;
    int rc;

    if (!json_is_object(root))
        return cfg_err(c, KM_ECONFIG, "limits: must be an object");
    if ((rc = check_fields(c, root, "limits", window_fields)) != KM_OK)
        return rc;
    if (json_object_size(root) == 0)
        return cfg_err(c, KM_ECONFIG, "limits: names no window");
    json_object_foreach(root, k, v) {
        char wpath[64];
        int w = window_of(k);
        snprintf(wpath, sizeof wpath, "limits.%s", k);
        *j->set |= 1u << w;
        if (json_is_null(v)) { /* the window's limit is removed */
            memset(&j->out[w], 0, sizeof j->out[w]);
            continue;
        }
        if ((rc = parse_limit(c, v, wpath, w, &j->out[w])) != KM_OK)
            return rc;
    }
    return KM_OK;
}

int km__config_parse_limits(const char *json, km__limit_cfg out[KM_WIN_COUNT],
                            uint32_t *set, char *errbuf, size_t errlen)
{
    cfg_ctx c = {"json", errbuf, errlen, KM__DEF_CAP_INFLIGHT};
    limits_job j = {out, set};
    *set = 0;
    memset(out, 0, KM_WIN_COUNT * sizeof *out);
    return parse_one(&c, json, limits_job_run, &j);
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

/* ------------------------------------------------------------ environment
 *
 * km_config_from_env() turns the variables of each provider into the JSON
 * tree a configuration file would hold and parses that.  Keys name their
 * secret by "secret_env", so the tree holds variable names, never secrets.
 * Messages name variables, never values.
 */

extern char **environ;

#define KM__ENV_PROVIDER_MAX (KM_ID_MAX - 6) /* room for "-65536" in key ids */

typedef struct env_provider {
    char lower[KM__ENV_PROVIDER_MAX + 1]; /* pool name, key id prefix */
    char upper[KM__ENV_PROVIDER_MAX + 1]; /* variable prefix */
    size_t len;
} env_provider;

typedef struct env_ctx {
    cfg_ctx *c;
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
        return cfg_err(e->c, KM_ECONFIG, "%s: must be a positive integer", var);
    km__limit_cfg l = {n, 0, KM_MODE_TOKEN_BUCKET};
    if (km__limit_gcra(&l, km__window_period_ns(w), &t, &tau, &b) != KM_OK)
        return cfg_err(e->c, KM_ECONFIG,
                       "%s: cannot be realised (limit too large)", var);
    if (json_object_set_new(limits, km_window_name(w),
                            json_integer((json_int_t)n)) < 0)
        return cfg_err(e->c, KM_ENOMEM, "out of memory");
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
 * weight or metadata.  `keys[i-1]` is NULL for a skipped key. */
static int env_key_var(env_ctx *e, const env_provider *pv, const char *var,
                       size_t var_len, const char *val, json_t **keys,
                       uint64_t n_keys)
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
                return cfg_err(e->c, KM_ENOMEM, "out of memory");
        }
        return env_limit(e, name, val, w, lim);
    }
    if (plen == 6 && memcmp(rest, "WEIGHT", 6) == 0) {
        uint64_t wt;
        if (env_uint(val, 1, KM__WEIGHT_MAX, &wt) != 0)
            return cfg_err(e->c, KM_ECONFIG,
                           "%s: must be an integer from 1 to %u", name,
                           KM__WEIGHT_MAX);
        if (json_object_set_new(k, "weight", json_integer((json_int_t)wt)) < 0)
            return cfg_err(e->c, KM_ENOMEM, "out of memory");
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
    if (!meta_value_ok(val, strlen(val))) {
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
            return cfg_err(e->c, KM_ENOMEM, "out of memory");
    }
    if ((rc = json_object_set_new(meta, mname, json_string(val))) < 0)
        return cfg_err(e->c, KM_ENOMEM, "out of memory");
    return KM_OK;
}

/* The pool object of provider `pv`. */
static int env_pool(env_ctx *e, const env_provider *pv, json_t *pool)
{
    char var[KM__ENV_PROVIDER_MAX + 32];
    json_t **keys = NULL, *karr, *limits;
    uint64_t n, usable = 0;
    const char *v;
    int rc = KM_OK;

    snprintf(var, sizeof var, "NUM_%s", pv->upper);
    if (!(v = getenv(var)))
        return cfg_err(e->c, KM_ECONFIG, "%s is not set (the number of %s keys)",
                       var, pv->lower);
    if (env_uint(v, 1, KM_KEYS_MAX, &n) != 0)
        return cfg_err(e->c, KM_ECONFIG, "%s: must be an integer from 1 to %d",
                       var, KM_KEYS_MAX);
    if (json_object_set_new(pool, "name", json_string(pv->lower)) < 0)
        return cfg_err(e->c, KM_ENOMEM, "out of memory");

    snprintf(var, sizeof var, "%s_STRATEGY", pv->upper);
    if ((v = getenv(var))) {
        if (strategy_of(v) < 0)
            return cfg_err(e->c, KM_ECONFIG, "%s: must be " KM__STRATEGY_LIST,
                           var);
        if (json_object_set_new(pool, "strategy", json_string(v)) < 0)
            return cfg_err(e->c, KM_ENOMEM, "out of memory");
    }

    if (!(limits = json_object()) ||
        json_object_set_new(pool, "limits", limits) < 0)
        return cfg_err(e->c, KM_ENOMEM, "out of memory");
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        size_t off = (size_t)snprintf(var, sizeof var, "%s_", pv->upper);
        for (const char *c = km_window_name(w); *c; c++)
            var[off++] = (char)(*c - 'a' + 'A');
        var[off] = '\0';
        if ((v = getenv(var)) && (rc = env_limit(e, var, v, w, limits)))
            return rc;
    }

    /* The keys: P_API_KEY_1..N; a gap is skipped with a warning. */
    if (!(keys = calloc((size_t)n, sizeof *keys)))
        return cfg_err(e->c, KM_ENOMEM, "out of memory");
    for (uint64_t i = 1; i <= n; i++) {
        char id[KM_ID_MAX + 1];
        snprintf(var, sizeof var, "%s_API_KEY_%llu", pv->upper,
                 (unsigned long long)i);
        v = getenv(var);
        if (!v || !*v) {
            env_warn(e, "%s is %s; key %llu skipped", var,
                     v ? "empty" : "not set", (unsigned long long)i);
            continue;
        }
        if (strlen(v) > KM_SECRET_MAX || !name_ok(v, 0)) {
            rc = cfg_err(e->c, KM_ECONFIG,
                         "%s: must be at most %d bytes of printable ASCII "
                         "without spaces", var, KM_SECRET_MAX);
            goto out;
        }
        snprintf(id, sizeof id, "%s-%llu", pv->lower, (unsigned long long)i);
        if (!(keys[i - 1] = json_pack("{s:s, s:s}", "id", id, "secret_env",
                                      var))) {
            rc = cfg_err(e->c, KM_ENOMEM, "out of memory");
            goto out;
        }
        usable++;
    }
    if (usable == 0) {
        rc = cfg_err(e->c, KM_ECONFIG,
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
        if ((rc = env_key_var(e, pv, *ep, vlen, eq + 1, keys, n)) != KM_OK)
            goto out;
    }

    /* Metadata too long for a key: say which key and which variables. */
    for (uint64_t i = 0; i < n; i++) {
        json_t *meta = keys[i] ? json_object_get(keys[i], "meta") : NULL;
        char text[KM_META_MAX + 1];
        size_t len;
        int mrc = meta ? meta_dump(meta, text, &len) : KM_OK;
        if (mrc == KM_ENOMEM) {
            rc = cfg_err(e->c, KM_ENOMEM, "out of memory");
            goto out;
        }
        if (mrc != KM_OK) {
            rc = cfg_err(e->c, KM_ECONFIG,
                         "%s-%llu: metadata from the %s_<PARAM>_%llu "
                         "variables is %zu bytes as JSON, more than %d",
                         pv->lower, (unsigned long long)i + 1, pv->upper,
                         (unsigned long long)i + 1, len, KM_META_MAX);
            goto out;
        }
    }

    if (!(karr = json_array()) || json_object_set_new(pool, "keys", karr) < 0) {
        rc = cfg_err(e->c, KM_ENOMEM, "out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (!keys[i])
            continue;
        json_t *k = keys[i];
        keys[i] = NULL; /* appended: the array owns it now */
        if (json_array_append_new(karr, k) < 0) {
            rc = cfg_err(e->c, KM_ENOMEM, "out of memory");
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
static int env_providers(cfg_ctx *c, const char *list, env_provider **out,
                         size_t *n_out)
{
    env_provider *pv;
    size_t n = 1, i = 0;

    for (const char *s = list; *s; s++)
        n += *s == ',';
    if (n > KM_POOLS_MAX)
        return cfg_err(c, KM_ECONFIG, "providers: more than %d", KM_POOLS_MAX);
    if (!(pv = calloc(n, sizeof *pv)))
        return cfg_err(c, KM_ENOMEM, "out of memory");
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
            return cfg_err(c, KM_ECONFIG,
                           "providers: empty provider name in \"%.100s\"", list);
        }
        if (len > KM__ENV_PROVIDER_MAX) {
            free(pv);
            return cfg_err(c, KM_ECONFIG,
                           "providers: \"%.*s...\": longer than %d bytes", 20,
                           s, KM__ENV_PROVIDER_MAX);
        }
        for (size_t j = 0; j < len; j++) {
            unsigned char ch = (unsigned char)s[j];
            if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '_')) {
                free(pv);
                return cfg_err(c, KM_ECONFIG,
                               "providers: \"%.*s\": may hold only A-Z a-z 0-9 _",
                               (int)len, s);
            }
            pv[i].lower[j] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
            pv[i].upper[j] = (char)(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
        }
        pv[i].len = len;
        for (size_t j = 0; j < i; j++)
            if (strcmp(pv[j].lower, pv[i].lower) == 0) {
                int rc = cfg_err(c, KM_ECONFIG,
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
    cfg_ctx c = {"environment", errbuf, errlen, KM__DEF_CAP_INFLIGHT};
    env_provider *pv = NULL;
    json_t *root = NULL, *pools;
    km_config *cfg = NULL;
    size_t np = 0;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || !providers)
        return cfg_err(&c, KM_EINVAL, "invalid argument");
    *out = NULL;
    if ((rc = env_providers(&c, providers, &pv, &np)) != KM_OK)
        return rc;
    env_ctx e = {&c, warn, ctx, pv, np};

    if (!(root = json_object()) || !(pools = json_array()) ||
        json_object_set_new(root, "pools", pools) < 0) {
        rc = cfg_err(&c, KM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < np; i++) {
        json_t *pool = json_object();
        if (!pool || json_array_append_new(pools, pool) < 0) {
            rc = cfg_err(&c, KM_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = env_pool(&e, &pv[i], pool)) != KM_OK)
            goto out;
    }
    /* The parser resolves each secret_env and applies every default and
     * check a configuration file gets. */
    if (!(cfg = calloc(1, sizeof *cfg))) {
        rc = cfg_err(&c, KM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = parse_root(&c, root, cfg)) != KM_OK) {
        config_destroy(cfg);
        goto out;
    }
    *out = cfg;
out:
    json_decref(root);
    free(pv);
    return rc;
}
