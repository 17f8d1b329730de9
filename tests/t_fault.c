/*
 * t_fault.c - administration survives death at any instruction.
 *
 * Built against the library compiled with -DKM_FAULT_INJECTION (Makefile:
 * $(BUILD)/fault/), which has a kill point (KM__FAULT) between every two
 * shared stores of every administrative writer: km_key_add (a free row, and
 * a removed row reused after a grace period), km_key_remove,
 * km_key_set_weight, km_key_set_limits, km_key_set_model_limits (a key's own
 * limits of a model), km_key_set_state (enable, disable), km_create,
 * km_restore, and the recovery itself.
 *
 * Exhaustive: for each writer, a child runs it on a fresh segment with a
 * hook that SIGKILLs it at the n-th point it reaches, for n = 1, 2, ... until
 * a run reaches no point to die at (then every point was a death).  After
 * each death one of three things must finish or undo what it left, in turn:
 * the next writer (a re-weight of a key of another pool: its
 * pthread_mutex_lock returns EOWNERDEAD), km_reap, or a new process's
 * km_open.  Then, for every single death:
 *   - the intent record is clear (the trigger resolved it);
 *   - km_check reports nothing (no orphan row, no flag left set, lists and
 *     weights consistent, n_keys right, no dead intent);
 *   - the key is there or absent as its writer's intent says: an added key
 *     is absent (its secret wiped from the segment) or present and leased
 *     with its secret; a removed key is absent; a weight, limits (the
 *     key's, or its own of a model) or state is
 *     the old or the new one, and the key is handed out (not skipped);
 *   - no capacity is lost: keys added until KM_EFULL fill exactly the rows
 *     the present keys leave;
 *   - a killed create or restore leaves no segment under the name (never
 *     KM_ENOTREADY), only a temporary of a dead creator, which the next
 *     create of the name removes before it succeeds.
 * Recovery killed in turn: a dead add (row ACTIVE, unpublished) and a dead
 * limits change (one window rescaled) are recovered by a reaper killed at
 * each of the recovery's own points, then recovered again.
 *
 * Random kills: a writer process doing random reconfigurations is killed
 * with SIGKILL every few ms (3 s, KM_TORTURE_S longer under make torture)
 * while workers acquire and release; afterwards, with one reap, km_check is
 * clean, every worker saw only KM_EAGAIN/KM_EUNAVAIL as failures and every
 * release succeeded, and keys added until KM_EFULL fill every row.
 */
#include <dirent.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "killlib.h"

#define CAP 6
static const char CFG[] =
    "{\"capacity\": {\"keys\": 6, \"inflight_per_key\": 4, \"processes\": 8, \"pools\": 2},"
    " \"pools\": [{\"name\": \"p\", \"strategy\": \"weighted\","
    "   \"limits\": {\"rpm\": 100000, \"tpm\": 10000000},"
    "   \"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpm\": 100000, \"tpm\": 10000000}},"
    "   \"keys\": [{\"id\": \"a\", \"secret\": \"sk-fault-aaaa-0001\"},"
    "              {\"id\": \"b\", \"secret\": \"sk-fault-bbbb-0002\"},"
    "              {\"id\": \"r\", \"secret\": \"sk-fault-rrrr-0003\"}]},"
    "  {\"name\": \"q\", \"keys\": [{\"id\": \"z\", \"secret\": \"sk-fault-zzzz-0009\"}]}]}";
#define NEW_SECRET "sk-fault-new-nnnn-0042"
static const char NEW_KEY[] = "{\"id\": \"n\", \"secret\": \"" NEW_SECRET "\", \"weight\": 3}";
static const char *const IDS[] = {"a", "b", "r", "n", "f0", "f1", "f2", "f3", "f4", "f5"};

enum { OP_ADD, OP_ADD_REUSE, OP_REMOVE, OP_WEIGHT, OP_LIMITS, OP_ENABLE, OP_DISABLE,
       OP_CREATE, OP_RESTORE, OP_RECOVER_ADD, OP_RECOVER_LIMITS, OP_MLIMITS, OP_RECOVER_MLIMITS,
       OP_N };
