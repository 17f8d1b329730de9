/*
 * src/pool.c - pools and keys: initialisation, acquire, release, readers.
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
 * a refused attempt's brief reservation only makes others conservative.  At release the actual count a is
 * committed as if charged at the lease's start s and the reservation is
 * dropped, in one CAS:  tat := max(tat, s) + a*T,  reserved -= e.
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
 *
 * Memory ordering.  Every shared word is read and written with ck_pr
 * loads, stores and read-modify-writes, never plainly.  A single-word load
 * (state, cooldown_until, a limit word, an in-flight flag) needs no ordering of
 * its own: a stale value can only steer a choice, and every choice is
 * decided by a locked read-modify-write that sees the current value.  Where
 * one write must be seen before another, the comment at that point says
 * which: the lease phase before the limit atomics (ck_pr_fence_store_atomic,
 * free on x86-64 where locked instructions are full barriers), cooldown
 * before state, phase before owner when a slot is freed, and the pool's
 * waiter count after the locked instructions that free capacity.
 *
 * In-flight and crash consistency: see km__lease in shm/seg.h.  The
 * invariants kept at every instruction boundary are
 *   I1  the number of the key's in-flight flags set == number of its lease
 *       slots in phase ACTIVE or RELEASING-before-its-flag-clear, i.e.
 *       in-flight is exact;
 *   I2  for token window w, key.win[w].reserved == sum of `tokens` over the
 *       key's slots that reserved it and have not committed;
 *   I3  a slot with owner == 0 has phase FREE and its in-flight flag clear.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"
#include "usage.h"

#define KM__TOKEN_WINS ((1u << KM_WIN_TPM) | (1u << KM_WIN_TPH) | (1u << KM_WIN_TPD))
/* Poll hints for non-blocking callers where no clock time is known: a key
 * whose lease slots are all taken, or whose one probe lease is out, frees up
 * at a release, which wakes blocking callers; a non-blocking caller is told
 * to look again after this long.  A slot seen mid-release (its flag clear,
 * its owner not yet) is a few instructions from free: look again soon. */
#define KM__POLL_BUSY_NS (1000 * 1000)        /* 1 ms */
#define KM__POLL_PROBE_NS (100 * 1000 * 1000) /* 100 ms */
#define KM__RETRY_TRANSIENT_NS (50 * 1000)    /* 50 us */
#define KM__NEVER UINT64_MAX

/* The acquire and release fast paths are built from small helpers; forcing
 * them inline keeps the path free of calls (measured: ~15 ns per pair). */
#define KM__HOT static inline __attribute__((always_inline))

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

/* Move state from any of the states in `from_mask` (bit per KM__ST_*) to `to`. */
static void km__state_to(km__key *k, uint32_t from_mask, uint32_t to)
{
    uint32_t cur = ck_pr_load_32(&k->state);
    while (cur < 32 && (from_mask & (1u << cur)) && !ck_pr_cas_32_value(&k->state, cur, to, &cur))
        ;
}

#define KM__LIVE_STATES ((1u << KM__ST_ACTIVE) | (1u << KM__ST_FAILING) | (1u << KM__ST_PROBING))

/* A lease slot's fields, read with atomic loads: its owner writes them at
 * claim; a releasing thread of that process, a reaper or a checker in
 * another process reads them. */
typedef struct km__lview {
    uint32_t seq, tokens, key_gen, model;
    uint64_t start_ns;
    uint32_t res_mask;
} km__lview;

static inline km__lview km__lease_read(const km__lease *ls)
{
    return (km__lview){ck_pr_load_32(&ls->seq), ck_pr_load_32(&ls->tokens),
                       ck_pr_load_32(&ls->key_gen), ck_pr_load_32(&ls->model),
                       ck_pr_load_64(&ls->start_ns), ck_pr_load_32(&ls->res_mask)};
}

/* Slot counters have one writer at a time, the slot's owner (see km__lease
 * in seg.h), so load + store is an exact increment without a locked
 * instruction; both are atomic so a reader never sees a torn word. */
#define KM__SLOT_ADD(field, n) ck_pr_store_64(&(field), ck_pr_load_64(&(field)) + (n))

/* ------------------------------------------------------------ creation */

uint32_t km__hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/* Fill one set of GCRA parameters from parsed limits. */
static uint32_t km__limits_init(const km__limit_cfg *lc, uint64_t *T, uint64_t *tau,
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

static uint32_t km__min_tok_burst(uint32_t mask, const uint64_t *burst)
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
    k->win_mask = km__limits_init(kc->limits, k->emission_ns, k->tau_ns,
                                  k->limit, k->burst, k->mode);
    k->min_tok_burst = km__min_tok_burst(k->win_mask, k->burst);
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
    k->success_ppm = 1000000; /* healthy until shown otherwise */
}

/* Limit parameters of one set of windows from kc (set-limits). */
uint32_t km__key_limits_write(km__key *k, const km__limit_cfg *lc)
{
    k->win_mask = km__limits_init(lc, k->emission_ns, k->tau_ns, k->limit, k->burst, k->mode);
    k->min_tok_burst = km__min_tok_burst(k->win_mask, k->burst);
    return k->win_mask;
}

static const km__key_cfg *km__sort_keys; /* creation is single-threaded */
static int km__cmp_cost(const void *a, const void *b)
{
    const km__key_cfg *x = &km__sort_keys[*(const uint32_t *)a];
    const km__key_cfg *y = &km__sort_keys[*(const uint32_t *)b];
    uint64_t px = x->price_in + x->price_out, py = y->price_in + y->price_out;
    if (px != py)
        return px < py ? -1 : 1;
    return *(const uint32_t *)a < *(const uint32_t *)b ? -1 : 1; /* stable */
}

