/*
 * src/provider.c - km_outcome_from_http(): what a provider's HTTP answer
 * means for the key that sent it.
 *
 * Pure: reads only its arguments, plus CLOCK_REALTIME when the caller gives
 * no wall clock and a header holds an absolute time.  Keeps no state, so it
 * may run concurrently from any thread or process.  Nothing is allocated
 * except by jansson while it parses the error body of a 4xx answer; that
 * tree is freed before returning.  No locale is consulted: every parser here
 * is written out over ASCII (strtod and strptime would follow LC_NUMERIC and
 * LC_TIME).
 *
 * The mapping and the header formats are documented in docs/outcomes.md;
 * keep the two in step.
 */
#include <jansson.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define KM__RETRY_CAP_S ((double)KM__VIEW_CAP_S) /* Retry-After is capped */
#define KM__CODE_MAX 64         /* longer error codes are ignored */

/* ------------------------------------------------------------ characters */

static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_alpha(int c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* ASCII case-insensitive equality of two NUL-terminated strings. */
static int ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (lower((unsigned char)*a) != lower((unsigned char)*b))
            return 0;
    return *a == *b;
}

/* A header value with optional whitespace (SP, HTAB) trimmed: [p, e). */
typedef struct span {
    const char *p, *e;
} span;

static span trim(const char *s)
{
    span v = {s, s + strlen(s)};
    while (v.p < v.e && (*v.p == ' ' || *v.p == '\t'))
        v.p++;
    while (v.e > v.p && (v.e[-1] == ' ' || v.e[-1] == '\t'))
        v.e--;
    return v;
}

/* -------------------------------------------------------------- numbers */

/* A non-empty run of digits and nothing else, without overflow. */
static int parse_u64(span v, uint64_t *out)
{
    uint64_t n = 0;
    const char *q;

    if (v.p == v.e)
        return 0;
    for (q = v.p; q < v.e; q++) {
        unsigned d = (unsigned)(*q - '0');
        if (!is_digit(*q) || n > (UINT64_MAX - d) / 10)
            return 0;
        n = n * 10 + d;
    }
    *out = n;
    return 1;
}

/* Decimal number: ["-"] digits ["." digits], at least one digit, no
 * exponent.  A huge integer part saturates (callers cap the result); digits
 * past the ninth of the fraction are read and ignored. */
static int parse_decimal(span v, double *out)
{
    const char *q = v.p;
    uint64_t ip = 0, fp = 0, scale = 1;
    int neg = 0, digits = 0;

    if (q < v.e && *q == '-') {
        neg = 1;
        q++;
    }
    for (; q < v.e && is_digit(*q); q++, digits++) {
        unsigned d = (unsigned)(*q - '0');
        ip = ip > (UINT64_MAX - d) / 10 ? UINT64_MAX : ip * 10 + d;
    }
    if (q < v.e && *q == '.') {
        for (q++; q < v.e && is_digit(*q); q++, digits++) {
            if (scale < 1000000000) {
                fp = fp * 10 + (uint64_t)(*q - '0');
                scale *= 10;
            }
        }
    }
    if (digits == 0 || q != v.e)
        return 0;
    *out = ((double)ip + (double)fp / (double)scale) * (neg ? -1.0 : 1.0);
    return 1;
}

/* Go duration (time.ParseDuration, what OpenAI's x-ratelimit-reset-* use):
 * ["+"|"-"] followed by one or more <decimal><unit>, units h m s ms us µs ns;
 * "0" alone is allowed.  Milliseconds, rounded up; a negative duration is 0.
 * Overflow or anything else is malformed. */
