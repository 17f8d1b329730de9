/*
 * tools/sync/agent.c - the fleet sync agent (kmctl sync); see agent.h and
 * DESIGN.md sections 1 (the rules the ledger's bound assumes) and 5.
 *
 * How the rules of DESIGN.md section 1 are kept here:
 *
 *   1. One request in flight, bytes fixed per seq.  `a->req` is the one
 *      request; it is built once (build_request) and only re-sent as it is
 *      (a retry) until a reply to it is applied or the ledger refuses it.
 *      Its counts live in the segment, not here: km_fleet_report_take
 *      stamps what the collects took with the seq, km_fleet_report_ack
 *      forgets them once the reply is applied, and the agent does not
 *      collect meanwhile (what acquirers spend waits in the segment's
 *      counters for the next seq).  An agent killed with a report
 *      unanswered leaves it stamped; its successor's first take returns
 *      it, and it goes out first, as it was (seq, ack, epoch, first send),
 *      its reply applied without credit (rule 2: the predecessor may have
 *      applied it).  seq = max(last + 1, CLOCK_REALTIME in us); after
 *      KMS_ESTALE the same report goes out again numbered above stale.
 *   2. t_send is the first send of the seq: credit granted by its reply is
 *      usable until t_send + V, the fallback share from t_recv + V until
 *      t_send + F (apply_reply).
 *   3. Only the reply to the seq in flight is applied (the store thread
 *      answers exactly the request it was handed; a reply that names
 *      another seq is dropped).  ack = the last seq whose reply was applied.
 *   4. spent, returned, left, fb_spent and adj come from km_fleet_collect
 *      (the credit words); the agent only adds them up between reports.
 *      Spend budgets (km_fleet_spend_collect) are reported alike: what
 *      was spent since the last report, per budget and period.
 *   5. bye: the deadline and the fallback window of every slot are ended
 *      (km_fleet_apply), the credit voided and counted (km_fleet_collect
 *      with an infinite now), a report with left = 0 and KMS_BYE sent, the
 *      role released; exit 0 whether or not it was answered.
 *
 * Threads.  The segment thread (the caller of kma_run) does everything but
 * the store I/O; the store thread only kms_open/kms_sync.  They share
 * `kma_io` under its mutex: `posted` hands a request over (the request's
 * arrays stay untouched by the segment thread until `done`), `done` hands
 * the result back.  The store thread reads the request only between the
 * two, so the mutex's acquire/release orders every access to it.
 */
#include "agent.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KMA_POLL_NS 5000000ull /* the segment thread's poll: replies, stop */
#define KMA_LOG_EVERY_NS 60000000000ull /* a configuration error: once a minute */
#define KMA_MS 1000000ull

/* The identity of a (key, model, window) in the segment. */
typedef struct kma_id {
    uint32_t key, key_gen, model;
    int window;
} kma_id;

/* The agent's state of one fleet slot: what was collected since the last
 * report (pending), and what it holds. */
typedef struct kma_slot {
    kma_id id;
    char kid[KMS_ID_MAX + 1]; /* ledger name of the key (or key x model) */
    uint64_t limit, burst, period_ms;
    int mode, strict;
    int present;              /* in the last collect */
    int unreported;           /* collected, not yet in a request (the
                               * counts are the segment's: rule 1) */
    uint64_t seen_units;      /* spent + fb_spent + refused, for demand */
    double demand;            /* EWMA (alpha 0.5) of units per second */
    /* held: the fallback promise of the last reply applied */
    uint32_t fb_ppm;
    uint64_t fb_until_ns;
    uint64_t hv;              /* health version last applied (model 0) */
    int hv_known;
    int err_logged;           /* grant err last logged */
} kma_slot;

/* The agent's state of one fleet key's budget (post-paid, DESIGN.md
 * section 8): the spend collected and not yet reported, and the other
 * hosts' spend as last applied with what it was built from. */
typedef struct kma_bud {
    uint32_t key, key_gen;
    char bid[KMS_ID_MAX + 1];
    uint64_t budget;
    int hard, present, over_logged;
    uint64_t start, end_ns;  /* the period pending is of */
    uint64_t pending;        /* micro-USD spent here, not yet reported (the
                              * segment's count: each collect sets it) */
    uint64_t local;          /* spent here in the period, at the last collect */
    /* the others' figure: in (a_start, a_end) and ledger epoch a_epoch,
     * base (carried from an earlier epoch) + total - mine, never below
     * the last one (others) */
    uint64_t a_start, a_end, a_epoch, base, others;
} kma_bud;

/* A budget entry of the request in flight: which period it reported. */
typedef struct kma_bref {
    uint32_t key, key_gen;
    uint64_t start, end_ns;
    uint64_t local;          /* the local spend the report counts up to */
} kma_bref;

typedef struct kma_req {
    int active;  /* a request exists: posted, or waiting for a retry */
    int posted;  /* with the store thread now */
    uint64_t seq, t_send_ns, ack, epoch;
    int sent;    /* t_send_ns is set (first send done) */
    int recovered; /* a dead predecessor's report: its reply grants nothing */
    unsigned flags;
    kms_entry *ent;
    kma_id *id;
    size_t n_ent, cap_ent;
    kms_event *ev;
    size_t n_ev, cap_ev;
    kms_budget *bud;
    kma_bref *bref;
    size_t n_bud, cap_bud;
} kma_req;

typedef struct kma_io {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int posted, done, quit;
    kms_request q;
    int rc;
    kms_reply rep;
    uint64_t stale_last, t_recv_ns;
    char err[512];
    const kma_opts *o;
    kms_store *st;
} kma_io;

