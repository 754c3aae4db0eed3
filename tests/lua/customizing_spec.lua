-- The worked examples of docs/customizing.md, on the local platform with a
-- real qemu-ga: a gate that refuses VMs labelled backup: skip, and a step
-- inserted after the freeze (scripts/examples/customizing on
-- VMSNAP_SCRIPTS_PATH). Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("the customizing examples", why)
  return t.done()
end
probe:cleanup()

local EXAMPLES = h.source .. "/scripts/examples/customizing"
local srv <close> = h.platform({ env = { VMSNAP_SCRIPTS_PATH = EXAMPLES } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function events(name)
  local out = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    out[e.reason] = (out[e.reason] or 0) + (e.count or 1)
  end
  return out
end
local function vm(name, labels)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name .. "-root" },
    spec = { persistentVolumeClaim = { size = "32Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = name, labels = labels },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = name .. "-root" } } } }))
  assert(wait("vm", name, function(o)
    local a = o and cond(o, "AgentReady")
    return a and a.status == "True" and o
  end, 30))
end

t.test("vmsnap workflow show prints the order of operations with the extension's step after the freeze, and the gate first", function()
  local r = h.run_vmsnap({ "workflow", "show", "vm-snapshot" }, { timeout = 10, env = { VMSNAP_SCRIPTS_PATH = EXAMPLES } })
  t.eq(r.status, 0, r.stderr)
  local order = {}
  for name in r.stdout:gmatch("\n%s+%d+%. (%S+)") do order[#order + 1] = name end
  t.eq(table.concat(order, " "), "gates start store children freeze verify-frozen issue cut thaw disks finish")
  t.contains(r.stdout, "extended by " .. EXAMPLES .. "/workflows/vm-snapshot.d/20-verify-frozen.lua")
  local gates = r.stdout:match("gates %(.-%):\n(.*)$")
  t.ok(gates and gates:match("^%s+5%s+no%-backup%-skip"), "the example gate runs first: " .. tostring(gates))
  -- without the examples on the path the built-in order is back
  r = h.run_vmsnap({ "workflow", "show", "vm-snapshot" }, { timeout = 10 })
  t.ok(not r.stdout:find("verify-frozen", 1, true), "no extension without the path")
  r = h.run_vmsnap({ "workflow", "show", "nope" }, { timeout = 10 })
  t.eq(r.status, 2)
  t.contains(r.stderr, "unknown workflow 'nope'")
end)

t.test("a VM labelled backup: skip is never snapshotted: Failed saying why, the guest never frozen", function()
  vm("vm-skip", { backup = "skip" })
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "snap-skip" },
    spec = { virtualMachineName = "vm-skip" } }))
  local s = assert(wait("vmsnapshot", "snap-skip", terminal))
  t.eq(s.status.phase, "Failed")
  local r = cond(s, "VirtualMachineSnapshotReady")
  t.eq(r.reason, "VirtualMachineSnapshotFailed")
  t.eq(r.message, 'The virtual machine "vm-skip" is labelled backup: skip.')
  t.eq(events("snap-skip").VirtualMachineSnapshottingFrozen, nil, "never frozen")
  t.eq((c:get("secret", "snap-skip")), nil, "nothing stored")
end)

t.test("the step inserted after the freeze runs inside the freeze window and the snapshot is Ready and consistent", function()
  vm("vm-ok")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "snap-ok" },
    spec = { virtualMachineName = "vm-ok" } }))
  local s = assert(wait("vmsnapshot", "snap-ok", terminal, 30))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local ev = events("snap-ok")
  t.eq(ev.FreezeVerified, 1, "the guest agent said frozen, inside the freeze")
  t.eq(ev.VirtualMachineSnapshottingFrozen, 1)
  local rec = json.decode(s.metadata.annotations["vmsnap.io/steps"])
  t.contains(table.concat(rec.done, " "), "freeze verify-frozen issue")
end)

t.done()
