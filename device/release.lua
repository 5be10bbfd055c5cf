-- KEYS[1]: a device's claim. ARGV[1]: its owner. Deletes the claim if the
-- caller still owns it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
