/*
 * shm/seg.h - what a segment looks like to shm/: its header, the process
 * table and the reader rows.  Internal; not installed.
 *
 * A segment is one POSIX shared-memory object: a header (km__hdr) on page 0,
 * then regions that the client (src/, the pool: src/layout.h) lays out.  Two
 * regions belong to shm/: the process table, km__proc[cap_procs] at
 * off_procs, and the reader rows of the epochs,
 * km__rdr[cap_procs][KM__RDR_PER_PROC] at off_readers.
 *
 * The header holds shm/'s words (magic, format, hdr_size, layout_sig,
 * seg_size, cap_procs, off_procs, off_readers, created_wall_ns, n_procs,
 * epoch, synced) and, between them, the client's (marked "client" below:
 * capacities, offsets and counters whose meaning src/layout.h gives).  shm/
 * writes and validates its own words (shm/segment.c); the client writes
 * its words before publication and validates them at attach
 * (src/attach.c).  format and layout_sig are the client's values, which
 * shm/ stores and compares without interpreting them.
 *
 * The segment holds no pointers: only offsets from its base and indices, so
 * every process may map it at a different address.  Every struct here is
 * pinned by _Static_assert; the client folds their sizes into its layout
 * signature.
 */
#ifndef KM_SHM_SEG_H
#define KM_SHM_SEG_H

#include <stddef.h>
#include <stdint.h>

#define KM__LINE 64
#define KM__PAGE 4096 /* segments are sized in whole pages */

/* Flag words and paired lease stores (src/slots.h) assume little-endian
 * order; the layout signature only keeps CPUs of two orders apart. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "KeyMesh's segment is little-endian");
#define KM__MAGIC UINT64_C(0x4853454d59454b00) /* "\0KEYMESH" little-endian */

typedef struct km__hdr {
    /* magic and format are stored last by the creator (release); an attacher
     * loads magic with acquire before trusting anything else. */
    uint64_t magic;
    uint32_t format;          /* the client's format version */
    uint32_t hdr_size;        /* sizeof(km__hdr) */
    uint64_t layout_sig;      /* the client's layout signature */
    uint64_t seg_size;        /* bytes of the object the header describes */
    uint32_t cap_keys, cap_pools; /* client */
    uint32_t cap_procs;       /* process slots (and reader-row groups) */
    uint32_t cap_inflight;    /* client */
    uint32_t n_pools, n_keys; /* client; n_keys: key rows in use (admin lock) */
    uint64_t off_pools, off_members, off_keys, off_leases; /* client */
    uint64_t off_procs;       /* the process table */
    uint64_t created_wall_ns; /* CLOCK_REALTIME at creation */
    uint32_t cap_models;      /* client */
    uint32_t pad0;
    uint64_t off_models, off_mwin; /* client */
    /* line 2, own line: written by every attach/detach */
    uint32_t n_procs;
    uint32_t pad1;
    uint64_t off_readers;     /* configuration: the reader rows (shm/epoch.c) */
    uint8_t pad2[KM__LINE - 16];
    /* line 3, client: the admin lock, a robust process-shared mutex
     * serialising reconfiguration (src/reconfig.c).  Never taken by acquire
     * or release. */
    uint8_t admin[KM__LINE];
    /* line 4, own line: the global epoch, read by every acquire, bumped by
     * every grace-period wait (shm/epoch.c). */
    uint64_t epoch;
    uint8_t pad4[KM__LINE - 8];
    /* line 5: written by grace-period waits: every reader that entered at an
     * epoch below `synced` has left.  Read by reconfiguration only. */
    uint64_t synced;
    /* the rest of line 5 is the client's */
    uint64_t reconfigs;       /* reconfigurations applied, for inspect */
    /* usage rings (src/usage.c): configuration, and the drainer's words */
    uint64_t off_usage;
    uint32_t cap_usage;       /* events per process slot, half per ring; 0: none (power of 2, not 1) */
    uint32_t pad5a;
    uint64_t usage_drainer;   /* tag of the process draining; 0: none */
    uint64_t off_busy;        /* configuration: the in-flight flags */
    uint64_t off_fleet;       /* configuration: the fleet region (src/layout.h,
                               * km__fhdr); 0: the segment has no fleet keys */
    uint8_t pad5[KM__LINE - 56];
    /* lines 6-9, client: the intent of the reconfiguration in progress, if
     * any, written by the holder of the admin lock before its first shared
     * store, so that whoever finds its writer dead can finish or undo it
     * (src/reconfig.c, km__intent in src/layout.h). */
    uint8_t intent[4 * KM__LINE];
} km__hdr;
_Static_assert(offsetof(km__hdr, off_mwin) + 8 == 2 * KM__LINE, "header lines 0-1");
_Static_assert(offsetof(km__hdr, intent) == 6 * KM__LINE, "intent lines");
_Static_assert(sizeof(km__hdr) == 10 * KM__LINE, "km__hdr size");
_Static_assert(offsetof(km__hdr, n_procs) == 2 * KM__LINE, "n_procs on its own line");
_Static_assert(offsetof(km__hdr, admin) == 3 * KM__LINE, "admin lock line");
_Static_assert(offsetof(km__hdr, epoch) == 4 * KM__LINE, "epoch on its own line");
_Static_assert(offsetof(km__hdr, synced) == 5 * KM__LINE, "synced line");
_Static_assert(offsetof(km__hdr, off_fleet) + 8 + 8 == 6 * KM__LINE, "line 5 holds off_busy, off_fleet");

/* A process-table slot, written by its process (and by a reaper once the
 * process is dead). */
typedef struct km__proc {
    uint64_t tag;        /* 0 free; else (slot+1) << 32 | pid */
    uint32_t pid;
    uint32_t pad;
    uint64_t start_time; /* /proc/<pid>/stat field 22: tells reused pids apart */
    uint64_t attach_ns;
    uint8_t pad1[KM__LINE - 32];
} km__proc;
_Static_assert(sizeof(km__proc) == KM__LINE, "one process slot per line");

/* A reader row: one per thread that acquires (shm/epoch.c).  Rows are
 * grouped per process slot, KM__RDR_PER_PROC of them; row 0 of each group
 * is the process's shared overflow row, used by threads that found no row
 * of their own.  `word` is written by its thread at every acquire; the
 * row's line is its own. */
#define KM__RDR_PER_PROC 8
typedef struct km__rdr {
    uint64_t word;     /* per-thread row: 0 idle, else the epoch at entry;
                        * overflow row: epoch << 20 | readers inside */
    uint64_t enter_ns; /* CLOCK_MONOTONIC at entry (for reports) */
    uint32_t tid;      /* thread that owns the row; 0: free */
    uint32_t pad;
    uint8_t pad1[KM__LINE - 24];
} km__rdr;
_Static_assert(sizeof(km__rdr) == KM__LINE, "one reader row per line");
#define KM__RDR_OVF_SHIFT 20

/* Offset helpers: the only way code turns an offset into an address. */
#define KM__AT(base, off) ((void *)((char *)(base) + (off)))

#endif /* KM_SHM_SEG_H */
