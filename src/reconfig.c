/*
 * src/reconfig.c - live reconfiguration: add, remove, re-weight keys, change
 * their limits and their operator state; add, change and remove pools; all
 * while workers acquire and release; and the recovery of a reconfiguration
 * whose writer died.
 *
 * Writers serialise on the admin lock, a robust process-shared mutex in the
 * segment header; acquire and release never take it.  What a running
 * acquire may hold on to is reclaimed only after a grace period
 * (shm/epoch.c):
 *
 *   member lists  Each pool has two.  A writer fills the spare one from the
 *                 current one, then stores `cur` (release).  The list it
 *                 replaced stopped being current at `flip_epoch`; it is
 *                 rewritten only once synced > flip_epoch, i.e. after a
 *                 grace period that began after the flip.
 *   key rows      km_key_remove stores state REMOVED (acquirers skip the key
 *                 from then on) and `retire_epoch`.  The row, id and secret
 *                 included, is rewritten for another key only once synced >
 *                 retire_epoch, none of its lease slots is held, no current
 *                 member list names it, and synced > its pool's flip_epoch
 *                 (a reader that loaded a list naming it has left).
 *   limits        km_key_set_limits sets the key's `updating` flag
 *                 (acquirers skip the key), waits for a grace period, so
 *                 that no acquire still uses the old parameters, rewrites
 *                 them, and clears the flag (release).
 *
 * Removal is effective without any wait: state is read by every acquire
 * after it loads the member list, and stored here before this call returns,
 * followed by a full fence; an acquire that starts after the return loads
 * REMOVED.  An acquire that was already past that load when the store
 * happened may still return the key: its lease is one of those "already
 * out" that may finish.
 *
 * Death at any instruction.  Every writer records its intent in the header
 * (km__intent, src/layout.h) before its first shared store: operation, key,
 * pool, writer (pid and start time), and what an undo or a redo needs (the
 * old weight, the pool's `cur` before, the new limits, the old emission
 * intervals), then advances `step` before each phase that changes shared
 * state, and clears `op` after its last store.  A writer that dies holding
 * the lock is found by
 *   - the next writer: pthread_mutex_lock returns EOWNERDEAD (the kernel's
 *     robust-futex list); any intent found under the lock is a dead one;
 *   - a reaper (km_reap, the reap of km_open, km_acquire's reap before it
 *     gives up): an intent whose writer is dead makes it try the lock;
 * and whoever holds the lock then finishes or undoes the intent (recover()),
 * without waiting for any grace period:
 *
 *   add        The commit point is the member list: if the pool's current
 *              list names the row, the key is in (counters are finished);
 *              else the row goes back to FREE and its secret is wiped (it
 *              was never reachable: a reusable row is in no current list).
 *   remove     Finished: REMOVED, retire_epoch taken again (later is
 *              safe).  A list not yet rebuilt keeps the key, skipped, as
 *              when a rebuild times out.
 *   set-weight Commit point: `cur` of the pool changed; else the old
 *              weight is put back.
 *   set-limits (of the key, or of one model on the key: the same steps,
 *              on the key's model row and its own_models bit)
 *              Before the grace period completed (step < SYNCED) no
 *              parameter was written: the flag is cleared, the old limits
 *              stand.  After it: the new parameters are written again from
 *              the intent, every window whose debt was not yet carried over
 *              is carried over (the one the writer was at, whose CAS may
 *              have happened, is set to the target the writer recorded
 *              before that CAS, if it is not already there), and the flag
 *              is cleared.
 *   enable, disable  Done again (both are idempotent).
 * and in every case each pool's flip_epoch is set to the current epoch (a
 * writer killed between storing `cur` and flip_epoch left it older than its
 * flip; a later value only delays reuse), and n_keys is recounted from the
 * rows.  The recovery follows the same protocol (it records itself as the
 * writer and advances the same steps), so a recoverer killed in turn is
 * recovered the same way.  Steps are stored before the stores they
 * announce: a step below a phase proves that phase wrote nothing.
 *
 * Lock holders.  The kernel gives a robust mutex back when its holder dies:
 * at the holder's exit it walks the holder's robust-futex list and sets
 * FUTEX_OWNER_DIED in the lock word, and the next locker gets EOWNERDEAD.
 * Where there is no such list (qemu-user does not implement
 * set_robust_list), a dead holder would keep the lock for good.  There a
 * writer or reaper that times out on the lock does what the kernel would
 * have done: the lock word names its holder (glibc keeps the owner's
 * thread id in its low bits, FUTEX_TID_MASK); if that thread is gone
 * (kill(tid, 0): ESRCH), one CAS on the lock word from that value to
 * FUTEX_OWNER_DIED (keeping FUTEX_WAITERS) gives it back, and glibc's own
 * robust path hands the next locker EOWNERDEAD, as the kernel's would.  One
 * CAS decides: two breakers cannot both succeed (the second finds the word
 * changed), and a lock taken meanwhile changed the word too.  A holder
 * that dies anywhere between taking the lock and giving it back is found
 * this way.  A dead holder's thread id reused by a new thread keeps the
 * lock held until that thread exits (conservative: never a second holder).
 *
 * Pools.  A pool row has a state (KM__PST_*, src/layout.h) that every
 * acquire loads inside its epoch section, before any other word of the
 * pool; km_pool_find and the readers see only LIVE pools.
 *   add        The row (FREE, or REMOVED with every key row naming it
 *              reusable and a grace period past its removal) goes ADDING,
 *              is written with its keys' rows and a member list (nobody
 *              reads it), and the release store of LIVE is the commit
 *              point.  Undone (ADDING): every key row naming it FREE, lists
 *              empty, the row FREE.
 *   remove     REMOVING (a full barrier: acquires refused), a grace period
 *              (every acquire that saw LIVE has its lease in a slot), then
 *              a wait for the pool's lease slots to free.  Past it (step
 *              SYNCED, the commit point) REMOVED, its keys retired and
 *              their generation moved on (a lease still out, KM_POOL_FORCE,
 *              is released stale, its reservation given back), the list
 *              emptied.  Before it, undone: LIVE again.
 *   set        Settings are staged in the pool row (km__pool.stage) before
 *              the intent, then stored word by word (step PUBLISH: redone
 *              from the stage).  Limits of every key, or of a model, are
 *              changed as set-limits changes a key's: every key's updating
 *              flag, one grace period (step SYNCED), then key by key in row
 *              order, the key in progress and what its rescale needs in the
 *              intent before its first store, its flag cleared last (a key
 *              with its flag clear is done); before SYNCED, undone (flags
 *              cleared).  A model is appended in a row past n_models, and
 *              the store of n_models + 1 is the commit point.
 * A writer's call returns after a full fence: an acquire that starts after
 * it loads the new state and settings.
 *
 * Fault injection.  KM__FAULT(label) marks every point between two shared
 * stores of a writer and of the recovery; a build with -DKM_FAULT_INJECTION
 * (tests/t_fault.c) calls a hook there that kills the process at the n-th
 * point, for every n, and checks what the next writer, reaper or attach
 * leaves.  In the library proper the macro is empty.
 */
#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "budget.h"
#include "gcra.h"
#include "internal.h"
#include "tz.h"
#include "wait.h"

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((km__hdr *)0)->admin),
               "the admin lock fits its header line");

#ifdef KM_FAULT_INJECTION
void (*km__fault_hook)(const char *where);
#endif

/* Steps of km__intent.step: the phase the writer has entered (its stores
 * may have begun). */
enum {
    KM__STEP_BEGUN = 0,   /* recorded; nothing changed */
    KM__STEP_ROW = 1,     /* add: the chosen row is being written (unreachable) */
    KM__STEP_PUBLISH = 2, /* add, remove, set-weight: the key or its list change */
    KM__STEP_SYNCED = 3   /* set-limits: the grace period passed; parameters are
                           * being rewritten and windows rescaled */
};

static pthread_mutex_t *admin_mutex(km_env *e) { return (pthread_mutex_t *)(void *)e->seg.hdr->admin; }

void km__admin_init(km_env *e)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(admin_mutex(e), &a);
    pthread_mutexattr_destroy(&a);
}

static void recover(km_env *e);

/* The lock is ours (rc 0, or EOWNERDEAD: its holder died); mark it
 * consistent and resolve any intent left: under the lock, an intent is
 * always a dead writer's (we clear ours before unlocking). */
static int admin_locked(km_env *e, int rc)
{
    if (rc == EOWNERDEAD) /* see the top of this file */
        rc = pthread_mutex_consistent(admin_mutex(e));
    if (rc != 0)
        return rc;
    if (ck_pr_load_32(&km__intent_of(e)->op) != KM__OP_NONE)
        recover(e);
    return 0;
}

/* glibc's lock word: the first member of pthread_mutex_t, the owner's
 * thread id in FUTEX_TID_MASK, and the robust futex bits (linux/futex.h). */
_Static_assert(offsetof(pthread_mutex_t, __data.__lock) == 0, "the lock word leads the mutex");
_Static_assert(sizeof(((pthread_mutex_t *)0)->__data.__lock) == sizeof(uint32_t), "a 32-bit futex");

/* The lock could not be taken: if the thread its word names is gone (and
 * the kernel, which has no robust list for us, did not say so), give it
 * back as the kernel would (see "Lock holders").  Returns the result of
 * taking it then (0, EOWNERDEAD, EBUSY...), or EBUSY. */
static int admin_break(km_env *e)
{
    static int robust = -1; /* does the kernel keep robust lists for us? */
    int r = ck_pr_load_int(&robust); /* threads may ask at once: same answer */
    if (r < 0) {
        void *head;
        size_t len;
        r = syscall(SYS_get_robust_list, 0, &head, &len) == 0;
        ck_pr_store_int(&robust, r);
    }
    if (r)
        return EBUSY; /* the kernel gives a dead holder's lock back */
    uint32_t *word = (uint32_t *)(void *)admin_mutex(e);
    uint32_t w = ck_pr_load_32(word), tid = w & FUTEX_TID_MASK;
    if (tid == 0 || (w & FUTEX_OWNER_DIED) || kill((pid_t)tid, 0) == 0 || errno != ESRCH)
        return EBUSY; /* free, already given back, or its holder lives */
    /* The one CAS that decides (a full barrier): it fails if the word moved
     * (taken, or given back by another breaker) since it named the dead. */
    if (!ck_pr_cas_32(word, w, FUTEX_OWNER_DIED | (w & FUTEX_WAITERS)))
        return EBUSY;
    if (w & FUTEX_WAITERS) /* sleepers on the old holder: let them compete */
        syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    return pthread_mutex_trylock(admin_mutex(e));
}

