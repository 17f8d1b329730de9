/*
 * tests/soak.c - the whole system for minutes on end, killed and stopped at
 * random, its own books kept against the segment's and the usage
 * database's.
 *
 * 16 workers acquire and release on four pools (round_robin, weighted, a
 * per_model least_busy pool, and a "churn" pool whose keys come and go),
 * each request with a random strategy override, model and token estimate,
 * one in eight through km_acquire_wait; they report mixed outcomes
 * (success, 429, failure, cancel) and now and then hold a lease a while,
 * as a real request would.  Meanwhile the parent, every 20-60 ms:
 *   - SIGKILLs a random worker wherever it is and starts a new one (which
 *     reaps at attach), or SIGSTOPs one for 50-150 ms and checks that the
 *     others go on;
 *   - SIGKILLs or SIGSTOPs the reconfiguration writer, a process that
 *     re-weights, changes limits, disables and enables keys of every pool,
 *     and adds and removes keys of the churn pool (with and without a
 *     process slot, as kmctl does), and starts a new one;
 *   - every 0.5 s runs `kmctl persist --once` into one SQLite database,
 *     sometimes SIGSTOPped for 100 ms while the workers go on, and more
 *     often SIGKILLed 0-20 ms after its start, wherever it is (opening,
 *     draining, inserting, between its SQLite COMMIT and km_usage_commit):
 *     it consumes a drain's events only after its COMMIT, and the next
 *     persist stores what it is handed again once, so B4 holds both ways;
 *     the persist that drains before a restart, and the last, are not
 *     killed (the segment they drain is removed next);
 *   - every 10 s snapshots the segment with its secrets and restores the
 *     snapshot under another name (km_check clean on the copy);
 *   - every KM_SOAK_RESTART_S (default a third of the run, at most 120 s)
 *     restarts the segment: the workers detach, the writer is killed, a
 *     last persist drains, the segment is snapshotted, removed and restored
 *     under its name, and the workers attach to the new one.
 *
 * The books.  Each worker keeps, in a shared anonymous mapping, per pool:
 * acquires that returned KM_OK, releases that returned KM_OK, and releases
 * that returned KM_ESTALE; and one word saying where it is: idle, inside
 * km_acquire (and for which pool), holding a lease, inside km_release.
 * The word also carries the count its step would change, so the parent,
 * reading it after a SIGKILL, knows whether the step's call had returned
 * (and been booked) or not.  Each kill is so classified as idle, holding a
 * lease, inside an acquire, inside a release, or inside km_open/km_close.
 *
 * What "the counts match" means, and is asserted at the end (the round_robin,
 * weighted and per_model pools are "ledger" pools: their keys are never
 * removed, so their counters in the segment are the whole history, carried
 * across each restart by the snapshot):
 *   B1  the workers' own books balance exactly: per pool, acquires booked =
 *       releases booked (OK + stale) + kills holding a lease + kills inside
 *       a release of such a lease;
 *   B2  acquired (segment, ledger pools) - acquires booked is between 0 and
 *       the kills inside an acquire of a ledger pool (an acquire the library
 *       completed whose caller died before booking it);
 *   B3  acquired - (outcomes + abandoned) on the ledger pools, the leases
 *       counted acquired but never counted finished, is between 0 and the
 *       kills inside a library call: README "Crashes and repair" says a
 *       counter may be short by one per kill between a lease's counter and
 *       its phase change, never over;
 *   B4  every release a worker booked as KM_OK is in the usage database
 *       (non-abandoned events >= OK releases), and at most one more event
 *       per kill inside a release;
 *   B5  abandoned events in the database, ledger pools, are at most the
 *       segment's abandoned count, and at least it minus the kills inside a
 *       library call;
 *   B6  events dropped (rings overrun, or half-written by a killed process)
 *       are at most the kills inside a library call: no ring ever overran;
 *   B7  each restart's restored segment has exactly the counters the old
 *       one had; km_check is clean before and after;
 *   B8  no stale release and no unexpected error on the ledger pools; every
 *       persist exits 0; km_check is clean at the end with in-flight 0 and
 *       only the parent attached.
 * lost = OK releases missing from the database + booked acquires missing
 * from the segment + leases unfinished beyond the documented allowance +
 * counters changed by a restore + drops beyond the allowance.  It must be 0.
 *
 * The last line is the summary (README quotes it):
 *   soak: S s, N operations, K kills, T stops, R reconfigurations,
 *   E events persisted, lost=0, check clean
 * KM_SOAK_S=<seconds> sets the length (default 20 under make test; make soak
 * runs SOAK_S=600).  KM_BUILD names the build directory holding kmctl.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>
#include <sqlite3.h>

#include "testlib.h"

#define WORKERS 16
#define NPOOLS 4
#define LEDGER 3 /* pools 0..2: keys never removed */
#define CHURN 3
static const char *const pool_names[NPOOLS] = {"rr", "wt", "pm", "churn"};
static const char *const models[] = {"m-small", "m-large", "m-free"};

