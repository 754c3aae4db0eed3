-- Freeze -> thaw round trips through a real qemu-ga, freezing only a
-- loop-mounted ext4 image (helpers.qga_env): median and p99 over 100 cycles,
-- on one agent connection and through vmsnap.guest (a connection per call).
local qga = require("vmsnap.qga")
local guest = require("vmsnap.guest")
local task = require("vmsnap.task")
local h = require("helpers")

local env <close>, why = h.qga_env()
if not env then
  print("guest: skipped: " .. why)
  return
end

local function stats(xs)
  table.sort(xs)
  local function p(q) return xs[math.max(1, math.ceil(#xs * q))] * 1000 end
  return ("median %.2f ms, p99 %.2f ms, max %.2f ms"):format(p(0.5), p(0.99), p(1))
end

-- qemu-ga serves one client at a time: this connection is closed before the next part
local a = assert(qga.connect(env.socket))
local rt = {}
for i = 1, 100 do
  local t0 = task.now()
  assert(a:fsfreeze_freeze_list({ env.mnt }) == 1)
  assert(a:fsfreeze_thaw() == 1)
  rt[i] = task.now() - t0
end
print("qga freeze->thaw (one connection):   " .. stats(rt))
a:close()

local g = assert(guest.for_vm(nil, nil, { socket = env.socket }))
local win = {}
for i = 1, 100 do
  local t0 = task.now()
  local f = assert(g:freeze({ budget = 5, mountpoints = { env.mnt } }))
  assert(f:thaw())
  win[i] = task.now() - t0
end
print("guest freeze guard -> thaw (connect per call): " .. stats(win))
