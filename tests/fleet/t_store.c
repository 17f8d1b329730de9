/*
 * tests/fleet/t_store.c - the ledger's client (tools/sync/store.c) against a
 * real redis-server and through the fault-injecting proxy: URL and password
 * handling, authentication, an unreachable or silent store, garbage,
 * truncated and mistyped replies, ledger versions (older: replaced; newer:
 * refused; a reply of another version: refused), the Redis 6 path (EVALSHA,
 * NOSCRIPT), a flushed or restarted store, MOVED.  Every error must be the
 * right code with a message that names the cause and never the password,
 * and a failed call must leave the caller's reply untouched.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rig.h"
#include "sim.h"
#include "store.h"
#include "tap.h"

#define PASSWORD "pw-Fleet-7731-secret"
#define WRONG_PW "pw-wrong-5511-secret"
#define FLEET "st"

static char err[1024];

/* No message may carry a password, right or wrong. */
static int clean(const char *msg)
{
    return !strstr(msg, PASSWORD) && !strstr(msg, WRONG_PW) && !strstr(msg, "s3cretpw");
}

static int has(const char *msg, const char *needle)
{
    if (strstr(msg, needle))
        return 1;
    diag("message: %s", msg);
    diag("lacks:   %s", needle);
    return 0;
}

static int open_at(int port, const char *password, unsigned io_ms, kms_store **out)
{
    kms_url u;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    if (kms_url_parse(url, &u, err, sizeof err) != KMS_OK)
        bail_out("url: %s", err);
    kms_opts o = {.url = &u, .password = password, .fleet = FLEET,
                  .connect_timeout_ms = 500, .io_timeout_ms = io_ms};
    err[0] = '\0';
    return kms_open(&o, out, err, sizeof err);
}

static void test_url(void)
{
    kms_url u;
    ok(kms_url_parse("redis://127.0.0.1:6390/2", &u, err, sizeof err) == KMS_OK &&
           strcmp(u.host, "127.0.0.1") == 0 && u.port == 6390 && u.db == 2 && !u.user[0],
       "url: host, port and database");
    ok(kms_url_parse("redis://localhost", &u, err, sizeof err) == KMS_OK && u.port == 6379 &&
           u.db == 0,
       "url: port 6379 and database 0 by default");
    ok(kms_url_parse("redis://agent-1@10.0.0.1:7000/", &u, err, sizeof err) == KMS_OK &&
           strcmp(u.user, "agent-1") == 0 && u.port == 7000,
       "url: an ACL user without a password");
    ok(kms_url_parse("redis://[::1]:7001/1", &u, err, sizeof err) == KMS_OK &&
           strcmp(u.host, "::1") == 0 && u.port == 7001 && u.db == 1,
       "url: IPv6 host in brackets");
    int rc = kms_url_parse("redis://:s3cretpw@h:1", &u, err, sizeof err);
    ok(rc == KMS_EURL && clean(err) && has(err, "must not hold a password"),
       "url: a password in the URL is refused, without repeating it");
    rc = kms_url_parse("redis://user:s3cretpw@h", &u, err, sizeof err);
    ok(rc == KMS_EURL && clean(err), "url: user:password is refused too");
    static const char *bad[] = {"http://h", "redis://", "redis://h:0", "redis://h:99999",
                                "redis://h:12x", "redis://h/abc", "redis://h:1/2/3",
                                "redis://[::1", "redis://h h"};
    int all = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (kms_url_parse(bad[i], &u, err, sizeof err) != KMS_EURL) {
            diag("accepted: %s", bad[i]);
            all = 0;
        }
    ok(all, "url: malformed URLs are KMS_EURL");
}