static const char CFG[] =
    "{\"capacity\": {\"keys\": 40, \"inflight_per_key\": 16, \"processes\": 48, \"pools\": 4,"
    "  \"models\": 4, \"usage_events\": 65536},"
    " \"pools\": ["
    "  {\"name\": \"rr\", \"strategy\": \"round_robin\","
    "   \"limits\": {\"rpm\": {\"limit\": 600000, \"burst\": 2000}, \"tpm\": {\"limit\": 60000000,"
    "    \"burst\": 200000}},"
    "   \"keys\": [{\"id\": \"r0\", \"secret\": \"sk-soak-r0-000000000\"},"
    "             {\"id\": \"r1\", \"secret\": \"sk-soak-r1-000000001\"},"
    "             {\"id\": \"r2\", \"secret\": \"sk-soak-r2-000000002\"},"
    "             {\"id\": \"r3\", \"secret\": \"sk-soak-r3-000000003\"}]},"
    "  {\"name\": \"wt\", \"strategy\": \"weighted\", \"cooldown_s\": 1,"
    "   \"limits\": {\"rpm\": 1200000},"
    "   \"keys\": [{\"id\": \"w0\", \"secret\": \"sk-soak-w0-000000010\", \"weight\": 1},"
    "             {\"id\": \"w1\", \"secret\": \"sk-soak-w1-000000011\", \"weight\": 2},"
    "             {\"id\": \"w2\", \"secret\": \"sk-soak-w2-000000012\", \"weight\": 4}]},"
    "  {\"name\": \"pm\", \"strategy\": \"least_busy\", \"model_limits\": \"per_model\","
    "   \"models\": {\"m-small\": {\"rpm\": 300000},"
    "              \"m-large\": {\"tpm\": {\"limit\": 30000000, \"mode\": \"sliding\"}},"
    "              \"m-free\": {}},"
    "   \"keys\": [{\"id\": \"p0\", \"secret\": \"sk-soak-p0-000000020\"},"
    "             {\"id\": \"p1\", \"secret\": \"sk-soak-p1-000000021\"},"
    "             {\"id\": \"p2\", \"secret\": \"sk-soak-p2-000000022\"}]},"
    "  {\"name\": \"churn\", \"strategy\": \"round_robin\","
    "   \"keys\": [{\"id\": \"c0\", \"secret\": \"sk-soak-c0-000000030\"},"
    "             {\"id\": \"c1\", \"secret\": \"sk-soak-c1-000000031\"}]}]}";

/* Where a worker is (the low byte of its word). */
enum { PH_IDLE, PH_ACQ, PH_HELD, PH_REL, PH_OPEN, PH_CLOSE, PH_PAUSED };
#define WORD(ph, pool, n) ((uint64_t)(ph) | (uint64_t)(pool) << 8 | (uint64_t)(n) << 16)

typedef struct wbook {
    uint64_t word;                /* WORD(phase, pool, count at the step's start) */
    uint64_t acq[NPOOLS];         /* acquires that returned KM_OK */
    uint64_t rel[NPOOLS];         /* releases that returned KM_OK */
    uint64_t stale[NPOOLS];       /* releases that returned KM_ESTALE */
    uint64_t bad_acq, bad_rel;    /* any other error */
    int bad_rc;
    uint64_t ops;                 /* finished acquire/release pairs */
    uint64_t pad[2];
} wbook;

typedef struct soak_sh {
    wbook w[WORKERS];             /* the current incarnation of each worker */
    uint64_t epoch, pause;        /* restart handshake: pause != epoch: detach */
    uint64_t reconf;              /* reconfigurations that returned KM_OK */
    uint64_t writer_bad;          /* writer calls failing other than as allowed */
} soak_sh;

/* The parent's totals, worker incarnations folded in as they die. */
typedef struct totals {
    uint64_t acq[NPOOLS], rel[NPOOLS], stale[NPOOLS], bad_acq, bad_rel, ops;
    uint64_t k_held[NPOOLS], k_acq[NPOOLS], k_rel[NPOOLS], k_idle, k_open;
    uint64_t kills, stops, writer_kills, writer_stops, persist_stops, persist_kills, persists,
        persist_bad;
    uint64_t snaps, snap_bad, restarts, restart_diff, check_bad;
} totals;

