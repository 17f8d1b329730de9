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
#include <errno.h>
#include <sys/stat.h>
#include <time.h>

#include <ck_pr.h>

#include "budget.h"
#include "internal.h"
#include "tz.h"
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
    is_u64(km__period_end(KM__PERIOD_DAY, 0, NULL, t), S(1796342400), "day UTC: ends 2026-12-04 00:00");
    is_u64(km__period_start(KM__PERIOD_DAY, 0, NULL, t), S(1796342400 - 86400), "day UTC: began 12-03 00:00");
    is_u64(km__period_end(KM__PERIOD_WEEK, 0, NULL, t), S(1796601600), "week: ends Monday 2026-12-07");
    is_u64(km__period_start(KM__PERIOD_WEEK, 0, NULL, t), S(1795996800), "week: began Monday 2026-11-30");
    is_u64(km__period_end(KM__PERIOD_MONTH, 0, NULL, t), S(1798761600), "month: December ends 2027-01-01");
    is_u64(km__period_start(KM__PERIOD_MONTH, 0, NULL, t), S(1796083200), "month: began 2026-12-01");
    is_u64(km__period_end(KM__PERIOD_DAY, 120, NULL, t), S(1796335200),
           "day at +02:00: local midnight is 22:00 UTC");
    is_u64(km__period_end(KM__PERIOD_DAY, -300, NULL, S(1796266800)), S(1796274000),
           "day at -05:00, 03:00 UTC (22:00 the day before): ends 05:00 UTC");
    is_u64(km__period_end(KM__PERIOD_MONTH, 0, NULL, S(1834228800)), S(1835481600),
           "month of a leap February (2028): ends March 1st");
    is_u64(km__period_start(KM__PERIOD_MONTH, 0, NULL, S(1834228800)), S(1832976000), "  began February 1st");
    is_u64(km__period_end(KM__PERIOD_MONTH, 120, NULL, S(1798759800)), S(1798761600 + 31 * 86400 - 7200),
           "month at +02:00 on 12-31 23:30 UTC (already January there): ends Feb 1st local");
    is_u64(km__period_start(KM__PERIOD_MONTH, 120, NULL, S(1796076000)), S(1796076000),
           "a boundary itself starts the period (12-01 00:00 at +02:00)");
    is_u64(km__period_end(KM__PERIOD_NONE, 0, NULL, t), UINT64_MAX, "no period: never ends");
}

static void bad_input(void)
{
    refused("{\"usd\":5,\"period\":\"fortnight\"}", "is not a period", "period \"fortnight\"");
    refused("{\"usd\":5,\"period\":7}", "is not a period", "period 7 (not a string)");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Mars/Olympus_Mons\"}", "not a time zone",
            "time zone Mars/Olympus_Mons");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Mars/Olympus\"}", "/Mars/Olympus",
            "time zone Mars/Olympus (the message names the path)");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"../etc/passwd\"}", "no '..'",
            "time zone ../etc/passwd");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"/etc/passwd\"}", "no leading '/'",
            "time zone /etc/passwd");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+15:00\"}", "not a time zone", "offset +15:00");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+2:00\"}", "not a time zone", "offset +2:00");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"+-1:00\"}", "not a time zone", "offset +-1:00");
    /* More distinct zones than a segment keeps: refused at parse time. */
    static const char *const zones[] = {"Europe/Paris", "Europe/London", "Europe/Berlin",
                                        "America/New_York", "America/Chicago", "Asia/Tokyo",
                                        "Asia/Kolkata", "Australia/Sydney", "Africa/Cairo"};
    char js[2048], err[512] = "";
    int n = snprintf(js, sizeof js, "{\"pools\":[{\"name\":\"p\",\"keys\":[");
    for (int i = 0; i < 9; i++)
        n += snprintf(js + n, sizeof js - (size_t)n,
                      "%s{\"id\":\"k%d\",\"secret\":\"sk-test-budgetz%d\",\"budget\":{\"usd\":1,"
                      "\"tz\":\"%s\"}}", i ? "," : "", i, i, zones[i]);
    snprintf(js + n, sizeof js - (size_t)n, "]}]}");
    km_config *c9 = NULL;
    is_int(km_config_parse(js, strlen(js), "t_budget", &c9, err, sizeof err), KM_ECONFIG,
           "9 distinct zones: refused (a segment keeps 8)");
    ok(strstr(err, "Africa/Cairo") && strstr(err, "more than 8 time zones"), "  the message says so: %s", err);
    km_config_free(c9);
    refused("{\"usd\":5,\"mode\":\"medium\"}", "\"hard\" or \"soft\"", "mode \"medium\"");
    refused("{\"usd\":5,\"mode\":\"soft\",\"hard\":true}", "disagree", "mode soft with hard true");
    refused("{\"usd\":5,\"per\":\"day\"}", "unknown field", "a misspelt field");
}

