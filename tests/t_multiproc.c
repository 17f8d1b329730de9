/*
 * tests/t_multiproc.c - six forked workers hammer one segment together.
 *
 * Each worker attaches with km_open, then for RUN_NS acquires from one of
 * five pools (tokens 1..500 from its own PRNG), sometimes holds the lease a
 * few microseconds, and releases it with a random outcome.  Every lease on a
 * limited pool is recorded (key, start_ns, estimate, actual tokens, outcome,
 * clock before and after km_release, cooldown_until after a 429) in a
 * MAP_SHARED anonymous mapping; the unlimited round-robin pool is counted per
 * key.  After the workers exit the parent checks:
 *
 *  (a) limits, per key and window, over EVERY interval of admission times
 *      (lease.start_ns is the `now` the admission used), cost = 1 per
 *      request, = actual tokens per token window (a CANCELLED lease costs 0):
 *        token_bucket: all pairs i <= j of sorted admissions:
 *                      sum(cost[i..j]) <= (t_j - t_i)*limit/period + burst
 *        sliding:      two pointers over every window [t, t+period]:
 *                      sum <= limit;  and, white-box, the GCRA bound that
 *                      proves it: sum(cost[i..j]) <= (t_j - t_i)/T + burst
 *  (b) every key's inflight == 0 (and abandoned == 0)
 *  (c) per key: acquired == recorded leases, outcomes[kind] == recorded
 *      releases of that kind, stale_releases == 0; every km_release was OK
 *  (d) no lease on a key starts inside a cooldown a RATE_LIMITED release set:
 *      the release ran between clock reads `before` and `after`, so the key
 *      must be cooling during [after, before + retry_after); a lease with
 *      start_ns in there is a violation.  Also cooldown_until read right
 *      after the release is >= before + retry_after.
 *  (e) the unlimited round-robin pool: each key's share within +-5% of the
 *      mean (relative).
 *  The limits must bind (KM_EAGAIN seen, sliding totals reach the limit),
 *  or the checks above would prove little.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "testlib.h"

#define US UINT64_C(1000)
#define PERIOD_MIN (60 * NS)

#define N_WORKERS 6
#ifdef KM_TEST_SANITIZER
#define RUN_NS (1500 * MS)
#else
#define RUN_NS (2000 * MS)
#endif
#define MAX_REC 20000   /* recorded leases per worker (limited pools) */
#define MAX_KEYS 16
#define RETRY_AFTER_S 0.05
#define RETRY_AFTER_NS (50 * MS)

enum { P_TB, P_SL, P_SR, P_RR, P_COUNT };
static const char *const pool_names[P_COUNT] = {"tb", "sl", "sr", "rr"};

/* Pools: tb token bucket with small bursts (the rate phase binds);
 * sl sliding with burst == limit, so the window total binds: on sl0 the
 * rpm (40 x at most 500 tokens fits its tpm), on sl1 the tpm (10000 tokens,
 * about 40 requests, far below its rpm) -- and no CANCELLED there, so every
 * lease costs exactly 1 request; sr sliding with small bursts (checks the
 * GCRA bound at the refill rate); rr unlimited. */
