-- store.lua: store a device's new token, unless the device already holds
-- the one to hand out.
-- KEYS[1]: the device's hash (v, exp); KEYS[2]: the device's mint claim.
-- ARGV[1]: the token; ARGV[2]: its remaining life in ms; ARGV[3]: the
--   claim's owner (the replica storing); ARGV[4]: the serve margin in ms;
--   ARGV[5]: the latest the token may expire, on Redis's clock (Unix ms),
--   or 0 for no such bound.
-- Reply: {1} when stored; {2} when not, the store having come too late
--   to leave the token any life by that bound; {0, token, remaining ms}
--   when the device holds
--   a token that expires as late or later (an earlier send of this
--   store), or, once the claim is no longer the storer's (it lapsed while
--   the storer was frozen or slow), a token with more than the serve
--   margin left, which another replica minted meanwhile: that token is
--   the device's, and the storer hands it out instead of its own.
-- Atomic: the expiry is computed on Redis's clock, the claim and the held
-- token checked, and the token written with PEXPIREAT in one step: a
-- device's token never moves backwards, and a replica that lost its claim
-- never replaces a token another replica has handed out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[2])
-- A store that reached Redis late (a slow link delivers a command its
-- sender gave up on) would otherwise start the token's life late.
local latest = tonumber(ARGV[5]) or 0
if latest > 0 and latest < exp then
  exp = latest
end
if exp <= now then
  return {2}
end
local held = redis.call('HGET', KEYS[1], 'v')
if held then
  local old = tonumber(redis.call('HGET', KEYS[1], 'exp'))
  local left = redis.call('PTTL', KEYS[1])
  if (old and old >= exp) or (left > tonumber(ARGV[4]) and redis.call('GET', KEYS[2]) ~= ARGV[3]) then
    return {0, held, left}
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', exp)
redis.call('PEXPIREAT', KEYS[1], exp)
return {1}
