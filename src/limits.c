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
 */
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


/* Largest limit or burst accepted (about 10^12 units); tau is checked too. */
#define KM__LIMIT_MAX (UINT64_C(1) << 40)

int km__limit_gcra(const km__limit_cfg *l, uint64_t period_ns,
                   uint64_t *emission_ns, uint64_t *tau_ns, uint64_t *burst)
{
    uint64_t b = l->burst, t;
    if (l->limit == 0 || l->limit > KM__LIMIT_MAX || period_ns == 0)
        return KM_ECONFIG;
    if (l->mode == KM_MODE_TOKEN_BUCKET) {
        if (b == 0)
            b = l->limit;
        if (b > KM__LIMIT_MAX)
            return KM_ECONFIG;
        t = (period_ns + l->limit - 1) / l->limit;
    } else if (l->mode == KM_MODE_SLIDING) {
        if (b == 0)
            b = l->limit / 10 ? l->limit / 10 : 1;
        if (b > l->limit)
            return KM_ECONFIG;
        t = period_ns / (l->limit + 1 - b) + 1;
    } else {
        return KM_ECONFIG;
    }
    /* tau = burst * T must leave headroom: admission adds up to two tau to
     * a CLOCK_MONOTONIC time (uptime in ns, far below 2^62). */
    uint64_t tau;
    if (__builtin_mul_overflow(b, t, &tau) || tau > (UINT64_C(1) << 60))
        return KM_ECONFIG;
    *emission_ns = t;
    *tau_ns = tau;
    *burst = b;
    return KM_OK;
}
