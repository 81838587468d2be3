-- This node is back after running on its share while Redis was out of
-- reach: what it sent meanwhile is added to every window and to the totals
-- (so the other nodes learn of it). A cap slot gets a minute's sends at the
-- minute's end (or now), which only counts them longer.
-- Each receiver's part goes into its own windows of every volume horizon
-- named (one it does not budget is never checked) and its totals.
-- ARGV: node, number of windows, then per window: kind ('cap'/'volume'),
-- seconds; number of minutes, then per minute: minute, messages, all
-- units, transactional units; number of receivers' minutes, then per
-- entry: receiver, minute, all units, transactional units.
-- Returns status().
local node = ARGV[1]
local caps, volumes, horizons = {}, {}, {}
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local kind, seconds = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if kind == 'cap' then
    caps[#caps + 1] = cap_window(seconds)
  else
    local all, tx = volume_windows(seconds)
    volumes[#volumes + 1] = { all, tx }
    horizons[#horizons + 1] = seconds
  end
end
local messages, all_units, tx_units = 0, 0, 0
local minutes = tonumber(ARGV[i])
i = i + 1
for _ = 1, minutes do
  local minute, m, a, t = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  messages, all_units, tx_units = messages + m, all_units + a, tx_units + t
  for _, pair in ipairs(volumes) do
    count(pair[1], minute, a)
    count(pair[2], minute, t)
  end
  local at = math.min((minute + 1) * 60000000 - 1, now)
  for _, w in ipairs(caps) do
    count(w, math.floor(at / w.width), a)
  end
end
add_totals(node, messages, all_units, tx_units)
local receiver_minutes = tonumber(ARGV[i] or 0)
i = i + 1
local per_receiver, receiver_volumes = {}, {}
for _ = 1, receiver_minutes do
  local receiver, minute = ARGV[i], tonumber(ARGV[i + 1])
  local a, t = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  if not receiver_volumes[receiver] then
    receiver_volumes[receiver] = {}
    for _, seconds in ipairs(horizons) do
      local all, tx = receiver_windows(receiver, seconds)
      table.insert(receiver_volumes[receiver], { all, tx })
    end
  end
  for _, pair in ipairs(receiver_volumes[receiver]) do
    count(pair[1], minute, a)
    count(pair[2], minute, t)
  end
  local sums = per_receiver[receiver] or { 0, 0 }
  per_receiver[receiver] = { sums[1] + a, sums[2] + t }
end
for receiver, sums in pairs(per_receiver) do
  add_receiver_totals(node, receiver, sums[1], sums[2])
end
return status(node)
