/*
 * src/snapshot.c - the whole segment as JSON (km_snapshot_json).
 *
 * Built from the public readers (km_info_get, km_pool_info_get,
 * km_pool_key, km_key_info_get, km_model_info_get) for everything they
 * give, so a key's state, limits and counters are what any other tool sees.
 * Three things no reader gives are read from the segment itself (so this
 * file does depend on src/layout.h): a pool's defaults for keys added later
 * and its models' configured limits (configuration words, written at
 * creation and never changed: defaults_json), and, with
 * KM_SNAPSHOT_SECRETS, a key's secret (secret_enc), read under the admin
 * lock so that its row is not reused meanwhile.  Like the readers it runs
 * concurrently with acquire/release: each number is read atomically, but
 * numbers of one key need not be mutually consistent while operations run.
 *
 * Secrets never appear in clear: a key's "secret" is
 * km_key_info.secret_masked; with KM_SNAPSHOT_SECRETS, "secret_enc" holds
 * it encrypted (XChaCha20-Poly1305, libsodium; see keymesh.h).
 *
 * Format 2 adds what km_restore() needs (src/restore.c): per limit window
 * "tat_unix_us" (the GCRA word as wall-clock time, 0: no debt), per key
 * "cooldown_until_unix_ms", per pool "defaults" (limits, max_inflight,
 * price given to keys added later), capacity "models".  Capacity
 * "usage_events" came later within format 2 (optional: a restore without
 * it takes the default), and so did the fleet (segment format 5): capacity
 * "fleet": true, a top-level "fleet": {"all", "policy"} and a fleet key's
 * "fleet" (true, or {"strict", "id"}) as configured, only in a segment
 * with a fleet region.  Credit is not kept: it lapses, and a restored
 * segment starts with none.
 *
 * Shape (format 1; docs/kmctl.md):
 *   {"keymesh", "format", "taken_unix_ms", "capacity": {...}, "size_bytes",
 *    "processes_attached",
 *    "pools": [{"name", "strategy", "cooldown_s", "max_cooldown_s",
 *               "max_failures", "model_limits", "models": [names],
 *               "budget": {"usd", "hard", "mode", "period", "tz", "spent_usd"}
 *               | null, "spent_usd", "prev_spent_usd", "period_end_unix_ms"
 *               (0: no period), "budget_warnings",
 *               "waiters",
 *               "keys": [{... "counters": {...}, "tokens_used",
 *                         "limits": {"rpm": {...}, ...},
 *                         "models": {"<name>": {"rpm": {...}}} (per_model
 *                         pools only; the limits in force on the key, a
 *                         window the key sets itself with "own": true),
 *                         "model_counters": {"<name>":
 *                         {... as "counters", "tokens_used"}} (pools with a
 *                         models list; models the key served), "price":
 *                         {...}, "budget", "spent_usd", "prev_spent_usd",
 *                         "period_end_unix_ms", "budget_warnings",
 *                         "success_rate", "meta": {...}}]}]}
 *   Money is in US dollars (JSON reals, from micro-USD counters).
 *   Additions to format 1 keep every earlier field; readers ignore fields
 *   they do not know.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "budget.h"
#include "internal.h"
#include "stats_read.h"

#define KM__SNAPSHOT_FORMAT 2

/* Monotonic times as wall-clock ones: both clocks read once per snapshot. */
typedef struct clocks {
    uint64_t mono_ns, wall_ns;
} clocks;

static uint64_t to_unix_us(const clocks *c, uint64_t mono_ns)
{
    return mono_ns > c->mono_ns ? (c->wall_ns + (mono_ns - c->mono_ns)) / KM__NS_PER_US : 0;
}

/* json_integer takes a signed 64-bit value; counters never get near 2^63,
 * but clamp rather than wrap to a negative number if one ever did. */
