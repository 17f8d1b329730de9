/*
 * tests/t_limits.c - GCRA limits of one key, single process.
 *
 *   token_bucket: T = ceil(period/limit), burst = limit by default,
 *                 tau = burst*T; a fresh key admits `burst` at once.
 *   sliding:      burst = max(1, limit/10) by default,
 *                 T = floor(period/(limit+1-burst)) + 1, tau = burst*T.
 *   A request is admitted only if every window admits it (all or none);
 *   token windows are skipped when tokens == 0; a cost above a token
 *   window's burst on every usable key is KM_ECOST; KM_EAGAIN carries the
 *   earliest time a key may admit the same request.
 *   Settlement: refund when actual < estimate, extra charge when actual >
 *   estimate, the estimate when actual < 0, everything back on CANCELLED;
 *   a refund never credits back capacity that already drained.
 *
 *   Range: limits and bursts up to 2^40 with burst*T <= 2^62 ns, checked
 *   for every window and both modes; the error of one beyond names the
 *   largest burst that fits, exactly; huge actual counts never wrap tat.
 *
 * Exact white-box checks (retry_at_ns, tat_ns) follow from the formulas
 * above and the fact that lease.start_ns is the `now` used for admission.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

/* ------------------------------------------------------------- fixtures */

static int acq(km_env *env, int pool, uint32_t tokens, km_lease *l)
{
    return acquire_with(env, pool, KM_STRATEGY_DEFAULT, tokens, l);
}

static int rel(km_env *env, const km_lease *l, int kind, int64_t tokens)
{
    return release_with(env, l, kind, 1000, tokens, 0);
}

/* ---------------------------------------------------------------- tests */

/* rpm 10, token bucket: a burst of exactly 10, then one every 6 s. */
static void test_token_bucket_burst(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"rpm\": 10},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p"), n_ok = 0, bad_start = 0, bad_retry = 0, rc = KM_OK;
    int k = key_of(env, p, 0);
    km_key_info ki = info(env, k);
    km_lease l;
    uint64_t start0 = 0, T = 6 * NS, before, after;

    is_u64(ki.limits[KM_WIN_RPM].limit, 10, "rpm limit 10");
    is_u64(ki.limits[KM_WIN_RPM].burst, 10, "token_bucket burst defaults to the limit");
    is_int(ki.limits[KM_WIN_RPM].mode, KM_MODE_TOKEN_BUCKET, "integer limit is a token bucket");
    is_u64(ki.limits[KM_WIN_RPM].available, 10, "fresh key: 10 available");
    is_u64(ki.limits[KM_WIN_TPM].limit, 0, "tpm not limited");

    for (int i = 0; i < 10; i++) {
        before = km_now_ns();
        rc = acq(env, p, 0, &l);
        after = km_now_ns();
        if (rc != KM_OK) {
            diag("acquire %d: %s", i, E(rc));
            break;
        }
        n_ok++;
        if (i == 0)
            start0 = l.start_ns;
        bad_start += l.start_ns < before || l.start_ns > after;
        bad_retry += l.retry_at_ns != 0;
        rel(env, &l, KM_OUT_SUCCESS, -1);
    }
    is_int(n_ok, 10, "fresh rpm=10 key: 10 acquires succeed at once");
    is_int(bad_start, 0, "lease.start_ns lies between clock reads around km_acquire");
    is_int(bad_retry, 0, "lease.retry_at_ns == 0 on success");

    rc = acq(env, p, 0, &l);
    after = km_now_ns();
    is_str(E(rc), "EAGAIN", "11th acquire -> EAGAIN");
    ok(l.retry_at_ns > after + 5900 * MS && l.retry_at_ns <= after + 6100 * MS,
       "retry_at - now in (5.9 s, 6.1 s] (got %.6f s)", ((double)l.retry_at_ns - (double)after) / 1e9);
    is_u64(l.retry_at_ns, start0 + T, "retry_at_ns == first admission + T (6 s) exactly");
    ki = info(env, k);
    is_u64(ki.limits[KM_WIN_RPM].tat_ns, start0 + 10 * T, "tat == first admission + 10*T");
    is_u64(ki.limits[KM_WIN_RPM].available, 0, "0 available after the burst");
    rc = acq(env, p, 0, &l);
    is_str(E(rc), "EAGAIN", "EAGAIN again");
    ki = info(env, k);
    is_u64(ki.acquired, 10, "refused acquires are not counted as acquired");
    is_u64(ki.limits[KM_WIN_RPM].tat_ns, start0 + 10 * T, "refused acquires do not move tat");
    rmseg(env);
}

