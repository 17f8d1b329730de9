/*
 * t_livepool.c - pools added, changed and removed live (issue 18, item 1):
 * km_pool_add, km_pool_set, km_pool_remove.
 *
 * Built against the library compiled with -DKM_FAULT_INJECTION (as
 * t_fault.c, Makefile), so that a writer can be killed at each point
 * between two of its shared stores.
 *
 *   t_api         what each call does and refuses: bad JSON, a duplicate
 *                 name, an unknown pool, fields that cannot change live,
 *                 models beyond capacity, capacity.pools and capacity.keys
 *                 full; a removed pool's row reused.
 *   t_remove_wait remove with a lease out waits for it (released by
 *                 another process meanwhile: KM_OK), times out with
 *                 KM_EBUSY (the pool handed out again), or with
 *                 KM_POOL_FORCE removes it and the late release is stale
 *                 (counted, km_check clean).
 *   t_live        4 worker processes acquire without pause while the
 *                 parent adds a pool, changes its strategy and limits,
 *                 appends a model, and removes it: no acquire that started
 *                 after a call returned saw the configuration before it
 *                 (after remove: no lease of the pool; after the strategy
 *                 becomes fill_first: only its first key; after the limits
 *                 drop: a key's leases within the new burst and rate); the
 *                 workers found the new pool without attaching again.
 *   t_every_point each pool writer (add, add reusing a removed pool's row,
 *                 remove, remove forced with a lease out, set of settings,
 *                 set of limits, a model's limits, a model appended)
 *                 killed at each of its points, then the next writer, a
 *                 reap or an attach finishes or undoes it: intent clear,
 *                 km_check clean, the pool there or not as a whole, its
 *                 settings the old or the new ones, every key handed out,
 *                 and no row lost (the pool removed and added again).  A
 *                 recovery killed at each of its own points (a dead limits
 *                 change of the whole pool) is recovered again.
 *   t_random      a writer adding, changing and removing pools is SIGKILLed
 *                 every few ms while workers acquire: afterwards km_check
 *                 is clean and workers saw no error but the expected ones.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "killlib.h"

static char err[512];

static void report(void *ctx, const char *line)
{
    diag("%s: %s", (const char *)ctx, line);
}

static uint64_t now_ns(void)
{
    return km_now_ns();
}

/* A pool object of n keys named <name>-k<i>, secrets unique per name. */
static const char *pool_json(char *buf, size_t len, const char *name, int n, const char *extra)
{
    size_t o = (size_t)snprintf(buf, len, "{\"name\": \"%s\"%s%s, \"keys\": [", name,
                                extra && extra[0] ? ", " : "", extra ? extra : "");
    for (int i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s{\"id\": \"%s-k%d\", \"secret\": \"sk-live-%s-%04d\"}",
                              i ? ", " : "", name, i, name, i);
    snprintf(buf + o, o < len ? len - o : 0, "]}");
    return buf;
}

static int add_pool(km_env *env, const char *name, int n, const char *extra)
{
    char js[2048];
    return km_pool_add(env, pool_json(js, sizeof js, name, n, extra), err, sizeof err);
}

/* Leases of every key of pool p, pinned one by one, then released: 1 if
 * each was handed out. */
static int all_keys_lease(km_env *env, int p)
{
    km_pool_info pi;
    if (km_pool_info_get(env, p, &pi) != KM_OK)
        return 0;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        km_key_info ki;
        km_lease l;
        if (km_key_info_get(env, km_pool_key(env, p, (int)i), &ki) != KM_OK)
            return 0;
        km_request r = {.pool = p, .key_id = ki.id, .tokens = 1};
        int rc = km_acquire(env, &r, &l);
        if (rc != KM_OK) {
            diag("pool %d: key %s not handed out: %s", p, ki.id, E(rc));
            return 0;
        }
        km_release(env, &l, NULL);
    }
    return 1;
}

/* ------------------------------------------------------------------ api */

