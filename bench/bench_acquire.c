/*
 * bench/bench_acquire.c - cost of one km_acquire() + km_release() pair.
 *
 * The program creates its own segment (a unique name, unlinked at the end),
 * forks --procs worker processes that each km_open() it, and every worker
 * loops: acquire a key with a token estimate, release it at once with
 * SUCCESS, latency 1000 us and the estimate as the actual token count.
 *
 * What is timed: batches of 64 acquire+release pairs, with one
 * clock_gettime(CLOCK_MONOTONIC) before and one after each batch.  The
 * per-pair time of a batch is its duration / 64; percentiles are taken over
 * those per-batch means of every worker and every repetition, so a single
 * slow pair (a preemption, a cache miss storm) is spread over its batch.  The
 * two clock reads per batch add clock_ns / 32 to each pair.  ops_per_s is
 * the sum over workers of pairs / own elapsed time, median over repetitions.
 *
 * With --limits on (default) every key has rpm and tpm limits so high they
 * never bind, so each pair still advances two GCRA words by CAS.
 *
 * A baseline from the same run and machine is printed first: the cost of one
 * clock_gettime(CLOCK_MONOTONIC) and of one uncontended locked fetch-add.
 *
 * Output: one SUMMARY line per scenario, echoing every parameter:
 *   SUMMARY baseline clock_ns=NN faa_ns=NN
 *   SUMMARY acquire_release procs=1 keys=4 strategy=round_robin limits=on
 *           tokens=100 seconds=2 reps=5 p50_ns=NN p99_ns=NN p999_ns=NN
 *           ops_per_s=NN
 * (one line each).  Without --procs/--keys/--strategy, --matrix picks the
 * scenario sets (default "all": both, base first):
 *   base        procs 1,2 x keys 4,64 with round_robin, and procs 1 keys 4
 *               with least_busy and weighted;
 *   strategies  procs 1, every strategy x keys 4, 64, 1024 (does the cost
 *               of a pair grow with the pool?).
 * --short: 0.5 s and 3 repetitions per scenario (smoke test); the strategies
 * set then runs keys 4 and 1024 only, 0.3 s each.
 *
 * Per strategy, so that each one has something to choose by while every key
 * stays admissible (the loop measures choosing, not waiting):
 *   weighted     weights 1..4 by key (1 + i % 4);
 *   cost         distinct prices, shuffled: key i has price rank
 *                r = (i * 4099 + keys / 2) % keys (a permutation, 4099 being
 *                a prime above the largest --keys), input 0.0001 * (r + 1)
 *                and output twice that USD per 1k tokens; the price index
 *                puts the cheapest first, so every pair lands on key r == 0.
 *                Priced keys also account spend at release (two more locked
 *                adds per pair), which a priced pool always pays;
 *   latency,
 *   reliability  the release reports latency 1000 + i us for key i, so the
 *                latency EMAs differ (key 0 fastest).  Every release is a
 *                SUCCESS, so reliability's scores (success rate) all stay
 *                at 100% and tie;
 *   fill_first   every pair lands on the first key (its behaviour).
 * Every other strategy releases with latency 1000 us.
 *
 * --fleet (issue 12: fleet credit on vs off, same run): the scenario runs
 * 2 x --reps times, alternating a segment without fleet keys and one whose
 * keys are all fleet keys ("fleet": true; --limits on, so each pair also
 * takes rpm and tpm credit by one 16-byte CAS), each time one repetition;
 * the parent holds the agent's role and grants credit that never runs out
 * (10^12 units, deadline an hour ahead), untimed.  Output:
 *   SUMMARY acquire_release_fleet procs=.. keys=.. strategy=.. tokens=..
 *           seconds=.. reps=.. p50_off_ns=NN p50_on_ns=NN delta_p50_ns=NN
 *           p99_off_ns=NN p99_on_ns=NN
 * With --model M --per-model, the fleet keys' windows of model M are under
 * the fleet too: each pair also takes the model's credit (its own CAS).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"
#include "bench.h"

#define BATCH 64
#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ volatile("" ::: "memory")
#endif
/* Sample buffer sizing: assume no pair is faster than this. */
#define MIN_PAIR_NS 10

