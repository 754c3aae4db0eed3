-- workflows/disk-restore.lua: provisioning a VirtualDisk whose dataSource is
-- ObjectRef -> VirtualDiskSnapshot (docs/behaviour.md b.5, d.3). The
-- platform's disk controller runs these steps until the disk's claim
-- exists; what follows (Bound -> Ready, growing to the requested size) is
-- the disk controller's. `vmsnap workflow show disk-restore` prints the
-- steps; change one with workflows/disk-restore.d/ (docs/customizing.md).
local csi = require("vmsnap.csi")
local quantity = require("vmsnap.quantity")
local steps = require("vmsnap.reconcile.steps")

local W = {}

W.kind = "VirtualDisk"
W.condition = "Ready"
W.failed_reason = "ProvisioningFailed"
W.PVC_PROTECTION = "virtualization.deckhouse.io/vd-protection"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local SC = "storageclasses.storage.k8s.io"

-- Messages in the reference's wording.
W.MSG = {
  NOT_READY = "VirtualDiskSnapshot %q not ready.",
  DATASOURCE = "Datasource is not ready for provisioning.",
  CREATED = "PVC has created: waiting to be Bound.",
}

--- The snapshot and its VolumeSnapshot, every pass.
function W.observe(ctx, vd)
  local ns = vd.metadata.namespace
  local f = { name = vd.spec.dataSource.objectRef.name }
  f.vds = ctx:get(VDS, ns, f.name)
  local vsname = f.vds and f.vds.status and f.vds.status.volumeSnapshotName
  f.vs = vsname and ctx:get(VS, ns, vsname) or nil
  return f
end

--- The DatasourceReady gate: the snapshot is Ready and its VolumeSnapshot
--- ready to use.
function W.datasource(ctx, vd, facts)
  local vds, vs = facts.vds, facts.vs
  if not (vds and vds.status and vds.status.phase == "Ready" and vs and vs.status and vs.status.readyToUse) then
    ctx:condition("DatasourceReady", "False", "VirtualDiskSnapshot", W.MSG.NOT_READY:format(facts.name))
    return steps.wait("DatasourceIsNotReady", W.MSG.DATASOURCE)
  end
  ctx:condition("DatasourceReady", "True", "DatasourceReady", "")
  return true
end

--- The StorageClassReady gate: the disk's class (or the default) exists,
--- although the claim takes the snapshot's class (e.5).
function W.storage_class(ctx, vd)
  local pc = vd.spec.persistentVolumeClaim
  local scname = pc and pc.storageClassName
  local sc = scname and ctx:get(SC, nil, scname) or (not scname and csi.default_storage_class(ctx:list(SC))) or nil
  if not sc then
    ctx:condition("StorageClassReady", "False", "StorageClassNotFound",
      scname and ("Storage class %q not found."):format(scname) or "No default storage class.")
    return steps.wait("StorageClassIsNotReady", "Storage class is not ready.")
  end
  ctx:condition("StorageClassReady", "True", "StorageClassReady", "")
  return true
end

--- The claim restoring the VolumeSnapshot (b.5 step 5): class, mode and
--- access modes from its annotations, the size of its restoreSize.
function W.claim(ctx, vd, facts)
  local vs = facts.vs
  local ann = vs.metadata.annotations or {}
  local modes = {}
  for m in (ann.accessModes or ""):gmatch("[^,]+") do modes[#modes + 1] = m end
  local name = csi.claim_name(vd)
  local pvc = csi.pvc_from_snapshot({ namespace = vd.metadata.namespace, name = name, snapshot = vs.metadata.name,
    storage_class = ann.storageClass, volume_mode = ann.volumeMode, access_modes = #modes > 0 and modes or nil,
    size = quantity.parse(vs.status.restoreSize or "0") or 0, owner = vd, finalizers = { W.PVC_PROTECTION } })
  local ok, err, code = ctx.client:create(pvc)
  if not ok and code ~= "AlreadyExists" then return nil, err, code end
  ctx:event("Normal", "DataSourceImportStarted", ("restoring from VirtualDiskSnapshot %q"):format(facts.name))
  vd.status.phase = "Provisioning"
  vd.status.progress = "0%"
  vd.status.sourceUID = facts.vds.metadata.uid
  vd.status.target = { persistentVolumeClaimName = name }
  if (ann.storageClass or "") ~= "" then vd.status.storageClassName = ann.storageClass end
  ctx:condition("Ready", "False", "Provisioning", W.MSG.CREATED)
  return true
end

W.steps = steps.list({
  { name = "datasource", phase = "Pending", run = W.datasource, doc = "the snapshot is Ready, its VolumeSnapshot ready to use" },
  { name = "storage-class", phase = "Pending", run = W.storage_class, doc = "the disk's StorageClass exists" },
  { name = "claim", phase = "Pending", run = W.claim, doc = "the claim restoring the VolumeSnapshot" },
})

return W
