/*
 * tools/kmctl/cmd_budget.c - reset-spend: the operator sets a pool's or a
 * key's spend in its current budget period back to 0.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kmctl.h"

const char usage_reset_spend[] =
    "Usage: kmctl reset-spend NAME POOL [KEY_ID]\n"
    "\n"
    "Set the spend of pool POOL (or, with KEY_ID, of that key) in its\n"
    "current budget period back to 0, while workers run: a release settling\n"
    "at the same moment counts wholly before the reset or after it.  The\n"
    "previous period's spend and the period's end are kept.  A key that a\n"
    "hard budget without a period made exhausted stays so until `kmctl\n"
    "enable`.  Prints one line saying what changed, e.g.\n"
    "  reset spend of pool 'openai' of segment 'llm': $412.30 -> $0 (month budget $500)\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 no such segment, pool\n"
    "or key.\n"
    "\n"
    "Examples:\n"
    "  kmctl reset-spend llm openai\n"
    "  kmctl reset-spend llm openai a\n";

const cmd_syntax reset_spend_syntax = {usage_reset_spend, "NAME POOL [KEY_ID]", NULL, 0};

const char *budget_period_name(int32_t period)
{
    switch (period) {
    case KM_BUDGET_DAY: return "day";
    case KM_BUDGET_WEEK: return "week";
    case KM_BUDGET_MONTH: return "month";
    default: return "lifetime";
    }
}

int cmd_reset_spend(int argc, char **argv)
{
    km_env *env;
    int rc, pool, key = -1;
    uint64_t was = 0, budget = 0;
    int32_t period = 0;

    if ((rc = parse_args(&reset_spend_syntax, argc, argv, NULL)) >= 0)
        return rc;
    const char *name = argv[optind], *pname = argv[optind + 1],
               *kid = optind + 2 < argc ? argv[optind + 2] : NULL;
    if ((rc = open_pool_key(name, pname, kid, &env, &pool, &key)) >= 0)
        return rc;
    if (kid) {
        km_key_info ki;
        if ((rc = km_key_info_get(env, key, &ki)) != KM_OK ||
            (rc = km_spend_reset(env, key, &was)) != KM_OK) {
            errline("key '%s' in pool '%s': %s", kid, pname, err_text(rc, errno));
            rc = exit_for(rc);
            goto out;
        }
        budget = ki.budget_microusd;
        period = ki.budget.period;
    } else {
        km_pool_info pi;
        if ((rc = km_pool_info_get(env, pool, &pi)) != KM_OK ||
            (rc = km_pool_spend_reset(env, pool, &was)) != KM_OK) {
            errline("pool '%s': %s", pname, err_text(rc, errno));
            rc = exit_for(rc);
            goto out;
        }
        budget = pi.budget_microusd;
        period = pi.budget.period;
    }
    char u1[32], u2[32];
    fmt_usd(was, u1, sizeof u1);
    if (kid)
        printf("reset spend of key '%s' in pool '%s' of segment '%s': $%s -> $0", kid, pname,
               name, u1);
    else
        printf("reset spend of pool '%s' of segment '%s': $%s -> $0", pname, name, u1);
    if (budget) {
        fmt_usd(budget, u2, sizeof u2);
        printf(" (%s budget $%s)", budget_period_name(period), u2);
    } else {
        printf(" (no budget)");
    }
    putchar('\n');
    rc = flush_stdout(EX_SUCCESS);
out:
    km_close(env);
    return rc;
}

/* A named zone ("Europe/Paris"): not "UTC" nor an offset. */
static int tz_named(const char *tz)
{
    return tz && tz[0] && tz[0] != '+' && tz[0] != '-' && strcmp(tz, "UTC") != 0;
}

void fmt_period_end(uint64_t end_ns, int32_t tz_min, const char *tz, char *b, size_t n)
{
    time_t t = (time_t)(end_ns / 1000000000u) + (time_t)tz_min * 60;
    struct tm tm;
    int32_t a = tz_min < 0 ? -tz_min : tz_min;
    if (end_ns && tz_named(tz)) {
        /* The zone's own offset at the end (its DST may differ from now). */
        const char *was = getenv("TZ");
        char saved[256], env[80];
        int had = was != NULL;
        snprintf(saved, sizeof saved, "%s", had ? was : "");
        snprintf(env, sizeof env, ":%s", tz);
        setenv("TZ", env, 1);
        tzset();
        t = (time_t)(end_ns / 1000000000u);
        int got = localtime_r(&t, &tm) != NULL;
        if (had)
            setenv("TZ", saved, 1);
        else
            unsetenv("TZ");
        tzset();
        if (got) {
            snprintf(b, n, "%04d-%02d-%02d %02d:%02d %s", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tz);
            return;
        }
    }
    if (!end_ns || !gmtime_r(&t, &tm)) {
        snprintf(b, n, "-");
        return;
    }
    if (tz_min == 0)
        snprintf(b, n, "%04d-%02d-%02d %02d:%02d UTC", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min);
    else
        snprintf(b, n, "%04d-%02d-%02d %02d:%02d %c%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tz_min < 0 ? '-' : '+', (int)(a / 60),
                 (int)(a % 60));
}

void fmt_budget_line(const char *lead, uint64_t budget, int hard, uint64_t spent,
                     uint64_t prev, uint64_t end_ns, int32_t period, int32_t tz_min,
                     const char *tz, uint32_t warnings)
{
    char u1[32], u2[32], u3[32], e[112];
    fmt_usd(spent, u1, sizeof u1);
    fmt_usd(budget, u2, sizeof u2);
    if (period == KM_BUDGET_LIFETIME) {
        printf("%s$%s spent of $%s", lead, u1, u2);
    } else {
        fmt_usd(prev, u3, sizeof u3);
        fmt_period_end(end_ns, tz_min, tz, e, sizeof e);
        printf("%s$%s spent of $%s this %s (resets %s; previous %s $%s)", lead, u1, u2,
               budget_period_name(period), e, budget_period_name(period), u3);
    }
    if (hard)
        printf(" (hard: refused when spent)\n");
    else
        printf(" (soft: deprioritised and warned when spent; %" PRIu32 " warning%s%s)\n",
               warnings, warnings == 1 ? "" : "s", spent >= budget ? ", OVER" : "");
}