static void t_api(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 8, \"pools\": 3, \"models\": 3},"
                        " \"pools\": [{\"name\": \"a\", \"model_limits\": \"per_model\","
                        "   \"models\": {\"m1\": {\"rpm\": 100}},"
                        "   \"keys\": [{\"id\": \"a0\", \"secret\": \"sk-api-a0-00000000\"}]}]}");
    int rc;

    rc = km_pool_add(env, "{\"name\": \"b\", ", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "pool:1:"), "add: bad JSON: %s (%s)", E(rc), err);
    rc = km_pool_add(env, "{\"name\": \"b\", \"keys\": []}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "no keys"), "add: no keys: %s (%s)", E(rc), err);
    rc = add_pool(env, "a", 1, NULL);
    ok(rc == KM_ECONFIG && strstr(err, "\"a\" already exists"), "add: duplicate name: %s (%s)",
       E(rc), err);
    rc = km_pool_add(env, "{\"name\": \"b\", \"keys\": [{\"id\": \"x\", \"secret\": \"sk-api-a0-00000000\"}]}",
                     err, sizeof err);
    ok(rc == KM_EDUPSECRET && strstr(err, "a0"), "add: a secret already in the segment: %s (%s)",
       E(rc), err);
    rc = add_pool(env, "b", 8, NULL);
    ok(rc == KM_EFULL && strstr(err, "not enough free key rows"), "add: key rows full: %s (%s)",
       E(rc), err);
    int b = add_pool(env, "b", 2, "\"strategy\": \"fill_first\", \"limits\": {\"rpm\": 1000}");
    ok(b > 0, "add: pool b at row %d (%s)", b, err);
    is_int(km_pool_find(env, "b"), b, "add: km_pool_find finds it");
    ok(all_keys_lease(env, b), "add: each key of the new pool is handed out");
    km_pool_info pi;
    km_pool_info_get(env, b, &pi);
    is_int(pi.strategy, KM_STRATEGY_FILL_FIRST, "add: its strategy as given");
    int c = add_pool(env, "c", 1, NULL);
    ok(c > 0, "add: pool c (%s)", err);
    rc = add_pool(env, "d", 1, NULL);
    ok(rc == KM_EFULL && strstr(err, "capacity.pools is 3"), "add: capacity.pools full: %s (%s)",
       E(rc), err);

    /* set */
    rc = km_pool_set(env, 7, "{\"strategy\": \"fill_first\"}", err, sizeof err);
    is_int(rc, KM_ENOPOOL, "set: unknown pool");
    rc = km_pool_set(env, b, "{\"strategy\": ", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "settings:1:"), "set: bad JSON: %s (%s)", E(rc), err);
    rc = km_pool_set(env, b, "{\"name\": \"z\"}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "cannot be changed live"), "set: the name: %s (%s)", E(rc), err);
    rc = km_pool_set(env, b, "{\"strategy\": \"fastest\"}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "strategy"), "set: unknown strategy: %s (%s)", E(rc), err);
    rc = km_pool_set(env, b, "{\"cooldown_s\": 9000}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "max_cooldown_s"), "set: cooldown above max_cooldown_s: %s (%s)",
       E(rc), err);
    rc = km_pool_set(env, b, "{\"models\": {\"m9\": {}}}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "no models list"), "set: models for a pool without a list: %s (%s)",
       E(rc), err);
    int a = pool_of(env, "a");
    rc = km_pool_set(env, a, "{\"models\": {\"m1\": null}}", err, sizeof err);
    ok(rc == KM_ECONFIG && strstr(err, "cannot be removed live"), "set: removing a model: %s (%s)",
       E(rc), err);
    rc = km_pool_set(env, a, "{\"models\": {\"m2\": {}, \"m3\": {}, \"m4\": {}}}", err, sizeof err);
    ok(rc == KM_EFULL && strstr(err, "capacity.models"), "set: models beyond capacity: %s (%s)",
       E(rc), err);
    rc = km_pool_set(env, b, "{\"strategy\": \"least_busy\", \"cooldown_s\": 7, \"max_failures\": 2,"
                             " \"budget\": {\"usd\": 5, \"period\": \"day\"}}", err, sizeof err);
    is_int(rc, KM_OK, "set: strategy, cooldown, failures, budget (%s)", err);
    km_pool_info_get(env, b, &pi);
    ok(pi.strategy == KM_STRATEGY_LEAST_BUSY && pi.cooldown_s == 7 && pi.max_failures == 2 &&
           pi.budget_microusd == 5000000 && pi.budget.period == KM_BUDGET_DAY,
       "set: km_pool_info shows them (strategy %d, cooldown %u, failures %u, budget %" PRIu64 ")",
       pi.strategy, pi.cooldown_s, pi.max_failures, pi.budget_microusd);
    rc = km_pool_set(env, b, "{\"budget\": null}", err, sizeof err);
    km_pool_info_get(env, b, &pi);
    ok(rc == KM_OK && pi.budget_microusd == 0, "set: budget null removes it");
    rc = km_pool_set(env, a, "{\"models\": {\"m1\": {\"rpm\": 2}, \"m2\": {\"rpm\": 1}}}", err, sizeof err);
    is_int(rc, KM_OK, "set: a model's limits changed and a model appended (%s)", err);
    km_lease l;
    km_request rm = {.pool = a, .model = "m2", .tokens = 1};
    int r1 = km_acquire(env, &rm, &l);
    km_release(env, &l, NULL);
    int r2 = km_acquire(env, &rm, &l);
    ok(r1 == KM_OK && r2 == KM_EAGAIN, "set: the appended model is found and its rpm 1 holds (%s, %s)",
       E(r1), E(r2));
    rm.model = "m1";
    r1 = km_acquire(env, &rm, &l);
    km_release(env, &l, NULL);
    r2 = km_acquire(env, &rm, &l);
    if (r2 == KM_OK)
        km_release(env, &l, NULL);
    int r3 = km_acquire(env, &rm, &l);
    ok(r1 == KM_OK && r2 == KM_OK && r3 == KM_EAGAIN, "set: m1's rpm now 2 (%s, %s, %s)", E(r1),
       E(r2), E(r3));
    rc = km_pool_set(env, b, "{\"limits\": {\"rpm\": 1}}", err, sizeof err);
    int k0 = km_key_find(env, b, "b-k0");
    km_key_info ki = info(env, k0);
    ok(rc == KM_OK && ki.limits[KM_WIN_RPM].limit == 1, "set: pool-wide rpm 1 on its keys (%s)", err);
    km_request rb = {.pool = b, .tokens = 1};
    int got = 0;
    while (km_acquire(env, &rb, &l) == KM_OK && got < 10) {
        got++;
        km_release(env, &l, NULL);
    }
    /* Each key served a request moments ago (at rpm 1000): carried over,
     * it is the one request rpm 1 allows in the minute (a part of a unit
     * owed counts whole). */
    is_int(got, 0, "set: two keys at rpm 1, each with a request of the last minute: no lease");
    rc = km_key_add(env, b, "{\"id\": \"b-new\", \"secret\": \"sk-api-bnew-0000000\"}", err, sizeof err);
    ok(rc >= 0 && info(env, rc).limits[KM_WIN_RPM].limit == 1, "set: a key added later gets the new rpm");
    if (rc >= 0)
        km_key_remove(env, rc);

    /* remove */
    is_int(km_pool_remove(env, 7, 0, 0), KM_ENOPOOL, "remove: unknown pool");
    km_info inf0, inf1;
    km_info_get(env, &inf0);
    uint32_t b_keys = km_pool_info_get(env, b, &pi) == KM_OK ? pi.n_keys : 0;
    is_int(km_pool_remove(env, b, 0, 0), KM_OK, "remove: pool b");
    km_info_get(env, &inf1);
    ok(b_keys > 0 && inf1.n_keys == inf0.n_keys - b_keys,
       "remove: km_info counts the keys left in pools (%u -> %u, pool b had %u)", inf0.n_keys,
       inf1.n_keys, b_keys);
    is_int(km_pool_find(env, "b"), KM_ENOPOOL, "remove: not found any more");
    is_int(km_acquire(env, &rb, &l), KM_ENOPOOL, "remove: its index acquires nothing");
    is_int(km_pool_remove(env, b, 0, 0), KM_ENOPOOL, "remove: twice: KM_ENOPOOL");
    is_int(km_pool_info_get(env, b, &pi), KM_ENOPOOL, "remove: km_pool_info_get: KM_ENOPOOL");
    int b2 = add_pool(env, "b", 6, NULL);
    is_int(b2, b, "remove: its row and its keys' rows reused by the next add (%s)", err);
    ok(all_keys_lease(env, b2), "remove: the new pool's 6 keys are handed out");
    is_int(km_check(env, report, "api"), 0, "km_check clean");
    /* km_check sees a pool row in a state no writer left it in. */
    km__pool *cp = &km__pools(env)[c];
    ck_pr_store_32(&cp->state, KM__PST_REMOVED);
    int v1 = km_check(env, NULL, NULL);
    ck_pr_store_32(&cp->state, KM__PST_ADDING);
    int v2 = km_check(env, NULL, NULL);
    ck_pr_store_32(&cp->state, KM__PST_LIVE);
    ok(v1 == 1 && v2 == 1 && km_check(env, NULL, NULL) == 0,
       "km_check reports a live key in a removed pool, and a pool left half added (%d, %d)", v1, v2);

    /* Snapshot and restore of a segment whose pools changed live. */
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    memset(key, 7, sizeof key);
    char *snap = NULL;
    km_env *re = NULL;
    rc = km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &snap);
    if (rc == KM_OK)
        rc = km_restore(NULL, snap, strlen(snap), key, 0, &re, err, sizeof err);
    is_int(rc, KM_OK, "snapshot and restore after pools changed (%s)", err);
    if (re) {
        int ra = km_pool_find(re, "a"), rbp = km_pool_find(re, "b"), rcp = km_pool_find(re, "c");
        km_pool_info ai;
        km_pool_info_get(re, ra, &ai);
        ok(ra >= 0 && rbp >= 0 && rcp >= 0 && ai.n_models == 2 && all_keys_lease(re, rbp),
           "restored: pools a, b (6 keys, handed out) and c; a with its appended model");
        is_int(add_pool(re, "d", 1, NULL), KM_EFULL, "restored: capacity.pools carried over (3: full)");
        km_close(re);
    }
    free(snap);
    rmseg(env);
}