void km__pool_init(km_env *e, const km_config *cfg)
{
    km__hdr *h = e->seg.hdr;
    km__key *keys = km__keys(e);

    h->n_pools = cfg->n_pools;
    e->geom.n_pools = cfg->n_pools;
    h->n_keys = cfg->n_keys;
    for (uint32_t p = 0; p < cfg->n_pools; p++) {
        const km__pool_cfg *pc = &cfg->pools[p];
        km__pool *pool = &km__pools(e)[p];
        km__member *m = km__members(e, p, 0);
        km__model *md = km__models(e, p);
        uint64_t cum = 0;

        memcpy(pool->name, pc->name, sizeof(pool->name));
        pool->strategy = (uint32_t)pc->strategy;
        pool->view[0].n_keys = pc->n_keys;
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
        for (uint32_t i = 0; i < pc->n_models; i++) {
            memcpy(md[i].name, pc->models[i].name, sizeof(md[i].name));
            md[i].hash = km__hash(md[i].name);
            md[i].win_mask = km__limits_init(pc->models[i].limits, md[i].emission_ns,
                                             md[i].tau_ns, md[i].limit, md[i].burst, md[i].mode);
            md[i].min_tok_burst = km__min_tok_burst(md[i].win_mask, md[i].burst);
        }
        for (uint32_t j = 0; j < pc->n_keys; j++) {
            uint32_t ki = pc->first_key + j;
            const km__key_cfg *kc = &cfg->keys[ki];
            km__key *k = &keys[ki];

            km__key_write(e, k, p, kc);
            k->state = KM__ST_ACTIVE;
            k->gen = 1;
            cum += k->weight;
            m[j].key = ki;
            m[j].cum_weight = (uint32_t)cum;
            m[j].by_cost = ki;
        }
        km__sort_keys = cfg->keys;
        uint32_t *order = (uint32_t *)malloc((size_t)pc->n_keys * sizeof(uint32_t));
        if (order) { /* without memory the cost order stays config order */
            for (uint32_t j = 0; j < pc->n_keys; j++)
                order[j] = pc->first_key + j;
            qsort(order, pc->n_keys, sizeof(uint32_t), km__cmp_cost);
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

/* ------------------------------------------------------------ admission */

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

static inline km__lset km__model_lset(const km_env *e, uint32_t ki, const km__model *md,
                                      uint32_t mi)
{
    return (km__lset){km__mwins(e, ki)[mi].win, md->emission_ns, md->tau_ns, md->win_mask,
                      md->min_tok_burst};
}


typedef struct km__scan {
    uint64_t now;
    uint64_t retry;       /* earliest time a skipped usable key may admit,
                           * from the clock (cooldowns, limit windows) */
    uint64_t poll;        /* hint for keys only a release can free */
    uint32_t tokens;
    uint32_t usable;      /* keys that could admit without an operator */
    uint32_t cost_blocked;
    uint32_t soft_skipped; /* keys passed over for a soft budget */
    int allow_soft;        /* second pass: take keys over a soft budget */
    uint32_t model;        /* model index + 1, recorded in the lease; 0: none */
    const km__model *md;   /* per_model pools: the model whose limits apply */
} km__scan;

/* A window refused: when may it admit?  Time drains tat down to the clock,
 * not below, so if the reservations of leases still out (plus this cost)
 * exceed the tolerance on their own, no time helps: only a release frees
 * capacity, and it wakes sleepers.  Otherwise the window admits at
 * tat + need - tau. */
KM__HOT void km__refused_at(km__scan *sc, uint64_t tat, uint64_t need, uint64_t tau)
{
    if (need > tau)
        sc->poll = km__min64(sc->poll, KM__POLL_BUSY_NS);
    else
        sc->retry = km__min64(sc->retry, tat + need - tau);
}

/* Would the set admit `tokens` now, judging by plain loads?  A cheap filter
 * before claiming a lease slot; the atomics in km__admit decide.  Returns 1
 * if it looks admissible, else 0 with sc->retry lowered. */
KM__HOT int km__precheck(const km__lset *ls, km__scan *sc)
{
    uint32_t mask = ls->mask;
    uint64_t now = sc->now;

    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        uint64_t cost = km__window_is_requests(w) ? 1 : sc->tokens;
        if (cost == 0)
            continue;
        uint64_t tat = ck_pr_load_64(&ls->win[w].tat);
        uint64_t need = km__mul_sat(ck_pr_load_64(&ls->win[w].reserved) + cost, ls->T[w]);
        if (km__max64(tat, now) + need - now > ls->tau[w]) {
            km__refused_at(sc, tat, need, ls->tau[w]);
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

/* Undo the charges recorded in u (see the top of the file). */
static void km__admit_undo(const km__lset *ls, const km__undo *u, uint32_t tokens)
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
 * Returns 1 if admitted (u records what to undo); 0 with sc->retry lowered
 * and nothing left charged if a window refused. */
KM__HOT int km__admit(const km__lset *ls, km__scan *sc, km__undo *u)
{
    uint32_t mask = ls->mask;
    uint64_t now = sc->now;

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
                    sc->retry = km__min64(sc->retry, tat + T - tau);
                    goto refuse;
                }
                nt = base + T;
                if (ck_pr_cas_64_value(&g->tat, tat, nt, &tat))
                    break;
            }
            u->old_tat[w] = tat;
            u->new_tat[w] = nt;
        } else {
            if (sc->tokens == 0)
                continue;
            /* Reserve first, then check: the fetch-add returns every
             * reservation that linearised before ours, and tat loaded
             * after it is at least tat at that point (a token window's
             * tat only grows).  So the check over-estimates the deficit,
             * never under-estimates it; a refusal takes ours back. */
            uint64_t r = ck_pr_faa_64(&g->reserved, sc->tokens);
            uint64_t tat = ck_pr_load_64(&g->tat);
            uint64_t need = km__mul_sat(r + sc->tokens, T);
            if (km__max64(tat, now) + need - now > tau) {
                ck_pr_sub_64(&g->reserved, sc->tokens);
                km__refused_at(sc, tat, need, tau);
                goto refuse;
            }
        }
        u->done |= 1u << w;
    }
    return 1;
refuse:
    km__admit_undo(ls, u, sc->tokens);
    return 0;
}

/* ------------------------------------------------------------ lease slots */

/* Two adjacent 32-bit fields of a lease slot as one 8-byte word. */
static inline uint64_t *km__pair(uint32_t *first) { return (uint64_t *)(void *)first; }

/* A key's lease slots as the segment allows them: max_inflight is read from
 * shared memory, and a corrupted value must not index past the key's lease
 * row or flags (cap is cap_inflight). */
static inline uint32_t km__slots(const km__key *k, uint32_t cap)
{
    uint32_t m = k->max_inflight;
    return m < cap ? m : cap;
}

/* The flags are read eight at a time (the row is line-aligned and its
 * length a multiple of a line, so a word never leaves it).  Byte i of a
 * word is slot 8w + i on a little-endian CPU (shm/seg.h asserts one).
 * km__nonzero_bytes: the high bit of each byte set iff that byte is
 * non-zero, exactly (no carry crosses a byte). */
#define KM__B7F UINT64_C(0x7f7f7f7f7f7f7f7f)
#define KM__B80 UINT64_C(0x8080808080808080)
#define KM__B01 UINT64_C(0x0101010101010101) /* eight flags set */
static inline uint64_t km__nonzero_bytes(uint64_t x) { return (((x & KM__B7F) + KM__B7F) | x) & KM__B80; }

static inline uint64_t km__flag_word(const uint8_t *fl, uint32_t w)
{
    return ck_pr_load_64((const uint64_t *)(const void *)(fl + 8 * (size_t)w));
}

/* In flight on key ki: its flags set.  A flag is 0 or 1, so adding words
 * adds eight counters at once (none passes 255: at most KM_INFLIGHT_MAX / 8
 * words); no popcount, which baseline x86-64 lacks.  If any other bit is
 * set (a corrupted segment), each non-zero byte counts once instead. */
static uint32_t km__inflight(const km_env *e, uint32_t ki, const km__key *k)
{
    const uint8_t *fl = km__busy(e, ki);
    uint32_t slots = km__slots(k, e->geom.cap_inflight), full = slots / 8;
    uint64_t sum = 0, any = 0;
    _Static_assert(KM_INFLIGHT_MAX / 8 <= 255, "byte counters must not overflow");
    for (uint32_t w = 0; w < full; w++) {
        uint64_t x = km__flag_word(fl, w);
        sum += x;
        any |= x;
    }
    if (slots % 8) { /* the bytes past the last slot are not its slots */
        uint64_t x = km__flag_word(fl, full) & ((UINT64_C(1) << (8 * (slots % 8))) - 1);
        sum += x;
        any |= x;
    }
    if (__builtin_expect(any & ~KM__B01, 0)) { /* corrupted */
        uint32_t n = 0;
        for (uint32_t s = 0; s < slots; s++)
            n += ck_pr_load_8(&fl[s]) != 0;
        return n;
    }
    /* Sum the eight byte counters: pairs into 16-bit lanes, then those. */
    sum = (sum & UINT64_C(0x00ff00ff00ff00ff)) + ((sum >> 8) & UINT64_C(0x00ff00ff00ff00ff));
    return (uint32_t)((sum * UINT64_C(0x0001000100010001)) >> 48);
}

/* Try to claim slot s: its flag clear and its owner 0, CAS owner 0 -> ours.
 * Our flag store comes after the claim: it must not pass the previous
 * owner's clearing store (ordered on x86 by the locked CAS; a store fence
 * where atomics are relaxed). */
static inline int km__claim_at(km_env *e, km__lease *ls, uint32_t s)
{
    if (ck_pr_load_64(&ls[s].owner) != 0 || !ck_pr_cas_64(&ls[s].owner, 0, e->seg.tag))
        return 0;
    ck_pr_fence_atomic_store();
    return 1;
}

/* Claim a free slot among words [w, end) of key ki's flags, the first word
 * restricted to the byte mask `m`.  Returns the slot, or -1 if none was
 * free, -2 if a free one could not be claimed. */
static int km__claim_in(km_env *e, km__lease *ls, const uint8_t *fl, uint32_t slots,
                        uint32_t w, uint32_t end, uint64_t m)
{
    int seen = -1;
    for (; w < end; w++, m = ~UINT64_C(0)) {
        uint64_t x = km__flag_word(fl, w);
        if (x == KM__B01) /* eight in flight */
            continue;
        uint64_t z = ~km__nonzero_bytes(x) & KM__B80 & m; /* free slots */
        while (z) {
            uint32_t s = 8 * w + (uint32_t)__builtin_ctzll(z) / 8;
            z &= z - 1;
            if (s >= slots)
                break;
            /* Claim: only the owner touches the slot's fields and its flag
             * from here until it stores owner = 0 again. */
            if (km__claim_at(e, ls, s))
                return (int)s;
            seen = -2;
        }
    }
    return seen;
}

/* Claim a free lease slot of key ki, skipping slots whose flag says in
 * flight, a word of eight at a time.  Starts from a rotation that depends
 * on the process slot (one of 64 places), so processes do not all race for
 * the lowest free slot.  Returns the slot index; -1 if every slot is in
 * flight; -2 if a slot whose flag was clear was still owned (mid-release)
 * or lost to another claimer. */
static int km__slot_claim(km_env *e, uint32_t ki, km__key *k)
{
    km__lease *ls = km__leases(e, ki);
    const uint8_t *fl = km__busy(e, ki);
    uint32_t slots = km__slots(k, e->geom.cap_inflight), nw = (slots + 7) / 8;
    uint32_t rot = (e->seg.proc_slot * 7u) & 63u;
    if (rot >= slots && slots) /* within the slots: below their highest power of two */
        rot &= (1u << (31 - __builtin_clz(slots))) - 1;
    if (rot >= slots)
        return -1; /* no slots at all */
    /* The usual case, the slot at the rotation free: one byte, no scan. */
    if (!ck_pr_load_8(&fl[rot]) && km__claim_at(e, ls, rot))
        return (int)rot;
    /* From the rotation to the end, then from the start up to it. */
    uint64_t from = ~UINT64_C(0) << (8 * (rot % 8));
    int a = km__claim_in(e, ls, fl, slots, rot / 8, nw, from);
    if (a >= 0)
        return a;
    int b = rot ? km__claim_in(e, ls, fl, rot, 0, rot / 8 + 1, ~UINT64_C(0)) : -1;
    return b >= 0 ? b : a == -2 || b == -2 || !ck_pr_load_8(&fl[rot]) ? -2 : -1;
}

/* Give a claimed slot back: phase FREE, then owner 0 with release
 * semantics, so the next owner sees every field we wrote as settled. */
static inline void km__slot_free(km__lease *ls)
{
    ck_pr_store_32(&ls->phase, KM__LP_FREE);
    ck_pr_fence_store(); /* phase before owner: I3 */
    ck_pr_store_64(&ls->owner, 0);
}

/* ------------------------------------------------------------ acquire */

/* Per-thread state for choosing keys: random choices and the round-robin
 * cursor write no shared word.  A child after fork() starts afresh (see
 * km__atfork_child), or every worker forked from one master would pick the
 * same sequence of keys. */
static KM__TLS uint64_t km__rng;
static KM__TLS uint32_t km__rr_cursor;
static uint32_t km__pid; /* cached at load and in a forked child: no getpid() per seed */

static void km__atfork_child(void)
{
    km__rng = 0;
    km__rr_cursor = 0;
    km__pid = (uint32_t)getpid();
}

__attribute__((constructor)) static void km__register_atfork(void)
{
    km__pid = (uint32_t)getpid();
    pthread_atfork(NULL, NULL, km__atfork_child);
}

static uint64_t km__rand(void)
{
    uint64_t s = km__rng;
    if (s == 0)
        s = (km__now() ^ ((uint64_t)km__pid << 32) ^ (uint64_t)(uintptr_t)&km__rng) | 1;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    km__rng = s;
    return s * 0x2545f4914f6cdd1dull;
}

static inline uint32_t km__rand_below(uint32_t n)
{
    return (uint32_t)(((km__rand() >> 32) * (uint64_t)n) >> 32);
}

static inline int km__live(uint32_t st)
{
    return st == KM__ST_ACTIVE || st == KM__ST_FAILING || st == KM__ST_PROBING;
}

static inline int km__over_budget(const km__key *k)
{
    return k->budget_microusd && ck_pr_load_64(&k->spent_microusd) >= k->budget_microusd;
}

static void km__wake(const km_env *e, km__pool *pool);

/* Try to lease key ki.  Returns 1 and fills *out on success; 0 otherwise
 * (sc updated: usable keys lower sc->retry). */
static int km__try_key(km_env *e, uint32_t ki, km__scan *sc, km_lease *out)
{
    if (ki >= e->geom.cap_keys) /* a member list is shared memory: never trusted */
        return 0;
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state), probe = 0;
    km__lset kset = km__key_lset(k), mset;
    uint32_t mi = sc->model ? sc->model - 1 : 0;

    if (!km__live(st))
        return 0;
    if (ck_pr_load_32(&k->updating)) { /* limits being changed: briefly */
        sc->usable++;
        sc->retry = km__min64(sc->retry, sc->now + KM__POLL_BUSY_NS);
        return 0;
    }
    if (km__over_budget(k)) {
        if (k->budget_hard) { /* spent: the key is exhausted until enabled */
            km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
            return 0;
        }
        if (!sc->allow_soft) {
            sc->soft_skipped++;
            return 0;
        }
    }
    if (sc->md)
        mset = km__model_lset(e, ki, sc->md, mi);
    if (km__over_burst(&kset, sc->tokens) || (sc->md && km__over_burst(&mset, sc->tokens))) {
        sc->cost_blocked++;
        return 0;
    }
    sc->usable++;
    uint64_t cu = ck_pr_load_64(&k->cooldown_until);
    if (sc->now < cu) {
        sc->retry = km__min64(sc->retry, cu);
        return 0;
    }
    if (st == KM__ST_PROBING) {
        sc->poll = km__min64(sc->poll, KM__POLL_PROBE_NS);
        return 0;
    }
    /* No pre-check by plain loads here: admission refuses before it changes
     * any limit word, so a refused key costs one slot claim more, while a
     * pre-check would cost every admitted request ~20 instructions.  The
     * sampling strategies pre-check while choosing (km__eligible). */
    int s = km__slot_claim(e, ki, k);
    if (s == -1) { /* every slot taken: a release will wake sleepers */
        sc->poll = km__min64(sc->poll, KM__POLL_BUSY_NS);
        return 0;
    }
    if (s < 0) { /* a slot is being released or claimed right now */
        sc->retry = km__min64(sc->retry, sc->now + KM__RETRY_TRANSIENT_NS);
        return 0;
    }
    km__lease *ls = &km__leases(e, ki)[s];
    uint32_t seq = ck_pr_load_32(&ls->seq) + 1, gen = ck_pr_load_32(&k->gen);
    km__undo ku;
    /* The lease's fields, two adjacent 32-bit fields per 8-byte store (the
     * pairs are pinned in shm/seg.h; little-endian: the first field is the
     * low half).  Each reader loads the fields one by one, and a reader that
     * needs them settled (release, a reaper, check) acts on phase ACTIVE,
     * stored after a fence further down; one that sees ADMITTING uses only
     * owner, phase and seq.  The model: per_model windows settle by it
     * at release (a global pool's models have none), and usage events name
     * it; res_mask: which token windows the lease reserves. */
    ck_pr_store_64(km__pair(&ls->seq), seq | (uint64_t)sc->tokens << 32);
    ck_pr_store_64(&ls->start_ns, sc->now);
    ck_pr_store_64(km__pair(&ls->model), sc->model | (uint64_t)(kset.mask & KM__TOKEN_WINS) << 32);
    ck_pr_store_64(km__pair(&ls->key_gen), gen | (uint64_t)KM__LP_ADMITTING << 32);
    /* The phase store must be visible before any limit word changes, so a
     * reaper that finds our charges can find this slot.  The atomics below
     * are locked instructions, which order this store before them on x86;
     * the fence says so (and is a real fence elsewhere). */
    ck_pr_fence_store_atomic();

    if (st == KM__ST_FAILING) {
        /* The failure cooldown is over: one acquirer takes the probe. */
        if (!ck_pr_cas_32(&k->state, KM__ST_FAILING, KM__ST_PROBING))
            goto undo_slot;
        probe = 1;
    }
    if (!km__admit(&kset, sc, &ku))
        goto undo_probe;
    if (sc->md) {
        km__undo mu;
        if (!km__admit(&mset, sc, &mu)) {
            km__admit_undo(&kset, &ku, sc->tokens);
            goto undo_probe;
        }
    }
    /* Count the acquire while still ADMITTING: a reaper counts a slot it
     * finds ACTIVE as abandoned, so the acquire must be counted by then (a
     * death before ACTIVE leaves it counted as acquired only: short by one,
     * never over).  We own the slot: a plain increment is exact. */
    KM__SLOT_ADD(ls->acquired, 1);
    /* In-flight +1: our own flag (I1), a plain store (the byte has no other
     * writer), after the limit atomics and before the phase store.  On x86
     * the atomics are locked and stores keep their order, so both fences
     * are compiler barriers; where atomics are relaxed they are real. */
    ck_pr_fence_atomic_store();
    ck_pr_store_8(&km__busy(e, ki)[s], 1);
    ck_pr_fence_store();
    ck_pr_store_32(&ls->phase, KM__LP_ACTIVE);

    out->key = ki;
    out->key_gen = gen;
    out->slot = (uint32_t)s;
    out->seq = seq;
    out->pool = k->pool;
    out->tokens = sc->tokens;
    out->start_ns = sc->now;
    out->retry_at_ns = 0;
    out->model = sc->model;
    out->secret_len = km__min64(k->secret_len, KM_SECRET_MAX);
    /* The id in 16-byte blocks up to the block holding its NUL (the row is
     * NUL-padded, like the secret below): one block for most ids.  Bytes
     * after the NUL are unspecified (keymesh.h). */
    _Static_assert((KM_ID_MAX + 1) % 16 == 0 && (KM_SECRET_MAX + 1) % 16 == 0,
                   "id and secret are copied in 16-byte blocks");
    for (uint32_t i = 0; i < sizeof(out->key_id); i += 16) {
        memcpy(out->key_id + i, k->id + i, 16);
        if (k->id[i + 15] == '\0')
            break;
    }
    out->key_id[KM_ID_MAX] = '\0'; /* the segment's copy may be corrupted */
    /* Copy the secret in 16-byte blocks up to its NUL: the key's array is
     * NUL-padded past its length (written once from a zeroed config), and a
     * typical secret takes 3-10 vector moves instead of a call or 16. */
    for (uint32_t i = 0; i <= out->secret_len && i < sizeof(out->secret); i += 16)
        memcpy(out->secret + i, k->secret + i, 16);
    out->secret[out->secret_len] = '\0';
    out->meta_len = km__min64(k->meta_len, KM_META_MAX);
    if (out->meta_len)
        memcpy(out->meta, k->meta, sizeof(out->meta));
    out->meta[out->meta_len] = '\0';
    return 1;

undo_probe:
    if (probe && ck_pr_cas_32(&k->state, KM__ST_PROBING, KM__ST_FAILING) &&
        k->pool < e->geom.n_pools) /* sleepers saw PROBING: the next may probe */
        km__wake(e, &km__pools(e)[k->pool]);
undo_slot:
    km__slot_free(ls);
    return 0;
}

