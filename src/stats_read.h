/*
 * src/stats_read.h - the two readers of the model rows that src/stats.c
 * needs beyond the public ones (src/info.c): which model rows a pool has,
 * and a row's name and key x model counters.  Declared apart so that
 * stats.c stays free of the layout (it includes no internal.h).
 */
#ifndef KM_STATS_READ_H
#define KM_STATS_READ_H

#include <stdint.h>

#include "keymesh.h"

/* Model rows of `pool` that the statistics answer for: its listed models,
 * or, in a pool without a models list, the rows its requests have named so
 * far (taken rows come first: src/acquire.c, N1).  0 for a bad pool. */
uint32_t km__model_rows(km_env *e, int pool);

/* Row `row` of `pool`: its name (NULL: not wanted; "" for a named row
 * taken but not yet written, N3) and, if `c`, its counters on key `key`
 * (a key of that pool).  KM_ENOPOOL, KM_ENOMODEL at or past
 * km__model_rows, KM_ENOKEY for a key of another pool.  Each counter is one
 * atomic load; writes nothing. */
int km__model_row_read(km_env *e, int pool, int row, int key, char name[KM_ID_MAX + 1],
                       km_stats_counters *c);

#endif /* KM_STATS_READ_H */
