/*
 * bench/goodput.c - does KeyMesh end 429 storms?  Goodput against a
 * simulated provider.
 *
 * The upstream: a table in shared memory, one entry per key with the key's
 * TRUE rpm and tpm limits, which every worker calls as it would call the
 * provider: it counts each request at its arrival, for all workers together
 * (a real provider counts per key, whoever sends), and answers 200, or 429
 * with a Retry-After (the time until that request would fit) when either
 * limit would be exceeded.  Each limit is a token bucket of the given rate
 * and burst, kept exactly (GCRA in integer ns, emission interval
 * 60 s / limit, which must divide evenly), under a robust process-shared
 * mutex per key (the referee; its cost stands in for the network).  Like
 * OpenAI's, it charges a request's prompt tokens plus its max_tokens
 * against tpm at arrival; a 429 is not charged.
 *
 * The workers (--procs, default 8) run a closed loop until the deadline
 * (--seconds, 30; 3 with --short): draw a request (prompt tokens lognormal,
 * median 400, sigma 1, clamped to 16..16000; max_tokens 256/512/1024/2048
 * with probabilities 0.4/0.3/0.2/0.1), acquire a key with that estimate
 * (prompt + max_tokens) by km_acquire_wait(), send it upstream, and then:
 *   200: hold the lease for the service time (uniform --latency-ms, 2..10
 *        ms), release SUCCESS with the tokens the provider counted;
 *   429: release RATE_LIMITED with the provider's Retry-After, and try the
 *        same request again (a new acquire).
 * Demand is above capacity by design (demand_x, printed: requests the
 * workers could send per second at the mean service time, over what the
 * keys' tpm admits at the mean request size).
 *
 * Modes (--modes, default both):
 *   keymesh  one segment shared by all workers;
 *   perproc  each worker its own private pool with the same limits (a
 *            KeyMesh segment per worker, so the limiter is the same code and
 *            only the sharing differs): what a Python library does under a
 *            prefork server, where each worker enforces the limits alone.
 *
 * Results per mode, one SUMMARY line:
 *   sent             requests that reached the upstream (attempts)
 *   upstream_ok      answered 200;  upstream_429: answered 429
 *   rate_429_pct     upstream_429 / sent
 *   capacity_used_pct  mean over keys of max(tokens accepted / token
 *                    capacity, requests accepted / request capacity), the
 *                    capacity of a limit over the run being
 *                    burst + rate * duration (the most the provider would
 *                    ever accept); tokens_used_pct and requests_used_pct:
 *                    the same summed over keys
 *   wait_p50_ms, wait_p99_ms, wait_p999_ms, wait_max_ms  time in
 *                    km_acquire_wait() per attempt that got a key (nearest
 *                    rank over all attempts of all workers)
 *   done             requests completed with a 200; timeouts: acquires
 *                    that timed out (2 s), retried; timeout_mean_tokens:
 *                    their mean size, against mean_tokens of all requests
 *   send_delay_p999_us, send_delay_max_us  from the admission (the clock
 *                    read inside the acquire, lease.start_ns) to the arrival
 *                    upstream: how far a preempted worker can push a request
 *                    past the time KeyMesh admitted it
 * --headroom-ms H (default 0) gives KeyMesh bursts smaller than the
 * provider's by what each limit refills in H ms, so arrivals delayed by up
 * to H ms after admission still fit; 0: exactly the provider's limits.
 * The run's duration is from the start signal to the deadline; no request
 * is sent after the deadline (a lease obtained after it is cancelled).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"
#include "baselines/cmp_common.h"

#define MINUTE_NS UINT64_C(60000000000)
#define MAX_KEYS 64
#define MAX_PROCS 256

enum { MODE_KEYMESH, MODE_PERPROC, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"keymesh", "perproc"};

typedef struct params {
    int procs, keys;
    double seconds;
    uint64_t rpm, rpm_burst, tpm, tpm_burst;
    uint32_t lat_min_ms, lat_max_ms;
    uint64_t seed;
    uint32_t headroom_ms; /* KeyMesh bursts this much below the provider's */
    int modes[MODE_COUNT];
} params;