/* A pool added with keys that have their own limits of a model (issue 18,
 * item 3): they hold, and a change of the pool's limits of that model
 * leaves them standing while the other keys follow it. */
static void t_own_models(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4, \"pools\": 2},"
                        " \"pools\": [{\"name\": \"a\","
                        "   \"keys\": [{\"id\": \"a0\", \"secret\": \"sk-own-a0-00000000\"}]}]}");
    int p = km_pool_add(env, "{\"name\": \"m\", \"model_limits\": \"per_model\","
                             " \"models\": {\"gpt\": {\"rpm\": 5, \"rph\": 100}},"
                             " \"keys\": [{\"id\": \"own\", \"secret\": \"sk-own-own-0000000\","
                             "   \"models\": {\"gpt\": {\"rpm\": 1}}},"
                             "  {\"id\": \"pool\", \"secret\": \"sk-own-pool-000000\"}]}",
                        err, sizeof err);
    ok(p >= 0, "own models: a pool whose key has its own limits of a model added (%s)", err);
    km_request r = {.pool = p, .model = "gpt", .key_id = "own", .tokens = 1};
    km_lease l;
    int got = 0;
    while (got < 10 && km_acquire(env, &r, &l) == KM_OK)
        got++, km_release(env, &l, NULL);
    is_int(got, 1, "own models: the key's own rpm 1 of the model holds (not the pool's 5)");
    int rc = km_pool_set(env, p, "{\"models\": {\"gpt\": {\"rpm\": 20, \"rph\": 100}}}", err,
                         sizeof err);
    r.key_id = "pool";
    got = 0;
    while (got < 30 && km_acquire(env, &r, &l) == KM_OK)
        got++, km_release(env, &l, NULL);
    r.key_id = "own";
    int own = km_acquire(env, &r, &l);
    ok(rc == KM_OK && got == 20 && own == KM_EAGAIN,
       "own models: the pool's rpm of the model now 20 on the other key (%d), the own rpm 1 stands (%s)",
       got, E(own));
    /* The windows the key does not name are the pool's: they follow it
     * (rph 100 -> 3: the key had served 1 this hour, so 2 more at most). */
    int ko = km_key_find(env, p, "own");
    km_limit_info li[KM_WIN_COUNT];
    char mname[KM_ID_MAX + 1];
    km_model_info_get(env, p, 0, ko, mname, li);
    is_u64(li[KM_WIN_RPH].limit, 100, "own models: the own key inherits the pool's rph 100");
    rc = km_pool_set(env, p, "{\"models\": {\"gpt\": {\"rpm\": 20, \"rph\": 3}}}", err,
                     sizeof err);
    km_model_info_get(env, p, 0, ko, mname, li);
    ok(rc == KM_OK && li[KM_WIN_RPH].limit == 3 && li[KM_WIN_RPM].limit == 1,
       "own models: set-pool rph 3: the own key's inherited rph follows (%" PRIu64
       "), its own rpm 1 stands (%" PRIu64 ") (%s)",
       li[KM_WIN_RPH].limit, li[KM_WIN_RPM].limit, err);
    uint32_t ow = 0;
    km_model_own_get(env, p, 0, ko, &ow);
    is_int((int)ow, 1 << KM_WIN_RPM, "own models: and only rpm is still the key's own");
    is_int(km_check(env, report, "own models"), 0, "own models: km_check clean");
    rmseg(env);
}

