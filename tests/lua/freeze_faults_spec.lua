-- Errors around a freeze (docs/behaviour.md, Decisions 8 and 9), with a real
-- qemu-ga: `vmsnap up --no-controllers` runs the platform, `vmsnap controller`
-- the snapshot workflows through the fault proxy. An error after the freeze
-- shows on the object in the same pass and thaws the guest at once; a VM
-- snapshot whose children the server would refuse fails before it freezes.
-- Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("errors around a freeze", why)
  return t.done()
end
probe:cleanup()

local srv <close> = h.platform({ args = { "--no-controllers" } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local fp <close> = h.faultproxy(srv.port)
local ctl, _ <close> = h.controller_behind(srv, fp)

local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function lease_of(vm) return vm and (vm.metadata.annotations or {})["vmsnap.io/frozen-by"] end
local function events(name)
  local out = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    out[e.reason] = (out[e.reason] or 0) + (e.count or 1)
  end
  return out
end

assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "root-f" },
  spec = { persistentVolumeClaim = { size = "32Mi" } } }))
assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-f" },
  spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-f" } } } }))
assert(wait("vm", "vm-f", function(o)
  local a = o and cond(o, "AgentReady")
  return a and a.status == "True" and o
end, 30))

-- the VM's lease as this process sees it change: {at, lease?} in order
local function lease_history(stop)
  local hist = {}
  local w = assert(c:watch("vm", { field_selector = "metadata.name=vm-f",
    resource_version = assert(c:get("vm", "vm-f")).metadata.resourceVersion }))
  local tk = task.spawn(function()
    while not stop() do
      local ev = w:next(0.2)
      if ev and ev.object then hist[#hist + 1] = { at = task.now(), lease = lease_of(ev.object) } end
    end
  end)
  return hist, function() w:close() task.wait(tk, 2) end
end

t.test("an error after the freeze (the VolumeSnapshot's create answered 500) shows on the snapshot and thaws at once; retried, it ends Ready and consistent", function()
  local done = false
  local hist, stop = lease_history(function() return done end)
  -- (each pass's create is looked up and made once more under its freeze: two 500s a pass)
  fp:plan("POST /apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots$", "500,500,500,500")
  local w <close> = assert(c:watch("vdsnapshot", { resource_version = assert(c:list("vdsnapshot")).metadata.resourceVersion }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s-500" },
    spec = { virtualDiskName = "root-f" } }))
  local seen, s
  while not s do
    local ev = assert(w:next(30))
    local o = ev.object
    local x = cond(o, "VirtualDiskSnapshotReady")
    if x and x.message:find("the guest was thawed; retrying", 1, true) then seen = seen or o end
    s = terminal(o)
  end
  t.ok(seen, "the failure after the freeze showed on the snapshot")
  t.eq(seen and seen.status.phase, "InProgress")
  t.eq(seen and seen.status.consistent, nil)
  t.contains(seen and cond(seen, "VirtualDiskSnapshotReady").message or "", "Injected 500")
  assert(wait("vm", "vm-f", function(o) return o and not lease_of(o) and o end))
  task.sleep(0.1)
  done = true
  stop()
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local n = 0
  for _, vs in ipairs(assert(c:list_all("volumesnapshot"))) do
    if vs.metadata.name == "s-500" then n = n + 1 end
  end
  t.eq(n, 1, "one VolumeSnapshot")
  -- every freeze before the good one was given back at once
  local spans, since = {}, nil
  for _, e in ipairs(hist) do
    if e.lease and not since then since = e.at end
    if not e.lease and since then spans[#spans + 1] = e.at - since; since = nil end
  end
  if #spans < 3 then for _, e in ipairs(hist) do print(("# %.3f %s"):format(e.at, tostring(e.lease))) end end
  t.ok(#spans >= 3, "three freezes (two passes whose creates failed, then the good one): " .. json.encode(spans))
  for i = 1, #spans - 1 do t.ok(spans[i] < 1, ("freeze %d given back at once: %.3f s"):format(i, spans[i])) end
  t.eq(lease_of(assert(c:get("vm", "vm-f"))), nil, "no lease left")
end)

t.test("the upstream VirtualDiskSnapshot CRD (no spec.volumeSnapshotClassName): the VM snapshot never sends the field it lacks, and is Ready", function()
  local crd = h.source .. "/../shared/upstream/dvp-crds/virtualdisksnapshots.yaml"
  if not fs.exists(crd) then return t.skip("the upstream CRDs are not beside the clone") end
  local r = srv:kubectl({ "apply", "--server-side", "--force-conflicts", "-f", crd })
  t.eq(r.status, 0, r.stderr)
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "vms-upstream" },
    spec = { virtualMachineName = "vm-f", volumeSnapshotClasses = {
      { storageClassName = "local", volumeSnapshotClassName = "local" } } } }))
  local s = assert(wait("vmsnapshot", "vms-upstream", terminal, 60))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local child = assert(c:get("vdsnapshot", s.status.virtualDiskSnapshotNames[1]))
  t.eq(child.spec.volumeSnapshotClassName, nil, "not sent")
  t.eq(child.metadata.annotations["vmsnap.io/volume-snapshot-class"], "local", "the class travels in an annotation")
  t.eq(assert(c:get("volumesnapshot", child.metadata.name)).spec.volumeSnapshotClassName, "local")
end)

t.test("Decision 9: a VM snapshot whose children the server refuses (a VirtualDiskSnapshot CRD that requires a field vmsnap never sends) fails before the freeze, with the server's message", function()
  local base = assert(c:get("customresourcedefinition", "virtualdisksnapshots.virtualization.deckhouse.io"))
  local spec = base.spec.versions[1].schema.openAPIV3Schema.properties.spec
  spec.properties.origin = { type = "string" }
  spec.required = { "virtualDiskName", "origin" }
  base.metadata.managedFields = nil
  assert(c:update(base))
  task.sleep(0.3)
  local done = false
  local hist, stop = lease_history(function() return done end)
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "vms-refused" },
    spec = { virtualMachineName = "vm-f" } }))
  local s = assert(wait("vmsnapshot", "vms-refused", terminal, 30))
  task.sleep(0.3)
  done = true
  stop()
  t.eq(s.status.phase, "Failed")
  local msg = cond(s, "VirtualMachineSnapshotReady").message
  t.contains(msg, "Create the virtual disk snapshot")
  t.contains(msg, "spec.origin: Required value")
  t.eq(events("vms-refused").VirtualMachineSnapshottingFrozen, nil, "never frozen")
  for _, e in ipairs(hist) do t.eq(e.lease, nil, "no freeze lease at any time") end
  local children = 0
  for _, x in ipairs(assert(c:list_all("vdsnapshot"))) do
    if x.metadata.name:find(s.metadata.uid, 1, true) then children = children + 1 end
  end
  t.eq(children, 0, "no child created")
end)

t.done()
