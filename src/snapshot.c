/*
 * src/snapshot.c - the whole segment as JSON (km_snapshot_json).
 *
 * Built only from the public readers (km_info_get, km_pool_info_get,
 * km_pool_key, km_key_info_get, km_model_info_get), so it sees exactly what
 * any other tool sees
 * and cannot depend on the layout.  Like the readers it runs concurrently
 * with acquire/release: each number is read atomically, but numbers of one
 * key need not be mutually consistent while operations run.
 *
 * Secrets never appear: a key's "secret" is km_key_info.secret_masked.
 *
 * Shape (format 1; docs/kmctl.md):
 *   {"keymesh", "format", "taken_unix_ms", "capacity": {...}, "size_bytes",
 *    "processes_attached",
 *    "pools": [{"name", "strategy", "cooldown_s", "max_cooldown_s",
 *               "max_failures", "model_limits", "models": [names],
 *               "budget": {"usd", "hard", "spent_usd"} | null, "spent_usd",
 *               "waiters",
 *               "keys": [{... "counters": {...}, "tokens_used",
 *                         "limits": {"rpm": {...}, ...},
 *                         "models": {"<name>": {"rpm": {...}}} (per_model
 *                         pools only), "price": {...}, "budget", "spent_usd",
 *                         "success_rate", "meta": {...}}]}]}
 *   Money is in US dollars (JSON reals, from micro-USD counters).
 *   Additions to format 1 keep every earlier field; readers ignore fields
 *   they do not know.
 */
#include <stdlib.h>
#include <time.h>

#include <jansson.h>

#include "internal.h"

#define KM__SNAPSHOT_FORMAT 1

/* json_integer takes a signed 64-bit value; counters never get near 2^63,
 * but clamp rather than wrap to a negative number if one ever did. */
static json_t *jint(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* A string that may not be valid UTF-8 (a masked secret cut inside a
 * multi-byte character): jansson refuses those, so show a placeholder. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    return j ? j : json_string("?");
}

static const char *mode_name(int mode)
{
    return mode == KM_MODE_SLIDING ? "sliding" : "token_bucket";
}

/* Micro-USD as US dollars. */
static json_t *jusd(uint64_t microusd)
{
    return json_real((double)microusd / 1e6);
}

/* {"rpm": {"limit", "burst", "mode", "available"}, ...}: the windows that
 * have a limit. */
static json_t *limits_json(const km_limit_info limits[KM_WIN_COUNT])
{
    json_t *lim = json_object();
    if (!lim)
        return NULL;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        const km_limit_info *l = &limits[w];
        if (l->limit == 0)
            continue;
        json_t *o = json_pack("{s:o, s:o, s:s, s:o}", "limit", jint(l->limit),
                              "burst", jint(l->burst), "mode",
                              mode_name(l->mode), "available",
                              jint(l->available));
        if (!o || json_object_set_new(lim, km_window_name(w), o) < 0) {
            json_decref(lim);
            return NULL;
        }
    }
    return lim;
}

/* A key's metadata as JSON: the object it holds; its text if that does
 * not parse (never expected: the parser wrote it); {} if none. */
static json_t *meta_json(const char *meta)
{
    if (!meta[0])
        return json_object();
    json_t *m = json_loads(meta, 0, NULL);
    return m ? m : jstr(meta);
}

/* The limits of each model of a per_model pool on key `key`:
 * {"<model>": {"rpm": {...}}, ...}. */
