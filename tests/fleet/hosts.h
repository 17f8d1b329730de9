/*
 * tests/fleet/hosts.h - several "hosts" on one machine for the agent's
 * tests (issue 12, DESIGN.md section 6).  Header-only, static inline, like
 * rig.h, on which it builds.
 *
 * A host is a segment of its own (one pool "p", one key "a" marked
 * "fleet": true, a sliding rpm limit), its agent (`kmctl sync`, started and
 * stopped by pid, its standard error in a log file) talking to the rig's
 * redis-server through a proxy of its own (rig_proxy: delay, black-hole,
 * cut, garbage), and forked workers.  A worker is the "provider": requests
 * arrive at its offered rate (open loop), each waits for a key at most
 * FH_WAIT_MS in km_acquire_wait and is dropped after that; it appends the CLOCK_MONOTONIC time of every admission to a
 * file of its own with one write(2) (nothing is lost when it is killed),
 * so no IPC touches the hot path.  fh_times() merges every file.
 *
 * The check is exact over every interval of the merged log (fh_excess):
 * the ledger's bound (DESIGN.md section 2) is `spent <= (b - a)/T + B`
 * fleet-wide over any [a, b] for credit, plus C = ceil(R V) + B once
 * fallback shares or a restart are involved; for a window of one period P
 * that is L + C.  fh_excess returns max over all pairs of admissions
 * i <= j of (j - i + 1) - (t_j - t_i)/T - B: the fleet stayed within
 * L + X in every window iff it is <= X.
 */
#ifndef KM_TESTS_FLEET_HOSTS_H
#define KM_TESTS_FLEET_HOSTS_H

#include <fcntl.h>
#include <math.h>

#include "keymesh.h"
#include "rig.h"

#define FH_MAX_HOSTS 8
#define FH_MAX_WORKERS 4
#define FH_WAIT_MS 1000u /* how long a worker's request waits for a key */

typedef struct fh_host {
    int idx;
    char seg[64], cfg[200], log[200];
    pid_t agent;
    pid_t worker[FH_MAX_WORKERS];
    int n_workers;
    rig_proxy proxy;
    int has_proxy;
} fh_host;

typedef struct fh_fleet {
    rig_redis redis;
    int n;
    fh_host h[FH_MAX_HOSTS];
    char dir[128];
    const char *kmctl;
    uint64_t L, B;                 /* rpm, sliding */
    unsigned S, V, F, timeout_ms;  /* agent options, ms */
    const char *password;          /* what the agents get (NULL: none) */
    int strict;                    /* hosts created after: "fleet": {"strict": true} */
    const char *model;             /* hosts created after: the limit is this model's in a
                                    * per_model pool (the key has none of its own), and
                                    * every request names it */
    uint64_t T;                    /* ns per unit: (L + 1 - B) per 60 s */
} fh_fleet;

static fh_fleet *fh__g;

static inline uint64_t fh_now(void)
{
    return km_now_ns();
}

