-- workflows/vm-snapshot.lua: the VirtualMachineSnapshot controller.
--
-- Behaviour: spec/snapshots.md b.4 (handlers VirtualMachineReady and
-- LifeCycle, the snapshot Secret of b.4.3), with vmsnap's Decisions:
--   1. transient errors are retried with back-off, not terminal;
--   2. a cleanup finalizer: Failed and deletion thaw a guest this snapshot
--      froze (when nobody else holds the freeze);
--   3. one freeze for the whole VM, then every disk's VolumeSnapshot issued
--      at once, and the thaw as soon as all of them are cut (or at Ready with
--      `vmsnap.io/thaw-at: Ready`); the Secret is written before the freeze,
--      so that the freeze window holds only the cuts;
--   4. a freeze budget (`vmsnap.io/freeze-budget`, default 30 s);
--   5. `spec.volumeSnapshotClasses` may be omitted: each disk's class is then
--      resolved from its StorageClass.
-- Hooks (vmsnap.hooks, docs/hooks.md) run at pre_snapshot (the pass that
-- starts it), pre_freeze / post_freeze (around the freeze), post_thaw (after
-- the thaw, and whenever pre_freeze ran), post_snapshot (at the end, any
-- outcome) and snapshot_failed.
--
-- Copy this file to workflows/vm-snapshot.lua in a directory of
-- VMSNAP_SCRIPTS_PATH to change it; every step is a function of W.
local csi = require("vmsnap.csi")
local json = require("vmsnap.json")
local base64 = require("vmsnap.base64")
local freezes = require("vmsnap.freezes")
local hooks = require("vmsnap.hooks")
local task = require("vmsnap.task")
local vtime = require("vmsnap.time")
local workflow = require("vmsnap.workflow")
local objects = require("vmsnap.objects")
local condition, is_true, is_true_current = objects.condition, objects.is_true, objects.is_true_current
local sentence, permanent, is_permanent = objects.sentence, objects.permanent, objects.is_permanent

local W = {}

W.kind = "VirtualMachineSnapshot"
-- each pass reads the object from the API: a freeze, a hook or a create must
-- never follow from a copy the cache has not caught up on
W.fresh = true
W.finalizer = "virtualization.deckhouse.io/vmsnapshot-protection"
W.SECRET_TYPE = "virtualmachine.virtualization.deckhouse.io/snapshot"

local G = "virtualization.deckhouse.io/v1alpha2"
local VM = "virtualmachines.virtualization.deckhouse.io"
local VD = "virtualdisks.virtualization.deckhouse.io"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VMIP = "virtualmachineipaddresses.virtualization.deckhouse.io"
local VMBDA = "virtualmachineblockdeviceattachments.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"

local COND_VM = "VirtualMachineReady"
local COND = "VirtualMachineSnapshotReady"

-- ------------------------------------------------------------ helpers

local vm_frozen = freezes.vm_frozen

--- Phase Failed with the reason (default VirtualMachineSnapshotFailed), a
--- Warning event, the message as a sentence.
function W.fail(ctx, vms, message, reason)
  vms.status.phase = "Failed"
  ctx:event("Warning", "VirtualMachineSnapshottingFailed", sentence(message))
  ctx:condition(COND, "False", reason or "VirtualMachineSnapshotFailed", sentence(message))
end

--- The hooks of this snapshot (selected by the VM), once per pass. A VM
--- whose hooks cannot be selected (a bad annotation, a broken file) fails
--- the snapshot.
function W.hooks(ctx, vms, vm)
  if not ctx.hook_runner then
    local ok, r = pcall(hooks.runner, { client = ctx.client, ctx = ctx, vm = vm, object = vms })
    if not ok then error(permanent(tostring(r)), 0) end
    ctx.hook_runner = r
  end
  return ctx.hook_runner
end

-- run a hook point once for this snapshot; a failure fails the snapshot
local function run_hooks(ctx, vms, vm, point)
  local hr = W.hooks(ctx, vms, vm)
  if hr:done(point) then return true end
  local ok, err, kind = hr:run(point)
  if ok then return true end
  if kind == "transient" then error(err, 0) end
  W.fail(ctx, vms, err, "HookFailed")
  return false
