/*
 * src/create.c - the pool's rows as a configuration describes them: pools,
 * member lists, models and keys, written into a segment before it is
 * published (src/attach.c), and a key row written again by reconfiguration
 * (src/reconfig.c) on a row no reader can reach.
 */
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "tz.h"
#include "internal.h"

/* Fill one set of GCRA parameters from parsed limits. */
static uint32_t limits_init(const km__limit_cfg *lc, uint64_t *T, uint64_t *tau,
                                uint64_t *limit, uint64_t *burst, uint8_t *mode)
{
    uint32_t mask = 0;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        T[w] = tau[w] = limit[w] = burst[w] = 0;
        mode[w] = 0;
        if (lc[w].limit == 0 ||
            km__limit_gcra(&lc[w], km__window_period_ns(w), &T[w], &tau[w], &burst[w]))
            continue; /* the parser already refused unrealisable limits */
        limit[w] = lc[w].limit;
        mode[w] = (uint8_t)lc[w].mode;
        mask |= 1u << w;
    }
    return mask;
}

static uint32_t min_tok_burst(uint32_t mask, const uint64_t *burst)
{
    uint64_t m = UINT32_MAX;
    for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
        if (mask & (1u << w))
            m = km__min64(m, burst[w]);
    return (uint32_t)m;
}

/* ceil(2^64 / n); wraps to 0 for n == 1, which fastmod maps to 0. */
uint64_t km__rr_magic(uint32_t n) { return n ? UINT64_MAX / n + 1 : 0; }

/* Write a key row's configuration and identity from kc: at creation, and
 * by km_key_add on a row no reader can reach (state FREE).  Counters,
 * limit words and state are the caller's. */
void km__key_write(km_env *e, km__key *k, uint32_t pool, const km__key_cfg *kc)
{
    k->win_mask = limits_init(kc->limits, k->emission_ns, k->tau_ns,
                                  k->limit, k->burst, k->mode);
    k->min_tok_burst = min_tok_burst(k->win_mask, k->burst);
    k->weight = kc->weight ? kc->weight : 1;
    k->pool = pool;
    k->max_inflight = kc->max_inflight && kc->max_inflight <= e->geom.cap_inflight
                          ? kc->max_inflight : e->geom.cap_inflight;
    memcpy(k->id, kc->id, sizeof(k->id));
    memcpy(k->secret, kc->secret, sizeof(k->secret));
    k->secret_len = kc->secret_len;
    memcpy(k->meta, kc->meta, sizeof(k->meta));
    k->meta_len = (uint32_t)strnlen(kc->meta, KM_META_MAX);
    k->price_in = kc->price_in;
    k->price_out = kc->price_out;
    k->budget_microusd = kc->budget_microusd;
    k->budget_hard = (uint32_t)kc->budget_hard;
    k->budget_period = (uint16_t)kc->budget_period;
    k->budget_tz_min = (int16_t)km__tz_code(e, kc->budget_tz, kc->budget_tz_min);
    km__spend_init(&k->spend, k->budget_period, k->budget_tz_min, e->tzt, km__wall_ns());
    k->success_ppm = KM__PPM; /* healthy until shown otherwise */
    km__fleet_key_init(e, (uint32_t)(k - km__keys(e)), kc);
}

/* Limit parameters of one set of windows from kc (set-limits). */
uint32_t km__key_limits_write(km__key *k, const km__limit_cfg *lc)
{
    k->win_mask = limits_init(lc, k->emission_ns, k->tau_ns, k->limit, k->burst, k->mode);
    k->min_tok_burst = min_tok_burst(k->win_mask, k->burst);
    /* A fleet key's windows under the fleet follow its limits (behind the
     * key's `updating` flag, like them). */
    k->fleet_mask = k->fleet ? k->win_mask | KM__FLEET_MODELS : 0;
    return k->win_mask;
}

/* A key's own limits of one model into its model row (km__mwin lines 1
 * and 3-5); the caller sets the key's own_models bit. */
void km__mwin_limits_write(km__mwin *mw, const km__limit_cfg *lc, uint32_t own_set)
{
    mw->win_mask = limits_init(lc, mw->emission_ns, mw->tau_ns, mw->limit, mw->burst, mw->mode);
    mw->min_tok_burst = min_tok_burst(mw->win_mask, mw->burst);
    mw->own_set = (uint8_t)own_set;
}

int km__cmp_price(const void *a, const void *b, void *keys)
{
    const km__key *k = keys;
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    uint64_t pi = k[i].price_in + k[i].price_out, pj = k[j].price_in + k[j].price_out;
    if (pi != pj)
        return pi < pj ? -1 : 1;
    return i < j ? -1 : (i > j); /* by index among equals: stable */
}

/* Write pool row p's settings and models from pc (at creation; and by
 * km_pool_add on a row no acquire reaches: state ADDING).  Its member
 * lists, state and counters are the caller's. */
