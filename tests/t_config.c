/*
 * tests/t_config.c - km_config_parse(): the schema, defaults, limit merging
 * and resolution, and every error the parser promises to catch, each with a
 * one-line message that names the field (or line:column) and never the
 * secret.  Also the newer fields (models, prices, budgets, metadata, the
 * new strategies) and km_config_from_env().
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "internal.h"
#include "tap.h"

#define SECRET "sk-test-aaaa1111"
#define SECRET_B "sk-test-bbbb2222"

static char err[512];

static int parse(const char *json, km_config **cfg)
{
    err[0] = '\0';
    *cfg = NULL;
    return km_config_parse(json, strlen(json), NULL, cfg, err, sizeof err);
}

/* A bad configuration: KM_ECONFIG, no config returned, one line starting
 * with the origin, naming `want`, without either secret. */
static TAP__PRINTF(3, 4) void bad(const char *json, const char *want,
                                  const char *fmt, ...)
{
    km_config *cfg = (km_config *)&cfg; /* must be reset to NULL */
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int rc = parse(json, &cfg);
    int good = rc == KM_ECONFIG && cfg == NULL && strstr(err, want) &&
               strncmp(err, "<config>", 8) == 0 && !strchr(err, '\n') &&
               !strstr(err, SECRET) && !strstr(err, SECRET_B) &&
               !strstr(err, "aaaa1111");
    ok(good, "%s", name);
    if (!good)
        diag("rc %d (%s), message '%s', wanted '%s'", rc, km_err_name(rc),
             err, want);
    if (rc == KM_OK)
        km_config_free(cfg);
}

/* Wrap one key's extra fields / one pool's extra fields into a config. */
static const char *one_key(const char *key_extra, const char *pool_extra)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"pools\": [{\"name\": \"p\"%s%s, \"keys\": ["
             "{\"id\": \"a\", \"secret\": \"" SECRET "\"%s%s}]}]}",
             pool_extra[0] ? ", " : "", pool_extra, key_extra[0] ? ", " : "",
             key_extra);
    return buf;
}

/* One pool "p" with one key made of `key_fields` (no secret added). */
static const char *key_only(const char *key_fields)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", %s}]}]}",
             key_fields);
    return buf;
}

/* n keys in pool 0 (ids k0..), optional capacity object. */
static char *many_keys(unsigned n, const char *capacity)
{
    size_t cap = 256 + (size_t)n * 64;
    char *b = malloc(cap);
    size_t off = (size_t)snprintf(b, cap, "{%s%s\"pools\": [{\"name\": \"p\", \"keys\": [",
                                  capacity, capacity[0] ? ", " : "");
    for (unsigned i = 0; i < n; i++)
        off += (size_t)snprintf(b + off, cap - off,
                                "%s{\"id\": \"k%u\", \"secret\": \"" SECRET "-%u\"}",
                                i ? ", " : "", i, i);
    snprintf(b + off, cap - off, "]}]}");
    return b;
}

static const char good_json[] =
    "{\"capacity\": {\"keys\": 16, \"processes\": 32, \"pools\": 4, "
    "\"inflight_per_key\": 32},\n"
    " \"pools\": [\n"
    "  {\"name\": \"openai\", \"strategy\": \"weighted\",\n"
    "   \"limits\": {\"rpm\": 60, \"tpm\": {\"limit\": 100000, \"mode\": "
    "\"sliding\", \"burst\": 5000}, \"rpd\": {\"limit\": 5000, \"mode\": "
    "\"sliding\"}},\n"
    "   \"cooldown_s\": 30, \"max_cooldown_s\": 600, \"max_failures\": 3, "
    "\"max_inflight\": 16,\n"
    "   \"keys\": [{\"id\": \"a\", \"secret\": \"" SECRET "\", \"weight\": 3},\n"
    "            {\"id\": \"b\", \"secret_env\": \"KMT_CONFIG_KEY_B\", "
    "\"limits\": {\"rpm\": 30, \"tph\": {\"limit\": 7}}, \"max_inflight\": 8},\n"
    "            {\"id\": \"c\", \"secret\": \"sk-c\", \"max_inflight\": 0}]},\n"
    "  {\"name\": \"anthropic.v1\", \"keys\": [{\"id\": \"a\", \"secret\": "
    "\"sk-ant-x\"}]}]}\n";

static void test_good(void)
{
    km_config *cfg;
    setenv("KMT_CONFIG_KEY_B", SECRET_B, 1);
    int rc = parse(good_json, &cfg);
    if (!is_int(rc, KM_OK, "good config parses")) {
        diag("%s", err);
        bail_out("cannot go on without a parsed config");
    }
    is_int(cfg->n_pools, 2, "n_pools");
    is_int(cfg->n_keys, 4, "n_keys");
    ok(cfg->cap_keys == 16 && cfg->cap_procs == 32 && cfg->cap_pools == 4 &&
           cfg->cap_inflight == 32,
       "capacity as given");
    const km__pool_cfg *p0 = &cfg->pools[0], *p1 = &cfg->pools[1];
    is_str(p0->name, "openai", "pool 0 name");
    is_int(p0->strategy, KM_STRATEGY_WEIGHTED, "pool 0 strategy");
    ok(p0->cooldown_s == 30 && p0->max_cooldown_s == 600 &&
           p0->max_failures == 3,
       "pool 0 cooldowns and max_failures");
    ok(p0->first_key == 0 && p0->n_keys == 3 && p1->first_key == 3 &&
           p1->n_keys == 1,
       "keys contiguous per pool");
    is_int(p1->strategy, KM_STRATEGY_ROUND_ROBIN, "default strategy");
    ok(p1->cooldown_s == KM__DEF_COOLDOWN_S &&
           p1->max_cooldown_s == KM__DEF_MAX_COOLDOWN_S &&
           p1->max_failures == KM__DEF_MAX_FAILURES,
       "default cooldowns and max_failures");

    const km__key_cfg *a = &cfg->keys[0], *b = &cfg->keys[1],
                      *c = &cfg->keys[2], *d = &cfg->keys[3];
    ok(strcmp(a->id, "a") == 0 && strcmp(a->secret, SECRET) == 0 &&
           a->secret_len == strlen(SECRET),
       "literal secret");
    ok(strcmp(b->secret, SECRET_B) == 0 && b->secret_len == strlen(SECRET_B),
       "secret_env resolved from the environment");
    is_int(a->weight, 3, "weight as given");
    is_int(b->weight, KM__DEF_WEIGHT, "default weight");
    is_int(a->max_inflight, 16, "pool max_inflight is the keys' default");
    is_int(b->max_inflight, 8, "key max_inflight overrides the pool's");
    is_int(c->max_inflight, 0, "max_inflight 0: the capacity's");
    is_int(d->max_inflight, 0, "no max_inflight anywhere: 0");

    /* limits: pool rpm 60 (token bucket), tpm sliding 100000/5000, rpd
     * sliding 5000 (default burst 500); key b: rpm 30, tph 7. */
    const km__limit_cfg *la = a->limits, *lb = b->limits;
    ok(la[KM_WIN_RPM].limit == 60 && la[KM_WIN_RPM].mode == KM_MODE_TOKEN_BUCKET,
       "integer limit is a token bucket");
    is_u64(la[KM_WIN_RPM].burst, 60, "token bucket burst defaults to limit");
    ok(la[KM_WIN_TPM].limit == 100000 && la[KM_WIN_TPM].mode == KM_MODE_SLIDING &&
           la[KM_WIN_TPM].burst == 5000,
       "sliding limit with explicit burst");
    ok(la[KM_WIN_RPD].limit == 5000 && la[KM_WIN_RPD].mode == KM_MODE_SLIDING,
       "sliding limit without burst");
    is_u64(la[KM_WIN_RPD].burst, 500, "sliding burst defaults to limit/10");
    ok(la[KM_WIN_RPH].limit == 0 && la[KM_WIN_TPH].limit == 0 &&
           la[KM_WIN_TPD].limit == 0,
       "unset windows have no limit");
    is_u64(lb[KM_WIN_RPM].limit, 30, "key rpm overrides the pool's");
    is_u64(lb[KM_WIN_RPM].burst, 30, "overriding limit has its own burst");
    ok(lb[KM_WIN_TPM].limit == 100000 && lb[KM_WIN_TPM].burst == 5000 &&
           lb[KM_WIN_TPM].mode == KM_MODE_SLIDING,
       "key inherits the pool's tpm");
    ok(lb[KM_WIN_TPH].limit == 7 && lb[KM_WIN_TPH].burst == 7,
       "key's own window the pool lacks");
    is_u64(a->limits[KM_WIN_TPH].limit, 0, "other keys do not get it");
    is_u64(d->limits[KM_WIN_RPM].limit, 0, "other pools' limits are separate");
    km_config_free(cfg);
    km_config_free(NULL);
    ok(1, "km_config_free(NULL) is harmless");
}

static void test_defaults(void)
{
    km_config *cfg;
    char *j = many_keys(70, "");
    int rc = parse(j, &cfg);
    free(j);
    ok(rc == KM_OK && cfg->cap_keys == 70,
       "capacity.keys defaults to max(64, keys): 70 keys");
    km_config_free(cfg);
    rc = parse(one_key("", ""), &cfg);
    ok(rc == KM_OK && cfg->cap_keys == KM__DEF_CAP_KEYS &&
           cfg->cap_procs == KM__DEF_CAP_PROCS &&
           cfg->cap_pools == KM__DEF_CAP_POOLS &&
           cfg->cap_inflight == KM__DEF_CAP_INFLIGHT,
       "capacity defaults");
    km_config_free(cfg);

    /* nine pools without capacity: capacity.pools grows to 9 */
    char buf[2048];
    size_t off = (size_t)snprintf(buf, sizeof buf, "{\"pools\": [");
    for (int i = 0; i < 9; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off,
                                "%s{\"name\": \"p%d\", \"keys\": [{\"id\": "
                                "\"a\", \"secret\": \"sk-x%d\"}]}",
                                i ? ", " : "", i, i);
    snprintf(buf + off, sizeof buf - off, "]}");
    rc = parse(buf, &cfg);
    ok(rc == KM_OK && cfg->cap_pools == 9 && cfg->n_pools == 9 &&
           cfg->n_keys == 9,
       "capacity.pools defaults to max(8, pools); same id in two pools is fine");
    km_config_free(cfg);

    /* sliding default burst is at least 1 */
    rc = parse(one_key("", "\"limits\": {\"rpm\": {\"limit\": 5, \"mode\": "
                           "\"sliding\"}}"), &cfg);
    ok(rc == KM_OK && cfg->keys[0].limits[KM_WIN_RPM].burst == 1,
       "sliding burst default max(1, limit/10) = 1 for limit 5");
    km_config_free(cfg);
    rc = parse(one_key("", "\"limits\": {\"rpm\": {\"limit\": 5, \"mode\": "
                           "\"sliding\", \"burst\": 5}}"), &cfg);
    ok(rc == KM_OK && cfg->keys[0].limits[KM_WIN_RPM].burst == 5,
       "sliding burst == limit is accepted");
    km_config_free(cfg);
    rc = parse(one_key("", "\"limits\": {\"tpd\": {\"limit\": 1000, \"burst\": "
                           "5000}}"), &cfg);
    ok(rc == KM_OK && cfg->keys[0].limits[KM_WIN_TPD].burst == 5000,
       "token bucket burst may exceed the limit");
    km_config_free(cfg);

    /* limits at the extremes of the ranges */
    rc = parse("{\"capacity\": {\"keys\": 65536, \"processes\": 4096, "
               "\"pools\": 64, \"inflight_per_key\": 1024}, \"pools\": "
               "[{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": "
               "\"sk-x\", \"max_inflight\": 1024, \"weight\": 1000000}]}]}",
               &cfg);
    ok(rc == KM_OK, "largest capacities accepted");
    km_config_free(cfg);
}

