--- `vmsnap delete KIND NAME...`: delete objects the way `kubectl delete`
--- does, waiting (by default) until they are gone — past their finalizers:
--- a snapshot's thaw and its VolumeSnapshot's cleanup.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")

local M = {}

M.help = [[
usage: vmsnap delete KIND NAME... [options]

Delete the objects NAME of KIND through the Kubernetes API and wait until
they are gone (their finalizers done: a snapshot's guest thawed, its
VolumeSnapshot deleted). KIND as for `vmsnap get`.

options:
  --wait=false            return once the deletion is accepted
  --timeout DURATION      how long to wait (30s, 5m, or seconds; default 5m)
  --ignore-not-found      an object that does not exist is not an error
  --cascade MODE          background (default), foreground or orphan (what
                          becomes of the objects it owns)
]] .. kube.COMMON_HELP

local SPEC = { ["--wait"] = { "wait", true }, ["--timeout"] = { "timeout", true },
  ["--ignore-not-found"] = { "ignore", false }, ["--cascade"] = { "cascade", true } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local CASCADE = { background = "Background", foreground = "Foreground", orphan = "Orphan" }

function M.main(args)
  local waitarg
  for i, a in ipairs(args) do
    -- `--wait` alone means true (kubectl's boolean flag)
    if a == "--wait" then args[i] = "--wait=true" end
  end
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if #pos < 2 then cli.usage("delete: give KIND and NAME (e.g. 'vmsnap delete vdsnapshot snap-1')") end
  waitarg = o.wait or "true"
  if waitarg ~= "true" and waitarg ~= "false" then
    cli.usage(("delete: --wait must be true or false, not '%s'"):format(waitarg))
  end
  local timeout = cli.duration("delete: --timeout", o.timeout or "300")
  local propagation = nil
  if o.cascade then
    propagation = CASCADE[o.cascade]
    if not propagation then
      cli.usage(("delete: --cascade must be background, foreground or orphan, not '%s'%s"):format(o.cascade,
        cli.did_you_mean(o.cascade, { "background", "foreground", "orphan" })))
    end
  end
  local c = kube.client(o)
  local r, rerr = c:resource(pos[1])
  if not r then cli.fail("error: " .. rerr) end
  local ns = r.namespaced and (o.namespace or c.namespace) or nil
  local failures, deleted = {}, {}
  for i = 2, #pos do
    local name = pos[i]
    local res, err, reason, st = c:delete(r, name, { namespace = ns, propagation = propagation })
    if res then
      io.stdout:write(("%s %q deleted\n"):format(kube.kind_group(r), name))
      deleted[#deleted + 1] = name
    elseif not (reason == "NotFound" and o.ignore) then
      failures[#failures + 1] = kube.error_text(err, reason, st)
    end
  end
  if waitarg == "true" then
    for _, name in ipairs(deleted) do
      local gone, werr = c:wait_for(r, name, function(x) return x == nil end, { namespace = ns, timeout = timeout })
      if not gone then
        failures[#failures + 1] = ("error: %s %q is not gone after %s s (its finalizers: %s)"):format(kube.kind_group(r), name,
          tostring(timeout), tostring(werr))
      end
    end
  end
  if #failures > 0 then cli.fail(table.concat(failures, "\n")) end
end

return M
