/*
 * src/acquire.c - km_acquire: choosing a key by the pool's strategy and
 * leasing it.
 *
 * One acquire is one epoch section (shm/epoch.h): the pool's state and
 * settings it reads, the member list it loads and the key row it copies
 * stay what they were until it leaves.  Within
 * it, each candidate key goes through try_key: state, budget and
 * cooldown checks, a lease slot claimed (src/slots.h), the limits admitted
 * (src/gcra.h), the lease copied out.  Nothing here makes a system call
 * except the clock read (vDSO) and, at most once a second when no key was
 * admissible, a reap (src/reap.c).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>

#include "budget.h"
#include "fleet.h"
#include "internal.h"
#include "slots.h"
#include "wait.h"

/* Poll hints for non-blocking callers where no clock time is known (see
 * KM__POLL_BUSY_NS in src/gcra.h): a key whose one probe lease is out frees
 * up at its release.  A slot seen mid-release (its flag clear, its owner
 * not yet) is a few instructions from free: look again soon. */
#define KM__POLL_PROBE_NS (100 * 1000 * 1000) /* 100 ms */
#define KM__RETRY_TRANSIENT_NS (50 * 1000)    /* 50 us */

/* What one acquire's pass over the keys has seen. */
typedef struct key_scan {
    km__adm a;            /* clock, cost, and when to look again (src/gcra.h):
                           * retry also takes cooldowns, poll probes */
    uint32_t usable;      /* keys that could admit without an operator */
    uint32_t cost_blocked;
    uint32_t soft_skipped; /* keys passed over for a soft budget */
    int allow_soft;        /* second pass: take keys over a soft budget */
    uint32_t model;        /* model index + 1, recorded in the lease; 0: none */
    uint32_t named;        /* pools without a models list: the named row
                            * recorded in the lease instead (model_named) */
    const km__model *md;   /* per_model pools: the model whose limits apply */
    uint32_t yield_key;    /* key index + 1 held for a starving waiter (its
                            * reserve, src/wait.c), passed over; 0: none */
    uint32_t retry_key;    /* key index + 1 that set the earliest retry */
} key_scan;

/* Per-thread state for choosing keys: random choices and the round-robin
 * cursor write no shared word.  A child after fork() starts afresh (see
 * atfork_child), or every worker forked from one master would pick the
 * same sequence of keys. */
static KM__TLS uint64_t rng_state;
static KM__TLS uint32_t rr_cursor;
static uint32_t cached_pid; /* cached at load and in a forked child: no getpid() per seed */

static void atfork_child(void)
{
    rng_state = 0;
    rr_cursor = 0;
    cached_pid = (uint32_t)getpid();
}

__attribute__((constructor)) static void register_atfork(void)
{
    cached_pid = (uint32_t)getpid();
    pthread_atfork(NULL, NULL, atfork_child);
}

static uint64_t rng_next(void)
{
    uint64_t s = rng_state;
    if (s == 0)
        s = (km__now() ^ ((uint64_t)cached_pid << 32) ^ (uint64_t)(uintptr_t)&rng_state) | 1;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    rng_state = s;
    return s * 0x2545f4914f6cdd1dull;
}

static inline uint32_t rng_below(uint32_t n)
{
    return (uint32_t)(((rng_next() >> 32) * (uint64_t)n) >> 32);
}

static inline int live_state(uint32_t st)
{
    return st == KM__ST_ACTIVE || st == KM__ST_FAILING || st == KM__ST_PROBING;
}

/* Over its budget: the period is rolled (clock read) only when the spend
 * seen is over, so a key under its budget costs one load as before.  A
 * fleet key's budget counts the other hosts' spend too (src/fleet.c); a
 * key with a budget outside the fleet pays one load of `fleet` (line 1,
 * which the limit CAS has just brought in) and one branch, a key without a
 * budget nothing. */
static inline int over_budget(const km_env *e, km__key *k)
{
    return k->budget_microusd &&
           (__builtin_expect(k->fleet, 0)
                ? km__fleet_over_budget(e, k)
                : ck_pr_load_64(&k->spend.spent) >= k->budget_microusd &&
                      km__spend_now(&k->spend, k->budget_period, k->budget_tz_min, e->tzt) >=
                          k->budget_microusd);
}