/* CANCELLED (outcome NULL): the request was never sent.  Its token
 * reservation comes back exactly; its request charge stays, because a
 * committed GCRA charge cannot in general be undone soundly (others may have
 * been admitted against it since).  Conservative: one request of capacity. */
static void test_cancel_refunds_tokens_not_request(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"rpm\": 10, \"tpm\": 1000},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p"), n_ok = 0;
    int k = key_of(env, p, 0);
    km_lease ls[10], l;

    for (int i = 0; i < 10; i++)
        n_ok += acq(env, p, 100, &ls[i]) == KM_OK;
    is_int(n_ok, 10, "10 leases of 100 tokens held");
    is_u64(info(env, k).limits[KM_WIN_TPM].available, 0, "1000 tokens reserved: none available");
    is_int(km_release(env, &ls[9], NULL), KM_OK, "release the last lease with outcome NULL (CANCELLED)");
    is_u64(info(env, k).limits[KM_WIN_TPM].available, 100, "CANCELLED: its 100 reserved tokens come back");
    is_u64(info(env, k).limits[KM_WIN_RPM].available, 0, "CANCELLED: its request still counts");
    is_str(E(acq(env, p, 0, &l)), "EAGAIN", "so the next acquire waits for the rpm window");
    for (int i = 0; i < 9; i++)
        rel(env, &ls[i], KM_OUT_SUCCESS, -1);
    is_u64(info(env, k).outcomes[KM_OUT_CANCELLED], 1, "outcomes[CANCELLED] == 1");
    is_u64(info(env, k).tokens_used, 900, "tokens used: the 9 settled leases only");
    rmseg(env);
}

/* Token windows: ECOST, tokens == 0 skips them, all-or-none with rpm. */
static void test_tokens_and_all_or_none(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 2, \"processes\": 4, \"pools\": 2, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"t\", \"limits\": {\"tpm\": 1000},"
        "   \"keys\": [{\"id\": \"kt\", \"secret\": \"sk-test-tttt\"}]},"
        "  {\"name\": \"rt\", \"limits\": {\"rpm\": 5, \"tpm\": 1000},"
        "   \"keys\": [{\"id\": \"krt\", \"secret\": \"sk-test-rrrr\"}]}]}");
    int p = pool_of(env, "t"), q = pool_of(env, "rt"), rc, n;
    int kq = key_of(env, q, 0);
    km_lease l, big, z;
    km_key_info ki;
    uint64_t tat_rpm;

    is_str(E(acq(env, p, 1001, &l)), "ECOST", "tpm 1000: 1001 tokens -> ECOST");
    is_str(E(acq(env, p, 1000, &big)), "OK", "tpm 1000: 1000 tokens admitted on a fresh key");
    is_str(E(acq(env, p, 1, &l)), "EAGAIN", "bucket reserved/empty: 1 token -> EAGAIN");
    diag("EAGAIN while the tokens are held: retry_at - now = %.3f ms",
         ((double)l.retry_at_ns - (double)km_now_ns()) / 1e6);
    rc = acq(env, p, 0, &z);
    is_str(E(rc), "OK", "tokens == 0 skips token windows: admitted");
    if (rc == KM_OK)
        rel(env, &z, KM_OUT_SUCCESS, -1);
    rel(env, &big, KM_OUT_SUCCESS, -1);

    /* all or none: the tpm refusal must not charge rpm */
    is_str(E(acq(env, q, 1000, &big)), "OK", "rpm 5 + tpm 1000: 1000 tokens admitted");
    rel(env, &big, KM_OUT_SUCCESS, -1);
    ki = info(env, kq);
    tat_rpm = ki.limits[KM_WIN_RPM].tat_ns;
    is_u64(ki.limits[KM_WIN_RPM].available, 4, "rpm: 4 left after one request");
    is_str(E(acq(env, q, 500, &l)), "EAGAIN", "tpm refuses 500 tokens -> EAGAIN");
    ki = info(env, kq);
    is_u64(ki.limits[KM_WIN_RPM].tat_ns, tat_rpm, "refused by tpm: rpm tat unchanged (all or none)");
    is_u64(ki.limits[KM_WIN_RPM].available, 4, "refused by tpm: rpm still 4 available");
    for (n = 0; n < 6; n++) {
        if (acq(env, q, 0, &z) != KM_OK)
            break;
        rel(env, &z, KM_OUT_SUCCESS, -1);
    }
    is_int(n, 4, "exactly 4 more requests (tokens 0) fit the rpm limit");
    rmseg(env);
}

