/*
 * tools/kmctl.c - command-line administration of KeyMesh segments.
 *
 * Built only on the public header: everything it shows or changes goes
 * through the same API a worker uses.  Output a script can rely on:
 *
 *   - errors are one line on stderr, "kmctl: <command>: <message>";
 *   - exit status 0 success, 1 the operation failed, 2 usage error,
 *     3 no such segment, pool or key;
 *   - secrets are never printed (inspect and snapshot show masked secrets).
 *
 * See docs/kmctl.md and `kmctl --help`.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <signal.h>
#include <time.h>

#include <sqlite3.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keymesh.h"

enum {
    EX_SUCCESS = 0, /* the command did what was asked */
    EX_FAILED = 1,  /* the operation failed (message on stderr) */
    EX_USAGE = 2,   /* bad command line */
    EX_NOTFOUND = 3 /* no such segment, pool or key */
};

/* ------------------------------------------------------------ usage text */

static const char usage_main[] =
    "Usage: kmctl [-h|--help] [-V|--version] COMMAND [ARGS]\n"
    "\n"
    "Administer KeyMesh shared-memory segments: pools of API keys shared by\n"
    "the worker processes of one host.\n"
    "\n"
    "Commands:\n"
    "  create NAME --config FILE [--mode OCTAL] [--group NAME]\n"
    "                    create segment NAME from a JSON configuration\n"
    "  create NAME --from-env PROVIDERS [--mode OCTAL] [--group NAME]\n"
    "                    create segment NAME from environment variables\n"
    "                    (NUM_OPENAI, OPENAI_API_KEY_1, ...)\n"
    "  inspect NAME [--json]\n"
    "                    show pools and keys as a table (or snapshot JSON)\n"
    "  snapshot NAME [-o FILE] [--include-secrets (--key-file F | --key-env V)]\n"
    "                    write the segment's state as JSON to stdout or FILE\n"
    "  restore NAME FILE (--key-file F | --key-env V) [--mode OCTAL] [--group G]\n"
    "                    recreate segment NAME from a snapshot taken with secrets\n"
    "  keygen FILE       write a new snapshot key (mode 0600)\n"
    "  persist NAME --db FILE [--interval S] [--snapshot FILE [--key-file F]]\n"
    "                    drain usage events into SQLite until SIGTERM\n"
    "  usage NAME --db FILE [--since 1h] [--by key,model]\n"
    "                    report usage from that database\n"
    "  destroy NAME      remove segment NAME (attached processes keep it\n"
    "                    until they close)\n"
    "  enable NAME POOL KEY_ID\n"
    "                    put a key back in service (clears invalid, exhausted,\n"
    "                    cooldown and failure counts)\n"
    "  disable NAME POOL KEY_ID\n"
    "                    take a key out of service (leases out may finish)\n"
    "  add-key NAME POOL KEY_ID (--secret-env VAR | --secret-file FILE)\n"
    "          [--weight N] [--limits JSON] [--max-inflight N]\n"
    "                    add a key to a pool while workers run\n"
    "  remove-key NAME POOL KEY_ID\n"
    "                    remove a key: no new lease from the moment it returns\n"
    "  set-weight NAME POOL KEY_ID WEIGHT\n"
    "                    change a key's weight (weighted strategy)\n"
    "  set-limits NAME POOL KEY_ID JSON\n"
    "                    change a key's limits, e.g. '{\"rpm\": 500, \"tpm\": null}'\n"
    "  ps NAME [--json]  list the attached processes (pid, alive, leases)\n"
    "  reap NAME [--json]\n"
    "                    release what processes that died without detaching\n"
    "                    left behind (leases, table slots)\n"
    "  check NAME [--quiet]\n"
    "                    verify the segment's invariants; status 1 if any\n"
    "                    is violated\n"
    "\n"
    "Options:\n"
    "  -h, --help        show this help (COMMAND --help: help on COMMAND)\n"
    "  -V, --version     show the version of kmctl and of the segment format\n"
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

static const char usage_create[] =
    "Usage: kmctl create NAME --config FILE [--mode OCTAL] [--group NAME]\n"
    "       kmctl create NAME --from-env PROVIDERS [--mode OCTAL] [--group NAME]\n"
    "\n"
    "Create shared-memory segment NAME from the JSON configuration FILE\n"
    "(format: docs/config.md) and initialise every pool and key in it.\n"
    "secret_env references are read from kmctl's environment.  The segment is\n"
    "sized for the configuration's capacity and fully validated first: on\n"
    "any failure no segment is left behind.\n"
    "\n"
    "With --from-env, the configuration comes from environment variables\n"
    "instead: for each provider P of the comma-separated PROVIDERS (e.g.\n"
    "openai,anthropic) a pool named P with NUM_P keys P-1..P-N, secrets in\n"
    "P_API_KEY_1..N, limits P_RPM, P_TPM, ... (pool) and P_RPM_i (key),\n"
    "weights P_WEIGHT_i, strategy P_STRATEGY, and any other P_<PARAM>_i as\n"
    "the key's metadata (P in upper case in variable names; details in\n"
    "docs/config.md).  A missing P_API_KEY_i skips key i with a warning on\n"
    "stderr: \"kmctl: create: warning: ...\".  Values are never printed.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE          the configuration\n"
    "  -e, --from-env PROVIDERS   build it from the environment instead\n"
    "                             (exactly one of --config, --from-env)\n"
    "  -m, --mode OCTAL           permission bits of the segment (default 0600)\n"
    "  -g, --group NAME           give the segment to group NAME, so that with\n"
    "                             --mode 0660 its members' workers can attach\n"
    "  -h, --help                 show this help\n"
    "\n"
    "Exit status: 0 created; 1 invalid configuration (the message names\n"
    "FILE:LINE:COLUMN, the field or the variable), unreadable FILE, NAME\n"
    "already exists or another failure; 2 usage error.\n"
    "\n"
    "Examples:\n"
    "  kmctl create llm --config pool.json --mode 0660\n"
    "  NUM_OPENAI=2 OPENAI_API_KEY_1=sk-... OPENAI_API_KEY_2=sk-... \\\n"
    "      kmctl create llm --from-env openai\n";

static const char usage_inspect[] =
    "Usage: kmctl inspect NAME [--json]\n"
    "\n"
    "Show segment NAME: capacity, then for each pool a header line (name,\n"
    "strategy, key count, cooldown settings), its models and budget if it\n"
    "has them, and a table with one row per key:\n"
    "  ID          key id\n"
    "  SECRET      the secret, masked\n"
    "  STATE       active, cooling, probing, disabled, invalid or exhausted\n"
    "  W           weight\n"
    "  INFLIGHT    leases out / most leases allowed at once\n"
    "  RPM, TPM    available now / limit (\"-\": no limit); RPH, RPD, TPH,\n"
    "              TPD appear when a key of the pool has such a limit\n"
    "  ACQ         leases acquired\n"
    "  OK, 429     releases with success, with rate_limited\n"
    "  FAIL        releases with failure, auth or quota\n"
    "  EMA_MS      moving average of latency in ms (\"-\": no sample yet)\n"
    "  COOLDOWN_S  seconds of cooldown left (\"-\": none)\n"
    "  SPENT_USD   US dollars spent (/ budget, if the key has one); shown\n"
    "              when a key of the pool has a price or a budget\n"
    "  META        the key's metadata (JSON); shown when a key has some\n"
    "\n"
    "Then the attached processes, as `kmctl ps` lists them; kmctl itself is\n"
    "marked \"(this kmctl)\".\n"
    "\n"
    "Options:\n"
    "  -j, --json   print the snapshot JSON instead (as `kmctl snapshot`;\n"
    "               it has no process list: use `kmctl ps NAME --json`)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 shown; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl inspect llm\n";

static const char usage_snapshot[] =
    "Usage: kmctl snapshot NAME [-o FILE] [--include-secrets (--key-file FILE |\n"
    "                      --key-env VAR)]\n"
    "\n"
    "Write the state of segment NAME as JSON (format: docs/kmctl.md) to\n"
    "standard output or to FILE.  FILE is replaced atomically: the JSON is\n"
    "written to a temporary file in the same directory, synced and renamed\n"
    "over FILE, which gets mode 0600.  Secrets are masked.  With\n"
    "--include-secrets each secret is also written encrypted\n"
    "(XChaCha20-Poly1305) under a snapshot key, never in clear, so that\n"
    "`kmctl restore` can recreate the segment.\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE   write to FILE instead of standard output\n"
    "  --include-secrets   add the secrets, encrypted (needs a key)\n"
    "  --key-file FILE     the snapshot key: a file from `kmctl keygen`\n"
    "                      (64 hex digits, base64, or 32 raw bytes)\n"
    "  --key-env VAR       the snapshot key is in environment variable VAR\n"
    "  -h, --help          show this help\n"
    "\n"
    "Exit status: 0 written; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl keygen /etc/keymesh/snapshot.key\n"
    "  kmctl snapshot llm -o /var/lib/keymesh/llm.json --include-secrets \\\n"
    "        --key-file /etc/keymesh/snapshot.key\n";

static const char usage_persist[] =
    "Usage: kmctl persist NAME --db FILE [--interval SECONDS] [--once]\n"
    "                     [--snapshot FILE [--every SECONDS]\n"
    "                      [--include-secrets (--key-file F | --key-env V)]]\n"
    "\n"
    "Drain the usage events of segment NAME (one per released lease: key,\n"
    "model, tokens, outcome, latency, time) into the SQLite database FILE,\n"
    "table usage, every --interval seconds (default 1), and with --snapshot\n"
    "write a snapshot every --every seconds (default 60).  On SIGTERM or\n"
    "SIGINT it drains once more, writes a final snapshot and exits 0.\n"
    "Events overwritten before they were drained (each process slot keeps\n"
    "capacity.usage_events of them) are counted, never waited for:\n"
    "workers never block on persist.  One persist per segment at a time.\n"
    "\n"
    "Options:\n"
    "  --db FILE            the SQLite database (created if missing)\n"
    "  --interval SECONDS   drain period (default 1)\n"
    "  --once               drain once and exit\n"
    "  --snapshot FILE      also write snapshots to FILE (mode 0600, atomic)\n"
    "  --every SECONDS      snapshot period (default 60)\n"
    "  --include-secrets, --key-file F, --key-env V   as for snapshot\n"
    "  -h, --help           show this help\n"
    "\n"
    "Exit status: 0 stopped by a signal (or --once done); 1 failure; 2 usage\n"
    "error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl persist llm --db /var/lib/keymesh/usage.db --snapshot /var/lib/keymesh/llm.json\n";

