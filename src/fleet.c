/*
 * src/fleet.c - fleet-wide limits: the acquirer's slow paths (hour/day
 * credit, the fallback share, the policy once both lapsed, the refusal's
 * bookkeeping) and the agent's calls (km_fleet_*, include/keymesh.h).
 * The hot path and the argument for it are in src/fleet.h; the protocol
 * and the bound in tools/sync/DESIGN.md.
 *
 * The agent's accounting (rule 4 of DESIGN.md), per fleet (key, window),
 * in words only the agent writes (km__fkey lines 7 and 9):
 *   a_last  credit the word would hold had nothing been spent since the
 *           last report: set to the word at collect, raised by a grant,
 *           lowered by what a void takes.  Acquirers only ever lower the
 *           word, so a_last >= word, and spent = a_last - word, exactly:
 *           each decrement linearises before or after collect's one load.
 *   a_ret   credit voided (lapsed, or km_fleet_release) since the last
 *           report: returned.
 * A unit an acquirer took and gives back (the local limits refused, F3)
 * may be seen taken by one collect (reported spent: the ledger commits
 * it, conservative) and back in the word by the next: the word then
 * exceeds a_last by it.  That unit is the ledger's no more, so every
 * report counts the word only up to a_last (left = min(word, a_last),
 * and a void returns at most a_last): whatever the word holds above is
 * spent without being reported again, and the ledger's check that
 * spent + returned + left never exceeds what it granted holds.
 * Both live in the segment, so an agent that restarts reports what was
 * spent since its predecessor's last collect; and what the collects took
 * stays there too until the ledger has answered the report that carries
 * it (below).
 *
 * The report in the segment (km_fleet_report_*, km__fkey lines 11-15,
 * km__fhdr line 2).  A collect resets the counters above; what it took is
 * added to the key's p_* counts, which are the agent's pending report.
 * km_fleet_report_take stamps them with the request's seq (rule 1: from
 * then on they are that seq's, fixed), km_fleet_report_ack clears them
 * once the reply to that seq is applied.  While a report is stamped a
 * collect resets nothing and returns the stamped counts again: what
 * acquirers spend meanwhile waits in the counters above for the report
 * after it.  So at every instant each unit taken is in exactly one of:
 * the credit counters (a_last - word, a_ret, fb_used, the lease slots'
 * adj), the p_* counts, or a report the ledger has answered -- whatever
 * process dies.  An agent killed with a report unanswered leaves it
 * stamped; its successor (after km_fleet_claim) takes it back with the
 * same seq, ack, epoch and first send, sends it first (the ledger answers
 * a seq it saw with the stored reply, or applies it), and applies no
 * credit from the reply (its predecessor may have applied it already).
 * The p_* counts are single-writer (the role holder) plain words; each
 * call writes rp_seq last when stamping and first when clearing, so a
 * holder killed inside one leaves either the old report or none stamped
 * with the counts it holds.  Not covered: a holder killed between a
 * counter's reset and the add to p_* in one collect (a few instructions
 * per key: those units go unreported, as before this change), and a key
 * whose row is reused by another key while its counts are pending
 * (km__fleet_key_init clears the row: the ledger keeps that key's credit
 * reserved, never charged nor freed).
 */
#include <string.h>

#include <ck_pr.h>

#include "budget.h"
#include "fleet.h"
#include "wait.h"

/* --------------------------------------------------------- credit words */

/* Fleet blocks.  The code below the hot path takes a fleet block by its
 * index ki: a key's (ki < cap_keys, k its row), or a model's
 * (km__fmodel_ix, k unused), whose block holds all its credit.
 *
 * The credit word of window w of block ki: a key's minute pair in its key
 * row, the rest in the block, (requests, tokens) each. */
static uint64_t *credit_word(km_env *e, uint32_t ki, km__key *k, int w)
{
    km__fkey *fm = ki >= e->geom.cap_keys ? km__fkeys(e, ki) : NULL; /* a model's block */
    switch (w) {
    case KM_WIN_RPM: return fm ? &fm->credit_min.req : &k->credit.req;
    case KM_WIN_TPM: return fm ? &fm->credit_min.tok : &k->credit.tok;
    case KM_WIN_RPH: return &km__fkeys(e, ki)->credit_hd[0].req;
    case KM_WIN_TPH: return &km__fkeys(e, ki)->credit_hd[0].tok;
    case KM_WIN_RPD: return &km__fkeys(e, ki)->credit_hd[1].req;
    default: return &km__fkeys(e, ki)->credit_hd[1].tok;
    }
}

/* ------------------------------------------------------ acquirer, slow */

/* Take the hour and day credit of mask (the minute pair is taken), each
 * pair by one 16-byte CAS (F1 of src/fleet.h); on a refusal give back what
 * was taken here (F3) and count the refusal. */
int km__fleet_take_hd(km_env *e, uint32_t ki, km__key *k, uint32_t mask, km__adm *a)
{
    km__fkey *fk = km__fkeys(e, ki);
    uint64_t taken[2][2] = {{0, 0}, {0, 0}};
    static const int req_w[2] = {KM_WIN_RPH, KM_WIN_RPD}, tok_w[2] = {KM_WIN_TPH, KM_WIN_TPD};

    (void)k;
    for (int p = 0; p < 2; p++) {
        uint64_t nr = (mask >> req_w[p]) & 1, nt = (mask >> tok_w[p]) & 1 ? a->tokens : 0;
        if (!(nr | nt))
            continue;
        km__cpair *pair = &fk->credit_hd[p];
        uint64_t cur[2] = {ck_pr_load_64(&pair->req), ck_pr_load_64(&pair->tok)}, set[2];
        do {
            if (cur[0] < nr || cur[1] < nt) {
                for (int q = 0; q < p; q++) { /* exact give-back (F3) */
                    if (taken[q][0])
                        ck_pr_add_64(&fk->credit_hd[q].req, taken[q][0]);
                    if (taken[q][1])
                        ck_pr_add_64(&fk->credit_hd[q].tok, taken[q][1]);
                }
                return km__fleet_refuse(e, ki, mask, a);
            }
            set[0] = cur[0] - nr;
            set[1] = cur[1] - nt;
        } while (!km__cpair_cas(pair, cur, set));
        taken[p][0] = nr;
        taken[p][1] = nt;
    }
    return 1;
}

/* A refusal for want of credit: counted for the agent's demand (refused,
 * want: locked RMWs, statistics ordered against nothing), the agent kicked,
 * and the caller told to look again at the next sync. */
int km__fleet_refuse(km_env *e, uint32_t ki, uint32_t mask, km__adm *a)
{
    km__fkey *fk = km__fkeys(e, ki);
    km__fhdr *fh = km__fleet(e);
    uint32_t m = mask;
    uint64_t cost;
    for (int w; (w = km__fleet_next(&m, a->tokens, &cost)) >= 0;) {
        ck_pr_add_64(&fk->refused[w], cost);
        uint64_t cur = ck_pr_load_64(&fk->want[w]);
        while (cur < cost && !ck_pr_cas_64_value(&fk->want[w], cur, cost, &cur))
            ;
    }
    if (!ck_pr_load_32(&fh->kick))
        ck_pr_store_32(&fh->kick, 1); /* see km__fhdr.kick */
    uint64_t next = ck_pr_load_64(&fh->next_sync_ns);
    a->retry = km__min64(a->retry, next > a->now ? next : a->now + KM__FLEET_POLL_NS);
    return 0;
}

/* The fallback share of key ki as the agent last published it, read under
 * its seqlock.  Returns 0 if none could be read (a writer that died half
 * way leaves the count odd: after a bounded number of tries the share is
 * taken as absent, which only refuses). */
typedef struct fb_view {
    uint64_t from, until, T[KM_WIN_COUNT], tau[KM_WIN_COUNT];
} fb_view;

static int fb_read(km__fkey *fk, fb_view *v)
{
    for (int tries = 0; tries < 64; tries++) {
        uint32_t s0 = ck_pr_load_32(&fk->fb_seq);
        if (s0 & 1) {
            ck_pr_stall();
            continue;
        }
        ck_pr_fence_load(); /* the count before the fields (pairs with the writer's fence) */
        v->from = ck_pr_load_64(&fk->fb_from);
        v->until = ck_pr_load_64(&fk->fb_until);
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            v->T[w] = ck_pr_load_64(&fk->fb_T[w]);
            v->tau[w] = ck_pr_load_64(&fk->fb_tau[w]);
        }
        ck_pr_fence_load(); /* the fields before the count's second load */
        if (ck_pr_load_32(&fk->fb_seq) == s0)
            return 1;
    }
    return 0;
}

