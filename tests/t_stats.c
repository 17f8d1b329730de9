/*
 * t_stats.c - km_key_stats_get, km_pool_stats_get, km_model_stats_get and
 * km_key_model_stats_get: counters against what this test did, windows
 * "used/left/full_in" against the limits' arithmetic (day windows, so no
 * refill can happen while the test runs), pool and model sums against the
 * keys, the size protocol (a shorter struct is filled only up to its size),
 * and the errors.  Uses only the public header.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keymesh.h"
#include "tap.h"

static char name[64];

static km_env *make(const char *js)
{
    km_config *cfg = NULL;
    km_env *e = NULL;
    char err[512] = "";
    km_unlink(name);
    int rc = km_config_parse(js, strlen(js), "t_stats", &cfg, err, sizeof err);
    if (rc == KM_OK)
        rc = km_create(name, cfg, 0, &e);
    km_config_free(cfg);
    if (rc != KM_OK)
        bail_out("cannot create %s: %s %s", name, km_err_name(rc), err);
    return e;
}

static void done(km_env *e)
{
    km_close(e);
    km_unlink(name);
}

static int acq(km_env *e, const char *model, const char *key, uint32_t tokens, km_lease *l)
{
    km_request r = {.pool = 0, .tokens = tokens, .model = model, .key_id = key};
    memset(l, 0, sizeof *l);
    return km_acquire(e, &r, l);
}

static int rel(km_env *e, const km_lease *l, int kind, int64_t lat_us, int64_t tokens,
               double retry_after)
{
    km_outcome o = {.kind = kind, .latency_us = lat_us, .tokens = tokens,
                    .retry_after_s = retry_after, .input_tokens = -1, .output_tokens = -1};
    return km_release(e, l, &o);
}

static km_key_stats kstats(km_env *e, const char *id)
{
    km_key_stats s;
    int k = km_key_find(e, 0, id);
    if (k < 0 || km_key_stats_get(e, k, &s, sizeof s) != KM_OK)
        bail_out("km_key_stats_get %s", id);
    return s;
}

/* Emission interval of a day window, as keymesh.h states it (ns/unit). */
static uint64_t t_bucket(uint64_t limit) { return (86400 * UINT64_C(1000000000) + limit - 1) / limit; }
static uint64_t t_sliding(uint64_t limit, uint64_t burst)
{
    return 86400 * UINT64_C(1000000000) / (limit + 1 - burst) + 1;
}
static uint64_t ms_up(uint64_t ns) { return ns / 1000000 + (ns % 1000000 != 0); }

/* ------------------------------------------- key x model, forked workers */

#define W_PROCS 3
static const char *const w_keys[] = {"a", "b"}, *const w_models[] = {"x", "y"};

/* Acquire on pool p, key `key`, model `model`, retrying while the key
 * cools (the 429s below cool it for a microsecond). */
static int w_acq(km_env *e, int p, const char *key, const char *model, km_lease *l)
{
    km_request r = {.pool = p, .tokens = 3, .model = model, .key_id = key};
    for (int i = 0; i < 100000; i++) {
        int rc = km_acquire(e, &r, l);
        if (rc != KM_EAGAIN)
            return rc;
        usleep(10);
    }
    return KM_EAGAIN;
}

static int w_rel(km_env *e, const km_lease *l, int kind, int64_t tokens)
{
    km_outcome o = {.kind = kind, .latency_us = 100, .tokens = tokens,
                    .retry_after_s = kind == KM_OUT_RATE_LIMITED ? 1e-6 : 0,
                    .input_tokens = -1, .output_tokens = -1};
    return km_release(e, l, &o);
}

/* Worker c: on every key x model of pool 0, 1 + c successes (7 tokens
 * each), one 429, two failures (1 token each), one cancelled; one lease
 * left out at exit on a x x (abandoned, 3 tokens: its estimate) and one
 * released twice on b x y (a success, then a stale release).  On pool 1
 * (no models list), model "free" on key c: c + 1 successes, one failure.
 * Exit status: the number of calls that did not answer as expected. */
