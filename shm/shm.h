/*
 * shm/shm.h - the substrate: a named shared-memory segment, its process
 * table and its cross-process epochs.  Internal; not installed.
 *
 * shm/ knows how a segment is created, published, mapped, validated and
 * named, who is attached to it and whether they live, and when every reader
 * that could see a retired thing has left (shm/epoch.c).  It knows nothing
 * of keys, leases, limits or usage: those are its client's, src/, which
 * composes the lifecycle (src/attach.c: create, open, close) and drives what
 * must happen to a dead process's leases (src/reap.c: iterate the dead slots,
 * release what they hold, then free them).  Nothing under shm/ includes a
 * src/ header or calls a src/ function; keymesh.h is included for the error
 * codes and name limits only.
 *
 * The two-phase creation is Knot Resolver's lib/mmapped.c pattern:
 *   km__seg_create_raw   create, size, reserve and map the object; write
 *                        shm/'s header words; magic stays 0, so an attacher
 *                        gets KM_ENOTREADY
 *   (the client writes its header words and its regions)
 *   km__seg_publish      format, then magic with release semantics: an
 *                        attacher that loads the magic (acquire) sees
 *                        everything written before
 * and km__seg_discard unlinks a segment whose creation failed, so a failed
 * create leaves nothing behind.
 *
 * Temporaries.  A segment is built under a hidden temporary name and renamed
 * into place without replacing anything (km__seg_rename_noreplace), so a
 * creator killed at any instruction leaves no half-made segment under the
 * real name, only a temporary.  The temporary's name says whose it is:
 *   .kmtmp.<pid>.<start time>.<serial>.<name>
 * (the creator's pid and process start time, as the process table judges
 * liveness, and a serial per process), so km__seg_sweep removes it once,
 * and only once, its creator is dead.
 *
 * Private segments (km__seg_create_memfd) live in a memfd: no name in
 * /dev/shm, freed by the kernel when the last process that maps it or holds
 * its descriptor ends.  Children inherit both across fork(); they attach
 * through the descriptor (km__seg_open_fd).
 */
#ifndef KM_SHM_H
#define KM_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "keymesh.h"
#include "seg.h"

/* Fast paths are small inline helpers; forcing them inline keeps the
 * acquire and release paths free of calls (measured: ~15 ns per pair).
 * Code shared across files on those paths lives in headers with this. */
#define KM__HOT static inline __attribute__((always_inline))

/* Thread-local variables use the initial-exec model: an offset from the
 * thread pointer, where the shared library's default (general dynamic)
 * calls __tls_get_addr at every access (measured: ~4 ns of a pair through
 * libkeymesh.so).  The variables take a few dozen bytes of the static TLS
 * surplus that glibc keeps for libraries loaded with dlopen (Python's ctypes
 * does so). */
#define KM__TLS __thread __attribute__((tls_model("initial-exec")))

/* Where POSIX shared-memory objects live on Linux (for renaming them). */
#define KM__SHM_DIR "/dev/shm"

/* A mapped segment as shm/ keeps it.  The client embeds it in its handle
 * (km_env.seg) and passes &env->seg down. */
typedef struct km__seg {
    void *base;        /* mapping of the whole object */
    size_t map_size;
    km__hdr *hdr;      /* the shared header: its live words */
    /* shm/'s geometry, from the header copy validated at attach (or from
     * the creator's own values): never read again from shared memory, so a
     * header rewritten after attach cannot steer an access outside the
     * mapping. */
    uint32_t cap_procs;
    uint64_t off_procs, off_readers;
    uint32_t proc_slot; /* our process slot, once claimed */
    uint64_t tag;      /* its tag (see km__proc_tag); 0 until claimed */
    int pid;           /* getpid() when mapped: fork detection */
    int rd_fence;      /* 1: no expedited membarrier; readers fence */
    uint64_t serial;   /* unique per mapping in this process (never 0) */
    int fd;            /* private segment: the descriptor kept (close_raw
                        * closes it); -1 for a named one */
    int ro;            /* mapped read-only (PROT_READ): writes fault */
} km__seg;

/* Bytes of a normalised object name: "/", up to KM__SEG_OBJ_MAX characters
 * (a public name, at most KM_SEG_NAME_MAX, or a temporary's), NUL.
 * NAME_MAX of /dev/shm is 255. */
#define KM__SEG_OBJ_MAX 254
#define KM__SEG_NAME_BUF (KM__SEG_OBJ_MAX + 2)
/* Temporaries: this prefix, then "<pid>.<start>.<serial>.<name>". */
#define KM__TMP_PREFIX ".kmtmp." /* see "Temporaries" above */

/* ------------------------------------------------------- shm/segment.c */

/* "name" or "/name" -> "/name"; KM_ENAME if it is not a usable name: at
 * most KM_SEG_NAME_MAX characters, or a temporary's name (KM__TMP_PREFIX,
 * at most KM__SEG_OBJ_MAX). */
