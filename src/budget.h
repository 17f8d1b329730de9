/*
 * src/budget.h - spend of a budget with a period: the settle's fast path
 * (inline) and the calendar (src/budget.c).  Internal; not installed.
 */
#ifndef KM_BUDGET_H
#define KM_BUDGET_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <ck_pr.h>

#include "layout.h"
#include "util.h"

/* Start and end (CLOCK_REALTIME ns) of the period of kind `period`, in the
 * zone `tz` (a budget's zone code, src/layout.h: minutes east of UTC, or a
 * row of the zone table `zt`, the segment's), that holds the instant
 * `wall`.  KM__PERIOD_NONE: 0 and UINT64_MAX. */
uint64_t km__period_start(uint32_t period, int32_t tz, const km__tzone *zt, uint64_t wall);
uint64_t km__period_end(uint32_t period, int32_t tz, const km__tzone *zt, uint64_t wall);

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (the
 * year and month of a day). */
int64_t km__days_from_civil(int64_t y, unsigned m, unsigned d);
void km__civil_from_days(int64_t z, int64_t *y, unsigned *m);

/* "none", "day", "week", "month"; and a zone as "UTC", "+HH:MM" or its
 * name into buf (at least KM__TZ_NAME_MAX + 1 bytes). */
const char *km__period_name(uint32_t period);
const char *km__tz_name(int32_t tz, const km__tzone *zt, char *buf, size_t n);
/* Minutes east of UTC of zone code `tz` at `wall` (a named zone's offset
 * then in force). */
int32_t km__tz_minutes(int32_t tz, const km__tzone *zt, uint64_t wall);

/* Roll s to the period holding `wall` if its current one ended at or
 * before it: 1 if this call rolled, 0 if not (not due, or another process
 * rolled first).  See src/budget.c for why each boundary rolls once. */
int km__spend_roll(km__spend *s, uint32_t period, int32_t tz_min, const km__tzone *zt,
                   uint64_t wall);

/* What a reader shows of a spend record (km_*_info_get, stats,
 * snapshots): a period that has ended but not rolled yet as rolled. */
typedef struct km__budget_view {
    uint64_t spent, prev, end; /* end 0: no period */
    uint32_t rolls, warnings, over;
    int32_t period, tz_min;
} km__budget_view;
void km__budget_info(const km__spend *s, uint32_t period, int32_t tz_min, const km__tzone *zt,
                     uint64_t budget, km__budget_view *out);

/* Roll s if its period has ended (the clock read only for a budget with a
 * period: a lifetime budget costs nothing more than before). */
static inline void km__spend_due(km__spend *s, uint32_t period, int32_t tz_min,
                                 const km__tzone *zt)
{
    if (__builtin_expect(period != KM__PERIOD_NONE, 0)) {
        uint64_t wall = km__wall_ns();
        /* A plain load: a stale end only sends us to the CAS in
         * km__spend_roll, which decides. */
        if (wall >= ck_pr_load_64(&s->end_ns))
            km__spend_roll(s, period, tz_min, zt, wall);
    }
}

/* Add cost to s (after rolling it if due); returns the spend of the
 * period now.  The fetch-add is a locked instruction on the word the roll
 * CASes as half of its pair: the two are ordered by the cache line, so a
 * cost lands wholly before a roll (and moves to prev with it) or after.
 * `budget` > 0 and `hard` 0: a soft budget, counted in s->warned when
 * this cost takes the spend from under to at or over it. */
static inline uint64_t km__spend_add(km__spend *s, uint32_t period, int32_t tz_min,
                                     const km__tzone *zt, uint64_t cost, uint64_t budget, uint32_t hard)
{
    km__spend_due(s, period, tz_min, zt);
    uint64_t spent = ck_pr_faa_64(&s->spent, cost) + cost;
    if (budget && !hard && spent >= budget && spent - cost < budget)
        ck_pr_inc_32(&s->warned); /* a statistic: atomicity only */
    return spent;
}

/* The spend of the current period (rolled first if due). */
static inline uint64_t km__spend_now(km__spend *s, uint32_t period, int32_t tz_min,
                                     const km__tzone *zt)
{
    km__spend_due(s, period, tz_min, zt);
    return ck_pr_load_64(&s->spent);
}

/* A fresh spend record for a budget of this period, as of `wall`. */
static inline void km__spend_init(km__spend *s, uint32_t period, int32_t tz_min,
                                  const km__tzone *zt, uint64_t wall)
{
    ck_pr_store_64(&s->spent, 0);
    ck_pr_store_64(&s->prev, 0);
    ck_pr_store_32(&s->rolls, 0);
    ck_pr_store_32(&s->warned, 0);
    ck_pr_store_64(&s->end_ns, km__period_end(period, tz_min, zt, wall));
}

#endif /* KM_BUDGET_H */
