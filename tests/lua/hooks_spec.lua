-- Hooks on the local platform with a real agent (spec: issue "Hooks and
-- customisable workflows"): a pre_freeze hook runs a command in the guest
-- before the freeze and its post_thaw partner after the thaw; a failing pre
-- hook aborts and the partners of the hooks that ran still run; a hook over
-- its timeout is stopped and the guest thawed; os.execute in the sandbox is
-- a clear error; the MySQL example holds FLUSH TABLES WITH READ LOCK on a
-- real MariaDB across the freeze; restore hooks; a workflow extension
-- (workflows/vm-snapshot.d/) wraps one step. Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local task = require("vmsnap.task")
local h = require("helpers")

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("hooks", why)
  return t.done()
end
probe:cleanup()

-- the user's scripts directory: hooks by name and a workflow extension
local scripts <close> = assert(fs.tempdir("vmsnap-hooks"))
local S = scripts.path
local out <close> = assert(fs.tempdir("vmsnap-hooks-out")) -- where guest commands leave their marks
local O = out.path
assert(fs.mkdir_p(S .. "/hooks"))
assert(fs.mkdir_p(S .. "/workflows/vm-snapshot.d"))
local function write(path, text) assert(fs.write_atomic(S .. "/" .. path, text)) end
write("hooks/probe.lua", [[
-- what the guest looks like at each point, and a command run in it before the freeze and after the thaw
local function state(ctx) ctx.log("state " .. assert(ctx.guest:fsfreeze_status())) end
return {
  pre_freeze = function(ctx)
    local r = assert(ctx.guest:exec({ "/bin/sh", "-c", "echo pre >> " .. ctx.params.dir .. "/probe.log" }))
    if r.exitcode ~= 0 then return nil, "the command failed" end
    state(ctx)
  end,
  post_freeze = state,
  post_thaw = function(ctx)
    assert(ctx.guest:exec({ "/bin/sh", "-c", "echo post >> " .. ctx.params.dir .. "/probe.log" }))
    state(ctx)
  end,
  pre_restore = function(ctx) ctx.log("restoring " .. ctx.restore.metadata.name .. " as " .. ctx.vm.metadata.name) end,
  post_restore = function(ctx) ctx.log("restored: " .. tostring(ctx.outcome)) end,
}
]])
write("hooks/refuse.lua", [[
return {
  pre_freeze = function(ctx) return nil, "database busy" end,
  post_thaw = function(ctx) ctx.log("refuse unwound") end,
}
]])
write("hooks/spin.lua", [[
return { timeout = 1, post_freeze = function(ctx) ctx.log("spinning") while true do end end }
]])
write("hooks/sleeper.lua", [[
-- (not at post_freeze: qemu-ga refuses guest-exec while the guest is frozen)
return { timeout = 1, on_error = "continue", pre_freeze = function(ctx) return ctx.guest:exec({ "sleep", "61" }) end }
]])
write("hooks/osx.lua", [[
return { pre_snapshot = function(ctx) os.execute("touch /tmp/vmsnap-hook-escaped") end }
]])
write("workflows/vm-snapshot.d/10-label-secret.lua", [[
-- a user's extension: the snapshot Secret gets a label, without copying the workflow
return function(W)
  W.steps:wrap("store", function(store, ctx, vms, facts)
    local ok, err, code = store(ctx, vms, facts)
    if ok ~= true then return ok, err, code end
    local res, perr, pcode = ctx.client:patch("secrets", vms.status.virtualMachineSnapshotSecretName,
      { metadata = { labels = { ["example.com/snapshot-of"] = facts.vm.metadata.name } } },
      { namespace = vms.metadata.namespace })
    if not res then return nil, perr, pcode end
    return true
  end)
end
]])

write("workflows/vm-snapshot.d/20-no-freeze.lua", [[
-- (a test's extension) a snapshot named nofreeze-*: its VM is freezable when
-- its children are made and not by the freeze step (as a VM stopped between)
return function(W)
  local step = W.steps:find("freeze")
  local when = step.when
  step.when = function(ctx, vms, facts)
    if vms.metadata.name:find("^nofreeze") then return false end
    return when(ctx, vms, facts)
  end
end
]])

local srv <close> = h.platform({ env = { VMSNAP_SCRIPTS_PATH = S } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local cond = require("vmsnap.k8s.object").condition
local function wait(kind, name, pred, timeout) return c:wait_for(kind, name, pred, { timeout = timeout or 30 }) end
local function terminal(o) return o and o.status and (o.status.phase == "Ready" or o.status.phase == "Failed") and o end
local function agent_ready(o) return o and cond(o, "AgentReady") and cond(o, "AgentReady").status == "True" and o end
local function use_hooks(list)
  assert(c:patch("vm", "vmh", { metadata = { annotations = { ["vmsnap.io/hooks"] = json.encode(list) } } }))
end
local function snapshot(name, extra)
  local spec = { virtualMachineName = "vmh" }
  for k, v in pairs(extra or {}) do spec[k] = v end
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = name }, spec = spec }))
  local o, err = wait("vmsnapshot", name, terminal)
  if not o then
    local cur = c:get("vmsnapshot", name)
    error(("%s: %s; now %s"):format(name, tostring(err), json.encode(cur and cur.status or {})), 2)
  end
  return o
