/*
 * src/config_pool.c - the pools of a configuration and everything in them:
 * limits (one window, or a limits object), strategies, prices and budgets,
 * models, metadata, secrets, keys, and the pool object that holds them.
 *
 * Each parse_* checks its object's fields (unknown ones refused), applies
 * the documented defaults and writes into the km__*_cfg structs of
 * src/internal.h; every message names the field's path and never a value
 * that may be a secret.  The map of the parser's files is at the top of
 * src/config_int.h; the format is docs/config.md.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include "config_int.h"
#include "tz.h"

/* ---------------------------------------------------------------- limits */

int km__cfg_window_of(const char *name)
{
    for (int w = 0; w < KM_WIN_COUNT; w++)
        if (strcmp(name, km_window_name(w)) == 0)
            return w;
    return -1;
}

/* Unknown members are named as km__cfg_check_fields names them. */
int km__cfg_check_windows(km__cfg_ctx *c, json_t *obj, const char *path)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        if (km__cfg_window_of(k) < 0)
            return km__cfg_err(c, KM_ECONFIG, "%s%s%.64s: unknown field",
                               path, path[0] ? "." : "", k);
    }
    return KM_OK;
}

/* One limit: a positive integer (token_bucket, default burst) or an object
 * {"limit", "mode", "burst"}.  `path` names the window, e.g.
 * "pools[0].limits.rpm".  Validated by km__limit_gcra(), so every limit that
 * gets past here can be laid out. */
int km__cfg_parse_limit(km__cfg_ctx *c, json_t *v, const char *path, int w,
                        km__limit_cfg *out)
{
    static const char *const fields[] = {"limit", "mode", "burst", NULL};
    km__limit_cfg l = {0, 0, KM_MODE_TOKEN_BUCKET};
    int rc;

    if (json_is_integer(v)) {
        if (json_integer_value(v) <= 0)
            return km__cfg_err(c, KM_ECONFIG, "%s: must be a positive integer",
                               path);
        l.limit = (uint64_t)json_integer_value(v);
    } else if (json_is_object(v)) {
        if ((rc = km__cfg_check_fields(c, v, path, fields)) != KM_OK)
            return rc;
        json_t *lim = json_object_get(v, "limit");
        if (!lim)
            return km__cfg_err(c, KM_ECONFIG, "%s.limit: missing", path);
        if (!json_is_integer(lim) || json_integer_value(lim) <= 0)
            return km__cfg_err(c, KM_ECONFIG,
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
                return km__cfg_err(c, KM_ECONFIG,
                                   "%s.mode: must be \"token_bucket\" or "
                                   "\"sliding\"", path);
        }
        json_t *burst = json_object_get(v, "burst");
        if (burst) {
            if (!json_is_integer(burst) || json_integer_value(burst) <= 0)
                return km__cfg_err(c, KM_ECONFIG,
                                   "%s.burst: must be a positive integer", path);
            l.burst = (uint64_t)json_integer_value(burst);
        }
        if (l.mode == KM_MODE_SLIDING && l.burst > l.limit)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.burst: must not exceed limit (%llu) in sliding "
                               "mode", path, (unsigned long long)l.limit);
    } else {
        return km__cfg_err(c, KM_ECONFIG,
                           "%s: must be a positive integer or an object "
                           "{\"limit\", \"mode\", \"burst\"}", path);
    }

    uint64_t t, tau, b;
    if (km__limit_gcra(&l, km__window_period_ns(w), &t, &tau, &b) != KM_OK) {
        char why[192];
        km__limit_why(&l, km__window_period_ns(w), why, sizeof why);
        return km__cfg_err(c, KM_ECONFIG, "%s: cannot be realised: %s (docs/config.md, Limits)",
                           path, why);
    }
    l.burst = b; /* the configuration always carries an explicit burst */
    *out = l;
    return KM_OK;
}

/* The windows rpm..tpd of `obj`, each optional, at `path` (the object's own
 * path, e.g. "pools[0].limits" or "pools[0].models.gpt-4o"). */
static int parse_windows(km__cfg_ctx *c, json_t *obj, const char *path,
                         km__limit_cfg out[KM_WIN_COUNT])
{
    const char *k;
    json_t *v;
    int rc;

    if ((rc = km__cfg_check_windows(c, obj, path)) != KM_OK)
        return rc;
    json_object_foreach(obj, k, v) {
        char wpath[192];
        int w = km__cfg_window_of(k);
        snprintf(wpath, sizeof wpath, "%s.%s", path, k);
        if ((rc = km__cfg_parse_limit(c, v, wpath, w, &out[w])) != KM_OK)
            return rc;
    }
    return KM_OK;
}