/* Try to lease key ki.  Returns 1 and fills *out on success; 0 otherwise
 * (sc updated: usable keys lower sc->a.retry). */
static int lease_key(km_env *e, uint32_t ki, key_scan *sc, km_lease *out)
{
    if (ki >= e->geom.cap_keys) /* a member list is shared memory: never trusted */
        return 0;
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state), probe = 0;
    km__lset kset, mset;
    uint32_t mi = sc->model ? sc->model - 1 : 0;

    if (!live_state(st))
        return 0;
    if (ck_pr_load_32(&k->updating)) { /* limits being changed: briefly */
        sc->usable++;
        sc->a.retry = km__min64(sc->a.retry, sc->a.now + KM__POLL_BUSY_NS);
        return 0;
    }
    /* The flag before the parameters it guards (the key's, its own model
     * rows', own_models, fleet_mask): pairs with the writer's store fence
     * between writing them and clearing `updating` (src/reconfig.c).  A
     * compiler barrier on x86. */
    ck_pr_fence_load();
    kset = km__key_lset(k);
    if (over_budget(e, k)) {
        if (k->budget_hard) {
            /* Spent: a lifetime budget's key is exhausted until enabled; a
             * period's is passed over until the period rolls. */
            if (k->budget_period == KM__PERIOD_NONE)
                km__state_to(k, KM__LIVE_STATES, KM__ST_EXHAUSTED);
            return 0;
        }
        if (!sc->allow_soft) {
            sc->soft_skipped++;
            return 0;
        }
    }
    if (sc->md)
        mset = km__model_lset(e, k, ki, sc->md, mi);
    if (km__over_burst(&kset, sc->a.tokens) || (sc->md && km__over_burst(&mset, sc->a.tokens))) {
        sc->cost_blocked++;
        return 0;
    }
    sc->usable++;
    if (__builtin_expect(ki + 1 == sc->yield_key, 0)) {
        /* Held for a starving waiter: its drop wakes sleepers; a caller
         * that does not sleep looks again soon. */
        sc->a.poll = km__min64(sc->a.poll, KM__POLL_BUSY_NS);
        return 0;
    }
    uint64_t cu = ck_pr_load_64(&k->cooldown_until);
    if (sc->a.now < cu) {
        sc->a.retry = km__min64(sc->a.retry, cu);
        return 0;
    }
    /* The probe is out (or, FAILING, one from before is still out: an
     * operator enabled the key meanwhile and it failed again): only that
     * lease's release frees the key (km__key.probe). */
    if (st == KM__ST_PROBING || (st == KM__ST_FAILING && ck_pr_load_32(&k->probe))) {
        sc->a.poll = km__min64(sc->a.poll, KM__POLL_PROBE_NS);
        return 0;
    }
    /* No pre-check by plain loads here: admission refuses before it changes
     * any limit word, so a refused key costs one slot claim more, while a
     * pre-check would cost every admitted request ~20 instructions.  The
     * sampling strategies pre-check while choosing (eligible). */
    int s = km__slot_claim(e, ki, k);
    if (s == -1) { /* every slot taken: a release will wake sleepers */
        sc->a.poll = km__min64(sc->a.poll, KM__POLL_BUSY_NS);
        return 0;
    }
    if (s < 0) { /* a slot is being released or claimed right now */
        sc->a.retry = km__min64(sc->a.retry, sc->a.now + KM__RETRY_TRANSIENT_NS);
        return 0;
    }
    km__lease *ls = &km__leases(e, ki)[s];
    uint32_t seq = ck_pr_load_32(&ls->seq) + 1, gen = ck_pr_load_32(&k->gen);
    km__undo ku;
    /* The lease's fields, two adjacent 32-bit fields per 8-byte store (the
     * pairs are pinned in src/layout.h; little-endian: the first field is the
     * low half).  Each reader loads the fields one by one, and a reader that
     * needs them settled (release, a reaper, check) acts on phase ACTIVE,
     * stored after a fence further down; one that sees ADMITTING uses only
     * owner, phase and seq (P3).  The model: per_model windows settle by it
     * at release (a global pool's models have none), and usage events name
     * it; res_mask: which token windows of the key and of the model the
     * lease reserves. */
    ck_pr_store_64(km__pair(&ls->seq), seq | (uint64_t)sc->a.tokens << 32);
    ck_pr_store_64(&ls->start_ns, sc->a.now);
    uint32_t res = (kset.mask & KM__TOKEN_WINS) |
                   (sc->md ? (mset.mask & KM__TOKEN_WINS) << KM__RES_MODEL_SHIFT : 0);
    ck_pr_store_64(km__pair(&ls->model), (sc->model | sc->named) | (uint64_t)res << 32);
    ck_pr_store_64(km__pair(&ls->key_gen), gen | (uint64_t)KM__LP_ADMITTING << 32);
    /* The phase store must be visible before any limit word changes, so a
     * reaper that finds our charges can find this slot (P2).  The atomics below
     * are locked instructions, which order this store before them on x86;
     * the fence says so (and is a real fence elsewhere). */
    ck_pr_fence_store_atomic();

    if (st == KM__ST_FAILING) {
        /* The failure cooldown is over: one acquirer takes the probe.  It
         * names its lease slot in the probe word first (CAS from 0, after
         * our phase ADMITTING: a reaper of this slot finds the word), then
         * moves the state; only this lease's release, or its reaper, frees
         * the word again, so no other lease ends the probe. */
        if (!ck_pr_cas_32(&k->probe, 0, (uint32_t)s + 1))
            goto undo_slot;
        if (!ck_pr_cas_32(&k->state, KM__ST_FAILING, KM__ST_PROBING)) {
            km__probe_clear(k);
            goto undo_slot;
        }
        probe = 1;
    }
    /* Fleet-wide limits (src/fleet.h): the key's credit must cover the
     * cost as well as its local limits.  Credit first: giving credit back
     * is exact (a sum), undoing a local request charge is not once another
     * acquire was admitted (src/gcra.h), so a fleet refusal taken after
     * the local admission would waste local capacity under contention.
     * A key outside the fleet pays this load (line 1 of the row, beside
     * the limit pairs admitted next) and one branch.  A fleet key's model
     * windows (per_model pools) take the model's credit right after. */
    uint32_t fmask = ck_pr_load_32(&k->fleet_mask); /* once: the undo gives back what this took */
    int fl = 0, flm = 0;
    if (__builtin_expect(fmask != 0, 0)) {
        if ((fmask & KM__FLEET_WINS) &&
            !(fl = km__fleet_admit(e, ki, k, fmask & KM__FLEET_WINS, &sc->a)))
            goto undo_probe;
        if ((fmask & KM__FLEET_MODELS) && sc->md && mset.mask &&
            !(flm = km__fleet_admit_model(e, ki, mi, mset.mask, &sc->a)))
            goto undo_fleet;
    }
    if (!km__admit(&kset, &sc->a, &ku))
        goto undo_fleet;
    if (sc->md) {
        km__undo mu;
        if (!km__admit(&mset, &sc->a, &mu)) {
            km__admit_undo(&kset, &ku, sc->a.tokens);
            goto undo_fleet;
        }
    }
    /* Count the acquire while still ADMITTING: a reaper counts a slot it
     * finds ACTIVE as abandoned, so the acquire must be counted by then (a
     * death before ACTIVE leaves it counted as acquired only: short by one,
     * never over).  We own the slot: a plain increment is exact. */
    KM__SLOT_ADD(ls->acquired, 1);
    /* And on the key x model row the request named, if any, in the same
     * phase: a locked add, the row being shared by the key's leases
     * (km__mwin; statistics, ordered against nothing).  No model: one
     * compare (km__mrow's bound). */
    km__mwin *mr = km__mrow(e, ki, sc->model | sc->named);
    if (mr)
        ck_pr_inc_64(&mr->requests);
    /* In-flight +1: our own flag (I1), a plain store (the byte has no other
     * writer), after the limit atomics and before the phase store.  On x86
     * the atomics are locked and stores keep their order, so both fences
     * are compiler barriers; where atomics are relaxed they are real. */
    ck_pr_fence_atomic_store();
    ck_pr_store_8(&km__busy(e, ki)[s], 1);
    ck_pr_fence_store();
    ck_pr_store_32(&ls->phase, KM__LP_ACTIVE); /* last (P3) */

    out->key = ki;
    out->key_gen = gen;
    out->slot = s;
    out->seq = seq;
    out->pool = k->pool;
    out->tokens = sc->a.tokens;
    out->start_ns = sc->a.now;
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
    /* Zero, as keymesh.h promises: a field a later version puts there reads
     * 0 ("not given") from this one.  Two vector stores. */
    memset(out->reserved, 0, sizeof(out->reserved));
    return 1;

