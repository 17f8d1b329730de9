/*
 * src/attach.c - the lifecycle of a handle: km_create, km_open, km_close.
 *
 * This file joins the substrate (shm/: a segment, its process table, its
 * epochs) and the pool (src/: its schema in src/layout.h, its rows written
 * by src/create.c, its leases), as Knot Resolver's daemon/ratelimiting.c
 * joins lib/mmapped.c and the KRU limiter.  Neither side calls the other;
 * the order of what happens lives here:
 *
 *   km_create  sweep the dead temporaries of the name, lay out
 *              (km__layout), create the raw segment (shm/) under a new
 *              temporary name, write the pool's header words and rows,
 *              initialise the admin lock, publish (format, then magic),
 *              claim a process slot, and rename it into place without
 *              replacing anything: the rename is the commit, so a creator
 *              killed at any instruction leaves no segment under the name,
 *              only a temporary that names its dead creator.
 *   km_create_private  the same in a memfd, with nothing to rename.
 *   km_open    map and validate what shm/ knows, then validate capacities
 *              and offsets here, register for membarrier, reap what dead
 *              processes left (unless KM_OPEN_NO_REAP; this also resolves a
 *              dead reconfiguration's intent), claim a process slot (unless
 *              KM_OPEN_NO_SLOT or KM_OPEN_READONLY: a handle without one
 *              cannot acquire, km_env.acq_pools).  KM_OPEN_READONLY maps
 *              the segment read-only and does nothing else: no reap, no
 *              membarrier registration, no slot.
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
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"
#include "tz.h"

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
    uint64_t size = km__layout(h->cap_keys, h->cap_pools, h->cap_procs, h->cap_inflight,
                               h->cap_models, h->cap_usage, off);
    /* The fleet region, if any, is the last: right after the others. */
    if (h->off_fleet && h->off_fleet != size)
        return KM_ECORRUPT;
    if (h->off_fleet)
        size += km__fleet_bytes(h->cap_keys, h->cap_models);
    if (size != h->seg_size ||
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
    if (e) {
        e->admin_timeout_ms = KM__ADMIN_TIMEOUT_MS;
        /* No descriptor yet: km__seg_close_raw on a failed attach must not
         * close descriptor 0 (calloc's value), the caller's stdin. */
        e->seg.fd = -1;
    }
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
    e->acq_pools = e->geom.n_pools; /* it may acquire */
    return KM_OK;
}

static int cfg_ok(const km_config *cfg)
{
    if (!cfg || cfg->n_pools == 0 || cfg->n_pools > cfg->cap_pools ||
        cfg->n_keys > cfg->cap_keys || cfg->cap_keys == 0 ||
        cfg->cap_keys > KM_KEYS_MAX || cfg->cap_pools > KM_POOLS_MAX ||
        cfg->cap_procs == 0 || cfg->cap_procs > KM_PROCS_MAX ||
        cfg->cap_inflight == 0 || cfg->cap_inflight > KM_INFLIGHT_MAX ||
        cfg->cap_models > KM_MODELS_MAX || !usage_cap_ok(cfg->cap_usage))
        return 0;
    /* 0 models of capacity means the default (a pool may name models). */
    uint32_t cap_models = cfg->cap_models ? cfg->cap_models : KM__DEF_CAP_MODELS;
    for (uint32_t p = 0; p < cfg->n_pools; p++)
        if (cfg->pools[p].n_models > cap_models)
            return 0;
    return 1;
}

/* Build a segment: object `obj` (a temporary's name), or a memfd if obj is
 * NULL; fill, publish and attach to it. */
