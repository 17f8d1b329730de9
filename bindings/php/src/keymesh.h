#define FFI_SCOPE "KEYMESH"
#define FFI_LIB "libkeymesh.so.0"
/*
 * bindings/php/src/keymesh.h - what PHP's FFI needs of include/keymesh.h.
 *
 * Read by KeyMesh\Native in one of two ways:
 *   - FFI::cdef() of this text (the #define lines dropped) with the library
 *     the binding finds (KEYMESH_LIBRARY, ...): PHP's CLI, or any SAPI with
 *     ffi.enable=true;
 *   - at PHP's start through ffi.preload (php.ini, or -d): FFI_SCOPE below
 *     names the scope, FFI_LIB the library, found by the dynamic linker's
 *     search (ldconfig, LD_LIBRARY_PATH) or given as an absolute path by a
 *     copy of this file (bin/keymesh-ffi-header --lib PATH writes one).
 *     With ffi.enable=preload (PHP's default) only preloaded scopes may be
 *     used outside the CLI: this is how php-fpm runs it.  PHP reads the
 *     two #define lines only at the very top of the file: keep them first.
 *
 * The structs mirror keymesh.h field for field; int for every enum.
 * tests/t_php.sh checks every one against the C compiler's offsets
 * (tests/e2e/layout.c), and KeyMesh\Native compares every size with the
 * library's km_struct_size() each time it loads, refusing a library built
 * from another keymesh.h.  Array sizes are keymesh.h's limits:
 * KM_ID_MAX + 1 = 64, KM_SECRET_MAX + 1 = 256, KM_META_MAX + 1 = 256,
 * KM_MASKED_MAX = 24, KM_OUT_COUNT = KM_WIN_COUNT = 6.
 *
 * km_close is declared only so that its address can be handed to the C
 * library's exit hook (see KeyMesh\Native::adopt): PHP code never calls it.
 */
typedef struct km_env km_env;
typedef struct km_config km_config;

typedef struct km_request {
    int pool;
    int strategy;
    uint32_t tokens;
    const char *model;
    const char *key_id;
    uint64_t reserved[4];
} km_request;

typedef struct km_lease {
    int key;
    uint32_t key_gen;
    int slot;
    uint32_t seq;
    int pool;
    uint32_t tokens;
    uint64_t start_ns;
    uint64_t retry_at_ns;
    uint32_t secret_len;
    int model;
    uint32_t meta_len;
    char key_id[64];
    char secret[256];
    char meta[256];
    uint64_t reserved[4];
} km_lease;

typedef struct km_outcome {
    int kind;
    int64_t latency_us;
    int64_t tokens;
    double retry_after_s;
    uint32_t view_flags;
    uint64_t requests_remaining, tokens_remaining;
    uint64_t requests_reset_ms, tokens_reset_ms;
    int64_t input_tokens, output_tokens;
    uint64_t reserved[4];
} km_outcome;

typedef struct km_http_response {
    int status;
    const char *error_code;
    const char *body;
    size_t body_len;
    const char *const *headers;
    size_t n_headers;
    int64_t now_unix_ms;
    uint64_t reserved[4];
} km_http_response;

typedef struct km_info {
    uint32_t format;
    uint32_t cap_keys, cap_pools, cap_procs, cap_inflight;
    uint32_t n_keys, n_pools, n_procs;
    uint64_t size_bytes;
    uint64_t created_wall_ns;
    uint64_t reserved[4];
} km_info;

typedef struct km_limit_info {
    uint64_t limit;
    uint64_t burst;
    int mode;
    uint32_t reserved0;
    uint64_t available;
    uint64_t tat_ns;
    uint64_t reserved[2];
} km_limit_info;

typedef struct km_pool_info {
    char name[64];
    int strategy;
    uint32_t n_keys;
    uint32_t cooldown_s, max_cooldown_s, max_failures;
    int model_mode;
    uint32_t n_models;
    uint64_t budget_microusd;
    int budget_hard;
    uint64_t spent_microusd;
    uint32_t waiters;
    uint64_t reserved[4];
} km_pool_info;

typedef struct km_key_info {
    char id[64];
    char secret_masked[24];
    int pool;
    uint32_t weight, gen;
    int state;
    uint64_t cooldown_until_ns;
    uint32_t inflight, max_inflight;
    uint32_t consecutive_failures, consecutive_429s;
    uint64_t latency_ema_us;
    uint64_t acquired;
    uint64_t outcomes[6];
    uint64_t abandoned;
    uint64_t stale_releases;
    uint64_t tokens_used;
    km_limit_info limits[6];
    uint32_t success_ppm;
    uint64_t price_in_microusd_per_1k, price_out_microusd_per_1k;
    uint64_t budget_microusd;
    int budget_hard;
    uint64_t spent_microusd;
    char meta[256];
    uint64_t reserved[4];
} km_key_info;

/* functions */
const char *km_version(void);
int km_version_number(void);
int km_format_version(void);
size_t km_struct_size(int which);
const char *km_strerror(int err);
const char *km_err_name(int err);
const char *km_strategy_name(int strategy);
const char *km_key_state_name(int state);
const char *km_outcome_name(int kind);
uint64_t km_now_ns(void);
int km_config_parse(const char *json, size_t len, const char *origin, km_config **out,
                    char *errbuf, size_t errlen);
int km_config_parse_file(const char *path, km_config **out, char *errbuf, size_t errlen);
void km_config_free(km_config *cfg);
int km_create(const char *name, const km_config *cfg, unsigned mode, km_env **out);
int km_open(const char *name, km_env **out);
int km_close(km_env *env);
int km_unlink(const char *name);
int km_acquire(km_env *env, const km_request *req, km_lease *lease);
int km_acquire_wait(km_env *env, const km_request *req, km_lease *lease, uint32_t timeout_ms);
int km_outcome_from_http(const km_http_response *resp, km_outcome *out);
int km_release(km_env *env, const km_lease *lease, const km_outcome *outcome);
int km_info_get(km_env *env, km_info *out);
int km_pool_find(km_env *env, const char *name);
int km_pool_first(km_env *env);
int km_pool_info_get(km_env *env, int pool, km_pool_info *out);
int km_key_find(km_env *env, int pool, const char *id);
int km_pool_key(km_env *env, int pool, int i);
int km_key_info_get(km_env *env, int key, km_key_info *out);
int km_key_set_state(km_env *env, int key, int state);
void km_mask_secret(const char *secret, char out[24]);
