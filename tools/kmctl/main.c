/*
 * tools/kmctl/main.c - kmctl's messages, its one option parser, and main,
 * which dispatches from the command table.  The commands live in cmd_*.c,
 * each with its --help text; `kmctl --help` is generated from the table.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

/* ------------------------------------------------------------- messages */

/* The command being run; NULL before one is found.  Errors then read
 * "kmctl: usage: ..." and point at `kmctl --help`: this is distinct from
 * the command named "usage", whose errors point at `kmctl usage --help`. */
static const char *g_cmd;

static const char *cmd_name(void)
{
    return g_cmd ? g_cmd : "usage";
}

void errline(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kmctl: %s: ", cmd_name());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kmctl: %s: ", cmd_name());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (!g_cmd)
        fprintf(stderr, "\nTry 'kmctl --help'.\n");
    else
        fprintf(stderr, "\nTry 'kmctl %s --help'.\n", g_cmd);
    return EX_USAGE;
}

const char *err_text(int err, int saved_errno)
{
    if (err == KM_ESYS && saved_errno)
        return strerror(saved_errno);
    return km_strerror(err);
}

int exit_for(int err)
{
    return err == KM_ENOENT || err == KM_ENOPOOL || err == KM_ENOKEY
               ? EX_NOTFOUND
               : EX_FAILED;
}

int seg_error(const char *name, int err)
{
    int e = errno;
    if ((err == KM_ENOTREADY || err == KM_ENOTKM) && explain_object(name))
        return exit_for(err);
    errline("segment '%s': %s", name, err_text(err, e));
    if (err == KM_EACCES)
        explain_access(name);
    return exit_for(err);
}

/* kmctl changes only what its command asks for, but km_open() first reaps
 * processes that died without detaching, which would hide them from ps,
 * check and reap, so kmctl attaches with KM_OPEN_NO_REAP. */
int open_seg(const char *name, km_env **env)
{
    return open_seg_as(name, 0, env);
}

int open_seg_as(const char *name, unsigned flags, km_env **env)
{
    int rc = km_open_flags(name, KM_OPEN_NO_REAP | flags, env);
    return rc == KM_OK ? EX_SUCCESS : seg_error(name, rc);
}

int flush_stdout(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        errline("standard output: %s", strerror(errno));
        return EX_FAILED;
    }
    return rc;
}

/* ------------------------------------------------------ argument parsing */

/* The most options one command declares (persist has 8). */
#define MAX_OPTS 12

int parse_u32(const char *what, const char *arg, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (!*arg || *end || errno || arg[0] == '-' || v < lo || v > hi)
        return usage_error("%s: '%s' is not an integer in %" PRIu32 "..%" PRIu32, what, arg, lo, hi);
    *out = (uint32_t)v;
    return -1;
}

/* Octal permission bits, e.g. 0660. */
static int parse_mode(const char *arg, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long m = strtoul(arg, &end, 8);
    if (errno || end == arg || *end || m > 07777 || arg[0] == '-')
        return usage_error("--mode: '%s' is not an octal mode (e.g. 0660)", arg);
    *out = (unsigned)m;
    return -1;
}

/* The setter of option `o`: store `arg` where it says.  -1 to go on. */
static int set_opt(const opt_spec *o, const char *arg, void *opts)
{
    void *field = (char *)opts + o->off;
    switch (o->kind) {
    case OPT_KIND_FLAG:
        *(int *)field = 1;
        return -1;
    case OPT_KIND_STR:
        *(const char **)field = arg;
        return -1;
    case OPT_KIND_U32: {
        opt_u32 *u = field;
        char what[64];
        u->given = 1;
        snprintf(what, sizeof what, "--%s", o->name);
        return parse_u32(what, arg, o->lo, o->hi, &u->v);
    }
    case OPT_KIND_MODE:
        return parse_mode(arg, field);
    default:
        return usage_error("bad option");
    }
}

/* How many operands "NAME POOL KEY_ID" or "[PROVIDER]" takes: *most
 * words, of which *least are not in brackets (optional ones come last). */
static void count_operands(const char *s, int *least, int *most)
{
    *least = *most = 0;
    while (*s) {
        s += strspn(s, " ");
        if (!*s)
            break;
        (*most)++;
        *least += *s != '[';
        s += strcspn(s, " ");
    }
}

