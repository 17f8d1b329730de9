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
 * km_config_from_env() (src/config_env.c) builds the same JSON tree from
 * environment variables and runs it through the same parser: one set of
 * rules for both sources.
 *
 * This file holds the parsing context and its getters, the top level and
 * the entry points; pools, keys and their fields are in src/config_pool.c
 * (the map of the files is at the top of src/config_int.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include "config_int.h"

/* ------------------------------------------------- context and getters */

/* Write "<origin>: <message>" into the caller's buffer; return `code`. */
int km__cfg_err(km__cfg_ctx *c, int code, const char *fmt, ...)
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
int km__cfg_check_fields(km__cfg_ctx *c, json_t *obj, const char *path,
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
            return km__cfg_err(c, KM_ECONFIG, "%s%s%.64s: unknown field", path,
                               path[0] ? "." : "", k);
    }
    return KM_OK;
}

/* An integer member in [min, max]; absent leaves *out unchanged. */
static int get_uint(km__cfg_ctx *c, json_t *obj, const char *path,
                    const char *field, uint64_t min, uint64_t max,
                    uint64_t *out)
{
    json_t *v = json_object_get(obj, field);
    const char *dot = path[0] ? "." : "";
    if (!v)
        return KM_OK;
    if (!json_is_integer(v))
        return km__cfg_err(c, KM_ECONFIG, "%s%s%s: must be an integer", path, dot,
                           field);
    json_int_t i = json_integer_value(v);
    if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
        return km__cfg_err(c, KM_ECONFIG,
                           "%s%s%s: must be an integer from %llu to %llu", path,
                           dot, field, (unsigned long long)min,
                           (unsigned long long)max);
    *out = (uint64_t)i;
    return KM_OK;
}