/* Credit lapsed: the fallback share inside its window (F4), else the
 * policy (stop: refuse; local: the local limits alone). */
int km__fleet_lapsed(km_env *e, uint32_t ki, km__key *k, uint32_t mask, km__adm *a)
{
    km__fkey *fk = km__fkeys(e, ki);
    km__fhdr *fh = km__fleet(e);
    fb_view v;
    uint64_t old[KM_WIN_COUNT], set[KM_WIN_COUNT];
    uint32_t done = 0;

    (void)k;
    int have = fb_read(fk, &v);
    if (!have && a->now < ck_pr_load_64(&fh->next_sync_ns) + KM__NS_PER_S) {
        /* The agent, alive (it published its next sync lately), is
         * writing the share: refuse and look again soon, whatever the
         * policy, which applies only where no share is open.  An agent
         * that died half way through the write leaves the count odd for
         * good: past its next sync by a second, the policy applies. */
        a->retry = km__min64(a->retry, a->now + KM__FLEET_POLL_NS);
        return km__fleet_refuse(e, ki, mask, a);
    }
    if (have && v.from <= a->now && a->now < v.until) {
        uint32_t m = mask;
        uint64_t cost;
        for (int w; (w = km__fleet_next(&m, a->tokens, &cost)) >= 0;) {
            uint64_t T = v.T[w], tau = v.tau[w], need = km__mul_sat(cost, T);
            uint64_t tat = ck_pr_load_64(&fk->fb_tat[w]), nt;
            for (;;) {
                uint64_t base = km__max64(tat, a->now);
                if (T == 0 || base + need - a->now > tau) {
                    /* No share on w, or over it: when may it admit? */
                    if (T != 0 && need <= tau)
                        a->retry = km__min64(a->retry, km__min64(tat + need - tau, v.until));
                    goto refused;
                }
                nt = base + need;
                /* The share's GCRA word: CAS, as a request window's tat. */
                if (ck_pr_cas_64_value(&fk->fb_tat[w], tat, nt, &tat))
                    break;
            }
            old[w] = tat;
            set[w] = nt;
            done |= 1u << w;
        }
        m = done; /* admitted: counted for the agent (fb_spent) */
        for (int w; (w = km__fleet_next(&m, a->tokens, &cost)) >= 0;)
            ck_pr_add_64(&fk->fb_used[w], cost);
        return KM__FL_FALLBACK;
    refused:
        while (done) { /* exact only if nothing was admitted since (src/gcra.h) */
            int w = __builtin_ctz(done);
            done &= done - 1;
            ck_pr_cas_64(&fk->fb_tat[w], set[w], old[w]);
        }
        return km__fleet_refuse(e, ki, mask, a);
    }
    if (ck_pr_load_32(&fh->policy) == KM_FLEET_LOCAL)
        return KM__FL_LOCAL;
    return km__fleet_refuse(e, ki, mask, a);
}

void km__fleet_undo(km_env *e, uint32_t ki, km__key *k, uint32_t mask, const km__adm *a, int how)
{
    km__fkey *fk = km__fkeys(e, ki);
    if (how == KM__FL_CREDIT) {
        /* What the take took is fixed by mask and cost (all or nothing). */
        km__fleet_giveback_min(k, (mask >> KM_WIN_RPM) & 1,
                               (mask >> KM_WIN_TPM) & 1 ? a->tokens : 0);
        for (int p = 0; p < 2; p++) {
            int rw = p ? KM_WIN_RPD : KM_WIN_RPH, tw = p ? KM_WIN_TPD : KM_WIN_TPH;
            if ((mask >> rw) & 1)
                ck_pr_add_64(&fk->credit_hd[p].req, 1); /* a sum: exact (F3) */
            if (((mask >> tw) & 1) && a->tokens)
                ck_pr_add_64(&fk->credit_hd[p].tok, a->tokens);
        }
    } else if (how == KM__FL_FALLBACK) {
        uint32_t m = mask;
        uint64_t cost;
        for (int w; (w = km__fleet_next(&m, a->tokens, &cost)) >= 0;) {
            /* Not admitted after all: taken back only while the count
             * still holds it.  A collect may have taken and zeroed it since
             * the admission: the unit then stays reported as spent
             * (conservative: the share's charge stays too), never a count
             * wrapped below zero, which the ledger would refuse whole. */
            uint64_t cur = ck_pr_load_64(&fk->fb_used[w]);
            while (cur >= cost && !ck_pr_cas_64_value(&fk->fb_used[w], cur, cur - cost, &cur))
                ;
        }
    }
}

/* A key's health changed here (src/release.c: a 429, auth or quota
 * failure; an operator's enable or disable): the agent tells the fleet.
 * The kind first, then the count the agent compares (release order, so a
 * count it sees has its kind). */
void km__fleet_health_note(km_env *e, km__key *k, int kind)
{
    if (!k->fleet || !e->geom.off_fleet)
        return;
    km__fkey *fk = km__fkeys(e, (uint32_t)(k - km__keys(e)));
    ck_pr_store_32(&fk->hv_kind, (uint32_t)kind);
    ck_pr_fence_store_atomic(); /* the kind before the count */
    ck_pr_inc_32(&fk->hv_local);
}

/* ------------------------------------------------------------- creation */

void km__fleet_key_init(km_env *e, uint32_t ki, const km__key_cfg *kc)
{
    km__key *k = &km__keys(e)[ki];
    km__fhdr *fh = km__fleet(e);
    int on = fh && (kc->fleet > 0 || (kc->fleet == 0 && fh->all));

    k->fleet = (uint8_t)on;
    k->fleet_mask = on ? k->win_mask | KM__FLEET_MODELS : 0;
    k->low_lg[0] = k->low_lg[1] = 0;
    ck_pr_store_64(&k->credit.req, 0);
    ck_pr_store_64(&k->credit.tok, 0);
    ck_pr_store_64(&k->credit_deadline, 0);
    if (!fh)
        return;
    km__fkey *fk = km__fkeys(e, ki);
    memset(fk, 0, sizeof(*fk)); /* a row no reader reaches (see km__key_write) */
    for (uint32_t m = 0; m < e->geom.cap_models; m++) /* and its model blocks */
        memset(km__fkeys(e, km__fmodel_ix(e, ki, m)), 0, sizeof(km__fkey));
    fk->flags = on && kc->fleet_strict ? KM__FK_STRICT : 0;
    memcpy(fk->fleet_id, kc->fleet_id, sizeof(fk->fleet_id));
    fk->fleet_id[KM_ID_MAX] = '\0';
}

void km__fleet_init(km_env *e, const km_config *cfg)
{
    km__fhdr *fh = km__fleet(e);
    if (!fh)
        return;
    fh->all = (uint32_t)cfg->fleet_all;
    fh->policy = (uint32_t)cfg->fleet_policy;
}

/* -------------------------------------------------------------- the agent */

/* The caller holds the agent's role. */
static int holds_role(km_env *e)
{
    km__fhdr *fh = km__fleet(e);
    return fh && e->seg.tag && ck_pr_load_64(&fh->agent) == e->seg.tag;
}

/* A key row in use and under the fleet: its mask, else 0. */
static uint32_t fleet_mask_of(km_env *e, uint32_t ki)
{
    km__key *k = &km__keys(e)[ki];
    if (ck_pr_load_32(&k->state) >= KM__ST_FREE)
        return 0;
    return ck_pr_load_32(&k->fleet_mask) & ((1u << KM_WIN_COUNT) - 1);
}

KM_EXTERN int km_fleet_claim(km_env *e, int policy)
{
    if (!e || (policy != KM_FLEET_STOP && policy != KM_FLEET_LOCAL))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    if (!fh)
        return KM_EINVAL;
    if (!e->seg.tag)
        return KM_EREADONLY;
    uint64_t cur = ck_pr_load_64(&fh->agent);
    for (;;) {
        if (cur == e->seg.tag)
            break;
        if (cur && km__proc_tag_live(&e->seg, cur))
            return KM_EBUSY;
        /* None, or a dead agent's: taken over by CAS (two claimants: one
         * wins, the other sees a live holder). */
        if (ck_pr_cas_64_value(&fh->agent, cur, e->seg.tag, &cur))
            break;
    }
    ck_pr_store_32(&fh->policy, (uint32_t)policy);
    /* A predecessor killed while it wrote a fallback share left its count
     * odd: end that share (its window lapses) and even the count.  Every
     * block: a key's and its models' (apply_model, release_models write
     * theirs the same way). */
    for (uint64_t fi = 0; fi < km__fleet_blocks(e->geom.cap_keys, e->geom.cap_models); fi++) {
        km__fkey *fk = km__fkeys(e, (uint32_t)fi);
        uint32_t s = ck_pr_load_32(&fk->fb_seq);
        if (s & 1) {
            ck_pr_store_64(&fk->fb_until, 0);
            ck_pr_fence_store(); /* the ended window before the even count */
            ck_pr_store_32(&fk->fb_seq, s + 1);
        }
    }
    return KM_OK;
}

