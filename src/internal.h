/*
 * src/internal.h - declarations shared by the library's files.  Not installed.
 *
 * Where things are.  src/ is the pool; shm/ (shm/shm.h) the segment it
 * lives in.  The pool's schema is src/layout.h; its hot paths are inline in
 * src/gcra.h (admission), src/slots.h (lease slots), src/usage.h (usage
 * events), src/wait.h (waking sleepers), src/owner.h (who holds a slot);
 * the entry points are in one file each: attach.c, create.c, acquire.c,
 * wait.c, release.c, reap.c, info.c, check.c, reconfig.c, usage.c,
 * snapshot.c, restore.c, provider.c, config.c, names.c.
 *
 * Names.  One rule for the library (src/ and shm/):
 *   - file-local (static) functions, variables and types: no prefix
 *     (try_key, live_cache, restore_ctx): a name without one is defined in
 *     the file that uses it;
 *   - internal names shared by several files (declared in a header,
 *     including the static inline helpers there): km__ (km__slot_claim,
 *     km__seg); internal macros, file-local or not: KM__, since macros have
 *     no scope;
 *   - the public API (include/keymesh.h): km_ and KM_.
 * So every km__ name crosses a file boundary, and a check of which folder
 * calls which (shm/ never calls up into src/) only has to look at those.
 *
 * Memory ordering.  Words that change while processes run (limit pairs,
 * key states and cooldowns, counters, in-flight flags, lease slots, epochs,
 * reader rows) are read and written with ck_pr loads, stores and
 * read-modify-writes.  Configuration words (a key's parameters, id, secret
 * and metadata, a pool's settings, the header's geometry) are written
 * before they are published and read plainly after: by creation before the
 * magic (km__seg_publish), by the epoch protocol (a key row reused, a member
 * list replaced: shm/epoch.c), or behind a key's `updating` flag (limits
 * rewritten: src/reconfig.c).  A pool's strategy, cooldowns, failure
 * threshold and budget words change live (km_pool_set): single words,
 * stored and loaded with ck_pr, each read as old or new.  A single-word
 * load (state, cooldown_until, a
 * limit word, an in-flight flag) needs no ordering of its own: a stale
 * value can only steer a choice, and every choice is decided by a locked
 * read-modify-write that sees the current value.  Where one write must be
 * seen before another, the comment at that point says which: the lease
 * phase before the limit atomics (ck_pr_fence_store_atomic, free on x86-64
 * where locked instructions are full barriers; P2 in src/layout.h),
 * cooldown before state, phase before owner when a slot is freed (I3), and
 * the pool's waiter count after the locked instructions that free capacity
 * (src/wait.c).
 */
#ifndef KM_INTERNAL_H
#define KM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <ck_pr.h>

#include "keymesh.h"
#include "../shm/shm.h"
#include "layout.h"
#include "util.h"

/* Defaults applied by the config parser (documented in README). */
#define KM__DEF_CAP_KEYS 64
#define KM__DEF_CAP_PROCS 64
#define KM__DEF_CAP_POOLS 8
#define KM__DEF_CAP_INFLIGHT 64
#define KM__DEF_COOLDOWN_S 60
#define KM__DEF_MAX_COOLDOWN_S 3600
#define KM__DEF_MAX_FAILURES 5
#define KM__DEF_WEIGHT 1
#define KM__DEF_CAP_MODELS 8
#define KM__DEF_CAP_USAGE 4096
#define KM__WEIGHT_MAX 1000000u
/* Prices are in micro-USD per this many tokens. */
#define KM__PRICE_TOKENS 1000
/* The longest a provider's answer is believed: a Retry-After (provider.c),
 * a limit window's reset (release.c).  One day. */
#define KM__VIEW_CAP_S KM__S_PER_DAY
#define KM__MAX_CAP_USAGE (1u << 20)

/* ------------------------------------------------------------ configuration
 * A parsed configuration.  Key limits are already merged: a key's window
 * takes the key's own value if it set one, else the pool's. */
typedef struct km__limit_cfg {
    uint64_t limit;  /* 0: none */
    uint64_t burst;  /* 0: the mode's default (set by km__limit_resolve) */
    int mode;        /* km_limit_mode */
} km__limit_cfg;

