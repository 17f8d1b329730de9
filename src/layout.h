/*
 * src/layout.h - the pool's schema: the structs it keeps in the segment,
 * where each region lies, and the layout signature.  Internal; not
 * installed.
 *
 * Order in memory (km__layout computes the offsets):
 *
 *   km__hdr                    one per segment, page 0 (shm/seg.h)
 *   km__pool[cap_pools]
 *   km__member[cap_pools][2][cap_keys] each pool's two member lists
 *   km__model[cap_pools][cap_models]  each pool's models
 *   km__key[cap_keys]
 *   km__mwin[cap_keys][cap_models]    per-model limit pairs, counters and
 *                                     the key's own model limits
 *   km__lease[cap_keys][cap_inflight] lease slots, one row per key
 *   uint8_t[cap_keys][stride]  in-flight flags, one byte per lease slot;
 *                              stride = cap_inflight rounded up to a line
 *   km__proc[cap_procs]        process table (shm/seg.h)
 *   km__rdr[cap_procs][KM__RDR_PER_PROC]  reader rows (epochs, shm/seg.h)
 *   (km__uring + km__uev[cap_usage / 2])[cap_procs][2]  usage rings
 *   km__wrow[cap_procs]        sleepers of km_acquire_wait per process slot,
 *                              km__wrow_stride(cap_pools) bytes each
 *   km__tzone[KM__TZ_ZONES]    named time zones of budgets (src/tz.c)
 *
 * Every struct here and in shm/seg.h is pinned by _Static_assert and folded
 * into the layout signature (km__layout_signature), so a process built with
 * other sizes is refused at attach with KM_ELAYOUT instead of misreading the
 * segment.
 *
 * False sharing: words many processes write for different reasons sit on
 * different 64-byte lines; words one operation writes together share a line
 * (one line transfer instead of several).  See each struct.
 */
#ifndef KM_LAYOUT_H
#define KM_LAYOUT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "keymesh.h"
#include "../shm/seg.h"
#include "util.h"

/* Bytes of in-flight flags per key: one per lease slot, a key's own lines. */
static inline uint64_t km__busy_stride(uint32_t cap_inflight)
{
    return ((uint64_t)cap_inflight + KM__LINE - 1) & ~(uint64_t)(KM__LINE - 1);
}
/* The admin lock (src/reconfig.c) is a pthread_mutex_t placed in
 * km__hdr.admin: it must fit that line and be aligned for the mutex there.
 * Its size and alignment are in the layout signature below. */
_Static_assert(sizeof(pthread_mutex_t) <= sizeof(((km__hdr *)0)->admin) &&
                   offsetof(km__hdr, admin) % _Alignof(pthread_mutex_t) == 0,
               "the admin mutex fits, aligned, in km__hdr.admin");
_Static_assert(KM_WIN_COUNT == 6, "km__key lines 0-1 hold exactly 6 limit pairs");

/* Internal key states stored in km__key.state.  COOLING is never stored: a
 * key is cooling while cooldown_until is in the future.  FAILING is shown as
 * COOLING: the key hit max_failures and waits for its cooldown; after it, one
 * acquirer moves it to PROBING by CAS and gets the only lease. */
enum {
    KM__ST_ACTIVE = KM_KEY_ACTIVE,
    KM__ST_PROBING = KM_KEY_PROBING,
    KM__ST_DISABLED = KM_KEY_DISABLED,
    KM__ST_INVALID = KM_KEY_INVALID,
    KM__ST_EXHAUSTED = KM_KEY_EXHAUSTED,
    KM__ST_FAILING = 16,
    KM__ST_FREE = 17,   /* row not in use: never used, or reclaimed */
    KM__ST_REMOVED = 18 /* removed: no new lease; reclaimed after a grace
                         * period once its last lease is back */
};

/* A budget's spend (src/budget.c has the argument): micro-USD of the
 * current period and of the one before, and the wall-clock instant
 * (CLOCK_REALTIME ns) at which the current period ends, UINT64_MAX for a
 * budget without a period (or no budget).  `end_ns` and `spent` are one
 * 16-byte pair: a settle adds its cost to `spent` by fetch-add; the one
 * that first finds the clock at or past `end_ns` rolls the period with one
 * 16-byte CAS (end, spent) -> (next end, 0), so each boundary is crossed
 * exactly once and no cost is lost (an add between its load and its CAS
 * fails the CAS).  Only the winner then writes `prev` and counts `rolls`.
 * `warned` counts the settles that took a soft budget from under to at or
 * over its figure (once per period). */
/* A budget's period: none (the segment's life), or a calendar day, week
 * (from Monday 00:00) or month (from the 1st, 00:00) in its time zone. */
enum { KM__PERIOD_NONE, KM__PERIOD_DAY, KM__PERIOD_WEEK, KM__PERIOD_MONTH, KM__PERIOD_COUNT };

typedef struct km__spend {
    uint64_t end_ns;
    uint64_t spent;
    uint64_t prev;
    uint32_t rolls;
    uint32_t warned;
} __attribute__((aligned(16))) km__spend;
_Static_assert(sizeof(km__spend) == 32 && _Alignof(km__spend) == 16 &&
                   offsetof(km__spend, spent) == 8,
               "km__spend: (end_ns, spent) one 16-byte CAS pair");

/* A named time zone of a budget (src/tz.c): what every process needs to
 * place a period's boundary without reading tzdata.  Budgets name a zone by
 * code (km__key.budget_tz_min, km__pool.budget_tz_min): -840..840 is a fixed
 * offset in minutes; KM__TZ_NAMED + i is row i of the segment's zone table
 * (a region after the sleeper rows, KM__TZ_ZONES rows).  A row is written
 * once, by the creator or the holder of the admin lock, before any budget
 * names its code; `used` is stored last (release) and rows are never
 * rewritten: a reader that found the code finds the row whole. */
#define KM__TZ_NAMED 1000
#define KM__TZ_ZONES 8
#define KM__TZ_TRANS 32
#define KM__TZ_NAME_MAX 63
/* A POSIX TZ rule date: kind 1 Jn (1-365, no Feb 29), 2 n (0-365), 3
 * Mm.w.d; secs: local time of day of the change (may be < 0 or > 24h). */
typedef struct km__tzdate {
    uint8_t kind, m, w, d;
    uint16_t n;
    uint16_t pad;
    int32_t secs;
} km__tzdate;
_Static_assert(sizeof(km__tzdate) == 12, "km__tzdate size");
typedef struct km__tzone {
    char name[KM__TZ_NAME_MAX + 1];
    uint32_t used;      /* 1: the row is whole (stored last, release) */
    uint32_t n_trans;   /* explicit changes kept in at[]/off[] */
    int32_t base_off;   /* seconds east before at[0] */
    int32_t std_off;    /* the TZif footer's rule (seconds east) */
    int32_t dst_off;
    uint32_t has_dst;   /* 0: std_off all year */
    km__tzdate start, end; /* DST starts (local std time), ends (local DST) */
    int64_t rule_from;  /* UTC s: the rule from here on, the table before */
    int64_t at[KM__TZ_TRANS];  /* UTC s of each change, ascending */
    int32_t off[KM__TZ_TRANS]; /* seconds east from at[i] */
    uint8_t pad[8];
} km__tzone;
_Static_assert(sizeof(km__tzone) == 8 * KM__LINE && offsetof(km__tzone, rule_from) % 8 == 0 &&
                   offsetof(km__tzone, at) == 120,
               "km__tzone: eight lines, one row of the zone table");

/* The life of a pool row (km__pool.state).  FREE: never used (zeroed at
 * creation).  ADDING: being written by km_pool_add (unreachable).  LIVE.
 * REMOVING: km_pool_remove waits for its leases (acquires refused; back to
 * LIVE if they do not come back in time).  REMOVED: its keys retired; the
 * row is written again for another pool once no key row names it. */
