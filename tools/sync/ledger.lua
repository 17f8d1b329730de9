#!lua name=keymesh_ledger
--[[
tools/sync/ledger.lua - KeyMesh's fleet ledger: one provider limit shared by
many hosts through Redis.  Loaded by the sync agent (tools/sync/store.c) as a
Redis Function library (Redis >= 7: FUNCTION LOAD REPLACE when the library
in the store is older), or, where FUNCTION is unknown (Redis 6), the text
above the "--@@ functions" line is sent with SCRIPT LOAD and called by
EVALSHA with a dispatch tail appended.  The design is in tools/sync/DESIGN.md.

KEYS  [1] {km:<fleet>}:ledger  a hash: all state of the fleet
      [2] {km:<fleet>}:hosts   a sorted set: host -> the time (us) from which
                               it may be spending its fallback share
Both names carry the same hash tag, so one call serves every key of the fleet
and the library works on Redis Cluster (one slot).

Operations (ARGV[1]): "version", "info" (read-only), "sync".

Spend budgets (version 2; DESIGN.md section 8, "As built").  Budgets are
post-paid: the cost of a request is known at its release only, so there is
no credit to lease.  Each sync carries, per budget, the micro-USD the host
spent since its previous report in the budget's period (named by its start,
UTC seconds, which every host computes alike from the budget's zone).  The
ledger adds it to a counter without refill, field `b:<bid>` (this period's
start and total, and the previous period's, for a host whose clock is still
there), and to the host's own part, field `c:<bid>:<host>`; the reply
carries both, so the host knows what the others spent.  A report for a
newer period rolls the counter; one for an older period than both kept is
dropped (answered 0 0).  Repeated seqs get the stored reply (rule 1): no
report is added twice.  The fields hold two periods at most: older ones are
gone with the roll.  A host dropped by the sweep or saying bye keeps its
`c:` fields (the totals keep what it reported: a host that comes back
continues its part, and reads the others' spend as total - its part); a
`b:` field of a budget no host reports any more, and the `c:` fields of a
host that never comes back, stay (one small field per budget, and per
budget and host; `v:<host>` lists a host's).

Units.  A limit of L units per period P on a (key, window) -- a "kw" -- is a
GCRA bucket mirroring src/limits.c: emission interval T ns per unit, capacity
`cap` = burst units.  The ledger keeps, per kw, the committed level `lv`
(units, drained at 1/T since time `lt`) and `rs`, the credit reserved: the sum
over hosts of what the ledger has granted and not yet seen settled.  Reserved
credit never drains.  deficit(now) = max(0, lv - (now - lt)/T) + rs.

Why the fleet stays within the limit (argument; the invariants close it).
  A grant g is made only if deficit + g <= cap, and it goes into rs.  When a
  host reports, what it spent is committed into lv *at the time of the
  report* (later than it was spent: conservative) and the reservation of
  everything settled is dropped from rs; credit it still holds stays
  reserved.  So at every instant the reservation covers all credit any host
  may still spend (I1), every unit spent was in rs from its grant until its
  commit and drains only after (I2).  Let Q(t) = deficit(t): it rises only
  at grants (to at most cap), commits leave it unchanged, it falls by
  drain (<= 1/T per ns) and by credit returned unspent.  Over any interval
  [a, b] the units spent S, the credit outstanding X(.), the grants G and
  the returns Ret satisfy S = X(a) - X(b) + G - Ret and
  G = Q(b) - Q(a) + drained + Ret, with Q(a) >= X(a) (I1), Q(b) <= cap,
  drained <= (b - a)/T, hence  S <= (b - a)/T + cap:  the local GCRA bound
  of src/limits.c, for the whole fleet (<= L in any window for `sliding`).
  Fallback shares are not pre-paid.  A host may spend its share only when
  its credit has lapsed and only until its promise expires; from the time a
  host may have started (`t_ack + V`: the issue time of the last reply it
  is known to hold, plus the validity) the ledger charges its share's rate
  (and the share's burst) into lv at every call, before any grant of that
  call, so every grant sees all fallback spending that can precede it (I3).
  The rate is charged as a flow: the shares' rates sum to at most 1/T (I5),
  so the level a bucket fed at those rates would have now is
  max(0, lv + flow - drain) + the bursts (the sweep); the units a host then
  reports as spent on fallback are netted against what was charged (fq),
  whichever report carries them.
  A host unseen past t_iss + V has its reservation committed as spent (I4:
  its credit has lapsed by then, the bound holds whatever it spent).
  Shares promised sum to at most 1e6 ppm over promises still valid (I5):
  a new promise is cut to what the other hosts' valid promises leave.
  What the ledger cannot see: tokens spent above their estimates (adj > 0,
  committed in full, after the fact, as on one host), a forward jump of the
  Redis host's wall clock, and an empty restart: the new epoch starts every
  bucket full (deficit = cap) and, for one learning period F, caps each host
  at the share it held before; DESIGN.md states the bound (L + C).
  `strict` runs the bucket at L - C, C = ceil(rate x V) + burst.

Nothing is written before every input and every report is checked: an error
leaves the ledger as it was (state is read into `ctx`, changed in memory and
flushed at the end).

Cost.  A call reads and writes O(its kws) fields, plus the silent hosts the
sweep visits; the demand shares of a kw are recomputed over all its hosts at
most every S/2 (or at once for a host new to the table) and cached as one
field, so a fleet of N hosts costs O(N) per kw per S/2, not per call.  The
sums I5 needs (promises held, learning claims) are kept per kw.
]]

local LEDGER_VERSION = 2
local PROTO = 'KMS1'
local STATE_FORMAT = 1
local PPM = 1000000
local SLACK_US = 50000          -- clock rates, scheduling: see DESIGN.md
local NF_ENTRY = 15
local NF_EVENT = 3
local NF_BUDGET = 3
local MAX_BUDGETS = 4096
local USD_MAX = 2 ^ 53
local MAX_ENTRIES = 4096
local MAX_EVENTS = 1024
local INT_MAX = 2 ^ 53
local UNIT_MAX = 2 ^ 50
local LIMIT_MAX = 2 ^ 40
local FQ_FRESH = 2 ^ 45         -- fq of a new record: see sync's reports

-- Redis 7.0 runs a library's top level without math, string or table (they
-- exist only while a function runs), so these look them up at call time.
local function floor(x) return math.floor(x) end
local function ceil(x) return math.ceil(x) end
local function max(...) return math.max(...) end
local function min(...) return math.min(...) end
local function fmt(f, ...) return string.format(f, ...) end

-- Errors raised while checking carry this table; dispatch turns them into
-- a clean error reply "KMLEDGER <message>".
local function fail(msg)
    error({ kmerr = 'KMLEDGER ' .. msg }, 0)
end

local function int_arg(s, lo, hi, what)
    if type(s) ~= 'string' or #s > 17 or not s:match('^%-?%d+$') then
        fail('bad request: ' .. what .. ' is not an integer')
    end
    local n = tonumber(s)
    if n < lo or n > hi then
        fail('bad request: ' .. what .. ' out of range')
    end
    return n
end

local function id_arg(s, what)
    if type(s) ~= 'string' or #s < 1 or #s > 64 or not s:match('^[%w_.%-]+$') then
        fail('bad request: ' .. what .. ' must be 1-64 characters of [A-Za-z0-9_.-]')
    end
    return s
end

-- Records are cmsgpack arrays in a fixed order per kind (exact for every
-- number; cheap to decode, which matters: a call decodes a few, a share
-- recomputation one per host).  `kmctl fleet` (info) shows them decoded.
local XF = { 'out', 'rc', 'fq', 'al', 'alt', 'fb', 'fbt', 'fba', 'fbat', 'fc',
             'dem', 'want', 'L', 'B', 'P', 'mode', 'strict', 'sh', 'lcl', 'hc',
             'V', 'F', 'S', 'err' }
local KF = { 'lv', 'lt', 'rs', 'P', 'mode', 'L', 'B', 'strict', 'sha', 'sumh', 'suml' }
local HF = { 'seq', 'tiss', 'tack', 'V', 'F', 'S' }
local HLF = { 'st', 'untl', 'hv' }
local BF = { 'st', 'tot', 'pst', 'ptot' }
local SCHEMA_OF = { x = XF, k = KF, h = HF, s = HLF, b = BF }

local function pack(schema, r)
    local t = {}
    for i = 1, #schema do
        t[i] = r[schema[i]]
    end
    return cmsgpack.pack(t)
end

local function unpack_rec(schema, s, what)
    local ok, t = pcall(cmsgpack.unpack, s)
    if not ok or type(t) ~= 'table' or #t ~= #schema then
        fail('corrupt ledger state in ' .. what)
    end
    local r = {}
    for i = 1, #schema do
        if type(t[i]) ~= 'number' then fail('corrupt ledger state in ' .. what) end
        r[schema[i]] = t[i]
    end
    return r
end

-- ------------------------------------------------------------ the context
-- Everything a call reads is cached in `ctx` (most of it fetched by one
-- HMGET), changed in memory, and written back by flush() at the end.

local function ctx_new(keys)
    if #keys ~= 2 then
        fail('expected 2 keys: {km:<fleet>}:ledger {km:<fleet>}:hosts')
    end
    local tag = keys[1]:match('^({km:[%w_.%-]+}):ledger$')
    if not tag or keys[2] ~= tag .. ':hosts' then
        fail('keys must be {km:<fleet>}:ledger and {km:<fleet>}:hosts')
    end
    return { LK = keys[1], HK = keys[2], rec = {}, raw = {}, dirty = {}, gone = {},
             extra = {}, zadd = {}, zrem = {} }
end

-- Fetch fields in one HMGET: records are decoded into c.rec (false when
-- absent), anything else kept as text in c.raw.
local function ctx_prefetch(c, fields)
    if #fields == 0 then return end
    local vals = redis.call('HMGET', c.LK, unpack(fields))
    for i, f in ipairs(fields) do
        local schema = SCHEMA_OF[f:sub(1, 1)]
        if schema and f:sub(2, 2) == ':' then
            if vals[i] then c.rec[f] = unpack_rec(schema, vals[i], f) else c.rec[f] = false end
        else
            c.raw[f] = vals[i] or false
        end
    end
end

local function ctx_get(c, field, schema)
    local r = c.rec[field]
    if r == nil then
        local s = redis.call('HGET', c.LK, field)
        if s then r = unpack_rec(schema, s, field) else r = false end
        c.rec[field] = r
    end
    return r or nil
end

local function ctx_raw(c, field)
    local v = c.raw[field]
    if v == nil then
        v = redis.call('HGET', c.LK, field) or false
        c.raw[field] = v
    end
    return v or nil
end

local function ctx_put(c, field, r)
    c.rec[field] = r
    c.dirty[field] = true
    c.gone[field] = nil
end

local function ctx_del(c, field)
    c.rec[field] = false
    c.dirty[field] = nil
    c.gone[field] = true
end

local function ctx_set_raw(c, field, v)
    c.raw[field] = v
    c.extra[field] = v
    c.gone[field] = nil
end

local function ctx_del_raw(c, field)
    c.raw[field] = false
    c.extra[field] = nil
    c.gone[field] = true
end

local function flush(c)
    local args, dels = { 'HSET', c.LK }, { 'HDEL', c.LK }
    for f in pairs(c.dirty) do
        args[#args + 1] = f
        args[#args + 1] = pack(SCHEMA_OF[f:sub(1, 1)], c.rec[f])
    end
    for f, v in pairs(c.extra) do
        args[#args + 1] = f
        args[#args + 1] = v
    end
    for f in pairs(c.gone) do
        dels[#dels + 1] = f
    end
    if c.wipe then
        redis.call('DEL', c.LK, c.HK)
    elseif #dels > 2 then
        redis.call(unpack(dels))
    end
    if #args > 2 then redis.call(unpack(args)) end
    for h, score in pairs(c.zadd) do
        redis.call('ZADD', c.HK, fmt('%.17g', score), h)
    end
    for h in pairs(c.zrem) do
        redis.call('ZREM', c.HK, h)
    end
end

-- The ledger's clock, in microseconds: Redis's TIME, never going backwards
-- across calls.  Tests set the field `clock` to drive it; nothing else does.
local function clock_us(clock, last)
    local now
    if clock then
        now = tonumber(clock)
    else
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    end
    if last and tonumber(last) > now then
        now = tonumber(last)
    end
    return now
end

-- ---------------------------------------------------------------- buckets

-- GCRA parameters as src/limits.c: T ns per unit, capacity in units.
local function gcra(L, B, P_ms, mode)
    local Pns = P_ms * 1000000
    if mode == 0 then
        return ceil(Pns / L), B
    end
    return floor(Pns / (L + 1 - B)) + 1, B
end

-- Effective parameters of a kw: T, cap, and C (the cap on credit
-- outstanding: rate x V, rounded up).  strict runs at L - C - B.
-- Returns nil if strict cannot be met.
local function kw_params(L, B, P_ms, mode, strict, V_us)
    local T, cap = gcra(L, B, P_ms, mode)
    local C = ceil(V_us * 1000 / T)
    if strict == 1 then
        local Ls = L - C - B
        if Ls < 1 then return nil end
        local Bs = min(B, Ls)
        T, cap = gcra(Ls, Bs, P_ms, mode)
        C = ceil(V_us * 1000 / T)
    end
    return T, cap, C
end

local function drained(k, now, T)
    local lv = k.lv - (now - k.lt) * 1000 / T
    if lv < 0 then lv = 0 end
    return lv
end

local function commit(k, now, T, units)
    k.lv = drained(k, now, T) + units
    k.lt = now
end

-- The fallback share a host may still be spending at `now`, in ppm: the
-- larger of the promise it acknowledged and the last one issued to it,
-- each while valid.
local function held_ppm(x, now)
    local h = 0
    if x.fbt + x.F + SLACK_US > now then h = x.fb end
    if x.fbat + x.F + SLACK_US > now and x.fba > h then h = x.fba end
    return h
end

-- ------------------------------------------------------------------ sweep
-- Hosts whose credit may have lapsed: reclaim credit past t_iss + V (commit
-- it as spent), charge fallback shares while promised, drop hosts past
-- t_iss + F.  Runs before any report or grant of the call (I3, I4).

local function host_kws(c, h)
    local s = ctx_raw(c, 'w:' .. h)
    local t = {}
    if s then
        for kw in s:gmatch('%S+') do t[#t + 1] = kw end
    end
    return t
end

local function kw_T(c, kw, V_us)
    local k = ctx_get(c, 'k:' .. kw, KF)
    if not k then return nil end
    local T, cap, C = kw_params(k.L, k.B, k.P, k.mode, k.strict, V_us)
    if not T then
        T, cap = gcra(k.L, k.B, k.P, k.mode)
        C = ceil(V_us * 1000 / T)
    end
    return k, T, cap, C
end

-- A fallback share is a token bucket of rate ppm x R and this burst: the
-- share of what the rate gives in one sync period S, at least one unit.
-- Every host may take its burst at the start of an outage, and the ledger
-- charges them all when the store is back (the fleet then waits for them
-- to drain): the share of rate x V made that wait ~V after every outage
-- (0.15-0.2 s at V = 4 S in tests/fleet/long_faults), the share of one S
-- a quarter of it.
local function fb_burst(ppm, T, S_us)
    if ppm <= 0 then return 0 end
    return max(1, ceil(ppm * ceil(S_us * 1000 / T) / PPM))
end

-- Forget host h: its records, its place in every kw's sums.
local function drop_host(c, h, kws)
    for _, kw in ipairs(kws) do
        local xf = 'x:' .. kw .. ':' .. h
        local x = ctx_get(c, xf, XF)
        local k = ctx_get(c, 'k:' .. kw, KF)
        if x and k then
            k.rs = k.rs - x.out
            k.sumh = k.sumh - x.hc
            k.suml = k.suml - x.lcl
            ctx_put(c, 'k:' .. kw, k)
        end
        ctx_del(c, xf)
    end
    ctx_del(c, 'h:' .. h)
    -- Its parts of the budgets' totals (c:<bid>:<h>) stay: the totals keep
    -- what it reported, so a host that comes back must find its part there,
    -- or it would count its own spend as the others' (total - mine).
    ctx_del_raw(c, 'w:' .. h)
    ctx_del_raw(c, 'r:' .. h)
    c.zrem[h] = true
    c.zadd[h] = nil
end

local function sweep(c, now)
    local due = redis.call('ZRANGEBYSCORE', c.HK, '-inf', fmt('%.17g', now))
    -- Per kw, what the sweep commits: `flow`, the fallback units charged
    -- for time after the bucket's last update (k.lt), and `point`, the
    -- rest (reclaimed credit, episode bursts, fallback before k.lt).
    -- Fallback shares are token buckets whose rates sum to at most the
    -- kw's rate (I5), so their flow drains as it comes: committed as a
    -- flow, max(0, lv + flow - drain) + point is the level a bucket fed as
    -- the hosts spent would have now.  Committing the flow at `now` on top
    -- of the drained level (as a point) counted the drain of an outage as
    -- lost: after a store stall of d seconds every grant waited about d
    -- more, the fleet at a standstill.
    local acc, order = {}, {}
    for _, h in ipairs(due) do
        local hr = ctx_get(c, 'h:' .. h, HF)
        if not hr then
            c.zrem[h] = true
        else
            local kws = host_kws(c, h)
            for _, kw in ipairs(kws) do
                local x = ctx_get(c, 'x:' .. kw .. ':' .. h, XF)
                local k, T = kw_T(c, kw, hr.V)
                if x and k then
                    local a = acc[kw]
                    if not a then
                        a = { k = k, T = T, flow = 0, point = 0 }
                        acc[kw] = a
                        order[#order + 1] = kw
                    end
                    if x.out > 0 and now > hr.tiss + hr.V + SLACK_US then
                        a.point = a.point + x.out
                        k.rs = k.rs - x.out
                        x.rc = x.rc + x.out
                        x.out = 0
                    end
                    local ppm = max(x.fb, x.fba)
                    local from = hr.tack + hr.V - SLACK_US
                    local to = min(now, hr.tiss + hr.F + SLACK_US)
                    local s0 = max(from, x.fc)
                    if ppm > 0 and to > s0 then
                        local units = ppm * (to - s0) / (T * 1000)
                        local s1 = min(to, max(s0, k.lt))
                        local before = ppm * (s1 - s0) / (T * 1000)
                        a.flow = a.flow + (units - before)
                        a.point = a.point + before
                        if x.fc < from then
                            -- a new fallback episode: its burst once
                            local b = fb_burst(ppm, T, hr.S)
                            a.point = a.point + b
                            units = units + b
                        end
                        x.fq = x.fq + units
                        x.fc = to
                    end
                    ctx_put(c, 'x:' .. kw .. ':' .. h, x)
                    ctx_put(c, 'k:' .. kw, k)
                end
            end
            if now > hr.tiss + hr.F + SLACK_US then
                drop_host(c, h, kws)
            end
        end
    end
    for _, kw in ipairs(order) do
        local a = acc[kw]
        local k = a.k
        if a.flow > 0 or a.point > 0 then
            local lv = k.lv + a.flow - (now - k.lt) * 1000 / a.T
            if lv < 0 then lv = 0 end
            k.lv = lv + a.point
            k.lt = now
            ctx_put(c, 'k:' .. kw, k)
        end
    end
end

-- ---------------------------------------------------------------- shares
-- Doorman's proportional share over capacity `cap` (ppm of the rate): if
-- the demands fit, each gets its demand plus the spare in proportion to its
-- demand; otherwise every host gets the equal share E or its demand if
-- smaller, and the capacity the small ones leave is split among the others
-- in proportion to their excess need (demand - E).  Sum == cap.
local function doorman(d, cap)
    local n, sum, a = #d, 0, {}
    for i = 1, n do sum = sum + d[i] end
    if n == 0 or sum == 0 then return a end
    if sum <= cap then
        for i = 1, n do a[i] = cap * d[i] / sum end
    else
        local E, xcap, xneed = cap / n, 0, 0
        for i = 1, n do
            if d[i] < E then xcap = xcap + (E - d[i]) else xneed = xneed + (d[i] - E) end
        end
        for i = 1, n do
            if d[i] < E then a[i] = d[i] else a[i] = E + (d[i] - E) * xcap / xneed end
        end
    end
    local tot, big = 0, 1
    for i = 1, n do
        a[i] = floor(a[i] + 1e-6)
        tot = tot + a[i]
        if a[i] > a[big] then big = i end
    end
    if tot > cap then a[big] = a[big] - (tot - cap) end
    return a
end

-- A host's demand for the share computation, units per second: what it
-- reports, and at least its largest waiting request once per sync period.
local function dem_eff(dem, want, S_us)
    return max(dem, ceil(want * 1000000 / S_us))
end

-- The cached share table of a kw: " host:ppm host:ppm ...".
local function share_of(tbl, h)
    if not tbl then return nil end
    local i = string.find(tbl, ' ' .. h .. ':', 1, true)
    if not i then return nil end
    return tonumber(tbl:match('^(%d+)', i + #h + 2))
end

-- Recompute the shares of kw over every host the ledger knows: one pass
-- over their records (O(hosts)), at most every S/2 per kw, or at once for
-- a host new to the table.  Also settles the kw's configuration: period
-- and mode must agree (the first reporter's stand until no live host uses
-- them), limit and burst are the smallest any live host reports.  Returns
-- the table and the requester's configuration error (0, or 1: disagrees).
local function recompute(c, kw, k, me, x, t, q, now, hosts, bye)
    local names, fields = {}, {}
    for _, h in ipairs(hosts.names) do
        if h ~= me then
            names[#names + 1] = h
            fields[#fields + 1] = 'x:' .. kw .. ':' .. h
        end
    end
    local others = {}
    if #fields > 0 then
        local vals = redis.call('HMGET', c.LK, unpack(fields))
        for j, h in ipairs(names) do
            local r = c.rec[fields[j]]
            if r == nil and vals[j] then r = unpack_rec(XF, vals[j], fields[j]) end
            if r then others[#others + 1] = { h = h, x = r } end
        end
    end
    local same = 0
    for _, o in ipairs(others) do
        if o.x.P == k.P and o.x.mode == k.mode then same = same + 1 end
    end
    local err = 0
    if t.P ~= k.P or t.mode ~= k.mode then
        if same == 0 then
            local _, cap0 = gcra(t.L, t.B, t.P, t.mode)
            k.P, k.mode, k.lv, k.lt = t.P, t.mode, cap0, now
        else
            err = 1
        end
    end
    local L, B, strict = t.L, t.B, t.strict
    if err == 1 then L, B, strict = k.L, k.B, k.strict end
    for _, o in ipairs(others) do
        if o.x.P == k.P and o.x.mode == k.mode and o.x.err == 0 then
            L, B, strict = min(L, o.x.L), min(B, o.x.B), max(strict, o.x.strict)
        end
    end
    k.L, k.B, k.strict = L, B, strict
    local T = kw_params(k.L, k.B, k.P, k.mode, k.strict, q.V)
    if not T then T = gcra(k.L, k.B, k.P, k.mode) end
    -- Demand-proportional shares of what silent hosts' fallback leaves.
    local silent_held, d, who = 0, {}, {}
    for _, o in ipairs(others) do
        if hosts.score[o.h] <= now then
            silent_held = silent_held + held_ppm(o.x, now)
        elseif o.x.err == 0 and o.x.P == k.P and o.x.mode == k.mode then
            d[#d + 1] = dem_eff(o.x.dem, o.x.want, o.x.S) * T / 1000
            who[#who + 1] = o.h
        end
    end
    if err == 0 and not bye then
        d[#d + 1] = dem_eff(t.dem, t.want, q.S) * T / 1000
        who[#who + 1] = me
    end
    local active, idle = {}, {}
    for i = 1, #d do
        if d[i] > 0 then
            active[#active + 1] = i
        else
            idle[#idle + 1] = i
        end
    end
    local da = {}
    for j, i in ipairs(active) do da[j] = d[i] end
    local a = doorman(da, max(0, PPM - silent_held))
    local parts = {}
    for j, i in ipairs(active) do parts[#parts + 1] = who[i] .. ':' .. fmt('%d', a[j]) end
    for _, i in ipairs(idle) do parts[#parts + 1] = who[i] .. ':0' end
    local tbl = ' ' .. table.concat(parts, ' ') .. ' '
    k.sha = now
    ctx_set_raw(c, 't:' .. kw, tbl)
    return tbl, err
end

-- ------------------------------------------------------------------- sync
local function parse_sync(args)
    if args[2] ~= PROTO then
        fail('bad request: protocol ' .. tostring(args[2]) .. ', expected ' .. PROTO)
    end
    local cv = int_arg(args[3], 0, INT_MAX, 'client version')
    if cv ~= LEDGER_VERSION then
        fail(fmt('version: ledger %d, client %d', LEDGER_VERSION, cv))
    end
    local q = {
        host = id_arg(args[4], 'host id'),
        seq = int_arg(args[5], 1, INT_MAX, 'seq'),
        ack = int_arg(args[6], 0, INT_MAX, 'ack'),
        epoch = int_arg(args[7], 0, INT_MAX, 'epoch'),
        flags = int_arg(args[8], 0, 1, 'flags'),
        S = int_arg(args[9], 1, 60000, 'sync period') * 1000,
        V = int_arg(args[10], 1, 600000, 'validity') * 1000,
        F = int_arg(args[11], 1, 3600000, 'fallback period') * 1000,
        ent = {}, ev = {}, bud = {},
    }
    if q.V < q.S or q.F < q.V then
        fail('bad request: need sync period <= validity <= fallback period')
    end
    local n = int_arg(args[12], 0, MAX_ENTRIES, 'entry count')
    local i = 13
    local seen = {}
    for e = 1, n do
        local t = {}
        t.kid = id_arg(args[i], 'key id')
        t.win = int_arg(args[i + 1], 0, 5, 'window')
        t.L = int_arg(args[i + 2], 1, LIMIT_MAX, 'limit')
        t.P = int_arg(args[i + 3], 1, 31 * 86400000, 'period')
        t.B = int_arg(args[i + 4], 1, LIMIT_MAX, 'burst')
        t.mode = int_arg(args[i + 5], 0, 1, 'mode')
        t.strict = int_arg(args[i + 6], 0, 1, 'strict')
        t.dem = int_arg(args[i + 7], 0, UNIT_MAX, 'demand')
        t.want = int_arg(args[i + 8], 0, LIMIT_MAX, 'want')
        t.spent = int_arg(args[i + 9], 0, UNIT_MAX, 'spent')
        t.fbspent = int_arg(args[i + 10], 0, UNIT_MAX, 'fallback spent')
        t.adj = int_arg(args[i + 11], -UNIT_MAX, UNIT_MAX, 'adjustment')
        t.ret = int_arg(args[i + 12], 0, UNIT_MAX, 'returned')
        t.left = int_arg(args[i + 13], 0, UNIT_MAX, 'left')
        t.held = int_arg(args[i + 14], 0, PPM, 'fallback held')
        if t.mode == 1 and t.B > t.L then
            fail('bad request: sliding burst above its limit')
        end
        t.kw = t.kid .. '/' .. t.win
        if seen[t.kw] then
            fail('bad request: ' .. t.kw .. ' twice')
        end
        seen[t.kw] = true
        q.ent[e] = t
        i = i + NF_ENTRY
    end
    local m = int_arg(args[i], 0, MAX_EVENTS, 'event count')
    i = i + 1
    for e = 1, m do
        q.ev[e] = {
            kid = id_arg(args[i], 'event key id'),
            kind = int_arg(args[i + 1], 1, 5, 'event kind'),
            arg = int_arg(args[i + 2], 0, LIMIT_MAX, 'event argument'),
        }
        i = i + NF_EVENT
    end
    q.bud = {}
    local nb = 0 -- the budget count may be left out: none
    if args[i] ~= nil then
        nb = int_arg(args[i], 0, MAX_BUDGETS, 'budget count')
        i = i + 1
    end
    local seenb = {}
    for e = 1, nb do
        local b = {
            bid = id_arg(args[i], 'budget id'),
            st = int_arg(args[i + 1], 0, INT_MAX, 'period start'),
            spent = int_arg(args[i + 2], 0, USD_MAX, 'budget spent'),
        }
        if seenb[b.bid] then
            fail('bad request: budget ' .. b.bid .. ' twice')
        end
        seenb[b.bid] = true
        q.bud[e] = b
        i = i + NF_BUDGET
    end
    if args[i] ~= nil then
        fail('bad request: trailing arguments')
    end
    return q
end

local function new_x(t, q, now)
    return { out = 0, rc = 0, fq = FQ_FRESH, al = 0, alt = now, fb = 0, fbt = 0,
             fba = 0, fbat = 0, fc = 0, dem = 0, want = 0, L = t.L, B = t.B,
             P = t.P, mode = t.mode, strict = t.strict, sh = 0, lcl = 0, hc = 0,
             V = q.V, F = q.F, S = q.S, err = 0 }
end

-- Health: st 0 active (cooling while untl > now), 3 disabled, 4 invalid,
-- 5 exhausted; hv counts changes.  Event kinds: 1 rate-limited (arg: ms
-- to cool), 2 auth failure, 3 quota, 4 operator disable, 5 operator enable.
local function apply_event(c, ev, now)
    local f = 's:' .. ev.kid
    local s = ctx_get(c, f, HLF) or { st = 0, untl = 0, hv = 0 }
    if ev.kind == 1 then
        s.untl = max(s.untl, now + ev.arg * 1000)
    elseif ev.kind == 2 then
        s.st = 4
    elseif ev.kind == 3 then
        s.st = 5
    elseif ev.kind == 4 then
        s.st = 3
    else
        s.st, s.untl = 0, 0
    end
    s.hv = s.hv + 1
    ctx_put(c, f, s)
end

-- ---------------------------------------------------------- spend budgets
-- Add each report to its budget's counter (this period, or the previous
-- one) and to the host's part; the reply's entry: { total, the host's }.
local function spend_budgets(c, q, me)
    local out = {}
    for e, b in ipairs(q.bud) do
        local bf, cf = 'b:' .. b.bid, 'c:' .. b.bid .. ':' .. me
        local r = ctx_get(c, bf, BF) or { st = b.st, tot = 0, pst = -1, ptot = 0 }
        if b.st > r.st then -- a new period: the current one becomes the previous
            r.pst, r.ptot = r.st, r.tot
            r.st, r.tot = b.st, 0
        end
        local mine = ctx_raw(c, cf)
        local mst, mv = -1, 0
        if mine then
            local a, v = mine:match('^(%d+) (%d+)$')
            if a then mst, mv = tonumber(a), tonumber(v) end
        end
        if mst ~= b.st then mst, mv = b.st, 0 end
        if b.st == r.st then
            r.tot = r.tot + b.spent
        elseif b.st == r.pst then
            r.ptot = r.ptot + b.spent
        else
            mst = -1 -- older than both periods kept: dropped
        end
        if mst >= 0 then
            mv = mv + b.spent
            ctx_set_raw(c, cf, fmt('%.17g %.17g', mst, mv))
            ctx_put(c, bf, r)
            if b.st == r.st then out[e] = { r.tot, mv } else out[e] = { r.ptot, mv } end
        else
            out[e] = { 0, 0 }
        end
    end
    return out
end

-- The budgets this host reports, for drop_host: written when they change.
local function spend_host_list(c, q, me)
    local l = {}
    local old = ctx_raw(c, 'v:' .. me)
    local seen = {}
    for _, b in ipairs(q.bud) do
        l[#l + 1] = b.bid
        seen[b.bid] = true
    end
    if old then -- a budget no longer reported keeps its field until the host goes
        for bid in old:gmatch('%S+') do
            if not seen[bid] and ctx_raw(c, 'c:' .. bid .. ':' .. me) then l[#l + 1] = bid end
        end
    end
    local v = table.concat(l, ' ')
    if v ~= (old or '') then
        if v == '' then ctx_del_raw(c, 'v:' .. me) else ctx_set_raw(c, 'v:' .. me, v) end
    end
end

local function sync(keys, args)
    local q = parse_sync(args)
    local c = ctx_new(keys)
    local me = q.host
    local hf = 'h:' .. me

    -- One HMGET for what every call reads.
    local fields = { 'clock', 'last', 'epoch', 'learn', 'fmt', 'born', hf, 'w:' .. me }
    local kids = {}
    for _, t in ipairs(q.ent) do
        fields[#fields + 1] = 'x:' .. t.kw .. ':' .. me
        fields[#fields + 1] = 'k:' .. t.kw
        fields[#fields + 1] = 't:' .. t.kw
        kids[#kids + 1] = t.kid
    end
    for _, ev in ipairs(q.ev) do kids[#kids + 1] = ev.kid end
    for _, b in ipairs(q.bud) do
        fields[#fields + 1] = 'b:' .. b.bid
        fields[#fields + 1] = 'c:' .. b.bid .. ':' .. me
    end
    fields[#fields + 1] = 'v:' .. me
    local named = {}
    for _, kid in ipairs(kids) do
        if not named[kid] then
            named[kid] = true
            fields[#fields + 1] = 's:' .. kid
        end
    end
    ctx_prefetch(c, fields)
    local now = clock_us(c.raw.clock, c.raw.last)
    local hr = c.rec[hf] or nil

    -- Idempotence: the same seq gets the same answer and changes nothing.
    if hr and q.seq == hr.seq then
        local stored = redis.call('HGET', c.LK, 'r:' .. me)
        if stored then return cmsgpack.unpack(stored) end
    end
    if hr and q.seq < hr.seq then
        fail(fmt('stale seq %d last %d', q.seq, hr.seq))
    end

    -- The epoch.  An empty ledger (new, flushed, restarted empty) starts a
    -- new one.  A caller that never synced (epoch 0) finding it empty starts
    -- a fresh fleet: no promise of an earlier epoch can be out, no learning.
    -- A report from an older epoch within F of this one's birth means the
    -- store lost its state while promises were out: learning until birth + F.
    c.extra.last = fmt('%.17g', now)
    local epoch, learn_until
    if not c.raw.epoch then
        epoch = floor(now / 1000)
        if epoch == q.epoch then epoch = epoch + 1 end
        learn_until = now
        if q.epoch ~= 0 then learn_until = now + q.F end
        -- Whatever is left in the hash or the host set cannot be trusted
        -- (flush deletes both; a test's clock survives).
        local clock_v = c.raw.clock
        c.wipe = true
        for f in pairs(c.rec) do c.rec[f] = false end
        for f in pairs(c.raw) do c.raw[f] = false end
        if clock_v then c.extra.clock = clock_v end
        hr = nil
        c.extra.epoch = fmt('%.17g', epoch)
        c.extra.learn = fmt('%.17g', learn_until)
        c.extra.born = fmt('%.17g', now)
        c.extra.fmt = tostring(STATE_FORMAT)
    else
        if tonumber(c.raw.fmt) ~= STATE_FORMAT then
            fail('ledger state format ' .. tostring(c.raw.fmt) .. ' is not ' .. STATE_FORMAT)
        end
        epoch, learn_until = tonumber(c.raw.epoch), tonumber(c.raw.learn)
        local born = tonumber(c.raw.born)
        if q.epoch ~= 0 and q.epoch ~= epoch and now < born + q.F
           and learn_until < born + q.F then
            learn_until = born + q.F
            c.extra.learn = fmt('%.17g', learn_until)
        end
        sweep(c, now)
        hr = ctx_get(c, hf, HF) -- the sweep may have dropped it
    end
    local learning = now < learn_until

    -- Check every report before changing anything.  First contact (no
    -- record in this epoch): what it spent was counted before (or by an
    -- epoch now gone); the credit it still holds is reserved from now on.
    local X = {}
    for e, t in ipairs(q.ent) do
        local xf = 'x:' .. t.kw .. ':' .. me
        local x = ctx_get(c, xf, XF)
        local k = ctx_get(c, 'k:' .. t.kw, KF)
        if not k then
            local _, cap0 = gcra(t.L, t.B, t.P, t.mode)
            -- A new kw starts full: nothing is known of what was spent.
            k = { lv = cap0, lt = now, rs = 0, P = t.P, mode = t.mode, L = t.L,
                  B = t.B, strict = t.strict, sha = 0, sumh = 0, suml = 0 }
        end
        if x then
            local P = x.out + x.rc
            local rep = t.spent + t.ret + t.left
            if rep > P then
                fail(fmt('report for %s exceeds the credit held: spent %d + returned %d + left %d > %d',
                         t.kw, t.spent, t.ret, t.left, P))
            end
        end
        if q.flags == 1 and t.left > 0 then
            fail('bye with credit left on ' .. t.kw)
        end
        X[e] = { x = x, k = k, xf = xf, fresh = not x }
    end

    for e, t in ipairs(q.ent) do
        local x, k = X[e].x, X[e].k
        local T = kw_params(k.L, k.B, k.P, k.mode, k.strict, q.V)
        if not T then T = gcra(k.L, k.B, k.P, k.mode) end
        if x then
            local spent_new = max(0, t.spent + t.adj - x.rc)
            -- Fallback units the sweep charged (fq) stay charged until
            -- reports have covered them: the report that follows a charge
            -- may well predate it (a retry of a request built before the
            -- outage carries the same bytes, rule 1), and the spending then
            -- arrives in the next one.  Resetting fq at every report
            -- committed an outage's fallback twice (a stall of about the
            -- outage's length after every SIGSTOP of the store).  What is
            -- left of fq absorbs only later fallback reports, which the
            -- sweep charges anyway (a host spends fallback only while
            -- silent).  A record's first report after first contact
            -- (fq >= FQ_FRESH) carries fallback spent before the ledger
            -- knew the host: charged to the record a sweep dropped, or to
            -- an epoch now gone (the learning cap covers that).
            local fq, fb_new = x.fq, 0
            if fq >= FQ_FRESH then
                fq = fq - FQ_FRESH
                x.fq = fq
            else
                fb_new = max(0, t.fbspent - fq)
                x.fq = max(0, fq - t.fbspent)
            end
            commit(k, now, T, spent_new + fb_new)
            k.rs = k.rs + (t.left - x.out)
            x.out, x.rc = t.left, 0
        else
            x = new_x(t, q, now)
            k.rs = k.rs + t.left
            x.out = t.left
        end
        x.dem, x.want = t.dem, t.want
        x.L, x.B, x.P, x.mode, x.strict = t.L, t.B, t.P, t.mode, t.strict
        x.V, x.F, x.S = q.V, q.F, q.S
        X[e].x = x
    end

    for _, ev in ipairs(q.ev) do
        apply_event(c, ev, now)
    end

    local budgets = spend_budgets(c, q, me)

    -- The acknowledgement: the host applied our previous reply, so the
    -- promise in it is the one it holds (I5 counts both until then).
    local acked = hr and q.ack == hr.seq
    local tack = now
    if hr then
        tack = hr.tack
        if acked then tack = hr.tiss end
    end

    -- The hosts the ledger knows (fetched once, only if a share table must
    -- be recomputed).
    local hosts
    local function known_hosts()
        if hosts then return hosts end
        hosts = { names = {}, score = {} }
        if not c.wipe then
            local z = redis.call('ZRANGE', c.HK, '0', '-1', 'WITHSCORES')
            for j = 1, #z, 2 do
                if not c.zrem[z[j]] then
                    hosts.names[#hosts.names + 1] = z[j]
                    hosts.score[z[j]] = tonumber(z[j + 1])
                end
            end
        end
        return hosts
    end

    local bye = q.flags == 1
    local entries = {}
    for e, t in ipairs(q.ent) do
        local x, k = X[e].x, X[e].k
        if acked then x.fba, x.fbat = x.fb, x.fbt end
        if t.L < k.L and t.P == k.P and t.mode == k.mode then k.L = t.L end
        if t.B < k.B and t.P == k.P and t.mode == k.mode then k.B = t.B end
        if t.strict > k.strict then k.strict = t.strict end
        local tbl = ctx_raw(c, 't:' .. t.kw)
        local share = share_of(tbl, me)
        local err = 0
        if X[e].fresh or share == nil or now - k.sha >= q.S / 2 or t.P ~= k.P
           or t.mode ~= k.mode or (share == 0 and dem_eff(t.dem, t.want, q.S) > 0) then
            tbl, err = recompute(c, t.kw, k, me, x, t, q, now, known_hosts(), bye)
            share = share_of(tbl, me) or 0
        end
        if err ~= 0 or bye then share = 0 end
        local T, cap, C = kw_params(k.L, k.B, k.P, k.mode, k.strict, q.V)
        if not T then
            err = 2
            T, cap = gcra(k.L, k.B, k.P, k.mode)
            C = 0
            share = 0
        end
        -- Learning: each host at most the promise it held before.
        local lcl = 0
        if learning then
            lcl = max(0, min(t.held, PPM - (k.suml - x.lcl)))
            share = min(share, lcl)
        end
        k.suml = k.suml - x.lcl + lcl
        x.lcl = lcl
        -- The grant: top the balance up to share x C, within the host's
        -- allowance (its share of the rate since it last asked), the
        -- bucket's room and the cap on credit outstanding; never less than
        -- the largest request waiting when the room allows.
        local room = floor(cap - (drained(k, now, T) + k.rs))
        local b = floor(share * C / PPM)
        local al = x.al + share * (now - x.alt) / (T * 1000)
        if al > b then al = b end
        local g = min(b - x.out, floor(al), room, C - k.rs)
        if g < 0 then g = 0 end
        if err == 0 and not bye and t.want > x.out + g then
            local gw = t.want - x.out
            if gw <= room and k.rs + gw <= C + t.want then g = gw end
        end
        x.al, x.alt = al - g, now
        x.out = x.out + g
        k.rs = k.rs + g
        -- The fallback promise: at most what the other hosts' promises
        -- leave (I5).  Their sum counts a promise until its host syncs
        -- again or is dropped, expired or not: never less than what holds.
        local others_held = k.sumh - x.hc
        local fb = 0
        if not bye then fb = max(0, min(share, PPM - others_held)) end
        x.fb, x.fbt = fb, now
        local hc = fb
        if x.fbat + x.F + SLACK_US > now and x.fba > hc then hc = x.fba end
        k.sumh = others_held + hc
        x.hc = hc
        x.sh, x.err = share, err
        ctx_put(c, X[e].xf, x)
        ctx_put(c, 'k:' .. t.kw, k)
        entries[e] = { g, floor(q.V / 1000), fb, fb_burst(fb, T, q.S), floor(q.F / 1000),
                       share, x.out, err }
    end

    -- Fleet-wide health of every key named in the call.
    local health = {}
    named = {}
    for _, kid in ipairs(kids) do
        if not named[kid] then
            named[kid] = true
            local s = ctx_get(c, 's:' .. kid, HLF) or { st = 0, untl = 0, hv = 0 }
            local st, left = s.st, 0
            if s.untl > now then
                left = ceil((s.untl - now) / 1000)
                if st == 0 then st = 1 end
            end
            health[#health + 1] = { kid, st, left, s.hv }
        end
    end

    if bye then
        local kwl = {}
        for _, t in ipairs(q.ent) do kwl[#kwl + 1] = t.kw end
        for _, kw in ipairs(host_kws(c, me)) do kwl[#kwl + 1] = kw end
        spend_host_list(c, q, me) -- so drop_host finds this call's fields too
        drop_host(c, me, kwl)
    else
        -- A kw the host no longer reports keeps its record until the host
        -- is dropped; the list covers both.
        local kwl, seenkw = {}, {}
        for _, t in ipairs(q.ent) do
            kwl[#kwl + 1] = t.kw
            seenkw[t.kw] = true
        end
        if hr then
            for _, kw in ipairs(host_kws(c, me)) do
                if not seenkw[kw] and c.rec['x:' .. kw .. ':' .. me] then
                    kwl[#kwl + 1] = kw
                end
            end
        end
        ctx_put(c, hf, { seq = q.seq, tiss = now, tack = tack, V = q.V, F = q.F, S = q.S })
        ctx_set_raw(c, 'w:' .. me, table.concat(kwl, ' '))
        spend_host_list(c, q, me)
        c.zadd[me] = tack + q.V - SLACK_US
        c.zrem[me] = nil
    end
    flush(c)
    -- The reply, stored for a retry of the same seq.  ZCARD: counting the
    -- hosts must not cost a pass over them.
    local learn_left = 0
    if learning then learn_left = ceil((learn_until - now) / 1000) end
    local n_hosts = redis.call('ZCARD', c.HK)
    local reply = { LEDGER_VERSION, 'ok', epoch, learn_left, q.seq, n_hosts, entries, health,
                    budgets }
    if not bye then
        redis.call('HSET', c.LK, 'r:' .. me, cmsgpack.pack(reply))
    end
    return reply
end

-- ------------------------------------------------------------------- info
-- What `kmctl fleet` shows: every host with its age and, per kw, demand,
-- share, credit held and fallback promise; every kw's bucket.

local function info(keys)
    local c = ctx_new(keys)
    local m = redis.call('HMGET', c.LK, 'clock', 'last', 'epoch', 'learn')
    local now = clock_us(m[1], m[2])
    local epoch = tonumber(m[3] or '0')
    local learn_left = 0
    if m[4] and tonumber(m[4]) > now then
        learn_left = ceil((tonumber(m[4]) - now) / 1000)
    end
    local hosts = redis.call('ZRANGE', c.HK, '0', '-1', 'WITHSCORES')
    local out, kws = {}, {}
    for j = 1, #hosts, 2 do
        local h = hosts[j]
        local hr = ctx_get(c, 'h:' .. h, HF)
        if hr then
            local rows = {}
            for _, kw in ipairs(host_kws(c, h)) do
                local x = ctx_get(c, 'x:' .. kw .. ':' .. h, XF)
                if x then
                    rows[#rows + 1] = { kw, x.dem, x.sh, x.out, held_ppm(x, now) }
                    kws[kw] = true
                end
            end
            local silent = 0
            if tonumber(hosts[j + 1]) <= now then silent = 1 end
            out[#out + 1] = { h, floor((now - hr.tiss) / 1000), silent, rows }
        end
    end
    local krows = {}
    for kw in pairs(kws) do
        local k = ctx_get(c, 'k:' .. kw, KF)
        if k then
            local T, cap = gcra(k.L, k.B, k.P, k.mode)
            krows[#krows + 1] = { kw, k.L, k.B, k.P, k.mode, k.strict,
                                  floor(cap - drained(k, now, T) - k.rs), floor(k.rs) }
        end
    end
    table.sort(krows, function(a, b) return a[1] < b[1] end)
    -- Spend budgets: every counter (HKEYS: a read-only pass over the hash,
    -- for an operator's command, never a sync).
    local brows = {}
    for _, f in ipairs(redis.call('HKEYS', c.LK)) do
        if f:sub(1, 2) == 'b:' then
            local r = ctx_get(c, f, BF)
            if r then brows[#brows + 1] = { f:sub(3), r.st, r.tot, max(r.pst, 0), r.ptot } end
        end
    end
    table.sort(brows, function(a, b) return a[1] < b[1] end)
    return { LEDGER_VERSION, epoch, learn_left, out, krows, brows }
end

local function dispatch(keys, args, ro)
    local ok, res = pcall(function()
        local op = args[1]
        if op == 'version' then
            return LEDGER_VERSION
        elseif op == 'info' then
            return info(keys)
        elseif op == 'sync' then
            if ro then fail('sync needs km_ledger, not km_ledger_ro') end
            return sync(keys, args)
        end
        fail('unknown operation ' .. tostring(op))
    end)
    if ok then return res end
    if type(res) == 'table' and res.kmerr then
        return redis.error_reply(res.kmerr)
    end
    error(res, 0)
end

--@@ functions
-- Everything below this line is for FUNCTION LOAD only; the EVALSHA form
-- ends with "return dispatch(KEYS, ARGV, false)" instead.
redis.register_function{
    function_name = 'km_ledger',
    callback = function(keys, args) return dispatch(keys, args, false) end,
}
redis.register_function{
    function_name = 'km_ledger_ro',
    callback = function(keys, args) return dispatch(keys, args, true) end,
    flags = { 'no-writes' },
}