typedef struct km__key_cfg {
    char id[KM_ID_MAX + 1];
    char secret[KM_SECRET_MAX + 1];
    uint32_t secret_len;
    uint32_t weight;
    uint32_t max_inflight; /* 0: the segment's cap_inflight */
    km__limit_cfg limits[KM_WIN_COUNT];
    /* Prices in micro-USD per 1000 tokens (key's, else the pool's). */
    uint64_t price_in, price_out;
    uint64_t budget_microusd; /* 0: none */
    int budget_hard;
    int budget_period;        /* KM__PERIOD_* (src/budget.h) */
    int budget_tz_min;        /* the period's zone, minutes east of UTC, or
                               * after km__tz_bind its code (src/layout.h) */
    char budget_tz[KM__TZ_NAME_MAX + 1]; /* a named zone ("tz"), or "" */
    char meta[KM_META_MAX + 1]; /* compact JSON object text, or "" */
    /* The key's own limits of its pool's models ("models": per_model
     * pools): n_own entries, owned by the configuration (km__cfg_destroy
     * frees them). */
    uint32_t n_own;
    struct km__own_cfg *own;
    /* "fleet": 1 under the fleet; 0 not said (the segment's "fleet"
     * decides), -1 refused by the key ("fleet": false).  fleet_strict, fleet_id: its object
     * form ({"strict": true, "id": "..."}). */
    int fleet;
    int fleet_strict;
    char fleet_id[KM_ID_MAX + 1];
} km__key_cfg;

/* One model's limits on one key: every window resolved (`own_set`'s from
 * the key, the others the pool's model's). */
typedef struct km__own_cfg {
    uint32_t model;   /* index in the pool's models */
    uint32_t own_set; /* bit w: the key names window w */
    km__limit_cfg limits[KM_WIN_COUNT];
} km__own_cfg;

/* What a pool gives keys that do not say otherwise (kept in the segment
 * for keys added later). */
typedef struct km__pool_defaults {
    km__limit_cfg limits[KM_WIN_COUNT];
    uint32_t max_inflight;
    uint64_t price_in, price_out; /* micro-USD per 1000 tokens */
    /* The pool's models, which a key's "models" may name (configuration
     * files only: NULL where a key is parsed alone, km_key_add). */
    int in_config;  /* 1: a configuration's pool; 0: km_key_add's */
    int model_mode;
    uint32_t n_models;
    const struct km__model_cfg *models;
} km__pool_defaults;

typedef struct km__model_cfg {
    char name[KM_ID_MAX + 1];
    km__limit_cfg limits[KM_WIN_COUNT]; /* per_model pools: on each key */
} km__model_cfg;

typedef struct km__pool_cfg {
    char name[KM_ID_MAX + 1];
    int strategy; /* KM_STRATEGY_* (never DEFAULT) */
    uint32_t cooldown_s, max_cooldown_s, max_failures;
    uint32_t first_key, n_keys; /* range in km_config.keys */
    int model_mode;             /* km_model_mode */
    uint32_t n_models;
    km__model_cfg *models;      /* n_models entries (owned by the config) */
    uint64_t budget_microusd;   /* 0: none */
    int budget_hard;
    int budget_period, budget_tz_min; /* as in km__key_cfg */
    char budget_tz[KM__TZ_NAME_MAX + 1];
    km__pool_defaults defaults;
} km__pool_cfg;

struct km_config {
    uint32_t cap_keys, cap_pools, cap_procs, cap_inflight;
    uint32_t cap_usage;  /* usage events per process ring (power of two) */
    uint32_t cap_models; /* models per pool */
    uint32_t n_pools, n_keys;
    km__pool_cfg *pools;
    km__key_cfg *keys; /* pools' keys, contiguous per pool */
    /* Fleet-wide limits: fleet_region 1 if the segment gets a fleet region
     * (a fleet key, the top-level "fleet", or capacity.fleet); fleet_all:
     * every key not saying "fleet": false is a fleet key; fleet_policy:
     * KM_FLEET_STOP or KM_FLEET_LOCAL until an agent claims. */
    int fleet_region, fleet_all, fleet_policy;
};

