/*
 * tools/kmctl/cmd_keys.c - the commands that change one key while workers
 * run: enable, disable, add-key, remove-key, set-weight, set-limits.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kmctl.h"

const char usage_enable[] =
    "Usage: kmctl enable NAME POOL KEY_ID\n"
    "\n"
    "Put key KEY_ID of pool POOL back in service: its state becomes active\n"
    "and invalid, exhausted, cooldown and failure counts are cleared.\n"
    "Prints one line saying what changed, e.g.\n"
    "  enabled key 'b' in pool 'openai' of segment 'llm' (was disabled)\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 no such segment, pool\n"
    "or key.\n"
    "\n"
    "Example:\n"
    "  kmctl enable llm openai b\n";

const char usage_disable[] =
    "Usage: kmctl disable NAME POOL KEY_ID\n"
    "\n"
    "Take key KEY_ID of pool POOL out of service: no new lease is handed out\n"
    "on it until `kmctl enable`.  Leases already out may finish.  Prints one\n"
    "line saying what changed, e.g.\n"
    "  disabled key 'b' in pool 'openai' of segment 'llm' (was active, 2 leases out)\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 no such segment, pool\n"
    "or key.\n"
    "\n"
    "Example:\n"
    "  kmctl disable llm openai b\n";

const char usage_add_key[] =
    "Usage: kmctl add-key NAME POOL KEY_ID (--secret-env VAR | --secret-file FILE)\n"
    "                     [--weight N] [--limits JSON] [--max-inflight N]\n"
    "                     [--timeout MS]\n"
    "\n"
    "Add key KEY_ID to pool POOL of segment NAME while workers acquire and\n"
    "release.  The key is active and in the pool when the command returns.\n"
    "Windows, prices and max_inflight not given take the pool's configured\n"
    "defaults.  The secret never goes on the command line: --secret-env\n"
    "names an environment variable holding it, --secret-file a file (its\n"
    "trailing newline is dropped).  A removed key's slot is reused only after\n"
    "a grace period and once its last lease is back.  Prints one line: the\n"
    "key added, its weight, in-flight cap and limits.\n"
    "\n"
    "Options:\n"
    "  --secret-env VAR    the secret is in environment variable VAR\n"
    "  --secret-file FILE  the secret is the content of FILE\n"
    "  --weight N          weight 1..1000000 (default 1)\n"
    "  --limits JSON       the key's own limits, as in the configuration:\n"
    "                      '{\"rpm\": 500, \"tpm\": {\"limit\": 90000}}'\n"
    "  --max-inflight N    most concurrent leases on the key\n"
    "  --timeout MS        longest wait for a grace period (default 1000)\n"
    "  -h, --help          show this help\n"
    "\n"
    "Exit status: 0 added; 1 failure (id in use, no free slot, invalid\n"
    "limits, a stalled reader: the message says which); 2 usage error; 3 no\n"
    "such segment or pool.\n"
    "\n"
    "Example:\n"
    "  OPENAI_KEY_C=sk-... kmctl add-key llm openai c --secret-env OPENAI_KEY_C\n";

const char usage_remove_key[] =
    "Usage: kmctl remove-key NAME POOL KEY_ID [--timeout MS]\n"
    "\n"
    "Remove key KEY_ID from pool POOL.  No acquire that starts after the\n"
    "command returns gets the key; leases already out may finish and are\n"
    "settled as usual.  The key's slot and secret bytes are reused only\n"
    "after a grace period (every acquire that could have seen the key has\n"
    "finished) and once its last lease is back.  Prints one line: the key\n"
    "removed and how many of its leases are still out.\n"
    "\n"
    "Options:\n"
    "  --timeout MS   longest wait for a grace period (default 1000); the\n"
    "                 removal takes effect even if it times out\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 removed; 1 failure; 2 usage error; 3 no such segment,\n"
    "pool or key.\n"
    "\n"
    "Example:\n"
    "  kmctl remove-key llm openai b\n";

const char usage_set_weight[] =
    "Usage: kmctl set-weight NAME POOL KEY_ID WEIGHT [--timeout MS]\n"
    "\n"
    "Change the weight (1..1000000) of key KEY_ID, used by the weighted\n"
    "strategy.  Acquires running meanwhile use the old or the new weights.\n"
    "Prints one line: the old weight and the new.\n"
    "\n"
    "Options:\n"
    "  --timeout MS   longest wait for a grace period (default 1000)\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 changed; 1 failure (nothing changed); 2 usage error; 3\n"
    "no such segment, pool or key.\n"
    "\n"
    "Example:\n"
    "  kmctl set-weight llm openai a 3\n";

const char usage_set_limits[] =
    "Usage: kmctl set-limits NAME POOL KEY_ID JSON [--model MODEL] [--timeout MS]\n"
    "\n"
    "Change the limits of key KEY_ID.  JSON is an object of windows as in\n"
    "the configuration (rpm, rph, rpd, tpm, tph, tpd); windows it names are\n"
    "replaced, null removes a window's limit, the others are kept.  A\n"
    "window's debt carries over in units: requests or tokens already counted\n"
    "count against the new limit.  While the change is applied (one grace\n"
    "period) acquirers skip the key.  Prints one line: each window that\n"
    "changed, old -> new (\"none\": no limit).\n"
    "\n"
    "With --model, the key's own limits of MODEL, a model of its per_model\n"
    "pool: windows JSON names become the key's own for that model, null\n"
    "gives a window back to the pool's limit of the model, the others are\n"
    "kept (the key's own, or the pool's).\n"
    "\n"
    "Options:\n"
    "  --model MODEL  change the key's own limits of MODEL, not the key's\n"
    "  --timeout MS   longest wait for a grace period (default 1000)\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 changed; 1 failure (invalid limits, a pool without\n"
    "per-model limits, or a stalled reader: nothing changed); 2 usage error;\n"
    "3 no such segment, pool, key or model.\n"
    "\n"
    "Examples:\n"
    "  kmctl set-limits llm openai a '{\"rpm\": 500, \"tpm\": {\"limit\": 90000}}'\n"
    "  kmctl set-limits llm openai a '{\"rpm\": 10000}' --model gpt-4o\n";

/* ------------------------------------------------------ enable / disable */

