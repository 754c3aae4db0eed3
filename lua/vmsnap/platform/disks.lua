--- vmsnap.platform.disks: the local platform's VirtualDisk controller — the
--- parts of the virtualization platform the snapshot feature reads
--- (spec a.4, b.1, b.5): the claim `vd-<name>-<uid>`, phases and the Ready,
--- Snapshotting, Resizing and InUse conditions (phase Resizing while the
--- claim grows), capacity, the disks' VMs.
---
--- A blank disk (no dataSource) is provisioned here; a disk restored from a
--- VirtualDiskSnapshot (dataSource ObjectRef) is provisioned by the workflow
--- `workflows/disk-restore.lua` (found on the scripts path, so users can
--- replace it); everything after provisioning is the same for both.
local json = require("vmsnap.json")
local quantity = require("vmsnap.quantity")
local csi = require("vmsnap.csi")
local reconcile = require("vmsnap.reconcile")
local workflow = require("vmsnap.workflow")
local steps = require("vmsnap.reconcile.steps")
local object = require("vmsnap.k8s.object")

local M = {}

M.FINALIZER = "virtualization.deckhouse.io/vd-cleanup"
M.PVC_PROTECTION = "virtualization.deckhouse.io/vd-protection"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VM = "virtualmachines.virtualization.deckhouse.io"
local SC = "storageclasses.storage.k8s.io"

--- The claim name of a disk (a.4): vd-<name>-<uid>, at most 253 characters.
M.pvc_name = csi.claim_name

local MSG_RESIZE_STARTED = "The virtual disk resizing has started."
local MSG_RESIZE_REFUSED = "The virtual disk cannot be selected for resizing as it is currently snapshotting."

local function cond_true(ctx, t)
  local c = ctx:get_condition(t)
  return c and c.status == "True" and c.observedGeneration == ctx.obj.metadata.generation
end

function M.default_storage_class(ctx) return csi.default_storage_class(ctx:list(SC)) end

