-- workflows/disk-snapshot.lua: the VirtualDiskSnapshot controller.
--
-- Behaviour: spec/snapshots.md b.3 (handlers VirtualDiskReady, LifeCycle,
-- Deletion), with vmsnap's Decisions: transient API errors are retried, not
-- terminal (1); a freeze is leased on the VM and bounded by a budget, and the
-- guest is thawed at the cut — as soon as the VolumeSnapshot has a
-- creationTime — unless the snapshot says `vmsnap.io/thaw-at: Ready` (3, 4);
-- the VolumeSnapshotClass may be omitted and is then resolved from the
-- disk's StorageClass (5).
--
-- Copy this file to a directory on VMSNAP_SCRIPTS_PATH (as
-- workflows/disk-snapshot.lua) to change it; each gate before the snapshot
-- is a file in preconditions/ (applies_to = {"disk-snapshot"}).
local csi = require("vmsnap.csi")
local freezes = require("vmsnap.freezes")
local workflow = require("vmsnap.workflow")
local vtime = require("vmsnap.time")
local objects = require("vmsnap.objects")
local condition, is_true_current, annotation = objects.condition, objects.is_true_current, objects.annotation
local capitalize = objects.capitalize

local W = {}

W.kind = "VirtualDiskSnapshot"
-- each pass reads the object from the API: a freeze, a hook or a create must
-- never follow from a copy the cache has not caught up on
W.fresh = true
W.finalizer = "virtualization.deckhouse.io/vdsnapshot-cleanup"
W.VS_FINALIZER = "virtualization.deckhouse.io/vdsnapshot-protection"
W.FROZEN_AT = freezes.FROZEN_AT             -- ms since the epoch, while this snapshot holds a freeze
W.FREEZE_DURATION = freezes.FREEZE_DURATION
W.THAW_AT = freezes.THAW_AT                 -- "Cut" (default) or "Ready"
W.BUDGET = freezes.BUDGET                   -- seconds (default 30)

local VD = "virtualdisks.virtualization.deckhouse.io"
local VM = "virtualmachines.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"

local COND_VD = "VirtualDiskReady"
local COND = "VirtualDiskSnapshotReady"

-- a VM is frozen for the snapshot controllers: FilesystemFrozen True/Frozen (b.2)
W.vm_frozen = freezes.vm_frozen

local function vm_agent_ready(vm) return objects.is_true(vm, "AgentReady") end

-- ------------------------------------------------------------ steps

--- b.3.1: the VirtualDiskReady condition.
function W.virtual_disk_ready(ctx, vds, facts)
  local name = vds.spec.virtualDiskName
  if vds.metadata.deletionTimestamp then
    return ctx:condition(COND_VD, "Unknown", "Unknown", "")
  end
  if (vds.status.phase or "") == "Ready" then
    return ctx:condition(COND_VD, "True", "VirtualDiskReady", "")
  end
  local vd = facts.vd
  if not vd then
    return ctx:condition(COND_VD, "False", "VirtualDiskNotReadyForSnapshotting",
      ("The virtual disk %q not found."):format(name))
  end
  if vd.metadata.deletionTimestamp then
    return ctx:condition(COND_VD, "False", "VirtualDiskNotReadyForSnapshotting",
      ("The virtual disk %q is in process of deletion."):format(name))
  end
  local phase = vd.status and vd.status.phase or ""
  if phase == "Ready" then
    local s = condition(vd, "Snapshotting")
    if not is_true_current(vd, "Snapshotting") then
      return ctx:condition(COND_VD, "False", "VirtualDiskNotReadyForSnapshotting", s and s.message or "")
    end
    return ctx:condition(COND_VD, "True", "VirtualDiskReady", "")
  end
  return ctx:condition(COND_VD, "False", "VirtualDiskNotReadyForSnapshotting",
    ("The virtual disk %q is in the %q phase: waiting for it to reach the Ready phase."):format(name, phase))
end

--- P1-P3: the VolumeSnapshot, the disk, and the disk's VM (an error when
--- the disk is attached to several).
function W.gather(ctx, vds)
  local ns = vds.metadata.namespace
  local facts = {}
  facts.vs = ctx:get(VS, ns, vds.metadata.name)
  facts.vd = ctx:get(VD, ns, vds.spec.virtualDiskName)
  local att = facts.vd and facts.vd.status and facts.vd.status.attachedToVirtualMachines or {}
  if #att >= 2 then
    return nil, ("the virtual disk %q is attached to multiple virtual machines"):format(vds.spec.virtualDiskName)
  end
  if #att == 1 then facts.vm = ctx:get(VM, ns, att[1].name) end
  local pvcname = facts.vd and facts.vd.status and facts.vd.status.target and facts.vd.status.target.persistentVolumeClaimName
  if pvcname and pvcname ~= "" then facts.pvc = ctx:get("persistentvolumeclaims", ns, pvcname) end
  return facts