/* Attach to segment NAME and find pool PNAME and, if kid is not NULL, its
 * key KID; -1 to go on (*env open), else an exit status (nothing open). */
int open_pool_key(const char *name, const char *pname, const char *kid, km_env **env,
                  int *pool, int *key)
{
    int rc;
    if ((rc = open_seg(name, env)) != EX_SUCCESS)
        return rc;
    *pool = km_pool_find(*env, pname);
    if (*pool < 0) {
        errline("pool '%s': %s", pname, err_text(*pool, errno));
        rc = exit_for(*pool);
        km_close(*env);
        return rc;
    }
    if (kid) {
        *key = km_key_find(*env, *pool, kid);
        if (*key < 0) {
            errline("key '%s' in pool '%s': %s", kid, pname, err_text(*key, errno));
            rc = exit_for(*key);
            km_close(*env);
            return rc;
        }
    }
    return -1;
}

const cmd_syntax enable_syntax = {usage_enable, "NAME POOL KEY_ID", NULL, 0};
const cmd_syntax disable_syntax = {usage_disable, "NAME POOL KEY_ID", NULL, 0};

static int set_state(const cmd_syntax *syn, int argc, char **argv, int state)
{
    km_env *env;
    int rc, pool, key;

    if ((rc = parse_args(syn, argc, argv, NULL)) >= 0)
        return rc;
    const char *name = argv[optind], *pname = argv[optind + 1],
               *kid = argv[optind + 2];
    if ((rc = open_pool_key(name, pname, kid, &env, &pool, &key)) >= 0)
        return rc;
    km_key_info before;
    int known = km_key_info_get(env, key, &before) == KM_OK;
    rc = km_key_set_state(env, key, state);
    if (rc != KM_OK) {
        errline("key '%s' in pool '%s': %s", kid, pname, err_text(rc, errno));
        rc = exit_for(rc);
        goto out;
    }
    printf("%s key '%s' in pool '%s' of segment '%s'", state == KM_KEY_ACTIVE ? "enabled" : "disabled",
           kid, pname, name);
    if (known) {
        printf(" (was %s", km_key_state_name(before.state));
        if (state == KM_KEY_DISABLED && before.inflight)
            printf(", %" PRIu32 " lease%s out may finish", before.inflight,
                   before.inflight == 1 ? "" : "s");
        putchar(')');
    }
    putchar('\n');
    rc = flush_stdout(EX_SUCCESS);
out:
    km_close(env);
    return rc;
}

