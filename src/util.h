/*
 * src/util.h - one home for the small conversions the library's files share:
 * the clocks (from shm/clock.h), US dollars to micro-dollars and back, the
 * FNV-1a hash and saturating arithmetic.
 * Internal; not installed.  Everything is inline and pure (but the clock).
 */
#ifndef KM_UTIL_H
#define KM_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "../shm/clock.h" /* km__now, km__wall_ns: the clocks live with the segment */

#define KM__MICRO_PER_USD 1e6

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

/* FNV-1a over n bytes, one step per byte (the layout signature). */
static inline uint64_t km__fnv64_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * KM__FNV64_PRIME;
    return h;
}

/* Nanoseconds to milliseconds, rounded up: a wait, a reset or a cooldown
 * is never reported as shorter than it is (0 only when none is left). */
static inline uint64_t km__ns_to_ms_ceil(uint64_t ns)
{
    return ns / KM__NS_PER_MS + (ns % KM__NS_PER_MS != 0);
}

static inline uint64_t km__max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t km__min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* a * b, or a large value far from wrapping (2^62 - 1) if that overflows:
 * limit arithmetic then refuses instead of wrapping to a small number. */
static inline uint64_t km__mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? (UINT64_MAX >> 2) : r;
}

#endif /* KM_UTIL_H */
