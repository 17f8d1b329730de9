/*
 * src/restore.c - recreate a segment from a snapshot (km_restore).
 *
 * A snapshot (src/snapshot.c, format 2, taken with secrets) is turned back
 * into a configuration: capacity, pools and keys with the limits, prices,
 * budgets and metadata they had, and the secrets decrypted.  That text goes
 * through km_config_parse, so a restored segment obeys exactly the rules of
 * a created one.  The segment is created under a temporary name (the one
 * km_create uses, naming this process: src/attach.c), its state is written
 * (counters, latency and health, cooldowns, limit windows, spend, the
 * pools' defaults for keys added later), and only then renamed into place
 * without replacing anything (km__create_commit): no worker can attach to a
 * half-restored segment, an existing segment is never replaced, and a
 * restore killed at any instruction leaves only a temporary that a sweep
 * removes (km_segment_sweep), never a half-restored segment under the name.
 * A NULL name restores into a private segment (km_create_private).
 *
 * Times.  The snapshot holds wall-clock times (cooldown ends, each window's
 * GCRA word); they become monotonic ones as of now, so what was owed at the
 * snapshot runs out in real time, a reboot in between included.  A time
 * already past restores as "nothing owed".
 *
 * Secrets.  Each "secret_enc" is base64(nonce || XChaCha20-Poly1305), with
 * "pool/id" as associated data.  The snapshot's key check is compared
 * first, so the wrong key gives KM_ECRYPTO before anything is created; a
 * ciphertext that fails to open (altered, or moved to another key) too.
 * Decrypted secrets live in the configuration text and tree only while
 * they are parsed, and are wiped after.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "internal.h"

#define KM__NPUB crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define KM__ABYTES crypto_aead_xchacha20poly1305_ietf_ABYTES

typedef struct restore_ctx {
    char *errbuf;
    size_t errlen;
    const unsigned char *key;
    uint64_t now_mono, now_wall;
} restore_ctx;

static int fail_msg(restore_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_msg(restore_ctx *c, int code, const char *fmt, ...)
{
    if (c->errbuf && c->errlen) {
        va_list ap;
        int n = snprintf(c->errbuf, c->errlen, "snapshot: ");
        va_start(ap, fmt);
        if (n > 0 && (size_t)n < c->errlen)
            vsnprintf(c->errbuf + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
        /* One line, printable, whatever the snapshot held (names, parser
         * excerpts). */
        for (char *p = c->errbuf; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    }
    return code;
}

/* A non-negative number (integer or real) of an object, or `def`. */
static uint64_t num_u64(json_t *o, const char *k, uint64_t def)
{
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v))
        return json_integer_value(v) < 0 ? 0 : (uint64_t)json_integer_value(v);
    if (json_is_real(v))
        return json_real_value(v) < 0 ? 0 : (uint64_t)llround(json_real_value(v));
    return def;
}

/* A key x model row's counters from a snapshot's "model_counters" entry
 * (src/snapshot.c), before the segment is visible: plain stores. */
static void model_counters_restore(km__mwin *r, json_t *mc)
{
    static const char *const kinds[KM_OUT_COUNT] = {
        [KM_OUT_SUCCESS] = "success", [KM_OUT_RATE_LIMITED] = "rate_limited",
        [KM_OUT_FAILURE] = "failure", [KM_OUT_AUTH] = "auth", [KM_OUT_QUOTA] = "quota",
        [KM_OUT_CANCELLED] = "cancelled"};
    r->requests = num_u64(mc, "acquired", 0);
    r->ok.n = num_u64(mc, kinds[KM_OUT_SUCCESS], 0);
    for (int i = 1; i < KM_OUT_COUNT; i++)
        r->outcomes[i - 1] = num_u64(mc, kinds[i], 0);
    r->abandoned = num_u64(mc, "abandoned", 0);
    r->stale = num_u64(mc, "stale_releases", 0);
    r->ok.tokens = num_u64(mc, "tokens_used", 0);
}

static uint64_t micro_usd_of(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? km__usd_to_micro(json_number_value(v)) : 0;
}

