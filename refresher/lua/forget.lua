return redis.call('HDEL', KEYS[1], ARGV[1])
