/*
 * tests/t_provider.c - km_outcome_from_http(): status and error code to
 * outcome kind, Retry-After, and the provider's rate-limit view.
 *
 * One table, one row per provider answer.  Every row is checked the same
 * way: return code, kind, retry_after_s (within 1e-6), view_flags, the four
 * view values, and that latency_us/tokens are left as the caller set them.
 * The outcome is filled with 0xA5 bytes before each call, so a field the
 * function forgets to set shows up as garbage.
 *
 * Header samples follow the shapes the providers document: OpenAI's example
 * rate-limit headers, OpenAI/Anthropic/Gemini error bodies, Anthropic's
 * anthropic-ratelimit-* headers with RFC 3339 times.  Rows with a fixed
 * now_unix_ms are exact; the few that read the real clock come after the
 * table.
 *
 * Then the view applied by km_release() to a key with no limit configured:
 * "none remains" with a reset (OpenAI's x-ratelimit-remaining-requests: 0,
 * x-ratelimit-reset-requests: 2s) keeps the key from being handed out until
 * the reset (KM_EAGAIN, retry_at_ns at the reset), and it is handed out
 * after; a count above 0 changes nothing.
 */
#include <math.h>
#include <time.h>

#include "keymesh.h"
#include "testlib.h"

#define NOW_2024 INT64_C(1717243200000) /* 2024-06-01T12:00:00Z */
#define NOW_2015 INT64_C(1445412420000) /* 2015-10-21T07:27:00Z */
#define NOW_1994 INT64_C(784111747000)  /* 1994-11-06T08:49:07Z */
#define RQ KM_VIEW_REQUESTS
#define TK KM_VIEW_TOKENS
#define DAY 86400.0
#define U64MAX UINT64_C(18446744073709551615)

/* Bodies, as the providers send them. */
#define OAI_RATE_LIMIT                                                         \
    "{\"error\":{\"message\":\"Rate limit reached for gpt-4o in organization " \
    "org-xxxx on requests per min (RPM): Limit 3, Used 3, Requested 1. "       \
    "Please try again in 20s.\",\"type\":\"requests\",\"param\":null,"         \
    "\"code\":\"rate_limit_exceeded\"}}"
#define OAI_QUOTA                                                              \
    "{\"error\":{\"message\":\"You exceeded your current quota, please check " \
    "your plan and billing details.\",\"type\":\"insufficient_quota\","        \
    "\"param\":null,\"code\":\"insufficient_quota\"}}"
#define OAI_BAD_KEY                                                            \
    "{\"error\":{\"message\":\"Incorrect API key provided: sk-abc***xyz.\","   \
    "\"type\":\"invalid_request_error\",\"param\":null,"                       \
    "\"code\":\"invalid_api_key\"}}"
#define OAI_CONTEXT                                                            \
    "{\"error\":{\"message\":\"This model's maximum context length is 128000 " \
    "tokens.\",\"type\":\"invalid_request_error\",\"param\":\"messages\","     \
    "\"code\":\"context_length_exceeded\"}}"
#define ANT_RATE_LIMIT                                                         \
    "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\","            \
    "\"message\":\"Number of request tokens has exceeded your per-minute "     \
    "rate limit; see the response headers for current usage.\"}}"
#define ANT_OVERLOADED                                                         \
    "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","            \
    "\"message\":\"Overloaded\"}}"
#define ANT_AUTH                                                               \
    "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","        \
    "\"message\":\"invalid x-api-key\"}}"
#define ANT_PERMISSION                                                         \
    "{\"type\":\"error\",\"error\":{\"type\":\"permission_error\","            \
    "\"message\":\"Your API key does not have permission to use the "          \
    "specified resource.\"}}"
#define GEM_EXHAUSTED                                                          \
    "{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted "      \
    "(e.g. check quota).\",\"status\":\"RESOURCE_EXHAUSTED\"}}"
#define GEM_KEY_INVALID                                                        \
    "{\"error\":{\"code\":400,\"message\":\"API key not valid. Please pass a " \
    "valid API key.\",\"status\":\"INVALID_ARGUMENT\",\"details\":[{\"@type\":"   \
    "\"type.googleapis.com/google.rpc.ErrorInfo\",\"reason\":\"API_KEY_INVALID\"," \
    "\"domain\":\"googleapis.com\"}]}}"
