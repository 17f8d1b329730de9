/*
 * t_crash.c - workers die at any instruction; nothing leaks.
 *
 * Six workers hammer one pool (acquire, record, release) while the parent
 * kills a random one with SIGKILL every ~50 ms and starts a replacement
 * (which reaps at attach), and now and then stops one with SIGSTOP for
 * 100 ms to show the others keep going.  At the end every worker is killed
 * and the parent reaps.  Then:
 *   - km_check() reports no violation: in-flight equals live leases (0),
 *     reservations equal the leases that made them (0), the process table
 *     holds only the parent;
 *   - counters: sum(outcomes) + abandoned <= acquired, and falls short by at
 *     most the number of kills (a death between a release's in-flight flag
 *     and its counter store; see src/release.c);
 *   - no limit was exceeded: over the admissions the workers recorded, for
 *     every key and every pair of admissions, the token_bucket bound holds
 *     for rpm and tpm;
 *   - while a worker was stopped, the others completed operations.
 * Then sleepers of km_acquire_wait die (test_dead_sleepers): asleep, after
 * each store of their count's way in and out, and at random; the reap takes
 * each out of the pool's waiter count (a live one stays), so releases issue
 * no wake-up again, and km_check is clean.
 * KM_TORTURE_S=<seconds> runs longer (make torture).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "internal.h"
#include "keymesh.h"
#include "tap.h"

#define WORKERS 6
#define KEYS 4
#define MAXREC (1 << 20)
#define RPM_LIMIT 6000 /* one request per 10 ms */
#define RPM_BURST 20
#define TPM_LIMIT 600000 /* 10 tokens per ms */
#define TPM_BURST 2000

typedef struct rec {
    uint32_t key, tokens;
    uint64_t start;
} rec;

typedef struct shared {
    uint64_t ops[WORKERS];  /* completed acquire+release pairs per worker slot */
    uint64_t next;          /* records used (fetch-add) */
    rec r[MAXREC];
} shared;

static char name[64];
static shared *sh;

static void worker(int slot)
{
    km_env *e = NULL;
    km_lease l;
    uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    if (km_open(name, &e) != KM_OK)
        _exit(2);
    for (;;) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        /* Mostly the unlimited pool "fast": operations never wait there, so
         * kills land inside admissions and releases, not in retries. */
        km_request fq = {.pool = 1, .tokens = (uint32_t)(1 + seed % 500)};
        for (int j = 0; j < 20; j++) {
            if (km_acquire(e, &fq, &l) != KM_OK)
                continue;
            km_outcome fo = {.kind = KM_OUT_SUCCESS, .latency_us = 10, .tokens = j % 3 ? 1 : -1,
                             .input_tokens = -1, .output_tokens = -1};
            km_release(e, &l, &fo);
            __atomic_fetch_add(&sh->ops[slot], 1, __ATOMIC_RELAXED);
        }
        km_request rq = {.pool = 0, .tokens = (uint32_t)(1 + seed % 200)};
        if (km_acquire(e, &rq, &l) != KM_OK)
            continue;
        /* Actual never above the estimate; a cancelled request uses none.
         * What the provider counts is the actual, recorded at the lease's
         * admission time (its request still counts toward rpm). */
        km_outcome o = {.kind = (seed >> 20) % 10 == 0 ? KM_OUT_CANCELLED : KM_OUT_SUCCESS,
                        .latency_us = 100, .tokens = (int64_t)(l.tokens - (seed >> 40) % (l.tokens + 1)),
                        .input_tokens = -1, .output_tokens = -1};
        uint64_t i = __atomic_fetch_add(&sh->next, 1, __ATOMIC_RELAXED);
        if (i < MAXREC)
            sh->r[i] = (rec){l.key, o.kind == KM_OUT_CANCELLED ? 0 : (uint32_t)o.tokens, l.start_ns};
        km_release(e, &l, &o);
        __atomic_fetch_add(&sh->ops[slot], 1, __ATOMIC_RELAXED);
    }
}

static pid_t spawn(int slot)
{
    pid_t p = fork();
    if (p == 0)
        worker(slot);
    return p;
}

