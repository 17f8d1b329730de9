/*
 * src/stats.c - statistics of keys, pools and models (km_*_stats_get).
 *
 * Built only on the public readers of keymesh.h (km_key_info_get,
 * km_pool_info_get, km_pool_key, km_model_info_get), like src/snapshot.c,
 * and on the two readers of model rows of src/stats_read.h (a pool's rows,
 * the key x model counters), which no public reader gives: it cannot
 * depend on the layout, and writes nothing to the segment.  Every number comes from one atomic load inside
 * those readers; this file adds no atomics and no fences of its own, so
 * the consistency is theirs: each number is exact as read, and the numbers
 * of one struct may be read at slightly different moments while workers
 * acquire and release.
 *
 * Windows as of now.  km_limit_info gives a window's limit, burst, mode and
 * `available`, the units admissible now (computed by the reader from the
 * GCRA word, the reservations of leases out and the clock).  From those:
 *   used        = burst - available  (units held against the window now)
 *   full_in_ms  = used x T, T the emission interval of the mode as stated
 *                 in keymesh.h: token_bucket ceil(period/limit), sliding
 *                 floor(period/(limit+1-burst)) + 1 (ns per unit).
 *
 * ABI.  Each getter fills min(size, sizeof(struct)) bytes and stores that
 * count in the struct's first member: callers built against a shorter
 * struct of an older keymesh.h get its prefix, never a write past it.  The
 * _Static_asserts below pin the layout, so a change to a public struct is
 * a deliberate append, never a silent shift.
 */
#include <stddef.h>
#include <string.h>

#include "keymesh.h"
#include "stats_read.h" /* model rows: names and key x model counters */
#include "util.h" /* clock units and conversions; no layout */

/* Public structs: appended to only.  These pin sizes and the offset of the
 * first field of each part, so an edit that moves one fails to compile. */
_Static_assert(sizeof(km_window_stats) == 48, "km_window_stats layout");
_Static_assert(sizeof(km_stats_counters) == 80, "km_stats_counters layout");
_Static_assert(offsetof(km_key_stats, size) == 0 && offsetof(km_key_stats, id) == 16 &&
                   offsetof(km_key_stats, counters) == 136 &&
                   offsetof(km_key_stats, windows) == 216 && sizeof(km_key_stats) == 544,
               "km_key_stats layout");
_Static_assert(offsetof(km_pool_stats, size) == 0 && offsetof(km_pool_stats, name) == 8 &&
                   offsetof(km_pool_stats, counters) == 136 &&
                   offsetof(km_pool_stats, windows) == 232 && sizeof(km_pool_stats) == 568,
               "km_pool_stats layout");
_Static_assert(offsetof(km_model_stats, size) == 0 && offsetof(km_model_stats, name) == 16 &&
                   offsetof(km_model_stats, counters) == 96 &&
                   offsetof(km_model_stats, windows) == 176 && sizeof(km_model_stats) == 488,
               "km_model_stats layout");
_Static_assert(KM_KEY_STATE_COUNT == KM_KEY_EXHAUSTED + 1, "KM_KEY_STATE_COUNT");

static uint32_t window_period_s(int w)
{
    switch (w) {
    case KM_WIN_RPM:
    case KM_WIN_TPM:
        return 60;
    case KM_WIN_RPH:
    case KM_WIN_TPH:
        return 3600;
    default:
        return 86400;
    }
}

/* Emission interval (ns per unit) of a limit, as keymesh.h states it. */
static uint64_t emission_ns(const km_limit_info *l, uint64_t period_ns)
{
    if (l->mode == KM_MODE_SLIDING) {
        uint64_t span = l->limit + 1 > l->burst ? l->limit + 1 - l->burst : 1;
        return period_ns / span + 1;
    }
    return (period_ns + l->limit - 1) / l->limit;
}

static void window_from(const km_limit_info *l, int w, km_window_stats *o)
{
    memset(o, 0, sizeof *o);
    if (!l->limit)
        return;
    o->limit = l->limit;
    o->burst = l->burst;
    o->mode = l->mode;
    o->period_s = window_period_s(w);
    o->left = l->available < l->burst ? l->available : l->burst;
    o->used = l->burst - o->left;
    uint64_t t = emission_ns(l, (uint64_t)o->period_s * KM__NS_PER_S), ns;
    if (__builtin_mul_overflow(o->used, t, &ns))
        ns = UINT64_MAX;
    o->full_in_ms = km__ns_to_ms_ceil(ns);
}

