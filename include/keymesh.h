/*
 * keymesh.h - the one public header of KeyMesh.
 *
 * KeyMesh keeps a pool of API keys in one POSIX shared-memory segment that
 * every worker process of a host maps.  A worker acquires a key (lock-free,
 * no system call in the steady state), uses it with any HTTP client, and
 * releases it with the outcome the provider gave.  Rate limits, cooldowns
 * and health hold for all processes together.  KeyMesh never sends a
 * request itself.
 *
 * Conventions
 *   - Every function that can fail returns int: 0 (KM_OK) on success, a
 *     negative KM_E* code otherwise.  km_strerror() and km_err_name() turn a
 *     code into text.  The library never prints and never exits.
 *   - Times are CLOCK_MONOTONIC nanoseconds (km_now_ns()), which every
 *     process of one host shares.
 *   - Strings passed in are NUL-terminated UTF-8; nothing passed in is kept.
 *   - Structs grow without breaking a program built against an older
 *     header.  Those passed in (km_request, km_outcome, km_http_response)
 *     and those the library fills (km_lease, the *_info structs,
 *     km_reap_report, the usage structs, km_segment_desc) end in `reserved`
 *     room: a caller zeroes what it passes in, reserved room included (a
 *     designated initialiser such as `km_request rq = {.pool = p};` or a
 *     memset does), and a later version gives a reserved word a meaning in
 *     which zero means what this version does; the library zeroes the
 *     reserved room of what it fills.  The km_*_stats structs are filled
 *     up to a size the caller passes instead (see "statistics").
 *     km_struct_size() gives the library's size of each, which bindings
 *     that declare the structs themselves compare with their own when they
 *     load the library.
 *   - Every index (pool, key, model, process slot, reader row, lease slot)
 *     is an int >= 0, in arguments and in struct fields alike; a function
 *     that looks one up returns it (>= 0) or a negative KM_E* code, so its
 *     result is passed on without a cast.  uint32_t is for counts and sizes.
 *
 * Lifecycle of a handle (km_env)
 *   km_create() or km_open() returns a handle attached to a segment and
 *   registered in its process table.  km_close() releases the leases the
 *   handle's process still holds (counted as abandoned), deregisters it and
 *   unmaps.  km_unlink() removes the name; processes still attached keep
 *   working until they close.  After a failed km_create()/km_open() nothing
 *   is to be freed.  A handle must not be used after km_close(), nor across
 *   fork(): a child calls km_open() itself (for a private segment, which has
 *   no name: km_open_fd(km_fd(inherited handle), ...)).
 *
 * Concurrency
 *   km_acquire(), km_release(), the *_info() readers and km_key_set_state()
 *   may run concurrently from any number of processes and threads of a
 *   process on the same segment.  km_acquire()/km_release() are lock-free:
 *   they take no lock and never wait for another process.  In the steady
 *   state they make no system call; the exceptions are a thread's first
 *   acquire through a handle (it binds a reader row: gettid, and tgkill to
 *   take over rows of threads that exited), an acquire about to return
 *   KM_EAGAIN or KM_EUNAVAIL (it reaps dead processes, at most once a second
 *   per process), and a release while a km_acquire_wait() caller sleeps on
 *   the pool (one FUTEX_WAKE; sleepers are counted per process, and one
 *   killed in its sleep stops counting at the reap that frees its process
 *   slot).  A lease's effects (limit charge, in-flight count) are made by
 *   atomic read-modify-writes on the segment before km_acquire() returns,
 *   so every acquire that starts afterwards, in any process, decides on
 *   them; the readers see each counter atomically but several counters need
 *   not be mutually consistent while operations run.
 *   The clock read is a vDSO call, not a system call, where the kernel's
 *   clock source can be read from user space (it cannot on some virtual
 *   machines; then every acquire makes one).
 *   Each function's comment ends in a @note saying which threads and
 *   processes may call it at the same time as which others, as LMDB's do.
 *   "Thread-safe" there means any number of threads and processes may call
 *   it at once, on one handle or several.
 */
#ifndef KEYMESH_H
#define KEYMESH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KM_BUILDING_LIBRARY)
#define KM_EXTERN __attribute__((visibility("default")))
#else
#define KM_EXTERN
#endif

/* ---------------------------------------------------------------- version */

#define KM_VERSION_MAJOR 0
#define KM_VERSION_MINOR 1
#define KM_VERSION_PATCH 0
#define KM_VERSION_STRING "0.1.0"
/* The version as one number that compares in order:
 * MAJOR * 10000 + MINOR * 100 + PATCH (0.1.0 is 100, 1.12.3 is 11203), so
 * MINOR and PATCH stay below 100.  Test a feature at compile time with
 * #if KM_VERSION_NUMBER >= 100, and at run time with km_version_number(),
 * which is the library's (the two differ when a program runs against
 * another build than the header it was compiled with). */
#define KM_VERSION_NUMBER (KM_VERSION_MAJOR * 10000 + KM_VERSION_MINOR * 100 + KM_VERSION_PATCH)
/* Version of the shared-memory format.  Processes attach only to segments of
 * their own format (and layout signature). */
#define KM_FORMAT_VERSION 6

/* @note The three are thread-safe: constants of the library. */
KM_EXTERN const char *km_version(void);     /* "0.1.0" */
KM_EXTERN int km_format_version(void);      /* KM_FORMAT_VERSION */
KM_EXTERN int km_version_number(void);      /* KM_VERSION_NUMBER of the library */

/* ------------------------------------------------------------------ limits */

#define KM_ID_MAX 63          /* bytes of a key id or pool name, without NUL */
#define KM_SECRET_MAX 255     /* bytes of a secret, without NUL */
#define KM_SEG_NAME_MAX 200   /* bytes of a segment name, without NUL */
#define KM_POOLS_MAX 64       /* pools in one segment */
#define KM_KEYS_MAX 65536     /* keys in one segment */
#define KM_PROCS_MAX 4096     /* attached processes */
#define KM_INFLIGHT_MAX 1024  /* concurrent leases on one key */
#define KM_MODELS_MAX 64      /* models of one pool (per-model limits) */
#define KM_META_MAX 255       /* bytes of a key's metadata (JSON), without NUL */
#define KM_MASKED_MAX 24      /* bytes of a masked secret (km_mask_secret), NUL included */

/* ------------------------------------------------------------------ errors */

/* XX(NAME, value, message).  Messages never contain a secret. */
#define KM_ERRNO_MAP(XX)                                                       \
    XX(EINVAL, -1, "invalid argument")                                         \
    XX(ENOMEM, -2, "out of memory")                                            \
    XX(ESYS, -3, "system call failed (errno holds the reason)")                \
    XX(ENOENT, -4, "no segment of that name")                                  \
    XX(EEXIST, -5, "a segment of that name already exists")                    \
    XX(EACCES, -6, "permission denied on the segment")                         \
    XX(ENOTKM, -7, "not a KeyMesh segment")                                    \
    XX(EFORMAT, -8, "segment has another format version")                      \
    XX(ELAYOUT, -9, "segment has another layout (built with other sizes)")     \
    XX(ETRUNC, -10, "segment is shorter than its header says")                 \
    XX(ENOTREADY, -11, "segment is not initialised (being created?)")          \
    XX(ECONFIG, -12, "invalid configuration")                                  \
    XX(ENOPOOL, -13, "no pool of that name")                                   \
    XX(ENOKEY, -14, "no key of that id")                                       \
    XX(EAGAIN, -15, "no key is admissible now; retry at the given time")       \
    XX(EUNAVAIL, -16, "no usable key: all disabled, invalid or exhausted")     \
    XX(ECOST, -17, "request cost exceeds a limit's burst on every key")        \
    XX(ESTALE, -18, "lease already released, reaped, or its key slot reused")  \
    XX(EPROCS, -19, "process table full")                                      \
    XX(ENAME, -20, "invalid segment name")                                     \
    XX(ECORRUPT, -21, "segment state is corrupt")                              \
    XX(ENOMODEL, -22, "no model of that name in the pool")                     \
    XX(EBUDGET, -23, "spend budget exhausted")                                 \
    XX(ETIMEDOUT, -24, "timed out waiting for a key")                         \
    XX(EBUSY, -25, "busy: a stalled reader, a writer or a drainer holds it up (see inspect)") \
    XX(EKEYEXISTS, -26, "a key of that id already exists in the pool")       \
    XX(EFULL, -27, "no free key slot (capacity, or removed keys in grace)")  \
    XX(ECRYPTO, -28, "cannot decrypt the snapshot's secrets: wrong key or damaged file") \
    XX(ENOSLOT, -29, "nothing in that slot: a free process slot or an idle reader row") \
    XX(EREADONLY, -30, "not allowed on this handle (opened read-only or without a process slot)") \
    XX(EDUPSECRET, -31, "that API key is already in the segment, under another id")

typedef enum {
    KM_OK = 0,
#define KM__ERR_ENUM(name, val, msg) KM_##name = (val),
    KM_ERRNO_MAP(KM__ERR_ENUM)
#undef KM__ERR_ENUM
} km_err;

/* Message for a code; "unknown error" for one not in the map. Never NULL.
 * @note Thread-safe: static strings, no shared state (unlike strerror). */
KM_EXTERN const char *km_strerror(int err);
/* Name of a code without prefix ("EAGAIN"); "UNKNOWN" if not in the map.
 * @note Thread-safe, as km_strerror(). */
KM_EXTERN const char *km_err_name(int err);

/* ------------------------------------------------------------ enumerations */

typedef enum {
    KM_STRATEGY_DEFAULT = 0, /* in a request: the pool's strategy */
    KM_STRATEGY_ROUND_ROBIN = 1,
    KM_STRATEGY_LEAST_BUSY = 2,
    KM_STRATEGY_WEIGHTED = 3,
    KM_STRATEGY_LATENCY = 4,     /* lowest latency EMA, with exploration */
    KM_STRATEGY_COST = 5,        /* cheapest key with capacity */
    KM_STRATEGY_RELIABILITY = 6, /* highest recent success rate */
    KM_STRATEGY_FILL_FIRST = 7,  /* first key in order until it is limited */
    KM_STRATEGY_COUNT = 8
} km_strategy;

/* How a pool counts models (config "model_limits"). */
typedef enum {
    KM_MODELS_GLOBAL = 0,   /* all models share the key's limits */
    KM_MODELS_PER_MODEL = 1 /* each model also has its own limits on each key */
} km_model_mode;

/* Limit windows.  Each key has up to one GCRA word per window. */
typedef enum {
    KM_WIN_RPM = 0, /* requests per minute */
    KM_WIN_RPH = 1, /* requests per hour */
    KM_WIN_RPD = 2, /* requests per day */
    KM_WIN_TPM = 3, /* tokens per minute */
    KM_WIN_TPH = 4, /* tokens per hour */
    KM_WIN_TPD = 5, /* tokens per day */
    KM_WIN_COUNT = 6
} km_window;

/* How a limit counts (see README, "Limit semantics").
 * TOKEN_BUCKET: capacity `burst`, refilled continuously at limit per period.
 *   In any interval of length L: admitted cost <= L*limit/period + burst.
 * SLIDING: in any window of one period: admitted cost <= limit.  Realised as
 *   a GCRA of emission interval floor(period/(limit+1-burst))+1 ns and
 *   tolerance `burst`, so over long runs it uses about
 *   (limit+1-burst)/limit of the limit.  burst defaults to max(1, limit/10). */
