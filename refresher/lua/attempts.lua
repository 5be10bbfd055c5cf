local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = redis.call('LRANGE', KEYS[1], 0, -1)
table.insert(out, 1, tostring(now))
return out
