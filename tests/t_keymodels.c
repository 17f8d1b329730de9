/*
 * t_keymodels.c - per-key model limits (issue 18, item 3): a key's own
 * limits of a model of its per_model pool, from the configuration and from
 * km_key_set_model_limits, held exactly by four processes at once; the
 * other keys of the pool keep the pool's; changed live while workers
 * acquire; carried by snapshot and restore.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keymesh.h"
#include "testlib.h"

#define WORKERS 4

/* Model "m": 100 requests an hour for the pool's keys, 300 for key a's
 * own (an hour's window: no refill within a test run, so what the
 * window admits is exactly its burst), and tpm from the pool on both.
 * Key a also names tpd for "m"; model "n" keeps the pool's on both. */
static const char *config =
    "{\"capacity\": {\"keys\": 8, \"models\": 4},"
    " \"pools\": [{\"name\": \"p\", \"model_limits\": \"per_model\","
    "  \"models\": {\"m\": {\"rph\": 100, \"tpm\": 50000}, \"n\": {\"rpm\": 7}},"
    "  \"keys\": [{\"id\": \"a\", \"secret\": \"sk-test-keymodels-a\","
    "              \"models\": {\"m\": {\"rph\": 300, \"tpd\": 900000}}},"
    "             {\"id\": \"b\", \"secret\": \"sk-test-keymodels-b\"}]}]}";

/* Each worker acquires model `model` without waiting, releasing at once,
 * until `until` (CLOCK_MONOTONIC ns); writes its count per key (a, b). */
static void worker(const char *model, uint64_t until, int fd, int ka)
{
    km_env *env;
    uint64_t n[2] = {0, 0};
    if (km_open(seg, &env) != KM_OK)
        _exit(3);
    km_request r = {.pool = 0, .model = model};
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = -1, .tokens = -1};
    while (km_now_ns() < until) {
        km_lease l;
        memset(&l, 0, sizeof l);
        int rc = km_acquire(env, &r, &l);
        if (rc == KM_OK) {
            n[l.key == ka ? 0 : 1]++;
            if (km_release(env, &l, &o) != KM_OK)
                _exit(4);
        } else if (rc != KM_EAGAIN) {
            _exit(5);
        }
    }
    km_close(env);
    _exit(write(fd, n, sizeof n) == (ssize_t)sizeof n ? 0 : 6);
}

/* Fork the workers; `during` (if any) runs in the parent while they do.
 * Sums their counts into n[2]; returns the number of workers that failed. */
