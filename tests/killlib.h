/*
 * tests/killlib.h - killing administrative writers, for the tests built
 * against the fault-injection library (t_fault.c, t_livepool.c; Makefile).
 * On top of testlib.h.
 *
 *   shared_map(n)            n zeroed bytes shared with forked children
 *   fault_init()             at the top of main(): the hook's shared state
 *   fault_arm(target, label) the next writer dies at its target-th KM__FAULT
 *                            point (1-based; 0: none), or at the first
 *                            point named label (NULL: none)
 *   fault_hook               what a writer child sets km__fault_hook to
 *   fault_reaped(pid, what)  wait for the writer: 1 if it was killed at a
 *                            point (fs->where names it), 0 if it exited 0;
 *                            bail_out otherwise
 *   fault_trigger(...)       the next writer, a reap or an attach resolves
 *                            what a dead writer left; the intent is then clear
 *   every_point(...)         for each operation, a case per kill point until
 *                            a run reaches none: three TAP lines each
 *   workers_start/_wait      fork n workers, wait for them (how many failed)
 *   kill_writers(secs, fn)   fork writers running fn(seed) and SIGKILL each
 *                            after 0.2 to 12 ms, for secs; how many
 */
#ifndef KM_TESTS_KILLLIB_H
#define KM_TESTS_KILLLIB_H

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ck_pr.h>

#include "testlib.h"

#ifndef KM_FAULT_INJECTION
#error "killlib.h: build against the fault-injection library (see the Makefile)"
#endif

static inline void *shared_map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        bail_out("mmap");
    memset(p, 0, n);
    return p;
}

/* What the hook shares with the parent. */
typedef struct fault_sh {
    int target;     /* die at this point reached (1-based); 0: never */
    char label[48]; /* ...or at the first point of this name ("" none) */
    char where[48]; /* the point it died at */
} fault_sh;
static fault_sh *fs;
static int fault_hits;

static inline void fault_init(void)
{
    fs = shared_map(sizeof *fs);
}

static inline void fault_arm(int target, const char *label)
{
    memset(fs, 0, sizeof *fs);
    fs->target = target;
    snprintf(fs->label, sizeof fs->label, "%s", label ? label : "");
}

static inline void fault_hook(const char *where)
{
    fault_hits++;
    if ((fs->target && fault_hits == fs->target) || (fs->label[0] && !strcmp(where, fs->label))) {
        snprintf(fs->where, sizeof fs->where, "%s", where);
        raise(SIGKILL);
    }
}

static inline int fault_reaped(pid_t pid, const char *what, int target)
{
    int st;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
        return 1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        bail_out("%s: the writer failed (status %d) with target %d", what, st, target);
    return 0;
}

/* For each operation op < n: one_case(op, target, ...) for target = 1, 2,
 * ... until the writer reaches no point to die at; one_case returns 1 if
 * everything held after that death.  Three TAP lines per operation. */
static inline void every_point(int n, const char *const *names, const int *min_points, int max,
                               int (*one_case)(int op, int target, int *killed, char *where,
                                               size_t wlen))
{
    for (int op = 0; op < n; op++) {
        int points = 0, good = 0, finished = 0, killed;
        char where[48], first[48] = "", last[48] = "";
        for (int target = 1; target < max; target++) {
            int fine = one_case(op, target, &killed, where, sizeof where);
            if (!killed) {
                finished = fine;
                break;
            }
            points++;
            good += fine;
            if (points == 1)
                snprintf(first, sizeof first, "%s", where);
            snprintf(last, sizeof last, "%s", where);
        }
        diag("%s: %d kill points, %s .. %s", names[op], points, first, last);
        ok(points >= min_points[op], "%s: killed at each of its %d points (at least %d)", names[op],
           points, min_points[op]);
        is_int(good, points, "%s: every death finished or undone, check clean, no capacity lost",
               names[op]);
        ok(finished, "%s: uninterrupted, it does what it says", names[op]);
    }
}

/* After a writer's death, one of three things resolves what it left, by
 * target % 3: the next writer (a re-weight of key `next`: its lock returns
 * EOWNERDEAD), a reap, or another process's attach.  Then the intent must
 * be clear.  Returns the trigger's name; *fine = 0 (with a diagnostic)
 * if something failed.  `ctx`: the operation and point, for messages. */
static inline const char *fault_trigger(km_env *env, int target, int next, const char *ctx,
                                        int *fine)
{
    const char *trig;
    switch (target % 3) {
    case 0:
        trig = "next writer";
        if (km_key_set_weight(env, next, 2) != KM_OK)
            *fine = 0, diag("%s: the next writer failed", ctx);
        break;
    case 1:
        trig = "reap";
        km_reap(env, NULL);
        break;
    default: {
        trig = "attach";
        pid_t p = fork();
        if (p == 0) {
            km_env *e2;
            _exit(km_open(seg, &e2) == KM_OK && km_close(e2) == KM_OK ? 0 : 1);
        }
        int st;
        waitpid(p, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            *fine = 0, diag("%s: the attach failed", ctx);
    }
    }
    if (ck_pr_load_32(&km__intent_of(env)->op) != KM__OP_NONE)
        *fine = 0, diag("%s: the %s left the intent unresolved", ctx, trig);
    return trig;
}

/* Fork n workers running fn(arg, w), which must _exit. */
static inline void workers_start(pid_t *pids, int n, void (*fn)(void *arg, int w), void *arg)
{
    fflush(stdout);
    for (int w = 0; w < n; w++)
        if ((pids[w] = fork()) == 0)
            fn(arg, w);
}

/* Wait for them: how many did not exit 0. */
static inline int workers_wait(const pid_t *pids, int n)
{
    int bad = 0, st;
    for (int w = 0; w < n; w++) {
        waitpid(pids[w], &st, 0);
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    return bad;
}

/* For secs seconds, fork a writer running fn(seed) (a distinct seed each)
 * and SIGKILL it after 0.2 to 12 ms: deaths land anywhere, grace waits
 * included.  Returns the number killed. */
static inline unsigned kill_writers(double secs, void (*fn)(unsigned seed))
{
    uint64_t until = km_now_ns() + (uint64_t)(secs * 1e9);
    unsigned kills = 0, seed = (unsigned)getpid();
    while (km_now_ns() < until) {
        fflush(stdout);
        pid_t p = fork();
        if (p == 0)
            fn(seed + kills);
        struct timespec d = {0, (long)(200000 + (unsigned)rand() % 12000000)};
        nanosleep(&d, NULL);
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
        kills++;
    }
    return kills;
}

#endif /* KM_TESTS_KILLLIB_H */
