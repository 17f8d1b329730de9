/*
 * tools/kmctl/cmd_snapshot.c - kmctl snapshot, restore, keygen and
 * destroy: a segment's state to a file and back, the key that encrypts
 * its secrets, and the end of a segment.
 *
 * snapshot takes no process slot: it attaches read-only, or, with
 * --include-secrets (which takes the admin lock, so that no key row is
 * reused while its secret is read), writable without a slot.  destroy looks
 * at what it removes first (km_segment_describe) and removes only KeyMesh
 * segments and the temporaries of creations that died, unless --force.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmctl.h"

const char usage_snapshot[] =
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

const char usage_restore[] =
    "Usage: kmctl restore NAME FILE (--key-file FILE | --key-env VAR)\n"
    "                     [--mode OCTAL [--force]] [--group NAME] [--json]\n"
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
    "  -m, --mode OCTAL    permissions of the segment (default 0600); as for\n"
    "                      create, a world-writable mode is refused unless\n"
    "                      --force, set-id and sticky bits always are\n"
    "  -f, --force         accept a world-writable --mode\n"
    "  -g, --group NAME    give the segment to group NAME (with --mode 0660)\n"
    "  -j, --json          print what was restored as one JSON document\n"
    "  -h, --help          show this help\n"
    "\n"
    "Exit status: 0 restored; 1 failure (wrong key, altered file, segment\n"
    "exists, ...); 2 usage error.\n"
    "\n"
    "Example:\n"
    "  kmctl restore llm /var/lib/keymesh/llm.json --key-file /etc/keymesh/snapshot.key\n";

const char usage_keygen[] =
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

const char usage_destroy[] =
    "Usage: kmctl destroy NAME [--force]\n"
    "\n"
    "Remove the name of segment NAME.  Processes still attached keep using\n"
    "it until they close; the memory is freed when the last one detaches.\n"
    "Only a KeyMesh segment (of any version) or the temporary of a creation\n"
    "that died (.kmtmp.PID...) is removed; anything else in /dev/shm is\n"
    "refused, with what it is, unless --force.\n"
    "\n"
    "Options:\n"
    "  -f, --force  remove it whatever it is (another program's object, a\n"
    "               temporary whose creator still runs: that creation then\n"
    "               fails); says what it was\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 removed; 1 failure, or refused (not KeyMesh's); 2 usage\n"
    "error; 3 no such segment.\n"
    "\n"
    "Example:\n"
    "  kmctl destroy llm\n";

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

/* Write a snapshot (secrets encrypted under `key` if it is not NULL) to
 * o->out, replaced atomically, or to standard output. */
