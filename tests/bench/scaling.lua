-- How the API server and the snapshot path scale with what is stored
-- (docs/performance.md, "Scaling"):
--   1. `vmsnap serve` with N = 1k, 10k, 100k ConfigMaps: the create rate
--      while filling, then GET, PATCH and name-selector LIST rates, a whole
--      LIST and a label-filtered one, and the server's RSS;
--   2. `vmsnap up`: bursts of 1,000 disk snapshots of one disk until 10,000
--      are stored (SCALING_SNAPSHOTS), each burst timed, with the RSS after.
--   vmsnap --path tests/harness tests/bench/scaling.lua [sizes...]
-- (sizes default to 1000 10000 100000; 100,000 snapshots are not made by
-- default: at about 100 a second they take a quarter of an hour here)
local json = require("vmsnap.json")
local k8s = require("vmsnap.k8s")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local SIZES = {}
for _, a in ipairs(arg or {}) do SIZES[#SIZES + 1] = tonumber(a) end
if #SIZES == 0 then SIZES = { 1000, 10000, 100000 } end
local SNAPSHOTS = tonumber(os.getenv("SCALING_SNAPSHOTS") or "") or 10000
local CONC = 8

local function rss_mb(pid)
  local s = fs.read_file("/proc/" .. pid .. "/status") or ""
  return (tonumber(s:match("VmRSS:%s*(%d+)")) or 0) / 1024
end

-- 1. the API server
do
  local srv <close> = h.apiserver({ stderr = "null" })
  local C = srv.url .. "/api/v1/namespaces/default/configmaps"
  local JSONH = { ["Content-Type"] = "application/json" }
  local function body(i)
    return '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm-' .. i .. '","labels":{"bench":"yes","n":"'
      .. (i % 10) .. '"}},"data":{"key":"value of ' .. i .. '"}}'
  end
  print(("%8s %10s %10s %10s %12s %14s %16s %9s"):format("objects", "creates/s", "gets/s", "patches/s",
    "name LIST", "LIST all", "label LIST", "RSS"))
  local have = 0
  for _, n in ipairs(SIZES) do
    local t0 = task.now()
    local base = have
    local rate_c, err = h.requests(srv, n - have, function(i) return { method = "POST", url = C, body = body(base + i),
      headers = JSONH } end, 201, CONC)
    assert(err == 0, "creates failed")
    have = n
    local fill_s = task.now() - t0
    local function pick(i) return "cm-" .. ((i * 7919) % n + 1) end
    local rate_g = h.requests(srv, 4000, function(i) return { url = C .. "/" .. pick(i) } end, 200, CONC)
    local rate_p = h.requests(srv, 2000, function(i)
      return { method = "PATCH", url = C .. "/" .. pick(i), body = '{"data":{"patched":"' .. i .. '"}}',
        headers = { ["Content-Type"] = "application/merge-patch+json" } }
    end, 200, CONC)
    t0 = task.now()
    for i = 1, 200 do
      local r = assert(srv:request({ url = C .. "?fieldSelector=metadata.name%3D" .. pick(i) }))
      assert(r.status == 200 and r.body:find('"items":%[{'))
    end
    local name_ms = (task.now() - t0) * 1000 / 200
    t0 = task.now()
    local all = assert(srv:request({ url = C, timeout = 120 }))
    local all_ms = (task.now() - t0) * 1000
    assert(all.status == 200)
    local size_mb = #all.body / 1e6
    all = nil
    t0 = task.now()
    local lab = assert(srv:request({ url = C .. "?labelSelector=n%3D3", timeout = 120 }))
    local lab_ms = (task.now() - t0) * 1000
    assert(lab.status == 200)
    lab = nil
    collectgarbage()
    task.sleep(1)
    print(("%8d %10.0f %10.0f %10.0f %9.2f ms %7.0f ms %4.0fMB %10.0f ms %6.1f MB   (filled in %.0f s)"):format(n,
      rate_c, rate_g, rate_p, name_ms, all_ms, size_mb, lab_ms, rss_mb(srv.proc:pid()), fill_s))
  end
  print("(HTTPS, 8 keep-alive connections; GETs and PATCHes of random names; the label LIST selects a tenth)")
end

-- 2. the snapshot path
do
  local srv <close> = h.platform({ stderr = "null" })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local G = "virtualization.deckhouse.io/v1alpha2"
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d1" }, spec = { persistentVolumeClaim = { size = "64Mi" } } }))
  assert(c:wait_for("vd", "d1", function(o) return o and o.status and o.status.phase == "Ready" end, { timeout = 30 }))
  -- one watch counts the Ready ones (no request per snapshot from the bench)
  local inf = c:informer("vdsnapshot")
  local ready = {}
  inf:on(function(_, o)
    if o.status and o.status.phase == "Ready" then ready[o.metadata.name] = true end
  end)
  inf:start()
  assert(inf:wait_synced(30))
  local function count()
    local n = 0
    for _ in pairs(ready) do n = n + 1 end
    return n
  end
  print(("%10s %10s %12s %9s"):format("stored", "burst", "per second", "RSS"))
  local made = 0
  while made < SNAPSHOTS do
    local from, to = made + 1, math.min(SNAPSHOTS, made + 1000)
    local t0 = task.now()
    local ts = {}
    for w = 1, CONC do
      ts[w] = task.spawn(function()
        for i = from + w - 1, to, CONC do
          assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s-" .. i },
            spec = { virtualDiskName = "d1" } }))
        end
      end)
    end
    assert(task.wait_all(ts))
    while count() < to do
      assert(task.now() - t0 < 600, "the burst did not finish in 10 minutes")
      task.sleep(0.05)
    end
    local dt = task.now() - t0
    made = to
    task.sleep(2)
    print(("%10d %8.1f s %10.0f/s %6.1f MB"):format(made, dt, (to - from + 1) / dt, rss_mb(srv.proc:pid())))
  end
  inf:stop()
  print("(`vmsnap up`, unattached 64 MiB disk, bursts of 1,000 from 8 tasks; each burst timed from its first create to its last Ready)")
end
