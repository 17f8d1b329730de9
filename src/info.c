/*
 * src/info.c - the readers: what km_*_info_get and the lookups report.
 *
 * Readers run concurrently with everything else: each number is read
 * atomically, but numbers of one key need not be mutually consistent while
 * operations run.  They change nothing.
 */
#include <sched.h>
#include <string.h>

#include <ck_pr.h>

#include "budget.h"

#include "internal.h"
#include "slots.h"
#include "stats_read.h"

/* find_member: scans to try while grace periods keep starting, before
 * KM_EBUSY (each scan is a few hundred ns; a grace period lasts longer). */
#define KM__FIND_TRIES 64

KM_EXTERN int km_reader_info_get(km_env *e, int slot, int row, km_reader_info *out)
{
    /* An index cast to uint32_t: a negative one is out of range too. */
    if (!e || !out || (uint32_t)slot >= e->geom.cap_procs || (uint32_t)row >= KM__RDR_PER_PROC)
        return KM_EINVAL;
    km__proc *p = &km__procs(&e->seg)[slot];
    uint64_t tag = ck_pr_load_64(&p->tag);
    km__rdr *r = &km__rdrs(&e->seg, slot)[row];
    uint64_t ep = km__row_epoch(r, row);
    if (tag == 0 || ep == 0)
        return KM_ENOSLOT;
    memset(out, 0, sizeof *out);
    out->pid = km__tag_pid(tag);
    out->tid = row == 0 ? 0 : ck_pr_load_32(&r->tid);
    out->shared = row == 0;
    out->epoch = ep;
    uint64_t g = ck_pr_load_64(&e->seg.hdr->epoch), now = km__now(),
             since = ck_pr_load_64(&r->enter_ns);
    out->epochs_behind = g > ep ? g - ep : 0;
    out->inside_ns = now > since ? now - since : 0;
    out->alive = km__proc_entry_live(&e->seg, slot, tag);
    return KM_OK;
}

KM_EXTERN int km_epoch_info_get(km_env *e, km_epoch_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    memset(out, 0, sizeof *out);
    out->epoch = ck_pr_load_64(&e->seg.hdr->epoch);
    out->synced = ck_pr_load_64(&e->seg.hdr->synced);
    out->reconfigs = ck_pr_load_64(&e->seg.hdr->reconfigs);
    out->rows_per_process = KM__RDR_PER_PROC;
    out->membarrier = !e->seg.rd_fence;
    return KM_OK;
}

/* Fill limit info for one set of windows. */
static void limit_info(const km__gcra *win, const uint64_t *T, const uint64_t *tau,
                           const uint64_t *limit, const uint64_t *burst, const uint8_t *mode,
                           uint32_t mask, uint64_t now, km_limit_info *out)
{
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        km_limit_info *li = &out[w];
        memset(li, 0, sizeof(*li));
        if (!(mask & (1u << w)))
            continue;
        uint64_t tat = ck_pr_load_64(&win[w].tat), res = ck_pr_load_64(&win[w].reserved);
        uint64_t used = km__max64(tat, now) - now + km__mul_sat(res, T[w]);
        li->limit = limit[w];
        li->burst = burst[w];
        li->mode = mode[w];
        li->tat_ns = tat;
        li->available = used >= tau[w] || !T[w] ? 0 : (tau[w] - used) / T[w];
    }
}


uint32_t km__keys_live(const km_env *e)
{
    uint32_t n = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        uint32_t st = ck_pr_load_32(&km__keys(e)[ki].state);
        n += st != KM__ST_FREE && st != KM__ST_REMOVED;
    }
    return n;
}

KM_EXTERN int km_info_get(km_env *e, km_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    const km__hdr *h = e->seg.hdr;
    memset(out, 0, sizeof(*out));
    out->format = h->format;
    out->cap_keys = e->geom.cap_keys;
    out->cap_pools = e->geom.cap_pools;
    out->cap_procs = e->geom.cap_procs;
    out->cap_inflight = e->geom.cap_inflight;
    out->n_keys = km__keys_live(e); /* not the header's: see km_info */
    out->n_pools = km__pools_used(e); /* an index bound: see km_info */
    out->n_procs = ck_pr_load_32(&h->n_procs);
    out->size_bytes = h->seg_size;
    out->created_wall_ns = h->created_wall_ns;
    return KM_OK;
}

