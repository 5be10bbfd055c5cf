-- beat.lua: one replica's heartbeat.
-- KEYS[1]: the replicas hash.
-- ARGV[1]: the instance (the field); ARGV[2]: the heartbeat's ttl in ms;
--   ARGV[3]: its JSON.
-- Reply: Redis's clock (Unix ms) the heartbeat is dated with.
-- Atomic: the field is dated on Redis's clock and the hash's expiry pushed
-- to the ttl in one step, so no wall clock of a replica is stored.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
