-- replicas.lua: the fleet view's heartbeats (ReadFleet, Status).
-- KEYS[1]: the replicas hash (one field per instance: "<written ms> <ttl
--   ms> <json>").
-- ARGV: none.
-- Reply: {Redis's clock (Unix ms), the fresh heartbeats' values...}.
-- Atomic: heartbeats older than their ttl are removed in the same step as
-- the fresh ones are read, against one reading of Redis's clock.
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
