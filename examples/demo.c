/*
 * examples/demo.c - a prefork worker pool sharing one KeyMesh segment.
 *
 *   demo SEGMENT [WORKERS [SECONDS [POOL]]]     (defaults: 4, 4, openai)
 *
 * The parent forks WORKERS processes, as gunicorn or php-fpm would.  Each
 * worker attaches with km_open() and, until SECONDS have passed, loops:
 *   - acquire a key with a random token estimate (100..599);
 *   - "call the provider": sleep 2..6 ms (no HTTP is sent);
 *   - release with a simulated outcome: ~3% 429 with Retry-After 1 s,
 *     ~2% transient 5xx failure, otherwise success with an actual token count
 *     of 70..110% of the estimate;
 *   - on KM_EAGAIN sleep until lease.retry_at_ns (at most 250 ms).
 * Demand is far above what the keys allow, so the limits decide.  At the end
 * the parent prints what its workers saw, per key and per worker, and checks
 * each request limit against the inequality it promises (README, "Limit
 * semantics") over the span between the first and the last admission.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"

#define MAX_KEYS 64
#define MAX_WORKERS 64

/* What one worker saw of one key.  Each worker writes only its own row. */
typedef struct seen {
    uint64_t leases, ok, r429, fail, tokens;
    uint64_t first_ns, last_ns; /* first and last admission */
} seen;

typedef struct wstat {
    int pid;
    int err;            /* km error that stopped the worker, 0 if none */
    uint64_t eagain, unavail;
    uint64_t wait_ns;   /* time spent waiting for retry_at_ns */
    seen key[MAX_KEYS];
} wstat;

static uint64_t rnd_state;

static uint32_t rnd(void)
{
    /* xorshift64*: enough for a simulation. */
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (uint32_t)((rnd_state * UINT64_C(2685821657736338717)) >> 32);
}

