/*
 * tests/fleet/rig.h - the fleet tests' rig: a redis-server of the test's own
 * on 127.0.0.1 at a free port, and the fault-injecting proxy
 * (tests/fleet/proxy.py) in front of it.  Header-only, static inline, like
 * tests/tap.h.
 *
 *   rig_redis_start(&r, password)   fork/exec redis-server --port P --bind
 *                                   127.0.0.1 --save '' --appendonly no
 *                                   (password NULL: none); waits for PING.
 *   rig_redis_stop(&r)              SIGTERM (SIGKILL after 5 s) by pid, reap
 *   rig_redis_restart_empty(&r)     stop, start again on the same port: empty
 *   rig_redis_pause / _resume(&r)   SIGSTOP / SIGCONT
 *   rig_redis_conn(&r)              a hiredis connection (AUTH done) for the
 *                                   test to look at or steer the store
 *   rig_proxy_start(&p, port)       start proxy.py with upstream 127.0.0.1:port
 *   rig_ctl(&p, fmt, ...)         one control command; 0 if "ok"; the answer
 *                                   is in p.answer
 *   rig_proxy_stop(&p)
 *   rig_cleanup()                   stop everything still running (atexit and
 *                                   on SIGTERM/SIGINT: installed by the first
 *                                   start)
 *
 * Everything started is stopped by pid, never by name.  A start that fails
 * calls bail_out(): a missing redis-server or python3 is a broken setup, not
 * a reason to pass.
 */
#ifndef KM_TESTS_FLEET_RIG_H
#define KM_TESTS_FLEET_RIG_H

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "tap.h"

#ifndef RIG_PROXY_PY
#define RIG_PROXY_PY "tests/fleet/proxy.py"
#endif
#define RIG_PYTHON "/usr/bin/python3"

typedef struct rig_redis {
    pid_t pid;
    int port;
    char dir[128];
    char password[64];
} rig_redis;

typedef struct rig_proxy {
    pid_t pid;
    int port, ctl;
    int ctl_fd;
    int stdin_fd; /* the proxy exits when this closes */
    char answer[512];
} rig_proxy;

#define RIG_MAX 8
static struct {
    rig_redis *redis[RIG_MAX];
    rig_proxy *proxy[RIG_MAX];
    int installed;
    pid_t owner;
} rig__st;

static inline void rig__sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline void rig__kill_wait(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGCONT); /* a paused redis must see the SIGTERM */
    kill(pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        rig__sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static inline void rig_cleanup(void)
{
    if (rig__st.owner != getpid())
        return;
    for (int i = 0; i < RIG_MAX; i++) {
        if (rig__st.proxy[i] && rig__st.proxy[i]->pid > 0) {
            rig__kill_wait(rig__st.proxy[i]->pid);
            rig__st.proxy[i]->pid = 0;
        }
        if (rig__st.redis[i] && rig__st.redis[i]->pid > 0) {
            rig__kill_wait(rig__st.redis[i]->pid);
            rig__st.redis[i]->pid = 0;
        }
        if (rig__st.redis[i] && rig__st.redis[i]->dir[0]) {
            /* redis writes only its log there (--save '', no AOF) */
            static const char *const files[] = {"redis.log", "dump.rdb"};
            char path[200];
            for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
                snprintf(path, sizeof path, "%s/%s", rig__st.redis[i]->dir, files[f]);
                unlink(path);
            }
            rmdir(rig__st.redis[i]->dir);
            rig__st.redis[i]->dir[0] = '\0';
        }
    }
}

