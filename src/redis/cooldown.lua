-- ratewise: one key's cooldown, shared by every process.
-- KEYS[1]: a hash {u = until µs, n = count, h = half-open 0/1, p = probe token,
--                  pu = probe until µs, s = signal}.
-- ARGV[1]: 'admit' or 'record'; ARGV[2]: the request's token.
--   admit:  ARGV[3] = how long a new probe may hold the key, µs.
--   record: ARGV[3] = the signal its admission saw, ARGV[4] = the answer
--           ('limited' | 'success' | 'served' | 'transient'), ARGV[5] = hint µs (-1: none),
--           ARGV[6] = longest cooldown µs (-1: none), ARGV[7] = precheck µs,
--           ARGV[8..] = backoff µs after the 1st, 2nd... counted rate limit.
-- Returns {cooling µs (0: not cooling), n, half-open, probe (0 none, 1 mine,
--          2 elsewhere), probe remaining µs, signal}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key, op, token = KEYS[1], ARGV[1], ARGV[2]
local function int(x) return string.format('%.0f', x) end
local f = redis.call('HMGET', key, 'u', 'n', 'h', 'p', 'pu', 's')
local u, n, h = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or 0
local p, pu, s = f[4] or '', tonumber(f[5]) or 0, tonumber(f[6]) or 0
if pu <= now then p = '' end

if op == 'admit' then
  if u <= now and h == 1 and p == '' then
    p, pu = token, now + tonumber(ARGV[3])
    redis.call('HSET', key, 'p', p, 'pu', int(pu))
  end
else
  local sig, answer = tonumber(ARGV[3]), ARGV[4]
  local probe = p ~= '' and p == token
  if answer == 'limited' then
    local hint, max, pre = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
    local active = u > now or h == 1
    local d = -1
    if probe or not active or sig == s then
      s, n = s + 1, n + 1
      d = hint
      if d < 0 then d = tonumber(ARGV[7 + math.min(n, #ARGV - 7)]) end
    else
      d = hint
    end
    if d >= 0 then
      if max >= 0 and d > max then d = max end
      local nu = now + d + pre
      if nu > u then u = nu end
      h = 1
    end
  elseif answer == 'success' or answer == 'served' then
    if probe and u <= now then h = 0 end
    if answer == 'success' and (probe or sig == s) and n > 0 then s, n = s + 1, 0 end
  end
  if probe then p, pu = '', 0 end
  if n == 0 and h == 0 and u <= now and p == '' then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'u', int(u), 'n', int(n), 'h', int(h), 'p', p, 'pu', int(pu), 's', int(s))
  end
end
-- Idle keys go: a day after the cooldown ends.
if redis.call('EXISTS', key) == 1 then
  local rest = 0
  if u > now then rest = u - now end
  redis.call('PEXPIRE', key, int(math.floor(rest / 1000) + 86400000))
end

local cooling = 0
if u > now then cooling = u - now end
local probe = 0
local left = 0
if p ~= '' then
  left = pu - now
  if p == token then probe = 1 else probe = 2 end
end
return {int(cooling), n, h, probe, int(left), int(s)}
