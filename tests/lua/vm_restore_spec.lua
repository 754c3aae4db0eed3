-- VirtualMachineRestores through the API of the local platform: the
-- scenarios of docs/behaviour.md d.4, Decision 6 (the documented checks in
-- full; validate everything first; undo a restore that fails midway), and
-- the data: a restored disk holds exactly what the disk held at snapshot
-- time. The platform runs without its snapshot controllers (`vmsnap up
-- --no-controllers`); `vmsnap controller` runs them through a fault proxy,
-- which refuses the third create of one restore.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local h = require("helpers")

local srv <close> = h.platform({ args = { "--no-controllers" } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

-- the snapshot controllers, through the fault proxy
local fp <close> = h.faultproxy(srv.port)
local ctl, _ <close> = h.controller_behind(srv, fp)

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local phase_is = h.phase_is
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function create(o) return assert(c:create(o)) end
local function disk(name)
  create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name }, spec = { persistentVolumeClaim = { size = "16Mi" } } })
  return assert(wait("vd", name, phase_is("Ready")))
end
local function volume_file(vd)
  local pvc = assert(c:get("pvc", vd.status.target.persistentVolumeClaimName))
  return assert(c:get("pv", pvc.spec.volumeName)).spec.csi.volumeHandle
end
local function write_at(file, text)
  local f = assert(io.open(file, "r+b"))
  f:write(text)
  f:close()
end
local function read_at(file, n)
  local f = assert(io.open(file, "rb"))
  local s = f:read(n)
  f:close()
  return s
end
local function snapshot(name, vm, spec)
  local s = { virtualMachineName = vm }
  for k, v in pairs(spec or {}) do s[k] = v end
  create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = name }, spec = s })
  local o, err = wait("vmsnapshot", name, terminal)
  if not o then
    local cur = c:get("vmsnapshot", name)
    local v = c:get("vm", vm)
    error(("%s: %s; snapshot status %s; VM conditions %s"):format(name, tostring(err), json.encode(cur and cur.status or {}),
      json.encode(v and v.status and v.status.conditions or {})), 2)
  end
  assert(o.status.phase == "Ready", json.encode(o.status))
  return o
end
local function restore(name, snap, renames)
  local rules
  for _, r in ipairs(renames or {}) do
    rules = rules or {}
    local kind, from, to = r:match("^(%w*)/([^=]+)=(.+)$")
    rules[#rules + 1] = { from = { kind = kind ~= "" and kind or nil, name = from }, to = to }
  end
  return create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = name },
    spec = { virtualMachineSnapshotName = snap, nameReplacements = rules } })
end
-- the objects of a restore (by its annotation)
local function restored_by(uid)
  local out = {}
  for _, kind in ipairs({ "vm", "vd", "vmip", "vmbda", "secret" }) do
    for _, o in ipairs(assert(c:list_all(kind))) do
      if (o.metadata.annotations or {})["virtualization.deckhouse.io/vmrestore"] == uid then
        out[#out + 1] = o.kind .. "/" .. o.metadata.name
      end
    end
  end
  table.sort(out)
  return out
end

-- the objects of a restore still there after up to `secs` (those being
-- deleted are gone when the platform's finalizers have run)
local function left_after(uid, secs)
  local left
  for _ = 1, secs * 10 do
    left = restored_by(uid)
    if #left == 0 then break end
    require("vmsnap.task").sleep(0.1)
  end
  return left
end

-- vm1: root (with known data) and a hot-plugged disk data; stopped
local root = disk("root")
disk("data")
write_at(volume_file(root), "snapshot-time bytes")
create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1", labels = { app = "demo" } },
  spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "root" } } } })
create({ apiVersion = G, kind = "VirtualMachineBlockDeviceAttachment", metadata = { name = "att1" },
  spec = { virtualMachineName = "vm1", blockDeviceRef = { kind = "VirtualDisk", name = "data" } } })
