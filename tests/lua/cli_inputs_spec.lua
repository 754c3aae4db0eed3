-- The command line's bad inputs, each with its exact message and exit
-- status, against the local platform: a snapshot or restore of something
-- that does not exist creates nothing, durations are strict, a disk smaller
-- than its snapshot is refused (a larger one is honoured), --rename is held
-- to what the snapshot holds, `vm stop` of an AlwaysOn VM says why it
-- cannot, and -o yaml hides managedFields as kubectl does.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local h = require("helpers")

t.timeout = 90

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local function vmsnap(...)
  local argv = { h.vmsnap, ... }
  argv[#argv + 1] = "--kubeconfig"
  argv[#argv + 1] = srv.kubeconfig
  local r = assert(proc.run(argv, { timeout = 60 }))
  return r.status, r.stdout, r.stderr
end
local function refused(want_status, want_err, ...)
  local st, out, err = vmsnap(...)
  t.eq(st, want_status, table.concat({ ... }, " ") .. ": " .. out)
  t.eq(err, want_err)
end

-- a disk with a Ready snapshot, and a stopped VM with a Ready snapshot
assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "d1" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
assert(c:wait_for("vd", "d1", h.phase_is("Ready"), { timeout = 30 }))
assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "s1" }, spec = { virtualDiskName = "d1" } }))
assert(c:wait_for("vdsnapshot", "s1", h.phase_is("Ready"), { timeout = 30 }))

t.test("a snapshot of a disk or VM that does not exist: the API's NotFound, exit 1, nothing created", function()
  refused(1, 'Error from server (NotFound): virtualdisks.virtualization.deckhouse.io "no-such-disk" not found\n'
    .. "(nothing created; --allow-missing creates the snapshot anyway and it waits)\n",
    "snapshot", "disk", "no-such-disk", "--wait")
  refused(1, 'Error from server (NotFound): virtualmachines.virtualization.deckhouse.io "ghost" not found\n'
    .. "(nothing created; --allow-missing creates the snapshot anyway and it waits)\n",
    "snapshot", "vm", "ghost", "--name", "g1")
  t.eq(#assert(c:list_all("vdsnapshot")), 1, "only s1")
  t.eq(#assert(c:list_all("vmsnapshot")), 0)
  -- --allow-missing: the reference's behaviour (it waits for the disk)
  local st, out = vmsnap("snapshot", "disk", "later-disk", "--name", "waits", "--allow-missing")
  t.eq(st, 0, out)
  t.eq(c:get("vdsnapshot", "waits").spec.virtualDiskName, "later-disk")
  refused(1, 'Error from server (NotFound): virtualdisksnapshots.virtualization.deckhouse.io "no-snap" not found\n'
    .. "(nothing created; --allow-missing creates the disk anyway and it waits)\n",
    "restore", "disk", "new", "--from", "no-snap")
  t.eq(c:get("vd", "new"), nil)
end)

t.test("durations are strict: --timeout and --freeze-budget name themselves, exit 2", function()
  refused(2, "vmsnap: snapshot: --timeout must be a duration (30s, 2m, 1h) or a number of seconds, not 'abc' (see 'vmsnap --help')\n",
    "snapshot", "disk", "d1", "--wait", "--timeout", "abc")
  refused(2, "vmsnap: snapshot: --freeze-budget must be a duration (30s, 2m, 1h) or a number of seconds, not '-1' (see 'vmsnap --help')\n",
    "snapshot", "disk", "d1", "--freeze-budget=-1")
  refused(2, "vmsnap: restore: --timeout must be a duration (30s, 2m, 1h) or a number of seconds, not '0s' (see 'vmsnap --help')\n",
    "restore", "disk", "x", "--from", "s1", "--timeout", "0s")
  t.eq(#assert(c:list_all("vdsnapshot")), 2, "none created by them")
end)

t.test("restore disk --size: smaller than the snapshot is refused, larger is honoured", function()
  refused(2, 'vmsnap: restore: --size 1Mi is smaller than the snapshot "s1" (16Mi): the disk needs at least that (see \'vmsnap --help\')\n',
    "restore", "disk", "small", "--from", "s1", "--size", "1Mi")
  t.eq(c:get("vd", "small"), nil)
  local st, out = vmsnap("restore", "disk", "big", "--from", "s1", "--size", "32Mi", "--wait", "--timeout", "60s")
  t.eq(st, 0, out)
  t.contains(out, "big is Ready (32Mi)")
end)

t.test("restore vm --rename: a kind no snapshot holds, and a name it does not hold, are refused", function()
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "sroot" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "svm" },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "sroot" } } } }))
  assert(c:wait_for("vm", "svm", h.phase_is("Stopped"), { timeout = 30 }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "svs" },
    spec = { virtualMachineName = "svm", keepIPAddress = "Never" } }))
  assert(c:wait_for("vmsnapshot", "svs", h.phase_is("Ready"), { timeout = 30 }))
  refused(2, 'vmsnap: restore: --rename Foo/x=y: a snapshot holds no kind "Foo" (VirtualMachine, VirtualDisk, '
    .. "VirtualMachineBlockDeviceAttachment, VirtualMachineIPAddress, Secret) (see 'vmsnap --help')\n",
    "restore", "vm", "--from", "svs", "--rename", "Foo/x=y")
  refused(2, 'vmsnap: restore: --rename VirtualDisk/sroot-typo=y matches nothing in the snapshot "svs" (it holds VirtualMachine/svm, VirtualDisk/sroot) (see \'vmsnap --help\')\n',
    "restore", "vm", "--from", "svs", "--rename", "VirtualDisk/sroot-typo=y")
  refused(2, "vmsnap: restore: --rename VirtualDisc/sroot=y: a snapshot holds no kind \"VirtualDisc\" (VirtualMachine, VirtualDisk, "
    .. "VirtualMachineBlockDeviceAttachment, VirtualMachineIPAddress, Secret) (did you mean 'VirtualDisk'?) (see 'vmsnap --help')\n",
    "restore", "vm", "--from", "svs", "--rename", "VirtualDisc/sroot=y")
  t.eq(#assert(c:list_all("vmrestore")), 0, "no restore created")
  -- a rule that matches is taken
  local st, out = vmsnap("restore", "vm", "--from", "svs", "--rename", "VirtualMachine/svm=svm2", "--rename", "sroot=sroot2", "--dry-run")
  t.eq(st, 0, out)
  t.contains(out, "svm2")
  -- --dry-run: a conflict suggests its --rename; what the server would refuse is shown
  local err
  st, out, err = vmsnap("restore", "vm", "--from", "svs", "--dry-run")
  t.eq(st, 1)
  t.ok(out:find("VirtualMachine%s+svm%s+CONFLICT: .-%(%-%-rename VirtualMachine/svm=svm%-2%)") ~= nil, out)
  t.contains(err, "error: the restore would fail: ")
  st, out = vmsnap("restore", "vm", "--from", "svs", "--rename", "VirtualMachine/svm=Bad_Name", "--rename", "sroot=sroot3", "--dry-run")
  t.eq(st, 1)
  t.ok(out:find("VirtualMachine%s+Bad_Name%s+REFUSED by the server: .-Bad_Name") ~= nil, out)
end)

