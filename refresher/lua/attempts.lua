-- attempts.lua: the last refresh attempts, dated on Redis's clock.
-- KEYS[1]: the refreshes list (each "<written ms> <json>", newest first).
-- ARGV: none.
-- Reply: {Redis's clock (Unix ms), the attempts...}.
-- Atomic: the clock is read with the list, so ages are exact; nothing is
-- written.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = redis.call('LRANGE', KEYS[1], 0, -1)
table.insert(out, 1, tostring(now))
return out
