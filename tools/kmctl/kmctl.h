/*
 * tools/kmctl/kmctl.h - what the files of kmctl share.
 *
 * kmctl is built only on the public header: everything it shows or changes
 * goes through the same API a worker uses.  Output a script can rely on:
 *
 *   - errors are one line on stderr, "kmctl: <command>: <message>";
 *   - exit status 0 success, 1 the operation failed, 2 usage error,
 *     3 no such segment, pool or key;
 *   - secrets are never printed (inspect and snapshot show masked secrets).
 *
 * main.c holds the messages, the one option parser and the command table;
 * each cmd_*.c a group of commands, each command with its --help text.
 * Only cmd_usage.c (persist, usage) includes sqlite3.h.
 *
 * See docs/kmctl.md and `kmctl --help`.
 */
#ifndef KMCTL_H
#define KMCTL_H

#include <stddef.h>
#include <stdint.h>

#include <sys/stat.h>

#include <jansson.h>

#include "keymesh.h"

enum {
    EX_SUCCESS = 0, /* the command did what was asked */
    EX_FAILED = 1,  /* the operation failed (message on stderr) */
    EX_USAGE = 2,   /* bad command line */
    EX_NOTFOUND = 3 /* no such segment, pool or key */
};

/* ------------------------------------------------------ messages (main.c) */

/* "kmctl: <command>: <message>" on stderr. */
void errline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The same line, then "Try 'kmctl <command> --help'."; returns EX_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Text of a KeyMesh error; errno's text when it is KM_ESYS. */
const char *err_text(int err, int saved_errno);

/* EX_NOTFOUND for a missing segment, pool or key; else EX_FAILED. */
int exit_for(int err);

/* Report a failed call on segment `name`; return the exit status. */
int seg_error(const char *name, int err);

/* Attach to segment `name` without reaping (see main.c); an exit status. */
int open_seg(const char *name, km_env **env);
/* The same with km_open_flags flags (KM_OPEN_NO_REAP is always added):
 * KM_OPEN_READONLY for commands that only look, KM_OPEN_NO_SLOT for those
 * that repair (neither needs a process slot, so a full table does not stop
 * them). */
int open_seg_as(const char *name, unsigned flags, km_env **env);

/* Flush standard output; on a write error report it and return EX_FAILED,
 * else return rc. */
int flush_stdout(int rc);

/* -------------------------------------------- argument parsing (main.c) */

/* A number option that may be absent: `given` says whether it was set. */
typedef struct opt_u32 {
    uint32_t v;
    int given;
} opt_u32;

enum opt_kind {
    OPT_KIND_FLAG, /* no argument; sets an int to 1 */
    OPT_KIND_STR,  /* stores the argument (a const char *) */
    OPT_KIND_U32,  /* parses an integer in [lo, hi] into an opt_u32 */
    OPT_KIND_MODE  /* parses octal permission bits into an unsigned */
};

/* One option of a command: its long name, the value getopt_long returns for
 * it (also accepted as -LETTER when `is_short`), and where its setter stores
 * it in the command's options struct.  --help and -h are implied. */
typedef struct opt_spec {
    const char *name;
    int letter;
    unsigned char is_short;
    unsigned char kind;
    size_t off;
    uint32_t lo, hi;
} opt_spec;

/* offsetof(type, field), refused at compile time unless field is a ctype. */
#define OPT_OFF_(type, field, ctype) \
    (offsetof(type, field) + 0 * _Generic(((type *)0)->field, ctype: 1))

#define OPT_FLAG(name, letter, is_short, type, field) \
    {name, letter, is_short, OPT_KIND_FLAG, OPT_OFF_(type, field, int), 0, 0}
#define OPT_STR(name, letter, is_short, type, field) \
    {name, letter, is_short, OPT_KIND_STR, OPT_OFF_(type, field, const char *), 0, 0}
#define OPT_U32(name, letter, is_short, type, field, lo, hi) \
    {name, letter, is_short, OPT_KIND_U32, OPT_OFF_(type, field, opt_u32), lo, hi}
