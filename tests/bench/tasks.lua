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

-- The Lua VM's speed in a task, beside the same code under the count hook
-- that memory-bounded and sandboxed tasks keep (any count hook makes Lua
-- trace every instruction); plain tasks run without one (docs/runtime.md).
local function vm_work()
  local c0 = os.clock()
  local s = 0
  for i = 1, 2e7 do s = s + i % 7 end
  local c1 = os.clock()
  local function f(x) return x + 1 end
  local y = 0
  for _ = 1, 5e6 do y = f(y) end
  return c1 - c0, os.clock() - c1
end
local function best(runner)
  local bl, bc = math.huge, math.huge
  for _ = 1, 3 do
    local l, c = runner()
    bl, bc = math.min(bl, l), math.min(bc, c)
  end
  return bl, bc
end
local pl, pc = best(function() return assert(task.wait(task.spawn(vm_work))) end)
local hl, hc = best(function()
  return assert(task.bounded({ timeout = 60, memory = 64 * 1024 * 1024 }, vm_work))
end)
print(("tasks: Lua VM, 20M loop steps %.0f ms and 5M calls %.0f ms in a task; %.0f ms and %.0f ms under the count hook (%.1fx, %.1fx)"):format(
  pl * 1e3, pc * 1e3, hl * 1e3, hc * 1e3, hl / pl, hc / pc))