int cmd_enable(int argc, char **argv)
{
    return set_state(&enable_syntax, argc, argv, KM_KEY_ACTIVE);
}

int cmd_disable(int argc, char **argv)
{
    return set_state(&disable_syntax, argc, argv, KM_KEY_DISABLED);
}

/* ------------------------------------------------------ reconfiguration */

/* errline for each reader holding back reclamation (after KM_EBUSY). */
static void busy_line(void *ctx, const km_reader_info *ri)
{
    (void)ctx;
    errline("held back by pid %" PRIu32 " (%s %" PRIu32 "), %" PRIu64
            " epoch%s behind, inside an acquire for %.3f s",
            ri->pid, ri->shared ? "shared row of" : "thread", ri->shared ? ri->pid : ri->tid,
            ri->epochs_behind, ri->epochs_behind == 1 ? "" : "s",
            (double)ri->inside_ns / 1e9);
}

void explain_busy(km_env *env)
{
    lagging_readers(env, busy_line, NULL);
}

typedef struct reconf_opts {
    opt_u32 timeout_ms;
    const char *secret_env, *secret_file, *limits;
    opt_u32 weight, max_inflight;
    const char *model; /* set-limits --model */
} reconf_opts;

/* Parse with reconf_opts' defaults; -1 to go on, else an exit status. */
static int reconf_parse(const cmd_syntax *syn, int argc, char **argv, reconf_opts *o)
{
    o->timeout_ms.v = 1000;
    return parse_args(syn, argc, argv, o);
}

/* After reconf_parse: attach to NAME and find POOL (and KEY_ID). */
static int reconf_attach(char **argv, reconf_opts *o, km_env **env, int *pool, int want_key,
                         int *key)
{
    int rc = open_pool_key(argv[optind], argv[optind + 1], want_key ? argv[optind + 2] : NULL,
                           env, pool, key);
    if (rc < 0)
        km_set_admin_timeout(*env, o->timeout_ms.v);
    return rc;
}

/* " rpm 60, tpm 100000 (sliding)" of a key's limits, or " no limits". */
static void limits_text(const km_limit_info lim[KM_WIN_COUNT], char *b, size_t n)
{
    size_t o = 0;
    b[0] = '\0';
    for (int w = 0; w < KM_WIN_COUNT && o < n; w++)
        if (lim[w].limit)
            o += (size_t)snprintf(b + o, n - o, "%s %s %" PRIu64 "%s", o ? "," : "",
                                  km_window_name(w), lim[w].limit,
                                  lim[w].mode == KM_MODE_SLIDING ? " (sliding)" : "");
    if (!o)
        snprintf(b, n, " no limits");
}

/* One window, as set-limits prints it: "60", "100000 (sliding)", "none". */
static void window_text(const km_limit_info *l, char *b, size_t n)
{
    if (!l->limit)
        snprintf(b, n, "none");
    else
        snprintf(b, n, "%" PRIu64 "%s", l->limit, l->mode == KM_MODE_SLIDING ? " (sliding)" : "");
}

/* Report the result of a reconfiguration call: on success the line in
 * `line` (what changed), else the error. */
static int reconf_done(km_env *env, int rc, const char *kid, const char *pname,
                       const char *detail, const char *line)
{
    if (rc >= 0) {
        if (line)
            puts(line);
        rc = flush_stdout(EX_SUCCESS);
    } else {
        errline("key '%s' in pool '%s': %s%s%s", kid, pname, err_text(rc, errno),
                detail && *detail ? ": " : "", detail ? detail : "");
        if (rc == KM_EBUSY)
            explain_busy(env);
        rc = exit_for(rc);
    }
    km_close(env);
    return rc;
}

