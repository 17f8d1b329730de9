/*
 * bench/baselines/redis_pool.c - server management and hiredis client for
 * the Redis baseline (see redis_pool.h, redis_pool.lua).
 */
#include "redis_pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct rp_client {
    redisContext *ctx;
    char sha[48];
};

static uint64_t rp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A port the kernel considers free on 127.0.0.1 right now. */
static int rp_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd < 0)
        return -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int rp_server_start(const char *exe, rp_server *s)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = rp_free_port();
        char portstr[16];
        if (port <= 0) {
            fprintf(stderr, "redis_pool: no free port on 127.0.0.1\n");
            return -1;
        }
        snprintf(portstr, sizeof portstr, "%d", port);
        pid_t pid = fork();
        if (pid < 0) {
            perror("redis_pool: fork");
            return -1;
        }
        if (pid == 0) {
            int nul = open("/dev/null", O_RDWR);
            if (nul >= 0) {
                dup2(nul, 0);
                dup2(nul, 1);
                dup2(nul, 2);
            }
            /* Persistence off (no RDB snapshots, no AOF), loopback only,
             * no config file, working directory /tmp. */
            execlp(exe, exe, "--port", portstr, "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                   "--daemonize", "no", "--dir", "/tmp", "--logfile", "",
                   "--databases", "1", (char *)NULL);
            _exit(127);
        }
        /* Wait up to 5 s for PING. */
        uint64_t until = rp_now_ns() + 5000000000u;
        while (rp_now_ns() < until) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid)
                break; /* exited: port taken, or no binary */
            struct timeval tv = {0, 200000};
            redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
            if (c && !c->err) {
                redisReply *r = redisCommand(c, "PING");
                int ok = r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "PONG");
                if (r)
                    freeReplyObject(r);
                redisFree(c);
                if (ok) {
                    s->pid = pid;
                    s->port = port;
                    return 0;
                }
            } else if (c) {
                redisFree(c);
            }
            struct timespec ms = {0, 20000000};
            nanosleep(&ms, NULL);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    fprintf(stderr, "redis_pool: %s did not start on 127.0.0.1\n", exe);
    return -1;
}

void rp_server_stop(rp_server *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
            s->pid = 0;
            return;
        }
        struct timespec ms = {0, 10000000};
        nanosleep(&ms, NULL);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static char *rp_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = 0;
        *len = (size_t)n;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

