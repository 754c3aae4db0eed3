-- `vmsnap describe`: a VM snapshot with a hook around its freeze and a disk
-- snapshot held under the same freeze, described from the API the way an
-- operator reads them: phase, conditions, the freeze and its parts, who
-- held it with it, the hook runs, the steps, the children, the Events.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local h = require("helpers")

t.timeout = 90

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local function describe(...)
  local argv = { h.vmsnap, "describe", "--kubeconfig", srv.kubeconfig, ... }
  local r = assert(proc.run(argv, { timeout = 30 }))
  return r.status, r.stdout, r.stderr
end

t.test("a disk snapshot: phase, conditions, steps, its VolumeSnapshot, its Events", function()
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "dd" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  assert(c:wait_for("vd", "dd", h.phase_is("Ready"), { timeout = 30 }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "dds" }, spec = { virtualDiskName = "dd" } }))
  local s = assert(c:wait_for("vdsnapshot", "dds", h.phase_is("Ready"), { timeout = 30 }))
  local st, out = describe("vdsnapshot", "dds")
  t.eq(st, 0, out)
  t.contains(out, "Name:         dds\nNamespace:    default\nKind:         VirtualDiskSnapshot (virtualization.deckhouse.io/v1alpha2)")
  t.contains(out, "Of:           VirtualDisk dd")
  t.contains(out, "Phase:        Ready, consistent: true")
  t.ok(out:find("\n  VirtualDiskSnapshotReady%s+True%s+VirtualDiskSnapshotReady%s+%d+s") ~= nil, out)
  t.ok(out:find("\n  VolumeSnapshot%s+dds%s+ReadyToUse%s+snapcontent%-") ~= nil, out)
  t.ok(out:find("Normal%s+VirtualDiskSnapshottingCompleted%s+%d+s%s+disk%-snapshot%-controller%s+The snapshot of the virtual disk \"dd\" is ready and consistent%.") ~= nil, out)
  t.ok(not out:find("Freeze:", 1, true), "no freeze for an unattached disk")
  t.ok(s.metadata.uid ~= nil)
end)

t.test("a VM snapshot under a hook, with a disk snapshot in its freeze: the freeze, who held it, hooks, children", function()
  local probe <close>, why = h.qga_env()
  if not probe then return t.skip("a running VM", why) end
  probe:cleanup()
  h.running_vm(c, "dvm", "droot")
  assert(c:patch("vm", "dvm", { metadata = { annotations = { ["vmsnap.io/hooks"] =
    '[{"name":"guest-command","params":{"pre_freeze":["true"],"post_thaw":["true"]}}]' } } }))
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "cut300" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "300ms" } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "dvs" },
    spec = { virtualMachineName = "dvm", volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "cut300" } } } }))
  local s = assert(c:wait_for("vmsnapshot", "dvs", h.phase_is("Ready"), { timeout = 40 }))
  local st, out, err = describe("vmsnapshot", "dvs")
  t.eq(st, 0, out .. err)
  t.contains(out, "Of:           VirtualMachine dvm")
  t.contains(out, "Phase:        Ready, consistent: true")
  local ms = s.metadata.annotations["vmsnap.io/freeze-duration-ms"]
  t.contains(out, "Freeze:\n  Frozen at:    ")
  t.contains(out, ("  Frozen for:   %s ms (%s)"):format(ms, s.metadata.annotations["vmsnap.io/freeze-parts-ms"]))
  t.contains(out, "  Budget:       30 s, thaw at Cut")
  -- its child is frozen with it: it holds the same freeze
  t.ok(out:find("Held with:    VirtualDiskSnapshot droot%-") ~= nil, out)
  t.ok(out:find("\n  pre_freeze%s+guest%-command%s+ok%s+%d+") ~= nil, "the pre_freeze run: " .. out)
  t.ok(out:find("\n  post_thaw%s+guest%-command%s+ok%s+%d+") ~= nil, "the post_thaw run")
  t.ok(out:find("\n  VirtualDiskSnapshot%s+droot%-[%x-]+%s+Ready%s+consistent") ~= nil, "the child: " .. out)
  t.ok(out:find("\n  Secret%s+%S+") ~= nil, "the Secret")
  t.contains(out, "Steps:        done: ")
  t.ok(out:find("HookSucceeded", 1, true) ~= nil, "the hook's Event")
  -- the child's own view names its parent's freeze too
  local child
  for _, d in ipairs(assert(c:list_all("vdsnapshot"))) do
    if d.spec.virtualDiskName == "droot" then child = d end
  end
  st, out = describe("vdsnapshot", child.metadata.name)
  t.eq(st, 0, out)
  t.contains(out, "Held with:    VirtualMachineSnapshot dvs")
end)

t.test("errors: a missing object is the API's NotFound (exit 1); a missing argument is usage (exit 2)", function()
  local st, out, err = describe("vmsnapshot", "ghost")
  t.eq(st, 1, out)
  t.eq(err, 'Error from server (NotFound): virtualmachinesnapshots.virtualization.deckhouse.io "ghost" not found\n')
  st, out, err = describe("vmsnapshot")
  t.eq(st, 2)
  t.contains(err, "describe: give KIND and NAME")
  st, out, err = describe("nosuchkind", "x")
  t.eq(st, 1)
  t.contains(err, "nosuchkind")
end)

t.done()
