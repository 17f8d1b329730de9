/*
 * src/usage.c - usage events: per-process rings in the segment, drained by
 * one reader (km_usage_drain; `kmctl persist` writes them to SQLite).
 *
 * Producer.  A process slot has two rings.  Ring 0 belongs to the thread
 * holding the slot's reader row 1 (km__rd_holds_row1, shm/epoch.h: the
 * process's first thread to acquire, until it exits): that thread alone
 * writes it, and takes event
 * number i by a plain increment of `head`, also for the leases it reaps.
 * Every other writer (the process's other threads, a thread that releases
 * without ever acquiring, a reap on such a thread, a reap during attach)
 * uses ring 1 and takes i by a locked fetch-add.  A single-threaded
 * worker so records an event with no locked instruction.  The event goes to
 * slot i & (n - 1) of its ring: seq := 0, the fields, then seq := i + 1 with
 * release semantics.  It never waits: when the drainer is behind by more
 * than n, the oldest events are overwritten.
 *
 * Consumer.  The drainer reads events drained..head-1 of each ring.  An
 * event whose seq is i + 1 both before and after its fields were read
 * (acquire fences between) is complete and is event i.  A seq above i + 1
 * means the slot was overwritten by a later event: event i is dropped and
 * counted.  A seq below (0 or older) means event i is still being written;
 * the drainer stops on that ring until the next drain (or skips it as
 * dropped if the ring's process is dead).  Only the drainer writes
 * `drained` and `dropped`.  Two writers can meet on one slot only if one is
 * lapped by n events while it writes its fields; the seq check then drops
 * what it cannot tell apart.
 *
 * A ring belongs to its process slot, not to one process: the next process
 * to take the slot appends after what its predecessor left, so nothing a
 * worker recorded before it exited is lost.  Each event names its pid.  An
 * event the predecessor died writing (seq still 0) is sealed at attach as
 * "dead" (outcome KM__OUT_DEAD), which the drainer counts as dropped,
 * so no ring waits forever on a writer that is gone.
 *
 * Order: a drain delivers each ring's events in the order they were
 * numbered, ring 0 of a slot before its ring 1; events of different rings
 * are not ordered among themselves (each carries its start time).
 *
 * The rules, cited where the code relies on them:
 *   U1  Ring 0 of a process slot has one writer at a time, the holder of
 *       the slot's reader row 1, which numbers events by plain stores;
 *       every other writer uses ring 1 and numbers them by fetch-add.
 *   U2  An event is complete when its seq is its number + 1, stored last
 *       (release); seq is 0 while its fields are written.  An event a dead
 *       writer left with seq 0 is sealed (outcome KM__OUT_DEAD, seq set) by
 *       the slot's next occupant when it attaches (km__usage_reset, called
 *       by src/attach.c right after the claim), so no drain waits on it for
 *       ever; a drainer that meets it before the seal waits only while the
 *       slot's process is alive.
 *   U3  One drainer at a time (hdr.usage_drainer holds its tag; a tag whose
 *       process is dead may be taken over), and only the drainer writes
 *       `drained` and `dropped`.
 *   U4  A drain with KM_USAGE_DEFER stores neither: it keeps each ring's
 *       new cursor and drop count in the handle (km__udefer), and
 *       km_usage_commit stores them, while its caller is still the drainer
 *       (U3).  Until then the events stay in the rings, so a drainer killed
 *       between writing them elsewhere and committing hands them out again
 *       from its next drain (or its successor's).  Every drain starts from
 *       the stored cursors and forgets an uncommitted deferred one.  An
 *       event is the same event each time it is handed out: its ring, its
 *       number in the ring (heads only grow while the segment lives; the
 *       number of the slot it is read from, checked by its seq) and the
 *       segment's creation time name it (km_usage_event.seq, ring,
 *       segment_ns), so a consumer can drop what it already has.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"
#include "usage.h"

void km__usage_reset(km_env *e, uint32_t slot)
{
    uint32_t n = km__uring_cap(e);
    if (!n)
        return;
    /* The slot's previous occupant is gone: seal what it left half written
     * (U2). */
    for (uint32_t ring = 0; ring < KM__URINGS_PER_PROC; ring++) {
        km__uring *r = km__urings(e, slot, ring);
        uint64_t head = ck_pr_load_64(&r->head), d = ck_pr_load_64(&r->drained);
        for (uint64_t i = head > n && head - n > d ? head - n : d; i < head; i++) {
            km__uev *ev = &km__uevs(r)[i & (n - 1)];
            if (ck_pr_load_64(&ev->seq) != i + 1) {
                ck_pr_store_32(&ev->outcome, KM__OUT_DEAD);
                ck_pr_fence_store(); /* the mark before seq */
                ck_pr_store_64(&ev->seq, i + 1);
            }
        }
    }
}

