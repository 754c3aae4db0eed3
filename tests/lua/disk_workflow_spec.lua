-- The disk workflows through the API of the local platform (`vmsnap up` as a
-- child process): the scenarios of docs/behaviour.md d.1 (disks not attached
-- to a VM) and d.3, with the Decisions.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local function disk(name, size, extra)
  local o = { apiVersion = G, kind = "VirtualDisk", metadata = { name = name },
    spec = { persistentVolumeClaim = { size = size or "16Mi" } } }
  for k, v in pairs(extra or {}) do o.spec[k] = v end
  return assert(c:create(o))
end
local function snapshot(name, vd, extra)
  local o = { apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name }, spec = { virtualDiskName = vd } }
  for k, v in pairs(extra or {}) do o.spec[k] = v end
  return assert(c:create(o))
end
local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout)
  return c:wait_for(kind, name, pred, { timeout = timeout or 15 })
end
local phase_is = h.phase_is
local function volume_file(pvcname)
  local pvc = assert(c:get("pvc", pvcname))
  local pv = assert(c:get("pv", pvc.spec.volumeName))
  return pv.spec.csi.volumeHandle
end

t.test("d.1 #1-3: an unattached disk, happy path; the VolumeSnapshot's shape; one status write issues it (Decision 15)", function()
  local d1 = disk("d1")
  assert(wait("vd", "d1", phase_is("Ready")))
  -- follow the snapshot's phases through a watch
  local w <close> = assert(c:watch("vdsnapshot", { field_selector = "metadata.name=s1" }))
  snapshot("s1", "d1", { volumeSnapshotClassName = "local" })
  local messages, first = {}, nil
  while true do
    local ev = assert(w:next(15))
    local ready = cond(ev.object, "VirtualDiskSnapshotReady")
    if ready then messages[#messages + 1] = ready.reason .. ":" .. ready.message end
    local st = ev.object.status or {}
    if st.phase == "InProgress" and not first then first = st end
    if st.phase == "Ready" then break end
  end
  -- no guest to freeze: the pass that starts it issues the VolumeSnapshot
  -- and writes the wait for it; the reference's two passes (InProgress,
  -- then the VolumeSnapshot) wrote a status each
  t.ok(first, "InProgress was seen: " .. table.concat(messages, " | "))
  t.eq(first.volumeSnapshotName, "s1", "the first InProgress status names the VolumeSnapshot")
  local fc
  for _, x in ipairs(first.conditions or {}) do if x.type == "VirtualDiskSnapshotReady" then fc = x end end
  t.eq(fc and (fc.reason .. ":" .. fc.message), 'Snapshotting:Waiting fot the volume snapshot "s1" to be ready to use.')
  t.ok(not table.concat(messages, "\n"):find("process has started", 1, true), "no status of its own for InProgress alone")
  local s1 = assert(c:get("vdsnapshot", "s1"))
  t.eq(s1.metadata.finalizers[1], "virtualization.deckhouse.io/vdsnapshot-cleanup")
  t.eq(s1.status.phase, "Ready")
  t.eq(s1.status.consistent, true)
  t.eq(s1.status.volumeSnapshotName, "s1")
  t.eq(s1.status.observedGeneration, s1.metadata.generation)
  local r = cond(s1, "VirtualDiskSnapshotReady")
  t.eq(r.status .. "/" .. r.reason .. "/" .. r.message, "True/VirtualDiskSnapshotReady/")
  r = cond(s1, "VirtualDiskReady")
  t.eq(r.status .. "/" .. r.reason, "True/VirtualDiskReady")
  local vs = assert(c:get("volumesnapshot", "s1"))
  local vd = assert(c:get("vd", "d1"))
  t.eq(vs.spec.source.persistentVolumeClaimName, vd.status.target.persistentVolumeClaimName)
  t.eq(vs.spec.volumeSnapshotClassName, "local")
  t.eq(vs.metadata.ownerReferences[1].uid, s1.metadata.uid)
  t.eq(vs.metadata.ownerReferences[1].controller, nil, "no controller flag (a.8)")
  local fins = table.concat(vs.metadata.finalizers, ",")
  t.contains(fins, "virtualization.deckhouse.io/vdsnapshot-protection")
  t.eq(json.encode(vs.metadata.annotations), '{"accessModes":"ReadWriteOnce","storageClass":"local","volumeMode":"Filesystem"}')
  _ = d1; _ = seen_vs_before_inprogress
end)