static void test_password(void)
{
    char path[] = "/tmp/kmt-fleet-pw.XXXXXX";
    int fd = mkstemp(path);
    char *pw = NULL;
    if (fd < 0 || write(fd, PASSWORD "\nignored\n", sizeof PASSWORD + 8) < 0)
        bail_out("temp file: %s", strerror(errno));
    close(fd);
    chmod(path, 0644);
    int rc = kms_password_load(NULL, path, &pw, err, sizeof err);
    ok(rc == KMS_EPASSWORD && !pw && has(err, "chmod 600") && clean(err),
       "password file readable by others is refused");
    chmod(path, 0600);
    rc = kms_password_load(NULL, path, &pw, err, sizeof err);
    ok(rc == KMS_OK && pw && strcmp(pw, PASSWORD) == 0, "password file: first line, mode 0600");
    kms_password_free(pw);
    setenv("KMT_FLEET_PW", WRONG_PW, 1);
    rc = kms_password_load("KMT_FLEET_PW", path, &pw, err, sizeof err);
    ok(rc == KMS_OK && pw && strcmp(pw, WRONG_PW) == 0, "environment variable before the file");
    kms_password_free(pw);
    unsetenv("KMT_FLEET_PW");
    unlink(path);
    rc = kms_password_load("KMT_FLEET_PW", path, &pw, err, sizeof err);
    ok(rc == KMS_EPASSWORD && has(err, path), "a missing password file is an error naming it");
    rc = kms_password_load("KMT_FLEET_PW", NULL, &pw, err, sizeof err);
    ok(rc == KMS_OK && pw == NULL, "no variable and no file: no password");

    char a[KMS_ID_MAX + 1], b[KMS_ID_MAX + 1], c[KMS_ID_MAX + 1];
    kms_fleet_id("openai", "key-1", a);
    kms_fleet_id("openai", "key-1", b);
    kms_fleet_id("anthropic", "key-1", c);
    ok(strcmp(a, b) == 0 && strcmp(a, c) != 0 && strlen(a) == 33 && a[0] == 'k' &&
           !strstr(a, "key-1"),
       "fleet id: stable, per pool, a hash (%s)", a);
    /* A model's windows have a kid of their own, whatever the operator's
     * fleet id holds ("acme.main" once made every model share the key's). */
    char k0[KMS_ID_MAX + 1], k1[KMS_ID_MAX + 1], k2[KMS_ID_MAX + 1], k3[KMS_ID_MAX + 1];
    kms_kid("p", "a", "acme.main", NULL, k0);
    kms_kid("p", "a", "acme.main", "gpt", k1);
    kms_kid("p", "a", "acme.main", "mini", k2);
    kms_kid("p", "a", NULL, "gpt", k3);
    ok(strcmp(k0, "acme.main") == 0 && strcmp(k1, k0) != 0 && strcmp(k2, k0) != 0 &&
           strcmp(k1, k2) != 0 && strncmp(k1, "acme.main.m", 11) == 0 &&
           k3[0] == 'k' && strstr(k3, ".m"),
       "kid: the key's, and one per model even with '.m' in the fleet id (%s, %s, %s)", k0, k1,
       k2);
}

/* A sync of one small entry; the reply goes to *r. */
static kms_entry one_entry(void)
{
    kms_entry e = {.win = 0, .limit = 600, .period_ms = 60000, .burst = 600, .mode = 0,
                   .demand = 5};
    snprintf(e.kid, sizeof e.kid, "kS");
    return e;
}

static int sync_once(kms_store *s, const char *host, uint64_t seq, kms_reply *r)
{
    kms_entry e = one_entry();
    kms_request q = {.host = host, .seq = seq, .ack = seq - 1, .sync_ms = 250, .valid_ms = 1000,
                     .fallback_ms = 15000, .ent = &e, .n_ent = 1};
    err[0] = '\0';
    return kms_sync(s, &q, r, NULL, err, sizeof err);
}

/* The proxy's count of command `name`. */
static int proxy_count(rig_proxy *p, const char *name)
{
    char key[64];
    if (rig_ctl(p, "stats") != 0)
        bail_out("proxy stats: %s", p->answer);
    snprintf(key, sizeof key, " %s=", name);
    const char *at = strstr(p->answer, key);
    return at ? atoi(at + strlen(key)) : 0;
}

static char *hex_of(const char *s)
{
    size_t n = strlen(s);
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", (unsigned char)s[i]);
    h[2 * n] = '\0';
    return h;
}

