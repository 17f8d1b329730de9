/*
 * tools/sync/store.h - the sync agent's client of the fleet ledger in Redis
 * (tools/sync/ledger.lua).  Used by tools only; not part of libkeymesh.
 *
 * One kms_store is one connection to one Redis (or one Cluster node) for one
 * fleet.  kms_open() parses nothing: the caller gives a parsed URL
 * (kms_url_parse) and the password (kms_password_load, from an environment
 * variable or a file, never from argv).  It connects with a timeout,
 * authenticates, selects the database and makes sure the ledger library is
 * there in this client's version: FUNCTION LOAD REPLACE when it is missing
 * or older, an error when it is newer; where FUNCTION is unknown (Redis 6)
 * the same code is loaded with SCRIPT LOAD and called with EVALSHA.
 *
 * kms_sync() is one round trip: FCALL (or EVALSHA) of the ledger with the
 * host's report, and a strict parse of the answer.  Any reply that is not
 * exactly what this version of the ledger sends (garbage, truncated, wrong
 * types, a count that does not match, another ledger version) is an error
 * and *r is left untouched: nothing of it can be applied.  After an I/O or
 * protocol error the connection is dropped; the next call reconnects.
 *
 * Lifecycle: kms_open() -> kms_sync()/kms_info()... -> kms_close().  After a
 * failed kms_open() nothing is to be freed.  A kms_store is used by one
 * thread at a time (the agent's store thread); nothing in it is shared.
 *
 * Secrets: the password is copied, wiped at kms_close(), and never appears
 * in an error message.  Keys are named in the ledger by a fleet id
 * (kms_fleet_id: a hash of the pool and key id, or an id the operator
 * configured), never by anything derived from a key's secret.
 */
#ifndef KM_TOOLS_SYNC_STORE_H
#define KM_TOOLS_SYNC_STORE_H

#include <stddef.h>
#include <stdint.h>

#define KMS_ID_MAX 64 /* host, fleet and key ids: [A-Za-z0-9_.-]{1,64} */
#define KMS_PPM 1000000u

/* XX(NAME, value, message) */
#define KMS_ERRNO_MAP(XX)                                                      \
    XX(EINVAL, -1, "invalid argument")                                         \
    XX(EURL, -2, "invalid store URL")                                          \
    XX(EPASSWORD, -3, "cannot read the store password")                        \
    XX(ECONNECT, -4, "cannot connect to the store")                            \
    XX(ETIMEOUT, -5, "the store did not answer in time")                       \
    XX(EAUTH, -6, "authentication with the store failed")                      \
    XX(EIO, -7, "connection to the store lost")                                \
    XX(EPROTO, -8, "invalid reply from the store")                             \
    XX(EVERSION, -9, "ledger version mismatch")                                \
    XX(ELEDGER, -10, "the ledger refused the call")                            \
    XX(ESTALE, -11, "sequence number older than the ledger's")                 \
    XX(ENOMEM, -12, "out of memory")

typedef enum {
    KMS_OK = 0,
#define KMS__ERR_ENUM(name, val, msg) KMS_##name = (val),
    KMS_ERRNO_MAP(KMS__ERR_ENUM)
#undef KMS__ERR_ENUM
} kms_err;

const char *kms_strerror(int err);
const char *kms_err_name(int err);

/* The ledger version this client speaks (parsed from the embedded
 * ledger.lua: one source of truth). */
int kms_client_version(void);

/* ------------------------------------------------------------------- URL */

typedef struct kms_url {
    char host[256];
    unsigned port;       /* default 6379 */
    unsigned db;         /* default 0 */
    char user[KMS_ID_MAX + 1]; /* ACL user, "" for the default user */
} kms_url;

/* redis://[USER@]HOST[:PORT][/DB].  A password in the URL
 * (redis://:pw@h, redis://u:pw@h) is refused: the message says where the
 * password goes instead and never repeats it.  IPv6 hosts in brackets. */
int kms_url_parse(const char *url, kms_url *out, char *err, size_t errlen);

/* The password, from environment variable `env` (if set and not empty) or
 * else from `file` (first line, without its newline; the file must not be
 * readable by group or others).  Either may be NULL; *out is NULL if there
 * is no password.  Free *out with kms_password_free (wipes it). */