/* Publish key ki's fallback share (one window, or all with w = -1) under
 * its seqlock: count odd, fields, count even, each step ordered by a store
 * fence (the readers' fences in fb_read pair with these). */
static void fb_write(km__fkey *fk, int w, uint64_t from, uint64_t until, uint64_t T, uint64_t tau)
{
    uint32_t s = ck_pr_load_32(&fk->fb_seq);
    ck_pr_store_32(&fk->fb_seq, s + 1);
    ck_pr_fence_store(); /* odd before the fields */
    ck_pr_store_64(&fk->fb_from, from);
    ck_pr_store_64(&fk->fb_until, until);
    for (int i = 0; i < KM_WIN_COUNT; i++)
        if (w < 0 || i == w) {
            ck_pr_store_64(&fk->fb_T[i], T);
            ck_pr_store_64(&fk->fb_tau[i], tau);
        }
    ck_pr_fence_store(); /* the fields before even */
    ck_pr_store_32(&fk->fb_seq, s + 2);
}

/* Void key ki's credit of mask: each word exchanged to 0 (locked), what it
 * held moved from a_last to a_ret (see the top of this file). */
static void credit_void(km_env *e, uint32_t ki, km__key *k, uint32_t mask)
{
    km__fkey *fk = km__fkeys(e, ki);
    while (mask) {
        int w = __builtin_ctz(mask);
        mask &= mask - 1;
        uint64_t v = km__min64(ck_pr_fas_64(credit_word(e, ki, k, w), 0), fk->a_last[w]);
        fk->a_last[w] -= v;
        fk->a_ret[w] += v;
    }
    fk->gen++;
}

static void release_models(km_env *e, uint32_t ki);

KM_EXTERN int km_fleet_release(km_env *e, int void_credit)
{
    if (!e || !holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    if (void_credit) {
        /* An epoch section, as collect and apply: a row removed meanwhile
         * is not reused for another key while its block is written. */
        km__rdr *r = km__rd_enter(&e->seg, km__now());
        for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
            uint32_t mask = fleet_mask_of(e, ki);
            release_models(e, ki);
            if (!mask)
                continue;
            km__key *k = &km__keys(e)[ki];
            /* The deadline first: acquirers stop taking (or go to the
             * policy) before the words empty; one preempted after its load
             * may still take a unit, which the next collect reports spent
             * (F2). */
            ck_pr_store_64(&k->credit_deadline, 0);
            ck_pr_fence_store_atomic(); /* the deadline before the exchanges */
            credit_void(e, ki, k, mask);
            fb_write(km__fkeys(e, ki), -1, 0, 0, 0, 0);
            km__fkeys(e, ki)->fb_ppm = 0;
        }
        km__rd_exit(r);
        ck_pr_store_32(&fh->store_state, KM_FLEET_STORE_NONE);
    }
    /* The role last: nothing above is done by a successor meanwhile. */
    ck_pr_fence_store_atomic();
    return ck_pr_cas_64(&fh->agent, e->seg.tag, 0) ? KM_OK : KM_EINVAL;
}

/* Sum over key ki's lease slots of tokens_used - tokens_est (plain loads of
 * words each slot's owner adds to: each is atomic, the sum a snapshot that
 * the next collect completes). */
static int64_t slot_adj(km_env *e, uint32_t ki)
{
    km__lease *ls = km__leases(e, ki);
    uint64_t used = 0, est = 0;
    for (uint32_t s = 0; s < e->geom.cap_inflight; s++) {
        est += ck_pr_load_64(&ls[s].tokens_est);
        used += ck_pr_load_64(&ls[s].tokens_used);
    }
    return (int64_t)(used - est);
}

static void copy_id(char *dst, const char *src)
{
    memcpy(dst, src, KM_ID_MAX + 1);
    dst[KM_ID_MAX] = '\0'; /* the segment's copy may be corrupted */
}

static int collect_in(km_env *e, uint64_t now, km_fleet_slot *out, size_t cap, size_t *n);
static int report_collect(km_env *e, uint64_t now, km_fleet_slot *out, size_t cap, size_t *n);
static void pending_add(km__fkey *fk, const km_fleet_slot *o);

/* A fleet slot's description of key ki's window w (its counts zero). */
static void slot_meta(km_env *e, uint32_t ki, int w, km_fleet_slot *o)
{
    km__key *k = &km__keys(e)[ki];
    km__fkey *fk = km__fkeys(e, ki);
    const km__pool *pool = &km__pools(e)[k->pool < e->geom.n_pools ? k->pool : 0];
    memset(o, 0, sizeof(*o));
    o->key = ki;
    o->key_gen = ck_pr_load_32(&k->gen);
    o->window = w;
    copy_id(o->pool, pool->name);
    copy_id(o->key_id, k->id);
    copy_id(o->fleet_id, fk->fleet_id);
    o->limit = k->limit[w];
    o->burst = k->burst[w];
    o->period_ms = km__window_period_ns(w) / KM__NS_PER_MS;
    o->mode = k->mode[w];
    o->strict = (fk->flags & KM__FK_STRICT) != 0;
}
static size_t models_slots(km_env *e, uint32_t ki);
static void models_void_lapsed(km_env *e, uint32_t ki, uint64_t now);
static size_t model_pending_out(km_env *e, uint32_t ki, uint32_t m, km_fleet_slot *out);
static void pending_get(const km__fkey *fk, int w, km_fleet_slot *o);
static size_t collect_models(km_env *e, uint32_t ki, uint64_t now, km_fleet_slot *out, size_t cap);

KM_EXTERN int km_fleet_collect(km_env *e, uint64_t now, km_fleet_slot *out, size_t cap,
                               size_t *n)
{
    if (!e || !n || (cap && !out))
        return KM_EINVAL;
    *n = 0;
    if (!holds_role(e))
        return KM_EINVAL;
    /* An epoch section (the role holder has a process slot): a key row
     * removed meanwhile is not reused (rewritten by km__fleet_key_init for
     * another key) until the section ends, so the gen read with a row's
     * counters is that row's. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    int rc = collect_in(e, now, out, cap, n);
    km__rd_exit(r);
    return rc;
}

/* Window w of fleet block fi (a key's, k its row, or a model's) since the
 * last collect (rule 4, the top of this file): spent, left, returned, and
 * the slow paths' counts, into o. */
static void block_counts(km_env *e, uint32_t fi, km__key *k, int w, km_fleet_slot *o)
{
    km__fkey *fk = km__fkeys(e, fi);
    /* One load of the word: every acquirer's decrement is before or after
     * it (see the top of this file). */
    uint64_t cur = km__min64(ck_pr_load_64(credit_word(e, fi, k, w)), fk->a_last[w]);
    o->spent = fk->a_last[w] - cur;
    o->left = cur;
    o->returned = fk->a_ret[w];
    fk->a_last[w] = cur;
    fk->a_ret[w] = 0;
    /* Counters of the slow paths, read and reset in one locked exchange
     * each (a concurrent add lands before or after). */
    o->fb_spent = ck_pr_fas_64(&fk->fb_used[w], 0);
    o->refused = ck_pr_fas_64(&fk->refused[w], 0);
    o->want = ck_pr_fas_64(&fk->want[w], 0);
}

static int collect_in(km_env *e, uint64_t now, km_fleet_slot *out, size_t cap, size_t *n)
{
    if (km__fleet(e)->rp_seq) /* a report stamped: it again, nothing reset */
        return report_collect(e, now, out, cap, n);
    size_t need = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++)
        need += (size_t)__builtin_popcount(fleet_mask_of(e, ki)) + models_slots(e, ki);
    if (need > cap) {
        *n = need;
        return KM_EINVAL;
    }
    size_t j = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys && j < cap; ki++) {
        uint32_t mask = fleet_mask_of(e, ki);
        j += collect_models(e, ki, now, out + j, cap - j);
        if (!mask)
            continue;
        km__key *k = &km__keys(e)[ki];
        km__fkey *fk = km__fkeys(e, ki);
        uint64_t dl = ck_pr_load_64(&k->credit_deadline);
        if (dl && now >= dl) /* lapsed: void it, counted as returned */
            credit_void(e, ki, k, mask);
        int64_t adj = 0;
        if (mask & KM__TOKEN_WINS) {
            int64_t sum = slot_adj(e, ki);
            adj = sum - fk->a_adj;
            fk->a_adj = sum;
        }
        for (uint32_t m = mask; m && j < cap; m &= m - 1) {
            int w = __builtin_ctz(m);
            km_fleet_slot *o = &out[j++];
            slot_meta(e, ki, w, o);
            block_counts(e, ki, k, w, o);
            o->adj = km__window_is_requests(w) ? 0 : adj;
            pending_add(fk, o);
        }
    }
    *n = j;
    return KM_OK;
}