static const char *const op_name[OP_N] = {
    "add (free row)", "add (removed row reused)", "remove", "set-weight", "set-limits",
    "enable", "disable", "create", "restore", "recovery of an add", "recovery of a limits change",
    "set-limits of a model", "recovery of a model limits change"};
/* Fewest kill points each must have (a regression that drops points shows). */
static const int min_points[OP_N] = {10, 11, 6, 7, 12, 5, 4, 4, 5, 4, 6, 12, 6};

static char other[64]; /* create, restore: the new segment's name */
static unsigned char snapkey[KM_SNAPSHOT_KEY_BYTES];
static char *snapshot;

static int pool_p, pool_q;
static int key_a, key_b, key_z;

/* Per case: the state before the kill, made by the parent. */
static void setup(km_env *env, int op)
{
    char err[256];
    pool_p = pool_of(env, "p");
    pool_q = pool_of(env, "q");
    key_a = km_key_find(env, pool_p, "a");
    key_b = km_key_find(env, pool_p, "b");
    key_z = km_key_find(env, pool_q, "z");
    km_lease l;
    /* Some debt on a's windows and on its model m's (set-limits carries
     * it over). */
    for (int i = 0; i < 5; i++) {
        km_request r = {.pool = pool_p, .key_id = "a", .tokens = 100, .model = "m"};
        if (km_acquire(env, &r, &l) == KM_OK)
            km_release(env, &l, NULL);
    }
    if (op == OP_ADD_REUSE) { /* no free row: the add must reuse r's */
        if (km_key_add(env, pool_p, "{\"id\": \"f0\", \"secret\": \"sk-fault-f0f0-0010\"}", err,
                       sizeof err) < 0 ||
            km_key_add(env, pool_p, "{\"id\": \"f1\", \"secret\": \"sk-fault-f1f1-0011\"}", err,
                       sizeof err) < 0 ||
            km_key_remove(env, km_key_find(env, pool_p, "r")) != KM_OK)
            bail_out("setup reuse: %s", err);
    }
    if (op == OP_ENABLE && km_key_set_state(env, key_a, KM_KEY_DISABLED) != KM_OK)
        bail_out("setup enable");
    if (op == OP_CREATE || op == OP_RESTORE) {
        snprintf(other, sizeof other, "kmt-fault-new-%ld", (long)getpid());
        km_unlink(other);
    }
    if (op == OP_RESTORE && !snapshot &&
        km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, snapkey, &snapshot) != KM_OK)
        bail_out("snapshot");
}

/* The writer, in the child. */
static int run_op(km_env *e, int op)
{
    char err[256];
    km_config *cfg = NULL;
    km_env *ne = NULL;
    int rc;
    switch (op) {
    case OP_ADD:
    case OP_ADD_REUSE:
        rc = km_key_add(e, pool_p, NEW_KEY, err, sizeof err);
        return rc >= 0 ? 0 : 10;
    case OP_REMOVE:
        return km_key_remove(e, key_a) == KM_OK ? 0 : 11;
    case OP_WEIGHT:
        return km_key_set_weight(e, key_b, 5) == KM_OK ? 0 : 12;
    case OP_LIMITS:
        return km_key_set_limits(e, key_a,
                                 "{\"rpm\": 600, \"tpm\": {\"limit\": 50000, \"mode\": \"sliding\"}}",
                                 err, sizeof err) == KM_OK ? 0 : 13;
    case OP_MLIMITS:
        return km_key_set_model_limits(e, key_a, "m",
                                       "{\"rpm\": 600, \"tpm\": {\"limit\": 50000, \"mode\": \"sliding\"}}",
                                       err, sizeof err) == KM_OK ? 0 : 20;
    case OP_ENABLE:
        return km_key_set_state(e, key_a, KM_KEY_ACTIVE) == KM_OK ? 0 : 14;
    case OP_DISABLE:
        return km_key_set_state(e, key_a, KM_KEY_DISABLED) == KM_OK ? 0 : 15;
    case OP_CREATE:
        if (km_config_parse(CFG, strlen(CFG), "t", &cfg, err, sizeof err) != KM_OK)
            return 16;
        rc = km_create(other, cfg, 0, &ne);
        km_config_free(cfg);
        km_close(ne);
        return rc == KM_OK ? 0 : 17;
    case OP_RESTORE:
        rc = km_restore(other, snapshot, strlen(snapshot), snapkey, 0, &ne, err, sizeof err);
        km_close(ne);
        return rc == KM_OK ? 0 : 18;
    default: /* the recoveries: a reap finds the dead intent */
        return km_reap(e, NULL) == KM_OK ? 0 : 19;
    }
}

