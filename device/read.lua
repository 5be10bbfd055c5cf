-- KEYS[1]: a device's hash. Returns {token, remaining ms}, or nil when
-- the device holds no token.
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return nil
end
return {v, redis.call('PTTL', KEYS[1])}
