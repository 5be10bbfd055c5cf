-- KEYS[1]: a device's hash. ARGV[1]: the token, ARGV[2]: its remaining
-- life in ms. Stores it unless the device holds a token that expires
-- later; the expiry is set on Redis's clock. Returns 1 when stored.
local t = redis.call('TIME')
local exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], 'exp'))
if old and old >= exp then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', exp)
redis.call('PEXPIREAT', KEYS[1], exp)
return 1
