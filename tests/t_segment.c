/*
 * tests/t_segment.c - creating, attaching to and validating segments.
 *
 * Every attach to a damaged or foreign object runs in a forked child, so a
 * crash (SIGBUS on a truncated object, SIGSEGV on a bad offset) is reported
 * as a failed assertion naming the signal instead of killing the test.
 * White-box: the header is edited through a separate mmap of /dev/shm/<name>
 * using the layout in shm/seg.h.
 *
 * Issue 17: private segments (a memfd: no name, sealed, a forked child
 * attaches through the descriptor, a snapshot restores into one); read-only
 * and slotless handles on a full process table (readers work, every writer
 * says KM_EREADONLY, no byte written, no slot taken); temporaries (a
 * create sweeps a dead creator's, never a live one's) and
 * km_segment_describe.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "internal.h"
#include "tap.h"

/* ------------------------------------------------ segment names and cleanup */

#define MAX_NAMES 24
static char names[MAX_NAMES][64];
static int n_names;
static pid_t main_pid;

/* "kmt-seg-<tag>-<pid>", remembered for unlinking at exit. */
static const char *seg_name(const char *tag)
{
    if (n_names == MAX_NAMES)
        bail_out("too many segment names");
    snprintf(names[n_names], sizeof names[0], "kmt-seg-%s-%ld", tag, (long)getpid());
    return names[n_names++];
}

static void unlink_all(void)
{
    if (getpid() != main_pid)
        return; /* a forked helper never removes the parent's segments */
    for (int i = 0; i < n_names; i++)
        km_unlink(names[i]); /* ENOENT for the ones already gone: fine */
}

