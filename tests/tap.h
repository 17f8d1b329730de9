/*
 * tests/tap.h - a small header-only TAP producer for KeyMesh's tests.
 *
 *   plan(n);                               "1..n"
 *   ok(cond, fmt, ...)                     "ok N - name" / "not ok N - name"
 *   is_int(got, expected, fmt, ...)        signed compare (long long)
 *   is_u64(got, expected, fmt, ...)        unsigned compare (uint64_t)
 *   is_str(got, expected, fmt, ...)        strcmp; NULL equals only NULL
 *   cmp_u64(got, op, bound, fmt, ...)      op is one of "<" "<=" ">" ">=" "==" "!="
 *   diag(fmt, ...)                         "# ..." comment line
 *   bail_out(fmt, ...)                     "Bail out! ..." and exit(255)
 *   return exit_status();                  0 only if every test passed and
 *                                          the count matches the plan
 *
 * Every assertion returns its condition (1 pass, 0 fail) so a test can stop
 * early on a failure that makes the following checks meaningless.  A failed
 * comparison prints both values ("# got: X expected: Y") and the file and
 * line of the assertion.  There is deliberately no skip(): a test either
 * checks something or is not counted.
 *
 * Fork.  plan() records the pid of the process that prints TAP.  In any other
 * process (a forked helper) the assertions print nothing on stdout; a failure
 * is written to stderr as "# [child PID] not ok - name" with its values, and
 * counted; the helper ends with _exit(tap_failures() ? 1 : 0) and the parent
 * asserts on the exit status.  Every line is flushed as soon as it is written,
 * so stdio buffers are empty when a test forks (nothing is printed twice).
 *
 * All functions are static inline: the header can be included by any test
 * without -Wmissing-prototypes or -Wunused-function warnings.
 */
#ifndef KM_TESTS_TAP_H
#define KM_TESTS_TAP_H

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define TAP__PRINTF(f, a) __attribute__((format(printf, f, a)))

/* One state per process image (each test program includes tap.h once). */
static struct {
    int planned;    /* -1: plan() not called */
    int run;        /* assertions made in the TAP process */
    int failed;     /* failures in this process (TAP process or helper) */
    pid_t tap_pid;  /* the process that prints TAP */
} tap__st = { -1, 0, 0, 0 };

static inline int tap__is_parent(void)
{
    return tap__st.tap_pid != 0 && getpid() == tap__st.tap_pid;
}

static inline void plan(int n)
{
    tap__st.planned = n;
    tap__st.tap_pid = getpid();
    printf("1..%d\n", n);
    fflush(stdout);
}

static inline TAP__PRINTF(1, 2) void diag(const char *fmt, ...)
{
    va_list ap;
    FILE *f = tap__is_parent() ? stdout : stderr;

    if (!tap__is_parent())
        fprintf(f, "# [child %ld] ", (long)getpid());
    else
        fputs("# ", f);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}