int km__admin_lock(km_env *e)
{
    if (e->seg.ro)
        return KM_EREADONLY; /* the lock word is not ours to write */
    /* pthread_mutex_timedlock takes a CLOCK_REALTIME deadline; it is taken
     * in slices of at most 100 ms, each followed by a look at the holder. */
    uint64_t end = km__wall_ns() + (uint64_t)km__admin_timeout(e) * KM__NS_PER_MS;
    int rc;
    for (;;) {
        uint64_t ns = km__min64(end, km__wall_ns() + 100 * KM__NS_PER_MS);
        struct timespec ts = {.tv_sec = (time_t)(ns / KM__NS_PER_S),
                              .tv_nsec = (long)(ns % KM__NS_PER_S)};
        rc = pthread_mutex_timedlock(admin_mutex(e), &ts);
        if (rc == ETIMEDOUT && (rc = admin_break(e)) == EBUSY)
            rc = ETIMEDOUT;
        if (rc != ETIMEDOUT || km__wall_ns() >= end)
            break;
    }
    rc = admin_locked(e, rc);
    if (rc == ETIMEDOUT)
        return KM_EBUSY;
    if (rc != 0) {
        errno = rc;
        return KM_ESYS;
    }
    return KM_OK;
}

void km__admin_unlock(km_env *e)
{
    pthread_mutex_unlock(admin_mutex(e));
}

/* ------------------------------------------------------------- intents */

/* Record this process as the writer of `op` on key/pool.  Plain stores of
 * the details, then `op` (release): a reader that sees op sees them. */
static void intent_begin(km_env *e, uint32_t op, uint32_t key, uint32_t pool)
{
    km__intent *in = km__intent_of(e);
    uint32_t pid = (uint32_t)getpid();
    ck_pr_store_32(&in->step, KM__STEP_BEGUN);
    ck_pr_store_32(&in->pid, pid);
    ck_pr_store_64(&in->start_time, km__pid_start_time(pid));
    ck_pr_store_32(&in->key, key);
    ck_pr_store_32(&in->pool, pool);
    ck_pr_store_32(&in->rescaled, 0);
    ck_pr_store_32(&in->resc_win, 0);
    ck_pr_fence_store(); /* the details before op */
    ck_pr_store_32(&in->op, op);
    /* op before the writer's first shared store (stores stay in order). */
    ck_pr_fence_store();
    KM__FAULT("intent.begun");
}

/* Enter a phase: the step before any store of it. */
static void intent_step(km_env *e, uint32_t step)
{
    ck_pr_fence_store(); /* the previous phase's stores first */
    ck_pr_store_32(&km__intent_of(e)->step, step);
    ck_pr_fence_store(); /* the step before the phase's stores */
}

/* Done: every store of the operation before op reads 0. */
static void intent_end(km_env *e)
{
    KM__FAULT("intent.ending");
    ck_pr_fence_store();
    ck_pr_store_32(&km__intent_of(e)->op, KM__OP_NONE);
    KM__FAULT("intent.ended");
}

/* ------------------------------------------------------------- helpers */

/* Wait for a grace period unless every reader that could see something
 * retired at `epoch` is already known to have left. */
static int grace(km_env *e, uint64_t epoch)
{
    if (epoch < ck_pr_load_64(&e->seg.hdr->synced))
        return KM_OK;
    return km__epoch_sync(&e->seg, km__admin_timeout(e));
}

/* Write member list nb of pool p (and its view) from the key rows
 * cand[0..nc) that are not FREE or REMOVED, in that order, with running
 * weights and the price order.  The list must be one no reader uses. */
static int list_fill(km_env *e, uint32_t p, uint32_t nb, const uint32_t *cand, uint32_t nc)
{
    km__pool *pool = &km__pools(e)[p];
    km__key *keys = km__keys(e);
    km__member *dst = km__members(e, p, nb);
    uint32_t *order = malloc(((size_t)nc + 1) * sizeof(uint32_t));
    uint64_t cum = 0;
    uint32_t n = 0;
    if (!order)
        return KM_ENOMEM;
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t ki = cand[i];
        if (ki >= e->geom.cap_keys || ck_pr_load_32(&keys[ki].state) >= KM__ST_FREE)
            continue;
        cum += keys[ki].weight;
        if (cum > UINT32_MAX) {
            free(order);
            return KM_ECONFIG; /* weighted choice keeps 32-bit running sums */
        }
        dst[n].key = ki;
        dst[n].cum_weight = (uint32_t)cum;
        order[n++] = ki;
    }
    qsort_r(order, n, sizeof(uint32_t), km__cmp_price, keys);
    for (uint32_t i = 0; i < n; i++)
        dst[i].by_cost = order[i];
    free(order);
    pool->view[nb].n_keys = n;
    pool->view[nb].total_weight = cum;
    pool->view[nb].rr_magic = km__rr_magic(n);
    return KM_OK;
}

/* Publish a new member list for pool p: the current one without keys that
 * are removed, plus `add` (a key index, or UINT32_MAX for none), with
 * running weights and the price order recomputed.  KM_EBUSY if the spare
 * list is still in its grace period and the wait timed out. */
static int list_publish(km_env *e, uint32_t p, uint32_t add)
{
    km__hdr *h = e->seg.hdr;
    km__pool *pool = &km__pools(e)[p];
    uint32_t b = ck_pr_load_32(&pool->cur) & 1, nb = b ^ 1;
    int rc = grace(e, ck_pr_load_64(&pool->flip_epoch));
    if (rc != KM_OK)
        return rc;
    KM__FAULT("publish.graced");

    const km__member *src = km__members(e, p, b);
    uint32_t sn = (uint32_t)(ck_pr_load_32(&pool->view[b].n_keys) < e->geom.cap_keys
                                 ? ck_pr_load_32(&pool->view[b].n_keys) : e->geom.cap_keys);
    uint32_t *cand = malloc(((size_t)sn + 1) * sizeof(uint32_t));
    if (!cand)
        return KM_ENOMEM;
    for (uint32_t i = 0; i < sn; i++)
        cand[i] = src[i].key;
    cand[sn] = add;
    rc = list_fill(e, p, nb, cand, sn + 1);
    free(cand);
    if (rc != KM_OK)
        return rc;
    KM__FAULT("publish.filled");
    /* The list and its view before `cur` (pairs with the acquire load in
     * acquire_in); then the epoch at which the old list stopped being
     * current, read after the flip (see the top of this file). */
    ck_pr_fence_store();
    ck_pr_store_32(&pool->cur, nb);
    KM__FAULT("publish.flipped");
    ck_pr_fence_memory();
    ck_pr_store_64(&pool->flip_epoch, ck_pr_load_64(&h->epoch));
    KM__FAULT("publish.done");
    return KM_OK;
}

/* listed[ki] = 1 for every key row named by some pool's current list. */
static void mark_listed(km_env *e, uint8_t *listed)
{
    memset(listed, 0, e->geom.cap_keys);
    for (uint32_t p = 0; p < e->geom.n_pools; p++) {
        const km__pool *pool = &km__pools(e)[p];
        uint32_t b = ck_pr_load_32(&pool->cur) & 1;
        uint32_t n = ck_pr_load_32(&pool->view[b].n_keys);
        const km__member *m = km__members(e, p, b);
        for (uint32_t i = 0; i < n && i < e->geom.cap_keys; i++) {
            uint32_t ki = ck_pr_load_32(&m[i].key);
            if (ki < e->geom.cap_keys)
                listed[ki] = 1;
        }
    }
}

/* Does pool p's current member list name row ki? */
static int in_list(km_env *e, uint32_t p, uint32_t ki)
{
    const km__pool *pool = &km__pools(e)[p];
    uint32_t b = ck_pr_load_32(&pool->cur) & 1;
    uint32_t n = ck_pr_load_32(&pool->view[b].n_keys);
    const km__member *m = km__members(e, p, b);
    for (uint32_t i = 0; i < n && i < e->geom.cap_keys; i++)
        if (ck_pr_load_32(&m[i].key) == ki)
            return 1;
    return 0;
}

/* Is row ki free to be written for a new key?  FREE; or REMOVED with its
 * grace period over, no lease slot held, named by no current member list,
 * and a grace period past since its pool's list was last rebuilt (a reader
 * that loaded the list that still named it has left).  A REMOVED row still
 * listed (its list could not be rebuilt) sets *lingering. */
static int row_reusable(km_env *e, uint32_t ki, const uint8_t *listed, int *lingering)
{
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state);
    uint64_t synced = ck_pr_load_64(&e->seg.hdr->synced);
    if (st == KM__ST_FREE)
        return 1;
    if (st != KM__ST_REMOVED)
        return 0;
    if (listed[ki]) {
        *lingering = 1;
        return 0;
    }
    if (ck_pr_load_64(&k->retire_epoch) >= synced)
        return 0;
    const km__lease *ls = km__leases(e, ki);
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
        if (ck_pr_load_64(&ls[s].owner) != 0)
            return 0;
    return k->pool >= e->geom.n_pools ||
           ck_pr_load_64(&km__pools(e)[k->pool].flip_epoch) < synced;
}

/* Clear a row for a new key: no reader can reach it (see row_reusable)
 * and no lease slot is held, so plain stores would do; atomic ones keep
 * concurrent readers of statistics (inspect, check) well-defined. */
