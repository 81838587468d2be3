-- An operator holds ('1') or releases ('0') the gateway on every node.
-- ARGV: node, hold. Returns status().
redis.call('HSET', state, 'hold', ARGV[2])
redis.call('PEXPIRE', state, KEEP)
return status(ARGV[1])