static inline void rig__on_signal(int sig)
{
    rig_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline void rig__install(void)
{
    if (rig__st.installed)
        return;
    rig__st.installed = 1;
    rig__st.owner = getpid();
    atexit(rig_cleanup);
    signal(SIGTERM, rig__on_signal);
    signal(SIGINT, rig__on_signal);
    signal(SIGPIPE, SIG_IGN);
}

/* A port nobody listens on now (bind to 0, read it, close).  Another
 * process may take it before we use it; starts retry on a new one. */
static inline int rig_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        bail_out("rig: no free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* A hiredis connection to the rig's redis, authenticated; NULL if none. */
static inline redisContext *rig_redis_conn(const rig_redis *r)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (r->password[0]) {
        redisReply *x = redisCommand(c, "AUTH %s", r->password);
        int ok = x && x->type == REDIS_REPLY_STATUS;
        if (x)
            freeReplyObject(x);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static inline int rig__redis_spawn(rig_redis *r)
{
    char port[16], logf[200];
    snprintf(port, sizeof port, "%d", r->port);
    snprintf(logf, sizeof logf, "%s/redis.log", r->dir);
    pid_t pid = fork();
    if (pid < 0)
        bail_out("rig: fork: %s", strerror(errno));
    if (pid == 0) {
        const char *argv[20];
        int n = 0;
        argv[n++] = "redis-server";
        argv[n++] = "--port";
        argv[n++] = port;
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
        argv[n++] = "--save";
        argv[n++] = "";
        argv[n++] = "--appendonly";
        argv[n++] = "no";
        argv[n++] = "--daemonize";
        argv[n++] = "no";
        argv[n++] = "--dir";
        argv[n++] = r->dir;
        argv[n++] = "--logfile";
        argv[n++] = logf;
        if (r->password[0]) {
            argv[n++] = "--requirepass";
            argv[n++] = r->password;
        }
        argv[n] = NULL;
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
    for (int i = 0; i < 500; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            r->pid = 0;
            return -1; /* exited: port taken, or no redis-server */
        }
        redisContext *c = rig_redis_conn(r);
        if (c) {
            redisReply *x = redisCommand(c, "PING");
            int ok = x && x->type == REDIS_REPLY_STATUS;
            if (x)
                freeReplyObject(x);
            redisFree(c);
            if (ok)
                return 0;
        }
        rig__sleep_ms(10);
    }
    rig__kill_wait(pid);
    r->pid = 0;
    return -1;
}

static inline void rig__track_redis(rig_redis *r)
{
    for (int i = 0; i < RIG_MAX; i++)
        if (rig__st.redis[i] == r)
            return;
    for (int i = 0; i < RIG_MAX; i++)
        if (!rig__st.redis[i]) {
            rig__st.redis[i] = r;
            return;
        }
    bail_out("rig: more than %d redis servers", RIG_MAX);
}

static inline void rig_redis_start(rig_redis *r, const char *password)
{
    rig__install();
    memset(r, 0, sizeof *r);
    if (password)
        snprintf(r->password, sizeof r->password, "%s", password);
    snprintf(r->dir, sizeof r->dir, "%s/kmt-fleet-redis.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(r->dir))
        bail_out("rig: mkdtemp: %s", strerror(errno));
    rig__track_redis(r);
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = rig_free_port();
        if (rig__redis_spawn(r) == 0)
            return;
    }
    bail_out("rig: redis-server did not start on 127.0.0.1 (is it installed? log in %s)", r->dir);
}

static inline void rig_redis_stop(rig_redis *r)
{
    rig__kill_wait(r->pid);
    r->pid = 0;
}

static inline void rig_redis_restart_empty(rig_redis *r)
{
    rig_redis_stop(r);
    for (int attempt = 0; attempt < 50; attempt++) {
        if (rig__redis_spawn(r) == 0)
            return;
        rig__sleep_ms(100); /* the port may linger a moment */
    }
    bail_out("rig: redis-server did not restart on port %d", r->port);
}

static inline void rig_redis_pause(rig_redis *r)
{
    kill(r->pid, SIGSTOP);
}

static inline void rig_redis_resume(rig_redis *r)
{
    kill(r->pid, SIGCONT);
}

/* ------------------------------------------------------------------ proxy */

static inline int rig_ctl(rig_proxy *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int rig_ctl(rig_proxy *p, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line - 1)
        bail_out("rig: proxy command too long");
    line[n++] = '\n';
    if (write(p->ctl_fd, line, (size_t)n) != n)
        bail_out("rig: proxy control: %s", strerror(errno));
    size_t got = 0;
    while (got < sizeof p->answer - 1) {
        ssize_t k = read(p->ctl_fd, p->answer + got, 1);
        if (k <= 0)
            bail_out("rig: proxy control closed");
        if (p->answer[got] == '\n')
            break;
        got++;
    }
    p->answer[got] = '\0';
    return strncmp(p->answer, "ok", 2) == 0 ? 0 : -1;
}

static inline void rig_proxy_start(rig_proxy *p, int upstream_port)
{
    int out[2], in[2];
    char up[64];

    rig__install();
    memset(p, 0, sizeof *p);
    snprintf(up, sizeof up, "127.0.0.1:%d", upstream_port);
    if (pipe(out) != 0 || pipe(in) != 0)
        bail_out("rig: pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        bail_out("rig: fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(RIG_PYTHON, RIG_PYTHON, RIG_PROXY_PY, "--upstream", up, "--stdin-eof-exits",
              (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->pid = pid;
    p->stdin_fd = in[1];
    for (int i = 0; i < RIG_MAX; i++)
        if (!rig__st.proxy[i]) {
            rig__st.proxy[i] = p;
            break;
        }
    FILE *f = fdopen(out[0], "r");
    char line[200];
    if (!f || !fgets(line, sizeof line, f) ||
        sscanf(line, "proxy listen=%d ctl=%d", &p->port, &p->ctl) != 2)
        bail_out("rig: %s did not start", RIG_PROXY_PY);
    fclose(f);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->ctl),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        bail_out("rig: proxy control connect: %s", strerror(errno));
    p->ctl_fd = fd;
}

static inline void rig_proxy_stop(rig_proxy *p)
{
    if (p->ctl_fd > 0)
        close(p->ctl_fd);
    if (p->stdin_fd > 0)
        close(p->stdin_fd);
    rig__kill_wait(p->pid);
    p->pid = 0;
    p->ctl_fd = p->stdin_fd = 0;
}

#endif /* KM_TESTS_FLEET_RIG_H */
