/*
 * tests/fuzz/fuzz_config.c - libFuzzer target: km_config_parse() on
 * arbitrary bytes.
 *
 * Besides the sanitizers (ASan, UBSan: any memory error, leak or undefined
 * behaviour is a crash), three oracles:
 *   1. A configuration that parses can be laid out: it passes every check
 *      km_create() makes before it touches shared memory (shm/segment.c),
 *      keys lie contiguously per pool, every limit is realisable, and every
 *      id and secret is what the parser promises (printable ASCII without
 *      spaces, secret_len == strlen(secret): no byte after a NUL).
 *   2. A message never depends on a secret: the input is parsed again with
 *      every "secret" string replaced by another of the same length and
 *      character classes, and the message must be the same.
 *   3. A syntax error's message never depends on string contents: the same
 *      with every letter and digit inside a string literal rotated.
 */

#include <jansson.h>

#define FUZZ_NAME "config"
#include "fuzz_common.h"
#include "internal.h"

static int printable_nospace(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* Mirrors the argument checks of km_create (src/attach.c). */
static void check_layout(const km_config *cfg)
{
    if (cfg->n_pools == 0 || cfg->n_pools > cfg->cap_pools ||
        cfg->n_keys > cfg->cap_keys || cfg->cap_keys == 0 ||
        cfg->cap_keys > KM_KEYS_MAX || cfg->cap_pools > KM_POOLS_MAX ||
        cfg->cap_procs == 0 || cfg->cap_procs > KM_PROCS_MAX ||
        cfg->cap_inflight == 0 || cfg->cap_inflight > KM_INFLIGHT_MAX ||
        cfg->cap_models > KM_MODELS_MAX)
        FAIL("parsed config km_create would refuse (caps)");
    uint32_t cap_models = cfg->cap_models ? cfg->cap_models : KM__DEF_CAP_MODELS;
    uint32_t next = 0;
    for (uint32_t p = 0; p < cfg->n_pools; p++) {
        const km__pool_cfg *pc = &cfg->pools[p];
        if (pc->n_models > cap_models)
            FAIL("pool %u: %u models > cap %u", p, pc->n_models, cap_models);
        if (pc->first_key != next || pc->n_keys == 0)
            FAIL("pool %u: keys not contiguous", p);
        next += pc->n_keys;
        if (pc->strategy <= KM_STRATEGY_DEFAULT || pc->strategy >= KM_STRATEGY_COUNT)
            FAIL("pool %u: strategy %d", p, pc->strategy);
        size_t nl = strnlen(pc->name, sizeof pc->name);
        if (nl == 0 || nl > KM_ID_MAX)
            FAIL("pool %u: name length %zu", p, nl);
        if (pc->defaults.max_inflight > cfg->cap_inflight)
            FAIL("pool %u: default max_inflight above capacity", p);
        for (uint32_t m = 0; m < pc->n_models; m++) {
            size_t ml = strnlen(pc->models[m].name, sizeof pc->models[m].name);
            if (ml == 0 || ml > KM_ID_MAX)
                FAIL("pool %u model %u: name length %zu", p, m, ml);
            for (int w = 0; w < KM_WIN_COUNT; w++) {
                uint64_t T, tau, b;
                const km__limit_cfg *l = &pc->models[m].limits[w];
                if (l->limit && km__limit_gcra(l, km__window_period_ns(w), &T, &tau, &b))
                    FAIL("pool %u model %u window %d: unrealisable limit", p, m, w);
            }
        }
    }
    if (next != cfg->n_keys)
        FAIL("pools hold %u keys, config %u", next, cfg->n_keys);
    for (uint32_t i = 0; i < cfg->n_keys; i++) {
        const km__key_cfg *k = &cfg->keys[i];
        size_t il = strnlen(k->id, sizeof k->id);
        if (il == 0 || il > KM_ID_MAX || !printable_nospace(k->id, il))
            FAIL("key %u: id not 1..63 printable bytes", i);
        size_t sl = strnlen(k->secret, sizeof k->secret);
        if (k->secret_len != sl)
            FAIL("key %u (%s): secret_len %u but strlen %zu (bytes after a NUL)",
                 i, k->id, k->secret_len, sl);
        if (sl == 0 || sl > KM_SECRET_MAX || !printable_nospace(k->secret, k->secret_len))
            FAIL("key %u (%s): secret not printable ASCII without spaces", i, k->id);
        if (k->weight == 0 || k->max_inflight > cfg->cap_inflight)
            FAIL("key %u: weight %u max_inflight %u", i, k->weight, k->max_inflight);
        if (strnlen(k->meta, sizeof k->meta) > KM_META_MAX)
            FAIL("key %u: meta not terminated", i);
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            uint64_t T, tau, b;
            if (k->limits[w].limit &&
                km__limit_gcra(&k->limits[w], km__window_period_ns(w), &T, &tau, &b))
                FAIL("key %u window %d: unrealisable limit", i, w);
        }
    }
}

