--- `vmsnap vm start|stop NAME`: power a VirtualMachine of the local platform
--- (its runPolicy Manual or AlwaysOnUnlessStoppedManually).
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")

local M = {}

M.help = [[
usage: vmsnap vm start|stop NAME [-n NS] [--wait]

Start or stop a VirtualMachine of the local platform (annotation vmsnap.io/power;
runPolicy AlwaysOn and AlwaysOff win over it). With --wait, until the VM is
Running or Stopped.
]] .. kube.COMMON_HELP

local SPEC = { ["--wait"] = { "wait", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  local verb, name = pos[1], pos[2]
  if (verb ~= "start" and verb ~= "stop") or not name then cli.usage("vm: usage: vmsnap vm start|stop NAME") end
  local c = kube.client(o)
  local ok, err, reason, st = c:patch("vm", name, { metadata = { annotations = {
    ["vmsnap.io/power"] = verb == "start" and "on" or "off" } } }, { namespace = o.namespace })
  if not ok then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualmachine.virtualization.deckhouse.io/%s %s\n"):format(name, verb == "start" and "starting" or "stopping"))
  if o.wait then
    local want = verb == "start" and "Running" or "Stopped"
    local r, werr = c:wait_for("vm", name, function(x) return x and x.status and x.status.phase == want end,
      { namespace = o.namespace, timeout = 120 })
    if not r then cli.fail("error: " .. tostring(werr)) end
    io.stdout:write(("%s is %s\n"):format(name, want))
  end
end

return M