static soak_sh *sh;
static totals T;
static char kmctl[512], dbpath[512], tmpdir[256], copy[80];
static unsigned char snapkey[KM_SNAPSHOT_KEY_BYTES];

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

/* kill(2) of one child: never of a pid <= 0 (a process group, or every
 * process there is), whatever went wrong before. */
static void sig(pid_t pid, int signo)
{
    if (pid <= 0)
        bail_out("signal %d to pid %ld", signo, (long)pid);
    kill(pid, signo);
}

/* In a child: die with the parent (a parent that bails out, or is killed by
 * prove's timeout, leaves no worker running). */
static void die_with_parent(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
}

/* A store the parent reads after the process died: plain, but whole. */
static void put(uint64_t *p, uint64_t v) { ck_pr_store_64(p, v); }

/* ------------------------------------------------------------- a worker */

static km_env *worker_open(wbook *b)
{
    km_env *e = NULL;
    put(&b->word, WORD(PH_OPEN, 0, 0));
    int rc = km_open(seg, &e);
    if (rc != KM_OK)
        _exit(20);
    put(&b->word, WORD(PH_IDLE, 0, 0));
    return e;
}

static _Noreturn void worker(int w)
{
    wbook *b = &sh->w[w];
    uint64_t s = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull | 1;
    uint64_t epoch = ck_pr_load_64(&sh->epoch);
    km_env *e = worker_open(b);
    int pidx[NPOOLS];
    for (int p = 0; p < NPOOLS; p++)
        pidx[p] = km_pool_find(e, pool_names[p]);
    for (;;) {
        if (ck_pr_load_64(&sh->pause) != epoch) { /* restart: detach, wait, attach */
            put(&b->word, WORD(PH_CLOSE, 0, 0));
            km_close(e);
            put(&b->word, WORD(PH_PAUSED, 0, 0));
            while (ck_pr_load_64(&sh->epoch) == epoch)
                sleep_us(1000);
            epoch = ck_pr_load_64(&sh->epoch);
            e = worker_open(b);
            for (int p = 0; p < NPOOLS; p++)
                pidx[p] = km_pool_find(e, pool_names[p]);
        }
        uint64_t r = xs(&s);
        int p = r % 10 < 3 ? 0 : r % 10 < 5 ? 1 : r % 10 < 8 ? 2 : CHURN;
        km_request rq = {.pool = pidx[p], .strategy = (int)((r >> 8) % KM_STRATEGY_COUNT),
                         .tokens = (uint32_t)(1 + (r >> 16) % 400)};
        if (p == 2 || (r >> 24) % 4 == 0)
            rq.model = models[(r >> 28) % 3];
        km_lease l;
        put(&b->word, WORD(PH_ACQ, p, b->acq[p]));
        int rc = (r >> 32) % 8 == 0 ? km_acquire_wait(e, &rq, &l, 50) : km_acquire(e, &rq, &l);
        if (rc != KM_OK) {
            put(&b->word, WORD(PH_IDLE, 0, 0));
            if (rc != KM_EAGAIN && rc != KM_EUNAVAIL && rc != KM_ETIMEDOUT &&
                !(p == CHURN && rc == KM_ENOKEY)) {
                put(&b->bad_acq, b->bad_acq + 1);
                b->bad_rc = rc;
            }
            sleep_us((long)((r >> 40) % 2000));
            continue;
        }
        put(&b->acq[p], b->acq[p] + 1);
        put(&b->word, WORD(PH_HELD, p, 0));
        if ((r >> 36) % 4 == 0) /* a request in flight */
            sleep_us((long)((r >> 40) % 3000));
        unsigned k = (unsigned)(r >> 48) % 100;
        km_outcome o = {.kind = k < 90 ? KM_OUT_SUCCESS : k < 93 ? KM_OUT_RATE_LIMITED
                                : k < 95 ? KM_OUT_FAILURE : KM_OUT_CANCELLED,
                        .latency_us = k % 2 ? -1 : (int64_t)(100 + k), .tokens = k % 3 ? -1 : (int64_t)k,
                        .input_tokens = -1, .output_tokens = -1,
                        .retry_after_s = k < 93 ? 0.01 : 0};
        put(&b->word, WORD(PH_REL, p, b->rel[p] + b->stale[p]));
        rc = km_release(e, &l, &o);
        if (rc == KM_OK)
            put(&b->rel[p], b->rel[p] + 1);
        else if (rc == KM_ESTALE)
            put(&b->stale[p], b->stale[p] + 1);
        else {
            /* Booked as stale so the books still balance; counted as bad. */
            put(&b->stale[p], b->stale[p] + 1);
            put(&b->bad_rel, b->bad_rel + 1);
            b->bad_rc = rc;
        }
        put(&b->word, WORD(PH_IDLE, 0, 0));
        put(&b->ops, b->ops + 1);
        sleep_us((long)((r >> 52) % 1500));
    }
}

