/*
 * shm/epoch.c - epoch-based reclamation across processes.
 *
 * What it protects.  Acquire reads shared things that reconfiguration
 * retires: a pool's member list (replaced by the other of its two lists),
 * a key row (removed, later reused for another key with another id and
 * secret), a key's limit parameters (changed in place).  A retired thing
 * may be rewritten only when no acquire that could have seen it is still
 * running.  An acquire is a *reader*; the span in which it may touch such
 * things is its *section*: from before it loads a pool's member list until
 * after it has copied the chosen key's identity and secret out.
 *
 * The protocol.  The segment holds a global epoch G (hdr.epoch) and a table
 * of reader rows, KM__RDR_PER_PROC per process slot, one line each.  A thread
 * claims a row of its process's group the first time it acquires (by CAS on
 * the row's tid), and then, at every acquire:
 *
 *   enter:  row.word := load(G)                      (a plain store)
 *           [compiler barrier; see "ordering" below]
 *           ... section: load cur, members, key state, id, secret ...
 *   leave:  row.word := 0                            (a release store)
 *
 * A writer retires a thing X by making it unreachable for new sections
 * (storing a new `cur`, a key state REMOVED, a key's `updating` flag), then
 * waits for a grace period (km__epoch_sync):
 *
 *   1. E := fetch_add(G, 1) + 1;
 *   2. a full barrier on every CPU that runs a thread of an attached
 *      process: membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED);
 *   3. for each row of each live process: wait until its word is 0 or >= E
 *      (re-reading it; rows of dead processes are skipped);
 *   4. synced := max(synced, E).
 *
 * Why it is correct.  Let S be a section that can see X: one of its loads
 * returned X (or the old `cur`, state, flag that leads to X) although X had
 * been made unreachable before step 1.  Then:
 *   (a) step 3 reads S's row store.  By step 2, S's CPU executed a full
 *       barrier at some point P after step 1 and before step 2 returned.
 *       Had S's row store come after P, so would all of S's loads, and
 *       they would see X unreachable (the unreachable-making stores precede
 *       the locked add of step 1, a full barrier).  So S's row store came
 *       before P and is visible to the loads of step 3.
 *   (b) S's word w satisfies 0 < w < E.  S loaded G before its loads of X
 *       (the load fence after it; see "Ordering").  Had that load
 *       returned >= E, it followed step 1, and so would S's loads of X,
 *       which would then see X unreachable.
 *   (c) only S's thread writes its row: w stays until S leaves (0), and the
 *       thread's next entry stores an epoch loaded after step 1 (>= E).
 * So step 3, which waits until each live row reads 0 or >= E, returns only
 * after every such S has left: X may then be rewritten.  The overflow row
 * (below) keeps the epoch of its oldest reader and is waited on until its
 * count is 0, which gives the same three points.
 *
 * Dead processes.  A row belongs to a process slot; step 3 skips the rows of
 * slots whose process is gone (pid plus start time, shm/proc.c), so a dead
 * process never blocks reclamation: a dead section cannot use anything.
 * A slot's rows are cleared when a new process claims the slot.
 *
 * Stalled processes.  A process stopped (SIGSTOP, a debugger) inside a
 * section holds every grace period back: that is the price of readers that
 * never wait.  Acquire and release of every other process go on (they
 * never look at G beyond one load, nor wait on anyone); only reclamation
 * waits.  km__epoch_sync gives up after its timeout with KM_EBUSY, and
 * km_reader_info_get shows each row behind G: pid, tid, epochs behind and
 * for how long, which `kmctl inspect` prints.
 *
 * Ordering.  Entry is a plain store followed by loads; x86 may let those
 * loads pass the store (store buffering), which is what step 2 closes: the
 * writer's membarrier forces the barrier the reader does not pay for on
 * every acquire.  A process that cannot register for expedited membarrier
 * (an old kernel, a seccomp filter) sets rd_fence at attach and its
 * readers execute a full fence after the row store instead.  A writer whose
 * membarrier fails falls back to MEMBARRIER_CMD_GLOBAL (slow, every CPU);
 * if that fails too, km__epoch_sync returns KM_ESYS and nothing is
 * reclaimed.  Leaving is a release store: the section's loads complete
 * before the row reads 0.  The load of G is ordered before the section's
 * loads by ck_pr_fence_load() right after it (km__rd_enter, shm/epoch.h):
 * a compiler barrier under TSO (x86-64, where loads are not reordered with
 * loads), a real load fence where they may be (aarch64).
 *
 * Overflow.  A thread that finds no free row in its group (more threads
 * than KM__RDR_PER_PROC - 1) uses row 0, shared by CAS: word = epoch << 20
 * | count, the epoch being that of the oldest reader inside.  Entering
 * when count > 0 keeps the older epoch (conservative); a grace period then
 * waits until the count falls to 0.  Busy overflow rows can delay
 * reclamation indefinitely; rows are reclaimed from threads that exited
 * (tgkill(pid, tid, 0) fails) before the overflow row is used.
 *
 * Invariants.
 *   E1  hdr.epoch only grows; a row's word is 0 or an epoch it loaded.
 *   E2  a section that can reach a thing retired before a grace period's
 *       step 1 is in a row with 0 < word < E until it leaves.
 *   E3  hdr.synced = E only after step 3 saw every live row 0 or >= E: a
 *       thing retired at an epoch r < synced is unreachable by anyone.
 */
