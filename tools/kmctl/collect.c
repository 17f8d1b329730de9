/*
 * tools/kmctl/collect.c - every statistic of a segment in one pass, for
 * stats, metrics, serve and top (km_*_stats_get over every pool, model,
 * key and, if asked, key x model).
 *
 * The library's readers run concurrently with workers: a key added while
 * this walks may be missed and a key removed meanwhile is skipped (its
 * reader says KM_ENOKEY).  Nothing is written to the segment.
 */
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

void collect_free(seg_stats *s)
{
    for (uint32_t p = 0; s->pools && p < s->n_pools; p++) {
        free(s->pools[p].models);
        free(s->pools[p].keys);
        free(s->pools[p].kb);
        free(s->pools[p].kb_tz);
        free(s->pools[p].key_models);
    }
    free(s->pools);
    memset(s, 0, sizeof *s);
}

static int collect_pool(km_env *env, int p, unsigned flags, pool_view *v)
{
    int rc = km_pool_stats_get(env, p, &v->ps, sizeof v->ps);
    if (rc != KM_OK)
        return rc;
    uint32_t nm = v->ps.n_models;
    if (nm && !(v->models = calloc(nm, sizeof *v->models)))
        return KM_ENOMEM;
    for (uint32_t m = 0; m < nm; m++)
        if ((rc = km_model_stats_get(env, p, m, &v->models[m], sizeof v->models[m])) != KM_OK)
            return rc;
    /* The list may grow while it is read: size it from the pool's count
     * now and stop at either end. */
    km_pool_info pi;
    if ((rc = km_pool_info_get(env, p, &pi)) != KM_OK)
        return rc;
    v->pb = pi.budget;
    km_budget_tz(env, p, -1, v->pb_tz, sizeof v->pb_tz);
    uint32_t cap = pi.n_keys > v->ps.n_keys ? pi.n_keys : v->ps.n_keys;
    if (cap && (!(v->keys = calloc(cap, sizeof *v->keys)) || !(v->kb = calloc(cap, sizeof *v->kb)) ||
                !(v->kb_tz = calloc(cap, sizeof *v->kb_tz))))
        return KM_ENOMEM;
    if (cap && nm && (flags & COLLECT_KEY_MODELS) &&
        !(v->key_models = calloc((size_t)cap * nm, sizeof *v->key_models)))
        return KM_ENOMEM;
    for (uint32_t i = 0; i < cap; i++) {
        int k = km_pool_key(env, p, i);
        if (k == KM_ENOKEY)
            break;
        if (k < 0)
            return k;
        rc = km_key_stats_get(env, k, &v->keys[v->n_keys], sizeof v->keys[0]);
        if (rc == KM_ENOKEY)
            continue;
        if (rc != KM_OK)
            return rc;
        km_key_info ki;
        if (km_key_info_get(env, k, &ki) == KM_OK)
            v->kb[v->n_keys] = ki.budget;
        km_budget_tz(env, p, k, v->kb_tz[v->n_keys], sizeof v->kb_tz[0]);
        for (uint32_t m = 0; v->key_models && m < nm; m++) {
            km_model_stats *km = &v->key_models[(size_t)v->n_keys * nm + m];
            rc = km_key_model_stats_get(env, k, m, km, sizeof *km);
            if (rc != KM_OK && rc != KM_ENOKEY)
                return rc;
        }
        v->n_keys++;
    }
    return KM_OK;
}

int collect(km_env *env, unsigned flags, seg_stats *s)
{
    memset(s, 0, sizeof *s);
    int rc = km_info_get(env, &s->info);
    if (rc != KM_OK)
        return rc;
    s->taken_unix_ms = unix_ms_now();
    s->pools = calloc(s->info.n_pools ? s->info.n_pools : 1, sizeof *s->pools);
    if (!s->pools)
        return KM_ENOMEM;
    /* Pools removed live (km_pool_remove) leave their index unused: skipped,
     * so s->pools holds the pools there are, in index order. */
    for (uint32_t p = 0; p < s->info.n_pools; p++) {
        pool_view *v = &s->pools[s->n_pools++];
        if ((rc = collect_pool(env, (int)p, flags, v)) == KM_ENOPOOL) {
            free(v->models);
            free(v->keys);
            free(v->kb);
            free(v->kb_tz);
            free(v->key_models);
            memset(v, 0, sizeof *v);
            s->n_pools--;
            continue;
        }
        if (rc != KM_OK) {
            collect_free(s);
            return rc;
        }
    }
    return KM_OK;
}
