/*
 * bench/cmp_latency.c - KeyMesh side by side with what users would otherwise
 * use: acquire + release latency and throughput, and the cost of a blocking
 * acquire's wake-up.
 *
 * Implementations (--impls), every one with the same pool semantics (round
 * robin, rpm + tpm token-bucket limits, cooldown, in-flight; see
 * bench/README.md, "What each baseline implements"):
 *   keymesh    libkeymesh: one segment, lock-free acquire/release; run with
 *              every strategy (--strategies), the baselines with round robin;
 *   mutex      bench/baselines/mutex_pool.c: a table in a shared mapping
 *              behind one robust process-shared pthread mutex;
 *   redis      bench/baselines/redis_pool.{c,lua}: Debian's redis-server,
 *              started here on 127.0.0.1 on a free port with persistence off
 *              and stopped by its pid, one Lua script per acquire and per
 *              release through hiredis (EVALSHA), one connection per worker;
 *   py_thread  bench/baselines/pypool.py --variant thread: a pool per
 *              process behind a threading.Lock (limits not shared);
 *   py_mp      bench/baselines/pypool.py --variant mp: one pool in shared
 *              memory behind a multiprocessing.Lock.
 * The Python pools are compared with KeyMesh's C acquire + release (this is
 * not a benchmark of a Python binding of KeyMesh).
 *
 * For every pool size (--keys) and number of worker processes (--procs),
 * repetition r runs every implementation in turn (keymesh first), so the
 * competitors of one scenario run minutes apart at most, on the same
 * machine, in the same run.  Each worker loops acquire(tokens) + release
 * (SUCCESS, latency 1000 us, actual = estimate) until the deadline.
 *
 * What is timed: every pair, with one clock_gettime(CLOCK_MONOTONIC) after
 * it; a pair's time is the difference from the previous read (chained, so
 * each pair carries exactly one clock read, clock_ns, for every
 * implementation).  Percentiles (nearest rank, histogram of 0.2 %
 * resolution) are over every pair of every worker and every repetition.
 * Unlike bench_acquire (batch means of 64 pairs), a preemption shows in full
 * in the pair it hits: that is the point of p99.9 at 32 processes on 2 cores.
 * ops_per_s: per repetition the sum over workers of pairs / own elapsed
 * time; the median over repetitions.  Ratios "how many times KeyMesh is
 * better" against keymesh round_robin of the same scenario:
 *   x_p50, x_p99, x_p999   impl percentile / keymesh percentile
 *   x_ops                  median over repetitions of keymesh ops_per_s /
 *                          impl ops_per_s of the same repetition
 *
 * Limits are on and never bind (rpm 10^9, tpm 10^12, as bench_acquire), so
 * every pair charges both GCRA words and settles the token reservation;
 * max_inflight is procs + 4, cooldown_s 60.
 *
 * Wake-up (--wake, on by default): one key, max_inflight 1; a holder process
 * keeps the lease while a waiter blocks in km_acquire_wait() (mutex:
 * mp_acquire_wait(), a process-shared condition variable); once the waiter
 * is counted as sleeping and 200 us more have passed, the holder reads the
 * clock and releases; the waiter reads the clock when its acquire returns.
 * wake = that difference: the release with its wake system call, the
 * scheduler's wake-up and the waiter's acquire.
 *
 * Output, one line each:
 *   SUMMARY cmp_baseline clock_ns=NN loadavg_1m=F nproc=N
 *   SUMMARY cmp_latency impl=I strategy=S procs=N keys=K limits=on tokens=T
 *           seconds=S reps=R pairs=N p50_ns= p99_ns= p999_ns= ops_per_s=
 *           min_cpu_share= x_p50= x_p99= x_p999= x_ops=
 *   SUMMARY cmp_wake impl=I rounds=N p50_ns= p99_ns= p999_ns= max_ns= x_p50= x_p99=
 * min_cpu_share: the least CPU time / wall time of a worker while timed
 * (below 1 at procs > cores: the figures include waiting for a CPU, which is
 * the oversubscribed case being measured).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"
#include "baselines/cmp_common.h"
#include "baselines/mutex_pool.h"
#include "baselines/redis_pool.h"

#ifndef CMP_LUA_PATH
#define CMP_LUA_PATH "bench/baselines/redis_pool.lua"
#endif
#ifndef CMP_PYPOOL_PATH
#define CMP_PYPOOL_PATH "bench/baselines/pypool.py"
#endif

enum { IMPL_KEYMESH, IMPL_MUTEX, IMPL_REDIS, IMPL_PY_THREAD, IMPL_PY_MP, IMPL_COUNT };
static const char *const impl_names[IMPL_COUNT] = {"keymesh", "mutex", "redis", "py_thread",
                                                   "py_mp"};

#define MAX_LIST 16
#define MAX_VARIANTS (KM_STRATEGY_COUNT + IMPL_COUNT)

typedef struct opts {
    int impls[IMPL_COUNT]; /* 1: run it */
    int procs[MAX_LIST], n_procs;
    int keys[MAX_LIST], n_keys;
    int strategies[KM_STRATEGY_COUNT], n_strategies;
    double seconds;
    int reps;
    uint32_t tokens;
    int wake, wake_rounds, latency;
    const char *redis_exe, *lua, *python, *pypool;
} opts;

