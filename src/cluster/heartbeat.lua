-- This node is alive and has this much queued for the gateway.
-- ARGV: node, proposed epoch, lifetime of the heartbeat (us), messages
-- queued, transactional units queued, bulk units queued, the busiest hour
-- and day this node has seen, transactional messages queued, the number
-- of budgeted receivers, then per receiver: its name, the busiest hour and
-- day this node has seen it sent.
-- Returns: epoch, its age (us), live nodes (this one included), what the
-- others have queued (messages, transactional units, bulk units), the
-- busiest hour and day the others have seen, the others' transactional
-- messages, the number of receivers, then per receiver: its name, the
-- busiest hour and day the others have seen it sent; then status().
--
-- The transactional messages live in a hash of their own (`:txdepth`), so
-- that a node of an earlier release, which reads `:depth` entries of six
-- numbers and drops any other as damaged, still sees every node alive
-- during a rolling upgrade. A node that writes no `:txdepth` entry counts
-- all its messages as transactional (what earlier releases assumed).
-- The receivers' busiest windows live in `:rbusiest` (node -> 'name hour
-- day ...'; receivers' names come from the config and have no spaces),
-- dropped with the node's `:depth` entry.
local node = ARGV[1]
local current_epoch, epoch_age = epoch(ARGV[2])
local depth = prefix .. ':depth'
local txdepth = prefix .. ':txdepth'
local rbusiest = prefix .. ':rbusiest'
redis.call('HSET', depth, node,
  int(now + tonumber(ARGV[3])) .. ' ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6]
    .. ' ' .. ARGV[7] .. ' ' .. ARGV[8])
redis.call('HSET', txdepth, node, ARGV[9])
local seen = {}
for r = 1, tonumber(ARGV[10] or 0) do
  local at = 8 + 3 * r
  seen[#seen + 1] = ARGV[at] .. ' ' .. ARGV[at + 1] .. ' ' .. ARGV[at + 2]
end
redis.call('HSET', rbusiest, node, table.concat(seen, ' '))
redis.call('PEXPIRE', depth, KEEP)
redis.call('PEXPIRE', txdepth, KEEP)
redis.call('PEXPIRE', rbusiest, KEEP)
local receivers_of = {}
local r_entries = redis.call('HGETALL', rbusiest)
for i = 1, #r_entries, 2 do
  receivers_of[r_entries[i]] = r_entries[i + 1]
end
local names, most = {}, {}
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
    redis.call('HDEL', rbusiest, name)
  else
    live = live + 1
    if name ~= node then
      messages = messages + tonumber(m)
      transactional = transactional + tonumber(t)
      bulk = bulk + tonumber(b)
      hour = math.max(hour, tonumber(h))
      day = math.max(day, tonumber(d))
      tx_messages = tx_messages + math.min(transactional_of[name] or tonumber(m), tonumber(m))
      for receiver, rh, rd in string.gmatch(receivers_of[name] or '', '(%S+) (%d+) (%d+)') do
        if not most[receiver] then
          names[#names + 1] = receiver
          most[receiver] = { 0, 0 }
        end
        most[receiver][1] = math.max(most[receiver][1], tonumber(rh))
        most[receiver][2] = math.max(most[receiver][2], tonumber(rd))
      end
    end
  end
end
local reply = { current_epoch, epoch_age, live, messages, transactional, bulk, hour, day,
  tx_messages, #names }
for _, receiver in ipairs(names) do
  reply[#reply + 1] = receiver
  reply[#reply + 1] = most[receiver][1]
  reply[#reply + 1] = most[receiver][2]
end
return concat(reply, status(node))