static const char usage_usage[] =
    "Usage: kmctl usage NAME --db FILE [--since DURATION] [--by FIELDS]\n"
    "\n"
    "Report the usage of segment NAME recorded by `kmctl persist` in FILE:\n"
    "requests, tokens, outcomes and mean latency, grouped by FIELDS (a comma\n"
    "list of pool, key, model, outcome; default key,model) over the last\n"
    "DURATION (e.g. 90s, 15m, 1h, 7d; default 1h).\n"
    "\n"
    "Options:\n"
    "  --db FILE          the database `kmctl persist` writes\n"
    "  --since DURATION   how far back (default 1h)\n"
    "  --by FIELDS        grouping (default key,model)\n"
    "  -h, --help         show this help\n"
    "\n"
    "Exit status: 0 reported; 1 failure; 2 usage error.\n"
    "\n"
    "Example:\n"
    "  kmctl usage llm --db /var/lib/keymesh/usage.db --since 24h --by key\n";

static const char usage_restore[] =
    "Usage: kmctl restore NAME FILE (--key-file FILE | --key-env VAR)\n"
    "                     [--mode OCTAL] [--group NAME]\n"
    "\n"
    "Recreate segment NAME from FILE, a snapshot taken with\n"
    "--include-secrets: the same pools, keys, weights, limits, counters,\n"
    "limit windows and cooldowns.  Times are kept as wall-clock times in the\n"
    "file, so a cooldown or a window's debt runs out in real time, across a\n"
    "reboot.  Leases that were out are not restored.  The segment is filled\n"
    "under a temporary name and renamed into place: workers never see it\n"
    "half restored.  NAME must not exist.\n"
    "\n"
    "Options:\n"
    "  --key-file FILE     the snapshot key the secrets were encrypted with\n"
    "  --key-env VAR       ... or the environment variable holding it\n"
    "  -m, --mode OCTAL    permissions of the segment (default 0600)\n"
    "  -g, --group NAME    give the segment to group NAME (with --mode 0660)\n"
    "  -h, --help          show this help\n"
    "\n"
    "Exit status: 0 restored; 1 failure (wrong key, altered file, segment\n"
    "exists, ...); 2 usage error.\n"
    "\n"
    "Example:\n"
    "  kmctl restore llm /var/lib/keymesh/llm.json --key-file /etc/keymesh/snapshot.key\n";

static const char usage_keygen[] =
    "Usage: kmctl keygen FILE\n"
    "\n"
    "Write a new random snapshot key (32 bytes, as 64 hex digits) to FILE,\n"
    "created with mode 0600.  FILE must not exist.  Keep it apart from the\n"
    "snapshots it opens.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 written; 1 failure; 2 usage error.\n";

static const char usage_destroy[] =
    "Usage: kmctl destroy NAME\n"
    "\n"
    "Remove the name of segment NAME.  Processes still attached keep using\n"
    "it until they close; the memory is freed when the last one detaches.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 removed; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl destroy llm\n";

static const char usage_enable[] =
    "Usage: kmctl enable NAME POOL KEY_ID\n"
    "\n"
    "Put key KEY_ID of pool POOL back in service: its state becomes active\n"
    "and invalid, exhausted, cooldown and failure counts are cleared.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 no such segment, pool\n"
    "or key.\n"
    "\n"
    "Example:\n"
    "  kmctl enable llm openai b\n";

static const char usage_disable[] =
    "Usage: kmctl disable NAME POOL KEY_ID\n"
    "\n"
    "Take key KEY_ID of pool POOL out of service: no new lease is handed out\n"
    "on it until `kmctl enable`.  Leases already out may finish.\n"
    "\n"
    "Options:\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 done; 1 failure; 2 usage error; 3 no such segment, pool\n"
    "or key.\n"
    "\n"
    "Example:\n"
    "  kmctl disable llm openai b\n";

static const char usage_add_key[] =
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
    "a grace period and once its last lease is back.\n"
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

static const char usage_remove_key[] =
    "Usage: kmctl remove-key NAME POOL KEY_ID [--timeout MS]\n"
    "\n"
    "Remove key KEY_ID from pool POOL.  No acquire that starts after the\n"
    "command returns gets the key; leases already out may finish and are\n"
    "settled as usual.  The key's slot and secret bytes are reused only\n"
    "after a grace period (every acquire that could have seen the key has\n"
    "finished) and once its last lease is back.\n"
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

static const char usage_set_weight[] =
    "Usage: kmctl set-weight NAME POOL KEY_ID WEIGHT [--timeout MS]\n"
    "\n"
    "Change the weight (1..1000000) of key KEY_ID, used by the weighted\n"
    "strategy.  Acquires running meanwhile use the old or the new weights.\n"
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

static const char usage_set_limits[] =
    "Usage: kmctl set-limits NAME POOL KEY_ID JSON [--timeout MS]\n"
    "\n"
    "Change the limits of key KEY_ID.  JSON is an object of windows as in\n"
    "the configuration (rpm, rph, rpd, tpm, tph, tpd); windows it names are\n"
    "replaced, null removes a window's limit, the others are kept.  A\n"
    "window's debt carries over in units: requests or tokens already counted\n"
    "count against the new limit.  While the change is applied (one grace\n"
    "period) acquirers skip the key.\n"
    "\n"
    "Options:\n"
    "  --timeout MS   longest wait for a grace period (default 1000)\n"
    "  -h, --help     show this help\n"
    "\n"
    "Exit status: 0 changed; 1 failure (invalid limits, or a stalled reader:\n"
    "nothing changed); 2 usage error; 3 no such segment, pool or key.\n"
    "\n"
    "Example:\n"
    "  kmctl set-limits llm openai a '{\"rpm\": 500, \"tpm\": {\"limit\": 90000}}'\n";

static const char usage_ps[] =
    "Usage: kmctl ps NAME [--json]\n"
    "\n"
    "List the processes attached to segment NAME, one row per slot of its\n"
    "process table in use:\n"
    "  SLOT        slot in the process table\n"
    "  PID         process id (\"-\": still attaching)\n"
    "  ALIVE       yes, or no: it died without detaching and `kmctl reap`\n"
    "              will release what it held\n"
    "  LEASES      leases it holds now\n"
    "  ATTACHED_S  seconds since it attached\n"
    "kmctl itself is attached while it looks and is marked \"(this kmctl)\".\n"
    "\n"
    "Options:\n"
    "  -j, --json   print a JSON array instead, one object per process:\n"
    "               {\"slot\", \"pid\", \"alive\", \"leases\", \"attached_s\",\n"
    "               \"self\"} (self: true for this kmctl)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 listed; 1 failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl ps llm\n";

static const char usage_reap[] =
    "Usage: kmctl reap NAME [--json]\n"
    "\n"
    "Find the processes attached to segment NAME that died without\n"
    "detaching (killed, crashed) and release what they held: their leases\n"
    "end (counted as abandoned, tokens settled at the estimate) and their\n"
    "process table slots are freed.  Prints one line:\n"
    "  reaped N dead processes, L leases released, R keys recounted\n"
    "with \", P pending\" added when a dead process could not be finished\n"
    "now (a live process was mid-operation on one of its keys; reap again).\n"
    "Workers also reap on their own (see docs/kmctl.md); finding nothing\n"
    "dead is not an error.\n"
    "\n"
    "Options:\n"
    "  -j, --json   print the report as a JSON object instead:\n"
    "               {\"processes\", \"leases\", \"recounted\", \"pending\", \"repaired\"}\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 reaped (also when nothing was dead); 1 failure; 2 usage\n"
    "error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl reap llm\n";

static const char usage_check[] =
    "Usage: kmctl check NAME [--quiet]\n"
    "\n"
    "Verify the invariants of segment NAME: in-flight counts equal the live\n"
    "leases, no lease on a free key slot or held by no attached process,\n"
    "token reservations equal the leases that made them and stay within\n"
    "their bursts, limit words within bounds, pool members valid, and a\n"
    "consistent process table (a process that died without detaching is a\n"
    "violation until it is reaped).  Each violation is one line on stdout,\n"
    "\"violation: ...\"; then \"N violations\" on stderr.  Results are exact\n"
    "when the segment is quiet; a key whose leases keep moving is reported\n"
    "as not checked.\n"
    "\n"
    "Options:\n"
    "  -q, --quiet  print only the summary line\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 no violation; 1 violations found (or the check failed:\n"
    "an error line \"kmctl: check: ...\" says so); 2 usage error; 3 no such\n"
    "segment.\n"
    "\n"
    "Example:\n"
    "  kmctl check llm || kmctl reap llm\n";

/* ------------------------------------------------------------- messages */

static const char *g_cmd = "usage";

static void errline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "kmctl: <command>: <message>" on stderr. */
static void errline(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kmctl: %s: ", g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kmctl: %s: ", g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (strcmp(g_cmd, "usage") == 0)
        fprintf(stderr, "\nTry 'kmctl --help'.\n");
    else
        fprintf(stderr, "\nTry 'kmctl %s --help'.\n", g_cmd);
    return EX_USAGE;
}

/* Text of a KeyMesh error; errno's text when it is KM_ESYS. */
static const char *km_text(int err, int saved_errno)
{
    if (err == KM_ESYS && saved_errno)
        return strerror(saved_errno);
    return km_strerror(err);
}

static int exit_for(int err)
{
    return err == KM_ENOENT || err == KM_ENOPOOL || err == KM_ENOKEY
               ? EX_NOTFOUND
               : EX_FAILED;
}

/* Report a failed call on segment `name`; return the exit status. */
static void explain_access(const char *name);

