-- workflows/disk-snapshot.lua: the VirtualDiskSnapshot controller.
--
-- Behaviour: docs/behaviour.md b.3, with vmsnap's Decisions: transient
-- errors are retried (1); the freeze is shared with every other snapshot of
-- the VM's disks, bounded by a budget, and the guest is thawed at the cut
-- unless the snapshot says `vmsnap.io/thaw-at: Ready` (3, 4, 8); the
-- VolumeSnapshotClass may be omitted (5); `consistent` is decided at the
-- cut and written only at Ready (8); the gates are files in preconditions/
-- and run before the guest is touched (9).
--
-- The order of operations is W.steps (vmsnap.reconcile.steps); `vmsnap
-- workflow show disk-snapshot` prints it. To change one step, add
-- workflows/disk-snapshot.d/NAME.lua returning function(W) on
-- VMSNAP_SCRIPTS_PATH (docs/customizing.md); to add a gate, a file in
-- preconditions/ with applies_to = {"disk-snapshot"}.
local csi = require("vmsnap.csi")
local freezes = require("vmsnap.freezes")
local workflow = require("vmsnap.workflow")
local steps = require("vmsnap.reconcile.steps")
local errors = require("vmsnap.errors")
local object = require("vmsnap.k8s.object")
local vtime = require("vmsnap.time")

local W = {}

--- Seconds past its freeze's deadline that a VM snapshot's child waits for
--- the VM snapshot's verdict on its cut before it judges it unproven.
W.VERDICT_GRACE = 10

W.kind = "VirtualDiskSnapshot"
W.finalizer = "virtualization.deckhouse.io/vdsnapshot-cleanup"
--- The controller trusts its synced cache: an object it lacks does not exist
--- (a VolumeSnapshot not made yet is not looked up again).
W.cache_reads = true
W.VS_FINALIZER = "virtualization.deckhouse.io/vdsnapshot-protection"
W.condition = "VirtualDiskSnapshotReady"
W.failed_reason = "VirtualDiskSnapshotFailed"
W.reasons = { Lost = "Lost" }
W.message_style = "capitalize" -- failure messages as the reference writes them: no period added
--- Events (the reference's VirtualDiskSnapshot records none: Decision 14,
--- docs/behaviour.md): each phase entered, every wait that says something
--- new, and the failure (Warning).
W.events = { failed = "VirtualDiskSnapshottingFailed",
  wait = { Pending = "VirtualDiskSnapshottingPending" },
  phases = {
    InProgress = { "VirtualDiskSnapshottingStarted", function(vds)
      return ("The snapshot of the virtual disk %q has started."):format(vds.spec.virtualDiskName) end },
    Ready = { "VirtualDiskSnapshottingCompleted", function(vds)
      return ("The snapshot of the virtual disk %q is ready%s."):format(vds.spec.virtualDiskName,
        vds.status.consistent and " and consistent" or " (not consistent)") end },
  } }

local VD = "virtualdisks.virtualization.deckhouse.io"
local VM = "virtualmachines.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local COND_VD = "VirtualDiskReady"

-- Messages in the reference's wording, kept verbatim (typos included).
W.MSG = {
  DISK_NOT_FOUND = "The virtual disk %q not found.",
  DISK_DELETING = "The virtual disk %q is in process of deletion.",
  DISK_PHASE = "The virtual disk %q is in the %q phase: waiting for it to reach the Ready phase.",
  MULTI_ATTACHED = "the virtual disk %q is attached to multiple virtual machines",
  STARTED = "The snapshotting process has started.",
  DISK_STARTED = "The snapshotting process for virtual disk %q has started.",
  WAITING_READY = "Waiting fot the volume snapshot %q to be ready to use.", -- sic
  VS_ERROR = "VolumeSnapshot %q has an error: %s.",
  LOST = "The underlying volume snapshot %q is not ready to use.",
  FREEZE_FAILED = "Failed to freeze virtual machine %s/%s: %s",
  -- vmsnap's own (a VM snapshot's child whose VolumeSnapshot the VM snapshot issues)
  WAITING_PARENT = "Waiting for the virtual machine snapshot %q to issue the volume snapshot of the virtual disk %q.",
  PARENT_ENDED = "The virtual machine snapshot %q ended before it issued the volume snapshot of the virtual disk %q",
  PARENT_GONE = "The virtual machine snapshot %q is gone before it issued the volume snapshot of the virtual disk %q",
}
local MSG = W.MSG

