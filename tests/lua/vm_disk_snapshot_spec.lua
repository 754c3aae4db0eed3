-- Disk snapshots of disks attached to VMs of the local platform, whose guest
-- agent is a real qemu-ga on the VM's loop-mounted root image (d.1 #9-#15,
-- the Decisions on freezing, the data written by a running writer, and kill
-- -9 of `vmsnap up` during 20 snapshots). Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local h = require("helpers")

local probe <close>, why = h.qga_env() -- the same requirements: qemu-ga, mkfs.ext4, loop mounts
if not probe then
  t.skip("VM disk snapshots", why)
  return t.done()
end
probe:cleanup()

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 20 }) end
local phase_is = h.phase_is
local function vm(name, disk, extra)
  local o = { apiVersion = G, kind = "VirtualMachine", metadata = { name = name, annotations = extra and extra.annotations },
    spec = { runPolicy = extra and extra.runPolicy or "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = disk } } } }
  return assert(c:create(o))
end
local function disk(name, size)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name },
    spec = { persistentVolumeClaim = { size = size or "32Mi" } } }))
  return assert(wait("vd", name, phase_is("Ready")))
end
local function snap(name, d, extra, annotations)
  local o = { apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name, annotations = annotations },
    spec = { virtualDiskName = d } }
  for k, v in pairs(extra or {}) do o.spec[k] = v end
  return assert(c:create(o))
end
local function agent_ready(o) return o and cond(o, "AgentReady") and cond(o, "AgentReady").status == "True" end
local function agent_of(name)
  local v = assert(c:get("vm", name))
  local a = require("vmsnap.qga").connect(v.metadata.annotations["vmsnap.io/agent"], { timeout = 3 })
  return a
end

t.test("d.1 #10: a running VM with an agent: frozen, snapshot issued, thawed at the cut; consistent", function()
  disk("root1")
  vm("vm1", "root1")
  assert(wait("vm", "vm1", agent_ready))
  snap("s10", "root1")
  local s = assert(wait("vdsnapshot", "s10", phase_is("Ready")))
  t.eq(s.status.consistent, true)
  local ms = tonumber(s.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  t.ok(ms and ms >= 0 and ms < 5000, "the freeze duration is recorded: " .. tostring(ms))
  local a <close> = assert(agent_of("vm1"))
  t.eq(a:fsfreeze_status(), "thawed")
  local v = assert(c:get("vm", "vm1"))
  t.eq(v.metadata.annotations["vmsnap.io/frozen-by"], nil, "the lease is gone")
end)

t.test("kubectl columns as upstream's: the disk's VIRTUALMACHINE (mounted by a running VM) and the VM's UPTIME", function()
  local r = srv:kubectl({ "get", "vd", "root1" })
  t.eq(r.status, 0, r.stderr)
  local head, row = r.stdout:match("^([^\n]+)\n([^\n]+)")
  t.ok(head:match("^NAME%s+PHASE%s+CAPACITY%s+VIRTUALMACHINE%s+AGE$"), head)
  t.ok(row:match("^root1%s+Ready%s+%S+%s+vm1%s+%S+$"), row)
  r = srv:kubectl({ "get", "vm", "vm1" })
  head, row = r.stdout:match("^([^\n]+)\n([^\n]+)")
  t.ok(head:match("^NAME%s+PHASE%s+UPTIME%s+NODE%s+IPADDRESS%s+AGE$"), head)
  t.ok(row:match("^vm1%s+Running%s+%d+[smh]"), row)
end)

t.test("Decision 3: thaw at the cut vs thaw at Ready (1 s ready latency)", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "ready-1s" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { readyLatency = "1s" } }))
  snap("s-cut", "root1", { volumeSnapshotClassName = "ready-1s" })
  local a = assert(wait("vdsnapshot", "s-cut", phase_is("Ready")))
  snap("s-ready", "root1", { volumeSnapshotClassName = "ready-1s" }, { ["vmsnap.io/thaw-at"] = "Ready" })
  local b = assert(wait("vdsnapshot", "s-ready", phase_is("Ready")))
  local cut_ms = tonumber(a.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  local ready_ms = tonumber(b.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  t.ok(cut_ms < 900, "frozen until the cut only: " .. cut_ms .. " ms")
  t.ok(ready_ms >= 1000, "frozen until Ready: " .. ready_ms .. " ms")
  t.eq(a.status.consistent, true)
  t.eq(b.status.consistent, true)
end)

t.test("Decision 4: a cut that misses the freeze budget thaws, and fails a snapshot that required consistency", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slow-cut" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { cutLatency = "2500ms" } }))
  snap("s-budget", "root1", { volumeSnapshotClassName = "slow-cut" }, { ["vmsnap.io/freeze-budget"] = "1" })
  local s = assert(wait("vdsnapshot", "s-budget", phase_is("Failed")))
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "freeze budget of 1s")
  local a <close> = assert(agent_of("vm1"))
  t.eq(a:fsfreeze_status(), "thawed")
end)

