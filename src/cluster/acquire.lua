-- May this node send one message counting ARGV[3] units now?
-- ARGV: node, proposed epoch, units, class ('t' transactional, 'b' bulk),
-- GCRA emission interval and tolerance (us; for bulk mail the tolerance
-- already leaves the last token to transactional mail, see
-- Proposal::gcra_micros), number of checks, then per
-- check: kind ('cap' or 'volume'), window seconds, limit, bulk share; then
-- the receiver: its name ('' for none), '1' when its budgets are checked
-- ('0': its sends are only counted, its rule does not hold yet), the number
-- of its budgets, then per budget: window seconds, limit, bulk share.
-- Returns: granted (1/0), wait (us), reason, epoch, its age (us), then
-- status().
--
-- The receiver's budgets name the wait only when nothing else holds the
-- send ('receiver-1h', 'receiver-24h'): the node then holds that
-- receiver's mail alone, and its mail to other receivers goes on.
local node = ARGV[1]
local current_epoch, epoch_age = epoch(ARGV[2])
local units = tonumber(ARGV[3])
local bulk = ARGV[4] == 'b'
local wait, reason, refused = 0, '', false
-- At least a microsecond: a refusal at a slot's very end still refuses.
local function hold_for(micros, why)
  micros = math.max(1, micros)
  refused = true
  if micros > wait then
    wait, reason = micros, why
  end
end

if redis.call('HGET', state, 'hold') == '1' then
  hold_for(1000000, 'hold')
end
local pause_until = tonumber(redis.call('HGET', state, 'pause_until') or 0)
if pause_until > now then
  hold_for(pause_until - now, 'pause')
end
local emission, tolerance = tonumber(ARGV[5]), tonumber(ARGV[6])
local tat = math.max(tonumber(redis.call('HGET', state, 'tat') or 0), now)
if tat - now > tolerance then
  hold_for(tat - now - tolerance, 'rate')
end

local counted = {}
local function slot_left(w)
  return (w.current + 1) * w.width - now
end
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local kind, seconds = ARGV[i], tonumber(ARGV[i + 1])
  local limit, share = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  if kind == 'cap' then
    local w = cap_window(seconds)
    -- A message bigger than the whole cap goes once the window is empty.
    if math.min(units, limit) > limit - w.sum then
      hold_for(slot_left(w), 'cap')
    end
    counted[#counted + 1] = w
  else
    local all, tx = volume_windows(seconds)
    if not fits(all, tx, units, bulk, limit, share) then
      hold_for(slot_left(all), seconds == 3600 and '1h' or '24h')
    end
    counted[#counted + 1] = all
    if not bulk then
      counted[#counted + 1] = tx
    end
  end
end

local receiver = ARGV[i]
local enforced = ARGV[i + 1] == '1'
local receiver_wait, receiver_reason = 0, ''
local budgets = tonumber(ARGV[i + 2] or 0)
i = i + 3
for _ = 1, budgets do
  local seconds, limit, share = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local all, tx = receiver_windows(receiver, seconds)
  if enforced and not fits(all, tx, units, bulk, limit, share) then
    local micros = math.max(1, slot_left(all))
    if micros > receiver_wait then
      receiver_wait = micros
      receiver_reason = seconds == 3600 and 'receiver-1h' or 'receiver-24h'
    end
  end
  counted[#counted + 1] = all
  if not bulk then
    counted[#counted + 1] = tx
  end
end
if not refused and receiver_wait > 0 then
  refused, wait, reason = true, receiver_wait, receiver_reason
end

local granted = 0
if not refused then
  granted = 1
  redis.call('HSET', state, 'tat', int(tat + emission))
  for _, w in ipairs(counted) do
    count(w, w.current, units)
  end
  add_totals(node, 1, units, bulk and 0 or units)
  if receiver and receiver ~= '' then
    add_receiver_totals(node, receiver, units, bulk and 0 or units)
  end
end
return concat({ granted, wait, reason, current_epoch, epoch_age }, status(node))