static void test_syntax(void)
{
    km_config *cfg;
    int rc = km_config_parse("{\n  \"pools\": [\n    {\"name\": x}\n]}", 36,
                             "pool.json", &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strncmp(err, "pool.json:3:14: ", 16) == 0,
       "syntax error: origin:line:col");
    diag("message: %s", err);

    /* an unterminated string may be a secret: the quote is dropped */
    const char *j = "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", "
                    "\"secret\": \"" SECRET;
    rc = km_config_parse(j, strlen(j), NULL, &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strncmp(err, "<config>:1:", 11) == 0 &&
           !strstr(err, "aaaa1111"),
       "unterminated secret: position given, secret not quoted");
    diag("message: %s", err);
    j = "{\"s\": \"" SECRET "\\q\"}";
    rc = km_config_parse(j, strlen(j), NULL, &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && !strstr(err, "aaaa1111"),
       "invalid escape in a secret: secret not quoted");

    j = "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": sk-aaaa1111}]}]}";
    rc = km_config_parse(j, strlen(j), NULL, &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strncmp(err, "<config>:1:", 11) == 0 &&
           !strstr(err, "near 'sk"),
       "unquoted secret: no fragment of it quoted");
    diag("message: %s", err);
    j = "{\"secret\": 1111aaaa1111}";
    rc = km_config_parse(j, strlen(j), NULL, &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && !strstr(err, "aaaa"), "secret starting with digits: not quoted");
    j = "{\"pools\": [,]}";
    rc = km_config_parse(j, strlen(j), NULL, &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "near ','"), "punctuation near the error is kept");
    bad("{\"pools\": [], \"pools\": []}", "<config>:1:", "duplicate JSON key: line:col");
    ok(strstr(err, "duplicate") != NULL, "duplicate JSON key is named as such");
    bad("", "<config>:1:0:", "empty input");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": 1}]}]} x",
        "<config>:1:", "trailing garbage");
    bad("[]", "top level: must be a JSON object", "top level must be an object");

    /* NULL origin gives <config>; a given origin is used */
    rc = km_config_parse("{}", 2, "x.json", &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strncmp(err, "x.json: pools: missing", 22) == 0,
       "origin prefixes field errors");
    /* a tiny errbuf is truncated, not overrun; NULL errbuf is fine */
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    rc = km_config_parse("{}", 2, "x.json", &cfg, tiny, sizeof tiny);
    ok(rc == KM_ECONFIG && strlen(tiny) == 7, "small errbuf truncated");
    rc = km_config_parse("{}", 2, NULL, &cfg, NULL, 0);
    is_int(rc, KM_ECONFIG, "NULL errbuf");
}

static void test_unknown_fields(void)
{
    bad("{\"pools\": [], \"colour\": 1}", "<config>: colour: unknown field",
        "unknown top-level field");
    bad("{\"capacity\": {\"keyz\": 3}, \"pools\": []}",
        "capacity.keyz: unknown field", "unknown capacity field");
    bad(one_key("", "\"colour\": 1"), "pools[0].colour: unknown field",
        "unknown pool field");
    bad(one_key("\"colour\": \"red\"", ""),
        "pools[0].keys[0].colour: unknown field", "unknown key field");
    bad(one_key("", "\"limits\": {\"rpz\": 3}"),
        "pools[0].limits.rpz: unknown field", "unknown window");
    bad(one_key("\"limits\": {\"tpm\": {\"limit\": 3, \"brust\": 1}}", ""),
        "pools[0].keys[0].limits.tpm.brust: unknown field",
        "unknown field in a limit object");
}

static void test_limits(void)
{
    static const char *const vals[] = {"0", "-5", "1.5", "\"60\"", "true",
                                       "null", "[]"};
    char b[128];
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        snprintf(b, sizeof b, "\"limits\": {\"rpm\": %s}", vals[i]);
        bad(one_key(b, ""), "pools[0].keys[0].limits.rpm: must be a positive integer",
            "key limit rpm = %s refused", vals[i]);
    }
    bad(one_key("", "\"limits\": {\"tph\": 0}"),
        "pools[0].limits.tph: must be a positive integer", "pool limit 0");
    bad(one_key("", "\"limits\": {\"tpm\": {\"limit\": 0}}"),
        "pools[0].limits.tpm.limit: must be a positive integer",
        "object limit 0");
    bad(one_key("", "\"limits\": {\"tpm\": {\"limit\": 2.5}}"),
        "pools[0].limits.tpm.limit: must be a positive integer",
        "object limit not an integer");
    bad(one_key("", "\"limits\": {\"tpm\": {\"mode\": \"sliding\"}}"),
        "pools[0].limits.tpm.limit: missing", "object without limit");
    bad(one_key("", "\"limits\": {\"tpm\": {\"limit\": 10, \"burst\": 0}}"),
        "pools[0].limits.tpm.burst: must be a positive integer", "burst 0");
    bad(one_key("", "\"limits\": {\"tpm\": {\"limit\": 10, \"burst\": -1}}"),
        "pools[0].limits.tpm.burst: must be a positive integer", "burst < 0");
    bad(one_key("", "\"limits\": {\"tpm\": {\"limit\": 10, \"mode\": \"fixed\"}}"),
        "pools[0].limits.tpm.mode: must be", "unknown mode");
    bad(one_key("\"limits\": {\"rpm\": {\"limit\": 10, \"mode\": \"sliding\", "
                "\"burst\": 11}}", ""),
        "pools[0].keys[0].limits.rpm.burst: must not exceed limit",
        "sliding burst > limit refused");
    bad(one_key("", "\"limits\": {\"rpd\": 2000000000000}"),
        "pools[0].limits.rpd: cannot be realised", "limit beyond 2^40 refused");
    bad(one_key("", "\"limits\": 60"), "pools[0].limits: must be an object",
        "limits must be an object");
}

static void test_fields(void)
{
    bad("{\"pools\": []}", "pools: no pools", "no pools");
    bad("{}", "pools: missing", "pools missing");
    bad("{\"pools\": {}}", "pools: must be an array", "pools not an array");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": []}]}",
        "pools[0].keys: no keys", "pool without keys");
    bad("{\"pools\": [{\"name\": \"p\"}]}", "pools[0].keys: missing",
        "pool keys missing");
    bad("{\"pools\": [{\"keys\": [{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}",
        "pools[0].name: missing", "pool name missing");
    bad("{\"pools\": [{\"name\": \"a/b\", \"keys\": [{\"id\": \"a\", "
        "\"secret\": \"sk-x\"}]}]}", "pools[0].name: may hold only",
        "pool name charset");
    bad("{\"pools\": [{\"name\": \"\", \"keys\": [{\"id\": \"a\", "
        "\"secret\": \"sk-x\"}]}]}", "pools[0].name: must not be empty",
        "empty pool name");
    bad("{\"pools\": [{\"name\": "
        "\"p234567890123456789012345678901234567890123456789012345678901234\", "
        "\"keys\": [{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}",
        "pools[0].name: longer than 63 bytes", "pool name of 64 bytes");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": "
        "\"sk-x\"}]}, {\"name\": \"q\", \"keys\": [{\"id\": \"a\", \"secret\": "
        "\"sk-x\"}]}, {\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": "
        "\"sk-x\"}]}]}",
        "pools[2].name: duplicate pool name \"p\" (also pools[0])",
        "duplicate pool name");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"" SECRET "\"}, "
        "{\"id\": \"b\", \"secret\": \"" SECRET "\"}, "
        "{\"id\": \"a\", \"secret\": \"" SECRET "\"}]}]}",
        "pools[0].keys[2].id: duplicate key id \"a\" (also pools[0].keys[0])",
        "duplicate key id");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"secret\": \"sk-x\"}]}]}",
        "pools[0].keys[0].id: missing", "key id missing");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"\", \"secret\": \"sk-x\"}]}]}",
        "pools[0].keys[0].id: must not be empty", "empty key id");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": "
        "\"k234567890123456789012345678901234567890123456789012345678901234\", "
        "\"secret\": \"sk-x\"}]}]}",
        "pools[0].keys[0].id: longer than 63 bytes", "key id of 64 bytes");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a b\", \"secret\": \"sk-x\"}]}]}",
        "pools[0].keys[0].id: must be printable ASCII", "key id with a space");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": 7, \"secret\": \"sk-x\"}]}]}",
        "pools[0].keys[0].id: must be a string", "key id not a string");
    bad("{\"pools\": [7]}", "pools[0]: must be an object", "pool not an object");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [7]}]}",
        "pools[0].keys[0]: must be an object", "key not an object");
    bad(one_key("", "\"strategy\": \"random\""), "pools[0].strategy: must be",
        "unknown strategy");
    bad(one_key("", "\"cooldown_s\": 0"), "pools[0].cooldown_s: must be an integer from 1",
        "cooldown_s 0");
    bad(one_key("", "\"cooldown_s\": 10, \"max_cooldown_s\": 5"),
        "pools[0].max_cooldown_s: must be at least cooldown_s (10)",
        "max_cooldown_s < cooldown_s");
    bad(one_key("", "\"cooldown_s\": 7200"),
        "pools[0].cooldown_s: must not exceed max_cooldown_s (3600)",
        "cooldown_s above the default max_cooldown_s");
    bad(one_key("", "\"max_failures\": 0"), "pools[0].max_failures: must be an integer from 1",
        "max_failures 0");
    bad(one_key("", "\"max_failures\": \"3\""), "pools[0].max_failures: must be an integer",
        "max_failures a string");
    bad(one_key("\"weight\": 0", ""), "pools[0].keys[0].weight: must be an integer from 1 to 1000000",
        "weight 0");
    bad(one_key("\"weight\": 1000001", ""), "pools[0].keys[0].weight: must be an integer from 1 to 1000000",
        "weight above 1000000");
    bad(one_key("\"max_inflight\": 65", ""),
        "pools[0].keys[0].max_inflight: must be an integer from 0 to 64",
        "key max_inflight above inflight_per_key");
    bad(one_key("\"max_inflight\": -1", ""),
        "pools[0].keys[0].max_inflight: must be an integer from 0 to 64",
        "key max_inflight negative");
    bad(one_key("", "\"max_inflight\": 65"),
        "pools[0].max_inflight: must be an integer from 0 to 64",
        "pool max_inflight above inflight_per_key");
}

static void test_capacity(void)
{
    static const struct {
        const char *field;
        const char *value;
        const char *want;
    } cases[] = {
        {"processes", "0", "capacity.processes: must be an integer from 1 to 4096"},
        {"processes", "4097", "capacity.processes: must be an integer from 1 to 4096"},
        {"keys", "0", "capacity.keys: must be an integer from 1 to 65536"},
        {"keys", "65537", "capacity.keys: must be an integer from 1 to 65536"},
        {"pools", "0", "capacity.pools: must be an integer from 1 to 64"},
        {"pools", "65", "capacity.pools: must be an integer from 1 to 64"},
        {"inflight_per_key", "0", "capacity.inflight_per_key: must be an integer from 1 to 1024"},
        {"inflight_per_key", "1025", "capacity.inflight_per_key: must be an integer from 1 to 1024"},
        {"keys", "1.0", "capacity.keys: must be an integer"},
    };
    char b[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(b, sizeof b,
                 "{\"capacity\": {\"%s\": %s}, \"pools\": [{\"name\": \"p\", "
                 "\"keys\": [{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}",
                 cases[i].field, cases[i].value);
        bad(b, cases[i].want, "capacity.%s = %s refused", cases[i].field,
            cases[i].value);
    }
    bad("{\"capacity\": 3, \"pools\": []}", "capacity: must be an object",
        "capacity not an object");

    char *j = many_keys(70, "\"capacity\": {\"keys\": 64}");
    bad(j, "more keys (70) than capacity.keys (64)", "more keys than capacity.keys");
    free(j);
    j = many_keys(65, "\"capacity\": {\"keys\": 65}");
    km_config *cfg;
    int rc = parse(j, &cfg);
    ok(rc == KM_OK && cfg->cap_keys == 65 && cfg->n_keys == 65,
       "exactly capacity.keys keys");
    km_config_free(cfg);
    free(j);
    bad("{\"capacity\": {\"pools\": 1}, \"pools\": [{\"name\": \"p\", \"keys\": "
        "[{\"id\": \"a\", \"secret\": \"sk-x\"}]}, {\"name\": \"q\", \"keys\": "
        "[{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}",
        "more pools (2) than capacity.pools (1)", "more pools than capacity.pools");
}

