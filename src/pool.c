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
 * In-flight and crash consistency: see km__lease in shm/seg.h.  The
 * invariants kept at every instruction boundary are
 *   I1  popcount(key.busy) == number of the key's lease slots in phase
 *       ACTIVE or RELEASING-before-its-bit-clear, i.e. in-flight is exact;
 *   I2  for token window w, key.win[w].reserved == sum of `tokens` over the
 *       key's slots that reserved it and have not committed;
 *   I3  a slot with owner == 0 has phase FREE and its busy bit clear.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"

#define KM__TOKEN_WINS ((1u << KM_WIN_TPM) | (1u << KM_WIN_TPH) | (1u << KM_WIN_TPD))
#define KM__REQ_WINS ((1u << KM_WIN_RPM) | (1u << KM_WIN_RPH) | (1u << KM_WIN_RPD))
/* Retry hints where no clock time is known: a key whose lease slots are all
 * taken, or whose one probe lease is out, may free up at any release. */
#define KM__RETRY_BUSY_NS (1000 * 1000)       /* 1 ms */
#define KM__RETRY_PROBE_NS (100 * 1000 * 1000) /* 100 ms */
#define KM__NEVER UINT64_MAX

static inline uint64_t km__max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t km__min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static inline uint64_t km__mul_sat(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? (UINT64_MAX >> 2) : r;
}

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

/* ------------------------------------------------------------ creation */

void km__pool_init(km_env *e, const km_config *cfg)
{
    km__hdr *h = e->hdr;
    km__key *keys = km__keys(e);

    h->n_pools = cfg->n_pools;
    h->n_keys = cfg->n_keys;
    for (uint32_t p = 0; p < cfg->n_pools; p++) {
        const km__pool_cfg *pc = &cfg->pools[p];
        km__pool *pool = &km__pools(e)[p];
        km__member *m = km__members(e, p);
        uint64_t cum = 0;

        memcpy(pool->name, pc->name, sizeof(pool->name));
        pool->strategy = (uint32_t)pc->strategy;
        pool->n_keys = pc->n_keys;
        pool->cooldown_s = pc->cooldown_s;
        pool->max_cooldown_s = pc->max_cooldown_s;
        pool->max_failures = pc->max_failures;
        for (uint32_t j = 0; j < pc->n_keys; j++) {
            uint32_t ki = pc->first_key + j;
            const km__key_cfg *kc = &cfg->keys[ki];
            km__key *k = &keys[ki];

            for (int w = 0; w < KM_WIN_COUNT; w++) {
                uint64_t T, tau, burst;
                if (kc->limits[w].limit == 0 ||
                    km__limit_gcra(&kc->limits[w], km__window_period_ns(w), &T, &tau, &burst))
                    continue; /* the parser already refused unrealisable limits */
                k->emission_ns[w] = T;
                k->tau_ns[w] = tau;
                k->limit[w] = kc->limits[w].limit;
                k->burst[w] = burst;
                k->mode[w] = (uint8_t)kc->limits[w].mode;
                k->win_mask |= 1u << w;
            }
            k->weight = kc->weight ? kc->weight : 1;
            k->pool = p;
            k->max_inflight = kc->max_inflight && kc->max_inflight <= h->cap_inflight
                                  ? kc->max_inflight : h->cap_inflight;
            memcpy(k->id, kc->id, sizeof(k->id));
            memcpy(k->secret, kc->secret, sizeof(k->secret));
            k->secret_len = kc->secret_len;
            k->state = KM__ST_ACTIVE;
            k->gen = 1;
            cum += k->weight;
            m[j].key = ki;
            m[j].cum_weight = (uint32_t)cum;
        }
        pool->total_weight = cum;
        /* ceil(2^64 / n); wraps to 0 for n == 1, which fastmod maps to 0. */
        pool->rr_magic = pc->n_keys ? UINT64_MAX / pc->n_keys + 1 : 0;
    }
    for (uint32_t ki = cfg->n_keys; ki < h->cap_keys; ki++)
        keys[ki].state = KM__ST_FREE;
}

/* ------------------------------------------------------------ admission */

typedef struct km__scan {
    uint64_t now;
    uint64_t retry;     /* earliest time a skipped usable key may admit */
    uint32_t tokens;
    uint32_t usable;    /* keys that could admit without an operator */
    uint32_t cost_blocked;
} km__scan;