int km__cfg_get_u32(km__cfg_ctx *c, json_t *obj, const char *path,
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
int km__cfg_get_str(km__cfg_ctx *c, json_t *obj, const char *path,
                    const char *field, size_t maxlen, const char **out,
                    size_t *len)
{
    json_t *v = json_object_get(obj, field);
    const char *dot = path[0] ? "." : "";
    *out = NULL;
    if (!v)
        return KM_OK;
    if (!json_is_string(v))
        return km__cfg_err(c, KM_ECONFIG, "%s%s%s: must be a string", path, dot,
                           field);
    *len = json_string_length(v);
    if (*len == 0)
        return km__cfg_err(c, KM_ECONFIG, "%s%s%s: must not be empty", path, dot,
                           field);
    if (*len > maxlen)
        return km__cfg_err(c, KM_ECONFIG, "%s%s%s: longer than %zu bytes", path,
                           dot, field, maxlen);
    *out = json_string_value(v);
    return KM_OK;
}

/* Pool names: [A-Za-z0-9_.-].  Key ids: printable ASCII without space, so
 * they survive a shell command line and a table column unquoted. */
int km__cfg_name_ok(const char *s, int strict)
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

/* -------------------------------------------------------------- top level */

static int parse_capacity(km__cfg_ctx *c, json_t *cap, km_config *cfg,
                          int *keys_given, int *pools_given, int *models_given)
{
    static const char *const fields[] = {"keys", "processes", "pools",
                                         "inflight_per_key", "models",
                                         "usage_events", "fleet", NULL};
    int rc;
    *keys_given = *pools_given = *models_given = 0;
    if (!cap)
        return KM_OK;
    if (!json_is_object(cap))
        return km__cfg_err(c, KM_ECONFIG, "capacity: must be an object");
    if ((rc = km__cfg_check_fields(c, cap, "capacity", fields)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "keys", 1, KM_KEYS_MAX,
                              &cfg->cap_keys)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "processes", 1, KM_PROCS_MAX,
                              &cfg->cap_procs)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "pools", 1, KM_POOLS_MAX,
                              &cfg->cap_pools)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "inflight_per_key", 1,
                              KM_INFLIGHT_MAX, &cfg->cap_inflight)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "models", 1, KM_MODELS_MAX,
                              &cfg->cap_models)) ||
        (rc = km__cfg_get_u32(c, cap, "capacity", "usage_events", 0, KM__MAX_CAP_USAGE,
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
    json_t *fl = json_object_get(cap, "fleet");
    if (fl && !json_is_boolean(fl))
        return km__cfg_err(c, KM_ECONFIG, "capacity.fleet: must be true or false");
    cfg->fleet_region = fl && json_is_true(fl);
    *keys_given = json_object_get(cap, "keys") != NULL;
    *pools_given = json_object_get(cap, "pools") != NULL;
    *models_given = json_object_get(cap, "models") != NULL;
    return KM_OK;
}

/* The segment's "fleet": true (every key a fleet key unless it says
 * "fleet": false), false, or {"all": bool, "policy": "stop"|"local"}. */
static int parse_fleet(km__cfg_ctx *c, json_t *v, km_config *cfg)
{
    static const char *const fields[] = {"all", "policy", NULL};
    int rc;
    cfg->fleet_policy = KM_FLEET_STOP;
    if (!v)
        return KM_OK;
    if (json_is_boolean(v)) {
        cfg->fleet_all = json_is_true(v);
        return KM_OK;
    }
    if (!json_is_object(v))
        return km__cfg_err(c, KM_ECONFIG, "fleet: must be true, false or an object");
    if ((rc = km__cfg_check_fields(c, v, "fleet", fields)) != KM_OK)
        return rc;
    json_t *all = json_object_get(v, "all"), *pol = json_object_get(v, "policy");
    if (all && !json_is_boolean(all))
        return km__cfg_err(c, KM_ECONFIG, "fleet.all: must be true or false");
    cfg->fleet_all = all && json_is_true(all);
    if (pol) {
        const char *ps = json_string_value(pol);
        if (ps && strcmp(ps, "stop") == 0)
            cfg->fleet_policy = KM_FLEET_STOP;
        else if (ps && strcmp(ps, "local") == 0)
            cfg->fleet_policy = KM_FLEET_LOCAL;
        else
            return km__cfg_err(c, KM_ECONFIG, "fleet.policy: must be \"stop\" or \"local\"");
    }
    /* An object asks for the region even when no key is a fleet key yet
     * (keys added later may be). */
    cfg->fleet_region = 1;
    return KM_OK;
}

int km__cfg_parse_root(km__cfg_ctx *c, json_t *root, km_config *cfg)
{
    static const char *const fields[] = {"capacity", "pools", "fleet", NULL};
    int keys_given, pools_given, models_given, rc;
    size_t i, total = 0, most_models = 0;
    json_t *pobj;

    if (!json_is_object(root))
        return km__cfg_err(c, KM_ECONFIG, "top level: must be a JSON object");
    if ((rc = km__cfg_check_fields(c, root, "", fields)) != KM_OK)
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
    if ((rc = parse_fleet(c, json_object_get(root, "fleet"), cfg)) != KM_OK)
        return rc;

    json_t *pools = json_object_get(root, "pools");
    if (!pools)
        return km__cfg_err(c, KM_ECONFIG, "pools: missing");
    if (!json_is_array(pools))
        return km__cfg_err(c, KM_ECONFIG, "pools: must be an array");
    size_t np = json_array_size(pools);
    if (np == 0)
        return km__cfg_err(c, KM_ECONFIG, "pools: no pools");

    /* First pass: shapes and sizes, so that keys can be stored contiguously
     * and capacity errors come before per-field ones deep inside. */
    json_array_foreach(pools, i, pobj) {
        json_t *merged;
        if (!json_is_object(pobj))
            return km__cfg_err(c, KM_ECONFIG, "pools[%zu]: must be an object", i);
        /* A pool naming a preset is parsed as its merge with the preset
         * (src/config_preset.c), from here on: sizes included. */
        if ((rc = km__cfg_preset_apply(c, i, pobj, &merged)) != KM_OK)
            return rc;
        if (merged) {
            if (json_array_set_new(pools, i, merged) < 0)
                return km__cfg_err(c, KM_ENOMEM, "out of memory");
            pobj = merged;
        }
        json_t *ka = json_object_get(pobj, "keys");
        if (!ka)
            return km__cfg_err(c, KM_ECONFIG, "pools[%zu].keys: missing", i);
        if (!json_is_array(ka))
            return km__cfg_err(c, KM_ECONFIG, "pools[%zu].keys: must be an array",
                               i);
        if (json_array_size(ka) == 0)
            return km__cfg_err(c, KM_ECONFIG, "pools[%zu].keys: no keys", i);
        total += json_array_size(ka);
        /* A "models" of another type is refused by parse_models(). */
        json_t *mo = json_object_get(pobj, "models");
        size_t nm = json_is_object(mo) ? json_object_size(mo) : 0;
        if (models_given && nm > cfg->cap_models)
            return km__cfg_err(c, KM_ECONFIG,
                               "pools[%zu].models: more models (%zu) than "
                               "capacity.models (%u)", i, nm, cfg->cap_models);
        if (nm > KM_MODELS_MAX)
            return km__cfg_err(c, KM_ECONFIG,
                               "pools[%zu].models: more models (%zu) than the "
                               "maximum (%d)", i, nm, KM_MODELS_MAX);
        if (nm > most_models)
            most_models = nm;
    }
    if (!models_given && most_models > cfg->cap_models)
        cfg->cap_models = (uint32_t)most_models;
    if (np > cfg->cap_pools) {
        if (pools_given)
            return km__cfg_err(c, KM_ECONFIG,
                               "more pools (%zu) than capacity.pools (%u)", np,
                               cfg->cap_pools);
        if (np > KM_POOLS_MAX)
            return km__cfg_err(c, KM_ECONFIG,
                               "more pools (%zu) than the maximum (%d)", np,
                               KM_POOLS_MAX);
        cfg->cap_pools = (uint32_t)np;
    }
    if (total > cfg->cap_keys) {
        if (keys_given)
            return km__cfg_err(c, KM_ECONFIG,
                               "more keys (%zu) than capacity.keys (%u)", total,
                               cfg->cap_keys);
        if (total > KM_KEYS_MAX)
            return km__cfg_err(c, KM_ECONFIG,
                               "more keys (%zu) than the maximum (%d)", total,
                               KM_KEYS_MAX);
        cfg->cap_keys = (uint32_t)total;
    }

    cfg->pools = calloc(np, sizeof *cfg->pools);
    cfg->keys = calloc(total, sizeof *cfg->keys);
    if (!cfg->pools || !cfg->keys)
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    /* Counts are final from here on, so a failure below wipes every slot. */
    cfg->n_pools = (uint32_t)np;
    cfg->n_keys = (uint32_t)total;

    uint32_t first = 0;
    json_array_foreach(pools, i, pobj) {
        km__pool_cfg *p = &cfg->pools[i];
        p->first_key = first;
        p->n_keys = (uint32_t)json_array_size(json_object_get(pobj, "keys"));
        if ((rc = km__cfg_parse_pool(c, pobj, (uint32_t)i, p, &cfg->keys[first])))
            return rc;
        first += p->n_keys;
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->pools[j].name, p->name) == 0)
                return km__cfg_err(c, KM_ECONFIG,
                                   "pools[%zu].name: duplicate pool name \"%s\" "
                                   "(also pools[%zu])", i, p->name, j);
    }
    if ((rc = km__cfg_check_secrets(c, cfg)) != KM_OK ||
        (rc = km__cfg_check_zones(c, cfg)) != KM_OK)
        return rc;
    /* The fleet region: asked for, or needed by a fleet key. */
    for (uint32_t k = 0; k < cfg->n_keys; k++)
        if (cfg->keys[k].fleet > 0 || (cfg->keys[k].fleet == 0 && cfg->fleet_all))
            cfg->fleet_region = 1;
    return KM_OK;
}

