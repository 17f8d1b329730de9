/*
 * src/attach.c - the lifecycle of a handle: km_create, km_open, km_close.
 *
 * This file joins the substrate (shm/: a segment, its process table, its
 * epochs) and the pool (src/: its schema in src/layout.h, its rows written
 * by src/create.c, its leases), as Knot Resolver's daemon/ratelimiting.c
 * joins lib/mmapped.c and the KRU limiter.  Neither side calls the other;
 * the order of what happens lives here:
 *
 *   km_create  lay out (km__layout), create the raw segment (shm/), write
 *              the pool's header words and rows, initialise the admin lock,
 *              publish (format, then magic), claim a process slot.
 *   km_open    map and validate what shm/ knows, then validate capacities
 *              and offsets here, register for membarrier, reap what dead
 *              processes left (unless KM_OPEN_NO_REAP), claim a process
 *              slot.
 *   km_close   release the leases our tag holds, clear our reader rows,
 *              give the process slot back (T1: in that order), unmap.
 *
 * After a slot is claimed, what its previous occupant left is reset: its
 * reader rows (a dead section uses nothing) and its usage rings (events it
 * died writing are sealed, U2).  The slot counts as live from the claim
 * (T2), so a grace-period wait that meets the old rows in between only
 * waits for them to be cleared, and a drainer that meets a half-written
 * event only defers it to its next drain (src/usage.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"

/* The default of km_set_admin_timeout (documented in keymesh.h). */
#define KM__ADMIN_TIMEOUT_MS 1000

static int usage_cap_ok(uint32_t cap_usage)
{
    return cap_usage <= KM__MAX_CAP_USAGE && (cap_usage & (cap_usage - 1)) == 0 &&
           cap_usage != 1;
}

/* The capacities and offsets of a header copy, which shm/ did not check:
 * every offset must be the one the capacities imply, so no later access
 * derived from the header can leave the mapping. */
static int geom_valid(const km__hdr *h)
{
    uint64_t off[KM__OFF_N];
    if (h->cap_keys == 0 || h->cap_keys > KM_KEYS_MAX || h->cap_pools == 0 ||
        h->cap_pools > KM_POOLS_MAX || h->cap_procs == 0 ||
        h->cap_procs > KM_PROCS_MAX || h->cap_inflight == 0 ||
        h->cap_inflight > KM_INFLIGHT_MAX || h->cap_models == 0 ||
        h->cap_models > KM_MODELS_MAX || h->n_pools > h->cap_pools ||
        h->n_keys > h->cap_keys)
        return KM_ECORRUPT;
    if (!usage_cap_ok(h->cap_usage))
        return KM_ECORRUPT;
    if (km__layout(h->cap_keys, h->cap_pools, h->cap_procs, h->cap_inflight,
                   h->cap_models, h->cap_usage, off) != h->seg_size ||
        off[KM__OFF_POOLS] != h->off_pools || off[KM__OFF_MEMBERS] != h->off_members ||
        off[KM__OFF_MODELS] != h->off_models || off[KM__OFF_KEYS] != h->off_keys ||
        off[KM__OFF_MWIN] != h->off_mwin || off[KM__OFF_LEASES] != h->off_leases ||
        off[KM__OFF_BUSY] != h->off_busy ||
        off[KM__OFF_PROCS] != h->off_procs || off[KM__OFF_READERS] != h->off_readers ||
        off[KM__OFF_USAGE] != h->off_usage)
        return KM_ECORRUPT;
    return KM_OK;
}

static km_env *env_new(void)
{
    km_env *e = calloc(1, sizeof(*e));
    if (e)
        e->admin_timeout_ms = KM__ADMIN_TIMEOUT_MS;
    return e;
}

/* Claim a process slot, then reset what its previous occupant left (see the
 * top of this file). */
static int claim_slot(km_env *e)
{
    int rc = km__proc_claim(&e->seg);
    if (rc != KM_OK)
        return rc;
    km__epoch_rows_reset(&e->seg, e->seg.proc_slot);
    km__usage_reset(e, e->seg.proc_slot);
    return KM_OK;
}