end
local function record(obj)
  return json.decode(obj.metadata.annotations and obj.metadata.annotations["vmsnap.io/hooks"] or "null") or {}
end
local function runs(obj)
  local out = {}
  for _, r in ipairs(record(obj).runs or {}) do
    out[#out + 1] = r.hook .. "." .. r.point .. "=" .. r.outcome
    if r.outcome ~= "ok" then print(("# %s %s: %s"):format(r.hook, r.point, tostring(r.output):gsub("\n", " | "))) end
  end
  return table.concat(out, " ")
end
local function run_of(obj, hook, point)
  for _, r in ipairs(record(obj).runs or {}) do if r.hook == hook and r.point == point then return r end end
end
local function events(name)
  local n = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    n[e.reason] = (n[e.reason] or 0) + (e.count or 1)
  end
  return n
end
local function thawed()
  local v = assert(c:get("vm", "vmh"))
  local a <close> = assert(require("vmsnap.qga").connect(v.metadata.annotations["vmsnap.io/agent"], { timeout = 3 }))
  return a:fsfreeze_status() == "thawed" and (v.metadata.annotations or {})["vmsnap.io/frozen-by"] == nil
end

assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "rooth" }, spec = { persistentVolumeClaim = { size = "32Mi" } } }))
assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vmh", labels = { app = "db" } },
  spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "rooth" } } } }))
assert(wait("vm", "vmh", agent_ready))

t.test("pre_freeze runs in the guest before the freeze, post_thaw after the thaw; recorded and evented", function()
  use_hooks({ { name = "probe", params = { dir = O } } })
  local s = snapshot("h1")
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(runs(s), "probe.pre_freeze=ok probe.post_freeze=ok probe.post_thaw=ok")
  t.eq(run_of(s, "probe", "pre_freeze").output, "$ /bin/sh -c echo pre >> " .. O .. "/probe.log\nstate thawed")
  t.contains(run_of(s, "probe", "post_freeze").output, "state frozen")
  t.contains(run_of(s, "probe", "post_thaw").output, "state thawed")
  t.eq(fs.read_file(O .. "/probe.log"), "pre\npost\n")
  t.eq(events("h1").HookSucceeded, 3)
  t.eq(s.status.consistent, true)
  -- the extension of the workflow wrapped its store step
  t.eq(assert(c:get("secret", "h1")).metadata.labels["example.com/snapshot-of"], "vmh")
end)

