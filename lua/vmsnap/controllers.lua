--- vmsnap.controllers: the snapshot controllers — one vmsnap.reconcile
--- controller per workflow (workflows/*.lua on the scripts path), the same
--- reconcile functions the one-shot commands drive.
local reconcile = require("vmsnap.reconcile")
local workflow = require("vmsnap.workflow")
local guest = require("vmsnap.guest")
local log = require("vmsnap.log")

local M = {}

M.WORKFLOWS = { "disk-snapshot" }

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

--- All snapshot controllers (not started).
function M.all(client, opts)
  local list = {}
  for _, name in ipairs(M.WORKFLOWS) do
    local c, err = M.for_workflow(client, name, opts)
    if not c then return nil, err end
    list[#list + 1] = c
  end
  return list
end

--- Thaw the guests whose freeze lease is stale (every controller start).
function M.thaw_orphans(client)
  local done, err = guest.thaw_orphans(client)
  if not done then
    log.warn("cannot look for orphaned freezes", { error = err })
    return
  end
  for _, d in ipairs(done) do
    log.info("thawed an orphaned freeze at start-up", { vm = d.namespace .. "/" .. d.name, ok = d.ok })
  end
end

return M