static void test_secrets(void)
{
    char longsecret[KM_SECRET_MAX + 2];
    char b[1024];
    km_config *cfg;
    int rc;

    bad("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\"}]}]}",
        "pools[0].keys[0]: missing secret, secret_env or secret_file", "neither secret nor secret_env");
    bad(one_key("\"secret_env\": \"KMT_CONFIG_KEY_B\"", ""),
        "pools[0].keys[0]: give one of secret, secret_env and secret_file",
        "both secret and secret_env");
    bad(one_key("\"secret_env\": \"KMT_CONFIG_KEY_B\", \"weight\": 1", ""),
        "pools[0].keys[0]: give one of", "both, with more fields");

    /* secret_file: the file's content without its trailing newline. */
    {
        char path[] = "/tmp/kmt-secret-XXXXXX";
        int fd = mkstemp(path);
        if (fd < 0 || write(fd, "sk-from-file-1234\n", 18) != 18)
            bail_out("mkstemp/write");
        close(fd);
        snprintf(b, sizeof b,
                 "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret_file\": \"%s\"}]}]}",
                 path);
        rc = km_config_parse(b, strlen(b), NULL, &cfg, err, sizeof err);
        ok(rc == KM_OK && strcmp(cfg->keys[0].secret, "sk-from-file-1234") == 0,
           "secret_file: read, without its newline (%s)", err);
        if (rc == KM_OK)
            km_config_free(cfg);
        unlink(path);
        rc = km_config_parse(b, strlen(b), NULL, &cfg, err, sizeof err);
        ok(rc == KM_ECONFIG && strstr(err, "secret_file") && strstr(err, path) &&
               strstr(err, "No such file"),
           "secret_file: a missing file is named: %s", err);
    }

    memset(longsecret, 'x', sizeof longsecret - 1);
    memcpy(longsecret, "sk-", 3);
    longsecret[sizeof longsecret - 1] = '\0'; /* 256 bytes */
    snprintf(b, sizeof b,
             "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", "
             "\"secret\": \"%s\"}]}]}", longsecret);
    rc = parse(b, &cfg);
    ok(rc == KM_ECONFIG &&
           strstr(err, "pools[0].keys[0].secret: longer than 255 bytes") &&
           !strstr(err, "xxxxxxxx"),
       "secret of 256 bytes refused without echoing it");
    longsecret[KM_SECRET_MAX] = '\0'; /* 255 bytes */
    snprintf(b, sizeof b,
             "{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", "
             "\"secret\": \"%s\"}]}]}", longsecret);
    rc = parse(b, &cfg);
    ok(rc == KM_OK && cfg->keys[0].secret_len == KM_SECRET_MAX,
       "secret of 255 bytes accepted");
    km_config_free(cfg);

    bad(key_only("\"secret\": \"\""), "pools[0].keys[0].secret: must not be empty",
        "empty secret");
    bad(key_only("\"secret\": 12345"), "pools[0].keys[0].secret: must be a string",
        "secret not a string");
    bad(key_only("\"secret\": \"sk-aaaa1111 x\""),
        "pools[0].keys[0].secret: must be printable ASCII", "secret with a space");
    bad(key_only("\"secret\": \"sk-aaaa1111\\r\\nX-Evil: 1\""),
        "pools[0].keys[0].secret: must be printable ASCII", "secret with CR LF");

    unsetenv("KMT_CONFIG_UNSET");
    bad(key_only("\"secret_env\": \"KMT_CONFIG_UNSET\""),
        "pools[0].keys[0].secret_env: environment variable KMT_CONFIG_UNSET is not set",
        "secret_env naming an unset variable");
    setenv("KMT_CONFIG_EMPTY", "", 1);
    bad(key_only("\"secret_env\": \"KMT_CONFIG_EMPTY\""),
        "pools[0].keys[0].secret_env: environment variable KMT_CONFIG_EMPTY is empty",
        "secret_env naming an empty variable");
    memset(longsecret, 'a', sizeof longsecret - 1);
    longsecret[sizeof longsecret - 1] = '\0'; /* 256 bytes */
    setenv("KMT_CONFIG_LONG", longsecret, 1);
    bad(key_only("\"secret_env\": \"KMT_CONFIG_LONG\""),
        "pools[0].keys[0].secret_env: environment variable KMT_CONFIG_LONG is longer than 255 bytes",
        "secret_env naming a variable of 256 bytes");
    ok(!strstr(err, "aaaaaaaa"), "... and its value is not in the message");
    setenv("KMT_CONFIG_SPACE", "sk-aaaa1111 x", 1);
    bad(key_only("\"secret_env\": \"KMT_CONFIG_SPACE\""),
        "environment variable KMT_CONFIG_SPACE must hold printable ASCII",
        "secret_env naming a variable with a space");
    bad(key_only("\"secret_env\": \"\""), "pools[0].keys[0].secret_env: must not be empty",
        "empty secret_env");

    /* resolved at parse time: the value then, not later */
    setenv("KMT_CONFIG_NOW", "sk-now-0000", 1);
    rc = parse(key_only("\"secret_env\": \"KMT_CONFIG_NOW\""), &cfg);
    setenv("KMT_CONFIG_NOW", "sk-later-9999", 1);
    ok(rc == KM_OK && strcmp(cfg->keys[0].secret, "sk-now-0000") == 0,
       "secret_env resolved at parse time");
    km_config_free(cfg);
    unsetenv("KMT_CONFIG_NOW");
    bad(key_only("\"secret_env\": \"KMT_CONFIG_NOW\""), "KMT_CONFIG_NOW is not set",
        "unset again: refused");

    /* a field error after a secret never quotes the secret */
    bad(one_key("\"weight\": \"" SECRET "\"", ""),
        "pools[0].keys[0].weight: must be an integer", "secret-looking value not echoed");
}

static void test_file(void)
{
    char dir[] = "/tmp/kmt-config-XXXXXX", path[128];
    km_config *cfg = NULL;
    int rc, fd;

    if (!mkdtemp(dir))
        bail_out("mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/pool.json", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, good_json, strlen(good_json)) < 0)
        bail_out("write %s: %s", path, strerror(errno));
    close(fd);
    rc = km_config_parse_file(path, &cfg, err, sizeof err);
    ok(rc == KM_OK && cfg && cfg->n_keys == 4, "parse_file: good file");
    km_config_free(cfg);

    static const char broken[] = "{\"pools\": [\n  {\"name\": \"p\",,}\n]}\n";
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, broken, strlen(broken)) < 0)
        bail_out("write %s: %s", path, strerror(errno));
    close(fd);
    rc = km_config_parse_file(path, &cfg, err, sizeof err);
    char want[160];
    snprintf(want, sizeof want, "%s:2:", path);
    ok(rc == KM_ECONFIG && strncmp(err, want, strlen(want)) == 0,
       "parse_file: syntax error names path:line:col");
    diag("message: %s", err);

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "{\"pools\": []}", 13) < 0)
        bail_out("write %s: %s", path, strerror(errno));
    close(fd);
    rc = km_config_parse_file(path, &cfg, err, sizeof err);
    snprintf(want, sizeof want, "%s: pools: no pools", path);
    ok(rc == KM_ECONFIG && strcmp(err, want) == 0,
       "parse_file: field error prefixed with the path");
    unlink(path);

    rc = km_config_parse_file(path, &cfg, err, sizeof err);
    snprintf(want, sizeof want, "%s: %s", path, strerror(ENOENT));
    ok(rc == KM_ESYS && strcmp(err, want) == 0 && cfg == NULL,
       "parse_file: missing file is KM_ESYS with strerror");
    diag("message: %s", err);
    rc = km_config_parse_file(dir, &cfg, err, sizeof err);
    ok(rc == KM_ESYS && strstr(err, strerror(EISDIR)), "parse_file: a directory");
    rmdir(dir);
    rc = km_config_parse_file("/dev/null", &cfg, err, sizeof err);
    ok(rc == KM_ECONFIG && strncmp(err, "/dev/null:1:0:", 14) == 0,
       "parse_file: empty input");
}

/* ------------------------------------------------------------ new fields */

static km_config *good(const char *json, const char *name)
{
    km_config *cfg;
    int rc = parse(json, &cfg);
    if (!is_int(rc, KM_OK, "%s parses", name))
        diag("message: %s", err);
    return rc == KM_OK ? cfg : NULL;
}

static void test_strategies(void)
{
    static const struct {
        const char *name;
        int id;
    } st[] = {{"round_robin", KM_STRATEGY_ROUND_ROBIN},
              {"least_busy", KM_STRATEGY_LEAST_BUSY},
              {"weighted", KM_STRATEGY_WEIGHTED},
              {"latency", KM_STRATEGY_LATENCY},
              {"cost", KM_STRATEGY_COST},
              {"reliability", KM_STRATEGY_RELIABILITY},
              {"fill_first", KM_STRATEGY_FILL_FIRST}};
    char b[128];
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
        km_config *cfg;
        snprintf(b, sizeof b, "\"strategy\": \"%s\"", st[i].name);
        int rc = parse(one_key("", b), &cfg);
        ok(rc == KM_OK && cfg->pools[0].strategy == st[i].id,
           "strategy \"%s\" -> %d", st[i].name, st[i].id);
        if (rc == KM_OK)
            km_config_free(cfg);
    }
    bad(one_key("", "\"strategy\": \"default\""),
        "pools[0].strategy: must be \"round_robin\"", "strategy \"default\" refused");
    ok(strstr(err, "\"fill_first\"") != NULL, "... the message lists the new names");
    bad(one_key("", "\"strategy\": 3"), "pools[0].strategy: must be",
        "strategy not a string");
}

/* One pool "p" with `pool_extra` and a key "a"; for model tests. */
static const char *model_pool(const char *pool_extra)
{
    return one_key("", pool_extra);
}

