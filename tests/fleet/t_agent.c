/*
 * tests/fleet/t_agent.c - the fleet agent (kmctl sync) end to end, short
 * enough for make test (about 10 s): one redis-server with a password, two
 * hosts (segments, agents through proxies, two workers each) sharing one
 * key's limit, and a third host whose agent has the wrong password.
 * The long fault scenarios are tests/fleet/long_faults.c (make fleet-test).
 *
 * Limit: rpm 3000 sliding, burst 30 (R = 49.5/s); S 50 ms, V 200 ms,
 * F 3 s; offered 2 x R.  C = ceil(R V) + B = 40.
 */
#include "hosts.h"

#define PASSWORD "s3cret-fleet-pw-7731"

static fh_fleet fl;

int main(void)
{
    plan(15);
    fh_init(&fl, 3, 3000, 30, PASSWORD);
    double R = 1e9 / (double)fl.T;
    uint64_t C = (uint64_t)ceil(R * fl.V / 1000.0) + fl.B;
    for (int i = 0; i < 3; i++)
        fh_host_create(&fl, i, NULL);
    fh_agent_start(&fl, 0, NULL);
    fh_agent_start(&fl, 1, NULL);
    fh_agent_start(&fl, 2, "not-the-password");
    rig__sleep_ms(300);

    /* A second agent on host 0's segment: exit 3, nothing changed. */
    char cmd[800], out[65536];
    snprintf(cmd, sizeof cmd,
             "KEYMESH_STORE_PASSWORD=%s %s sync %s --store redis://127.0.0.1:%d --host-id hx "
             "2>&1",
             PASSWORD, fl.kmctl, fl.h[0].seg, fl.redis.port);
    int rc = fh_cmd_out(cmd, out, sizeof out);
    is_int(rc, 3, "a second agent on a segment exits 3");
    ok(strstr(out, "agent") != NULL, "and says why: %.200s", out);

    /* A segment without fleet keys: nothing to sync, exit 1, said why. */
    {
        char seg[64], cfgp[256];
        snprintf(seg, sizeof seg, "kmt-fleet-%d-nofleet", (int)getpid());
        snprintf(cfgp, sizeof cfgp, "%s/nofleet.json", fl.dir);
        FILE *c = fopen(cfgp, "w");
        if (!c)
            bail_out("%s: %s", cfgp, strerror(errno));
        fputs("{\"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", "
              "\"secret\": \"sk-fleet-test-0002\"}]}]}\n",
              c);
        fclose(c);
        snprintf(cmd, sizeof cmd,
                 "%s create %s --config %s >/dev/null && %s sync %s --store "
                 "redis://127.0.0.1:%d --host-id hy 2>&1; rc=$?; %s destroy %s >/dev/null; "
                 "exit $rc",
                 fl.kmctl, seg, cfgp, fl.kmctl, seg, fl.redis.port, fl.kmctl, seg);
        rc = fh_cmd_out(cmd, out, sizeof out);
        ok(rc == 1 && strstr(out, "no fleet keys"),
           "a segment without fleet keys: exit 1, said why (rc %d: %.200s)", rc, out);
    }

    uint64_t t0 = fh_now() + 200000000ull, t1 = t0 + 6000000000ull;
    fh_work wk = {.rate = 2 * R / 4, .until = t1};
    for (int i = 0; i < 3; i++)
        fh_workers_start(&fl, i, 2, &wk);

    /* Mid-run: a garbage reply and a truncated one to host 0's agent. */
    fh_sleep_until(t0 + 2000000000ull);
    ok(rig_ctl(&fl.h[0].proxy, "garbage FCALL") == 0, "proxy: garbage FCALL");
    rig__sleep_ms(300);
    ok(rig_ctl(&fl.h[0].proxy, "truncate FCALL 7") == 0, "proxy: truncate FCALL 7");
    fh_sleep_until(t0 + 4000000000ull);

    snprintf(cmd, sizeof cmd,
             "KEYMESH_STORE_PASSWORD=%s %s fleet %s --store redis://127.0.0.1:%d --json 2>&1",
             PASSWORD, fl.kmctl, fl.h[0].seg, fl.redis.port);
    rc = fh_cmd_out(cmd, out, sizeof out);
    ok(rc == 0 && strstr(out, "\"host\": \"h0\"") && strstr(out, "\"host\": \"h1\"") &&
           strstr(out, "\"key\": \"p/a\"") && !strstr(out, "\"host\": \"h2\""),
       "kmctl fleet --json lists h0 and h1 (not h2) and names the key p/a (rc %d)", rc);
    if (rc != 0)
        diag("%.400s", out);

    for (int i = 0; i < 3; i++)
        fh_workers_wait(&fl.h[i]);

    size_t n, n0, n1, n2;
    uint64_t *t = fh_times(&fl, -1, &n), at = 0;
    free(fh_times(&fl, 0, &n0));
    free(fh_times(&fl, 1, &n1));
    free(fh_times(&fl, 2, &n2));
    ok(n0 > 0 && n1 > 0, "both hosts admit (%zu, %zu)", n0, n1);
    is_u64(n2, 0, "the host whose agent has the wrong password admits nothing (policy stop)");
    double ex = fh_excess(&fl, t, n, 0, UINT64_MAX, &at);
    ok(ex <= (double)C, "every window <= L + C: worst excess %.1f units (C = %" PRIu64 ")", ex, C);
    double gp = fh_goodput(&fl, t, n, t0 + 1000000000ull, t1 - 100000000ull);
    ok(gp >= 0.85, "goodput %.3f of the limit's rate (2 hosts, 2 x offered)", gp);
    diag("SUMMARY t_agent hosts=2 admitted=%zu worst_excess=%.1f C=%" PRIu64 " goodput=%.3f", n,
         ex, C, gp);
    free(t);

    ok(fh_file_has(fl.h[0].log, "invalid reply"), "agent 0 logs the invalid reply");
    ok(fh_file_has(fl.h[2].log, "authentication"), "agent 2 logs the authentication failure");

    int s0 = fh_agent_stop(&fl.h[0]), s1 = fh_agent_stop(&fl.h[1]), s2 = fh_agent_stop(&fl.h[2]);
    ok(s0 == 0 && s1 == 0 && s2 == 0, "SIGTERM: every agent exits 0 (%d %d %d)", s0, s1, s2);
    ok(fh_file_has(fl.h[0].log, "credit handed back") &&
           !fh_file_has(fl.h[0].log, "did not answer"),
       "agent 0 handed its credit back and the ledger answered");
    int leak = 0;
    for (int i = 0; i < 3; i++)
        leak |= fh_file_has(fl.h[i].log, PASSWORD) || fh_file_has(fl.h[i].log, "not-the-pass") ||
                fh_file_has(fl.h[i].log, "sk-fleet-test");
    ok(!leak, "no agent log holds a password or the key's secret");
    if (tap_failures())
        for (int i = 0; i < 3; i++) {
            diag("agent %d log:", i);
            fh_show_log(fl.h[i].log, 30);
        }
    return exit_status();
}
