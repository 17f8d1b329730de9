/*
 * src/tz.c - named time zones of budgets: a small reader of the system's
 * tzdata (TZif files, RFC 8536) and of the POSIX TZ rule in their footer,
 * and the offset in force at an instant or at a local time.
 *
 * Why our own.  glibc's localtime/mktime read the process-global TZ
 * environment: a library must not change it under its host.  And every
 * process attached to a segment must place a period's boundary the same
 * way without opening files on the settle path.  So a zone is read once,
 * at configuration time (creation, km_key_add, km_pool_add, km_pool_set,
 * restore), into a km__tzone row of the segment (src/layout.h): the
 * explicit changes the footer rule does not reproduce, from a year before
 * now, and the rule itself, which evaluates any later year.  Slim files
 * (few explicit changes, the rule from 2007 or so) and fat ones (changes
 * listed to 2037) give the same row: explicit changes that the rule
 * reproduces are dropped.
 *
 * Local times.  A period starts at a local midnight.  One that does not
 * exist (a change at 00:00 that skips forward, America/Santiago) starts
 * the period at the change itself: the first local instant after the gap.
 * One that occurs twice (a change that falls back across midnight) is the
 * first.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ck_pr.h>

#include "budget.h"
#include "internal.h"
#include "tz.h"
#include "tz.h"

#define DAY 86400
#define KM__DIGIT(ch) ((ch) >= '0' && (ch) <= '9')

/* The year of UTC second t. */
static int64_t year_of(int64_t t)
{
    int64_t y;
    unsigned m;
    km__civil_from_days((t >= 0 ? t : t - (DAY - 1)) / DAY, &y, &m);
    return y;
}

static int leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* Local seconds (since the epoch, as if UTC) of a rule date in year y. */
static int64_t rule_local(const km__tzdate *r, int64_t y)
{
    int64_t day;
    if (r->kind == 1)
        day = km__days_from_civil(y, 1, 1) + r->n - 1 + (leap(y) && r->n >= 60);
    else if (r->kind == 2)
        day = km__days_from_civil(y, 1, 1) + r->n;
    else { /* a row of the segment is read as it is: fields clamped */
        unsigned m = r->m >= 1 && r->m <= 12 ? r->m : 1, w = r->w >= 1 && r->w <= 5 ? r->w : 1;
        int64_t first = km__days_from_civil(y, m, 1);
        int wd = (int)(((first + 4) % 7 + 7) % 7); /* 1970-01-01: Thursday */
        day = first + (r->d % 7 - wd + 7) % 7 + 7 * (w - 1);
        static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        unsigned len = mdays[m - 1] + (m == 2 && leap(y));
        while (day >= first + len)
            day -= 7; /* week 5: the last such day */
    }
    return day * DAY + r->secs;
}

static int32_t rule_offset(const km__tzone *z, int64_t t)
{
    if (!z->has_dst)
        return z->std_off;
    int64_t y = year_of(t);
    int64_t s = rule_local(&z->start, y) - z->std_off;
    int64_t e = rule_local(&z->end, y) - z->dst_off;
    int dst = s < e ? (t >= s && t < e) : !(t >= e && t < s);
    return dst ? z->dst_off : z->std_off;
}

int32_t km__tz_offset(const km__tzone *z, int64_t t)
{
    if (t >= z->rule_from)
        return rule_offset(z, t);
    uint32_t n = z->n_trans < KM__TZ_TRANS ? z->n_trans : KM__TZ_TRANS;
    int32_t off = z->base_off;
    for (uint32_t i = 0; i < n && z->at[i] <= t; i++)
        off = z->off[i];
    return off;
}

