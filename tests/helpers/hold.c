/*
 * tests/helpers/hold.c - not a test: a helper for tests/t_reapctl.sh.
 *
 *   hold NAME POOL N       attach to NAME, acquire N leases from POOL,
 *                          print "held N" and sleep until killed.
 *
 * Exit status 2 if it cannot attach or acquire.  The Makefile builds it with
 * the tests (build/tests/helpers/hold); prove does not run it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "keymesh.h"

int main(int argc, char **argv)
{
    km_env *e = NULL;
    km_lease l;
    if (argc != 4) {
        fprintf(stderr, "usage: hold NAME POOL N\n");
        return 2;
    }
    int rc = km_open(argv[1], &e), n = atoi(argv[3]);
    if (rc != KM_OK) {
        fprintf(stderr, "hold: open %s: %s\n", argv[1], km_strerror(rc));
        return 2;
    }
    km_request rq = {.pool = km_pool_find(e, argv[2]), .tokens = 10};
    for (int i = 0; i < n; i++) {
        if ((rc = km_acquire(e, &rq, &l)) != KM_OK) {
            fprintf(stderr, "hold: acquire %d: %s\n", i, km_strerror(rc));
            return 2;
        }
    }
    printf("held %d\n", n);
    fflush(stdout);
    for (;;)
        pause();
}