/* Settlement of token charges on tpm 60000 (T = 1 ms, burst 60000). */
static void test_settlement(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"tpm\": 60000},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p");
    int k = key_of(env, p, 0);
    km_lease l;
    km_key_info ki;
    uint64_t t0 = km_now_ns(), net = 0, avail, slack;

    /* expected available = 60000 - net committed, plus at most the refill
     * since t0 (1 token per ms) and 1 for rounding. */
#define CHECK_AVAIL(what)                                                          \
    do {                                                                           \
        ki = info(env, k);                                                         \
        avail = ki.limits[KM_WIN_TPM].available;                                   \
        slack = (km_now_ns() - t0) / MS + 1;                                       \
        ok(avail >= 60000 - net && avail <= 60000 - net + slack,                   \
           "%s: available %" PRIu64 " in [%" PRIu64 ", %" PRIu64 "]", what, avail, \
           60000 - net, 60000 - net + slack);                                      \
    } while (0)

    is_str(E(acq(env, p, 10000, &l)), "OK", "acquire estimate 10000");
    net = 10000;
    CHECK_AVAIL("estimate 10000 charged at acquire");
    is_int(rel(env, &l, KM_OUT_SUCCESS, 4000), KM_OK, "release actual 4000");
    net = 4000;
    CHECK_AVAIL("refund of 6000 (actual < estimate)");
    is_u64(ki.tokens_used, 4000, "tokens_used == 4000");

    is_str(E(acq(env, p, 1000, &l)), "OK", "acquire estimate 1000");
    is_int(rel(env, &l, KM_OUT_SUCCESS, 3000), KM_OK, "release actual 3000");
    net += 3000;
    CHECK_AVAIL("extra 2000 charged (actual > estimate)");
    is_u64(ki.tokens_used, 7000, "tokens_used == 7000");

    is_str(E(acq(env, p, 2000, &l)), "OK", "acquire estimate 2000");
    is_int(rel(env, &l, KM_OUT_FAILURE, -1), KM_OK, "release tokens -1");
    net += 2000;
    CHECK_AVAIL("tokens < 0 keeps the estimate");
    is_u64(ki.tokens_used, 9000, "tokens_used == 9000");

    is_str(E(acq(env, p, 5000, &l)), "OK", "acquire estimate 5000");
    is_int(km_release(env, &l, NULL), KM_OK, "release NULL outcome (CANCELLED)");
    CHECK_AVAIL("CANCELLED refunds all tokens");
    is_u64(ki.tokens_used, 9000, "tokens_used unchanged by CANCELLED");
    is_u64(ki.outcomes[KM_OUT_CANCELLED], 1, "outcomes[CANCELLED] == 1");
    is_u64(ki.outcomes[KM_OUT_SUCCESS], 2, "outcomes[SUCCESS] == 2");
    is_u64(ki.outcomes[KM_OUT_FAILURE], 1, "outcomes[FAILURE] == 1");
#undef CHECK_AVAIL
    rmseg(env);
}

