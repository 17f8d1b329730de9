/*
 * tools/kmctl/cmd_stats.c - kmctl stats: per pool, model, key and
 * key x model, the use of every window now, counters, moving averages,
 * in-flight, spend and cooldown (km_*_stats_get through collect.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

const char usage_stats[] =
    "Usage: kmctl stats NAME [--json] [--pool P] [--key K] [--model M]\n"
    "\n"
    "Show the statistics of segment NAME as of now: for each pool its totals\n"
    "(keys by state, in flight, requests and outcomes, tokens, moving\n"
    "averages, spend against budget) and one row per key, then the use of\n"
    "every limit window of each key and of the pool (summed over its keys):\n"
    "  LIMIT, BURST  as configured (units per period; most units at once)\n"
    "  USED          units held against the window now (burst - left),\n"
    "                token reservations of leases out included\n"
    "  LEFT          units admissible now\n"
    "  USE_%         used / burst: how close the window is to refusing\n"
    "  FULL_IN_MS    milliseconds until USED is 0 if nothing more is admitted\n"
    "then each model's counters (requests and outcomes per key x model, and\n"
    "over the pool) and windows (per_model pools).  A pool without a models\n"
    "list shows the model names its requests gave.\n"
    "\n"
    "Options:\n"
    "  -j, --json      print one JSON document instead (docs/kmctl.md)\n"
    "  -p, --pool P    only pool P\n"
    "  -k, --key K     only keys with id K\n"
    "  -m, --model M   only model M (in the model sections)\n"
    "  -h, --help      show this help\n"
    "\n"
    "Exit status: 0 shown; 1 failure; 2 usage error; 3 no such segment,\n"
    "pool, key or model.\n"
    "\n"
    "Example:\n"
    "  kmctl stats llm --pool openai --key a\n";

typedef struct stats_opts {
    int json;
    const char *pool, *key, *model;
} stats_opts;

static const opt_spec stats_optv[] = {
    OPT_FLAG("json", 'j', 1, stats_opts, json),
    OPT_STR("pool", 'p', 1, stats_opts, pool),
    OPT_STR("key", 'k', 1, stats_opts, key),
    OPT_STR("model", 'm', 1, stats_opts, model),
};

const cmd_syntax stats_syntax = {usage_stats, "NAME", stats_optv, N_OPTS(stats_optv)};

/* ------------------------------------------------------------ filtering */

static int pool_wanted(const stats_opts *o, const pool_view *v)
{
    return !o->pool || strcmp(o->pool, v->ps.name) == 0;
}

static int key_wanted(const stats_opts *o, const km_key_stats *k)
{
    return !o->key || strcmp(o->key, k->id) == 0;
}

static int model_wanted(const stats_opts *o, const km_model_stats *m)
{
    return !o->model || strcmp(o->model, m->name) == 0;
}

/* Status 3 with a message if a filter matches nothing; -1 to go on. */
static int check_filters(const stats_opts *o, const seg_stats *s)
{
    int pools = 0, keys = 0, models = 0;
    for (uint32_t p = 0; p < s->n_pools; p++) {
        const pool_view *v = &s->pools[p];
        if (!pool_wanted(o, v))
            continue;
        pools++;
        for (uint32_t i = 0; i < v->n_keys; i++)
            keys += key_wanted(o, &v->keys[i]);
        for (uint32_t m = 0; m < v->ps.n_models; m++)
            models += model_wanted(o, &v->models[m]);
    }
    if (!pools) {
        errline("pool '%s': %s", o->pool, km_strerror(KM_ENOPOOL));
        return EX_NOTFOUND;
    }
    if (!keys && o->key) {
        errline("key '%s'%s%s%s: %s", o->key, o->pool ? " in pool '" : "",
                o->pool ? o->pool : "", o->pool ? "'" : "", km_strerror(KM_ENOKEY));
        return EX_NOTFOUND;
    }
    if (!models && o->model) {
        errline("model '%s'%s%s%s: %s", o->model, o->pool ? " in pool '" : "",
                o->pool ? o->pool : "", o->pool ? "'" : "", km_strerror(KM_ENOMODEL));
        return EX_NOTFOUND;
    }
    return -1;
}

/* The pool line's budget tail: its period, the previous period's spend
 * and when it resets; a soft budget's warnings. */
