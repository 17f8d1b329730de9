/*
 * tests/t_outcomes.c - what a release does to its key.
 *
 *   SUCCESS       latency EMA (alpha 0.2, the first sample seeds it), resets
 *                 the consecutive failure and 429 counts.
 *   RATE_LIMITED  cooling until now + retry_after if > 0, else
 *                 cooldown_s * 2^(consecutive_429s - 1) up to max_cooldown_s;
 *                 the key is never handed out before cooldown_until; resets
 *                 the consecutive failure count (a failure after it starts
 *                 a new streak).
 *   FAILURE       at max_failures consecutive ones: cooling for cooldown_s,
 *                 then exactly one probe lease (state PROBING); the probe's
 *                 SUCCESS makes it ACTIVE, its FAILURE cools it again.
 *                 Older leases released or reaped meanwhile end no probe:
 *                 no second probe until the probe's own release or reap.
 *   AUTH / QUOTA  INVALID / EXHAUSTED until km_key_set_state(ACTIVE).
 *   All keys disabled, invalid or exhausted: KM_EUNAVAIL.
 *   A second release of a lease: KM_ESTALE, counted in stale_releases.
 *   acquired == sum(outcomes) + abandoned + inflight when quiescent.
 *
 * Time-dependent parts use cooldown_s 1 and retry_after 0.2 s.
 */
#include <string.h>
#include <sys/wait.h>

#include "testlib.h"

/* ------------------------------------------------------------- fixtures */

static int acq(km_env *env, int pool, km_lease *l)
{
    return acquire_with(env, pool, KM_STRATEGY_DEFAULT, 0, l);
}

static int rel(km_env *env, const km_lease *l, int kind, int64_t lat_us, double retry_after)
{
    return release_with(env, l, kind, lat_us, -1, retry_after);
}

/* Acquire from `pool` until a lease on `key` comes out (releasing the others
 * with SUCCESS); at most `tries` acquires.  Returns 1 with *l held. */
static int acq_key(km_env *env, int pool, int key, km_lease *l, int tries)
{
    for (int i = 0; i < tries; i++) {
        if (acq(env, pool, l) != KM_OK)
            continue;
        if (l->key == key)
            return 1;
        rel(env, l, KM_OUT_SUCCESS, 100, 0);
    }
    return 0;
}

/* Acquire `n` times from `pool` (releasing each with SUCCESS); returns how
 * many leases were on `key`. */
static int count_on(km_env *env, int pool, int key, int n)
{
    km_lease l;
    int c = 0;
    for (int i = 0; i < n; i++) {
        if (acq(env, pool, &l) != KM_OK)
            continue;
        c += l.key == key;
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    }
    return c;
}

static const char *S(int st) { return km_key_state_name(st); }

/* ---------------------------------------------------------------- tests */

static const char *CFG_ONE =
    "{\"capacity\": {\"keys\": 1, \"processes\": 8, \"pools\": 1, \"inflight_per_key\": 16},"
    " \"pools\": [{\"name\": \"p\", \"cooldown_s\": 1, \"max_cooldown_s\": 3, \"max_failures\": 2,"
    "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}";

static const char *CFG_TWO =
    "{\"capacity\": {\"keys\": 3, \"processes\": 8, \"pools\": 1, \"inflight_per_key\": 16},"
    " \"pools\": [{\"name\": \"p\", \"strategy\": \"round_robin\", \"cooldown_s\": 1,"
    "   \"max_cooldown_s\": 3, \"max_failures\": 2,"
    "   \"keys\": [{\"id\": \"k0\", \"secret\": \"sk-test-0000\"},"
    "              {\"id\": \"k1\", \"secret\": \"sk-test-1111\"},"
    "              {\"id\": \"k2\", \"secret\": \"sk-test-2222\"}]}]}";

