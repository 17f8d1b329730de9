/*
 * tests/testlib.h - fixtures shared by KeyMesh's C tests (on top of tap.h).
 *
 *   fixtures_init("limits")    at the top of main(): remembers the test
 *                              program's name and the main process, removes
 *                              the segment at exit and on SIGINT/SIGTERM
 *   mkseg(json)                parse `json`, create segment "kmt-NAME-PID"
 *                              (any stale one is unlinked first); bail_out
 *                              on any error.  Its name is in `seg`.
 *   rmseg(env)                 km_close + km_unlink, forget `seg`
 *   pool_of(env, name)         pool index, bail_out if missing
 *   key_of(env, pool, i)       key index of the pool's i-th member, bail_out
 *   info(env, key)             km_key_info by value, bail_out on error
 *   acquire_with(env, pool, strategy, tokens, &lease)
 *                              km_acquire of one request (lease zeroed first)
 *   release_with(env, &lease, kind, latency_us, tokens, retry_after_s)
 *                              km_release with that outcome (tokens -1: no
 *                              actual count, the estimate stands); every
 *                              other km_outcome field is 0, as in the tests
 *                              before (no provider view, input_tokens and
 *                              output_tokens 0: no split)
 *   sleep_until(t)             sleep to CLOCK_MONOTONIC time t (ns)
 *   E(rc)                      km_err_name(rc)
 *
 * Each test keeps a short acq()/rel() of its own that passes its defaults to
 * acquire_with()/release_with().
 *
 * Fork.  Cleanup only runs in the process that called fixtures_init(): a
 * forked helper that exits does not unlink the segment its parent still uses.
 *
 * Everything is static inline (and the state is one static struct), like
 * tap.h: a test that uses only part of this gets no -Wunused-function.
 */
#ifndef KM_TESTS_TESTLIB_H
#define KM_TESTS_TESTLIB_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "tap.h"

#define NS UINT64_C(1000000000)
#define MS UINT64_C(1000000)

/* The current segment's name ("" when there is none to clean up). */
static char seg[64];

static struct {
    const char *name; /* test program: "kmt-<name>-<pid>" */
    pid_t main_pid;   /* the process that cleans up */
} tl__st;

static inline void tl__cleanup(void)
{
    if (getpid() == tl__st.main_pid && seg[0])
        km_unlink(seg);
}

static inline void tl__on_signal(int sig)
{
    tl__cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline void fixtures_init(const char *name)
{
    tl__st.name = name;
    tl__st.main_pid = getpid();
    signal(SIGTERM, tl__on_signal);
    signal(SIGINT, tl__on_signal);
    atexit(tl__cleanup);
}

static inline km_env *mkseg(const char *json)
{
    km_config *cfg = NULL;
    km_env *env = NULL;
    char err[256] = "";
    int rc;

    if (!tl__st.name)
        bail_out("mkseg before fixtures_init");
    snprintf(seg, sizeof seg, "kmt-%s-%ld", tl__st.name, (long)getpid());
    km_unlink(seg);
    rc = km_config_parse(json, strlen(json), "test", &cfg, err, sizeof err);
    if (rc != KM_OK)
        bail_out("km_config_parse: %s: %s", km_err_name(rc), err);
    rc = km_create(seg, cfg, 0, &env);
    km_config_free(cfg);
    if (rc != KM_OK)
        bail_out("km_create %s: %s", seg, km_err_name(rc));
    return env;
}

static inline void rmseg(km_env *env)
{
    km_close(env);
    km_unlink(seg);
    seg[0] = '\0';
}

static inline int pool_of(km_env *env, const char *name)
{
    int p = km_pool_find(env, name);
    if (p < 0)
        bail_out("km_pool_find %s: %s", name, km_err_name(p));
    return p;
}

static inline int key_of(km_env *env, int pool, int i)
{
    int k = km_pool_key(env, pool, i);
    if (k < 0)
        bail_out("km_pool_key %d %d: %s", pool, i, km_err_name(k));
    return k;
}

static inline km_key_info info(km_env *env, int key)
{
    km_key_info ki;
    int rc = km_key_info_get(env, key, &ki);
    if (rc != KM_OK)
        bail_out("km_key_info_get %d: %s", key, km_err_name(rc));
    return ki;
}

static inline int acquire_with(km_env *env, int pool, int strategy,
                               uint32_t tokens, km_lease *l)
{
    km_request r = {.pool = pool, .strategy = strategy, .tokens = tokens};
    memset(l, 0, sizeof *l);
    return km_acquire(env, &r, l);
}

static inline int release_with(km_env *env, const km_lease *l, int kind,
                               int64_t lat_us, int64_t tokens,
                               double retry_after)
{
    km_outcome o = {.kind = kind, .latency_us = lat_us, .tokens = tokens,
                    .retry_after_s = retry_after};
    return km_release(env, l, &o);
}

static inline void sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / NS), (long)(t % NS)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static inline const char *E(int rc) { return km_err_name(rc); }

#endif /* KM_TESTS_TESTLIB_H */
