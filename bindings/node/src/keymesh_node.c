/*
 * keymesh_node.c - the native half of the Node.js binding (Node-API, C11).
 *
 * The JavaScript half (bindings/node/lib/) is the API; this file is the
 * part that must be native: the calls into libkeymesh, a table of the
 * leases this process holds, and the threads that sleep in
 * km_acquire_wait() so that the event loop never does.
 *
 * Library.  libkeymesh is not linked: load(path) dlopen()s the copy the
 * JavaScript side found (KEYMESH_LIBRARY, KM_BUILD, the repository's
 * build/, an installed libkeymesh.so.0: lib/native.js), resolves every
 * function this file calls, and compares sizeof() of each struct it
 * passes with km_struct_size() of that library, refusing a library whose
 * structs differ from the keymesh.h this file was compiled with.  Only
 * include/keymesh.h is used.
 *
 * Objects.  A Seg is one km_env (one process slot in the segment), shared
 * by every Core (a pool of that segment) opened on it; JavaScript holds
 * each through an external whose box is emptied by close.  A Seg counts
 * who may still call into its km_env (see struct Seg); the last one out
 * calls km_close(), which releases what the handle still holds as
 * abandoned.  A Core's memory is counted apart, because Node finalizes a
 * thread-safe function on its own schedule (at the environment's teardown
 * whatever threads still hold it: see Core.tsfn_dead).
 *
 * The fast path.  acquire() takes a free entry of the Core's lease table,
 * calls km_acquire() into it and returns the entry's index; the lease's
 * generation, key index and key generation go to a Float64Array shared
 * with JavaScript (the "scratch"), so no object is made per call.
 * release() checks the entry's generation (a lease released twice is
 * refused here, before the segment is touched) and calls km_release().
 * Only the JavaScript thread touches the table.
 *
 * Waiting.  wait() queues a request on its Core; up to max_waiters threads
 * per Core (started on demand, never more than the waits queued) take
 * requests in FIFO order and sleep in km_acquire_wait() on the segment's
 * futex, woken by a release in any process.  They sleep WAIT_CHUNK_MS at
 * most at a time, so that a cancelled wait or a closed pool is noticed
 * within that.  The result goes back to the JavaScript thread through a
 * napi_threadsafe_function, ref'd while a wait is pending (it keeps the
 * event loop alive as a pending timer would) and unref'd otherwise.  The
 * lease a thread got is copied into the table there.  A wait cancelled
 * (AbortSignal) while its thread sleeps may still be handed a key in that
 * chunk: it is given back at once as cancelled, which, as every cancelled
 * lease, still counts one request against the key's request limits.  Idle
 * threads stay, asleep on a condition variable, until the pool closes.  No
 * libuv threadpool thread is used: a pool of sleeping waiters must not
 * starve fs, dns and crypto work (fetch's dns.lookup runs on that pool).
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keymesh.h"

#define WAIT_CHUNK_MS 200u
#define WAITER_STACK (1u << 20)
#define NS_PER_MS 1000000ull
#define MAX_HEADERS 512u

/* ------------------------------------------------------------ library */

/* Every function of libkeymesh this file calls, resolved by load(). */
#define KMN_FUNCS(X)                                                           \
    X(km_version) X(km_version_number) X(km_format_version) X(km_strerror)     \
    X(km_err_name) X(km_struct_size) X(km_now_ns) X(km_open) X(km_close)       \
    X(km_unlink) X(km_create) X(km_config_parse) X(km_config_free)             \
    X(km_pool_find) X(km_pool_info_get) X(km_pool_key) X(km_key_info_get)      \
    X(km_info_get) X(km_acquire) X(km_acquire_wait) X(km_release)              \
    X(km_outcome_from_http) X(km_key_state_name) X(km_strategy_name)           \
    X(km_outcome_name)

static struct {
#define KMN_FIELD(f) __typeof__(f) *f;
    KMN_FUNCS(KMN_FIELD)
#undef KMN_FIELD
} L;
/* Set once, under load_mu, by the first load(): L and lib_path are
 * written before lib_handle is stored (release), and read by whoever has
 * loaded lib_handle (acquire): the JavaScript thread of a worker_thread
 * that loads the module again finds them complete.  Waiter threads are
 * started after a load (pthread_create orders it). */
static _Atomic(void *) lib_handle;
static char lib_path[4096];
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;

/* The structs this file passes to the library, with their km_struct_size
 * ids (the layout test and the size check at load walk this table). */
static const struct {
    const char *name;
    int id;
    size_t size;
} structs[] = {
    {"km_request", KM_ST_REQUEST, sizeof(km_request)},
    {"km_lease", KM_ST_LEASE, sizeof(km_lease)},
    {"km_outcome", KM_ST_OUTCOME, sizeof(km_outcome)},
    {"km_http_response", KM_ST_HTTP_RESPONSE, sizeof(km_http_response)},
    {"km_info", KM_ST_INFO, sizeof(km_info)},
    {"km_limit_info", KM_ST_LIMIT_INFO, sizeof(km_limit_info)},
    {"km_pool_info", KM_ST_POOL_INFO, sizeof(km_pool_info)},
    {"km_key_info", KM_ST_KEY_INFO, sizeof(km_key_info)},
};
#define N_STRUCTS (sizeof(structs) / sizeof(structs[0]))

/* ------------------------------------------------------------- objects */

/* Who may still call into a Seg's km_env counts in refs: the JavaScript
 * owner (until segClose), each open Core (until coreClose), each running
 * waiter thread, and each lease on its way from a thread to the JavaScript
 * thread.  The last one out calls km_close().  At process exit the
 * JavaScript side closes every Segment and Pool; unless a thread is still
 * asleep in km_acquire_wait(), that is the last reference, and the process
 * detaches (leases out are released as abandoned). */
typedef struct Seg {
    km_env *env;
    atomic_int refs;
} Seg;

/* The externals JavaScript holds: the object they point to is gone (NULL)
 * once closed, and the box lives until the external is collected. */
typedef struct Core Core;
typedef struct {
    Seg *s;
} SegBox;
typedef struct {
    Core *c;
} CoreBox;

typedef struct Wait Wait;

/* One entry of a Core's lease table.  `gen` changes at every reuse, so
 * a (index, gen) pair names one lease for ever. */
typedef struct {
    km_lease lease;
    uint32_t gen;
    int next_free; /* -1: end of the free list */
    int used;
} Entry;

/* A Core's memory counts in refs: the JavaScript owner (until
 * coreClose), the tsfn (until it is finalized), each waiter thread and
 * each wait.  It holds one reference on its Seg while open. */
struct Core {
    Seg *seg;
    int pool;
    atomic_int refs;
    /* JavaScript thread only: */
    Entry *tab;
    int ntab, free_head;
    double *scratch;    /* Float64Array shared with lib/pool.js */
    napi_ref scratch_ref;
    napi_threadsafe_function tsfn;
    uint32_t pending;   /* waits not yet delivered (tsfn ref'd while > 0) */
    int js_closed;
    /* Under mu: */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Wait *qhead, *qtail;  /* queued, FIFO */
    Wait *active;         /* taken by a thread */
    int threads, idle, max_threads;
    int closing;
    /* The tsfn was finalized (its last release, or the environment torn
     * down: a worker_thread ended, the process exits), or a call was
     * answered napi_closing: nobody calls it again.  Node deletes it right
     * after its finalizer, whatever threads still hold, so every call on it
     * from a waiter thread is made under mu with this flag clear, and the
     * finalizer sets it under mu. */
    int tsfn_dead;
};

