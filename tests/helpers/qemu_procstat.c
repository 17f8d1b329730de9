/*
 * qemu_procstat.c - not a test: linked into the aarch64 test programs by
 * `make cross-test` only (-Wl,--wrap=fopen), never into the library.
 *
 * qemu-user answers a guest's own /proc/self/stat and /proc/<its pid>/stat
 * itself, and the start time it gives (field 22) can be a tick off the
 * kernel's, which every other process reads.  KeyMesh records its own start
 * time at attach and checks peers against theirs, so under qemu a live peer
 * looks dead and is reaped.  This sends a process's fopen() of its own stat
 * file to /proc/<pid>/task/<pid>/stat, which qemu leaves to the kernel: the
 * same field the library reads, as a native process would see it.  Any
 * other path is opened unchanged.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

FILE *__real_fopen(const char *path, const char *mode);
FILE *__wrap_fopen(const char *path, const char *mode);

FILE *__wrap_fopen(const char *path, const char *mode)
{
    char own[64], task[96];
    int pid = (int)getpid();

    snprintf(own, sizeof own, "/proc/%d/stat", pid);
    if (path && (strcmp(path, own) == 0 || strcmp(path, "/proc/self/stat") == 0)) {
        snprintf(task, sizeof task, "/proc/%d/task/%d/stat", pid, pid);
        return __real_fopen(task, mode);
    }
    return __real_fopen(path, mode);
}