/* On failure: every key's token reservation and its non-free lease slots. */
static void dump_keys(km_env *e)
{
    for (uint32_t ki = 0; ki < e->seg.hdr->n_keys; ki++) {
        km__key *k = &km__keys(e)[ki];
        km__lease *ls = km__leases(e, ki);
        char fl[17] = {0}; /* in-flight flags of slots 0..15, in slot order */
        for (int s = 0; s < 16 && (uint32_t)s < e->seg.hdr->cap_inflight; s++)
            fl[s] = ck_pr_load_8(&km__busy(e, ki)[s]) ? '1' : '0';
        diag("key %s: tpm reserved %llu tat-now %lld ms in-flight flags of slots 0-15 %s", k->id,
             (unsigned long long)ck_pr_load_64(&k->win[KM_WIN_TPM].reserved),
             (long long)((int64_t)ck_pr_load_64(&k->win[KM_WIN_TPM].tat) - (int64_t)km_now_ns()) / 1000000, fl);
        for (uint32_t s = 0; s < e->seg.hdr->cap_inflight; s++)
            if (ck_pr_load_64(&ls[s].owner) || ck_pr_load_32(&ls[s].phase))
                diag("  slot %u owner %llx phase %u seq %u tokens %u", s,
                     (unsigned long long)ck_pr_load_64(&ls[s].owner), ck_pr_load_32(&ls[s].phase),
                     ck_pr_load_32(&ls[s].seq), ck_pr_load_32(&ls[s].tokens));
    }
}

static void show_violation(void *ctx, const char *line)
{
    (void)ctx;
    diag("violation: %s", line);
}