-- a child of a VM snapshot whose VolumeSnapshot the VM snapshot issues
-- (freezes.BY_PARENT): the child neither freezes nor issues
local function by_parent(vds)
  return freezes.issued_by_parent(vds) and object.owner(vds, "VirtualMachineSnapshot") ~= nil
end

-- the freeze a VM snapshot's child's cut was taken under, when its parent
-- issued its VolumeSnapshot (and so judges the cut and thaws): the
-- VolumeSnapshot says it. Any other child — not marked (its VM was stopped
-- or could not be frozen when it was made), or given back its VolumeSnapshot
-- (the mark "false") — is a disk snapshot: a freeze of its own is its own to
-- judge and thaw.
local function parent_freeze(vds, vs)
  if not by_parent(vds) then return nil end
  return vs and freezes.frozen_at(vs)
end

-- does the VM snapshot judge this child's cut?
local function parent_judges(vds, vs)
  return by_parent(vds) and (parent_freeze(vds, vs) ~= nil or object.annotation(vds, freezes.CUT) ~= nil)
end

-- ------------------------------------------------------------ every pass

--- The facts of a pass (b.3.2 P1-P3): the VolumeSnapshot, the disk, its
--- claim and its VM; and the VirtualDiskReady condition (b.3.1).
function W.observe(ctx, vds)
  local ns = vds.metadata.namespace
  local f = {}
  f.vs = ctx:fetch(VS, ns, vds.metadata.name)
  f.vd = ctx:fetch(VD, ns, vds.spec.virtualDiskName)
  local att = f.vd and f.vd.status and f.vd.status.attachedToVirtualMachines or {}
  if #att >= 2 then return nil, MSG.MULTI_ATTACHED:format(vds.spec.virtualDiskName), "MultipleAttachments" end
  if #att == 1 then f.vm = ctx:fetch(VM, ns, att[1].name) end
  local target = f.vd and f.vd.status and f.vd.status.target
  local pvcname = target and target.persistentVolumeClaimName
  if pvcname and pvcname ~= "" then f.pvc = ctx:fetch("persistentvolumeclaims", ns, pvcname) end
  W.virtual_disk_ready(ctx, vds, f)
  return f
end

--- b.3.1: the VirtualDiskReady condition.
function W.virtual_disk_ready(ctx, vds, facts)
  local name = vds.spec.virtualDiskName
  local vd = facts.vd
  local function no(msg) return ctx:condition(COND_VD, "False", "VirtualDiskNotReadyForSnapshotting", msg) end
  if (vds.status.phase or "") == "Ready" then return ctx:condition(COND_VD, "True", "VirtualDiskReady", "") end
  if not vd then return no(MSG.DISK_NOT_FOUND:format(name)) end
  if vd.metadata.deletionTimestamp then return no(MSG.DISK_DELETING:format(name)) end
  local phase = vd.status and vd.status.phase or ""
  if phase ~= "Ready" then return no(MSG.DISK_PHASE:format(name, phase)) end
  if not object.is_true_current(vd, "Snapshotting") then
    local s = object.condition(vd, "Snapshotting")
    return no(s and s.message or "")
  end
  return ctx:condition(COND_VD, "True", "VirtualDiskReady", "")
end

--- While Ready (b.3.2 step 4): the VolumeSnapshot must stay ready to use.
function W.ready(ctx, vds, facts)
  local vs = facts.vs
  if not vs or not vs.status or vs.status.readyToUse ~= true then
    return nil, MSG.LOST:format(tostring(vds.status.volumeSnapshotName)), "Lost"
  end
  vds.status.volumeSnapshotName = vs.metadata.name
  ctx:condition(W.condition, "True", "VirtualDiskSnapshotReady", "")
  return true
end

-- ------------------------------------------------------------ the steps

--- Every gate: the files in preconditions/ for disk-snapshot.
function W.gates(ctx, vds, facts)
  return workflow.gates("disk-snapshot", ctx, vds, facts, "WaitingForTheVirtualDisk")
