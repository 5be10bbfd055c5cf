-- write.lua: the fenced write of a new token (Store.Write, the leader only).
-- KEYS[1]: the token's hash; KEYS[2]: the token's lock; KEYS[3]: the
--   token's expiry stamp (a string the replicas' polls read with MGET).
-- ARGV[1]: the writer's lock value; ARGV[2]: the token (sealed when a key
--   id is given); ARGV[3]: its remaining life in ms; ARGV[4]: its age in ms;
--   ARGV[5]: the writer's instance; ARGV[6]: the events channel; ARGV[7]:
--   the change event's JSON without its two closing braces; ARGV[8]: the
--   key id ('' when stored as it is); ARGV[9]: PUBLISH or SPUBLISH;
--   ARGV[10]: the highest generation the writer knows; ARGV[11]: when the
--   token is written back from memory, the generation it was stored with
--   before (0: a new token).
-- Reply: {1, expiry (Redis ms), generation} when stored; {0} when the lock
--   does not hold ARGV[1] (fenced); {-1} when the stored token expires as
--   late or later (stale), unless ARGV[11] is higher than its generation:
--   then the stored token is the older one (a restore, a failover to a
--   replica that missed the write), whatever the datings of the two say.
-- Atomic: the lock check, the expiry order, the write with its generation
-- (one more than the key's or the writer's), PEXPIREAT on Redis's clock, the
-- expiry stamp and the event's publication are one step: no other write falls in between,
-- and no reader sees the token before its expiry is set.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[3])
local cur = redis.pcall('HMGET', KEYS[1], 'exp', 'g')
if cur.err then cur = {false, false} end
local back = tonumber(ARGV[11]) or 0
if cur[1] and tonumber(cur[1]) >= exp and not (back > 0 and back > (tonumber(cur[2] or 0) or 0)) then return {-1} end
local gen = math.max(tonumber(cur[2] or 0) or 0, tonumber(ARGV[10]) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'exp', exp, 'at', now - tonumber(ARGV[4]), 'w', ARGV[5], 'g', gen)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'k', ARGV[8]) end
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('SET', KEYS[3], exp, 'PX', exp - now)
redis.call(ARGV[9], ARGV[6], ARGV[7] .. string.format(',"exp":%d,"now":%d,"g":%d}}', exp, now, gen))
return {1, exp, gen}
