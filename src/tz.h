/*
 * src/tz.h - named time zones of budgets (src/tz.c).  Internal; not
 * installed.
 */
#ifndef KM_TZ_H
#define KM_TZ_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* Read zone `name` (a tz database name: no leading '/', no "..") from
 * $TZDIR or /usr/share/zoneinfo into z, keeping what places boundaries from
 * a year before `now` (UTC s).  KM_ECONFIG with a message naming the value
 * and the path in err; KM_ENOMEM. */
int km__tz_load(const char *name, int64_t now, km__tzone *z, char *err, size_t errlen);
/* Parse a POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3") into z's rule
 * words: 0, or -1 if it is not one. */
int km__tz_rule(const char *rule, km__tzone *z);
/* Seconds east of UTC in force at UTC second t. */
int32_t km__tz_offset(const km__tzone *z, int64_t t);
/* The UTC second of local time `local` (seconds since the epoch as if
 * UTC): the first of two, or the change ending a gap it falls in. */
int64_t km__tz_utc(const km__tzone *z, int64_t local);

/* The segment's zone table (KM__TZ_ZONES rows). */
const km__tzone *km__tz_table(const km_env *e);
/* The zone row a budget code names, or NULL (a fixed offset). */
const km__tzone *km__tz_zone(const km__tzone *table, int32_t code);

/* The one call of the configuration path: the budget code of a budget
 * whose "tz" parsed as `name` (a named zone) or, name "" , the fixed
 * offset tz_min.  A named zone the segment's table lacks is read and added
 * (by the creator, or under the admin lock).  KM_ECONFIG (err says why:
 * unreadable, malformed, table full), KM_ENOMEM: nothing written. */
int km__tz_bind(km_env *e, const char *name, int32_t tz_min, int32_t *code, char *err,
                size_t errlen);

/* The code of a zone km__tz_bind has bound (or the fixed offset tz_min if
 * name is ""): what km__key_write and km__pool_write store. */
int32_t km__tz_code(const km_env *e, const char *name, int32_t tz_min);
/* km__tz_bind for every budget of cfg (creation, km_pool_add), before any
 * row is written. */
int km__tz_bind_config(km_env *e, const km_config *cfg, char *err, size_t errlen);

#endif /* KM_TZ_H */