int parse_args(const cmd_syntax *syn, int argc, char **argv, void *opts)
{
    struct option lo[MAX_OPTS + 2];
    char shortopts[2 + 2 * MAX_OPTS + 2];
    size_t ns = 0;
    int c;

    if (syn->n_opts > MAX_OPTS) {
        errline("internal error: more than %d options", MAX_OPTS);
        return EX_FAILED;
    }
    /* ':' first: a missing argument is reported as ':', not '?'. */
    shortopts[ns++] = ':';
    for (size_t i = 0; i < syn->n_opts; i++) {
        const opt_spec *o = &syn->opts[i];
        int arg = o->kind != OPT_KIND_FLAG;
        lo[i] = (struct option){o->name, arg ? required_argument : no_argument, NULL, o->letter};
        if (o->is_short) {
            shortopts[ns++] = (char)o->letter;
            if (arg)
                shortopts[ns++] = ':';
        }
    }
    lo[syn->n_opts] = (struct option){"help", no_argument, NULL, 'h'};
    lo[syn->n_opts + 1] = (struct option){NULL, 0, NULL, 0};
    shortopts[ns++] = 'h';
    shortopts[ns] = '\0';

    optind = 0; /* glibc: reinitialise, the main options were parsed before */
    opterr = 0;
    while ((c = getopt_long(argc, argv, shortopts, lo, NULL)) != -1) {
        if (c == 'h') {
            fputs(syn->help, stdout);
            return EX_SUCCESS;
        }
        if (c == '?') {
            if (optopt)
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (c == ':')
            return usage_error("option '%s' needs an argument", argv[optind - 1]);
        const opt_spec *o = NULL;
        for (size_t i = 0; i < syn->n_opts && !o; i++)
            if (syn->opts[i].letter == c)
                o = &syn->opts[i];
        int rc = o ? set_opt(o, optarg, opts) : usage_error("bad option");
        if (rc >= 0)
            return rc;
    }
    int least, most, have = argc - optind;
    count_operands(syn->operands, &least, &most);
    if (have < least)
        return usage_error("missing %s", syn->operands);
    if (have > most)
        return usage_error("too many arguments");
    return -1;
}

int parse_and_open(const cmd_syntax *syn, int argc, char **argv, void *opts,
                   const char **name, km_env **env)
{
    int rc = parse_args(syn, argc, argv, opts);
    if (rc >= 0)
        return rc;
    *name = argv[optind];
    /* They only look: no process slot, nothing written (issue 17). */
    rc = open_seg_as(*name, KM_OPEN_READONLY, env);
    return rc == EX_SUCCESS ? -1 : rc;
}

/* ----------------------------------------------------- the command table */

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const cmd_syntax *syntax; /* its --help text, operands and options */
    /* Its entries in `kmctl --help`: synopsis, summary[, synopsis, summary].
     * A synopsis's further lines are written with their indentation; each
     * line of a summary goes at column SUMMARY_COL. */
    const char *summary[4];
} command;

#define SUMMARY_COL 20

