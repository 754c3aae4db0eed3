-- workflows/disk-restore.lua: provisioning a VirtualDisk whose dataSource is
-- ObjectRef -> VirtualDiskSnapshot (spec/snapshots.md b.5, d.3). Called by the
-- platform's disk controller until the disk's claim exists; what follows
-- (Bound -> Ready, resizing to the requested size) is the disk controller's.
-- Copy it to a directory on VMSNAP_SCRIPTS_PATH to change it.
local csi = require("vmsnap.csi")
local quantity = require("vmsnap.quantity")

local W = {}

W.PVC_PROTECTION = "virtualization.deckhouse.io/vd-protection"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local SC = "storageclasses.storage.k8s.io"

local function not_ready(ctx, vd, name)
  vd.status.phase = "Pending"
  ctx:condition("DatasourceReady", "False", "VirtualDiskSnapshot", ("VirtualDiskSnapshot %q not ready."):format(name))
  ctx:condition("Ready", "False", "DatasourceIsNotReady", "Datasource is not ready for provisioning.")
end

--- Provision vd from its snapshot: returns a reconcile result.
function W.provision(ctx, vd)
  local ns = vd.metadata.namespace
  local name = vd.spec.dataSource.objectRef.name
  local vds = ctx:get(VDS, ns, name)
  local vs = vds and vds.status and vds.status.volumeSnapshotName and ctx:get(VS, ns, vds.status.volumeSnapshotName)
  if not (vds and vds.status and vds.status.phase == "Ready" and vs and vs.status and vs.status.readyToUse) then
    not_ready(ctx, vd, name)
    return { requeue_after = 2 }
  end
  ctx:condition("DatasourceReady", "True", "DatasourceReady", "")
  -- the StorageClassReady gate: the disk's class (or the default) must exist,
  -- although the claim takes the snapshot's class (e.5)
  local scname = vd.spec.persistentVolumeClaim and vd.spec.persistentVolumeClaim.storageClassName
  local sc = scname and ctx:get(SC, nil, scname) or (not scname and require("vmsnap.platform.disks").default_storage_class(ctx))
  if not sc then
    vd.status.phase = "Pending"
    ctx:condition("StorageClassReady", "False", "StorageClassNotFound",
      scname and ("Storage class %q not found."):format(scname) or "No default storage class.")
    ctx:condition("Ready", "False", "StorageClassIsNotReady", "Storage class is not ready.")
    return { requeue_after = 2 }
  end
  ctx:condition("StorageClassReady", "True", "StorageClassReady", "")
  local ann = vs.metadata.annotations or {}
  local size = vs.status.restoreSize
  local bytes = quantity.parse(size or "0") or 0
  local pvcname = require("vmsnap.platform.disks").pvc_name(vd)
  local modes = {}
  for m in (ann.accessModes or ""):gmatch("[^,]+") do modes[#modes + 1] = m end
  local pvc = csi.pvc_from_snapshot({ namespace = ns, name = pvcname, snapshot = vs.metadata.name,
    storage_class = ann.storageClass, volume_mode = ann.volumeMode, access_modes = #modes > 0 and modes or nil,
    size = bytes, owner = vd, finalizers = { W.PVC_PROTECTION } })
  local ok, err, reason = ctx.client:create(pvc)
  if not ok and reason ~= "AlreadyExists" then return nil, err end
  ctx:event("Normal", "DataSourceImportStarted", ("restoring from VirtualDiskSnapshot %q"):format(name))
  vd.status.phase = "Provisioning"
  vd.status.progress = "0%"
  vd.status.sourceUID = vds.metadata.uid
  vd.status.target = { persistentVolumeClaimName = pvcname }
  if ann.storageClass and ann.storageClass ~= "" then vd.status.storageClassName = ann.storageClass end
  ctx:condition("Ready", "False", "Provisioning", "PVC has created: waiting to be Bound.")
  return true
end

return W