static json_t *int_json(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* A string that may not be valid UTF-8 (a masked secret cut inside a
 * multi-byte character): jansson refuses those, so show a placeholder. */
static json_t *str_json(const char *s)
{
    json_t *j = json_string(s);
    return j ? j : json_string("?");
}

static const char *mode_name(int mode)
{
    return mode == KM_MODE_SLIDING ? "sliding" : "token_bucket";
}

/* Micro-USD as US dollars. */
static json_t *usd_json(uint64_t microusd)
{
    return json_real(km__micro_to_usd(microusd));
}

/* A budget as configured ({"usd", "hard", "mode", "period", "tz"}; a
 * pool's also "spent_usd", as before periods).  restore.c gives all but
 * "spent_usd" back to the configuration parser. */
static json_t *budget_json(uint64_t microusd, int hard, const km_budget_state *bs,
                           const char *tz, const uint64_t *spent)
{
    json_t *b = json_pack("{s:o, s:b, s:s, s:s, s:s}", "usd", usd_json(microusd), "hard",
                          hard != 0, "mode", hard ? "hard" : "soft", "period",
                          km__period_name((uint32_t)bs->period), "tz",
                          tz);
    if (b && spent && json_object_set_new(b, "spent_usd", usd_json(*spent)) < 0) {
        json_decref(b);
        return NULL;
    }
    return b;
}

/* {"rpm": {"limit", "burst", "mode", "available"}, ...}: the windows that
 * have a limit. */
static json_t *limits_json(const km_limit_info limits[KM_WIN_COUNT], const clocks *clk)
{
    json_t *lim = json_object();
    if (!lim)
        return NULL;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        const km_limit_info *l = &limits[w];
        if (l->limit == 0)
            continue;
        json_t *o = json_pack("{s:o, s:o, s:s, s:o, s:o}", "limit", int_json(l->limit),
                              "burst", int_json(l->burst), "mode",
                              mode_name(l->mode), "available",
                              int_json(l->available), "tat_unix_us",
                              int_json(to_unix_us(clk, l->tat_ns)));
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
    return m ? m : str_json(meta);
}

/* The limits of each model of a per_model pool on key `key`:
 * {"<model>": {"rpm": {...}}, ...}. */
static json_t *key_models_json(km_env *env, int pool, uint32_t n_models,
                               uint32_t key, const clocks *clk)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (uint32_t i = 0; i < n_models; i++) {
        char name[KM_ID_MAX + 1];
        km_limit_info lim[KM_WIN_COUNT];
        if (km_model_info_get(env, pool, i, key, name, lim) != KM_OK)
            break; /* fewer models than counted: show what there is */
        name[KM_ID_MAX] = '\0'; /* copied whole from the segment, maybe without its NUL */
        json_t *l = limits_json(lim, clk);
        uint32_t own = 0;
        (void)km_model_own_get(env, pool, (int)i, (int)key, &own);
        /* The key's own windows of the model (the others are the pool's). */
        for (int w = 0; l && w < KM_WIN_COUNT; w++)
            if ((own >> w) & 1 && json_object_set_new(json_object_get(l, km_window_name(w)), "own",
                                                     json_true()) < 0) {
                json_decref(l);
                l = NULL;
            }
        if (!l || json_object_set_new(o, name, l) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *key_json(const km_key_info *k, const char *tz, const clocks *clk)
{
    uint64_t now = clk->mono_ns;
    json_t *lim = limits_json(k->limits, clk), *key;
    if (!lim)
        return NULL;
    /* Round the remaining cooldown up, so a cooling key never shows 0. */
    uint64_t cool_ms = k->cooldown_until_ns > now
                           ? (k->cooldown_until_ns - now + KM__NS_PER_MS - 1) / KM__NS_PER_MS
                           : 0;
    json_t *counters = json_pack(
        "{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "acquired", int_json(k->acquired),
        "success", int_json(k->outcomes[KM_OUT_SUCCESS]),
        "rate_limited", int_json(k->outcomes[KM_OUT_RATE_LIMITED]),
        "failure", int_json(k->outcomes[KM_OUT_FAILURE]),
        "auth", int_json(k->outcomes[KM_OUT_AUTH]),
        "quota", int_json(k->outcomes[KM_OUT_QUOTA]),
        "cancelled", int_json(k->outcomes[KM_OUT_CANCELLED]),
        "abandoned", int_json(k->abandoned),
        "stale_releases", int_json(k->stale_releases));
    if (!counters) {
        json_decref(lim);
        return NULL;
    }
    /* "o" steals its reference even when json_pack fails (jansson >= 2.9). */
    key = json_pack(
        "{s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "id", str_json(k->id),
        "secret", str_json(k->secret_masked),
        "weight", int_json(k->weight),
        "state", km_key_state_name(k->state),
        "cooldown_remaining_ms", int_json(cool_ms),
        "inflight", int_json(k->inflight),
        "max_inflight", int_json(k->max_inflight),
        "consecutive_failures", int_json(k->consecutive_failures),
        "consecutive_429s", int_json(k->consecutive_429s),
        "latency_ema_us", int_json(k->latency_ema_us),
        "counters", counters,
        "tokens_used", int_json(k->tokens_used),
        "limits", lim);
    if (!key)
        return NULL;
    json_t *budget = k->budget_microusd
                         ? budget_json(k->budget_microusd, k->budget_hard, &k->budget, tz, NULL)
                         : json_null();
    json_t *more = json_pack(
        "{s:{s:o, s:o}, s:o, s:o, s:o, s:o, s:o}",
        "price",
        "input_per_1k", usd_json(k->price_in_microusd_per_1k),
        "output_per_1k", usd_json(k->price_out_microusd_per_1k),
        "budget", budget,
        "spent_usd", usd_json(k->spent_microusd),
        "prev_spent_usd", usd_json(k->budget.prev_spent_microusd),
        "success_rate", json_real((double)k->success_ppm / KM__PPM),
        "meta", meta_json(k->meta));
    if (more && (json_object_set_new(more, "cooldown_until_unix_ms",
                                     int_json(to_unix_us(clk, k->cooldown_until_ns) / KM__US_PER_MS)) < 0 ||
                 json_object_set_new(more, "period_end_unix_ms",
                                     int_json(k->budget.period_end_unix_ns / KM__NS_PER_MS)) < 0 ||
                 json_object_set_new(more, "budget_warnings", int_json(k->budget.warnings)) < 0)) {
        json_decref(more);
        more = NULL;
    }
    if (!more || json_object_update(key, more) < 0) {
        json_decref(more);
        json_decref(key);
        return NULL;
    }
    json_decref(more);
    return key;
}

/* A key's counters per listed model, for the models it served:
 * {"<name>": {"acquired", "success", ..., "stale_releases", "tokens_used"}}
 * (the names of the key's own "counters").  The rows a pool without a
 * models list named are not carried: their names would have to be. */
static json_t *model_counters_json(km_env *env, int pool, uint32_t n_models, int key)
{
    json_t *o = json_object();
    for (uint32_t m = 0; o && m < n_models; m++) {
        char name[KM_ID_MAX + 1];
        km_stats_counters c;
        if (km__model_row_read(env, pool, (int)m, key, name, &c) != KM_OK ||
            !(c.requests || c.abandoned || c.stale_releases))
            continue;
        json_t *j = json_pack(
            "{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
            "acquired", int_json(c.requests),
            "success", int_json(c.outcomes[KM_OUT_SUCCESS]),
            "rate_limited", int_json(c.outcomes[KM_OUT_RATE_LIMITED]),
            "failure", int_json(c.outcomes[KM_OUT_FAILURE]),
            "auth", int_json(c.outcomes[KM_OUT_AUTH]),
            "quota", int_json(c.outcomes[KM_OUT_QUOTA]),
            "cancelled", int_json(c.outcomes[KM_OUT_CANCELLED]),
            "abandoned", int_json(c.abandoned),
            "stale_releases", int_json(c.stale_releases),
            "tokens_used", int_json(c.tokens));
        if (!j || json_object_set_new(o, name, j) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* What one snapshot is asked for. */
typedef struct snap {
    clocks clk;
    const unsigned char *key; /* non-NULL: add "secret_enc" */
} snap;

/* base64(nonce || XChaCha20-Poly1305(secret)), with "pool/id" as
 * associated data so a ciphertext moved to another key fails to open. */
static json_t *secret_enc(const char *pool, const km__key *k, const unsigned char *key)
{
    unsigned char buf[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + KM_SECRET_MAX +
                      crypto_aead_xchacha20poly1305_ietf_ABYTES];
    char ad[2 * KM_ID_MAX + 2], b64[sodium_base64_ENCODED_LEN(sizeof buf,
                                                          sodium_base64_VARIANT_ORIGINAL)];
    unsigned long long clen;
    size_t len = k->secret_len <= KM_SECRET_MAX ? k->secret_len : KM_SECRET_MAX;
    int adlen = snprintf(ad, sizeof ad, "%s/%s", pool, k->id);

    randombytes_buf(buf, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(
        buf + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &clen,
        (const unsigned char *)k->secret, len, (const unsigned char *)ad, (size_t)adlen, NULL,
        buf, key);
    sodium_bin2base64(b64, sizeof b64, buf,
                      crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + (size_t)clen,
                      sodium_base64_VARIANT_ORIGINAL);
    return json_string(b64);
}

/* Limits as configured ({"rpm": {"limit", "burst", "mode"}, ...}). */
static json_t *cfg_limits_json(const uint64_t *limit, const uint64_t *burst, const uint8_t *mode)
{
    json_t *lim = json_object();
    for (int w = 0; lim && w < KM_WIN_COUNT; w++) {
        if (!limit[w])
            continue;
        json_t *o = json_pack("{s:o, s:o, s:s}", "limit", int_json(limit[w]), "burst",
                              int_json(burst[w]), "mode", mode_name(mode[w]));
        if (!o || json_object_set_new(lim, km_window_name(w), o) < 0) {
            json_decref(lim);
            return NULL;
        }
    }
    return lim;
}

/* What keys added later get (the pool's configured defaults), and each
 * model's configured limits: written at creation, read without races. */
static json_t *defaults_json(km_env *env, uint32_t pool)
{
    const km__pool *p = &km__pools(env)[pool];
    json_t *models = json_object();
    uint32_t n = p->n_models < env->geom.cap_models ? p->n_models : env->geom.cap_models;
    for (uint32_t i = 0; models && i < n; i++) {
        const km__model *md = &km__models(env, pool)[i];
        char name[KM_ID_MAX + 1]; /* the segment's copy may lack its NUL */
        memcpy(name, md->name, KM_ID_MAX);
        name[KM_ID_MAX] = '\0';
        json_t *l = p->model_mode == KM_MODELS_PER_MODEL
                        ? cfg_limits_json(md->limit, md->burst, md->mode) : json_object();
        if (!l || json_object_set_new(models, name, l) < 0) {
            json_decref(models);
            return NULL;
        }
    }
    return json_pack("{s:o, s:o, s:{s:o, s:o}, s:o}", "limits",
                     cfg_limits_json(p->def_limit, p->def_burst, p->def_mode),
                     "max_inflight", int_json(p->def_max_inflight), "price", "input_per_1k",
                     usd_json(p->def_price_in), "output_per_1k", usd_json(p->def_price_out),
                     "models", models);
}

static int pool_json(km_env *env, int pool, const snap *sn, json_t **out)
{
    km_pool_info pi;
    km_key_info ki;
    json_t *keys, *models = NULL, *p;
    int rc = km_pool_info_get(env, pool, &pi);
    if (rc != KM_OK)
        return rc;
    if (!(keys = json_array()))
        return KM_ENOMEM;
    /* n_keys comes from the segment: never past the member list's capacity. */
    for (uint32_t i = 0; i < pi.n_keys && i < env->geom.cap_keys; i++) {
        int key = km_pool_key(env, pool, i);
        /* A key removed meanwhile (or still listed, skipped, after a
         * removal) is not part of the pool any more: left out. */
        if (key == KM_ENOKEY)
            continue;
        if (key < 0) {
            rc = key;
            goto fail;
        }
        if ((rc = km_key_info_get(env, key, &ki)) == KM_ENOKEY)
            continue;
        if (rc != KM_OK)
            goto fail;
        char tz[KM__TZ_NAME_MAX + 1];
        km_budget_tz(env, -1, key, tz, sizeof tz);
        json_t *k = key_json(&ki, tz, &sn->clk);
        if (k && sn->key &&
            json_object_set_new(k, "secret_enc",
                                secret_enc(pi.name, &km__keys(env)[key], sn->key)) < 0) {
            json_decref(k);
            k = NULL;
        }
        if (k && km__keys(env)[key].fleet) { /* a fleet key: as configured */
            const km__fkey *fk = km__fkeys(env, (uint32_t)key);
            json_t *fl = fk->fleet_id[0] || (fk->flags & KM__FK_STRICT)
                             ? json_pack("{s:b}", "strict", (fk->flags & KM__FK_STRICT) != 0)
                             : json_true();
            if (fl && fk->fleet_id[0])
                json_object_set_new(fl, "id", json_stringn(fk->fleet_id,
                                                           strnlen(fk->fleet_id, KM_ID_MAX)));
            if (!fl || json_object_set_new(k, "fleet", fl) < 0) {
                json_decref(k);
                k = NULL;
            }
        }
        if (k && pi.model_mode == KM_MODELS_PER_MODEL) {
            json_t *m = key_models_json(env, pool, pi.n_models, (uint32_t)key, &sn->clk);
            if (!m || json_object_set_new(k, "models", m) < 0) {
                json_decref(k);
                k = NULL;
            }
        }
        if (k && pi.n_models) {
            json_t *mc = model_counters_json(env, pool, pi.n_models, key);
            if (!mc || json_object_set_new(k, "model_counters", mc) < 0) {
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
        name[KM_ID_MAX] = '\0';
        if (json_array_append_new(models, str_json(name)) < 0) {
            rc = KM_ENOMEM;
            goto fail;
        }
    }
    char tz[KM__TZ_NAME_MAX + 1];
    km_budget_tz(env, pool, -1, tz, sizeof tz);
    json_t *budget = pi.budget_microusd
                         ? budget_json(pi.budget_microusd, pi.budget_hard, &pi.budget, tz,
                                       &pi.spent_microusd)
                         : json_null();
    /* "o" steals even on failure: models and keys are gone if p is NULL. */
    p = json_pack("{s:s, s:s, s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                  "name", pi.name,
                  "strategy", km_strategy_name(pi.strategy),
                  "cooldown_s", int_json(pi.cooldown_s),
                  "max_cooldown_s", int_json(pi.max_cooldown_s),
                  "max_failures", int_json(pi.max_failures),
                  "model_limits",
                  pi.model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global",
                  "models", models,
                  "budget", budget,
                  "spent_usd", usd_json(pi.spent_microusd),
                  "prev_spent_usd", usd_json(pi.budget.prev_spent_microusd),
                  "period_end_unix_ms", int_json(pi.budget.period_end_unix_ns / KM__NS_PER_MS),
                  "budget_warnings", int_json(pi.budget.warnings),
                  "waiters", int_json(pi.waiters),
                  "keys", keys);
    if (!p)
        return KM_ENOMEM;
    if (json_object_set_new(p, "defaults", defaults_json(env, (uint32_t)pool)) < 0) {
        json_decref(p);
        return KM_ENOMEM;
    }
    *out = p;
    return KM_OK;
fail:
    json_decref(models);
    json_decref(keys);
    return rc;
}

KM_EXTERN int km_snapshot_json(km_env *env, char **out)
{
    return km_snapshot_json_ex(env, 0, NULL, out);
}

KM_EXTERN int km_snapshot_json_ex(km_env *env, unsigned flags, const unsigned char *key,
                                  char **out)
{
    km_info info;
    json_t *root = NULL, *pools;
    snap sn = {{0, 0}, NULL};
    int rc, locked = 0;

    if (!env || !out || (flags & ~KM_SNAPSHOT_SECRETS) || (!(flags & KM_SNAPSHOT_SECRETS) != !key))
        return KM_EINVAL;
    *out = NULL;
    if ((rc = km_info_get(env, &info)) != KM_OK)
        return rc;
    if (flags & KM_SNAPSHOT_SECRETS) {
        if (sodium_init() < 0)
            return KM_ESYS;
        /* The admin lock keeps rows from being reused while their secrets
         * are read (src/reconfig.c); acquire and release go on. */
        if ((rc = km__admin_lock(env)) != KM_OK)
            return rc;
        locked = 1;
        sn.key = key;
    }
    sn.clk.mono_ns = km__now();
    sn.clk.wall_ns = km__wall_ns();
    uint64_t taken_ms = sn.clk.wall_ns / KM__NS_PER_MS;

    if (!(pools = json_array())) {
        rc = KM_ENOMEM;
        goto out;
    }
    for (uint32_t p = 0; p < info.n_pools; p++) {
        json_t *pj;
        /* Removed pools (and rows never used) are not in a snapshot. */
        if (!km__pool_live(env, (int)p))
            continue;
        if ((rc = pool_json(env, (int)p, &sn, &pj)) != KM_OK) {
            json_decref(pools);
            goto out;
        }
        if (json_array_append_new(pools, pj) < 0) {
            json_decref(pools);
            rc = KM_ENOMEM;
            goto out;
        }
    }
    root = json_pack("{s:s, s:i, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o}, s:o, s:o, s:o}",
                     "keymesh", km_version(),
                     "format", KM__SNAPSHOT_FORMAT,
                     "taken_unix_ms", int_json(taken_ms),
                     "capacity",
                     "keys", int_json(info.cap_keys),
                     "pools", int_json(info.cap_pools),
                     "processes", int_json(info.cap_procs),
                     "inflight_per_key", int_json(info.cap_inflight),
                     "models", int_json(env->geom.cap_models),
                     "usage_events", int_json(env->geom.cap_usage),
                     "size_bytes", int_json(info.size_bytes),
                     "processes_attached", int_json(info.n_procs),
                     "pools", pools);
    rc = KM_ENOMEM;
    if (!root)
        goto out;
    const km__fhdr *fh = km__fleet(env);
    if (fh && (json_object_set_new(json_object_get(root, "capacity"), "fleet", json_true()) < 0 ||
               json_object_set_new(root, "fleet",
                                   json_pack("{s:b, s:s}", "all", fh->all != 0, "policy",
                                             fh->policy == KM_FLEET_LOCAL ? "local" : "stop")) < 0))
        goto out;
    if (sn.key) {
        /* A check value of the key (a keyed hash of a fixed text), so a
         * restore with another key fails with a clear error up front. */
        unsigned char chk[16];
        char b64[sodium_base64_ENCODED_LEN(sizeof chk, sodium_base64_VARIANT_ORIGINAL)];
        static const char label[] = "keymesh snapshot key check";
        crypto_generichash(chk, sizeof chk, (const unsigned char *)label, sizeof label - 1,
                           key, KM_SNAPSHOT_KEY_BYTES);
        sodium_bin2base64(b64, sizeof b64, chk, sizeof chk, sodium_base64_VARIANT_ORIGINAL);
        if (json_object_set_new(root, "encryption",
                                json_pack("{s:s, s:s}", "alg", "xchacha20poly1305-ietf",
                                          "key_check", b64)) < 0)
            goto out;
    }
    /* 15 significant digits: every micro-USD amount below 1e9 USD prints
     * exactly (0.0025, not 0.0025000000000000001). */
    *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                JSON_REAL_PRECISION(15));
    rc = *out ? KM_OK : KM_ENOMEM;
out:
    json_decref(root);
    if (locked)
        km__admin_unlock(env);
    return rc;
}
