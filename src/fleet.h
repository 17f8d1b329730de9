/*
 * src/fleet.h - fleet-wide limits on the hot path: an admission spends the
 * key's credit, leased from a ledger every host shares (tools/sync/DESIGN.md
 * sections 2-3; the agent's side is src/fleet.c).  Inline: it runs in every
 * acquire of a fleet key, after the local admission.  Internal; not
 * installed.
 *
 * Why one compare-and-swap is enough
 * ----------------------------------
 * Credit is a plain sum of units the host may still admit, per (key,
 * window).  The ledger counts every unit it granted as reserved until the
 * host's next report commits what was spent (DESIGN.md section 2), so the
 * fleet's bound needs only this of a host:
 *   F1  A unit of credit is spent at most once: acquirers take it by a
 *       locked read-modify-write that checks the value it replaces (the
 *       minute pair by one cmpxchg16b, an hour/day pair likewise), and
 *       the agent adds (CAS) and voids (exchange) by locked RMWs too, so
 *       the word's history is a total order in which no decrement takes it
 *       below zero.
 *   F2  Credit is spent only while now < credit_deadline as loaded.  An
 *       acquirer preempted between that load and its CAS may spend a unit
 *       after the deadline: the agent sees it gone and reports it spent,
 *       and if the ledger reclaimed the host's credit meanwhile it committed
 *       it as spent already (DESIGN.md section 3).  The bound holds either
 *       way.
 *   F3  A request refused on one credit word gives back what it took on
 *       the others by fetch-add: exact, since credit is a sum (nothing
 *       compares against the taken value).
 *   F4  The fallback share is a GCRA of its own (fb_tat, the share's rate
 *       and burst), admitted only inside the window the agent published
 *       under the seqlock fb_seq, and only once credit has lapsed.
 * What the hot path does not do: a system call, a lock, a wait.  A key
 * without the fleet pays one load (fleet_mask, on the line of the limit
 * pairs the acquire just CASed) and one branch, in the caller.
 */
#ifndef KM_FLEET_H
#define KM_FLEET_H

#include <ck_pr.h>

#include "gcra.h"
#include "internal.h"

#define KM__MINUTE_WINS ((1u << KM_WIN_RPM) | (1u << KM_WIN_TPM))
/* Where no sync time is known (no agent yet, or it is late), a refused
 * acquire is told to look again after this long. */
#define KM__FLEET_POLL_NS (5 * KM__NS_PER_MS)

/* The out-of-line paths (src/fleet.c): hour/day credit, fallback share and
 * policy, and the refusal's bookkeeping.  Each returns 0 if refused (with
 * a->retry lowered), else 1 (km__fleet_lapsed: KM__FL_*).  ki is a fleet
 * block's index: a key's, or a model's (km__fmodel_ix, k NULL). */
int km__fleet_take_hd(km_env *e, uint32_t ki, km__key *k, uint32_t mask, km__adm *a);
int km__fleet_lapsed(km_env *e, uint32_t ki, km__key *k, uint32_t mask, km__adm *a);
int km__fleet_refuse(km_env *e, uint32_t ki, uint32_t mask, km__adm *a);

/* 16-byte CAS on a credit pair; on failure cur[] receives the current
 * value (a locked cmpxchg16b, as km__gcra_cas). */
static inline int km__cpair_cas(km__cpair *p, uint64_t cur[2], uint64_t set[2])
{
    return ck_pr_cas_64_2_value((uint64_t *)(void *)p, cur, set, cur);
}

/* The cost a window of the fleet takes from a request of `tokens`. */
static inline uint64_t km__fleet_cost(int w, uint32_t tokens)
{
    return km__window_is_requests(w) ? 1 : tokens;
}

/* The windows of *m in turn that a request of `tokens` costs something
 * (a token window costs nothing to a request of 0 tokens): the next one,
 * taken out of *m, with its cost; -1 when none is left. */
static inline int km__fleet_next(uint32_t *m, uint32_t tokens, uint64_t *cost)
{
    while (*m) {
        int w = __builtin_ctz(*m);
        *m &= *m - 1;
        if ((*cost = km__fleet_cost(w, tokens)) != 0)
            return w;
    }
    return -1;
}

/* Give back what km__fleet_admit's minute CAS took (F3). */
static inline void km__fleet_giveback_min(km__key *k, uint64_t r, uint64_t t)
{
    if (r)
        ck_pr_add_64(&k->credit.req, r); /* a sum: locked add, exact (F3) */
    if (t)
        ck_pr_add_64(&k->credit.tok, t);
}

/* How km__fleet_admit admitted: by credit, on the fallback share, or on
 * the local limits alone (policy local).  0: refused. */
enum { KM__FL_CREDIT = 1, KM__FL_FALLBACK = 2, KM__FL_LOCAL = 3 };

/* The local limits refused what km__fleet_admit admitted (how = its
 * result): credit given back exactly (F3); a fallback unit uncounted (its
 * GCRA charge stays: conservative). */
void km__fleet_undo(km_env *e, uint32_t ki, km__key *k, uint32_t mask, const km__adm *a, int how);

