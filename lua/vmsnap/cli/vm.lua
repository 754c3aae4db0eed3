--- `vmsnap vm start|stop|migrate|pause|resume NAME`: power a VirtualMachine
--- of the local platform (its runPolicy Manual or AlwaysOnUnlessStoppedManually),
--- or put a running one through the phases Migrating and Pause.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")

local M = {}

M.help = [[
usage: vmsnap vm start|stop NAME [-n NS] [--wait]
       vmsnap vm migrate NAME [--duration D] [-n NS] [--wait]
       vmsnap vm pause|resume NAME [-n NS] [--wait]

Start or stop a VirtualMachine of the local platform (annotation vmsnap.io/power;
runPolicy AlwaysOn and AlwaysOff win over it). A running VM can be put in phase
Migrating for a while (--duration, default 5s; annotation vmsnap.io/migrate-until)
and in phase Pause until resumed (annotation vmsnap.io/paused), as a real VM
passes through them, to see what snapshots do then. With --wait, until the VM is
in the phase the command leads to (Running, Stopped or Pause).
]] .. kube.COMMON_HELP

local SPEC = { ["--wait"] = { "wait", false }, ["--duration"] = { "duration", true } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  local verb, name = pos[1], pos[2]
  local VERBS = { start = true, stop = true, migrate = true, pause = true, resume = true }
  if verb and not VERBS[verb] then
    cli.usage(("vm: '%s' is not something to do to a VM: start, stop, migrate, pause or resume%s"):format(verb,
      cli.did_you_mean(verb, { "start", "stop", "migrate", "pause", "resume" })))
  end
  if not verb or not name then
    cli.usage("vm: usage: vmsnap vm start|stop|migrate|pause|resume NAME")
  end
  local ann, said
  if verb == "start" or verb == "stop" then
    ann = { ["vmsnap.io/power"] = verb == "start" and "on" or "off" }
    said = verb == "start" and "starting" or "stopping"
  elseif verb == "migrate" then
    local d = require("vmsnap.time").duration(o.duration or "5s")
    if not d or d <= 0 then cli.usage(("vm: --duration must be a positive duration (5s, 1m), got '%s'"):format(tostring(o.duration))) end
    ann = { ["vmsnap.io/migrate-until"] = require("vmsnap.time").format(os.time() + math.ceil(d)) }
    said = "migrating"
  else
    ann = { ["vmsnap.io/paused"] = verb == "pause" and "true" or require("vmsnap.json").null }
    said = verb == "pause" and "pausing" or "resuming"
  end
  local c = kube.client(o)
  -- a runPolicy that overrides the power switch: say so, change nothing
  if verb == "start" or verb == "stop" then
    local vm, gerr, greason, gst = c:get("vm", name, { namespace = o.namespace })
    if not vm then cli.fail(kube.error_text(gerr, greason, gst)) end
    local policy = vm.spec and vm.spec.runPolicy
    if verb == "stop" and policy == "AlwaysOn" then
      cli.fail(("error: the virtual machine %q has runPolicy AlwaysOn: the platform starts it again at once; "
        .. "set spec.runPolicy to Manual or AlwaysOnUnlessStoppedManually to stop it"):format(name))
    elseif verb == "start" and policy == "AlwaysOff" then
      cli.fail(("error: the virtual machine %q has runPolicy AlwaysOff: it stays stopped; "
        .. "set spec.runPolicy to Manual or AlwaysOnUnlessStoppedManually to start it"):format(name))
    end
  end
  local ok, err, reason, st = c:patch("vm", name, { metadata = { annotations = ann } }, { namespace = o.namespace })
  if not ok then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualmachine.virtualization.deckhouse.io/%s %s\n"):format(name, said))
  if o.wait then
    local want = ({ start = "Running", stop = "Stopped", migrate = "Running", pause = "Pause", resume = "Running" })[verb]
    if verb == "migrate" then
      -- first into Migrating, then out of it
      c:wait_for("vm", name, function(x) return x and x.status and x.status.phase == "Migrating" end,
        { namespace = o.namespace, timeout = 30 })
    end
    local r, werr = c:wait_for("vm", name, function(x) return x and x.status and x.status.phase == want end,
      { namespace = o.namespace, timeout = 120 })
    if not r then cli.fail("error: " .. tostring(werr)) end
    io.stdout:write(("%s is %s\n"):format(name, want))
  end
end

return M
