/*
 * tools/kmctl/cmd_presets.c - kmctl presets: the provider presets a pool
 * can name ("preset": "groq"), as the library has them: compiled in, or
 * the file KEYMESH_PRESETS names.  Read through km_presets_json(), so kmctl
 * shows exactly what a configuration parsed in the same environment gets.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

const char usage_presets[] =
    "Usage: kmctl presets [PROVIDER] [--json]\n"
    "\n"
    "List the provider presets a pool takes with \"preset\" (and \"tier\"):\n"
    "the published limits of every provider, or of PROVIDER alone, one row\n"
    "per provider, tier and model:\n"
    "  PROVIDER, TIER  what a pool's \"preset\" and \"tier\" name\n"
    "  MODEL           a model the preset limits; \"(all models)\": limits\n"
    "                  on the key as a whole (the pool's \"limits\")\n"
    "  RPM .. TPD      the windows' limits (only windows some row has);\n"
    "                  \"-\": none\n"
    "then where each tier's figures were read (SOURCE) and when (READ).\n"
    "The presets are those compiled into the library, or the file\n"
    "KEYMESH_PRESETS names (the first line says which).  Notes on what each\n"
    "figure covers are in the --json document.\n"
    "\n"
    "Options:\n"
    "  -j, --json   print one JSON document instead (docs/kmctl.md):\n"
    "               \"presets_schema\", \"origin\" and \"providers\", as\n"
    "               km_presets_json() gives them (docs/config.md, Presets)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 listed; 1 the KEYMESH_PRESETS file cannot be read or is\n"
    "malformed; 2 usage error (also an unknown PROVIDER: the message names\n"
    "the known ones).\n"
    "\n"
    "Example:\n"
    "  kmctl presets groq\n";

static const opt_spec presets_optv[] = {OPT_FLAG("json", 'j', 1, flag_opts, on)};

const cmd_syntax presets_syntax = {usage_presets, "[PROVIDER]", presets_optv,
                                   N_OPTS(presets_optv)};

/* A window's limit as the table shows it: "30", or "40000 sliding burst
 * 5000" for one written as {"limit", "mode", "burst"}. */
static void limit_cell(json_t *v, char *b, size_t n)
{
    if (json_is_integer(v)) {
        snprintf(b, n, "%lld", (long long)json_integer_value(v));
        return;
    }
    json_t *mode = json_object_get(v, "mode"), *burst = json_object_get(v, "burst");
    int k = snprintf(b, n, "%lld", (long long)json_integer_value(json_object_get(v, "limit")));
    if (json_is_string(mode) && k >= 0 && (size_t)k < n)
        k += snprintf(b + k, n - (size_t)k, " %s", json_string_value(mode));
    if (json_is_integer(burst) && k >= 0 && (size_t)k < n)
        snprintf(b + k, n - (size_t)k, " burst %lld", (long long)json_integer_value(burst));
}

/* One row of the limits table. */
static void limits_row(table *t, const char *prov, const char *tier, const char *model,
                       json_t *windows, const int *shown)
{
    tbl_cell(t, "%s", prov);
    tbl_cell(t, "%s", tier);
    tbl_cell(t, "%s", model);
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        if (!shown[w])
            continue;
        json_t *v = json_object_get(windows, km_window_name(w));
        char b[96];
        if (v)
            limit_cell(v, b, sizeof b);
        tbl_cell(t, "%s", v ? b : "-");
    }
}

/* Does any tier of `provs` give window w, on the key or on a model? */
static int window_used(json_t *provs, int w)
{
    const char *pn, *tn, *mn;
    json_t *p, *t, *m;
    json_object_foreach(provs, pn, p) {
        json_object_foreach(json_object_get(p, "tiers"), tn, t) {
            if (json_object_get(json_object_get(t, "limits"), km_window_name(w)))
                return 1;
            json_object_foreach(json_object_get(t, "models"), mn, m)
                if (json_object_get(m, km_window_name(w)))
                    return 1;
        }
    }
    return 0;
}