/* A snapshot's budget as configuration: what the parser takes ("usd",
 * "hard", and from snapshots with periods "mode", "period", "tz"); NULL
 * (a failed set) when out of memory. */
static json_t *budget_config(json_t *b)
{
    json_t *c = json_pack("{s:O, s:O}", "usd", json_object_get(b, "usd"), "hard",
                          json_object_get(b, "hard"));
    static const char *const more[] = {"period", "tz"};
    for (size_t i = 0; c && i < sizeof more / sizeof *more; i++) {
        json_t *v = json_object_get(b, more[i]);
        if (v && json_object_set(c, more[i], v) < 0) {
            json_decref(c);
            return NULL;
        }
    }
    return c;
}

/* A spend record as the snapshot left it: the period's spend, the one
 * before and the period's end (an end that has passed since rolls at the
 * first settle, as if the segment had lived on). */
static void spend_of(json_t *o, km__spend *s)
{
    uint64_t end = num_u64(o, "period_end_unix_ms", 0);
    s->spent = micro_usd_of(o, "spent_usd");
    s->prev = micro_usd_of(o, "prev_spent_usd");
    s->warned = (uint32_t)num_u64(o, "budget_warnings", 0);
    if (end && s->end_ns != UINT64_MAX)
        s->end_ns = end * KM__NS_PER_MS;
}

/* Wall-clock microseconds to CLOCK_MONOTONIC nanoseconds (0: past or none). */
static uint64_t mono_of(const restore_ctx *c, uint64_t unix_us)
{
    uint64_t ns = unix_us * KM__NS_PER_US;
    return unix_us && ns > c->now_wall ? c->now_mono + (ns - c->now_wall) : 0;
}

