-- The large-answer figures of issue #16, against `vmsnap serve` as a child
-- process: a LIST of many ConfigMaps (the server's peak RSS beside the
-- body's size, and its RSS after), a client watch that replays 1,000 events
-- (the client's time and CPU), and the server CPU of one status write of a
-- custom resource beside one ConfigMap update.
--   vmsnap --path tests/harness tests/bench/list_watch.lua [configmaps]
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local k8s = require("vmsnap.k8s")
local h = require("helpers")

local N = tonumber(arg and arg[1]) or 100000
local CONC = 8

local srv <close> = h.apiserver({ stderr = os.getenv("BENCH_STDERR") or "null" })
local pid = srv.proc:pid()
local CM = srv.url .. "/api/v1/namespaces/default/configmaps"
local JSONH = { ["Content-Type"] = "application/json" }

local function status_kb(key)
  local s = fs.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match(key .. ":%s*(%d+)")) or 0
end
-- the server's user + system CPU seconds
local function cpu()
  local s = fs.read_file("/proc/" .. pid .. "/stat") or ""
  local rest = s:match("%) (.*)$") or ""
  local f = {}
  for x in rest:gmatch("%S+") do f[#f + 1] = x end
  return (tonumber(f[12]) + tonumber(f[13])) / 100 -- utime, stime (fields 14, 15) in ticks
end

-- n requests at once; every one must answer want
local function run(n, make, want)
  local _, errors = h.requests(srv, n, make, want, CONC)
  assert(errors == 0, errors .. " requests failed")
end

-- ---------------------------------------------------------- status writes
local G = srv.url .. "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualdisksnapshots"
assert(srv:request({ method = "POST", url = G, headers = JSONH,
  body = '{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualDiskSnapshot",' ..
    '"metadata":{"name":"s"},"spec":{"virtualDiskName":"d","requiredConsistency":true}}' }))
assert(srv:request({ method = "POST", url = CM, headers = JSONH,
  body = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"w"},"data":{"a":"b"}}' }))
local W = 2000
-- W updates in a row, each against the resourceVersion the last one returned
local function writes(url, make)
  local rv = json.decode(assert(srv:request({ url = url })).body).metadata.resourceVersion
  local c0, t0 = cpu(), task.now()
  for i = 1, W do
    local r = assert(srv:request({ method = "PUT", url = url, headers = JSONH, body = make(i, rv) }))
    assert(r.status == 200, r.body)
    rv = json.decode(r.body).metadata.resourceVersion
  end
  return (cpu() - c0) / W * 1e6, (task.now() - t0) / W * 1e6
end
local vds_us, vds_wall = writes(G .. "/s/status", function(i, rv)
  return json.encode({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = "s", resourceVersion = rv }, spec = { virtualDiskName = "d", requiredConsistency = true },
    status = { phase = "InProgress", observedGeneration = 1, volumeSnapshotName = "s",
      conditions = json.array({
        { type = "VirtualDiskReady", status = "True", reason = "VirtualDiskReady", message = "",
          lastTransitionTime = "2026-12-01T00:00:00Z", observedGeneration = 1 },
        { type = "VirtualDiskSnapshotReady", status = "False", reason = "Snapshotting",
          message = "Waiting for the snapshot " .. i, lastTransitionTime = "2026-12-01T00:00:00Z",
          observedGeneration = 1 } }) } })
end)
local cm_us, cm_wall = writes(CM .. "/w", function(i, rv)
  return json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w", resourceVersion = rv },
    data = { a = "b" .. i } })
end)
print(("status:   server CPU per VirtualDiskSnapshot status PUT %.0f µs (%.0f µs each, one after another), per ConfigMap PUT %.0f µs (%.0f µs) (%d each)"):format(
  vds_us, vds_wall, cm_us, cm_wall, W))
h.bench_row("status_put", ("%.0f µs (a ConfigMap PUT %.0f µs)"):format(vds_us, cm_us))

-- ---------------------------------------------------------- the watch replay
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local from = assert(c:list("configmaps", { namespace = "default" })).metadata.resourceVersion
local E = 1000
run(E, function(i)
  return { method = "POST", url = CM, headers = JSONH,
    body = ('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"e%d","labels":{"app":"bench"}},' ..
      '"data":{"k":"%s"}}'):format(i, ("v"):rep(200)) }
end, 201)
local best_wall, best_cpu = math.huge, math.huge
for _ = 1, 5 do
  local t0, c0 = task.now(), os.clock()
  local seen = 0
  local w = assert(c:watch("configmaps", { namespace = "default", resource_version = from }))
  while seen < E do
    local ev = w:next(30)
    if not ev then break end
    if ev.type == "ADDED" then seen = seen + 1 end
  end
  w:close()
  assert(seen == E, ("watch saw %d of %d events"):format(seen, E))
  best_wall = math.min(best_wall, (task.now() - t0) * 1000)
  best_cpu = math.min(best_cpu, (os.clock() - c0) * 1000)
end
print(("watch:    %d events replayed to a vmsnap.k8s watch: %.0f ms wall, %.0f ms client CPU (best of 5)"):format(
  E, best_wall, best_cpu))
h.bench_row("watch", ("%.0f ms client CPU (%.0f ms wall)"):format(best_cpu, best_wall))

-- ---------------------------------------------------------- the big LIST
local pad = ("x"):rep(300)
run(N - E, function(i)
  return { method = "POST", url = CM, headers = JSONH,
    body = ('{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"l%d","labels":{"app":"bench"}},' ..
      '"data":{"k":"%s"}}'):format(i, pad) }
end, 201)
task.sleep(1)
local before = status_kb("VmRSS")
do -- VmHWM := VmRSS
  local f = assert(io.open("/proc/" .. pid .. "/clear_refs", "w"))
  f:write("5")
  f:close()
end
local t0 = task.now()
local res = assert(srv:request({ url = CM, timeout = 120 }))
local ms = (task.now() - t0) * 1000
assert(res.status == 200, res.status)
local items = select(2, res.body:gsub('"kind":"ConfigMap"', ""))
assert(items >= N, ("the list has %d items"):format(items))
local peak = status_kb("VmHWM")
local body_mb = #res.body / 1e6
res = nil
collectgarbage()
task.sleep(2)
local after = status_kb("VmRSS")
print(("list:     %d ConfigMaps, body %.1f MB in %.0f ms; server RSS %.1f MB before, peak %.1f MB (+%.1f MB = %.1fx the body), %.1f MB 2 s after"):format(
  N + 1, body_mb, ms, before / 1024, peak / 1024, (peak - before) / 1024, (peak - before) / 1024 / body_mb,
  after / 1024))
h.bench_row("list_rss", ("+%.0f MB = %.1fx the body; %.0f MB 2 s after (%.0f before)"):format((peak - before) / 1024,
  (peak - before) / 1024 / body_mb, after / 1024, before / 1024))