undo_fleet:
    if (__builtin_expect(flm != 0, 0))
        km__fleet_undo_model(e, ki, mi, mset.mask, &sc->a, flm);
    if (__builtin_expect(fl != 0, 0))
        km__fleet_undo(e, ki, k, fmask & KM__FLEET_WINS, &sc->a, fl);
undo_probe:
    if (probe) {
        int back = ck_pr_cas_32(&k->state, KM__ST_PROBING, KM__ST_FAILING);
        km__probe_clear(k);
        if (back && k->pool < e->geom.n_pools) /* sleepers saw PROBING: the next may probe */
            km__wake(e, &km__pools(e)[k->pool]);
    }
undo_slot:
    km__slot_free(ls);
    return 0;
}

/* lease_key, and which key set the earliest retry (the key a starving
 * waiter reserves: src/wait.c). */
KM__HOT int try_key(km_env *e, uint32_t ki, key_scan *sc, km_lease *out)
{
    uint64_t r0 = sc->a.retry;
    if (lease_key(e, ki, sc, out))
        return 1;
    if (sc->a.retry < r0)
        sc->retry_key = ki + 1;
    return 0;
}

/* Cheap eligibility for scoring: usable now by state, cooldown and loads of
 * the limit words.  Nothing is claimed. */
static int eligible(km_env *e, uint32_t ki, key_scan *sc)
{
    if (ki >= e->geom.cap_keys)
        return 0;
    km__key *k = &km__keys(e)[ki];
    uint32_t st = ck_pr_load_32(&k->state);
    km__lset kset = km__key_lset(k);

    if ((st != KM__ST_ACTIVE && st != KM__ST_FAILING) || ck_pr_load_32(&k->updating) ||
        sc->a.now < ck_pr_load_64(&k->cooldown_until) || !km__precheck(&kset, &sc->a))
        return 0;
    if (sc->md) {
        km__lset mset = km__model_lset(e, k, ki, sc->md, sc->model - 1);
        if (!km__precheck(&mset, &sc->a))
            return 0;
    }
    return !over_budget(e, k) || sc->allow_soft;
}

