-- This node heard the gateway ask to slow down and opened a throttling
-- episode: cut the shared penalty by the backoff factor and pause every
-- node. A signal during a pause belongs to the same episode and cuts
-- nothing more. The penalty climbs back to 1 within the recovery time
-- from the end of its pause, log-linearly, as the node's own does
-- (src/shaper/penalty.rs).
-- ARGV: node, backoff factor, pause (us), recovery (us).
-- Returns status().
local node = ARGV[1]
local s = redis.call('HMGET', state, 'penalty', 'pause_until')
local pause_until = tonumber(s[2] or 0)
if pause_until <= now then
  local factor, pause, recovery = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local done = math.min(1, (now - pause_until) / recovery)
  local penalty = math.min(1, math.pow(tonumber(s[1] or 1), 1 - done))
  redis.call('HSET', state, 'penalty', tostring(penalty * factor), 'pause_until', int(now + pause))
  redis.call('PEXPIRE', state, KEEP)
end
return status(node)