struct Wait {
    Wait *next, *prev;
    Core *core;
    double id;
    km_request rq;
    char model[KM_ID_MAX + 2];
    char key_id[KM_ID_MAX + 2];
    uint64_t deadline_ns;
    int cancelled; /* under core->mu */
    int rc;
    km_lease lease;
};

static void seg_ref(Seg *s)
{
    /* relaxed: the caller already holds a reference. */
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

static void seg_unref(Seg *s)
{
    /* acq_rel: the last decrement sees every use by the other holders. */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        L.km_close(s->env);
        free(s);
    }
}

static void core_unref(Core *c)
{
    /* acq_rel: as seg_unref. */
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c->tab);
        free(c);
    }
}

static void core_ref(Core *c)
{
    /* relaxed: the caller already holds a reference. */
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------- helpers */

#define CHECK(call)                                                            \
    do {                                                                       \
        if ((call) != napi_ok)                                                 \
            return throw_last(env);                                            \
    } while (0)

static napi_value throw_last(napi_env env)
{
    const napi_extended_error_info *info = NULL;
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) {
        napi_get_last_error_info(env, &info);
        napi_throw_error(env, "ERR_KEYMESH_NAPI",
                         info && info->error_message ? info->error_message : "Node-API call failed");
    }
    return NULL;
}

static napi_value throw_type(napi_env env, const char *msg)
{
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
}

static napi_value num(napi_env env, double v)
{
    napi_value r;
    if (napi_create_double(env, v, &r) != napi_ok)
        return NULL;
    return r;
}

static napi_value str(napi_env env, const char *s)
{
    napi_value r;
    if (napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r) != napi_ok)
        return NULL;
    return r;
}

/* A string argument of at most cap-1 bytes into buf.  Returns 1 if it
 * was a string, 0 if null/undefined, -1 (nothing thrown) if too long,
 * -2 (TypeError thrown) if another type. */
static int get_str(napi_env env, napi_value v, char *buf, size_t cap)
{
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok)
        return -2;
    if (t == napi_undefined || t == napi_null)
        return 0;
    if (t != napi_string) {
        throw_type(env, "expected a string");
        return -2;
    }
    size_t len = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
        return -2;
    if (len + 1 > cap)
        return -1;
    if (napi_get_value_string_utf8(env, v, buf, cap, &len) != napi_ok)
        return -2;
    return 1;
}

/* A string of any length, malloc'd (NULL with an exception on failure). */
static char *get_str_alloc(napi_env env, napi_value v, size_t *lenp)
{
    size_t len = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
        return NULL;
    char *buf = malloc(len + 1);
    if (!buf) {
        napi_throw_error(env, "KM_ENOMEM", "out of memory");
        return NULL;
    }
    if (napi_get_value_string_utf8(env, v, buf, len + 1, &len) != napi_ok) {
        free(buf);
        return NULL;
    }
    if (lenp)
        *lenp = len;
    return buf;
}

static int get_i64(napi_env env, napi_value v, int64_t def, int64_t *out)
{
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok)
        return -1;
    if (t == napi_undefined || t == napi_null) {
        *out = def;
        return 0;
    }
    double d;
    if (t != napi_number || napi_get_value_double(env, v, &d) != napi_ok) {
        throw_type(env, "expected a number");
        return -1;
    }
    *out = isfinite(d) ? (int64_t)d : def;
    return 0;
}

static int get_f64(napi_env env, napi_value v, double def, double *out)
{
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok)
        return -1;
    if (t == napi_undefined || t == napi_null) {
        *out = def;
        return 0;
    }
    if (t != napi_number || napi_get_value_double(env, v, out) != napi_ok) {
        throw_type(env, "expected a number");
        return -1;
    }
    return 0;
}

static int loaded(napi_env env)
{
    if (atomic_load_explicit(&lib_handle, memory_order_acquire))
        return 1;
    napi_throw_error(env, "ERR_KEYMESH_NOT_LOADED", "libkeymesh is not loaded (load() first)");
    return 0;
}

static Seg *get_seg(napi_env env, napi_value v)
{
    void *p = NULL;
    if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
        throw_type(env, "expected a segment handle");
        return NULL;
    }
    SegBox *b = p;
    if (!b->s)
        napi_throw_error(env, "ERR_KEYMESH_CLOSED", "the segment is closed");
    return b->s;
}

/* The Core of an external; NULL with an exception if closed. */
static Core *get_core(napi_env env, napi_value v)
{
    void *p = NULL;
    if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
        throw_type(env, "expected a pool handle");
        return NULL;
    }
    CoreBox *b = p;
    if (!b->c)
        napi_throw_error(env, "ERR_KEYMESH_CLOSED", "the pool is closed");
    return b->c;
}

/* ---------------------------------------------------------------- load */

/* load(path, overrides?) -> {version, versionNumber, formatVersion, path}
 * or a string saying why not.  overrides: {struct name: km_struct_size
 * id} compares a struct against another id (the size check's test). */