static void test_success_ema(void)
{
    km_env *env = mkseg(CFG_ONE);
    int p = pool_of(env, "p");
    int k = key_of(env, p, 0);
    km_lease l;
    km_key_info ki;
    static const struct { int64_t sample; uint64_t ema; } seq[] = {
        {1000, 1000}, /* first sample seeds it */
        {2000, 1200}, /* 1000 + (2000-1000)/5 */
        {200, 1000},  /* 1200 + (200-1200)/5 */
        {6000, 2000}, /* 1000 + (6000-1000)/5 */
    };

    is_u64(info(env, k).latency_ema_us, 0, "latency EMA 0 before any sample");
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        acq(env, p, &l);
        rel(env, &l, KM_OUT_SUCCESS, seq[i].sample, 0);
        is_u64(info(env, k).latency_ema_us, seq[i].ema, "EMA after sample %lld us", (long long)seq[i].sample);
    }

    /* failure and 429 streaks reset by SUCCESS */
    acq(env, p, &l);
    rel(env, &l, KM_OUT_FAILURE, 100, 0);
    is_int(info(env, k).consecutive_failures, 1, "FAILURE: consecutive_failures 1");
    is_int(info(env, k).state, KM_KEY_ACTIVE, "one failure below max_failures 2: still active");
    acq(env, p, &l);
    rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    is_int(info(env, k).consecutive_failures, 0, "SUCCESS resets consecutive_failures");
    acq(env, p, &l);
    rel(env, &l, KM_OUT_RATE_LIMITED, 100, 0.05);
    is_int(info(env, k).consecutive_429s, 1, "RATE_LIMITED: consecutive_429s 1");
    sleep_until(info(env, k).cooldown_until_ns);
    is_int(acq(env, p, &l), KM_OK, "acquire after the 50 ms cooldown");
    rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    is_int(info(env, k).consecutive_429s, 0, "SUCCESS resets consecutive_429s");

    /* A 429 ends a failure streak: the key answered, it is limited, not
     * failing.  Three leases out at once; failure, 429, failure. */
    km_lease h[3];
    for (int i = 0; i < 3; i++)
        if (acq(env, p, &h[i]) != KM_OK)
            bail_out("acquire for the 429-streak test");
    rel(env, &h[0], KM_OUT_FAILURE, 100, 0);
    is_int(info(env, k).consecutive_failures, 1, "FAILURE ahead of a 429: consecutive_failures 1");
    rel(env, &h[1], KM_OUT_RATE_LIMITED, 100, 0.05);
    is_int(info(env, k).consecutive_failures, 0, "RATE_LIMITED resets consecutive_failures");
    uint64_t cool429 = info(env, k).cooldown_until_ns;
    rel(env, &h[2], KM_OUT_FAILURE, 100, 0);
    is_int(info(env, k).consecutive_failures, 1, "a failure after a 429 starts a new streak");
    sleep_until(cool429);
    is_int(acq(env, p, &l), KM_OK, "two failures around a 429 are no streak of max_failures 2: "
           "handed out after the 429's 50 ms");
    rel(env, &l, KM_OUT_SUCCESS, 100, 0);

    /* latency_us < 0: measured from lease.start_ns */
    rmseg(env);
    env = mkseg(CFG_ONE);
    acq(env, p, &l);
    sleep_until(l.start_ns + 20 * MS);
    rel(env, &l, KM_OUT_SUCCESS, -1, 0);
    ki = info(env, k);
    ok(ki.latency_ema_us >= 20000 && ki.latency_ema_us < 1000000,
       "latency_us -1 measures from lease start: EMA %" PRIu64 " us in [20000, 1e6)", ki.latency_ema_us);
    rmseg(env);
}

