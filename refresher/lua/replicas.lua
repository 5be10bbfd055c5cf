local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {tostring(now)}
for i = 1, #all, 2 do
  local at, ttl = string.match(all[i + 1], '^(%d+) (%d+) ')
  if at == nil or now - tonumber(at) > tonumber(ttl) then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i + 1])
  end
end
return out