/* One thing measured in a scenario: an implementation, and for keymesh a
 * strategy. */
typedef struct variant {
    int impl, strategy;
    cmp_hist *hist;     /* merged over workers and repetitions */
    double *rate;       /* ops_per_s per repetition */
    double min_share;
    uint64_t pairs;
} variant;

/* Per worker, in the shared mapping. */
typedef struct wres {
    uint64_t pairs, elapsed_ns, cpu_ns;
    int err, pad;
} wres;
_Static_assert(sizeof(wres) == 32, "wres layout");

/* Parent <-> workers control block (anonymous shared mapping). */
typedef struct ctl {
    uint64_t deadline; /* CLOCK_MONOTONIC ns: stop; written before go */
    int ready;         /* workers attached: atomic add by each worker */
    int pad;
} ctl;

static char g_seg[64];
static pid_t g_parent;
static rp_server g_redis;

static void on_signal(int sig)
{
    if (getpid() == g_parent) {
        if (g_seg[0])
            shm_unlink(g_seg);
        if (g_redis.pid > 0)
            kill(g_redis.pid, SIGTERM);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static uint64_t cpu_time_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

/* ------------------------------------------------------------ the pools */

static mp_config pool_config(int keys, int procs)
{
    mp_config c = {.n_keys = (uint32_t)keys, .max_inflight = (uint32_t)procs + 4,
                   .rpm = 1000000000ull, .rpm_burst = 0, .tpm = 1000000000000ull,
                   .tpm_burst = 0, .cooldown_s = 60, .max_cooldown_s = 3600};
    return c;
}

/* The KeyMesh configuration: bench_acquire's, so both programs measure the
 * same pool (per-strategy weights, prices and latencies as described in
 * bench/README.md). */
static int km_make(int keys, int procs, int strategy, int seq, km_env **env)
{
    size_t cap = 4096 + (size_t)keys * 256;
    char *js = malloc(cap), err[256];
    size_t n = 0;
    km_config *cfg = NULL;
    int rc;

    if (!js)
        return KM_ENOMEM;
    n += (size_t)snprintf(js + n, cap - n,
                          "{\"capacity\": {\"keys\": %d, \"processes\": %d, \"pools\": 1, "
                          "\"inflight_per_key\": %d},\n \"pools\": [{\"name\": \"bench\", "
                          "\"strategy\": \"%s\", \"cooldown_s\": 60, \"max_cooldown_s\": 3600,\n"
                          "  \"limits\": {\"rpm\": 1000000000, \"tpm\": 1000000000000},\n"
                          "  \"keys\": [\n",
                          keys, procs + 8, procs + 4, km_strategy_name(strategy));
    for (int i = 0; i < keys; i++) {
        n += (size_t)snprintf(js + n, cap - n,
                              "   {\"id\": \"k%03d\", \"secret\": \"sk-bench-%08d\", "
                              "\"weight\": %d",
                              i, i, strategy == KM_STRATEGY_WEIGHTED ? 1 + i % 4 : 1);
        if (strategy == KM_STRATEGY_COST) {
            int r = (int)(((long)i * 4099 + keys / 2) % keys);
            n += (size_t)snprintf(js + n, cap - n,
                                  ", \"price\": {\"input_per_1k\": %.4f, "
                                  "\"output_per_1k\": %.4f}",
                                  0.0001 * (r + 1), 0.0002 * (r + 1));
        }
        n += (size_t)snprintf(js + n, cap - n, "}%s\n", i + 1 < keys ? "," : "");
    }
    n += (size_t)snprintf(js + n, cap - n, "  ]}]}\n");
    rc = km_config_parse(js, n, "cmp_latency", &cfg, err, sizeof err);
    free(js);
    if (rc != KM_OK) {
        fprintf(stderr, "cmp_latency: config: %s: %s\n", km_strerror(rc), err);
        return rc;
    }
    snprintf(g_seg, sizeof g_seg, "/km-cmp-%d-%d", (int)getpid(), seq);
    rc = km_create(g_seg, cfg, 0600, env);
    km_config_free(cfg);
    if (rc != KM_OK) {
        fprintf(stderr, "cmp_latency: km_create %s: %s\n", g_seg, km_strerror(rc));
        g_seg[0] = 0;
    }
    return rc;
}

static void km_drop(km_env **env)
{
    if (*env)
        km_close(*env);
    *env = NULL;
    if (g_seg[0])
        km_unlink(g_seg);
    g_seg[0] = 0;
}

/* Sum of acquired and success counters of the keymesh pool. */
static void km_counts(km_env *env, uint64_t *acq, uint64_t *ok)
{
    int pool = km_pool_find(env, "bench");
    km_pool_info pi;
    *acq = *ok = 0;
    if (pool < 0 || km_pool_info_get(env, pool, &pi) != KM_OK)
        return;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        km_key_info ki;
        int key = km_pool_key(env, pool, i);
        if (key < 0 || km_key_info_get(env, key, &ki) != KM_OK)
            return;
        *acq += ki.acquired;
        *ok += ki.outcomes[KM_OUT_SUCCESS];
    }
}

/* ------------------------------------------------------------ C workers */

typedef struct cenv {
    int impl, strategy, keys, procs;
    uint32_t tokens;
    mp_pool *mp;          /* mutex */
    const char *sha;      /* redis */
    uint64_t redis_base;  /* redis: clock origin */
} cenv;

static void c_worker(const cenv *ce, ctl *cb, int go_fd, wres *res, cmp_hist *h)
{
    km_env *env = NULL;
    rp_client *rc_ = NULL;
    int pool = 0, rc = 0;
    char b;

    if (ce->impl == IMPL_KEYMESH) {
        if ((rc = km_open(g_seg, &env)) != KM_OK)
            goto fail;
        pool = km_pool_find(env, "bench");
    } else if (ce->impl == IMPL_REDIS) {
        if (!(rc_ = rp_connect(g_redis.port, NULL, ce->sha))) {
            rc = -1;
            goto fail;
        }
    }
    __atomic_fetch_add(&cb->ready, 1, __ATOMIC_RELEASE); /* parent waits for all */
    if (read(go_fd, &b, 1) != 1) {                           /* blocks: no spinning */
        rc = -1;
        goto fail;
    }
    /* The parent wrote the deadline before the go bytes; read() orders it. */
    uint64_t deadline = cb->deadline;
    int per_key_latency = ce->strategy == KM_STRATEGY_LATENCY ||
                          ce->strategy == KM_STRATEGY_RELIABILITY;
    km_request req = {.pool = pool, .strategy = ce->strategy, .tokens = ce->tokens};
    km_outcome out = {.kind = KM_OUT_SUCCESS, .latency_us = 1000,
                      .tokens = (int64_t)ce->tokens, .input_tokens = -1,
                      .output_tokens = -1};
    km_lease lease;
    mp_lease ml;
    uint64_t cpu0 = cpu_time_ns(), pairs = 0;
    uint64_t first = cmp_now_ns(), prev = first, t = first;

    for (;;) {
        switch (ce->impl) {
        case IMPL_KEYMESH:
            if ((rc = km_acquire(env, &req, &lease)) != KM_OK)
                goto fail;
            if (per_key_latency)
                out.latency_us = 1000 + (int64_t)lease.key;
            if ((rc = km_release(env, &lease, &out)) != KM_OK)
                goto fail;
            break;
        case IMPL_MUTEX:
            if ((rc = mp_acquire(ce->mp, ce->tokens, &ml, NULL)) != MP_OK)
                goto fail;
            mp_release(ce->mp, &ml, MP_OUT_SUCCESS, (int64_t)ce->tokens, 1000, 0);
            break;
        case IMPL_REDIS:
            if ((rc = rp_acquire(rc_, ce->redis_base, ce->tokens, &ml, NULL)) != MP_OK)
                goto fail;
            if ((rc = rp_release(rc_, ce->redis_base, &ml, MP_OUT_SUCCESS,
                                 (int64_t)ce->tokens, 1000, 0)) != MP_OK)
                goto fail;
            break;
        }
        t = cmp_now_ns();
        cmp_hist_add(h, t - prev);
        prev = t;
        pairs++;
        if (t >= deadline)
            break;
    }
    res->pairs = pairs;
    res->elapsed_ns = t - first;
    res->cpu_ns = cpu_time_ns() - cpu0;
    if (env)
        km_close(env);
    rp_close(rc_);
    _exit(0);
fail:
    res->err = rc ? rc : -1;
    __atomic_fetch_add(&cb->ready, 1, __ATOMIC_RELEASE);
    if (env)
        km_close(env);
    rp_close(rc_);
    _exit(1);
}

/* Run one repetition of a C implementation: fork, start together, collect. */
static int run_c(const cenv *ce, double seconds, variant *v, int rep)
{
    size_t len = sizeof(ctl) + (size_t)ce->procs * (sizeof(wres) + sizeof(cmp_hist)) + 64;
    char *m = cmp_map_shared(len);
    int fds[2], rc = -1, failed = 0;
    pid_t *pids = calloc((size_t)ce->procs, sizeof(pid_t));

    if (!m || !pids || pipe(fds) != 0) {
        fprintf(stderr, "cmp_latency: out of resources\n");
        goto out;
    }
    ctl *cb = (ctl *)(void *)m;
    wres *res = (wres *)(void *)(m + 64);
    cmp_hist *hs = (cmp_hist *)(void *)(m + 64 + (size_t)ce->procs * sizeof(wres));
    int forked = 0;
    for (int p = 0; p < ce->procs; p++) {
        pids[p] = fork();
        if (pids[p] < 0) {
            perror("cmp_latency: fork");
            failed = 1;
            break;
        }
        if (pids[p] == 0) {
            close(fds[1]);
            c_worker(ce, cb, fds[0], &res[p], &hs[p]);
        }
        forked++;
    }
    close(fds[0]);
    while (__atomic_load_n(&cb->ready, __ATOMIC_ACQUIRE) < forked)
        cmp_sleep_ns(1000000);
    cb->deadline = cmp_now_ns() + (uint64_t)(seconds * 1e9);
    for (int p = 0; p < forked; p++)
        if (write(fds[1], "g", 1) != 1)
            failed = 1;
    close(fds[1]);
    for (int p = 0; p < forked; p++) {
        int st;
        while (waitpid(pids[p], &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failed = 1;
            fprintf(stderr, "cmp_latency: %s worker %d failed: %d (%s)\n",
                    impl_names[ce->impl], p, res[p].err,
                    ce->impl == IMPL_KEYMESH ? km_strerror(res[p].err) : "see above");
        }
    }
    if (failed)
        goto out;
    v->rate[rep] = 0;
    for (int p = 0; p < forked; p++) {
        cmp_hist_merge(v->hist, &hs[p]);
        v->pairs += res[p].pairs;
        if (res[p].elapsed_ns) {
            v->rate[rep] += (double)res[p].pairs * 1e9 / (double)res[p].elapsed_ns;
            double share = (double)res[p].cpu_ns / (double)res[p].elapsed_ns;
            if (share < v->min_share)
                v->min_share = share;
        }
    }
    rc = 0;
out:
    free(pids);
    if (m)
        munmap(m, len);
    return rc;
}

/* ------------------------------------------------------- Python workers */

static int run_py(const opts *o, int impl, int procs, int keys, variant *v, int rep)
{
    char dir[] = "/tmp/km-cmp-py-XXXXXX", prefix[64], a_procs[16], a_keys[16], a_sec[32],
         a_tok[16], a_inf[16], line[512];
    int fds[2], rc = -1;
    if (!mkdtemp(dir) || pipe(fds) != 0) {
        perror("cmp_latency: mkdtemp/pipe");
        return -1;
    }
    snprintf(prefix, sizeof prefix, "%s/s", dir);
    snprintf(a_procs, sizeof a_procs, "%d", procs);
    snprintf(a_keys, sizeof a_keys, "%d", keys);
    snprintf(a_sec, sizeof a_sec, "%g", o->seconds);
    snprintf(a_tok, sizeof a_tok, "%u", (unsigned)o->tokens);
    snprintf(a_inf, sizeof a_inf, "%d", procs + 4);
    pid_t pid = fork();
    if (pid < 0) {
        perror("cmp_latency: fork");
        goto out;
    }
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(o->python, o->python, o->pypool, "--variant",
              impl == IMPL_PY_THREAD ? "thread" : "mp", "--procs", a_procs, "--keys", a_keys,
              "--seconds", a_sec, "--tokens", a_tok, "--max-inflight", a_inf, "--out", prefix,
              (char *)NULL);
        perror("cmp_latency: exec python");
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    double ops = -1, share = 1;
    unsigned long long pairs = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *p = strstr(line, "PYRESULT ");
        if (p) {
            char *q;
            if ((q = strstr(p, " pairs=")))
                pairs = strtoull(q + 7, NULL, 10);
            if ((q = strstr(p, " ops_per_s=")))
                ops = strtod(q + 11, NULL);
            if ((q = strstr(p, " min_cpu_share=")))
                share = strtod(q + 15, NULL);
        }
    }
    if (f)
        fclose(f);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || ops < 0) {
        fprintf(stderr, "cmp_latency: %s failed (status %d)\n", impl_names[impl], st);
        goto out;
    }
    /* Read every worker's samples into the variant's histogram. */
    uint64_t n_read = 0;
    for (int w = 0; w < procs; w++) {
        char path[96];
        uint32_t buf[4096];
        size_t n;
        snprintf(path, sizeof path, "%s.%d", prefix, w);
        FILE *sf = fopen(path, "rb");
        if (!sf)
            goto out;
        while ((n = fread(buf, sizeof buf[0], sizeof buf / sizeof buf[0], sf)) > 0) {
            for (size_t i = 0; i < n; i++)
                cmp_hist_add(v->hist, buf[i]);
            n_read += n;
        }
        fclose(sf);
        unlink(path);
    }
    if (n_read != pairs) {
        fprintf(stderr, "cmp_latency: %s: %llu samples for %llu pairs\n", impl_names[impl],
                (unsigned long long)n_read, pairs);
        goto out;
    }
    v->rate[rep] = ops;
    v->pairs += pairs;
    if (share < v->min_share)
        v->min_share = share;
    rc = 0;
out:
    rmdir(dir);
    return rc;
}

