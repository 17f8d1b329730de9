/*
 * src/release.c - km_release: a lease's outcome applied to its key (health,
 * cooldowns, the provider's view of the limits, spend, usage events), its
 * reservation settled and its slot freed, and sleepers woken.
 */
#include <string.h>

#include <ck_pr.h>

#include "budget.h"
#include "internal.h"
#include "slots.h"
#include "usage.h"
#include "wait.h"

/* A Retry-After at or above this many seconds (~31 years) is not believed:
 * the pool's backoff applies instead (and the product in ns fits). */
#define KM__RETRY_AFTER_MAX_S 1e9

/* Add a request's spend to its key and pool (each rolled to its current
 * period first if it has one, src/budget.c); a hard lifetime key budget
 * that is now spent makes the key exhausted.  A hard budget with a period
 * leaves the state alone: acquire passes the key over until the period
 * rolls (src/acquire.c, over_budget). */
static void spend(const km_env *e, km__pool *pool, km__key *k, const km_outcome *o,
                  uint64_t actual)
{
    uint64_t in, out;
    if (k->price_in == 0 && k->price_out == 0)
        return;
    /* A zero-initialised outcome says 0 in and 0 out; with tokens used that
     * means "split not given", not "free". */
    if (o->input_tokens >= 0 && o->output_tokens >= 0 &&
        (o->input_tokens + o->output_tokens > 0 || actual == 0)) {
        in = (uint64_t)o->input_tokens;
        out = (uint64_t)o->output_tokens;
    } else { /* split unknown: price everything as output (the dearer side) */
        in = 0;
        out = actual;
    }
    /* Prices are per KM__PRICE_TOKENS tokens; a fraction of a micro-dollar
     * is charged as a whole one. */
    uint64_t cost = (km__mul_sat(in, k->price_in) + km__mul_sat(out, k->price_out) +
                     KM__PRICE_TOKENS - 1) / KM__PRICE_TOKENS;
    if (cost == 0)
        return;
    /* Statistics and budget checks: atomicity is all that is needed
     * (km__spend_add says how a roll orders against these adds). */
    uint64_t budget = k->budget_microusd;
    if (budget && __builtin_expect(k->fleet, 0)) /* what the other hosts left of it */
        budget = km__fleet_budget_left(e, k);
    uint64_t spent = km__spend_add(&k->spend, k->budget_period, k->budget_tz_min, e->tzt, cost,
                                   budget, k->budget_hard);
    if (pool) {
        /* Settings km_pool_set may store meanwhile: relaxed loads.  A pool
         * budget under the fleet: what the other hosts left of it. */
        uint64_t pb = ck_pr_load_64(&pool->budget_microusd);
        if (pb && __builtin_expect(ck_pr_load_32(&pool->fleet), 0))
            pb = km__fleet_pool_budget_left(pool);
        km__spend_add(&pool->spend, ck_pr_load_32(&pool->budget_period),
                      (int32_t)ck_pr_load_32((uint32_t *)&pool->budget_tz_min), e->tzt, cost, pb,
                      ck_pr_load_32(&pool->budget_hard));
    }
    if (budget && k->budget_hard && k->budget_period == KM__PERIOD_NONE && spent >= budget)
        km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
}

static uint64_t backoff_ns(uint32_t base_s, uint32_t max_s, uint32_t n)
{
    uint64_t d = (uint64_t)base_s * KM__NS_PER_S, cap = (uint64_t)max_s * KM__NS_PER_S;
    for (uint32_t i = 1; i < n && i < 64 && d && d < cap; i++) /* bounded, whatever n */
        d *= 2;
    return km__min64(d, cap);
}

/* cooldown_until := max(cooldown_until, until). */
static void cool_until(km__key *k, uint64_t until)
{
    uint64_t cur = ck_pr_load_64(&k->cooldown_until);
    while (cur < until && !ck_pr_cas_64_value(&k->cooldown_until, cur, until, &cur))
        ;
}


/* The weights of the two averages kept per key: each sample moves the
 * average by 1/DIV of its distance to the sample (alpha = 1/DIV). */
#define KM__SUCCESS_EMA_DIV 8 /* success rate: alpha 1/8 */
#define KM__LATENCY_EMA_DIV 5 /* latency: alpha 0.2 */

/* Recent success rate, EMA in parts per million.  Plain load and store,
 * like the latency EMA: a lost sample is tolerable. */
