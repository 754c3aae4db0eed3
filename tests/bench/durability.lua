-- Durability, concurrency and crash recovery, measured (docs/apiserver.md,
-- "Figures"): prints the figures and exits 1 when any is not 0 lost.
--   vmsnap --path tests/harness tests/bench/durability.lua [kills] [seconds]
--
-- 1. Acknowledged writes over kill -9: 8 writers create ConfigMaps against
--    `vmsnap serve` while it is killed with SIGKILL and restarted `kills`
--    times; every create answered 201 must be there at the end.
-- 2. Lost updates: 16 writers increment one counter with read-modify-write
--    under resourceVersion (a 409 is read again); the counter must equal
--    the number of writes acknowledged.
-- 3. Convergence over controller kills (needs loop mounts for the agent;
--    skipped without): VM snapshots, disk snapshots (of a running VM's
--    disk, which freeze it, and of a detached disk) and VM restores while
--    `vmsnap controller` is killed with SIGKILL and restarted; every one
--    terminal, no VolumeSnapshot twice or without its snapshot, no failed
--    restore leaving objects, the guest thawed.
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local k8s = require("vmsnap.k8s")
local h = require("helpers")

local KILLS = tonumber(arg and arg[1]) or 10
local SECONDS = tonumber(arg and arg[2]) or 12
local bad = 0
local CM = "/api/v1/namespaces/default/configmaps"
local JSONH = { ["Content-Type"] = "application/json" }

local function cm(name, data)
  return json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name }, data = data })
end