/* Cheap eligibility for scoring: usable now by state, cooldown and loads of
 * the limit words.  Nothing is claimed. */
static int km__eligible(km_env *e, uint32_t ki, km__scan *sc)
{
    if (ki >= e->geom.cap_keys)
        return 0;
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state);
    km__lset kset = km__key_lset(k);

    if ((st != KM__ST_ACTIVE && st != KM__ST_FAILING) || ck_pr_load_32(&k->updating) ||
        sc->now < ck_pr_load_64(&k->cooldown_until) || !km__precheck(&kset, sc))
        return 0;
    if (sc->md) {
        km__lset mset = km__model_lset(e, ki, sc->md, sc->model - 1);
        if (!km__precheck(&mset, sc))
            return 0;
    }
    return !km__over_budget(k) || sc->allow_soft;
}

/* Scores for the sampling strategies: lower is better. */
static uint64_t km__score(const km_env *e, uint32_t ki, int strategy)
{
    const km__key *k = &km__keys(e)[ki]; /* ki was checked by km__eligible */
    switch (strategy) {
    case KM_STRATEGY_LEAST_BUSY:
        return km__inflight(e, ki, k);
    case KM_STRATEGY_LATENCY:
        return ck_pr_load_64(&k->latency_ema_ns); /* 0: never sampled, try it */
    default: /* KM_STRATEGY_RELIABILITY */
        return 1000000u - km__min64(ck_pr_load_32(&k->success_ppm), 1000000u);
    }
}

