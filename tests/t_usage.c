/*
 * t_usage.c - usage events: per-process rings drained in order, exact.
 *
 *   - every release is one event with its pool, key id, model, tokens,
 *     outcome, latency, pid and start time; a second drain finds nothing;
 *   - a latency given as -1 is the one the library measured (the EMA's);
 *   - a pool without a models list names the model each request gave
 *     (kept in its model rows, capacity.models of them, "?" beyond; a row
 *     whose taker died unwritten is taken over);
 *   - a ring overrun keeps the newest events and counts the others dropped,
 *     exactly; appending never waited;
 *   - a lease a reaper releases is an "abandoned" event (KM_OUT_COUNT);
 *   - events of a process that detached survive the next occupant of its
 *     slot, each with its own pid; an event its writer died writing is
 *     sealed at the next attach and counted dropped, so no drain stalls;
 *   - one drainer at a time (KM_EBUSY for a second live one);
 *   - threads: the first acquiring thread records in its slot's ring 0 (no
 *     locked instruction), every other thread, and a thread releasing a
 *     lease it did not acquire, in ring 1; every event is drained exactly
 *     once;
 *   - `kmctl persist` drains into SQLite, writes a final snapshot on
 *     SIGTERM and exits 0; `kmctl usage` reports per key, model and outcome,
 *     also after the segment is gone, and a name in neither the database
 *     nor /dev/shm is status 3.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "testlib.h"

typedef struct got {
    int n;
    km_usage_event ev[64];
} got;

static int collect(void *ctx, const km_usage_event *ev)
{
    got *g = ctx;
    if (g->n < 64)
        g->ev[g->n] = *ev;
    g->n++;
    return 0;
}

static int drain(km_env *env, got *g, km_usage_report *r)
{
    memset(g, 0, sizeof *g);
    return km_usage_drain(env, collect, g, r);
}

static void lease_with(km_env *env, int pool, const char *model, int kind, int64_t lat, int64_t tok)
{
    km_request rq = {.pool = pool, .model = model, .tokens = 50};
    km_lease l;
    int rc = km_acquire(env, &rq, &l);
    if (rc != KM_OK)
        bail_out("acquire: %s", km_err_name(rc));
    release_with(env, &l, kind, lat, tok, 0);
}

static void child_leases(int n, int stay)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(3);
    for (int i = 0; i < n; i++)
        lease_with(e, 0, NULL, KM_OUT_SUCCESS, 10, 1);
    if (stay) { /* hold one lease and wait to be killed */
        km_request rq = {.pool = 0, .tokens = 7};
        km_lease l;
        km_acquire(e, &rq, &l);
        printf("%s", "");
        fflush(stdout);
        for (;;)
            pause();
    }
    km_close(e);
    _exit(0);
}

/* Threads: each releases N_PER leases tagged by latency = base + i. */
#define N_PER 500
#define N_THR 3
typedef struct tcount {
    uint8_t seen[(N_THR + 1) * N_PER + 2]; /* + the foreign release, the child's */
    uint64_t events, dup, stray;
} tcount;

static int count_tagged(void *ctx, const km_usage_event *ev)
{
    tcount *t = ctx;
    t->events++;
    if (ev->latency_us >= sizeof t->seen)
        t->stray++;
    else if (t->seen[ev->latency_us]++)
        t->dup++;
    return 0;
}

typedef struct targ {
    km_env *env;
    int base;
    const km_lease *foreign; /* a lease another thread acquired: release it */
    int failures;
} targ;

static void *thread_leases(void *p)
{
    targ *a = p;
    for (int i = 0; i < N_PER; i++) {
        km_request rq = {.pool = 0, .tokens = 1};
        km_lease l;
        if (km_acquire(a->env, &rq, &l) != KM_OK ||
            release_with(a->env, &l, KM_OUT_SUCCESS, a->base + i, 1, 0) != KM_OK)
            a->failures++;
    }
    if (a->foreign && release_with(a->env, a->foreign, KM_OUT_SUCCESS, (N_THR + 1) * N_PER, 1, 0) != KM_OK)
        a->failures++;
    return NULL;
}

