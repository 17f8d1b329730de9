/*
 * src/check.c - km_check(): verify the segment's invariants.
 *
 * It reads with the same atomic loads as everyone else and changes nothing.
 * Per key it takes a consistent view the way the reaper does (src/layout.h,
 * src/reap.c): scan the lease slots, read the counters, scan again, and use
 * the view only if no slot moved; a key that keeps moving is re-read a few
 * times and then reported as "busy", never as a false violation.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ck_pr.h>

#include "internal.h"
#include "owner.h"
#include "slots.h"

#define KM__CHECK_TRIES 200

typedef struct checker {
    void (*report)(void *, const char *);
    void *ctx;
    int n;
} checker;

__attribute__((format(printf, 2, 3))) static void violation(checker *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    c->n++;
    if (c->report)
        c->report(c->ctx, line);
}

/* The signature of a key's slots (see "Validated scans", src/slots.h):
 * equal twice, with no slot mid-operation, means no lease of the key
 * started or ended between the two scans. */
static uint64_t slots_sig(const km__lease *ls, uint32_t n, int *moving)
{
    uint64_t h = KM__FNV64_INIT;
    *moving = 0;
    for (uint32_t s = 0; s < n; s++) {
        uint64_t o = ck_pr_load_64(&ls[s].owner);
        uint32_t ph = ck_pr_load_32(&ls[s].phase), q = ck_pr_load_32(&ls[s].seq);
        if (km__slot_moving(o, ph))
            *moving = 1;
        h = km__slot_sig(h, o, ph, q);
    }
    return h;
}

/* A name from the segment, for a message: at most its array's length.  A
 * corrupted row may lack the NUL, and "%s" would read on into the secret
 * that follows an id. */
static const char *name_of(char out[KM_ID_MAX + 1], const char *name)
{
    memcpy(out, name, KM_ID_MAX);
    out[KM_ID_MAX] = '\0';
    return out;
}

