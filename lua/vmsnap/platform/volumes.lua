--- vmsnap.platform.volumes: the local platform's storage — a provisioner
--- and a CSI snapshotter for the driver "local.vmsnap.io", whose volumes are
--- sparse files under DATA/volumes and whose snapshots are reflink or sparse
--- copies under DATA/snapshots.
---
--- Provisioner (PersistentVolumeClaims of a StorageClass with that
--- provisioner): a PV `pvc-<uid>` backed by a file of the requested size (or
--- a copy of a VolumeSnapshot when the PVC's dataSource names one), bound to
--- the claim; a larger request expands the file (after the StorageClass
--- parameter `resizeLatency`, when set); deleting the claim deletes the PV
--- and the file.
---
--- Snapshotter (VolumeSnapshots of a class with that driver): at the cut the
--- volume file is copied and the VolumeSnapshotContent `snapcontent-<uid>`
--- records it; the VolumeSnapshot gets `creationTime`, `restoreSize`, then
--- `readyToUse`. The class's parameters inject latency and failures:
--- `cutLatency` and `readyLatency` (durations: "200ms", "1s"), `failAt`
--- ("cut" or "ready") with `failMessage`. A content whose VolumeSnapshot is
--- being deleted or gone (another of that name is not it: the uid decides)
--- goes with its file under the policy Delete; the VolumeSnapshot carries no
--- finalizer of the snapshotter's for it (a write less per snapshot), so a
--- snapshot deleted while the snapshotter was down is cleaned up when it
--- next lists the contents.
local fs = require("vmsnap.fs")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local quantity = require("vmsnap.quantity")
local vtime = require("vmsnap.time")
local reconcile = require("vmsnap.reconcile")
local csi = require("vmsnap.csi")

local M = {}

M.DRIVER = "local.vmsnap.io"
M.PVC_FINALIZER = "local.vmsnap.io/volume"
--- the finalizer earlier versions put on each VolumeSnapshot: removed
--- where it is still found (a platform's data from before)
M.VS_FINALIZER = "local.vmsnap.io/snapshot"
M.RESIZE_SINCE = "local.vmsnap.io/resize-started-at"

local SC = "storageclasses.storage.k8s.io"
local VSC = "volumesnapshotclasses.snapshot.storage.k8s.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local CONTENT = "volumesnapshotcontents.snapshot.storage.k8s.io"
local PV = "persistentvolumes"

-- ------------------------------------------------------------ provisioner

local function storage_class(ctx, name)
  if name and name ~= "" then return ctx:get(SC, nil, name) end
  for _, sc in ipairs(ctx:list(SC)) do
    local a = sc.metadata.annotations or {}
    if a["storageclass.kubernetes.io/is-default-class"] == "true" then return sc end
  end
end

--- The file behind a bound claim (nil when not ours or not bound).
function M.volume_file(pv)
  local csi = pv and pv.spec and pv.spec.csi
  if csi and csi.driver == M.DRIVER then return csi.volumeHandle end
end

-- the claim's Resizing condition, as the external resizer sets it while a
-- volume is expanded
local function set_resizing(pvc, on)
  local kept = json.array()
  for _, c in ipairs(pvc.status.conditions or {}) do
    if c.type ~= "Resizing" then kept[#kept + 1] = c elseif on then return end
  end
  if on then
    kept[#kept + 1] = { type = "Resizing", status = "True", lastProbeTime = json.null,
      lastTransitionTime = vtime.format() }
  end
  pvc.status.conditions = #kept > 0 and kept or nil
end

local function provision(P, ctx, pvc)
  local sc = storage_class(ctx, pvc.spec.storageClassName)
  if not sc or sc.provisioner ~= M.DRIVER then return true end -- not ours
  local want = quantity.parse(pvc.spec.resources and pvc.spec.resources.requests
    and pvc.spec.resources.requests.storage or "0") or 0
  local pvname = "pvc-" .. pvc.metadata.uid
  local file = P.data .. "/volumes/" .. pvname .. ".img"
  if pvc.status and pvc.status.phase == "Bound" then
    -- expansion
    local pv = ctx:get(PV, nil, pvc.spec.volumeName)
    local f = M.volume_file(pv)
    local cap = quantity.parse(pvc.status.capacity and pvc.status.capacity.storage or "0") or 0
    if f and want > cap then
      -- StorageClass parameter resizeLatency: the expansion takes that long
      local lat = vtime.go_duration(sc.parameters and sc.parameters.resizeLatency or "0") or 0
      if lat > 0 then
        local since = tonumber((pvc.metadata.annotations or {})[M.RESIZE_SINCE] or "")
        local now = vtime.now()
        if not since then
          local res, err = ctx.client:patch("persistentvolumeclaims", pvc.metadata.name,
            { metadata = { annotations = { [M.RESIZE_SINCE] = ("%.3f"):format(now) } } },
            { namespace = pvc.metadata.namespace })
          if not res then return nil, err end
          pvc.metadata.resourceVersion = res.metadata.resourceVersion
          return { requeue_after = lat }
        end
        if now - since < lat then
          set_resizing(pvc, true)
          return { requeue_after = lat - (now - since) }
        end
      end
      assert(fs.truncate(f, want))
      pv.spec.capacity = { storage = quantity.format(want) }
      ctx.client:update(pv)
      pvc.status.capacity = { storage = quantity.format(want) }
      set_resizing(pvc, false)
      ctx:event("Normal", "VolumeResizeSuccessful", ("expanded to %s"):format(quantity.format(want)))
      if (pvc.metadata.annotations or {})[M.RESIZE_SINCE] then
        local res = ctx.client:patch("persistentvolumeclaims", pvc.metadata.name,
          { metadata = { annotations = { [M.RESIZE_SINCE] = json.null } } }, { namespace = pvc.metadata.namespace })
        if res then pvc.metadata.resourceVersion = res.metadata.resourceVersion end
      end
    end
    return true
  end
  local ds = pvc.spec.dataSource
  if ds and ds.kind == "VolumeSnapshot" then
    local vs = ctx:get(VS, pvc.metadata.namespace, ds.name)
    local content = vs and vs.status and vs.status.boundVolumeSnapshotContentName
      and ctx.client:get(CONTENT, vs.status.boundVolumeSnapshotContentName)
    if not (vs and vs.status and vs.status.readyToUse and content and content.status) then
      pvc.status = pvc.status or {}
      pvc.status.phase = "Pending"
      ctx:event("Normal", "WaitForSnapshot", ("waiting for VolumeSnapshot %q to be ready"):format(ds.name))
      return { requeue_after = 1 }
    end
    if not fs.exists(file) then
      local tmp = file .. ".tmp"
      local ok, err = fs.copy(content.status.snapshotHandle, tmp)
      if not ok then return nil, "restoring the snapshot: " .. tostring(err) end
      assert(fs.rename(tmp, file))
    end
  elseif not fs.exists(file) then
    local ok, err = fs.truncate(file, want)
    if not ok then return nil, err end
  end
  local st = fs.stat(file)
  if st and st.size < want then assert(fs.truncate(file, want)) end
  local size = math.max(want, st and st.size or 0)
  if not ctx:get(PV, nil, pvname) then
    local pv, err = ctx.client:create({ apiVersion = "v1", kind = "PersistentVolume", metadata = { name = pvname },
      spec = { capacity = { storage = quantity.format(size) }, accessModes = pvc.spec.accessModes or json.array({ "ReadWriteOnce" }),
        persistentVolumeReclaimPolicy = sc.reclaimPolicy or "Delete", storageClassName = sc.metadata.name,
        volumeMode = pvc.spec.volumeMode or "Filesystem",
        claimRef = { apiVersion = "v1", kind = "PersistentVolumeClaim", namespace = pvc.metadata.namespace,
          name = pvc.metadata.name, uid = pvc.metadata.uid },
        csi = { driver = M.DRIVER, volumeHandle = file } } })
    if not pv and select(3, ctx.client:get(PV, pvname)) ~= nil then return nil, err end
    if pv then
      pv.status = { phase = "Bound" }
      ctx.client:update_status(pv)
    end
  end
  if pvc.spec.volumeName ~= pvname then
    local res, err = ctx.client:patch("persistentvolumeclaims", pvc.metadata.name,
      { spec = { volumeName = pvname } }, { namespace = pvc.metadata.namespace })
    if not res then return nil, err end
    pvc.metadata.resourceVersion = res.metadata.resourceVersion
  end
  pvc.status = { phase = "Bound", capacity = { storage = quantity.format(size) },
    accessModes = pvc.spec.accessModes or json.array({ "ReadWriteOnce" }) }
  ctx:event("Normal", "ProvisioningSucceeded", ("provisioned volume %s"):format(pvname))
  return true
end

local function release(P, ctx, pvc)
  local pvname = pvc.spec.volumeName
  if pvname and pvname ~= "" then
    local pv = ctx.client:get(PV, pvname)
    local f = M.volume_file(pv)
    if pv and (pv.spec.persistentVolumeReclaimPolicy or "Delete") == "Delete" then
      ctx.client:delete(PV, pvname)
      if f then fs.remove(f) end
    end
  end
  return true
end

-- ------------------------------------------------------------ snapshotter

local function class_params(cls)
  local p = cls.parameters or {}
  return { cut = vtime.go_duration(p.cutLatency or "0") or 0, ready = vtime.go_duration(p.readyLatency or "0") or 0,
    fail_at = p.failAt, fail_message = p.failMessage or "injected failure" }
end

local function set_error(vs, msg)
  vs.status = vs.status or {}
  vs.status.error = { message = msg, time = vtime.format() }
  vs.status.readyToUse = false
end

local function snapshot(P, ctx, vs)
  local st = vs.status or {}
  if st.readyToUse or st.error then return true end
  local clsname = vs.spec.volumeSnapshotClassName
  local cls = clsname and ctx:get(VSC, nil, clsname)
  if not cls then
    if not clsname then return true end -- a class-less snapshot: not ours to guess
    set_error(vs, ("VolumeSnapshotClass %q not found"):format(clsname))
    return true
  end
  if cls.driver ~= M.DRIVER then return true end
  local params = class_params(cls)
  local cname = "snapcontent-" .. vs.metadata.uid
  local content = ctx:get(CONTENT, nil, cname)
  if not content or not content.status or not content.status.snapshotHandle then
    local pvcname = vs.spec.source and vs.spec.source.persistentVolumeClaimName
    local pvc = pvcname and ctx:get("persistentvolumeclaims", vs.metadata.namespace, pvcname)
    local pv = pvc and pvc.spec.volumeName and ctx:get(PV, nil, pvc.spec.volumeName)
    local file = M.volume_file(pv)
    if not (pvc and pvc.status and pvc.status.phase == "Bound" and file) then
      ctx:event("Normal", "SnapshotPending", ("waiting for the source claim %q to be bound"):format(tostring(pvcname)))
      return { requeue_after = 1 }
    end
    if not content then
      local err
      content, err = ctx.client:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotContent",
        metadata = { name = cname },
        spec = { deletionPolicy = cls.deletionPolicy or "Delete", driver = M.DRIVER,
          source = { volumeHandle = file }, volumeSnapshotClassName = clsname,
          volumeSnapshotRef = { apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshot",
            namespace = vs.metadata.namespace, name = vs.metadata.name, uid = vs.metadata.uid } } })
      if not content then return nil, err end
    end
    -- the cut (after the injected latency): the volume file is copied
    if params.cut > 0 then task.sleep(params.cut) end
    if params.fail_at == "cut" then
      set_error(vs, params.fail_message)
      return true
    end
    local snapfile = P.data .. "/snapshots/" .. cname .. ".img"
    local tmp = snapfile .. ".tmp"
    local ok, err = fs.copy(file, tmp)
    if not ok then
      set_error(vs, "copying the volume: " .. tostring(err))
      return true
    end
    assert(fs.rename(tmp, snapfile))
    local size = fs.stat(snapfile).size
    -- creationTime in ns, as a CSI driver reports it: also the moment the
    -- ready latency counts from; with none, ready in the same write
    content.status = { creationTime = math.floor(vtime.now() * 1e9), snapshotHandle = snapfile, restoreSize = size,
      readyToUse = params.ready <= 0 and params.fail_at ~= "ready" }
    local uerr, ucode
    content, uerr, ucode = ctx.client:update_status(content)
    if not content then
      -- the content went meanwhile (its snapshot was deleted): so does the copy
      if ucode == "NotFound" then fs.remove(snapfile) end
      return nil, uerr
    end
    vs.status = { boundVolumeSnapshotContentName = cname, creationTime = vtime.format(),
      restoreSize = quantity.format(size), readyToUse = false }
    if params.ready > 0 then return { requeue_after = params.ready } end
  end
  -- ready
  local cut = (tonumber(content.status.creationTime) or 0) / 1e9
  local left = params.ready - (vtime.now() - cut)
  if left > 0.001 and left <= params.ready then return { requeue_after = left } end
  if params.fail_at == "ready" then
    set_error(vs, params.fail_message)
    return true
  end
  if not content.status.readyToUse then
    content.status.readyToUse = true
    ctx.client:update_status(content)
  end
  vs.status = vs.status or {}
  vs.status.boundVolumeSnapshotContentName = cname
  vs.status.restoreSize = vs.status.restoreSize or quantity.format(content.status.restoreSize or 0)
  vs.status.creationTime = vs.status.creationTime or vtime.format()
  vs.status.readyToUse = true
  return true
end

-- a content of ours whose snapshot is being deleted or gone: deleted with
-- its file (policy Delete) or kept (Retain); the earlier versions'
-- finalizer comes off the snapshot
local function drop_content(ctx, content)
  if content.spec.driver ~= M.DRIVER or content.metadata.deletionTimestamp then return true end
  local ref = content.spec.volumeSnapshotRef or {}
  local vs = ref.name and ctx:get(VS, ref.namespace, ref.name)
  if vs and ref.uid and vs.metadata.uid ~= ref.uid then vs = nil end -- another snapshot of that name
  if vs and not vs.metadata.deletionTimestamp then return true end -- in use
  if (content.spec.deletionPolicy or "Delete") == "Delete" then
    local ok, err, code = ctx.client:delete(CONTENT, content.metadata.name)
    if not ok and code ~= "NotFound" then return nil, err, code end
    if content.status and content.status.snapshotHandle then fs.remove(content.status.snapshotHandle) end
  end
  for _, f in ipairs(vs and vs.metadata.finalizers or {}) do
    if f == M.VS_FINALIZER then -- (its deletion goes on: deleting it again changes nothing)
      return csi.delete_snapshot(ctx.client, vs.metadata.namespace, vs.metadata.name, M.VS_FINALIZER)
    end
  end
  return true
end

--- Controllers of the provisioner and the snapshotter (not started).
---@param client vmsnap.k8s.Client
---@param data string   the platform's data directory
function M.controllers(client, data)
  assert(fs.mkdir_p(data .. "/volumes"))
  assert(fs.mkdir_p(data .. "/snapshots"))
  local P = { data = data }
  local prov = reconcile.controller({ client = client, name = "local-provisioner", kind = "PersistentVolumeClaim",
    finalizer = M.PVC_FINALIZER,
    watches = { { kind = SC, map = function() return {} end }, { kind = PV, map = function() return {} end } },
    reconcile = function(ctx, pvc) return provision(P, ctx, pvc) end,
    finalize = function(ctx, pvc) return release(P, ctx, pvc) end })
  local snap = reconcile.controller({ client = client, name = "local-snapshotter", kind = "VolumeSnapshot",
    workers = 8, cache_reads = true,
    indexes = { local_snapshots_by_claim = function(vs)
      local claim = vs.spec and vs.spec.source and vs.spec.source.persistentVolumeClaimName
      return claim and { (vs.metadata.namespace or "") .. "/" .. claim } or {}
    end },
    watches = { { kind = VSC, map = function() return {} end },
      -- the contents it makes, cached (the bound snapshot is looked at again)
      { kind = CONTENT, map = function(content)
        local ref = content.spec and content.spec.volumeSnapshotRef
        return ref and ref.name and { (ref.namespace or "") .. "/" .. ref.name } or {}
      end },
      { kind = "persistentvolumeclaims", map = function(pvc, ctl)
        -- snapshots waiting for this claim (not those already cut)
        local keys = {}
        for _, vs in ipairs(ctl.primary and ctl.primary:by_index("local_snapshots_by_claim",
            pvc.metadata.namespace .. "/" .. pvc.metadata.name) or {}) do
          if not (vs.status and vs.status.boundVolumeSnapshotContentName) then keys[#keys + 1] = reconcile.key_of(vs) end
        end
        return keys
      end },
      { kind = PV, map = function() return {} end } },
    reconcile = function(ctx, vs) return snapshot(P, ctx, vs) end })
  local contents = reconcile.controller({ client = client, name = "local-snapshot-contents", kind = CONTENT,
    cache_reads = true,
    watches = { { kind = VS, map = function(vs, ctl)
      -- a snapshot being deleted, or gone (its DELETED event: the cache
      -- has it no more), concerns its content
      local inf = ctl:informer_for(VS)
      local cur = inf and inf:get(vs.metadata.namespace, vs.metadata.name)
      if cur and cur.metadata.uid == vs.metadata.uid and not cur.metadata.deletionTimestamp then return {} end
      return { vs.status and vs.status.boundVolumeSnapshotContentName or ("snapcontent-" .. tostring(vs.metadata.uid)) }
    end } },
    reconcile = function(ctx, content) return drop_content(ctx, content) end })
  return { prov, snap, contents }
end

return M
