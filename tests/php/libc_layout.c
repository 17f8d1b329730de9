/* tests/php/libc_layout.c - the C library structs bindings/php/src/libc.h
 * declares, as the C compiler lays them out, in tests/e2e/layout.c's format
 * ("name size field offset ..."), under the names libc.h gives them.  Only
 * the fields the binding reads are listed (libc.h names the rest spare). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>

#define S(N, T) printf("\n%s %zu", N, sizeof(T))
#define F(T, f) printf(" %s %zu", #f, offsetof(T, f))

int main(void)
{
    S("kmphp_statx", struct statx);
    F(struct statx, stx_mask); F(struct statx, stx_ino); F(struct statx, stx_dev_major);
    F(struct statx, stx_dev_minor);
    S("kmphp_statx_ts", struct statx_timestamp);
    F(struct statx_timestamp, tv_sec); F(struct statx_timestamp, tv_nsec);
    S("kmphp_dl_info", Dl_info);
    F(Dl_info, dli_fname); F(Dl_info, dli_fbase); F(Dl_info, dli_sname); F(Dl_info, dli_saddr);
    printf("\n");
    return 0;
}
