/*
 * tools/kmctl/json.c - the one shape of kmctl's JSON documents.
 *
 * Every document kmctl prints with --json is one JSON object that begins
 *
 *   {"json_schema": 1, "kind": "<command>", "segment": "<NAME>",
 *    "segment_format": 3, ...}
 *
 * json_schema is the version of kmctl's JSON shapes (this file's
 * KMCTL_JSON_SCHEMA; fields are only added within a version, readers
 * ignore fields they do not know); segment_format is the segment's own
 * format (km_info.format), present where a segment was read.  The snapshot
 * (kmctl snapshot, a file for kmctl restore) is the library's document and
 * keeps its own "format"; kmctl inspect --json calls that number
 * "snapshot_format".  Units are in the field names, one per quantity:
 * durations of latency in _us, other durations in _ms, times as _unix_ms,
 * money as _usd (JSON reals), sizes as _bytes; a quantity that has no
 * value yet is null.  docs/kmctl.md, "JSON output", is the reference.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kmctl.h"

json_t *ju64(uint64_t v)
{
    /* json_integer is signed 64-bit: clamp, never wrap to a negative. */
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

json_t *jusd(uint64_t micro)
{
    return json_real((double)micro / 1e6);
}

json_t *jstr(const char *s)
{
    /* Ids are UTF-8 checked at creation; a damaged row must not make the
     * document fail: fall back to a marker. */
    json_t *j = json_string(s);
    return j ? j : json_string("<invalid utf-8>");
}

uint64_t unix_ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

json_t *jdoc(const char *kind, const char *segment, km_env *env)
{
    json_t *d = json_object();
    if (!d)
        return NULL;
    json_object_set_new(d, "json_schema", json_integer(KMCTL_JSON_SCHEMA));
    json_object_set_new(d, "kind", json_string(kind));
    if (segment)
        json_object_set_new(d, "segment", jstr(segment));
    if (env) {
        km_info info;
        if (km_info_get(env, &info) == KM_OK)
            json_object_set_new(d, "segment_format", json_integer(info.format));
    }
    return d;
}

int jemit(json_t *doc)
{
    if (!doc) {
        errline("out of memory");
        return EX_FAILED;
    }
    /* 15 significant digits: money in micro-dollars prints exactly. */
    char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(doc);
    if (!s) {
        errline("out of memory");
        return EX_FAILED;
    }
    puts(s);
    free(s);
    return flush_stdout(EX_SUCCESS);
}

json_t *jcounters(const km_stats_counters *c)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "requests", ju64(c->requests),
                     "success", ju64(c->outcomes[KM_OUT_SUCCESS]),
                     "rate_limited", ju64(c->outcomes[KM_OUT_RATE_LIMITED]),
                     "failure", ju64(c->outcomes[KM_OUT_FAILURE]),
                     "auth", ju64(c->outcomes[KM_OUT_AUTH]),
                     "quota", ju64(c->outcomes[KM_OUT_QUOTA]),
                     "cancelled", ju64(c->outcomes[KM_OUT_CANCELLED]),
                     "abandoned", ju64(c->abandoned),
                     "stale_releases", ju64(c->stale_releases),
                     "tokens", ju64(c->tokens));
}

const char *mode_name(int mode)
{
    return mode == KM_MODE_SLIDING ? "sliding" : mode == KM_MODE_TOKEN_BUCKET ? "token_bucket"
                                                                              : "mixed";
}

json_t *jwindows(const km_window_stats w[KM_WIN_COUNT], const uint32_t *keys_limited)
{
    json_t *o = json_object();
    for (int i = 0; o && i < KM_WIN_COUNT; i++) {
        if (!w[i].limit)
            continue;
        json_t *x = json_pack("{s:o, s:o, s:s, s:o, s:o, s:o, s:o}",
                              "limit", ju64(w[i].limit),
                              "burst", ju64(w[i].burst),
                              "mode", mode_name(w[i].mode),
                              "period_s", ju64(w[i].period_s),
                              "used", ju64(w[i].used),
                              "left", ju64(w[i].left),
                              "full_in_ms", ju64(w[i].full_in_ms));
        if (x && keys_limited)
            json_object_set_new(x, "keys", ju64(keys_limited[i]));
        if (!x || json_object_set_new(o, km_window_name(i), x) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}
