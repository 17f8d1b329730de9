/*
 * shm/segment.c - create, publish, map, validate, rename and unlink a
 * segment (the interface and the two-phase creation: shm/shm.h).
 *
 * Creation: shm_open(O_CREAT|O_EXCL) with the requested mode, size it with
 * ftruncate and reserve its pages with posix_fallocate (so a full /dev/shm
 * fails here with an error instead of a SIGBUS later), map it and write
 * shm/'s header words.  The client fills the rest, then publishes: format,
 * then magic with a release store.  An attacher loads magic with acquire;
 * seeing KM__MAGIC it sees everything the creator wrote before.  A creation
 * that fails before it is complete is unlinked, so it leaves nothing behind.
 *
 * Attach: fstat first and map exactly the object's size, so every check
 * reads inside the mapping: a foreign, short or truncated object gives an
 * error code, never a SIGBUS.  (An object truncated by someone else after we
 * attached can still fault; segments are 0600 by default, so only their
 * owner can do that.)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ck_pr.h>

#include "clock.h"
#include "shm.h"

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

static int errno_to_km(int e)
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

/* Fill the handle's part of shm/: where, how big, and whose. */
static void seg_init(km__seg *s, void *base, size_t size, const km__hdr *h)
{
    static uint64_t serial; /* mappings of this process, numbered from 1 */
    memset(s, 0, sizeof *s);
    s->base = base;
    s->map_size = size;
    s->hdr = (km__hdr *)base;
    s->cap_procs = h->cap_procs;
    s->off_procs = h->off_procs;
    s->off_readers = h->off_readers;
    s->pid = (int)getpid();
    /* Atomic: handles may be opened by several threads at once. */
    s->serial = ck_pr_faa_64(&serial, 1) + 1;
}

/* Is shm/'s own geometry usable inside `size` bytes?  The process table and
 * the reader rows must lie inside, line-aligned, after the header. */
static int geom_ok(uint32_t cap_procs, uint64_t off_procs, uint64_t off_readers, uint64_t size)
{
    uint64_t procs = (uint64_t)cap_procs * sizeof(km__proc);
    uint64_t rows = (uint64_t)cap_procs * KM__RDR_PER_PROC * sizeof(km__rdr);
    return cap_procs != 0 && cap_procs <= KM_PROCS_MAX &&
           off_procs >= sizeof(km__hdr) && off_procs % KM__LINE == 0 &&
           off_procs <= size && procs <= size - off_procs &&
           off_readers >= sizeof(km__hdr) && off_readers % KM__LINE == 0 &&
           off_readers <= size && rows <= size - off_readers;
}

int km__seg_create_raw(const char *name, const km__seg_geom *g, unsigned mode, km__seg *s)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm), fd, saved;
    void *base;

    if (rc)
        return rc;
    if (!g || !s || g->size < sizeof(km__hdr) ||
        !geom_ok(g->cap_procs, g->off_procs, g->off_readers, g->size))
        return KM_EINVAL;
    fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL, (mode_t)(mode & 0777));
    if (fd < 0)
        return errno_to_km(errno);
    /* shm_open applies the umask; the caller asked for exactly `mode`. */
    if (fchmod(fd, (mode_t)(mode & 0777)) != 0 || ftruncate(fd, (off_t)g->size) != 0) {
        rc = errno_to_km(errno);
        goto fail;
    }
    if ((saved = posix_fallocate(fd, 0, (off_t)g->size)) != 0) {
        errno = saved;
        rc = saved == ENOSPC ? KM_ENOMEM : KM_ESYS;
        goto fail;
    }
    base = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = errno_to_km(errno);
        goto fail;
    }
    close(fd); /* the mapping keeps the object */

    km__hdr *h = base;
    h->hdr_size = sizeof(km__hdr);
    h->layout_sig = g->layout_sig;
    h->seg_size = g->size;
    h->cap_procs = g->cap_procs;
    h->off_procs = g->off_procs;
    h->off_readers = g->off_readers;
    h->epoch = 1; /* 0 in a reader row means idle */
    h->synced = 1;
    h->created_wall_ns = km__wall_ns();
    seg_init(s, base, g->size, h);
    return KM_OK;

fail:
    saved = errno;
    shm_unlink(nm);
    close(fd);
    errno = saved;
    return rc;
}