static int seg_error(const char *name, int err)
{
    int e = errno;
    errline("segment '%s': %s", name, km_text(err, e));
    if (err == KM_EACCES)
        explain_access(name);
    return exit_for(err);
}

/* Attach to segment `name`.  kmctl changes only what its command asks for,
 * but km_open() first reaps processes that died without detaching, which
 * would hide them from ps, check and reap, so kmctl attaches with
 * KM_OPEN_NO_REAP. */
static int open_seg(const char *name, km_env **env)
{
    int rc = km_open_flags(name, KM_OPEN_NO_REAP, env);
    return rc == KM_OK ? EX_SUCCESS : seg_error(name, rc);
}

/* Flush standard output; on a write error report it and return 1. */
static int flush_stdout(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        errline("standard output: %s", strerror(errno));
        return EX_FAILED;
    }
    return rc;
}

/* ------------------------------------------------------ argument parsing */

/* Parse a command's options with getopt_long.  Options may come before or
 * after the operands.  Calls `on_opt` for each option other than -h.
 * Returns -1 to go on, or an exit status (help shown, or a usage error). */
typedef int (*opt_fn)(int c, const char *arg, void *ctx);

static int parse_opts(int argc, char **argv, const char *shortopts,
                      const struct option *longopts, const char *help,
                      opt_fn on_opt, void *ctx)
{
    int c;
    optind = 0; /* glibc: reinitialise, the main options were parsed before */
    opterr = 0;
    while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        if (c == 'h') {
            fputs(help, stdout);
            return EX_SUCCESS;
        }
        if (c == '?') {
            if (optopt)
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
        if (c == ':')
            return usage_error("option '%s' needs an argument",
                               argv[optind - 1]);
        int rc = on_opt ? on_opt(c, optarg, ctx) : usage_error("bad option");
        if (rc >= 0)
            return rc;
    }
    return -1;
}

/* Exactly `n` operands after the options. */
static int want_operands(int argc, int n, const char *what)
{
    int have = argc - optind;
    if (have < n)
        return usage_error("missing %s", what);
    if (have > n)
        return usage_error("too many arguments");
    return -1;
}

/* Option callback of commands whose one option is a flag (--json, --quiet):
 * parse_opts has already refused letters not in the command's optstring. */
static int flag_opt(int c, const char *arg, void *ctx)
{
    (void)arg;
    if (c == 'j' || c == 'q') {
        *(int *)ctx = 1;
        return -1;
    }
    return usage_error("bad option");
}

/* The prologue of the commands that take one flag and NAME (inspect, ps,
 * reap, check): parse the options into *flag, require NAME, attach.
 * Returns -1 with *name and *env set when the command goes on, else the
 * exit status to return. */
