/*
 * src/wait.c - km_acquire_wait: blocking acquire on a futex word in the
 * segment.  The waker's half is src/wait.h.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "gcra.h"
#include "internal.h"

/*
 * Blocking acquire.  A caller that cannot be served at once counts itself
 * in pool.waiters (a locked increment, once per call), forces a full
 * barrier on every CPU that runs a thread of an attached process
 * (km__barrier_all: membarrier), and then loops: read wake_seq, try to
 * acquire, and if that fails sleep while wake_seq is unchanged, for at most
 * the time the failed attempt said a key may be admissible.  A releaser
 * frees capacity (locked instructions on limit words; plain stores on its
 * in-flight flag and slot owner), then loads waiters with no fence of its
 * own, and if it is non-zero bumps wake_seq (locked) and wakes.
 *
 * Why no release is missed.  Let P be the barrier the sleeper forced on the
 * releaser's CPU (a releaser not running then passes a context switch,
 * which orders the same way), after the sleeper's count.  If the
 * releaser's load of waiters came before P, so did its freeing stores,
 * which P drained: every attempt of the sleeper sees the capacity.  If it
 * came after P, it sees the count (which stays until the sleeper returns)
 * and bumps wake_seq after its stores.  Either the sleeper's read of
 * wake_seq precedes the bump, and FUTEX_WAIT returns at once or is woken;
 * or it follows the bump, and the attempt after that read sees the stores
 * (the bump is ordered after them, the attempt after the read).  This is
 * the argument of shm/epoch.c; a releaser that could not register for
 * membarrier fences itself (km__wake).
 *
 * What bounds a sleep instead.  Time-based capacity (cooldowns, limit
 * windows) sets the attempt's wake time.  Capacity that no release frees
 * and nothing wakes for -- a holder that died (reaped only by an attempt,
 * at most once a second), a refused acquirer's token reservation undone,
 * a probe given back -- is found by the next attempt: a sleep with no time
 * is bounded by KM__WAIT_IDLE_NS.  A slot seen mid-release is retried
 * after 50 us.  A sleeper whose expedited membarrier fails polls every
 * KM__POLL_BUSY_NS.
 */
#define KM__WAIT_IDLE_NS KM__NS_PER_S
/* The shortest sleep: a wake time already past sleeps this long (a
 * futex wait, not a spin). */
#define KM__WAIT_MIN_NS KM__NS_PER_US

KM_EXTERN int km_acquire_wait(km_env *e, const km_request *req, km_lease *out,
                              uint32_t timeout_ms)
{
    if (!e || !req || !out || req->pool < 0)
        return KM_EINVAL;
    if ((uint32_t)req->pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    km__pool *pool = &km__pools(e)[req->pool];
    uint64_t deadline = km__now() + (uint64_t)timeout_ms * KM__NS_PER_MS, wake;

    /* First a plain attempt: a caller served at once never counts itself
     * in `waiters`, so it writes no shared word and makes no release issue
     * a wake-up for nobody.  Only a caller that will sleep follows the
     * protocol above. */
    int rc = km__acquire_slow(e, req, out, &wake);
    if (rc != KM_EAGAIN)
        return rc;
    if (timeout_ms == 0)
        return KM_ETIMEDOUT;
    ck_pr_inc_32(&pool->waiters);
    int fenced = km__barrier_all(0) == KM_OK; /* see above */
    for (;;) {
        uint32_t seq = ck_pr_load_32(&pool->wake_seq);
        ck_pr_fence_load(); /* wake_seq before the attempt's loads (free on x86) */
        rc = km__acquire_slow(e, req, out, &wake);
        if (rc != KM_EAGAIN)
            break;
        uint64_t now = km__now();
        if (now >= deadline) {
            rc = KM_ETIMEDOUT;
            break;
        }
        /* Sleep until the clock may admit (wake) or a release wakes us;
         * never past the deadline. */
        uint64_t until = km__min64(km__max64(wake, now + KM__WAIT_MIN_NS), deadline);
        until = km__min64(until, now + (fenced ? KM__WAIT_IDLE_NS : KM__POLL_BUSY_NS));
        struct timespec ts = {.tv_sec = (time_t)((until - now) / KM__NS_PER_S),
                              .tv_nsec = (long)((until - now) % KM__NS_PER_S)};
        /* Shared futex (no FUTEX_PRIVATE_FLAG): wakers are other processes. */
        syscall(SYS_futex, &pool->wake_seq, FUTEX_WAIT, seq, &ts, NULL, 0);
    }
    ck_pr_dec_32(&pool->waiters);
    return rc;
}

