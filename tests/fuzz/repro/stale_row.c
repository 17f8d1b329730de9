/*
 * tests/fuzz/repro/stale_row.c - a thread's cached reader row survives
 * km_close().  the epoch reader (shm/epoch.h) caches its row per thread, keyed by the
 * km_env pointer (km__rd_env); km_close() frees the env without clearing
 * it.  A later km_open() whose env malloc places at the same address makes
 * the next acquire use the old row: a pointer into the old mapping.  If
 * that mapping's address was reused by the new one, the acquire writes
 * another process slot's reader row (here: slot 1's, while the handle owns
 * slot 0), so a grace period can miss a reader; if not, it writes unmapped
 * memory.  Built without ASan (its quarantine keeps the address from being
 * reused).  Exit 1 and "STALE" when the bug shows, 0 otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char *cfg =
    "{\"capacity\": {\"keys\": 2, \"processes\": 4, \"pools\": 1, \"inflight_per_key\": 8,"
    " \"usage_events\": 8},"
    " \"pools\": [{\"name\": \"p\", \"keys\": [{\"id\": \"a\", \"secret\": \"sk-aaaaaaaaaaaa\"}]}]}";

int main(void)
{
    const char *nm = "kmfz-stale-row";
    km_config *c;
    km_env *h0, *h1, *hx;
    km_request rq = {.pool = 0};
    km_lease l;
    char err[256];

    setvbuf(stdout, NULL, _IONBF, 0);
    if (km_config_parse(cfg, strlen(cfg), "cfg", &c, err, sizeof err))
        return 2;
    km_unlink(nm);
    if (km_create(nm, c, 0600, &h0) || km_open(nm, &h1))  /* slots 0 and 1 */
        return 2;
    km_config_free(c);
    if (km_acquire(h1, &rq, &l) || km_release(h1, &l, NULL)) /* binds a row of slot 1 */
        return 2;
    void *old_env = h1, *old_base = h1->seg.base;
    km_close(h0);                                /* slot 0 free */
    km_close(h1);                                /* slot 1 free; env freed last */
    if (km_open(nm, &hx))                        /* takes slot 0 */
        return 2;
    printf("env %s (%p -> %p), mapping %s, slot %u\n", (void *)hx == old_env ? "reused" : "new",
           old_env, (void *)hx, hx->seg.base == old_base ? "same address" : "moved", hx->seg.proc_slot);
    km__rdr *slot1 = km__rdrs(&hx->seg, 1);
    uint64_t before[KM__RDR_PER_PROC];
    for (int i = 0; i < KM__RDR_PER_PROC; i++)
        before[i] = slot1[i].enter_ns;
    if (km_acquire(hx, &rq, &l) == KM_OK)
        km_release(hx, &l, NULL);
    int stale = 0;
    for (int i = 0; i < KM__RDR_PER_PROC; i++)
        if (slot1[i].enter_ns != before[i]) {
            printf("STALE: the acquire of the handle in slot %u wrote reader row %d of slot 1\n",
                   hx->seg.proc_slot, i);
            stale = 1;
        }
    km_close(hx);
    km_unlink(nm);
    return stale;
}