/* ----------------------------------------------- the report in the segment
 * (the top of this file; km__fhdr line 2, km__fkey lines 11-15) */

/* What collect took from one (key, window), added to the key's pending
 * counts (a window of another key generation starts them anew: the row was
 * reused, see the top of this file). */
static void pending_add(km__fkey *fk, const km_fleet_slot *o)
{
    int w = o->window;
    if (fk->p_gen != o->key_gen) {
        memset(fk->p_spent, 0, offsetof(km__fkey, p_mask) - offsetof(km__fkey, p_spent));
        fk->p_mask = 0;
        fk->p_gen = o->key_gen;
    }
    if (!(fk->p_mask & (1u << w))) {
        fk->p_spent[w] = fk->p_fb_spent[w] = fk->p_returned[w] = fk->p_want[w] = 0;
        fk->p_adj[w] = 0;
    }
    fk->p_spent[w] += o->spent;
    fk->p_fb_spent[w] += o->fb_spent;
    fk->p_returned[w] += o->returned;
    fk->p_adj[w] += o->adj;
    fk->p_left[w] = o->left;
    fk->p_want[w] = km__max64(fk->p_want[w], o->want);
    fk->p_mask |= 1u << w;
}

/* Block fk's pending counts of window w into slot o. */
static void pending_get(const km__fkey *fk, int w, km_fleet_slot *o)
{
    o->key_gen = fk->p_gen;
    o->spent = fk->p_spent[w];
    o->fb_spent = fk->p_fb_spent[w];
    o->returned = fk->p_returned[w];
    o->left = fk->p_left[w];
    o->adj = fk->p_adj[w];
    o->want = fk->p_want[w];
}

/* The pending counts of every key (and of its models' blocks) as slots (as a collect gives them: the
 * key's description from its row while the row still holds that key
 * generation, else only its identity and counts); KM_EINVAL with *n the
 * count if cap is short. */
static int pending_out(km_env *e, km_fleet_slot *out, size_t cap, size_t *n)
{
    size_t need = 0, j = 0;
    for (uint64_t fi = 0; fi < km__fleet_blocks(e->geom.cap_keys, e->geom.cap_models); fi++)
        need += (size_t)__builtin_popcount(km__fkeys(e, (uint32_t)fi)->p_mask);
    if (need > cap) {
        *n = need;
        return KM_EINVAL;
    }
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        km__fkey *fk = km__fkeys(e, ki);
        int same = fleet_mask_of(e, ki) && ck_pr_load_32(&km__keys(e)[ki].gen) == fk->p_gen;
        for (uint32_t m = fk->p_mask; m; m &= m - 1) {
            int w = __builtin_ctz(m);
            km_fleet_slot *o = &out[j++];
            if (same) {
                slot_meta(e, ki, w, o);
            } else {
                memset(o, 0, sizeof(*o));
                o->key = ki;
                o->window = w;
            }
            pending_get(fk, w, o);
        }
        for (uint32_t m = 0; m < e->geom.cap_models; m++)
            j += model_pending_out(e, ki, m, out + j);
    }
    *n = j;
    return KM_OK;
}

/* km_fleet_collect while a report is stamped: lapsed credit voided (into
 * a_ret: the next report's), the stamped report returned again. */
static int report_collect(km_env *e, uint64_t now, km_fleet_slot *out, size_t cap, size_t *n)
{
    for (uint32_t ki = 0; ki < e->geom.cap_keys; ki++) {
        uint32_t mask = fleet_mask_of(e, ki);
        km__key *k = &km__keys(e)[ki];
        uint64_t dl = ck_pr_load_64(&k->credit_deadline);
        if (mask && dl && now >= dl)
            credit_void(e, ki, k, mask);
        models_void_lapsed(e, ki, now);
    }
    return pending_out(e, out, cap, n);
}

static void report_get(const km__fhdr *fh, km_fleet_report *rep)
{
    rep->seq = fh->rp_seq;
    rep->ack = fh->rp_ack;
    rep->epoch = fh->rp_epoch;
    rep->t_send_ns = fh->rp_t_send;
    rep->flags = fh->rp_flags;
}

