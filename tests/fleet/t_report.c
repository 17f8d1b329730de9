/*
 * tests/fleet/t_report.c - an agent killed with a report unanswered does
 * not lose it (DESIGN.md rule 1, "the report in the segment"): the ledger
 * charges exactly the units the host's workers admitted.  About 6 s, in
 * make test.
 *
 * One host (rpm 3000 sliding, burst 30; S 50 ms, V 2 s, F 4 s), two
 * workers.  Phase 1 runs with the ledger's clock free, so the host holds
 * credit.  Then the ledger's clock is frozen (its `clock` field, as
 * t_ledger drives it): nothing drains, no host is swept, so every unit a
 * report commits stays in the bucket's level `lv`, and lv after - lv before
 * is exactly what the ledger charged.  Phase 2: the workers spend the
 * credit held; the host's link is black-holed (its report goes
 * unanswered, and so do the retries), its agent SIGKILLed, the link
 * restored, a new agent started.  Before the fix the units of the
 * unanswered report (and those collected during the black hole) were
 * dropped from the reservation uncharged: lv grew by less than admitted.
 * The key has a budget too (post-paid, fleet-wide): the ledger's total for
 * it must equal what the host spent, the spend of the unanswered report
 * included (before that fix it was lost with the agent).
 */
#include "hosts.h"
#include "sim.h"

static fh_fleet fl;

/* The bucket of the fleet's only (key, window): its level lv and its
 * reservation rs, exact (the ledger's record, cmsgpack-decoded by Redis). */
static void ledger_kw(redisContext *c, double *lv, double *rs)
{
    redisReply *r = redisCommand(
        c, "EVAL %s 1 {km:default}:ledger",
        "local h = redis.call('HGETALL', KEYS[1]) "
        "for i = 1, #h, 2 do if h[i]:sub(1, 2) == 'k:' then "
        "local t = cmsgpack.unpack(h[i + 1]) "
        "return {string.format('%.17g', t[1]), string.format('%.17g', t[3])} end end "
        "return redis.error_reply('no kw')");
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
        bail_out("reading the ledger: %s", r && r->str ? r->str : c->errstr);
    *lv = strtod(r->element[0]->str, NULL);
    *rs = strtod(r->element[1]->str, NULL);
    freeReplyObject(r);
}

