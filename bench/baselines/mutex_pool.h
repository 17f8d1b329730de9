/*
 * bench/baselines/mutex_pool.h - baseline: a key pool in shared memory
 * behind one robust, process-shared pthread mutex.
 *
 * This is how nginx shared zones, APCu and uWSGI caches share state between
 * prefork workers: a table in a shared mapping and one lock around it.  It
 * implements the same pool semantics as the KeyMesh scenarios it is
 * compared with:
 *   - round robin: one cursor in the table, advanced under the lock, and the
 *     first admissible key from it;
 *   - rpm and tpm limits: token-bucket GCRA, exactly KeyMesh's parameters
 *     (T = ceil(period/limit) ns, tau = burst * T); tokens are reserved from
 *     the estimate at acquire (admission counts the reservations still out)
 *     and settled at release with the actual count, committed at the lease's
 *     start, as KeyMesh does;
 *   - cooldown: a 429 cools the key until now + Retry-After, else
 *     cooldown_s doubling per consecutive 429 up to max_cooldown_s;
 *   - in-flight: a count per key, capped by max_inflight;
 *   - counters per key (acquired, successes, 429s, tokens, latency EMA) and a
 *     copy of the key's id and secret into the lease;
 *   - a blocking acquire: a process-shared condition variable (CLOCK_MONOTONIC)
 *     that a release broadcasts when someone waits.
 * A holder that dies with the lock held is detected (EOWNERDEAD) and the
 * mutex made consistent; what it was changing is left as it was (a real
 * implementation would need a repair pass here; the benchmark never kills).
 *
 * Not lock-free: every acquire and every release takes the lock.
 */
#ifndef KM_MUTEX_POOL_H
#define KM_MUTEX_POOL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MP_ID_MAX 32
#define MP_SECRET_MAX 64

enum { MP_OK = 0, MP_EAGAIN = -15, MP_ETIMEDOUT = -24, MP_EINVAL = -1 };
enum { MP_OUT_SUCCESS = 0, MP_OUT_RATE_LIMITED = 1, MP_OUT_CANCELLED = 5 };

typedef struct mp_config {
    uint32_t n_keys;
    uint32_t max_inflight;  /* per key; 0: unlimited */
    uint64_t rpm, rpm_burst; /* rpm 0: no limit; burst 0: = limit */
    uint64_t tpm, tpm_burst;
    uint32_t cooldown_s, max_cooldown_s;
} mp_config;

/* One GCRA limit.  Only touched under the pool lock. */
typedef struct mp_limit {
    uint64_t tat;      /* theoretical arrival time, CLOCK_MONOTONIC ns */
    uint64_t reserved; /* token limits: estimates of the leases still out */
    uint64_t T;        /* emission interval, ns per unit; 0: no limit */
    uint64_t tau;      /* tolerance, burst * T */
} mp_limit;
_Static_assert(sizeof(mp_limit) == 32, "mp_limit layout");

/* One key, on its own cache lines (the lock serialises every access anyway,
 * but neighbouring keys should not share lines with the lock word). */
typedef struct __attribute__((aligned(64))) mp_key {
    uint64_t cooldown_until;   /* ns; 0: not cooling */
    uint32_t inflight, max_inflight;
    uint32_t consecutive_429, secret_len;
    mp_limit rpm, tpm;
    uint64_t acquired, success, rate_limited, cancelled, tokens_used;
    int64_t latency_ema_us;
    char id[MP_ID_MAX];
    char secret[MP_SECRET_MAX];
} mp_key;
_Static_assert(sizeof(mp_key) == 256, "mp_key layout");
_Static_assert(_Alignof(mp_key) == 64, "mp_key alignment");

typedef struct __attribute__((aligned(64))) mp_pool {
    pthread_mutex_t lock; /* robust, process-shared: guards everything below */
    pthread_cond_t cond;  /* process-shared, CLOCK_MONOTONIC: blocking acquire */
    uint32_t n_keys;
    uint32_t cursor;      /* round robin: next key to try */
    uint32_t waiters;     /* processes in mp_acquire_wait */
    uint32_t cooldown_s, max_cooldown_s;
    uint32_t pad;
    mp_key keys[];
} mp_pool;
_Static_assert(sizeof(pthread_mutex_t) == 40 && sizeof(pthread_cond_t) == 48,
               "glibc x86-64 pthread sizes (the pool header layout assumes them)");
_Static_assert(sizeof(mp_pool) == 128, "mp_pool header layout");

typedef struct mp_lease {
    uint32_t key;
    uint32_t tokens;   /* estimate reserved at acquire */
    uint64_t start_ns; /* CLOCK_MONOTONIC at acquire */
    char id[MP_ID_MAX];
    char secret[MP_SECRET_MAX];
} mp_lease;

size_t mp_size(uint32_t n_keys);
/* Initialise a pool in zeroed shared memory of mp_size() bytes. */
int mp_init(mp_pool *p, const mp_config *c);
void mp_destroy(mp_pool *p);
/* 0 and a lease, or MP_EAGAIN with *retry_at_ns (0 if only a release helps). */
int mp_acquire(mp_pool *p, uint32_t tokens, mp_lease *l, uint64_t *retry_at_ns);
/* Blocks on the condition variable until a key is admissible, or MP_ETIMEDOUT. */
int mp_acquire_wait(mp_pool *p, uint32_t tokens, mp_lease *l, uint32_t timeout_ms);
/* tokens < 0 keeps the estimate; retry_after_s <= 0: the cooldown doubling. */
void mp_release(mp_pool *p, const mp_lease *l, int kind, int64_t tokens,
                int64_t latency_us, double retry_after_s);

#endif /* KM_MUTEX_POOL_H */