static pid_t spawn_worker(int w)
{
    memset(&sh->w[w], 0, sizeof sh->w[w]);
    fflush(stdout);
    pid_t me = getpid(), p = fork();
    if (p == 0) {
        die_with_parent(me);
        worker(w);
    }
    if (p < 0)
        bail_out("fork: %s", strerror(errno));
    return p;
}

/* Fold a dead worker's books into the totals, classifying its death. */
static void fold(int w, int killed)
{
    wbook *b = &sh->w[w];
    uint64_t word = ck_pr_load_64(&b->word);
    int ph = (int)(word & 0xff), p = (int)(word >> 8 & 0xff);
    uint64_t n = word >> 16;
    if (ph == PH_ACQ && b->acq[p] != n)
        ph = PH_HELD; /* the acquire returned and was booked */
    if (ph == PH_REL && b->rel[p] + b->stale[p] != n)
        ph = PH_IDLE; /* the release returned and was booked */
    for (int q = 0; q < NPOOLS; q++) {
        T.acq[q] += b->acq[q];
        T.rel[q] += b->rel[q];
        T.stale[q] += b->stale[q];
    }
    T.bad_acq += b->bad_acq;
    T.bad_rel += b->bad_rel;
    T.ops += b->ops;
    if (b->bad_acq || b->bad_rel)
        diag("worker %d: unexpected error %s", w, E(b->bad_rc));
    if (!killed)
        return;
    T.kills++;
    switch (ph) {
    case PH_ACQ: T.k_acq[p]++; break;
    case PH_HELD: T.k_held[p]++; break;
    case PH_REL: T.k_rel[p]++; break;
    case PH_IDLE: T.k_idle++; break;
    default: T.k_open++; break;
    }
}

/* ------------------------------------------------------------ the writer */

static _Noreturn void writer(unsigned seed)
{
    km_env *e;
    if (km_open_flags(seg, (seed & 1) ? KM_OPEN_NO_SLOT : 0, &e) != KM_OK)
        _exit(3);
    km_set_admin_timeout(e, 300);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull | 1;
    int pidx[NPOOLS];
    for (int p = 0; p < NPOOLS; p++)
        pidx[p] = km_pool_find(e, pool_names[p]);
    for (unsigned i = 0;; i++) {
        char js[160], err[256];
        uint64_t r = xs(&s);
        int p = (int)(r % NPOOLS), rc;
        km_pool_info pi;
        if (km_pool_info_get(e, pidx[p], &pi) != KM_OK || pi.n_keys == 0)
            continue;
        int ki = km_pool_key(e, pidx[p], (int)((r >> 8) % pi.n_keys));
        if (ki < 0)
            continue;
        switch ((r >> 16) % 8) {
        case 0:
            rc = km_key_set_weight(e, ki, 1 + (uint32_t)((r >> 24) % 7));
            break;
        case 1:
            rc = km_key_set_limits(e, ki, (r >> 24) % 2 ? "{\"tpm\": 50000000}" : "{\"tpm\": null}",
                                   err, sizeof err);
            break;
        case 2:
        case 3:
            rc = km_key_set_state(e, ki, (r >> 24) % 3 ? KM_KEY_ACTIVE : KM_KEY_DISABLED);
            break;
        case 4:
        case 5:
            snprintf(js, sizeof js, "{\"id\": \"x%u-%u\", \"secret\": \"sk-soak-x-%08u-%06u\"}", seed, i,
                     seed, i);
            rc = km_key_add(e, pidx[CHURN], js, err, sizeof err);
            rc = rc >= 0 ? KM_OK : rc;
            break;
        default: {
            km_pool_info ci;
            if (km_pool_info_get(e, pidx[CHURN], &ci) != KM_OK || ci.n_keys < 3)
                continue;
            rc = km_key_remove(e, km_pool_key(e, pidx[CHURN], (int)((r >> 24) % ci.n_keys)));
        }
        }
        if (rc == KM_OK)
            ck_pr_inc_64(&sh->reconf);
        else if (rc != KM_EFULL && rc != KM_ETIMEDOUT && rc != KM_ENOKEY && rc != KM_EBUSY)
            ck_pr_inc_64(&sh->writer_bad);
        sleep_us((long)(500 + (r >> 40) % 3000));
    }
}