enum { KM__PST_FREE = 0, KM__PST_ADDING, KM__PST_LIVE, KM__PST_REMOVING, KM__PST_REMOVED };

/* A km_pool_set's settings, staged in the pool row (km__pool.stage): which
 * are given (KM__PSET_* bits) and their values. */
enum { KM__PSET_STRATEGY = 1, KM__PSET_COOLDOWN = 2, KM__PSET_MAX_COOLDOWN = 4,
       KM__PSET_MAX_FAILURES = 8, KM__PSET_BUDGET = 16 };
typedef struct km__pstage {
    uint32_t set;
    uint32_t strategy, cooldown_s, max_cooldown_s, max_failures;
    uint32_t budget_hard, budget_period;
    int32_t budget_tz_min;
    uint64_t budget_microusd;
} km__pstage;
_Static_assert(sizeof(km__pstage) == 40, "km__pstage size");

/* One published member list of a pool: its length and the figures derived
 * from it.  A pool has two (see km__pool.cur). */
typedef struct km__pview {
    uint32_t n_keys;
    uint32_t pad;
    uint64_t total_weight;
    uint64_t rr_magic;  /* ceil(2^64 / n_keys): cursor % n_keys without div */
} km__pview;
_Static_assert(sizeof(km__pview) == 24, "km__pview size");

typedef struct km__pool {
    /* lines 0-1: configuration, written at creation or by km_pool_add on
     * a row no acquire reads; strategy, cooldowns, max_failures and the
     * budget's words stored one by one by km_pool_set (src/reconfig.c,
     * "Pools"); the reserve (below), written only while a waiter starves;
     * the row's state.  (Round robin keeps its cursor per thread: no word
     * here is written per acquire.) */
    char name[KM_ID_MAX + 1];
    uint32_t strategy;
    uint32_t cooldown_s, max_cooldown_s, max_failures;
    uint32_t model_mode;
    uint32_t n_models;
    uint64_t budget_microusd; /* 0: none */
    uint32_t budget_hard;
    /* The pool's reserve (src/wait.c, "Fair waiting"): 0, or the token of
     * the one waiter for which other acquires pass over key `reserve_key`
     * - 1 until `reserve_until` (clock ns).  In this line because every
     * acquire reads the line already (strategy, budget): the no-waiter
     * path costs one load of a word it has in cache.  Written only by a
     * waiter that has starved, at its claim, renewal and drop, and by a
     * reaper. */
    uint32_t reserve_key;
    uint64_t reserve;
    uint64_t reserve_until;
    /* The pool row's life (KM__PST_*, src/reconfig.c "Pools"): only a LIVE
     * pool is found by name or handed out.  Read inside every acquire's
     * epoch section, in this line it reads anyway; written only by the
     * holder of the admin lock. */
    uint32_t state;
    /* 1: the pool's budget counts fleet-wide (the configuration's
     * top-level fleet "all" in a segment with a fleet region; written with
     * the row, src/create.c).  In this line so that an acquire of a pool
     * with a budget reads it with the budget. */
    uint32_t fleet;
    /* line 2: blocking acquire.  `wake_seq` is the futex word: a sleeper
     * reads it, counts itself in `waiters`, re-checks, and sleeps while it
     * is unchanged; a waker bumps it and calls FUTEX_WAKE only if `waiters`
     * is non-zero.  Read by every release, written only around sleeps.
     * `waiters` is the sum of the live processes' rows (km__wrow) and of
     * what dead ones left until a reaper takes it out (src/wait.c). */
    uint32_t waiters;
    uint32_t wake_seq;
    /* Tickets of km_acquire_wait's sleepers, one taken at each count-in:
     * the lower (in wrap-around order) waited longer (src/wait.c). */
    uint32_t ticket;
    /* Bumped each time the row is written for a pool (km__pool_write,
     * under the admin lock while the row is not LIVE): the fleet agent's
     * generation of a pool budget, so a late reply for a removed pool is
     * not applied to one added in its row under the same name. */
    uint32_t gen;
    /* A fleet pool budget's (`fleet`): what km_pool_spend_reset removed
     * from the spend record in the period ending sp_rst[0], micro-USD in
     * sp_rst[1], one 16-byte CAS pair as km__fkey's.  Here, not on the
     * spend line, for room: written only by a reset, read by the agent. */
    uint64_t sp_rst[2];
    uint8_t pad3[KM__LINE - 32];
    /* line 3: spend of the pool, added at every priced release, and its
     * budget's period (KM__PERIOD_*) and time zone (minutes east of UTC),
     * written at creation. */
    km__spend spend;
    uint32_t budget_period;
    int32_t budget_tz_min;
    /* The pool's budget across the fleet (`fleet` above), as km__fkey's
     * line 10 for a key: the other hosts' spend in the period whose local
     * record ends at sp_end (0: none known), stored by the agent
     * (km_fleet_spend_apply: sp_end 0, sp_others, sp_end, each after a
     * store fence) and read by acquires and settles beside the spend they
     * read anyway (src/fleet.c, "fleet-wide spend budgets"). */
    uint64_t sp_others;
    uint64_t sp_end;
    uint8_t pad4[KM__LINE - 56];
    /* line 4: the published member list, read by every acquire, written by
     * reconfiguration.  Two lists (members buffer 0 and 1) and their views:
     * a writer fills the one not in use, then stores `cur` (release); a
     * reader loads `cur` (acquire) inside its epoch section and uses that
     * list throughout.  The other list is rewritten only after a grace
     * period has passed since it was last current: `flip_epoch` is the
     * epoch at which it stopped being current (see src/reconfig.c). */
    uint32_t cur;
    uint32_t pad5;
    km__pview view[2];
    uint64_t flip_epoch;
    /* lines 5-7: defaults for keys added later (the pool's own limits,
     * prices and max_inflight, as configured); written at creation, the
     * limits also by km_pool_set (read only under the admin lock). */
    uint64_t def_limit[KM_WIN_COUNT];
    uint64_t def_burst[KM_WIN_COUNT];
    uint8_t def_mode[KM_WIN_COUNT];
    uint8_t pad6[2];
    uint32_t def_max_inflight;
    uint32_t pad7;
    uint64_t def_price_in, def_price_out;
    /* line 7, after the defaults: the settings a km_pool_set writes, staged
     * here under the admin lock before its intent is recorded, so that the
     * recovery of a writer killed part-way writes them again (the intent
     * has no room for them; src/reconfig.c). */
    km__pstage stage;
    /* The agent's own words of the pool's fleet budget (plain, single
     * writer), as km__fkey's: the local spend already reported in the
     * period ending a_sp_end. */
    uint64_t a_sp_rep;
    uint64_t a_sp_end;
    uint8_t pad8[3 * KM__LINE - 96 - 8 - 8 - 16 - sizeof(km__pstage) - 16];
} km__pool;
_Static_assert(offsetof(km__pool, reserve_key) == KM__LINE + 36 &&
                   offsetof(km__pool, reserve) == KM__LINE + 40 &&
                   offsetof(km__pool, reserve_until) == KM__LINE + 48,
               "the reserve shares the line every acquire reads (strategy, budget)");
_Static_assert(offsetof(km__pool, budget_microusd) / KM__LINE == 1 &&
                   offsetof(km__pool, strategy) / KM__LINE == 1,
               "the line of the reserve is one acquire reads anyway");
_Static_assert(offsetof(km__pool, waiters) == 2 * KM__LINE, "pool wait line");
_Static_assert(offsetof(km__pool, ticket) == 2 * KM__LINE + 8, "tickets in the wait line");
_Static_assert(offsetof(km__pool, sp_rst) == 2 * KM__LINE + 16, "a pool's reset pair: 16-byte aligned");
_Static_assert(offsetof(km__pool, spend) == 3 * KM__LINE, "pool spend line");
_Static_assert(offsetof(km__pool, fleet) == KM__LINE + 60 && offsetof(km__pool, sp_others) == 3 * KM__LINE + 40 &&
                   offsetof(km__pool, sp_end) == 3 * KM__LINE + 48 &&
                   offsetof(km__pool, a_sp_end) + 8 < 8 * KM__LINE &&
                   offsetof(km__pool, a_sp_rep) / KM__LINE == 7,
               "a fleet pool budget: its flag on the budget's line, others' spend on the spend line, "
               "the agent's words on the last line");