/* Would key k admit `tokens` now, judging by plain loads?  A cheap filter
 * before claiming a lease slot; the CASes in km__admit decide.  Returns 1 if
 * it looks admissible, else 0 with sc->retry lowered. */
static int km__precheck(const km__key *k, km__scan *sc)
{
    uint32_t mask = k->win_mask;
    uint64_t now = sc->now;

    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        const km__gcra *g = &k->win[w];
        uint64_t tat = ck_pr_load_64(&g->tat), T = k->emission_ns[w], tau = k->tau_ns[w];
        uint64_t cost = km__window_is_requests(w) ? 1 : sc->tokens;
        if (cost == 0)
            continue;
        uint64_t need = km__mul_sat(ck_pr_load_64(&g->reserved) + cost, T);
        if (km__max64(tat, now) + need - now > tau) {
            sc->retry = km__min64(sc->retry, tat + need - tau);
            return 0;
        }
    }
    return 1;
}

/* Undo the charges of windows in `done` (see the top of the file). */
static void km__admit_undo(km__key *k, uint32_t done, const uint64_t *old_tat,
                           const uint64_t *new_tat, uint32_t tokens)
{
    while (done) {
        int w = __builtin_ctz(done);
        done &= done - 1;
        if (km__window_is_requests(w)) {
            /* Exact only if nothing was admitted since: tat is still ours. */
            ck_pr_cas_64(&k->win[w].tat, new_tat[w], old_tat[w]);
        } else {
            /* Reservations are exact to drop; a locked sub on the reserved
             * half is atomic against the 16-byte CAS on the pair. */
            ck_pr_sub_64(&k->win[w].reserved, tokens);
        }
    }
}

/* Charge request windows and reserve token windows of key k, all or none.
 * Returns 1 if admitted; 0 with sc->retry lowered if a window refused. */
static int km__admit(km__key *k, km__scan *sc)
{
    uint32_t mask = k->win_mask, done = 0;
    uint64_t old_tat[KM_WIN_COUNT], new_tat[KM_WIN_COUNT];
    uint64_t now = sc->now;

    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        km__gcra *g = &k->win[w];
        uint64_t T = k->emission_ns[w], tau = k->tau_ns[w];
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
            old_tat[w] = tat;
            new_tat[w] = nt;
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
                sc->retry = km__min64(sc->retry, tat + need - tau);
                goto refuse;
            }
        }
        done |= 1u << w;
    }
    return 1;
refuse:
    km__admit_undo(k, done, old_tat, new_tat, sc->tokens);
    return 0;
}

/* ------------------------------------------------------------ lease slots */

static inline uint32_t km__busy_words(const km__key *k) { return (k->max_inflight + 63) / 64; }

static inline uint64_t km__word_mask(const km__key *k, uint32_t i)
{
    uint32_t rem = k->max_inflight - i * 64;
    return rem >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << rem) - 1;
}

static uint32_t km__inflight(const km__key *k)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < km__busy_words(k); i++)
        n += (uint32_t)__builtin_popcountll(ck_pr_load_64(&k->busy[i]));
    return n;
}

/* Claim a free lease slot of key ki (CAS owner 0 -> ours).  Starts from a
 * rotation that depends on the process slot, so processes do not all race
 * for the lowest free slot.  Returns the slot index or -1 if all are taken. */