/* One key at the simulated provider: the true limits, counted at arrival. */
typedef struct __attribute__((aligned(64))) up_key {
    pthread_mutex_t lock; /* robust, process-shared; guards the rest */
    uint64_t rtat, ttat;  /* GCRA words, ns */
    uint64_t ok, rejected, tokens_ok;
    uint64_t pad[1];
} up_key;
_Static_assert(sizeof(pthread_mutex_t) == 40, "glibc x86-64 mutex size");
_Static_assert(sizeof(up_key) == 128, "up_key layout");

typedef struct up_params {
    uint64_t rT, rtau, tT, ttau; /* ns per unit, tolerance */
} up_params;

/* Per worker results (written by the worker only, read after waitpid). */
typedef struct wres {
    uint64_t sent, ok, r429, done, timeouts, err;
    uint64_t timeout_tokens; /* sum of the sizes of the requests that timed out */
    uint64_t pad;
    cmp_hist wait; /* ns per acquire */
    cmp_hist send; /* ns from the admission (lease.start_ns) to the arrival upstream */
} wres;
_Static_assert(sizeof(wres) % 8 == 0, "wres layout");

typedef struct shared {
    uint64_t deadline; /* written before the go bytes */
    int ready;         /* workers attached: atomic add */
    int pad;
    up_key up[MAX_KEYS];
} shared;

static char g_seg[64];
static pid_t g_parent;