/* A refund after the bucket refilled must not credit capacity that already
 * drained.  tpm 60000 (T = 1 ms).  A: estimate 300; 350 ms pass (A's charge
 * has drained); B: estimate 50000, held.  Releasing A with 0 tokens may give
 * back at most what is not yet drained: afterwards at most
 * 60000 - 50000 + (refill since B) + 1 may be available.  A refund applied to
 * B's charge would show about 300 more. */
static void test_refund_after_refill(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"tpm\": 60000},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p");
    int k = key_of(env, p, 0);
    km_lease a, b;
    uint64_t avail, bound, now;

    is_str(E(acq(env, p, 300, &a)), "OK", "A: estimate 300");
    sleep_until(a.start_ns + 350 * MS);
    is_str(E(acq(env, p, 50000, &b)), "OK", "B: estimate 50000, 350 ms later");
    is_int(rel(env, &a, KM_OUT_SUCCESS, 0), KM_OK, "release A with 0 tokens");
    avail = info(env, k).limits[KM_WIN_TPM].available;
    now = km_now_ns();
    bound = 10000 + (now - b.start_ns) / MS + 1;
    cmp_u64(avail, "<=", bound, "refund after refill credits nothing already drained (available <= 10000 + refill)");
    cmp_u64(avail, ">=", 9700, "and at least the conservative 9700 is available");
    rel(env, &b, KM_OUT_SUCCESS, -1);
    rmseg(env);
}

/* retry_at_ns is neither early nor late: tpm 60000 (T = 1 ms). */
static void test_retry_at(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"tpm\": 60000},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p"), rc;
    km_lease l, m;
    uint64_t start;

    is_str(E(acq(env, p, 60000, &l)), "OK", "take the whole burst (60000)");
    start = l.start_ns;
    rel(env, &l, KM_OUT_SUCCESS, -1);
    rc = acq(env, p, 100, &m);
    is_str(E(rc), "EAGAIN", "100 more tokens -> EAGAIN");
    is_u64(m.retry_at_ns, start + 100 * MS, "retry_at == start + 100*T exactly");
    sleep_until(m.retry_at_ns - 20 * MS);
    rc = acq(env, p, 100, &l);
    /* an oversleep past retry_at would make a success legitimate */
    ok(rc == KM_EAGAIN || (rc == KM_OK && l.start_ns >= m.retry_at_ns),
       "20 ms before retry_at: refused (got %s, %.3f ms before retry_at)", E(rc),
       ((double)m.retry_at_ns - (double)(rc == KM_OK ? l.start_ns : km_now_ns())) / 1e6);
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, -1);
    sleep_until(m.retry_at_ns);
    rc = acq(env, p, 100, &l);
    is_str(E(rc), "OK", "at retry_at: admitted");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, -1);
    rmseg(env);
}

