-- confirm.lua: renew the lock if it still holds the leader's value (a write
-- of the leader's own, after which WAIT tells whether replicas hold it).
-- KEYS[1]: the lock.
-- ARGV[1]: the leader's lock value; ARGV[2]: the lock's ttl in ms.
-- Reply: 1 when renewed; 0 when the lock holds another value or none.
-- Atomic: the check and the renewal are one step: a lock taken by another
-- replica in between is never renewed.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
