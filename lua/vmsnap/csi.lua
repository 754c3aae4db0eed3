--- vmsnap.csi: the CSI snapshot primitives the workflows use —
--- VolumeSnapshotClass resolution, VolumeSnapshots for PVCs, waiting for the
--- cut or readiness, and PVCs restored from a snapshot.
---
---     local csi = require("vmsnap.csi")
---     local class = assert(csi.resolve_class(c, "fast-ssd"))         -- Decision 5
---     local vs = assert(csi.create_snapshot(c, { namespace = "ns", name = "snap-1",
---       pvc = "vd-disk-1-uid", class = class }))
---     vs = assert(csi.wait(c, "ns", "snap-1", "cut", 30))             -- status.creationTime
---     local st = csi.state(vs)                                         -- cut, ready, restore_size, error
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local quantity = require("vmsnap.quantity")
local object = require("vmsnap.k8s.object")
local errors = require("vmsnap.errors")

local M = {}

M.SC_ANNOTATION = "storage.deckhouse.io/volumesnapshotclass"
M.DEFAULT_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
--- The class of a VM snapshot's child VirtualDiskSnapshot on a server whose
--- schema lacks spec.volumeSnapshotClassName (the current upstream CRD).
M.CHILD_CLASS_ANNOTATION = "vmsnap.io/volume-snapshot-class"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local VSC = "volumesnapshotclasses.snapshot.storage.k8s.io"
local SC = "storageclasses.storage.k8s.io"

