/*
 * src/reconfig.c - live reconfiguration: add, remove, re-weight keys and
 * change their limits while workers acquire and release.
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
 *                 retire_epoch and none of its lease slots is held.
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
 * A writer that dies holding the lock leaves at worst a spare list half
 * written (not published: `cur` is stored last) or a row half written in
 * state FREE (not reachable).  The next writer's pthread_mutex_lock returns
 * EOWNERDEAD; it marks the lock consistent and carries on, since every
 * operation rebuilds what it writes from published state.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ck_pr.h>

#include "gcra.h"
#include "internal.h"
#include "wait.h"

_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((km__hdr *)0)->admin),
               "the admin lock fits its header line");


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

int km__admin_lock(km_env *e)
{
    /* pthread_mutex_timedlock takes a CLOCK_REALTIME deadline. */
    uint64_t ns = km__wall_ns() + (uint64_t)km__admin_timeout(e) * KM__NS_PER_MS;
    struct timespec ts = {.tv_sec = (time_t)(ns / KM__NS_PER_S), .tv_nsec = (long)(ns % KM__NS_PER_S)};
    int rc = pthread_mutex_timedlock(admin_mutex(e), &ts);
    if (rc == EOWNERDEAD) /* see the top of this file */
        rc = pthread_mutex_consistent(admin_mutex(e));
    if (rc == ETIMEDOUT)
        return KM_EBUSY;
    if (rc != 0) {
        errno = rc;
        return KM_ESYS;
    }
    return KM_OK;
}

void km__admin_unlock(km_env *e) { pthread_mutex_unlock(admin_mutex(e)); }

/* Wait for a grace period unless every reader that could see something
 * retired at `epoch` is already known to have left. */
static int grace(km_env *e, uint64_t epoch)
{
    if (epoch < ck_pr_load_64(&e->seg.hdr->synced))
        return KM_OK;
    return km__epoch_sync(&e->seg, km__admin_timeout(e));
}

/* Publish a new member list for pool p: the current one without keys that
 * are removed, plus `add` (a key index, or UINT32_MAX for none), with
 * running weights and the price order recomputed.  KM_EBUSY if the spare
 * list is still in its grace period and the wait timed out. */
static int list_publish(km_env *e, uint32_t p, uint32_t add)
{
    km__hdr *h = e->seg.hdr;
    km__pool *pool = &km__pools(e)[p];
    km__key *keys = km__keys(e);
    uint32_t b = ck_pr_load_32(&pool->cur) & 1, nb = b ^ 1, n = 0;
    int rc = grace(e, ck_pr_load_64(&pool->flip_epoch));
    if (rc != KM_OK)
        return rc;

    const km__member *src = km__members(e, p, b);
    km__member *dst = km__members(e, p, nb);
    uint32_t sn = (uint32_t)(ck_pr_load_32(&pool->view[b].n_keys) < e->geom.cap_keys
                                 ? ck_pr_load_32(&pool->view[b].n_keys) : e->geom.cap_keys);
    uint32_t *order = malloc(((size_t)sn + 1) * sizeof(uint32_t));
    uint64_t cum = 0;
    if (!order)
        return KM_ENOMEM;
    for (uint32_t i = 0; i <= sn; i++) {
        uint32_t ki = i < sn ? src[i].key : add;
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
    /* The list and its view before `cur` (pairs with the acquire load in
     * acquire_in); then the epoch at which the old list stopped being
     * current, read after the flip (see the top of this file). */
    ck_pr_fence_store();
    ck_pr_store_32(&pool->cur, nb);
    ck_pr_fence_memory();
    ck_pr_store_64(&pool->flip_epoch, ck_pr_load_64(&h->epoch));
    return KM_OK;
}

/* Is row ki free to be written for a new key?  FREE, or REMOVED with its
 * grace period over and no lease slot held. */
static int row_reusable(km_env *e, uint32_t ki)
{
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state);
    if (st == KM__ST_FREE)
        return 1;
    if (st != KM__ST_REMOVED || ck_pr_load_64(&k->retire_epoch) >= ck_pr_load_64(&e->seg.hdr->synced))
        return 0;
    const km__lease *ls = km__leases(e, ki);
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
        if (ck_pr_load_64(&ls[s].owner) != 0)
            return 0;
    return 1;
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
    ck_pr_store_64(&k->spent_microusd, 0);
    ck_pr_store_64(&k->cooldown_until, 0);
    ck_pr_store_32(&k->consec_fail, 0);
    ck_pr_store_32(&k->consec_429, 0);
    ck_pr_store_32(&k->updating, 0);
    ck_pr_store_64(&k->retire_epoch, 0);
    memset(km__mwins(e, ki), 0, (size_t)e->geom.cap_models * sizeof(km__mwin));
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
        km__lease *l = &ls[s];
        ck_pr_store_64(&l->acquired, 0);
        ck_pr_store_64(&l->succeeded, 0);
        ck_pr_store_64(&l->tokens_used, 0);
        ck_pr_store_64(&l->abandoned, 0);
        for (int i = 0; i < KM_OUT_COUNT; i++)
            ck_pr_store_64(&l->outcomes[i], 0);
    }
    explicit_bzero(k->secret, sizeof(k->secret));
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