/* ------------------------------------------------------------ scenarios */

static void print_variant(const opts *o, const variant *v, const variant *km, int procs,
                          int keys)
{
    double x_ops[1024];
    int n = 0;
    for (int r = 0; r < o->reps && r < 1024; r++)
        if (v->rate[r] > 0)
            x_ops[n++] = km->rate[r] / v->rate[r];
    double rates[1024];
    for (int r = 0; r < o->reps && r < 1024; r++)
        rates[r] = v->rate[r];
    double med = cmp_median(rates, o->reps < 1024 ? o->reps : 1024);
    uint64_t p50 = cmp_hist_pct(v->hist, 0.50), p99 = cmp_hist_pct(v->hist, 0.99),
             p999 = cmp_hist_pct(v->hist, 0.999);
    uint64_t k50 = cmp_hist_pct(km->hist, 0.50), k99 = cmp_hist_pct(km->hist, 0.99),
             k999 = cmp_hist_pct(km->hist, 0.999);
    printf("SUMMARY cmp_latency impl=%s strategy=%s procs=%d keys=%d limits=on tokens=%u "
           "seconds=%g reps=%d pairs=%llu p50_ns=%llu p99_ns=%llu p999_ns=%llu "
           "ops_per_s=%.0f min_cpu_share=%.2f x_p50=%.2f x_p99=%.2f x_p999=%.2f x_ops=%.2f\n",
           impl_names[v->impl], km_strategy_name(v->strategy), procs, keys,
           (unsigned)o->tokens, o->seconds, o->reps, (unsigned long long)v->pairs,
           (unsigned long long)p50, (unsigned long long)p99, (unsigned long long)p999, med,
           v->min_share, k50 ? (double)p50 / (double)k50 : 0,
           k99 ? (double)p99 / (double)k99 : 0, k999 ? (double)p999 / (double)k999 : 0,
           cmp_median(x_ops, n));
    fflush(stdout);
}

