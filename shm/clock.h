/*
 * shm/clock.h - the clocks of a segment: CLOCK_MONOTONIC, which every
 * process of the host shares (times stored in the segment mean the same to
 * all), and CLOCK_REALTIME for stamps shown to people.  The one home of both
 * reads; src/util.h includes it.  Internal; not installed.
 */
#ifndef KM_SHM_CLOCK_H
#define KM_SHM_CLOCK_H

#include <stdint.h>
#include <time.h>

#define KM__NS_PER_S UINT64_C(1000000000)
#define KM__NS_PER_MS UINT64_C(1000000)
#define KM__NS_PER_US UINT64_C(1000)
#define KM__US_PER_MS UINT64_C(1000)
#define KM__MS_PER_S UINT64_C(1000)
#define KM__S_PER_DAY UINT64_C(86400)

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

#endif /* KM_SHM_CLOCK_H */