static int parse_go_duration(span v, uint64_t *ms)
{
    static const struct {
        const char *name;
        size_t len;
        uint64_t ns;
    } units[] = {
        /* "ms" before "m"; "µs" as U+00B5 and as U+03BC, as Go accepts. */
        {"ns", 2, 1},
        {"us", 2, KM__NS_PER_US},
        {"\xc2\xb5s", 3, KM__NS_PER_US},
        {"\xce\xbcs", 3, KM__NS_PER_US},
        {"ms", 2, KM__NS_PER_MS},
        {"s", 1, KM__NS_PER_S},
        {"m", 1, 60 * KM__NS_PER_S},
        {"h", 1, 3600 * KM__NS_PER_S},
    };
    const char *q = v.p;
    uint64_t total = 0;
    int neg = 0;

    if (q < v.e && (*q == '-' || *q == '+'))
        neg = *q++ == '-';
    if (v.e - q == 1 && *q == '0') {
        *ms = 0;
        return 1;
    }
    if (q == v.e)
        return 0;
    while (q < v.e) {
        uint64_t ip = 0, fp = 0, scale = 1, unit = 0, part;
        int digits = 0;
        size_t i;

        for (; q < v.e && is_digit(*q); q++, digits++) {
            unsigned d = (unsigned)(*q - '0');
            if (ip > (UINT64_MAX - d) / 10)
                return 0;
            ip = ip * 10 + d;
        }
        if (q < v.e && *q == '.') {
            for (q++; q < v.e && is_digit(*q); q++, digits++) {
                if (scale < 1000000000) {
                    fp = fp * 10 + (uint64_t)(*q - '0');
                    scale *= 10;
                }
            }
        }
        if (digits == 0)
            return 0;
        for (i = 0; i < sizeof units / sizeof units[0]; i++) {
            if ((size_t)(v.e - q) >= units[i].len &&
                memcmp(q, units[i].name, units[i].len) == 0) {
                unit = units[i].ns;
                q += units[i].len;
                break;
            }
        }
        if (unit == 0 || ip > UINT64_MAX / unit)
            return 0;
        part = ip * unit;
        /* fp < scale <= 1e9.  When scale divides unit (s, m, h) the product
         * is exact; otherwise unit <= 1e6 and fp * unit < 1e15 fits. */
        part += unit % scale == 0 ? fp * (unit / scale) : fp * unit / scale;
        if (part < ip * unit || total > UINT64_MAX - part)
            return 0;
        total += part;
    }
    *ms = neg ? 0 : km__ns_to_ms_ceil(total);
    return 1;
}

/* ---------------------------------------------------------------- times */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil): no time zone, no locale, no timegm(). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int civil_ok(int y, int mo, int d, int h, int mi, int s)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
        return 0;
    if (mo == 2 && d == 29 && !leap)
        return 0;
    return h <= 23 && mi <= 59 && s <= 60; /* 60: a leap second */
}