/* jansson's message, without the quoted token near the error unless it is
 * harmless: a string, number or bare word there may be (part of) a secret,
 * e.g. "invalid token near 'sk'" for an unquoted key.  Kept: a single
 * punctuation character ("near ','") and the name of a duplicate key. */
void km__cfg_syntax_text(const json_error_t *e, char *out, size_t outlen)
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

void km__cfg_destroy(km_config *cfg)
{
    if (cfg->keys) {
        for (uint32_t i = 0; i < cfg->n_keys; i++)
            free(cfg->keys[i].own);
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
    km__cfg_ctx c = {origin ? origin : "<config>", errbuf, errlen,
                     KM__DEF_CAP_INFLIGHT, NULL};
    json_error_t jerr;
    km_config *cfg;
    json_t *root;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || (!json && len))
        return km__cfg_err(&c, KM_EINVAL, "invalid argument");
    *out = NULL;

    root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char text[JSON_ERROR_TEXT_LENGTH];
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return km__cfg_err(&c, KM_ENOMEM, "out of memory");
        km__cfg_syntax_text(&jerr, text, sizeof text);
        /* km__cfg_err adds "<origin>: "; jansson's position follows directly. */
        if (errbuf && errlen)
            snprintf(errbuf, errlen, "%s:%d:%d: %s", c.origin, jerr.line,
                     jerr.column, text);
        return KM_ECONFIG;
    }

    cfg = calloc(1, sizeof *cfg);
    if (!cfg) {
        json_decref(root);
        return km__cfg_err(&c, KM_ENOMEM, "out of memory");
    }
    rc = km__cfg_parse_root(&c, root, cfg);
    json_decref(root);
    json_decref(c.presets);
    if (rc != KM_OK) {
        km__cfg_destroy(cfg); /* wipes every key slot, parsed or not */
        return rc;
    }
    *out = cfg;
    return KM_OK;
}

