-- Convergence under API faults (docs/behaviour.md, the controllers): the
-- platform is `vmsnap up --no-controllers`; `vmsnap controller` runs the
-- snapshot and restore workflows through the fault proxy. Per fault mode —
-- connections dropped or cut, bursts of 429 and 5xx on every path, watches
-- answered 410 Gone or cut — 20 snapshots (disk snapshots of a running VM's
-- disk, which freeze it, of a detached disk, and VM snapshots) and 5 VM
-- restores are created while the faults run for a while. Once the faults
-- stop, every one reaches a terminal phase within 60 s, no VolumeSnapshot
-- is made twice or left without its snapshot, no restore leaves objects
-- behind when it failed, and the guest is not frozen. Skipped without loop
-- mounts (no agent to freeze through).
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local h = require("helpers")
local fs = require("vmsnap.fs")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("convergence under API faults", why)
  return t.done()
end
probe:cleanup()

local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
-- the two processes log to files: a late object's failure names what they
-- said of it (a CI log keeps only its tail), and a failed run prints them whole
-- (VMSNAP_FAULT_LOGS=DIR keeps them there)
local logs <close> = assert(fs.tempdir("vmsnap-faultlogs"))
local LOGDIR = os.getenv("VMSNAP_FAULT_LOGS") or logs.path
local PLOG, CLOG = LOGDIR .. "/platform.log", LOGDIR .. "/controller.log"
local srv <close> = h.platform({ args = { "--no-controllers" }, log_file = PLOG })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local fp <close> = h.faultproxy(srv.port)
local ctl, _ <close> = h.controller_behind(srv, fp, { log_file = CLOG })

local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function create(o) return assert(c:create(o)) end
local function lease_of(vm) return vm and (vm.metadata.annotations or {})["vmsnap.io/frozen-by"] end
-- vm-f once no freeze lease is on it (nil after `secs`), and its guest's freeze status
local function free_vm(secs)
  local vm = c:wait_for("vm", "vm-f", function(o) return o and not lease_of(o) and o end, { timeout = secs })
  if not vm then return nil end
  local a <close> = assert(require("vmsnap.qga").connect(vm.metadata.annotations["vmsnap.io/agent"], { timeout = 5 }))
  return vm, a:fsfreeze_status()
end
local function disk(name, size)
  create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name }, spec = { persistentVolumeClaim = { size = size or "16Mi" } } })
end

-- a running VM with an agent (its disk snapshots freeze it), a detached
-- disk, and a stopped VM with a snapshot to restore from
assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "slow" },
  driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "100ms", readyLatency = "200ms" } }))
disk("root-f", "32Mi")
disk("free")
disk("root-src")
create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-f" },
  spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-f" } } } })
create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-src" },
  spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-src" } } } })
assert(c:wait_for("vm", "vm-f", function(o)
  local a = o and cond(o, "AgentReady")
  return a and a.status == "True" and o
end, { timeout = 30 }))
assert(c:wait_for("vd", "free", h.phase_is("Ready"), { timeout = 20 }))
create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "ms-src" },
  spec = { virtualMachineName = "vm-src", keepIPAddress = "Never" } })
assert(c:wait_for("vmsnapshot", "ms-src", h.phase_is("Ready"), { timeout = 30 }))

