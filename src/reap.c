/*
 * src/reap.c - what a dead process leaves behind: its leases, then its
 * process slot.
 *
 * shm/ says which process slots belong to dead processes
 * (km__proc_next_dead); this file releases what their tags hold and only
 * then frees the slots (km__proc_free_dead), which keeps T1 (shm/proc.c):
 * a tag is never reused while a lease could still carry it.
 */
#include <string.h>

#include <ck_pr.h>

#include "internal.h"

int km__reap_dead(km_env *e, km_reap_report *rep, int repair)
{
    km_reap_report r = {0};
    uint64_t tag;

    /* Leases first, by slot: that also recovers slots of a reaper that died
     * while reaping.  Then the table entries of dead processes that hold
     * nothing any more. */
    km__reap_leases(e, &r, repair);
    for (uint32_t i = 0; km__proc_next_dead(&e->seg, &i, &tag); i++) {
        if (km__count_owned(e, tag) != 0) {
            r.pending++; /* a recount could not settle yet */
            continue;
        }
        if (km__proc_free_dead(&e->seg, i, tag)) /* T1 */
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
    km__reap_dead(e, &r, 1);
    if (out)
        *out = r;
    return KM_OK;
}

KM_EXTERN int km_proc_info_get(km_env *e, uint32_t slot, km_proc_info *out)
{
    if (!e || !out || slot >= e->geom.cap_procs)
        return KM_EINVAL;
    km__proc *p = &km__procs(&e->seg)[slot];
    uint64_t tag = ck_pr_load_64(&p->tag);
    if (tag == 0)
        return KM_ENOENT;
    ck_pr_fence_load(); /* tag before the fields it guards */
    memset(out, 0, sizeof(*out));
    out->attached_ns = ck_pr_load_64(&p->attach_ns);
    out->alive = km__proc_entry_live(&e->seg, slot, tag);
    out->pid = km__tag_pid(tag); /* the tag's pid: the field may lag while attaching */
    out->leases = (uint32_t)km__count_owned(e, tag);
    return KM_OK;
}