/* Pools up to this size are scanned whole for the best score (bounded work);
 * larger ones sample two keys and take the better (power of two choices). */
#define KM__SCAN_MAX 16
/* Exploration for latency and reliability: 1 pick in 16 is a random
 * eligible key, so a key that recovered gets sampled again. */
#define KM__EXPLORE_MASK 15u

static int km__pick_scored(km_env *e, const km__member *m, uint32_t n, int strategy,
                           km__scan *sc, km_lease *out)
{
    int explore = strategy != KM_STRATEGY_LEAST_BUSY;

    if (n <= KM__SCAN_MAX) {
        uint32_t tried = 0, start = km__rand_below(n);
        for (uint32_t round = 0; round < n; round++) {
            uint32_t best = UINT32_MAX, n_ok = 0, ok[KM__SCAN_MAX];
            uint64_t best_score = UINT64_MAX;
            for (uint32_t j = 0; j < n; j++) {
                uint32_t i = (start + j) % n;
                if (tried & (1u << i))
                    continue;
                if (!km__eligible(e, m[i].key, sc)) {
                    /* Let km__try_key account for it (usable, retry, cost). */
                    tried |= 1u << i;
                    if (km__try_key(e, m[i].key, sc, out))
                        return 1;
                    continue;
                }
                ok[n_ok++] = i;
                uint64_t sc_i = km__score(e, m[i].key, strategy);
                if (sc_i < best_score) {
                    best_score = sc_i;
                    best = i;
                }
                /* Nothing beats 0 (the first minimum wins): an idle key
                 * ends the scan when no exploration follows. */
                if (sc_i == 0 && !explore)
                    break;
            }
            if (best == UINT32_MAX)
                return 0;
            if (explore && n_ok > 1 && (km__rand() & KM__EXPLORE_MASK) == 0)
                best = ok[km__rand_below(n_ok)];
            tried |= 1u << best;
            if (km__try_key(e, m[best].key, sc, out))
                return 1;
        }
        return 0;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        uint32_t a = km__rand_below(n), b = km__rand_below(n), pick;
        int ea = km__eligible(e, m[a].key, sc), eb = a != b && km__eligible(e, m[b].key, sc);
        if (!ea && !eb)
            continue;
        if (!ea || !eb || (explore && (km__rand() & KM__EXPLORE_MASK) == 0))
            pick = ea ? a : b;
        else
            pick = km__score(e, m[b].key, strategy) < km__score(e, m[a].key, strategy) ? b : a;
        if (km__try_key(e, m[pick].key, sc, out))
            return 1;
    }
    /* Sampling kept finding limited keys: most of the pool is limited, so
     * look at every key once (which also computes the earliest retry). */
    uint32_t start = km__rand_below(n);
    for (uint32_t j = 0; j < n; j++)
        if (km__try_key(e, m[(start + j) % n].key, sc, out))
            return 1;
    return 0;
}

/* Find a model of pool p by name: index, or -1. */
static int km__model_find(km_env *e, uint32_t p, const char *name)
{
    const km__pool *pool = &km__pools(e)[p];
    const km__model *md = km__models(e, p);
    uint32_t h = km__hash(name), n = km__min64(pool->n_models, e->geom.cap_models);
    for (uint32_t i = 0; i < n; i++)
        if (md[i].hash == h && strncmp(md[i].name, name, KM_ID_MAX + 1) == 0)
            return (int)i;
    return -1;
}

/* One pass over the pool in the order of `strategy`. */
KM__HOT int km__pass(km_env *e, const km__member *m, uint32_t n, int strategy, uint32_t start,
                    km__scan *sc, km_lease *out)
{
    switch (strategy) {
    case KM_STRATEGY_LEAST_BUSY:
    case KM_STRATEGY_LATENCY:
    case KM_STRATEGY_RELIABILITY:
        return km__pick_scored(e, m, n, strategy, sc, out);
    case KM_STRATEGY_COST:
        for (uint32_t j = 0; j < n; j++) /* cheapest first: the price index */
            if (km__try_key(e, m[j].by_cost, sc, out))
                return 1;
        return 0;
    default: /* round robin, weighted and fill-first differ in `start` */
        for (uint32_t j = 0; j < n; j++) {
            uint32_t i = start + j;
            if (i >= n)
                i -= n;
            if (km__try_key(e, m[i].key, sc, out))
                return 1;
        }
        return 0;
    }
}

/* Result of a failed scan.  *wake (for km_acquire_wait) is the clock time
 * at which a key may be admissible, KM__NEVER if only a release or an
 * operator can help; the caller's retry_at_ns also folds in the poll hint. */
static int km__finish(const km__scan *sc, km_lease *out, uint64_t *wake)
{
    out->retry_at_ns = 0;
    *wake = KM__NEVER;
    if (sc->usable == 0)
        return sc->cost_blocked ? KM_ECOST : KM_EUNAVAIL;
    *wake = sc->retry == KM__NEVER ? KM__NEVER : km__max64(sc->retry, sc->now);
    out->retry_at_ns = km__min64(*wake, sc->poll == KM__NEVER ? KM__NEVER : sc->now + sc->poll);
    if (out->retry_at_ns == KM__NEVER) /* nothing timed: look again soon */
        out->retry_at_ns = sc->now + KM__POLL_BUSY_NS;
    return KM_EAGAIN;
}

KM__HOT int km__acquire(km_env *e, const km_request *req, km_lease *out, uint64_t *wake);

KM_EXTERN int km_acquire(km_env *e, const km_request *req, km_lease *out)
{
    uint64_t wake;
    return km__acquire(e, req, out, &wake);
}

/* Key index of `id` among the n members of m, or KM_ENOKEY.  Removed keys
 * are not found. */
static int km__find_in(km_env *e, const km__member *m, uint32_t n, const char *id)
{
    const km__key *keys = km__keys(e);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t ki = ck_pr_load_32(&m[i].key);
        if (ki < e->geom.cap_keys && strncmp(keys[ki].id, id, KM_ID_MAX + 1) == 0 &&
            ck_pr_load_32(&keys[ki].state) < KM__ST_FREE)
            return (int)ki;
    }
    return KM_ENOKEY;
}

/* The choice of a key, inside an epoch section: the member list loaded here
 * is used throughout, and the key's row stays the key's until the section
 * ends (see shm/epoch.c). */
