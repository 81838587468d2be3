-- This node heard the gateway ask to slow down: cut the shared penalty by
-- the backoff factor and pause every node. A signal during a pause belongs
-- to the same episode and cuts nothing more. The penalty recovers by
-- `warmup` per day from the end of its pause.
-- ARGV: node, backoff factor, pause (us), warmup factor per day.
-- Returns status().
local node = ARGV[1]
local s = redis.call('HMGET', state, 'penalty', 'pause_until')
local pause_until = tonumber(s[2] or 0)
if pause_until <= now then
  local factor, pause, warmup = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local penalty = math.min(1, tonumber(s[1] or 1) * math.pow(warmup, (now - pause_until) / 86400000000))
  redis.call('HSET', state, 'penalty', tostring(penalty * factor), 'pause_until', int(now + pause))
  redis.call('PEXPIRE', state, KEEP)
end
return status(node)
