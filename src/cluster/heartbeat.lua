-- This node is alive and has this much queued for the gateway.
-- ARGV: node, proposed epoch, lifetime of the heartbeat (us), messages
-- queued, transactional units queued, bulk units queued, the busiest hour
-- and day this node has seen.
-- Returns: epoch, its age (us), live nodes (this one included), what the
-- others have queued (messages, transactional units, bulk units), the
-- busiest hour and day the others have seen, then status().
local node = ARGV[1]
local current_epoch, epoch_age = epoch(ARGV[2])
local depth = prefix .. ':depth'
redis.call('HSET', depth, node,
  int(now + tonumber(ARGV[3])) .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6]
    .. ' ' .. ARGV[7] .. ' ' .. ARGV[8])
redis.call('PEXPIRE', depth, KEEP)
local live, messages, transactional, bulk, hour, day = 0, 0, 0, 0, 0, 0
local entries = redis.call('HGETALL', depth)
for i = 1, #entries, 2 do
  local name = entries[i]
  local expiry, m, t, b, h, d =
    string.match(entries[i + 1], '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  if not expiry or tonumber(expiry) < now then
    redis.call('HDEL', depth, name)
  else
    live = live + 1
    if name ~= node then
      messages = messages + tonumber(m)
      transactional = transactional + tonumber(t)
      bulk = bulk + tonumber(b)
      hour = math.max(hour, tonumber(h))
      day = math.max(day, tonumber(d))
    end
  end
end
return concat({ current_epoch, epoch_age, live, messages, transactional, bulk, hour, day },
  status(node))
