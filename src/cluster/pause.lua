-- This node heard that the gateway's quota is used up: every node rests
-- until the window resets (a pause only: the penalty is not cut). With
-- ARGV[3] = "end", an operator ends the pause on every node instead
-- (`queue unpause`).
-- ARGV: node, pause (us)[, "end"]. Returns status().
local node = ARGV[1]
local pause_until = math.max(tonumber(redis.call('HGET', state, 'pause_until') or 0), now + tonumber(ARGV[2]))
if ARGV[3] == 'end' then
  pause_until = math.min(tonumber(redis.call('HGET', state, 'pause_until') or 0), now)
end
redis.call('HSET', state, 'pause_until', int(pause_until))
redis.call('PEXPIRE', state, KEEP)
return status(node)