KM_EXTERN int km_pool_find(km_env *e, const char *name)
{
    if (!e || !name)
        return KM_EINVAL;
    /* Live pools only: a removed pool's row keeps its name, and a pool
     * being added is not one yet.  The state before the name (pairs with
     * the writer's release store of LIVE, src/reconfig.c). */
    for (uint32_t p = 0; p < e->geom.cap_pools; p++) {
        if (!km__pool_live(e, (int)p))
            continue;
        ck_pr_fence_load();
        if (strncmp(km__pools(e)[p].name, name, KM_ID_MAX + 1) == 0)
            return (int)p;
    }
    return KM_ENOPOOL;
}

KM_EXTERN int km_pool_first(km_env *e)
{
    if (!e)
        return KM_EINVAL;
    for (uint32_t p = 0; p < e->geom.cap_pools; p++)
        if (km__pool_live(e, (int)p))
            return (int)p;
    return KM_ENOPOOL;
}

/* The spend and budget fields of km_pool_info and km_key_info. */
static void budget_fields(const km_env *e, const km__spend *s, uint32_t period, int32_t tz_min,
                          uint64_t budget, uint64_t *spent, km_budget_state *out)
{
    km__budget_view v;
    km__budget_info(s, period, tz_min, e->tzt, budget, &v);
    *spent = v.spent;
    out->prev_spent_microusd = v.prev;
    out->period_end_unix_ns = v.end;
    out->period = v.period;
    out->tz_min = (int16_t)v.tz_min;
    out->rolls = (uint16_t)v.rolls;
    out->warnings = v.warnings;
    out->over = v.over;
}

KM_EXTERN int km_pool_info_get(km_env *e, int pool, km_pool_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    memset(out, 0, sizeof(*out));
    memcpy(out->name, p->name, KM_ID_MAX);
    out->strategy = (int)p->strategy;
    out->n_keys = ck_pr_load_32(&p->view[ck_pr_load_32(&p->cur) & 1].n_keys);
    out->cooldown_s = p->cooldown_s;
    out->max_cooldown_s = p->max_cooldown_s;
    out->max_failures = p->max_failures;
    out->model_mode = (int)p->model_mode;
    out->n_models = p->n_models;
    out->budget_microusd = p->budget_microusd;
    out->budget_hard = (int)p->budget_hard;
    budget_fields(e, &p->spend, p->budget_period, p->budget_tz_min, p->budget_microusd,
                  &out->spent_microusd, &out->budget);
    out->waiters = ck_pr_load_32(&p->waiters);
    return KM_OK;
}

KM_EXTERN int km_pool_key(km_env *e, int pool, int i)
{
    if (!e)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    uint32_t b = ck_pr_load_32(&p->cur) & 1;
    ck_pr_fence_load(); /* cur before the list it names */
    if (i < 0 || (uint32_t)i >= ck_pr_load_32(&p->view[b].n_keys) || (uint32_t)i >= e->geom.cap_keys)
        return KM_ENOKEY;
    uint32_t ki = ck_pr_load_32(&km__members(e, (uint32_t)pool, b)[i].key);
    return ki < e->geom.cap_keys ? (int)ki : KM_ECORRUPT;
}

/* A lookup: does key row k match?  `all`: compare every member and keep
 * the first match (constant time over the pool, for secrets); else stop at
 * the first. */
typedef struct lookup {
    int (*match)(const km__key *k, const void *arg);
    const void *arg;
    int all;
} lookup;

/* One pass over pool p's current member list.  Rows not live are skipped
 * by state, read before what the match reads: a row being filled for a
 * new key is FREE until its id, secret and gen are written (a store fence,
 * then ACTIVE), so a row seen live has them whole. */