/* Period of a window in ns, and whether it counts requests (else tokens). */
uint64_t km__window_period_ns(int window);
static inline int km__window_is_requests(int w)
{
    return w == KM_WIN_RPM || w == KM_WIN_RPH || w == KM_WIN_RPD;
}

/* Compute the GCRA parameters of one limit.  Returns KM_OK, or KM_ECONFIG if
 * the limit cannot be realised (e.g. sliding with burst >= limit). */
int km__limit_gcra(const km__limit_cfg *l, uint64_t period_ns,
                   uint64_t *emission_ns, uint64_t *tau_ns, uint64_t *burst);
/* Why km__limit_gcra refused l, for a configuration error: one phrase into
 * buf (NUL-terminated, truncated to len). */
void km__limit_why(const km__limit_cfg *l, uint64_t period_ns, char *buf, size_t len);

/* ------------------------------------------------------------------ handle */
typedef struct km__udefer km__udefer; /* src/usage.c */
struct km_env {
    km__seg seg;       /* the mapping, our process slot, epochs (shm/shm.h) */
    /* A private copy of the header taken and validated at attach (by shm/
     * for its words, by src/attach.c for the rest): every capacity, offset
     * and n_pools is read from here, never again from shared memory, so a
     * header rewritten after attach cannot steer an access outside the
     * mapping. */
    km__hdr geom;
    /* The segment's zone table (src/tz.c), derived from geom at attach:
     * budgets in named time zones place their boundaries with it. */
    const km__tzone *tzt;
    uint64_t last_reap_ns; /* km_acquire's reap at most once a second */
    /* Grace-period waits of reconfiguration: set by km_set_admin_timeout
     * while other threads of the handle may be reconfiguring, so stored and
     * loaded atomically (relaxed: it orders nothing, each call reads one
     * value or the other) through km__admin_timeout. */
    uint32_t admin_timeout_ms;
    /* geom.n_pools if this handle holds a process slot, else 0 (opened
     * KM_OPEN_READONLY or KM_OPEN_NO_SLOT): km_acquire's one bounds check on
     * the pool refuses such a handle at no cost to the others. */
    uint32_t acq_pools;
    /* A drain with KM_USAGE_DEFER keeps here what km_usage_commit stores
     * (src/usage.c, U4): per ring, the cursor and the count it dropped.
     * NULL until the first deferred drain; freed by km_close. */
    km__udefer *usage_defer;
};

static inline uint32_t km__admin_timeout(const km_env *e)
{
    return ck_pr_load_32(&e->admin_timeout_ms);
}

/* ---------------------------------------------------- the pool's regions */
static inline km__pool *km__pools(const km_env *e)
{
    return (km__pool *)KM__AT(e->seg.base, e->geom.off_pools);
}
/* Member list `buf` (0 or 1) of a pool; the current one is pool.cur. */
static inline km__member *km__members(const km_env *e, uint32_t pool, uint32_t buf)
{
    return (km__member *)KM__AT(e->seg.base, e->geom.off_members) +
           ((size_t)pool * 2 + (buf & 1)) * e->geom.cap_keys;
}
static inline km__model *km__models(const km_env *e, uint32_t pool)
{
    return (km__model *)KM__AT(e->seg.base, e->geom.off_models) +
           (size_t)pool * e->geom.cap_models;
}
static inline km__mwin *km__mwins(const km_env *e, uint32_t key)
{
    return (km__mwin *)KM__AT(e->seg.base, e->geom.off_mwin) +
           (size_t)key * e->geom.cap_models;
}
/* The model row a lease's or usage event's model word names (listed model
 * index + 1, or KM__MODEL_NAMED | row + 1), counted on in km__mwin; NULL
 * for none (0, a named request past every row) or a word out of range (the
 * lease slot is shared memory: never trusted). */