typedef struct kma {
    km_env *env;
    int stopping;  /* say_bye began: replies end credit and shares, open none */
    const kma_opts *o;
    kma_io io;
    kma_req req;
    kma_slot *sl;
    size_t n_sl, cap_sl;
    km_fleet_slot *buf;
    size_t cap_buf;
    kms_event *pev; /* health events for the next request */
    size_t n_pev, cap_pev;
    kma_bud *bd;    /* fleet keys' budgets */
    size_t n_bd, cap_bd;
    km_fleet_budget *bbuf;
    size_t cap_bbuf;
    km_fleet_status st;
    uint64_t last_seq, last_collect_ns, started_ns;
    uint64_t cfg_logged_ns;
    int cfg_rc;     /* the configuration error last logged, 0: none */
    int unreachable_logged;
} kma;

static void alog(const kma *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void alog(const kma *a, const char *fmt, ...)
{
    va_list ap;
    struct timespec ts;
    struct tm tm;
    char when[32] = "";
    clock_gettime(CLOCK_REALTIME, &ts);
    if (gmtime_r(&ts.tv_sec, &tm))
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(a->o->log, "kmctl: sync: %s %s: ", when, a->o->segment);
    va_start(ap, fmt);
    vfprintf(a->o->log, fmt, ap);
    va_end(ap);
    fputc('\n', a->o->log);
    fflush(a->o->log);
}

static uint64_t realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 8;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * size);
    if (q)
        *cap = c;
    return q;
}

/* ------------------------------------------------------------ store thread */

static int retryable(int rc)
{
    return rc == KMS_ETIMEOUT || rc == KMS_EIO || rc == KMS_ECONNECT || rc == KMS_EPROTO;
}

static void *store_main(void *arg)
{
    kma_io *io = arg;
    const kma_opts *o = io->o;
    kms_opts so = {.url = o->url,
                   .password = o->password,
                   .fleet = o->fleet,
                   .connect_timeout_ms = o->timeout_ms,
                   .io_timeout_ms = o->timeout_ms};

    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (!io->posted && !io->quit)
            pthread_cond_wait(&io->cv, &io->mu);
        if (!io->posted)
            break;
        /* The request stays the segment thread's own until done is set:
         * the copy and its arrays are read only here, after the mutex
         * acquired what the poster wrote before posting. */
        kms_request q = io->q;
        pthread_mutex_unlock(&io->mu);

        char err[512] = "";
        kms_reply rep = {0};
        uint64_t stale = 0;
        int rc = KMS_OK;
        if (!io->st)
            rc = kms_open(&so, &io->st, err, sizeof err);
        if (rc == KMS_OK)
            rc = kms_sync(io->st, &q, &rep, &stale, err, sizeof err);
        if (rc != KMS_OK && rc != KMS_ESTALE && !retryable(rc) && io->st) {
            /* A configuration error (password, version): open anew next
             * time, so a fixed store is seen. */
            kms_close(io->st);
            io->st = NULL;
        }

        pthread_mutex_lock(&io->mu);
        io->rc = rc;
        io->rep = rep;
        io->stale_last = stale;
        io->t_recv_ns = km_now_ns();
        snprintf(io->err, sizeof io->err, "%s", err);
        io->posted = 0;
        io->done = 1;
        pthread_cond_broadcast(&io->cv);
    }
    pthread_mutex_unlock(&io->mu);
    if (io->st)
        kms_close(io->st);
    io->st = NULL;
    return NULL;
}

/* --------------------------------------------------------------- slots */

static void slot_kid(const km_fleet_slot *f, char out[KMS_ID_MAX + 1])
{
    kms_kid(f->pool, f->key_id, f->fleet_id, f->model ? f->model_name : NULL, out);
}

static kma_slot *slot_find(kma *a, const kma_id *id)
{
    for (size_t i = 0; i < a->n_sl; i++) {
        const kma_id *s = &a->sl[i].id;
        if (s->key == id->key && s->key_gen == id->key_gen && s->model == id->model &&
            s->window == id->window)
            return &a->sl[i];
    }
    return NULL;
}

/* The slot of f (made if new), its description taken from f unless f has
 * none (a report's key removed since: km_fleet_report_take); NULL when out
 * of memory. */
static kma_slot *slot_upsert(kma *a, const km_fleet_slot *f)
{
    kma_id id = {f->key, f->key_gen, f->model, f->window};
    kma_slot *s = slot_find(a, &id);
    if (!s) {
        kma_slot *g = grow(a->sl, &a->cap_sl, a->n_sl + 1, sizeof *g);
        if (!g)
            return NULL;
        a->sl = g;
        s = &a->sl[a->n_sl++];
        memset(s, 0, sizeof *s);
        s->id = id;
    }
    if (!f->limit)
        return s;
    slot_kid(f, s->kid);
    s->limit = f->limit;
    s->burst = f->burst ? f->burst : 1;
    s->period_ms = f->period_ms;
    s->mode = f->mode;
    s->strict = f->strict;
    return s;
}

/* Collect the segment's counters at `now` (UINT64_MAX: void all credit):
 * the segment adds them to its pending report (rule 1); here they mark the
 * slots and update each slot's demand. */