/* ------------------------------------------------------- persist, checks */

static void show_violation(void *ctx, const char *line)
{
    diag("violation (%s): %s", (const char *)ctx, line);
}

/* kmctl persist --once, stopped a while now and then, and if `may_kill`
 * SIGKILLed at a random point now and then.  0 if it exited 0 or died of
 * our SIGKILL. */
static int persist(uint64_t *rnd, int may_kill)
{
    fflush(stdout);
    pid_t me = getpid(), p = fork();
    if (p == 0) {
        die_with_parent(me);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 1);
        execl(kmctl, "kmctl", "persist", seg, "--db", dbpath, "--once", (char *)NULL);
        _exit(127);
    }
    if (p < 0)
        bail_out("fork: %s", strerror(errno));
    uint64_t what = xs(rnd) % 8, killed = 0;
    if (what < 2) {
        sleep_us(2000);
        if (kill(p, SIGSTOP) == 0) { /* a stopped drainer holds no worker back */
            sleep_us(100000);
            sig(p, SIGCONT);
            T.persist_stops++;
        }
    } else if (what < 5 && may_kill) {
        /* Anywhere in its run (a persist --once takes some 5-30 ms here),
         * or after it exited (a zombie: no effect). */
        sleep_us((long)(xs(rnd) % 20000));
        sig(p, SIGKILL);
        killed = 1;
    }
    int st;
    waitpid(p, &st, 0);
    T.persists++;
    if (killed && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
        T.persist_kills++;
        return 0;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        diag("kmctl persist: status %d", st);
        T.persist_bad++;
        return -1;
    }
    return 0;
}

typedef struct ledger {
    uint64_t acquired, finished, abandoned, stale, inflight;
} ledger;

static ledger ledger_of(km_env *e)
{
    ledger L = {0};
    for (int p = 0; p < LEDGER; p++) {
        km_pool_info pi;
        int pool = pool_of(e, pool_names[p]);
        if (km_pool_info_get(e, pool, &pi) != KM_OK)
            bail_out("pool info");
        for (uint32_t i = 0; i < pi.n_keys; i++) {
            km_key_info ki = info(e, key_of(e, pool, (int)i));
            L.acquired += ki.acquired;
            for (int k = 0; k < KM_OUT_COUNT; k++)
                L.finished += ki.outcomes[k];
            L.finished += ki.abandoned;
            L.abandoned += ki.abandoned;
            L.stale += ki.stale_releases;
            L.inflight += ki.inflight;
        }
    }
    return L;
}

/* Snapshot with secrets, restore under `name`. */
static km_env *snap_restore(km_env *e, const char *name, char **json_out)
{
    char *js = NULL, err[256] = "";
    km_env *ne = NULL;
    int rc = km_snapshot_json_ex(e, KM_SNAPSHOT_SECRETS, snapkey, &js);
    if (rc != KM_OK) {
        diag("snapshot: %s", E(rc));
        return NULL;
    }
    rc = km_restore(name, js, strlen(js), snapkey, 0, &ne, err, sizeof err);
    if (rc != KM_OK)
        diag("restore %s: %s %s", name, E(rc), err);
    if (json_out)
        *json_out = js;
    else
        free(js);
    return rc == KM_OK ? ne : NULL;
}

/* A copy restored beside the live segment: clean, every key there. */
static void snapshot_cycle(km_env *e)
{
    km_unlink(copy);
    km_env *ne = snap_restore(e, copy, NULL);
    T.snaps++;
    if (!ne || km_check(ne, show_violation, "restored copy") != 0) {
        T.snap_bad++;
    }
    km_close(ne);
    km_unlink(copy);
}

/* ------------------------------------------------------------------ main */

static pid_t wk[WORKERS], wr;
static unsigned wseed;

static void writer_start(void)
{
    fflush(stdout);
    pid_t me = getpid();
    wr = fork();
    if (wr == 0) {
        die_with_parent(me);
        writer(wseed);
    }
    if (wr < 0)
        bail_out("fork: %s", strerror(errno));
    wseed++;
}

static void writer_kill(void)
{
    sig(wr, SIGKILL);
    waitpid(wr, NULL, 0);
    T.writer_kills++;
}

/* Restart the segment under its name: detach, drain, snapshot, remove,
 * restore, attach. */
