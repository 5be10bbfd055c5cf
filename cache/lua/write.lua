if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[3])
local cur = redis.pcall('HMGET', KEYS[1], 'exp', 'g')
if cur.err then cur = {false, false} end
if cur[1] and tonumber(cur[1]) >= exp then return {-1} end
local gen = math.max(tonumber(cur[2] or 0) or 0, tonumber(ARGV[10]) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'exp', exp, 'at', now - tonumber(ARGV[4]), 'w', ARGV[5], 'g', gen)
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'k', ARGV[8]) end
redis.call('PEXPIREAT', KEYS[1], exp)
redis.call(ARGV[9], ARGV[6], ARGV[7] .. string.format(',"exp":%d,"now":%d,"g":%d}}', exp, now, gen))
return {1, exp, gen}