static int km__slot_claim(km_env *e, uint32_t ki, km__key *k)
{
    km__lease *ls = km__leases(e, ki);
    uint32_t rot = (e->proc_slot * 7u) & 63u;

    for (uint32_t i = 0; i < km__busy_words(k); i++) {
        uint64_t free = ~ck_pr_load_64(&k->busy[i]) & km__word_mask(k, i);
        while (free) {
            uint64_t hi = free >> rot;
            uint32_t b = hi ? (uint32_t)__builtin_ctzll(hi) + rot : (uint32_t)__builtin_ctzll(free);
            free &= ~(UINT64_C(1) << b);
            uint32_t s = i * 64 + b;
            /* Claim: only the owner touches the slot's fields and its busy
             * bit from here until it stores owner = 0 again. */
            if (ck_pr_load_64(&ls[s].owner) == 0 && ck_pr_cas_64(&ls[s].owner, 0, e->owner))
                return (int)s;
        }
    }
    return -1;
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

static uint64_t km__rand(void)
{
    /* Per-thread xorshift64*: the weighted choice writes no shared word. */
    static __thread uint64_t s;
    if (s == 0)
        s = (km_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&s) | 1;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dull;
}

/* Try to lease key ki.  Returns 1 and fills *out on success; 0 otherwise
 * (sc updated: usable keys lower sc->retry). */
static int km__try_key(km_env *e, uint32_t ki, km__scan *sc, km_lease *out)
{
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state), probe = 0;

    if (st != KM__ST_ACTIVE && st != KM__ST_FAILING && st != KM__ST_PROBING)
        return 0;
    if (sc->tokens && (k->win_mask & KM__TOKEN_WINS)) {
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
            if ((k->win_mask & (1u << w)) && sc->tokens > k->burst[w]) {
                sc->cost_blocked++;
                return 0;
            }
    }
    sc->usable++;
    uint64_t cu = ck_pr_load_64(&k->cooldown_until);
    if (sc->now < cu) {
        sc->retry = km__min64(sc->retry, cu);
        return 0;
    }
    if (st == KM__ST_PROBING) {
        sc->retry = km__min64(sc->retry, sc->now + KM__RETRY_PROBE_NS);
        return 0;
    }
    if (!km__precheck(k, sc))
        return 0;

    int s = km__slot_claim(e, ki, k);
    if (s < 0) {
        sc->retry = km__min64(sc->retry, sc->now + KM__RETRY_BUSY_NS);
        return 0;
    }
    km__lease *ls = &km__leases(e, ki)[s];
    uint32_t seq = ls->seq + 1, gen = ck_pr_load_32(&k->gen);
    ls->seq = seq;
    ls->tokens = sc->tokens;
    ls->start_ns = sc->now;
    ls->key_gen = gen;
    ck_pr_store_32(&ls->phase, KM__LP_ADMITTING);
    /* The phase store must be visible before any limit word changes, so a
     * reaper that finds our charges can find this slot.  The CASes below
     * are locked instructions, which order this store before them on x86;
     * the fence says so for other architectures. */
    ck_pr_fence_store_atomic();

    if (st == KM__ST_FAILING) {
        /* The failure cooldown is over: one acquirer takes the probe. */
        if (!ck_pr_cas_32(&k->state, KM__ST_FAILING, KM__ST_PROBING))
            goto undo_slot;
        probe = 1;
    }
    if (!km__admit(k, sc)) {
        if (probe)
            ck_pr_cas_32(&k->state, KM__ST_PROBING, KM__ST_FAILING);
        goto undo_slot;
    }
    /* In-flight +1: our own bit (I1).  Locked, so it is ordered after the
     * limit CASes and before the phase store below. */
    ck_pr_or_64(&k->busy[s / 64], UINT64_C(1) << (s % 64));
    ck_pr_store_32(&ls->phase, KM__LP_ACTIVE);
    /* Slot counters: we own the slot, so a plain increment is exact. */
    ck_pr_store_64(&ls->acquired, ls->acquired + 1);

    out->key = ki;
    out->key_gen = gen;
    out->slot = (uint32_t)s;
    out->seq = seq;
    out->pool = k->pool;
    out->tokens = sc->tokens;
    out->start_ns = sc->now;
    out->retry_at_ns = 0;
    out->secret_len = k->secret_len;
    memcpy(out->key_id, k->id, sizeof(out->key_id));
    memcpy(out->secret, k->secret, k->secret_len);
    out->secret[k->secret_len] = '\0';
    return 1;

undo_slot:
    km__slot_free(ls);
    return 0;
}

static int km__pick_least_busy(km_env *e, const km__member *m, uint32_t n,
                               km__scan *sc, km_lease *out)
{
    km__key *keys = km__keys(e);
    static __thread uint32_t rot;
    uint32_t start = rot++ % n;
    /* Up to n rounds: each round takes the least busy key not yet tried.
     * Keys that fail their precheck are tried (and dropped) in the round
     * that finds them, so a round costs one pass over the pool. */
    unsigned char tried_small[512];
    unsigned char *tried = n <= sizeof(tried_small) * 8 ? tried_small : calloc((n + 7) / 8, 1);
    int got = 0;

    if (!tried)
        return 0;
    if (tried == tried_small)
        memset(tried_small, 0, (n + 7) / 8);
    for (uint32_t round = 0; round < n && !got; round++) {
        uint32_t best = UINT32_MAX, best_load = UINT32_MAX;
        for (uint32_t j = 0; j < n; j++) {
            uint32_t i = (start + j) % n;
            if (tried[i / 8] & (1u << (i % 8)))
                continue;
            km__key *k = &keys[m[i].key];
            uint32_t st = ck_pr_load_32(&k->state);
            if ((st != KM__ST_ACTIVE && st != KM__ST_FAILING) ||
                sc->now < ck_pr_load_64(&k->cooldown_until) || !km__precheck(k, sc)) {
                /* Let km__try_key account for it (usable, retry, cost). */
                tried[i / 8] |= (unsigned char)(1u << (i % 8));
                km__try_key(e, m[i].key, sc, out);
                continue;
            }
            uint32_t load = km__inflight(k);
            if (load < best_load) {
                best_load = load;
                best = i;
            }
        }
        if (best == UINT32_MAX)
            break;
        tried[best / 8] |= (unsigned char)(1u << (best % 8));
        got = km__try_key(e, m[best].key, sc, out);
    }
    if (tried != tried_small)
        free(tried);
    return got;
}

