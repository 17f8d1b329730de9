/*
 * tools/kmctl/watch.c - follow a segment by name while it comes and goes
 * (kmctl serve and kmctl top).
 *
 * A mapping outlives its name: after `kmctl destroy` a process attached to
 * the segment keeps reading the old one.  So before each reading the
 * watcher looks at the name (stat of /dev/shm/NAME): gone, and it detaches
 * and says why; another object under the name (another inode: the segment
 * was created or restored again), and it attaches to the new one.
 *
 * Read-only: the watchers attach with KM_OPEN_READONLY, so they take no
 * process slot and write nothing to the segment.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kmctl.h"

#define WATCH_OPEN(name, env) km_open_flags((name), KM_OPEN_READONLY, (env))

int watch_init(seg_watch *w, const char *name)
{
    memset(w, 0, sizeof *w);
    w->name = name;
    if (!name[0] || strlen(name) > KM_SEG_NAME_MAX || strchr(name + 1, '/'))
        return -1;
    snprintf(w->path, sizeof w->path, "/dev/shm/%s", name[0] == '/' ? name + 1 : name);
    return 0;
}

void watch_detach(seg_watch *w)
{
    km_close(w->env);
    w->env = NULL;
}

int watch_attach(seg_watch *w, int *changed)
{
    struct stat st;
    if (changed)
        *changed = 0;
    if (stat(w->path, &st) != 0) {
        int e = errno;
        watch_detach(w);
        snprintf(w->why, sizeof w->why, "segment '%s': %s", w->name,
                 e == ENOENT ? km_strerror(KM_ENOENT) : strerror(e));
        return -1;
    }
    if (w->env && st.st_dev == w->dev && st.st_ino == w->ino)
        return 0;
    watch_detach(w); /* another object has the name now: follow it */
    int rc = WATCH_OPEN(w->name, &w->env);
    if (rc != KM_OK) {
        int e = errno;
        w->env = NULL;
        snprintf(w->why, sizeof w->why, "segment '%s': %s", w->name, err_text(rc, e));
        return -1;
    }
    /* What was attached is what had the name just before: if it was
     * replaced in between, the next look sees another inode again. */
    w->dev = st.st_dev;
    w->ino = st.st_ino;
    w->why[0] = '\0';
    if (changed)
        *changed = 1;
    return 0;
}