typedef struct scenario {
    int procs, keys, strategy, limits;
    uint32_t tokens;
    int usage_events; /* capacity.usage_events; -1: the library's default */
    const char *model; /* --model: the pool lists it and every request names
                        * it (one key x model counter more per acquire and
                        * release); NULL: none */
    int per_model;     /* --per-model: the pool's "model_limits" is per_model
                        * and the model has limits (never binding), checked
                        * on each key next to the key's own */
    int own_keys;      /* --own-keys N: the first N keys have their own
                        * limits of the model (per-key model limits, never
                        * binding either) */
    double seconds;
    int reps;
    int fleet; /* every key a fleet key, credit granted by the parent */
} scenario;

/* Shared (anonymous, MAP_SHARED) area between the parent and its workers. */
typedef struct shared {
    int ready;          /* workers attached and waiting */
    int go;             /* set by the parent: start */
    uint64_t deadline;  /* CLOCK_MONOTONIC ns at which workers stop */
} shared;

typedef struct wres {
    uint64_t pairs;
    uint64_t elapsed_ns;
    uint64_t n_samples;
    uint64_t cpu_ns;    /* CPU time of the timed loop (user + system) */
    int err;            /* km error code of a failed call, 0 if none */
    int pad;
} wres;

static char g_seg[64]; /* segment name while it exists, for the signal path */

static uint64_t cpu_time_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

static void on_signal(int sig)
{
    if (g_seg[0])
        shm_unlink(g_seg); /* async-signal-safe enough: a plain system call */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void *map_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted batch durations, as ns per pair. */
static uint64_t pct_pair_ns(const uint32_t *s, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)ceil(p * (double)n);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (s[rank - 1] + BATCH / 2) / BATCH;
}

/* ---------------------------------------------------------------- baseline */

static double median5(double v[5])
{
    qsort(v, 5, sizeof v[0], cmp_dbl);
    return v[2];
}

static void baseline(void)
{
    enum { N_CLOCK = 2000000, N_FAA = 20000000 };
    double c[5], f[5];
    uint64_t counter = 0;
    struct timespec ts;

    for (int r = 0; r < 5; r++) {
        uint64_t sink = 0, t0 = now_ns();
        for (int i = 0; i < N_CLOCK; i++) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sink += (uint64_t)ts.tv_nsec;
        }
        uint64_t t1 = now_ns();
        c[r] = (double)(t1 - t0) / N_CLOCK;
        __asm__ volatile("" : : "r"(sink));

        t0 = now_ns();
        for (int i = 0; i < N_FAA; i++)
            __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST); /* lock xadd */
        t1 = now_ns();
        f[r] = (double)(t1 - t0) / N_FAA;
    }
    printf("SUMMARY baseline clock_ns=%.0f faa_ns=%.0f\n", median5(c), median5(f));
    fflush(stdout);
}

/* ---------------------------------------------------------------- scenario */

static int make_config(const scenario *sc, km_config **cfg)
{
    size_t cap = 4096 + (size_t)sc->keys * 256;
    char *js = malloc(cap), err[256];
    size_t n = 0;
    int rc;

    if (!js)
        return KM_ENOMEM;
    n += (size_t)snprintf(js + n, cap - n,
                          "{%s\"capacity\": {\"keys\": %d, \"processes\": %d, "
                          "\"pools\": 1, \"inflight_per_key\": %d%s},\n"
                          " \"pools\": [{\"name\": \"bench\", "
                          "\"strategy\": \"%s\",%s%s%s\n",
                          sc->fleet ? "\"fleet\": true, " : "", sc->keys, sc->procs + 4,
                          sc->procs + 4,
                          sc->usage_events < 0 ? "" : sc->usage_events ? ", \"usage_events\": 4096"
                                                                     : ", \"usage_events\": 0",
                          km_strategy_name(sc->strategy), sc->model ? " \"models\": {\"" : "",
                          sc->model ? sc->model : "",
                          !sc->model       ? ""
                          : sc->per_model ? "\": {\"rpm\": 1000000000, \"tpm\": 1000000000000}},"
                                            " \"model_limits\": \"per_model\","
                                          : "\": {}},");
    if (sc->limits)
        /* Never binding: rpm 1e9 and tpm 1e12 give the GCRA words a burst
         * tolerance of a full minute, far more than a run consumes. */
        n += (size_t)snprintf(js + n, cap - n,
                              "  \"limits\": {\"rpm\": 1000000000, "
                              "\"tpm\": 1000000000000},\n");
    n += (size_t)snprintf(js + n, cap - n, "  \"keys\": [\n");
    for (int i = 0; i < sc->keys; i++) {
        n += (size_t)snprintf(js + n, cap - n,
                              "   {\"id\": \"k%03d\", \"secret\": "
                              "\"sk-bench-%08d\", \"weight\": %d",
                              i, i, sc->strategy == KM_STRATEGY_WEIGHTED ? 1 + i % 4 : 1);
        if (i < sc->own_keys) /* its own limits of the model, as loose */
            n += (size_t)snprintf(js + n, cap - n,
                                  ", \"models\": {\"%s\": {\"rpm\": 1500000000, "
                                  "\"tpm\": 1000000000000}}",
                                  sc->model);
        if (sc->strategy == KM_STRATEGY_COST) {
            /* Distinct prices, shuffled (see the head comment). */
            int r = (int)(((long)i * 4099 + sc->keys / 2) % sc->keys);
            n += (size_t)snprintf(js + n, cap - n,
                                  ", \"price\": {\"input_per_1k\": %.4f, "
                                  "\"output_per_1k\": %.4f}",
                                  0.0001 * (r + 1), 0.0002 * (r + 1));
        }
        n += (size_t)snprintf(js + n, cap - n, "}%s\n", i + 1 < sc->keys ? "," : "");
    }
    n += (size_t)snprintf(js + n, cap - n, "  ]}]}\n");
    rc = km_config_parse(js, n, "bench_acquire", cfg, err, sizeof err);
    if (rc != KM_OK)
        fprintf(stderr, "bench_acquire: config: %s: %s\n", km_strerror(rc), err);
    free(js);
    return rc;
}