typedef enum { KM_MODE_TOKEN_BUCKET = 0, KM_MODE_SLIDING = 1 } km_limit_mode;

/* State of a key as seen by readers. */
typedef enum {
    KM_KEY_ACTIVE = 0,    /* may be handed out */
    KM_KEY_COOLING = 1,   /* cooling down after 429s or failures, until cooldown_until */
    KM_KEY_PROBING = 2,   /* after a failure cooldown: one probe lease is out;
                           * only its own release or reaping ends it */
    KM_KEY_DISABLED = 3,  /* disabled by an operator */
    KM_KEY_INVALID = 4,   /* authentication failed (401/403) */
    KM_KEY_EXHAUSTED = 5  /* quota or payment failure (402, insufficient quota) */
} km_key_state;

/* What the provider said about a request. */
typedef enum {
    KM_OUT_SUCCESS = 0,      /* 2xx */
    KM_OUT_RATE_LIMITED = 1, /* 429 */
    KM_OUT_FAILURE = 2,      /* transient: 5xx, timeout, network error */
    KM_OUT_AUTH = 3,         /* 401/403: the key is invalid */
    KM_OUT_QUOTA = 4,        /* 402, insufficient quota: the key is exhausted */
    KM_OUT_CANCELLED = 5,    /* never sent: the token reservation comes back; the
                              * request still counts toward request limits */
    KM_OUT_COUNT = 6
} km_outcome_kind;

/* Names of the enumerations; "unknown" for a value out of range (never NULL).
 * @note Thread-safe: static strings. */
KM_EXTERN const char *km_strategy_name(int strategy); /* "round_robin", ... */
KM_EXTERN const char *km_window_name(int window);     /* "rpm", ... */
KM_EXTERN const char *km_key_state_name(int state);   /* "active", ... */
KM_EXTERN const char *km_outcome_name(int kind);      /* "success", ... */

/* ------------------------------------------------------------- the handle */

typedef struct km_env km_env;       /* an attached segment; opaque */
typedef struct km_config km_config; /* a parsed configuration; opaque */

/* Current CLOCK_MONOTONIC time in nanoseconds (through the vDSO: no system
 * call where the kernel's clock source allows, see "Concurrency").
 * @note Thread-safe. */
KM_EXTERN uint64_t km_now_ns(void);

/* Parse a JSON configuration (format in docs/config.md).  On failure returns
 * KM_ECONFIG (or KM_ENOMEM/KM_ESYS) and, if errbuf is given, writes one line
 * naming the file, line and column or the field, e.g.
 *   "pool.json:3:14: pools[0].limits.rpm: must be a positive integer".
 * secret_env references are resolved from the environment at parse time.
 * `origin` names the source in messages (a path; NULL gives "<config>").
 * @note Thread-safe, each call with its own `out` and `errbuf`, provided no
 * thread changes the environment meanwhile (secret_env and KEYMESH_PRESETS
 * are read with getenv).  A km_config is never changed after it is built:
 * any number of threads may read it at once (km_create(), km_restore()),
 * and km_config_free() runs once, after the last of them. */
KM_EXTERN int km_config_parse(const char *json, size_t len, const char *origin,
                              km_config **out, char *errbuf, size_t errlen);
KM_EXTERN int km_config_parse_file(const char *path, km_config **out,
                                   char *errbuf, size_t errlen);
KM_EXTERN void km_config_free(km_config *cfg);

/* Build a configuration from the environment.  For
 * each provider P in `providers` (comma-separated, e.g. "openai,anthropic";
 * P upper-cased in variable names): NUM_P keys, secrets in P_API_KEY_1..N,
 * optional per-key parameters P_<PARAM>_i (e.g. OPENAI_ORG_1) that become the
 * key's metadata {"org": "..."}, and optional limits P_RPM, P_TPM, ... for
 * the pool or P_RPM_i for one key.  Each provider becomes a pool named P.
 * Gaps (a missing P_API_KEY_i) are skipped and reported through `warn` (may
 * be NULL), one line each, naming the variable, never a value.  Fails with
 * KM_ECONFIG (message in errbuf) if a provider yields no key at all.
 * @note As km_config_parse(): thread-safe while no thread changes the
 * environment; `warn` is called on the calling thread only. */
KM_EXTERN int km_config_from_env(const char *providers, km_config **out,
                                 void (*warn)(void *ctx, const char *msg), void *ctx,
                                 char *errbuf, size_t errlen);

/* Create segment `name` ("name" or "/name") from a configuration, with
 * permission bits `mode` (0 means 0600), and attach to it.  Fails with
 * KM_EEXIST if the name is taken; on any failure no segment is left behind.
 * The segment holds the secrets, so `mode` is checked: KM_EINVAL for bits
 * outside 0777 (setuid, setgid, sticky: meaningless on a segment, never
 * silently dropped) and for a world-writable mode (o+w: any local user
 * could rewrite the pool and read every secret) unless KM_MODE_FORCE is
 * or'ed into `mode`.  The segment gets exactly `mode`'s permission bits
 * (the umask does not apply).
 * Atomic: the segment is built under a hidden temporary name (see
 * km_segment_sweep) and renamed into place without replacing anything, so
 * no process ever attaches to it half made, and a creator killed at any
 * instruction leaves no segment under `name`, only a temporary, which the
 * next km_create of that name (or km_segment_sweep, `kmctl reap NAME`)
 * removes once its creator is dead.  Names beginning ".kmtmp." are the
 * temporaries': KM_ENAME.
 * @note Thread-safe.  Threads that create the same name race as processes
 * do: one gets the segment, the others KM_EEXIST. */
KM_EXTERN int km_create(const char *name, const km_config *cfg, unsigned mode,
                        km_env **out);
/* Or'ed into km_create's or km_restore's `mode`: accept a world-writable
 * mode (kmctl create --force). */
#define KM_MODE_FORCE 0x10000u
/* Attach to an existing segment.  Distinct errors for a name that does not
 * exist (KM_ENOENT), no permission (KM_EACCES), an object that is not a
 * KeyMesh segment (KM_ENOTKM), another format (KM_EFORMAT) or layout
 * (KM_ELAYOUT), a truncated object (KM_ETRUNC), one still being created
 * (KM_ENOTREADY), or a full process table (KM_EPROCS).
 * @note Thread-safe.  Each handle takes its own slot in the process table,
 * so one process may hold several handles, on one segment or several; its
 * threads then share one handle or use one each.  A handle opened before a
 * fork() belongs to the parent. */
KM_EXTERN int km_open(const char *name, km_env **out);
/* km_open() with flags.  KM_OPEN_NO_REAP: do not release what dead
 * processes left behind while attaching (kmctl check, ps and reap use it to
 * look at a segment as it is).
 * KM_OPEN_READONLY: map the segment read-only and take no process slot: the
 * handle writes nothing to the segment, ever (a store would fault), needs
 * only read permission, works on a full process table, and does not count
 * among the attached processes.  Every reader works on it (info, stats,
 * km_check, km_snapshot_json, km_proc_info_get...); what writes returns
 * KM_EREADONLY: km_acquire, km_acquire_wait, km_release, reconfiguration,
 * km_key_set_state, km_reap, km_usage_drain, a snapshot with secrets (it
 * takes the admin lock).  Implies KM_OPEN_NO_REAP.  kmctl's inspect, ps,
 * check, stats, metrics, serve, top and snapshot open this way.
 * KM_OPEN_NO_SLOT: writable, but without a process slot (a full table does
 * not refuse it): km_reap, reconfiguration, km_key_set_state and the
 * readers work; km_acquire, km_acquire_wait, km_release and km_usage_drain
 * (which need a slot) return KM_EREADONLY.  kmctl reap and kmctl snapshot
 * --include-secrets open this way.
 * @note As km_open(). */
#define KM_OPEN_NO_REAP 1u
#define KM_OPEN_READONLY 2u
#define KM_OPEN_NO_SLOT 4u
KM_EXTERN int km_open_flags(const char *name, unsigned flags, km_env **out);
/* Release the leases still out through this handle (abandoned), deregister,
 * unmap and free the handle.  Accepts NULL.
 * @note Not concurrently with any other call on the same handle, and no
 * call on it may start afterwards: its memory is gone.  The caller makes
 * sure every other thread using the handle has returned (as with LMDB's
 * mdb_env_close).  Other handles, of this process or others, are
 * unaffected and may run meanwhile. */
KM_EXTERN int km_close(km_env *env);
/* Remove the segment's name.  Attached processes are not affected.
 * @note Thread-safe; a km_open() of the name racing it either attaches to
 * the old segment or gets KM_ENOENT. */
KM_EXTERN int km_unlink(const char *name);

/* ------------------------------------------------------ acquire / release */

typedef struct km_request {
    int pool;            /* pool index from km_pool_find() */
    int strategy;        /* KM_STRATEGY_DEFAULT: the pool's */
    uint32_t tokens;     /* estimated tokens, charged to token limits now */
    const char *model;   /* model name, or NULL.  A per_model pool applies
                          * that model's limits too (KM_ENOMODEL if unknown);
                          * a global pool with a model list checks the name;
                          * a pool without one takes any name.  Usage events
                          * name it (km_usage_event.model). */
    const char *key_id;  /* pin: only this key (KM_ENOKEY if unknown), or NULL;
                          * the id is looked up by a scan of the pool */
    uint64_t reserved[4];     /* zero (see "Conventions" at the top) */
} km_request;

typedef struct km_lease {
    /* Set on success: */
    int key;               /* key index in the segment */
    uint32_t key_gen;      /* generation of the key slot */
    int slot;              /* lease slot on the key */
    uint32_t seq;          /* lease sequence on that slot */
    int pool;              /* pool index */
    uint32_t tokens;       /* tokens charged at acquire */
    uint64_t start_ns;     /* CLOCK_MONOTONIC at acquire */
    /* On KM_EAGAIN: the earliest CLOCK_MONOTONIC time at which a key may be
     * admissible for the same request.  0 on success. */
    uint64_t retry_at_ns;
    uint32_t secret_len;
    int model;             /* model index + 1 in the pool; 0: none */
    uint32_t meta_len;
    char key_id[KM_ID_MAX + 1];      /* NUL-terminated; the bytes after the */
    char secret[KM_SECRET_MAX + 1];  /* NUL are unspecified.  secret: a copy
                                      * of the key's secret */
    char meta[KM_META_MAX + 1];      /* the key's metadata (JSON object text,
                                      * e.g. {"org":"org-1"}); "" if none */
    uint64_t reserved[4];            /* zeroed by km_acquire on success */
} km_lease;

/* Acquire a key from a pool.  Lock-free, one clock read, no system call in
 * the steady state (see "Concurrency" at the top).
 * Skips keys that are disabled, invalid, exhausted, cooling down, at their
 * in-flight capacity, or over any limit; charges one request and `tokens` to
 * every applicable limit of the chosen key (all or none).
 * Returns 0 and fills `lease`; KM_EAGAIN with lease->retry_at_ns when no key
 * is admissible now; KM_EUNAVAIL when no key can become admissible without an
 * operator; KM_ECOST when `tokens` exceeds a token limit's burst on every
 * usable key; KM_ENOPOOL/KM_EINVAL for bad arguments.
 * @note Thread-safe: any number of threads through one handle or several,
 * and any number of processes, concurrently with every call on the segment
 * (reconfiguration included).  The lease belongs to the handle (its process
 * slot), not to the thread: any thread may release it through that handle. */
KM_EXTERN int km_acquire(km_env *env, const km_request *req, km_lease *lease);