static void row_clear(km_env *e, uint32_t ki)
{
    km__key *k = &km__keys(e)[ki];
    km__lease *ls = km__leases(e, ki);
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        ck_pr_store_64(&k->win[w].tat, 0);
        ck_pr_store_64(&k->win[w].reserved, 0);
    }
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
        ck_pr_store_8(&km__busy(e, ki)[s], 0);
    ck_pr_store_64(&k->latency_ema_ns, 0);
    ck_pr_store_64(&k->stale, 0);
    ck_pr_store_64(&k->cooldown_until, 0);
    ck_pr_store_32(&k->consec_fail, 0);
    ck_pr_store_32(&k->consec_429, 0);
    ck_pr_store_32(&k->updating, 0);
    ck_pr_store_32(&k->probe, 0); /* no lease slot held: no probe out */
    ck_pr_store_64(&k->retire_epoch, 0);
    ck_pr_store_64(&k->own_models, 0); /* the pool's model limits, as configured */
    memset(km__mwins(e, ki), 0, (size_t)e->geom.cap_models * sizeof(km__mwin));
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
        km__lease *l = &ls[s];
        ck_pr_store_64(&l->acquired, 0);
        ck_pr_store_64(&l->succeeded, 0);
        ck_pr_store_64(&l->tokens_used, 0);
        ck_pr_store_64(&l->tokens_est, 0);
        ck_pr_store_64(&l->abandoned, 0);
        for (int i = 0; i < KM_OUT_COUNT; i++)
            ck_pr_store_64(&l->outcomes[i], 0);
    }
    explicit_bzero(k->secret, sizeof(k->secret));
}

/* An unreachable row back to FREE, its secret wiped: an add undone. */
static void row_free(km_env *e, uint32_t ki)
{
    km__key *k = &km__keys(e)[ki];
    ck_pr_store_32(&k->state, KM__ST_FREE);
    ck_pr_fence_store(); /* FREE before the bytes go (inspect skips FREE rows) */
    explicit_bzero(k->secret, sizeof(k->secret));
    ck_pr_store_32(&k->secret_len, 0);
}

/* n_keys: key rows in use (any state but FREE), counted from the rows. */
static void count_rows(km_env *e)
{
    uint32_t n = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        n += ck_pr_load_32(&km__keys(e)[ki].state) != KM__ST_FREE;
    ck_pr_store_32(&e->seg.hdr->n_keys, n);
}

/* Take the admin lock for a change to an existing key: KM_OK with the lock
 * held, else an error with the lock released. */
static int admin_lock_key(km_env *e, uint32_t key) /* key < 0 arrives out of range */
{
    int rc = km__admin_lock(e);
    if (rc != KM_OK)
        return rc;
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE) {
        km__admin_unlock(e);
        return KM_ENOKEY;
    }
    if (km__keys(e)[key].pool >= e->geom.n_pools) { /* a corrupted row */
        km__admin_unlock(e);
        return KM_ECORRUPT;
    }
    return KM_OK;
}

/* Only writers holding the admin lock count. */
static void count_reconfig(km_env *e)
{
    ck_pr_store_64(&e->seg.hdr->reconfigs, ck_pr_load_64(&e->seg.hdr->reconfigs) + 1);
}

static void pool_defaults_of(const km__pool *pl, km__pool_defaults *pd)
{
    memset(pd, 0, sizeof(*pd));
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        pd->limits[w].limit = pl->def_limit[w];
        pd->limits[w].burst = pl->def_burst[w];
        pd->limits[w].mode = pl->def_mode[w];
    }
    pd->max_inflight = pl->def_max_inflight;
    pd->price_in = pl->def_price_in;
    pd->price_out = pl->def_price_out;
}

/* ------------------------------------------------------------------ add */

/* Pass over the rows: the first reusable one (UINT32_MAX if none); *waiting
 * if a removed row may become reusable after a grace period, *lingering if
 * one is kept only by a list not yet rebuilt. */
static uint32_t find_row(km_env *e, uint8_t *listed, int *waiting, int *lingering)
{
    mark_listed(e, listed);
    for (uint32_t i = 0; i < e->geom.cap_keys; i++) {
        if (row_reusable(e, i, listed, lingering))
            return i;
        if (ck_pr_load_32(&km__keys(e)[i].state) == KM__ST_REMOVED)
            *waiting = 1;
    }
    return UINT32_MAX;
}

/* One API key, one row (as km__cfg_check_secrets for a configuration): a
 * secret already held by a live key of any pool would give that key its
 * limits twice.  Under the admin lock, so no row's secret changes meanwhile
 * (only writers rewrite rows); removed rows do not count (a key removed
 * and added back is one key).  Every live row is compared, in constant
 * time; the message names the ids, never the secret. */
static int secret_taken(km_env *e, const km__key_cfg *kc, char *errbuf, size_t errlen)
{
    const km__key *keys = km__keys(e);
    uint32_t hit = UINT32_MAX;
    for (uint32_t i = 0; i < e->geom.cap_keys; i++) {
        if (ck_pr_load_32(&keys[i].state) >= KM__ST_FREE)
            continue;
        size_t len = km__min64(ck_pr_load_32(&keys[i].secret_len), KM_SECRET_MAX);
        if (km__secret_eq(keys[i].secret, len, kc->secret, kc->secret_len) && hit == UINT32_MAX)
            hit = i;
    }
    if (hit == UINT32_MAX)
        return KM_OK;
    if (errbuf && errlen) {
        uint32_t q = keys[hit].pool;
        snprintf(errbuf, errlen,
                 "key \"%s\" has the same secret as key \"%.*s\" of pool \"%.*s\"; "
                 "list each API key once, or it gets its limits twice",
                 kc->id, KM_ID_MAX, keys[hit].id, KM_ID_MAX,
                 q < e->geom.n_pools ? km__pools(e)[q].name : "?");
    }
    return KM_EDUPSECRET;
}

KM_EXTERN int km_key_add(km_env *e, int pool, const char *key_json, char *errbuf,
                         size_t errlen)
{
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !key_json)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    uint32_t p = (uint32_t)pool;
    km__pool_defaults pd;
    km__key_cfg kc;
    uint8_t *listed = NULL;
    pool_defaults_of(&km__pools(e)[p], &pd);
    int rc = km__config_parse_key(key_json, &pd, e->geom.cap_inflight, &kc, errbuf, errlen);
    if (rc != KM_OK)
        return rc;
    KM__FAULT("add.parsed");
    if (!(listed = malloc(e->geom.cap_keys))) {
        rc = KM_ENOMEM;
        goto out;
    }
    if ((rc = km__admin_lock(e)) != KM_OK)
        goto out;
    if (!km__pool_live(e, pool)) { /* removed meanwhile (pools: under the lock) */
        rc = KM_ENOPOOL;
        goto unlock;
    }
    /* The pool's defaults were read before the lock (the parse may read a
     * secret file): a km_pool_set, or a remove and an add that reused the
     * row, in between changed them.  Parsed again with what now holds, so
     * the new key never takes limits the pool no longer has. */
    km__pool_defaults now_pd;
    pool_defaults_of(&km__pools(e)[p], &now_pd);
    if (memcmp(&now_pd, &pd, sizeof pd) != 0) {
        explicit_bzero(&kc, sizeof(kc));
        rc = km__config_parse_key(key_json, &now_pd, e->geom.cap_inflight, &kc, errbuf, errlen);
        if (rc != KM_OK)
            goto unlock;
    }

    km__key *keys = km__keys(e);
    for (uint32_t i = 0; i < e->geom.cap_keys; i++) {
        uint32_t st = ck_pr_load_32(&keys[i].state);
        if (st < KM__ST_FREE && keys[i].pool == p &&
            strncmp(keys[i].id, kc.id, KM_ID_MAX + 1) == 0) {
            rc = KM_EKEYEXISTS;
            goto unlock;
        }
    }
    if ((rc = secret_taken(e, &kc, errbuf, errlen)) != KM_OK)
        goto unlock;
    /* A named zone of its budget into the segment's table (before the
     * intent: a zone row is complete or unused, src/tz.c). */
    if ((rc = km__tz_bind(e, kc.budget_tz, kc.budget_tz_min, &kc.budget_tz_min, errbuf,
                          errlen)) != KM_OK)
        goto unlock;
    /* From here the segment may change (lists rebuilt, epochs): recorded. */
    intent_begin(e, KM__OP_ADD, UINT32_MAX, p);
    int waiting = 0, lingering = 0;
    uint32_t ki = find_row(e, listed, &waiting, &lingering);
    if (ki == UINT32_MAX && (waiting || lingering)) {
        /* Removed rows that a list rebuild (dropping them) and a grace
         * period would free. */
        for (uint32_t q = 0; lingering && q < e->geom.n_pools; q++)
            for (uint32_t i = 0; i < e->geom.cap_keys; i++)
                if (listed[i] && ck_pr_load_32(&keys[i].state) == KM__ST_REMOVED &&
                    keys[i].pool == q) {
                    (void)list_publish(e, q, UINT32_MAX); /* a timeout: EFULL below */
                    break;
                }
        if ((rc = km__epoch_sync(&e->seg, km__admin_timeout(e))) != KM_OK)
            goto end;
        KM__FAULT("add.synced");
        waiting = lingering = 0;
        ki = find_row(e, listed, &waiting, &lingering);
    }
    if (ki == UINT32_MAX) {
        rc = KM_EFULL;
        goto end;
    }

    /* The row, unreachable (FREE) while it is written. */
    km__key *k = &keys[ki];
    ck_pr_store_32(&km__intent_of(e)->key, ki);
    intent_step(e, KM__STEP_ROW);
    ck_pr_store_32(&k->state, KM__ST_FREE);
    KM__FAULT("add.row.free");
    row_clear(e, ki);
    KM__FAULT("add.row.cleared");
    km__key_write(e, k, p, &kc);
    KM__FAULT("add.row.written");
    ck_pr_store_32(&k->gen, ck_pr_load_32(&k->gen) + 1);
    /* Everything above before the state that lets acquirers in (they reach
     * the row only through the list published next). */
    ck_pr_fence_store();
    ck_pr_store_32(&k->state, KM__ST_ACTIVE);
    KM__FAULT("add.row.active");
    intent_step(e, KM__STEP_PUBLISH);
    if ((rc = list_publish(e, p, ki)) != KM_OK) {
        row_free(e, ki); /* never reachable: undone */
        count_rows(e);
        goto end;
    }
    count_rows(e);
    KM__FAULT("add.counted");
    count_reconfig(e);
    km__wake_pool(e, p); /* a new key may admit sleepers */
    rc = (int)ki;
