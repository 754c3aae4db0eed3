-- docs/examples/: every manifest applied with the real kubectl, in order, on
-- the local platform, and each object reaches what its README says.
-- The VM's parts need loop mounts (a running guest); without them the
-- storage, the disk, its snapshot and the disk from it are still applied.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local fs = require("vmsnap.fs")
local h = require("helpers")

t.timeout = 120

local DIR = h.source .. "/docs/examples"
local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

local function apply(file)
  local r = srv:kubectl({ "apply", "-f", DIR .. "/" .. file })
  t.eq(r.status, 0, file .. ": " .. r.stderr)
  return r.stdout
end
local function ready(kind, name, timeout)
  local o = c:wait_for(kind, name, h.phase_is("Ready"), { timeout = timeout or 40 })
  t.ok(o, ("%s %s Ready: %s"):format(kind, name, require("vmsnap.json").encode((c:get(kind, name) or {}).status or {})))
  return o
end

t.test("every file of docs/examples is listed in its README, and the README lists no other", function()
  local readme = assert(fs.read_file(DIR .. "/README.md"))
  local files = {}
  for _, f in ipairs(assert(fs.list(DIR))) do
    if f:match("%.yaml$") then files[#files + 1] = f end
  end
  table.sort(files)
  t.ok(#files >= 7, #files .. " manifests")
  for _, f in ipairs(files) do t.contains(readme, "`" .. f .. "`") end
  for f in readme:gmatch("`([%w-]+%.yaml)`") do t.ok(fs.exists(DIR .. "/" .. f), f .. " exists") end
end)

t.test("applied in order, each object reaches Ready; the snapshots are consistent", function()
  t.contains(apply("00-storage.yaml"), "storageclass.storage.k8s.io/i-linstor-thin-r2 created")
  apply("10-disk.yaml")
  ready("vd", "linux-vm-root")
  local probe <close>, why = h.qga_env()
  local vms = probe ~= nil
  if probe then probe:cleanup() else print("# without the VM: " .. tostring(why)) end
  if vms then
    apply("20-vm.yaml")
    assert(c:wait_for("vm", "linux-vm", function(o)
      for _, x in ipairs(o and o.status and o.status.conditions or {}) do
        if x.type == "AgentReady" and x.status == "True" then return o end
      end
    end, { timeout = 40 }), "the VM runs with its agent")
  end
  apply("30-disk-snapshot.yaml")
  local s = ready("vdsnapshot", "linux-vm-root-snapshot")
  t.eq(s and s.status.consistent, true)
  if vms then t.ok(s.metadata.annotations["vmsnap.io/freeze-duration-ms"], "the running guest was frozen for it") end
  apply("40-disk-from-snapshot.yaml")
  ready("vd", "linux-vm-root-copy")
  if not vms then return end
  apply("50-vm-snapshot.yaml")
  local vs = ready("vmsnapshot", "linux-vm-snapshot")
  t.eq(vs and vs.status.consistent, true)
  apply("60-vm-restore.yaml")
  ready("vmrestore", "linux-vm-restore", 60)
  t.ok(c:get("vm", "linux-vm-2"), "the restored VM")
  t.ok(c:get("vd", "linux-vm-root-2"), "its restored disk")
  t.ok(c:get("vm", "linux-vm"), "beside the original")
  -- the schedule: valid, its next run named; a run asked for makes a consistent snapshot
  t.contains(apply("70-schedule.yaml"), "virtualmachinesnapshotschedule.vmsnap.io/linux-vm-nightly created")
  local SCHED = "virtualmachinesnapshotschedules.vmsnap.io"
  local sc = c:wait_for(SCHED, "linux-vm-nightly", function(o) return o and o.status and o.status.nextScheduleTime and o end,
    { timeout = 20 })
  t.ok(sc and sc.status.nextScheduleTime:match("T0[01]:30:00Z$"), "02:30 in Berlin is 00:30 or 01:30 UTC: "
    .. tostring(sc and sc.status.nextScheduleTime))
  local r = h.run_vmsnap({ "schedule", "run-now", "linux-vm-nightly", "--kubeconfig", srv.kubeconfig })
  t.eq(r.status, 0, r.stderr)
  sc = c:wait_for(SCHED, "linux-vm-nightly", function(o)
    local run = o and o.status and o.status.lastRun
    return run and run.ready == 1 and o
  end, { timeout = 60 })
  t.ok(sc, "the run's snapshot is Ready")
  t.eq(sc and sc.status.snapshots[1].consistent, true)
  local g = srv:kubectl({ "get", "vmssched" })
  t.eq(g.status, 0, g.stderr)
  t.contains(g.stdout, "linux-vm-nightly")
  t.contains(g.stdout, "30 2 * * *")
end)

t.done()
