/*
 * tests/fuzz/repro/hdr_after_attach.c - capacities checked at attach are
 * read again from the segment at every call.  km__seg_validate() checks
 * cap_keys, the offsets and the rest of the header once, at attach; every
 * later bounds check (key < e->hdr->cap_keys, pool < e->hdr->n_pools, ...)
 * and every region address (e->hdr->off_keys, ...) re-reads the shared
 * header.  A process that corrupts the header after others attached (here
 * through a second mapping of the object) moves those bounds: the attached
 * handle then reads outside its mapping.  Exit 0 if the call is refused;
 * a SIGSEGV shows the bug.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "keymesh.h"

static const char *cfg =
    "{\"capacity\": {\"keys\": 2, \"processes\": 2, \"pools\": 1, \"inflight_per_key\": 8,"
    " \"usage_events\": 8},"
    " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-aaaaaaaaaaaa\"}]}]}";

int main(void)
{
    const char *nm = "kmfz-hdr-after";
    km_config *c;
    km_env *e;
    km_key_info ki;
    char err[256];

    setvbuf(stdout, NULL, _IONBF, 0);
    if (km_config_parse(cfg, strlen(cfg), "cfg", &c, err, sizeof err))
        return 2;
    km_unlink(nm);
    if (km_create(nm, c, 0600, &e))
        return 2;
    km_config_free(c);
    /* Another process corrupts the header: cap_keys (offset 32, shm/seg.h). */
    int fd = shm_open("/kmfz-hdr-after", O_RDWR, 0);
    uint8_t *raw = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    uint32_t big = 0x7fffffff;
    memcpy(raw + 32, &big, sizeof big);
    printf("cap_keys set to %u after attach; km_key_info_get(key 1000000)...\n", big);
    int rc = km_key_info_get(e, 1000000, &ki);
    printf("refused: %s\n", km_err_name(rc));
    km_unlink(nm);
    return 0;
}