int64_t km__tz_utc(const km__tzone *z, int64_t local)
{
    int32_t ob = km__tz_offset(z, local - DAY), oa = km__tz_offset(z, local + DAY);
    int64_t u1 = local - ob, u2 = local - oa;
    int v1 = u1 + km__tz_offset(z, u1) == local, v2 = u2 + km__tz_offset(z, u2) == local;
    if (v1 && v2)
        return u1 < u2 ? u1 : u2; /* twice: the first */
    if (v1 || v2)
        return v1 ? u1 : u2;
    /* In a gap: the change itself, the first instant whose local time is
     * past `local` (between u2 and u1 when clocks went forward). */
    int64_t lo = u1 < u2 ? u1 : u2, hi = u1 < u2 ? u2 : u1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (mid + km__tz_offset(z, mid) > local)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* ------------------------------------------------------- POSIX TZ rule */

static const char *p_name(const char *p)
{
    if (*p == '<') {
        while (*p && *p != '>')
            p++;
        return *p ? p + 1 : NULL;
    }
    const char *q = p;
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
        p++;
    return p - q >= 3 ? p : NULL;
}

/* [+-]hh[:mm[:ss]], hours up to `maxh`. */
static const char *p_time(const char *p, int maxh, int32_t *out)
{
    int sign = 1, v[3] = {0, 0, 0};
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    for (int i = 0; i < 3; i++) {
        if (i && *p != ':')
            break;
        if (i)
            p++;
        if (!KM__DIGIT(*p))
            return NULL;
        int n = 0, digits = 0;
        while (KM__DIGIT(*p) && digits < 3)
            n = n * 10 + (*p++ - '0'), digits++;
        v[i] = n;
    }
    if (v[0] > maxh || v[1] > 59 || v[2] > 59)
        return NULL;
    *out = sign * (v[0] * 3600 + v[1] * 60 + v[2]);
    return p;
}

static const char *p_num(const char *p, int lo, int hi, int *out)
{
    int n = 0, digits = 0;
    while (KM__DIGIT(*p) && digits < 3)
        n = n * 10 + (*p++ - '0'), digits++;
    if (!digits || n < lo || n > hi)
        return NULL;
    *out = n;
    return p;
}

static const char *p_date(const char *p, km__tzdate *d)
{
    int a, b, c;
    memset(d, 0, sizeof(*d));
    if (*p == 'M') {
        if (!(p = p_num(p + 1, 1, 12, &a)) || *p != '.' || !(p = p_num(p + 1, 1, 5, &b)) ||
            *p != '.' || !(p = p_num(p + 1, 0, 6, &c)))
            return NULL;
        d->kind = 3, d->m = (uint8_t)a, d->w = (uint8_t)b, d->d = (uint8_t)c;
    } else if (*p == 'J') {
        if (!(p = p_num(p + 1, 1, 365, &a)))
            return NULL;
        d->kind = 1, d->n = (uint16_t)a;
    } else {
        if (!(p = p_num(p, 0, 365, &a)))
            return NULL;
        d->kind = 2, d->n = (uint16_t)a;
    }
    d->secs = 7200;
    if (*p == '/' && !(p = p_time(p + 1, 167, &d->secs)))
        return NULL;
    return p;
}

/* "CET-1CEST,M3.5.0,M10.5.0/3" into z's rule; 0 or -1. */
int km__tz_rule(const char *s, km__tzone *z)
{
    const char *p = p_name(s);
    int32_t o;
    if (!p || !(p = p_time(p, 24, &o)))
        return -1;
    z->std_off = -o; /* POSIX counts west */
    z->dst_off = z->std_off;
    z->has_dst = 0;
    if (!*p)
        return 0;
    if (!(p = p_name(p)))
        return -1;
    z->dst_off = z->std_off + 3600;
    if (*p && *p != ',') {
        if (!(p = p_time(p, 24, &o)))
            return -1;
        z->dst_off = -o;
    }
    z->has_dst = 1;
    if (!*p) { /* no rule: POSIX's default, the US one */
        p = ",M3.2.0,M11.1.0";
    }
    if (*p != ',' || !(p = p_date(p + 1, &z->start)) || *p != ',' ||
        !(p = p_date(p + 1, &z->end)) || *p)
        return -1;
    return 0;
}

/* ------------------------------------------------------------- TZif */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

#define BAD(...) ((err && errlen ? snprintf(err, errlen, __VA_ARGS__) : 0), KM_ECONFIG)

/* Parse TZif data `b` (n bytes) of zone `z->name` read from `path`. */
static int parse_tzif(const unsigned char *b, size_t n, const char *path, int64_t now,
                      km__tzone *z, char *err, size_t errlen)
{
    if (n < 44 || memcmp(b, "TZif", 4))
        return BAD("%.200s: not a TZif file (bad magic)", path);
    if (b[4] < '2')
        return BAD("%.200s: TZif version 1 only; this version reads version 2 or later", path);
    /* Skip the v1 block: its counts, then its data. */
    uint32_t c[6];
    for (int i = 0; i < 6; i++)
        c[i] = be32(b + 20 + 4 * i);
    size_t skip = 44 + (size_t)c[3] * 5 + (size_t)c[4] * 6 + c[5] + (size_t)c[2] * 8 + c[1] + c[0];
    if (skip + 44 > n || memcmp(b + skip, "TZif", 4))
        return BAD("%.200s: truncated TZif file (no version 2 header)", path);
    const unsigned char *h = b + skip;
    uint32_t isut = be32(h + 20), isstd = be32(h + 24), leapcnt = be32(h + 28),
             timecnt = be32(h + 32), typecnt = be32(h + 36), charcnt = be32(h + 40);
    if (typecnt == 0 || typecnt > 256 || timecnt > 100000 || charcnt > 100000 || leapcnt > 100000)
        return BAD("%.200s: malformed TZif file (counts)", path);
    size_t body = (size_t)timecnt * 9 + (size_t)typecnt * 6 + charcnt + (size_t)leapcnt * 12 +
                  isstd + isut;
    const unsigned char *t = h + 44;
    if ((size_t)(t - b) + body > n)
        return BAD("%.200s: truncated TZif file", path);
    const unsigned char *idx = t + (size_t)timecnt * 8, *types = idx + timecnt;
    int32_t toff[256];
    for (uint32_t i = 0; i < typecnt; i++) {
        toff[i] = (int32_t)be32(types + 6 * i);
        if (toff[i] < -25 * 3600 || toff[i] > 26 * 3600)
            return BAD("%.200s: malformed TZif file (offset)", path);
    }
    for (uint32_t i = 0; i < timecnt; i++)
        if (idx[i] >= typecnt || (i && be64(t + 8 * i) <= be64(t + 8 * (i - 1))))
            return BAD("%.200s: malformed TZif file (transitions)", path);
    /* The footer: "\n" rule "\n". */
    const unsigned char *f = t + body;
    char rule[128] = "";
    if (f < b + n) {
        const unsigned char *e = memchr(f + 1, '\n', (size_t)(b + n - f - 1));
        if (*f != '\n' || !e || (size_t)(e - f - 1) >= sizeof rule)
            return BAD("%.200s: malformed TZif footer", path);
        memcpy(rule, f + 1, (size_t)(e - f - 1));
        rule[e - f - 1] = 0;
    }
    int64_t last = timecnt ? be64(t + 8 * (timecnt - 1)) : INT64_MIN;
    if (rule[0]) {
        if (km__tz_rule(rule, z))
            return BAD("%.200s: TZ rule \"%.64s\" in the footer is not one this version reads",
                       path, rule);
    } else { /* no rule: the last offset for ever */
        z->std_off = z->dst_off = timecnt ? toff[idx[timecnt - 1]] : toff[0];
        z->has_dst = 0;
    }
    /* The explicit changes the rule does not reproduce: from the first k on,
     * every change has the rule's offsets before and after it. */
    uint32_t k = timecnt;
    while (k > 0) {
        int64_t at = be64(t + 8 * (k - 1));
        int32_t after = toff[idx[k - 1]], before = k > 1 ? toff[idx[k - 2]] : toff[0];
        if (rule_offset(z, at) != after || rule_offset(z, at - 1) != before)
            break;
        k--;
    }
    z->rule_from = k < timecnt ? be64(t + 8 * k) : last;
    if (k == 0 && timecnt == 0)
        z->rule_from = INT64_MIN;
    /* Keep those after a year before now (and the offset in force then). */
    int64_t lo = now - 366 * (int64_t)DAY;
    uint32_t s = 0;
    while (s < k && be64(t + 8 * s) <= lo)
        s++;
    z->base_off = s ? toff[idx[s - 1]] : toff[0];
    if (k - s > KM__TZ_TRANS)
        return BAD("%.200s: %u changes of offset the zone's rule does not give; this version keeps "
                   "%d", path, k - s, KM__TZ_TRANS);
    z->n_trans = k - s;
    for (uint32_t i = s; i < k; i++) {
        z->at[i - s] = be64(t + 8 * i);
        z->off[i - s] = toff[idx[i]];
    }
    return KM_OK;
}

int km__tz_load(const char *name, int64_t now, km__tzone *z, char *err, size_t errlen)
{
    memset(z, 0, sizeof(*z));
    size_t len = strlen(name);
    if (len == 0 || len > KM__TZ_NAME_MAX || name[0] == '/' || strstr(name, ".."))
        return BAD("time zone \"%.64s\": a name from the tz database such as Europe/Paris "
                   "(no leading '/', no '..', at most %d characters)", name, KM__TZ_NAME_MAX);
    for (const char *p = name; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || KM__DIGIT(*p) ||
              strchr("/_-+", *p)))
            return BAD("time zone \"%.64s\": a name from the tz database such as Europe/Paris",
                       name);
    const char *dir = getenv("TZDIR");
    if (!dir || !*dir)
        dir = "/usr/share/zoneinfo";
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return BAD("time zone \"%.64s\": path too long", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ELOOP) /* tzdata links some names */
        fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return BAD("time zone \"%.64s\": %.200s: %s (is tzdata installed? TZDIR names another "
                   "directory)", name, path, strerror(errno));
    struct stat st;
    unsigned char *buf = NULL;
    int rc = KM_OK;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size > (1 << 20))
        rc = BAD("time zone \"%.64s\": %.200s: not a TZif file", name, path);
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        rc = KM_ENOMEM;
    else {
        size_t got = 0;
        while (got < (size_t)st.st_size) {
            ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        snprintf(z->name, sizeof z->name, "%s", name);
        char e2[400];
        if ((rc = parse_tzif(buf, got, path, now, z, e2, sizeof e2)) == KM_ECONFIG && err &&
            errlen)
            snprintf(err, errlen, "time zone \"%.64s\": %.300s", name, e2);
    }
    free(buf);
    close(fd);
    return rc;
}

