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
 * owner can do that.  A private segment's memfd is sealed against it.)
 *
 * Temporaries (shm/shm.h): ".kmtmp.<pid>.<start>.<serial>.<name>".  The
 * creator's start time is what the process table compares (shm/proc.c), so
 * a temporary whose pid was reused by another process is still known dead;
 * a sweep removes only those.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ck_pr.h>

#include "clock.h"
#include "shm.h"

int km__seg_is_tmp(const char *name)
{
    if (name && name[0] == '/')
        name++;
    return name && strncmp(name, KM__TMP_PREFIX, sizeof KM__TMP_PREFIX - 1) == 0;
}

int km__seg_name(const char *name, char out[KM__SEG_NAME_BUF])
{
    if (!name)
        return KM_ENAME;
    if (name[0] == '/')
        name++;
    size_t n = strnlen(name, KM__SEG_OBJ_MAX + 1);
    if (n == 0 || n > (km__seg_is_tmp(name) ? KM__SEG_OBJ_MAX : KM_SEG_NAME_MAX) ||
        strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
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
    s->fd = -1;
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

/* Size a new object, reserve its pages (a full /dev/shm fails here, not
 * with a SIGBUS later), map it, and write shm/'s header words. */
static int create_fd(int fd, const km__seg_geom *g, km__seg *s)
{
    int saved;
    void *base;
    if (ftruncate(fd, (off_t)g->size) != 0)
        return errno_to_km(errno);
    if ((saved = posix_fallocate(fd, 0, (off_t)g->size)) != 0) {
        errno = saved;
        return saved == ENOSPC ? KM_ENOMEM : KM_ESYS;
    }
    base = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return errno_to_km(errno);

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
}

static int geom_usable(const km__seg_geom *g)
{
    return g && g->size >= sizeof(km__hdr) &&
           geom_ok(g->cap_procs, g->off_procs, g->off_readers, g->size);
}

int km__seg_create_raw(const char *name, const km__seg_geom *g, unsigned mode, km__seg *s)
{
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm), fd, saved;

    if (rc)
        return rc;
    if (!s || !geom_usable(g))
        return KM_EINVAL;
    fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL, (mode_t)(mode & 0777));
    if (fd < 0)
        return errno_to_km(errno);
    /* shm_open applies the umask; the caller asked for exactly `mode`. */
    rc = fchmod(fd, (mode_t)(mode & 0777)) != 0 ? errno_to_km(errno) : create_fd(fd, g, s);
    saved = errno;
    if (rc != KM_OK)
        shm_unlink(nm);
    close(fd); /* the mapping keeps the object */
    errno = saved;
    return rc;
}

