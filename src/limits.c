/*
 * src/limits.c - GCRA parameters of a limit.
 *
 * A limit of `limit` units per `period` is one GCRA word: the theoretical
 * arrival time `tat`.  With emission interval T (ns per unit) and tolerance
 * tau = burst * T, a cost c is admitted at time `now` iff
 *
 *     max(tat, now) + c*T - now <= tau,      then tat := max(tat, now) + c*T.
 *
 * Bound: take the admissions with times in a closed interval [a, b], the
 * first (in CAS order) at time s_f and the last at s_l.  tat never
 * decreases except by an exact undo (see src/gcra.h), so after the last one
 * tat >= s_f + T * (sum of costs), and the admission test gave
 * tat <= s_l + tau.  Hence  sum of costs <= (b - a)/T + burst.
 *
 * token_bucket:  T = ceil(period/limit), burst defaults to limit.
 *   (b-a)/T <= (b-a)*limit/period, so in any interval of length L the
 *   admitted cost is <= L*limit/period + burst.
 * sliding:       T = floor(period/(limit+1-burst)) + 1, 1 <= burst <= limit,
 *   burst defaults to max(1, limit/10).  For a window of length period the
 *   bound is period/T + burst < limit + 1, and costs are integers, so the
 *   admitted cost in any window of one period is <= limit.  Over long runs
 *   the key admits 1/T units per ns: about (limit+1-burst)/limit of the limit.
 *
 * Range.  limit and burst go up to 2^40, and tau = burst*T (the time the
 * sustained rate takes to refill a whole burst) up to 2^62 ns, ~146 years.
 * Within those, nothing below overflows 64 bits, given CLOCK_MONOTONIC
 * (uptime) below 2^61 ns, 73 years:
 *   - tat stays below 2^63 + 2^61: an admission leaves it <= now + tau;
 *     a settle caps what it adds at KM__TAT_CAP = 2^62 (src/gcra.h); the
 *     provider's view (src/release.c) and a change of limits
 *     (src/reconfig.c) set it to at most now + 2^62; a reaper commits the
 *     estimates of leases out, together at most tau (each was admitted
 *     with all reservations within tau).
 *   - a need (cost*T, saturating at 2^62 by km__mul_sat) added to tat or
 *     now stays below 2^63 + 2^61 + 2^62 < 2^64.
 * The range excludes only bursts near the limit in sliding mode (T near
 * the period) and bursts far above the limit in token_bucket mode: with
 * burst = limit a sliding limit goes up to 76861433 per minute, 1281023 per
 * hour and 53375 per day.  km__limit_why says so for a refused one.
 */
#include <stdio.h>

#include "internal.h"

uint64_t km__window_period_ns(int w)
{
    switch (w) {
    case KM_WIN_RPM:
    case KM_WIN_TPM:
        return 60 * KM__NS_PER_S;
    case KM_WIN_RPH:
    case KM_WIN_TPH:
        return 3600 * KM__NS_PER_S;
    case KM_WIN_RPD:
    case KM_WIN_TPD:
        return 86400 * KM__NS_PER_S;
    default:
        return 0;
    }
}


/* Largest limit or burst accepted (about 10^12 units), and largest tau
 * (see "Range" above). */
#define KM__LIMIT_MAX (UINT64_C(1) << 40)
#define KM__TAU_MAX (UINT64_C(1) << 62)

/* The burst a limit resolves to (0: the mode's default), and T for it. */
static uint64_t limit_burst(const km__limit_cfg *l, uint64_t b)
{
    if (b)
        return b;
    if (l->mode == KM_MODE_SLIDING)
        return l->limit / 10 ? l->limit / 10 : 1;
    return l->limit;
}

static uint64_t limit_T(const km__limit_cfg *l, uint64_t b, uint64_t period_ns)
{
    return l->mode == KM_MODE_SLIDING ? period_ns / (l->limit + 1 - b) + 1
                                      : (period_ns + l->limit - 1) / l->limit;
}

/* tau of burst b, or 0 if beyond KM__TAU_MAX.  Needs 1 <= b (<= limit in
 * sliding mode). */
static uint64_t limit_tau(const km__limit_cfg *l, uint64_t b, uint64_t period_ns)
{
    uint64_t tau;
    return __builtin_mul_overflow(b, limit_T(l, b, period_ns), &tau) || tau > KM__TAU_MAX ? 0 : tau;
}

int km__limit_gcra(const km__limit_cfg *l, uint64_t period_ns,
                   uint64_t *emission_ns, uint64_t *tau_ns, uint64_t *burst)
{
    if (l->limit == 0 || l->limit > KM__LIMIT_MAX || period_ns == 0 ||
        (l->mode != KM_MODE_TOKEN_BUCKET && l->mode != KM_MODE_SLIDING))
        return KM_ECONFIG;
    uint64_t b = limit_burst(l, l->burst);
    if (b > KM__LIMIT_MAX || (l->mode == KM_MODE_SLIDING && b > l->limit))
        return KM_ECONFIG;
    uint64_t tau = limit_tau(l, b, period_ns);
    if (!tau)
        return KM_ECONFIG;
    *emission_ns = limit_T(l, b, period_ns);
    *tau_ns = tau;
    *burst = b;
    return KM_OK;
}

void km__limit_why(const km__limit_cfg *l, uint64_t period_ns, char *buf, size_t len)
{
    uint64_t b = limit_burst(l, l->burst);
    if (l->limit == 0 || l->limit > KM__LIMIT_MAX) {
        snprintf(buf, len, "limit %llu is not in 1..2^40", (unsigned long long)l->limit);
    } else if (b > KM__LIMIT_MAX || (l->mode == KM_MODE_SLIDING && b > l->limit)) {
        snprintf(buf, len, "burst %llu is not in 1..%s", (unsigned long long)b,
                 l->mode == KM_MODE_SLIDING ? "limit" : "2^40");
    } else if (period_ns == 0 || !limit_tau(l, 1, period_ns)) {
        snprintf(buf, len, "no such window or mode");
    } else {
        /* The largest burst that fits: b * T(b) grows with b (T does not
         * shrink), so bisect; burst 1 fits (T <= period + 1). */
        uint64_t lo = 1, hi = b;
        while (lo + 1 < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (limit_tau(l, mid, period_ns))
                lo = mid;
            else
                hi = mid;
        }
        snprintf(buf, len,
                 "burst %llu x T %llu ns (the time to refill the burst) is above 2^62 ns, "
                 "about 146 years; the largest burst for this limit is %llu",
                 (unsigned long long)b, (unsigned long long)limit_T(l, b, period_ns),
                 (unsigned long long)lo);
    }
}