static void check_key(km_env *e, uint32_t ki, uint64_t now, checker *c)
{
    km__key *k = &km__keys(e)[ki];
    const km__lease *ls = km__leases(e, ki);
    uint32_t n = e->geom.cap_inflight, st = ck_pr_load_32(&k->state);
    char idbuf[KM_ID_MAX + 1], mname[KM_ID_MAX + 1];
    const char *id = st == KM__ST_FREE ? "(free slot)" : name_of(idbuf, k->id);

    const km__pool *pool = st != KM__ST_FREE && k->pool < e->geom.n_pools ? &km__pools(e)[k->pool] : NULL;
    uint32_t n_models = pool && pool->model_mode == KM_MODELS_PER_MODEL
                            ? (pool->n_models < e->geom.cap_models ? pool->n_models : e->geom.cap_models)
                            : 0;

    for (int t = 0; t < KM__CHECK_TRIES; t++) {
        int moving;
        uint64_t sig1 = slots_sig(ls, n, &moving), res[KM_WIN_COUNT];
        uint8_t busy[KM_INFLIGHT_MAX];
        uint64_t mres[KM_MODELS_MAX][KM_WIN_COUNT], mtok[KM_MODELS_MAX][KM_WIN_COUNT];
        if (moving)
            continue;
        ck_pr_fence_load(); /* the first scan before the flags (free on x86) */
        for (uint32_t s = 0; s < n; s++)
            busy[s] = ck_pr_load_8(&km__busy(e, ki)[s]);
        for (int w = 0; w < KM_WIN_COUNT; w++)
            res[w] = ck_pr_load_64(&k->win[w].reserved);
        for (uint32_t m = 0; m < n_models; m++)
            for (int w = 0; w < KM_WIN_COUNT; w++) {
                mtok[m][w] = 0;
                mres[m][w] = ck_pr_load_64(&km__mwins(e, ki)[m].win[w].reserved);
            }
        if (slots_sig(ls, n, &moving) != sig1 || moving)
            continue;

        uint64_t active = 0, tokens[KM_WIN_COUNT] = {0};
        for (uint32_t s = 0; s < n; s++) {
            uint64_t o = ck_pr_load_64(&ls[s].owner);
            uint32_t ph = ck_pr_load_32(&ls[s].phase);
            int bit = busy[s] != 0;
            if (!o) {
                if (ph != KM__LP_FREE)
                    violation(c, "key %s: lease slot %u has no owner but phase %u", id, s, ph);
                if (bit)
                    violation(c, "key %s: lease slot %u is free but counted in flight", id, s);
                continue;
            }
            if (ph == KM__LP_ACTIVE) {
                uint32_t m = ck_pr_load_32(&ls[s].model);
                uint32_t rm = ck_pr_load_32(&ls[s].res_mask);
                active++;
                for (int w = 0; w < KM_WIN_COUNT; w++)
                    if (rm & (1u << w))
                        tokens[w] += ck_pr_load_32(&ls[s].tokens);
                /* The model's windows it reserved: res_mask's upper bits. */
                for (int w = 0; m && m <= n_models && w < KM_WIN_COUNT; w++)
                    if ((rm >> KM__RES_MODEL_SHIFT) & (1u << w))
                        mtok[m - 1][w] += ck_pr_load_32(&ls[s].tokens);
                if (!bit)
                    violation(c, "key %s: lease slot %u is active but not counted in flight", id, s);
            }
            if (st == KM__ST_FREE)
                violation(c, "key slot %u is free but lease slot %u is held", ki, s);
            if (!km__owner_known(e, o))
                violation(c, "key %s: lease slot %u is held by no attached process", id, s);
            if (s >= k->max_inflight && st != KM__ST_FREE)
                violation(c, "key %s: lease slot %u is beyond the key's max_inflight %u", id, s, k->max_inflight);
        }
        uint64_t inflight = 0;
        for (uint32_t s = 0; s < n; s++)
            inflight += busy[s] != 0;
        if (inflight != active)
            violation(c, "key %s: in-flight %llu but %llu active leases", id,
                          (unsigned long long)inflight, (unsigned long long)active);
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            if (!(k->win_mask & (1u << w))) {
                if (res[w] != tokens[w]) /* a removed window: its leases' */
                    violation(c, "key %s: %s reserves %llu without a limit", id, km_window_name(w),
                                  (unsigned long long)res[w]);
                continue;
            }
            uint64_t expect = km__window_is_requests(w) ? 0 : tokens[w];
            if (res[w] != expect)
                violation(c, "key %s: %s reserved %llu but active leases hold %llu", id,
                              km_window_name(w), (unsigned long long)res[w], (unsigned long long)expect);
            if (res[w] > k->burst[w])
                violation(c, "key %s: %s reserved %llu above its burst %llu", id, km_window_name(w),
                              (unsigned long long)res[w], (unsigned long long)k->burst[w]);
            uint64_t tat = ck_pr_load_64(&k->win[w].tat);
            /* An extra charge (actual above the estimate) may push tat past
             * now + tau; a day beyond that is no longer plausible. */
            if (tat > now + k->tau_ns[w] + KM__S_PER_DAY * KM__NS_PER_S)
                violation(c, "key %s: %s limit word %.0f s ahead of the clock", id,
                              km_window_name(w), (double)(tat - now) / (double)KM__NS_PER_S);
        }
        /* Per-model windows of a per_model pool: the same rule per model
         * (the windows each lease reserved, as for the key's). */
        for (uint32_t m = 0; m < n_models; m++) {
            const km__model *md = &km__models(e, k->pool)[m];
            for (int w = 0; w < KM_WIN_COUNT; w++) {
                uint64_t expect = !km__window_is_requests(w) ? mtok[m][w] : 0;
                if (mres[m][w] != expect)
                    violation(c, "key %s, model %s: %s reserved %llu but active leases hold %llu", id,
                                  name_of(mname, md->name), km_window_name(w), (unsigned long long)mres[m][w],
                                  (unsigned long long)expect);
            }
        }
        return;
    }
    violation(c, "key %s: leases kept moving; not checked (run check when quiet)", id);
}

