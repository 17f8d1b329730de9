/*
 * src/wait.c - km_acquire_wait: blocking acquire on a futex word in the
 * segment.  The waker's half is src/wait.h.
 */
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "gcra.h"
#include "internal.h"
#include "wait.h"

/*
 * Blocking acquire.  A caller that cannot be served at once counts itself
 * in pool.waiters (a locked increment, once per call, and in its process's
 * row: "Sleepers that die" below), forces a full barrier on every CPU that
 * runs a thread of an attached process (km__barrier_all: membarrier), and
 * then loops: read wake_seq, try to
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
 *
 * Sleepers that die.  `waiters` is an anonymous sum: a sleeper killed
 * inside this call would stay in it for good, and every later release
 * would make a FUTEX_WAKE for nobody.  So each process also counts its
 * sleepers per pool in its own row (km__wrow, src/layout.h):
 *   count in:  busy += 1; n[p] += 1; waiters += 1; busy += GEN - 1
 *   count out: busy += 1; waiters -= 1; n[p] -= 1; busy += GEN - 1
 * (locked instructions, in this order).  Let C_i be what process i has
 * added to `waiters` and not taken back.  Then
 *   W1  n_i[p] >= C_i, and n_i[p] == C_i whenever busy_i's low half is 0;
 *   W2  waiters == sum of C_i over the processes not yet reaped out of it:
 *       each change of `waiters` by a sleeper changes its own C_i alike.
 * A reaper (km__waiters_reap, for each dead process slot before it is
 * freed) recomputes `waiters` without the dead: it reads every row (tag,
 * busy, n[p]), then `waiters` (V), then every row again in reverse order of
 * fields.  If no live row was busy and no row changed, no change of a live
 * process overlapped the read of V, so the live rows' sum S was the live
 * part of V (W1, W2), and V - S is what the dead hold.  It then sets
 * `waiters` from V to S by CAS: whatever live sleepers changed since moved
 * `waiters` and their C_i alike, so if `waiters` still reads V the live
 * part is still S; if not, the CAS fails and it reads again.  A live
 * sleeper's count is thus never removed, and the wake argument above is
 * untouched.  Only then is the dead row cleared and its slot freed, so a
 * row is zero when a process claims its slot (the dead are dead for good:
 * a tag is pid, slot and, in the table, start time).  km_check verifies
 * sum(live rows) <= waiters <= sum(all rows).
 *
 * Fair waiting.  Every release wakes every sleeper and the first to retry
 * wins, so under sustained overload a request that needs much capacity at
 * once (a large token count) loses to the small ones that take each bit as
 * it frees up, until its timeout.  So a sleeper takes a ticket at its
 * count-in (pool.ticket, fetch-add: a lower one, in wrap-around order, has
 * waited longer), and its token is ticket << 32 | its process slot + 1.
 * After KM__WAIT_FAIR_TRIES failed attempts a sleeper that named no key
 * claims the pool's reserve (pool.reserve, CAS): if it is free, expired
 * (reserve_until past), or held by a younger ticket, for the key whose
 * limits or cooldown its attempt found would admit it first (reserve_key;
 * none: waiting for a lease slot or a probe, which a release frees for
 * whoever retries first whatever its size, it claims nothing).  While the
 * reserve is held and not expired, every other acquire of the pool passes
 * over that key (src/acquire.c, reserve_yield and lease_key), so capacity
 * builds up there for the holder alone, which gets it at the wake time its
 * own attempt computes; the other keys serve the rest.  Its wait is thus
 * bounded by the tries, the time older holders need, and the time its
 * request needs on an idle key.  The
 * holder drops the reserve (CAS to 0, then a wake) when it returns, leased
 * or not (timed out, or any error).  Lost wake-ups: a yielding sleeper read
 * wake_seq before it loaded `reserve` (the same fence as above); the drop
 * is a locked CAS before the bump of wake_seq, so a sleeper that saw the
 * reserve held either sees the bump or is woken by it.
 *   R1  A holder that dies is not waited for: a reaper of its process slot
 *       (km__waiters_reap, before the slot is freed) drops a reserve whose
 *       low half names that slot and wakes the sleepers; until then, and
 *       for a holder that is stopped, `reserve_until` (renewed by a live
 *       holder at least every KM__RESERVE_HOLD_NS / 4, as its sleeps are
 *       capped so) lets others past it after at most KM__RESERVE_HOLD_NS.
 *   R2  No acquire path writes more than before when nobody starves: the
 *       acquire loads `reserve` from a line it reads anyway, a release
 *       does not look at it.
 */
