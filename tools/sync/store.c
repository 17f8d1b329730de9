/*
 * tools/sync/store.c - the fleet ledger's client (see store.h).
 *
 * Error handling.  Every reply is checked for type and shape before a field
 * is read; a reply that does not match is KMS_EPROTO (or KMS_EVERSION when
 * it is a well-formed reply of another ledger version) and nothing of it
 * reaches the caller: kms_sync parses into scratch memory and moves it into
 * *r only when the whole reply passed.  hiredis leaves a context unusable
 * after an I/O or protocol error; such a context is freed at once and the
 * next call connects again.
 */
#include "store.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <sodium.h>

/* The ledger's text, embedded at build time from tools/sync/ledger.lua
 * (sync.mk). */
extern const unsigned char kms__ledger_lua[];
extern const unsigned long kms__ledger_lua_len;

#define KMS__LIB_NAME "keymesh_ledger"
#define KMS__PROTO "KMS1"
#define KMS__SPLIT "\n--@@ functions"
#define KMS__EVAL_TAIL "\nreturn dispatch(KEYS, ARGV, false)\n"
#define KMS__REPLY_FIELDS 9
#define KMS__GRANT_FIELDS 8

struct kms_store {
    kms_url url;
    char *password;
    char fleet[KMS_ID_MAX + 1];
    char key_ledger[KMS_ID_MAX + 32], key_hosts[KMS_ID_MAX + 32];
    unsigned connect_ms, io_ms;
    redisContext *c;
    int mode;     /* 0 unknown, 1 function, 2 script */
    char sha[41]; /* script mode: SHA1 of the script */
};

/* ---------------------------------------------------------------- errors */

const char *kms_strerror(int err)
{
    switch (err) {
    case KMS_OK:
        return "success";
#define KMS__ERR_MSG(name, val, msg) \
    case KMS_##name:                 \
        return msg;
        KMS_ERRNO_MAP(KMS__ERR_MSG)
#undef KMS__ERR_MSG
    default:
        return "unknown error";
    }
}

const char *kms_err_name(int err)
{
    switch (err) {
    case KMS_OK:
        return "OK";
#define KMS__ERR_NAME(name, val, msg) \
    case KMS_##name:                  \
        return #name;
        KMS_ERRNO_MAP(KMS__ERR_NAME)
#undef KMS__ERR_NAME
    default:
        return "UNKNOWN";
    }
}

static int __attribute__((format(printf, 4, 5)))
kms__fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* "store HOST:PORT" for messages. */
static const char *kms__where(const kms_store *s, char buf[300])
{
    snprintf(buf, 300, strchr(s->url.host, ':') ? "store [%s]:%u" : "store %s:%u",
             s->url.host, s->url.port);
    return buf;
}

/* ------------------------------------------------------- the ledger text */

static int kms__version_of(const char *text, size_t len)
{
    static const char tag[] = "local LEDGER_VERSION = ";
    for (size_t i = 0; i + sizeof tag - 1 < len; i++) {
        if ((i == 0 || text[i - 1] == '\n') && memcmp(text + i, tag, sizeof tag - 1) == 0) {
            int v = 0;
            for (size_t j = i + sizeof tag - 1; j < len && isdigit((unsigned char)text[j]); j++)
                v = v * 10 + (text[j] - '0');
            return v;
        }
    }
    return -1;
}

int kms_client_version(void)
{
    return kms__version_of((const char *)kms__ledger_lua, kms__ledger_lua_len);
}

/* The EVALSHA form: without the "#!lua" line and the registrations. */
static char *kms__script_text(size_t *len)
{
    const char *t = (const char *)kms__ledger_lua;
    const char *nl = memchr(t, '\n', kms__ledger_lua_len);
    const char *end = NULL;
    if (!nl)
        return NULL;
    for (const char *p = nl; p + sizeof KMS__SPLIT - 1 <= t + kms__ledger_lua_len; p++)
        if (memcmp(p, KMS__SPLIT, sizeof KMS__SPLIT - 1) == 0) {
            end = p;
            break;
        }
    if (!end)
        return NULL;
    size_t body = (size_t)(end - (nl + 1));
    char *out = malloc(body + sizeof KMS__EVAL_TAIL);
    if (!out)
        return NULL;
    memcpy(out, nl + 1, body);
    memcpy(out + body, KMS__EVAL_TAIL, sizeof KMS__EVAL_TAIL);
    *len = body + sizeof KMS__EVAL_TAIL - 1;
    return out;
}

/* ------------------------------------------------------------------- URL */

static int kms__id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > KMS_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

static int kms__uint(const char *s, size_t n, unsigned long max, unsigned *out)
{
    unsigned long v = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int kms_url_parse(const char *url, kms_url *out, char *err, size_t errlen)
{
    static const char scheme[] = "redis://";
    kms_url u = {.port = 6379};

    if (!url || !out)
        return kms__fail(KMS_EINVAL, err, errlen, "no store URL");
    if (strncmp(url, scheme, sizeof scheme - 1) != 0)
        return kms__fail(KMS_EURL, err, errlen,
                         "store URL must start with redis:// (redis://HOST:PORT[/DB])");
    const char *p = url + sizeof scheme - 1;
    const char *slash = strchr(p, '/');
    const char *auth_end = NULL;
    for (const char *q = p; *q && q != slash; q++)
        if (*q == '@')
            auth_end = q;
    if (auth_end) {
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        if (colon)
            return kms__fail(KMS_EURL, err, errlen,
                             "store URL must not hold a password: give it in an environment "
                             "variable or a file (--store-password-env, --store-password-file)");
        size_t n = (size_t)(auth_end - p);
        if (n == 0 || n > KMS_ID_MAX)
            return kms__fail(KMS_EURL, err, errlen, "store URL: bad user name");
        memcpy(u.user, p, n);
        u.user[n] = '\0';
        if (!kms__id_ok(u.user))
            return kms__fail(KMS_EURL, err, errlen, "store URL: bad user name");
        p = auth_end + 1;
    }
    const char *hend;
    const char *h0 = p;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (!hend || (slash && hend > slash))
            return kms__fail(KMS_EURL, err, errlen, "store URL: unterminated [IPv6] host");
        h0 = p + 1;
        p = hend + 1;
    } else {
        hend = p;
        while (*hend && *hend != ':' && *hend != '/')
            hend++;
        p = hend;
    }
    size_t hn = (size_t)(hend - h0);
    if (hn == 0 || hn >= sizeof u.host)
        return kms__fail(KMS_EURL, err, errlen, "store URL: no host");
    memcpy(u.host, h0, hn);
    u.host[hn] = '\0';
    for (size_t i = 0; i < hn; i++)
        if (!(isalnum((unsigned char)u.host[i]) || strchr(".-_:", u.host[i])))
            return kms__fail(KMS_EURL, err, errlen, "store URL: bad character in host");
    if (*p == ':') {
        p++;
        size_t n = strcspn(p, "/");
        if (kms__uint(p, n, 65535, &u.port) != 0 || u.port == 0)
            return kms__fail(KMS_EURL, err, errlen, "store URL: port must be 1-65535");
        p += n;
    }
    if (*p == '/') {
        p++;
        size_t n = strlen(p);
        if (n > 0 && kms__uint(p, n, 1000000, &u.db) != 0)
            return kms__fail(KMS_EURL, err, errlen, "store URL: database must be a number");
        p += n;
    }
    if (*p)
        return kms__fail(KMS_EURL, err, errlen, "store URL: unexpected text after the host");
    *out = u;
    return KMS_OK;
}

