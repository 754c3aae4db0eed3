--- vmsnap.freezes: who holds a VM's freeze, for the snapshot workflows.
---
--- One freeze of a guest can serve several snapshots: the disk snapshots of
--- its disks taken at the same time, a VM snapshot and its children. Each
--- snapshot that relies on the freeze carries the mark `vmsnap.io/frozen-at`
--- (ms since the epoch of the freeze) from the moment it freezes or joins to
--- the moment it leaves; the VM carries the freeze lease of vmsnap.guest.
--- Freezing, joining and leaving are decided under the VM's lock
--- (guest.lock), and the marks are read from the API, so that of several
--- holders leaving at once exactly one finds itself last and thaws.
local json = require("vmsnap.json")
local guest = require("vmsnap.guest")
local vtime = require("vmsnap.time")

local M = {}

M.FROZEN_AT = "vmsnap.io/frozen-at"             -- ms since the epoch, while the object holds a freeze
M.FREEZE_DURATION = "vmsnap.io/freeze-duration-ms"
M.THAW_AT = "vmsnap.io/thaw-at"                 -- "Cut" (default) or "Ready"
M.BUDGET = "vmsnap.io/freeze-budget"            -- seconds (default 30)

local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local RESOURCE = { VirtualDiskSnapshot = VDS, VirtualMachineSnapshot = VMS }

local function annotation(obj, key)
  return obj.metadata.annotations and obj.metadata.annotations[key]
end

--- Is the VM frozen, as the snapshot controllers see it: FilesystemFrozen
--- True with reason Frozen (spec b.2)?
function M.vm_frozen(vm)
  for _, c in ipairs(vm and vm.status and vm.status.conditions or {}) do
    if c.type == "FilesystemFrozen" then return c.status == "True" and c.reason == "Frozen" end
  end
  return false
end

--- The freeze budget of a snapshot, in seconds (annotation, default 30).
function M.budget(obj)
  local b = tonumber(annotation(obj, M.BUDGET) or "")
  return b and b > 0 and b or 30
end

--- Does the snapshot thaw at Ready (annotation `vmsnap.io/thaw-at: Ready`)
--- rather than at the cut?
function M.thaw_at_ready(obj)
  return annotation(obj, M.THAW_AT) == "Ready"
end

--- When this snapshot's freeze began (ms since the epoch), or nil when it holds none.
function M.frozen_at(obj)
  return tonumber(annotation(obj, M.FROZEN_AT) or "")
end

