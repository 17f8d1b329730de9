/*
 * t_reconfig.c - live reconfiguration and epochs across processes.
 *
 * Unit scenarios (one process):
 *   - add: index, member list, pinned acquire, the lease's copy of the secret;
 *     duplicate id, bad JSON (message without the secret), full capacity;
 *   - one API key, one row: a secret already held by a key of any pool is
 *     refused (KM_EDUPSECRET, message naming that key, not the secret);
 *   - km_key_find_secret: the key holding a secret, in its pool only, not
 *     once removed; no prefix, longer string, id or empty string matches;
 *   - remove: no acquire after it gets the key, a lease out releases OK;
 *     the row is reused only once that lease is back and a grace period
 *     passed, with a new generation; the old lease's second release is
 *     stale and counted;
 *   - set-weight: weighted shares follow the new weights;
 *   - set-limits: debt carried over in units; token windows added and
 *     removed while a lease is out settle without drift (km_check clean).
 * Torture (processes): 8 workers (two of them with 3 and 9 threads, the
 * last sharing its process's overflow reader row) acquire and release
 * while a reconfigurer
 * adds, removes and re-weights keys (and now and then changes limits)
 * every 10 ms for 5 s (KM_TORTURE_S to change):
 *   - no lease is handed out for a key to an acquire that started after the
 *     key's removal returned (per key id: latest acquire start < removal);
 *   - no lease is duplicated: a holder table in shared memory, claimed by
 *     CAS per (key row, lease slot), never finds one taken;
 *   - no lease is lost: every release returns KM_OK;
 *   - afterwards in-flight is 0 everywhere and km_check is clean.
 * Stall: a worker stopped by SIGSTOP inside an acquire (its reader row is
 * seen active) does not stop another process from acquiring and releasing;
 * it makes a grace period time out (KM_EBUSY) and is reported by
 * km_reader_info_get and `kmctl inspect` (pid, epochs behind, time inside);
 * a removal still takes effect; after SIGCONT the grace period completes.
 * Dead writers (issue 17, findings 1 and 2): a writer SIGKILLed while
 * km_key_add or km_key_set_limits waits for a grace period (a stalled
 * reader holds it) leaves no key row live outside every member list and no
 * key skipped for good: km_check names the interrupted change until the
 * next writer (add) or a reap (limits) resolves it; then km_check is clean,
 * the key is absent or usable, its id can be added again, and keys added
 * until KM_EFULL fill every row.  A removed key that its list still names
 * (the rebuild timed out) is not reused for a key of another pool while
 * that list names it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "testlib.h"

#define WORKERS 8
#define CAP_KEYS 16
#define MAX_IDS 4096
#define INFL 8

static const char base_json[] =
    "{\"capacity\": {\"keys\": 4, \"inflight_per_key\": 4},"
    " \"pools\": [{\"name\": \"p\", \"strategy\": \"weighted\","
    "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-alpha-000000000001\"},"
    "            {\"id\": \"b\", \"secret\": \"sk-bravo-000000000002\"}]}]}";

static int pinned(km_env *env, int pool, const char *id, km_lease *l)
{
    km_request r = {.pool = pool, .key_id = id};
    memset(l, 0, sizeof *l);
    return km_acquire(env, &r, l);
}

static void t_add_remove(void)
{
    km_env *env = mkseg(base_json);
    int p = pool_of(env, "p");
    char err[256];
    km_lease l, old;
    km_pool_info pi;

    int c = km_key_add(env, p, "{\"id\": \"c\", \"secret\": \"sk-charlie-0000000003\", \"weight\": 2}",
                       err, sizeof err);
    ok(c >= 0, "add: key c gets a row (%s %s)", c < 0 ? E(c) : "", err);
    km_pool_info_get(env, p, &pi);
    is_int(pi.n_keys, 3, "add: the pool lists 3 keys");
    is_int(pinned(env, p, "c", &l), KM_OK, "add: c is acquirable by id");
    is_str(l.secret, "sk-charlie-0000000003", "add: the lease carries c's secret");
    is_int(km_release(env, &l, NULL), KM_OK, "add: release");

    int rc = km_key_add(env, p, "{\"id\": \"c\", \"secret\": \"sk-x\"}", err, sizeof err);
    is_int(rc, KM_EKEYEXISTS, "add: a second c is refused");
    rc = km_key_add(env, p, "{\"id\": \"d\", \"secret\": \"sk-secret-delta-9\", \"weight\": 0}",
                    err, sizeof err);
    is_int(rc, KM_ECONFIG, "add: weight 0 is refused");
    ok(strstr(err, "weight") && !strstr(err, "sk-secret-delta-9"),
       "add: the message names the field, not the secret: %s", err);
    rc = km_key_add(env, p, "{\"id\": \"d\", \"secret\": \"sk-secret-delta-9\"", err, sizeof err);
    is_int(rc, KM_ECONFIG, "add: malformed JSON is refused");
    int d = km_key_add(env, p, "{\"id\": \"d\", \"secret\": \"sk-delta-0000000004\"}", err, sizeof err);
    ok(d >= 0, "add: d fills the last row");
    rc = km_key_add(env, p, "{\"id\": \"e\", \"secret\": \"sk-echo-0000000005\"}", err, sizeof err);
    is_int(rc, KM_EFULL, "add: a fifth key does not fit 4 rows");

    /* Remove c while a lease on it is out. */
    is_int(pinned(env, p, "c", &old), KM_OK, "remove: a lease on c is out");
    is_int(km_key_remove(env, (uint32_t)c), KM_OK, "remove: c");
    int got_c = 0, n_ok = 0;
    for (int i = 0; i < 4000; i++) {
        if (acquire_with(env, p, 0, 0, &l) != KM_OK)
            continue;
        n_ok++;
        got_c += l.key == c;
        km_release(env, &l, NULL);
    }
    ok(n_ok > 0, "remove: the pool still hands out leases (%d)", n_ok);
    is_int(got_c, 0, "remove: no acquire after the removal got c");
    is_int(pinned(env, p, "c", &l), KM_ENOKEY, "remove: c is no longer found by id");
    km_key_info ki;
    is_int(km_key_info_get(env, (uint32_t)c, &ki), KM_ENOKEY, "remove: no key info for c");
    km_pool_info_get(env, p, &pi);
    is_int(pi.n_keys, 3, "remove: the list has 3 keys");
    rc = km_key_add(env, p, "{\"id\": \"e\", \"secret\": \"sk-echo-0000000005\"}", err, sizeof err);
    is_int(rc, KM_EFULL, "reuse: c's row is not reused while its lease is out");
    is_int(km_release(env, &old, NULL), KM_OK, "remove: the lease out on c releases normally");
    int e = km_key_add(env, p, "{\"id\": \"e\", \"secret\": \"sk-echo-0000000005\"}", err, sizeof err);
    is_int(e, c, "reuse: e takes c's row once its lease is back");
    is_int(pinned(env, p, "e", &l), KM_OK, "reuse: e is acquirable");
    is_str(l.secret, "sk-echo-0000000005", "reuse: the row holds e's secret");
    ok(l.key_gen == old.key_gen + 1, "reuse: generation %u -> %u", old.key_gen, l.key_gen);
    is_int(km_release(env, &old, NULL), KM_ESTALE, "reuse: c's lease released again is stale");
    is_int(km_release(env, &l, NULL), KM_OK, "reuse: e's lease releases");
    ki = info(env, (uint32_t)e);
    is_u64(ki.stale_releases, 1, "reuse: the stale release is counted on the row");
    is_u64(ki.acquired, 1, "reuse: e's counters start from zero");
    is_int(km_check(env, NULL, NULL), 0, "add/remove: km_check clean");
    /* A handle closed and another opened by the same thread (often at the
     * same address): the thread's reader row is bound again, never reused
     * from the old mapping. */
    int fine = 0;
    for (int i = 0; i < 4; i++) {
        km_env *h2;
        km_lease l2;
        if (km_open(seg, &h2) != KM_OK)
            break;
        fine += acquire_with(h2, p, 0, 0, &l2) == KM_OK && km_release(h2, &l2, NULL) == KM_OK;
        km_close(h2);
    }
    is_int(fine, 4, "close and reopen in one thread: acquire works each time");
    rmseg(env);
}