static km_env *restart(km_env *e, uint64_t *rnd)
{
    writer_kill();
    uint64_t ep = ck_pr_load_64(&sh->epoch);
    ck_pr_store_64(&sh->pause, ep + 1);
    uint64_t until = km_now_ns() + 20 * NS;
    for (;;) {
        int paused = 0;
        for (int w = 0; w < WORKERS; w++)
            paused += (ck_pr_load_64(&sh->w[w].word) & 0xff) == PH_PAUSED;
        if (paused == WORKERS)
            break;
        if (km_now_ns() > until)
            bail_out("restart: only %d of %d workers detached", paused, WORKERS);
        sleep_us(2000);
    }
    km_reap(e, NULL);
    persist(rnd, 0);
    if (km_check(e, show_violation, "before restart") != 0)
        T.check_bad++;
    ledger a = ledger_of(e);
    char *snap = NULL, err[256] = "";
    if (km_snapshot_json_ex(e, KM_SNAPSHOT_SECRETS, snapkey, &snap) != KM_OK)
        bail_out("restart: snapshot");
    km_close(e);
    km_unlink(seg);
    km_env *ne = NULL;
    int rc = km_restore(seg, snap, strlen(snap), snapkey, 0, &ne, err, sizeof err);
    free(snap);
    if (rc != KM_OK)
        bail_out("restart: restore: %s %s", E(rc), err);
    ledger b = ledger_of(ne);
    if (a.acquired != b.acquired || a.finished != b.finished || a.abandoned != b.abandoned) {
        diag("restart: acquired %" PRIu64 "/%" PRIu64 " finished %" PRIu64 "/%" PRIu64
             " abandoned %" PRIu64 "/%" PRIu64, a.acquired, b.acquired, a.finished, b.finished,
             a.abandoned, b.abandoned);
        T.restart_diff++;
    }
    if (km_check(ne, show_violation, "after restart") != 0)
        T.check_bad++;
    T.restarts++;
    ck_pr_store_64(&sh->epoch, ep + 1);
    writer_start();
    return ne;
}

