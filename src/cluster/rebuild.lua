-- This node found a new epoch (Redis restarted empty, or was new): it adds
-- its own view of the current windows, taking the larger count of each
-- slot, so every node's view together rebuilds the counts conservatively;
-- and its feedback: the lower penalty, the longer pause, a hold. The
-- receivers' windows are rebuilt alike; their totals start from nothing
-- (each node's readings restart from the new epoch's totals).
-- ARGV: node, penalty, pause left (us), hold (1/0), number of entries,
-- then per entry: kind ('cap', 'all' or 'tx'), window seconds, slot, units;
-- number of receivers' entries, then per entry: receiver, kind ('all' or
-- 'tx'), window seconds, slot, units.
-- Returns status().
local node = ARGV[1]
local s = redis.call('HMGET', state, 'penalty', 'pause_until')
local penalty = math.min(tonumber(s[1] or 1), tonumber(ARGV[2]))
local pause_until = math.max(tonumber(s[2] or 0), now + tonumber(ARGV[3]))
redis.call('HSET', state, 'penalty', tostring(penalty), 'pause_until', int(pause_until))
if ARGV[4] == '1' then
  redis.call('HSET', state, 'hold', '1')
end
local windows = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local kind, seconds, slot, units = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  local name = kind .. ':' .. seconds
  if not windows[name] then
    if kind == 'cap' then
      windows[name] = cap_window(seconds)
    else
      local all, tx = volume_windows(seconds)
      windows['all:' .. seconds], windows['tx:' .. seconds] = all, tx
    end
  end
  local w = windows[name]
  local existing = tonumber(redis.call('HGET', w.key, int(slot)) or 0)
  if units > existing then
    count(w, slot, units - existing)
  end
end
local receiver_entries = tonumber(ARGV[i] or 0)
i = i + 1
for _ = 1, receiver_entries do
  local receiver, kind = ARGV[i], ARGV[i + 1]
  local seconds, slot, units = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  local name = receiver .. ':' .. kind .. ':' .. seconds
  if not windows['r:' .. name] then
    local all, tx = receiver_windows(receiver, seconds)
    windows['r:' .. receiver .. ':all:' .. seconds] = all
    windows['r:' .. receiver .. ':tx:' .. seconds] = tx
  end
  local w = windows['r:' .. name]
  local existing = tonumber(redis.call('HGET', w.key, int(slot)) or 0)
  if units > existing then
    count(w, slot, units - existing)
  end
end
redis.call('PEXPIRE', state, KEEP)
return status(node)