static json_t *key_models_json(km_env *env, int pool, uint32_t n_models,
                               uint32_t key)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (uint32_t i = 0; i < n_models; i++) {
        char name[KM_ID_MAX + 1];
        km_limit_info lim[KM_WIN_COUNT];
        if (km_model_info_get(env, pool, i, key, name, lim) != KM_OK)
            break; /* fewer models than counted: show what there is */
        json_t *l = limits_json(lim);
        if (!l || json_object_set_new(o, name, l) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *key_json(const km_key_info *k, uint64_t now)
{
    json_t *lim = limits_json(k->limits), *key;
    if (!lim)
        return NULL;
    /* Round the remaining cooldown up, so a cooling key never shows 0. */
    uint64_t cool_ms = k->cooldown_until_ns > now
                           ? (k->cooldown_until_ns - now + 999999) / 1000000
                           : 0;
    json_t *counters = json_pack(
        "{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "acquired", jint(k->acquired),
        "success", jint(k->outcomes[KM_OUT_SUCCESS]),
        "rate_limited", jint(k->outcomes[KM_OUT_RATE_LIMITED]),
        "failure", jint(k->outcomes[KM_OUT_FAILURE]),
        "auth", jint(k->outcomes[KM_OUT_AUTH]),
        "quota", jint(k->outcomes[KM_OUT_QUOTA]),
        "cancelled", jint(k->outcomes[KM_OUT_CANCELLED]),
        "abandoned", jint(k->abandoned),
        "stale_releases", jint(k->stale_releases));
    if (!counters) {
        json_decref(lim);
        return NULL;
    }
    /* "o" steals its reference even when json_pack fails (jansson >= 2.9). */
    key = json_pack(
        "{s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "id", jstr(k->id),
        "secret", jstr(k->secret_masked),
        "weight", jint(k->weight),
        "state", km_key_state_name(k->state),
        "cooldown_remaining_ms", jint(cool_ms),
        "inflight", jint(k->inflight),
        "max_inflight", jint(k->max_inflight),
        "consecutive_failures", jint(k->consecutive_failures),
        "consecutive_429s", jint(k->consecutive_429s),
        "latency_ema_us", jint(k->latency_ema_us),
        "counters", counters,
        "tokens_used", jint(k->tokens_used),
        "limits", lim);
    if (!key)
        return NULL;
    json_t *budget = k->budget_microusd
                         ? json_pack("{s:o, s:b}", "usd",
                                     jusd(k->budget_microusd), "hard",
                                     k->budget_hard != 0)
                         : json_null();
    json_t *more = json_pack(
        "{s:{s:o, s:o}, s:o, s:o, s:o, s:o}",
        "price",
        "input_per_1k", jusd(k->price_in_microusd_per_1k),
        "output_per_1k", jusd(k->price_out_microusd_per_1k),
        "budget", budget,
        "spent_usd", jusd(k->spent_microusd),
        "success_rate", json_real((double)k->success_ppm / 1e6),
        "meta", meta_json(k->meta));
    if (!more || json_object_update(key, more) < 0) {
        json_decref(more);
        json_decref(key);
        return NULL;
    }
    json_decref(more);
    return key;
}

static int pool_json(km_env *env, int pool, uint64_t now, json_t **out)
{
    km_pool_info pi;
    km_key_info ki;
    json_t *keys, *models = NULL, *p;
    int rc = km_pool_info_get(env, pool, &pi);
    if (rc != KM_OK)
        return rc;
    if (!(keys = json_array()))
        return KM_ENOMEM;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        int key = km_pool_key(env, pool, i);
        /* A key removed meanwhile (or still listed, skipped, after a
         * removal) is not part of the pool any more: left out. */
        if (key == KM_ENOKEY)
            continue;
        if (key < 0) {
            rc = key;
            goto fail;
        }
        if ((rc = km_key_info_get(env, (uint32_t)key, &ki)) == KM_ENOKEY)
            continue;
        if (rc != KM_OK)
            goto fail;
        json_t *k = key_json(&ki, now);
        if (k && pi.model_mode == KM_MODELS_PER_MODEL) {
            json_t *m = key_models_json(env, pool, pi.n_models, (uint32_t)key);
            if (!m || json_object_set_new(k, "models", m) < 0) {
                json_decref(k);
                k = NULL;
            }
        }
        if (!k || json_array_append_new(keys, k) < 0) {
            rc = KM_ENOMEM;
            goto fail;
        }
    }
    /* Model names; their limits are per key (above).  Read through the
     * first key, which every pool has. */
    if (!(models = json_array())) {
        rc = KM_ENOMEM;
        goto fail;
    }
    int first = pi.n_keys ? km_pool_key(env, pool, 0) : -1;
    for (uint32_t i = 0; first >= 0 && i < pi.n_models; i++) {
        char name[KM_ID_MAX + 1];
        km_limit_info lim[KM_WIN_COUNT];
        if (km_model_info_get(env, pool, i, (uint32_t)first, name, lim) != KM_OK)
            break;
        if (json_array_append_new(models, jstr(name)) < 0) {
            rc = KM_ENOMEM;
            goto fail;
        }
    }
    json_t *budget = pi.budget_microusd
                         ? json_pack("{s:o, s:b, s:o}", "usd",
                                     jusd(pi.budget_microusd), "hard",
                                     pi.budget_hard != 0, "spent_usd",
                                     jusd(pi.spent_microusd))
                         : json_null();
    /* "o" steals even on failure: models and keys are gone if p is NULL. */
    p = json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o}",
                  "name", pi.name,
                  "strategy", km_strategy_name(pi.strategy),
                  "cooldown_s", jint(pi.cooldown_s),
                  "max_cooldown_s", jint(pi.max_cooldown_s),
                  "max_failures", jint(pi.max_failures),
                  "model_limits",
                  pi.model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global",
                  "models", models,
                  "budget", budget,
                  "spent_usd", jusd(pi.spent_microusd),
                  "waiters", jint(pi.waiters),
                  "keys", keys);
    if (!p)
        return KM_ENOMEM;
    *out = p;
    return KM_OK;