static int collect(kma *a, uint64_t now, uint64_t clock_ns)
{
    size_t n = 0;
    int rc;
    for (;;) {
        rc = km_fleet_collect(a->env, now, a->buf, a->cap_buf, &n);
        if (rc != KM_EINVAL || n <= a->cap_buf)
            break;
        km_fleet_slot *b = grow(a->buf, &a->cap_buf, n, sizeof *b);
        if (!b)
            return KM_ENOMEM;
        a->buf = b;
    }
    if (rc != KM_OK)
        return rc;
    double dt = (double)(clock_ns - a->last_collect_ns) / 1e9;
    a->last_collect_ns = clock_ns;
    for (size_t i = 0; i < a->n_sl; i++)
        a->sl[i].present = 0;
    for (size_t i = 0; i < n; i++) {
        const km_fleet_slot *f = &a->buf[i];
        kma_slot *s = slot_upsert(a, f);
        if (!s)
            return KM_ENOMEM;
        s->present = 1;
        if (f->spent || f->fb_spent || f->returned || f->adj || f->want || f->left)
            s->unreported = 1;
        s->seen_units += f->spent + f->fb_spent + f->refused;
    }
    /* Demand: units per second over the interval, an EWMA of alpha 0.5. */
    if (dt > 0)
        for (size_t i = 0; i < a->n_sl; i++) {
            kma_slot *s = &a->sl[i];
            s->demand = 0.5 * s->demand + 0.5 * (double)s->seen_units / dt;
            s->seen_units = 0;
        }
    /* A slot gone from the segment (key removed, limits changed) is
     * dropped once nothing of it is left to report. */
    size_t w = 0;
    for (size_t i = 0; i < a->n_sl; i++) {
        kma_slot *s = &a->sl[i];
        if (!s->present && !s->unreported)
            continue;
        a->sl[w++] = *s;
    }
    a->n_sl = w;
    return KM_OK;
}

/* A new (zeroed) event at the end of the pending list; NULL when out of
 * memory. */
static kms_event *event_push(kma *a)
{
    kms_event *e = grow(a->pev, &a->cap_pev, a->n_pev + 1, sizeof *e);
    if (!e)
        return NULL;
    a->pev = e;
    e = &a->pev[a->n_pev++];
    memset(e, 0, sizeof *e);
    return e;
}

/* Health changes here (429, auth, quota, operator) into events for the
 * next request. */
static int health_out(kma *a)
{
    km_fleet_health h[64];
    size_t n = 0;
    int rc = km_fleet_health_changes(a->env, h, sizeof h / sizeof h[0], &n);
    if (rc != KM_OK)
        return rc;
    for (size_t i = 0; i < n && i < sizeof h / sizeof h[0]; i++) {
        const kma_slot *s = NULL;
        for (size_t j = 0; j < a->n_sl; j++)
            if (a->sl[j].id.key == h[i].key && a->sl[j].id.model == 0) {
                s = &a->sl[j];
                break;
            }
        if (!s)
            continue; /* a key the fleet does not limit */
        kms_event *e = event_push(a);
        if (!e)
            return KM_ENOMEM;
        snprintf(e->kid, sizeof e->kid, "%s", s->kid);
        e->kind = h[i].kind;
        e->arg_ms = h[i].arg_ms;
    }
    return KM_OK;
}

/* -------------------------------------------------------- spend budgets */

static kma_bud *bud_find(kma *a, uint32_t key, uint32_t key_gen)
{
    for (size_t i = 0; i < a->n_bd; i++)
        if (a->bd[i].key == key && a->bd[i].key_gen == key_gen)
            return &a->bd[i];
    return NULL;
}

/* The spend of every fleet key's budget not yet reported into the
 * budgets' pending report.  The segment keeps the count until a reply
 * acknowledges it (km_fleet_spend_reported), so each collect replaces
 * pending: an agent killed with a report unanswered loses nothing (its
 * successor reports it again; if the ledger had counted it, twice:
 * conservative).  A period that changed before its pending spend went out
 * drops it (no check can use an ended period's spend). */
static int spend_collect(kma *a)
{
    size_t n = 0;
    int rc;
    for (;;) {
        rc = km_fleet_spend_collect(a->env, a->bbuf, a->cap_bbuf, &n);
        if (rc != KM_EINVAL || n <= a->cap_bbuf)
            break;
        km_fleet_budget *b = grow(a->bbuf, &a->cap_bbuf, n, sizeof *b);
        if (!b)
            return KM_ENOMEM;
        a->bbuf = b;
    }
    if (rc != KM_OK)
        return rc;
    for (size_t i = 0; i < a->n_bd; i++)
        a->bd[i].present = 0;
    for (size_t i = 0; i < n; i++) {
        const km_fleet_budget *f = &a->bbuf[i];
        kma_bud *b = bud_find(a, f->key, f->key_gen);
        if (!b) {
            kma_bud *g = grow(a->bd, &a->cap_bd, a->n_bd + 1, sizeof *g);
            if (!g)
                return KM_ENOMEM;
            a->bd = g;
            b = &a->bd[a->n_bd++];
            memset(b, 0, sizeof *b);
            b->key = f->key;
            b->key_gen = f->key_gen;
            /* What the segment holds for this period is the floor (an
             * agent restarted: the ledger's total still counts our part). */
            b->a_start = f->period_start_s;
            b->a_end = f->period_end_ns;
            b->a_epoch = a->st.epoch;
            b->others = f->others;
        }
        if (f->pool_budget) {
            kms_pool_bid(f->pool, b->bid);
        } else {
            km_fleet_slot ks = {0};
            snprintf(ks.pool, sizeof ks.pool, "%s", f->pool);
            snprintf(ks.key_id, sizeof ks.key_id, "%s", f->key_id);
            snprintf(ks.fleet_id, sizeof ks.fleet_id, "%s", f->fleet_id);
            slot_kid(&ks, b->bid);
        }
        if (b->end_ns != f->period_end_ns) {
            b->pending = 0;
            b->over_logged = 0;
        }
        b->start = f->period_start_s;
        b->end_ns = f->period_end_ns;
        b->pending = f->spent;
        b->local = f->local;
        b->budget = f->budget_microusd;
        b->hard = f->hard;
        b->present = 1;
    }
    size_t w = 0; /* a budget gone (key removed, budget dropped) is forgotten */
    for (size_t i = 0; i < a->n_bd; i++)
        if (a->bd[i].present)
            a->bd[w++] = a->bd[i];
    a->n_bd = w;
    return KM_OK;
}

