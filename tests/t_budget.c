/*
 * t_budget.c - budgets with a period (issue 18): the calendar of days,
 * weeks and months in fixed time zones; a boundary crossed while four
 * processes settle spend rolls exactly once and loses no cost; a hard
 * budget with a period passes its key over until the period rolls; a soft
 * pool budget warns once; km_spend_reset; bad periods and time zones.
 *
 * The boundary is injected: the test writes a spend record's end_ns (the
 * instant the library computed at creation) to a moment 300 ms ahead, as
 * if midnight were that close; the roll then computes the real next
 * boundary from the clock.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "budget.h"
#include "internal.h"
#include "keymesh.h"
#include "tap.h"

#define S(x) ((uint64_t)(x) * KM__NS_PER_S)

static char name[64];
static km_config *cfg;

static km_env *make(const char *js)
{
    char err[512] = "";
    km_env *e = NULL;
    km_unlink(name);
    if (km_config_parse(js, strlen(js), "t_budget", &cfg, err, sizeof err) ||
        km_create(name, cfg, 0, &e))
        bail_out("cannot create segment %s: %s", name, err);
    return e;
}

static void done(km_env *e)
{
    km_close(e);
    km_unlink(name);
    km_config_free(cfg);
}

/* 1 in at $1/1k + 2 out at $2/1k: 5000 micro-USD. */
static km_outcome priced(void)
{
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = 3,
                    .input_tokens = 1, .output_tokens = 2};
    return o;
}

/* Parse must fail, with `want` in its message. */
static void refused(const char *budget, const char *want, const char *what)
{
    char js[512], err[512] = "";
    km_config *c = NULL;
    snprintf(js, sizeof js, "{\"pools\":[{\"name\":\"p\",\"budget\":%s,\"keys\":[{\"id\":\"a\","
                            "\"secret\":\"sk-test-budget00\"}]}]}", budget);
    int rc = km_config_parse(js, strlen(js), "t_budget", &c, err, sizeof err);
    is_int(rc, KM_ECONFIG, "refused: %s", what);
    ok(strstr(err, want) != NULL, "  the message says %s: %s", want, err);
    km_config_free(c);
}

static void calendar(void)
{
    const uint64_t t = S(1796284446); /* Thu 2026-12-03 07:54:06 UTC */
    is_u64(km__period_end(KM__PERIOD_DAY, 0, t), S(1796342400), "day UTC: ends 2026-12-04 00:00");
    is_u64(km__period_start(KM__PERIOD_DAY, 0, t), S(1796342400 - 86400), "day UTC: began 12-03 00:00");
    is_u64(km__period_end(KM__PERIOD_WEEK, 0, t), S(1796601600), "week: ends Monday 2026-12-07");
    is_u64(km__period_start(KM__PERIOD_WEEK, 0, t), S(1795996800), "week: began Monday 2026-11-30");
    is_u64(km__period_end(KM__PERIOD_MONTH, 0, t), S(1798761600), "month: December ends 2027-01-01");
    is_u64(km__period_start(KM__PERIOD_MONTH, 0, t), S(1796083200), "month: began 2026-12-01");
    is_u64(km__period_end(KM__PERIOD_DAY, 120, t), S(1796335200),
           "day at +02:00: local midnight is 22:00 UTC");
    is_u64(km__period_end(KM__PERIOD_DAY, -300, S(1796266800)), S(1796274000),
           "day at -05:00, 03:00 UTC (22:00 the day before): ends 05:00 UTC");
    is_u64(km__period_end(KM__PERIOD_MONTH, 0, S(1834228800)), S(1835481600),
           "month of a leap February (2028): ends March 1st");
    is_u64(km__period_start(KM__PERIOD_MONTH, 0, S(1834228800)), S(1832976000), "  began February 1st");
    is_u64(km__period_end(KM__PERIOD_MONTH, 120, S(1798759800)), S(1798761600 + 31 * 86400 - 7200),
           "month at +02:00 on 12-31 23:30 UTC (already January there): ends Feb 1st local");
    is_u64(km__period_start(KM__PERIOD_MONTH, 120, S(1796076000)), S(1796076000),
           "a boundary itself starts the period (12-01 00:00 at +02:00)");
    is_u64(km__period_end(KM__PERIOD_NONE, 0, t), UINT64_MAX, "no period: never ends");
}