KM__HOT int km__acquire_in(km_env *e, uint32_t p, int strategy, const km_request *req,
                           km__scan *sc, km_lease *out, uint64_t *wake)
{
    km__pool *pool = &km__pools(e)[p];
    /* Pairs with the writer's release store of cur: the list and view it
     * names were written before (src/reconfig.c). */
    uint32_t b = ck_pr_load_32(&pool->cur) & 1;
    ck_pr_fence_load();
    const km__pview *v = &pool->view[b];
    const km__member *m = km__members(e, p, b);
    uint32_t n = ck_pr_load_32(&v->n_keys), start = 0;

    if (n == 0 || n > e->geom.cap_keys)
        return n == 0 ? KM_EUNAVAIL : KM_ECORRUPT;
    if (req->key_id) { /* pinned: that key or nothing */
        int ki = km__find_in(e, m, n, req->key_id);
        if (ki < 0)
            return ki;
        if (km__try_key(e, (uint32_t)ki, sc, out))
            return KM_OK;
        if (sc->soft_skipped) {
            sc->allow_soft = 1;
            if (km__try_key(e, (uint32_t)ki, sc, out))
                return KM_OK;
        }
        return km__finish(sc, out, wake);
    }
    switch (strategy) {
    case KM_STRATEGY_ROUND_ROBIN: {
        /* Each thread rotates its own cursor, seeded at a random key, so
         * round robin writes no shared word: a pool-wide cursor would be
         * the one line every acquire of every process fights over.  Every
         * thread spreads its requests evenly over the keys, so all of them
         * together do too.  The modulo is Lemire's fastmod (a 64-bit div
         * costs ~10 ns here). */
        if (km__rr_cursor == 0)
            km__rr_cursor = (uint32_t)(km__rand() >> 33) | 1;
        uint32_t c = km__rr_cursor++;
        start = n == 1 ? 0 : (uint32_t)(((unsigned __int128)(v->rr_magic * c) * n) >> 64);
        break;
    }
    case KM_STRATEGY_WEIGHTED: {
        uint64_t total = v->total_weight ? v->total_weight : 1;
        uint32_t r = (uint32_t)(km__rand() % total), lo = 0, hi = n - 1;
        while (lo < hi) { /* first member whose running sum exceeds r */
            uint32_t mid = lo + (hi - lo) / 2;
            if (m[mid].cum_weight > r)
                hi = mid;
            else
                lo = mid + 1;
        }
        start = lo;
        break;
    }
    default: /* fill_first starts at the first key; the others ignore start */
        break;
    }
    if (km__pass(e, m, n, strategy, start, sc, out))
        return KM_OK;
    if (sc->soft_skipped) { /* only keys over a soft budget are left */
        sc->allow_soft = 1;
        if (km__pass(e, m, n, strategy, start, sc, out))
            return KM_OK;
    }
    return km__finish(sc, out, wake);
}

KM__HOT int km__acquire_once(km_env *e, const km_request *req, km_lease *out, uint64_t *wake)
{
    if (!e || !req || !out || req->pool < 0)
        return KM_EINVAL;
    if ((uint32_t)req->pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    uint32_t p = (uint32_t)req->pool;
    km__pool *pool = &km__pools(e)[p];
    int strategy = req->strategy ? req->strategy : (int)pool->strategy;
    km__scan sc = {.now = km__now(), .retry = KM__NEVER, .poll = KM__NEVER,
                   .tokens = req->tokens};

    *wake = KM__NEVER;
    if (strategy <= KM_STRATEGY_DEFAULT || strategy >= KM_STRATEGY_COUNT)
        return KM_EINVAL;
    if (req->model && pool->n_models) {
        int mi = km__model_find(e, p, req->model);
        if (mi < 0)
            return KM_ENOMODEL;
        sc.model = (uint32_t)mi + 1;
        if (pool->model_mode == KM_MODELS_PER_MODEL)
            sc.md = &km__models(e, p)[mi];
    }
    if (pool->budget_microusd && pool->budget_hard &&
        ck_pr_load_64(&pool->spent_microusd) >= pool->budget_microusd)
        return KM_EBUDGET;

    km__rdr *r = km__rd_enter(&e->seg, sc.now);
    int rc = km__acquire_in(e, p, strategy, req, &sc, out, wake);
    km__rd_exit(r);
    return rc;
}

/* One acquire, and if nothing was admissible (KM_EAGAIN, KM_EUNAVAIL), a
 * second one after reaping: capacity may be held by processes that died.
 * The reap runs at most once a second per process (system calls, off the
 * path of any acquire that succeeds). */
static __attribute__((noinline)) int km__acquire_reaped(km_env *e, const km_request *req,
                                                         km_lease *out, uint64_t *wake, int rc)
{
    uint64_t now = km__now();
    if (now - ck_pr_load_64(&e->last_reap_ns) < KM__NS_PER_S)
        return rc;
    km_reap_report r;
    ck_pr_store_64(&e->last_reap_ns, now);
    km__reap_dead(e, &r, 0);
    return r.leases || r.recounted ? km__acquire_once(e, req, out, wake) : rc;
}

/* Inline in km_acquire only; the retry after a reap is out of line. */
KM__HOT int km__acquire(km_env *e, const km_request *req, km_lease *out, uint64_t *wake)
{
    int rc = km__acquire_once(e, req, out, wake);
    if (rc != KM_EAGAIN && rc != KM_EUNAVAIL)
        return rc;
    return km__acquire_reaped(e, req, out, wake, rc);
}

/* The same, out of line, for km_acquire_wait (whose attempts are not the
 * path a nanosecond is counted on). */
static __attribute__((noinline)) int km__acquire_slow(km_env *e, const km_request *req,
                                                       km_lease *out, uint64_t *wake)
{
    return km__acquire(e, req, out, wake);
}

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

KM_EXTERN int km_acquire_wait(km_env *e, const km_request *req, km_lease *out,
                              uint32_t timeout_ms)
{
    if (!e || !req || !out || req->pool < 0)
        return KM_EINVAL;
    if ((uint32_t)req->pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    km__pool *pool = &km__pools(e)[req->pool];
    uint64_t deadline = km__now() + (uint64_t)timeout_ms * 1000000u, wake;

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
        uint64_t until = km__min64(km__max64(wake, now + 1000), deadline);
        until = km__min64(until, now + (fenced ? KM__WAIT_IDLE_NS : KM__POLL_BUSY_NS));
        struct timespec ts = {.tv_sec = (time_t)((until - now) / KM__NS_PER_S),
                              .tv_nsec = (long)((until - now) % KM__NS_PER_S)};
        /* Shared futex (no FUTEX_PRIVATE_FLAG): wakers are other processes. */
        syscall(SYS_futex, &pool->wake_seq, FUTEX_WAIT, seq, &ts, NULL, 0);
    }
    ck_pr_dec_32(&pool->waiters);
    return rc;
}

/* ------------------------------------------------------------ release */

/* Commit one set's token reservation: `actual` tokens charged as of the
 * lease's start, reservation dropped, in one 16-byte CAS per window (see
 * the top of the file). */
KM__HOT void km__settle_set(const km__lset *set, const km__lview *lv, uint64_t actual,
                            uint32_t mask)
{
    uint64_t reserved = lv->tokens;

    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        km__gcra *g = &set->win[w];
        uint64_t cur[2], nv[2];
        km__gcra_load(g, cur);
        do {
            nv[0] = actual ? km__max64(cur[0], lv->start_ns) + km__mul_sat(actual, set->T[w])
                           : cur[0];
            nv[1] = cur[1] - reserved;
        } while (!km__gcra_cas(g, cur, nv));
    }
}

/* Settle a lease's tokens on its key and, if it charged one, its model. */
KM__HOT void km__settle(km_env *e, uint32_t ki, km__key *k, km__lease *ls,
                        const km__lview *lv, uint64_t actual)
{
    if (lv->tokens == 0 && actual == 0)
        return;
    km__lset kset = km__key_lset(k);
    /* The windows the lease reserved, at today's rates: a window removed
     * since (km_key_set_limits) has T = 0 and only drops the reservation. */
    km__settle_set(&kset, lv, actual, lv->res_mask & KM__TOKEN_WINS);
    if (lv->model && k->pool < e->geom.n_pools && lv->model <= e->geom.cap_models) {
        km__lset mset = km__model_lset(e, ki, &km__models(e, k->pool)[lv->model - 1],
                                       lv->model - 1);
        km__settle_set(&mset, lv, actual, mset.mask & KM__TOKEN_WINS);
    }
    KM__SLOT_ADD(ls->tokens_used, actual);
}

/* Add a request's spend to its key and pool; a hard key budget that is now
 * spent makes the key exhausted. */
static void km__spend(km__pool *pool, km__key *k, const km_outcome *o, uint64_t actual)
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
    uint64_t cost = (km__mul_sat(in, k->price_in) + km__mul_sat(out, k->price_out) + 999) / 1000;
    if (cost == 0)
        return;
    /* Statistics and budget checks: atomicity is all that is needed. */
    uint64_t spent = ck_pr_faa_64(&k->spent_microusd, cost) + cost;
    if (pool)
        ck_pr_add_64(&pool->spent_microusd, cost);
    if (k->budget_microusd && k->budget_hard && spent >= k->budget_microusd)
        km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
}

/* Wake the pool's sleepers, if any (see km_acquire_wait).  Called after
 * the stores that freed capacity.  A release may have made them with plain
 * stores only (an in-flight flag, a slot's owner): on x86 the load of
 * `waiters` below may pass them.  No fence here: a sleeper, after counting
 * itself, forces one on every CPU running an attached process
 * (km__barrier_all), which orders our stores before our load or makes them
 * visible to its next attempt.  A process that could not register for that
 * (rd_fence) fences here itself. */