/* Every budget's pending spend into the new request (all of them, spent
 * or not: the reply carries the fleet's total). */
static int spend_build(kma *a)
{
    kma_req *r = &a->req;
    kms_budget *b = grow(r->bud, &r->cap_bud, a->n_bd, sizeof *b);
    if (!b && a->n_bd)
        return KM_ENOMEM;
    if (b)
        r->bud = b;
    kma_bref *f = realloc(r->bref, (r->cap_bud ? r->cap_bud : 1) * sizeof *f);
    if (!f)
        return KM_ENOMEM;
    r->bref = f;
    r->n_bud = 0;
    for (size_t i = 0; i < a->n_bd; i++) {
        kma_bud *d = &a->bd[i];
        kms_budget *x = &r->bud[r->n_bud];
        memset(x, 0, sizeof *x);
        snprintf(x->bid, sizeof x->bid, "%s", d->bid);
        x->period_start = d->start;
        x->spent = d->pending;
        r->bref[r->n_bud] = (kma_bref){d->key, d->key_gen, d->start, d->end_ns, d->local};
        r->n_bud++;
        d->pending = 0;
    }
    return KM_OK;
}

/* A request not sent: its budgets' spend back into the pending report
 * (of the same period only). */
static void spend_unbuild(kma *a)
{
    kma_req *r = &a->req;
    for (size_t i = 0; i < r->n_bud; i++) {
        kma_bud *d = bud_find(a, r->bref[i].key, r->bref[i].key_gen);
        if (d && d->end_ns == r->bref[i].end_ns && d->pending < r->bud[i].spent)
            /* The segment still counts it unreported (a collect since may
             * have set pending to it and more already): the larger. */
            d->pending = r->bud[i].spent;
    }
    r->n_bud = 0;
}

/* The fleet's totals of a reply: the other hosts' spend of each budget
 * into the segment.  A new ledger epoch (Redis restarted empty) lost the
 * period's total: the figure then continues from the last one seen (base)
 * plus what the others report in the new epoch; it never goes down. */
static void spend_apply(kma *a, const kms_reply *rep)
{
    kma_req *r = &a->req;
    for (size_t i = 0; i < r->n_bud && i < rep->n_spend; i++) {
        const kma_bref *f = &r->bref[i];
        const kms_spend *x = &rep->spend[i];
        kma_bud *d = bud_find(a, f->key, f->key_gen);
        /* Answered: the next collects count from what this one carried. */
        int prc = km_fleet_spend_reported(a->env, f->key, f->key_gen, f->end_ns, f->local);
        if (prc != KM_OK && prc != KM_ENOKEY)
            alog(a, "%s: marking the spend reported: %s", d ? d->bid : "?", km_strerror(prc));
        if (!d || (x->total == 0 && x->mine == 0 && r->bud[i].spent))
            continue; /* gone, or a period the ledger no longer keeps */
        if (d->a_start != f->start || d->a_end != f->end_ns) {
            d->a_start = f->start; /* a new period: nothing carried */
            d->a_end = f->end_ns;
            d->a_epoch = rep->epoch;
            d->base = d->others = 0;
        } else if (d->a_epoch != rep->epoch) {
            d->base = d->others; /* the last figure of the lost epoch */
            d->a_epoch = rep->epoch;
        }
        uint64_t o = d->base + (x->total - x->mine);
        if (o < d->others)
            o = d->others;
        d->others = o;
        int rc = km_fleet_spend_apply(a->env, f->key, f->key_gen, f->end_ns, o);
        if (rc != KM_OK && rc != KM_ENOKEY)
            alog(a, "%s: applying the fleet's spend: %s", d->bid, km_strerror(rc));
        if (d->end_ns == f->end_ns && d->local + o >= d->budget && !d->over_logged) {
            alog(a, "%s: %s budget of %" PRIu64 " micro-USD spent fleet-wide (%" PRIu64
                    " here, %" PRIu64 " by the other hosts)%s",
                 d->bid, d->hard ? "hard" : "soft", d->budget, d->local, o,
                 d->hard ? ": refused on every host" : "");
            d->over_logged = 1;
        }
    }
}

/* ------------------------------------------------------------- requests */

static uint64_t demand_units(const kma_slot *s)
{
    double d = s->demand;
    if (d <= 0)
        return 0;
    if (d > 1e15)
        d = 1e15;
    uint64_t u = (uint64_t)d;
    return (double)u < d ? u + 1 : u;
}

/* The segment's pending report, stamped as report *rep (or the one
 * stamped already: 1, *rep as it was), into a->buf; *n slots. */
static int report_take(kma *a, km_fleet_report *rep, size_t *n)
{
    int rc;
    for (;;) {
        rc = km_fleet_report_take(a->env, rep, a->buf, a->cap_buf, n);
        if (rc != KM_EINVAL || *n <= a->cap_buf)
            return rc;
        km_fleet_slot *b = grow(a->buf, &a->cap_buf, *n, sizeof *b);
        if (!b)
            return KM_ENOMEM;
        a->buf = b;
    }
}

/* The segment's pending report becomes the new request, stamped there
 * with its seq (rule 1); or, if a dead predecessor left one stamped, that
 * one, as it was. */