/* Blocking acquire: like km_acquire(), but while no key is admissible the
 * caller sleeps on a futex word in the segment until a key may be (a release,
 * an enable, a key added, the end of a cooldown or limit window; at most a
 * second at a time, so the lease of a holder that died is reaped) or
 * `timeout_ms` passes (KM_ETIMEDOUT; at once for 0).  Waking costs a system
 * call only when a waiter is counted; a caller about to sleep makes one
 * membarrier call.  Waiters are counted per process: one killed while it
 * waits is no longer counted once its process is reaped (km_reap(), an
 * attach, an acquire that finds no key).
 * Fairness: every release wakes every sleeper of the pool and each retries.
 * A caller that has failed 8 attempts (and named no key, req->key_id NULL)
 * claims the pool's reserve (the longest waiting such caller wins it) on
 * the key whose limits or cooldown will admit its request first: while it
 * holds it, every other acquire of the pool (km_acquire included) passes
 * over that key (KM_EAGAIN, retry_at_ns at most 1 ms ahead, if no other
 * key admits) and capacity builds up there for it alone, so a large
 * request under sustained overload by small ones waits a bounded time
 * instead of losing races until its timeout.  It drops the reserve when it
 * returns (leased, timed out or failed); a holder killed loses it at the
 * reap of its process, a stopped one within 2 s.
 * Errors other than KM_EAGAIN return at once.
 * @note As km_acquire(); a thread sleeping here holds no lock and blocks no
 * other caller. */
KM_EXTERN int km_acquire_wait(km_env *env, const km_request *req, km_lease *lease,
                              uint32_t timeout_ms);

/* view_flags: which parts of the provider's rate-limit view are given. */
#define KM_VIEW_REQUESTS 1u /* requests_remaining / requests_reset_ms */
#define KM_VIEW_TOKENS 2u   /* tokens_remaining / tokens_reset_ms */

typedef struct km_outcome {
    int kind;             /* km_outcome_kind */
    int64_t latency_us;   /* < 0: measure from the lease's start */
    int64_t tokens;       /* actual tokens used; < 0: keep the estimate */
    double retry_after_s; /* RATE_LIMITED: provider's Retry-After; <= 0: default */
    /* The provider's own view of the key's limits, from its rate-limit
     * headers (km_outcome_from_http fills it).  Zero-initialised: none. */
    uint32_t view_flags;
    uint64_t requests_remaining, tokens_remaining;
    uint64_t requests_reset_ms, tokens_reset_ms; /* until fully replenished */
    /* For spend: input and output tokens if known (< 0: unknown; both 0 with
     * tokens used also counts as unknown).  Without the split, all `tokens`
     * are priced at the output price. */
    int64_t input_tokens, output_tokens;
    uint64_t reserved[4];     /* zero (see "Conventions" at the top) */
} km_outcome;

/* What a provider answered, for km_outcome_from_http(). */
typedef struct km_http_response {
    int status;                 /* HTTP status code */
    const char *error_code;     /* provider error code or type if the caller
                                 * already has it ("insufficient_quota"), or NULL */
    const char *body;           /* response body (JSON error), or NULL */
    size_t body_len;
    const char *const *headers; /* name/value pairs: [2i] name, [2i+1] value */
    size_t n_headers;
    int64_t now_unix_ms;        /* wall clock for HTTP dates; 0: read it */
    uint64_t reserved[4];     /* zero (see "Conventions" at the top) */
} km_http_response;

/* Map a provider's answer to an outcome: sets out->kind, retry_after_s and
 * the rate-limit view; leaves latency_us, tokens, input_tokens and
 * output_tokens as the caller set them.
 * Understands OpenAI (rate_limit_exceeded vs insufficient_quota,
 * x-ratelimit-remaining/reset-requests/-tokens with durations like "6m0s"),
 * Anthropic (rate_limit_error, overloaded_error, anthropic-ratelimit-*
 * with RFC 3339 times), Gemini (RESOURCE_EXHAUSTED), and Retry-After in
 * seconds or as an HTTP date.  Never reads a secret; never fails on odd
 * headers (they are ignored).  Mapping table: docs/outcomes.md.  Returns
 * KM_EINVAL for NULL arguments (or NULL headers with n_headers > 0).
 * @note Thread-safe: reads only its arguments (and the wall clock when
 * now_unix_ms is 0). */
KM_EXTERN int km_outcome_from_http(const km_http_response *resp, km_outcome *out);

/* Release a lease with what happened.  Settles the token charge (refund or
 * extra charge), updates counters, latency EMA and health.  A lease already
 * released or reaped, or whose key slot was reused, is ignored, counted on
 * the key, and returns KM_ESTALE.  outcome NULL means CANCELLED.
 * @note Thread-safe for distinct leases, concurrently with every call on
 * the segment.  A lease is released through the handle that acquired it
 * (another handle gets KM_ESTALE), by one thread once: two threads
 * releasing the same lease at the same time is a caller's race (after one
 * release returned, another returns KM_ESTALE). */
KM_EXTERN int km_release(km_env *env, const km_lease *lease,
                         const km_outcome *outcome);

/* ---------------------------------------------------------- introspection */

typedef struct km_info {
    uint32_t format;
    uint32_t cap_keys, cap_pools, cap_procs, cap_inflight;
    uint32_t n_keys, n_pools, n_procs; /* n_keys: keys in pools now (a
                                        * removed key not counted); n_procs:
                                        * attached now; n_pools: pool rows
                                        * ever used, so every pool index is
                                        * below it (a removed one: KM_ENOPOOL
                                        * from km_pool_info_get) */
    uint64_t size_bytes;
    uint64_t created_wall_ns; /* CLOCK_REALTIME at creation */
    uint64_t reserved[4];     /* zeroed by the library */
} km_info;

typedef struct km_limit_info {
    uint64_t limit;      /* 0: no limit in this window */
    uint64_t burst;
    int mode;            /* km_limit_mode */
    uint32_t reserved0;  /* zeroed by the library (as reserved[]) */
    uint64_t available;  /* units admissible right now */
    uint64_t tat_ns;     /* the GCRA word (theoretical arrival time) */
    uint64_t reserved[2]; /* zeroed by the library; an array element of
                           * km_key_info, so kept small */
} km_limit_info;

/* A budget's period ("budget": {"period": ...}): spend_microusd counts
 * from the start of the current one and resets at its end, by the
 * calendar in the budget's time zone (CLOCK_REALTIME; see km_spend_reset
 * and docs/config.md for clock changes and suspend). */
typedef enum km_budget_period {
    KM_BUDGET_LIFETIME = 0, /* no period: the segment's life */
    KM_BUDGET_DAY = 1,
    KM_BUDGET_WEEK = 2,     /* from Monday 00:00 */
    KM_BUDGET_MONTH = 3     /* from the 1st, 00:00 */
} km_budget_period;

/* A budget's period and the spend of the period before (km_pool_info and
 * km_key_info .budget); all 0 without a budget. */
typedef struct km_budget_state {
    uint64_t prev_spent_microusd; /* the period before the current one (0: none) */
    uint64_t period_end_unix_ns;  /* when spent_microusd resets (CLOCK_REALTIME
                                   * ns); 0: no period */
    int32_t period;               /* km_budget_period */
    int16_t tz_min;               /* the period's zone, minutes east of UTC */
    uint16_t rolls;               /* periods ended so far (wraps) */
    uint32_t warnings;            /* times spend crossed a soft budget (at most
                                   * once per period) */
    uint32_t over;                /* 1: spend >= budget now (soft or hard) */
} km_budget_state;

typedef struct km_pool_info {
    char name[KM_ID_MAX + 1];
    int strategy;
    uint32_t n_keys;
    uint32_t cooldown_s, max_cooldown_s, max_failures;
    int model_mode;           /* km_model_mode */
    uint32_t n_models;
    uint64_t budget_microusd; /* 0: none */
    int budget_hard;          /* 1: refuse (KM_EBUDGET) when spent; 0: soft (counted
                               * in budget.warnings, flagged in budget.over) */
    uint64_t spent_microusd;
    uint32_t waiters;         /* callers sleeping in km_acquire_wait (one
                               * killed there until its process is reaped) */
    /* The budget's period, in what was reserved[4] (still so named: code
     * and bindings that mirror this struct by that name see the same size
     * and offsets). */
    union {
        km_budget_state budget;
        uint64_t reserved[4];
    };
} km_pool_info;

typedef struct km_key_info {
    char id[KM_ID_MAX + 1];
    char secret_masked[KM_MASKED_MAX]; /* "sk-…abcd"; never the secret */
    int pool;                 /* pool index */
    uint32_t weight, gen;
    int state;                /* km_key_state, COOLING derived from the clock */
    uint64_t cooldown_until_ns;
    uint32_t inflight, max_inflight;
    uint32_t consecutive_failures, consecutive_429s;
    uint64_t latency_ema_us;  /* 0 until the first sample */
    uint64_t acquired;
    uint64_t outcomes[KM_OUT_COUNT]; /* released leases, by outcome kind */
    uint64_t abandoned;       /* leases released by km_close or a reaper */
    uint64_t stale_releases;  /* releases ignored as stale */
    uint64_t tokens_used;     /* tokens settled at release (actual or estimate) */
    km_limit_info limits[KM_WIN_COUNT];
    uint32_t success_ppm;     /* recent success rate (EMA), parts per million */
    uint64_t price_in_microusd_per_1k, price_out_microusd_per_1k;
    uint64_t budget_microusd; /* 0: none */
    int budget_hard;
    uint64_t spent_microusd;
    char meta[KM_META_MAX + 1];
    /* The budget's period, in what was reserved[4] (still so named: code
     * and bindings that mirror this struct by that name see the same size
     * and offsets). */
    union {
        km_budget_state budget;
        uint64_t reserved[4];
    };
} km_key_info;

/* The readers below (km_info_get ... km_model_info_get) take no lock, write
 * nothing to the segment and make no system call.
 * @note Each is thread-safe, concurrently with every call on the segment
 * from any thread of any process.  Each number is read atomically; the
 * numbers of one struct need not be mutually consistent while leases move,
 * and a key added or removed meanwhile may or may not be seen. */
KM_EXTERN int km_info_get(km_env *env, km_info *out);
/* Index of pool `name`, or KM_ENOPOOL.  The index stays the pool's until
 * the pool is removed (km_pool_remove); a removed pool is not found.
 * @note As km_info_get(). */
KM_EXTERN int km_pool_find(km_env *env, const char *name);
/* Index of the segment's first pool still in use (the lowest index; pool 0
 * until it is removed), or KM_ENOPOOL if every pool was removed: the pool
 * the bindings open when none is named.
 * @note As km_info_get(). */
KM_EXTERN int km_pool_first(km_env *env);
/* Pool `pool`; KM_ENOPOOL for an index out of range or a removed pool.
 * @note As km_info_get(). */
KM_EXTERN int km_pool_info_get(km_env *env, int pool, km_pool_info *out);
/* Key index of key `id` in `pool`, or KM_ENOKEY.  On a handle without a
 * process slot (KM_OPEN_READONLY, KM_OPEN_NO_SLOT) the lookup cannot hold
 * reclamation back: it rescans while a grace period starts under it, and
 * returns KM_EBUSY if one keeps starting (reconfiguration without pause).
 * @note As km_info_get(). */
