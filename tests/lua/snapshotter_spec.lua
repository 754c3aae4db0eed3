-- The local platform's CSI snapshotter (vmsnap.platform.volumes): a
-- VolumeSnapshot's content and its file go when the snapshot is deleted
-- (policy Delete) and stay under Retain; a snapshot deleted during its cut,
-- or while the platform was down, leaves nothing behind; the finalizer
-- earlier versions put on each VolumeSnapshot comes off.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local fs = require("vmsnap.fs")
local task = require("vmsnap.task")
local h = require("helpers")

local G = "virtualization.deckhouse.io/v1alpha2"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local CONTENT = "volumesnapshotcontents.snapshot.storage.k8s.io"
local LEGACY = "local.vmsnap.io/snapshot"

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d1" },
  spec = { persistentVolumeClaim = { size = "8Mi" } } }))
local vd = assert(c:wait_for("vd", "d1", h.phase_is("Ready"), { timeout = 20 }))
local CLAIM = vd.status.target.persistentVolumeClaimName
for name, p in pairs({ retain = { "Retain" }, slowcut = { "Delete", { cutLatency = "1s" } } }) do
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = name },
    driver = "local.vmsnap.io", deletionPolicy = p[1], parameters = p[2] }))
end

local function snapshot(name, class, finalizers)
  return assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshot",
    metadata = { name = name, finalizers = finalizers },
    spec = { volumeSnapshotClassName = class, source = { persistentVolumeClaimName = CLAIM } } }))
end
local function ready(name)
  return assert(c:wait_for(VS, name, function(o) return o and o.status and o.status.readyToUse == true and o end,
    { timeout = 20 }))
end
local function content_of(vs) return c:get(CONTENT, "snapcontent-" .. vs.metadata.uid) end
-- true once pred() holds, within `secs`
local function soon(pred, secs)
  local stop = task.now() + (secs or 10)
  while task.now() < stop do
    if pred() then return true end
    task.sleep(0.05)
  end
  return pred()
end
-- the snapshot files of the platform's data directory
local function files()
  local out = {}
  for _, n in ipairs(fs.list(srv.data .. "/platform/snapshots") or fs.list(srv.data .. "/snapshots") or {}) do
    out[#out + 1] = n
  end
  return out
end

t.test("deleted under the policy Delete: the content and its file go; the snapshot carries no finalizer of ours", function()
  local vs = ready(snapshot("s-del", "local").metadata.name)
  for _, f in ipairs(vs.metadata.finalizers or {}) do t.ok(f ~= LEGACY, "no snapshotter finalizer on the snapshot") end
  local content = assert(content_of(vs))
  local file = content.status.snapshotHandle
  t.ok(fs.stat(file), "the snapshot's file exists: " .. tostring(file))
  assert(c:delete(VS, "s-del"))
  t.ok(soon(function() return c:get(CONTENT, content.metadata.name) == nil end), "the content is deleted")
  t.ok(soon(function() return fs.stat(file) == nil end), "and its file")
end)

t.test("under Retain the content and its file stay", function()
  local vs = ready(snapshot("s-keep", "retain").metadata.name)
  local content = assert(content_of(vs))
  assert(c:delete(VS, "s-keep"))
  t.ok(soon(function() return c:get(VS, "s-keep") == nil end), "the snapshot is gone")
  task.sleep(0.5)
  t.ok(c:get(CONTENT, content.metadata.name), "the content stays")
  t.ok(fs.stat(content.status.snapshotHandle), "and its file")
end)

t.test("a snapshot with the earlier versions' finalizer is deleted whole", function()
  local vs = ready(snapshot("s-old", "local", { LEGACY }).metadata.name)
  local content = assert(content_of(vs))
  assert(c:delete(VS, "s-old"))
  t.ok(soon(function() return c:get(VS, "s-old") == nil end), "the finalizer came off and the snapshot went")
  t.ok(soon(function() return c:get(CONTENT, content.metadata.name) == nil end), "with its content")
  t.ok(soon(function() return fs.stat(content.status.snapshotHandle) == nil end), "and its file")
end)

t.test("a snapshot deleted during its cut leaves no content and no file", function()
  local before = #files()
  local vs = snapshot("s-cut", "slowcut")
  t.ok(soon(function() return content_of(vs) ~= nil end, 5), "the content was made before the cut")
  assert(c:delete(VS, "s-cut"))
  task.sleep(1.5) -- past the cut
  t.ok(soon(function() return content_of(vs) == nil end), "no content")
  t.ok(soon(function() return #files() == before end), ("no file left: %d before, %d now"):format(before, #files()))
end)

t.test("a snapshot deleted while the platform was down: its content and file go when it is back", function()
  local vs = ready(snapshot("s-down", "local").metadata.name)
  local content = assert(content_of(vs))
  srv:stop()
  -- the API alone on the same data: the snapshot goes, nobody cleans up
  do
    local api <close> = h.apiserver({ data = srv.data })
    local c2 = assert(k8s.client({ kubeconfig = api.kubeconfig }))
    assert(c2:delete(VS, "s-down"))
    t.eq(c2:get(VS, "s-down"), nil, "deleted at once: no finalizer holds it")
    t.ok(c2:get(CONTENT, content.metadata.name), "the content is still there")
  end
  srv:start()
  c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  t.ok(soon(function() return c:get(CONTENT, content.metadata.name) == nil end, 20), "the content went at the start")
  t.ok(soon(function() return fs.stat(content.status.snapshotHandle) == nil end), "and its file")
end)

t.done()
