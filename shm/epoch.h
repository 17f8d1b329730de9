/*
 * shm/epoch.h - epoch-based reclamation across processes: the interface,
 * and the reader's fast path inline.  The protocol and the argument for it
 * are at the top of shm/epoch.c.  Internal; not installed.
 */
#ifndef KM_SHM_EPOCH_H
#define KM_SHM_EPOCH_H

#include <unistd.h>

#include <ck_pr.h>

#include "shm.h"

/* Reader rows of process slot `slot` (KM__RDR_PER_PROC of them; row 0 is
 * the slot's shared overflow row). */
static inline km__rdr *km__rdrs(const km__seg *s, uint32_t slot)
{
    return (km__rdr *)KM__AT(s->base, s->off_readers) + (size_t)slot * KM__RDR_PER_PROC;
}

/* Register for expedited membarrier at attach; sets s->rd_fence if not. */
void km__epoch_attach(km__seg *s);
/* Clear the reader rows of process slot `slot` (its previous owner is
 * gone: rows it left are not ours to honour). */
void km__epoch_rows_reset(km__seg *s, uint32_t slot);
/* This thread's reader row in s's process group (claimed on first use). */
km__rdr *km__epoch_bind(km__seg *s);
void km__epoch_enter_ovf(km__seg *s, km__rdr *r, uint64_t now);
void km__epoch_exit_ovf(km__rdr *r);
/* Wait until every reader that entered before this call has left (dead
 * processes excepted), at most timeout_ms.  KM_OK, or KM_EBUSY (a live
 * reader held it back), or KM_ESYS (no membarrier). */
int km__epoch_sync(km__seg *s, uint32_t timeout_ms);
/* A full memory barrier on every CPU running a thread of a process that
 * registered at attach: membarrier GLOBAL_EXPEDITED, else, if slow_ok,
 * GLOBAL (10-15 ms here).  KM_OK, or KM_ESYS if none was available. */
int km__barrier_all(int slow_ok);
/* Epoch row i (0: the shared overflow row) holds back; 0 if none. */
uint64_t km__row_epoch(const km__rdr *r, uint32_t i);

/* ------------------------------------------------------ the reader's path
 *
 * Inline: every acquire enters and leaves a section, and a call into
 * another file would cost the pair what the protocol saves.  The row is
 * cached per thread for the mapping it last used, known by the mapping's
 * serial number, not its address: a handle closed and another opened at the
 * same address must not find the old row.  A child after fork() starts
 * afresh (shm/epoch.c registers the atfork handler).  Defined in
 * shm/epoch.c; the initial-exec model is the one shm.h explains. */
extern KM__TLS km__rdr *km__rd_row;
extern KM__TLS uint64_t km__rd_serial; /* serial of the mapping the row is for */
extern KM__TLS int km__rd_slow;  /* 1: the overflow row; 2: fence after the row store */
extern KM__TLS int km__rd_row1;  /* the row is row 1 of its process slot */

/* Enter an epoch section (the argument is at the top of shm/epoch.c).  The
 * row store is plain: a writer's membarrier supplies the store-load
 * barrier, unless this process could not register for it (rd_fence). */
KM__HOT km__rdr *km__rd_enter(km__seg *s, uint64_t now)
{
    km__rdr *r = km__rd_row;
    if (__builtin_expect(km__rd_serial != s->serial, 0)) {
        /* A handle used across fork() (the child should open its own) gets
         * the shared overflow row: never a row, nor what row 1 carries (the
         * client's usage ring 0), that a thread of the process that opened
         * it holds. */
        km__rdr *rows = km__rdrs(s, s->proc_slot);
        r = km__rd_row = s->pid == (int)getpid() ? km__epoch_bind(s) : rows;
        km__rd_slow = r == rows ? 1 : s->rd_fence ? 2 : 0;
        km__rd_row1 = r == rows + 1;
        km__rd_serial = s->serial;
    }
    if (__builtin_expect(km__rd_slow == 1, 0)) {
        km__epoch_enter_ovf(s, r, now);
        return r;
    }
    ck_pr_store_64(&r->enter_ns, now);
    uint64_t g = ck_pr_load_64(&s->hdr->epoch);
    /* The load of G before every load of the section: point (b) of the
     * argument.  A no-op under TSO (x86-64: loads are not reordered with
     * loads), a real fence where loads may pass loads (aarch64), where a
     * section could otherwise read a retired row or secret and still
     * publish an epoch >= E. */
    ck_pr_fence_load();
    ck_pr_store_64(&r->word, g);
    if (__builtin_expect(km__rd_slow, 0))
        ck_pr_fence_memory(); /* row store before the section's loads */
    else
        ck_pr_barrier(); /* the compiler keeps the order; the CPU's is the writer's membarrier */
    return r;
}

/* Leave: every load of the section completes before the row reads idle. */
KM__HOT void km__rd_exit(km__rdr *r)
{
    if (__builtin_expect(km__rd_slow == 1, 0)) {
        km__epoch_exit_ovf(r);
        return;
    }
    ck_pr_fence_release();
    ck_pr_store_64(&r->word, 0);
}

/* Does this thread hold reader row 1 of its process slot, bound through
 * mapping s?  Row 1 goes to a process's first thread to enter and passes
 * on only from a thread that has exited (km__epoch_bind), so its holder is
 * a single writer the client can key things to (src/usage.h: ring 0). */
static inline int km__rd_holds_row1(const km__seg *s)
{
    return km__rd_serial == s->serial && km__rd_row1;
}

#endif /* KM_SHM_EPOCH_H */