static inline km__mwin *km__mrow(const km_env *e, uint32_t key, uint32_t model)
{
    uint32_t row = (model & ~KM__MODEL_NAMED) - 1; /* 0 wraps: out of range */
    return row < e->geom.cap_models ? &km__mwins(e, key)[row] : NULL;
}
static inline km__key *km__keys(const km_env *e)
{
    return (km__key *)KM__AT(e->seg.base, e->geom.off_keys);
}
static inline km__lease *km__leases(const km_env *e, uint32_t key)
{
    return (km__lease *)KM__AT(e->seg.base, e->geom.off_leases) +
           (size_t)key * e->geom.cap_inflight;
}
/* In-flight flags of key `key`: byte s is 1 while lease slot s is in
 * flight (see km__lease in src/layout.h). */
static inline uint8_t *km__busy(const km_env *e, uint32_t key)
{
    return (uint8_t *)KM__AT(e->seg.base, e->geom.off_busy) +
           (size_t)key * km__busy_stride(e->geom.cap_inflight);
}

/* The fleet region (src/layout.h), or NULL: a segment without fleet keys. */
static inline km__fhdr *km__fleet(const km_env *e)
{
    return e->geom.off_fleet ? (km__fhdr *)KM__AT(e->seg.base, e->geom.off_fleet) : NULL;
}
/* The fleet block of key `key` (the segment has a fleet region). */
static inline km__fkey *km__fkeys(const km_env *e, uint32_t key)
{
    return (km__fkey *)KM__AT(e->seg.base, e->geom.off_fleet + sizeof(km__fhdr)) + key;
}
/* The index, among the fleet blocks, of model `model` (0-based) of key
 * `key`: after every key's block (src/layout.h, "Model blocks"). */
static inline uint32_t km__fmodel_ix(const km_env *e, uint32_t key, uint32_t model)
{
    return e->geom.cap_keys + key * e->geom.cap_models + model;
}

/* The sleeper row of process slot `slot` (km__wrow, src/layout.h): the
 * region after the usage rings, whose offset the header does not store. */
static inline km__wrow *km__wrows(const km_env *e, uint32_t slot)
{
    return (km__wrow *)KM__AT(e->seg.base, e->geom.off_usage +
                                           km__usage_bytes(e->geom.cap_procs, e->geom.cap_usage) +
                                           (uint64_t)slot * km__wrow_stride(e->geom.cap_pools));
}

/* Does pool index `pool` name a pool now (state LIVE)?  Pools are added
 * and removed live: an index below cap_pools may name a free or removed
 * row.  An acquire re-checks inside its epoch section (src/acquire.c); a
 * reader of statistics takes the answer as of its call. */
static inline int km__pool_live(const km_env *e, int pool)
{
    return pool >= 0 && (uint32_t)pool < e->geom.cap_pools &&
           ck_pr_load_32(&km__pools(e)[pool].state) == KM__PST_LIVE;
}
/* Pool rows ever used (the header's n_pools, under cap_pools): every pool
 * index below it may name a pool, none above. */
static inline uint32_t km__pools_used(const km_env *e)
{
    uint32_t n = ck_pr_load_32(&e->seg.hdr->n_pools);
    return n < e->geom.cap_pools ? n : e->geom.cap_pools;
}

/* Keys in pools now: rows neither free nor removed (a removed key's row
 * counts in the header's n_keys until it is reclaimed).  A figure for
 * people, read row by row (src/info.c). */
uint32_t km__keys_live(const km_env *e);

/* The intent record in the header (src/layout.h). */
static inline km__intent *km__intent_of(const km_env *e)
{
    return (km__intent *)(void *)e->seg.hdr->intent;
}

/* ------------------------------------------------------------ key state */

/* Move state from any of the states in `from_mask` (bit per KM__ST_*) to
 * `to`, by CAS: the one way a key's state changes outside the admin lock. */
static inline void km__state_to(km__key *k, uint32_t from_mask, uint32_t to)
{
    uint32_t cur = ck_pr_load_32(&k->state);
    while (cur < 32 && (from_mask & (1u << cur)) && !ck_pr_cas_32_value(&k->state, cur, to, &cur))
        ;
}

#define KM__LIVE_STATES ((1u << KM__ST_ACTIVE) | (1u << KM__ST_FAILING) | (1u << KM__ST_PROBING))

