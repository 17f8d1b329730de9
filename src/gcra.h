/*
 * src/gcra.h - admission: GCRA limits shared by every process, inline (it
 * runs in every acquire and release).  Internal; not installed.
 *
 * The parameters of one limit and the single-process bound are in
 * src/limits.c.  This file holds the words of the limits (km__gcra, in
 * src/layout.h) and how an admission changes them; it knows nothing of
 * strategies, lease slots or processes.
 *
 * Why the limits hold for all processes together
 * ------------------------------------------------
 * Each limited window w of a key is one km__gcra pair {tat, reserved},
 * changed only by 16-byte CAS, so every admission decision is made on a
 * consistent pair and the CAS order is a total order of decisions.
 *
 * Request windows (rpm, rph, rpd) are plain GCRA: an admission at time `now`
 * sets tat := max(tat, now) + T if that is <= now + tau.  Nothing undoes a
 * committed request charge except a rollback whose CAS finds tat exactly as
 * its own admission left it (then nothing else was admitted in between and
 * restoring the old value is exact); otherwise the charge stays, which only
 * wastes capacity.  So the bound proved in src/limits.c holds.
 *
 * Token windows (tpm, tph, tpd) reserve at acquire: with the caller's
 * estimate e, reserved += e (fetch-add, returning r), then admit iff
 * max(tat, now) + (r + e)*T - now <= tau with tat loaded after the add,
 * else reserved -= e.  Every reservation that linearised before ours is in
 * r and tat only grows, so the check never under-estimates the deficit;
 * a refused attempt's brief reservation only makes others conservative.
 * At release the actual count a is committed as if charged at the lease's
 * start s and the reservation is dropped, in one CAS:
 *   tat := max(tat, s) + a*T,  reserved -= e.
 *   - While a lease is out its reservation never drains, so the key's
 *     deficit counted here is at least the provider's for that request
 *     (the provider drains it from s on).
 *   - Committing at s in any order gives a tat at least the one of
 *     committing in order of s (max-plus is monotone), i.e. at least the
 *     provider's view of the same requests.
 *   - A refund (a < e) or a cancel (a = 0) only lowers `reserved`, which
 *     nothing else drains: it is exact.  Subtracting from tat instead would
 *     credit back capacity that had already refilled, which is unsound.
 * Hence each admission sees a deficit at least the provider's, and with
 * a <= e the provider's bucket never goes below zero: the token_bucket and
 * sliding bounds of src/limits.c hold for what the provider counts.  An
 * actual count above the estimate is committed in full; only that excess
 * can exceed the bound, and it delays later admissions accordingly.
 *
 * A partial admission (window 1 charged, window 2 refuses) is rolled back:
 * token reservations exactly, request charges as above.
 */
#ifndef KM_GCRA_H
#define KM_GCRA_H

#include <ck_pr.h>

#include "internal.h"

/* The token windows (the others count requests). */
#define KM__TOKEN_WINS ((1u << KM_WIN_TPM) | (1u << KM_WIN_TPH) | (1u << KM_WIN_TPD))
/* How many there are, for arrays indexed by token window - KM_WIN_TPM. */
#define KM__TOKEN_WIN_COUNT (KM_WIN_TPD - KM_WIN_TPM + 1)
_Static_assert(KM__TOKEN_WINS == ((1u << KM__TOKEN_WIN_COUNT) - 1) << KM_WIN_TPM,
               "the token windows are the last, contiguous ones");
/* No time: a window that only a release or an operator can open. */
#define KM__NEVER UINT64_MAX
/* Poll hint for non-blocking callers where no clock time is known: a key
 * whose lease slots are all taken, or whose reservations alone exceed a
 * window's tolerance, frees up at a release, which wakes blocking callers;
 * a non-blocking caller is told to look again after this long. */
#define KM__POLL_BUSY_NS (1000 * 1000) /* 1 ms */

/* Read a limit pair.  The two loads may tear; every use ends in a 16-byte
 * CAS that compares both halves, so a torn read only costs a retry. */
static inline void km__gcra_load(km__gcra *g, uint64_t v[2])
{
    v[0] = ck_pr_load_64(&g->tat);
    v[1] = ck_pr_load_64(&g->reserved);
}