static int w_run(int c)
{
    km_env *e;
    km_lease l;
    int bad = 0;
    if (km_open(name, &e) != KM_OK)
        return 100;
    for (int k = 0; k < 2; k++)
        for (int m = 0; m < 2; m++) {
            for (int i = 0; i < 1 + c; i++)
                bad += w_acq(e, 0, w_keys[k], w_models[m], &l) != KM_OK ||
                       w_rel(e, &l, KM_OUT_SUCCESS, 7) != KM_OK;
            bad += w_acq(e, 0, w_keys[k], w_models[m], &l) != KM_OK ||
                   w_rel(e, &l, KM_OUT_RATE_LIMITED, 0) != KM_OK;
            for (int i = 0; i < 2; i++)
                bad += w_acq(e, 0, w_keys[k], w_models[m], &l) != KM_OK ||
                       w_rel(e, &l, KM_OUT_FAILURE, 1) != KM_OK;
            bad += w_acq(e, 0, w_keys[k], w_models[m], &l) != KM_OK ||
                   km_release(e, &l, NULL) != KM_OK;
        }
    bad += w_acq(e, 0, "b", "y", &l) != KM_OK || w_rel(e, &l, KM_OUT_SUCCESS, 7) != KM_OK ||
           w_rel(e, &l, KM_OUT_SUCCESS, 7) != KM_ESTALE;
    for (int i = 0; i < c + 1; i++)
        bad += w_acq(e, 1, "c", "free", &l) != KM_OK || w_rel(e, &l, KM_OUT_SUCCESS, 7) != KM_OK;
    bad += w_acq(e, 1, "c", "free", &l) != KM_OK || w_rel(e, &l, KM_OUT_FAILURE, 1) != KM_OK;
    bad += w_acq(e, 0, "a", "x", &l) != KM_OK; /* left out: abandoned */
    _exit(bad > 99 ? 99 : bad); /* without km_close: a dead process's lease */
}