end

local function fail(ctx, vds, reason, message)
  vds.status.phase = "Failed"
  ctx:condition(COND, "False", reason or "VirtualDiskSnapshotFailed", message)
end

-- The freeze is shared (vmsnap.freezes): this snapshot holds it from the
-- freeze (or join) to its cut, marked vmsnap.io/frozen-at; the last holder
-- out thaws. These wrappers are the steps a user's copy can change.
function W.can_unfreeze(ctx, vds, vm) return freezes.can_unfreeze(ctx.client, vds, vm) end
function W.freeze_or_join(ctx, vds, vm) return freezes.freeze_or_join(ctx.client, vds, vm) end
function W.thaw(ctx, vds, vm, force) return freezes.leave(ctx.client, vds, vm, force) end
function W.release_if_last(ctx, vds, vm) return freezes.release_if_last(ctx.client, vds, vm) end

-- run the preconditions (files in preconditions/): the first that fails keeps the snapshot Pending
function W.check_preconditions(ctx, vds, facts)
  for _, p in ipairs(workflow.preconditions("disk-snapshot")) do
    local ok, reason, message = p.check(ctx, vds, facts)
    if not ok then return false, reason or "WaitingForTheVirtualDisk", message or ("precondition " .. p.name) end
  end
  return true
end

-- 7c: the VolumeSnapshot
function W.create_volume_snapshot(ctx, vds, facts)
  local vd, pvc = facts.vd, facts.pvc
  local class = vds.spec.volumeSnapshotClassName
  if not class or class == "" then
    local sc = pvc and pvc.spec.storageClassName or (vd.status and vd.status.storageClassName)
    local c, err, code = csi.resolve_class(ctx.client, sc)
    if not c then
      if code == "NotFound" or code == "Ambiguous" then return nil, err, "permanent" end
      return nil, err
    end
    class = c
  end
  local ann = { accessModes = table.concat(pvc and pvc.status and pvc.status.accessModes or {}, ",") }
  if pvc and pvc.spec.storageClassName and pvc.spec.storageClassName ~= "" then ann.storageClass = pvc.spec.storageClassName end
  if pvc and pvc.spec.volumeMode then ann.volumeMode = pvc.spec.volumeMode end
  local vs, err, code = csi.create_snapshot(ctx.client, { namespace = vds.metadata.namespace, name = vds.metadata.name,
    pvc = vd.status.target.persistentVolumeClaimName, class = class, owner = vds, annotations = ann,
    finalizers = { W.VS_FINALIZER } })
  if not vs then return nil, err, code == "Conflict" and "permanent" or nil end
  return vs
end

