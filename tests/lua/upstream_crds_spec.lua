-- The workflows on a platform started with the upstream platform's own CRDs
-- (`vmsnap up --crds ../shared/upstream/dvp-crds`, test data beside the
-- clone): a disk snapshot and a VM snapshot of a running VM (frozen through
-- its real agent), then a restore next to the original. The upstream
-- VirtualDiskSnapshot has no spec.volumeSnapshotClassName: vmsnap must not
-- send it. Skipped without the CRDs or without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local h = require("helpers")

local UP = h.source .. "/../shared/upstream/dvp-crds"
if not fs.exists(UP) then
  t.skip("the workflows with the upstream CRDs", "not beside the clone: " .. UP)
  return t.done()
end
local probe <close>, why = h.qga_env()
if not probe then
  t.skip("the workflows with the upstream CRDs", why)
  return t.done()
end
probe:cleanup()

local srv <close> = h.platform({ args = { "--crds", UP } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end

t.test("disk snapshot, VM snapshot and restore with the upstream CRDs: Ready and consistent", function()
  local crd = assert(c:get("customresourcedefinition", "virtualdisksnapshots.virtualization.deckhouse.io"))
  t.eq(crd.spec.versions[1].schema.openAPIV3Schema.properties.spec.properties.volumeSnapshotClassName, nil,
    "the upstream VirtualDiskSnapshot is served")
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "up-root" },
    spec = { persistentVolumeClaim = { size = "64Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "up-vm" },
    spec = { virtualMachineClassName = "generic", runPolicy = "AlwaysOn", cpu = { cores = 1 }, memory = { size = "1Gi" },
      blockDeviceRefs = { { kind = "VirtualDisk", name = "up-root" } } } }))
  assert(c:wait_for("vm", "up-vm", function(o)
    local a = o and cond(o, "AgentReady")
    return a and a.status == "True" and o
  end, { timeout = 60 }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "up-vds" },
    spec = { virtualDiskName = "up-root" } }))
  local s = assert(c:wait_for("vdsnapshot", "up-vds", terminal, { timeout = 60 }))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "up-vms" },
    spec = { virtualMachineName = "up-vm", requiredConsistency = true, keepIPAddress = "Never" } }))
  s = assert(c:wait_for("vmsnapshot", "up-vms", terminal, { timeout = 60 }))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local child = assert(c:get("vdsnapshot", s.status.virtualDiskSnapshotNames[1]))
  t.eq(child.spec.volumeSnapshotClassName, nil, "the field the served schema lacks is not sent")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = "up-vmr" },
    spec = { virtualMachineSnapshotName = "up-vms", nameReplacements = {
      { from = { kind = "VirtualMachine", name = "up-vm" }, to = "up-vm-2" },
      { from = { kind = "VirtualDisk", name = "up-root" }, to = "up-root-2" } } } }))
  s = assert(c:wait_for("vmrestore", "up-vmr", terminal, { timeout = 60 }))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  local vm2 = assert(c:get("vm", "up-vm-2"))
  t.eq(vm2.spec.virtualMachineClassName, "generic")
  t.ok(c:wait_for("vd", "up-root-2", h.phase_is("Ready"), { timeout = 60 }), "the restored disk is Ready")
  -- stop the VMs before the platform goes (their agents' images are unmounted)
  for _, n in ipairs({ "up-vm", "up-vm-2" }) do
    assert(c:patch("vm", n, { spec = { runPolicy = "AlwaysOff" } }))
  end
end)

t.done()