--- The other holders of the VM's freeze: disk snapshots of its disks marked
--- frozen-at, and VM snapshots of it marked or in progress, read from the API.
--- `skip(obj)` leaves some out (a VM snapshot leaves out its children).
function M.holders(client, vm, skip)
  local ns = vm.metadata.namespace
  local disks = {}
  for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or vm.spec.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then disks[r.name] = true end
  end
  local out = {}
  local vdss, err = client:list_all(VDS, { namespace = ns })
  if not vdss then error(err, 0) end
  for _, s in ipairs(vdss) do
    if disks[s.spec.virtualDiskName] and annotation(s, M.FROZEN_AT) and not (skip and skip(s)) then out[#out + 1] = s end
  end
  local vmss, verr = client:list_all(VMS, { namespace = ns })
  if not vmss then error(verr, 0) end
  for _, s in ipairs(vmss) do
    -- a VM snapshot holds the freeze while it is marked, and (b.2) while it
    -- is in progress and has not yet frozen and thawed
    local in_progress = s.status and s.status.phase == "InProgress" and not annotation(s, M.FREEZE_DURATION)
    if s.spec.virtualMachineName == vm.metadata.name and (annotation(s, M.FROZEN_AT) or in_progress)
      and not (skip and skip(s)) then
      out[#out + 1] = s
    end
  end
  return out
end

local function same(a, b) return a.kind == b.kind and a.metadata.name == b.metadata.name end

--- May `obj` thaw the VM: nobody else holds its freeze?
function M.can_unfreeze(client, obj, vm, skip)
  if not vm then return false end
  local others = M.holders(client, vm, function(s) return same(s, obj) or (skip ~= nil and skip(s)) end)
  return #others == 0
end

--- Write annotations of a snapshot (a merge patch); the object is updated in place.
function M.annotate(client, obj, values)
  local res, err = client:patch(RESOURCE[obj.kind] or obj.kind, obj.metadata.name,
    { metadata = { annotations = values } }, { namespace = obj.metadata.namespace })
  if not res then return nil, err end
  obj.metadata.annotations = res.metadata.annotations
  obj.metadata.resourceVersion = res.metadata.resourceVersion
  return true
end

--- Freeze the VM for `obj` (a lease on the VM, the freeze through its API,
--- the mark), or join the freeze this controller holds on it (or held,
--- before a restart: the lease is adopted). Returns true and how: "frozen",
--- "joined", "held" (the object, read fresh, holds the freeze already) or
--- "done" (it froze and thawed already: a pass from a stale copy must not
--- freeze again); or nil, message, and "transient" for what a retry may fix.
function M.freeze_or_join(client, obj, vm)
  local _ <close> = guest.lock(vm)
  local fresh, oerr, ocode = client:get(RESOURCE[obj.kind] or obj.kind, obj.metadata.name,
    { namespace = obj.metadata.namespace })
  if not fresh then return nil, oerr, ocode ~= "NotFound" and "transient" or nil end
  obj.metadata.annotations = fresh.metadata.annotations
  obj.metadata.resourceVersion = fresh.metadata.resourceVersion
  if M.frozen_at(obj) then return true, "held" end
  if annotation(obj, M.FREEZE_DURATION) then return true, "done" end
  local budget = M.budget(obj)
  local g, err = guest.for_vm(client, vm, { transport = "api" })
  if not g then return nil, err end
  local cur, gerr, gcode = g:refresh_vm()
  if not cur then return nil, gerr, gcode ~= "NotFound" and "transient" or nil end
  local lease = guest.parse_lease(cur)
  if lease then
    local mine = lease.holder == guest.holder() or guest.holder_alive(lease.holder) == false
    if mine and guest.lease_joinable(lease) then
      if lease.holder ~= guest.holder() then
        local ok, aerr = g:adopt_lease()
        if not ok then return nil, aerr, "transient" end
      end
      local since = vtime.parse(lease.since) or vtime.now()
      local ok, merr = M.annotate(client, obj, { [M.FROZEN_AT] = tostring(math.floor(since * 1000)) })
      if not ok then return nil, merr, "transient" end
      return true, "joined"
    end
    if not guest.lease_stale(lease) or (mine and (vtime.parse(lease.deadline) or 0) > vtime.now()) then
      -- held by another live process, or our own freeze at the end of its budget: later
      return nil, ("virtual machine %q is frozen by %s until %s"):format(vm.metadata.name,
        tostring(lease.holder), tostring(lease.deadline)), "transient"
    end
    -- expired: thaw what it left before freezing anew
    local r, terr = g:do_thaw()
    if r == nil then return nil, terr, "transient" end
    g:drop_lease(true)
  end
  local ok, lerr, lcode = g:take_lease(budget)
  if not ok then return nil, lerr, lcode ~= "NotFound" and "transient" or nil end
  local r, ferr = g:do_freeze(budget)
  if r == nil then
    g:drop_lease()
    return nil, ferr
  end
  local ok2, perr = M.annotate(client, obj, { [M.FROZEN_AT] = tostring(math.floor(vtime.now() * 1000)) })
  if not ok2 then
    -- cannot record that we hold it: give the freeze back
    g:do_thaw()
    g:drop_lease()
    return nil, perr, "transient"
  end
  return true, "frozen"
end

--- Leave the VM's freeze: thaw it when nobody else holds it (`skip` leaves
--- holders out of that count) or when forced (the budget is spent), drop the
--- lease, remove the mark and record how long the guest was frozen
--- (`vmsnap.io/freeze-duration-ms`). Returns true ("done" when the object,
--- read fresh, had left already), or nil, message.
function M.leave(client, obj, vm, force, skip)
  local _ <close> = vm and guest.lock(vm) or nil
  if M.frozen_at(obj) then
    -- the copy may be stale (a cache behind the server): has it left already?
    local fresh, err, code = client:get(RESOURCE[obj.kind] or obj.kind, obj.metadata.name,
      { namespace = obj.metadata.namespace })
    if not fresh and code ~= "NotFound" then return nil, err end
    if fresh then
      obj.metadata.annotations = fresh.metadata.annotations
      obj.metadata.resourceVersion = fresh.metadata.resourceVersion
    end
    if not fresh or not M.frozen_at(obj) then return true, "done" end
  end
  local frozen_at = M.frozen_at(obj)
  if vm and (force or M.can_unfreeze(client, obj, vm, skip)) then
    local g = guest.for_vm(client, vm, { transport = "api" })
    -- a holder whose freeze has no lease any more was thawed already (by the
    -- VM snapshot it belongs to, or at the budget): nothing to thaw
    local cur = frozen_at and not force and g:refresh_vm()
    if not (cur and not guest.parse_lease(cur)) then
      local r, err = g:do_thaw()
      if r == nil then return nil, err end
      g:drop_lease(true)
    end
  end
  if frozen_at then
    local now = math.floor(vtime.now() * 1000)
    M.annotate(client, obj, { [M.FROZEN_AT] = json.null, [M.FREEZE_DURATION] = tostring(math.max(0, now - frozen_at)) })
  end
  return true
end

--- A freeze lease of this process (or of a dead one) that nobody holds any
--- more is thawed, whatever the VM's FilesystemFrozen says yet.
function M.release_if_last(client, obj, vm)
  if not vm then return true end
  local lease = guest.parse_lease(vm)
  if not lease then return true end
  if lease.holder ~= guest.holder() and guest.holder_alive(lease.holder) ~= false then return true end
  return M.leave(client, obj, vm, false)
end

return M