/* 16-byte CAS on a limit pair; on failure cur[] receives the current value.
 * A locked cmpxchg16b: a full barrier, ordering the pair against every
 * other access of the acquiring or releasing process. */
static inline int km__gcra_cas(km__gcra *g, uint64_t cur[2], uint64_t set[2])
{
    return ck_pr_cas_64_2_value((uint64_t *)(void *)g, cur, set, cur);
}

/* The limits one admission checks: a key's own windows, or one model's
 * windows on that key (per_model pools).  Both go through the same code. */
typedef struct km__lset {
    km__gcra *win;
    const uint64_t *T, *tau;
    uint32_t mask;
    uint32_t min_tok_burst;
} km__lset;

static inline km__lset km__key_lset(km__key *k)
{
    return (km__lset){k->win, k->emission_ns, k->tau_ns, k->win_mask, k->min_tok_burst};
}

/* Model mi's limits on key ki (k): the pool's model row md, or, when the
 * key has its own limits of that model (km__key.own_models), the key's
 * model row.  The bit is on the key's state line, which the acquire has
 * read already, so a key without own limits pays a bit test; both rows
 * are written only while acquirers are kept off the key (`updating`,
 * src/reconfig.c), so a plain load of the bit is enough. */
static inline km__lset km__model_lset(const km_env *e, const km__key *k, uint32_t ki,
                                      const km__model *md, uint32_t mi)
{
    km__mwin *mw = &km__mwins(e, ki)[mi];
    if (__builtin_expect((ck_pr_load_64(&k->own_models) >> mi) & 1, 0))
        return (km__lset){mw->win, mw->emission_ns, mw->tau_ns, mw->win_mask, mw->min_tok_burst};
    return (km__lset){mw->win, md->emission_ns, md->tau_ns, md->win_mask, md->min_tok_burst};
}

/* One admission attempt's clock and cost, and what a refusal says about
 * when to look again.  The acquirer's scan (src/acquire.c) embeds it. */
typedef struct km__adm {
    uint64_t now;
    uint64_t retry;       /* earliest time a refused window may admit,
                           * from the clock; KM__NEVER: none */
    uint64_t poll;        /* hint where only a release frees capacity */
    uint32_t tokens;      /* the request's estimate */
} km__adm;

/* A window refused: when may it admit?  Time drains tat down to the clock,
 * not below, so if the reservations of leases still out (plus this cost)
 * exceed the tolerance on their own, no time helps: only a release frees
 * capacity, and it wakes sleepers.  Otherwise the window admits at
 * tat + need - tau. */
KM__HOT void km__refused_at(km__adm *a, uint64_t tat, uint64_t need, uint64_t tau)
{
    if (need > tau)
        a->poll = km__min64(a->poll, KM__POLL_BUSY_NS);
    else
        a->retry = km__min64(a->retry, tat + need - tau);
}

/* Would the set admit `tokens` now, judging by plain loads?  A cheap filter
 * before claiming a lease slot; the atomics in km__admit decide.  Returns 1
 * if it looks admissible, else 0 with a->retry lowered. */
KM__HOT int km__precheck(const km__lset *ls, km__adm *a)
{
    uint32_t mask = ls->mask;
    uint64_t now = a->now;

    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        uint64_t cost = km__window_is_requests(w) ? 1 : a->tokens;
        if (cost == 0)
            continue;
        uint64_t tat = ck_pr_load_64(&ls->win[w].tat);
        uint64_t need = km__mul_sat(ck_pr_load_64(&ls->win[w].reserved) + cost, ls->T[w]);
        if (km__max64(tat, now) + need - now > ls->tau[w]) {
            km__refused_at(a, tat, need, ls->tau[w]);
            return 0;
        }
    }
    return 1;
}

/* Can the set never take `tokens` (more than a token window's burst)? */
KM__HOT int km__over_burst(const km__lset *ls, uint32_t tokens)
{
    return tokens > ls->min_tok_burst;
}

typedef struct km__undo {
    uint32_t done;
    uint64_t old_tat[KM_WIN_COUNT], new_tat[KM_WIN_COUNT];
} km__undo;

