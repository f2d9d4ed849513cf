-- ratewise: take `cost` cells from every limit of one request, or none.
-- KEYS[i]: the state of limit i for the request's key i.
-- ARGV[1]: the time in microseconds (0: the server's TIME), ARGV[2]: the cost,
-- then per limit three numbers: kind (0 GCRA, 1 sliding window, 2 fixed window), a, b.
--   GCRA: a = interval µs, b = burst. Windows: a = n, b = window µs.
-- A sliding window is a sorted set with one member per instant, `<µs>:<cells>`,
-- scored by the instant.
-- Returns {admitted (1/0), remaining, wait µs}. All numbers are integers below 2^53,
-- and are written back with %.0f (Lua's default formatting keeps 14 digits).
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local function int(x) return string.format('%.0f', x) end
local function ms(us) return int(math.floor(us / 1000) + 1) end
local function cells(member) return tonumber(string.match(member, ':(%d+)$')) end

local wait, remaining = 0, -1
local seen = {}
for i = 1, #KEYS do
  local kind, a, b = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local key = KEYS[i]
  local w, rem = 0, 0
  if kind == 0 then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new_tat = tat + a * cost
    local limit = now + a * b
    if new_tat <= limit then rem = math.floor((limit - new_tat) / a) else w = new_tat - limit end
    seen[i] = new_tat
  elseif kind == 1 then
    -- A stamp at s counts within [s, s + window).
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - b))
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local used = 0
    for j = 1, #entries, 2 do used = used + cells(entries[j]) end
    if used + cost <= a then
      rem = a - used - cost
    else
      -- The oldest cells must leave the window first.
      local must, left = used + cost - a, 0
      w = b
      for j = 1, #entries, 2 do
        left = left + cells(entries[j])
        if left >= must then
          w = tonumber(entries[j + 1]) + b - now
          break
        end
      end
      if w < 1 then w = 1 end
    end
    seen[i] = used
  else
    local idx = math.floor(now / b)
    local h = redis.call('HMGET', key, 'w', 'c')
    local count = 0
    if tonumber(h[1]) == idx then count = tonumber(h[2]) or 0 end
    if count + cost <= a then
      rem = a - count - cost
    else
      w = (idx + 1) * b - now
      if w < 1 then w = 1 end
    end
    seen[i] = count
  end
  if w > wait then wait = w end
  if remaining < 0 or rem < remaining then remaining = rem end
end
if wait > 0 then return {0, 0, int(wait)} end

for i = 1, #KEYS do
  local kind, a, b = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local key = KEYS[i]
  if kind == 0 then
    redis.call('SET', key, int(seen[i]), 'PX', ms(seen[i] - now))
  elseif kind == 1 then
    local s = int(now)
    local e = redis.call('ZRANGEBYSCORE', key, s, s)
    local have = 0
    if e[1] then
      have = cells(e[1])
      redis.call('ZREM', key, e[1])
    end
    redis.call('ZADD', key, s, s .. ':' .. int(have + cost))
    redis.call('PEXPIRE', key, ms(b))
  else
    local idx = math.floor(now / b)
    redis.call('HSET', key, 'w', int(idx), 'c', int(seen[i] + cost))
    redis.call('PEXPIRE', key, ms((idx + 1) * b - now))
  end
end
return {1, remaining, 0}