static int scan_members(km_env *e, uint32_t pool, const lookup *q)
{
    const km__pool *p = &km__pools(e)[pool];
    const km__key *keys = km__keys(e);
    uint32_t b = ck_pr_load_32(&p->cur) & 1;
    ck_pr_fence_load(); /* cur before the list it names */
    const km__member *m = km__members(e, pool, b);
    uint32_t n = (uint32_t)km__min64(ck_pr_load_32(&p->view[b].n_keys), e->geom.cap_keys);
    int rc = KM_ENOKEY;
    for (uint32_t i = 0; i < n && (q->all || rc == KM_ENOKEY); i++) {
        uint32_t ki = ck_pr_load_32(&m[i].key);
        if (ki >= e->geom.cap_keys || ck_pr_load_32(&keys[ki].state) >= KM__ST_FREE)
            continue;
        ck_pr_fence_load(); /* a live state before the fields it guards */
        if (q->match(&keys[ki], q->arg) && rc == KM_ENOKEY)
            rc = (int)ki;
    }
    return rc;
}

/* A lookup in pool p's current members, safe against reconfiguration.
 *
 * With a process slot: inside an epoch section, as an acquire (the rows
 * the list names keep their ids and secrets until it ends).
 *
 * Without one (KM_OPEN_READONLY, KM_OPEN_NO_SLOT) there are no reader rows
 * to use (they belong to a slot; a read-only mapping could not even store
 * to one), so the lookup cannot hold reclamation back.  It reads
 * optimistically and keeps an answer only if no grace period began
 * meanwhile: a member list or key row is rewritten only after a grace
 * period that began after it was retired (shm/epoch.c E3, src/reconfig.c),
 * and step 1 of a grace period is a locked add on hdr.epoch that follows
 * the retirement; a scan that reads the same epoch before and after (each
 * read ordered by a load fence against the scan's loads) saw no rewrite of
 * anything current when it began. */
static int find_member(km_env *e, uint32_t pool, const lookup *q)
{
    if (e->seg.tag) {
        km__rdr *r = km__rd_enter(&e->seg, km__now());
        int rc = scan_members(e, pool, q);
        km__rd_exit(r);
        return rc;
    }
    for (unsigned tries = 0; tries < KM__FIND_TRIES; tries++) {
        uint64_t g = ck_pr_load_64(&e->seg.hdr->epoch);
        ck_pr_fence_load(); /* the epoch before cur, the list and the rows */
        int rc = scan_members(e, pool, q);
        ck_pr_fence_load(); /* the scan's loads before the second epoch read */
        if (ck_pr_load_64(&e->seg.hdr->epoch) == g)
            return rc;
        sched_yield(); /* a writer is between two steps: let it finish */
    }
    return KM_EBUSY;
}

static int match_id(const km__key *k, const void *id)
{
    return strncmp(k->id, (const char *)id, KM_ID_MAX + 1) == 0;
}

KM_EXTERN int km_key_find(km_env *e, int pool, const char *id)
{
    if (!e || !id)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    lookup q = {match_id, id, 0};
    return find_member(e, (uint32_t)pool, &q);
}

typedef struct secret_arg {
    const char *s;
    size_t len;
} secret_arg;

static int match_secret(const km__key *k, const void *arg)
{
    const secret_arg *a = arg;
    size_t klen = km__min64(ck_pr_load_32(&k->secret_len), KM_SECRET_MAX);
    return km__secret_eq(k->secret, klen, a->s, a->len);
}

/* Every live member's secret is compared, in constant time each
 * (km__secret_eq reads every byte up to KM_SECRET_MAX), and the scan does
 * not stop at a match: the time says neither which bytes differ nor which
 * key matched.  Nothing is copied out; the secret is in no error. */
