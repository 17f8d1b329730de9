/*
 * tests/fuzz/fuzz_provider.c - libFuzzer target: km_outcome_from_http()
 * with a response built from the input.
 *
 * Input (text, like an HTTP answer):
 *   line 1   "<status> [<now_unix_ms> [<error_code>]]"   (now 0: read the clock)
 *   lines    "<name>:<value>" headers, up to 64 (a line without ':' is a
 *            name with an empty value; the value is passed as is, untrimmed)
 *   ""       an empty line ends the headers
 *   rest     the body (its exact bytes and length; no NUL terminator)
 *
 * Oracles besides the sanitizers: the outcome is in range (kind, a
 * retry_after_s in [0, 86400] and not NaN, only known view flags); fields
 * the function must not touch are untouched; header names match without
 * regard to case (upper-casing them gives the same outcome); the same
 * input gives the same outcome twice.
 */
#include <ctype.h>
#include <math.h>

#define FUZZ_NAME "provider"
#include "fuzz_common.h"
#include "keymesh.h"

#define MAX_HDRS 64

static int run(const km_http_response *r, km_outcome *o)
{
    memset(o, 0, sizeof *o);
    o->latency_us = 12345;
    o->tokens = 678;
    o->input_tokens = -7;
    o->output_tokens = 9;
    return km_outcome_from_http(r, o);
}

static int same(const km_outcome *a, const km_outcome *b)
{
    return a->kind == b->kind &&
           (a->retry_after_s == b->retry_after_s) &&
           a->view_flags == b->view_flags &&
           a->requests_remaining == b->requests_remaining &&
           a->tokens_remaining == b->tokens_remaining &&
           a->requests_reset_ms == b->requests_reset_ms &&
           a->tokens_reset_ms == b->tokens_reset_ms;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Own copy, NUL-terminated lines carved out of it. */
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';

    const char *hdrs[2 * MAX_HDRS], *upper[2 * MAX_HDRS];
    char *up_names[MAX_HDRS] = {0};
    size_t nh = 0;
    km_http_response r;
    memset(&r, 0, sizeof r);

    char *p = buf, *end = buf + size;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *line1 = p;
    if (nl) {
        *nl = '\0';
        p = nl + 1;
    } else {
        p = end;
    }
    /* status, now, code: parsed by hand, never beyond the line */
    char *q = line1, *ep;
    long long st = strtoll(q, &ep, 10);
    r.status = st > INT32_MAX ? INT32_MAX : st < INT32_MIN ? INT32_MIN : (int)st;
    q = ep;
    long long now = strtoll(q, &ep, 10);
    r.now_unix_ms = now;
    q = ep;
    while (*q == ' ')
        q++;
    if (*q)
        r.error_code = q;

    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        if (le == p) { /* empty line: the body follows */
            p = le + 1;
            break;
        }
        *le = '\0';
        if (nh < MAX_HDRS) {
            char *colon = strchr(p, ':');
            if (colon) {
                *colon = '\0';
                hdrs[2 * nh + 1] = colon + 1;
            } else {
                hdrs[2 * nh + 1] = le; /* "" */
            }
            hdrs[2 * nh] = p;
            nh++;
        }
        p = le + 1;
    }
    if (p < end) {
        r.body = p;
        r.body_len = (size_t)(end - p);
    }
    r.headers = nh ? hdrs : NULL;
    r.n_headers = nh;

    km_outcome a, b;
    int rc = run(&r, &a);
    if (rc != KM_OK)
        FAIL("rc %d", rc);
    if (a.kind < 0 || a.kind >= KM_OUT_COUNT || a.kind == KM_OUT_CANCELLED)
        FAIL("kind %d", a.kind);
    if (!(a.retry_after_s >= 0.0 && a.retry_after_s <= 86400.0))
        FAIL("retry_after_s %g", a.retry_after_s);
    if (a.view_flags & ~(KM_VIEW_REQUESTS | KM_VIEW_TOKENS))
        FAIL("view_flags %#x", a.view_flags);
    if (a.latency_us != 12345 || a.tokens != 678 || a.input_tokens != -7 ||
        a.output_tokens != 9)
        FAIL("touched a caller field");

    /* Deterministic when the caller gives the clock. */
    if (r.now_unix_ms != 0) {
        run(&r, &b);
        if (!same(&a, &b))
            FAIL("two calls, two outcomes");
        /* Header names are case-insensitive. */
        for (size_t i = 0; i < nh; i++) {
            up_names[i] = strdup(hdrs[2 * i]);
            if (!up_names[i])
                goto out;
            for (char *c = up_names[i]; *c; c++)
                if (*c >= 'a' && *c <= 'z')
                    *c = (char)(*c - 32);
            upper[2 * i] = up_names[i];
            upper[2 * i + 1] = hdrs[2 * i + 1];
        }
        km_http_response ru = r;
        ru.headers = nh ? upper : NULL;
        run(&ru, &b);
        if (!same(&a, &b))
            FAIL("upper-cased header names changed the outcome");
    }
    /* NULL headers with a count is refused; a NULL name or value skipped. */
    km_http_response rn = r;
    rn.headers = NULL;
    rn.n_headers = nh + 1;
    if (km_outcome_from_http(&rn, &b) != KM_EINVAL)
        FAIL("NULL headers with n_headers > 0 accepted");
out:
    for (size_t i = 0; i < nh; i++)
        free(up_names[i]);
    free(buf);
    return 0;
}