static inline void fh_sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static inline void fh__kill_wait(pid_t *pid, int sig)
{
    if (*pid <= 0)
        return;
    kill(*pid, sig);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

static inline void fh_cleanup(void)
{
    fh_fleet *f = fh__g;
    if (!f || rig__st.owner != getpid())
        return;
    for (int i = 0; i < f->n; i++) {
        fh_host *h = &f->h[i];
        for (int w = 0; w < h->n_workers; w++)
            fh__kill_wait(&h->worker[w], SIGKILL);
        fh__kill_wait(&h->agent, SIGKILL);
        if (h->seg[0]) {
            char cmd[400];
            snprintf(cmd, sizeof cmd, "%s destroy %s >/dev/null 2>&1", f->kmctl, h->seg);
            if (system(cmd) != 0) {
                /* already gone */
            }
            unlink(h->cfg);
            h->seg[0] = '\0';
        }
    }
}

/* Kept logs (agent logs, admissions) are removed unless FH_KEEP is set. */
static inline void fh_rmdir(void)
{
    fh_fleet *f = fh__g;
    if (!f || rig__st.owner != getpid() || !f->dir[0] || getenv("FH_KEEP"))
        return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        diag("cannot remove %s", f->dir);
    f->dir[0] = '\0';
}

static inline void fh__atexit(void)
{
    fh_cleanup();
    fh_rmdir();
}

static inline void fh_init(fh_fleet *f, int n, uint64_t L, uint64_t B, const char *password)
{
    memset(f, 0, sizeof *f);
    fh__g = f;
    static char kmctl[256];
    const char *b = getenv("KM_BUILD") ? getenv("KM_BUILD") : "build";
    snprintf(kmctl, sizeof kmctl, "%s/kmctl", b);
    if (access(kmctl, X_OK) != 0)
        bail_out("%s not found (KM_BUILD names the build directory)", kmctl);
    f->kmctl = kmctl;
    f->n = n;
    f->L = L;
    f->B = B;
    f->T = 60000000000ull / (L + 1 - B) + 1;
    f->S = getenv("FH_S") ? (unsigned)atoi(getenv("FH_S")) : 50;
    f->V = getenv("FH_V") ? (unsigned)atoi(getenv("FH_V")) : 200;
    f->F = getenv("FH_F") ? (unsigned)atoi(getenv("FH_F")) : 3000;
    f->timeout_ms = 200;
    f->password = password;
    snprintf(f->dir, sizeof f->dir, "%s/kmt-fleet-hosts.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(f->dir))
        bail_out("mkdtemp: %s", strerror(errno));
    rig_redis_start(&f->redis, password);
    atexit(fh__atexit);
}

/* Host i's segment from the configuration `json` (written to its file),
 * and its proxy to the fleet's Redis. */
static inline void fh_host_create_cfg(fh_fleet *f, int i, const char *json)
{
    fh_host *h = &f->h[i];
    h->idx = i;
    snprintf(h->seg, sizeof h->seg, "kmt-fleet-%d-%d", (int)getpid(), i);
    snprintf(h->cfg, sizeof h->cfg, "%s/h%d.json", f->dir, i);
    snprintf(h->log, sizeof h->log, "%s/agent%d.log", f->dir, i);
    FILE *c = fopen(h->cfg, "w");
    if (!c)
        bail_out("%s: %s", h->cfg, strerror(errno));
    fputs(json, c);
    fclose(c);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s create %s --config %s >/dev/null", f->kmctl, h->seg, h->cfg);
    if (system(cmd) != 0)
        bail_out("%s failed", cmd);
    rig_proxy_start(&h->proxy, f->redis.port);
    h->has_proxy = 1;
}

/* Create host i's segment (pool "p", key "a" under the fleet's limit);
 * its proxy in front of the rig's redis. */
static inline void fh_host_create(fh_fleet *f, int i, const char *extra_key_json)
{
    char c[2048];
    if (f->model)
        snprintf(c, sizeof c,
                "{\"capacity\": {\"processes\": 16},\n"
                " \"pools\": [{\"name\": \"p\", \"cooldown_s\": 2, \"model_limits\": \"per_model\",\n"
                "   \"models\": {\"%s\": {\"rpm\": {\"limit\": %" PRIu64 ", \"mode\": \"sliding\", "
                "\"burst\": %" PRIu64 "}}},\n"
                "   \"keys\": [{\"id\": \"a\", \"secret\": \"sk-fleet-test-0001\", \"fleet\": %s%s}]}]}\n",
                f->model, f->L, f->B, f->strict ? "{\"strict\": true}" : "true",
                extra_key_json ? extra_key_json : "");
    else
        snprintf(c, sizeof c,
                "{\"capacity\": {\"processes\": 16},\n"
                " \"pools\": [{\"name\": \"p\", \"cooldown_s\": 2,\n"
                "   \"limits\": {\"rpm\": {\"limit\": %" PRIu64 ", \"mode\": \"sliding\", "
                "\"burst\": %" PRIu64 "}},\n"
                "   \"keys\": [{\"id\": \"a\", \"secret\": \"sk-fleet-test-0001\", \"fleet\": %s%s}]}]}\n",
                f->L, f->B, f->strict ? "{\"strict\": true}" : "true",
                extra_key_json ? extra_key_json : "");
    fh_host_create_cfg(f, i, c);
}

/* Start host i's agent; `password` overrides the fleet's (NULL: the
 * fleet's).  Its standard error goes to h->log (appended). */
static inline void fh_agent_start(fh_fleet *f, int i, const char *password)
{
    fh_host *h = &f->h[i];
    char url[64], id[16], S[16], V[16], F[16], tmo[16];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", h->proxy.port);
    snprintf(id, sizeof id, "h%d", i);
    snprintf(S, sizeof S, "%u", f->S);
    snprintf(V, sizeof V, "%u", f->V);
    snprintf(F, sizeof F, "%u", f->F);
    snprintf(tmo, sizeof tmo, "%u", f->timeout_ms);
    pid_t pid = fork();
    if (pid < 0)
        bail_out("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(h->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        const char *pw = password ? password : f->password;
        if (pw)
            setenv("KEYMESH_STORE_PASSWORD", pw, 1);
        else
            unsetenv("KEYMESH_STORE_PASSWORD");
        execl(f->kmctl, f->kmctl, "sync", h->seg, "--store", url, "--host-id", id, "--sync-ms",
              S, "--valid-ms", V, "--fallback-ms", F, "--timeout-ms", tmo, (char *)NULL);
        _exit(127);
    }
    h->agent = pid;
}

/* SIGTERM the agent; its exit status (-1 if it did not exit normally
 * within 5 s, then killed). */
static inline int fh_agent_stop(fh_host *h)
{
    int st;
    if (h->agent <= 0)
        return -1;
    kill(h->agent, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(h->agent, &st, WNOHANG) == h->agent) {
            h->agent = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        rig__sleep_ms(10);
    }
    fh__kill_wait(&h->agent, SIGKILL);
    return -1;
}

/* What a worker does at admission `n`: 0 success; else the outcome kind
 * to release with (a 429 at a chosen time). */
typedef struct fh_work {
    double rate;        /* attempts per second, this worker (> 0; tiny: idle) */
    uint64_t until;     /* monotonic end */
    uint64_t t429;      /* first admission at or after this: released as 429 */
    double retry_after_s;
    uint64_t step_at;   /* from this monotonic time (0: never) ... */
    double step_rate;   /*   attempts per second, this worker */
    int32_t out_tokens; /* released with this many tokens (0: the estimate) */
} fh_work;

static inline _Noreturn void fh__worker(fh_fleet *f, fh_host *h, int w, const fh_work *wk)
{
    char path[256];
    km_env *env;
    snprintf(path, sizeof path, "%s/h%d-w%d.bin", f->dir, h->idx, w);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0 || km_open(h->seg, &env) != KM_OK)
        _exit(2);
    int pool = km_pool_find(env, "p");
    uint64_t iv = (uint64_t)(1e9 / wk->rate);
    uint64_t next = fh_now() + (uint64_t)(((unsigned)getpid() * 7919u) % 1000u) * iv / 1000u;
    int did429 = 0, stepped = 0;
    for (;;) {
        if (!stepped && wk->step_at && next >= wk->step_at) {
            /* The step: worker w's first arrival at the new rate is w/4
             * of its interval after step_at, so the host's arrivals are
             * evenly spaced at the new total rate from step_at on. */
            iv = (uint64_t)(1e9 / wk->step_rate);
            next = wk->step_at + (uint64_t)w * iv / FH_MAX_WORKERS;
            stepped = 1;
        }
        if (next >= wk->until)
            break;
        fh_sleep_until(next);
        uint64_t arrival = next, now = fh_now();
        next += iv;
        /* A request waits for a key at most FH_WAIT_MS (km_acquire_wait,
         * woken when the agent tops the credit up), as an API server's
         * request would; one that waited that long in the worker's queue
         * is dropped (the offered load stays open-loop). */
        if (now - arrival >= FH_WAIT_MS * 1000000ull)
            continue;
        km_request rq = {0};
        km_lease ls;
        rq.pool = pool;
        rq.model = f->model;
        uint32_t left = (uint32_t)(FH_WAIT_MS - (now - arrival) / 1000000ull);
        if (km_acquire_wait(env, &rq, &ls, left) != KM_OK)
            continue;
        uint64_t t = fh_now();
        if (write(fd, &t, sizeof t) != (ssize_t)sizeof t)
            _exit(3);
        km_outcome oc = {0};
        oc.kind = KM_OUT_SUCCESS;
        oc.latency_us = 1000;
        oc.tokens = wk->out_tokens ? wk->out_tokens : -1;
        if (wk->t429 && !did429 && t >= wk->t429) {
            oc.kind = KM_OUT_RATE_LIMITED;
            oc.retry_after_s = wk->retry_after_s;
            did429 = 1;
        }
        km_release(env, &ls, &oc);
    }
    km_close(env);
    _exit(0);
}

static inline void fh_workers_start(fh_fleet *f, int i, int n, const fh_work *wk)
{
    fh_host *h = &f->h[i];
    for (int w = 0; w < n; w++) {
        fh_work x = *wk;
        if (w != 0)
            x.t429 = 0;
        pid_t pid = fork();
        if (pid < 0)
            bail_out("fork: %s", strerror(errno));
        if (pid == 0)
            fh__worker(f, h, w, &x);
        h->worker[w] = pid;
    }
    h->n_workers = n;
}

static inline void fh_workers_wait(fh_host *h)
{
    for (int w = 0; w < h->n_workers; w++)
        if (h->worker[w] > 0) {
            waitpid(h->worker[w], NULL, 0);
            h->worker[w] = 0;
        }
    h->n_workers = 0;
}

/* SIGKILL a host: its agent and its workers, nothing said to anyone. */
static inline void fh_host_kill(fh_host *h)
{
    fh__kill_wait(&h->agent, SIGKILL);
    for (int w = 0; w < h->n_workers; w++)
        fh__kill_wait(&h->worker[w], SIGKILL);
    h->n_workers = 0;
}

static inline int fh__cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every admission of host `only` (-1: every host), sorted; *n of them.
 * Free with free(). */
static inline uint64_t *fh_times(fh_fleet *f, int only, size_t *n)
{
    size_t cap = 1024, k = 0;
    uint64_t *t = malloc(cap * sizeof *t);
    for (int i = 0; i < f->n; i++) {
        if (only >= 0 && i != only)
            continue;
        for (int w = 0; w < FH_MAX_WORKERS; w++) {
            char path[256];
            snprintf(path, sizeof path, "%s/h%d-w%d.bin", f->dir, i, w);
            int fd = open(path, O_RDONLY);
            if (fd < 0)
                continue;
            uint64_t x;
            while (read(fd, &x, sizeof x) == (ssize_t)sizeof x) {
                if (k == cap) {
                    cap *= 2;
                    t = realloc(t, cap * sizeof *t);
                    if (!t)
                        bail_out("out of memory");
                }
                t[k++] = x;
            }
            close(fd);
        }
    }
    qsort(t, k, sizeof *t, fh__cmp);
    *n = k;
    return t;
}

/* max over i <= j of (j - i + 1) - (t_j - t_i)/T - B, over admissions in
 * [from, to); *at receives t_j of the worst pair.  In O(n): with
 * g(i) = i - t_i/T, the excess is g(j) - g(i) + 1 - B, the best i <= j being
 * the running minimum of g. */
static inline double fh_excess(const fh_fleet *f, const uint64_t *t, size_t n, uint64_t from,
                               uint64_t to, uint64_t *at)
{
    double best = -1e18, gmin = 1e18;
    size_t k = 0;
    for (size_t j = 0; j < n; j++) {
        if (t[j] < from || t[j] >= to)
            continue;
        double g = (double)k - (double)(t[j] - from) / (double)f->T;
        if (g < gmin)
            gmin = g;
        double e = g - gmin + 1.0 - (double)f->B;
        if (e > best) {
            best = e;
            if (at)
                *at = t[j];
        }
        k++;
    }
    return best;
}

/* Admissions in [a, b). */
static inline size_t fh_count(const uint64_t *t, size_t n, uint64_t a, uint64_t b)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += t[i] >= a && t[i] < b;
    return c;
}