static void test_rate_limited(void)
{
    km_env *env = mkseg(CFG_ONE);
    int p = pool_of(env, "p"), rc;
    int k = key_of(env, p, 0);
    km_lease ls[4], l;
    km_key_info ki;
    uint64_t before, after;

    /* retry_after given: cooling until release time + 0.2 s */
    acq(env, p, &l);
    before = km_now_ns();
    rel(env, &l, KM_OUT_RATE_LIMITED, 100, 0.2);
    after = km_now_ns();
    ki = info(env, k);
    is_str(S(ki.state), "cooling", "RATE_LIMITED retry_after 0.2: state cooling");
    ok(ki.cooldown_until_ns >= before + 200 * MS && ki.cooldown_until_ns <= after + 200 * MS,
       "cooldown_until - release time = %.3f ms, expected 200",
       ((double)ki.cooldown_until_ns - (double)before) / 1e6);
    rc = acq(env, p, &l);
    is_str(E(rc), "EAGAIN", "cooling single key: acquire -> EAGAIN");
    is_u64(l.retry_at_ns, ki.cooldown_until_ns, "EAGAIN retry_at == cooldown_until");
    sleep_until(ki.cooldown_until_ns - 30 * MS);
    rc = acq(env, p, &l);
    /* an oversleep past cooldown_until would make a success legitimate */
    ok(rc == KM_EAGAIN || (rc == KM_OK && l.start_ns >= ki.cooldown_until_ns),
       "30 ms before cooldown_until: refused (got %s)", E(rc));
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    sleep_until(ki.cooldown_until_ns);
    rc = acq(env, p, &l);
    is_str(E(rc), "OK", "at cooldown_until: acquire succeeds");
    ok(rc != KM_OK || l.start_ns >= ki.cooldown_until_ns, "lease start >= cooldown_until");
    is_str(S(info(env, k).state), "active", "state active after the cooldown");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);

    /* no retry_after: cooldown_s * 2^(n-1), capped at max_cooldown_s (1, 2, 3) */
    for (int i = 0; i < 3; i++)
        if (acq(env, p, &ls[i]) != KM_OK)
            bail_out("acquire for backoff test");
    {
        static const uint64_t expect_s[3] = {1, 2, 3};
        for (int i = 0; i < 3; i++) {
            before = km_now_ns();
            rel(env, &ls[i], KM_OUT_RATE_LIMITED, 100, 0);
            after = km_now_ns();
            ki = info(env, k);
            is_int(ki.consecutive_429s, i + 1, "consecutive_429s %d", i + 1);
            ok(ki.cooldown_until_ns >= before + expect_s[i] * NS &&
                   ki.cooldown_until_ns <= after + expect_s[i] * NS,
               "429 #%d without retry_after: cooldown %.3f s, expected %" PRIu64 " s%s", i + 1,
               ((double)ki.cooldown_until_ns - (double)before) / 1e9, expect_s[i],
               i == 2 ? " (4 capped at max_cooldown_s 3)" : "");
        }
    }
    is_int(km_key_set_state(env, k, KM_KEY_ACTIVE), KM_OK, "km_key_set_state ACTIVE");
    ki = info(env, k);
    is_str(S(ki.state), "active", "enable clears the cooldown");
    is_int(ki.consecutive_429s, 0, "enable clears consecutive_429s");
    rc = acq(env, p, &l);
    is_str(E(rc), "OK", "acquire right after enable");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    rmseg(env);

    /* Two keys: while k0 cools, every lease is on another key. */
    env = mkseg(CFG_TWO);
    p = pool_of(env, "p");
    int k0 = key_of(env, p, 0);
    int on_k0_early = 0, n = 0, on_k0_after = 0;
    if (!acq_key(env, p, k0, &l, 10))
        bail_out("could not get k0");
    rel(env, &l, KM_OUT_RATE_LIMITED, 100, 0.2);
    ki = info(env, k0);
    while (km_now_ns() < ki.cooldown_until_ns + 50 * MS) {
        if (acq(env, p, &l) != KM_OK)
            continue;
        n++;
        if (l.key == k0) {
            if (l.start_ns < ki.cooldown_until_ns)
                on_k0_early++;
            else
                on_k0_after++;
        }
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
        if (n % 64 == 0)
            usleep(1000);
    }
    is_int(on_k0_early, 0, "no lease on the cooling key before cooldown_until (%d leases)", n);
    ok(on_k0_after > 0, "the key is handed out again after its cooldown (%d leases)", on_k0_after);
    rmseg(env);
}