t.test("long names: a disk of any valid name is provisioned (its claim name cut with a hash) and snapshotted", function()
  local names = { "vd-attached-after-vm-snapshotting-0", ("long-"):rep(40) .. "disk", ("x"):rep(253) }
  for _, n in ipairs(names) do disk(n) end
  for i, n in ipairs(names) do
    local vd = wait("vd", n, phase_is("Ready"), 30)
    t.ok(vd, ("disk %d (%d characters) Ready: %s"):format(i, #n, json.encode((c:get("vd", n) or {}).status)))
    local claim = vd and vd.status.target.persistentVolumeClaimName
    t.ok(claim and #claim <= 253 and claim:match("^[a-z0-9][-a-z0-9.]*[a-z0-9]$"), tostring(claim))
    if #n < 200 then t.eq(claim, "vd-" .. n .. "-" .. vd.metadata.uid, "short enough: the platform's name as is") end
  end
  -- two long names that differ only past the cut get different claims
  local a, b = ("y"):rep(250) .. "a", ("y"):rep(250) .. "b"
  disk(a) disk(b)
  local va, vb = wait("vd", a, phase_is("Ready"), 30), wait("vd", b, phase_is("Ready"), 30)
  t.ok(va and vb and va.status.target.persistentVolumeClaimName ~= vb.status.target.persistentVolumeClaimName)
  snapshot("long-name-snap", names[3])
  t.ok(wait("vdsnapshot", "long-name-snap", phase_is("Ready"), 30), "a snapshot of the 253-character disk")
  -- its Events too (an Event's name is the object's and a suffix, cut to 253)
  local evs = assert(c:list_all("events", { field_selector = "involvedObject.name=" .. names[3] }))
  t.ok(#evs > 0, "the 253-character disk has Events")
  for _, e in ipairs(evs) do t.ok(#e.metadata.name <= 253, e.metadata.name) end
  local bn = require("vmsnap.k8s.object").bounded_name
  t.eq(bn("short", "uid"), "short-uid")
  local long = bn(("z"):rep(300) .. "-.", "0123", 63)
  t.eq(#long, 63)
  t.ok(long:match("^z+%-%x%x%x%x%x%x%x%x%-0123$"), long)
end)

t.test("Decision 5: without a class, the storage class's is used; no match is a clear failure", function()
  disk("d-auto")
  assert(wait("vd", "d-auto", phase_is("Ready")))
  snapshot("s-auto", "d-auto")
  assert(wait("vdsnapshot", "s-auto", phase_is("Ready")))
  t.eq(assert(c:get("volumesnapshot", "s-auto")).spec.volumeSnapshotClassName, "local")
  -- a storage class of another provisioner, with no snapshot class for it
  assert(c:create({ apiVersion = "storage.k8s.io/v1", kind = "StorageClass", metadata = { name = "foreign" },
    provisioner = "foreign.csi.example" }))
  assert(c:patch("volumesnapshotclass", "local", { metadata = { annotations = {
    ["snapshot.storage.kubernetes.io/is-default-class"] = json.null } } }))
  local d = disk("d-foreign", "16Mi")
  _ = d
  -- the foreign class is not provisioned here: make the disk look Ready through its claim's class
  -- instead, check resolution directly on a Ready disk whose claim names the foreign class
  local csi = require("vmsnap.csi")
  local _, msg, code = csi.resolve_class(c, "foreign")
  t.eq(code, "NotFound")
  t.contains(msg, 'storage class "foreign"')
  assert(c:patch("volumesnapshotclass", "local", { metadata = { annotations = {
    ["snapshot.storage.kubernetes.io/is-default-class"] = "true" } } }))
end)

t.test("d.1 #4: a missing disk keeps the snapshot Pending, never Failed; the disk's arrival completes it", function()
  snapshot("s2", "ghost")
  local s = assert(wait("vdsnapshot", "s2", function(o) return o and cond(o, "VirtualDiskReady") end))
  local vr = cond(s, "VirtualDiskReady")
  t.eq(vr.status .. "/" .. vr.reason, "False/VirtualDiskNotReadyForSnapshotting")
  t.eq(vr.message, 'The virtual disk "ghost" not found.')
  local lr = cond(s, "VirtualDiskSnapshotReady")
  t.eq(lr.reason, "WaitingForTheVirtualDisk")
  t.eq(s.status.phase, "Pending")
  disk("ghost")
  assert(wait("vdsnapshot", "s2", phase_is("Ready")))
end)

t.test("d.1 #5: a disk not Ready keeps the snapshot Pending with the disk's phase in the message", function()
  disk("d-stuck", "16Mi", { persistentVolumeClaim = { size = "16Mi", storageClassName = "no-such-class" } })
  snapshot("s-stuck", "d-stuck")
  local s = assert(wait("vdsnapshot", "s-stuck", function(o)
    local x = cond(o, "VirtualDiskReady")
    return x and x.message:find('"Pending" phase', 1, true) and o
  end))
  t.eq(cond(s, "VirtualDiskReady").message,
    'The virtual disk "d-stuck" is in the "Pending" phase: waiting for it to reach the Ready phase.')
  t.eq(s.status.phase, "Pending")
end)

t.test("IP addresses are the cluster's: Auto claims in three namespaces get three addresses; a Static one taken elsewhere waits", function()
  local got = {}
  for _, ns in ipairs({ "default", "net-a", "net-b" }) do
    if ns ~= "default" then assert(c:create({ apiVersion = "v1", kind = "Namespace", metadata = { name = ns } })) end
    assert(c:create({ apiVersion = G, kind = "VirtualMachineIPAddress", metadata = { name = "same-name", namespace = ns },
      spec = { type = "Auto" } }))
  end
  for _, ns in ipairs({ "default", "net-a", "net-b" }) do
    local ip = assert(c:wait_for("vmip", "same-name", function(o) return o and o.status and o.status.address and o end,
      { namespace = ns, timeout = 20 }))
    t.eq(got[ip.status.address], nil, ns .. ": " .. ip.status.address .. " is not held elsewhere")
    got[ip.status.address] = ns
  end
  local taken = assert(c:get("vmip", "same-name", { namespace = "net-a" })).status.address
  assert(c:create({ apiVersion = G, kind = "VirtualMachineIPAddress", metadata = { name = "static", namespace = "net-b" },
    spec = { type = "Static", staticIP = taken } }))
  local st = assert(c:wait_for("vmip", "static", function(o)
    local b = o and cond(o, "Bound")
    return b and o
  end, { namespace = "net-b", timeout = 20 }))
  t.eq(st.status.phase, "Pending")
  t.eq(cond(st, "Bound").reason, "VirtualMachineIPAddressLeaseAlreadyExists")
end)

t.test("b.1: a larger size while a snapshot is in progress is refused (Resizing False/NotAvailable), and applied once the snapshot is Ready", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "slow-ready" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { readyLatency = "3s" } }))
  disk("d-snapgrow", "16Mi")
  assert(wait("vd", "d-snapgrow", phase_is("Ready")))
  snapshot("s-snapgrow", "d-snapgrow", { volumeSnapshotClassName = "slow-ready" })
  assert(wait("vd", "d-snapgrow", function(o) local x = cond(o, "Snapshotting") return x and x.status == "True" and o end))
  assert(c:patch("vd", "d-snapgrow", { spec = { persistentVolumeClaim = { size = "32Mi" } } }))
  local vd = assert(wait("vd", "d-snapgrow", function(o) local x = cond(o, "Resizing") return x and o end))
  local rz = cond(vd, "Resizing")
  t.eq(rz.status .. "/" .. rz.reason, "False/NotAvailable")
  t.eq(rz.message, "The virtual disk cannot be selected for resizing as it is currently snapshotting.")
  local pvc = assert(c:get("pvc", vd.status.target.persistentVolumeClaimName))
  t.eq(pvc.spec.resources.requests.storage, "16Mi", "the claim is not expanded meanwhile")
  assert(wait("vdsnapshot", "s-snapgrow", phase_is("Ready"), 20))
  t.ok(wait("vd", "d-snapgrow", function(o) return o and o.status.capacity == "32Mi" and o end, 20), "grown after the snapshot")
  t.eq(assert(c:get("volumesnapshot", "s-snapgrow")).status.restoreSize, "16Mi", "the snapshot is of the 16Mi disk")
end)

t.test("d.1 #7, b.5 step 7: a growing disk is in phase Resizing and keeps a new snapshot Pending; it proceeds once the volume has grown", function()
  assert(c:create({ apiVersion = "storage.k8s.io/v1", kind = "StorageClass", metadata = { name = "slow-resize" },
    provisioner = "local.vmsnap.io", allowVolumeExpansion = true, parameters = { resizeLatency = "3s" } }))
  disk("d-rs", "16Mi", { persistentVolumeClaim = { size = "16Mi", storageClassName = "slow-resize" } })
  assert(wait("vd", "d-rs", phase_is("Ready")))
  assert(c:patch("vd", "d-rs", { spec = { persistentVolumeClaim = { size = "32Mi" } } }))
  local vd = assert(wait("vd", "d-rs", phase_is("Resizing")))
  local rz = cond(vd, "Resizing")
  t.eq(rz.status .. "/" .. rz.reason, "True/InProgress")
  t.eq(rz.message, "The virtual disk resizing has started.")
  t.eq(cond(vd, "Ready").status, "True", "the disk stays usable while it grows")
  local pvc = assert(c:get("pvc", vd.status.target.persistentVolumeClaimName))
  t.eq(pvc.spec.resources.requests.storage, "32Mi")
  snapshot("s-rs", "d-rs")
  local s = assert(wait("vdsnapshot", "s-rs", function(o)
    local x = cond(o, "VirtualDiskReady")
    return x and x.message:find("Resizing", 1, true) and o
  end))
  local vr = cond(s, "VirtualDiskReady")
  t.eq(vr.status .. "/" .. vr.reason, "False/VirtualDiskNotReadyForSnapshotting")
  t.eq(vr.message, 'The virtual disk "d-rs" is in the "Resizing" phase: waiting for it to reach the Ready phase.')
  t.eq(s.status.phase, "Pending")
  vd = assert(wait("vd", "d-rs", function(o) local x = cond(o, "Snapshotting") return x and o end))
  local sn = cond(vd, "Snapshotting")
  t.eq(sn.status .. "/" .. sn.reason, "False/NotAvailable")
  t.eq(sn.message, "The virtual disk cannot be selected for snapshotting as it is currently resizing.")
  t.eq((c:get("volumesnapshot", "s-rs")), nil)
  -- the resize completes (3 s): Ready, the condition gone, events for both ends;
  -- then the snapshot is taken of the grown disk
  s = assert(wait("vdsnapshot", "s-rs", phase_is("Ready"), 20))
  vd = assert(c:get("vd", "d-rs"))
  t.eq(vd.status.phase, "Ready")
  t.eq(vd.status.capacity, "32Mi")
  t.eq(cond(vd, "Resizing"), nil)
  t.eq(assert(c:get("volumesnapshot", "s-rs")).status.restoreSize, "32Mi")
  local reasons = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=d-rs" }))) do
    reasons[e.reason] = e.message
  end
  t.eq(reasons.VirtualDiskResizingStarted, "The virtual disk resizing has started")
  t.eq(reasons.VirtualDiskResizingCompleted, "The virtual disk resizing has completed")
end)

t.test("b.5 step 7 by kubectl: a restored disk asked larger than its snapshot shows phase Resizing, then Ready at the larger size", function()
  disk("d-grow-src", "16Mi", { persistentVolumeClaim = { size = "16Mi", storageClassName = "slow-resize" } })
  assert(wait("vd", "d-grow-src", phase_is("Ready")))
  snapshot("s-grow-src", "d-grow-src")
  assert(wait("vdsnapshot", "s-grow-src", phase_is("Ready"), 20))
  local r = srv:kubectl({ "apply", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDisk
metadata: {name: d-grown}
spec:
  persistentVolumeClaim: {size: 48Mi}
  dataSource:
    type: ObjectRef
    objectRef: {kind: VirtualDiskSnapshot, name: s-grow-src}
]] })
  t.eq(r.status, 0, r.stderr)
  r = srv:kubectl({ "wait", "vd/d-grown", "--for=jsonpath={.status.phase}=Resizing", "--timeout=20s" })
  t.eq(r.status, 0, "kubectl wait saw phase Resizing: " .. r.stderr)
  r = srv:kubectl({ "wait", "vd/d-grown", "--for=jsonpath={.status.phase}=Ready", "--timeout=20s" })
  t.eq(r.status, 0, r.stderr)
  local vd = assert(c:get("vd", "d-grown"))
  t.eq(vd.status.capacity, "48Mi")
  t.eq(cond(vd, "Resizing"), nil)
end)

t.test("a.7 by kubectl: an attachment to a stopped VM is Pending and says why; the VM does not list it attached; both change when the VM runs", function()
  disk("d-hot-root") disk("d-hot")
  assert(c:create({ apiVersion = G, kind = "VirtualMachine",
    metadata = { name = "vm-hot", annotations = { ["vmsnap.io/no-agent"] = "true" } },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "d-hot-root" } } } }))
  local r = srv:kubectl({ "apply", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineBlockDeviceAttachment
metadata: {name: att-hot}
spec:
  virtualMachineName: vm-hot
  blockDeviceRef: {kind: VirtualDisk, name: d-hot}
]] })
  t.eq(r.status, 0, r.stderr)
  local b = assert(wait("vmbda", "att-hot", h.reason_is("VirtualMachineReady", "NotAttached")))
  t.eq(b.status.phase, "Pending")
  t.eq(cond(b, "VirtualMachineReady").message, 'VirtualMachine "vm-hot" is Stopped: waiting for the VirtualMachine to be Running.')
  t.eq(cond(b, "Attached").status .. "/" .. cond(b, "Attached").message, "False/Waiting for virtual machine to be ready.")
  local vm = assert(wait("vm", "vm-hot", function(o)
    for _, x in ipairs(o and o.status and o.status.blockDeviceRefs or {}) do if x.hotplugged then return o end end
  end))
  for _, x in ipairs(vm.status.blockDeviceRefs) do
    t.eq(x.attached, false, x.name .. " is not attached to a stopped VM")
  end
  r = srv:kubectl({ "wait", "vmbda/att-hot", "--for=jsonpath={.status.phase}=Attached", "--timeout=1s" })
  t.ok(r.status ~= 0, "kubectl wait ...=Attached does not succeed while the VM is stopped")
  r = srv:kubectl({ "patch", "vm", "vm-hot", "--type=merge", "-p", '{"spec":{"runPolicy":"AlwaysOn"}}' })
  t.eq(r.status, 0, r.stderr)
  r = srv:kubectl({ "wait", "vmbda/att-hot", "--for=jsonpath={.status.phase}=Attached", "--timeout=20s" })
  t.eq(r.status, 0, r.stderr)
  vm = assert(wait("vm", "vm-hot", function(o)
    local n = 0
    for _, x in ipairs(o and o.status and o.status.blockDeviceRefs or {}) do if x.attached then n = n + 1 end end
    return n == 2 and o
  end), "both devices attached once the VM runs")
  t.eq(vm.status.phase, "Running")
  r = srv:kubectl({ "patch", "vm", "vm-hot", "--type=merge", "-p", '{"spec":{"runPolicy":"AlwaysOff"}}' })
  t.eq(r.status, 0, r.stderr)
  r = srv:kubectl({ "wait", "vmbda/att-hot", "--for=jsonpath={.status.phase}=Pending", "--timeout=20s" })
  t.eq(r.status, 0, "back to Pending once the VM is stopped: " .. r.stderr)
