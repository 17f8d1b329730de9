/*
 * tools/kmctl/cmd_metrics.c - the Prometheus text exposition of a segment
 * (format 0.0.4), printed by kmctl metrics and served by kmctl serve.
 *
 * Names follow Prometheus' conventions: the keymesh_ prefix, the object
 * (segment, pool, key, key_model), the quantity, its unit as a suffix
 * (_seconds, _tokens, _requests, _usd, _bytes, _ratio) and _total on
 * counters.  Labels carry ids only: pool, key, model, and the enumerations
 * state, outcome, window, mode.  Never a secret: nothing here reads one
 * (km_key_stats has no secret field at all).  A family is written whole,
 * HELP and TYPE first, then every sample of it, as the format requires.
 * docs/kmctl.md lists every name; examples/grafana-dashboard.json uses
 * only these (tests/t_metrics.sh checks it).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

const char usage_metrics[] =
    "Usage: kmctl metrics NAME\n"
    "\n"
    "Print the statistics of segment NAME in the Prometheus text exposition\n"
    "format (version 0.0.4): per segment, pool, key and key x model, with\n"
    "HELP and TYPE lines, units in the names (_seconds, _tokens, _requests,\n"
    "_usd) and ids as labels (pool, key, model; never a secret).  The names\n"
    "are listed in docs/kmctl.md.  For a scraper, run `kmctl serve`.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 printed; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl metrics llm | promtool check metrics\n";

/* ------------------------------------------------------------- writing */