static void t_weight(void)
{
    km_env *env = mkseg(base_json);
    int p = pool_of(env, "p");
    int a = key_of(env, p, 0), b = key_of(env, p, 1);
    is_int(km_key_set_weight(env, b, 3), KM_OK, "weight: b to 3");
    is_int(km_key_set_weight(env, b, 0), KM_EINVAL, "weight: 0 refused");
    int n[2] = {0, 0}, total = 40000;
    for (int i = 0; i < total; i++) {
        km_lease l;
        if (acquire_with(env, p, KM_STRATEGY_WEIGHTED, 0, &l) != KM_OK)
            continue;
        n[l.key == b]++;
        km_release(env, &l, NULL);
    }
    /* Expected share of b: 3/4 = 30000; weighted starts at the chosen key
     * and every lease is released at once, so shares follow the weights;
     * binomial sd ~87, tolerance 5% of the total. */
    ok(n[1] > 28000 && n[1] < 32000, "weight: b got %d of %d (expect ~30000)", n[1], total);
    is_int(info(env, a).weight, 1, "weight: a unchanged");
    is_int(info(env, b).weight, 3, "weight: b shows 3");
    rmseg(env);
}

static void t_limits(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 2},"
                        " \"pools\": [{\"name\": \"p\", \"limits\": {\"rpm\": 600},"
                        "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-123456789\"}]}]}");
    int p = pool_of(env, "p");
    int a = key_of(env, p, 0);
    km_lease l[100];
    char err[256];
    for (int i = 0; i < 50; i++)
        if (acquire_with(env, p, 0, 0, &l[i]) != KM_OK || km_release(env, &l[i], NULL) != KM_OK)
            bail_out("limits: acquire %d failed", i);
    /* 50 of 600 used (burst 600): 550 left.  To rpm 100 (burst 100): the
     * 50 units of debt carry over: ~50 left (refill adds a little). */
    is_int(km_key_set_limits(env, a, "{\"rpm\": 100}", err, sizeof err), KM_OK, "limits: rpm 600 -> 100");
    km_key_info ki = info(env, a);
    is_u64(ki.limits[KM_WIN_RPM].limit, 100, "limits: rpm shows 100");
    ok(ki.limits[KM_WIN_RPM].available >= 50 && ki.limits[KM_WIN_RPM].available <= 52,
       "limits: debt carried over, %" PRIu64 " of 100 available (expect 50..52)",
       ki.limits[KM_WIN_RPM].available);
    is_int(km_key_set_limits(env, a, "{\"rpm\": 0}", err, sizeof err), KM_ECONFIG, "limits: rpm 0 refused");
    is_int(km_key_set_limits(env, a, "{\"qpm\": 5}", err, sizeof err), KM_ECONFIG, "limits: unknown window refused");
    is_int(km_key_set_limits(env, a, "{}", err, sizeof err), KM_ECONFIG, "limits: an empty object refused");

    /* A token window added while a lease is out: that lease reserved
     * nothing on it and must not take anything back at release. */
    is_int(acquire_with(env, p, 0, 700, &l[0]), KM_OK, "limits: a 700-token lease without tpm");
    is_int(km_key_set_limits(env, a, "{\"tpm\": 10000}", err, sizeof err), KM_OK, "limits: tpm added");
    is_int(acquire_with(env, p, 0, 300, &l[1]), KM_OK, "limits: a 300-token lease with tpm");
    is_int(km_check(env, NULL, NULL), 0, "limits: check clean with both out");
    is_int(km_release(env, &l[0], NULL), KM_OK, "limits: old lease released");
    ki = info(env, a);
    is_int(km_check(env, NULL, NULL), 0, "limits: reservation intact after the old lease");
    /* Removed while the 300-token lease is out: its reservation is dropped
     * at its release. */
    is_int(km_key_set_limits(env, a, "{\"tpm\": null}", err, sizeof err), KM_OK, "limits: tpm removed");
    is_u64(info(env, a).limits[KM_WIN_TPM].limit, 0, "limits: tpm shows none");
    is_int(km_release(env, &l[1], NULL), KM_OK, "limits: the tpm lease released");
    is_int(km_check(env, NULL, NULL), 0, "limits: check clean after the window went away");
    rmseg(env);
}