/* A thread that never acquired: it has no reader row, so ring 1. */
static void *thread_release_only(void *p)
{
    targ *a = p;
    if (release_with(a->env, a->foreign, KM_OUT_SUCCESS, (N_THR + 1) * N_PER, 1, 0) != KM_OK)
        a->failures++;
    return NULL;
}

static void threads_case(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 2, \"usage_events\": 4096},"
                        " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"}]}]}");
    targ main_arg = {env, 0, NULL, 0};
    thread_leases(&main_arg); /* this thread acquires first: it holds row 1 */
    km_request rq = {.pool = 0, .tokens = 1};
    km_lease held;
    if (km_acquire(env, &rq, &held) != KM_OK)
        bail_out("acquire");
    targ a[N_THR];
    pthread_t th[N_THR];
    for (int t = 0; t < N_THR; t++) {
        a[t] = (targ){env, (t + 1) * N_PER, NULL, 0};
        pthread_create(&th[t], NULL, thread_leases, &a[t]);
    }
    for (int t = 0; t < N_THR; t++)
        pthread_join(th[t], NULL);
    targ ro = {env, 0, &held, 0};
    pthread_t rt;
    pthread_create(&rt, NULL, thread_release_only, &ro);
    pthread_join(rt, NULL);
    int fails = main_arg.failures + ro.failures;
    for (int t = 0; t < N_THR; t++)
        fails += a[t].failures;
    is_int(fails, 0, "threads: %d acquire+release pairs and one foreign release, all OK",
           (N_THR + 1) * N_PER);
    km__uring *r0 = km__urings(env, env->seg.proc_slot, 0), *r1 = km__urings(env, env->seg.proc_slot, 1);
    ok(ck_pr_load_64(&r0->head) == N_PER && ck_pr_load_64(&r1->head) == N_THR * N_PER + 1,
       "ring 0 took the first thread's %d events (%" PRIu64 "), ring 1 the other threads' %d (%" PRIu64 ")",
       N_PER, ck_pr_load_64(&r0->head), N_THR * N_PER + 1, ck_pr_load_64(&r1->head));
    /* A child that (wrongly) keeps using the parent's handle must not take
     * the parent's reader row 1 and so its ring 0. */
    uint64_t h0 = ck_pr_load_64(&r0->head), h1 = ck_pr_load_64(&r1->head);
    pid_t c = fork();
    if (c == 0) {
        km_request crq = {.pool = 0, .tokens = 1};
        km_lease cl;
        _exit(km_acquire(env, &crq, &cl) == KM_OK &&
                      release_with(env, &cl, KM_OUT_SUCCESS, (N_THR + 1) * N_PER + 1, 1, 0) == KM_OK
                  ? 0
                  : 2);
    }
    int cst;
    waitpid(c, &cst, 0);
    ok(WIFEXITED(cst) && WEXITSTATUS(cst) == 0 && ck_pr_load_64(&r0->head) == h0 &&
           ck_pr_load_64(&r1->head) == h1 + 1,
       "a child using the parent's handle records in ring 1, not the parent's ring 0");
    tcount *tc = calloc(1, sizeof *tc);
    km_usage_report rep;
    is_int(km_usage_drain(env, count_tagged, tc, &rep), KM_OK, "drain");
    ok(tc->events == (N_THR + 1) * N_PER + 2 && tc->dup == 0 && tc->stray == 0 && rep.dropped == 0,
       "every event drained exactly once (%" PRIu64 " events, %" PRIu64 " twice, %" PRIu64 " unknown, %" PRIu64 " dropped)",
       tc->events, tc->dup, tc->stray, rep.dropped);
    free(tc);
    rmseg(env);
}

/* Named rows under contention: events whose latency tags the name given. */
static const char *const RACE_NAMES[] = {"m-alpha", "m-beta", "m-gamma"};
typedef struct race_count {
    uint64_t events, wrong;
} race_count;

static int count_named(void *ctx, const km_usage_event *ev)
{
    race_count *c = ctx;
    c->events++;
    c->wrong += ev->latency_us >= 3 || strcmp(ev->model, RACE_NAMES[ev->latency_us]) != 0;
    return 0;
}

/* A pool without a models list takes any model name, and its events name
 * the one each request gave (docs/kmctl.md): its model rows keep the names
 * (src/acquire.c, N1-N3), capacity.models of them, truncated to 63 bytes;
 * a row a taker died before writing is taken over. */