/* Scores for the sampling strategies: lower is better. */
static uint64_t score(const km_env *e, uint32_t ki, int strategy)
{
    const km__key *k = &km__keys(e)[ki]; /* ki was checked by eligible */
    switch (strategy) {
    case KM_STRATEGY_LEAST_BUSY:
        return km__inflight(e, ki, k);
    case KM_STRATEGY_LATENCY:
        return ck_pr_load_64(&k->latency_ema_ns); /* 0: never sampled, try it */
    default: /* KM_STRATEGY_RELIABILITY */
        return KM__PPM - km__min64(ck_pr_load_32(&k->success_ppm), KM__PPM);
    }
}

/* Pools up to this size are scanned whole for the best score (bounded work);
 * larger ones sample two keys and take the better (power of two choices). */
#define KM__SCAN_MAX 16
/* Exploration for latency and reliability: 1 pick in 16 is a random
 * eligible key, so a key that recovered gets sampled again. */
#define KM__EXPLORE_MASK 15u

static int pick_scored(km_env *e, const km__member *m, uint32_t n, int strategy,
                           key_scan *sc, km_lease *out)
{
    int explore = strategy != KM_STRATEGY_LEAST_BUSY;

    if (n <= KM__SCAN_MAX) {
        uint32_t tried = 0, start = rng_below(n);
        for (uint32_t round = 0; round < n; round++) {
            uint32_t best = UINT32_MAX, n_ok = 0, ok[KM__SCAN_MAX];
            uint64_t best_score = UINT64_MAX;
            for (uint32_t j = 0; j < n; j++) {
                uint32_t i = (start + j) % n;
                if (tried & (1u << i))
                    continue;
                if (!eligible(e, m[i].key, sc)) {
                    /* Let try_key account for it (usable, retry, cost). */
                    tried |= 1u << i;
                    if (try_key(e, m[i].key, sc, out))
                        return 1;
                    continue;
                }
                ok[n_ok++] = i;
                uint64_t sc_i = score(e, m[i].key, strategy);
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
            if (explore && n_ok > 1 && (rng_next() & KM__EXPLORE_MASK) == 0)
                best = ok[rng_below(n_ok)];
            tried |= 1u << best;
            if (try_key(e, m[best].key, sc, out))
                return 1;
        }
        return 0;
    }
    for (int attempt = 0; attempt < 4; attempt++) {
        uint32_t a = rng_below(n), b = rng_below(n), pick;
        int ea = eligible(e, m[a].key, sc), eb = a != b && eligible(e, m[b].key, sc);
        if (!ea && !eb)
            continue;
        if (!ea || !eb || (explore && (rng_next() & KM__EXPLORE_MASK) == 0))
            pick = ea ? a : b;
        else
            pick = score(e, m[b].key, strategy) < score(e, m[a].key, strategy) ? b : a;
        if (try_key(e, m[pick].key, sc, out))
            return 1;
    }
    /* Sampling kept finding limited keys: most of the pool is limited, so
     * look at every key once (which also computes the earliest retry). */
    uint32_t start = rng_below(n);
    for (uint32_t j = 0; j < n; j++)
        if (try_key(e, m[(start + j) % n].key, sc, out))
            return 1;
    return 0;
}

/* Find a model of pool p by name: index, or -1. */
static int model_find(km_env *e, uint32_t p, const char *name)
{
    const km__pool *pool = &km__pools(e)[p];
    const km__model *md = km__models(e, p);
    uint32_t h = km__fnv32_str(name), n = km__min64(ck_pr_load_32(&pool->n_models), e->geom.cap_models);
    /* n_models before the rows it counts: a model appended live is written
     * before n_models is raised (src/reconfig.c, model_append). */
    ck_pr_fence_load();
    for (uint32_t i = 0; i < n; i++)
        if (md[i].hash == h && strncmp(md[i].name, name, KM_ID_MAX + 1) == 0)
            return (int)i;
    return -1;
}

/* A pool without a models list accepts any model name, and its usage
 * events name the one each request gave (docs/kmctl.md, persist).  Its
 * model rows, unused otherwise (models are set at creation only), keep the
 * names its requests gave, first come first served; a lease records
 * KM__MODEL_NAMED | (row + 1), or KM__MODEL_NAMED alone once every row
 * holds another name (src/layout.h).  A name is kept to its first
 * KM_ID_MAX bytes.  The rules:
 *   N1  A row is taken by CAS of named_by from 0, or from the tag of a
 *       process that died before N2, to the taker's tag.  Rows are never
 *       freed, so the taken rows come first: a scan that reaches a free row
 *       has passed every name recorded before it began.
 *   N2  The taker writes the name, then stores hash (never 0) with release
 *       semantics; a reader that loads a hash other than 0 (acquire) may
 *       read the name, which nobody writes again.
 *   N3  A row taken but not yet written (N2) is passed over while its taker
 *       lives: the name may then be taken twice, in two rows that both name
 *       it rightly.
 * Called only when a request names a model in such a pool; the scan is
 * that of model_find. */
static __attribute__((noinline)) uint32_t model_named(km_env *e, uint32_t p, const char *name)
{
    km__model *md = km__models(e, p);
    size_t len = strnlen(name, KM_ID_MAX);
    uint32_t h = KM__FNV32_INIT;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)name[i]) * KM__FNV32_PRIME;
    h += !h; /* 0: not written (N2) */
    for (uint32_t i = 0; i < e->geom.cap_models; i++) {
        km__model *m = &md[i];
        uint32_t v = ck_pr_load_32(&m->hash);
        if (v) {
            ck_pr_fence_load(); /* the hash before the name (N2) */
            if (v == h && memcmp(m->name, name, len) == 0 && m->name[len] == '\0')
                return KM__MODEL_NAMED | (i + 1);
            continue;
        }
        uint64_t by = ck_pr_load_64(&m->named_by);
        if (by && km__proc_tag_live(&e->seg, by))
            continue; /* being written by a live taker (N3) */
        if (!ck_pr_cas_64(&m->named_by, by, e->seg.tag)) {
            i--; /* taken meanwhile: look at the row again */
            continue;
        }
        memcpy(m->name, name, len);
        m->name[len] = '\0';
        ck_pr_fence_store(); /* the name before the hash (N2; pairs with the fence above) */
        ck_pr_store_32(&m->hash, h);
        return KM__MODEL_NAMED | (i + 1);
    }
    return KM__MODEL_NAMED;
}