static void on_signal(int sig)
{
    unlink_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static const char *CFG =
    "{\"capacity\": {\"keys\": 4, \"processes\": 8, \"pools\": 2, \"inflight_per_key\": 8},"
    " \"pools\": [{\"name\": \"p\", \"strategy\": \"round_robin\","
    "   \"keys\": [{\"id\": \"k0\", \"secret\": \"sk-test-00000000\"},"
    "              {\"id\": \"k1\", \"secret\": \"sk-test-11111111\"}]}]}";

static km_config *parse(const char *json)
{
    km_config *cfg = NULL;
    char err[256] = "";
    int rc = km_config_parse(json, strlen(json), "test", &cfg, err, sizeof err);
    if (rc != KM_OK)
        bail_out("km_config_parse: %s: %s", km_err_name(rc), err);
    return cfg;
}

static km_env *create(const char *name)
{
    km_config *cfg = parse(CFG);
    km_env *env = NULL;
    int rc = km_create(name, cfg, 0, &env);
    km_config_free(cfg);
    if (rc != KM_OK)
        bail_out("km_create %s: %s", name, km_err_name(rc));
    return env;
}

/* ------------------------------------------------------ attach in a child */

#define RC_SIGNAL 1000 /* open_in_child: 1000 + signal number */

/* km_open(name) in a forked child; returns its code, or RC_SIGNAL + sig if
 * the child died of a signal. */
static int open_in_child(const char *name)
{
    int st;
    pid_t p;

    fflush(stdout);
    fflush(stderr);
    p = fork();
    if (p < 0)
        bail_out("fork: %s", strerror(errno));
    if (p == 0) {
        km_env *e = NULL;
        int rc = km_open(name, &e);
        if (rc == KM_OK)
            km_close(e);
        _exit(rc <= 0 ? -rc : 100);
    }
    while (waitpid(p, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(st))
        return RC_SIGNAL + WTERMSIG(st);
    return WEXITSTATUS(st) == 100 ? 1 : -WEXITSTATUS(st);
}

/* Name of a code, or of the signal that killed the child. */
static const char *rcname(int rc)
{
    static char buf[8][48];
    static int i;
    char *b = buf[i++ % 8];

    if (rc >= RC_SIGNAL)
        snprintf(b, sizeof buf[0], "signal %d (%s)", rc - RC_SIGNAL, strsignal(rc - RC_SIGNAL));
    else if (rc > 0)
        snprintf(b, sizeof buf[0], "positive %d", rc);
    else
        snprintf(b, sizeof buf[0], "%s", km_err_name(rc));
    return b;
}

/* Map /dev/shm/<name> read-write; *size gets its size. */
static void *map_object(const char *name, size_t *size, int *fd_out)
{
    char path[128];
    struct stat st;
    void *p;
    int fd;

    snprintf(path, sizeof path, "/dev/shm/%s", name);
    fd = open(path, O_RDWR);
    if (fd < 0 || fstat(fd, &st) != 0)
        bail_out("open %s: %s", path, strerror(errno));
    p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        bail_out("mmap %s: %s", path, strerror(errno));
    *size = (size_t)st.st_size;
    if (fd_out)
        *fd_out = fd;
    else
        close(fd);
    return p;
}

/* A shm object that is not ours: `len` bytes of `fill`. */
static void make_object(const char *name, size_t len, int fill)
{
    char nm[128], buf[4096];
    int fd;

    snprintf(nm, sizeof nm, "/%s", name);
    fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        bail_out("shm_open %s: %s", nm, strerror(errno));
    memset(buf, fill, sizeof buf);
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof buf ? len - done : sizeof buf;
        ssize_t w = write(fd, buf, n);
        if (w <= 0)
            bail_out("write %s: %s", nm, strerror(errno));
        done += (size_t)w;
    }
    close(fd);
}

/* ------------------------------------------------------------------- tests */

static void test_versions_and_errors(void)
{
    static const int codes[] = {
#define CODE(name, val, msg) KM_##name,
        KM_ERRNO_MAP(CODE)
#undef CODE
    };
    static const char *const expect[] = {
#define NAME(name, val, msg) #name,
        KM_ERRNO_MAP(NAME)
#undef NAME
    };
    const size_t n = sizeof codes / sizeof codes[0];
    int bad_msg = 0, bad_name = 0, dup = 0;

    is_int(km_format_version(), KM_FORMAT_VERSION, "km_format_version() == KM_FORMAT_VERSION");
    is_str(km_version(), KM_VERSION_STRING, "km_version() == KM_VERSION_STRING");
    {
        int maj = -1, min = -1, pat = -1;
        sscanf(km_version(), "%d.%d.%d", &maj, &min, &pat);
        is_int(km_version_number(), KM_VERSION_NUMBER, "km_version_number() == KM_VERSION_NUMBER");
        is_int(km_version_number(), maj * 10000 + min * 100 + pat,
               "km_version_number() is MAJOR*10000+MINOR*100+PATCH of km_version() %s", km_version());
    }

    for (size_t i = 0; i < n; i++) {
        const char *m = km_strerror(codes[i]), *nm = km_err_name(codes[i]);
        if (!m || !*m || strcmp(m, "unknown error") == 0) {
            diag("km_strerror(%d) = %s", codes[i], m ? m : "(null)");
            bad_msg++;
        }
        if (!nm || strcmp(nm, expect[i]) != 0) {
            diag("km_err_name(%d) = %s, expected %s", codes[i], nm ? nm : "(null)", expect[i]);
            bad_name++;
        }
        for (size_t j = 0; j < i; j++)
            if (nm && km_err_name(codes[j]) && strcmp(nm, km_err_name(codes[j])) == 0)
                dup++;
    }
    is_int(bad_msg, 0, "km_strerror: a non-empty known message for all %zu codes", n);
    is_int(bad_name, 0, "km_err_name: the map's name for all %zu codes", n);
    is_int(dup, 0, "km_err_name: names are distinct");
    ok(km_strerror(KM_OK) != NULL && km_err_name(KM_OK) != NULL, "KM_OK has a message and a name");
    is_str(km_err_name(-9999), "UNKNOWN", "km_err_name of an unknown code");
    is_str(km_strerror(-9999), "unknown error", "km_strerror of an unknown code");
}

static void test_names(void)
{
    char long_name[301];
    km_config *cfg = parse(CFG);
    km_env *env = NULL;

    memset(long_name, 'x', 300);
    long_name[300] = '\0';
    is_str(rcname(km_create("a/b", cfg, 0, &env)), "ENAME", "km_create(\"a/b\") -> ENAME");
    is_str(rcname(km_create("", cfg, 0, &env)), "ENAME", "km_create(\"\") -> ENAME");
    is_str(rcname(km_create(long_name, cfg, 0, &env)), "ENAME", "km_create(300 chars) -> ENAME");
    ok(env == NULL, "no handle returned by a failed km_create");
    is_str(rcname(km_open("a/b", &env)), "ENAME", "km_open(\"a/b\") -> ENAME");
    km_config_free(cfg);
}

static void test_create_open(void)
{
    const char *name = seg_name("main");
    char path[128], slashed[80];
    struct stat st;
    km_env *env, *env2 = NULL;
    km_info info;
    km_config *cfg;
    int rc;

    is_str(rcname(km_open(name, &env2)), "ENOENT", "km_open of a missing name -> ENOENT");
    env = create(name);

    snprintf(path, sizeof path, "/dev/shm/%s", name);
    rc = stat(path, &st);
    is_int(rc, 0, "segment object exists at %s", path);
    is_int(rc == 0 ? (int)(st.st_mode & 07777) : -1, 0600, "segment mode is 0600 (octal 600 = 384)");

    memset(&info, 0, sizeof info);
    is_int(km_info_get(env, &info), KM_OK, "km_info_get");
    is_int(info.format, KM_FORMAT_VERSION, "info.format");
    is_u64(info.size_bytes, (uint64_t)st.st_size, "info.size_bytes == object size");
    is_int(info.cap_keys, 4, "info.cap_keys from the config");
    is_int(info.cap_procs, 8, "info.cap_procs from the config");
    is_int(info.cap_inflight, 8, "info.cap_inflight from the config");
    is_int(info.n_pools, 1, "info.n_pools");
    is_int(info.n_keys, 2, "info.n_keys");
    is_int(info.n_procs, 1, "info.n_procs == 1 after km_create");

    cfg = parse(CFG);
    is_str(rcname(km_create(name, cfg, 0, &env2)), "EEXIST", "km_create on an existing name -> EEXIST");
    snprintf(slashed, sizeof slashed, "/%s", name);
    is_str(rcname(km_create(slashed, cfg, 0, &env2)), "EEXIST", "km_create(\"/name\") is the same name -> EEXIST");
    km_config_free(cfg);
    ok(env2 == NULL, "no handle returned by km_create after EEXIST");
    /* The existing segment is intact after the refused create. */
    is_str(rcname(open_in_child(name)), "OK", "the existing segment still opens");
    is_str(rcname(open_in_child(slashed)), "OK", "km_open(\"/name\") opens the same segment");

    /* A second process attaches: n_procs 2 while it is attached, 1 after. */
    {
        int pfd[2], st2;
        char c;
        pid_t p;

        if (pipe(pfd) != 0)
            bail_out("pipe: %s", strerror(errno));
        fflush(stdout);
        p = fork();
        if (p == 0) {
            km_env *e = NULL;
            close(pfd[0]);
            if (km_open(name, &e) != KM_OK)
                _exit(1);
            c = 'a';
            if (write(pfd[1], &c, 1) != 1)
                _exit(2);
            /* Stay attached until the parent closes its end. */
            close(pfd[1]);
            usleep(300 * 1000);
            km_close(e);
            _exit(0);
        }
        close(pfd[1]);
        c = 0;
        if (read(pfd[0], &c, 1) == 1 && c == 'a') {
            km_info_get(env, &info);
            is_int(info.n_procs, 2, "n_procs == 2 while a child is attached");
        } else {
            ok(0, "child attached");
        }
        close(pfd[0]);
        waitpid(p, &st2, 0);
        is_int(WIFEXITED(st2) ? WEXITSTATUS(st2) : 128 + WTERMSIG(st2), 0, "child exit status");
        km_info_get(env, &info);
        is_int(info.n_procs, 1, "n_procs back to 1 after the child's km_close");
    }

    /* The process table as the readers show it: our own slot, and
     * KM_ENOSLOT (not KM_ENOENT, which names a missing segment) for every
     * free slot and for every reader row while no acquire runs. */
    {
        km_proc_info pi;
        km_reader_info ri;
        km_epoch_info ei;
        int mine = 0, free_slots = 0, idle = 0, other = 0;
        km_info_get(env, &info);
        for (int s = 0; s < (int)info.cap_procs; s++) {
            rc = km_proc_info_get(env, s, &pi);
            if (rc == KM_OK && pi.pid == (uint32_t)getpid() && pi.alive)
                mine++;
            else if (rc == KM_ENOSLOT)
                free_slots++;
            else
                other++;
        }
        is_int(mine, 1, "km_proc_info_get: our own slot, alive");
        is_int(free_slots + 1, (int)info.cap_procs, "km_proc_info_get: KM_ENOSLOT for the %d free slots (%d other)",
               (int)info.cap_procs - 1, other);
        is_int(km_epoch_info_get(env, &ei), KM_OK, "km_epoch_info_get");
        for (int s = 0; s < (int)info.cap_procs; s++)
            for (int r = 0; r < (int)ei.rows_per_process; r++)
                idle += km_reader_info_get(env, s, r, &ri) == KM_ENOSLOT;
        is_int(idle, (int)(info.cap_procs * ei.rows_per_process),
               "km_reader_info_get: KM_ENOSLOT for every idle row (%u rows per process)", ei.rows_per_process);
    }

    is_int(km_close(env), KM_OK, "km_close");
    is_int(km_unlink(name), KM_OK, "km_unlink");
    is_str(rcname(km_open(name, &env2)), "ENOENT", "km_open after km_unlink -> ENOENT");
    ok(access(path, F_OK) != 0, "object gone from /dev/shm after km_unlink");
}

/* Permissions: mode honoured exactly (not masked by the umask), a process
 * without access gets EACCES, a failed create leaves no object behind. */
static void test_mode_access(void)
{
    const char *name = seg_name("mode"), *bad = seg_name("badcfg");
    char path[128];
    struct stat st;
    km_config *cfg = parse(CFG);
    km_env *env = NULL;
    mode_t old = umask(077);
    int rc = km_create(name, cfg, 0640, &env);

    umask(old);
    is_str(rcname(rc), "OK", "km_create with mode 0640 under umask 077");
    snprintf(path, sizeof path, "/dev/shm/%s", name);
    is_int(stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1, 0640,
           "mode 0640 honoured exactly (octal 640 = 416)");
    km_close(env);
    km_unlink(name);

    /* Modes a segment holding secrets may not have: refused, not masked,
     * and nothing left behind; o+w only with KM_MODE_FORCE. */
    static const unsigned refused[] = {04777, 02770, 01600, 0666, 0602, 0777};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        env = NULL;
        rc = km_create(name, cfg, refused[i], &env);
        ok(rc == KM_EINVAL && !env && access(path, F_OK) != 0,
           "km_create mode %04o -> EINVAL, no object (got %s)", refused[i], rcname(rc));
    }
    rc = km_create(name, cfg, 04666 | KM_MODE_FORCE, &env);
    is_str(rcname(rc), "EINVAL", "KM_MODE_FORCE does not admit a setuid bit");
    env = NULL;
    old = umask(077);
    rc = km_create(name, cfg, 0666 | KM_MODE_FORCE, &env);
    umask(old);
    is_int(rc == KM_OK && stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1, 0666,
           "0666 | KM_MODE_FORCE: created with mode 0666 exactly (%s)", rcname(rc));
    km_close(env);
    km_unlink(name);

    env = NULL;
    rc = km_create(name, cfg, 0, &env);
    if (rc != KM_OK)
        bail_out("km_create: %s", km_err_name(rc));
    /* A process of another user: as root, a child that drops to nobody;
     * otherwise the object's permission bits are cleared. */
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        km_env *e = NULL;
        if (geteuid() == 0) {
            if (setgid(65534) != 0 || setuid(65534) != 0)
                _exit(99);
        } else if (chmod(path, 0) != 0) {
            _exit(98);
        }
        rc = km_open(name, &e);
        _exit(rc <= 0 ? -rc : 100);
    }
    int wst;
    waitpid(p, &wst, 0);
    rc = WIFEXITED(wst) ? -WEXITSTATUS(wst) : RC_SIGNAL + WTERMSIG(wst);
    is_str(rcname(rc), "EACCES", "km_open by a process without access -> EACCES");
    chmod(path, 0600);
    km_close(env);
    km_unlink(name);

    /* White-box: a configuration km_create must refuse (0 lease slots per
     * key) leaves no object behind. */
    cfg->cap_inflight = 0;
    env = NULL;
    rc = km_create(bad, cfg, 0, &env);
    ok(rc != KM_OK, "km_create refuses cap_inflight 0 (got %s)", rcname(rc));
    snprintf(path, sizeof path, "/dev/shm/%s", bad);
    ok(access(path, F_OK) != 0, "a failed km_create leaves no object behind");
    if (rc == KM_OK)
        km_close(env);
    km_config_free(cfg);
}