/* One worker: attach, wait for go, run batches until the deadline. */
static void worker(const scenario *sc, volatile shared *sh, wres *res,
                   uint32_t *samples, size_t cap_samples)
{
    km_env *env;
    int rc = km_open(g_seg, &env), pool;

    if (rc != KM_OK) {
        res->err = rc;
        __atomic_fetch_add(&sh->ready, 1, __ATOMIC_RELEASE);
        _exit(1);
    }
    pool = km_pool_find(env, "bench");
    km_request req = {.pool = pool, .strategy = sc->strategy, .tokens = sc->tokens,
                      .model = sc->model};
    km_outcome out = {.kind = KM_OUT_SUCCESS, .latency_us = 1000,
                      .tokens = (int64_t)sc->tokens, .retry_after_s = 0,
                      .input_tokens = -1, .output_tokens = -1};
    km_lease lease;
    /* latency and reliability: a latency per key, so the EMAs differ. */
    int per_key_latency = sc->strategy == KM_STRATEGY_LATENCY ||
                          sc->strategy == KM_STRATEGY_RELIABILITY;

    __atomic_fetch_add(&sh->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
        cpu_relax();
    uint64_t deadline = sh->deadline;

    size_t n = 0;
    uint64_t cpu0 = cpu_time_ns();
    uint64_t pairs = 0, first = now_ns(), t0 = first, t1 = first;
    while (n < cap_samples) {
        t0 = now_ns();
        for (int i = 0; i < BATCH; i++) {
            rc = km_acquire(env, &req, &lease);
            if (rc != KM_OK)
                goto fail;
            if (per_key_latency)
                out.latency_us = 1000 + (int64_t)lease.key;
            rc = km_release(env, &lease, &out);
            if (rc != KM_OK)
                goto fail;
        }
        t1 = now_ns();
        samples[n++] = (uint32_t)(t1 - t0 > UINT32_MAX ? UINT32_MAX : t1 - t0);
        pairs += BATCH;
        if (t1 >= deadline)
            break;
    }
    res->pairs = pairs;
    res->elapsed_ns = t1 - first;
    res->n_samples = n;
    res->cpu_ns = cpu_time_ns() - cpu0;
    km_close(env);
    _exit(0);
fail:
    res->err = rc;
    km_close(env);
    _exit(1);
}

/* --fleet: hold the agent's role on env and grant every key's fleet
 * windows credit that does not run out during the run. */
static int grant_forever(km_env *env, int keys)
{
    /* A key's windows and, in a per_model pool (--per-model), its model's. */
    size_t cap = (size_t)keys * KM_WIN_COUNT * (1 + KM_MODELS_MAX);
    km_fleet_slot *sl = calloc(cap, sizeof *sl);
    km_fleet_grant *g = calloc(cap, sizeof *g);
    size_t n = 0;
    int rc = !sl || !g ? KM_ENOMEM : km_fleet_claim(env, KM_FLEET_STOP);
    if (rc == KM_OK)
        rc = km_fleet_collect(env, now_ns(), sl, cap, &n);
    for (size_t i = 0; rc == KM_OK && i < n; i++)
        g[i] = (km_fleet_grant){.key = sl[i].key, .key_gen = sl[i].key_gen, .model = sl[i].model,
                                .window = sl[i].window, .grant = 1000000000000ull,
                                .deadline_ns = now_ns() + 3600 * 1000000000ull};
    if (rc == KM_OK)
        rc = km_fleet_apply(env, g, n);
    if (rc == KM_OK && n == 0)
        rc = KM_EINVAL; /* --limits off: nothing under the fleet */
    if (rc != KM_OK)
        fprintf(stderr, "bench_acquire: fleet credit: %s\n", km_strerror(rc));
    free(sl);
    free(g);
    return rc;
}

/* Samples a run keeps for its caller instead of printing its SUMMARY
 * (--fleet); NULL: print. */
typedef struct keep {
    uint32_t *v;
    size_t n, cap;
} keep;

static int run_scenario_keep(const scenario *sc, int seq, keep *kp);
static int run_scenario(const scenario *sc, int seq)
{
    return run_scenario_keep(sc, seq, NULL);
}

static int run_scenario_keep(const scenario *sc, int seq, keep *kp)
{
    km_config *cfg = NULL;
    km_env *env = NULL;
    int rc, status = 1;
    size_t cap_samples = (size_t)(sc->seconds * 1e9 / (MIN_PAIR_NS * BATCH)) + 16;
    size_t sh_len = sizeof(shared) + (size_t)sc->procs * sizeof(wres);
    size_t smp_len = (size_t)sc->procs * cap_samples * sizeof(uint32_t);
    uint32_t *all = NULL;
    size_t n_all = 0, cap_all = 0;
    uint64_t total_pairs = 0;
    double min_share = 1.0; /* least CPU share of a worker while timed */
    double *rate = calloc((size_t)sc->reps, sizeof(double));
    shared *sh = map_shared(sh_len);
    uint32_t *smp = map_shared(smp_len);

    if (!rate || !sh || !smp) {
        fprintf(stderr, "bench_acquire: out of memory\n");
        goto out;
    }
    if ((rc = make_config(sc, &cfg)) != KM_OK)
        goto out;
    snprintf(g_seg, sizeof g_seg, "/km-bench-%d-%d", (int)getpid(), seq);
    rc = km_create(g_seg, cfg, 0600, &env);
    if (rc != KM_OK) {
        fprintf(stderr, "bench_acquire: km_create %s: %s\n", g_seg, km_strerror(rc));
        g_seg[0] = 0;
        goto out;
    }
    if (sc->fleet && grant_forever(env, sc->keys) != KM_OK)
        goto out;

    for (int r = 0; r < sc->reps; r++) {
        wres *res = (wres *)(sh + 1);
        pid_t *pids = calloc((size_t)sc->procs, sizeof(pid_t));
        int failed = 0;

        if (!pids)
            goto out;
        memset(sh, 0, sh_len);
        for (int p = 0; p < sc->procs; p++) {
            pids[p] = fork();
            if (pids[p] < 0) {
                perror("bench_acquire: fork");
                failed = 1; /* the workers already forked still get "go" */
                break;
            }
            if (pids[p] == 0)
                worker(sc, sh, &res[p], smp + (size_t)p * cap_samples, cap_samples);
        }
        /* Wait (sleeping, so the parent takes no core) until every worker
         * has attached, then start them together. */
        int forked = 0;
        for (int p = 0; p < sc->procs; p++)
            forked += pids[p] > 0;
        while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < forked) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        sh->deadline = now_ns() + (uint64_t)(sc->seconds * 1e9);
        __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
        for (int p = 0; p < sc->procs; p++) {
            int st;
            if (pids[p] <= 0)
                continue;
            while (waitpid(pids[p], &st, 0) < 0 && errno == EINTR)
                ;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                failed = 1;
                if (res[p].err)
                    fprintf(stderr, "bench_acquire: worker %d: %s (%s)\n", p,
                            km_strerror(res[p].err), km_err_name(res[p].err));
                else
                    fprintf(stderr, "bench_acquire: worker %d died (status %d)\n", p, st);
            }
        }
        free(pids);
        if (failed)
            goto out;
        rate[r] = 0;
        for (int p = 0; p < sc->procs; p++) {
            if (n_all + res[p].n_samples > cap_all) {
                size_t ncap = 2 * (n_all + res[p].n_samples);
                uint32_t *na = realloc(all, ncap * sizeof *all);
                if (!na) {
                    fprintf(stderr, "bench_acquire: out of memory\n");
                    goto out;
                }
                all = na;
                cap_all = ncap;
            }
            if (res[p].elapsed_ns)
                rate[r] += (double)res[p].pairs * 1e9 / (double)res[p].elapsed_ns;
            total_pairs += res[p].pairs;
            if (res[p].elapsed_ns) {
                double share = (double)res[p].cpu_ns / (double)res[p].elapsed_ns;
                if (share < min_share)
                    min_share = share;
            }
            memcpy(all + n_all, smp + (size_t)p * cap_samples,
                   res[p].n_samples * sizeof(uint32_t));
            n_all += res[p].n_samples;
        }
    }

    /* Cross-check with the segment's own counters: every pair timed was one
     * lease acquired and released with SUCCESS, and nothing else. */
    uint64_t acq = 0, ok = 0;
    int pool = km_pool_find(env, "bench");
    for (int i = 0; pool >= 0 && i < sc->keys; i++) {
        km_key_info ki;
        int key = km_pool_key(env, pool, (uint32_t)i);
        if (key < 0 || km_key_info_get(env, key, &ki) != KM_OK)
            break;
        acq += ki.acquired;
        ok += ki.outcomes[KM_OUT_SUCCESS];
    }
    if (acq != total_pairs || ok != total_pairs) {
        fprintf(stderr, "bench_acquire: segment counted %llu acquired, %llu "
                "successes; the workers timed %llu pairs\n",
                (unsigned long long)acq, (unsigned long long)ok,
                (unsigned long long)total_pairs);
        goto out;
    }

    /* A worker that was on a CPU for much less than its wall time shared a
     * core with something (another worker, another program): its figures
     * are not the cost of the code alone.  Say so, outside the SUMMARY. */
    if (min_share < 0.9)
        fprintf(stderr, "bench_acquire: warning: a worker ran only %.0f%% of its "
                "time (procs=%d on %ld online CPUs, or a busy machine); figures "
                "include waiting for a CPU\n",
                100 * min_share, sc->procs, sysconf(_SC_NPROCESSORS_ONLN));

    if (kp) { /* the caller prints */
        if (kp->n + n_all > kp->cap) {
            size_t ncap = 2 * (kp->n + n_all);
            uint32_t *nv = realloc(kp->v, ncap * sizeof *nv);
            if (!nv)
                goto out;
            kp->v = nv;
            kp->cap = ncap;
        }
        memcpy(kp->v + kp->n, all, n_all * sizeof *all);
        kp->n += n_all;
        status = 0;
        goto out;
    }
    qsort(all, n_all, sizeof all[0], cmp_u32);
    qsort(rate, (size_t)sc->reps, sizeof rate[0], cmp_dbl);
    double med = sc->reps % 2 ? rate[sc->reps / 2]
                              : (rate[sc->reps / 2 - 1] + rate[sc->reps / 2]) / 2;
    printf("SUMMARY acquire_release procs=%d keys=%d strategy=%s limits=%s "
           "tokens=%u usage_events=%s model=%s model_limits=%s own_keys=%d seconds=%g reps=%d "
           "p50_ns=%llu p99_ns=%llu p999_ns=%llu ops_per_s=%.0f\n",
           sc->procs, sc->keys, km_strategy_name(sc->strategy),
           sc->limits ? "on" : "off", (unsigned)sc->tokens,
           sc->usage_events == 0 ? "off" : "on", sc->model ? sc->model : "-",
           !sc->model ? "-" : sc->per_model ? "per_model" : "global", sc->own_keys, sc->seconds,
           sc->reps,
           (unsigned long long)pct_pair_ns(all, n_all, 0.50),
           (unsigned long long)pct_pair_ns(all, n_all, 0.99),
           (unsigned long long)pct_pair_ns(all, n_all, 0.999), med);
    fflush(stdout);
    status = 0;