static void test_failure_probe(void)
{
    km_env *env = mkseg(CFG_TWO);
    int p = pool_of(env, "p"), rc, skipped, got;
    int k0 = key_of(env, p, 0);
    km_lease a, b, probe, l;
    km_key_info ki;
    uint64_t before;

    if (!acq_key(env, p, k0, &a, 10) || !acq_key(env, p, k0, &b, 10))
        bail_out("could not get two leases on k0");
    rel(env, &a, KM_OUT_FAILURE, 100, 0);
    ki = info(env, k0);
    is_int(ki.consecutive_failures, 1, "1 failure");
    is_str(S(ki.state), "active", "below max_failures: active");
    before = km_now_ns();
    rel(env, &b, KM_OUT_FAILURE, 100, 0);
    ki = info(env, k0);
    is_int(ki.consecutive_failures, 2, "2 failures");
    is_str(S(ki.state), "cooling", "at max_failures 2: cooling");
    ok(ki.cooldown_until_ns >= before + 1 * NS && ki.cooldown_until_ns <= km_now_ns() + 1 * NS,
       "failure cooldown = cooldown_s (got %.3f s)", ((double)ki.cooldown_until_ns - (double)before) / 1e9);
    is_int(count_on(env, p, k0, 30), 0, "cooling key not handed out (30 acquires)");

    sleep_until(ki.cooldown_until_ns + 1 * MS);
    got = acq_key(env, p, k0, &probe, 10);
    ok(got, "after the cooldown the key is handed out (the probe)");
    if (!got)
        bail_out("no probe lease");
    ok(probe.start_ns >= ki.cooldown_until_ns, "probe starts after cooldown_until");
    is_str(S(info(env, k0).state), "probing", "state probing while the probe is out");
    skipped = count_on(env, p, k0, 30);
    is_int(skipped, 0, "second acquirer skips the probing key (30 acquires)");
    rel(env, &probe, KM_OUT_SUCCESS, 100, 0);
    ki = info(env, k0);
    is_str(S(ki.state), "active", "probe SUCCESS -> active");
    is_int(ki.consecutive_failures, 0, "probe SUCCESS resets consecutive_failures");
    ok(count_on(env, p, k0, 30) > 0, "the key is handed out again");

    /* Fail it again, then fail the probe: cooling again. */
    if (!acq_key(env, p, k0, &a, 10) || !acq_key(env, p, k0, &b, 10))
        bail_out("could not get two leases on k0");
    rel(env, &a, KM_OUT_FAILURE, 100, 0);
    rel(env, &b, KM_OUT_FAILURE, 100, 0);
    ki = info(env, k0);
    sleep_until(ki.cooldown_until_ns + 1 * MS);
    if (!acq_key(env, p, k0, &probe, 10))
        bail_out("no second probe lease");
    before = km_now_ns();
    rel(env, &probe, KM_OUT_FAILURE, 100, 0);
    ki = info(env, k0);
    is_str(S(ki.state), "cooling", "probe FAILURE -> cooling again");
    ok(ki.cooldown_until_ns >= before + 1 * NS, "probe FAILURE: new cooldown of at least cooldown_s (%.3f s)",
       ((double)ki.cooldown_until_ns - (double)before) / 1e9);
    is_int(count_on(env, p, k0, 30), 0, "not handed out after the failed probe");

    /* Single key pool: the probe is the only lease; a second acquire waits. */
    rmseg(env);
    env = mkseg(CFG_ONE);
    p = pool_of(env, "p");
    int k = key_of(env, p, 0);
    acq(env, p, &a);
    acq(env, p, &b);
    rel(env, &a, KM_OUT_FAILURE, 100, 0);
    rel(env, &b, KM_OUT_FAILURE, 100, 0);
    ki = info(env, k);
    sleep_until(ki.cooldown_until_ns + 1 * MS);
    rc = acq(env, p, &probe);
    is_str(E(rc), "OK", "single key: probe acquired");
    rc = acq(env, p, &l);
    is_str(E(rc), "EAGAIN", "single key: second acquire while probing -> EAGAIN");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    rel(env, &probe, KM_OUT_SUCCESS, 100, 0);
    rmseg(env);
}