static const char *CFG =
    "{\"capacity\": {\"keys\": 16, \"processes\": 16, \"pools\": 4, \"inflight_per_key\": 16},"
    " \"pools\": ["
    "  {\"name\": \"tb\", \"strategy\": \"round_robin\", \"cooldown_s\": 1, \"max_cooldown_s\": 2,"
    "   \"max_failures\": 3,"
    "   \"limits\": {\"rpm\": {\"limit\": 6000, \"burst\": 30},"
    "              \"tpm\": {\"limit\": 1200000, \"burst\": 6000}},"
    "   \"keys\": [{\"id\": \"tb0\", \"secret\": \"sk-test-tb00\"}, {\"id\": \"tb1\", \"secret\": \"sk-test-tb11\"}]},"
    "  {\"name\": \"sl\", \"strategy\": \"least_busy\", \"cooldown_s\": 1, \"max_cooldown_s\": 2,"
    "   \"max_failures\": 3,"
    "   \"keys\": [{\"id\": \"sl0\", \"secret\": \"sk-test-sl00\", \"limits\": {"
    "                \"rpm\": {\"limit\": 40, \"mode\": \"sliding\", \"burst\": 40},"
    "                \"tpm\": {\"limit\": 20000, \"mode\": \"sliding\", \"burst\": 20000}}},"
    "              {\"id\": \"sl1\", \"secret\": \"sk-test-sl11\", \"limits\": {"
    "                \"rpm\": {\"limit\": 1000, \"mode\": \"sliding\", \"burst\": 1000},"
    "                \"tpm\": {\"limit\": 10000, \"mode\": \"sliding\", \"burst\": 10000}}}]},"
    "  {\"name\": \"sr\", \"strategy\": \"weighted\", \"cooldown_s\": 1, \"max_cooldown_s\": 2,"
    "   \"max_failures\": 3,"
    "   \"limits\": {\"rpm\": {\"limit\": 6000, \"mode\": \"sliding\", \"burst\": 30},"
    "              \"tpm\": {\"limit\": 600000, \"mode\": \"sliding\", \"burst\": 3000}},"
    "   \"keys\": [{\"id\": \"sr0\", \"secret\": \"sk-test-sr00\", \"weight\": 1},"
    "              {\"id\": \"sr1\", \"secret\": \"sk-test-sr11\", \"weight\": 2}]},"
    "  {\"name\": \"rr\", \"strategy\": \"round_robin\", \"keys\": ["
    "    {\"id\": \"rr0\", \"secret\": \"sk-test-rr00\"}, {\"id\": \"rr1\", \"secret\": \"sk-test-rr11\"},"
    "    {\"id\": \"rr2\", \"secret\": \"sk-test-rr22\"}, {\"id\": \"rr3\", \"secret\": \"sk-test-rr33\"}]}"
    " ]}";

typedef struct rec {
    uint64_t start_ns;       /* lease.start_ns */
    uint64_t before, after;  /* clock around km_release */
    uint64_t cooldown_until; /* read right after a RATE_LIMITED release */
    int key;
    uint32_t est;            /* lease.tokens */
    uint32_t actual;         /* tokens the limits must count (0 if CANCELLED) */
    int16_t kind;
    int16_t rel_rc;
} rec;

typedef struct worker {
    uint64_t n_rec, ops, admitted, eagain, other_err, rel_err, wrong_pool, overflow;
    int last_err;
    uint64_t rr_count[MAX_KEYS];
    uint64_t hammer_ns;      /* how long it actually ran */
    rec recs[MAX_REC];
} worker;

typedef struct shared {
    int ready;               /* workers attached */
    int go;                  /* set by the parent: start */
    uint64_t deadline;
    worker w[N_WORKERS];
} shared;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------- worker */

static int pools[P_COUNT];