KM_EXTERN int km_acquire(km_env *e, const km_request *req, km_lease *out)
{
    if (!e || !req || !out || req->pool < 0 || (uint32_t)req->pool >= e->hdr->n_pools)
        return req && req->pool >= 0 && e && out ? KM_ENOPOOL : KM_EINVAL;
    km__pool *pool = &km__pools(e)[req->pool];
    const km__member *m = km__members(e, (uint32_t)req->pool);
    uint32_t n = pool->n_keys;
    int strategy = req->strategy ? req->strategy : (int)pool->strategy;
    km__scan sc = {.now = km_now_ns(), .retry = KM__NEVER, .tokens = req->tokens};
    uint32_t start = 0;

    if (n == 0 || n > e->hdr->cap_keys)
        return n == 0 ? KM_EUNAVAIL : KM_ECORRUPT;
    switch (strategy) {
    case KM_STRATEGY_ROUND_ROBIN:
    {
        /* Locked fetch-add on the pool's cursor line: each acquirer starts
         * one key further; no ordering needed beyond atomicity.  The
         * modulo is Lemire's fastmod (a 64-bit div costs ~10 ns here). */
        uint32_t c = (uint32_t)ck_pr_faa_64(&pool->rr_cursor, 1);
        start = (uint32_t)(((unsigned __int128)(pool->rr_magic * c) * n) >> 64);
        if (n == 1)
            start = 0;
        break;
    }
    case KM_STRATEGY_WEIGHTED: {
        uint64_t total = pool->total_weight ? pool->total_weight : 1;
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
    case KM_STRATEGY_LEAST_BUSY:
        if (km__pick_least_busy(e, m, n, &sc, out))
            return KM_OK;
        goto none;
    default:
        return KM_EINVAL;
    }
    for (uint32_t j = 0; j < n; j++) {
        uint32_t i = start + j;
        if (i >= n)
            i -= n;
        if (km__try_key(e, m[i].key, &sc, out))
            return KM_OK;
    }
none:
    out->retry_at_ns = 0;
    if (sc.usable == 0)
        return sc.cost_blocked ? KM_ECOST : KM_EUNAVAIL;
    out->retry_at_ns = sc.retry == KM__NEVER ? sc.now + KM__RETRY_BUSY_NS : km__max64(sc.retry, sc.now);
    return KM_EAGAIN;
}

/* ------------------------------------------------------------ release */

/* Commit the token reservation of slot ls on key k: `actual` tokens charged
 * as of the lease's start, reservation dropped (see the top of the file). */
static void km__settle(km__key *k, km__lease *ls, uint64_t actual)
{
    uint32_t mask = k->win_mask & KM__TOKEN_WINS;
    uint64_t reserved = ls->tokens;

    if (reserved == 0 && actual == 0)
        return;
    if (!mask)
        goto count;
    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        km__gcra *g = &k->win[w];
        uint64_t cur[2], set[2];
        km__gcra_load(g, cur);
        do {
            set[0] = actual ? km__max64(cur[0], ls->start_ns) + km__mul_sat(actual, k->emission_ns[w])
                            : cur[0];
            set[1] = cur[1] - reserved;
        } while (!km__gcra_cas(g, cur, set));
    }
count:
    ck_pr_store_64(&ls->tokens_used, ls->tokens_used + actual); /* slot owner only */
}