KM_EXTERN int km_key_find(km_env *env, int pool, const char *id);
/* Key index of the key of `pool` whose secret is `secret` (NUL-terminated),
 * or KM_ENOKEY: for a caller that holds the API key but not its id (pinning
 * by secret, re-adding a key).  Every key's secret is compared in constant
 * time, all of them whatever matches; the secret is never copied, logged
 * or put in an error.  A removed key is not found.
 * @note Thread-safe, as km_key_find(): concurrently with every call on the
 * segment from any thread of any process, without a lock or a system call;
 * a key added or removed meanwhile may or may not be found. */
KM_EXTERN int km_key_find_secret(km_env *env, int pool, const char *secret);
/* Key index of the i-th member of a pool (0 <= i < km_pool_info.n_keys),
 * KM_ENOKEY past the end.
 * @note As km_info_get(); members added or removed meanwhile shift i. */
KM_EXTERN int km_pool_key(km_env *env, int pool, int i);
/* The key in row `key`; KM_ENOKEY for a free or removed row.
 * @note As km_info_get(). */
KM_EXTERN int km_key_info_get(km_env *env, int key, km_key_info *out);
/* Name of model `i` (0-based) of a pool, and the limits of that model on
 * key `key` (limits[w].limit == 0: none).  KM_ENOMODEL past the end.
 * @note As km_info_get(). */
KM_EXTERN int km_model_info_get(km_env *env, int pool, int i, int key,
                                char name[KM_ID_MAX + 1], km_limit_info limits[KM_WIN_COUNT]);
/* Which windows of model `i` of a pool key `key` sets itself
 * (km_key_set_model_limits, or the key's "models" in the configuration):
 * bit w set in *windows for window w (KM_WIN_*); 0 when the key has the
 * pool's limits of that model.  km_model_info_get gives the limits in
 * force, own or not.  KM_ENOMODEL past the end, KM_ENOKEY for a key not
 * of the pool.
 * @note As km_info_get(). */
KM_EXTERN int km_model_own_get(km_env *env, int pool, int i, int key, uint32_t *windows);

/* Operator action on a key: KM_KEY_ACTIVE (enable: clears invalid,
 * exhausted, cooldowns and failure counts; a key whose hard budget is spent
 * is exhausted again at its next acquire), KM_KEY_DISABLED (disable), and
 * nothing else.  Leases already out may finish.  Takes the admin lock, as
 * reconfiguration does ("live reconfiguration" below): KM_EBUSY if a
 * reconfiguration holds it past the handle's admin timeout.
 * @note Thread-safe: concurrently with every call on the segment; it
 * serialises with reconfiguration (and other km_key_set_state calls) on
 * the admin lock, while acquire, release and the readers never wait for
 * it. */
KM_EXTERN int km_key_set_state(km_env *env, int key, int state);

/* Operator action: set the spend of key `key` (km_spend_reset) or of pool
 * `pool` (km_pool_spend_reset) in its current period to 0, and store what
 * it was in *was_microusd (may be NULL).  The previous period's figure and
 * the period's end are left as they are; a key that a hard lifetime budget
 * made exhausted stays exhausted until enabled (km_key_set_state).
 * KM_ENOKEY / KM_ENOPOOL, KM_EREADONLY for a read-only handle.
 * @note Thread-safe, concurrently with every call on the segment: one
 * atomic exchange, so a release settling meanwhile counts wholly before the
 * reset (and is part of *was_microusd) or after it.  Takes no lock. */
KM_EXTERN int km_spend_reset(km_env *env, int key, uint64_t *was_microusd);
KM_EXTERN int km_pool_spend_reset(km_env *env, int pool, uint64_t *was_microusd);

/* The time zone of the budget of key `key` (key >= 0) or else of pool
 * `pool`, as configured: "UTC", a fixed offset "+HH:MM", or a tz database
 * name such as "Europe/Paris" (km_budget_state.tz_min is then the offset
 * in force now), into buf (n bytes; 64 hold any).  KM_ENOKEY / KM_ENOPOOL.
 * @note Thread-safe; takes no lock. */
KM_EXTERN int km_budget_tz(km_env *env, int pool, int key, char *buf, size_t n);

/* ------------------------------------------------- live reconfiguration
 *
 * Keys are added, removed, re-weighted and given new limits while workers
 * acquire and release.  These calls (and km_key_set_state) serialise on an
 * admin lock in the segment, a robust process-shared mutex; acquire and
 * release never take it and never wait for them.  Each records its intent in
 * the segment before it changes anything, so a caller killed at any
 * instruction (Ctrl-C on `kmctl add-key`) is finished or undone by whoever
 * finds it dead: the next of these calls, a reap (km_reap, the reap of
 * km_open, km_acquire's before it returns KM_EAGAIN) or an attach.  After
 * that the key is either fully there or absent (add, remove), its weight,
 * limits or state either old or new, never half of each; no key row is lost
 * and no key stays skipped.  km_check reports an intent whose writer is
 * dead until then.
 * What a running acquire may see is protected by epochs across processes
 * (shm/epoch.c): a member list, a key row or a key's limits replaced by a
 * reconfiguration is rewritten only after a grace period, once every
 * acquire that could have seen the old one has finished.  A grace period
 * waits at most the handle's admin timeout (km_set_admin_timeout, default
 * 1000 ms); a live process stalled inside an acquire (stopped, or in a
 * debugger) makes it time out with KM_EBUSY, and km_reader_info_get /
 * `kmctl inspect` name that process.  Dead processes never hold it back.
 */

/* Add a key to `pool`.  key_json is one key object as in the configuration
 * file (pools[].keys[]: "id", "secret" or "secret_env", "weight", "limits",
 * "max_inflight", "price", "budget", "meta"); windows, prices and
 * max_inflight it leaves out take the pool's configured defaults.  The key
 * is active and in the pool's member list when the call returns.  Returns
 * the new key's index (>= 0), or KM_ECONFIG (reason in errbuf, which never
 * holds the secret), KM_EKEYEXISTS (id in use in the pool), KM_EDUPSECRET
 * (a key of any pool already holds that secret, which would get its limits
 * twice; errbuf names that key's id and pool, never the secret), KM_EFULL
 * (every key row in use, or removed but not yet reclaimable: still in its
 * grace period or with leases out), KM_EBUSY (grace period timed out).
 * @note Thread-safe: like every reconfiguration call it takes the admin
 * lock, so calls from any threads and processes run one at a time, while
 * acquire, release and the readers go on. */
KM_EXTERN int km_key_add(km_env *env, int pool, const char *key_json,
                         char *errbuf, size_t errlen);

/* Remove a key.  From the moment this returns, no acquire that starts
 * afterwards gets the key (it is skipped by state at once; it leaves the
 * member list too).  Leases already out may finish; their releases settle
 * as usual.  The row, with its id and secret bytes, is reused by a later
 * km_key_add only after a grace period and once its last lease is back.
 * KM_OK even if the member list could not be rebuilt within the admin
 * timeout (a stalled reader): the key is removed all the same, and the list
 * is rebuilt by the next add, remove or re-weight in the pool.
 * @note As km_key_add(). */
KM_EXTERN int km_key_remove(km_env *env, int key);

/* Change a key's weight (1..1000000), used by the weighted strategy.
 * KM_EBUSY: grace period timed out, nothing changed.
 * @note As km_key_add(). */
KM_EXTERN int km_key_set_weight(km_env *env, int key, uint32_t weight);

/* Change a key's limits.  limits_json is an object of windows as in the
 * configuration ("rpm": 500, "tpm": {"limit": 90000, "mode": "sliding"});
 * windows it names replace the key's, null removes a window's limit, and
 * the others are kept.  A window's current debt carries over in units (as
 * many requests or tokens still count against the new limit as against the
 * old).  While the change is applied (one grace period) acquirers skip the
 * key.  KM_ECONFIG (errbuf), KM_EBUSY (grace period timed out, nothing
 * changed).
 * @note As km_key_add(). */
KM_EXTERN int km_key_set_limits(km_env *env, int key, const char *limits_json,
                                char *errbuf, size_t errlen);

/* Change a key's own limits of one model of its pool (a per_model pool):
 * limits_json as for km_key_set_limits; windows it names become the key's
 * own for that model, null gives a window back to the pool's limit of the
 * model, and the others are kept (the key's own, or the pool's).  A key
 * with no window of its own left has the pool's limits of the model
 * again.  The model's current debt on the key carries over in units, and
 * acquirers skip the key for one grace period, as for km_key_set_limits.
 * KM_ENOMODEL (the pool lists no such model), KM_ECONFIG (errbuf: bad
 * limits, or a pool without per-model limits), KM_EBUSY (grace period
 * timed out, nothing changed).
 * @note As km_key_add(). */
KM_EXTERN int km_key_set_model_limits(km_env *env, int key, const char *model,
                                      const char *limits_json, char *errbuf, size_t errlen);

/* Pools change live too, on the same admin lock, intents and grace periods
 * as keys (crash-safe: a writer killed anywhere is finished or undone by
 * the next writer, a reap, an attach or `kmctl repair`).  Workers attached
 * see a change without attaching again; an acquire that starts after one
 * of these calls returns sees only the new configuration.  The number of
 * pools is bounded by capacity.pools, fixed at creation.
 *
 * Add a pool: pool_json is one element of a configuration's "pools" (name,
 * strategy, limits, models, keys..., presets too), checked as a
 * configuration is (and its secrets against the segment's).  Returns the
 * new pool's index (>= 0), or KM_ECONFIG (errbuf says why: bad JSON, a
 * pool of that name already, ...), KM_EDUPSECRET, KM_EFULL (no free pool
 * row, or not enough key rows: errbuf says which), KM_EBUSY.
 * @note As km_key_add(). */
KM_EXTERN int km_pool_add(km_env *env, const char *pool_json, char *errbuf, size_t errlen);

/* Change a pool.  settings_json names what changes: "strategy",
 * "cooldown_s", "max_cooldown_s", "max_failures", "budget" (an object as in
 * the configuration, or null for none), "limits" (windows named replace
 * the pool's on every key of the pool and for keys added later, null
 * removes one; debts carry over as in km_key_set_limits), "models" (a
 * named model's limits replace its limits, per_model pools; a model not in
 * the pool is appended, up to capacity.models, in a pool that has a models
 * list; a key's own limits of a model, km_key_set_model_limits, stand).
 * A model cannot be removed or renamed, nor a pool's name,
 * model_limits, price or max_inflight changed: KM_ECONFIG says so.  The
 * parts are applied in turn (settings, models, limits), each recorded and
 * crash-safe on its own; while a part with limits is applied (one grace
 * period) acquirers skip the pool's keys.  KM_ENOPOOL, KM_ECONFIG, KM_EFULL
 * (models beyond capacity), KM_EBUSY (grace period timed out: that part
 * and the ones after it not applied).
 * @note As km_key_add(). */
KM_EXTERN int km_pool_set(km_env *env, int pool, const char *settings_json, char *errbuf,
                          size_t errlen);

/* km_pool_remove flag: remove even if leases are still out after the
 * timeout (their releases are then stale: counted, nothing settled). */
#define KM_POOL_FORCE 1u
/* Remove a pool.  Acquires are refused at once (KM_ENOPOOL, sleepers of
 * km_acquire_wait too); the call then waits up to timeout_ms for the
 * pool's leases to come back.  KM_EBUSY if some are still out (nothing
 * removed: the pool is handed out again) unless flags has KM_POOL_FORCE.
 * After KM_OK no acquire gets a key of the pool, km_pool_find no longer
 * finds it, and its keys' rows and the pool's row are reused by later adds.
 * An index kept from km_pool_find may then name a pool added later in the
 * same row: find pools by name again after KM_ENOPOOL.  The admin lock is
 * held while waiting.
 * @note As km_key_add(). */
