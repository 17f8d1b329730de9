/*
 * examples/quickstart.c - the KeyMesh C quick start.
 *
 * One worker's view of a shared key pool: attach to a segment created by
 * `kmctl create`, take a key for one request, use it, and report what the
 * provider said.  Every prefork worker does the same on the same segment;
 * KeyMesh keeps the limits for all of them together.
 *
 *   kmctl create mypool --config pool.json
 *   ./quickstart mypool openai
 *
 * Build against an installed KeyMesh:
 *   cc -o quickstart quickstart.c $(pkg-config --cflags --libs keymesh)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "keymesh.h"

/* Sleep until CLOCK_MONOTONIC reaches `at_ns`. */
static void sleep_until(uint64_t at_ns)
{
    struct timespec ts = {(time_t)(at_ns / 1000000000u),
                          (long)(at_ns % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

int main(int argc, char **argv)
{
    const char *seg = argc > 1 ? argv[1] : "keymesh";
    const char *pool_name = argc > 2 ? argv[2] : "openai";
    km_env *env;
    int rc;

    /* Attach once per process (after fork, in each worker). */
    rc = km_open(seg, &env);
    if (rc != KM_OK) {
        fprintf(stderr, "quickstart: km_open %s: %s (%s)\n", seg,
                km_strerror(rc), km_err_name(rc));
        return 1;
    }
    int pool = km_pool_find(env, pool_name);
    if (pool < 0) {
        fprintf(stderr, "quickstart: pool %s: %s\n", pool_name, km_strerror(pool));
        km_close(env);
        return 1;
    }

    /* The token estimate is charged to tpm/tph/tpd limits now and settled
     * with the actual count at release. */
    km_request req = {.pool = pool, .strategy = KM_STRATEGY_DEFAULT, .tokens = 800};
    km_lease lease;

    for (int attempt = 0;; attempt++) {
        rc = km_acquire(env, &req, &lease);
        if (rc == KM_OK)
            break;
        if (rc == KM_EAGAIN && attempt < 5) {
            /* Every key is at a limit or cooling down: the lease says when
             * one may be admissible again.  Wait (bounded) and retry. */
            uint64_t now = km_now_ns(), cap = now + 2000000000u; /* 2 s */
            sleep_until(lease.retry_at_ns < cap ? lease.retry_at_ns : cap);
            continue;
        }
        /* KM_EUNAVAIL: every key disabled, invalid or exhausted; KM_ECOST:
         * the estimate exceeds a token limit's burst on every key. */
        fprintf(stderr, "quickstart: km_acquire: %s (%s)\n", km_strerror(rc),
                km_err_name(rc));
        km_close(env);
        return 1;
    }

    /* lease.secret is the key to put in the Authorization header.  Never log
     * it: print the key id. */
    printf("acquired key %s (index %d)\n", lease.key_id, lease.key);

    /* ... send the HTTP request with lease.secret, using any client ... */
    int http_status = 200;
    int64_t in_tokens = 512, out_tokens = 222; /* the response's usage field */

    km_outcome out = {.kind = KM_OUT_SUCCESS,
                      .latency_us = -1, /* < 0: measured from lease.start_ns */
                      .tokens = in_tokens + out_tokens,
                      .retry_after_s = 0,
                      .input_tokens = in_tokens,   /* for spend; < 0: unknown */
                      .output_tokens = out_tokens};
    /* The switch below maps the status by hand.  km_outcome_from_http() does
     * it from the status, the provider's error code and its rate-limit
     * headers (OpenAI, Anthropic, Gemini, Retry-After), and fills the
     * provider's view of the key's limits too. */
    switch (http_status) {
    case 200:
        break;
    case 429: /* rate limited: cool this key down */
        out.kind = KM_OUT_RATE_LIMITED;
        out.retry_after_s = 1.0; /* the Retry-After header; <= 0: cooldown_s,
                                    doubling per consecutive 429 */
        break;
    case 401:
    case 403: /* key revoked or wrong: invalid until `kmctl enable` */
        out.kind = KM_OUT_AUTH;
        break;
    case 402: /* payment required / insufficient quota: exhausted */
        out.kind = KM_OUT_QUOTA;
        break;
    default: /* 5xx, timeout, connection error: transient failure */
        out.kind = KM_OUT_FAILURE;
        /* Usage unknown: keep the estimate (< 0). */
        out.tokens = out.input_tokens = out.output_tokens = -1;
        break;
    }
    /* If the request was never sent, release with KM_OUT_CANCELLED (or a
     * NULL outcome): no tokens are charged. */

    rc = km_release(env, &lease, &out);
    if (rc != KM_OK)
        fprintf(stderr, "quickstart: km_release: %s\n", km_strerror(rc));
    printf("released key %s: %s\n", lease.key_id, km_outcome_name(out.kind));

    km_close(env);
    return rc == KM_OK ? 0 : 1;
}