-- the proxy's rules, topped up while the faults run (each rule is at most 64 actions)
local function faulting(rules, seconds)
  local stop = task.now() + seconds
  local function plan_all()
    for _, r in ipairs(rules) do
      local acts = {}
      while #acts < 60 do
        for a in r[2]:gmatch("[^,]+") do acts[#acts + 1] = a end
      end
      fp:plan(r[1], table.concat(acts, ",", 1, 60))
    end
  end
  plan_all()
  -- a blip now and then: every open connection (the watches) goes, so what
  -- comes back meets the rules
  fp:reset()
  return task.spawn(function()
    local blip = task.now() + 2
    while task.now() < stop do
      task.sleep(0.2)
      if fp:stats().pending < 40 * #rules then plan_all() end
      if task.now() >= blip then fp:reset() blip = task.now() + 2 end
    end
    local st = fp:stats()
    fp:clear()
    return st
  end)
end

local function events_of(name)
  local out = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    out[#out + 1] = e.reason .. ": " .. (e.message or "")
  end
  return table.concat(out, " | ")
end

local figures = {}

local ONLY = os.getenv("VMSNAP_FAULT_MODES") -- e.g. "burst,storm": only those scenarios

local function scenario(mode, rules, seconds)
  if ONLY and not ("," .. ONLY .. ","):find("," .. mode .. ",", 1, true) then
    t.ok(true, "skipped by VMSNAP_FAULT_MODES")
    return
  end
  local names = { vds = {}, vms = {}, vmr = {} }
  local faults = faulting(rules, seconds or 10)
  local t0 = task.now()
  for i = 1, 12 do
    local n = ("%s-root-%02d"):format(mode, i)
    names.vds[#names.vds + 1] = n
    create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = n,
      annotations = { ["vmsnap.io/freeze-budget"] = "10" } },
      spec = { virtualDiskName = "root-f", volumeSnapshotClassName = "slow" } })
    if i % 3 == 0 then task.sleep(0.3) end
  end
  for i = 1, 4 do
    local n = ("%s-free-%02d"):format(mode, i)
    names.vds[#names.vds + 1] = n
    create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = n },
      spec = { virtualDiskName = "free", volumeSnapshotClassName = "slow" } })
  end
  for i = 1, 4 do
    local n = ("%s-vm-%02d"):format(mode, i)
    names.vms[#names.vms + 1] = n
    create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = n },
      spec = { virtualMachineName = "vm-f", volumeSnapshotClasses = {
        { storageClassName = "local", volumeSnapshotClassName = "slow" } } } })
  end
  for i = 1, 5 do
    local n = ("%s-r-%d"):format(mode, i)
    names.vmr[#names.vmr + 1] = n
    create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = n },
      spec = { virtualMachineSnapshotName = "ms-src", nameReplacements = {
        { from = { kind = "VirtualMachine", name = "vm-src" }, to = "vm-" .. n },
        { from = { kind = "VirtualDisk", name = "root-src" }, to = "root-" .. n } } } })
  end
  local faulted = assert(task.wait(faults, 30))
  local quiet_at = task.now()
  -- every one terminal within 60 s of the end of the faults
  local pending = {}
  for kind, list in pairs({ vdsnapshot = names.vds, vmsnapshot = names.vms, vmrestore = names.vmr }) do
    for _, n in ipairs(list) do pending[#pending + 1] = { kind, n } end
  end
  local results, late = {}, {}
  for _, p in ipairs(pending) do
    local left = math.max(0.1, quiet_at + 60 - task.now())
    local o = c:wait_for(p[1], p[2], terminal, { timeout = left })
    if o then results[p[2]] = o else late[#late + 1] = p end
  end
  local took = task.now() - quiet_at
  for _, p in ipairs(late) do
    local o = c:get(p[1], p[2])
    local children = {}
    for _, cn in ipairs(o and o.status and o.status.virtualDiskSnapshotNames or {}) do
      local ch = c:get("vdsnapshot", cn)
      children[#children + 1] = ("%s: %s annotations %s; events: %s"):format(cn, json.encode(ch and ch.status or "absent"),
        json.encode(ch and ch.metadata.annotations or {}), events_of(cn))
    end
    local vmf = c:get("vm", "vm-f")
    local vs = p[1] == "vdsnapshot" and c:get("volumesnapshot", p[2])
    local words = { p[2] }
    for _, cn in ipairs(o and o.status and o.status.virtualDiskSnapshotNames or {}) do words[#words + 1] = cn end
    t.ok(false, ("%s %s terminal within 60 s after the faults (now %s): %s; events: %s; children: %s; vm-f annotations: %s;"
      .. " its VolumeSnapshot: %s; the controller said: %s; of freezes: %s; the platform said: %s"):format(p[1], p[2],
      os.date("!%H:%M:%S"), json.encode(o and o.status or "absent"), events_of(p[2]), table.concat(children, " || "),
      json.encode(vmf and vmf.metadata.annotations or {}), json.encode(vs and vs.status or "absent"),
      h.log_lines(CLOG, words, 12), h.log_lines(CLOG, { " freeze: " }, 6),
      h.log_lines(PLOG, { p[2], "platform.freeze" }, 6)))
  end

  t.eq(#late, 0, "all 25 terminal")
  -- no VolumeSnapshot twice, none without its disk snapshot
  local vds_names = {}
  for _, o in ipairs(assert(c:list_all("vdsnapshot"))) do vds_names[o.metadata.name] = o end
  local count = {}
  for _, vs in ipairs(assert(c:list_all("volumesnapshot"))) do
    local n = vs.metadata.name
    count[n] = (count[n] or 0) + 1
    if n:sub(1, #mode + 1) == mode .. "-" then
      t.ok(vds_names[n], "the VolumeSnapshot " .. n .. " has its disk snapshot")
    end
  end
  local dup = 0
  for n, k in pairs(count) do if k > 1 then dup = dup + 1 t.ok(false, n .. " has " .. k .. " VolumeSnapshots") end end
  t.eq(dup, 0, "no duplicate VolumeSnapshots")
  -- what the snapshots say is true
  local ready, failed = 0, 0
  for _, n in ipairs(names.vds) do
    local o = results[n]
    if o and o.status.phase == "Ready" then
      ready = ready + 1
      t.eq(count[n], 1, n .. ": one VolumeSnapshot")
    elseif o then
      failed = failed + 1
      t.eq(o.status.consistent, nil, n .. " claims nothing")
      local r = cond(o, "VirtualDiskSnapshotReady")
      print(("# %s Failed: %s"):format(n, r and r.message or json.encode(o.status)))
    end
  end
  -- a failed restore leaves nothing behind; a Ready one made its VM
  local restored = 0
  for _, n in ipairs(names.vmr) do
    local o = results[n]
    if o and o.status.phase == "Ready" then
      restored = restored + 1
      t.ok(c:get("vm", "vm-" .. n), n .. " made its VM")
    elseif o then
      local r = cond(o, "VirtualMachineRestoreReady")
      print(("# %s Failed: %s"):format(n, r and r.message or json.encode(o.status)))
      for _, kind in ipairs({ "vm", "vd" }) do
        for _, x in ipairs(assert(c:list_all(kind))) do
          t.ok((x.metadata.annotations or {})["virtualization.deckhouse.io/vmrestore"] ~= o.metadata.uid,
            ("the failed restore %s left %s %s"):format(n, kind, x.metadata.name))
        end
      end
    end
  end
  -- the guest is thawed and no lease remains
  local vm, status = free_vm(15)
  if not vm then
    local now = c:get("vm", "vm-f")
    error(("a freeze lease stays on the VM 15 s after all were terminal (now %s): %s; the controller said: %s; the platform said: %s")
      :format(os.date("!%H:%M:%S"), tostring(now and lease_of(now)), h.log_lines(CLOG, { " freeze: ", " guest: " }, 12),
        h.log_lines(PLOG, { "platform.freeze", "launcher" }, 6)))
  end
  t.eq(status, "thawed", "the guest is not frozen")
  figures[#figures + 1] = ("%s: %d requests faulted of %d; all terminal %.1f s after the faults; disk snapshots %d Ready, %d Failed; restores %d Ready")
    :format(mode, faulted.faulted, faulted.requests, took, ready, failed, restored)
  print("# " .. figures[#figures])
  local _ = t0
end

t.timeout = 240
t.test("answers that are not the object asked for (a 200 with {}, a watch event, no metadata, HTML) fail that object's pass, which is retried; the others go on", function()
  local VM = "GET /apis/" .. G .. "/namespaces/default/virtualmachines/vm-g-r-1$"
  fp:plan(VM, "empty200,event200,nometa200,junk200")
  for i = 1, 2 do
    create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = "g-r-" .. i },
      spec = { virtualMachineSnapshotName = "ms-src", nameReplacements = {
        { from = { kind = "VirtualMachine", name = "vm-src" }, to = "vm-g-r-" .. i },
        { from = { kind = "VirtualDisk", name = "root-src" }, to = "root-g-r-" .. i } } } })
  end
  create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "g-free" },
    spec = { virtualDiskName = "free", volumeSnapshotClassName = "slow" } })
  local other = c:wait_for("vmrestore", "g-r-2", terminal, { timeout = 30 })
  local snap = c:wait_for("vdsnapshot", "g-free", terminal, { timeout = 30 })
  local hit = c:wait_for("vmrestore", "g-r-1", terminal, { timeout = 40 })
  t.eq(fp:stats().pending, 0, "the four bad answers were all given")
  t.eq(other and other.status.phase, "Ready", "the other restore went on")
  t.eq(snap and snap.status.phase, "Ready", "a snapshot went on")
  t.eq(hit and hit.status.phase, "Ready", "the restore whose GETs were answered badly is Ready after its retries: " ..
    json.encode(hit and hit.status or {}))
  t.ok(c:get("vm", "vm-g-r-1"), "and made its VM")
  t.ok(ctl:running(), "the controller is alive")
  fp:clear()
end)

t.test("the answer to the freeze is lost after the guest froze: the retried freeze stands, the snapshot is Ready and consistent, thawed at its cut", function()
  local FREEZE = "PUT /apis/subresources.virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachines/vm-f/freeze$"
  fp:plan(FREEZE, "lost")
  create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "lost-freeze",
    annotations = { ["vmsnap.io/freeze-budget"] = "20" } },
    spec = { virtualDiskName = "root-f", volumeSnapshotClassName = "slow" } })
  local o = c:wait_for("vdsnapshot", "lost-freeze", terminal, { timeout = 30 })
  local ready_at = task.now()
  t.eq(fp:stats().pending, 0, "the freeze's answer was lost")
  t.eq(o and o.status.phase, "Ready", "Ready: " .. json.encode(o and o.status or {}))
  t.eq(o and o.status.consistent, true, "and consistent")
  -- thawed by its holder at the cut, not 20 s later by the unfreeze timeout
  local vm, status = free_vm(5)
  assert(vm, "the lease went")
  t.eq(status, "thawed", "the guest is thawed")
  t.ok(task.now() - ready_at < 5, "at once")
  t.eq(h.log_lines(PLOG, { "unfreezeTimeout passed" }, 1), "", "no thaw by the unfreeze timeout")
  fp:clear()