/* The identity took reserved room: the public struct keeps its size. */
_Static_assert(sizeof(km_usage_event) == 256 && offsetof(km_usage_event, reserved) == 248,
               "km_usage_event: 256 bytes, as before its identity");

/* What a deferred drain read and km_usage_commit stores (U4): per ring,
 * the cursor reached and the events found dropped, for the first n_done
 * rings (a drain stopped by its callback leaves the others untouched). */
struct km__udefer {
    uint32_t n_rings, n_done;
    int pending; /* a deferred drain awaits km_usage_commit */
    struct {
        uint64_t drained, dropped;
    } ring[];
};

/* Fill the public form of event number `seq` of ring `ring`. */
static void usage_event(km_env *e, const km__uev *ev, uint32_t ring, uint64_t seq,
                        uint64_t now_mono, uint64_t now_wall, km_usage_event *out)
{
    memset(out, 0, sizeof *out);
    out->seq = seq;
    out->ring = (int)ring;
    out->segment_ns = e->geom.created_wall_ns;
    uint64_t start = ev->start_ns;
    out->start_unix_ns = now_wall - (now_mono > start ? now_mono - start : 0);
    out->latency_us = ev->latency_us == UINT32_MAX ? UINT64_MAX : ev->latency_us;
    out->tokens = ev->tokens;
    out->outcome = ev->outcome <= KM__OUT_ABANDONED ? (int)ev->outcome : KM__OUT_ABANDONED;
    out->pid = ev->pid;
    if (ev->pool < e->geom.n_pools) {
        const km__pool *p = &km__pools(e)[ev->pool];
        memcpy(out->pool, p->name, KM_ID_MAX);
        uint32_t m = ev->model & ~KM__MODEL_NAMED;
        if (!(ev->model & KM__MODEL_NAMED)) {
            if (m && m <= p->n_models && m <= e->geom.cap_models)
                memcpy(out->model, km__models(e, ev->pool)[m - 1].name, KM_ID_MAX);
        } else if (!m) {
            out->model[0] = '?'; /* the pool's rows all held other names */
        } else if (m <= e->geom.cap_models && !p->n_models) {
            /* A name the pool without a models list recorded (src/acquire.c,
             * model_named): written before its hash, never again (N2). */
            const km__model *md = &km__models(e, ev->pool)[m - 1];
            if (ck_pr_load_32(&md->hash)) {
                ck_pr_fence_load(); /* the hash before the name (N2) */
                memcpy(out->model, md->name, KM_ID_MAX);
            }
        }
    }
    const km__key *k = ev->key < e->geom.cap_keys ? &km__keys(e)[ev->key] : NULL;
    /* The id is the row's while the row holds that generation (removed rows
     * keep their id until reused). */
    if (k && ck_pr_load_32(&k->gen) == ev->key_gen && ck_pr_load_32(&k->state) != KM__ST_FREE) {
        memcpy(out->key_id, k->id, KM_ID_MAX);
        if (ck_pr_load_32(&k->gen) == ev->key_gen)
            return;
    }
    snprintf(out->key_id, sizeof out->key_id, "#%u.%u", ev->key, ev->key_gen);
}

/* Take the drainer's word: free, ours, or held by a process gone (U3). */
static int drainer_take(km_env *e)
{
    km__hdr *h = e->seg.hdr;
    uint64_t cur = ck_pr_load_64(&h->usage_drainer);
    if (cur == e->seg.tag)
        return KM_OK;
    if (cur != 0 && km__proc_tag_live(&e->seg, cur))
        return KM_EBUSY;
    return ck_pr_cas_64(&h->usage_drainer, cur, e->seg.tag) ? KM_OK : KM_EBUSY;
}

