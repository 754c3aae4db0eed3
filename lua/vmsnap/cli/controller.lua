--- `vmsnap controller`: the snapshot controllers against any API server.
local kube = require("vmsnap.cli.kube")
local controllers = require("vmsnap.controllers")
local task = require("vmsnap.task")

local M = {}

M.help = [[
usage: vmsnap controller [options]

Run the snapshot controllers (workflows/*.lua on the scripts path) against the
API server of the kubeconfig or the cluster. Several replicas elect a leader on
the Lease kube-system/vmsnap-snapshot-controllers. At start, guests whose freeze
lease is stale are thawed. SIGINT/SIGTERM stop it after the reconciles in hand.
]] .. kube.COMMON_HELP

function M.main(args)
  local o, pos = kube.parse(args, kube.COMMON)
  if o.help then io.stdout:write(M.help) return end
  if #pos > 0 then require("vmsnap.cli").usage("controller: unexpected argument '" .. pos[1] .. "'") end
  local c = kube.client(o)
  local ctls, err = controllers.all(c, { leader_election = controllers.LEASE })
  if not ctls then return nil, "controller: " .. tostring(err) end
  local sweeper = controllers.sweep_orphans(c, 10)
  local _ <close> = setmetatable({}, { __close = function()
    task.cancel(sweeper)
    for _, x in ipairs(ctls) do x:stop() end
  end })
  io.stdout:write(("snapshot controllers running against %s\n"):format(c:describe().server))
  io.stdout:flush()
  local ts = {}
  for i, x in ipairs(ctls) do ts[i] = task.spawn(function() return x:run() end) end
  task.wait_all(ts)
end

return M