static napi_value n_load(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    char path[sizeof lib_path];
    if (argc < 1 || get_str(env, argv[0], path, sizeof path) != 1)
        return throw_type(env, "load(path): path must be a string");
    char why[sizeof lib_path + 1024] = "";
    pthread_mutex_lock(&load_mu);
    if (!atomic_load_explicit(&lib_handle, memory_order_relaxed)) {
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(why, sizeof why, "cannot load %s: %s", path, dlerror());
        } else {
#define KMN_SYM(f)                                                             \
    if (!why[0] && !(L.f = (__typeof__(f) *)dlsym(h, #f)))                     \
        snprintf(why, sizeof why, "%s: no symbol %s (a libkeymesh older than this binding?)", \
                 path, #f);
            KMN_FUNCS(KMN_SYM)
#undef KMN_SYM
            if (why[0]) {
                dlclose(h);
                memset(&L, 0, sizeof L);
            } else {
                snprintf(lib_path, sizeof lib_path, "%s", path);
                /* release: L and lib_path before the handle (loaded()). */
                atomic_store_explicit(&lib_handle, h, memory_order_release);
            }
        }
    }
    pthread_mutex_unlock(&load_mu);
    if (why[0])
        return str(env, why);

    /* Sizes: ours (keymesh.h at compile time) against the library's. */
    napi_value ov = NULL;
    napi_valuetype ovt = napi_undefined;
    if (argc >= 2) {
        ov = argv[1];
        CHECK(napi_typeof(env, ov, &ovt));
    }
    size_t off = 0;
    for (size_t i = 0; i < N_STRUCTS; i++) {
        int id = structs[i].id;
        if (ovt == napi_object) {
            bool has = false;
            CHECK(napi_has_named_property(env, ov, structs[i].name, &has));
            if (has) {
                napi_value x;
                int32_t v;
                CHECK(napi_get_named_property(env, ov, structs[i].name, &x));
                CHECK(napi_get_value_int32(env, x, &v));
                id = v;
            }
        }
        size_t theirs = L.km_struct_size(id);
        if (theirs != structs[i].size && off < sizeof why)
            off += (size_t)snprintf(why + off, sizeof why - off, "%s%s: %zu bytes in libkeymesh, %zu in this binding",
                                    off ? "; " : "", structs[i].name, theirs, structs[i].size);
    }
    if (why[0])
        return str(env, why);

    napi_value r;
    CHECK(napi_create_object(env, &r));
    CHECK(napi_set_named_property(env, r, "version", str(env, L.km_version())));
    CHECK(napi_set_named_property(env, r, "versionNumber", num(env, L.km_version_number())));
    CHECK(napi_set_named_property(env, r, "formatVersion", num(env, L.km_format_version())));
    CHECK(napi_set_named_property(env, r, "path", str(env, lib_path)));
    CHECK(napi_set_named_property(env, r, "headerVersionNumber", num(env, KM_VERSION_NUMBER)));
    return r;
}

/* errName(rc), strerror(rc) */
static napi_value n_err_name(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int32_t rc = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    CHECK(napi_get_value_int32(env, argv[0], &rc));
    return str(env, L.km_err_name(rc));
}

static napi_value n_strerror(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    int32_t rc = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    CHECK(napi_get_value_int32(env, argv[0], &rc));
    return str(env, L.km_strerror(rc));
}

/* Names of an enumeration: names(kind) with kind "state", "strategy" or
 * "outcome" -> array indexed by value. */
static napi_value n_names(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], r;
    char kind[16];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    if (argc < 1 || get_str(env, argv[0], kind, sizeof kind) != 1)
        return throw_type(env, "names(kind)");
    const char *(*fn)(int) = NULL;
    int n = 0;
    if (!strcmp(kind, "state"))
        fn = L.km_key_state_name, n = KM_KEY_STATE_COUNT;
    else if (!strcmp(kind, "strategy"))
        fn = L.km_strategy_name, n = KM_STRATEGY_COUNT;
    else if (!strcmp(kind, "outcome"))
        fn = L.km_outcome_name, n = KM_OUT_COUNT;
    else
        return throw_type(env, "names(kind): state, strategy or outcome");
    CHECK(napi_create_array_with_length(env, (size_t)n, &r));
    for (int i = 0; i < n; i++)
        CHECK(napi_set_element(env, r, (uint32_t)i, str(env, fn(i))));
    return r;
}

/* layout() -> the structs this file uses, in tests/e2e/layout.c's format
 * ("\nname size field offset ..."), as this compiler laid them out. */
static napi_value n_layout(napi_env env, napi_callback_info info)
{
    (void)info;
    char buf[4096];
    size_t o = 0;
#define LS(T) o += (size_t)snprintf(buf + o, sizeof buf - o, "\n%s %zu", #T, sizeof(T))
#define LF(T, f) o += (size_t)snprintf(buf + o, sizeof buf - o, " %s %zu", #f, offsetof(T, f))
    LS(km_request); LF(km_request, pool); LF(km_request, strategy); LF(km_request, tokens);
    LF(km_request, model); LF(km_request, key_id); LF(km_request, reserved);
    LS(km_lease); LF(km_lease, key); LF(km_lease, key_gen); LF(km_lease, slot); LF(km_lease, seq);
    LF(km_lease, pool); LF(km_lease, tokens); LF(km_lease, start_ns); LF(km_lease, retry_at_ns);
    LF(km_lease, secret_len); LF(km_lease, model); LF(km_lease, meta_len); LF(km_lease, key_id);
    LF(km_lease, secret); LF(km_lease, meta); LF(km_lease, reserved);
    LS(km_outcome); LF(km_outcome, kind); LF(km_outcome, latency_us); LF(km_outcome, tokens);
    LF(km_outcome, retry_after_s); LF(km_outcome, view_flags); LF(km_outcome, requests_remaining);
    LF(km_outcome, tokens_remaining); LF(km_outcome, requests_reset_ms);
    LF(km_outcome, tokens_reset_ms); LF(km_outcome, input_tokens); LF(km_outcome, output_tokens);
    LF(km_outcome, reserved);
    LS(km_http_response); LF(km_http_response, status); LF(km_http_response, error_code);
    LF(km_http_response, body); LF(km_http_response, body_len); LF(km_http_response, headers);
    LF(km_http_response, n_headers); LF(km_http_response, now_unix_ms); LF(km_http_response, reserved);
    LS(km_info); LF(km_info, format); LF(km_info, cap_keys); LF(km_info, cap_pools);
    LF(km_info, cap_procs); LF(km_info, cap_inflight); LF(km_info, n_keys); LF(km_info, n_pools);
    LF(km_info, n_procs); LF(km_info, size_bytes); LF(km_info, created_wall_ns); LF(km_info, reserved);
    LS(km_limit_info); LF(km_limit_info, limit); LF(km_limit_info, burst); LF(km_limit_info, mode);
    LF(km_limit_info, reserved0); LF(km_limit_info, available); LF(km_limit_info, tat_ns);
    LF(km_limit_info, reserved);
    LS(km_pool_info); LF(km_pool_info, name); LF(km_pool_info, strategy); LF(km_pool_info, n_keys);
    LF(km_pool_info, cooldown_s); LF(km_pool_info, max_cooldown_s); LF(km_pool_info, max_failures);
    LF(km_pool_info, model_mode); LF(km_pool_info, n_models); LF(km_pool_info, budget_microusd);
    LF(km_pool_info, budget_hard); LF(km_pool_info, spent_microusd); LF(km_pool_info, waiters);
    LF(km_pool_info, reserved);
    LS(km_key_info); LF(km_key_info, id); LF(km_key_info, secret_masked); LF(km_key_info, pool);
    LF(km_key_info, weight); LF(km_key_info, gen); LF(km_key_info, state);
    LF(km_key_info, cooldown_until_ns); LF(km_key_info, inflight); LF(km_key_info, max_inflight);
    LF(km_key_info, consecutive_failures); LF(km_key_info, consecutive_429s);
    LF(km_key_info, latency_ema_us); LF(km_key_info, acquired); LF(km_key_info, outcomes);
    LF(km_key_info, abandoned); LF(km_key_info, stale_releases); LF(km_key_info, tokens_used);
    LF(km_key_info, limits); LF(km_key_info, success_ppm); LF(km_key_info, price_in_microusd_per_1k);
    LF(km_key_info, price_out_microusd_per_1k); LF(km_key_info, budget_microusd);
    LF(km_key_info, budget_hard); LF(km_key_info, spent_microusd); LF(km_key_info, meta);
    LF(km_key_info, reserved);
#undef LS
#undef LF
    return str(env, buf);
}

/* ------------------------------------------------------------- segment */

static void seg_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    SegBox *b = data;
    /* The JavaScript owner's reference, unless segClose dropped it. */
    if (b->s)
        seg_unref(b->s);
    free(b);
}

static napi_value wrap_seg(napi_env env, km_env *e)
{
    Seg *s = calloc(1, sizeof *s);
    SegBox *b = calloc(1, sizeof *b);
    napi_value r;
    if (!s || !b) {
        free(s);
        free(b);
        L.km_close(e);
        napi_throw_error(env, "KM_ENOMEM", "out of memory");
        return NULL;
    }
    s->env = e;
    atomic_init(&s->refs, 1);
    b->s = s;
    if (napi_create_external(env, b, seg_finalize, NULL, &r) != napi_ok) {
        L.km_close(e);
        free(s);
        free(b);
        return throw_last(env);
    }
    return r;
}

/* segOpen(name) -> handle, or a negative KM_E* code */
static napi_value n_seg_open(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    char name[KM_SEG_NAME_MAX + 3];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    int s = argc < 1 ? -2 : get_str(env, argv[0], name, sizeof name);
    if (s == -1)
        return num(env, KM_ENAME);
    if (s != 1)
        return s == -2 ? NULL : throw_type(env, "segment name must be a string");
    km_env *e = NULL;
    int rc = L.km_open(name, &e);
    if (rc != KM_OK)
        return num(env, rc);
    return wrap_seg(env, e);
}

/* segCreate(name, json, origin, mode) -> handle, a negative code, or
 * (KM_ECONFIG) the parser's one-line message as a string */
static napi_value n_seg_create(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4];
    char name[KM_SEG_NAME_MAX + 3], origin[1024];
    uint32_t mode = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    if (argc < 4)
        return throw_type(env, "segCreate(name, json, origin, mode)");
    int s = get_str(env, argv[0], name, sizeof name);
    if (s == -1)
        return num(env, KM_ENAME);
    if (s != 1)
        return s == -2 ? NULL : throw_type(env, "segment name must be a string");
    if (get_str(env, argv[2], origin, sizeof origin) < 0)
        snprintf(origin, sizeof origin, "<config>");
    CHECK(napi_get_value_uint32(env, argv[3], &mode));
    size_t len = 0;
    char *json = get_str_alloc(env, argv[1], &len);
    if (!json)
        return NULL;
    km_config *cfg = NULL;
    char err[512] = "";
    int rc = L.km_config_parse(json, len, origin[0] ? origin : NULL, &cfg, err, sizeof err);
    /* The text may hold secrets: wipe it before it goes back to malloc. */
    explicit_bzero(json, len);
    free(json);
    if (rc != KM_OK)
        return rc == KM_ECONFIG && err[0] ? str(env, err) : num(env, rc);
    km_env *e = NULL;
    rc = L.km_create(name, cfg, mode, &e);
    L.km_config_free(cfg);
    if (rc != KM_OK)
        return num(env, rc);
    return wrap_seg(env, e);
}