/* Fork a writer (with a slot, or without one) that dies at point `target`
 * (or at `label`).  Returns 1 if it was killed, 0 if it finished; bails out
 * on anything else. */
static int writer_dies(int op, int target, const char *label, int slotless)
{
    fault_arm(target, label);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        km_env *e;
        /* As kmctl opens (no reap at attach: the recoveries below are the
         * reap itself, under the hook). */
        int rc = km_open_flags(seg, KM_OPEN_NO_REAP | (slotless ? KM_OPEN_NO_SLOT : 0), &e);
        if (rc != KM_OK)
            _exit(2);
        km_set_admin_timeout(e, 2000);
        km__fault_hook = fault_hook;
        rc = run_op(e, op);
        km__fault_hook = NULL;
        km_close(e);
        _exit(rc);
    }
    return fault_reaped(pid, op_name[op], target);
}

/* km_check, its lines as diagnostics. */
static void report(void *ctx, const char *line)
{
    diag("  %s: %s", (const char *)ctx, line);
}

/* The reader rows inside a section, as diagnostics (what a grace period
 * that timed out waited for). */
static void stalled_rows(km_env *e)
{
    km_info inf;
    km_epoch_info ep;
    if (km_info_get(e, &inf) != KM_OK || km_epoch_info_get(e, &ep) != KM_OK)
        return;
    diag("  epoch %" PRIu64 ", synced %" PRIu64, ep.epoch, ep.synced);
    for (int s = 0; s < (int)inf.cap_procs; s++)
        for (int r = 0; r < (int)ep.rows_per_process; r++) {
            km_reader_info ri;
            if (km_reader_info_get(e, s, r, &ri) == KM_OK)
                diag("  slot %d row %d: pid %u tid %u alive %d epoch %" PRIu64 " behind %" PRIu64
                     " inside %" PRIu64 " ms", s, r, ri.pid, ri.tid, ri.alive, ri.epoch,
                     ri.epochs_behind, ri.inside_ns / 1000000);
        }
}

/* Is `needle` anywhere in the segment's memory? */
static int in_segment(km_env *env, const char *needle)
{
    return memmem(env->seg.base, env->seg.map_size, needle, strlen(needle)) != NULL;
}

/* Temporaries in /dev/shm for segment `name`: how many, and whether each
 * is described as a temporary of a dead creator. */
static int temporaries(const char *name, int *all_dead)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    int n = 0;
    *all_dead = 1;
    while (d && (de = readdir(d)) != NULL) {
        const char *t = strrchr(de->d_name, '.');
        km_segment_desc sd;
        if (strncmp(de->d_name, ".kmtmp.", 7) || !t || strcmp(t + 1, name) != 0)
            continue;
        n++;
        if (km_segment_describe(de->d_name, &sd) != KM_OK || sd.kind != KM_SEG_TEMPORARY ||
            sd.creator_alive || strcmp(sd.target, name) != 0)
            *all_dead = 0;
    }
    if (d)
        closedir(d);
    return n;
}