#define OPT_MODE(name, letter, is_short, type, field) \
    {name, letter, is_short, OPT_KIND_MODE, OPT_OFF_(type, field, unsigned), 0, 0}

#define N_OPTS(a) (sizeof(a) / sizeof((a)[0]))

/* The options of a command whose one option is a flag (--json, --quiet). */
typedef struct flag_opts {
    int on;
} flag_opts;

/* A command's command line: its --help text, its operands (one word each,
 * e.g. "NAME POOL KEY_ID"; the words name them in "missing ..." errors; a
 * word in brackets, "[PROVIDER]", may be left out, and only the last ones
 * may be) and its options. */
typedef struct cmd_syntax {
    const char *help;
    const char *operands;
    const opt_spec *opts;
    size_t n_opts;
} cmd_syntax;

/* Parse argv (argv[0] is the command) by `syn`: options, before or after
 * the operands, into the struct at `opts`, then the operands (all of
 * them but those in brackets, which may be left out).
 * Returns -1 to go on (operands from argv[optind]), or an exit status: help
 * shown, or a usage error reported. */
int parse_args(const cmd_syntax *syn, int argc, char **argv, void *opts);

/* parse_args, then attach read-only to the one operand NAME (inspect, ps,
 * check, stats, metrics).  Returns -1 with *name and *env set, or an exit
 * status. */
int parse_and_open(const cmd_syntax *syn, int argc, char **argv, void *opts,
                   const char **name, km_env **env);

/* Parse "N" in [lo, hi] into *out; -1 to go on, else a usage error naming
 * `what`. */
int parse_u32(const char *what, const char *arg, uint32_t lo, uint32_t hi,
              uint32_t *out);

/* ------------------------------------------ permissions (cmd_create.c) */

/* Give segment `name` to group `group` (by name or number); exit status. */
int seg_chgrp(const char *name, const char *group);

/* After KM_EACCES: say what the segment allows and what this process is. */
void explain_access(const char *name);

/* After KM_ENOTREADY or KM_ENOTKM: if `name` is another program's object
 * (an empty one, or one without KeyMesh's header), say what it is and how
 * to remove it, in place of the error line; 1 if said, else 0. */
int explain_object(const char *name);

/* -1 if --mode `mode` may be given to a segment (a world-writable one only
 * with `force`), else the usage error's exit status, the reason printed. */
int mode_refused(unsigned mode, int force);

/* What create or restore (kind) made: one line, or with json a document;
 * `from` the snapshot file of a restore (NULL for create).  Exit status. */
int created(km_env *env, const char *kind, const char *name, const km_info *info, unsigned mode,
            const char *from, int json);

/* ---------------------------------------------- snapshots (cmd_snapshot.c) */

typedef struct snap_opts {
    const char *out, *key_file, *key_env, *group;
    int secrets;
    unsigned mode;
    int json;  /* restore --json */
    int force; /* restore --force: a world-writable --mode */
} snap_opts;

/* The snapshot key from o->key_file or o->key_env into key[]; -1 to go on,
 * else an exit status. */
int load_key(const snap_opts *o, unsigned char key[KM_SNAPSHOT_KEY_BYTES]);

/* Write a snapshot (secrets encrypted under `key` if it is not NULL) to
 * o->out, replaced atomically, or to standard output; an exit status. */
int emit_snapshot(km_env *env, const char *name, const snap_opts *o,
                  const unsigned char *key);

/* ------------------------------------------------ readers (cmd_inspect.c) */

/* Call fn for every live reader inside an acquire that began before the
 * current epoch (those hold back reclamation).  Returns how many, or a
 * KeyMesh error. */
int lagging_readers(km_env *env, void (*fn)(void *ctx, const km_reader_info *ri),
                    void *ctx);

/* ------------------------------------------------ JSON output (json.c) */

/* The version of kmctl's JSON shapes: every document carries it as
 * "json_schema" (docs/kmctl.md, "JSON output"). */
#define KMCTL_JSON_SCHEMA 1

/* A new document {"json_schema", "kind", "segment" (if not NULL),
 * "segment_format" (if env is not NULL)}; NULL when out of memory. */
