/*
 * src/usage.h - the producer side of usage events, inline: it runs in every
 * release (src/release.c), where a call across files cost ~1 ns of the pair.
 * The protocol is described at the top of src/usage.c.  Internal.
 */
#ifndef KM_USAGE_H
#define KM_USAGE_H

#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"

static inline km__uev *km__uevs(km__uring *r) { return (km__uev *)(void *)(r + 1); }

/* Record a finished lease (no-op without rings): in this process's ring 0
 * if `own` (the calling thread holds the slot's reader row 1, and so ring 0
 * alone), else in its ring 1. */
static inline void km__usage_put(km_env *e, int own, uint32_t key, uint32_t key_gen,
                                 uint32_t pool, uint32_t model, uint64_t start_ns,
                                 uint64_t tokens, int64_t latency_us, int outcome)
{
    uint32_t n = km__uring_cap(e);
    if (!n)
        return;
    km__uring *r = km__urings(e, e->seg.proc_slot, own ? 0 : 1);
    uint64_t i;
    if (own) {
        /* Ring 0 has one writer, this thread (U1): a plain increment.
         * Ownership passes with reader row 1, by CAS on its tid, and only
         * from a thread that has exited (shm/epoch.c). */
        i = ck_pr_load_64(&r->head);
        ck_pr_store_64(&r->head, i + 1);
    } else {
        /* Ring 1 is shared: each writer takes its own event number (locked,
         * so no two write one slot unless lapped by n events). */
        i = ck_pr_faa_64(&r->head, 1);
    }
    km__uev *ev = &km__uevs(r)[i & (n - 1)];
    ck_pr_store_64(&ev->seq, 0);
    ck_pr_fence_store(); /* seq 0 before the fields (U2): a reader never takes them for the old event */
    ck_pr_store_64(&ev->start_ns, start_ns);
    ck_pr_store_64(&ev->tokens, tokens);
    ck_pr_store_32(&ev->latency_us,
                   latency_us < 0 ? UINT32_MAX : latency_us >= UINT32_MAX ? UINT32_MAX - 1 : (uint32_t)latency_us);
    ck_pr_store_32(&ev->key, key);
    ck_pr_store_32(&ev->key_gen, key_gen);
    ck_pr_store_32(&ev->model, model);
    ck_pr_store_32(&ev->pool, pool);
    ck_pr_store_32(&ev->outcome, (uint32_t)outcome);
    /* A reap at attach runs before this process has a slot: it records in
     * slot 0's ring 1 (fetch-adds: any process may) with its pid. */
    ck_pr_store_32(&ev->pid, e->seg.tag ? (uint32_t)e->seg.tag : (uint32_t)getpid());
    ck_pr_fence_store(); /* the fields before seq (U2; pairs with the drainer's acquire) */
    ck_pr_store_64(&ev->seq, i + 1);
}

#endif /* KM_USAGE_H */