end)

t.test("the answer to the freeze lease's write is lost: no snapshot joins that lease (nothing froze under it); a freeze of its own, Ready and consistent", function()
  local LEASE = "PATCH /apis/" .. G .. "/namespaces/default/virtualmachines/vm-f$"
  local function freezes_seen()
    local n = 0
    for _ in (fs.read_file(PLOG) or ""):gmatch("launcher%[%d+%][^\n]*: frozen") do n = n + 1 end
    return n
  end
  local before = freezes_seen()
  -- lost, and every retry of the write refused (a merge patch is retried:
  -- after the one lost the next would meet its own lease and take it anew)
  fp:plan(LEASE, "lost" .. (",500"):rep(10))
  create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "lost-lease",
    annotations = { ["vmsnap.io/freeze-budget"] = "20" } },
    spec = { virtualDiskName = "root-f", volumeSnapshotClassName = "slow" } })
  local o = c:wait_for("vdsnapshot", "lost-lease", terminal, { timeout = 30 })
  t.eq(fp:stats().pending, 0, "the lease write's answer was lost")
  t.eq(o and o.status.phase, "Ready", "Ready: " .. json.encode(o and o.status or {}))
  t.eq(o and o.status.consistent, true, "and consistent")
  t.ok(freezes_seen() > before, "the guest was frozen for it (the launcher says so)")
  t.ok(free_vm(5), "no lease left")
  fp:clear()