/* A label value with \, " and newline escaped, into b. */
static void esc_label(const char *s, char *b, size_t n)
{
    size_t o = 0;
    for (; *s && o + 3 < n; s++) {
        if (*s == '\\' || *s == '"') {
            b[o++] = '\\';
            b[o++] = *s;
        } else if (*s == '\n') {
            b[o++] = '\\';
            b[o++] = 'n';
        } else {
            b[o++] = *s;
        }
    }
    b[o] = '\0';
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample: name{labels} value.  Integers print exactly. */
static void s_u64(FILE *f, const char *name, const char *labels, uint64_t v)
{
    fprintf(f, "%s{%s} %" PRIu64 "\n", name, labels, v);
}

static void s_dbl(FILE *f, const char *name, const char *labels, double v)
{
    fprintf(f, "%s{%s} %.9g\n", name, labels, v);
}

/* Labels of each key ("pool=\"p\",key=\"a\""), escaped once per scrape. */
typedef struct key_labels {
    char s[2 * (2 * KM_ID_MAX + 2) + 32];
} key_labels;

typedef struct expo {
    FILE *f;
    const seg_stats *s;
    key_labels **kl; /* [pool][key] */
    char (*pl)[2 * KM_ID_MAX + 16]; /* [pool]: pool="p" */
} expo;

#define FOR_KEYS(x, pv, p, k, i)                                     \
    for (uint32_t p = 0; p < (x)->s->n_pools; p++)                   \
        for (const pool_view *pv = &(x)->s->pools[p]; pv; pv = NULL) \
            for (uint32_t i = 0; i < pv->n_keys; i++)                \
                for (const km_key_stats *k = &pv->keys[i]; k; k = NULL)

static const char *klab(const expo *x, uint32_t p, uint32_t i)
{
    return x->kl[p][i].s;
}

/* ----------------------------------------------------------- families */

static void segment_families(expo *x, const char *segment)
{
    FILE *f = x->f;
    const km_info *in = &x->s->info;
    char seg[2 * KM_SEG_NAME_MAX + 2], lab[2 * KM_SEG_NAME_MAX + 96];
    esc_label(segment, seg, sizeof seg);
    snprintf(lab, sizeof lab, "segment=\"%s\",version=\"%s\",segment_format=\"%" PRIu32 "\"",
             seg, km_version(), in->format);
    family(f, "keymesh_segment_info", "gauge",
           "The segment served: its name, the library version, its format (value 1).");
    s_u64(f, "keymesh_segment_info", lab, 1);
    family(f, "keymesh_segment_size_bytes", "gauge", "Size of the shared-memory segment.");
    fprintf(f, "keymesh_segment_size_bytes %" PRIu64 "\n", in->size_bytes);
    family(f, "keymesh_segment_created_timestamp_seconds", "gauge",
           "When the segment was created (Unix time).");
    fprintf(f, "keymesh_segment_created_timestamp_seconds %.3f\n",
            (double)in->created_wall_ns / 1e9);
    family(f, "keymesh_segment_processes_attached", "gauge",
           "Processes in the segment's process table now: attached, or dead and not yet "
           "reaped (the exporter attaches read-only and is not one of them).");
    fprintf(f, "keymesh_segment_processes_attached %" PRIu32 "\n", in->n_procs);
    family(f, "keymesh_segment_keys", "gauge", "Keys in the segment now.");
    fprintf(f, "keymesh_segment_keys %" PRIu32 "\n", in->n_keys);
    family(f, "keymesh_segment_capacity_keys", "gauge", "Most keys the segment can hold.");
    fprintf(f, "keymesh_segment_capacity_keys %" PRIu32 "\n", in->cap_keys);
    family(f, "keymesh_segment_capacity_processes", "gauge",
           "Most processes that can attach at once.");
    fprintf(f, "keymesh_segment_capacity_processes %" PRIu32 "\n", in->cap_procs);
}

static void pool_families(expo *x)
{
    FILE *f = x->f;
    const seg_stats *s = x->s;
    char lab[256];

    family(f, "keymesh_pool_info", "gauge", "A pool: its strategy and model mode (value 1).");
    for (uint32_t p = 0; p < s->n_pools; p++) {
        const km_pool_stats *ps = &s->pools[p].ps;
        snprintf(lab, sizeof lab, "%s,strategy=\"%s\",model_limits=\"%s\"", x->pl[p],
                 km_strategy_name(ps->strategy),
                 ps->model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global");
        s_u64(f, "keymesh_pool_info", lab, 1);
    }
    family(f, "keymesh_pool_keys", "gauge", "Keys of the pool in each state.");
    for (uint32_t p = 0; p < s->n_pools; p++)
        for (int st = 0; st < KM_KEY_STATE_COUNT; st++) {
            snprintf(lab, sizeof lab, "%s,state=\"%s\"", x->pl[p], km_key_state_name(st));
            s_u64(f, "keymesh_pool_keys", lab, s->pools[p].ps.keys_by_state[st]);
        }
    family(f, "keymesh_pool_inflight", "gauge", "Leases out on the pool's keys.");
    for (uint32_t p = 0; p < s->n_pools; p++)
        s_u64(f, "keymesh_pool_inflight", x->pl[p], s->pools[p].ps.inflight);
    family(f, "keymesh_pool_waiters", "gauge",
           "Processes sleeping in km_acquire_wait for a key of the pool.");
    for (uint32_t p = 0; p < s->n_pools; p++)
        s_u64(f, "keymesh_pool_waiters", x->pl[p], s->pools[p].ps.waiters);
    family(f, "keymesh_pool_spent_usd_total", "counter", "US dollars spent by the pool.");
    for (uint32_t p = 0; p < s->n_pools; p++)
        s_dbl(f, "keymesh_pool_spent_usd_total", x->pl[p],
              (double)s->pools[p].ps.spent_microusd / 1e6);
    family(f, "keymesh_pool_budget_usd", "gauge",
           "The pool's spend budget in US dollars (pools that have one).");
    for (uint32_t p = 0; p < s->n_pools; p++) {
        const km_pool_stats *ps = &s->pools[p].ps;
        if (!ps->budget_microusd)
            continue;
        snprintf(lab, sizeof lab, "%s,hard=\"%s\"", x->pl[p], ps->budget_hard ? "true" : "false");
        s_dbl(f, "keymesh_pool_budget_usd", lab, (double)ps->budget_microusd / 1e6);
    }
    family(f, "keymesh_pool_budget_over", "gauge",
           "1 while the pool's spend in its budget period is at or over its budget (pools "
           "that have one; alert on it for a soft budget).");
    for (uint32_t p = 0; p < s->n_pools; p++)
        if (s->pools[p].ps.budget_microusd)
            s_u64(f, "keymesh_pool_budget_over", x->pl[p], s->pools[p].pb.over);
    family(f, "keymesh_pool_budget_warnings_total", "counter",
           "Times the pool's spend crossed its soft budget (at most once per period).");
    for (uint32_t p = 0; p < s->n_pools; p++)
        if (s->pools[p].ps.budget_microusd && !s->pools[p].ps.budget_hard)
            s_u64(f, "keymesh_pool_budget_warnings_total", x->pl[p], s->pools[p].pb.warnings);
    family(f, "keymesh_pool_prev_spent_usd", "gauge",
           "US dollars the pool spent in the budget period before the current one (pools "
           "whose budget has a period).");
    for (uint32_t p = 0; p < s->n_pools; p++)
        if (s->pools[p].ps.budget_microusd && s->pools[p].pb.period)
            s_dbl(f, "keymesh_pool_prev_spent_usd", x->pl[p],
                  (double)s->pools[p].pb.prev_spent_microusd / 1e6);
    family(f, "keymesh_pool_budget_period_end_seconds", "gauge",
           "When the pool's budget period ends and its spend resets, Unix seconds (pools "
           "whose budget has a period).");
    for (uint32_t p = 0; p < s->n_pools; p++)
        if (s->pools[p].ps.budget_microusd && s->pools[p].pb.period)
            s_u64(f, "keymesh_pool_budget_period_end_seconds", x->pl[p],
                  s->pools[p].pb.period_end_unix_ns / 1000000000u);
}

static void key_counter_families(expo *x)
{
    FILE *f = x->f;
    char lab[512];

    family(f, "keymesh_key_requests_total", "counter", "Leases acquired on the key.");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_requests_total", klab(x, p, i),
                                   k->counters.requests);
    family(f, "keymesh_key_outcomes_total", "counter",
           "Leases released on the key, by the outcome the provider gave.");
    FOR_KEYS(x, pv, p, k, i) for (int o = 0; o < KM_OUT_COUNT; o++)
    {
        snprintf(lab, sizeof lab, "%s,outcome=\"%s\"", klab(x, p, i), km_outcome_name(o));
        s_u64(f, "keymesh_key_outcomes_total", lab, k->counters.outcomes[o]);
    }
    family(f, "keymesh_key_abandoned_total", "counter",
           "Leases on the key released by km_close or a reaper (holder gone).");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_abandoned_total", klab(x, p, i),
                                   k->counters.abandoned);
    family(f, "keymesh_key_stale_releases_total", "counter",
           "Releases on the key ignored as stale (already released or reaped).");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_stale_releases_total", klab(x, p, i),
                                   k->counters.stale_releases);
    family(f, "keymesh_key_tokens_total", "counter", "Tokens settled on the key at release.");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_tokens_total", klab(x, p, i),
                                   k->counters.tokens);
    family(f, "keymesh_key_spent_usd_total", "counter", "US dollars spent on the key.");
    FOR_KEYS(x, pv, p, k, i) s_dbl(f, "keymesh_key_spent_usd_total", klab(x, p, i),
                                   (double)k->spent_microusd / 1e6);
}