/* Parse one JSON text for reconfiguration; the object is handed to `fn`. */
static int parse_one(km__cfg_ctx *c, const char *json,
                     int (*fn)(km__cfg_ctx *, json_t *, void *), void *arg)
{
    json_error_t jerr;
    json_t *root;
    int rc;

    if (c->errbuf && c->errlen)
        c->errbuf[0] = '\0';
    if (!json)
        return km__cfg_err(c, KM_EINVAL, "invalid argument");
    root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char text[JSON_ERROR_TEXT_LENGTH];
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return km__cfg_err(c, KM_ENOMEM, "out of memory");
        km__cfg_syntax_text(&jerr, text, sizeof text);
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
    const km__pool_defaults *pd;
    km__key_cfg *out;
} key_job;

static int key_job_run(km__cfg_ctx *c, json_t *root, void *arg)
{
    key_job *j = arg;
    return km__cfg_parse_key(c, root, "key", j->pd, j->out);
}

int km__config_parse_key(const char *json, const km__pool_defaults *pd,
                         uint32_t cap_inflight, km__key_cfg *out,
                         char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {"json", errbuf, errlen, cap_inflight, NULL};
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

static int limits_job_run(km__cfg_ctx *c, json_t *root, void *arg)
{
    limits_job *j = arg;
    const char *k;
    json_t *v;
    int rc;

    if (!json_is_object(root))
        return km__cfg_err(c, KM_ECONFIG, "limits: must be an object");
    if ((rc = km__cfg_check_windows(c, root, "limits")) != KM_OK)
        return rc;
    if (json_object_size(root) == 0)
        return km__cfg_err(c, KM_ECONFIG, "limits: names no window");
    json_object_foreach(root, k, v) {
        char wpath[64];
        int w = km__cfg_window_of(k);
        snprintf(wpath, sizeof wpath, "limits.%s", k);
        *j->set |= 1u << w;
        if (json_is_null(v)) { /* the window's limit is removed */
            memset(&j->out[w], 0, sizeof j->out[w]);
            continue;
        }
        if ((rc = km__cfg_parse_limit(c, v, wpath, w, &j->out[w])) != KM_OK)
            return rc;
    }
    return KM_OK;
}

int km__config_parse_limits(const char *json, km__limit_cfg out[KM_WIN_COUNT],
                            uint32_t *set, char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {"json", errbuf, errlen, KM__DEF_CAP_INFLIGHT, NULL};
    limits_job j = {out, set};
    *set = 0;
    memset(out, 0, KM_WIN_COUNT * sizeof *out);
    return parse_one(&c, json, limits_job_run, &j);
}

KM_EXTERN int km_config_parse_file(const char *path, km_config **out,
                                   char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {path ? path : "<config>", errbuf, errlen, 0, NULL};
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int fd, rc, saved;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!path || !out)
        return km__cfg_err(&c, KM_EINVAL, "invalid argument");
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
        return km__cfg_err(&c, KM_ENOMEM, "out of memory");
    }
    km__cfg_err(&c, KM_ESYS, "%s", strerror(saved));
    errno = saved;
    return KM_ESYS;
}