/* ------------------------------------------------ the segment's table */

const km__tzone *km__tz_table(const km_env *e)
{
    uint64_t off[KM__OFF_N];
    km__layout(e->geom.cap_keys, e->geom.cap_pools, e->geom.cap_procs, e->geom.cap_inflight,
               e->geom.cap_models, e->geom.cap_usage, off);
    return (const km__tzone *)KM__AT(e->seg.base, off[KM__OFF_TZ]);
}

int km__tz_bind(km_env *e, const char *name, int32_t tz_min, int32_t *code, char *err,
                size_t errlen)
{
    if (!name || !*name) {
        *code = tz_min;
        return KM_OK;
    }
    km__tzone *t = (km__tzone *)(uintptr_t)km__tz_table(e);
    uint32_t i;
    for (i = 0; i < KM__TZ_ZONES && ck_pr_load_32(&t[i].used); i++)
        if (!strncmp(t[i].name, name, sizeof t[i].name)) {
            *code = KM__TZ_NAMED + (int32_t)i;
            return KM_OK;
        }
    if (i == KM__TZ_ZONES)
        return BAD("time zone \"%.64s\": the segment's budgets already name %d zones, all it "
                   "keeps", name, KM__TZ_ZONES);
    km__tzone z;
    int rc = km__tz_load(name, (int64_t)(km__wall_ns() / KM__NS_PER_S), &z, err, errlen);
    if (rc != KM_OK)
        return rc;
    /* Row i is not in use: nobody reads it.  Its words, then `used`. */
    z.used = 0;
    memcpy(&t[i], &z, sizeof(z));
    /* Orders the row's words before `used`, and `used` before the store of
     * any budget code that names it (the caller's, after this returns). */
    ck_pr_fence_store();
    ck_pr_store_32(&t[i].used, 1);
    ck_pr_fence_store();
    *code = KM__TZ_NAMED + (int32_t)i;
    return KM_OK;
}

