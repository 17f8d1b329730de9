/*
 * bench/baselines/redis_pool.h - the Redis baseline: a redis-server the
 * benchmark starts itself (127.0.0.1, a free port, persistence off) and
 * stops by its pid, and a hiredis client calling redis_pool.lua.
 * Semantics: see redis_pool.lua (the same as mutex_pool.h).
 */
#ifndef KM_REDIS_POOL_H
#define KM_REDIS_POOL_H

#include <stdint.h>
#include <sys/types.h>

#include "mutex_pool.h" /* mp_config, mp_lease, MP_* codes and outcome kinds */

typedef struct rp_server {
    pid_t pid;
    int port;
} rp_server;

/* Start `exe` (e.g. "redis-server") on 127.0.0.1 on a free port, no RDB, no
 * AOF, and wait until it answers PING.  0 on success, -1 with a message. */
int rp_server_start(const char *exe, rp_server *s);
/* SIGTERM to that pid (SIGKILL after 3 s), reaped with waitpid. */
void rp_server_stop(rp_server *s);

typedef struct rp_client rp_client; /* one connection + the script's SHA */

/* Connect; if lua_path is given, SCRIPT LOAD it (else sha must be given). */
rp_client *rp_connect(int port, const char *lua_path, const char *sha);
const char *rp_sha(const rp_client *c);
void rp_close(rp_client *c);
/* FLUSHALL, then one hash per key as in redis_pool.lua.  0 or -1. */
int rp_setup(rp_client *c, const mp_config *cfg);
/* `base_ns`: CLOCK_MONOTONIC origin shared by every client of a run. */
int rp_acquire(rp_client *c, uint64_t base_ns, uint32_t tokens, mp_lease *l,
               uint64_t *retry_at_ns);
int rp_release(rp_client *c, uint64_t base_ns, const mp_lease *l, int kind,
               int64_t tokens, int64_t latency_us, double retry_after_s);
/* Sum of the keys' acquired and success counters (cross-check). */
int rp_counts(rp_client *c, uint32_t n_keys, uint64_t *acquired, uint64_t *success);

#endif /* KM_REDIS_POOL_H */