static void test_foreign_objects(void)
{
    const char *garbage = seg_name("garbage"), *empty = seg_name("empty");
    const char *tiny = seg_name("tiny");
    int rc;

    make_object(garbage, 4096, 0xa5);
    is_str(rcname(open_in_child(garbage)), "ENOTKM", "4096 bytes of garbage -> ENOTKM");

    make_object(empty, 0, 0);
    rc = open_in_child(empty);
    ok(rc == KM_ENOTREADY || rc == KM_ENOTKM,
       "zero-length object -> ENOTREADY or ENOTKM (got %s)", rcname(rc));

    make_object(tiny, 5, 0xa5);
    rc = open_in_child(tiny);
    ok(rc == KM_ENOTKM || rc == KM_ETRUNC || rc == KM_ENOTREADY,
       "5-byte object -> ENOTKM, ETRUNC or ENOTREADY (got %s)", rcname(rc));
}

/* Edit one header field of a real segment, check km_open's answer, restore
 * it and check the segment opens again (so the field was the cause). */
static void test_header_fields(void)
{
    const char *name = seg_name("hdr");
    km_env *env = create(name);
    size_t size;
    km__hdr *h = map_object(name, &size, NULL);
    uint64_t saved64;
    uint32_t saved32;

    is_str(rcname(open_in_child(name)), "OK", "intact segment opens");

    saved32 = h->format;
    h->format = KM_FORMAT_VERSION + 1;
    is_str(rcname(open_in_child(name)), "EFORMAT", "format field changed -> EFORMAT");
    h->format = saved32;

    saved64 = h->layout_sig;
    h->layout_sig ^= 0x10;
    is_str(rcname(open_in_child(name)), "ELAYOUT", "layout_sig changed -> ELAYOUT");
    h->layout_sig = saved64;

    saved64 = h->magic;
    h->magic ^= UINT64_C(0x0100000000000000);
    is_str(rcname(open_in_child(name)), "ENOTKM", "magic changed -> ENOTKM");
    h->magic = 0;
    {
        int rc = open_in_child(name);
        ok(rc == KM_ENOTREADY || rc == KM_ENOTKM,
           "magic zero (not yet published) -> ENOTREADY or ENOTKM (got %s)", rcname(rc));
    }
    h->magic = saved64;

    saved64 = h->seg_size;
    h->seg_size = size + 4096;
    is_str(rcname(open_in_child(name)), "ETRUNC", "seg_size larger than the object -> ETRUNC");
    h->seg_size = saved64;

    is_str(rcname(open_in_child(name)), "OK", "restored segment opens again");
    munmap(h, size);
    km_close(env);
    km_unlink(name);
}