_Static_assert(offsetof(km__pool, cur) == 4 * KM__LINE, "pool member-list line");
_Static_assert(offsetof(km__pool, flip_epoch) + 8 == 5 * KM__LINE, "member-list line full");
_Static_assert(offsetof(km__pool, def_limit) == 5 * KM__LINE, "pool defaults lines");
_Static_assert(sizeof(km__pool) == 8 * KM__LINE, "km__pool size");
_Static_assert(offsetof(km__pool, state) / KM__LINE == offsetof(km__pool, strategy) / KM__LINE,
               "the pool's state shares the line every acquire reads");
_Static_assert(offsetof(km__pool, stage) == 7 * KM__LINE, "the staged settings after the defaults");

/* A model of a pool: its name and, in a per_model pool, the limits that
 * apply to it on each key.  Written at creation.  In a pool without a
 * models list (n_models 0) the rows keep instead the model names its
 * requests gave, written by acquirers as they first meet them: name, hash
 * and named_by only (src/acquire.c, model_named, rules N1-N3). */
typedef struct km__model {
    char name[KM_ID_MAX + 1];
    uint64_t emission_ns[KM_WIN_COUNT];
    uint64_t tau_ns[KM_WIN_COUNT];
    uint64_t limit[KM_WIN_COUNT];
    uint64_t burst[KM_WIN_COUNT];
    uint32_t win_mask;
    uint32_t hash;      /* FNV-1a of the name, to find it fast; a named row:
                         * 0 until the name is written (never 0 after) */
    uint8_t mode[KM_WIN_COUNT];
    uint8_t pad0[2];
    uint32_t min_tok_burst; /* as in km__key */
    uint32_t pad1;
    uint64_t named_by;  /* a named row: tag of the process that took it;
                         * 0: free */
    uint8_t pad[KM__LINE - 32];
} km__model;
_Static_assert(sizeof(km__model) == 5 * KM__LINE, "km__model size");
_Static_assert(offsetof(km__model, named_by) % 8 == 0 &&
                   offsetof(km__model, named_by) / KM__LINE == offsetof(km__model, hash) / KM__LINE,
               "named_by: one aligned word, on the line of hash");
/* A lease's or usage event's model (km__lease.model, km__uev.model) with
 * this bit set is a named row of a pool without a models list: row + 1, or
 * 0 when every row holds another name.  Above any n_models or cap_models, so
 * code that looks up a listed model's limits or counters passes it by. */
#define KM__MODEL_NAMED (UINT32_C(1) << 31)
_Static_assert(KM_MODELS_MAX < KM__MODEL_NAMED, "named rows are told apart from listed models");

/* One member of a pool's list: key index and the running sum of weights up
 * to and including it (for weighted choice by binary search), and the index
 * by price: by_cost of member i is the key of the i-th cheapest member. */
typedef struct km__member {
    uint32_t key;
    uint32_t cum_weight;
    uint32_t by_cost;
    uint32_t pad;
} km__member;
_Static_assert(sizeof(km__member) == 16, "km__member size");

/* One limit: the GCRA word and, for token windows, the tokens reserved by
 * leases still out.  Both are updated together by one 16-byte CAS
 * (cmpxchg16b), so an admission sees a consistent pair.  Request windows
 * charge `tat` at acquire and never reserve; token windows reserve the
 * estimate at acquire and commit the actual count into `tat` at release
 * (see the proof at the top of src/gcra.h). */
typedef struct km__gcra {
    uint64_t tat;      /* theoretical arrival time, CLOCK_MONOTONIC ns */
    uint64_t reserved; /* units reserved by leases not yet released */
} __attribute__((aligned(16))) km__gcra;
_Static_assert(sizeof(km__gcra) == 16 && _Alignof(km__gcra) == 16, "km__gcra");

/* A pair of fleet credit words (src/fleet.h): requests and tokens of one
 * period, taken together by one 16-byte CAS. */
typedef struct km__cpair {
    uint64_t req, tok;
} __attribute__((aligned(16))) km__cpair;
_Static_assert(sizeof(km__cpair) == 16 && _Alignof(km__cpair) == 16, "km__cpair");

typedef struct km__key {
    /* lines 0-1: the limit pairs, CASed by every acquire of this key. */
    km__gcra win[KM_WIN_COUNT];
    /* Line 1, after the pairs: the fleet credit of the minute windows
     * (src/fleet.h, tools/sync/DESIGN.md section 3), on the line every
     * acquire of the key has just CASed, so a fleet key's admission costs
     * one more locked instruction on a line it owns, and a key without the
     * fleet one load of fleet_mask and one branch.
     *   credit  (credit.req, credit.tok) of rpm and tpm: units the host
     *       may still admit, one 16-byte pair: acquirers take both by one
     *       cmpxchg16b (down), the agent adds by locked add at apply and
     *       takes all by exchange at void; the value alone decides (locked
     *       read-modify-writes only, ordered against nothing else).
     *   credit_deadline  CLOCK_MONOTONIC ns: credit is usable while now <
     *       it.  The agent stores it (release) after its top-up; a stale
     *       value only makes an acquirer conservative or lets it spend
     *       credit the ledger still reserves (DESIGN.md section 3).
     *   fleet_mask  windows under the fleet (bit per km_window), and
     *       KM__FLEET_MODELS on every fleet key (its model windows, in a
     *       per_model pool, are under the fleet too); 0: not a fleet key.
     *       Written with the limits (creation, or behind the key's
     *       `updating` flag), read plainly like them.
     *   fleet  1: a fleet key (written with the row).
     *   low_lg  the agent's low-water marks of the pair: an acquirer that
     *       leaves credit.req (low_lg[0]) or credit.tok (low_lg[1]) below
     *       2^low_lg kicks the agent (an early sync); written by the agent at
     *       apply (a quarter of the credit it leaves), 0 at creation. */
    km__cpair credit;       /* (rpm, tpm) */
    uint64_t credit_deadline;
    uint32_t fleet_mask;
    uint8_t low_lg[2];
    uint8_t fleet;          /* configured a fleet key: fleet_mask follows
                             * win_mask through set-limits */
    uint8_t pad0;
    /* The in-flight flags are not here but in their own region (one byte
     * per lease slot, see km__lease): a byte has one writer at a time, so it
     * is set and cleared by plain stores, where bits of a shared word would
     * need a locked instruction each. */
    /* line 2: written by every successful release (EMA) and by stale ones.
     * Per-lease counters live in the lease slots (see km__lease). */
    km__spend spend;          /* added at every priced release */
    uint64_t latency_ema_ns;  /* 0: no sample yet */
    uint64_t stale;           /* releases ignored as stale */
    uint32_t success_ppm;     /* EMA of success (KM__PPM) vs failure (0) */
    uint16_t budget_period;   /* KM__PERIOD_*, written with the key */
    int16_t budget_tz_min;    /* minutes east of UTC */
    uint8_t pad4[KM__LINE - 56];
    /* line 3: written on failures, 429s and admin actions; state and
     * cooldown_until are read by every acquire. */
    uint32_t state;           /* KM__ST_* */
    uint32_t gen;             /* bumped when the slot is reused */
    uint64_t cooldown_until;  /* CLOCK_MONOTONIC ns */
    uint32_t consec_fail;
    uint32_t consec_429;
    uint64_t retire_epoch;    /* REMOVED: the epoch at removal (src/reconfig.c) */
    uint32_t updating;        /* limits being changed: acquirers skip the key */
    uint32_t probe;           /* lease slot + 1 of the key's probe lease; 0:
                               * none.  Claimed by CAS from 0 before the state
                               * goes PROBING; cleared only by that lease's
                               * release or by its reaper (src/acquire.c) */
    /* Per-key model limits (per_model pools): bit m set while model m of
     * the pool has the key's own limits, kept in the key's model row
     * (km__mwin, lines 3-5) instead of the pool's (km__model).  On the line
     * every acquire reads (state, updating): a key without own limits pays
     * one bit test of a word in cache.  Written only by the creator and by
     * reconfiguration while `updating` keeps acquirers off the key
     * (src/reconfig.c); cleared with the row. */
    uint64_t own_models;
    uint8_t pad5[KM__LINE - 48];
    /* lines 4-7: configuration, written at creation, read by acquire. */
    uint64_t emission_ns[KM_WIN_COUNT]; /* T: ns per unit; 0 = no limit */
    uint64_t tau_ns[KM_WIN_COUNT];      /* burst tolerance: burst * T */
    uint64_t limit[KM_WIN_COUNT];       /* as configured, for display */
    uint64_t burst[KM_WIN_COUNT];
    uint32_t win_mask;                  /* bit w set: window w limited */
    uint32_t weight;
    uint32_t pool;
    uint32_t max_inflight;              /* lease slots usable on this key */
    uint8_t mode[KM_WIN_COUNT];
    uint8_t pad6[2];
    uint32_t secret_len;
    uint32_t meta_len;
    uint64_t price_in, price_out;       /* micro-USD per KM__PRICE_TOKENS */
    uint64_t budget_microusd;           /* 0: none */
    uint32_t budget_hard;
    uint32_t min_tok_burst;             /* smallest token-window burst, capped
                                         * at UINT32_MAX; UINT32_MAX: none */
    /* lines 8-16: identity and metadata */
    char id[KM_ID_MAX + 1];
    char secret[KM_SECRET_MAX + 1];
    char meta[KM_META_MAX + 1];
} km__key;
_Static_assert(offsetof(km__key, spend) == 2 * KM__LINE, "release line");
_Static_assert(offsetof(km__key, credit) == KM_WIN_COUNT * 16 &&
                   offsetof(km__key, credit) / KM__LINE == 1 &&
                   offsetof(km__key, fleet_mask) / KM__LINE == 1,
               "minute credit: one 16-byte CAS pair on the line of the limit pairs");