static uint64_t km__backoff_ns(uint32_t base_s, uint32_t max_s, uint32_t n)
{
    uint64_t d = (uint64_t)base_s * KM__NS_PER_S, cap = (uint64_t)max_s * KM__NS_PER_S;
    for (uint32_t i = 1; i < n && d < cap; i++)
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

/* Move state from any of the states in `from_mask` (bit per KM__ST_*) to `to`. */
static void km__state_to(km__key *k, uint32_t from_mask, uint32_t to)
{
    uint32_t cur = ck_pr_load_32(&k->state);
    while (cur < 32 && (from_mask & (1u << cur)) && !ck_pr_cas_32_value(&k->state, cur, to, &cur))
        ;
}

#define KM__LIVE_STATES ((1u << KM__ST_ACTIVE) | (1u << KM__ST_FAILING) | (1u << KM__ST_PROBING))

static void km__health(km_env *e, km__key *k, const km__lease *ls, int kind,
                       const km_outcome *o)
{
    km__pool *pool = &km__pools(e)[k->pool < e->hdr->n_pools ? k->pool : 0];
    uint64_t now;
    uint32_t n;

    switch (kind) {
    case KM_OUT_SUCCESS: {
        /* Write the shared line only when something changes. */
        if (ck_pr_load_32(&k->consec_fail))
            ck_pr_store_32(&k->consec_fail, 0);
        if (ck_pr_load_32(&k->consec_429))
            ck_pr_store_32(&k->consec_429, 0);
        km__state_to(k, (1u << KM__ST_PROBING) | (1u << KM__ST_FAILING), KM__ST_ACTIVE);
        uint64_t lat = o->latency_us >= 0 ? (uint64_t)o->latency_us * 1000 : km_now_ns() - ls->start_ns;
        if (lat == 0)
            lat = 1; /* 0 means "no sample yet" */
        /* EMA, alpha = 0.2; the first sample seeds it.  A plain load and
         * store: two releases racing may lose one sample, which an average
         * tolerates; a CAS loop would cost a locked op on every release. */
        uint64_t cur = ck_pr_load_64(&k->latency_ema_ns);
        uint64_t set = cur == 0 ? lat : (uint64_t)((int64_t)cur + ((int64_t)lat - (int64_t)cur) / 5);
        ck_pr_store_64(&k->latency_ema_ns, set ? set : 1);
        break;
    }
    case KM_OUT_RATE_LIMITED:
        n = ck_pr_faa_32(&k->consec_429, 1) + 1;
        now = km_now_ns();
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
            now = km_now_ns();
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
    uint64_t now = km_now_ns();
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
    if (l->key >= e->hdr->cap_keys || l->slot >= e->hdr->cap_inflight)
        return KM_EINVAL;
    km__key *k = &km__keys(e)[l->key];
    km__lease *ls = &km__leases(e, l->key)[l->slot];

    /* Ours and still this lease?  owner is written only by us while we own
     * the slot, so these loads cannot race with a change we care about. */
    if (ck_pr_load_64(&ls->owner) != e->owner || ls->seq != l->seq ||
        ck_pr_load_32(&ls->phase) != KM__LP_ACTIVE) {
        ck_pr_inc_64(&k->stale);
        return KM_ESTALE;
    }
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic(); /* phase before the limit CASes (see seg.h) */

    int kind = o->kind;
    uint64_t actual = kind == KM_OUT_CANCELLED ? 0
                      : o->tokens < 0          ? ls->tokens
                      : (uint64_t)o->tokens > UINT32_MAX ? UINT32_MAX
                                               : (uint64_t)o->tokens;
    int stale = ls->key_gen != ck_pr_load_32(&k->gen);
    if (!stale) {
        km__settle(k, ls, actual);
        km__health(e, k, ls, kind, o);
        if (o->view_flags)
            km__apply_view(k, o);
        if (kind == KM_OUT_SUCCESS)
            ck_pr_store_64(&ls->succeeded, ls->succeeded + 1);
        else
            ck_pr_store_64(&ls->outcomes[kind], ls->outcomes[kind] + 1);
    } else {
        ck_pr_inc_64(&k->stale);
    }
    /* In-flight -1: clear our bit (I1), then free the slot (I3). */
    ck_pr_and_64(&k->busy[l->slot / 64], ~(UINT64_C(1) << (l->slot % 64)));
    km__slot_free(ls);
    return stale ? KM_ESTALE : KM_OK;
}

/* Release an ACTIVE lease we hold or took from a dead owner: settle at the
 * estimate, count it abandoned, free the slot. */
static void km__abandon(km__key *k, km__lease *ls, uint32_t slot)
{
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic();
    if (ls->key_gen == ck_pr_load_32(&k->gen))
        km__settle(k, ls, ls->tokens);
    /* A probe that will never report lets the next one go. */
    km__state_to(k, 1u << KM__ST_PROBING, KM__ST_FAILING);
    ck_pr_store_64(&ls->abandoned, ls->abandoned + 1);
    ck_pr_and_64(&k->busy[slot / 64], ~(UINT64_C(1) << (slot % 64)));
    km__slot_free(ls);
}

void km__release_all_owned(km_env *e, uint64_t owner)
{
    km__key *keys = km__keys(e);
    for (uint32_t ki = 0; ki < e->hdr->cap_keys; ki++) {
        km__lease *ls = km__leases(e, ki);
        for (uint32_t s = 0; s < e->hdr->cap_inflight; s++)
            if (ck_pr_load_64(&ls[s].owner) == owner &&
                ck_pr_load_32(&ls[s].phase) == KM__LP_ACTIVE)
                km__abandon(&keys[ki], &ls[s], s);
    }
}

uint64_t km__release_dead_owner(km_env *e, uint64_t tag, uint64_t *left)
{
    km__key *keys = km__keys(e);
    /* A reaper marks the slots it takes over with its own tag and the top
     * bit, so two reapers never release the same lease. */
    uint64_t mine = e->owner | (UINT64_C(1) << 63), n = 0;

    for (uint32_t ki = 0; ki < e->hdr->cap_keys; ki++) {
        km__lease *ls = km__leases(e, ki);
        for (uint32_t s = 0; s < e->hdr->cap_inflight; s++) {
            if (ck_pr_load_64(&ls[s].owner) != tag)
                continue;
            uint32_t ph = ck_pr_load_32(&ls[s].phase);
            if (ph == KM__LP_ACTIVE) {
                if (ck_pr_cas_64(&ls[s].owner, tag, mine)) {
                    km__abandon(&keys[ki], &ls[s], s);
                    n++;
                }
            } else if (ph == KM__LP_FREE) {
                /* Died between claiming the slot and writing its phase:
                 * nothing was charged yet. */
                if (ck_pr_cas_64(&ls[s].owner, tag, 0))
                    continue;
            } else {
                (*left)++; /* ADMITTING or RELEASING: needs a recount */
            }
        }
    }
    return n;
}

/* ------------------------------------------------------------ readers */

KM_EXTERN int km_info_get(km_env *e, km_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    const km__hdr *h = e->hdr;
    memset(out, 0, sizeof(*out));
    out->format = h->format;
    out->cap_keys = h->cap_keys;
    out->cap_pools = h->cap_pools;
    out->cap_procs = h->cap_procs;
    out->cap_inflight = h->cap_inflight;
    out->n_keys = h->n_keys;
    out->n_pools = h->n_pools;
    out->n_procs = ck_pr_load_32(&h->n_procs);
    out->size_bytes = h->seg_size;
    out->created_wall_ns = h->created_wall_ns;
    return KM_OK;
}

KM_EXTERN int km_pool_find(km_env *e, const char *name)
{
    if (!e || !name)
        return KM_EINVAL;
    for (uint32_t p = 0; p < e->hdr->n_pools; p++)
        if (strncmp(km__pools(e)[p].name, name, KM_ID_MAX + 1) == 0)
            return (int)p;
    return KM_ENOPOOL;
}

KM_EXTERN int km_pool_info_get(km_env *e, int pool, km_pool_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->hdr->n_pools)
        return KM_ENOPOOL;
    const km__pool *p = &km__pools(e)[pool];
    memset(out, 0, sizeof(*out));
    memcpy(out->name, p->name, KM_ID_MAX);
    out->strategy = (int)p->strategy;
    out->n_keys = p->n_keys;
    out->cooldown_s = p->cooldown_s;
    out->max_cooldown_s = p->max_cooldown_s;
    out->max_failures = p->max_failures;
    return KM_OK;
}

KM_EXTERN int km_pool_key(km_env *e, int pool, uint32_t i)
{
    if (!e)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->hdr->n_pools)
        return KM_ENOPOOL;
    if (i >= km__pools(e)[pool].n_keys)
        return KM_ENOKEY;
    uint32_t ki = km__members(e, (uint32_t)pool)[i].key;
    return ki < e->hdr->cap_keys ? (int)ki : KM_ECORRUPT;
}

