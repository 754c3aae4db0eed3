-- VirtualMachineSnapshots through the API of the local platform (`vmsnap up`
-- as a child), with a real qemu-ga on the running VMs' loop-mounted root
-- images: the scenarios of docs/behaviour.md d.2, the Decisions (one freeze,
-- thaw at the cut, cleanup finalizer) and the failure paths that must never
-- leave a guest frozen. Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local base64 = require("vmsnap.base64")
local task = require("vmsnap.task")
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("VM snapshots", why)
  return t.done()
end
probe:cleanup()

-- (a test's gate) a disk snapshot of a disk annotated test.vmsnap.io/hold
-- waits: it holds one child of a VM snapshot back while the VM starts
local fs = require("vmsnap.fs")
local scripts <close> = assert(fs.tempdir("vmsnap-vms-gates"))
assert(fs.mkdir_p(scripts.path .. "/preconditions"))
assert(fs.write_atomic(scripts.path .. "/preconditions/test-hold.lua", [[
return {
  applies_to = { "disk-snapshot" },
  order = 1,
  check = function(ctx, vds, facts)
    local a = facts.vd and facts.vd.metadata.annotations or {}
    if a["test.vmsnap.io/hold"] then return false, "WaitingForTheVirtualDisk", "held by the test" end
    return true
  end,
}
]]))

local srv <close> = h.platform({ env = { VMSNAP_SCRIPTS_PATH = scripts.path } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local phase_is = h.phase_is
local function gone(o) return o == nil end
local function disk(name, size, sc)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name },
    spec = { persistentVolumeClaim = { size = size or "32Mi", storageClassName = sc } } }))
end
local function vm(name, disks, o)
  o = o or {}
  local refs = {}
  for i, d in ipairs(disks) do refs[i] = { kind = "VirtualDisk", name = d } end
  return assert(c:create({ apiVersion = G, kind = "VirtualMachine",
    metadata = { name = name, annotations = o.annotations },
    spec = { runPolicy = o.runPolicy or "AlwaysOn", blockDeviceRefs = refs,
      virtualMachineIPAddressName = o.ip } }))
end
local function vmsnap(name, vmname, spec, annotations)
  local s = { virtualMachineName = vmname }
  for k, v in pairs(spec or {}) do s[k] = v end
  return assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot",
    metadata = { name = name, annotations = annotations }, spec = s }))
end
local function agent_ready(o) return o and cond(o, "AgentReady") and cond(o, "AgentReady").status == "True" and o end
local function events(name)
  local out = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    out[e.reason] = (out[e.reason] or 0) + (e.count or 1)
  end
  return out
end
local function decode(secret, key)
  local v = secret.data and secret.data[key]
  return v and json.decode(base64.decode(base64.decode(v)))
end
local function agent_of(name)
  local v = assert(c:get("vm", name))
  return assert(require("vmsnap.qga").connect(v.metadata.annotations["vmsnap.io/agent"], { timeout = 3 }))
end
-- the guest is thawed and nobody holds a freeze lease on the VM
local function assert_thawed(name)
  local a <close> = agent_of(name)
  t.eq(a:fsfreeze_status(), "thawed", name .. " thawed")
  local v = assert(c:get("vm", name))
  t.eq((v.metadata.annotations or {})["vmsnap.io/frozen-by"], nil, name .. ": no freeze lease")
end

