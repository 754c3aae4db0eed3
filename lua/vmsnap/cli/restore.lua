--- `vmsnap restore disk NAME --from SNAPSHOT`: a VirtualDisk from a snapshot.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local json = require("vmsnap.json")

local M = {}

M.help = [[
usage: vmsnap restore disk NAME --from SNAPSHOT [options]

Create the VirtualDisk NAME from the VirtualDiskSnapshot SNAPSHOT (dataSource
ObjectRef). The disk is restored at the snapshot's size, then grown to --size.

options:
  --from SNAPSHOT         the VirtualDiskSnapshot (required)
  --size SIZE             the disk's size (e.g. 10Gi; default: the snapshot's)
  --storage-class SC      the disk's storage class
  --wait                  follow it to Ready (exit 1 if it fails)
  --timeout SECONDS       for --wait (default 300)
]] .. kube.COMMON_HELP

local SPEC = { ["--from"] = { "from", true }, ["--size"] = { "size", true }, ["--wait"] = { "wait", false },
  ["--timeout"] = { "timeout", true }, ["--storage-class"] = { "sc", true } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if pos[1] ~= "disk" or not pos[2] then cli.usage("restore: usage: vmsnap restore disk NAME --from SNAPSHOT [--wait]") end
  if not o.from then cli.usage("restore: --from SNAPSHOT is required") end
  local c = kube.client(o)
  local ns = o.namespace or c.namespace
  local pvc = (o.size or o.sc) and { size = o.size, storageClassName = o.sc } or nil
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDisk",
    metadata = { name = pos[2], namespace = ns },
    spec = { persistentVolumeClaim = pvc,
      dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = o.from } } } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualdisk.virtualization.deckhouse.io/%s created\n"):format(pos[2]))
  if not o.wait then return end
  local last
  local final, werr = c:wait_for("vd", pos[2], function(x)
    if not x then return true end
    local ready
    for _, cnd in ipairs(x.status and x.status.conditions or {}) do if cnd.type == "Ready" then ready = cnd end end
    local sig = json.encode({ x.status and x.status.phase, ready and ready.message })
    if sig ~= last and x.status and x.status.phase then
      last = sig
      io.stdout:write(("%s  %-12s %s\n"):format(os.date("%H:%M:%S"), x.status and x.status.phase or "",
        ready and ready.message or ""))
      io.stdout:flush()
    end
    local p = x.status and x.status.phase
    return p == "Ready" or p == "Failed" or p == "PVCLost"
  end, { namespace = ns, timeout = tonumber(o.timeout or 300) })
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the disk is gone")) end
  if final.status.phase ~= "Ready" then cli.fail(("error: %s is %s"):format(pos[2], final.status.phase)) end
  io.stdout:write(("%s is Ready (%s)\n"):format(pos[2], tostring(final.status.capacity)))
end

return M
