/*
 * tests/t_strategy.c - how acquire picks a key (single process).
 *
 *   round_robin  4 equal keys, 4000 acquire+release: exactly 1000 each
 *                (one process, no limits: tolerance 0).
 *   weighted     weights 1,2,3,4, 20000 ops: each key's share within +-2
 *                percentage points of weight/10.
 *   least_busy   the chosen key has the fewest leases in flight.
 *   disabled     never handed out, whatever the strategy.
 *   A request's strategy overrides the pool's.
 */
#include <math.h>
#include <string.h>

#include "testlib.h"

/* Sanitizer builds run the same counts: the checks are statistical and
 * 20000 acquires are cheap even under ASan. */
#define N_RR 4000
#define N_WEIGHTED 20000

static const char *CFG =
    "{\"capacity\": {\"keys\": 24, \"processes\": 4, \"pools\": 6, \"inflight_per_key\": 16},"
    " \"pools\": ["
    "  {\"name\": \"rr\", \"strategy\": \"round_robin\", \"keys\": ["
    "    {\"id\": \"r0\", \"secret\": \"sk-test-r000\"}, {\"id\": \"r1\", \"secret\": \"sk-test-r111\"},"
    "    {\"id\": \"r2\", \"secret\": \"sk-test-r222\"}, {\"id\": \"r3\", \"secret\": \"sk-test-r333\"}]},"
    "  {\"name\": \"w\", \"strategy\": \"weighted\", \"keys\": ["
    "    {\"id\": \"w1\", \"secret\": \"sk-test-w111\", \"weight\": 1},"
    "    {\"id\": \"w2\", \"secret\": \"sk-test-w222\", \"weight\": 2},"
    "    {\"id\": \"w3\", \"secret\": \"sk-test-w333\", \"weight\": 3},"
    "    {\"id\": \"w4\", \"secret\": \"sk-test-w444\", \"weight\": 4}]},"
    "  {\"name\": \"lb\", \"strategy\": \"least_busy\", \"keys\": ["
    "    {\"id\": \"l0\", \"secret\": \"sk-test-l000\"}, {\"id\": \"l1\", \"secret\": \"sk-test-l111\"},"
    "    {\"id\": \"l2\", \"secret\": \"sk-test-l222\"}, {\"id\": \"l3\", \"secret\": \"sk-test-l333\"}]},"
    "  {\"name\": \"d\", \"strategy\": \"round_robin\", \"keys\": ["
    "    {\"id\": \"d0\", \"secret\": \"sk-test-d000\"}, {\"id\": \"d1\", \"secret\": \"sk-test-d111\"},"
    "    {\"id\": \"d2\", \"secret\": \"sk-test-d222\"}, {\"id\": \"d3\", \"secret\": \"sk-test-d333\"}]},"
    "  {\"name\": \"cap\", \"strategy\": \"round_robin\", \"keys\": ["
    "    {\"id\": \"c0\", \"secret\": \"sk-test-c000\", \"max_inflight\": 2},"
    "    {\"id\": \"c1\", \"secret\": \"sk-test-c111\", \"max_inflight\": 2}]}"
    " ]}";

/* Member index (0..n-1) of key index `key` in `pool`, or -1. */
static int member_of(km_env *env, int pool, int key)
{
    for (int i = 0; i < 64; i++) {
        int k = km_pool_key(env, pool, i);
        if (k < 0)
            return -1;
        if (k == key)
            return i;
    }
    return -1;
}

static int acq(km_env *env, int pool, int strategy, km_lease *l)
{
    return acquire_with(env, pool, strategy, 0, l);
}

static int rel(km_env *env, const km_lease *l)
{
    return release_with(env, l, KM_OUT_SUCCESS, 100, -1, 0);
}

/* n acquire+release on `pool` with `strategy`; per-member counts in cnt[4].
 * Returns the number of failed acquires or releases. */
static int spin(km_env *env, int pool, int strategy, int n, uint64_t cnt[4])
{
    km_lease l;
    int bad = 0;

    memset(cnt, 0, 4 * sizeof cnt[0]);
    for (int i = 0; i < n; i++) {
        if (acq(env, pool, strategy, &l) != KM_OK) {
            bad++;
            continue;
        }
        int m = member_of(env, pool, l.key);
        if (m >= 0 && m < 4)
            cnt[m]++;
        else
            bad++;
        bad += rel(env, &l) != KM_OK;
    }
    return bad;
}

