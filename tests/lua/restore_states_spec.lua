-- VirtualMachineRestore scenarios whose "Given" is a snapshot state the
-- snapshot controller would not hold still (spec d.4 #54, #63): `vmsnap
-- serve` and `vmsnap controller --workflows vm-restore` run as children, and
-- the test writes the VirtualMachineSnapshots' status as their controller would.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local base64 = require("vmsnap.base64")
local proc = require("vmsnap.proc")
local h = require("helpers")

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local ctl = assert(proc.spawn({ h.vmsnap, "controller", "--workflows", "vm-restore", "--kubeconfig", srv.kubeconfig },
  { stdout = "null", stderr = "inherit" }))
local _ <close> = setmetatable({}, { __close = function()
  ctl:kill("TERM")
  if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
  ctl:close()
end })

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred) return c:wait_for(kind, name, pred, { timeout = 15 }) end
local function now() return os.date("!%Y-%m-%dT%H:%M:%SZ") end
local reason_is = h.reason_is

-- a VM snapshot in a phase, with its Secret (the VM only) and child names
local function vm_snapshot(name, phase, children)
  local vms = assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = name },
    spec = { virtualMachineName = "vm1" } }))
  local vm = { apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1", namespace = "default" },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "root" } } } }
  assert(c:create({ apiVersion = "v1", kind = "Secret", type = "virtualmachine.virtualization.deckhouse.io/snapshot",
    metadata = { name = name }, data = { vm = base64.encode(base64.encode(json.encode(vm))) } }))
  vms.status = { phase = phase, observedGeneration = vms.metadata.generation, virtualMachineSnapshotSecretName = name,
    virtualDiskSnapshotNames = children,
    conditions = { { type = "VirtualMachineSnapshotReady", status = phase == "Ready" and "True" or "False",
      reason = phase == "Ready" and "VirtualMachineSnapshotReady" or "Snapshotting", message = "",
      lastTransitionTime = now(), observedGeneration = vms.metadata.generation } } }
  return assert(c:update_status(vms))
end
local function restore(name, snap)
  return assert(c:create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = name },
    spec = { virtualMachineSnapshotName = snap } }))
end

t.test("d.4 #54: a snapshot in progress keeps the restore Pending, waiting", function()
  vm_snapshot("ms54", "InProgress", { "root-x" })
  restore("r54", "ms54")
  local r = assert(wait("vmrestore", "r54", reason_is("VirtualMachineSnapshotReadyToUse", "VirtualMachineSnapshotNotReady")))
  t.eq(r.status.phase, "Pending")
  t.eq(cond(r, "VirtualMachineSnapshotReadyToUse").message, 'Waiting for the virtual machine snapshot "ms54" to be ready for use.')
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineSnapshotNotReadyToUse")
end)

t.test("d.4 #63: a child disk snapshot missing: Pending (not Failed), naming it; nothing created", function()
  vm_snapshot("ms63", "Ready", { "root-gone" })
  restore("r63", "ms63")
  local r = assert(wait("vmrestore", "r63", reason_is("VirtualMachineRestoreReady", "VirtualMachineSnapshotNotReady")))
  t.eq(r.status.phase, "Pending")
  t.eq(cond(r, "VirtualMachineSnapshotReadyToUse").reason, "VirtualMachineSnapshotReadyToUse")
  t.eq(cond(r, "VirtualMachineRestoreReady").message, 'The virtual disk snapshot "root-gone" not found.')
  t.eq((c:get("vm", "vm1")), nil, "nothing created")
end)

t.done()