/* A "limits" member of `owner` (a pool or key path). */
static int parse_limits(km__cfg_ctx *c, json_t *obj, const char *owner,
                        km__limit_cfg out[KM_WIN_COUNT])
{
    char path[128];

    snprintf(path, sizeof path, "%s%slimits", owner, owner[0] ? "." : "");
    if (!json_is_object(obj))
        return km__cfg_err(c, KM_ECONFIG, "%s: must be an object", path);
    return parse_windows(c, obj, path, out);
}

/* ------------------------------------------------- strategies and money */

/* The names are km_strategy_name()'s (src/errors.c): one table.  Strategy
 * 0 is "default", which a request may give but a pool may not. */
int km__cfg_strategy_of(const char *s)
{
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        if (strcmp(s, km_strategy_name(i)) == 0)
            return i;
    return -1;
}

const char *km__cfg_strategy_list(char *buf, size_t len)
{
    size_t off = 0;
    if (len == 0)
        return buf;
    buf[0] = '\0';
    for (int i = 1; i < KM_STRATEGY_COUNT && off < len; i++) {
        const char *sep = i == 1 ? "" : i == KM_STRATEGY_COUNT - 1 ? " or " : ", ";
        int n = snprintf(buf + off, len - off, "%s\"%s\"", sep,
                         km_strategy_name(i));
        if (n < 0)
            break;
        off += (size_t)n;
    }
    return buf;
}

/* US dollars (a JSON integer or real in [min, max]) to micro-USD, rounded
 * to nearest.  Absent leaves *out unchanged; *given says whether it was. */
static int get_usd(km__cfg_ctx *c, json_t *obj, const char *path,
                   const char *field, double max, uint64_t *out, int *given)
{
    json_t *v = json_object_get(obj, field);
    *given = v != NULL;
    if (!v)
        return KM_OK;
    double d = json_is_number(v) ? json_number_value(v) : -1.0;
    if (!(d >= 0.0 && d <= max)) /* also refuses NaN */
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.%s: must be a number of US dollars from 0 to %.0f",
                           path, field, max);
    *out = km__usd_to_micro(d);
    return KM_OK;
}

/* "price": {"input_per_1k", "output_per_1k"}, each optional; fields given
 * replace *in / *out (micro-USD per 1000 tokens), others stay. */
static int parse_price(km__cfg_ctx *c, json_t *v, const char *owner,
                       uint64_t *in, uint64_t *out)
{
    static const char *const fields[] = {"input_per_1k", "output_per_1k",
                                         NULL};
    char path[128];
    int given, rc;

    snprintf(path, sizeof path, "%s.price", owner);
    if (!json_is_object(v))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s: must be an object {\"input_per_1k\", "
                           "\"output_per_1k\"}", path);
    if ((rc = km__cfg_check_fields(c, v, path, fields)) ||
        (rc = get_usd(c, v, path, "input_per_1k", KM__PRICE_MAX_USD, in,
                      &given)) ||
        (rc = get_usd(c, v, path, "output_per_1k", KM__PRICE_MAX_USD, out,
                      &given)))
        return rc;
    return KM_OK;
}

/* A budget's "tz": "UTC" or a fixed offset "+HH:MM" / "-HH:MM" (-12:00 to
 * +14:00), as minutes east of UTC; or a tz database name (Europe/Paris),
 * read now from tzdata (src/tz.c) so that a zone that does not exist, or a
 * file that is not one, is refused here with nothing created, and kept by
 * name in `name` for km__tz_bind, which writes it to the segment. */