static void test_models(void)
{
    km_config *cfg = good(
        model_pool("\"model_limits\": \"per_model\", \"models\": {"
                   "\"gpt-4o\": {\"rpm\": 500, \"tpm\": {\"limit\": 30000, "
                   "\"mode\": \"sliding\"}}, \"gpt-4o-mini\": {}, "
                   "\"models/gemini-1.5-pro\": {\"rpd\": 7}, "
                   "\"ft:gpt-4o-mini:org:x_1\": {}}"),
        "per_model pool");
    if (cfg) {
        const km__pool_cfg *p = &cfg->pools[0];
        ok(p->model_mode == KM_MODELS_PER_MODEL && p->n_models == 4,
           "per_model: mode and 4 models");
        ok(strcmp(p->models[0].name, "gpt-4o") == 0 &&
               strcmp(p->models[1].name, "gpt-4o-mini") == 0 &&
               strcmp(p->models[2].name, "models/gemini-1.5-pro") == 0 &&
               strcmp(p->models[3].name, "ft:gpt-4o-mini:org:x_1") == 0,
           "models in file order; dots, colons and slashes in names");
        const km__limit_cfg *l = p->models[0].limits;
        ok(l[KM_WIN_RPM].limit == 500 && l[KM_WIN_RPM].burst == 500 &&
               l[KM_WIN_RPM].mode == KM_MODE_TOKEN_BUCKET,
           "model rpm 500: token bucket, burst resolved");
        ok(l[KM_WIN_TPM].limit == 30000 && l[KM_WIN_TPM].burst == 3000 &&
               l[KM_WIN_TPM].mode == KM_MODE_SLIDING,
           "model tpm sliding: burst resolved to limit/10");
        ok(p->models[1].limits[KM_WIN_RPM].limit == 0 &&
               p->models[1].limits[KM_WIN_TPM].limit == 0,
           "model {} has no limits of its own");
        is_u64(p->models[2].limits[KM_WIN_RPD].limit, 7, "model rpd");
        is_u64(cfg->keys[0].limits[KM_WIN_RPM].limit, 0,
               "model limits are not key limits");
        is_int(cfg->cap_models, KM__DEF_CAP_MODELS, "capacity.models default");
        km_config_free(cfg);
    }
    cfg = good(model_pool("\"models\": {\"gpt-4o\": {}, \"o1\": {}}"),
               "global pool with a model list");
    if (cfg) {
        ok(cfg->pools[0].model_mode == KM_MODELS_GLOBAL &&
               cfg->pools[0].n_models == 2,
           "model_limits defaults to global; names kept");
        km_config_free(cfg);
    }
    cfg = good(model_pool("\"model_limits\": \"global\""), "explicit global, no models");
    if (cfg) {
        ok(cfg->pools[0].n_models == 0 && cfg->pools[0].models == NULL,
           "no models: none allocated");
        km_config_free(cfg);
    }

    bad(model_pool("\"models\": {\"gpt-4o\": {\"rpm\": 500}}"),
        "pools[0].models.gpt-4o: limits need \"model_limits\": \"per_model\"",
        "global pool with a model limit refused");
    bad(model_pool("\"model_limits\": \"global\", \"models\": {\"a\": {}, "
                   "\"b\": {\"tpm\": 5}}"),
        "pools[0].models.b: limits need \"model_limits\": \"per_model\"",
        "explicit global: the model with a limit is named");
    bad(model_pool("\"model_limits\": \"per_model\""),
        "pools[0].models: \"model_limits\": \"per_model\" needs at least one model",
        "per_model without models");
    bad(model_pool("\"model_limits\": \"per_model\", \"models\": {}"),
        "pools[0].models: \"model_limits\": \"per_model\" needs at least one model",
        "per_model with an empty models object");
    bad(model_pool("\"model_limits\": \"per_key\""),
        "pools[0].model_limits: must be \"global\" or \"per_model\"",
        "unknown model_limits");
    bad(model_pool("\"model_limits\": true"), "pools[0].model_limits: must be",
        "model_limits not a string");
    bad(model_pool("\"models\": [\"gpt-4o\"]"), "pools[0].models: must be an object",
        "models as an array refused");
    bad(model_pool("\"models\": {\"gpt-4o\": 500}"),
        "pools[0].models.gpt-4o: must be an object", "model not an object");
    bad(model_pool("\"models\": {\"gpt 4o\": {}}"),
        "pools[0].models.gpt 4o: model name may hold only", "model name with a space");
    bad(model_pool("\"models\": {\"gpt@4o\": {}}"),
        "pools[0].models.gpt@4o: model name may hold only", "model name with @");
    bad(model_pool("\"models\": {\"\": {}}"),
        "pools[0].models: a model name must not be empty", "empty model name");
    bad(model_pool("\"models\": {\"m234567890123456789012345678901234567890"
                   "123456789012345678901234\": {}}"),
        "longer than 63 bytes", "model name of 64 bytes");
    cfg = good(model_pool("\"models\": {\"m23456789012345678901234567890123456789"
                          "012345678901234567890123\": {}}"),
               "model name of 63 bytes");
    km_config_free(cfg);
    bad(model_pool("\"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpz\": 1}}"),
        "pools[0].models.m.rpz: unknown field", "unknown window in a model");
    bad(model_pool("\"models\": {\"m\": {\"colour\": 1}}"),
        "pools[0].models.m.colour: unknown field",
        "unknown field in a global model is an unknown field");
    bad(model_pool("\"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpm\": 0}}"),
        "pools[0].models.m.rpm: must be a positive integer", "model limit 0");
    bad(model_pool("\"model_limits\": \"per_model\", \"models\": {\"m\": {\"tpm\": "
                   "{\"limit\": 10, \"mode\": \"sliding\", \"burst\": 11}}}"),
        "pools[0].models.m.tpm.burst: must not exceed limit",
        "model sliding burst > limit");
    bad(model_pool("\"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpd\": "
                   "2000000000000}}"),
        "pools[0].models.m.rpd: cannot be realised", "model limit too large");
}

/* A key's own limits of its pool's models (issue 18, item 3). */
static void test_key_models(void)
{
    static const char pm[] = "\"model_limits\": \"per_model\", \"models\": "
                             "{\"gpt-4o\": {\"rpm\": 500, \"tpm\": 30000}, \"o1\": {}}";
    km_config *cfg = good(one_key("\"models\": {\"gpt-4o\": {\"rpm\": 10000, \"rpd\": "
                                  "{\"limit\": 90, \"mode\": \"sliding\"}}, \"o1\": {\"tpm\": 7}}",
                                  pm),
                          "key models: a key's own limits of two models");
    if (cfg) {
        const km__key_cfg *k = &cfg->keys[0];
        ok(k->n_own == 2 && k->own[0].model == 0 && k->own[1].model == 1,
           "key models: two entries, by the pool's model index");
        const km__limit_cfg *l = k->own[0].limits;
        ok(k->own[0].own_set == ((1u << KM_WIN_RPM) | (1u << KM_WIN_RPD)) &&
               l[KM_WIN_RPM].limit == 10000 && l[KM_WIN_RPD].limit == 90 &&
               l[KM_WIN_RPD].mode == KM_MODE_SLIDING,
           "key models: the windows the key names are its own");
        ok(l[KM_WIN_TPM].limit == 30000 && l[KM_WIN_TPH].limit == 0,
           "key models: a window it does not name is the pool model's (tpm 30000, no tph)");
        ok(k->own[1].own_set == 1u << KM_WIN_TPM && k->own[1].limits[KM_WIN_TPM].limit == 7,
           "key models: own limits of a model without pool limits");
        ok(k->limits[KM_WIN_RPM].limit == 0, "key models: not the key's own limits");
        km_config_free(cfg);
    }
    bad(one_key("\"models\": {\"gpt-5\": {\"rpm\": 5}}", pm),
        "pools[0].keys[0].models.gpt-5: not a model of this pool", "key models: unknown model");
    bad(one_key("\"models\": {\"gpt-4o\": {\"rpm\": 5}}", "\"models\": {\"gpt-4o\": {}}"),
        "pools[0].keys[0].models: a key's own model limits need its pool's \"model_limits\": "
        "\"per_model\"", "key models: a global pool refused");
    bad(one_key("\"models\": {\"gpt-4o\": {\"rpm\": 5}}", ""),
        "pools[0].keys[0].models: a key's own model limits need", "key models: a pool without models");
    bad(one_key("\"models\": {\"gpt-4o\": {\"rpm\": 0}}", pm),
        "pools[0].keys[0].models.gpt-4o.rpm: must be a positive integer", "key models: limit 0");
    bad(one_key("\"models\": {\"gpt-4o\": {\"rpm\": -3}}", pm),
        "pools[0].keys[0].models.gpt-4o.rpm: must be a positive integer", "key models: negative");
    bad(one_key("\"models\": {\"gpt-4o\": {\"tpm\": {\"limit\": 10, \"mode\": \"sliding\", "
                "\"burst\": 11}}}", pm),
        "pools[0].keys[0].models.gpt-4o.tpm.burst: must not exceed limit", "key models: burst");
    bad(one_key("\"models\": {\"gpt-4o\": {\"rpz\": 1}}", pm),
        "pools[0].keys[0].models.gpt-4o.rpz: unknown field", "key models: unknown window");
    bad(one_key("\"models\": {\"gpt-4o\": {}}", pm),
        "pools[0].keys[0].models.gpt-4o: names no window", "key models: empty limits");
    bad(one_key("\"models\": {\"gpt-4o\": 5}", pm),
        "pools[0].keys[0].models.gpt-4o: must be an object", "key models: not an object");
    bad(one_key("\"models\": [\"gpt-4o\"]", pm),
        "pools[0].keys[0].models: must be an object", "key models: an array");
}

/* A pool with `n` models (m0..), after `capacity`. */
static char *n_models(unsigned n, const char *capacity)
{
    size_t cap = 256 + (size_t)n * 16;
    char *b = malloc(cap);
    size_t off = (size_t)snprintf(b, cap, "{%s%s\"pools\": [{\"name\": \"p\", "
                                  "\"models\": {", capacity,
                                  capacity[0] ? ", " : "");
    for (unsigned i = 0; i < n; i++)
        off += (size_t)snprintf(b + off, cap - off, "%s\"m%u\": {}",
                                i ? ", " : "", i);
    snprintf(b + off, cap - off,
             "}, \"keys\": [{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}");
    return b;
}

static void test_capacity_models(void)
{
    km_config *cfg;
    char *j = n_models(10, "");
    int rc = parse(j, &cfg);
    free(j);
    ok(rc == KM_OK && cfg->cap_models == 10,
       "capacity.models defaults to max(8, models): 10 models");
    if (rc == KM_OK)
        km_config_free(cfg);
    j = n_models(1, "\"capacity\": {\"models\": 20}");
    rc = parse(j, &cfg);
    free(j);
    ok(rc == KM_OK && cfg->cap_models == 20, "capacity.models as given");
    if (rc == KM_OK)
        km_config_free(cfg);
    j = n_models(64, "");
    rc = parse(j, &cfg);
    free(j);
    ok(rc == KM_OK && cfg->cap_models == 64 && cfg->pools[0].n_models == 64,
       "64 models accepted");
    if (rc == KM_OK)
        km_config_free(cfg);
    j = n_models(3, "\"capacity\": {\"models\": 2}");
    bad(j, "pools[0].models: more models (3) than capacity.models (2)",
        "explicit capacity.models too small");
    free(j);
    j = n_models(65, "");
    bad(j, "pools[0].models: more models (65) than the maximum (64)",
        "65 models refused");
    free(j);
    bad("{\"capacity\": {\"models\": 0}, \"pools\": []}",
        "capacity.models: must be an integer from 1 to 64", "capacity.models 0");
    bad("{\"capacity\": {\"models\": 65}, \"pools\": []}",
        "capacity.models: must be an integer from 1 to 64", "capacity.models 65");
}