/* Sliding windows: default and explicit burst, exact retry, bad burst. */
static void test_sliding(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 3, \"processes\": 4, \"pools\": 3, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"d\", \"limits\": {\"rpm\": {\"limit\": 10, \"mode\": \"sliding\"}},"
        "   \"keys\": [{\"id\": \"kd\", \"secret\": \"sk-test-dddd\"}]},"
        "  {\"name\": \"b\", \"limits\": {\"rpm\": {\"limit\": 10, \"mode\": \"sliding\", \"burst\": 5}},"
        "   \"keys\": [{\"id\": \"kb\", \"secret\": \"sk-test-bbbb\"}]},"
        "  {\"name\": \"t\", \"limits\": {\"tpm\": {\"limit\": 6000, \"mode\": \"sliding\", \"burst\": 6000}},"
        "   \"keys\": [{\"id\": \"kt\", \"secret\": \"sk-test-tttt\"}]}]}");
    int d = pool_of(env, "d"), b = pool_of(env, "b"), t = pool_of(env, "t"), n;
    km_key_info ki = info(env, key_of(env, d, 0));
    km_lease l;
    uint64_t start0 = 0, T, sum = 0, seed = 88172645463325252ull, deadline;

    is_int(ki.limits[KM_WIN_RPM].mode, KM_MODE_SLIDING, "mode sliding");
    is_u64(ki.limits[KM_WIN_RPM].burst, 1, "sliding burst defaults to max(1, limit/10) = 1");
    is_u64(ki.limits[KM_WIN_RPM].available, 1, "fresh sliding key: 1 available");
    is_str(E(acq(env, d, 0, &l)), "OK", "sliding rpm 10: first request admitted");
    start0 = l.start_ns;
    rel(env, &l, KM_OUT_SUCCESS, -1);
    is_str(E(acq(env, d, 0, &l)), "EAGAIN", "sliding rpm 10 burst 1: second -> EAGAIN");
    T = 60 * NS / 10 + 1;
    is_u64(l.retry_at_ns, start0 + T, "retry_at == start + T, T = floor(60 s/10) + 1 ns");

    ki = info(env, key_of(env, b, 0));
    is_u64(ki.limits[KM_WIN_RPM].burst, 5, "explicit sliding burst 5");
    for (n = 0; n < 8; n++) {
        if (acq(env, b, 0, &l) != KM_OK)
            break;
        if (n == 0)
            start0 = l.start_ns;
        rel(env, &l, KM_OUT_SUCCESS, -1);
    }
    is_int(n, 5, "sliding rpm 10 burst 5: exactly 5 admitted at once");
    T = 60 * NS / 6 + 1;
    is_u64(l.retry_at_ns, start0 + T, "retry_at == start + T, T = floor(60 s/6) + 1 ns");

    /* burst == limit: at most the limit in the window, and it binds. */
    deadline = km_now_ns() + 200 * MS;
    n = 0;
    while (km_now_ns() < deadline) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        uint32_t c = (uint32_t)(seed % 500) + 1;
        if (acq(env, t, c, &l) == KM_OK) {
            sum += c;
            n++;
            rel(env, &l, KM_OUT_SUCCESS, -1);
        }
    }
    diag("sliding tpm 6000 burst 6000: %d requests, %" PRIu64 " tokens in 200 ms", n, sum);
    cmp_u64(sum, "<=", 6000, "sliding: tokens admitted within one period <= limit");
    cmp_u64(sum, ">", 6000 - 500, "sliding: the limit binds (within one max cost of it)");
    rmseg(env);

    {
        const char *bad =
            "{\"pools\": [{\"name\": \"x\", \"limits\": {\"rpm\": {\"limit\": 10, \"mode\": \"sliding\", \"burst\": 11}},"
            "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-xxxx\"}]}]}";
        km_config *cfg = NULL;
        km_env *e2 = NULL;
        char err[256] = "";
        int rc = km_config_parse(bad, strlen(bad), "test", &cfg, err, sizeof err);
        if (rc == KM_OK) {
            snprintf(seg, sizeof seg, "kmt-limits-bad-%ld", (long)getpid());
            rc = km_create(seg, cfg, 0, &e2);
            km_config_free(cfg);
            if (rc == KM_OK)
                rmseg(e2);
        }
        is_str(E(rc), "ECONFIG", "sliding burst 11 > limit 10 is refused with ECONFIG");
    }
}

/* Token bucket with a small burst: the rate part of the bound. rpm 6000,
 * burst 5: T = 10 ms.  Admissions over ~300 ms must satisfy, for the first
 * and last admission times a, b:  n <= (b-a)*limit/period + burst. */
static void test_token_bucket_rate(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"p\", \"limits\": {\"rpm\": {\"limit\": 6000, \"burst\": 5}},"
        "   \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}");
    int p = pool_of(env, "p");
    km_lease l;
    uint64_t first = 0, last = 0, n = 0, deadline = km_now_ns() + 300 * MS;

    while (km_now_ns() < deadline) {
        if (acq(env, p, 0, &l) != KM_OK)
            continue;
        if (n++ == 0)
            first = l.start_ns;
        last = l.start_ns;
        rel(env, &l, KM_OUT_SUCCESS, -1);
    }
    /* n*period <= (b-a)*limit + burst*period, in integers */
    uint64_t lhs = n * 60 * NS, rhs = (last - first) * 6000 + 5 * 60 * NS;
    diag("token_bucket rpm 6000 burst 5: %" PRIu64 " admitted over %.1f ms", n, (double)(last - first) / 1e6);
    cmp_u64(lhs, "<=", rhs, "n*period <= (b-a)*limit + burst*period");
    cmp_u64(n, ">=", 5 + (last - first) / (20 * MS), "and admits at least half its rate (not stuck)");
    rmseg(env);
}

