/*
 * bench/baselines/mutex_pool.c - the mutex-protected shared-memory pool
 * (semantics in mutex_pool.h).
 */
#include "mutex_pool.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MP_NS_PER_S UINT64_C(1000000000)
#define MP_MINUTE_NS (60 * MP_NS_PER_S)

static uint64_t mp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * MP_NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t mp_max(uint64_t a, uint64_t b) { return a > b ? a : b; }

size_t mp_size(uint32_t n_keys)
{
    return sizeof(mp_pool) + (size_t)n_keys * sizeof(mp_key);
}

static void mp_limit_init(mp_limit *l, uint64_t limit, uint64_t burst)
{
    memset(l, 0, sizeof *l);
    if (!limit)
        return;
    l->T = (MP_MINUTE_NS + limit - 1) / limit; /* KeyMesh's token_bucket T */
    l->tau = (burst ? burst : limit) * l->T;
}

int mp_init(mp_pool *p, const mp_config *c)
{
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;

    if (!c->n_keys)
        return MP_EINVAL;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&p->lock, &ma) != 0)
        return MP_EINVAL;
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_cond_init(&p->cond, &ca) != 0)
        return MP_EINVAL;
    pthread_condattr_destroy(&ca);
    p->n_keys = c->n_keys;
    p->cursor = 0;
    p->waiters = 0;
    p->cooldown_s = c->cooldown_s ? c->cooldown_s : 60;
    p->max_cooldown_s = c->max_cooldown_s ? c->max_cooldown_s : 3600;
    for (uint32_t i = 0; i < c->n_keys; i++) {
        mp_key *k = &p->keys[i];
        memset(k, 0, sizeof *k);
        k->max_inflight = c->max_inflight ? c->max_inflight : UINT32_MAX;
        mp_limit_init(&k->rpm, c->rpm, c->rpm_burst);
        mp_limit_init(&k->tpm, c->tpm, c->tpm_burst);
        /* id "k000", secret "sk-bench-00000000": what the KeyMesh runs use */
        snprintf(k->id, sizeof k->id, "k%03u", (unsigned)i);
        k->secret_len = (uint32_t)snprintf(k->secret, sizeof k->secret, "sk-bench-%08u",
                                           (unsigned)i);
    }
    return MP_OK;
}

void mp_destroy(mp_pool *p)
{
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
}

/* Take the lock; a previous owner that died holding it leaves EOWNERDEAD:
 * mark the mutex consistent and go on (see mutex_pool.h). */
static void mp_lock(mp_pool *p)
{
    int rc = pthread_mutex_lock(&p->lock);
    if (rc == EOWNERDEAD)
        pthread_mutex_consistent(&p->lock);
}

static void mp_unlock(mp_pool *p)
{
    pthread_mutex_unlock(&p->lock);
}

/* Under the lock: try key k at `now`.  1 if admitted (charged), else 0 and
 * *retry lowered to when it may admit (0: only a release helps). */
static int mp_try_key(mp_key *k, uint32_t tokens, uint64_t now, uint64_t *retry)
{
    if (k->cooldown_until > now) {
        if (k->cooldown_until < *retry)
            *retry = k->cooldown_until;
        return 0;
    }
    if (k->inflight >= k->max_inflight) {
        *retry = 0;
        return 0;
    }
    uint64_t rtat = 0, ttat = 0;
    if (k->rpm.T) {
        rtat = mp_max(k->rpm.tat, now) + k->rpm.T;
        if (rtat - now > k->rpm.tau) {
            uint64_t at = rtat - k->rpm.tau;
            if (at < *retry)
                *retry = at;
            return 0;
        }
    }
    if (k->tpm.T) {
        ttat = mp_max(k->tpm.tat, now) + (k->tpm.reserved + tokens) * k->tpm.T;
        if (ttat - now > k->tpm.tau) {
            uint64_t at = ttat - k->tpm.tau;
            if (at < *retry)
                *retry = at;
            return 0;
        }
    }
    if (k->rpm.T)
        k->rpm.tat = rtat;
    if (k->tpm.T)
        k->tpm.reserved += tokens;
    k->inflight++;
    k->acquired++;
    return 1;
}