static int run_scenario(const opts *o, int procs, int keys, int *seq)
{
    variant vs[MAX_VARIANTS];
    int nv = 0, rc = 1;
    mp_config mc = pool_config(keys, procs);
    mp_pool *mp = NULL;
    size_t mp_len = mp_size((uint32_t)keys);
    rp_client *rcl = NULL;
    uint64_t redis_base = cmp_now_ns();
    memset(vs, 0, sizeof vs);
    /* keymesh round_robin first: the reference of every ratio. */
    vs[nv++] = (variant){.impl = IMPL_KEYMESH, .strategy = KM_STRATEGY_ROUND_ROBIN};
    for (int i = 0; i < o->n_strategies; i++)
        if (o->strategies[i] != KM_STRATEGY_ROUND_ROBIN)
            vs[nv++] = (variant){.impl = IMPL_KEYMESH, .strategy = o->strategies[i]};
    for (int im = IMPL_MUTEX; im < IMPL_COUNT; im++)
        if (o->impls[im])
            vs[nv++] = (variant){.impl = im, .strategy = KM_STRATEGY_ROUND_ROBIN};
    for (int i = 0; i < nv; i++) {
        vs[i].hist = calloc(1, sizeof(cmp_hist));
        vs[i].rate = calloc((size_t)o->reps, sizeof(double));
        vs[i].min_share = 1.0;
        if (!vs[i].hist || !vs[i].rate)
            goto out;
    }
    for (int r = 0; r < o->reps; r++) {
        for (int i = 0; i < nv; i++) {
            variant *v = &vs[i];
            cenv ce = {.impl = v->impl, .strategy = v->strategy, .keys = keys,
                       .procs = procs, .tokens = o->tokens, .redis_base = redis_base};
            int err = 0;
            uint64_t before = v->pairs, acq = 0, ok = 0;
            switch (v->impl) {
            case IMPL_KEYMESH: {
                /* A fresh segment per repetition and strategy (the
                 * configuration differs by strategy). */
                km_env *env = NULL;
                if (km_make(keys, procs, v->strategy, (*seq)++, &env) != KM_OK)
                    goto out;
                err = run_c(&ce, o->seconds, v, r);
                km_counts(env, &acq, &ok);
                km_drop(&env);
                break;
            }
            case IMPL_MUTEX:
                mp = cmp_map_shared(mp_len);
                if (!mp || mp_init(mp, &mc) != MP_OK)
                    goto out;
                ce.mp = mp;
                err = run_c(&ce, o->seconds, v, r);
                for (int k = 0; k < keys; k++) {
                    acq += mp->keys[k].acquired;
                    ok += mp->keys[k].success;
                }
                mp_destroy(mp);
                munmap(mp, mp_len);
                mp = NULL;
                break;
            case IMPL_REDIS:
                rcl = rp_connect(g_redis.port, o->lua, NULL);
                if (!rcl || rp_setup(rcl, &mc) != 0)
                    goto out;
                ce.sha = rp_sha(rcl);
                err = run_c(&ce, o->seconds, v, r);
                if (!err && rp_counts(rcl, (uint32_t)keys, &acq, &ok) != 0)
                    err = 1;
                rp_close(rcl);
                rcl = NULL;
                break;
            default: /* the Python pools check their own counters */
                err = run_py(o, v->impl, procs, keys, v, r);
                acq = ok = v->pairs - before;
                break;
            }
            /* Cross-check with the pool's own counters: every pair timed was
             * one acquire and one SUCCESS release, and nothing else. */
            if (!err && (acq != v->pairs - before || ok != acq)) {
                fprintf(stderr, "cmp_latency: %s: the pool counted %llu acquired, %llu "
                        "successes; the workers timed %llu pairs\n", impl_names[v->impl],
                        (unsigned long long)acq, (unsigned long long)ok,
                        (unsigned long long)(v->pairs - before));
                err = 1;
            }
            if (err) {
                fprintf(stderr, "cmp_latency: %s procs=%d keys=%d failed\n",
                        impl_names[v->impl], procs, keys);
                goto out;
            }
        }
    }
    for (int i = 0; i < nv; i++)
        print_variant(o, &vs[i], &vs[0], procs, keys);
    rc = 0;
out:
    rp_close(rcl);
    if (mp) {
        mp_destroy(mp);
        munmap(mp, mp_len);
    }
    for (int i = 0; i < nv; i++) {
        free(vs[i].hist);
        free(vs[i].rate);
    }
    return rc;
}