const km__tzone *km__tz_zone(const km__tzone *table, int32_t code)
{
    if (!table || code < KM__TZ_NAMED || code >= KM__TZ_NAMED + KM__TZ_ZONES)
        return NULL;
    /* Pairs with km__tz_bind's fence: the code was read before the row. */
    ck_pr_fence_load();
    const km__tzone *z = &table[code - KM__TZ_NAMED];
    return ck_pr_load_32(&z->used) ? z : NULL;
}

int32_t km__tz_code(const km_env *e, const char *name, int32_t tz_min)
{
    if (!name[0])
        return tz_min;
    for (uint32_t i = 0; i < KM__TZ_ZONES; i++)
        if (ck_pr_load_32(&e->tzt[i].used) && !strncmp(e->tzt[i].name, name, sizeof e->tzt[i].name))
            return KM__TZ_NAMED + (int32_t)i;
    return 0; /* not bound (km__tz_bind_config first): UTC */
}

int km__tz_bind_config(km_env *e, const km_config *cfg, char *err, size_t errlen)
{
    int32_t code;
    int rc = KM_OK;
    for (uint32_t p = 0; p < cfg->n_pools && rc == KM_OK; p++)
        rc = km__tz_bind(e, cfg->pools[p].budget_tz, 0, &code, err, errlen);
    for (uint32_t k = 0; k < cfg->n_keys && rc == KM_OK; k++)
        rc = km__tz_bind(e, cfg->keys[k].budget_tz, 0, &code, err, errlen);
    return rc;
}