/* A child that attaches, takes one lease of the pool, says so on a pipe and
 * waits to be killed: a lease that only a reap gives back. */
static pid_t holder_of(int pool)
{
    int fd[2];
    char b;
    if (pipe(fd) != 0)
        bail_out("pipe");
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        km_env *e = NULL;
        km_lease x;
        close(fd[0]);
        if (km_open(seg, &e) != KM_OK || acq(e, pool, &x) != KM_OK)
            _exit(1);
        if (write(fd[1], "h", 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    close(fd[1]);
    if (read(fd[0], &b, 1) != 1)
        bail_out("holder did not take its lease");
    close(fd[0]);
    return c;
}

static void kill_reap(km_env *env, pid_t c)
{
    km_reap_report rep;
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    if (km_reap(env, &rep) != KM_OK || rep.leases != 1)
        bail_out("reap of holder %d: %llu leases", (int)c, (unsigned long long)rep.leases);
}

/* "A single probe lease" (issue 17, finding 4): leases taken before the key
 * failed may still be out while its probe is; cancelling, failing,
 * succeeding or abandoning (a holder killed, then reaped) any of them ends
 * no probe, so no second probe is handed out.  Only the probe's own release
 * or its reaping does: its success makes the key active, its cancellation
 * or death lets the next acquirer probe. */
static void test_single_probe(void)
{
    km_env *env = mkseg(CFG_ONE);
    int p = pool_of(env, "p"), k = key_of(env, p, 0), rc;
    km_lease f1, f2, c1, c2, c3, probe, l;

    /* Out before the key fails: three leases here, one in a child. */
    if (acq(env, p, &c1) || acq(env, p, &c2) || acq(env, p, &c3) || acq(env, p, &f1) ||
        acq(env, p, &f2))
        bail_out("five leases");
    pid_t h1 = holder_of(p), h2 = holder_of(p);
    rel(env, &f1, KM_OUT_FAILURE, 100, 0);
    rel(env, &f2, KM_OUT_FAILURE, 100, 0);
    is_str(S(info(env, k).state), "cooling", "max_failures reached: cooling, 5 older leases out");
    sleep_until(info(env, k).cooldown_until_ns + 1 * MS);
    is_str(E(acq(env, p, &probe)), "OK", "after the cooldown: the probe");
    is_str(S(info(env, k).state), "probing", "probing");

    is_int(km_release(env, &c1, NULL), KM_OK, "an older lease cancelled while the probe is out");
    is_str(S(info(env, k).state), "probing", "still probing after another lease's cancel");
    rc = acq(env, p, &l);
    is_str(E(rc), "EAGAIN", "no second probe after another lease's cancel");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);

    kill_reap(env, h1);
    is_str(S(info(env, k).state), "probing", "still probing after another lease was reaped");
    rc = acq(env, p, &l);
    is_str(E(rc), "EAGAIN", "no second probe after another lease was reaped");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);

    rel(env, &c2, KM_OUT_FAILURE, 100, 0);
    rel(env, &c3, KM_OUT_RATE_LIMITED, 100, 0.001);
    is_str(S(info(env, k).state), "probing", "an older lease's FAILURE or 429 decides nothing either");
    is_int(km_check(env, NULL, NULL), 0, "km_check clean while probing");
    rel(env, &probe, KM_OUT_SUCCESS, 100, 0);
    /* The older FAILURE cooled the key further: active once that is over. */
    sleep_until(info(env, k).cooldown_until_ns + 1 * MS);
    is_str(S(info(env, k).state), "active", "the probe's own SUCCESS makes the key active");
    rc = acq(env, p, &l);
    is_str(E(rc), "OK", "and the key is handed out again");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);

    /* The probe's own cancel, and its own death, let the next probe go;
     * an older lease in another process still ends nothing. */
    if (acq(env, p, &f1) || acq(env, p, &f2))
        bail_out("two leases");
    rel(env, &f1, KM_OUT_FAILURE, 100, 0);
    rel(env, &f2, KM_OUT_FAILURE, 100, 0);
    sleep_until(info(env, k).cooldown_until_ns + 1 * MS);
    is_str(E(acq(env, p, &probe)), "OK", "a probe again");
    km_release(env, &probe, NULL);
    is_str(S(info(env, k).state), "cooling", "the probe's own cancel: no longer probing");
    pid_t pr = holder_of(p); /* the next probe, in a child */
    is_str(S(info(env, k).state), "probing", "the child holds the probe");
    kill_reap(env, h2); /* an older lease, in another child */
    is_str(S(info(env, k).state), "probing", "reaping another child's older lease ends no probe");
    kill_reap(env, pr);
    is_str(S(info(env, k).state), "cooling", "reaping the probe's holder ends the probe");
    rc = acq(env, p, &probe);
    is_str(E(rc), "OK", "and the next acquire probes");
    is_int(rc == KM_OK ? rel(env, &probe, KM_OUT_SUCCESS, 100, 0) : rc, KM_OK, "its success");
    is_str(S(info(env, k).state), "active", "makes the key active");
    is_int(km_check(env, NULL, NULL), 0, "km_check clean");
    rmseg(env);
}