static void test_price(void)
{
    km_config *cfg = good(
        "{\"pools\": [{\"name\": \"p\", \"price\": {\"input_per_1k\": 0.0025, "
        "\"output_per_1k\": 0.01}, \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"sk-x1\"},"
        "{\"id\": \"b\", \"secret\": \"sk-x2\", \"price\": {\"output_per_1k\": 0.02}},"
        "{\"id\": \"c\", \"secret\": \"sk-x3\", \"price\": {\"input_per_1k\": 1, "
        "\"output_per_1k\": 0}}]},"
        "{\"name\": \"q\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-x4\", "
        "\"price\": {\"input_per_1k\": 1.2345674, \"output_per_1k\": 1.2345676}},"
        "{\"id\": \"b\", \"secret\": \"sk-x5\", \"price\": {\"input_per_1k\": "
        "0.0000014, \"output_per_1k\": 0.0000016}},"
        "{\"id\": \"c\", \"secret\": \"sk-x6\"}]}]}",
        "prices");
    if (cfg) {
        const km__key_cfg *k = cfg->keys;
        ok(k[0].price_in == 2500 && k[0].price_out == 10000,
           "pool price is the keys' default: 0.0025 -> 2500, 0.01 -> 10000");
        ok(k[1].price_in == 2500 && k[1].price_out == 20000,
           "key price overrides the pool's field by field");
        ok(k[2].price_in == 1000000 && k[2].price_out == 0,
           "integer dollars; an explicit 0 overrides");
        ok(k[3].price_in == 1234567 && k[3].price_out == 1234568,
           "rounded to the nearest micro-dollar");
        ok(k[4].price_in == 1 && k[4].price_out == 2, "tiny prices round");
        ok(k[5].price_in == 0 && k[5].price_out == 0, "no price: 0");
        km_config_free(cfg);
    }
    bad(one_key("", "\"price\": {\"input_per_1k\": -0.5}"),
        "pools[0].price.input_per_1k: must be a number of US dollars from 0",
        "negative price");
    bad(one_key("\"price\": {\"output_per_1k\": \"0.01\"}", ""),
        "pools[0].keys[0].price.output_per_1k: must be a number",
        "price as a string");
    bad(one_key("\"price\": {\"output_per_1k\": 10000000}", ""),
        "pools[0].keys[0].price.output_per_1k: must be a number of US dollars from 0 to 1000000",
        "price above the maximum");
    bad(one_key("\"price\": {\"input\": 1}", ""),
        "pools[0].keys[0].price.input: unknown field", "unknown price field");
    bad(one_key("", "\"price\": 0.01"), "pools[0].price: must be an object",
        "price not an object");
}

static void test_budget(void)
{
    km_config *cfg = good(
        "{\"pools\": [{\"name\": \"p\", \"budget\": {\"usd\": 100.0}, \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"sk-x1\"},"
        "{\"id\": \"b\", \"secret\": \"sk-x2\", \"budget\": {\"usd\": 5.5, "
        "\"hard\": false}},"
        "{\"id\": \"c\", \"secret\": \"sk-x3\", \"budget\": {\"usd\": 0.0000012, "
        "\"hard\": true}}]}, {\"name\": \"q\", \"budget\": {\"usd\": 3, \"hard\": "
        "false}, \"keys\": [{\"id\": \"a\", \"secret\": \"sk-x4\"}]}]}",
        "budgets");
    if (cfg) {
        ok(cfg->pools[0].budget_microusd == 100000000 && cfg->pools[0].budget_hard == 1,
           "pool budget 100.0 USD, hard by default");
        ok(cfg->pools[1].budget_microusd == 3000000 && cfg->pools[1].budget_hard == 0,
           "pool budget 3 (integer), soft");
        is_u64(cfg->keys[0].budget_microusd, 0, "pool budget not copied to keys");
        ok(cfg->keys[1].budget_microusd == 5500000 && cfg->keys[1].budget_hard == 0,
           "key budget 5.5, soft");
        ok(cfg->keys[2].budget_microusd == 1 && cfg->keys[2].budget_hard == 1,
           "key budget rounds to 1 micro-dollar");
        km_config_free(cfg);
    }
    bad(one_key("", "\"budget\": {\"hard\": true}"), "pools[0].budget.usd: missing",
        "budget without usd");
    bad(one_key("", "\"budget\": {\"usd\": 0}"),
        "pools[0].budget.usd: must be at least 0.000001", "budget of 0");
    bad(one_key("\"budget\": {\"usd\": 0.0000004}", ""),
        "pools[0].keys[0].budget.usd: must be at least 0.000001",
        "budget rounding to 0");
    bad(one_key("\"budget\": {\"usd\": -1}", ""),
        "pools[0].keys[0].budget.usd: must be a number", "negative budget");
    bad(one_key("\"budget\": {\"usd\": 1, \"hard\": \"yes\"}", ""),
        "pools[0].keys[0].budget.hard: must be true or false", "hard not a boolean");
    bad(one_key("\"budget\": {\"usd\": 1, \"soft\": true}", ""),
        "pools[0].keys[0].budget.soft: unknown field", "unknown budget field");
    bad(one_key("", "\"budget\": 100"), "pools[0].budget: must be an object",
        "budget not an object");
}

static void test_meta(void)
{
    km_config *cfg = good(
        one_key("\"meta\": {\"org\": \"org-1\", \"base_url\": \"https://x/v1\", "
                "\"A-b_9\": \"q\\\"uote \\\\ back\", \"e\": \"\"}", ""),
        "key meta");
    if (cfg) {
        is_str(cfg->keys[0].meta,
               "{\"A-b_9\":\"q\\\"uote \\\\ back\",\"base_url\":\"https://x/v1\","
               "\"e\":\"\",\"org\":\"org-1\"}",
               "meta serialised compactly with sorted keys");
        km_config_free(cfg);
    }
    cfg = good(one_key("\"meta\": {}", ""), "empty meta");
    if (cfg) {
        is_str(cfg->keys[0].meta, "", "empty meta is \"\"");
        km_config_free(cfg);
    }
    cfg = good(one_key("", ""), "no meta");
    if (cfg) {
        is_str(cfg->keys[0].meta, "", "no meta is \"\"");
        km_config_free(cfg);
    }

    char v[300], b[512];
    memset(v, 'v', 247);
    v[247] = '\0';
    snprintf(b, sizeof b, "\"meta\": {\"x\": \"%s\"}", v);
    cfg = good(one_key(b, ""), "meta of exactly 255 bytes");
    if (cfg) {
        is_int(strlen(cfg->keys[0].meta), KM_META_MAX, "... all 255 kept");
        km_config_free(cfg);
    }
    memset(v, 'v', 248);
    v[248] = '\0';
    snprintf(b, sizeof b, "\"meta\": {\"x\": \"%s\"}", v);
    bad(one_key(b, ""), "pools[0].keys[0].meta: 256 bytes as JSON, more than 255",
        "meta of 256 bytes refused");

    bad(one_key("\"meta\": \"org-1\"", ""), "pools[0].keys[0].meta: must be an object",
        "meta not an object");
    bad(one_key("\"meta\": {\"org\": 1}", ""), "pools[0].keys[0].meta.org: must be a string",
        "meta value not a string");
    bad(one_key("\"meta\": {\"org\": \"a\\nb\"}", ""),
        "pools[0].keys[0].meta.org: must be printable ASCII", "meta value with a newline");
    bad(one_key("\"meta\": {\"org\": \"caf\\u00e9\"}", ""),
        "pools[0].keys[0].meta.org: must be printable ASCII", "meta value not ASCII");
    bad(one_key("\"meta\": {\"a.b\": \"x\"}", ""),
        "pools[0].keys[0].meta: name \"a.b\" is not 1..32 bytes", "meta name with a dot");
    bad(one_key("\"meta\": {\"\": \"x\"}", ""),
        "pools[0].keys[0].meta: name \"\" is not 1..32 bytes", "empty meta name");
    bad(one_key("\"meta\": {\"n23456789012345678901234567890123\": \"x\"}", ""),
        "is not 1..32 bytes", "meta name of 33 bytes");
    cfg = good(one_key("\"meta\": {\"n2345678901234567890123456789012\": \"x\"}", ""),
               "meta name of 32 bytes");
    km_config_free(cfg);
    bad(one_key("", "\"meta\": {}"), "pools[0].meta: unknown field",
        "meta is a key field, not a pool field");
}

/* ------------------------------------------------ one secret, one key */

static void test_secret_dup(void)
{
    km_config *cfg;

    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"" SECRET "\"},"
        "{\"id\": \"b\", \"secret\": \"" SECRET_B "\"},"
        "{\"id\": \"c\", \"secret\": \"" SECRET "\"}]}]}",
        "pools[0].keys[2]: key \"c\" has the same secret as key \"a\" "
        "(pools[0].keys[0]); list each API key once",
        "one secret under two ids in one pool: refused, both ids named");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"" SECRET "\"}]},"
        "{\"name\": \"q\", \"keys\": [{\"id\": \"x\", \"secret\": \"" SECRET_B "\"},"
        "{\"id\": \"y\", \"secret\": \"" SECRET "\"}]}]}",
        "pools[1].keys[1]: key \"y\" has the same secret as key \"a\" "
        "(pools[0].keys[0])",
        "one secret in two pools: refused");
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"" SECRET "\"}]},"
        "{\"name\": \"q\", \"keys\": [{\"id\": \"a\", \"secret\": \"" SECRET "\"}]}]}",
        "pools[1].keys[0]: key \"a\" has the same secret as key \"a\" "
        "(pools[0].keys[0])",
        "one secret under one id in two pools: refused too");
    /* Three copies: the first repeat is reported, against the first. */
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"a\", \"secret\": \"" SECRET_B "\"},"
        "{\"id\": \"b\", \"secret\": \"" SECRET "\"},"
        "{\"id\": \"c\", \"secret\": \"" SECRET "\"},"
        "{\"id\": \"d\", \"secret\": \"" SECRET "\"}]}]}",
        "pools[0].keys[2]: key \"c\" has the same secret as key \"b\" "
        "(pools[0].keys[1])",
        "three copies: the earliest repeat, against the first");
    setenv("KMT_CONFIG_DUP", SECRET, 1);
    bad("{\"pools\": [{\"name\": \"p\", \"keys\": ["
        "{\"id\": \"lit\", \"secret\": \"" SECRET "\"},"
        "{\"id\": \"env\", \"secret_env\": \"KMT_CONFIG_DUP\"}]}]}",
        "key \"env\" has the same secret as key \"lit\"",
        "secret_env resolving to a listed secret: refused");
    unsetenv("KMT_CONFIG_DUP");
    /* A prefix, or one byte apart, is another secret. */
    cfg = good("{\"pools\": [{\"name\": \"p\", \"keys\": ["
               "{\"id\": \"a\", \"secret\": \"" SECRET "\"},"
               "{\"id\": \"b\", \"secret\": \"" SECRET "2\"},"
               "{\"id\": \"c\", \"secret\": \"sk-test-aaaa1112\"}]}]}",
               "secrets a prefix or one byte apart");
    km_config_free(cfg);

    ok(km__secret_eq(SECRET, strlen(SECRET), SECRET, strlen(SECRET)) == 1,
       "secret_eq: equal");
    ok(km__secret_eq(SECRET, strlen(SECRET), "sk-test-aaaa1112", 16) == 0,
       "secret_eq: last byte differs");
    ok(km__secret_eq(SECRET, strlen(SECRET), SECRET, strlen(SECRET) - 1) == 0,
       "secret_eq: a prefix is not equal");
    ok(km__secret_eq("x", 1, "x\0", 2) == 0, "secret_eq: a trailing NUL counts");

    /* Many keys, the repeat far from its original: found through the
     * hashes, and the lowest repeating index is reported. */
    enum { NK = 3000 };
    km__key_cfg *ks = calloc(NK, sizeof *ks);
    uint32_t a = 0, b = 0;
    for (uint32_t i = 0; i < NK; i++)
        ks[i].secret_len = (uint32_t)snprintf(ks[i].secret, sizeof ks[i].secret,
                                              "sk-many-%u", i);
    is_int(km__config_secret_dup(ks, NK, &a, &b), 0, "secret_dup: %d distinct keys", NK);
    memcpy(ks[2999].secret, ks[17].secret, sizeof ks[17].secret);
    ks[2999].secret_len = ks[17].secret_len;
    memcpy(ks[1500].secret, ks[2].secret, sizeof ks[2].secret);
    ks[1500].secret_len = ks[2].secret_len;
    int rc = km__config_secret_dup(ks, NK, &a, &b);
    ok(rc == 1 && a == 2 && b == 1500, "secret_dup: keys 2 and 1500 of %d (got %d: %u, %u)",
       NK, rc, a, b);
    is_int(km__config_secret_dup(ks, 1, &a, &b), 0, "secret_dup: one key");
    free(ks);
}

