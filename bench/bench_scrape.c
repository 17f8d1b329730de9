/*
 * bench_scrape.c - how long a Prometheus scrape of a large segment takes.
 *
 * Creates a segment (a unique name, removed at the end) with one per_model
 * pool of --keys keys and --models models (each key: rpm and tpm; each
 * model: its own rpm and tpm), drives a few requests through every key so
 * the counters are not all zero, then measures, --scrapes times each:
 *
 *   stats   the library's part of a scrape, in this process:
 *           km_pool_stats_get + km_model_stats_get for every model +
 *           km_key_stats_get for every key + km_key_model_stats_get for
 *           every key x model (what kmctl's collector reads);
 *   http    a whole scrape as Prometheus sees it: GET /metrics from a
 *           `kmctl serve` started on a free port (connect to last byte).
 *
 * Prints medians and p99 in milliseconds and one SUMMARY line with every
 * parameter.  --kmctl PATH (default $KM_BUILD/kmctl or build/kmctl);
 * --short: 5 scrapes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(uint64_t *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    int i = (int)(p * (n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static char *config(int keys, int models, int inflight)
{
    size_t cap = 4096 + (size_t)keys * 96 + (size_t)models * 96;
    char *js = malloc(cap);
    size_t o = 0;
    if (!js)
        return NULL;
    o += (size_t)snprintf(js + o, cap - o,
                          "{\"capacity\":{\"keys\":%d,\"processes\":8,\"models\":%d,"
                          "\"inflight_per_key\":%d},\"pools\":[{\"name\":\"bench\","
                          "\"model_limits\":\"per_model\",\"limits\":{\"rpm\":1000000,"
                          "\"tpm\":1000000000},\"models\":{",
                          keys, models, inflight);
    for (int m = 0; m < models; m++)
        o += (size_t)snprintf(js + o, cap - o, "%s\"model-%d\":{\"rpm\":100000,\"tpm\":100000000}",
                              m ? "," : "", m);
    o += (size_t)snprintf(js + o, cap - o, "},\"keys\":[");
    for (int k = 0; k < keys; k++)
        o += (size_t)snprintf(js + o, cap - o, "%s{\"id\":\"key-%04d\",\"secret\":\"sk-bench-%08d\"}",
                              k ? "," : "", k, k);
    snprintf(js + o, cap - o, "]}]}");
    return js;
}

static uint64_t stats_once(km_env *e, int pool)
{
    km_pool_stats ps;
    km_key_stats ks;
    km_model_stats ms;
    uint64_t t0 = km_now_ns();
    if (km_pool_stats_get(e, pool, &ps, sizeof ps) != KM_OK)
        return 0;
    for (uint32_t m = 0; m < ps.n_models; m++)
        km_model_stats_get(e, pool, m, &ms, sizeof ms);
    for (uint32_t i = 0;; i++) {
        int k = km_pool_key(e, pool, i);
        if (k < 0)
            break;
        km_key_stats_get(e, k, &ks, sizeof ks);
        for (uint32_t m = 0; m < ps.n_models; m++)
            km_key_model_stats_get(e, k, m, &ms, sizeof ms);
    }
    return km_now_ns() - t0;
}

/* GET /metrics; returns ns, sets *bytes and *lines (samples); 0 on error. */
static uint64_t http_once(int port, size_t *bytes, size_t *samples)
{
    static char buf[1 << 16];
    uint64_t t0 = km_now_ns();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    static const char req[] = "GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return 0;
    }
    size_t n = 0, lines = 0;
    int ok = 0, at_start = 1;
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        if (n == 0)
            ok = r > 12 && memcmp(buf, "HTTP/1.", 7) == 0 && memcmp(buf + 9, "200", 3) == 0;
        for (ssize_t i = 0; i < r; i++) {
            if (at_start && buf[i] == 'k')
                lines++;
            at_start = buf[i] == '\n';
        }
        n += (size_t)r;
    }
    close(fd);
    uint64_t dt = km_now_ns() - t0;
    *bytes = n;
    *samples = lines;
    return ok ? dt : 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

