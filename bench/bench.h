/*
 * bench/bench.h - what the C benchmarks share.  Header-only: each bench is
 * one .c file built by the Makefile's bench rule.
 */
#ifndef KM_BENCH_H
#define KM_BENCH_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in ns: what every bench times with. */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif /* KM_BENCH_H */