/* Append s to b as a JSON string (quotes included). */
static int json_str(char *b, size_t n, size_t *len, const char *s)
{
    if (*len + 2 >= n)
        return -1;
    b[(*len)++] = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        int k = ch == '"' || ch == '\\' ? snprintf(esc, sizeof esc, "\\%c", ch)
                : ch < 0x20             ? snprintf(esc, sizeof esc, "\\u%04x", ch)
                                        : snprintf(esc, sizeof esc, "%c", ch);
        if (*len + (size_t)k + 2 >= n)
            return -1;
        memcpy(b + *len, esc, (size_t)k);
        *len += (size_t)k;
    }
    b[(*len)++] = '"';
    b[*len] = '\0';
    return 0;
}

static int json_raw(char *b, size_t n, size_t *len, const char *s)
{
    size_t k = strlen(s);
    if (*len + k + 1 >= n)
        return -1;
    memcpy(b + *len, s, k + 1);
    *len += k;
    return 0;
}

/* The secret in FILE, without its trailing newline, into buf. */
static int read_secret_file(const char *path, char *buf, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        errline("secret file '%s': %s", path, strerror(errno));
        return EX_FAILED;
    }
    ssize_t got = read(fd, buf, n - 1);
    int e = errno;
    close(fd);
    if (got < 0) {
        errline("secret file '%s': %s", path, strerror(e));
        return EX_FAILED;
    }
    buf[got] = '\0';
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
        buf[--got] = '\0';
    if ((size_t)got >= n - 2 || got == 0) {
        errline("secret file '%s': %s", path, got ? "longer than a secret may be" : "empty");
        explicit_bzero(buf, n);
        return EX_FAILED;
    }
    return -1;
}

static const opt_spec add_key_optv[] = {
    OPT_STR("secret-env", 'e', 1, reconf_opts, secret_env),
    OPT_STR("secret-file", 'f', 1, reconf_opts, secret_file),
    OPT_U32("weight", 'w', 1, reconf_opts, weight, 1, 1000000),
    OPT_STR("limits", 'l', 1, reconf_opts, limits),
    OPT_U32("max-inflight", 'm', 1, reconf_opts, max_inflight, 0, UINT32_MAX),
    OPT_U32("timeout", 't', 1, reconf_opts, timeout_ms, 0, 3600000),
};

/* remove-key, set-weight and set-limits take only --timeout. */
static const opt_spec timeout_optv[] = {
    OPT_U32("timeout", 't', 1, reconf_opts, timeout_ms, 0, 3600000),
};

const cmd_syntax add_key_syntax = {usage_add_key, "NAME POOL KEY_ID", add_key_optv,
                                          N_OPTS(add_key_optv)};
const cmd_syntax remove_key_syntax = {usage_remove_key, "NAME POOL KEY_ID",
                                             timeout_optv, N_OPTS(timeout_optv)};
const cmd_syntax set_weight_syntax = {usage_set_weight, "NAME POOL KEY_ID WEIGHT",
                                             timeout_optv, N_OPTS(timeout_optv)};
/* set-limits: --timeout, and --model for a key's own limits of a model. */
static const opt_spec set_limits_optv[] = {
    OPT_U32("timeout", 't', 1, reconf_opts, timeout_ms, 0, 3600000),
    OPT_STR("model", 'm', 1, reconf_opts, model),
};
const cmd_syntax set_limits_syntax = {usage_set_limits, "NAME POOL KEY_ID JSON",
                                             set_limits_optv, N_OPTS(set_limits_optv)};

