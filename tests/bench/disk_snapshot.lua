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

-- the API server's own count of requests (/metrics), by verb and resource
local function counts()
  local r = assert(srv:get("/metrics"))
  local out = {}
  for labels, v in r.body:gmatch("\napiserver_request_total{(.-)} (%d+)") do
    local sub = labels:match('subresource="(.-)"')
    local k = labels:match('verb="(.-)"') .. " " .. labels:match('resource="(.-)"') .. (sub ~= "" and ("/" .. sub) or "")
      .. " " .. labels:match('code="(.-)"')
    out[k] = (out[k] or 0) + tonumber(v)
  end
  return out
end
local function diff(a, b, skip)
  local rows, total = {}, 0
  for k, v in pairs(b) do
    local d = v - (a[k] or 0) - ((skip or {})[k] or 0)
    if d > 0 and not k:find("^GET metrics") then
      rows[#rows + 1] = ("%d %s"):format(d, k)
      total = total + d
    end
  end
  table.sort(rows, function(x, y) return x:match(" (.*)") < y:match(" (.*)") end)
  return total, table.concat(rows, ", ")
end
-- one snapshot, followed by GETs of its own (then not counted)
local function one(name)
  local a = counts()
  local t0 = task.now()
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name }, spec = { virtualDiskName = "d1" } }))
  local gets = 0
  while true do
    gets = gets + 1
    local o = c:get("vdsnapshot", name)
    if o and o.status and o.status.phase == "Ready" then break end
    task.sleep(0.01)
  end
  local dt = (task.now() - t0) * 1000
  task.sleep(1) -- writes after Ready (the step record, the disk's condition)
  local total, rows = diff(a, counts(), { ["GET virtualdisksnapshots 200"] = gets,
    ["POST virtualdisksnapshots 201"] = 1 })
  return dt, total, rows
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
local ms, total, rows = one("counted")
print(("API requests per disk snapshot, create -> Ready, by the server's count (ours and the local CSI's, "
  .. "the bench's own create and GETs not counted): %d in %.0f ms: %s"):format(total, ms, rows))
local events = tonumber(rows:match("(%d+) POST events")) or 0
h.bench_row("requests", ("%d + %d Events: %s"):format(total - events, events, rows:gsub("%d+ POST events 201, ", "")))

-- a running VM with a real agent (needs loop mounts)
local probe, why = h.qga_env()
if probe then
  probe:cleanup()
  h.running_vm(c, "vm1", "root", "64Mi")
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
local burst = task.now() - t0
print(("1,000 snapshots created and Ready in %.1f s"):format(burst))
h.bench_row("burst", ("%.1f s"):format(burst))
task.sleep(2)
print(("rss with 1,000 snapshots (and their VolumeSnapshots and copies): %.1f MB"):format(rss_mb()))
h.bench_row("rss", ("%.1f MB"):format(rss_mb()))
ms, total, rows = one("one-more")
print(("one more snapshot of a disk with 1,000: %.0f ms, %d requests: %s"):format(ms, total, rows))
-- (leader election's lease renewals and the VM list of a periodic sweep fall in this window or not)
local noise = 0
for n, what in rows:gmatch("(%d+) ([A-Z]+ [%w/]+) %d+") do
  if what:find("leases") or what == "LIST virtualmachines" or what == "POST events" then noise = noise + tonumber(n) end
end
h.bench_row("one_more", ("%.0f ms, %d requests + %d Events/leases/sweep"):format(ms, total - noise, noise))
