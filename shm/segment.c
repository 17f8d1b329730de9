/*
 * shm/segment.c - create, attach, validate, detach and unlink a segment.
 *
 * Creation: shm_open(O_CREAT|O_EXCL) with the requested mode, size it with
 * ftruncate and reserve its pages with posix_fallocate (so a full /dev/shm
 * fails here with an error instead of a SIGBUS later), initialise every
 * structure, then publish: format, then magic with a release store.  An
 * attacher loads magic with acquire; seeing KM__MAGIC it sees everything the
 * creator wrote before.  Any failure before publication unlinks the name, so
 * a failed create leaves nothing behind.
 *
 * Attach: fstat first and map exactly the object's size, so every check
 * reads inside the mapping: a foreign, short or truncated object gives an
 * error code, never a SIGBUS.  (An object truncated by someone else after we
 * attached can still fault; segments are 0600 by default, so only their
 * owner can do that.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "../src/internal.h"

/* FNV-1a over the sizes, alignments and offsets that define the layout. */
uint64_t km__layout_signature(void)
{
    const uint64_t v[] = {
        sizeof(km__hdr), offsetof(km__hdr, n_procs),
        sizeof(km__pool), offsetof(km__pool, name), offsetof(km__pool, waiters),
        sizeof(km__model), sizeof(km__mwin), offsetof(km__key, meta), KM_META_MAX,
        sizeof(km__member),
        sizeof(km__gcra), _Alignof(km__gcra),
        sizeof(km__key), offsetof(km__hdr, off_busy), offsetof(km__key, latency_ema_ns),
        offsetof(km__key, state), offsetof(km__key, emission_ns),
        offsetof(km__key, id), offsetof(km__key, secret),
        sizeof(km__lease), offsetof(km__lease, phase), offsetof(km__lease, outcomes),
        sizeof(km__proc), offsetof(km__proc, start_time),
        sizeof(km__rdr), KM__RDR_PER_PROC, KM__RDR_OVF_SHIFT,
        offsetof(km__hdr, epoch), offsetof(km__pool, cur), sizeof(km__pview),
        offsetof(km__key, retire_epoch), sizeof(km__uring), sizeof(km__uev),
        offsetof(km__hdr, off_usage), offsetof(km__uev, outcome),
        KM_WIN_COUNT, KM_OUT_COUNT, KM_ID_MAX, KM_SECRET_MAX, KM_INFLIGHT_MAX,
        KM__URINGS_PER_PROC,
        0x0102030405060708ull /* byte order */
    };
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)v;
    for (size_t i = 0; i < sizeof(v); i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int km__seg_name(const char *name, char out[KM_SEG_NAME_MAX + 2])
{
    if (!name)
        return KM_ENAME;
    if (name[0] == '/')
        name++;
    size_t n = strlen(name);
    if (n == 0 || n > KM_SEG_NAME_MAX || strchr(name, '/') ||
        strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return KM_ENAME;
    out[0] = '/';
    memcpy(out + 1, name, n + 1);
    return KM_OK;
}

static uint64_t km__align(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Offsets of each region for the given capacities; returns the total size.
 * Used by the creator to lay out and by an attacher to validate.  off[]:
 * pools, members, models, keys, per-model windows, leases, in-flight flags,
 * procs, reader rows, usage rings. */
enum { KM__OFF_POOLS, KM__OFF_MEMBERS, KM__OFF_MODELS, KM__OFF_KEYS,
       KM__OFF_MWIN, KM__OFF_LEASES, KM__OFF_BUSY, KM__OFF_PROCS, KM__OFF_READERS,
       KM__OFF_USAGE, KM__OFF_N };

static uint64_t km__layout(uint32_t keys, uint32_t pools, uint32_t procs,
                           uint32_t inflight, uint32_t models, uint32_t usage,
                           uint64_t off[KM__OFF_N])
{
    uint64_t o = km__align(sizeof(km__hdr), KM__LINE);
    off[KM__OFF_POOLS] = o;
    o += (uint64_t)pools * sizeof(km__pool);
    off[KM__OFF_MEMBERS] = o;
    o = km__align(o + (uint64_t)pools * 2 * keys * sizeof(km__member), KM__LINE);
    off[KM__OFF_MODELS] = o;
    o += (uint64_t)pools * models * sizeof(km__model);
    off[KM__OFF_KEYS] = o;
    o += (uint64_t)keys * sizeof(km__key);
    off[KM__OFF_MWIN] = o;
    o += (uint64_t)keys * models * sizeof(km__mwin);
    off[KM__OFF_LEASES] = o;
    o += (uint64_t)keys * inflight * sizeof(km__lease);
    off[KM__OFF_BUSY] = o;
    o += (uint64_t)keys * km__busy_stride(inflight);
    off[KM__OFF_PROCS] = o;
    o += (uint64_t)procs * sizeof(km__proc);
    off[KM__OFF_READERS] = o;
    o += (uint64_t)procs * KM__RDR_PER_PROC * sizeof(km__rdr);
    off[KM__OFF_USAGE] = o;
    o += (uint64_t)procs * (KM__URINGS_PER_PROC + (uint64_t)usage) * KM__LINE;
    return km__align(o, 4096);
}

static int km__errno_to_km(int e)
{
    switch (e) {
    case ENOENT:
        return KM_ENOENT;
    case EEXIST:
        return KM_EEXIST;
    case EACCES:
    case EPERM:
        return KM_EACCES;
    case ENOMEM:
        return KM_ENOMEM;
    case ENAMETOOLONG:
    case EINVAL:
        return KM_ENAME;
    default:
        return KM_ESYS;
    }
}

static km_env *km__env_new(void *base, size_t size)
{
    km_env *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->base = base;
    e->map_size = size;
    e->hdr = (km__hdr *)base;
    e->pid = (int)getpid();
    e->admin_timeout_ms = 1000;
    static uint64_t serial; /* handles of this process, numbered from 1 */
    e->serial = ck_pr_faa_64(&serial, 1) + 1;
    return e;
}

int km__seg_create(const char *name, const km_config *cfg, unsigned mode,
                   km_env **out)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm), fd = -1, saved;
    void *base = MAP_FAILED;
    km_env *e = NULL;
    uint64_t off[KM__OFF_N], size;

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
    if (cfg->cap_usage > KM__MAX_CAP_USAGE || (cfg->cap_usage & (cfg->cap_usage - 1)) || cfg->cap_usage == 1)
        return KM_EINVAL;
    size = km__layout(cfg->cap_keys, cfg->cap_pools, cfg->cap_procs,
                      cfg->cap_inflight, cap_models, cfg->cap_usage, off);

    fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL, (mode_t)(mode & 0777));
    if (fd < 0)
        return km__errno_to_km(errno);
    /* shm_open applies the umask; the caller asked for exactly `mode`. */
    if (fchmod(fd, (mode_t)(mode & 0777)) != 0 || ftruncate(fd, (off_t)size) != 0) {
        rc = km__errno_to_km(errno);
        goto fail;
    }
    if ((saved = posix_fallocate(fd, 0, (off_t)size)) != 0) {
        errno = saved;
        rc = saved == ENOSPC ? KM_ENOMEM : KM_ESYS;
        goto fail;
    }
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = km__errno_to_km(errno);
        goto fail;
    }
    e = km__env_new(base, size);
    if (!e) {
        rc = KM_ENOMEM;
        goto fail;
    }

    km__hdr *h = e->hdr;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    h->hdr_size = sizeof(km__hdr);
    h->layout_sig = km__layout_signature();
    h->seg_size = size;
    h->cap_keys = cfg->cap_keys;
    h->cap_pools = cfg->cap_pools;
    h->cap_procs = cfg->cap_procs;
    h->cap_inflight = cfg->cap_inflight;
    h->cap_models = cap_models;
    h->off_pools = off[KM__OFF_POOLS];
    h->off_members = off[KM__OFF_MEMBERS];
    h->off_models = off[KM__OFF_MODELS];
    h->off_keys = off[KM__OFF_KEYS];
    h->off_mwin = off[KM__OFF_MWIN];
    h->off_leases = off[KM__OFF_LEASES];
    h->off_busy = off[KM__OFF_BUSY];
    h->off_procs = off[KM__OFF_PROCS];
    h->off_readers = off[KM__OFF_READERS];
    h->off_usage = off[KM__OFF_USAGE];
    h->cap_usage = cfg->cap_usage;
    h->epoch = 1;  /* 0 in a reader row means idle */
    h->synced = 1;
    h->created_wall_ns = (uint64_t)wall.tv_sec * KM__NS_PER_S + (uint64_t)wall.tv_nsec;
    e->geom = *h; /* the creator's own values (see km_env.geom) */
    km__pool_init(e, cfg);
    km__admin_init(e);
    km__epoch_attach(e);

    /* Publish: everything above happens-before an attacher's acquire load of
     * magic that returns KM__MAGIC. */
    ck_pr_store_32(&h->format, KM_FORMAT_VERSION);
    ck_pr_fence_store(); /* format before magic */
    ck_pr_store_64(&h->magic, KM__MAGIC);

    rc = km__proc_register(e, 0); /* a new segment has nothing to reap */
    if (rc)
        goto fail;
    close(fd);
    *out = e;
    return KM_OK;

