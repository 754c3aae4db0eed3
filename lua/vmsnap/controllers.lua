--- vmsnap.controllers: the snapshot controllers — one vmsnap.reconcile
--- controller per workflow (workflows/*.lua on the scripts path), the same
--- reconcile functions the one-shot commands drive.
local reconcile = require("vmsnap.reconcile")
local steps = require("vmsnap.reconcile.steps")
local workflow = require("vmsnap.workflow")
local guest = require("vmsnap.guest")
local log = require("vmsnap.log")
local metrics = require("vmsnap.metrics")
local clock = require("vmsnap.clock")
local freezes = require("vmsnap.freezes")

local M = {}

M.WORKFLOWS = { "disk-snapshot", "vm-snapshot", "vm-restore", "snapshot-schedule" }
-- what a one-shot command runs in its own process when no controller does
-- (not the schedules: a command that waits on one snapshot starts no runs)
M.ONE_SHOT = { "disk-snapshot", "vm-snapshot", "vm-restore" }

-- the running workflow controllers, for the phase gauge (weak: a stopped
-- and dropped controller goes)
local live = setmetatable({}, { __mode = "k" })
local collecting = false
local function collect_phases()
  if collecting then return end
  collecting = true
  metrics.process():collect(function(reg)
    local g = reg:gauge("vmsnap_snapshot_phase", "Objects of each workflow kind by phase, in this process's cache.",
      { "kind", "phase" })
    local counts = {}
    for ctl, kind in pairs(live) do
      counts[kind] = counts[kind] or { Pending = 0, InProgress = 0, Ready = 0, Failed = 0 }
      -- the leading replica's cache only (a replica that lost its lease keeps a stale one)
      if ctl.primary and not ctl.stopping and (not ctl.elector or ctl.elector.leading) then
        ctl.primary:each(function(o)
          local ph = o.status and o.status.phase or ""
          if ph == "" then ph = "Pending" end
          counts[kind][ph] = (counts[kind][ph] or 0) + 1
        end)
      end
    end
    for kind, by in pairs(counts) do
      for ph, n in pairs(by) do g:set({ kind, ph }, n) end
    end
  end)
end

--- The controller of one workflow (not started).
function M.for_workflow(client, name, opts)
  opts = opts or {}
  local w, err = workflow.load(name)
  if not w then return nil, err end
  collect_phases()
  local ctl = reconcile.controller({ client = client, name = opts.name or (name .. "-controller"), kind = w.kind,
    finalizer = w.finalizer, watches = w.watches and w.watches() or nil, indexes = w.indexes,
    workers = opts.workers, fresh = w.fresh, namespace = opts.namespace, leader_election = opts.leader_election,
    cache_reads = w.cache_reads,
    reconcile = function(ctx, obj)
      local cur = assert(workflow.load(name)) -- a changed file is picked up
      -- a workflow's own reconcile (the schedule's: every step, every pass), else its steps
      if cur.reconcile then return cur.reconcile(ctx, obj) end
      return steps.run(cur, ctx, obj)
    end,
    finalize = (w.steps or w.finalize) and function(ctx, obj)
      local cur = assert(workflow.load(name))
      if cur.steps then return steps.finalize(cur, ctx, obj) end
      return cur.finalize(ctx, obj)
    end or nil })
  live[ctl] = w.kind
  if w.on_start then w.on_start(ctl) end
  return ctl
end

--- All snapshot controllers (not started); opts.workflows names a subset.
function M.all(client, opts)
  opts = opts or {}
  local list = {}
  for _, name in ipairs(opts.workflows or M.WORKFLOWS) do
    local c, err = M.for_workflow(client, name, opts)
    if not c then return nil, err end
    list[#list + 1] = c
  end
  return list
end

--- The options of the controllers' caps and clock, for `vmsnap controller`
--- and `vmsnap up` (docs/schedules.md).
M.OPTIONS_HELP = [[
  --max-frozen N          freeze a guest only while fewer than N are frozen in
                          the cluster (default 16; 0: no cap)
  --max-frozen-per-driver N
                          ... and fewer than N with a disk on the same CSI
                          driver (default 8; 0: no cap)
  --max-in-flight-per-driver N
                          a schedule starts a snapshot only while fewer than N
                          are in progress on each CSI driver of the VM
                          (default 32; 0: no cap)
  --fake-clock NS/NAME    the schedules' time is data.now of this ConfigMap
                          (tests: docs/schedules.md "A fake clock"; also
                          $VMSNAP_FAKE_CLOCK)
]]

M.OPTIONS = { ["--max-frozen"] = "frozen", ["--max-frozen-per-driver"] = "frozen_per_driver",
  ["--max-in-flight-per-driver"] = "in_flight_per_driver", ["--fake-clock"] = "fake_clock" }

--- Apply one of M.OPTIONS (flag, its text value); returns true, or nil and
--- a message naming the flag.
function M.apply_option(flag, val)
  local key = M.OPTIONS[flag]
  if not key then return nil, "unknown option " .. tostring(flag) end
  if val == nil then return nil, flag .. " needs a value" end
  if key == "fake_clock" then
    local ok, why = clock.parse_source(val)
    if not ok then return nil, flag .. ": " .. why end
    M.fake_clock = val
    return true
  end
  local n = val:match("^%d+$") and tonumber(val)
  if not n or n > 1000000 then return nil, ("%s: %q is not a whole number from 0"):format(flag, val) end
  freezes.limits[key] = n
  return true
end

--- Start following the fake clock if one was set (a to-be-closed value
--- stops it), before the controllers run.
function M.start_clock(client)
  local spec = M.fake_clock or os.getenv("VMSNAP_FAKE_CLOCK")
  if not spec or spec == "" then return nil end
  local inf, err = clock.follow(client, spec)
  if not inf then error(err, 0) end
  return setmetatable({}, { __close = function() inf:stop() end })
end

M.LEASE = { name = "vmsnap-snapshot-controllers", namespace = "kube-system", duration = 15 }

--- For a one-shot command that waits on an object: when no snapshot controller
--- holds the Lease, run the controllers (opts.workflows, default all) in this
--- process. Returns a to-be-closed value that stops them, and whether it started
--- any; or raises when they cannot be made.
function M.run_here(client, opts)
  local task = require("vmsnap.task")
  local ctls = {}
  if not M.active(client) then
    local list, err = M.all(client, { leader_election = M.LEASE, workflows = opts and opts.workflows or M.ONE_SHOT })
    if not list then error(err, 0) end
    for _, x in ipairs(list) do
      ctls[#ctls + 1] = x
      x.task = task.spawn(function() return x:run() end)
    end
  end
  return setmetatable({}, { __close = function()
    for _, x in ipairs(ctls) do x:stop() end
    for _, x in ipairs(ctls) do task.wait(x.task, 10) end
  end }), #ctls > 0
end

--- Is a snapshot controller running (its leader lease is fresh)?
function M.active(client)
  local function held(lease)
    local spec = lease and lease.spec
    if not spec or (spec.holderIdentity or "") == "" then return false end
    local renew = require("vmsnap.time").parse(spec.renewTime)
    return renew ~= nil and renew + (spec.leaseDurationSeconds or 15) >= os.time()
  end
  -- the Lease of this name in any namespace (deploy/ keeps it in its own,
  -- --leader-election-namespace); where listing them all is not allowed,
  -- the default one
  local all = client:list_all("leases.coordination.k8s.io",
    { all_namespaces = true, field_selector = "metadata.name=" .. M.LEASE.name })
  if all then
    for _, l in ipairs(all) do
      if held(l) then return true end
    end
    return false
  end
  return held(client:get("leases.coordination.k8s.io", M.LEASE.name, { namespace = M.LEASE.namespace }))
end

--- Thaw orphaned freezes now and every `every` seconds (a task; a guest
--- whose agent was not up at the first look is thawed at a later one).
function M.sweep_orphans(client, every, stopped)
  return require("vmsnap.task").spawn(function()
    while not (stopped and stopped()) do
      -- a cancel seen by a request ends the sweep (it is not raised there)
      if M.thaw_orphans(client) == "CANCELLED" then return end
      require("vmsnap.task").sleep(every or 10)
    end
  end)
end

--- Thaw the guests whose freeze lease has expired (its deadline passed). A
--- lease whose holder died before its deadline is left to the snapshots of
--- its VM: the first that freezes thaws it and takes it off (nothing proves
--- its freeze), or this sweep does at its deadline.
function M.thaw_orphans(client)
  local done, err, code = guest.thaw_orphans(client, { expired_only = true })
  if not done then
    if code == "CANCELLED" then return code end
    log.warn("cannot look for orphaned freezes", { error = err })
    return code
  end
  for _, d in ipairs(done) do
    log.info("thawed an expired freeze", { vm = d.namespace .. "/" .. d.name, ok = d.ok })
  end
end

return M