/* -------------------------------------------------------------- password */

void kms_password_free(char *pw)
{
    if (pw) {
        sodium_memzero(pw, strlen(pw));
        free(pw);
    }
}

int kms_password_load(const char *env, const char *file, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (env && *env) {
        const char *v = getenv(env);
        if (v && *v) {
            if (!(*out = strdup(v)))
                return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
            return KMS_OK;
        }
    }
    if (!file || !*file)
        return KMS_OK;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return kms__fail(KMS_EPASSWORD, err, errlen, "store password file %s: %s", file,
                         strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kms__fail(KMS_EPASSWORD, err, errlen, "store password file %s: not a regular file",
                         file);
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        return kms__fail(KMS_EPASSWORD, err, errlen,
                         "store password file %s is accessible by group or others (mode %04o): "
                         "chmod 600 it",
                         file, (unsigned)(st.st_mode & 07777));
    }
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n < 0)
        return kms__fail(KMS_EPASSWORD, err, errlen, "store password file %s: %s", file,
                         strerror(e));
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    int rc = KMS_OK;
    if (buf[0] == '\0')
        rc = kms__fail(KMS_EPASSWORD, err, errlen, "store password file %s is empty", file);
    else if (!(*out = strdup(buf)))
        rc = kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    sodium_memzero(buf, sizeof buf);
    return rc;
}

int kms_fleet_id(const char *pool, const char *key_id, char out[KMS_ID_MAX + 1])
{
    unsigned char h[16];
    crypto_generichash_state st;
    static const unsigned char nul = 0;

    if (!pool || !key_id || sodium_init() < 0)
        return KMS_EINVAL;
    crypto_generichash_init(&st, (const unsigned char *)"keymesh-fleet-id", 16, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)pool, strlen(pool));
    crypto_generichash_update(&st, &nul, 1);
    crypto_generichash_update(&st, (const unsigned char *)key_id, strlen(key_id));
    crypto_generichash_final(&st, h, sizeof h);
    out[0] = 'k';
    sodium_bin2hex(out + 1, KMS_ID_MAX, h, sizeof h);
    return KMS_OK;
}

void kms_kid(const char *pool, const char *key_id, const char *fleet_id, const char *model,
                   char out[KMS_ID_MAX + 1])
{
    char base[KMS_ID_MAX + 1], mh[KMS_ID_MAX + 1];
    if (fleet_id && fleet_id[0])
        snprintf(base, sizeof base, "%s", fleet_id);
    else if (kms_fleet_id(pool, key_id, base) != KMS_OK)
        snprintf(base, sizeof base, "k-invalid");
    if (!model || !model[0]) {
        snprintf(out, KMS_ID_MAX + 1, "%s", base);
        return;
    }
    /* Per-model windows: "<kid>.m<16 hex of the model name's hash>". */
    if (kms_fleet_id(base, model, mh) != KMS_OK)
        snprintf(mh, sizeof mh, "k0000000000000000");
    snprintf(out, KMS_ID_MAX + 1, "%.46s.m%.16s", base, mh + 1);
}

void kms_pool_bid(const char *pool, char out[KMS_ID_MAX + 1])
{
    if (kms_fleet_id(pool, "", out) != KMS_OK)
        snprintf(out, KMS_ID_MAX + 1, "p-invalid");
    else
        out[0] = 'p';
}

/* ------------------------------------------------------------ connection */

static void kms__drop(kms_store *s)
{
    if (s->c) {
        redisFree(s->c);
        s->c = NULL;
    }
}

/* A hiredis failure on s->c as an error code and message; drops the
 * connection (hiredis cannot use it again). */
static int kms__io_error(kms_store *s, int saved_errno, const char *what, char *err, size_t errlen)
{
    char w[300];
    int rc;
    kms__where(s, w);
    if (!s->c)
        rc = kms__fail(KMS_ENOMEM, err, errlen, "%s: %s: out of memory", w, what);
    else if (s->c->err == REDIS_ERR_EOF)
        rc = kms__fail(KMS_EIO, err, errlen,
                       "%s: %s: the store closed the connection (reply cut short, or server gone)",
                       w, what);
    else if (s->c->err == REDIS_ERR_PROTOCOL)
        rc = kms__fail(KMS_EPROTO, err, errlen, "%s: %s: invalid reply (protocol error: %s)", w,
                       what, s->c->errstr);
    else if (s->c->err == REDIS_ERR_IO &&
             (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT))
        rc = kms__fail(KMS_ETIMEOUT, err, errlen, "%s: %s: no reply within %u ms", w, what,
                       s->io_ms);
    else
        rc = kms__fail(KMS_EIO, err, errlen, "%s: %s: %s", w, what, s->c->errstr);
    kms__drop(s);
    return rc;
}

/* Run one command.  Returns the reply, or NULL with *rc and err set.
 * An error reply is returned as a reply (callers look at its text). */