/* {"rpm": {"limit", "burst", "mode", ...}} -> the same without state. */
static json_t *limits_config(json_t *lim)
{
    json_t *out = json_object(), *v;
    const char *w;
    json_object_foreach(lim, w, v) {
        json_t *o = json_pack("{s:O, s:O, s:O}", "limit", json_object_get(v, "limit"), "burst",
                              json_object_get(v, "burst"), "mode", json_object_get(v, "mode"));
        if (!o || json_object_set_new(out, w, o) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* A name from the snapshot for a one-line message: printable ASCII only,
 * at most KM_ID_MAX bytes (the file may hold anything). */
static const char *printable(const char *in, char out[KM_ID_MAX + 1])
{
    size_t i = 0;
    for (; in && in[i] && i < KM_ID_MAX; i++)
        out[i] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
    out[i] = '\0';
    return out;
}

/* Decrypt one secret into out (NUL-terminated).  KM_ECRYPTO on failure. */
static int open_secret(restore_ctx *c, const char *pool, const char *id, json_t *enc, char *out,
                     size_t outlen)
{
    unsigned char bin[KM__NPUB + KM_SECRET_MAX + KM__ABYTES];
    size_t blen;
    unsigned long long mlen;
    char ad[2 * KM_ID_MAX + 2];
    int adlen = snprintf(ad, sizeof ad, "%s/%s", pool, id);
    const char *b64 = json_string_value(enc);
    char sp[KM_ID_MAX + 1], si[KM_ID_MAX + 1];
    if (adlen < 0 || (size_t)adlen >= sizeof ad)
        return fail_msg(c, KM_ECONFIG, "pool %s, key %s: names too long", printable(pool, sp),
                      printable(id, si));

    if (!b64)
        return fail_msg(c, KM_ECONFIG, "pool %s, key %s: no encrypted secret (secret_enc)",
                      printable(pool, sp), printable(id, si));
    if (sodium_base642bin(bin, sizeof bin, b64, strlen(b64), NULL, &blen, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        blen < KM__NPUB + KM__ABYTES)
        return fail_msg(c, KM_ECRYPTO, "pool %s, key %s: secret_enc is not a sealed secret",
                      printable(pool, sp), printable(id, si));
    if (crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)out, &mlen, NULL, bin + KM__NPUB,
                                                   blen - KM__NPUB, (const unsigned char *)ad,
                                                   (size_t)adlen, bin, c->key) != 0 ||
        mlen >= outlen) {
        sodium_memzero(out, outlen);
        return fail_msg(c, KM_ECRYPTO,
                      "pool %s, key %s: the secret does not decrypt (altered, or not this key's)",
                      printable(pool, sp), printable(id, si));
    }
    out[mlen] = '\0';
    return KM_OK;
}

/* Wipe every "secret" string of a configuration tree, then free it. */
static void config_wipe_free(json_t *cfg)
{
    size_t i, j;
    json_t *p, *k;
    json_array_foreach(json_object_get(cfg, "pools"), i, p) {
        json_array_foreach(json_object_get(p, "keys"), j, k) {
            json_t *s = json_object_get(k, "secret");
            if (json_is_string(s))
                sodium_memzero((void *)(uintptr_t)json_string_value(s), json_string_length(s));
        }
    }
    json_decref(cfg);
}

/* The configuration of a snapshot, secrets decrypted. */
static int snapshot_config(restore_ctx *c, json_t *root, json_t **out)
{
    json_t *cap = json_object_get(root, "capacity"), *pools = json_object_get(root, "pools");
    json_t *cfg, *pa, *p;
    size_t i, j;
    int rc = KM_ENOMEM;

    if (!json_is_object(cap) || !json_is_array(pools))
        return fail_msg(c, KM_ECONFIG, "no capacity or pools: not a KeyMesh snapshot");
    cfg = json_pack("{s:{s:O, s:O, s:O, s:O}, s:[]}", "capacity", "keys",
                    json_object_get(cap, "keys"), "pools", json_object_get(cap, "pools"),
                    "processes", json_object_get(cap, "processes"), "inflight_per_key",
                    json_object_get(cap, "inflight_per_key"), "pools");
    if (!cfg)
        return fail_msg(c, KM_ECONFIG, "capacity: keys, pools, processes, inflight_per_key expected");
    /* Optional: snapshots of older libraries have neither (the defaults). */
    static const char *const optional[] = {"models", "usage_events", "fleet"};
    for (i = 0; i < sizeof optional / sizeof *optional; i++)
        if (json_object_get(cap, optional[i]) &&
            json_object_set(json_object_get(cfg, "capacity"), optional[i],
                            json_object_get(cap, optional[i])) < 0)
            goto fail;
    if (json_object_get(root, "fleet") &&
        json_object_set(cfg, "fleet", json_object_get(root, "fleet")) < 0)
        goto fail;
    pa = json_object_get(cfg, "pools");
    json_array_foreach(pools, i, p) {
        const char *pname = json_string_value(json_object_get(p, "name"));
        json_t *def = json_object_get(p, "defaults"), *keys = json_object_get(p, "keys"), *k;
        if (!pname || !json_is_object(def) || !json_is_array(keys)) {
            rc = fail_msg(c, KM_ECONFIG, "pools[%zu]: name, defaults and keys expected", i);
            goto fail;
        }
        json_t *pc = json_pack("{s:O, s:O, s:O, s:O, s:O, s:O, s:[]}", "name",
                               json_object_get(p, "name"), "strategy", json_object_get(p, "strategy"),
                               "cooldown_s", json_object_get(p, "cooldown_s"), "max_cooldown_s",
                               json_object_get(p, "max_cooldown_s"), "max_failures",
                               json_object_get(p, "max_failures"), "model_limits",
                               json_object_get(p, "model_limits"), "keys");
        if (!pc || json_array_append_new(pa, pc) < 0) {
            rc = fail_msg(c, KM_ECONFIG, "pools[%zu]: incomplete pool", i);
            goto fail;
        }
        json_t *models = json_object_get(def, "models"), *budget = json_object_get(p, "budget");
        if (json_object_size(models) && json_object_set(pc, "models", models) < 0)
            goto fail;
        if (json_is_object(budget) && json_object_set_new(pc, "budget", budget_config(budget)) < 0)
            goto fail;
        json_t *ka = json_object_get(pc, "keys");
        json_array_foreach(keys, j, k) {
            const char *id = json_string_value(json_object_get(k, "id"));
            char secret[KM_SECRET_MAX + 1];
            if (!id) {
                rc = fail_msg(c, KM_ECONFIG, "pools[%zu].keys[%zu]: no id", i, j);
                goto fail;
            }
            if ((rc = open_secret(c, pname, id, json_object_get(k, "secret_enc"), secret,
                                sizeof secret)) != KM_OK)
                goto fail;
            json_t *kc = json_pack("{s:s, s:s, s:O, s:O, s:o}", "id", id, "secret", secret, "weight",
                                   json_object_get(k, "weight"), "max_inflight",
                                   json_object_get(k, "max_inflight"), "limits",
                                   limits_config(json_object_get(k, "limits")));
            sodium_memzero(secret, sizeof secret);
            rc = KM_ENOMEM;
            if (!kc || json_array_append_new(ka, kc) < 0)
                goto fail;
            json_t *kb = json_object_get(k, "budget"), *meta = json_object_get(k, "meta");
            json_t *kf = json_object_get(k, "fleet");
            if ((kf && json_object_set(kc, "fleet", kf) < 0) ||
                (json_object_get(k, "price") && json_object_set(kc, "price", json_object_get(k, "price")) < 0) ||
                (json_is_object(kb) && json_object_set_new(kc, "budget", budget_config(kb)) < 0) ||
                (json_object_size(meta) && json_object_set(kc, "meta", meta) < 0))
                goto fail;
        }
    }
    *out = cfg;
    return KM_OK;
fail:
    config_wipe_free(cfg);
    return rc == KM_ENOMEM ? fail_msg(c, KM_ENOMEM, "out of memory") : rc;
}

/* The GCRA words of one set of windows, from {"rpm": {"tat_unix_us"}}. */
static void windows_restore(const restore_ctx *c, km__gcra *win, json_t *lim)
{
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        json_t *l = json_object_get(lim, km_window_name(w));
        if (l)
            win[w].tat = mono_of(c, num_u64(l, "tat_unix_us", 0));
    }
}

static int state_of(const char *s, uint32_t fails, uint32_t max_failures)
{
    if (!s || !strcmp(s, "active"))
        return KM__ST_ACTIVE;
    if (!strcmp(s, "disabled"))
        return KM__ST_DISABLED;
    if (!strcmp(s, "invalid"))
        return KM__ST_INVALID;
    if (!strcmp(s, "exhausted"))
        return KM__ST_EXHAUSTED;
    /* cooling or probing: a key that hit max_failures waits for its
     * cooldown, then takes one probe (the probe out is not restored). */
    return fails >= max_failures ? KM__ST_FAILING : KM__ST_ACTIVE;
}

/* Write the snapshot's state into the new segment (not yet published). */
static void state_restore(const restore_ctx *c, km_env *e, json_t *root)
{
    size_t i, j;
    json_t *p, *k;
    json_array_foreach(json_object_get(root, "pools"), i, p) {
        int pi = km_pool_find(e, json_string_value(json_object_get(p, "name")));
        if (pi < 0)
            continue;
        km__pool *pool = &km__pools(e)[pi];
        json_t *def = json_object_get(p, "defaults"), *dl = json_object_get(def, "limits"), *dp;
        spend_of(p, &pool->spend);
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            json_t *l = json_object_get(dl, km_window_name(w));
            const char *mode = json_string_value(json_object_get(l, "mode"));
            pool->def_limit[w] = num_u64(l, "limit", 0);
            pool->def_burst[w] = num_u64(l, "burst", 0);
            pool->def_mode[w] = mode && !strcmp(mode, "sliding") ? KM_MODE_SLIDING : KM_MODE_TOKEN_BUCKET;
        }
        pool->def_max_inflight = (uint32_t)num_u64(def, "max_inflight", 0);
        dp = json_object_get(def, "price");
        pool->def_price_in = micro_usd_of(dp, "input_per_1k");
        pool->def_price_out = micro_usd_of(dp, "output_per_1k");
        json_array_foreach(json_object_get(p, "keys"), j, k) {
            int ki = km_key_find(e, pi, json_string_value(json_object_get(k, "id")));
            if (ki < 0)
                continue;
            km__key *key = &km__keys(e)[ki];
            km__lease *ls = &km__leases(e, (uint32_t)ki)[0];
            json_t *cn = json_object_get(k, "counters"), *models = json_object_get(k, "models"), *ml;
            const char *mname;
            uint32_t fails = (uint32_t)num_u64(k, "consecutive_failures", 0);
            key->consec_fail = fails;
            key->consec_429 = (uint32_t)num_u64(k, "consecutive_429s", 0);
            key->cooldown_until = mono_of(c, num_u64(k, "cooldown_until_unix_ms", 0) * KM__US_PER_MS);
            key->latency_ema_ns = num_u64(k, "latency_ema_us", 0) * KM__NS_PER_US;
            json_t *sr = json_object_get(k, "success_rate");
            if (json_is_number(sr))
                key->success_ppm = (uint32_t)llround(json_number_value(sr) * KM__PPM);
            spend_of(k, &key->spend);
            key->stale = num_u64(cn, "stale_releases", 0);
            /* Counters are sums over lease slots; slot 0 carries them. */
            ls->acquired = num_u64(cn, "acquired", 0);
            ls->succeeded = num_u64(cn, "success", 0);
            ls->outcomes[KM_OUT_RATE_LIMITED] = num_u64(cn, "rate_limited", 0);
            ls->outcomes[KM_OUT_FAILURE] = num_u64(cn, "failure", 0);
            ls->outcomes[KM_OUT_AUTH] = num_u64(cn, "auth", 0);
            ls->outcomes[KM_OUT_QUOTA] = num_u64(cn, "quota", 0);
            ls->outcomes[KM_OUT_CANCELLED] = num_u64(cn, "cancelled", 0);
            ls->abandoned = num_u64(cn, "abandoned", 0);
            ls->tokens_used = num_u64(k, "tokens_used", 0);
            windows_restore(c, key->win, json_object_get(k, "limits"));
            json_object_foreach(models, mname, ml) {
                for (uint32_t m = 0; m < pool->n_models && m < e->geom.cap_models; m++)
                    if (!strcmp(km__models(e, (uint32_t)pi)[m].name, mname))
                        windows_restore(c, km__mwins(e, (uint32_t)ki)[m].win, ml);
            }
            json_object_foreach(json_object_get(k, "model_counters"), mname, ml) {
                for (uint32_t m = 0; m < pool->n_models && m < e->geom.cap_models; m++)
                    if (!strcmp(km__models(e, (uint32_t)pi)[m].name, mname))
                        model_counters_restore(&km__mwins(e, (uint32_t)ki)[m], ml);
            }
            key->state = (uint32_t)state_of(json_string_value(json_object_get(k, "state")), fails,
                                               pool->max_failures);
        }
    }
}

