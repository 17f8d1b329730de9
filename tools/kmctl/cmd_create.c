/*
 * tools/kmctl/cmd_create.c - kmctl create, and the segment permissions it
 * and restore set (--mode, --group) and every command explains (KM_EACCES),
 * and what an object that is no segment is (KM_ENOTREADY, KM_ENOTKM).
 */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmctl.h"

/* ---------------------------------------------------------- permissions */

int seg_chgrp(const char *name, const char *group)
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

void explain_access(const char *name)
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

/* A --mode a segment may not have: -1 if `mode` is fine, else the exit
 * status of the refusal (status 2, as any bad option value).  The library
 * refuses the same (KM_EINVAL, see km_create); this says why.  With
 * `force` a world-writable mode is accepted; the set-id and sticky bits
 * never are (the kernel ignores them on a segment, and the line printed
 * would claim bits the object does not have). */
int mode_refused(unsigned mode, int force)
{
    if (mode & ~0777u)
        return usage_error("--mode %04o: the setuid, setgid and sticky bits (%04o) have no meaning "
                           "on a segment and are refused; give permission bits only (e.g. 0600, or "
                           "0660 with --group)",
                           mode, mode & ~0777u);
    if ((mode & 0002u) && !force)
        return usage_error("--mode %04o makes the segment world-writable: any local user could "
                           "change its keys and limits and read every secret in it; use 0600, or "
                           "0660 with --group, or add --force if that is really meant",
                           mode);
    return -1;
}

int explain_object(const char *name)
{
    km_segment_desc d;
    if (km_segment_describe(name, &d) != KM_OK || d.kind != KM_SEG_FOREIGN)
        return 0;
    const char *n = name[0] == '/' ? name + 1 : name;
    if (d.size_bytes == 0)
        errline("segment '%s': an empty shared-memory object (0 bytes, mode %04o, uid %" PRIu32
                "), not a KeyMesh segment: another program's, or a creation that died before "
                "sizing it; remove it with 'kmctl destroy --force %s' or 'rm /dev/shm/%s'",
                name, (unsigned)d.mode, d.uid, n, n);
    else
        errline("segment '%s': not a KeyMesh segment: an object of %" PRIu64 " bytes (mode %04o, "
                "uid %" PRIu32 ") without KeyMesh's header, another program's or a creation by "
                "an older KeyMesh that died; if it is no one's, remove it with 'kmctl destroy "
                "--force %s'",
                name, d.size_bytes, (unsigned)d.mode, d.uid, n);
    return 1;
}

/* ---------------------------------------------------------------- create */

const char usage_create[] =
    "Usage: kmctl create NAME --config FILE [--mode OCTAL [--force]] [--group NAME]\n"
    "                    [--json]\n"
    "       kmctl create NAME --from-env PROVIDERS [--mode OCTAL [--force]]\n"
    "                    [--group NAME] [--json]\n"
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
    "  -m, --mode OCTAL           permission bits of the segment (default 0600);\n"
    "                             the segment holds the secrets, so a world-\n"
    "                             writable mode (o+w, e.g. 0666) is refused\n"
    "                             unless --force, and setuid, setgid and sticky\n"
    "                             bits (e.g. 4777) always are.  The line printed\n"
    "                             gives the mode the segment has\n"
    "  -f, --force                accept a world-writable --mode\n"
    "  -g, --group NAME           give the segment to group NAME, so that with\n"
    "                             --mode 0660 its members' workers can attach\n"
    "  -j, --json                 print what was created as one JSON document\n"
    "                             (docs/kmctl.md) instead of a line\n"
    "  -h, --help                 show this help\n"
    "\n"
    "Exit status: 0 created; 1 invalid configuration (the message names\n"
    "FILE:LINE:COLUMN, the field or the variable), unreadable FILE, NAME\n"
    "already exists or another failure; 2 usage error (a refused --mode\n"
    "too).\n"
    "\n"
    "Examples:\n"
    "  kmctl create llm --config pool.json --mode 0660\n"
    "  NUM_OPENAI=2 OPENAI_API_KEY_1=sk-... OPENAI_API_KEY_2=sk-... \\\n"
    "      kmctl create llm --from-env openai\n";