KM_EXTERN int km_create(const char *name, const km_config *cfg, unsigned mode,
                        km_env **out)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm);
    uint64_t off[KM__OFF_N], size;
    km_env *e;

    if (rc)
        return rc;
    if (!cfg || !out || cfg->n_pools == 0 || cfg->n_pools > cfg->cap_pools ||
        cfg->n_keys > cfg->cap_keys || cfg->cap_keys == 0 ||
        cfg->cap_keys > KM_KEYS_MAX || cfg->cap_pools > KM_POOLS_MAX ||
        cfg->cap_procs == 0 || cfg->cap_procs > KM_PROCS_MAX ||
        cfg->cap_inflight == 0 || cfg->cap_inflight > KM_INFLIGHT_MAX ||
        cfg->cap_models > KM_MODELS_MAX)
        return KM_EINVAL;
    /* 0 models of capacity means the default (a pool may name models). */
    uint32_t cap_models = cfg->cap_models ? cfg->cap_models : KM__DEF_CAP_MODELS;
    for (uint32_t p = 0; p < cfg->n_pools; p++)
        if (cfg->pools[p].n_models > cap_models)
            return KM_EINVAL;
    *out = NULL;
    if (mode == 0)
        mode = 0600;
    if (!usage_cap_ok(cfg->cap_usage))
        return KM_EINVAL;
    size = km__layout(cfg->cap_keys, cfg->cap_pools, cfg->cap_procs,
                      cfg->cap_inflight, cap_models, cfg->cap_usage, off);
    if (!(e = env_new()))
        return KM_ENOMEM;
    km__seg_geom g = {.size = size, .layout_sig = km__layout_signature(),
                      .cap_procs = cfg->cap_procs, .off_procs = off[KM__OFF_PROCS],
                      .off_readers = off[KM__OFF_READERS]};
    if ((rc = km__seg_create_raw(nm, &g, mode, &e->seg)) != KM_OK) {
        free(e);
        return rc;
    }

    /* The pool's header words; shm/ wrote its own. */
    km__hdr *h = e->seg.hdr;
    h->cap_keys = cfg->cap_keys;
    h->cap_pools = cfg->cap_pools;
    h->cap_inflight = cfg->cap_inflight;
    h->cap_models = cap_models;
    h->off_pools = off[KM__OFF_POOLS];
    h->off_members = off[KM__OFF_MEMBERS];
    h->off_models = off[KM__OFF_MODELS];
    h->off_keys = off[KM__OFF_KEYS];
    h->off_mwin = off[KM__OFF_MWIN];
    h->off_leases = off[KM__OFF_LEASES];
    h->off_busy = off[KM__OFF_BUSY];
    h->off_usage = off[KM__OFF_USAGE];
    h->cap_usage = cfg->cap_usage;
    e->geom = *h; /* the creator's own values (see km_env.geom) */
    km__pool_init(e, cfg);
    km__admin_init(e);
    km__epoch_attach(&e->seg);
    km__seg_publish(&e->seg, KM_FORMAT_VERSION);

    /* A new segment has nothing to reap. */
    if ((rc = claim_slot(e)) != KM_OK) {
        km__seg_discard(&e->seg, nm);
        free(e);
        return rc;
    }
    *out = e;
    return KM_OK;
}

static int attach(const char *name, unsigned flags, km_env **out)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm);
    km_env *e;

    if (rc)
        return rc;
    if (!out)
        return KM_EINVAL;
    *out = NULL;
    if (!(e = env_new()))
        return KM_ENOMEM;
    rc = km__seg_open_raw(nm, KM_FORMAT_VERSION, km__layout_signature(), &e->seg, &e->geom);
    if (rc == KM_OK && (rc = geom_valid(&e->geom)) == KM_OK) {
        km__epoch_attach(&e->seg);
        /* Every attach first releases what dead processes left behind (we
         * have no tag yet: the reaper marks slots with our pid instead). */
        if (!(flags & KM_OPEN_NO_REAP))
            km__reap_dead(e, NULL, 0);
        rc = claim_slot(e);
    }
    if (rc != KM_OK) {
        km__seg_close_raw(&e->seg); /* keeps errno */
        free(e);
        return rc;
    }
    *out = e;
    return KM_OK;
}

KM_EXTERN int km_open(const char *name, km_env **out) { return attach(name, 0, out); }

KM_EXTERN int km_open_flags(const char *name, unsigned flags, km_env **out)
{
    if (flags & ~KM_OPEN_NO_REAP)
        return KM_EINVAL;
    return attach(name, flags, out);
}

KM_EXTERN int km_close(km_env *e)
{
    if (!e)
        return KM_OK;
    /* A child after fork() holds a copy of its parent's handle: it must not
     * release the parent's leases nor its process slot. */
    if ((int)getpid() == e->seg.pid) {
        km__release_all_owned(e, e->seg.tag); /* T1: before the slot is offered */
        km__epoch_rows_reset(&e->seg, e->seg.proc_slot);
        km__proc_release(&e->seg);
    }
    km__seg_close_raw(&e->seg);
    free(e);
    return KM_OK;
}

KM_EXTERN int km_unlink(const char *name) { return km__seg_unlink(name); }