int kms_password_load(const char *env, const char *file, char **out, char *err,
                      size_t errlen);
void kms_password_free(char *pw);

/* A key's name in the ledger: "k" and 32 hex digits of BLAKE2b-128 over
 * pool, a NUL and key id.  Nothing of the secret. */
int kms_fleet_id(const char *pool, const char *key_id, char out[KMS_ID_MAX + 1]);

/* The ledger's name of a fleet key's windows (kid): the operator's fleet
 * id, else kms_fleet_id(pool, key_id); of a model's windows on it (model
 * not NULL nor ""), "<that, at most 46 bytes>.m<16 hex of
 * kms_fleet_id(that, model)>", whatever the fleet id holds (a '.' in it
 * too).  Never anything of the secret. */
void kms_kid(const char *pool, const char *key_id, const char *fleet_id, const char *model,
             char out[KMS_ID_MAX + 1]);

/* The ledger's name of a pool's fleet-wide budget: "p" and the 32 hex
 * digits of kms_fleet_id(pool, ""): never a key's (derived key ids start
 * with "k", and a key id is never empty).  Nothing of the secret. */
void kms_pool_bid(const char *pool, char out[KMS_ID_MAX + 1]);

/* ------------------------------------------------------------ connection */

typedef struct kms_store kms_store;

typedef struct kms_opts {
    const kms_url *url;
    const char *password;       /* NULL: no AUTH.  Copied. */
    const char *fleet;          /* ledger keys {km:<fleet>}:... */
    unsigned connect_timeout_ms; /* 0: 1000 */
    unsigned io_timeout_ms;      /* 0: 1000 */
} kms_opts;

int kms_open(const kms_opts *o, kms_store **out, char *err, size_t errlen);
void kms_close(kms_store *s);
/* How the ledger is called: 1 Redis Function (FCALL), 2 script (EVALSHA);
 * 0 before the first successful load. */
int kms_store_mode(const kms_store *s);
/* The version of the ledger library loaded in the store (FCALL/EVAL
 * "version"). */
int kms_ledger_version(kms_store *s, int *version, char *err, size_t errlen);

/* ------------------------------------------------------------------ sync */

/* One active (key, window) of the host: its limit as configured, and what
 * happened since the previous report. */
typedef struct kms_entry {
    char kid[KMS_ID_MAX + 1]; /* fleet id of the key */
    int win;                  /* km_window */
    uint64_t limit, period_ms, burst;
    int mode;                 /* km_limit_mode */
    int strict;               /* 1: the ledger runs at L - C */
    uint64_t demand;          /* units per second the host wants */
    uint64_t want;            /* largest request waiting, units */
    uint64_t spent;           /* taken from credit since the last report */
    uint64_t fb_spent;        /* admitted on the fallback share since then */
    int64_t adj;              /* actual - estimated tokens of settled leases */
    uint64_t returned;        /* credit handed back or lapsed unspent */
    uint64_t left;            /* credit held now */
    uint32_t fb_held_ppm;     /* fallback share held now (0: none) */
} kms_entry;

/* Health events the host saw. */
enum {
    KMS_EV_RATE_LIMITED = 1, /* arg: ms to cool (Retry-After) */
    KMS_EV_AUTH = 2,         /* 401/403: invalid everywhere */
    KMS_EV_QUOTA = 3,        /* exhausted everywhere */
    KMS_EV_DISABLE = 4,      /* operator */
    KMS_EV_ENABLE = 5        /* operator: clears all of the above */
};

typedef struct kms_event {
    char kid[KMS_ID_MAX + 1];
    int kind;        /* KMS_EV_* */
    uint64_t arg_ms;
} kms_event;

/* Spend budgets (post-paid, ledger version 2): per budget, the micro-USD
 * the host spent in the period since its previous report. */
typedef struct kms_budget {
    char bid[KMS_ID_MAX + 1]; /* the budget's fleet id (its key's) */
    uint64_t period_start;    /* the period's start, UTC seconds; 0: lifetime */
    uint64_t spent;           /* micro-USD since the previous report */
} kms_budget;

#define KMS_BYE 1u /* flags: the host leaves (all credit returned) */