typedef struct create_opts {
    const char *config;
    const char *from_env;
    const char *group;
    unsigned mode;
    int json;
    int force;
} create_opts;

static const opt_spec create_optv[] = {
    OPT_STR("config", 'c', 1, create_opts, config),
    OPT_STR("from-env", 'e', 1, create_opts, from_env),
    OPT_MODE("mode", 'm', 1, create_opts, mode),
    OPT_STR("group", 'g', 1, create_opts, group),
    OPT_FLAG("json", 'j', 1, create_opts, json),
    OPT_FLAG("force", 'f', 1, create_opts, force),
};

const cmd_syntax create_syntax = {usage_create, "NAME", create_optv, N_OPTS(create_optv)};

int created(km_env *env, const char *kind, const char *name, const km_info *info, unsigned mode,
            const char *from, int json)
{
    /* The mode the object has (as stat shows it), not the one asked for. */
    km_segment_desc sd;
    if (km_segment_describe(name, &sd) == KM_OK)
        mode = sd.mode;
    if (json) {
        char m[8];
        snprintf(m, sizeof m, "%04o", mode);
        json_t *d = jdoc(kind, name, env);
        if (d && json_object_update_new(d, json_pack("{s:o, s:o, s:o, s:s}", "pools",
                                                 ju64(info->n_pools), "keys", ju64(info->n_keys),
                                                 "size_bytes", ju64(info->size_bytes), "mode",
                                                 m)) < 0) {
            json_decref(d);
            d = NULL;
        }
        if (d && from)
            json_object_set_new(d, "from", jstr(from));
        return jemit(d);
    }
    printf("%s segment '%s'%s%s: %" PRIu32 " pool%s, %" PRIu32 " key%s, %" PRIu64
           " bytes, mode %04o\n",
           strcmp(kind, "create") == 0 ? "created" : "restored", name, from ? " from " : "",
           from ? from : "", info->n_pools, info->n_pools == 1 ? "" : "s", info->n_keys,
           info->n_keys == 1 ? "" : "s", info->size_bytes, mode);
    return flush_stdout(EX_SUCCESS);
}

/* km_config_from_env's warnings: names of variables, never values. */
static void create_warning(void *ctx, const char *msg)
{
    (void)ctx;
    errline("warning: %s", msg);
}

int cmd_create(int argc, char **argv)
{
    create_opts o = {NULL, NULL, NULL, 0600, 0, 0};
    km_config *cfg = NULL;
    km_env *env = NULL;
    km_info info;
    char err[1024];
    int rc;

    if ((rc = parse_args(&create_syntax, argc, argv, &o)) >= 0)
        return rc;
    if (o.config && o.from_env)
        return usage_error("give either --config or --from-env, not both");
    if (!o.config && !o.from_env)
        return usage_error("missing --config FILE or --from-env PROVIDERS");
    if ((rc = mode_refused(o.mode, o.force)) >= 0)
        return rc;
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
    rc = km_create(name, cfg, o.mode | (o.force ? KM_MODE_FORCE : 0), &env);
    km_config_free(cfg); /* wipes the secrets of the parsed copy */
    if (rc != KM_OK) {
        int e = errno;
        /* Not found here means a bad name (e.g. a directory in it), not a
         * missing segment: a failed create is always status 1. */
        errline("segment '%s': %s", name, err_text(rc, e));
        return EX_FAILED;
    }
    if (o.group && (rc = seg_chgrp(name, o.group)) != EX_SUCCESS) {
        km_close(env);
        km_unlink(name); /* nothing half made is left behind */
        return rc;
    }
    int out = EX_SUCCESS;
    if (km_info_get(env, &info) == KM_OK)
        out = created(env, "create", name, &info, o.mode ? o.mode : 0600, NULL, o.json);
    rc = km_close(env);
    if (rc != KM_OK)
        return seg_error(name, rc);
    return out;
}
