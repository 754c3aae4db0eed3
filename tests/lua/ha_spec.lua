-- Two `vmsnap controller` replicas against one API server, as the
-- Deployment runs them: the leader is killed with SIGKILL while a VM
-- snapshot holds its guest frozen; the other replica takes the Lease over
-- within the Lease's duration, the snapshot ends Ready and consistent, and
-- the guest is thawed. Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local json = require("vmsnap.json")
local h = require("helpers")

t.timeout = 120

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("two replicas", why)
  return t.done()
end
probe:cleanup()

local LEASE = "vmsnap-snapshot-controllers"
local DURATION = 15 -- the Lease's (vmsnap.reconcile.leader's default)

t.test("the leader killed mid-freeze: the other replica leads within the Lease's duration; Ready, consistent, thawed", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local G = "virtualization.deckhouse.io/v1alpha2"
  h.running_vm(c, "hvm", "hroot")
  -- a cut that takes 2 s: the guest stays frozen long enough to kill its freezer
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "slow" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "2s" } }))
  local replicas = {}
  for i = 1, 2 do
    replicas[i] = assert(proc.spawn({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig,
      "--leader-election-namespace", "default" },
      { stdout = "null", stderr = os.getenv("SPEC_DEBUG") and "inherit" or "null", env = h.child_env({
        PATH = os.getenv("PATH"), HOME = os.getenv("HOME"), VMSNAP_SCRIPTS_PATH = os.getenv("VMSNAP_SCRIPTS_PATH") }) }))
  end
  local _ <close> = setmetatable({}, { __close = function()
    for _, p in ipairs(replicas) do
      if p:running() then p:kill("TERM") end
      if not p:wait(10) then p:kill("KILL") p:wait(5) end
      p:close()
    end
  end })
  local function holder_pid()
    local l = c:get("leases", LEASE, { namespace = "default" })
    local id = l and l.spec and l.spec.holderIdentity
    return id and tonumber(id:match("^.-/.-/(%d+)/")), l
  end
  local leader, follower
  for _ = 1, 200 do
    local pid = holder_pid()
    for i, p in ipairs(replicas) do
      if pid == p:pid() then leader, follower = p, replicas[3 - i] end
    end
    if leader then break end
    task.sleep(0.05)
  end
  assert(leader, "one replica holds the Lease")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "hvs" },
    spec = { virtualMachineName = "hvm", volumeSnapshotClasses = {
      { storageClassName = "local", volumeSnapshotClassName = "slow" } } } }))
  assert(c:wait_for("vm", "hvm", function(o)
    return o and o.metadata.annotations and o.metadata.annotations["vmsnap.io/frozen-by"] and o
  end, { timeout = 20 }), "the guest was frozen")
  leader:kill("KILL")
  local t0 = task.now()
  assert(leader:wait(5))
  local took
  while task.now() - t0 < DURATION + 5 do
    local pid, l = holder_pid()
    if pid == follower:pid() then
      took = task.now() - t0
      t.ok((l.spec.leaseTransitions or 0) >= 1, "a transition is counted")
      break
    end
    task.sleep(0.05)
  end
  t.ok(took and took <= DURATION, ("the other replica leads %s s after the kill (Lease: %d s)"):format(tostring(took), DURATION))
  print(("# taken over in %.2f s"):format(took or -1))
  local s = c:wait_for("vmsnapshot", "hvs", h.phase_is("Ready"), { timeout = 60 })
  t.ok(s, "Ready: " .. json.encode((c:get("vmsnapshot", "hvs") or {}).status or {}))
  t.eq(s and s.status.consistent, true)
  local vm = assert(c:wait_for("vm", "hvm", function(o)
    return o and not (o.metadata.annotations or {})["vmsnap.io/frozen-by"] and o
  end, { timeout = 20 }), "no freeze lease left on the VM")
  local g = assert(require("vmsnap.guest").for_vm(c, vm))
  t.eq(g:status(), "thawed", "the guest agent says thawed")
  t.ok(follower:running(), "the new leader runs on")
end)

t.done()