static int run(const char *model, uint64_t ms, int ka, void (*during)(void *), void *arg,
               uint64_t n[2])
{
    int fds[2], bad = 0;
    pid_t pid[WORKERS];
    uint64_t until = km_now_ns() + ms * MS;
    if (pipe(fds) != 0)
        bail_out("pipe");
    for (int i = 0; i < WORKERS; i++)
        if ((pid[i] = fork()) == 0) {
            close(fds[0]);
            worker(model, until, fds[1], ka);
        }
    close(fds[1]);
    if (during)
        during(arg);
    n[0] = n[1] = 0;
    for (int i = 0; i < WORKERS; i++) {
        uint64_t c[2];
        int st;
        if (read(fds[0], c, sizeof c) == (ssize_t)sizeof c) {
            n[0] += c[0];
            n[1] += c[1];
        }
        waitpid(pid[i], &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    close(fds[0]);
    return bad;
}

/* The limit of window w of model `model` on key `key`, and whether the
 * key sets it itself. */
static uint64_t mlimit(km_env *env, int key, int model, int w, int *own)
{
    km_limit_info lim[KM_WIN_COUNT];
    uint32_t bits = 0;
    if (km_model_info_get(env, 0, model, key, NULL, lim) != KM_OK ||
        km_model_own_get(env, 0, model, key, &bits) != KM_OK)
        bail_out("model %d of key %d unreadable", model, key);
    if (own)
        *own = (int)((bits >> w) & 1);
    return lim[w].limit;
}

typedef struct live_arg {
    km_env *env;
    int key;
    int rc;
} live_arg;

/* While the workers run: let them use up key b's 100, then raise b's own
 * rph of "m" to 400. */
static void raise_b(void *p)
{
    live_arg *a = p;
    char err[256];
    usleep(200 * 1000);
    a->rc = km_key_set_model_limits(a->env, a->key, "m", "{\"rph\": 400}", err, sizeof err);
}

int main(void)
{
    char err[512];
    fixtures_init("keymodels");
    plan(42);

    km_env *env = mkseg(config);
    int ka = km_key_find(env, 0, "a"), kb = km_key_find(env, 0, "b"), own;
    ok(ka >= 0 && kb >= 0, "keys a and b");

    /* 1. The configuration: a's own rph and tpd of "m", the pool's tpm
     * inherited; b and model "n" the pool's. */
    is_int((int)mlimit(env, ka, 0, KM_WIN_RPH, &own), 300, "config: a's own rph of m");
    ok(own, "config: rph of m is a's own");
    is_int((int)mlimit(env, ka, 0, KM_WIN_TPM, &own), 50000, "config: a inherits the pool's tpm of m");
    ok(!own, "config: tpm of m is the pool's on a");
    is_int((int)mlimit(env, ka, 0, KM_WIN_TPD, &own), 900000, "config: a's own tpd of m");
    is_int((int)mlimit(env, kb, 0, KM_WIN_RPH, &own), 100, "config: b has the pool's rph of m");
    ok(!own, "config: b sets nothing itself");
    is_int((int)mlimit(env, kb, 0, KM_WIN_TPD, NULL), 0, "config: b has no tpd of m");
    is_int((int)mlimit(env, ka, 1, KM_WIN_RPM, &own), 7, "config: a has the pool's rpm of n");
    ok(!own, "config: n is the pool's on a");

    /* 2. Four processes at once: exactly each key's own limit (a: 300, its
     * own; b: 100, the pool's) within the hour, never more. */
    uint64_t n[2];
    is_int(run("m", 400, ka, NULL, NULL, n), 0, "4 workers ran");
    is_int((int)n[0], 300, "4 processes: key a admitted exactly its own 300 of m");
    is_int((int)n[1], 100, "4 processes: key b admitted exactly the pool's 100 of m");
    is_int(km_check(env, NULL, NULL), 0, "check clean after the workers");

    /* 3. Live: b's own rph of m raised to 400 while the workers acquire.
     * The 100 b used carry over in units, a part of a unit as a whole one:
     * never one more than the new limit. */
    live_arg la = {env, kb, -1};
    is_int(run("m", 600, ka, raise_b, &la, n), 0, "4 workers ran through the change");
    is_int(la.rc, KM_OK, "live: km_key_set_model_limits(b, m, rph 400)");
    is_int((int)n[0], 0, "live: a admitted nothing more (its 300 spent)");
    is_int((int)n[1], 300, "live: b admitted exactly 300 more (400 - 100 carried)");
    is_int((int)mlimit(env, kb, 0, KM_WIN_RPH, &own), 400, "live: b's rph of m is 400");
    ok(own, "live: and b's own");
    is_int(km_check(env, NULL, NULL), 0, "check clean after the live change");

    /* 4. Token windows: a lease out while its key's own model tpm appears
     * and goes: each settles what it reserved (km_check's sums). */
    km_request r = {.pool = 0, .model = "n", .tokens = 700};
    km_lease l1, l2;
    memset(&l1, 0, sizeof l1);
    memset(&l2, 0, sizeof l2);
    r.key_id = "b";
    is_int(km_acquire(env, &r, &l1), KM_OK, "tokens: a 700-token lease of n on b (no tpm)");
    is_int(km_key_set_model_limits(env, kb, "n", "{\"tpm\": 10000}", err, sizeof err), KM_OK,
           "tokens: b's own tpm of n added with the lease out");
    r.tokens = 300;
    is_int(km_acquire(env, &r, &l2), KM_OK, "tokens: a 300-token lease with b's tpm of n");
    is_int(km_check(env, NULL, NULL), 0, "tokens: check clean with both out");
    is_int(km_release(env, &l1, NULL), KM_OK, "tokens: the older lease released");
    is_int(km_key_set_model_limits(env, kb, "n", "{\"tpm\": null}", err, sizeof err), KM_OK,
           "tokens: b's own tpm of n removed with a lease out");
    uint32_t bits = 99;
    is_int(km_model_own_get(env, 0, 1, kb, &bits), KM_OK, "tokens: own windows readable");
    is_int((int)bits, 0, "tokens: b has the pool's limits of n again");
    is_int(km_release(env, &l2, NULL), KM_OK, "tokens: the other lease released");
    is_int(km_check(env, NULL, NULL), 0, "tokens: check clean after the window went away");

    /* 5. Refusals. */
    is_int(km_key_set_model_limits(env, kb, "zz", "{\"rpm\": 5}", err, sizeof err), KM_ENOMODEL,
           "a model the pool does not list: KM_ENOMODEL");
    ok(strstr(err, "zz") != NULL, "the message names it: %s", err);
    is_int(km_key_set_model_limits(env, kb, "m", "{\"rpm\": 0}", err, sizeof err), KM_ECONFIG,
           "a bad number: KM_ECONFIG");
    is_int(km_key_add(env, 0, "{\"id\": \"c\", \"secret\": \"sk-test-keymodels-c\", "
                      "\"models\": {\"m\": {\"rph\": 5}}}", err, sizeof err), KM_ECONFIG,
           "km_key_add with models: refused");
    ok(strstr(err, "km_key_set_model_limits") != NULL, "and told where they go: %s", err);

    /* 6. Snapshot and restore keep the own limits (and only the own). */
    unsigned char key[32];
    char hex[65], *js = NULL;
    km_env *x = NULL;
    if (km_snapshot_keygen(hex) || km_snapshot_key_parse(hex, strlen(hex), key))
        bail_out("snapshot key");
    is_int(km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &js), KM_OK, "snapshot");
    char rname[80];
    snprintf(rname, sizeof rname, "%s-r", seg);
    km_unlink(rname);
    is_int(km_restore(rname, js, strlen(js), key, 0, &x, err, sizeof err), KM_OK, "restore: %s", err);
    free(js);
    if (!x)
        bail_out("no restored segment");
    int ra = km_key_find(x, 0, "a"), rb = km_key_find(x, 0, "b");
    is_int((int)mlimit(x, ra, 0, KM_WIN_RPH, &own) * own, 300, "restored: a's own rph of m");
    is_int((int)mlimit(x, ra, 0, KM_WIN_TPM, &own) + own, 50000, "restored: a's tpm of m still the pool's");
    is_int((int)mlimit(x, rb, 0, KM_WIN_RPH, &own) * own, 400, "restored: b's own rph of m (set live)");
    km_close(x);
    km_unlink(rname);
    rmseg(env);
    return exit_status();
}