/* -------------------------------------------------------------- wake-up */

typedef struct wake_sh {
    uint64_t t0;    /* holder's clock just before its release */
    uint32_t held;  /* 1: the holder has the lease, the waiter may block */
    uint32_t round; /* rounds completed by the waiter */
    int err, pad;
    cmp_hist hist;  /* the waiter's wake-up times */
} wake_sh;

/* impl: IMPL_KEYMESH or IMPL_MUTEX.  0, or -1 after a message. */
static int run_wake(int impl, int rounds, cmp_hist *out)
{
    wake_sh *sh = cmp_map_shared(sizeof *sh);
    mp_config mc = pool_config(1, 1);
    mp_pool *mp = NULL;
    size_t mp_len = mp_size(1);
    km_env *env = NULL;
    pid_t pid[2] = {0, 0};
    int rc = -1, seq = 9999;

    if (!sh)
        return -1;
    mc.max_inflight = 1;
    if (impl == IMPL_KEYMESH) {
        char js[512], err[256];
        km_config *cfg = NULL;
        int n = snprintf(js, sizeof js,
                         "{\"capacity\": {\"keys\": 1, \"processes\": 8, \"pools\": 1, "
                         "\"inflight_per_key\": 1}, \"pools\": [{\"name\": \"bench\", "
                         "\"limits\": {\"rpm\": 1000000000, \"tpm\": 1000000000000}, "
                         "\"keys\": [{\"id\": \"k000\", \"secret\": \"sk-bench-00000000\"}]}]}");
        if (km_config_parse(js, (size_t)n, "cmp_wake", &cfg, err, sizeof err) != KM_OK) {
            fprintf(stderr, "cmp_latency: wake config: %s\n", err);
            goto out;
        }
        snprintf(g_seg, sizeof g_seg, "/km-cmp-%d-%d", (int)getpid(), seq);
        int r = km_create(g_seg, cfg, 0600, &env);
        km_config_free(cfg);
        if (r != KM_OK) {
            g_seg[0] = 0;
            fprintf(stderr, "cmp_latency: wake km_create: %s\n", km_strerror(r));
            goto out;
        }
    } else {
        mp = cmp_map_shared(mp_len);
        if (!mp || mp_init(mp, &mc) != MP_OK)
            goto out;
    }
    for (int role = 0; role < 2; role++) {
        pid[role] = fork();
        if (pid[role] < 0)
            goto out;
        if (pid[role] != 0)
            continue;
        km_env *e = NULL;
        int pool = 0;
        if (impl == IMPL_KEYMESH) {
            if (km_open(g_seg, &e) != KM_OK)
                _exit(1);
            pool = km_pool_find(e, "bench");
        }
        km_request req = {.pool = pool, .tokens = 100};
        km_outcome ok_out = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = 100,
                             .input_tokens = -1, .output_tokens = -1};
        km_lease kl;
        mp_lease ml;
        for (int i = 0; i < rounds; i++) {
            if (role == 0) { /* holder */
                while ((impl == IMPL_KEYMESH ? km_acquire(e, &req, &kl)
                                             : mp_acquire(mp, 100, &ml, NULL)) != 0)
                    sched_yield();
                __atomic_store_n(&sh->held, 1, __ATOMIC_RELEASE);
                /* Until the waiter is counted as sleeping ... */
                for (;;) {
                    uint32_t w = 0;
                    if (impl == IMPL_KEYMESH) {
                        km_pool_info pi;
                        if (km_pool_info_get(e, pool, &pi) == KM_OK)
                            w = pi.waiters;
                    } else {
                        /* written under the lock; an atomic load is a hint */
                        w = __atomic_load_n(&mp->waiters, __ATOMIC_ACQUIRE);
                    }
                    if (w)
                        break;
                    cmp_sleep_ns(20000);
                }
                cmp_sleep_ns(200000); /* ... and surely inside its futex wait */
                /* t0 is stored before the release: the waiter reads it after
                 * its acquire saw the release (locked instructions on both
                 * sides order it). */
                __atomic_store_n(&sh->t0, cmp_now_ns(), __ATOMIC_RELEASE);
                if (impl == IMPL_KEYMESH)
                    km_release(e, &kl, &ok_out);
                else
                    mp_release(mp, &ml, MP_OUT_SUCCESS, 100, 1000, 0);
                while (__atomic_load_n(&sh->round, __ATOMIC_ACQUIRE) <= (uint32_t)i)
                    sched_yield();
            } else { /* waiter */
                while (!__atomic_load_n(&sh->held, __ATOMIC_ACQUIRE))
                    sched_yield();
                int r = impl == IMPL_KEYMESH ? km_acquire_wait(e, &req, &kl, 5000)
                                             : mp_acquire_wait(mp, 100, &ml, 5000);
                uint64_t t1 = cmp_now_ns();
                if (r != 0) {
                    sh->err = r;
                    _exit(1);
                }
                cmp_hist_add(&sh->hist, t1 - __atomic_load_n(&sh->t0, __ATOMIC_ACQUIRE));
                if (impl == IMPL_KEYMESH)
                    km_release(e, &kl, &ok_out);
                else
                    mp_release(mp, &ml, MP_OUT_SUCCESS, 100, 1000, 0);
                __atomic_store_n(&sh->held, 0, __ATOMIC_RELAXED);
                /* held = 0 is ordered before the round by this release store */
                __atomic_store_n(&sh->round, (uint32_t)i + 1, __ATOMIC_RELEASE);
            }
        }
        if (e)
            km_close(e);
        _exit(0);
    }
    int failed = 0;
    for (int role = 0; role < 2; role++) {
        int st;
        while (waitpid(pid[role], &st, 0) < 0 && errno == EINTR)
            ;
        pid[role] = 0;
        failed |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    if (failed) {
        fprintf(stderr, "cmp_latency: wake %s failed (%d)\n", impl_names[impl], sh->err);
        goto out;
    }
    memcpy(out, &sh->hist, sizeof *out);
    rc = 0;
out:
    for (int role = 0; role < 2; role++)
        if (pid[role] > 0) {
            kill(pid[role], SIGKILL);
            waitpid(pid[role], NULL, 0);
        }
    km_drop(&env);
    if (mp) {
        mp_destroy(mp);
        munmap(mp, mp_len);
    }
    munmap(sh, sizeof *sh);
    return rc;
}

