-- budget.lua: check and spend the mint budgets, on Redis's clock.
-- KEYS[1]: the fleet's rate state (GCRA: the theoretical arrival time, ms);
-- KEYS[2]: the device's mint count in the current window.
-- ARGV[1]: the fleet's emission interval in ms (0: no fleet limit);
--   ARGV[2]: its burst tolerance in ms; ARGV[3]: mints a device may cause
--   per window (0: no cap); ARGV[4]: the window in ms.
-- Reply: {1} when a mint may go ahead; {0, retry after ms, 'fleet' or
--   'device'} when it may not, and nothing is spent then.
-- Atomic: both budgets are checked before either is spent, in one step:
-- a refused mint costs nothing, and concurrent replicas never overspend.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, window = tonumber(ARGV[3]), tonumber(ARGV[4])

if cap > 0 then
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n >= cap then
    local left = redis.call('PTTL', KEYS[2])
    if left < 0 then left = window end
    return {0, left, 'device'}
  end
end

local tat = now
if interval > 0 then
  tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
  local allow_at = tat + interval - tolerance
  if allow_at > now then
    return {0, allow_at - now, 'fleet'}
  end
  redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + tolerance)
end

if cap > 0 then
  if redis.call('INCR', KEYS[2]) == 1 then
    redis.call('PEXPIRE', KEYS[2], window)
  end
end
return {1}