-- 1 -----------------------------------------------------------------------
do
  local srv <close> = h.apiserver({ stderr = "null" })
  local acked, attempts, stop = {}, 0, false
  local writers = {}
  for w = 1, 8 do
    writers[w] = task.spawn(function()
      local n = 0
      while not stop do
        n = n + 1
        attempts = attempts + 1
        local name = ("w%d-%d"):format(w, n)
        local r = srv:request({ method = "POST", path = CM, body = cm(name, { v = name }), headers = JSONH, timeout = 5 })
        if r and r.status == 201 then acked[#acked + 1] = name
        else task.sleep(0.02) end
      end
    end)
  end
  local every = SECONDS / KILLS
  for _ = 1, KILLS do
    task.sleep(every * (0.5 + math.random()))
    srv:kill9()
    srv:start()
  end
  task.sleep(0.5)
  stop = true
  task.wait_all(writers, 20)
  local have = {}
  local cont
  repeat
    local r = assert(srv:get(CM .. "?limit=5000" .. (cont and ("&continue=" .. cont) or ""), { timeout = 60 }))
    local l = json.decode(r.body)
    for _, o in ipairs(l.items) do have[o.metadata.name] = true end
    cont = l.metadata.continue
  until not cont or cont == ""
  local lost = 0
  for _, n in ipairs(acked) do if not have[n] then lost = lost + 1 end end
  print(("acknowledged writes over %d kill -9s of vmsnap serve: %d of %d lost (%d attempts)"):format(
    KILLS, lost, #acked, attempts))
  bad = bad + lost
end

-- 2 -----------------------------------------------------------------------
do
  local srv <close> = h.apiserver({ stderr = "null" })
  assert(srv:request({ method = "POST", path = CM, body = cm("counter", { n = "0" }), headers = JSONH }).status == 201)
  local acked, conflicts = 0, 0
  local ts = {}
  for w = 1, 16 do
    ts[w] = task.spawn(function()
      for _ = 1, 50 do
        while true do
          local g = assert(srv:get(CM .. "/counter"))
          local o = json.decode(g.body)
          o.data.n = tostring(tonumber(o.data.n) + 1)
          local r = assert(srv:request({ method = "PUT", path = CM .. "/counter", body = json.encode(o), headers = JSONH }))
          if r.status == 200 then acked = acked + 1 break end
          assert(r.status == 409, r.status)
          conflicts = conflicts + 1
        end
      end
    end)
  end
  task.wait_all(ts, 120)
  local final = tonumber(json.decode(assert(srv:get(CM .. "/counter")).body).data.n)
  print(("lost updates under 16 concurrent writers with resourceVersion: %d (counter %d, %d writes acknowledged, %d conflicts read again)")
    :format(acked - final, final, acked, conflicts))
  bad = bad + math.abs(acked - final)
end

-- 3 -----------------------------------------------------------------------
local probe, why = h.qga_env()
if not probe then
  print("convergence over controller kills: skipped (" .. tostring(why) .. ")")
  os.exit(bad == 0 and 0 or 1)
end
probe:cleanup()
do
  local G = "virtualization.deckhouse.io/v1alpha2"
  local cond = require("vmsnap.k8s.object").condition
  local srv <close> = h.platform({ args = { "--no-controllers" }, stderr = "null" })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local function create(o) return assert(c:create(o)) end
  local ctl
  local function start_ctl()
    ctl = assert(proc.spawn({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig }, { stdout = "null", stderr = "null" }))
  end
  start_ctl()
  local _ <close> = setmetatable({}, { __close = function()
    ctl:kill("TERM")
    if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
  end })
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "slow" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "100ms", readyLatency = "300ms" } }))
  for _, d in ipairs({ "root-k", "free-k", "root-src" }) do
    create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = d }, spec = { persistentVolumeClaim = { size = "16Mi" } } })
  end
  create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-k" },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-k" } } } })
  create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-src" },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-src" } } } })
  assert(c:wait_for("vm", "vm-k", function(o)
    local a = o and cond(o, "AgentReady")
    return a and a.status == "True" and o
  end, { timeout = 60 }))
  create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "ms-src" },
    spec = { virtualMachineName = "vm-src", keepIPAddress = "Never" } })
  assert(c:wait_for("vmsnapshot", "ms-src", h.phase_is("Ready"), { timeout = 60 }))
  local names = {}
  local function add(kind, o) create(o) names[#names + 1] = { kind, o.metadata.name } end
  local killer = task.spawn(function()
    for _ = 1, KILLS do
      task.sleep(SECONDS / KILLS * (0.5 + math.random()))
      ctl:kill("KILL")
      ctl:wait(5)
      start_ctl()
    end
  end)
  for i = 1, 12 do
    add("vdsnapshot", { apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = ("k-root-%02d"):format(i),
      annotations = { ["vmsnap.io/freeze-budget"] = "10" } }, spec = { virtualDiskName = "root-k", volumeSnapshotClassName = "slow" } })
    add("vdsnapshot", { apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = ("k-free-%02d"):format(i) },
      spec = { virtualDiskName = "free-k", volumeSnapshotClassName = "slow" } })
    if i % 2 == 0 then
      add("vmsnapshot", { apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = ("k-vm-%02d"):format(i) },
        spec = { virtualMachineName = "vm-k", volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slow" } } } })
      add("vmrestore", { apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = ("k-r-%02d"):format(i) },
        spec = { virtualMachineSnapshotName = "ms-src", nameReplacements = {
          { from = { kind = "VirtualMachine", name = "vm-src" }, to = ("vm-k-r-%02d"):format(i) },
          { from = { kind = "VirtualDisk", name = "root-src" }, to = ("root-k-r-%02d"):format(i) } } } })
    end
    task.sleep(SECONDS / 14)
  end
  task.wait(killer, SECONDS * 3)
  local quiet = task.now()
  local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
  local by = { vdsnapshot = { 0, 0 }, vmsnapshot = { 0, 0 }, vmrestore = { 0, 0 } }
  local late, failed_restores = 0, {}
  for _, p in ipairs(names) do
    local o = c:wait_for(p[1], p[2], terminal, { timeout = math.max(0.1, quiet + 90 - task.now()) })
    if not o then late = late + 1
    else
      local b = by[p[1]]
      if o.status.phase == "Ready" then b[1] = b[1] + 1 else b[2] = b[2] + 1 end
      if p[1] == "vmrestore" and o.status.phase == "Failed" then failed_restores[o.metadata.uid] = p[2] end
    end
  end
  local took = task.now() - quiet
  local vds = {}
  for _, o in ipairs(assert(c:list_all("vdsnapshot"))) do vds[o.metadata.name] = true end
  local count, dup, orphan = {}, 0, 0
  for _, vs in ipairs(assert(c:list_all("volumesnapshot"))) do
    local n = vs.metadata.name
    count[n] = (count[n] or 0) + 1
    if count[n] == 2 then dup = dup + 1 end
    if n:match("^k%-") and not vds[n] then orphan = orphan + 1 end
  end
  local left = 0
  for _, kind in ipairs({ "vm", "vd" }) do
    for _, x in ipairs(assert(c:list_all(kind))) do
      if failed_restores[(x.metadata.annotations or {})["virtualization.deckhouse.io/vmrestore"] or ""] then left = left + 1 end
    end
  end
  local vm = c:wait_for("vm", "vm-k", function(o) return o and not (o.metadata.annotations or {})["vmsnap.io/frozen-by"] and o end, { timeout = 30 })
  local frozen = 1
  if vm then
    local a <close> = assert(require("vmsnap.qga").connect(vm.metadata.annotations["vmsnap.io/agent"], { timeout = 5 }))
    frozen = a:fsfreeze_status() == "thawed" and 0 or 1
  end
  print(("convergence over %d kill -9s of vmsnap controller: %d of %d terminal %.1f s after the last kill (%d not); disk snapshots %d Ready / %d Failed, VM snapshots %d / %d, restores %d / %d; %d duplicate and %d orphaned VolumeSnapshots, %d objects left by failed restores, guest frozen: %s")
    :format(KILLS, #names - late, #names, took, late, by.vdsnapshot[1], by.vdsnapshot[2], by.vmsnapshot[1], by.vmsnapshot[2],
      by.vmrestore[1], by.vmrestore[2], dup, orphan, left, frozen == 1 and "yes" or "no"))
  bad = bad + late + dup + orphan + left + frozen
end
os.exit(bad == 0 and 0 or 1)