_Static_assert(offsetof(km__key, state) == 3 * KM__LINE, "state line");
_Static_assert(offsetof(km__key, own_models) / KM__LINE == offsetof(km__key, updating) / KM__LINE &&
                   offsetof(km__key, own_models) % 8 == 0,
               "own_models: one aligned word on the line acquire reads for state and updating");
_Static_assert(KM_MODELS_MAX <= 64, "km__key.own_models has one bit per model");
_Static_assert(offsetof(km__key, emission_ns) == 4 * KM__LINE, "config lines");
_Static_assert(offsetof(km__key, id) == 8 * KM__LINE, "id aligned");
_Static_assert(offsetof(km__key, meta) == 13 * KM__LINE, "meta aligned");
_Static_assert(sizeof(km__key) == 17 * KM__LINE, "km__key size");
/* km__key.fleet_mask: a fleet key, whose model windows (per_model pools)
 * are under the fleet as well as its own windows (the low bits). */
#define KM__FLEET_MODELS (UINT32_C(1) << 31)
#define KM__FLEET_WINS ((UINT32_C(1) << KM_WIN_COUNT) - 1)
_Static_assert(KM_WIN_COUNT < 31, "km__key.fleet_mask: windows below KM__FLEET_MODELS");

/* Parts per million: success_ppm of a key that has always succeeded. */
#define KM__PPM 1000000u

/* Successes and tokens of a key x model: one 16-byte pair (see km__mwin). */
typedef struct km__mok {
    uint64_t n;      /* releases with outcome SUCCESS */
    uint64_t tokens; /* tokens settled at release, every outcome */
} __attribute__((aligned(16))) km__mok;
_Static_assert(sizeof(km__mok) == 16 && _Alignof(km__mok) == 16, "km__mok");

/* One model row of one key: the model's limit pairs (per_model pools) and
 * the key x model counters (every pool whose request named a model row: a
 * listed model, or a named row of a pool without a models list; the row is
 * the one the lease records, km__lease.model).
 *
 * Counters.  Unlike a key's own counters, which live in its lease slots
 * (one owner each: plain increments), a row is shared by every lease of the
 * key that names the model, so each count is one locked add (statistics:
 * atomicity is all that is needed, no ordering against other words).  They
 * are added where the key's own are, in the same phase (P1-P4): requests
 * next to km__lease.acquired (ADMITTING), the outcome and its tokens next
 * to the slot's outcome count (after the in-flight flag, P4), abandoned
 * and its tokens next to the slot's (src/reap.c), stale with
 * km__key.stale.
 * A process killed between the two counts leaves the row's count short by
 * one against the key's, as a kill between phases leaves the key's own
 * (README, "Counters"); never over.  Cleared with the row when a key row is
 * reused (src/reconfig.c). */
typedef struct km__mwin {
    /* lines 0-1: the limit pairs, CASed by every acquire of this key and
     * model in a per_model pool */
    km__gcra win[KM_WIN_COUNT];
    /* line 1, after the pairs: the rare counts (stale releases; leases
     * released by km_close or a reaper) */
    uint64_t stale;
    uint64_t abandoned;
    /* and the key's own limits of this model (km__key.own_models bit set):
     * the window mask and smallest token burst, as in km__model, read with
     * the parameters of lines 3-5 by an acquire of such a key only.
     * `own_set`: the windows the key names itself (the others are the
     * pool model's, copied, for display and snapshots). */
    uint32_t win_mask;
    uint32_t min_tok_burst;
    uint8_t mode[KM_WIN_COUNT];
    uint8_t own_set;
    uint8_t pad;
    /* line 2: what every acquire (requests) and release (outcome, tokens
     * settled) naming the model adds: one line for both.  A success and
     * its tokens are one pair, added by one 16-byte CAS (km__mrow_ok), so
     * the common release costs one locked instruction, not two; the other
     * outcomes add their count and their tokens apart (tokens by a locked
     * add on its half, atomic against the pair CAS, as tighten()'s CAS on
     * a limit pair's tat). */
    km__mok ok;                           /* successes, and all tokens settled */
    uint64_t requests;
    uint64_t outcomes[KM_OUT_COUNT - 1];  /* kind k > 0 at [k - 1] */
    /* lines 3-5: the key's own limits of this model, all windows resolved
     * (own_set's from the key, the others from the pool's model), written
     * at creation or by reconfiguration while acquirers are kept off the
     * key (src/reconfig.c); meaningless while the key's own_models bit is
     * clear.  emission_ns and tau_ns are read by acquire and release. */
    uint64_t emission_ns[KM_WIN_COUNT];
    uint64_t tau_ns[KM_WIN_COUNT];
    uint64_t limit[KM_WIN_COUNT];
    uint64_t burst[KM_WIN_COUNT];
} km__mwin;
_Static_assert(offsetof(km__mwin, stale) == KM_WIN_COUNT * 16, "mwin: rare counts after the pairs");
_Static_assert(offsetof(km__mwin, ok) % 16 == 0 && KM_OUT_SUCCESS == 0,
               "mwin: the success pair is 16-byte aligned for its CAS");
_Static_assert(offsetof(km__mwin, ok) == 2 * KM__LINE, "mwin: counter line");
_Static_assert(offsetof(km__mwin, win_mask) / KM__LINE == 1 && offsetof(km__mwin, pad) + 1 == 2 * KM__LINE,
               "mwin: the own mask, burst and modes fill line 1");
_Static_assert(offsetof(km__mwin, emission_ns) == 3 * KM__LINE &&
                   offsetof(km__mwin, tau_ns) == 3 * KM__LINE + 8 * KM_WIN_COUNT,
               "mwin: the own parameters that acquire reads on lines 3-4");