static void run_worker(shared *sh, int wi)
{
    worker *w = &sh->w[wi];
    km_env *env = NULL;
    uint64_t seed = 0x1234567ull * (uint64_t)(wi + 1), now, t0;
    int rc = km_open(seg, &env);

    if (rc != KM_OK) {
        fprintf(stderr, "# worker %d: km_open: %s\n", wi, km_err_name(rc));
        _exit(3);
    }
    __atomic_add_fetch(&sh->ready, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&sh->go, __ATOMIC_ACQUIRE))
        ;
    t0 = km_now_ns();
    while ((now = km_now_ns()) < sh->deadline) {
        uint64_t r = splitmix(&seed);
        int p = (int)(r % 8) < 2 ? P_RR : (int)(r % 8) < 5 ? P_TB : (int)(r % 8) < 6 ? P_SL : P_SR;
        km_request req = {.pool = pools[p], .strategy = KM_STRATEGY_DEFAULT,
                          .tokens = (uint32_t)(splitmix(&seed) % 500) + 1};
        km_lease l;
        km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = -1, .tokens = -1, .retry_after_s = 0};

        w->ops++;
        rc = km_acquire(env, &req, &l);
        if (rc == KM_EAGAIN) {
            w->eagain++;
            continue;
        }
        if (rc != KM_OK) {
            w->other_err++;
            w->last_err = rc;
            continue;
        }
        w->admitted++;
        if (l.pool != pools[p])
            w->wrong_pool++;
        if (p == P_RR) {
            if (l.key < MAX_KEYS)
                w->rr_count[l.key]++;
            if (km_release(env, &l, &o) != KM_OK)
                w->rel_err++;
            continue;
        }
        /* Hold half of the leases 2..50 us, so reservations overlap. */
        r = splitmix(&seed);
        if (r % 2 == 0) {
            uint64_t until = km_now_ns() + (r >> 8) % (48 * US) + 2 * US;
            while (km_now_ns() < until)
                ;
        }
        rec *x = w->n_rec < MAX_REC ? &w->recs[w->n_rec++] : NULL;
        uint32_t x_pct = (uint32_t)(splitmix(&seed) % 100), actual = l.tokens;
        if (x_pct < 85) {
            o.tokens = l.tokens; /* actual == estimate */
        } else if (x_pct < 90) {
            actual = l.tokens ? (uint32_t)(splitmix(&seed) % l.tokens) : 0;
            o.tokens = actual; /* refund */
        } else if (x_pct < 95) {
            o.kind = KM_OUT_RATE_LIMITED;
            o.retry_after_s = RETRY_AFTER_S;
            o.tokens = l.tokens;
        } else if (x_pct < 98) {
            o.kind = KM_OUT_FAILURE; /* tokens -1: the estimate */
        } else if (p != P_SL) {
            o.kind = KM_OUT_CANCELLED;
            actual = 0;
        } else {
            o.tokens = l.tokens;
        }
        uint64_t before = km_now_ns();
        rc = km_release(env, &l, &o);
        uint64_t after = km_now_ns();
        if (rc != KM_OK)
            w->rel_err++;
        if (!x) {
            w->overflow++;
            continue;
        }
        x->start_ns = l.start_ns;
        x->before = before;
        x->after = after;
        x->key = l.key;
        x->est = l.tokens;
        x->actual = actual;
        x->kind = (int16_t)o.kind;
        x->rel_rc = (int16_t)rc;
        x->cooldown_until = 0;
        if (o.kind == KM_OUT_RATE_LIMITED) {
            km_key_info ki;
            if (km_key_info_get(env, l.key, &ki) == KM_OK)
                x->cooldown_until = ki.cooldown_until_ns;
        }
    }
    w->hammer_ns = km_now_ns() - t0;
    km_close(env);
    _exit(0);
}

/* --------------------------------------------------------------- checks */

typedef struct adm {
    uint64_t t;
    uint64_t cost;
} adm;

static int adm_cmp(const void *a, const void *b)
{
    const adm *x = a, *y = b;
    return x->t < y->t ? -1 : x->t > y->t;
}

/* token_bucket: every pair i <= j.  Returns violations; *worst gets the
 * largest sum - bound (in units), with its sum and bound. */
static uint64_t check_tb(const adm *a, size_t n, uint64_t limit, uint64_t burst,
                         double *worst, uint64_t *w_sum, double *w_bound)
{
    uint64_t v = 0;
    *worst = -1e300;
    *w_sum = 0;
    *w_bound = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned __int128 sum = 0;
        for (size_t j = i; j < n; j++) {
            sum += a[j].cost;
            unsigned __int128 lhs = sum * PERIOD_MIN;
            unsigned __int128 rhs = (unsigned __int128)(a[j].t - a[i].t) * limit +
                                    (unsigned __int128)burst * PERIOD_MIN;
            double bound = (double)(a[j].t - a[i].t) * (double)limit / (double)PERIOD_MIN + (double)burst;
            if (lhs > rhs)
                v++;
            if ((double)sum - bound > *worst) {
                *worst = (double)sum - bound;
                *w_sum = (uint64_t)sum;
                *w_bound = bound;
            }
        }
    }
    return v;
}

/* GCRA bound with emission T: sum(cost[i..j])*T <= (t_j - t_i) + burst*T. */
static uint64_t check_gcra(const adm *a, size_t n, uint64_t T, uint64_t burst, double *worst)
{
    uint64_t v = 0;
    *worst = -1e300;
    for (size_t i = 0; i < n; i++) {
        unsigned __int128 sum = 0;
        for (size_t j = i; j < n; j++) {
            sum += a[j].cost;
            if (sum * T > (unsigned __int128)(a[j].t - a[i].t) + (unsigned __int128)burst * T)
                v++;
            double ex = (double)sum - ((double)(a[j].t - a[i].t) / (double)T + (double)burst);
            if (ex > *worst)
                *worst = ex;
        }
    }
    return v;
}