json_t *jdoc(const char *kind, const char *segment, km_env *env);
/* Print a document (indented, keys in insertion order) and free it; an
 * exit status (EX_FAILED when doc is NULL or stdout fails). */
int jemit(json_t *doc);
json_t *ju64(uint64_t v);          /* an integer, clamped to INT64_MAX */
json_t *jusd(uint64_t micro);      /* micro-dollars as a dollar real */
json_t *jstr(const char *s);       /* a string, never NULL for bad UTF-8 */
json_t *jcounters(const km_stats_counters *c);
/* The windows that have a limit, by name ("rpm": {...}); with "keys" when
 * keys_limited is given (sums over keys). */
json_t *jwindows(const km_window_stats w[KM_WIN_COUNT], const uint32_t *keys_limited);
const char *mode_name(int mode);   /* "token_bucket", "sliding", "mixed" */
uint64_t unix_ms_now(void);

/* ------------------------------------- statistics (collect.c) */

typedef struct pool_view {
    km_pool_stats ps;
    km_budget_state pb;         /* the pool's budget period (from km_pool_info:
                                 * the stats structs do not carry it) */
    km_budget_state *kb;        /* n_keys: each key's (km_key_info) */
    char pb_tz[64];             /* the zones by name (km_budget_tz) */
    char (*kb_tz)[64];          /* n_keys */
    km_model_stats *models;     /* ps.n_models, over all keys */
    km_key_stats *keys;         /* n_keys */
    uint32_t n_keys;
    km_model_stats *key_models; /* [n_keys][ps.n_models] with COLLECT_KEY_MODELS */
} pool_view;

typedef struct seg_stats {
    km_info info;
    uint64_t taken_unix_ms;
    uint32_t n_pools;
    pool_view *pools;
} seg_stats;

#define COLLECT_KEY_MODELS 1u /* also every key x model */

/* Read every pool, model and key of the segment; a KeyMesh error code
 * (nothing to free on failure). */
int collect(km_env *env, unsigned flags, seg_stats *s);
void collect_free(seg_stats *s);

/* --------------------------- following a segment by name (watch.c) */

typedef struct seg_watch {
    const char *name;
    char path[KM_SEG_NAME_MAX + 16]; /* /dev/shm/NAME */
    km_env *env;                     /* NULL while not attached */
    dev_t dev;
    ino_t ino;
    char why[512];                   /* why not attached */
} seg_watch;

/* -1 if `name` cannot be a segment name. */
int watch_init(seg_watch *w, const char *name);
/* Attached to the segment that has the name now: 0 (*changed = 1 if it
 * attached just now, to a new segment or again), or -1 with w->why. */
int watch_attach(seg_watch *w, int *changed);
void watch_detach(seg_watch *w);

/* ------------------------------------------ text tables (table.c) */

typedef struct table {
    size_t ncols, n, cap;
    char **cells; /* row-major */
    int failed;   /* out of memory: tbl_print reports it */
} table;

void tbl_init(table *t, size_t ncols);
/* Append one cell (printf format) to the current row; rows wrap every
 * ncols cells.  The first row is the titles. */
