/*
 * src/budget.c - budgets with a period: the calendar, and the roll of a
 * spend record (km__spend, src/layout.h) at a period's end.
 *
 * Why each boundary rolls exactly once, across processes.  A spend record
 * holds the pair (end_ns, spent): the wall-clock instant at which the
 * current period ends, and what it has spent.  Settles add to `spent` by
 * fetch-add.  Any process that settles (or, over a hard budget, acquires)
 * with CLOCK_REALTIME at or past end_ns rolls: it reads the pair and CASes
 * it, as one 16-byte word, to (the end of the period holding its clock, 0).
 *   - Only one CAS from a given end_ns can succeed: the winner changes
 *     end_ns, so every other CAS expecting the old end fails, and a loser
 *     that then sees a new end_ns stops (someone rolled).  A loser that
 *     sees the same end_ns lost to a fetch-add: it retries with the new
 *     spent, so the winner moves exactly the spend of the ended period.
 *   - A fetch-add is a locked instruction on the pair's second word: it
 *     falls wholly before the winning CAS (and is moved to prev) or after
 *     (and counts in the new period).  No cost is lost or counted twice.
 *   - The new end_ns is later than the clock that computed it, so the
 *     next roll needs the clock to pass a later boundary.
 * Then the winner alone stores prev (the ended period's spend if it ended
 * at or after the new period's start, else 0: the clock skipped whole
 * periods, as across a long suspend)
 * and counts the roll.  A reader may see the new pair before prev: it is a
 * figure for people.  A winner killed between the CAS and those stores
 * leaves prev stale; no spend is lost.
 *
 * Wall clock.  Periods are calendar periods, so they follow CLOCK_REALTIME
 * (NTP-disciplined; a boundary is an instant, computed when a period
 * starts).  A clock set backwards does not un-roll: the period keeps the
 * end it has.  A clock set forwards past the end rolls at the next settle;
 * if it is then set back, the new period still ends where it was computed
 * from the later clock.  A host suspended across a boundary rolls at the
 * first settle (or hard-budget acquire) after it resumes; nothing runs at
 * the boundary itself.  Invariants: end_ns only grows; spent + prev moved
 * = sum of costs added; rolls = number of successful CASes.
 *
 * Zones.  A budget's zone is a code (src/layout.h): a fixed offset, or a
 * row of the segment's zone table that src/tz.c filled at configuration
 * time and never rewrites.  A boundary is a local midnight (Monday's, the
 * 1st's) converted with the offset in force then (src/tz.c: a midnight in
 * a gap is the gap's end, a repeated one the first).  The argument above
 * needs only that the end computed from a clock is later than it: a local
 * day holding `wall` ends at the next local midnight, after `wall`, with
 * one exception: in an hour repeated across midnight (a fall-back at
 * 00:00), the clock's local day is the day before again and its "next"
 * midnight the first one, behind the clock.  The roll then computes no
 * later end (set[0] <= end0 below) and waits for the repeat to end: the
 * period ends up to that hour late, and end_ns never moves back.
 */
#include <ck_pr.h>

#include "budget.h"
#include "internal.h"
#include "tz.h"

