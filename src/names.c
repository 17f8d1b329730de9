/*
 * src/names.c - names: error strings and names, the names of strategies,
 * windows, key states and outcomes, the version, the public clock read and
 * secret masking.  Everything here is pure: no shared state.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

KM_EXTERN const char *km_version(void) { return KM_VERSION_STRING; }
KM_EXTERN int km_format_version(void) { return KM_FORMAT_VERSION; }
KM_EXTERN int km_version_number(void) { return KM_VERSION_NUMBER; }

KM_EXTERN size_t km_struct_size(int which)
{
    static const size_t size[KM_ST_COUNT] = {
        [KM_ST_REQUEST] = sizeof(km_request),
        [KM_ST_LEASE] = sizeof(km_lease),
        [KM_ST_OUTCOME] = sizeof(km_outcome),
        [KM_ST_HTTP_RESPONSE] = sizeof(km_http_response),
        [KM_ST_INFO] = sizeof(km_info),
        [KM_ST_LIMIT_INFO] = sizeof(km_limit_info),
        [KM_ST_POOL_INFO] = sizeof(km_pool_info),
        [KM_ST_KEY_INFO] = sizeof(km_key_info),
        [KM_ST_EPOCH_INFO] = sizeof(km_epoch_info),
        [KM_ST_READER_INFO] = sizeof(km_reader_info),
        [KM_ST_PROC_INFO] = sizeof(km_proc_info),
        [KM_ST_REAP_REPORT] = sizeof(km_reap_report),
        [KM_ST_USAGE_EVENT] = sizeof(km_usage_event),
        [KM_ST_USAGE_REPORT] = sizeof(km_usage_report),
        [KM_ST_WINDOW_STATS] = sizeof(km_window_stats),
        [KM_ST_STATS_COUNTERS] = sizeof(km_stats_counters),
        [KM_ST_KEY_STATS] = sizeof(km_key_stats),
        [KM_ST_POOL_STATS] = sizeof(km_pool_stats),
        [KM_ST_MODEL_STATS] = sizeof(km_model_stats),
        [KM_ST_SEGMENT_DESC] = sizeof(km_segment_desc),
    };
    return which > 0 && which < KM_ST_COUNT ? size[which] : 0;
}
_Static_assert(KM_VERSION_MINOR < 100 && KM_VERSION_PATCH < 100,
               "KM_VERSION_NUMBER holds MINOR and PATCH in two decimal digits each");

KM_EXTERN const char *km_strerror(int err)
{
    switch (err) {
    case KM_OK:
        return "success";
#define KM__ERR_MSG(name, val, msg) \
    case KM_##name:                 \
        return msg;
        KM_ERRNO_MAP(KM__ERR_MSG)
#undef KM__ERR_MSG
    default:
        return "unknown error";
    }
}

KM_EXTERN const char *km_err_name(int err)
{
    switch (err) {
    case KM_OK:
        return "OK";
#define KM__ERR_NAME(name, val, msg) \
    case KM_##name:                  \
        return #name;
        KM_ERRNO_MAP(KM__ERR_NAME)
#undef KM__ERR_NAME
    default:
        return "UNKNOWN";
    }
}

#define KM__NAME(arr, i) \
    (((i) >= 0 && (size_t)(i) < sizeof(arr) / sizeof((arr)[0]) && (arr)[i]) ? (arr)[i] : "unknown")

KM_EXTERN const char *km_strategy_name(int s)
{
    static const char *const n[] = {"default",  "round_robin", "least_busy",  "weighted",
                                    "latency", "cost",        "reliability", "fill_first"};
    _Static_assert(sizeof(n) / sizeof(n[0]) == KM_STRATEGY_COUNT, "a name per strategy");
    return KM__NAME(n, s);
}

KM_EXTERN const char *km_window_name(int w)
{
    static const char *const n[] = {"rpm", "rph", "rpd", "tpm", "tph", "tpd"};
    return KM__NAME(n, w);
}

KM_EXTERN const char *km_key_state_name(int st)
{
    static const char *const n[] = {"active", "cooling", "probing",
                                    "disabled", "invalid", "exhausted"};
    return KM__NAME(n, st);
}

KM_EXTERN const char *km_outcome_name(int k)
{
    static const char *const n[] = {"success", "rate_limited", "failure",
                                    "auth", "quota", "cancelled"};
    return KM__NAME(n, k);
}

KM_EXTERN uint64_t km_now_ns(void)
{
    /* CLOCK_MONOTONIC is served by the vDSO on Linux: no system call.  It is
     * one clock for every process of the host, so times stored in the
     * segment by one process mean the same to all. */
    return km__now();
}

/* "sk-proj-abc...wxyz" -> "sk-…wxyz": the prefix up to and including the
 * first '-' (at most 8 bytes, so the provider stays recognisable) and the
 * last 4 bytes.  Secrets of 12 bytes or fewer show only "…" and the last
 * 2 bytes, so that most of a short secret never leaves the segment. */
KM_EXTERN void km_mask_secret(const char *secret, char out[KM_MASKED_MAX])
{
    size_t n = secret ? strlen(secret) : 0;
    if (n == 0) {
        snprintf(out, KM_MASKED_MAX, "(none)");
        return;
    }
    if (n <= 12) {
        snprintf(out, KM_MASKED_MAX, "\xe2\x80\xa6%s", secret + (n > 2 ? n - 2 : n));
        return;
    }
    size_t pre = 0;
    const char *dash = memchr(secret, '-', n < 8 ? n : 8);
    if (dash)
        pre = (size_t)(dash - secret) + 1;
    snprintf(out, KM_MASKED_MAX, "%.*s\xe2\x80\xa6%s", (int)pre, secret, secret + n - 4);
}