static int build_request(kma *a, unsigned flags)
{
    kma_req *r = &a->req;
    uint64_t seq = realtime_us();
    if (seq <= a->last_seq)
        seq = a->last_seq + 1;
    /* t_send from the stamp, just before the first send (rule 2: earlier
     * is only more conservative). */
    km_fleet_report rep = {.seq = seq,
                           .ack = a->st.ack,
                           .epoch = a->st.epoch,
                           .t_send_ns = km_now_ns(),
                           .flags = flags};
    size_t n = 0;
    int rc = report_take(a, &rep, &n);
    if (rc < 0)
        return rc;
    r->recovered = rc == 1;
    if (r->recovered)
        alog(a, "resending report %" PRIu64 " left unanswered by the previous agent", rep.seq);
    if (rep.seq > a->last_seq)
        a->last_seq = rep.seq;
    kms_entry *e = grow(r->ent, &r->cap_ent, n, sizeof *e);
    if (!e && n)
        return KM_ENOMEM;
    r->ent = e;
    size_t cap_id = r->cap_ent;
    kma_id *id = realloc(r->id, (cap_id ? cap_id : 1) * sizeof *id);
    if (!id)
        return KM_ENOMEM;
    r->id = id;
    size_t n_ev = r->recovered ? 0 : a->n_pev; /* ours go into the next one */
    kms_event *v = grow(r->ev, &r->cap_ev, n_ev, sizeof *v);
    if (!v && n_ev)
        return KM_ENOMEM;
    if (v)
        r->ev = v;
    uint64_t now_mono = km_now_ns();
    int bye = (rep.flags & KMS_BYE) != 0;
    r->n_ent = 0;
    for (size_t i = 0; i < n; i++) {
        const km_fleet_slot *f = &a->buf[i];
        kma_slot *s = slot_upsert(a, f);
        if (!s)
            return KM_ENOMEM;
        s->unreported = 0;
        if (!s->limit || !s->period_ms)
            continue; /* a key removed before this agent knew it */
        kms_entry *x = &r->ent[r->n_ent];
        memset(x, 0, sizeof *x);
        snprintf(x->kid, sizeof x->kid, "%s", s->kid);
        x->win = s->id.window;
        x->limit = s->limit;
        x->period_ms = s->period_ms;
        x->burst = s->mode == KM_MODE_SLIDING && s->burst > s->limit ? s->limit : s->burst;
        x->mode = s->mode;
        x->strict = s->strict;
        x->demand = bye ? 0 : demand_units(s);
        x->want = bye ? 0 : f->want;
        x->spent = f->spent;
        x->fb_spent = f->fb_spent;
        x->adj = f->adj;
        x->returned = f->returned;
        x->left = bye ? 0 : f->left;
        x->fb_held_ppm = (!bye && now_mono < s->fb_until_ns) ? s->fb_ppm : 0;
        r->id[r->n_ent] = s->id;
        r->n_ent++;
    }
    if (n_ev)
        memcpy(r->ev, a->pev, n_ev * sizeof *a->pev);
    r->n_ev = n_ev;
    a->n_pev -= n_ev;
    /* Budgets: not in a predecessor's report (the ledger may answer it
     * with the reply it stored, which holds none of ours): they go into
     * the next one. */
    r->n_bud = 0;
    if (!r->recovered && spend_build(a) != KM_OK)
        r->n_bud = 0; /* out of memory: the spend stays pending */
    r->seq = rep.seq;
    r->ack = rep.ack;
    r->epoch = rep.epoch;
    r->t_send_ns = rep.t_send_ns;
    r->flags = rep.flags;
    r->sent = 1;
    r->active = 1;
    r->posted = 0;
    return KM_OK;
}

/* A request that will not be sent as it is (renumbered, or a bye after a
 * failed one): its counts become pending in the segment again and its
 * events go back to the list, so the next request carries both. */
static void unbuild_request(kma *a)
{
    kma_req *r = &a->req;
    int rc = km_fleet_report_undo(a->env);
    if (rc != KM_OK)
        alog(a, "taking report %" PRIu64 " back: %s", r->seq, km_strerror(rc));
    for (size_t i = 0; i < r->n_ev; i++) {
        kms_event *e = event_push(a);
        if (!e)
            break;
        *e = r->ev[i];
    }
    spend_unbuild(a);
    r->n_ev = 0;
    r->active = 0;
}

static void post_request(kma *a)
{
    kma_req *r = &a->req;
    kma_io *io = &a->io;
    if (!r->sent) {
        r->t_send_ns = km_now_ns(); /* rule 2: from the first send */
        r->sent = 1;
    }
    pthread_mutex_lock(&io->mu);
    io->q = (kms_request){.host = a->o->host_id,
                          .seq = r->seq,
                          .ack = r->ack,
                          .epoch = r->epoch,
                          .flags = r->flags,
                          .sync_ms = a->o->sync_ms,
                          .valid_ms = a->o->valid_ms,
                          .fallback_ms = a->o->fallback_ms,
                          .ent = r->ent,
                          .n_ent = r->n_ent,
                          .ev = r->ev,
                          .n_ev = r->n_ev,
                          .bud = r->bud,
                          .n_bud = r->n_bud};
    io->posted = 1;
    io->done = 0;
    r->posted = 1;
    pthread_cond_broadcast(&io->cv);
    pthread_mutex_unlock(&io->mu);
}

/* ---------------------------------------------------------------- replies */

/* The emission interval (ns per unit) the ledger gives (L, B, P, mode):
 * tools/sync/ledger.lua gcra(), as src/limits.c. */
static uint64_t gcra_T(uint64_t L, uint64_t B, uint64_t P_ms, int mode)
{
    uint64_t Pns = P_ms * KMA_MS;
    if (mode == KM_MODE_TOKEN_BUCKET)
        return (Pns + L - 1) / L;
    return Pns / (L + 1 - B) + 1;
}