static void km__wake(const km_env *e, km__pool *pool)
{
    if (__builtin_expect(e->seg.rd_fence, 0))
        ck_pr_fence_memory(); /* the freeing stores before the load of waiters */
    if (ck_pr_load_32(&pool->waiters) == 0)
        return;
    ck_pr_fence_store_atomic(); /* the freeing stores before the bump (free on x86) */
    ck_pr_inc_32(&pool->wake_seq);
    syscall(SYS_futex, &pool->wake_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void km__wake_pool(km_env *e, uint32_t pool) { km__wake(e, &km__pools(e)[pool]); }

static uint64_t km__backoff_ns(uint32_t base_s, uint32_t max_s, uint32_t n)
{
    uint64_t d = (uint64_t)base_s * KM__NS_PER_S, cap = (uint64_t)max_s * KM__NS_PER_S;
    for (uint32_t i = 1; i < n && i < 64 && d && d < cap; i++) /* bounded, whatever n */
        d *= 2;
    return km__min64(d, cap);
}

/* cooldown_until := max(cooldown_until, until). */
static void km__cool_until(km__key *k, uint64_t until)
{
    uint64_t cur = ck_pr_load_64(&k->cooldown_until);
    while (cur < until && !ck_pr_cas_64_value(&k->cooldown_until, cur, until, &cur))
        ;
}


/* Recent success rate, EMA with alpha 1/8 in parts per million.  Plain
 * load and store, like the latency EMA: a lost sample is tolerable. */
static void km__success_ema(km__key *k, int ok)
{
    int64_t cur = ck_pr_load_32(&k->success_ppm), target = ok ? 1000000 : 0;
    if (cur != target) /* a healthy key's line is not written */
        ck_pr_store_32(&k->success_ppm, (uint32_t)(cur + (target - cur) / 8));
}

static void km__health(km_env *e, km__key *k, const km__lease *ls, int kind,
                       const km_outcome *o)
{
    if (kind != KM_OUT_SUCCESS && kind != KM_OUT_CANCELLED)
        km__success_ema(k, 0);
    km__pool *pool = &km__pools(e)[k->pool < e->geom.n_pools ? k->pool : 0];
    uint64_t now;
    uint32_t n;

    switch (kind) {
    case KM_OUT_SUCCESS: {
        km__success_ema(k, 1);
        /* Write the shared line only when something changes. */
        if (ck_pr_load_32(&k->consec_fail))
            ck_pr_store_32(&k->consec_fail, 0);
        if (ck_pr_load_32(&k->consec_429))
            ck_pr_store_32(&k->consec_429, 0);
        km__state_to(k, (1u << KM__ST_PROBING) | (1u << KM__ST_FAILING), KM__ST_ACTIVE);
        uint64_t lat = o->latency_us >= 0 ? km__mul_sat((uint64_t)o->latency_us, 1000)
                                          : km__now() - ck_pr_load_64(&ls->start_ns);
        if (lat == 0)
            lat = 1; /* 0 means "no sample yet" */
        /* EMA, alpha = 0.2; the first sample seeds it.  A plain load and
         * store: two releases racing may lose one sample, which an average
         * tolerates; a CAS loop would cost a locked op on every release. */
        /* Both within 2^62, so the signed difference below cannot overflow
         * (the shared word may be corrupted; a latency, absurd). */
        uint64_t cur = km__min64(ck_pr_load_64(&k->latency_ema_ns), UINT64_C(1) << 62);
        lat = km__min64(lat, UINT64_C(1) << 62);
        uint64_t set = cur == 0 ? lat : (uint64_t)((int64_t)cur + ((int64_t)lat - (int64_t)cur) / 5);
        if (set != cur) /* a steady latency leaves the line unwritten */
            ck_pr_store_64(&k->latency_ema_ns, set ? set : 1);
        break;
    }
    case KM_OUT_RATE_LIMITED:
        n = ck_pr_faa_32(&k->consec_429, 1) + 1;
        now = km__now();
        if (o->retry_after_s > 0 && o->retry_after_s < 1e9)
            km__cool_until(k, now + (uint64_t)(o->retry_after_s * 1e9));
        else
            km__cool_until(k, now + km__backoff_ns(pool->cooldown_s, pool->max_cooldown_s, n));
        /* A 429 proves the key authenticates: a probe succeeded. */
        km__state_to(k, 1u << KM__ST_PROBING, KM__ST_ACTIVE);
        break;
    case KM_OUT_FAILURE:
        n = ck_pr_faa_32(&k->consec_fail, 1) + 1;
        if (n >= pool->max_failures || ck_pr_load_32(&k->state) == KM__ST_PROBING) {
            uint32_t over = n > pool->max_failures ? n - pool->max_failures + 1 : 1;
            now = km__now();
            /* Cooldown first, then the state: an acquirer that sees FAILING
             * also sees the cooldown (store order; the CAS is locked). */
            km__cool_until(k, now + km__backoff_ns(pool->cooldown_s, pool->max_cooldown_s, over));
            km__state_to(k, (1u << KM__ST_ACTIVE) | (1u << KM__ST_PROBING), KM__ST_FAILING);
        }
        break;
    case KM_OUT_AUTH:
        km__state_to(k, KM__LIVE_STATES, KM__ST_INVALID);
        break;
    case KM_OUT_QUOTA:
        km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
        break;
    default: /* CANCELLED: a probe that was never sent lets the next one go */
        km__state_to(k, 1u << KM__ST_PROBING, KM__ST_FAILING);
        break;
    }
}

/* Tighten window w to the provider's view: what it says remains, and when it
 * says the window is full again.  Only ever raises tat, so it can make the
 * key stricter than configured, never looser.  The provider's `remaining`
 * already excludes requests it has seen, which are our reserved leases, so
 * they are added back rather than counted twice. */
static void km__tighten(km__key *k, int w, uint64_t now, uint64_t remaining,
                        uint64_t reset_ms)
{
    if (!(k->win_mask & (1u << w)))
        return;
    km__gcra *g = &k->win[w];
    uint64_t T = k->emission_ns[w], tau = k->tau_ns[w];
    uint64_t res = ck_pr_load_64(&g->reserved);
    uint64_t give = km__mul_sat(km__min64(remaining, UINT64_MAX / 4) + res, T);
    uint64_t target = give < tau ? now + tau - give : 0;
    target = km__max64(target, now + km__mul_sat(km__min64(reset_ms, 86400000), 1000000));
    uint64_t tat = ck_pr_load_64(&g->tat);
    /* CAS on tat alone: atomic against the pair CAS; retried while lower. */
    while (tat < target && !ck_pr_cas_64_value(&g->tat, tat, target, &tat))
        ;
}

static void km__apply_view(km__key *k, const km_outcome *o)
{
    uint64_t now = km__now();
    if (o->view_flags & KM_VIEW_REQUESTS)
        km__tighten(k, KM_WIN_RPM, now, o->requests_remaining, o->requests_reset_ms);
    if (o->view_flags & KM_VIEW_TOKENS)
        km__tighten(k, KM_WIN_TPM, now, o->tokens_remaining, o->tokens_reset_ms);
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
    if (l->key >= e->geom.cap_keys || l->slot >= e->geom.cap_inflight)
        return KM_EINVAL;
    km__key *k = &km__keys(e)[l->key];
    km__lease *ls = &km__leases(e, l->key)[l->slot];

    /* Ours and still this lease?  owner is written only by us while we own
     * the slot, so these loads cannot race with a change we care about. */
    if (ck_pr_load_64(&ls->owner) != e->seg.tag || ck_pr_load_32(&ls->seq) != l->seq ||
        ck_pr_load_32(&ls->phase) != KM__LP_ACTIVE) {
        ck_pr_inc_64(&k->stale);
        return KM_ESTALE;
    }
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic(); /* phase before the limit CASes (see seg.h) */

    int kind = o->kind;
    km__lview lv = km__lease_read(ls);
    uint64_t actual = kind == KM_OUT_CANCELLED ? 0
                      : o->tokens < 0          ? lv.tokens
                      : (uint64_t)o->tokens > UINT32_MAX ? UINT32_MAX
                                               : (uint64_t)o->tokens;
    int stale = lv.key_gen != ck_pr_load_32(&k->gen);
    km__pool *pool = k->pool < e->geom.n_pools ? &km__pools(e)[k->pool] : NULL;
    if (!stale) {
        km__settle(e, l->key, k, ls, &lv, actual);
        km__health(e, k, ls, kind, o);
        if (o->view_flags)
            km__apply_view(k, o);
        km__spend(pool, k, o, actual);
        km__usage_put(e, km__rd_holds_row1(&e->seg), l->key, lv.key_gen, k->pool, lv.model, lv.start_ns, actual,
                      o->latency_us, kind);
    } else {
        ck_pr_inc_64(&k->stale);
    }
    /* In-flight -1: clear our flag (I1), then count the outcome, then free
     * the slot (I3).  A reaper that finds this slot RELEASING with its flag
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
    }
    km__slot_free(ls);
    if (pool)
        km__wake(e, pool);
    return stale ? KM_ESTALE : KM_OK;
}

/* Release an ACTIVE lease we hold or took from a dead owner: settle at the
 * estimate, count it abandoned, free the slot. */
static void km__abandon(km_env *e, uint32_t ki, km__key *k, km__lease *ls, uint32_t slot)
{
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic();
    km__lview lv = km__lease_read(ls);
    if (lv.key_gen == ck_pr_load_32(&k->gen)) {
        km__settle(e, ki, k, ls, &lv, lv.tokens);
        km__usage_put(e, km__rd_holds_row1(&e->seg), ki, lv.key_gen, k->pool, lv.model, lv.start_ns,
                      lv.tokens, -1, KM_OUT_COUNT);
    }
    /* A probe that will never report lets the next one go. */
    km__state_to(k, 1u << KM__ST_PROBING, KM__ST_FAILING);
    /* The flag, then the count, as in km_release: a reaper dying between
     * them leaves the lease counted short by one, never twice (the next
     * reaper counts a RELEASING slot abandoned only with its flag set). */
    ck_pr_store_8(&km__busy(e, ki)[slot], 0);
    ck_pr_fence_store();
    KM__SLOT_ADD(ls->abandoned, 1);
    ck_pr_fence_store(); /* the count before the slot is free (I3) */
    km__slot_free(ls);
    if (k->pool < e->geom.n_pools)
        km__wake(e, &km__pools(e)[k->pool]);
}

void km__release_all_owned(km_env *e, uint64_t owner)
{
    km__key *keys = km__keys(e);
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        km__lease *ls = km__leases(e, ki);
        for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
            if (ck_pr_load_64(&ls[s].owner) == owner &&
                ck_pr_load_32(&ls[s].phase) == KM__LP_ACTIVE)
                km__abandon(e, ki, &keys[ki], &ls[s], s);
    }
}

/* The owner value a reaper writes into slots it takes over: the top bit and
 * its own tag, or, while it attaches and has no tag yet, bit 62 and its pid
 * (a tag never has bit 62 set), so two reapers never share a mark. */
static uint64_t km__reaper_mark(const km_env *e)
{
    return (UINT64_C(1) << 63) |
           (e->seg.tag ? e->seg.tag : (UINT64_C(1) << 62) | (uint64_t)(uint32_t)getpid());
}

/* Is the process behind a slot's owner value alive?  A tag is alive while
 * its process-table entry still holds it and that process runs (a process
 * that detached released its leases first, so a lease whose tag is gone from
 * the table is orphaned).  A reaper's mark is alive while that reaper is.
 * Answers are cached for one reap: each distinct owner costs one check. */
typedef struct km__live_cache {
    uint32_t n;
    uint64_t owner[64];
    uint8_t alive[64];
} km__live_cache;

static int km__owner_alive(km_env *e, uint64_t owner, km__live_cache *c)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (c->owner[i] == owner)
            return c->alive[i];
    int alive;
    uint64_t tag = owner & ~(UINT64_C(1) << 63);
    if (tag == e->seg.tag) {
        alive = 1;
    } else if ((owner >> 62) == 3) { /* an attaching reaper: its pid */
        alive = km__pid_exists((uint32_t)owner);
    } else {
        alive = km__proc_tag_live(&e->seg, tag);
    }
    if (c->n < 64) {
        c->owner[c->n] = owner;
        c->alive[c->n++] = (uint8_t)alive;
    }
    return alive;
}

/*
 * Recount after a death mid-operation.  A slot whose dead owner left it
 * ADMITTING or RELEASING may or may not have changed each window's
 * `reserved` (an anonymous sum), so the reaper takes every such slot of the
 * key over and sets every token window's reserved to what the key's ACTIVE
 * slots account for.  That sum must be read while nothing moves: the reaper
 * scans the key's slots (owner, seq, phase), waits while a live process has
 * one mid-operation, reads the reserved words, scans again, and accepts only
 * an unchanged scan.  Every acquirer and releaser changes its slot's phase
 * before it touches a reserved word (phase store, then a locked
 * instruction), so an unchanged scan means no reserved word changed in
 * between.  Each window is then set by CAS from the value read: a
 * reservation that lands after the scan makes the CAS fail, and the recount
 * starts again.  A dead RELEASING slot's request was sent, so its estimate is
 * committed to tat as well (possibly a second time: conservative).  Request
 * windows are left as they are (also conservative).  If live processes keep
 * the key moving past KM__RECOUNT_TRIES scans, the slots go back to their
 * dead owners for a later reap.
 */
#define KM__RECOUNT_TRIES 2000

/* One scan of a key's slots.  Returns 0 if a live operation is in flight;
 * else the signature of every slot's (owner, phase, seq), and in sum[] the
 * tokens of the slots ACTIVE in this very scan (per key window set, and per
 * model in msum[] when n_models > 0).  The sums must come from the scan that
 * is validated: a slot that turns RELEASING after the scan would otherwise be
 * left out while its tokens are still reserved. */
static int km__scan_slots(const km__lease *ls, uint32_t n, uint64_t mine, uint64_t *sig,
                          uint64_t *sum, uint64_t *msum, uint32_t n_models)
{
    uint64_t h = 0xcbf29ce484222325ull, tot[KM_WIN_COUNT] = {0};
    if (msum && n_models)
        memset(msum, 0, sizeof(uint64_t) * n_models);
    for (uint32_t s = 0; s < n; s++) {
        uint64_t o = ck_pr_load_64(&ls[s].owner);
        uint32_t ph = ck_pr_load_32(&ls[s].phase), q = ck_pr_load_32(&ls[s].seq);
        if (o && o != mine && (ph == KM__LP_ADMITTING || ph == KM__LP_RELEASING))
            return 0; /* a live operation in flight */
        if (o && ph == KM__LP_ACTIVE) {
            km__lview lv = km__lease_read(&ls[s]);
            for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
                if (lv.res_mask & (1u << w))
                    tot[w] += lv.tokens;
            if (msum && lv.model && lv.model <= n_models)
                msum[lv.model - 1] += lv.tokens;
        }
        /* Each field its own FNV step: no two changes cancel out. */
        h = (h ^ o) * 0x100000001b3ull;
        h = (h ^ ph) * 0x100000001b3ull;
        h = (h ^ q) * 0x100000001b3ull;
    }
    *sig = h;
    if (sum)
        memcpy(sum, tot, sizeof(tot));
    return 1;
}

static int km__recount_key(km_env *e, uint32_t ki, km__live_cache *lc, int repair,
                           int *changed)
{
    km__key *k = &km__keys(e)[ki];
    km__lease *ls = km__leases(e, ki);
    uint32_t n = e->geom.cap_inflight, taken = 0, done = 0;
    uint64_t mine = km__reaper_mark(e);
    uint8_t releasing[KM_INFLIGHT_MAX] = {0};
    uint64_t prev[KM_INFLIGHT_MAX];
    const km__pool *pool = k->pool < e->geom.n_pools ? &km__pools(e)[k->pool] : NULL;
    uint32_t n_models = pool && pool->model_mode == KM_MODELS_PER_MODEL
                            ? (uint32_t)km__min64(pool->n_models, e->geom.cap_models) : 0;
    km__lset kset = km__key_lset(k);

    for (uint32_t s = 0; s < n; s++) {
        uint64_t o = ck_pr_load_64(&ls[s].owner);
        uint32_t ph = ck_pr_load_32(&ls[s].phase);
        if (!o || o == mine || (ph != KM__LP_ADMITTING && ph != KM__LP_RELEASING) ||
            km__owner_alive(e, o, lc) || !ck_pr_cas_64(&ls[s].owner, o, mine))
            continue;
        prev[s] = o;
        taken++;
        if (ph == KM__LP_RELEASING) { /* commit the estimate; reservation below */
            releasing[s] = 1;
            uint32_t mask = ck_pr_load_32(&ls[s].res_mask) & KM__TOKEN_WINS;
            while (mask) {
                int w = __builtin_ctz(mask);
                mask &= mask - 1;
                uint64_t tat = ck_pr_load_64(&kset.win[w].tat), nt;
                do
                    nt = km__max64(tat, ck_pr_load_64(&ls[s].start_ns)) +
                         km__mul_sat(ck_pr_load_32(&ls[s].tokens), kset.T[w]);
                while (!ck_pr_cas_64_value(&kset.win[w].tat, tat, nt, &tat));
            }
        }
    }
    if (!taken && !repair)
        return 1;
    /* A repair with nothing taken waits less for a busy key: it has no
     * dead slots to settle, only a drift to look for. */
    int tries = taken ? KM__RECOUNT_TRIES : KM__RECOUNT_TRIES / 20;
    for (int t = 0; t < tries && !done; t++) {
        uint64_t sig1, sig2, rk[KM_WIN_COUNT], sk[KM_WIN_COUNT] = {0}, tot[KM_WIN_COUNT];
        uint64_t rm[KM_MODELS_MAX][3], sm[KM_MODELS_MAX][3], msum[KM_MODELS_MAX];
        if (!km__scan_slots(ls, n, mine, &sig1, NULL, NULL, 0)) {
            sched_yield();
            continue;
        }
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
            rk[w] = ck_pr_load_64(&k->win[w].reserved);
        for (uint32_t m = 0; m < n_models; m++)
            for (int w = 0; w < 3; w++)
                rm[m][w] = ck_pr_load_64(&km__mwins(e, ki)[m].win[KM_WIN_TPM + w].reserved);
        if (!km__scan_slots(ls, n, mine, &sig2, tot, msum, n_models) || sig1 != sig2)
            continue;
        /* The sums of the validated scan itself (see km__scan_slots). */
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
            sk[w] = tot[w];
        for (uint32_t m = 0; m < n_models; m++)
            for (int w = 0; w < 3; w++)
                sm[m][w] = msum[m];
        done = 1;
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD && done; w++) {
            if (rk[w] == sk[w]) /* a removed window too: its leases still count */
                continue;
            if (ck_pr_cas_64(&k->win[w].reserved, rk[w], sk[w]))
                *changed = 1;
            else
                done = 0;
        }
        for (uint32_t m = 0; m < n_models && done; m++)
            for (int w = 0; w < 3 && done; w++) {
                km__gcra *g = &km__mwins(e, ki)[m].win[KM_WIN_TPM + w];
                if (rm[m][w] != sm[m][w]) {
                    if (ck_pr_cas_64(&g->reserved, rm[m][w], sm[m][w]))
                        *changed = 1;
                    else
                        done = 0;
                }
            }
    }
    for (uint32_t s = 0; s < n; s++) {
        if (ck_pr_load_64(&ls[s].owner) != mine)
            continue;
        if (!done) { /* give the slot back to its dead owner: a later reap retries */
            ck_pr_store_64(&ls[s].owner, prev[s]);
            continue;
        }
        km__state_to(k, 1u << KM__ST_PROBING, KM__ST_FAILING);
        /* Died mid-release with its flag still set: counted as acquired, not
         * yet as released, so abandoned.  Died mid-acquire: the lease was
         * never handed out (nor counted as acquired) and counts nowhere. */
        uint8_t *fl = &km__busy(e, ki)[s];
        if (releasing[s] && ck_pr_load_8(fl))
            KM__SLOT_ADD(ls[s].abandoned, 1);
        ck_pr_store_8(fl, 0);
        ck_pr_fence_store(); /* the flag before the slot is free (I3) */
        km__slot_free(&ls[s]);
    }
    if (done && pool)
        km__wake(e, (km__pool *)pool);
    return (int)done;
}