static void test_round_robin(km_env *env)
{
    int rr = pool_of(env, "rr"), w = pool_of(env, "w");
    uint64_t cnt[4];

    is_int(spin(env, rr, KM_STRATEGY_DEFAULT, N_RR, cnt), 0, "round_robin: every acquire/release succeeds");
    for (int i = 0; i < 4; i++)
        is_u64(cnt[i], N_RR / 4, "round_robin over 4 keys, %d ops: key %d gets exactly %d (tolerance 0)",
               N_RR, i, N_RR / 4);
    spin(env, w, KM_STRATEGY_ROUND_ROBIN, N_RR, cnt);
    for (int i = 0; i < 4; i++)
        is_u64(cnt[i], N_RR / 4, "request strategy round_robin on the weighted pool: key %d gets exactly %d",
               i, N_RR / 4);
}

static void test_weighted(km_env *env)
{
    int w = pool_of(env, "w"), rr = pool_of(env, "rr");
    uint64_t cnt[4];
    km_key_info ki;

    for (int i = 0; i < 4; i++) {
        km_key_info_get(env, (uint32_t)km_pool_key(env, w, (uint32_t)i), &ki);
        is_int(ki.weight, i + 1, "key %d weight %d", i, i + 1);
    }
    is_int(spin(env, w, KM_STRATEGY_DEFAULT, N_WEIGHTED, cnt), 0, "weighted: every acquire/release succeeds");
    for (int i = 0; i < 4; i++) {
        double share = 100.0 * (double)cnt[i] / N_WEIGHTED, want = 10.0 * (i + 1);
        ok(fabs(share - want) <= 2.0,
           "weighted 1:2:3:4, %d ops: key %d share %.2f%% within +-2 percentage points of %.0f%%",
           N_WEIGHTED, i, share, want);
    }
    spin(env, rr, KM_STRATEGY_WEIGHTED, N_WEIGHTED, cnt);
    for (int i = 0; i < 4; i++) {
        double share = 100.0 * (double)cnt[i] / N_WEIGHTED;
        ok(fabs(share - 25.0) <= 2.0,
           "request strategy weighted on equal weights: key %d share %.2f%% within +-2 points of 25%%", i, share);
    }
}

static void test_least_busy(km_env *env)
{
    int lb = pool_of(env, "lb");
    km_lease held[8];
    int load[4] = {0, 0, 0, 0}, not_min = 0, n = 0, m, rc;
    km_key_info ki;

    for (int i = 0; i < 8; i++) {
        if (acq(env, lb, KM_STRATEGY_DEFAULT, &held[i]) != KM_OK)
            bail_out("least_busy acquire %d failed", i);
        m = member_of(env, lb, held[i].key);
        int min = load[0];
        for (int j = 1; j < 4; j++)
            min = load[j] < min ? load[j] : min;
        if (m < 0 || load[m] != min) {
            diag("acquire %d chose member %d with %d in flight; minimum %d", i, m, m >= 0 ? load[m] : -1, min);
            not_min++;
        }
        if (m >= 0)
            load[m]++;
        n++;
    }
    is_int(not_min, 0, "least_busy: each of 8 acquires picks a key with the fewest in flight");
    for (int j = 0; j < 4; j++) {
        km_key_info_get(env, (uint32_t)km_pool_key(env, lb, (uint32_t)j), &ki);
        is_int(ki.inflight, load[j], "key %d inflight as held", j);
    }
    /* Free both leases on member 2: it alone has 0 in flight. */
    for (int i = 0; i < 8; i++)
        if (member_of(env, lb, held[i].key) == 2) {
            rel(env, &held[i]);
            held[i].key = -1; /* not held */
        }
    km_lease c, t[3];
    rc = acq(env, lb, KM_STRATEGY_DEFAULT, &c);
    is_int(rc == KM_OK ? member_of(env, lb, c.key) : -100 + rc, 2,
           "loads 2,2,0,2: least_busy picks member 2 (held)");
    /* Free one on member 0 and one on member 3: loads 1,2,1,1. */
    int freed0 = 0, freed3 = 0;
    for (int i = 0; i < 8; i++) {
        if (held[i].key < 0)
            continue;
        m = member_of(env, lb, held[i].key);
        if ((m == 0 && !freed0) || (m == 3 && !freed3)) {
            rel(env, &held[i]);
            held[i].key = -1; /* not held */
            freed0 |= m == 0;
            freed3 |= m == 3;
        }
    }
    /* The next three must go to members 0, 2 and 3, one each. */
    int mask = 0;
    for (int i = 0; i < 3; i++) {
        acq(env, lb, KM_STRATEGY_DEFAULT, &t[i]);
        m = member_of(env, lb, t[i].key);
        mask |= m >= 0 ? 1 << m : 0x100;
    }
    is_int(mask, 0xd, "loads 1,2,1,1: the next three go to members 0, 2, 3 (bit mask 0xd = 13)");
    for (int i = 0; i < 3; i++)
        rel(env, &t[i]);
    if (rc == KM_OK)
        rel(env, &c);
    for (int i = 0; i < 8; i++)
        if (held[i].key >= 0)
            rel(env, &held[i]);
}