_Static_assert((int)KM__PERIOD_NONE == (int)KM_BUDGET_LIFETIME &&
                   (int)KM__PERIOD_DAY == (int)KM_BUDGET_DAY &&
                   (int)KM__PERIOD_WEEK == (int)KM_BUDGET_WEEK &&
                   (int)KM__PERIOD_MONTH == (int)KM_BUDGET_MONTH,
               "km_budget_period is the segment's period number");

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back
 * (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms"). */
int64_t km__days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void km__civil_from_days(int64_t z, int64_t *y, unsigned *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* First local day (days since the epoch) of the period holding local day
 * `day`, and of the one after (`next`). */
static int64_t period_day(uint32_t period, int64_t day, int next)
{
    int64_t y;
    unsigned m;
    switch (period) {
    case KM__PERIOD_DAY:
        return day + next;
    case KM__PERIOD_WEEK: /* 1970-01-01 was a Thursday: Monday is 0 */
        return day - (((day + 3) % 7) + 7) % 7 + 7 * next;
    default: /* KM__PERIOD_MONTH */
        km__civil_from_days(day, &y, &m);
        if (next && ++m == 13) {
            m = 1;
            y++;
        }
        return km__days_from_civil(y, m, 1);
    }
}

/* Local day and zone offsets: a fixed offset, or a named zone's at the
 * local midnight (src/tz.c: a gap's end, the first of two). */
static uint64_t boundary(uint32_t period, int32_t tz, const km__tzone *zt, uint64_t wall,
                         int next)
{
    const km__tzone *z = km__tz_zone(zt, tz);
    int64_t w = (int64_t)(wall / KM__NS_PER_S);
    int64_t off = z ? km__tz_offset(z, w) : (int64_t)(tz >= KM__TZ_NAMED ? 0 : tz) * 60;
    int64_t day = period_day(period, floor_div(w + off, (int64_t)KM__S_PER_DAY), next);
    int64_t local = day * (int64_t)KM__S_PER_DAY;
    int64_t s = z ? km__tz_utc(z, local) : local - off;
    return s <= 0 ? 0 : (uint64_t)s * KM__NS_PER_S;
}

uint64_t km__period_start(uint32_t period, int32_t tz, const km__tzone *zt, uint64_t wall)
{
    return period == KM__PERIOD_NONE || period >= KM__PERIOD_COUNT
               ? 0 : boundary(period, tz, zt, wall, 0);
}

uint64_t km__period_end(uint32_t period, int32_t tz, const km__tzone *zt, uint64_t wall)
{
    return period == KM__PERIOD_NONE || period >= KM__PERIOD_COUNT
               ? UINT64_MAX : boundary(period, tz, zt, wall, 1);
}

const char *km__period_name(uint32_t period)
{
    static const char *const names[KM__PERIOD_COUNT] = {"none", "day", "week", "month"};
    return period < KM__PERIOD_COUNT ? names[period] : "none";
}

int32_t km__tz_minutes(int32_t tz, const km__tzone *zt, uint64_t wall)
{
    const km__tzone *z = km__tz_zone(zt, tz);
    if (z)
        return km__tz_offset(z, (int64_t)(wall / KM__NS_PER_S)) / 60;
    return tz >= KM__TZ_NAMED ? 0 : tz;
}

const char *km__tz_name(int32_t tz, const km__tzone *zt, char *buf, size_t n)
{
    const km__tzone *z = km__tz_zone(zt, tz);
    int32_t a = tz < 0 ? -tz : tz;
    if (z)
        snprintf(buf, n, "%.*s", KM__TZ_NAME_MAX, z->name);
    else if (tz == 0 || tz >= KM__TZ_NAMED)
        snprintf(buf, n, "UTC");
    else
        snprintf(buf, n, "%c%02d:%02d", tz < 0 ? '-' : '+', (int)(a / 60), (int)(a % 60));
    return buf;
}

int km__spend_roll(km__spend *s, uint32_t period, int32_t tz_min, const km__tzone *zt,
                   uint64_t wall)
{
    uint64_t cur[2], set[2];
    cur[0] = ck_pr_load_64(&s->end_ns);
    cur[1] = ck_pr_load_64(&s->spent);
    const uint64_t end0 = cur[0];
    if (wall < end0 || period == KM__PERIOD_NONE)
        return 0;
    const uint64_t start = km__period_start(period, tz_min, zt, wall);
    set[0] = km__period_end(period, tz_min, zt, wall);
    set[1] = 0;
    if (set[0] <= end0) /* a clock the boundary math cannot place: never
                         * move end_ns back */
        return 0;
    /* The CAS orders against the settles' fetch-adds on s->spent and other
     * rollers' CASes (the argument at the top of this file). */
    while (!ck_pr_cas_64_2_value((uint64_t *)(void *)s, cur, set, cur))
        if (cur[0] != end0)
            return 0; /* another process rolled this boundary */
    ck_pr_store_64(&s->prev, start <= end0 ? cur[1] : 0);
    ck_pr_inc_32(&s->rolls);
    return 1;
}

/* ------------------------------------------------------- operator reset */

/* Spend to 0; the old figure.  One exchange on the pair's second word: a
 * settle's fetch-add lands before (and is in the figure) or after it; a
 * roll's CAS that read the old spend fails and retries on the new. */
static uint64_t spend_reset(km__spend *s)
{
    return ck_pr_fas_64(&s->spent, 0);
}

KM_EXTERN int km_spend_reset(km_env *e, int key, uint64_t *was)
{
    if (!e)
        return KM_EINVAL;
    if (key < 0 || (uint32_t)key >= e->geom.cap_keys ||
        ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
    if (e->seg.ro)
        return KM_EREADONLY;
    km__key *k = &km__keys(e)[key];
    uint64_t end = ck_pr_load_64(&k->spend.end_ns);
    uint64_t w = spend_reset(&k->spend);
    if (w && k->fleet && k->budget_microusd)
        km__fleet_spend_reset(e, (uint32_t)key, end, w);
    if (was)
        *was = w;
    return KM_OK;
}

KM_EXTERN int km_pool_spend_reset(km_env *e, int pool, uint64_t *was)
{
    if (!e)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    if (e->seg.ro)
        return KM_EREADONLY;
    km__pool *p = &km__pools(e)[pool];
    uint64_t end = ck_pr_load_64(&p->spend.end_ns);
    uint64_t w = spend_reset(&p->spend);
    /* A budget the fleet counts (src/fleet.c): the agent still reports
     * what the reset removed, as for a fleet key's. */
    if (w && ck_pr_load_32(&p->fleet) && ck_pr_load_64(&p->budget_microusd))
        km__fleet_spend_reset(e, KM_FLEET_BUDGET_POOL | (uint32_t)pool, end, w);
    if (was)
        *was = w;
    return KM_OK;
}

KM_EXTERN int km_budget_tz(km_env *e, int pool, int key, char *buf, size_t n)
{
    if (!e || !buf || !n)
        return KM_EINVAL;
    int32_t tz;
    if (key >= 0) {
        if ((uint32_t)key >= e->geom.cap_keys ||
            ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
            return KM_ENOKEY;
        tz = km__keys(e)[key].budget_tz_min;
    } else {
        if (!km__pool_live(e, pool))
            return KM_ENOPOOL;
        tz = (int32_t)ck_pr_load_32((uint32_t *)&km__pools(e)[pool].budget_tz_min);
    }
    km__tz_name(tz, e->tzt, buf, n);
    return KM_OK;
}

void km__budget_info(const km__spend *s, uint32_t period, int32_t tz_min, const km__tzone *zt,
                     uint64_t budget, km__budget_view *out)
{
    uint64_t end = ck_pr_load_64(&s->end_ns), spent = ck_pr_load_64(&s->spent);
    uint64_t wall = km__wall_ns();
    out->period = (int32_t)period;
    out->tz_min = km__tz_minutes(tz_min, zt, wall);
    out->rolls = ck_pr_load_32(&s->rolls);
    out->warnings = ck_pr_load_32(&s->warned);
    out->end = end == UINT64_MAX ? 0 : end;
    /* A reader does not roll (it writes nothing): a period that has ended
     * but not yet rolled is shown as rolled. */
    if (period != KM__PERIOD_NONE && wall >= end) {
        out->prev = km__period_start(period, tz_min, zt, wall) <= end ? spent : 0;
        out->spent = 0;
        out->end = km__period_end(period, tz_min, zt, wall);
    } else {
        out->prev = ck_pr_load_64(&s->prev);
        out->spent = spent;
    }
    out->over = budget && out->spent >= budget;
}
