/*
 * bench/baselines/cmp_common.h - helpers shared by the comparison programs
 * (bench/cmp_latency.c, bench/goodput.c) and the C baselines: the clock, a
 * shared anonymous mapping, and a latency histogram that lives in shared
 * memory (one per worker), so that tails are computed from every operation
 * rather than from batch means.
 *
 * Everything here is static inline: each program includes it once.
 */
#ifndef KM_CMP_COMMON_H
#define KM_CMP_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define cmp_cpu_relax() __builtin_ia32_pause()
#else
#define cmp_cpu_relax() __asm__ volatile("" ::: "memory")
#endif

static inline uint64_t cmp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cmp_sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static inline void *cmp_map_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* ---------------------------------------------------------------- histogram
 *
 * Log-linear: values below 1024 ns have a bucket each (exact); above, each
 * power of two [2^e, 2^(e+1)) is cut into 512 buckets, so a bucket spans at
 * most 1/512 of its value (0.2 %).  Values of 2^32 ns (4.3 s) and more go
 * to the last bucket.  A percentile is reported as the lower bound of the
 * bucket holding the nearest-rank sample, so it is exact below 1024 ns and
 * at most 0.2 % low above.
 *
 * Each worker writes only its own histogram (plain stores, no atomics); the
 * parent reads it after waitpid(), which orders the child's writes before
 * the parent's reads.
 */
#define CMP_HIST_LINEAR 1024u
#define CMP_HIST_SUB_BITS 9u
#define CMP_HIST_SUB (1u << CMP_HIST_SUB_BITS)
#define CMP_HIST_OCTAVES (32u - 10u) /* e = 10 .. 31 */
#define CMP_HIST_BUCKETS (CMP_HIST_LINEAR + CMP_HIST_OCTAVES * CMP_HIST_SUB)

typedef struct cmp_hist {
    uint64_t n;   /* samples */
    uint64_t max; /* largest sample, ns */
    uint64_t b[CMP_HIST_BUCKETS];
} cmp_hist;
_Static_assert(sizeof(cmp_hist) == 8 * (2 + CMP_HIST_BUCKETS), "cmp_hist has no padding");

static inline uint32_t cmp_hist_index(uint64_t v)
{
    if (v < CMP_HIST_LINEAR)
        return (uint32_t)v;
    if (v >> 32)
        return CMP_HIST_BUCKETS - 1;
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* 10 .. 31 */
    uint32_t sub = (uint32_t)(v >> (e - CMP_HIST_SUB_BITS)) & (CMP_HIST_SUB - 1);
    return CMP_HIST_LINEAR + (e - 10u) * CMP_HIST_SUB + sub;
}

/* Lower bound (ns) of bucket i. */
static inline uint64_t cmp_hist_value(uint32_t i)
{
    if (i < CMP_HIST_LINEAR)
        return i;
    uint32_t o = (i - CMP_HIST_LINEAR) / CMP_HIST_SUB, sub = (i - CMP_HIST_LINEAR) % CMP_HIST_SUB;
    uint32_t e = o + 10u;
    return ((uint64_t)1 << e) + ((uint64_t)sub << (e - CMP_HIST_SUB_BITS));
}

static inline void cmp_hist_add(cmp_hist *h, uint64_t v)
{
    h->b[cmp_hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static inline void cmp_hist_merge(cmp_hist *dst, const cmp_hist *src)
{
    for (uint32_t i = 0; i < CMP_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->n += src->n;
    if (src->max > dst->max)
        dst->max = src->max;
}

/* Nearest-rank percentile p (0 < p <= 1), ns; 0 for an empty histogram. */
static inline uint64_t cmp_hist_pct(const cmp_hist *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(p * (double)h->n), seen = 0;
    if (rank < 1)
        rank = 1;
    for (uint32_t i = 0; i < CMP_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank)
            return cmp_hist_value(i);
    }
    return h->max;
}

static inline int cmp_dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double cmp_median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof v[0], cmp_dbl_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif /* KM_CMP_COMMON_H */