/* In the order `kmctl --help` lists them. */
static const command commands[] = {
    {"create", cmd_create, &create_syntax,
     {"create NAME --config FILE [--mode OCTAL [--force]] [--group NAME] [--json]",
      "create segment NAME from a JSON configuration\n"
      "(a world-writable --mode only with --force)",
      "create NAME --from-env PROVIDERS [--mode OCTAL [--force]] [--group NAME]\n"
      "       [--json]",
      "create segment NAME from environment variables\n"
      "(NUM_OPENAI, OPENAI_API_KEY_1, ...)"}},
    {"inspect", cmd_inspect, &inspect_syntax,
     {"inspect NAME [--json]", "show pools, keys, the fleet, processes and epochs"}},
    {"stats", cmd_stats, &stats_syntax,
     {"stats NAME [--json] [--pool P] [--key K] [--model M]",
      "per pool, key and model: use of every limit window\n"
      "now, counters, latency, spend, cooldowns"}},
    {"metrics", cmd_metrics, &metrics_syntax,
     {"metrics NAME", "print the statistics in Prometheus' text format"}},
    {"serve", cmd_serve, &serve_syntax,
     {"serve NAME [--listen ADDR:PORT]",
      "serve /metrics and /healthz over HTTP for Prometheus\n"
      "(default 127.0.0.1:9464)"}},
    {"top", cmd_top, &top_syntax,
     {"top NAME [--pool P] [--interval S]",
      "live view in the terminal: per key state, in flight,\n"
      "requests/s, tokens/s, limit use as bars, cooldown"}},
    {"ls", cmd_ls, &ls_syntax,
     {"ls [--json]",
      "list the KeyMesh segments of this host (and what else\n"
      "is in /dev/shm): size, owner, mode, processes, format"}},
    {"presets", cmd_presets, &presets_syntax,
     {"presets [PROVIDER] [--json]",
      "list the provider presets (limits per tier and model,\n"
      "where and when they were read)"}},
    {"snapshot", cmd_snapshot, &snapshot_syntax,
     {"snapshot NAME [-o FILE] [--include-secrets (--key-file F | --key-env V)]",
      "write the segment's state as JSON to stdout or FILE"}},
    {"restore", cmd_restore, &restore_syntax,
     {"restore NAME FILE (--key-file F | --key-env V) [--mode OCTAL [--force]]\n"
      "        [--group G] [--json]",
      "recreate segment NAME from a snapshot taken with secrets"}},
    {"keygen", cmd_keygen, &keygen_syntax,
     {"keygen FILE", "write a new snapshot key (mode 0600)"}},
    {"persist", cmd_persist, &persist_syntax,
     {"persist NAME --db FILE [--interval S] [--snapshot FILE [--key-file F]]",
      "drain usage events into SQLite until SIGTERM"}},
    {"usage", cmd_usage, &usage_syntax,
     {"usage NAME --db FILE [--since 1h] [--by key,model] [--json]",
      "report usage from that database"}},
    {"destroy", cmd_destroy, &destroy_syntax,
     {"destroy NAME",
      "remove segment NAME (attached processes keep it\n"
      "until they close)"}},
    {"enable", cmd_enable, &enable_syntax,
     {"enable NAME POOL KEY_ID",
      "put a key back in service (clears invalid, exhausted,\n"
      "cooldown and failure counts)"}},
    {"disable", cmd_disable, &disable_syntax,
     {"disable NAME POOL KEY_ID", "take a key out of service (leases out may finish)"}},
    {"add-key", cmd_add_key, &add_key_syntax,
     {"add-key NAME POOL KEY_ID (--secret-env VAR | --secret-file FILE)\n"
      "        [--weight N] [--limits JSON] [--max-inflight N]",
      "add a key to a pool while workers run"}},
    {"remove-key", cmd_remove_key, &remove_key_syntax,
     {"remove-key NAME POOL KEY_ID", "remove a key: no new lease from the moment it returns"}},
    {"set-weight", cmd_set_weight, &set_weight_syntax,
     {"set-weight NAME POOL KEY_ID WEIGHT", "change a key's weight (weighted strategy)"}},
    {"set-limits", cmd_set_limits, &set_limits_syntax,
     {"set-limits NAME POOL KEY_ID JSON [--model M]",
      "change a key's limits, e.g. '{\"rpm\": 500, \"tpm\": null}',\n"
      "or with --model M its own limits of model M"}},
    {"add-pool", cmd_add_pool, &add_pool_syntax,
     {"add-pool NAME --config FILE", "add a pool (one element of \"pools\") while workers run"}},
    {"set-pool", cmd_set_pool, &set_pool_syntax,
     {"set-pool NAME POOL JSON",
      "change a pool's strategy, limits, models, cooldowns,\n"
      "failure threshold or budget while workers run"}},
    {"remove-pool", cmd_remove_pool, &remove_pool_syntax,
     {"remove-pool NAME POOL [--timeout-ms MS] [--force]",
      "remove a pool once its leases are back"}},
    {"reset-spend", cmd_reset_spend, &reset_spend_syntax,
     {"reset-spend NAME POOL [KEY_ID]",
      "set a pool's or a key's spend in its budget period\n"
      "back to 0"}},
    {"ps", cmd_ps, &ps_syntax,
     {"ps NAME [--json]", "list the attached processes (pid, alive, leases)"}},
    {"reap", cmd_reap, &reap_syntax,
     {"reap NAME [--json]",
      "release what processes that died without detaching\n"
      "left behind (leases, table slots)"}},
    {"check", cmd_check, &check_syntax,
     {"check NAME [--quiet] [--json]",
      "verify the segment's invariants; status 1 if any\n"
      "is violated"}},
    {"sync", cmd_sync, &sync_syntax,
     {"sync NAME --store URL --host-id ID [--fleet NAME] [--sync-ms MS]\n"
      "        [--valid-ms MS] [--fallback-ms MS] [--policy stop|local]",
      "run the fleet agent: share the limits of NAME's fleet\n"
      "keys with other hosts through Redis, until SIGTERM"}},
    {"fleet", cmd_fleet, &fleet_syntax,
     {"fleet NAME --store URL [--fleet NAME] [--json]",
      "show the fleet ledger: hosts, demand, shares, credit"}},
};

static const char help_head[] =
    "Usage: kmctl [-h|--help] [-V|--version] COMMAND [ARGS]\n"
    "\n"
    "Administer KeyMesh shared-memory segments: pools of API keys shared by\n"
    "the worker processes of one host.\n"
    "\n"
    "Commands:\n";