end)

t.test("the answer to a VolumeSnapshot's create under the freeze is garbled or lost: the create is looked up, the snapshot stays under its one freeze, Ready and consistent", function()
  local CREATE = "POST /apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots$"
  local function freezes_seen()
    local n = 0
    for _ in (fs.read_file(PLOG) or ""):gmatch("launcher%[%d+%][^\n]*: frozen") do n = n + 1 end
    return n
  end
  for _, mode in ipairs({ "junk200", "lost" }) do
    local name = "vs-" .. mode
    local before = freezes_seen()
    fp:plan(CREATE, mode)
    create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name,
      annotations = { ["vmsnap.io/freeze-budget"] = "20" } },
      spec = { virtualDiskName = "root-f", volumeSnapshotClassName = "slow" } })
    local o = c:wait_for("vdsnapshot", name, terminal, { timeout = 30 })
    t.eq(fp:stats().pending, 0, mode .. ": the create's answer was spoilt")
    fp:clear()
    t.eq(o and o.status.phase, "Ready", mode .. ": Ready: " .. json.encode(o and o.status or {}))
    t.eq(o and o.status.consistent, true, mode .. ": and consistent")
    t.eq(freezes_seen() - before, 1, mode .. ": one freeze (not given back for the answer)")
    local vs = assert(c:get("volumesnapshot", name))
    t.eq(vs.metadata.annotations["vmsnap.io/frozen-at"], o.metadata.annotations["vmsnap.io/freeze-held"],
      mode .. ": issued under the freeze it held")
    t.ok(free_vm(5), mode .. ": no lease left")
  end
end)