_Static_assert(KM_WIN_COUNT <= 8, "km__mwin.own_set has one bit per window");
_Static_assert(sizeof(km__mwin) == 6 * KM__LINE, "km__mwin size");

/* A lease slot.  owner != 0 while claimed: the owner's process-table tag,
 * (process slot + 1) << 32 | pid, or a reaper's mark (src/owner.h).
 *
 * Crash consistency.  Counters such as "tokens reserved on window w" are
 * anonymous sums: if a process dies between changing one and recording that
 * it did, nobody can tell from the sum.  So every change a lease makes to
 * shared counters is bracketed by its phase, written by its owner:
 *   claim (CAS owner 0 -> me), phase = ADMITTING
 *   reserve/charge the key's limit windows (CAS each)
 *   set the slot's in-flight flag, phase = ACTIVE
 *   ... release: phase = RELEASING, commit tokens, clear the in-flight
 *   flag, owner = 0.
 * The rules, cited where the code relies on them:
 *   P1  Only the owner writes a slot's fields, phase and in-flight flag; the
 *       owner changes by CAS (a claim, a reaper taking a dead owner's slot
 *       over) or by the owner's release store of 0 (km__slot_free).
 *   P2  A slot's phase leaves FREE/ACTIVE (to ADMITTING, to RELEASING) and
 *       is visible before the owner changes any shared counter of the key
 *       (ck_pr_fence_store_atomic, then the locked instructions): a reaper
 *       that finds a counter changed finds the slot mid-operation.
 *   P3  Phase ACTIVE is stored after the lease's fields, its limit charges
 *       and its in-flight flag: a reader that sees ACTIVE may use all of
 *       them; one that sees ADMITTING uses only owner, phase and seq.
 *   P4  A release clears the in-flight flag, then counts the outcome, then
 *       frees the slot (phase FREE before owner 0, I3): a slot found
 *       RELEASING with its flag set has not counted its outcome.
 * The in-flight flag is a byte of its own per slot, written only by the
 * slot's owner (plain stores; no locked instruction), so whether a dead
 * owner's lease counts in the key's in-flight is read from the flag itself.
 * A dead owner's ACTIVE lease is released at its estimate.  Only a slot left
 * ADMITTING or RELEASING by a dead owner is ambiguous; its key's reserved
 * sums are then recounted from the ACTIVE slots (a validated double scan,
 * src/slots.h; the recount is in src/reap.c). */
enum { KM__LP_FREE = 0, KM__LP_ADMITTING = 1, KM__LP_ACTIVE = 2, KM__LP_RELEASING = 3 };

/* Counters.  A slot has one owner at a time, and ownership passes by CAS
 * (claim) and release store (free), so each owner's plain increments
 * happen-before the next owner's: the counters of a slot are exact without
 * locked instructions.  A key's totals are the sums over its slots. */
typedef struct km__lease {
    /* line 0: written by every acquire and release through this slot */
    uint64_t owner;
    uint32_t seq;     /* bumped at each claim; a release must match it */
    uint32_t tokens;  /* tokens reserved at acquire */
    uint64_t start_ns;
    uint32_t key_gen;
    uint32_t phase;   /* KM__LP_* */
    uint64_t acquired;
    uint64_t succeeded;   /* outcome SUCCESS */
    uint64_t tokens_used; /* settled tokens (actual, or estimate) */
    uint32_t model;       /* model index + 1 of this lease; 0: none;
                           * KM__MODEL_NAMED | row + 1: a named row */
    uint32_t res_mask;    /* the key's token windows this lease reserved
                           * (limits may change while it is out), and in
                           * bits KM__RES_MODEL_SHIFT up the model's */
    /* line 1: the rarer outcomes */
    uint64_t outcomes[KM_OUT_COUNT]; /* [KM_OUT_SUCCESS] unused: see succeeded */
    uint64_t abandoned;
    /* Estimates of the settled leases of a fleet key (the estimate each
     * reserved), added by the slot's owner beside tokens_used: their
     * difference, summed over a key's slots, is what the fleet agent
     * reports as actual minus estimated tokens (km_fleet_slot.adj). */
    uint64_t tokens_est;
} km__lease;
_Static_assert(offsetof(km__lease, outcomes) == KM__LINE, "lease slot line 1");
/* Acquire writes these pairs with one 8-byte store each (src/acquire.c). */
_Static_assert(offsetof(km__lease, tokens) == offsetof(km__lease, seq) + 4 &&
                   offsetof(km__lease, seq) % 8 == 0, "seq, tokens: one word");
_Static_assert(offsetof(km__lease, phase) == offsetof(km__lease, key_gen) + 4 &&
                   offsetof(km__lease, key_gen) % 8 == 0, "key_gen, phase: one word");
_Static_assert(offsetof(km__lease, res_mask) == offsetof(km__lease, model) + 4 &&
                   offsetof(km__lease, model) % 8 == 0, "model, res_mask: one word");
_Static_assert(sizeof(km__lease) == 2 * KM__LINE, "lease slot: two lines");
/* km__lease.res_mask: the model's token windows the lease reserved, above
 * the key's (a key's own model limits may change while it is out). */
#define KM__RES_MODEL_SHIFT 8
_Static_assert(KM_WIN_COUNT <= KM__RES_MODEL_SHIFT, "key and model windows apart in res_mask");

/* Usage events (src/usage.c): two rings per process slot (kept across the
 * slot's occupants), each a header line and cap_usage / 2 events of one line
 * each.  Ring 0 has one writer, the thread holding the slot's reader row 1
 * (a process's first acquiring thread), which advances `head` by plain
 * stores; ring 1 takes every other writer (the process's other threads, a
 * thread that never acquired, a reap on such a thread), which take event
 * numbers by fetch-add on `head`.  An event's `seq` is its number + 1,
 * stored last (release), so the drainer reads only complete events and
 * recognises overwritten ones. */
#define KM__URINGS_PER_PROC 2
typedef struct km__uring {
    uint64_t head;     /* events written (see above) */
    uint64_t drained;  /* events consumed (the drainer only) */
    uint64_t dropped;  /* events overwritten before being drained */
    uint8_t pad[KM__LINE - 24];
} km__uring;
_Static_assert(sizeof(km__uring) == KM__LINE, "usage ring header: one line");

typedef struct km__uev {
    uint64_t seq;        /* event number + 1; 0: being written or never */
    uint64_t start_ns;   /* CLOCK_MONOTONIC at acquire */
    uint64_t tokens;     /* settled (actual, or the estimate if abandoned) */
    uint32_t latency_us; /* UINT32_MAX: unknown */
    uint32_t key, key_gen;
    uint32_t model;      /* as km__lease.model */
    uint32_t pool;
    uint32_t outcome;    /* km_outcome_kind, or KM__OUT_ABANDONED,
                          * KM__OUT_DEAD */
    uint32_t pid;        /* the recording process */
    uint8_t pad[KM__LINE - 52];
} km__uev;
_Static_assert(sizeof(km__uev) == KM__LINE, "usage event: one line");
/* Outcomes of usage events beyond the public kinds: a lease released by
 * km_close or a reaper (the public event says KM_OUT_COUNT), and an event
 * whose writer died before finishing it, sealed by the slot's next occupant
 * (never delivered: counted as dropped). */
#define KM__OUT_ABANDONED KM_OUT_COUNT
#define KM__OUT_DEAD (KM_OUT_COUNT + 1)

/* The intent of a reconfiguration (src/reconfig.c): what the holder of the
 * admin lock is doing, recorded in the header (km__hdr.intent) before its
 * first shared store and cleared (op 0) after its last, so that whoever
 * finds its writer dead -- the next holder of the lock (pthread's
 * EOWNERDEAD), a reaper, an attach -- finishes or undoes it.  Written only
 * by the holder of the admin lock; read without it by km_check and by
 * reapers deciding whether to take the lock.  The writer is named by pid and
 * process start time, not by a process-table tag: a writer needs no process
 * slot (kmctl has none), and a tag could be freed and reused before the
 * intent is resolved. */
