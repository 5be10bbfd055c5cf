-- alive.lua: one replica's beat in the fleet's hash of live replicas.
-- KEYS[1]: the fleet hash (tokenkeeper:replicas, a field per instance:
--   "<written ms> <ttl ms> <json>", as in each token's replicas hash).
-- ARGV[1]: the instance (the field); ARGV[2]: the beat's ttl in ms;
--   ARGV[3]: its JSON.
-- Reply: Redis's clock (Unix ms) the beat is dated with.
-- Atomic: the field is dated on Redis's clock, so no wall clock of a
-- replica is stored. The hash has no expiry of its own: readers remove
-- the beats older than their ttl (replicas.lua), and a replica that stops
-- removes its own; the last removal removes the hash.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return now
