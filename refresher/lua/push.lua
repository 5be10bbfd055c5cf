-- push.lua: record one refresh attempt.
-- KEYS[1]: the refreshes list.
-- ARGV[1]: the attempt's JSON; ARGV[2]: how many attempts the list keeps;
--   ARGV[3]: the list's ttl in ms.
-- Reply: Redis's clock (Unix ms) the attempt is dated with.
-- Atomic: the push, the trim to ARGV[2] entries and the expiry are one
-- step, so the list never holds more than its size.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('LPUSH', KEYS[1], now .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return now
