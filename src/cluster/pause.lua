-- This node heard that the gateway's quota is used up: every node rests
-- until the window resets (a pause only: the penalty is not cut).
-- ARGV: node, pause (us). Returns status().
local node = ARGV[1]
local pause_until = math.max(tonumber(redis.call('HGET', state, 'pause_until') or 0), now + tonumber(ARGV[2]))
redis.call('HSET', state, 'pause_until', int(pause_until))
redis.call('PEXPIRE', state, KEEP)
return status(node)