static redisReply *kms__cmd(kms_store *s, int argc, const char **argv, const size_t *lens,
                            const char *what, int *rc, char *err, size_t errlen)
{
    errno = 0;
    redisReply *r = redisCommandArgv(s->c, argc, argv, lens);
    int e = errno;
    if (!r) {
        *rc = kms__io_error(s, e, what, err, errlen);
        return NULL;
    }
    return r;
}

static int kms__is_err(const redisReply *r, const char *prefix)
{
    return r->type == REDIS_REPLY_ERROR && r->str &&
           strncmp(r->str, prefix, strlen(prefix)) == 0;
}

/* An error reply every command can get: authentication missing. */
static int kms__common_error(kms_store *s, const redisReply *r, const char *what, char *err,
                             size_t errlen)
{
    char w[300];
    kms__where(s, w);
    if (kms__is_err(r, "NOAUTH"))
        return kms__fail(KMS_EAUTH, err, errlen,
                         "%s: %s: the store requires a password (give it with "
                         "--store-password-env or --store-password-file)",
                         w, what);
    if (kms__is_err(r, "WRONGPASS"))
        return kms__fail(KMS_EAUTH, err, errlen, "%s: %s: wrong password", w, what);
    return 0;
}

static int kms__auth(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    const char *argv[3];
    size_t lens[3];
    int argc = 0, rc = KMS_OK;

    if (!s->password)
        return KMS_OK;
    argv[argc] = "AUTH";
    lens[argc++] = 4;
    if (s->url.user[0]) {
        argv[argc] = s->url.user;
        lens[argc++] = strlen(s->url.user);
    }
    argv[argc] = s->password;
    lens[argc++] = strlen(s->password);
    redisReply *r = kms__cmd(s, argc, argv, lens, "AUTH", &rc, err, errlen);
    if (!r)
        return rc;
    kms__where(s, w);
    if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0)
        rc = KMS_OK;
    else if (kms__is_err(r, "WRONGPASS") || kms__is_err(r, "ERR invalid password"))
        rc = kms__fail(KMS_EAUTH, err, errlen,
                       s->url.user[0] ? "%s: authentication failed: wrong password for user %s"
                                      : "%s: authentication failed: wrong password%s",
                       w, s->url.user);
    else if (kms__is_err(r, "ERR AUTH") || kms__is_err(r, "ERR Client sent AUTH"))
        rc = kms__fail(KMS_EAUTH, err, errlen,
                       "%s: authentication failed: a password was given but the store has "
                       "none configured",
                       w);
    else if (r->type == REDIS_REPLY_ERROR)
        rc = kms__fail(KMS_EAUTH, err, errlen, "%s: authentication failed: %.200s", w, r->str);
    else
        rc = kms__fail(KMS_EPROTO, err, errlen, "%s: AUTH: unexpected reply type %d", w, r->type);
    freeReplyObject(r);
    if (rc != KMS_OK)
        kms__drop(s);
    return rc;
}

