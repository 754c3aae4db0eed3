-- Scenarios whose "Given" is a state the local platform does not produce on
-- demand (a Ready disk whose claim is not Bound, a VM whose freeze call
-- fails): `vmsnap serve` and `vmsnap controller` run as children, and the
-- test plays the platform's other controllers by writing their objects'
-- status through the API, as they would in a cluster.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local h = require("helpers")

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local ctl = assert(proc.spawn({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig },
  { stdout = "null", stderr = "inherit" }))
local _ <close> = setmetatable({}, { __close = function()
  ctl:kill("TERM")
  if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
  ctl:close()
end })

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 15 }) end
local phase_is = h.phase_is
local function now() return os.date("!%Y-%m-%dT%H:%M:%SZ") end
local function condition(obj, ctype, status, reason, message)
  return { type = ctype, status = status, reason = reason, message = message or "",
    lastTransitionTime = now(), observedGeneration = obj.metadata.generation }
end

-- a claim in the given phase, and a Ready disk on it (what the disk controller would write)
local function ready_disk(name, pvc_phase, vm)
  local vd = assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name },
    spec = { persistentVolumeClaim = { size = "16Mi", storageClassName = "sc1" } } }))
  local pvc = assert(c:create({ apiVersion = "v1", kind = "PersistentVolumeClaim", metadata = { name = "vd-" .. name,
      ownerReferences = { { apiVersion = G, kind = "VirtualDisk", name = name, uid = vd.metadata.uid, controller = true } } },
    spec = { accessModes = { "ReadWriteOnce" }, storageClassName = "sc1",
      resources = { requests = { storage = "16Mi" } } } }))
  pvc.status = { phase = pvc_phase, accessModes = { "ReadWriteOnce" }, capacity = { storage = "16Mi" } }
  assert(c:update_status(pvc))
  vd.status = { phase = "Ready", capacity = "16Mi", storageClassName = "sc1",
    target = { persistentVolumeClaimName = "vd-" .. name },
    attachedToVirtualMachines = vm and { { name = vm, mounted = true } } or nil,
    conditions = { condition(vd, "Ready", "True", "Ready"),
      condition(vd, "Snapshotting", "True", "Snapshotting", "The virtual disk is selected for taking a snapshot.") } }
  return assert(c:update_status(vd))
end

assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "vsc1" },
  driver = "example.vmsnap.io", deletionPolicy = "Delete" }))

t.test("d.1 #8: a Ready disk whose claim is not Bound keeps the snapshot Pending", function()
  ready_disk("d8", "Pending")
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s8" },
    spec = { virtualDiskName = "d8", volumeSnapshotClassName = "vsc1" } }))
  local s = assert(wait("vdsnapshot", "s8", function(o)
    local x = cond(o, "VirtualDiskSnapshotReady")
    return x and x.message:find("Bound", 1, true) and o
  end))
  local r = cond(s, "VirtualDiskSnapshotReady")
  t.eq(r.status .. "/" .. r.reason, "False/WaitingForTheVirtualDisk")
  t.eq(r.message, "Waiting for the virtual disk's pvc to be in phase Bound.")
  t.eq(cond(s, "VirtualDiskReady").status, "True")
  t.eq(s.status.phase, "Pending")
  t.eq((c:get("volumesnapshot", "s8")), nil)
  -- the claim binds: the VolumeSnapshot is issued
  local pvc = assert(c:get("pvc", "vd-d8"))
  pvc.status.phase = "Bound"
  assert(c:update_status(pvc))
  local vs = assert(wait("volumesnapshot", "s8", function(o) return o end))
  t.eq(vs.spec.source.persistentVolumeClaimName, "vd-d8")
  -- (the pass that issues it writes InProgress with it: Decision 15, a moment after)
  t.ok(wait("vdsnapshot", "s8", function(o) return o and o.status and o.status.phase == "InProgress" and o end),
    "InProgress once the VolumeSnapshot is issued")
end)