static const char help_tail[] =
    "\n"
    "Options:\n"
    "  -h, --help        show this help (COMMAND --help: help on COMMAND)\n"
    "  -V, --version     show the version of kmctl and of the segment format\n"
    "  --complete [COMMAND]  the commands, or COMMAND's options and operands,\n"
    "                    one a line (for the shell completion)\n"
    "\n"
    "NAME is a POSIX shared-memory name, \"name\" or \"/name\" (on Linux the\n"
    "segment appears as /dev/shm/name).  Secrets are never printed: inspect\n"
    "and snapshot show them masked (\"sk-...abcd\").\n"
    "\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  the operation failed (invalid configuration, segment exists, ...);\n"
    "     for check: violations found\n"
    "  2  usage error\n"
    "  3  no such segment, pool or key\n"
    "\n"
    "Errors are one line on stderr: \"kmctl: COMMAND: MESSAGE\".\n"
    "\n"
    "Example:\n"
    "  export OPENAI_API_KEY_2=sk-...\n"
    "  kmctl create llm --config pool.json\n"
    "  kmctl inspect llm\n"
    "  kmctl disable llm openai b\n"
    "  kmctl snapshot llm -o /var/lib/keymesh/llm.json\n"
    "  kmctl check llm || kmctl reap llm\n"
    "  kmctl destroy llm\n";

/* One entry of the command list: the synopsis from column 2, the summary
 * at SUMMARY_COL, beside the synopsis's last line if that leaves two
 * spaces between them, else on the lines below. */
static void help_entry(const char *synopsis, const char *summary)
{
    size_t col = 0;
    for (const char *s = synopsis; *s;) {
        size_t n = strcspn(s, "\n");
        printf("%s  %.*s", col ? "\n" : "", (int)n, s);
        col = 2 + n;
        s += n + (s[n] == '\n');
    }
    if (col + 2 > SUMMARY_COL) {
        putchar('\n');
        col = 0;
    }
    for (const char *s = summary; *s; col = 0) {
        size_t n = strcspn(s, "\n");
        printf("%*s%.*s\n", (int)(SUMMARY_COL - col), "", (int)n, s);
        s += n + (s[n] == '\n');
    }
}

static void help_main(void)
{
    fputs(help_head, stdout);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        for (size_t j = 0; j < 4 && commands[i].summary[j]; j += 2)
            help_entry(commands[i].summary[j], commands[i].summary[j + 1]);
    fputs(help_tail, stdout);
}

/* kmctl --complete [COMMAND]: for the shell completion (tools/kmctl/
 * kmctl.bash), read from the table so it cannot drift.  Without COMMAND:
 * the commands, one a line.  With one: its long options, one a line, with
 * "=FILE" or "=ARG" when the option takes an argument (FILE for names that
 * say so: file, config, db, output, snapshot), then "operands: NAME ...".
 * Status 2 for an unknown command. */
static int complete(const char *cmd)
{
    size_t n = sizeof commands / sizeof commands[0];
    if (!cmd) {
        for (size_t i = 0; i < n; i++)
            puts(commands[i].name);
        return flush_stdout(EX_SUCCESS);
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(cmd, commands[i].name) != 0)
            continue;
        const cmd_syntax *syn = commands[i].syntax;
        for (size_t j = 0; j < syn->n_opts; j++) {
            const opt_spec *o = &syn->opts[j];
            int file = strstr(o->name, "file") || !strcmp(o->name, "config") ||
                       !strcmp(o->name, "db") || !strcmp(o->name, "output") ||
                       !strcmp(o->name, "snapshot");
            printf("--%s%s\n", o->name,
                   o->kind == OPT_KIND_FLAG ? "" : file ? "=FILE" : "=ARG");
        }
        printf("--help\noperands: %s\n", syn->operands);
        return flush_stdout(EX_SUCCESS);
    }
    return EX_USAGE;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
    int c;

    if (argc >= 2 && strcmp(argv[1], "--complete") == 0 && argc <= 3)
        return complete(argc == 3 ? argv[2] : NULL);
    opterr = 0;
    /* '+': stop at the command; its own options are parsed after it. */
    while ((c = getopt_long(argc, argv, "+:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'h':
            help_main();
            return EX_SUCCESS;
        case 'V':
            printf("kmctl %s (segment format %d)\n", km_version(),
                   km_format_version());
            return EX_SUCCESS;
        default:
            if (optopt)
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("no command given");

    const char *name = argv[optind];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0) {
            g_cmd = commands[i].name;
            return commands[i].run(argc - optind, argv + optind);
        }
    return usage_error("unknown command '%s'", name);
}