/* Add window `w` of one key into a sum (pool or model over keys). */
static void window_add(km_window_stats *sum, uint32_t *n, const km_window_stats *k)
{
    if (!k->limit)
        return;
    if (*n == 0) {
        *sum = *k;
    } else {
        sum->limit += k->limit;
        sum->burst += k->burst;
        sum->used += k->used;
        sum->left += k->left;
        if (sum->mode != k->mode)
            sum->mode = -1;
        if (k->full_in_ms > sum->full_in_ms)
            sum->full_in_ms = k->full_in_ms;
    }
    (*n)++;
}

static void counters_add(km_stats_counters *sum, const km_stats_counters *c)
{
    sum->requests += c->requests;
    for (int i = 0; i < KM_OUT_COUNT; i++)
        sum->outcomes[i] += c->outcomes[i];
    sum->abandoned += c->abandoned;
    sum->stale_releases += c->stale_releases;
    sum->tokens += c->tokens;
}

/* Copy the first `size` bytes of a filled struct to the caller's, and say
 * so in its first member (a uint32_t in every stats struct). */
static int deliver(void *out, const void *full, size_t full_size, size_t size)
{
    uint32_t filled = (uint32_t)(size < full_size ? size : full_size);
    memcpy(out, full, filled);
    memcpy(out, &filled, sizeof filled);
    return KM_OK;
}

/* The smallest struct a caller may pass: `size` and the next member. */
#define MIN_SIZE 8

static int key_stats(km_env *env, int key, km_key_stats *s, km_key_info *ki)
{
    int rc = km_key_info_get(env, key, ki);
    if (rc != KM_OK)
        return rc;
    uint64_t now = km_now_ns();
    memset(s, 0, sizeof *s);
    s->size = sizeof *s;
    s->key = key;
    s->gen = ki->gen;
    s->pool = ki->pool;
    memcpy(s->id, ki->id, sizeof s->id);
    s->id[KM_ID_MAX] = '\0';
    s->state = ki->state;
    s->weight = ki->weight;
    s->taken_ns = now;
    /* Round up, so a cooling key never shows 0 ms left. */
    s->cooldown_remaining_ms =
        ki->cooldown_until_ns > now ? km__ns_to_ms_ceil(ki->cooldown_until_ns - now) : 0;
    s->inflight = ki->inflight;
    s->max_inflight = ki->max_inflight;
    s->consecutive_failures = ki->consecutive_failures;
    s->consecutive_429s = ki->consecutive_429s;
    s->latency_ema_us = ki->latency_ema_us;
    s->success_ppm = ki->success_ppm;
    s->counters.requests = ki->acquired;
    memcpy(s->counters.outcomes, ki->outcomes, sizeof s->counters.outcomes);
    s->counters.abandoned = ki->abandoned;
    s->counters.stale_releases = ki->stale_releases;
    s->counters.tokens = ki->tokens_used;
    for (int w = 0; w < KM_WIN_COUNT; w++)
        window_from(&ki->limits[w], w, &s->windows[w]);
    s->spent_microusd = ki->spent_microusd;
    s->budget_microusd = ki->budget_microusd;
    s->budget_hard = ki->budget_hard;
    s->price_in_microusd_per_1k = ki->price_in_microusd_per_1k;
    s->price_out_microusd_per_1k = ki->price_out_microusd_per_1k;
    s->n_models = km__model_rows(env, ki->pool);
    return KM_OK;
}

KM_EXTERN int km_key_stats_get(km_env *env, int key, km_key_stats *out, size_t size)
{
    km_key_stats s;
    km_key_info ki;
    if (!env || !out || size < MIN_SIZE)
        return KM_EINVAL;
    int rc = key_stats(env, key, &s, &ki);
    return rc != KM_OK ? rc : deliver(out, &s, sizeof s, size);
}