/* Hour and day windows, key-level overrides, ECOST vs EAGAIN. */
static void test_windows(void)
{
    km_env *env = mkseg(
        "{\"capacity\": {\"keys\": 6, \"processes\": 4, \"pools\": 4, \"inflight_per_key\": 16},"
        " \"pools\": [{\"name\": \"h\", \"limits\": {\"rpm\": 100, \"rph\": 10},"
        "   \"keys\": [{\"id\": \"kh\", \"secret\": \"sk-test-hhhh\"}]},"
        "  {\"name\": \"d\", \"limits\": {\"rpd\": 3},"
        "   \"keys\": [{\"id\": \"kd\", \"secret\": \"sk-test-dddd\"}]},"
        "  {\"name\": \"t\", \"limits\": {\"tph\": 500, \"tpd\": 700},"
        "   \"keys\": [{\"id\": \"kt\", \"secret\": \"sk-test-tttt\"}]},"
        "  {\"name\": \"o\", \"limits\": {\"tpm\": 1000},"
        "   \"keys\": [{\"id\": \"small\", \"secret\": \"sk-test-ssss\", \"limits\": {\"tpm\": 100}},"
        "              {\"id\": \"large\", \"secret\": \"sk-test-llll\"}]}]}");
    int h = pool_of(env, "h"), d = pool_of(env, "d"), t = pool_of(env, "t"), o = pool_of(env, "o"), n, rc;
    int kt = key_of(env, t, 0), small = key_of(env, o, 0), large = key_of(env, o, 1);
    km_lease l, hold;
    uint64_t start0 = 0;
    km_key_info ki;

    for (n = 0; n < 12; n++) {
        if (acq(env, h, 0, &l) != KM_OK)
            break;
        if (n == 0)
            start0 = l.start_ns;
        rel(env, &l, KM_OUT_SUCCESS, -1);
    }
    is_int(n, 10, "rpm 100 + rph 10: rph binds after 10");
    is_u64(l.retry_at_ns, start0 + 360 * NS, "retry_at == start + 360 s (rph T)");

    for (n = 0; n < 5; n++) {
        if (acq(env, d, 0, &l) != KM_OK)
            break;
        if (n == 0)
            start0 = l.start_ns;
        rel(env, &l, KM_OUT_SUCCESS, -1);
    }
    is_int(n, 3, "rpd 3: 3 admitted");
    is_u64(l.retry_at_ns, start0 + 28800 * NS, "retry_at == start + 28800 s (rpd T)");

    is_str(E(acq(env, t, 501, &l)), "ECOST", "tph 500: 501 tokens -> ECOST");
    rc = acq(env, t, 500, &l);
    is_str(E(rc), "OK", "tph 500 / tpd 700: 500 tokens admitted");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, -1);
    ki = info(env, kt);
    is_u64(ki.limits[KM_WIN_TPH].available, 0, "tph: 0 available");
    is_u64(ki.limits[KM_WIN_TPD].available, 200, "tpd: 200 available");
    is_str(E(acq(env, t, 1, &l)), "EAGAIN", "1 more token -> EAGAIN");

    ki = info(env, small);
    is_u64(ki.limits[KM_WIN_TPM].limit, 100, "key-level tpm 100 overrides the pool's 1000");
    rc = acq(env, o, 500, &hold);
    is_str(E(rc), "OK", "500 tokens: admitted");
    is_u64(rc == KM_OK ? hold.key : 999, large, "500 tokens go to the key whose burst allows them");
    is_str(E(acq(env, o, 1001, &l)), "ECOST", "1001 tokens: above every key's burst -> ECOST");
    rc = acq(env, o, 600, &l);
    is_str(E(rc), "EAGAIN", "600 tokens: fits a burst but not now -> EAGAIN, not ECOST");
    rc = acq(env, o, 50, &l);
    is_str(E(rc), "OK", "50 tokens still admitted");
    if (rc == KM_OK)
        rel(env, &l, KM_OUT_SUCCESS, -1);
    rel(env, &hold, KM_OUT_SUCCESS, -1);
    rmseg(env);
}