--- The VolumeSnapshotClass for volumes of a StorageClass (spec Decision 5):
--- the StorageClass's annotation storage.deckhouse.io/volumesnapshotclass,
--- else the only class whose driver is the StorageClass's provisioner, else
--- the only class annotated as the default. Returns the class name, or nil,
--- message (naming the storage class), code ("NotFound", "Ambiguous").
---@param client vmsnap.k8s.Client
---@param storage_class string
function M.resolve_class(client, storage_class)
  if type(storage_class) ~= "string" or storage_class == "" then
    return nil, "no storage class to resolve a VolumeSnapshotClass from", "NotFound"
  end
  local sc, err, reason = client:get(SC, storage_class)
  if not sc then
    if reason == "NotFound" then
      return nil, ("storage class %q does not exist"):format(storage_class), "NotFound"
    end
    return nil, err, reason
  end
  local ann = sc.metadata.annotations or {}
  local named = ann[M.SC_ANNOTATION]
  if named and named ~= "" then
    local cls, cerr, creason = client:get(VSC, named)
    if not cls then
      if creason == "NotFound" then
        return nil, ("storage class %q names VolumeSnapshotClass %q (annotation %s), which does not exist")
          :format(storage_class, named, M.SC_ANNOTATION), "NotFound"
      end
      return nil, cerr, creason
    end
    return named
  end
  local classes, lerr, lreason = client:list_all(VSC)
  if not classes then return nil, lerr, lreason end
  local by_driver, defaults = {}, {}
  for _, c in ipairs(classes) do
    if c.driver == sc.provisioner then by_driver[#by_driver + 1] = c.metadata.name end
    local a = c.metadata.annotations or {}
    if a[M.DEFAULT_ANNOTATION] == "true" then defaults[#defaults + 1] = c.metadata.name end
  end
  table.sort(by_driver)
  table.sort(defaults)
  if #by_driver == 1 then return by_driver[1] end
  if #defaults == 1 then return defaults[1] end
  if #by_driver > 1 or #defaults > 1 then
    local names = #by_driver > 1 and by_driver or defaults
    return nil, ("storage class %q: VolumeSnapshotClass is ambiguous (%s); annotate the storage class with %s or give the class explicitly")
      :format(storage_class, table.concat(names, ", "), M.SC_ANNOTATION), "Ambiguous"
  end
  return nil, ("storage class %q: no VolumeSnapshotClass has driver %q and none is the default; annotate the storage class with %s or give the class explicitly")
    :format(storage_class, tostring(sc.provisioner), M.SC_ANNOTATION), "NotFound"
end

--- The name of a VirtualDisk's claim: `vd-<disk>-<uid>` (docs/behaviour.md
--- a.4), as the platform names it; for a disk name too long for that, the
--- name is cut and a hash keeps it unique (object.bounded_name).
function M.claim_name(vd)
  return object.bounded_name("vd-" .. vd.metadata.name, vd.metadata.uid)
end

--- The default StorageClass (annotated storageclass.kubernetes.io/is-default-class),
--- from a list of StorageClasses, or nil.
function M.default_storage_class(classes)
  for _, sc in ipairs(classes or {}) do
    local a = sc.metadata.annotations or {}
    if a["storageclass.kubernetes.io/is-default-class"] == "true" then return sc end
  end
end

-- the VolumeSnapshot found where o's was to be made, when it is o's: of the
-- same claim (and of the same owner, when o has one)
local function same_snapshot(cur, o)
  local src = cur.spec and cur.spec.source and cur.spec.source.persistentVolumeClaimName
  if src ~= o.pvc then
    return nil, ("VolumeSnapshot %s/%s exists for PVC %q, not %q"):format(o.namespace, o.name, tostring(src), o.pvc),
      "AlreadyExists"
  end
  if cur.metadata.deletionTimestamp then
    -- (an earlier snapshot's of the same name, on its way out: wait for it)
    return nil, ("VolumeSnapshot %s/%s is being deleted: waiting to create it again"):format(o.namespace, o.name),
      "Conflict"
  end
  if o.owner and not object.owned_by(cur, o.owner) then
    return nil, ("VolumeSnapshot %s/%s exists and belongs to another %s %q"):format(o.namespace, o.name,
      o.owner.kind, o.owner.metadata.name), "AlreadyExists"
  end
  return cur
end

--- Create (or find, when it exists for the same PVC and owner) a
--- VolumeSnapshot. o: namespace, name, pvc, class, owner (an object: its
--- ownerReference is set), finalizers, labels, annotations. Returns the
--- VolumeSnapshot, or nil, message, code.
---
--- A create that fails the way a lost or garbled answer does (a transient
--- code: the request may or may not have been made) is looked up at once,
--- and made once more when it was not: a snapshot taken under a freeze need
--- not give its freeze back for one answer the network spoilt.
function M.create_snapshot(client, o)
  assert(o.namespace and o.name and o.pvc, "create_snapshot: namespace, name and pvc are required")
  local vs = { apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshot",
    metadata = { name = o.name, namespace = o.namespace, labels = o.labels, annotations = o.annotations,
      finalizers = o.finalizers and json.array(o.finalizers) or nil },
    spec = { source = { persistentVolumeClaimName = o.pvc }, volumeSnapshotClassName = o.class } }
  if o.owner then
    vs.metadata.ownerReferences = json.array({ { apiVersion = o.owner.apiVersion, kind = o.owner.kind,
      name = o.owner.metadata.name, uid = o.owner.metadata.uid } })
  end
  local res, err, reason, st
  for attempt = 1, 2 do
    res, err, reason, st = client:create(vs)
    if res then return res end
    if reason ~= "AlreadyExists" and not errors.is_transient(reason) then break end
    local cur, gerr, greason = client:get(VS, o.name, { namespace = o.namespace })
    if cur then return same_snapshot(cur, o) end
    if reason == "AlreadyExists" then return nil, gerr, greason end
    if greason ~= "NotFound" or attempt == 2 then break end
  end
  return nil, err, reason, st
end

--- What a VolumeSnapshot's status says: cut (creationTime set), ready
--- (readyToUse), restore_size (bytes), error (its message).
function M.state(vs)
  local st = vs and vs.status or {}
  local err = type(st.error) == "table" and st.error.message or nil
  return {
    cut = st.creationTime ~= nil and st.creationTime ~= json.null,
    ready = st.readyToUse == true,
    restore_size = st.restoreSize ~= nil and quantity.parse(st.restoreSize) or nil,
    error = err,
    creation_time = st.creationTime,
  }
end

--- Wait until a VolumeSnapshot is cut ("cut") or ready ("ready"). Returns it,
--- or nil, message, code: "SNAPSHOT_FAILED" (its status.error), "NotFound"
--- (it went away), "TIMEOUT".
function M.wait(client, namespace, name, what, timeout)
  what = what or "ready"
  local failure
  local res, err, code = client:wait_for(VS, name, function(vs)
    if vs == nil then
      failure = { ("VolumeSnapshot %s/%s does not exist"):format(namespace, name), "NotFound" }
      return true
    end
    local s = M.state(vs)
    if s.error then
      failure = { ("VolumeSnapshot %s/%s failed: %s"):format(namespace, name, s.error), "SNAPSHOT_FAILED" }
      return true
    end
    if what == "cut" then return s.cut end
    return s.ready
  end, { namespace = namespace, timeout = timeout or 300 })
  if failure then return nil, failure[1], failure[2] end
  return res, err, code
end

--- The PVC that restores a VolumeSnapshot (spec a.8 / d.3): o = namespace,
--- name, snapshot (the VolumeSnapshot's name), storage_class, size (a
--- quantity), volume_mode, access_modes (a list), owner, finalizers.
function M.pvc_from_snapshot(o)
  local pvc = { apiVersion = "v1", kind = "PersistentVolumeClaim",
    metadata = { name = o.name, namespace = o.namespace, finalizers = o.finalizers and json.array(o.finalizers) or nil },
    spec = {
      dataSource = { apiGroup = "snapshot.storage.k8s.io", kind = "VolumeSnapshot", name = o.snapshot },
      storageClassName = o.storage_class,
      volumeMode = o.volume_mode,
      accessModes = json.array(o.access_modes or { "ReadWriteOnce" }),
      resources = { requests = { storage = type(o.size) == "number" and quantity.format(o.size) or o.size } },
    } }
  if o.owner then
    pvc.metadata.ownerReferences = json.array({ { apiVersion = o.owner.apiVersion, kind = o.owner.kind,
      name = o.owner.metadata.name, uid = o.owner.metadata.uid, controller = true, blockOwnerDeletion = true } })
  end
  return pvc
end

--- Delete a VolumeSnapshot, removing our finalizer first (if given) so that
--- the deletion is not held by it. Returns true (also when already gone).
function M.delete_snapshot(client, namespace, name, finalizer)
  if finalizer then
    for _ = 1, 3 do
      local vs, err, reason = client:get(VS, name, { namespace = namespace })
      if not vs then
        if reason == "NotFound" then return true end
        return nil, err, reason
      end
      local kept, had = json.array(), false
      for _, f in ipairs(vs.metadata.finalizers or {}) do
        if f == finalizer then had = true else kept[#kept + 1] = f end
      end
      if not had then break end
      local ok, perr, preason = client:patch(VS, name, { metadata = {
        finalizers = #kept > 0 and kept or json.null, resourceVersion = vs.metadata.resourceVersion } },
        { namespace = namespace })
      if ok then break end
      if preason ~= "Conflict" then return nil, perr, preason end
      task.sleep(0.05)
    end
  end
  local ok, err, reason = client:delete(VS, name, { namespace = namespace })
  if not ok and reason ~= "NotFound" then return nil, err, reason end
  return true
end

return M