/* Has key i of pool view pv served model row m (a request named it, or
 * a release or reap counted on it)?  Rows that never did are left out of
 * the key x model counter families, as a client library leaves out label
 * sets it never observed: 1024 keys x 8 models would otherwise add ~80k
 * zero series to every scrape.  A named row not yet written (its name "")
 * is left out too. */
static const km_model_stats *served(const pool_view *pv, uint32_t i, uint32_t m)
{
    const km_model_stats *km = &pv->key_models[(size_t)i * pv->ps.n_models + m];
    const km_stats_counters *c = &km->counters;
    return km->counters_valid && km->name[0] && (c->requests || c->abandoned || c->stale_releases)
               ? km
               : NULL;
}

/* One key x model counter family: `which` a field of km_stats_counters
 * (KMC_*), or KMC_OUTCOMES for one sample per outcome kind. */
enum { KMC_REQUESTS, KMC_OUTCOMES, KMC_ABANDONED, KMC_STALE, KMC_TOKENS };

static void key_model_family(expo *x, const char *name, const char *help, int which)
{
    char lab[768], ml[2 * KM_ID_MAX + 2];
    family(x->f, name, "counter", help);
    FOR_KEYS(x, pv, p, k, i) for (uint32_t m = 0; pv->key_models && m < pv->ps.n_models; m++)
    {
        const km_model_stats *km = served(pv, i, m);
        if (!km)
            continue;
        const km_stats_counters *c = &km->counters;
        esc_label(km->name, ml, sizeof ml);
        for (int o = 0; o < (which == KMC_OUTCOMES ? KM_OUT_COUNT : 1); o++) {
            snprintf(lab, sizeof lab, "%s,model=\"%s\"%s%s%s", klab(x, p, i), ml,
                     which == KMC_OUTCOMES ? ",outcome=\"" : "",
                     which == KMC_OUTCOMES ? km_outcome_name(o) : "",
                     which == KMC_OUTCOMES ? "\"" : "");
            s_u64(x->f, name, lab,
                  which == KMC_REQUESTS    ? c->requests
                  : which == KMC_OUTCOMES  ? c->outcomes[o]
                  : which == KMC_ABANDONED ? c->abandoned
                  : which == KMC_STALE     ? c->stale_releases
                                           : c->tokens);
        }
    }
}