KM_EXTERN int km_pool_remove(km_env *env, int pool, uint32_t timeout_ms, unsigned flags);

/* How long this handle's reconfiguration calls wait for a grace period.
 * @note Thread-safe: a relaxed atomic store; a reconfiguration call on the
 * handle running meanwhile waits with the old value or the new one. */
KM_EXTERN int km_set_admin_timeout(km_env *env, uint32_t timeout_ms);

typedef struct km_epoch_info {
    uint64_t epoch;      /* global epoch: bumped by every grace period */
    uint64_t synced;     /* every reader that entered before it has left */
    uint64_t reconfigs;  /* reconfigurations applied since creation */
    uint32_t rows_per_process;
    int membarrier;      /* 1: this process's readers rely on membarrier */
    uint64_t reserved[4];     /* zeroed by the library */
} km_epoch_info;
/* @note As the readers above (km_info_get). */
KM_EXTERN int km_epoch_info_get(km_env *env, km_epoch_info *out);

/* A reader row inside an acquire right now.  Row `row` (0..rows_per_process
 * - 1; row 0 is shared by a process's extra threads) of process slot
 * `slot`; KM_ENOSLOT if the row is idle or its slot free.
 * @note As the readers above; it also checks the process's liveness (a
 * system call). */
typedef struct km_reader_info {
    uint32_t pid, tid;      /* tid 0: the shared row */
    int shared;
    int alive;
    uint64_t epoch;         /* epoch at which it entered */
    uint64_t epochs_behind; /* global epoch minus that */
    uint64_t inside_ns;     /* how long it has been inside */
    uint64_t reserved[4];     /* zeroed by the library */
} km_reader_info;
KM_EXTERN int km_reader_info_get(km_env *env, int slot, int row,
                                 km_reader_info *out);

/* ------------------------------------------------------ processes, repair */

typedef struct km_proc_info {
    uint32_t pid;
    int alive;             /* 0: the process died without detaching */
    uint64_t attached_ns;  /* CLOCK_MONOTONIC at attach */
    uint32_t leases;       /* leases it holds now */
    uint64_t reserved[4];     /* zeroed by the library */
} km_proc_info;

/* The process in table slot `slot` (0 <= slot < km_info.cap_procs);
 * KM_ENOSLOT for a free slot.  Checks liveness (a system call).
 * @note As the readers above (km_info_get). */
KM_EXTERN int km_proc_info_get(km_env *env, int slot, km_proc_info *out);

typedef struct km_reap_report {
    uint32_t processes; /* dead processes whose table slots were freed */
    uint64_t leases;    /* their leases released (abandoned, settled at the estimate) */
    uint32_t recounted; /* keys whose reservations were recounted because a
                         * dead process stopped mid-acquire or mid-release */
    uint32_t pending;   /* dead processes left for a later reap: a live
                         * process kept a recount from settling */
    uint32_t repaired;  /* keys whose token reservations had drifted from
                         * their live leases and were set right (km_reap
                         * only; should be 0, see docs/kmctl.md) */
    uint64_t reserved[4];     /* zeroed by the library */
} km_reap_report;

/* Find processes that died without detaching and release what they held:
 * in-flight counts drop, token reservations settle at the estimate, and the
 * leases count as abandoned on their keys.  Safe to run concurrently with
 * any other operation and with other reapers (each lease is released once).
 * km_open() reaps before it registers; km_acquire() reaps, at most once a
 * second per process, when it is about to return KM_EAGAIN or KM_EUNAVAIL.
 * km_reap() (not the automatic reaps) also checks every key's token
 * reservations against its live leases under the same validated scan and
 * sets right any drift, counted in `repaired`.
 * Makes system calls (one liveness check per attached process).  A process
 * that exited counts as dead even while it is a zombie (not yet waited for by
 * its parent).
 * @note Thread-safe, as said above. */
KM_EXTERN int km_reap(km_env *env, km_reap_report *out);

/* Check the segment's invariants: in-flight counts equal live leases, no
 * lease on a free key slot or owned by no process, reservations equal the
 * leases that made them and within their bursts, limit words within bounds,
 * a consistent process table (dead processes not yet reaped count as
 * violations), and no reconfiguration left half made by a writer that died
 * (its intent, a key live outside every member list or skipped for good,
 * member weights against the keys', the count of rows in use).  Writes
 * nothing: works on a KM_OPEN_READONLY handle.  Calls `report` (may be
 * NULL) once per violation with one line; returns the number of
 * violations, or a negative error.  Run it when
 * the segment is quiet for exact results: a lease moving while it looks is
 * re-read, not reported, but counts can shift between two reads.
 * @note Thread-safe; writes nothing.  `report` runs on the calling thread. */
KM_EXTERN int km_check(km_env *env, void (*report)(void *ctx, const char *line), void *ctx);

/* ------------------------------------------- private segments, by descriptor
 *
 * A private segment has no name: it lives in a memfd (no file in /dev/shm)
 * that the kernel frees when the last process that maps it or holds its
 * descriptor ends, so a crash, SIGKILL included, leaves nothing behind, no
 * secret either.  Children inherit it across fork() (the descriptor is
 * close-on-exec: a program exec'd later does not) and attach through it:
 *   km_env *child;
 *   km_open_fd(km_fd(inherited), 0, &child);  (then never use `inherited`)
 * Unrelated processes may receive the descriptor over a Unix socket
 * (SCM_RIGHTS) and do the same.  Everything else works as on a named
 * segment; km_unlink has nothing to remove. */

/* Create a private segment from a configuration and attach to it.  Errors
 * as km_create (KM_ENOMEM when the memory cannot be reserved).
 * @note Thread-safe; any number of processes and threads may create
 * private segments at once (each gets its own). */
KM_EXTERN int km_create_private(const km_config *cfg, km_env **out);
/* The descriptor of a private segment (>= 0, owned by the handle: it is
 * closed by km_close, never by the caller), or KM_EINVAL for a named one.
 * @note Thread-safe; reads the handle only. */
KM_EXTERN int km_fd(km_env *env);
/* Attach to the segment behind an open descriptor, as km_open_flags does by
 * name (same flags, same errors; KM_EINVAL for a descriptor that is not
 * open).  The handle keeps its own duplicate: the caller may close `fd`.
 * @note Thread-safe, as km_open. */
KM_EXTERN int km_open_fd(int fd, unsigned flags, km_env **out);

/* --------------------------------------------- segments by name, unattached
 *
 * A creation (km_create, km_restore) builds its segment under a hidden
 * temporary name, "/dev/shm/.kmtmp.<pid>.<start time>.<n>.<name>", that
 * names its creator, and renames it into place at the end.  A creator
 * killed half-way leaves the temporary (with whatever secrets it had
 * written); km_segment_sweep removes those whose creator is dead. */

typedef enum {
    KM_SEG_KEYMESH = 0,   /* a KeyMesh segment (status: can this library attach?) */
    KM_SEG_TEMPORARY = 1, /* a creation's temporary (creator_*, target) */
    KM_SEG_FOREIGN = 2,   /* not KeyMesh's: another program's object */
    KM_SEG_UNREADABLE = 3 /* this user may not read it (status KM_EACCES) */
} km_segment_kind;

typedef struct km_segment_desc {
    int32_t kind;             /* km_segment_kind */
    int32_t status;           /* what a read-only km_open_flags would answer:
                               * KM_OK, KM_ENOTREADY (being created, or a
                               * creation that died), KM_EFORMAT, KM_ELAYOUT
                               * (another version), KM_ETRUNC, KM_ECORRUPT,
                               * KM_ENOTKM, KM_EACCES */
    uint64_t size_bytes;      /* the object's size (stat) */
    uint32_t mode, uid, gid;  /* its permission bits and owner */
    uint32_t format;          /* the header's format; 0 unless KeyMesh's magic */
    uint32_t creator_pid;     /* TEMPORARY: who builds it */
    int32_t creator_alive;    /* TEMPORARY: 1 if that process still runs */
    char target[KM_SEG_NAME_MAX + 1]; /* TEMPORARY: the name it is to get */
    /* status KM_OK: */
    uint32_t attached;        /* processes in its process table */
    uint32_t alive;           /* of those, alive (the others: dead, not reaped) */
    uint32_t n_pools, n_keys, cap_keys, cap_procs; /* pools and keys now
                                                    * (removed ones not counted) */
    uint64_t created_wall_ns; /* CLOCK_REALTIME at creation */
    uint64_t reserved[4];     /* zero */
} km_segment_desc;

/* Describe object `name` in /dev/shm without attaching to it: what it is
 * (KeyMesh's, a temporary, another program's), its size, mode and owner,
 * and, for a KeyMesh segment this library reads, its processes, pools and
 * keys.  Reads the segment read-only; takes no process slot; writes
 * nothing.  KM_OK (then see out->kind and out->status), KM_ENOENT,
 * KM_ENAME, KM_EINVAL (NULL), KM_ESYS.
 * @note Thread-safe; may run concurrently with anything on the segment
 * (the numbers are read as km_info_get reads them). */
KM_EXTERN int km_segment_describe(const char *name, km_segment_desc *out);

/* Remove the temporaries of segment `name` (NULL: of every segment) whose
 * creator is dead (its pid gone, or reused by a process of another start
 * time); a live creator's are left alone, and so are other users' that
 * this user may not remove.  *removed (may be NULL) gets how many were
 * removed.  km_create sweeps its own name's; `kmctl reap NAME` sweeps
 * NAME's.  KM_OK, KM_ENAME, KM_ESYS (/dev/shm unreadable).
 * @note Thread-safe; several sweepers remove each temporary once. */
KM_EXTERN int km_segment_sweep(const char *name, uint32_t *removed);

/* Snapshot of the whole segment as JSON (format in docs/kmctl.md): every pool and
 * key with state, limits and counters.  Secrets are masked.  *out is
 * malloc'd; release it with free().
 * @note Thread-safe, a reader as km_key_info_get() (so keys may move while
 * it walks them). */
KM_EXTERN int km_snapshot_json(km_env *env, char **out);

/* Snapshot with secrets, and restore.
 *
 * km_snapshot_json_ex(env, KM_SNAPSHOT_SECRETS, key, &out) adds to each key
 * "secret_enc": its secret encrypted with XChaCha20-Poly1305 (libsodium)
 * under the 32-byte `key`, a random nonce per secret, the pool and key id
 * as associated data; the snapshot's "secret" stays masked.  flags 0 (key
 * NULL) is km_snapshot_json().  Every snapshot (format 2) also carries what
 * a restore needs: limit windows and cooldowns as wall-clock times, pool
 * defaults, per-model windows.
 *
 * km_restore() creates segment `name` (mode as km_create; KM_EEXIST if it
 * exists; NULL: a private segment, as km_create_private) from such a
 * snapshot: pools, keys, weights, limits, counters,
 * limit windows and cooldowns.  Wall-clock times are converted back to the
 * monotonic clock, so a cooldown or a window's debt runs out in real time,
 * across a reboot.  Leases that were out are not restored (their processes
 * belong to the old segment).  The segment is filled under a temporary name
 * and renamed into place, so no worker attaches to it half restored.  The
 * secrets are decrypted with `key`: KM_ECRYPTO if it is the wrong key or the
 * file was altered; KM_ECONFIG (errbuf says why) if the snapshot has no
 * secrets or is not a restorable snapshot.  *out (may be NULL) receives a
 * handle on the new segment.
 * @note km_snapshot_json_ex: as km_snapshot_json().  km_restore: as
 * km_create(). */