static void test_truncated(void)
{
    const char *name = seg_name("trunc");
    km_env *env = create(name);
    size_t size;
    int fd;
    km__hdr *h;
    uint64_t seg_size;

    /* Detach first: our own mapping would fault on the cut pages. */
    km_close(env);
    h = map_object(name, &size, &fd);
    seg_size = h->seg_size;
    munmap(h, size);
    is_u64(seg_size, size, "header seg_size == object size");

    if (ftruncate(fd, (off_t)(seg_size - 4096)) != 0)
        bail_out("ftruncate: %s", strerror(errno));
    is_str(rcname(open_in_child(name)), "ETRUNC", "object one page shorter than seg_size -> ETRUNC, no SIGBUS");

    if (ftruncate(fd, 4096) != 0)
        bail_out("ftruncate: %s", strerror(errno));
    is_str(rcname(open_in_child(name)), "ETRUNC", "object cut to 4096 bytes -> ETRUNC, no SIGBUS");

    if (ftruncate(fd, 100) != 0)
        bail_out("ftruncate: %s", strerror(errno));
    is_str(rcname(open_in_child(name)), "ETRUNC", "object cut inside the header (100 bytes) -> ETRUNC, no SIGBUS");
    close(fd);
    km_unlink(name);
}

/* Room to grow: km_struct_size gives the library's sizeof of every public
 * struct (what the bindings compare with at load), 0 for an unknown id;
 * and every reserved word of what the library fills is zero, whatever the
 * caller's buffer held before. */