int main(int argc, char **argv)
{
    int keys = 1024, models = 8, inflight = 64, scrapes = 30;
    char kmctl[4096];
    const char *b = getenv("KM_BUILD");
    snprintf(kmctl, sizeof kmctl, "%s/kmctl", b ? b : "build");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--short"))
            scrapes = 5;
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--models") && i + 1 < argc)
            models = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--inflight") && i + 1 < argc)
            inflight = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--scrapes") && i + 1 < argc)
            scrapes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--kmctl") && i + 1 < argc)
            snprintf(kmctl, sizeof kmctl, "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: bench_scrape [--short] [--keys N] [--models N] "
                            "[--inflight N] [--scrapes N] [--kmctl PATH]\n");
            return 2;
        }
    }
    if (keys < 1 || models < 0 || scrapes < 1 || access(kmctl, X_OK) != 0) {
        fprintf(stderr, "bench_scrape: bad parameters or %s not built\n", kmctl);
        return 2;
    }

    char name[64], err[512] = "";
    snprintf(name, sizeof name, "kmbench-scrape-%d", (int)getpid());
    char *js = config(keys, models, inflight);
    km_config *cfg = NULL;
    km_env *e = NULL;
    int rc = js ? km_config_parse(js, strlen(js), "bench_scrape", &cfg, err, sizeof err) : KM_ENOMEM;
    free(js);
    if (rc == KM_OK)
        rc = km_create(name, cfg, 0, &e);
    km_config_free(cfg);
    if (rc != KM_OK) {
        fprintf(stderr, "bench_scrape: create: %s %s\n", km_strerror(rc), err);
        return 1;
    }
    int pool = km_pool_find(e, "bench");
    /* A few requests on every key and model, so counters and windows are
     * not all zero. */
    for (int i = 0; i < keys * 2; i++) {
        char model[32];
        km_lease l;
        snprintf(model, sizeof model, "model-%d", models ? i % models : 0);
        km_request rq = {.pool = pool, .tokens = 100, .model = models ? model : NULL};
        if (km_acquire(e, &rq, &l) == KM_OK) {
            km_outcome o = {.kind = i % 10 ? KM_OUT_SUCCESS : KM_OUT_RATE_LIMITED,
                            .latency_us = 800, .tokens = 120, .retry_after_s = 0.001,
                            .input_tokens = -1, .output_tokens = -1};
            km_release(e, &l, &o);
        }
    }

    uint64_t *st = calloc((size_t)scrapes, sizeof *st), *ht = calloc((size_t)scrapes, sizeof *ht);
    for (int i = 0; i < scrapes; i++)
        st[i] = stats_once(e, pool);

    int port = free_port(), pfd[2];
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    if (port < 0 || pipe(pfd) != 0)
        return 1;
    pid_t srv = fork();
    if (srv == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        execl(kmctl, "kmctl", "serve", name, "--listen", listen, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[256];
    ssize_t got = read(pfd[0], line, sizeof line - 1); /* "kmctl serve: ... on http://..." */
    size_t bytes = 0, samples = 0;
    int failed = got <= 0;
    for (int i = 0; !failed && i < scrapes; i++)
        failed = (ht[i] = http_once(port, &bytes, &samples)) == 0;
    kill(srv, SIGTERM);
    waitpid(srv, NULL, 0);
    close(pfd[0]);
    km_close(e);
    km_unlink(name);
    if (failed) {
        fprintf(stderr, "bench_scrape: GET /metrics from kmctl serve failed\n");
        return 1;
    }
    double s50 = pct_ms(st, scrapes, 0.5), s99 = pct_ms(st, scrapes, 0.99);
    double h50 = pct_ms(ht, scrapes, 0.5), h99 = pct_ms(ht, scrapes, 0.99);
    printf("stats (library readers, in process): median %.2f ms, p99 %.2f ms\n", s50, s99);
    printf("GET /metrics from kmctl serve:       median %.2f ms, p99 %.2f ms, %zu bytes, %zu samples\n",
           h50, h99, bytes, samples);
    printf("SUMMARY bench=scrape keys=%d models=%d inflight_per_key=%d scrapes=%d "
           "stats_p50_ms=%.2f stats_p99_ms=%.2f http_p50_ms=%.2f http_p99_ms=%.2f "
           "bytes=%zu samples=%zu\n",
           keys, models, inflight, scrapes, s50, s99, h50, h99, bytes, samples);
    free(st);
    free(ht);
    return 0;
}