/* Keys present among IDS, in pool p. */
static int present(km_env *env)
{
    int n = 0;
    for (size_t i = 0; i < sizeof IDS / sizeof IDS[0]; i++)
        n += km_key_find(env, pool_p, IDS[i]) >= 0;
    return n + (km_key_find(env, pool_q, "z") >= 0);
}

/* Add keys until KM_EFULL: how many fit. */
static int fill(km_env *env)
{
    char js[128], err[256];
    int n = 0, rc;
    for (int i = 0; i < CAP + 2; i++) {
        snprintf(js, sizeof js, "{\"id\": \"fill%d\", \"secret\": \"sk-fault-fill-%04d\"}", i, i);
        if ((rc = km_key_add(env, pool_q, js, err, sizeof err)) < 0)
            return rc == KM_EFULL ? n : -100 + rc;
        n++;
    }
    return n;
}

/* The outcome of op (killed or not) once recovered: "" or what is wrong. */
static const char *outcome(km_env *env, int op, int killed)
{
    static char why[160];
    km_lease l;
    km_key_info ki;
    int n = km_key_find(env, pool_p, "n");
    km_request pin = {.pool = pool_p};
    why[0] = '\0';
    switch (op) {
    case OP_ADD:
    case OP_ADD_REUSE:
    case OP_RECOVER_ADD:
        if (n < 0) {
            if (in_segment(env, NEW_SECRET))
                return "the undone key's secret is still in the segment";
            if (!killed && op != OP_RECOVER_ADD)
                return "the add finished but the key is absent";
        } else {
            pin.key_id = "n";
            if (km_acquire(env, &pin, &l) != KM_OK || strcmp(l.secret, NEW_SECRET) != 0)
                return "the added key is not handed out with its secret";
            km_release(env, &l, NULL);
        }
        break;
    case OP_REMOVE:
        pin.key_id = "a";
        if (km_key_find(env, pool_p, "a") >= 0 || km_acquire(env, &pin, &l) != KM_ENOKEY)
            return "the removed key is still there";
        break;
    case OP_WEIGHT:
        ki = info(env, key_b);
        if (ki.weight != 1 && ki.weight != 5)
            snprintf(why, sizeof why, "weight %u, neither old (1) nor new (5)", ki.weight);
        if (!killed && ki.weight != 5)
            return "the re-weight finished but the weight is old";
        break;
    case OP_LIMITS:
    case OP_RECOVER_LIMITS:
        ki = info(env, key_a);
        if (ki.limits[KM_WIN_RPM].limit != 100000 && ki.limits[KM_WIN_RPM].limit != 600)
            snprintf(why, sizeof why, "rpm %" PRIu64 ", neither old nor new", ki.limits[KM_WIN_RPM].limit);
        else if ((ki.limits[KM_WIN_RPM].limit == 600) != (ki.limits[KM_WIN_TPM].limit == 50000))
            return "half the new limits";
        else if (!killed && ki.limits[KM_WIN_RPM].limit != 600)
            return "the change finished but the limits are old";
        else if (km__keys(env)[key_a].updating)
            return "the key is still skipped (updating)";
        pin.key_id = "a";
        if (!why[0] && km_acquire(env, &pin, &l) != KM_OK)
            return "the key is not handed out";
        if (!why[0])
            km_release(env, &l, NULL);
        break;
    case OP_MLIMITS:
    case OP_RECOVER_MLIMITS: {
        km_limit_info ml[KM_WIN_COUNT];
        uint32_t own = 0;
        if (km_model_info_get(env, pool_p, 0, key_a, NULL, ml) != KM_OK ||
            km_model_own_get(env, pool_p, 0, key_a, &own) != KM_OK)
            return "the model's limits are unreadable";
        if (ml[KM_WIN_RPM].limit != 100000 && ml[KM_WIN_RPM].limit != 600)
            snprintf(why, sizeof why, "model rpm %" PRIu64 ", neither old nor new", ml[KM_WIN_RPM].limit);
        else if ((ml[KM_WIN_RPM].limit == 600) != (ml[KM_WIN_TPM].limit == 50000) ||
                 (ml[KM_WIN_RPM].limit == 600) != (own != 0))
            return "half the new model limits";
        else if (!killed && ml[KM_WIN_RPM].limit != 600)
            return "the change finished but the model limits are old";
        else if (km__keys(env)[key_a].updating)
            return "the key is still skipped (updating)";
        pin.key_id = "a";
        pin.model = "m";
        if (!why[0] && km_acquire(env, &pin, &l) != KM_OK)
            return "the key is not handed out for the model";
        if (!why[0])
            km_release(env, &l, NULL);
        break;
    }
    case OP_ENABLE:
    case OP_DISABLE:
        ki = info(env, key_a);
        if (ki.state != (op == OP_ENABLE ? KM_KEY_ACTIVE : KM_KEY_DISABLED))
            snprintf(why, sizeof why, "state %s after %s", km_key_state_name(ki.state), op_name[op]);
        break;
    case OP_CREATE:
    case OP_RESTORE: {
        km_env *ne = NULL;
        int dead, rc = km_open(other, &ne);
        km_close(ne);
        if (killed && rc != KM_ENOENT)
            snprintf(why, sizeof why, "after the kill km_open says %s, not ENOENT", E(rc));
        else if (!killed && rc != KM_OK)
            snprintf(why, sizeof why, "after a full run km_open says %s", E(rc));
        else if (killed && temporaries(other, &dead) > 1)
            return "more than one temporary";
        else if (killed && temporaries(other, &dead) == 1 && !dead)
            return "the temporary is not described as a dead creator's";
        if (why[0] || !killed)
            break;
        km_config *cfg = NULL;
        char err[256];
        if (op == OP_CREATE) {
            km_config_parse(CFG, strlen(CFG), "t", &cfg, err, sizeof err);
            rc = km_create(other, cfg, 0, &ne);
            km_config_free(cfg);
        } else {
            rc = km_restore(other, snapshot, strlen(snapshot), snapkey, 0, &ne, err, sizeof err);
        }
        if (rc != KM_OK)
            snprintf(why, sizeof why, "a new create/restore of the name: %s", E(rc));
        else if (km_check(ne, NULL, NULL) != 0)
            return "the new segment is not clean";
        else if (temporaries(other, &dead) != 0)
            return "a temporary survived the new create";
        km_close(ne);
        break;
    }
    default:
        break;
    }
    return why;
}

