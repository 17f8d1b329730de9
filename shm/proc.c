/*
 * shm/proc.c - the process table: who is attached, and are they alive.
 *
 * A slot is claimed by CAS on `tag` from 0 to (slot+1) << 32 | pid
 * (km__proc_tag), so the tag alone says which process to check, even if it
 * died before writing the rest of its entry.  The client records the tag
 * where a process holds something (src/: the owner of a lease slot, the
 * usage drainer).
 *
 * Invariants.
 *   T1  A tag is never reused while anything could still carry it: a slot
 *       is freed only after everything carrying its tag was released.  The
 *       client keeps this: detach releases its own first (src/attach.c),
 *       and a reaper frees a dead process's slot only when nothing carries
 *       its tag any more (src/reap.c, km__proc_free_dead).
 *   T2  A slot counts as live from the CAS on its tag: while its pid field
 *       does not yet name the tag's pid (the process is attaching, or died
 *       attaching), liveness is judged by the tag's pid alone.
 *   T3  One reaper at a time frees a dead slot: it first CASes the dead tag
 *       to its reaping mark (km__proc_reap_take), which no claim (it needs
 *       0) and no other reaper (it needs a dead tag, or the mark of a dead
 *       reaper) can take; what it clears for the slot then cannot meet a
 *       process that claimed the slot meanwhile.  A marked slot holds no
 *       live process.
 *
 * Liveness is pid plus process start time (field 22 of /proc/<pid>/stat, in
 * clock ticks since boot): a pid reused by another process has another start
 * time, so it is not mistaken for the process that attached.  Every caller
 * asks the one question through km__proc_entry_live and its wrappers.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>

#include "clock.h"
#include "shm.h"

/* Start time of `pid` in clock ticks since boot, or 0 if it has none: gone,
 * or exited and not yet waited for (a zombie, state Z or X, holds nothing). */
static uint64_t start_time_of(int pid)
{
    char path[64], buf[1024];
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Field 2 (comm) is in parentheses and may contain spaces: count fields
     * from the last ')'.  After it come fields 3..; start time is field 22. */
    char *p = strrchr(buf, ')');
    if (!p || !p[1] || !p[2] || p[2] == 'Z' || p[2] == 'X') /* ") S ..." */
        return 0;
    unsigned long long v = 0;
    int field = 2;
    for (p++; *p && field < 22; p++)
        if (*p == ' ')
            field++;
    if (field != 22 || sscanf(p, "%llu", &v) != 1)
        return 0;
    return v;
}

int km__pid_exists(uint32_t pid)
{
    return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
}

/* Is the process that attached as `pid` at `start_time` alive? */
static int proc_alive(uint32_t pid, uint64_t start_time)
{
    if (pid == 0)
        return 0;
    int other_user = 0;
    if (kill((pid_t)pid, 0) != 0) {
        if (errno == ESRCH)
            return 0;
        other_user = errno == EPERM;
    }
    /* The pid exists; it is our process only if it started when ours did.
     * start_time 0 means the owner died before writing it: a live process
     * with that pid is then a stranger unless it is mid-attach, which the
     * caller tells from the tag. */
    uint64_t st = start_time_of((int)pid);
    if (st == 0 && start_time != 0 && other_user) {
        /* Another user's process whose /proc entry we cannot see (/proc
         * mounted with hidepid): alive for all we know.  Taking its leases
         * over would give a live lease two writers; a reused pid keeps them
         * out only until that process ends. */
        char path[64];
        snprintf(path, sizeof(path), "/proc/%u/stat", pid);
        if (access(path, R_OK) != 0)
            return 1;
    }
    return st != 0 && st == start_time;
}

/* Is the process behind table entry p (holding `tag`) alive?  The tag's
 * pid decides.  Once the entry's pid field names the same pid, its start
 * time is written too and tells a reused pid apart; before that (T2: the
 * process is attaching, or died attaching, and the field may still hold a
 * previous occupant's pid) kill(pid, 0) is all there is. */
static int tag_alive(const km__proc *p, uint64_t tag)
{
    uint32_t tp = km__tag_pid(tag);
    ck_pr_fence_load(); /* tag before pid and start time */
    if (ck_pr_load_32(&p->pid) == tp)
        return proc_alive(tp, ck_pr_load_64(&p->start_time));
    return km__pid_exists(tp);
}

int km__proc_entry_live(const km__seg *s, uint32_t slot, uint64_t tag)
{
    if (km__tag_reaping(tag))
        return 0; /* T3: being freed; its process is dead */
    return tag == s->tag || tag_alive(&km__procs(s)[slot], tag);
}

int km__proc_slot_live(const km__seg *s, uint32_t slot)
{
    uint64_t tag = ck_pr_load_64(&km__procs(s)[slot].tag);
    return tag != 0 && km__proc_entry_live(s, slot, tag);
}

