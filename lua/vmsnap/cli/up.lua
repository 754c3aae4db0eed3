--- `vmsnap up`: the local platform — API server, platform controllers and
--- snapshot controllers in one process.
local cli = require("vmsnap.cli")
local serve = require("vmsnap.cli.serve")
local apiserver = require("vmsnap.apiserver")
local platform = require("vmsnap.platform")
local controllers = require("vmsnap.controllers")
local fs = require("vmsnap.fs")
local task = require("vmsnap.task")
local opsserver = require("vmsnap.opsserver")

local M = {}

M.help = [[
usage: vmsnap up --data DIR [vmsnap serve's options]

Run the local platform in one process: the Kubernetes-compatible API (as
`vmsnap serve`), file-backed volumes with a CSI snapshotter (driver
local.vmsnap.io; a default StorageClass and VolumeSnapshotClass named "local"
are created when none exists), VirtualDisks, and the snapshot controllers.
State lives in DIR; a restart resumes where it stopped.

    vmsnap up --data /var/tmp/vmsnap &
    export KUBECONFIG=/var/tmp/vmsnap/kubeconfig
    kubectl apply -f disk.yaml && kubectl get vd,vdsnapshot

  --no-controllers    run the platform without the snapshot controllers (run
                      `vmsnap controller` against it instead)
  --metrics-addr ADDR also serve /metrics (the controllers' and the API
                      server's families) on HOST:PORT, plain HTTP; the API's
                      own /metrics has them too
  --health-addr ADDR  serve /healthz and /readyz of the controllers on HOST:PORT
]] .. controllers.OPTIONS_HELP .. [[

Ctrl-C (or SIGTERM) stops it cleanly.
]]

function M.main(args)
  for _, a in ipairs(args) do
    if a == "-h" or a == "--help" then io.stdout:write(M.help) return end
  end
  local rest, no_controllers, addrs = {}, false, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local flag, val = a:match("^(%-%-[%w-]+)=(.*)$")
    flag = flag or a
    if a == "--no-controllers" then
      no_controllers = true
    elseif flag == "--metrics-addr" or flag == "--health-addr" then
      if not val then
        i = i + 1
        val = args[i]
        if val == nil then cli.usage(("up: %s needs a value (HOST:PORT)"):format(flag)) end
      end
      local ok, why = opsserver.parse_addr(val)
      if not ok then cli.usage(("up: %s: %s"):format(flag, why)) end
      addrs[flag] = val
    elseif controllers.OPTIONS[flag] then
      if not val then
        i = i + 1
        val = args[i]
      end
      local ok, why = controllers.apply_option(flag, val)
      if not ok then cli.usage("up: " .. why) end
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  collectgarbage("generational") -- a long-lived process: docs/performance.md, "Fourth round"
  local o = serve.parse(rest)
  local pok, perr0 = serve.prepare(o)
  if not pok then return nil, "up: " .. tostring(perr0) end
  local srv, err = apiserver.new(serve.server_options(o))
  if not srv then return nil, "up: " .. tostring(err) end
  local stop_all
  local _ <close> = setmetatable({}, { __close = function() if stop_all then stop_all() end srv:close() end })
  local port, perr = serve.listen(srv, o)
  if not port then return nil, perr end
  local server_task = task.spawn(function() return srv:serve() end)
  local client = platform.client_for(srv)
  local ctls, perr2 = platform.start(client, o.data)
  if not ctls then return nil, "up: " .. tostring(perr2) end
  local sweeper = not no_controllers and controllers.sweep_orphans(client, 10) or nil
  local _clock <close> = controllers.start_clock(client)
  local snaps, cerr = {}, nil
  if not no_controllers then
    snaps, cerr = controllers.all(client, { leader_election = controllers.LEASE })
    if not snaps then return nil, "up: " .. tostring(cerr) end
  end
  for _, c in ipairs(snaps) do c.task = task.spawn(function() return c:run() end) end
  local ops, oerr = opsserver.start_all(addrs["--metrics-addr"], addrs["--health-addr"], { controllers = snaps,
    extra = function() return srv.metrics:render() end })
  if not ops then return nil, "up: " .. tostring(oerr) end
  stop_all = function()
    for _, s in ipairs(ops) do s:close() end
    if sweeper then task.cancel(sweeper) end
    platform.stop(snaps)
    platform.stop(ctls)
  end
  serve.announce(srv, o, port, "the local platform")
  local ok = task.wait(server_task)
  return ok
end

return M