end

local function pending(ctx, vms, reason, message)
  vms.status.phase = "Pending"
  ctx:event("Normal", "VirtualMachineSnapshottingPending", message)
  ctx:condition(COND, "False", reason, message)
  -- the watches bring the change it waits for; this is the safety net
  ctx:requeue_after(2)
end

-- the objects as stored: with apiVersion and kind, whatever the cache gave
local function as_stored(obj, api_version, kind)
  local o = json.decode(json.encode(obj))
  o.apiVersion = o.apiVersion or api_version
  o.kind = o.kind or kind
  return o
end

local function encode_value(obj)
  -- the Secret's data holds base64(JSON); data itself is base64 on the wire
  return base64.encode(base64.encode(json.encode(obj)))
end

-- ------------------------------------------------------------ b.4.1

--- The VirtualMachineReady condition.
function W.virtual_machine_ready(ctx, vms, vm)
  local name = vms.spec.virtualMachineName
  if vms.metadata.deletionTimestamp then return ctx:condition(COND_VM, "Unknown", "Unknown", "") end
  if vms.status.phase == "Ready" then return ctx:condition(COND_VM, "True", "VirtualMachineReady", "") end
  if not vm then
    return ctx:condition(COND_VM, "False", "VirtualMachineNotReadyForSnapshotting",
      ("The virtual machine %q not found."):format(name))
  end
  if vm.metadata.deletionTimestamp then
    return ctx:condition(COND_VM, "False", "VirtualMachineNotReadyForSnapshotting",
      ("The virtual machine %q is in process of deletion."):format(name))
  end
  local phase = vm.status and vm.status.phase or ""
  if phase == "Running" or phase == "Stopped" then
    local s = condition(vm, "Snapshotting")
    if not (s and s.status == "True") then
      local msg = s and s.message ~= "" and s.message
        or "The VirtualMachineSnapshot resource has not been detected for the virtual machine yet."
      return ctx:condition(COND_VM, "False", "VirtualMachineNotReadyForSnapshotting", msg)
    end
    return ctx:condition(COND_VM, "True", "VirtualMachineReady", "")
  end
  return ctx:condition(COND_VM, "False", "VirtualMachineNotReadyForSnapshotting",
    ("The virtual machine %q is in the %q phase: waiting for it to reach the Running or Stopped phase."):format(name, phase))
end

-- ------------------------------------------------------------ steps

