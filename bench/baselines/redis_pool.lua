-- bench/baselines/redis_pool.lua - the Redis baseline: the key pool as Redis
-- hashes, acquire and release as one Lua script each (what LiteLLM and most
-- Python limiters do across processes: every decision in one atomic script
-- on the server).  Called with EVALSHA through hiredis by redis_pool.c.
--
-- Same semantics as KeyMesh and the mutex pool (bench/baselines/mutex_pool.h):
-- round robin from a shared cursor, token-bucket GCRA for rpm and tpm with
-- KeyMesh's parameters (T = ceil(60 s / limit) ns, tau = burst * T), tokens
-- reserved at acquire and settled at release at the lease's start, cooldown
-- after a 429 (Retry-After, else cooldown_s doubling up to max_cooldown_s),
-- in-flight counts capped by max_inflight, counters per key.
--
-- Data: hash km:pool {n, cur, cool_s, maxcool_s}; hash km:k:<i> per key
-- {id, sec, cool, inf, maxinf, rT, rtau, rtat, tT, ttau, ttat, tres, acq,
-- ok, rl, cn, tok, c429, lat}.  Times are ns since the benchmark's base time
-- (passed by the client, which reads CLOCK_MONOTONIC), so they stay below
-- 2^53 and exact in Lua's doubles; written back with %.0f, never %.14g.
--
--   EVALSHA sha 0 acq NOW TOKENS
--     -> {i, id, secret}  or  {-1, retry_at_ns}  (retry 0: only a release helps)
--   EVALSHA sha 0 rel KEY NOW EST ACTUAL START KIND LATENCY_US RETRY_AFTER_NS
--     -> 1     (KIND 0 success, 1 rate limited, 5 cancelled; ACTUAL < 0: EST)

local function f(x) return string.format('%.0f', x) end
local op = ARGV[1]

if op == 'acq' then
  local now, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
  local p = redis.call('HMGET', 'km:pool', 'n', 'cur')
  local n, cur = tonumber(p[1]), tonumber(p[2])
  local retry = -1
  for j = 0, n - 1 do
    local i = (cur + j) % n
    local k = 'km:k:' .. i
    local v = redis.call('HMGET', k, 'cool', 'inf', 'maxinf', 'rT', 'rtau', 'rtat',
                         'tT', 'ttau', 'ttat', 'tres')
    local cool, inf, maxinf = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
    local rT, rtau, rtat = tonumber(v[4]), tonumber(v[5]), tonumber(v[6])
    local tT, ttau, ttat, tres = tonumber(v[7]), tonumber(v[8]), tonumber(v[9]), tonumber(v[10])
    local ok, at, nr, nt = true, -1, rtat, ttat
    if cool > now then
      ok, at = false, cool
    elseif inf >= maxinf then
      ok, at = false, 0
    end
    if ok and rT > 0 then
      nr = math.max(rtat, now) + rT
      if nr - now > rtau then ok, at = false, nr - rtau end
    end
    if ok and tT > 0 then
      nt = math.max(ttat, now) + (tres + cost) * tT
      if nt - now > ttau then ok, at = false, nt - ttau end
    end
    if ok then
      redis.call('HSET', k, 'rtat', f(nr), 'tres', f(tres + cost), 'inf', inf + 1)
      redis.call('HINCRBY', k, 'acq', 1)
      redis.call('HSET', 'km:pool', 'cur', (i + 1) % n)
      local s = redis.call('HMGET', k, 'id', 'sec')
      return {i, s[1], s[2]}
    end
    if at >= 0 and (retry < 0 or at < retry) then retry = at end
  end
  return {-1, f(retry < 0 and 0 or retry)}
end

if op == 'rel' then
  local k = 'km:k:' .. ARGV[2]
  local now, est, actual = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local start, kind, lat = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local retry_after = tonumber(ARGV[9])
  if actual < 0 then actual = est end
  if kind == 5 then actual = 0 end
  local v = redis.call('HMGET', k, 'tT', 'ttat', 'tres', 'c429', 'lat')
  local tT, ttat, tres, c429, ema = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]),
                                    tonumber(v[4]), tonumber(v[5])
  if tT > 0 then
    -- Commit the actual count as if spent at the lease's start; drop the
    -- reservation (KeyMesh's settlement).
    if actual > 0 then ttat = math.max(ttat, start) + actual * tT end
    redis.call('HSET', k, 'ttat', f(ttat), 'tres', f(tres - est))
  end
  redis.call('HINCRBY', k, 'inf', -1)
  redis.call('HINCRBY', k, 'tok', actual)
  if kind == 0 then
    if lat >= 0 then
      if ema == 0 then ema = lat else ema = ema + math.floor((lat - ema) / 8) end
    end
    redis.call('HSET', k, 'c429', 0, 'lat', f(ema))
    redis.call('HINCRBY', k, 'ok', 1)
  elseif kind == 1 then
    local cool
    if retry_after > 0 then
      cool = retry_after
    else
      local pc = redis.call('HMGET', 'km:pool', 'cool_s', 'maxcool_s')
      local s = tonumber(pc[1]) * 2 ^ math.min(c429, 20)
      cool = math.min(s, tonumber(pc[2])) * 1e9
    end
    redis.call('HSET', k, 'cool', f(now + cool), 'c429', c429 + 1)
    redis.call('HINCRBY', k, 'rl', 1)
  else
    redis.call('HINCRBY', k, 'cn', 1)
  end
  return 1
end

return redis.error_reply('redis_pool.lua: unknown op')
