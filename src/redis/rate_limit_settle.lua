-- ratewise: correct a reservation to its real cost (RateLimitStore::settle).
-- KEYS[i] and the limits' numbers as in rate_limit.lua.
-- ARGV[1]: the time in microseconds (0: the server's TIME), ARGV[2]: cells reserved,
-- ARGV[3]: the real cost, ARGV[4]: the reservation's age in microseconds, then per
-- limit: kind, a, b. Never waits, never refuses; returns 1.
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local reserved, actual, age = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local refund, charge = math.max(reserved - actual, 0), math.max(actual - reserved, 0)
-- The reservation's instant.
local at = math.max(now - age, 0)
local function int(x) return string.format('%.0f', x) end
local function ms(us) return int(math.floor(us / 1000) + 1) end
local function cells(member) return tonumber(string.match(member, ':(%d+)$')) end
local function ttl_at_least(key, us)
  if redis.call('PTTL', key) < math.floor(us / 1000) + 1 then redis.call('PEXPIRE', key, ms(us)) end
end

for i = 1, #KEYS do
  local kind, a, b = tonumber(ARGV[4 + 3 * i - 2]), tonumber(ARGV[4 + 3 * i - 1]), tonumber(ARGV[4 + 3 * i])
  local key = KEYS[i]
  if kind == 0 then
    local stored = redis.call('GET', key)
    if stored or charge > 0 then
      local tat = math.max(tonumber(stored or '0') - a * refund, 0)
      -- A charge is taken at the reservation's instant.
      if charge > 0 then tat = math.max(tat, at) + a * charge end
      if tat > now then
        redis.call('SET', key, int(tat), 'PX', ms(tat - now))
      else
        redis.call('DEL', key)
      end
    end
  elseif kind == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - b))
    if at + b > now then
      -- Refund out of the admissions at or before the reservation, the latest first.
      local left = refund
      if left > 0 then
        local e = redis.call('ZREVRANGEBYSCORE', key, int(at), '-inf', 'WITHSCORES')
        for j = 1, #e, 2 do
          if left <= 0 then break end
          local have = cells(e[j])
          local back = math.min(left, have)
          redis.call('ZREM', key, e[j])
          if have > back then
            local s = int(tonumber(e[j + 1]))
            redis.call('ZADD', key, s, s .. ':' .. int(have - back))
          end
          left = left - back
        end
      end
      if charge > 0 then
        local s = int(at)
        local e = redis.call('ZRANGEBYSCORE', key, s, s)
        local have = 0
        if e[1] then
          have = cells(e[1])
          redis.call('ZREM', key, e[1])
        end
        redis.call('ZADD', key, s, s .. ':' .. int(have + charge))
        ttl_at_least(key, at + b - now)
      end
    end
  else
    local idx = math.floor(now / b)
    if math.floor(at / b) == idx then
      local h = redis.call('HMGET', key, 'w', 'c')
      local count = 0
      if tonumber(h[1]) == idx then count = tonumber(h[2]) or 0 end
      if h[1] or charge > 0 then
        redis.call('HSET', key, 'w', int(idx), 'c', int(math.max(count - refund, 0) + charge))
        ttl_at_least(key, (idx + 1) * b - now)
      end
    end
  end
end
return 1