/* Admit one request of a fleet key (mask = k->fleet_mask, not 0), before
 * its local admission.  Returns KM__FL_* if admitted; 0 if refused, with
 * a->retry lowered and nothing of the fleet's taken. */
KM__HOT int km__fleet_admit(km_env *e, uint32_t ki, km__key *k, uint32_t mask, km__adm *a)
{
    /* A stale deadline only makes us conservative or spends credit the
     * ledger still reserves (F2): a plain load. */
    uint64_t dl = ck_pr_load_64(&k->credit_deadline);
    if (__builtin_expect(a->now >= dl, 0))
        return km__fleet_lapsed(e, ki, k, mask, a);
    uint64_t need_r = (mask >> KM_WIN_RPM) & 1, need_t = (mask >> KM_WIN_TPM) & 1 ? a->tokens : 0;
    if (need_r | need_t) {
        /* Both minute words by one 16-byte CAS (F1); the loads may tear,
         * the CAS compares both halves. */
        uint64_t cur[2] = {ck_pr_load_64(&k->credit.req), ck_pr_load_64(&k->credit.tok)}, set[2];
        do {
            if (cur[0] < need_r || cur[1] < need_t)
                return km__fleet_refuse(e, ki, mask, a);
            set[0] = cur[0] - need_r;
            set[1] = cur[1] - need_t;
        } while (!km__cpair_cas(&k->credit, cur, set));
        /* Low water: kick the agent for an early sync (a plain store on
         * its own line, see km__fhdr.kick). */
        if (__builtin_expect((need_r && (set[0] >> (k->low_lg[0] & 63)) == 0) ||
                                 (need_t && (set[1] >> (k->low_lg[1] & 63)) == 0), 0)) {
            km__fhdr *fh = km__fleet(e);
            if (fh && !ck_pr_load_32(&fh->kick))
                ck_pr_store_32(&fh->kick, 1);
        }
    }
    if (__builtin_expect(mask & ~KM__MINUTE_WINS, 0) && !km__fleet_take_hd(e, ki, k, mask, a)) {
        km__fleet_giveback_min(k, need_r, need_t);
        return 0;
    }
    return KM__FL_CREDIT;
}

/* ------------------------------------------------------ model windows
 *
 * A fleet key of a per_model pool has its model windows under the fleet
 * too (KM__FLEET_MODELS in its fleet_mask): model mi's credit, deadline
 * and fallback share live in the model's fleet block (src/layout.h,
 * "Model blocks"), and an acquire that names the model takes that credit
 * right after the key's own, by the same rules F1-F4 on the model's
 * words.  A refusal on the model gives back the key's credit (the
 * caller's undo: exact, F3). */

void km__fleet_undo_model(km_env *e, uint32_t ki, uint32_t mi, uint32_t mask, const km__adm *a,
                          int how);

/* Take (need_r, need_t) off a credit pair by one 16-byte CAS (F1): 1, or 0
 * with nothing taken when the pair does not cover it. */
static inline int km__cpair_take(km__cpair *p, uint64_t need_r, uint64_t need_t)
{
    /* The loads may tear, the CAS compares both halves. */
    uint64_t cur[2] = {ck_pr_load_64(&p->req), ck_pr_load_64(&p->tok)}, set[2];
    do {
        if (cur[0] < need_r || cur[1] < need_t)
            return 0;
        set[0] = cur[0] - need_r;
        set[1] = cur[1] - need_t;
    } while (!km__cpair_cas(p, cur, set));
    return 1;
}

/* Admit one request on model mi's windows `mask` (not 0: the model's
 * limited windows, as the acquire resolved them) of fleet key ki, after
 * km__fleet_admit and before the local admission.  Returns KM__FL_* if
 * admitted; 0 if refused, with a->retry lowered and nothing of the model's
 * taken. */
KM__HOT int km__fleet_admit_model(km_env *e, uint32_t ki, uint32_t mi, uint32_t mask, km__adm *a)
{
    uint32_t fi = km__fmodel_ix(e, ki, mi);
    km__fkey *fm = km__fkeys(e, fi);
    /* A plain load, as the key's deadline (F2). */
    if (__builtin_expect(a->now >= ck_pr_load_64(&fm->m_deadline), 0))
        return km__fleet_lapsed(e, fi, NULL, mask, a);
    uint64_t need_r = (mask >> KM_WIN_RPM) & 1, need_t = (mask >> KM_WIN_TPM) & 1 ? a->tokens : 0;
    if ((need_r | need_t) && !km__cpair_take(&fm->credit_min, need_r, need_t))
        return km__fleet_refuse(e, fi, mask, a);
    if (__builtin_expect(mask & ~KM__MINUTE_WINS, 0) && !km__fleet_take_hd(e, fi, NULL, mask, a)) {
        if (need_r)
            ck_pr_add_64(&fm->credit_min.req, need_r); /* a sum: locked add, exact (F3) */
        if (need_t)
            ck_pr_add_64(&fm->credit_min.tok, need_t);
        return 0;
    }
    return KM__FL_CREDIT;
}

#endif /* KM_FLEET_H */