static int cmp_rec(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------ sleepers that die
 * (issue 17, finding 3).  A sleeper killed inside km_acquire_wait left the
 * pool's waiter count raised for good, and every later release made a
 * FUTEX_WAKE for nobody.  Now the reap that frees its process slot takes it
 * out: killed while asleep; "killed" after each store of its count's way
 * in and out (a dead process's row written by hand); and killed at random
 * among sleepers that count in and out every millisecond.  A live sleeper
 * stays counted throughout.  Releases issue no wake-up (wake_seq, bumped
 * by each one, stays put) once the dead are reaped. */

static char wname[64];

/* Child: attach and sleep on the pool, in waits of `ms` each (0: one wait
 * of a minute), until killed; or, with `once`, take the key when it comes
 * free, release it and detach. */
static pid_t sleeper(uint32_t ms, int once)
{
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        km_env *e = NULL;
        km_request rq = {.pool = 0};
        km_lease l;
        if (km_open(wname, &e) != KM_OK)
            _exit(2);
        for (;;) {
            int rc = km_acquire_wait(e, &rq, &l, ms ? ms : 60000);
            if (rc == KM_OK) {
                km_release(e, &l, NULL);
                if (once) {
                    km_close(e);
                    _exit(0);
                }
            } else if (rc != KM_ETIMEDOUT) {
                _exit(3);
            }
        }
    }
    return c;
}

static uint32_t waiters_of(km_env *e)
{
    km_pool_info pi;
    if (km_pool_info_get(e, 0, &pi) != KM_OK)
        bail_out("km_pool_info_get");
    return pi.waiters;
}

/* Wait up to 5 s for the pool to count n sleepers. */
static int await_waiters(km_env *e, uint32_t n)
{
    for (int i = 0; i < 5000 && waiters_of(e) != n; i++)
        sleep_ms(1);
    return waiters_of(e) == n;
}

static int row_clear_at(km_env *e, uint32_t slot)
{
    km__wrow *r = km__wrows(e, slot);
    return ck_pr_load_64(&r->busy) == 0 && ck_pr_load_32(&r->n[0]) == 0;
}

/* A segment of its own for one test: kmt-TAG-PID from configuration js. */
static km_env *create_seg(char *name_out, size_t n, const char *tag, const char *js)
{
    char err[256] = "";
    km_config *cfg;
    km_env *e;
    snprintf(name_out, n, "kmt-%s-%d", tag, (int)getpid());
    km_unlink(name_out);
    if (km_config_parse(js, strlen(js), "t_crash", &cfg, err, sizeof err))
        bail_out("config: %s", err);
    if (km_create(name_out, cfg, 0, &e) != KM_OK)
        bail_out("create %s", name_out);
    km_config_free(cfg);
    return e;
}

static void test_dead_sleepers(void)
{
    const char *js = "{\"capacity\":{\"processes\":16,\"inflight_per_key\":1},\"pools\":[{\"name\":\"p\","
                     "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-sleeper1\"}]}]}";
    km_env *e;
    km_lease held;
    km_request rq = {.pool = 0};
    km_reap_report rep;

    e = create_seg(wname, sizeof wname, "crashw", js);
    km__pool *pool = &km__pools(e)[0];
    if (km_acquire(e, &rq, &held) != KM_OK) /* the only lease: sleepers sleep */
        bail_out("acquire");

    /* Killed asleep. */
    pid_t c = sleeper(0, 0);
    ok(await_waiters(e, 1), "a sleeper is counted");
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    is_u64(waiters_of(e), 1, "killed asleep: still counted until a reap");
    km_reap(e, &rep);
    is_u64(rep.processes, 1, "the reap frees the sleeper's process slot");
    is_u64(waiters_of(e), 0, "and takes its sleeper out of the pool's count");
    uint32_t seq0 = ck_pr_load_32(&pool->wake_seq);
    int bad = 0;
    for (int i = 0; i < 100; i++)
        bad += km_release(e, &held, NULL) != KM_OK || km_acquire(e, &rq, &held) != KM_OK;
    is_int(bad, 0, "100 releases and acquires");
    is_u64(ck_pr_load_32(&pool->wake_seq) - seq0, 0, "the 100 releases issued no wake-up");
    is_int(km_check(e, show_violation, NULL), 0, "km_check clean");

    /* Killed after each store of the way in and out (src/wait.c: busy,
     * n[p], waiters, busy), beside a live sleeper that must stay counted. */
    pid_t live = sleeper(0, 1);
    ok(await_waiters(e, 1), "a live sleeper is counted");
    static const struct { uint64_t busy; uint32_t n, counted; } step[] = {
        {1, 0, 0}, {1, 1, 0}, {1, 1, 1}, {KM__WROW_GEN, 1, 1},                  /* in */
        {KM__WROW_GEN + 1, 1, 1}, {KM__WROW_GEN + 1, 1, 0}, {KM__WROW_GEN + 1, 0, 0}, /* out */
    };
    int wrong = 0, unclear = 0, unfreed = 0;
    for (size_t i = 0; i < sizeof step / sizeof step[0]; i++) {
        pid_t gone = fork();
        if (gone == 0)
            _exit(0);
        waitpid(gone, NULL, 0);
        km__proc *pt = km__procs(&e->seg);
        uint32_t fs = 0;
        while (fs < e->geom.cap_procs && ck_pr_load_64(&pt[fs].tag))
            fs++;
        if (fs == e->geom.cap_procs)
            bail_out("no free process slot");
        /* A dead process in slot fs, left at step i. */
        ck_pr_store_64(&pt[fs].tag, ((uint64_t)(fs + 1) << 32) | (uint32_t)gone);
        ck_pr_inc_32(&e->seg.hdr->n_procs);
        ck_pr_store_64(&km__wrows(e, fs)->busy, step[i].busy);
        ck_pr_store_32(&km__wrows(e, fs)->n[0], step[i].n);
        ck_pr_add_32(&pool->waiters, step[i].counted);
        km_reap(e, &rep);
        if (waiters_of(e) != 1) {
            diag("step %zu: %u counted after the reap, want the live sleeper's 1", i, waiters_of(e));
            wrong++;
            ck_pr_store_32(&pool->waiters, 1);
        }
        unclear += !row_clear_at(e, fs);
        unfreed += rep.processes != 1;
    }
    is_int(wrong, 0, "each of the 7 steps: the dead one's count gone, the live one's kept");
    is_int(unclear, 0, "each dead process's row cleared");
    is_int(unfreed, 0, "each dead process's slot freed");
    km_release(e, &held, NULL);
    int st;
    waitpid(live, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), 0, "the live sleeper got the key and left");
    is_u64(waiters_of(e), 0, "nobody counted once it returned");

    /* Killed at random among sleepers that count in and out every 1-3 ms;
     * each replacement reaps at attach while the others go on. */
    if (km_acquire(e, &rq, &held) != KM_OK)
        bail_out("acquire");
    enum { NSL = 4 };
    pid_t sl[NSL];
    unsigned r = (unsigned)getpid();
    for (int i = 0; i < NSL; i++)
        sl[i] = sleeper(1 + (uint32_t)i % 3, 0);
    int kills = 0;
    for (int round = 0; round < 60; round++) {
        struct timespec ts = {0, (long)(rand_r(&r) % 3000) * 1000};
        nanosleep(&ts, NULL);
        int v = (int)(rand_r(&r) % NSL);
        kill(sl[v], SIGKILL);
        waitpid(sl[v], NULL, 0);
        kills++;
        sl[v] = sleeper(1 + (uint32_t)rand_r(&r) % 3, 0);
    }
    for (int i = 0; i < NSL; i++) {
        kill(sl[i], SIGKILL);
        waitpid(sl[i], NULL, 0);
        kills++;
    }
    km_reap(e, &rep);
    diag("%d sleepers killed; the last reap: %u processes, %u pending", kills, rep.processes, rep.pending);
    is_u64(rep.pending, 0, "nothing pending after the reap");
    is_u64(waiters_of(e), 0, "no sleeper left counted");
    km_info inf;
    km_info_get(e, &inf);
    is_u64(inf.n_procs, 1, "only the parent attached");
    seq0 = ck_pr_load_32(&pool->wake_seq);
    km_release(e, &held, NULL);
    is_u64(ck_pr_load_32(&pool->wake_seq) - seq0, 0, "a release issues no wake-up");
    is_int(km_check(e, show_violation, NULL), 0, "km_check clean");
    ck_pr_inc_32(&pool->waiters); /* what a dead sleeper left before: no row holds it */
    is_int(km_check(e, NULL, NULL), 1, "km_check reports a sleeper counted by no process");
    ck_pr_dec_32(&pool->waiters);
    km_close(e);
    km_unlink(wname);
}