/* Four processes settle while the injected boundary passes. */
static void roll_once(const char *tz)
{
    char js[1024];
    snprintf(js, sizeof js,
             "{\"pools\":[{\"name\":\"p\",\"price\":{\"input_per_1k\":1.0,\"output_per_1k\":2.0},"
             "\"budget\":{\"usd\":1000000,\"period\":\"day\",\"mode\":\"soft\",\"tz\":\"%s\"},"
             "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-budget0k\","
             "\"budget\":{\"usd\":1000000,\"period\":\"day\",\"tz\":\"%s\"}}]}]}", tz, tz);
    km_env *e = make(js);
    diag("roll_once in zone %s", tz);
    km__key *k = &km__keys(e)[0];
    km__pool *p = &km__pools(e)[0];
    const int32_t kz = k->budget_tz_min; /* the zone's code */
    uint64_t *count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (count == MAP_FAILED)
        bail_out("mmap");
    uint64_t now = km__wall_ns(), boundary = now + 300 * KM__NS_PER_MS;
    is_u64(ck_pr_load_64(&k->spend.end_ns), km__period_end(KM__PERIOD_DAY, kz, e->tzt, now),
           "at creation the key's period ends at the next local midnight");
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
    is_u64(ki.budget.period_end_unix_ns, km__period_end(KM__PERIOD_DAY, kz, e->tzt, km__wall_ns()),
           "the new period ends at the next real midnight");
    is_int(ki.budget.period, KM_BUDGET_DAY, "km_key_info.budget.period");
    is_int(pi.budget.rolls, 1, "km_pool_info.budget.rolls");

    /* A suspend (or a stopped segment) past whole periods: the ended
     * period was not the one before, so nothing is "previous". */
    uint64_t start = km__period_start(KM__PERIOD_DAY, kz, e->tzt, km__wall_ns());
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
    ok(km__spend_roll(&k->spend, KM__PERIOD_DAY, kz, e->tzt, km__wall_ns() - KM__S_PER_DAY * KM__NS_PER_S) == 0,
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

/* ------------------------------------------------ named time zones */

/* A one-row zone table holding zone `zn` (read from tzdata), its code
 * KM__TZ_NAMED. */
static km__tzone zt1[1];
static int load_zone(const char *zn)
{
    char err[512] = "";
    int rc = km__tz_load(zn, (int64_t)(km__wall_ns() / KM__NS_PER_S), &zt1[0], err, sizeof err);
    if (rc)
        diag("%s: %s", zn, err);
    zt1[0].used = 1;
    return rc;
}

#define NZ KM__TZ_NAMED
static uint64_t end_in(uint32_t period, int64_t at) { return km__period_end(period, NZ, zt1, S(at)); }
static uint64_t start_in(uint32_t period, int64_t at) { return km__period_start(period, NZ, zt1, S(at)); }

static void named_zones(void)
{
    ok(load_zone("Europe/Paris") == KM_OK, "Europe/Paris read from tzdata");
    is_u64(end_in(KM__PERIOD_DAY, 1774699200), S(1774738800),
           "Paris, Saturday 2026-03-28 (CET): the day ends at 23:00 UTC");
    is_u64(end_in(KM__PERIOD_DAY, 1774785600), S(1774821600),
           "Paris, Sunday 2026-03-29 (CEST from 02:00): the day ends at 22:00 UTC");
    is_u64(end_in(KM__PERIOD_DAY, 1792843200), S(1792879200),
           "Paris, Saturday 2026-10-24 (CEST): the day ends at 22:00 UTC");
    is_u64(end_in(KM__PERIOD_DAY, 1792929600), S(1792969200),
           "Paris, Sunday 2026-10-25 (CET from 03:00): the day ends at 23:00 UTC");
    is_u64(start_in(KM__PERIOD_DAY, 1792929600), S(1792879200), "  and began at 22:00 UTC the day before");
    ok(load_zone("America/New_York") == KM_OK, "America/New_York read");
    is_u64(end_in(KM__PERIOD_MONTH, 1773532800), S(1775016000),
           "New York, March 2026 ends 2026-04-01 04:00 UTC (EDT)");
    is_u64(end_in(KM__PERIOD_MONTH, 1794700800), S(1796101200),
           "New York, November 2026 ends 2026-12-01 05:00 UTC (EST)");
    ok(load_zone("Australia/Sydney") == KM_OK, "Australia/Sydney read");
    is_u64(end_in(KM__PERIOD_DAY, 1768435200), S(1768482000),
           "Sydney, January (AEDT, +11): the day ends at 13:00 UTC");
    is_u64(end_in(KM__PERIOD_DAY, 1784073600), S(1784124000),
           "Sydney, July (AEST, +10): the day ends at 14:00 UTC");
    ok(load_zone("Asia/Kolkata") == KM_OK, "Asia/Kolkata read");
    is_u64(end_in(KM__PERIOD_DAY, 1781524800), S(1781548200), "Kolkata (+05:30): the day ends at 18:30 UTC");
    is_int(km__tz_minutes(NZ, zt1, S(1781524800)), 330, "  its offset: 330 minutes");
    /* America/Santiago changes at 24:00: Sunday 2026-09-06 00:00 does not
     * exist; the day starts at the change (01:00 -03 = 04:00 UTC). */
    ok(load_zone("America/Santiago") == KM_OK, "America/Santiago read");
    is_u64(end_in(KM__PERIOD_DAY, 1788609600), S(1788667200),
           "Santiago: a midnight in a gap: the day ends at the gap's end (04:00 UTC)");
    is_u64(start_in(KM__PERIOD_DAY, 1788688800), S(1788667200), "  and the next day starts there");
    char nm[64];
    is_str(km__tz_name(NZ, zt1, nm, sizeof nm), "America/Santiago", "km__tz_name: the zone's name");
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* A TZif v2 file with one transition (1970, to +1h), two types (+1h, +2h
 * summer) and footer `rule`, which places every later change (glibc, which
 * the test compares with, ignores a footer when there is no transition). */
static size_t tzif(unsigned char *b, const char *rule)
{
    size_t n = 0;
    for (int v = 0; v < 2; v++) {
        memset(b + n, 0, 44);
        memcpy(b + n, "TZif2", 5);
        put32(b + n + 32, 1); /* timecnt */
        put32(b + n + 36, 2); /* typecnt: standard and summer time */
        put32(b + n + 40, 8); /* charcnt */
        n += 44;
        memset(b + n, 0, v ? 9 : 5); /* the transition at 0, to type 0 */
        n += v ? 9 : 5;
        put32(b + n, 3600), b[n + 4] = 0, b[n + 5] = 0;
        put32(b + n + 6, 7200), b[n + 10] = 1, b[n + 11] = 4;
        memcpy(b + n + 12, "XXX\0YYY", 8);
        n += 20;
    }
    n += (size_t)sprintf((char *)b + n, "\n%s\n", rule);
    return n;
}

static void write_file(const char *dir, const char *nm, const void *b, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, nm);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f))
        bail_out("cannot write %s", path);
}