/* The key x model counters (km_key_model_stats_get), labelled as the
 * key's with model added. */
static void key_model_counter_families(expo *x)
{
    key_model_family(x, "keymesh_key_model_requests_total",
                     "Leases acquired on the key for requests naming the model.", KMC_REQUESTS);
    key_model_family(x, "keymesh_key_model_outcomes_total",
                     "Leases naming the model released on the key, by the outcome the "
                     "provider gave.", KMC_OUTCOMES);
    key_model_family(x, "keymesh_key_model_abandoned_total",
                     "Leases naming the model on the key released by km_close or a reaper.",
                     KMC_ABANDONED);
    key_model_family(x, "keymesh_key_model_stale_releases_total",
                     "Releases of leases naming the model on the key ignored as stale.",
                     KMC_STALE);
    key_model_family(x, "keymesh_key_model_tokens_total",
                     "Tokens settled at release on the key for requests naming the model.",
                     KMC_TOKENS);
}

static void key_gauge_families(expo *x)
{
    FILE *f = x->f;
    char lab[512];

    family(f, "keymesh_key_state", "gauge", "1 for the state the key is in, 0 for the others.");
    FOR_KEYS(x, pv, p, k, i) for (int st = 0; st < KM_KEY_STATE_COUNT; st++)
    {
        snprintf(lab, sizeof lab, "%s,state=\"%s\"", klab(x, p, i), km_key_state_name(st));
        s_u64(f, "keymesh_key_state", lab, k->state == st);
    }
    family(f, "keymesh_key_inflight", "gauge", "Leases out on the key.");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_inflight", klab(x, p, i), k->inflight);
    family(f, "keymesh_key_max_inflight", "gauge", "Most leases allowed out on the key at once.");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_max_inflight", klab(x, p, i),
                                   k->max_inflight);
    family(f, "keymesh_key_weight", "gauge", "The key's weight (weighted strategy).");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_weight", klab(x, p, i), k->weight);
    family(f, "keymesh_key_cooldown_remaining_seconds", "gauge",
           "Seconds of cooldown left on the key (0: none).");
    FOR_KEYS(x, pv, p, k, i) s_dbl(f, "keymesh_key_cooldown_remaining_seconds", klab(x, p, i),
                                   (double)k->cooldown_remaining_ms / 1e3);
    family(f, "keymesh_key_consecutive_failures", "gauge",
           "Failures in a row on the key (cooldown after max_failures).");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_consecutive_failures", klab(x, p, i),
                                   k->consecutive_failures);
    family(f, "keymesh_key_consecutive_rate_limited", "gauge", "429s in a row on the key.");
    FOR_KEYS(x, pv, p, k, i) s_u64(f, "keymesh_key_consecutive_rate_limited", klab(x, p, i),
                                   k->consecutive_429s);
    family(f, "keymesh_key_latency_ema_seconds", "gauge",
           "Moving average of the key's request latency (keys with a sample).");
    FOR_KEYS(x, pv, p, k, i) if (k->latency_ema_us)
        s_dbl(f, "keymesh_key_latency_ema_seconds", klab(x, p, i),
              (double)k->latency_ema_us / 1e6);
    family(f, "keymesh_key_success_ratio", "gauge",
           "Moving average of the key's success (1: every recent request succeeded).");
    FOR_KEYS(x, pv, p, k, i) s_dbl(f, "keymesh_key_success_ratio", klab(x, p, i),
                                   (double)k->success_ppm / 1e6);
    family(f, "keymesh_key_budget_usd", "gauge", "The key's spend budget in US dollars (keys that have one).");
    FOR_KEYS(x, pv, p, k, i) if (k->budget_microusd)
    {
        snprintf(lab, sizeof lab, "%s,hard=\"%s\"", klab(x, p, i),
                 k->budget_hard ? "true" : "false");
        s_dbl(f, "keymesh_key_budget_usd", lab, (double)k->budget_microusd / 1e6);
    }
}