/* T3 (shm/proc.c): a dead slot marked by its reaper can be neither
 * claimed nor reaped by another process until the reaper frees it or gives
 * it back, and a reaper that dies holding the mark is taken over.  Without
 * it a second reaper could clear the sleeper row of a process that claimed
 * the slot in between. */
static void test_reap_mark(void)
{
    const char *js = "{\"capacity\":{\"processes\":2},\"pools\":[{\"name\":\"p\","
                     "\"keys\":[{\"id\":\"k\",\"secret\":\"sk-test-reapmark1\"}]}]}";
    char rname[64];
    km_env *e = create_seg(rname, sizeof rname, "crashr", js);
    pid_t c = fork();
    if (c == 0) {
        km_env *x;
        _exit(km_open_flags(rname, KM_OPEN_NO_REAP, &x) == KM_OK ? 0 : 1); /* dies attached */
    }
    int st;
    waitpid(c, &st, 0);
    uint32_t slot = 0;
    uint64_t tag = 0, mark = 0;
    int found = km__proc_next_dead(&e->seg, &slot, &tag);
    ok(found && WIFEXITED(st) && WEXITSTATUS(st) == 0 && slot == 1, "a dead process holds slot 1");
    ok(km__proc_reap_take(&e->seg, slot, tag, &mark) && km__tag_reaping(mark),
       "the reaper marks the dead slot");
    /* Another process attaching reaps first: it must neither reap nor claim
     * the marked slot while its reaper lives. */
    c = fork();
    if (c == 0) {
        km_env *x;
        int rc = km_open(rname, &x);
        _exit(rc == KM_EPROCS ? 0 : rc == KM_OK ? 1 : 2);
    }
    waitpid(c, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0, "an attach meanwhile finds the table full (KM_EPROCS)");
    is_int(ck_pr_load_64(&km__procs(&e->seg)[slot].tag), (int64_t)mark, "the mark is still the reaper's");
    km__proc_reap_undo(&e->seg, slot, mark, tag);
    is_int(ck_pr_load_64(&km__procs(&e->seg)[slot].tag), (int64_t)tag, "given back, the slot holds the dead tag again");
    /* A reaper that dies holding the mark: the next reap takes it over. */
    c = fork();
    if (c == 0) {
        uint64_t m;
        _exit(km__proc_reap_take(&e->seg, slot, tag, &m) ? 0 : 1);
    }
    waitpid(c, &st, 0);
    uint64_t left = ck_pr_load_64(&km__procs(&e->seg)[slot].tag);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0 && km__tag_reaping(left) && left != mark,
       "a reaper that died left its own mark");
    km_reap_report rep;
    km_reap(e, &rep);
    is_int(ck_pr_load_64(&km__procs(&e->seg)[slot].tag), 0, "the next reap took the dead reaper's mark over and freed the slot");
    km_info inf;
    km_info_get(e, &inf);
    is_int(inf.n_procs, 1, "one process attached, the reaper's own count right");
    is_int(km_check(e, NULL, NULL), 0, "km_check clean");
    km_close(e);
    km_unlink(rname);
}