/* ------------------------------------------------------------- presets */

/* A pool "p" of one key, with `pool_extra` fields. */
static const char *preset_pool(const char *pool_extra, const char *key_extra)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"pools\": [{\"name\": \"p\", %s, \"keys\": [{\"id\": \"a\", "
             "\"secret\": \"" SECRET "\"%s%s}, {\"id\": \"b\", \"secret\": \""
             SECRET_B "\"}]}]}",
             pool_extra, key_extra[0] ? ", " : "", key_extra);
    return buf;
}

static const km__model_cfg *model_named(const km__pool_cfg *p, const char *name)
{
    for (uint32_t i = 0; i < p->n_models; i++)
        if (strcmp(p->models[i].name, name) == 0)
            return &p->models[i];
    return NULL;
}

static void write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        bail_out("write %s: %s", path, strerror(errno));
    close(fd);
}

static void test_presets(void)
{
    static const char *const providers[] = {"groq", "cerebras", "openai",
                                            "anthropic", "openrouter", "mistral"};
    char *out = NULL;
    km_config *cfg;
    int rc;

    unsetenv("KEYMESH_PRESETS");
    /* The built-in data: every provider there, every tier citing where and
     * when its figures were read (the loader refuses anything else). */
    rc = km_presets_json(NULL, &out, err, sizeof err);
    json_error_t jerr;
    json_t *doc = rc == KM_OK ? json_loads(out, 0, &jerr) : NULL;
    ok(rc == KM_OK && doc, "presets: built-in presets load (%s)", err);
    is_str(json_string_value(json_object_get(doc, "origin")),
           "presets/presets.json (built in)", "presets: origin says built in");
    is_int(json_integer_value(json_object_get(doc, "presets_schema")), 1,
           "presets: presets_schema 1");
    int all = 1, cited = 1;
    for (size_t i = 0; i < sizeof providers / sizeof providers[0]; i++) {
        json_t *pv = json_object_get(json_object_get(doc, "providers"), providers[i]);
        const char *tn;
        json_t *t;
        all &= pv != NULL;
        json_object_foreach(json_object_get(pv, "tiers"), tn, t) {
            json_t *s0 = json_array_get(json_object_get(t, "sources"), 0);
            const char *url = json_string_value(json_object_get(s0, "url"));
            const char *rd = json_string_value(json_object_get(s0, "read"));
            cited &= url && strncmp(url, "https://", 8) == 0 && rd && strlen(rd) == 10;
        }
    }
    ok(all, "presets: groq, cerebras, openai, anthropic, openrouter and mistral are there");
    ok(cited, "presets: every tier cites an https source and the date it was read");
    json_decref(doc);
    free(out);
    out = NULL;

    rc = km_presets_json("groq", &out, err, sizeof err);
    doc = rc == KM_OK ? json_loads(out, 0, &jerr) : NULL;
    ok(doc && json_object_size(json_object_get(doc, "providers")) == 1 &&
           json_object_get(json_object_get(doc, "providers"), "groq"),
       "presets: km_presets_json(\"groq\") gives groq alone");
    json_decref(doc);
    free(out);
    out = (char *)&out;
    rc = km_presets_json("nope", &out, err, sizeof err);
    ok(rc == KM_EINVAL && out == NULL &&
           strstr(err, "unknown preset \"nope\" (known: groq, cerebras, openai, "
                       "anthropic, openrouter, mistral)"),
       "presets: unknown provider names the known ones (%s)", err);
    is_int(km_presets_json(NULL, NULL, err, sizeof err), KM_EINVAL,
           "presets: out NULL");

    /* A preset with models: per_model, the preset's figures, capacity.models
     * grown to fit. */
    cfg = good(preset_pool("\"preset\": \"groq\"", ""), "preset groq (one tier, none named)");
    if (cfg) {
        const km__pool_cfg *p = &cfg->pools[0];
        const km__model_cfg *m = model_named(p, "llama-3.3-70b-versatile");
        ok(p->model_mode == KM_MODELS_PER_MODEL && p->n_models == 20 &&
               cfg->cap_models == 20,
           "preset groq: per_model, its 20 models, capacity.models 20 (%u, %u)",
           p->n_models, cfg->cap_models);
        ok(m && m->limits[KM_WIN_RPM].limit == 30 && m->limits[KM_WIN_RPD].limit == 1000 &&
               m->limits[KM_WIN_TPM].limit == 12000 && m->limits[KM_WIN_TPD].limit == 100000 &&
               m->limits[KM_WIN_RPM].mode == KM_MODE_TOKEN_BUCKET,
           "preset groq: llama-3.3-70b-versatile 30 rpm, 1000 rpd, 12000 tpm, 100000 tpd");
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 0,
           "preset groq: no key-wide limit (Groq's are per model)");
        km_config_free(cfg);
    }
    /* The pool's own models override window by window; null removes one;
     * a model of its own is added after the preset's. */
    cfg = good(preset_pool("\"preset\": \"groq\", \"tier\": \"free\", \"models\": "
                           "{\"llama-3.3-70b-versatile\": {\"rpm\": 10, \"tpd\": null}, "
                           "\"my-model\": {\"rpm\": 5}}", ""),
               "preset groq with the pool's own models");
    if (cfg) {
        const km__pool_cfg *p = &cfg->pools[0];
        const km__model_cfg *m = model_named(p, "llama-3.3-70b-versatile");
        ok(m && m->limits[KM_WIN_RPM].limit == 10 && m->limits[KM_WIN_TPM].limit == 12000 &&
               m->limits[KM_WIN_TPD].limit == 0 && m->limits[KM_WIN_RPD].limit == 1000,
           "preset override: rpm 10 (pool's), tpm 12000 (preset's), tpd removed by null");
        ok(p->n_models == 21 && strcmp(p->models[20].name, "my-model") == 0 &&
               p->models[20].limits[KM_WIN_RPM].limit == 5,
           "preset override: the pool's own model comes last");
        km_config_free(cfg);
    }
    /* Pool-level figures: the pool's limits, then each key's, override. */
    cfg = good(preset_pool("\"preset\": \"anthropic\", \"tier\": \"tier_1\"", ""),
               "preset anthropic tier_1");
    if (cfg) {
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 50 &&
               cfg->keys[1].limits[KM_WIN_RPM].limit == 50 && cfg->pools[0].n_models == 0 &&
               cfg->pools[0].model_mode == KM_MODELS_GLOBAL,
           "preset anthropic: rpm 50 on each key, no model list");
        km_config_free(cfg);
    }
    cfg = good(preset_pool("\"preset\": \"anthropic\", \"tier\": \"tier_1\", "
                           "\"limits\": {\"rpm\": 40, \"tpm\": 9000}",
                           "\"limits\": {\"rpm\": 5}"),
               "preset anthropic with pool and key limits");
    if (cfg) {
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 5 &&
               cfg->keys[1].limits[KM_WIN_RPM].limit == 40 &&
               cfg->keys[1].limits[KM_WIN_TPM].limit == 9000,
           "preset anthropic: pool rpm 40 over the preset's 50, key a's own 5");
        km_config_free(cfg);
    }
    /* Anthropic's tiers 2 to 4: rpm on every key, the figure the file gives. */
    static const struct {
        const char *tier;
        uint64_t rpm;
    } anth[] = {{"tier_2", 1000}, {"tier_3", 2000}, {"tier_4", 4000}};
    for (size_t i = 0; i < sizeof anth / sizeof anth[0]; i++) {
        char sel[96];
        snprintf(sel, sizeof sel, "\"preset\": \"anthropic\", \"tier\": \"%s\"", anth[i].tier);
        cfg = good(preset_pool(sel, ""), "preset anthropic tier_2..4");
        if (cfg) {
            ok(cfg->keys[0].limits[KM_WIN_RPM].limit == anth[i].rpm &&
                   cfg->keys[1].limits[KM_WIN_RPM].limit == anth[i].rpm &&
                   cfg->keys[0].limits[KM_WIN_TPM].limit == 0 &&
                   cfg->pools[0].model_mode == KM_MODELS_GLOBAL,
               "preset anthropic %s: rpm %llu on each key, no token window (%llu)",
               anth[i].tier, (unsigned long long)anth[i].rpm,
               (unsigned long long)cfg->keys[0].limits[KM_WIN_RPM].limit);
            km_config_free(cfg);
        }
    }
    /* Mistral's one tier (none named): 1 request per second as rpm 60 with
     * a burst of 1, on every key; no model list. */
    cfg = good(preset_pool("\"preset\": \"mistral\"", ""), "preset mistral (one tier, none named)");
    if (cfg) {
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 60 &&
               cfg->keys[0].limits[KM_WIN_RPM].burst == 1 &&
               cfg->keys[0].limits[KM_WIN_RPM].mode == KM_MODE_TOKEN_BUCKET &&
               cfg->keys[1].limits[KM_WIN_RPM].limit == 60 &&
               cfg->keys[0].limits[KM_WIN_TPM].limit == 0 && cfg->pools[0].n_models == 0,
           "preset mistral: rpm 60 burst 1 (1 request/s) on each key, no tpm, no models "
           "(%llu, burst %llu)",
           (unsigned long long)cfg->keys[0].limits[KM_WIN_RPM].limit,
           (unsigned long long)cfg->keys[0].limits[KM_WIN_RPM].burst);
        km_config_free(cfg);
    }
    bad(preset_pool("\"preset\": \"anthropic\"", ""),
        "pools[0].tier: missing: preset \"anthropic\" has several tiers (known: tier_1, "
        "tier_2, tier_3, tier_4)", "anthropic: several tiers now, none named");
    bad(preset_pool("\"preset\": \"anthropic\", \"tier\": \"tier_5\"", ""),
        "pools[0].tier: no such tier of preset \"anthropic\" (known: tier_1, tier_2, "
        "tier_3, tier_4)", "anthropic: its known tiers named");
    cfg = good(preset_pool("\"preset\": \"openrouter\", \"tier\": \"credits_10\"", ""),
               "preset openrouter credits_10");
    if (cfg) {
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 20 &&
               cfg->keys[0].limits[KM_WIN_RPD].limit == 1000,
           "preset openrouter credits_10: 20 rpm, 1000 rpd");
        km_config_free(cfg);
    }
    cfg = good(preset_pool("\"preset\": \"openai\", \"tier\": \"tier_2\"", ""),
               "preset openai tier_2");
    if (cfg) {
        const km__model_cfg *m = model_named(&cfg->pools[0], "gpt-4o-mini");
        ok(m && m->limits[KM_WIN_RPM].limit == 5000 && m->limits[KM_WIN_TPM].limit == 2000000,
           "preset openai tier_2: gpt-4o-mini 5000 rpm, 2000000 tpm");
        km_config_free(cfg);
    }
    /* OpenAI's gpt-4o and gpt-6-astra at every tier, gpt-4o-mini's tiers 4
     * and 5: the figures the file gives. */
    static const struct {
        const char *tier, *model;
        uint64_t rpm, tpm;
    } oai[] = {{"tier_1", "gpt-4o", 500, 30000},           {"tier_3", "gpt-6-astra", 5000, 2000000},
               {"tier_4", "gpt-4o-mini", 10000, 10000000}, {"tier_5", "gpt-4o-mini", 30000, 150000000},
               {"tier_5", "gpt-6-astra", 15000, 40000000}};
    for (size_t i = 0; i < sizeof oai / sizeof oai[0]; i++) {
        char sel[96];
        snprintf(sel, sizeof sel, "\"preset\": \"openai\", \"tier\": \"%s\"", oai[i].tier);
        cfg = good(preset_pool(sel, ""), "preset openai, a tier with the new models");
        if (cfg) {
            const km__model_cfg *m = model_named(&cfg->pools[0], oai[i].model);
            ok(m && m->limits[KM_WIN_RPM].limit == oai[i].rpm &&
                   m->limits[KM_WIN_TPM].limit == oai[i].tpm,
               "preset openai %s: %s %llu rpm, %llu tpm", oai[i].tier, oai[i].model,
               (unsigned long long)oai[i].rpm, (unsigned long long)oai[i].tpm);
            km_config_free(cfg);
        }
    }

    bad(preset_pool("\"preset\": \"nope\"", ""),
        "pools[0].preset: unknown preset (known: groq, cerebras, openai, "
        "anthropic, openrouter, mistral)", "unknown preset: the known ones named");
    bad(preset_pool("\"preset\": \"openai\", \"tier\": \"tier_9\"", ""),
        "pools[0].tier: no such tier of preset \"openai\" (known: tier_1, "
        "tier_2, tier_3, tier_4, tier_5)", "unknown tier: the known ones named");
    bad(preset_pool("\"preset\": \"openai\"", ""),
        "pools[0].tier: missing: preset \"openai\" has several tiers (known: tier_1",
        "several tiers, none named");
    bad(preset_pool("\"tier\": \"free\"", ""), "pools[0].tier: needs \"preset\"",
        "tier without preset");
    bad(preset_pool("\"preset\": 3", ""), "pools[0].preset: must be a string, one of: groq",
        "preset not a string");
    bad(preset_pool("\"preset\": \"groq\", \"model_limits\": \"global\"", ""),
        "pools[0].model_limits: \"global\" cannot hold the per-model limits of preset \"groq\"",
        "global model_limits with a per-model preset");
    bad("{\"capacity\": {\"models\": 8}, \"pools\": [{\"name\": \"p\", \"preset\": "
        "\"groq\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-x\"}]}]}",
        "pools[0].models: more models (20) than capacity.models (8)",
        "a preset's models count against capacity.models");
    bad(preset_pool("\"preset\": \"groq\", \"models\": {\"qwen/qwen3-32b\": {\"rpm\": 0}}", ""),
        "pools[0].models.qwen/qwen3-32b.rpm: must be a positive integer",
        "a bad override is named by the pool's path");

    /* KEYMESH_PRESETS: a file replaces the built-in presets. */
    char dir[] = "/tmp/kmt-presets-XXXXXX", path[128], want[256];
    if (!mkdtemp(dir))
        bail_out("mkdtemp: %s", strerror(errno));
    snprintf(path, sizeof path, "%s/presets.json", dir);
    write_text(path,
               "{\"presets_schema\": 1, \"providers\": {\"acme\": {\"name\": \"Acme\", "
               "\"tiers\": {\"gold\": {\"sources\": [{\"url\": \"https://acme.example/limits\", "
               "\"read\": \"2026-12-01\"}], \"limits\": {\"rpm\": 7}, \"models\": "
               "{\"m1\": {\"tpm\": {\"limit\": 600, \"mode\": \"sliding\"}}}}}}}}");
    setenv("KEYMESH_PRESETS", path, 1);
    cfg = good(preset_pool("\"preset\": \"acme\"", ""), "KEYMESH_PRESETS: a preset from the file");
    if (cfg) {
        const km__model_cfg *m = model_named(&cfg->pools[0], "m1");
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 7 && m &&
               m->limits[KM_WIN_TPM].limit == 600 &&
               m->limits[KM_WIN_TPM].mode == KM_MODE_SLIDING,
           "KEYMESH_PRESETS: its limits and a sliding model limit");
        km_config_free(cfg);
    }
    bad(preset_pool("\"preset\": \"groq\"", ""), "unknown preset (known: acme)",
        "KEYMESH_PRESETS replaces the built-in presets");
    out = NULL;
    rc = km_presets_json(NULL, &out, err, sizeof err);
    ok(rc == KM_OK && out && strstr(out, path) && strstr(out, "\"acme\""),
       "KEYMESH_PRESETS: km_presets_json shows the file as origin");
    free(out);

    write_text(path, "{\n  \"presets_schema\": 1,\n  \"providers\": {,}\n}\n");
    snprintf(want, sizeof want, "pools[0].preset: cannot load the presets: %s:3:", path);
    bad(preset_pool("\"preset\": \"acme\"", ""), want,
        "KEYMESH_PRESETS malformed: file, line and column");
    out = NULL;
    rc = km_presets_json(NULL, &out, err, sizeof err);
    snprintf(want, sizeof want, "%s:3:17: ", path);
    ok(rc == KM_ECONFIG && out == NULL && strncmp(err, want, strlen(want)) == 0,
       "KEYMESH_PRESETS malformed: km_presets_json names file:line:column (%s)", err);

    static const struct {
        const char *text, *want, *name;
    } badfiles[] = {
        {"{\"presets_schema\": 2, \"providers\": {}}", "presets_schema: must be 1", "schema 2"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [], \"limits\": {\"rpm\": 5}}}}}}",
         "providers.x.tiers.t.sources: must be a non-empty array", "no source"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [{\"url\": \"https://x\", \"read\": \"last week\"}], "
         "\"limits\": {\"rpm\": 5}}}}}}",
         "providers.x.tiers.t.sources[0].read: must be the date it was read, YYYY-MM-DD",
         "read not a date"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [{\"url\": \"https://x\", \"read\": \"2026-13-01\"}], "
         "\"limits\": {\"rpm\": 5}}}}}}",
         "providers.x.tiers.t.sources[0].read: must be the date it was read, YYYY-MM-DD",
         "month 13"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [{\"url\": \"https://x\", \"read\": \"2026-12-01\"}], "
         "\"models\": {\"m\": {\"rpq\": 5}}}}}}}",
         "providers.x.tiers.t.models.m.rpq: unknown field", "unknown window"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [{\"url\": \"https://x\", \"read\": \"2026-12-01\"}], "
         "\"limits\": {\"rpm\": -1}}}}}}",
         "providers.x.tiers.t.limits.rpm: must be a positive integer", "negative limit"},
        {"{\"presets_schema\": 1, \"providers\": {\"x\": {\"name\": \"X\", \"tiers\": "
         "{\"t\": {\"sources\": [{\"url\": \"https://x\", \"read\": \"2026-12-01\"}]}}}}}",
         "providers.x.tiers.t: gives neither limits nor models", "a tier of nothing"},
    };
    for (size_t i = 0; i < sizeof badfiles / sizeof badfiles[0]; i++) {
        write_text(path, badfiles[i].text);
        rc = km_presets_json(NULL, &out, err, sizeof err);
        snprintf(want, sizeof want, "%s: %s", path, badfiles[i].want);
        ok(rc == KM_ECONFIG && strncmp(err, want, strlen(want)) == 0,
           "KEYMESH_PRESETS refused: %s (%s)", badfiles[i].name, err);
    }
    unlink(path);
    rc = km_presets_json(NULL, &out, err, sizeof err);
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    ok(rc == KM_ESYS && strcmp(err, want) == 0, "KEYMESH_PRESETS missing: KM_ESYS naming it");
    rc = parse(preset_pool("\"preset\": \"acme\"", ""), &cfg);
    ok(rc == KM_ESYS && cfg == NULL && strstr(err, want),
       "KEYMESH_PRESETS missing: a config naming a preset fails with KM_ESYS (%s)", err);
    unsetenv("KEYMESH_PRESETS");
    rmdir(dir);
    cfg = good(preset_pool("\"preset\": \"cerebras\"", ""), "KEYMESH_PRESETS unset: built in again");
    if (cfg) {
        const km__model_cfg *m = model_named(&cfg->pools[0], "qwen-3-coder-480b");
        ok(m && m->limits[KM_WIN_RPH].limit == 100 && m->limits[KM_WIN_TPH].limit == 1000000,
           "preset cerebras: qwen-3-coder-480b 100 rph, 1000000 tph");
        km_config_free(cfg);
    }
}

/* ---------------------------------------------------- km_config_from_env */

#define ENV_SECRET_1 "sk-envunit-aaaa1111"
#define ENV_SECRET_3 "sk-envunit-cccc3333"

static char warnings[4096];
static int n_warnings;

static void collect(void *ctx, const char *msg)
{
    size_t len = strlen(warnings);
    (void)ctx;
    n_warnings++;
    snprintf(warnings + len, sizeof warnings - len, "%s%s", len ? " | " : "",
             msg);
}

/* Remove every KMTP* / NUM_KMTP* variable. */
static void env_clear(void)
{
    extern char **environ;
    char names[64][128];
    int n = 0;
    for (char **e = environ; *e && n < 64; e++)
        if (strncmp(*e, "KMTP", 4) == 0 || strncmp(*e, "NUM_KMTP", 8) == 0) {
            size_t len = strcspn(*e, "=");
            snprintf(names[n++], sizeof names[0], "%.*s", (int)len, *e);
        }
    for (int i = 0; i < n; i++)
        unsetenv(names[i]);
}

static int from_env(const char *providers, km_config **cfg)
{
    err[0] = warnings[0] = '\0';
    n_warnings = 0;
    *cfg = NULL;
    return km_config_from_env(providers, cfg, collect, NULL, err, sizeof err);
}

/* A failing environment: KM_ECONFIG, no config, `want` in the message, no
 * secret in it or in any warning. */
static void env_bad(const char *providers, const char *want, const char *name)
{
    km_config *cfg = (km_config *)&cfg;
    int rc = from_env(providers, &cfg);
    int good_ = rc == KM_ECONFIG && cfg == NULL && strstr(err, want) &&
                !strstr(err, "envunit") && !strstr(warnings, "envunit") &&
                !strchr(err, '\n');
    ok(good_, "env: %s", name);
    if (!good_)
        diag("rc %d (%s), message '%s', wanted '%s'", rc, km_err_name(rc), err,
             want);
    if (rc == KM_OK)
        km_config_free(cfg);
}

static void test_env(void)
{
    km_config *cfg;
    int rc;

    env_clear();
    env_bad("kmtp", "NUM_KMTP is not set", "NUM_KMTP missing");
    setenv("NUM_KMTP", "x3", 1);
    env_bad("kmtp", "NUM_KMTP: must be an integer from 1 to 65536", "NUM_KMTP not a number");
    setenv("NUM_KMTP", "0", 1);
    env_bad("kmtp", "NUM_KMTP: must be an integer from 1 to 65536", "NUM_KMTP 0");
    setenv("NUM_KMTP", "65537", 1);
    env_bad("kmtp", "NUM_KMTP: must be an integer from 1 to 65536", "NUM_KMTP 65537");
    setenv("NUM_KMTP", "2", 1);
    env_bad("kmtp", "kmtp: no key: none of KMTP_API_KEY_1..2 is set", "no usable key");
    ok(n_warnings == 2 && strstr(warnings, "KMTP_API_KEY_1 is not set; key 1 skipped"),
       "env: each gap warned (%d warnings)", n_warnings);

    setenv("NUM_KMTP", "3", 1);
    setenv("KMTP_API_KEY_1", ENV_SECRET_1, 1);
    setenv("KMTP_API_KEY_2", "", 1);
    setenv("KMTP_API_KEY_3", ENV_SECRET_3, 1);
    setenv("KMTP_ORG_1", "org-one", 1);
    setenv("KMTP_BASE_URL_3", "https://api.example/v1", 1);
    setenv("KMTP_PROJECT_2", "ignored: key 2 is skipped", 1);
    setenv("KMTP_RPM", "60", 1);
    setenv("KMTP_TPD", "1000000", 1);
    setenv("KMTP_TPM_3", "5000", 1);
    setenv("KMTP_RPM_1", "30", 1);
    setenv("KMTP_WEIGHT_3", "4", 1);
    setenv("KMTP_STRATEGY", "fill_first", 1);
    setenv("KMTP_ACCESS_TOKEN_1", "tok-envunit-secret", 1);
    setenv("KMTP_ORG_9", "org-nine", 1);
    setenv("KMTP_ORG_01", "not a key index", 1);
    setenv("KMTP_Lower_1", "not a parameter", 1);
    rc = from_env("kmtp", &cfg);
    if (!is_int(rc, KM_OK, "env: good environment parses")) {
        diag("message: %s", err);
        return;
    }
    ok(cfg->n_pools == 1 && cfg->n_keys == 2 &&
           strcmp(cfg->pools[0].name, "kmtp") == 0,
       "env: one pool named after the provider, 2 keys");
    const km__key_cfg *k1 = &cfg->keys[0], *k3 = &cfg->keys[1];
    ok(strcmp(k1->id, "kmtp-1") == 0 && strcmp(k3->id, "kmtp-3") == 0,
       "env: key ids kmtp-1, kmtp-3");
    ok(strcmp(k1->secret, ENV_SECRET_1) == 0 && strcmp(k3->secret, ENV_SECRET_3) == 0,
       "env: secrets from KMTP_API_KEY_i");
    is_str(k1->meta, "{\"org\":\"org-one\"}", "env: KMTP_ORG_1 -> meta org");
    is_str(k3->meta, "{\"base_url\":\"https://api.example/v1\"}",
           "env: KMTP_BASE_URL_3 -> meta base_url");
    ok(k1->limits[KM_WIN_RPM].limit == 30 && k3->limits[KM_WIN_RPM].limit == 60 &&
           k1->limits[KM_WIN_RPM].mode == KM_MODE_TOKEN_BUCKET,
       "env: KMTP_RPM for the pool, KMTP_RPM_1 for key 1");
    ok(k1->limits[KM_WIN_TPM].limit == 0 && k3->limits[KM_WIN_TPM].limit == 5000,
       "env: KMTP_TPM_3 only on key 3");
    ok(k1->limits[KM_WIN_TPD].limit == 1000000 && k3->limits[KM_WIN_TPD].limit == 1000000,
       "env: KMTP_TPD on every key");
    ok(k1->weight == 1 && k3->weight == 4, "env: KMTP_WEIGHT_3");
    is_int(cfg->pools[0].strategy, KM_STRATEGY_FILL_FIRST, "env: KMTP_STRATEGY");
    ok(cfg->cap_keys == KM__DEF_CAP_KEYS && cfg->cap_pools == KM__DEF_CAP_POOLS &&
           cfg->cap_procs == KM__DEF_CAP_PROCS &&
           cfg->cap_inflight == KM__DEF_CAP_INFLIGHT &&
           cfg->cap_models == KM__DEF_CAP_MODELS,
       "env: default capacities");
    ok(strstr(warnings, "KMTP_API_KEY_2 is empty; key 2 skipped") != NULL,
       "env: empty secret warned and skipped");
    ok(strstr(warnings, "KMTP_ACCESS_TOKEN_1: may hold a credential") != NULL &&
           !strstr(k1->meta, "access"),
       "env: a credential-like parameter is not metadata");
    ok(strstr(warnings, "KMTP_ORG_9: there is no key 9") != NULL,
       "env: a parameter beyond NUM_KMTP warned");
    is_int(n_warnings, 3, "env: exactly those three warnings");
    ok(!strstr(warnings, "envunit") && !strstr(warnings, "org-") &&
           !strstr(warnings, "tok-"),
       "env: no value in any warning");
    diag("warnings: %s", warnings);
    km_config_free(cfg);

    /* NULL warn is fine */
    err[0] = '\0';
    rc = km_config_from_env("kmtp", &cfg, NULL, NULL, err, sizeof err);
    ok(rc == KM_OK, "env: NULL warn callback");
    if (rc == KM_OK)
        km_config_free(cfg);
    unsetenv("KMTP_ACCESS_TOKEN_1");
    unsetenv("KMTP_ORG_9");
    unsetenv("KMTP_ORG_01");
    unsetenv("KMTP_Lower_1");

    /* errors naming the variable */
    setenv("KMTP_RPM", "0", 1);
    env_bad("kmtp", "KMTP_RPM: must be a positive integer", "KMTP_RPM 0");
    setenv("KMTP_RPM", "2000000000000", 1);
    env_bad("kmtp", "KMTP_RPM: cannot be realised", "KMTP_RPM too large");
    setenv("KMTP_RPM", "60", 1);
    setenv("KMTP_TPM_3", "-5", 1);
    env_bad("kmtp", "KMTP_TPM_3: must be a positive integer", "KMTP_TPM_3 negative");
    setenv("KMTP_TPM_3", "5000", 1);
    setenv("KMTP_WEIGHT_3", "0", 1);
    env_bad("kmtp", "KMTP_WEIGHT_3: must be an integer from 1 to 1000000", "KMTP_WEIGHT_3 0");
    setenv("KMTP_WEIGHT_3", "4", 1);
    setenv("KMTP_STRATEGY", "random", 1);
    env_bad("kmtp", "KMTP_STRATEGY: must be \"round_robin\"", "KMTP_STRATEGY unknown");
    setenv("KMTP_STRATEGY", "latency", 1);
    setenv("KMTP_API_KEY_3", "sk-envunit-cccc 3333", 1);
    env_bad("kmtp", "KMTP_API_KEY_3: must be at most 255 bytes of printable ASCII",
            "secret with a space: refused, not echoed");
    setenv("KMTP_API_KEY_3", ENV_SECRET_3, 1);
    char longv[300];
    memset(longv, 'v', 260);
    longv[260] = '\0';
    setenv("KMTP_NOTE_1", longv, 1);
    env_bad("kmtp", "kmtp-1: metadata from the KMTP_<PARAM>_1 variables is",
            "metadata too long for a key");
    unsetenv("KMTP_NOTE_1");

    setenv("KMTP_API_KEY_3", ENV_SECRET_1, 1);
    env_bad("kmtp", "pools[0].keys[1]: key \"kmtp-3\" has the same secret as key "
            "\"kmtp-1\" (pools[0].keys[0])", "one secret in two variables: refused");
    setenv("KMTP_API_KEY_3", ENV_SECRET_3, 1);

    /* provider lists */
    env_bad("kmtp,KMTP", "providers: duplicate provider \"kmtp\"", "duplicate provider");
    env_bad("", "providers: empty provider name", "empty provider list");
    env_bad("kmtp,,kmtq", "providers: empty provider name", "empty provider in the list");
    env_bad("kmtp-x", "providers: \"kmtp-x\": may hold only", "provider with a dash");
    env_bad("kmtp,kmtq", "NUM_KMTQ is not set", "second provider without NUM_");

    setenv("NUM_KMTP_X", "1", 1);
    setenv("KMTP_X_API_KEY_1", "sk-envunit-xxxx9999", 1);
    setenv("KMTP_X_ORG_1", "org-x", 1);
    rc = from_env(" kmtp , kmtp_x ", &cfg);
    ok(rc == KM_OK && cfg->n_pools == 2 && cfg->n_keys == 3 &&
           strcmp(cfg->pools[1].name, "kmtp_x") == 0 &&
           strcmp(cfg->keys[2].id, "kmtp_x-1") == 0 &&
           strcmp(cfg->keys[2].meta, "{\"org\":\"org-x\"}") == 0,
       "env: two providers, spaces around names");
    ok(rc == KM_OK && strcmp(cfg->keys[0].meta, "{\"org\":\"org-one\"}") == 0,
       "env: KMTP_X_ORG_1 belongs to kmtp_x, not to kmtp");
    if (rc == KM_OK)
        km_config_free(cfg);
    else
        diag("message: %s", err);

    rc = km_config_from_env(NULL, &cfg, NULL, NULL, err, sizeof err);
    is_int(rc, KM_EINVAL, "env: NULL providers");
    env_clear();
}

/* The common single-key variable: P_API_KEY without NUM_P. */
static void test_env_single(void)
{
    km_config *cfg;
    int rc;

    env_clear();
    env_bad("kmtp", "NUM_KMTP is not set (the number of kmtp keys), nor is "
            "KMTP_API_KEY (a single key)", "neither NUM_KMTP nor KMTP_API_KEY");
    setenv("KMTP_API_KEY", "", 1);
    env_bad("kmtp", "KMTP_API_KEY is empty (and NUM_KMTP is not set)",
            "KMTP_API_KEY empty, no NUM_KMTP");
    setenv("KMTP_API_KEY", "sk-envunit-one 1", 1);
    env_bad("kmtp", "KMTP_API_KEY: must be at most 255 bytes of printable ASCII",
            "KMTP_API_KEY with a space: refused, not echoed");

    setenv("KMTP_API_KEY", ENV_SECRET_1, 1);
    setenv("KMTP_RPM", "60", 1);
    setenv("KMTP_ORG_1", "org-one", 1);
    setenv("KMTP_TPM_1", "9000", 1);
    rc = from_env("kmtp", &cfg);
    if (is_int(rc, KM_OK, "env single: KMTP_API_KEY alone parses")) {
        ok(cfg->n_pools == 1 && cfg->n_keys == 1 &&
               strcmp(cfg->pools[0].name, "kmtp") == 0 &&
               strcmp(cfg->keys[0].id, "kmtp-1") == 0,
           "env single: a pool of one key, id kmtp-1");
        is_str(cfg->keys[0].secret, ENV_SECRET_1, "env single: its secret");
        ok(cfg->keys[0].limits[KM_WIN_RPM].limit == 60 &&
               cfg->keys[0].limits[KM_WIN_TPM].limit == 9000,
           "env single: KMTP_RPM and KMTP_TPM_1 apply");
        is_str(cfg->keys[0].meta, "{\"org\":\"org-one\"}",
               "env single: KMTP_ORG_1 is the key's metadata");
        is_int(n_warnings, 0, "env single: no warning");
        km_config_free(cfg);
    } else {
        diag("message: %s", err);
    }
    setenv("KMTP_ORG_2", "org-two", 1);
    rc = from_env("kmtp", &cfg);
    ok(rc == KM_OK && n_warnings == 1 &&
           strstr(warnings, "KMTP_ORG_2: there is no key 2 (KMTP_API_KEY is the "
                            "only key); ignored"),
       "env single: a parameter of key 2 is warned about (%s)", warnings);
    if (rc == KM_OK)
        km_config_free(cfg);
    unsetenv("KMTP_ORG_2");

    /* Both: NUM_KMTP wins, KMTP_API_KEY is warned about and unused. */
    setenv("NUM_KMTP", "1", 1);
    setenv("KMTP_API_KEY_1", ENV_SECRET_3, 1);
    rc = from_env("kmtp", &cfg);
    ok(rc == KM_OK && cfg->n_keys == 1 &&
           strcmp(cfg->keys[0].secret, ENV_SECRET_3) == 0 &&
           strcmp(cfg->keys[0].id, "kmtp-1") == 0,
       "env both: NUM_KMTP wins, the key is KMTP_API_KEY_1");
    ok(n_warnings == 1 &&
           strstr(warnings, "KMTP_API_KEY is ignored: NUM_KMTP is set, so the "
                            "keys are KMTP_API_KEY_1..1") &&
           !strstr(warnings, "envunit"),
       "env both: one warning naming KMTP_API_KEY, no value (%s)", warnings);
    if (rc == KM_OK)
        km_config_free(cfg);
    env_clear();
}

int main(void)
{
    plan(383);
    test_good();
    test_defaults();
    test_syntax();
    test_unknown_fields();
    test_limits();
    test_fields();
    test_capacity();
    test_secrets();
    test_file();
    test_strategies();
    test_models();
    test_key_models();
    test_capacity_models();
    test_price();
    test_budget();
    test_meta();
    test_secret_dup();
    test_presets();
    test_env();
    test_env_single();
    return exit_status();
}