/* segClose(handle): the JavaScript owner lets go; km_close() runs when
 * the last Core (and its threads) has too.  Returns 1 if it ran now. */
static napi_value n_seg_close(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    void *p = NULL;
    if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || !p)
        return throw_type(env, "expected a segment handle");
    SegBox *b = p;
    Seg *s = b->s;
    if (!s)
        return num(env, 0);
    b->s = NULL;
    /* Informational only (another holder may let go meanwhile). */
    int last = atomic_load_explicit(&s->refs, memory_order_relaxed) == 1;
    seg_unref(s);
    return num(env, last);
}

static napi_value n_unlink(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    char name[KM_SEG_NAME_MAX + 3];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (!loaded(env))
        return NULL;
    int s = argc < 1 ? -2 : get_str(env, argv[0], name, sizeof name);
    if (s == -1)
        return num(env, KM_ENAME);
    if (s != 1)
        return s == -2 ? NULL : throw_type(env, "segment name must be a string");
    return num(env, L.km_unlink(name));
}

static napi_value n_pool_find(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    char name[KM_ID_MAX + 2];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Seg *s = get_seg(env, argv[0]);
    if (!s)
        return NULL;
    int g = get_str(env, argv[1], name, sizeof name);
    if (g == -1)
        return num(env, KM_ENOPOOL);
    if (g != 1)
        return g == -2 ? NULL : throw_type(env, "pool name must be a string");
    return num(env, L.km_pool_find(s->env, name));
}

static napi_value n_seg_info(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], r;
    km_info in;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Seg *s = get_seg(env, argv[0]);
    if (!s)
        return NULL;
    int rc = L.km_info_get(s->env, &in);
    if (rc != KM_OK)
        return num(env, rc);
    CHECK(napi_create_object(env, &r));
#define SETN(o, k, v) CHECK(napi_set_named_property(env, o, k, num(env, (double)(v))))
    SETN(r, "format", in.format);
    SETN(r, "capKeys", in.cap_keys);
    SETN(r, "capPools", in.cap_pools);
    SETN(r, "capProcs", in.cap_procs);
    SETN(r, "capInflight", in.cap_inflight);
    SETN(r, "keys", in.n_keys);
    /* Pools now: km_info's n_pools is an index bound (removed rows too). */
    uint32_t live = 0;
    for (uint32_t p = 0; p < in.n_pools; p++) {
        km_pool_info pi;
        live += L.km_pool_info_get(s->env, (int)p, &pi) == KM_OK;
    }
    SETN(r, "pools", live);
    SETN(r, "processes", in.n_procs);
    SETN(r, "sizeBytes", in.size_bytes);
    SETN(r, "createdMs", (double)in.created_wall_ns / 1e6);
    return r;
}

/* ---------------------------------------------------------------- core */

static void tsfn_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    Core *c = data;
    pthread_mutex_lock(&c->mu);
    c->tsfn_dead = 1;
    pthread_mutex_unlock(&c->mu);
    core_unref(c); /* the tsfn's reference */
}

static void core_close(napi_env env, CoreBox *b);

static void core_finalize(napi_env env, void *data, void *hint)
{
    (void)hint;
    CoreBox *b = data;
    if (b->c)
        core_close(env, b);
    free(b);
}

static void call_js(napi_env env, napi_value fn, void *context, void *data);

/* coreNew(seg, pool, scratch: Float64Array(8), dispatch(id, rc, slot),
 * maxWaiters) -> handle */
static napi_value n_core_new(napi_env env, napi_callback_info info)
{
    size_t argc = 5;
    napi_value argv[5], r, rname;
    int32_t pool = 0, maxw = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 5)
        return throw_type(env, "coreNew(seg, pool, scratch, dispatch, maxWaiters)");
    Seg *s = get_seg(env, argv[0]);
    if (!s)
        return NULL;
    CHECK(napi_get_value_int32(env, argv[1], &pool));
    CHECK(napi_get_value_int32(env, argv[4], &maxw));
    napi_typedarray_type tt;
    size_t tlen = 0, toff = 0;
    void *tdata = NULL;
    napi_value tbuf;
    if (napi_get_typedarray_info(env, argv[2], &tt, &tlen, &tdata, &tbuf, &toff) != napi_ok ||
        tt != napi_float64_array || tlen < 8)
        return throw_type(env, "scratch must be a Float64Array of 8");

    Core *c = calloc(1, sizeof *c);
    CoreBox *b = calloc(1, sizeof *b);
    if (!c || !b) {
        free(c);
        free(b);
        napi_throw_error(env, "KM_ENOMEM", "out of memory");
        return NULL;
    }
    b->c = c;
    c->seg = s;
    c->pool = pool;
    c->free_head = -1;
    c->scratch = tdata;
    c->max_threads = maxw < 1 ? 1 : maxw > 64 ? 64 : maxw;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_init(&c->refs, 2); /* JavaScript owner, tsfn */
    if (napi_create_reference(env, argv[2], 1, &c->scratch_ref) != napi_ok ||
        napi_create_string_utf8(env, "keymesh:acquire-wait", NAPI_AUTO_LENGTH, &rname) != napi_ok ||
        napi_create_threadsafe_function(env, argv[3], NULL, rname, 0, 1, c, tsfn_finalize, c,
                                        call_js, &c->tsfn) != napi_ok) {
        napi_value e = throw_last(env);
        if (c->scratch_ref)
            napi_delete_reference(env, c->scratch_ref);
        atomic_store(&c->refs, 1);
        core_unref(c);
        free(b);
        return e;
    }
    seg_ref(s); /* the Core's, until coreClose */
    napi_unref_threadsafe_function(env, c->tsfn);
    if (napi_create_external(env, b, core_finalize, NULL, &r) != napi_ok) {
        napi_value e = throw_last(env);
        core_close(env, b);
        free(b);
        return e;
    }
    return r;
}