/* A run against one hard spend budget of `budget` micro-USD (t_spend,
 * t_pool_spend): every admission logged by fh__worker or a test's worker
 * cost `cost`, `workers` per host offered load from t0 to t1.  Five
 * checks: every host spends; the fleet spends at least the budget (no
 * host stops early overall) and at most the budget plus the bound README
 * states (what the fleet spends in 2 S plus one request in flight per
 * worker); every host refuses within 2 S of the crossing (plus 100 ms of
 * scheduling on a shared machine; `late_note` says what else that
 * covers); no host stops early (it sees the others' spend late, never
 * early: each admits until the crossing, S before it at most).  Then the
 * SUMMARY line `name`. */
static inline void fh_spend_checks(fh_fleet *f, const char *name, uint64_t cost, uint64_t budget,
                                   int workers, uint64_t t0, uint64_t t1, const char *late_note)
{
    size_t n, nh[FH_MAX_HOSTS];
    uint64_t *t = fh_times(f, -1, &n), last[FH_MAX_HOSTS];
    int every = 1;
    for (int i = 0; i < f->n; i++) {
        uint64_t *ti = fh_times(f, i, &nh[i]);
        last[i] = nh[i] ? ti[nh[i] - 1] : 0;
        every &= nh[i] != 0;
        free(ti);
    }
    uint64_t spent = (uint64_t)n * cost, need = budget / cost;
    ok(every, "every host spends (host 0: %zu, last: %zu admissions)", nh[0], nh[f->n - 1]);
    ok(spent >= budget, "the fleet spends its budget: %" PRIu64 " >= %" PRIu64 " micro-USD",
       spent, budget);
    /* tc: the admission that took the fleet's spend to the budget; the
     * rate: the fleet's over the second before it. */
    uint64_t tc = n >= need ? t[need - 1] : t1;
    uint64_t from = tc > t0 + 1000000000ull ? tc - 1000000000ull : t0;
    double rate = (double)fh_count(t, n, from, tc + 1) * 1e9 / (double)(tc + 1 - from);
    double bound = rate * (double)cost * 2 * (f->S / 1000.0) + (double)(f->n * workers) * (double)cost;
    ok((double)spent <= (double)budget + bound,
       "at most X + the bound: %" PRIu64 " <= %" PRIu64 " + %.0f (fleet %.0f/s x 2 S + %d in flight)",
       spent, budget, bound, rate, f->n * workers);
    uint64_t late = tc + 2ull * f->S * 1000000ull + 100000000ull;
    uint64_t early = tc - (uint64_t)f->S * 1000000ull, lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < f->n; i++) {
        lo = last[i] < lo ? last[i] : lo;
        hi = last[i] > hi ? last[i] : hi;
    }
    ok(hi <= late, "every host refuses within 2 S of the budget's end%s: last admissions up to "
                   "%+.0f ms after it", late_note, ((double)hi - (double)tc) / 1e6);
    ok(lo >= early, "no host stops early: last admissions from %+.0f ms of the crossing (>= -%u)",
       ((double)lo - (double)tc) / 1e6, f->S);
    diag("SUMMARY %s hosts=%d budget_usd=%.2f spent_usd=%.2f over_usd=%.2f bound_usd=%.2f "
         "rate_per_s=%.0f S_ms=%u",
         name, f->n, budget / 1e6, spent / 1e6, ((double)spent - (double)budget) / 1e6, bound / 1e6,
         rate, f->S);
    free(t);
}