void km__pool_write(km_env *e, uint32_t p, const km__pool_cfg *pc)
{
    km__pool *pool = &km__pools(e)[p];
    km__model *md = km__models(e, p);

    memcpy(pool->name, pc->name, sizeof(pool->name));
    pool->strategy = (uint32_t)pc->strategy;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        pool->def_limit[w] = pc->defaults.limits[w].limit;
        pool->def_burst[w] = pc->defaults.limits[w].burst;
        pool->def_mode[w] = (uint8_t)pc->defaults.limits[w].mode;
    }
    pool->def_max_inflight = pc->defaults.max_inflight;
    pool->def_price_in = pc->defaults.price_in;
    pool->def_price_out = pc->defaults.price_out;
    pool->cooldown_s = pc->cooldown_s;
    pool->max_cooldown_s = pc->max_cooldown_s;
    pool->max_failures = pc->max_failures;
    pool->model_mode = (uint32_t)pc->model_mode;
    pool->n_models = pc->n_models;
    pool->budget_microusd = pc->budget_microusd;
    pool->budget_hard = (uint32_t)pc->budget_hard;
    pool->budget_period = (uint32_t)pc->budget_period;
    pool->budget_tz_min = km__tz_code(e, pc->budget_tz, pc->budget_tz_min);
    km__spend_init(&pool->spend, pool->budget_period, pool->budget_tz_min, e->tzt,
                   km__wall_ns());
    /* The budget counts fleet-wide under the top-level fleet "all" (the
     * fleet header is written before the pools, src/attach.c); a reused
     * row's figures are not the new pool's. */
    const km__fhdr *fh = km__fleet(e);
    pool->fleet = fh && fh->all;
    pool->gen++; /* plain: not LIVE, under the admin lock (or at creation) */
    pool->sp_others = pool->sp_end = pool->a_sp_rep = pool->a_sp_end = 0;
    pool->sp_rst[0] = pool->sp_rst[1] = 0;
    /* Every row: a reused pool row's models, or the names its requests
     * gave (a pool without a models list), are not the new pool's. */
    memset(md, 0, (size_t)e->geom.cap_models * sizeof(*md));
    for (uint32_t i = 0; i < pc->n_models; i++)
        km__model_write(&md[i], &pc->models[i]);
}

/* Model row md from mc (a row no acquire reaches, or at creation). */
void km__model_write(km__model *md, const km__model_cfg *mc)
{
    memcpy(md->name, mc->name, sizeof(md->name));
    md->hash = km__fnv32_str(md->name);
    km__model_limits_write(md, mc->limits);
}

/* A model's limit parameters (set-pool, behind its keys' updating flags). */
uint32_t km__model_limits_write(km__model *md, const km__limit_cfg *lc)
{
    md->win_mask = limits_init(lc, md->emission_ns, md->tau_ns, md->limit, md->burst, md->mode);
    md->min_tok_burst = min_tok_burst(md->win_mask, md->burst);
    return md->win_mask;
}

/* A key's own limits of its pool's models, from kc (a row no reader
 * reaches, own_models 0): each model row, then its bit. */
void km__key_own_write(km_env *e, km__key *k, uint32_t ki, const km__key_cfg *kc, uint32_t n_models)
{
    for (uint32_t o = 0; o < kc->n_own; o++) {
        const km__own_cfg *oc = &kc->own[o];
        if (oc->model >= n_models || oc->model >= e->geom.cap_models)
            continue; /* the parser named only listed models */
        km__mwin_limits_write(&km__mwins(e, ki)[oc->model], oc->limits, oc->own_set);
        k->own_models |= UINT64_C(1) << oc->model;
    }
}

void km__pool_init(km_env *e, const km_config *cfg)
{
    km__hdr *h = e->seg.hdr;
    km__key *keys = km__keys(e);

    /* Pool rows in use: those below n_pools (more are added live, up to
     * cap_pools); the handle addresses every row (src/attach.c). */
    h->n_pools = cfg->n_pools;
    e->geom.n_pools = e->geom.cap_pools;
    h->n_keys = cfg->n_keys;
    for (uint32_t p = 0; p < cfg->n_pools; p++) {
        const km__pool_cfg *pc = &cfg->pools[p];
        km__pool *pool = &km__pools(e)[p];
        km__member *m = km__members(e, p, 0);
        uint64_t cum = 0;

        km__pool_write(e, p, pc);
        pool->state = KM__PST_LIVE;
        pool->view[0].n_keys = pc->n_keys;
        for (uint32_t j = 0; j < pc->n_keys; j++) {
            uint32_t ki = pc->first_key + j;
            const km__key_cfg *kc = &cfg->keys[ki];
            km__key *k = &keys[ki];

            km__key_write(e, k, p, kc);
            km__key_own_write(e, k, ki, kc, pc->n_models);
            k->state = KM__ST_ACTIVE;
            k->gen = 1;
            cum += k->weight;
            m[j].key = ki;
            m[j].cum_weight = (uint32_t)cum;
            m[j].by_cost = ki;
        }
        uint32_t *order = (uint32_t *)malloc((size_t)pc->n_keys * sizeof(uint32_t));
        if (order) { /* without memory the cost order stays config order */
            for (uint32_t j = 0; j < pc->n_keys; j++)
                order[j] = pc->first_key + j;
            /* The rows were written above: sort by the segment's prices,
             * with the comparator reconfiguration uses (no shared state:
             * km_create may run in several threads at once). */
            qsort_r(order, pc->n_keys, sizeof(uint32_t), km__cmp_price, keys);
            for (uint32_t j = 0; j < pc->n_keys; j++)
                m[j].by_cost = order[j];
            free(order);
        }
        pool->view[0].total_weight = cum;
        pool->view[0].rr_magic = km__rr_magic(pc->n_keys);
    }
    for (uint32_t ki = cfg->n_keys; ki < e->geom.cap_keys; ki++)
        keys[ki].state = KM__ST_FREE;
}

