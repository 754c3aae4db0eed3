-- Benchmark of `vmsnap serve` on this machine: writes/s and reads/s over
-- keep-alive connections, watch delivery latency to many watchers, and the
-- server's RSS with many small objects stored. Prints its figures.
--   vmsnap --path tests/harness tests/bench/apiserver.lua [objects] [watchers]
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local OBJECTS = tonumber(arg and arg[1]) or 100000
local WATCHERS = tonumber(arg and arg[2]) or 100
local CONC = 8

local srv <close> = h.apiserver({ stderr = "null" })
local C = srv.url .. "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualdisksnapshots"
local JSONH = { ["Content-Type"] = "application/json" }

local function body(name)
  return '{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualDiskSnapshot","metadata":{"name":"'
    .. name .. '","labels":{"bench":"yes"}},"spec":{"virtualDiskName":"disk-' .. name .. '"}}'
end

-- run n requests from CONC tasks; make(i) returns request options
local function run(n, make, want) return h.requests(srv, n, make, want, CONC) end

local function rss_kb(pid)
  local s = fs.read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local N = 20000
local rate, err = run(N, function(i) return { method = "POST", url = C, body = body("w" .. i), headers = JSONH } end, 201)
print(("creates:  %7.0f /s  (%d over %d keep-alive connections, %d errors)"):format(rate, N, CONC, err))
rate, err = run(N, function(i)
  return { method = "PATCH", url = C .. "/w" .. i, body = '{"metadata":{"labels":{"n":"' .. i .. '"}}}',
    headers = { ["Content-Type"] = "application/merge-patch+json" } }
end, 200)
print(("patches:  %7.0f /s  (%d errors)"):format(rate, err))
rate, err = run(4 * N, function(i) return { url = C .. "/w" .. (i % N + 1) } end, 200)
print(("gets:     %7.0f /s  (%d errors)"):format(rate, err))

-- watch delivery latency: WATCHERS streams spread over PROCS client
-- processes (one Lua process cannot read 100 streams as fast as the server
-- writes them on this 2-core machine); the writer stamps each change, the
-- watchers stamp each delivery on the same monotonic clock.
local PROCS = 4
local EVENTS = 200
local rv = json.decode(assert(srv:request({ url = C .. "?limit=1" })).body).metadata.resourceVersion
local proc = require("vmsnap.proc")
local children = {}
for p = 1, PROCS do
  local n = WATCHERS // PROCS + (p <= WATCHERS % PROCS and 1 or 0)
  children[p] = assert(proc.spawn({ h.vmsnap, "-e", [[
    local http = require("vmsnap.http")
    local task = require("vmsnap.task")
    local url, n, events = arg[1], tonumber(arg[2]), tonumber(arg[3])
    local auth = { Authorization = "Bearer " .. arg[4] }
    local out, ts = {}, {}
    for w = 1, n do
      local res = assert(http.request({ url = url, stream = true, headers = auth, tls = { ca_data = arg[5] } }))
      ts[w] = task.spawn(function()
        local it = res:lines()
        for _ = 1, events do
          local line = it()
          if not line then return end
          local now = task.now()
          local seq = line:match('"seq":"(%d+)"')
          if seq then out[#out + 1] = seq .. " " .. now end
        end
      end)
    end
    io.stderr:write("ready\n")
    task.wait_all(ts, 60)
    io.stdout:write(table.concat(out, "\n"), "\n")
    os.exit(0)
  ]], C .. "?watch=true&fieldSelector=metadata.name%3Dwatched&resourceVersion=" .. rv, tostring(n), tostring(EVENTS),
    srv.token, srv.ca_data },
    { stdout = "capture", stderr = "null" }))
end
task.sleep(1.5)
local sent = {}
srv:request({ method = "POST", url = C, body = body("watched"), headers = JSONH })
for i = 2, EVENTS do
  sent[i] = task.now()
  srv:request({ method = "PATCH", url = C .. "/watched", body = '{"metadata":{"annotations":{"seq":"' .. i .. '"}}}',
    headers = { ["Content-Type"] = "application/merge-patch+json" } })
  task.sleep(0.01)
end
local lat = {}
for _, c in ipairs(children) do
  local r = c:wait(60)
  c:close()
  for seq, at in (r and r.stdout or ""):gmatch("(%d+) ([%d.e+-]+)") do
    local s0 = sent[tonumber(seq)]
    if s0 then lat[#lat + 1] = tonumber(at) - s0 end
  end
end
table.sort(lat)
local function pct(p) return (lat[math.max(1, math.ceil(#lat * p))] or 0) * 1000 end
print(("watch:    %d watchers in %d processes, %d deliveries: p50 %.2f ms, p99 %.2f ms, max %.2f ms"):format(
  WATCHERS, PROCS, #lat, pct(0.5), pct(0.99), pct(1)))

-- RSS with many objects stored
local have = N + 1
if OBJECTS > have then
  run(OBJECTS - have, function(i) return { method = "POST", url = C, body = body("r" .. i), headers = JSONH } end, 201)
end
-- a list with a selector touches every object once
local t0 = task.now()
local res = assert(srv:request({ url = C .. "?labelSelector=bench%3Dno&limit=500" }))
local list_ms = (task.now() - t0) * 1000
assert(res.status == 200)
task.sleep(1)
local pid = srv.proc:pid()
print(("rss:      %.1f MB with %d objects stored (filtered list over all of them: %.0f ms)"):format(
  rss_kb(pid) / 1024, math.max(OBJECTS, have), list_ms))
-- a name-pinned field selector (what `kubectl wait`, `vmsnap snapshot --wait`
-- and informers of one object send): an index lookup, flat in N
local reps = 200
t0 = task.now()
for i = 1, reps do
  -- the objects made for this (r1..), or the writes' own (w1..) when OBJECTS asked for no more
  local name = OBJECTS > have and ("r" .. (i * 37 % (OBJECTS - have) + 1)) or ("w" .. (i * 37 % N + 1))
  local r = assert(srv:request({ url = C .. "?fieldSelector=metadata.name%3D" .. name }))
  assert(r.status == 200 and r.body:find('"items":%[{'), r.body:sub(1, 200))
end
print(("name:     LIST ?fieldSelector=metadata.name=X at %d objects: %.2f ms each (%d runs, over HTTPS)"):format(
  math.max(OBJECTS, have), (task.now() - t0) * 1000 / reps, reps))
h.bench_row("name_list", ("%.2f ms at %d objects, an index lookup (scaling.lua: flat from 1k to 100k)"):format(
  (task.now() - t0) * 1000 / reps, math.max(OBJECTS, have)))
local st = fs.stat(srv.data .. "/state.db")
print(("disk:     state.db %.1f MB"):format((st and st.size or 0) / 1e6))