/* Same length, same character class, different bytes. */
static void twist(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'a' && c <= 'z')
            s[i] = (char)('a' + (c - 'a' + 13) % 26);
        else if (c >= 'A' && c <= 'Z')
            s[i] = (char)('A' + (c - 'A' + 13) % 26);
        else if (c >= '0' && c <= '9')
            s[i] = (char)('0' + (c - '0' + 5) % 10);
    }
}

/* Replace every string member named "secret", anywhere in the tree. */
static int twist_secrets(json_t *j)
{
    int n = 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            if (strcmp(k, "secret") == 0 && json_is_string(v)) {
                size_t len = json_string_length(v);
                char *s = malloc(len + 1);
                if (!s)
                    continue;
                memcpy(s, json_string_value(v), len + 1);
                twist(s, len);
                json_string_setn_nocheck(v, s, len);
                free(s);
                n++;
            } else {
                n += twist_secrets(v);
            }
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) n += twist_secrets(v);
    }
    return n;
}

static int parse_msg(const char *text, size_t len, char *err, size_t errlen)
{
    km_config *cfg = NULL;
    int rc = km_config_parse(text, len, "fuzz", &cfg, err, errlen);
    km_config_free(cfg);
    return rc;
}

/* Oracle 2, on an input that is JSON: dump it, and dump it with its secrets
 * twisted; both must give the same result and message. */
static void secret_oracle(const uint8_t *data, size_t size)
{
    json_error_t je;
    json_t *a = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (!a)
        return;
    json_t *b = json_deep_copy(a);
    if (!b || twist_secrets(b) == 0) {
        json_decref(a);
        json_decref(b);
        return;
    }
    char *ta = json_dumps(a, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_ENCODE_ANY);
    char *tb = json_dumps(b, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_ENCODE_ANY);
    if (ta && tb && strlen(ta) == strlen(tb)) {
        char ea[512], eb[512];
        int ra = parse_msg(ta, strlen(ta), ea, sizeof ea);
        int rb = parse_msg(tb, strlen(tb), eb, sizeof eb);
        if (ra != rb || strcmp(ea, eb) != 0)
            FAIL("message depends on a secret:\n  %d %s\n  %d %s", ra, ea, rb, eb);
    }
    free(ta);
    free(tb);
    json_decref(a);
    json_decref(b);
}

/* Oracle 3: rotate letters and digits inside string literals (escapes kept
 * as they are); a syntax error must keep its message. */
static void syntax_oracle(const uint8_t *data, size_t size, int rc, const char *msg)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    if (j) {
        json_decref(j);
        return;
    }
    if (rc != KM_ECONFIG || json_error_code(&je) == json_error_duplicate_key ||
        json_error_code(&je) == json_error_out_of_memory)
        return;
    char *t = malloc(size ? size : 1);
    if (!t)
        return;
    memcpy(t, data, size);
    int in = 0;
    for (size_t i = 0; i < size; i++) {
        if (!in) {
            in = t[i] == '"';
            continue;
        }
        if (t[i] == '\\') { /* keep the escape: \x or \uXXXX */
            if (i + 1 < size && t[i + 1] == 'u')
                i += 5;
            else
                i += 1;
            continue;
        }
        if (t[i] == '"') {
            in = 0;
            continue;
        }
        twist(&t[i], 1);
    }
    char e2[512];
    int rc2 = parse_msg(t, size, e2, sizeof e2);
    if (rc2 != rc || strcmp(msg, e2) != 0) {
        /* Rotation may turn a valid string invalid only through escapes,
         * which are kept; any difference is content in the message. */
        FAIL("syntax message depends on string contents:\n  %s\n  %s", msg, e2);
    }
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    km_config *cfg = NULL;
    char err[512];
    int rc = km_config_parse((const char *)data, size, "fuzz", &cfg, err, sizeof err);

    if (rc == KM_OK) {
        if (!cfg || err[0])
            FAIL("KM_OK without a config, or with a message");
        check_layout(cfg);
        km_config_free(cfg);
    } else {
        if (cfg)
            FAIL("error %d with a config", rc);
        if (rc != KM_ECONFIG && rc != KM_ENOMEM)
            FAIL("unexpected code %d", rc);
        if (!err[0] || strchr(err, '\n'))
            FAIL("message empty or not one line: %s", err);
        syntax_oracle(data, size, rc, err);
    }
    secret_oracle(data, size);
    return 0;
}
