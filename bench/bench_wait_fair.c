/*
 * bench_wait_fair.c - km_acquire_wait under sustained overload: how long a
 * large request waits while small ones take the capacity.
 *
 * One pool of --keys keys (default 1), each with one token limit: tpm
 * --tpm (token_bucket, burst --burst).  --small worker processes each loop
 * km_acquire_wait(tokens=--small-tokens) + km_release, paced so that all
 * of them together ask for --overload times what the limit admits (a
 * worker that falls behind its schedule asks again at once: closed loop).
 * One more process loops km_acquire_wait(tokens=--large-pct % of the
 * burst, timeout --timeout-ms) + km_release, --gap-ms apart.  Timed: each
 * km_acquire_wait call, from before the call to its return (a timed-out
 * call counts with the time it waited).  One SUMMARY line:
 *
 *   SUMMARY wait_fair keys= tpm= burst= small=N small_tokens= overload=
 *     large_tokens= timeout_ms= gap_ms= warmup_ms= seconds= large_n= large_timeouts=
 *     large_p50_ms= large_p99_ms= large_max_ms= small_n= small_timeouts=
 *     small_p50_ms= small_p99_ms= small_per_s= tokens_per_s= limit_tokens_per_s=
 *
 * Percentiles are nearest-rank over all calls of the run.  `tokens_per_s`
 * is what both kinds were granted per second, against the limit's
 * `limit_tokens_per_s` (the burst adds once).  --short: 3 s.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"
#include "bench.h"

#define MAX_SMALL 32
#define MAX_SAMPLES 65536

typedef struct shared {
    volatile int go, stop;
    uint64_t t0, warm_ns;
    uint32_t n[MAX_SMALL + 1], timeouts[MAX_SMALL + 1], errors[MAX_SMALL + 1];
    uint64_t tokens[MAX_SMALL + 1];
    uint32_t us[MAX_SMALL + 1][MAX_SAMPLES]; /* wait of each call, microseconds */
} shared;

static shared *sh;
static char seg[64];

static void sleep_until(uint64_t t)
{
    uint64_t n = now_ns();
    if (t <= n)
        return;
    struct timespec ts = {(time_t)((t - n) / 1000000000u), (long)((t - n) % 1000000000u)};
    nanosleep(&ts, NULL);
}

/* Worker w: tokens per call, a call every period_ns on a schedule (small
 * workers) or gap_ns after the last one returned (the large worker); calls
 * time out after timeout_ms. */
static void worker(int w, int64_t tokens, uint64_t period_ns, uint64_t gap_ns, uint32_t timeout_ms)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(2);
    km_request rq = {.pool = km_pool_find(e, "fair"), .tokens = tokens};
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = tokens,
                    .input_tokens = -1, .output_tokens = -1};
    while (!sh->go)
        ;
    /* Small workers spread over one period; the large one starts once they
     * have drained the burst (sh->warm_ns). */
    uint64_t next = sh->t0 + (period_ns ? (uint64_t)w * period_ns / MAX_SMALL : sh->warm_ns);
    while (!sh->stop) {
        sleep_until(next);
        if (sh->stop)
            break;
        km_lease l;
        uint64_t t = now_ns();
        int rc = km_acquire_wait(e, &rq, &l, timeout_ms);
        uint64_t dt = now_ns() - t;
        if (rc == KM_OK) {
            km_release(e, &l, &o);
            sh->tokens[w] += (uint64_t)tokens;
        } else if (rc == KM_ETIMEDOUT) {
            sh->timeouts[w]++;
        } else {
            sh->errors[w]++;
        }
        if (sh->n[w] < MAX_SAMPLES)
            sh->us[w][sh->n[w]++] = (uint32_t)(dt / 1000 < UINT32_MAX ? dt / 1000 : UINT32_MAX);
        if (period_ns) {
            next += period_ns;
            if (next + 50 * period_ns < now_ns())
                next = now_ns(); /* far behind: no burst of catching-up calls */
        } else {
            next = now_ns() + gap_ns;
        }
    }
    km_close(e);
    _exit(0);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile q of v[0..n), sorted, in milliseconds. */
