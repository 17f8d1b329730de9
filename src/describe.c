/*
 * src/describe.c - a segment by name, without attaching: km_segment_describe
 * (what kmctl destroy checks before it removes a name, and what a listing
 * shows) and km_segment_sweep (the temporaries of creations that died).
 *
 * Nothing here claims a process slot or writes to a segment: the object is
 * stat'ed, its first bytes read (a KeyMesh segment is told by its magic,
 * stored last by its creator), and, if it is one this library reads, it is
 * attached read-only (KM_OPEN_READONLY) for its counts.
 */
#include <string.h>

#include <ck_pr.h>

#include "internal.h"

KM_EXTERN int km_segment_describe(const char *name, km_segment_desc *out)
{
    char nm[KM__SEG_NAME_BUF];
    km__seg_stat st;
    km__tmp_info t;
    uint64_t magic = 0;
    uint32_t format = 0;
    int rc;

    if (!out)
        return KM_EINVAL;
    memset(out, 0, sizeof *out);
    if ((rc = km__seg_name(name, nm)) != KM_OK || (rc = km__seg_stat_of(nm, &st)) != KM_OK)
        return rc;
    out->size_bytes = st.size;
    out->mode = st.mode;
    out->uid = st.uid;
    out->gid = st.gid;
    int tmp = km__seg_tmp_parse(nm, &t) == KM_OK;
    if (tmp) {
        out->creator_pid = t.pid;
        out->creator_alive = km__pid_alive(t.pid, t.start_time);
        memcpy(out->target, t.target, sizeof out->target);
    }
    rc = km__seg_peek(nm, &magic, &format);
    if (rc == KM_EACCES) {
        out->kind = tmp ? KM_SEG_TEMPORARY : KM_SEG_UNREADABLE;
        out->status = KM_EACCES;
        return KM_OK;
    }
    if (rc != KM_OK)
        return rc;
    out->kind = tmp ? KM_SEG_TEMPORARY : magic == KM__MAGIC ? KM_SEG_KEYMESH : KM_SEG_FOREIGN;

    km_env *e = NULL;
    out->status = km_open_flags(nm, KM_OPEN_READONLY, &e);
    if (out->status != KM_OK) {
        /* A KeyMesh segment this library does not read (another format or
         * layout, damaged): what its header says of its format. */
        if (magic == KM__MAGIC)
            out->format = format;
        return KM_OK;
    }
    out->format = e->geom.format;
    out->n_pools = 0; /* pools now: removed and free rows not counted */
    for (uint32_t p = 0; p < e->geom.cap_pools; p++)
        out->n_pools += km__pool_live(e, (int)p);
    out->n_keys = km__keys_live(e); /* removed keys not counted */
    out->cap_keys = e->geom.cap_keys;
    out->cap_procs = e->geom.cap_procs;
    out->created_wall_ns = e->geom.created_wall_ns;
    for (uint32_t i = 0; i < e->geom.cap_procs; i++) {
        uint64_t tag = ck_pr_load_64(&km__procs(&e->seg)[i].tag);
        if (!tag)
            continue;
        out->attached++;
        out->alive += km__proc_entry_live(&e->seg, i, tag) != 0;
    }
    km_close(e);
    return KM_OK;
}

KM_EXTERN int km_segment_sweep(const char *name, uint32_t *removed)
{
    return km__seg_sweep(name, removed);
}