out:
    if (env)
        km_close(env);
    if (g_seg[0]) {
        km_unlink(g_seg);
        g_seg[0] = 0;
    }
    km_config_free(cfg);
    free(all);
    free(rate);
    if (sh)
        munmap(sh, sh_len);
    if (smp)
        munmap(smp, smp_len);
    return status;
}

/* ------------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr, "usage: bench_acquire [--procs N] [--keys N] [--strategy S]\n"
                    "                     [--seconds S] [--reps R] [--limits on|off] "
                    "[--tokens N] [--usage-events on|off] [--model M] [--short]\n"
                    "                     [--per-model] [--own-keys N]\n"
                    "                     [--fleet]  (fleet credit off vs on, alternated)\n"
                    "       bench_acquire [--matrix base|strategies|all] [--seconds S] "
                    "[--reps R]\n"
                    "                     [--limits on|off] [--tokens N] [--short]\n"
                    "strategies:");
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        fprintf(stderr, " %s", km_strategy_name(i));
    fprintf(stderr, "\nWithout --procs/--keys/--strategy, runs --matrix all.\n");
    exit(2);
}

static int parse_strategy(const char *s)
{
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        if (!strcmp(s, km_strategy_name(i)))
            return i;
    fprintf(stderr, "bench_acquire: --strategy: unknown strategy '%s'\n", s);
    usage();
    return 0;
}

enum { SET_BASE = 1, SET_STRATEGIES = 2, SET_ALL = 3 };

static long parse_long(const char *s, long lo, long hi, const char *what)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "bench_acquire: --%s: want an integer in [%ld, %ld]\n",
                what, lo, hi);
        usage();
    }
    return v;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"procs", required_argument, NULL, 'p'},
        {"keys", required_argument, NULL, 'k'},
        {"strategy", required_argument, NULL, 's'},
        {"seconds", required_argument, NULL, 'S'},
        {"reps", required_argument, NULL, 'r'},
        {"limits", required_argument, NULL, 'l'},
        {"tokens", required_argument, NULL, 't'},
        {"usage-events", required_argument, NULL, 'u'},
        {"model", required_argument, NULL, 'M'},
        {"per-model", no_argument, NULL, 'P'},
        {"own-keys", required_argument, NULL, 'O'},
        {"short", no_argument, NULL, 'q'},
        {"fleet", no_argument, NULL, 'F'},
        {"matrix", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    scenario base = {.procs = 1, .keys = 4, .strategy = KM_STRATEGY_ROUND_ROBIN,
                     .limits = 1, .tokens = 100, .usage_events = -1, .seconds = 0, .reps = 0};
    int single = 0, shortrun = 0, sets = 0, fleet = 0, c;
    double set_seconds = 0; /* --seconds as given, 0 if not */

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            base.procs = (int)parse_long(optarg, 1, 256, "procs");
            single = 1;
            break;
        case 'k':
            base.keys = (int)parse_long(optarg, 1, 4096, "keys");
            single = 1;
            break;
        case 's':
            base.strategy = parse_strategy(optarg);
            single = 1;
            break;
        case 'm':
            if (!strcmp(optarg, "base"))
                sets = SET_BASE;
            else if (!strcmp(optarg, "strategies"))
                sets = SET_STRATEGIES;
            else if (!strcmp(optarg, "all"))
                sets = SET_ALL;
            else {
                fprintf(stderr, "bench_acquire: --matrix: want base, strategies "
                        "or all\n");
                usage();
            }
            break;
        case 'S': {
            char *end;
            base.seconds = strtod(optarg, &end);
            if (*end || !(base.seconds > 0 && base.seconds <= 3600))
                usage();
            set_seconds = base.seconds;
            break;
        }
        case 'r':
            base.reps = (int)parse_long(optarg, 1, 1000, "reps");
            break;
        case 'l':
            if (!strcmp(optarg, "on"))
                base.limits = 1;
            else if (!strcmp(optarg, "off"))
                base.limits = 0;
            else
                usage();
            break;
        case 't':
            base.tokens = (uint32_t)parse_long(optarg, 0, 1000000, "tokens");
            break;
        case 'u':
            if (!strcmp(optarg, "on"))
                base.usage_events = 1;
            else if (!strcmp(optarg, "off"))
                base.usage_events = 0;
            else
                usage();
            break;
        case 'M':
            /* A model name as the config takes it (docs/config.md), so it
             * goes into the JSON as is. */
            if (!*optarg || strlen(optarg) > KM_ID_MAX ||
                strspn(optarg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                               "0123456789_.:/-") != strlen(optarg))
                usage();
            base.model = optarg;
            break;
        case 'P':
            base.per_model = 1;
            break;
        case 'O':
            base.own_keys = (int)parse_long(optarg, 0, 4096, "own-keys");
            break;
        case 'q':
            shortrun = 1;
            break;
        case 'F':
            fleet = 1;
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();
    if ((base.per_model || base.own_keys) && !base.model) {
        fprintf(stderr, "bench_acquire: --per-model and --own-keys need --model\n");
        usage();
    }
    if (base.own_keys && !base.per_model) {
        fprintf(stderr, "bench_acquire: --own-keys needs --per-model\n");
        usage();
    }
    if (single && sets) {
        fprintf(stderr, "bench_acquire: --matrix runs sets of scenarios; it does "
                "not go with --procs, --keys or --strategy\n");
        usage();
    }
    if (!sets)
        sets = SET_ALL;
    /* Explicit --seconds/--reps win over --short, in any order. */
    if (base.seconds == 0)
        base.seconds = shortrun ? 0.5 : 2;
    if (base.reps == 0)
        base.reps = shortrun ? 3 : 5;

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);

    baseline();

    int seq = 0, rc = 0;
    if (fleet) {
        /* Off and on alternated, one repetition each, so drift of the
         * machine (other programs, frequency) falls on both alike. */
        keep k[2] = {{0}, {0}};
        scenario sc = base;
        int reps = sc.reps;
        sc.reps = 1;
        for (int r = 0; r < reps && !rc; r++)
            for (int f = 0; f < 2 && !rc; f++) {
                sc.fleet = f;
                rc = run_scenario_keep(&sc, seq++, &k[f]);
            }
        if (rc)
            return 1;
        for (int f = 0; f < 2; f++)
            qsort(k[f].v, k[f].n, sizeof k[f].v[0], cmp_u32);
        uint64_t p50[2], p99[2];
        for (int f = 0; f < 2; f++) {
            p50[f] = pct_pair_ns(k[f].v, k[f].n, 0.50);
            p99[f] = pct_pair_ns(k[f].v, k[f].n, 0.99);
        }
        printf("SUMMARY acquire_release_fleet procs=%d keys=%d strategy=%s tokens=%u "
               "seconds=%g reps=%d p50_off_ns=%llu p50_on_ns=%llu delta_p50_ns=%lld "
               "p99_off_ns=%llu p99_on_ns=%llu\n",
               base.procs, base.keys, km_strategy_name(base.strategy), (unsigned)base.tokens,
               base.seconds, reps, (unsigned long long)p50[0], (unsigned long long)p50[1],
               (long long)p50[1] - (long long)p50[0], (unsigned long long)p99[0],
               (unsigned long long)p99[1]);
        free(k[0].v);
        free(k[1].v);
        return 0;
    }
    if (single)
        return run_scenario(&base, seq) ? 1 : 0;

    static const struct { int procs, keys, strategy; } matrix[] = {
        {1, 4, KM_STRATEGY_ROUND_ROBIN},  {1, 64, KM_STRATEGY_ROUND_ROBIN},
        {2, 4, KM_STRATEGY_ROUND_ROBIN},  {2, 64, KM_STRATEGY_ROUND_ROBIN},
        {1, 4, KM_STRATEGY_LEAST_BUSY},   {1, 4, KM_STRATEGY_WEIGHTED},
    };
    if (sets & SET_BASE) {
        for (size_t i = 0; i < sizeof matrix / sizeof matrix[0]; i++) {
            scenario sc = base;
            sc.procs = matrix[i].procs;
            sc.keys = matrix[i].keys;
            sc.strategy = matrix[i].strategy;
            if (run_scenario(&sc, seq++))
                rc = 1;
        }
    }
    if (sets & SET_STRATEGIES) {
        /* procs 1, every strategy x pool size; --short: the two ends only. */
        static const int keys_full[] = {4, 64, 1024}, keys_short[] = {4, 1024};
        const int *keys = shortrun ? keys_short : keys_full;
        size_t n_keys = shortrun ? 2 : 3;
        for (int st = 1; st < KM_STRATEGY_COUNT; st++) {
            for (size_t i = 0; i < n_keys; i++) {
                scenario sc = base;
                sc.procs = 1;
                sc.keys = keys[i];
                sc.strategy = st;
                if (shortrun && set_seconds == 0)
                    sc.seconds = 0.3;
                if (run_scenario(&sc, seq++))
                    rc = 1;
            }
        }
    }
    return rc;
}