/* km_key_add parses the key against the pool's defaults before it takes
 * the admin lock; a km_pool_set landing in between (run here from the
 * fault hook at that point) must not leave the new key with the old
 * pool-wide limits. */
static km_env *race_env;
static int race_pool, race_rc = -1;
static void set_between(const char *where)
{
    if (race_rc == -1 && !strcmp(where, "add.parsed"))
        race_rc = km_pool_set(race_env, race_pool, "{\"limits\": {\"rpm\": 7}}", NULL, 0);
}

static void t_add_races_set(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4, \"pools\": 2},"
                        " \"pools\": [{\"name\": \"a\", \"limits\": {\"rpm\": 100},"
                        "   \"keys\": [{\"id\": \"a0\", \"secret\": \"sk-race-a0-0000000\"}]}]}");
    race_env = env;
    race_pool = km_pool_find(env, "a");
    km__fault_hook = set_between;
    int k = km_key_add(env, race_pool, "{\"id\": \"a1\", \"secret\": \"sk-race-a1-0000000\"}", err,
                       sizeof err);
    km__fault_hook = NULL;
    km_key_info ki = info(env, k >= 0 ? k : 0);
    ok(race_rc == KM_OK && k >= 0 && ki.limits[KM_WIN_RPM].limit == 7,
       "add racing set-pool: the new key has the pool's new rpm 7 (got %" PRIu64 ", set %s, add %s)",
       ki.limits[KM_WIN_RPM].limit, E(race_rc), E(k < 0 ? k : 0));
    rmseg(env);
}

/* ------------------------------------------------------- remove and wait */

static void t_remove_wait(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 4, \"pools\": 2},"
                        " \"pools\": [{\"name\": \"a\","
                        "   \"keys\": [{\"id\": \"a0\", \"secret\": \"sk-wait-a0-00000000\"}]}]}");
    int b = add_pool(env, "b", 1, NULL);
    km_lease l;
    int rc = acquire_with(env, b, 0, 1, &l);
    uint64_t t0 = now_ns();
    rc = km_pool_remove(env, b, 200, 0);
    uint64_t dt = now_ns() - t0;
    ok(rc == KM_EBUSY && dt >= 200 * MS, "remove, a lease out: KM_EBUSY after the 200 ms timeout (%s, %" PRIu64 " ms)",
       E(rc), dt / MS);
    km_lease l2;
    is_int(acquire_with(env, b, 0, 1, &l2), KM_OK, "remove timed out: the pool is handed out again");
    km_release(env, &l2, NULL);

    /* Another process releases while the remover waits. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        km_env *e2;
        if (km_open(seg, &e2) != KM_OK)
            _exit(1);
        km_lease lc;
        int r = acquire_with(e2, b, 0, 1, &lc);
        if (r != KM_OK)
            _exit(2);
        usleep(150 * 1000);
        _exit(km_release(e2, &lc, NULL) == KM_OK ? 0 : 3);
    }
    km_release(env, &l, NULL);
    usleep(50 * 1000);
    t0 = now_ns();
    rc = km_pool_remove(env, b, 5000, 0);
    dt = now_ns() - t0;
    int st;
    waitpid(pid, &st, 0);
    ok(rc == KM_OK && dt >= 50 * MS && dt < 4000 * MS,
       "remove waits for another process's lease, then removes (%s, %" PRIu64 " ms)", E(rc), dt / MS);
    ok(WIFEXITED(st) && WEXITSTATUS(st) == 0, "that lease released KM_OK");

    /* A sleeper of km_acquire_wait on a pool being removed: KM_ENOPOOL. */
    b = add_pool(env, "s", 1, "\"limits\": {\"rpm\": 1}");
    rc = acquire_with(env, b, 0, 1, &l); /* its one request of the minute */
    km_release(env, &l, NULL);
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        km_env *e2;
        if (km_open(seg, &e2) != KM_OK)
            _exit(1);
        km_request r = {.pool = b, .tokens = 1};
        km_lease lw;
        uint64_t w0 = now_ns();
        int r2 = km_acquire_wait(e2, &r, &lw, 20000);
        km_close(e2);
        _exit(r2 == KM_ENOPOOL && now_ns() - w0 < 10 * NS ? 0 : 10 + (r2 < 0 ? -r2 : r2));
    }
    usleep(200 * 1000);
    t0 = now_ns();
    rc = km_pool_remove(env, b, 1000, 0);
    waitpid(pid, &st, 0);
    ok(rc == KM_OK && WIFEXITED(st) && WEXITSTATUS(st) == 0,
       "a sleeper in km_acquire_wait on the removed pool wakes with KM_ENOPOOL (%s, status %d)", E(rc),
       WIFEXITED(st) ? WEXITSTATUS(st) : -1);

    /* Forced: the late release is stale. */
    b = add_pool(env, "c", 1, NULL);
    rc = acquire_with(env, b, 0, 1, &l);
    int key = l.key;
    rc = km_pool_remove(env, b, 50, KM_POOL_FORCE);
    is_int(rc, KM_OK, "remove forced with a lease out: KM_OK");
    is_int(km_pool_find(env, "c"), KM_ENOPOOL, "forced: not found");
    is_int(km_release(env, &l, NULL), KM_ESTALE, "forced: the late release is stale");
    km_key_info ki;
    km_key_info_get(env, key, &ki); /* a removed row: its counters still read */
    km_reap(env, NULL); /* the helper process above */
    is_int(km_check(env, report, "forced"), 0, "forced: km_check clean after the stale release");
    is_u64(ck_pr_load_64(&km__keys(env)[key].stale), 1, "forced: the stale release counted on its key row");
    int d = add_pool(env, "d", 1, NULL);
    ok(d >= 0, "forced: the row is reused once the lease is back (%s)", err);
    rmseg(env);
}

