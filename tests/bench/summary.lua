-- The table of issue #16 (docs/performance.md), printed at the end of
-- `make bench`: each measure's figure when the issue was filed, this run's
-- (from the benches' rows, $VMSNAP_BENCH_ROWS), and the goal.
--   vmsnap tests/bench/summary.lua ROWS_FILE
local fs = require("vmsnap.fs")

local ROWS = {
  { "burst", "1,000 disk snapshots created -> all Ready (vmsnap up)", "70-80 s", "<= 8 s" },
  { "requests", "API requests per disk snapshot, create -> Ready", "~26", "<= 10" },
  { "one_more", "one more snapshot when 1,000 of that disk exist", "371 ms, ~1,150 requests", "~25 ms, <= 10 requests" },
  { "rss", "RSS of vmsnap up with 1,000 snapshots", "94 MB", "<= 40 MB" },
  { "status_put", "server CPU per custom-resource status write", "430-600 us", "<= 150 us" },
  { "list_rss", "LIST of 100k ConfigMaps, peak RSS", "263 MB (5.8x the body)", "<= 1.5x the body; returned" },
  { "name_list", "name-selector LIST at 100k objects", "reads all", "index lookup, O(1) in N" },
  { "watch", "watch of 1,000 events, client side", "60 ms", "<= 30 ms" },
  { "freeze", "freeze window, 4-disk VM, 200 ms cut, thaw at the cut", "~300 ms", "<= 240 ms" },
}

local got = {}
for line in ((arg and arg[1] and fs.read_file(arg[1])) or ""):gmatch("[^\n]+") do
  local k, v = line:match("^([%w_]+)\t(.*)$")
  if k then got[k] = v end
end
print("== issue #16: each measure at filing, in this run, and its goal")
for _, r in ipairs(ROWS) do
  print(("%-56s  at filing: %s\n%-56s  this run:  %s\n%-56s  goal:      %s"):format(r[2], r[3], "",
    got[r[1]] or "not measured (its bench was skipped or failed)", "", r[4]))
end