/* One death and its recovery; returns 1 if all is well. */
static int one_case(int op, int target, int *killed_out, char *where, size_t wlen)
{
    km_env *env = mkseg(CFG);
    km_lease held;
    int slotless = target & 1, ok_all = 1, killed;
    setup(env, op);
    /* A lease out on b throughout (reclamation, checks with leases out). */
    km_request rb = {.pool = pool_p, .key_id = "b", .tokens = 10};
    if (km_acquire(env, &rb, &held) != KM_OK)
        bail_out("lease on b");
    if (op == OP_RECOVER_ADD || op == OP_RECOVER_LIMITS || op == OP_RECOVER_MLIMITS) {
        /* First a writer dies mid-way, then a reaper dies at `target`. */
        if (!writer_dies(op == OP_RECOVER_ADD      ? OP_ADD
                         : op == OP_RECOVER_LIMITS ? OP_LIMITS
                                                   : OP_MLIMITS,
                         0, op == OP_RECOVER_ADD ? "add.row.active" : "limits.rescaled", 0))
            bail_out("%s: the first writer was not killed", op_name[op]);
    }
    killed = writer_dies(op, target, NULL, slotless);
    *killed_out = killed;
    snprintf(where, wlen, "%s", killed ? fs->where : "(none)");

    /* The trigger, in turn: the next writer, a reap, an attach. */
    const char *trig = "";
    if (op != OP_CREATE && op != OP_RESTORE) {
        char at[96];
        snprintf(at, sizeof at, "%s @%s", op_name[op], where);
        trig = fault_trigger(env, target, key_z, at, &ok_all);
    }
    km_reap(env, NULL); /* the dead writer's process slot */
    char ctx[96];
    snprintf(ctx, sizeof ctx, "%s @%s after %s", op_name[op], where, trig);
    int v = km_check(env, report, ctx);
    if (v != 0)
        ok_all = 0, diag("%s: km_check: %d violations", ctx, v);
    const char *why = outcome(env, op, killed);
    if (why[0])
        ok_all = 0, diag("%s: %s", ctx, why);
    if (km_release(env, &held, NULL) != KM_OK)
        ok_all = 0, diag("%s: the lease on b did not release", ctx);
    /* No capacity lost: the rows the present keys leave all fill. */
    int want = CAP - present(env), got = fill(env);
    if (got != want)
        ok_all = 0, diag("%s: %d keys fit, %d rows should be free", ctx, got, want);
    if (km_check(env, report, ctx) != 0)
        ok_all = 0, diag("%s: km_check after the fill", ctx);
    rmseg(env);
    if (other[0])
        km_unlink(other);
    return ok_all;
}