void km__seg_publish(km__seg *s, uint32_t format)
{
    /* Everything written before happens-before an attacher's acquire load
     * of magic that returns KM__MAGIC. */
    ck_pr_store_32(&s->hdr->format, format);
    ck_pr_fence_store(); /* format before magic */
    ck_pr_store_64(&s->hdr->magic, KM__MAGIC);
}

void km__seg_discard(km__seg *s, const char *name)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int saved = errno;
    km__seg_close_raw(s);
    if (km__seg_name(name, nm) == KM_OK)
        shm_unlink(nm);
    errno = saved;
}

/* Check a mapped object of `size` bytes against what shm/ knows; KM_OK with
 * its header copied to *copy.  Everything after the magic is checked on that
 * copy, which the handle keeps: what was validated is what is used,
 * whatever shared memory holds later. */
static int validate(const void *base, uint64_t size, uint32_t format, uint64_t layout_sig,
                    km__hdr *copy)
{
    const km__hdr *h = base;
    uint64_t magic;

    if (size < sizeof(uint64_t))
        return size == 0 ? KM_ENOTREADY : KM_ENOTKM;
    /* Pairs with the creator's release store of magic (km__seg_publish). */
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
    if (h->format != format)
        return KM_EFORMAT;
    if (h->hdr_size != sizeof(km__hdr) || h->layout_sig != layout_sig)
        return KM_ELAYOUT;
    if (h->seg_size > size)
        return KM_ETRUNC;
    if (!geom_ok(h->cap_procs, h->off_procs, h->off_readers, h->seg_size))
        return KM_ECORRUPT;
    return KM_OK;
}

int km__seg_open_raw(const char *name, uint32_t format, uint64_t layout_sig, km__seg *s,
                     km__hdr *copy)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm), fd, saved;
    struct stat st;
    void *base;

    if (rc)
        return rc;
    fd = shm_open(nm, O_RDWR, 0);
    if (fd < 0)
        return errno_to_km(errno);
    if (fstat(fd, &st) != 0) {
        rc = errno_to_km(errno);
        goto out_fd;
    }
    if (st.st_size == 0) {
        rc = KM_ENOTREADY;
        goto out_fd;
    }
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = errno_to_km(errno);
        goto out_fd;
    }
    rc = validate(base, (uint64_t)st.st_size, format, layout_sig, copy);
    if (rc != KM_OK) {
        saved = errno;
        munmap(base, (size_t)st.st_size);
        errno = saved;
        goto out_fd;
    }
    seg_init(s, base, (size_t)st.st_size, copy);
out_fd:
    saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

void km__seg_close_raw(km__seg *s)
{
    int saved = errno;
    if (s->base)
        munmap(s->base, s->map_size);
    s->base = NULL;
    s->hdr = NULL;
    errno = saved;
}

int km__seg_unlink(const char *name)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    return shm_unlink(nm) == 0 ? KM_OK : errno_to_km(errno);
}

int km__seg_name_free(const char *name)
{
    char nm[KM_SEG_NAME_MAX + 2];
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    int fd = shm_open(nm, O_RDONLY, 0);
    if (fd >= 0) {
        close(fd);
        return KM_EEXIST;
    }
    return errno == ENOENT ? KM_OK : KM_ESYS;
}

int km__seg_rename_noreplace(const char *from, const char *to)
{
    char f[KM_SEG_NAME_MAX + 2], t[KM_SEG_NAME_MAX + 2];
    char pf[sizeof KM__SHM_DIR + sizeof f], pt[sizeof KM__SHM_DIR + sizeof t];
    int rc;
    if ((rc = km__seg_name(from, f)) != KM_OK || (rc = km__seg_name(to, t)) != KM_OK)
        return rc;
    /* Where shm_open keeps its objects on Linux: a rename there is the
     * rename of the segment.  RENAME_NOREPLACE: an existing segment of the
     * target name is never replaced. */
    snprintf(pf, sizeof pf, "%s%s", KM__SHM_DIR, f);
    snprintf(pt, sizeof pt, "%s%s", KM__SHM_DIR, t);
    if (renameat2(AT_FDCWD, pf, AT_FDCWD, pt, RENAME_NOREPLACE) != 0)
        return errno == EEXIST ? KM_EEXIST : KM_ESYS;
    return KM_OK;
}