static void test_disabled(km_env *env)
{
    int d = pool_of(env, "d");
    int k1 = km_pool_key(env, d, 1);
    uint64_t cnt[4];
    km_key_info ki;
    static const int strategies[] = {KM_STRATEGY_ROUND_ROBIN, KM_STRATEGY_WEIGHTED, KM_STRATEGY_LEAST_BUSY};

    is_int(km_key_set_state(env, k1, KM_KEY_DISABLED), KM_OK, "disable member 1");
    km_key_info_get(env, k1, &ki);
    is_str(km_key_state_name(ki.state), "disabled", "state disabled");
    for (size_t s = 0; s < 3; s++) {
        int bad = spin(env, d, strategies[s], 1000, cnt);
        is_int(bad, 0, "%s with a disabled key: 1000 acquires succeed", km_strategy_name(strategies[s]));
        is_u64(cnt[1], 0, "%s: disabled key never handed out", km_strategy_name(strategies[s]));
    }
    /* least_busy: the disabled key has the fewest in flight; still skipped. */
    {
        km_lease h[3];
        int on_disabled = 0;
        for (int i = 0; i < 3; i++) {
            acq(env, d, KM_STRATEGY_LEAST_BUSY, &h[i]);
            on_disabled += h[i].key == k1;
        }
        is_int(on_disabled, 0, "least_busy skips the idle disabled key while others are busy");
        for (int i = 0; i < 3; i++)
            rel(env, &h[i]);
    }
    is_int(km_key_set_state(env, k1, KM_KEY_ACTIVE), KM_OK, "enable member 1");
    spin(env, d, KM_STRATEGY_ROUND_ROBIN, 400, cnt);
    is_u64(cnt[1], 100, "re-enabled: round_robin gives it exactly 100 of 400");
}