KM_EXTERN int km_key_find_secret(km_env *e, int pool, const char *secret)
{
    if (!e || !secret)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    size_t len = strnlen(secret, KM_SECRET_MAX + 1);
    if (len == 0 || len > KM_SECRET_MAX)
        return KM_ENOKEY; /* no key can hold it */
    secret_arg a = {secret, len};
    lookup q = {match_secret, &a, 1};
    return find_member(e, (uint32_t)pool, &q);
}

KM_EXTERN int km_key_info_get(km_env *e, int key, km_key_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if ((uint32_t)key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
    const km__key *k = &km__keys(e)[key];
    uint64_t now = km__now();
    uint32_t st = ck_pr_load_32(&k->state);

    memset(out, 0, sizeof(*out));
    memcpy(out->id, k->id, KM_ID_MAX);
    {   /* A bounded, terminated copy: the row may be corrupted. */
        char sec[KM_SECRET_MAX + 1];
        memcpy(sec, k->secret, KM_SECRET_MAX);
        sec[KM_SECRET_MAX] = '\0';
        km_mask_secret(sec, out->secret_masked);
        explicit_bzero(sec, sizeof sec);
    }
    out->pool = (int)k->pool;
    out->weight = k->weight;
    out->gen = ck_pr_load_32(&k->gen);
    out->cooldown_until_ns = ck_pr_load_64(&k->cooldown_until);
    if (st == KM__ST_FAILING || (st == KM__ST_ACTIVE && now < out->cooldown_until_ns))
        out->state = KM_KEY_COOLING;
    else
        out->state = (int)st;
    out->inflight = km__inflight(e, key, k);
    out->max_inflight = k->max_inflight;
    out->consecutive_failures = ck_pr_load_32(&k->consec_fail);
    out->consecutive_429s = ck_pr_load_32(&k->consec_429);
    out->latency_ema_us = ck_pr_load_64(&k->latency_ema_ns) / KM__NS_PER_US;
    /* Counters are per lease slot (see km__lease); sum them. */
    const km__lease *ls = km__leases(e, key);
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
        out->acquired += ck_pr_load_64(&ls[s].acquired);
        out->outcomes[KM_OUT_SUCCESS] += ck_pr_load_64(&ls[s].succeeded);
        for (int i = 1; i < KM_OUT_COUNT; i++)
            out->outcomes[i] += ck_pr_load_64(&ls[s].outcomes[i]);
        out->abandoned += ck_pr_load_64(&ls[s].abandoned);
        out->tokens_used += ck_pr_load_64(&ls[s].tokens_used);
    }
    out->stale_releases = ck_pr_load_64(&k->stale);
    out->success_ppm = ck_pr_load_32(&k->success_ppm);
    out->price_in_microusd_per_1k = k->price_in;
    out->price_out_microusd_per_1k = k->price_out;
    out->budget_microusd = k->budget_microusd;
    out->budget_hard = (int)k->budget_hard;
    budget_fields(e, &k->spend, k->budget_period, k->budget_tz_min, k->budget_microusd,
                  &out->spent_microusd, &out->budget);
    memcpy(out->meta, k->meta, KM_META_MAX);
    limit_info(k->win, k->emission_ns, k->tau_ns, k->limit, k->burst, k->mode,
                   k->win_mask, now, out->limits);
    return KM_OK;
}

KM_EXTERN int km_model_info_get(km_env *e, int pool, int i, int key,
                                char name[KM_ID_MAX + 1], km_limit_info limits[KM_WIN_COUNT])
{
    if (!e)
        return KM_EINVAL;
    if (!km__pool_live(e, pool))
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    if (i < 0 || (uint32_t)i >= p->n_models || (uint32_t)i >= e->geom.cap_models)
        return KM_ENOMODEL;
    const km__model *md = &km__models(e, (uint32_t)pool)[i];
    if (name) {
        memcpy(name, md->name, KM_ID_MAX + 1);
        name[KM_ID_MAX] = '\0'; /* the segment's copy may lack it */
    }
    if (limits) {
        if ((uint32_t)key >= e->geom.cap_keys || km__keys(e)[key].pool != (uint32_t)pool)
            return KM_ENOKEY;
        const km__mwin *mw = &km__mwins(e, key)[i];
        if ((ck_pr_load_64(&km__keys(e)[key].own_models) >> i) & 1) /* the key's own */
            limit_info(mw->win, mw->emission_ns, mw->tau_ns, mw->limit, mw->burst, mw->mode,
                       p->model_mode == KM_MODELS_PER_MODEL ? mw->win_mask : 0, km__now(),
                       limits);
        else
            limit_info(mw->win, md->emission_ns, md->tau_ns, md->limit, md->burst, md->mode,
                       p->model_mode == KM_MODELS_PER_MODEL ? md->win_mask : 0, km__now(),
                       limits);
    }
    return KM_OK;
}