#include <errno.h>
#include <pthread.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "clock.h"
#include "shm.h"

#define KM__OVF_COUNT_MASK ((UINT64_C(1) << KM__RDR_OVF_SHIFT) - 1)
/* A grace-period wait on a row that is behind: yield this many times (a
 * section lasts ~100 ns unless its thread is preempted), then sleep this
 * long between looks. */
#define KM__SYNC_SPINS 64
#define KM__SYNC_SLEEP_NS (50 * 1000) /* 50 us */

/* The reader's row cache (shm/epoch.h). */
KM__TLS km__rdr *km__rd_row;
KM__TLS uint64_t km__rd_serial;
KM__TLS int km__rd_slow;
KM__TLS int km__rd_row1;

/* A child after fork() must not use its parent's row: the parent's threads
 * hold it (and row 1 what the client keys to it). */
static void atfork_child(void)
{
    km__rd_serial = 0;
    km__rd_row1 = 0;
}

__attribute__((constructor)) static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

static long sys_membarrier(int cmd)
{
    return syscall(SYS_membarrier, cmd, 0, 0);
}

void km__epoch_attach(km__seg *s)
{
    s->rd_fence = sys_membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0;
}

void km__epoch_rows_reset(km__seg *s, uint32_t slot)
{
    km__rdr *r = km__rdrs(s, slot);
    for (uint32_t i = 0; i < KM__RDR_PER_PROC; i++) {
        ck_pr_store_64(&r[i].word, 0);
        ck_pr_store_32(&r[i].tid, 0);
    }
}

static uint32_t thread_id(void) { return (uint32_t)syscall(SYS_gettid); }

/* Claim this thread's row: one it already holds (a thread id can only be
 * held by one live thread), else a free one, else one whose thread has
 * exited, else the shared overflow row 0. */
