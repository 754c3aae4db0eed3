-- The consistency claim (docs/behaviour.md, Decision 8) through the API of
-- the local platform, with a real qemu-ga on the VMs' loop-mounted images:
-- every in-progress snapshot of a VM's disks holds its freeze, `consistent`
-- is written only at Ready and never on Failed, and a snapshot that
-- requires consistency never ends Ready without it. Skipped without loop
-- mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("the consistency claim", why)
  return t.done()
end
probe:cleanup()

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local phase_is = h.phase_is
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end

local function class(name, params)
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = name },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = params }))
end
local function disk(name)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name },
    spec = { persistentVolumeClaim = { size = "32Mi" } } }))
end
local function snap(name, d, spec, annotations)
  local o = { apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name, annotations = annotations },
    spec = { virtualDiskName = d } }
  for k, v in pairs(spec or {}) do o.spec[k] = v end
  return assert(c:create(o))
end
local function lease_of(vm) return vm and (vm.metadata.annotations or {})["vmsnap.io/frozen-by"] end
local function frozen(name) return wait("vm", name, function(o) return lease_of(o) and o end, 10) end

-- every change of the snapshots, the VolumeSnapshots and the VM, as this
-- process received them (a task per watch). Events of one watch come in the
-- server's order; across watches only their resourceVersions (one global
-- counter, docs/apiserver.md) order them, not their arrival.
local function recorder()
  local rec = { events = {} }
  local ws, tasks = {}, {}
  for _, kind in ipairs({ "vdsnapshot", "volumesnapshot", "vm" }) do
    local w = assert(c:watch(kind, { resource_version = assert(c:list(kind)).metadata.resourceVersion }))
    ws[#ws + 1] = w
    tasks[#tasks + 1] = task.spawn(function()
      while true do
        local ev = w:next()
        if not ev then return end
        rec.events[#rec.events + 1] = { kind = kind, type = ev.type, object = ev.object,
          rv = tonumber(ev.object.metadata.resourceVersion) }
      end
    end)
  end
  function rec:stop()
    for _, w in ipairs(ws) do w:close() end
    for _, x in ipairs(tasks) do task.cancel(x) end
  end
  return setmetatable(rec, { __close = function(r) r:stop() end })
end

disk("root-c")
disk("data-c")
assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-c" },
  spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-c" },
    { kind = "VirtualDisk", name = "data-c" } } } }))
assert(wait("vm", "vm-c", function(o)
  local a = o and cond(o, "AgentReady")
  return a and a.status == "True" and o
end, 30))
class("cut300", { cutLatency = "300ms" })
class("cut900", { cutLatency = "900ms" })
class("cut2s", { cutLatency = "2s" })