KM_EXTERN int km_check(km_env *e, void (*report)(void *, const char *), void *ctx)
{
    checker c = {report, ctx, 0};
    km__hdr *h;
    uint64_t now = km_now_ns();

    if (!e)
        return KM_EINVAL;
    h = e->seg.hdr;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        check_key(e, ki, now, &c);

    /* Pools: the current member list names each live key of the pool once
     * (a removed key may linger until the list is rebuilt). */
    uint8_t *seen = calloc(e->geom.cap_keys, 1);
    char name[KM_ID_MAX + 1], kname[KM_ID_MAX + 1];
    km__intent_view iv;
    /* A live writer may be between two stores (src/reconfig.c): what it
     * changes is checked once it is done. */
    int writing = km__admin_intent(e, &iv) != KM__OP_NONE && iv.alive;
    if (!seen)
        return KM_ENOMEM;
    for (uint32_t p = 0; p < e->geom.n_pools; p++) {
        const km__pool *pool = &km__pools(e)[p];
        const char *pname = name_of(name, pool->name);
        uint32_t b = ck_pr_load_32(&pool->cur) & 1;
        ck_pr_fence_load(); /* cur before the list it names */
        const km__member *m = km__members(e, p, b);
        uint32_t n = ck_pr_load_32(&pool->view[b].n_keys);
        if (n > e->geom.cap_keys) {
            violation(&c, "pool %u: %u keys above capacity %u", p, n, e->geom.cap_keys);
            continue;
        }
        uint32_t prev = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t ki = ck_pr_load_32(&m[i].key), cum = ck_pr_load_32(&m[i].cum_weight);
            uint32_t w = cum - prev;
            prev = cum;
            if (ki >= e->geom.cap_keys || km__keys(e)[ki].pool != p ||
                ck_pr_load_32(&km__keys(e)[ki].state) == KM__ST_FREE) {
                violation(&c, "pool %s: member %u names key slot %u, not a key of this pool",
                              pname, i, ki);
                continue;
            }
            if (seen[ki]++)
                violation(&c, "pool %s: key slot %u is listed twice", pname, ki);
            if (w != ck_pr_load_32(&km__keys(e)[ki].weight) && !writing)
                violation(&c, "pool %s: key %s weighs %u in the member list but %u itself", pname,
                          name_of(kname, km__keys(e)[ki].id), w,
                          ck_pr_load_32(&km__keys(e)[ki].weight));
        }
    }
    /* Reconfiguration (src/reconfig.c): an intent whose writer is dead is
     * a change left half made until someone resolves it; a key skipped for
     * a limits change, or live outside every list, is one only while its
     * writer lives. */
    static const char *const op_name[KM__OP_COUNT] = {"none", "add-key", "remove-key",
                                                     "set-weight", "set-limits", "enable",
                                                     "disable", "set-limits --model",
                                                     "add-pool", "remove-pool",
                                                     "set-pool", "set-pool limits",
                                                     "set-pool model"};
    int busy = writing;
    if (iv.op != KM__OP_NONE && !iv.alive)
        violation(&c, "reconfiguration %s (key slot %d) interrupted: its writer (pid %u) died; "
                      "the next reconfiguration, kmctl reap or an attach finishes or undoes it",
                  iv.op < KM__OP_COUNT ? op_name[iv.op] : "?", iv.key == UINT32_MAX ? -1 : (int)iv.key,
                  iv.pid);
    uint32_t rows = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        const km__key *k = &km__keys(e)[ki];
        uint32_t st = ck_pr_load_32(&k->state);
        rows += st != KM__ST_FREE;
        if (busy)
            continue;
        if (st < KM__ST_FREE && !seen[ki])
            violation(&c, "key %s is live but in no pool's member list", name_of(name, k->id));
        if (st < KM__ST_FREE && ck_pr_load_32(&k->updating))
            violation(&c, "key %s: skipped by every acquire (a limits change left unfinished)",
                      name_of(name, k->id));
        if (st == KM__ST_REMOVED && ck_pr_load_64(&k->retire_epoch) == 0)
            violation(&c, "key slot %u: removed without a retire epoch (reusable too early)", ki);
        /* Pools change live (src/reconfig.c, "Pools"): a live key belongs
         * to a pool that is, or is being added or removed. */
        uint32_t ps = k->pool < e->geom.cap_pools ? ck_pr_load_32(&km__pools(e)[k->pool].state)
                                                  : KM__PST_FREE;
        if (st < KM__ST_FREE && (ps == KM__PST_FREE || ps == KM__PST_REMOVED))
            violation(&c, "key %s is live in pool slot %u, which holds no pool", name_of(name, k->id),
                      k->pool);
    }
    /* Pool rows: a known state; no two pools of one name. */
    for (uint32_t p = 0; !busy && p < e->geom.cap_pools; p++) {
        const km__pool *pl = &km__pools(e)[p];
        uint32_t ps = ck_pr_load_32(&pl->state);
        if (ps > KM__PST_REMOVED)
            violation(&c, "pool slot %u: state %u unknown", p, ps);
        if (ps == KM__PST_ADDING || ps == KM__PST_REMOVING)
            violation(&c, "pool %s: left %s by a writer that is gone", name_of(name, pl->name),
                      ps == KM__PST_ADDING ? "half added" : "half removed");
        for (uint32_t q = p + 1; ps == KM__PST_LIVE && q < e->geom.cap_pools; q++)
            if (ck_pr_load_32(&km__pools(e)[q].state) == KM__PST_LIVE &&
                strncmp(pl->name, km__pools(e)[q].name, KM_ID_MAX + 1) == 0)
                violation(&c, "pools %u and %u are both named %s", p, q, name_of(name, pl->name));
    }
    if (!busy && ck_pr_load_32(&h->n_keys) != rows)
        violation(&c, "key rows: %u counted in use, %u in use", ck_pr_load_32(&h->n_keys), rows);
    free(seen);

    /* Epochs: rows hold epochs already handed out.  (Rows of a free slot
     * may keep a dead process's last values: they are ignored, and cleared
     * by the next process to claim the slot.) */
    uint64_t g = ck_pr_load_64(&h->epoch), synced = ck_pr_load_64(&h->synced);
    if (synced > g)
        violation(&c, "epochs: synced %llu is ahead of the epoch %llu",
                      (unsigned long long)synced, (unsigned long long)g);
    for (uint32_t i = 0; i < e->geom.cap_procs; i++) {
        const km__rdr *r = km__rdrs(&e->seg, i);
        for (uint32_t j = 0; j < KM__RDR_PER_PROC; j++) {
            uint64_t ep = km__row_epoch(&r[j], j);
            if (ep > g)
                violation(&c, "epochs: reader row %u of process slot %u holds epoch %llu, ahead of %llu",
                              j, i, (unsigned long long)ep, (unsigned long long)g);
        }
    }

    /* Sleepers of km_acquire_wait: the pool's count lies between what the
     * rows of live processes and what all rows account for (src/wait.c).
     * Above all rows: a sleeper counted by no process, and every release
     * makes a wake-up system call for nobody. */
    for (uint32_t p = 0; p < e->geom.n_pools; p++) {
        uint32_t counted;
        uint64_t live, all;
        if (!km__waiters_view(e, p, &counted, &live, &all))
            continue; /* sleepers kept coming and going: no view, no verdict */
        if (counted < live || counted > all)
            violation(&c, "pool %u: %u sleepers counted, but the processes' rows account for %llu (%llu with the dead)",
                          p, counted, (unsigned long long)live, (unsigned long long)all);
    }

    /* Process table. */
    uint32_t used = 0;
    km__proc *pt = km__procs(&e->seg);
    for (uint32_t i = 0; i < e->geom.cap_procs; i++) {
        uint64_t tag = ck_pr_load_64(&pt[i].tag);
        if (!tag)
            continue;
        used++;
        ck_pr_fence_load(); /* tag before the fields it guards */
        uint32_t pid = ck_pr_load_32(&pt[i].pid);
        if ((uint32_t)(tag >> 32) != i + 1)
            violation(&c, "process slot %u holds the tag of slot %u", i, (uint32_t)(tag >> 32) - 1);
        if (!km__proc_entry_live(&e->seg, i, tag))
            violation(&c, "process %u (slot %u) died without detaching, holding %llu leases; run reap",
                          (uint32_t)tag, i, (unsigned long long)km__count_owned(e, tag));
        for (uint32_t j = i + 1; pid && j < e->geom.cap_procs; j++)
            if (ck_pr_load_64(&pt[j].tag) && ck_pr_load_32(&pt[j].pid) == pid &&
                ck_pr_load_64(&pt[j].start_time) == ck_pr_load_64(&pt[i].start_time))
                violation(&c, "process %u is registered twice (slots %u and %u)", pid, i, j);
    }
    uint32_t counted = ck_pr_load_32(&h->n_procs);
    if (counted != used)
        violation(&c, "process table: %u attached counted, %u slots in use", counted, used);
    return c.n;
}
