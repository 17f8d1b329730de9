/*
 * src/util.h - one home for the small conversions the library's files share:
 * the wall clock, US dollars to micro-dollars and back, and the FNV-1a hash.
 * Internal; not installed.  Everything is inline and pure (but the clock).
 */
#ifndef KM_UTIL_H
#define KM_UTIL_H

#include <math.h>
#include <stdint.h>
#include <time.h>

#define KM__NS_PER_S UINT64_C(1000000000)
#define KM__NS_PER_MS UINT64_C(1000000)
#define KM__NS_PER_US UINT64_C(1000)
#define KM__MICRO_PER_USD 1e6

/* CLOCK_MONOTONIC in ns, inline: the hot path's one clock read should not
 * cost a call into another file on top of the vDSO call. */
static inline uint64_t km__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * KM__NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* CLOCK_REALTIME in ns since the Unix epoch (creation stamps, usage events,
 * snapshots).  Never on the hot path. */
static inline uint64_t km__wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * KM__NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* US dollars to micro-dollars, rounded to nearest; negative, NaN and
 * infinite amounts give 0 (callers that must refuse them check first). */
static inline uint64_t km__usd_to_micro(double usd)
{
    if (!(usd > 0.0) || isinf(usd))
        return 0;
    return (uint64_t)llround(usd * KM__MICRO_PER_USD);
}

static inline double km__micro_to_usd(uint64_t micro)
{
    return (double)micro / KM__MICRO_PER_USD;
}

/* FNV-1a, 32 and 64 bits: one step per byte or per 64-bit word. */
#define KM__FNV32_INIT 2166136261u
#define KM__FNV32_PRIME 16777619u
#define KM__FNV64_INIT UINT64_C(14695981039346656037)
#define KM__FNV64_PRIME UINT64_C(1099511628211)

static inline uint32_t km__fnv32_str(const char *s)
{
    uint32_t h = KM__FNV32_INIT;
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= KM__FNV32_PRIME;
    }
    return h;
}

/* One FNV-1a step over a whole 64-bit value.  Hash each field in its own
 * step: fields mixed into one value first (a ^ b << 32) can cancel out. */
static inline uint64_t km__fnv64_step(uint64_t h, uint64_t v)
{
    return (h ^ v) * KM__FNV64_PRIME;
}

#endif /* KM_UTIL_H */