KM_EXTERN int km_usage_drain_ex(km_env *e, unsigned flags,
                                int (*fn)(void *ctx, const km_usage_event *ev), void *ctx,
                                km_usage_report *out)
{
    km_usage_report rep = {0};
    int rc;
    if (!e || !fn || (flags & ~KM_USAGE_DEFER))
        return KM_EINVAL;
    if (!e->seg.tag)
        return KM_EREADONLY; /* the drainer is named by its process slot's tag */
    uint32_t n = km__uring_cap(e), n_rings = e->geom.cap_procs * KM__URINGS_PER_PROC;
    km__udefer *df = e->usage_defer;
    if (df)
        df->pending = 0; /* every drain starts from the stored cursors (U4) */
    if (n && (flags & KM_USAGE_DEFER) && !df) {
        df = calloc(1, sizeof *df + (size_t)n_rings * sizeof df->ring[0]);
        if (!df)
            return KM_ENOMEM;
        df->n_rings = n_rings;
        e->usage_defer = df;
    }
    if (!(flags & KM_USAGE_DEFER))
        df = NULL;
    if (n && (rc = drainer_take(e)) != KM_OK)
        return rc;
    uint64_t now_mono = km__now(), now_wall = km__wall_ns();
    rc = KM_OK;
    uint32_t ri = 0;
    for (; n && ri < n_rings && rc == KM_OK; ri++) {
        uint32_t s = ri / KM__URINGS_PER_PROC;
        km__proc *p = &km__procs(&e->seg)[s];
        uint64_t tag = ck_pr_load_64(&p->tag);
        km__uring *r = km__urings(e, s, ri % KM__URINGS_PER_PROC);
        uint64_t head = ck_pr_load_64(&r->head), d = ck_pr_load_64(&r->drained), dropped = 0;
        if (head < d) /* only in a corrupted segment: start over */
            d = head;
        if (head - d > n) {
            dropped += head - d - n;
            d = head - n;
        }
        int alive = -1;
        for (; d < head; d++) {
            km__uev *ev = &km__uevs(r)[d & (n - 1)], copy;
            uint64_t s1 = ck_pr_load_64(&ev->seq);
            ck_pr_fence_load(); /* seq before the fields (pairs with the writer's fence) */
            copy.start_ns = ck_pr_load_64(&ev->start_ns);
            copy.tokens = ck_pr_load_64(&ev->tokens);
            copy.latency_us = ck_pr_load_32(&ev->latency_us);
            copy.key = ck_pr_load_32(&ev->key);
            copy.key_gen = ck_pr_load_32(&ev->key_gen);
            copy.model = ck_pr_load_32(&ev->model);
            copy.pool = ck_pr_load_32(&ev->pool);
            copy.outcome = ck_pr_load_32(&ev->outcome);
            copy.pid = ck_pr_load_32(&ev->pid);
            ck_pr_fence_load(); /* the fields before the second look at seq */
            uint64_t s2 = ck_pr_load_64(&ev->seq);
            if (s1 == d + 1 && s2 == s1 && copy.outcome > KM__OUT_ABANDONED) { /* sealed: dead writer */
                dropped++;
                continue;
            }
            if (s1 == d + 1 && s2 == s1) {
                km_usage_event ue;
                usage_event(e, &copy, ri, d, now_mono, now_wall, &ue);
                if ((rc = fn(ctx, &ue)) != 0)
                    break;
                rep.events++;
                continue;
            }
            if (s1 > d + 1 || s2 > d + 1) { /* overwritten by a later event */
                dropped++;
                continue;
            }
            /* Still being written: wait for it, unless its writer is gone
             * (U2). */
            if (alive < 0)
                alive = tag && km__proc_entry_live(&e->seg, s, tag);
            if (alive)
                break;
            dropped++;
        }
        if (df) { /* kept for km_usage_commit (U4) */
            df->ring[ri].drained = d;
            df->ring[ri].dropped = dropped;
        } else {
            ck_pr_store_64(&r->drained, d);
            if (dropped)
                ck_pr_store_64(&r->dropped, ck_pr_load_64(&r->dropped) + dropped);
        }
        rep.dropped += dropped;
    }
    if (df) {
        df->n_done = ri;
        df->pending = 1;
        rep.dropped_total = rep.dropped; /* plus the stored counts, below */
    }
    for (uint32_t s = 0; n && s < e->geom.cap_procs; s++)
        for (uint32_t ring = 0; ring < KM__URINGS_PER_PROC; ring++)
            rep.dropped_total += ck_pr_load_64(&km__urings(e, s, ring)->dropped);
    if (out)
        *out = rep;
    return rc;
}

KM_EXTERN int km_usage_drain(km_env *e, int (*fn)(void *ctx, const km_usage_event *ev), void *ctx,
                             km_usage_report *out)
{
    return km_usage_drain_ex(e, 0, fn, ctx, out);
}

KM_EXTERN int km_usage_commit(km_env *e)
{
    if (!e)
        return KM_EINVAL;
    km__udefer *df = e->usage_defer;
    if (!df || !df->pending)
        return KM_OK; /* nothing deferred, or committed already */
    df->pending = 0;
    /* Still the drainer (U3)?  Nobody takes the claim of a live process,
     * so this fails only if the segment was tampered with: store nothing,
     * and the next drain hands the events out again. */
    if (ck_pr_load_64(&e->seg.hdr->usage_drainer) != e->seg.tag)
        return KM_EBUSY;
    for (uint32_t ri = 0; ri < df->n_done && ri < df->n_rings; ri++) {
        km__uring *r = km__urings(e, ri / KM__URINGS_PER_PROC, ri % KM__URINGS_PER_PROC);
        /* Plain stores, as a drain without KM_USAGE_DEFER makes them: the
         * drainer alone writes these words (U3), and what a slot's next
         * occupant reads of `drained` (km__usage_reset) only bounds its
         * seal, which is idempotent. */
        ck_pr_store_64(&r->drained, df->ring[ri].drained);
        if (df->ring[ri].dropped)
            ck_pr_store_64(&r->dropped, ck_pr_load_64(&r->dropped) + df->ring[ri].dropped);
    }
    return KM_OK;
}