int km__seg_create_memfd(const km__seg_geom *g, km__seg *s)
{
    int rc, fd, saved;
    if (!s || !geom_usable(g))
        return KM_EINVAL;
    /* Close-on-exec: fork() keeps the descriptor and the mapping for the
     * children, but a program exec'd later holds no secret. */
    fd = memfd_create("keymesh-private", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return errno_to_km(errno);
    rc = create_fd(fd, g, s);
    /* Sealed once sized: no process can truncate it under a mapping (no
     * SIGBUS), nor grow it. */
    if (rc == KM_OK && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        rc = errno_to_km(errno);
        km__seg_close_raw(s); /* s->fd is still -1 */
    }
    if (rc != KM_OK) {
        saved = errno;
        close(fd);
        errno = saved;
        return rc;
    }
    s->fd = fd;
    return KM_OK;
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
    char nm[KM__SEG_NAME_BUF];
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

/* Map the object behind fd whole (read-only if ro) and validate it. */
static int open_fd(int fd, int ro, uint32_t format, uint64_t layout_sig, km__seg *s,
                   km__hdr *copy)
{
    struct stat st;
    void *base;
    int rc, saved;

    if (fstat(fd, &st) != 0)
        return errno_to_km(errno);
    if (st.st_size == 0)
        return KM_ENOTREADY;
    base = mmap(NULL, (size_t)st.st_size, ro ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED,
                fd, 0);
    if (base == MAP_FAILED)
        return errno_to_km(errno);
    rc = validate(base, (uint64_t)st.st_size, format, layout_sig, copy);
    if (rc != KM_OK) {
        saved = errno;
        munmap(base, (size_t)st.st_size);
        errno = saved;
        return rc;
    }
    seg_init(s, base, (size_t)st.st_size, copy);
    s->ro = ro != 0;
    return KM_OK;
}

int km__seg_open_raw(const char *name, int ro, uint32_t format, uint64_t layout_sig,
                     km__seg *s, km__hdr *copy)
{
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm), fd, saved;

    if (rc)
        return rc;
    fd = shm_open(nm, ro ? O_RDONLY : O_RDWR, 0);
    if (fd < 0)
        return errno_to_km(errno);
    rc = open_fd(fd, ro, format, layout_sig, s, copy);
    saved = errno;
    close(fd); /* the mapping keeps the object */
    errno = saved;
    return rc;
}

int km__seg_open_fd(int fd, int ro, uint32_t format, uint64_t layout_sig, km__seg *s,
                    km__hdr *copy)
{
    int rc, mine, saved;
    if (fd < 0)
        return KM_EINVAL;
    /* The handle keeps its own descriptor: the caller may close `fd`. */
    if ((mine = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
        return errno == EBADF ? KM_EINVAL : errno_to_km(errno);
    rc = open_fd(mine, ro, format, layout_sig, s, copy);
    if (rc != KM_OK) {
        saved = errno;
        close(mine);
        errno = saved;
        return rc;
    }
    s->fd = mine;
    return KM_OK;
}

void km__seg_close_raw(km__seg *s)
{
    int saved = errno;
    if (s->base)
        munmap(s->base, s->map_size);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->base = NULL;
    s->hdr = NULL;
    errno = saved;
}

int km__seg_stat_of(const char *name, km__seg_stat *out)
{
    char nm[KM__SEG_NAME_BUF], path[sizeof KM__SHM_DIR + KM__SEG_NAME_BUF];
    struct stat st;
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s%s", KM__SHM_DIR, nm);
    if (stat(path, &st) != 0)
        return errno_to_km(errno);
    out->size = (uint64_t)st.st_size;
    out->mode = (uint32_t)(st.st_mode & 07777);
    out->uid = (uint32_t)st.st_uid;
    out->gid = (uint32_t)st.st_gid;
    return KM_OK;
}

int km__seg_peek(const char *name, uint64_t *magic, uint32_t *format)
{
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm), fd, saved;
    struct {
        uint64_t magic;
        uint32_t format;
    } head = {0, 0};
    _Static_assert(offsetof(km__hdr, format) == 8, "format follows magic");
    if (rc)
        return rc;
    if ((fd = shm_open(nm, O_RDONLY, 0)) < 0)
        return errno_to_km(errno);
    /* A read, not a mapping: a short object reads short (no SIGBUS). */
    ssize_t n = pread(fd, &head, 12, 0);
    saved = errno;
    close(fd);
    errno = saved;
    if (n < 0)
        return errno_to_km(errno);
    *magic = n >= 8 ? head.magic : 0;
    *format = n >= 12 ? head.format : 0;
    return KM_OK;
}

int km__seg_unlink(const char *name)
{
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    return shm_unlink(nm) == 0 ? KM_OK : errno_to_km(errno);
}

int km__seg_name_free(const char *name)
{
    char nm[KM__SEG_NAME_BUF];
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
    char f[KM__SEG_NAME_BUF], t[KM__SEG_NAME_BUF];
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

/* ------------------------------------------------------------ temporaries */

int km__seg_tmp_name(const char *name, char out[KM__SEG_NAME_BUF])
{
    static uint32_t serial; /* temporaries of this process */
    char nm[KM__SEG_NAME_BUF];
    int rc = km__seg_name(name, nm);
    if (rc)
        return rc;
    if (km__seg_is_tmp(nm))
        return KM_ENAME;
    uint32_t pid = (uint32_t)getpid();
    /* Atomic: several threads may create at once. */
    uint32_t n = ck_pr_faa_32(&serial, 1);
    int len = snprintf(out, KM__SEG_NAME_BUF, "/" KM__TMP_PREFIX "%" PRIu32 ".%" PRIu64 ".%" PRIu32 ".%s",
                       pid, km__pid_start_time(pid), n, nm + 1);
    return len > 0 && len <= KM__SEG_OBJ_MAX + 1 ? KM_OK : KM_ENAME;
}

/* A decimal number ending at '.': the value, and *p moved past the dot. */
static int dec_field(const char **p, uint64_t *v)
{
    const char *s = *p;
    uint64_t x = 0;
    if (*s < '0' || *s > '9')
        return 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (x > (UINT64_MAX - 9) / 10)
            return 0;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    if (*s != '.')
        return 0;
    *p = s + 1;
    *v = x;
    return 1;
}

int km__seg_tmp_parse(const char *name, km__tmp_info *t)
{
    uint64_t pid, start, serial;
    if (!km__seg_is_tmp(name))
        return KM_ENAME;
    const char *p = name + (name[0] == '/') + sizeof KM__TMP_PREFIX - 1;
    if (!dec_field(&p, &pid) || !dec_field(&p, &start) || !dec_field(&p, &serial) ||
        pid == 0 || pid > UINT32_MAX || !*p || strlen(p) > KM_SEG_NAME_MAX)
        return KM_ENAME;
    t->pid = (uint32_t)pid;
    t->start_time = start;
    memcpy(t->target, p, strlen(p) + 1);
    return KM_OK;
}

int km__seg_sweep(const char *name, uint32_t *removed)
{
    char nm[KM__SEG_NAME_BUF], obj[KM__SEG_NAME_BUF];
    uint32_t n = 0;
    int rc;
    if (removed)
        *removed = 0;
    if (name && (rc = km__seg_name(name, nm)) != KM_OK)
        return rc;
    DIR *d = opendir(KM__SHM_DIR);
    if (!d)
        return KM_ESYS;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        km__tmp_info t;
        if (km__seg_tmp_parse(de->d_name, &t) != KM_OK || (name && strcmp(t.target, nm + 1) != 0))
            continue;
        /* A creator alive (same pid, same start time) is still building it. */
        if (km__pid_alive(t.pid, t.start_time))
            continue;
        if (snprintf(obj, sizeof obj, "/%s", de->d_name) >= (int)sizeof obj)
            continue;
        if (shm_unlink(obj) == 0)
            n++;
        /* else: another user's (the sticky /dev/shm refuses), or another
         * sweeper was first: not ours to report */
    }
    closedir(d);
    if (removed)
        *removed = n;
    return KM_OK;
}