/* The window families of keys or of key x model, for one unit (requests:
 * windows rpm, rph, rpd; tokens: tpm, tph, tpd). */
enum { WF_LIMIT, WF_BURST, WF_USED, WF_LEFT, WF_FULL, WF_COUNT };

static const char *const wf_name[WF_COUNT] = {"limit", "burst", "used", "left", "full_in"};
static const char *const wf_help[WF_COUNT] = {
    "The window's limit per period", "Most units the window admits at once",
    "Units held against the window now (burst - left)", "Units the window admits now",
    "Seconds until the window's use is back to 0 if nothing more is admitted"};

static uint64_t wf_value(const km_window_stats *w, int which)
{
    switch (which) {
    case WF_LIMIT: return w->limit;
    case WF_BURST: return w->burst;
    case WF_USED: return w->used;
    case WF_LEFT: return w->left;
    default: return w->full_in_ms;
    }
}

static void window_families(expo *x, int models)
{
    FILE *f = x->f;
    const char *obj = models ? "key_model" : "key";
    char name[96], help[256], lab[512], ml[2 * KM_ID_MAX + 2];

    for (int unit = 0; unit < 2; unit++) {
        const char *u = unit ? "tokens" : "requests";
        int w0 = unit ? KM_WIN_TPM : KM_WIN_RPM;
        for (int which = 0; which < WF_COUNT; which++) {
            if (which == WF_FULL && unit)
                continue; /* one full_in family covers both units */
            /* Key x model: only what differs per key (used, left).  A
             * model's limit and burst are the same on every key of its
             * pool: model_families() writes them once per model, which
             * keeps a scrape of 1024 keys x 8 models to ~70k series. */
            if (models && which != WF_USED && which != WF_LEFT)
                continue;
            snprintf(name, sizeof name, "keymesh_%s_window_%s_%s", obj, wf_name[which],
                     which == WF_FULL ? "seconds" : u);
            snprintf(help, sizeof help, "%s, %s%s.", wf_help[which],
                     which == WF_FULL ? "request and token windows" : u,
                     models ? " (a model's own limits on the key)" : "");
            family(f, name, "gauge", help);
            FOR_KEYS(x, pv, p, k, i)
            {
                uint32_t nm = models && pv->key_models ? pv->ps.n_models : 0;
                for (uint32_t m = 0; m < (models ? nm : 1); m++) {
                    const km_window_stats *ws =
                        models ? pv->key_models[(size_t)i * nm + m].windows : k->windows;
                    if (models)
                        esc_label(pv->key_models[(size_t)i * nm + m].name, ml, sizeof ml);
                    int wa = which == WF_FULL ? 0 : w0, wb = which == WF_FULL ? KM_WIN_COUNT
                                                                              : w0 + 3;
                    for (int w = wa; w < wb; w++) {
                        if (!ws[w].limit)
                            continue;
                        snprintf(lab, sizeof lab, "%s%s%s%s,window=\"%s\"", klab(x, p, i),
                                 models ? ",model=\"" : "", models ? ml : "",
                                 models ? "\"" : "", km_window_name(w));
                        if (which == WF_LIMIT) {
                            size_t n = strlen(lab);
                            snprintf(lab + n, sizeof lab - n, ",mode=\"%s\"",
                                     mode_name(ws[w].mode));
                        }
                        if (which == WF_FULL)
                            s_dbl(f, name, lab, (double)ws[w].full_in_ms / 1e3);
                        else
                            s_u64(f, name, lab, wf_value(&ws[w], which));
                    }
                }
            }
        }
    }
}

/* A model's own limits (per_model pools), the same on every key of its
 * pool: read from the first key that has them. */