km__rdr *km__epoch_bind(km__seg *s)
{
    km__rdr *r = km__rdrs(s, s->proc_slot);
    uint32_t tid = thread_id();

    for (uint32_t i = 1; i < KM__RDR_PER_PROC; i++)
        if (ck_pr_load_32(&r[i].tid) == tid)
            return &r[i];
    for (uint32_t i = 1; i < KM__RDR_PER_PROC; i++)
        if (ck_pr_load_32(&r[i].tid) == 0 && ck_pr_cas_32(&r[i].tid, 0, tid))
            return &r[i];
    for (uint32_t i = 1; i < KM__RDR_PER_PROC; i++) {
        uint32_t old = ck_pr_load_32(&r[i].tid);
        /* An exited thread is never inside a section: its word is 0. */
        if (old && syscall(SYS_tgkill, getpid(), old, 0) != 0 && errno == ESRCH &&
            ck_pr_cas_32(&r[i].tid, old, tid)) {
            ck_pr_store_64(&r[i].word, 0);
            return &r[i];
        }
    }
    return &r[0];
}

void km__epoch_enter_ovf(km__seg *s, km__rdr *r, uint64_t now)
{
    uint64_t w = ck_pr_load_64(&r->word), nw;
    do {
        /* The first reader in stamps the epoch; later ones keep the older
         * (conservative: grace periods wait for all of them).  The CAS is a
         * full barrier: no membarrier is needed for this row. */
        nw = (w & KM__OVF_COUNT_MASK) == 0
                 ? (ck_pr_load_64(&s->hdr->epoch) << KM__RDR_OVF_SHIFT) | 1
                 : w + 1;
    } while (!ck_pr_cas_64_value(&r->word, w, nw, &w));
    ck_pr_store_64(&r->enter_ns, now);
}

void km__epoch_exit_ovf(km__rdr *r)
{
    /* Locked decrement: a full barrier, so the section's loads complete
     * before the count drops. */
    ck_pr_dec_64(&r->word);
}

uint64_t km__row_epoch(const km__rdr *r, uint32_t i)
{
    uint64_t w = ck_pr_load_64(&r->word);
    if (i == 0)
        return (w & KM__OVF_COUNT_MASK) ? w >> KM__RDR_OVF_SHIFT : 0;
    return w;
}

int km__barrier_all(int slow_ok)
{
    if (sys_membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0 ||
        (slow_ok && sys_membarrier(MEMBARRIER_CMD_GLOBAL) == 0))
        return KM_OK;
    return KM_ESYS;
}

int km__epoch_sync(km__seg *s, uint32_t timeout_ms)
{
    km__hdr *h = s->hdr;
    /* Step 1: a locked add, a full barrier: everything the caller did to
     * make things unreachable is ordered before it. */
    uint64_t E = ck_pr_faa_64(&h->epoch, 1) + 1;
    /* Step 2 (see the top of this file). */
    if (km__barrier_all(1) != KM_OK)
        return KM_ESYS;

    uint64_t deadline = km__now() + (uint64_t)timeout_ms * KM__NS_PER_MS;
    int rc = KM_OK;
    for (uint32_t i = 0; i < s->cap_procs && rc == KM_OK; i++) {
        km__rdr *r = km__rdrs(s, i);
        int live = -1; /* checked once per slot, only if a row is behind */
        for (uint32_t j = 0; j < KM__RDR_PER_PROC; j++) {
            for (unsigned spin = 0;; spin++) {
                uint64_t ep = km__row_epoch(&r[j], j);
                if (ep == 0 || ep >= E)
                    break;
                if (live < 0)
                    live = km__proc_slot_live(s, i);
                if (!live)
                    break;
                if (km__now() >= deadline) {
                    rc = KM_EBUSY;
                    break;
                }
                if (spin < KM__SYNC_SPINS) {
                    sched_yield(); /* a section lasts ~100 ns unless preempted */
                } else {
                    struct timespec ts = {0, KM__SYNC_SLEEP_NS};
                    nanosleep(&ts, NULL);
                }
            }
            if (rc != KM_OK)
                break;
        }
    }
    if (rc != KM_OK)
        return rc;
    /* Step 4: synced only grows (two syncs may finish out of order). */
    uint64_t sy = ck_pr_load_64(&h->synced);
    while (sy < E && !ck_pr_cas_64_value(&h->synced, sy, E, &sy))
        ;
    return KM_OK;
}

