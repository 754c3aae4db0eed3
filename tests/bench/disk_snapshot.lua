-- The local platform's disk snapshots: create -> Ready latency with no
-- injected latency; the freeze window of a snapshot of a running VM's disk
-- with 200 ms cut latency and 1 s ready latency, thawing at the cut vs at
-- Ready; RSS of `vmsnap up` idle and with 1,000 snapshots stored.
local k8s = require("vmsnap.k8s")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.platform({ stderr = "null" })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local function rss_mb() return (tonumber((fs.read_file("/proc/" .. srv.proc:pid() .. "/status") or ""):match("VmRSS:%s*(%d+)")) or 0) / 1024 end
local function ready(name) return c:wait_for("vdsnapshot", name, function(o) return o and o.status and o.status.phase == "Ready" end, { timeout = 60 }) end
local function stats(xs)
  table.sort(xs)
  local function p(q) return xs[math.max(1, math.ceil(#xs * q))] end
  return ("median %.0f ms, p90 %.0f ms, max %.0f ms"):format(p(0.5), p(0.9), p(1))
end

task.sleep(1)
print(("rss idle: %.1f MB"):format(rss_mb()))
assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d1" }, spec = { persistentVolumeClaim = { size = "64Mi" } } }))
assert(c:wait_for("vd", "d1", function(o) return o and o.status and o.status.phase == "Ready" end, { timeout = 30 }))
local lat = {}
for i = 1, 20 do
  local t0 = task.now()
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "lat-" .. i }, spec = { virtualDiskName = "d1" } }))
  assert(ready("lat-" .. i))
  lat[i] = (task.now() - t0) * 1000
end
print("create -> Ready (unattached 64 MiB disk, no injected latency): " .. stats(lat))

-- a running VM with a real agent (needs loop mounts)
local probe, why = h.qga_env()
if probe then
  probe:cleanup()
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "root" }, spec = { persistentVolumeClaim = { size = "64Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1" },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root" } } } }))
  assert(c:wait_for("vm", "vm1", function(o)
    for _, x in ipairs(o and o.status and o.status.conditions or {}) do
      if x.type == "AgentReady" and x.status == "True" then return true end
    end
  end, { timeout = 30 }))
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "lat" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "200ms", readyLatency = "1s" } }))
  for _, mode in ipairs({ "Cut", "Ready" }) do
    local win = {}
    for i = 1, 5 do
      local name = ("win-%s-%d"):format(mode:lower(), i)
      assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot",
        metadata = { name = name, annotations = { ["vmsnap.io/thaw-at"] = mode } },
        spec = { virtualDiskName = "root", volumeSnapshotClassName = "lat" } }))
      local o = assert(ready(name))
      win[i] = tonumber(o.metadata.annotations["vmsnap.io/freeze-duration-ms"])
    end
    print(("freeze window, thaw at %s (200 ms cut, 1 s ready latency): %s"):format(mode, stats(win)))
  end
else
  print("freeze window: skipped (" .. tostring(why) .. ")")
end

-- 1,000 snapshots stored
local ts = {}
for w = 1, 8 do
  ts[w] = task.spawn(function()
    for i = w, 1000, 8 do
      assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "many-" .. i }, spec = { virtualDiskName = "d1" } }))
    end
  end)
end
local t0 = task.now()
assert(task.wait_all(ts))
for i = 1, 1000 do assert(ready("many-" .. i)) end
print(("1,000 snapshots created and Ready in %.1f s"):format(task.now() - t0))
task.sleep(2)
print(("rss with 1,000 snapshots (and their VolumeSnapshots and copies): %.1f MB"):format(rss_mb()))
