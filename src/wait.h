/*
 * src/wait.h - the waker's half of blocking acquire, inline: every release
 * runs it.  The sleeper's half and the argument that no wake-up is lost
 * are in src/wait.c.  Internal; not installed.
 */
#ifndef KM_WAIT_H
#define KM_WAIT_H

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"

/* The token of the calling thread's km_acquire_wait while it runs, else 0:
 * an acquire whose pool's reserve holds this token does not yield to it
 * (src/wait.c, "Fair waiting"; src/acquire.c). */
extern KM__TLS uint64_t km__wait_token;
/* Set by a failed attempt of that wait: index + 1 of the key whose limits
 * or cooldown will admit its request first, 0 if none will by time alone
 * (a lease slot, a probe: a release frees those for whoever retries). */
extern KM__TLS uint32_t km__wait_key;

/* Wake the pool's sleepers, if any (see km_acquire_wait).  Called after
 * the stores that freed capacity.  A release may have made them with plain
 * stores only (an in-flight flag, a slot's owner): on x86 the load of
 * `waiters` below may pass them.  No fence here: a sleeper, after counting
 * itself, forces one on every CPU running an attached process
 * (km__barrier_all), which orders our stores before our load or makes them
 * visible to its next attempt.  A process that could not register for that
 * (rd_fence) fences here itself. */
static inline void km__wake(const km_env *e, km__pool *pool)
{
    if (__builtin_expect(e->seg.rd_fence, 0))
        ck_pr_fence_memory(); /* the freeing stores before the load of waiters */
    if (ck_pr_load_32(&pool->waiters) == 0)
        return;
    ck_pr_fence_store_atomic(); /* the freeing stores before the bump (free on x86) */
    ck_pr_inc_32(&pool->wake_seq);
    syscall(SYS_futex, &pool->wake_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static inline void km__wake_pool(const km_env *e, uint32_t pool)
{
    km__wake(e, &km__pools(e)[pool]);
}

#endif /* KM_WAIT_H */