/* ------------------------------------------------------------- torture */

typedef struct shared {
    uint32_t holder[CAP_KEYS][INFL];     /* worker + 1 holding (row, slot) */
    uint64_t last_start[WORKERS][MAX_IDS]; /* latest acquire start per key id */
    uint64_t removed_at[MAX_IDS];        /* when km_key_remove(id) returned */
    uint64_t ops[WORKERS], dup[WORKERS], bad_release[WORKERS], bad_acquire[WORKERS];
    uint64_t adds, removes, weights, limits, busy;
    int stop;
} shared;

static shared *sh;

static unsigned id_num(const char *key_id) { return (unsigned)strtoul(key_id + 1, NULL, 10); }

typedef struct wctx {
    km_env *e;
    int w;
} wctx;

static void *worker_thread(void *arg)
{
    km_env *e = ((wctx *)arg)->e;
    int w = ((wctx *)arg)->w;
    int p = km_pool_find(e, "p");
    for (uint64_t i = 0; !ck_pr_load_int(&sh->stop); i++) {
        km_request r = {.pool = p, .tokens = 10,
                        .strategy = (w & 1) ? KM_STRATEGY_WEIGHTED : KM_STRATEGY_ROUND_ROBIN};
        km_lease l;
        uint64_t t0 = km_now_ns();
        int rc = km_acquire(e, &r, &l);
        if (rc != KM_OK) {
            if (rc != KM_EAGAIN && rc != KM_EUNAVAIL)
                ck_pr_inc_64(&sh->bad_acquire[w]);
            continue;
        }
        unsigned id = id_num(l.key_id);
        if (id < MAX_IDS) { /* the latest start: threads of w share the slot */
            uint64_t cur = ck_pr_load_64(&sh->last_start[w][id]);
            while (t0 > cur && !ck_pr_cas_64_value(&sh->last_start[w][id], cur, t0, &cur))
                ;
        }
        uint32_t *h = &sh->holder[l.key % CAP_KEYS][l.slot % INFL];
        if (!ck_pr_cas_32(h, 0, (uint32_t)w + 1))
            ck_pr_inc_64(&sh->dup[w]);
        if (i % 4 == 0)
            sched_yield(); /* hold some leases across a reconfiguration */
        ck_pr_store_32(h, 0); /* before the slot can be granted again */
        if (km_release(e, &l, NULL) != KM_OK)
            ck_pr_inc_64(&sh->bad_release[w]);
        ck_pr_inc_64(&sh->ops[w]);
    }
    return NULL;
}