int cmd_add_key(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    char secret[KM_SECRET_MAX + 8], js[8192], err[512] = "";
    size_t len = 0;

    /* Options are checked before attaching: a usage error changes nothing. */
    if ((rc = reconf_parse(&add_key_syntax, argc, argv, &o)) >= 0)
        return rc;
    if (!o.secret_env == !o.secret_file)
        return usage_error("give exactly one of --secret-env and --secret-file");
    if ((rc = reconf_attach(argv, &o, &env, &pool, 0, &key)) >= 0)
        return rc;
    const char *pname = argv[optind + 1], *kid = argv[optind + 2];
    int bad = json_raw(js, sizeof js, &len, "{\"id\":") || json_str(js, sizeof js, &len, kid);
    if (o.secret_env) {
        bad = bad || json_raw(js, sizeof js, &len, ",\"secret_env\":") ||
              json_str(js, sizeof js, &len, o.secret_env);
    } else {
        if ((rc = read_secret_file(o.secret_file, secret, sizeof secret)) >= 0) {
            km_close(env);
            return rc;
        }
        bad = bad || json_raw(js, sizeof js, &len, ",\"secret\":") ||
              json_str(js, sizeof js, &len, secret);
        explicit_bzero(secret, sizeof secret);
    }
    if (o.weight.given) {
        char w[32];
        snprintf(w, sizeof w, ",\"weight\":%" PRIu32, o.weight.v);
        bad = bad || json_raw(js, sizeof js, &len, w);
    }
    if (o.max_inflight.given) {
        char w[32];
        snprintf(w, sizeof w, ",\"max_inflight\":%" PRIu32, o.max_inflight.v);
        bad = bad || json_raw(js, sizeof js, &len, w);
    }
    if (o.limits)
        bad = bad || json_raw(js, sizeof js, &len, ",\"limits\":") ||
              json_raw(js, sizeof js, &len, o.limits);
    bad = bad || json_raw(js, sizeof js, &len, "}");
    if (bad) {
        explicit_bzero(js, sizeof js);
        km_close(env);
        return usage_error("arguments too long");
    }
    rc = km_key_add(env, pool, js, err, sizeof err);
    explicit_bzero(js, sizeof js);
    char line[1024] = "", lim[256];
    km_key_info ki;
    if (rc >= 0 && km_key_info_get(env, rc, &ki) == KM_OK) {
        limits_text(ki.limits, lim, sizeof lim);
        snprintf(line, sizeof line,
                 "added key '%s' to pool '%s' of segment '%s' (weight %" PRIu32
                 ", max_inflight %" PRIu32 ",%s)",
                 kid, pname, argv[optind], ki.weight, ki.max_inflight, lim);
    } else if (rc >= 0) {
        snprintf(line, sizeof line, "added key '%s' to pool '%s' of segment '%s'", kid, pname,
                 argv[optind]);
    }
    return reconf_done(env, rc, kid, pname, err, line);
}