end:
    intent_end(e);
unlock:
    km__admin_unlock(e);
out:
    free(listed);
    explicit_bzero(&kc, sizeof(kc));
    return rc;
}

/* --------------------------------------------------------------- remove */

/* Retire key row ki: REMOVED (acquirers skip it from the next load of its
 * state), at the current epoch. */
static void key_retire(km_env *e, km__key *k)
{
    /* Health transitions are CASes from live states: none overwrites
     * REMOVED.  The exchange is locked (a full barrier): the state is
     * visible to every acquire that starts after this call returns. */
    ck_pr_fas_32(&k->state, KM__ST_REMOVED);
    KM__FAULT("remove.state");
    ck_pr_store_64(&k->retire_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
    KM__FAULT("remove.retired");
}

KM_EXTERN int km_key_remove(km_env *e, int key)
{
    if (!e)
        return KM_EINVAL;
    int rc = admin_lock_key(e, key);
    if (rc != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    intent_begin(e, KM__OP_REMOVE, key, k->pool);
    intent_step(e, KM__STEP_PUBLISH);
    key_retire(e, k);
    /* The list is rebuilt without it; if a stalled reader holds the spare
     * list, the removed key stays listed (and skipped) until a later
     * rebuild of the pool (an add, remove or re-weight in it, or an add that
     * needs the row). */
    (void)list_publish(e, k->pool, UINT32_MAX);
    count_reconfig(e);
    intent_end(e);
    km__admin_unlock(e);
    return KM_OK;
}

/* ----------------------------------------------------------- set-weight */

KM_EXTERN int km_key_set_weight(km_env *e, int key, uint32_t weight)
{
    if (!e || weight == 0 || weight > KM__WEIGHT_MAX)
        return KM_EINVAL;
    int rc = admin_lock_key(e, key);
    if (rc != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    km__intent *in = km__intent_of(e);
    uint32_t old = k->weight;
    ck_pr_store_32(&in->old_weight, old);
    ck_pr_store_32(&in->cur, ck_pr_load_32(&km__pools(e)[k->pool].cur));
    intent_begin(e, KM__OP_WEIGHT, key, k->pool);
    intent_step(e, KM__STEP_PUBLISH);
    /* Read only by list building (under this lock) and by display. */
    ck_pr_store_32(&k->weight, weight);
    KM__FAULT("weight.stored");
    rc = list_publish(e, k->pool, UINT32_MAX);
    if (rc != KM_OK)
        ck_pr_store_32(&k->weight, old);
    else
        count_reconfig(e);
    intent_end(e);
    km__admin_unlock(e);
    return rc;
}

/* ----------------------------------------------------------- set-limits */

/* Carry window w's debt over to new parameters, in units: the key owes as
 * many requests or tokens against the new limit as against the old, a part
 * of a unit counted as a whole one (rounded down, a key that had used all
 * of an old limit of 100 and is raised to 400 was let through 301 more in
 * the same window).  A window that was not limited starts without debt.
 * The debt and the time it is reckoned from are recorded (intent) before
 * the CAS that applies it. */
static void rescale(km__intent *in, km__gcra *g, int w, uint64_t old_T, uint64_t new_T)
{
    uint64_t cur[2], nv[2], now = ck_pr_load_64(&in->resc_now);
    km__gcra_load(g, cur);
    do {
        uint64_t debt = cur[0] > now && old_T ? (cur[0] - now - 1) / old_T + 1 : 0;
        nv[0] = new_T && debt ? now + km__mul_sat(debt, new_T) : 0;
        nv[1] = cur[1]; /* reservations belong to leases still out */
        ck_pr_store_64(&in->resc_debt, debt);
        ck_pr_fence_store();
        ck_pr_store_32(&in->resc_win, (uint32_t)w + 1);
    } while (!km__gcra_cas(g, cur, nv)); /* the pair's one CAS (src/gcra.h) */
}

/* A writer died carrying window w over, after recording its debt: its CAS
 * may have happened.  Its target is resc_now + debt x new_T; releases since
 * only raise tat.  So a tat below the target was not carried over: set the
 * target.  A tat at or above it was, or it was not and the old reckoning
 * owes more (new_T < old_T): keep it, but never more than a full window
 * (tau) ahead where that exceeds the target. */
static void rescale_resume(km__intent *in, km__gcra *g, uint64_t new_T, uint64_t tau, uint64_t now)
{
    uint64_t cur[2], nv[2], debt = ck_pr_load_64(&in->resc_debt);
    uint64_t target = new_T && debt ? ck_pr_load_64(&in->resc_now) + km__mul_sat(debt, new_T) : 0;
    km__gcra_load(g, cur);
    do {
        nv[0] = cur[0] < target ? target : cur[0];
        if (nv[0] > target && nv[0] > now + tau)
            nv[0] = km__max64(target, now + tau);
        if (!new_T)
            nv[0] = 0;
        nv[1] = cur[1];
    } while (!km__gcra_cas(g, cur, nv));
}

/* The intent's limits (set-limits, and set-limits of a model). */
static void intent_limits(km__intent *in, km__limit_cfg lc[KM_WIN_COUNT])
{
    for (int w = 0; w < KM_WIN_COUNT; w++)
        lc[w] = (km__limit_cfg){ck_pr_load_64(&in->limit[w]), ck_pr_load_64(&in->burst[w]),
                                in->mode[w]};
}

static void rescale_set(km_env *e, const km__lset *set, int resume);

/* Write the intent's limits into key k and carry over the debt of every
 * window that the record does not show carried over.  resume: a dead
 * writer's, whose window in progress may have been carried over. */
static void limits_apply(km_env *e, km__key *k, int resume)
{
    km__limit_cfg lc[KM_WIN_COUNT];
    intent_limits(km__intent_of(e), lc);
    km__key_limits_write(k, lc);
    KM__FAULT("limits.params");
    km__lset set = km__key_lset(k);
    rescale_set(e, &set, resume);
}

/* Write the intent's limits of model `model` into key row ki (k): the
 * key's own (own_set non-zero: its model row, then its own_models bit),
 * or the pool's again (the bit cleared); then carry the debt of the
 * model's windows over to the parameters now in force, as limits_apply
 * does for the key's.  Idempotent up to the rescale record: the recovery
 * runs it again. */
static void mlimits_apply(km_env *e, km__key *k, uint32_t ki, int resume)
{
    km__intent *in = km__intent_of(e);
    uint32_t mi = ck_pr_load_32(&in->model), own = in->own_set;
    if (mi >= e->geom.cap_models || k->pool >= e->geom.n_pools)
        return; /* not a record this writer would make */
    km__mwin *mw = &km__mwins(e, ki)[mi];
    uint64_t bits = ck_pr_load_64(&k->own_models);
    if (own) {
        km__limit_cfg lc[KM_WIN_COUNT];
        intent_limits(in, lc);
        km__mwin_limits_write(mw, lc, own);
        KM__FAULT("mlimits.params");
        ck_pr_fence_store(); /* the row's parameters before the bit that selects them */
        bits |= UINT64_C(1) << mi;
    } else {
        bits &= ~(UINT64_C(1) << mi);
    }
    ck_pr_store_64(&k->own_models, bits);
    KM__FAULT("mlimits.bit");
    km__lset set = km__model_lset(e, k, ki, &km__models(e, k->pool)[mi], mi);
    rescale_set(e, &set, resume);
}

/* Carry the debt of every window of `set` (its parameters already the new
 * ones) that the intent does not show carried over. */
static void rescale_set(km_env *e, const km__lset *set, int resume)
{
    km__intent *in = km__intent_of(e);
    uint32_t done = ck_pr_load_32(&in->rescaled), at = ck_pr_load_32(&in->resc_win);
    if (!resume || !at) {
        /* The time every window's debt is reckoned from, once. */
        ck_pr_store_64(&in->resc_now, km__now());
        ck_pr_fence_store();
    }
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        if (done & (1u << w))
            continue;
        int on = (set->mask >> w) & 1;
        uint64_t new_T = on ? set->T[w] : 0;
        if (resume && at == (uint32_t)w + 1)
            rescale_resume(in, &set->win[w], new_T, on ? set->tau[w] : 0, km__now());
        else
            rescale(in, &set->win[w], w, ck_pr_load_64(&in->old_T[w]), new_T);
        KM__FAULT("limits.rescaled");
        done |= 1u << w;
        ck_pr_store_32(&in->rescaled, done); /* after the CAS (a locked op) */
    }
}

KM_EXTERN int km_key_set_limits(km_env *e, int key, const char *limits_json,
                                char *errbuf, size_t errlen)
{
    km__limit_cfg given[KM_WIN_COUNT], lc[KM_WIN_COUNT];
    uint32_t set;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !limits_json)
        return KM_EINVAL;
    int rc = km__config_parse_limits(limits_json, given, &set, errbuf, errlen);
    if (rc != KM_OK)
        return rc;
    if ((rc = admin_lock_key(e, key)) != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    km__intent *in = km__intent_of(e);
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        int had = (k->win_mask >> w) & 1;
        if (set & (1u << w))
            lc[w] = given[w];
        else
            lc[w] = (km__limit_cfg){had ? k->limit[w] : 0, had ? k->burst[w] : 0,
                                    had ? k->mode[w] : KM_MODE_TOKEN_BUCKET};
        /* Details of the intent (published by intent_begin's op store). */
        ck_pr_store_64(&in->old_T[w], had ? k->emission_ns[w] : 0);
        ck_pr_store_64(&in->limit[w], lc[w].limit);
        ck_pr_store_64(&in->burst[w], lc[w].burst);
        ck_pr_store_8(&in->mode[w], (uint8_t)lc[w].mode);
    }
    intent_begin(e, KM__OP_LIMITS, key, k->pool);
    /* Acquirers skip the key from here; the grace period lets those that
     * read the old parameters finish.  The exchange is a full barrier. */
    ck_pr_fas_32(&k->updating, 1);
    KM__FAULT("limits.updating");
    rc = km__epoch_sync(&e->seg, km__admin_timeout(e));
    if (rc == KM_OK) {
        KM__FAULT("limits.synced");
        intent_step(e, KM__STEP_SYNCED);
        limits_apply(e, k, 0);
        count_reconfig(e);
    }
    /* New parameters before the flag that lets acquirers back in. */
    ck_pr_fence_store();
    ck_pr_store_32(&k->updating, 0);
    KM__FAULT("limits.cleared");
    km__wake_pool(e, k->pool); /* a raised limit may admit sleepers */
    intent_end(e);
    km__admin_unlock(e);
    return rc;
}

/* ------------------------------------------------- set-limits of a model */

/* Window w of a limit set as a configuration limit (none: limit 0). */
static km__limit_cfg window_cfg(uint32_t mask, const uint64_t *limit, const uint64_t *burst,
                                const uint8_t *mode, int w)
{
    if (!((mask >> w) & 1))
        return (km__limit_cfg){0, 0, KM_MODE_TOKEN_BUCKET};
    return (km__limit_cfg){limit[w], burst[w], mode[w]};
}

KM_EXTERN int km_key_set_model_limits(km_env *e, int key, const char *model,
                                      const char *limits_json, char *errbuf, size_t errlen)
{
    km__limit_cfg given[KM_WIN_COUNT];
    uint32_t set;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !model || !limits_json)
        return KM_EINVAL;
    int rc = km__config_parse_limits(limits_json, given, &set, errbuf, errlen);
    if (rc != KM_OK)
        return rc;
    if ((rc = admin_lock_key(e, key)) != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    const km__pool *pool = &km__pools(e)[k->pool];
    uint32_t n = (uint32_t)km__min64(pool->n_models, e->geom.cap_models), mi = 0;
    const km__model *mds = km__models(e, k->pool);
    while (mi < n && strncmp(mds[mi].name, model, KM_ID_MAX + 1))
        mi++;
    if (mi == n || pool->model_mode != KM_MODELS_PER_MODEL) {
        if (errbuf && errlen)
            snprintf(errbuf, errlen, mi == n ? "pool \"%.*s\" lists no model \"%.*s\""
                                             : "pool \"%.*s\" has no per-model limits "
                                               "(\"model_limits\": \"per_model\"), so no key "
                                               "of it has its own for \"%.*s\"",
                     KM_ID_MAX, pool->name, KM_ID_MAX, model);
        km__admin_unlock(e);
        return mi == n ? KM_ENOMODEL : KM_ECONFIG;
    }
    const km__model *md = &mds[mi];
    const km__mwin *mw = &km__mwins(e, (uint32_t)key)[mi];
    km__intent *in = km__intent_of(e);
    /* What applies now: the key's own set, or the pool's model. */
    km__lset cur = km__model_lset(e, k, (uint32_t)key, md, mi);
    uint32_t own = (k->own_models >> mi) & 1 ? mw->own_set : 0;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        /* What the pool's model gives, and what the key keeps of its own. */
        km__limit_cfg pl = window_cfg(md->win_mask, md->limit, md->burst, md->mode, w), lc;
        if (set & (1u << w)) { /* named: the key's own; null: the pool's again */
            own = given[w].limit ? own | 1u << w : own & ~(1u << w);
            lc = given[w].limit ? given[w] : pl;
        } else {
            lc = (own >> w) & 1 ? window_cfg(mw->win_mask, mw->limit, mw->burst, mw->mode, w) : pl;
        }
        /* Details of the intent (published by intent_begin's op store). */
        ck_pr_store_64(&in->old_T[w], (cur.mask >> w) & 1 ? cur.T[w] : 0);
        ck_pr_store_64(&in->limit[w], lc.limit);
        ck_pr_store_64(&in->burst[w], lc.burst);
        ck_pr_store_8(&in->mode[w], (uint8_t)lc.mode);
    }
    ck_pr_store_8(&in->own_set, (uint8_t)own);
    ck_pr_store_32(&in->model, mi);
    intent_begin(e, KM__OP_MLIMITS, (uint32_t)key, k->pool);
    /* As km_key_set_limits: acquirers skip the key while its parameters
     * change, and a grace period lets those that read the old ones finish
     * (the exchange is a full barrier). */
    ck_pr_fas_32(&k->updating, 1);
    KM__FAULT("mlimits.updating");
    rc = km__epoch_sync(&e->seg, km__admin_timeout(e));
    if (rc == KM_OK) {
        KM__FAULT("mlimits.synced");
        intent_step(e, KM__STEP_SYNCED);
        mlimits_apply(e, k, (uint32_t)key, 0);
        count_reconfig(e);
    }
    ck_pr_fence_store(); /* new parameters before the flag that lets acquirers back in */
    ck_pr_store_32(&k->updating, 0);
    KM__FAULT("mlimits.cleared");
    km__wake_pool(e, k->pool); /* a raised limit may admit sleepers */
    intent_end(e);
    km__admin_unlock(e);
    return rc;
}