static int64_t q1(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        diag("sqlite: %s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return v;
}

static void cleanup_files(void)
{
    char p[600];
    if (!tmpdir[0] || getenv("KM_SOAK_KEEP"))
        return;
    const char *sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", dbpath, sfx[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    if (copy[0])
        km_unlink(copy);
}

int main(void)
{
    const char *ss = getenv("KM_SOAK_S");
    double secs = ss ? atof(ss) : 20;
    const char *rs = getenv("KM_SOAK_RESTART_S");
    double restart_s = rs ? atof(rs) : secs / 3 < 120 ? secs / 3 : 120;
    const char *bd = getenv("KM_BUILD");
    snprintf(kmctl, sizeof kmctl, "%s/kmctl", bd && *bd ? bd : "build");
    if (access(kmctl, X_OK) != 0)
        bail_out("%s not found (KM_BUILD names the build directory)", kmctl);

    fixtures_init("soak");
    plan(22);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kmt-soak-XXXXXX");
    if (!mkdtemp(tmpdir))
        bail_out("mkdtemp");
    snprintf(dbpath, sizeof dbpath, "%s/usage.db", tmpdir);
    snprintf(copy, sizeof copy, "kmt-soak-copy-%ld", (long)getpid());
    atexit(cleanup_files);
    for (size_t i = 0; i < sizeof snapkey; i++)
        snapkey[i] = (unsigned char)(i * 13 + 5);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        bail_out("mmap");
    memset(sh, 0, sizeof *sh);

    km_env *env = mkseg(CFG);
    uint64_t rnd = (uint64_t)getpid() * 0x2545f4914f6cdd1dull | 1;
    wseed = (unsigned)getpid();
    for (int w = 0; w < WORKERS; w++)
        wk[w] = spawn_worker(w);
    writer_start();

    uint64_t t0 = km_now_ns(), t_end = t0 + (uint64_t)(secs * 1e9);
    uint64_t next_persist = t0 + NS / 2, next_snap = t0 + 10 * NS, next_note = t0 + 60 * NS;
    uint64_t next_restart = restart_s > 0 ? t0 + (uint64_t)(restart_s * 1e9) : UINT64_MAX;
    int progress_ok = 1;
    while (km_now_ns() < t_end) {
        sleep_us(20000 + (long)(xs(&rnd) % 40000));
        uint64_t r = xs(&rnd), now = km_now_ns();
        int v = (int)(r % WORKERS);
        unsigned act = (unsigned)(r >> 8) % 100;
        if (act < 50) { /* SIGKILL a worker, wherever it is */
            sig(wk[v], SIGKILL);
            waitpid(wk[v], NULL, 0);
            fold(v, 1);
            wk[v] = spawn_worker(v);
        } else if (act < 60) { /* SIGSTOP one: the others go on */
            uint64_t before = 0, after = 0;
            sig(wk[v], SIGSTOP);
            for (int i = 0; i < WORKERS; i++)
                before += i == v ? 0 : ck_pr_load_64(&sh->w[i].ops);
            sleep_us(50000 + (long)((r >> 16) % 100000));
            for (int i = 0; i < WORKERS; i++)
                after += i == v ? 0 : ck_pr_load_64(&sh->w[i].ops);
            sig(wk[v], SIGCONT);
            T.stops++;
            /* Nobody died meanwhile (the parent alone kills), so the sums
             * compare the same incarnations. */
            if (after <= before) {
                progress_ok = 0;
                diag("while worker %d was stopped the others completed nothing", v);
            }
        } else if (act < 90) { /* SIGKILL the writer, a new one */
            writer_kill();
            writer_start();
        } else { /* SIGSTOP the writer a while */
            sig(wr, SIGSTOP);
            sleep_us(50000);
            sig(wr, SIGCONT);
            T.writer_stops++;
        }
        if (now >= next_note) {
            diag("%.0f s: %" PRIu64 " kills, %" PRIu64 " writer kills, %" PRIu64 " persists, %" PRIu64
                 " restarts", (double)(now - t0) / 1e9, T.kills, T.writer_kills, T.persists, T.restarts);
            fflush(stdout);
            next_note = now + 60 * NS;
        }
        if (now >= next_persist) {
            persist(&rnd, 1);
            next_persist = km_now_ns() + NS / 2;
        }
        if (now >= next_snap) {
            snapshot_cycle(env);
            next_snap = km_now_ns() + 10 * NS;
        }
        if (now >= next_restart && now + 2 * NS < t_end) {
            env = restart(env, &rnd);
            next_restart = km_now_ns() + (uint64_t)(restart_s * 1e9);
        }
    }
    /* The end: every worker and the writer killed where they stand. */
    for (int w = 0; w < WORKERS; w++) {
        sig(wk[w], SIGKILL);
        waitpid(wk[w], NULL, 0);
        fold(w, 1);
    }
    writer_kill();
    double ran = (double)(km_now_ns() - t0) / 1e9;

    km_reap_report rep;
    is_int(km_reap(env, &rep), KM_OK, "final reap");
    is_int(persist(&rnd, 0), 0, "final persist");
    int violations = km_check(env, show_violation, "end");
    is_int(violations, 0, "km_check clean at the end");
    is_int(T.check_bad, 0, "km_check clean before and after every restart");
    km_info inf;
    km_info_get(env, &inf);
    is_u64(inf.n_procs, 1, "only the parent is attached");
    ledger L = ledger_of(env);
    is_u64(L.inflight, 0, "in-flight 0 on every ledger key");

    uint64_t acq = 0, rel = 0, stale_l = 0, rel_all = 0, k_call = T.k_open, k_rel_all = 0;
    uint64_t k_acq_l = 0, k_held_l = 0, unbalanced = 0;
    for (int p = 0; p < NPOOLS; p++) {
        uint64_t lhs = T.acq[p], rhs = T.rel[p] + T.stale[p] + T.k_held[p] + T.k_rel[p];
        if (lhs != rhs) {
            diag("books of pool %s: %" PRIu64 " acquires booked, %" PRIu64 " ended", pool_names[p], lhs, rhs);
            unbalanced++;
        }
        k_call += T.k_acq[p] + T.k_rel[p];
        k_rel_all += T.k_rel[p];
        rel_all += T.rel[p];
        if (p < LEDGER) {
            acq += T.acq[p];
            rel += T.rel[p];
            stale_l += T.stale[p];
            k_acq_l += T.k_acq[p];
            k_held_l += T.k_held[p];
        }
    }
    is_u64(unbalanced, 0, "B1: the workers' books balance: acquires = releases + kills holding or releasing");
    is_u64(T.bad_acq + T.bad_rel + stale_l + L.stale, 0,
           "B8: no unexpected acquire or release error, no stale release on a ledger pool");

    /* B2: acquires. */
    uint64_t lost = 0;
    if (L.acquired < acq)
        lost += acq - L.acquired;
    ok(L.acquired >= acq && L.acquired - acq <= k_acq_l,
       "B2: acquired %" PRIu64 " = booked %" PRIu64 " + %" PRIu64 " (at most the %" PRIu64
       " kills inside an acquire)", L.acquired, acq, L.acquired - acq, k_acq_l);
    /* B3: the documented window. */
    uint64_t unfinished = L.acquired >= L.finished ? L.acquired - L.finished : 0;
    if (unfinished > k_call)
        lost += unfinished - k_call;
    ok(L.finished <= L.acquired && unfinished <= k_call,
       "B3: finished %" PRIu64 " (outcomes + %" PRIu64 " abandoned) = acquired - %" PRIu64
       ", at most the %" PRIu64 " kills inside a library call", L.finished, L.abandoned, unfinished, k_call);
    ok(L.finished + unfinished >= rel + k_held_l,
       "B3: every OK release (%" PRIu64 ") and held lease killed (%" PRIu64 ") is counted", rel, k_held_l);

    /* B4-B6: the usage database. */
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        bail_out("open %s", dbpath);
    sqlite3_busy_timeout(db, 5000);
    int64_t ev_all = q1(db, "SELECT count(*) FROM usage");
    int64_t ev_rel = q1(db, "SELECT count(*) FROM usage WHERE outcome != 'abandoned'");
    int64_t ev_ab_l = q1(db, "SELECT count(*) FROM usage WHERE outcome = 'abandoned' AND pool != 'churn'");
    int64_t dropped = q1(db, "SELECT coalesce(sum(dropped), 0) FROM drops");
    sqlite3_close(db);
    if (ev_rel < (int64_t)rel_all)
        lost += rel_all - (uint64_t)ev_rel;
    ok(ev_rel >= (int64_t)rel_all && ev_rel - (int64_t)rel_all <= (int64_t)k_rel_all,
       "B4: %" PRId64 " release events persisted = %" PRIu64 " OK releases + %" PRId64
       " (at most the %" PRIu64 " kills inside a release)", ev_rel, rel_all, ev_rel - (int64_t)rel_all,
       k_rel_all);
    ok(ev_ab_l <= (int64_t)L.abandoned && ev_ab_l + (int64_t)k_call >= (int64_t)L.abandoned,
       "B5: %" PRId64 " abandoned events persisted for %" PRIu64 " abandoned leases (ledger pools)",
       ev_ab_l, L.abandoned);
    if (dropped > (int64_t)k_call)
        lost += (uint64_t)dropped - k_call;
    ok(dropped <= (int64_t)k_call, "B6: %" PRId64 " events dropped, at most the %" PRIu64
       " kills inside a library call (no ring overran)", dropped, k_call);
    lost += T.restart_diff;
    is_u64(T.restart_diff, 0, "B7: every restart restored the counters exactly (%" PRIu64 " restarts)",
           T.restarts);
    ok(T.restarts >= 1 || restart_s <= 0 || secs < 6, "the segment was restarted (%" PRIu64 " times)",
       T.restarts);
    is_u64(T.snap_bad, 0, "every snapshot restored as a clean copy (%" PRIu64 " cycles)", T.snaps);
    is_u64(T.persist_bad, 0,
           "every persist exited 0 (%" PRIu64 " runs, %" PRIu64 " stopped a while) or was killed by us (%" PRIu64 ")",
           T.persists, T.persist_stops, T.persist_kills);
    ok(T.persist_kills > 0 || secs < 6, "persist was SIGKILLed at random (%" PRIu64 " times)",
       T.persist_kills);
    is_u64(ck_pr_load_64(&sh->writer_bad), 0, "the writers failed only as allowed (full, timeout, busy)");
    ok(progress_ok, "while a worker was stopped (%" PRIu64 " times) the others completed operations", T.stops);
    ok(T.kills > 0 && T.writer_kills > 0 && sh->reconf > 0, "workers and writers were killed, the pools reconfigured");

    diag("kills by place: %" PRIu64 " idle, %" PRIu64 " holding, %" PRIu64 " in acquire, %" PRIu64
         " in release, %" PRIu64 " in open/close; writer: %" PRIu64 " kills, %" PRIu64 " stops;"
         " persist: %" PRIu64 " kills",
         T.k_idle, k_held_l + T.k_held[CHURN], k_acq_l + T.k_acq[CHURN], k_rel_all, T.k_open,
         T.writer_kills, T.writer_stops, T.persist_kills);
    int clean = violations == 0 && T.check_bad == 0;
    printf("soak: %.0f s, %" PRIu64 " operations, %" PRIu64 " kills, %" PRIu64 " stops, %" PRIu64
           " reconfigurations, %" PRId64 " events persisted, lost=%" PRIu64 ", check %s\n",
           ran, T.ops, T.kills + T.writer_kills + T.persist_kills, T.stops + T.writer_stops + T.persist_stops,
           ck_pr_load_64(&sh->reconf), ev_all, lost, clean ? "clean" : "NOT clean");
    munmap(sh, sizeof *sh);
    rmseg(env);
    return exit_status();
}