/* Goodput over [a, b): admissions / (what the limit's rate allows). */
static inline double fh_goodput(const fh_fleet *f, const uint64_t *t, size_t n, uint64_t a,
                                uint64_t b)
{
    return (double)fh_count(t, n, a, b) * (double)f->T / (double)(b - a);
}

/* The first time >= a from which goodput over every following `win` ns
 * stays >= `target` until `b` (checked at steps of win/10); b if never. */
static inline uint64_t fh_recovered(const fh_fleet *f, const uint64_t *t, size_t n, uint64_t a,
                                    uint64_t b, uint64_t win, double target)
{
    uint64_t step = win / 10, cand = a;
    for (uint64_t x = a; x + win <= b; x += step) {
        if (fh_goodput(f, t, n, x, x + win) < target)
            cand = x + step;
    }
    return cand;
}

/* Run cmd (sh -c); its standard output into out (cap bytes); its exit
 * status (-1 if it did not exit). */
static inline int fh_cmd_out(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    size_t k = 0;
    if (!p)
        return -1;
    while (k + 1 < cap) {
        size_t r = fread(out + k, 1, cap - 1 - k, p);
        if (r == 0)
            break;
        k += r;
    }
    out[k] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* 1 if file `path` contains `needle`. */
static inline int fh_file_has(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "r");
    char line[2048];
    int found = 0;
    if (!fp)
        return 0;
    while (!found && fgets(line, sizeof line, fp))
        found = strstr(line, needle) != NULL;
    fclose(fp);
    return found;
}

static inline void fh_show_log(const char *path, int max)
{
    FILE *fp = fopen(path, "r");
    char line[2048];
    int k = 0;
    if (!fp)
        return;
    while (k++ < max && fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        diag("  %s", line);
    }
    fclose(fp);
}

/* SIGTERM every agent still running; if one did not exit 0, or a check
 * failed, show every agent's log (its first 20 lines). */
static inline void fh_agents_stop(fh_fleet *f)
{
    int bad = 0;
    for (int i = 0; i < f->n; i++)
        if (f->h[i].agent > 0 && fh_agent_stop(&f->h[i]) != 0)
            bad = 1;
    if (bad || tap_failures())
        for (int i = 0; i < f->n; i++) {
            diag("agent %d log:", i);
            fh_show_log(f->h[i].log, 20);
        }
}

#endif /* KM_TESTS_FLEET_HOSTS_H */