static int build(const char *obj, const km_config *cfg, unsigned mode, km_env **out)
{
    uint64_t off[KM__OFF_N], size;
    uint32_t cap_models = cfg->cap_models ? cfg->cap_models : KM__DEF_CAP_MODELS;
    km_env *e;
    int rc;

    size = km__layout(cfg->cap_keys, cfg->cap_pools, cfg->cap_procs,
                      cfg->cap_inflight, cap_models, cfg->cap_usage, off);
    uint64_t off_fleet = 0;
    if (cfg->fleet_region) { /* the fleet region last (src/layout.h) */
        off_fleet = size;
        size += km__fleet_bytes(cfg->cap_keys, cap_models);
    }
    if (!(e = env_new()))
        return KM_ENOMEM;
    km__seg_geom g = {.size = size, .layout_sig = km__layout_signature(),
                      .cap_procs = cfg->cap_procs, .off_procs = off[KM__OFF_PROCS],
                      .off_readers = off[KM__OFF_READERS]};
    rc = obj ? km__seg_create_raw(obj, &g, mode, &e->seg) : km__seg_create_memfd(&g, &e->seg);
    if (rc != KM_OK) {
        free(e);
        return rc;
    }
    KM__FAULT("create.mapped");

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
    h->off_fleet = off_fleet;
    e->geom = *h; /* the creator's own values (see km_env.geom) */
    e->tzt = km__tz_table(e);
    /* Named zones of budgets into the zone table, before the rows that
     * name them; the parser read each already: only a file that changed
     * since, or more zones than the table keeps, fails here. */
    if ((rc = km__tz_bind_config(e, cfg, NULL, 0)) != KM_OK)
        goto fail;
    km__fleet_init(e, cfg); /* before the keys: they read its "all" */
    km__pool_init(e, cfg);
    KM__FAULT("create.filled");
    km__admin_init(e);
    km__epoch_attach(&e->seg);
    km__seg_publish(&e->seg, KM_FORMAT_VERSION);
    KM__FAULT("create.published");

    /* A new segment has nothing to reap. */
    if ((rc = claim_slot(e)) != KM_OK)
        goto fail;
    *out = e;
    return KM_OK;
fail:
    if (obj)
        km__seg_discard(&e->seg, obj);
    else
        km__seg_close_raw(&e->seg);
    free(e);
    return rc;
}

/* The permission bits a named segment gets from a caller's `mode` (see
 * km_create): 0 is 0600; bits outside 0777 are refused, and so is o+w
 * unless KM_MODE_FORCE. */
static int mode_check(unsigned *mode)
{
    unsigned perm = *mode & ~KM_MODE_FORCE;
    if (perm & ~0777u)
        return KM_EINVAL;
    if ((perm & 0002u) && !(*mode & KM_MODE_FORCE))
        return KM_EINVAL;
    *mode = perm ? perm : 0600;
    return KM_OK;
}

int km__create_tmp(const char *name, const km_config *cfg, unsigned mode, km_env **out,
                   char tmp[KM__SEG_NAME_BUF])
{
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm);

    if (rc)
        return rc;
    if (km__seg_is_tmp(nm))
        return KM_ENAME; /* the temporaries' names are not for segments */
    if (!out || !cfg_ok(cfg))
        return KM_EINVAL;
    *out = NULL;
    if ((rc = mode_check(&mode)) != KM_OK)
        return rc;
    /* Refuse early if the name is taken (the rename checks again). */
    if ((rc = km__seg_name_free(nm)) != KM_OK)
        return rc;
    /* What killed creators of this name left (best effort). */
    (void)km__seg_sweep(nm, NULL);
    if ((rc = km__seg_tmp_name(nm, tmp)) != KM_OK)
        return rc;
    return build(tmp, cfg, mode, out);
}

int km__create_commit(km_env *e, const char *tmp, const char *name)
{
    KM__FAULT("create.renaming");
    /* Publish under the real name; never over an existing segment. */
    int rc = km__seg_rename_noreplace(tmp, name);
    if (rc != KM_OK) {
        int saved = errno;
        km_close(e);
        km__seg_unlink(tmp);
        errno = saved;
    }
    return rc;
}

KM_EXTERN int km_create(const char *name, const km_config *cfg, unsigned mode,
                        km_env **out)
{
    char tmp[KM__SEG_NAME_BUF];
    km_env *e;
    int rc = km__create_tmp(name, cfg, mode, &e, tmp);
    if (rc != KM_OK)
        return rc;
    if ((rc = km__create_commit(e, tmp, name)) != KM_OK)
        return rc;
    *out = e;
    return KM_OK;
}