/* The pool's reserve is held (rsv, non-zero: src/wait.c, "Fair waiting"):
 * which key (index + 1) does this acquire pass over for it?  None if this
 * thread's own wait holds it, or once it expired (its holder stopped
 * renewing: stopped or dead, and not reaped yet).  A reserve and its key
 * are two words: a key read just after a change of holder may be the
 * previous holder's for a moment, which costs fairness, not safety. */
static __attribute__((noinline)) uint32_t reserve_yield(const km__pool *pool, uint64_t rsv,
                                                        uint64_t now)
{
    if (rsv == km__wait_token || now >= ck_pr_load_64(&pool->reserve_until))
        return 0;
    return ck_pr_load_32(&pool->reserve_key);
}

/* One pass over the pool in the order of `strategy`. */
KM__HOT int pass(km_env *e, const km__member *m, uint32_t n, int strategy, uint32_t start,
                    key_scan *sc, km_lease *out)
{
    switch (strategy) {
    case KM_STRATEGY_LEAST_BUSY:
    case KM_STRATEGY_LATENCY:
    case KM_STRATEGY_RELIABILITY:
        return pick_scored(e, m, n, strategy, sc, out);
    case KM_STRATEGY_COST:
        for (uint32_t j = 0; j < n; j++) /* cheapest first: the price index */
            if (try_key(e, m[j].by_cost, sc, out))
                return 1;
        return 0;
    default: /* round robin, weighted and fill-first differ in `start` */
        for (uint32_t j = 0; j < n; j++) {
            uint32_t i = start + j;
            if (i >= n)
                i -= n;
            if (try_key(e, m[i].key, sc, out))
                return 1;
        }
        return 0;
    }
}