/* A free table entry (the table grows by doubling); -1 if out of memory. */
static int entry_get(Core *c)
{
    if (c->free_head < 0) {
        int n = c->ntab ? c->ntab * 2 : 16;
        Entry *t = realloc(c->tab, (size_t)n * sizeof *t);
        if (!t)
            return -1;
        for (int i = c->ntab; i < n; i++) {
            t[i].gen = 0;
            t[i].used = 0;
            t[i].next_free = i + 1 < n ? i + 1 : -1;
        }
        c->tab = t;
        c->free_head = c->ntab;
        c->ntab = n;
    }
    int i = c->free_head;
    c->free_head = c->tab[i].next_free;
    c->tab[i].used = 1;
    c->tab[i].gen++;
    return i;
}

static void entry_put(Core *c, int i)
{
    c->tab[i].used = 0;
    c->tab[i].next_free = c->free_head;
    c->free_head = i;
}

/* The scratch after a lease lands in entry i. */
static void scratch_lease(Core *c, int i)
{
    const km_lease *l = &c->tab[i].lease;
    c->scratch[0] = c->tab[i].gen;
    c->scratch[1] = l->key;
    c->scratch[2] = l->key_gen;
    c->scratch[3] = l->tokens;
    c->scratch[4] = l->model;
}

/* retryAfterMs of a refused acquire, from lease.retry_at_ns */
static void scratch_retry(Core *c, const km_lease *l)
{
    uint64_t now = L.km_now_ns();
    c->scratch[5] = l->retry_at_ns > now ? (double)(l->retry_at_ns - now) / 1e6 : 0.0;
}

/* Fill rq from (tokens, model, keyId, strategy) at argv[0..3].  Returns
 * 0, a KM_E* code (nothing thrown), or 1 with an exception pending. */
static int get_request(napi_env env, const napi_value *argv, size_t argc, int pool,
                       km_request *rq, char *model, char *key_id)
{
    uint32_t tokens = 0;
    int32_t strategy = 0;
    memset(rq, 0, sizeof *rq);
    rq->pool = pool;
    if (argc > 0 && napi_get_value_uint32(env, argv[0], &tokens) != napi_ok) {
        throw_type(env, "tokens must be a number");
        return 1;
    }
    rq->tokens = tokens;
    if (argc > 1) {
        int g = get_str(env, argv[1], model, KM_ID_MAX + 2);
        if (g == -2)
            return 1;
        if (g == -1)
            return KM_ENOMODEL;
        rq->model = g == 1 ? model : NULL;
    }
    if (argc > 2) {
        int g = get_str(env, argv[2], key_id, KM_ID_MAX + 2);
        if (g == -2)
            return 1;
        if (g == -1)
            return KM_ENOKEY;
        rq->key_id = g == 1 ? key_id : NULL;
    }
    if (argc > 3 && napi_get_value_int32(env, argv[3], &strategy) != napi_ok) {
        throw_type(env, "strategy must be a number");
        return 1;
    }
    rq->strategy = strategy;
    return 0;
}

/* acquire(core, tokens, model?, keyId?, strategy?) -> entry index >= 0
 * (scratch: [gen, key, keyGen, tokens, model]) or a negative code
 * (KM_EAGAIN: scratch[5] = retryAfterMs). */
static napi_value n_acquire(napi_env env, napi_callback_info info)
{
    size_t argc = 5;
    napi_value argv[5];
    char model[KM_ID_MAX + 2], key_id[KM_ID_MAX + 2];
    km_request rq;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    int rc = get_request(env, argv + 1, argc - 1, c->pool, &rq, model, key_id);
    if (rc == 1)
        return NULL;
    if (rc != 0)
        return num(env, rc);
    int i = entry_get(c);
    if (i < 0)
        return num(env, KM_ENOMEM);
    rc = L.km_acquire(c->seg->env, &rq, &c->tab[i].lease);
    if (rc != KM_OK) {
        if (rc == KM_EAGAIN)
            scratch_retry(c, &c->tab[i].lease);
        entry_put(c, i);
        return num(env, rc);
    }
    scratch_lease(c, i);
    return num(env, i);
}

static const Entry *entry_of(napi_env env, Core *c, napi_value vi, napi_value vg)
{
    int32_t i = -1;
    uint32_t g = 0;
    if (napi_get_value_int32(env, vi, &i) != napi_ok || napi_get_value_uint32(env, vg, &g) != napi_ok)
        return NULL;
    if (i < 0 || i >= c->ntab || !c->tab[i].used || c->tab[i].gen != g)
        return NULL;
    return &c->tab[i];
}

/* leaseStrings(core, i, gen) -> [keyId, secret, meta] or undefined */
static napi_value n_lease_strings(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3], r, v;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    const Entry *e = argc >= 3 ? entry_of(env, c, argv[1], argv[2]) : NULL;
    if (!e)
        return NULL;
    const km_lease *l = &e->lease;
    CHECK(napi_create_array_with_length(env, 3, &r));
    CHECK(napi_create_string_utf8(env, l->key_id, strnlen(l->key_id, sizeof l->key_id), &v));
    CHECK(napi_set_element(env, r, 0, v));
    CHECK(napi_create_string_utf8(env, l->secret,
                                  l->secret_len < sizeof l->secret ? l->secret_len : strnlen(l->secret, sizeof l->secret),
                                  &v));
    CHECK(napi_set_element(env, r, 1, v));
    CHECK(napi_create_string_utf8(env, l->meta,
                                  l->meta_len < sizeof l->meta ? l->meta_len : strnlen(l->meta, sizeof l->meta),
                                  &v));
    CHECK(napi_set_element(env, r, 2, v));
    return r;
}

/* release(core, i, gen) -> rc: success, the library's latency, the
 * estimate kept.  The cheap path. */
static napi_value n_release(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    const Entry *e = argc >= 3 ? entry_of(env, c, argv[1], argv[2]) : NULL;
    if (!e)
        return num(env, KM_ESTALE);
    km_outcome o;
    memset(&o, 0, sizeof o);
    o.kind = KM_OUT_SUCCESS;
    o.latency_us = -1;
    o.tokens = -1;
    o.input_tokens = -1;
    o.output_tokens = -1;
    int rc = L.km_release(c->seg->env, &e->lease, &o);
    entry_put(c, (int)(e - c->tab));
    return num(env, rc);
}

/* releaseWith(core, i, gen, kind, status, headers, body, tokens,
 *             inputTokens, outputTokens, latencyUs, retryAfterS)
 * kind: a km_outcome_kind, used when status is 0/undefined; status > 0:
 * km_outcome_from_http(status, headers: flat [name, value, ...] strings,
 * body: string or undefined).  tokens etc.: < 0 or undefined: unknown.
 * Returns rc; scratch[6] = the kind applied. */