static void test_auth_quota_unavail(void)
{
    km_env *env = mkseg(CFG_TWO);
    int p = pool_of(env, "p"), rc;
    int k0 = key_of(env, p, 0), k1 = key_of(env, p, 1), k2 = key_of(env, p, 2);
    km_lease l;

    if (!acq_key(env, p, k0, &l, 10))
        bail_out("no lease on k0");
    rel(env, &l, KM_OUT_AUTH, 100, 0);
    is_str(S(info(env, k0).state), "invalid", "AUTH -> invalid");
    if (!acq_key(env, p, k1, &l, 10))
        bail_out("no lease on k1");
    rel(env, &l, KM_OUT_QUOTA, 100, 0);
    is_str(S(info(env, k1).state), "exhausted", "QUOTA -> exhausted");
    is_int(count_on(env, p, k0, 20) + count_on(env, p, k1, 20), 0, "invalid and exhausted keys never handed out");
    is_int(km_key_set_state(env, k2, KM_KEY_DISABLED), KM_OK, "disable the last key");
    is_str(S(info(env, k2).state), "disabled", "state disabled");
    rc = acq(env, p, &l);
    is_str(E(rc), "EUNAVAIL", "all keys invalid/exhausted/disabled -> EUNAVAIL");
    is_int(km_key_set_state(env, k0, KM_KEY_COOLING), KM_EINVAL, "set_state COOLING is refused (EINVAL)");
    is_int(km_key_set_state(env, k0, KM_KEY_ACTIVE), KM_OK, "enable the invalid key");
    rc = acq(env, p, &l);
    is_str(E(rc), "OK", "acquire works again");
    is_u64(rc == KM_OK ? l.key : 999, k0, "on the re-enabled key");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, 100, 0);
    km_key_set_state(env, k1, KM_KEY_ACTIVE);
    ok(count_on(env, p, k1, 20) > 0, "re-enabled exhausted key handed out again");
    rmseg(env);
}