static int wake_all(int rounds)
{
    cmp_hist *h[2] = {calloc(1, sizeof(cmp_hist)), calloc(1, sizeof(cmp_hist))};
    int impls[2] = {IMPL_KEYMESH, IMPL_MUTEX}, rc = 1;
    if (!h[0] || !h[1])
        goto out;
    for (int i = 0; i < 2; i++)
        if (run_wake(impls[i], rounds, h[i]) != 0)
            goto out;
    for (int i = 0; i < 2; i++) {
        uint64_t p50 = cmp_hist_pct(h[i], 0.5), p99 = cmp_hist_pct(h[i], 0.99),
                 k50 = cmp_hist_pct(h[0], 0.5), k99 = cmp_hist_pct(h[0], 0.99);
        printf("SUMMARY cmp_wake impl=%s rounds=%d p50_ns=%llu p99_ns=%llu p999_ns=%llu "
               "max_ns=%llu x_p50=%.2f x_p99=%.2f\n",
               impl_names[impls[i]], rounds, (unsigned long long)p50,
               (unsigned long long)p99, (unsigned long long)cmp_hist_pct(h[i], 0.999),
               (unsigned long long)h[i]->max, k50 ? (double)p50 / (double)k50 : 0,
               k99 ? (double)p99 / (double)k99 : 0);
    }
    fflush(stdout);
    rc = 0;
out:
    free(h[0]);
    free(h[1]);
    return rc;
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr,
            "usage: cmp_latency [--short] [--seconds S] [--reps R] [--tokens N]\n"
            "                   [--procs 1,2,8,32] [--keys 4,64,1024]\n"
            "                   [--impls keymesh,mutex,redis,py_thread,py_mp]\n"
            "                   [--strategies all|round_robin,...] [--no-latency]\n"
            "                   [--no-wake] [--wake-rounds N] [--redis-server PATH]\n"
            "                   [--lua FILE] [--python PATH] [--pypool FILE]\n");
    exit(2);
}

