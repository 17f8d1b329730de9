/*
 * src/reap.c - what a dead process leaves behind: its leases, then its
 * process slot.
 *
 * shm/ says which process slots belong to dead processes
 * (km__proc_next_dead); this file releases what their tags hold, takes
 * their sleepers out of the pools' counts (src/wait.c), and only then frees
 * the slots (km__proc_free_dead), which keeps T1 (shm/proc.c): a tag is
 * never reused while a lease could still carry it.
 */
#include <sched.h>
#include <string.h>

#include <ck_pr.h>

#include "internal.h"
#include "owner.h"
#include "slots.h"
#include "usage.h"
#include "wait.h"

/* Release an ACTIVE lease we hold or took from a dead owner: settle at the
 * estimate, count it abandoned, free the slot. */
static void abandon(km_env *e, uint32_t ki, km__key *k, km__lease *ls, uint32_t slot)
{
    ck_pr_store_32(&ls->phase, KM__LP_RELEASING);
    ck_pr_fence_store_atomic(); /* phase before the settle's CASes (P2) */
    km__lview lv = km__lease_read(ls);
    uint64_t settled = 0;
    if (lv.key_gen == ck_pr_load_32(&k->gen)) {
        settled = lv.tokens;
        km__settle(e, ki, k, ls, &lv, lv.tokens);
        km__usage_put(e, km__rd_holds_row1(&e->seg), ki, lv.key_gen, k->pool, lv.model, lv.start_ns,
                      lv.tokens, -1, KM__OUT_ABANDONED);
    } else {
        /* Its pool was removed with the lease out (km_release's stale
         * case): the reservation given back, nothing charged. */
        km__settle(e, ki, k, ls, &lv, 0);
    }
    /* A probe that will never report lets the next one go; any other
     * lease of the key ends no probe (src/layout.h, km__key.probe). */
    km__probe_drop(k, slot);
    /* The flag, then the count, as in km_release (P4): a reaper dying
     * between them leaves the lease counted short by one, never twice (the
     * next reaper counts a RELEASING slot abandoned only with its flag set). */
    ck_pr_store_8(&km__busy(e, ki)[slot], 0);
    ck_pr_fence_store();
    KM__SLOT_ADD(ls->abandoned, 1);
    km__mwin *mr = km__mrow(e, ki, lv.model);
    if (mr) { /* locked: a shared row (km__mwin); short by one if killed here */
        ck_pr_inc_64(&mr->abandoned);
        if (settled)
            ck_pr_add_64(&mr->ok.tokens, settled); /* atomic against the pair CAS */
    }
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
                abandon(e, ki, &keys[ki], &ls[s], s);
    }
}

/* Is the process behind a slot's owner value alive (km__owner_live,
 * src/owner.h)?  Answers are cached for one reap: each distinct owner costs
 * one check, up to KM__LIVE_CACHE owners. */
#define KM__LIVE_CACHE 64
typedef struct live_cache {
    uint32_t n;
    uint64_t owner[KM__LIVE_CACHE];
    uint8_t alive[KM__LIVE_CACHE];
} live_cache;

static int owner_alive(km_env *e, uint64_t owner, live_cache *c)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (c->owner[i] == owner)
            return c->alive[i];
    int alive = km__owner_live(e, owner);
    if (c->n < KM__LIVE_CACHE) {
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
 * an unchanged scan (the validated scan of src/slots.h).  Every acquirer
 * and releaser changes its slot's phase before it touches a reserved word
 * (P2: phase store, then a locked instruction), so an unchanged scan means
 * no reserved word changed in between.  Each window is then set by CAS from the value read: a
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
 * model and token window in msum[] when n_models > 0).  The sums must come from the scan that
 * is validated: a slot that turns RELEASING after the scan would otherwise be
 * left out while its tokens are still reserved. */