/* The probe lease (km__key.probe).  Only the holder of lease slot `slot`
 * -- its owner, or a reaper that took the slot over -- sets the probe word
 * to slot + 1 or clears it, so while it holds the slot this answers for
 * good whether its lease is the key's probe. */
static inline int km__is_probe(const km__key *k, uint32_t slot)
{
    return ck_pr_load_32(&k->probe) == slot + 1;
}
/* End the probe of the holder of lease slot `slot`, after its outcome moved
 * the key's state (so the word never frees while the key still says
 * PROBING: an acquirer that sees FAILING and a free word may probe). */
static inline void km__probe_clear(km__key *k)
{
    ck_pr_fence_atomic_store(); /* the state's CAS before the word is free */
    ck_pr_store_32(&k->probe, 0);
}
/* A probe that will never report (cancelled, abandoned, reaped mid-way)
 * lets the next one go: PROBING -> FAILING, then the word.  Nothing if
 * slot `slot` does not hold the probe: another lease of the key ends none. */
static inline void km__probe_drop(km__key *k, uint32_t slot)
{
    if (!km__is_probe(k, slot))
        return;
    km__state_to(k, 1u << KM__ST_PROBING, KM__ST_FAILING);
    km__probe_clear(k);
}

/* --------------------------------------------- functions across files */

/* src/create.c */
/* ceil(2^64 / n): the round-robin cursor modulo n without a division. */
uint64_t km__rr_magic(uint32_t n);
/* Write a key row's configuration and identity (a row no reader reaches). */
void km__key_write(km_env *e, km__key *k, uint32_t pool, const km__key_cfg *kc);
/* Write a key's limit parameters; returns its new window mask. */
uint32_t km__key_limits_write(km__key *k, const km__limit_cfg *lc);
/* Write a key's own limits of one model (all windows resolved; own_set:
 * those the key names) into its model row. */
void km__mwin_limits_write(km__mwin *mw, const km__limit_cfg *lc, uint32_t own_set);
/* Write the pools, member lists, models and keys of a new segment. */
void km__pool_init(km_env *env, const km_config *cfg);
/* Pool row p's settings and models (every model row of it rewritten), from
 * pc: at creation, and by km_pool_add on a row in state ADDING. */
void km__pool_write(km_env *e, uint32_t p, const km__pool_cfg *pc);
/* A key's own limits of its pool's n_models models (a configuration's
 * keys[i].models), on a row no reader reaches. */
void km__key_own_write(km_env *e, km__key *k, uint32_t ki, const km__key_cfg *kc, uint32_t n_models);
/* A model row's name and limits; its limit parameters alone. */
void km__model_write(km__model *md, const km__model_cfg *mc);
uint32_t km__model_limits_write(km__model *md, const km__limit_cfg *lc);
/* qsort_r comparator of key indices by price (input + output, per 1000
 * tokens), then index; the context is the segment's key rows (km__keys).
 * The price order of a pool's member list (km__member.by_cost). */
int km__cmp_price(const void *a, const void *b, void *keys);

/* src/fleet.c */
/* The fleet header of a new segment (before its keys are written). */
void km__fleet_init(km_env *e, const km_config *cfg);
/* A key row's fleet words (fleet flag and mask, credit, its fleet block),
 * from kc: with km__key_write, on a row no reader reaches. */
void km__fleet_key_init(km_env *e, uint32_t ki, const km__key_cfg *kc);
/* Key k's health changed here (KM_FLEET_EV_* kind): the agent tells the
 * fleet.  Nothing for a key outside the fleet. */
void km__fleet_health_note(km_env *e, km__key *k, int kind);
/* Fleet-wide spend budgets (src/fleet.c; called only for a key with a
 * budget and the fleet flag).  others: what the other hosts spent in the
 * budget's current period, as the agent last applied it (0 if for another
 * period).  over: is the key's budget spent, fleet-wide (the local spend
 * plus others)?  left: the budget less others, at least 1 (what the local
 * spend may reach before the fleet's budget is spent). */