t.test("d.1 #11, #13: a running VM without an agent: Pending when consistency is required; absent consistent otherwise", function()
  disk("root2")
  vm("vm2", "root2", { annotations = { ["vmsnap.io/no-agent"] = "true" } })
  assert(wait("vm", "vm2", phase_is("Running")))
  snap("s11", "root2")
  local s = assert(wait("vdsnapshot", "s11", h.reason_is("VirtualDiskSnapshotReady", "PotentiallyInconsistent")))
  t.eq(s.status.phase, "Pending")
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "virtual machine agent is not ready")
  snap("s13", "root2", { requiredConsistency = false })
  s = assert(wait("vdsnapshot", "s13", phase_is("Ready")))
  t.eq(s.status.consistent, nil, "absent, not false")
  -- the VM stops: s11 proceeds and is consistent (#11)
  assert(c:patch("vm", "vm2", { spec = { runPolicy = "AlwaysOff" } }))
  s = assert(wait("vdsnapshot", "s11", phase_is("Ready")))
  t.eq(s.status.consistent, true)
end)

t.test("d.1 #9: a disk of a Stopped VM: no freeze, consistent", function()
  snap("s9", "root2")
  local s = assert(wait("vdsnapshot", "s9", phase_is("Ready")))
  t.eq(s.status.consistent, true)
  t.eq(s.metadata.annotations and s.metadata.annotations["vmsnap.io/freeze-duration-ms"], nil, "never frozen")
end)

t.test("a stopped VM started while its disk's snapshot waits for the cut: no freeze after the fact, not consistent", function()
  -- the snapshot's pass at its wait leaves no steps record (nothing owed):
  -- the next pass runs its steps again, and must neither freeze the guest
  -- for a VolumeSnapshot issued before nor call the cut consistent
  disk("root-late")
  vm("vm-late", "root-late", { runPolicy = "AlwaysOff" })
  assert(wait("vm", "vm-late", phase_is("Stopped")))
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "late-cut" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { cutLatency = "3s" } }))
  snap("s-late", "root-late", { volumeSnapshotClassName = "late-cut" })
  local s = assert(wait("vdsnapshot", "s-late", function(o)
    return o and o.status and o.status.phase == "InProgress" and o.status.volumeSnapshotName and o end))
  assert(c:patch("vm", "vm-late", { spec = { runPolicy = "AlwaysOn" } }))
  assert(wait("vm", "vm-late", agent_ready))
  s = assert(wait("vdsnapshot", "s-late", function(o)
    return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end))
  t.eq(s.status.phase, "Failed", "consistency was required and not proven")
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "the virtual machine started before the cut")
  t.eq((s.metadata.annotations or {})["vmsnap.io/freeze-duration-ms"], nil, "never frozen")
  t.eq((s.metadata.annotations or {})[require("vmsnap.freezes").FROZEN_AT], nil)
  local a <close> = assert(agent_of("vm-late"))
  t.eq(a:fsfreeze_status(), "thawed")
  assert(c:patch("vm", "vm-late", { spec = { runPolicy = "AlwaysOff" } }))
  assert(wait("vm", "vm-late", phase_is("Stopped")))
end)

