/*
 * src/snapshot.c - the whole segment as JSON (km_snapshot_json).
 *
 * Built only from the public readers (km_info_get, km_pool_info_get,
 * km_pool_key, km_key_info_get), so it sees exactly what any other tool sees
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
 *               "max_failures", "keys": [{... "counters": {...},
 *               "tokens_used", "limits": {"rpm": {...}, ...}}]}]}
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

static json_t *key_json(const km_key_info *k, uint64_t now)
{
    json_t *lim = json_object(), *key;
    if (!lim)
        return NULL;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        const km_limit_info *l = &k->limits[w];
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
    return key;
}

static int pool_json(km_env *env, int pool, uint64_t now, json_t **out)
{
    km_pool_info pi;
    km_key_info ki;
    json_t *keys, *p;
    int rc = km_pool_info_get(env, pool, &pi);
    if (rc != KM_OK)
        return rc;
    if (!(keys = json_array()))
        return KM_ENOMEM;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        int key = km_pool_key(env, pool, i);
        if (key < 0) {
            rc = key;
            goto fail;
        }
        if ((rc = km_key_info_get(env, (uint32_t)key, &ki)) != KM_OK)
            goto fail;
        json_t *k = key_json(&ki, now);
        if (!k || json_array_append_new(keys, k) < 0) {
            rc = KM_ENOMEM;
            goto fail;
        }
    }
    p = json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "name", pi.name,
                  "strategy", km_strategy_name(pi.strategy),
                  "cooldown_s", jint(pi.cooldown_s),
                  "max_cooldown_s", jint(pi.max_cooldown_s),
                  "max_failures", jint(pi.max_failures), "keys", keys);
    if (!p)
        return KM_ENOMEM;
    *out = p;
    return KM_OK;
fail:
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
    *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return *out ? KM_OK : KM_ENOMEM;
}