--- b.3.2 with the Decisions. Returns a reconcile result.
function W.lifecycle(ctx, vds, facts)
  local st = vds.status
  local ns = vds.metadata.namespace
  local vd, vm, vs = facts.vd, facts.vm, facts.vs
  if vds.metadata.deletionTimestamp then
    st.phase = "Terminating"
    ctx:condition(COND, "Unknown", "Unknown", "")
    return true
  end
  if (st.phase or "") == "" then st.phase = "Pending" end
  if st.phase == "Failed" then
    local c = ctx:get_condition(COND)
    ctx:condition(COND, "False", c and c.reason or "VirtualDiskSnapshotFailed", c and c.message or "")
    return true
  end
  if st.phase == "Ready" then
    if not vs or not vs.status or vs.status.readyToUse ~= true then
      fail(ctx, vds, "Lost", ("The underlying volume snapshot %q is not ready to use."):format(tostring(st.volumeSnapshotName)))
      return { requeue_after = 1 }
    end
    st.volumeSnapshotName = vs.metadata.name
    ctx:condition(COND, "True", "VirtualDiskSnapshotReady", "")
    return true
  end
  -- Pending / InProgress: the gates (preconditions)
  local ok, reason, message = W.check_preconditions(ctx, vds, facts)
  if not ok then
    st.phase = "Pending"
    ctx:condition(COND, "False", reason, message)
    return { requeue_after = 5 } -- the watches bring the change it waits for; this is the safety net
  end
  local frozen_by_us = annotation(vds, W.FROZEN_AT) ~= nil
  local consistent_possible = not vm or (vm.status and vm.status.phase == "Stopped")
  if not vs then
    if vm and (vm.status and vm.status.phase) ~= "Stopped" and not W.vm_frozen(vm) and not frozen_by_us then
      local can_freeze = vm.status and vm.status.phase == "Running" and vm_agent_ready(vm)
      if can_freeze then
        if st.phase == "Pending" then
          st.phase = "InProgress"
          ctx:condition(COND, "False", "Snapshotting", "The snapshotting process has started.")
          return { requeue_after = 0.01 }
        end
        local fok, ferr, fkind = W.freeze_or_join(ctx, vds, vm)
        if fok and ferr == "done" then return { requeue_after = 0.01 } end -- a stale pass: look again
        if not fok then
          if fkind == "transient" then return nil, ferr end -- Decision 1
          fail(ctx, vds, "VirtualDiskSnapshotFailed",
            ("Failed to freeze virtual machine %s/%s: %s"):format(ns, vm.metadata.name, tostring(ferr)))
          return true
        end
        frozen_by_us = true
        -- Decision 3: issue the VolumeSnapshot right after the freeze (below)
      elseif vds.spec.requiredConsistency ~= false then
        st.phase = "Pending"
        local vphase = vm.status and vm.status.phase or ""
        local head = ("The virtual machine %q with an attached virtual disk %q is %s: the snapshotting of virtual disk might result in an inconsistent snapshot: ")
          :format(vm.metadata.name, vds.spec.virtualDiskName, vphase)
        if not vm_agent_ready(vm) then
          ctx:condition(COND, "False", "PotentiallyInconsistent", head ..
            "virtual machine agent is not ready and virtual machine cannot be frozen: waiting for virtual machine agent to be ready, or virtual machine will stop")
        else
          ctx:condition(COND, "False", "PotentiallyInconsistent", head ..
            "waiting for the virtual machine to be Stopped or the disk to be detached")
        end
        return { requeue_after = 5 }
      end
    end
    if st.phase == "Pending" then
      st.phase = "InProgress"
      ctx:condition(COND, "False", "Snapshotting", "The snapshotting process has started.")
      return { requeue_after = 0.01 }
    end
    local created, cerr, kind = W.create_volume_snapshot(ctx, vds, facts)
    if not created then
      if kind == "permanent" then
        fail(ctx, vds, "VirtualDiskSnapshotFailed", capitalize(cerr))
        return true
      end
      return nil, cerr -- transient (Decision 1): retried with back-off
    end
    st.phase = "InProgress"
    st.volumeSnapshotName = created.metadata.name
    ctx:condition(COND, "False", "Snapshotting",
      ("The snapshotting process for virtual disk %q has started."):format(vds.spec.virtualDiskName))
    if frozen_by_us then
      st.consistent = true -- frozen before the VolumeSnapshot was issued
      return { requeue_after = 0.05 }
    end
    return true
  end
  local state = csi.state(vs)
  if state.error then
    fail(ctx, vds, "VirtualDiskSnapshotFailed", ("VolumeSnapshot %q has an error: %s."):format(vs.metadata.name, state.error))
    return true
  end
  -- Decisions 3 and 4: thaw at the cut (or at Ready), and within the budget
  if frozen_by_us then
    local thaw_at_ready = freezes.thaw_at_ready(vds)
    local frozen_at = freezes.frozen_at(vds) or 0
    local budget = freezes.budget(vds)
    local elapsed = (vtime.now() * 1000 - frozen_at) / 1000
    local cut_done = (thaw_at_ready and state.ready) or (not thaw_at_ready and state.cut)
    if cut_done then
      st.consistent = true -- cut while frozen (the VolumeSnapshot may have been issued by a VM snapshot)
      local tok, terr = W.thaw(ctx, vds, vm, false)
      if not tok then return nil, terr end
      frozen_by_us = false
    elseif elapsed >= budget then
      -- the cut did not come in time: thaw; not consistent
      W.thaw(ctx, vds, vm, true)
      st.consistent = nil
      ctx:event("Warning", "FreezeBudgetExceeded",
        ("the snapshot was not cut within the freeze budget of %gs; the guest was thawed"):format(budget))
      if vds.spec.requiredConsistency ~= false then
        fail(ctx, vds, "VirtualDiskSnapshotFailed",
          ("The volume snapshot was not cut within the freeze budget of %gs: the snapshot is not consistent."):format(budget))
        return true
      end
      frozen_by_us = false
    else
      st.phase = "InProgress"
      st.volumeSnapshotName = vs.metadata.name
      ctx:condition(COND, "False", "Snapshotting",
        ("Waiting fot the volume snapshot %q to be ready to use."):format(vds.metadata.name))
      return { requeue_after = math.min(0.2, math.max(0.01, budget - elapsed)) }
    end
  end
  if not state.ready then
    st.phase = "InProgress"
    st.volumeSnapshotName = vs.metadata.name
    ctx:condition(COND, "False", "Snapshotting",
      ("Waiting fot the volume snapshot %q to be ready to use."):format(vds.metadata.name))
    return true
  end
  -- 10: ready; consistency from the VM state now (unless decided at the cut)
  if consistent_possible then
    st.consistent = true
  elseif vm and W.vm_frozen(vm) then
    st.consistent = true
    if W.can_unfreeze(ctx, vds, vm) then
      local tok, terr = W.thaw(ctx, vds, vm, false)
      if not tok then
        fail(ctx, vds, "VirtualDiskSnapshotFailed", capitalize(terr))
        return true
      end
    end
  end
  st.phase = "Ready"
  st.volumeSnapshotName = vs.metadata.name
  ctx:condition(COND, "True", "VirtualDiskSnapshotReady", "")
  local rok, rerr = W.release_if_last(ctx, vds, vm)
  if not rok then return nil, rerr end
  return true