t.test("d.1 #15: a disk attached to two VMs fails the snapshot", function()
  disk("shared")
  vm("vm-a", "shared", { runPolicy = "AlwaysOff" })
  vm("vm-b", "shared", { runPolicy = "AlwaysOff" })
  assert(wait("vd", "shared", function(o) return o and o.status.attachedToVirtualMachines and #o.status.attachedToVirtualMachines == 2 end))
  snap("s15", "shared")
  local s = assert(wait("vdsnapshot", "s15", phase_is("Failed")))
  t.eq(cond(s, "VirtualDiskSnapshotReady").message, 'The virtual disk "shared" is attached to multiple virtual machines')
end)

t.test("data: a writer keeps writing; the restored image is fsck-clean and holds every record acknowledged before the snapshot", function()
  local v = assert(c:get("vm", "vm1"))
  local mnt = json.decode(v.metadata.annotations["vmsnap.io/freeze-mountpoints"])[1]
  local d <close> = assert(fs.tempdir("vmsnap-writer"))
  local acked = d.path .. "/acked"
  local writer = assert(proc.spawn({ "sh", "-c", ([[i=0; while [ $i -lt 100000 ]; do i=$((i+1));
    echo "record $i" >> %s/data.log && sync %s/data.log && echo $i >> %s; done]]):format(mnt, mnt, acked) },
    { stdout = "null", stderr = "null" }))
  local _ <close> = writer
  task.sleep(0.5)
  local function last_acked()
    local text = fs.read_file(acked) or ""
    local n = 0
    for x in text:gmatch("(%d+)\n") do n = tonumber(x) end
    return n
  end
  local before = last_acked()
  snap("s-data", "root1")
  assert(wait("vdsnapshot", "s-data", phase_is("Ready")))
  task.sleep(0.3)
  local after = last_acked()
  writer:kill("TERM")
  writer:wait(5)
  t.ok(after > before, "the writer went on after the snapshot")
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "restored" },
    spec = { dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = "s-data" } } } }))
  local r = assert(wait("vd", "restored", phase_is("Ready")))
  local pvc = assert(c:get("pvc", r.status.target.persistentVolumeClaimName))
  local image = assert(c:get("pv", pvc.spec.volumeName)).spec.csi.volumeHandle
  -- the image of a frozen, mounted ext4: its journal is replayed, and then it must be clean
  local replay = assert(proc.run({ "e2fsck", "-fy", image }, { timeout = 60 }))
  t.ok(replay.status == 0 or replay.status == 1, "journal replay: " .. replay.stdout .. replay.stderr)
  local fsck = assert(proc.run({ "e2fsck", "-fn", image }, { timeout = 60 }))
  t.eq(fsck.status, 0, "fsck-clean: " .. fsck.stdout .. fsck.stderr)
  local m <close> = assert(fs.tempdir("vmsnap-restored"))
  local mo = assert(proc.run({ "mount", "-o", "loop,ro", image, m.path }, { timeout = 30 }))
  t.eq(mo.status, 0, mo.stderr)
  local data = fs.read_file(m.path .. "/data.log") or ""
  proc.run({ "umount", m.path }, { timeout = 30 })
  local n = 0
  for x in data:gmatch("record (%d+)\n") do n = tonumber(x) end
  t.ok(n >= before, ("every record acknowledged before the snapshot is there (%d >= %d)"):format(n, before))
  t.ok(n <= after, "and nothing from after the snapshot's end")
  t.ok(data:match("^record 1\n"), "from the first record on")
end)

