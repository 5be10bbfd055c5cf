-- hold.lua: keep a device's mint claim alive while its owner mints.
-- KEYS[1]: the device's claim.
-- ARGV[1]: the claim's owner; ARGV[2]: its new time to live in ms.
-- Reply: 1 when kept, 0 when another owner holds it or none does.
-- Atomic: the owner check and the expiry are one step, so a claim that
-- lapsed and was taken over by another replica is left as it is.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