KM_EXTERN int km_set_admin_timeout(km_env *e, uint32_t timeout_ms)
{
    if (!e)
        return KM_EINVAL;
    ck_pr_store_32(&e->admin_timeout_ms, timeout_ms); /* relaxed; see struct km_env */
    return KM_OK;
}

/* ------------------------------------------------------- enable, disable */

/* The operator's state change (idempotent: the recovery does it again). */
static void state_apply(km_env *e, km__key *k, int state)
{
    /* Never out of FREE or REMOVED: those rows belong to reconfiguration. */
    const uint32_t gone = (1u << KM__ST_FREE) | (1u << KM__ST_REMOVED);
    if (state == KM_KEY_ACTIVE) {
        /* Health first, then the state that lets acquirers in. */
        ck_pr_store_32(&k->consec_fail, 0);
        ck_pr_store_32(&k->consec_429, 0);
        ck_pr_store_64(&k->cooldown_until, 0);
        KM__FAULT("state.health");
        ck_pr_fence_store();
        km__state_to(k, ~gone & ~(1u << KM__ST_ACTIVE), KM__ST_ACTIVE);
        KM__FAULT("state.active");
        if (k->pool < e->geom.n_pools)
            km__wake(e, &km__pools(e)[k->pool]);
    } else {
        km__state_to(k, ~gone, KM__ST_DISABLED);
        KM__FAULT("state.disabled");
    }
}

KM_EXTERN int km_key_set_state(km_env *e, int key, int state)
{
    return km__key_set_state(e, key, state, 1);
}

int km__key_set_state(km_env *e, int key, int state, int note)
{
    if (!e || (state != KM_KEY_ACTIVE && state != KM_KEY_DISABLED))
        return KM_EINVAL;
    /* Under the admin lock: the change is recorded, so a caller killed
     * half-way (health cleared, state not yet changed) is finished by
     * whoever finds it. */
    int rc = admin_lock_key(e, key);
    if (rc != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    intent_begin(e, state == KM_KEY_ACTIVE ? KM__OP_ENABLE : KM__OP_DISABLE, key, k->pool);
    intent_step(e, KM__STEP_PUBLISH);
    state_apply(e, k, state);
    if (note) /* an operator's change here: the fleet agent passes it on */
        km__fleet_health_note(e, k, state == KM_KEY_ACTIVE ? KM_FLEET_EV_ENABLE
                                                           : KM_FLEET_EV_DISABLE);
    intent_end(e);
    km__admin_unlock(e);
    return KM_OK;
}

/* ---------------------------------------------------------------- pools */

/* Is row ki a key of pool p (any state but FREE; live: not REMOVED)? */
static int key_of_pool(km_env *e, uint32_t ki, uint32_t p, int live)
{
    const km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state);
    return k->pool == p && st != KM__ST_FREE && (!live || st < KM__ST_FREE);
}

/* Lease slots held on the keys of pool p (removed keys' included). */
static uint32_t pool_leases(km_env *e, uint32_t p)
{
    uint32_t n = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        if (!key_of_pool(e, ki, p, 0))
            continue;
        const km__lease *ls = km__leases(e, ki);
        for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
            n += ck_pr_load_64(&ls[s].owner) != 0;
    }
    return n;
}

/* May pool row q be written for a new pool?  FREE; or REMOVED with every
 * key row that names it reusable (row_reusable) and a grace period past
 * since its removal (flip_epoch), so that no acquire still reads its
 * settings.  *waiting: a removed row that a grace period, or its leases
 * coming back, may free. */
static int pool_row_reusable(km_env *e, uint32_t q, const uint8_t *listed, int *waiting,
                             int *lingering)
{
    const km__pool *pl = &km__pools(e)[q];
    uint32_t st = ck_pr_load_32(&pl->state);
    if (st == KM__PST_FREE)
        return 1;
    if (st != KM__PST_REMOVED)
        return 0;
    *waiting = 1;
    if (ck_pr_load_64(&pl->flip_epoch) >= ck_pr_load_64(&e->seg.hdr->synced))
        return 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        if (key_of_pool(e, ki, q, 0) && !row_reusable(e, ki, listed, lingering))
            return 0;
    return 1;
}

/* Undo a pool add that did not reach LIVE: its key rows (unreachable: no
 * live pool lists them) back to FREE, the row FREE. */
static void pool_add_undo(km_env *e, uint32_t p)
{
    km__pool *pl = &km__pools(e)[p];
    if (ck_pr_load_32(&pl->state) != KM__PST_ADDING)
        return; /* LIVE: done; FREE or REMOVED: nothing written yet */
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        if (key_of_pool(e, ki, p, 0)) {
            row_free(e, ki);
            KM__FAULT("recover.pooladd.row");
        }
    /* Its lists named those rows: empty (nobody reads a FREE pool's). */
    ck_pr_store_32(&pl->view[0].n_keys, 0);
    ck_pr_store_32(&pl->view[1].n_keys, 0);
    ck_pr_store_32(&pl->state, KM__PST_FREE);
    KM__FAULT("recover.pooladd.undone");
}