static int kms__connect(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    struct timeval ct = {(time_t)(s->connect_ms / 1000), (suseconds_t)(s->connect_ms % 1000) * 1000};
    struct timeval io = {(time_t)(s->io_ms / 1000), (suseconds_t)(s->io_ms % 1000) * 1000};
    int rc = KMS_OK;

    if (s->c)
        return KMS_OK;
    kms__where(s, w);
    errno = 0;
    s->c = redisConnectWithTimeout(s->url.host, (int)s->url.port, ct);
    int e = errno;
    if (!s->c)
        return kms__fail(KMS_ENOMEM, err, errlen, "%s: out of memory", w);
    if (s->c->err) {
        if (e == ETIMEDOUT || e == EINPROGRESS || strstr(s->c->errstr, "timed out"))
            rc = kms__fail(KMS_ETIMEOUT, err, errlen,
                           "%s: unreachable: no connection within %u ms", w, s->connect_ms);
        else
            rc = kms__fail(KMS_ECONNECT, err, errlen, "%s: unreachable: %s", w, s->c->errstr);
        kms__drop(s);
        return rc;
    }
    if (redisSetTimeout(s->c, io) != REDIS_OK) {
        rc = kms__fail(KMS_ECONNECT, err, errlen, "%s: cannot set the I/O timeout", w);
        kms__drop(s);
        return rc;
    }
    if ((rc = kms__auth(s, err, errlen)) != KMS_OK)
        return rc;
    if (s->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%u", s->url.db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        redisReply *r = kms__cmd(s, 2, argv, lens, "SELECT", &rc, err, errlen);
        if (!r)
            return rc;
        if ((rc = kms__common_error(s, r, "SELECT", err, errlen)) == 0 &&
            !(r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0))
            rc = kms__fail(KMS_ECONNECT, err, errlen, "%s: SELECT %u: %.200s", w, s->url.db,
                           r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        if (rc != KMS_OK)
            kms__drop(s);
    }
    return rc;
}

/* --------------------------------------------------------- ledger loading */

/* Call the ledger: FCALL <fn> or EVALSHA, 2 keys, then argv.  The reply
 * (possibly an error reply) goes to *out. */
static int kms__call(kms_store *s, const char *fn, int argc, const char **argv, const size_t *lens,
                     redisReply **out, char *err, size_t errlen)
{
    int n = argc + 5, rc = KMS_OK;
    const char **av = malloc(sizeof *av * (size_t)n);
    size_t *al = malloc(sizeof *al * (size_t)n);
    if (!av || !al) {
        free(av);
        free(al);
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    }
    av[0] = s->mode == 2 ? "EVALSHA" : "FCALL";
    av[1] = s->mode == 2 ? s->sha : fn;
    av[2] = "2";
    av[3] = s->key_ledger;
    av[4] = s->key_hosts;
    for (int i = 0; i < 5; i++)
        al[i] = strlen(av[i]);
    memcpy(av + 5, argv, sizeof *av * (size_t)argc);
    memcpy(al + 5, lens, sizeof *al * (size_t)argc);
    *out = kms__cmd(s, n, av, al, s->mode == 2 ? "EVALSHA" : "FCALL", &rc, err, errlen);
    free(av);
    free(al);
    return *out ? KMS_OK : rc;
}

static int kms__load_function(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    int rc = KMS_OK;
    const char *argv[4] = {"FUNCTION", "LOAD", "REPLACE", (const char *)kms__ledger_lua};
    size_t lens[4] = {8, 4, 7, kms__ledger_lua_len};
    redisReply *r = kms__cmd(s, 4, argv, lens, "FUNCTION LOAD", &rc, err, errlen);
    if (!r)
        return rc;
    kms__where(s, w);
    if ((rc = kms__common_error(s, r, "FUNCTION LOAD", err, errlen)) == 0) {
        if (r->type == REDIS_REPLY_STRING && strcmp(r->str, KMS__LIB_NAME) == 0)
            rc = KMS_OK;
        else
            rc = kms__fail(KMS_ELEDGER, err, errlen, "%s: FUNCTION LOAD: %.300s", w,
                           r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    }
    freeReplyObject(r);
    return rc;
}

static int kms__load_script(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    int rc = KMS_OK;
    size_t len;
    char *text = kms__script_text(&len);
    if (!text)
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory (or a damaged embedded ledger)");
    const char *argv[3] = {"SCRIPT", "LOAD", text};
    size_t lens[3] = {6, 4, len};
    redisReply *r = kms__cmd(s, 3, argv, lens, "SCRIPT LOAD", &rc, err, errlen);
    free(text);
    if (!r)
        return rc;
    kms__where(s, w);
    if ((rc = kms__common_error(s, r, "SCRIPT LOAD", err, errlen)) == 0) {
        if (r->type == REDIS_REPLY_STRING && r->len == 40) {
            memcpy(s->sha, r->str, 40);
            s->sha[40] = '\0';
            rc = KMS_OK;
        } else {
            rc = kms__fail(KMS_ELEDGER, err, errlen, "%s: SCRIPT LOAD: %.300s", w,
                           r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        }
    }
    freeReplyObject(r);
    return rc;
}

/* Ask the loaded ledger its version.  *v = -1: none loaded (function not
 * found).  Sets s->mode to 2 if FUNCTION is unknown to the store. */
static int kms__probe(kms_store *s, int *v, char *err, size_t errlen)
{
    char w[300];
    int rc;
    redisReply *r;
    const char *argv[1] = {"version"};
    size_t lens[1] = {7};

    *v = -1;
    if (s->mode == 2) {
        if (!s->sha[0])
            return KMS_OK;
        if ((rc = kms__call(s, NULL, 1, argv, lens, &r, err, errlen)) != KMS_OK)
            return rc;
    } else {
        const char *fa[4] = {"FCALL", "km_ledger_ro", "0", "version"};
        size_t fl[4] = {5, 12, 1, 7};
        if (!(r = kms__cmd(s, 4, fa, fl, "FCALL", &rc, err, errlen)))
            return rc;
    }
    kms__where(s, w);
    rc = kms__common_error(s, r, "ledger version", err, errlen);
    if (rc == 0) {
        if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0 && r->integer < 1000000) {
            *v = (int)r->integer;
            if (s->mode == 0)
                s->mode = 1;
        } else if (kms__is_err(r, "ERR Function not found") || kms__is_err(r, "NOSCRIPT")) {
            if (s->mode == 0)
                s->mode = 1; /* FCALL is known: Redis >= 7 */
            *v = -1;
        } else if (kms__is_err(r, "ERR unknown command")) {
            s->mode = 2; /* Redis 6: no FUNCTION, no FCALL */
            *v = -1;
        } else {
            rc = kms__fail(KMS_EPROTO, err, errlen, "%s: ledger version: %.300s", w,
                           r->type == REDIS_REPLY_ERROR ? r->str : "not an integer");
        }
    }
    freeReplyObject(r);
    return rc;
}

static int kms__reload(kms_store *s, char *err, size_t errlen);

/* Make sure this client's ledger is the one in the store. */
static int kms__ensure(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    int v, rc, mine = kms_client_version();

    kms__where(s, w);
    if ((rc = kms__probe(s, &v, err, errlen)) != KMS_OK)
        return rc;
    if (v > mine)
        return kms__fail(KMS_EVERSION, err, errlen,
                         "%s: the store runs ledger version %d, newer than this agent's %d: "
                         "upgrade this agent (the ledger is not downgraded)",
                         w, v, mine);
    if (v == mine)
        return KMS_OK;
    return kms__reload(s, err, errlen);
}

/* Load this client's ledger (function or script, by mode) and check that
 * the store now runs it. */
static int kms__reload(kms_store *s, char *err, size_t errlen)
{
    char w[300];
    int v, rc, mine = kms_client_version();

    kms__where(s, w);
    if (s->mode != 2) {
        rc = kms__load_function(s, err, errlen);
        if (rc != KMS_OK)
            return rc;
        s->mode = 1;
    } else if ((rc = kms__load_script(s, err, errlen)) != KMS_OK) {
        return rc;
    }
    if ((rc = kms__probe(s, &v, err, errlen)) != KMS_OK)
        return rc;
    if (v != mine)
        return kms__fail(KMS_EVERSION, err, errlen,
                         "%s: after loading, the store runs ledger version %d, not %d", w, v,
                         mine);
    return KMS_OK;
}

int kms_open(const kms_opts *o, kms_store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || !o->url || !o->fleet)
        return kms__fail(KMS_EINVAL, err, errlen, "kms_open: missing options");
    if (!kms__id_ok(o->fleet))
        return kms__fail(KMS_EINVAL, err, errlen,
                         "fleet name must be 1-%d characters of [A-Za-z0-9_.-]", KMS_ID_MAX);
    if (kms_client_version() < 1)
        return kms__fail(KMS_EVERSION, err, errlen, "the embedded ledger has no version");
    if (sodium_init() < 0)
        return kms__fail(KMS_ENOMEM, err, errlen, "libsodium failed to initialise");
    kms_store *s = calloc(1, sizeof *s);
    if (!s)
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    s->url = *o->url;
    snprintf(s->fleet, sizeof s->fleet, "%s", o->fleet);
    snprintf(s->key_ledger, sizeof s->key_ledger, "{km:%s}:ledger", o->fleet);
    snprintf(s->key_hosts, sizeof s->key_hosts, "{km:%s}:hosts", o->fleet);
    s->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 1000;
    s->io_ms = o->io_timeout_ms ? o->io_timeout_ms : 1000;
    if (o->password && !(s->password = strdup(o->password))) {
        free(s);
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    }
    int rc = kms__connect(s, err, errlen);
    if (rc == KMS_OK)
        rc = kms__ensure(s, err, errlen);
    if (rc != KMS_OK) {
        kms_close(s);
        return rc;
    }
    *out = s;
    return KMS_OK;
}

void kms_close(kms_store *s)
{
    if (!s)
        return;
    kms__drop(s);
    kms_password_free(s->password);
    sodium_memzero(s, sizeof *s);
    free(s);
}

int kms_store_mode(const kms_store *s)
{
    return s ? s->mode : 0;
}

int kms_ledger_version(kms_store *s, int *version, char *err, size_t errlen)
{
    int rc = kms__connect(s, err, errlen);
    if (rc == KMS_OK)
        rc = kms__probe(s, version, err, errlen);
    return rc;
}

/* Call the ledger with reconnection and the reloads a store may need: a
 * restarted or flushed store lost the library (Function not found,
 * NOSCRIPT); a Cluster moved the slot (MOVED host:port).  At most one retry
 * per cause. */
static int kms__invoke(kms_store *s, const char *fn, int argc, const char **argv,
                       const size_t *lens, redisReply **out, char *err, size_t errlen)
{
    int rc, reloaded = 0, moved = 0;
    for (;;) {
        if ((rc = kms__connect(s, err, errlen)) != KMS_OK)
            return rc;
        if (s->mode == 0 && (rc = kms__ensure(s, err, errlen)) != KMS_OK)
            return rc;
        if ((rc = kms__call(s, fn, argc, argv, lens, out, err, errlen)) != KMS_OK)
            return rc;
        redisReply *r = *out;
        if (!reloaded && (kms__is_err(r, "ERR Function not found") || kms__is_err(r, "NOSCRIPT"))) {
            freeReplyObject(r);
            *out = NULL;
            reloaded = 1;
            if ((rc = kms__reload(s, err, errlen)) != KMS_OK)
                return rc;
            continue;
        }
        if (!moved && kms__is_err(r, "MOVED ")) {
            /* "MOVED <slot> <host>:<port>" */
            const char *a = strrchr(r->str, ' ');
            const char *colon = a ? strrchr(a, ':') : NULL;
            unsigned port;
            if (a && colon && colon - a - 1 > 0 && (size_t)(colon - a - 1) < sizeof s->url.host &&
                kms__uint(colon + 1, strlen(colon + 1), 65535, &port) == 0 && port) {
                memcpy(s->url.host, a + 1, (size_t)(colon - a - 1));
                s->url.host[colon - a - 1] = '\0';
                s->url.port = port;
                freeReplyObject(r);
                *out = NULL;
                kms__drop(s);
                s->mode = 0; /* probe the new node: its version, FUNCTION or not */
                s->sha[0] = '\0';
                moved = 1;
                continue;
            }
        }
        return KMS_OK;
    }
}

/* ----------------------------------------------------------- reply checks */

typedef struct kms__chk {
    char *err;
    size_t errlen;
    const char *where;
    int rc;
} kms__chk;

static int __attribute__((format(printf, 2, 3))) kms__bad(kms__chk *k, const char *fmt, ...)
{
    if (k->rc == KMS_OK) {
        char m[300];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m, sizeof m, fmt, ap);
        va_end(ap);
        k->rc = kms__fail(KMS_EPROTO, k->err, k->errlen, "%s: invalid ledger reply: %s",
                          k->where, m);
    }
    return 0;
}