t.test("dropped and cut connections on every path: all terminal once they stop, no duplicates, nothing frozen", function()
  scenario("drop", { { "/", "ok,close,ok,ok,drop,ok,cut:150,ok,close,ok" } })
end)

t.test("bursts of 429 and 5xx on every path: all terminal once they stop, no duplicates, nothing frozen", function()
  scenario("burst", { { "/", "429:0,503,ok,500,502,ok,504,ok,429:1,500,ok,ok" } })
end)

t.test("watches answered 410 Gone or cut: all terminal once they stop, no duplicates, nothing frozen", function()
  scenario("gone", { { "WATCH /", "gone,ok,gone,cut:300,gone,cut:50" } })
end)

t.test("200 answers that are not the object on every path ({}, a watch event, no metadata, HTML): all terminal once they stop", function()
  scenario("garbled", { { "/", "ok,empty200,ok,ok,event200,ok,junk200,ok,nometa200,ok,ok" } })
end)

--- A seeded storm: n actions, 30% of them faults (each kind in turn),
--- in an order drawn from the seed.
local function storm(seed, faults, n)
  math.randomseed(seed)
  local acts = {}
  for i = 1, n do acts[i] = i <= math.floor(n * 0.3) and faults[(i - 1) % #faults + 1] or "ok" end
  for i = n, 2, -1 do
    local j = math.random(i)
    acts[i], acts[j] = acts[j], acts[i]
  end
  return table.concat(acts, ",")
end

t.test("a storm: 30% of the requests on every path faulted for 15 s (5xx, 429, close, drop, slow, cut, 410, garbage): all terminal within 60 s after", function()
  local seed = tonumber(os.getenv("VMSNAP_STORM_SEED") or "") or 20261201
  print(("# storm seed %d (VMSNAP_STORM_SEED to replay another)"):format(seed))
  -- one rule for every path, watches included (the proxy's pending count is
  -- for all rules together: a rule of its own for watches would starve the other)
  scenario("storm", { { "/", storm(seed, { "500", "502", "503", "504", "429:0", "429:1", "close", "drop",
    "slow:400", "cut:100", "cut:1500", "gone", "empty200", "junk200" }, 60) } }, 15)
end)

t.test("the controller killed (-9) after it marked a snapshot frozen and before its freeze was answered: the restarted one does not trust that mark; a freeze of its own, Ready and consistent", function()
  local FREEZE = "PUT /apis/subresources.virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachines/vm-f/freeze$"
  assert(free_vm(30), "vm-f free of earlier leases")
  local function freezes_seen()
    local n = 0
    for _ in (fs.read_file(PLOG) or ""):gmatch("launcher%[%d+%][^\n]*: frozen") do n = n + 1 end
    return n
  end
  -- the freeze call is held on its way; the controller dies with it (the
  -- proxy drops a held request whose client is gone: the guest never froze)
  fp:plan(FREEZE, "slow:5000")
  create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "killed-freeze",
    annotations = { ["vmsnap.io/freeze-budget"] = "20" } },
    spec = { virtualDiskName = "root-f", volumeSnapshotClassName = "slow" } })
  assert(c:wait_for("vdsnapshot", "killed-freeze", function(o)
    return o and (o.metadata.annotations or {})["vmsnap.io/frozen-at"] and o
  end, { timeout = 15 }), "marked frozen")
  task.sleep(0.5)
  t.eq(fp:stats().pending, 0, "the freeze call reached the proxy, which holds it")
  ctl:kill("KILL")
  ctl:wait(5)
  task.sleep(0.2)
  fp:clear()
  local before = freezes_seen()
  local ctl2, _c <close> = h.controller_behind(srv, fp, { log_file = CLOG })
  local o = c:wait_for("vdsnapshot", "killed-freeze", terminal, { timeout = 40 })
  t.eq(o and o.status.phase, "Ready", "Ready: " .. json.encode(o and o.status or {}))
  t.eq(o and o.status.consistent, true, "and consistent")
  t.ok(freezes_seen() > before, "the guest was frozen for it after the restart (the launcher says so)")
  local vm, status = free_vm(10)
  t.ok(vm, "no lease left")
  t.eq(status, "thawed")
  t.ok(ctl2:running(), "the restarted controller is alive")
end)

-- a failed run prints both logs whole (the failure's own message has the lines that name it)
if t.failures() > 0 then
  for _, f in ipairs({ CLOG, PLOG }) do
    io.stderr:write("==== ", f, "\n", fs.read_file(f) or "", "\n")
  end
end
t.done()