static int all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

static void test_growth(void)
{
    static const struct { int id; size_t size; const char *name; } st[] = {
#define ST(ID, T) {ID, sizeof(T), #T}
        ST(KM_ST_REQUEST, km_request), ST(KM_ST_LEASE, km_lease), ST(KM_ST_OUTCOME, km_outcome),
        ST(KM_ST_HTTP_RESPONSE, km_http_response), ST(KM_ST_INFO, km_info),
        ST(KM_ST_LIMIT_INFO, km_limit_info), ST(KM_ST_POOL_INFO, km_pool_info),
        ST(KM_ST_KEY_INFO, km_key_info), ST(KM_ST_EPOCH_INFO, km_epoch_info),
        ST(KM_ST_READER_INFO, km_reader_info), ST(KM_ST_PROC_INFO, km_proc_info),
        ST(KM_ST_REAP_REPORT, km_reap_report), ST(KM_ST_USAGE_EVENT, km_usage_event),
        ST(KM_ST_USAGE_REPORT, km_usage_report), ST(KM_ST_WINDOW_STATS, km_window_stats),
        ST(KM_ST_STATS_COUNTERS, km_stats_counters), ST(KM_ST_KEY_STATS, km_key_stats),
        ST(KM_ST_POOL_STATS, km_pool_stats), ST(KM_ST_MODEL_STATS, km_model_stats),
        ST(KM_ST_SEGMENT_DESC, km_segment_desc),
#undef ST
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++)
        if (km_struct_size(st[i].id) != st[i].size) {
            diag("km_struct_size(%d) = %zu, sizeof(%s) = %zu", st[i].id, km_struct_size(st[i].id),
                 st[i].name, st[i].size);
            bad++;
        }
    is_int(bad, 0, "km_struct_size: sizeof of each of the %d public structs",
           (int)(sizeof st / sizeof st[0]));
    ok(sizeof st / sizeof st[0] == KM_ST_COUNT - 1 && km_struct_size(0) == 0 &&
           km_struct_size(-1) == 0 && km_struct_size(KM_ST_COUNT) == 0,
       "km_struct_size: every id up to KM_ST_COUNT listed here; 0 for an unknown id");

    const char *name = seg_name("grow");
    km_env *env = create(name);
    km_request rq = {.pool = km_pool_find(env, "p")};
    km_lease l;
    km_info in;
    km_pool_info pi;
    km_key_info ki;
    km_proc_info pr;
    km_epoch_info ei;
    km_reap_report rr;
    memset(&l, 0xa5, sizeof l);
    memset(&in, 0xa5, sizeof in);
    memset(&pi, 0xa5, sizeof pi);
    memset(&ki, 0xa5, sizeof ki);
    memset(&pr, 0xa5, sizeof pr);
    memset(&ei, 0xa5, sizeof ei);
    memset(&rr, 0xa5, sizeof rr);
    int rc = km_acquire(env, &rq, &l);
    is_int(rc, KM_OK, "grow: km_acquire into a poisoned lease");
    int z = rc == KM_OK && all_zero(l.reserved, sizeof l.reserved);
    if (rc == KM_OK)
        km_release(env, &l, NULL);
    ok(z, "grow: km_acquire zeroes km_lease.reserved");
    int slot = -1;
    for (int s = 0; s < 8 && slot < 0; s++)
        if (km_proc_info_get(env, s, &pr) == KM_OK)
            slot = s;
    int lim = 1;
    for (int w = 0; w < KM_WIN_COUNT; w++)
        lim &= km_key_info_get(env, 0, &ki) == KM_OK && ki.limits[w].reserved0 == 0 &&
               all_zero(ki.limits[w].reserved, sizeof ki.limits[w].reserved);
    ok(km_info_get(env, &in) == KM_OK && all_zero(in.reserved, sizeof in.reserved) &&
           km_pool_info_get(env, rq.pool, &pi) == KM_OK && all_zero(pi.reserved, sizeof pi.reserved) &&
           km_key_info_get(env, 0, &ki) == KM_OK && all_zero(ki.reserved, sizeof ki.reserved) && lim &&
           slot >= 0 && all_zero(pr.reserved, sizeof pr.reserved) &&
           km_epoch_info_get(env, &ei) == KM_OK && all_zero(ei.reserved, sizeof ei.reserved) &&
           km_reap(env, &rr) == KM_OK && all_zero(rr.reserved, sizeof rr.reserved),
       "grow: the info getters and km_reap zero their reserved room (limits' reserved0 too)");
    km_close(env);
    km_unlink(name);
}

