-- 1,000 tasks that each sleep 0.1 s: wall time (target under 0.5 s), and
-- the cost of spawning and switching.
local task = require("vmsnap.task")

local function run(n, sleep)
  local t0 = task.now()
  local ts = {}
  for i = 1, n do ts[i] = task.spawn(function() task.sleep(sleep) return i end) end
  local r = assert(task.wait_all(ts))
  assert(r[n][1] == n)
  return task.now() - t0
end

for _, n in ipairs({ 1000, 10000 }) do
  local wall = run(n, 0.1)
  print(("tasks: %d tasks sleeping 0.1 s finished in %.3f s wall"):format(n, wall))
end

local t0 = task.now()
local N = 100000
for _ = 1, N do task.sleep(0) end
print(("tasks: %d yields (sleep 0) in %.3f s, %.2f us each"):format(N, task.now() - t0, (task.now() - t0) / N * 1e6))

local ch = task.channel()
t0 = task.now()
local M = 50000
local c = task.spawn(function() for _ = 1, M do ch:recv() end end)
for i = 1, M do ch:send(i) end
task.wait(c)
print(("tasks: %d channel handoffs in %.3f s, %.2f us each"):format(M, task.now() - t0, (task.now() - t0) / M * 1e6))