static void on_signal(int sig)
{
    if (getpid() == g_parent && g_seg[0])
        shm_unlink(g_seg);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* ------------------------------------------------------------ the upstream */

static void up_init(shared *sh, int keys)
{
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    for (int i = 0; i < keys; i++) {
        memset(&sh->up[i], 0, sizeof sh->up[i]);
        pthread_mutex_init(&sh->up[i].lock, &ma);
    }
    pthread_mutexattr_destroy(&ma);
}

/* Send a request of `cost` tokens on key k.  0: 200; else the Retry-After
 * in ns (> 0) for a 429.  Charged only when both limits admit it. */
static uint64_t up_send(shared *sh, const up_params *u, int k, uint64_t cost,
                        uint64_t *arrival)
{
    up_key *uk = &sh->up[k];
    if (pthread_mutex_lock(&uk->lock) == EOWNERDEAD)
        pthread_mutex_consistent(&uk->lock);
    uint64_t now = cmp_now_ns(); /* arrival, in lock order */
    *arrival = now;
    uint64_t r = (uk->rtat > now ? uk->rtat : now) + u->rT;
    uint64_t t = (uk->ttat > now ? uk->ttat : now) + cost * u->tT;
    uint64_t wait = 0;
    if (r - now > u->rtau)
        wait = r - u->rtau - now;
    if (t - now > u->ttau && t - u->ttau - now > wait)
        wait = t - u->ttau - now;
    if (wait) {
        uk->rejected++;
    } else {
        uk->rtat = r;
        uk->ttat = t;
        uk->ok++;
        uk->tokens_ok += cost;
    }
    pthread_mutex_unlock(&uk->lock);
    return wait;
}

/* --------------------------------------------------------------- requests */

static uint64_t rng_next(uint64_t *s) /* xorshift64* */
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

static double rng_unit(uint64_t *s) /* (0, 1) */
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

/* prompt + max_tokens of one request (see the head comment). */
static uint32_t draw_cost(uint64_t *s)
{
    double z = sqrt(-2 * log(rng_unit(s))) * cos(2 * M_PI * rng_unit(s));
    double prompt = exp(log(400.0) + 1.0 * z);
    if (prompt < 16)
        prompt = 16;
    if (prompt > 16000)
        prompt = 16000;
    double u = rng_unit(s);
    uint32_t max_tokens = u < 0.4 ? 256 : u < 0.7 ? 512 : u < 0.9 ? 1024 : 2048;
    return (uint32_t)prompt + max_tokens;
}

/* -------------------------------------------------------------- KeyMesh */

static int make_segment(const params *p, const char *name, int procs, km_env **env)
{
    char js[8192], err[256];
    /* With --headroom-ms H, KeyMesh's bursts are the provider's less what
     * the limit refills in H: arrivals delayed by up to H after admission
     * (a preempted worker, the network) then still fit the provider's
     * bucket (see bench/README.md, "Goodput"). */
    uint64_t hr_ns = (uint64_t)p->headroom_ms * 1000000u;
    uint64_t rb = p->rpm_burst - (hr_ns + MINUTE_NS / p->rpm - 1) / (MINUTE_NS / p->rpm);
    uint64_t tb = p->tpm_burst - (hr_ns + MINUTE_NS / p->tpm - 1) / (MINUTE_NS / p->tpm);
    size_t n = 0;
    km_config *cfg = NULL;
    n += (size_t)snprintf(js + n, sizeof js - n,
                          "{\"capacity\": {\"keys\": %d, \"processes\": %d, \"pools\": 1, "
                          "\"inflight_per_key\": %d},\n \"pools\": [{\"name\": \"gp\", "
                          "\"strategy\": \"round_robin\", \"cooldown_s\": 1, "
                          "\"max_cooldown_s\": 8,\n  \"limits\": {\"rpm\": {\"limit\": %llu, "
                          "\"burst\": %llu}, \"tpm\": {\"limit\": %llu, \"burst\": %llu}},\n"
                          "  \"keys\": [",
                          p->keys, procs + 8, procs + 4, (unsigned long long)p->rpm,
                          (unsigned long long)rb, (unsigned long long)p->tpm,
                          (unsigned long long)tb);
    for (int i = 0; i < p->keys; i++)
        n += (size_t)snprintf(js + n, sizeof js - n,
                              "{\"id\": \"k%03d\", \"secret\": \"sk-goodput-%04d\"}%s", i, i,
                              i + 1 < p->keys ? ", " : "]}]}\n");
    int rc = km_config_parse(js, n, "goodput", &cfg, err, sizeof err);
    if (rc != KM_OK) {
        fprintf(stderr, "goodput: config: %s\n", err);
        return rc;
    }
    rc = km_create(name, cfg, 0600, env);
    km_config_free(cfg);
    if (rc != KM_OK)
        fprintf(stderr, "goodput: km_create %s: %s\n", name, km_strerror(rc));
    return rc;
}

/* ---------------------------------------------------------------- workers */

static void worker(const params *p, int mode, int w, shared *sh, const up_params *u,
                   int go_fd, wres *res)
{
    km_env *env = NULL;
    char own[64];
    int rc;
    char b;

    if (mode == MODE_KEYMESH) {
        rc = km_open(g_seg, &env);
    } else {
        /* A private pool: this worker's own segment, unlinked at once (it
         * is mapped; nobody else should find it). */
        snprintf(own, sizeof own, "/km-gp-%d-w%d", (int)getpid(), w);
        rc = make_segment(p, own, 1, &env);
        if (rc == KM_OK)
            km_unlink(own);
    }
    __atomic_fetch_add(&sh->ready, 1, __ATOMIC_RELEASE);
    if (rc != KM_OK) {
        res->err = 1;
        _exit(1);
    }
    if (read(go_fd, &b, 1) != 1)
        _exit(1);
    uint64_t deadline = sh->deadline; /* written before the go bytes */
    uint64_t seed = p->seed * 1000003u + (uint64_t)w * 7919u + 1;
    int pool = km_pool_find(env, "gp");

    for (;;) {
        uint32_t cost = draw_cost(&seed);
        int done = 0;
        while (!done) {
            uint64_t t0 = cmp_now_ns();
            if (t0 >= deadline)
                goto finish;
            uint64_t left_ms = (deadline - t0) / 1000000u + 1;
            km_request req = {.pool = pool, .tokens = cost};
            km_lease lease;
            rc = km_acquire_wait(env, &req, &lease, (uint32_t)(left_ms < 2000 ? left_ms : 2000));
            uint64_t t1 = cmp_now_ns();
            if (rc == KM_ETIMEDOUT) {
                if (t1 < deadline) {
                    res->timeouts++;
                    res->timeout_tokens += cost;
                }
                continue;
            }
            if (rc != KM_OK) {
                fprintf(stderr, "goodput: km_acquire_wait: %s\n", km_strerror(rc));
                res->err = 1;
                goto finish;
            }
            if (t1 >= deadline) { /* nothing is sent after the deadline */
                km_release(env, &lease, NULL);
                goto finish;
            }
            cmp_hist_add(&res->wait, t1 - t0);
            res->sent++;
            uint64_t arrival;
            /* The provider's key: by id ("k003" is key 3), not by the
             * segment's key index. */
            int uk = atoi(lease.key_id + 1);
            uint64_t retry = up_send(sh, u, uk >= 0 && uk < p->keys ? uk : 0, cost, &arrival);
            cmp_hist_add(&res->send, arrival - lease.start_ns);
            km_outcome out = {.latency_us = -1, .tokens = cost, .input_tokens = -1,
                              .output_tokens = -1};
            if (!retry) {
                res->ok++;
                uint32_t span = p->lat_max_ms - p->lat_min_ms;
                uint64_t lat = (uint64_t)p->lat_min_ms * 1000000u +
                               (span ? rng_next(&seed) % ((uint64_t)span * 1000000u) : 0);
                cmp_sleep_ns(lat);
                out.kind = KM_OUT_SUCCESS;
                done = 1;
                res->done++;
            } else {
                res->r429++;
                out.kind = KM_OUT_RATE_LIMITED;
                out.retry_after_s = (double)retry / 1e9;
            }
            km_release(env, &lease, &out);
        }
    }
finish:
    km_close(env);
    _exit(res->err ? 1 : 0);
}

static int run_mode(const params *p, int mode, const up_params *u, double demand_x,
                    double mean_cost)
{
    size_t len = sizeof(shared) + (size_t)p->procs * sizeof(wres);
    char *m = cmp_map_shared(len);
    shared *sh = (shared *)(void *)m;
    wres *res = (wres *)(void *)(m + sizeof(shared));
    km_env *env = NULL;
    pid_t pids[MAX_PROCS];
    int fds[2], forked = 0, failed = 0, rc = 1;

    if (!m || pipe(fds) != 0)
        return 1;
    up_init(sh, p->keys);
    if (mode == MODE_KEYMESH) {
        snprintf(g_seg, sizeof g_seg, "/km-gp-%d", (int)getpid());
        if (make_segment(p, g_seg, p->procs, &env) != KM_OK) {
            g_seg[0] = 0;
            goto out;
        }
    }
    for (int w = 0; w < p->procs; w++) {
        pids[w] = fork();
        if (pids[w] < 0) {
            failed = 1;
            break;
        }
        if (pids[w] == 0) {
            close(fds[1]);
            worker(p, mode, w, sh, u, fds[0], &res[w]);
        }
        forked++;
    }
    close(fds[0]);
    while (__atomic_load_n(&sh->ready, __ATOMIC_ACQUIRE) < forked)
        cmp_sleep_ns(1000000);
    uint64_t go = cmp_now_ns();
    sh->deadline = go + (uint64_t)(p->seconds * 1e9);
    for (int w = 0; w < forked; w++)
        if (write(fds[1], "g", 1) != 1)
            failed = 1;
    close(fds[1]);
    for (int w = 0; w < forked; w++) {
        int st;
        while (waitpid(pids[w], &st, 0) < 0 && errno == EINTR)
            ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed = 1;
    }
    if (failed) {
        fprintf(stderr, "goodput: a %s worker failed\n", mode_names[mode]);
        goto out;
    }

    /* Totals; capacity of each limit over the run: burst + rate * duration. */
    double dur_s = (double)(sh->deadline - go) / 1e9;
    double cap_r = (double)p->rpm_burst + (double)p->rpm / 60.0 * dur_s;
    double cap_t = (double)p->tpm_burst + (double)p->tpm / 60.0 * dur_s;
    uint64_t ok = 0, rej = 0, tok = 0, sent = 0, done = 0, tmo = 0, tmo_tok = 0;
    double share = 0;
    for (int k = 0; k < p->keys; k++) {
        up_key *uk = &sh->up[k];
        ok += uk->ok;
        rej += uk->rejected;
        tok += uk->tokens_ok;
        double sr = (double)uk->ok / cap_r, st = (double)uk->tokens_ok / cap_t;
        share += sr > st ? sr : st;
        pthread_mutex_destroy(&uk->lock);
    }
    share /= p->keys;
    cmp_hist *wait = calloc(1, sizeof *wait), *send = calloc(1, sizeof *send);
    if (!wait || !send) {
        free(wait);
        free(send);
        goto out;
    }
    for (int w = 0; w < p->procs; w++) {
        sent += res[w].sent;
        done += res[w].done;
        tmo += res[w].timeouts;
        tmo_tok += res[w].timeout_tokens;
        cmp_hist_merge(wait, &res[w].wait);
        cmp_hist_merge(send, &res[w].send);
    }
    if (sent != ok + rej) {
        fprintf(stderr, "goodput: workers sent %llu, the upstream saw %llu\n",
                (unsigned long long)sent, (unsigned long long)(ok + rej));
        free(wait);
        free(send);
        goto out;
    }
    printf("SUMMARY goodput mode=%s procs=%d keys=%d seconds=%g rpm=%llu rpm_burst=%llu "
           "tpm=%llu tpm_burst=%llu latency_ms=%u-%u seed=%llu headroom_ms=%u demand_x=%.2f sent=%llu "
           "upstream_ok=%llu upstream_429=%llu rate_429_pct=%.2f done=%llu "
           "capacity_used_pct=%.2f tokens_used_pct=%.2f requests_used_pct=%.2f "
           "wait_p50_ms=%.3f wait_p99_ms=%.3f wait_p999_ms=%.3f wait_max_ms=%.3f timeouts=%llu "
           "timeout_mean_tokens=%.0f mean_tokens=%.0f send_delay_p999_us=%.1f "
           "send_delay_max_us=%.1f\n",
           mode_names[mode], p->procs, p->keys, p->seconds, (unsigned long long)p->rpm,
           (unsigned long long)p->rpm_burst, (unsigned long long)p->tpm,
           (unsigned long long)p->tpm_burst, p->lat_min_ms, p->lat_max_ms,
           (unsigned long long)p->seed, p->headroom_ms, demand_x, (unsigned long long)sent,
           (unsigned long long)ok, (unsigned long long)rej,
           sent ? 100.0 * (double)rej / (double)sent : 0, (unsigned long long)done,
           100 * share, 100 * (double)tok / (cap_t * p->keys),
           100 * (double)ok / (cap_r * p->keys), (double)cmp_hist_pct(wait, 0.5) / 1e6,
           (double)cmp_hist_pct(wait, 0.99) / 1e6, (double)cmp_hist_pct(wait, 0.999) / 1e6,
           (double)wait->max / 1e6, (unsigned long long)tmo,
           tmo ? (double)tmo_tok / (double)tmo : 0, mean_cost,
           (double)cmp_hist_pct(send, 0.999) / 1e3, (double)send->max / 1e3);
    fflush(stdout);
    free(wait);
    free(send);
    rc = 0;
out:
    if (env)
        km_close(env);
    if (g_seg[0])
        km_unlink(g_seg);
    g_seg[0] = 0;
    munmap(m, len);
    return rc;
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr,
            "usage: goodput [--short] [--seconds S] [--procs N] [--keys K]\n"
            "               [--modes keymesh,perproc] [--rpm N] [--rpm-burst N]\n"
            "               [--tpm N] [--tpm-burst N] [--latency-ms MIN-MAX] [--seed N]\n"
            "               [--headroom-ms H]\n");
    exit(2);
}