/* The fallback share to apply, in ppm of the key's local rate.  The
 * ledger's fb_ppm is of the rate its bucket runs at; the segment scales the
 * local limit's.  They differ only in strict mode, where the bucket runs at
 * Ls = L - ceil(R V) - B (ledger.lua kw_params): a share of the local rate
 * would spend up to R/Rs of what the ledger charges for it through an
 * outage, past the strict bound (DESIGN.md section 2).  Rounded down. */
static uint32_t fb_local_ppm(const kma *a, const kma_slot *s, uint32_t ppm)
{
    if (!s->strict || !ppm || !s->limit || !s->period_ms)
        return ppm;
    uint64_t L = s->limit, B = s->mode == KM_MODE_SLIDING && s->burst > L ? L : s->burst;
    uint64_t T = gcra_T(L, B, s->period_ms, s->mode);
    uint64_t C = ((uint64_t)a->o->valid_ms * KMA_MS + T - 1) / T;
    if (L < C + B + 1)
        return ppm; /* strict impossible: the grant says err 2, no share */
    uint64_t Ls = L - C - B, Bs = B < Ls ? B : Ls;
    uint64_t Ts = gcra_T(Ls, Bs, s->period_ms, s->mode);
    return (uint32_t)((uint64_t)ppm * T / Ts);
}

static void apply_reply(kma *a, const kms_reply *rep, uint64_t t_recv)
{
    kma_req *r = &a->req;
    km_fleet_grant g[64];
    size_t ng = 0;
    for (size_t i = 0; i < r->n_ent && i < rep->n_grant; i++) {
        const kms_grant *x = &rep->grant[i];
        kma_slot *s = slot_find(a, &r->id[i]);
        uint64_t valid = (uint64_t)x->valid_ms * KMA_MS;
        km_fleet_grant *y = &g[ng++];
        memset(y, 0, sizeof *y);
        y->key = r->id[i].key;
        y->key_gen = r->id[i].key_gen;
        y->model = r->id[i].model;
        y->window = r->id[i].window;
        /* A predecessor's report: its reply may have been applied before
         * the kill, and its credit is the predecessor's (rule 2). */
        y->grant = x->err || r->recovered ? 0 : x->grant;
        y->deadline_ns = r->t_send_ns + valid;
        y->fb_ppm = s ? fb_local_ppm(a, s, x->fb_ppm) : x->fb_ppm;
        y->fb_burst = x->fb_burst;
        /* Rule 2: the share from t_recv + V.  A reply that arrives with
         * its credit already lapsed (a retry answered after an outage) has
         * its share from t_recv: the ledger charges this host as silent
         * (from its ack + V, at the larger of the promise acked and this
         * one) until the next report acks this reply, so nothing it spends
         * meanwhile goes uncounted, and the fleet does not wait V idle. */
        y->fb_from_ns = r->t_send_ns + valid <= t_recv ? t_recv : t_recv + valid;
        y->fb_until_ns = r->t_send_ns + (uint64_t)x->fallback_ms * KMA_MS;
        if (a->stopping) {
            /* Stopping (rule 5): the bye's collect has counted, or is about
             * to count, everything; a reply arriving now (the request in
             * flight, or the bye's own) opens no credit and no share that
             * no report would carry. */
            y->grant = 0;
            y->deadline_ns = 0;
            y->fb_ppm = 0;
            y->fb_from_ns = y->fb_until_ns = 0;
        }
        if (s) {
            s->fb_ppm = x->fb_ppm;
            s->fb_until_ns = y->fb_until_ns;
            if (x->err && s->err_logged != x->err)
                alog(a, "%s/%s: the ledger grants nothing: %s", s->kid,
                     km_window_name(s->id.window),
                     x->err == 1 ? "period or mode differ from the fleet's"
                                 : "strict mode needs a limit above rate x validity + burst");
            s->err_logged = x->err;
        }
        if (ng == sizeof g / sizeof g[0] || i + 1 == r->n_ent || i + 1 == rep->n_grant) {
            int rc = km_fleet_apply(a->env, g, ng);
            if (rc != KM_OK)
                alog(a, "applying grants: %s", km_strerror(rc));
            ng = 0;
        }
    }
    /* Health: the fleet's state of each key, when its version moved. */
    for (size_t i = 0; i < rep->n_health; i++) {
        const kms_health *h = &rep->health[i];
        for (size_t j = 0; j < a->n_sl; j++) {
            kma_slot *s = &a->sl[j];
            if (s->id.model != 0 || strcmp(s->kid, h->kid) != 0)
                continue;
            if (!s->hv_known || s->hv != h->version) {
                int rc = km_fleet_health_set(a->env, s->id.key, h->state, h->remaining_ms);
                if (rc != KM_OK && rc != KM_ENOKEY)
                    alog(a, "%s: setting health: %s", h->kid, km_strerror(rc));
                /* every window slot of the key records the version */
                for (size_t k = 0; k < a->n_sl; k++)
                    if (a->sl[k].id.key == s->id.key && a->sl[k].id.model == 0) {
                        a->sl[k].hv = h->version;
                        a->sl[k].hv_known = 1;
                    }
            }
            break;
        }
    }
}

static const char *state_name(int st)
{
    switch (st) {
    case KM_FLEET_STORE_OK: return "ok";
    case KM_FLEET_STORE_LEARNING: return "learning";
    case KM_FLEET_STORE_UNREACHABLE: return "unreachable";
    case KM_FLEET_STORE_ERROR: return "error";
    default: return "none";
    }
}

static void set_state(kma *a, int st)
{
    if (a->st.store_state != st && (st == KM_FLEET_STORE_OK || st == KM_FLEET_STORE_LEARNING ||
                                    st == KM_FLEET_STORE_UNREACHABLE))
        alog(a, "store %s (was %s), epoch %" PRIu64, state_name(st),
             state_name(a->st.store_state), a->st.epoch);
    a->st.store_state = st;
}