t.test("two disk snapshots of one running VM, the second made while the guest is frozen for the first: both Ready and consistent, one freeze, one thaw after the later cut", function()
  local rec <close> = recorder()
  snap("s-first", "root-c", { volumeSnapshotClassName = "cut300" })
  assert(frozen("vm-c"))
  snap("s-second", "data-c", { volumeSnapshotClassName = "cut900" })
  local a = assert(wait("vdsnapshot", "s-first", terminal))
  local b = assert(wait("vdsnapshot", "s-second", terminal))
  t.eq(a.status.phase, "Ready", json.encode(a.status))
  t.eq(b.status.phase, "Ready", json.encode(b.status))
  t.eq(a.status.consistent, true, "the first is consistent")
  t.eq(b.status.consistent, true, "the second, which joined the freeze, is consistent")
  assert(wait("vm", "vm-c", function(o) return o and not lease_of(o) and o end))
  task.sleep(0.2)
  rec:stop()
  -- one freeze: one lease, one identity, from start to end
  local leases, last_lease, lease_gone_at, second_cut_at = {}, nil, nil, nil
  for _, e in ipairs(rec.events) do
    if e.kind == "vm" then
      local l = lease_of(e.object)
      if l then
        local at = json.decode(l).at
        if not leases[at] then leases[#leases + 1] = at; leases[at] = true end
      elseif last_lease then
        lease_gone_at = lease_gone_at or e.rv
      end
      last_lease = l
    elseif e.kind == "volumesnapshot" and e.object.metadata.name == "s-second" and e.object.status
      and e.object.status.creationTime and not second_cut_at then
      second_cut_at = e.rv
    end
  end
  t.eq(#leases, 1, "one freeze: " .. json.encode(leases))
  t.ok(second_cut_at and lease_gone_at and lease_gone_at > second_cut_at,
    "the thaw came after the later cut (resourceVersions " .. tostring(second_cut_at) .. " and " ..
    tostring(lease_gone_at) .. ")")
  -- Decision 8: consistent only at Ready
  for _, e in ipairs(rec.events) do
    if e.kind == "vdsnapshot" and e.object.status and e.object.status.consistent ~= nil then
      t.eq(e.object.status.phase, "Ready", e.object.metadata.name .. " showed consistent before Ready")
    end
  end
  -- both held the same freeze and left it
  t.eq(a.metadata.annotations["vmsnap.io/frozen-at"], nil)
  t.eq(b.metadata.annotations["vmsnap.io/frozen-at"], nil)
  t.ok(tonumber(b.metadata.annotations["vmsnap.io/freeze-duration-ms"]) >
    tonumber(a.metadata.annotations["vmsnap.io/freeze-duration-ms"]), "the second held the freeze longer")
end)

t.test("a snapshot that fails after it froze shows no consistent, and the guest is thawed", function()
  local rec <close> = recorder()
  snap("s-over", "root-c", { volumeSnapshotClassName = "cut2s" }, { ["vmsnap.io/freeze-budget"] = "1" })
  local s = assert(wait("vdsnapshot", "s-over", terminal))
  rec:stop()
  t.eq(s.status.phase, "Failed")
  t.eq(s.status.consistent, nil, "absent on Failed")
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "not consistent")
  for _, e in ipairs(rec.events) do
    if e.kind == "vdsnapshot" and e.object.metadata.name == "s-over" then
      t.eq(e.object.status and e.object.status.consistent, nil, "never consistent")
    end
  end
  assert(wait("vm", "vm-c", function(o) return o and not lease_of(o) and o end, 5))
end)

t.test("a guest thawed behind the snapshot's back before its cut: Failed saying why, never Ready; without required consistency, Ready without consistent", function()
  snap("s-behind", "root-c", { volumeSnapshotClassName = "cut900" })
  assert(frozen("vm-c"))
  -- somebody else unfreezes the guest through the platform
  assert(c:subresource("vm", "vm-c", "unfreeze", { method = "PUT", group = "subresources.virtualization.deckhouse.io" }))
  local s = assert(wait("vdsnapshot", "s-behind", terminal))
  t.eq(s.status.phase, "Failed", json.encode(s.status))
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "The snapshot is not consistent: the guest was thawed before the cut")
  t.eq(s.status.consistent, nil)
  snap("s-behind-ok", "root-c", { volumeSnapshotClassName = "cut900", requiredConsistency = false })
  assert(frozen("vm-c"))
  assert(c:subresource("vm", "vm-c", "unfreeze", { method = "PUT", group = "subresources.virtualization.deckhouse.io" }))
  s = assert(wait("vdsnapshot", "s-behind-ok", terminal))
  t.eq(s.status.phase, "Ready")
  t.eq(s.status.consistent, nil, "not claimed")
end)

t.test("a disk snapshot and a VM snapshot of the same VM at once: one freeze serves both, every claim true", function()
  local rec <close> = recorder()
  snap("s-with-vm", "root-c", { volumeSnapshotClassName = "cut900" })
  assert(frozen("vm-c"))
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "vms-with" },
    spec = { virtualMachineName = "vm-c", volumeSnapshotClasses = {
      { storageClassName = "local", volumeSnapshotClassName = "cut300" } } } }))
  local d = assert(wait("vdsnapshot", "s-with-vm", terminal))
  local v = assert(wait("vmsnapshot", "vms-with", terminal, 30))
  assert(wait("vm", "vm-c", function(o) return o and not lease_of(o) and o end))
  rec:stop()
  t.eq(d.status.phase, "Ready")
  t.eq(d.status.consistent, true)
  t.eq(v.status.phase, "Ready", json.encode(v.status))
  t.eq(v.status.consistent, true)
  local leases = {}
  for _, e in ipairs(rec.events) do
    local l = e.kind == "vm" and lease_of(e.object)
    if l then leases[json.decode(l).at] = true end
  end
  local n = 0
  for _ in pairs(leases) do n = n + 1 end
  t.ok(n <= 2, "the VM snapshot joined the freeze or froze anew after the thaw: " .. n .. " freezes")
end)

t.done()