static double pct_ms(const uint32_t *v, uint32_t n, double q)
{
    if (n == 0)
        return 0;
    uint32_t r = (uint32_t)(q * n + 0.999999);
    return v[(r ? r : 1) - 1] / 1000.0;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_wait_fair [--short] [--seconds S] [--keys N] [--tpm L] [--burst B]\n"
                    "  [--small N] [--small-tokens T] [--overload X] [--large-pct P] [--timeout-ms T]\n"
                    "  [--gap-ms G] [--warmup-ms W]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int keys = 1, small = 4;
    int64_t tpm = 600000, burst = 10000, small_tokens = 10;
    double secs = 10, overload = 2, large_pct = 30;
    uint32_t timeout_ms = 5000, gap_ms = 100, warmup_ms = 1000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--short")) {
            secs = 3;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--seconds"))
            secs = atof(v);
        else if (!strcmp(a, "--keys"))
            keys = atoi(v);
        else if (!strcmp(a, "--tpm"))
            tpm = atoll(v);
        else if (!strcmp(a, "--burst"))
            burst = atoll(v);
        else if (!strcmp(a, "--small"))
            small = atoi(v);
        else if (!strcmp(a, "--small-tokens"))
            small_tokens = atoll(v);
        else if (!strcmp(a, "--overload"))
            overload = atof(v);
        else if (!strcmp(a, "--large-pct"))
            large_pct = atof(v);
        else if (!strcmp(a, "--timeout-ms"))
            timeout_ms = (uint32_t)atoi(v);
        else if (!strcmp(a, "--gap-ms"))
            gap_ms = (uint32_t)atoi(v);
        else if (!strcmp(a, "--warmup-ms"))
            warmup_ms = (uint32_t)atoi(v);
        else
            usage();
    }
    int64_t large_tokens = (int64_t)((double)burst * large_pct / 100);
    if (keys < 1 || keys > 64 || small < 1 || small > MAX_SMALL || tpm < 1 || burst < 1 ||
        small_tokens < 1 || overload <= 0 || large_tokens < 1 || large_tokens > burst || secs <= 0) {
        fprintf(stderr, "bench_wait_fair: --keys 1..64, --small 1..%d, positive sizes, "
                        "--large-pct of the burst in (0, 100]\n", MAX_SMALL);
        return 2;
    }
    /* Every small worker asks `period` apart: all together, overload x the
     * requests the keys' limits admit per second. */
    double admit_per_s = (double)tpm * keys / 60.0 / (double)small_tokens;
    uint64_t period_ns = (uint64_t)(1e9 * small / (admit_per_s * overload));

    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    snprintf(seg, sizeof seg, "kmbench-fair-%d", (int)getpid());
    km_unlink(seg);
    char js[8192];
    size_t len = (size_t)snprintf(js, sizeof js,
                                  "{\"capacity\": {\"processes\": %d}, \"pools\": [{\"name\": \"fair\", "
                                  "\"limits\": {\"tpm\": {\"limit\": %" PRId64 ", \"burst\": %" PRId64
                                  "}}, \"keys\": [",
                                  small + 8, tpm, burst);
    for (int k = 0; k < keys; k++)
        len += (size_t)snprintf(js + len, sizeof js - len, "%s{\"id\": \"k%d\", \"secret\": \"sk-bench-%08d\"}",
                                k ? ", " : "", k, k);
    snprintf(js + len, sizeof js - len, "]}]}");
    km_config *cfg;
    km_env *env;
    char err[256] = "";
    if (km_config_parse(js, strlen(js), "bench", &cfg, err, sizeof err) != KM_OK ||
        km_create(seg, cfg, 0600, &env) != KM_OK) {
        fprintf(stderr, "bench_wait_fair: %s\n", err);
        return 1;
    }
    km_config_free(cfg);

    pid_t pid[MAX_SMALL + 1];
    for (int w = 0; w <= small; w++)
        if ((pid[w] = fork()) == 0) {
            if (w < small)
                worker(w, small_tokens, period_ns, 0, timeout_ms);
            else
                worker(MAX_SMALL, large_tokens, 0, (uint64_t)gap_ms * 1000000u, timeout_ms);
        }
    usleep(200000); /* every worker attached */
    sh->warm_ns = (uint64_t)warmup_ms * 1000000u;
    sh->t0 = now_ns();
    sh->go = 1;
    usleep((useconds_t)(secs * 1e6));
    sh->stop = 1;
    for (int w = 0; w <= small; w++)
        waitpid(pid[w], NULL, 0);
    double el = (double)(now_ns() - sh->t0) / 1e9;

    static uint32_t all[MAX_SMALL * MAX_SAMPLES];
    uint32_t ns = 0, st = 0, errs = sh->errors[MAX_SMALL];
    uint64_t tok = sh->tokens[MAX_SMALL];
    for (int w = 0; w < small; w++) {
        memcpy(all + ns, sh->us[w], sh->n[w] * sizeof(uint32_t));
        ns += sh->n[w];
        st += sh->timeouts[w];
        errs += sh->errors[w];
        tok += sh->tokens[w];
    }
    qsort(all, ns, sizeof *all, cmp_u32);
    uint32_t *lg = sh->us[MAX_SMALL], nl = sh->n[MAX_SMALL];
    qsort(lg, nl, sizeof *lg, cmp_u32);
    printf("SUMMARY wait_fair keys=%d tpm=%" PRId64 " burst=%" PRId64 " small=%d small_tokens=%" PRId64
           " overload=%g large_tokens=%" PRId64 " timeout_ms=%u gap_ms=%u warmup_ms=%u seconds=%g large_n=%u"
           " large_timeouts=%u large_p50_ms=%.1f large_p99_ms=%.1f large_max_ms=%.1f small_n=%u"
           " small_timeouts=%u small_p50_ms=%.2f small_p99_ms=%.1f small_per_s=%.0f tokens_per_s=%.0f"
           " limit_tokens_per_s=%.0f errors=%u\n",
           keys, tpm, burst, small, small_tokens, overload, large_tokens, timeout_ms, gap_ms, warmup_ms, secs, nl,
           sh->timeouts[MAX_SMALL], pct_ms(lg, nl, 0.5), pct_ms(lg, nl, 0.99), pct_ms(lg, nl, 1.0), ns, st,
           pct_ms(all, ns, 0.5), pct_ms(all, ns, 0.99), (double)(ns - st) / el, (double)tok / el,
           (double)tpm * keys / 60.0, errs);
    km_close(env);
    km_unlink(seg);
    return errs ? 1 : 0;
}