KM_EXTERN int km_pool_add(km_env *e, const char *pool_json, char *errbuf, size_t errlen)
{
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !pool_json)
        return KM_EINVAL;
    if (e->seg.ro)
        return KM_EREADONLY;
    km_config *cfg = NULL;
    uint8_t *listed = NULL;
    uint32_t *rows = NULL, p = UINT32_MAX, nk = 0;
    int rc = km__config_parse_pool(pool_json, &e->geom, &cfg, errbuf, errlen);
    if (rc != KM_OK)
        return rc;
    const km__pool_cfg *pc = &cfg->pools[0];
    if (!(listed = malloc(e->geom.cap_keys)) || !(rows = malloc((size_t)pc->n_keys * sizeof *rows))) {
        rc = KM_ENOMEM;
        goto out;
    }
    if ((rc = km__admin_lock(e)) != KM_OK)
        goto out;
    km__pool *pools = km__pools(e);
    km__key *keys = km__keys(e);
    for (uint32_t q = 0; q < e->geom.cap_pools; q++) {
        uint32_t st = ck_pr_load_32(&pools[q].state);
        if ((st == KM__PST_LIVE || st == KM__PST_REMOVING) &&
            strncmp(pools[q].name, pc->name, KM_ID_MAX + 1) == 0) {
            rc = KM_ECONFIG;
            if (errbuf && errlen)
                snprintf(errbuf, errlen, "pool \"%s\" already exists (remove it first, or change it with set-pool)",
                         pc->name);
            goto unlock;
        }
    }
    for (uint32_t j = 0; j < pc->n_keys; j++)
        if ((rc = secret_taken(e, &cfg->keys[j], errbuf, errlen)) != KM_OK)
            goto unlock;
    if ((rc = km__tz_bind_config(e, cfg, errbuf, errlen)) != KM_OK) /* zones: src/tz.c */
        goto unlock;
    /* From here the segment may change (lists rebuilt, epochs): recorded.
     * The pool row is named in the intent once chosen. */
    intent_begin(e, KM__OP_POOL_ADD, UINT32_MAX, UINT32_MAX);
    for (int attempt = 0;; attempt++) {
        int waiting = 0, lingering = 0;
        mark_listed(e, listed);
        p = UINT32_MAX;
        for (uint32_t q = 0; q < e->geom.cap_pools && p == UINT32_MAX; q++)
            if (pool_row_reusable(e, q, listed, &waiting, &lingering))
                p = q;
        nk = 0;
        for (uint32_t i = 0; i < e->geom.cap_keys && nk < pc->n_keys; i++) {
            if (row_reusable(e, i, listed, &lingering))
                rows[nk++] = i;
            else if (ck_pr_load_32(&keys[i].state) == KM__ST_REMOVED)
                waiting = 1;
        }
        if (p != UINT32_MAX && nk == pc->n_keys)
            break;
        if (attempt == 0 && (waiting || lingering)) {
            /* Removed rows that a list rebuild and a grace period may free
             * (as in km_key_add). */
            for (uint32_t i = 0; lingering && i < e->geom.cap_keys; i++)
                if (listed[i] && ck_pr_load_32(&keys[i].state) == KM__ST_REMOVED &&
                    keys[i].pool < e->geom.cap_pools)
                    (void)list_publish(e, keys[i].pool, UINT32_MAX);
            if ((rc = km__epoch_sync(&e->seg, km__admin_timeout(e))) != KM_OK)
                goto end;
            KM__FAULT("pooladd.synced");
            continue;
        }
        rc = KM_EFULL;
        if (errbuf && errlen && p == UINT32_MAX)
            snprintf(errbuf, errlen,
                     "no free pool row: capacity.pools is %u, and each row holds a pool or a "
                     "removed pool whose leases are not all back (capacity is fixed at creation)",
                     e->geom.cap_pools);
        else if (errbuf && errlen)
            snprintf(errbuf, errlen,
                     "not enough free key rows: pool \"%s\" has %u keys, %u rows are free "
                     "(capacity.keys is %u; a removed key's row frees once its leases are back)",
                     pc->name, pc->n_keys, nk, e->geom.cap_keys);
        goto end;
    }

    km__pool *pl = &pools[p];
    ck_pr_store_32(&km__intent_of(e)->pool, p);
    intent_step(e, KM__STEP_ROW);
    /* A reused row: its removed keys' rows, unreachable and reusable, back
     * to FREE first, so that every key row naming p is this add's from
     * ADDING on (pool_add_undo). */
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        if (key_of_pool(e, ki, p, 0))
            row_free(e, ki);
    KM__FAULT("pooladd.freed");
    ck_pr_store_32(&pl->state, KM__PST_ADDING);
    KM__FAULT("pooladd.adding");
    if (p >= ck_pr_load_32(&e->seg.hdr->n_pools))
        ck_pr_store_32(&e->seg.hdr->n_pools, p + 1);
    km__pool_write(e, p, pc);
    ck_pr_store_64(&pl->reserve, 0); /* a removed pool's waiter left with KM_ENOPOOL */
    KM__FAULT("pooladd.written");
    for (uint32_t j = 0; j < nk; j++) {
        km__key *k = &keys[rows[j]];
        ck_pr_store_32(&k->state, KM__ST_FREE);
        row_clear(e, rows[j]);
        km__key_write(e, k, p, &cfg->keys[j]);
        km__key_own_write(e, k, rows[j], &cfg->keys[j], pc->n_models);
        ck_pr_store_32(&k->gen, ck_pr_load_32(&k->gen) + 1);
        ck_pr_fence_store(); /* the row before its state */
        ck_pr_store_32(&k->state, KM__ST_ACTIVE);
        KM__FAULT("pooladd.key");
    }
    /* No acquire reads the pool (ADDING): its current list is written in
     * place. */
    if ((rc = list_fill(e, p, ck_pr_load_32(&pl->cur) & 1, rows, nk)) != KM_OK) {
        pool_add_undo(e, p);
        count_rows(e);
        goto end;
    }
    ck_pr_store_64(&pl->flip_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
    count_rows(e);
    KM__FAULT("pooladd.filled");
    intent_step(e, KM__STEP_PUBLISH);
    /* The commit point: every row, list and setting above before the state
     * that lets acquirers and km_pool_find in (pairs with their loads of
     * state; see km__pool_live). */
    ck_pr_fence_store();
    ck_pr_store_32(&pl->state, KM__PST_LIVE);
    KM__FAULT("pooladd.live");
    ck_pr_fence_memory(); /* LIVE before the call returns */
    count_reconfig(e);
    rc = (int)p;
end:
    intent_end(e);
unlock:
    km__admin_unlock(e);
out:
    free(rows);
    free(listed);
    km_config_free(cfg);
    return rc;
}

/* A pool removed for good: REMOVED, its keys retired, and their generation
 * moved on so that a lease still out (KM_POOL_FORCE) is released as stale
 * (counted, nothing settled: its row is reused only once it is back).
 * Idempotent: the recovery of a dead remover does it again. */