static int print_table(const char *origin, json_t *provs)
{
    int shown[KM_WIN_COUNT], ncols = 3, rc;
    const char *pn, *tn, *mn;
    json_t *p, *t, *m, *s;
    table lim, src;
    size_t i;

    for (int w = 0; w < KM_WIN_COUNT; w++)
        ncols += shown[w] = window_used(provs, w);
    tbl_init(&lim, (size_t)ncols);
    tbl_cell(&lim, "PROVIDER");
    tbl_cell(&lim, "TIER");
    tbl_cell(&lim, "MODEL");
    for (int w = 0; w < KM_WIN_COUNT; w++)
        if (shown[w]) {
            char up[8];
            const char *nm = km_window_name(w);
            size_t k = 0;
            for (; nm[k] && k + 1 < sizeof up; k++)
                up[k] = (char)toupper((unsigned char)nm[k]);
            up[k] = '\0';
            tbl_cell(&lim, "%s", up);
        }
    tbl_init(&src, 4);
    tbl_cell(&src, "PROVIDER");
    tbl_cell(&src, "TIER");
    tbl_cell(&src, "READ");
    tbl_cell(&src, "SOURCE");
    json_object_foreach(provs, pn, p) {
        json_object_foreach(json_object_get(p, "tiers"), tn, t) {
            json_t *l = json_object_get(t, "limits");
            if (json_object_size(l) > 0)
                limits_row(&lim, pn, tn, "(all models)", l, shown);
            json_object_foreach(json_object_get(t, "models"), mn, m)
                limits_row(&lim, pn, tn, mn, m, shown);
            json_array_foreach(json_object_get(t, "sources"), i, s) {
                tbl_cell(&src, "%s", pn);
                tbl_cell(&src, "%s", tn);
                tbl_cell(&src, "%s", json_string_value(json_object_get(s, "read")));
                tbl_cell(&src, "%s", json_string_value(json_object_get(s, "url")));
            }
        }
    }
    printf("presets: %s\n\n", origin);
    rc = tbl_print(&lim, "");
    if (rc == EX_SUCCESS) {
        putchar('\n');
        rc = tbl_print(&src, "");
    }
    tbl_free(&lim);
    tbl_free(&src);
    return flush_stdout(rc);
}

int cmd_presets(int argc, char **argv)
{
    flag_opts json = {0};
    char err[512], *text = NULL;
    json_error_t jerr;
    int rc;

    if ((rc = parse_args(&presets_syntax, argc, argv, &json)) >= 0)
        return rc;
    const char *provider = optind < argc ? argv[optind] : NULL;
    rc = km_presets_json(provider, &text, err, sizeof err);
    if (rc == KM_EINVAL && provider) {
        /* An unknown provider: a usage error, with the library's list. */
        const char *known = strstr(err, "(known: ");
        return usage_error("unknown provider '%.64s'%s%s", provider, known ? " " : "",
                           known ? known : "");
    }
    if (rc != KM_OK) {
        int e = errno;
        errline("%s", err[0] ? err : err_text(rc, e));
        return EX_FAILED;
    }
    json_t *all = json_loads(text, 0, &jerr);
    free(text);
    if (!all) {
        errline("cannot read the library's presets document: %s", jerr.text);
        return EX_FAILED;
    }
    json_t *provs = json_object_get(all, "providers");
    const char *origin = json_string_value(json_object_get(all, "origin"));
    if (json.on) {
        json_t *d = jdoc("presets", NULL, NULL);
        if (d) {
            json_object_set(d, "presets_schema", json_object_get(all, "presets_schema"));
            json_object_set_new(d, "origin", jstr(origin ? origin : ""));
            json_object_set(d, "providers", provs);
        }
        json_decref(all);
        return jemit(d);
    }
    rc = print_table(origin ? origin : "", provs);
    json_decref(all);
    return rc;
}