static void success_ema(km__key *k, int ok)
{
    int64_t cur = ck_pr_load_32(&k->success_ppm), target = ok ? KM__PPM : 0;
    if (cur != target) /* a healthy key's line is not written */
        ck_pr_store_32(&k->success_ppm, (uint32_t)(cur + (target - cur) / KM__SUCCESS_EMA_DIV));
}

/* The pool's backoff for the n-th consecutive 429 or failure: its
 * cooldowns are words km_pool_set may store meanwhile (relaxed loads). */
static uint64_t pool_backoff(const km__pool *pool, uint32_t n)
{
    return backoff_ns(ck_pr_load_32(&pool->cooldown_s), ck_pr_load_32(&pool->max_cooldown_s), n);
}

/* The outcome's effect on the key's health.  `lat`: the request's latency
 * in ns (km_release works it out once).  `probe`: this lease is the key's
 * probe (km__key.probe).  Only the probe moves the key out of PROBING (and
 * its release then frees the probe word, in km_release): a lease taken
 * before the key failed, released while the probe is out, counts but
 * decides nothing -- "a single probe lease". */
static void health(km_env *e, km__key *k, int kind, const km_outcome *o, uint64_t lat, int probe)
{
    const uint32_t probing = probe ? 1u << KM__ST_PROBING : 0;
    if (kind != KM_OUT_SUCCESS && kind != KM_OUT_CANCELLED)
        success_ema(k, 0);
    km__pool *pool = &km__pools(e)[k->pool < e->geom.n_pools ? k->pool : 0];
    uint64_t now;
    uint32_t n;

    switch (kind) {
    case KM_OUT_SUCCESS: {
        success_ema(k, 1);
        /* Write the shared line only when something changes. */
        if (ck_pr_load_32(&k->consec_fail))
            ck_pr_store_32(&k->consec_fail, 0);
        if (ck_pr_load_32(&k->consec_429))
            ck_pr_store_32(&k->consec_429, 0);
        km__state_to(k, probing | (1u << KM__ST_FAILING), KM__ST_ACTIVE);
        if (lat == 0)
            lat = 1; /* 0 means "no sample yet" */
        /* EMA, alpha 1/KM__LATENCY_EMA_DIV; the first sample seeds it.  A plain load and
         * store: two releases racing may lose one sample, which an average
         * tolerates; a CAS loop would cost a locked op on every release. */
        /* Both within 2^62, so the signed difference below cannot overflow
         * (the shared word may be corrupted; a latency, absurd). */
        uint64_t cur = km__min64(ck_pr_load_64(&k->latency_ema_ns), UINT64_C(1) << 62);
        lat = km__min64(lat, UINT64_C(1) << 62);
        uint64_t set = cur == 0 ? lat : (uint64_t)((int64_t)cur + ((int64_t)lat - (int64_t)cur) / KM__LATENCY_EMA_DIV);
        if (set != cur) /* a steady latency leaves the line unwritten */
            ck_pr_store_64(&k->latency_ema_ns, set ? set : 1);
        break;
    }
    case KM_OUT_RATE_LIMITED:
        /* The key answered: limited, not failing.  A 429 ends a failure
         * streak, as in the in-process pools, so failures on both sides of
         * it do not add up to max_failures.  A plain store, as SUCCESS's:
         * a failure counted meanwhile may be lost, never a state. */
        if (ck_pr_load_32(&k->consec_fail))
            ck_pr_store_32(&k->consec_fail, 0);
        n = ck_pr_faa_32(&k->consec_429, 1) + 1;
        now = km__now();
        if (o->retry_after_s > 0 && o->retry_after_s < KM__RETRY_AFTER_MAX_S)
            cool_until(k, now + (uint64_t)(o->retry_after_s * (double)KM__NS_PER_S));
        else
            cool_until(k, now + pool_backoff(pool, n));
        /* A 429 proves the key authenticates: the probe succeeded. */
        km__state_to(k, probing, KM__ST_ACTIVE);
        km__fleet_health_note(e, k, KM_FLEET_EV_RATE_LIMITED); /* every host cools */
        break;
    case KM_OUT_FAILURE:
        n = ck_pr_faa_32(&k->consec_fail, 1) + 1;
        uint32_t maxf = ck_pr_load_32(&pool->max_failures); /* km_pool_set may store it */
        if (n >= maxf || probe) {
            uint32_t over = n > maxf ? n - maxf + 1 : 1;
            now = km__now();
            /* Cooldown first, then the state: an acquirer that sees FAILING
             * also sees the cooldown (store order; the CAS is locked). */
            cool_until(k, now + pool_backoff(pool, over));
            km__state_to(k, (1u << KM__ST_ACTIVE) | probing, KM__ST_FAILING);
        }
        break;
    case KM_OUT_AUTH:
        km__state_to(k, KM__LIVE_STATES, KM__ST_INVALID);
        km__fleet_health_note(e, k, KM_FLEET_EV_AUTH);
        break;
    case KM_OUT_QUOTA:
        km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
        km__fleet_health_note(e, k, KM_FLEET_EV_QUOTA);
        break;
    default: /* CANCELLED: a probe that was never sent lets the next one go */
        km__state_to(k, probing, KM__ST_FAILING);
        break;
    }
}