static void named_models_case(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 2, \"models\": 3, \"processes\": 4},"
                        " \"pools\": [{\"name\": \"free\","
                        "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"}]}]}");
    char longname[100];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    got g;
    km_usage_report r;
    lease_with(env, 0, "gpt-4o", KM_OUT_SUCCESS, 10, 1);
    lease_with(env, 0, "gpt-4o-mini", KM_OUT_SUCCESS, 10, 1);
    lease_with(env, 0, NULL, KM_OUT_SUCCESS, 10, 1);
    lease_with(env, 0, "gpt-4o", KM_OUT_SUCCESS, 10, 1);
    drain(env, &g, &r);
    ok(g.n == 4 && !strcmp(g.ev[0].model, "gpt-4o") && !strcmp(g.ev[1].model, "gpt-4o-mini") &&
           g.ev[2].model[0] == '\0' && !strcmp(g.ev[3].model, "gpt-4o"),
       "a pool without a models list: each event names its request's model, '' for none "
       "(%s, %s, '%s', %s)", g.ev[0].model, g.ev[1].model, g.ev[2].model, g.ev[3].model);
    km_pool_info pi;
    km_pool_info_get(env, 0, &pi);
    is_int((int)pi.n_models, 0, "... and the pool still has no models list");

    /* The third and last row: a taker that died before writing it (N1). */
    pid_t c = fork();
    if (c == 0) {
        km_env *e;
        if (km_open(seg, &e) != KM_OK)
            _exit(3);
        ck_pr_store_64(&km__models(e, 0)[2].named_by, e->seg.tag);
        _exit(0); /* dies holding the row, its name unwritten */
    }
    waitpid(c, NULL, 0);
    lease_with(env, 0, longname, KM_OUT_SUCCESS, 10, 1);
    lease_with(env, 0, "llama-3", KM_OUT_SUCCESS, 10, 1); /* no row left */
    lease_with(env, 0, "gpt-4o-mini", KM_OUT_SUCCESS, 10, 1);
    drain(env, &g, &r);
    ok(g.n == 3 && strlen(g.ev[0].model) == KM_ID_MAX && !strncmp(g.ev[0].model, longname, KM_ID_MAX),
       "a dead taker's row is taken over; a name is kept to 63 bytes (%zu)", strlen(g.ev[0].model));
    ok(g.n == 3 && !strcmp(g.ev[1].model, "?") && !strcmp(g.ev[2].model, "gpt-4o-mini"),
       "once every row holds a name, another is '?', the kept ones still named (%s, %s)",
       g.ev[1].model, g.ev[2].model);
    km_reap_report rr;
    km_reap(env, &rr); /* the child that died */
    is_int(km_check(env, NULL, NULL), 0, "km_check finds nothing amiss");
    rmseg(env);

    /* Four processes meet three new names at once, each name in turn. */
    env = mkseg("{\"capacity\": {\"keys\": 2, \"models\": 8, \"processes\": 8,"
                " \"usage_events\": 1024, \"inflight_per_key\": 16},"
                " \"pools\": [{\"name\": \"free\","
                "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"}]}]}");
    /* Every child attaches before any starts: a child that finished and
     * closed would give its slot, and its ring, to one still attaching,
     * and 400 events in one ring of 512 plus 200 more overrun it. */
    int go[2], ready[2];
    if (pipe(go) != 0 || pipe(ready) != 0)
        bail_out("pipe");
    pid_t kids[4];
    for (int i = 0; i < 4; i++) {
        if ((kids[i] = fork()) == 0) {
            km_env *e;
            char b = 'r';
            close(go[1]);
            close(ready[0]);
            if (km_open(seg, &e) != KM_OK || write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 0)
                _exit(3);
            for (int j = 0; j < 200; j++)
                lease_with(e, 0, RACE_NAMES[(i + j) % 3], KM_OUT_SUCCESS, (i + j) % 3, 1);
            km_close(e);
            _exit(0);
        }
    }
    close(go[0]);
    close(ready[1]);
    char rb[4];
    size_t nready = 0;
    for (ssize_t k; nready < sizeof rb && (k = read(ready[0], rb + nready, sizeof rb - nready)) > 0;)
        nready += (size_t)k; /* each child attached (or died: EOF) */
    close(ready[0]);
    close(go[1]); /* all start together */
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    race_count rc = {0, 0};
    km_usage_drain(env, count_named, &rc, &r);
    ok(!bad && rc.events == 800 && rc.wrong == 0 && r.dropped == 0,
       "4 processes, 3 new names at once: 800 events, each naming its request's model "
       "(%" PRIu64 " events, %" PRIu64 " wrong)", rc.events, rc.wrong);
    if (bad || r.dropped)
        diag("  %d children failed; %" PRIu64 " events dropped", bad, r.dropped);
    for (uint32_t sl = 0; (bad || r.dropped) && sl < env->geom.cap_procs; sl++)
        for (uint32_t rg = 0; rg < KM__URINGS_PER_PROC; rg++) {
            km__uring *u = km__urings(env, sl, rg);
            if (ck_pr_load_64(&u->head))
                diag("  slot %u ring %u: head %" PRIu64 " drained %" PRIu64 " dropped %" PRIu64, sl, rg,
                     ck_pr_load_64(&u->head), ck_pr_load_64(&u->drained), ck_pr_load_64(&u->dropped));
        }
    rmseg(env);
}