/* The request in flight is answered (or refused): its counts are
 * forgotten in the segment (rule 1). */
static void report_done(kma *a)
{
    int rc = km_fleet_report_ack(a->env, a->req.seq);
    if (rc != KM_OK)
        alog(a, "acknowledging report %" PRIu64 ": %s", a->req.seq, km_strerror(rc));
}

/* The store thread finished the request in flight. */
static void on_done(kma *a)
{
    kma_io *io = &a->io;
    kma_req *r = &a->req;
    pthread_mutex_lock(&io->mu);
    int rc = io->rc;
    kms_reply rep = io->rep;
    uint64_t stale = io->stale_last, t_recv = io->t_recv_ns;
    char err[512];
    snprintf(err, sizeof err, "%s", io->err);
    io->rep = (kms_reply){0};
    io->done = 0;
    pthread_mutex_unlock(&io->mu);
    r->posted = 0;

    if (rc == KMS_OK && rep.seq != r->seq)
        rc = KMS_EPROTO; /* rule 3: not ours; retried as it is */
    if (rc == KMS_OK) {
        int learning = rep.learn_ms > 0;
        uint64_t old_epoch = a->st.epoch;
        a->st.epoch = rep.epoch;
        if (old_epoch && old_epoch != rep.epoch)
            alog(a, "new ledger epoch %" PRIu64 " (was %" PRIu64 ")%s", rep.epoch, old_epoch,
                 learning ? ": learning" : "");
        apply_reply(a, &rep, t_recv);
        spend_apply(a, &rep);
        report_done(a);
        a->st.ack = r->seq;
        a->st.n_hosts = (uint32_t)rep.n_hosts;
        a->st.learn_ms = rep.learn_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)rep.learn_ms;
        a->st.last_sync_ns = t_recv;
        set_state(a, learning ? KM_FLEET_STORE_LEARNING : KM_FLEET_STORE_OK);
        a->cfg_rc = 0;
        a->unreachable_logged = 0;
        r->active = 0;
    } else if (rc == KMS_ESTALE) {
        /* The ledger saw a larger seq of this host (an agent before us):
         * the same report, numbered above it. */
        if (stale > a->last_seq)
            a->last_seq = stale;
        unbuild_request(a);
        if (build_request(a, r->flags) != KM_OK)
            alog(a, "out of memory");
        alog(a, "seq renumbered above the ledger's %" PRIu64, stale);
    } else if (rc == KMS_ELEDGER && r->sent && err[0] && strstr(err, "KMLEDGER")) {
        /* The ledger refused this report (nothing applied): resending the
         * same bytes would be refused again. */
        alog(a, "%s; the report is dropped", err);
        report_done(a);
        r->active = 0;
    } else if (retryable(rc)) {
        if (!a->unreachable_logged)
            alog(a, "%s (retrying every %u ms)", err[0] ? err : kms_strerror(rc),
                 a->o->sync_ms);
        a->unreachable_logged = 1;
    } else {
        uint64_t now = km_now_ns();
        if (a->cfg_rc != rc || now - a->cfg_logged_ns >= KMA_LOG_EVERY_NS) {
            alog(a, "%s", err[0] ? err : kms_strerror(rc));
            a->cfg_logged_ns = now;
            a->cfg_rc = rc;
        }
        a->st.store_state = KM_FLEET_STORE_ERROR;
    }
    kms_reply_free(&rep);
}