/* ----------------------------------------------------------------- live */

#define WORKERS 4
#define LKEYS 4
typedef struct live_sh {
    int stop;
    uint64_t strat_ns, lim_ns, rm_ns, add_ns; /* when each call returned */
    uint64_t leases[WORKERS], found[WORKERS], after_rm[WORKERS], not_first[WORKERS], first[WORKERS];
    uint64_t bad[WORKERS];
    uint64_t lim_count[WORKERS][LKEYS]; /* leases of each key started after lim_ns */
    uint64_t lim_last[WORKERS];         /* latest start among them */
} live_sh;

static void live_worker(void *arg, int w)
{
    live_sh *sh = arg;
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(1);
    int p = KM_ENOPOOL;
    char first[KM_ID_MAX + 1] = "x-k0";
    while (!ck_pr_load_int(&sh->stop)) {
        if (p < 0) {
            p = km_pool_find(e, "x");
            if (p < 0)
                continue;
            sh->found[w]++;
        }
        uint64_t t = now_ns();
        uint64_t strat = ck_pr_load_64(&sh->strat_ns), lim = ck_pr_load_64(&sh->lim_ns),
                 rm = ck_pr_load_64(&sh->rm_ns);
        km_lease l;
        int rc = acquire_with(e, p, 0, 1, &l);
        if (rc == KM_ENOPOOL) {
            p = KM_ENOPOOL;
            continue;
        }
        if (rc != KM_OK) {
            if (rc != KM_EAGAIN && rc != KM_EUNAVAIL)
                sh->bad[w]++;
            continue;
        }
        sh->leases[w]++;
        if (rm && t > rm)
            sh->after_rm[w]++;
        if (strat && t > strat && !lim) {
            if (strcmp(l.key_id, first) != 0)
                sh->not_first[w]++;
            else
                sh->first[w]++;
        }
        if (lim && t > lim) {
            int k = l.key_id[3] - '0';
            if (k >= 0 && k < LKEYS)
                sh->lim_count[w][k]++;
            sh->lim_last[w] = t;
        }
        if (km_release(e, &l, NULL) != KM_OK)
            sh->bad[w]++;
    }
    km_close(e);
    _exit(0);
}

static void t_live(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 8, \"pools\": 2, \"processes\": 8, \"models\": 2},"
                        " \"pools\": [{\"name\": \"a\","
                        "   \"keys\": [{\"id\": \"a0\", \"secret\": \"sk-livew-a0-0000000\"}]}]}");
    live_sh *sh = shared_map(sizeof *sh);
    pid_t wk[WORKERS];
    workers_start(wk, WORKERS, live_worker, sh);
    usleep(100 * 1000);
    int x = add_pool(env, "x", LKEYS, "\"strategy\": \"round_robin\", \"models\": {\"m\": {}}");
    ok(x >= 0, "live: pool x added while workers run (%s)", err);
    ck_pr_store_64(&sh->add_ns, now_ns());
    usleep(300 * 1000);
    int rc = km_pool_set(env, x, "{\"strategy\": \"fill_first\"}", err, sizeof err);
    ck_pr_store_64(&sh->strat_ns, now_ns());
    is_int(rc, KM_OK, "live: strategy set to fill_first (%s)", err);
    usleep(300 * 1000);
    rc = km_pool_set(env, x, "{\"models\": {\"m2\": {}}}", err, sizeof err);
    is_int(rc, KM_OK, "live: a model appended while workers run (%s)", err);
    /* rpm 600 with its burst of 600: from the return on, a key's leases
     * are at most 600 + 10 per second since. */
    rc = km_pool_set(env, x, "{\"strategy\": \"round_robin\", \"limits\": {\"rpm\": 600}}", err, sizeof err);
    uint64_t lim = now_ns();
    ck_pr_store_64(&sh->lim_ns, lim);
    is_int(rc, KM_OK, "live: rpm 600 on every key while workers run (%s)", err);
    usleep(700 * 1000);
    rc = km_pool_remove(env, x, 2000, 0);
    ck_pr_store_64(&sh->rm_ns, now_ns());
    is_int(rc, KM_OK, "live: pool x removed while workers acquire from it");
    usleep(300 * 1000);
    ck_pr_store_int(&sh->stop, 1);
    int wbad = workers_wait(wk, WORKERS);
    uint64_t leases = 0, found = 0, after = 0, notf = 0, firsts = 0, bad = 0, last = 0, cnt[LKEYS] = {0};
    for (int w = 0; w < WORKERS; w++) {
        leases += sh->leases[w], found += sh->found[w], after += sh->after_rm[w];
        notf += sh->not_first[w], firsts += sh->first[w], bad += sh->bad[w];
        last = sh->lim_last[w] > last ? sh->lim_last[w] : last;
        for (int k = 0; k < LKEYS; k++)
            cnt[k] += sh->lim_count[w][k];
    }
    uint64_t most = 0;
    for (int k = 0; k < LKEYS; k++)
        most = cnt[k] > most ? cnt[k] : most;
    uint64_t bound = 600 + (last > lim ? (last - lim) / (100 * MS) + 1 : 1);
    diag("live: %" PRIu64 " leases; after the limits: %" PRIu64 "/%" PRIu64 "/%" PRIu64 "/%" PRIu64
         " per key in %" PRIu64 " ms (bound %" PRIu64 ")", leases, cnt[0], cnt[1], cnt[2], cnt[3],
         last > lim ? (last - lim) / MS : 0, bound);
    is_int(wbad, 0, "live: every worker ran to the end");
    ok(found >= WORKERS, "live: every worker found the added pool without attaching again (%" PRIu64 ")",
       found);
    ok(leases > 1000, "live: %" PRIu64 " leases of pool x", leases);
    ok(notf * 100 <= firsts, "live: after fill_first was set, acquires took the first key (%" PRIu64
       " of %" PRIu64 " took another: a slot busy at that instant)", notf, firsts + notf);
    ok(most > 0 && most <= bound, "live: no key over its new limit after the change (most %" PRIu64
       ", bound %" PRIu64 ")", most, bound);
    is_u64(after, 0, "live: no acquire started after remove returned got a lease of pool x");
    is_u64(bad, 0, "live: no error but KM_EAGAIN, KM_EUNAVAIL, KM_ENOPOOL; every release KM_OK");
    is_int(km_check(env, report, "live"), 0, "live: km_check clean");
    munmap(sh, sizeof *sh);
    rmseg(env);
}