static int scan_slots(const km__lease *ls, uint32_t n, uint64_t mine, uint64_t *sig,
                          uint64_t *sum, uint64_t (*msum)[KM__TOKEN_WIN_COUNT], uint32_t n_models)
{
    uint64_t h = KM__FNV64_INIT, tot[KM_WIN_COUNT] = {0};
    if (msum && n_models)
        memset(msum, 0, sizeof(*msum) * n_models);
    for (uint32_t s = 0; s < n; s++) {
        uint64_t o = ck_pr_load_64(&ls[s].owner);
        uint32_t ph = ck_pr_load_32(&ls[s].phase), q = ck_pr_load_32(&ls[s].seq);
        if (o != mine && km__slot_moving(o, ph))
            return 0; /* a live operation in flight */
        if (o && ph == KM__LP_ACTIVE) {
            km__lview lv = km__lease_read(&ls[s]);
            for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
                if (lv.res_mask & (1u << w))
                    tot[w] += lv.tokens;
            /* The model's windows this lease reserved (res_mask's upper
             * bits: a key's own model limits may have changed since). */
            for (int w = 0; msum && lv.model && lv.model <= n_models && w < KM__TOKEN_WIN_COUNT; w++)
                if ((lv.res_mask >> KM__RES_MODEL_SHIFT) & (1u << (KM_WIN_TPM + w)))
                    msum[lv.model - 1][w] += lv.tokens;
        }
        h = km__slot_sig(h, o, ph, q); /* see "Validated scans", src/slots.h */
    }
    *sig = h;
    if (sum)
        memcpy(sum, tot, sizeof(tot));
    return 1;
}

static int recount_key(km_env *e, uint32_t ki, live_cache *lc, int repair,
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
            owner_alive(e, o, lc) || !ck_pr_cas_64(&ls[s].owner, o, mine))
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
        uint64_t rm[KM_MODELS_MAX][KM__TOKEN_WIN_COUNT], sm[KM_MODELS_MAX][KM__TOKEN_WIN_COUNT];
        uint64_t msum[KM_MODELS_MAX][KM__TOKEN_WIN_COUNT];
        if (!scan_slots(ls, n, mine, &sig1, NULL, NULL, 0)) {
            sched_yield();
            continue;
        }
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
            rk[w] = ck_pr_load_64(&k->win[w].reserved);
        for (uint32_t m = 0; m < n_models; m++)
            for (int w = 0; w < KM__TOKEN_WIN_COUNT; w++)
                rm[m][w] = ck_pr_load_64(&km__mwins(e, ki)[m].win[KM_WIN_TPM + w].reserved);
        if (!scan_slots(ls, n, mine, &sig2, tot, msum, n_models) || sig1 != sig2)
            continue;
        /* The sums of the validated scan itself (see scan_slots). */
        for (int w = KM_WIN_TPM; w <= KM_WIN_TPD; w++)
            sk[w] = tot[w];
        for (uint32_t m = 0; m < n_models; m++)
            for (int w = 0; w < KM__TOKEN_WIN_COUNT; w++)
                sm[m][w] = msum[m][w];
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
            for (int w = 0; w < KM__TOKEN_WIN_COUNT && done; w++) {
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
        km__probe_drop(k, s); /* only if this slot held the probe */
        /* Died mid-release with its flag still set: counted as acquired, not
         * yet as released, so abandoned.  Died mid-acquire: the lease was
         * never handed out (nor counted as acquired) and counts nowhere. */
        uint8_t *fl = &km__busy(e, ki)[s];
        if (releasing[s] && ck_pr_load_8(fl)) {
            KM__SLOT_ADD(ls[s].abandoned, 1);
            /* RELEASING: past ACTIVE, so its model word is settled (P3). */
            km__mwin *mr = km__mrow(e, ki, ck_pr_load_32(&ls[s].model));
            if (mr) /* locked: a shared row (km__mwin) */
                ck_pr_inc_64(&mr->abandoned);
        }
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
            n += km__owner_tag(ck_pr_load_64(&ls[s].owner)) == owner;
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
    live_cache lc = {0};

    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        km__lease *ls = km__leases(e, ki);
        int transient = 0;
        for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
            uint64_t o = ck_pr_load_64(&ls[s].owner);
            if (!o || o == mine || owner_alive(e, o, &lc))
                continue;
            uint32_t ph = ck_pr_load_32(&ls[s].phase);
            if (ph == KM__LP_ACTIVE) {
                /* CAS from the dead owner's value (P1): of several reapers
                 * one takes the slot; the CAS (a full barrier) also orders
                 * our mark before the abandon's phase store.  ACTIVE: its
                 * fields and charges are complete (P3). */
                if (ck_pr_cas_64(&ls[s].owner, o, mine)) {
                    abandon(e, ki, &keys[ki], &ls[s], s);
                    r->leases++;
                }
            } else if (ph == KM__LP_FREE) {
                /* Died between claiming the slot and writing its phase:
                 * nothing was charged yet (P2). */
                ck_pr_cas_64(&ls[s].owner, o, 0);
            } else {
                transient = 1;
            }
        }
        int changed = 0;
        if (transient) {
            if (recount_key(e, ki, &lc, 0, &changed))
                r->recounted++;
            else
                r->pending++;
        } else if (repair && ck_pr_load_32(&keys[ki].state) != KM__ST_FREE) {
            /* An explicit reap also checks that reservations match the
             * key's live leases and sets right any drift, counting it: it
             * should be 0.  (Drift was once caused by summing the leases
             * outside the validated scan; see scan_slots.) */
            if (recount_key(e, ki, &lc, 1, &changed) && changed)
                r->repaired++;
        }
    }
}