fail:
    saved = errno;
    free(e);
    if (base != MAP_FAILED)
        munmap(base, size);
    if (fd >= 0) {
        shm_unlink(nm);
        close(fd);
    }
    errno = saved;
    return rc;
}

/* Check a mapped object of `size` bytes; KM_OK if it is a usable segment,
 * with its header copied to *copy.  Everything after the magic is checked on
 * that copy, which the handle keeps (km_env.geom): what was validated is
 * what is used, whatever shared memory holds later. */
static int km__seg_validate(const void *base, uint64_t size, km__hdr *copy)
{
    const km__hdr *h = base;
    uint64_t magic, off[KM__OFF_N];

    if (size < sizeof(uint64_t))
        return size == 0 ? KM_ENOTREADY : KM_ENOTKM;
    /* Pairs with the creator's release store of magic. */
    magic = ck_pr_load_64(&h->magic);
    ck_pr_fence_acquire();
    if (magic == 0)
        return KM_ENOTREADY;
    if (magic != KM__MAGIC)
        return KM_ENOTKM;
    if (size < sizeof(km__hdr))
        return KM_ETRUNC;
    memcpy(copy, base, sizeof *copy);
    h = copy;
    if (h->format != KM_FORMAT_VERSION)
        return KM_EFORMAT;
    if (h->hdr_size != sizeof(km__hdr) || h->layout_sig != km__layout_signature())
        return KM_ELAYOUT;
    if (h->seg_size > size)
        return KM_ETRUNC;
    /* Every offset must be the one the capacities imply, so no later access
     * derived from the header can leave the mapping. */
    if (h->cap_keys == 0 || h->cap_keys > KM_KEYS_MAX || h->cap_pools == 0 ||
        h->cap_pools > KM_POOLS_MAX || h->cap_procs == 0 ||
        h->cap_procs > KM_PROCS_MAX || h->cap_inflight == 0 ||
        h->cap_inflight > KM_INFLIGHT_MAX || h->cap_models == 0 ||
        h->cap_models > KM_MODELS_MAX || h->n_pools > h->cap_pools ||
        h->n_keys > h->cap_keys)
        return KM_ECORRUPT;
    if (h->cap_usage > KM__MAX_CAP_USAGE || (h->cap_usage & (h->cap_usage - 1)) || h->cap_usage == 1)
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

int km__seg_open(const char *name, unsigned flags, km_env **out)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm), fd, saved;
    struct stat st;
    void *base;
    km_env *e;

    if (rc)
        return rc;
    if (!out)
        return KM_EINVAL;
    *out = NULL;
    fd = shm_open(nm, O_RDWR, 0);
    if (fd < 0)
        return km__errno_to_km(errno);
    if (fstat(fd, &st) != 0) {
        rc = km__errno_to_km(errno);
        goto out_fd;
    }
    if (st.st_size == 0) {
        rc = KM_ENOTREADY;
        goto out_fd;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = km__errno_to_km(errno);
        goto out_fd;
    }
    km__hdr copy;
    rc = km__seg_validate(base, (uint64_t)st.st_size, &copy);
    if (rc == KM_OK && !(e = km__env_new(base, (size_t)st.st_size)))
        rc = KM_ENOMEM;
    if (rc == KM_OK)
        e->geom = copy;
    if (rc == KM_OK)
        km__epoch_attach(e);
    if (rc == KM_OK && (rc = km__proc_register(e, !(flags & KM_OPEN_NO_REAP))) != KM_OK)
        free(e);
    if (rc != KM_OK) {
        saved = errno;
        munmap(base, (size_t)st.st_size);
        errno = saved;
        goto out_fd;
    }
    *out = e;
out_fd:
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int km__seg_close(km_env *e)
{
    if (!e)
        return KM_OK;
    /* A child after fork() holds a copy of its parent's handle: it must not
     * release the parent's leases nor its process slot. */
    if ((int)getpid() == e->pid)
        km__proc_deregister(e);
    munmap(e->base, e->map_size);
    free(e);
    return KM_OK;
}

KM_EXTERN int km_create(const char *name, const km_config *cfg, unsigned mode,
                        km_env **out)
{
    return km__seg_create(name, cfg, mode, out);
}

KM_EXTERN int km_open(const char *name, km_env **out) { return km__seg_open(name, 0, out); }

KM_EXTERN int km_open_flags(const char *name, unsigned flags, km_env **out)
{
    if (flags & ~KM_OPEN_NO_REAP)
        return KM_EINVAL;
    return km__seg_open(name, flags, out);
}

KM_EXTERN int km_close(km_env *env) { return km__seg_close(env); }

KM_EXTERN int km_unlink(const char *name)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    return shm_unlink(nm) == 0 ? KM_OK : km__errno_to_km(errno);
}