#define KM_SNAPSHOT_KEY_BYTES 32
#define KM_SNAPSHOT_SECRETS 1u
KM_EXTERN int km_snapshot_json_ex(km_env *env, unsigned flags, const unsigned char *key,
                                  char **out);
KM_EXTERN int km_restore(const char *name, const char *json, size_t len,
                         const unsigned char *key, unsigned mode, km_env **out,
                         char *errbuf, size_t errlen);
/* A snapshot key from text: 64 hex digits or 44 base64 characters (a
 * trailing newline is ignored), or exactly 32 raw bytes.  KM_EINVAL if it
 * is none of these.
 * @note Thread-safe. */
KM_EXTERN int km_snapshot_key_parse(const void *text, size_t len,
                                    unsigned char key[KM_SNAPSHOT_KEY_BYTES]);
/* A new random snapshot key, as 64 hex digits and a NUL.
 * @note Thread-safe (libsodium's generator). */
KM_EXTERN int km_snapshot_keygen(char hex[2 * KM_SNAPSHOT_KEY_BYTES + 1]);

/* ---------------------------------------------------------- usage events
 *
 * Every release (and every lease a reaper releases as abandoned) appends one
 * event to a ring of the releasing process in the segment: two rings per
 * process slot (one for the process's first acquiring thread alone, one for
 * its other threads), capacity.usage_events between them (default 4096; 0:
 * none).  Appending never blocks: a full ring overwrites its oldest events,
 * and the drainer counts them as dropped.  km_usage_drain() reads every ring
 * once, in order per ring, calling fn for each event; one drainer at a time per segment
 * (KM_EBUSY if another live process is draining).  fn returning non-zero
 * stops the drain there (that event stays for the next drain) and
 * km_usage_drain returns that value.  `kmctl persist` drains into SQLite.
 *
 * A drain consumes what it hands out.  To lose nothing when the drainer
 * dies before it has stored the events elsewhere, drain in two phases:
 * km_usage_drain_ex(KM_USAGE_DEFER), store, km_usage_commit().  A drainer
 * that dies in between leaves the events in the rings, and the next drain
 * hands them out again, each with the same identity (segment_ns, ring,
 * seq): a consumer that keeps it under a unique index (kmctl persist does)
 * stores every event exactly once. */
typedef struct km_usage_event {
    uint64_t start_unix_ns;   /* when the lease was acquired, wall clock */
    uint64_t latency_us;      /* as reported, or measured where the release
                               * gave < 0; UINT64_MAX: none (reaped) */
    uint64_t tokens;          /* settled tokens */
    int outcome;              /* km_outcome_kind, or KM_OUT_COUNT: abandoned */
    uint32_t pid;             /* process that recorded it */
    char pool[KM_ID_MAX + 1];
    char key_id[KM_ID_MAX + 1]; /* "#ROW.GEN" if the key's row was reused since */
    char model[KM_ID_MAX + 1];  /* the request's; "" if none; "?" if a pool
                                 * without a models list has met more than
                                 * capacity.models names (docs/kmctl.md) */
    /* The event's identity, the same every time a drain hands it out: */
    uint64_t seq;             /* its number in its ring, from 0 */
    uint64_t segment_ns;      /* the segment's created_wall_ns (km_info): a
                               * segment created anew (restart, restore)
                               * numbers its events anew */
    int ring;                 /* its ring, 0 .. 2 * cap_procs - 1: process
                               * slot * 2, + 1 for the slot's shared ring */
    uint32_t reserved0;       /* zeroed by the library (as reserved[]) */
    uint64_t reserved[1];     /* zeroed by the library */
} km_usage_event;

typedef struct km_usage_report {
    uint64_t events;          /* handed to fn by this drain */
    uint64_t dropped;         /* found overwritten by this drain */
    uint64_t dropped_total;   /* since creation */
    uint64_t reserved[4];     /* zeroed by the library */
} km_usage_report;

/* @note One drainer per segment: another process's drain gets KM_EBUSY.
 * Two threads must not drain through the same handle at once (they would
 * share the drainer's claim); through different handles they exclude each
 * other as processes do.  Appending (every release) never waits for it. */
KM_EXTERN int km_usage_drain(km_env *env, int (*fn)(void *ctx, const km_usage_event *ev),
                             void *ctx, km_usage_report *out);
/* km_usage_drain() with flags (0: exactly km_usage_drain).
 * KM_USAGE_DEFER: hand the events out as km_usage_drain does, but consume
 * nothing yet: the cursors reached and the drops found are kept in the
 * handle until km_usage_commit().  Without a commit, the next drain (any
 * flags; of this handle or, once this process is gone, of another) starts
 * where the last committed one ended and hands the same events out again,
 * with the same seq, ring and segment_ns; it forgets the uncommitted one.
 * Meanwhile this process stays the drainer, and releases go on appending
 * (a ring overrun counts what it overwrote, delivered or not, as dropped
 * at the next drain).  out->dropped_total includes this drain's drops.
 * KM_EINVAL for another flag; KM_ENOMEM if the handle's room for the
 * cursors (16 bytes per ring, once) cannot be allocated.
 * @note As km_usage_drain(); the commit belongs to the same handle, and no
 * other drain of that handle may run between the two. */
#define KM_USAGE_DEFER 1u
KM_EXTERN int km_usage_drain_ex(km_env *env, unsigned flags,
                                int (*fn)(void *ctx, const km_usage_event *ev), void *ctx,
                                km_usage_report *out);
/* Consume what the last km_usage_drain_ex(KM_USAGE_DEFER) of this handle
 * handed out: store its cursors and drop counts in the segment.  KM_OK
 * also when nothing is pending (no deferred drain, or committed already).
 * KM_EBUSY (and nothing stored: the next drain hands the events out
 * again) if this process is no longer the drainer, which happens only if
 * the segment was written behind the library's back: a live drainer's
 * claim is never taken.
 * @note Not concurrently with a drain or another commit through the same
 * handle.  Appending (every release) never waits for it. */
KM_EXTERN int km_usage_commit(km_env *env);

/* Mask a secret for display: "sk-…abcd" style, at most KM_MASKED_MAX - 1
 * bytes + NUL.
 * @note Thread-safe. */
KM_EXTERN void km_mask_secret(const char *secret, char out[KM_MASKED_MAX]);

/* ---------------------------------------------------------- provider presets
 *
 * Published per-provider, per-model limits that a pool takes with
 * "preset": "groq" (and "tier" where the provider has several); see
 * docs/config.md, "Presets".  The library carries presets/presets.json,
 * compiled in; KEYMESH_PRESETS=FILE in the environment of the process that
 * parses a configuration (or calls this) replaces it with FILE.
 *
 * km_presets_json() writes the presets as JSON text into *out, malloc'd
 * (free() it): {"presets_schema": 1, "origin": "<file, or
 * \"presets/presets.json (built in)\">", "providers": {"<provider>":
 * {"name", "note"?, "tiers": {"<tier>": {"sources": [{"url", "read"
 * (YYYY-MM-DD), "note"?}], "note"?, "limits"?: {"rpm": N, ...}, "models"?:
 * {"<model>": {"rpm": N, ...}}}}}}}, every provider, or only `provider`
 * (NULL: all).  KM_EINVAL: out NULL, or no preset of that name (errbuf lists
 * the known ones); KM_ECONFIG: the KEYMESH_PRESETS file is malformed
 * (errbuf: "FILE:LINE:COLUMN: ..." or "FILE: <path in it>: ..."); KM_ESYS:
 * it cannot be read (errbuf: "FILE: <strerror>"); KM_ENOMEM.
 * @note Thread-safe if no thread changes the environment meanwhile. */
KM_EXTERN int km_presets_json(const char *provider, char **out, char *errbuf,
                              size_t errlen);

/* ------------------------------------------------------------- statistics
 *
 * What an operator asks of a segment ("which keys are hot, which cool down,
 * how close is each limit"), computed from the readers above as of now:
 * per key, per pool, per model of a pool and per key x model.  kmctl stats,
 * metrics, serve and top, and the bindings' stats(), are built on these.
 *
 * Growth without an ABI break.  Every km_*_stats struct is filled up to the
 * `size` its caller passes (sizeof the struct it was compiled with), and
 * its first member `size` says how many bytes the library filled: fields
 * are only ever appended, so a caller built against an older, shorter
 * struct gets the fields it knows, and a caller built against a newer one
 * sees from `size` which trailing fields this library did not fill (they
 * are zero).  Pass sizeof(*out).
 *
 * Windows.  For each limit window (km_window) a km_window_stats gives the
 * limit as configured and its use now, in units (requests or tokens) in
 * both limit modes:
 *   left  units admissible now (km_limit_info.available): a request of
 *         `left` units or fewer would pass this window;
 *   used  burst - left: units counted against the window now, including
 *         the token reservations of leases still out.  token_bucket: units
 *         drawn from the bucket and not yet refilled.  sliding: units still
 *         held against the tolerance; `left` never exceeds `burst`, so a
 *         sliding window with the default burst (limit/10) shows at most
 *         limit/10 left even when idle;
 *   full_in_ms  time until `used` is back to 0 if nothing more is admitted
 *         (used x the emission interval; see km_limit_mode).
 * used/burst is how close the window is to refusing (0..1).
 *
 * Per-model counters.  Requests, outcomes, abandoned and stale releases
 * and tokens are counted per key and per key x model
 * (km_model_stats.counters_valid is 1): a request that names a model counts
 * on its key and on that key x model, one that names none on its key only;
 * a model's counters over a pool are the sums over its keys.  The models of
 * a pool are its listed ones or, in a pool without a models list, the
 * names its requests gave (in the order first given, at most
 * capacity.models): n_models of km_pool_stats and km_key_stats counts
 * either.  A process killed between a key's count and its key x model
 * count leaves the latter short by one (as a kill between a lease's phases
 * leaves the key's own, README "Counters").  A stale release whose lease
 * names a model of a pool without a models list counts on the key only.
 * Per-model windows are those of per_model pools.
 */

#define KM_KEY_STATE_COUNT 6 /* km_key_state values: ACTIVE .. EXHAUSTED */

typedef struct km_window_stats {
    uint64_t limit;      /* units per period; 0: no limit (all fields 0) */
    uint64_t burst;      /* most units admissible at once */
    int32_t mode;        /* km_limit_mode */
    uint32_t period_s;   /* 60, 3600 or 86400 */
    uint64_t used;       /* burst - left */
    uint64_t left;       /* admissible now */
    uint64_t full_in_ms; /* until used is 0, if nothing more is admitted */
} km_window_stats;

typedef struct km_stats_counters {
    uint64_t requests;               /* leases acquired */
    uint64_t outcomes[KM_OUT_COUNT]; /* leases released, by km_outcome_kind */
    uint64_t abandoned;              /* leases released by km_close/a reaper */
    uint64_t stale_releases;         /* releases ignored as stale */
    uint64_t tokens;                 /* tokens settled at release */
} km_stats_counters;

