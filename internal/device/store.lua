-- store.lua: store a device's new token unless a later one is stored.
-- KEYS[1]: the device's hash (v, exp).
-- ARGV[1]: the token; ARGV[2]: its remaining life in ms.
-- Reply: 1 when stored; 0 when the device holds a token that expires as
--   late or later.
-- Atomic: the expiry is computed on Redis's clock, compared and written
-- with PEXPIREAT in one step: a device's token never moves backwards.
local t = redis.call('TIME')
local exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], 'exp'))
if old and old >= exp then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', exp)
redis.call('PEXPIREAT', KEYS[1], exp)
return 1