static const char *kms__type_name(int t)
{
    switch (t) {
    case REDIS_REPLY_STRING:
        return "string";
    case REDIS_REPLY_ARRAY:
        return "array";
    case REDIS_REPLY_INTEGER:
        return "integer";
    case REDIS_REPLY_NIL:
        return "nil";
    case REDIS_REPLY_STATUS:
        return "status";
    case REDIS_REPLY_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

static int kms__int(kms__chk *k, const redisReply *r, long long lo, long long hi, const char *what,
                    long long *out)
{
    if (!r || r->type != REDIS_REPLY_INTEGER)
        return kms__bad(k, "%s: expected an integer, got %s", what,
                        r ? kms__type_name(r->type) : "nothing");
    if (r->integer < lo || r->integer > hi)
        return kms__bad(k, "%s: %lld out of range", what, r->integer);
    *out = r->integer;
    return 1;
}

static int kms__arr(kms__chk *k, const redisReply *r, size_t n, const char *what)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return kms__bad(k, "%s: expected an array, got %s", what,
                        r ? kms__type_name(r->type) : "nothing");
    if (n != (size_t)-1 && r->elements != n)
        return kms__bad(k, "%s: %zu elements, expected %zu", what, r->elements, n);
    return 1;
}

static int kms__str_id(kms__chk *k, const redisReply *r, size_t max, char *out, const char *what)
{
    if (!r || r->type != REDIS_REPLY_STRING)
        return kms__bad(k, "%s: expected a string, got %s", what,
                        r ? kms__type_name(r->type) : "nothing");
    if (r->len < 1 || r->len > max || memchr(r->str, '\0', r->len))
        return kms__bad(k, "%s: bad length", what);
    memcpy(out, r->str, r->len);
    out[r->len] = '\0';
    for (size_t i = 0; i < r->len; i++)
        if (!isalnum((unsigned char)out[i]) && !strchr("_.-/", out[i]))
            return kms__bad(k, "%s: bad character", what);
    return 1;
}

/* A ledger error reply as a code. */
static int kms__ledger_error(kms_store *s, const redisReply *r, uint64_t *stale_last, char *err,
                             size_t errlen)
{
    char w[300];
    int rc;
    kms__where(s, w);
    if ((rc = kms__common_error(s, r, "ledger", err, errlen)) != 0)
        return rc;
    if (kms__is_err(r, "KMLEDGER stale seq ")) {
        const char *l = strstr(r->str, " last ");
        if (stale_last)
            *stale_last = l ? strtoull(l + 6, NULL, 10) : 0;
        return kms__fail(KMS_ESTALE, err, errlen, "%s: %.300s", w, r->str);
    }
    if (kms__is_err(r, "KMLEDGER version"))
        return kms__fail(KMS_EVERSION, err, errlen, "%s: %.300s", w, r->str);
    return kms__fail(KMS_ELEDGER, err, errlen, "%s: %.300s", w, r->str);
}

/* ------------------------------------------------------------------ sync */

void kms_reply_free(kms_reply *r)
{
    if (!r)
        return;
    free(r->grant);
    free(r->health);
    free(r->spend);
    memset(r, 0, sizeof *r);
}

static int kms__parse_sync(kms_store *s, const redisReply *r, const kms_request *q, kms_reply *out,
                           char *err, size_t errlen)
{
    char w[300];
    kms__chk k = {err, errlen, kms__where(s, w), KMS_OK};
    kms_reply t = {0};
    long long v;
    const long long IMAX = (1LL << 53);

    if (!kms__arr(&k, r, (size_t)-1, "reply"))
        return k.rc;
    /* The version first: a reply of another ledger is a version error even
     * if its shape differs. */
    if (r->elements < 1) {
        kms__bad(&k, "empty array");
        return k.rc;
    }
    if (!kms__int(&k, r->element[0], 0, 1000000, "version", &v))
        return k.rc;
    if (v != kms_client_version())
        return kms__fail(KMS_EVERSION, err, errlen,
                         "%s: the ledger answered as version %lld, this agent speaks %d", w, v,
                         kms_client_version());
    t.version = (int)v;
    if (!kms__arr(&k, r, KMS__REPLY_FIELDS, "reply"))
        return k.rc;
    const redisReply *st = r->element[1];
    if (st->type != REDIS_REPLY_STRING || st->len != 2 || memcmp(st->str, "ok", 2) != 0)
        return kms__bad(&k, "status: expected \"ok\""), k.rc;
    if (!kms__int(&k, r->element[2], 1, IMAX, "epoch", &v))
        return k.rc;
    t.epoch = (uint64_t)v;
    if (!kms__int(&k, r->element[3], 0, 86400000LL * 31, "learning", &v))
        return k.rc;
    t.learn_ms = (uint64_t)v;
    if (!kms__int(&k, r->element[4], 1, IMAX, "seq", &v))
        return k.rc;
    if ((uint64_t)v != q->seq)
        return kms__bad(&k, "seq %lld answers another request (sent %" PRIu64 ")", v, q->seq),
               k.rc;
    t.seq = (uint64_t)v;
    if (!kms__int(&k, r->element[5], 0, 10000000, "hosts", &v))
        return k.rc;
    t.n_hosts = (uint64_t)v;
    const redisReply *ga = r->element[6], *ha = r->element[7], *ba = r->element[8];
    if (!kms__arr(&k, ga, q->n_ent, "grants") || !kms__arr(&k, ha, (size_t)-1, "health") ||
        !kms__arr(&k, ba, q->n_bud, "budgets"))
        return k.rc;
    if (ha->elements > q->n_ent + q->n_ev)
        return kms__bad(&k, "health: %zu keys, more than the request named", ha->elements), k.rc;
    t.n_grant = q->n_ent;
    t.n_health = ha->elements;
    t.n_spend = q->n_bud;
    t.grant = calloc(t.n_grant ? t.n_grant : 1, sizeof *t.grant);
    t.health = calloc(t.n_health ? t.n_health : 1, sizeof *t.health);
    t.spend = calloc(t.n_spend ? t.n_spend : 1, sizeof *t.spend);
    if (!t.grant || !t.health || !t.spend) {
        kms_reply_free(&t);
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    }
    for (size_t i = 0; i < t.n_grant && k.rc == KMS_OK; i++) {
        const redisReply *g = ga->element[i];
        kms_grant *o = &t.grant[i];
        long long f[KMS__GRANT_FIELDS];
        static const char *names[KMS__GRANT_FIELDS] = {"grant", "valid_ms", "fb_ppm", "fb_burst",
                                                       "fallback_ms", "share_ppm", "out", "err"};
        static const long long hi[KMS__GRANT_FIELDS] = {
            1LL << 50, 600000, KMS_PPM, 1LL << 50, 3600000, KMS_PPM, 1LL << 50, 2};
        if (!kms__arr(&k, g, KMS__GRANT_FIELDS, "grant entry"))
            break;
        for (int j = 0; j < KMS__GRANT_FIELDS; j++) {
            char what[48];
            snprintf(what, sizeof what, "grant %zu %s", i, names[j]);
            if (!kms__int(&k, g->element[j], 0, hi[j], what, &f[j]))
                break;
        }
        if (k.rc != KMS_OK)
            break;
        o->grant = (uint64_t)f[0];
        o->valid_ms = (uint32_t)f[1];
        o->fb_ppm = (uint32_t)f[2];
        o->fb_burst = (uint64_t)f[3];
        o->fallback_ms = (uint32_t)f[4];
        o->share_ppm = (uint32_t)f[5];
        o->out = (uint64_t)f[6];
        o->err = (int)f[7];
        if (o->valid_ms != q->valid_ms || o->fallback_ms != q->fallback_ms)
            kms__bad(&k, "grant %zu: validity %u/%u ms, requested %u/%u", i, o->valid_ms,
                     o->fallback_ms, q->valid_ms, q->fallback_ms);
    }
    for (size_t i = 0; i < t.n_health && k.rc == KMS_OK; i++) {
        const redisReply *h = ha->element[i];
        kms_health *o = &t.health[i];
        if (!kms__arr(&k, h, 4, "health entry") ||
            !kms__str_id(&k, h->element[0], KMS_ID_MAX, o->kid, "health key id") ||
            !kms__int(&k, h->element[1], 0, 5, "health state", &v))
            break;
        o->state = (int)v;
        if (o->state == 2)
            kms__bad(&k, "health state 2 is not a fleet state");
        if (!kms__int(&k, h->element[2], 0, IMAX, "health remaining", &v))
            break;
        o->remaining_ms = (uint64_t)v;
        if (!kms__int(&k, h->element[3], 0, IMAX, "health version", &v))
            break;
        o->version = (uint64_t)v;
    }
    for (size_t i = 0; i < t.n_spend && k.rc == KMS_OK; i++) {
        const redisReply *b = ba->element[i];
        long long tot, mine;
        if (!kms__arr(&k, b, 2, "budget entry") ||
            !kms__int(&k, b->element[0], 0, IMAX, "budget total", &tot) ||
            !kms__int(&k, b->element[1], 0, IMAX, "budget mine", &mine))
            break;
        if (mine > tot) {
            kms__bad(&k, "budget %zu: this host's %lld above the total %lld", i, mine, tot);
            break;
        }
        t.spend[i].total = (uint64_t)tot;
        t.spend[i].mine = (uint64_t)mine;
    }
    if (k.rc != KMS_OK) {
        kms_reply_free(&t);
        return k.rc;
    }
    *out = t;
    return KMS_OK;
}

static int kms__check_request(const kms_request *q, char *err, size_t errlen)
{
    if (!q->host || !kms__id_ok(q->host))
        return kms__fail(KMS_EINVAL, err, errlen,
                         "host id must be 1-%d characters of [A-Za-z0-9_.-]", KMS_ID_MAX);
    if (q->seq == 0 || q->seq > (UINT64_C(1) << 53) || q->ack > (UINT64_C(1) << 53))
        return kms__fail(KMS_EINVAL, err, errlen, "seq must be 1..2^53");
    if (!q->sync_ms || q->sync_ms > q->valid_ms || q->valid_ms > q->fallback_ms)
        return kms__fail(KMS_EINVAL, err, errlen,
                         "need 0 < sync period <= validity <= fallback period");
    if ((q->n_ent && !q->ent) || (q->n_ev && !q->ev) || q->n_ent > 4096 || q->n_ev > 1024 ||
        (q->n_bud && !q->bud) || q->n_bud > 4096)
        return kms__fail(KMS_EINVAL, err, errlen, "bad entry, event or budget list");
    for (size_t i = 0; i < q->n_bud; i++)
        if (!kms__id_ok(q->bud[i].bid) || q->bud[i].period_start > (UINT64_C(1) << 53) ||
            q->bud[i].spent > (UINT64_C(1) << 53))
            return kms__fail(KMS_EINVAL, err, errlen, "budget %zu: bad id or figure", i);
    for (size_t i = 0; i < q->n_ent; i++)
        if (!kms__id_ok(q->ent[i].kid) || q->ent[i].win < 0 || q->ent[i].win > 5)
            return kms__fail(KMS_EINVAL, err, errlen, "entry %zu: bad key id or window", i);
    for (size_t i = 0; i < q->n_ev; i++)
        if (!kms__id_ok(q->ev[i].kid) || q->ev[i].kind < 1 || q->ev[i].kind > 5)
            return kms__fail(KMS_EINVAL, err, errlen, "event %zu: bad key id or kind", i);
    return KMS_OK;
}

int kms_sync(kms_store *s, const kms_request *q, kms_reply *r, uint64_t *stale_last, char *err,
             size_t errlen)
{
    enum { NE = 15, NV = 3, NB = 3, NH = 11 };
    int rc;
    if (!s || !q || !r)
        return kms__fail(KMS_EINVAL, err, errlen, "kms_sync: missing argument");
    if ((rc = kms__check_request(q, err, errlen)) != KMS_OK)
        return rc;
    size_t argc = NH + 1 + NE * q->n_ent + 1 + NV * q->n_ev + 1 + NB * q->n_bud;
    const char **av = calloc(argc, sizeof *av);
    size_t *al = calloc(argc, sizeof *al);
    char *nums = calloc(argc, 24);
    if (!av || !al || !nums) {
        free(av);
        free(al);
        free(nums);
        return kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    }
    size_t i = 0;
#define KMS__S(str) (av[i] = (str), al[i] = strlen(av[i]), i++)
#define KMS__U(val) (snprintf(nums + 24 * i, 24, "%" PRIu64, (uint64_t)(val)), KMS__S(nums + 24 * i))
#define KMS__I(val) (snprintf(nums + 24 * i, 24, "%" PRId64, (int64_t)(val)), KMS__S(nums + 24 * i))
    KMS__S("sync");
    KMS__S(KMS__PROTO);
    KMS__U(kms_client_version());
    KMS__S(q->host);
    KMS__U(q->seq);
    KMS__U(q->ack);
    KMS__U(q->epoch);
    KMS__U(q->flags & KMS_BYE);
    KMS__U(q->sync_ms);
    KMS__U(q->valid_ms);
    KMS__U(q->fallback_ms);
    KMS__U(q->n_ent);
    for (size_t e = 0; e < q->n_ent; e++) {
        const kms_entry *t = &q->ent[e];
        KMS__S(t->kid);
        KMS__U(t->win);
        KMS__U(t->limit);
        KMS__U(t->period_ms);
        KMS__U(t->burst);
        KMS__U(t->mode);
        KMS__U(t->strict);
        KMS__U(t->demand);
        KMS__U(t->want);
        KMS__U(t->spent);
        KMS__U(t->fb_spent);
        KMS__I(t->adj);
        KMS__U(t->returned);
        KMS__U(t->left);
        KMS__U(t->fb_held_ppm);
    }
    KMS__U(q->n_ev);
    for (size_t e = 0; e < q->n_ev; e++) {
        KMS__S(q->ev[e].kid);
        KMS__U(q->ev[e].kind);
        KMS__U(q->ev[e].arg_ms);
    }
    KMS__U(q->n_bud);
    for (size_t b = 0; b < q->n_bud; b++) {
        KMS__S(q->bud[b].bid);
        KMS__U(q->bud[b].period_start);
        KMS__U(q->bud[b].spent);
    }
#undef KMS__S
#undef KMS__U
#undef KMS__I
    redisReply *rep = NULL;
    rc = kms__invoke(s, "km_ledger", (int)i, av, al, &rep, err, errlen);
    free(av);
    free(al);
    free(nums);
    if (rc != KMS_OK)
        return rc;
    if (rep->type == REDIS_REPLY_ERROR)
        rc = kms__ledger_error(s, rep, stale_last, err, errlen);
    else
        rc = kms__parse_sync(s, rep, q, r, err, errlen);
    freeReplyObject(rep);
    return rc;
}

/* ------------------------------------------------------------------ info */

void kms_info_free(kms_info *in)
{
    if (!in)
        return;
    for (size_t i = 0; i < in->n_hosts; i++)
        free(in->hosts[i].rows);
    free(in->hosts);
    free(in->kws);
    free(in->budgets);
    memset(in, 0, sizeof *in);
}

int kms_info_get(kms_store *s, kms_info *out, char *err, size_t errlen)
{
    char w[300];
    const char *argv[1] = {"info"};
    size_t lens[1] = {4};
    redisReply *r = NULL;
    int rc = kms__invoke(s, "km_ledger_ro", 1, argv, lens, &r, err, errlen);
    if (rc != KMS_OK)
        return rc;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = kms__ledger_error(s, r, NULL, err, errlen);
        freeReplyObject(r);
        return rc;
    }
    kms__chk k = {err, errlen, kms__where(s, w), KMS_OK};
    kms_info t = {0};
    long long v;
    /* The version before the shape: another version's info is a version
     * error whatever its shape. */
    if (kms__arr(&k, r, (size_t)-1, "info") && r->elements >= 1 &&
        kms__int(&k, r->element[0], 0, 1000000, "version", &v)) {
        t.version = (int)v;
        if (v != kms_client_version())
            k.rc = kms__fail(KMS_EVERSION, err, errlen, "%s: ledger info of version %lld", w, v);
    } else if (k.rc == KMS_OK) {
        kms__bad(&k, "info: empty array");
    }
    if (k.rc == KMS_OK)
        kms__arr(&k, r, 6, "info");
    if (k.rc == KMS_OK && kms__int(&k, r->element[1], 0, 1LL << 53, "epoch", &v))
        t.epoch = (uint64_t)v;
    if (k.rc == KMS_OK && kms__int(&k, r->element[2], 0, 1LL << 53, "learning", &v))
        t.learn_ms = (uint64_t)v;
    const redisReply *hs = k.rc == KMS_OK ? r->element[3] : NULL;
    const redisReply *ks = k.rc == KMS_OK ? r->element[4] : NULL;
    if (k.rc == KMS_OK && kms__arr(&k, hs, (size_t)-1, "hosts") &&
        kms__arr(&k, ks, (size_t)-1, "keys")) {
        t.hosts = calloc(hs->elements + 1, sizeof *t.hosts);
        t.kws = calloc(ks->elements + 1, sizeof *t.kws);
        if (!t.hosts || !t.kws)
            k.rc = kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    }
    for (size_t i = 0; k.rc == KMS_OK && i < hs->elements; i++) {
        const redisReply *h = hs->element[i];
        kms_info_host *o = &t.hosts[i];
        t.n_hosts = i + 1;
        if (!kms__arr(&k, h, 4, "host") ||
            !kms__str_id(&k, h->element[0], KMS_ID_MAX, o->host, "host id") ||
            !kms__int(&k, h->element[1], 0, 1LL << 53, "host age", &v))
            break;
        o->age_ms = (uint64_t)v;
        if (!kms__int(&k, h->element[2], 0, 1, "host silent", &v) ||
            !kms__arr(&k, h->element[3], (size_t)-1, "host rows"))
            break;
        o->silent = (int)v;
        const redisReply *rows = h->element[3];
        if (!(o->rows = calloc(rows->elements + 1, sizeof *o->rows))) {
            k.rc = kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
            break;
        }
        for (size_t j = 0; j < rows->elements; j++) {
            const redisReply *x = rows->element[j];
            kms_info_row *row = &o->rows[j];
            o->n_rows = j + 1;
            if (!kms__arr(&k, x, 5, "row") ||
                !kms__str_id(&k, x->element[0], sizeof row->kw - 1, row->kw, "row key") ||
                !kms__int(&k, x->element[1], 0, 1LL << 53, "demand", &v))
                break;
            row->demand = (uint64_t)v;
            if (!kms__int(&k, x->element[2], 0, KMS_PPM, "share", &v))
                break;
            row->share_ppm = (uint32_t)v;
            if (!kms__int(&k, x->element[3], 0, 1LL << 53, "out", &v))
                break;
            row->out = (uint64_t)v;
            if (!kms__int(&k, x->element[4], 0, KMS_PPM, "fallback", &v))
                break;
            row->fb_ppm = (uint32_t)v;
        }
    }
    for (size_t i = 0; k.rc == KMS_OK && i < ks->elements; i++) {
        const redisReply *x = ks->element[i];
        kms_info_kw *o = &t.kws[i];
        long long f[7];
        t.n_kws = i + 1;
        if (!kms__arr(&k, x, 8, "key") ||
            !kms__str_id(&k, x->element[0], sizeof o->kw - 1, o->kw, "key"))
            break;
        for (int j = 0; j < 7 && k.rc == KMS_OK; j++)
            kms__int(&k, x->element[j + 1], j == 5 ? -(1LL << 53) : 0, 1LL << 53, "key field",
                     &f[j]);
        if (k.rc != KMS_OK)
            break;
        o->limit = (uint64_t)f[0];
        o->burst = (uint64_t)f[1];
        o->period_ms = (uint64_t)f[2];
        o->mode = (int)f[3];
        o->strict = (int)f[4];
        o->room = f[5];
        o->reserved = (uint64_t)f[6];
    }
    const redisReply *bs = k.rc == KMS_OK ? r->element[5] : NULL;
    if (k.rc == KMS_OK && kms__arr(&k, bs, (size_t)-1, "budgets") &&
        !(t.budgets = calloc(bs->elements + 1, sizeof *t.budgets)))
        k.rc = kms__fail(KMS_ENOMEM, err, errlen, "out of memory");
    for (size_t i = 0; k.rc == KMS_OK && i < bs->elements; i++) {
        const redisReply *x = bs->element[i];
        kms_info_budget *o = &t.budgets[i];
        long long f[4];
        t.n_budgets = i + 1;
        if (!kms__arr(&k, x, 5, "budget") ||
            !kms__str_id(&k, x->element[0], KMS_ID_MAX, o->bid, "budget id"))
            break;
        for (int j = 0; j < 4 && k.rc == KMS_OK; j++)
            kms__int(&k, x->element[j + 1], 0, 1LL << 53, "budget field", &f[j]);
        if (k.rc != KMS_OK)
            break;
        o->period_start = (uint64_t)f[0];
        o->total = (uint64_t)f[1];
        o->prev_start = (uint64_t)f[2];
        o->prev_total = (uint64_t)f[3];
    }
    freeReplyObject(r);
    if (k.rc != KMS_OK) {
        kms_info_free(&t);
        return k.rc;
    }
    *out = t;
    return KMS_OK;
}