KM_EXTERN int km_pool_stats_get(km_env *env, int pool, km_pool_stats *out, size_t size)
{
    km_pool_stats s;
    km_pool_info pi;
    km_key_stats ks;
    km_key_info ki;
    uint64_t lat_sum = 0, ok_sum = 0;
    uint32_t lat_n = 0, ok_n = 0;

    if (!env || !out || size < MIN_SIZE)
        return KM_EINVAL;
    int rc = km_pool_info_get(env, pool, &pi);
    if (rc != KM_OK)
        return rc;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    s.pool = pool;
    memcpy(s.name, pi.name, sizeof s.name);
    s.name[KM_ID_MAX] = '\0';
    s.strategy = pi.strategy;
    s.model_mode = pi.model_mode;
    s.taken_ns = km_now_ns();
    s.waiters = pi.waiters;
    s.n_models = km__model_rows(env, pool);
    s.spent_microusd = pi.spent_microusd;
    s.budget_microusd = pi.budget_microusd;
    s.budget_hard = pi.budget_hard;
    /* The member list may change while it is walked (keys added or
     * removed): walk until km_pool_key says the list ends, skipping rows
     * removed meanwhile. */
    for (int i = 0;; i++) {
        int k = km_pool_key(env, pool, i);
        if (k == KM_ENOKEY)
            break;
        if (k < 0)
            return k;
        rc = key_stats(env, k, &ks, &ki);
        if (rc == KM_ENOKEY)
            continue;
        if (rc != KM_OK)
            return rc;
        s.n_keys++;
        if (ks.state >= 0 && ks.state < KM_KEY_STATE_COUNT)
            s.keys_by_state[ks.state]++;
        s.inflight += ks.inflight;
        s.max_inflight += ks.max_inflight;
        counters_add(&s.counters, &ks.counters);
        if (ks.latency_ema_us) {
            lat_sum += ks.latency_ema_us;
            lat_n++;
        }
        ok_sum += ks.success_ppm;
        ok_n++;
        for (int w = 0; w < KM_WIN_COUNT; w++)
            window_add(&s.windows[w], &s.keys_limited[w], &ks.windows[w]);
    }
    s.latency_ema_us = lat_n ? lat_sum / lat_n : 0;
    s.success_ppm = ok_n ? (uint32_t)(ok_sum / ok_n) : 0;
    return deliver(out, &s, sizeof s, size);
}

/* One model row's counters and windows on one key into *s (a fresh
 * struct).  A named row (a pool without a models list) has no windows. */
static int model_on_key(km_env *env, int pool, int model, int key, km_model_stats *s)
{
    km_limit_info lim[KM_WIN_COUNT];
    int rc = km__model_row_read(env, pool, model, key, s->name, &s->counters);
    if (rc != KM_OK)
        return rc;
    rc = km_model_info_get(env, pool, model, key, NULL, lim);
    if (rc == KM_ENOMODEL) /* a named row: not a listed model */
        return KM_OK;
    if (rc != KM_OK)
        return rc;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        window_from(&lim[w], w, &s->windows[w]);
        s->keys_limited[w] = s->windows[w].limit != 0;
    }
    return KM_OK;
}

static void model_init(km_model_stats *s, int pool, int model, int key)
{
    memset(s, 0, sizeof *s);
    s->size = sizeof *s;
    s->pool = pool;
    s->model = model;
    s->key = key;
    s->taken_ns = km_now_ns();
    s->counters_valid = 1; /* kept per key x model since format 4 */
}

KM_EXTERN int km_key_model_stats_get(km_env *env, int key, int model,
                                     km_model_stats *out, size_t size)
{
    km_model_stats s;
    km_key_info ki;
    if (!env || !out || size < MIN_SIZE)
        return KM_EINVAL;
    int rc = km_key_info_get(env, key, &ki);
    if (rc != KM_OK)
        return rc;
    model_init(&s, ki.pool, model, key);
    if ((rc = model_on_key(env, ki.pool, model, key, &s)) != KM_OK)
        return rc;
    s.n_keys = 1;
    return deliver(out, &s, sizeof s, size);
}

KM_EXTERN int km_model_stats_get(km_env *env, int pool, int model, km_model_stats *out,
                                 size_t size)
{
    km_model_stats s, one;
    if (!env || !out || size < MIN_SIZE)
        return KM_EINVAL;
    model_init(&s, pool, model, KM_STATS_ALL_KEYS);
    int rc = km__model_row_read(env, pool, model, -1, s.name, NULL);
    if (rc != KM_OK)
        return rc;
    for (int i = 0;; i++) {
        int k = km_pool_key(env, pool, i);
        if (k == KM_ENOKEY)
            break;
        if (k < 0)
            return k;
        model_init(&one, pool, model, k);
        rc = model_on_key(env, pool, model, k, &one);
        if (rc == KM_ENOKEY)
            continue;
        if (rc != KM_OK)
            return rc;
        s.n_keys++;
        counters_add(&s.counters, &one.counters);
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            uint32_t n = s.keys_limited[w];
            window_add(&s.windows[w], &n, &one.windows[w]);
            s.keys_limited[w] = n;
        }
    }
    return deliver(out, &s, sizeof s, size);
}