/* sliding: every window [t_i, t_i + period]; returns violations, *max_sum
 * the largest window total. */
static uint64_t check_sliding(const adm *a, size_t n, uint64_t limit, uint64_t *max_sum)
{
    uint64_t v = 0, sum = 0;
    size_t j = 0;
    *max_sum = 0;
    for (size_t i = 0; i < n; i++) {
        while (j < n && a[j].t <= a[i].t + PERIOD_MIN)
            sum += a[j++].cost;
        if (sum > limit)
            v++;
        if (sum > *max_sum)
            *max_sum = sum;
        sum -= a[i].cost;
    }
    return v;
}

static uint64_t T_of(const km_limit_info *li, int mode)
{
    if (mode == KM_MODE_TOKEN_BUCKET)
        return (PERIOD_MIN + li->limit - 1) / li->limit;
    return PERIOD_MIN / (li->limit + 1 - li->burst) + 1;
}

int main(void)
{
    km_env *env = NULL;
    shared *sh;
    pid_t pids[N_WORKERS];
    int n_keys_of[P_COUNT];
    int keys_of[P_COUNT][MAX_KEYS];

    fixtures_init("multiproc");

    /* plan: workers 6; totals 6; per limited key (6): 2 windows x 1 (tb) or
     * 2 windows x 2 (sliding) + binding 1; per key (10): 10 counter checks;
     * cooldown 2; rr shares 4; n_procs 1 */
    plan(N_WORKERS + 6 + (2 * 2 + 4 * 4) + 6 + 10 * 10 + 2 + 4 + 1);

    env = mkseg(CFG);
    for (int p = 0; p < P_COUNT; p++) {
        pools[p] = km_pool_find(env, pool_names[p]);
        if (pools[p] < 0)
            bail_out("pool %s: %s", pool_names[p], km_err_name(pools[p]));
        n_keys_of[p] = 0;
        for (int i = 0;; i++) {
            int k = km_pool_key(env, pools[p], i);
            if (k < 0)
                break;
            if (k >= MAX_KEYS)
                bail_out("key index %d >= MAX_KEYS", k);
            keys_of[p][n_keys_of[p]++] = k;
        }
    }

    sh = mmap(NULL, sizeof(shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        bail_out("mmap: %s", strerror(errno));
    memset(sh, 0, sizeof *sh);

    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < N_WORKERS; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            bail_out("fork: %s", strerror(errno));
        if (pids[i] == 0)
            run_worker(sh, i);
    }
    {
        uint64_t limit = km_now_ns() + 10 * NS;
        while (__atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST) < N_WORKERS && km_now_ns() < limit)
            usleep(1000);
        sh->deadline = km_now_ns() + RUN_NS;
        __atomic_store_n(&sh->go, 1, __ATOMIC_RELEASE);
    }
    for (int i = 0; i < N_WORKERS; i++) {
        int st = 0;
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
            ;
        is_int(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), 0,
               "worker %d exit status (128+N: killed by signal N)", i);
    }

    /* ---- totals */
    uint64_t ops = 0, admitted = 0, eagain = 0, other = 0, rel_err = 0, wrong = 0, ovf = 0, nrec = 0;
    for (int i = 0; i < N_WORKERS; i++) {
        worker *w = &sh->w[i];
        diag("worker %d: %" PRIu64 " ops, %" PRIu64 " admitted, %" PRIu64 " EAGAIN in %.3f s",
             i, w->ops, w->admitted, w->eagain, (double)w->hammer_ns / 1e9);
        ops += w->ops;
        admitted += w->admitted;
        eagain += w->eagain;
        other += w->other_err;
        rel_err += w->rel_err;
        wrong += w->wrong_pool;
        ovf += w->overflow;
        nrec += w->n_rec;
        if (w->other_err)
            diag("worker %d: %" PRIu64 " other acquire errors, last %s", i, w->other_err, km_err_name(w->last_err));
    }
    diag("total: %" PRIu64 " ops, %" PRIu64 " admitted, %" PRIu64 " EAGAIN, %" PRIu64 " recorded leases",
         ops, admitted, eagain, nrec);
    cmp_u64(ops, ">", 0, "workers ran");
    is_u64(other, 0, "no acquire error other than EAGAIN");
    is_u64(rel_err, 0, "every km_release returned OK");
    is_u64(wrong, 0, "every lease from the requested pool");
    is_u64(ovf, 0, "every limited-pool lease recorded (MAX_REC %d per worker)", MAX_REC);
    cmp_u64(eagain, ">", 0, "limits bind: EAGAIN answers seen");

    /* ---- gather records per key */
    size_t cap = (size_t)nrec + 1;
    adm *req = malloc(cap * sizeof *req), *tok = malloc(cap * sizeof *tok);
    if (!req || !tok)
        bail_out("malloc");

    for (int p = P_TB; p <= P_SR; p++) {
        for (int kk = 0; kk < n_keys_of[p]; kk++) {
            int key = keys_of[p][kk];
            km_key_info ki;
            size_t n = 0;
            uint64_t tok_total = 0, req_total = 0;

            km_key_info_get(env, key, &ki);
            for (int i = 0; i < N_WORKERS; i++)
                for (uint64_t r = 0; r < sh->w[i].n_rec; r++) {
                    const rec *x = &sh->w[i].recs[r];
                    if (x->key != key)
                        continue;
                    req[n].t = tok[n].t = x->start_ns;
                    req[n].cost = x->kind == KM_OUT_CANCELLED ? 0 : 1;
                    tok[n].cost = x->actual;
                    req_total += req[n].cost;
                    tok_total += tok[n].cost;
                    n++;
                }
            qsort(req, n, sizeof *req, adm_cmp);
            qsort(tok, n, sizeof *tok, adm_cmp);
            for (int wdx = 0; wdx < 2; wdx++) {
                int win = wdx == 0 ? KM_WIN_RPM : KM_WIN_TPM;
                const km_limit_info *li = &ki.limits[win];
                const adm *a = wdx == 0 ? req : tok;
                uint64_t T = T_of(li, li->mode);
                if (li->mode == KM_MODE_TOKEN_BUCKET) {
                    double worst, bound;
                    uint64_t wsum, v = check_tb(a, n, li->limit, li->burst, &worst, &wsum, &bound);
                    diag("%s %s token_bucket limit %" PRIu64 " burst %" PRIu64 ": %zu leases; tightest interval "
                         "%" PRIu64 " vs bound %.1f", ki.id, km_window_name(win), li->limit, li->burst, n, wsum, bound);
                    is_u64(v, 0, "%s %s token_bucket: intervals over the bound (worst: %" PRIu64 " admitted vs %.1f)",
                           ki.id, km_window_name(win), wsum, bound);
                } else {
                    uint64_t max_sum, v = check_sliding(a, n, li->limit, &max_sum);
                    double worst;
                    diag("%s %s sliding limit %" PRIu64 " burst %" PRIu64 ": %zu leases; max window total %" PRIu64,
                         ki.id, km_window_name(win), li->limit, li->burst, n, max_sum);
                    is_u64(v, 0, "%s %s sliding: windows of one period over the limit (max %" PRIu64 " vs %" PRIu64 ")",
                           ki.id, km_window_name(win), max_sum, li->limit);
                    uint64_t vg = check_gcra(a, n, T, li->burst, &worst);
                    is_u64(vg, 0, "%s %s sliding: GCRA bound sum <= dt/T + burst, T = %" PRIu64
                           " ns (worst excess %.2f)", ki.id, km_window_name(win), T, worst);
                }
            }
            /* the limits must actually bind */
            if (p == P_SL) {
                const km_limit_info *r = &ki.limits[KM_WIN_RPM], *t = &ki.limits[KM_WIN_TPM];
                if (r->limit == 40)
                    is_u64(n, r->limit, "%s: the rpm limit binds exactly (leases == limit)", ki.id);
                else
                    ok(tok_total + 500 > t->limit, "%s: the tpm limit binds: %" PRIu64
                       " tokens within 500 of the limit %" PRIu64, ki.id, tok_total, t->limit);
            } else {
                uint64_t b = ki.limits[KM_WIN_RPM].burst;
                ok(req_total > b + 5, "%s: rate phase exercised, %" PRIu64 " requests > burst %" PRIu64 " + 5",
                   ki.id, req_total, b);
            }
        }
    }

    /* ---- (b) (c) counters per key */
    for (int p = 0; p < P_COUNT; p++) {
        for (int kk = 0; kk < n_keys_of[p]; kk++) {
            int key = keys_of[p][kk];
            km_key_info ki;
            uint64_t n = 0, by_kind[KM_OUT_COUNT] = {0};
            km_key_info_get(env, key, &ki);
            for (int i = 0; i < N_WORKERS; i++) {
                if (p == P_RR) {
                    n += sh->w[i].rr_count[key];
                    by_kind[KM_OUT_SUCCESS] += sh->w[i].rr_count[key];
                    continue;
                }
                for (uint64_t r = 0; r < sh->w[i].n_rec; r++)
                    if (sh->w[i].recs[r].key == key) {
                        n++;
                        by_kind[sh->w[i].recs[r].kind]++;
                    }
            }
            is_u64(ki.acquired, n, "%s: acquired == recorded leases", ki.id);
            for (int k = 0; k < KM_OUT_COUNT; k++)
                is_u64(ki.outcomes[k], by_kind[k], "%s: outcomes[%s] == recorded", ki.id, km_outcome_name(k));
            is_int(ki.inflight, 0, "%s: inflight 0 after the workers exited", ki.id);
            is_u64(ki.stale_releases, 0, "%s: no stale releases", ki.id);
            is_u64(ki.abandoned, 0, "%s: nothing abandoned", ki.id);
        }
    }

    /* ---- (d) cooldowns */
    {
        uint64_t n_rl = 0, short_cd = 0, viol = 0;
        for (int i = 0; i < N_WORKERS; i++)
            for (uint64_t r = 0; r < sh->w[i].n_rec; r++) {
                const rec *x = &sh->w[i].recs[r];
                if (x->kind != KM_OUT_RATE_LIMITED || x->rel_rc != KM_OK)
                    continue;
                n_rl++;
                /* 1 us slack for the double -> ns conversion of 0.05 s */
                uint64_t must_until = x->before + RETRY_AFTER_NS - US;
                if (x->cooldown_until < must_until) {
                    if (short_cd++ < 3)
                        diag("429 on key %u released in [%" PRIu64 ", %" PRIu64 "]: cooldown_until %" PRIu64
                             " < %" PRIu64, x->key, x->before, x->after, x->cooldown_until, must_until);
                }
                for (int j = 0; j < N_WORKERS; j++)
                    for (uint64_t s = 0; s < sh->w[j].n_rec; s++) {
                        const rec *y = &sh->w[j].recs[s];
                        if (y->key == x->key && y->start_ns >= x->after && y->start_ns < must_until) {
                            if (viol++ < 3)
                                diag("lease on key %u started at %" PRIu64 ", %.3f ms after a 429 release "
                                     "(cooling until >= %" PRIu64 ")", y->key, y->start_ns,
                                     (double)(y->start_ns - x->after) / 1e6, must_until);
                        }
                    }
            }
        diag("%" PRIu64 " RATE_LIMITED releases checked", n_rl);
        is_u64(short_cd, 0, "cooldown_until after a 429 >= release time + retry_after (%" PRIu64 " 429s)", n_rl);
        is_u64(viol, 0, "no lease starts inside a 429 cooldown of its key");
    }

    /* ---- (e) round robin shares */
    {
        uint64_t cnt[MAX_KEYS] = {0}, total = 0;
        int n = n_keys_of[P_RR];
        for (int kk = 0; kk < n; kk++) {
            for (int i = 0; i < N_WORKERS; i++)
                cnt[kk] += sh->w[i].rr_count[keys_of[P_RR][kk]];
            total += cnt[kk];
        }
        double mean = (double)total / n;
        for (int kk = 0; kk < n; kk++)
            ok(mean > 0 && cnt[kk] >= mean * 0.95 && cnt[kk] <= mean * 1.05,
               "round_robin under 6 workers: key %d got %" PRIu64 ", within +-5%% of the mean %.1f",
               kk, cnt[kk], mean);
    }

    {
        km_info info;
        km_info_get(env, &info);
        is_int(info.n_procs, 1, "all workers detached: n_procs == 1");
    }

    free(req);
    free(tok);
    munmap(sh, sizeof *sh);
    rmseg(env);
    return exit_status();
}
