/*
 * tests/fleet/sim.h - a simulated host for the ledger tests: what an agent
 * keeps between syncs (seq, ack, epoch, credit held, the fallback promise it
 * holds), reduced to what the ledger sees.  Header-only, static inline.
 *
 *   sim_init(&h, "h1")                 no entries yet, seq 0
 *   sim_entry(&h, kid, win, L, P_ms, B, mode, strict)   add a (key, window)
 *   sim_sync(st, &h, now_us, apply)    one kms_sync with the host's report;
 *                                      apply=1: apply the reply as an agent
 *                                      does (credit += grant, promise, ack,
 *                                      epoch); 0: the reply is "lost".
 *                                      Returns the kms_sync code; the reply
 *                                      stays in h.rep until the next call.
 *   sim_spend(&h, e, n)                spend n units of entry e's credit now
 *   ledger_clock(c, fleet, us)         drive the ledger's clock (the `clock`
 *                                      field of its hash)
 *
 * Times are the ledger's clock in microseconds; the simulated host uses the
 * same clock (its send time), which is what the ledger's bounds assume.
 */
#ifndef KM_TESTS_FLEET_SIM_H
#define KM_TESTS_FLEET_SIM_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "store.h"
#include "tap.h"

#define SIM_MAX_ENT 4

typedef struct sim_host {
    char id[32];
    uint64_t seq, ack, epoch;
    unsigned sync_ms, valid_ms, fallback_ms;
    size_t n;
    kms_entry ent[SIM_MAX_ENT];
    uint64_t credit[SIM_MAX_ENT];      /* held now */
    uint64_t credit_until[SIM_MAX_ENT];/* us: send time + V */
    uint64_t spent[SIM_MAX_ENT];       /* since the last report */
    uint64_t ret[SIM_MAX_ENT];         /* lapsed since the last report */
    uint32_t held[SIM_MAX_ENT];        /* fallback promise, ppm */
    uint64_t held_until[SIM_MAX_ENT];  /* us: send time + F */
    kms_event ev[8];
    size_t n_ev;
    unsigned flags;
    kms_reply rep;
    uint64_t stale_last;
    char err[512];
} sim_host;

static inline void sim_init(sim_host *h, const char *id)
{
    memset(h, 0, sizeof *h);
    snprintf(h->id, sizeof h->id, "%s", id);
    h->sync_ms = 250;
    h->valid_ms = 1000;
    h->fallback_ms = 15000;
}

static inline size_t sim_entry(sim_host *h, const char *kid, int win, uint64_t L, uint64_t P_ms,
                               uint64_t B, int mode, int strict)
{
    if (h->n >= SIM_MAX_ENT)
        bail_out("sim: too many entries");
    kms_entry *e = &h->ent[h->n];
    memset(e, 0, sizeof *e);
    snprintf(e->kid, sizeof e->kid, "%s", kid);
    e->win = win;
    e->limit = L;
    e->period_ms = P_ms;
    e->burst = B;
    e->mode = mode;
    e->strict = strict;
    return h->n++;
}

static inline void sim_spend(sim_host *h, size_t e, uint64_t n)
{
    if (n > h->credit[e])
        bail_out("sim: %s spends %" PRIu64 " with %" PRIu64 " held", h->id, n, h->credit[e]);
    h->credit[e] -= n;
    h->spent[e] += n;
}

static inline void sim_event(sim_host *h, const char *kid, int kind, uint64_t arg_ms)
{
    kms_event *v = &h->ev[h->n_ev++];
    snprintf(v->kid, sizeof v->kid, "%s", kid);
    v->kind = kind;
    v->arg_ms = arg_ms;
}

/* One sync at ledger time now_us.  Credit past its deadline lapses first
 * (reported as returned), as an agent does before it reports. */
static inline int sim_sync(kms_store *st, sim_host *h, uint64_t now_us, int apply)
{
    kms_request q = {0};
    for (size_t e = 0; e < h->n; e++) {
        if (h->credit[e] && now_us >= h->credit_until[e]) {
            h->ret[e] += h->credit[e];
            h->credit[e] = 0;
        }
        if (now_us >= h->held_until[e])
            h->held[e] = 0;
        h->ent[e].spent = h->spent[e];
        h->ent[e].returned = h->ret[e];
        h->ent[e].left = h->credit[e];
        h->ent[e].fb_held_ppm = h->held[e];
    }
    h->seq++;
    q.host = h->id;
    q.seq = h->seq;
    q.ack = h->ack;
    q.epoch = h->epoch;
    q.flags = h->flags;
    q.sync_ms = h->sync_ms;
    q.valid_ms = h->valid_ms;
    q.fallback_ms = h->fallback_ms;
    q.ent = h->ent;
    q.n_ent = h->n;
    q.ev = h->ev;
    q.n_ev = h->n_ev;
    kms_reply_free(&h->rep);
    h->err[0] = '\0';
    int rc = kms_sync(st, &q, &h->rep, &h->stale_last, h->err, sizeof h->err);
    if (rc != KMS_OK)
        return rc;
    /* The report is in the ledger: the counters start again. */
    for (size_t e = 0; e < h->n; e++)
        h->spent[e] = h->ret[e] = 0;
    h->n_ev = 0;
    if (apply) {
        h->ack = h->seq;
        h->epoch = h->rep.epoch;
        for (size_t e = 0; e < h->n; e++) {
            const kms_grant *g = &h->rep.grant[e];
            h->credit[e] += g->grant;
            if (g->grant || h->credit[e])
                h->credit_until[e] = now_us + (uint64_t)g->valid_ms * 1000;
            h->held[e] = g->fb_ppm;
            h->held_until[e] = now_us + (uint64_t)g->fallback_ms * 1000;
        }
    }
    return rc;
}

static inline void ledger_clock(redisContext *c, const char *fleet, uint64_t us)
{
    redisReply *r = redisCommand(c, "HSET {km:%s}:ledger clock %" PRIu64, fleet, us);
    if (!r || r->type == REDIS_REPLY_ERROR)
        bail_out("cannot set the ledger clock: %s", r ? r->str : c->errstr);
    freeReplyObject(r);
}

/* The ledger's whole state as one string (hash fields sorted, the host set
 * with scores), to tell whether a call changed anything. */
static inline char *ledger_dump(redisContext *c, const char *fleet)
{
    redisReply *r = redisCommand(c, "EVAL %s 2 {km:%s}:ledger {km:%s}:hosts",
                                 "local h = redis.call('HGETALL', KEYS[1]) "
                                 "local function hex(v) return (v:gsub('.', function(ch) "
                                 "return string.format('%02x', ch:byte()) end)) end "
                                 "local t = {} for i = 1, #h, 2 do t[#t+1] = h[i] .. '=' .. hex(h[i+1]) end "
                                 "table.sort(t) "
                                 "local z = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES') "
                                 "return table.concat(t, '\\n') .. '\\n--\\n' .. table.concat(z, ' ')",
                                 fleet, fleet);
    if (!r || r->type != REDIS_REPLY_STRING)
        bail_out("cannot dump the ledger: %s", r && r->str ? r->str : c->errstr);
    char *s = strdup(r->str);
    freeReplyObject(r);
    return s;
}

#endif /* KM_TESTS_FLEET_SIM_H */