static int mp_acquire_locked(mp_pool *p, uint32_t tokens, uint64_t now, mp_lease *l,
                             uint64_t *retry_at_ns)
{
    uint64_t retry = UINT64_MAX;
    uint32_t n = p->n_keys, start = p->cursor;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t i = start + j;
        if (i >= n)
            i -= n;
        mp_key *k = &p->keys[i];
        if (!mp_try_key(k, tokens, now, &retry))
            continue;
        p->cursor = i + 1 == n ? 0 : i + 1;
        l->key = i;
        l->tokens = tokens;
        l->start_ns = now;
        memcpy(l->id, k->id, sizeof l->id);
        memcpy(l->secret, k->secret, k->secret_len + 1);
        return MP_OK;
    }
    if (retry_at_ns)
        *retry_at_ns = retry == UINT64_MAX ? 0 : retry;
    return MP_EAGAIN;
}

int mp_acquire(mp_pool *p, uint32_t tokens, mp_lease *l, uint64_t *retry_at_ns)
{
    uint64_t now = mp_now_ns();
    mp_lock(p);
    int rc = mp_acquire_locked(p, tokens, now, l, retry_at_ns);
    mp_unlock(p);
    return rc;
}

int mp_acquire_wait(mp_pool *p, uint32_t tokens, mp_lease *l, uint32_t timeout_ms)
{
    uint64_t now = mp_now_ns(), deadline = now + (uint64_t)timeout_ms * 1000000u, retry = 0;
    int rc;
    mp_lock(p);
    for (;;) {
        rc = mp_acquire_locked(p, tokens, now, l, &retry);
        if (rc != MP_EAGAIN)
            break;
        if (now >= deadline) {
            rc = MP_ETIMEDOUT;
            break;
        }
        uint64_t until = retry && retry < deadline ? retry : deadline;
        struct timespec ts = {(time_t)(until / MP_NS_PER_S), (long)(until % MP_NS_PER_S)};
        p->waiters++;
        int w = pthread_cond_timedwait(&p->cond, &p->lock, &ts);
        if (w == EOWNERDEAD)
            pthread_mutex_consistent(&p->lock);
        p->waiters--;
        now = mp_now_ns();
    }
    mp_unlock(p);
    return rc;
}

void mp_release(mp_pool *p, const mp_lease *l, int kind, int64_t tokens,
                int64_t latency_us, double retry_after_s)
{
    uint64_t now = 0;
    mp_lock(p);
    mp_key *k = &p->keys[l->key];
    uint64_t actual = tokens < 0 ? l->tokens : (uint64_t)tokens;
    if (kind == MP_OUT_CANCELLED)
        actual = 0;
    if (k->tpm.T) {
        /* Commit the actual count as if spent at the lease's start and drop
         * the reservation: KeyMesh's settlement. */
        if (actual)
            k->tpm.tat = mp_max(k->tpm.tat, l->start_ns) + actual * k->tpm.T;
        k->tpm.reserved -= l->tokens;
    }
    k->inflight--;
    k->tokens_used += actual;
    switch (kind) {
    case MP_OUT_SUCCESS:
        k->success++;
        k->consecutive_429 = 0;
        if (latency_us >= 0)
            k->latency_ema_us = k->latency_ema_us
                                    ? k->latency_ema_us + (latency_us - k->latency_ema_us) / 8
                                    : latency_us;
        break;
    case MP_OUT_RATE_LIMITED: {
        now = mp_now_ns();
        uint64_t cool;
        if (retry_after_s > 0) {
            cool = (uint64_t)(retry_after_s * 1e9);
        } else {
            uint32_t sh = k->consecutive_429 < 20 ? k->consecutive_429 : 20;
            uint64_t s = (uint64_t)p->cooldown_s << sh;
            cool = (s < p->max_cooldown_s ? s : p->max_cooldown_s) * MP_NS_PER_S;
        }
        k->consecutive_429++;
        k->rate_limited++;
        k->cooldown_until = now + cool;
        break;
    }
    default:
        k->cancelled++;
        break;
    }
    /* Wake sleepers only when someone waits (one load otherwise). */
    if (p->waiters)
        pthread_cond_broadcast(&p->cond);
    mp_unlock(p);
}