end

--- The reconcile: gather, VirtualDiskReady, LifeCycle, and the deferred
--- thaw of a failed snapshot (b.3.2 preamble).
function W.reconcile(ctx, vds)
  vds.status = vds.status or {}
  local facts, err = W.gather(ctx, vds)
  if not facts then
    fail(ctx, vds, "VirtualDiskSnapshotFailed", capitalize(err))
    vds.status.observedGeneration = vds.metadata.generation
    return true
  end
  W.virtual_disk_ready(ctx, vds, facts)
  local res, lerr = W.lifecycle(ctx, vds, facts)
  -- a failed snapshot never leaves its VM frozen
  if vds.status.phase == "Failed" and facts.vm and (W.vm_frozen(facts.vm) or annotation(vds, W.FROZEN_AT)) then
    local ok, terr = W.thaw(ctx, vds, facts.vm, false)
    local c = ctx:get_condition(COND)
    if not ok and not c.message:lower():find(tostring(terr):lower(), 1, true) then
      ctx:condition(COND, "False", c.reason, ("%s, %s"):format(tostring(terr), c.message))
    end
  end
  vds.status.observedGeneration = vds.metadata.generation
  return res, lerr
end

--- b.3.3: deletion — the VolumeSnapshot goes (past our protection
--- finalizer), a VM this snapshot froze is thawed.
function W.finalize(ctx, vds)
  local ns = vds.metadata.namespace
  local ok, err = csi.delete_snapshot(ctx.client, ns, vds.metadata.name, W.VS_FINALIZER)
  if not ok then return nil, err end
  local facts = W.gather(ctx, vds)
  if facts and facts.vm and (W.vm_frozen(facts.vm) or annotation(vds, W.FROZEN_AT)) then
    local tok, terr = W.thaw(ctx, vds, facts.vm, false)
    if not tok then return nil, terr end
  end
  return true
end

--- What the controller watches, and how changes map to snapshots (b.0.5).
function W.watches()
  local function by_disk(ctl, ns, disk)
    local keys = {}
    for _, s in ipairs(ctl.primary and ctl.primary:list(ns) or {}) do
      if s.spec.virtualDiskName == disk then keys[#keys + 1] = ns .. "/" .. s.metadata.name end
    end
    return keys
  end
  return {
    { kind = VD, map = function(vd, ctl) return by_disk(ctl, vd.metadata.namespace, vd.metadata.name) end },
    { kind = VS, map = function(vs)
      local o = objects.owner(vs, "VirtualDiskSnapshot")
      return o and { vs.metadata.namespace .. "/" .. o } or {}
    end },
    { kind = VM, map = function(vm, ctl)
      local keys = {}
      for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or vm.spec.blockDeviceRefs or {}) do
        if r.kind == "VirtualDisk" then
          for _, k in ipairs(by_disk(ctl, vm.metadata.namespace, r.name)) do keys[#keys + 1] = k end
        end
      end
      return keys
    end },
    { kind = "persistentvolumeclaims", map = function(pvc, ctl)
      local keys = {}
      for _, r in ipairs(pvc.metadata.ownerReferences or {}) do
        if r.kind == "VirtualDisk" then
          for _, k in ipairs(by_disk(ctl, pvc.metadata.namespace, r.name)) do keys[#keys + 1] = k end
        end
      end
      return keys
    end },
  }
end

return W
