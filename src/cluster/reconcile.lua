-- This node is back after running on its share while Redis was out of
-- reach: what it sent meanwhile is added to every window and to the totals
-- (so the other nodes learn of it). A cap slot gets a minute's sends at the
-- minute's end (or now), which only counts them longer.
-- ARGV: node, number of windows, then per window: kind ('cap'/'volume'),
-- seconds; number of minutes, then per minute: minute, messages, all
-- units, transactional units. Returns status().
local node = ARGV[1]
local caps, volumes = {}, {}
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local kind, seconds = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  if kind == 'cap' then
    caps[#caps + 1] = cap_window(seconds)
  else
    local all, tx = volume_windows(seconds)
    volumes[#volumes + 1] = { all, tx }
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
return status(node)