/* Stop a drain after `left` events. */
typedef struct stop_after {
    got g;
    int left;
} stop_after;

static int collect_some(void *ctx, const km_usage_event *ev)
{
    stop_after *sa = ctx;
    if (sa->left-- <= 0)
        return 7;
    return collect(&sa->g, ev);
}

static int drain_defer(km_env *env, got *g, km_usage_report *r)
{
    memset(g, 0, sizeof *g);
    return km_usage_drain_ex(env, KM_USAGE_DEFER, collect, g, r);
}

/* Two-phase drains (KM_USAGE_DEFER, km_usage_commit) and the events'
 * identity (seq, ring, segment_ns). */
static void defer_case(uint64_t other_segment_ns)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4, \"usage_events\": 16, \"processes\": 4},"
                        " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"}]}]}");
    got g, g2;
    km_usage_report r;
    km_info in;
    km_info_get(env, &in);
    /* A drainer killed between its deferred drain and its commit: the
     * next drainer gets the events again.  (First: once this process has
     * drained, it is the drainer while it lives.) */
    for (int i = 0; i < 2; i++)
        lease_with(env, 0, NULL, KM_OUT_SUCCESS, 400 + i, 1);
    int pfd[2];
    if (pipe(pfd) != 0)
        bail_out("pipe");
    pid_t c = fork();
    if (c == 0) {
        km_env *e;
        static got gc; /* zero */
        if (km_open(seg, &e) != KM_OK)
            _exit(3);
        char n = (char)(km_usage_drain_ex(e, KM_USAGE_DEFER, collect, &gc, NULL) == KM_OK ? gc.n : -1);
        if (write(pfd[1], &n, 1) != 1)
            _exit(4);
        for (;;)
            pause();
    }
    char cn = -1;
    if (read(pfd[0], &cn, 1) != 1)
        cn = -1;
    is_int(km_usage_drain(env, collect, &g, &r), KM_EBUSY, "a live deferred drainer keeps the claim");
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    close(pfd[0]);
    close(pfd[1]);
    is_int(drain(env, &g, &r), KM_OK, "its successor drains");
    ok(cn == 2 && g.n == 2 && g.ev[0].latency_us == 400 && g.ev[1].latency_us == 401,
       "... the 2 events the killed one had read (child %d, %d)", cn, g.n);
    for (int i = 0; i < 3; i++)
        lease_with(env, 0, NULL, KM_OUT_SUCCESS, 100 + i, 1);
    is_int(drain_defer(env, &g, &r), KM_OK, "defer: drain_ex(KM_USAGE_DEFER)");
    ok(g.n == 3 && r.events == 3, "defer: it hands out the 3 events (%d)", g.n);
    int distinct = g.ev[0].seq == 2 && g.ev[1].seq == 3 && g.ev[2].seq == 4, same = 1;
    for (int i = 0; i < 3; i++)
        same &= g.ev[i].ring == g.ev[0].ring && g.ev[i].segment_ns == in.created_wall_ns &&
                g.ev[i].reserved0 == 0 && g.ev[i].reserved[0] == 0;
    ok(distinct && same,
       "identity: seq 2, 3, 4 (after the 2 above) in one ring (%d), segment_ns = km_info.created_wall_ns, reserved zero",
       g.ev[0].ring);
    ok(g.ev[0].segment_ns != other_segment_ns, "identity: another segment has another segment_ns");
    is_int(drain_defer(env, &g2, &r), KM_OK, "defer: no commit, drain again");
    int again = g2.n == 3;
    for (int i = 0; again && i < 3; i++)
        again = g2.ev[i].seq == g.ev[i].seq && g2.ev[i].ring == g.ev[i].ring &&
                g2.ev[i].segment_ns == g.ev[i].segment_ns && g2.ev[i].latency_us == g.ev[i].latency_us;
    ok(again, "... the same 3 events again, same identity (%d)", g2.n);
    /* A plain drain also starts where the last commit ended. */
    lease_with(env, 0, NULL, KM_OUT_SUCCESS, 103, 1);
    is_int(drain_defer(env, &g, &r), KM_OK, "defer: a fourth event, drain");
    ok(g.n == 4 && g.ev[3].seq == 5 && g.ev[3].latency_us == 103, "... 4 events, the new one seq 5");
    is_int(km_usage_commit(env), KM_OK, "km_usage_commit");
    is_int(km_usage_commit(env), KM_OK, "km_usage_commit again: nothing pending, KM_OK");
    is_int(drain(env, &g, &r), KM_OK, "drain after the commit");
    is_int(g.n, 0, "... nothing: the commit consumed them");

    /* A deferred drain stopped by its callback: the commit consumes up to
     * there. */
    for (int i = 0; i < 3; i++)
        lease_with(env, 0, NULL, KM_OUT_SUCCESS, 200 + i, 1);
    stop_after sa = {.left = 2};
    is_int(km_usage_drain_ex(env, KM_USAGE_DEFER, collect_some, &sa, &r), 7,
           "defer: fn stops the drain after 2 (its value returned)");
    is_int(km_usage_commit(env), KM_OK, "... commit");
    drain(env, &g, &r);
    ok(g.n == 1 && g.ev[0].latency_us == 202 && g.ev[0].seq == 8,
       "... the third event is what remains (%d events, seq %" PRIu64 ")", g.n, g.n ? g.ev[0].seq : 0);

    /* Drops are counted once, at the commit. */
    for (int i = 0; i < 12; i++) /* 8 per ring: 4 overwritten */
        lease_with(env, 0, NULL, KM_OUT_SUCCESS, 300 + i, 1);
    drain_defer(env, &g, &r);
    ok(g.n == 8 && r.dropped == 4 && r.dropped_total == 4,
       "defer: an overrun hands out 8, 4 dropped, 4 in all (%d, %" PRIu64 ", %" PRIu64 ")", g.n,
       r.dropped, r.dropped_total);
    drain_defer(env, &g, &r);
    ok(g.n == 8 && r.dropped == 4 && r.dropped_total == 4,
       "... again without a commit: the same, not counted twice (%" PRIu64 " in all)", r.dropped_total);
    km_usage_commit(env);
    drain(env, &g, &r);
    ok(g.n == 0 && r.dropped == 0 && r.dropped_total == 4,
       "... committed: nothing left, 4 dropped in all (%d, %" PRIu64 ")", g.n, r.dropped_total);

    is_int(km_usage_drain_ex(env, 2, collect, &g, &r), KM_EINVAL, "drain_ex: unknown flag, KM_EINVAL");
    km_env *ro;
    if (km_open_flags(seg, KM_OPEN_READONLY, &ro) == KM_OK) {
        is_int(km_usage_drain_ex(ro, KM_USAGE_DEFER, collect, &g, &r), KM_EREADONLY,
               "drain_ex on a read-only handle: KM_EREADONLY");
        km_close(ro);
    } else {
        ok(0, "read-only open");
    }
    rmseg(env);
}