/* Workers 0-5 run one thread; 6 runs 3 (a reader row each); 7 runs 9, more
 * than a process's 7 own rows, so some share its overflow row. */
static void worker(int w)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(3);
    int nt = w == 6 ? 3 : w == 7 ? 9 : 1;
    pthread_t t[9];
    wctx c = {e, w};
    for (int i = 1; i < nt; i++)
        if (pthread_create(&t[i], NULL, worker_thread, &c) != 0)
            _exit(7);
    worker_thread(&c);
    for (int i = 1; i < nt; i++)
        pthread_join(t[i], NULL);
    km_close(e);
    _exit(0);
}

static void reconfigurer(uint64_t until)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(3);
    int p = km_pool_find(e, "p");
    unsigned next = 4, live[CAP_KEYS], n = 4;
    for (unsigned i = 0; i < 4; i++)
        live[i] = i;
    srand(7);
    while (km_now_ns() < until && next < MAX_IDS) {
        int op = rand() % 8;
        char js[160], id[16], err[256];
        if ((op < 3 && n < 10) || n < 3) {
            snprintf(js, sizeof js, "{\"id\": \"k%u\", \"secret\": \"sk-torture-%08u\", \"weight\": %d}",
                     next, next, 1 + rand() % 5);
            int rc = km_key_add(e, p, js, err, sizeof err);
            if (rc >= 0) {
                live[n++] = next++;
                sh->adds++;
            } else if (rc == KM_EBUSY) {
                sh->busy++;
            } else if (rc != KM_EFULL) {
                fprintf(stderr, "# add: %s %s\n", km_err_name(rc), err);
                _exit(4);
            }
        } else if (op < 6) {
            unsigned j = (unsigned)rand() % n;
            snprintf(id, sizeof id, "k%u", live[j]);
            int ki = km_key_find(e, p, id);
            if (ki < 0 || km_key_remove(e, ki) != KM_OK)
                _exit(5);
            sh->removed_at[live[j]] = km_now_ns(); /* after the removal returned */
            live[j] = live[--n];
            sh->removes++;
        } else if (op == 6) {
            snprintf(id, sizeof id, "k%u", live[(unsigned)rand() % n]);
            int ki = km_key_find(e, p, id), rc;
            if (ki < 0)
                _exit(6);
            rc = km_key_set_weight(e, ki, 1 + (uint32_t)(rand() % 9));
            sh->weights += rc == KM_OK;
            sh->busy += rc == KM_EBUSY;
        } else {
            snprintf(id, sizeof id, "k%u", live[(unsigned)rand() % n]);
            int ki = km_key_find(e, p, id), rc;
            if (ki < 0)
                _exit(6);
            rc = km_key_set_limits(e, ki,
                                   rand() % 2 ? "{\"tpm\": 100000000}" : "{\"tpm\": null}", err,
                                   sizeof err);
            sh->limits += rc == KM_OK;
            sh->busy += rc == KM_EBUSY;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    km_close(e);
    _exit(0);
}

static void t_torture(void)
{
    const char *ts = getenv("KM_TORTURE_S");
    double secs = ts ? atof(ts) : 5;
    char json[1024];
    int len = snprintf(json, sizeof json,
                       "{\"capacity\": {\"keys\": %d, \"inflight_per_key\": %d, \"processes\": 16},"
                       " \"pools\": [{\"name\": \"p\", \"strategy\": \"weighted\","
                       "  \"limits\": {\"rpm\": 100000000}, \"keys\": [",
                       CAP_KEYS, INFL);
    for (int i = 0; i < 4; i++)
        len += snprintf(json + len, sizeof json - (size_t)len,
                        "%s{\"id\": \"k%d\", \"secret\": \"sk-torture-%08d\"}", i ? ", " : "", i, i);
    snprintf(json + len, sizeof json - (size_t)len, "]}]}");
    km_env *env = mkseg(json);

    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        bail_out("mmap");
    memset(sh->removed_at, 0xff, sizeof sh->removed_at); /* never removed */
    pid_t pids[WORKERS + 1];
    for (int w = 0; w < WORKERS; w++)
        if ((pids[w] = fork()) == 0)
            worker(w);
    uint64_t until = km_now_ns() + (uint64_t)(secs * 1e9);
    if ((pids[WORKERS] = fork()) == 0)
        reconfigurer(until);
    int st, rst = -1;
    waitpid(pids[WORKERS], &st, 0);
    rst = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    ck_pr_store_int(&sh->stop, 1);
    int wbad = 0;
    for (int w = 0; w < WORKERS; w++) {
        waitpid(pids[w], &st, 0);
        wbad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    is_int(rst, 0, "torture: the reconfigurer ran to the end");
    is_int(wbad, 0, "torture: every worker exited normally");
    uint64_t ops = 0, dup = 0, badr = 0, bada = 0, late = 0;
    for (int w = 0; w < WORKERS; w++) {
        ops += sh->ops[w];
        dup += sh->dup[w];
        badr += sh->bad_release[w];
        bada += sh->bad_acquire[w];
        for (unsigned id = 0; id < MAX_IDS; id++)
            if (sh->last_start[w][id] && sh->last_start[w][id] > sh->removed_at[id]) {
                if (late++ < 5)
                    diag("key k%u: an acquire started %.3f ms after its removal returned got it",
                         id, (double)(sh->last_start[w][id] - sh->removed_at[id]) / 1e6);
            }
    }
    diag("%.1f s: %" PRIu64 " leases; %" PRIu64 " adds, %" PRIu64 " removes, %" PRIu64
         " re-weights, %" PRIu64 " limit changes, %" PRIu64 " grace periods timed out",
         secs, ops, sh->adds, sh->removes, sh->weights, sh->limits, sh->busy);
    ok(ops > 10000, "torture: workers completed %" PRIu64 " leases", ops);
    ok(sh->adds > 20 && sh->removes > 20 && sh->weights > 5,
       "torture: reconfigured throughout (%" PRIu64 " adds, %" PRIu64 " removes)", sh->adds, sh->removes);
    is_u64(late, 0, "torture: no lease for a key to an acquire started after its removal");
    is_u64(dup, 0, "torture: no lease slot held twice at once");
    is_u64(badr, 0, "torture: every release returned KM_OK (no lease lost)");
    is_u64(bada, 0, "torture: acquire failed only with EAGAIN/EUNAVAIL");
    uint64_t inflight = 0;
    for (uint32_t k = 0; k < CAP_KEYS; k++) {
        km_key_info ki;
        if (km_key_info_get(env, k, &ki) == KM_OK)
            inflight += ki.inflight;
    }
    is_u64(inflight, 0, "torture: in-flight 0 on every key afterwards");
    is_int(km_check(env, NULL, NULL), 0, "torture: km_check clean");
    munmap(sh, sizeof *sh);
    rmseg(env);
}

/* --------------------------------------------------------------- stall */

static void spinner(int *go)
{
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(3);
    int p = km_pool_find(e, "p");
    ck_pr_store_int(go, 1);
    for (;;) {
        km_lease l;
        if (acquire_with(e, p, 0, 0, &l) == KM_OK)
            km_release(e, &l, NULL);
    }
}

static void t_stall(void)
{
    km_env *env = mkseg(base_json);
    int p = pool_of(env, "p");
    int *go = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *go = 0;
    pid_t pid = fork();
    if (pid == 0)
        spinner(go);
    while (!ck_pr_load_int(go))
        sched_yield();
    /* A re-weight first: the spare member list is then in its grace period
     * and cannot be rewritten while the worker below is stalled. */
    is_int(km_key_set_weight(env, key_of(env, p, 0), 2), KM_OK, "stall: a re-weight before the stall");
    /* Stop it until it is caught inside an acquire (its row active). */
    km_info inf;
    km_info_get(env, &inf);
    int caught = 0, tries;
    uint32_t slot = 0, row = 0;
    for (tries = 0; tries < 2000 && !caught; tries++) {
        int st;
        kill(pid, SIGSTOP);
        waitpid(pid, &st, WUNTRACED);
        for (uint32_t s = 0; s < inf.cap_procs && !caught; s++)
            for (uint32_t r = 0; r < KM__RDR_PER_PROC && !caught; r++) {
                km_reader_info ri;
                if (km_reader_info_get(env, s, r, &ri) == KM_OK && ri.pid == (uint32_t)pid)
                    caught = 1, slot = s, row = r;
            }
        if (!caught) {
            kill(pid, SIGCONT);
            struct timespec ts = {0, 200 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    ok(caught, "stall: worker stopped inside an acquire (after %d tries)", tries);

    /* Others make progress. */
    int done = 0;
    for (int i = 0; i < 20000; i++) {
        km_lease l;
        if (acquire_with(env, p, 0, 0, &l) == KM_OK && km_release(env, &l, NULL) == KM_OK)
            done++;
    }
    is_int(done, 20000, "stall: another process acquired and released 20000 times");

    /* Reclamation is held back, and reported. */
    char err[256];
    km_set_admin_timeout(env, 200);
    int a = key_of(env, p, 0);
    int rc = km_key_set_limits(env, a, "{\"rpm\": 1000}", err, sizeof err);
    is_int(rc, KM_EBUSY, "stall: a grace period times out (KM_EBUSY)");
    is_u64(info(env, a).limits[KM_WIN_RPM].limit, 0, "stall: nothing changed");
    km_reader_info ri = {0};
    is_int(km_reader_info_get(env, slot, row, &ri), KM_OK, "stall: its row is reported");
    is_int(ri.pid, pid, "stall: by pid");
    ok(ri.epochs_behind >= 1, "stall: %" PRIu64 " epoch(s) behind", ri.epochs_behind);
    ok(ri.inside_ns >= 200 * MS, "stall: inside for %.3f s", (double)ri.inside_ns / 1e9);
    char cmd[256], line[256];
    snprintf(cmd, sizeof cmd, "%s/kmctl inspect %s", getenv("KM_BUILD") ? getenv("KM_BUILD") : "build", seg);
    FILE *f = popen(cmd, "r");
    int shown = 0, header = 0;
    while (f && fgets(line, sizeof line, f)) {
        header |= strstr(line, "readers holding back reclamation") != NULL;
        char want[32];
        snprintf(want, sizeof want, "  %d ", (int)pid);
        shown |= header && strncmp(line, want, strlen(want)) == 0;
    }
    if (f)
        pclose(f);
    ok(shown, "stall: kmctl inspect lists pid %d as holding back reclamation", (int)pid);

    /* A removal takes effect all the same. */
    int b = key_of(env, p, 1);
    is_int(km_key_remove(env, b), KM_OK, "stall: removal returns OK");
    int got_b = 0;
    for (int i = 0; i < 1000; i++) {
        km_lease l;
        if (acquire_with(env, p, 0, 0, &l) == KM_OK) {
            got_b += l.key == b;
            km_release(env, &l, NULL);
        }
    }
    is_int(got_b, 0, "stall: the removed key is not handed out");
    /* Its list could not be rebuilt (the stalled reader holds the spare
     * one): b is still listed, skipped; a snapshot leaves it out. */
    km_pool_info pi;
    km_pool_info_get(env, p, &pi);
    char *js = NULL;
    rc = km_snapshot_json(env, &js);
    ok(rc == KM_OK && js && !strstr(js, "\"id\": \"b\"") && !strstr(js, "\"id\":\"b\"") &&
           (strstr(js, "\"id\": \"a\"") || strstr(js, "\"id\":\"a\"")),
       "stall: snapshot works and leaves out the removed key");
    is_int(pi.n_keys, 2, "stall: the list keeps the removed key until it can be rebuilt");
    free(js);

    kill(pid, SIGCONT);
    km_set_admin_timeout(env, 5000);
    is_int(km_key_set_limits(env, a, "{\"rpm\": 1000}", err, sizeof err), KM_OK,
           "stall: after SIGCONT the grace period completes");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    km_reap(env, NULL);
    is_int(km_check(env, NULL, NULL), 0, "stall: km_check clean after reap");
    rmseg(env);
}

/* ---------------------------------------------------------- dead writers */

/* A spinner process stopped inside an acquire (its reader row active):
 * grace periods wait for it until it is continued.  Returns its pid. */
static pid_t stall_reader(km_env *env)
{
    int *go = mmap(NULL, sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    *go = 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        spinner(go);
    while (!ck_pr_load_int(go))
        sched_yield();
    munmap(go, sizeof(int));
    km_info inf;
    km_info_get(env, &inf);
    for (int tries = 0; tries < 5000; tries++) {
        kill(pid, SIGSTOP);
        waitpid(pid, NULL, WUNTRACED);
        for (uint32_t s = 0; s < inf.cap_procs; s++)
            for (uint32_t r = 0; r < KM__RDR_PER_PROC; r++) {
                km_reader_info ri;
                if (km_reader_info_get(env, s, r, &ri) == KM_OK && ri.pid == (uint32_t)pid)
                    return pid;
            }
        kill(pid, SIGCONT);
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    }
    bail_out("could not stop the spinner inside an acquire");
}

static void end_reader(pid_t pid)
{
    kill(pid, SIGKILL);
    kill(pid, SIGCONT);
    waitpid(pid, NULL, 0);
}

/* Run `what` in a child writer (admin timeout 10 s) and SIGKILL it 200 ms
 * in, while a grace period keeps it waiting. */
static void kill_waiting_writer(int what, int key)
{
    fflush(stdout);
    pid_t w = fork();
    if (w == 0) {
        km_env *e;
        char err[256];
        if (km_open_flags(seg, KM_OPEN_NO_REAP, &e) != KM_OK)
            _exit(3);
        km_set_admin_timeout(e, 10000);
        if (what == 0)
            km_key_add(e, km_pool_find(e, "p"), "{\"id\": \"c\", \"secret\": \"sk-charlie-dead-0003\"}",
                       err, sizeof err);
        else
            km_key_set_limits(e, key, "{\"rpm\": 1000}", err, sizeof err);
        _exit(0);
    }
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    kill(w, SIGKILL);
    waitpid(w, NULL, 0);
}

/* km_check's lines, but those about dead processes not yet reaped. */
static void count_line(void *ctx, const char *line)
{
    if (strstr(line, "died without detaching"))
        return;
    (*(int *)ctx)++;
    diag("  km_check: %s", line);
}

static void t_dead_writers(void)
{
    km_env *env = mkseg(base_json);
    int p = pool_of(env, "p");
    int a = key_of(env, p, 0);
    char err[256];
    km_lease l;
    int n;

    /* Finding 1: killed in km_key_add while it waits for a grace period. */
    is_int(km_key_set_weight(env, key_of(env, p, 1), 2), KM_OK, "dead add: a re-weight first");
    pid_t sp = stall_reader(env);
    kill_waiting_writer(0, 0);
    end_reader(sp);
    n = 0;
    km_check(env, count_line, &n);
    ok(n > 0, "dead add: km_check reports the interrupted add (%d lines)", n);
    int c = km_key_add(env, p, "{\"id\": \"c\", \"secret\": \"sk-charlie-live-0003\"}", err, sizeof err);
    ok(c >= 0, "dead add: the next writer adds c again (%s)", c < 0 ? E(c) : "ok");
    km_reap(env, NULL); /* the dead processes' slots */
    is_int(km_check(env, count_line, &n), 0, "dead add: km_check clean after the next writer");
    is_int(pinned(env, p, "c", &l), KM_OK, "dead add: c is handed out");
    is_str(l.secret, "sk-charlie-live-0003", "dead add: with the secret of the add that finished");
    km_release(env, &l, NULL);
    int d = km_key_add(env, p, "{\"id\": \"d\", \"secret\": \"sk-delta-0000000004\"}", err, sizeof err);
    ok(d >= 0, "dead add: no row lost, the fourth key fits (%s)", d < 0 ? E(d) : "ok");

    /* Finding 2: killed in km_key_set_limits while it waits. */
    km_key_remove(env, d);
    is_int(km_key_set_weight(env, a, 3), KM_OK, "dead limits: a re-weight first");
    sp = stall_reader(env);
    kill_waiting_writer(1, a);
    end_reader(sp);
    n = 0;
    km_check(env, count_line, &n);
    ok(n > 0, "dead limits: km_check reports the key skipped for good (%d lines)", n);
    km_reap(env, NULL);
    is_int(km_check(env, count_line, &n), 0, "dead limits: km_check clean after a reap");
    is_int(pinned(env, p, "a", &l), KM_OK, "dead limits: a is handed out again");
    km_release(env, &l, NULL);
    int got_a = 0;
    for (int i = 0; i < 100; i++)
        if (acquire_with(env, p, KM_STRATEGY_ROUND_ROBIN, 0, &l) == KM_OK) {
            got_a += l.key == a;
            km_release(env, &l, NULL);
        }
    ok(got_a >= 20, "dead limits: round robin gives a %d of 100 leases", got_a);
    is_u64(info(env, a).limits[KM_WIN_RPM].limit, 0, "dead limits: the old limits stand");
    rmseg(env);

    /* A removed key still named by its list is not reused for another pool. */
    env = mkseg("{\"capacity\": {\"keys\": 3},"
                " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-a-1111111111\"}]},"
                "  {\"name\": \"q\", \"keys\": [{\"id\": \"x\", \"secret\": \"sk-x-2222222222\"},"
                "                              {\"id\": \"y\", \"secret\": \"sk-y-3333333333\"}]}]}");
    p = pool_of(env, "p");
    int q = pool_of(env, "q");
    int x = km_key_find(env, q, "x");
    km_key_set_weight(env, x, 2); /* q's spare list now waits for a grace period */
    sp = stall_reader(env);
    km_set_admin_timeout(env, 100);
    is_int(km_key_remove(env, x), KM_OK, "lingering: x removed while its list cannot be rebuilt");
    end_reader(sp);
    km_reap(env, NULL);
    km_set_admin_timeout(env, 2000);
    int z = km_key_add(env, p, "{\"id\": \"z\", \"secret\": \"sk-zulu-4444444444\"}", err, sizeof err);
    ok(z >= 0, "lingering: a key of p takes x's row (%s)", z < 0 ? E(z) : "ok");
    int wrong = 0;
    km_request rq = {.pool = q};
    for (int i = 0; i < 200; i++)
        if (km_acquire(env, &rq, &l) == KM_OK) {
            wrong += strcmp(l.secret, "sk-zulu-4444444444") == 0;
            km_release(env, &l, NULL);
        }
    is_int(wrong, 0, "lingering: pool q never hands out p's new key");
    is_int(km_check(env, count_line, &n), 0, "lingering: km_check clean");
    rmseg(env);
}

/* One API key, one row: km_key_add refuses a secret that a live key of any
 * pool holds (it would get its limits twice), names that key, never the
 * secret, and changes nothing; a removed key's secret may come back. */
static void t_dup_secret(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 5},"
                        " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-dup-aaaa1111\"}]},"
                        "  {\"name\": \"q\", \"keys\": [{\"id\": \"x\", \"secret\": \"sk-dup-xxxx2222\"}]}]}");
    int p = pool_of(env, "p"), q = pool_of(env, "q");
    char err[256];
    km_info in;

    int rc = km_key_add(env, p, "{\"id\": \"b\", \"secret\": \"sk-dup-aaaa1111\"}", err, sizeof err);
    is_str(E(rc), "EDUPSECRET", "dup secret: a's secret under id b in a's pool is refused");
    ok(strstr(err, "\"a\"") && !strstr(err, "aaaa1111"),
       "dup secret: the message names key a, not the secret: %s", err);
    rc = km_key_add(env, q, "{\"id\": \"y\", \"secret\": \"sk-dup-aaaa1111\", \"weight\": 3}",
                    err, sizeof err);
    is_str(E(rc), "EDUPSECRET", "dup secret: a's secret in another pool is refused");
    ok(strstr(err, "\"p\"") != NULL, "dup secret: the message names a's pool: %s", err);
    km_info_get(env, &in);
    is_int(in.n_keys, 2, "dup secret: no row taken by the refused adds");
    rc = km_key_add(env, q, "{\"id\": \"y\", \"secret\": \"sk-dup-aaaa111\"}", err, sizeof err);
    ok(rc >= 0, "dup secret: a prefix of a's secret is another key (%s)", rc < 0 ? E(rc) : "ok");
    rc = km_key_add(env, q, "{\"id\": \"z\", \"secret\": \"sk-dup-aaaa11112\"}", err, sizeof err);
    ok(rc >= 0, "dup secret: a's secret with one more byte is another key (%s)", rc < 0 ? E(rc) : "ok");
    is_int(km_key_remove(env, km_key_find(env, p, "a")), KM_OK, "dup secret: remove a");
    rc = km_key_add(env, q, "{\"id\": \"a2\", \"secret\": \"sk-dup-aaaa1111\"}", err, sizeof err);
    ok(rc >= 0, "dup secret: a removed key's secret may be added again (%s %s)", rc < 0 ? E(rc) : "",
       err);
    is_int(km_check(env, NULL, NULL), 0, "dup secret: km_check clean");
    rmseg(env);
}

/* km_key_find_secret: the key holding a secret, in its pool only; a key
 * added is found, a removed one is not; the secret is in no error. */
static void t_find_secret(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4},"
                        " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-find-aaaa1111\"},"
                        "                                       {\"id\": \"b\", \"secret\": \"sk-find-bbbb2222\"}]},"
                        "  {\"name\": \"q\", \"keys\": [{\"id\": \"x\", \"secret\": \"sk-find-xxxx3333\"}]}]}");
    int p = pool_of(env, "p"), q = pool_of(env, "q");
    char err[256], big[KM_SECRET_MAX + 8];
    km_lease l;

    is_int(km_key_find_secret(env, p, "sk-find-bbbb2222"), km_key_find(env, p, "b"),
           "find secret: b's secret gives b's index");
    is_int(km_key_find_secret(env, p, "sk-find-aaaa1111"), km_key_find(env, p, "a"),
           "find secret: a's secret gives a's index");
    is_str(E(km_key_find_secret(env, p, "sk-find-xxxx3333")), "ENOKEY",
           "find secret: a key of another pool is not found in p");
    is_int(km_key_find_secret(env, q, "sk-find-xxxx3333"), km_key_find(env, q, "x"),
           "find secret: ... but in its own pool");
    is_str(E(km_key_find_secret(env, p, "sk-find-bbbb222")), "ENOKEY", "find secret: a prefix is no key");
    is_str(E(km_key_find_secret(env, p, "sk-find-bbbb22222")), "ENOKEY", "find secret: one byte more is no key");
    is_str(E(km_key_find_secret(env, p, "b")), "ENOKEY", "find secret: an id is not a secret");
    is_str(E(km_key_find_secret(env, p, "")), "ENOKEY", "find secret: the empty string");
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    is_str(E(km_key_find_secret(env, p, big)), "ENOKEY", "find secret: longer than KM_SECRET_MAX");
    is_str(E(km_key_find_secret(env, 7, "sk-find-aaaa1111")), "ENOPOOL", "find secret: pool out of range");
    is_str(E(km_key_find_secret(env, p, NULL)), "EINVAL", "find secret: NULL secret");
    is_str(E(km_key_find_secret(NULL, p, "sk-find-aaaa1111")), "EINVAL", "find secret: NULL handle");
    int c = km_key_add(env, p, "{\"id\": \"c\", \"secret\": \"sk-find-cccc4444\"}", err, sizeof err);
    is_int(km_key_find_secret(env, p, "sk-find-cccc4444"), c, "find secret: an added key is found");
    is_int(pinned(env, p, "a", &l), KM_OK, "find secret: a lease on a is out");
    is_int(km_key_remove(env, km_key_find(env, p, "a")), KM_OK, "find secret: remove a");
    is_str(E(km_key_find_secret(env, p, "sk-find-aaaa1111")), "ENOKEY", "find secret: a removed key is not");
    km_release(env, &l, NULL);
    rmseg(env);
}

int main(void)
{
    fixtures_init("reconfig");
    plan(30 + 5 + 16 + 10 + 16 + 17 + 10 + 16);
    t_add_remove();
    t_weight();
    t_limits();
    t_torture();
    t_stall();
    t_dead_writers();
    t_dup_secret();
    t_find_secret();
    return exit_status();
}
