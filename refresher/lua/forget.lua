-- forget.lua: remove one replica's heartbeat (on shutdown).
-- KEYS[1]: the replicas hash.
-- ARGV[1]: the instance.
-- Reply: 1 when removed, 0 when there was none.
-- Atomic: a single HDEL.
return redis.call('HDEL', KEYS[1], ARGV[1])