static void pool_retire(km_env *e, uint32_t p)
{
    km__pool *pl = &km__pools(e)[p];
    km__key *keys = km__keys(e);
    ck_pr_fas_32(&pl->state, KM__PST_REMOVED); /* a full barrier */
    KM__FAULT("poolrm.removed");
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        if (!key_of_pool(e, ki, p, 0))
            continue;
        if (ck_pr_load_32(&keys[ki].state) < KM__ST_FREE)
            key_retire(e, &keys[ki]);
        else /* removed before, or by a writer killed before its epoch: later is safe */
            ck_pr_store_64(&keys[ki].retire_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
        ck_pr_store_32(&keys[ki].gen, ck_pr_load_32(&keys[ki].gen) + 1);
        KM__FAULT("poolrm.key");
    }
    ck_pr_fence_memory(); /* the removal before the epoch of its reuse grace */
    ck_pr_store_64(&pl->flip_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
}

KM_EXTERN int km_pool_remove(km_env *e, int pool, uint32_t timeout_ms, unsigned flags)
{
    if (!e || (flags & ~KM_POOL_FORCE))
        return KM_EINVAL;
    int rc = km__admin_lock(e);
    if (rc != KM_OK)
        return rc;
    if (!km__pool_live(e, pool)) {
        km__admin_unlock(e);
        return KM_ENOPOOL;
    }
    uint32_t p = (uint32_t)pool;
    km__pool *pl = &km__pools(e)[p];
    intent_begin(e, KM__OP_POOL_REMOVE, UINT32_MAX, p);
    intent_step(e, KM__STEP_PUBLISH);
    /* Acquirers refused from here (the exchange is a full barrier); the
     * grace period lets those that read LIVE finish: after it every lease
     * of the pool is in a slot, where it is counted. */
    ck_pr_fas_32(&pl->state, KM__PST_REMOVING);
    KM__FAULT("poolrm.removing");
    km__wake_pool(e, p); /* sleepers of km_acquire_wait: KM_ENOPOOL */
    rc = km__epoch_sync(&e->seg, km__admin_timeout(e));
    if (rc == KM_OK) {
        uint64_t end = km__now() + (uint64_t)timeout_ms * KM__NS_PER_MS, reaped = 0;
        uint32_t n;
        while ((n = pool_leases(e, p)) != 0 && km__now() < end) {
            /* Leases of processes that died come back by a reap (which
             * leaves our intent alone: its writer lives), every 100 ms. */
            if (km__now() - reaped >= 100 * KM__NS_PER_MS) {
                km__reap_dead(e, NULL, 0);
                reaped = km__now();
                continue;
            }
            struct timespec ts = {0, 1000 * 1000}; /* 1 ms */
            nanosleep(&ts, NULL);
        }
        if (n && !(flags & KM_POOL_FORCE))
            rc = KM_EBUSY;
    }
    if (rc != KM_OK) {
        /* Not removed: handed out again. */
        ck_pr_fas_32(&pl->state, KM__PST_LIVE);
        KM__FAULT("poolrm.undone");
        km__wake_pool(e, p);
    } else {
        intent_step(e, KM__STEP_SYNCED); /* the commit point */
        pool_retire(e, p);
        /* An empty list (a stalled reader: the keys stay listed, skipped,
         * until a later rebuild, as for km_key_remove). */
        (void)list_publish(e, p, UINT32_MAX);
        count_reconfig(e);
    }
    intent_end(e);
    km__admin_unlock(e);
    return rc;
}

/* The staged settings of pool p (km__pool.stage) into the pool.
 * Idempotent: the recovery of a dead writer does it again. */
static void stage_apply(const km_env *e, km__pool *pl)
{
    const km__pstage *s = &pl->stage;
    uint32_t set = s->set;
    if (set & KM__PSET_STRATEGY)
        ck_pr_store_32(&pl->strategy, s->strategy);
    if (set & KM__PSET_COOLDOWN)
        ck_pr_store_32(&pl->cooldown_s, s->cooldown_s);
    if (set & KM__PSET_MAX_COOLDOWN)
        ck_pr_store_32(&pl->max_cooldown_s, s->max_cooldown_s);
    if (set & KM__PSET_MAX_FAILURES)
        ck_pr_store_32(&pl->max_failures, s->max_failures);
    KM__FAULT("poolset.health");
    if (set & KM__PSET_BUDGET) {
        ck_pr_store_32(&pl->budget_hard, s->budget_hard);
        ck_pr_store_32(&pl->budget_period, s->budget_period);
        ck_pr_store_32((uint32_t *)&pl->budget_tz_min, (uint32_t)s->budget_tz_min);
        /* The current period's end by the new calendar; the spend so far
         * stays.  A period already over is left to its roll (which reads
         * the new calendar): the spend of the ended period goes to prev. */
        uint64_t wall = km__wall_ns();
        if (ck_pr_load_64(&pl->spend.end_ns) > wall)
            ck_pr_store_64(&pl->spend.end_ns,
                           km__period_end(s->budget_period, s->budget_tz_min, e->tzt, wall));
        ck_pr_store_64(&pl->budget_microusd, s->budget_microusd);
        KM__FAULT("poolset.budget");
    }
    /* The settings before the call returns: an acquire or release that
     * starts afterwards loads the new ones. */
    ck_pr_fence_memory();
}

/* Stop acquirers using the keys of pool p (their updating flags), or let
 * them back in (the parameters written before, release). */
static void pool_flags(km_env *e, uint32_t p, uint32_t on)
{
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        if (key_of_pool(e, ki, p, 1)) {
            if (on) {
                ck_pr_fas_32(&km__keys(e)[ki].updating, 1); /* a full barrier */
            } else {
                ck_pr_fence_store();
                ck_pr_store_32(&km__keys(e)[ki].updating, 0);
            }
        }
}

/* New limits of pool p, as the intent records them: for model index + 1
 * in->cur, that model's limits (in->limit...) on every key, each key's
 * debt on the model carried over from the model's old parameters
 * (in->old_T); for in->cur 0, the windows in->old_weight of every key and
 * of the pool's defaults.  Keys are done in row order; a key is done once
 * its updating flag is clear.  The key in progress is in->key: before it
 * moves there, what the key's rescale needs (its old emission intervals
 * and, for the keys' own windows, its new limits: the given windows and
 * its own others) is recorded, so a recovery (resume) finishes that key
 * from the record and every key after it afresh. */
static void pool_limits_apply(km_env *e, uint32_t p, int resume)
{
    km__intent *in = km__intent_of(e);
    km__pool *pl = &km__pools(e)[p];
    km__key *keys = km__keys(e);
    uint32_t model = ck_pr_load_32(&in->cur), set = ck_pr_load_32(&in->old_weight);
    km__model *md = model && model <= e->geom.cap_models ? &km__models(e, p)[model - 1] : NULL;
    if (model && !md)
        return; /* not a record of ours */
    if (md) {
        km__limit_cfg lc[KM_WIN_COUNT];
        for (int w = 0; w < KM_WIN_COUNT; w++)
            lc[w] = (km__limit_cfg){ck_pr_load_64(&in->limit[w]), ck_pr_load_64(&in->burst[w]),
                                    in->mode[w]};
        km__model_limits_write(md, lc);
    } else {
        /* The given windows hold the given limits whichever key's record
         * the intent holds (the others are that key's own). */
        for (int w = 0; w < KM_WIN_COUNT; w++)
            if (set & (1u << w)) {
                pl->def_limit[w] = ck_pr_load_64(&in->limit[w]);
                pl->def_burst[w] = ck_pr_load_64(&in->burst[w]);
                pl->def_mode[w] = in->mode[w];
            }
    }
    KM__FAULT("poollimits.params");
    uint32_t at = resume ? ck_pr_load_32(&in->key) : UINT32_MAX;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        km__key *k = &keys[ki];
        if (!key_of_pool(e, ki, p, 1) || !ck_pr_load_32(&k->updating))
            continue;
        /* A key with its own limits of the model (a model row of its own:
         * km_key_set_model_limits, keys[i].models) keeps the windows it
         * names and takes the pool's new limits in the others, which it
         * inherits (docs/config.md): its row is rewritten, and only those
         * windows' debts are carried over (its own windows' parameters do
         * not change: they are marked carried in the record). */
        km__mwin *own_row = md && (ck_pr_load_64(&k->own_models) >> (model - 1)) & 1
                                ? &km__mwins(e, ki)[model - 1]
                                : NULL;
        if (ki != at) {
            ck_pr_store_32(&in->rescaled, own_row ? own_row->own_set : 0);
            ck_pr_store_32(&in->resc_win, 0);
            for (int w = 0; !md && w < KM_WIN_COUNT; w++) {
                int had = (k->win_mask >> w) & 1;
                ck_pr_store_64(&in->old_T[w], had ? k->emission_ns[w] : 0);
                if (set & (1u << w))
                    continue;
                ck_pr_store_64(&in->limit[w], had ? k->limit[w] : 0);
                ck_pr_store_64(&in->burst[w], had ? k->burst[w] : 0);
                ck_pr_store_8(&in->mode[w], had ? k->mode[w] : (uint8_t)KM_MODE_TOKEN_BUCKET);
            }
            ck_pr_fence_store(); /* the record before the key it is for */
            ck_pr_store_32(&in->key, ki);
            ck_pr_fence_store();
            KM__FAULT("poollimits.key");
        }
        if (own_row) {
            /* Idempotent: the own windows are rewritten with what they
             * hold, the inherited ones with the intent's limits. */
            km__limit_cfg lc[KM_WIN_COUNT];
            for (int w = 0; w < KM_WIN_COUNT; w++)
                lc[w] = (own_row->own_set >> w) & 1
                            ? ((own_row->win_mask >> w) & 1
                                   ? (km__limit_cfg){own_row->limit[w], own_row->burst[w],
                                                     own_row->mode[w]}
                                   : (km__limit_cfg){0, 0, KM_MODE_TOKEN_BUCKET})
                            : (km__limit_cfg){ck_pr_load_64(&in->limit[w]),
                                              ck_pr_load_64(&in->burst[w]), in->mode[w]};
            km__mwin_limits_write(own_row, lc, own_row->own_set);
            KM__FAULT("poollimits.own");
        }
        if (md) {
            km__lset ms = km__model_lset(e, k, ki, md, model - 1);
            rescale_set(e, &ms, ki == at);
        } else {
            limits_apply(e, k, ki == at);
        }
        /* The key's new parameters and debts before its flag (release). */
        ck_pr_fence_store();
        ck_pr_store_32(&k->updating, 0);
        KM__FAULT("poollimits.done");
    }
}

/* Pool p's limits: of its model index + 1 `model`, or of its keys' own
 * windows `set` (model 0); lc the new limits. */
static int pool_limits(km_env *e, uint32_t p, uint32_t model, const km__limit_cfg *lc, uint32_t set)
{
    km__intent *in = km__intent_of(e);
    const km__model *md = model ? &km__models(e, p)[model - 1] : NULL;
    /* Details of the intent (published by intent_begin's op store). */
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        ck_pr_store_64(&in->limit[w], lc[w].limit);
        ck_pr_store_64(&in->burst[w], lc[w].burst);
        ck_pr_store_8(&in->mode[w], (uint8_t)lc[w].mode);
        ck_pr_store_64(&in->old_T[w], md && (md->win_mask >> w) & 1 ? md->emission_ns[w] : 0);
    }
    ck_pr_store_32(&in->cur, model);
    ck_pr_store_32(&in->old_weight, set);
    intent_begin(e, KM__OP_POOL_LIMITS, UINT32_MAX, p);
    /* Acquirers skip the pool's keys from here; the grace period lets
     * those that read the old parameters finish. */
    pool_flags(e, p, 1);
    KM__FAULT("poollimits.updating");
    int rc = km__epoch_sync(&e->seg, km__admin_timeout(e));
    if (rc == KM_OK) {
        KM__FAULT("poollimits.synced");
        intent_step(e, KM__STEP_SYNCED);
        pool_limits_apply(e, p, 0);
        count_reconfig(e);
    } else {
        pool_flags(e, p, 0);
    }
    km__wake_pool(e, p); /* raised limits may admit sleepers */
    intent_end(e);
    return rc;
}

/* Append model mc to pool p (a row past n_models, which no lookup reads,
 * then n_models raised: the commit point). */
static void model_append(km_env *e, uint32_t p, const km__model_cfg *mc)
{
    km__pool *pl = &km__pools(e)[p];
    uint32_t n = ck_pr_load_32(&pl->n_models);
    km__model_write(&km__models(e, p)[n], mc);
    ck_pr_store_32(&km__intent_of(e)->cur, n);
    intent_begin(e, KM__OP_MODEL_ADD, UINT32_MAX, p);
    intent_step(e, KM__STEP_PUBLISH);
    /* The keys' rows of the new model: never used in a pool with a models
     * list, cleared all the same (nobody reads them before n_models). */
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        if (key_of_pool(e, ki, p, 0))
            memset(&km__mwins(e, ki)[n], 0, sizeof(km__mwin));
    KM__FAULT("modeladd.rows");
    /* The row before the count that makes it found (pairs with the load of
     * n_models in model_find, src/acquire.c). */
    ck_pr_fence_store();
    ck_pr_store_32(&pl->n_models, n + 1);
    KM__FAULT("modeladd.published");
    count_reconfig(e);
    intent_end(e);
}

