-- Shared by every script (each is sent with this text in front of it).
-- KEYS[1] is the gateway's key prefix, `smtp-shaper:{<gateway>}`; every
-- key below starts with it (the braces keep a gateway's keys on one shard).
-- Times are the Redis server's clock in microseconds, so the nodes' clocks
-- never have to agree.
local prefix = KEYS[1]
local state = prefix .. ':state'
local nodes = prefix .. ':nodes'
-- Everyone's totals per receiver (`<name>:all`, `<name>:tx`); each node's
-- own are in `nodes` (`<node>:r:<name>:all`, `<node>:r:<name>:tx`).
-- Receivers' names come from the config: as few as the receivers.
local receivers = prefix .. ':receivers'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
-- Keys of a gateway nobody uses any more go away after this (ms).
local KEEP = 8 * 86400 * 1000

-- Numbers go to Redis as decimal integers (never in exponent form).
local function int(x)
  return string.format('%d', x)
end

-- The epoch names this Redis's copy of the state: a Redis that restarted
-- empty gets a new one from the first node to call. Returns it and its
-- age (us): a node rebuilds the counts from its own view when it sees an
-- epoch other than the one it knew, or one younger than itself.
local function epoch(proposed)
  local current = redis.call('HMGET', state, 'epoch', 'epoch_at')
  if current[1] then
    return current[1], now - tonumber(current[2] or now)
  end
  redis.call('HSET', state, 'epoch', proposed, 'epoch_at', int(now))
  redis.call('PEXPIRE', state, KEEP)
  return proposed, 0
end

-- A rolling window: slots of `width` microseconds in a hash (slot -> units),
-- with the running `sum` of the last `span` slots and the first slot that
-- sum covers (`from`); slots that leave are taken off and deleted.
local function window(key, width, span)
  local current = math.floor(now / width)
  local first = current - span + 1
  local stored = redis.call('HMGET', key, 'from', 'sum')
  local from = tonumber(stored[1] or first)
  local sum = tonumber(stored[2] or 0)
  if first > from then
    if first - from >= span then
      redis.call('DEL', key)
      sum = 0
    else
      for slot = from, first - 1 do
        local units = redis.call('HGET', key, int(slot))
        if units then
          sum = sum - tonumber(units)
          redis.call('HDEL', key, int(slot))
        end
      end
    end
  end
  -- A clock behind the one that wrote `from` (a failover): count from here,
  -- or slots written below `from` would never leave the sum.
  if first < from then
    from = first
    stored[1] = false
  end
  if first > from or not stored[1] then
    redis.call('HSET', key, 'from', int(first), 'sum', int(sum))
    redis.call('PEXPIRE', key, KEEP)
  end
  return { key = key, width = width, current = current, first = first, sum = sum }
end

-- Counts `units` in slot `slot` of window `w` (a slot that has left it is
-- not counted: it would change nothing).
local function count(w, slot, units)
  if slot >= w.first and units > 0 then
    redis.call('HINCRBY', w.key, int(slot), int(units))
    redis.call('HINCRBY', w.key, 'sum', int(units))
    w.sum = w.sum + units
  end
end

-- The windows a check names: a cap of `seconds` (60 slots), or a volume
-- budget of `seconds` (minutes, all mail and transactional mail).
local function cap_window(seconds)
  return window(prefix .. ':cap:' .. seconds, seconds * 1000000 / 60, 61)
end
local function volume_windows(seconds)
  local span = seconds / 60 + 1
  return window(prefix .. ':all:' .. seconds, 60000000, span),
    window(prefix .. ':tx:' .. seconds, 60000000, span)
end
-- A receiver's own volume windows, as the gateway's.
local function receiver_windows(name, seconds)
  local span = seconds / 60 + 1
  return window(prefix .. ':r:' .. name .. ':all:' .. seconds, 60000000, span),
    window(prefix .. ':r:' .. name .. ':tx:' .. seconds, 60000000, span)
end

-- Does a send of `units` (`bulk` or not) fit a budget of `limit` units, of
-- which bulk mail may use `share`, on the windows `all` and `tx`? A
-- message bigger than the whole budget goes once the window is empty.
local function fits(all, tx, units, bulk, limit, share)
  local room = limit - all.sum
  local ok = math.min(units, limit) <= room
  if bulk then
    room = math.min(room, share - (all.sum - tx.sum))
    ok = ok and math.min(units, math.max(share, 1)) <= room
  end
  return ok
end

-- What every reply carries: the feedback, the hold, and what the other
-- nodes have sent (totals since the epoch began): in all, then the number
-- of receivers and per receiver its name, all units, transactional units.
local function status(node)
  local s = redis.call('HMGET', state, 'penalty', 'pause_until', 'hold', 'messages', 'all', 'transactional')
  local own = redis.call('HMGET', nodes, node .. ':messages', node .. ':all', node .. ':transactional')
  local pause_until = tonumber(s[2] or 0)
  local reply = {
    s[1] or '1',
    pause_until - now,
    s[3] == '1' and 1 or 0,
    tonumber(s[4] or 0) - tonumber(own[1] or 0),
    tonumber(s[5] or 0) - tonumber(own[2] or 0),
    tonumber(s[6] or 0) - tonumber(own[3] or 0),
    0,
  }
  local totals = redis.call('HGETALL', receivers)
  local everyone, names, fields = {}, {}, {}
  for i = 1, #totals, 2 do
    everyone[totals[i]] = tonumber(totals[i + 1])
    local name = string.match(totals[i], '^(.*):all$')
    if name then
      names[#names + 1] = name
      fields[#fields + 1] = node .. ':r:' .. name .. ':all'
      fields[#fields + 1] = node .. ':r:' .. name .. ':tx'
    end
  end
  if #names == 0 then
    return reply
  end
  local mine = redis.call('HMGET', nodes, unpack(fields))
  reply[7] = #names
  for k, name in ipairs(names) do
    reply[#reply + 1] = name
    reply[#reply + 1] = everyone[name .. ':all'] - tonumber(mine[2 * k - 1] or 0)
    reply[#reply + 1] = (everyone[name .. ':tx'] or 0) - tonumber(mine[2 * k] or 0)
  end
  return reply
end

-- Adds a node's sends to the totals (its own and everyone's).
local function add_totals(node, messages, all, transactional)
  redis.call('HINCRBY', state, 'messages', int(messages))
  redis.call('HINCRBY', state, 'all', int(all))
  redis.call('HINCRBY', state, 'transactional', int(transactional))
  redis.call('HINCRBY', nodes, node .. ':messages', int(messages))
  redis.call('HINCRBY', nodes, node .. ':all', int(all))
  redis.call('HINCRBY', nodes, node .. ':transactional', int(transactional))
  redis.call('PEXPIRE', state, KEEP)
  redis.call('PEXPIRE', nodes, KEEP)
end

-- Adds a node's sends to receiver `name` to its totals (its own and
-- everyone's).
local function add_receiver_totals(node, name, all, transactional)
  redis.call('HINCRBY', receivers, name .. ':all', int(all))
  redis.call('HINCRBY', receivers, name .. ':tx', int(transactional))
  redis.call('HINCRBY', nodes, node .. ':r:' .. name .. ':all', int(all))
  redis.call('HINCRBY', nodes, node .. ':r:' .. name .. ':tx', int(transactional))
  redis.call('PEXPIRE', receivers, KEEP)
  redis.call('PEXPIRE', nodes, KEEP)
end

local function concat(a, b)
  for _, value in ipairs(b) do
    a[#a + 1] = value
  end
  return a
end