end

--- Pending -> InProgress. Before a freeze the status goes out first (the
--- pass ends here), so the object says InProgress before the guest is
--- touched; with no guest to freeze the pass goes on to the VolumeSnapshot
--- and its wait, and one status write says all three (Decision 15).
function W.start(ctx, vds, facts)
  vds.status.phase = "InProgress"
  ctx:condition(W.condition, "False", "Snapshotting", MSG.STARTED)
  if W.needs_freeze(ctx, vds, facts) then return steps.pause() end
  return true
end

--- Does the snapshot need the guest frozen: a VM that is not Stopped, and no
--- VolumeSnapshot issued yet?
function W.needs_freeze(ctx, vds, facts)
  local vm = facts.vm
  -- (a VolumeSnapshot that exists, issued under no freeze of this snapshot's
  -- — a VM snapshot's child carries its parent's —, was cut or is being cut
  -- without one: a freeze now would prove nothing about it)
  return vm ~= nil and (vm.status and vm.status.phase) ~= "Stopped" and ctx.memo.issued == nil
    and (facts.vs == nil or freezes.frozen_at(vds) ~= nil) and not by_parent(vds)
end

--- Freeze the guest, or join the freeze it is under (Decision 8).
function W.freeze(ctx, vds, facts)
  local vm = facts.vm
  local ok, phase, agent = freezes.can_freeze(vm)
  if not (ok or freezes.frozen_at(vds)) then
    if vds.spec.requiredConsistency == false then return true end -- without a freeze: not consistent
    return steps.wait("PotentiallyInconsistent", ("The virtual machine %q cannot be frozen now (phase %s, agent %s): waiting for it."):format(
      vm.metadata.name, phase, agent and "ready" or "not ready"), 2)
  end
  local fok, how, freeze = freezes.freeze_or_join(ctx, vds, vm)
  if not fok then
    if freeze == "QUEUED" then return steps.wait("FreezeQueued", how, 0.5) end
    if freeze == "BUSY" then return steps.wait("Snapshotting", steps.sentence(how), 1) end
    if errors.is_transient(freeze) then return nil, how, freeze end
    return nil, MSG.FREEZE_FAILED:format(vds.metadata.namespace, vm.metadata.name, tostring(how)), freeze
  end
  ctx.memo.freeze = freeze
  return true
end

--- The freeze's undo: leave it (the last holder out thaws; the budget forces it).
function W.leave(ctx, vds, outcome, facts)
  return freezes.leave(ctx, vds, facts.vm, { force = outcome == "Budget", freeze = ctx.memo.freeze })
end

--- b.3.2 step 7c: the VolumeSnapshot of `vds` for the disk in `facts`,
--- with the class `class` (the VM snapshot issues its children's with this
--- too, `frozen_at` the freeze it holds). Returns it, or nil, message, code.
function W.issue_volume_snapshot(client, vds, facts, class, frozen_at)
  local vd, pvc = facts.vd, facts.pvc
  local ann = { accessModes = table.concat(pvc and pvc.status and pvc.status.accessModes or {}, ",") }
  if frozen_at then ann[freezes.FROZEN_AT] = tostring(frozen_at) end
  if pvc and (pvc.spec.storageClassName or "") ~= "" then ann.storageClass = pvc.spec.storageClassName end
  if pvc and pvc.spec.volumeMode then ann.volumeMode = pvc.spec.volumeMode end
  return csi.create_snapshot(client, { namespace = vds.metadata.namespace, name = vds.metadata.name,
    pvc = vd.status.target.persistentVolumeClaimName, class = class, owner = vds, annotations = ann,
    finalizers = { W.VS_FINALIZER } })
end