uint64_t km__count_owned(km_env *e, uint64_t owner)
{
    uint64_t n = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        const km__lease *ls = km__leases(e, ki);
        for (uint32_t s = 0; s < e->geom.cap_inflight; s++)
            n += (ck_pr_load_64(&ls[s].owner) & ~(UINT64_C(1) << 63)) == owner;
    }
    return n;
}

/* Release every lease slot whose owner is not alive: a dead process, a dead
 * reaper's mark, or a tag no longer in the process table.  ACTIVE leases are
 * released at their estimates; slots left mid-operation are resolved by a
 * recount of their key. */
void km__reap_leases(km_env *e, km_reap_report *r, int repair)
{
    km__key *keys = km__keys(e);
    uint64_t mine = km__reaper_mark(e);
    km__live_cache lc = {0};

    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        km__lease *ls = km__leases(e, ki);
        int transient = 0;
        for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
            uint64_t o = ck_pr_load_64(&ls[s].owner);
            if (!o || o == mine || km__owner_alive(e, o, &lc))
                continue;
            uint32_t ph = ck_pr_load_32(&ls[s].phase);
            if (ph == KM__LP_ACTIVE) {
                /* CAS from the dead owner's value: of several reapers one
                 * takes the slot; the CAS (a full barrier) also orders our
                 * mark before the abandon's phase store. */
                if (ck_pr_cas_64(&ls[s].owner, o, mine)) {
                    km__abandon(e, ki, &keys[ki], &ls[s], s);
                    r->leases++;
                }
            } else if (ph == KM__LP_FREE) {
                /* Died between claiming the slot and writing its phase:
                 * nothing was charged yet. */
                ck_pr_cas_64(&ls[s].owner, o, 0);
            } else {
                transient = 1;
            }
        }
        int changed = 0;
        if (transient) {
            if (km__recount_key(e, ki, &lc, 0, &changed))
                r->recounted++;
            else
                r->pending++;
        } else if (repair && ck_pr_load_32(&keys[ki].state) != KM__ST_FREE) {
            /* An explicit reap also checks that reservations match the
             * key's live leases and sets right any drift, counting it: it
             * should be 0.  (Drift was once caused by summing the leases
             * outside the validated scan; see km__scan_slots.) */
            if (km__recount_key(e, ki, &lc, 1, &changed) && changed)
                r->repaired++;
        }
    }
}

