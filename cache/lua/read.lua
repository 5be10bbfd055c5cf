-- read.lua: one token as a replica adopts it (Store's reads and polls).
-- KEYS[1]: the token's hash (tokenkeeper:{NAME}:token: v, exp, at, w, k, g).
-- ARGV: none.
-- Reply: {value, remaining ms (PTTL), age ms (now - at), writer, key id,
--   generation, Redis's clock (Unix ms)}; {'', 0, 0, '', '', 0, now} when
--   the key holds no token (absent or expired); {'!', error} when it holds
--   another type than a hash.
-- Atomic: the remaining time, the age and Redis's clock belong to the very
-- token read; nothing is written.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local f = redis.pcall('HMGET', KEYS[1], 'v', 'at', 'w', 'k', 'g')
if f.err then return {'!', f.err} end
local pttl = -2
if f[1] then pttl = redis.call('PTTL', KEYS[1]) end
if pttl <= 0 then return {'', 0, 0, '', '', 0, now} end
local age = 0
if f[2] then age = now - tonumber(f[2]) end
return {f[1], pttl, age, f[3] or '', f[4] or '', tonumber(f[5] or 0) or 0, now}