static void canned(rig_proxy *p, const char *cmd, const char *resp)
{
    char *h = hex_of(resp);
    if (rig_ctl(p, "reply %s %s", cmd, h) != 0)
        bail_out("proxy: %s", p->answer);
    free(h);
}

/* Load `text` with its version line rewritten to `v` as the library. */
static void load_version(redisContext *c, int v)
{
    extern const unsigned char kms__ledger_lua[];
    extern const unsigned long kms__ledger_lua_len;
    const char *t = (const char *)kms__ledger_lua;
    const char *at = strstr(t, "local LEDGER_VERSION = ");
    if (!at)
        bail_out("no version line in the ledger");
    const char *eol = strchr(at, '\n');
    char line[64];
    int ln = snprintf(line, sizeof line, "local LEDGER_VERSION = %d", v);
    size_t head = (size_t)(at - t), tail = kms__ledger_lua_len - (size_t)(eol - t);
    char *buf = malloc(head + (size_t)ln + tail + 1);
    memcpy(buf, t, head);
    memcpy(buf + head, line, (size_t)ln);
    memcpy(buf + head + ln, eol, tail);
    redisReply *r = redisCommand(c, "FUNCTION LOAD REPLACE %b", buf, head + (size_t)ln + tail);
    if (!r || r->type != REDIS_REPLY_STRING)
        bail_out("FUNCTION LOAD of version %d: %s", v, r && r->str ? r->str : "no reply");
    freeReplyObject(r);
    free(buf);
}