enum { KM__OP_NONE = 0, KM__OP_ADD, KM__OP_REMOVE, KM__OP_WEIGHT, KM__OP_LIMITS,
       KM__OP_ENABLE, KM__OP_DISABLE, KM__OP_MLIMITS,
       /* pools (issue 18): add, remove, set (staged settings), the limits of
        * every key of a pool or of one of its models, a model appended */
       KM__OP_POOL_ADD, KM__OP_POOL_REMOVE, KM__OP_POOL_SET, KM__OP_POOL_LIMITS,
       KM__OP_MODEL_ADD, KM__OP_COUNT };
typedef struct km__intent {
    /* line 0 */
    uint32_t op;          /* KM__OP_*; 0: no reconfiguration in progress */
    uint32_t step;        /* how far the writer got (KM__STEP_*, src/reconfig.c) */
    uint32_t pid;         /* the writer */
    uint32_t key;         /* the key row it changes */
    uint64_t start_time;  /* the writer's start time (shm/proc.c) */
    uint32_t pool;        /* the pool whose member list it rebuilds */
    uint32_t cur;         /* set-weight: that pool's cur before its rebuild;
                           * pool limits: the model's index + 1, 0 for the
                           * keys' own windows; model add: n_models before */
    uint32_t old_weight;  /* set-weight: the key's weight before; pool
                           * limits: the windows given (bit per window) */
    uint32_t rescaled;    /* set-limits: windows whose debt is carried over */
    uint64_t recovered;   /* reconfigurations finished or undone for a dead
                           * writer, since creation */
    /* Unused since the lock word itself names the admin lock's holder
     * (src/reconfig.c, "Lock holders"); kept so the layout does not change.
     * Written as 0 by creation, read by nobody. */
    uint32_t holder_pid;
    uint32_t pad0a;
    uint64_t holder_start;
    /* lines 1-3, set-limits: the windows' emission intervals before, and the
     * limits to write (as km__limit_cfg: limit, burst, mode); the window
     * being carried over (resc_win = window + 1, stored before its CAS) with
     * the debt in units and the time it was computed for */
    uint64_t old_T[KM_WIN_COUNT];
    uint64_t limit[KM_WIN_COUNT];
    uint64_t burst[KM_WIN_COUNT];
    uint64_t resc_now, resc_debt;
    uint32_t resc_win;
    uint8_t mode[KM_WIN_COUNT];
    /* set-limits of a model (KM__OP_MLIMITS): the key's windows of model
     * `model` (index) change; `own_set` the windows the key then names
     * itself (0: back to the pool's model limits) */
    uint8_t own_set;
    uint8_t pad1a;
    uint32_t model;
    uint8_t pad1[3 * KM__LINE - 3 * 8 * KM_WIN_COUNT - 16 - 4 - KM_WIN_COUNT - 2 - 4];
} km__intent;
_Static_assert(offsetof(km__intent, model) % 4 == 0, "intent: model aligned");
_Static_assert(offsetof(km__intent, old_T) == KM__LINE, "intent line 1");
_Static_assert(sizeof(km__intent) == 4 * KM__LINE, "km__intent size");
_Static_assert(sizeof(km__intent) <= sizeof(((km__hdr *)0)->intent), "the intent fits the header");

/* ------------------------------------------------------------ the fleet
 *
 * Fleet-wide limits (tools/sync/DESIGN.md sections 2-4; the hot path and
 * its argument in src/fleet.h, the agent's calls in src/fleet.c).  A
 * segment with fleet keys has a fleet region at km__hdr.off_fleet, after
 * every other region: a km__fhdr, then one km__fkey per key row, then one
 * per key row x model (cap_models each; "Model blocks" below).  The
 * credit of a key's minute windows lives in its own row (km__key line 1);
 * everything else the fleet needs is here. */

/* The agent's header.  Line 0 is written by the agent only (plain stores,
 * after its claim; inspect tolerates tearing) except `agent` (CAS); line
 * 1 is the acquirers' kick word. */
typedef struct km__fhdr {
    /* line 0 */
    uint64_t agent;          /* tag of the agent's process; 0: none (CAS) */
    uint32_t policy;         /* KM_FLEET_STOP / KM_FLEET_LOCAL (claim) */
    uint32_t learn_ms;
    uint64_t epoch, last_sync_ns, next_sync_ns;
    uint64_t seq, ack;       /* the agent's, so a restarted agent continues */
    uint32_t store_state;    /* KM_FLEET_STORE_* */
    uint32_t n_hosts;
    /* line 1, own line: set to 1 by an acquirer that found credit short
     * (refused, or left below the low-water mark) and read 0; the agent
     * polls it and syncs early, storing 0.  A plain store either way: a
     * lost kick costs one early sync, nothing more. */
    uint32_t kick;
    uint32_t all;            /* configuration: every key is a fleet key */
    uint8_t pad1[KM__LINE - 8];
    /* line 2, the agent's own (plain stores, single writer; a successor
     * reads them after its claim): the report in flight, kept until the
     * reply that answers it is applied (km_fleet_report_*, src/fleet.c).
     * rp_seq 0: none stamped (the counts collected since the last ack are
     * km__fkey's p_*, not yet a report); else the report's seq, ack,
     * epoch, first send (CLOCK_MONOTONIC) and flags.  rp_seq is written
     * last when stamping and first when undoing. */
    uint64_t rp_seq, rp_ack, rp_epoch, rp_t_send;
    uint32_t rp_flags;
    uint32_t pad2a;
    uint8_t pad2[KM__LINE - 40];
} km__fhdr;
_Static_assert(offsetof(km__fhdr, kick) == KM__LINE && offsetof(km__fhdr, rp_seq) == 2 * KM__LINE &&
                   sizeof(km__fhdr) == 3 * KM__LINE,
               "km__fhdr: the agent's line, the kick line, the report line");

/* km__fkey.flags */
#define KM__FK_STRICT 1u /* "fleet": {"strict": true} */

/* One key's fleet block.  Lines 1, 4, 5 and 6 are written by acquirers on
 * the slow paths only (fallback, refusal); the agent reads them by
 * exchange.  Line 7 is the agent's own.
 *
 * Model blocks.  A fleet key of a per_model pool has its model windows
 * under the fleet too: each (key, model) has a block of the same struct
 * after the keys' blocks (km__fmodel), its own credit (all six windows:
 * credit_min and credit_hd), deadline (m_deadline), fallback share, counts
 * and agent's words, and no fleet_id or health of its own (the key's).
 * The code below the hot path takes a block by its index, key or model
 * alike (src/fleet.c, "fleet blocks"). */
