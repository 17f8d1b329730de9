/*
 * tests/helpers/loadgen.c - not a test: a load generator for tests/t_ops.sh and
 * tests/t_prometheus.sh, whose workers count what they did themselves.
 *
 *   loadgen NAME POOL WORKERS RATE DURATION_S OUT [TOKENS [MODEL]]
 *
 * Forks WORKERS processes; each attaches to segment NAME and, on an
 * absolute schedule of RATE operations per second for DURATION_S seconds,
 * acquires a key of POOL (TOKENS estimated, default 10; MODEL if given)
 * and releases it at once: outcome failure for every 7th operation of a
 * worker, success otherwise, with the estimate as the actual token count
 * and a latency of 1000 us.  An acquire that finds no key admissible
 * (KM_EAGAIN) counts as refused and is not retried.  At the end each
 * worker writes OUT.<worker> with one line per key it used:
 *   KEY_ID REQUESTS SUCCESS FAILURE TOKENS
 * and a line "refused N".  The parent waits for every worker; exit status
 * 0 if all of them finished cleanly, 1 otherwise.  The Makefile builds it
 * with the tests but does not give it to prove.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymesh.h"

typedef struct tally {
    char id[KM_ID_MAX + 1];
    unsigned long long requests, success, failure, tokens;
} tally;

#define MAX_KEYS 4096

static tally t[MAX_KEYS];
static int nt;

static tally *tally_of(const char *id)
{
    for (int i = 0; i < nt; i++)
        if (strcmp(t[i].id, id) == 0)
            return &t[i];
    if (nt == MAX_KEYS)
        return NULL;
    snprintf(t[nt].id, sizeof t[nt].id, "%s", id);
    return &t[nt++];
}

static int worker(int w, const char *name, const char *pool, double rate, double secs,
                  const char *out, unsigned tokens, const char *model)
{
    km_env *e;
    int rc = km_open(name, &e);
    if (rc != KM_OK) {
        fprintf(stderr, "loadgen: worker %d: open %s: %s\n", w, name, km_strerror(rc));
        return 1;
    }
    km_request rq = {.pool = km_pool_find(e, pool), .tokens = tokens, .model = model};
    if (rq.pool < 0) {
        fprintf(stderr, "loadgen: no pool %s\n", pool);
        return 1;
    }
    uint64_t step = (uint64_t)(1e9 / rate), start = km_now_ns();
    uint64_t n = (uint64_t)(rate * secs + 0.5);
    unsigned long long refused = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t at = start + i * step;
        struct timespec ts = {(time_t)(at / 1000000000u), (long)(at % 1000000000u)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        km_lease l;
        rc = km_acquire(e, &rq, &l);
        if (rc == KM_EAGAIN || rc == KM_EUNAVAIL) {
            refused++;
            continue;
        }
        if (rc != KM_OK) {
            fprintf(stderr, "loadgen: worker %d: acquire: %s\n", w, km_strerror(rc));
            return 1;
        }
        int fail = i % 7 == 6;
        km_outcome o = {.kind = fail ? KM_OUT_FAILURE : KM_OUT_SUCCESS, .latency_us = 1000,
                        .tokens = tokens, .input_tokens = -1, .output_tokens = -1};
        tally *x = tally_of(l.key_id);
        if ((rc = km_release(e, &l, &o)) != KM_OK || !x) {
            fprintf(stderr, "loadgen: worker %d: release: %s\n", w, km_strerror(rc));
            return 1;
        }
        x->requests++;
        x->tokens += tokens;
        if (fail)
            x->failure++;
        else
            x->success++;
    }
    km_close(e);
    char path[4096];
    snprintf(path, sizeof path, "%s.%d", out, w);
    FILE *f = fopen(path, "w");
    if (!f)
        return 1;
    for (int i = 0; i < nt; i++)
        fprintf(f, "%s %llu %llu %llu %llu\n", t[i].id, t[i].requests, t[i].success,
                t[i].failure, t[i].tokens);
    fprintf(f, "refused %llu\n", refused);
    return fclose(f) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 7 || argc > 9) {
        fprintf(stderr, "usage: loadgen NAME POOL WORKERS RATE DURATION_S OUT [TOKENS [MODEL]]\n");
        return 2;
    }
    int workers = atoi(argv[3]);
    double rate = atof(argv[4]), secs = atof(argv[5]);
    unsigned tokens = argc > 7 ? (unsigned)atoi(argv[7]) : 10;
    const char *model = argc > 8 ? argv[8] : NULL;
    if (workers < 1 || rate <= 0 || secs <= 0)
        return 2;
    for (int w = 0; w < workers; w++) {
        pid_t p = fork();
        if (p < 0)
            return 1;
        if (p == 0)
            _exit(worker(w, argv[1], argv[2], rate, secs, argv[6], tokens, model));
    }
    int bad = 0, st;
    while (wait(&st) > 0)
        bad |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    return bad;
}