t.test("a running VM gets an IP address (Auto), a Static address in use waits; a hot-plugged disk attaches", function()
  local v = assert(wait("vm", "vm1", function(o) return o and o.status and o.status.ipAddress and o end, 8))
  t.ok(v.status.ipAddress:match("^10%.66%.0%.%d+$"), v.status.ipAddress)
  local ip = assert(c:get("vmip", v.status.virtualMachineIPAddressName))
  t.eq(ip.spec.type, "Auto")
  t.eq(ip.metadata.labels["virtualization.deckhouse.io/virtual-machine-uid"], v.metadata.uid)
  t.eq(ip.metadata.ownerReferences[1].uid, v.metadata.uid)
  ip = assert(wait("vmip", ip.metadata.name, phase_is("Attached"), 8))
  t.eq(ip.status.virtualMachineName, "vm1")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineIPAddress", metadata = { name = "taken" },
    spec = { type = "Static", staticIP = v.status.ipAddress } }))
  local taken = assert(wait("vmip", "taken", phase_is("Pending"), 8))
  t.eq(taken.status.address, nil)
  disk("extra")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineBlockDeviceAttachment", metadata = { name = "attach-extra" },
    spec = { virtualMachineName = "vm1", blockDeviceRef = { kind = "VirtualDisk", name = "extra" } } }))
  local b = assert(wait("vmbda", "attach-extra", phase_is("Attached"), 8))
  t.eq(b.status.virtualMachineName, "vm1")
  v = assert(wait("vm", "vm1", function(o)
    for _, r in ipairs(o and o.status and o.status.blockDeviceRefs or {}) do
      if r.name == "extra" and r.hotplugged then return o end
    end
  end, 8))
  local vd = assert(wait("vd", "extra", function(o) return o and o.status.attachedToVirtualMachines and o end, 8))
  t.eq(vd.status.attachedToVirtualMachines[1].name, "vm1")
end)

t.timeout = 120
t.test("kill -9 of vmsnap up during 20 snapshots: all terminal, a Ready one is consistent, a failed one says why; no duplicates, no guest frozen", function()
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "crashy" }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
    parameters = { cutLatency = "100ms", readyLatency = "300ms" } }))
  for i = 1, 20 do
    snap(("crash-%02d"):format(i), "root1", { volumeSnapshotClassName = "crashy" }, { ["vmsnap.io/freeze-budget"] = "5" })
    if i == 7 or i == 14 then
      task.sleep(0.15 + math.random() * 0.3)
      srv:kill9()
      srv:start()
    end
  end
  -- a restart thaws the guest (its agent went with the process): a snapshot
  -- whose cut came after that is not consistent, and says so (Decision 8)
  local ready = 0
  for i = 1, 20 do
    local n = ("crash-%02d"):format(i)
    local o = wait("vdsnapshot", n, function(x)
      return x and x.status and (x.status.phase == "Ready" or x.status.phase == "Failed") and x end, 60)
    t.ok(o, n .. " terminal, got " .. (o and "" or json.encode(c:get("vdsnapshot", n) or "absent")))
    if o and o.status.phase == "Ready" then
      ready = ready + 1
      t.eq(o.status.consistent, true, n .. " consistent")
    elseif o then
      t.contains(cond(o, "VirtualDiskSnapshotReady").message, "The snapshot is not consistent: ", n)
    end
  end
  print(("# %d of 20 Ready and consistent; the others failed, saying why"):format(ready))
  t.ok(ready >= 1, "snapshots after the last restart are Ready: " .. ready)
  local count = {}
  for _, v in ipairs(assert(c:list_all("volumesnapshot"))) do count[v.metadata.name] = (count[v.metadata.name] or 0) + 1 end
  for i = 1, 20 do t.eq(count[("crash-%02d"):format(i)], 1) end
  assert(wait("vm", "vm1", agent_ready))
  -- thawed by the last snapshot out (a restarted controller adopts its
  -- predecessor's lease), not left to the budget (5 s) or the lease deadline
  local a <close> = assert(agent_of("vm1"))
  local st
  for _ = 1, 20 do
    st = a:fsfreeze_status()
    if st == "thawed" then break end
    task.sleep(0.1)
  end
  if st ~= "thawed" then
    local v0 = c:get("vm", "vm1")
    print("# lease: " .. tostring(v0.metadata.annotations["vmsnap.io/frozen-by"]))
    for _, x in ipairs(c:list_all("vdsnapshot") or {}) do
      print("# " .. x.metadata.name .. " " .. tostring(x.status and x.status.phase) .. " " .. json.encode(x.metadata.annotations or {}))
    end
  end
  t.eq(st, "thawed")
  local v = assert(c:get("vm", "vm1"))
  t.eq(v.metadata.annotations["vmsnap.io/frozen-by"], nil, "no lease left")
end)

t.done()