int emit_snapshot(km_env *env, const char *name, const snap_opts *o,
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

/* The snapshot key from --key-file or --key-env into key[]. */
int load_key(const snap_opts *o, unsigned char key[KM_SNAPSHOT_KEY_BYTES])
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

static const opt_spec snapshot_optv[] = {
    OPT_STR("output", 'o', 1, snap_opts, out),
    OPT_FLAG("include-secrets", 's', 0, snap_opts, secrets),
    OPT_STR("key-file", 'k', 0, snap_opts, key_file),
    OPT_STR("key-env", 'K', 0, snap_opts, key_env),
};

const cmd_syntax snapshot_syntax = {usage_snapshot, "NAME", snapshot_optv,
                                           N_OPTS(snapshot_optv)};

int cmd_snapshot(int argc, char **argv)
{
    snap_opts o = {0};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    km_env *env;
    int rc;

    if ((rc = parse_args(&snapshot_syntax, argc, argv, &o)) >= 0)
        return rc;
    const char *name = argv[optind], *out = o.out;
    if (out && !out[0])
        return usage_error("-o: empty file name");
    if (!o.secrets && (o.key_file || o.key_env))
        return usage_error("--key-file and --key-env go with --include-secrets");
    if (o.secrets && (rc = load_key(&o, key)) >= 0)
        return rc;
    if ((rc = open_seg_as(name, o.secrets ? KM_OPEN_NO_SLOT : KM_OPEN_READONLY, &env)) !=
        EX_SUCCESS)
        return rc;
    rc = emit_snapshot(env, name, &o, o.secrets ? key : NULL);
    explicit_bzero(key, sizeof key);
    km_close(env);
    return rc;
}

/* --------------------------------------------------------------- restore */

static const opt_spec restore_optv[] = {
    OPT_STR("key-file", 'k', 0, snap_opts, key_file),
    OPT_STR("key-env", 'K', 0, snap_opts, key_env),
    OPT_MODE("mode", 'm', 1, snap_opts, mode),
    OPT_STR("group", 'g', 1, snap_opts, group),
    OPT_FLAG("json", 'j', 1, snap_opts, json),
    OPT_FLAG("force", 'f', 1, snap_opts, force),
};

const cmd_syntax restore_syntax = {usage_restore, "NAME FILE", restore_optv,
                                          N_OPTS(restore_optv)};

int cmd_restore(int argc, char **argv)
{
    snap_opts o = {.mode = 0600};
    unsigned char key[KM_SNAPSHOT_KEY_BYTES];
    char err[1024] = "";
    km_env *env = NULL;
    int rc;

    if ((rc = parse_args(&restore_syntax, argc, argv, &o)) >= 0)
        return rc;
    if ((rc = mode_refused(o.mode, o.force)) >= 0)
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
    rc = km_restore(name, buf ? buf : "", len, key, o.mode | (o.force ? KM_MODE_FORCE : 0), &env,
                    err, sizeof err);
    explicit_bzero(key, sizeof key);
    free(buf);
    if (rc != KM_OK) {
        int e = errno;
        errline("segment '%s' from %s: %s", name, file, err[0] ? err : err_text(rc, e));
        return EX_FAILED;
    }
    if (o.group && (rc = seg_chgrp(name, o.group)) != EX_SUCCESS) {
        km_close(env);
        km_unlink(name);
        return rc;
    }
    km_info info;
    rc = EX_SUCCESS;
    if (km_info_get(env, &info) == KM_OK)
        rc = created(env, "restore", name, &info, o.mode, file, o.json);
    km_close(env);
    return rc;
}

/* ---------------------------------------------------------------- keygen */

const cmd_syntax keygen_syntax = {usage_keygen, "FILE", NULL, 0};

int cmd_keygen(int argc, char **argv)
{
    char hex[2 * KM_SNAPSHOT_KEY_BYTES + 2];
    int rc;
    if ((rc = parse_args(&keygen_syntax, argc, argv, NULL)) >= 0)
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

static const opt_spec destroy_optv[] = {OPT_FLAG("force", 'f', 1, flag_opts, on)};

const cmd_syntax destroy_syntax = {usage_destroy, "NAME", destroy_optv, N_OPTS(destroy_optv)};

/* What object d is, in a few words (destroy's messages). */
static void describe_line(const km_segment_desc *d, char *b, size_t n)
{
    char own[96];
    snprintf(own, sizeof own, "%" PRIu64 " bytes, mode %04o, uid %" PRIu32, d->size_bytes,
             (unsigned)d->mode, d->uid);
    switch (d->kind) {
    case KM_SEG_KEYMESH:
        if (d->status == KM_OK)
            snprintf(b, n, "a KeyMesh segment (format %" PRIu32 ", %" PRIu32 " keys, %" PRIu32
                     " of %" PRIu32 " attached processes alive; %s)", d->format, d->n_keys, d->alive,
                     d->attached, own);
        else
            snprintf(b, n, "a KeyMesh segment this kmctl does not read (format %" PRIu32 ": %s; %s)",
                     d->format, km_strerror(d->status), own);
        break;
    case KM_SEG_TEMPORARY:
        snprintf(b, n, "the temporary of a creation of '%s' by pid %" PRIu32 ", %s (%s)", d->target,
                 d->creator_pid, d->creator_alive ? "still running" : "which died", own);
        break;
    case KM_SEG_UNREADABLE:
        snprintf(b, n, "an object this user may not read (%s)", own);
        break;
    default:
        snprintf(b, n, "not a KeyMesh segment: %s (%s)",
                 d->size_bytes ? "no KeyMesh header (another program's, or a creation by an "
                                 "older KeyMesh that died)"
                               : "an empty shared-memory object (another program's, or a "
                                 "creation that died before sizing it)",
                 own);
    }
}

int cmd_destroy(int argc, char **argv)
{
    flag_opts o = {0};
    km_segment_desc d;
    char what[512];
    int rc;
    if ((rc = parse_args(&destroy_syntax, argc, argv, &o)) >= 0)
        return rc;
    const char *name = argv[optind];
    if ((rc = km_segment_describe(name, &d)) != KM_OK)
        return seg_error(name, rc);
    describe_line(&d, what, sizeof what);
    int ours = d.kind == KM_SEG_KEYMESH || (d.kind == KM_SEG_TEMPORARY && !d.creator_alive);
    if (!ours && !o.on) {
        errline("segment '%s': %s; not removed (--force removes it)", name, what);
        return EX_FAILED;
    }
    rc = km_unlink(name);
    if (rc != KM_OK)
        return seg_error(name, rc);
    if (!ours)
        printf("removed '%s': %s\n", name, what);
    return flush_stdout(EX_SUCCESS);
}