static napi_value n_release_with(napi_env env, napi_callback_info info)
{
    size_t argc = 12;
    napi_value argv[12];
    napi_value und;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    CHECK(napi_get_undefined(env, &und));
    for (size_t k = argc; k < 12; k++)
        argv[k] = und;
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    const Entry *e = entry_of(env, c, argv[1], argv[2]);
    if (!e)
        return num(env, KM_ESTALE);

    int64_t kind, status, tokens, in_tok, out_tok, lat;
    double retry;
    if (get_i64(env, argv[3], KM_OUT_SUCCESS, &kind) || get_i64(env, argv[4], 0, &status) ||
        get_i64(env, argv[7], -1, &tokens) || get_i64(env, argv[8], -1, &in_tok) ||
        get_i64(env, argv[9], -1, &out_tok) || get_i64(env, argv[10], -1, &lat) ||
        get_f64(env, argv[11], 0.0, &retry))
        return NULL;
    if (kind < 0 || kind >= KM_OUT_COUNT)
        return num(env, KM_EINVAL);

    km_outcome o;
    memset(&o, 0, sizeof o);
    o.kind = (int)kind;
    o.retry_after_s = retry;
    int rc = KM_OK;
    char **hv = NULL;
    const char **hp = NULL;
    uint32_t nh = 0;
    char *body = NULL;
    size_t body_len = 0;
    if (status > 0) {
        napi_valuetype t;
        bool is_array = false;
        CHECK(napi_typeof(env, argv[5], &t));
        if (t == napi_object)
            CHECK(napi_is_array(env, argv[5], &is_array));
        if (is_array) {
            CHECK(napi_get_array_length(env, argv[5], &nh));
            nh &= ~1u;
            if (nh > 2 * MAX_HEADERS)
                nh = 2 * MAX_HEADERS;
        }
        if (nh) {
            hv = calloc(nh, sizeof *hv);
            hp = calloc(nh, sizeof *hp);
            if (!hv || !hp) {
                rc = KM_ENOMEM;
                goto out;
            }
            for (uint32_t k = 0; k < nh; k++) {
                napi_value x;
                napi_valuetype xt;
                if (napi_get_element(env, argv[5], k, &x) != napi_ok ||
                    napi_typeof(env, x, &xt) != napi_ok) {
                    rc = 1;
                    goto out;
                }
                if (xt != napi_string) {
                    throw_type(env, "headers: every name and value must be a string");
                    rc = 1;
                    goto out;
                }
                if (!(hv[k] = get_str_alloc(env, x, NULL))) {
                    rc = 1;
                    goto out;
                }
                hp[k] = hv[k];
            }
        }
        CHECK(napi_typeof(env, argv[6], &t));
        if (t == napi_string) {
            if (!(body = get_str_alloc(env, argv[6], &body_len))) {
                rc = 1;
                goto out;
            }
        }
        km_http_response resp;
        memset(&resp, 0, sizeof resp);
        resp.status = (int)(status > INT_MAX ? INT_MAX : status);
        resp.body = body;
        resp.body_len = body_len;
        resp.headers = hp;
        resp.n_headers = nh / 2;
        rc = L.km_outcome_from_http(&resp, &o);
        if (rc != KM_OK)
            goto out;
    }
    o.latency_us = lat;
    o.tokens = tokens;
    o.input_tokens = in_tok;
    o.output_tokens = out_tok;
    rc = L.km_release(c->seg->env, &e->lease, &o);
    entry_put(c, (int)(e - c->tab));
    c->scratch[6] = o.kind;
out:
    if (hv)
        for (uint32_t k = 0; k < nh; k++)
            free(hv[k]);
    free(hv);
    free(hp);
    if (body) {
        explicit_bzero(body, body_len);
        free(body);
    }
    return rc == 1 ? NULL : num(env, rc);
}

/* ------------------------------------------------------------- waiting */

static void list_unlink(Wait **head, Wait *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        *head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
}

static void list_push(Wait **head, Wait *w)
{
    w->prev = NULL;
    w->next = *head;
    if (*head)
        (*head)->prev = w;
    *head = w;
}

static void release_cancelled(Core *c, const km_lease *l)
{
    km_outcome o;
    memset(&o, 0, sizeof o);
    o.kind = KM_OUT_CANCELLED;
    o.latency_us = -1;
    o.tokens = -1;
    o.input_tokens = -1;
    o.output_tokens = -1;
    L.km_release(c->seg->env, l, &o);
}

static void wait_free(Wait *w)
{
    Core *c = w->core;
    free(w);
    core_unref(c);
}

/* One waiter thread: takes queued requests in order until the Core
 * closes, sleeping in km_acquire_wait() WAIT_CHUNK_MS at a time. */
static void *waiter_main(void *arg)
{
    Core *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->closing && !c->qhead) {
            c->idle++;
            pthread_cond_wait(&c->cv, &c->mu);
            c->idle--;
        }
        if (c->closing)
            break;
        Wait *w = c->qhead;
        c->qhead = w->next;
        if (c->qhead)
            c->qhead->prev = NULL;
        else
            c->qtail = NULL;
        w->next = w->prev = NULL;
        list_push(&c->active, w);
        pthread_mutex_unlock(&c->mu);

        int rc;
        for (;;) {
            uint64_t now = L.km_now_ns();
            if (now >= w->deadline_ns) {
                rc = KM_ETIMEDOUT;
                break;
            }
            uint64_t left_ms = (w->deadline_ns - now + NS_PER_MS - 1) / NS_PER_MS;
            rc = L.km_acquire_wait(c->seg->env, &w->rq, &w->lease,
                                   (uint32_t)(left_ms < WAIT_CHUNK_MS ? left_ms : WAIT_CHUNK_MS));
            if (rc != KM_ETIMEDOUT)
                break;
            pthread_mutex_lock(&c->mu);
            int stop = c->closing || w->cancelled;
            pthread_mutex_unlock(&c->mu);
            if (stop)
                break;
        }
        w->rc = rc;
        pthread_mutex_lock(&c->mu);
        list_unlink(&c->active, w);
        int closing = c->closing;
        pthread_mutex_unlock(&c->mu);
        if (closing) {
            /* Nobody will take the lease: give it back. */
            if (rc == KM_OK)
                release_cancelled(c, &w->lease);
            wait_free(w);
        } else {
            /* The JavaScript thread takes it (or, cancelled or closed
             * meanwhile, gives it back): the lease keeps the Seg open. */
            if (rc == KM_OK)
                seg_ref(c->seg);
            napi_status st = napi_closing;
            pthread_mutex_lock(&c->mu);
            if (!c->tsfn_dead) {
                /* The queue is unbounded: this never blocks. */
                st = napi_call_threadsafe_function(c->tsfn, w, napi_tsfn_nonblocking);
                if (st == napi_closing)
                    c->tsfn_dead = 1;
            }
            pthread_mutex_unlock(&c->mu);
            if (st != napi_ok) {
                if (rc == KM_OK) {
                    release_cancelled(c, &w->lease);
                    seg_unref(c->seg);
                }
                wait_free(w);
            }
        }
        pthread_mutex_lock(&c->mu);
    }
    c->threads--;
    if (!c->tsfn_dead)
        napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
    pthread_mutex_unlock(&c->mu);
    seg_unref(c->seg); /* the thread's: it calls into the env no more */
    core_unref(c);     /* the thread's reference */
    return NULL;
}