typedef struct km_key_stats {
    uint32_t size;              /* bytes filled by the library */
    int32_t key;                /* key index in the segment */
    uint32_t gen;               /* generation of the key slot */
    int32_t pool;
    char id[KM_ID_MAX + 1];
    int32_t state;              /* km_key_state (cooling derived from the clock) */
    uint32_t weight;
    uint64_t taken_ns;          /* CLOCK_MONOTONIC when read */
    uint64_t cooldown_remaining_ms; /* 0: none */
    uint32_t inflight, max_inflight;
    uint32_t consecutive_failures, consecutive_429s;
    uint64_t latency_ema_us;    /* moving average; 0 before the first sample */
    uint32_t success_ppm;       /* moving average of success, parts per million */
    uint32_t n_models;          /* models of its pool (km_key_model_stats_get):
                                 * listed, or named by requests (above) */
    km_stats_counters counters;
    km_window_stats windows[KM_WIN_COUNT];
    uint64_t spent_microusd;
    uint64_t budget_microusd;   /* 0: none */
    int32_t budget_hard;
    uint32_t reserved0;
    uint64_t price_in_microusd_per_1k, price_out_microusd_per_1k;
} km_key_stats;

typedef struct km_pool_stats {
    uint32_t size;              /* bytes filled by the library */
    int32_t pool;
    char name[KM_ID_MAX + 1];
    int32_t strategy;           /* km_strategy */
    int32_t model_mode;         /* km_model_mode */
    uint64_t taken_ns;
    uint32_t n_keys;            /* keys in the pool now */
    uint32_t keys_by_state[KM_KEY_STATE_COUNT];
    uint32_t inflight, max_inflight; /* sums over its keys */
    uint32_t waiters;           /* processes sleeping in km_acquire_wait */
    uint32_t n_models;
    km_stats_counters counters; /* sums over its keys now (keys removed are
                                 * no longer counted) */
    uint64_t latency_ema_us;    /* mean of its keys' moving averages (keys
                                 * with a sample); 0: none */
    uint32_t success_ppm;       /* mean over its keys */
    uint32_t reserved0;
    /* Sums over the keys that have each window: limit, burst, used, left;
     * full_in_ms the longest; mode is that of the keys, or -1 if mixed. */
    km_window_stats windows[KM_WIN_COUNT];
    uint32_t keys_limited[KM_WIN_COUNT]; /* keys that have the window */
    uint64_t spent_microusd;
    uint64_t budget_microusd;   /* 0: none */
    int32_t budget_hard;
    uint32_t reserved1;
} km_pool_stats;

/* A model of a pool: over all its keys (km_model_stats_get, key
 * KM_STATS_ALL_KEYS) or on one key (km_key_model_stats_get). */
#define KM_STATS_ALL_KEYS (-1)
typedef struct km_model_stats {
    uint32_t size;              /* bytes filled by the library */
    int32_t pool;
    int32_t model;              /* 0-based index in the pool */
    int32_t key;                /* key index, or KM_STATS_ALL_KEYS */
    char name[KM_ID_MAX + 1];
    uint64_t taken_ns;
    uint32_t n_keys;            /* keys summed (1 for one key) */
    int32_t counters_valid;     /* 1: counters filled (per key x model); 0
                                 * from a library that keeps none */
    km_stats_counters counters;
    /* The model's own limits (per_model pools; limit 0 elsewhere); over all
     * keys, sums as in km_pool_stats. */
    km_window_stats windows[KM_WIN_COUNT];
    uint32_t keys_limited[KM_WIN_COUNT];
} km_model_stats;

/* Statistics of key `key` (an index from km_pool_key).  KM_ENOKEY for a
 * free or removed slot, KM_EINVAL for NULL or size < 8.
 * @note Thread and process safety: like the *_info readers it may run
 * concurrently with every call on the segment from any thread of any
 * process; it takes no lock, makes no system call (the clock is read
 * through the vDSO) and writes nothing to the segment.  Each number is read
 * atomically, but the numbers of one struct need not be mutually
 * consistent while leases move (e.g. requests may run ahead of the sum of
 * outcomes plus in-flight by the acquires in progress). */
KM_EXTERN int km_key_stats_get(km_env *env, int key, km_key_stats *out, size_t size);

/* Statistics of a pool, summed over the keys in its member list now.
 * KM_ENOPOOL for an unknown index.  Reads every key of the pool (cost grows
 * with keys x max in-flight; see bench/README.md, "scrape").
 * @note As km_key_stats_get; keys added or removed meanwhile may be counted
 * or not. */
KM_EXTERN int km_pool_stats_get(km_env *env, int pool, km_pool_stats *out, size_t size);

/* Model `model` (0-based, < km_pool_stats.n_models) of `pool` over every key
 * of the pool: its counters summed, its windows as above.  KM_ENOPOOL,
 * KM_ENOMODEL past the end.
 * @note As km_pool_stats_get. */
KM_EXTERN int km_model_stats_get(km_env *env, int pool, int model, km_model_stats *out,
                                 size_t size);

/* Model `model` of the key's pool on key `key`: the key x model counters
 * and the model's windows on that key.  KM_ENOKEY, KM_ENOMODEL past the
 * end.
 * @note As km_key_stats_get. */
KM_EXTERN int km_key_model_stats_get(km_env *env, int key, int model,
                                     km_model_stats *out, size_t size);

/* ------------------------------------------------------------ fleet agent
 *
 * Fleet-wide limits (README "Fleet-wide limits", tools/sync/DESIGN.md):
 * a key marked "fleet": true (docs/config.md) is admitted only if its local
 * limits admit the request and its credit, leased from a ledger shared by
 * every host, covers the cost.  The credit lives in the segment; one agent
 * process per segment (kmctl sync) keeps it topped up through these calls.
 * Workers need nothing new: km_acquire() spends the credit (one
 * compare-and-swap, no system call) and answers KM_EAGAIN, retry_at_ns at
 * the next sync, when it does not cover the cost.
 *
 * Credit covers a key's own windows (requests and tokens per minute, hour,
 * day) and, for a fleet key of a per_model pool, each model's windows on
 * it: a request that names the model takes the model's credit as well
 * (slots and grants with model m + 1, km_fleet_model_info_get).  When
 * both the credit (deadline_ns) and the fallback share (fb_until_ns) of a
 * key have lapsed, policy KM_FLEET_STOP refuses it (KM_EAGAIN; also before
 * any agent has synced) and KM_FLEET_LOCAL admits it on its local limits
 * alone.  The policy until an agent claims is the configuration's
 * ("fleet": {"policy": ...}, default stop).
 * A segment without a fleet region returns KM_EINVAL from the agent's
 * calls; km_fleet_status_get (store_state KM_FLEET_STORE_NONE, all zero)
 * and km_fleet_key_info_get (mask 0) answer on any segment. */

#define KM_FLEET_STOP 0  /* credit and fallback lapsed: refuse (default) */
#define KM_FLEET_LOCAL 1 /* credit and fallback lapsed: local limits alone */

/* km_fleet_status.store_state */
#define KM_FLEET_STORE_NONE 0        /* no agent has synced yet */
#define KM_FLEET_STORE_OK 1
#define KM_FLEET_STORE_LEARNING 2    /* a new epoch of the ledger: shares capped */
#define KM_FLEET_STORE_UNREACHABLE 3 /* no reply for longer than the validity */
#define KM_FLEET_STORE_ERROR 4       /* the store refuses (password, version, ...) */

/* km_fleet_health.kind: the ledger's event kinds */
#define KM_FLEET_EV_RATE_LIMITED 1 /* 429: arg_ms the cooldown left */
#define KM_FLEET_EV_AUTH 2         /* 401/403: invalid */
#define KM_FLEET_EV_QUOTA 3        /* quota: exhausted */
#define KM_FLEET_EV_DISABLE 4      /* operator disable */
#define KM_FLEET_EV_ENABLE 5       /* operator enable (or back to active) */

/* Take the agent's role on the segment: a CAS of the agent word from none
 * (or from a process found dead) to the caller's process slot.  policy:
 * KM_FLEET_STOP or KM_FLEET_LOCAL, what acquirers do when credit and
 * fallback have lapsed.  KM_EBUSY while a live process holds the role;
 * KM_EREADONLY on a handle without a process slot.
 * km_fleet_release gives the role up; void_credit 1 also voids every
 * key's credit and ends its fallback window (rule 5: the agent's bye), so
 * acquirers stop (or go local) at once.  KM_EINVAL if the caller does not
 * hold the role.
 * @note Thread-safe; the calls below are the role holder's, from one
 * thread at a time, concurrently with acquirers in any process. */
KM_EXTERN int km_fleet_claim(km_env *env, int policy);
KM_EXTERN int km_fleet_release(km_env *env, int void_credit);

typedef struct km_fleet_slot {      /* one fleet-limited (key, window) */
    uint32_t key, key_gen, model;   /* model: 0 the key's own windows, m+1 model m */
    int window;                     /* km_window */
    char pool[KM_ID_MAX + 1], key_id[KM_ID_MAX + 1];
    char fleet_id[KM_ID_MAX + 1];   /* the id the operator configured
                                     * ("fleet_id"), or "": the agent derives
                                     * one (kms_fleet_id of pool and key id) */
    char model_name[KM_ID_MAX + 1];
    uint64_t limit, burst, period_ms;
    int mode, strict;               /* km_limit_mode; strict: the key's
                                     * "fleet_strict" (DESIGN.md section 2) */
    /* since the previous collect (rule 4) */
    uint64_t spent, fb_spent, refused, returned, want, left;
    int64_t adj;                    /* actual minus estimated tokens of the
                                     * leases settled since (token windows) */
    uint64_t reserved[4];           /* zeroed by the library */
} km_fleet_slot;

/* Void credit past its deadline (counted in returned), then read and reset
 * every counter: spent = credit taken by acquirers since the last collect,
 * left = credit held now, returned = credit voided since (lapsed here, or
 * by km_fleet_release of this or an earlier agent).  One slot per (key,
 * window) and per (key, model, window) under the fleet, keys in index
 * order (a model's slots carry model_name and adj 0: actual minus
 * estimated tokens is kept per key).  KM_EINVAL if cap is too small (*n
 * says how many) or the caller does not hold the role.
 * now_ns: km_now_ns() of the caller; UINT64_MAX voids every credit, which
 * is the bye of rule 5 (then km_fleet_release(env, 1) ends the fallback).
 * The counts are exact: spent + returned + left never exceeds the credit
 * held at the previous collect plus what was applied since.
 * What a collect takes is also added, in the segment, to the pending
 * report (km_fleet_report_take below).  While a report is stamped and not
 * acknowledged, a collect resets nothing: it voids lapsed credit (for the
 * next report) and returns the stamped report again, unchanged.
 * @note The role holder's, one thread at a time; concurrently with every
 * acquire and release of any process (their words are read by one load or
 * exchange each). */
KM_EXTERN int km_fleet_collect(km_env *env, uint64_t now_ns, km_fleet_slot *out,
                               size_t cap, size_t *n);

/* The report in flight, kept in the segment until the reply to it is
 * applied, so that an agent killed with it unanswered does not lose it
 * (DESIGN.md rule 1).  The counts collected since the last acknowledged
 * report are pending in the segment; take stamps them as the report
 * `rep` (seq > 0, ack, epoch, t_send_ns: its first send, flags: the
 * request's) and returns them, one slot per (key, window) as collect
 * does (spent, fb_spent, returned, left, adj, want; refused 0; a key
 * removed since keeps its counts with its description zeroed).  If a
 * report is already stamped (by this or a dead agent), take changes
 * nothing: it returns that report, *rep filled as it was stamped, and
 * 1 -- a successor sends it first under that seq and applies no credit
 * from its reply (its predecessor may have).  Otherwise 0.  KM_EINVAL if
 * cap is short (*n says how many), rep->seq is 0, or the caller does not
 * hold the role.
 * ack: the reply to seq was applied (or the ledger refused the report):
 * its counts are forgotten and collects go on; KM_EINVAL unless seq is
 * the report stamped.  undo: the stamped report becomes pending counts
 * again (a renumbered retry, or a bye that carries an unanswered report);
 * KM_EINVAL if none is stamped.
 * @note The role holder's, one thread at a time, as km_fleet_collect. */