void tbl_cell(table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print every row, each after `indent`; an exit status. */
int tbl_print(table *t, const char *indent);
void tbl_free(table *t);

/* ----------------------------- the commands and their --help texts */

int cmd_create(int argc, char **argv);         /* cmd_create.c */
int cmd_inspect(int argc, char **argv);        /* cmd_inspect.c */
int cmd_ps(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);       /* cmd_snapshot.c */
int cmd_restore(int argc, char **argv);
int cmd_keygen(int argc, char **argv);
int cmd_destroy(int argc, char **argv);
int cmd_persist(int argc, char **argv);        /* cmd_usage.c */
int cmd_usage(int argc, char **argv);
int cmd_enable(int argc, char **argv);         /* cmd_keys.c */
int cmd_disable(int argc, char **argv);
int cmd_add_key(int argc, char **argv);
int cmd_remove_key(int argc, char **argv);
int cmd_set_weight(int argc, char **argv);
int cmd_set_limits(int argc, char **argv);
int cmd_reap(int argc, char **argv);           /* cmd_repair.c */
int cmd_check(int argc, char **argv);
int cmd_stats(int argc, char **argv);          /* cmd_stats.c */
int cmd_metrics(int argc, char **argv);        /* cmd_metrics.c */
int cmd_serve(int argc, char **argv);          /* cmd_serve.c */
int cmd_top(int argc, char **argv);            /* cmd_top.c */
int cmd_ls(int argc, char **argv);             /* cmd_ls.c */
int cmd_presets(int argc, char **argv);        /* cmd_presets.c */
int cmd_reset_spend(int argc, char **argv);    /* cmd_budget.c */
int cmd_add_pool(int argc, char **argv);       /* cmd_pools.c */
int cmd_set_pool(int argc, char **argv);
int cmd_remove_pool(int argc, char **argv);
int cmd_sync(int argc, char **argv);           /* cmd_sync.c */
int cmd_fleet(int argc, char **argv);

extern const char usage_create[], usage_inspect[], usage_ps[], usage_snapshot[],
    usage_restore[], usage_keygen[], usage_destroy[], usage_persist[], usage_usage[],
    usage_enable[], usage_disable[], usage_add_key[], usage_remove_key[],
    usage_set_weight[], usage_set_limits[], usage_reap[], usage_check[], usage_stats[],
    usage_metrics[], usage_serve[], usage_top[], usage_ls[], usage_presets[],
    usage_reset_spend[], usage_add_pool[], usage_set_pool[], usage_remove_pool[], usage_sync[],
    usage_fleet[];

/* The Prometheus exposition of the segment (cmd_metrics.c) into *out
 * (malloc'd, *len bytes); a KeyMesh error code. */
int metrics_text(km_env *env, const char *segment, char **out, size_t *len);

/* Each command's command line (in its cmd_*.c), for the table in main.c,
 * `kmctl --complete` and the shell completion built on it. */
extern const cmd_syntax create_syntax, inspect_syntax, ps_syntax, snapshot_syntax,
    restore_syntax, keygen_syntax, destroy_syntax, persist_syntax, usage_syntax, enable_syntax,
    disable_syntax, add_key_syntax, remove_key_syntax, set_weight_syntax, set_limits_syntax,
    reap_syntax, check_syntax, stats_syntax, metrics_syntax, serve_syntax, top_syntax, ls_syntax,
    presets_syntax, reset_spend_syntax, add_pool_syntax, set_pool_syntax, remove_pool_syntax,
    sync_syntax, fleet_syntax;

/* Attach to segment NAME, find POOL and (kid not NULL) its key KID,
 * errline-ing what is missing (cmd_keys.c); -1 to go on with *env open,
 * else an exit status with nothing open. */
int open_pool_key(const char *name, const char *pname, const char *kid, km_env **env,
                  int *pool, int *key);
/* errline each reader holding back reclamation, after a KM_EBUSY of a
 * reconfiguration (cmd_keys.c). */
void explain_busy(km_env *env);

/* Budgets (cmd_budget.c): a period's name ("day", "week", "month",
 * "lifetime"); a period's end as "2027-01-01 00:00 +02:00" in its zone
 * ("-": none); and the one line `inspect` and `stats` print for a budget. */
const char *budget_period_name(int32_t period);
/* A period's end in its zone: tz the zone as km_budget_tz names it (NULL:
 * the fixed offset tz_min); a named zone's local time is glibc's (kmctl,
 * not the library, may set TZ). */
void fmt_period_end(uint64_t end_ns, int32_t tz_min, const char *tz, char *b, size_t n);
void fmt_budget_line(const char *lead, uint64_t budget, int hard, uint64_t spent,
                     uint64_t prev, uint64_t end_ns, int32_t period, int32_t tz_min,
                     const char *tz, uint32_t warnings);

/* Micro-USD as dollars with 2 to 6 decimals: 100.00, 0.0025 (cmd_stats.c). */
void fmt_usd(uint64_t micro, char *b, size_t n);

#endif /* KMCTL_H */