#define GEM_BAD_REQUEST                                                        \
    "{\"error\":{\"code\":400,\"message\":\"Invalid JSON payload.\","          \
    "\"status\":\"INVALID_ARGUMENT\"}}"
#define GEM_DENIED                                                             \
    "{\"error\":{\"code\":403,\"message\":\"Method doesn't allow unregistered " \
    "callers.\",\"status\":\"PERMISSION_DENIED\"}}"

/* OpenAI rate-limit headers with a given requests reset (duration tests). */
#define OAI_RESET(d) {"x-ratelimit-remaining-requests", "7", "x-ratelimit-reset-requests", d, NULL}
/* Anthropic requests headers with a given reset (RFC 3339 tests). */
#define ANT_RESET(t) {"anthropic-ratelimit-requests-remaining", "3", "anthropic-ratelimit-requests-reset", t, NULL}

#define MAXH 16

typedef struct row {
    const char *name;
    int status;
    const char *code;          /* error_code, or NULL */
    const char *body;          /* or NULL */
    long body_len;             /* 0: strlen(body) */
    const char *hdr[2 * MAXH + 1]; /* name, value, ..., NULL (values may be NULL) */
    int64_t now_ms;
    /* expected */
    int kind;
    double retry;
    unsigned flags;
    uint64_t req_rem, req_reset, tok_rem, tok_reset;
} row;

