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
 * Checks (fh_spend_checks, as t_spend): every host spends, the fleet
 * spends at least X and at most X + the bound README states (what the
 * fleet spends in 2 S plus one request in flight per worker, S = 50 ms),
 * every host refuses within 2 S of the crossing and none stops early;
 * the agents log it; kmctl fleet names the budget by its pool.
 */
#include "hosts.h"

#define COST 10000u     /* micro-USD per admission */
#define BUDGET 3000000u /* X, micro-USD */
#define WORKERS 2

static fh_fleet fl;

int main(void)
{
    plan(7);
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

    fh_spend_checks(&fl, "t_pool_spend", COST, BUDGET, WORKERS, t0, t1, "");
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