/* Unix seconds of a valid civil UTC time (a leap second rolls over). */
static int64_t unix_seconds(int y, int mo, int d, int h, int mi, int s)
{
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

/* Cursor helpers: each consumes what it matched and returns 1, or 0. */
static int take_digits(const char **q, const char *e, int n, int *out)
{
    int v = 0, i;

    if (e - *q < n)
        return 0;
    for (i = 0; i < n; i++) {
        if (!is_digit((*q)[i]))
            return 0;
        v = v * 10 + ((*q)[i] - '0');
    }
    *q += n;
    *out = v;
    return 1;
}

static int take_char(const char **q, const char *e, char c)
{
    if (*q >= e || **q != c)
        return 0;
    (*q)++;
    return 1;
}

static int take_word(const char **q, const char *e, const char *w)
{
    size_t n = strlen(w), i;

    if ((size_t)(e - *q) < n)
        return 0;
    for (i = 0; i < n; i++)
        if (lower((unsigned char)(*q)[i]) != w[i])
            return 0;
    *q += n;
    return 1;
}

static int take_month(const char **q, const char *e, int *mo)
{
    static const char *const names[12] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
    int i;

    for (i = 0; i < 12; i++) {
        if (take_word(q, e, names[i])) {
            *mo = i + 1;
            return 1;
        }
    }
    return 0;
}

/* "HH:MM:SS" */
static int take_hms(const char **q, const char *e, int *h, int *mi, int *s)
{
    return take_digits(q, e, 2, h) && take_char(q, e, ':') &&
           take_digits(q, e, 2, mi) && take_char(q, e, ':') &&
           take_digits(q, e, 2, s);
}

/* RFC 3339 date-time, as Anthropic's anthropic-ratelimit-*-reset:
 *   YYYY-MM-DD("T"|"t"|" ")HH:MM:SS["." digits]("Z"|"z"|("+"|"-")HH:MM)
 * Unix milliseconds, a fraction rounded up to the next millisecond. */
static int parse_rfc3339(span v, int64_t *unix_ms)
{
    const char *q = v.p, *e = v.e;
    int y, mo, d, h, mi, s, oh = 0, om = 0, sign = 0;
    uint64_t frac_ns = 0, scale = KM__NS_PER_S;
    int64_t t;

    if (!take_digits(&q, e, 4, &y) || !take_char(&q, e, '-') ||
        !take_digits(&q, e, 2, &mo) || !take_char(&q, e, '-') ||
        !take_digits(&q, e, 2, &d))
        return 0;
    if (!take_char(&q, e, 'T') && !take_char(&q, e, 't') &&
        !take_char(&q, e, ' '))
        return 0;
    if (!take_hms(&q, e, &h, &mi, &s))
        return 0;
    if (take_char(&q, e, '.')) {
        const char *f = q;
        for (; q < e && is_digit(*q); q++) {
            if (scale > 1) {
                scale /= 10;
                frac_ns += (uint64_t)(*q - '0') * scale;
            }
        }
        if (q == f)
            return 0;
    }
    if (take_char(&q, e, 'Z') || take_char(&q, e, 'z')) {
        sign = 0;
    } else if (q < e && (*q == '+' || *q == '-')) {
        sign = *q++ == '-' ? -1 : 1;
        if (!take_digits(&q, e, 2, &oh) || !take_char(&q, e, ':') ||
            !take_digits(&q, e, 2, &om) || oh > 23 || om > 59)
            return 0;
    } else {
        return 0;
    }
    if (q != e || !civil_ok(y, mo, d, h, mi, s))
        return 0;
    /* local = UTC + offset, so UTC = local - offset */
    t = unix_seconds(y, mo, d, h, mi, s) - sign * (oh * 3600 + om * 60);
    *unix_ms = t * 1000 + (int64_t)km__ns_to_ms_ceil(frac_ns);
    return 1;
}

/* HTTP-date (RFC 9110 section 5.6.7) in its three forms:
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"  (yy < 70: 20yy, else 19yy)
 *   asctime      "Sun Nov  6 08:49:37 1994"
 * The day name is skipped, not checked against the date.  Month names and
 * "GMT" in any case.  Unix seconds. */
static int parse_http_date(span v, int64_t *unix_s)
{
    const char *q = v.p, *e = v.e;
    int y, mo, d, h, mi, s;

    while (q < e && is_alpha(*q))
        q++;
    if (q == v.p)
        return 0;
    if (take_char(&q, e, ',')) {
        if (!take_char(&q, e, ' ') || !take_digits(&q, e, 2, &d))
            return 0;
        if (take_char(&q, e, ' ')) { /* IMF-fixdate */
            if (!take_month(&q, e, &mo) || !take_char(&q, e, ' ') ||
                !take_digits(&q, e, 4, &y))
                return 0;
        } else if (take_char(&q, e, '-')) { /* RFC 850 */
            if (!take_month(&q, e, &mo) || !take_char(&q, e, '-') ||
                !take_digits(&q, e, 2, &y))
                return 0;
            y += y < 70 ? 2000 : 1900;
        } else {
            return 0;
        }
        if (!take_char(&q, e, ' ') || !take_hms(&q, e, &h, &mi, &s) ||
            !take_char(&q, e, ' ') || !take_word(&q, e, "gmt"))
            return 0;
    } else { /* asctime: day of month is " 6" or "06" or "16" */
        if (!take_char(&q, e, ' ') || !take_month(&q, e, &mo) ||
            !take_char(&q, e, ' '))
            return 0;
        if (take_char(&q, e, ' ')) {
            if (!take_digits(&q, e, 1, &d))
                return 0;
        } else if (!take_digits(&q, e, 2, &d)) {
            return 0;
        }
        if (!take_char(&q, e, ' ') || !take_hms(&q, e, &h, &mi, &s) ||
            !take_char(&q, e, ' ') || !take_digits(&q, e, 4, &y))
            return 0;
    }
    if (q != e || !civil_ok(y, mo, d, h, mi, s))
        return 0;
    *unix_s = unix_seconds(y, mo, d, h, mi, s);
    return 1;
}

/* ------------------------------------------------------------- headers */

enum {
    KM__H_RETRY_AFTER,
    KM__H_RETRY_AFTER_MS,
    KM__H_OAI_REQ_REM,
    KM__H_OAI_REQ_RESET,
    KM__H_OAI_TOK_REM,
    KM__H_OAI_TOK_RESET,
    KM__H_ANT_REQ_REM,
    KM__H_ANT_REQ_RESET,
    KM__H_ANT_TOK_REM,
    KM__H_ANT_TOK_RESET,
    KM__H_ANT_IN_REM,
    KM__H_ANT_IN_RESET,
    KM__H_COUNT
};

static const char *const hdr_names[KM__H_COUNT] = {
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
};

/* What one call works with: the headers it knows (NULL: absent; the first
 * of duplicates wins) and the wall clock, read at most once. */
typedef struct hctx {
    const char *h[KM__H_COUNT];
    int64_t now_ms;
    int have_now;
} hctx;

static int64_t wall_ms(hctx *c)
{
    if (!c->have_now) {
        c->have_now = 1;
        c->now_ms = (int64_t)(km__wall_ns() / KM__NS_PER_MS);
    }
    return c->now_ms;
}

/* Retry-After in seconds, from retry-after-ms if it parses, else from
 * retry-after (delta seconds or HTTP-date); clamped to [0, one day].
 * *out is left alone when neither header is readable. */
static void retry_after(hctx *c, double *out)
{
    double s;
    int64_t at;

    if (c->h[KM__H_RETRY_AFTER_MS] &&
        parse_decimal(trim(c->h[KM__H_RETRY_AFTER_MS]), &s)) {
        s /= 1000.0;
    } else if (c->h[KM__H_RETRY_AFTER]) {
        span v = trim(c->h[KM__H_RETRY_AFTER]);
        if (parse_http_date(v, &at)) {
            /* The caller's clock may be anything: saturate, never overflow
             * (a date is at most year 9999, so at * 1000 fits). */
            int64_t now = wall_ms(c), ms;
            if (__builtin_sub_overflow(at * 1000, now, &ms))
                ms = now < 0 ? INT64_MAX : INT64_MIN;
            s = (double)ms / 1000.0;
        } else if (!parse_decimal(v, &s)) {
            return;
        }
    } else {
        return;
    }
    *out = s < 0 ? 0 : s > KM__RETRY_CAP_S ? KM__RETRY_CAP_S : s;
}

/* One "remaining" count and its reset: returns 1 if `rem` parsed.  The reset
 * is a Go duration (OpenAI) or an RFC 3339 time (Anthropic); absent or
 * malformed, it is 0. */
static int view_pair(hctx *c, int rem, int reset, int rfc3339,
                         uint64_t *remaining, uint64_t *reset_ms)
{
    int64_t at;

    if (!c->h[rem] || !parse_u64(trim(c->h[rem]), remaining))
        return 0;
    *reset_ms = 0;
    if (!c->h[reset])
        return 1;
    if (!rfc3339) {
        if (!parse_go_duration(trim(c->h[reset]), reset_ms))
            *reset_ms = 0;
    } else if (parse_rfc3339(trim(c->h[reset]), &at)) {
        int64_t now = wall_ms(c);
        /* at > now: the difference fits in 64 unsigned bits even when the
         * caller's clock is far off (signed subtraction could overflow). */
        *reset_ms = at > now ? (uint64_t)at - (uint64_t)now : 0;
    }
    return 1;
}

static void view(hctx *c, km_outcome *out)
{
    if (view_pair(c, KM__H_OAI_REQ_REM, KM__H_OAI_REQ_RESET, 0,
                      &out->requests_remaining, &out->requests_reset_ms) ||
        view_pair(c, KM__H_ANT_REQ_REM, KM__H_ANT_REQ_RESET, 1,
                      &out->requests_remaining, &out->requests_reset_ms))
        out->view_flags |= KM_VIEW_REQUESTS;
    if (view_pair(c, KM__H_OAI_TOK_REM, KM__H_OAI_TOK_RESET, 0,
                      &out->tokens_remaining, &out->tokens_reset_ms) ||
        view_pair(c, KM__H_ANT_TOK_REM, KM__H_ANT_TOK_RESET, 1,
                      &out->tokens_remaining, &out->tokens_reset_ms) ||
        view_pair(c, KM__H_ANT_IN_REM, KM__H_ANT_IN_RESET, 1,
                      &out->tokens_remaining, &out->tokens_reset_ms))
        out->view_flags |= KM_VIEW_TOKENS;
}

/* ------------------------------------------------------------ error code */

/* The error code in a JSON error body, copied into buf (cap bytes):
 *   {"error": {"code": "<string>", "status": "...", "type": "..."}}
 * first non-empty string of code (OpenAI), status (Gemini; its "code" is
 * the HTTP status as a number), type (Anthropic; OpenAI without a code).
 * A body that is a one-element array around that object (Gemini's streaming
 * endpoints) is unwrapped.  Returns 1 if a code was found. */
static int body_code(const char *body, size_t len, char *buf, size_t cap)
{
    static const char *const fields[] = {"code", "status", "type"};
    json_error_t jerr;
    json_t *root, *obj, *err;
    const char *s = NULL;
    size_t i, n = 0;

    root = json_loadb(body, len, 0, &jerr);
    if (!root) /* not JSON, truncated, or out of memory: no code */
        return 0;
    obj = json_is_array(root) ? json_array_get(root, 0) : root;
    err = json_object_get(obj, "error"); /* NULL unless obj is an object */
    if (json_is_object(err)) {
        /* Gemini says a key is not valid only in error.details[].reason
         * (status INVALID_ARGUMENT, HTTP 400): that reason wins. */
        json_t *details = json_object_get(err, "details"), *d;
        size_t k;
        json_array_foreach(details, k, d) {
            const char *r = json_string_value(json_object_get(d, "reason"));
            if (r && ieq(r, "API_KEY_INVALID")) {
                s = r;
                n = strlen(r);
            }
        }
        for (i = 0; i < sizeof fields / sizeof fields[0] && !n; i++) {
            s = json_string_value(json_object_get(err, fields[i]));
            n = s ? strlen(s) : 0;
        }
    }
    if (n > 0 && n < cap)
        memcpy(buf, s, n + 1);
    else
        n = 0;
    json_decref(root);
    return n > 0;
}

/* Codes that mean the account has no credit rather than a momentary limit:
 * "insufficient_quota" and any "billing..." (billing_not_active,
 * billing_hard_limit_reached). */
static int is_quota_code(const char *code)
{
    size_t i;

    if (!code)
        return 0;
    if (ieq(code, "insufficient_quota"))
        return 1;
    for (i = 0; i < 7; i++)
        if (lower((unsigned char)code[i]) != "billing"[i])
            return 0;
    return 1;
}

static int classify(int status, const char *code)
{
    if (status <= 0 || status >= 600) /* no answer, or not HTTP */
        return KM_OUT_FAILURE;
    if (code && ieq(code, "overloaded_error")) /* also mid-stream */
        return KM_OUT_FAILURE;
    if (status >= 200 && status <= 299)
        return KM_OUT_SUCCESS;
    if (status >= 500) /* 529 included */
        return KM_OUT_FAILURE;
    switch (status) {
    case 429:
        return is_quota_code(code) ? KM_OUT_QUOTA : KM_OUT_RATE_LIMITED;
    case 402:
        return KM_OUT_QUOTA;
    case 401:
        return KM_OUT_AUTH;
    case 403:
        return is_quota_code(code) ? KM_OUT_QUOTA : KM_OUT_AUTH;
    case 408:
        return KM_OUT_FAILURE;
    default: /* other 4xx, 1xx, 3xx: the key worked, unless it says not */
        if (code && ieq(code, "API_KEY_INVALID"))
            return KM_OUT_AUTH;
        return KM_OUT_SUCCESS;
    }
}

KM_EXTERN int km_outcome_from_http(const km_http_response *resp, km_outcome *out)
{
    hctx c;
    char buf[KM__CODE_MAX];
    const char *code;
    size_t i;
    int j;

    if (!resp || !out || (!resp->headers && resp->n_headers > 0))
        return KM_EINVAL;

    memset(&c, 0, sizeof c);
    c.now_ms = resp->now_unix_ms;
    c.have_now = resp->now_unix_ms != 0;
    for (i = 0; i < resp->n_headers; i++) {
        const char *name = resp->headers[2 * i], *value = resp->headers[2 * i + 1];
        if (!name || !value)
            continue;
        for (j = 0; j < KM__H_COUNT; j++) {
            if (!c.h[j] && ieq(name, hdr_names[j])) {
                c.h[j] = value;
                break;
            }
        }
    }

    /* The body is parsed only for a 4xx without a caller-given code: there
     * alone the code changes the outcome (a 2xx body is the completion). */
    code = resp->error_code;
    if (!code && resp->status >= 400 && resp->status <= 499 && resp->body &&
        resp->body_len > 0 && body_code(resp->body, resp->body_len, buf, sizeof buf))
        code = buf;

    out->kind = classify(resp->status, code);
    out->retry_after_s = 0;
    out->view_flags = 0;
    out->requests_remaining = out->tokens_remaining = 0;
    out->requests_reset_ms = out->tokens_reset_ms = 0;
    retry_after(&c, &out->retry_after_s);
    view(&c, out);
    return KM_OK;
}
