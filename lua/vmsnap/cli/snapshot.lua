--- `vmsnap snapshot disk NAME`: take a VirtualDiskSnapshot, one-shot.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local controllers = require("vmsnap.controllers")

local M = {}

M.help = [[
usage: vmsnap snapshot disk NAME [options]

Create a VirtualDiskSnapshot of the VirtualDisk NAME. With --wait, follow it to
Ready or Failed, printing each step; when no snapshot controller is running
(vmsnap up, vmsnap controller), the reconcile runs in this process.

options:
  --name SNAP             the snapshot's name (default NAME-YYYYMMDDHHMMSS)
  --class CLASS           the VolumeSnapshotClass (default: resolved from the disk's StorageClass)
  --inconsistent          requiredConsistency: false
  --wait                  follow it to Ready or Failed (exit 1 on Failed)
  --timeout SECONDS       for --wait (default 300)
]] .. kube.COMMON_HELP

local SPEC = { ["--name"] = { "name", true }, ["--class"] = { "class", true }, ["--wait"] = { "wait", false },
  ["--timeout"] = { "timeout", true }, ["--inconsistent"] = { "inconsistent", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local function progress(obj)
  if not (obj.status and obj.status.phase) then return end
  local c
  for _, x in ipairs(obj.status and obj.status.conditions or {}) do
    if x.type == "VirtualDiskSnapshotReady" then c = x end
  end
  io.stdout:write(("%s  %-10s %s%s\n"):format(os.date("%H:%M:%S"), obj.status and obj.status.phase or "",
    c and c.reason or "", c and c.message ~= "" and (": " .. c.message) or ""))
  io.stdout:flush()
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help or pos[1] ~= "disk" or not pos[2] then
    if o.help then io.stdout:write(M.help) return end
    cli.usage("snapshot: usage: vmsnap snapshot disk NAME [--class C] [--wait]")
  end
  local c = kube.client(o)
  local ns = o.namespace or c.namespace
  local disk = pos[2]
  local name = o.name or (disk .. "-" .. os.date("!%Y%m%d%H%M%S"))
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = name, namespace = ns },
    spec = { virtualDiskName = disk, volumeSnapshotClassName = o.class,
      requiredConsistency = not o.inconsistent } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualdisksnapshot.virtualization.deckhouse.io/%s created\n"):format(name))
  if not o.wait then return end
  local timeout = tonumber(o.timeout or 300)
  local function done(x) local p = x.status and x.status.phase return p == "Ready" or p == "Failed" end
  local final, werr
  if controllers.active(c) then
    local last
    final, werr = c:wait_for("vdsnapshot", name, function(x)
      if not x then return true end
      local sig = require("vmsnap.json").encode(x.status or {})
      if sig ~= last then last = sig progress(x) end
      return done(x)
    end, { namespace = ns, timeout = timeout })
  else
    io.stdout:write("(no snapshot controller is running: reconciling here)\n")
    final, werr = controllers.drive(c, "disk-snapshot", ns, name, done, timeout, progress)
  end
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the snapshot is gone")) end
  if final.status.phase == "Failed" then cli.fail(("error: %s failed"):format(name)) end
  io.stdout:write(("%s is Ready%s\n"):format(name, final.status.consistent and " (consistent)" or ""))
end

return M