/* Our day and month boundaries against glibc's mktime in zone TZ=`tzenv`,
 * for every day of 2026-2040: exact equality. */
static void agrees(const char *tzenv, const char *what)
{
    setenv("TZ", tzenv, 1);
    tzset();
    int bad = 0, days = 0;
    for (int y = 2026; y <= 2040; y++)
        for (int m = 1; m <= 12; m++)
            for (int d = 1; d <= 31; d++) {
                struct tm t0 = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d, .tm_isdst = -1};
                struct tm t1 = t0, tm1 = t0, tn = t0;
                time_t a = mktime(&t0);
                if (t0.tm_mon != m - 1)
                    continue; /* no such date */
                t1.tm_mday = d + 1;
                time_t b = mktime(&t1);
                tm1.tm_mday = 1;
                time_t ms = mktime(&tm1);
                tn.tm_mday = 1, tn.tm_mon = m;
                time_t me = mktime(&tn);
                int64_t noon = (int64_t)a + 12 * 3600;
                days++;
                if (start_in(KM__PERIOD_DAY, noon) != S(a) || end_in(KM__PERIOD_DAY, noon) != S(b) ||
                    start_in(KM__PERIOD_MONTH, noon) != S(ms) ||
                    end_in(KM__PERIOD_MONTH, noon) != S(me)) {
                    if (bad++ < 3)
                        diag("%s %04d-%02d-%02d: ours %" PRIu64 "..%" PRIu64 ", month %" PRIu64
                             "..%" PRIu64 "; glibc %lld..%lld, %lld..%lld", what, y, m, d,
                             start_in(KM__PERIOD_DAY, noon) / KM__NS_PER_S,
                             end_in(KM__PERIOD_DAY, noon) / KM__NS_PER_S,
                             start_in(KM__PERIOD_MONTH, noon) / KM__NS_PER_S,
                             end_in(KM__PERIOD_MONTH, noon) / KM__NS_PER_S, (long long)a,
                             (long long)b, (long long)ms, (long long)me);
                }
            }
    unsetenv("TZ");
    tzset();
    ok(bad == 0 && days > 5000, "%s: day and month boundaries = glibc's for %d days of 2026-2040",
       what, days);
}