static void model_families(expo *x)
{
    FILE *f = x->f;
    char name[96], help[160], lab[512], ml[2 * KM_ID_MAX + 2];

    for (int unit = 0; unit < 2; unit++) {
        const char *u = unit ? "tokens" : "requests";
        int w0 = unit ? KM_WIN_TPM : KM_WIN_RPM;
        for (int which = WF_LIMIT; which <= WF_BURST; which++) {
            snprintf(name, sizeof name, "keymesh_model_window_%s_%s", wf_name[which], u);
            snprintf(help, sizeof help, "%s, %s: a model's own limit, on each key of its pool.",
                     wf_help[which], u);
            family(f, name, "gauge", help);
            for (uint32_t p = 0; p < x->s->n_pools; p++) {
                const pool_view *pv = &x->s->pools[p];
                uint32_t nm = pv->ps.n_models;
                for (uint32_t m = 0; pv->key_models && m < nm; m++) {
                    esc_label(pv->models[m].name, ml, sizeof ml);
                    for (int w = w0; w < w0 + 3; w++) {
                        const km_window_stats *ws = NULL;
                        for (uint32_t i = 0; i < pv->n_keys && !ws; i++)
                            if (pv->key_models[(size_t)i * nm + m].windows[w].limit)
                                ws = &pv->key_models[(size_t)i * nm + m].windows[w];
                        if (!ws)
                            continue;
                        snprintf(lab, sizeof lab, "%s,model=\"%s\",window=\"%s\"", x->pl[p], ml,
                                 km_window_name(w));
                        if (which == WF_LIMIT) {
                            size_t n = strlen(lab);
                            snprintf(lab + n, sizeof lab - n, ",mode=\"%s\"", mode_name(ws->mode));
                        }
                        s_u64(f, name, lab, wf_value(ws, which));
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------- driver */

int metrics_text(km_env *env, const char *segment, char **out, size_t *len)
{
    seg_stats s;
    expo x = {0};
    uint64_t t0 = km_now_ns();
    int rc = collect(env, COLLECT_KEY_MODELS, &s);
    if (rc != KM_OK)
        return rc;
    *out = NULL;
    x.s = &s;
    x.kl = calloc(s.n_pools ? s.n_pools : 1, sizeof *x.kl);
    x.pl = calloc(s.n_pools ? s.n_pools : 1, sizeof *x.pl);
    rc = KM_ENOMEM;
    if (!x.kl || !x.pl)
        goto out;
    for (uint32_t p = 0; p < s.n_pools; p++) {
        char pe[2 * KM_ID_MAX + 2], ke[2 * KM_ID_MAX + 2];
        esc_label(s.pools[p].ps.name, pe, sizeof pe);
        snprintf(x.pl[p], sizeof x.pl[p], "pool=\"%s\"", pe);
        if (!(x.kl[p] = calloc(s.pools[p].n_keys ? s.pools[p].n_keys : 1, sizeof **x.kl)))
            goto out;
        for (uint32_t i = 0; i < s.pools[p].n_keys; i++) {
            esc_label(s.pools[p].keys[i].id, ke, sizeof ke);
            snprintf(x.kl[p][i].s, sizeof x.kl[p][i].s, "pool=\"%s\",key=\"%s\"", pe, ke);
        }
    }
    if (!(x.f = open_memstream(out, len)))
        goto out;
    segment_families(&x, segment);
    pool_families(&x);
    key_counter_families(&x);
    key_model_counter_families(&x);
    key_gauge_families(&x);
    window_families(&x, 0);
    model_families(&x);
    window_families(&x, 1);
    family(x.f, "keymesh_exporter_scrape_duration_seconds", "gauge",
           "Time this exposition took to read the segment and write.");
    fprintf(x.f, "keymesh_exporter_scrape_duration_seconds %.6f\n",
            (double)(km_now_ns() - t0) / 1e9);
    rc = ferror(x.f) ? KM_ENOMEM : KM_OK;
    if (fclose(x.f) != 0)
        rc = KM_ENOMEM;
    if (rc != KM_OK) {
        free(*out);
        *out = NULL;
    }
out:
    for (uint32_t p = 0; x.kl && p < s.n_pools; p++)
        free(x.kl[p]);
    free(x.kl);
    free(x.pl);
    collect_free(&s);
    return rc;
}

const cmd_syntax metrics_syntax = {usage_metrics, "NAME", NULL, 0};

int cmd_metrics(int argc, char **argv)
{
    const char *name;
    km_env *env;
    char *text;
    size_t len;
    int rc;

    if ((rc = parse_and_open(&metrics_syntax, argc, argv, NULL, &name, &env)) >= 0)
        return rc;
    rc = metrics_text(env, name, &text, &len);
    km_close(env);
    if (rc != KM_OK)
        return seg_error(name, rc);
    fwrite(text, 1, len, stdout);
    free(text);
    return flush_stdout(EX_SUCCESS);
}