t.test("a failing pre hook aborts; the partners of the hooks that started still run, in reverse order", function()
  fs.remove(O .. "/probe.log")
  use_hooks({ { name = "probe", params = { dir = O } }, "refuse" })
  local s = snapshot("h2")
  t.eq(s.status.phase, "Failed")
  local r = cond(s, "VirtualMachineSnapshotReady")
  t.eq(r.reason, "HookFailed")
  t.contains(r.message, 'The hook "refuse" failed at pre_freeze: database busy')
  t.eq(runs(s), "probe.pre_freeze=ok refuse.pre_freeze=failed refuse.post_thaw=ok probe.post_thaw=ok")
  t.eq(fs.read_file(O .. "/probe.log"), "pre\npost\n")
  t.eq(events("h2").VirtualMachineSnapshottingFrozen, nil, "never frozen")
  t.ok(thawed(), "the guest is thawed, no lease")
  -- its children were made before the freeze, for it to issue their
  -- VolumeSnapshots: told that it ended without them, they fail, and issue none
  t.ok(#s.status.virtualDiskSnapshotNames > 0, "children named")
  for _, n in ipairs(s.status.virtualDiskSnapshotNames) do
    local child = assert(c:wait_for("vdsnapshot", n, function(o) return o and o.status and o.status.phase == "Failed" and o end,
      { timeout = 10 }))
    t.eq(child.metadata.annotations["vmsnap.io/cut"], "none")
    t.eq(cond(child, "VirtualDiskSnapshotReady").message,
      ('The virtual machine snapshot "h2" ended before it issued the volume snapshot of the virtual disk "%s"'):format(
        child.spec.virtualDiskName))
    t.eq(c:get("volumesnapshot", n), nil, n .. ": no VolumeSnapshot")
  end
end)

t.test("hooks over their timeout are stopped (a busy loop, a guest command); the guest is thawed", function()
  use_hooks({ "spin", "sleeper" }) -- sleeper: on_error continue; spin: a post hook (continue by default)
  local t0 = task.now()
  local s = snapshot("h3")
  t.eq(s.status.phase, "Ready", "post hooks continue by default: " .. json.encode(s.status))
  t.eq(runs(s), "sleeper.pre_freeze=timeout spin.post_freeze=timeout")
  t.contains(run_of(s, "spin", "post_freeze").output, 'hook "spin" exceeded its timeout of 1s')
  t.ok(task.now() - t0 < 15, "stopped, not waited out")
  t.ok(thawed(), "thawed, no lease")
  t.eq(events("h3").HookTimedOut, 2)
  -- the guest command of the stopped hook is ended too
  local left = proc.run({ "pgrep", "-f", "^sleep 61$" }, { timeout = 5 })
  t.ok(left.status ~= 0, "no 'sleep 61' left in the guest: " .. tostring(left.stdout))
end)

t.test("os.execute in the sandbox is a clear error, and nothing ran", function()
  fs.remove("/tmp/vmsnap-hook-escaped")
  use_hooks({ "osx" })
  local s = snapshot("h4")
  t.eq(s.status.phase, "Failed")
  t.eq(cond(s, "VirtualMachineSnapshotReady").reason, "HookFailed")
  t.contains(cond(s, "VirtualMachineSnapshotReady").message, "os.execute is not available in the hook sandbox")
  t.ok(not fs.exists("/tmp/vmsnap-hook-escaped"), "the command did not run")
  -- an unknown hook name is named in the failure
  use_hooks({ "no-such-hook" })
  s = snapshot("h4b")
  t.eq(s.status.phase, "Failed")
  t.contains(cond(s, "VirtualMachineSnapshotReady").message, 'hook "no-such-hook" named in vmsnap.io/hooks')
end)

t.test("restore hooks: pre_restore before the objects are created, post_restore after", function()
  use_hooks({ { name = "probe", params = { dir = O } } })
  snapshot("h6", { keepIPAddress = "Never" })
  assert(c:create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = "hr" },
    spec = { virtualMachineSnapshotName = "h6", nameReplacements = {
      { from = { kind = "VirtualMachine", name = "vmh" }, to = "vmh2" },
      { from = { kind = "VirtualDisk", name = "rooth" }, to = "rooth2" } } } }))
  local r = assert(wait("vmrestore", "hr", terminal))
  t.eq(r.status.phase, "Ready", json.encode(r.status))
  t.eq(runs(r), "probe.pre_restore=ok probe.post_restore=ok")
  t.eq(run_of(r, "probe", "pre_restore").output, "restoring hr as vmh2")
  t.eq(run_of(r, "probe", "post_restore").output, "restored: Ready")
  assert(c:delete("vm", "vmh2"))
