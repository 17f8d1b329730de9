/*
 * tests/newcomer/snapshot_app.c - the `app.c` of README's "Build and
 * install": a program that uses libsodium through libkeymesh
 * (km_snapshot_json), linked by tests/t_newcomer_build.sh with the
 * README's pkg-config commands against an installed prefix.
 *
 *   app SEGMENT     prints the segment's snapshot JSON
 */
#include <stdio.h>
#include <stdlib.h>

#include <keymesh.h>

int main(int argc, char **argv)
{
    km_env *env;
    char *json;
    int rc;

    if (argc != 2) {
        fprintf(stderr, "usage: app SEGMENT\n");
        return 2;
    }
    rc = km_open(argv[1], &env);
    if (rc != KM_OK) {
        fprintf(stderr, "app: km_open %s: %s\n", argv[1], km_strerror(rc));
        return 1;
    }
    rc = km_snapshot_json(env, &json);
    if (rc != KM_OK) {
        fprintf(stderr, "app: km_snapshot_json: %s\n", km_strerror(rc));
        km_close(env);
        return 1;
    }
    puts(json);
    free(json);
    km_close(env);
    return 0;
}