static void glibc_agrees(void)
{
    static const char *const zones[] = {"Europe/Paris", "America/New_York", "Australia/Sydney",
                                        "Asia/Kolkata", "Europe/London", "America/Sao_Paulo"};
    for (size_t i = 0; i < sizeof zones / sizeof zones[0]; i++) {
        char env[80];
        snprintf(env, sizeof env, ":%s", zones[i]);
        if (load_zone(zones[i]) != KM_OK)
            bail_out("tzdata: %s (make deps installs tzdata)", zones[i]);
        agrees(env, zones[i]);
    }
    /* Beyond the explicit changes: Paris in 2050 is the footer's rule's
     * (a fat file lists changes to 2037; a slim one to 1996 or so). */
    load_zone("Europe/Paris");
    ok(zt1[0].rule_from < (int64_t)2524608000, "Paris: explicit changes end before 2050");
    setenv("TZ", ":Europe/Paris", 1);
    tzset();
    struct tm t = {.tm_year = 150, .tm_mon = 2, .tm_mday = 28, .tm_isdst = -1};
    time_t want = mktime(&t); /* 2050-03-28 00:00, the day after the change */
    is_u64(start_in(KM__PERIOD_DAY, (int64_t)want + 3600), S(want),
           "Paris 2050-03-28: the footer rule places the day (glibc agrees)");
    unsetenv("TZ");
    tzset();
}

static char tzdir[64];

/* Crafted TZif files in an injected TZDIR: a zone given only by its footer
 * (compared with glibc reading the same file), and broken files refused
 * with the path in the message. */
static void crafted_tzif(void)
{
    unsigned char b[512];
    snprintf(tzdir, sizeof tzdir, "/tmp/t_budget_tz.%d", (int)getpid());
    if (mkdir(tzdir, 0700) && errno != EEXIST)
        bail_out("mkdir %s", tzdir);
    char sub[128];
    snprintf(sub, sizeof sub, "%s/Test", tzdir);
    mkdir(sub, 0700);
    size_t n = tzif(b, "XXX-1YYY,M3.5.0,M10.5.0/3");
    write_file(tzdir, "Test/Rule", b, n);
    write_file(tzdir, "Test/Short", b, 50);
    unsigned char bad[64];
    memcpy(bad, b, sizeof bad);
    memcpy(bad, "TZXX", 4);
    write_file(tzdir, "Test/Magic", bad, sizeof bad);
    n = tzif(b, "XXX-1YYY,Q3");
    write_file(tzdir, "Test/Footer", b, n);
    setenv("TZDIR", tzdir, 1);
    ok(load_zone("Test/Rule") == KM_OK, "a TZif whose footer rule gives every change, read");
    ok(zt1[0].has_dst && zt1[0].std_off == 3600 && zt1[0].dst_off == 7200, "  its rule: +1h, +2h in summer");
    char env[128];
    snprintf(env, sizeof env, ":%s/Test/Rule", tzdir);
    agrees(env, "the footer-only zone");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Test/Short\"}", "truncated", "a truncated TZif");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Test/Short\"}", "/Test/Short", "  the path named");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Test/Magic\"}", "bad magic", "a TZif with bad magic");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Test/Footer\"}", "XXX-1YYY,Q3",
            "a footer that is not a rule: the rule quoted");
    refused("{\"usd\":5,\"period\":\"day\",\"tz\":\"Test/None\"}", "Test/None",
            "a zone missing from TZDIR");
    unsetenv("TZDIR");
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tzdir);
    if (system(cmd) != 0)
        diag("cannot remove %s", tzdir);
}

/* Named zones in a segment: created, shown by name (km_budget_tz,
 * snapshot), added live (km_key_add, km_pool_set), refused live with
 * nothing changed. */
