-- Every freeze is bounded by its budget whatever happens to the process that
-- froze (docs/guest.md, "Who thaws"). A real qemu-ga behind vmsnap-launcher on
-- the VM's loop-mounted image, a writer on the guest's filesystem, a budget
-- of 6 s, and one fault during the freeze per test: the guest is thawed
-- within the budget + 1 s (after a kill -9, within 1 s of the death), the
-- snapshot ends terminal, and no freeze lease remains. Skipped without loop
-- mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local wallclock = require("vmsnap.core.runtime").wallclock
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("freezes bounded by their budget", why)
  return t.done()
end
probe:cleanup()

local BUDGET = 6
local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function lease_of(vm) return vm and (vm.metadata.annotations or {})["vmsnap.io/frozen-by"] end

-- a hook that swallows its own deadline: it loops inside pcall forever
local scripts = assert(fs.tempdir("vmsnap-fb-scripts"))
assert(fs.mkdir_p(scripts.path .. "/hooks"))
assert(fs.write_atomic(scripts.path .. "/hooks/spin.lua", [[
return {
  timeout = 2,
  post_freeze = function(ctx)
    while true do pcall(function() while true do end end) end
  end,
}
]]))
local _scripts <close> = setmetatable({}, { __close = function() scripts:remove() end })

-- One platform with a running VM whose agent is ready; returns the server,
-- a client and the guest's mountpoint.
local function platform(opts)
  local srv = h.platform({ args = opts.args, env = { VMSNAP_SCRIPTS_PATH = scripts.path } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  for _, cls in ipairs({ { "cut1s", "1s" }, { "cut3s", "3s" }, { "cut4s", "4s" } }) do
    assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
      metadata = { name = cls[1] }, driver = "local.vmsnap.io", deletionPolicy = "Delete",
      parameters = { cutLatency = cls[2] } }))
  end
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "root-b" },
    spec = { persistentVolumeClaim = { size = "32Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-b", annotations = opts.annotations },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-b" } } } }))
  assert(c:wait_for("vm", "vm-b", function(o)
    local a = o and cond(o, "AgentReady")
    return a and a.status == "True" and o
  end, { timeout = 30 }))
  return srv, c, srv.data .. "/vms/default-vm-b/root"
end

-- A writer on the guest's filesystem: it rewrites a file in a loop and
-- stamps each write that returned (wall clock) in a file outside the guest.
-- :stop() ends it and returns the longest stall, the stamp that ended it
-- and all the stamps.
local function writer(mnt)
  local out = assert(fs.tempdir("vmsnap-fb-writer"))
  local log = out.path .. "/stamps"
  local p = assert(proc.spawn({ "sh", "-c",
    'while :; do printf x > "$1/w" && date +%s.%N >> "$2"; sleep 0.02; done', "sh", mnt, log },
    { stdout = "null", stderr = "null" }))
  local w = {}
  function w:stamps()
    local s = {}
    for l in (fs.read_file(log) or ""):gmatch("[^\n]+") do s[#s + 1] = tonumber(l) end
    return s
  end
  function w:stop()
    if p then
      p:kill("TERM")
      if not p:wait(10) then p:kill("KILL") p:wait(5) end
      p:close()
      p = nil
    end
    local s = self:stamps()
    out:remove()
    local gap, after = 0, nil
    for i = 2, #s do
      if s[i] - s[i - 1] > gap then gap, after = s[i] - s[i - 1], s[i] end
    end
    return gap, after, s
  end
  -- wait for the first stamps
  for _ = 1, 200 do
    if #w:stamps() >= 3 then break end
    task.sleep(0.02)
  end
  return setmetatable(w, { __close = function(x) x:stop() end })
end

-- a disk snapshot of root-b, or a VM snapshot of vm-b (hooks run around VM
-- snapshots) when vm is true
local function snapshot(c, name, class, vm)
  local meta = { name = name, annotations = { ["vmsnap.io/freeze-budget"] = tostring(BUDGET) } }
  if vm then
    assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = meta,
      spec = { virtualMachineName = "vm-b", volumeSnapshotClasses = {
        { storageClassName = "local", volumeSnapshotClassName = class } } } }))
  else
    assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = meta,
      spec = { virtualDiskName = "root-b", volumeSnapshotClassName = class } }))
  end
  -- the freeze: the VM's lease (the writer stalls from here)
  local vm = assert(c:wait_for("vm", "vm-b", function(o) return lease_of(o) and o end, { timeout = 20 }))
  return wallclock(), vm