int main(void)
{
    fixtures_init("usage");
    plan(68);
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4, \"usage_events\": 12, \"processes\": 8},"
                        " \"pools\": [{\"name\": \"p\", \"model_limits\": \"global\","
                        "  \"models\": {\"m1\": {}}, \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"}]}]}");
    got g;
    km_usage_report r;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    uint64_t now_wall = (uint64_t)wall.tv_sec * NS + (uint64_t)wall.tv_nsec;

    lease_with(env, 0, "m1", KM_OUT_SUCCESS, 1234, 40);
    lease_with(env, 0, NULL, KM_OUT_RATE_LIMITED, 99, 0);
    km_key_set_state(env, 0, KM_KEY_ACTIVE); /* clear the cooldown */
    lease_with(env, 0, NULL, KM_OUT_FAILURE, -1, -1);
    /* latency_us = -1 (README, Python's lease()): the library measures it,
     * and the event stores what it measured (~20 ms here). */
    uint64_t t0 = km_now_ns();
    km_request rq = {.pool = 0, .tokens = 5};
    km_lease l;
    if (km_acquire(env, &rq, &l) != KM_OK)
        bail_out("acquire");
    struct timespec ms20 = {0, 20 * 1000000};
    nanosleep(&ms20, NULL);
    release_with(env, &l, KM_OUT_SUCCESS, -1, 5, 0);
    uint64_t held_us = (km_now_ns() - t0) / 1000;
    is_int(drain(env, &g, &r), KM_OK, "drain");
    is_int(g.n, 4, "4 releases, 4 events");
    ok(!strcmp(g.ev[0].pool, "p") && !strcmp(g.ev[0].key_id, "a") && !strcmp(g.ev[0].model, "m1") &&
           g.ev[0].tokens == 40 && g.ev[0].outcome == KM_OUT_SUCCESS && g.ev[0].latency_us == 1234 &&
           g.ev[0].pid == (uint32_t)getpid(),
       "event 1: pool, key, model, tokens, outcome, latency, pid");
    int64_t dt = (int64_t)(g.ev[0].start_unix_ns - now_wall);
    ok(dt > -(int64_t)NS && dt < (int64_t)NS, "event 1: start time is now (%" PRId64 " ns)", dt);
    ok(g.ev[1].outcome == KM_OUT_RATE_LIMITED && g.ev[1].model[0] == '\0', "event 2: a 429, no model");
    ok(g.ev[2].outcome == KM_OUT_FAILURE && g.ev[2].latency_us < 1000000 && g.ev[2].tokens == 50,
       "event 3: latency -1 is measured (%" PRIu64 " us), tokens settled at the estimate",
       g.ev[2].latency_us);
    ok(g.ev[3].outcome == KM_OUT_SUCCESS && g.ev[3].latency_us >= 20000 &&
           g.ev[3].latency_us <= held_us,
       "event 4: latency -1 stores the measured latency (%" PRIu64 " us, held 20000..%" PRIu64 ")",
       g.ev[3].latency_us, held_us);
    uint64_t ema = info(env, 0).latency_ema_us, want = 1234 + (g.ev[3].latency_us - 1234) / 5;
    ok(ema + 1 >= want && ema <= want + 1,
       "... the one the latency EMA took (EMA %" PRIu64 " us, 1234 + (it - 1234) / 5 = %" PRIu64 ")",
       ema, want);
    is_u64(r.events, 4, "report: 4 events");
    is_int(drain(env, &g, &r), KM_OK, "drain again");
    is_int(g.n, 0, "nothing twice");

    /* Overrun: 8 events per ring (12 rounded up to a power of two, half for
     * each of the slot's two rings), 20 events, all in ring 0 (this thread). */
    for (int i = 0; i < 20; i++)
        lease_with(env, 0, NULL, KM_OUT_SUCCESS, i, 1);
    drain(env, &g, &r);
    is_int(g.n, 8, "overrun: the newest 8 events are kept");
    ok(g.ev[0].latency_us == 12 && g.ev[7].latency_us == 19, "... in order (latencies %" PRIu64 "..%" PRIu64 ")",
       g.ev[0].latency_us, g.ev[7].latency_us);
    is_u64(r.dropped, 12, "... and 12 counted dropped");
    is_u64(r.dropped_total, 12, "dropped in all: 12");

    /* Abandoned: a child dies holding a lease; the reap records it. */
    pid_t c = fork();
    if (c == 0)
        child_leases(0, 1);
    for (int i = 0; i < 2000; i++) {
        km_key_info ki = info(env, 0);
        if (ki.inflight == 1)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    km_reap_report rr;
    km_reap(env, &rr);
    is_u64(rr.leases, 1, "a dead child's lease is reaped");
    drain(env, &g, &r);
    is_int(g.n, 1, "one event for it");
    ok(g.ev[0].outcome == KM_OUT_COUNT && g.ev[0].tokens == 7, "... abandoned, settled at its estimate");

    /* Events of a detached process outlive it; the next occupant appends. */
    if ((c = fork()) == 0)
        child_leases(3, 0);
    waitpid(c, NULL, 0);
    pid_t c2 = fork();
    if (c2 == 0)
        child_leases(1, 0);
    waitpid(c2, NULL, 0);
    drain(env, &g, &r);
    is_int(g.n, 4, "4 events of two children that came and went");
    ok(g.n == 4 && g.ev[0].pid == (uint32_t)c && g.ev[3].pid == (uint32_t)c2, "... each with its pid");

    /* A writer that died mid-event: its slot's next occupant seals it. */
    if ((c = fork()) == 0)
        child_leases(0, 1);
    for (int i = 0; i < 2000 && info(env, 0).inflight == 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    uint32_t slot = UINT32_MAX;
    for (uint32_t s = 0; s < env->seg.hdr->cap_procs; s++)
        if ((uint32_t)ck_pr_load_64(&km__procs(&env->seg)[s].tag) == (uint32_t)c)
            slot = s;
    ok(slot != UINT32_MAX, "the child's process slot");
    km__uring *ring = km__urings(env, slot, 0); /* the child's one thread writes ring 0 */
    uint64_t h = ck_pr_faa_64(&ring->head, 1); /* as if it died after taking a number */
    km__uev *ev = (km__uev *)(void *)(ring + 1) + (h & 7);
    ck_pr_store_64(&ev->seq, 0);
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    drain(env, &g, &r);
    is_int(g.n, 0, "an event whose writer died mid-way is not handed out");
    ok(r.dropped == 1, "... it is counted dropped (%" PRIu64 "), and the drain does not wait", r.dropped);
    if ((c = fork()) == 0)
        child_leases(1, 0); /* attaches (reaps, takes the slot, seals), one event */
    waitpid(c, NULL, 0);
    drain(env, &g, &r);
    /* The child reaped the dead one's lease at attach (an abandoned event
     * in its own ring), then released one lease. */
    ok(g.n == 2 && g.ev[0].outcome == KM_OUT_COUNT && g.ev[1].outcome == KM_OUT_SUCCESS &&
           g.ev[0].pid == (uint32_t)c && g.ev[1].pid == (uint32_t)c,
       "the next process's events flow: its reap's abandoned lease, its release (%d events)", g.n);

    /* One drainer at a time. */
    if ((c = fork()) == 0) {
        km_env *e;
        got g2;
        if (km_open(seg, &e) != KM_OK)
            _exit(3);
        _exit(km_usage_drain(e, collect, &g2, NULL) == KM_EBUSY ? 0 : 1);
    }
    int st;
    waitpid(c, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a second live drainer gets KM_EBUSY");
    km_info in0;
    km_info_get(env, &in0);
    rmseg(env);

    threads_case();
    named_models_case();
    defer_case(in0.created_wall_ns);

    /* kmctl persist and usage. */
    env = mkseg("{\"capacity\": {\"keys\": 4}, \"pools\": [{\"name\": \"p\","
                " \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-12345678\"},"
                "            {\"id\": \"b\", \"secret\": \"sk-b-12345678\"}]}]}");
    const char *b = getenv("KM_BUILD") ? getenv("KM_BUILD") : "build";
    char kmctl[256], dbf[128], snap[128], cmd[1024], line[512];
    snprintf(kmctl, sizeof kmctl, "%s/kmctl", b);
    snprintf(dbf, sizeof dbf, "/tmp/kmt-usage-%d.db", (int)getpid());
    snprintf(snap, sizeof snap, "/tmp/kmt-usage-%d.json", (int)getpid());
    unlink(dbf);
    unlink(snap);
    pid_t pp = fork();
    if (pp == 0) {
        if (!freopen("/dev/null", "w", stdout)) /* its summary line is not TAP */
            _exit(126);
        execl(kmctl, kmctl, "persist", seg, "--db", dbf, "--interval", "1", "--snapshot", snap,
              (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 10; i++) {
        lease_with(env, 0, i % 2 ? "gpt-4o" : NULL, i < 7 ? KM_OUT_SUCCESS : KM_OUT_RATE_LIMITED,
                   2000, 100);
        km_key_set_state(env, 0, KM_KEY_ACTIVE); /* end any cooldown a 429 began */
        km_key_set_state(env, 1, KM_KEY_ACTIVE);
    }
    sleep(2); /* persist drains every second */
    kill(pp, SIGTERM);
    waitpid(pp, &st, 0);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "persist exits 0 on SIGTERM");
    struct stat sb;
    ok(stat(snap, &sb) == 0 && (sb.st_mode & 0777) == 0600, "... after writing its snapshot (0600)");
    ok(stat(dbf, &sb) == 0 && (sb.st_mode & 0777) == 0600, "the database is 0600");
    snprintf(cmd, sizeof cmd, "%s usage %s --db %s --by outcome", kmctl, seg, dbf);
    FILE *f = popen(cmd, "r");
    int ok_rows = 0, rl_rows = 0;
    while (f && fgets(line, sizeof line, f)) {
        long long req, tok;
        if (sscanf(line, "success %lld %lld", &req, &tok) == 2)
            ok_rows = req == 7 && tok == 700;
        if (sscanf(line, "rate_limited %lld %lld", &req, &tok) == 2)
            rl_rows = req == 3 && tok == 300;
    }
    int prc = f ? pclose(f) : -1;
    ok(prc == 0 && ok_rows && rl_rows, "kmctl usage --by outcome: 7 successes (700 tokens), 3 429s");
    snprintf(cmd, sizeof cmd, "%s usage %s --db %s --by key --since 5m", kmctl, seg, dbf);
    f = popen(cmd, "r");
    long long total = 0;
    while (f && fgets(line, sizeof line, f)) {
        char k[64];
        long long req;
        if (sscanf(line, "%63s %lld", k, &req) == 2 && (!strcmp(k, "a") || !strcmp(k, "b")))
            total += req;
    }
    prc = f ? pclose(f) : -1;
    is_int(total, 10, "kmctl usage --by key: 10 requests over keys a and b");
    /* The pool has no models list: the database names the model each
     * request gave, and none where it gave none. */
    snprintf(cmd, sizeof cmd, "%s usage %s --db %s --by model", kmctl, seg, dbf);
    f = popen(cmd, "r");
    int named = 0, unnamed = 0;
    while (f && fgets(line, sizeof line, f)) {
        char m[64];
        long long req;
        if (sscanf(line, "%63s %lld", m, &req) == 2)
            named += !strcmp(m, "gpt-4o") ? (int)req : 0, unnamed += !strcmp(m, "-") ? (int)req : 0;
    }
    prc = f ? pclose(f) : -1;
    ok(prc == 0 && named == 5 && unnamed == 5,
       "kmctl usage --by model: 5 gpt-4o, 5 without a model (got %d, %d)", named, unnamed);
    snprintf(cmd, sizeof cmd, "%s usage %s --db %s --by colour 2>/dev/null", kmctl, seg, dbf);
    is_int(WEXITSTATUS(system(cmd)), 2, "kmctl usage refuses an unknown field (status 2)");
    /* The database's history outlives the segment; a name in neither is
     * an error, not an empty report. */
    char gone[sizeof seg];
    snprintf(gone, sizeof gone, "%s", seg);
    rmseg(env);
    snprintf(cmd, sizeof cmd, "%s usage %s --db %s --by outcome | grep -q '^success '", kmctl,
             gone, dbf);
    is_int(WEXITSTATUS(system(cmd)), 0, "kmctl usage reports a removed segment's history");
    snprintf(cmd, sizeof cmd, "%s usage %s-none --db %s 2>/dev/null", kmctl, gone, dbf);
    is_int(WEXITSTATUS(system(cmd)), 3, "kmctl usage of a segment in neither: status 3");
    unlink(dbf);
    unlink(snap);
    snprintf(cmd, sizeof cmd, "rm -f %s-wal %s-shm", dbf, dbf);
    if (system(cmd) != 0)
        diag("could not remove %s-wal", dbf);
    return exit_status();
}