KM_EXTERN int km_pool_set(km_env *e, int pool, const char *settings_json, char *errbuf,
                          size_t errlen)
{
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !settings_json)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    uint32_t p = (uint32_t)pool;
    km__pool *pl = &km__pools(e)[p];
    km__pool_setcfg *sc = malloc(sizeof *sc);
    int idx[KM_MODELS_MAX], rc;
    if (!sc)
        return KM_ENOMEM;
    if ((rc = km__admin_lock(e)) != KM_OK)
        goto out;
    if (!km__pool_live(e, pool)) {
        rc = KM_ENOPOOL;
        goto unlock;
    }
    /* Parsed under the lock: the settings it does not name are taken from
     * the pool row (cooldowns, failure threshold, model_limits), which
     * another writer could change, or a remove and an add replace, between
     * a parse before the lock and the lock (as km_key_add re-parses). */
    if ((rc = km__config_parse_pool_set(settings_json, pl, e->geom.cap_inflight, sc, errbuf,
                                        errlen)) != KM_OK)
        goto unlock;
    /* Every refusal before the first change. */
    uint32_t n_models = ck_pr_load_32(&pl->n_models), added = 0;
    for (uint32_t i = 0; i < sc->n_models; i++) {
        idx[i] = -1;
        for (uint32_t m = 0; m < n_models && m < e->geom.cap_models; m++)
            if (strncmp(km__models(e, p)[m].name, sc->models[i].name, KM_ID_MAX + 1) == 0)
                idx[i] = (int)m;
        added += idx[i] < 0;
    }
    if (added && n_models == 0) {
        rc = KM_ECONFIG;
        if (errbuf && errlen)
            snprintf(errbuf, errlen,
                     "models: pool \"%.*s\" has no models list (it takes any model name); a "
                     "list cannot be given to it live, only models appended to a list", KM_ID_MAX,
                     pl->name);
        goto unlock;
    }
    if (n_models + added > e->geom.cap_models) {
        rc = KM_EFULL;
        if (errbuf && errlen)
            snprintf(errbuf, errlen,
                     "models: %u models and %u new ones exceed capacity.models (%u, fixed at "
                     "creation)", n_models, added, e->geom.cap_models);
        goto unlock;
    }
    if ((sc->stage.set & KM__PSET_BUDGET) &&
        (rc = km__tz_bind(e, sc->budget_tz, sc->stage.budget_tz_min, &sc->stage.budget_tz_min,
                          errbuf, errlen)) != KM_OK)
        goto unlock;
    if (sc->stage.set) {
        pl->stage = sc->stage; /* read by the recovery once op is stored */
        intent_begin(e, KM__OP_POOL_SET, UINT32_MAX, p);
        intent_step(e, KM__STEP_PUBLISH);
        stage_apply(e, pl);
        count_reconfig(e);
        intent_end(e);
    }
    for (uint32_t i = 0; i < sc->n_models && rc == KM_OK; i++) {
        if (idx[i] < 0)
            model_append(e, p, &sc->models[i]);
        else if (pl->model_mode == KM_MODELS_PER_MODEL)
            rc = pool_limits(e, p, (uint32_t)idx[i] + 1, sc->models[i].limits,
                             (1u << KM_WIN_COUNT) - 1);
    }
    if (rc == KM_OK && sc->win_set)
        rc = pool_limits(e, p, 0, sc->limits, sc->win_set);
unlock:
    km__admin_unlock(e);
out:
    free(sc);
    return rc;
}

/* ------------------------------------------------------------- recovery */

/* Finish or undo the intent of a dead writer (the lock is held; see the top
 * of this file).  Never waits. */
static void recover(km_env *e)
{
    km__intent *in = km__intent_of(e);
    uint32_t op = ck_pr_load_32(&in->op);
    ck_pr_fence_load(); /* op before the details it publishes */
    uint32_t step = ck_pr_load_32(&in->step), ki = ck_pr_load_32(&in->key);
    uint32_t p = ck_pr_load_32(&in->pool);
    km__key *k = ki < e->geom.cap_keys ? &km__keys(e)[ki] : NULL;

    /* We are the writer now: a reaper sees a live one and leaves it to us;
     * if we die here too, the next one starts again from the same record. */
    uint32_t pid = (uint32_t)getpid();
    ck_pr_store_64(&in->start_time, km__pid_start_time(pid));
    ck_pr_store_32(&in->pid, pid);
    ck_pr_fence_store();
    KM__FAULT("recover.begun");

    switch (op) {
    case KM__OP_ADD:
        if (step < KM__STEP_ROW || !k || p >= e->geom.n_pools)
            break; /* no row chosen yet */
        if (!in_list(e, p, ki)) {
            row_free(e, ki); /* never published: undone */
            KM__FAULT("recover.add.undone");
        }
        break;
    case KM__OP_REMOVE:
        if (k && ck_pr_load_32(&k->state) < KM__ST_FREE)
            key_retire(e, k);
        else if (k && ck_pr_load_32(&k->state) == KM__ST_REMOVED)
            /* The retire epoch may not have been stored: take it again. */
            ck_pr_store_64(&k->retire_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
        break;
    case KM__OP_WEIGHT:
        if (k && p < e->geom.n_pools &&
            ck_pr_load_32(&km__pools(e)[p].cur) == ck_pr_load_32(&in->cur))
            ck_pr_store_32(&k->weight, ck_pr_load_32(&in->old_weight)); /* not published */
        break;
    case KM__OP_LIMITS:
        if (!k)
            break;
        if (step >= KM__STEP_SYNCED)
            limits_apply(e, k, 1);
        ck_pr_fence_store(); /* the parameters before the flag */
        ck_pr_store_32(&k->updating, 0);
        KM__FAULT("recover.limits.cleared");
        break;
    case KM__OP_MLIMITS: /* as set-limits, on the key's model row */
        if (!k)
            break;
        if (step >= KM__STEP_SYNCED)
            mlimits_apply(e, k, ki, 1);
        ck_pr_fence_store(); /* the parameters before the flag */
        ck_pr_store_32(&k->updating, 0);
        KM__FAULT("recover.mlimits.cleared");
        break;
    case KM__OP_ENABLE:
    case KM__OP_DISABLE:
        if (k && ck_pr_load_32(&k->state) < KM__ST_FREE)
            state_apply(e, k, op == KM__OP_ENABLE ? KM_KEY_ACTIVE : KM_KEY_DISABLED);
        break;
    case KM__OP_POOL_ADD:
        if (p < e->geom.cap_pools) /* else no row chosen yet */
            pool_add_undo(e, p);
        break;
    case KM__OP_POOL_REMOVE:
        if (p >= e->geom.cap_pools)
            break;
        if (step >= KM__STEP_SYNCED) {
            pool_retire(e, p); /* past the commit point: finished */
        } else if (ck_pr_load_32(&km__pools(e)[p].state) == KM__PST_REMOVING) {
            ck_pr_fas_32(&km__pools(e)[p].state, KM__PST_LIVE); /* undone */
            KM__FAULT("recover.poolrm.undone");
        }
        break;
    case KM__OP_POOL_SET:
        if (p < e->geom.cap_pools && step >= KM__STEP_PUBLISH)
            stage_apply(e, &km__pools(e)[p]);
        break;
    case KM__OP_POOL_LIMITS:
        if (p >= e->geom.cap_pools)
            break;
        if (step >= KM__STEP_SYNCED)
            pool_limits_apply(e, p, 1);
        else
            pool_flags(e, p, 0); /* nothing written: the old limits stand */
        break;
    case KM__OP_MODEL_ADD: /* n_models raised (done) or not (unreachable) */
        break;
    default: /* not an operation of ours: nothing to redo */
        break;
    }
    /* Every pool's spare list waits for a grace period from now: a writer
     * killed between its flip and flip_epoch left that epoch too old. */
    ck_pr_fence_memory();
    uint64_t now_epoch = ck_pr_load_64(&e->seg.hdr->epoch);
    for (uint32_t q = 0; q < e->geom.n_pools; q++)
        ck_pr_store_64(&km__pools(e)[q].flip_epoch, now_epoch);
    count_rows(e);
    KM__FAULT("recover.counted");
    ck_pr_store_64(&in->recovered, ck_pr_load_64(&in->recovered) + 1);
    for (uint32_t q = 0; q < e->geom.n_pools; q++)
        km__wake_pool(e, q); /* a key back, or a flag cleared */
    intent_end(e);
}

void km__admin_recover_dead(km_env *e)
{
    km__intent *in = km__intent_of(e);
    if (e->seg.ro || ck_pr_load_32(&in->op) == KM__OP_NONE)
        return;
    ck_pr_fence_load(); /* op before the writer it names */
    /* A live writer (another thread of ours included) finishes its own. */
    if (km__pid_alive(ck_pr_load_32(&in->pid), ck_pr_load_64(&in->start_time)))
        return;
    /* Never wait here (km_acquire may be the caller): a holder of the lock
     * resolves the intent itself when it finds it. */
    int rc = pthread_mutex_trylock(admin_mutex(e));
    if (rc == EBUSY)
        rc = admin_break(e);
    if (admin_locked(e, rc) == 0)
        km__admin_unlock(e);
}

int km__admin_intent(km_env *e, km__intent_view *v)
{
    km__intent *in = km__intent_of(e);
    v->op = ck_pr_load_32(&in->op);
    ck_pr_fence_load();
    v->step = ck_pr_load_32(&in->step);
    v->key = ck_pr_load_32(&in->key);
    v->pid = ck_pr_load_32(&in->pid);
    v->recovered = ck_pr_load_64(&in->recovered);
    v->alive = v->op != KM__OP_NONE && km__pid_alive(v->pid, ck_pr_load_64(&in->start_time));
    return v->op;
}
