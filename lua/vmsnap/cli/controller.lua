--- `vmsnap controller`: the snapshot controllers against any API server.
local kube = require("vmsnap.cli.kube")
local controllers = require("vmsnap.controllers")
local task = require("vmsnap.task")
local opsserver = require("vmsnap.opsserver")

local M = {}

M.help = [[
usage: vmsnap controller [options]

Run the snapshot controllers (workflows/*.lua on the scripts path) against the
API server of the kubeconfig or the cluster. Several replicas elect a leader on
the Lease kube-system/vmsnap-snapshot-controllers. At start, guests whose freeze
lease has expired are thawed (at start and every 10 s). SIGINT/SIGTERM stop it
after the reconciles in hand.

  --workflows LIST        run only these workflows (comma-separated; default:
                          disk-snapshot,vm-snapshot,vm-restore,snapshot-schedule)
  --metrics-addr ADDR     serve /metrics (Prometheus text) on HOST:PORT, plain
                          HTTP (docs/metrics.md); off by default
  --health-addr ADDR      serve /healthz and /readyz on HOST:PORT (may be the
                          metrics address); off by default
  --leader-election-namespace NS
                          where the Lease vmsnap-snapshot-controllers lives
                          (default kube-system; deploy/ uses its own namespace)
]] .. controllers.OPTIONS_HELP .. kube.COMMON_HELP

function M.main(args)
  local spec = { ["--workflows"] = { "workflows", true }, ["--metrics-addr"] = { "metrics_addr", true },
    ["--health-addr"] = { "health_addr", true }, ["--leader-election-namespace"] = { "lease_ns", true } }
  for k, v in pairs(kube.COMMON) do spec[k] = v end
  for flag, key in pairs(controllers.OPTIONS) do spec[flag] = { key, true } end
  local o, pos = kube.parse(args, spec)
  if o.help then io.stdout:write(M.help) return end
  collectgarbage("generational") -- a long-lived process: docs/performance.md, "Fourth round"
  local cli = require("vmsnap.cli")
  if #pos > 0 then cli.usage("controller: unexpected argument '" .. pos[1] .. "'") end
  local only
  if o.workflows then
    only = {}
    local known = {}
    for _, w in ipairs(controllers.WORKFLOWS) do known[w] = true end
    for w in o.workflows:gmatch("[^,%s]+") do
      if not known[w] then
        cli.usage(("controller: --workflows: unknown workflow '%s' (known: %s)"):format(w, table.concat(controllers.WORKFLOWS, ", ")))
      end
      only[#only + 1] = w
    end
    if #only == 0 then cli.usage("controller: --workflows needs at least one workflow") end
  end
  for _, f in ipairs({ { "metrics_addr", "--metrics-addr" }, { "health_addr", "--health-addr" } }) do
    if o[f[1]] then
      local ok, why = opsserver.parse_addr(o[f[1]])
      if not ok then cli.usage(("controller: %s: %s"):format(f[2], why)) end
    end
  end
  for flag, key in pairs(controllers.OPTIONS) do
    if o[key] ~= nil then
      local ok, why = controllers.apply_option(flag, o[key])
      if not ok then cli.usage("controller: " .. why) end
    end
  end
  local c = kube.client(o)
  local _clock <close> = controllers.start_clock(c)
  local lease = controllers.LEASE
  if o.lease_ns then
    if not o.lease_ns:match("^[a-z0-9][-a-z0-9]*$") or o.lease_ns:match("%-$") or #o.lease_ns > 63 then
      cli.usage(("controller: --leader-election-namespace: %q is not a namespace name"):format(o.lease_ns))
    end
    lease = { name = lease.name, namespace = o.lease_ns, duration = lease.duration }
  end
  local ctls, err = controllers.all(c, { leader_election = lease, workflows = only })
  if not ctls then return nil, "controller: " .. tostring(err) end
  local ops, oerr = opsserver.start_all(o.metrics_addr, o.health_addr, { controllers = ctls })
  if not ops then return nil, "controller: " .. tostring(oerr) end
  local sweeper = controllers.sweep_orphans(c, 10)
  local _ <close> = setmetatable({}, { __close = function()
    task.cancel(sweeper)
    for _, x in ipairs(ctls) do x:stop() end
    for _, s in ipairs(ops) do s:close() end
  end })
  local log = require("vmsnap.log")
  if log.json() then
    log.new("controller"):info("running", { server = c:describe().server, lease = lease.namespace .. "/" .. lease.name })
  else
    io.stdout:write(("snapshot controllers running against %s\n"):format(c:describe().server))
    io.stdout:flush()
  end
  local ts = {}
  for i, x in ipairs(ctls) do ts[i] = task.spawn(function() return x:run() end) end
  task.wait_all(ts)
end

return M