end

local function no_lease(c)
  return c:wait_for("vm", "vm-b", function(o) return o and not lease_of(o) and o end, { timeout = 10 })
end

local figures = {}
local function report(row, gap)
  figures[#figures + 1] = ("%s: longest writer stall %.2f s"):format(row, gap)
  print("# " .. figures[#figures])
end

t.test("kill -9 of `vmsnap up` during the freeze: the launcher thaws within 1 s of the death; after a restart the snapshot ends terminal and no lease remains", function()
  local srv <close>, c, mnt = platform({})
  local w <close> = writer(mnt)
  snapshot(c, "s-kill", "cut4s")
  task.sleep(1)
  local killed = wallclock()
  srv:kill9()
  task.sleep(2)
  local gap, after = w:stop()
  report("kill -9", gap)
  figures[#figures + 1] = ("kill -9: thawed %.3f s after the death"):format(after and after - killed or -1)
  print("# " .. figures[#figures])
  t.ok(after and after - killed <= 1, ("thawed %.2f s after the death"):format(after and after - killed or -1))
  t.ok(gap <= BUDGET + 1, ("stall %.2f s"):format(gap))
  srv:start()
  c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local s = assert(c:wait_for("vdsnapshot", "s-kill", terminal, { timeout = 30 }))
  if s.status.phase == "Ready" then
    t.eq(s.status.consistent, true, "Ready after the restart only with a freeze it held to the cut")
  else
    t.eq(s.status.consistent, nil, "Failed claims no consistency")
  end
  t.ok(no_lease(c), "no lease remains")
end)

t.test("SIGSTOP of `vmsnap up` for 15 s during the freeze: the launcher thaws at the budget; resumed, the snapshot fails for the overrun and no lease remains", function()
  local srv <close>, c, mnt = platform({})
  local w <close> = writer(mnt)
  local frozen_at = snapshot(c, "s-stop", "cut3s")
  task.sleep(0.5)
  srv.proc:kill("STOP")
  local ok, err = pcall(task.sleep, 15)
  srv.proc:kill("CONT")
  assert(ok, err)
  local gap, after = w:stop()
  report("SIGSTOP 15 s", gap)
  t.ok(gap <= BUDGET + 1, ("stall %.2f s"):format(gap))
  t.ok(after and after - frozen_at <= BUDGET + 1, ("thawed %.2f s after the freeze"):format(after and after - frozen_at or -1))
  local s = assert(c:wait_for("vdsnapshot", "s-stop", terminal, { timeout = 30 }))
  t.eq(s.status.phase, "Failed", json.encode(s.status))
  t.eq(s.status.consistent, nil)
  t.contains(cond(s, "VirtualDiskSnapshotReady").message, "not consistent")
  t.ok(no_lease(c), "no lease remains")
end)

t.test("a post_freeze hook looping inside pcall (timeout 2 s) is stopped at its timeout: thawed at the cut, the snapshot ends Ready and consistent", function()
  local srv <close>, c, mnt = platform({ annotations = { ["vmsnap.io/hooks"] = '["spin"]' } })
  local w <close> = writer(mnt)
  local frozen_at = snapshot(c, "s-spin", "cut1s", true)
  local s = assert(c:wait_for("vmsnapshot", "s-spin", terminal, { timeout = 30 }))
  local gap, after = w:stop()
  report("post_freeze hook in a pcall loop", gap)
  t.ok(gap <= BUDGET + 1, ("stall %.2f s"):format(gap))
  t.ok(after and after - frozen_at <= BUDGET + 1, "thawed within the budget")
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local rec = json.decode(s.metadata.annotations["vmsnap.io/hooks"] or "{}")
  local run = (rec.runs or {})[1] or {}
  t.eq(("%s.%s=%s"):format(run.hook, run.point, run.outcome), "spin.post_freeze=timeout")
  t.contains(run.output or "", 'hook "spin" exceeded its timeout of 2s')
  t.ok(no_lease(c), "no lease remains")
end)

t.test("a YAML alias bomb POSTed 1 s into the freeze is refused at once (400) and the guest is thawed on time", function()
  local srv <close>, c, mnt = platform({})
  local w <close> = writer(mnt)
  -- 10^8 leaves in a few hundred bytes
  local lines = { 'a0: &a0 ["xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx"]' }
  for i = 1, 7 do
    lines[#lines + 1] = ("a%d: &a%d [%s]"):format(i, i, ("*a%d,"):rep(10):format(i - 1, i - 1, i - 1, i - 1, i - 1,
      i - 1, i - 1, i - 1, i - 1, i - 1):sub(1, -2))
  end
  local bomb = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n" ..
    table.concat(lines, "\n"):gsub("[^\n]+", "  %0") .. "\n"
  local frozen_at = snapshot(c, "s-bomb", "cut3s")
  task.sleep(1)
  local t0 = task.now()
  local r = assert(srv:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps",
    headers = { ["Content-Type"] = "application/yaml" }, body = bomb, timeout = 20 }))
  local took = task.now() - t0
  figures[#figures + 1] = ("alias bomb (%d bytes): answered %d in %.3f s"):format(#bomb, r.status, took)
  print("# " .. figures[#figures])
  t.eq(r.status, 400, r.body)
  t.contains(r.body, "excessive aliasing")
  t.ok(took < 1, ("answered in %.3f s"):format(took))
  local s = assert(c:wait_for("vdsnapshot", "s-bomb", terminal, { timeout = 30 }))
  local gap, after = w:stop()
  report("alias bomb", gap)
  t.ok(gap <= BUDGET + 1, ("stall %.2f s"):format(gap))
  t.ok(after and after - frozen_at <= BUDGET + 1, "thawed within the budget")
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  t.ok(no_lease(c), "no lease remains")
end)

t.test("the same hook under `vmsnap controller`: thawed at the cut, the snapshot ends terminal and the lease is gone", function()
  local srv <close>, c, mnt = platform({ args = { "--no-controllers" }, annotations = { ["vmsnap.io/hooks"] = '["spin"]' } })
  local ctl = assert(proc.spawn({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig },
    { stdout = "null", stderr = "inherit", env = { VMSNAP_SCRIPTS_PATH = scripts.path } }))
  local _ <close> = setmetatable({}, { __close = function()
    ctl:kill("TERM")
    if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
    ctl:close()
  end })
  local w <close> = writer(mnt)
  local frozen_at = snapshot(c, "s-ctl", "cut1s", true)
  local s = assert(c:wait_for("vmsnapshot", "s-ctl", terminal, { timeout = 30 }))
  local gap, after = w:stop()
  report("the hook under vmsnap controller", gap)
  t.ok(gap <= BUDGET + 1, ("stall %.2f s"):format(gap))
  t.ok(after and after - frozen_at <= BUDGET + 1, "thawed within the budget")
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(s.status.consistent, true)
  local rec = json.decode(s.metadata.annotations["vmsnap.io/hooks"] or "{}")
  local run = (rec.runs or {})[1] or {}
  t.eq(("%s.%s=%s"):format(run.hook, run.point, run.outcome), "spin.post_freeze=timeout")
  t.ok(no_lease(c), "no lease remains")
end)

t.done()