KM_EXTERN int km_restore(const char *name, const char *json, size_t len, const unsigned char *key,
                         unsigned mode, km_env **out, char *errbuf, size_t errlen)
{
    restore_ctx c = {errbuf, errlen, key, 0, 0};
    char nm[KM__SEG_NAME_BUF], tmp[KM__SEG_NAME_BUF];
    json_error_t jerr;
    json_t *root, *cfgj = NULL;
    km_config *cfg = NULL;
    km_env *e = NULL;
    char *text = NULL;
    int rc;

    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (out)
        *out = NULL;
    if (!json || (name && (rc = km__seg_name(name, nm)) != KM_OK))
        return json ? rc : KM_EINVAL;
    if (name && km__seg_is_tmp(nm))
        return KM_ENAME;
    if (sodium_init() < 0)
        return KM_ESYS;
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail_msg(&c, KM_ECONFIG, "%d:%d: %s", jerr.line, jerr.column, jerr.text);
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(json_object_get(root, "keymesh")) || !json_is_integer(fmt)) {
        rc = fail_msg(&c, KM_ECONFIG, "not a KeyMesh snapshot");
        goto out;
    }
    if (json_integer_value(fmt) != 2) {
        rc = fail_msg(&c, KM_ECONFIG, "format %lld cannot be restored (this version reads format 2)",
                    (long long)json_integer_value(fmt));
        goto out;
    }
    json_t *enc = json_object_get(root, "encryption");
    if (!enc) {
        rc = fail_msg(&c, KM_ECONFIG, "holds no secrets (masked): take it with --include-secrets");
        goto out;
    }
    if (!key) {
        rc = fail_msg(&c, KM_EINVAL, "its secrets are encrypted: a key is needed");
        goto out;
    }
    {
        unsigned char chk[16], got[16];
        size_t glen;
        const char *b64 = json_string_value(json_object_get(enc, "key_check"));
        static const char label[] = "keymesh snapshot key check";
        crypto_generichash(chk, sizeof chk, (const unsigned char *)label, sizeof label - 1, key,
                           KM_SNAPSHOT_KEY_BYTES);
        if (!b64 || sodium_base642bin(got, sizeof got, b64, strlen(b64), NULL, &glen, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0 ||
            glen != sizeof got || sodium_memcmp(chk, got, sizeof chk) != 0) {
            rc = fail_msg(&c, KM_ECRYPTO, "its secrets were encrypted with another key");
            goto out;
        }
    }
    /* Refuse early if the name is taken (checked again at the rename). */
    if (name && (rc = km__seg_name_free(nm)) != KM_OK)
        goto out;
    if ((rc = snapshot_config(&c, root, &cfgj)) != KM_OK)
        goto out;
    text = json_dumps(cfgj, JSON_COMPACT);
    config_wipe_free(cfgj);
    if (!text) {
        rc = KM_ENOMEM;
        goto out;
    }
    rc = km_config_parse(text, strlen(text), "snapshot", &cfg, errbuf, errlen);
    sodium_memzero(text, strlen(text));
    free(text);
    if (rc != KM_OK)
        goto out;

    rc = name ? km__create_tmp(nm, cfg, mode, &e, tmp) : km__create_private(cfg, &e);
    if (rc != KM_OK) {
        fail_msg(&c, rc, "creating the segment: %s", km_strerror(rc));
        goto out;
    }
    c.now_mono = km__now();
    c.now_wall = km__wall_ns();
    state_restore(&c, e, root);
    KM__FAULT("restore.filled");
    /* Publish under the real name; never over an existing segment. */
    if (name && (rc = km__create_commit(e, tmp, nm)) != KM_OK) {
        e = NULL; /* closed, and the temporary removed */
        goto out;
    }
    if (out) {
        *out = e;
        e = NULL;
    }
    rc = KM_OK;
out:
    if (e)
        km_close(e);
    km_config_free(cfg);
    json_decref(root);
    return rc;
}