uint64_t km__fleet_spend_others(const km_env *e, const km__key *k);
int km__fleet_over_budget(const km_env *e, km__key *k);
/* km_spend_reset removed `removed` micro-USD from fleet key ki's record
 * (km_pool_spend_reset from a fleet pool's: ki KM_FLEET_BUDGET_POOL | the
 * pool's index), whose period ends at end_ns: counted in its fleet block
 * or pool row (sp_rst), so the agent still reports what it had not. */
void km__fleet_spend_reset(km_env *e, uint32_t ki, uint64_t end_ns, uint64_t removed);
uint64_t km__fleet_budget_left(const km_env *e, const km__key *k);
/* The same for a pool whose budget counts fleet-wide (km__pool.fleet):
 * over, and left (the settle's budget). */
int km__fleet_pool_over(const km_env *e, km__pool *pool);
uint64_t km__fleet_pool_budget_left(const km__pool *pool);

/* src/reconfig.c */
/* km_key_set_state; note 0: the fleet's verdict applied by its agent, not
 * a change made here (km__fleet_health_note not called). */
int km__key_set_state(km_env *e, int key, int state, int note);

/* src/attach.c */
/* Build a segment for `name` under a new temporary name (written to tmp),
 * published and attached, but not yet under its name: the first half of
 * km_create, and of km_restore, which fills it further in between. */
int km__create_tmp(const char *name, const km_config *cfg, unsigned mode, km_env **out,
                   char tmp[KM__SEG_NAME_BUF]);
/* The second half: rename tmp to name without replacing anything.  On
 * failure the handle is closed and the temporary removed. */
int km__create_commit(km_env *e, const char *tmp, const char *name);
/* km_create_private (src/restore.c restores into one too). */
int km__create_private(const km_config *cfg, km_env **out);

/* src/acquire.c */
/* km_acquire out of line, with the clock time a key may be admissible in
 * *wake (KM__NEVER: only a release or an operator can help). */
int km__acquire_slow(km_env *e, const km_request *req, km_lease *out, uint64_t *wake);
/* Key index of `id` among the n members of m, or KM_ENOKEY (removed keys
 * are not found).  Inside an epoch section. */
int km__find_in(km_env *e, const km__member *m, uint32_t n, const char *id);

/* src/reap.c */
/* Release (as abandoned) every ACTIVE lease held by `owner`. */
void km__release_all_owned(km_env *env, uint64_t owner);
/* Number of lease slots `owner` holds (any phase, reaper marks of it too). */
uint64_t km__count_owned(km_env *env, uint64_t owner);
/* Release every lease slot whose owner is dead (see km_reap). */
void km__reap_leases(km_env *env, km_reap_report *r, int repair);
/* Free the process slots of dead processes, releasing their leases (see
 * km_reap in keymesh.h).  Returns the number of process slots freed. */
int km__reap_dead(km_env *env, km_reap_report *report, int repair);

/* src/wait.c */
/* Take the sleepers that dead processes left counted out of every pool
 * where process slot `slot` (whose process is dead) counted any, then clear
 * its row.  Returns 1 when the row is clear (the slot may be freed), 0 when
 * live sleepers kept the rows moving (a later reap retries). */
int km__waiters_reap(km_env *env, uint32_t slot);
/* A consistent view of pool p's sleepers for km_check: the pool's count,
 * the sum over the rows of live processes (and free slots) and over all
 * rows.  Returns 0 if the rows kept moving. */
int km__waiters_view(km_env *env, uint32_t pool, uint32_t *counted, uint64_t *live,
                     uint64_t *all);

/* src/usage.c */
/* Events per usage ring: a process slot's cap_usage, split between its
 * rings (cap_usage is 0 or a power of two >= 2, checked at attach). */
static inline uint32_t km__uring_cap(const km_env *e)
{
    return e->geom.cap_usage / KM__URINGS_PER_PROC;
}
/* Usage ring `ring` (0: the slot's single-writer ring, 1: its shared one)
 * of process slot proc_slot. */
