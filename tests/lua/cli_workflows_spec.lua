-- The one-shot commands when no snapshot controller runs (`vmsnap up
-- --no-controllers`): `vmsnap snapshot disk|vm --wait` and `vmsnap restore
-- vm --wait` run the controllers in their own process while they wait;
-- `vmsnap restore disk --wait` follows the platform's disk controller. And
-- their argument errors.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local h = require("helpers")

local srv <close> = h.platform({ args = { "--no-controllers" } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local function vmsnap(args, timeout)
  local argv = {}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--kubeconfig"
  argv[#argv + 1] = srv.kubeconfig
  return h.run_vmsnap(argv, { timeout = timeout or 60 })
end
local phase_is = h.phase_is

assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d1" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1" },
  spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "d1" } } } }))
assert(c:wait_for("vm", "vm1", phase_is("Stopped"), { timeout = 20 }))

t.test("snapshot disk --wait reconciles in its own process; restore disk --wait follows the new disk", function()
  local r = vmsnap({ "snapshot", "disk", "d1", "--name", "s1", "--wait" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "(no snapshot controller is running: reconciling here)")
  t.contains(r.stdout, "s1 is Ready (consistent)")
  r = vmsnap({ "restore", "disk", "d1-copy", "--from", "s1", "--size", "32Mi", "--wait" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "d1-copy is Ready (32Mi)")
end)

t.test("snapshot vm --wait and restore vm --wait reconcile in their own process", function()
  local r = vmsnap({ "snapshot", "vm", "vm1", "--name", "ms", "--keep-ip", "Never", "--class", "local=local", "--wait" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "(no snapshot controller is running: reconciling here)")
  t.contains(r.stdout, "ms is Ready (consistent): 1 disk(s), secret ms")
  local ms = assert(c:get("vmsnapshot", "ms"))
  t.eq(ms.spec.volumeSnapshotClasses[1].volumeSnapshotClassName, "local")
  r = vmsnap({ "restore", "vm", "--from", "ms", "--name", "r1", "--rename", "vm1=vm2", "--rename", "VirtualDisk/d1=d2", "--wait" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "r1 is Ready")
  t.ok(c:get("vm", "vm2"), "vm2 restored")
  t.eq(assert(c:get("vd", "d2")).spec.dataSource.objectRef.name, "d1-" .. ms.metadata.uid)
end)

t.test("argument errors name the argument (exit 2); a failed snapshot exits 1", function()
  local cases = {
    { { "snapshot", "vm" }, "usage: vmsnap snapshot disk|vm NAME" },
    { { "snapshot", "vm", "vm1", "--class", "local" }, '--class "local": expected SC=VSC' },
    { { "snapshot", "disk", "d1", "--keep-ip", "Never" }, "--keep-ip is for vm snapshots" },
    { { "snapshot", "vm", "vm1", "--freeze-budget", "-1" }, "--freeze-budget must be a duration (30s, 2m, 1h) or a number of seconds, not '-1'" },
    { { "restore", "vm" }, "--from SNAPSHOT is required" },
    { { "restore", "vm", "extra", "--from", "ms" }, "usage: vmsnap restore disk NAME" },
    { { "restore", "disk", "x", "--from", "s1", "--rename", "a=b" }, "--rename, --dry-run and --name are for vm restores" },
    { { "restore", "vm", "--from", "ms", "--size", "1Gi" }, "--size and --storage-class are for disk restores" },
  }
  for _, case in ipairs(cases) do
    local r = vmsnap(case[1])
    t.eq(r.status, 2, table.concat(case[1], " "))
    t.contains(r.stderr, case[2])
  end
  -- a snapshot that fails: exit 1 naming it
  local r = vmsnap({ "snapshot", "vm", "vm1", "--name", "bad", "--class", "other=local", "--wait" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "error: bad failed")
  t.contains(r.stdout, "VirtualMachineSnapshotFailed")
  r = vmsnap({ "restore", "vm", "--from", "nope", "--dry-run" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'virtualmachinesnapshots.virtualization.deckhouse.io "nope" not found')
end)

t.done()
