/*
 * tools/sync/agent.h - the fleet sync agent (`kmctl sync`, DESIGN.md
 * section 5): keeps a segment's fleet credit topped up from the ledger in
 * Redis.  Used by kmctl only; not part of libkeymesh.  Built on the public
 * header (km_fleet_*) and the store client (store.h).
 *
 * kma_run() claims the segment's agent role, starts the store thread and
 * runs the segment thread (the caller's) until *stop is set (SIGTERM,
 * SIGINT), then says goodbye (rule 5) and returns an exit status.
 *
 *   segment thread (the caller)   every sync period S: collect the credit
 *                                 words, merge into the pending report,
 *                                 hand a request to the store thread when
 *                                 none is in flight (else keep it for the
 *                                 next seq), apply the reply of the seq in
 *                                 flight, health both ways, status.  Polls
 *                                 the reply and the stop flag every 5 ms.
 *   store thread                  owns the kms_store; does nothing but
 *                                 kms_open/kms_sync, so a store that takes
 *                                 its whole timeout never holds up the
 *                                 segment thread.
 *
 * The two share one struct under a mutex (one request, one reply at a time;
 * README "Fleet-wide limits" says why no RCU).  Log lines go to `log`
 * (stderr for kmctl), never with the password.
 */
#ifndef KM_TOOLS_SYNC_AGENT_H
#define KM_TOOLS_SYNC_AGENT_H

#include <signal.h>
#include <stdio.h>

#include "keymesh.h"
#include "store.h"

typedef struct kma_opts {
    const char *segment;  /* for log lines */
    const char *host_id;  /* [A-Za-z0-9_.-]{1,64} */
    const char *fleet;    /* ledger keys {km:<fleet>}:... */
    const kms_url *url;
    const char *password; /* NULL: none */
    unsigned sync_ms, valid_ms, fallback_ms, timeout_ms; /* S <= V <= F */
    int policy;           /* KM_FLEET_STOP / KM_FLEET_LOCAL */
    FILE *log;
} kma_opts;

/* Exit statuses (kmctl sync --help). */
enum { KMA_EX_OK = 0, KMA_EX_FAILED = 1, KMA_EX_BUSY = 3 };

/* Run the agent on `env` until *stop becomes non-zero; an exit status:
 * KMA_EX_OK after the stop (the bye sent or not), KMA_EX_BUSY when another
 * live agent holds the segment, KMA_EX_FAILED on anything else that keeps
 * it from starting. */
int kma_run(km_env *env, const kma_opts *o, volatile sig_atomic_t *stop);


#endif /* KM_TOOLS_SYNC_AGENT_H */