--- Issue the VolumeSnapshot (right after the freeze: Decision 3); a VM
--- snapshot's child waits for the one its parent issues.
function W.volume_snapshot(ctx, vds, facts)
  local vs = facts.vs
  if not vs and by_parent(vds) then return W.wait_for_parent(ctx, vds) end
  local freeze = ctx.memo.freeze
  local at = freeze and freeze.at
  if not vs then
    local err, code
    vs, err, code = W.issue_volume_snapshot(ctx.client, vds, facts, ctx.memo.class or vds.spec.volumeSnapshotClassName, at)
    if not vs then return nil, err, code end
    facts.vs = vs
  end
  if at and freezes.frozen_at(vs) ~= tonumber(at) then
    -- issued before, under another freeze or none (a pass that was not
    -- recorded; one the cache had not seen yet, found by the create):
    -- this freeze proves nothing about its cut
    at = nil
  end
  local vm = facts.vm
  ctx.memo.issued = at or false
  freezes.note(ctx.memo.freeze, "issued")
  ctx.memo.offline = not vm or (vm.status and vm.status.phase) == "Stopped"
  vds.status.volumeSnapshotName = vs.metadata.name
  ctx:condition(W.condition, "False", "Snapshotting", MSG.DISK_STARTED:format(vds.spec.virtualDiskName))
  -- on to the cut in this pass: its wait (or the cut itself) is the status
  -- this pass writes, the VolumeSnapshot's name with it (Decision 15)
  return true
end

--- A child whose VolumeSnapshot its VM snapshot issues, before it is
--- issued: it waits, or fails when the VM snapshot ended without it (the
--- verdict "none") or is gone.
function W.wait_for_parent(ctx, vds)
  local parent = object.owner(vds, "VirtualMachineSnapshot")
  local disk = vds.spec.virtualDiskName
  if object.annotation(vds, freezes.CUT) ~= nil then
    return nil, MSG.PARENT_ENDED:format(parent, disk), "ParentFailed"
  end
  local p = ctx:fetch(VMS, vds.metadata.namespace, parent)
  if not (p and object.owned_by(vds, p)) then -- (gone, or another of that name)
    return nil, MSG.PARENT_GONE:format(parent, disk), "ParentFailed"
  end
  return steps.wait("Snapshotting", MSG.WAITING_PARENT:format(parent, disk))
end

local function vs_failed(vds, state)
  return nil, MSG.VS_ERROR:format(vds.metadata.name, state.error), "SnapshotFailed"
end

-- the snapshot says why it is not consistent (and fails when it must be)
local function judge(ctx, vds, consistent, why)
  ctx.memo.consistent = consistent or nil
  ctx.memo.why = not consistent and why or nil
  if not consistent and vds.spec.requiredConsistency ~= false then
    return nil, ("the snapshot is not consistent: %s"):format(why), "Inconsistent"
  end
  return true
end

--- Wait for the cut (Ready with thaw-at: Ready) or the end of the budget,
--- and decide consistency (Decisions 3, 4, 8).
function W.cut(ctx, vds, facts)
  local vs = facts.vs
  local state = csi.state(vs)
  if state.error then return vs_failed(vds, state) end
  local waiting = steps.wait("Snapshotting", MSG.WAITING_READY:format(vds.metadata.name))
  if parent_judges(vds, vs) then
    -- the VM snapshot judged the cut when it thawed
    local verdict = object.annotation(vds, freezes.CUT)
    if verdict == nil then
      -- it thaws by the freeze's deadline at the latest: a verdict that has
      -- not come W.VERDICT_GRACE seconds after it will not come
      local f = ctx.memo.freeze
      local at = parent_freeze(vds, vs)
      local deadline = f and f.deadline or (at and at / 1000 + freezes.budget(vds))
      if not deadline then return waiting end
      local late = vtime.now() - (deadline + W.VERDICT_GRACE)
      if late < 0 then return steps.wait(waiting.reason, waiting.message, math.max(0.2, -late)) end
      return judge(ctx, vds, false, "the virtual machine snapshot gave no verdict on the cut by its freeze's deadline")
    end
    return judge(ctx, vds, verdict == "consistent", "the virtual machine snapshot's freeze did not cover the cut")
  end
  local freeze = ctx.memo.freeze
  if not freeze or ctx.memo.issued ~= freeze.at then
    -- no freeze held: consistent only for a disk that was offline all along
    if not state.cut then return waiting end
    local vm = facts.vm
    local offline = ctx.memo.offline and (not vm or (vm.status and vm.status.phase) == "Stopped")
    return judge(ctx, vds, offline, ctx.memo.offline and "the virtual machine started before the cut"
      or "the guest was not frozen")
  end
  local reached, left = freezes.reached(vds, state.cut, state.ready, freeze)
  if reached then
    freezes.note(freeze, "cut")
    return judge(ctx, vds, freezes.held_now(ctx, vds, facts.vm, freeze))
  end
  if left > 0 then
    return steps.wait(waiting.reason, waiting.message, math.min(0.2, math.max(0.01, left)))
  end
  local why, err, code = freezes.overrun(ctx, vds, "freeze", "the volume snapshot was")
  if not why then return nil, err, code end
  return judge(ctx, vds, false, why)