/* Comma-separated positive integers. */
static int parse_ints(const char *s, int *out, int max, int hi)
{
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > hi || n == max || (*end && *end != ','))
            usage();
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    if (!n)
        usage();
    return n;
}

static int parse_strategy(const char *s, size_t len)
{
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        if (strlen(km_strategy_name(i)) == len && !strncmp(s, km_strategy_name(i), len))
            return i;
    fprintf(stderr, "cmp_latency: unknown strategy '%.*s'\n", (int)len, s);
    usage();
    return 0;
}

static void clock_baseline(void)
{
    double c[5];
    for (int r = 0; r < 5; r++) {
        uint64_t sink = 0, t0 = cmp_now_ns();
        for (int i = 0; i < 1000000; i++)
            sink += cmp_now_ns();
        c[r] = (double)(cmp_now_ns() - t0) / 1e6;
        __asm__ volatile("" : : "r"(sink));
    }
    /* The load average says whether something else ran on the machine. */
    double load = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = -1;
        fclose(f);
    }
    printf("SUMMARY cmp_baseline clock_ns=%.0f loadavg_1m=%.2f nproc=%ld\n", cmp_median(c, 5),
           load, sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"short", no_argument, NULL, 'q'},       {"seconds", required_argument, NULL, 'S'},
        {"reps", required_argument, NULL, 'r'},  {"tokens", required_argument, NULL, 't'},
        {"procs", required_argument, NULL, 'p'}, {"keys", required_argument, NULL, 'k'},
        {"impls", required_argument, NULL, 'i'}, {"strategies", required_argument, NULL, 's'},
        {"no-wake", no_argument, NULL, 'W'},     {"wake-rounds", required_argument, NULL, 'w'},
        {"no-latency", no_argument, NULL, 'L'},  {"redis-server", required_argument, NULL, 'R'},
        {"lua", required_argument, NULL, 'l'},   {"python", required_argument, NULL, 'P'},
        {"pypool", required_argument, NULL, 'y'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    opts o = {.n_procs = 4, .procs = {1, 2, 8, 32}, .n_keys = 3, .keys = {4, 64, 1024},
              .tokens = 100, .wake = 1, .latency = 1, .redis_exe = "redis-server",
              .lua = CMP_LUA_PATH, .python = "/usr/bin/python3", .pypool = CMP_PYPOOL_PATH};
    int shortrun = 0, c;
    for (int i = 0; i < IMPL_COUNT; i++)
        o.impls[i] = 1;
    for (int i = 1; i < KM_STRATEGY_COUNT; i++)
        o.strategies[o.n_strategies++] = i;

    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'q': shortrun = 1; break;
        case 'S': {
            char *end;
            o.seconds = strtod(optarg, &end);
            if (*end || !(o.seconds > 0 && o.seconds <= 3600))
                usage();
            break;
        }
        case 'r': {
            int v[1];
            parse_ints(optarg, v, 1, 1000);
            o.reps = v[0];
            break;
        }
        case 't': o.tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'p': o.n_procs = parse_ints(optarg, o.procs, MAX_LIST, 256); break;
        case 'k': o.n_keys = parse_ints(optarg, o.keys, MAX_LIST, 4096); break;
        case 'i': {
            memset(o.impls, 0, sizeof o.impls);
            for (const char *s = optarg; *s;) {
                size_t len = strcspn(s, ",");
                int found = 0;
                for (int i = 0; i < IMPL_COUNT; i++)
                    if (strlen(impl_names[i]) == len && !strncmp(s, impl_names[i], len))
                        o.impls[i] = found = 1;
                if (!found)
                    usage();
                s += len + (s[len] == ',');
            }
            break;
        }
        case 's':
            o.n_strategies = 0;
            if (!strcmp(optarg, "all")) {
                for (int i = 1; i < KM_STRATEGY_COUNT; i++)
                    o.strategies[o.n_strategies++] = i;
                break;
            }
            for (const char *s = optarg; *s;) {
                size_t len = strcspn(s, ",");
                if (o.n_strategies == KM_STRATEGY_COUNT)
                    usage();
                o.strategies[o.n_strategies++] = parse_strategy(s, len);
                s += len + (s[len] == ',');
            }
            break;
        case 'W': o.wake = 0; break;
        case 'w': {
            int v[1];
            parse_ints(optarg, v, 1, 1000000);
            o.wake_rounds = v[0];
            break;
        }
        case 'L': o.latency = 0; break;
        case 'R': o.redis_exe = optarg; break;
        case 'l': o.lua = optarg; break;
        case 'P': o.python = optarg; break;
        case 'y': o.pypool = optarg; break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    /* Explicit --seconds/--reps/--wake-rounds win over --short. */
    if (o.seconds == 0)
        o.seconds = shortrun ? 0.25 : 2;
    if (o.reps == 0)
        o.reps = shortrun ? 3 : 5;
    if (o.wake_rounds == 0)
        o.wake_rounds = shortrun ? 300 : 3000;

    g_parent = getpid();
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGPIPE, SIG_IGN);

    clock_baseline();
    int rc = 0, seq = 0;
    if (o.latency && o.impls[IMPL_REDIS] && rp_server_start(o.redis_exe, &g_redis) != 0)
        return 1;
    for (int k = 0; o.latency && k < o.n_keys; k++)
        for (int p = 0; p < o.n_procs; p++)
            if (run_scenario(&o, o.procs[p], o.keys[k], &seq))
                rc = 1;
    rp_server_stop(&g_redis);
    if (o.wake && wake_all(o.wake_rounds))
        rc = 1;
    return rc;
}