KM_EXTERN int km_model_own_get(km_env *e, int pool, int i, int key, uint32_t *windows)
{
    if (!e || !windows)
        return KM_EINVAL;
    *windows = 0;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    if (i < 0 || (uint32_t)i >= p->n_models || (uint32_t)i >= e->geom.cap_models)
        return KM_ENOMODEL;
    if (key < 0 || (uint32_t)key >= e->geom.cap_keys || km__keys(e)[key].pool != (uint32_t)pool)
        return KM_ENOKEY;
    if ((ck_pr_load_64(&km__keys(e)[key].own_models) >> i) & 1)
        *windows = ck_pr_load_8(&km__mwins(e, key)[i].own_set) & ((1u << KM_WIN_COUNT) - 1);
    return KM_OK;
}


/* ------------------------------------------- model rows (src/stats_read.h) */

uint32_t km__model_rows(km_env *e, int pool)
{
    if (!e || !km__pool_live(e, pool))
        return 0;
    const km__pool *p = &km__pools(e)[pool];
    if (p->n_models)
        return (uint32_t)km__min64(p->n_models, e->geom.cap_models);
    /* Named rows: taken ones first, never freed (N1). */
    const km__model *md = km__models(e, (uint32_t)pool);
    uint32_t n = 0;
    while (n < e->geom.cap_models && ck_pr_load_64(&md[n].named_by))
        n++;
    return n;
}

int km__model_row_read(km_env *e, int pool, int row, int key, char name[KM_ID_MAX + 1],
                       km_stats_counters *c)
{
    if (!e || !km__pool_live(e, pool))
        return KM_ENOPOOL;
    if (row < 0 || (uint32_t)row >= km__model_rows(e, pool))
        return KM_ENOMODEL;
    const km__pool *p = &km__pools(e)[pool];
    const km__model *md = &km__models(e, (uint32_t)pool)[row];
    if (name) {
        /* A named row's name is readable once its hash is (N2); a listed
         * model's was written at creation. */
        if (!p->n_models && !ck_pr_load_32(&md->hash)) {
            name[0] = '\0';
        } else {
            ck_pr_fence_load(); /* the hash before the name (N2) */
            memcpy(name, md->name, KM_ID_MAX + 1);
        }
        name[KM_ID_MAX] = '\0'; /* the segment's copy may lack it */
    }
    if (c) {
        if (key < 0 || (uint32_t)key >= e->geom.cap_keys ||
            km__keys(e)[key].pool != (uint32_t)pool)
            return KM_ENOKEY;
        /* Locked adds by many leases (km__mwin): each load is one number. */
        const km__mwin *r = &km__mwins(e, (uint32_t)key)[row];
        memset(c, 0, sizeof *c);
        c->requests = ck_pr_load_64(&r->requests);
        c->outcomes[KM_OUT_SUCCESS] = ck_pr_load_64(&r->ok.n);
        for (int i = 1; i < KM_OUT_COUNT; i++)
            c->outcomes[i] = ck_pr_load_64(&r->outcomes[i - 1]);
        c->abandoned = ck_pr_load_64(&r->abandoned);
        c->stale_releases = ck_pr_load_64(&r->stale);
        c->tokens = ck_pr_load_64(&r->ok.tokens);
    }
    return KM_OK;
}