end)

t.test("d.1 #6: a disk being deleted", function()
  disk("d-del")
  assert(wait("vd", "d-del", phase_is("Ready")))
  assert(c:patch("vd", "d-del", { metadata = { finalizers = { "test.vmsnap.io/hold", "virtualization.deckhouse.io/vd-cleanup" } } }))
  assert(c:delete("vd", "d-del"))
  snapshot("s-del", "d-del")
  local s = assert(wait("vdsnapshot", "s-del", function(o)
    local x = cond(o, "VirtualDiskReady")
    return x and x.message:find("deletion", 1, true) and o
  end))
  t.eq(cond(s, "VirtualDiskReady").message, 'The virtual disk "d-del" is in process of deletion.')
  t.eq(s.status.phase, "Pending")
  -- let it go: drop only the test's finalizer
  -- (the platform drops its own finalizer meanwhile: patch against the resourceVersion read, retry on Conflict)
  for _ = 1, 20 do
    local cur = c:get("vd", "d-del")
    if not cur then break end
    local kept = {}
    for _, f in ipairs(cur.metadata.finalizers or {}) do if f ~= "test.vmsnap.io/hold" then kept[#kept + 1] = f end end
    local ok, perr, code = c:patch("vd", "d-del", { metadata = { resourceVersion = cur.metadata.resourceVersion,
      finalizers = #kept > 0 and kept or json.null } })
    if ok or code == "NotFound" then break end
    assert(code == "Conflict", perr)
  end
  t.eq(wait("vd", "d-del", function(o) return o == nil end), true)
end)

t.test("d.1 #17, #19: a failed VolumeSnapshot fails the snapshot for good; a lost one after Ready is Lost", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "failing" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { failAt = "ready", failMessage = "the backend refused" } }))
  disk("d-f")
  assert(wait("vd", "d-f", phase_is("Ready")))
  snapshot("s-f", "d-f", { volumeSnapshotClassName = "failing" })
  local s = assert(wait("vdsnapshot", "s-f", phase_is("Failed")))
  local r = cond(s, "VirtualDiskSnapshotReady")
  t.eq(r.reason, "VirtualDiskSnapshotFailed")
  t.eq(r.message, 'VolumeSnapshot "s-f" has an error: the backend refused.')
  -- terminal: stays Failed even if the VolumeSnapshot recovers
  assert(c:patch("volumesnapshot", "s-f", { status = { error = json.null, readyToUse = true } },
    { subresource = "status" }))
  task.sleep(0.5)
  s = assert(c:get("vdsnapshot", "s-f"))
  t.eq(s.status.phase, "Failed")
  t.eq(cond(s, "VirtualDiskSnapshotReady").message, 'VolumeSnapshot "s-f" has an error: the backend refused.')
  -- Lost: s1's VolumeSnapshot goes away
  assert(c:patch("volumesnapshot", "s1", { metadata = { finalizers = json.null } }))
  c:delete("volumesnapshot", "s1")
  s = assert(wait("vdsnapshot", "s1", phase_is("Failed")))
  r = cond(s, "VirtualDiskSnapshotReady")
  t.eq(r.reason, "Lost")
  t.eq(r.message, 'The underlying volume snapshot "s1" is not ready to use.')
end)

t.test("Decision 14: kubectl describe tells each snapshot's story in Events (waits, start, completion, failures)", function()
  local function events(name) return h.described_events(srv, "vdsnapshot", name) end
  local e1 = events("s1")
  t.contains(e1, "VirtualDiskSnapshottingStarted")
  t.contains(e1, 'The snapshot of the virtual disk "d1" has started.')
  t.contains(e1, "VirtualDiskSnapshottingCompleted")
  t.contains(e1, 'The snapshot of the virtual disk "d1" is ready and consistent.')
  t.ok(e1:find("Started", 1, true) < e1:find("Completed", 1, true), "in order")
  -- s1 was then Lost (d.1 #19): a Warning that says so
  t.contains(e1, "Warning")
  t.contains(e1, "VirtualDiskSnapshottingFailed")
  t.contains(e1, 'The underlying volume snapshot "s1" is not ready to use.')
  local ef = events("s-f")
  t.contains(ef, "VirtualDiskSnapshottingFailed")
  t.contains(ef, 'VolumeSnapshot "s-f" has an error: the backend refused.')
  t.ok(not ef:find("VirtualDiskSnapshottingCompleted", 1, true), "a failed one never says completed")
  -- s2 waited for its disk (d.1 #4): the wait is told once, then the rest
  local e2 = events("s2")
  t.contains(e2, "VirtualDiskSnapshottingPending")
  t.contains(e2, 'Waiting for the virtual disk "ghost" to be ready for snapshotting.')
  t.contains(e2, "VirtualDiskSnapshottingCompleted")
end)

t.test("d.1 #22: deleting a snapshot removes its VolumeSnapshot and then itself", function()
  assert(c:delete("vdsnapshot", "s-auto"))
  t.eq(wait("vdsnapshot", "s-auto", function(o) return o == nil end), true)
  t.eq(wait("volumesnapshot", "s-auto", function(o) return o == nil end), true)
end)

t.test("d.3 #46-48: restoring from a snapshot not yet ready, the claim's shape, the size warning, the data", function()
  disk("src", "8Mi")
  local vd = assert(wait("vd", "src", phase_is("Ready")))
  local file = volume_file(vd.status.target.persistentVolumeClaimName)
  -- known data in the source volume
  local before = ("vmsnap snapshot data\n"):rep(1000)
  local f = assert(io.open(file, "r+b"))
  f:write(before)
  f:close()
  -- a slow snapshot: the restore waits for it
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slow" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { readyLatency = "1500ms" } }))
  snapshot("src-snap", "src", { volumeSnapshotClassName = "slow" })
  assert(wait("vdsnapshot", "src-snap", function(o) return o and o.status and o.status.volumeSnapshotName end))
  assert(require("vmsnap.csi").wait(c, "default", "src-snap", "cut", 10))
  -- the data changes after the cut
  local f2 = assert(io.open(file, "r+b"))
  f2:write(("overwritten after the cut\n"):rep(1000))
  f2:close()
  local res = assert(c:request({ method = "POST", path = "/apis/" .. G .. "/namespaces/default/virtualdisks",
    body = { apiVersion = G, kind = "VirtualDisk", metadata = { name = "r1" },
      spec = { persistentVolumeClaim = { size = "4Mi" },
        dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = "src-snap" } } } } }))
  t.eq(res.headers.warning, nil, "no size check while the snapshot is not Ready (b.5 #1)")
  local r1 = assert(wait("vd", "r1", function(o) return o and cond(o, "DatasourceReady") end))
  local dr = cond(r1, "DatasourceReady")
  if r1.status.phase == "Pending" then
    t.eq(dr.reason, "VirtualDiskSnapshot")
    t.eq(dr.message, 'VirtualDiskSnapshot "src-snap" not ready.')
    t.eq(cond(r1, "Ready").reason, "DatasourceIsNotReady")
  end
  r1 = assert(wait("vd", "r1", phase_is("Ready")))
  local src_snap = assert(c:get("vdsnapshot", "src-snap"))
  t.eq(r1.status.sourceUID, src_snap.metadata.uid)
  local pvc = assert(c:get("pvc", r1.status.target.persistentVolumeClaimName))
  t.eq(pvc.metadata.name, ("vd-r1-%s"):format(r1.metadata.uid))
  t.eq(json.encode(pvc.spec.dataSource), '{"apiGroup":"snapshot.storage.k8s.io","kind":"VolumeSnapshot","name":"src-snap"}')
  t.eq(pvc.spec.resources.requests.storage, "8Mi", "requested at the snapshot's restoreSize")
  t.eq(pvc.spec.storageClassName, "local")
  t.eq(pvc.metadata.finalizers[1], "virtualization.deckhouse.io/vd-protection")
  t.eq(pvc.metadata.ownerReferences[1].uid, r1.metadata.uid)
  -- exactly the data at the cut
  local restored = assert(io.open(volume_file(pvc.metadata.name), "rb"))
  local got = restored:read(#before)
  restored:close()
  t.ok(got == before, "the restored disk holds the data written before the snapshot")
  -- now that the snapshot is Ready, a smaller disk is accepted with the warning
  res = assert(c:request({ method = "POST", path = "/apis/" .. G .. "/namespaces/default/virtualdisks",
    body = { apiVersion = G, kind = "VirtualDisk", metadata = { name = "r2" },
      spec = { persistentVolumeClaim = { size = "4Mi" },
        dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = "src-snap" } } } } }))
  t.eq(res.headers.warning, '299 - "The specified pvc size is insufficient: 4194304 (4Mi) < 8388608"')
end)

