/*
 * tests/fleet/t_agent_model.c - a model's windows under the fleet, end to
 * end through the agent (kmctl sync) and redis (issue 12, item 3; about
 * 6 s, make test): two hosts whose key "a" of a per_model pool has no
 * limits of its own and model "gpt" limited to rpm 3000 sliding, burst 30;
 * every request names gpt; offered 2 x the model's rate.  Without the
 * model's windows under the fleet each host admits the whole limit and
 * the fleet twice it; with them every window stays <= L + C.
 *
 * S 50 ms, V 200 ms, F 3 s (hosts.h): R = 49.5/s, C = ceil(R V) + B = 40.
 */
#include "hosts.h"

static fh_fleet fl;

int main(void)
{
    plan(6);
    fh_init(&fl, 2, 3000, 30, NULL);
    fl.model = "gpt";
    double R = 1e9 / (double)fl.T;
    uint64_t C = (uint64_t)ceil(R * fl.V / 1000.0) + fl.B;
    for (int i = 0; i < 2; i++) {
        fh_host_create(&fl, i, NULL);
        fh_agent_start(&fl, i, NULL);
    }
    rig__sleep_ms(300);

    uint64_t t0 = fh_now() + 200000000ull, t1 = t0 + 5000000000ull;
    fh_work wk = {.rate = 2 * R / 4, .until = t1};
    for (int i = 0; i < 2; i++)
        fh_workers_start(&fl, i, 2, &wk);
    fh_sleep_until(t0 + 3000000000ull);

    char cmd[800], out[65536];
    snprintf(cmd, sizeof cmd, "%s fleet %s --store redis://127.0.0.1:%d --json 2>&1", fl.kmctl,
             fl.h[0].seg, fl.redis.port);
    int rc = fh_cmd_out(cmd, out, sizeof out);
    ok(rc == 0 && strstr(out, "\"key\": \"p/a model gpt\"") && strstr(out, "\"host\": \"h1\""),
       "kmctl fleet --json names the model's windows: p/a model gpt (rc %d)", rc);
    if (rc != 0 || !strstr(out, "model gpt"))
        diag("%.600s", out);
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", fl.kmctl, fl.h[0].seg);
    rc = fh_cmd_out(cmd, out, sizeof out);
    ok(rc == 0 && strstr(out, "    model gpt: credit rpm "), "kmctl inspect shows gpt's credit");

    for (int i = 0; i < 2; i++)
        fh_workers_wait(&fl.h[i]);

    size_t n, n0, n1;
    uint64_t *t = fh_times(&fl, -1, &n), at = 0;
    free(fh_times(&fl, 0, &n0));
    free(fh_times(&fl, 1, &n1));
    ok(n0 > 0 && n1 > 0, "both hosts admit on gpt (%zu, %zu)", n0, n1);
    double ex = fh_excess(&fl, t, n, 0, UINT64_MAX, &at);
    ok(ex <= (double)C, "every window of gpt <= L + C: worst excess %.1f units (C = %" PRIu64 ")",
       ex, C);
    double gp = fh_goodput(&fl, t, n, t0 + 1000000000ull, t1 - 100000000ull);
    ok(gp >= 0.85, "goodput %.3f of the model's rate (2 hosts, 2 x offered)", gp);
    diag("SUMMARY t_agent_model hosts=2 admitted=%zu worst_excess=%.1f C=%" PRIu64
         " goodput=%.3f", n, ex, C, gp);
    free(t);

    int s0 = fh_agent_stop(&fl.h[0]), s1 = fh_agent_stop(&fl.h[1]);
    ok(s0 == 0 && s1 == 0 && fh_file_has(fl.h[0].log, "credit handed back"),
       "SIGTERM: both agents exit 0, credit handed back (%d %d)", s0, s1);
    if (tap_failures())
        for (int i = 0; i < 2; i++) {
            diag("agent %d log:", i);
            fh_show_log(fl.h[i].log, 30);
        }
    return exit_status();
}