static void test_capacity_and_args(km_env *env)
{
    int cap = pool_of(env, "cap"), rr = pool_of(env, "rr"), n = 0, rc;
    km_lease h[5], l;
    km_key_info ki;
    km_pool_info pi;

    km_key_info_get(env, (uint32_t)km_pool_key(env, cap, 0), &ki);
    is_int(ki.max_inflight, 2, "key max_inflight 2");
    for (int i = 0; i < 5; i++) {
        rc = acq(env, cap, KM_STRATEGY_DEFAULT, &h[n]);
        if (rc == KM_OK)
            n++;
        else
            break;
    }
    is_int(n, 4, "2 keys x max_inflight 2: 4 leases");
    is_str(km_err_name(rc), "EAGAIN", "5th acquire -> EAGAIN (all keys at in-flight capacity)");
    for (int i = 0; i < n; i++)
        rel(env, &h[i]);
    is_str(km_err_name(acq(env, cap, KM_STRATEGY_DEFAULT, &l)), "OK", "a slot is free again");
    rel(env, &l);

    is_str(km_err_name(km_pool_find(env, "nope")), "ENOPOOL", "km_pool_find of a missing pool -> ENOPOOL");
    is_str(km_err_name(acq(env, 99, KM_STRATEGY_DEFAULT, &l)), "ENOPOOL", "acquire on pool 99 -> ENOPOOL");
    rc = acq(env, -1, KM_STRATEGY_DEFAULT, &l);
    ok(rc == KM_ENOPOOL || rc == KM_EINVAL, "acquire on pool -1 -> ENOPOOL or EINVAL (got %s)", km_err_name(rc));
    is_str(km_err_name(acq(env, rr, 99, &l)), "EINVAL", "acquire with strategy 99 -> EINVAL");
    is_str(km_err_name(km_pool_key(env, rr, 4)), "ENOKEY", "km_pool_key past the end -> ENOKEY");
    is_int(km_key_find(env, rr, "r2"), km_pool_key(env, rr, 2), "km_key_find(r2) == member 2");
    is_str(km_err_name(km_key_find(env, rr, "zz")), "ENOKEY", "km_key_find of a missing id -> ENOKEY");
    is_int(km_pool_info_get(env, rr, &pi), KM_OK, "km_pool_info_get");
    is_str(km_strategy_name(pi.strategy), "round_robin", "pool rr strategy");
    is_int(pi.n_keys, 4, "pool rr has 4 keys");
    km_pool_info_get(env, pool_of(env, "w"), &pi);
    is_str(km_strategy_name(pi.strategy), "weighted", "pool w strategy");
    km_pool_info_get(env, pool_of(env, "lb"), &pi);
    is_str(km_strategy_name(pi.strategy), "least_busy", "pool lb strategy");
}

/* Lease slots found through the in-flight flags, eight per word: 77 slots
 * (a partial last word), every one handed out once, in-flight exact at each
 * step, a freed slot found again wherever it is. */
static void test_slot_scan(void)
{
    km_env *env = mkseg("{\"capacity\": {\"keys\": 2, \"inflight_per_key\": 200, \"usage_events\": 0},"
                        " \"pools\": [{\"name\": \"s\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-s-12345678\","
                        " \"max_inflight\": 77}]}]}");
    static km_lease h[77];
    uint8_t seen[77] = {0};
    km_key_info ki;
    int bad = 0, dup = 0;
    for (int i = 0; i < 77; i++) {
        if (acq(env, 0, KM_STRATEGY_DEFAULT, &h[i]) != KM_OK || h[i].slot >= 77) {
            bad++;
            continue;
        }
        dup += seen[h[i].slot]++ != 0;
        km_key_info_get(env, 0, &ki);
        bad += ki.inflight != (uint32_t)i + 1;
    }
    ok(bad == 0 && dup == 0, "77 leases on 77 slots, each slot once, in-flight exact at each step (%d bad, %d twice)",
       bad, dup);
    km_lease l;
    is_str(km_err_name(acq(env, 0, KM_STRATEGY_DEFAULT, &l)), "EAGAIN", "the 78th -> EAGAIN");
    const int probe[] = {40, 76, 0, 63, 64};
    int found = 0;
    for (int j = 0; j < 5; j++) {
        int i = 0;
        while (h[i].slot != probe[j])
            i++;
        rel(env, &h[i]);
        km_key_info_get(env, 0, &ki);
        if (ki.inflight == 76 && acq(env, 0, KM_STRATEGY_DEFAULT, &h[i]) == KM_OK && h[i].slot == probe[j])
            found++;
    }
    is_int(found, 5, "slots 40, 76, 0, 63, 64 freed one at a time are found again");
    for (int i = 0; i < 77; i++)
        rel(env, &h[i]);
    km_key_info_get(env, 0, &ki);
    is_int((int)ki.inflight, 0, "all released: in-flight 0");
    rmseg(env);
}

int main(void)
{
    km_env *env;

    fixtures_init("strategy");

    plan(60);
    env = mkseg(CFG);
    test_round_robin(env);
    test_weighted(env);
    test_least_busy(env);
    test_disabled(env);
    test_capacity_and_args(env);
    rmseg(env);
    test_slot_scan();
    return exit_status();
}