static void bad_input(void)
{
    refused("{\"usd\":5,\"period\":\"fortnight\"}", "is not a period", "period \"fortnight\"");
    refused("{\"usd\":5,\"period\":7}", "is not a period", "period 7 (not a string)");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Mars/Olympus_Mons\"}", "not a time zone",
            "time zone Mars/Olympus_Mons");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Europe/Paris\"}", "use \"UTC\" or a fixed offset",
            "zone names: Europe/Paris (what is accepted is named)");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+15:00\"}", "not a time zone", "offset +15:00");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+2:00\"}", "not a time zone", "offset +2:00");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+-1:00\"}", "not a time zone", "offset +-1:00");
    refused("{\"usd\":5,\"mode\":\"medium\"}", "\"hard\" or \"soft\"", "mode \"medium\"");
    refused("{\"usd\":5,\"mode\":\"soft\",\"hard\":true}", "disagree", "mode soft with hard true");
    refused("{\"usd\":5,\"per\":\"day\"}", "unknown field", "a misspelt field");
}

/* Four processes settle while the injected boundary passes. */
static void roll_once(void)
{
    km_env *e = make("{\"pools\":[{\"name\":\"p\",\"price\":{\"input_per_1k\":1.0,\"output_per_1k\":2.0},"
                     "\"budget\":{\"usd\":1000000,\"period\":\"day\",\"mode\":\"soft\",\"tz\":\"UTC\"},"
                     "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-budget0k\","
                     "\"budget\":{\"usd\":1000000,\"period\":\"day\"}}]}]}");
    km__key *k = &km__keys(e)[0];
    km__pool *p = &km__pools(e)[0];
    uint64_t *count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (count == MAP_FAILED)
        bail_out("mmap");
    uint64_t now = km__wall_ns(), boundary = now + 300 * KM__NS_PER_MS;
    is_u64(ck_pr_load_64(&k->spend.end_ns), km__period_end(KM__PERIOD_DAY, 0, now),
           "at creation the key's period ends at the next UTC midnight");
    ck_pr_store_64(&k->spend.end_ns, boundary);
    ck_pr_store_64(&p->spend.end_ns, boundary);
    pid_t pids[4];
    for (int i = 0; i < 4; i++) {
        if ((pids[i] = fork()) == 0) {
            km_env *c = NULL;
            if (km_open(name, &c))
                _exit(2);
            km_request any = {.pool = 0};
            km_lease l;
            km_outcome o = priced();
            while (km__wall_ns() < boundary + 400 * KM__NS_PER_MS) {
                if (km_acquire(c, &any, &l) == KM_OK && km_release(c, &l, &o) == KM_OK)
                    ck_pr_inc_64(count);
            }
            km_close(c);
            _exit(0);
        }
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st);
    }
    is_int(bad, 0, "four workers settled across the boundary");
    uint64_t n = ck_pr_load_64(count), total = n * 5000;
    km_key_info ki;
    km_pool_info pi;
    km_key_info_get(e, 0, &ki);
    km_pool_info_get(e, 0, &pi);
    diag("%" PRIu64 " releases; key: prev %" PRIu64 " now %" PRIu64, n, ki.budget.prev_spent_microusd,
         ki.spent_microusd);
    is_int(ck_pr_load_32(&k->spend.rolls), 1, "the key's period rolled exactly once");
    is_int(ck_pr_load_32(&p->spend.rolls), 1, "the pool's period rolled exactly once");
    is_u64(ki.budget.prev_spent_microusd + ki.spent_microusd, total,
           "key: previous + current period = every cost settled (none lost or doubled)");
    is_u64(pi.budget.prev_spent_microusd + pi.spent_microusd, total, "pool: the same");
    ok(ki.budget.prev_spent_microusd > 0 && ki.spent_microusd > 0, "spend on both sides of the boundary");
    is_u64(ki.budget.period_end_unix_ns, km__period_end(KM__PERIOD_DAY, 0, km__wall_ns()),
           "the new period ends at the next real midnight");
    is_int(ki.budget.period, KM_BUDGET_DAY, "km_key_info.budget.period");
    is_int(pi.budget.rolls, 1, "km_pool_info.budget.rolls");

    /* A suspend (or a stopped segment) past whole periods: the ended
     * period was not the one before, so nothing is "previous". */
    uint64_t start = km__period_start(KM__PERIOD_DAY, 0, km__wall_ns());
    ck_pr_store_64(&k->spend.end_ns, start - 2 * KM__S_PER_DAY * KM__NS_PER_S);
    km_request any = {.pool = 0};
    km_lease l;
    km_outcome o = priced();
    is_int(km_acquire(e, &any, &l), KM_OK, "acquire after a long suspend");
    km_release(e, &l, &o);
    km_key_info_get(e, 0, &ki);
    is_u64(ki.budget.prev_spent_microusd, 0, "periods skipped: previous spend 0");
    is_u64(ki.spent_microusd, 5000, "  the new period holds only the new cost");
    is_int(ck_pr_load_32(&k->spend.rolls), 2, "  one roll more");
    /* A clock set back does not un-roll. */
    ok(km__spend_roll(&k->spend, KM__PERIOD_DAY, 0, km__wall_ns() - KM__S_PER_DAY * KM__NS_PER_S) == 0,
       "a clock a day behind rolls nothing");
    munmap(count, 4096);
    done(e);
}

