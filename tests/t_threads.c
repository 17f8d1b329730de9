/*
 * t_threads.c - one handle, many threads (gthread and uWSGI-thread workers).
 *
 * Four threads of one process share one km_env and hammer a pool whose rpm
 * and tpm limits bind, recording every admission.  Afterwards: every
 * interval of every key's recorded admissions is within the token_bucket
 * bound, in-flight is 0, km_check is clean, and the counters add up exactly
 * (no thread was killed, so nothing may be short).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keymesh.h"
#include "tap.h"

#define THREADS 4
#define KEYS 3
#define RPM_LIMIT 12000 /* one request per 5 ms */
#define RPM_BURST 10
#define TPM_LIMIT 1200000 /* 20 tokens per ms */
#define TPM_BURST 3000
#define MAXREC (1 << 18)

typedef struct rec {
    uint32_t key, tokens;
    uint64_t start;
} rec;

static km_env *env;
static rec recs[MAXREC];
static uint64_t nrec, ops[THREADS], stop_at;

static void *hammer(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1);
    km_lease l;
    while (km_now_ns() < stop_at) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        km_request rq = {.pool = 0, .tokens = (uint32_t)(1 + seed % 300)};
        if (km_acquire(env, &rq, &l) != KM_OK)
            continue;
        uint64_t i = __atomic_fetch_add(&nrec, 1, __ATOMIC_RELAXED);
        if (i < MAXREC)
            recs[i] = (rec){l.key, l.tokens, l.start_ns};
        km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 50, .tokens = -1,
                        .input_tokens = -1, .output_tokens = -1};
        if (km_release(env, &l, &o) == KM_OK)
            ops[t]++;
    }
    return NULL;
}

static int cmp_rec(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

int main(void)
{
    char name[64], js[1024], err[256];
    km_config *cfg;
    pthread_t th[THREADS];

    plan(6);
    snprintf(name, sizeof name, "kmt-threads-%d", (int)getpid());
    snprintf(js, sizeof js,
             "{\"pools\":[{\"name\":\"p\",\"limits\":{\"rpm\":{\"limit\":%d,\"burst\":%d},"
             "\"tpm\":{\"limit\":%d,\"burst\":%d}},\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-thread0a\"},"
             "{\"id\":\"b\",\"secret\":\"sk-test-thread0b\"},{\"id\":\"c\",\"secret\":\"sk-test-thread0c\"}]}]}",
             RPM_LIMIT, RPM_BURST, TPM_LIMIT, TPM_BURST);
    km_unlink(name);
    if (km_config_parse(js, strlen(js), "t_threads", &cfg, err, sizeof err) ||
        km_create(name, cfg, 0, &env))
        bail_out("create: %s", err);
    stop_at = km_now_ns() + 1500000000ull;
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);

    uint64_t total = 0, acquired = 0, released = 0, inflight = 0;
    for (int i = 0; i < THREADS; i++)
        total += ops[i];
    for (int k = 0; k < KEYS; k++) {
        km_key_info ki;
        km_key_info_get(env, km_pool_key(env, 0, k), &ki);
        acquired += ki.acquired;
        for (int o = 0; o < KM_OUT_COUNT; o++)
            released += ki.outcomes[o];
        inflight += ki.inflight;
    }
    diag("%d threads on one handle: %llu pairs in 1.5 s", THREADS, (unsigned long long)total);
    ok(total > 500, "every thread made progress (%llu pairs)", (unsigned long long)total);
    is_u64(acquired, total, "acquired == releases the threads counted");
    is_u64(released, total, "outcomes == releases the threads counted");
    is_u64(inflight, 0, "in-flight is 0");
    is_int(km_check(env, NULL, NULL), 0, "km_check clean");

    uint64_t n = nrec < MAXREC ? nrec : MAXREC, viol = 0;
    qsort(recs, n, sizeof(rec), cmp_rec);
    for (uint64_t a = 0; a < n;) {
        uint64_t b = a;
        while (b < n && recs[b].key == recs[a].key)
            b++;
        for (uint64_t i = a; i < b; i++) {
            uint64_t reqs = 0, toks = 0;
            for (uint64_t j = i; j < b; j++) {
                reqs++;
                toks += recs[j].tokens;
                double dt = (double)(recs[j].start - recs[i].start);
                if ((double)reqs > dt * RPM_LIMIT / 60e9 + RPM_BURST + 1e-9 ||
                    (double)toks > dt * TPM_LIMIT / 60e9 + TPM_BURST + 1e-9)
                    viol++;
            }
        }
        a = b;
    }
    is_u64(viol, 0, "no interval of %llu admissions exceeds its rpm or tpm bound", (unsigned long long)n);
    km_close(env);
    km_unlink(name);
    km_config_free(cfg);
    return exit_status();
}