/* On the JavaScript thread: a wait's result.  dispatch(id, rc, i) with
 * the lease in entry i (scratch as after acquire), or i = -1. */
static void call_js(napi_env env, napi_value fn, void *context, void *data)
{
    Core *c = context;
    Wait *w = data;
    int i = -1;
    if (!env || c->js_closed) {
        /* Tearing down, or closed since: give the lease back. */
        if (w->rc == KM_OK) {
            release_cancelled(c, &w->lease);
            seg_unref(c->seg); /* the lease's */
        }
        wait_free(w);
        return;
    }
    if (c->pending && --c->pending == 0)
        napi_unref_threadsafe_function(env, c->tsfn);
    int rc = w->rc;
    if (rc == KM_OK) {
        i = entry_get(c);
        if (i < 0) {
            release_cancelled(c, &w->lease);
            rc = KM_ENOMEM;
        } else {
            c->tab[i].lease = w->lease;
            scratch_lease(c, i);
        }
    } else if (rc == KM_EAGAIN || rc == KM_ETIMEDOUT) {
        scratch_retry(c, &w->lease);
    }
    napi_value args[3], und;
    args[0] = num(env, w->id);
    args[1] = num(env, rc);
    args[2] = num(env, i);
    if (w->rc == KM_OK)
        seg_unref(c->seg); /* the lease's; the open Core holds one */
    wait_free(w);
    if (napi_get_undefined(env, &und) == napi_ok && args[0] && args[1] && args[2])
        napi_call_function(env, und, fn, 3, args, NULL);
}

/* wait(core, id, timeoutMs, tokens, model?, keyId?, strategy?) -> 0, or a
 * negative code at once.  The result comes through dispatch(id, ...). */
static napi_value n_wait(napi_env env, napi_callback_info info)
{
    size_t argc = 7;
    napi_value argv[7];
    double id = 0, timeout_ms = 0;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 4)
        return throw_type(env, "wait(core, id, timeoutMs, tokens, ...)");
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    CHECK(napi_get_value_double(env, argv[1], &id));
    CHECK(napi_get_value_double(env, argv[2], &timeout_ms));
    Wait *w = calloc(1, sizeof *w);
    if (!w)
        return num(env, KM_ENOMEM);
    int rc = get_request(env, argv + 3, argc - 3, c->pool, &w->rq, w->model, w->key_id);
    if (rc != 0) {
        free(w);
        return rc == 1 ? NULL : num(env, rc);
    }
    w->id = id;
    w->core = c;
    if (!(timeout_ms > 0))
        timeout_ms = 0;
    if (timeout_ms > 86400e3 * 365)
        timeout_ms = 86400e3 * 365;
    w->deadline_ns = L.km_now_ns() + (uint64_t)(timeout_ms * 1e6);
    core_ref(c); /* the wait's reference */

    int start = 0;
    pthread_mutex_lock(&c->mu);
    if (c->qtail) {
        c->qtail->next = w;
        w->prev = c->qtail;
    } else {
        c->qhead = w;
    }
    c->qtail = w;
    /* A thread for it unless one is idle (or all are busy and we are at
     * the cap: it waits its turn in the queue). */
    if (c->idle == 0 && c->threads < c->max_threads) {
        c->threads++;
        start = 1;
    } else {
        pthread_cond_signal(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);

    if (start) {
        pthread_t t;
        pthread_attr_t at;
        sigset_t all, old;
        int err;
        core_ref(c); /* the thread's reference */
        seg_ref(c->seg); /* the thread's: the Core is open, so is the Seg */
        napi_acquire_threadsafe_function(c->tsfn);
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, WAITER_STACK);
        /* Signals stay with the JavaScript thread (libuv's handlers). */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = pthread_create(&t, &at, waiter_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&at);
        if (err) {
            seg_unref(c->seg);
            pthread_mutex_lock(&c->mu);
            napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
            c->threads--;
            int none = c->threads == 0;
            if (none) {
                /* No thread to serve it: take it back. */
                if (w->prev)
                    w->prev->next = w->next;
                else
                    c->qhead = w->next;
                if (w->next)
                    w->next->prev = w->prev;
                else
                    c->qtail = w->prev;
            }
            pthread_mutex_unlock(&c->mu);
            core_unref(c);
            if (none) {
                wait_free(w);
                return num(env, KM_ESYS);
            }
        }
    }
    if (c->pending++ == 0)
        napi_ref_threadsafe_function(env, c->tsfn);
    return num(env, 0);
}

/* cancel(core, id) -> 1: it was queued and is gone (no dispatch will
 * come); 0: a thread has it (dispatch comes within WAIT_CHUNK_MS, or with
 * a lease to give back); -1: not found (its dispatch is on its way). */
