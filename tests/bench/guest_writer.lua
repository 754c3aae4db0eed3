-- A writer inside the "guest" of the local platform: run by tests/bench/vm_snapshot.lua
-- as its own process (a write blocked by a freeze stops only this one):
--
--   vmsnap tests/bench/guest_writer.lua MOUNTPOINT OUT STOP
--
-- Writes and flushes one byte about every millisecond to MOUNTPOINT/.bench-writer, as an
-- application appending to its log would, until the file STOP exists. Each write() that
-- took over 2 ms (a freeze blocks it in the kernel until the thaw) goes to OUT as a line
-- "START MS": when it began, on task.now()'s clock (CLOCK_MONOTONIC, the same in every
-- process of the machine), and how long it took. OUT is complete when this process exits.
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")

local mnt, out, stop = arg[1], arg[2], arg[3]
assert(mnt and out and stop, "usage: guest_writer.lua MOUNTPOINT OUT STOP")
local f = assert(io.open(mnt .. "/.bench-writer", "w"))
local blocked = {}
local n, check = 0, task.now()
while true do
  local t = task.now()
  f:write("x")
  f:flush()
  local d = task.now() - t
  if d > 0.002 then blocked[#blocked + 1] = ("%.6f %.1f"):format(t, d * 1000) end
  n = n + 1
  if n % 4096 == 0 then f:seek("set", 0) end -- stay small
  if t - check > 0.05 then
    check = t
    if fs.exists(stop) then break end
  end
  task.sleep(0.001)
end
f:close()
os.remove(mnt .. "/.bench-writer")
local o = assert(io.open(out, "w"))
o:write(table.concat(blocked, "\n"), #blocked > 0 and "\n" or "")
o:close()