typedef struct kms_request {
    const char *host;          /* host id */
    uint64_t seq;              /* > the last one the ledger saw; a retry
                                * repeats it and gets the same answer */
    uint64_t ack;              /* seq of the last reply applied (0: none) */
    uint64_t epoch;            /* ledger epoch last seen (0: never synced) */
    unsigned flags;            /* KMS_BYE */
    unsigned sync_ms, valid_ms, fallback_ms; /* S <= V <= F */
    const kms_entry *ent;
    size_t n_ent;
    const kms_event *ev;
    size_t n_ev;
    const kms_budget *bud;
    size_t n_bud;
} kms_request;

typedef struct kms_grant {
    uint64_t grant;       /* credit to add, valid for valid_ms from the send */
    uint32_t valid_ms;
    uint32_t fb_ppm;      /* fallback share of the rate (ppm), token bucket */
    uint64_t fb_burst;    /*   with this burst, valid for fallback_ms */
    uint32_t fallback_ms;
    uint32_t share_ppm;   /* the host's demand share */
    uint64_t out;         /* the ledger's view of the host's credit now */
    int err;              /* 0; 1 period or mode disagree with the fleet's;
                           * 2 strict impossible (limit too small) */
} kms_grant;

enum { KMS_ST_ACTIVE = 0, KMS_ST_COOLING = 1, KMS_ST_DISABLED = 3,
       KMS_ST_INVALID = 4, KMS_ST_EXHAUSTED = 5 };

typedef struct kms_health {
    char kid[KMS_ID_MAX + 1];
    int state;             /* KMS_ST_* */
    uint64_t remaining_ms; /* COOLING: for how much longer */
    uint64_t version;      /* bumped at every change */
} kms_health;

/* A budget's counter in the ledger: the fleet's total in the period
 * reported, and this host's part of it (0 0: a period older than the two
 * the ledger keeps). */
typedef struct kms_spend {
    uint64_t total, mine;
} kms_spend;

typedef struct kms_reply {
    int version;
    uint64_t epoch;
    uint64_t learn_ms;    /* learning period left, 0: normal */
    uint64_t seq;
    uint64_t n_hosts;
    kms_grant *grant;     /* one per request entry, same order */
    size_t n_grant;
    kms_health *health;   /* every key named in the request */
    size_t n_health;
    kms_spend *spend;     /* one per request budget, same order */
    size_t n_spend;
} kms_reply;

/* One sync.  KMS_ESTALE: the ledger has seen a larger seq from this host
 * (*stale_last, if given, receives it).  On any error *r is untouched. */
int kms_sync(kms_store *s, const kms_request *q, kms_reply *r,
             uint64_t *stale_last, char *err, size_t errlen);
void kms_reply_free(kms_reply *r);

/* ------------------------------------------------------------------ info */

typedef struct kms_info_row {
    char kw[2 * KMS_ID_MAX + 8]; /* "<kid>/<window>" */
    uint64_t demand;
    uint32_t share_ppm;
    uint64_t out;
    uint32_t fb_ppm;
} kms_info_row;

typedef struct kms_info_host {
    char host[KMS_ID_MAX + 1];
    uint64_t age_ms;   /* since its last sync */
    int silent;        /* 1: may be spending its fallback share */
    kms_info_row *rows;
    size_t n_rows;
} kms_info_host;

typedef struct kms_info_kw {
    char kw[2 * KMS_ID_MAX + 8];
    uint64_t limit, burst, period_ms;
    int mode, strict;
    int64_t room;       /* units the bucket could grant now */
    uint64_t reserved;  /* credit outstanding */
} kms_info_kw;

typedef struct kms_info_budget {
    char bid[KMS_ID_MAX + 1];
    uint64_t period_start, total;      /* the latest period reported */
    uint64_t prev_start, prev_total;   /* the one before (0 0: none) */
} kms_info_budget;

typedef struct kms_info {
    int version;
    uint64_t epoch, learn_ms;
    kms_info_host *hosts;
    size_t n_hosts;
    kms_info_kw *kws;
    size_t n_kws;
    kms_info_budget *budgets;
    size_t n_budgets;
} kms_info;

int kms_info_get(kms_store *s, kms_info *out, char *err, size_t errlen);
void kms_info_free(kms_info *in);

#endif /* KM_TOOLS_SYNC_STORE_H */