t.test("d.3 #50, #51: zero size rejected; the source is fixed once provisioned", function()
  local _, msg, reason = c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "zero" },
    spec = { persistentVolumeClaim = { size = "0" } } })
  t.eq(reason, "Invalid")
  t.contains(msg, "virtual disk size must be greater than 0")
  local _, msg2, reason2 = c:patch("vd", "r1", { spec = { dataSource = { objectRef = { name = "s2" } } } })
  t.eq(reason2, "Invalid")
  t.contains(msg2, "data source cannot be changed if the VirtualDisk has already been provisioned")
end)

t.test("the platform survives a restart in the middle: snapshots complete", function()
  disk("d-r")
  assert(wait("vd", "d-r", phase_is("Ready")))
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slower" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { readyLatency = "1s" } }))
  for i = 1, 3 do snapshot("restart-" .. i, "d-r", { volumeSnapshotClassName = "slower" }) end
  -- killed at their wait for the VolumeSnapshot, which leaves no steps
  -- record (nothing owed): the restarted controller runs their steps again
  for i = 1, 3 do
    local s = assert(wait("vdsnapshot", "restart-" .. i, function(o)
      return o and o.status and o.status.volumeSnapshotName and o end))
    t.eq(s.status.phase, "InProgress")
  end
  srv:kill9()
  srv:start()
  for i = 1, 3 do
    t.ok(wait("vdsnapshot", "restart-" .. i, phase_is("Ready"), 20), "restart-" .. i .. " Ready")
  end
  local vss = assert(c:list_all("volumesnapshot"))
  local count = {}
  for _, v in ipairs(vss) do count[v.metadata.name] = (count[v.metadata.name] or 0) + 1 end
  t.eq(count["restart-1"], 1, "no duplicate VolumeSnapshots")
  _ = fs
end)

t.done()