int km__seg_name(const char *name, char out[KM__SEG_NAME_BUF]);
/* Is `name` ("name" or "/name") a temporary's name (by its prefix)? */
int km__seg_is_tmp(const char *name);

/* What shm/ writes into a new header besides magic and format. */
typedef struct km__seg_geom {
    uint64_t size;       /* bytes of the object, a multiple of the page */
    uint64_t layout_sig; /* the client's layout signature */
    uint32_t cap_procs;  /* process slots, 1..KM_PROCS_MAX */
    uint64_t off_procs, off_readers; /* line-aligned, inside `size` */
} km__seg_geom;

/* Create object `name` (O_EXCL, permission bits `mode` exactly, umask
 * aside), give it g->size bytes with its pages reserved (a full /dev/shm
 * fails here, not with a SIGBUS later), map it, and write shm/'s header
 * words: hdr_size, layout_sig, seg_size, cap_procs, off_procs, off_readers,
 * created_wall_ns, and epoch = synced = 1.  Not published: magic is 0.
 * KM_OK and *s filled, or an error with nothing left behind. */
int km__seg_create_raw(const char *name, const km__seg_geom *g, unsigned mode, km__seg *s);
/* Publish a segment created by km__seg_create_raw and filled by its client:
 * format, then magic (release). */
void km__seg_publish(km__seg *s, uint32_t format);
/* Unmap and unlink a segment this process created (published or not).
 * errno is kept. */
void km__seg_discard(km__seg *s, const char *name);

/* A private segment: as km__seg_create_raw, in a memfd (close-on-exec,
 * sealed against growing and shrinking, so no one can truncate it under a
 * mapping).  s->fd keeps the descriptor. */
int km__seg_create_memfd(const km__seg_geom *g, km__seg *s);

/* Map object `name` whole and check what shm/ knows of it: magic
 * (KM_ENOTREADY, KM_ENOTKM), the header's size (KM_ETRUNC), `format`
 * (KM_EFORMAT), hdr_size and `layout_sig` (KM_ELAYOUT), seg_size against
 * the object (KM_ETRUNC), and shm/'s geometry (KM_ECORRUPT).  On KM_OK the
 * header is copied to *copy, on which the client validates its own words,
 * and *s is filled from that same copy.  On error nothing stays mapped and
 * errno holds the reason of a KM_ESYS.  ro: open and map read-only (a user
 * with read permission only may look; every store faults). */
int km__seg_open_raw(const char *name, int ro, uint32_t format, uint64_t layout_sig,
                     km__seg *s, km__hdr *copy);
/* The same through an open descriptor (a private segment's, inherited
 * across fork() or passed over a socket); s->fd gets a close-on-exec
 * duplicate of `fd`. */
int km__seg_open_fd(int fd, int ro, uint32_t format, uint64_t layout_sig, km__seg *s,
                    km__hdr *copy);
/* Unmap, and close s->fd (the process slot is the caller's to give back
 * first).  errno is kept. */
void km__seg_close_raw(km__seg *s);

/* What stat says of object `name`: size, permission bits, owner.  KM_OK,
 * KM_ENOENT, KM_ENAME or KM_ESYS. */
typedef struct km__seg_stat {
    uint64_t size;
    uint32_t mode, uid, gid;
} km__seg_stat;
int km__seg_stat_of(const char *name, km__seg_stat *st);
/* The first bytes of object `name`: the magic word and the format (0 where
 * the object is shorter), for telling a KeyMesh object from another without
 * attaching.  KM_OK, or the error of opening it (KM_EACCES, KM_ENOENT...). */
int km__seg_peek(const char *name, uint64_t *magic, uint32_t *format);

/* A temporary of this process for segment `name`: a new name each call. */
int km__seg_tmp_name(const char *name, char out[KM__SEG_NAME_BUF]);
/* The parts of a temporary's name ("name" or "/name"): its creator and the
 * segment it was to become.  KM_OK, or KM_ENAME if it is not one. */
typedef struct km__tmp_info {
    uint32_t pid;
    uint64_t start_time;
    char target[KM_SEG_NAME_MAX + 1];
} km__tmp_info;
int km__seg_tmp_parse(const char *name, km__tmp_info *t);
/* Remove the temporaries of segment `name` (NULL: of every segment) whose
 * creator is dead; those this user may not remove are skipped.  *removed
 * (may be NULL) counts what was removed.  KM_OK, or KM_ESYS if the
 * directory cannot be read. */