end

--- Leave the freeze (the thaw when this was its last holder).
function W.thaw(ctx)
  return steps.release(ctx, "freeze", "Cut")
end

--- Wait for the VolumeSnapshot to be ready to use (b.3.2 steps 8-9).
function W.wait_ready(ctx, vds, facts)
  local state = csi.state(facts.vs)
  if state.error then return vs_failed(vds, state) end
  if not state.ready then return steps.wait("Snapshotting", MSG.WAITING_READY:format(vds.metadata.name)) end
  return true
end

--- Ready (b.3.2 step 11), consistent when the cut proved it.
function W.finish(ctx, vds, facts)
  local ok, err, code = freezes.release_if_last(ctx, vds, facts.vm)
  if not ok then return nil, err, code end
  vds.status.consistent = ctx.memo.consistent and true or nil
  vds.status.phase = "Ready"
  vds.status.volumeSnapshotName = facts.vs.metadata.name
  ctx:condition(W.condition, "True", "VirtualDiskSnapshotReady", "")
  return true
end

W.steps = steps.list({
  { name = "gates", phase = "Pending", run = W.gates, doc = "every precondition for disk-snapshot (preconditions/)" },
  { name = "start", phase = "Pending", run = W.start, doc = "InProgress" },
  { name = "freeze", when = W.needs_freeze, run = W.freeze, undo = W.leave, hold = true,
    doc = "freeze the VM's guest, or join the freeze it is under" },
  { name = "volume-snapshot", run = W.volume_snapshot, doc = "issue the VolumeSnapshot" },
  { name = "cut", run = W.cut, doc = "wait for the cut (or Ready with thaw-at: Ready) or the budget; judge it" },
  { name = "thaw", run = W.thaw, doc = "leave the freeze: the last holder thaws" },
  { name = "ready", run = W.wait_ready, doc = "wait for the VolumeSnapshot to be ready to use" },
  { name = "finish", run = W.finish, doc = "Ready; consistent when the cut proved it" },
})

--- Deletion (b.3.3): the owed undos ran (the freeze left); the
--- VolumeSnapshot goes, past our protection finalizer.
function W.cleanup(ctx, vds)
  return csi.delete_snapshot(ctx.client, vds.metadata.namespace, vds.metadata.name, W.VS_FINALIZER)
end

-- ------------------------------------------------------------ watches

-- the snapshots still in progress, by "namespace/disk": what a change of a
-- disk, its claim or its VM can concern
W.indexes = {
  active_by_disk = function(s)
    local ph = s.status and s.status.phase
    if ph == "Ready" or ph == "Failed" then return {} end
    return { s.metadata.namespace .. "/" .. s.spec.virtualDiskName }
  end,
}

--- What the controller watches, and how changes map to snapshots (b.0.5).
function W.watches()
  local function by_disk(ctl, ns, disk)
    local keys = {}
    for _, s in ipairs(ctl.primary:by_index("active_by_disk", ns .. "/" .. disk)) do
      keys[#keys + 1] = ns .. "/" .. s.metadata.name
    end
    return keys
  end
  return {
    { kind = VD, map = function(vd, ctl) return by_disk(ctl, vd.metadata.namespace, vd.metadata.name) end },
    -- classes resolved from the cache (Decision 5); a change concerns no snapshot
    { kind = "storageclasses.storage.k8s.io", map = function() return {} end },
    { kind = "volumesnapshotclasses.snapshot.storage.k8s.io", map = function() return {} end },
    { kind = VS, map = function(vs)
      local o = object.owner(vs, "VirtualDiskSnapshot")
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
