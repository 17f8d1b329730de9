-- keymesh.lua - LuaJIT FFI binding of libkeymesh, for nginx with the Lua
-- module (libnginx-mod-http-lua) or OpenResty, and for plain LuaJIT.
--
--   http {
--     env KEYMESH_LIBRARY;                 # nginx clears the environment
--     lua_package_path "/path/to/bindings/lua/?.lua;;";
--     init_worker_by_lua_block {           # attach once per worker
--       POOL = assert(require("keymesh").open("llm", "openai"))
--     }
--     server { location /v1/ {
--       access_by_lua_block {              # per request: a key
--         local lease, err = POOL:acquire{ timeout = 2, tokens = 800 }
--         if not lease then ngx.log(ngx.WARN, err) return ngx.exit(503) end
--         ngx.ctx.km_lease = lease
--         ngx.req.set_header("Authorization", "Bearer " .. lease.secret)
--       }
--       proxy_pass https://api.openai.com;
--       log_by_lua_block {                 # and what the provider said
--         POOL:release(ngx.ctx.km_lease, {
--           status = tonumber(ngx.var.upstream_status),
--           headers = { ["retry-after"] = ngx.var.upstream_http_retry_after } })
--       }
--     } }
--   }
--
-- Conventions (OpenResty's): functions return a value, or nil and an error
-- string ("EAGAIN: no key is admissible now; ..."); they raise only on
-- misuse (a released lease released again, a wrong argument type).
-- Secrets never appear in an error string or tostring() of a lease/pool.
--
-- Waiting: acquire{timeout = s} sleeps with ngx.sleep() where the request
-- phase can yield (rewrite, access, content, timers), so the worker's event
-- loop keeps running; elsewhere (init_worker, log, plain LuaJIT) it makes
-- one try when timeout is 0, or blocks in km_acquire_wait() otherwise.
--
-- After fork: a handle belongs to the process that attached.  A pool opened
-- in the master (init_by_lua) is attached again, by name, in each worker the
-- first time it is used there; the master's attachment is never touched.

local ffi = require "ffi"
local C = ffi.C

ffi.cdef [[
typedef struct km_env km_env;
typedef struct km_config km_config;
typedef struct km_request {
    int pool; int strategy; uint32_t tokens; const char *model; const char *key_id;
    uint64_t reserved[4];
} km_request;
typedef struct km_lease {
    int key; uint32_t key_gen; int slot; uint32_t seq; int pool; uint32_t tokens;
    uint64_t start_ns, retry_at_ns;
    uint32_t secret_len; int model; uint32_t meta_len;
    char key_id[64]; char secret[256]; char meta[256];
    uint64_t reserved[4];
} km_lease;
typedef struct km_outcome {
    int kind; int64_t latency_us; int64_t tokens; double retry_after_s;
    uint32_t view_flags;
    uint64_t requests_remaining, tokens_remaining, requests_reset_ms, tokens_reset_ms;
    int64_t input_tokens, output_tokens;
    uint64_t reserved[4];
} km_outcome;
typedef struct km_http_response {
    int status; const char *error_code; const char *body; size_t body_len;
    const char *const *headers; size_t n_headers; int64_t now_unix_ms;
    uint64_t reserved[4];
} km_http_response;
typedef struct km_limit_info {
    uint64_t limit, burst; int mode; uint32_t reserved0; uint64_t available, tat_ns;
    uint64_t reserved[2];
} km_limit_info;
typedef struct km_pool_info {
    char name[64]; int strategy; uint32_t n_keys;
    uint32_t cooldown_s, max_cooldown_s, max_failures;
    int model_mode; uint32_t n_models; uint64_t budget_microusd; int budget_hard;
    uint64_t spent_microusd; uint32_t waiters;
    uint64_t reserved[4];
} km_pool_info;
typedef struct km_key_info {
    char id[64]; char secret_masked[24];
    int pool; uint32_t weight, gen; int state; uint64_t cooldown_until_ns;
    uint32_t inflight, max_inflight, consecutive_failures, consecutive_429s;
    uint64_t latency_ema_us, acquired, outcomes[6], abandoned, stale_releases, tokens_used;
    km_limit_info limits[6]; uint32_t success_ppm;
    uint64_t price_in_microusd_per_1k, price_out_microusd_per_1k, budget_microusd;
    int budget_hard; uint64_t spent_microusd; char meta[256];
    uint64_t reserved[4];
} km_key_info;

const char *km_version(void);
size_t km_struct_size(int which);
const char *km_strerror(int err);
const char *km_err_name(int err);
const char *km_key_state_name(int state);
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
int km_pool_find(km_env *env, const char *name);
int km_pool_first(km_env *env);
int km_pool_info_get(km_env *env, int pool, km_pool_info *out);
int km_pool_key(km_env *env, int pool, int i);
int km_key_find(km_env *env, int pool, const char *id);
int km_key_info_get(km_env *env, int key, km_key_info *out);
int km_key_set_state(km_env *env, int key, int state);
void km_mask_secret(const char *secret, char out[24]);
int getpid(void);
]]

local _M = { _VERSION = "0.1.0" }

local EAGAIN, ETIMEDOUT, ESTALE, EEXIST, ECONFIG = -15, -24, -18, -5, -12
local OUT = { success = 0, rate_limited = 1, failure = 2, auth = 3, quota = 4, cancelled = 5 }
local STRATEGY = { round_robin = 1, least_busy = 2, weighted = 3, latency = 4, cost = 5,
                   reliability = 6, fill_first = 7 }
local WINDOWS = { "rpm", "rph", "rpd", "tpm", "tph", "tpd" }
local OUTCOMES = { "success", "rate_limited", "failure", "auth", "quota", "cancelled" }
_M.strategies = STRATEGY
_M.outcomes = OUT

local lib -- the loaded library
local lib_path

-- Which library: keymesh.load(path), else $KEYMESH_LIBRARY (declare
-- `env KEYMESH_LIBRARY;` in nginx.conf), else $KM_BUILD/libkeymesh.so.0,
-- else the dynamic linker's search for libkeymesh.so.0 (make install).
function _M.load(path)
    if lib and (path == nil or path == lib_path) then return lib end
    local tried = {}
    local cands = {}
    if path then cands[#cands + 1] = path end
    local env = os.getenv("KEYMESH_LIBRARY")
    if env and env ~= "" then cands[#cands + 1] = env end
    local build = os.getenv("KM_BUILD")
    if build and build ~= "" then cands[#cands + 1] = build .. "/libkeymesh.so.0" end
    cands[#cands + 1] = "libkeymesh.so.0"
    cands[#cands + 1] = "keymesh"
    for _, c in ipairs(cands) do
        local ok, l = pcall(ffi.load, c)
        if ok then
            -- Structs of another size would be read and written past their
            -- end: refuse a library that does not match the cdef above.
            local bad = _M.size_mismatches(l)
            if #bad > 0 then
                error("keymesh: " .. c .. " does not match this binding (" .. table.concat(bad, "; ")
                      .. "): use the binding and the library of one version", 2)
            end
            lib, lib_path = l, c
            return lib
        end
        tried[#tried + 1] = c .. " (" .. tostring(l) .. ")"
    end
    error("keymesh: libkeymesh not found; tried: " .. table.concat(tried, "; "), 2)
end

-- km_struct_id (keymesh.h) of each struct the cdef declares.
_M.struct_ids = { km_request = 1, km_lease = 2, km_outcome = 3, km_http_response = 4,
                  km_limit_info = 6, km_pool_info = 7, km_key_info = 8 }

-- The structs of `ids` (name -> km_struct_id; default _M.struct_ids) whose
-- ffi size differs from the library's km_struct_size(), as text.
function _M.size_mismatches(l, ids)
    local ok, fn = pcall(function() return l.km_struct_size end)
    if not ok then return { "km_struct_size: missing (a libkeymesh older than this binding)" } end
    local bad = {}
    for name, id in pairs(ids or _M.struct_ids) do
        local n = tonumber(fn(id))
        if n ~= ffi.sizeof(name) then
            bad[#bad + 1] = ("%s: %d bytes in libkeymesh, %d in this binding"):format(name, n, ffi.sizeof(name))
        end
    end
    table.sort(bad)
    return bad
end

local function L() return lib or _M.load() end

local function errstr(rc, what)
    local l = L()
    return ffi.string(l.km_err_name(rc)) .. ": " .. (what and (what .. ": ") or "")
        .. ffi.string(l.km_strerror(rc))
end
_M.errstr = errstr

function _M.version() return ffi.string(L().km_version()) end
function _M.now() return tonumber(L().km_now_ns()) / 1e9 end

function _M.mask(secret)
    local buf = ffi.new("char[24]")
    L().km_mask_secret(secret, buf)
    return ffi.string(buf)
end

-- attachments: one per process and segment, shared by its pool objects
local envs = {} -- name -> { ptr = km_env*, pid = n, refs = n }

local function attach(name, cfg, mode)
    local l = L()
    local pid = C.getpid()
    local e = envs[name]
    if e and e.pid == pid and not cfg then
        e.refs = e.refs + 1
        return e
    end
    local out = ffi.new("km_env*[1]")
    local rc
    if cfg then
        rc = l.km_create(name, cfg, mode or 384, out) -- 0600
    else
        rc = l.km_open(name, out)
    end
    if rc ~= 0 then return nil, errstr(rc, "segment '" .. name .. "'"), rc end
    e = { ptr = out[0], pid = pid, refs = 1 }
    envs[name] = e
    return e
end

local function detach(name, e)
    if e.pid ~= C.getpid() or e.ptr == nil then return end
    e.refs = e.refs - 1
    if e.refs > 0 then return end
    if envs[name] == e then envs[name] = nil end
    L().km_close(e.ptr)
    e.ptr = nil
end

local Pool = {}
Pool.__index = Pool
local Lease = {}
Lease.__index = Lease

local function new_pool(name, e, pool)
    local l = L()
    local idx
    if pool == nil then
        -- the first pool still in use (pool 0 until it is removed)
        local pi = ffi.new("km_pool_info")
        local first = l.km_pool_first(e.ptr)
        local rc = first < 0 and first or l.km_pool_info_get(e.ptr, first, pi)
        if rc ~= 0 then detach(name, e) return nil, errstr(rc, "the segment's first pool") end
        pool = ffi.string(pi.name)
    end
    idx = l.km_pool_find(e.ptr, pool)
    if idx < 0 then detach(name, e) return nil, errstr(idx, "pool '" .. pool .. "'") end
    return setmetatable({ segment = name, pool_name = pool, index = idx, env = e,
                          pid = e.pid, closed = false }, Pool)
end

local function segname(name)
    assert(type(name) == "string", "keymesh: segment name must be a string")
    return (name:gsub("^/", ""))
end

-- keymesh.open(segment, pool?) -> pool | nil, err
function _M.open(name, pool)
    name = segname(name)
    local e, err = attach(name)
    if not e then return nil, err end
    return new_pool(name, e, pool)
end

-- keymesh.create(segment, config, opts?) -> pool | nil, err
--   config: JSON text (starts with "{") or a path to a JSON file;
--   opts.mode (default 0600), opts.pool, opts.exist_ok (open it if it exists).
function _M.create(name, config, opts)
    opts = opts or {}
    name = segname(name)
    local l = L()
    local cfgp = ffi.new("km_config*[1]")
    local err = ffi.new("char[512]")
    local rc
    if config:match("^%s*{") then
        rc = l.km_config_parse(config, #config, "<config>", cfgp, err, 512)
    else
        rc = l.km_config_parse_file(config, cfgp, err, 512)
    end
    if rc ~= 0 then return nil, errstr(rc) .. ": " .. ffi.string(err), rc end
    local e, aerr, arc = attach(name, cfgp[0], opts.mode)
    l.km_config_free(cfgp[0])
    if not e then
        if arc == EEXIST and opts.exist_ok then return _M.open(name, opts.pool) end
        return nil, aerr, arc
    end
    return new_pool(name, e, opts.pool)
end

-- keymesh.close_all(): detach every attachment of this process (for
-- exit_worker_by_lua: leases still out are released as abandoned and the
-- process table slot is freed, instead of waiting for a reaper).
function _M.close_all()
    local pid = C.getpid()
    for name, e in pairs(envs) do
        if e.pid == pid and e.ptr ~= nil then
            L().km_close(e.ptr)
            e.ptr = nil
        end
        envs[name] = nil
    end
end

function _M.unlink(name)
    local rc = L().km_unlink(segname(name))
    if rc ~= 0 then return nil, errstr(rc) end
    return true
end

-- the handle of this process (attaching again after a fork)
function Pool:_ptr()
    if self.closed then error("keymesh: pool is closed", 3) end
    local pid = C.getpid()
    if self.pid ~= pid or self.env.ptr == nil then
        local e, err = attach(self.segment)
        if not e then return nil, err end
        self.env, self.pid = e, pid
    end
    return self.env.ptr
end

function Pool:__tostring()
    return "keymesh.pool(" .. self.segment .. "/" .. self.pool_name .. ")"
end

local yieldable = { rewrite = true, access = true, content = true, timer = true,
                    ssl_cert = true, ssl_session_fetch = true }

-- pool:acquire{ timeout = s (0), model = s, tokens = n, key_id = s,
--               strategy = "least_busy" } -> lease | nil, err, retry_after_s
function Pool:acquire(opts)
    opts = opts or {}
    local l = L()
    local ptr, perr = self:_ptr()
    if not ptr then return nil, perr end
    local req = ffi.new("km_request")
    req.pool = self.index
    req.strategy = opts.strategy and assert(STRATEGY[opts.strategy], "unknown strategy") or 0
    req.tokens = opts.tokens or 0
    local model, key_id = opts.model, opts.key_id -- anchored while the call runs
    req.model = model
    req.key_id = key_id
    local c = ffi.new("km_lease")
    local timeout = opts.timeout or 0
    local rc
    local ngx = rawget(_G, "ngx")
    if timeout > 0 and ngx and ngx.sleep and yieldable[ngx.get_phase()] then
        local deadline = l.km_now_ns() + timeout * 1e9
        while true do
            rc = l.km_acquire(ptr, req, c)
            if rc ~= EAGAIN then break end
            local now = l.km_now_ns()
            if now >= deadline then rc = ETIMEDOUT break end
            local wake = c.retry_at_ns > now and c.retry_at_ns or now + 1000000
            if wake > deadline then wake = deadline end
            local dt = tonumber(wake - now) / 1e9
            ngx.sleep(math.max(0.001, math.min(dt, 0.25)))
        end
    elseif timeout > 0 then
        rc = l.km_acquire_wait(ptr, req, c, math.floor(timeout * 1000))
    else
        rc = l.km_acquire(ptr, req, c)
    end
    if rc ~= 0 then
        local ra
        if c.retry_at_ns > 0 then
            ra = math.max(0, tonumber(c.retry_at_ns - l.km_now_ns()) / 1e9)
        end
        return nil, errstr(rc, "acquire from pool '" .. self.pool_name .. "'"), ra
    end
    return setmetatable({ c = c, pool = self, pid = self.pid, done = false,
                          key_id = ffi.string(c.key_id),
                          secret = ffi.string(c.secret, c.secret_len),
                          meta = ffi.string(c.meta, c.meta_len), model = model }, Lease)
end

function Lease:__tostring()
    return "keymesh.lease(" .. self.key_id .. ", " .. _M.mask(self.secret) .. ")"
end

-- seconds since the lease was acquired
function Lease:elapsed() return tonumber(L().km_now_ns() - self.c.start_ns) / 1e9 end

-- pool:release(lease, opts?) -> true | nil, err
--   opts.status: the provider's HTTP status (nil: success; 0: no answer),
--   opts.headers: { name = value } (Retry-After, x-ratelimit-*),
--   opts.body, opts.error_code: the error body or code,
--   opts.kind: "success" | "rate_limited" | "failure" | "auth" | "quota" |
--              "cancelled" instead of a status,
--   opts.retry_after: seconds (with kind = "rate_limited"),
--   opts.tokens, opts.input_tokens, opts.output_tokens: usage,
--   opts.latency: seconds (default: measured since acquire).
-- A stale lease (reaped, or released by km_close) is not an error.
function Pool:release(lease, opts)
    assert(getmetatable(lease) == Lease, "keymesh: release needs a lease")
    if lease.done then error("keymesh: lease released twice", 2) end
    opts = opts or {}
    local l = L()
    local ptr, perr = self:_ptr()
    if not ptr then return nil, perr end
    if lease.pid ~= self.pid then
        lease.done = true
        return nil, "keymesh: lease belongs to another process"
    end
    local out = ffi.new("km_outcome")
    out.latency_us = opts.latency and math.floor(opts.latency * 1e6) or -1
    out.tokens = opts.tokens or -1
    out.input_tokens = opts.input_tokens or -1
    out.output_tokens = opts.output_tokens or -1
    if opts.kind then
        out.kind = assert(OUT[opts.kind], "keymesh: unknown outcome kind")
        out.retry_after_s = opts.retry_after or 0
    elseif opts.status then
        local hdrs = {}
        for k, v in pairs(opts.headers or {}) do
            if v ~= nil then
                hdrs[#hdrs + 1] = tostring(k)
                hdrs[#hdrs + 1] = tostring(v)
            end
        end
        local arr = ffi.new("const char *[?]", math.max(1, #hdrs), hdrs)
        local resp = ffi.new("km_http_response")
        resp.status = opts.status
        resp.error_code = opts.error_code
        resp.body = opts.body
        resp.body_len = opts.body and #opts.body or 0
        resp.headers = arr
        resp.n_headers = #hdrs / 2
        l.km_outcome_from_http(resp, out)
        -- keep the Lua strings alive until here
        local _ = { hdrs, opts.body, opts.error_code }
    else
        out.kind = OUT.success
    end
    lease.done = true
    local rc = l.km_release(ptr, lease.c, out)
    if rc ~= 0 and rc ~= ESTALE then return nil, errstr(rc, "release") end
    return true
end

-- pool:keys() -> array of { id, key (masked), state, inflight, acquired,
--   success, rate_limited, failure, auth, quota, cancelled, abandoned,
--   limits = { rpm = { limit, available }, ... } }
function Pool:keys()
    local l = L()
    local ptr, perr = self:_ptr()
    if not ptr then return nil, perr end
    local pi = ffi.new("km_pool_info")
    local rc = l.km_pool_info_get(ptr, self.index, pi)
    if rc ~= 0 then return nil, errstr(rc) end
    local out = {}
    local ki = ffi.new("km_key_info")
    for i = 0, pi.n_keys - 1 do
        local k = l.km_pool_key(ptr, self.index, i)
        if k >= 0 and l.km_key_info_get(ptr, k, ki) == 0 then
            local t = { id = ffi.string(ki.id), key = ffi.string(ki.secret_masked),
                        state = ffi.string(l.km_key_state_name(ki.state)),
                        inflight = ki.inflight, max_inflight = ki.max_inflight,
                        acquired = tonumber(ki.acquired), abandoned = tonumber(ki.abandoned),
                        limits = {} }
            for o = 1, 6 do t[OUTCOMES[o]] = tonumber(ki.outcomes[o - 1]) end
            for w = 1, 6 do
                local li = ki.limits[w - 1]
                if li.limit > 0 then
                    t.limits[WINDOWS[w]] = { limit = tonumber(li.limit),
                                             available = tonumber(li.available) }
                end
            end
            out[#out + 1] = t
        end
    end
    return out
end

-- pool:disable(id) / pool:enable(id) -> true | nil, err
local function set_state(self, id, state)
    local l = L()
    local ptr, perr = self:_ptr()
    if not ptr then return nil, perr end
    local k = l.km_key_find(ptr, self.index, id)
    if k < 0 then return nil, errstr(k, "key '" .. id .. "'") end
    local rc = l.km_key_set_state(ptr, k, state)
    if rc ~= 0 then return nil, errstr(rc) end
    return true
end
function Pool:disable(id) return set_state(self, id, 3) end
function Pool:enable(id) return set_state(self, id, 0) end

-- pool:close(): detach when the last pool of this process on the segment closes
function Pool:close()
    if self.closed then return end
    self.closed = true
    if self.pid == C.getpid() then detach(self.segment, self.env) end
end

return _M