static void sleep_until(uint64_t at_ns)
{
    struct timespec ts = {(time_t)(at_ns / 1000000000u),
                          (long)(at_ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static int worker(const char *seg, const char *pool_name, uint64_t deadline,
                  const int *members, uint32_t n_members, wstat *ws)
{
    km_env *env;
    int rc = km_open(seg, &env);

    ws->pid = (int)getpid();
    if (rc != KM_OK) {
        ws->err = rc;
        return 1;
    }
    int pool = km_pool_find(env, pool_name);
    if (pool < 0) {
        ws->err = pool;
        km_close(env);
        return 1;
    }
    rnd_state = (uint64_t)getpid() * UINT64_C(0x9e3779b97f4a7c15) ^ km_now_ns();

    for (uint64_t now = km_now_ns(); now < deadline; now = km_now_ns()) {
        km_request req = {.pool = pool, .strategy = KM_STRATEGY_DEFAULT,
                          .tokens = 100 + rnd() % 500};
        km_lease lease;

        rc = km_acquire(env, &req, &lease);
        if (rc == KM_EAGAIN || rc == KM_EUNAVAIL) {
            /* EAGAIN: a key may be admissible at retry_at_ns.  EUNAVAIL: no
             * key is usable without an operator; a real worker would fail the
             * request; the demo waits and tries again. */
            uint64_t until = now + 250000000u;
            if (rc == KM_EAGAIN) {
                ws->eagain++;
                if (lease.retry_at_ns > now && lease.retry_at_ns < until)
                    until = lease.retry_at_ns;
            } else {
                ws->unavail++;
            }
            if (until > deadline)
                until = deadline;
            sleep_until(until);
            ws->wait_ns += km_now_ns() - now;
            continue;
        }
        if (rc != KM_OK) {
            ws->err = rc;
            break;
        }

        seen *s = NULL;
        for (uint32_t i = 0; i < n_members; i++)
            if (members[i] == lease.key)
                s = &ws->key[i];

        /* "Call the provider". */
        struct timespec call = {0, (long)(2000000 + rnd() % 4000000)};
        nanosleep(&call, NULL);

        km_outcome out = {.kind = KM_OUT_SUCCESS, .latency_us = -1,
                          .tokens = -1, .retry_after_s = 0,
                          .input_tokens = -1, .output_tokens = -1};
        uint32_t u = rnd() % 100;
        if (u < 3) {
            out.kind = KM_OUT_RATE_LIMITED; /* 429, Retry-After: 1 */
            out.retry_after_s = 1.0;
        } else if (u < 5) {
            out.kind = KM_OUT_FAILURE;      /* 502 */
        } else {
            out.tokens = (int64_t)req.tokens * (70 + rnd() % 41) / 100;
        }
        rc = km_release(env, &lease, &out);
        if (rc != KM_OK && rc != KM_ESTALE) {
            ws->err = rc;
            break;
        }
        if (s) {
            s->leases++;
            s->ok += out.kind == KM_OUT_SUCCESS;
            s->r429 += out.kind == KM_OUT_RATE_LIMITED;
            s->fail += out.kind == KM_OUT_FAILURE;
            s->tokens += out.tokens >= 0 ? (uint64_t)out.tokens : lease.tokens;
            if (!s->first_ns)
                s->first_ns = lease.start_ns;
            s->last_ns = lease.start_ns;
        }
    }
    km_close(env);
    return ws->err ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: demo SEGMENT [WORKERS [SECONDS [POOL]]]\n");
        return 2;
    }
    const char *seg = argv[1];
    int n_workers = argc > 2 ? atoi(argv[2]) : 4;
    double seconds = argc > 3 ? atof(argv[3]) : 4;
    const char *pool_name = argc > 4 ? argv[4] : "openai";
    km_env *env;
    km_pool_info pi;
    int members[MAX_KEYS];
    uint32_t n_members;
    int rc;

    if (n_workers < 1 || n_workers > MAX_WORKERS || !(seconds > 0 && seconds < 3600)) {
        fprintf(stderr, "demo: want 1..%d workers and 0..3600 seconds\n", MAX_WORKERS);
        return 2;
    }
    /* The parent attaches too, to find the pool's keys and to read their
     * state at the end.  Children do not use this handle: each calls
     * km_open() itself after fork. */
    if ((rc = km_open(seg, &env)) != KM_OK) {
        fprintf(stderr, "demo: km_open %s: %s\n", seg, km_strerror(rc));
        return 1;
    }
    int pool = km_pool_find(env, pool_name);
    if (pool < 0 || (rc = km_pool_info_get(env, pool, &pi)) != KM_OK) {
        fprintf(stderr, "demo: pool %s: %s\n", pool_name,
                km_strerror(pool < 0 ? pool : rc));
        km_close(env);
        return 1;
    }
    n_members = pi.n_keys < MAX_KEYS ? pi.n_keys : MAX_KEYS;
    for (uint32_t i = 0; i < n_members; i++)
        members[i] = km_pool_key(env, pool, (int)i);

    size_t len = (size_t)n_workers * sizeof(wstat);
    wstat *ws = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    if (ws == MAP_FAILED) {
        perror("demo: mmap");
        km_close(env);
        return 1;
    }
    memset(ws, 0, len);

    printf("demo: %d workers share pool '%s' (%u keys, strategy %s) for %g s\n",
           n_workers, pool_name, (unsigned)pi.n_keys, km_strategy_name(pi.strategy),
           seconds);
    fflush(stdout);
    uint64_t t_start = km_now_ns();
    uint64_t deadline = t_start + (uint64_t)(seconds * 1e9);
    int failed = 0;
    for (int w = 0; w < n_workers; w++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("demo: fork");
            failed = 1;
            break;
        }
        if (pid == 0)
            _exit(worker(seg, pool_name, deadline, members, n_members, &ws[w]));
    }
    for (;;) {
        int st;
        pid_t pid = wait(&st);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    double elapsed = (double)(km_now_ns() - t_start) / 1e9;

    /* Per key: what the workers saw, and what the segment says now. */
    uint64_t tot_leases = 0, tot_ok = 0, tot_429 = 0, tot_fail = 0, tot_eagain = 0;
    printf("\nper key (as seen by the workers; state from the segment now):\n");
    printf("  %-10s %-9s %7s %6s %5s %5s %8s   %s\n", "key", "state", "leases", "ok",
           "429", "5xx", "tokens", "request limit check");
    for (uint32_t i = 0; i < n_members; i++) {
        seen k = {0, 0, 0, 0, 0, 0, 0};
        km_key_info ki;
        for (int w = 0; w < n_workers; w++) {
            const seen *s = &ws[w].key[i];
            k.leases += s->leases;
            k.ok += s->ok;
            k.r429 += s->r429;
            k.fail += s->fail;
            k.tokens += s->tokens;
            if (s->first_ns && (!k.first_ns || s->first_ns < k.first_ns))
                k.first_ns = s->first_ns;
            if (s->last_ns > k.last_ns)
                k.last_ns = s->last_ns;
        }
        tot_leases += k.leases;
        tot_ok += k.ok;
        tot_429 += k.r429;
        tot_fail += k.fail;
        if (km_key_info_get(env, members[i], &ki) != KM_OK) {
            printf("  key %u: cannot read\n", (unsigned)members[i]);
            continue;
        }
        char check[160] = "no request limit";
        /* The tightest request limit: rpm, rph or rpd. */
        for (int w = KM_WIN_RPM; w <= KM_WIN_RPD; w++) {
            const km_limit_info *l = &ki.limits[w];
            double period = w == KM_WIN_RPM ? 60 : w == KM_WIN_RPH ? 3600 : 86400;
            double span = k.leases ? (double)(k.last_ns - k.first_ns) / 1e9 : 0;
            double bound;
            if (!l->limit)
                continue;
            if (l->mode == KM_MODE_SLIDING) {
                if (span >= period)
                    continue; /* the run spans more than one window */
                bound = (double)l->limit;
            } else {
                bound = span * (double)l->limit / period + (double)l->burst;
            }
            snprintf(check, sizeof check, "%s %s: %llu admitted <= %.1f allowed in %.2f s: %s",
                     km_window_name(w),
                     l->mode == KM_MODE_SLIDING ? "sliding" : "token_bucket",
                     (unsigned long long)k.leases, bound, span,
                     (double)k.leases <= bound ? "held" : "EXCEEDED");
            break;
        }
        printf("  %-10s %-9s %7llu %6llu %5llu %5llu %8llu   %s\n", ki.id,
               km_key_state_name(ki.state), (unsigned long long)k.leases,
               (unsigned long long)k.ok, (unsigned long long)k.r429,
               (unsigned long long)k.fail, (unsigned long long)k.tokens, check);
    }

    /* Per worker: every worker used every key - one pool, shared. */
    printf("\nper worker (leases on each key; KM_EAGAIN waits):\n  %-8s", "pid");
    for (uint32_t i = 0; i < n_members; i++) {
        km_key_info ki;
        printf(" %9.9s", km_key_info_get(env, members[i], &ki) == KM_OK ? ki.id : "?");
    }
    printf(" %8s %9s\n", "eagain", "waited_s");
    for (int w = 0; w < n_workers; w++) {
        printf("  %-8d", ws[w].pid);
        for (uint32_t i = 0; i < n_members; i++)
            printf(" %9llu", (unsigned long long)ws[w].key[i].leases);
        printf(" %8llu %9.2f\n", (unsigned long long)ws[w].eagain,
               (double)ws[w].wait_ns / 1e9);
        tot_eagain += ws[w].eagain;
        if (ws[w].err) {
            fprintf(stderr, "demo: worker %d: %s (%s)\n", ws[w].pid,
                    km_strerror(ws[w].err), km_err_name(ws[w].err));
            failed = 1;
        }
    }
    printf("\ntotal: %llu leases in %.2f s (%.0f/s): %llu ok, %llu 429, %llu 5xx; "
           "%llu KM_EAGAIN answers\n",
           (unsigned long long)tot_leases, elapsed, (double)tot_leases / elapsed,
           (unsigned long long)tot_ok, (unsigned long long)tot_429,
           (unsigned long long)tot_fail, (unsigned long long)tot_eagain);
    munmap(ws, len);
    km_close(env);
    return failed ? 1 : 0;
}
