/*
 * src/owner.h - who holds a lease slot: the one encoding of a slot's owner
 * word, and the one liveness check for it.  Internal; not installed.
 *
 * A lease slot's owner is 0 (free), the tag of the process that claimed it
 * (shm/shm.h: (proc slot + 1) << 32 | pid; bits 62 and 63 always clear), or
 * a reaper's mark:
 *   KM__OWNER_REAPER | tag                  a reaper attached as `tag` took
 *                                           the slot over
 *   KM__OWNER_REAPER | KM__OWNER_PID | pid  a reaper still attaching (it has
 *                                           no tag yet): its pid
 * So a mark is never a tag, and two reapers never share a mark.  Whether an
 * owner is alive is asked of shm/ (km__proc_tag_live), by its tag, or, for
 * an attaching reaper, by its pid.
 */
#ifndef KM_OWNER_H
#define KM_OWNER_H

#include <stdint.h>
#include <unistd.h>

#include "internal.h"

#define KM__OWNER_REAPER (UINT64_C(1) << 63)
#define KM__OWNER_PID (UINT64_C(1) << 62)
_Static_assert((uint64_t)KM_PROCS_MAX << 32 < KM__OWNER_PID, "a tag never reaches the mark bits");

/* The tag an owner carries, its reaper mark taken off. */
static inline uint64_t km__owner_tag(uint64_t owner) { return owner & ~KM__OWNER_REAPER; }

/* Is the owner an attaching reaper's mark (a pid, not a tag)? */
static inline int km__owner_is_pid(uint64_t owner)
{
    return (owner & (KM__OWNER_REAPER | KM__OWNER_PID)) == (KM__OWNER_REAPER | KM__OWNER_PID);
}

/* The mark this process writes into slots it takes over as a reaper. */
static inline uint64_t km__reaper_mark(const km_env *e)
{
    return KM__OWNER_REAPER |
           (e->seg.tag ? e->seg.tag : KM__OWNER_PID | (uint64_t)(uint32_t)getpid());
}

/* Is the process behind an owner alive?  A tag is alive while the process
 * table still holds it and that process runs (a process that detached
 * released its leases first, T1, so a lease whose tag is gone from the
 * table is orphaned); a reaper's mark is alive while that reaper is.  A
 * system call or two: callers cache the answer (src/reap.c). */
static inline int km__owner_live(const km_env *e, uint64_t owner)
{
    if (km__owner_is_pid(owner))
        return km__pid_exists(km__tag_pid(owner));
    return km__proc_tag_live(&e->seg, km__owner_tag(owner));
}

/* Is the owner known: an attached process (alive or not, until reaped) or
 * an attaching reaper?  What km_check expects of every held slot. */
static inline int km__owner_known(const km_env *e, uint64_t owner)
{
    return km__owner_is_pid(owner) || km__proc_tag_held(&e->seg, km__owner_tag(owner));
}

#endif /* KM_OWNER_H */