int main(void)
{
    char js[2048], err[256];
    km_config *cfg;
    km_env *e;
    double secs = getenv("KM_TORTURE_S") ? atof(getenv("KM_TORTURE_S")) : 2.0;
#ifdef KM_TEST_SANITIZER
    if (!getenv("KM_TORTURE_S"))
        secs = 1.0;
#endif

    plan(42);
    snprintf(name, sizeof name, "kmt-crash-%d", (int)getpid());
    size_t o = (size_t)snprintf(js, sizeof js,
        "{\"capacity\":{\"processes\":32},\"pools\":[{\"name\":\"p\",\"limits\":{"
        "\"rpm\":{\"limit\":%d,\"burst\":%d},\"tpm\":{\"limit\":%d,\"burst\":%d}},\"keys\":[",
        RPM_LIMIT, RPM_BURST, TPM_LIMIT, TPM_BURST);
    for (int i = 0; i < KEYS; i++)
        o += (size_t)snprintf(js + o, sizeof js - o, "%s{\"id\":\"k%d\",\"secret\":\"sk-test-crash00%d\"}",
                              i ? "," : "", i, i);
    o += (size_t)snprintf(js + o, sizeof js - o, "]},{\"name\":\"fast\",\"limits\":{\"tpm\":{\"limit\":"
                          "1000000000000,\"burst\":1000000000}},\"keys\":[");
    for (int i = 0; i < KEYS; i++)
        o += (size_t)snprintf(js + o, sizeof js - o, "%s{\"id\":\"f%d\",\"secret\":\"sk-test-fast000%d\"}",
                              i ? "," : "", i, i);
    snprintf(js + o, sizeof js - o, "]}]}");
    km_unlink(name);
    if (km_config_parse(js, strlen(js), "t_crash", &cfg, err, sizeof err) ||
        km_create(name, cfg, 0, &e))
        bail_out("create: %s", err);
    sh = mmap(NULL, sizeof(shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        bail_out("mmap");

    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        pids[i] = spawn(i);
    int kills = 0, stops = 0, progress_ok = 1;
    uint64_t t_end = km_now_ns() + (uint64_t)(secs * 1e9);
    unsigned r = (unsigned)getpid();
    while (km_now_ns() < t_end) {
        sleep_ms(40 + (long)(rand_r(&r) % 20));
        int v = (int)(rand_r(&r) % WORKERS);
        if (rand_r(&r) % 8 == 0) {
            /* SIGSTOP one (wherever it is, likely mid-operation); the
             * others must go on acquiring and releasing. */
            uint64_t before = 0, after = 0;
            kill(pids[v], SIGSTOP);
            for (int i = 0; i < WORKERS; i++)
                before += i == v ? 0 : __atomic_load_n(&sh->ops[i], __ATOMIC_RELAXED);
            sleep_ms(100);
            for (int i = 0; i < WORKERS; i++)
                after += i == v ? 0 : __atomic_load_n(&sh->ops[i], __ATOMIC_RELAXED);
            if (after <= before)
                progress_ok = 0;
            kill(pids[v], SIGCONT);
            stops++;
            continue;
        }
        kill(pids[v], SIGKILL);
        waitpid(pids[v], NULL, 0);
        kills++;
        pids[v] = spawn(v);
    }
    for (int i = 0; i < WORKERS; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
        kills++;
    }
    uint64_t total_ops = 0;
    for (int i = 0; i < WORKERS; i++)
        total_ops += sh->ops[i];
    diag("%.1f s: %llu operations, %d kills, %d stops", secs, (unsigned long long)total_ops, kills, stops);
    ok(total_ops > (uint64_t)(secs * 10000), "workers made progress (%llu pairs)", (unsigned long long)total_ops);
    ok(progress_ok, "while one worker was stopped (%d times), the others completed operations", stops);

    km_reap_report rep;
    is_int(km_reap(e, &rep), KM_OK, "reap");
    diag("reap: %u processes, %llu leases, %u keys recounted, %u pending, %u keys repaired",
         rep.processes, (unsigned long long)rep.leases, rep.recounted, rep.pending, rep.repaired);
    is_u64(rep.repaired, 0, "no key's reservations had drifted from its live leases");
    is_u64(rep.pending, 0, "nothing left pending after the reap");
    int violations = km_check(e, show_violation, NULL);
    if (!is_int(violations, 0, "km_check: no violation after the reap"))
        dump_keys(e);
    km_info inf;
    km_info_get(e, &inf);
    is_u64(inf.n_procs, 1, "only the parent is attached");

    uint64_t acquired = 0, released = 0, inflight = 0, stale = 0;
    for (int i = 0; i < 2 * KEYS; i++) {
        km_key_info ki;
        km_key_info_get(e, (uint32_t)km_pool_key(e, i / KEYS, (uint32_t)(i % KEYS)), &ki);
        acquired += ki.acquired;
        for (int k = 0; k < KM_OUT_COUNT; k++)
            released += ki.outcomes[k];
        released += ki.abandoned;
        inflight += ki.inflight;
        stale += ki.stale_releases;
    }
    is_u64(inflight, 0, "in-flight is 0 on every key");
    ok(released <= acquired && acquired - released <= (uint64_t)kills,
       "released + abandoned (%llu) <= acquired (%llu), short by at most the kills (%d)",
       (unsigned long long)released, (unsigned long long)acquired, kills);
    is_u64(stale, 0, "no stale release: no lease released twice");

    /* Limits over every pair of recorded admissions, per key. */
    uint64_t n = sh->next < MAXREC ? sh->next : MAXREC, worst_num = 0, worst_den = 1, viol = 0;
    qsort(sh->r, n, sizeof(rec), cmp_rec);
    for (uint64_t a = 0; a < n;) {
        uint64_t b = a;
        while (b < n && sh->r[b].key == sh->r[a].key)
            b++;
        for (uint64_t i = a; i < b; i++) {
            uint64_t reqs = 0, toks = 0;
            for (uint64_t j = i; j < b; j++) {
                reqs++;
                toks += sh->r[j].tokens;
                double dt = (double)(sh->r[j].start - sh->r[i].start);
                double rb = dt * RPM_LIMIT / 60e9 + RPM_BURST, tb = dt * TPM_LIMIT / 60e9 + TPM_BURST;
                if ((double)reqs > rb + 1e-9 || (double)toks > tb + 1e-9)
                    viol++;
                if ((double)toks * (double)worst_den > tb * (double)worst_num) {
                    worst_num = toks;
                    worst_den = (uint64_t)tb;
                }
            }
        }
        a = b;
    }
    diag("%llu admissions recorded on the limited pool; tightest tpm interval %llu tokens vs bound %llu",
         (unsigned long long)n, (unsigned long long)worst_num, (unsigned long long)worst_den);
    is_u64(viol, 0, "no interval of any key exceeds its rpm or tpm bound");

    /* A process that died between claiming its table entry and writing its
     * pid (white-box: such an entry is written by hand) is found dead from
     * the pid in its tag and reaped, not taken for one still attaching. */
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0);
    km__proc *pt = km__procs(&e->seg);
    uint32_t free_slot = 0;
    while (free_slot < e->seg.hdr->cap_procs && ck_pr_load_64(&pt[free_slot].tag))
        free_slot++;
    ck_pr_store_64(&pt[free_slot].tag, ((uint64_t)(free_slot + 1) << 32) | (uint32_t)gone);
    ck_pr_inc_32(&e->seg.hdr->n_procs);
    is_int(km_check(e, show_violation, NULL), 1, "an entry left mid-attach by a dead process is a violation");
    km_reap(e, &rep);
    is_u64(rep.processes, 1, "reap frees the entry of a process that died mid-attach");
    km_info_get(e, &inf);
    is_u64(inf.n_procs, 1, "only the parent is attached again");

    test_dead_sleepers();
    test_reap_mark();

    munmap(sh, sizeof(shared));
    km_close(e);
    km_unlink(name);
    km_config_free(cfg);
    return exit_status();
}