KM_EXTERN int km_fleet_report_take(km_env *e, km_fleet_report *rep, km_fleet_slot *out,
                                   size_t cap, size_t *n)
{
    if (!e || !rep || !n || (cap && !out))
        return KM_EINVAL;
    *n = 0;
    if (!holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    /* An epoch section, as km_fleet_collect: a row's generation and its
     * description are read together. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    int stamped = fh->rp_seq != 0, rc = KM_EINVAL;
    if (!stamped && rep->seq == 0)
        goto out; /* seq 0 is no report's */
    rc = pending_out(e, out, cap, n);
    if (rc != KM_OK)
        goto out;
    if (stamped) {
        report_get(fh, rep); /* the one in flight, as it was stamped */
        rc = 1;
    } else {
        fh->rp_ack = rep->ack;
        fh->rp_epoch = rep->epoch;
        fh->rp_t_send = rep->t_send_ns;
        fh->rp_flags = rep->flags;
        /* The seq last: a holder killed before it leaves no report
         * stamped (the counts stay pending).  Only a successor reads
         * these, after its claim's CAS (a full barrier); the fence orders
         * the header before the seq for it, whatever the architecture
         * drains of a dead writer's stores. */
        ck_pr_fence_store();
        ck_pr_store_64(&fh->rp_seq, rep->seq);
    }
out:
    km__rd_exit(r);
    return rc;
}

KM_EXTERN int km_fleet_report_ack(km_env *e, uint64_t seq)
{
    if (!e || !holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    if (!seq || fh->rp_seq != seq)
        return KM_EINVAL;
    /* The counts first, the seq last: a holder killed half way leaves the
     * report stamped, and its successor resends that seq, which the ledger
     * answers from its stored reply whatever the counts now say.  In an
     * epoch section, as collect: a removed key's row is not rewritten by
     * km__fleet_key_init meanwhile. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    for (uint64_t fi = 0; fi < km__fleet_blocks(e->geom.cap_keys, e->geom.cap_models); fi++) {
        km__fkey *fk = km__fkeys(e, (uint32_t)fi);
        if (fk->p_mask) {
            memset(fk->p_spent, 0, offsetof(km__fkey, p_mask) - offsetof(km__fkey, p_spent));
            fk->p_mask = 0;
        }
    }
    km__rd_exit(r);
    ck_pr_fence_store(); /* the cleared counts before the seq (see km_fleet_report_take) */
    ck_pr_store_64(&fh->rp_seq, 0);
    return KM_OK;
}

KM_EXTERN int km_fleet_report_undo(km_env *e)
{
    if (!e || !holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    if (!fh->rp_seq)
        return KM_EINVAL;
    ck_pr_store_64(&fh->rp_seq, 0); /* the counts stay pending */
    return KM_OK;
}

/* floor(log2(x)) for x >= 1, as a low-water mark's exponent. */
static uint8_t lg_floor(uint64_t x)
{
    return (uint8_t)(63 - __builtin_clzll(x ? x : 1));
}

static void apply_in(km_env *e, const km_fleet_grant *g, size_t n);
static void apply_model(km_env *e, const km_fleet_grant *gr, uint64_t now);

KM_EXTERN int km_fleet_apply(km_env *e, const km_fleet_grant *g, size_t n)
{
    if (!e || (n && !g))
        return KM_EINVAL;
    if (!holds_role(e))
        return KM_EINVAL;
    /* An epoch section, as km_fleet_collect: between the gen check and the
     * top-up the row cannot be reused by a key added meanwhile. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    apply_in(e, g, n);
    km__rd_exit(r);
    return KM_OK;
}

static void apply_in(km_env *e, const km_fleet_grant *g, size_t n)
{
    uint64_t now = km__now();
    for (size_t i = 0; i < n; i++) {
        const km_fleet_grant *gr = &g[i];
        if (gr->key >= e->geom.cap_keys || gr->window < 0 || gr->window >= KM_WIN_COUNT)
            continue;
        if (gr->model != 0) { /* a model's window (per_model pools) */
            apply_model(e, gr, now);
            continue;
        }
        uint32_t ki = gr->key, mask = fleet_mask_of(e, ki);
        km__key *k = &km__keys(e)[ki];
        km__fkey *fk = km__fkeys(e, ki);
        int w = gr->window;
        /* The key changed since the collect this answers: its credit
         * is not this grant's (the next collect reports the new key). */
        if (!(mask & (1u << w)) || ck_pr_load_32(&k->gen) != gr->key_gen)
            continue;
        if (gr->grant) {
            ck_pr_add_64(credit_word(e, ki, k, w), gr->grant); /* a sum: locked add (F1) */
            fk->a_last[w] += gr->grant;
        }
        /* Low water at a quarter of what the host now holds. */
        if (w == KM_WIN_RPM || w == KM_WIN_TPM)
            ck_pr_store_8(&k->low_lg[w == KM_WIN_TPM], lg_floor(fk->a_last[w] / 4));
        /* The deadline after the top-up (release: an acquirer that sees
         * the new deadline sees the credit too). */
        ck_pr_fence_atomic_store();
        ck_pr_store_64(&k->credit_deadline, gr->deadline_ns);
        /* The fallback share: rate fb_ppm of the window's, burst fb_burst. */
        uint64_t T = 0, tau = 0;
        if (gr->fb_ppm && k->emission_ns[w]) {
            T = km__mul_sat(k->emission_ns[w], 1000000) / gr->fb_ppm;
            tau = km__mul_sat(gr->fb_burst, T);
        }
        fb_write(fk, w, gr->fb_from_ns, gr->fb_until_ns, T, tau);
        fk->fb_ppm = gr->fb_ppm;
        /* Credit, or a fallback share open now (a reply after an outage
         * grants no credit but opens the fallback at once), may admit
         * sleepers: wake them rather than leave them to their own retry
         * time.  The wake's bump of wake_seq is ordered after the stores
         * above by km__wake's own fence. */
        if ((gr->grant || (gr->fb_ppm && gr->fb_from_ns <= now && now < gr->fb_until_ns)) &&
            k->pool < e->geom.n_pools)
            km__wake_pool(e, k->pool);
    }
}

KM_EXTERN int km_fleet_status_set(km_env *e, const km_fleet_status *st)
{
    if (!e || !st || !holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    /* The agent's own words (plain; inspect tolerates tearing).
     * next_sync_ns is read by refused acquirers as their retry time. */
    ck_pr_store_64(&fh->epoch, st->epoch);
    ck_pr_store_64(&fh->seq, st->seq);
    ck_pr_store_64(&fh->ack, st->ack);
    ck_pr_store_64(&fh->last_sync_ns, st->last_sync_ns);
    ck_pr_store_64(&fh->next_sync_ns, st->next_sync_ns);
    ck_pr_store_32(&fh->store_state, (uint32_t)st->store_state);
    ck_pr_store_32(&fh->n_hosts, st->n_hosts);
    ck_pr_store_32(&fh->learn_ms, st->learn_ms);
    ck_pr_store_32(&fh->kick, 0); /* a sync answered the kicks so far */
    return KM_OK;
}

KM_EXTERN int km_fleet_status_get(km_env *e, km_fleet_status *st)
{
    if (!e || !st)
        return KM_EINVAL;
    memset(st, 0, sizeof(*st));
    km__fhdr *fh = km__fleet(e);
    if (!fh)
        return KM_OK; /* store_state KM_FLEET_STORE_NONE */
    st->epoch = ck_pr_load_64(&fh->epoch);
    st->seq = ck_pr_load_64(&fh->seq);
    st->ack = ck_pr_load_64(&fh->ack);
    st->last_sync_ns = ck_pr_load_64(&fh->last_sync_ns);
    st->next_sync_ns = ck_pr_load_64(&fh->next_sync_ns);
    st->store_state = (int)ck_pr_load_32(&fh->store_state);
    st->n_hosts = ck_pr_load_32(&fh->n_hosts);
    st->learn_ms = ck_pr_load_32(&fh->learn_ms);
    return KM_OK;
}

KM_EXTERN int km_fleet_kicked(km_env *e)
{
    if (!e || !holds_role(e))
        return KM_EINVAL;
    km__fhdr *fh = km__fleet(e);
    if (!fh || !ck_pr_load_32(&fh->kick))
        return 0; /* the common poll: a load, no write to the kick line */
    /* Take the kick: an acquirer's store of 1 after this exchange is a
     * new kick, seen at the next poll (a lost kick costs one early sync,
     * km__fhdr.kick). */
    return ck_pr_fas_32(&fh->kick, 0) != 0;
}

KM_EXTERN int km_fleet_health_changes(km_env *e, km_fleet_health *out, size_t cap, size_t *n)
{
    if (!e || !n || (cap && !out))
        return KM_EINVAL;
    *n = 0;
    if (!holds_role(e))
        return KM_EINVAL;
    uint64_t now = km__now();
    size_t j = 0;
    for (uint32_t ki = 0; ki < e->geom.cap_keys && j < cap; ki++) {
        km__key *k = &km__keys(e)[ki];
        if (!k->fleet || ck_pr_load_32(&k->state) >= KM__ST_FREE)
            continue;
        km__fkey *fk = km__fkeys(e, ki);
        uint32_t hv = ck_pr_load_32(&fk->hv_local);
        if (hv == (uint32_t)fk->a_hv)
            continue;
        ck_pr_fence_load(); /* the count before its kind (km__fleet_health_note) */
        km_fleet_health *h = &out[j++];
        h->key = ki;
        h->kind = (int)ck_pr_load_32(&fk->hv_kind);
        uint64_t cu = ck_pr_load_64(&k->cooldown_until);
        h->arg_ms = h->kind == KM_FLEET_EV_RATE_LIMITED && cu > now
                        ? (cu - now + KM__NS_PER_MS - 1) / KM__NS_PER_MS : 0;
        fk->a_hv = hv;
    }
    *n = j;
    return KM_OK;
}

/* cooldown_until := max(cooldown_until, until), as a 429 does. */
static void cool_until(km__key *k, uint64_t until)
{
    uint64_t cur = ck_pr_load_64(&k->cooldown_until);
    while (cur < until && !ck_pr_cas_64_value(&k->cooldown_until, cur, until, &cur))
        ;
}

KM_EXTERN int km_fleet_health_set(km_env *e, uint32_t key, int state, uint64_t cool_ms)
{
    if (!e || !holds_role(e))
        return KM_EINVAL;
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
    km__key *k = &km__keys(e)[key];
    switch (state) {
    case KM_KEY_ACTIVE:
    case KM_KEY_DISABLED:
        /* The operator's path (admin lock, intent), not noted as a local
         * change: this is the fleet's verdict coming back. */
        return km__key_set_state(e, (int)key, state, 0);
    case KM_KEY_COOLING:
        cool_until(k, km__now() + km__mul_sat(km__min64(cool_ms, KM__VIEW_CAP_S * KM__MS_PER_S),
                                              KM__NS_PER_MS));
        return KM_OK;
    case KM_KEY_INVALID:
    case KM_KEY_EXHAUSTED:
        km__state_to(k, KM__LIVE_STATES, (uint32_t)state);
        return KM_OK;
    default:
        return KM_EINVAL;
    }
}

KM_EXTERN int km_fleet_key_info_get(km_env *e, uint32_t key, km_fleet_key_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    memset(out, 0, sizeof(*out));
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
    km__key *k = &km__keys(e)[key];
    if (k->fleet && k->budget_microusd) { /* a fleet key's budget, limits or not */
        out->spend_fleet = 1;
        out->spend_others_microusd = km__fleet_spend_others(e, k);
    }
    uint32_t mask = fleet_mask_of(e, key);
    if (!mask || !e->geom.off_fleet)
        return KM_OK;
    km__fkey *fk = km__fkeys(e, key);
    out->mask = mask;
    for (uint32_t m = mask; m; m &= m - 1) {
        int w = __builtin_ctz(m);
        out->credit[w] = ck_pr_load_64(credit_word(e, key, k, w));
    }
    out->deadline_ns = ck_pr_load_64(&k->credit_deadline);
    out->fb_ppm = ck_pr_load_32(&fk->fb_ppm);
    out->fb_until_ns = ck_pr_load_64(&fk->fb_until);
    return KM_OK;
}

/* ------------------------------------------------- fleet-wide spend budgets
 *
 * Post-paid (tools/sync/DESIGN.md section 8): a request's cost is known
 * only at its release, so the fleet's spend is summed after the fact.
 * Every sync the agent collects what this host spent per budget since its
 * last report (km_fleet_spend_collect: the spend record against a_sp_rep;
 * a budget is a fleet key's, or a pool's when the configuration's top-level
 * fleet is "all": the pool row holds the same four words, budget_ref),
 * the ledger adds it to a counter per (budget, period) and answers with
 * the fleet's total and this host's part of it; the agent stores the
 * difference, the other hosts' spend, in sp_others (km_fleet_spend_apply).
 * An acquire then compares the local spend (exact, current) plus
 * sp_others (at most one sync period old) with the budget.  The fleet
 * overshoots by at most what the other hosts spend between two of this
 * host's syncs, plus the requests in flight when the budget is reached
 * (README, "Fleet-wide limits").
 *
 * Periods.  A figure applies to the local spend record's period it was
 * computed for: sp_end is that record's end_ns.  After the record rolls
 * (src/budget.c) its end_ns differs, and sp_others counts as 0 until the
 * agent applies the new period's figure: a new period starts with what is
 * known of it, nothing.  The agent names a period by its start in UTC
 * seconds, computed from the budget's zone, so hosts agree.
 */

/* What the other hosts spent in the period of the local record `rec`, from
 * a budget's (sp_others, sp_end) pair, a key's (km__fkey line 10) or a
 * pool's (km__pool line 3).  sp_end before sp_others (the agent's stores
 * are ordered the other way round by its fences, km_fleet_spend_apply): a
 * figure read with its period's end belongs to that period or to the next
 * one, which is stored only once the local record has rolled too. */
static uint64_t spend_others_in(const uint64_t *others, const uint64_t *sp_end,
                                const km__spend *rec)
{
    uint64_t end = ck_pr_load_64((uint64_t *)sp_end);
    if (!end || end != ck_pr_load_64((uint64_t *)&rec->end_ns))
        return 0;
    ck_pr_fence_load(); /* sp_end before sp_others */
    return ck_pr_load_64((uint64_t *)others);
}

/* As the local check: the period rolled (clock read) only when the spend
 * seen is over; after a roll the old period's figure no longer applies
 * (its sp_end is the old end), so others is read again. */
static int over_budget_in(const km_env *e, const uint64_t *others, const uint64_t *sp_end,
                          km__spend *rec, uint64_t b, uint32_t period, int32_t tz)
{
    if (ck_pr_load_64(&rec->spent) + spend_others_in(others, sp_end, rec) < b)
        return 0;
    uint64_t s = km__spend_now(rec, period, tz, e->tzt);
    return s + spend_others_in(others, sp_end, rec) >= b;
}

static uint64_t left_of(uint64_t b, uint64_t o) { return o < b ? b - o : 1; }

uint64_t km__fleet_spend_others(const km_env *e, const km__key *k)
{
    if (!e->geom.off_fleet)
        return 0;
    const km__fkey *fk = km__fkeys(e, (uint32_t)(k - km__keys(e)));
    return spend_others_in(&fk->sp_others, &fk->sp_end, &k->spend);
}

int km__fleet_over_budget(const km_env *e, km__key *k)
{
    if (!e->geom.off_fleet)
        return ck_pr_load_64(&k->spend.spent) >= k->budget_microusd &&
               km__spend_now(&k->spend, k->budget_period, k->budget_tz_min, e->tzt) >=
                   k->budget_microusd;
    km__fkey *fk = km__fkeys(e, (uint32_t)(k - km__keys(e)));
    return over_budget_in(e, &fk->sp_others, &fk->sp_end, &k->spend, k->budget_microusd,
                          k->budget_period, k->budget_tz_min);
}

uint64_t km__fleet_budget_left(const km_env *e, const km__key *k)
{
    return left_of(k->budget_microusd, km__fleet_spend_others(e, k));
}

/* A pool's (pool->fleet set only in a segment with a fleet region;
 * km_pool_set may store the budget's words meanwhile: relaxed loads). */
int km__fleet_pool_over(const km_env *e, km__pool *pool)
{
    return over_budget_in(e, &pool->sp_others, &pool->sp_end, &pool->spend,
                          ck_pr_load_64(&pool->budget_microusd), ck_pr_load_32(&pool->budget_period),
                          (int32_t)ck_pr_load_32((uint32_t *)&pool->budget_tz_min));
}

uint64_t km__fleet_pool_budget_left(const km__pool *pool)
{
    return left_of(ck_pr_load_64((uint64_t *)&pool->budget_microusd),
                   spend_others_in(&pool->sp_others, &pool->sp_end, &pool->spend));
}

/* One fleet budget, a key's or a pool's: its local spend record, its
 * words (others' spend and its period's end; the agent's reported base
 * and its period's end) and its settings, so that collect, apply and
 * reported serve both alike. */
typedef struct sp_ref {
    km__spend *rec;
    uint64_t *others, *sp_end, *rep, *rep_end;
    uint64_t *rst; /* what resets removed: (period end, micro-USD), a CAS pair */
    uint64_t budget;
    uint32_t hard, period, gen;
    int32_t tz;
    const char *pool, *key_id, *fleet_id;
} sp_ref;

/* The budget `id` names (a key index, or KM_FLEET_BUDGET_POOL | a pool
 * index) if it counts fleet-wide and is in use: 1 and *r filled, else 0.
 * A key: a fleet key with a budget; a pool: a live pool with a budget
 * and its fleet flag (its gen: the hash of its name, so a row reused by
 * another pool is told apart). */
static int budget_ref(km_env *e, uint32_t id, sp_ref *r)
{
    /* a pool's key id and fleet id: "", whole ids as copy_id reads them */
    static const char no_id[KM_ID_MAX + 1];
    if (id & KM_FLEET_BUDGET_POOL) {
        uint32_t p = id & ~KM_FLEET_BUDGET_POOL;
        if (p >= e->geom.cap_pools)
            return 0;
        km__pool *pool = &km__pools(e)[p];
        if (ck_pr_load_32(&pool->state) != KM__PST_LIVE || !ck_pr_load_32(&pool->fleet) ||
            !ck_pr_load_64(&pool->budget_microusd))
            return 0;
        *r = (sp_ref){&pool->spend, &pool->sp_others, &pool->sp_end, &pool->a_sp_rep,
                      &pool->a_sp_end, pool->sp_rst, ck_pr_load_64(&pool->budget_microusd),
                      ck_pr_load_32(&pool->budget_hard), ck_pr_load_32(&pool->budget_period),
                      ck_pr_load_32(&pool->gen),
                      (int32_t)ck_pr_load_32((uint32_t *)&pool->budget_tz_min), pool->name,
                      no_id, no_id};
        return 1;
    }
    if (id >= e->geom.cap_keys)
        return 0;
    km__key *k = &km__keys(e)[id];
    if (ck_pr_load_32(&k->state) >= KM__ST_FREE || !k->fleet || !k->budget_microusd)
        return 0;
    km__fkey *fk = km__fkeys(e, id);
    const km__pool *pool = &km__pools(e)[k->pool < e->geom.n_pools ? k->pool : 0];
    *r = (sp_ref){&k->spend, &fk->sp_others, &fk->sp_end, &fk->a_sp_rep, &fk->a_sp_end, fk->sp_rst,
                  k->budget_microusd, k->budget_hard, k->budget_period, ck_pr_load_32(&k->gen),
                  k->budget_tz_min, pool->name, k->id, fk->fleet_id};
    return 1;
}

static void spend_fill(km_env *e, uint32_t id, const sp_ref *r, km_fleet_budget *o)
{
    /* Roll the record if its period ended with nothing settled since, so
     * the report names the period the clock is in (the roll is any
     * process's to make, src/budget.c). */
    km__spend_due(r->rec, r->period, r->tz, e->tzt);
    /* What resets removed in this period counts as spent here (they reset
     * this host's figure, not what it owes the fleet's total).  The reset
     * pair before the record: a reset exchanges the record's spend, then
     * adds it to the pair, so a reset between these loads is missed by
     * both (eff low for one collect: nothing is reported then, and
     * km_fleet_spend_reported never lowers the base), never counted twice.
     * rst[0] before rst[1]: a figure read with its period's end is that
     * period's (the pair changes by one 16-byte CAS). */
    uint64_t rst[2];
    rst[0] = ck_pr_load_64(&r->rst[0]);
    ck_pr_fence_load(); /* the pair's end before its figure */
    rst[1] = ck_pr_load_64(&r->rst[1]);
    ck_pr_fence_load(); /* the reset pair before the record it was taken from */
    uint64_t end = ck_pr_load_64(&r->rec->end_ns);
    uint64_t cur = ck_pr_load_64(&r->rec->spent);
    uint64_t eff = cur + (rst[0] == end ? rst[1] : 0);
    uint64_t d;
    if (end == *r->rep_end)
        d = eff > *r->rep ? eff - *r->rep : 0;
    else
        /* A new period.  What the ended one spent after its last report
         * is not reported: no check can use it any more. */
        d = eff;
    /* The reported base moves when the ledger has answered the report
     * (km_fleet_spend_reported), not here: an agent killed with its
     * report unanswered leaves it to be collected again. */
    memset(o, 0, sizeof(*o));
    o->key = id;
    o->key_gen = r->gen;
    o->pool_budget = (id & KM_FLEET_BUDGET_POOL) != 0;
    o->pool_index = o->pool_budget ? id & ~KM_FLEET_BUDGET_POOL : 0;
    copy_id(o->pool, r->pool);
    copy_id(o->key_id, r->key_id);
    copy_id(o->fleet_id, r->fleet_id);
    o->budget_microusd = r->budget;
    o->hard = r->hard != 0;
    o->period = (int)r->period;
    o->period_end_ns = end;
    o->period_start_s = r->period == KM__PERIOD_NONE || end == UINT64_MAX || !end
                            ? 0
                            : km__period_start(r->period, r->tz, e->tzt, end - 1) / KM__NS_PER_S;
    o->spent = d;
    o->local = eff;
    o->others = spend_others_in(r->others, r->sp_end, r->rec);
}

static int spend_collect_in(km_env *e, km_fleet_budget *out, size_t cap, size_t *n)
{
    size_t need = 0;
    sp_ref r;
    uint32_t n_ids = e->geom.cap_keys + e->geom.cap_pools;
    /* keys first, then pools: id i < cap_keys a key, else a pool */
#define SP_ID(i) ((i) < e->geom.cap_keys ? (i) : KM_FLEET_BUDGET_POOL | ((i) - e->geom.cap_keys))
    for (uint32_t i = 0; i < n_ids; i++)
        need += (size_t)budget_ref(e, SP_ID(i), &r);
    if (need > cap) {
        *n = need;
        return KM_EINVAL;
    }
    size_t j = 0;
    for (uint32_t i = 0; i < n_ids && j < cap; i++)
        if (budget_ref(e, SP_ID(i), &r))
            spend_fill(e, SP_ID(i), &r, &out[j++]);
#undef SP_ID
    *n = j;
    return KM_OK;
}

KM_EXTERN int km_fleet_spend_collect(km_env *e, km_fleet_budget *out, size_t cap, size_t *n)
{
    if (!e || !n || (cap && !out))
        return KM_EINVAL;
    *n = 0;
    if (!holds_role(e))
        return KM_EINVAL;
    /* An epoch section, as km_fleet_collect: a row read with its gen. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    int rc = spend_collect_in(e, out, cap, n);
    km__rd_exit(r);
    return rc;
}

void km__fleet_spend_reset(km_env *e, uint32_t id, uint64_t end_ns, uint64_t removed)
{
    if (!e->geom.off_fleet)
        return;
    uint64_t *rst = id & KM_FLEET_BUDGET_POOL ? km__pools(e)[id & ~KM_FLEET_BUDGET_POOL].sp_rst
                                              : km__fkeys(e, id)->sp_rst;
    /* One 16-byte CAS: a reset of the same period adds, of another starts
     * the pair anew (two resets race: each adds exactly once). */
    uint64_t cur[2] = {ck_pr_load_64(&rst[0]), ck_pr_load_64(&rst[1])}, set[2];
    do {
        set[0] = end_ns;
        set[1] = (cur[0] == end_ns ? cur[1] : 0) + removed;
    } while (!ck_pr_cas_64_2_value(rst, cur, set, cur));
}

KM_EXTERN int km_fleet_spend_reported(km_env *e, uint32_t key, uint32_t key_gen,
                                      uint64_t period_end_ns, uint64_t local)
{
    if (!e || !period_end_ns)
        return KM_EINVAL;
    if (!holds_role(e))
        return KM_EINVAL;
    /* An epoch section, as collect: the row is this budget's while we write. */
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    int rc = KM_OK;
    sp_ref b;
    if (!budget_ref(e, key, &b) || b.gen != key_gen) {
        rc = KM_ENOKEY;
    } else {
        /* The agent's own words (single writer, plain): the base the next
         * collects count from; within a period it never goes down (a
         * collect between a reset's exchange and its add saw too little). */
        if (*b.rep_end != period_end_ns || local > *b.rep)
            *b.rep = local;
        *b.rep_end = period_end_ns;
    }
    km__rd_exit(r);
    return rc;
}

KM_EXTERN int km_fleet_spend_apply(km_env *e, uint32_t key, uint32_t key_gen,
                                   uint64_t period_end_ns, uint64_t others)
{
    if (!e || !period_end_ns)
        return KM_EINVAL;
    if (!holds_role(e))
        return KM_EINVAL;
    km__rdr *r = km__rd_enter(&e->seg, km__now());
    int rc = KM_OK;
    sp_ref b;
    if (!budget_ref(e, key, &b) || b.gen != key_gen) {
        rc = KM_ENOKEY; /* removed, or another key or pool in the row since */
    } else if (ck_pr_load_64(b.sp_end) == period_end_ns) {
        /* The same period: the figure only grows (a smaller one is a
         * store that lost its state, and the last seen is the floor). */
        if (others > ck_pr_load_64(b.others))
            ck_pr_store_64(b.others, others);
    } else {
        /* Another period: no reader may pair the new figure with the old
         * end (spend_others_in loads sp_end first). */
        ck_pr_store_64(b.sp_end, 0);
        ck_pr_fence_store(); /* end cleared before the new figure */
        ck_pr_store_64(b.others, others);
        ck_pr_fence_store(); /* the figure before its end */
        ck_pr_store_64(b.sp_end, period_end_ns);
    }
    km__rd_exit(r);
    return rc;
}

/* -------------------------------------------------------- model windows
 *
 * A fleet key of a per_model pool has its model windows under the fleet
 * too (src/fleet.h, "model windows"): each (key, model) has a fleet block
 * of its own (src/layout.h, "Model blocks") with the same accounting as a
 * key's (the top of this file), reported as slots with model m + 1 and
 * answered by grants with that model.  The agent names each in the ledger
 * by the key's fleet id and the model's name.  Not kept per model: `adj`
 * (actual minus estimated tokens is summed per key, in its lease slots),
 * so a model's token windows commit the estimates, and health (the key's). */

/* The limits model m of key ki is under: the key's own limits of it
 * (km__key.own_models), else the pool's, as the acquire resolves them
 * (km__model_lset).  Both rows change only behind the key's `updating`
 * flag or under the admin lock: the agent reads them plainly, as it reads
 * a key's limits; a change between two reads is the next collect's. */
typedef struct mlim {
    uint32_t mask;
    const uint64_t *T, *limit, *burst;
    const uint8_t *mode;
} mlim;

static mlim model_lim(km_env *e, uint32_t ki, uint32_t m)
{
    km__key *k = &km__keys(e)[ki];
    if ((ck_pr_load_64(&k->own_models) >> m) & 1) {
        const km__mwin *mw = &km__mwins(e, ki)[m];
        return (mlim){mw->win_mask & KM__FLEET_WINS, mw->emission_ns, mw->limit, mw->burst, mw->mode};
    }
    const km__model *md = &km__models(e, k->pool)[m];
    return (mlim){md->win_mask & KM__FLEET_WINS, md->emission_ns, md->limit, md->burst, md->mode};
}

/* How many models of key ki have their windows under the fleet: those of
 * its pool if it is a fleet key in use of a per_model pool, else 0. */
static uint32_t fleet_models_of(km_env *e, uint32_t ki)
{
    km__key *k = &km__keys(e)[ki];
    if (ck_pr_load_32(&k->state) >= KM__ST_FREE ||
        !(ck_pr_load_32(&k->fleet_mask) & KM__FLEET_MODELS) || k->pool >= e->geom.n_pools)
        return 0;
    const km__pool *p = &km__pools(e)[k->pool];
    if (ck_pr_load_32(&p->model_mode) != KM_MODELS_PER_MODEL)
        return 0;
    return (uint32_t)km__min64(ck_pr_load_32(&p->n_models), e->geom.cap_models);
}

static size_t models_slots(km_env *e, uint32_t ki)
{
    size_t n = 0;
    for (uint32_t m = 0, nm = fleet_models_of(e, ki); m < nm; m++)
        n += (size_t)__builtin_popcount(model_lim(e, ki, m).mask);
    return n;
}


/* A slot's description of window w of model m of key ki (limits ml),
 * its counts zero. */
static void model_slot_meta(km_env *e, uint32_t ki, uint32_t m, const mlim *ml, int w,
                            km_fleet_slot *o)
{
    km__key *k = &km__keys(e)[ki];
    const km__fkey *fk = km__fkeys(e, ki);
    memset(o, 0, sizeof(*o));
    o->key = ki;
    o->key_gen = ck_pr_load_32(&k->gen);
    o->model = m + 1;
    o->window = w;
    copy_id(o->pool, km__pools(e)[k->pool].name);
    copy_id(o->key_id, k->id);
    copy_id(o->fleet_id, fk->fleet_id);
    copy_id(o->model_name, km__models(e, k->pool)[m].name);
    o->limit = ml->limit[w];
    o->burst = ml->burst[w];
    o->period_ms = km__window_period_ns(w) / KM__NS_PER_MS;
    o->mode = ml->mode[w];
    o->strict = (fk->flags & KM__FK_STRICT) != 0;
}

/* Model block fi's credit, if lapsed, voided (counted as returned). */
static void model_void_lapsed(km_env *e, uint32_t fi, const mlim *ml, uint64_t now)
{
    uint64_t dl = ck_pr_load_64(&km__fkeys(e, fi)->m_deadline);
    if (dl && now >= dl)
        credit_void(e, fi, NULL, ml->mask);
}

/* The model slots of key ki, at most cap, into out: how many. */
static size_t collect_models(km_env *e, uint32_t ki, uint64_t now, km_fleet_slot *out, size_t cap)
{
    uint32_t nm = fleet_models_of(e, ki);
    if (!nm)
        return 0;
    size_t j = 0;
    for (uint32_t m = 0; m < nm && j < cap; m++) {
        mlim ml = model_lim(e, ki, m);
        if (!ml.mask)
            continue;
        uint32_t fi = km__fmodel_ix(e, ki, m);
        model_void_lapsed(e, fi, &ml, now);
        for (uint32_t b = ml.mask; b && j < cap; b &= b - 1) {
            int w = __builtin_ctz(b);
            km_fleet_slot *o = &out[j++];
            model_slot_meta(e, ki, m, &ml, w, o);
            block_counts(e, fi, NULL, w, o); /* adj stays 0: see above */
            pending_add(km__fkeys(e, fi), o);
        }
    }
    return j;
}

/* The report in the segment (the top of this file) for model blocks: the
 * lapsed credit of every model block of key ki voided (a stamped report's
 * collect), and the pending counts of model m as slots. */
static void models_void_lapsed(km_env *e, uint32_t ki, uint64_t now)
{
    for (uint32_t m = 0, nm = fleet_models_of(e, ki); m < nm; m++) {
        mlim ml = model_lim(e, ki, m);
        if (ml.mask)
            model_void_lapsed(e, km__fmodel_ix(e, ki, m), &ml, now);
    }
}

static size_t model_pending_out(km_env *e, uint32_t ki, uint32_t m, km_fleet_slot *out)
{
    km__fkey *fm = km__fkeys(e, km__fmodel_ix(e, ki, m));
    int same = m < fleet_models_of(e, ki) && ck_pr_load_32(&km__keys(e)[ki].gen) == fm->p_gen;
    mlim ml = same ? model_lim(e, ki, m) : (mlim){0};
    size_t j = 0;
    for (uint32_t b = fm->p_mask; b; b &= b - 1) {
        int w = __builtin_ctz(b);
        km_fleet_slot *o = &out[j++];
        if (same && (ml.mask >> w) & 1) {
            model_slot_meta(e, ki, m, &ml, w, o);
        } else {
            memset(o, 0, sizeof(*o));
            o->key = ki;
            o->model = m + 1;
            o->window = w;
        }
        pending_get(fm, w, o);
    }
    return j;
}

static void apply_model(km_env *e, const km_fleet_grant *gr, uint64_t now)
{
    uint32_t ki = gr->key, m = gr->model - 1;
    km__key *k = &km__keys(e)[ki];
    int w = gr->window;
    /* The key changed since the collect this answers, or the model's
     * window is no longer limited: not this grant's (as a key's). */
    if (m >= fleet_models_of(e, ki) || ck_pr_load_32(&k->gen) != gr->key_gen)
        return;
    mlim ml = model_lim(e, ki, m);
    if (!(ml.mask & (1u << w)))
        return;
    uint32_t fi = km__fmodel_ix(e, ki, m);
    km__fkey *fm = km__fkeys(e, fi);
    if (gr->grant) {
        ck_pr_add_64(credit_word(e, fi, NULL, w), gr->grant); /* a sum: locked add (F1) */
        fm->a_last[w] += gr->grant;
    }
    /* The deadline after the top-up (release: an acquirer that sees the
     * new deadline sees the credit too). */
    ck_pr_fence_atomic_store();
    ck_pr_store_64(&fm->m_deadline, gr->deadline_ns);
    /* The fallback share at fb_ppm of the model window's rate. */
    uint64_t T = 0, tau = 0;
    if (gr->fb_ppm && ml.T[w]) {
        T = km__mul_sat(ml.T[w], 1000000) / gr->fb_ppm;
        tau = km__mul_sat(gr->fb_burst, T);
    }
    fb_write(fm, w, gr->fb_from_ns, gr->fb_until_ns, T, tau);
    fm->fb_ppm = gr->fb_ppm;
    /* Sleepers may be admitted now (km__wake's own fence orders the bump
     * after the stores above). */
    if (gr->grant || (gr->fb_ppm && gr->fb_from_ns <= now && now < gr->fb_until_ns))
        km__wake_pool(e, k->pool);
}

/* km_fleet_release's void of key ki's model blocks, as of its own: the
 * deadline first, then the words (F2), then the fallback window ended. */
static void release_models(km_env *e, uint32_t ki)
{
    for (uint32_t m = 0, nm = fleet_models_of(e, ki); m < nm; m++) {
        uint32_t fi = km__fmodel_ix(e, ki, m);
        km__fkey *fm = km__fkeys(e, fi);
        ck_pr_store_64(&fm->m_deadline, 0);
        ck_pr_fence_store_atomic(); /* the deadline before the exchanges */
        credit_void(e, fi, NULL, model_lim(e, ki, m).mask);
        fb_write(fm, -1, 0, 0, 0, 0);
        fm->fb_ppm = 0;
    }
}

void km__fleet_undo_model(km_env *e, uint32_t ki, uint32_t mi, uint32_t mask, const km__adm *a,
                          int how)
{
    uint32_t fi = km__fmodel_ix(e, ki, mi);
    if (how != KM__FL_CREDIT) { /* the fallback count, as a key's */
        km__fleet_undo(e, fi, NULL, mask, a, how);
        return;
    }
    uint32_t m = mask;
    uint64_t cost;
    for (int w; (w = km__fleet_next(&m, a->tokens, &cost)) >= 0;)
        ck_pr_add_64(credit_word(e, fi, NULL, w), cost); /* a sum: exact (F3) */
}

KM_EXTERN int km_fleet_model_info_get(km_env *e, uint32_t key, uint32_t model,
                                      km_fleet_key_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    memset(out, 0, sizeof(*out));
    if (key >= e->geom.cap_keys || ck_pr_load_32(&km__keys(e)[key].state) >= KM__ST_FREE)
        return KM_ENOKEY;
    if (!e->geom.off_fleet || model >= fleet_models_of(e, key))
        return KM_OK;
    uint32_t fi = km__fmodel_ix(e, key, model);
    km__fkey *fm = km__fkeys(e, fi);
    out->mask = model_lim(e, key, model).mask;
    for (uint32_t m = out->mask; m; m &= m - 1) {
        int w = __builtin_ctz(m);
        out->credit[w] = ck_pr_load_64(credit_word(e, fi, NULL, w));
    }
    out->deadline_ns = ck_pr_load_64(&fm->m_deadline);
    out->fb_ppm = ck_pr_load_32(&fm->fb_ppm);
    out->fb_until_ns = ck_pr_load_64(&fm->fb_until);
    return KM_OK;
}
