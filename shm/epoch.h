/*
 * shm/epoch.h - epoch-based reclamation across processes: the interface,
 * and the reader's fast path inline.  The protocol and the argument for it
 * are at the top of shm/epoch.c.  Internal; not installed.
 */
#ifndef KM_SHM_EPOCH_H
#define KM_SHM_EPOCH_H

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

#endif /* KM_SHM_EPOCH_H */