static inline km__uring *km__urings(const km_env *e, uint32_t proc_slot, uint32_t ring)
{
    return (km__uring *)KM__AT(e->seg.base, e->geom.off_usage +
                                            ((uint64_t)proc_slot * (KM__URINGS_PER_PROC + e->geom.cap_usage) +
                                             (uint64_t)ring * (1 + km__uring_cap(e))) *
                                                KM__LINE);
}
/* km__usage_put, the producer, is inline in src/usage.h. */
/* A new occupant of process slot `slot`: seal events left half written. */
void km__usage_reset(km_env *e, uint32_t slot);

/* src/reconfig.c */
/* Take the admin lock (KM_EBUSY after the handle's admin timeout,
 * KM_EREADONLY on a read-only handle), resolving a dead writer's intent
 * first (see the top of src/reconfig.c). */
int km__admin_lock(km_env *e);
void km__admin_unlock(km_env *e);
void km__admin_init(km_env *e);
/* If the intent record names a writer that is dead, finish or undo it, when
 * the admin lock is free at once (never waits).  Reapers and attach. */
void km__admin_recover_dead(km_env *e);
/* The intent record as km_check reports it; returns its op (0: none). */
typedef struct km__intent_view {
    uint32_t op, step, key, pid;
    int alive;          /* its writer is alive */
    uint64_t recovered; /* intents of dead writers resolved since creation */
} km__intent_view;
int km__admin_intent(km_env *e, km__intent_view *v);

/* Fault injection (tests/t_fault.c): a point between two shared stores of an
 * administrative writer.  Only a build with -DKM_FAULT_INJECTION has it;
 * there the test's hook may kill the process at it. */
#ifdef KM_FAULT_INJECTION
extern void (*km__fault_hook)(const char *where);
#define KM__FAULT(where)                \
    do {                                \
        if (km__fault_hook)             \
            km__fault_hook(where);      \
    } while (0)
#else
#define KM__FAULT(where) ((void)0)
#endif

/* src/config.c: one key object, or a limits object, against a pool's
 * defaults (the segment's), for reconfiguration. */
int km__config_parse_key(const char *json, const km__pool_defaults *pd,
                         uint32_t cap_inflight, km__key_cfg *out,
                         char *errbuf, size_t errlen);
/* Windows named in `json` replace; null removes a window's limit.
 * *set: bit w given (with a limit or null). */
int km__config_parse_limits(const char *json, km__limit_cfg out[KM_WIN_COUNT],
                            uint32_t *set, char *errbuf, size_t errlen);
/* src/config.c: one pool object (an element of a configuration's "pools")
 * for km_pool_add, as the only pool of a configuration with the segment's
 * capacities (geom); *out is the caller's to free (km_config_free). */
int km__config_parse_pool(const char *json, const km__hdr *geom, km_config **out,
                          char *errbuf, size_t errlen);
/* The settings of km_pool_set: those given (stage.set), the windows of
 * "limits" (win_set; null removes), and the models named with their limits
 * (to change, or to append). */
typedef struct km__pool_setcfg {
    km__pstage stage;
    char budget_tz[KM__TZ_NAME_MAX + 1]; /* the budget's named zone, or "":
                                          * km_pool_set binds it (src/tz.c) */
    uint32_t win_set;
    km__limit_cfg limits[KM_WIN_COUNT];
    uint32_t n_models;
    km__model_cfg models[KM_MODELS_MAX];
} km__pool_setcfg;
int km__config_parse_pool_set(const char *json, const km__pool *cur, uint32_t cap_inflight,
                              km__pool_setcfg *out, char *errbuf, size_t errlen);
/* src/config_pool.c: one API key, one entry.  km__secret_eq: 1 if the two
 * secrets are equal, compared in constant time (every byte up to
 * KM_SECRET_MAX is read).  km__config_secret_dup: 1 if two of keys[0..n)
 * hold the same secret, *second the lowest index repeating an earlier one
 * and *first the earliest of those; 0 if none; KM_ENOMEM.  Neither keeps
 * or reveals the secrets (km_key_add checks a new key against the
 * segment's with km__secret_eq). */
int km__secret_eq(const char *a, size_t alen, const char *b, size_t blen);
int km__config_secret_dup(const km__key_cfg *keys, uint32_t n,
                          uint32_t *first, uint32_t *second);

#endif /* KM_INTERNAL_H */