KM_EXTERN void km_config_free(km_config *cfg)
{
    if (cfg)
        km__cfg_destroy(cfg);
}


/* ---------------------------------------------- pools, for reconfiguration */

typedef struct pool_job {
    const km__hdr *geom;
    km_config *cfg;
} pool_job;

/* One pool object, parsed as the only pool of a configuration whose
 * capacities are the segment's: every rule of a configuration file holds
 * (presets, keys, models, secrets listed once). */
static int pool_job_run(km__cfg_ctx *c, json_t *root, void *arg)
{
    pool_job *j = arg;
    if (!json_is_object(root))
        return km__cfg_err(c, KM_ECONFIG, "pool: must be a JSON object (one element of \"pools\")");
    json_t *top = json_pack("{s:{s:i,s:i,s:i},s:[O]}", "capacity", "keys", (json_int_t)j->geom->cap_keys,
                            "inflight_per_key", (json_int_t)j->geom->cap_inflight, "models",
                            (json_int_t)j->geom->cap_models, "pools", root);
    if (!top)
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    int rc = km__cfg_parse_root(c, top, j->cfg);
    json_decref(top);
    return rc;
}

int km__config_parse_pool(const char *json, const km__hdr *geom, km_config **out,
                          char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {"pool", errbuf, errlen, geom->cap_inflight, NULL};
    pool_job j = {geom, calloc(1, sizeof(km_config))};
    *out = NULL;
    if (!j.cfg)
        return km__cfg_err(&c, KM_ENOMEM, "out of memory");
    int rc = parse_one(&c, json, pool_job_run, &j);
    json_decref(c.presets);
    if (rc != KM_OK) {
        km__cfg_destroy(j.cfg); /* wipes every key slot, parsed or not */
        return rc;
    }
    *out = j.cfg;
    return KM_OK;
}

typedef struct pool_set_job {
    const km__pool *cur;
    km__pool_setcfg *out;
} pool_set_job;

/* What km_pool_set may change, and what it may not (with the reason). */
static const char *const pool_set_fields[] = {"strategy", "cooldown_s", "max_cooldown_s",
                                              "max_failures", "budget", "limits", "models", NULL};

/* The settings object of km_pool_set: parsed as a pool made of the pool's
 * current settings with the given ones over them (so every rule of a
 * configuration holds, e.g. max_cooldown_s >= cooldown_s), plus the
 * limits ("limits": windows named replace, null removes) and the models
 * named (their new limits, or models to append). */