static void t_every_point(void)
{
    every_point(OP_N, op_name, min_points, 200, one_case);
}

/* ---------------------------------------------------------- random kills */

#define WORKERS 3
typedef struct rnd_sh {
    uint64_t ops[WORKERS], bad_acq[WORKERS], bad_rel[WORKERS];
    int stop;
} rnd_sh;

static void rnd_worker(void *arg, int w)
{
    rnd_sh *sh = arg;
    km_env *e;
    if (km_open(seg, &e) != KM_OK)
        _exit(3);
    int p = km_pool_find(e, "p");
    while (!ck_pr_load_int(&sh->stop)) {
        /* Every other request names the model whose limits writers change
         * on single keys. */
        km_request r = {.pool = p, .tokens = 10, .model = sh->ops[w] % 2 ? "m" : NULL};
        km_lease l;
        int rc = km_acquire(e, &r, &l);
        if (rc != KM_OK) {
            if (rc != KM_EAGAIN && rc != KM_EUNAVAIL)
                ck_pr_inc_64(&sh->bad_acq[w]);
            continue;
        }
        if (sh->ops[w] % 8 == 0)
            sched_yield();
        if (km_release(e, &l, NULL) != KM_OK)
            ck_pr_inc_64(&sh->bad_rel[w]);
        ck_pr_inc_64(&sh->ops[w]);
    }
    km_close(e);
    _exit(0);
}

static void rnd_writer(unsigned seed)
{
    km_env *e;
    if (km_open_flags(seg, (seed & 1) ? KM_OPEN_NO_SLOT : 0, &e) != KM_OK)
        _exit(3);
    km_set_admin_timeout(e, 300);
    int p = km_pool_find(e, "p");
    srand(seed);
    for (unsigned i = 0;; i++) {
        char js[160], err[256];
        int ki = km_pool_key(e, p, rand() % 8);
        switch (rand() % 7) {
        case 0:
        case 1:
            snprintf(js, sizeof js, "{\"id\": \"w%u-%u\", \"secret\": \"sk-rand-%08u-%04u\"}", seed, i,
                     seed, i);
            km_key_add(e, p, js, err, sizeof err);
            break;
        case 2:
            if (ki >= 0)
                km_key_remove(e, ki);
            break;
        case 3:
            if (ki >= 0)
                km_key_set_weight(e, ki, 1 + (uint32_t)(rand() % 7));
            break;
        case 4:
            if (ki >= 0)
                km_key_set_limits(e, ki, rand() % 2 ? "{\"tpm\": 50000000}" : "{\"tpm\": null}",
                                  err, sizeof err);
            break;
        case 5:
            if (ki >= 0)
                km_key_set_model_limits(e, ki, "m",
                                        rand() % 2 ? "{\"tpm\": 50000000}" : "{\"tpm\": null}", err,
                                        sizeof err);
            break;
        default:
            if (ki >= 0)
                km_key_set_state(e, ki, rand() % 3 ? KM_KEY_ACTIVE : KM_KEY_DISABLED);
        }
    }
}

