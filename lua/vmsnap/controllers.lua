--- vmsnap.controllers: the snapshot controllers — one vmsnap.reconcile
--- controller per workflow (workflows/*.lua on the scripts path), the same
--- reconcile functions the one-shot commands drive.
local reconcile = require("vmsnap.reconcile")
local workflow = require("vmsnap.workflow")
local guest = require("vmsnap.guest")
local log = require("vmsnap.log")

local M = {}

M.WORKFLOWS = { "disk-snapshot", "vm-snapshot", "vm-restore" }

--- The controller of one workflow (not started).
function M.for_workflow(client, name, opts)
  opts = opts or {}
  local w, err = workflow.load(name)
  if not w then return nil, err end
  return reconcile.controller({ client = client, name = opts.name or (name .. "-controller"), kind = w.kind,
    finalizer = w.finalizer, watches = w.watches and w.watches() or nil, workers = opts.workers,
    namespace = opts.namespace, leader_election = opts.leader_election,
    reconcile = function(ctx, obj)
      local cur = assert(workflow.load(name)) -- a changed file is picked up
      return cur.reconcile(ctx, obj)
    end,
    finalize = w.finalize and function(ctx, obj)
      local cur = assert(workflow.load(name))
      return cur.finalize(ctx, obj)
    end or nil })
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

M.LEASE = { name = "vmsnap-snapshot-controllers", namespace = "kube-system", duration = 15 }

--- Is a snapshot controller running (its leader lease is fresh)?
function M.active(client)
  local lease = client:get("leases.coordination.k8s.io", M.LEASE.name, { namespace = M.LEASE.namespace })
  local spec = lease and lease.spec
  if not spec or (spec.holderIdentity or "") == "" then return false end
  local renew = require("vmsnap.time").parse(spec.renewTime)
  return renew ~= nil and renew + (spec.leaseDurationSeconds or 15) >= os.time()
end

--- Drive one object to a terminal phase in this process (the one-shot
--- commands, when no controller runs): reconcile, honouring the requeues,
--- until done(obj) or the timeout. on_change(obj) sees every new state.
function M.drive(client, workflow_name, namespace, name, done, timeout, on_change)
  local ctl, err = M.for_workflow(client, workflow_name, { name = "vmsnap-cli" })
  if not ctl then return nil, err end
  local key = namespace .. "/" .. name
  local until_t = require("vmsnap.task").now() + (timeout or 300)
  local task = require("vmsnap.task")
  local last
  while task.now() < until_t do
    local res = ctl:reconcile_key(key)
    local obj = client:get(ctl.opts.kind, name, { namespace = namespace })
    if obj and on_change then
      local sig = require("vmsnap.json").encode(obj.status or {})
      if sig ~= last then last = sig on_change(obj) end
    end
    if not obj then return nil, ("%s %s/%s is gone"):format(ctl.opts.kind, namespace, name), "NotFound" end
    if done(obj) then return obj end
    local delay = 0.5
    if res == nil then
      delay = ctl.queue:backoff(key)
    elseif type(res) == "table" and res.requeue_after then
      delay = res.requeue_after
    end
    task.sleep(math.min(delay, math.max(0.01, until_t - task.now())))
  end
  return nil, ("%s/%s did not finish within %gs"):format(namespace, name, timeout or 300), "TIMEOUT"
end

--- Thaw orphaned freezes now and every `every` seconds (a task; a guest
--- whose agent was not up at the first look is thawed at a later one).
function M.sweep_orphans(client, every, stopped)
  return require("vmsnap.task").spawn(function()
    while not (stopped and stopped()) do
      M.thaw_orphans(client)
      require("vmsnap.task").sleep(every or 10)
    end
  end)
end

--- Thaw the guests whose freeze lease has expired (its deadline passed). A
--- lease whose holder died before its deadline is left to the snapshots that
--- hold it: a restarted controller adopts it, and thaws when the last is cut.
function M.thaw_orphans(client)
  local done, err = guest.thaw_orphans(client, { expired_only = true })
  if not done then
    log.warn("cannot look for orphaned freezes", { error = err })
    return
  end
  for _, d in ipairs(done) do
    log.info("thawed an expired freeze", { vm = d.namespace .. "/" .. d.name, ok = d.ok })
  end
end

return M
