/*
 * tools/kmctl/cmd_repair.c - kmctl reap (release what dead processes left
 * behind) and kmctl check (verify the segment's invariants).
 *
 * Neither takes a process slot, so both work on a full process table: reap
 * attaches writable without one (KM_OPEN_NO_SLOT), check read-only.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>

#include "kmctl.h"

const char usage_reap[] =
    "Usage: kmctl reap NAME [--json]\n"
    "\n"
    "Find the processes attached to segment NAME that died without\n"
    "detaching (killed, crashed) and release what they held: their leases\n"
    "end (counted as abandoned, tokens settled at the estimate) and their\n"
    "process table slots are freed.  A reconfiguration whose writer died\n"
    "(kmctl add-key interrupted, ...) is finished or undone first, and the\n"
    "temporaries of creations of NAME that died are removed.  kmctl takes\n"
    "no process slot for this: it works on a full process table.  Prints\n"
    "one line:\n"
    "  reaped N dead processes, L leases released, R keys recounted\n"
    "with \", P pending\" added when a dead process could not be finished\n"
    "now (a live process was mid-operation on one of its keys; reap again)\n"
    "and \", T temporaries removed\" when there were some.\n"
    "Workers also reap on their own (see docs/kmctl.md); finding nothing\n"
    "dead is not an error.\n"
    "\n"
    "Options:\n"
    "  -j, --json   print the report as one JSON document instead\n"
    "               (docs/kmctl.md) with \"processes\", \"leases\",\n"
    "               \"recounted\", \"pending\", \"repaired\", \"temporaries\"\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 reaped (also when nothing was dead; also when there is\n"
    "no segment NAME but temporaries of its creation were removed); 1\n"
    "failure; 2 usage error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl reap llm\n";

const char usage_check[] =
    "Usage: kmctl check NAME [--quiet] [--json]\n"
    "\n"
    "Verify the invariants of segment NAME: in-flight counts equal the live\n"
    "leases, no lease on a free key slot or held by no attached process,\n"
    "token reservations equal the leases that made them and stay within\n"
    "their bursts, limit words within bounds, pool members valid, and a\n"
    "consistent process table (a process that died without detaching is a\n"
    "violation until it is reaped), and no reconfiguration left half made by\n"
    "a writer that died (a key live outside every member list, a key skipped\n"
    "for good, an interrupted change: kmctl reap finishes or undoes it).\n"
    "kmctl attaches read-only and writes nothing.  Each violation is one\n"
    "line on stdout,\n"
    "\"violation: ...\"; then \"N violations\" on stderr.  Results are exact\n"
    "when the segment is quiet; a key whose leases keep moving is reported\n"
    "as not checked.\n"
    "\n"
    "Options:\n"
    "  -q, --quiet  print only the summary line\n"
    "  -j, --json   print one JSON document instead (docs/kmctl.md):\n"
    "               \"violations\" (the lines) and \"count\"; no summary line\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 no violation; 1 violations found (or the check failed:\n"
    "an error line \"kmctl: check: ...\" says so); 2 usage error; 3 no such\n"
    "segment.\n"
    "\n"
    "Example:\n"
    "  kmctl check llm || kmctl reap llm\n";

/* ------------------------------------------------------------------ reap */

static const opt_spec reap_optv[] = {OPT_FLAG("json", 'j', 1, flag_opts, on)};

const cmd_syntax reap_syntax = {usage_reap, "NAME", reap_optv, N_OPTS(reap_optv)};

int cmd_reap(int argc, char **argv)
{
    flag_opts o = {0};
    km_reap_report r;
    km_env *env;
    uint32_t tmps = 0;
    int rc;

    if ((rc = parse_args(&reap_syntax, argc, argv, &o)) >= 0)
        return rc;
    int json = o.on;
    const char *name = argv[optind];
    if ((rc = km_open_flags(name, KM_OPEN_NO_REAP | KM_OPEN_NO_SLOT, &env)) != KM_OK) {
        /* No segment: a creation of it may have died, leaving a temporary. */
        if (rc == KM_ENOENT && km_segment_sweep(name, &tmps) == KM_OK && tmps) {
            if (json) {
                json_t *d = jdoc("reap", name, NULL);
                if (d)
                    json_object_set_new(d, "temporaries", ju64(tmps));
                return jemit(d);
            }
            printf("no segment '%s'; %" PRIu32 " temporar%s of a creation that died removed\n",
                   name, tmps, tmps == 1 ? "y" : "ies");
            return flush_stdout(EX_SUCCESS);
        }
        return seg_error(name, rc);
    }
    rc = km_reap(env, &r);
    if (rc == KM_OK)
        (void)km_segment_sweep(name, &tmps); /* best effort: reaping is done */
    if (rc != KM_OK) {
        rc = seg_error(name, rc);
        goto out;
    }
    if (json) {
        json_t *d = jdoc("reap", name, env);
        if (d && json_object_update_new(d, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}",
                                                 "processes", ju64(r.processes),
                                                 "leases", ju64(r.leases),
                                                 "recounted", ju64(r.recounted),
                                                 "pending", ju64(r.pending),
                                                 "repaired", ju64(r.repaired),
                                                 "temporaries", ju64(tmps))) < 0) {
            json_decref(d);
            d = NULL;
        }
        rc = jemit(d);
        goto out;
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
        if (tmps)
            printf(", %" PRIu32 " temporar%s removed", tmps, tmps == 1 ? "y" : "ies");
        putchar('\n');
    }
    rc = flush_stdout(EX_SUCCESS);
out:
    km_close(env);
    return rc;
}

/* ----------------------------------------------------------------- check */

typedef struct check_opts {
    int quiet, json;
} check_opts;

static const opt_spec check_optv[] = {OPT_FLAG("quiet", 'q', 1, check_opts, quiet),
                                      OPT_FLAG("json", 'j', 1, check_opts, json)};

const cmd_syntax check_syntax = {usage_check, "NAME", check_optv, N_OPTS(check_optv)};

/* km_check's callback: one violation, one line on stdout. */
static void check_line(void *ctx, const char *line)
{
    (void)ctx;
    printf("violation: %s\n", line);
}

/* ... or one string of the JSON array in ctx. */
static void check_json_line(void *ctx, const char *line)
{
    json_array_append_new(ctx, jstr(line));
}

int cmd_check(int argc, char **argv)
{
    check_opts o = {0};
    const char *name;
    km_env *env;
    int rc, n;

    if ((rc = parse_and_open(&check_syntax, argc, argv, &o, &name, &env)) >= 0)
        return rc;
    if (o.json) {
        json_t *v = json_array(), *d = jdoc("check", name, env);
        n = km_check(env, check_json_line, v);
        if (n < 0) {
            json_decref(v);
            json_decref(d);
            rc = seg_error(name, n);
            goto out;
        }
        if (d) {
            json_object_set_new(d, "count", ju64((uint64_t)n));
            json_object_set_new(d, "violations", v);
        } else {
            json_decref(v);
        }
        rc = jemit(d);
        if (rc == EX_SUCCESS && n)
            rc = EX_FAILED;
        goto out;
    }
    n = km_check(env, o.quiet ? NULL : check_line, NULL);
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