--- b.4.2 step 7: why the VM's block devices are not ready, or nil.
function W.block_devices_not_ready(ctx, vm)
  local name = vm.metadata.name
  if not is_true(vm, "BlockDevicesReady") then
    return ("block devices not ready: waiting for the block devices of the virtual machine %q to be ready"):format(name)
  end
  for _, r in ipairs(vm.status.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then
      local vd = ctx:get(VD, vm.metadata.namespace, r.name)
      if not vd or (vd.status and vd.status.phase) ~= "Ready" then
        return ("virtual disk not ready: waiting for the virtual disk %q to be Ready"):format(r.name)
      end
      if not is_true_current(vd, "Ready") then
        return ("virtual disk not ready: waiting for the Ready condition of the virtual disk %q to be True"):format(r.name)
      end
      if is_true_current(vd, "Resizing") then
        return ("virtual disk is in the process of resizing: waiting for the virtual disk %q to be resized"):format(r.name)
      end
    end
  end
end

--- The VM's IP address object, as b.4.3 stores it (nil when nothing is stored).
function W.stored_ip(ctx, vms, vm)
  local ipname = vm.status and vm.status.virtualMachineIPAddressName or ""
  if ipname == "" then return nil end -- no main network: nothing to keep (fixed upstream later)
  local ip = ctx.client:get(VMIP, ipname, { namespace = vm.metadata.namespace })
  if not ip then error(permanent(("the virtual machine ip address %q not found"):format(ipname)), 0) end
  ip = as_stored(ip, G, "VirtualMachineIPAddress")
  local named = (vm.spec.virtualMachineIPAddressName or "") ~= ""
  if ip.spec.type == "Static" then
    if not named then
      error(permanent("not possible to use static ip address with omitted .spec.VirtualMachineIPAddress, please report a bug"), 0)
    end
    return ip
  end
  if vms.spec.keepIPAddress == "Never" then
    return named and ip or nil
  end
  -- Always + Auto: a copy converted to Static (the live object is not touched)
  ip.spec.type = "Static"
  ip.spec.staticIP = ip.status and ip.status.address
  return ip
end

--- b.4.3: the data of the snapshot Secret. Errors are permanent.
function W.secret_data(ctx, vms, vm)
  local ns = vm.metadata.namespace
  local data = { vm = encode_value(as_stored(vm, G, "VirtualMachine")) }
  local ip = W.stored_ip(ctx, vms, vm)
  if ip then data.vmip = encode_value(ip) end
  local prov = vm.spec.provisioning
  if prov and prov.type ~= "UserData" then
    local ref = prov.type == "SysprepRef" and prov.sysprepRef or prov.userDataRef
    if not ref then error(permanent(("the virtual machine provisioning %s is empty"):format(tostring(prov.type))), 0) end
    if ref.kind ~= "Secret" then error(permanent(("unknown provisioning reference kind %q"):format(tostring(ref.kind))), 0) end
    local sec = ctx.client:get("secrets", ref.name, { namespace = ns })
    if not sec then error(permanent(("the virtual machine provisioning secret %q not found"):format(ref.name)), 0) end
    data.provisioner = encode_value(as_stored(sec, "v1", "Secret"))
  end
  local bdas = {}
  for _, r in ipairs(vm.status.blockDeviceRefs or {}) do
    if r.hotplugged then
      local b = ctx.client:get(VMBDA, r.virtualMachineBlockDeviceAttachmentName or "", { namespace = ns })
      if not b then
        error(permanent(("the virtual machine block device attachment %q not found"):format(
          tostring(r.virtualMachineBlockDeviceAttachmentName))), 0)
      end
      bdas[#bdas + 1] = as_stored(b, G, "VirtualMachineBlockDeviceAttachment")
    end
  end
  if #bdas > 0 then data.vmbdas = base64.encode(base64.encode(json.encode(json.array(bdas)))) end
  return data
end

--- Step 13: the Secret holding the VM's definition (created once).
function W.store(ctx, vms, vm)
  local ns = vms.metadata.namespace
  local name = vms.status.virtualMachineSnapshotSecretName
  if name and name ~= "" then
    local cur, err, code = ctx.client:get("secrets", name, { namespace = ns })
    if cur then return cur end
    if code ~= "NotFound" then error(err, 0) end
  end
  local secret = { apiVersion = "v1", kind = "Secret", type = W.SECRET_TYPE,
    metadata = { name = vms.metadata.name, namespace = ns, ownerReferences = json.array({ {
      apiVersion = G, kind = W.kind, name = vms.metadata.name, uid = vms.metadata.uid,
      controller = true, blockOwnerDeletion = true } }) },
    data = W.secret_data(ctx, vms, vm) }
  local res, err, code = ctx.client:create(secret)
  if not res then
    if code == "AlreadyExists" then
      -- ours, from a pass whose status write was lost? (owned by this snapshot)
      local cur = ctx.client:get("secrets", vms.metadata.name, { namespace = ns })
      for _, r in ipairs(cur and cur.metadata.ownerReferences or {}) do
        if r.uid == vms.metadata.uid then return cur end
      end
      error(permanent("failed to create restorer secret: " .. tostring(err)), 0)
    end
    if code == "Invalid" or code == "Forbidden" then error(permanent("failed to create restorer secret: " .. tostring(err)), 0) end
    error(err, 0)
  end
  return res
end

--- Step 14: one child per VirtualDisk of the VM (hot-plugged ones too).
function W.disk_snapshot_names(vms, vm)
  local names = json.array()
  for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then names[#names + 1] = ("%s-%s"):format(r.name, vms.metadata.uid) end
  end
  return names
end

--- The VolumeSnapshotClass for a storage class: from spec.volumeSnapshotClasses
--- (first match; none is a permanent error), or resolved when the list is
--- empty (Decision 5).
function W.class_for(ctx, vms, sc)
  local list = vms.spec.volumeSnapshotClasses or {}
  if #list > 0 then
    for _, m in ipairs(list) do
      if m.storageClassName == sc then return m.volumeSnapshotClassName end
    end
    error(permanent(("the volume snapshot class not found: please define the volume snapshot class for the storage class %q and recreate resource"):format(sc)), 0)
  end
  local c, err, code = csi.resolve_class(ctx.client, sc)
  if not c then
    if code == "NotFound" or code == "Ambiguous" then error(permanent(err), 0) end
    error(err, 0)
  end
  return c
end

--- Step 15: the child VirtualDiskSnapshot of one disk (existing or made),
--- with the facts the disk workflow needs to issue its VolumeSnapshot.
function W.ensure_child(ctx, vms, name, marks)
  local ns = vms.metadata.namespace
  local suffix = "-" .. vms.metadata.uid
  local disk = name:sub(1, #name - #suffix)
  if name:sub(-#suffix) ~= suffix or disk == "" then error(permanent(("bad child name %q"):format(name)), 0) end
  local vd = ctx:get(VD, ns, disk)
  if not vd then error(permanent(("the virtual disk %q not found"):format(disk)), 0) end
  local pvcname = vd.status and vd.status.target and vd.status.target.persistentVolumeClaimName or ""
  local pvc = pvcname ~= "" and ctx.client:get("persistentvolumeclaims", pvcname, { namespace = ns }) or nil
  if not pvc then
    error(permanent(("the persistent volume claim %q not found for the virtual disk %q"):format(pvcname, disk)), 0)
  end
  local child = ctx.client:get(VDS, name, { namespace = ns })
  if child then return child, { vd = vd, pvc = pvc } end
  local sc = pvc.spec.storageClassName
  if not sc or sc == "" then
    error(permanent(("the persistent volume claim %q doesn't have the storage class name"):format(pvcname)), 0)
  end
  local class = W.class_for(ctx, vms, sc)
  local res, err, code = ctx.client:create({ apiVersion = G, kind = "VirtualDiskSnapshot",
    metadata = { name = name, namespace = ns, annotations = marks,
      ownerReferences = json.array({ { apiVersion = G, kind = W.kind, name = vms.metadata.name,
        uid = vms.metadata.uid, controller = true, blockOwnerDeletion = true } }) },
    spec = { virtualDiskName = disk, volumeSnapshotClassName = class,
      requiredConsistency = vms.spec.requiredConsistency ~= false } })
  if not res then
    if code == "AlreadyExists" then
      res = ctx.client:get(VDS, name, { namespace = ns })
      if res then return res, { vd = vd, pvc = pvc } end
    end
    error(err, 0)
  end
  return res, { vd = vd, pvc = pvc }
end

--- Steps 14-15 with Decision 3: every child, and — when this snapshot holds
--- the freeze — every child's VolumeSnapshot, issued at once (one task per
--- disk). Returns the children (in order).
function W.ensure_children(ctx, vms, vm)
  local names = W.disk_snapshot_names(vms, vm)
  vms.status.virtualDiskSnapshotNames = names
  local frozen_at = freezes.frozen_at(vms)
  local marks = { [freezes.BUDGET] = tostring(freezes.budget(vms)),
    [freezes.THAW_AT] = freezes.thaw_at_ready(vms) and "Ready" or nil,
    [freezes.FROZEN_AT] = frozen_at and tostring(frozen_at) or nil }
  local disk = frozen_at and workflow.load("disk-snapshot")
  local children, errs, tasks = {}, {}, {}
  for i, name in ipairs(names) do
    tasks[i] = task.spawn(function()
      local ok, e = pcall(function()
        local child, facts = W.ensure_child(ctx, vms, name, marks)
        children[i] = child
        if disk and freezes.frozen_at(child) and not ctx.client:get(VS, name, { namespace = child.metadata.namespace }) then
          local vs, verr, kind = disk.create_volume_snapshot(ctx, child, facts)
          if not vs then error(kind == "permanent" and permanent(verr) or verr, 0) end
        end
      end)
      if not ok then errs[#errs + 1] = e end
    end)
  end
  task.wait_all(tasks)
  for _, e in ipairs(errs) do
    if is_permanent(e) then error(e, 0) end
  end
  if errs[1] then error(errs[1], 0) end
  return children
end

--- The state of the children's VolumeSnapshots: all cut? all ready?
function W.cuts(ctx, vms, children)
  local all_cut, all_ready = true, true
  for _, child in ipairs(children) do
    local vs = ctx:get(VS, child.metadata.namespace, child.metadata.name)
    local st = csi.state(vs)
    if not st.cut then all_cut = false end
    if not st.ready then all_ready = false end
  end
  return all_cut, all_ready
end

local function is_child(vms)
  return function(s)
    for _, r in ipairs(s.metadata.ownerReferences or {}) do
      if r.uid == vms.metadata.uid then return true end
    end
    return false
  end
end

--- Leave the freeze this snapshot holds (its own children do not count as
--- other holders); `force` when the budget is spent. Then the post_thaw
--- hooks owed (those whose pre_freeze ran, even if the freeze never came).
function W.thaw(ctx, vms, vm, force)
  if freezes.frozen_at(vms) then
    local ok, err = freezes.leave(ctx.client, vms, vm, force, is_child(vms))
    if not ok then return nil, err end
    if err ~= "done" then -- "done": a pass from a stale copy; thawed before
      ctx:event("Normal", "VirtualMachineSnapshottingThawed",
        ("The virtual machine %q is thawed."):format(vm and vm.metadata.name or vms.spec.virtualMachineName))
    end
  end
  local hok, hr = pcall(W.hooks, ctx, vms, vm)
  if hok and hr:any("post_thaw") then
    local ok, herr = hr:unwind("post_thaw")
    if not ok then return nil, herr end
  end
  return true
end

--- Step 19: status.resources.
function W.resources(ctx, vms, vm)
  local ns = vm.metadata.namespace
  local out = json.array()
  local function add(obj, api_version, kind)
    out[#out + 1] = { kind = obj.kind or kind, apiVersion = obj.apiVersion or api_version, name = obj.metadata.name }
  end
  add(vm, G, "VirtualMachine")
  if vms.spec.keepIPAddress == "Always" and (vm.status.virtualMachineIPAddressName or "") ~= "" then
    local ip = ctx.client:get(VMIP, vm.status.virtualMachineIPAddressName, { namespace = ns })
    if not ip then error(permanent(("the virtual machine ip address %q not found"):format(vm.status.virtualMachineIPAddressName)), 0) end
    add(ip, G, "VirtualMachineIPAddress")
  end
  local prov = vm.spec.provisioning
  local ref = prov and (prov.type == "SysprepRef" and prov.sysprepRef or prov.type == "UserDataRef" and prov.userDataRef)
  if ref and ref.kind == "Secret" then
    local sec = ctx.client:get("secrets", ref.name, { namespace = ns })
    if sec then add(sec, "v1", "Secret") end
  end
  for _, r in ipairs(vm.status.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then
      local vd = ctx:get(VD, ns, r.name)
      if vd then add(vd, G, "VirtualDisk") end
      if (r.virtualMachineBlockDeviceAttachmentName or "") ~= "" then
        local b = ctx.client:get(VMBDA, r.virtualMachineBlockDeviceAttachmentName, { namespace = ns })
        if b then add(b, G, "VirtualMachineBlockDeviceAttachment") end
      end
    end
  end
  return out
end

-- ------------------------------------------------------------ b.4.2

--- The lifecycle (b.4.2 with the Decisions). Returns a reconcile result.
function W.lifecycle(ctx, vms, vm)
  local st = vms.status
  local name = vms.spec.virtualMachineName
  if vms.metadata.deletionTimestamp then
    st.phase = "Terminating"
    ctx:condition(COND, "Unknown", "Unknown", "")
    return true
  end
  if (st.phase or "") == "" then st.phase = "Pending" end
  if st.phase == "Failed" then
    local c = ctx:get_condition(COND)
    ctx:condition(COND, "False", c and c.reason or "VirtualMachineSnapshotFailed", c and c.message or "")
    return true
  end
  if st.phase == "Ready" then
    local missing = {}
    for _, n in ipairs(st.virtualDiskSnapshotNames or {}) do
      if not ctx:get(VDS, vms.metadata.namespace, n) then missing[#missing + 1] = n end
    end
    if #missing > 0 then
      local msg = #missing == 1 and ("The underlying virtual disk snapshot (%s) is lost."):format(missing[1])
        or ("The underlying virtual disk snapshots (%s) are lost."):format(table.concat(missing, ", "))
      st.phase = "Failed"
      ctx:event("Warning", "VirtualMachineSnapshottingFailed", msg)
      ctx:condition(COND, "False", "VirtualDiskSnapshotLost", msg)
      return true
    end
    ctx:condition(COND, "True", "VirtualMachineSnapshotReady", "")
    return true
  end
  local frozen_by_us = freezes.frozen_at(vms) ~= nil
  if frozen_by_us and not vm then
    W.fail(ctx, vms, ("the virtual machine %q is gone while it was frozen for the snapshot"):format(name))
    return true
  end
  -- 6-10: re-checked while InProgress (unless this snapshot already holds the freeze)
  if not frozen_by_us then
    if not vm or not is_true(vms, COND_VM) then
      pending(ctx, vms, "WaitingForTheVirtualMachine",
        ("Waiting for the virtual machine %q to be ready for snapshotting."):format(name))
      return true
    end
    local why = W.block_devices_not_ready(ctx, vm)
    if why then
      pending(ctx, vms, "BlockDevicesNotReady", sentence(why))
      return true
    end
    if #(vm.status.restartAwaitingChanges or {}) > 0 then
      pending(ctx, vms, "RestartAwaitingChanges",
        ("Waiting for the restart and approval of changes to virtual machine %q before taking the snapshot."):format(name))
      return true
    end
  end
  local rc = vms.spec.requiredConsistency ~= false
  local vphase = vm and vm.status and vm.status.phase or ""
  local lease = require("vmsnap.guest").parse_lease(vm)
  local need_freeze = rc and vphase ~= "Stopped" and not frozen_by_us and not (vm_frozen(vm) and not lease)
  local can_freeze = vphase == "Running" and is_true(vm, "AgentReady")
  if need_freeze and not can_freeze then
    local head = ("The snapshotting of virtual machine %q might result in an inconsistent snapshot: "):format(name)
    if not is_true(vm, "AgentReady") then
      pending(ctx, vms, "PotentiallyInconsistent", head ..
        "virtual machine agent is not ready and virtual machine cannot be frozen: waiting for virtual machine agent to be ready or virtual machine will stop")
    else
      pending(ctx, vms, "PotentiallyInconsistent", head .. "waiting for the virtual machine to be Stopped")
    end
    return true
  end
  if st.phase == "Pending" then
    if not run_hooks(ctx, vms, vm, "pre_snapshot") then return true end
    st.phase = "InProgress"
    ctx:event("Normal", "VirtualMachineSnapshottingStarted", "The snapshotting process has started.")
    ctx:condition(COND, "False", "FileSystemFreezing", "The snapshotting process has started.")
    return { requeue_after = 0.01 }
  end
  -- 13 (before the freeze: the window holds only the cuts)
  local secret = W.store(ctx, vms, vm)
  st.virtualMachineSnapshotSecretName = secret.metadata.name
  -- 12: one freeze for the whole VM
  if need_freeze then
    if not run_hooks(ctx, vms, vm, "pre_freeze") then return true end
    local ok, how, fkind = freezes.freeze_or_join(ctx.client, vms, vm)
    if not ok then
      if fkind == "transient" then return nil, how end
      W.fail(ctx, vms, ("freeze the virtual machine %q: %s"):format(name, tostring(how)))
      return true
    end
    frozen_by_us = how ~= "done"
    if how == "frozen" or how == "joined" then
      ctx:event("Normal", "VirtualMachineSnapshottingFrozen",
        ("The virtual machine %q is frozen for taking a snapshot."):format(name))
    end
    if frozen_by_us and not run_hooks(ctx, vms, vm, "post_freeze") then return true end
  end
  -- 14-15: the children, and their VolumeSnapshots at once. Inside the freeze
  -- window, once they exist, the pass only looks at them (no API round trips).
  local children
  local names = st.virtualDiskSnapshotNames or {}
  if frozen_by_us and #names > 0 then
    children = {}
    for i, n in ipairs(names) do
      children[i] = ctx:get(VDS, vms.metadata.namespace, n)
      if not children[i] then children = nil break end
    end
  end
  children = children or W.ensure_children(ctx, vms, vm)
  for _, child in ipairs(children) do
    local c = condition(child, "VirtualDiskSnapshotReady")
    if (c and c.reason == "VirtualDiskSnapshotFailed") or (child.status and child.status.phase == "Failed") then
      error(permanent(("the virtual disk snapshot %q is failed: cannot take snapshot. %s"):format(
        child.metadata.name, c and c.message or "")), 0)
    end
  end
  local ready = 0
  for _, child in ipairs(children) do
    if child.status and child.status.phase == "Ready" then ready = ready + 1 end
  end
  local progress = ("Waiting for the virtual disk snapshots to be taken for the block devices of the virtual machine %q (%d/%d).")
    :format(name, ready, #children)
  -- Decisions 3 and 4: thaw at the cut (or at Ready), within the budget
  if frozen_by_us then
    local all_cut, all_ready = W.cuts(ctx, vms, children)
    local done = freezes.thaw_at_ready(vms) and all_ready or (not freezes.thaw_at_ready(vms) and all_cut)
    local budget = freezes.budget(vms)
    local elapsed = (vtime.now() * 1000 - (freezes.frozen_at(vms) or 0)) / 1000
    if done then
      local ok, terr = W.thaw(ctx, vms, vm, false)
      if not ok then return nil, terr end
    elseif elapsed >= budget then
      W.thaw(ctx, vms, vm, true)
      ctx:event("Warning", "FreezeBudgetExceeded",
        ("the disks were not cut within the freeze budget of %gs; the guest was thawed"):format(budget))
      if rc then
        W.fail(ctx, vms, ("the volume snapshots were not cut within the freeze budget of %gs: the snapshot is not consistent"):format(budget))
        return true
      end
    else
      st.phase = "InProgress"
      ctx:condition(COND, "False", "Snapshotting", progress)
      return { requeue_after = math.min(0.05, math.max(0.01, budget - elapsed)) }
    end
  end
  -- 16
  if ready < #children then
    st.phase = "InProgress"
    ctx:event("Normal", "VirtualMachineSnapshottingInProgress", progress)
    ctx:condition(COND, "False", "Snapshotting", progress)
    return true
  end
  -- 17
  local consistent = true
  for _, child in ipairs(children) do
    if not (child.status and child.status.consistent == true) then consistent = false end
  end
  st.consistent = consistent or nil
  -- 18: a freeze not ours (the VM was found frozen) is thawed by the reference's rule
  if vm and vphase == "Running" and vm_frozen(vm) and not lease and freezes.can_unfreeze(ctx.client, vms, vm, is_child(vms)) then
    local g = require("vmsnap.guest").for_vm(ctx.client, vm, { transport = "api" })
    local r, terr = g and g:do_thaw()
    if r == nil then
      W.fail(ctx, vms, "unfreeze the virtual machine: " .. tostring(terr))
      return true
    end
    ctx:event("Normal", "VirtualMachineSnapshottingThawed", ("The virtual machine %q is thawed."):format(name))
  end
  -- a freeze lease of this controller that nobody holds any more (a disk
  -- snapshot that left it to this one) goes now
  local rok, rerr = freezes.release_if_last(ctx.client, vms, vm)
  if not rok then return nil, rerr end
  -- 19-20
  st.resources = W.resources(ctx, vms, vm)
  local hr = W.hooks(ctx, vms, vm)
  if hr:any("post_snapshot") then
    local hok, herr = hr:unwind("post_snapshot", "Ready")
    if not hok then
      W.fail(ctx, vms, herr, "HookFailed")
      return true
    end
  end
  st.phase = "Ready"
  ctx:event("Normal", "VirtualMachineSnapshottingCompleted", "The snapshotting process is completed.")
  ctx:condition(COND, "True", "VirtualMachineReady", "")
  return true
end

--- The reconcile: VirtualMachineReady, LifeCycle; permanent errors fail the
--- snapshot, and a failed snapshot never leaves the guest frozen (Decision 2).
function W.reconcile(ctx, vms)
  vms.status = vms.status or {}
  local vm, verr = ctx:get(VM, vms.metadata.namespace, vms.spec.virtualMachineName)
  if not vm and verr then return nil, verr end -- the API failed: not "no such VM"
  W.virtual_machine_ready(ctx, vms, vm)
  local ok, res, lerr = pcall(W.lifecycle, ctx, vms, vm)
  if not ok then
    if is_permanent(res) then
      W.fail(ctx, vms, res.message)
      res, lerr = true, nil
    else
      res, lerr = nil, tostring(res)
    end
  end
  if vms.status.phase == "Failed" then
    -- Decision 2, then the hooks owed: post_thaw, snapshot_failed (once), post_snapshot
    local tok, terr = W.thaw(ctx, vms, vm, false)
    if not tok then
      local c = ctx:get_condition(COND)
      ctx:condition(COND, "False", c.reason, ("%s, %s"):format(tostring(terr), c.message))
    end
    local okh, hr = pcall(W.hooks, ctx, vms, vm)
    if okh then
      if not hr:done("snapshot_failed") and hr:any("snapshot_failed") then
        hr:mark_done("snapshot_failed")
        hr:run("snapshot_failed", "Failed")
      end
      if hr:any("post_snapshot") then hr:unwind("post_snapshot", "Failed") end
    end
  end
  vms.status.observedGeneration = vms.metadata.generation
  return res, lerr
end

--- Deletion (the cleanup finalizer): thaw a guest this snapshot froze; the
--- Secret and the children go with it (owner references).
function W.finalize(ctx, vms)
  local vm = ctx:get(VM, vms.metadata.namespace, vms.spec.virtualMachineName)
  local ok, err = W.thaw(ctx, vms, vm, false)
  if not ok then return nil, err end
  local okh, hr = pcall(W.hooks, ctx, vms, vm)
  if okh and hr:any("post_snapshot") then hr:unwind("post_snapshot", "Deleted") end
  return true
end

--- What the controller watches (b.0.5): the VM, the children and their
--- VolumeSnapshots, the VM's disks.
function W.watches()
  local function of_vm(ctl, ns, vmname)
    local keys = {}
    for _, s in ipairs(ctl.primary and ctl.primary:list(ns) or {}) do
      if s.spec.virtualMachineName == vmname then keys[#keys + 1] = ns .. "/" .. s.metadata.name end
    end
    return keys
  end
  local owner_of = objects.owner
  return {
    { kind = VM, map = function(vm, ctl) return of_vm(ctl, vm.metadata.namespace, vm.metadata.name) end },
    { kind = VDS, map = function(s)
      local o = owner_of(s, W.kind)
      return o and { s.metadata.namespace .. "/" .. o } or {}
    end },
    { kind = VS, map = function(vs, ctl)
      local vdsname = owner_of(vs, "VirtualDiskSnapshot")
      local inf = vdsname and ctl:informer_for(VDS)
      local child = inf and inf:get(vs.metadata.namespace, vdsname)
      local o = child and owner_of(child, W.kind)
      return o and { vs.metadata.namespace .. "/" .. o } or {}
    end },
    { kind = VD, map = function(vd, ctl)
      local keys = {}
      local inf = ctl:informer_for(VM)
      for _, vm in ipairs(inf and inf:list(vd.metadata.namespace) or {}) do
        for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or {}) do
          if r.kind == "VirtualDisk" and r.name == vd.metadata.name then
            for _, k in ipairs(of_vm(ctl, vm.metadata.namespace, vm.metadata.name)) do keys[#keys + 1] = k end
          end
        end
      end
      return keys
    end },
  }
end

return W
