/*
 * src/slots.h - lease slots: claiming and freeing them, their in-flight
 * flags, reading their fields, and settling their reservations.  Inline: it
 * runs in every acquire and release.  Internal; not installed.
 *
 * The phases a lease goes through and why a crash at any instruction leaves
 * the segment consistent are at km__lease in src/layout.h.
 *
 * The invariants kept at every instruction boundary are
 *   I1  the number of the key's in-flight flags set == number of its lease
 *       slots in phase ACTIVE or RELEASING-before-its-flag-clear, i.e.
 *       in-flight is exact;
 *   I2  for token window w, key.win[w].reserved == sum of `tokens` over the
 *       key's slots that reserved it and have not committed;
 *   I3  a slot with owner == 0 has phase FREE and its in-flight flag clear.
 */
#ifndef KM_SLOTS_H
#define KM_SLOTS_H

#include <ck_pr.h>

#include "gcra.h"
#include "internal.h"

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
 * in src/layout.h), so load + store is an exact increment without a locked
 * instruction; both are atomic so a reader never sees a torn word. */
#define KM__SLOT_ADD(field, n) ck_pr_store_64(&(field), ck_pr_load_64(&(field)) + (n))

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
static inline uint32_t km__inflight(const km_env *e, uint32_t ki, const km__key *k)
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
static inline int km__claim_in(km_env *e, km__lease *ls, const uint8_t *fl, uint32_t slots,
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
             * from here until it stores owner = 0 again (P1). */
            if (km__claim_at(e, ls, s))
                return (int)s;
            seen = -2;
        }
    }
    return seen;
}

/* Where a process starts looking for a free lease slot: one of
 * KM__ROT_PLACES places, process slot * KM__ROT_STEP (odd, so consecutive
 * process slots spread over all the places before two share one). */
#define KM__ROT_PLACES 64u
#define KM__ROT_STEP 7u

/* Claim a free lease slot of key ki, skipping slots whose flag says in
 * flight, a word of eight at a time.  Starts from a rotation that depends
 * on the process slot (KM__ROT_PLACES places), so processes do not all race
 * for the lowest free slot.  Returns the slot index; -1 if every slot is in
 * flight; -2 if a slot whose flag was clear was still owned (mid-release)
 * or lost to another claimer. */
static inline int km__slot_claim(km_env *e, uint32_t ki, km__key *k)
{
    km__lease *ls = km__leases(e, ki);
    const uint8_t *fl = km__busy(e, ki);
    uint32_t slots = km__slots(k, e->geom.cap_inflight), nw = (slots + 7) / 8;
    uint32_t rot = (e->seg.proc_slot * KM__ROT_STEP) & (KM__ROT_PLACES - 1);
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

/* Validated scans.  A reader that needs a consistent view of a key's lease
 * slots without stopping anyone (the reaper's recount, src/reap.c;
 * km_check, src/check.c) scans the slots, reads the counters, scans again,
 * and uses what it read only if both scans have the same signature and no
 * slot was mid-operation: every acquirer and releaser changes its slot's
 * phase before it touches a shared counter (P2, P3), so an unchanged
 * signature means no counter changed in between.  The signature folds in
 * every slot's owner, phase and seq, each field its own FNV-1a step:
 * fields mixed into one value first (o ^ ph << 32 ^ q) can cancel out. */
static inline uint64_t km__slot_sig(uint64_t h, uint64_t owner, uint32_t phase, uint32_t seq)
{
    h = km__fnv64_step(h, owner);
    h = km__fnv64_step(h, phase);
    return km__fnv64_step(h, seq);
}

/* Is a slot mid-operation: held and ADMITTING or RELEASING? */
static inline int km__slot_moving(uint64_t owner, uint32_t phase)
{
    return owner && (phase == KM__LP_ADMITTING || phase == KM__LP_RELEASING);
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
    km__settle_set(&kset, lv->start_ns, lv->tokens, actual, lv->res_mask & KM__TOKEN_WINS);
    if (lv->model && k->pool < e->geom.n_pools && lv->model <= e->geom.cap_models) {
        km__lset mset = km__model_lset(e, k, ki, &km__models(e, k->pool)[lv->model - 1],
                                       lv->model - 1);
        /* The model's windows the lease reserved (the key's own model
         * limits may have changed since), at today's rates, as the key's. */
        km__settle_set(&mset, lv->start_ns, lv->tokens, actual,
                       (lv->res_mask >> KM__RES_MODEL_SHIFT) & KM__TOKEN_WINS);
    }
    /* A fleet key's estimates beside its settled tokens (km__lease.tokens_est):
     * the agent reports the difference.  The key's line 1 is in cache
     * (the settle's CAS above); another key pays one branch. */
    if (__builtin_expect(k->fleet_mask & KM__TOKEN_WINS, 0))
        KM__SLOT_ADD(ls->tokens_est, lv->tokens);
    KM__SLOT_ADD(ls->tokens_used, actual);
}

/* Count a released lease's outcome and its settled tokens on its key x
 * model row (km__mwin): a success and its tokens by one 16-byte CAS (one
 * locked instruction; the loads may tear, the CAS compares both halves),
 * another kind by a locked add each.  Statistics: ordered against nothing
 * else. */
static inline void km__mrow_outcome(km__mwin *mr, int kind, uint64_t tokens)
{
    if (kind == KM_OUT_SUCCESS) {
        uint64_t cur[2] = {ck_pr_load_64(&mr->ok.n), ck_pr_load_64(&mr->ok.tokens)}, set[2];
        do {
            set[0] = cur[0] + 1;
            set[1] = cur[1] + tokens;
        } while (!ck_pr_cas_64_2_value((uint64_t *)(void *)&mr->ok, cur, set, cur));
        return;
    }
    ck_pr_inc_64(&mr->outcomes[kind - 1]);
    if (tokens)
        ck_pr_add_64(&mr->ok.tokens, tokens);
}

#endif /* KM_SLOTS_H */
