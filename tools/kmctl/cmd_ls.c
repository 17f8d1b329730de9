/*
 * tools/kmctl/cmd_ls.c - kmctl ls: the KeyMesh segments of this host, and
 * what else lies in /dev/shm beside them.
 *
 * ls refuses nothing and touches nothing.  Every object of /dev/shm is
 * listed, each as km_segment_describe() sees it: a KeyMesh segment (its
 * format, processes, pools and keys), the temporary of a creation (its
 * creator alive or dead), another program's object, an empty object, or one
 * this user may not read (listed with what lstat says).  km_segment_describe
 * reads the first bytes and attaches read-only, without a process slot and
 * without reaping, so ls writes no byte of any segment, works on a full
 * process table, and shows the processes that died as they are.
 *
 * Only regular files are handed to km_segment_describe: opening a FIFO
 * that another user left in /dev/shm (a sticky, world-writable directory)
 * would block, and a symbolic link is not a shared-memory object.
 */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

#define SHM_DIR "/dev/shm"
#define NOTE_MAX 640 /* bytes of a NOTE: two names of KM_SEG_NAME_MAX and words */

const char usage_ls[] =
    "Usage: kmctl ls [--json]\n"
    "\n"
    "List the shared-memory objects of this host (" SHM_DIR "): the KeyMesh\n"
    "segments, and whatever else lies beside them, one row each, by name:\n"
    "  NAME    the object's name (what kmctl's NAME operands take)\n"
    "  KIND    keymesh    a KeyMesh segment\n"
    "          temporary  a creation's temporary (kmctl create or restore\n"
    "                     builds under it, then renames it into place); its\n"
    "                     creator still running, or dead (kmctl reap TARGET\n"
    "                     removes it)\n"
    "          foreign    not KeyMesh's (another program's object)\n"
    "          empty      an object of 0 bytes\n"
    "          unreadable this user may not read it\n"
    "  BYTES   its size\n"
    "  OWNER, GROUP, MODE  its owner, group and permission bits\n"
    "  PROCS   processes attached to the segment (\"-\": not read)\n"
    "  ALIVE   of those, alive (the others died without detaching)\n"
    "  FORMAT  the segment format its header gives (kmctl -V: this kmctl's)\n"
    "  NOTE    pools and keys, why it cannot be read, whose temporary\n"
    "ls refuses nothing and touches nothing: it attaches to a segment\n"
    "read-only (no process slot, no reap, nothing written).\n"
    "\n"
    "Options:\n"
    "  -j, --json   print one JSON document instead (docs/kmctl.md) whose\n"
    "               \"objects\" has one object per entry: {\"name\", \"kind\",\n"
    "               \"type\", \"size_bytes\", \"mode\", \"uid\", \"user\", \"gid\",\n"
    "               \"group\", \"status\", \"segment_format\", ...}\n"
    "  -h, --help   show this help\n"
    "\n"
    "Exit status: 0 listed (also when there is nothing); 1 " SHM_DIR " cannot\n"
    "be read; 2 usage error.\n"
    "\n"
    "Example:\n"
    "  kmctl ls\n";

static const opt_spec ls_optv[] = {OPT_FLAG("json", 'j', 1, flag_opts, on)};

const cmd_syntax ls_syntax = {usage_ls, "", ls_optv, N_OPTS(ls_optv)};

enum ls_kind { LS_KEYMESH, LS_TEMPORARY, LS_FOREIGN, LS_EMPTY, LS_UNREADABLE };

static const char *const kind_name[] = {"keymesh", "temporary", "foreign", "empty",
                                        "unreadable"};

typedef struct ls_row {
    char *name;
    struct stat st;    /* lstat */
    int described;     /* d holds km_segment_describe's answer */
    int err;           /* else why not (KeyMesh error; KM_OK: not a file) */
    int err_errno;
    km_segment_desc d;
    enum ls_kind kind;
} ls_row;

/* What km_segment_describe (or lstat) says the object is. */
static enum ls_kind row_kind(const ls_row *r)
{
    if (!r->described)
        return r->err == KM_EACCES || (r->err == KM_ESYS && r->err_errno == EACCES)
                   ? LS_UNREADABLE
               : r->st.st_size == 0 && S_ISREG(r->st.st_mode) ? LS_EMPTY
                                                                : LS_FOREIGN;
    switch (r->d.kind) {
    case KM_SEG_KEYMESH:
        return LS_KEYMESH;
    case KM_SEG_TEMPORARY:
        return LS_TEMPORARY;
    case KM_SEG_UNREADABLE:
        return LS_UNREADABLE;
    default:
        return r->d.size_bytes == 0 ? LS_EMPTY : LS_FOREIGN;
    }
}

static const char *type_name(mode_t m)
{
    return S_ISREG(m) ? "file" : S_ISDIR(m) ? "directory" : S_ISLNK(m) ? "symlink"
           : S_ISFIFO(m) ? "fifo" : S_ISSOCK(m) ? "socket" : "other";
}

/* Read /dev/shm into *rows, in directory order; an exit status (*rows and
 * *n hold what was read even on failure: free them). */