int km__seg_sweep(const char *name, uint32_t *removed);
/* Remove a name; attached processes keep their mappings. */
int km__seg_unlink(const char *name);
/* KM_OK if no object has this name, KM_EEXIST if one has, else KM_ESYS. */
int km__seg_name_free(const char *name);
/* Rename segment `from` to `to`, never replacing an existing `to`
 * (renameat2 RENAME_NOREPLACE in KM__SHM_DIR): KM_OK, KM_EEXIST, KM_ENAME
 * or KM_ESYS (errno kept). */
int km__seg_rename_noreplace(const char *from, const char *to);

/* ---------------------------------------------------------- shm/proc.c */

/* A process slot's tag: (slot + 1) << 32 | pid.  Never 0 and never above
 * 2^44 (slot < KM_PROCS_MAX), so bits 62 and 63 are free for the client
 * (src/owner.h marks lease owners with them). */
static inline uint64_t km__proc_tag(uint32_t slot, uint32_t pid)
{
    return ((uint64_t)(slot + 1) << 32) | pid;
}
/* A slot's tag while a reaper frees it (T3): (slot + 1) << 32 | this bit |
 * the reaper's pid.  Pids stay below 2^22 (PID_MAX_LIMIT), so bit 31 is
 * never a pid's. */
#define KM__TAG_REAPING (UINT64_C(1) << 31)
static inline int km__tag_reaping(uint64_t tag) { return (tag & KM__TAG_REAPING) != 0; }
/* The slot a tag names, plus 1 (0: not a tag of any slot), and its pid (a
 * reaper's, for a reaping mark). */
static inline uint32_t km__tag_slot1(uint64_t tag) { return (uint32_t)(tag >> 32); }
static inline uint32_t km__tag_pid(uint64_t tag) { return (uint32_t)(tag & ~KM__TAG_REAPING); }

static inline km__proc *km__procs(const km__seg *s)
{
    return (km__proc *)KM__AT(s->base, s->off_procs);
}

/* Claim a free process slot for this process (s->proc_slot, s->tag): the
 * slot counts as live from the CAS on its tag (T2).  KM_OK or KM_EPROCS. */
int km__proc_claim(km__seg *s);
/* Give our slot back.  The client first releases what its tag holds (T1). */
void km__proc_release(km__seg *s);

/* Does pid exist (kill(pid, 0); EPERM counts as existing)? */
int km__pid_exists(uint32_t pid);
/* Start time of `pid` (field 22 of /proc/<pid>/stat, clock ticks since
 * boot), or 0 if it has none (gone, or a zombie). */
uint64_t km__pid_start_time(uint32_t pid);
/* Is the process that was `pid` at `start_time` alive (the rule of the
 * process table: a reused pid has another start time)? */
int km__pid_alive(uint32_t pid, uint64_t start_time);
/* Liveness, one rule for every caller: is the process behind `tag`, found
 * in process slot `slot`, alive?  Our own tag is; another by pid and start
 * time (a reused pid is not the process that attached; see shm/proc.c). */
int km__proc_entry_live(const km__seg *s, uint32_t slot, uint64_t tag);
/* Is process slot `slot` held by a live process? */
int km__proc_slot_live(const km__seg *s, uint32_t slot);
/* Does the table still hold `tag` (alive or not)? */
int km__proc_tag_held(const km__seg *s, uint64_t tag);
/* Does the table hold `tag`, and is its process alive? */
int km__proc_tag_live(const km__seg *s, uint64_t tag);

/* Iterate the slots of dead processes: from *slot on, the next slot whose
 * tag is set, not ours, and whose process is dead.  1 with *slot and *tag
 * set, 0 when there is none.  Typical use:
 *   for (uint32_t i = 0; km__proc_next_dead(s, &i, &tag); i++) ... */
int km__proc_next_dead(const km__seg *s, uint32_t *slot, uint64_t *tag);
/* Take a dead process's slot for this reaper (T3): CAS its tag to the mark
 * (slot + 1) << 32 | KM__TAG_REAPING | our pid.  `tag` is what
 * km__proc_next_dead returned: the dead process's tag, or the mark of a
 * reaper that died, taken over.  While marked the slot can be neither
 * claimed nor taken by another reaper, so what the client clears for a dead
 * slot (src/wait.c: its sleeper row) cannot meet a new occupant.  1 with
 * *mark set; 0 if the slot moved meanwhile. */
int km__proc_reap_take(km__seg *s, uint32_t slot, uint64_t tag, uint64_t *mark);
/* Give a taken slot back as it was (`tag`), for a later reap. */
void km__proc_reap_undo(km__seg *s, uint32_t slot, uint64_t mark, uint64_t tag);
/* Free a dead process's slot if it still holds `tag` (its tag, or our
 * mark).  The caller has made sure nothing carries the dead process's tag
 * any more (T1).  1 if freed. */
int km__proc_free_dead(km__seg *s, uint32_t slot, uint64_t tag);

/* ---------------------------------------------------------- shm/epoch.c */
#include "epoch.h"

#endif /* KM_SHM_H */
