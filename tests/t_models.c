/*
 * t_models.c - per-model limits, model lists, spend and budgets, and the
 * cost, latency, reliability and least_busy strategies (exact scan for
 * small pools, power of two choices for large ones).
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"
#include "keymesh.h"
#include "tap.h"

static char name[64];
static km_config *cfg;

static km_env *make(const char *js)
{
    char err[512];
    km_env *e = NULL;
    km_unlink(name);
    if (km_config_parse(js, strlen(js), "t_models", &cfg, err, sizeof err) ||
        km_create(name, cfg, 0, &e))
        bail_out("cannot create segment %s: %s", name, err);
    return e;
}

/* A pool "p" of n keys k00, k01, ... with the given strategy. */
static km_env *make_pool(const char *strategy, int n)
{
    static char js[65536];
    size_t o = (size_t)snprintf(js, sizeof js,
                                "{\"pools\":[{\"name\":\"p\",\"strategy\":\"%s\",\"keys\":[", strategy);
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(js + o, sizeof js - o, "%s{\"id\":\"k%02d\",\"secret\":\"sk-test-pool%04d\"}",
                              i ? "," : "", i, i);
    snprintf(js + o, sizeof js - o, "]}]}");
    return make(js);
}

static void done(km_env *e)
{
    km_close(e);
    km_unlink(name);
    km_config_free(cfg);
}

static km_outcome outcome(int kind, int64_t lat_us, int64_t tokens)
{
    km_outcome o = {.kind = kind, .latency_us = lat_us, .tokens = tokens,
                    .input_tokens = -1, .output_tokens = -1};
    return o;
}

static int key_idx(km_env *e, const char *id) { return km_key_find(e, 0, id); }

