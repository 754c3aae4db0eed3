-- vmsnap.csi against `vmsnap serve`: class resolution (spec Decision 5),
-- VolumeSnapshots, waiting for the cut and readiness, restore PVCs, deletion.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local csi = require("vmsnap.csi")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local h = require("helpers")

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

local function sc(name, provisioner, annotations)
  return assert(c:create({ apiVersion = "storage.k8s.io/v1", kind = "StorageClass",
    metadata = { name = name, annotations = annotations }, provisioner = provisioner }))
end
local function vsc(name, driver, default)
  return assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = name, annotations = default and { [csi.DEFAULT_ANNOTATION] = "true" } or nil },
    driver = driver, deletionPolicy = "Delete" }))
end

t.test("class resolution: the storage class's annotation, the only class of its driver, the default", function()
  vsc("lvm-snap", "lvm.csi.example")
  vsc("nfs-a", "nfs.csi.example")
  vsc("nfs-b", "nfs.csi.example")
  sc("lvm", "lvm.csi.example")
  t.eq(assert(csi.resolve_class(c, "lvm")), "lvm-snap", "the only class of the driver")
  sc("nfs", "nfs.csi.example")
  local r, msg, code = csi.resolve_class(c, "nfs")
  t.eq(r, nil)
  t.eq(code, "Ambiguous")
  t.contains(msg, 'storage class "nfs"')
  t.contains(msg, "nfs-a, nfs-b")
  sc("nfs-pinned", "nfs.csi.example", { [csi.SC_ANNOTATION] = "nfs-b" })
  t.eq(assert(csi.resolve_class(c, "nfs-pinned")), "nfs-b", "the annotation wins")
  sc("pinned-missing", "nfs.csi.example", { [csi.SC_ANNOTATION] = "gone" })
  r, msg, code = csi.resolve_class(c, "pinned-missing")
  t.eq(code, "NotFound")
  t.contains(msg, '"gone"')
  sc("odd", "odd.csi.example")
  r, msg, code = csi.resolve_class(c, "odd")
  t.eq(code, "NotFound")
  t.contains(msg, 'no VolumeSnapshotClass has driver "odd.csi.example"')
  vsc("fallback", "other.csi.example", true)
  t.eq(assert(csi.resolve_class(c, "odd")), "fallback", "the default class")
  r, msg, code = csi.resolve_class(c, "missing-sc")
  t.eq(code, "NotFound")
  t.contains(msg, 'storage class "missing-sc" does not exist')
end)

t.test("create_snapshot is idempotent for the same PVC and refuses another", function()
  local owner = assert(c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = "snap-1" }, spec = { virtualDiskName = "disk-1" } }))
  local vs = assert(csi.create_snapshot(c, { namespace = "default", name = "snap-1", pvc = "vd-disk-1-x",
    class = "lvm-snap", owner = owner, finalizers = { "virtualization.deckhouse.io/vdsnapshot-protection" },
    annotations = { storageClass = "lvm" } }))
  t.eq(vs.spec.source.persistentVolumeClaimName, "vd-disk-1-x")
  t.eq(vs.metadata.ownerReferences[1].uid, owner.metadata.uid)
  t.eq(vs.metadata.finalizers[1], "virtualization.deckhouse.io/vdsnapshot-protection")
  local again = assert(csi.create_snapshot(c, { namespace = "default", name = "snap-1", pvc = "vd-disk-1-x" }))
  t.eq(again.metadata.uid, vs.metadata.uid)
  local _, msg, code = csi.create_snapshot(c, { namespace = "default", name = "snap-1", pvc = "other" })
  t.eq(code, "AlreadyExists")
  t.contains(msg, 'exists for PVC "vd-disk-1-x"')
end)

t.test("wait for the cut, then readiness; state reads restoreSize", function()
  local vs = assert(c:get("volumesnapshot", "snap-1"))
  t.eq(csi.state(vs).cut, false)
  task.spawn(function()
    task.sleep(0.2)
    vs.status = { creationTime = "2026-11-24T00:00:00Z", readyToUse = false }
    vs = assert(c:update_status(vs))
    task.sleep(0.2)
    vs.status.readyToUse = true
    vs.status.restoreSize = "5Gi"
    assert(c:update_status(vs))
  end)
  local cut = assert(csi.wait(c, "default", "snap-1", "cut", 5))
  t.eq(csi.state(cut).cut, true)
  t.eq(csi.state(cut).ready, false)
  local ready = assert(csi.wait(c, "default", "snap-1", "ready", 5))
  local st = csi.state(ready)
  t.eq(st.ready, true)
  t.eq(st.restore_size, 5 * 1024 * 1024 * 1024)
end)

t.test("a failed snapshot and a missing one end the wait with a code", function()
  local vs = assert(csi.create_snapshot(c, { namespace = "default", name = "bad", pvc = "p" }))
  vs.status = { error = { message = "the volume is gone", time = "2026-11-24T00:00:00Z" } }
  assert(c:update_status(vs))
  local r, msg, code = csi.wait(c, "default", "bad", "ready", 5)
  t.eq(r, nil)
  t.eq(code, "SNAPSHOT_FAILED")
  t.contains(msg, "the volume is gone")
  r, msg, code = csi.wait(c, "default", "never", "cut", 5)
  t.eq(code, "NotFound")
  r, msg, code = csi.wait(c, "default", "snap-1", "ready", 0.3)
  t.ok(r, "already ready: no wait")
end)

t.test("the restore PVC has the spec's shape (d.3 #47)", function()
  local owner = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDisk",
    metadata = { name = "r1", uid = "u-1" } }
  local pvc = csi.pvc_from_snapshot({ namespace = "default", name = "vd-r1-u-1", snapshot = "s1",
    storage_class = "sc1", volume_mode = "Block", access_modes = { "ReadWriteMany" }, size = 5 * 1024 ^ 3,
    owner = owner, finalizers = { "virtualization.deckhouse.io/vd-protection" } })
  t.eq(json.encode(pvc.spec.dataSource), '{"apiGroup":"snapshot.storage.k8s.io","kind":"VolumeSnapshot","name":"s1"}')
  t.eq(pvc.spec.storageClassName, "sc1")
  t.eq(pvc.spec.volumeMode, "Block")
  t.eq(pvc.spec.accessModes[1], "ReadWriteMany")
  t.eq(pvc.spec.resources.requests.storage, "5Gi")
  t.eq(pvc.metadata.finalizers[1], "virtualization.deckhouse.io/vd-protection")
  t.eq(pvc.metadata.ownerReferences[1].uid, "u-1")
  assert(c:create(pvc), "the server accepts it")
end)

t.test("delete_snapshot removes our finalizer and the snapshot", function()
  assert(c:patch("volumesnapshot", "snap-1", { metadata = { finalizers = { "virtualization.deckhouse.io/vdsnapshot-protection",
    "other/keep" } } }))
  assert(csi.delete_snapshot(c, "default", "snap-1", "virtualization.deckhouse.io/vdsnapshot-protection"))
  local vs = assert(c:get("volumesnapshot", "snap-1"))
  t.ok(vs.metadata.deletionTimestamp, "another finalizer still holds it")
  t.eq(#vs.metadata.finalizers, 1)
  assert(c:patch("volumesnapshot", "snap-1", { metadata = { finalizers = json.null } }))
  t.eq(select(3, c:get("volumesnapshot", "snap-1")), "NotFound")
  t.ok(csi.delete_snapshot(c, "default", "snap-1"), "already gone is fine")
end)

t.done()
