/*
 * src/config_int.h - what the configuration parser's files share.  Internal;
 * not installed; included only by src/config*.c.
 *
 *   config.c       context and getters, the top level (capacity, pools
 *                  array, syntax errors), km_config_parse/_file/_free and
 *                  the reconfiguration entry points km__config_parse_key
 *                  and km__config_parse_limits
 *   config_pool.c  limits, strategies and money, models, metadata, secrets,
 *                  keys and pools
 *   config_env.c   km_config_from_env: the environment turned into the JSON
 *                  tree a file would hold, then parsed by the same rules
 *   config_preset.c provider presets: the built-in (or KEYMESH_PRESETS)
 *                  data, checked, merged into a pool naming one, and
 *                  km_presets_json
 *
 * Naming: static functions have no prefix; what crosses these files is
 * km__cfg_*; what the rest of the library calls is in src/internal.h.
 */
#ifndef KM_CONFIG_INT_H
#define KM_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"

#define KM__META_NAME_MAX 32     /* bytes of a metadata name */
#define KM__PRICE_MAX_USD 1e6    /* per 1000 tokens */
#define KM__BUDGET_MAX_USD 1e9   /* 1e15 micro-USD: far from 2^63 */

/* Parsing context: where messages go and what to call the source. */
typedef struct km__cfg_ctx {
    const char *origin;
    char *errbuf;
    size_t errlen;
    uint32_t cap_inflight; /* known before any key is parsed */
    json_t *presets;       /* loaded by the first pool naming a preset; the
                            * entry point that made the context frees it */
} km__cfg_ctx;

/* ------------------------------------------------ config.c: the getters */

/* Write "<origin>: <message>" (one line) into the caller's buffer; return
 * `code`. */
int km__cfg_err(km__cfg_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Refuse any member of `obj` not in the NULL-terminated list `allowed`. */
int km__cfg_check_fields(km__cfg_ctx *c, json_t *obj, const char *path,
                         const char *const *allowed);
/* An integer member in [min, max]; absent leaves *out unchanged. */
int km__cfg_get_u32(km__cfg_ctx *c, json_t *obj, const char *path,
                    const char *field, uint32_t min, uint32_t max,
                    uint32_t *out);
/* A string member of 1..maxlen bytes; *out is NULL when it is absent. */
int km__cfg_get_str(km__cfg_ctx *c, json_t *obj, const char *path,
                    const char *field, size_t maxlen, const char **out,
                    size_t *len);
/* strict: pool names, [A-Za-z0-9_.-]; else key ids and secrets, printable
 * ASCII without space. */
int km__cfg_name_ok(const char *s, int strict);
/* The whole tree (file or environment) into *cfg, which the caller frees
 * with km__cfg_destroy() on failure too. */
int km__cfg_parse_root(km__cfg_ctx *c, json_t *root, km_config *cfg);
/* Free a configuration, wiping every key slot (secrets). */
void km__cfg_destroy(km_config *cfg);
/* jansson's syntax message without the token near the error unless it is
 * a punctuation character (a token may be, or hold, a secret). */
void km__cfg_syntax_text(const json_error_t *e, char *out, size_t outlen);

/* ------------------------------------------------------- config_pool.c */

/* KM_WIN_* of a window name ("rpm"), or -1. */
int km__cfg_window_of(const char *name);
/* Refuse any member of `obj` that is not a window name. */
int km__cfg_check_windows(km__cfg_ctx *c, json_t *obj, const char *path);
/* One limit (integer or {"limit", "mode", "burst"}) of window w at `path`;
 * its burst resolved. */
int km__cfg_parse_limit(km__cfg_ctx *c, json_t *v, const char *path, int w,
                        km__limit_cfg *out);
/* Model names: [A-Za-z0-9_.:/-], 1..KM_ID_MAX bytes checked by the caller. */
int km__cfg_model_name_ok(const char *s);
/* KM_STRATEGY_* of a configuration name, or -1 ("default" is not one). */
int km__cfg_strategy_of(const char *s);
/* "\"round_robin\", ... or \"fill_first\"": the names a pool may give, for
 * messages.  Returns buf. */
const char *km__cfg_strategy_list(char *buf, size_t len);
/* Printable ASCII, spaces allowed, no NUL inside. */
int km__cfg_meta_value_ok(const char *s, size_t len);
/* A checked metadata object as compact sorted JSON ("" if empty).
 * KM_ECONFIG (*len set) if longer than KM_META_MAX; KM_ENOMEM. */
int km__cfg_meta_dump(json_t *m, char out[KM_META_MAX + 1], size_t *len);
/* One key object at `path` against its pool's defaults. */
int km__cfg_parse_key(km__cfg_ctx *c, json_t *kobj, const char *path,
                      const km__pool_defaults *pd, km__key_cfg *k);
/* Pool object pi into *p, its keys into keys[0 .. p->n_keys) (n_keys and
 * first_key set by the caller, which checked the keys array's shape). */
int km__cfg_parse_pool(km__cfg_ctx *c, json_t *pobj, uint32_t pi,
                       km__pool_cfg *p, km__key_cfg *keys);
/* No API key listed twice in the whole configuration (see
 * km__config_secret_dup); the message names both keys, never the secret. */
int km__cfg_check_secrets(km__cfg_ctx *c, const km_config *cfg);
/* No more distinct named time zones than a segment keeps (KM__TZ_ZONES). */
int km__cfg_check_zones(km__cfg_ctx *c, const km_config *cfg);

/* ------------------------------------------------------ config_preset.c */

/* Pool pi's object merged with the preset it names ("preset", "tier"):
 * *merged is a new object to parse instead (preset and tier removed), or
 * NULL when the pool names no preset.  The presets are loaded once per
 * context (c->presets). */
int km__cfg_preset_apply(km__cfg_ctx *c, size_t pi, json_t *pobj,
                         json_t **merged);

#endif /* KM_CONFIG_INT_H */