static int parse_tz(km__cfg_ctx *c, const char *path, const char *tz, int *tz_min, char *name)
{
#define KM__DIGIT(ch) ((ch) >= '0' && (ch) <= '9')
    name[0] = 0;
    if (!strcmp(tz, "UTC") || !strcmp(tz, "Z")) {
        *tz_min = 0;
        return KM_OK;
    }
    if (strlen(tz) == 6 && (tz[0] == '+' || tz[0] == '-') && KM__DIGIT(tz[1]) &&
        KM__DIGIT(tz[2]) && tz[3] == ':' && KM__DIGIT(tz[4]) && KM__DIGIT(tz[5])) {
        int h = (tz[1] - '0') * 10 + (tz[2] - '0'), m = (tz[4] - '0') * 10 + (tz[5] - '0');
        if (m < 60 && h * 60 + m <= (tz[0] == '+' ? 14 * 60 : 12 * 60)) {
            *tz_min = (h * 60 + m) * (tz[0] == '-' ? -1 : 1);
            return KM_OK;
        }
    }
#undef KM__DIGIT
    if (tz[0] == '+' || tz[0] == '-')
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.tz: \"%.64s\" is not a time zone: a fixed offset is \"+HH:MM\" "
                           "or \"-HH:MM\" from -12:00 to +14:00", path, tz);
    km__tzone z;
    char err[512];
    int rc = km__tz_load(tz, (int64_t)(km__wall_ns() / KM__NS_PER_S), &z, err, sizeof err);
    if (rc == KM_ECONFIG)
        return km__cfg_err(c, rc, "%s.tz: %s: not a time zone this host can read: use \"UTC\", "
                           "a fixed offset such as \"+02:00\", or a tz database name such as "
                           "\"Europe/Paris\"", path, err);
    if (rc != KM_OK)
        return km__cfg_err(c, rc, "%s.tz: out of memory", path);
    *tz_min = 0;
    snprintf(name, KM__TZ_NAME_MAX + 1, "%s", tz);
    return KM_OK;
}

/* "budget": {"usd" (required, > 0), "mode": "hard" | "soft" (or the older
 * "hard": true | false; default hard), "period": "day" | "week" | "month"
 * | "none" (default none: the segment's life), "tz" (default UTC)}. */
static int parse_budget(km__cfg_ctx *c, json_t *v, const char *owner,
                        uint64_t *microusd, int *hard, int *period, int *tz_min, char *tz_name)
{
    static const char *const fields[] = {"usd", "hard", "mode", "period", "tz", NULL};
    static const char *const periods[KM__PERIOD_COUNT] = {"none", "day", "week", "month"};
    char path[128];
    uint64_t m = 0;
    int given, rc;

    snprintf(path, sizeof path, "%s.budget", owner);
    if (!json_is_object(v))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s: must be an object {\"usd\", \"mode\", \"period\", \"tz\"}", path);
    if ((rc = km__cfg_check_fields(c, v, path, fields)) ||
        (rc = get_usd(c, v, path, "usd", KM__BUDGET_MAX_USD, &m, &given)))
        return rc;
    if (!given)
        return km__cfg_err(c, KM_ECONFIG, "%s.usd: missing", path);
    if (m == 0) /* 0, or less than half a micro-dollar */
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.usd: must be at least 0.000001 (a budget of 0 is "
                           "no budget: leave it out)", path);
    json_t *h = json_object_get(v, "hard"), *md = json_object_get(v, "mode");
    json_t *pd = json_object_get(v, "period"), *tz = json_object_get(v, "tz");
    if (h && !json_is_boolean(h))
        return km__cfg_err(c, KM_ECONFIG, "%s.hard: must be true or false", path);
    *hard = h ? json_is_true(h) : 1;
    if (md) {
        const char *ms = json_string_value(md);
        int mh = ms && !strcmp(ms, "hard") ? 1 : ms && !strcmp(ms, "soft") ? 0 : -1;
        if (mh < 0)
            return km__cfg_err(c, KM_ECONFIG, "%s.mode: must be \"hard\" or \"soft\"", path);
        if (h && mh != *hard)
            return km__cfg_err(c, KM_ECONFIG, "%s: \"mode\" and \"hard\" disagree (give one)",
                               path);
        *hard = mh;
    }
    *period = KM__PERIOD_NONE;
    if (pd && !json_is_null(pd)) {
        const char *ps = json_string_value(pd);
        int i = 0;
        while (ps && i < KM__PERIOD_COUNT && strcmp(ps, periods[i]))
            i++;
        if (!ps || i == KM__PERIOD_COUNT)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.period: \"%.32s\" is not a period: use \"day\", \"week\" "
                               "(from Monday), \"month\" or \"none\" (the segment's life)",
                               path, ps ? ps : "(not a string)");
        *period = i;
    }
    *tz_min = 0;
    tz_name[0] = 0;
    if (tz) {
        if (!json_is_string(tz))
            return km__cfg_err(c, KM_ECONFIG, "%s.tz: must be a string such as \"UTC\", "
                               "\"+02:00\" or \"Europe/Paris\"", path);
        if ((rc = parse_tz(c, path, json_string_value(tz), tz_min, tz_name)))
            return rc;
    }
    *microusd = m;
    return KM_OK;
}

/* ---------------------------------------------------------------- models */