KM_EXTERN int km_snapshot_key_parse(const void *text, size_t len, unsigned char key[KM_SNAPSHOT_KEY_BYTES])
{
    const char *t = text;
    size_t got;
    if (!text || !key)
        return KM_EINVAL;
    if (len == KM_SNAPSHOT_KEY_BYTES) { /* raw */
        memcpy(key, text, KM_SNAPSHOT_KEY_BYTES);
        return KM_OK;
    }
    while (len && (t[len - 1] == '\n' || t[len - 1] == '\r'))
        len--;
    if (len == 2 * KM_SNAPSHOT_KEY_BYTES &&
        sodium_hex2bin(key, KM_SNAPSHOT_KEY_BYTES, t, len, NULL, &got, NULL) == 0 &&
        got == KM_SNAPSHOT_KEY_BYTES)
        return KM_OK;
    if (sodium_init() >= 0 &&
        sodium_base642bin(key, KM_SNAPSHOT_KEY_BYTES, t, len, NULL, &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) == 0 &&
        got == KM_SNAPSHOT_KEY_BYTES)
        return KM_OK;
    sodium_memzero(key, KM_SNAPSHOT_KEY_BYTES);
    return KM_EINVAL;
}

KM_EXTERN int km_snapshot_keygen(char hex[2 * KM_SNAPSHOT_KEY_BYTES + 1])
{
    unsigned char k[KM_SNAPSHOT_KEY_BYTES];
    if (!hex)
        return KM_EINVAL;
    if (sodium_init() < 0)
        return KM_ESYS;
    randombytes_buf(k, sizeof k);
    sodium_bin2hex(hex, 2 * KM_SNAPSHOT_KEY_BYTES + 1, k, sizeof k);
    sodium_memzero(k, sizeof k);
    return KM_OK;
}
