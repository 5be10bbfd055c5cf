-- read.lua: a device's stored token.
-- KEYS[1]: the device's hash (v, exp).
-- ARGV: none.
-- Reply: {token, remaining ms}, or nil when the device holds no token.
-- Atomic: the remaining time belongs to the token read; nothing is written.
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return nil
end
return {v, redis.call('PTTL', KEYS[1])}