typedef struct km__fkey {
    /* line 0: hour/day credit, as the minute pair: (RPH, TPH), (RPD, TPD),
     * each a 16-byte CAS pair (locked RMW only, as km__key.credit);
     * then the agent's configuration words (plain; creation or the agent) */
    km__cpair credit_hd[2];  /* [0] hour, [1] day */
    uint32_t flags;          /* KM__FK_*, written with the key row */
    uint32_t gen;            /* credit voids by the agent (inspect) */
    uint32_t fb_ppm;         /* the share last applied, for inspect */
    uint32_t pad0;
    /* A model block only (below): the model's minute pair (rpm, tpm), as
     * km__key.credit (a key block's minute pair is in its key row). */
    km__cpair credit_min;
    /* line 1: fallback GCRA words, CASed only while on fallback */
    uint64_t fb_tat[KM_WIN_COUNT];
    /* A model block only: its credit deadline, as km__key.credit_deadline
     * (the agent's release store after its top-up; acquirers load it). */
    uint64_t m_deadline;
    uint64_t pad1;
    /* lines 2-3: the fallback share; the agent writes it under the seqlock
     * fb_seq (odd while being written; release stores), acquirers read it
     * and retry while the count is odd or changed */
    uint32_t fb_seq, pad2;
    uint64_t fb_from, fb_until;       /* rule 2's window, CLOCK_MONOTONIC */
    uint64_t fb_T[KM_WIN_COUNT];      /* ns per unit at the share's rate; 0: none */
    uint64_t fb_tau[KM_WIN_COUNT];    /* burst x fb_T */
    uint8_t pad3[8];
    /* line 4: units refused for want of credit (fetch-add) */
    uint64_t refused[KM_WIN_COUNT];
    uint64_t pad4[2];
    /* line 5: largest request refused (CAS-max) */
    uint64_t want[KM_WIN_COUNT];
    uint64_t pad5[2];
    /* line 6: units admitted on the fallback share (fetch-add); the key's
     * health changes made here (release's 429/auth/quota, an operator's
     * enable/disable): hv_kind (KM_FLEET_EV_*) stored, then hv_local
     * bumped (fetch-add); the agent compares hv_local with a_hv */
    uint64_t fb_used[KM_WIN_COUNT];
    uint32_t hv_local;
    uint32_t hv_kind;
    uint64_t pad6;
    /* line 7: the agent's own (single writer): credit held after its last
     * apply or collect, per window, so `spent` survives an agent restart;
     * the sum over lease slots of tokens_used - tokens_est at the last
     * collect; hv_local last reported */
    uint64_t a_last[KM_WIN_COUNT];
    int64_t a_adj;
    uint64_t a_hv;
    /* line 8: the fleet id the operator configured ("fleet": {"id": ...}),
     * NUL-padded; "" lets the agent derive one (written with the key row) */
    char fleet_id[KM_ID_MAX + 1];
    /* line 9, the agent's own: credit voided (lapsed, or voided by
     * km_fleet_release) and not yet reported as returned */
    uint64_t a_ret[KM_WIN_COUNT];
    uint64_t pad9[2];
    /* line 10: the key's budget across the fleet (post-paid, DESIGN.md
     * section 8).  sp_others: what the other hosts spent (micro-USD) in
     * the budget's period whose local spend record ends at sp_end (the
     * record's end_ns; 0: none known).  The agent stores them (sp_end to 0,
     * sp_others, sp_end, each step after a store fence; within one period
     * sp_others only grows); an acquire or settle of a key with a budget
     * loads sp_end, compares it with its spend record's end_ns, then loads
     * sp_others: a torn read pairs a new period's figure with the old
     * period's end only while that end is being replaced, i.e. while the
     * local record is rolling too (src/fleet.c, km__fleet_spend_others).
     * a_sp_rep and a_sp_end are the agent's own (single writer): the
     * local spend (with what resets removed, below) the ledger has counted
     * in the period ending a_sp_end.  sp_rst: what km_spend_reset removed
     * from the record in the period ending sp_rst[0], micro-USD in
     * sp_rst[1], one 16-byte CAS pair (a reset is any process's): the
     * agent counts the record's spend plus it, which resets do not lower,
     * so a reset loses nothing the host has not reported. */
    uint64_t sp_others;
    uint64_t sp_end;
    uint64_t a_sp_rep;
    uint64_t a_sp_end;
    uint64_t sp_rst[2];
    uint64_t pad10[2];
    /* lines 11-15, the agent's own (plain, single writer): what collects
     * took since the last acknowledged report, per window (p_mask: the
     * windows that hold any, of the key of generation p_gen): the report
     * km_fleet_report_take stamps and a reply acknowledges (km__fhdr line
     * 2), so that it survives the agent (src/fleet.c, "The report in the
     * segment").  As km_fleet_slot's counts of the same names. */
    uint64_t p_spent[KM_WIN_COUNT];
    uint64_t p_fb_spent[KM_WIN_COUNT];
    uint64_t p_returned[KM_WIN_COUNT];
    uint64_t p_left[KM_WIN_COUNT];
    int64_t p_adj[KM_WIN_COUNT];
    uint64_t p_want[KM_WIN_COUNT];
    uint32_t p_mask, p_gen;
    uint8_t pad14[5 * KM__LINE - 6 * 8 * KM_WIN_COUNT - 8];
} km__fkey;
_Static_assert(offsetof(km__fkey, fb_tat) == KM__LINE && offsetof(km__fkey, fb_seq) == 2 * KM__LINE &&
                   offsetof(km__fkey, refused) == 4 * KM__LINE &&
                   offsetof(km__fkey, want) == 5 * KM__LINE &&
                   offsetof(km__fkey, fb_used) == 6 * KM__LINE &&
                   offsetof(km__fkey, a_last) == 7 * KM__LINE &&
                   offsetof(km__fkey, fleet_id) == 8 * KM__LINE &&
                   offsetof(km__fkey, a_ret) == 9 * KM__LINE &&
                   offsetof(km__fkey, sp_others) == 10 * KM__LINE &&
                   offsetof(km__fkey, sp_end) == 10 * KM__LINE + 8 &&
                   offsetof(km__fkey, sp_rst) == 10 * KM__LINE + 32 &&
                   offsetof(km__fkey, p_spent) == 11 * KM__LINE,
               "km__fkey lines");
_Static_assert(sizeof(km__fkey) == 16 * KM__LINE, "km__fkey size");
_Static_assert(offsetof(km__fkey, credit_min) == 3 * 16 && offsetof(km__fkey, credit_min) / KM__LINE == 0,
               "a model block's minute pair: 16-byte aligned, on line 0 with its hour/day pairs");
_Static_assert(offsetof(km__fkey, m_deadline) / KM__LINE == 1 && offsetof(km__fkey, m_deadline) % 8 == 0,
               "a model block's deadline: one aligned word on line 1");

/* Fleet blocks of a fleet region: one per key row, then one per key row x
 * model (cap_models each). */
static inline uint64_t km__fleet_blocks(uint32_t cap_keys, uint32_t cap_models)
{
    return (uint64_t)cap_keys * (1 + (uint64_t)cap_models);
}

/* Bytes of a fleet region for cap_keys key rows of cap_models models (whole
 * pages: it is the segment's last region). */
static inline uint64_t km__fleet_bytes(uint32_t cap_keys, uint32_t cap_models)
{
    return (sizeof(km__fhdr) + km__fleet_blocks(cap_keys, cap_models) * sizeof(km__fkey) +
            KM__PAGE - 1) & ~(uint64_t)(KM__PAGE - 1);
}

/* ------------------------------------------------------------ the layout */

static inline uint64_t km__align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* The sleepers of km_acquire_wait of one process slot (src/wait.c), so that
 * a reaper can take a dead process's sleepers out of the pools' `waiters`
 * counts.  One row per process slot, in whole lines of its own: written by
 * that process's sleepers (locked instructions: several threads may sleep)
 * and, once the process is dead, by a reaper.
 *   n[p]  the process's threads counted in pool p's `waiters`; raised
 *         before the pool's count, lowered after it (so n[p] is never less
 *         than what the process contributes to the pool's count);
 *   busy  low half: threads between the first and the last store of such
 *         a change; high half: changes completed (a generation), so that
 *         two equal reads of a row with busy's low half 0 mean that no
 *         change overlapped the time between them. */
typedef struct km__wrow {
    uint64_t busy;
    uint32_t n[]; /* cap_pools counts */
} km__wrow;
_Static_assert(sizeof(km__wrow) == 8 && offsetof(km__wrow, n) == 8, "km__wrow header");
#define KM__WROW_GEN (UINT64_C(1) << 32) /* one change completed, in km__wrow.busy */
static inline uint64_t km__wrow_stride(uint32_t cap_pools)
{
    return km__align_up(sizeof(km__wrow) + (uint64_t)cap_pools * sizeof(uint32_t), KM__LINE);
}
/* Bytes of the usage rings of all process slots (whole lines). */
static inline uint64_t km__usage_bytes(uint32_t procs, uint32_t usage)
{
    return (uint64_t)procs * (KM__URINGS_PER_PROC + (uint64_t)usage) * KM__LINE;
}