static void hard_and_soft(void)
{
    km_env *e = make("{\"pools\":[{\"name\":\"p\",\"price\":{\"input_per_1k\":1.0,\"output_per_1k\":2.0},"
                     "\"budget\":{\"usd\":0.008,\"mode\":\"soft\"},"
                     "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-budget0k\","
                     "\"budget\":{\"usd\":0.01,\"period\":\"month\",\"mode\":\"hard\",\"tz\":\"+02:00\"}}]}]}");
    km_request any = {.pool = 0};
    km_lease l;
    km_outcome o = priced();
    km_key_info ki;
    km_pool_info pi;
    for (int i = 0; i < 2; i++) {
        is_int(km_acquire(e, &any, &l), KM_OK, "hard month budget: request %d acquired", i + 1);
        km_release(e, &l, &o);
    }
    km_key_info_get(e, 0, &ki);
    km_pool_info_get(e, 0, &pi);
    is_u64(ki.spent_microusd, 10000, "the key has spent its $0.01");
    is_int(ki.state, KM_KEY_ACTIVE, "a budget with a period does not make the key exhausted");
    ok(ki.budget.over == 1 && ki.budget.tz_min == 120, "budget_over 1, tz +120 min");
    is_int(km_acquire(e, &any, &l), KM_EUNAVAIL, "spent: the key is passed over this month");
    is_int(pi.budget.warnings, 1, "the soft pool budget ($0.008) was crossed: one warning");
    is_int(pi.budget.over, 1, "  and it is flagged over");
    /* The month ends (injected): the first acquire rolls and gets the key. */
    ck_pr_store_64(&km__keys(e)[0].spend.end_ns, km__wall_ns() - 1);
    is_int(km_acquire(e, &any, &l), KM_OK, "the period ended: the key serves again");
    km_release(e, &l, &o);
    km_key_info_get(e, 0, &ki);
    is_u64(ki.budget.prev_spent_microusd, 10000, "  last period's spend is the previous one");
    is_u64(ki.spent_microusd, 5000, "  this one holds the new request");
    /* A snapshot and its restore keep the period, the zone, both periods'
     * spend and the period's end. */
    unsigned char skey[KM_SNAPSHOT_KEY_BYTES] = {7};
    char *js = NULL, err[256] = "", name2[80];
    km_env *r = NULL;
    snprintf(name2, sizeof name2, "%s_r", name);
    km_unlink(name2);
    is_int(km_snapshot_json_ex(e, KM_SNAPSHOT_SECRETS, skey, &js), KM_OK, "snapshot");
    ok(js && strstr(js, "\"period\": \"month\"") && strstr(js, "\"tz\": \"+02:00\""),
       "  the snapshot names the period and the zone");
    is_int(km_restore(name2, js, strlen(js), skey, 0, &r, err, sizeof err), KM_OK, "restore: %s", err);
    if (r) {
        km_key_info rk;
        km_key_info_get(r, 0, &rk);
        ok(rk.budget.period == KM_BUDGET_MONTH && rk.budget.tz_min == 120 && rk.budget_hard == 1,
           "  restored: a hard month budget at +02:00");
        ok(rk.spent_microusd == 5000 && rk.budget.prev_spent_microusd == 10000,
           "  restored: this period's and the previous period's spend");
        is_u64(rk.budget.period_end_unix_ns / KM__NS_PER_MS, ki.budget.period_end_unix_ns / KM__NS_PER_MS,
               "  restored: the same period end");
        km_close(r);
    }
    km_unlink(name2);
    free(js);
    /* Operator reset. */
    uint64_t was = 0;
    is_int(km_spend_reset(e, 0, &was), KM_OK, "km_spend_reset");
    is_u64(was, 5000, "  says what the spend was");
    km_key_info_get(e, 0, &ki);
    is_u64(ki.spent_microusd, 0, "  and it is 0");
    is_u64(ki.budget.prev_spent_microusd, 10000, "  the previous period is kept");
    is_int(km_pool_spend_reset(e, 0, &was), KM_OK, "km_pool_spend_reset");
    is_u64(was, 15000, "  the pool had spent $0.015");
    km_pool_info_get(e, 0, &pi);
    ok(pi.spent_microusd == 0 && pi.budget.over == 0, "  now 0, no longer over");
    is_int(km_spend_reset(e, 5, NULL), KM_ENOKEY, "a key row not in use: KM_ENOKEY");
    is_int(km_pool_spend_reset(e, 3, NULL), KM_ENOPOOL, "no such pool: KM_ENOPOOL");
    done(e);
}

int main(void)
{
    snprintf(name, sizeof name, "/km_t_budget_%d", (int)getpid());
    plan(74);
    calendar();
    bad_input();
    roll_once();
    hard_and_soft();
    return exit_status();
}