int km__reap_dead(km_env *e, km_reap_report *rep, int repair)
{
    km_reap_report r = {0};
    uint64_t tag;

    /* A reconfiguration whose writer died (a key half added, a flag left
     * set: src/reconfig.c) is finished or undone first, if the admin lock
     * is free.  Then leases, by slot: that also recovers slots of a reaper
     * that died while reaping.  Then the table entries of dead processes
     * that hold nothing any more. */
    km__admin_recover_dead(e);
    km__reap_leases(e, &r, repair);
    for (uint32_t i = 0; km__proc_next_dead(&e->seg, &i, &tag); i++) {
        /* Nothing may carry the dead tag (T1; a mark taken over from a
         * reaper that died was set once that held).  Then the slot is this
         * reaper's alone (T3, shm/proc.c) while its sleepers leave the
         * pools' counts and its row is cleared (src/wait.c): no process can
         * claim the slot and start sleeping in that row meanwhile. */
        uint64_t mark;
        if ((!km__tag_reaping(tag) && km__count_owned(e, tag) != 0) ||
            !km__proc_reap_take(&e->seg, i, tag, &mark)) {
            r.pending++; /* a recount could not settle yet, or the slot moved */
            continue;
        }
        if (!km__waiters_reap(e, i)) {
            km__proc_reap_undo(&e->seg, i, mark, tag);
            r.pending++;
            continue;
        }
        if (km__proc_free_dead(&e->seg, i, mark)) /* T1 */
            r.processes++;
    }
    if (rep)
        *rep = r;
    return (int)r.processes;
}

KM_EXTERN int km_reap(km_env *e, km_reap_report *out)
{
    km_reap_report r;
    if (!e)
        return KM_EINVAL;
    if (e->seg.ro)
        return KM_EREADONLY;
    km__reap_dead(e, &r, 1);
    if (out)
        *out = r;
    return KM_OK;
}

KM_EXTERN int km_proc_info_get(km_env *e, int slot, km_proc_info *out)
{
    if (!e || !out || (uint32_t)slot >= e->geom.cap_procs) /* negative: out of range too */
        return KM_EINVAL;
    km__proc *p = &km__procs(&e->seg)[slot];
    uint64_t tag = ck_pr_load_64(&p->tag);
    if (tag == 0)
        return KM_ENOSLOT;
    ck_pr_fence_load(); /* tag before the fields it guards */
    memset(out, 0, sizeof(*out));
    out->attached_ns = ck_pr_load_64(&p->attach_ns);
    out->alive = km__proc_entry_live(&e->seg, slot, tag);
    out->pid = km__tag_pid(tag); /* the tag's pid: the field may lag while attaching */
    out->leases = (uint32_t)km__count_owned(e, tag);
    return KM_OK;
}