static const row rows[] = {
    /* ---- OpenAI */
    {"openai 200 documented example headers", 200, NULL, NULL, 0,
     {"x-ratelimit-limit-requests", "60", "x-ratelimit-limit-tokens", "150000",
      "x-ratelimit-remaining-requests", "59", "x-ratelimit-remaining-tokens", "149984",
      "x-ratelimit-reset-requests", "1s", "x-ratelimit-reset-tokens", "6m0s", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, RQ | TK, 59, 1000, 149984, 360000},
    {"openai 429 rate_limit_exceeded", 429, NULL, OAI_RATE_LIMIT, 0,
     {"retry-after", "20", "x-ratelimit-limit-requests", "3",
      "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "19.898s",
      "x-ratelimit-remaining-tokens", "39000", "x-ratelimit-reset-tokens", "2m59.56s", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 20, RQ | TK, 0, 19898, 39000, 179560},
    {"openai 429 insufficient_quota", 429, NULL, OAI_QUOTA, 0, {NULL},
     NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"openai 429 code null, type insufficient_quota", 429, NULL,
     "{\"error\":{\"message\":\"quota\",\"type\":\"insufficient_quota\",\"code\":null}}", 0,
     {NULL}, NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"openai 401 invalid_api_key", 401, NULL, OAI_BAD_KEY, 0, {NULL},
     NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},
    {"openai 403 unsupported_country_region_territory", 403, NULL,
     "{\"error\":{\"code\":\"unsupported_country_region_territory\",\"message\":"
     "\"Country, region, or territory not supported\",\"param\":null,\"type\":"
     "\"request_forbidden\"}}", 0,
     {NULL}, NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},
    {"403 insufficient_quota", 403, NULL, OAI_QUOTA, 0, {NULL},
     NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"403 billing_not_active (caller code)", 403, "billing_not_active", NULL, 0, {NULL},
     NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"429 billing_hard_limit_reached", 429, NULL,
     "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"billing_hard_limit_reached\"}}", 0,
     {NULL}, NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"openai 400 context_length_exceeded: key fine", 400, NULL, OAI_CONTEXT, 0,
     {"x-ratelimit-remaining-requests", "58", "x-ratelimit-reset-requests", "2s", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 58, 2000, 0, 0},
    {"404 model_not_found: key fine", 404, "model_not_found", NULL, 0, {NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"413 request too large: key fine", 413, NULL, "<html>413</html>", 0, {NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"422 unprocessable: key fine", 422, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},

    /* ---- Anthropic */
    {"anthropic 429 rate_limit_error", 429, NULL, ANT_RATE_LIMIT, 0,
     {"retry-after", "30", "anthropic-ratelimit-requests-limit", "50",
      "anthropic-ratelimit-requests-remaining", "0",
      "anthropic-ratelimit-requests-reset", "2024-06-01T12:00:30Z",
      "anthropic-ratelimit-tokens-limit", "40000",
      "anthropic-ratelimit-tokens-remaining", "0",
      "anthropic-ratelimit-tokens-reset", "2024-06-01T12:00:30Z",
      "request-id", "req_018EeWyXxfu5pfWkrYcMdjWG", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 30, RQ | TK, 0, 30000, 0, 30000},
    {"anthropic 200: input-tokens used when tokens-* absent", 200, NULL, NULL, 0,
     {"anthropic-ratelimit-requests-remaining", "49",
      "anthropic-ratelimit-requests-reset", "2024-06-01T14:00:01.25+02:00",
      "anthropic-ratelimit-input-tokens-remaining", "39000",
      "anthropic-ratelimit-input-tokens-reset", "2024-06-01T12:00:06Z",
      "anthropic-ratelimit-output-tokens-remaining", "8000", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, RQ | TK, 49, 1250, 39000, 6000},
    {"anthropic: tokens-* preferred to input-tokens-*", 200, NULL, NULL, 0,
     {"anthropic-ratelimit-input-tokens-remaining", "5",
      "anthropic-ratelimit-input-tokens-reset", "2024-06-01T12:00:50Z",
      "anthropic-ratelimit-tokens-remaining", "1000",
      "anthropic-ratelimit-tokens-reset", "2024-06-01T12:00:10Z", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, TK, 0, 0, 1000, 10000},
    {"anthropic 529 overloaded_error", 529, NULL, ANT_OVERLOADED, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"overloaded_error mid-stream after a 200 (caller code)", 200, "overloaded_error", NULL, 0,
     {NULL}, NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"overloaded_error body under a 4xx", 400, NULL, ANT_OVERLOADED, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"anthropic 401 authentication_error", 401, NULL, ANT_AUTH, 0, {NULL},
     NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},
    {"anthropic 403 permission_error", 403, NULL, ANT_PERMISSION, 0, {NULL},
     NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},

    /* ---- Gemini */
    {"gemini 429 RESOURCE_EXHAUSTED", 429, NULL, GEM_EXHAUSTED, 0, {NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"gemini 403 PERMISSION_DENIED", 403, NULL, GEM_DENIED, 0, {NULL},
     NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},
    {"gemini 400 API_KEY_INVALID in details: the key is invalid", 400, NULL, GEM_KEY_INVALID, 0,
     {NULL}, NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},
    {"gemini 400 INVALID_ARGUMENT without that reason: the request was bad", 400, NULL,
     GEM_BAD_REQUEST, 0, {NULL}, NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"array-wrapped error body is unwrapped", 429, NULL,
     "[{\"error\":{\"code\":\"insufficient_quota\"}}]", 0, {NULL},
     NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},

    /* ---- error code sources and broken bodies */
    {"caller error_code wins over the body", 429, "insufficient_quota", OAI_RATE_LIMIT, 0,
     {NULL}, NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"caller rate_limit_exceeded wins over a quota body", 429, "rate_limit_exceeded",
     OAI_QUOTA, 0, {NULL}, NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"truncated JSON body: no code", 429, NULL,
     "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":\"insufficient_quota\",\"code\":\"insuffic",
     0, {NULL}, NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"body_len cuts a quota body: no code", 429, NULL, OAI_QUOTA, 40, {NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"HTML body: no code", 429, NULL, "<html><body>Too Many Requests</body></html>", 0,
     {NULL}, NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"error as a string, not an object: no code", 429, NULL,
     "{\"error\":\"insufficient_quota\"}", 0, {NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"empty caller code falls through to status", 403, "", NULL, 0, {NULL},
     NOW_2024, KM_OUT_AUTH, 0, 0, 0, 0, 0, 0},

    /* ---- statuses */
    {"402 payment required", 402, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_QUOTA, 0, 0, 0, 0, 0, 0},
    {"408 request timeout", 408, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"500", 500, NULL, "{\"error\":{\"code\":\"insufficient_quota\"}}", 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"502", 502, NULL, NULL, 0, {NULL}, NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"503 with retry-after: set anyway", 503, NULL, NULL, 0, {"retry-after", "120", NULL},
     NOW_2024, KM_OUT_FAILURE, 120, 0, 0, 0, 0, 0},
    {"504", 504, NULL, NULL, 0, {NULL}, NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"529 without a body", 529, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"status 0: no response", 0, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"status -1: network error", -1, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},
    {"204 no content", 204, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"status 700: not HTTP", 700, NULL, NULL, 0, {NULL},
     NOW_2024, KM_OUT_FAILURE, 0, 0, 0, 0, 0, 0},

    /* ---- Retry-After */
    {"retry-after IMF-fixdate", 429, NULL, NULL, 0,
     {"retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 60, 0, 0, 0, 0, 0},
    {"retry-after RFC 850 date", 429, NULL, NULL, 0,
     {"retry-after", "Wednesday, 21-Oct-15 07:28:00 GMT", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 60, 0, 0, 0, 0, 0},
    {"retry-after asctime date", 429, NULL, NULL, 0,
     {"retry-after", "Wed Oct 21 07:28:00 2015", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 60, 0, 0, 0, 0, 0},
    {"retry-after asctime, one-digit day", 429, NULL, NULL, 0,
     {"retry-after", "Sun Nov  6 08:49:37 1994", NULL},
     NOW_1994, KM_OUT_RATE_LIMITED, 30, 0, 0, 0, 0, 0},
    {"retry-after date, now has milliseconds", 429, NULL, NULL, 0,
     {"retry-after", "Wed, 21 Oct 2015 07:28:00 GMT", NULL},
     NOW_2015 + 59500, KM_OUT_RATE_LIMITED, 0.5, 0, 0, 0, 0, 0},
    {"retry-after date in the past: 0", 429, NULL, NULL, 0,
     {"retry-after", "Wed, 21 Oct 2015 07:26:00 GMT", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after date far ahead: capped at a day", 429, NULL, NULL, 0,
     {"retry-after", "Fri, 01 Jan 2100 00:00:00 GMT", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, DAY, 0, 0, 0, 0, 0},
    {"retry-after date with day 32: ignored", 429, NULL, NULL, 0,
     {"retry-after", "Wed, 32 Oct 2015 07:28:00 GMT", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after date in PST: ignored", 429, NULL, NULL, 0,
     {"retry-after", "Wed, 21 Oct 2015 07:28:00 PST", NULL},
     NOW_2015, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after-ms wins over retry-after", 429, NULL, NULL, 0,
     {"retry-after", "2", "retry-after-ms", "1500", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 1.5, 0, 0, 0, 0, 0},
    {"retry-after-ms alone, decimal", 429, NULL, NULL, 0,
     {"retry-after-ms", "250.5", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0.2505, 0, 0, 0, 0, 0},
    {"retry-after-ms garbage: retry-after used", 429, NULL, NULL, 0,
     {"retry-after-ms", "abc", "retry-after", "2", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 2, 0, 0, 0, 0, 0},
    {"retry-after decimal seconds", 429, NULL, NULL, 0, {"retry-after", "1.25", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 1.25, 0, 0, 0, 0, 0},
    {"retry-after with surrounding whitespace", 429, NULL, NULL, 0,
     {"retry-after", " \t7 ", NULL}, NOW_2024, KM_OUT_RATE_LIMITED, 7, 0, 0, 0, 0, 0},
    {"retry-after \"abc\": ignored", 429, NULL, NULL, 0, {"retry-after", "abc", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after \"-5\": 0", 429, NULL, NULL, 0, {"retry-after", "-5", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after \"1e400\": ignored", 429, NULL, NULL, 0, {"retry-after", "1e400", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after empty: ignored", 429, NULL, NULL, 0, {"retry-after", "", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 0, 0, 0, 0, 0, 0},
    {"retry-after huge: capped at a day", 429, NULL, NULL, 0,
     {"retry-after", "99999999999999999999999", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, DAY, 0, 0, 0, 0, 0},
    {"retry-after 86401: capped", 429, NULL, NULL, 0, {"retry-after", "86401", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, DAY, 0, 0, 0, 0, 0},
    {"duplicate retry-after: the first wins", 429, NULL, NULL, 0,
     {"retry-after", "5", "Retry-After", "9", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 5, 0, 0, 0, 0, 0},
    {"header with a NULL value is skipped", 429, NULL, NULL, 0,
     {"retry-after", NULL, "retry-after", "4", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 4, 0, 0, 0, 0, 0},

    /* ---- header names in any case */
    {"mixed-case header names", 429, NULL, NULL, 0,
     {"Retry-After", "30", "X-RateLimit-Remaining-Requests", "10",
      "X-RATELIMIT-RESET-REQUESTS", "1s", "x-RateLimit-Remaining-Tokens", "500",
      "X-Ratelimit-Reset-Tokens", "20ms", NULL},
     NOW_2024, KM_OUT_RATE_LIMITED, 30, RQ | TK, 10, 1000, 500, 20},
    {"anthropic names in upper case", 200, NULL, NULL, 0,
     {"ANTHROPIC-RATELIMIT-REQUESTS-REMAINING", "12",
      "Anthropic-Ratelimit-Requests-Reset", "2024-06-01T12:01:00Z", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 12, 60000, 0, 0},

    /* ---- Go durations (x-ratelimit-reset-requests) */
    {"duration 20ms", 200, NULL, NULL, 0, OAI_RESET("20ms"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 20, 0, 0},
    {"duration 1h30m", 200, NULL, NULL, 0, OAI_RESET("1h30m"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 5400000, 0, 0},
    {"duration 0.5s", 200, NULL, NULL, 0, OAI_RESET("0.5s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 500, 0, 0},
    {"duration 59.634s", 200, NULL, NULL, 0, OAI_RESET("59.634s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 59634, 0, 0},
    {"duration 7.66s", 200, NULL, NULL, 0, OAI_RESET("7.66s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 7660, 0, 0},
    {"duration 1.5h", 200, NULL, NULL, 0, OAI_RESET("1.5h"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 5400000, 0, 0},
    {"duration 3m0.001s", 200, NULL, NULL, 0, OAI_RESET("3m0.001s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 180001, 0, 0},
    {"duration 1us rounds up to 1 ms", 200, NULL, NULL, 0, OAI_RESET("1us"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 1, 0, 0},
    {"duration 1\xc2\xb5s (micro sign)", 200, NULL, NULL, 0, OAI_RESET("1\xc2\xb5s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 1, 0, 0},
    {"duration 1\xce\xbcs (greek mu)", 200, NULL, NULL, 0, OAI_RESET("1\xce\xbcs"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 1, 0, 0},
    {"duration 2500000ns", 200, NULL, NULL, 0, OAI_RESET("2500000ns"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 3, 0, 0},
    {"duration 1.000001ms rounds up", 200, NULL, NULL, 0, OAI_RESET("1.000001ms"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 2, 0, 0},
    {"duration .5s", 200, NULL, NULL, 0, OAI_RESET(".5s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 500, 0, 0},
    {"duration 0", 200, NULL, NULL, 0, OAI_RESET("0"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration -1s: 0", 200, NULL, NULL, 0, OAI_RESET("-1s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration \"5\" (no unit): reset 0, count kept", 200, NULL, NULL, 0, OAI_RESET("5"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration \"5x\": reset 0", 200, NULL, NULL, 0, OAI_RESET("5x"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration \"1S\" (units are lower case): reset 0", 200, NULL, NULL, 0, OAI_RESET("1S"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration \"1h 30m\": reset 0", 200, NULL, NULL, 0, OAI_RESET("1h 30m"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration \"s\": reset 0", 200, NULL, NULL, 0, OAI_RESET("s"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration overflow: reset 0", 200, NULL, NULL, 0, OAI_RESET("99999999999999h"), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},
    {"duration empty: reset 0", 200, NULL, NULL, 0, OAI_RESET(""), NOW_2024, KM_OUT_SUCCESS, 0, RQ, 7, 0, 0, 0},

    /* ---- remaining counts */
    {"remaining \"abc\": no view", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-requests", "abc", "x-ratelimit-reset-requests", "1s", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"remaining \"-5\": no view", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-requests", "-5", NULL}, NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"remaining \"1e400\": no view", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-tokens", "1e400", NULL}, NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"remaining empty: no view", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-tokens", "", NULL}, NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"remaining 2^64: no view", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-tokens", "18446744073709551616", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"remaining 2^64-1, reset absent", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-tokens", "18446744073709551615", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, TK, 0, 0, U64MAX, 0},
    {"reset without remaining: no view", 200, NULL, NULL, 0,
     {"x-ratelimit-reset-requests", "1s", "anthropic-ratelimit-tokens-reset",
      "2024-06-01T12:00:10Z", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, 0, 0, 0, 0, 0},
    {"openai garbage remaining: anthropic header used", 200, NULL, NULL, 0,
     {"x-ratelimit-remaining-requests", "n/a", "anthropic-ratelimit-requests-remaining", "4",
      "anthropic-ratelimit-requests-reset", "2024-06-01T12:00:02Z", NULL},
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 4, 2000, 0, 0},

    /* ---- RFC 3339 (anthropic-ratelimit-requests-reset) */
    {"rfc3339 -05:00 offset", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T07:00:45-05:00"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 45000, 0, 0},
    {"rfc3339 lower-case t and z", 200, NULL, NULL, 0, ANT_RESET("2024-06-01t12:00:05z"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 5000, 0, 0},
    {"rfc3339 0.1 ms rounds up to 1 ms", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T12:00:00.0001Z"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 1, 0, 0},
    {"rfc3339 in the past: 0", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T11:59:00Z"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 0, 0, 0},
    {"rfc3339 across a day, leap year", 200, NULL, NULL, 0, ANT_RESET("2024-03-01T00:00:00+23:00"),
     INT64_C(1709168340000) /* 2024-02-29T00:59:00Z */, KM_OUT_SUCCESS, 0, RQ, 3, 60000, 0, 0},
    {"rfc3339 without zone: reset 0", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T12:00:30"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 0, 0, 0},
    {"rfc3339 Feb 30: reset 0", 200, NULL, NULL, 0, ANT_RESET("2024-02-30T12:00:30Z"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 0, 0, 0},
    {"rfc3339 hour 24: reset 0", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T24:00:00Z"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 0, 0, 0},
    {"rfc3339 trailing junk: reset 0", 200, NULL, NULL, 0, ANT_RESET("2024-06-01T12:00:30Zjunk"),
     NOW_2024, KM_OUT_SUCCESS, 0, RQ, 3, 0, 0, 0},
};

#define N_ROWS (sizeof rows / sizeof rows[0])
#define CHECKS_PER_ROW 6

static size_t n_pairs(const row *r)
{
    size_t n = 0;
    while (n < MAXH && r->hdr[2 * n])
        n++;
    return n;
}

/* A bad outcome struct, as a caller might hand over: only latency_us and
 * tokens are meaningful. */
static void poison(km_outcome *o)
{
    memset(o, 0xA5, sizeof *o);
    o->latency_us = 4242;
    o->tokens = 77;
}

static int is_retry(double got, double exp, const char *name)
{
    int cond = fabs(got - exp) <= 1e-6;
    ok(cond, "%s: retry_after_s", name);
    if (!cond)
        fprintf(stderr, "# got: %.9g expected: %.9g\n", got, exp);
    return cond;
}

static int is_view(const km_outcome *o, const row *r)
{
    int cond = o->requests_remaining == r->req_rem && o->requests_reset_ms == r->req_reset &&
               o->tokens_remaining == r->tok_rem && o->tokens_reset_ms == r->tok_reset;
    ok(cond, "%s: view (requests remaining/reset_ms, tokens remaining/reset_ms)", r->name);
    if (!cond)
        fprintf(stderr,
                "# got: %" PRIu64 "/%" PRIu64 " %" PRIu64 "/%" PRIu64
                " expected: %" PRIu64 "/%" PRIu64 " %" PRIu64 "/%" PRIu64 "\n",
                o->requests_remaining, o->requests_reset_ms, o->tokens_remaining,
                o->tokens_reset_ms, r->req_rem, r->req_reset, r->tok_rem, r->tok_reset);
    return cond;
}

static int is_untouched(const km_outcome *o, const char *name)
{
    int cond = o->latency_us == 4242 && o->tokens == 77;
    ok(cond, "%s: latency_us and tokens untouched", name);
    if (!cond)
        fprintf(stderr, "# got: %lld/%lld expected: 4242/77\n", (long long)o->latency_us,
                (long long)o->tokens);
    return cond;
}

static void run_row(const row *r)
{
    km_http_response resp = {
        .status = r->status,
        .error_code = r->code,
        .body = r->body,
        .body_len = r->body ? (r->body_len ? (size_t)r->body_len : strlen(r->body)) : 0,
        .headers = r->hdr,
        .n_headers = n_pairs(r),
        .now_unix_ms = r->now_ms,
    };
    km_outcome o;
    int rc;

    poison(&o);
    rc = km_outcome_from_http(&resp, &o);
    is_int(rc, KM_OK, "%s: returns KM_OK", r->name);
    is_str(km_outcome_name(o.kind), km_outcome_name(r->kind), "%s: kind", r->name);
    is_retry(o.retry_after_s, r->retry, r->name);
    is_u64(o.view_flags, r->flags, "%s: view_flags", r->name);
    is_view(&o, r);
    is_untouched(&o, r->name);
}

/* IMF-fixdate for unix time t, without strftime (whose names follow LC_TIME). */
static void imf_fixdate(time_t t, char *buf, size_t len)
{
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;

    gmtime_r(&t, &tm);
    snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d GMT", wd[tm.tm_wday], tm.tm_mday,
             mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void rfc3339(time_t t, char *buf, size_t len)
{
    struct tm tm;

    gmtime_r(&t, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

#define N_EXTRA 13

static void run_extra(void)
{
    static const char *const hdr[] = {"retry-after", "5"};
    static const char *const nullname[] = {NULL, "7", "retry-after", "5"};
    km_http_response resp = {.status = 429, .headers = hdr, .n_headers = 1,
                             .now_unix_ms = NOW_2024};
    km_outcome o;
    char date[64], reset[64];
    const char *live[6];
    time_t now = time(NULL);

    /* Arguments */
    poison(&o);
    is_int(km_outcome_from_http(NULL, &o), KM_EINVAL, "NULL resp: KM_EINVAL");
    is_int(km_outcome_from_http(&resp, NULL), KM_EINVAL, "NULL out: KM_EINVAL");
    resp.headers = NULL;
    is_int(km_outcome_from_http(&resp, &o), KM_EINVAL, "headers NULL, n_headers 1: KM_EINVAL");
    resp.n_headers = 0;
    is_int(km_outcome_from_http(&resp, &o), KM_OK, "headers NULL, n_headers 0: KM_OK");
    is_str(km_outcome_name(o.kind), "rate_limited", "headers NULL, n_headers 0: kind");

    /* A pair with a NULL name is skipped. */
    resp.headers = nullname;
    resp.n_headers = 2;
    poison(&o);
    is_int(km_outcome_from_http(&resp, &o), KM_OK, "NULL header name: KM_OK");
    is_retry(o.retry_after_s, 5, "NULL header name skipped");

    /* now_unix_ms 0: the real clock.  A date 120 s ahead, an RFC 3339 reset
     * 30 s ahead; one second of slack each way for the clock's tick. */
    imf_fixdate(now + 120, date, sizeof date);
    rfc3339(now + 30, reset, sizeof reset);
    live[0] = "retry-after";
    live[1] = date;
    live[2] = "anthropic-ratelimit-requests-remaining";
    live[3] = "9";
    live[4] = "anthropic-ratelimit-requests-reset";
    live[5] = reset;
    resp.headers = live;
    resp.n_headers = 3;
    resp.now_unix_ms = 0;
    poison(&o);
    is_int(km_outcome_from_http(&resp, &o), KM_OK, "real clock: KM_OK");
    ok(o.retry_after_s >= 118.0 && o.retry_after_s <= 121.0,
       "real clock: retry-after %s is about 120 s", date);
    if (!(o.retry_after_s >= 118.0 && o.retry_after_s <= 121.0))
        fprintf(stderr, "# got: %.3f expected: 118..121\n", o.retry_after_s);
    is_u64(o.view_flags, KM_VIEW_REQUESTS, "real clock: view_flags");
    cmp_u64(o.requests_reset_ms, ">=", 28000, "real clock: reset %s at least 28 s away", reset);
    cmp_u64(o.requests_reset_ms, "<=", 31000, "real clock: reset %s at most 31 s away", reset);

    imf_fixdate(now - 3600, date, sizeof date);
    live[1] = date;
    resp.n_headers = 1;
    poison(&o);
    km_outcome_from_http(&resp, &o);
    is_retry(o.retry_after_s, 0, "real clock: a date an hour ago gives 0");
}

/* Release the lease with the outcome km_outcome_from_http() makes of a 200
 * carrying `hdr` (n pairs); *t0 and *t1 bracket the release. */
static int release_http(km_env *e, km_lease *l, const char *const *hdr, size_t n, uint64_t *t0,
                        uint64_t *t1)
{
    km_http_response resp = {.status = 200, .headers = hdr, .n_headers = n};
    km_outcome o = {.latency_us = -1, .tokens = -1};
    if (km_outcome_from_http(&resp, &o) != KM_OK)
        bail_out("km_outcome_from_http");
    *t0 = km_now_ns();
    int rc = km_release(e, l, &o);
    *t1 = km_now_ns();
    return rc;
}

#define N_UNCONFIGURED 11
static void run_unconfigured(void)
{
    static const char *const none_left[] = {"x-ratelimit-remaining-requests", "0",
                                            "x-ratelimit-reset-requests", "2s"};
    static const char *const some_left[] = {"x-ratelimit-remaining-requests", "5",
                                            "x-ratelimit-reset-requests", "2s"};
    static const char *const no_tokens[] = {"x-ratelimit-remaining-tokens", "0",
                                            "x-ratelimit-reset-tokens", "300ms"};
    km_env *e = mkseg("{\"pools\": [{\"name\": \"p\","
                      " \"keys\": [{\"id\": \"a\", \"secret\": \"sk-test-prov0001\"}]}]}");
    int p = pool_of(e, "p"), key = key_of(e, p, 0), rc;
    km_request rq = {.pool = p};
    km_lease l;
    uint64_t t0, t1;

    is_int(acquire_with(e, p, 0, 0, &l), KM_OK, "no limits: acquire");
    is_u64(info(e, key).limits[KM_WIN_RPM].limit + info(e, key).limits[KM_WIN_TPM].limit, 0,
           "no limits: neither rpm nor tpm configured");
    is_int(release_http(e, &l, none_left, 2, &t0, &t1), KM_OK,
           "no limits: release with remaining-requests 0, reset 2s");
    rc = km_acquire(e, &rq, &l);
    is_str(E(rc), "EAGAIN", "no limits, none remaining: not handed out");
    uint64_t at = l.retry_at_ns;
    ok(at >= t0 + 2 * NS && at <= t1 + 2 * NS,
       "no limits: retry_at is the provider's reset (%.3f s after the release)",
       ((double)at - (double)t0) / 1e9);
    sleep_until(t0 + NS);
    rc = km_acquire(e, &rq, &l);
    ok(rc == KM_EAGAIN || (rc == KM_OK && l.start_ns >= at),
       "no limits: 1 s later, still not handed out (%s)", E(rc));
    if (rc == KM_OK)
        km_release(e, &l, NULL);
    sleep_until(at);
    is_str(E(km_acquire(e, &rq, &l)), "OK", "no limits: handed out at the reset");
    is_int(release_http(e, &l, some_left, 2, &t0, &t1), KM_OK,
           "no limits: release with remaining-requests 5");
    rc = km_acquire(e, &rq, &l);
    is_str(E(rc), "OK", "no limits: 5 remaining holds nothing back");
    is_int(release_http(e, &l, no_tokens, 2, &t0, &t1), KM_OK,
           "no limits: release with remaining-tokens 0, reset 300ms");
    rc = km_acquire(e, &rq, &l);
    ok(rc == KM_EAGAIN && l.retry_at_ns >= t0 + 300 * MS && l.retry_at_ns <= t1 + 300 * MS,
       "no limits, no tokens remaining: held back until the reset (%s, %.3f s)", E(rc),
       ((double)l.retry_at_ns - (double)t0) / 1e9);
    rmseg(e);
}

int main(void)
{
    size_t i;

    fixtures_init("provider");
    plan((int)(N_ROWS * CHECKS_PER_ROW + N_EXTRA + N_UNCONFIGURED));
    for (i = 0; i < N_ROWS; i++)
        run_row(&rows[i]);
    run_extra();
    run_unconfigured();
    return exit_status();
}
