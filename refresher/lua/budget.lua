-- budget.lua: take one upstream sign-on of the fleet's sliding window.
-- KEYS[1]: the sign-ons sorted set (score: Redis ms of each call).
-- ARGV[1]: calls allowed per window; ARGV[2]: the window in ms; ARGV[3]:
--   the call's id (the member).
-- Reply: 0 when taken; else the ms until the oldest call leaves the window.
-- Atomic: expired calls are dropped, the window counted and the call added
-- in one step on Redis's clock: concurrent leaders never overspend it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
