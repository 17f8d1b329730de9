/*
 * src/info.c - the readers: what km_*_info_get and the lookups report.
 *
 * Readers run concurrently with everything else: each number is read
 * atomically, but numbers of one key need not be mutually consistent while
 * operations run.  They change nothing.
 */
#include <string.h>

#include <ck_pr.h>

#include "internal.h"

KM_EXTERN int km_reader_info_get(km_env *e, uint32_t slot, uint32_t row,
                                 km_reader_info *out)
{
    if (!e || !out || slot >= e->geom.cap_procs || row >= KM__RDR_PER_PROC)
        return KM_EINVAL;
    km__proc *p = &km__procs(&e->seg)[slot];
    uint64_t tag = ck_pr_load_64(&p->tag);
    km__rdr *r = &km__rdrs(&e->seg, slot)[row];
    uint64_t ep = km__row_epoch(r, row);
    if (tag == 0 || ep == 0)
        return KM_ENOENT;
    memset(out, 0, sizeof *out);
    out->pid = km__tag_pid(tag);
    out->tid = row == 0 ? 0 : ck_pr_load_32(&r->tid);
    out->shared = row == 0;
    out->epoch = ep;
    uint64_t g = ck_pr_load_64(&e->seg.hdr->epoch), now = km__now(),
             since = ck_pr_load_64(&r->enter_ns);
    out->epochs_behind = g > ep ? g - ep : 0;
    out->inside_ns = now > since ? now - since : 0;
    out->alive = km__proc_entry_live(&e->seg, slot, tag);
    return KM_OK;
}

KM_EXTERN int km_epoch_info_get(km_env *e, km_epoch_info *out)
{
    if (!e || !out)
        return KM_EINVAL;
    memset(out, 0, sizeof *out);
    out->epoch = ck_pr_load_64(&e->seg.hdr->epoch);
    out->synced = ck_pr_load_64(&e->seg.hdr->synced);
    out->reconfigs = ck_pr_load_64(&e->seg.hdr->reconfigs);
    out->rows_per_process = KM__RDR_PER_PROC;
    out->membarrier = !e->seg.rd_fence;
    return KM_OK;
}