static napi_value n_cancel(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    double id = 0;
    int r = -1;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    CHECK(napi_get_value_double(env, argv[1], &id));
    Wait *gone = NULL;
    pthread_mutex_lock(&c->mu);
    for (Wait *w = c->qhead; w; w = w->next) {
        if (w->id == id) {
            if (w->prev)
                w->prev->next = w->next;
            else
                c->qhead = w->next;
            if (w->next)
                w->next->prev = w->prev;
            else
                c->qtail = w->prev;
            gone = w;
            r = 1;
            break;
        }
    }
    if (!gone) {
        for (Wait *w = c->active; w; w = w->next) {
            if (w->id == id) {
                w->cancelled = 1;
                r = 0;
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (gone) {
        wait_free(gone);
        if (c->pending && --c->pending == 0)
            napi_unref_threadsafe_function(env, c->tsfn);
    }
    return num(env, r);
}

/* Close a Core: queued waits are dropped (JavaScript rejects them),
 * threads finish their chunk, give back what they got, and exit.  The
 * Core's reference on its Seg goes now, the JavaScript owner's on the
 * Core's memory too. */
static void core_close(napi_env env, CoreBox *b)
{
    Wait *q;
    Core *c = b->c;
    b->c = NULL;
    c->js_closed = 1;
    pthread_mutex_lock(&c->mu);
    c->closing = 1;
    q = c->qhead;
    c->qhead = c->qtail = NULL;
    for (Wait *w = c->active; w; w = w->next)
        w->cancelled = 1;
    pthread_cond_broadcast(&c->cv);
    /* The JavaScript thread's count on the tsfn, unless the environment's
     * teardown finalized it already. */
    if (!c->tsfn_dead) {
        if (c->pending)
            napi_unref_threadsafe_function(env, c->tsfn);
        napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
    }
    c->pending = 0;
    pthread_mutex_unlock(&c->mu);
    while (q) {
        Wait *n = q->next;
        wait_free(q);
        q = n;
    }
    /* Leases still in the table stay out: km_close() abandons them when
     * the segment's last user lets go. */
    if (c->scratch_ref) {
        napi_delete_reference(env, c->scratch_ref);
        c->scratch_ref = NULL;
    }
    seg_unref(c->seg);
    core_unref(c);
}

static napi_value n_core_close(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    void *p = NULL;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || !p)
        return throw_type(env, "expected a pool handle");
    CoreBox *b = p;
    if (b->c)
        core_close(env, b);
    return NULL;
}

/* leasesOut(core) -> entries in use; waitThreads(core) -> threads */
static napi_value n_core_stats(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], r;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    int out = 0, threads, idle, queued = 0;
    for (int i = 0; i < c->ntab; i++)
        out += c->tab[i].used;
    pthread_mutex_lock(&c->mu);
    threads = c->threads;
    idle = c->idle;
    for (Wait *w = c->qhead; w; w = w->next)
        queued++;
    pthread_mutex_unlock(&c->mu);
    CHECK(napi_create_object(env, &r));
    SETN(r, "leasesOut", out);
    SETN(r, "waitThreads", threads);
    SETN(r, "idleThreads", idle);
    SETN(r, "queued", queued);
    SETN(r, "pending", c->pending);
    return r;
}

/* ------------------------------------------------------------- readers */

static napi_value limits_obj(napi_env env, const km_limit_info *li)
{
    static const char *const wn[KM_WIN_COUNT] = {"rpm", "rph", "rpd", "tpm", "tph", "tpd"};
    napi_value r, o;
    CHECK(napi_create_object(env, &r));
    for (int w = 0; w < KM_WIN_COUNT; w++) {
        if (!li[w].limit)
            continue;
        CHECK(napi_create_object(env, &o));
        SETN(o, "limit", li[w].limit);
        SETN(o, "burst", li[w].burst);
        CHECK(napi_set_named_property(env, o, "mode",
                                      str(env, li[w].mode == KM_MODE_SLIDING ? "sliding" : "token_bucket")));
        SETN(o, "available", li[w].available);
        CHECK(napi_set_named_property(env, r, wn[w], o));
    }
    return r;
}

/* keys(core) -> [{id, masked, state, ...}] of the pool's keys now (never
 * a secret) */
static napi_value n_keys(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], r, o, oc;
    km_pool_info pi;
    km_key_info *ki;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    int rc = L.km_pool_info_get(c->seg->env, c->pool, &pi);
    if (rc != KM_OK)
        return num(env, rc);
    if (!(ki = malloc(sizeof *ki)))
        return num(env, KM_ENOMEM);
    uint64_t now = L.km_now_ns();
    CHECK(napi_create_array(env, &r));
    uint32_t n = 0;
    for (int i = 0; i < (int)pi.n_keys; i++) {
        int k = L.km_pool_key(c->seg->env, c->pool, i);
        if (k < 0 || L.km_key_info_get(c->seg->env, k, ki) != KM_OK)
            continue;
        if (napi_create_object(env, &o) != napi_ok || napi_create_object(env, &oc) != napi_ok) {
            free(ki);
            return throw_last(env);
        }
        napi_set_named_property(env, o, "id", str(env, ki->id));
        napi_set_named_property(env, o, "index", num(env, k));
        napi_set_named_property(env, o, "masked", str(env, ki->secret_masked));
        napi_set_named_property(env, o, "state", str(env, L.km_key_state_name(ki->state)));
        napi_set_named_property(env, o, "weight", num(env, ki->weight));
        napi_set_named_property(env, o, "inflight", num(env, ki->inflight));
        napi_set_named_property(env, o, "maxInflight", num(env, ki->max_inflight));
        napi_set_named_property(env, o, "cooldownMs",
                                num(env, ki->cooldown_until_ns > now ? (double)(ki->cooldown_until_ns - now) / 1e6 : 0));
        napi_set_named_property(env, o, "latencyEmaUs", num(env, (double)ki->latency_ema_us));
        napi_set_named_property(env, o, "successPpm", num(env, ki->success_ppm));
        napi_set_named_property(env, o, "acquired", num(env, (double)ki->acquired));
        for (int x = 0; x < KM_OUT_COUNT; x++)
            napi_set_named_property(env, oc, L.km_outcome_name(x), num(env, (double)ki->outcomes[x]));
        napi_set_named_property(env, oc, "abandoned", num(env, (double)ki->abandoned));
        napi_set_named_property(env, oc, "stale", num(env, (double)ki->stale_releases));
        napi_set_named_property(env, o, "outcomes", oc);
        napi_set_named_property(env, o, "tokensUsed", num(env, (double)ki->tokens_used));
        napi_set_named_property(env, o, "limits", limits_obj(env, ki->limits));
        napi_set_element(env, r, n++, o);
    }
    free(ki);
    return r;
}

static napi_value n_pool_info(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], r;
    km_pool_info pi;
    CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    Core *c = get_core(env, argv[0]);
    if (!c)
        return NULL;
    int rc = L.km_pool_info_get(c->seg->env, c->pool, &pi);
    if (rc != KM_OK)
        return num(env, rc);
    CHECK(napi_create_object(env, &r));
    CHECK(napi_set_named_property(env, r, "name", str(env, pi.name)));
    CHECK(napi_set_named_property(env, r, "strategy", str(env, L.km_strategy_name(pi.strategy))));
    SETN(r, "keys", pi.n_keys);
    SETN(r, "models", pi.n_models);
    SETN(r, "waiters", pi.waiters);
    SETN(r, "cooldownS", pi.cooldown_s);
    SETN(r, "maxFailures", pi.max_failures);
    SETN(r, "budgetMicroUsd", pi.budget_microusd);
    SETN(r, "spentMicroUsd", pi.spent_microusd);
    /* The budget's period (km_budget_state): the previous period's spend,
     * when the current one ends (0: no period), a soft budget's warnings. */
    static const char *const periods[] = {"lifetime", "day", "week", "month"};
    int per = pi.budget.period >= 0 && pi.budget.period < 4 ? pi.budget.period : 0;
    CHECK(napi_set_named_property(env, r, "budgetPeriod", str(env, periods[per])));
    SETN(r, "budgetTzMin", pi.budget.tz_min);
    SETN(r, "prevSpentMicroUsd", pi.budget.prev_spent_microusd);
    SETN(r, "periodEndUnixMs", pi.budget.period_end_unix_ns / 1000000u);
    SETN(r, "budgetWarnings", pi.budget.warnings);
    SETN(r, "budgetOver", pi.budget.over);
    return r;
}

static napi_value n_now_ms(napi_env env, napi_callback_info info)
{
    (void)info;
    if (!loaded(env))
        return NULL;
    return num(env, (double)L.km_now_ns() / 1e6);
}

/* ---------------------------------------------------------------- init */

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}

static napi_value init(napi_env env, napi_value exports)
{
    static const napi_property_descriptor props[] = {
        FN("load", n_load),
        FN("errName", n_err_name),
        FN("strerror", n_strerror),
        FN("names", n_names),
        FN("layout", n_layout),
        FN("segOpen", n_seg_open),
        FN("segCreate", n_seg_create),
        FN("segClose", n_seg_close),
        FN("segInfo", n_seg_info),
        FN("unlink", n_unlink),
        FN("poolFind", n_pool_find),
        FN("coreNew", n_core_new),
        FN("coreClose", n_core_close),
        FN("coreStats", n_core_stats),
        FN("acquire", n_acquire),
        FN("leaseStrings", n_lease_strings),
        FN("release", n_release),
        FN("releaseWith", n_release_with),
        FN("wait", n_wait),
        FN("cancel", n_cancel),
        FN("keys", n_keys),
        FN("poolInfo", n_pool_info),
        FN("nowMs", n_now_ms),
    };
    if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok)
        return NULL;
    return exports;
}

NAPI_MODULE_INIT()
{
    return init(env, exports);
}