local vm1 = assert(wait("vm", "vm1", function(o)
  if not (o and o.status and o.status.virtualMachineIPAddressName) then return end
  for _, r in ipairs(o.status.blockDeviceRefs or {}) do if r.name == "data" then return o end end
end))
local ip1 = assert(wait("vmip", vm1.status.virtualMachineIPAddressName, function(o) return o and o.status and o.status.address and o end))
-- the disks' own labels and annotations come back with them (Decision 13)
assert(c:patch("vd", "root", { metadata = { labels = { tier = "db" }, annotations = { ["example.com/owner"] = "team-a" } } }))
local ms_never = snapshot("ms-never", "vm1", { keepIPAddress = "Never" })
local ms = snapshot("ms", "vm1")
write_at(volume_file(root), "LATER BYTES, CHANGED")

t.test("d.4 #53: a missing snapshot keeps the restore Pending; its arrival lets it proceed", function()
  restore("r-late", "ms-late", { "VirtualMachine/vm1=vm-late", "VirtualDisk/root=root-late", "VirtualDisk/data=data-late",
    "VirtualMachineBlockDeviceAttachment/att1=att-late" })
  local r = assert(wait("vmrestore", "r-late", function(o) return o and cond(o, "VirtualMachineSnapshotReadyToUse") and o end))
  t.eq(r.status.phase, "Pending")
  t.eq(cond(r, "VirtualMachineSnapshotReadyToUse").reason, "VirtualMachineSnapshotNotFound")
  t.eq(cond(r, "VirtualMachineSnapshotReadyToUse").message, 'The virtual machine snapshot "ms-late" not found.')
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineSnapshotNotReadyToUse")
  snapshot("ms-late", "vm1", { keepIPAddress = "Never" })
  r = assert(wait("vmrestore", "r-late", terminal))
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.ok(c:get("vm", "vm-late"), "vm-late restored")
end)

