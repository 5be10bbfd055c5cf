-- release.lua: give up a device's mint claim.
-- KEYS[1]: the device's claim.
-- ARGV[1]: the claim's owner.
-- Reply: 1 when deleted, 0 when another owner holds it or none does.
-- Atomic: the owner check and the delete are one step, so a claim taken
-- over by another replica is never deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