/* ------------------------------------------------ private, read-only, named */

/* Private segments (issue 17, item 3): no name, a descriptor children use. */
static void test_private(void)
{
    km_config *cfg = parse(CFG);
    km_env *env = NULL, *named;
    int rc = km_create_private(cfg, &env);
    km_config_free(cfg);
    is_str(rcname(rc), "OK", "km_create_private");
    if (rc != KM_OK)
        bail_out("km_create_private: %s", km_err_name(rc));
    int fd = km_fd(env);
    ok(fd >= 0, "km_fd of a private segment: a descriptor (%d)", fd);
    char link[256] = "", path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    ok(n > 0 && strncmp(link, "/memfd:keymesh-private", 22) == 0, "it is a memfd (%s)", link);
    ok(ftruncate(fd, 4096) != 0, "sealed: it cannot be truncated under a mapping");
    km_lease l;
    km_request rq = {.pool = 0};
    is_int(km_acquire(env, &rq, &l), KM_OK, "a private segment hands out leases");
    km_release(env, &l, NULL);

    /* A child attaches through the inherited descriptor. */
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        km_env *c = NULL;
        if (km_open_fd(km_fd(env), 0, &c) != KM_OK)
            _exit(1);
        km_lease cl;
        int r = km_acquire(c, &rq, &cl);
        if (r == KM_OK)
            r = km_release(c, &cl, NULL);
        km_close(c);
        _exit(r == KM_OK ? 0 : 2);
    }
    int st;
    waitpid(p, &st, 0);
    is_int(WIFEXITED(st) ? WEXITSTATUS(st) : 100, 0, "a forked child attaches with km_open_fd(km_fd(...)) and acquires");
    km_key_info ki;
    km_key_info_get(env, 0, &ki);
    km_key_info kj;
    km_key_info_get(env, 1, &kj);
    is_u64(ki.acquired + kj.acquired, 2, "the child's lease counted in the same segment");
    is_int(km_open_fd(-1, 0, &named), KM_EINVAL, "km_open_fd(-1): KM_EINVAL");
    int dn = open("/dev/null", O_RDONLY);
    is_str(rcname(km_open_fd(dn, 0, &named)), "ENOTREADY", "km_open_fd of /dev/null: not a segment");
    close(dn);
    km_close(env);

    /* A snapshot restored into a private segment (no name). */
    const char *name = seg_name("priv");
    env = create(name);
    unsigned char key[KM_SNAPSHOT_KEY_BYTES] = {1, 2, 3};
    char *js = NULL, err[256];
    km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &js);
    is_int(km_fd(env), KM_EINVAL, "km_fd of a named segment: KM_EINVAL");
    km_env *r = NULL;
    rc = km_restore(NULL, js ? js : "", js ? strlen(js) : 0, key, 0, &r, err, sizeof err);
    is_str(rcname(rc), "OK", "km_restore with no name: a private segment (%s)", err);
    ok(rc == KM_OK && km_fd(r) >= 0, "the restored one has a descriptor, no name");
    km_close(r);
    free(js);
    km_close(env);
    km_unlink(name);
}

/* The bytes of a mapping, to compare before and after. */
static void *copy_of(km_env *e)
{
    void *c = malloc(e->seg.map_size);
    if (!c)
        bail_out("malloc");
    memcpy(c, e->seg.base, e->seg.map_size);
    return c;
}