KM_EXTERN int km_key_find(km_env *e, int pool, const char *id)
{
    if (!e || !id)
        return KM_EINVAL;
    if (pool < 0 || (uint32_t)pool >= e->hdr->n_pools)
        return KM_ENOPOOL;
    for (uint32_t i = 0; i < km__pools(e)[pool].n_keys; i++) {
        int ki = km_pool_key(e, pool, i);
        if (ki >= 0 && strncmp(km__keys(e)[ki].id, id, KM_ID_MAX + 1) == 0)
            return ki;
    }
    return KM_ENOKEY;
}

KM_EXTERN int km_key_info_get(km_env *e, uint32_t key, km_key_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    if (key >= e->hdr->cap_keys || ck_pr_load_32(&km__keys(e)[key].state) == KM__ST_FREE)
        return KM_ENOKEY;
    const km__key *k = &km__keys(e)[key];
    uint64_t now = km_now_ns();
    uint32_t st = ck_pr_load_32(&k->state);

    memset(out, 0, sizeof(*out));
    memcpy(out->id, k->id, KM_ID_MAX);
    km_mask_secret(k->secret, out->secret_masked);
    out->pool = k->pool;
    out->weight = k->weight;
    out->gen = ck_pr_load_32(&k->gen);
    out->cooldown_until_ns = ck_pr_load_64(&k->cooldown_until);
    if (st == KM__ST_FAILING || (st == KM__ST_ACTIVE && now < out->cooldown_until_ns))
        out->state = KM_KEY_COOLING;
    else
        out->state = (int)st;
    out->inflight = km__inflight(k);
    out->max_inflight = k->max_inflight;
    out->consecutive_failures = ck_pr_load_32(&k->consec_fail);
    out->consecutive_429s = ck_pr_load_32(&k->consec_429);
    out->latency_ema_us = ck_pr_load_64(&k->latency_ema_ns) / 1000;
    /* Counters are per lease slot (see km__lease); sum them. */
    const km__lease *ls = km__leases(e, key);
    for (uint32_t s = 0; s < e->hdr->cap_inflight; s++) {
        out->acquired += ck_pr_load_64(&ls[s].acquired);
        out->outcomes[KM_OUT_SUCCESS] += ck_pr_load_64(&ls[s].succeeded);
        for (int i = 1; i < KM_OUT_COUNT; i++)
            out->outcomes[i] += ck_pr_load_64(&ls[s].outcomes[i]);
        out->abandoned += ck_pr_load_64(&ls[s].abandoned);
        out->tokens_used += ck_pr_load_64(&ls[s].tokens_used);
    }
    out->stale_releases = ck_pr_load_64(&k->stale);
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        km_limit_info *li = &out->limits[w];
        if (!(k->win_mask & (1u << w)))
            continue;
        uint64_t tat = ck_pr_load_64(&k->win[w].tat), res = ck_pr_load_64(&k->win[w].reserved);
        uint64_t T = k->emission_ns[w], used = km__max64(tat, now) - now + km__mul_sat(res, T);
        li->limit = k->limit[w];
        li->burst = k->burst[w];
        li->mode = k->mode[w];
        li->tat_ns = tat;
        li->available = used >= k->tau_ns[w] ? 0 : (k->tau_ns[w] - used) / T;
    }
    return KM_OK;
}

KM_EXTERN int km_key_set_state(km_env *e, uint32_t key, int state)
{
    if (!e || (state != KM_KEY_ACTIVE && state != KM_KEY_DISABLED))
        return KM_EINVAL;
    if (key >= e->hdr->cap_keys || ck_pr_load_32(&km__keys(e)[key].state) == KM__ST_FREE)
        return KM_ENOKEY;
    km__key *k = &km__keys(e)[key];
    if (state == KM_KEY_ACTIVE) {
        /* Health first, then the state that lets acquirers in. */
        ck_pr_store_32(&k->consec_fail, 0);
        ck_pr_store_32(&k->consec_429, 0);
        ck_pr_store_64(&k->cooldown_until, 0);
        ck_pr_fence_store();
        km__state_to(k, ~(1u << KM__ST_FREE) & ~(1u << KM__ST_ACTIVE), KM__ST_ACTIVE);
    } else {
        km__state_to(k, ~(1u << KM__ST_FREE), KM__ST_DISABLED);
    }
    return KM_OK;
}