-- VMs using this disk (spec.blockDeviceRefs)
local function attached_vms(ctx, vd)
  local out = json.array()
  for _, vm in ipairs(ctx:list(VM, vd.metadata.namespace)) do
    local refs = (vm.status and vm.status.blockDeviceRefs) or vm.spec.blockDeviceRefs or {}
    for _, r in ipairs(refs) do
      if r.kind == "VirtualDisk" and r.name == vd.metadata.name then
        out[#out + 1] = { name = vm.metadata.name, mounted = vm.status and vm.status.phase == "Running" or false }
        break
      end
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

-- indexes of the shared cache: snapshots in progress by their disk, disks
-- by the snapshot they are restored from ("ns/name" both)
-- (only the snapshots in progress: neither Ready nor going away, b.1)
local function snapshots_by_disk(s)
  local ph = s.status and s.status.phase or ""
  if ph == "Ready" or ph == "Terminating" then return {} end
  return { (s.metadata.namespace or "") .. "/" .. tostring(s.spec and s.spec.virtualDiskName) }
end
local function disks_by_source(vd)
  local ref = vd.spec and vd.spec.dataSource and vd.spec.dataSource.objectRef
  if ref and ref.kind == "VirtualDiskSnapshot" and ref.name then return { (vd.metadata.namespace or "") .. "/" .. ref.name } end
  return {}
end

-- a snapshot of this disk is in progress (neither Ready nor going away)
local function snapshot_in_progress(ctx, vd)
  return ctx:index_has(VDS, "local_snapshots_by_disk", vd.metadata.namespace .. "/" .. vd.metadata.name)
end

-- b.1: Snapshotting, computed only for a Ready disk
local function snapshotting(ctx, vd)
  if vd.metadata.deletionTimestamp or not cond_true(ctx, "Ready") then return end
  local busy = snapshot_in_progress(ctx, vd)
  if not busy then
    ctx:remove_condition("Snapshotting")
  elseif cond_true(ctx, "Resizing") then
    ctx:condition("Snapshotting", "False", "NotAvailable",
      "The virtual disk cannot be selected for snapshotting as it is currently resizing.")
  else
    ctx:condition("Snapshotting", "True", "Snapshotting", "The virtual disk is selected for taking a snapshot.")
  end
end

local function provision_blank(ctx, vd)
  local spec = vd.spec.persistentVolumeClaim or {}
  local scname = spec.storageClassName
  local sc = scname and ctx:get(SC, nil, scname) or (not scname and M.default_storage_class(ctx)) or nil
  vd.status.phase = vd.status.phase or "Pending"
  if not sc then
    ctx:condition("StorageClassReady", "False", "StorageClassNotFound",
      scname and ("Storage class %q not found."):format(scname) or "No default storage class.")
    ctx:condition("Ready", "False", "StorageClassIsNotReady", "Storage class is not ready.")
    vd.status.phase = "Pending"
    return { requeue_after = 2 }
  end
  ctx:condition("StorageClassReady", "True", "StorageClassReady", "")
  vd.status.storageClassName = sc.metadata.name
  local size = spec.size or "1Gi"
  local name = M.pvc_name(vd)
  if not ctx:get("persistentvolumeclaims", vd.metadata.namespace, name) then
    local ok, err, reason = ctx.client:create({ apiVersion = "v1", kind = "PersistentVolumeClaim",
      metadata = { name = name, namespace = vd.metadata.namespace, finalizers = json.array({ M.PVC_PROTECTION }),
        ownerReferences = json.array({ { apiVersion = vd.apiVersion, kind = vd.kind, name = vd.metadata.name,
          uid = vd.metadata.uid, controller = true, blockOwnerDeletion = true } }) },
      spec = { storageClassName = sc.metadata.name, accessModes = json.array({ "ReadWriteOnce" }),
        volumeMode = "Filesystem", resources = { requests = { storage = tostring(size) } } } })
    if not ok and reason ~= "AlreadyExists" then return nil, err end
    ctx:event("Normal", "Provisioning", ("claim %s created"):format(name))
  end
  vd.status.target = { persistentVolumeClaimName = name }
  vd.status.phase = "Provisioning"
  vd.status.progress = "0%"
  ctx:condition("Ready", "False", "Provisioning", "PVC has created: waiting to be Bound.")
  return true
end

local function reconcile_disk(ctx, vd)
  vd.status = vd.status or {}
  local ds = vd.spec.dataSource
  local pvcname = vd.status.target and vd.status.target.persistentVolumeClaimName
  local pvc = pvcname and ctx:get("persistentvolumeclaims", vd.metadata.namespace, pvcname)
  local provisioned = vd.status.progress == "100%"
  if not pvc and not provisioned then
    if ds and ds.type == "ObjectRef" and ds.objectRef and ds.objectRef.kind == "VirtualDiskSnapshot" then
      local wf, err = workflow.load("disk-restore")
      if not wf then return nil, err end
      return steps.run(wf, ctx, vd)
    elseif ds then
      vd.status.phase = "Pending"
      ctx:condition("Ready", "False", "ProvisioningNotStarted",
        ("The data source %s is not supported by the local platform."):format(tostring(ds.type)))
      return true
    end
    return provision_blank(ctx, vd)
  end
  if not pvc then
    vd.status.phase = "PVCLost"
    ctx:condition("Ready", "False", "PVCLost", ("PVC %s not found."):format(tostring(pvcname)))
    return true
  end
  local pphase = pvc.status and pvc.status.phase
  if pphase == "Lost" then
    vd.status.phase = "PVCLost"
    ctx:condition("Ready", "False", "PVCLost", ("PVC %s is lost."):format(pvcname))
    return true
  end
  if pphase ~= "Bound" then
    if not provisioned then
      vd.status.phase = "Provisioning"
      ctx:condition("Ready", "False", "Provisioning",
        ("Waiting for the PersistentVolumeClaim %q to be Bound."):format(pvcname))
    end
    return true
  end
  -- Ready, and what happens to a Ready disk: attachment, resizing, snapshotting
  vd.status.progress = "100%"
  vd.status.capacity = pvc.status.capacity and pvc.status.capacity.storage
  vd.status.storageClassName = vd.status.storageClassName or pvc.spec.storageClassName
  vd.status.phase = "Ready"
  ctx:condition("Ready", "True", "Ready", "")
  local att = attached_vms(ctx, vd)
  vd.status.attachedToVirtualMachines = #att > 0 and att or nil
  if #att > 0 then
    ctx:condition("InUse", "True", "AttachedToVirtualMachine", "")
  else
    ctx:remove_condition("InUse")
  end
  local want = quantity.parse(vd.spec.persistentVolumeClaim and vd.spec.persistentVolumeClaim.size or "0") or 0
  local have = quantity.parse(pvc.spec.resources.requests.storage or "0") or 0
  local cap = quantity.parse(vd.status.capacity or "0") or 0
  local was = ctx:get_condition("Resizing")
  if want > have then
    -- from the snapshots themselves: raising the size bumps the generation,
    -- so the Snapshotting condition of the last pass is not current here
    -- (b.1: no expansion while a snapshot is in progress)
    if object.is_true(vd, "Snapshotting") or snapshot_in_progress(ctx, vd) then
      if not (was and was.reason == "NotAvailable") then
        ctx:event("Normal", "VirtualDiskResizingNotAvailable", MSG_RESIZE_REFUSED)
      end
      ctx:condition("Resizing", "False", "NotAvailable", MSG_RESIZE_REFUSED)
    else
      local ok, err = ctx.client:patch("persistentvolumeclaims", pvcname,
        { spec = { resources = { requests = { storage = quantity.format(want) } } } },
        { namespace = vd.metadata.namespace })
      if not ok then return nil, err end
      ctx:event("Normal", "VirtualDiskResizingStarted", "The virtual disk resizing has started")
      -- b.5 step 7: phase Resizing while the claim grows (the disk stays
      -- usable: its Ready condition stays True)
      vd.status.phase = "Resizing"
      ctx:condition("Resizing", "True", "InProgress", MSG_RESIZE_STARTED)
      snapshotting(ctx, vd)
      return { requeue_after = 0.5 }
    end
  elseif cap < have or object.is_true(pvc, "Resizing") then -- the claim's own condition, while it is expanded
    vd.status.phase = "Resizing"
    ctx:condition("Resizing", "True", "InProgress", MSG_RESIZE_STARTED)
    snapshotting(ctx, vd)
    return { requeue_after = 0.5 }
  else
    if was and was.status == "True" then
      ctx:event("Normal", "VirtualDiskResizingCompleted", "The virtual disk resizing has completed")
    end
    ctx:remove_condition("Resizing")
  end
  snapshotting(ctx, vd)
  return true
end

local function finalize_disk(ctx, vd)
  local name = vd.status and vd.status.target and vd.status.target.persistentVolumeClaimName or M.pvc_name(vd)
  local pvc = ctx.client:get("persistentvolumeclaims", name, { namespace = vd.metadata.namespace })
  if pvc then
    local kept = json.array()
    for _, f in ipairs(pvc.metadata.finalizers or {}) do
      if f ~= M.PVC_PROTECTION then kept[#kept + 1] = f end
    end
    ctx.client:patch("persistentvolumeclaims", name, { metadata = { finalizers = #kept > 0 and kept or json.null } },
      { namespace = vd.metadata.namespace })
    ctx.client:delete("persistentvolumeclaims", name, { namespace = vd.metadata.namespace })
  end
  return true
end

-- keys of the disks restored from the snapshot named `snapshot` in ns
local function restored_from(ctl, ns, snapshot)
  local keys = {}
  for _, vd in ipairs(ctl.primary and ctl.primary:by_index("local_disks_by_source", ns .. "/" .. snapshot) or {}) do
    keys[#keys + 1] = reconcile.key_of(vd)
  end
  return keys
end

--- The VirtualDisk controller (not started).
function M.controller(client)
  local function by_owner(obj)
    local keys = {}
    for _, r in ipairs(obj.metadata.ownerReferences or {}) do
      if r.kind == "VirtualDisk" then keys[#keys + 1] = (obj.metadata.namespace or "") .. "/" .. r.name end
    end
    return keys
  end
  return reconcile.controller({ client = client, name = "local-disks", kind = "VirtualDisk",
    finalizer = M.FINALIZER,
    indexes = { local_disks_by_source = disks_by_source },
    watches = {
      { kind = VDS, indexes = { local_snapshots_by_disk = snapshots_by_disk }, map = function(s, ctl)
        -- the snapshot's disk, and the disks restored from it
        local keys = restored_from(ctl, s.metadata.namespace, s.metadata.name)
        keys[#keys + 1] = s.metadata.namespace .. "/" .. s.spec.virtualDiskName
        return keys
      end },
      { kind = "persistentvolumeclaims", map = by_owner },
      { kind = VM, map = function(vm)
        local keys = {}
        for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or vm.spec.blockDeviceRefs or {}) do
          if r.kind == "VirtualDisk" then keys[#keys + 1] = vm.metadata.namespace .. "/" .. r.name end
        end
        return keys
      end },
      { kind = SC, map = function() return {} end },
      { kind = "volumesnapshots.snapshot.storage.k8s.io", map = function(vs, ctl)
        return restored_from(ctl, vs.metadata.namespace, vs.metadata.name)
      end },
    },
    reconcile = reconcile_disk, finalize = finalize_disk })
end

return M