int main(void)
{
    km_lease l;
    km_outcome ok = outcome(KM_OUT_SUCCESS, 1000, -1);

    plan(35);
    snprintf(name, sizeof name, "kmt-models-%d", (int)getpid());

    /* 1. per_model: each model has its own rpm on each key, on top of the
     * key's own limit. */
    km_env *e = make("{\"pools\":[{\"name\":\"p\",\"model_limits\":\"per_model\","
                     "\"limits\":{\"rpm\":100},"
                     "\"models\":{\"big\":{\"rpm\":2},\"small\":{\"rpm\":5}},"
                     "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-model00a\"}]}]}");
    km_request big = {.pool = 0, .model = "big"}, small = {.pool = 0, .model = "small"};
    int n_big = 0, n_small = 0;
    for (int i = 0; i < 10; i++) {
        if (km_acquire(e, &big, &l) == KM_OK) {
            n_big++;
            km_release(e, &l, &ok);
        }
        if (km_acquire(e, &small, &l) == KM_OK) {
            n_small++;
            km_release(e, &l, &ok);
        }
    }
    is_int(n_big, 2, "per_model: model big admits its own rpm burst (2)");
    is_int(n_small, 5, "per_model: model small admits its own rpm burst (5)");
    is_int(km_acquire(e, &big, &l), KM_EAGAIN, "big exhausted: EAGAIN with retry time");
    ok(l.retry_at_ns > km_now_ns() + 25ull * 1000000000ull, "big's retry is its own window (30 s per request)");
    km_request none = {.pool = 0};
    is_int(km_acquire(e, &none, &l), KM_OK, "a request naming no model uses only the key's limits");
    km_release(e, &l, &ok);
    km_request bad = {.pool = 0, .model = "nope"};
    is_int(km_acquire(e, &bad, &l), KM_ENOMODEL, "unknown model: KM_ENOMODEL");
    km_key_info ki;
    km_key_info_get(e, 0, &ki);
    is_u64(ki.limits[KM_WIN_RPM].limit, 100, "key keeps its own rpm");
    char mname[KM_ID_MAX + 1];
    km_limit_info ml[KM_WIN_COUNT];
    is_int(km_model_info_get(e, 0, 0, 0, mname, ml), KM_OK, "model info");
    is_str(mname, "big", "model 0 is big");
    is_u64(ml[KM_WIN_RPM].available, 0, "big has nothing left on key a");
    done(e);

    /* km_check verifies per-model reservations: clean while a lease holds
     * tokens on a model, and a corrupted model word is reported. */
    e = make("{\"pools\":[{\"name\":\"p\",\"model_limits\":\"per_model\","
             "\"models\":{\"m\":{\"tpm\":10000}},"
             "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-model00a\"}]}]}");
    km_request mt = {.pool = 0, .model = "m", .tokens = 300};
    is_int(km_acquire(e, &mt, &l), KM_OK, "lease 300 tokens on model m");
    is_int(km_check(e, NULL, NULL), 0, "km_check clean with a per-model reservation out");
    km__gcra *g = &km__mwins(e, 0)[0].win[KM_WIN_TPM];
    ck_pr_add_64(&g->reserved, 7);
    is_int(km_check(e, NULL, NULL), 1, "a per-model reservation off by 7 is one violation");
    ck_pr_sub_64(&g->reserved, 7);
    km_release(e, &l, &ok);
    is_int(km_check(e, NULL, NULL), 0, "clean again after the release");
    done(e);

    /* 2. global pool with a model list: names are checked, limits shared. */
    e = make("{\"pools\":[{\"name\":\"p\",\"limits\":{\"rpm\":3},"
             "\"models\":{\"gpt-4o\":{},\"gpt-4o-mini\":{}},"
             "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-model00a\"}]}]}");
    km_request m1 = {.pool = 0, .model = "gpt-4o"}, m2 = {.pool = 0, .model = "gpt-4o-mini"};
    int n = 0;
    for (int i = 0; i < 3; i++) {
        n += km_acquire(e, i % 2 ? &m1 : &m2, &l) == KM_OK;
        km_release(e, &l, &ok);
    }
    is_int(n, 3, "global: both models draw on the key's one rpm limit");
    is_int(km_acquire(e, &m1, &l), KM_EAGAIN, "global: the shared limit binds for either model");
    bad.model = "claude";
    is_int(km_acquire(e, &bad, &l), KM_ENOMODEL, "global pool with a model list refuses other names");
    done(e);

    /* 3. Spend and budgets.  Prices: $1 per 1k in, $2 per 1k out. */
    e = make("{\"pools\":[{\"name\":\"p\",\"strategy\":\"round_robin\","
             "\"price\":{\"input_per_1k\":1.0,\"output_per_1k\":2.0},"
             "\"keys\":[{\"id\":\"hard\",\"secret\":\"sk-test-budget0h\",\"budget\":{\"usd\":0.01,\"hard\":true}},"
             "{\"id\":\"soft\",\"secret\":\"sk-test-budget0s\",\"budget\":{\"usd\":0.001,\"hard\":false}},"
             "{\"id\":\"free\",\"secret\":\"sk-test-budget0f\"}]}]}");
    km_outcome priced = outcome(KM_OUT_SUCCESS, 1000, 3);
    priced.input_tokens = 1;
    priced.output_tokens = 2; /* $1/1k = 1000 micro-USD a token: 1*1000 + 2*2000 */
    km_request pin = {.pool = 0, .key_id = "hard"};
    km_acquire(e, &pin, &l);
    km_release(e, &l, &priced);
    km_key_info_get(e, key_idx(e, "hard"), &ki);
    is_u64(ki.spent_microusd, 5000, "spend: 1 in at $1/1k + 2 out at $2/1k = 5000 micro-USD");
    is_int(ki.state, KM_KEY_ACTIVE, "under its $0.01 budget the key stays active");
    priced.input_tokens = 0;
    priced.output_tokens = 3; /* 3 * 2000 = 6000 micro-USD: past $0.01 */
    km_acquire(e, &pin, &l);
    km_release(e, &l, &priced);
    km_key_info_get(e, key_idx(e, "hard"), &ki);
    is_u64(ki.spent_microusd, 11000, "spend accumulates");
    is_int(ki.state, KM_KEY_EXHAUSTED, "hard budget spent: key exhausted");
    is_int(km_acquire(e, &pin, &l), KM_EUNAVAIL, "an exhausted key is not handed out");
    km_pool_info pi;
    km_pool_info_get(e, 0, &pi);
    is_u64(pi.spent_microusd, 11000, "pool spend is the sum of its keys'");
    /* Soft: spend it, then it is taken only when no other key is left. */
    pin.key_id = "soft";
    km_acquire(e, &pin, &l);
    km_release(e, &l, &priced);
    km_request any = {.pool = 0};
    int soft_used = 0;
    for (int i = 0; i < 6; i++) {
        km_acquire(e, &any, &l);
        soft_used += strcmp(l.key_id, "soft") == 0;
        km_release(e, &l, &ok);
    }
    is_int(soft_used, 0, "soft budget spent: passed over while another key is usable");
    km_key_set_state(e, key_idx(e, "free"), KM_KEY_DISABLED);
    is_int(km_acquire(e, &any, &l), KM_OK, "soft budget: still used when nothing else is left");
    is_str(l.key_id, "soft", "... and that is the soft key");
    km_release(e, &l, &ok);
    /* A zero-initialised outcome (0 in, 0 out) with tokens used is priced
     * as output, not as free. */
    {
        km_outcome zo = {.kind = KM_OUT_SUCCESS, .tokens = 3};
        km_request zp = {.pool = 0, .key_id = "free"};
        km_key_set_state(e, key_idx(e, "free"), KM_KEY_ACTIVE);
        km_acquire(e, &zp, &l);
        km_release(e, &l, &zo);
        km_key_info_get(e, key_idx(e, "free"), &ki);
        is_u64(ki.spent_microusd, 6000, "zero-initialised split with 3 tokens: priced as output (6000)");
    }
    done(e);

    /* Pool hard budget refuses at once. */
    e = make("{\"pools\":[{\"name\":\"p\",\"price\":{\"input_per_1k\":0,\"output_per_1k\":1000},"
             "\"budget\":{\"usd\":0.5},"
             "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-budget0a\"}]}]}");
    priced.output_tokens = 1; /* 1 * 1e9 / 1000 = 1e6 micro-USD = $1 */
    km_acquire(e, &any, &l);
    km_release(e, &l, &priced);
    is_int(km_acquire(e, &any, &l), KM_EBUDGET, "pool hard budget spent: KM_EBUDGET");
    done(e);

    /* 4. cost: cheapest key with capacity first. */
    e = make("{\"pools\":[{\"name\":\"p\",\"strategy\":\"cost\",\"limits\":{\"rpm\":2},\"keys\":["
             "{\"id\":\"dear\",\"secret\":\"sk-test-cost000d\",\"price\":{\"input_per_1k\":5,\"output_per_1k\":15}},"
             "{\"id\":\"cheap\",\"secret\":\"sk-test-cost000c\",\"price\":{\"input_per_1k\":0.15,\"output_per_1k\":0.6}},"
             "{\"id\":\"mid\",\"secret\":\"sk-test-cost000m\",\"price\":{\"input_per_1k\":1,\"output_per_1k\":2}}]}]}");
    char seq[8] = "";
    for (int i = 0; i < 6; i++) {
        if (km_acquire(e, &any, &l) == KM_OK) {
            seq[i] = l.key_id[0];
            km_release(e, &l, &ok);
        }
    }
    is_str(seq, "ccmmdd", "cost: cheap until limited, then mid, then dear");
    done(e);

    /* 5. latency and reliability prefer the better key; exploration still
     * samples the worse one now and then.  Small pool: exact scan. */
    e = make("{\"pools\":[{\"name\":\"p\",\"strategy\":\"latency\",\"keys\":["
             "{\"id\":\"slow\",\"secret\":\"sk-test-lat000s\"},{\"id\":\"fast\",\"secret\":\"sk-test-lat000f\"}]}]}");
    km_request fs = {.pool = 0, .key_id = "fast"}, sl = {.pool = 0, .key_id = "slow"};
    km_outcome fast = outcome(KM_OUT_SUCCESS, 100000, -1), slow = outcome(KM_OUT_SUCCESS, 2000000, -1);
    km_acquire(e, &fs, &l);
    km_release(e, &l, &fast);
    km_acquire(e, &sl, &l);
    km_release(e, &l, &slow);
    int n_fast = 0, N = 4000;
    for (int i = 0; i < N; i++) {
        km_acquire(e, &any, &l);
        n_fast += strcmp(l.key_id, "fast") == 0;
        km_release(e, &l, strcmp(l.key_id, "fast") == 0 ? &fast : &slow);
    }
    /* Exploration picks a random key 1 time in 16: half of those are slow. */
    ok(n_fast > N * 90 / 100 && n_fast < N, "latency: fast key takes >90%% but not all (%d of %d)", n_fast, N);
    done(e);

    e = make("{\"pools\":[{\"name\":\"p\",\"strategy\":\"reliability\",\"max_failures\":1000,\"keys\":["
             "{\"id\":\"flaky\",\"secret\":\"sk-test-rel000f\"},{\"id\":\"solid\",\"secret\":\"sk-test-rel000s\"}]}]}");
    km_outcome fail = outcome(KM_OUT_FAILURE, 1000, -1);
    km_request fl = {.pool = 0, .key_id = "flaky"};
    for (int i = 0; i < 10; i++) {
        km_acquire(e, &fl, &l);
        km_release(e, &l, &fail);
    }
    km_key_info_get(e, key_idx(e, "flaky"), &ki);
    /* EMA with alpha 1/8 from 100%: 0.875^10 = 26.3% */
    cmp_u64(ki.success_ppm, "<", 300000, "10 failures bring the success rate to ~26%% (%u ppm)", ki.success_ppm);
    int n_solid = 0;
    for (int i = 0; i < 1000; i++) { /* the flaky key keeps failing */
        km_acquire(e, &any, &l);
        int is_solid = strcmp(l.key_id, "solid") == 0;
        n_solid += is_solid;
        km_release(e, &l, is_solid ? &ok : &fail);
    }
    ok(n_solid > 900, "reliability: the solid key takes >90%% (%d of 1000)", n_solid);
    done(e);

    /* 6. least_busy on a large pool (power of two choices): with most keys
     * holding leases, new leases go to idle keys far more often than a
     * random pick would. */
    {
        e = make_pool("least_busy", 64);
        static km_lease held[64 * 4];
        int nh = 0;
        km_request pk = {.pool = 0};
        char id[8];
        for (int i = 0; i < 48; i++) { /* 48 busy keys with 4 leases each */
            snprintf(id, sizeof id, "k%02d", i);
            pk.key_id = id;
            for (int j = 0; j < 4; j++)
                km_acquire(e, &pk, &held[nh++]);
        }
        int idle = 0;
        for (int i = 0; i < 1000; i++) {
            km_acquire(e, &any, &l);
            idle += atoi(l.key_id + 1) >= 48;
            km_release(e, &l, &ok);
        }
        /* Random choice hits an idle key 25% of the time (250 +- 14 of
         * 1000); two choices at least 1 - 0.75^2 = 44% (437 +- 16).  350
         * tells them apart by more than 5 standard deviations each way. */
        ok(idle > 350, "least_busy (64 keys, sampled): %d of 1000 to the 16 idle keys", idle);
        for (int i = 0; i < nh; i++)
            km_release(e, &held[i], &ok);
        km_key_info_get(e, 0, &ki);
        is_u64(ki.inflight, 0, "all held leases released");
        done(e);
    }
    /* 7. Children forked after the parent chose keys do not repeat each
     * other's choices: per-thread random state is reset in the child. */
    {
        e = make_pool("weighted", 64);
        km_acquire(e, &any, &l); /* the parent's state is now seeded */
        km_release(e, &l, &ok);
        int fds[2][2];
        char seqs[2][64];
        for (int c = 0; c < 2; c++) {
            if (pipe(fds[c]) != 0)
                bail_out("pipe");
            if (fork() == 0) {
                km_env *ce = NULL;
                char buf[64];
                if (km_open(name, &ce) != KM_OK)
                    _exit(2);
                for (int i = 0; i < 40; i++) {
                    km_acquire(ce, &any, &l);
                    buf[i] = (char)('0' + atoi(l.key_id + 1) % 64);
                    km_release(ce, &l, &ok);
                }
                if (write(fds[c][1], buf, 40) != 40)
                    _exit(3);
                km_close(ce);
                _exit(0);
            }
            close(fds[c][1]);
        }
        for (int c = 0; c < 2; c++) {
            if (read(fds[c][0], seqs[c], 40) != 40)
                bail_out("child %d", c);
            wait(NULL);
        }
        ok(memcmp(seqs[0], seqs[1], 40) != 0, "two forked children make different weighted choices");
        done(e);
    }
    return exit_status();
}
