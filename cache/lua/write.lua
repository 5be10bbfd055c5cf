if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[3])
local cur = redis.pcall('HGET', KEYS[1], 'exp')
if type(cur) == 'table' and cur.err then cur = false end
if cur and tonumber(cur) >= exp then return {-1} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'exp', exp, 'at', now - tonumber(ARGV[4]), 'w', ARGV[5])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'k', ARGV[8]) end
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call('PUBLISH', ARGV[6], ARGV[7])
return {1, exp}