static void budget_tail(const km_budget_state *b, const char *tz, int hard, int over)
{
    char u[32], e[112];
    if (b->period) {
        fmt_usd(b->prev_spent_microusd, u, sizeof u);
        fmt_period_end(b->period_end_unix_ns, b->tz_min, tz, e, sizeof e);
        printf(" per %s, previous %s $%s, resets %s", budget_period_name(b->period),
               budget_period_name(b->period), u, e);
    }
    if (!hard)
        printf(", %" PRIu32 " warning%s%s", b->warnings, b->warnings == 1 ? "" : "s",
               over ? ", OVER" : "");
}

/* ----------------------------------------------------------------- JSON */

/* A budget's period fields, after "budget_hard" (keymesh._stats has the
 * same, in the same order): null where there is no budget. */
static int budget_json(json_t *j, uint64_t budget, const km_budget_state *b, const char *name)
{
    char tz[64];
    int32_t a = b->tz_min < 0 ? -b->tz_min : b->tz_min;
    if (name && name[0]) /* as configured: "UTC", "+HH:MM" or a zone's name */
        snprintf(tz, sizeof tz, "%s", name);
    else if (b->tz_min)
        snprintf(tz, sizeof tz, "%c%02d:%02d", b->tz_min < 0 ? '-' : '+', (int)(a / 60),
                 (int)(a % 60));
    else
        snprintf(tz, sizeof tz, "UTC");
    json_t *more = json_pack(
        "{s:o, s:o, s:o, s:o, s:o, s:o}",
        "budget_period", budget ? json_string(budget_period_name(b->period)) : json_null(),
        "budget_tz", budget ? json_string(tz) : json_null(),
        "prev_spent_usd", jusd(b->prev_spent_microusd),
        "period_end_unix_ms",
        b->period_end_unix_ns ? ju64(b->period_end_unix_ns / 1000000u) : json_null(),
        "budget_warnings", ju64(b->warnings),
        "budget_over", budget ? json_boolean(b->over) : json_null());
    int rc = more ? json_object_update(j, more) : -1;
    json_decref(more);
    return rc;
}

/* A model's counters, or null from a library that keeps none. */
static json_t *model_counters(const km_model_stats *m)
{
    return m->counters_valid ? jcounters(&m->counters) : json_null();
}