/* Regions, in the order km__layout places them. */
enum { KM__OFF_POOLS, KM__OFF_MEMBERS, KM__OFF_MODELS, KM__OFF_KEYS,
       KM__OFF_MWIN, KM__OFF_LEASES, KM__OFF_BUSY, KM__OFF_PROCS, KM__OFF_READERS,
       KM__OFF_USAGE, KM__OFF_WAITS, KM__OFF_TZ, KM__OFF_N };

/* Offsets of each region for the given capacities; returns the total size
 * (a multiple of the page).  Used by the creator to lay out and by an
 * attacher to validate (src/attach.c); inline so that tools reading a
 * segment file (tests/fuzz/segedit.py) compute exactly the same. */
static inline uint64_t km__layout(uint32_t keys, uint32_t pools, uint32_t procs,
                                  uint32_t inflight, uint32_t models, uint32_t usage,
                                  uint64_t off[KM__OFF_N])
{
    uint64_t o = km__align_up(sizeof(km__hdr), KM__LINE);
    off[KM__OFF_POOLS] = o;
    o += (uint64_t)pools * sizeof(km__pool);
    off[KM__OFF_MEMBERS] = o;
    o = km__align_up(o + (uint64_t)pools * 2 * keys * sizeof(km__member), KM__LINE);
    off[KM__OFF_MODELS] = o;
    o += (uint64_t)pools * models * sizeof(km__model);
    off[KM__OFF_KEYS] = o;
    o += (uint64_t)keys * sizeof(km__key);
    off[KM__OFF_MWIN] = o;
    o += (uint64_t)keys * models * sizeof(km__mwin);
    off[KM__OFF_LEASES] = o;
    o += (uint64_t)keys * inflight * sizeof(km__lease);
    off[KM__OFF_BUSY] = o;
    o += (uint64_t)keys * km__busy_stride(inflight);
    off[KM__OFF_PROCS] = o;
    o += (uint64_t)procs * sizeof(km__proc);
    off[KM__OFF_READERS] = o;
    o += (uint64_t)procs * KM__RDR_PER_PROC * sizeof(km__rdr);
    off[KM__OFF_USAGE] = o;
    o += km__usage_bytes(procs, usage);
    off[KM__OFF_WAITS] = o; /* not in the header: km__wrows derives it */
    o += (uint64_t)procs * km__wrow_stride(pools);
    off[KM__OFF_TZ] = o = km__align_up(o, KM__LINE); /* derived, as the waits */
    o += KM__TZ_ZONES * sizeof(km__tzone);
    return km__align_up(o, KM__PAGE);
}

/* FNV-1a, byte by byte, over the sizes, alignments and offsets that define
 * the layout (shm/'s structs included). */
static inline uint64_t km__layout_signature(void)
{
    const uint64_t v[] = {
        sizeof(km__hdr), offsetof(km__hdr, n_procs),
        sizeof(km__pool), offsetof(km__pool, name), offsetof(km__pool, waiters),
        sizeof(km__model), offsetof(km__model, named_by), KM__MODEL_NAMED,
        sizeof(km__mwin), offsetof(km__key, meta), KM_META_MAX,
        sizeof(km__member),
        sizeof(km__gcra), _Alignof(km__gcra),
        sizeof(km__key), offsetof(km__hdr, off_busy), offsetof(km__key, latency_ema_ns),
        offsetof(km__key, state), offsetof(km__key, emission_ns),
        offsetof(km__key, id), offsetof(km__key, secret),
        sizeof(km__lease), offsetof(km__lease, phase), offsetof(km__lease, outcomes),
        sizeof(km__proc), offsetof(km__proc, start_time),
        sizeof(km__rdr), KM__RDR_PER_PROC, KM__RDR_OVF_SHIFT,
        offsetof(km__hdr, epoch), offsetof(km__pool, cur), sizeof(km__pview),
        offsetof(km__key, retire_epoch), sizeof(km__uring), sizeof(km__uev),
        offsetof(km__hdr, off_usage), offsetof(km__uev, outcome),
        KM_WIN_COUNT, KM_OUT_COUNT, KM_ID_MAX, KM_SECRET_MAX, KM_INFLIGHT_MAX,
        KM__URINGS_PER_PROC,
        /* The admin lock lives in km__hdr.admin as the C library lays a
         * pthread_mutex_t out; a process built against another libc or ABI
         * (musl vs glibc, another -m flag) would misread it (as LMDB's
         * MDB_LOCK_FORMAT hashes pthread_mutex_t). */
        sizeof(pthread_mutex_t), _Alignof(pthread_mutex_t),
        offsetof(km__hdr, intent), sizeof(km__intent), offsetof(km__intent, old_T),
        offsetof(km__intent, recovered), offsetof(km__intent, holder_start), KM__OP_COUNT,
        /* Per-process sleeper rows (a region after the usage rings) and the
         * probe lease's slot in the key row (issue 17, findings 3 and 4). */
        KM__OFF_N, sizeof(km__wrow), KM__WROW_GEN, offsetof(km__key, probe),
        /* The pool's reserve and sleeper tickets (issue 17, fair waiting). */
        offsetof(km__pool, reserve), offsetof(km__pool, reserve_until), offsetof(km__pool, ticket),
        offsetof(km__pool, reserve_key),
        /* Key x model counters in the model rows (issue 13, item 1). */
        offsetof(km__mwin, ok), offsetof(km__mwin, stale), offsetof(km__mwin, requests),
        offsetof(km__mwin, abandoned), offsetof(km__mwin, outcomes),
        /* Budgets with a period (issue 18): spend pairs and periods. */
        sizeof(km__spend), offsetof(km__key, spend), offsetof(km__key, budget_period),
        offsetof(km__pool, spend), offsetof(km__pool, budget_period),
        /* Per-key model limits (issue 18, item 3): the key's bits, its
         * model rows' parameters, the model windows a lease reserved, and
         * the intent of their change. */
        offsetof(km__key, own_models), offsetof(km__mwin, win_mask), offsetof(km__mwin, own_set),
        offsetof(km__mwin, emission_ns), offsetof(km__mwin, burst), KM__RES_MODEL_SHIFT,
        offsetof(km__intent, model),
        /* Fleet-wide limits (issue 12): the minute credit in the key row,
         * the fleet region, estimates in the lease slots. */
        offsetof(km__key, credit), offsetof(km__key, fleet_mask), sizeof(km__fhdr),
        sizeof(km__fkey), offsetof(km__fkey, fb_seq), offsetof(km__fkey, a_last),
        offsetof(km__lease, tokens_est), offsetof(km__hdr, off_fleet),
        /* Fleet-wide spend budgets (issue 12, item 3): others' spend. */
        offsetof(km__fkey, sp_others), offsetof(km__fkey, a_sp_end), offsetof(km__fkey, sp_rst),
        /* ... and pool budgets (the pool row's words). */
        offsetof(km__pool, fleet), offsetof(km__pool, sp_others), offsetof(km__pool, a_sp_rep),
        offsetof(km__pool, sp_rst),
        /* Per-model fleet windows (issue 12, item 3): the model blocks'
         * minute pair and deadline. */
        offsetof(km__fkey, credit_min), offsetof(km__fkey, m_deadline),
        /* Pools added, changed and removed live (issue 18, item 1). */
        offsetof(km__pool, state), offsetof(km__pool, stage), sizeof(km__pstage),
        /* Budgets in named time zones (issue 18, item 2): the zone table. */
        sizeof(km__tzone), KM__TZ_ZONES, KM__TZ_TRANS, KM__TZ_NAMED, offsetof(km__tzone, at),
        0x0102030405060708ull /* byte order */
    };
    return km__fnv64_bytes(KM__FNV64_INIT, v, sizeof v);
}

#endif /* KM_LAYOUT_H */