/* Tighten window w to the provider's view: what it says remains, and when it
 * says the window is full again.  Only ever raises tat, so it can make the
 * key stricter than configured, never looser.  The provider's `remaining`
 * already excludes requests it has seen, which are our reserved leases, so
 * they are added back rather than counted twice.
 * A window with no limit configured has no tat to pace with, but when the
 * provider says nothing remains it will refuse the key until the reset:
 * the key cools until then, as for a 429's Retry-After (cooldown_until,
 * only ever raised; acquire answers KM_EAGAIN with that retry time).  A
 * count above 0, or 0 without a reset, changes nothing there. */
static void tighten(km__key *k, int w, uint64_t now, uint64_t remaining,
                        uint64_t reset_ms)
{
    uint64_t reset_ns = km__mul_sat(km__min64(reset_ms, KM__VIEW_CAP_S * KM__MS_PER_S),
                                    KM__NS_PER_MS);
    if (!(k->win_mask & (1u << w))) {
        if (remaining == 0 && reset_ns)
            cool_until(k, now + reset_ns);
        return;
    }
    km__gcra *g = &k->win[w];
    uint64_t T = k->emission_ns[w], tau = k->tau_ns[w];
    uint64_t res = ck_pr_load_64(&g->reserved);
    uint64_t give = km__mul_sat(km__min64(remaining, UINT64_MAX / 4) + res, T);
    uint64_t target = give < tau ? now + tau - give : 0;
    target = km__max64(target, now + reset_ns);
    uint64_t tat = ck_pr_load_64(&g->tat);
    /* CAS on tat alone: atomic against the pair CAS; retried while lower. */
    while (tat < target && !ck_pr_cas_64_value(&g->tat, tat, target, &tat))
        ;
}

static void apply_view(km__key *k, const km_outcome *o)
{
    uint64_t now = km__now();
    if (o->view_flags & KM_VIEW_REQUESTS)
        tighten(k, KM_WIN_RPM, now, o->requests_remaining, o->requests_reset_ms);
    if (o->view_flags & KM_VIEW_TOKENS)
        tighten(k, KM_WIN_TPM, now, o->tokens_remaining, o->tokens_reset_ms);
}

/* Not this handle's lease (any more): stale, and counted on the key; or a
 * handle without a process slot (tag 0), which owns no lease and counts
 * nothing (a read-only one cannot).  Out of line: the path that releases
 * stays as it was. */
static __attribute__((noinline, cold)) int refused(km_env *e, km__key *k, const km_lease *l)
{
    if (!e->seg.tag)
        return KM_EREADONLY;
    ck_pr_inc_64(&k->stale);
    /* On the model row too, by the caller's copy of the lease: it names a
     * listed model only (a named row is in the slot, no longer the
     * lease's), and only while the key row is still the lease's key (a
     * reused row's model rows are another key's).  A locked add, as the
     * key's (km__mwin). */
    km__mwin *mr = l->model > 0 && l->key_gen == ck_pr_load_32(&k->gen)
                       ? km__mrow(e, (uint32_t)l->key, (uint32_t)l->model)
                       : NULL;
    if (mr)
        ck_pr_inc_64(&mr->stale);
    return KM_ESTALE;
}