#define KM__WAIT_IDLE_NS KM__NS_PER_S
/* The shortest sleep: a wake time already past sleeps this long (a
 * futex wait, not a spin). */
#define KM__WAIT_MIN_NS KM__NS_PER_US

/* Failed attempts after which a sleeper that named no key claims the
 * pool's reserve, and how long a claim lasts unless renewed. */
#define KM__WAIT_FAIR_TRIES 8
#define KM__RESERVE_HOLD_NS (2 * KM__NS_PER_S)

KM__TLS uint64_t km__wait_token;
KM__TLS uint32_t km__wait_key;

/* Has token a waited longer than token b (an earlier ticket)? */
static int older(uint64_t a, uint64_t b)
{
    return (int32_t)((uint32_t)(a >> 32) - (uint32_t)(b >> 32)) < 0;
}

/* Claim pool's reserve for `token` on key index + 1 `key` (0: none to
 * claim), or renew it if held (following `key` if it moved); 1 if held.
 * The holder's identity is the CAS on `reserve`; its key and expiry are
 * plain stores after it, each a word of its own: a moment with the last
 * holder's key or an older expiry costs fairness, not safety (R1).  No
 * fence: the words are read by plain loads that tolerate any order. */
static int reserve_claim(km__pool *pool, uint64_t token, uint32_t key, uint64_t now)
{
    uint64_t r = ck_pr_load_64(&pool->reserve);
    if (r == token) {
        if (key && ck_pr_load_32(&pool->reserve_key) != key)
            ck_pr_store_32(&pool->reserve_key, key);
        if (ck_pr_load_64(&pool->reserve_until) < now + KM__RESERVE_HOLD_NS / 2)
            ck_pr_store_64(&pool->reserve_until, now + KM__RESERVE_HOLD_NS);
        return 1;
    }
    if (key == 0 ||
        (r != 0 && !older(token, r) && now < ck_pr_load_64(&pool->reserve_until)))
        return 0;
    if (!ck_pr_cas_64(&pool->reserve, r, token)) /* a claim or drop meanwhile */
        return 0;
    ck_pr_store_32(&pool->reserve_key, key);
    ck_pr_store_64(&pool->reserve_until, now + KM__RESERVE_HOLD_NS);
    return 1;
}

/* Drop pool's reserve if `token` holds it, and wake the sleepers that
 * yielded to it: the CAS (locked) is ordered before the bump of wake_seq
 * in km__wake ("Fair waiting" above).  Called while the dropper is still
 * counted or by a reaper: `waiters` is non-zero when anyone yielded. */
static void reserve_drop(km_env *e, km__pool *pool, uint64_t token)
{
    if (ck_pr_load_64(&pool->reserve) == token && ck_pr_cas_64(&pool->reserve, token, 0))
        km__wake(e, pool);
}

/* Count the calling thread in or out of pool p's sleepers: the pool's
 * count and its process's row, in the order of "Sleepers that die" above.
 * Each step is a locked instruction; the fences order them where atomics
 * may pass each other (none on x86). */
