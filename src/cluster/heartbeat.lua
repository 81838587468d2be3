-- This node is alive and has this much queued for the gateway.
-- ARGV: node, proposed epoch, lifetime of the heartbeat (us), messages
-- queued, transactional units queued, bulk units queued, the busiest hour
-- and day this node has seen, transactional messages queued.
-- Returns: epoch, its age (us), live nodes (this one included), what the
-- others have queued (messages, transactional units, bulk units), the
-- busiest hour and day the others have seen, the others' transactional
-- messages, then status().
--
-- The transactional messages live in a hash of their own (`:txdepth`), so
-- that a node of an earlier release, which reads `:depth` entries of six
-- numbers and drops any other as damaged, still sees every node alive
-- during a rolling upgrade. A node that writes no `:txdepth` entry counts
-- all its messages as transactional (what earlier releases assumed).
local node = ARGV[1]
local current_epoch, epoch_age = epoch(ARGV[2])
local depth = prefix .. ':depth'
local txdepth = prefix .. ':txdepth'
redis.call('HSET', depth, node,
  int(now + tonumber(ARGV[3])) .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6]
    .. ' ' .. ARGV[7] .. ' ' .. ARGV[8])
redis.call('HSET', txdepth, node, ARGV[9])
redis.call('PEXPIRE', depth, KEEP)
redis.call('PEXPIRE', txdepth, KEEP)
local transactional_of = {}
local tx_entries = redis.call('HGETALL', txdepth)
for i = 1, #tx_entries, 2 do
  transactional_of[tx_entries[i]] = tonumber(tx_entries[i + 1])
end
local live, messages, transactional, bulk, hour, day, tx_messages = 0, 0, 0, 0, 0, 0, 0
local entries = redis.call('HGETALL', depth)
for i = 1, #entries, 2 do
  local name = entries[i]
  local expiry, m, t, b, h, d =
    string.match(entries[i + 1], '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  if not expiry or tonumber(expiry) < now then
    redis.call('HDEL', depth, name)
    redis.call('HDEL', txdepth, name)
  else
    live = live + 1
    if name ~= node then
      messages = messages + tonumber(m)
      transactional = transactional + tonumber(t)
      bulk = bulk + tonumber(b)
      hour = math.max(hour, tonumber(h))
      day = math.max(day, tonumber(d))
      tx_messages = tx_messages + math.min(transactional_of[name] or tonumber(m), tonumber(m))
    end
  end
end
return concat({ current_epoch, epoch_age, live, messages, transactional, bulk, hour, day,
  tx_messages }, status(node))