KM_EXTERN int km_release(km_env *e, const km_lease *l, const km_outcome *o)
{
    static const km_outcome cancelled = {.kind = KM_OUT_CANCELLED, .latency_us = -1, .tokens = 0};
    if (!e || !l)
        return KM_EINVAL;
    if (!o)
        o = &cancelled;
    if (o->kind < 0 || o->kind >= KM_OUT_COUNT)
        return KM_EINVAL;
    /* The lease's indices as unsigned: a negative one is out of range too,
     * and indexing with them needs no sign extension. */
    const uint32_t ki = (uint32_t)l->key, si = (uint32_t)l->slot;
    if (ki >= e->geom.cap_keys || si >= e->geom.cap_inflight)
        return KM_EINVAL;
    km__key *k = &km__keys(e)[ki];
    km__lease *ls = &km__leases(e, ki)[si];

    /* Ours and still this lease?  owner is written only by us while we own
     * the slot, so these loads cannot race with a change we care about. */
    if (ck_pr_load_64(&ls->owner) != e->seg.tag || ck_pr_load_32(&ls->seq) != l->seq ||
        ck_pr_load_32(&ls->phase) != KM__LP_ACTIVE)
        return refused(e, k, l);
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic(); /* phase before the limit CASes (P2, src/layout.h) */

    int kind = o->kind;
    km__lview lv = km__lease_read(ls);
    uint64_t actual = kind == KM_OUT_CANCELLED ? 0
                      : o->tokens < 0          ? lv.tokens
                      : (uint64_t)o->tokens > UINT32_MAX ? UINT32_MAX
                                               : (uint64_t)o->tokens;
    int stale = lv.key_gen != ck_pr_load_32(&k->gen);
    km__mwin *mr = km__mrow(e, ki, lv.model); /* key x model counters, if named */
    /* Ours to answer while we hold the slot (km__is_probe). */
    int probe = km__is_probe(k, si);
    km__pool *pool = k->pool < e->geom.n_pools ? &km__pools(e)[k->pool] : NULL;
    if (!stale) {
        /* The latency: the caller's, or measured from the lease's start
         * (keymesh.h: latency_us < 0), once, for the EMA and the usage event
         * alike.  The clock is read only where one of them takes it. */
        int64_t lat_us = o->latency_us;
        uint64_t lat_ns = lat_us >= 0 ? km__mul_sat((uint64_t)lat_us, KM__NS_PER_US)
                          : kind == KM_OUT_SUCCESS || km__uring_cap(e) ? km__now() - lv.start_ns
                                                                         : 0;
        if (lat_us < 0)
            lat_us = (int64_t)(lat_ns / KM__NS_PER_US);
        km__settle(e, l->key, k, ls, &lv, actual);
        health(e, k, kind, o, lat_ns, probe);
        if (o->view_flags)
            apply_view(k, o);
        spend(e, pool, k, o, actual);
        km__usage_put(e, km__rd_holds_row1(&e->seg), l->key, lv.key_gen, k->pool, lv.model, lv.start_ns, actual,
                      lat_us, kind);
    } else {
        /* The key's generation moved on while we held the slot: its pool
         * was removed with this lease out (km_pool_remove, KM_POOL_FORCE).
         * The row cannot have been reused meanwhile (reuse needs every slot
         * free), so what the lease reserved there is still its own: given
         * back, nothing charged (actual 0).  The count goes on the key row;
         * no model row counts it. */
        km__settle(e, l->key, k, ls, &lv, 0);
        ck_pr_inc_64(&k->stale);
    }
    /* The probe ends with its own release, after its outcome moved the
     * state, and while we still hold the slot: dying before this store, we
     * leave the word to the reaper of our slot (km__probe_drop).  A stale
     * probe's outcome moved nothing (health is skipped): it ends as a probe
     * that never reports, PROBING -> FAILING, so the key is not left
     * PROBING with no probe out. */
    if (probe) {
        if (stale)
            km__probe_drop(k, si);
        else
            km__probe_clear(k);
    }
    /* In-flight -1: clear our flag (I1), then count the outcome, then free
     * the slot (I3): P4.  A reaper that finds this slot RELEASING with its flag
     * still set knows the outcome was not counted and counts it abandoned;
     * only a death between the flag and the counter store goes uncounted.
     * Plain stores in program order (fenced where stores may pass stores),
     * after the locked settle above. */
    ck_pr_store_8(&km__busy(e, l->key)[l->slot], 0);
    ck_pr_fence_store();
    if (!stale) {
        if (kind == KM_OUT_SUCCESS)
            KM__SLOT_ADD(ls->succeeded, 1);
        else
            KM__SLOT_ADD(ls->outcomes[kind], 1);
        /* The row's count (and the tokens settled above) after the
         * slot's, still before the slot is free: a kill between them
         * leaves the row short by one (km__mwin). */
        if (mr)
            km__mrow_outcome(mr, kind, actual);
    }
    km__slot_free(ls);
    if (pool)
        km__wake(e, pool);
    return stale ? KM_ESTALE : KM_OK;
}