end)

t.timeout = 120
t.test("the MySQL example on a real MariaDB: FLUSH TABLES WITH READ LOCK held across the freeze, released after", function()
  local db <close>, dbwhy = h.mariadb()
  if not db then
    t.skip("MariaDB", dbwhy)
    return
  end
  t.eq(db:sql("CREATE DATABASE app; CREATE TABLE app.t (i INT); INSERT INTO app.t VALUES (1)").status, 0)
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
    metadata = { name = "slow-cut" }, driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "2s" } }))
  use_hooks({ { name = "mysql", params = { socket = db.socket, hold = 60 } } })
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "h5" },
    spec = { virtualMachineName = "vmh", volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slow-cut" } } } }))
  -- while the guest is frozen: the lock is held, a write waits and gives up
  assert(wait("vm", "vmh", function(o) return o and (o.metadata.annotations or {})["vmsnap.io/frozen-by"] and o end, 20))
  local held = db:sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%vmsnap_hook_lock%' AND INFO NOT LIKE '%PROCESSLIST%'")
  t.eq(held.stdout, "1\n", "the locking session is there while frozen")
  local w = db:sql("SET SESSION lock_wait_timeout = 1; INSERT INTO app.t VALUES (2)")
  t.ok(w.status ~= 0, "a write is blocked during the freeze")
  t.contains(w.stderr, "Lock wait timeout exceeded")
  local s = assert(wait("vmsnapshot", "h5", terminal))
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(runs(s), "mysql.pre_freeze=ok mysql.post_thaw=ok")
  t.contains(run_of(s, "mysql", "pre_freeze").output, "tables flushed and locked")
  t.contains(run_of(s, "mysql", "post_thaw").output, "lock released")
  -- after the thaw: released, writes go through
  held = db:sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE '%vmsnap_hook_lock%' AND INFO NOT LIKE '%PROCESSLIST%'")
  t.eq(held.stdout, "0\n")
  w = db:sql("SET SESSION lock_wait_timeout = 1; INSERT INTO app.t VALUES (3)")
  t.eq(w.status, 0, w.stderr)
  t.ok(thawed(), "thawed, no lease")
end)

t.test("a VM snapshot that does not freeze after all gives its children back their VolumeSnapshots: each issues its own VolumeSnapshot, none claims a consistency it lacks", function()
  use_hooks({})
  local s = snapshot("nofreeze-1", { requiredConsistency = false })
  t.eq(s.status.phase, "Ready", json.encode(s.status))
  t.eq(events("nofreeze-1").VirtualMachineSnapshottingFrozen, nil, "the VM snapshot never froze")
  t.eq(#s.status.virtualDiskSnapshotNames, 1)
  local n = s.status.virtualDiskSnapshotNames[1]
  local child = assert(c:get("vdsnapshot", n))
  local ann = child.metadata.annotations or {}
  t.eq(child.status.phase, "Ready")
  t.eq(ann["vmsnap.io/issued-by-parent"], "false", n .. ": given back its VolumeSnapshot")
  t.eq(ann["vmsnap.io/cut"], nil, n .. ": no verdict of the parent")
  local vs = assert(c:get("volumesnapshot", n))
  t.eq((vs.metadata.annotations or {})["vmsnap.io/frozen-at"], nil, n .. ": not issued by the parent")
  -- the child went on as a disk snapshot: consistent only under a freeze of
  -- its own (its first pass may come after the mark went), never else
  if child.status.consistent then
    t.ok(tonumber(ann["vmsnap.io/freeze-held"]), n .. " consistent: it froze the guest itself")
  end
  t.eq(s.status.consistent, child.status.consistent, "the VM snapshot says what its one child says")
  t.ok(thawed(), "the guest is thawed, no lease")
end)

t.done()