static void count(km__wrow *row, km__pool *pool, uint32_t p, int in)
{
    ck_pr_inc_64(&row->busy); /* busy before the counts change (W1) */
    ck_pr_fence_atomic();
    if (in) {
        ck_pr_inc_32(&row->n[p]);
        ck_pr_fence_atomic(); /* the row before the pool: n[p] >= C (W1) */
        ck_pr_inc_32(&pool->waiters);
    } else {
        ck_pr_dec_32(&pool->waiters);
        ck_pr_fence_atomic(); /* the pool before the row: n[p] >= C (W1) */
        ck_pr_dec_32(&row->n[p]);
    }
    ck_pr_fence_atomic(); /* the counts before busy drops */
    /* One change more, busy - 1 (xadd: the addend does not fit an add's
     * 32-bit immediate). */
    (void)ck_pr_faa_64(&row->busy, KM__WROW_GEN - 1);
}

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
    km__wrow *row = km__wrows(e, e->seg.proc_slot); /* a slot: the attempt ran */
    count(row, pool, (uint32_t)req->pool, 1);
    int fenced = km__barrier_all(0) == KM_OK; /* see above */
    /* Fair waiting (above): a ticket, and the token our attempts pass the
     * reserve with.  A pinned request never claims: it would hold back
     * every key of the pool for one. */
    uint32_t ticket = ck_pr_faa_32(&pool->ticket, 1); /* orders nothing: a number */
    uint64_t token = (uint64_t)ticket << 32 | (e->seg.proc_slot + 1);
    uint32_t fails = 0;
    int fair = req->key_id == NULL, held = 0;
    km__wait_token = token;
    km__wait_key = 0;
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
        if (fair && ++fails >= KM__WAIT_FAIR_TRIES)
            held = reserve_claim(pool, token, km__wait_key, now);
        /* Sleep until the clock may admit (wake) or a release wakes us;
         * never past the deadline, nor past the renewal of a reserve held. */
        uint64_t until = km__min64(km__max64(wake, now + KM__WAIT_MIN_NS), deadline);
        until = km__min64(until, now + (fenced ? KM__WAIT_IDLE_NS : KM__POLL_BUSY_NS));
        if (held)
            until = km__min64(until, now + KM__RESERVE_HOLD_NS / 4);
        struct timespec ts = {.tv_sec = (time_t)((until - now) / KM__NS_PER_S),
                              .tv_nsec = (long)((until - now) % KM__NS_PER_S)};
        /* Shared futex (no FUTEX_PRIVATE_FLAG): wakers are other processes. */
        syscall(SYS_futex, &pool->wake_seq, FUTEX_WAIT, seq, &ts, NULL, 0);
    }
    km__wait_token = 0;
    if (fails >= KM__WAIT_FAIR_TRIES)
        reserve_drop(e, pool, token); /* leased or not: the others go on */
    count(row, pool, (uint32_t)req->pool, 0);
    return rc;
}

/* ------------------------------------------------- the dead's sleepers */

/* Rows whose tag was judged, for one reap: each distinct tag costs one
 * liveness check (a system call or two), up to KM__WLIVE_CACHE tags. */
#define KM__WLIVE_CACHE 64
typedef struct wlive {
    uint32_t n;
    uint64_t tag[KM__WLIVE_CACHE];
    uint8_t alive[KM__WLIVE_CACHE];
} wlive;

/* Is the process of row `slot`, holding `tag`, alive?  A free slot (tag 0)
 * counts as alive: its row is zero, and a process claiming it meanwhile
 * changes the tag, which the validation sees. */
static int row_alive(km_env *e, uint32_t slot, uint64_t tag, wlive *c)
{
    if (tag == 0 || tag == e->seg.tag)
        return 1;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->tag[i] == tag)
            return c->alive[i];
    int alive = km__proc_entry_live(&e->seg, slot, tag);
    if (c->n < KM__WLIVE_CACHE) {
        c->tag[c->n] = tag;
        c->alive[c->n++] = (uint8_t)alive;
    }
    return alive;
}

/* Re-reads of the rows before a reap leaves a pool to a later one. */
#define KM__WAIT_REAP_TRIES 200

/* One validated view of pool p's sleepers ("Sleepers that die" above):
 * *counted is `waiters` as read between two equal reads of every row, *live
 * the sum of the rows of live processes (free slots included), *all that of
 * every row.  Returns 0 if a live process kept changing its row. */
