#define FFI_SCOPE "KEYMESH_LIBC"
#define FFI_LIB "libc.so.6"
/*
 * bindings/php/src/libc.h - the few C library calls KeyMesh\Native makes
 * (glibc on Linux), loaded as keymesh.h is (FFI::cdef, or ffi.preload).
 *
 *   getpid, getauxval(AT_RANDOM)   which process, and which exec of it,
 *                                  holds a handle (see Native::env)
 *   getenv, setenv                 the per-process record of the handle,
 *                                  which outlives PHP's requests
 *   statx, __errno_location        the segment's inode, to notice one
 *                                  destroyed or replaced under a worker
 *   dladdr, dlopen                 keep libkeymesh mapped for the process's
 *                                  life (RTLD_NODELETE)
 *   __cxa_atexit                   km_close each handle when the process
 *                                  exits
 *
 * struct statx is the kernel's (linux/stat.h): the same 256 bytes on every
 * architecture; tests/php/libc_layout.c checks the offsets used here.
 */
typedef struct kmphp_statx_ts {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t reserved;
} kmphp_statx_ts;

typedef struct kmphp_statx {
    uint32_t stx_mask;
    uint32_t stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink;
    uint32_t stx_uid;
    uint32_t stx_gid;
    uint16_t stx_mode;
    uint16_t spare0;
    uint64_t stx_ino;
    uint64_t stx_size;
    uint64_t stx_blocks;
    uint64_t stx_attributes_mask;
    kmphp_statx_ts stx_atime, stx_btime, stx_ctime, stx_mtime;
    uint32_t stx_rdev_major, stx_rdev_minor;
    uint32_t stx_dev_major, stx_dev_minor;
    uint64_t spare[14];
} kmphp_statx;

typedef struct kmphp_dl_info {
    const char *dli_fname;
    void *dli_fbase;
    const char *dli_sname;
    void *dli_saddr;
} kmphp_dl_info;

int getpid(void);
unsigned long getauxval(unsigned long type);
char *getenv(const char *name);
int setenv(const char *name, const char *value, int overwrite);
int *__errno_location(void);
int statx(int dirfd, const char *path, int flags, unsigned int mask, kmphp_statx *buf);
int dladdr(const void *addr, kmphp_dl_info *info);
void *dlopen(const char *file, int mode);
char *dlerror(void);
int __cxa_atexit(void (*fn)(void *), void *arg, void *dso_handle);