/* Undo the charges recorded in u (see the top of this file). */
static inline void km__admit_undo(const km__lset *ls, const km__undo *u, uint32_t tokens)
{
    uint32_t done = u->done;
    while (done) {
        int w = __builtin_ctz(done);
        done &= done - 1;
        if (km__window_is_requests(w)) {
            /* Exact only if nothing was admitted since: tat is still ours. */
            ck_pr_cas_64(&ls->win[w].tat, u->new_tat[w], u->old_tat[w]);
        } else {
            /* Reservations are exact to drop; a locked sub on the reserved
             * half is atomic against the 16-byte CAS on the pair. */
            ck_pr_sub_64(&ls->win[w].reserved, tokens);
        }
    }
}

/* Charge request windows and reserve token windows of a set, all or none.
 * Returns 1 if admitted (u records what to undo); 0 with a->retry lowered
 * and nothing left charged if a window refused. */
KM__HOT int km__admit(const km__lset *ls, km__adm *a, km__undo *u)
{
    uint32_t mask = ls->mask;
    uint64_t now = a->now;

    u->done = 0;
    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        km__gcra *g = &ls->win[w];
        uint64_t T = ls->T[w], tau = ls->tau[w];
        if (km__window_is_requests(w)) {
            /* Request windows never reserve: an 8-byte CAS on tat alone
             * (atomic against the 16-byte CAS on the pair). */
            uint64_t tat = ck_pr_load_64(&g->tat), nt;
            for (;;) {
                uint64_t base = km__max64(tat, now);
                if (base + T - now > tau) {
                    a->retry = km__min64(a->retry, tat + T - tau);
                    goto refuse;
                }
                nt = base + T;
                if (ck_pr_cas_64_value(&g->tat, tat, nt, &tat))
                    break;
            }
            u->old_tat[w] = tat;
            u->new_tat[w] = nt;
        } else {
            if (a->tokens == 0)
                continue;
            /* Reserve first, then check: the fetch-add returns every
             * reservation that linearised before ours, and tat loaded
             * after it is at least tat at that point (a token window's
             * tat only grows).  So the check over-estimates the deficit,
             * never under-estimates it; a refusal takes ours back. */
            uint64_t r = ck_pr_faa_64(&g->reserved, a->tokens);
            uint64_t tat = ck_pr_load_64(&g->tat);
            uint64_t need = km__mul_sat(r + a->tokens, T);
            if (km__max64(tat, now) + need - now > tau) {
                ck_pr_sub_64(&g->reserved, a->tokens);
                km__refused_at(a, tat, need, tau);
                goto refuse;
            }
        }
        u->done |= 1u << w;
    }
    return 1;
refuse:
    km__admit_undo(ls, u, a->tokens);
    return 0;
}

/* The latest time a settle moves tat to: 2^62 ns of CLOCK_MONOTONIC (146
 * years of uptime).  An actual count far above the estimate (up to 2^32
 * tokens, each T up to a day) would otherwise add without bound and, over
 * a few releases, wrap tat past 2^64 into the past, opening the window.
 * A key capped here owes decades; the bounds of src/limits.c ("Range")
 * rest on it. */
#define KM__TAT_CAP (UINT64_C(1) << 62)

static inline uint64_t km__tat_charge(uint64_t base, uint64_t units, uint64_t T)
{
    uint64_t d = km__mul_sat(units, T);
    return base >= KM__TAT_CAP - d ? km__max64(base, KM__TAT_CAP) : base + d;
}

/* Commit one set's token reservation: `actual` tokens charged as of the
 * lease's start, reservation dropped, in one 16-byte CAS per window (see
 * the top of this file). */
KM__HOT void km__settle_set(const km__lset *set, uint64_t start_ns, uint64_t reserved,
                            uint64_t actual, uint32_t mask)
{
    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        km__gcra *g = &set->win[w];
        uint64_t cur[2], nv[2];
        km__gcra_load(g, cur);
        do {
            nv[0] = actual ? km__tat_charge(km__max64(cur[0], start_ns), actual, set->T[w])
                           : cur[0];
            nv[1] = cur[1] - reserved;
        } while (!km__gcra_cas(g, cur, nv));
    }
}

#endif /* KM_GCRA_H */