KM_EXTERN int km_key_add(km_env *e, int pool, const char *key_json, char *errbuf,
                         size_t errlen)
{
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!e || !key_json)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    km__hdr *h = e->seg.hdr;
    uint32_t p = (uint32_t)pool;
    km__pool_defaults pd;
    km__key_cfg kc;
    pool_defaults_of(&km__pools(e)[p], &pd);
    int rc = km__config_parse_key(key_json, &pd, e->geom.cap_inflight, &kc, errbuf, errlen);
    if (rc != KM_OK)
        return rc;
    if ((rc = km__admin_lock(e)) != KM_OK)
        goto out;

    km__key *keys = km__keys(e);
    uint32_t ki = UINT32_MAX;
    int waiting = 0; /* a removed row that a grace period would free */
    for (uint32_t i = 0; i < e->geom.cap_keys; i++) {
        uint32_t st = ck_pr_load_32(&keys[i].state);
        if (st < KM__ST_FREE && keys[i].pool == p &&
            strncmp(keys[i].id, kc.id, KM_ID_MAX + 1) == 0) {
            rc = KM_EKEYEXISTS;
            goto unlock;
        }
    }
    for (int pass = 0; pass < 2 && ki == UINT32_MAX; pass++) {
        for (uint32_t i = 0; i < e->geom.cap_keys && ki == UINT32_MAX; i++) {
            if (row_reusable(e, i))
                ki = i;
            else if (ck_pr_load_32(&keys[i].state) == KM__ST_REMOVED)
                waiting = 1;
        }
        if (ki != UINT32_MAX || !waiting || pass == 1)
            break;
        if ((rc = km__epoch_sync(&e->seg, km__admin_timeout(e))) != KM_OK)
            goto unlock;
    }
    if (ki == UINT32_MAX) {
        rc = KM_EFULL;
        goto unlock;
    }

    km__key *k = &keys[ki];
    int was_free = ck_pr_load_32(&k->state) == KM__ST_FREE;
    ck_pr_store_32(&k->state, KM__ST_FREE); /* not reachable while written */
    row_clear(e, ki);
    km__key_write(e, k, p, &kc);
    ck_pr_store_32(&k->gen, ck_pr_load_32(&k->gen) + 1);
    /* Everything above before the state that lets acquirers in (they reach
     * the row only through the list published next). */
    ck_pr_fence_store();
    ck_pr_store_32(&k->state, KM__ST_ACTIVE);
    if ((rc = list_publish(e, p, ki)) != KM_OK) {
        ck_pr_store_32(&k->state, KM__ST_FREE); /* never reachable: undone */
        explicit_bzero(k->secret, sizeof(k->secret));
        if (!was_free)
            ck_pr_store_32(&h->n_keys, ck_pr_load_32(&h->n_keys) - 1);
        goto unlock;
    }
    if (was_free)
        ck_pr_store_32(&h->n_keys, ck_pr_load_32(&h->n_keys) + 1);
    count_reconfig(e);
    km__wake_pool(e, p); /* a new key may admit sleepers */
    rc = (int)ki;
unlock:
    km__admin_unlock(e);
out:
    explicit_bzero(&kc, sizeof(kc));
    return rc;
}