rp_client *rp_connect(int port, const char *lua_path, const char *sha)
{
    rp_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ctx = redisConnect("127.0.0.1", port);
    if (!c->ctx || c->ctx->err) {
        fprintf(stderr, "redis_pool: connect 127.0.0.1:%d: %s\n", port,
                c->ctx ? c->ctx->errstr : "out of memory");
        goto fail;
    }
    if (lua_path) {
        size_t len = 0;
        char *src = rp_read_file(lua_path, &len);
        if (!src) {
            fprintf(stderr, "redis_pool: cannot read %s: %s\n", lua_path, strerror(errno));
            goto fail;
        }
        redisReply *r = redisCommand(c->ctx, "SCRIPT LOAD %b", src, len);
        free(src);
        if (!r || r->type != REDIS_REPLY_STRING) {
            fprintf(stderr, "redis_pool: SCRIPT LOAD %s: %s\n", lua_path,
                    r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
            if (r)
                freeReplyObject(r);
            goto fail;
        }
        snprintf(c->sha, sizeof c->sha, "%s", r->str);
        freeReplyObject(r);
    } else {
        snprintf(c->sha, sizeof c->sha, "%s", sha);
    }
    return c;
fail:
    rp_close(c);
    return NULL;
}

const char *rp_sha(const rp_client *c) { return c->sha; }

void rp_close(rp_client *c)
{
    if (!c)
        return;
    if (c->ctx)
        redisFree(c->ctx);
    free(c);
}

static int rp_expect_ok(redisReply *r)
{
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (r && !ok)
        fprintf(stderr, "redis_pool: %s\n", r->str);
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

/* GCRA parameters as mutex_pool.c and KeyMesh compute them. */
static void rp_gcra(uint64_t limit, uint64_t burst, uint64_t *T, uint64_t *tau)
{
    *T = limit ? (60000000000ull + limit - 1) / limit : 0;
    *tau = limit ? (burst ? burst : limit) * *T : 0;
}

int rp_setup(rp_client *c, const mp_config *cfg)
{
    uint64_t rT, rtau, tT, ttau;
    rp_gcra(cfg->rpm, cfg->rpm_burst, &rT, &rtau);
    rp_gcra(cfg->tpm, cfg->tpm_burst, &tT, &ttau);
    if (rp_expect_ok(redisCommand(c->ctx, "FLUSHALL")))
        return -1;
    if (rp_expect_ok(redisCommand(c->ctx, "HSET km:pool n %u cur 0 cool_s %u maxcool_s %u",
                                  cfg->n_keys, cfg->cooldown_s ? cfg->cooldown_s : 60,
                                  cfg->max_cooldown_s ? cfg->max_cooldown_s : 3600)))
        return -1;
    /* Pipelined: one round trip per 1024 keys is not what is measured. */
    for (uint32_t i = 0; i < cfg->n_keys; i++)
        redisAppendCommand(c->ctx,
                           "HSET km:k:%u id k%03u sec sk-bench-%08u cool 0 inf 0 maxinf %u "
                           "rT %llu rtau %llu rtat 0 tT %llu ttau %llu ttat 0 tres 0 "
                           "acq 0 ok 0 rl 0 cn 0 tok 0 c429 0 lat 0",
                           i, i, i, cfg->max_inflight ? cfg->max_inflight : 1000000000u,
                           (unsigned long long)rT, (unsigned long long)rtau,
                           (unsigned long long)tT, (unsigned long long)ttau);
    int rc = 0;
    for (uint32_t i = 0; i < cfg->n_keys; i++) {
        void *r = NULL;
        if (redisGetReply(c->ctx, &r) != REDIS_OK || rp_expect_ok(r))
            rc = -1;
    }
    return rc;
}

int rp_acquire(rp_client *c, uint64_t base_ns, uint32_t tokens, mp_lease *l,
               uint64_t *retry_at_ns)
{
    uint64_t now = rp_now_ns() - base_ns;
    redisReply *r = redisCommand(c->ctx, "EVALSHA %s 0 acq %llu %u", c->sha,
                                 (unsigned long long)now, tokens);
    int rc = MP_EINVAL;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "redis_pool: acquire: %s\n",
                r && r->type == REDIS_REPLY_ERROR ? r->str
                                                  : c->ctx->err ? c->ctx->errstr : "bad reply");
        goto out;
    }
    if (r->element[0]->integer < 0) {
        if (retry_at_ns)
            *retry_at_ns = r->element[1]->type == REDIS_REPLY_STRING
                               ? strtoull(r->element[1]->str, NULL, 10) + base_ns
                               : 0;
        rc = MP_EAGAIN;
        goto out;
    }
    l->key = (uint32_t)r->element[0]->integer;
    l->tokens = tokens;
    l->start_ns = now; /* the script's clock: ns since base_ns */
    if (r->elements >= 3 && r->element[1]->type == REDIS_REPLY_STRING &&
        r->element[2]->type == REDIS_REPLY_STRING) {
        snprintf(l->id, sizeof l->id, "%s", r->element[1]->str);
        snprintf(l->secret, sizeof l->secret, "%s", r->element[2]->str);
    }
    rc = MP_OK;
out:
    if (r)
        freeReplyObject(r);
    return rc;
}

int rp_release(rp_client *c, uint64_t base_ns, const mp_lease *l, int kind,
               int64_t tokens, int64_t latency_us, double retry_after_s)
{
    uint64_t now = rp_now_ns() - base_ns;
    redisReply *r = redisCommand(c->ctx, "EVALSHA %s 0 rel %u %llu %u %lld %llu %d %lld %.0f",
                                 c->sha, l->key, (unsigned long long)now, l->tokens,
                                 (long long)tokens, (unsigned long long)l->start_ns, kind,
                                 (long long)latency_us,
                                 retry_after_s > 0 ? retry_after_s * 1e9 : 0.0);
    int rc = r && r->type == REDIS_REPLY_INTEGER ? MP_OK : MP_EINVAL;
    if (rc != MP_OK)
        fprintf(stderr, "redis_pool: release: %s\n",
                r && r->type == REDIS_REPLY_ERROR ? r->str
                                                  : c->ctx->err ? c->ctx->errstr : "bad reply");
    if (r)
        freeReplyObject(r);
    return rc;
}

int rp_counts(rp_client *c, uint32_t n_keys, uint64_t *acquired, uint64_t *success)
{
    *acquired = *success = 0;
    for (uint32_t i = 0; i < n_keys; i++)
        redisAppendCommand(c->ctx, "HMGET km:k:%u acq ok", i);
    int rc = 0;
    for (uint32_t i = 0; i < n_keys; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK || !r ||
            r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
            rc = -1;
        } else {
            *acquired += strtoull(r->element[0]->str, NULL, 10);
            *success += strtoull(r->element[1]->str, NULL, 10);
        }
        if (r)
            freeReplyObject(r);
    }
    return rc;
}