t.test("vm start and stop say when the runPolicy overrides them, and change nothing", function()
  refused(1, 'error: the virtual machine "svm" has runPolicy AlwaysOff: it stays stopped; set spec.runPolicy to Manual '
    .. "or AlwaysOnUnlessStoppedManually to start it\n", "vm", "start", "svm", "--wait")
  assert(c:patch("vm", "svm", { spec = { runPolicy = "AlwaysOn" } }))
  refused(1, 'error: the virtual machine "svm" has runPolicy AlwaysOn: the platform starts it again at once; set '
    .. "spec.runPolicy to Manual or AlwaysOnUnlessStoppedManually to stop it\n", "vm", "stop", "svm", "--wait")
  t.eq((c:get("vm", "svm").metadata.annotations or {})["vmsnap.io/power"], nil, "the power switch untouched")
  refused(2, "vmsnap: vm: 'stpo' is not something to do to a VM: start, stop, migrate, pause or resume (did you mean 'stop'?) (see 'vmsnap --help')\n",
    "vm", "stpo", "svm")
  assert(c:patch("vm", "svm", { spec = { runPolicy = "AlwaysOff" } }))
end)

t.test("get -o yaml and -o json hide managedFields unless --show-managed-fields", function()
  local st, out = vmsnap("get", "vdsnapshot", "s1", "-o", "yaml")
  t.eq(st, 0)
  t.contains(out, "name: s1")
  t.ok(not out:find("managedFields", 1, true), "hidden")
  st, out = vmsnap("get", "vdsnapshot", "-o", "json")
  t.ok(not out:find("managedFields", 1, true), "hidden in a list too")
  st, out = vmsnap("get", "vdsnapshot", "s1", "-o", "yaml", "--show-managed-fields")
  t.contains(out, "managedFields:")
end)

t.test("delete waits until the object is gone; get -w prints a row for every change", function()
  local task = require("vmsnap.task")
  local w = assert(proc.spawn({ h.vmsnap, "get", "vdsnapshot", "-w", "--kubeconfig", srv.kubeconfig },
    { stdout = "capture", stderr = "capture" }))
  task.sleep(0.5)
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "watched" }, spec = { virtualDiskName = "d1" } }))
  assert(c:wait_for("vdsnapshot", "watched", h.phase_is("Ready"), { timeout = 30 }))
  local st, out = vmsnap("delete", "vdsnapshot", "watched", "--timeout", "30s")
  t.eq(st, 0, out)
  t.eq(out, 'virtualdisksnapshot.virtualization.deckhouse.io "watched" deleted\n')
  t.eq(c:get("vdsnapshot", "watched"), nil, "gone when delete returns (past its finalizer)")
  task.sleep(0.5)
  w:kill("TERM")
  local r = assert(w:wait(10))
  w:close()
  t.ok(r.stdout:find("^NAME%s+PHASE") ~= nil, "the table first: " .. r.stdout)
  t.ok(select(2, r.stdout:gsub("\nwatched%s+", "")) >= 2, "rows for the new snapshot's changes: " .. r.stdout)
  t.ok(r.stdout:find("\nwatched%s+Ready") ~= nil, "its Ready row")
  local st2, _, err2 = vmsnap("delete", "vdsnapshot", "watched")
  t.eq(st2, 1)
  t.eq(err2, 'Error from server (NotFound): virtualdisksnapshots.virtualization.deckhouse.io "watched" not found\n')
  t.eq((vmsnap("delete", "vdsnapshot", "watched", "--ignore-not-found")), 0)
  local st3, _, err3 = vmsnap("delete", "vdsnapshot", "x", "--cascade", "orphn")
  t.eq(st3, 2)
  t.eq(err3, "vmsnap: delete: --cascade must be background, foreground or orphan, not 'orphn' (did you mean 'orphan'?) (see 'vmsnap --help')\n")
  local st4, _, err4 = vmsnap("get", "vd,vdsnapshot", "-w")
  t.eq(st4, 2)
  t.contains(err4, "get: --watch takes one kind")
end)

t.done()