/* Model names: [A-Za-z0-9_.:/-] ("gpt-4o", "models/gemini-1.5-pro",
 * "ft:gpt-4o-mini:org:x"). */
int km__cfg_model_name_ok(const char *s)
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
static int parse_models(km__cfg_ctx *c, json_t *pobj, const char *path,
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
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.model_limits: must be \"global\" or "
                               "\"per_model\"", path);
    }
    if (mo && !json_is_object(mo))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.models: must be an object {\"<model name>\": "
                           "{limits}, ...}", path);
    size_t n = mo ? json_object_size(mo) : 0;
    if (n == 0) {
        if (p->model_mode == KM_MODELS_PER_MODEL)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.models: \"model_limits\": \"per_model\" needs "
                               "at least one model", path);
        return KM_OK;
    }
    /* n <= KM_MODELS_MAX: checked with the capacities. */
    if (!(p->models = calloc(n, sizeof *p->models)))
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    p->n_models = (uint32_t)n;
    json_object_foreach(mo, name, v) {
        km__model_cfg *m = &p->models[i++];
        char mpath[160];
        size_t len = strlen(name);
        if (len == 0)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.models: a model name must not be empty", path);
        if (len > KM_ID_MAX)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.models.%.*s...: model name longer than %d bytes",
                               path, 40, name, KM_ID_MAX);
        snprintf(mpath, sizeof mpath, "%s.models.%s", path, name);
        if (!km__cfg_model_name_ok(name))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s: model name may hold only A-Z a-z 0-9 _ . : / -",
                               mpath);
        memcpy(m->name, name, len + 1);
        if (!json_is_object(v))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s: must be an object (the model's limits, or {})",
                               mpath);
        if ((rc = km__cfg_check_windows(c, v, mpath)) != KM_OK)
            return rc;
        if (p->model_mode == KM_MODELS_GLOBAL && json_object_size(v) > 0)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s: limits need \"model_limits\": \"per_model\"",
                               mpath);
        if ((rc = parse_windows(c, v, mpath, m->limits)) != KM_OK)
            return rc;
    }
    return KM_OK;
}

/* A key's "models" at `path` (pools[P].keys[K].models): per model of the
 * pool, the windows the key sets itself, as a pool's model gives them.  A
 * window the key does not name keeps the pool model's limit (copied into
 * the resolved set); a model the key does not name keeps the pool's
 * limits altogether. */
static int parse_key_models(km__cfg_ctx *c, json_t *mo, const char *path,
                            const km__pool_defaults *pd, km__key_cfg *k)
{
    const char *name;
    json_t *v;
    int rc;

    if (!pd->in_config)
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.models: a key added live takes its own model limits from "
                           "km_key_set_model_limits (kmctl set-limits --model) once added",
                           path);
    if (pd->model_mode != KM_MODELS_PER_MODEL)
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.models: a key's own model limits need its pool's "
                           "\"model_limits\": \"per_model\"", path);
    if (!json_is_object(mo))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.models: must be an object {\"<model name>\": {limits}, ...}",
                           path);
    size_t n = json_object_size(mo);
    if (n == 0)
        return KM_OK;
    if (!(k->own = calloc(n, sizeof *k->own)))
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    json_object_foreach(mo, name, v) {
        char mpath[192];
        uint32_t mi = 0;
        km__limit_cfg given[KM_WIN_COUNT];
        km__own_cfg *o = &k->own[k->n_own];
        snprintf(mpath, sizeof mpath, "%s.models.%.*s", path, KM_ID_MAX, name);
        while (mi < pd->n_models && strcmp(pd->models[mi].name, name))
            mi++;
        if (mi == pd->n_models)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s: not a model of this pool (a key's own limits apply to "
                               "a model its pool lists in \"models\")", mpath);
        if (!json_is_object(v))
            return km__cfg_err(c, KM_ECONFIG, "%s: must be an object (the key's limits "
                               "of this model)", mpath);
        if (json_object_size(v) == 0)
            return km__cfg_err(c, KM_ECONFIG, "%s: names no window (leave the model out "
                               "to keep the pool's limits)", mpath);
        memset(given, 0, sizeof given);
        if ((rc = parse_windows(c, v, mpath, given)) != KM_OK)
            return rc;
        o->model = mi;
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            int named = json_object_get(v, km_window_name(w)) != NULL;
            o->own_set |= (uint32_t)named << w;
            o->limits[w] = named ? given[w] : pd->models[mi].limits[w];
        }
        k->n_own++;
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
int km__cfg_meta_value_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* Serialise a checked metadata object: compact, keys sorted, so equal
 * metadata is equal text.  "" for an empty object.  KM_ECONFIG (*len set)
 * if longer than KM_META_MAX. */