static json_t *key_json(const km_key_stats *k, const km_budget_state *kb, const char *kb_tz,
                        const km_model_stats *km, uint32_t nm, const stats_opts *o)
{
    json_t *j = json_pack(
        "{s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "id", jstr(k->id),
        "state", km_key_state_name(k->state),
        "weight", ju64(k->weight),
        "cooldown_remaining_ms", ju64(k->cooldown_remaining_ms),
        "inflight", ju64(k->inflight),
        "max_inflight", ju64(k->max_inflight),
        "consecutive_failures", ju64(k->consecutive_failures),
        "consecutive_429s", ju64(k->consecutive_429s),
        "latency_ema_us", k->latency_ema_us ? ju64(k->latency_ema_us) : json_null(),
        "success_rate", json_real((double)k->success_ppm / 1e6),
        "counters", jcounters(&k->counters),
        "windows", jwindows(k->windows, NULL),
        "spent_usd", jusd(k->spent_microusd),
        "budget_usd", k->budget_microusd ? jusd(k->budget_microusd) : json_null(),
        "budget_hard", k->budget_microusd ? json_boolean(k->budget_hard) : json_null());
    if (j && budget_json(j, k->budget_microusd, kb, kb_tz) < 0) {
        json_decref(j);
        return NULL;
    }
    json_t *models = json_array();
    for (uint32_t m = 0; j && models && km && m < nm; m++) {
        if (!model_wanted(o, &km[m]))
            continue;
        json_array_append_new(models, json_pack("{s:o, s:o, s:o}", "name", jstr(km[m].name),
                                                "counters", model_counters(&km[m]),
                                                "windows", jwindows(km[m].windows, NULL)));
    }
    if (!j || !models || json_object_set_new(j, "models", models) < 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *pool_json(const pool_view *v, const stats_opts *o)
{
    const km_pool_stats *p = &v->ps;
    json_t *states = json_object();
    for (int s = 0; states && s < KM_KEY_STATE_COUNT; s++)
        json_object_set_new(states, km_key_state_name(s), ju64(p->keys_by_state[s]));
    json_t *j = json_pack(
        "{s:o, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
        "name", jstr(p->name),
        "strategy", km_strategy_name(p->strategy),
        "model_limits", p->model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global",
        "keys_total", ju64(p->n_keys),
        "keys_by_state", states,
        "inflight", ju64(p->inflight),
        "max_inflight", ju64(p->max_inflight),
        "waiters", ju64(p->waiters),
        "counters", jcounters(&p->counters),
        "latency_ema_us", p->latency_ema_us ? ju64(p->latency_ema_us) : json_null(),
        "success_rate", json_real((double)p->success_ppm / 1e6),
        "spent_usd", jusd(p->spent_microusd),
        "budget_usd", p->budget_microusd ? jusd(p->budget_microusd) : json_null(),
        "budget_hard", p->budget_microusd ? json_boolean(p->budget_hard) : json_null());
    if (j && (budget_json(j, p->budget_microusd, &v->pb, v->pb_tz) < 0 ||
              json_object_set_new(j, "windows", jwindows(p->windows, p->keys_limited)) < 0)) {
        json_decref(j);
        j = NULL;
    }
    json_t *models = json_array(), *keys = json_array();
    for (uint32_t m = 0; j && models && m < p->n_models; m++)
        if (model_wanted(o, &v->models[m]))
            json_array_append_new(
                models, json_pack("{s:o, s:o, s:o}", "name", jstr(v->models[m].name),
                                  "counters", model_counters(&v->models[m]),
                                  "windows", jwindows(v->models[m].windows,
                                                      v->models[m].keys_limited)));
    for (uint32_t i = 0; j && keys && i < v->n_keys; i++)
        if (key_wanted(o, &v->keys[i]))
            json_array_append_new(
                keys, key_json(&v->keys[i], &v->kb[i], v->kb_tz[i],
                               v->key_models ? &v->key_models[(size_t)i * p->n_models] : NULL,
                               p->n_models, o));
    if (!j || !models || !keys || json_object_set_new(j, "models", models) < 0 ||
        json_object_set_new(j, "keys", keys) < 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static int stats_json(km_env *env, const char *name, const seg_stats *s, const stats_opts *o)
{
    json_t *d = jdoc("stats", name, env), *pools = json_array();
    if (!d || !pools) {
        json_decref(d);
        json_decref(pools);
        return jemit(NULL);
    }
    json_object_set_new(d, "taken_unix_ms", ju64(s->taken_unix_ms));
    for (uint32_t p = 0; p < s->n_pools; p++)
        if (pool_wanted(o, &s->pools[p]))
            json_array_append_new(pools, pool_json(&s->pools[p], o));
    json_object_set_new(d, "pools", pools);
    return jemit(d);
}

/* ---------------------------------------------------------------- table */

/* Micro-USD as dollars with 2 to 6 decimals: 100.00, 0.0025, 1.234567. */
void fmt_usd(uint64_t micro, char *b, size_t n)
{
    int len = snprintf(b, n, "%" PRIu64 ".%06" PRIu64, micro / 1000000, micro % 1000000);
    if (len < 0 || (size_t)len >= n)
        return;
    char *dot = strchr(b, '.');
    while (b + len - 1 > dot + 2 && b[len - 1] == '0')
        b[--len] = '\0';
}

static void window_row(table *t, const char *w, const char *who, const km_window_stats *x)
{
    tbl_cell(t, "%s", w);
    tbl_cell(t, "%s", who);
    tbl_cell(t, "%s", mode_name(x->mode));
    tbl_cell(t, "%" PRIu64, x->limit);
    tbl_cell(t, "%" PRIu64, x->burst);
    tbl_cell(t, "%" PRIu64, x->used);
    tbl_cell(t, "%" PRIu64, x->left);
    tbl_cell(t, "%.1f", x->burst ? 100.0 * (double)x->used / (double)x->burst : 0.0);
    tbl_cell(t, "%" PRIu64, x->full_in_ms);
}

static void window_titles(table *t, const char *who)
{
    tbl_init(t, 9);
    const char *titles[] = {"WINDOW", who, "MODE", "LIMIT", "BURST", "USED", "LEFT", "USE_%",
                            "FULL_IN_MS"};
    for (int i = 0; i < 9; i++)
        tbl_cell(t, "%s", titles[i]);
}

/* One row of counters: who, requests, outcomes, abandoned, stale, tokens. */
static void counter_row(table *t, const char *model, const char *who, const km_stats_counters *c)
{
    tbl_cell(t, "%s", model);
    tbl_cell(t, "%s", who);
    tbl_cell(t, "%" PRIu64, c->requests);
    tbl_cell(t, "%" PRIu64, c->outcomes[KM_OUT_SUCCESS]);
    tbl_cell(t, "%" PRIu64, c->outcomes[KM_OUT_RATE_LIMITED]);
    tbl_cell(t, "%" PRIu64,
             c->outcomes[KM_OUT_FAILURE] + c->outcomes[KM_OUT_AUTH] + c->outcomes[KM_OUT_QUOTA]);
    tbl_cell(t, "%" PRIu64, c->outcomes[KM_OUT_CANCELLED]);
    tbl_cell(t, "%" PRIu64, c->abandoned);
    tbl_cell(t, "%" PRIu64, c->stale_releases);
    tbl_cell(t, "%" PRIu64, c->tokens);
}

/* Requests and outcomes per model: on each key, then over the pool
 * (without --key).  Columns as the key table's. */
static int model_counter_table(const pool_view *v, const stats_opts *o)
{
    const km_pool_stats *p = &v->ps;
    table t;
    tbl_init(&t, 10);
    const char *titles[] = {"MODEL",     "KEY",       "REQUESTS", "OK",    "429",
                            "FAIL",      "CANCELLED", "ABANDONED", "STALE", "TOKENS"};
    for (int i = 0; i < 10; i++)
        tbl_cell(&t, "%s", titles[i]);
    int rows = 0;
    for (uint32_t m = 0; m < p->n_models; m++) {
        const km_model_stats *ms = &v->models[m];
        if (!model_wanted(o, ms) || !ms->counters_valid)
            continue;
        for (uint32_t i = 0; v->key_models && i < v->n_keys; i++)
            if (key_wanted(o, &v->keys[i])) {
                counter_row(&t, ms->name, v->keys[i].id,
                            &v->key_models[(size_t)i * p->n_models + m].counters);
                rows++;
            }
        if (!o->key && v->n_keys > 1) {
            char who[48];
            snprintf(who, sizeof who, "(pool, %" PRIu32 " keys)", ms->n_keys);
            counter_row(&t, ms->name, who, &ms->counters);
            rows++;
        }
    }
    int rc = rows ? tbl_print(&t, "  ") : EX_SUCCESS;
    tbl_free(&t);
    return rc;
}

static int print_pool(const pool_view *v, const stats_opts *o)
{
    const km_pool_stats *p = &v->ps;
    const km_stats_counters *c = &p->counters;
    char u1[32], u2[32];
    int rc = EX_SUCCESS;

    printf("\npool %s (%s): %" PRIu32 " key%s:", p->name, km_strategy_name(p->strategy),
           p->n_keys, p->n_keys == 1 ? "" : "s");
    for (int s = 0, first = 1; s < KM_KEY_STATE_COUNT; s++)
        if (p->keys_by_state[s]) {
            printf("%s %" PRIu32 " %s", first ? "" : ",", p->keys_by_state[s],
                   km_key_state_name(s));
            first = 0;
        }
    printf("; in flight %" PRIu32 "/%" PRIu32 "; %" PRIu32 " waiting\n", p->inflight,
           p->max_inflight, p->waiters);
    printf("  requests %" PRIu64 ", success %" PRIu64 ", 429 %" PRIu64 ", failure %" PRIu64
           ", auth %" PRIu64 ", quota %" PRIu64 ", cancelled %" PRIu64 ", abandoned %" PRIu64
           ", stale releases %" PRIu64 "\n",
           c->requests, c->outcomes[KM_OUT_SUCCESS], c->outcomes[KM_OUT_RATE_LIMITED],
           c->outcomes[KM_OUT_FAILURE], c->outcomes[KM_OUT_AUTH], c->outcomes[KM_OUT_QUOTA],
           c->outcomes[KM_OUT_CANCELLED], c->abandoned, c->stale_releases);
    printf("  tokens %" PRIu64 ", latency EMA ", c->tokens);
    if (p->latency_ema_us)
        printf("%" PRIu64 " us", p->latency_ema_us);
    else
        printf("-");
    fmt_usd(p->spent_microusd, u1, sizeof u1);
    printf(", success rate %.1f%%, spent $%s", (double)p->success_ppm / 1e4, u1);
    if (p->budget_microusd) {
        fmt_usd(p->budget_microusd, u2, sizeof u2);
        printf(" of $%s (%s)", u2, p->budget_hard ? "hard" : "soft");
        budget_tail(&v->pb, v->pb_tz, p->budget_hard, p->spent_microusd >= p->budget_microusd);
    }
    putchar('\n');

    table t;
    tbl_init(&t, 14);
    const char *titles[] = {"KEY",      "STATE",  "COOLDOWN_MS", "INFLIGHT",  "REQUESTS",
                            "OK",       "429",    "FAIL",        "CANCELLED", "ABANDONED",
                            "STALE",    "TOKENS", "LAT_EMA_US",  "OK_%"};
    for (int i = 0; i < 14; i++)
        tbl_cell(&t, "%s", titles[i]);
    int rows = 0;
    for (uint32_t i = 0; i < v->n_keys; i++) {
        const km_key_stats *k = &v->keys[i];
        if (!key_wanted(o, k))
            continue;
        rows++;
        tbl_cell(&t, "%s", k->id);
        tbl_cell(&t, "%s", km_key_state_name(k->state));
        if (k->cooldown_remaining_ms)
            tbl_cell(&t, "%" PRIu64, k->cooldown_remaining_ms);
        else
            tbl_cell(&t, "-");
        tbl_cell(&t, "%" PRIu32 "/%" PRIu32, k->inflight, k->max_inflight);
        tbl_cell(&t, "%" PRIu64, k->counters.requests);
        tbl_cell(&t, "%" PRIu64, k->counters.outcomes[KM_OUT_SUCCESS]);
        tbl_cell(&t, "%" PRIu64, k->counters.outcomes[KM_OUT_RATE_LIMITED]);
        tbl_cell(&t, "%" PRIu64, k->counters.outcomes[KM_OUT_FAILURE] +
                                     k->counters.outcomes[KM_OUT_AUTH] +
                                     k->counters.outcomes[KM_OUT_QUOTA]);
        tbl_cell(&t, "%" PRIu64, k->counters.outcomes[KM_OUT_CANCELLED]);
        tbl_cell(&t, "%" PRIu64, k->counters.abandoned);
        tbl_cell(&t, "%" PRIu64, k->counters.stale_releases);
        tbl_cell(&t, "%" PRIu64, k->counters.tokens);
        if (k->latency_ema_us)
            tbl_cell(&t, "%" PRIu64, k->latency_ema_us);
        else
            tbl_cell(&t, "-");
        tbl_cell(&t, "%.1f", (double)k->success_ppm / 1e4);
    }
    if (rows)
        rc = tbl_print(&t, "  ");
    tbl_free(&t);

    /* Spend per key, where something is priced or budgeted; the previous
     * period's where a key's budget has a period. */
    int priced = 0, periods = 0;
    for (uint32_t i = 0; i < v->n_keys; i++) {
        priced |= key_wanted(o, &v->keys[i]) &&
                  (v->keys[i].spent_microusd || v->keys[i].budget_microusd);
        periods |= key_wanted(o, &v->keys[i]) && v->keys[i].budget_microusd && v->kb[i].period;
    }
    if (rc == EX_SUCCESS && priced) {
        tbl_init(&t, periods ? 5 : 3);
        tbl_cell(&t, "KEY");
        tbl_cell(&t, "SPENT_USD");
        tbl_cell(&t, "BUDGET_USD");
        if (periods) {
            tbl_cell(&t, "PREV_USD");
            tbl_cell(&t, "RESETS");
        }
        for (uint32_t i = 0; i < v->n_keys; i++) {
            const km_key_stats *k = &v->keys[i];
            if (!key_wanted(o, k))
                continue;
            fmt_usd(k->spent_microusd, u1, sizeof u1);
            tbl_cell(&t, "%s", k->id);
            tbl_cell(&t, "%s", u1);
            if (k->budget_microusd) {
                fmt_usd(k->budget_microusd, u2, sizeof u2);
                tbl_cell(&t, "%s%s%s%s", u2, v->kb[i].period ? " per " : "",
                         v->kb[i].period ? budget_period_name(v->kb[i].period) : "",
                         k->budget_hard ? "" : " (soft)");
            } else {
                tbl_cell(&t, "-");
            }
            if (periods && k->budget_microusd && v->kb[i].period) {
                char e[112];
                fmt_usd(v->kb[i].prev_spent_microusd, u2, sizeof u2);
                fmt_period_end(v->kb[i].period_end_unix_ns, v->kb[i].tz_min, v->kb_tz[i], e,
                               sizeof e);
                tbl_cell(&t, "%s", u2);
                tbl_cell(&t, "%s", e);
            } else if (periods) {
                tbl_cell(&t, "-");
                tbl_cell(&t, "-");
            }
        }
        rc = tbl_print(&t, "  ");
        tbl_free(&t);
    }

    /* Windows: each key's, then the pool's sum (without --key). */
    window_titles(&t, "KEY");
    rows = 0;
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        for (uint32_t i = 0; i < v->n_keys; i++) {
            const km_key_stats *k = &v->keys[i];
            if (!key_wanted(o, k) || !k->windows[w].limit)
                continue;
            window_row(&t, km_window_name(w), k->id, &k->windows[w]);
            rows++;
        }
        if (!o->key && p->keys_limited[w] > 1) {
            char who[48];
            snprintf(who, sizeof who, "(pool, %" PRIu32 " keys)", p->keys_limited[w]);
            window_row(&t, km_window_name(w), who, &p->windows[w]);
            rows++;
        }
    }
    if (rc == EX_SUCCESS && rows)
        rc = tbl_print(&t, "  ");
    tbl_free(&t);

    /* Models: their counters on each key and over the pool, then their
     * windows over the pool and on each key. */
    int nm = 0;
    for (uint32_t m = 0; m < p->n_models; m++)
        nm += model_wanted(o, &v->models[m]);
    if (rc != EX_SUCCESS || !nm)
        return rc;
    printf("  models (%s limits):", p->model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global");
    for (uint32_t m = 0, first = 1; m < p->n_models; m++)
        if (model_wanted(o, &v->models[m])) {
            printf("%s %s", first ? "" : ",", v->models[m].name);
            first = 0;
        }
    putchar('\n');
    rc = model_counter_table(v, o);
    if (rc != EX_SUCCESS)
        return rc;
    tbl_init(&t, 10);
    const char *mt[] = {"MODEL", "WINDOW", "KEY", "MODE", "LIMIT", "BURST", "USED", "LEFT",
                        "USE_%", "FULL_IN_MS"};
    for (int i = 0; i < 10; i++)
        tbl_cell(&t, "%s", mt[i]);
    rows = 0;
    for (uint32_t m = 0; m < p->n_models; m++) {
        const km_model_stats *ms = &v->models[m];
        if (!model_wanted(o, ms))
            continue;
        for (int w = 0; w < KM_WIN_COUNT; w++) {
            for (uint32_t i = 0; v->key_models && i < v->n_keys; i++) {
                const km_model_stats *km = &v->key_models[(size_t)i * p->n_models + m];
                if (!key_wanted(o, &v->keys[i]) || !km->windows[w].limit)
                    continue;
                tbl_cell(&t, "%s", ms->name);
                window_row(&t, km_window_name(w), v->keys[i].id, &km->windows[w]);
                rows++;
            }
            if (!o->key && ms->keys_limited[w] > 1) {
                char who[48];
                snprintf(who, sizeof who, "(pool, %" PRIu32 " keys)", ms->keys_limited[w]);
                tbl_cell(&t, "%s", ms->name);
                window_row(&t, km_window_name(w), who, &ms->windows[w]);
                rows++;
            }
        }
    }
    if (rows)
        rc = tbl_print(&t, "  ");
    else
        printf("  (no model has limits of its own)\n");
    tbl_free(&t);
    return rc;
}

static int stats_table(const char *name, const seg_stats *s, const stats_opts *o)
{
    printf("segment %s: segment format %" PRIu32 ", %" PRIu32 " pool%s, %" PRIu32 " key%s, %" PRIu32
           " process%s attached\n",
           name, s->info.format, s->n_pools, s->n_pools == 1 ? "" : "s",
           s->info.n_keys, s->info.n_keys == 1 ? "" : "s", s->info.n_procs,
           s->info.n_procs == 1 ? "" : "es");
    for (uint32_t p = 0; p < s->n_pools; p++) {
        if (!pool_wanted(o, &s->pools[p]))
            continue;
        int rc = print_pool(&s->pools[p], o);
        if (rc != EX_SUCCESS)
            return rc;
    }
    return flush_stdout(EX_SUCCESS);
}

int cmd_stats(int argc, char **argv)
{
    stats_opts o = {0};
    const char *name;
    km_env *env;
    seg_stats s;
    int rc;

    if ((rc = parse_and_open(&stats_syntax, argc, argv, &o, &name, &env)) >= 0)
        return rc;
    if ((rc = collect(env, COLLECT_KEY_MODELS, &s)) != KM_OK) {
        rc = seg_error(name, rc);
        km_close(env);
        return rc;
    }
    if ((rc = check_filters(&o, &s)) < 0)
        rc = o.json ? stats_json(env, name, &s, &o) : stats_table(name, &s, &o);
    collect_free(&s);
    km_close(env);
    return rc;
}