static int view(km_env *e, uint32_t p, wlive *lc, uint32_t *counted, uint64_t *live,
                uint64_t *all)
{
    const km__proc *pt = km__procs(&e->seg);
    const uint32_t np = e->geom.cap_procs;
    for (int t = 0; t < KM__WAIT_REAP_TRIES; t++) {
        uint64_t h1 = KM__FNV64_INIT, h2 = KM__FNV64_INIT, sl = 0, sa = 0;
        int moving = 0;
        for (uint32_t i = 0; i < np; i++) {
            const km__wrow *r = km__wrows(e, i);
            uint64_t tag = ck_pr_load_64(&pt[i].tag);
            ck_pr_fence_load(); /* the tag, then busy, then the count */
            uint64_t b = ck_pr_load_64(&r->busy);
            ck_pr_fence_load();
            uint32_t n = ck_pr_load_32(&r->n[p]);
            h1 = km__fnv64_step(km__fnv64_step(km__fnv64_step(h1, tag), b), n);
            if (tag == 0 && b == 0 && n == 0)
                continue; /* a slot never used, or cleared */
            sa += n;
            if (row_alive(e, i, tag, lc)) {
                moving |= (uint32_t)b != 0;
                sl += n;
            }
        }
        ck_pr_fence_load(); /* the first reads of the rows before `waiters` */
        uint32_t v = ck_pr_load_32(&km__pools(e)[p].waiters);
        ck_pr_fence_load(); /* `waiters` before the second reads */
        for (uint32_t i = 0; i < np; i++) {
            const km__wrow *r = km__wrows(e, i);
            uint32_t n = ck_pr_load_32(&r->n[p]);
            ck_pr_fence_load(); /* the count, then busy, then the tag */
            uint64_t b = ck_pr_load_64(&r->busy);
            ck_pr_fence_load();
            uint64_t tag = ck_pr_load_64(&pt[i].tag);
            h2 = km__fnv64_step(km__fnv64_step(km__fnv64_step(h2, tag), b), n);
        }
        if (!moving && h1 == h2) {
            *counted = v;
            *live = sl;
            *all = sa;
            return 1;
        }
        sched_yield();
    }
    return 0;
}

int km__waiters_view(km_env *e, uint32_t p, uint32_t *counted, uint64_t *live, uint64_t *all)
{
    wlive lc = {0};
    return p < e->geom.cap_pools && view(e, p, &lc, counted, live, all);
}

int km__waiters_reap(km_env *e, uint32_t slot)
{
    km__wrow *row = km__wrows(e, slot);
    wlive lc = {0};
    /* A reserve the dead process held (R1): its low half names the slot,
     * which the caller holds marked for reaping (T3, shm/proc.c): no live
     * process holds it until the caller frees it. */
    for (uint32_t p = 0; p < e->geom.cap_pools; p++) {
        km__pool *pool = &km__pools(e)[p];
        uint64_t r = ck_pr_load_64(&pool->reserve);
        if (r != 0 && (uint32_t)r == slot + 1)
            reserve_drop(e, pool, r);
    }
    int any = ck_pr_load_64(&row->busy) != 0;
    for (uint32_t p = 0; p < e->geom.cap_pools; p++) {
        if (ck_pr_load_32(&row->n[p]) == 0)
            continue;
        any = 1;
        for (int done = 0; !done;) {
            uint32_t v;
            uint64_t live, all;
            if (!view(e, p, &lc, &v, &live, &all))
                return 0;
            /* From V to the live sum (see above); a failed CAS means a live
             * sleeper moved `waiters` since: read again. */
            done = v == live || ck_pr_cas_32(&km__pools(e)[p].waiters, v, (uint32_t)live);
        }
    }
    if (!any)
        return 1;
    /* The dead process's share is out of every pool: clear its row.  The
     * caller holds the slot marked for reaping (T3), so no process claims
     * it and counts itself in this row before the caller frees it. */
    for (uint32_t p = 0; p < e->geom.cap_pools; p++)
        ck_pr_store_32(&row->n[p], 0);
    ck_pr_store_64(&row->busy, 0);
    ck_pr_fence_store_atomic(); /* the cleared row before the slot is freed */
    return 1;
}