static int flag_cmd_open(int argc, char **argv, const char *shortopts,
                         const struct option *longopts, const char *help, int *flag,
                         const char **name, km_env **env)
{
    int rc;
    if ((rc = parse_opts(argc, argv, shortopts, longopts, help, flag_opt, flag)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    *name = argv[optind];
    rc = open_seg(*name, env);
    return rc == EX_SUCCESS ? -1 : rc;
}

static const struct option help_only[] = {{"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

/* ---------------------------------------------------------- permissions */

/* Give segment `name` to group `group` (by name or number). */
static int seg_chgrp(const char *name, const char *group)
{
    struct group *gr = getgrnam(group);
    char *end;
    unsigned long gid = strtoul(group, &end, 10);
    char path[KM_SEG_NAME_MAX + 16];
    if (gr)
        gid = gr->gr_gid;
    else if (!*group || *end) {
        errline("group '%s': no such group", group);
        return EX_FAILED;
    }
    snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
    if (chown(path, (uid_t)-1, (gid_t)gid) != 0) {
        errline("segment '%s': giving it to group '%s': %s", name, group, strerror(errno));
        return EX_FAILED;
    }
    return EX_SUCCESS;
}

/* After KM_EACCES: say what the segment allows and what this process is. */
static void explain_access(const char *name)
{
    char path[KM_SEG_NAME_MAX + 16];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
    if (stat(path, &st) != 0)
        return;
    struct passwd *pw = getpwuid(st.st_uid);
    struct group *gr = getgrgid(st.st_gid);
    uid_t me = geteuid();
    const char *need = st.st_uid == me ? "its owner's read and write bits"
                       : getegid() == st.st_gid || group_member(st.st_gid)
                           ? "read and write for its group (--mode 0660)"
                           : "membership of its group, or its owner's user id";
    errline("segment '%s' is mode %04o, owner %s, group %s; this process (uid %u) needs %s",
            name, (unsigned)(st.st_mode & 07777), pw ? pw->pw_name : "?", gr ? gr->gr_name : "?",
            (unsigned)me, need);
}

/* ---------------------------------------------------------------- create */

typedef struct create_opts {
    const char *config;
    const char *from_env;
    const char *group;
    unsigned mode;
} create_opts;

static int create_opt(int c, const char *arg, void *ctx)
{
    create_opts *o = ctx;
    if (c == 'c') {
        o->config = arg;
        return -1;
    }
    if (c == 'e') {
        o->from_env = arg;
        return -1;
    }
    if (c == 'g') {
        o->group = arg;
        return -1;
    }
    if (c == 'm') {
        char *end;
        errno = 0;
        unsigned long m = strtoul(arg, &end, 8);
        if (errno || end == arg || *end || m > 07777 || arg[0] == '-')
            return usage_error("--mode: '%s' is not an octal mode (e.g. 0660)",
                               arg);
        o->mode = (unsigned)m;
        return -1;
    }
    return usage_error("bad option");
}

/* km_config_from_env's warnings: names of variables, never values. */
static void create_warning(void *ctx, const char *msg)
{
    (void)ctx;
    errline("warning: %s", msg);
}

static int cmd_create(int argc, char **argv)
{
    static const struct option lo[] = {{"config", required_argument, NULL, 'c'},
                                       {"from-env", required_argument, NULL, 'e'},
                                       {"mode", required_argument, NULL, 'm'},
                                       {"group", required_argument, NULL, 'g'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    create_opts o = {NULL, NULL, NULL, 0600};
    km_config *cfg = NULL;
    km_env *env = NULL;
    km_info info;
    char err[1024];
    int rc;

    if ((rc = parse_opts(argc, argv, ":c:e:m:g:h", lo, usage_create,
                         create_opt, &o)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    if (o.config && o.from_env)
        return usage_error("give either --config or --from-env, not both");
    if (!o.config && !o.from_env)
        return usage_error("missing --config FILE or --from-env PROVIDERS");
    const char *name = argv[optind];

    if (o.config)
        rc = km_config_parse_file(o.config, &cfg, err, sizeof err);
    else
        rc = km_config_from_env(o.from_env, &cfg, create_warning, NULL, err,
                                sizeof err);
    if (rc != KM_OK) {
        /* The library's line names the file and the line:column, the field
         * or the variable. */
        errline("%s", err[0] ? err : km_strerror(rc));
        return EX_FAILED;
    }
    rc = km_create(name, cfg, o.mode, &env);
    km_config_free(cfg); /* wipes the secrets of the parsed copy */
    if (rc != KM_OK) {
        int e = errno;
        /* Not found here means a bad name (e.g. a directory in it), not a
         * missing segment: a failed create is always status 1. */
        errline("segment '%s': %s", name, km_text(rc, e));
        return EX_FAILED;
    }
    if (o.group && (rc = seg_chgrp(name, o.group)) != EX_SUCCESS) {
        km_close(env);
        km_unlink(name); /* nothing half made is left behind */
        return rc;
    }
    if (km_info_get(env, &info) == KM_OK)
        printf("created segment '%s': %" PRIu32 " pool%s, %" PRIu32
               " key%s, %" PRIu64 " bytes, mode %04o\n",
               name, info.n_pools, info.n_pools == 1 ? "" : "s", info.n_keys,
               info.n_keys == 1 ? "" : "s", info.size_bytes,
               o.mode ? o.mode : 0600);
    rc = km_close(env);
    if (rc != KM_OK)
        return seg_error(name, rc);
    return EX_SUCCESS;
}

/* --------------------------------------------------------------- inspect */

/* Display width of UTF-8 text: code points, not bytes (masks hold "…"). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

enum {
    COL_ID, COL_SECRET, COL_STATE, COL_W, COL_INFLIGHT,
    COL_RPM, COL_RPH, COL_RPD, COL_TPM, COL_TPH, COL_TPD,
    COL_ACQ, COL_OK, COL_429, COL_FAIL, COL_EMA, COL_COOL, COL_SPENT,
    COL_META, NCOLS
};

static const char *const col_title[NCOLS] = {
    "ID", "SECRET", "STATE", "W", "INFLIGHT", "RPM", "RPH", "RPD",
    "TPM", "TPH", "TPD", "ACQ", "OK", "429", "FAIL", "EMA_MS", "COOLDOWN_S",
    "SPENT_USD", "META"};

/* Micro-USD as dollars with 2 to 6 decimals: 100.00, 0.0025, 1.234567. */
static void usd(uint64_t micro, char *b, size_t n)
{
    int len = snprintf(b, n, "%" PRIu64 ".%06" PRIu64, micro / 1000000,
                       micro % 1000000);
    if (len < 0 || (size_t)len >= n)
        return;
    char *dot = strchr(b, '.');
    while (b + len - 1 > dot + 2 && b[len - 1] == '0')
        b[--len] = '\0';
}

static int col_window(int col)
{
    return col >= COL_RPM && col <= COL_TPD ? KM_WIN_RPM + (col - COL_RPM)
                                            : -1;
}

static void cell(const km_key_info *k, int col, uint64_t now, char *b,
                 size_t n)
{
    char u1[32], u2[32];
    int w = col_window(col);
    if (w >= 0) {
        const km_limit_info *l = &k->limits[w];
        if (l->limit)
            snprintf(b, n, "%" PRIu64 "/%" PRIu64, l->available, l->limit);
        else
            snprintf(b, n, "-");
        return;
    }
    switch (col) {
    case COL_ID:
        snprintf(b, n, "%s", k->id);
        break;
    case COL_SECRET:
        snprintf(b, n, "%s", k->secret_masked);
        break;
    case COL_STATE:
        snprintf(b, n, "%s", km_key_state_name(k->state));
        break;
    case COL_W:
        snprintf(b, n, "%" PRIu32, k->weight);
        break;
    case COL_INFLIGHT:
        snprintf(b, n, "%" PRIu32 "/%" PRIu32, k->inflight, k->max_inflight);
        break;
    case COL_ACQ:
        snprintf(b, n, "%" PRIu64, k->acquired);
        break;
    case COL_OK:
        snprintf(b, n, "%" PRIu64, k->outcomes[KM_OUT_SUCCESS]);
        break;
    case COL_429:
        snprintf(b, n, "%" PRIu64, k->outcomes[KM_OUT_RATE_LIMITED]);
        break;
    case COL_FAIL:
        snprintf(b, n, "%" PRIu64,
                 k->outcomes[KM_OUT_FAILURE] + k->outcomes[KM_OUT_AUTH] +
                     k->outcomes[KM_OUT_QUOTA]);
        break;
    case COL_EMA:
        if (k->latency_ema_us)
            snprintf(b, n, "%.1f", (double)k->latency_ema_us / 1000.0);
        else
            snprintf(b, n, "-");
        break;
    case COL_COOL:
        if (k->cooldown_until_ns > now)
            snprintf(b, n, "%" PRIu64,
                     (k->cooldown_until_ns - now + 999999999) / 1000000000);
        else
            snprintf(b, n, "-");
        break;
    case COL_SPENT:
        usd(k->spent_microusd, u1, sizeof u1);
        if (k->budget_microusd) {
            usd(k->budget_microusd, u2, sizeof u2);
            snprintf(b, n, "%s/%s%s", u1, u2, k->budget_hard ? "" : " (soft)");
        } else {
            snprintf(b, n, "%s", u1);
        }
        break;
    case COL_META:
        snprintf(b, n, "%s", k->meta[0] ? k->meta : "-");
        break;
    default:
        b[0] = '\0';
    }
}

static void print_cell(const char *s, size_t w, int last)
{
    fputs(s, stdout);
    if (!last)
        for (size_t i = width(s); i < w + 2; i++)
            putchar(' ');
}

static int inspect_pool(km_env *env, const char *name, int pool)
{
    km_pool_info pi;
    km_key_info *keys;
    size_t wid[NCOLS];
    int show[NCOLS], last = 0, rc;
    char b[KM_META_MAX + 64];
    uint64_t now;

    if ((rc = km_pool_info_get(env, pool, &pi)) != KM_OK)
        return seg_error(name, rc);
    printf("\npool %s: %s, %" PRIu32 " key%s, cooldown %" PRIu32
           "s (max %" PRIu32 "s), max_failures %" PRIu32,
           pi.name, km_strategy_name(pi.strategy), pi.n_keys,
           pi.n_keys == 1 ? "" : "s", pi.cooldown_s, pi.max_cooldown_s,
           pi.max_failures);
    if (pi.waiters)
        printf(", %" PRIu32 " waiting", pi.waiters);
    putchar('\n');
    if (pi.n_keys == 0)
        return EX_SUCCESS;
    if (pi.n_models || pi.model_mode == KM_MODELS_PER_MODEL) {
        int first = km_pool_key(env, pool, 0);
        printf("  models (%s limits):",
               pi.model_mode == KM_MODELS_PER_MODEL ? "per_model" : "global");
        for (uint32_t i = 0; first >= 0 && i < pi.n_models; i++) {
            char mname[KM_ID_MAX + 1];
            km_limit_info lim[KM_WIN_COUNT];
            if (km_model_info_get(env, pool, i, (uint32_t)first, mname, lim))
                break;
            printf("%s %s", i ? "," : "", mname);
            /* Per-model limits are the same on every key: show them once. */
            int any = 0;
            for (int w = 0; w < KM_WIN_COUNT; w++)
                if (lim[w].limit) {
                    printf("%s%s %" PRIu64, any ? ", " : " (", km_window_name(w),
                           lim[w].limit);
                    any = 1;
                }
            if (any)
                putchar(')');
        }
        putchar('\n');
    }
    if (pi.budget_microusd) {
        char u1[32], u2[32];
        usd(pi.spent_microusd, u1, sizeof u1);
        usd(pi.budget_microusd, u2, sizeof u2);
        printf("  budget: $%s spent of $%s (%s)\n", u1, u2,
               pi.budget_hard ? "hard: refused when spent"
                              : "soft: deprioritised when spent");
    } else if (pi.spent_microusd) {
        usd(pi.spent_microusd, b, sizeof b);
        printf("  spent: $%s\n", b);
    }
    keys = calloc(pi.n_keys, sizeof *keys);
    if (!keys) {
        errline("out of memory");
        return EX_FAILED;
    }
    /* Read every key once, then lay out from those copies.  A key removed
     * meanwhile (or still listed after a removal) is left out. */
    uint32_t nk = 0;
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        int k = km_pool_key(env, pool, i);
        if (k == KM_ENOKEY || (k >= 0 && (rc = km_key_info_get(env, (uint32_t)k, &keys[nk])) == KM_ENOKEY))
            continue;
        if (k < 0 || rc) {
            free(keys);
            return seg_error(name, k < 0 ? k : rc);
        }
        nk++;
    }
    pi.n_keys = nk;
    now = km_now_ns();
    for (int c = 0; c < NCOLS; c++) {
        int w = col_window(c);
        show[c] = 1;
        /* RPM and TPM always; the other windows only if some key uses them */
        if (w >= 0 && w != KM_WIN_RPM && w != KM_WIN_TPM) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].limits[w].limit != 0;
        }
        /* Spend where something is priced or budgeted; metadata if any. */
        if (c == COL_SPENT) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].price_in_microusd_per_1k != 0 ||
                           keys[i].price_out_microusd_per_1k != 0 ||
                           keys[i].budget_microusd != 0 ||
                           keys[i].spent_microusd != 0;
        }
        if (c == COL_META) {
            show[c] = 0;
            for (uint32_t i = 0; i < pi.n_keys; i++)
                show[c] |= keys[i].meta[0] != '\0';
        }
        if (!show[c])
            continue;
        last = c;
        wid[c] = strlen(col_title[c]);
        for (uint32_t i = 0; i < pi.n_keys; i++) {
            cell(&keys[i], c, now, b, sizeof b);
            if (width(b) > wid[c])
                wid[c] = width(b);
        }
    }
    fputs("  ", stdout);
    for (int c = 0; c < NCOLS; c++)
        if (show[c])
            print_cell(col_title[c], wid[c], c == last);
    putchar('\n');
    for (uint32_t i = 0; i < pi.n_keys; i++) {
        fputs("  ", stdout);
        for (int c = 0; c < NCOLS; c++) {
            if (!show[c])
                continue;
            cell(&keys[i], c, now, b, sizeof b);
            print_cell(b, wid[c], c == last);
        }
        putchar('\n');
    }
    free(keys);
    return EX_SUCCESS;
}

static int inspect_procs(km_env *env, const char *name);

/* inspect's epoch section: the global epoch and every reader inside an
 * acquire that began before it (those hold back reclamation). */
static int inspect_epochs(km_env *env, const char *name, const km_info *info)
{
    km_epoch_info ei;
    int rc = km_epoch_info_get(env, &ei), n = 0;
    if (rc != KM_OK)
        return seg_error(name, rc);
    printf("\nepochs: epoch %" PRIu64 ", reclaimed up to %" PRIu64 ", %" PRIu64
           " reconfiguration%s\n", ei.epoch, ei.synced, ei.reconfigs,
           ei.reconfigs == 1 ? "" : "s");
    for (uint32_t s = 0; s < info->cap_procs; s++)
        for (uint32_t r = 0; r < ei.rows_per_process; r++) {
            km_reader_info ri;
            if (km_reader_info_get(env, s, r, &ri) != KM_OK || !ri.alive || !ri.epochs_behind)
                continue;
            if (n++ == 0)
                printf("readers holding back reclamation:\n"
                       "  PID      TID      EPOCHS_BEHIND  INSIDE_S\n");
            char tid[16];
            snprintf(tid, sizeof tid, "%" PRIu32, ri.tid);
            printf("  %-8" PRIu32 " %-8s %-14" PRIu64 " %.3f\n", ri.pid,
                   ri.shared ? "shared" : tid, ri.epochs_behind, (double)ri.inside_ns / 1e9);
        }
    if (n == 0)
        printf("no reader holds back reclamation\n");
    return EX_SUCCESS;
}

static int inspect_table(km_env *env, const char *name)
{
    km_info info;
    int rc = km_info_get(env, &info);
    if (rc != KM_OK)
        return seg_error(name, rc);
    printf("segment %s: format %" PRIu32 ", %" PRIu32 " pool%s, %" PRIu32
           " key%s, %" PRIu64 " bytes, %" PRIu32
           " process%s attached (this one included)\n",
           name, info.format, info.n_pools, info.n_pools == 1 ? "" : "s",
           info.n_keys, info.n_keys == 1 ? "" : "s", info.size_bytes,
           info.n_procs, info.n_procs == 1 ? "" : "es");
    printf("capacity: %" PRIu32 " key%s, %" PRIu32 " pool%s, %" PRIu32
           " process%s, %" PRIu32 " lease%s per key\n",
           info.cap_keys, info.cap_keys == 1 ? "" : "s", info.cap_pools,
           info.cap_pools == 1 ? "" : "s", info.cap_procs, info.cap_procs == 1 ? "" : "es",
           info.cap_inflight, info.cap_inflight == 1 ? "" : "s");
    for (uint32_t p = 0; p < info.n_pools; p++)
        if ((rc = inspect_pool(env, name, (int)p)) != EX_SUCCESS)
            return rc;
    if ((rc = inspect_procs(env, name)) != EX_SUCCESS)
        return rc;
    return inspect_epochs(env, name, &info);
}

static int write_atomic(const char *path, const char *data, size_t len);

typedef struct snap_opts {
    const char *out, *key_file, *key_env, *group;
    int secrets;
    unsigned mode;
} snap_opts;

/* Write a snapshot (secrets encrypted under `key` if it is not NULL) to
 * o->out, replaced atomically, or to standard output. */
static int emit_snapshot(km_env *env, const char *name, const snap_opts *o,
                         const unsigned char *key)
{
    char *js;
    int rc = key ? km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &js)
                 : km_snapshot_json(env, &js);
    if (rc != KM_OK)
        return seg_error(name, rc);
    if (!o->out) {
        puts(js);
        free(js);
        return flush_stdout(EX_SUCCESS);
    }
    size_t len = strlen(js);
    js[len] = '\n'; /* json_dumps leaves no final newline: add one */
    rc = write_atomic(o->out, js, len + 1);
    free(js);
    if (rc < 0) {
        errline("%s: %s", o->out, strerror(errno));
        return EX_FAILED;
    }
    return EX_SUCCESS;
}

/* -j, --json for inspect, ps and reap. */

static const struct option flag_opts[] = {{"json", no_argument, NULL, 'j'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

static int cmd_inspect(int argc, char **argv)
{
    int json = 0, rc;
    km_env *env;

    const char *name;
    if ((rc = flag_cmd_open(argc, argv, ":jh", flag_opts, usage_inspect, &json, &name, &env)) >= 0)
        return rc;
    snap_opts to_stdout = {0};
    rc = json ? emit_snapshot(env, name, &to_stdout, NULL)
              : flush_stdout(inspect_table(env, name));
    km_close(env);
    return rc;
}

/* -------------------------------------------------------------- snapshot */

/* Replace `path` atomically with `data`: write a temporary file in the same
 * directory (mode 0600), fsync it, rename it over `path`, fsync the
 * directory.  A reader sees the old file or the new one, never a part. */
static int write_atomic(const char *path, const char *data, size_t len)
{
    const char *slash = strrchr(path, '/');
    size_t dlen = slash ? (size_t)(slash - path) : 0;
    char *tmp, *dir;
    int fd, e;

    if (!slash) {
        dir = strdup(".");
    } else {
        dir = strndup(path, dlen ? dlen : 1); /* "/file" lives in "/" */
    }
    tmp = malloc(strlen(path) + 16);
    if (!dir || !tmp) {
        free(dir);
        free(tmp);
        errno = ENOMEM;
        return -1;
    }
    sprintf(tmp, "%.*s%s.%s.XXXXXX", (int)dlen, path, slash ? "/" : "",
            slash ? slash + 1 : path);
    fd = mkstemp(tmp); /* O_EXCL, mode 0600 */
    if (fd < 0)
        goto fail;
    if (fchmod(fd, 0600) < 0)
        goto fail_fd;
    for (size_t off = 0; off < len;) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto fail_fd;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0)
        goto fail_fd;
    if (close(fd) < 0) {
        fd = -1;
        goto fail_fd;
    }
    if (rename(tmp, path) < 0) {
        fd = -1;
        goto fail_fd;
    }
    /* Make the rename itself durable; a failure here loses nothing. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(tmp);
    free(dir);
    return 0;

fail_fd:
    e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    errno = e;
fail:
    e = errno;
    free(tmp);
    free(dir);
    errno = e;
    return -1;
}


static int snapshot_opt(int c, const char *arg, void *ctx)
{
    snap_opts *o = ctx;
    switch (c) {
    case 'o':
        o->out = arg;
        return -1;
    case 's':
        o->secrets = 1;
        return -1;
    case 'k':
        o->key_file = arg;
        return -1;
    case 'K':
        o->key_env = arg;
        return -1;
    case 'g':
        o->group = arg;
        return -1;
    case 'm': {
        create_opts co = {NULL, NULL, NULL, 0};
        int rc = create_opt('m', arg, &co);
        o->mode = co.mode;
        return rc;
    }
    default:
        return usage_error("bad option");
    }
}

/* The snapshot key from --key-file or --key-env into key[]. */
static int load_key(const snap_opts *o, unsigned char key[KM_SNAPSHOT_KEY_BYTES])
{
    char buf[256];
    size_t len;
    if (!o->key_file == !o->key_env)
        return usage_error("give exactly one of --key-file and --key-env");
    if (o->key_env) {
        const char *v = getenv(o->key_env);
        if (!v || !*v) {
            errline("--key-env: environment variable %s is %s", o->key_env, v ? "empty" : "not set");
            return EX_FAILED;
        }
        len = strlen(v);
        if (km_snapshot_key_parse(v, len, key) != KM_OK) {
            errline("--key-env: %s does not hold a snapshot key (64 hex digits or base64 of 32 bytes)",
                    o->key_env);
            return EX_FAILED;
        }
        return -1;
    }
    int fd = open(o->key_file, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd < 0 ? -1 : read(fd, buf, sizeof buf);
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (got < 0) {
        errline("key file '%s': %s", o->key_file, strerror(e));
        return EX_FAILED;
    }
    int rc = km_snapshot_key_parse(buf, (size_t)got, key);
    explicit_bzero(buf, sizeof buf);
    if (rc != KM_OK) {
        errline("key file '%s': not a snapshot key (64 hex digits, base64 of 32 bytes, or 32 raw bytes)",
                o->key_file);
        return EX_FAILED;
    }
    return -1;
}


static int cmd_snapshot(int argc, char **argv)
{
    static const struct option lo[] = {{"output", required_argument, NULL, 'o'},
                                       {"include-secrets", no_argument, NULL, 's'},
                                       {"key-file", required_argument, NULL, 'k'},
                                       {"key-env", required_argument, NULL, 'K'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    snap_opts o = {0};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    km_env *env;
    int rc;

    if ((rc = parse_opts(argc, argv, ":o:h", lo, usage_snapshot, snapshot_opt,
                         &o)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    const char *name = argv[optind], *out = o.out;
    if (out && !out[0])
        return usage_error("-o: empty file name");
    if (!o.secrets && (o.key_file || o.key_env))
        return usage_error("--key-file and --key-env go with --include-secrets");
    if (o.secrets && (rc = load_key(&o, key)) >= 0)
        return rc;
    if ((rc = open_seg(name, &env)) != EX_SUCCESS)
        return rc;
    rc = emit_snapshot(env, name, &o, o.secrets ? key : NULL);
    explicit_bzero(key, sizeof key);
    km_close(env);
    return rc;
}

/* ----------------------------------------------------- persist and usage */

static int parse_u32(const char *what, const char *arg, uint32_t lo, uint32_t hi, uint32_t *out);

static volatile sig_atomic_t g_stop;
static void on_stop(int sig) { (void)sig; g_stop = 1; }

typedef struct persist_ctx {
    sqlite3_stmt *ins;
    const char *segment;
    int failed;
} persist_ctx;

static const char *outcome_text(int kind)
{
    return kind == KM_OUT_COUNT ? "abandoned" : km_outcome_name(kind);
}

static int persist_event(void *ctx, const km_usage_event *ev)
{
    persist_ctx *p = ctx;
    sqlite3_stmt *st = p->ins;
    sqlite3_reset(st);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(ev->start_unix_ns / 1000000));
    sqlite3_bind_text(st, 2, p->segment, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ev->pool, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, ev->key_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, ev->model, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)ev->tokens);
    sqlite3_bind_text(st, 7, outcome_text(ev->outcome), -1, SQLITE_STATIC);
    if (ev->latency_us == UINT64_MAX)
        sqlite3_bind_null(st, 8);
    else
        sqlite3_bind_int64(st, 8, (sqlite3_int64)ev->latency_us);
    sqlite3_bind_int(st, 9, (int)ev->pid);
    if (sqlite3_step(st) != SQLITE_DONE) {
        p->failed = 1;
        return 1; /* stop: this event stays for the next drain */
    }
    return 0;
}

static int db_open(const char *path, sqlite3 **db)
{
    static const char schema[] =
        "CREATE TABLE IF NOT EXISTS usage(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL,"
        " pool TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL,"
        " outcome TEXT NOT NULL, latency_us INTEGER, pid INTEGER);"
        "CREATE INDEX IF NOT EXISTS usage_seg_ts ON usage(segment, ts_ms);"
        "CREATE TABLE IF NOT EXISTS drops(ts_ms INTEGER NOT NULL, segment TEXT NOT NULL,"
        " dropped INTEGER NOT NULL);";
    if (sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(*db, 5000) != SQLITE_OK ||
        sqlite3_exec(*db, "PRAGMA journal_mode=WAL;", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(*db, schema, NULL, NULL, NULL) != SQLITE_OK) {
        errline("database '%s': %s", path, *db ? sqlite3_errmsg(*db) : "cannot open");
        sqlite3_close(*db);
        *db = NULL;
        return EX_FAILED;
    }
    chmod(path, 0600);
    return EX_SUCCESS;
}

/* One drain in one transaction.  Returns an exit status. */
static int persist_once(km_env *env, const char *name, sqlite3 *db, sqlite3_stmt *ins,
                        uint64_t *total, uint64_t *dropped)
{
    persist_ctx p = {ins, name, 0};
    km_usage_report r;
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        errline("database: %s", sqlite3_errmsg(db));
        return EX_FAILED;
    }
    int rc = km_usage_drain(env, persist_event, &p, &r);
    if (rc < 0) { /* nothing consumed */
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return seg_error(name, rc);
    }
    if (r.dropped) {
        char sql[160];
        snprintf(sql, sizeof sql, "INSERT INTO drops VALUES(%lld, ?, %llu)",
                 (long long)time(NULL) * 1000, (unsigned long long)r.dropped);
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            sqlite3_step(st);
            sqlite3_finalize(st);
        }
    }
    /* The events were consumed from the rings: the commit must not fail
     * silently (they would be lost); report it loudly if it does. */
    if (p.failed || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        errline("database: %s (%llu events of this drain lost)", sqlite3_errmsg(db),
                (unsigned long long)r.events);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return EX_FAILED;
    }
    *total += r.events;
    *dropped = r.dropped_total;
    return EX_SUCCESS;
}

typedef struct persist_opts {
    snap_opts snap;
    const char *db;
    uint32_t interval_s, every_s;
    int once;
} persist_opts;

static int persist_opt(int c, const char *arg, void *ctx)
{
    persist_opts *o = ctx;
    switch (c) {
    case 'd':
        o->db = arg;
        return -1;
    case 'i':
        return parse_u32("--interval", arg, 1, 86400, &o->interval_s);
    case 'E':
        return parse_u32("--every", arg, 1, 86400 * 7, &o->every_s);
    case '1':
        o->once = 1;
        return -1;
    case 'S':
        o->snap.out = arg;
        return -1;
    default:
        return snapshot_opt(c, arg, &o->snap);
    }
}

static int cmd_persist(int argc, char **argv)
{
    static const struct option lo[] = {{"db", required_argument, NULL, 'd'},
                                       {"interval", required_argument, NULL, 'i'},
                                       {"every", required_argument, NULL, 'E'},
                                       {"once", no_argument, NULL, '1'},
                                       {"snapshot", required_argument, NULL, 'S'},
                                       {"include-secrets", no_argument, NULL, 's'},
                                       {"key-file", required_argument, NULL, 'k'},
                                       {"key-env", required_argument, NULL, 'K'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    persist_opts o = {.interval_s = 1, .every_s = 60};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    km_env *env;
    int rc;

    if ((rc = parse_opts(argc, argv, ":h", lo, usage_persist, persist_opt, &o)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    if (!o.db)
        return usage_error("missing --db FILE");
    if (!o.snap.secrets && (o.snap.key_file || o.snap.key_env))
        return usage_error("--key-file and --key-env go with --include-secrets");
    if (o.snap.secrets && !o.snap.out)
        return usage_error("--include-secrets goes with --snapshot FILE");
    if (o.snap.secrets && (rc = load_key(&o.snap, key)) >= 0)
        return rc;
    const char *name = argv[optind];
    if ((rc = open_seg(name, &env)) != EX_SUCCESS)
        return rc;
    if ((rc = db_open(o.db, &db)) != EX_SUCCESS)
        goto out;
    if (sqlite3_prepare_v2(db, "INSERT INTO usage VALUES(?,?,?,?,?,?,?,?,?)", -1, &ins, NULL) !=
        SQLITE_OK) {
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
        rc = EX_FAILED;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    uint64_t total = 0, dropped = 0, next_snap = 0;
    for (;;) {
        int last = o.once || g_stop;
        if ((rc = persist_once(env, name, db, ins, &total, &dropped)) != EX_SUCCESS)
            goto out;
        uint64_t now = km_now_ns();
        if (o.snap.out && (last || now >= next_snap)) {
            if ((rc = emit_snapshot(env, name, &o.snap, o.snap.secrets ? key : NULL)) != EX_SUCCESS)
                goto out;
            next_snap = now + (uint64_t)o.every_s * 1000000000u;
        }
        if (last)
            break;
        struct timespec ts = {(time_t)o.interval_s, 0};
        nanosleep(&ts, NULL); /* a signal ends the sleep early */
    }
    printf("persisted %llu events of segment '%s' to %s (%llu dropped in all)\n",
           (unsigned long long)total, name, o.db, (unsigned long long)dropped);
    rc = flush_stdout(EX_SUCCESS);
out:
    explicit_bzero(key, sizeof key);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    km_close(env);
    return rc;
}

/* "90s", "15m", "1h", "7d" -> milliseconds; 0 if invalid. */
static uint64_t parse_duration_ms(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-' || end[0] == '\0' || end[1] != '\0')
        return 0;
    uint64_t unit = end[0] == 's' ? 1000 : end[0] == 'm' ? 60000 : end[0] == 'h' ? 3600000
                    : end[0] == 'd' ? 86400000 : 0;
    return v && unit && v < UINT64_MAX / unit ? v * unit : 0;
}

typedef struct usage_opts {
    const char *db, *since, *by;
} usage_opts;

static int usage_opt(int c, const char *arg, void *ctx)
{
    usage_opts *o = ctx;
    if (c == 'd')
        o->db = arg;
    else if (c == 's')
        o->since = arg;
    else if (c == 'b')
        o->by = arg;
    else
        return usage_error("bad option");
    return -1;
}

static int cmd_usage(int argc, char **argv)
{
    static const struct option lo[] = {{"db", required_argument, NULL, 'd'},
                                       {"since", required_argument, NULL, 's'},
                                       {"by", required_argument, NULL, 'b'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    usage_opts o = {NULL, "1h", "key,model"};
    char cols[128] = "", sql[1024];
    int rc, ncols = 0;
    if ((rc = parse_opts(argc, argv, ":h", lo, usage_usage, usage_opt, &o)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    if (!o.db)
        return usage_error("missing --db FILE");
    uint64_t since = parse_duration_ms(o.since);
    if (!since)
        return usage_error("--since: '%s' is not a duration (e.g. 90s, 15m, 1h, 7d)", o.since);
    /* Only known column names reach the SQL text. */
    const char *p = o.by;
    while (*p) {
        size_t n = strcspn(p, ",");
        static const char *const ok_cols[] = {"pool", "key", "model", "outcome"};
        int found = 0;
        for (int i = 0; i < 4; i++)
            if (n == strlen(ok_cols[i]) && !strncmp(p, ok_cols[i], n)) {
                snprintf(cols + strlen(cols), sizeof cols - strlen(cols), "%s%s", ncols ? ", " : "",
                         ok_cols[i]);
                ncols++;
                found = 1;
            }
        if (!found || ncols > 4)
            return usage_error("--by: '%.*s' is not one of pool, key, model, outcome", (int)n, p);
        p += n + (p[n] == ',');
    }
    if (!ncols)
        return usage_error("--by: no field");
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(o.db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        errline("database '%s': %s", o.db, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return EX_FAILED;
    }
    snprintf(sql, sizeof sql,
             "SELECT %s, COUNT(*), SUM(tokens), SUM(outcome = 'success'),"
             " SUM(outcome = 'rate_limited'), SUM(outcome IN ('failure', 'auth', 'quota')),"
             " AVG(latency_us) FROM usage WHERE segment = ?1 AND ts_ms >= ?2"
             " GROUP BY %s ORDER BY %s",
             cols, cols, cols);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
        sqlite3_close(db);
        return EX_FAILED;
    }
    sqlite3_bind_text(st, 1, argv[optind], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)((uint64_t)time(NULL) * 1000 - since));
    for (int i = 0; i < ncols; i++) {
        char up[16];
        const char *c = cols;
        for (int j = 0; j < i; j++)
            c = strstr(c, ", ") + 2;
        size_t n = strcspn(c, ",");
        for (size_t k = 0; k < n && k < sizeof up - 1; k++)
            up[k] = (char)(c[k] >= 'a' && c[k] <= 'z' ? c[k] - 32 : c[k]);
        up[n < sizeof up - 1 ? n : sizeof up - 1] = '\0';
        printf("%-20s ", up);
    }
    printf("%10s %12s %10s %10s %10s %12s\n", "REQUESTS", "TOKENS", "SUCCESS", "429", "FAILED",
           "AVG_LAT_MS");
    int rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < ncols; i++) {
            const unsigned char *t = sqlite3_column_text(st, i);
            printf("%-20s ", t && *t ? (const char *)t : "-");
        }
        printf("%10lld %12lld %10lld %10lld %10lld ", sqlite3_column_int64(st, ncols),
               sqlite3_column_int64(st, ncols + 1), sqlite3_column_int64(st, ncols + 2),
               sqlite3_column_int64(st, ncols + 3), sqlite3_column_int64(st, ncols + 4));
        if (sqlite3_column_type(st, ncols + 5) == SQLITE_NULL)
            printf("%12s\n", "-");
        else
            printf("%12.1f\n", sqlite3_column_double(st, ncols + 5) / 1000.0);
        rows++;
    }
    int ok = rc == SQLITE_DONE;
    if (!ok)
        errline("database '%s': %s", o.db, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (ok && !rows)
        printf("(no usage in the last %s)\n", o.since);
    return ok ? flush_stdout(EX_SUCCESS) : EX_FAILED;
}

/* --------------------------------------------------------------- restore */

static int cmd_restore(int argc, char **argv)
{
    static const struct option lo[] = {{"key-file", required_argument, NULL, 'k'},
                                       {"key-env", required_argument, NULL, 'K'},
                                       {"mode", required_argument, NULL, 'm'},
                                       {"group", required_argument, NULL, 'g'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    snap_opts o = {0};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    char err[1024] = "";
    km_env *env = NULL;
    int rc;

    o.mode = 0600;
    if ((rc = parse_opts(argc, argv, ":m:g:h", lo, usage_restore, snapshot_opt, &o)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 2, "NAME FILE")) >= 0)
        return rc;
    if ((rc = load_key(&o, key)) >= 0)
        return rc;
    const char *name = argv[optind], *file = argv[optind + 1];
    FILE *f = fopen(file, "re");
    if (!f) {
        errline("%s: %s", file, strerror(errno));
        return EX_FAILED;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[65536];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n > cap) {
            char *nb = realloc(buf, cap = (len + n) * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                errline("out of memory");
                return EX_FAILED;
            }
            buf = nb;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (rerr) {
        free(buf);
        errline("%s: %s", file, strerror(rerr));
        return EX_FAILED;
    }
    rc = km_restore(name, buf ? buf : "", len, key, o.mode, &env, err, sizeof err);
    explicit_bzero(key, sizeof key);
    free(buf);
    if (rc != KM_OK) {
        int e = errno;
        errline("segment '%s' from %s: %s", name, file, err[0] ? err : km_text(rc, e));
        return EX_FAILED;
    }
    if (o.group && (rc = seg_chgrp(name, o.group)) != EX_SUCCESS) {
        km_close(env);
        km_unlink(name);
        return rc;
    }
    km_info info;
    if (km_info_get(env, &info) == KM_OK)
        printf("restored segment '%s' from %s: %" PRIu32 " pool%s, %" PRIu32 " key%s, mode %04o\n",
               name, file, info.n_pools, info.n_pools == 1 ? "" : "s", info.n_keys,
               info.n_keys == 1 ? "" : "s", o.mode);
    km_close(env);
    return flush_stdout(EX_SUCCESS);
}

static int cmd_keygen(int argc, char **argv)
{
    char hex[2 * KM_SNAPSHOT_KEY_BYTES + 2];
    int rc;
    if ((rc = parse_opts(argc, argv, ":h", help_only, usage_keygen, NULL, NULL)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "FILE")) >= 0)
        return rc;
    const char *file = argv[optind];
    if ((rc = km_snapshot_keygen(hex)) != KM_OK) {
        errline("%s", km_strerror(rc));
        return EX_FAILED;
    }
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        explicit_bzero(hex, sizeof hex);
        errline("%s: %s", file, strerror(errno));
        return EX_FAILED;
    }
    size_t len = strlen(hex);
    hex[len++] = '\n';
    int ok = write(fd, hex, len) == (ssize_t)len && fsync(fd) == 0;
    int e = errno;
    explicit_bzero(hex, sizeof hex);
    if (close(fd) != 0 || !ok) {
        unlink(file);
        errline("%s: %s", file, strerror(ok ? errno : e));
        return EX_FAILED;
    }
    return EX_SUCCESS;
}

/* --------------------------------------------------------------- destroy */

static int cmd_destroy(int argc, char **argv)
{
    int rc;
    if ((rc = parse_opts(argc, argv, ":h", help_only, usage_destroy, NULL,
                         NULL)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 1, "NAME")) >= 0)
        return rc;
    const char *name = argv[optind];
    rc = km_unlink(name);
    return rc == KM_OK ? EX_SUCCESS : seg_error(name, rc);
}

/* ------------------------------------------------------ enable / disable */

static int cmd_set_state(int argc, char **argv, int state, const char *help)
{
    km_env *env;
    int rc, pool, key;

    if ((rc = parse_opts(argc, argv, ":h", help_only, help, NULL, NULL)) >= 0)
        return rc;
    if ((rc = want_operands(argc, 3, "NAME POOL KEY_ID")) >= 0)
        return rc;
    const char *name = argv[optind], *pname = argv[optind + 1],
               *kid = argv[optind + 2];
    if ((rc = open_seg(name, &env)) != EX_SUCCESS)
        return rc;
    pool = km_pool_find(env, pname);
    if (pool < 0) {
        errline("pool '%s': %s", pname, km_text(pool, errno));
        rc = exit_for(pool);
        goto out;
    }
    key = km_key_find(env, pool, kid);
    if (key < 0) {
        errline("key '%s' in pool '%s': %s", kid, pname, km_text(key, errno));
        rc = exit_for(key);
        goto out;
    }
    rc = km_key_set_state(env, (uint32_t)key, state);
    if (rc != KM_OK) {
        errline("key '%s' in pool '%s': %s", kid, pname, km_text(rc, errno));
        rc = exit_for(rc);
        goto out;
    }
    rc = EX_SUCCESS;
out:
    km_close(env);
    return rc;
}

/* ------------------------------------------------------ reconfiguration */

/* Name the readers holding back reclamation (after KM_EBUSY). */
static void explain_busy(km_env *env)
{
    km_info info;
    km_epoch_info ei;
    if (km_info_get(env, &info) != KM_OK || km_epoch_info_get(env, &ei) != KM_OK)
        return;
    for (uint32_t s = 0; s < info.cap_procs; s++)
        for (uint32_t r = 0; r < ei.rows_per_process; r++) {
            km_reader_info ri;
            if (km_reader_info_get(env, s, r, &ri) != KM_OK || !ri.alive || !ri.epochs_behind)
                continue;
            errline("held back by pid %" PRIu32 " (%s %" PRIu32 "), %" PRIu64
                    " epoch%s behind, inside an acquire for %.3f s",
                    ri.pid, ri.shared ? "shared row of" : "thread", ri.shared ? ri.pid : ri.tid,
                    ri.epochs_behind, ri.epochs_behind == 1 ? "" : "s",
                    (double)ri.inside_ns / 1e9);
        }
}

/* Parse "N" in [lo, hi]. */
static int parse_u32(const char *what, const char *arg, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(arg, &end, 10);
    if (!*arg || *end || errno || arg[0] == '-' || v < lo || v > hi)
        return usage_error("%s: '%s' is not an integer in %" PRIu32 "..%" PRIu32, what, arg, lo, hi);
    *out = (uint32_t)v;
    return -1;
}

typedef struct reconf_opts {
    uint32_t timeout_ms;
    const char *secret_env, *secret_file, *limits;
    uint32_t weight, max_inflight;
    int have_weight, have_max_inflight;
} reconf_opts;

static int reconf_opt(int c, const char *arg, void *ctx)
{
    reconf_opts *o = ctx;
    switch (c) {
    case 't':
        return parse_u32("--timeout", arg, 0, 3600000, &o->timeout_ms);
    case 'e':
        o->secret_env = arg;
        return -1;
    case 'f':
        o->secret_file = arg;
        return -1;
    case 'l':
        o->limits = arg;
        return -1;
    case 'w':
        o->have_weight = 1;
        return parse_u32("--weight", arg, 1, 1000000, &o->weight);
    case 'm':
        o->have_max_inflight = 1;
        return parse_u32("--max-inflight", arg, 0, UINT32_MAX, &o->max_inflight);
    default:
        return usage_error("bad option");
    }
}

/* Parse options and take `nops` operands (NAME POOL KEY_ID ...); then
 * reconf_attach attaches and finds the pool (and the key, if want_key).
 * Each returns -1 to go on, else an exit status. */
static int reconf_parse(int argc, char **argv, const char *help, const struct option *lo,
                        int nops, const char *ops, reconf_opts *o)
{
    int rc;
    o->timeout_ms = 1000;
    if ((rc = parse_opts(argc, argv, ":t:e:f:l:w:m:h", lo, help, reconf_opt, o)) >= 0)
        return rc;
    return want_operands(argc, nops, ops);
}

/* After reconf_parse: attach to NAME and find POOL (and KEY_ID). */
static int reconf_attach(char **argv, reconf_opts *o, km_env **env, int *pool, int want_key,
                         int *key)
{
    int rc;
    const char *name = argv[optind], *pname = argv[optind + 1], *kid = argv[optind + 2];
    if ((rc = open_seg(name, env)) != EX_SUCCESS)
        return rc;
    km_set_admin_timeout(*env, o->timeout_ms);
    *pool = km_pool_find(*env, pname);
    if (*pool < 0) {
        errline("pool '%s': %s", pname, km_text(*pool, errno));
        rc = exit_for(*pool);
        km_close(*env);
        return rc;
    }
    if (want_key) {
        *key = km_key_find(*env, *pool, kid);
        if (*key < 0) {
            errline("key '%s' in pool '%s': %s", kid, pname, km_text(*key, errno));
            rc = exit_for(*key);
            km_close(*env);
            return rc;
        }
    }
    return -1;
}

/* Report the result of a reconfiguration call. */
static int reconf_done(km_env *env, int rc, const char *kid, const char *pname,
                       const char *detail)
{
    if (rc >= 0) {
        rc = EX_SUCCESS;
    } else {
        errline("key '%s' in pool '%s': %s%s%s", kid, pname, km_text(rc, errno),
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

static const struct option reconf_lo[] = {{"timeout", required_argument, NULL, 't'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};

static int cmd_add_key(int argc, char **argv)
{
    static const struct option lo[] = {{"secret-env", required_argument, NULL, 'e'},
                                       {"secret-file", required_argument, NULL, 'f'},
                                       {"weight", required_argument, NULL, 'w'},
                                       {"limits", required_argument, NULL, 'l'},
                                       {"max-inflight", required_argument, NULL, 'm'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    char secret[KM_SECRET_MAX + 8], js[8192], err[512] = "";
    size_t len = 0;

    /* Options are checked before attaching: a usage error changes nothing. */
    if ((rc = reconf_parse(argc, argv, usage_add_key, lo, 3, "NAME POOL KEY_ID", &o)) >= 0)
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
    if (o.have_weight) {
        char w[32];
        snprintf(w, sizeof w, ",\"weight\":%" PRIu32, o.weight);
        bad = bad || json_raw(js, sizeof js, &len, w);
    }
    if (o.have_max_inflight) {
        char w[32];
        snprintf(w, sizeof w, ",\"max_inflight\":%" PRIu32, o.max_inflight);
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
    return reconf_done(env, rc, kid, pname, err);
}

static int cmd_remove_key(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    if ((rc = reconf_parse(argc, argv, usage_remove_key, reconf_lo, 3, "NAME POOL KEY_ID", &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    return reconf_done(env, km_key_remove(env, (uint32_t)key), argv[optind + 2],
                       argv[optind + 1], NULL);
}

static int cmd_set_weight(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    uint32_t w;
    if ((rc = reconf_parse(argc, argv, usage_set_weight, reconf_lo, 4, "NAME POOL KEY_ID WEIGHT", &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    if ((rc = parse_u32("WEIGHT", argv[optind + 3], 1, 1000000, &w)) >= 0) {
        km_close(env);
        return rc;
    }
    return reconf_done(env, km_key_set_weight(env, (uint32_t)key, w), argv[optind + 2],
                       argv[optind + 1], NULL);
}

static int cmd_set_limits(int argc, char **argv)
{
    reconf_opts o = {0};
    km_env *env;
    int pool, key, rc;
    char err[512] = "";
    if ((rc = reconf_parse(argc, argv, usage_set_limits, reconf_lo, 4, "NAME POOL KEY_ID JSON", &o)) >= 0 ||
        (rc = reconf_attach(argv, &o, &env, &pool, 1, &key)) >= 0)
        return rc;
    rc = km_key_set_limits(env, (uint32_t)key, argv[optind + 3], err, sizeof err);
    return reconf_done(env, rc, argv[optind + 2], argv[optind + 1], err);
}

/* ------------------------------------------------------------- processes */

typedef struct proc_row {
    uint32_t slot;
    km_proc_info pi;
} proc_row;

/* Read every used slot of the process table into *rows (malloc'd, *n rows).
 * Each slot is read once; a process may attach or leave meanwhile. */
static int read_procs(km_env *env, const char *name, proc_row **rows,
                      uint32_t *n)
{
    km_info info;
    int rc = km_info_get(env, &info);
    if (rc != KM_OK)
        return seg_error(name, rc);
    *n = 0;
    *rows = calloc(info.cap_procs ? info.cap_procs : 1, sizeof **rows);
    if (!*rows) {
        errline("out of memory");
        return EX_FAILED;
    }
    for (uint32_t s = 0; s < info.cap_procs; s++) {
        rc = km_proc_info_get(env, s, &(*rows)[*n].pi);
        if (rc == KM_ENOENT) /* a free slot */
            continue;
        if (rc != KM_OK) {
            free(*rows);
            *rows = NULL;
            return seg_error(name, rc);
        }
        (*rows)[(*n)++].slot = s;
    }
    return EX_SUCCESS;
}

/* Whole seconds since `attached_ns`, or "-" while the process attaches. */
static void attached_s(uint64_t attached_ns, uint64_t now, char *b, size_t n)
{
    if (!attached_ns)
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%" PRIu64,
                 (now > attached_ns ? now - attached_ns : 0) / 1000000000);
}

enum { PCOL_SLOT, PCOL_PID, PCOL_ALIVE, PCOL_LEASES, PCOL_ATTACHED, NPCOLS };

static const char *const pcol_title[NPCOLS] = {"SLOT", "PID", "ALIVE",
                                               "LEASES", "ATTACHED_S"};

static void pcell(const proc_row *r, int col, uint64_t now, char *b, size_t n)
{
    switch (col) {
    case PCOL_SLOT:
        snprintf(b, n, "%" PRIu32, r->slot);
        break;
    case PCOL_PID:
        if (r->pi.pid)
            snprintf(b, n, "%" PRIu32, r->pi.pid);
        else
            snprintf(b, n, "-");
        break;
    case PCOL_ALIVE:
        snprintf(b, n, "%s", r->pi.alive ? "yes" : "no");
        break;
    case PCOL_LEASES:
        snprintf(b, n, "%" PRIu32, r->pi.leases);
        break;
    default:
        attached_s(r->pi.attached_ns, now, b, n);
    }
}

/* The process table, indented by two spaces, kmctl's own row marked. */
static void print_proc_table(const proc_row *rows, uint32_t n, uint64_t now)
{
    size_t wid[NPCOLS];
    char b[32];
    uint32_t self = (uint32_t)getpid();

    for (int c = 0; c < NPCOLS; c++) {
        wid[c] = strlen(pcol_title[c]);
        for (uint32_t i = 0; i < n; i++) {
            pcell(&rows[i], c, now, b, sizeof b);
            if (strlen(b) > wid[c])
                wid[c] = strlen(b);
        }
    }
    fputs("  ", stdout);
    for (int c = 0; c < NPCOLS; c++)
        print_cell(pcol_title[c], wid[c], c == NPCOLS - 1);
    putchar('\n');
    for (uint32_t i = 0; i < n; i++) {
        int mine = rows[i].pi.pid == self;
        fputs("  ", stdout);
        for (int c = 0; c < NPCOLS; c++) {
            pcell(&rows[i], c, now, b, sizeof b);
            print_cell(b, wid[c], c == NPCOLS - 1 && !mine);
        }
        if (mine)
            fputs("(this kmctl)", stdout);
        putchar('\n');
    }
}

static void print_proc_json(const proc_row *rows, uint32_t n, uint64_t now)
{
    uint32_t self = (uint32_t)getpid();

    putchar('[');
    for (uint32_t i = 0; i < n; i++) {
        const km_proc_info *p = &rows[i].pi;
        printf("%s\n  {\"slot\": %" PRIu32 ", \"pid\": %" PRIu32
               ", \"alive\": %s, \"leases\": %" PRIu32 ", \"attached_s\": ",
               i ? "," : "", rows[i].slot, p->pid,
               p->alive ? "true" : "false", p->leases);
        if (p->attached_ns) {
            uint64_t d = now > p->attached_ns ? now - p->attached_ns : 0;
            printf("%" PRIu64 ".%03" PRIu64, d / 1000000000,
                   d / 1000000 % 1000);
        } else {
            fputs("null", stdout);
        }
        printf(", \"self\": %s}", p->pid == self ? "true" : "false");
    }
    puts(n ? "\n]" : "]");
}

/* inspect's last section: "processes: N attached[, D dead]" and the table. */
static int inspect_procs(km_env *env, const char *name)
{
    proc_row *rows;
    uint32_t n, dead = 0;
    int rc = read_procs(env, name, &rows, &n);
    if (rc != EX_SUCCESS)
        return rc;
    for (uint32_t i = 0; i < n; i++)
        dead += !rows[i].pi.alive;
    printf("\nprocesses: %" PRIu32 " attached", n);
    if (dead)
        printf(", %" PRIu32 " dead (`kmctl reap %s` releases what they hold)",
               dead, name);
    putchar('\n');
    print_proc_table(rows, n, km_now_ns());
    free(rows);
    return EX_SUCCESS;
}

static int cmd_ps(int argc, char **argv)
{
    proc_row *rows;
    uint32_t n;
    int json = 0, rc;
    km_env *env;

    const char *name;
    if ((rc = flag_cmd_open(argc, argv, ":jh", flag_opts, usage_ps, &json, &name, &env)) >= 0)
        return rc;
    rc = read_procs(env, name, &rows, &n);
    if (rc == EX_SUCCESS) {
        if (json)
            print_proc_json(rows, n, km_now_ns());
        else
            print_proc_table(rows, n, km_now_ns());
        free(rows);
        rc = flush_stdout(rc);
    }
    km_close(env);
    return rc;
}

/* ------------------------------------------------------------------ reap */

static int cmd_reap(int argc, char **argv)
{
    km_reap_report r;
    int json = 0, rc;
    km_env *env;

    const char *name;
    if ((rc = flag_cmd_open(argc, argv, ":jh", flag_opts, usage_reap, &json, &name, &env)) >= 0)
        return rc;
    rc = km_reap(env, &r);
    if (rc != KM_OK) {
        rc = seg_error(name, rc);
        goto out;
    }
    if (json) {
        printf("{\"processes\": %" PRIu32 ", \"leases\": %" PRIu64
               ", \"recounted\": %" PRIu32 ", \"pending\": %" PRIu32
               ", \"repaired\": %" PRIu32 "}\n",
               r.processes, r.leases, r.recounted, r.pending, r.repaired);
    } else {
        printf("reaped %" PRIu32 " dead process%s, %" PRIu64
               " lease%s released, %" PRIu32 " key%s recounted",
               r.processes, r.processes == 1 ? "" : "es", r.leases,
               r.leases == 1 ? "" : "s", r.recounted,
               r.recounted == 1 ? "" : "s");
        if (r.pending)
            printf(", %" PRIu32 " pending", r.pending);
        if (r.repaired)
            printf(", %" PRIu32 " key%s repaired (reservations had drifted)", r.repaired,
                   r.repaired == 1 ? "" : "s");
        putchar('\n');
    }
    rc = flush_stdout(EX_SUCCESS);
out:
    km_close(env);
    return rc;
}

/* ----------------------------------------------------------------- check */

/* km_check's callback: one violation, one line on stdout. */
static void check_line(void *ctx, const char *line)
{
    (void)ctx;
    printf("violation: %s\n", line);
}

static int cmd_check(int argc, char **argv)
{
    static const struct option lo[] = {{"quiet", no_argument, NULL, 'q'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    int quiet = 0, rc, n;
    km_env *env;

    const char *name;
    if ((rc = flag_cmd_open(argc, argv, ":qh", lo, usage_check, &quiet, &name, &env)) >= 0)
        return rc;
    n = km_check(env, quiet ? NULL : check_line, NULL);
    if (n < 0) {
        rc = seg_error(name, n);
        goto out;
    }
    /* The violations reach stdout before the summary reaches stderr. */
    if ((rc = flush_stdout(EX_SUCCESS)) != EX_SUCCESS)
        goto out;
    fprintf(stderr, "%d violation%s\n", n, n == 1 ? "" : "s");
    rc = n ? EX_FAILED : EX_SUCCESS;
out:
    km_close(env);
    return rc;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {NULL, 0, NULL, 0}};
    int c;

    opterr = 0;
    /* '+': stop at the command; its own options are parsed after it. */
    while ((c = getopt_long(argc, argv, "+:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage_main, stdout);
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

    const char *cmd = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;
    g_cmd = cmd;
    if (strcmp(cmd, "create") == 0)
        return cmd_create(cargc, cargv);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(cargc, cargv);
    if (strcmp(cmd, "snapshot") == 0)
        return cmd_snapshot(cargc, cargv);
    if (strcmp(cmd, "destroy") == 0)
        return cmd_destroy(cargc, cargv);
    if (strcmp(cmd, "restore") == 0)
        return cmd_restore(cargc, cargv);
    if (strcmp(cmd, "keygen") == 0)
        return cmd_keygen(cargc, cargv);
    if (strcmp(cmd, "persist") == 0)
        return cmd_persist(cargc, cargv);
    if (strcmp(cmd, "usage") == 0)
        return cmd_usage(cargc, cargv);
    if (strcmp(cmd, "enable") == 0)
        return cmd_set_state(cargc, cargv, KM_KEY_ACTIVE, usage_enable);
    if (strcmp(cmd, "disable") == 0)
        return cmd_set_state(cargc, cargv, KM_KEY_DISABLED, usage_disable);
    if (strcmp(cmd, "add-key") == 0)
        return cmd_add_key(cargc, cargv);
    if (strcmp(cmd, "remove-key") == 0)
        return cmd_remove_key(cargc, cargv);
    if (strcmp(cmd, "set-weight") == 0)
        return cmd_set_weight(cargc, cargv);
    if (strcmp(cmd, "set-limits") == 0)
        return cmd_set_limits(cargc, cargv);
    if (strcmp(cmd, "ps") == 0)
        return cmd_ps(cargc, cargv);
    if (strcmp(cmd, "reap") == 0)
        return cmd_reap(cargc, cargv);
    if (strcmp(cmd, "check") == 0)
        return cmd_check(cargc, cargv);
    g_cmd = "usage";
    return usage_error("unknown command '%s'", cmd);
}