int cmd_remove_key(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    if ((rc = reconf_parse(&remove_key_syntax, argc, argv, &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    km_key_info ki;
    int known = km_key_info_get(env, key, &ki) == KM_OK;
    char line[512];
    snprintf(line, sizeof line, "removed key '%s' from pool '%s' of segment '%s'",
             argv[optind + 2], argv[optind + 1], argv[optind]);
    if (known && ki.inflight) {
        size_t n = strlen(line);
        snprintf(line + n, sizeof line - n, " (%" PRIu32 " lease%s out may finish)", ki.inflight,
                 ki.inflight == 1 ? "" : "s");
    }
    return reconf_done(env, km_key_remove(env, key), argv[optind + 2],
                       argv[optind + 1], NULL, line);
}

int cmd_set_weight(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    uint32_t w;
    if ((rc = reconf_parse(&set_weight_syntax, argc, argv, &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    if ((rc = parse_u32("WEIGHT", argv[optind + 3], 1, 1000000, &w)) >= 0) {
        km_close(env);
        return rc;
    }
    km_key_info ki;
    char line[512];
    if (km_key_info_get(env, key, &ki) == KM_OK)
        snprintf(line, sizeof line,
                 "key '%s' in pool '%s' of segment '%s': weight %" PRIu32 " -> %" PRIu32,
                 argv[optind + 2], argv[optind + 1], argv[optind], ki.weight, w);
    else
        snprintf(line, sizeof line, "key '%s' in pool '%s' of segment '%s': weight %" PRIu32,
                 argv[optind + 2], argv[optind + 1], argv[optind], w);
    return reconf_done(env, km_key_set_weight(env, key, w), argv[optind + 2],
                       argv[optind + 1], NULL, line);
}

/* The windows that differ between two limit sets, "rpm 60 -> 500, ..."
 * (the burst only where one is not the default), appended at line + n;
 * returns the new length, *changed set if any differ. */
static size_t limits_diff(const km_limit_info *before, const km_limit_info *after, char *line,
                          size_t size, size_t n, int *changed)
{
    for (int w = 0; w < KM_WIN_COUNT && n < size; w++) {
        const km_limit_info *a = &before[w], *b = &after[w];
        if (a->limit == b->limit && a->burst == b->burst && a->mode == b->mode)
            continue;
        char t1[48], t2[48];
        window_text(a, t1, sizeof t1);
        window_text(b, t2, sizeof t2);
        n += (size_t)snprintf(line + n, size - n, "%s%s %s -> %s", *changed ? ", " : "",
                              km_window_name(w), t1, t2);
        /* The burst only where one is not the default (= limit for a
         * token bucket), else it is noise: "rpm 60 -> 500". */
        if (a->limit && b->limit && a->burst != b->burst && n < size &&
            (a->burst != a->limit || b->burst != b->limit))
            n += (size_t)snprintf(line + n, size - n, " (burst %" PRIu64 " -> %" PRIu64 ")",
                                  a->burst, b->burst);
        *changed = 1;
    }
    return n;
}

/* set-limits --model: the key's own limits of one model of its pool. */
static int set_model_limits(km_env *env, int pool, int key, const char *model, char **argv)
{
    char err[512] = "", line[1024];
    km_limit_info before[KM_WIN_COUNT], after[KM_WIN_COUNT];
    int mi = 0, known = 0;
    for (;; mi++) { /* the model's index, and its limits on the key now */
        char name[KM_ID_MAX + 1];
        if (km_model_info_get(env, pool, mi, key, name, before) != KM_OK)
            break;
        if (strcmp(name, model) == 0) {
            known = 1;
            break;
        }
    }
    int rc = km_key_set_model_limits(env, key, model, argv[optind + 3], err, sizeof err);
    size_t n = (size_t)snprintf(line, sizeof line,
                                "key '%s' in pool '%s' of segment '%s', model '%s': ",
                                argv[optind + 2], argv[optind + 1], argv[optind], model);
    uint32_t own = 0;
    if (rc == KM_OK && known && km_model_info_get(env, pool, mi, key, NULL, after) == KM_OK &&
        km_model_own_get(env, pool, mi, key, &own) == KM_OK && n < sizeof line) {
        int changed = 0;
        n = limits_diff(before, after, line, sizeof line, n, &changed);
        if (!changed && n < sizeof line) {
            char lim[256];
            limits_text(after, lim, sizeof lim);
            n += (size_t)snprintf(line + n, sizeof line - n, "limits unchanged:%s", lim);
        }
        if (!own && n < sizeof line) /* every window back to the pool's */
            snprintf(line + n, sizeof line - n, " (the pool's limits of the model)");
    } else if (n < sizeof line) {
        snprintf(line + n, sizeof line - n, "limits set");
    }
    int ex = reconf_done(env, rc, argv[optind + 2], argv[optind + 1], err, line);
    return rc == KM_ENOMODEL ? EX_NOTFOUND : ex;
}

int cmd_set_limits(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    char err[512] = "";
    if ((rc = reconf_parse(&set_limits_syntax, argc, argv, &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    if (o.model)
        return set_model_limits(env, pool, key, o.model, argv);
    km_key_info before, after;
    int known = km_key_info_get(env, key, &before) == KM_OK;
    rc = km_key_set_limits(env, key, argv[optind + 3], err, sizeof err);
    char line[1024];
    size_t n = (size_t)snprintf(line, sizeof line, "key '%s' in pool '%s' of segment '%s': ",
                                argv[optind + 2], argv[optind + 1], argv[optind]);
    if (rc == KM_OK && known && km_key_info_get(env, key, &after) == KM_OK) {
        int changed = 0;
        n = limits_diff(before.limits, after.limits, line, sizeof line, n, &changed);
        if (!changed) {
            char lim[256];
            limits_text(after.limits, lim, sizeof lim);
            snprintf(line + n, sizeof line - n, "limits unchanged:%s", lim);
        }
    } else {
        snprintf(line + n, sizeof line - n, "limits set");
    }
    return reconf_done(env, rc, argv[optind + 2], argv[optind + 1], err, line);
}