typedef struct km_fleet_report {
    uint64_t seq, ack, epoch, t_send_ns;
    unsigned flags;
    uint64_t reserved[4];                 /* zero */
} km_fleet_report;
KM_EXTERN int km_fleet_report_take(km_env *env, km_fleet_report *rep, km_fleet_slot *out,
                                   size_t cap, size_t *n);
KM_EXTERN int km_fleet_report_ack(km_env *env, uint64_t seq);
KM_EXTERN int km_fleet_report_undo(km_env *env);

typedef struct km_fleet_grant {
    uint32_t key, key_gen, model;
    int window;
    uint64_t grant, deadline_ns;          /* rule 2: credit usable while now < deadline */
    uint32_t fb_ppm;                      /* fallback share, parts per million of the rate */
    uint64_t fb_burst, fb_from_ns, fb_until_ns;
    uint64_t reserved[4];                 /* zero */
} km_fleet_grant;
/* Top up credit (a locked add of `grant` to what the host holds), set
 * deadlines and fallback shares, wake sleepers.  A grant whose key_gen
 * changed, or whose window (of the key, or of model `model` - 1 on it) is
 * not under the fleet, is skipped.  A key's windows share one deadline:
 * the last grant's; so do a model's windows on a key (their own).
 * The fallback share admits at fb_ppm/1e6 of the window's rate with burst
 * fb_burst, from fb_from_ns until fb_until_ns, once credit has lapsed.
 * KM_EINVAL if the caller does not hold the role.
 * @note The role holder's, one thread at a time; acquirers see the credit
 * no later than the deadline that covers it (release order), and the
 * fallback share whole or not at all (a seqlock). */
KM_EXTERN int km_fleet_apply(km_env *env, const km_fleet_grant *g, size_t n);

typedef struct km_fleet_status {
    uint64_t epoch, seq, ack, last_sync_ns, next_sync_ns;
    int store_state;                      /* KM_FLEET_STORE_* */
    uint32_t n_hosts, learn_ms;
    uint64_t reserved[4];                 /* zero (set); zeroed by the library (get) */
} km_fleet_status;
/* set: the role holder's; next_sync_ns is the retry hint acquirers give
 * when credit is short.  get: anyone (kmctl inspect); fields may tear
 * while the agent writes them.
 * @note set: the role holder's; get: thread-safe, read only. */
KM_EXTERN int km_fleet_status_set(km_env *env, const km_fleet_status *st);
KM_EXTERN int km_fleet_status_get(km_env *env, km_fleet_status *st);

/* Has an acquirer asked for an early sync since the last call (a refusal
 * for want of credit, or credit below its low-water mark)?  1 and the
 * request taken, 0 if none; KM_EINVAL unless the caller holds the agent's
 * role.  km_fleet_status_set also clears it (a sync answers every request
 * so far).  A poll that finds none writes nothing.  kmctl sync does not
 * sync early on it: issue 12 holds a host to one store call per sync
 * period, and early syncs measured 37 calls/s against 20 at S = 50 ms.
 * @note the role holder's. */
KM_EXTERN int km_fleet_kicked(km_env *env);

/* Health.  changes: fleet keys whose health changed here since the last
 * call (a release's 429 with its cooldown left in arg_ms, auth, quota; an
 * operator's km_key_set_state), at most cap of them (the rest at the next
 * call), kind KM_FLEET_EV_*.  set: apply the fleet's state without
 * counting it as a local change: KM_KEY_ACTIVE and KM_KEY_DISABLED as
 * km_key_set_state (admin lock), KM_KEY_COOLING for cool_ms (the cooldown
 * only ever extended), KM_KEY_INVALID / KM_KEY_EXHAUSTED.  Both are the
 * role holder's (KM_EINVAL otherwise); KM_ENOKEY for no such key.
 * @note The role holder's, one thread at a time, concurrently with
 * acquires, releases and reconfiguration (set takes the admin lock for
 * enable and disable). */
typedef struct km_fleet_health { uint32_t key; int kind; uint64_t arg_ms; } km_fleet_health;
KM_EXTERN int km_fleet_health_changes(km_env *env, km_fleet_health *out, size_t cap, size_t *n);
KM_EXTERN int km_fleet_health_set(km_env *env, uint32_t key, int state, uint64_t cool_ms);

/* inspect: per fleet window of a key, share, credit, deadline, fallback.
 * KM_ENOKEY for a key index out of range or free; a key not under the
 * fleet gives mask 0 and the rest zero.
 * @note Thread-safe, read only; the fields may tear while the agent applies. */
typedef struct km_fleet_key_info {
    uint32_t mask;                        /* windows under the fleet, bit per km_window */
    uint64_t credit[KM_WIN_COUNT], deadline_ns;
    uint32_t fb_ppm;
    uint64_t fb_until_ns;
    /* The key's budget across the fleet (a fleet key with a budget): what
     * the other hosts spent in its current period, micro-USD, as the agent
     * last applied it (0: none known for this period).  The fleet's total
     * is km_key_info's spent_microusd plus this. */
    uint64_t spend_others_microusd;
    uint32_t spend_fleet;                 /* 1: the key's budget counts fleet-wide */
    uint64_t reserved[4];                 /* zeroed by the library */
} km_fleet_key_info;
KM_EXTERN int km_fleet_key_info_get(km_env *env, uint32_t key, km_fleet_key_info *out);
/* The same for model `model` (0-based) of the key's pool on key `key`: its
 * windows under the fleet (a fleet key of a per_model pool; else mask 0),
 * credit, deadline and fallback share.
 * @note Thread-safe, read only; the fields may tear while the agent applies. */
KM_EXTERN int km_fleet_model_info_get(km_env *env, uint32_t key, uint32_t model,
                                      km_fleet_key_info *out);

/* Fleet-wide spend budgets (post-paid; tools/sync/DESIGN.md section 8).
 * The budget of a fleet key counts what every host spent in its period,
 * and so does a pool's in a segment whose configuration's top-level fleet
 * is `all` (an entry with key = KM_FLEET_BUDGET_POOL | the pool's index,
 * key_gen the pool row's generation, pool_budget 1; apply and reported take
 * these key and key_gen alike; a pool's hard budget refuses with
 * KM_EBUDGET, a soft one warns at the settle that crosses it):
 * an acquire compares the local spend plus the other hosts' (as the agent
 * last applied it) with the budget (hard: refused; soft: passed over while
 * another key is under its budget, and warned at the settle that crosses).
 *
 * collect: per fleet key or pool with a budget, the micro-USD spent here in the
 * budget's current period and not yet reported (`spent`: since the last
 * km_fleet_spend_reported of the period; the first collect of a period:
 * all of it; a collect resets nothing, so what an agent killed before the
 * ledger answered had collected is collected again by the next), the
 * period named by its start in UTC
 * seconds computed in the budget's zone (`period_start_s`, 0 for a
 * lifetime budget), so every host names it alike; a period that has ended
 * is rolled first.  KM_EINVAL if cap is too small (*n says how many).
 * apply: the other hosts' spend in the period whose local record ends at
 * period_end_ns (as collected): within one period only a larger figure is
 * stored (the last one seen is the floor).  KM_ENOKEY if the key is gone
 * or changed (key_gen).
 * reported: the ledger has counted this host's spend of the period whose
 * local record ends at period_end_ns up to `local_microusd` (a collect's
 * `local`, sent in a report the ledger answered): later collects give
 * only what was spent since.  KM_ENOKEY as apply.
 * All three are the role holder's (KM_EINVAL otherwise).
 * @note The role holder's, one thread at a time, concurrently with
 * acquires and releases. */
#define KM_FLEET_BUDGET_POOL 0x80000000u /* km_fleet_budget.key: a pool's budget */
typedef struct km_fleet_budget {
    uint32_t key, key_gen;       /* a pool's: KM_FLEET_BUDGET_POOL | pool_index,
                                  * and the pool row's generation (a pool
                                  * added in a removed one's row has another) */
    char pool[KM_ID_MAX + 1], key_id[KM_ID_MAX + 1], fleet_id[KM_ID_MAX + 1];
    uint64_t budget_microusd;
    int hard, period;            /* km_budget_period */
    uint64_t period_start_s;     /* the period's name: its start, UTC seconds */
    uint64_t period_end_ns;      /* the local record's end (CLOCK_REALTIME);
                                  * UINT64_MAX for a lifetime budget */
    uint64_t spent;              /* here, not yet reported */
    uint64_t local;              /* here, in the period, with what
                                  * km_spend_reset removed (the figure
                                  * km_fleet_spend_reported takes) */
    uint64_t others;             /* the other hosts', as last applied */
    /* 1: a pool's budget (key_id and fleet_id then ""), of pool
     * pool_index; in what was reserved[0] (the size is unchanged) */
    uint32_t pool_budget, pool_index;
    uint64_t reserved[3];        /* zeroed by the library */
} km_fleet_budget;
KM_EXTERN int km_fleet_spend_collect(km_env *env, km_fleet_budget *out, size_t cap, size_t *n);
KM_EXTERN int km_fleet_spend_apply(km_env *env, uint32_t key, uint32_t key_gen,
                                   uint64_t period_end_ns, uint64_t others_microusd);
KM_EXTERN int km_fleet_spend_reported(km_env *env, uint32_t key, uint32_t key_gen,
                                      uint64_t period_end_ns, uint64_t local_microusd);

/* ------------------------------------------------------- struct sizes
 *
 * km_struct_size(KM_ST_LEASE) is sizeof(km_lease) as this library was
 * built; 0 for an id it does not know.  A binding that declares the
 * structs itself (Python ctypes, LuaJIT ffi) or was compiled against
 * another keymesh.h than the library it loads (the Python extension)
 * compares its own sizes with these when it loads, and refuses to run on a
 * mismatch rather than read or write past a struct.  The ids never change
 * value; new structs get new ids.
 * @note Thread-safe; a constant per id, callable before any handle exists. */
typedef enum {
    KM_ST_REQUEST = 1,
    KM_ST_LEASE = 2,
    KM_ST_OUTCOME = 3,
    KM_ST_HTTP_RESPONSE = 4,
    KM_ST_INFO = 5,
    KM_ST_LIMIT_INFO = 6,
    KM_ST_POOL_INFO = 7,
    KM_ST_KEY_INFO = 8,
    KM_ST_EPOCH_INFO = 9,
    KM_ST_READER_INFO = 10,
    KM_ST_PROC_INFO = 11,
    KM_ST_REAP_REPORT = 12,
    KM_ST_USAGE_EVENT = 13,
    KM_ST_USAGE_REPORT = 14,
    KM_ST_WINDOW_STATS = 15,
    KM_ST_STATS_COUNTERS = 16,
    KM_ST_KEY_STATS = 17,
    KM_ST_POOL_STATS = 18,
    KM_ST_MODEL_STATS = 19,
    KM_ST_SEGMENT_DESC = 20,
    KM_ST_COUNT = 21 /* one past the last id */
} km_struct_id;
KM_EXTERN size_t km_struct_size(int which);

#ifdef __cplusplus
}
#endif
#endif /* KEYMESH_H */