static void no_report(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

static int drain_none(void *ctx, const km_usage_event *ev)
{
    (void)ctx;
    (void)ev;
    return 0;
}

/* Read-only and slotless handles (item 4), on a full process table. */
static void test_readonly(void)
{
    const char *name = seg_name("ro");
    km_config *cfg = parse("{\"capacity\": {\"keys\": 4, \"processes\": 1},"
                           " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"k0\", \"secret\": \"sk-test-ro-00000000\"}]}]}");
    km_env *env = NULL, *ro = NULL, *ns = NULL, *x = NULL;
    if (km_create(name, cfg, 0, &env) != KM_OK)
        bail_out("create ro");
    km_config_free(cfg);
    km_lease held;
    km_request rq = {.pool = 0, .tokens = 5};
    km_acquire(env, &rq, &held);
    is_str(rcname(km_open(name, &x)), "EPROCS", "the process table (1 slot) is full");
    is_str(rcname(km_open_flags(name, KM_OPEN_READONLY, &ro)), "OK", "KM_OPEN_READONLY attaches to a full table");
    is_str(rcname(km_open_flags(name, KM_OPEN_NO_SLOT, &ns)), "OK", "KM_OPEN_NO_SLOT attaches to a full table");
    is_str(rcname(km_open_flags(name, 64, &x)), "EINVAL", "an unknown flag: KM_EINVAL");
    if (!ro || !ns)
        bail_out("read-only attach");
    void *before = copy_of(ro);
    km_info inf;
    km_key_info ki;
    km_key_stats ks;
    km_proc_info pi;
    char *js = NULL;
    int reads = km_info_get(ro, &inf) == KM_OK && km_key_info_get(ro, 0, &ki) == KM_OK &&
                km_key_stats_get(ro, 0, &ks, sizeof ks) == KM_OK &&
                km_proc_info_get(ro, 0, &pi) == KM_OK && km_check(ro, no_report, NULL) == 0 &&
                km_snapshot_json(ro, &js) == KM_OK;
    free(js);
    ok(reads, "readers work on a read-only handle (info, stats, proc, check, snapshot)");
    is_int(inf.n_procs, 1, "it takes no process slot (1 attached: the creator)");
    km_lease l;
    unsigned char key[KM_SNAPSHOT_KEY_BYTES] = {0};
    char err[128];
    is_str(rcname(km_acquire(ro, &rq, &l)), "EREADONLY", "read-only: km_acquire");
    is_str(rcname(km_acquire_wait(ro, &rq, &l, 10)), "EREADONLY", "read-only: km_acquire_wait");
    is_str(rcname(km_release(ro, &held, NULL)), "EREADONLY", "read-only: km_release (of another's lease)");
    is_str(rcname(km_key_set_state(ro, 0, KM_KEY_DISABLED)), "EREADONLY", "read-only: km_key_set_state");
    is_str(rcname(km_key_set_weight(ro, 0, 2)), "EREADONLY", "read-only: km_key_set_weight");
    is_str(rcname(km_key_add(ro, 0, "{\"id\": \"k9\", \"secret\": \"sk-test-ro-99999999\"}", err, sizeof err)),
           "EREADONLY", "read-only: km_key_add");
    is_str(rcname(km_reap(ro, NULL)), "EREADONLY", "read-only: km_reap");
    is_str(rcname(km_usage_drain(ro, drain_none, NULL, NULL)), "EREADONLY", "read-only: km_usage_drain");
    is_str(rcname(km_snapshot_json_ex(ro, KM_SNAPSHOT_SECRETS, key, &js)), "EREADONLY",
           "read-only: a snapshot with secrets (it takes the admin lock)");
    ok(memcmp(before, ro->seg.base, ro->seg.map_size) == 0, "the read-only handle wrote no byte of the segment");
    free(before);
    is_str(rcname(km_acquire(ns, &rq, &l)), "EREADONLY", "slotless: km_acquire");
    is_str(rcname(km_release(ns, &held, NULL)), "EREADONLY", "slotless: km_release (of another's lease)");
    is_str(rcname(km_usage_drain(ns, drain_none, NULL, NULL)), "EREADONLY", "slotless: km_usage_drain");
    is_str(rcname(km_key_set_weight(ns, 0, 3)), "OK", "slotless: reconfiguration works");
    is_str(rcname(km_reap(ns, NULL)), "OK", "slotless: km_reap works");
    {   /* km_key_find has no reader row to use on these handles: it must
         * neither store to the read-only mapping nor use the rows of slot 0
         * (the creator's). */
        size_t rows_sz = KM__RDR_PER_PROC * sizeof(km__rdr);
        void *rows = malloc(rows_sz);
        memcpy(rows, km__rdrs(&env->seg, 0), rows_sz);
        is_int(km_key_find(ro, 0, "k0"), 0, "read-only: km_key_find finds k0");
        is_int(km_key_find(ns, 0, "k0"), 0, "slotless: km_key_find finds k0");
        is_str(rcname(km_key_find(ns, 0, "k7")), "ENOKEY", "slotless: km_key_find of an absent id");
        is_int(km_key_find_secret(ro, 0, "sk-test-ro-00000000"), 0, "read-only: km_key_find_secret finds k0");
        is_int(km_key_find_secret(ns, 0, "sk-test-ro-00000000"), 0, "slotless: km_key_find_secret finds k0");
        ok(memcmp(rows, km__rdrs(&env->seg, 0), rows_sz) == 0,
           "slotless lookups left slot 0's reader rows alone");
        free(rows);
        /* While another process adds and removes keys (grace periods, rows
         * reused), a slotless lookup of a key that stays is never wrong. */
        pid_t w = fork();
        if (w == 0) {
            km_env *c = NULL;
            if (km_open_flags(name, KM_OPEN_NO_SLOT, &c) != KM_OK)
                _exit(2);
            for (int i = 0; i < 150; i++) {
                int k = km_key_add(c, 0, "{\"id\": \"t\", \"secret\": \"sk-test-ro-tttttttt\"}", NULL, 0);
                if (k < 0 || km_key_remove(c, k) != KM_OK)
                    _exit(3);
            }
            km_close(c);
            _exit(0);
        }
        int wrong = 0, busy = 0, n = 0, st = 0;
        while (waitpid(w, &st, WNOHANG) == 0) {
            int k = km_key_find(ns, 0, "k0");
            busy += k == KM_EBUSY;
            wrong += k != 0 && k != KM_EBUSY;
            n++;
        }
        is_int(WIFEXITED(st) ? WEXITSTATUS(st) : -1, 0, "a writer added and removed key t 150 times");
        is_int(wrong, 0, "slotless km_key_find of a key that stays: never a wrong answer");
        diag("%d lookups during the reconfiguration, %d KM_EBUSY", n, busy);
    }
    is_str(rcname(km_release(env, &held, NULL)), "OK", "the lease is still its holder's");
    km_close(ro);
    km_close(ns);
    km_info_get(env, &inf);
    is_int(inf.n_procs, 1, "closing them gave back nothing: still 1 attached");
    km_close(env);
    km_unlink(name);
}

/* Temporaries and km_segment_describe / km_segment_sweep (items 2 and 5). */
static void test_temporaries(void)
{
    const char *name = seg_name("tmp"), *foreign = seg_name("foreign");
    char dead[160], live[160];
    km_segment_desc d;
    km_config *cfg = parse(CFG);
    km_env *env = NULL;
    /* A dead creator's temporary: pid of a child that exited. */
    pid_t p = fork();
    if (p == 0)
        _exit(0);
    waitpid(p, NULL, 0);
    snprintf(dead, sizeof dead, ".kmtmp.%d.12345.0.%s", (int)p, name);
    snprintf(live, sizeof live, ".kmtmp.%d.%llu.4000000000.%s", (int)getpid(),
             (unsigned long long)km__pid_start_time((uint32_t)getpid()), name);
    make_object(dead, 4096, 0);
    make_object(live, 4096, 0);
    is_str(rcname(km_create(".kmtmp.1.2.3.x", cfg, 0, &env)), "ENAME", "km_create refuses a temporary's name");
    is_int(km_segment_describe(dead, &d), KM_OK, "describe a temporary");
    ok(d.kind == KM_SEG_TEMPORARY && !d.creator_alive && d.creator_pid == (uint32_t)p &&
           !strcmp(d.target, name) && d.status == KM_ENOTREADY,
       "a dead creator's temporary (kind %d, alive %d, status %s)", d.kind, d.creator_alive, rcname(d.status));
    is_int(km_segment_describe(live, &d), KM_OK, "describe a live creator's temporary");
    ok(d.kind == KM_SEG_TEMPORARY && d.creator_alive, "its creator is alive");
    /* km_create sweeps the dead one, keeps the live one. */
    is_str(rcname(km_create(name, cfg, 0, &env)), "OK", "create while temporaries of the name lie around");
    char p1[200], p2[200];
    snprintf(p1, sizeof p1, "/dev/shm/%s", dead);
    snprintf(p2, sizeof p2, "/dev/shm/%s", live);
    ok(access(p1, F_OK) != 0 && access(p2, F_OK) == 0, "it removed the dead creator's temporary, not the live one's");
    uint32_t removed = 99;
    is_int(km_segment_sweep(name, &removed), KM_OK, "km_segment_sweep");
    is_int(removed, 0, "a live creator's temporary is never swept");
    shm_unlink(live);
    is_int(km_segment_describe(name, &d), KM_OK, "describe a KeyMesh segment");
    ok(d.kind == KM_SEG_KEYMESH && d.status == KM_OK && d.format == KM_FORMAT_VERSION && d.n_keys == 2 &&
           d.attached == 1 && d.alive == 1 && d.cap_procs == 8 && d.mode == 0600,
       "kind, status, format, keys, processes, mode (kind %d status %s keys %u attached %u alive %u)",
       d.kind, rcname(d.status), d.n_keys, d.attached, d.alive);
    memset(&d, 0xa5, sizeof d);
    km_segment_describe(name, &d);
    ok(d.kind == KM_SEG_KEYMESH && all_zero(d.reserved, sizeof d.reserved),
       "km_segment_describe zeroes km_segment_desc.reserved");
    make_object(foreign, 100, 0x5a);
    km_segment_describe(foreign, &d);
    ok(d.kind == KM_SEG_FOREIGN && d.status == KM_ENOTKM && d.size_bytes == 100, "another program's object: FOREIGN");
    is_str(rcname(km_segment_describe("kmt-seg-none-x", &d)), "ENOENT", "describe a missing name: ENOENT");
    km_close(env);
    km_unlink(name);
    km_config_free(cfg);
}

/* A failed attach closes no descriptor of the caller's: a fresh handle's
 * descriptor was 0 (calloc) and km_open of a missing name closed stdin. */
static void test_failed_open_keeps_fds(void)
{
    int fd = dup(0);
    int probe = dup(fd); /* the lowest free number after it */
    close(probe);
    km_env *e = NULL;
    int rc = km_open("kmt-segment-no-such-name", &e);
    is_int(rc, KM_ENOENT, "km_open of a missing name: KM_ENOENT");
    ok(fcntl(0, F_GETFD) != -1, "... and descriptor 0 is still open");
    int again = dup(fd);
    is_int(again, probe, "... and no descriptor number was freed by it");
    close(again);
    close(fd);
}

int main(void)
{
    main_pid = getpid();
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGALRM, on_signal);
    atexit(unlink_all);

    plan(67 + 12 + 31 + 14 + 3 + 8);
    test_versions_and_errors();
    test_names();
    test_create_open();
    test_mode_access();
    test_foreign_objects();
    test_header_fields();
    test_truncated();
    test_growth();
    test_private();
    test_readonly();
    test_temporaries();
    test_failed_open_keeps_fds();
    return exit_status();
}
