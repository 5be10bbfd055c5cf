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