static void test_stale_and_counters(void)
{
    km_env *env = mkseg(CFG_ONE);
    int p = pool_of(env, "p");
    int k = key_of(env, p, 0);
    km_lease l, l2, held[3], forged;
    km_key_info ki;
    uint64_t sum;
    static const int kinds[] = {KM_OUT_SUCCESS, KM_OUT_SUCCESS, KM_OUT_RATE_LIMITED,
                                KM_OUT_FAILURE, KM_OUT_CANCELLED};
    /* SUCCESS: the first release, l2, and two below */
    static const uint64_t expect[KM_OUT_COUNT] = {4, 1, 1, 0, 0, 1};

    acq(env, p, &l);
    is_int(rel(env, &l, KM_OUT_SUCCESS, 100, 0), KM_OK, "first release OK");
    is_str(E(rel(env, &l, KM_OUT_SUCCESS, 100, 0)), "ESTALE", "second release of the same lease -> ESTALE");
    ki = info(env, k);
    is_u64(ki.stale_releases, 1, "stale_releases == 1");
    is_u64(ki.outcomes[KM_OUT_SUCCESS], 1, "the stale release is not counted as an outcome");

    /* The slot is reused by a new lease: the old lease stays stale. */
    acq(env, p, &l2);
    diag("old lease slot %d seq %u, new lease slot %d seq %u", l.slot, l.seq, l2.slot, l2.seq);
    is_str(E(rel(env, &l, KM_OUT_FAILURE, 100, 0)), "ESTALE", "old lease after its slot was reused -> ESTALE");
    ki = info(env, k);
    is_int(ki.inflight, 1, "the new lease is still in flight");
    is_int(ki.consecutive_failures, 0, "the stale FAILURE did not touch the key's health");
    forged = l2;
    forged.seq++;
    is_str(E(rel(env, &forged, KM_OUT_SUCCESS, 100, 0)), "ESTALE", "lease with a wrong seq -> ESTALE");
    is_int(rel(env, &l2, KM_OUT_SUCCESS, 100, 0), KM_OK, "the real lease releases fine");
    is_u64(info(env, k).stale_releases, 3, "stale_releases == 3");

    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (acq(env, p, &l) != KM_OK) {
            /* the 429 above cooled the key: wait it out */
            sleep_until(info(env, k).cooldown_until_ns);
            acq(env, p, &l);
        }
        if (kinds[i] == KM_OUT_CANCELLED)
            km_release(env, &l, NULL);
        else
            rel(env, &l, kinds[i], 100, 0.01);
    }
    for (int i = 0; i < 3; i++)
        acq(env, p, &held[i]);
    ki = info(env, k);
    for (int i = 0; i < KM_OUT_COUNT; i++)
        is_u64(ki.outcomes[i], expect[i], "outcomes[%s]", km_outcome_name(i));
    is_int(ki.inflight, 3, "3 leases in flight");
    sum = ki.abandoned + ki.inflight;
    for (int i = 0; i < KM_OUT_COUNT; i++)
        sum += ki.outcomes[i];
    is_u64(ki.acquired, sum, "acquired == sum(outcomes) + abandoned + inflight");

    /* A child attaches, takes 2 leases and closes: they are abandoned. */
    fflush(stdout);
    pid_t c = fork();
    if (c == 0) {
        km_env *e = NULL;
        km_lease x;
        if (km_open(seg, &e) != KM_OK)
            _exit(1);
        if (acq(e, p, &x) != KM_OK || acq(e, p, &x) != KM_OK)
            _exit(2);
        km_close(e);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), 0, "child took 2 leases and closed");
    for (int i = 0; i < 3; i++)
        rel(env, &held[i], KM_OUT_SUCCESS, 100, 0);
    ki = info(env, k);
    is_u64(ki.abandoned, 2, "km_close abandons the child's 2 leases");
    is_int(ki.inflight, 0, "nothing in flight");
    sum = ki.abandoned + ki.inflight;
    for (int i = 0; i < KM_OUT_COUNT; i++)
        sum += ki.outcomes[i];
    is_u64(ki.acquired, sum, "quiescent: acquired == sum(outcomes) + abandoned");
    rmseg(env);
}

int main(void)
{
    fixtures_init("outcomes");

    plan(108);
    test_success_ema();
    test_rate_limited();
    test_failure_probe();
    test_single_probe();
    test_auth_quota_unavail();
    test_stale_and_counters();
    return exit_status();
}