static void t_random_kills(void)
{
    const char *ts = getenv("KM_TORTURE_S");
    double secs = ts ? atof(ts) : 3;
    km_env *env = mkseg("{\"capacity\": {\"keys\": 12, \"inflight_per_key\": 4, \"processes\": 16},"
                        " \"pools\": [{\"name\": \"p\", \"strategy\": \"round_robin\","
                        "  \"limits\": {\"rpm\": 100000000},"
                        "  \"model_limits\": \"per_model\", \"models\": {\"m\": {\"rpm\": 100000000}},"
                        "  \"keys\": [{\"id\": \"k0\", \"secret\": \"sk-rand-k0-00000000\"},"
                        "            {\"id\": \"k1\", \"secret\": \"sk-rand-k1-00000001\"},"
                        "            {\"id\": \"k2\", \"secret\": \"sk-rand-k2-00000002\"}]}]}");
    rnd_sh *sh = shared_map(sizeof *sh);
    pid_t wk[WORKERS];
    workers_start(wk, WORKERS, rnd_worker, sh);
    unsigned kills = kill_writers(secs, rnd_writer);
    ck_pr_store_int(&sh->stop, 1);
    int wbad = workers_wait(wk, WORKERS);
    uint64_t ops = 0, bada = 0, badr = 0;
    for (int w = 0; w < WORKERS; w++)
        ops += sh->ops[w], bada += sh->bad_acq[w], badr += sh->bad_rel[w];
    diag("random kills: %.1f s, %u writers killed, %" PRIu64 " leases, %" PRIu64
         " dead intents resolved", secs, kills, ops, km__intent_of(env)->recovered);
    ok(kills >= 50, "random kills: %u writers killed mid-reconfiguration", kills);
    is_int(wbad, 0, "random kills: every worker ran to the end");
    ok(ops > 1000, "random kills: workers completed %" PRIu64 " leases", ops);
    is_u64(bada, 0, "random kills: acquire failed only with EAGAIN/EUNAVAIL");
    is_u64(badr, 0, "random kills: every release returned KM_OK");
    km_reap(env, NULL);
    is_int(ck_pr_load_32(&km__intent_of(env)->op), KM__OP_NONE, "random kills: no intent left after a reap");
    is_int(km_check(env, report, "random kills"), 0, "random kills: km_check clean");
    /* Every row usable: removed rows come back after a grace period, and the
     * rest are live keys in their lists. */
    char js[128], err[256];
    int added = 0;
    for (int i = 0; i < 12; i++) {
        snprintf(js, sizeof js, "{\"id\": \"after%d\", \"secret\": \"sk-rand-after-%04d\"}", i, i);
        int k = km_key_add(env, km_pool_find(env, "p"), js, err, sizeof err);
        if (k < 0) {
            diag("random kills: km_key_add after%d: %s: %s", i, km_strerror(k), err);
            stalled_rows(env);
            break;
        }
        added++;
    }
    km_info inf;
    km_info_get(env, &inf);
    km_pool_info pi;
    km_pool_info_get(env, 0, &pi);
    is_int(pi.n_keys, 12, "random kills: keys added until full fill all 12 rows (%d added)", added);
    is_int(km_check(env, report, "random kills, full"), 0, "random kills: km_check clean when full");
    munmap(sh, sizeof *sh);
    rmseg(env);
}

int main(void)
{
    fixtures_init("fault");
    fault_init();
    for (size_t i = 0; i < sizeof snapkey; i++)
        snapkey[i] = (unsigned char)(i * 7 + 1);
    plan(3 * OP_N + 9);
    t_every_point();
    t_random_kills();
    free(snapshot);
    return exit_status();
}