static long long fcall_version(redisContext *c)
{
    redisReply *r = redisCommand(c, "FCALL km_ledger_ro 0 version");
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

static void simple(redisContext *c, const char *cmd)
{
    redisReply *r = redisCommand(c, cmd);
    if (!r || r->type == REDIS_REPLY_ERROR)
        bail_out("%s: %s", cmd, r && r->str ? r->str : c->errstr);
    freeReplyObject(r);
}

int main(void)
{
    rig_redis rs;
    rig_proxy px, px6;
    kms_store *s = NULL;
    kms_reply rep, untouched;
    int rc;
    uint64_t seq = 0;

    plan(57);
    test_url();      /* 7 */
    test_password(); /* 6 */

    rig_redis_start(&rs, PASSWORD);
    redisContext *dc = rig_redis_conn(&rs);
    if (!dc)
        bail_out("no direct connection to the test redis");

    /* ------------------------------------------------ authentication */
    rc = open_at(rs.port, NULL, 1000, &s);
    ok(rc == KMS_EAUTH && has(err, "requires a password") && !s,
       "no password for a store that needs one: KMS_EAUTH, says so");
    rc = open_at(rs.port, WRONG_PW, 1000, &s);
    ok(rc == KMS_EAUTH && has(err, "wrong password") && clean(err) && !s,
       "wrong password: KMS_EAUTH, the password not repeated");
    rc = open_at(rs.port, PASSWORD, 1000, &s);
    ok(rc == KMS_OK && s && kms_store_mode(s) == 1, "right password: open, Redis Function mode");
    is_int(fcall_version(dc), kms_client_version(), "the library in the store is this version");
    kms_close(s);
    s = NULL;

    /* ---------------------------------------------------- unreachable */
    int closed = rig_free_port();
    rc = open_at(closed, PASSWORD, 1000, &s);
    ok(rc == KMS_ECONNECT && has(err, "unreachable") && clean(err),
       "nothing listening: KMS_ECONNECT, \"unreachable\"");

    /* ---------------------------------------------- through the proxy */
    rig_proxy_start(&px, rs.port);
    rig_ctl(&px, "blackhole");
    rc = open_at(px.port, PASSWORD, 300, &s);
    ok(rc == KMS_ETIMEOUT && has(err, "no reply within 300 ms") && clean(err),
       "a store that never answers: KMS_ETIMEOUT");
    rig_ctl(&px, "pass");
    /* 2 s for every call through the proxy: the machine may be loaded, and
     * only the cases below that expect a timeout may see one. */
    rc = open_at(px.port, PASSWORD, 2000, &s);
    ok(rc == KMS_OK, "open through the proxy");
    rig_ctl(&px, "reset-stats");
    int ok3 = 1;
    for (int i = 0; i < 3; i++) {
        ok3 &= sync_once(s, "hA", ++seq, &rep) == KMS_OK;
        kms_reply_free(&rep);
    }
    ok(ok3 && proxy_count(&px, "FCALL") == 3 && strcmp(px.answer, "ok FCALL=3") == 0,
       "one store command per sync, nothing else (%s)", px.answer);

    /* Garbage instead of the reply: an error, nothing handed back; the
     * retry with the same seq gets the answer the ledger gave. */
    memset(&untouched, 0xA5, sizeof untouched);
    rep = untouched;
    rig_ctl(&px, "garbage FCALL");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_EPROTO && has(err, "protocol error") && memcmp(&rep, &untouched, sizeof rep) == 0,
       "garbage reply: KMS_EPROTO, the reply untouched");
    char *before = ledger_dump(dc, FLEET);
    rc = sync_once(s, "hA", seq, &rep);
    kms_reply again;
    int rc2 = sync_once(s, "hA", seq, &again);
    char *after = ledger_dump(dc, FLEET);
    ok(rc == KMS_OK && rc2 == KMS_OK && rep.seq == seq && rep.grant[0].grant == again.grant[0].grant &&
           rep.grant[0].fb_ppm == again.grant[0].fb_ppm && strcmp(before, after) == 0,
       "retry with the same seq: the same answer, the ledger unchanged");
    kms_reply_free(&rep);
    kms_reply_free(&again);
    free(before);
    free(after);

    rep = untouched;
    rig_ctl(&px, "truncate FCALL 12");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_EIO && has(err, "closed the connection") && memcmp(&rep, &untouched, sizeof rep) == 0,
       "reply cut short and the connection closed: KMS_EIO");
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_OK, "the next call reconnects");
    kms_reply_free(&rep);

    rep = untouched;
    rig_ctl(&px, "stall FCALL 12");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_ETIMEOUT && memcmp(&rep, &untouched, sizeof rep) == 0,
       "reply cut short, connection silent: KMS_ETIMEOUT");
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_OK, "and the next call works");
    kms_reply_free(&rep);

    /* Replies of the right shape but wrong content. */
    char resp[512];
    seq++;
    snprintf(resp, sizeof resp,
             "*9\r\n:%d\r\n$2\r\nok\r\n:1000\r\n:0\r\n:%" PRIu64 "\r\n:1\r\n"
             "*1\r\n*8\r\n$1\r\n5\r\n:1000\r\n:0\r\n:0\r\n:15000\r\n:0\r\n:0\r\n:0\r\n*0\r\n*0\r\n",
             kms_client_version(), seq);
    canned(&px, "FCALL", resp);
    rep = untouched;
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EPROTO && has(err, "grant 0 grant: expected an integer, got string") &&
           memcmp(&rep, &untouched, sizeof rep) == 0,
       "a string where a grant belongs: KMS_EPROTO naming the field");
    snprintf(resp, sizeof resp,
             "*9\r\n:%d\r\n$2\r\nok\r\n:1000\r\n:0\r\n:%" PRIu64 "\r\n:1\r\n*2\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
             kms_client_version(), seq);
    canned(&px, "FCALL", resp);
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EPROTO && has(err, "grants: 2 elements, expected 1"),
       "more grants than entries: KMS_EPROTO");
    snprintf(resp, sizeof resp, "*6\r\n:0\r\n$2\r\nok\r\n:1\r\n:0\r\n:%" PRIu64 "\r\n:1\r\n", seq);
    canned(&px, "FCALL", resp);
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EVERSION && has(err, "version 0") && memcmp(&rep, &untouched, sizeof rep) == 0,
       "a reply of ledger version 0: KMS_EVERSION, nothing applied");
    snprintf(resp, sizeof resp,
             "*9\r\n:%d\r\n$2\r\nok\r\n:1000\r\n:0\r\n:%" PRIu64 "\r\n:1\r\n"
             "*1\r\n*8\r\n:5\r\n:1000\r\n:2000000\r\n:0\r\n:15000\r\n:0\r\n:0\r\n:0\r\n*0\r\n*0\r\n",
             kms_client_version(), seq);
    canned(&px, "FCALL", resp);
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EPROTO && has(err, "fb_ppm: 2000000 out of range"),
       "a fallback share above 100 %%: KMS_EPROTO");
    snprintf(resp, sizeof resp,
             "*9\r\n:%d\r\n$2\r\nok\r\n:1000\r\n:0\r\n:%" PRIu64 "\r\n:1\r\n*0\r\n*0\r\n*0\r\n",
             kms_client_version(), seq + 7);
    canned(&px, "FCALL", resp);
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EPROTO && has(err, "answers another request"),
       "an answer to another seq: KMS_EPROTO");
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_OK && rep.n_grant == 1, "the real answer after all that");
    kms_reply_free(&rep);

    /* Stale seq. */
    uint64_t last = 0;
    kms_entry e = one_entry();
    kms_request q = {.host = "hA", .seq = seq - 2, .sync_ms = 250, .valid_ms = 1000,
                     .fallback_ms = 15000, .ent = &e, .n_ent = 1};
    rc = kms_sync(s, &q, &rep, &last, err, sizeof err);
    ok(rc == KMS_ESTALE && last == seq, "an older seq: KMS_ESTALE with the ledger's (%" PRIu64 ")",
       last);

    /* Delay: below the timeout fine, above it a timeout.  The delayed
     * reply dies with the connection the client drops. */
    rig_ctl(&px, "delay 200");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_OK, "a 200 ms delay under a 2 s timeout: fine");
    kms_reply_free(&rep);
    rig_ctl(&px, "delay 4000");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_ETIMEOUT && has(err, "no reply within 2000 ms"), "a 4 s delay: KMS_ETIMEOUT");
    rig_ctl(&px, "pass");
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_OK, "and back");
    kms_reply_free(&rep);

    /* Cut: the connection dies, new ones are closed at once. */
    rig_ctl(&px, "cut");
    rc = sync_once(s, "hA", ++seq, &rep);
    ok(rc == KMS_EIO || rc == KMS_ECONNECT, "link cut: an I/O error (%s)", kms_err_name(rc));
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_EIO || rc == KMS_ECONNECT, "still cut: %s: %s", kms_err_name(rc), err);
    ok(clean(err), "no password in any of these messages");
    rig_ctl(&px, "pass");
    rc = sync_once(s, "hA", seq, &rep);
    ok(rc == KMS_OK, "link back: the same seq goes through");
    kms_reply_free(&rep);

    /* MOVED: a Cluster says the slot is elsewhere (here: redis itself). */
    snprintf(resp, sizeof resp, "-MOVED 1234 127.0.0.1:%d\r\n", rs.port);
    canned(&px, "FCALL", resp);
    rig_ctl(&px, "reset-stats");
    rc = sync_once(s, "hA", ++seq, &rep);
    kms_reply_free(&rep);
    rc2 = sync_once(s, "hA", ++seq, &rep);
    kms_reply_free(&rep);
    ok(rc == KMS_OK && rc2 == KMS_OK && proxy_count(&px, "FCALL") == 1,
       "MOVED: the client follows it and stays there");
    kms_close(s);
    s = NULL;

    /* ------------------------------------------------- ledger versions */
    int mine = kms_client_version();
    load_version(dc, mine - 1);
    is_int(fcall_version(dc), mine - 1, "an older ledger loaded in the store");
    rc = open_at(rs.port, PASSWORD, 1000, &s);
    ok(rc == KMS_OK && fcall_version(dc) == mine, "open replaces an older ledger (now %d)", mine);
    kms_close(s);
    s = NULL;
    load_version(dc, mine + 1);
    rc = open_at(rs.port, PASSWORD, 1000, &s);
    ok(rc == KMS_EVERSION && has(err, "newer") && !s, "a newer ledger: KMS_EVERSION, says newer");
    is_int(fcall_version(dc), mine + 1, "and the newer ledger is not downgraded");
    load_version(dc, mine);

    /* The library lost (FUNCTION FLUSH, an empty restart): reloaded. */
    rc = open_at(rs.port, PASSWORD, 1000, &s);
    simple(dc, "FUNCTION FLUSH");
    rc = sync_once(s, "hB", 1, &rep);
    ok(rc == KMS_OK && fcall_version(dc) == mine, "library flushed: the next sync reloads it");
    kms_reply_free(&rep);
    redisFree(dc);
    rig_redis_restart_empty(&rs);
    dc = rig_redis_conn(&rs);
    rc = sync_once(s, "hB", 2, &rep);
    if (rc != KMS_OK) {
        diag("first call after the restart: %s: %s", kms_err_name(rc), err);
        rc = sync_once(s, "hB", 2, &rep);
    }
    ok(rc == KMS_OK && rep.epoch != 0, "store restarted empty: at most one failed call, then fine");
    kms_reply_free(&rep);
    kms_close(s);
    s = NULL;

    /* ------------------------------------------- Redis 6: EVALSHA path */
    rig_proxy_start(&px6, rs.port);
    rig_ctl(&px6, "deny FUNCTION");
    rig_ctl(&px6, "deny FCALL");
    rc = open_at(px6.port, PASSWORD, 1000, &s);
    ok(rc == KMS_OK && kms_store_mode(s) == 2, "FUNCTION unknown: script mode");
    rig_ctl(&px6, "reset-stats");
    rc = sync_once(s, "h6", 1, &rep);
    ok(rc == KMS_OK && rep.n_grant == 1 && proxy_count(&px6, "EVALSHA") == 1 &&
           strcmp(px6.answer, "ok EVALSHA=1") == 0,
       "a sync is one EVALSHA (%s)", px6.answer);
    kms_reply_free(&rep);
    simple(dc, "SCRIPT FLUSH");
    rig_ctl(&px6, "reset-stats");
    rc = sync_once(s, "h6", 2, &rep);
    ok(rc == KMS_OK && proxy_count(&px6, "SCRIPT") == 1 && proxy_count(&px6, "EVALSHA") == 3,
       "NOSCRIPT: loaded again, the call repeated (%s)", px6.answer);
    kms_reply_free(&rep);
    int v = 0;
    rc = kms_ledger_version(s, &v, err, sizeof err);
    ok(rc == KMS_OK && v == mine, "the script answers version %d", v);
    kms_close(s);
    s = NULL;

    /* A password given to a store without one. */
    rig_redis nopw;
    rig_redis_start(&nopw, NULL);
    rc = open_at(nopw.port, PASSWORD, 1000, &s);
    ok(rc == KMS_EAUTH && has(err, "none configured") && clean(err),
       "a password for a store without one: KMS_EAUTH");
    rc = open_at(nopw.port, NULL, 1000, &s);
    ok(rc == KMS_OK, "no password, none needed: fine");
    kms_close(s);

    /* Bad requests are refused before anything is sent. */
    e = one_entry();
    kms_request bad = {.host = "bad host", .seq = 1, .sync_ms = 250, .valid_ms = 1000,
                       .fallback_ms = 15000, .ent = &e, .n_ent = 1};
    rc = open_at(nopw.port, NULL, 1000, &s);
    ok(kms_sync(s, &bad, &rep, NULL, err, sizeof err) == KMS_EINVAL, "host id with a space: EINVAL");
    bad.host = "h";
    bad.valid_ms = 100;
    ok(kms_sync(s, &bad, &rep, NULL, err, sizeof err) == KMS_EINVAL, "validity below the period: EINVAL");
    kms_close(s);

    redisFree(dc);
    rig_proxy_stop(&px6);
    rig_proxy_stop(&px);
    rig_redis_stop(&nopw);
    rig_redis_stop(&rs);
    return exit_status();
}