t.test("d.2 #26, #39, #44: a stopped VM: handshake, Secret, child, resources; deletion takes everything", function()
  disk("root-s")
  vm("vm-s", { "root-s" }, { runPolicy = "AlwaysOff" })
  local v = assert(wait("vm", "vm-s", function(o) return phase_is("Stopped")(o) and o.status.virtualMachineIPAddressName and o end))
  local ipname = v.status.virtualMachineIPAddressName
  local ip = assert(wait("vmip", ipname, function(o) return o and o.status and o.status.address and o end))
  local w <close> = assert(c:watch("vmsnapshot", { field_selector = "metadata.name=ms" }))
  local vw <close> = assert(c:watch("vm", { field_selector = "metadata.name=vm-s",
    resource_version = assert(c:get("vm", "vm-s")).metadata.resourceVersion }))
  local ms = vmsnap("ms", "vm-s", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "local" } } })
  local seen, final = {}, nil
  while true do
    local ev = assert(w:next(20))
    local o = ev.object
    local r = cond(o, "VirtualMachineSnapshotReady")
    if r then seen[#seen + 1] = (o.status.phase or "") .. ":" .. r.reason .. ":" .. r.message end
    if o.status and o.status.phase == "Ready" then final = o break end
    t.ok(o.status == nil or o.status.phase ~= "Failed", "never Failed: " .. json.encode(o.status or {}))
    if o.status and o.status.phase == "Failed" then return end
  end
  local joined = table.concat(seen, "\n")
  t.contains(joined, "Pending:WaitingForTheVirtualMachine:")
  t.contains(joined, "InProgress:FileSystemFreezing:The snapshotting process has started.")
  t.contains(joined, '(0/1).')
  t.contains(joined, "Ready:VirtualMachineReady:")
  -- the VM's side of the handshake
  local reasons = {}
  while true do
    local ev = vw:next(0.2)
    if not ev then break end
    local s = cond(ev.object, "Snapshotting")
    if s then reasons[s.reason] = true end
  end
  -- the handshake: the VM said so before the snapshot started, then while it ran
  t.ok(reasons.WaitingForTheSnapshotToStart, "the VM was Snapshotting/WaitingForTheSnapshotToStart")
  t.ok(reasons.SnapshottingInProgress, "the VM was Snapshotting/SnapshottingInProgress")
  local uid = ms.metadata.uid
  t.eq(final.status.consistent, true)
  t.eq(final.status.virtualMachineSnapshotSecretName, "ms")
  t.eq(json.encode(final.status.virtualDiskSnapshotNames), json.encode({ "root-s-" .. uid }))
  t.eq(json.encode(final.status.resources), json.encode({
    { kind = "VirtualMachine", apiVersion = G, name = "vm-s" },
    { kind = "VirtualMachineIPAddress", apiVersion = G, name = ipname },
    { kind = "VirtualDisk", apiVersion = G, name = "root-s" } }))
  local child = assert(c:get("vdsnapshot", "root-s-" .. uid))
  t.eq(child.spec.volumeSnapshotClassName, "local")
  t.eq(child.spec.requiredConsistency, true)
  t.eq(child.metadata.ownerReferences[1].uid, uid)
  -- the next pass rewrites the reason; the VM's Snapshotting goes
  local r = assert(wait("vmsnapshot", "ms", h.reason_is("VirtualMachineSnapshotReady", "VirtualMachineSnapshotReady")))
  t.eq(cond(r, "VirtualMachineSnapshotReady").status, "True")
  assert(wait("vm", "vm-s", function(o) return o and not cond(o, "Snapshotting") end))
  local ev = events("ms")
  t.eq(ev.VirtualMachineSnapshottingFrozen, nil, "a stopped VM is not frozen")
  t.ok(ev.VirtualMachineSnapshottingCompleted, "Completed event")
  -- #39: the Secret
  local sec = assert(c:get("secret", "ms"))
  t.eq(sec.type, "virtualmachine.virtualization.deckhouse.io/snapshot")
  t.eq(sec.metadata.ownerReferences[1].uid, uid)
  local keys = {}
  for k in pairs(sec.data) do keys[#keys + 1] = k end
  table.sort(keys)
  t.eq(table.concat(keys, ","), "vm,vmip")
  local svm = decode(sec, "vm")
  t.eq(svm.kind, "VirtualMachine")
  t.eq(svm.metadata.name, "vm-s")
  t.eq(svm.spec.blockDeviceRefs[1].name, "root-s")
  local sip = decode(sec, "vmip")
  t.eq(sip.metadata.name, ipname)
  t.eq(sip.spec.type, "Static")
  t.eq(sip.spec.staticIP, ip.status.address)
  t.eq(assert(c:get("vmip", ipname)).spec.type, "Auto", "the live address is not touched")
  -- #44: deletion
  assert(c:delete("vmsnapshot", "ms"))
  t.eq(wait("vmsnapshot", "ms", gone), true)
  t.eq(wait("secret", "ms", gone), true)
  t.eq(wait("vdsnapshot", "root-s-" .. uid, gone), true)
  t.eq(wait("volumesnapshot", "root-s-" .. uid, gone), true)
end)

t.test("d.2 #27: a running VM with an agent: one freeze, the children neither freeze nor thaw, one thaw; consistent", function()
  disk("root-r")
  disk("data-r")
  vm("vm-r", { "root-r", "data-r" })
  assert(wait("vm", "vm-r", agent_ready))
  vmsnap("mr", "vm-r")
  local s = assert(wait("vmsnapshot", "mr", function(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local ev = events("mr")
  t.eq(ev.VirtualMachineSnapshottingFrozen, 1, "one freeze")
  t.eq(ev.VirtualMachineSnapshottingThawed, 1, "one thaw")
  t.ok(tonumber(s.metadata.annotations["vmsnap.io/freeze-duration-ms"]), "freeze duration recorded")
  for _, n in ipairs(s.status.virtualDiskSnapshotNames) do
    local child = assert(c:get("vdsnapshot", n))
    t.eq(child.status.consistent, true, n .. " consistent")
    t.eq(child.metadata.annotations["vmsnap.io/frozen-at"], nil, n .. " holds no freeze")
  end
  assert_thawed("vm-r")
end)

t.test("a VM with 4 disks: the children made before the freeze, one freeze, the four VolumeSnapshots issued within it by the VM snapshot, one thaw", function()
  local refs = {}
  for i = 1, 4 do disk("q" .. i) refs[i] = "q" .. i end
  vm("vm-q", refs)
  assert(wait("vm", "vm-q", agent_ready))
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "cut200" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { cutLatency = "200ms" } }))
  -- the order of what happened: each child's creation, the VM's freeze lease,
  -- by resourceVersion (one global counter): two watches' events may arrive
  -- in any order
  local seen, stop = {}, false
  local wc <close> = assert(c:watch("vdsnapshot", { resource_version = assert(c:list("vdsnapshot")).metadata.resourceVersion }))
  local wv <close> = assert(c:watch("vm", { field_selector = "metadata.name=vm-q",
    resource_version = assert(c:get("vm", "vm-q")).metadata.resourceVersion }))
  local watchers = {
    task.spawn(function()
      while not stop do
        local ev = wc:next(0.2)
        if ev and ev.type == "ADDED" then seen[#seen + 1] = { tonumber(ev.object.metadata.resourceVersion), "child" } end
      end
    end),
    task.spawn(function()
      local leased = false
      while not stop do
        local ev = wv:next(0.2)
        local lease = ev and ev.object and (ev.object.metadata.annotations or {})["vmsnap.io/frozen-by"]
        if lease and not leased then seen[#seen + 1] = { tonumber(ev.object.metadata.resourceVersion), "lease" } end
        leased = lease ~= nil
      end
    end),
  }
  local ms = vmsnap("mq", "vm-q", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "cut200" } } })
  local s = assert(wait("vmsnapshot", "mq", function(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  task.sleep(0.3)
  stop = true
  task.wait_all(watchers)
  table.sort(seen, function(x, y) return x[1] < y[1] end)
  local order = {}
  for i, e in ipairs(seen) do order[i] = e[2] end
  t.eq(table.concat(order, " "), "child child child child lease", "the children exist before the freeze's lease is taken")
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local ev = events("mq")
  t.eq(ev.VirtualMachineSnapshottingFrozen, 1, "one freeze")
  t.eq(ev.VirtualMachineSnapshottingThawed, 1, "one thaw")
  t.eq(#s.status.virtualDiskSnapshotNames, 4)
  local window = tonumber(s.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  -- each cut took 200 ms: issued one after another they would need 800 ms
  t.ok(window and window < 800, "the four cuts overlapped: frozen for " .. tostring(window) .. " ms")
  local held = s.metadata.annotations["vmsnap.io/freeze-held"]
  t.ok(tonumber(held), "the snapshot records the freeze it held")
  for i = 1, 4 do
    local name = ("q%d-%s"):format(i, ms.metadata.uid)
    local vs = assert(c:get("volumesnapshot", name))
    t.eq(vs.metadata.ownerReferences[1].kind, "VirtualDiskSnapshot")
    t.eq(vs.status.readyToUse, true)
    t.eq(vs.metadata.annotations["vmsnap.io/frozen-at"], held, name .. " issued under the snapshot's freeze")
    local child = assert(c:get("vdsnapshot", name))
    t.eq(child.metadata.annotations["vmsnap.io/issued-by-parent"], "true")
    t.eq(child.metadata.annotations["vmsnap.io/cut"], "consistent")
    t.eq(child.metadata.annotations["vmsnap.io/freeze-duration-ms"], nil, name .. " never froze")
    t.eq(child.status.consistent, true)
  end
  assert_thawed("vm-q")
end)

t.test("a disk snapshot frozen while a VM snapshot's children wait for readyToUse thaws at its own cut (the children hold no freeze)", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slowready" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { readyLatency = "8s" } }))
  vmsnap("mq-slow", "vm-q", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slowready" } } })
  -- thawed at the cut; its children wait for readyToUse
  local s = assert(wait("vmsnapshot", "mq-slow", function(o)
    return o and o.metadata.annotations and o.metadata.annotations["vmsnap.io/freeze-duration-ms"] and o
  end))
  t.eq(s.status.phase, "InProgress", "the children wait for readyToUse")
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "x-q1" },
    spec = { virtualDiskName = "q1", volumeSnapshotClassName = "cut200" } }))
  local x = assert(wait("vdsnapshot", "x-q1", function(o) return o and o.status and
    (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  t.eq(x.status.phase, "Ready", json.encode(x.status))
  t.eq(x.status.consistent, true)
  t.eq(assert(c:get("vmsnapshot", "mq-slow")).status.phase, "InProgress", "the VM snapshot's children still wait")
  assert_thawed("vm-q")
  t.ok(tonumber(x.metadata.annotations["vmsnap.io/freeze-duration-ms"]) < 3000,
    "thawed at its cut: " .. tostring(x.metadata.annotations["vmsnap.io/freeze-duration-ms"]) .. " ms")
  t.eq(assert(wait("vmsnapshot", "mq-slow", phase_is("Ready"), 30)).status.consistent, true)
end)

t.timeout = 120 -- (two VM starts)
t.test("Decision 8 across disks: a VM stopped when its children were made and started before all were cut is not consistent (each disk cut under a freeze of its own, or none)", function()
  disk("st1")
  disk("st2")
  assert(c:patch("vd", "st2", { metadata = { annotations = { ["test.vmsnap.io/hold"] = "1" } } }))
  vm("vm-st", { "st1", "st2" }, { runPolicy = "AlwaysOff" })
  assert(wait("vm", "vm-st", phase_is("Stopped")))
  local ms = vmsnap("mst", "vm-st")
  local first = "st1-" .. ms.metadata.uid
  local held = "st2-" .. ms.metadata.uid
  -- st1 is cut with the VM stopped: consistent on its own
  local a = assert(wait("vdsnapshot", first, phase_is("Ready")))
  t.eq(a.status.consistent, true, "st1, cut offline, is consistent")
  t.eq(assert(c:get("vdsnapshot", held)).status.phase, "Pending", "st2 held back")
  -- the VM starts; st2 goes on, freezes the guest itself: consistent on its own
  assert(c:patch("vm", "vm-st", { spec = { runPolicy = "AlwaysOn" } }))
  assert(wait("vm", "vm-st", agent_ready, 60))
  assert(c:patch("vd", "st2", { metadata = { annotations = { ["test.vmsnap.io/hold"] = json.null } } }))
  local b = assert(wait("vdsnapshot", held, phase_is("Ready"), 30))
  t.eq(b.status.consistent, true, "st2, cut under its own freeze, is consistent")
  t.ok(tonumber(b.metadata.annotations["vmsnap.io/freeze-held"]), "st2 froze the guest itself")
  local fd = tonumber(b.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  t.ok(fd and fd < 5000, "st2 thawed the guest at its own cut (no verdict of the parent awaited): " .. tostring(fd) .. " ms")
  -- but not the two together: the VM snapshot must not say so
  local s = assert(wait("vmsnapshot", "mst", function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  t.eq(s.status.phase, "Failed", json.encode(s.status))
  t.eq(s.status.consistent, nil)
  local r = cond(s, "VirtualMachineSnapshotReady")
  t.contains(r.message, "The snapshot is not consistent: the virtual disks were not cut at one moment: ")
  t.contains(r.message, ("%q under no freeze"):format(first))
  t.contains(r.message, ("%q under the freeze of "):format(held))
  assert_thawed("vm-st")
  -- without consistency required: Ready, and consistent absent
  assert(c:patch("vm", "vm-st", { spec = { runPolicy = "AlwaysOff" } }))
  assert(wait("vm", "vm-st", phase_is("Stopped"), 30))
  assert(c:patch("vd", "st2", { metadata = { annotations = { ["test.vmsnap.io/hold"] = "1" } } }))
  ms = vmsnap("mst-2", "vm-st", { requiredConsistency = false })
  assert(wait("vdsnapshot", "st1-" .. ms.metadata.uid, phase_is("Ready")))
  assert(c:patch("vm", "vm-st", { spec = { runPolicy = "AlwaysOn" } }))
  assert(wait("vm", "vm-st", agent_ready, 60))
  assert(c:patch("vd", "st2", { metadata = { annotations = { ["test.vmsnap.io/hold"] = json.null } } }))
  s = assert(wait("vmsnapshot", "mst-2", function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end, 30))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, nil, "not consistent: the disks were cut at two moments")
  assert_thawed("vm-st")
  assert(c:patch("vm", "vm-st", { spec = { runPolicy = "AlwaysOff" } }))
end)
t.timeout = 20

t.test("d.2 #28, #29: no agent: Pending when consistency is required; without it Ready and consistent absent", function()
  disk("root-n")
  vm("vm-n", { "root-n" }, { annotations = { ["vmsnap.io/no-agent"] = "true" } })
  assert(wait("vm", "vm-n", phase_is("Running")))
  vmsnap("mn", "vm-n")
  local s = assert(wait("vmsnapshot", "mn", h.reason_is("VirtualMachineSnapshotReady", "PotentiallyInconsistent")))
  t.eq(s.status.phase, "Pending")
  t.contains(cond(s, "VirtualMachineSnapshotReady").message, "virtual machine agent is not ready")
  task.sleep(0.3)
  t.eq((c:get("secret", "mn")), nil, "no Secret")
  local children = 0
  for _, x in ipairs(assert(c:list_all("vdsnapshot"))) do
    if x.spec.virtualDiskName == "root-n" then children = children + 1 end
  end
  t.eq(children, 0, "no child")
  vmsnap("mn2", "vm-n", { requiredConsistency = false })
  s = assert(wait("vmsnapshot", "mn2", phase_is("Ready")))
  t.eq(s.status.consistent, nil)
  t.eq(events("mn2").VirtualMachineSnapshottingFrozen, nil)
  local child = assert(c:get("vdsnapshot", s.status.virtualDiskSnapshotNames[1]))
  t.eq(child.spec.requiredConsistency, false)
end)

t.test("d.2 #30, #35: block devices not ready, VM absent: Pending, never Failed", function()
  disk("root-b", "32Mi", "no-such-class")
  vm("vm-b", { "root-b" }, { runPolicy = "AlwaysOff" })
  vmsnap("mb", "vm-b")
  local s = assert(wait("vmsnapshot", "mb", h.reason_is("VirtualMachineSnapshotReady", "BlockDevicesNotReady")))
  t.eq(cond(s, "VirtualMachineSnapshotReady").message,
    'Block devices not ready: waiting for the block devices of the virtual machine "vm-b" to be ready.')
  t.eq(s.status.phase, "Pending")
  vmsnap("mnope", "nope")
  s = assert(wait("vmsnapshot", "mnope", function(o)
    local x = cond(o, "VirtualMachineReady")
    return x and x.message:find("not found", 1, true) and o
  end))
  t.eq(cond(s, "VirtualMachineReady").message, 'The virtual machine "nope" not found.')
  t.eq(cond(s, "VirtualMachineSnapshotReady").reason, "WaitingForTheVirtualMachine")
  t.eq(s.status.phase, "Pending")
end)

t.test("d.2 #36, Decision 9: no class mapping: Failed with the spec's message before the guest is touched", function()
  vmsnap("m36", "vm-r", { volumeSnapshotClasses = { { storageClassName = "other", volumeSnapshotClassName = "local" } } })
  local s = assert(wait("vmsnapshot", "m36", phase_is("Failed")))
  local r = cond(s, "VirtualMachineSnapshotReady")
  t.eq(r.reason, "VirtualMachineSnapshotFailed")
  t.eq(r.message, 'The volume snapshot class not found: please define the volume snapshot class for the storage class "local" and recreate resource.')
  t.ok(events("m36").VirtualMachineSnapshottingFailed, "Warning event")
  t.eq(events("m36").VirtualMachineSnapshottingFrozen, nil, "never frozen")
  t.eq((c:get("secret", "m36")), nil, "nothing stored")
  assert_thawed("vm-r")
end)

t.test("d.2 #37: a child that fails fails the snapshot; the guest is thawed", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "fail-cut" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { failAt = "cut", failMessage = "the backend refused" } }))
  local ms = vmsnap("m37", "vm-r", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "fail-cut" } } })
  local s = assert(wait("vmsnapshot", "m37", phase_is("Failed")))
  local msg = cond(s, "VirtualMachineSnapshotReady").message
  -- both disks use the failing class: the child named is whichever failed first
  local child = msg:match('^The virtual disk snapshot "(%l+)%-r%-' .. ms.metadata.uid:gsub("%-", "%%-") .. '" is failed: cannot take snapshot%. ')
  t.ok(child == "root" or child == "data", msg)
  t.contains(msg, "the backend refused")
  assert_thawed("vm-r")
end)

t.test("a VolumeSnapshot error on one disk of two: Failed naming that child, thawed at once; the other is never claimed consistent unless cut under the freeze", function()
  assert(c:create({ apiVersion = "storage.k8s.io/v1", kind = "StorageClass", metadata = { name = "local-b" },
    provisioner = "local.vmsnap.io" }))
  disk("root-f")
  disk("data-f", "32Mi", "local-b")
  vm("vm-f", { "root-f", "data-f" })
  assert(wait("vm", "vm-f", agent_ready))
  local ms = vmsnap("m1f", "vm-f", { volumeSnapshotClasses = {
    { storageClassName = "local", volumeSnapshotClassName = "local" },
    { storageClassName = "local-b", volumeSnapshotClassName = "fail-cut" } } })
  local s = assert(wait("vmsnapshot", "m1f", phase_is("Failed")))
  local prefix = ('The virtual disk snapshot "data-f-%s" is failed: cannot take snapshot. '):format(ms.metadata.uid)
  t.eq(cond(s, "VirtualMachineSnapshotReady").message:sub(1, #prefix), prefix)
  -- the thaw came at once, maybe before the other disk's cut: that child is
  -- Ready and consistent only if its cut was seen under the freeze
  local good = assert(wait("vdsnapshot", "root-f-" .. ms.metadata.uid, function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  if good.status.phase == "Ready" then
    t.eq(good.status.consistent, true)
    t.eq(good.metadata.annotations["vmsnap.io/cut"], "consistent")
  else
    t.contains(cond(good, "VirtualDiskSnapshotReady").message, "The snapshot is not consistent")
  end
  assert_thawed("vm-f")
  t.eq(events("m1f").VirtualMachineSnapshottingThawed, 1)
  assert(c:delete("vm", "vm-f"))
end)

t.test("d.2 #40: keepIPAddress Never with an automatic address: no vmip stored or listed", function()
  vmsnap("m40", "vm-s-2", {}) -- a VM that does not exist yet: created below
  disk("root-s2")
  vm("vm-s-2", { "root-s2" }, { runPolicy = "AlwaysOff" })
  local s = assert(wait("vmsnapshot", "m40", phase_is("Ready")))
  t.ok(decode(assert(c:get("secret", "m40")), "vmip"), "Always (the default) keeps the address")
  vmsnap("m40n", "vm-s-2", { keepIPAddress = "Never" })
  s = assert(wait("vmsnapshot", "m40n", phase_is("Ready")))
  local sec = assert(c:get("secret", "m40n"))
  t.eq(sec.data.vmip, nil)
  for _, r in ipairs(s.status.resources) do t.ok(r.kind ~= "VirtualMachineIPAddress", "no address listed") end
end)

t.test("d.2 #42: a hot-plugged disk: its child, the stored attachment, the resources' order", function()
  disk("data-h")
  assert(wait("vd", "data-h", phase_is("Ready")))
  assert(c:create({ apiVersion = G, kind = "VirtualMachineBlockDeviceAttachment", metadata = { name = "att1" },
    spec = { virtualMachineName = "vm-s-2", blockDeviceRef = { kind = "VirtualDisk", name = "data-h" } } }))
  assert(wait("vm", "vm-s-2", function(o)
    for _, r in ipairs(o and o.status and o.status.blockDeviceRefs or {}) do
      if r.virtualMachineBlockDeviceAttachmentName == "att1" then return o end
    end
  end))
  local ms = vmsnap("m42", "vm-s-2")
  local s = assert(wait("vmsnapshot", "m42", phase_is("Ready")))
  local uid = ms.metadata.uid
  t.eq(json.encode(s.status.virtualDiskSnapshotNames), json.encode({ "root-s2-" .. uid, "data-h-" .. uid }))
  local b = decode(assert(c:get("secret", "m42")), "vmbdas")
  t.eq(#b, 1)
  t.eq(b[1].metadata.name, "att1")
  local kinds = {}
  for _, r in ipairs(s.status.resources) do kinds[#kinds + 1] = r.kind .. "/" .. r.name end
  local list = table.concat(kinds, " ")
  t.contains(list, "VirtualDisk/data-h VirtualMachineBlockDeviceAttachment/att1")
end)

t.test("Decision 2: deleting a snapshot while the guest is frozen thaws it; nothing of it remains", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slow-cut" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { cutLatency = "3s" } }))
  local ms = vmsnap("mdel", "vm-r", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slow-cut" } } })
  assert(wait("vm", "vm-r", function(o) return o and (o.metadata.annotations or {})["vmsnap.io/frozen-by"] and o end, 10))
  assert(c:delete("vmsnapshot", "mdel"))
  t.eq(wait("vmsnapshot", "mdel", gone), true)
  for _, d in ipairs({ "root-r", "data-r" }) do
    t.eq(wait("vdsnapshot", d .. "-" .. ms.metadata.uid, gone), true)
    t.eq(wait("volumesnapshot", d .. "-" .. ms.metadata.uid, gone), true)
  end
  t.eq(wait("secret", "mdel", gone), true)
  assert_thawed("vm-r")
end)

t.timeout = 90
t.test("kill -9 of vmsnap up while the guest is frozen: after a restart the snapshot completes and the guest is thawed", function()
  local ms = vmsnap("mkill", "vm-r", { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slow-cut" } } },
    { ["vmsnap.io/freeze-budget"] = "10" })
  assert(wait("vm", "vm-r", function(o) return o and (o.metadata.annotations or {})["vmsnap.io/frozen-by"] and o end, 10))
  srv:kill9()
  srv:start()
  local s = assert(wait("vmsnapshot", "mkill", function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o
  end, 40))
  -- the platform restarted the VM (its agent died with it); whatever the
  -- outcome, no guest stays frozen and no lease remains
  assert(wait("vm", "vm-r", agent_ready))
  assert_thawed("vm-r")
  local left = 0
  for _, x in ipairs(assert(c:list_all("vdsnapshot"))) do
    if x.metadata.annotations and x.metadata.annotations["vmsnap.io/frozen-at"] then left = left + 1 end
  end
  t.eq(left, 0, "no disk snapshot holds a freeze")
  print("# after the restart: " .. s.status.phase .. " " .. json.encode(cond(s, "VirtualMachineSnapshotReady") or {}))
  t.eq(#(s.status.virtualDiskSnapshotNames or {}), 2)
  t.ok(ms)
end)

t.test("a VM snapshot of a Migrating or Paused VM waits for Running (vmsnap vm migrate|pause|resume)", function()
  disk("root-mg")
  vm("vm-mg", { "root-mg" })
  assert(wait("vm", "vm-mg", agent_ready, 60))
  local env = { KUBECONFIG = srv.kubeconfig }
  local r = h.run_vmsnap({ "vm", "migrate", "vm-mg", "--duration", "4s" }, { env = env, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "vm-mg migrating")
  assert(wait("vm", "vm-mg", phase_is("Migrating"), 10))
  vmsnap("ms-mg", "vm-mg")
  local s = assert(wait("vmsnapshot", "ms-mg", function(o)
    local x = o and cond(o, "VirtualMachineReady")
    return x and x.status == "False" and o
  end))
  t.eq(s.status.phase, "Pending")
  t.eq(cond(s, "VirtualMachineReady").message,
    'The virtual machine "vm-mg" is in the "Migrating" phase: waiting for it to reach the Running or Stopped phase.')
  s = assert(wait("vmsnapshot", "ms-mg", phase_is("Ready"), 30))
  t.eq(s.status.consistent, true, "taken once the migration ended")
  -- pause: waits until resumed
  r = h.run_vmsnap({ "vm", "pause", "vm-mg", "--wait" }, { env = env, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "vm-mg is Pause")
  vmsnap("ms-pause", "vm-mg")
  s = assert(wait("vmsnapshot", "ms-pause", function(o)
    local x = o and cond(o, "VirtualMachineReady")
    return x and x.message:find('"Pause" phase', 1, true) and o
  end))
  t.eq(s.status.phase, "Pending")
  r = h.run_vmsnap({ "vm", "resume", "vm-mg", "--wait" }, { env = env, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  t.ok(wait("vmsnapshot", "ms-pause", phase_is("Ready"), 30), "Ready after the resume")
  r = h.run_vmsnap({ "vm", "migrate", "vm-mg", "--duration", "abc" }, { env = env, timeout = 30 })
  t.eq(r.status, 2)
  t.contains(r.stderr, "--duration must be a positive duration")
  assert(c:patch("vm", "vm-mg", { spec = { runPolicy = "AlwaysOff" } }))
end)

t.done()