t.test("d.1 #18: a freeze call that fails fails the snapshot, naming the VM", function()
  -- a running VM with a ready agent, as its controller reports it; the
  -- server has no agent to reach for it, so the freeze subresource fails
  local vm = assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1" },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "d18" } } } }))
  vm.status = { phase = "Running", blockDeviceRefs = { { kind = "VirtualDisk", name = "d18", attached = true } },
    conditions = { condition(vm, "AgentReady", "True", "AgentReady") } }
  assert(c:update_status(vm))
  ready_disk("d18", "Bound", "vm1")
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s18" },
    spec = { virtualDiskName = "d18", volumeSnapshotClassName = "vsc1" } }))
  local s = assert(wait("vdsnapshot", "s18", phase_is("Failed")))
  local r = cond(s, "VirtualDiskSnapshotReady")
  t.eq(r.reason, "VirtualDiskSnapshotFailed")
  local prefix = "Failed to freeze virtual machine default/vm1: "
  t.eq(r.message:sub(1, #prefix), prefix)
  t.ok(#r.message > #prefix, "the freeze error follows: " .. r.message)
  print("# " .. r.message)
  t.eq((c:get("volumesnapshot", "s18")), nil)
  -- nothing is left claiming the guest: no freeze lease on the VM
  task.sleep(0.2)
  local v = assert(c:get("vm", "vm1"))
  t.eq((v.metadata.annotations or {})["vmsnap.io/frozen-by"], nil)
  t.eq((v.metadata.annotations or {})["vmsnap.io/frozen-at"], nil)
end)

t.test("d.1 #21: a VM snapshot in progress keeps the disk snapshot from thawing the VM", function()
  -- vm21 is frozen (by its VM snapshot); the server has no agent for it, so
  -- an unfreeze call would fail and fail the disk snapshot: Ready proves none was made
  local vm = assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm21" },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "d21" } } } }))
  vm.status = { phase = "Running", blockDeviceRefs = { { kind = "VirtualDisk", name = "d21", attached = true } },
    conditions = { condition(vm, "AgentReady", "True", "AgentReady"), condition(vm, "BlockDevicesReady", "True", "BlockDevicesReady"),
      condition(vm, "Snapshotting", "True", "SnapshottingInProgress"),
      condition(vm, "FilesystemFrozen", "True", "Frozen") } }
  assert(c:update_status(vm))
  ready_disk("d21", "Bound", "vm21")
  -- the VM snapshot goes InProgress and stays there (nothing cuts its child's VolumeSnapshot)
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "vms21" },
    spec = { virtualMachineName = "vm21", requiredConsistency = true, keepIPAddress = "Always",
      volumeSnapshotClasses = { { storageClassName = "sc1", volumeSnapshotClassName = "vsc1" } } } }))
  assert(wait("vmsnapshot", "vms21", phase_is("InProgress")))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s21" },
    spec = { virtualDiskName = "d21", volumeSnapshotClassName = "vsc1" } }))
  -- the VolumeSnapshot is issued without a freeze of its own; the test is its snapshotter
  local vs = assert(wait("volumesnapshot", "s21", function(o) return o end))
  vs.status = { creationTime = now(), readyToUse = true, restoreSize = "16Mi",
    boundVolumeSnapshotContentName = "snapcontent-s21" }
  assert(c:update_status(vs))
  local s = assert(wait("vdsnapshot", "s21", function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o
  end))
  t.eq(s.status.phase, "Ready", cond(s, "VirtualDiskSnapshotReady") and cond(s, "VirtualDiskSnapshotReady").message)
  t.eq(s.status.consistent, true)
  local v = assert(c:get("vm", "vm21"))
  t.eq((v.metadata.annotations or {})["vmsnap.io/frozen-by"], nil, "no lease taken by the disk snapshot")
end)

-- a stopped VM as its controller reports it, with a VM snapshot under way
local function stopped_vm(name, disk, extra)
  local vm = assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = name },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = disk } } } }))
  vm.status = { phase = extra.phase or "Stopped", blockDeviceRefs = { { kind = "VirtualDisk", name = disk, attached = true } },
    restartAwaitingChanges = extra.restart,
    conditions = { condition(vm, "BlockDevicesReady", "True", "BlockDevicesReady"),
      condition(vm, "Snapshotting", "True", "WaitingForTheSnapshotToStart") } }
  return assert(c:update_status(vm))
end
local function vm_snapshot(name, vm)
  return assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = name },
    spec = { virtualMachineName = vm } }))
end
local function reason_is(reason) return h.reason_is("VirtualMachineSnapshotReady", reason) end

t.test("d.2 #31: a disk of the VM not Ready: Pending/BlockDevicesNotReady", function()
  local vd = assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d31" },
    spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  vd.status = { phase = "Provisioning", conditions = { condition(vd, "Ready", "False", "Provisioning") } }
  assert(c:update_status(vd))
  stopped_vm("vm31", "d31", {})
  vm_snapshot("ms31", "vm31")
  local s = assert(wait("vmsnapshot", "ms31", reason_is("BlockDevicesNotReady")))
  t.eq(s.status.phase, "Pending")
  local msg = cond(s, "VirtualMachineSnapshotReady").message
  local prefix = 'Virtual disk not ready: waiting for the virtual disk "d31" to be Ready'
  t.eq(msg:sub(1, #prefix), prefix)
end)

t.test("d.2 #33: changes awaiting a restart: Pending/RestartAwaitingChanges", function()
  ready_disk("d33", "Bound")
  stopped_vm("vm33", "d33", { restart = { { op = "replace", path = "/spec/cpu/cores" } } })
  vm_snapshot("ms33", "vm33")
  local s = assert(wait("vmsnapshot", "ms33", reason_is("RestartAwaitingChanges")))
  t.eq(cond(s, "VirtualMachineSnapshotReady").message,
    'Waiting for the restart and approval of changes to virtual machine "vm33" before taking the snapshot.')
  t.eq(s.status.phase, "Pending")
end)

t.test("d.2 #34: a VM in a transitional phase: VirtualMachineReady False, Pending/WaitingForTheVirtualMachine", function()
  ready_disk("d34", "Bound")
  stopped_vm("vm34", "d34", { phase = "Starting" })
  vm_snapshot("ms34", "vm34")
  local s = assert(wait("vmsnapshot", "ms34", reason_is("WaitingForTheVirtualMachine")))
  t.eq(cond(s, "VirtualMachineReady").message,
    'The virtual machine "vm34" is in the "Starting" phase: waiting for it to reach the Running or Stopped phase.')
  t.eq(s.status.phase, "Pending")
end)

t.done()