int km__create_private(const km_config *cfg, km_env **out)
{
    if (!out || !cfg_ok(cfg))
        return KM_EINVAL;
    *out = NULL;
    return build(NULL, cfg, 0600, out);
}

KM_EXTERN int km_create_private(const km_config *cfg, km_env **out)
{
    return km__create_private(cfg, out);
}

#define KM__OPEN_FLAGS (KM_OPEN_NO_REAP | KM_OPEN_READONLY | KM_OPEN_NO_SLOT)

/* After the mapping was validated by shm/: the pool's words, then what the
 * flags ask (see the top of this file). */
static int attach_mapped(km_env *e, unsigned flags)
{
    int rc = geom_valid(&e->geom);
    if (rc == KM_OK)
        e->tzt = km__tz_table(e);
    /* Pools are added and removed live (src/reconfig.c): the handle
     * addresses every pool row, and each row's state says whether it holds
     * a pool (the header's n_pools only counts the rows ever used). */
    e->geom.n_pools = e->geom.cap_pools;
    if (rc != KM_OK || (flags & KM_OPEN_READONLY))
        return rc;
    km__epoch_attach(&e->seg);
    /* Every attach first releases what dead processes left behind (we
     * have no tag yet: the reaper marks slots with our pid instead). */
    if (!(flags & KM_OPEN_NO_REAP))
        km__reap_dead(e, NULL, 0);
    return flags & KM_OPEN_NO_SLOT ? KM_OK : claim_slot(e);
}

/* Attach by name, or through descriptor fd if name is NULL. */
static int attach(const char *name, int fd, unsigned flags, km_env **out)
{
    char nm[KM__SEG_NAME_BUF];
    int rc = name ? km__seg_name(name, nm) : KM_OK, ro = (flags & KM_OPEN_READONLY) != 0;
    km_env *e;

    if (rc)
        return rc;
    if (!out || (flags & ~KM__OPEN_FLAGS))
        return KM_EINVAL;
    *out = NULL;
    if (!(e = env_new()))
        return KM_ENOMEM;
    rc = name ? km__seg_open_raw(nm, ro, KM_FORMAT_VERSION, km__layout_signature(), &e->seg, &e->geom)
              : km__seg_open_fd(fd, ro, KM_FORMAT_VERSION, km__layout_signature(), &e->seg, &e->geom);
    if (rc == KM_OK)
        rc = attach_mapped(e, flags);
    if (rc != KM_OK) {
        km__seg_close_raw(&e->seg); /* keeps errno */
        free(e);
        return rc;
    }
    *out = e;
    return KM_OK;
}

KM_EXTERN int km_open(const char *name, km_env **out) { return attach(name, -1, 0, out); }

KM_EXTERN int km_open_flags(const char *name, unsigned flags, km_env **out)
{
    return name ? attach(name, -1, flags, out) : KM_ENAME;
}

KM_EXTERN int km_open_fd(int fd, unsigned flags, km_env **out)
{
    return fd < 0 ? KM_EINVAL : attach(NULL, fd, flags, out);
}

KM_EXTERN int km_fd(km_env *e)
{
    return e && e->seg.fd >= 0 ? e->seg.fd : KM_EINVAL;
}

KM_EXTERN int km_close(km_env *e)
{
    if (!e)
        return KM_OK;
    /* A child after fork() holds a copy of its parent's handle: it must not
     * release the parent's leases nor its process slot.  A handle without
     * a slot (tag 0) holds neither. */
    if ((int)getpid() == e->seg.pid && e->seg.tag) {
        km__release_all_owned(e, e->seg.tag); /* T1: before the slot is offered */
        km__epoch_rows_reset(&e->seg, e->seg.proc_slot);
        km__proc_release(&e->seg);
    }
    km__seg_close_raw(&e->seg);
    free(e->usage_defer); /* an uncommitted deferred drain: delivered again */
    free(e);
    return KM_OK;
}

KM_EXTERN int km_unlink(const char *name) { return km__seg_unlink(name); }
