/*
 * t_view.c - the provider's rate-limit view at release tightens a key's
 * windows to what the provider says remains, and never loosens them.
 */
#include "testlib.h"

int main(void)
{
    km_lease l;
    km_request rq = {.pool = 0, .tokens = 100};

    plan(11);
    fixtures_init("view");
    km_env *e = mkseg("{\"pools\":[{\"name\":\"p\",\"limits\":{\"rpm\":60,\"tpm\":60000},"
                      "\"keys\":[{\"id\":\"a\",\"secret\":\"sk-test-view0001\"}]}]}");
    int key = key_of(e, pool_of(e, "p"), 0);

    /* Provider says: 5 requests and 1000 tokens remain. */
    is_int(km_acquire(e, &rq, &l), KM_OK, "acquire");
    km_outcome o = {.kind = KM_OUT_SUCCESS, .latency_us = 1000, .tokens = 100,
                    .view_flags = KM_VIEW_REQUESTS | KM_VIEW_TOKENS,
                    .requests_remaining = 5, .tokens_remaining = 1000};
    uint64_t t0 = km_now_ns();
    is_int(km_release(e, &l, &o), KM_OK, "release with a view");
    km_key_info ki = info(e, key);
    /* What the windows refilled between the release and the read: rpm 60
     * gives one request a second, tpm 60000 one token a millisecond (a few
     * under qemu, none natively). */
    uint64_t ms = (km_now_ns() - t0) / MS;
    cmp_u64(ki.limits[KM_WIN_RPM].available, "<=", 5 + ms / 1000,
            "rpm available tightened to remaining (%llu ms later)", (unsigned long long)ms);
    cmp_u64(ki.limits[KM_WIN_TPM].available, "<=", 1000 + ms,
            "tpm available tightened to remaining (%llu ms later)", (unsigned long long)ms);
    cmp_u64(ki.limits[KM_WIN_RPM].available, ">=", 4, "rpm not tightened beyond remaining");

    /* A view looser than the configured limit changes nothing. */
    uint64_t tat_before = ki.limits[KM_WIN_RPM].tat_ns;
    is_int(km_acquire(e, &rq, &l), KM_OK, "acquire again");
    uint64_t tat_after_acq = info(e, key).limits[KM_WIN_RPM].tat_ns;
    o.requests_remaining = 1000000;
    o.tokens_remaining = 100000000;
    o.requests_reset_ms = 0;
    km_release(e, &l, &o);
    ki = info(e, key);
    is_u64(ki.limits[KM_WIN_RPM].tat_ns, tat_after_acq, "a loose view leaves tat alone");
    cmp_u64(tat_after_acq, ">", tat_before, "the acquire itself advanced tat");

    /* Reset time: the window is not full again before the provider's reset. */
    is_int(km_acquire(e, &rq, &l), KM_OK, "acquire for reset");
    o = (km_outcome){.kind = KM_OUT_RATE_LIMITED, .latency_us = 10, .tokens = 0,
                     .retry_after_s = 0.001, .view_flags = KM_VIEW_REQUESTS,
                     .requests_remaining = 0, .requests_reset_ms = 30000};
    km_release(e, &l, &o);
    ki = info(e, key);
    uint64_t now = km_now_ns();
    cmp_u64(ki.limits[KM_WIN_RPM].tat_ns, ">=", now + 29 * 1000000000ull,
            "rpm window not replenished before the provider's reset (30 s)");
    is_u64(ki.limits[KM_WIN_RPM].available, 0, "0 requests remaining: none available");
    diag("rpm tat - now = %.3f s, available %llu", (double)(ki.limits[KM_WIN_RPM].tat_ns - now) / 1e9,
         (unsigned long long)ki.limits[KM_WIN_RPM].available);
    rmseg(e);
    return exit_status();
}