static int read_rows(ls_row **rows, size_t *n)
{
    size_t cap = 0;
    ls_row *v = NULL;
    struct dirent *de;
    DIR *dir = opendir(SHM_DIR);

    *rows = NULL;
    *n = 0;
    if (!dir) {
        errline("%s: %s", SHM_DIR, strerror(errno));
        return EX_FAILED;
    }
    while ((errno = 0, de = readdir(dir)) != NULL) {
        ls_row r = {0};
        char path[sizeof SHM_DIR + 1 + sizeof de->d_name];
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", SHM_DIR, de->d_name);
        if (lstat(path, &r.st) != 0)
            continue; /* gone since readdir */
        if (S_ISREG(r.st.st_mode)) {
            r.err = km_segment_describe(de->d_name, &r.d);
            r.err_errno = errno;
            if (r.err == KM_ENOENT)
                continue; /* removed meanwhile */
            r.described = r.err == KM_OK;
        }
        r.kind = row_kind(&r);
        if (*n == cap) {
            ls_row *nv = realloc(v, (cap = cap ? 2 * cap : 32) * sizeof *v);
            if (!nv)
                goto oom;
            v = nv;
        }
        if (!(r.name = strdup(de->d_name)))
            goto oom;
        v[(*n)++] = r;
    }
    if (errno) {
        int e = errno;
        closedir(dir);
        *rows = v;
        errline("%s: %s", SHM_DIR, strerror(e));
        return EX_FAILED;
    }
    closedir(dir);
    *rows = v;
    return EX_SUCCESS;
oom:
    closedir(dir);
    *rows = v;
    errline("out of memory");
    return EX_FAILED;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ls_row *)a)->name, ((const ls_row *)b)->name);
}