KM_EXTERN int km_key_remove(km_env *e, int key)
{
    if (!e)
        return KM_EINVAL;
    int rc = admin_lock_key(e, key);
    if (rc != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    /* Health transitions are CASes from live states: none overwrites
     * REMOVED.  The exchange is locked (a full barrier): the state is
     * visible to every acquire that starts after this call returns. */
    ck_pr_fas_32(&k->state, KM__ST_REMOVED);
    ck_pr_store_64(&k->retire_epoch, ck_pr_load_64(&e->seg.hdr->epoch));
    /* The list is rebuilt without it; if a stalled reader holds the spare
     * list, the removed key stays listed (and skipped) until the next add,
     * remove or re-weight in the pool rebuilds it. */
    (void)list_publish(e, k->pool, UINT32_MAX);
    count_reconfig(e);
    km__admin_unlock(e);
    return KM_OK;
}

KM_EXTERN int km_key_set_weight(km_env *e, int key, uint32_t weight)
{
    if (!e || weight == 0 || weight > KM__WEIGHT_MAX)
        return KM_EINVAL;
    int rc = admin_lock_key(e, key);
    if (rc != KM_OK)
        return rc;
    km__key *k = &km__keys(e)[key];
    uint32_t old = k->weight;
    /* Read only by list building (under this lock) and by display. */
    ck_pr_store_32(&k->weight, weight);
    rc = list_publish(e, k->pool, UINT32_MAX);
    if (rc != KM_OK)
        ck_pr_store_32(&k->weight, old);
    else
        count_reconfig(e);
    km__admin_unlock(e);
    return rc;
}

/* Carry a window's debt over to new parameters, in units: the key owes as
 * many requests or tokens against the new limit as against the old.  A
 * window that was not limited starts without debt. */
static void rescale(km__gcra *g, uint64_t old_T, uint64_t new_T, uint64_t now)
{
    uint64_t cur[2], nv[2];
    km__gcra_load(g, cur);
    do {
        uint64_t debt = cur[0] > now && old_T ? (cur[0] - now) / old_T : 0;
        nv[0] = new_T && debt ? now + debt * new_T : 0;
        nv[1] = cur[1]; /* reservations belong to leases still out */
    } while (!km__gcra_cas(g, cur, nv)); /* the pair's one CAS (src/gcra.h) */
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
    uint64_t old_T[KM_WIN_COUNT];
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        int had = (k->win_mask >> w) & 1;
        old_T[w] = had ? k->emission_ns[w] : 0;
        if (set & (1u << w))
            lc[w] = given[w];
        else
            lc[w] = (km__limit_cfg){had ? k->limit[w] : 0, had ? k->burst[w] : 0,
                                    had ? k->mode[w] : KM_MODE_TOKEN_BUCKET};
    }
    /* Acquirers skip the key from here; the grace period lets those that
     * read the old parameters finish.  The exchange is a full barrier. */
    ck_pr_fas_32(&k->updating, 1);
    rc = km__epoch_sync(&e->seg, km__admin_timeout(e));
    if (rc == KM_OK) {
        km__key_limits_write(k, lc);
        uint64_t now = km__now();
        for (int w = 0; w < KM_WIN_COUNT; w++)
            rescale(&k->win[w], old_T[w], (k->win_mask >> w) & 1 ? k->emission_ns[w] : 0, now);
        count_reconfig(e);
    }
    /* New parameters before the flag that lets acquirers back in. */
    ck_pr_fence_store();
    ck_pr_store_32(&k->updating, 0);
    if (k->pool < e->geom.n_pools)
        km__wake_pool(e, k->pool); /* a raised limit may admit sleepers */
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

KM_EXTERN int km_key_set_state(km_env *e, int key, int state)
{
    if (!e || (state != KM_KEY_ACTIVE && state != KM_KEY_DISABLED))
        return KM_EINVAL;
    if ((uint32_t)key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY; /* (a negative index is out of range too) */
    km__key *k = &km__keys(e)[key];
    /* Never out of FREE or REMOVED: those rows belong to reconfiguration. */
    const uint32_t gone = (1u << KM__ST_FREE) | (1u << KM__ST_REMOVED);
    if (state == KM_KEY_ACTIVE) {
        /* Health first, then the state that lets acquirers in. */
        ck_pr_store_32(&k->consec_fail, 0);
        ck_pr_store_32(&k->consec_429, 0);
        ck_pr_store_64(&k->cooldown_until, 0);
        ck_pr_fence_store();
        km__state_to(k, ~gone & ~(1u << KM__ST_ACTIVE), KM__ST_ACTIVE);
        if (k->pool < e->geom.n_pools)
            km__wake(e, &km__pools(e)[k->pool]);
    } else {
        km__state_to(k, ~gone, KM__ST_DISABLED);
    }
    return KM_OK;
}