/* ------------------------------------------------------------ readers */

/* Fill limit info for one set of windows. */
static void km__limit_info(const km__gcra *win, const uint64_t *T, const uint64_t *tau,
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
    out->n_keys = h->n_keys;
    out->n_pools = e->geom.n_pools;
    out->n_procs = ck_pr_load_32(&h->n_procs);
    out->size_bytes = h->seg_size;
    out->created_wall_ns = h->created_wall_ns;
    return KM_OK;
}

KM_EXTERN int km_pool_find(km_env *e, const char *name)
{
    if (!e || !name)
        return KM_EINVAL;
    for (uint32_t p = 0; p < e->geom.n_pools; p++)
        if (strncmp(km__pools(e)[p].name, name, KM_ID_MAX + 1) == 0)
            return (int)p;
    return KM_ENOPOOL;
}

KM_EXTERN int km_pool_info_get(km_env *e, int pool, km_pool_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
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
    out->spent_microusd = ck_pr_load_64(&p->spent_microusd);
    out->waiters = ck_pr_load_32(&p->waiters);
    return KM_OK;
}

KM_EXTERN int km_pool_key(km_env *e, int pool, uint32_t i)
{
    if (!e)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    uint32_t b = ck_pr_load_32(&p->cur) & 1;
    ck_pr_fence_load(); /* cur before the list it names */
    if (i >= ck_pr_load_32(&p->view[b].n_keys) || i >= e->geom.cap_keys)
        return KM_ENOKEY;
    uint32_t ki = ck_pr_load_32(&km__members(e, (uint32_t)pool, b)[i].key);
    return ki < e->geom.cap_keys ? (int)ki : KM_ECORRUPT;
}

KM_EXTERN int km_key_find(km_env *e, int pool, const char *id)
{
    if (!e || !id)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    uint32_t b = ck_pr_load_32(&p->cur) & 1;
    ck_pr_fence_load(); /* cur before the list it names */
    int rc = km__find_in(e, km__members(e, (uint32_t)pool, b),
                         km__min64(ck_pr_load_32(&p->view[b].n_keys), e->geom.cap_keys), id);
    km__rd_exit(r);
    return rc;
}

KM_EXTERN int km_key_info_get(km_env *e, uint32_t key, km_key_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
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
    out->pool = k->pool;
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
    out->latency_ema_us = ck_pr_load_64(&k->latency_ema_ns) / 1000;
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
    out->spent_microusd = ck_pr_load_64(&k->spent_microusd);
    memcpy(out->meta, k->meta, KM_META_MAX);
    km__limit_info(k->win, k->emission_ns, k->tau_ns, k->limit, k->burst, k->mode,
                   k->win_mask, now, out->limits);
    return KM_OK;
}

KM_EXTERN int km_model_info_get(km_env *e, int pool, uint32_t i, uint32_t key,
                                char name[KM_ID_MAX + 1], km_limit_info limits[KM_WIN_COUNT])
{
    if (!e)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->geom.n_pools)
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    if (i >= p->n_models || i >= e->geom.cap_models)
        return KM_ENOMODEL;
    const km__model *md = &km__models(e, (uint32_t)pool)[i];
    if (name) {
        memcpy(name, md->name, KM_ID_MAX + 1);
        name[KM_ID_MAX] = '\0'; /* the segment's copy may lack it */
    }
    if (limits) {
        if (key >= e->geom.cap_keys || km__keys(e)[key].pool != (uint32_t)pool)
            return KM_ENOKEY;
        uint32_t mask = p->model_mode == KM_MODELS_PER_MODEL ? md->win_mask : 0;
        km__limit_info(km__mwins(e, key)[i].win, md->emission_ns, md->tau_ns, md->limit,
                       md->burst, md->mode, mask, km__now(), limits);
    }
    return KM_OK;
}

KM_EXTERN int km_key_set_state(km_env *e, uint32_t key, int state)
{
    if (!e || (state != KM_KEY_ACTIVE && state != KM_KEY_DISABLED))
        return KM_EINVAL;
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
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