/* Result of a failed scan.  *wake (for km_acquire_wait) is the clock time
 * at which a key may be admissible, KM__NEVER if only a release or an
 * operator can help; the caller's retry_at_ns also folds in the poll hint. */
static int finish_scan(const key_scan *sc, km_lease *out, uint64_t *wake)
{
    if (km__wait_token) /* a km_acquire_wait attempt: the key it waits for */
        km__wait_key = sc->retry_key;
    out->retry_at_ns = 0;
    *wake = KM__NEVER;
    if (sc->usable == 0)
        return sc->cost_blocked ? KM_ECOST : KM_EUNAVAIL;
    *wake = sc->a.retry == KM__NEVER ? KM__NEVER : km__max64(sc->a.retry, sc->a.now);
    out->retry_at_ns = km__min64(*wake, sc->a.poll == KM__NEVER ? KM__NEVER : sc->a.now + sc->a.poll);
    if (out->retry_at_ns == KM__NEVER) /* nothing timed: look again soon */
        out->retry_at_ns = sc->a.now + KM__POLL_BUSY_NS;
    return KM_EAGAIN;
}

KM__HOT int acquire(km_env *e, const km_request *req, km_lease *out, uint64_t *wake);

KM_EXTERN int km_acquire(km_env *e, const km_request *req, km_lease *out)
{
    uint64_t wake;
    return acquire(e, req, out, &wake);
}