/* ---------------------------------------------------------------- range */

static const uint64_t PERIOD_S[KM_WIN_COUNT] = {60, 3600, 86400, 60, 3600, 86400};

/* One key under one limit {limit, mode, burst} on window w. */
static void limit_json(char *buf, size_t n, int w, uint64_t limit, int sliding, uint64_t burst)
{
    snprintf(buf, n,
             "{\"capacity\": {\"keys\": 1, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 8},"
             " \"pools\": [{\"name\": \"p\", \"limits\": {\"%s\": {\"limit\": %llu, \"mode\": \"%s\","
             " \"burst\": %llu}}, \"keys\": [{\"id\": \"k\", \"secret\": \"sk-test-aaaa\"}]}]}",
             km_window_name(w), (unsigned long long)limit, sliding ? "sliding" : "token_bucket",
             (unsigned long long)burst);
}

static int parse_limit(int w, uint64_t limit, int sliding, uint64_t burst, char *err, size_t n)
{
    char json[512];
    km_config *cfg = NULL;
    limit_json(json, sizeof json, w, limit, sliding, burst);
    err[0] = '\0';
    int rc = km_config_parse(json, strlen(json), "test", &cfg, err, n);
    km_config_free(cfg);
    return rc;
}

/* The documented rule (docs/config.md, Limits): burst x T <= 2^62 ns. */
static int fits(int w, uint64_t limit, int sliding, uint64_t burst)
{
    uint64_t P = PERIOD_S[w] * NS;
    uint64_t T = sliding ? P / (limit + 1 - burst) + 1 : (P + limit - 1) / limit;
    return (unsigned __int128)burst * T <= (unsigned __int128)1 << 62;
}

/* Every window, both modes, limit = burst at 1, 2^20 and 2^40: accepted
 * where burst x T <= 2^62 ns, and then exact (a fresh key has the whole
 * burst, one unit leaves burst - 1); refused elsewhere, the error naming
 * the largest burst that fits, which is exactly the boundary. */
static void test_range(void)
{
    static const uint64_t L[] = {1, UINT64_C(1) << 20, UINT64_C(1) << 40};
    char err[256], json[512];
    for (int sliding = 0; sliding < 2; sliding++)
        for (int w = 0; w < KM_WIN_COUNT; w++)
            for (int i = 0; i < 3; i++) {
                uint64_t lim = L[i];
                int want = fits(w, lim, sliding, lim);
                int rc = parse_limit(w, lim, sliding, lim, err, sizeof err);
                const char *mode = sliding ? "sliding" : "token_bucket";
                if (!want) {
                    const char *at = strstr(err, "the largest burst for this limit is ");
                    uint64_t x = at ? strtoull(at + 36, NULL, 10) : 0;
                    char e2[256];
                    int edge = x && fits(w, lim, sliding, x) && !fits(w, lim, sliding, x + 1) &&
                               parse_limit(w, lim, sliding, x, e2, sizeof e2) == KM_OK &&
                               parse_limit(w, lim, sliding, x + 1, e2, sizeof e2) == KM_ECONFIG;
                    ok(rc == KM_ECONFIG && strstr(err, "cannot be realised: burst") && edge,
                       "%s %s limit=burst=%llu: refused, naming the largest burst %llu, exactly the "
                       "edge (%s)", km_window_name(w), mode, (unsigned long long)lim,
                       (unsigned long long)x, err);
                    continue;
                }
                if (rc != KM_OK) {
                    ok(0, "%s %s limit=burst=%llu: accepted (%s)", km_window_name(w), mode,
                       (unsigned long long)lim, err);
                    continue;
                }
                limit_json(json, sizeof json, w, lim, sliding, lim);
                km_env *env = mkseg(json);
                km_key_info before = info(env, 0), after;
                km_lease l;
                int arc = acq(env, 0, km__window_is_requests(w) ? 0 : 1, &l);
                after = info(env, 0);
                if (arc == KM_OK)
                    rel(env, &l, KM_OUT_SUCCESS, -1);
                /* A token window holds the unit reserved until the release; a
                 * request window's charge drains in T, which may be a few ns. */
                uint64_t P = PERIOD_S[w] * NS, T = sliding ? P + 1 : (P + lim - 1) / lim;
                uint64_t av = after.limits[w].available;
                int exact = av == lim - 1 || (km__window_is_requests(w) && T < NS && av == lim);
                ok(before.limits[w].burst == lim && before.limits[w].available == lim &&
                       arc == KM_OK && exact,
                   "%s %s limit=burst=%llu: accepted; available %llu, after one unit %llu (%s)",
                   km_window_name(w), mode, (unsigned long long)lim,
                   (unsigned long long)before.limits[w].available,
                   (unsigned long long)after.limits[w].available, E(arc));
                rmseg(env);
            }
}