static void free_rows(ls_row *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* Is the segment's process table (and its format, pools, keys) known? */
static int has_counts(const ls_row *r)
{
    return r->described && r->d.status == KM_OK &&
           (r->kind == LS_KEYMESH || r->kind == LS_TEMPORARY);
}

/* An owner or group by name, or by number when it has none. */
static void id_name(const char *name, uint32_t id, char *b, size_t n)
{
    if (name)
        snprintf(b, n, "%s", name);
    else
        snprintf(b, n, "%" PRIu32, id);
}

static void user_of(uid_t uid, char *b, size_t n)
{
    struct passwd *pw = getpwuid(uid);
    id_name(pw ? pw->pw_name : NULL, (uint32_t)uid, b, n);
}

static void group_of(gid_t gid, char *b, size_t n)
{
    struct group *gr = getgrgid(gid);
    id_name(gr ? gr->gr_name : NULL, (uint32_t)gid, b, n);
}

/* The NOTE column: what else an operator needs to know of the object. */
static void note_of(const ls_row *r, char *b, size_t n)
{
    const km_segment_desc *d = &r->d;
    switch (r->kind) {
    case LS_KEYMESH: {
        if (d->status != KM_OK) {
            snprintf(b, n, "%s", km_strerror(d->status));
            break;
        }
        int k = snprintf(b, n, "%" PRIu32 " pool%s, %" PRIu32 "/%" PRIu32 " keys", d->n_pools,
                         d->n_pools == 1 ? "" : "s", d->n_keys, d->cap_keys);
        uint32_t dead = d->attached - d->alive;
        if (dead && k >= 0 && (size_t)k < n)
            snprintf(b + k, n - (size_t)k, "; %" PRIu32 " dead process%s (kmctl reap %s)", dead,
                     dead == 1 ? "" : "es", r->name);
        break;
    }
    case LS_TEMPORARY:
        if (d->creator_alive)
            snprintf(b, n, "creation of '%s' by pid %" PRIu32 ", running", d->target,
                     d->creator_pid);
        else
            snprintf(b, n, "creation of '%s' by pid %" PRIu32 ", which died (kmctl reap %s)",
                     d->target, d->creator_pid, d->target);
        break;
    case LS_UNREADABLE:
        snprintf(b, n, "this user may not read it");
        break;
    case LS_EMPTY:
        snprintf(b, n, "an empty object");
        break;
    default:
        if (!S_ISREG(r->st.st_mode))
            snprintf(b, n, "a %s, not a shared-memory object", type_name(r->st.st_mode));
        else if (!r->described && r->err == KM_ENAME)
            snprintf(b, n, "not KeyMesh's (a name KeyMesh does not give)");
        else if (!r->described)
            snprintf(b, n, "%s", err_text(r->err, r->err_errno));
        else
            snprintf(b, n, "not KeyMesh's");
    }
}

/* A name as the table shows it: control bytes as '?' (as ls -q does), so
 * another program's odd name cannot break the table or the terminal. */
static void shown_name(const char *s, char *b, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        b[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    b[i] = '\0';
}

static int print_table(const ls_row *v, size_t n)
{
    table t;
    tbl_init(&t, 10);
    static const char *const titles[] = {"NAME",  "KIND",  "BYTES", "OWNER",  "GROUP",
                                         "MODE",  "PROCS", "ALIVE",  "FORMAT", "NOTE"};
    for (size_t i = 0; i < 10; i++)
        tbl_cell(&t, "%s", titles[i]);
    for (size_t i = 0; i < n; i++) {
        const ls_row *r = &v[i];
        char nm[300], user[64], grp[64], note[NOTE_MAX];
        shown_name(r->name, nm, sizeof nm);
        user_of(r->st.st_uid, user, sizeof user);
        group_of(r->st.st_gid, grp, sizeof grp);
        note_of(r, note, sizeof note);
        tbl_cell(&t, "%s", nm);
        tbl_cell(&t, "%s", kind_name[r->kind]);
        tbl_cell(&t, "%" PRIu64, (uint64_t)r->st.st_size);
        tbl_cell(&t, "%s", user);
        tbl_cell(&t, "%s", grp);
        tbl_cell(&t, "%04o", (unsigned)(r->st.st_mode & 07777));
        if (has_counts(r)) {
            tbl_cell(&t, "%" PRIu32, r->d.attached);
            tbl_cell(&t, "%" PRIu32, r->d.alive);
        } else {
            tbl_cell(&t, "-");
            tbl_cell(&t, "-");
        }
        if (r->described && r->d.format)
            tbl_cell(&t, "%" PRIu32, r->d.format);
        else
            tbl_cell(&t, "-");
        tbl_cell(&t, "%s", note);
    }
    int rc = tbl_print(&t, "");
    tbl_free(&t);
    return flush_stdout(rc);
}

/* One object of the "objects" array. */
static json_t *row_json(const ls_row *r)
{
    const km_segment_desc *d = &r->d;
    char user[64], grp[64], mode[8], note[NOTE_MAX];
    user_of(r->st.st_uid, user, sizeof user);
    group_of(r->st.st_gid, grp, sizeof grp);
    snprintf(mode, sizeof mode, "%04o", (unsigned)(r->st.st_mode & 07777));
    note_of(r, note, sizeof note);
    json_t *o = json_pack("{s:o, s:s, s:s, s:o, s:s, s:o, s:o, s:o, s:o}",
                          "name", jstr(r->name),
                          "kind", kind_name[r->kind],
                          "type", type_name(r->st.st_mode),
                          "size_bytes", ju64((uint64_t)r->st.st_size),
                          "mode", mode,
                          "uid", ju64(r->st.st_uid),
                          "user", jstr(user),
                          "gid", ju64(r->st.st_gid),
                          "group", jstr(grp));
    if (!o)
        return NULL;
    /* What a read-only attach answers ("OK", "EFORMAT", ...); null where
     * none was tried (not a file, or a name KeyMesh does not give). */
    json_object_set_new(o, "status", r->described ? json_string(km_err_name(d->status))
                                                  : json_null());
    json_object_set_new(o, "segment_format",
                        r->described && d->format ? ju64(d->format) : json_null());
    int counts = has_counts(r);
    json_object_set_new(o, "processes_attached", counts ? ju64(d->attached) : json_null());
    json_object_set_new(o, "processes_alive", counts ? ju64(d->alive) : json_null());
    json_object_set_new(o, "pools", counts ? ju64(d->n_pools) : json_null());
    json_object_set_new(o, "keys", counts ? ju64(d->n_keys) : json_null());
    json_object_set_new(o, "capacity_keys", counts ? ju64(d->cap_keys) : json_null());
    json_object_set_new(o, "capacity_processes", counts ? ju64(d->cap_procs) : json_null());
    json_object_set_new(o, "created_unix_ms",
                        counts ? ju64(d->created_wall_ns / 1000000) : json_null());
    if (r->kind == LS_TEMPORARY) {
        json_object_set_new(o, "target", jstr(d->target));
        json_object_set_new(o, "creator_pid", ju64(d->creator_pid));
        json_object_set_new(o, "creator_alive", json_boolean(d->creator_alive));
    }
    json_object_set_new(o, "note", jstr(note));
    return o;
}

static int print_json(const ls_row *v, size_t n)
{
    json_t *d = jdoc("ls", NULL, NULL), *a = json_array();
    if (!d || !a) {
        json_decref(d);
        json_decref(a);
        return jemit(NULL);
    }
    json_object_set_new(d, "shm_dir", json_string(SHM_DIR));
    json_object_set_new(d, "taken_unix_ms", ju64(unix_ms_now()));
    for (size_t i = 0; i < n; i++) {
        json_t *o = row_json(&v[i]);
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            json_decref(d);
            return jemit(NULL);
        }
    }
    json_object_set_new(d, "objects", a);
    return jemit(d);
}

int cmd_ls(int argc, char **argv)
{
    flag_opts json = {0};
    ls_row *v;
    size_t n;
    int rc;

    if ((rc = parse_args(&ls_syntax, argc, argv, &json)) >= 0)
        return rc;
    if ((rc = read_rows(&v, &n)) == EX_SUCCESS) {
        qsort(v, n, sizeof *v, by_name);
        rc = json.on ? print_json(v, n) : print_table(v, n);
    }
    free_rows(v, n);
    return rc;
}