static void live_zones(void)
{
    km_env *e = make("{\"pools\":[{\"name\":\"p\",\"price\":{\"input_per_1k\":1.0,\"output_per_1k\":2.0},"
                     "\"budget\":{\"usd\":100,\"period\":\"month\",\"tz\":\"Europe/Paris\"},"
                     "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-budget0k\","
                     "\"budget\":{\"usd\":10,\"period\":\"day\",\"tz\":\"America/New_York\"}}]}]}");
    char tz[64] = "";
    ok(km_budget_tz(e, 0, -1, tz, sizeof tz) == KM_OK && !strcmp(tz, "Europe/Paris"),
       "km_budget_tz: the pool's zone by name (%s)", tz);
    ok(km_budget_tz(e, 0, 0, tz, sizeof tz) == KM_OK && !strcmp(tz, "America/New_York"),
       "km_budget_tz: the key's (%s)", tz);
    km_pool_info pi;
    km_pool_info_get(e, 0, &pi);
    uint64_t now = km__wall_ns();
    is_u64(pi.budget.period_end_unix_ns,
           km__period_end(KM__PERIOD_MONTH, km__pools(e)[0].budget_tz_min, e->tzt, now),
           "the pool's month ends at 00:00 Paris time");
    ok(pi.budget.tz_min == 60 || pi.budget.tz_min == 120, "tz_min: Paris's offset now (%d)",
       pi.budget.tz_min);
    char *js = NULL;
    km_snapshot_json(e, &js);
    ok(js && strstr(js, "\"tz\": \"Europe/Paris\"") && strstr(js, "\"tz\": \"America/New_York\""),
       "the snapshot names both zones");
    char err[512] = "";
    int k2 = km_key_add(e, 0, "{\"id\":\"k2\",\"secret\":\"sk-test-budget2k\",\"budget\":{\"usd\":1,"
                              "\"period\":\"week\",\"tz\":\"Asia/Kolkata\"}}", err, sizeof err);
    ok(k2 >= 0 && km_key_find(e, 0, "k2") == k2, "km_key_add with a zone the segment lacked (%s)", err);
    ok(k2 >= 0 && km_budget_tz(e, 0, k2, tz, sizeof tz) == KM_OK && !strcmp(tz, "Asia/Kolkata"),
       "  its zone: %s", tz);
    is_int(km_key_add(e, 0, "{\"id\":\"k3\",\"secret\":\"sk-test-budget3k\",\"budget\":{\"usd\":1,"
                            "\"tz\":\"Mars/Olympus\"}}", err, sizeof err),
           KM_ECONFIG, "km_key_add with a zone that does not exist: KM_ECONFIG");
    ok(strstr(err, "Mars/Olympus") != NULL, "  the message names it: %s", err);
    is_int(km_key_find(e, 0, "k3"), KM_ENOKEY, "  nothing added");
    is_int(km_pool_set(e, 0, "{\"budget\":{\"usd\":100,\"period\":\"day\",\"tz\":\"Australia/Sydney\"}}",
                       err, sizeof err), KM_OK, "km_pool_set: the budget to Sydney's days (%s)", err);
    ok(km_budget_tz(e, 0, -1, tz, sizeof tz) == KM_OK && !strcmp(tz, "Australia/Sydney"), "  shown: %s", tz);
    is_int(km_pool_set(e, 0, "{\"budget\":{\"usd\":100,\"tz\":\"../etc/passwd\"}}", err, sizeof err),
           KM_ECONFIG, "km_pool_set with ../etc/passwd: KM_ECONFIG");
    ok(km_budget_tz(e, 0, -1, tz, sizeof tz) == KM_OK && !strcmp(tz, "Australia/Sydney"),
       "  the pool's zone unchanged");
    /* restore: the snapshot's zone names resolved again */
    char *snap = NULL;
    unsigned char skey[KM_SNAPSHOT_KEY_BYTES] = {7};
    km_snapshot_json_ex(e, KM_SNAPSHOT_SECRETS, skey, &snap);
    km_env *r = NULL;
    char rname[80];
    snprintf(rname, sizeof rname, "%s_r", name);
    km_unlink(rname);
    is_int(snap ? km_restore(rname, snap, strlen(snap), skey, 0, &r, err, sizeof err) : -1, KM_OK,
           "restored from the snapshot (%s)", err);
    ok(r && km_budget_tz(r, 0, 0, tz, sizeof tz) == KM_OK && !strcmp(tz, "America/New_York"),
       "  the key's zone resolved again: %s", tz);
    ok(r && km_budget_tz(r, 0, -1, tz, sizeof tz) == KM_OK && !strcmp(tz, "Australia/Sydney"),
       "  the pool's: %s", tz);
    if (r) {
        km_close(r);
        km_unlink(rname);
    }
    free(snap);
    free(js);
    done(e);
}

int main(void)
{
    snprintf(name, sizeof name, "/km_t_budget_%d", (int)getpid());
    plan(152);
    calendar();
    bad_input();
    roll_once("UTC");
    roll_once("Europe/Paris");
    named_zones();
    crafted_tzif();
    glibc_agrees();
    live_zones();
    hard_and_soft();
    return exit_status();
}