/* --------------------------------------------------------- every point */

enum { OP_ADD, OP_ADD_REUSE, OP_REMOVE, OP_REMOVE_FORCE, OP_SET, OP_LIMITS, OP_MODEL,
       OP_MODEL_ADD, OP_RECOVER_LIMITS, OP_N };
static const char *const op_name[OP_N] = {"add-pool", "add-pool (a removed row)", "remove-pool",
                                          "remove-pool --force", "set-pool settings",
                                          "set-pool limits", "set-pool model limits",
                                          "set-pool model appended", "recovery of set-pool limits"};
static const int min_points[OP_N] = {8, 9, 5, 6, 4, 10, 8, 3, 6};

static const char FCFG[] =
    "{\"capacity\": {\"keys\": 6, \"pools\": 3, \"processes\": 8, \"models\": 3},"
    " \"pools\": [{\"name\": \"q\", \"keys\": [{\"id\": \"z\", \"secret\": \"sk-flt-zzzz-0000\"}]},"
    "  {\"name\": \"p\", \"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpm\": 50}},"
    "   \"limits\": {\"rpm\": 100, \"tpm\": 100000},"
    "   \"keys\": [{\"id\": \"p0\", \"secret\": \"sk-flt-p0-00000000\"},"
    "              {\"id\": \"p1\", \"secret\": \"sk-flt-p1-00000000\", \"limits\": {\"rpm\": 70}}]}]}";
#define NEWPOOL "{\"name\": \"n\", \"strategy\": \"fill_first\", \"limits\": {\"rpm\": 9}," \
    " \"keys\": [{\"id\": \"n0\", \"secret\": \"sk-flt-n0-00000000\"},"                  \
    "            {\"id\": \"n1\", \"secret\": \"sk-flt-n1-00000000\"}]}"

static int run_op(km_env *e, int op)
{
    int p = km_pool_find(e, "p");
    switch (op) {
    case OP_ADD:
    case OP_ADD_REUSE:
    {
        int rc = km_pool_add(e, NEWPOOL, err, sizeof err);
        if (rc < 0)
            fprintf(stderr, "add: %s %s\n", E(rc), err);
        return rc >= 0 ? 0 : 10;
    }
    case OP_REMOVE:
        return km_pool_remove(e, p, 1000, 0) == KM_OK ? 0 : 11;
    case OP_REMOVE_FORCE:
        return km_pool_remove(e, p, 0, KM_POOL_FORCE) == KM_OK ? 0 : 12;
    case OP_SET:
        return km_pool_set(e, p, "{\"strategy\": \"fill_first\", \"cooldown_s\": 9, \"max_failures\": 3,"
                                 " \"budget\": {\"usd\": 2, \"period\": \"month\"}}",
                           err, sizeof err) == KM_OK ? 0 : 13;
    case OP_LIMITS:
    case OP_RECOVER_LIMITS:
        return km_pool_set(e, p, "{\"limits\": {\"rpm\": 40, \"tpm\": null}}", err, sizeof err) == KM_OK
                   ? 0 : 14;
    case OP_MODEL:
        return km_pool_set(e, p, "{\"models\": {\"m\": {\"rpm\": 20}}}", err, sizeof err) == KM_OK ? 0 : 15;
    case OP_MODEL_ADD:
        return km_pool_set(e, p, "{\"models\": {\"m2\": {\"rpm\": 5}}}", err, sizeof err) == KM_OK ? 0 : 16;
    }
    return 99;
}

static int writer_dies(int op, int target, const char *label)
{
    fault_arm(target, label);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        km_env *e;
        if (km_open_flags(seg, KM_OPEN_NO_REAP | KM_OPEN_NO_SLOT, &e) != KM_OK)
            _exit(2);
        km_set_admin_timeout(e, 2000);
        km__fault_hook = fault_hook;
        int rc = op == OP_RECOVER_LIMITS && target ? (km_reap(e, NULL), 0) : run_op(e, op);
        km__fault_hook = NULL;
        km_close(e);
        _exit(rc);
    }
    return fault_reaped(pid, op_name[op], target);
}

