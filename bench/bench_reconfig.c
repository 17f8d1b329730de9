/*
 * bench_reconfig.c - acquire + release while keys are added, removed and
 * re-weighted: what live reconfiguration costs the workers.
 *
 * One pool of --keys keys (capacity twice that).  --procs worker processes
 * time every acquire+release pair (two clock reads per pair, so figures are
 * ~25 ns above bench_acquire's) for --seconds, twice: quiet, then while a
 * reconfigurer process removes a key, adds one and re-weights one every
 * --period-ms.  One SUMMARY line per phase:
 *
 *   SUMMARY reconfig phase=quiet|reconfig procs=P keys=K period_ms=T seconds=S
 *     pairs=N p50_ns= p99_ns= p999_ns= max_ns= ops_per_s= reconfigs=R
 *
 * --short: 0.5 s per phase.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"
#include "bench.h"

#define BUCKETS 4096 /* 16 ns buckets up to 64 us, then one overflow bucket */
#define BUCKET_NS 16

typedef struct shared {
    volatile int go, stop;
    uint64_t hist[64][BUCKETS + 1];
    uint64_t max_ns[64];
    volatile uint64_t reconfigs;
} shared;

static shared *sh;
static char seg[64];

static void worker(int w)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(2);
    int pool = km_pool_find(e, "bench");
    km_request rq = {.pool = pool, .tokens = 100};
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = 100};
    while (!sh->go)
        ;
    while (!sh->stop) {
        km_lease l;
        uint64_t t0 = now_ns();
        int rc = km_acquire(e, &rq, &l);
        if (rc == KM_OK)
            km_release(e, &l, &o);
        uint64_t dt = now_ns() - t0;
        if (rc != KM_OK)
            continue;
        sh->hist[w][dt / BUCKET_NS < BUCKETS ? dt / BUCKET_NS : BUCKETS]++;
        if (dt > sh->max_ns[w])
            sh->max_ns[w] = dt;
    }
    km_close(e);
    _exit(0);
}

static void reconfigurer(int keys, int period_ms)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(2);
    int pool = km_pool_find(e, "bench"), next = keys;
    while (!sh->go)
        ;
    for (unsigned i = 0; !sh->stop; i++) {
        char id[32], js[128], err[256];
        snprintf(id, sizeof id, "k%d", next - keys); /* the oldest live key */
        int k = km_key_find(e, pool, id);
        if (k >= 0)
            km_key_remove(e, k);
        snprintf(js, sizeof js, "{\"id\": \"k%d\", \"secret\": \"sk-bench-%08d\"}", next, next);
        if (km_key_add(e, pool, js, err, sizeof err) >= 0)
            next++;
        snprintf(id, sizeof id, "k%d", next - 1 - (int)(i % (unsigned)keys));
        if ((k = km_key_find(e, pool, id)) >= 0)
            km_key_set_weight(e, k, 1 + i % 7);
        sh->reconfigs++;
        struct timespec ts = {0, (long)period_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    km_close(e);
    _exit(0);
}

static uint64_t pct(const uint64_t *h, uint64_t n, double q)
{
    uint64_t want = (uint64_t)(q * (double)n), acc = 0;
    for (int b = 0; b <= BUCKETS; b++) {
        acc += h[b];
        if (acc > want)
            return (uint64_t)b * BUCKET_NS + BUCKET_NS / 2;
    }
    return (uint64_t)BUCKETS * BUCKET_NS;
}

static void phase(const char *name, int procs, int keys, int period_ms, double secs, int reconf)
{
    pid_t pid[65];
    memset(sh, 0, sizeof *sh);
    for (int w = 0; w < procs; w++)
        if ((pid[w] = fork()) == 0)
            worker(w);
    if (reconf && (pid[procs] = fork()) == 0)
        reconfigurer(keys, period_ms);
    usleep(100000); /* every worker attached */
    sh->go = 1;
    uint64_t t0 = now_ns();
    usleep((useconds_t)(secs * 1e6));
    sh->stop = 1;
    for (int w = 0; w < procs + reconf; w++)
        waitpid(pid[w], NULL, 0);
    double el = (double)(now_ns() - t0) / 1e9;
    static uint64_t h[BUCKETS + 1];
    uint64_t n = 0, mx = 0;
    memset(h, 0, sizeof h);
    for (int w = 0; w < procs; w++) {
        for (int b = 0; b <= BUCKETS; b++) {
            h[b] += sh->hist[w][b];
            n += sh->hist[w][b];
        }
        if (sh->max_ns[w] > mx)
            mx = sh->max_ns[w];
    }
    printf("SUMMARY reconfig phase=%s procs=%d keys=%d period_ms=%d seconds=%.2f pairs=%" PRIu64
           " p50_ns=%" PRIu64 " p99_ns=%" PRIu64 " p999_ns=%" PRIu64 " max_ns=%" PRIu64
           " ops_per_s=%.0f reconfigs=%" PRIu64 "\n",
           name, procs, keys, period_ms, secs, n, pct(h, n, 0.5), pct(h, n, 0.99), pct(h, n, 0.999),
           mx, (double)n / el, sh->reconfigs);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int procs = 2, keys = 8, period_ms = 10;
    double secs = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--short"))
            secs = 0.5;
        else if (!strcmp(argv[i], "--procs") && i + 1 < argc)
            procs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--period-ms") && i + 1 < argc)
            period_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            secs = atof(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_reconfig [--short] [--procs N] [--keys N] [--period-ms T] [--seconds S]\n");
            return 2;
        }
    }
    if (procs < 1 || procs > 64 || keys < 2 || keys > 1024 || period_ms < 1 || secs <= 0) {
        fprintf(stderr, "bench_reconfig: --procs 1..64, --keys 2..1024, --period-ms >= 1\n");
        return 2;
    }
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    snprintf(seg, sizeof seg, "kmbench-reconfig-%d", (int)getpid());
    km_unlink(seg);
    size_t cap = 4096, len = 0;
    char *js = malloc(cap);
    len += (size_t)snprintf(js + len, cap - len,
                            "{\"capacity\": {\"keys\": %d, \"processes\": %d}, \"pools\": [{\"name\": "
                            "\"bench\", \"strategy\": \"weighted\", \"limits\": {\"rpm\": 1000000000, "
                            "\"tpm\": 1000000000000}, \"keys\": [",
                            2 * keys, procs + 8);
    for (int k = 0; k < keys; k++) {
        if (len + 128 > cap)
            js = realloc(js, cap *= 2);
        len += (size_t)snprintf(js + len, cap - len, "%s{\"id\": \"k%d\", \"secret\": \"sk-bench-%08d\"}",
                                k ? ", " : "", k, k);
    }
    snprintf(js + len, cap - len, "]}]}");
    km_config *cfg;
    km_env *env;
    char err[256];
    if (km_config_parse(js, strlen(js), "bench", &cfg, err, sizeof err) != KM_OK ||
        km_create(seg, cfg, 0600, &env) != KM_OK) {
        fprintf(stderr, "bench_reconfig: %s\n", err);
        return 1;
    }
    km_config_free(cfg);
    free(js);
    phase("quiet", procs, keys, period_ms, secs, 0);
    phase("reconfig", procs, keys, period_ms, secs, 1);
    km_close(env);
    km_unlink(seg);
    return 0;
}