/* The slot a tag names, if it is inside the table; else UINT32_MAX. */
static uint32_t slot_of(const km__seg *s, uint64_t tag)
{
    uint32_t slot1 = km__tag_slot1(tag);
    return slot1 >= 1 && slot1 <= s->cap_procs ? slot1 - 1 : UINT32_MAX;
}

int km__proc_tag_held(const km__seg *s, uint64_t tag)
{
    uint32_t slot = slot_of(s, tag);
    return slot != UINT32_MAX && ck_pr_load_64(&km__procs(s)[slot].tag) == tag;
}

int km__proc_tag_live(const km__seg *s, uint64_t tag)
{
    if (tag == s->tag)
        return 1;
    uint32_t slot = slot_of(s, tag);
    return slot != UINT32_MAX && ck_pr_load_64(&km__procs(s)[slot].tag) == tag &&
           km__proc_entry_live(s, slot, tag);
}

int km__proc_claim(km__seg *s)
{
    km__hdr *h = s->hdr;
    km__proc *pt = km__procs(s);
    uint32_t pid = (uint32_t)getpid();
    uint64_t start = start_time_of((int)pid);

    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < s->cap_procs; i++) {
            if (ck_pr_load_64(&pt[i].tag) != 0)
                continue;
            uint64_t tag = km__proc_tag(i, pid);
            if (!ck_pr_cas_64(&pt[i].tag, 0, tag))
                continue;
            /* Counted the moment the entry is ours (T2): a reaper that
             * frees it after we die mid-attach uncounts it. */
            ck_pr_inc_32(&h->n_procs);
            /* The slot is ours.  pid and start time are read by reapers only
             * after they load tag; a reaper that sees another pid treats the
             * slot as being attached (T2) and judges it by the tag's pid. */
            ck_pr_store_64(&pt[i].start_time, start);
            ck_pr_store_64(&pt[i].attach_ns, km__now());
            ck_pr_fence_store(); /* start_time before pid: pid == tag's pid means complete */
            ck_pr_store_32(&pt[i].pid, pid);
            s->proc_slot = i;
            s->tag = tag;
            return KM_OK;
        }
        /* Full: look once more only if a process detached meanwhile. */
        if (pass == 0 && ck_pr_load_32(&h->n_procs) >= s->cap_procs)
            break;
    }
    return KM_EPROCS;
}

void km__proc_release(km__seg *s)
{
    km__proc *p = &km__procs(s)[s->proc_slot];

    ck_pr_store_32(&p->pid, 0);
    ck_pr_fence_store(); /* pid cleared before the slot is offered again */
    ck_pr_store_64(&p->tag, 0);
    ck_pr_dec_32(&s->hdr->n_procs);
}

int km__proc_next_dead(const km__seg *s, uint32_t *slot, uint64_t *tagp)
{
    km__proc *pt = km__procs(s);
    for (uint32_t i = *slot; i < s->cap_procs; i++) {
        uint64_t tag = ck_pr_load_64(&pt[i].tag);
        if (tag == 0 || km__proc_entry_live(s, i, tag))
            continue;
        /* A slot a live reaper is freeing is its (T3); a dead one's mark
         * is taken over. */
        if (km__tag_reaping(tag) && km__pid_exists(km__tag_pid(tag)))
            continue;
        *slot = i;
        *tagp = tag;
        return 1;
    }
    *slot = s->cap_procs;
    return 0;
}

int km__proc_reap_take(km__seg *s, uint32_t slot, uint64_t tag, uint64_t *mark)
{
    uint64_t m = ((uint64_t)km__tag_slot1(tag) << 32) | KM__TAG_REAPING | (uint32_t)getpid();
    /* The CAS is the whole claim (T3): of several reapers one wins, and a
     * slot freed or claimed again meanwhile no longer holds `tag`. */
    if (slot >= s->cap_procs || !ck_pr_cas_64(&km__procs(s)[slot].tag, tag, m))
        return 0;
    *mark = m;
    return 1;
}

void km__proc_reap_undo(km__seg *s, uint32_t slot, uint64_t mark, uint64_t tag)
{
    if (slot < s->cap_procs)
        /* Only we hold the mark, so the CAS succeeds; it is one anyway, so
         * a slot that is not ours (a bad argument) is left alone.  Locked: the
         * row work we abandon is ordered before the slot reads dead again. */
        (void)ck_pr_cas_64(&km__procs(s)[slot].tag, mark, tag);
}

int km__proc_free_dead(km__seg *s, uint32_t slot, uint64_t tag)
{
    /* CAS from the dead tag: of several reapers one frees the slot, and a
     * slot claimed again meanwhile (another tag) is left alone.  The count
     * drops after, as it rose after the claim's CAS. */
    if (slot >= s->cap_procs || !ck_pr_cas_64(&km__procs(s)[slot].tag, tag, 0))
        return 0;
    ck_pr_dec_32(&s->hdr->n_procs);
    return 1;
}

uint64_t km__pid_start_time(uint32_t pid) { return pid ? start_time_of((int)pid) : 0; }

int km__pid_alive(uint32_t pid, uint64_t start_time) { return proc_alive(pid, start_time); }