static uint64_t parse_u64(const char *s, uint64_t lo, uint64_t hi)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"short", no_argument, NULL, 'q'},        {"seconds", required_argument, NULL, 'S'},
        {"procs", required_argument, NULL, 'p'},  {"keys", required_argument, NULL, 'k'},
        {"modes", required_argument, NULL, 'm'},  {"rpm", required_argument, NULL, 'r'},
        {"rpm-burst", required_argument, NULL, 'R'}, {"tpm", required_argument, NULL, 't'},
        {"tpm-burst", required_argument, NULL, 'T'}, {"latency-ms", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 's'},   {"headroom-ms", required_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    params p = {.procs = 8, .keys = 4, .seconds = 0, .rpm = 15000, .rpm_burst = 50,
                .tpm = 12000000, .tpm_burst = 40000, .lat_min_ms = 2, .lat_max_ms = 10,
                .seed = 1, .modes = {1, 1}};
    int shortrun = 0, c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'q': shortrun = 1; break;
        case 'S': {
            char *end;
            p.seconds = strtod(optarg, &end);
            if (*end || !(p.seconds > 0 && p.seconds <= 3600))
                usage();
            break;
        }
        case 'p': p.procs = (int)parse_u64(optarg, 1, MAX_PROCS); break;
        case 'k': p.keys = (int)parse_u64(optarg, 1, MAX_KEYS); break;
        case 'm':
            memset(p.modes, 0, sizeof p.modes);
            for (const char *s = optarg; *s;) {
                size_t len = strcspn(s, ",");
                int found = 0;
                for (int i = 0; i < MODE_COUNT; i++)
                    if (strlen(mode_names[i]) == len && !strncmp(s, mode_names[i], len))
                        p.modes[i] = found = 1;
                if (!found)
                    usage();
                s += len + (s[len] == ',');
            }
            break;
        case 'r': p.rpm = parse_u64(optarg, 1, 1000000000); break;
        case 'R': p.rpm_burst = parse_u64(optarg, 1, 1000000000); break;
        case 't': p.tpm = parse_u64(optarg, 1, 1000000000000ull); break;
        case 'T': p.tpm_burst = parse_u64(optarg, 1, 1000000000000ull); break;
        case 'l': {
            unsigned a, b2;
            if (sscanf(optarg, "%u-%u", &a, &b2) != 2 || a > b2 || b2 > 60000)
                usage();
            p.lat_min_ms = a;
            p.lat_max_ms = b2;
            break;
        }
        case 's': p.seed = parse_u64(optarg, 0, UINT64_MAX); break;
        case 'H': p.headroom_ms = (uint32_t)parse_u64(optarg, 0, 60000); break;
        default: usage();
        }
    }
    if (optind != argc)
        usage();
    if (p.seconds == 0)
        p.seconds = shortrun ? 3 : 30;
    /* The provider's buckets are exact only when 60 s / limit is whole ns;
     * KeyMesh's token_bucket T is then the same value. */
    if (MINUTE_NS % p.rpm || MINUTE_NS % p.tpm) {
        fprintf(stderr, "goodput: 60e9 must be a multiple of --rpm and --tpm\n");
        return 2;
    }
    up_params u = {.rT = MINUTE_NS / p.rpm, .tT = MINUTE_NS / p.tpm};
    u.rtau = p.rpm_burst * u.rT;
    u.ttau = p.tpm_burst * u.tT;
    uint64_t hr_ns = (uint64_t)p.headroom_ms * 1000000u;
    if (p.tpm_burst < 16000 + 2048 + (hr_ns + u.tT - 1) / u.tT ||
        p.rpm_burst < 1 + (hr_ns + u.rT - 1) / u.rT) {
        fprintf(stderr, "goodput: --tpm-burst (less the headroom) must hold the largest "
                "request (18048 tokens), --rpm-burst one request\n");
        return 2;
    }

    /* Demand over capacity, from the parameters: the mean request size of
     * the same distribution (10^6 draws), the mean service time. */
    uint64_t s = 12345;
    double mean_cost = 0;
    for (int i = 0; i < 1000000; i++)
        mean_cost += draw_cost(&s);
    mean_cost /= 1e6;
    double cap_rps_t = (double)p.keys * (double)p.tpm / 60.0 / mean_cost;
    double cap_rps_r = (double)p.keys * (double)p.rpm / 60.0;
    double cap_rps = cap_rps_t < cap_rps_r ? cap_rps_t : cap_rps_r;
    double demand = p.procs / ((p.lat_min_ms + p.lat_max_ms) / 2.0 / 1000.0);

    g_parent = getpid();
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    int rc = 0;
    for (int mode = 0; mode < MODE_COUNT; mode++)
        if (p.modes[mode] && run_mode(&p, mode, &u, demand / cap_rps, mean_cost))
            rc = 1;
    return rc;
}