/* The limits of key `id` of pool p: rpm (0: none). */
static uint64_t rpm_of(km_env *env, int p, const char *id)
{
    int k = km_key_find(env, p, id);
    return k < 0 ? UINT64_MAX : info(env, k).limits[KM_WIN_RPM].limit;
}

/* The pool there or not as a whole, its settings old or new. */
static const char *outcome(km_env *env, int op, int killed)
{
    int p = km_pool_find(env, "p"), n = km_pool_find(env, "n");
    km_pool_info pi;
    switch (op) {
    case OP_ADD:
    case OP_ADD_REUSE:
        if (n < 0)
            return killed ? "" : "added pool absent";
        if (!all_keys_lease(env, n))
            return "added pool: a key not handed out";
        km_pool_info_get(env, n, &pi);
        if (pi.n_keys != 2 || pi.strategy != KM_STRATEGY_FILL_FIRST || rpm_of(env, n, "n1") != 9)
            return "added pool incomplete";
        return "";
    case OP_REMOVE:
    case OP_REMOVE_FORCE:
        if (p < 0)
            return "";
        if (!killed)
            return "removed pool still there";
        return all_keys_lease(env, p) ? "" : "a pool not removed: a key not handed out";
    case OP_SET:
        km_pool_info_get(env, p, &pi);
        if (pi.strategy == KM_STRATEGY_FILL_FIRST)
            return pi.cooldown_s == 9 && pi.max_failures == 3 && pi.budget_microusd == 2000000 &&
                           pi.budget.period == KM_BUDGET_MONTH
                       ? "" : "settings half changed";
        return killed && pi.cooldown_s != 9 ? "" : "settings half changed, or not at all";
    case OP_LIMITS:
    case OP_RECOVER_LIMITS: {
        uint64_t a = rpm_of(env, p, "p0"), b = rpm_of(env, p, "p1");
        int k = km_key_find(env, p, "p0");
        uint64_t tpm = k < 0 ? 1 : info(env, k).limits[KM_WIN_TPM].limit;
        if (!all_keys_lease(env, p))
            return "a key skipped for good";
        if (a == 40 && b == 40 && tpm == 0)
            return "";
        if (killed && a == 100 && b == 70 && tpm == 100000)
            return ""; /* undone before any key (only the grace period passed) */
        return "limits neither old nor new";
    }
    case OP_MODEL: {
        km_lease l;
        km_request r = {.pool = p, .model = "m", .tokens = 1};
        if (km_acquire(env, &r, &l) != KM_OK)
            return "the model's keys skipped";
        km_release(env, &l, NULL);
        return "";
    }
    case OP_MODEL_ADD: {
        km_pool_info_get(env, p, &pi);
        km_lease l;
        km_request r = {.pool = p, .model = "m2", .tokens = 1};
        int rc = km_acquire(env, &r, &l);
        if (rc == KM_OK)
            km_release(env, &l, NULL);
        if (pi.n_models == 2 && rc == KM_OK)
            return "";
        return killed && pi.n_models == 1 && rc == KM_ENOMODEL ? "" : "model half appended";
    }
    }
    return "?";
}

static int one_case(int op, int target, int *killed_out, char *where, size_t wlen)
{
    km_env *env = mkseg(FCFG);
    int ok_all = 1, killed;
    km_lease held;
    int pq = pool_of(env, "q");
    if (op == OP_ADD_REUSE) {
        /* Pool n added and removed: the add reuses its row and key rows. */
        int n = km_pool_add(env, NEWPOOL, err, sizeof err);
        if (n < 0 || km_pool_remove(env, n, 0, 0) != KM_OK)
            bail_out("add-reuse setup: %s", err);
    }
    if (op == OP_REMOVE_FORCE && acquire_with(env, pool_of(env, "p"), 0, 1, &held) != KM_OK)
        bail_out("lease on p");
    if (op == OP_RECOVER_LIMITS && !writer_dies(OP_LIMITS, 0, "poollimits.done"))
        bail_out("the first limits writer was not killed");
    killed = writer_dies(op, target, NULL);
    *killed_out = killed;
    snprintf(where, wlen, "%s", killed ? fs->where : "(none)");
    char at[96];
    snprintf(at, sizeof at, "%s @%s", op_name[op], where);
    const char *trig = fault_trigger(env, target, km_key_find(env, pq, "z"), at, &ok_all);
    char ctx[128];
    snprintf(ctx, sizeof ctx, "%s @%s after %s", op_name[op], where, trig);
    if (km_check(env, report, ctx) != 0)
        ok_all = 0, diag("%s: km_check", ctx);
    const char *why = outcome(env, op, killed);
    if (why[0])
        ok_all = 0, diag("%s: %s", ctx, why);
    if (op == OP_REMOVE_FORCE) {
        int rc = km_release(env, &held, NULL);
        if (rc != (km_pool_find(env, "p") < 0 ? KM_ESTALE : KM_OK))
            ok_all = 0, diag("%s: the held lease released %s", ctx, E(rc));
    }
    /* No row lost: p and n removed and added again. */
    int p = km_pool_find(env, "p"), n = km_pool_find(env, "n");
    if (p >= 0 && km_pool_remove(env, p, 1000, 0) != KM_OK)
        ok_all = 0, diag("%s: p not removed after", ctx);
    if (n >= 0 && km_pool_remove(env, n, 1000, 0) != KM_OK)
        ok_all = 0, diag("%s: n not removed after", ctx);
    if (km_pool_add(env, NEWPOOL, err, sizeof err) < 0)
        ok_all = 0, diag("%s: n not added after: %s", ctx, err);
    if (km_check(env, report, ctx) != 0)
        ok_all = 0, diag("%s: km_check after", ctx);
    rmseg(env);
    return ok_all;
}

