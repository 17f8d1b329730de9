/*
 * tests/fleet/t_spend.c - fleet-wide spend budgets end to end (issue 12
 * item 3, DESIGN.md section 8), short enough for make test (about 5 s):
 * one redis-server, three hosts (segments, each with its agent through a
 * proxy and two workers) spending against one key's hard budget of X =
 * 3 USD a day.  Every admission costs 0.01 USD (10 tokens at 1 USD per
 * 1k), known only at its release (post-paid); the fleet offers 300 a
 * second, so X is spent in about a second.
 *
 * Checks: the fleet spends at least X (no host stops early) and at most
 * X + the bound README states: what the fleet spends in 2 S plus one
 * request in flight per worker (S = 50 ms); once X is spent every host
 * refuses within 2 S (plus 100 ms of scheduling on a shared machine);
 * Redis restarted empty once the budget is spent: no host admits again
 * (each keeps the others' spend it last saw as a floor); kmctl inspect
 * shows the fleet's total, kmctl fleet lists the budget.
 */
#include "hosts.h"

#define COST 10000u          /* micro-USD per admission */
#define BUDGET 3000000u      /* X, micro-USD */
#define WORKERS 2
#define RATE 50.0            /* attempts per second per worker */

static fh_fleet fl;

/* A worker: an attempt every 1/RATE s until `until`; an admission is
 * logged (its time) and released with 10 tokens, priced at COST. */
static _Noreturn void worker(fh_host *h, int w, uint64_t until)
{
    char path[256];
    km_env *env;
    snprintf(path, sizeof path, "%s/h%d-w%d.bin", fl.dir, h->idx, w);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0 || km_open(h->seg, &env) != KM_OK)
        _exit(2);
    int pool = km_pool_find(env, "p");
    uint64_t iv = (uint64_t)(1e9 / RATE), next = fh_now() + (uint64_t)w * iv / WORKERS;
    while (next < until) {
        fh_sleep_until(next);
        next += iv;
        km_request rq = {.pool = pool};
        km_lease ls;
        if (km_acquire(env, &rq, &ls) != KM_OK)
            continue;
        uint64_t t = fh_now();
        if (write(fd, &t, sizeof t) != (ssize_t)sizeof t)
            _exit(3);
        km_outcome oc = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = 10};
        km_release(env, &ls, &oc);
    }
    km_close(env);
    _exit(0);
}

int main(void)
{
    plan(10);
    fh_init(&fl, 3, 60000, 1000, NULL);
    char extra[256];
    snprintf(extra, sizeof extra,
             ", \"price\": {\"output_per_1k\": 1.0}, \"budget\": {\"usd\": %.2f, "
             "\"mode\": \"hard\", \"period\": \"day\", \"tz\": \"UTC\"}",
             BUDGET / 1e6);
    for (int i = 0; i < 3; i++) {
        fh_host_create(&fl, i, extra);
        fh_agent_start(&fl, i, NULL);
    }
    rig__sleep_ms(300);

    uint64_t t0 = fh_now() + 100000000ull, t1 = t0 + 3000000000ull;
    for (int i = 0; i < 3; i++) {
        fh_host *h = &fl.h[i];
        for (int w = 0; w < WORKERS; w++) {
            pid_t pid = fork();
            if (pid < 0)
                bail_out("fork: %s", strerror(errno));
            if (pid == 0)
                worker(h, w, t1);
            h->worker[w] = pid;
        }
        h->n_workers = WORKERS;
    }
    /* Mid-run, the budget long spent (at about t0 + 1 s): what the ledger
     * shows; then Redis restarted empty.  The new epoch has lost the
     * period's total: the hosts keep the others' spend they last saw as a
     * floor, so none admits again (checked below over the whole run). */
    char cmd[800], out[65536], fleet_out[65536];
    fh_sleep_until(t0 + 1700000000ull);
    snprintf(cmd, sizeof cmd, "%s fleet %s --store redis://127.0.0.1:%d 2>&1", fl.kmctl,
             fl.h[0].seg, fl.redis.port);
    int frc = fh_cmd_out(cmd, fleet_out, sizeof fleet_out);
    rig_redis_restart_empty(&fl.redis);
    for (int i = 0; i < 3; i++)
        fh_workers_wait(&fl.h[i]);

    fh_spend_checks(&fl, "t_spend", COST, BUDGET, WORKERS, t0, t1,
                    ", and after Redis restarted empty (1.3 s before the end of the run)");
    size_t n;
    free(fh_times(&fl, -1, &n));
    uint64_t spent = (uint64_t)n * COST;

    rig__sleep_ms(3 * fl.S);
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", fl.kmctl, fl.h[1].seg);
    int rc = fh_cmd_out(cmd, out, sizeof out);
    const char *bl = strstr(out, "budget (fleet-wide, hard): ");
    double fleet_usd = bl ? atof(bl + strlen("budget (fleet-wide, hard): ")) : 0;
    ok(rc == 0 && bl && fleet_usd * 1e6 + 0.5 >= (double)spent - 1 &&
           fleet_usd * 1e6 <= (double)spent + 0.5,
       "kmctl inspect shows the fleet's total: %.6f USD (rc %d)", fleet_usd, rc);
    if (!bl)
        diag("%.600s", out);
    snprintf(cmd, sizeof cmd, "%s inspect %s --json 2>&1", fl.kmctl, fl.h[2].seg);
    rc = fh_cmd_out(cmd, out, sizeof out);
    ok(rc == 0 && strstr(out, "\"spent_fleet_microusd\""),
       "kmctl inspect --json: spent_fleet_microusd");
    char want[64];
    snprintf(want, sizeof want, "%.6f", spent / 1e6);
    ok(frc == 0 && strstr(fleet_out, "budgets") && strstr(fleet_out, "p/a") &&
           strstr(fleet_out, want),
       "kmctl fleet lists the budget with the fleet's total %s USD (rc %d)", want, frc);
    if (frc != 0 || !strstr(fleet_out, want))
        diag("%.1200s", fleet_out);
    int logged = 0;
    for (int i = 0; i < 3; i++)
        logged |= fh_file_has(fl.h[i].log, "spent fleet-wide");
    ok(logged, "the agents log the budget spent fleet-wide");
    int s0 = fh_agent_stop(&fl.h[0]), s1 = fh_agent_stop(&fl.h[1]), s2 = fh_agent_stop(&fl.h[2]);
    ok(s0 == 0 && s1 == 0 && s2 == 0, "SIGTERM: every agent exits 0 (%d %d %d)", s0, s1, s2);
    if (tap_failures())
        for (int i = 0; i < 3; i++) {
            diag("agent %d log:", i);
            fh_show_log(fl.h[i].log, 30);
        }
    return exit_status();
}