static void workers_by_model(void)
{
    km_env *e = make("{\"capacity\":{\"processes\":8,\"inflight_per_key\":8},"
                     "\"pools\":[{\"name\":\"w\",\"max_failures\":1000,"
                     "\"models\":{\"x\":{},\"y\":{}},"
                     "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-stats-www1\"},"
                     "{\"id\":\"b\",\"secret\":\"sk-test-stats-www2\"}]},"
                     "{\"name\":\"n\",\"max_failures\":1000,"
                     "\"keys\":[{\"id\":\"c\",\"secret\":\"sk-test-stats-www3\"}]}]}");
    km_lease l;
    /* Name "free" in pool n before the workers race to (N3 would allow two
     * rows of one name): one request, cancelled, counted below. */
    is_int(w_acq(e, 1, "c", "free", &l), KM_OK, "pool without a models list: a named request");
    km_release(e, &l, NULL);
    pid_t pid[W_PROCS];
    for (int c = 0; c < W_PROCS; c++)
        if ((pid[c] = fork()) == 0)
            w_run(c);
    int clean = 1;
    for (int c = 0; c < W_PROCS; c++) {
        int st = -1;
        waitpid(pid[c], &st, 0);
        clean &= WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    ok(clean, "%d workers: every acquire and release answered as expected", W_PROCS);
    km_reap_report rr;
    is_int(km_reap(e, &rr), KM_OK, "the workers' leases left out are reaped");

    /* Expected on each key x model of pool w, summed over the workers. */
    uint64_t succ = 0, ok_sum = 1;
    for (int c = 0; c < W_PROCS; c++)
        succ += 1 + (uint64_t)c;
    for (int m = 0; m < 2; m++) {
        km_stats_counters sum = {0};
        for (int k = 0; k < 2; k++) {
            int ki = km_key_find(e, 0, w_keys[k]), ax = k == 0 && m == 0, by = k == 1 && m == 1;
            km_model_stats s;
            km_stats_counters x = {0};
            x.outcomes[KM_OUT_SUCCESS] = succ + (by ? W_PROCS : 0);
            x.outcomes[KM_OUT_RATE_LIMITED] = W_PROCS;
            x.outcomes[KM_OUT_FAILURE] = 2 * W_PROCS;
            x.outcomes[KM_OUT_CANCELLED] = W_PROCS;
            x.abandoned = ax ? W_PROCS : 0;
            x.stale_releases = by ? W_PROCS : 0;
            x.requests = x.outcomes[KM_OUT_SUCCESS] + 4 * W_PROCS + x.abandoned;
            x.tokens = 7 * x.outcomes[KM_OUT_SUCCESS] + 2 * W_PROCS + 3 * x.abandoned;
            int rc = km_key_model_stats_get(e, ki, m, &s, sizeof s);
            int same = rc == KM_OK && s.counters_valid == 1 &&
                       memcmp(&s.counters, &x, sizeof x) == 0;
            ok(same,
               "key %s x model %s: requests %llu/%llu, ok %llu/%llu, 429 %llu/%llu, fail "
               "%llu/%llu, cancelled %llu/%llu, abandoned %llu/%llu, stale %llu/%llu, tokens "
               "%llu/%llu (got/expected)", w_keys[k], w_models[m],
               (unsigned long long)s.counters.requests, (unsigned long long)x.requests,
               (unsigned long long)s.counters.outcomes[0], (unsigned long long)x.outcomes[0],
               (unsigned long long)s.counters.outcomes[1], (unsigned long long)x.outcomes[1],
               (unsigned long long)s.counters.outcomes[2], (unsigned long long)x.outcomes[2],
               (unsigned long long)s.counters.outcomes[5], (unsigned long long)x.outcomes[5],
               (unsigned long long)s.counters.abandoned, (unsigned long long)x.abandoned,
               (unsigned long long)s.counters.stale_releases,
               (unsigned long long)x.stale_releases, (unsigned long long)s.counters.tokens,
               (unsigned long long)x.tokens);
            sum.requests += x.requests;
            for (int i = 0; i < KM_OUT_COUNT; i++)
                sum.outcomes[i] += x.outcomes[i];
            sum.abandoned += x.abandoned;
            sum.stale_releases += x.stale_releases;
            sum.tokens += x.tokens;
        }
        km_model_stats s;
        ok_sum &= km_model_stats_get(e, 0, m, &s, sizeof s) == KM_OK && s.counters_valid == 1 &&
                  s.n_keys == 2 && memcmp(&s.counters, &sum, sizeof sum) == 0;
    }
    ok(ok_sum, "model x and y over pool w: the sums of their key x model counters");
    /* Every request named a model: each key's own counters are the sums of
     * its model rows. */
    for (int k = 0; k < 2; k++) {
        km_key_stats ks;
        km_model_stats a, b;
        int ki = km_key_find(e, 0, w_keys[k]);
        km_key_stats_get(e, ki, &ks, sizeof ks);
        km_key_model_stats_get(e, ki, 0, &a, sizeof a);
        km_key_model_stats_get(e, ki, 1, &b, sizeof b);
        ok(ks.n_models == 2 && ks.counters.requests == a.counters.requests + b.counters.requests &&
               ks.counters.abandoned == a.counters.abandoned + b.counters.abandoned &&
               ks.counters.stale_releases == a.counters.stale_releases + b.counters.stale_releases &&
               ks.counters.tokens == a.counters.tokens + b.counters.tokens,
           "key %s: its counters are the sums over its models", w_keys[k]);
    }

    /* Pool n, no models list: the row "free" its requests named. */
    km_pool_stats ps;
    km_model_stats s;
    is_int(km_pool_stats_get(e, 1, &ps, sizeof ps), KM_OK, "pool n stats");
    is_int(ps.n_models, 1, "pool n: one named model row");
    int kc = km_key_find(e, 1, "c");
    is_int(km_key_model_stats_get(e, kc, 0, &s, sizeof s), KM_OK, "named row on key c");
    ok(strcmp(s.name, "free") == 0 && s.counters_valid == 1 &&
           s.counters.requests == 1 + succ + W_PROCS &&
           s.counters.outcomes[KM_OUT_SUCCESS] == succ &&
           s.counters.outcomes[KM_OUT_FAILURE] == W_PROCS &&
           s.counters.outcomes[KM_OUT_CANCELLED] == 1 &&
           s.counters.tokens == 7 * succ + W_PROCS && !s.windows[KM_WIN_RPM].limit,
       "named row free on c: requests %llu, ok %llu, fail %llu, cancelled %llu, tokens %llu",
       (unsigned long long)s.counters.requests,
       (unsigned long long)s.counters.outcomes[KM_OUT_SUCCESS],
       (unsigned long long)s.counters.outcomes[KM_OUT_FAILURE],
       (unsigned long long)s.counters.outcomes[KM_OUT_CANCELLED],
       (unsigned long long)s.counters.tokens);
    is_int(km_model_stats_get(e, 1, 0, &s, sizeof s), KM_OK, "named row over pool n");
    ok(strcmp(s.name, "free") == 0 && s.n_keys == 1 && s.counters.requests == 1 + succ + W_PROCS,
       "named row over pool n: the key's counters");
    is_int(km_model_stats_get(e, 1, 1, &s, sizeof s), KM_ENOMODEL,
           "pool n: past its named rows, ENOMODEL");
    done(e);
}

int main(void)
{
    km_lease l, held;
    plan(81);
    snprintf(name, sizeof name, "kmt-stats-%d", (int)getpid());

    /* Key a: rpd 1000 (token bucket, burst 1000), tpd 10000 sliding with
     * burst 1000.  Key b: rpd 50 only.  Day windows refill one unit per
     * 86.4 s or more: nothing refills while the test runs. */
    km_env *e = make(
        "{\"capacity\":{\"keys\":4,\"processes\":8,\"inflight_per_key\":8},"
        "\"pools\":[{\"name\":\"p\",\"strategy\":\"fill_first\",\"cooldown_s\":30,"
        "\"price\":{\"output_per_1k\":1.0},"
        "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-stats-aaaa\","
        "\"limits\":{\"rpd\":1000,\"tpd\":{\"limit\":10000,\"mode\":\"sliding\",\"burst\":1000}}},"
        "{\"id\":\"b\",\"secret\":\"sk-test-stats-bbbb\",\"limits\":{\"rpd\":50}}]}]}");

    /* On key a: 3 successes (100 tokens each, latency 2 ms), 1 failure, 1
     * cancelled; one stale release; one lease out with 300 tokens. */
    for (int i = 0; i < 3; i++) {
        acq(e, NULL, "a", 100, &l);
        rel(e, &l, KM_OUT_SUCCESS, 2000, 100, 0);
    }
    acq(e, NULL, "a", 50, &l);
    rel(e, &l, KM_OUT_FAILURE, 1000, 50, 0);
    acq(e, NULL, "a", 20, &l);
    rel(e, &l, KM_OUT_CANCELLED, -1, -1, 0);
    is_int(rel(e, &l, KM_OUT_SUCCESS, 1, 1, 0), KM_ESTALE, "a second release is stale");
    is_int(acq(e, NULL, "a", 300, &held), KM_OK, "a lease stays out on a");

    /* A child acquires on b and detaches without releasing: abandoned. */
    pid_t pid = fork();
    if (pid == 0) {
        km_env *c;
        if (km_open(name, &c) != KM_OK || acq(c, NULL, "b", 0, &l) != KM_OK)
            _exit(1);
        km_close(c);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0, "child took a lease on b and closed");

    km_key_stats a = kstats(e, "a"), b = kstats(e, "b");
    is_int(a.size, sizeof a, "size says the whole struct was filled");
    is_str(a.id, "a", "id");
    is_int(a.pool, 0, "pool");
    is_u64(a.counters.requests, 6, "a: requests (6 acquired)");
    is_u64(a.counters.outcomes[KM_OUT_SUCCESS], 3, "a: successes");
    is_u64(a.counters.outcomes[KM_OUT_FAILURE], 1, "a: failures");
    is_u64(a.counters.outcomes[KM_OUT_CANCELLED], 1, "a: cancelled");
    is_u64(a.counters.outcomes[KM_OUT_RATE_LIMITED], 0, "a: no 429");
    is_u64(a.counters.stale_releases, 1, "a: one stale release");
    is_u64(a.counters.abandoned, 0, "a: none abandoned");
    is_u64(a.counters.tokens, 350, "a: tokens settled (3x100 + 50; cancelled refunds)");
    is_int(a.inflight, 1, "a: one lease in flight");
    is_int(a.state, KM_KEY_ACTIVE, "a: active");
    cmp_u64(a.latency_ema_us, ">=", 1000, "a: latency EMA within the samples (low)");
    cmp_u64(a.latency_ema_us, "<=", 2000, "a: latency EMA within the samples (high)");
    cmp_u64(a.success_ppm, "<", 1000000, "a: success EMA below 1 after a failure");
    is_u64(a.spent_microusd, 350000, "a: spent 350 tokens at $1/1k output");
    is_u64(b.counters.requests, 1, "b: one request");
    is_u64(b.counters.abandoned, 1, "b: abandoned by km_close");
    is_int(b.inflight, 0, "b: nothing in flight");

    /* Windows.  rpd on a: 6 requests charged, cancelled ones included. */
    const km_window_stats *rpd = &a.windows[KM_WIN_RPD];
    is_u64(rpd->limit, 1000, "a rpd: limit");
    is_int(rpd->period_s, 86400, "a rpd: period 1 day");
    is_int(rpd->mode, KM_MODE_TOKEN_BUCKET, "a rpd: token bucket");
    is_u64(rpd->used, 6, "a rpd: 6 used");
    is_u64(rpd->left, 994, "a rpd: 994 left");
    is_u64(rpd->full_in_ms, ms_up(6 * t_bucket(1000)), "a rpd: full in 6 emission intervals");
    /* tpd (sliding, burst 1000): 350 settled + 300 reserved by the lease out. */
    const km_window_stats *tpd = &a.windows[KM_WIN_TPD];
    is_int(tpd->mode, KM_MODE_SLIDING, "a tpd: sliding");
    is_u64(tpd->burst, 1000, "a tpd: burst");
    is_u64(tpd->used, 650, "a tpd: 350 settled + 300 reserved");
    is_u64(tpd->left, 350, "a tpd: left = burst - used");
    is_u64(tpd->full_in_ms, ms_up(650 * t_sliding(10000, 1000)), "a tpd: full_in_ms");
    is_u64(a.windows[KM_WIN_RPM].limit + a.windows[KM_WIN_TPM].limit, 0,
           "a: windows without a limit are 0");

    /* The lease comes back with 100 tokens: reservation settles. */
    rel(e, &held, KM_OUT_SUCCESS, 2000, 100, 0);
    a = kstats(e, "a");
    is_u64(a.windows[KM_WIN_TPD].used, 450, "a tpd: 450 once the lease settled at 100");

    /* A 429 on b with Retry-After 20 s: cooling, about 20 s left. */
    acq(e, NULL, "b", 0, &l);
    rel(e, &l, KM_OUT_RATE_LIMITED, 500, 0, 20.0);
    b = kstats(e, "b");
    is_int(b.state, KM_KEY_COOLING, "b: cooling after a 429");
    cmp_u64(b.cooldown_remaining_ms, ">", 19000, "b: cooldown left > 19 s");
    cmp_u64(b.cooldown_remaining_ms, "<=", 20000, "b: cooldown left <= 20 s");
    is_u64(b.counters.outcomes[KM_OUT_RATE_LIMITED], 1, "b: one 429");

    /* Pool: sums over a and b. */
    km_pool_stats p;
    is_int(km_pool_stats_get(e, 0, &p, sizeof p), KM_OK, "pool stats");
    a = kstats(e, "a");
    b = kstats(e, "b");
    is_str(p.name, "p", "pool name");
    is_int(p.n_keys, 2, "pool: 2 keys");
    is_int(p.keys_by_state[KM_KEY_ACTIVE] * 10 + p.keys_by_state[KM_KEY_COOLING], 11,
           "pool: 1 active, 1 cooling");
    is_u64(p.counters.requests, a.counters.requests + b.counters.requests, "pool: requests summed");
    is_u64(p.counters.abandoned, 1, "pool: abandoned summed");
    is_u64(p.windows[KM_WIN_RPD].limit, 1050, "pool rpd: limits summed over the keys that have it");
    is_int(p.keys_limited[KM_WIN_RPD] * 10 + p.keys_limited[KM_WIN_TPD], 21,
           "pool: 2 keys have rpd, 1 has tpd");
    is_u64(p.windows[KM_WIN_RPD].used, a.windows[KM_WIN_RPD].used + b.windows[KM_WIN_RPD].used,
           "pool rpd: used summed");
    /* b has no latency sample (a 429 does not feed the EMA): the mean is
     * over the keys that have one. */
    is_u64(p.latency_ema_us,
           b.latency_ema_us ? (a.latency_ema_us + b.latency_ema_us) / 2 : a.latency_ema_us,
           "pool: mean latency EMA over keys with a sample");

    /* The size protocol: a caller built against a shorter struct. */
    km_key_stats shortk;
    memset(&shortk, 0xAB, sizeof shortk);
    size_t cut = offsetof(km_key_stats, counters);
    int k = km_key_find(e, 0, "a");
    is_int(km_key_stats_get(e, k, &shortk, cut), KM_OK, "short struct: OK");
    const unsigned char *tail = (const unsigned char *)&shortk + cut;
    int untouched = 1;
    for (size_t i = 0; i < sizeof shortk - cut; i++)
        untouched &= tail[i] == 0xAB;
    ok(shortk.size == cut && untouched && strcmp(shortk.id, "a") == 0,
       "short struct: filled up to its size (%u of %zu), nothing past it", shortk.size, cut);
    is_int(km_key_stats_get(e, k, &shortk, 4), KM_EINVAL, "size < 8: EINVAL");
    is_int(km_key_stats_get(e, 3, &shortk, sizeof shortk), KM_ENOKEY, "free key slot: ENOKEY");
    is_int(km_pool_stats_get(e, 5, &p, sizeof p), KM_ENOPOOL, "no such pool: ENOPOOL");
    km_model_stats m;
    is_int(km_model_stats_get(e, 0, 0, &m, sizeof m), KM_ENOMODEL, "pool without models: ENOMODEL");
    done(e);

    /* Models: a per_model pool, model x on each key has rpd 100. */
    e = make("{\"pools\":[{\"name\":\"m\",\"model_limits\":\"per_model\","
             "\"models\":{\"x\":{\"rpd\":100},\"y\":{}},"
             "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-stats-mmm1\"},"
             "{\"id\":\"b\",\"secret\":\"sk-test-stats-mmm2\"}]}]}");
    for (int i = 0; i < 3; i++) {
        acq(e, "x", "a", 0, &l);
        rel(e, &l, KM_OUT_SUCCESS, 100, 0, 0);
    }
    acq(e, "y", "b", 0, &l);
    rel(e, &l, KM_OUT_SUCCESS, 100, 0, 0);
    k = km_key_find(e, 0, "a");
    is_int(km_key_model_stats_get(e, k, 0, &m, sizeof m), KM_OK, "key x model stats");
    ok(strcmp(m.name, "x") == 0 && m.key == k && m.n_keys == 1,
       "key x model: name x, key a, one key");
    is_u64(m.windows[KM_WIN_RPD].used * 1000 + m.windows[KM_WIN_RPD].limit, 3100,
           "key x model: x's rpd on a: 3 used of 100");
    is_int(m.counters_valid, 1, "key x model: counters kept per key x model");
    ok(m.counters.requests == 3 && m.counters.outcomes[KM_OUT_SUCCESS] == 3,
       "key x model: x on a: 3 requests, 3 successes (got %llu, %llu)",
       (unsigned long long)m.counters.requests,
       (unsigned long long)m.counters.outcomes[KM_OUT_SUCCESS]);
    is_int(km_model_stats_get(e, 0, 0, &m, sizeof m), KM_OK, "model stats over the pool");
    ok(m.key == KM_STATS_ALL_KEYS && m.n_keys == 2 && m.windows[KM_WIN_RPD].limit == 200 &&
           m.windows[KM_WIN_RPD].used == 3 && m.keys_limited[KM_WIN_RPD] == 2,
       "model x over the pool: 2 keys, rpd 3 used of 200 (got %u keys, %llu of %llu)", m.n_keys,
       (unsigned long long)m.windows[KM_WIN_RPD].used,
       (unsigned long long)m.windows[KM_WIN_RPD].limit);
    is_int(km_key_model_stats_get(e, k, 2, &m, sizeof m), KM_ENOMODEL,
           "model past the end: ENOMODEL");
    done(e);

    workers_by_model();
    return exit_status();
}