static inline TAP__PRINTF(1, 2) _Noreturn void bail_out(const char *fmt, ...)
{
    va_list ap;

    fflush(stderr);
    printf("Bail out! ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(255);
}

/* Records one result; `fmt`/`ap` name it.  Returns cond. */
static inline int tap__result(int cond, const char *file, int line,
                              const char *fmt, va_list ap)
{
    if (tap__is_parent()) {
        tap__st.run++;
        printf("%sok %d - ", cond ? "" : "not ", tap__st.run);
        vprintf(fmt, ap);
        printf("\n");
        fflush(stdout);
        if (!cond) {
            tap__st.failed++;
            fprintf(stderr, "#   Failed test at %s line %d.\n", file, line);
            fflush(stderr);
        }
    } else if (!cond) {
        tap__st.failed++;
        fprintf(stderr, "# [child %ld] not ok - ", (long)getpid());
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n#   at %s line %d.\n", file, line);
        fflush(stderr);
    }
    return cond;
}

static inline TAP__PRINTF(4, 5) int tap__ok(int cond, const char *file,
                                            int line, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    cond = tap__result(cond, file, line, fmt, ap);
    va_end(ap);
    return cond;
}

static inline void tap__got(const char *got, const char *expected)
{
    FILE *f = stderr;

    fprintf(f, "# got: %s expected: %s\n", got, expected);
    fflush(f);
}

static inline TAP__PRINTF(5, 6) int tap__is_int(long long got, long long exp,
                                                const char *file, int line,
                                                const char *fmt, ...)
{
    va_list ap;
    int cond = got == exp;
    char g[32], e[32];

    va_start(ap, fmt);
    tap__result(cond, file, line, fmt, ap);
    va_end(ap);
    if (!cond) {
        snprintf(g, sizeof g, "%lld", got);
        snprintf(e, sizeof e, "%lld", exp);
        tap__got(g, e);
    }
    return cond;
}

static inline TAP__PRINTF(5, 6) int tap__is_u64(uint64_t got, uint64_t exp,
                                                const char *file, int line,
                                                const char *fmt, ...)
{
    va_list ap;
    int cond = got == exp;
    char g[32], e[32];

    va_start(ap, fmt);
    tap__result(cond, file, line, fmt, ap);
    va_end(ap);
    if (!cond) {
        snprintf(g, sizeof g, "%" PRIu64, got);
        snprintf(e, sizeof e, "%" PRIu64, exp);
        tap__got(g, e);
    }
    return cond;
}

static inline TAP__PRINTF(5, 6) int tap__is_str(const char *got,
                                                const char *exp,
                                                const char *file, int line,
                                                const char *fmt, ...)
{
    va_list ap;
    int cond = (got == NULL || exp == NULL) ? got == exp : strcmp(got, exp) == 0;

    va_start(ap, fmt);
    tap__result(cond, file, line, fmt, ap);
    va_end(ap);
    if (!cond)
        tap__got(got ? got : "(null)", exp ? exp : "(null)");
    return cond;
}

static inline TAP__PRINTF(6, 7) int tap__cmp_u64(uint64_t got, const char *op,
                                                 uint64_t bound,
                                                 const char *file, int line,
                                                 const char *fmt, ...)
{
    va_list ap;
    int cond, known = 1;
    char g[32], e[48];

    if (strcmp(op, "<") == 0)
        cond = got < bound;
    else if (strcmp(op, "<=") == 0)
        cond = got <= bound;
    else if (strcmp(op, ">") == 0)
        cond = got > bound;
    else if (strcmp(op, ">=") == 0)
        cond = got >= bound;
    else if (strcmp(op, "==") == 0)
        cond = got == bound;
    else if (strcmp(op, "!=") == 0)
        cond = got != bound;
    else
        cond = known = 0; /* a typo in a test must not pass */
    va_start(ap, fmt);
    tap__result(cond, file, line, fmt, ap);
    va_end(ap);
    if (!cond) {
        snprintf(g, sizeof g, "%" PRIu64, got);
        snprintf(e, sizeof e, "%s %" PRIu64 "%s", op, bound,
                 known ? "" : " (unknown operator)");
        tap__got(g, e);
    }
    return cond;
}

#define ok(cond, ...) tap__ok((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)
#define is_int(got, exp, ...)                                                  \
    tap__is_int((long long)(got), (long long)(exp), __FILE__, __LINE__,        \
                __VA_ARGS__)
#define is_u64(got, exp, ...)                                                  \
    tap__is_u64((uint64_t)(got), (uint64_t)(exp), __FILE__, __LINE__,          \
                __VA_ARGS__)
#define is_str(got, exp, ...)                                                  \
    tap__is_str((got), (exp), __FILE__, __LINE__, __VA_ARGS__)
#define cmp_u64(got, op, bound, ...)                                           \
    tap__cmp_u64((uint64_t)(got), (op), (uint64_t)(bound), __FILE__, __LINE__, \
                 __VA_ARGS__)

/* Failures counted in this process (TAP process or forked helper). */
static inline int tap_failures(void)
{
    return tap__st.failed;
}

/* Exit status for main(): 0 only if every assertion passed and as many ran
 * as were planned.  Prints a summary line when it is not 0. */
static inline int exit_status(void)
{
    int rc = 0;

    if (tap__st.planned < 0) {
        printf("# no plan was declared\n");
        rc = 255;
    } else if (tap__st.run != tap__st.planned) {
        printf("# Looks like you planned %d tests but ran %d.\n",
               tap__st.planned, tap__st.run);
        rc = 255;
    }
    if (tap__st.failed) {
        printf("# Looks like you failed %d test%s of %d run.\n",
               tap__st.failed, tap__st.failed == 1 ? "" : "s", tap__st.run);
        if (rc == 0)
            rc = tap__st.failed < 254 ? tap__st.failed : 254;
    }
    fflush(stdout);
    return rc;
}

#endif /* KM_TESTS_TAP_H */