static void status_publish(kma *a, uint64_t now, uint64_t next)
{
    if (a->st.store_state != KM_FLEET_STORE_ERROR) {
        /* Unreachable: no reply for longer than V (DESIGN.md section 5). */
        uint64_t since = a->st.last_sync_ns ? a->st.last_sync_ns : a->started_ns;
        if (now > since + (uint64_t)a->o->valid_ms * KMA_MS && a->req.active)
            set_state(a, KM_FLEET_STORE_UNREACHABLE);
    }
    a->st.seq = a->last_seq;
    a->st.next_sync_ns = next;
    km_fleet_status_set(a->env, &a->st);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int io_done(kma *a)
{
    pthread_mutex_lock(&a->io.mu);
    int d = a->io.done;
    pthread_mutex_unlock(&a->io.mu);
    return d;
}

/* Wait for the store thread to finish the request it holds, at most
 * until `until` (monotonic); 1 if it did. */
static int wait_done(kma *a, uint64_t until)
{
    while (a->req.posted) {
        if (io_done(a)) {
            on_done(a);
            return 1;
        }
        if (km_now_ns() >= until)
            return 0;
        sleep_ns(KMA_POLL_NS);
    }
    return 1;
}

/* Rule 5. */
static void say_bye(kma *a)
{
    uint64_t tmo = (uint64_t)a->o->timeout_ms * KMA_MS;
    uint64_t until = km_now_ns() + 2 * tmo + 200 * KMA_MS;
    int answered = 0;

    a->stopping = 1;
    /* End every slot's credit and fallback window first, so acquirers stop
     * (or go local) now; then void and count what was left. */
    km_fleet_grant *g = calloc(a->n_sl ? a->n_sl : 1, sizeof *g);
    if (g) {
        for (size_t i = 0; i < a->n_sl; i++) {
            g[i].key = a->sl[i].id.key;
            g[i].key_gen = a->sl[i].id.key_gen;
            g[i].model = a->sl[i].id.model;
            g[i].window = a->sl[i].id.window;
        }
        km_fleet_apply(a->env, g, a->n_sl);
        free(g);
    }
    if (a->req.posted)
        wait_done(a, km_now_ns() + tmo + 200 * KMA_MS);
    if (a->req.active && !a->req.posted)
        unbuild_request(a); /* unanswered: its counts go into the bye */
    if (a->req.posted) {
        /* Still with the store: it stays stamped in the segment (the next
         * agent sends it first); the credit is voided by the release. */
        alog(a, "stopped: credit voided, report %" PRIu64 " left in the segment for the next "
                "agent (the store did not answer)", a->req.seq);
        return;
    }
    int crc = collect(a, UINT64_MAX, km_now_ns());
    if (crc == KM_OK)
        crc = spend_collect(a);
    if (crc != KM_OK)
        alog(a, "collect at exit: %s", km_strerror(crc));
    if (build_request(a, KMS_BYE) == KM_OK) {
        post_request(a);
        /* A failed try (the same bytes again) or a renumber after
         * KMS_ESTALE leaves the bye active and not posted: send it again
         * until it is answered or the time is up (left stamped, a bye would
         * be the next agent's first request and drop its own host). */
        while (wait_done(a, until) && a->req.active && !a->req.posted && km_now_ns() < until) {
            sleep_ns(KMA_POLL_NS);
            post_request(a);
        }
        if (!a->req.active)
            answered = 1;
    }
    alog(a, "stopped: credit handed back%s", answered ? "" : " (the store did not answer)");
}

/* ------------------------------------------------------------------ main */

int kma_run(km_env *env, const kma_opts *o, volatile sig_atomic_t *stop)
{
    kma *a = calloc(1, sizeof *a);
    if (!a) {
        fprintf(o->log, "kmctl: sync: out of memory\n");
        return KMA_EX_FAILED;
    }
    a->env = env;
    a->o = o;
    a->io.o = o;
    int rc = km_fleet_claim(env, o->policy);
    if (rc != KM_OK) {
        if (rc == KM_EBUSY)
            alog(a, "another live agent holds the segment (kmctl inspect shows its pid)");
        else if (rc == KM_EINVAL)
            alog(a, "the segment has no fleet keys (\"fleet\": true in its configuration, "
                    "docs/config.md)");
        else
            alog(a, "cannot take the agent role: %s", km_strerror(rc));
        free(a);
        return rc == KM_EBUSY ? KMA_EX_BUSY : KMA_EX_FAILED;
    }
    /* A restarted agent continues above its predecessor's seq, with its
     * ack and epoch (the credit words it left are still in the segment). */
    km_fleet_status old;
    if (km_fleet_status_get(env, &old) == KM_OK) {
        a->last_seq = old.seq;
        a->st.ack = old.ack;
        a->st.epoch = old.epoch;
    }
    a->st.store_state = KM_FLEET_STORE_NONE;
    a->started_ns = a->last_collect_ns = km_now_ns();

    pthread_t th;
    pthread_mutex_init(&a->io.mu, NULL);
    pthread_cond_init(&a->io.cv, NULL);
    /* The store thread must not take SIGTERM/SIGINT: the segment thread
     * polls the flag the handler sets. */
    sigset_t all, old_mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old_mask);
    rc = pthread_create(&th, NULL, store_main, &a->io);
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    if (rc != 0) {
        alog(a, "cannot start the store thread: %s", strerror(rc));
        km_fleet_release(env, 0);
        free(a);
        return KMA_EX_FAILED;
    }
    alog(a, "agent for host '%s', fleet '%s', store %s:%u/%u, S %u ms, V %u ms, F %u ms, "
            "policy %s",
         o->host_id, o->fleet, o->url->host, o->url->port, o->url->db, o->sync_ms, o->valid_ms,
         o->fallback_ms, o->policy == KM_FLEET_LOCAL ? "local" : "stop");

    uint64_t S = (uint64_t)o->sync_ms * KMA_MS;
    uint64_t next = km_now_ns();
    int collect_logged = 0;
    while (!*stop) {
        uint64_t now = km_now_ns();
        if (a->req.posted && io_done(a))
            on_done(a);
        if (now >= next) {
            /* No collect while a report is in flight: the segment keeps
             * what acquirers spend for the next one (rule 1). */
            int crc = a->req.active ? KM_OK : collect(a, now, now);
            if (crc == KM_OK)
                crc = health_out(a);
            if (crc == KM_OK)
                crc = spend_collect(a);
            if (crc != KM_OK && !collect_logged) {
                alog(a, "collect: %s", km_strerror(crc));
                collect_logged = 1;
            }
            if (!a->req.active && build_request(a, 0) != KM_OK)
                alog(a, "out of memory");
            if (a->req.active && !a->req.posted)
                post_request(a);
            next += S;
            if (next <= now)
                next = now + S;
            status_publish(a, now, next);
        }
        uint64_t wait = next - km_now_ns();
        if ((int64_t)wait > (int64_t)KMA_POLL_NS)
            wait = KMA_POLL_NS;
        if ((int64_t)wait > 0)
            sleep_ns(wait);
    }
    say_bye(a);
    km_fleet_release(env, 1);
    a->st.store_state = KM_FLEET_STORE_NONE;

    pthread_mutex_lock(&a->io.mu);
    a->io.quit = 1;
    pthread_cond_broadcast(&a->io.cv);
    pthread_mutex_unlock(&a->io.mu);
    /* The store thread ends within its I/O timeout. */
    pthread_join(th, NULL);
    kms_reply_free(&a->io.rep);
    pthread_cond_destroy(&a->io.cv);
    pthread_mutex_destroy(&a->io.mu);
    free(a->sl);
    free(a->buf);
    free(a->pev);
    free(a->req.ent);
    free(a->req.id);
    free(a->req.ev);
    free(a->req.bud);
    free(a->req.bref);
    free(a->bd);
    free(a->bbuf);
    free(a);
    return KMA_EX_OK;
}