t.test("d.4 #55: a live VM of the same name: Failed/Conflict on the first failing object, nothing created", function()
  local r = restore("r55", "ms")
  r = assert(wait("vmrestore", "r55", terminal))
  t.eq(r.status.phase, "Failed")
  local x = cond(r, "VirtualMachineRestoreReady")
  t.eq(x.reason, "VirtualMachineRestoreConflict")
  t.eq(x.message, ('The virtual machine ip address %q is already in use and cannot be used for the restored virtual machine.')
    :format(ip1.metadata.name))
  t.eq(#restored_by(r.metadata.uid), 0, "nothing created")
  local r2 = restore("r55b", "ms-never")
  r2 = assert(wait("vmrestore", "r55b", terminal))
  t.eq(cond(r2, "VirtualMachineRestoreReady").message, 'The virtual machine "vm1" already exists.')
  t.eq(assert(c:get("vm", "vm1")).metadata.uid, vm1.metadata.uid, "the live VM is untouched")
end)

t.test("d.4 #58: an attachment of the same name conflicts", function()
  restore("r58", "ms-never", { "VirtualMachine/vm1=vm58", "VirtualDisk/root=root58", "VirtualDisk/data=data58" })
  local r = assert(wait("vmrestore", "r58", terminal))
  t.eq(cond(r, "VirtualMachineRestoreReady").message, 'The virtual machine block device attachment "att1" already exists.')
  t.eq(#restored_by(r.metadata.uid), 0, "nothing created")
end)

t.test("d.4 #56: a clone with replacements next to the original; the restored disk holds the snapshot-time data", function()
  local r = restore("r56", "ms-never", { "VirtualMachine/vm1=vm2", "VirtualDisk/root=root2", "VirtualDisk/data=data2",
    "VirtualMachineBlockDeviceAttachment/att1=att2" })
  r = assert(wait("vmrestore", "r56", terminal))
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineRestoreReady")
  local vm2 = assert(c:get("vm", "vm2"))
  t.eq(vm2.spec.blockDeviceRefs[1].name, "root2")
  t.eq(vm2.spec.virtualMachineIPAddressName, nil, "a fresh automatic address")
  t.eq(vm2.metadata.labels.app, "demo")
  local uid = ms_never.metadata.uid
  t.eq(assert(c:get("vd", "root2")).spec.dataSource.objectRef.name, "root-" .. uid)
  t.eq(assert(c:get("vd", "data2")).spec.dataSource.objectRef.name, "data-" .. uid)
  local att2 = assert(c:get("vmbda", "att2"))
  t.eq(att2.spec.virtualMachineName, "vm2")
  t.eq(att2.spec.blockDeviceRef.name, "data2")
  local root2 = assert(wait("vd", "root2", phase_is("Ready")))
  t.eq(root2.metadata.labels and root2.metadata.labels.tier, "db", "Decision 13: the disk's labels are restored")
  t.eq(root2.metadata.annotations["example.com/owner"], "team-a", "and its annotations")
  t.eq(assert(c:get("vd", "data2")).metadata.labels, nil, "a disk without labels gets none")
  t.eq(read_at(volume_file(root2), 19), "snapshot-time bytes")
  local v2 = assert(wait("vm", "vm2", function(o) return o and o.status and o.status.virtualMachineIPAddressName and o end))
  t.ok(v2.status.virtualMachineIPAddressName ~= ip1.metadata.name, "not the original's address")
end)

t.test("Decision 14: kubectl describe tells each restore's story in Events", function()
  local function events(name) return h.described_events(srv, "vmrestore", name) end
  -- (the event of a phase is posted once the phase is written: a reader
  -- that saw Ready may ask before it is in)
  local ok = events("r56")
  local deadline = require("vmsnap.task").now() + 5
  while not ok:find("VirtualMachineRestoringCompleted", 1, true) and require("vmsnap.task").now() < deadline do
    require("vmsnap.task").sleep(0.1)
    ok = events("r56")
  end
  t.contains(ok, "VirtualMachineRestoringStarted")
  t.contains(ok, 'The restore from the virtual machine snapshot "ms-never" has started: every object is created.')
  t.contains(ok, "VirtualMachineRestoringCompleted")
  t.contains(ok, 'The restore from the virtual machine snapshot "ms-never" is complete.')
  local bad = events("r55b")
  t.contains(bad, "Warning")
  t.contains(bad, "VirtualMachineRestoringFailed")
  t.contains(bad, 'The virtual machine "vm1" already exists.')
  t.ok(not bad:find("VirtualMachineRestoringStarted", 1, true), "refused before anything was created: never started")
  local late = events("r-late")
  t.contains(late, "VirtualMachineRestoringPending")
  t.contains(late, "VirtualMachineRestoringCompleted")
end)

t.test("Decision 13: an attachment not in the snapshot that names the restored VM is a conflict; once it is gone the VM has only the snapshot's devices", function()
  disk("extra")
  create({ apiVersion = G, kind = "VirtualMachineBlockDeviceAttachment", metadata = { name = "att-stray" },
    spec = { virtualMachineName = "vm7", blockDeviceRef = { kind = "VirtualDisk", name = "extra" } } })
  local renames = { "VirtualMachine/vm1=vm7", "VirtualDisk/root=root7", "VirtualDisk/data=data7",
    "VirtualMachineBlockDeviceAttachment/att1=att7" }
  local r = restore("r-stray", "ms-never", renames)
  r = assert(wait("vmrestore", "r-stray", terminal))
  t.eq(r.status.phase, "Failed")
  local x = cond(r, "VirtualMachineRestoreReady")
  t.eq(x.reason, "VirtualMachineRestoreConflict")
  t.eq(x.message, 'The virtual machine block device attachment "att-stray" attaches the virtual disk "extra" to the '
    .. 'virtual machine "vm7" and is not part of the snapshot: delete it or rename the virtual machine.')
  t.eq(#restored_by(r.metadata.uid), 0, "nothing created")
  assert(c:delete("vmbda", "att-stray"))
  t.eq(wait("vmbda", "att-stray", function(o) return o == nil end), true)
  r = restore("r-stray2", "ms-never", renames)
  r = assert(wait("vmrestore", "r-stray2", terminal))
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  local v3 = assert(wait("vm", "vm7", function(o) return o and o.status and o.status.blockDeviceRefs and o end))
  local names = {}
  for _, d in ipairs(v3.status.blockDeviceRefs) do names[#names + 1] = d.name end
  t.eq(table.concat(names, ","), "root7,data7", "only the snapshot's devices")
end)

t.test("d.2 #45: kubectl columns of VM snapshots; their spec is immutable", function()
  local out = srv:kubectl({ "get", "vmsnapshot" })
  t.eq(out.status, 0, out.stderr)
  t.eq(out.stdout:match("^[^\n]+"):gsub("%s+", " "), "NAME PHASE CONSISTENT AGE")
  t.ok(out.stdout:find("ms%s+Ready%s+true"), out.stdout)
  out = srv:kubectl({ "patch", "vmsnapshot", "ms", "--type=merge", "-p", '{"spec":{"keepIPAddress":"Never"}}' })
  t.ok(out.status ~= 0, "rejected")
  t.contains(out.stderr, "VirtualMachineSnapshot is an idempotent resource: specification changes are not available")
  out = srv:kubectl({ "label", "vmsnapshot", "ms", "team=a" })
  t.eq(out.status, 0, "labels may change: " .. out.stderr)
end)

t.test("d.4 #65: kubectl columns and categories; the spec is immutable", function()
  local out = srv:kubectl({ "get", "vmrestore" })
  t.eq(out.status, 0, out.stderr)
  t.eq(out.stdout:match("^[^\n]+"):gsub("%s+", " "), "NAME PHASE AGE")
  out = srv:kubectl({ "get", "all" })
  t.ok(not out.stdout:find("virtualmachinerestore", 1, true), "vmrestores are not in 'all'")
  out = srv:kubectl({ "patch", "vmrestore", "r56", "--type=merge", "-p", '{"spec":{"virtualMachineSnapshotName":"other"}}' })
  t.ok(out.status ~= 0, "rejected")
  t.contains(out.stderr, "VirtualMachineRestore is an idempotent resource: specification changes are not available")
end)

t.test("a restore whose third create is refused leaves none of its objects; a 500 is retried", function()
  -- creates (POSTs) of disks: two dry runs, root3 (the 2nd create: VM, root3), data3 (the 3rd) refused
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualdisks$", "ok,ok,ok,403")
  local r = restore("r-fail", "ms-never", { "VirtualMachine/vm1=vm3",
    "VirtualDisk/root=root3", "VirtualDisk/data=data3", "VirtualMachineBlockDeviceAttachment/att1=att3" })
  r = assert(wait("vmrestore", "r-fail", terminal))
  t.eq(fp:stats().faulted, 1, "the refusal was injected")
  fp:clear()
  t.eq(r.status.phase, "Failed")
  local x = cond(r, "VirtualMachineRestoreReady")
  t.eq(x.reason, "VirtualMachineRestoreFailed")
  t.contains(x.message, 'Failed to create VirtualDisk "data3"')
  -- what it created is deleted at once (gone when the platform's finalizers have run)
  local left = left_after(r.metadata.uid, 10)
  t.eq(#left, 0, "no object of the failed restore remains: " .. table.concat(left, " "))
  t.eq((c:get("vm", "vm3")), nil)
  t.eq((c:get("vd", "root3")), nil)
  -- the Static address of the snapshot is the original's, which is in use: a conflict, found before any create
  r = restore("r-retry", "ms", { "VirtualMachine/vm1=vm4", "VirtualMachineIPAddress/" .. ip1.metadata.name .. "=ip4",
    "VirtualDisk/root=root4", "VirtualDisk/data=data4", "VirtualMachineBlockDeviceAttachment/att1=att4" })
  r = assert(wait("vmrestore", "r-retry", terminal))
  t.eq(r.status.phase, "Failed")
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineRestoreConflict")
  t.contains(cond(r, "VirtualMachineRestoreReady").message, ("The set address %q is already in use"):format(ip1.status.address))
  -- a transient error on the VM's create (its dry run passes, the create gets a 500): undone, retried, whole
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualmachines$", "ok,500")
  r = restore("r-retry2", "ms-never", { "VirtualMachine/vm1=vm4", "VirtualDisk/root=root4", "VirtualDisk/data=data4",
    "VirtualMachineBlockDeviceAttachment/att1=att4" })
  r = assert(wait("vmrestore", "r-retry2", terminal))
  t.eq(fp:stats().faulted, 1, "the 500 was injected")
  fp:clear()
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.eq(#restored_by(r.metadata.uid), 4, "VM, two disks, one attachment: " .. table.concat(restored_by(r.metadata.uid), " "))
end)

t.test("a transient failure after the VM's create keeps what was made: the restore goes on from it, and never adopts its own object while it is deleted", function()
  -- creates of disks: two dry runs, then rootkeep (held 0.8 s: the VM exists
  -- meanwhile), then datakeep's create gets a 500
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualdisks$", "ok,ok,slow:800,500")
  local r = restore("r-keep", "ms-never", { "VirtualMachine/vm1=vmkeep",
    "VirtualDisk/root=rootkeep", "VirtualDisk/data=datakeep", "VirtualMachineBlockDeviceAttachment/att1=attkeep" })
  -- the VM is held by a finalizer of the test's: were it deleted by the
  -- failed pass, it would stay terminating, and a later pass adopt it so
  assert(wait("vm", "vmkeep", function(o) return o end, 5))
  assert(c:patch("vm", "vmkeep", { metadata = { finalizers = { "test.vmsnap.io/hold" } } }))
  local _ <close> = setmetatable({}, { __close = function()
    c:patch("vm", "vmkeep", { metadata = { finalizers = require("vmsnap.json").null } })
  end })
  r = assert(wait("vmrestore", "r-keep", terminal))
  t.eq(fp:stats().faulted, 1, "the 500 was injected")
  fp:clear()
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  local vm = assert(c:get("vm", "vmkeep"))
  t.eq(vm.metadata.deletionTimestamp, nil, "the restored VM is not being deleted")
  t.eq(#restored_by(r.metadata.uid), 4, "VM, two disks, one attachment: " .. table.concat(restored_by(r.metadata.uid), " "))
  -- a terminal failure after a transient one: everything of the restore
  -- goes, even while deletes fail for a while (the undo stays owed)
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualdisks$", "ok,ok,500,ok,403")
  fp:plan("DELETE /apis/" .. G .. "/namespaces/default/virtualmachines/vmundo", "503,503")
  r = restore("r-undo", "ms-never", { "VirtualMachine/vm1=vmundo",
    "VirtualDisk/root=rootundo", "VirtualDisk/data=dataundo", "VirtualMachineBlockDeviceAttachment/att1=attundo" })
  r = assert(wait("vmrestore", "r-undo", terminal))
  t.eq(r.status.phase, "Failed")
  t.contains(cond(r, "VirtualMachineRestoreReady").message, 'Failed to create VirtualDisk "dataundo"')
  local left = left_after(r.metadata.uid, 15)
  t.eq(#left, 0, "no object of the failed restore remains: " .. table.concat(left, " "))
  t.eq(fp:stats().pending, 0, "the failed deletes were all answered so")
  fp:clear()
end)

t.test("Decision 6: a restore deleted while it creates takes back what it created before it goes; a Ready one deleted keeps its objects", function()
  -- creates of disks: two dry runs, then rootdel's held 2 s: the VM exists meanwhile
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualdisks$", "ok,ok,slow:2000")
  local r = restore("r-del", "ms-never", { "VirtualMachine/vm1=vmdel",
    "VirtualDisk/root=rootdel", "VirtualDisk/data=datadel", "VirtualMachineBlockDeviceAttachment/att1=attdel" })
  assert(wait("vm", "vmdel", function(o) return o end, 10))
  local before = assert(c:get("vmrestore", "r-del"))
  assert(c:delete("vmrestore", "r-del"))
  t.eq(wait("vmrestore", "r-del", function(o) return o == nil end, 20), true, "the restore went once it was undone")
  fp:clear()
  local left = left_after(r.metadata.uid, 15)
  t.eq(#left, 0, "no object of the deleted restore remains: " .. table.concat(left, " "))
  t.eq((c:get("vm", "vmdel")), nil)
  t.eq(json.encode(before.metadata.finalizers), '["vmsnap.io/vmrestore-cleanup"]', "held by its cleanup finalizer")
  -- deleted together with its snapshot (whose Secret, the plan, goes with it): what it made still goes
  snapshot("ms-del", "vm1", { keepIPAddress = "Never" })
  fp:plan("/apis/" .. G .. "/namespaces/default/virtualdisks$", "ok,ok,slow:2000")
  r = restore("r-del2", "ms-del", { "VirtualMachine/vm1=vmdel2",
    "VirtualDisk/root=rootdel2", "VirtualDisk/data=datadel2", "VirtualMachineBlockDeviceAttachment/att1=attdel2" })
  assert(wait("vm", "vmdel2", function(o) return o end, 10))
  assert(c:delete("vmsnapshot", "ms-del"))
  assert(c:delete("vmrestore", "r-del2"))
  t.eq(wait("vmrestore", "r-del2", function(o) return o == nil end, 20), true)
  fp:clear()
  left = left_after(r.metadata.uid, 15)
  t.eq(#left, 0, "no object of the restore deleted with its snapshot remains: " .. table.concat(left, " "))
  -- a restore that is Ready owes nothing: deleted, it goes at once and its objects stay
  local ok = assert(wait("vmrestore", "r-retry2", phase_is("Ready")))
  assert(c:delete("vmrestore", "r-retry2"))
  t.eq(wait("vmrestore", "r-retry2", function(o) return o == nil end, 10), true)
  t.eq(#restored_by(ok.metadata.uid), 4, "the restored VM, its disks and attachment stay")
end)

t.test("vmsnap snapshot vm / restore vm: --dry-run prints the plan and conflicts, --wait follows", function()
  local r = h.run_vmsnap({ "snapshot", "vm", "vm1", "--keep-ip", "Never", "--name", "cli-snap", "--wait",
    "--kubeconfig", srv.kubeconfig }, { timeout = 60 })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "virtualmachinesnapshot.virtualization.deckhouse.io/cli-snap created")
  t.contains(r.stdout, "cli-snap is Ready (consistent): 2 disk(s), secret cli-snap")
  -- a plan with conflicts: exit 1, every conflict shown, nothing created
  r = h.run_vmsnap({ "restore", "vm", "--from", "cli-snap", "--dry-run", "--kubeconfig", srv.kubeconfig })
  t.eq(r.status, 1)
  t.contains(r.stdout, 'CONFLICT: the virtual machine "vm1" already exists')
  t.contains(r.stdout, 'CONFLICT: the virtual disk "root" already exists')
  t.contains(r.stderr, 'the restore would fail: the virtual machine "vm1" already exists')
  -- renamed: a clean plan, still nothing created
  local ren = { "--rename", "VirtualMachine/vm1=vm5", "--rename", "VirtualDisk/root=root5", "--rename", "data=data5",
    "--rename", "VirtualMachineBlockDeviceAttachment/att1=att5" }
  local argv = { "restore", "vm", "--from", "cli-snap", "--dry-run", "--kubeconfig", srv.kubeconfig }
  for _, a in ipairs(ren) do argv[#argv + 1] = a end
  r = h.run_vmsnap(argv)
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("VirtualMachine%s+vm5%s+create"), r.stdout)
  t.ok(r.stdout:find("VirtualDisk%s+data5%s+create"), r.stdout)
  t.eq((c:get("vm", "vm5")), nil, "a dry run creates nothing")
  -- and for real
  argv = { "restore", "vm", "--from", "cli-snap", "--name", "cli-restore", "--wait", "--kubeconfig", srv.kubeconfig }
  for _, a in ipairs(ren) do argv[#argv + 1] = a end
  r = h.run_vmsnap(argv, { timeout = 60 })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "cli-restore is Ready")
  t.eq(assert(c:get("vm", "vm5")).spec.blockDeviceRefs[1].name, "root5")
  -- bad arguments name the argument
  r = h.run_vmsnap({ "restore", "vm", "--from", "cli-snap", "--rename", "nonsense", "--kubeconfig", srv.kubeconfig })
  t.eq(r.status, 2)
  t.contains(r.stderr, '--rename "nonsense": expected KIND/OLD=NEW or OLD=NEW')
  r = h.run_vmsnap({ "snapshot", "vm", "vm1", "--keep-ip", "Sometimes", "--kubeconfig", srv.kubeconfig })
  t.eq(r.status, 2)
  t.contains(r.stderr, "--keep-ip must be Always or Never")
end)

t.test("d.4 #59 and Decision 6: a free address and an equal Secret are reused; a different address or Secret conflicts", function()
  disk("root6")
  create({ apiVersion = "v1", kind = "Secret", metadata = { name = "cloud-init" }, type = "Opaque",
    data = { userData = "I2Nsb3VkLWNvbmZpZwo=" } })
  create({ apiVersion = G, kind = "VirtualMachineIPAddress", metadata = { name = "ip6" },
    spec = { type = "Static", staticIP = "10.66.0.200" } })
  create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm6" },
    spec = { runPolicy = "AlwaysOff", virtualMachineIPAddressName = "ip6",
      provisioning = { type = "UserDataRef", userDataRef = { kind = "Secret", name = "cloud-init" } },
      blockDeviceRefs = { { kind = "VirtualDisk", name = "root6" } } } })
  assert(wait("vmip", "ip6", phase_is("Attached")))
  local ms6 = snapshot("ms6", "vm6")
  local sec = assert(c:get("secret", "ms6"))
  t.ok(sec.data.provisioner, "the provisioning Secret is stored")
  t.ok(sec.data.vmip, "the Static address is stored")
  local kinds = {}
  for _, x in ipairs(ms6.status.resources) do kinds[#kinds + 1] = x.kind end
  t.eq(table.concat(kinds, ","), "VirtualMachine,VirtualMachineIPAddress,Secret,VirtualDisk")
  assert(c:delete("vm", "vm6"))
  t.eq(wait("vm", "vm6", function(o) return o == nil end), true)
  local ip6 = assert(wait("vmip", "ip6", phase_is("Bound")))
  -- #59: the free address and the equal Secret are taken as they are
  restore("r59", "ms6", { "VirtualMachine/vm6=vm6b", "VirtualDisk/root6=root6b" })
  local r = assert(wait("vmrestore", "r59", terminal))
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.eq(assert(c:get("vmip", "ip6")).metadata.uid, ip6.metadata.uid, "the address object is reused, not replaced")
  t.eq(assert(c:get("vm", "vm6b")).spec.virtualMachineIPAddressName, "ip6")
  -- Decision 6: an existing Static address with another IP conflicts
  assert(c:delete("vm", "vm6b"))
  t.eq(wait("vm", "vm6b", function(o) return o == nil end), true)
  assert(c:delete("vmip", "ip6"))
  t.eq(wait("vmip", "ip6", function(o) return o == nil end), true)
  create({ apiVersion = G, kind = "VirtualMachineIPAddress", metadata = { name = "ip6" },
    spec = { type = "Static", staticIP = "10.66.0.201" } })
  restore("r6a", "ms6", { "VirtualMachine/vm6=vm6c", "VirtualDisk/root6=root6c" })
  r = assert(wait("vmrestore", "r6a", terminal))
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineRestoreConflict")
  t.eq(cond(r, "VirtualMachineRestoreReady").message, 'The virtual machine ip address "ip6" has the address "10.66.0.201", '
    .. 'not the stored "10.66.0.200", and cannot be used for the restored virtual machine.')
  -- Decision 6: an existing provisioning Secret with other data conflicts
  assert(c:patch("secret", "cloud-init", { data = { userData = "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogeAo=" } }))
  restore("r6b", "ms6", { "VirtualMachine/vm6=vm6c", "VirtualDisk/root6=root6c", "VirtualMachineIPAddress/ip6=ip6c" })
  r = assert(wait("vmrestore", "r6b", terminal))
  t.eq(cond(r, "VirtualMachineRestoreReady").reason, "VirtualMachineRestoreConflict")
  t.eq(cond(r, "VirtualMachineRestoreReady").message,
    'The provisioner secret "cloud-init" already exists and has not the same data content.')
  t.eq(#restored_by(r.metadata.uid), 0, "nothing created")
end)

t.test("d.4 #52: restore after deleting the original: the address kept (Static), the VM, its disks, in order", function()
  for _, x in ipairs({ { "vmrestore", "r-late" }, { "vm", "vm-late" } }) do c:delete(x[1], x[2]) end
  assert(c:delete("vmbda", "att1"))
  assert(c:delete("vm", "vm1"))
  t.eq(wait("vm", "vm1", function(o) return o == nil end), true)
  t.eq(wait("vmip", ip1.metadata.name, function(o) return o == nil end), true)
  assert(c:delete("vd", "root"))
  assert(c:delete("vd", "data"))
  t.eq(wait("vd", "root", function(o) return o == nil end), true)
  t.eq(wait("vd", "data", function(o) return o == nil end), true)
  local start = assert(c:list("vm")).metadata.resourceVersion
  restore("r52", "ms")
  local r = assert(wait("vmrestore", "r52", terminal))
  -- the resourceVersion each object was created at (the ADDED events since start)
  local created = {}
  for _, kind in ipairs({ "vmip", "vm", "vd" }) do
    local w <close> = assert(c:watch(kind, { resource_version = start }))
    while true do
      local ev = w:next(0.3)
      if not ev then break end
      if ev.type == "ADDED" then created[kind .. "/" .. ev.object.metadata.name] = tonumber(ev.object.metadata.resourceVersion) end
    end
  end
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.eq(cond(r, "VirtualMachineSnapshotReadyToUse").reason, "VirtualMachineSnapshotReadyToUse")
  local ip = assert(c:get("vmip", ip1.metadata.name))
  t.eq(ip.spec.type, "Static")
  t.eq(ip.spec.staticIP, ip1.status.address)
  t.eq(ip.metadata.ownerReferences, nil)
  local v = assert(c:get("vm", "vm1"))
  t.eq(v.spec.virtualMachineIPAddressName, ip1.metadata.name)
  local d = assert(c:get("vd", "root"))
  t.eq(d.spec.dataSource.objectRef.name, "root-" .. ms.metadata.uid)
  t.eq(d.spec.persistentVolumeClaim, nil)
  t.eq(d.metadata.labels and d.metadata.labels.tier, "db", "Decision 13")
  local a, b, e = created["vmip/" .. ip1.metadata.name], created["vm/vm1"], created["vd/root"]
  t.ok(a and b and e and a < b and b < e, ("created in order VMIP, VM, VD: %s %s %s"):format(tostring(a), tostring(b), tostring(e)))
  t.eq(read_at(volume_file(assert(wait("vd", "root", phase_is("Ready")))), 19), "snapshot-time bytes")
end)

t.done()
