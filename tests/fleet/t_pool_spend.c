/*
 * tests/fleet/t_pool_spend.c - a fleet-wide pool budget end to end (issue
 * 12 item 3, DESIGN.md section 8), short enough for make test (about 4 s):
 * one redis-server, three hosts whose keys differ (host i has key "k<i>"
 * only, without a budget of its own) and whose pool "p" has one hard
 * budget of X = 3 USD a day; the top-level "fleet": {"all": true} puts the
 * pool's budget under the fleet.  Every admission costs 0.01 USD (10
 * tokens at 1 USD per 1k), known only at its release; the fleet offers 300
 * a second, so X is spent in about a second.
 *
 * Checks: every host spends, the fleet spends at least X and at most X +
 * the bound README states (what the fleet spends in 2 S plus one request
 * in flight per worker, S = 50 ms), and every host refuses within 2 S of
 * the crossing (plus 100 ms of scheduling on a shared machine); kmctl
 * fleet names the budget by its pool.
 */
#include "hosts.h"

#define COST 10000u     /* micro-USD per admission */
#define BUDGET 3000000u /* X, micro-USD */
#define WORKERS 2

static fh_fleet fl;

int main(void)
{
    plan(6);
    fh_init(&fl, 3, 60000, 1000, NULL);
    for (int i = 0; i < 3; i++) {
        char cfg[1024];
        snprintf(cfg, sizeof cfg,
                 "{\"capacity\": {\"processes\": 16}, \"fleet\": {\"all\": true},\n"
                 " \"pools\": [{\"name\": \"p\", \"budget\": {\"usd\": %.2f, \"mode\": \"hard\",\n"
                 "   \"period\": \"day\", \"tz\": \"UTC\"},\n"
                 "   \"keys\": [{\"id\": \"k%d\", \"secret\": \"sk-pool-budget-%04d\",\n"
                 "              \"price\": {\"output_per_1k\": 1.0}}]}]}\n",
                 BUDGET / 1e6, i, i);
        fh_host_create_cfg(&fl, i, cfg);
        fh_agent_start(&fl, i, NULL);
    }
    rig__sleep_ms(300);

    uint64_t t0 = fh_now() + 100000000ull, t1 = t0 + 2500000000ull;
    fh_work wk = {.rate = 50.0, .until = t1, .out_tokens = 10};
    for (int i = 0; i < 3; i++)
        fh_workers_start(&fl, i, WORKERS, &wk);
    for (int i = 0; i < 3; i++)
        fh_workers_wait(&fl.h[i]);

    size_t n, nh[3];
    uint64_t *t = fh_times(&fl, -1, &n), last[3];
    for (int i = 0; i < 3; i++) {
        uint64_t *ti = fh_times(&fl, i, &nh[i]);
        last[i] = nh[i] ? ti[nh[i] - 1] : 0;
        free(ti);
    }
    uint64_t spent = (uint64_t)n * COST, need = BUDGET / COST;
    ok(nh[0] && nh[1] && nh[2], "every host spends on its own key (%zu, %zu, %zu admissions)",
       nh[0], nh[1], nh[2]);
    ok(spent >= BUDGET, "the fleet spends the pool's budget: %" PRIu64 " >= %u micro-USD",
       spent, BUDGET);
    /* tc: the admission that took the fleet's spend to X; the rate: the
     * fleet's over the second before it. */
    uint64_t tc = n >= need ? t[need - 1] : t1;
    uint64_t from = tc > t0 + 1000000000ull ? tc - 1000000000ull : t0;
    double rate = (double)fh_count(t, n, from, tc + 1) * 1e9 / (double)(tc + 1 - from);
    double bound = rate * COST * 2 * (fl.S / 1000.0) + 3 * WORKERS * COST;
    ok((double)spent <= BUDGET + bound,
       "at most X + the bound: %" PRIu64 " <= %u + %.0f (fleet %.0f/s x 2 S + %d in flight)",
       spent, BUDGET, bound, rate, 3 * WORKERS);
    uint64_t late = tc + 2ull * fl.S * 1000000ull + 100000000ull;
    ok(last[0] <= late && last[1] <= late && last[2] <= late,
       "every host refuses within 2 S of the crossing: last admissions %+.0f %+.0f %+.0f ms "
       "after it",
       ((double)last[0] - (double)tc) / 1e6, ((double)last[1] - (double)tc) / 1e6,
       ((double)last[2] - (double)tc) / 1e6);
    diag("SUMMARY t_pool_spend hosts=3 budget_usd=%.2f spent_usd=%.2f over_usd=%.2f "
         "bound_usd=%.2f rate_per_s=%.0f S_ms=%u",
         BUDGET / 1e6, spent / 1e6, ((double)spent - BUDGET) / 1e6, bound / 1e6, rate, fl.S);
    free(t);
    fh_agents_stop(&fl);
    int logged = 0;
    for (int i = 0; i < 3; i++)
        logged |= fh_file_has(fl.h[i].log, "spent fleet-wide");
    ok(logged, "the agents log the pool's budget spent fleet-wide");
    char cmd[600], out[65536];
    snprintf(cmd, sizeof cmd, "%s fleet %s --store redis://127.0.0.1:%d 2>&1", fl.kmctl,
             fl.h[0].seg, fl.redis.port);
    int frc = fh_cmd_out(cmd, out, sizeof out);
    ok(frc == 0 && strstr(out, "pool p"), "kmctl fleet lists the budget as pool p (rc %d)", frc);
    if (frc != 0 || !strstr(out, "pool p"))
        diag("%.1200s", out);
    if (tap_failures())
        for (int i = 0; i < 3; i++) {
            diag("agent %d log:", i);
            fh_show_log(fl.h[i].log, 30);
        }
    return exit_status();
}