static void t_every_point(void)
{
    every_point(OP_N, op_name, min_points, 300, one_case);
}

/* --------------------------------------------------------------- random */

typedef struct rnd_sh {
    int stop;
    uint64_t ops[WORKERS], bad[WORKERS];
} rnd_sh;

static void rnd_worker(void *arg, int w)
{
    rnd_sh *sh = arg;
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(1);
    static const char *const names[] = {"r0", "r1", "base"};
    while (!ck_pr_load_int(&sh->stop)) {
        int p = km_pool_find(e, names[rand() % 3]);
        if (p < 0)
            continue;
        km_lease l;
        int rc = acquire_with(e, p, 0, 1, &l);
        if (rc == KM_OK) {
            sh->ops[w]++;
            rc = km_release(e, &l, NULL);
            if (rc != KM_OK && rc != KM_ESTALE) /* stale: a pool removed by force */
                sh->bad[w]++;
        } else if (rc != KM_EAGAIN && rc != KM_EUNAVAIL && rc != KM_ENOPOOL) {
            sh->bad[w]++;
        }
    }
    km_close(e);
    _exit(0);
}

static void rnd_writer(unsigned seed)
{
    km_env *e;
    srand(seed);
    if (km_open_flags(seg, KM_OPEN_NO_SLOT, &e) != KM_OK)
        _exit(1);
    km_set_admin_timeout(e, 500);
    char js[1024];
    for (;;) {
        const char *nm = rand() % 2 ? "r0" : "r1";
        int p = km_pool_find(e, nm);
        if (p < 0) {
            (void)km_pool_add(e, pool_json(js, sizeof js, nm, 1 + rand() % 2, "\"limits\": {\"rpm\": 100000}"),
                              err, sizeof err);
            continue;
        }
        switch (rand() % 4) {
        case 0:
            (void)km_pool_remove(e, p, 20, rand() % 2 ? KM_POOL_FORCE : 0);
            break;
        case 1:
            (void)km_pool_set(e, p, rand() % 2 ? "{\"strategy\": \"fill_first\"}" : "{\"strategy\": \"round_robin\", \"cooldown_s\": 5}",
                              err, sizeof err);
            break;
        default:
            (void)km_pool_set(e, p, rand() % 2 ? "{\"limits\": {\"rpm\": 50000}}" : "{\"limits\": {\"rpm\": 90000}}",
                              err, sizeof err);
        }
    }
}

static void t_random(void)
{
    const char *ts = getenv("KM_TORTURE_S");
    double secs = ts ? atof(ts) : 3;
    km_env *env = mkseg("{\"capacity\": {\"keys\": 8, \"pools\": 3, \"inflight_per_key\": 4, \"processes\": 16},"
                        " \"pools\": [{\"name\": \"base\","
                        "   \"keys\": [{\"id\": \"b0\", \"secret\": \"sk-rnd-b0-00000000\"}]}]}");
    rnd_sh *sh = shared_map(sizeof *sh);
    pid_t wk[WORKERS];
    workers_start(wk, WORKERS, rnd_worker, sh);
    unsigned kills = kill_writers(secs, rnd_writer);
    ck_pr_store_int(&sh->stop, 1);
    int wbad = workers_wait(wk, WORKERS);
    uint64_t ops = 0, bad = 0;
    for (int w = 0; w < WORKERS; w++)
        ops += sh->ops[w], bad += sh->bad[w];
    diag("random: %.1f s, %u pool writers killed, %" PRIu64 " leases, %" PRIu64 " dead intents resolved",
         secs, kills, ops, km__intent_of(env)->recovered);
    ok(kills >= 50, "random: %u pool writers killed mid-reconfiguration", kills);
    is_int(wbad, 0, "random: every worker ran to the end");
    ok(ops > 1000, "random: workers completed %" PRIu64 " leases", ops);
    is_u64(bad, 0, "random: no error but KM_EAGAIN, KM_EUNAVAIL, KM_ENOPOOL, KM_ESTALE");
    km_reap(env, NULL);
    is_int(ck_pr_load_32(&km__intent_of(env)->op), KM__OP_NONE, "random: no intent left after a reap");
    is_int(km_check(env, report, "random"), 0, "random: km_check clean");
    /* Every row usable: both pools removed, then 2 pools of the 7 free rows. */
    for (int i = 0; i < 2; i++) {
        int p = km_pool_find(env, i ? "r1" : "r0");
        if (p >= 0 && km_pool_remove(env, p, 1000, KM_POOL_FORCE) != KM_OK)
            diag("random: r%d not removed", i);
    }
    int a = add_pool(env, "f0", 4, NULL), b = add_pool(env, "f1", 3, NULL);
    ok(a >= 0 && b >= 0, "random: afterwards every pool and key row is reused (%s)", err);
    is_int(km_check(env, report, "random, full"), 0, "random: km_check clean when full");
    munmap(sh, sizeof *sh);
    rmseg(env);
}

int main(void)
{
    fixtures_init("livepool");
    fault_init();
    plan(42 + 4 + 11 + 13 + 3 * OP_N + 8 + 3 + 1);
    t_api();
    t_own_models();
    t_add_races_set();
    t_remove_wait();
    t_live();
    t_every_point();
    t_random();
    return exit_status();
}
