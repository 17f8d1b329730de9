/*
 * shm/proc.c - the process table: who is attached, and are they alive.
 *
 * A slot is claimed by CAS on `tag` from 0 to (slot+1) << 32 | pid, so the
 * tag alone says which process to check, even if it died before writing the
 * rest of its entry.  Leases record the tag as their owner.  A tag is never
 * reused while a lease could still carry it: a slot is freed only after every
 * lease with its tag was released (detach releases its own; a reaper frees a
 * dead process's slot only when none is left).
 *
 * Liveness is pid plus process start time (field 22 of /proc/<pid>/stat, in
 * clock ticks since boot): a pid reused by another process has another start
 * time, so it is not mistaken for the process that attached.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>

#include "../src/internal.h"

/* Start time of `pid` in clock ticks since boot, or 0 if it has none: gone,
 * or exited and not yet waited for (a zombie, state Z or X, holds nothing). */
uint64_t km__proc_start_time(int pid)
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

/* Is the process behind table entry p (holding `tag`) alive?  The tag's
 * pid decides.  Once the entry's pid field names the same pid, its start
 * time is written too and tells a reused pid apart; before that (the process
 * is attaching, or died attaching, and the field may still hold a previous
 * occupant's pid) kill(pid, 0) is all there is. */
int km__tag_alive(const km__proc *p, uint64_t tag)
{
    uint32_t tp = (uint32_t)tag;
    ck_pr_fence_load(); /* tag before pid and start time */
    if (ck_pr_load_32(&p->pid) == tp)
        return km__proc_alive(tp, ck_pr_load_64(&p->start_time));
    return kill((pid_t)tp, 0) == 0 || errno != ESRCH;
}

int km__proc_alive(uint32_t pid, uint64_t start_time)
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
    uint64_t st = km__proc_start_time((int)pid);
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

int km__proc_register(km_env *e, int reap)
{
    km__hdr *h = e->hdr;
    km__proc *pt = km__procs(e);
    uint32_t pid = (uint32_t)getpid();
    uint64_t start = km__proc_start_time((int)pid);

    /* Every attach first releases what dead processes left behind (our tag
     * is not set yet; the reaper marks slots with our pid instead). */
    if (reap)
        km__reap_dead(e, NULL, 0);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < e->geom.cap_procs; i++) {
            if (ck_pr_load_64(&pt[i].tag) != 0)
                continue;
            uint64_t tag = ((uint64_t)(i + 1) << 32) | pid;
            if (!ck_pr_cas_64(&pt[i].tag, 0, tag))
                continue;
            /* Counted the moment the entry is ours: a reaper that frees it
             * after we die mid-attach uncounts it. */
            ck_pr_inc_32(&h->n_procs);
            /* Rows a previous occupant left are not ours to honour: it
             * detached or died, and a dead section uses nothing. */
            km__epoch_rows_reset(e, i);
            km__usage_reset(e, i);
            /* The slot is ours.  pid and start time are read by reapers only
             * after they load tag; a reaper that sees pid 0 treats the slot
             * as being attached and leaves it alone. */
            ck_pr_store_64(&pt[i].start_time, start);
            ck_pr_store_64(&pt[i].attach_ns, km_now_ns());
            ck_pr_fence_store(); /* start_time before pid: pid != 0 means complete */
            ck_pr_store_32(&pt[i].pid, pid);
            e->proc_slot = i;
            e->owner = tag;
            return KM_OK;
        }
        /* Full: nothing was freed by the reap above; look once more in
         * case a process detached meanwhile. */
        if (pass == 0 && ck_pr_load_32(&h->n_procs) >= e->geom.cap_procs)
            break;
    }
    return KM_EPROCS;
}

void km__proc_deregister(km_env *e)
{
    km__proc *p = &km__procs(e)[e->proc_slot];

    km__release_all_owned(e, e->owner);
    km__epoch_rows_reset(e, e->proc_slot);
    ck_pr_store_32(&p->pid, 0);
    ck_pr_fence_store(); /* pid cleared before the slot is offered again */
    ck_pr_store_64(&p->tag, 0);
    ck_pr_dec_32(&e->hdr->n_procs);
}

/* Free the process slots of dead processes, releasing their leases (see
 * km_reap in keymesh.h).  Returns the number of process slots freed. */
int km__reap_dead(km_env *e, km_reap_report *rep, int repair)
{
    km__proc *pt = km__procs(e);
    km_reap_report r = {0};

    /* Leases first, by slot: that also recovers slots of a reaper that died
     * while reaping.  Then the table entries of dead processes that hold
     * nothing any more. */
    km__reap_leases(e, &r, repair);
    for (uint32_t i = 0; i < e->geom.cap_procs; i++) {
        uint64_t tag = ck_pr_load_64(&pt[i].tag);
        if (tag == 0 || tag == e->owner)
            continue;
        if (km__tag_alive(&pt[i], tag))
            continue;
        if (km__count_owned(e, tag) != 0) {
            r.pending++; /* a recount could not settle yet */
            continue;
        }
        if (ck_pr_cas_64(&pt[i].tag, tag, 0)) {
            ck_pr_dec_32(&e->hdr->n_procs);
            r.processes++;
        }
    }
    if (rep)
        *rep = r;
    return (int)r.processes;
}

KM_EXTERN int km_reap(km_env *e, km_reap_report *out)
{
    km_reap_report r;
    if (!e)
        return KM_EINVAL;
    km__reap_dead(e, &r, 1);
    if (out)
        *out = r;
    return KM_OK;
}

KM_EXTERN int km_proc_info_get(km_env *e, uint32_t slot, km_proc_info *out)
{
    if (!e || !out || slot >= e->geom.cap_procs)
        return KM_EINVAL;
    km__proc *p = &km__procs(e)[slot];
    uint64_t tag = ck_pr_load_64(&p->tag);
    if (tag == 0)
        return KM_ENOENT;
    ck_pr_fence_load(); /* tag before the fields it guards */
    memset(out, 0, sizeof(*out));
    out->pid = ck_pr_load_32(&p->pid);
    out->attached_ns = ck_pr_load_64(&p->attach_ns);
    out->alive = tag == e->owner || km__tag_alive(p, tag);
    out->pid = (uint32_t)tag; /* the tag's pid: the field may lag while attaching */
    out->leases = (uint32_t)km__count_owned(e, tag);
    return KM_OK;
}