/* The ledger's total of the fleet's only budget (its `b:` field). */
static double ledger_budget_total(redisContext *c)
{
    redisReply *r = redisCommand(
        c, "EVAL %s 1 {km:default}:ledger",
        "local h = redis.call('HGETALL', KEYS[1]) "
        "for i = 1, #h, 2 do if h[i]:sub(1, 2) == 'b:' then "
        "local t = cmsgpack.unpack(h[i + 1]) "
        "return string.format('%.17g', t.tot or t[2]) end end "
        "return '0'");
    double v = r && r->type == REDIS_REPLY_STRING ? strtod(r->str, NULL) : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

static uint64_t redis_time_us(redisContext *c)
{
    redisReply *r = redisCommand(c, "TIME");
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
        bail_out("TIME: %s", c->errstr);
    uint64_t us = strtoull(r->element[0]->str, NULL, 10) * 1000000u +
                  strtoull(r->element[1]->str, NULL, 10);
    freeReplyObject(r);
    return us;
}

#define MS_NS 1000000ull

int main(void)
{
    plan(8);
    fh_init(&fl, 1, 3000, 30, NULL);
    fl.V = 2000;
    fl.F = 4000;
    double R = 1e9 / (double)fl.T;
    uint64_t C = (uint64_t)ceil(R * fl.V / 1000.0) + fl.B;
    fh_host *h = &fl.h[0];
    /* 10 output tokens at 1 USD per 1k: 10 000 micro-USD a request. */
    fh_host_create(&fl, 0, ", \"price\": {\"output_per_1k\": 1.0}, "
                           "\"budget\": {\"usd\": 100000, \"mode\": \"soft\"}");
    fh_agent_start(&fl, 0, NULL);
    redisContext *dc = rig_redis_conn(&fl.redis);

    /* Phase 1, the clock free: spend, then idle so the host fills up. */
    uint64_t t0 = fh_now() + 200 * MS_NS, t1 = t0 + 1000 * MS_NS;
    fh_work wk = {.rate = R, .until = t1, .out_tokens = 10};
    fh_workers_start(&fl, 0, 2, &wk);
    fh_workers_wait(h);
    fh_sleep_until(t1 + 1500 * MS_NS);

    /* Freeze the ledger's clock; two syncs at it, and the bucket is exact. */
    uint64_t frozen = redis_time_us(dc);
    ledger_clock(dc, "default", frozen);
    rig__sleep_ms(300);
    double lv0, rs0, lv1, rs1;
    ledger_kw(dc, &lv0, &rs0);
    km_fleet_status st0;
    km_env *env;
    if (km_open(h->seg, &env) != KM_OK)
        bail_out("km_open %s", h->seg);
    km_fleet_status_get(env, &st0);

    /* Phase 2: spend what is held; black hole, kill, restore, restart. */
    uint64_t t2 = fh_now(), t3 = t2 + 2500 * MS_NS;
    wk = (fh_work){.rate = R, .until = t3, .out_tokens = 10};
    fh_workers_start(&fl, 0, 2, &wk);
    fh_sleep_until(t2 + 150 * MS_NS);
    ok(rig_ctl(&h->proxy, "blackhole") == 0, "the host's link black-holed");
    fh_sleep_until(t2 + 700 * MS_NS);
    km_fleet_status st1;
    km_fleet_status_get(env, &st1);
    fh__kill_wait(&h->agent, SIGKILL);
    ok(st1.seq > st1.ack && st1.seq > st0.seq,
       "killed with a report unanswered (seq %" PRIu64 ", ack %" PRIu64 ")", st1.seq, st1.ack);
    rig_ctl(&h->proxy, "pass");
    fh_agent_start(&fl, 0, NULL);
    fh_workers_wait(h);
    rig__sleep_ms(500);
    ledger_kw(dc, &lv1, &rs1);

    size_t n, n2;
    uint64_t *t = fh_times(&fl, 0, &n), at = 0;
    n2 = fh_count(t, n, t2, UINT64_MAX);
    double charged = lv1 - lv0;
    ok(n2 >= 20, "phase 2: the workers admitted %zu units on the credit held", n2);
    ok(fabs(charged - (double)n2) < 1e-6,
       "the ledger charged exactly what was admitted: %.3f charged, %zu admitted", charged, n2);
    ok(fh_file_has(h->log, "resending report"), "the new agent resent the report it found");
    km_key_info kinfo;
    int kix = km_key_find(env, km_pool_find(env, "p"), "a");
    uint64_t here = kix >= 0 && km_key_info_get(env, kix, &kinfo) == KM_OK ? kinfo.spent_microusd : 0;
    double total = ledger_budget_total(dc);
    ok(here > 0 && fabs(total - (double)here) < 0.5,
       "the ledger's budget total is what the host spent, the unanswered report's spend "
       "included: %.0f of %" PRIu64 " micro-USD",
       total, here);
    double ex = fh_excess(&fl, t, n, 0, UINT64_MAX, &at);
    ok(ex <= (double)C, "every window <= L + C: worst excess %.1f units (C = %" PRIu64 ")", ex, C);
    diag("SUMMARY t_report admitted2=%zu charged=%.3f lv %.3f -> %.3f rs %.3f -> %.3f", n2,
         charged, lv0, lv1, rs0, rs1);
    free(t);
    km_close(env);
    is_int(fh_agent_stop(h), 0, "SIGTERM: the new agent exits 0");
    if (tap_failures())
        fh_show_log(h->log, 40);
    redisFree(dc);
    return exit_status();
}