fail:
    json_decref(models);
    json_decref(keys);
    return rc;
}

KM_EXTERN int km_snapshot_json(km_env *env, char **out)
{
    km_info info;
    struct timespec wall;
    json_t *root = NULL, *pools;
    int rc;

    if (!env || !out)
        return KM_EINVAL;
    *out = NULL;
    if ((rc = km_info_get(env, &info)) != KM_OK)
        return rc;
    clock_gettime(CLOCK_REALTIME, &wall);
    uint64_t now = km_now_ns();
    uint64_t taken_ms = (uint64_t)wall.tv_sec * 1000 +
                        (uint64_t)wall.tv_nsec / 1000000;

    if (!(pools = json_array()))
        return KM_ENOMEM;
    for (uint32_t p = 0; p < info.n_pools; p++) {
        json_t *pj;
        if ((rc = pool_json(env, (int)p, now, &pj)) != KM_OK) {
            json_decref(pools);
            return rc;
        }
        if (json_array_append_new(pools, pj) < 0) {
            json_decref(pools);
            return KM_ENOMEM;
        }
    }
    root = json_pack("{s:s, s:i, s:o, s:{s:o, s:o, s:o, s:o}, s:o, s:o, s:o}",
                     "keymesh", km_version(),
                     "format", KM__SNAPSHOT_FORMAT,
                     "taken_unix_ms", jint(taken_ms),
                     "capacity",
                     "keys", jint(info.cap_keys),
                     "pools", jint(info.cap_pools),
                     "processes", jint(info.cap_procs),
                     "inflight_per_key", jint(info.cap_inflight),
                     "size_bytes", jint(info.size_bytes),
                     "processes_attached", jint(info.n_procs),
                     "pools", pools);
    if (!root)
        return KM_ENOMEM;
    /* 15 significant digits: every micro-USD amount below 1e9 USD prints
     * exactly (0.0025, not 0.0025000000000000001). */
    *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                JSON_REAL_PRECISION(15));
    json_decref(root);
    return *out ? KM_OK : KM_ENOMEM;
}
