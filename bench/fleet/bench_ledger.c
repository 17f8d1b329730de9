/*
 * bench/fleet/bench_ledger.c - what one sync costs the store: N hosts, each
 * reporting K (key, window) pairs every round, on a redis-server of its own
 * (127.0.0.1, free port).  The ledger's time per call is Redis's own
 * (INFO commandstats: usec_per_call of FCALL), so the client and the
 * loopback are not in it; the round trip as the client sees it is printed
 * too.  One SUMMARY line with every parameter and result.
 *
 *   build/bench/fleet/bench_ledger [--hosts N] [--keys K] [--rounds R]
 *   make fleet-bench      a few sizes (not part of make test)
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rig.h"
#include "sim.h"
#include "store.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double fcall_usec_per_call(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    double v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *at = strstr(r->str, "cmdstat_fcall:");
        if (at && (at = strstr(at, "usec_per_call=")))
            v = atof(at + 14);
    }
    if (r)
        freeReplyObject(r);
    return v;
}

int main(int argc, char **argv)
{
    int hosts = 100, keys = 2, rounds = 20;
    static const struct option opts[] = {{"hosts", 1, 0, 'n'}, {"keys", 1, 0, 'k'},
                                         {"rounds", 1, 0, 'r'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'n')
            hosts = atoi(optarg);
        else if (c == 'k')
            keys = atoi(optarg);
        else if (c == 'r')
            rounds = atoi(optarg);
        else {
            fprintf(stderr, "usage: bench_ledger [--hosts N] [--keys K<=%d] [--rounds R]\n",
                    SIM_MAX_ENT);
            return 2;
        }
    }
    if (hosts < 1 || keys < 1 || keys > SIM_MAX_ENT || rounds < 2) {
        fprintf(stderr, "bench_ledger: need hosts >= 1, 1 <= keys <= %d, rounds >= 2\n",
                SIM_MAX_ENT);
        return 2;
    }
    rig_redis rs;
    rig_redis_start(&rs, NULL);
    redisContext *dc = rig_redis_conn(&rs);
    kms_url u;
    char url[64], err[512];
    kms_store *s = NULL;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", rs.port);
    kms_url_parse(url, &u, err, sizeof err);
    kms_opts o = {.url = &u, .fleet = "bench", .io_timeout_ms = 10000};
    if (!dc || kms_open(&o, &s, err, sizeof err) != KMS_OK) {
        fprintf(stderr, "bench_ledger: %s\n", err);
        return 1;
    }
    sim_host *h = calloc((size_t)hosts, sizeof *h);
    for (int i = 0; i < hosts; i++) {
        char id[16];
        snprintf(id, sizeof id, "h%d", i);
        sim_init(&h[i], id);
        for (int k = 0; k < keys; k++) {
            char kid[16];
            snprintf(kid, sizeof kid, "k%d", k);
            size_t e = sim_entry(&h[i], kid, 3, 1000000, 60000, 1000000, 0, 0);
            h[i].ent[e].demand = 1 + (uint64_t)(i % 8) * 100;
        }
    }
    uint64_t t = 1000000000;
    double wall = 0;
    long calls = 0;
    for (int r = 0; r < rounds; r++, t += 250000) {
        ledger_clock(dc, "bench", t);
        if (r == 1) { /* the first round creates every record: not timed */
            redisReply *x = redisCommand(dc, "CONFIG RESETSTAT");
            if (x)
                freeReplyObject(x);
        }
        for (int i = 0; i < hosts; i++) {
            for (int k = 0; k < keys; k++)
                sim_spend(&h[i], (size_t)k, h[i].credit[k]);
            double t0 = now_s();
            if (sim_sync(s, &h[i], t, 1) != KMS_OK) {
                fprintf(stderr, "bench_ledger: %s\n", h[i].err);
                return 1;
            }
            if (r >= 1) {
                wall += now_s() - t0;
                calls++;
            }
        }
    }
    double usec = fcall_usec_per_call(dc);
    /* Redis is one thread: the share of it the fleet takes at one sync per
     * host every 250 ms. */
    double busy = usec * hosts * 4 / 1e6;
    printf("SUMMARY bench_ledger hosts=%d keys=%d rounds=%d calls=%ld ledger_usec_per_call=%.1f "
           "rtt_usec_per_call=%.1f store_calls_per_s_at_250ms=%d redis_busy_at_250ms=%.3f\n",
           hosts, keys, rounds, calls, usec, wall / (double)calls * 1e6, hosts * 4, busy);
    for (int i = 0; i < hosts; i++)
        kms_reply_free(&h[i].rep);
    free(h);
    kms_close(s);
    redisFree(dc);
    rig_redis_stop(&rs);
    return 0;
}
