/*
 * tests/t_config.c - km_config_parse(): the schema, defaults, limit merging
 * and resolution, and every error the parser promises to catch, each with a
 * one-line message that names the field (or line:column) and never the
 * secret.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
                                "%s{\"id\": \"k%u\", \"secret\": \"" SECRET "\"}",
                                i ? ", " : "", i);
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
                                "\"a\", \"secret\": \"sk-x\"}]}",
                                i ? ", " : "", i);
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
        "pools[0].keys[0]: missing secret or secret_env", "neither secret nor secret_env");
    bad(one_key("\"secret_env\": \"KMT_CONFIG_KEY_B\"", ""),
        "pools[0].keys[0]: give either secret or secret_env, not both",
        "both secret and secret_env");
    bad(one_key("\"secret_env\": \"KMT_CONFIG_KEY_B\", \"weight\": 1", ""),
        "pools[0].keys[0]: give either", "both, with more fields");

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

int main(void)
{
    plan(141);
    test_good();
    test_defaults();
    test_syntax();
    test_unknown_fields();
    test_limits();
    test_fields();
    test_capacity();
    test_secrets();
    test_file();
    return exit_status();
}