/* Key index of `id` among the n members of m, or KM_ENOKEY.  Removed keys
 * are not found. */
int km__find_in(km_env *e, const km__member *m, uint32_t n, const char *id)
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
KM__HOT int acquire_in(km_env *e, uint32_t p, int strategy, const km_request *req,
                           key_scan *sc, km_lease *out, uint64_t *wake)
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
        if (try_key(e, (uint32_t)ki, sc, out))
            return KM_OK;
        if (sc->soft_skipped) {
            sc->allow_soft = 1;
            if (try_key(e, (uint32_t)ki, sc, out))
                return KM_OK;
        }
        return finish_scan(sc, out, wake);
    }
    switch (strategy) {
    case KM_STRATEGY_ROUND_ROBIN: {
        /* Each thread rotates its own cursor, seeded at a random key, so
         * round robin writes no shared word: a pool-wide cursor would be
         * the one line every acquire of every process fights over.  Every
         * thread spreads its requests evenly over the keys, so all of them
         * together do too.  The modulo is Lemire's fastmod (a 64-bit div
         * costs ~10 ns here). */
        if (rr_cursor == 0)
            rr_cursor = (uint32_t)(rng_next() >> 33) | 1;
        uint32_t c = rr_cursor++;
        start = n == 1 ? 0 : (uint32_t)(((unsigned __int128)(v->rr_magic * c) * n) >> 64);
        break;
    }
    case KM_STRATEGY_WEIGHTED: {
        uint64_t total = v->total_weight ? v->total_weight : 1;
        uint32_t r = (uint32_t)(rng_next() % total), lo = 0, hi = n - 1;
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
    if (pass(e, m, n, strategy, start, sc, out))
        return KM_OK;
    if (sc->soft_skipped) { /* only keys over a soft budget are left */
        sc->allow_soft = 1;
        if (pass(e, m, n, strategy, start, sc, out))
            return KM_OK;
    }
    return finish_scan(sc, out, wake);
}

/* The pool's part of an acquire, inside its epoch section. */
KM__HOT int acquire_pool(km_env *e, uint32_t p, const km_request *req, uint64_t now,
                         km_lease *out, uint64_t *wake)
{
    km__pool *pool = &km__pools(e)[p];
    key_scan sc = {.a = {.now = now, .retry = KM__NEVER, .poll = KM__NEVER,
                         .tokens = req->tokens}};
    /* Only a LIVE pool is handed out.  Loaded inside the section, after its
     * load of the epoch (km__rd_enter's fence): a pool removed before the
     * grace period of km_pool_remove reads as such here (shm/epoch.c). */
    if (__builtin_expect(ck_pr_load_32(&pool->state) != KM__PST_LIVE, 0))
        return KM_ENOPOOL;
    /* The state before the pool's rows (name, models, member lists): pairs
     * with km_pool_add's store fence before it stores LIVE (src/reconfig.c),
     * so a pool seen LIVE is seen whole.  A compiler barrier on x86. */
    ck_pr_fence_load();
    /* The pool's settings: single words km_pool_set stores while we run
     * (relaxed loads; each steers a choice, nothing more; a call that
     * returned before this acquire began is seen, src/reconfig.c). */
    int strategy = req->strategy ? req->strategy : (int)ck_pr_load_32(&pool->strategy);
    if (strategy <= KM_STRATEGY_DEFAULT || strategy >= KM_STRATEGY_COUNT)
        return KM_EINVAL;
    if (req->model && pool->n_models) {
        int mi = model_find(e, p, req->model);
        if (mi < 0)
            return KM_ENOMODEL;
        sc.model = (uint32_t)mi + 1;
        if (pool->model_mode == KM_MODELS_PER_MODEL)
            sc.md = &km__models(e, p)[mi];
    } else if (req->model) {
        sc.named = model_named(e, p, req->model);
    }
    /* A pool's hard budget; under the fleet (`fleet`, a word of the line
     * read here) it counts the other hosts' spend too (src/fleet.c).  A
     * pool without a budget pays nothing more than before. */
    uint64_t budget = ck_pr_load_64(&pool->budget_microusd);
    if (budget && ck_pr_load_32(&pool->budget_hard) &&
        (__builtin_expect(ck_pr_load_32(&pool->fleet), 0)
             ? km__fleet_pool_over(e, pool)
             : ck_pr_load_64(&pool->spend.spent) >= budget &&
                   km__spend_now(&pool->spend, ck_pr_load_32(&pool->budget_period),
                                 (int32_t)ck_pr_load_32((uint32_t *)&pool->budget_tz_min),
                                 e->tzt) >= budget)) /* rolled first if its period ended */
        return KM_EBUDGET;
    /* A starving waiter's reserve: one load of a word in the line read
     * above (budget), 0 unless a km_acquire_wait caller starves.  A sleeper
     * loads it after wake_seq (its fence), so a drop it missed wakes it.
     * Plain loads: a stale view passes over a key once too often or too
     * rarely, nothing more. */
    uint64_t rsv = ck_pr_load_64(&pool->reserve);
    if (__builtin_expect(rsv != 0, 0))
        sc.yield_key = reserve_yield(pool, rsv, sc.a.now);
    return acquire_in(e, p, strategy, req, &sc, out, wake);
}

KM__HOT int acquire_once(km_env *e, const km_request *req, km_lease *out, uint64_t *wake)
{
    if (!e || !req || !out || req->pool < 0)
        return KM_EINVAL;
    /* acq_pools is 0 on a handle without a process slot (src/internal.h):
     * KM_ENOPOOL here, told apart in acquire_failed. */
    if ((uint32_t)req->pool >= e->acq_pools)
        return KM_ENOPOOL;
    uint64_t now = km__now();
    *wake = KM__NEVER;
    /* The whole acquire is one epoch section, the pool's settings and
     * state included: a pool removed, or its row reused, is rewritten only
     * after every section that could read it has left (src/reconfig.c). */
    km__rdr *r = km__rd_enter(&e->seg, now);
    int rc = acquire_pool(e, (uint32_t)req->pool, req, now, out, wake);
    km__rd_exit(r);
    return rc;
}

/* One acquire, and if nothing was admissible (KM_EAGAIN, KM_EUNAVAIL), a
 * second one after reaping: capacity may be held by processes that died.
 * The reap runs at most once a second per process (system calls, off the
 * path of any acquire that succeeds). */
static __attribute__((noinline)) int acquire_reaped(km_env *e, const km_request *req,
                                                         km_lease *out, uint64_t *wake, int rc)
{
    uint64_t now = km__now();
    if (now - ck_pr_load_64(&e->last_reap_ns) < KM__NS_PER_S)
        return rc;
    km_reap_report r;
    ck_pr_store_64(&e->last_reap_ns, now);
    km__reap_dead(e, &r, 0);
    return r.leases || r.recounted ? acquire_once(e, req, out, wake) : rc;
}

/* A failed attempt: a handle without a slot is told apart from an unknown
 * pool (both fail acquire_once's one bounds check); KM_EAGAIN and
 * KM_EUNAVAIL get a reap and a second attempt. */
static __attribute__((noinline)) int acquire_failed(km_env *e, const km_request *req,
                                                    km_lease *out, uint64_t *wake, int rc)
{
    if (rc == KM_ENOPOOL && !e->acq_pools)
        return KM_EREADONLY;
    if (rc != KM_EAGAIN && rc != KM_EUNAVAIL)
        return rc;
    return acquire_reaped(e, req, out, wake, rc);
}

/* Inline in km_acquire only; what did not succeed is out of line. */
KM__HOT int acquire(km_env *e, const km_request *req, km_lease *out, uint64_t *wake)
{
    int rc = acquire_once(e, req, out, wake);
    if (__builtin_expect(rc == KM_OK, 1))
        return rc;
    return acquire_failed(e, req, out, wake, rc);
}

/* The same, out of line, for km_acquire_wait (whose attempts are not the
 * path a nanosecond is counted on). */
__attribute__((noinline)) int km__acquire_slow(km_env *e, const km_request *req,
                                                km_lease *out, uint64_t *wake)
{
    return acquire(e, req, out, wake);
}