int km__cfg_meta_dump(json_t *m, char out[KM_META_MAX + 1], size_t *len)
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
static int parse_meta(km__cfg_ctx *c, json_t *m, const char *path,
                      char out[KM_META_MAX + 1])
{
    const char *k;
    json_t *v;
    size_t len;

    if (!json_is_object(m))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.meta: must be an object of strings", path);
    json_object_foreach(m, k, v) {
        if (!meta_name_ok(k, strlen(k)))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.meta: name \"%.40s\" is not 1..%d bytes of "
                               "A-Z a-z 0-9 _ -", path, k, KM__META_NAME_MAX);
        if (!json_is_string(v))
            return km__cfg_err(c, KM_ECONFIG, "%s.meta.%s: must be a string", path,
                               k);
        if (!km__cfg_meta_value_ok(json_string_value(v), json_string_length(v)))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.meta.%s: must be printable ASCII", path, k);
    }
    int rc = km__cfg_meta_dump(m, out, &len);
    if (rc == KM_ENOMEM)
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    if (rc != KM_OK)
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.meta: %zu bytes as JSON, more than %d", path, len,
                           KM_META_MAX);
    return KM_OK;
}

/* ------------------------------------------------------------------ keys */

/* Resolve a secret from "secret" or "secret_env" (exactly one). */
static int parse_secret(km__cfg_ctx *c, json_t *kobj, const char *path,
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
        return km__cfg_err(c, KM_ECONFIG,
                           "%s: give one of secret, secret_env and secret_file", path);
    if (!sv && !ev && !fv)
        return km__cfg_err(c, KM_ECONFIG, "%s: missing secret, secret_env or secret_file",
                           path);
    if (fv) {
        /* The file's content, without its trailing newline. */
        const char *fname;
        size_t flen;
        if ((rc = km__cfg_get_str(c, kobj, path, "secret_file", PATH_MAX, &fname, &flen)))
            return rc;
        int fd = open(fname, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd < 0 ? -1 : read(fd, fbuf, sizeof fbuf - 1);
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (got < 0)
            return km__cfg_err(c, KM_ECONFIG, "%s.secret_file: %s: %s", path, fname, strerror(e));
        while (got > 0 && (fbuf[got - 1] == '\n' || fbuf[got - 1] == '\r'))
            got--;
        fbuf[got] = '\0';
        if (got == 0 || (size_t)got > KM_SECRET_MAX) {
            explicit_bzero(fbuf, sizeof fbuf);
            return km__cfg_err(c, KM_ECONFIG, "%s.secret_file: %s: %s", path, fname,
                               got ? "longer than a secret may be" : "empty");
        }
        s = fbuf;
        len = (size_t)got;
    } else if (sv) {
        /* km__cfg_get_str names the field and the length, never the value. */
        if ((rc = km__cfg_get_str(c, kobj, path, "secret", KM_SECRET_MAX, &s, &len)))
            return rc;
    } else {
        const char *var;
        size_t vlen;
        if ((rc = km__cfg_get_str(c, kobj, path, "secret_env", 255, &var, &vlen)))
            return rc;
        if (strchr(var, '='))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret_env: not a valid variable name", path);
        s = getenv(var);
        if (!s)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret_env: environment variable %s is not set",
                               path, var);
        len = strlen(s);
        if (len == 0)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret_env: environment variable %s is empty",
                               path, var);
        if (len > KM_SECRET_MAX)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret_env: environment variable %s is longer "
                               "than %d bytes", path, var, KM_SECRET_MAX);
    }
    /* A secret goes into an HTTP header: printable ASCII, no spaces, so no
     * CR/LF injection and an unambiguous mask.  (Every provider's keys fit.) */
    /* A NUL inside (a secret_file may hold one) would end the checked text
     * early and let the bytes after it through. */
    if (!km__cfg_name_ok(s, 0) || strlen(s) != len) {
        explicit_bzero(fbuf, sizeof fbuf);
        if (fv)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret_file: must hold printable ASCII without spaces", path);
        if (sv)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.secret: must be printable ASCII without "
                               "spaces", path);
        return km__cfg_err(c, KM_ECONFIG,
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

/* A key's "fleet": true, false, or {"id": "...", "strict": bool} (a fleet
 * key with an operator-chosen fleet id and/or the strict bound). */
static int parse_key_fleet(km__cfg_ctx *c, json_t *v, const char *path, km__key_cfg *k)
{
    static const char *const fields[] = {"id", "strict", NULL};
    char sub[160];
    int rc;
    if (json_is_boolean(v)) {
        k->fleet = json_is_true(v) ? 1 : -1;
        return KM_OK;
    }
    if (!json_is_object(v))
        return km__cfg_err(c, KM_ECONFIG, "%s.fleet: must be true, false or an object", path);
    snprintf(sub, sizeof sub, "%s.fleet", path);
    if ((rc = km__cfg_check_fields(c, v, sub, fields)) != KM_OK)
        return rc;
    const char *id;
    size_t len;
    if ((rc = km__cfg_get_str(c, v, sub, "id", KM_ID_MAX, &id, &len)) != KM_OK)
        return rc;
    if (id) {
        /* The ledger's alphabet (tools/sync/ledger.lua, id_arg). */
        if (len == 0 || !km__cfg_name_ok(id, 1))
            return km__cfg_err(c, KM_ECONFIG, "%s.id: must be 1-63 characters of [A-Za-z0-9_.-]",
                               sub);
        memcpy(k->fleet_id, id, len + 1);
    }
    json_t *st = json_object_get(v, "strict");
    if (st && !json_is_boolean(st))
        return km__cfg_err(c, KM_ECONFIG, "%s.strict: must be true or false", sub);
    k->fleet_strict = st && json_is_true(st);
    k->fleet = 1;
    return KM_OK;
}

int km__cfg_parse_key(km__cfg_ctx *c, json_t *kobj, const char *path,
                      const km__pool_defaults *pd, km__key_cfg *k)
{
    static const char *const fields[] = {"id", "secret", "secret_env", "secret_file",
                                         "weight", "limits", "max_inflight",
                                         "price", "budget", "meta", "models", "fleet", NULL};
    km__limit_cfg own[KM_WIN_COUNT];
    const char *id;
    size_t len;
    int rc;

    if (!json_is_object(kobj))
        return km__cfg_err(c, KM_ECONFIG, "%s: must be an object", path);
    if ((rc = km__cfg_check_fields(c, kobj, path, fields)) != KM_OK)
        return rc;

    if ((rc = km__cfg_get_str(c, kobj, path, "id", KM_ID_MAX, &id, &len)) != KM_OK)
        return rc;
    if (!id)
        return km__cfg_err(c, KM_ECONFIG, "%s.id: missing", path);
    if (!km__cfg_name_ok(id, 0))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.id: must be printable ASCII without spaces", path);
    memcpy(k->id, id, len + 1);

    if ((rc = parse_secret(c, kobj, path, k)) != KM_OK)
        return rc;

    k->weight = KM__DEF_WEIGHT;
    if ((rc = km__cfg_get_u32(c, kobj, path, "weight", 1, KM__WEIGHT_MAX, &k->weight)))
        return rc;

    k->max_inflight = pd->max_inflight;
    if ((rc = km__cfg_get_u32(c, kobj, path, "max_inflight", 0, c->cap_inflight,
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
        (rc = parse_budget(c, v, path, &k->budget_microusd, &k->budget_hard, &k->budget_period,
                            &k->budget_tz_min, k->budget_tz)))
        return rc;
    if ((v = json_object_get(kobj, "meta")) &&
        (rc = parse_meta(c, v, path, k->meta)))
        return rc;
    if ((v = json_object_get(kobj, "models")) &&
        (rc = parse_key_models(c, v, path, pd, k)))
        return rc;
    if ((v = json_object_get(kobj, "fleet")) && (rc = parse_key_fleet(c, v, path, k)))
        return rc;
    return KM_OK;
}

/* ------------------------------------------------- one secret, one key
 *
 * A configuration that lists one API key twice (two ids, in one pool or in
 * two) would give that key twice its provider's limits: refused.  Secrets
 * are compared in constant time; to avoid n^2 comparisons they are hashed
 * first (FNV-1a, util.h), and only keys whose hashes are equal are
 * compared.  The hashes stay in this function's memory and are wiped.
 */

int km__secret_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Every byte up to KM_SECRET_MAX is read whatever the content, so the
     * time says nothing about where two secrets differ. */
    size_t n = alen > blen ? alen : blen;
    unsigned char acc = 0;
    if (n < KM_SECRET_MAX)
        n = KM_SECRET_MAX;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        acc |= (unsigned char)(x ^ y);
    }
    return (acc | (alen != blen)) == 0;
}

typedef struct secret_hash {
    uint64_t h;
    uint32_t i;
} secret_hash;

static int cmp_secret_hash(const void *a, const void *b)
{
    const secret_hash *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

int km__config_secret_dup(const km__key_cfg *keys, uint32_t n,
                          uint32_t *first, uint32_t *second)
{
    uint32_t dup = UINT32_MAX, orig = 0;
    secret_hash *hs;

    if (n < 2)
        return 0;
    if (!(hs = malloc((size_t)n * sizeof *hs)))
        return KM_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t h = KM__FNV64_INIT;
        for (uint32_t j = 0; j < keys[i].secret_len; j++)
            h = km__fnv64_step(h, (unsigned char)keys[i].secret[j]);
        hs[i].h = km__fnv64_step(h, keys[i].secret_len);
        hs[i].i = i;
    }
    /* Equal hashes are neighbours, each run in index order: the earliest
     * equal secret before a key is found by walking back its run. */
    qsort(hs, n, sizeof *hs, cmp_secret_hash);
    for (uint32_t r = 1; r < n; r++) {
        const km__key_cfg *k = &keys[hs[r].i];
        for (uint32_t q = r; q > 0 && hs[q - 1].h == hs[r].h; q--) {
            const km__key_cfg *o = &keys[hs[q - 1].i];
            if (km__secret_eq(k->secret, k->secret_len, o->secret,
                              o->secret_len) &&
                hs[r].i < dup) {
                dup = hs[r].i;
                orig = hs[q - 1].i; /* keep walking: an earlier one wins */
            }
        }
    }
    explicit_bzero(hs, (size_t)n * sizeof *hs);
    free(hs);
    if (dup == UINT32_MAX)
        return 0;
    *first = orig;
    *second = dup;
    return 1;
}

/* "pools[P].keys[K]" of key index i of cfg->keys. */
static void key_path(const km_config *cfg, uint32_t i, char *out, size_t len)
{
    for (uint32_t p = 0; p < cfg->n_pools; p++)
        if (i - cfg->pools[p].first_key < cfg->pools[p].n_keys) {
            snprintf(out, len, "pools[%u].keys[%u]", p,
                     i - cfg->pools[p].first_key);
            return;
        }
    snprintf(out, len, "keys[%u]", i);
}

int km__cfg_check_secrets(km__cfg_ctx *c, const km_config *cfg)
{
    uint32_t a, b;
    char pa[48], pb[48];
    int rc = km__config_secret_dup(cfg->keys, cfg->n_keys, &a, &b);

    if (rc == KM_ENOMEM)
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    if (rc == 0)
        return KM_OK;
    key_path(cfg, a, pa, sizeof pa);
    key_path(cfg, b, pb, sizeof pb);
    return km__cfg_err(c, KM_ECONFIG,
                       "%s: key \"%s\" has the same secret as key \"%s\" "
                       "(%s); list each API key once, or it gets its limits "
                       "twice", pb, cfg->keys[b].id, cfg->keys[a].id, pa);
}

int km__cfg_check_zones(km__cfg_ctx *c, const km_config *cfg)
{
    const char *seen[KM__TZ_ZONES];
    uint32_t n = 0, total = cfg->n_pools + cfg->n_keys;
    for (uint32_t i = 0; i < total; i++) {
        const char *z = i < cfg->n_pools ? cfg->pools[i].budget_tz
                                         : cfg->keys[i - cfg->n_pools].budget_tz;
        uint32_t j = 0;
        while (z[0] && j < n && strcmp(seen[j], z) != 0)
            j++;
        if (!z[0] || j < n)
            continue;
        if (n == KM__TZ_ZONES)
            return km__cfg_err(c, KM_ECONFIG,
                               "budgets name more than %d time zones (\"%s\" is one more): "
                               "a segment keeps %d", KM__TZ_ZONES, z, KM__TZ_ZONES);
        seen[n++] = z;
    }
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
static int check_dup_ids(km__cfg_ctx *c, uint32_t pool, const km__key_cfg *keys,
                         uint32_t n)
{
    uint32_t *idx, dup = UINT32_MAX, first = 0;
    if (n < 2)
        return KM_OK;
    idx = malloc(n * sizeof *idx);
    if (!idx)
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
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
        return km__cfg_err(c, KM_ECONFIG,
                           "pools[%u].keys[%u].id: duplicate key id \"%s\" (also "
                           "pools[%u].keys[%u])", pool, dup, keys[dup].id, pool,
                           first);
    return KM_OK;
}

int km__cfg_parse_pool(km__cfg_ctx *c, json_t *pobj, uint32_t pi,
                       km__pool_cfg *p, km__key_cfg *keys)
{
    static const char *const fields[] = {
        "name", "strategy", "limits", "cooldown_s", "max_cooldown_s",
        "max_failures", "max_inflight", "keys", "model_limits", "models",
        "price", "budget", NULL};
    km__pool_defaults pd;
    char path[48];
    const char *name;
    size_t len;
    int rc;

    snprintf(path, sizeof path, "pools[%u]", pi);
    if ((rc = km__cfg_check_fields(c, pobj, path, fields)) != KM_OK)
        return rc;

    if ((rc = km__cfg_get_str(c, pobj, path, "name", KM_ID_MAX, &name, &len)))
        return rc;
    if (!name)
        return km__cfg_err(c, KM_ECONFIG, "%s.name: missing", path);
    if (!km__cfg_name_ok(name, 1))
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.name: may hold only A-Z a-z 0-9 _ . -", path);
    memcpy(p->name, name, len + 1);

    p->strategy = KM_STRATEGY_ROUND_ROBIN;
    json_t *st = json_object_get(pobj, "strategy");
    if (st) {
        int id = km__cfg_strategy_of(json_is_string(st) ? json_string_value(st) : "");
        char names[128];
        if (id < 0)
            return km__cfg_err(c, KM_ECONFIG, "%s.strategy: must be %s", path,
                               km__cfg_strategy_list(names, sizeof names));
        p->strategy = id;
    }

    p->cooldown_s = KM__DEF_COOLDOWN_S;
    p->max_cooldown_s = KM__DEF_MAX_COOLDOWN_S;
    p->max_failures = KM__DEF_MAX_FAILURES;
    if ((rc = km__cfg_get_u32(c, pobj, path, "cooldown_s", 1, UINT32_MAX,
                              &p->cooldown_s)) ||
        (rc = km__cfg_get_u32(c, pobj, path, "max_cooldown_s", 1, UINT32_MAX,
                              &p->max_cooldown_s)) ||
        (rc = km__cfg_get_u32(c, pobj, path, "max_failures", 1, UINT32_MAX,
                              &p->max_failures)))
        return rc;
    if (p->max_cooldown_s < p->cooldown_s) {
        /* Only one of the two may have been given: name what was. */
        if (json_object_get(pobj, "max_cooldown_s"))
            return km__cfg_err(c, KM_ECONFIG,
                               "%s.max_cooldown_s: must be at least cooldown_s "
                               "(%u)", path, p->cooldown_s);
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.cooldown_s: must not exceed max_cooldown_s (%u)",
                           path, p->max_cooldown_s);
    }

    memset(&pd, 0, sizeof pd);
    if ((rc = km__cfg_get_u32(c, pobj, path, "max_inflight", 0, c->cap_inflight,
                              &pd.max_inflight)))
        return rc;
    json_t *lim = json_object_get(pobj, "limits");
    if (lim && (rc = parse_limits(c, lim, path, pd.limits)) != KM_OK)
        return rc;
    if ((rc = parse_models(c, pobj, path, p)) != KM_OK)
        return rc;
    pd.in_config = 1;
    pd.model_mode = p->model_mode;
    pd.n_models = p->n_models;
    pd.models = p->models;
    json_t *v = json_object_get(pobj, "price");
    if (v && (rc = parse_price(c, v, path, &pd.price_in, &pd.price_out)))
        return rc;
    if ((v = json_object_get(pobj, "budget")) &&
        (rc = parse_budget(c, v, path, &p->budget_microusd, &p->budget_hard, &p->budget_period,
                            &p->budget_tz_min, p->budget_tz)))
        return rc;

    /* Array shape was checked by the caller when it counted the keys. */
    json_t *ka = json_object_get(pobj, "keys");
    size_t i;
    json_t *kobj;
    uint64_t total_weight = 0;
    json_array_foreach(ka, i, kobj) {
        char kpath[96];
        snprintf(kpath, sizeof kpath, "%s.keys[%zu]", path, i);
        if ((rc = km__cfg_parse_key(c, kobj, kpath, &pd, &keys[i])) != KM_OK)
            return rc;
        total_weight += keys[i].weight;
    }
    p->defaults = pd;
    /* Weighted choice keeps running sums of weights in 32 bits. */
    if (total_weight > UINT32_MAX)
        return km__cfg_err(c, KM_ECONFIG,
                           "%s.keys: total weight %llu exceeds %u", path,
                           (unsigned long long)total_weight, UINT32_MAX);
    return check_dup_ids(c, pi, keys, p->n_keys);
}