static int pool_set_run(km__cfg_ctx *c, json_t *root, void *arg)
{
    pool_set_job *j = arg;
    km__pool_setcfg *o = j->out;
    const char *k;
    json_t *v;
    int rc;

    if (!json_is_object(root))
        return km__cfg_err(c, KM_ECONFIG, "settings: must be a JSON object");
    if (json_object_size(root) == 0)
        return km__cfg_err(c, KM_ECONFIG, "settings: name nothing to change (%s)",
                           "strategy, cooldown_s, max_cooldown_s, max_failures, budget, limits, models");
    json_object_foreach(root, k, v) {
        int ok = 0;
        for (size_t i = 0; pool_set_fields[i]; i++)
            ok |= strcmp(k, pool_set_fields[i]) == 0;
        if (!ok)
            return km__cfg_err(c, KM_ECONFIG,
                               "%s: cannot be changed live (strategy, cooldown_s, max_cooldown_s, "
                               "max_failures, budget, limits and models can; a pool's name, "
                               "model_limits, price and max_inflight stay as created, its keys "
                               "change with add-key, remove-key and set-limits)", k);
    }
    json_t *mo = json_object_get(root, "models");
    if (mo && json_is_object(mo))
        json_object_foreach(mo, k, v)
            if (json_is_null(v))
                return km__cfg_err(c, KM_ECONFIG,
                                   "models.%s: a model cannot be removed live (only its limits "
                                   "changed, or models appended up to capacity.models)", k);
    /* The pool as it is, with the given settings over it. */
    json_t *p = json_deep_copy(root);
    json_t *key = json_pack("[{s:s,s:s}]", "id", "k", "secret", "placeholder-of-set-pool");
    if (!p || !key) {
        json_decref(p);
        json_decref(key);
        return km__cfg_err(c, KM_ENOMEM, "out of memory");
    }
    json_t *lim = json_object_get(root, "limits");
    json_t *bud = json_object_get(root, "budget");
    json_object_del(p, "limits"); /* parsed below: null removes a window */
    if (bud && json_is_null(bud))
        json_object_del(p, "budget"); /* no budget any more */
    json_object_set_new(p, "name", json_string("set"));
    json_object_set_new(p, "keys", key);
    json_object_set_new(p, "model_limits",
                        json_string(j->cur->model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global"));
    if (!json_object_get(p, "cooldown_s"))
        json_object_set_new(p, "cooldown_s", json_integer(j->cur->cooldown_s));
    if (!json_object_get(p, "max_cooldown_s"))
        json_object_set_new(p, "max_cooldown_s", json_integer(j->cur->max_cooldown_s));
    if (!json_object_get(p, "max_failures"))
        json_object_set_new(p, "max_failures", json_integer(j->cur->max_failures));
    if (!json_object_get(p, "models") && j->cur->model_mode == KM_MODELS_PER_MODEL)
        json_object_set_new(p, "model_limits", json_string("global")); /* models untouched */
    km__pool_cfg pc;
    km__key_cfg kc;
    memset(&pc, 0, sizeof pc);
    pc.n_keys = 1;
    rc = km__cfg_parse_pool(c, p, 0, &pc, &kc);
    json_decref(p);
    explicit_bzero(&kc, sizeof kc);
    if (rc == KM_OK && pc.n_models > KM_MODELS_MAX)
        rc = km__cfg_err(c, KM_ECONFIG, "models: more than %d", KM_MODELS_MAX);
    if (rc == KM_OK) {
        km__pstage *s = &o->stage;
        s->strategy = (uint32_t)pc.strategy;
        s->cooldown_s = pc.cooldown_s;
        s->max_cooldown_s = pc.max_cooldown_s;
        s->max_failures = pc.max_failures;
        s->budget_microusd = pc.budget_microusd;
        s->budget_hard = (uint32_t)pc.budget_hard;
        s->budget_period = (uint32_t)pc.budget_period;
        s->budget_tz_min = pc.budget_tz_min;
        memcpy(o->budget_tz, pc.budget_tz, sizeof o->budget_tz);
        s->set = (json_object_get(root, "strategy") ? KM__PSET_STRATEGY : 0) |
                 (json_object_get(root, "cooldown_s") ? KM__PSET_COOLDOWN : 0) |
                 (json_object_get(root, "max_cooldown_s") ? KM__PSET_MAX_COOLDOWN : 0) |
                 (json_object_get(root, "max_failures") ? KM__PSET_MAX_FAILURES : 0) |
                 (bud ? KM__PSET_BUDGET : 0);
        o->n_models = mo ? pc.n_models : 0;
        for (uint32_t i = 0; i < o->n_models; i++)
            o->models[i] = pc.models[i];
    }
    free(pc.models);
    if (rc != KM_OK || !lim)
        return rc;
    limits_job lj = {o->limits, &o->win_set};
    return limits_job_run(c, lim, &lj);
}

int km__config_parse_pool_set(const char *json, const km__pool *cur, uint32_t cap_inflight,
                              km__pool_setcfg *out, char *errbuf, size_t errlen)
{
    km__cfg_ctx c = {"settings", errbuf, errlen, cap_inflight, NULL};
    pool_set_job j = {cur, out};
    memset(out, 0, sizeof *out);
    int rc = parse_one(&c, json, pool_set_run, &j);
    json_decref(c.presets);
    return rc;
}