/* The case of issue 17 (finding 10): tpd {limit 20000, sliding, burst
 * 20000}.  T = 1 day + 1 ns: the whole burst at once, then the next token
 * one T after the first admission, exactly. */
static void test_sliding_day_burst(void)
{
    char json[512];
    limit_json(json, sizeof json, KM_WIN_TPD, 20000, 1, 20000);
    km_env *env = mkseg(json);
    km_lease l, l2;
    is_int(acq(env, 0, 20000, &l), KM_OK, "tpd 20000 sliding, burst 20000: 20000 tokens at once");
    rel(env, &l, KM_OUT_SUCCESS, -1);
    is_int(acq(env, 0, 1, &l2), KM_EAGAIN, "... then not one more");
    is_u64(l2.retry_at_ns, l.start_ns + 86400 * NS + 1, "... until start + T (1 day + 1 ns), exactly");
    rmseg(env);
}

/* Actual counts far above the estimate: each release adds up to 2^62 ns of
 * debt (the product saturates); four of them wrapped tat past 2^64 into the
 * past and opened the key.  A settle caps tat (src/gcra.h, KM__TAT_CAP). */
static void test_settle_no_wrap(void)
{
    char json[512];
    limit_json(json, sizeof json, KM_WIN_TPD, 53375, 1, 53375);
    km_env *env = mkseg(json);
    km_lease l[4], more;
    int got = 0;
    for (int i = 0; i < 4; i++)
        got += acq(env, 0, 1, &l[i]) == KM_OK;
    for (int i = 0; i < got; i++)
        rel(env, &l[i], KM_OUT_SUCCESS, UINT32_MAX);
    int rc = acq(env, 0, 1, &more);
    is_str(E(rc), "EAGAIN", "4 leases settled at 2^32 - 1 tokens each (tpd, T 1 day): the key stays closed");
    uint64_t tat = info(env, 0).limits[KM_WIN_TPD].tat_ns;
    ok(tat == UINT64_C(1) << 62, "... its tat capped at 2^62 ns (%llu)", (unsigned long long)tat);
    if (rc == KM_OK)
        rel(env, &more, KM_OUT_CANCELLED, 0);
    rmseg(env);
}

int main(void)
{
    fixtures_init("limits");

    plan(134);
    test_token_bucket_burst();
    test_cancel_refunds_tokens_not_request();
    test_tokens_and_all_or_none();
    test_settlement();
    test_refund_after_refill();
    test_retry_at();
    test_sliding();
    test_token_bucket_rate();
    test_windows();
    test_range();
    test_sliding_day_burst();
    test_settle_no_wrap();
    return exit_status();
}
