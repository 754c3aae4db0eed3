-- vmsnap.reconcile.steps against `vmsnap serve`, with a workflow made up
-- for the test (over VirtualDiskSnapshot objects, which nothing else
-- reconciles here): the order of steps, wait / pause / failure, the record
-- a restarted controller resumes from, undo like defer, a held step given
-- back at once, deletion; the step list's methods; the snapshot Secret's
-- format; transient and terminal codes.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local reconcile = require("vmsnap.reconcile")
local steps = require("vmsnap.reconcile.steps")
local errors = require("vmsnap.errors")
local secret_format = require("vmsnap.snapshot_secret")
local base64 = require("vmsnap.base64")
local h = require("helpers")

t.test("the step list: insert, replace, wrap, remove; names checked; describe", function()
  local function s(n) return { name = n, run = function() return true end } end
  local l = steps.list({ s("a"), s("b"), s("c") })
  l:after("a", s("a2"))
  l:before("a", s("first"))
  l:remove("c")
  local names = {}
  for _, x in ipairs(l) do names[#names + 1] = x.name end
  t.eq(table.concat(names, " "), "first a a2 b")
  local ok, err = pcall(l.after, l, "nope", s("x"))
  t.ok(not ok)
  t.contains(tostring(err), 'no step named "nope" (steps: first, a, a2, b)')
  ok, err = pcall(l.before, l, "a", s("b"))
  t.contains(tostring(err), 'a step named "b" exists already')
  ok, err = pcall(steps.list, { s("x"), s("x") })
  t.contains(tostring(err), 'two steps named "x"')
  local calls = {}
  l:replace("b", function() calls[#calls + 1] = "new b" return true end)
  l:wrap("b", function(run, ctx, obj, facts)
    calls[#calls + 1] = "before"
    return run(ctx, obj, facts)
  end)
  t.eq(l:find("b").run(), true)
  t.eq(table.concat(calls, ","), "before,new b")
  l:find("a").undo = function() return true end
  l:find("a").hold = true
  l:find("a").phase = "Pending"
  l:find("a").doc = "the first real one"
  t.contains(l:describe(), " 2. a                  the first real one  [phase Pending, undo (held)]")
end)

t.test("the snapshot Secret's format: encode and decode round-trip; garbage is Invalid", function()
  local vm = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachine",
    metadata = { name = "vm1", namespace = "ns", labels = { a = "ü" } }, spec = { blockDeviceRefs = { { kind = "VirtualDisk", name = "d" } } },
    status = { phase = "Running" } }
  local ip = { kind = "VirtualMachineIPAddress", metadata = { name = "ip1" }, spec = { type = "Static", staticIP = "10.0.0.5" } }
  local b = { kind = "VirtualMachineBlockDeviceAttachment", metadata = { name = "att" }, spec = { virtualMachineName = "vm1" } }
  local data = secret_format.encode({ vm = vm, vmip = ip, vmbdas = { b } })
  local keys = {}
  for k in pairs(data) do keys[#keys + 1] = k end
  table.sort(keys)
  t.eq(table.concat(keys, ","), "vm,vmbdas,vmip")
  -- base64 of the JSON, which the wire carries as base64 again
  t.eq(json.decode(base64.decode(base64.decode(data.vm))).metadata.name, "vm1")
  local back = assert(secret_format.decode({ metadata = { name = "s" }, data = data }))
  t.eq(json.encode(back.vm), json.encode(vm))
  t.eq(json.encode(back.vmip), json.encode(ip))
  t.eq(#back.vmbdas, 1)
  t.eq(back.vmbdas[1].metadata.name, "att")
  t.eq(back.provisioner, nil)
  local stored = secret_format.stored({ metadata = { name = "x" } }, "v1", "Secret")
  t.eq(stored.kind, "Secret")
  local none, err, code = secret_format.decode({ metadata = { name = "s" }, data = { vm = "not base64!" } })
  t.eq(none, nil)
  t.eq(code, "Invalid")
  t.contains(err, 'cannot decode "vm" of the snapshot secret "s"')
  none, err, code = secret_format.decode({ metadata = { name = "s" }, data = {} })
  t.eq(code, "Invalid")
  t.contains(err, "has no virtual machine")
end)

t.test("transient and terminal codes", function()
  for _, c in ipairs({ "TIMEOUT", "Conflict", "ServiceUnavailable", "InternalError", "ECONNREFUSED", "BUSY" }) do
    t.eq(errors.is_transient(c), true, c)
  end
  t.eq(errors.is_transient(nil), true, "no code: not final")
  for _, c in ipairs({ "Invalid", "Forbidden", "NotFound", "AlreadyExists", "HookFailed", "Inconsistent" }) do
    t.eq(errors.is_transient(c), false, c)
  end
end)

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
local cond = require("vmsnap.k8s.object").condition

local function eventually(pred, timeout)
  local until_t = task.now() + (timeout or 5)
  while task.now() < until_t do
    local v = pred()
    if v then return v end
    task.sleep(0.02)
  end
  return pred()
end

-- a workflow made up for the test: what its steps do is in `log`, and the
-- test says through `script[name]` what a step returns
local log, script = {}, {}
local function say(x) log[#log + 1] = x end
local function step(name, o)
  o = o or {}
  return { name = name, phase = o.phase, hold = o.hold, when = o.when,
    run = function(ctx, obj)
      say(name)
      local f = script[obj.metadata.name .. "/" .. name]
      if f then return f(ctx, obj) end
      return true
    end,
    undo = o.undo and function(ctx, obj, outcome)
      say("undo " .. name .. " " .. outcome)
      local f = script[obj.metadata.name .. "/undo " .. name]
      if f then return f(ctx, obj, outcome) end
      return true
    end or nil }
end
local W = {
  kind = "VirtualDiskSnapshot", condition = "VirtualDiskSnapshotReady", failed_reason = "TestFailed",
  reasons = { Special = "SpecialReason" }, events = { failed = "TestFailedEvent" },
  steps = steps.list({
    step("gates", { phase = "Pending" }),
    step("start"),
    step("freeze", { undo = true, hold = true }),
    step("work", { undo = true }),
    step("skip", { when = function() return false end }),
    step("finish"),
  }),
}
-- the last step sets Ready
W.steps:wrap("finish", function(run, ctx, obj, facts)
  local r = run(ctx, obj, facts)
  if r == true then
    obj.status.phase = "Ready"
    ctx:condition(W.condition, "True", "Done", "")
  end
  return r
end)
W.cleanup = function() say("cleanup") return true end

local function controller(name, client)
  return reconcile.controller({ client = client or c, name = name or "steps-test", kind = W.kind, finalizer = "test.vmsnap.io/steps",
    reconcile = function(ctx, obj) return steps.run(W, ctx, obj) end,
    finalize = function(ctx, obj) return steps.finalize(W, ctx, obj) end })
end
local function run(ctl)
  local tk = task.spawn(function() return ctl:run() end)
  return setmetatable({}, { __close = function() ctl:stop() task.wait(tk, 5) end })
end
local function create(name)
  log = {}
  return assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = name },
    spec = { virtualDiskName = "d" } }))
end
local function record(o) return json.decode(o.metadata.annotations["vmsnap.io/steps"]) end
local function events(name)
  local out = {}
  for _, e in ipairs(assert(c:list_all("events", { field_selector = "involvedObject.name=" .. name }))) do
    out[e.reason] = (out[e.reason] or 0) + (e.count or 1)
  end
  return out
end

t.test("the steps run in order in one pass; the undos owed run newest first at the end; a false when skips", function()
  local _ <close> = run(controller())
  create("s1")
  -- the record is written after the status it goes with: wait for both
  local o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s1")
    return x and x.status and x.status.phase == "Ready" and #record(x).owed == 0 and x
  end))
  t.eq(table.concat(log, ","), "gates,start,freeze,work,finish,undo work Ready,undo freeze Ready")
  local rec = record(o)
  t.eq(table.concat(rec.done, " "), "gates start freeze work skip finish")
  t.eq(#rec.owed, 0)
end)

t.test("wait shows the reason in the step's phase; pause writes the status and goes on later", function()
  local _ <close> = run(controller())
  local open = false
  script["s2/gates"] = function() if not open then return steps.wait("NotYet", "Waiting for the test.", 0.2) end return true end
  script["s2/start"] = function(_, obj) obj.status.phase = "InProgress" return steps.pause(0.1) end
  create("s2")
  local o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s2")
    local r = x and cond(x, "VirtualDiskSnapshotReady")
    return r and r.reason == "NotYet" and x
  end))
  t.eq(o.status.phase, "Pending")
  t.eq(cond(o, "VirtualDiskSnapshotReady").message, "Waiting for the test.")
  local gates_before = #log
  task.sleep(0.5)
  t.ok(#log > gates_before, "looked at again after the wait's `after`")
  open = true
  o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s2")
    return x and x.status and x.status.phase == "Ready" and x
  end))
  local joined = table.concat(log, ",")
  t.contains(joined, "gates,start,freeze,work,finish")
end)

t.test("a terminal failure: Failed once, the reason from the code, one Warning Event, the undos of started steps newest first", function()
  local _ <close> = run(controller())
  script["s3/work"] = function() return nil, "the work broke", "Special" end
  create("s3")
  local o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s3")
    return x and x.status and x.status.phase == "Failed" and x
  end))
  local r = cond(o, "VirtualDiskSnapshotReady")
  t.eq(r.reason, "SpecialReason")
  t.eq(r.message, "The work broke.")
  task.sleep(0.3)
  t.eq(table.concat(log, ","), "gates,start,freeze,work,undo work Failed,undo freeze Failed")
  t.eq(events("s3").TestFailedEvent, 1, "one Warning Event")
  -- the record is written after the status it goes with: read it again
  local rec = record(assert(c:get("vdsnapshot", "s3")))
  t.eq(#rec.owed, 0)
end)

t.test("a terminal object whose undo failed is retried until the undo is done (the thaw is not left owed)", function()
  local _ <close> = run(controller())
  script["s-undo/work"] = function() return nil, "the work broke", "Special" end
  local fails = 2
  script["s-undo/undo freeze"] = function()
    if fails > 0 then
      fails = fails - 1
      return nil, "the thaw's write was lost", "CLOSED"
    end
    return true
  end
  create("s-undo")
  local o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s-undo")
    return x and x.status and x.status.phase == "Failed" and #record(x).owed == 0 and x
  end, 10))
  t.eq(o.status.phase, "Failed")
  t.eq(fails, 0, "the failing undo was tried again")
  local n = 0
  for _, l in ipairs(log) do if l == "undo freeze Failed" then n = n + 1 end end
  t.eq(n, 3, "three tries of the thaw: two lost, one done")
  t.eq(events("s-undo").TestFailedEvent, 1, "still one Warning Event")
end)

t.test("a transient failure after a held step gives it back at once; a later pass takes it again, in its place", function()
  local _ <close> = run(controller())
  local n = 0
  script["s4/work"] = function()
    n = n + 1
    if n == 1 then return nil, "the server is busy", "ServiceUnavailable" end
    return true
  end
  create("s4")
  local o = assert(eventually(function()
    local x = c:get("vdsnapshot", "s4")
    return x and x.status and x.status.phase == "Ready" and x
  end))
  t.eq(table.concat(log, ","),
    "gates,start,freeze,work,undo freeze Retry,freeze,work,finish,undo work Ready,undo freeze Ready")
  t.ok(o)
end)

t.test("a restarted controller resumes at the first unfinished step; a raise in a step is retried", function()
  local ctl = controller("first")
  local blocked = true
  script["s5/work"] = function()
    if blocked then return steps.wait("Blocked", "Held by the test.") end
    return true
  end
  do
    local _ <close> = run(ctl)
    create("s5")
    assert(eventually(function()
      local x = c:get("vdsnapshot", "s5")
      local r = x and cond(x, "VirtualDiskSnapshotReady")
      return r and r.reason == "Blocked"
    end))
  end
  log = {}
  blocked = false
  local raised = false
  script["s5/finish"] = function()
    if not raised then raised = true error("a bug in the step") end
    return true
  end
  local _ <close> = run(controller("second"))
  assert(eventually(function()
    local x = c:get("vdsnapshot", "s5")
    return x and x.status and x.status.phase == "Ready"
  end))
  t.eq(log[1], "work", "resumed at work, not at the start: " .. table.concat(log, ","))
  -- the raise failed the pass (transient): the held step was given back and taken again
  t.contains(table.concat(log, ","), "finish,undo freeze Retry,freeze,finish", "the raise was retried")
end)

t.test("deletion runs the owed undos with outcome Deleted, then the cleanup, then the finalizer goes", function()
  local _ <close> = run(controller())
  script["s6/work"] = function() return steps.wait("Blocked", "Held by the test.") end
  create("s6")
  assert(eventually(function()
    local x = c:get("vdsnapshot", "s6")
    local r = x and cond(x, "VirtualDiskSnapshotReady")
    return r and r.reason == "Blocked"
  end))
  assert(c:delete("vdsnapshot", "s6"))
  assert(eventually(function() return c:get("vdsnapshot", "s6") == nil end))
  local joined = table.concat(log, ",")
  t.contains(joined, "undo work Deleted,undo freeze Deleted,cleanup")
end)

t.test("the record never runs ahead of the status: status writes lost after the last step (the connection closed) still end Ready", function()
  local fp <close> = h.faultproxy(srv.port)
  local pc = assert(k8s.client({ server = fp.url, token = srv.token }))
  fp:plan("PUT /apis/" .. G .. "/namespaces/default/virtualdisksnapshots/s-lost/status$",
    "close,close,close,close,close,close,close,close")
  local _ <close> = run(controller("lost-test", pc))
  create("s-lost")
  local o = eventually(function()
    local x = c:get("vdsnapshot", "s-lost")
    return x and x.status and x.status.phase == "Ready" and x
  end, 20)
  t.ok(o, "Ready once the status writes go through: " .. json.encode((c:get("vdsnapshot", "s-lost") or {}).status or "absent"))
  t.eq(fp:stats().faulted, 8, "eight status writes lost")
  -- the record catches up (the pass whose record write was lost is retried)
  o = eventually(function()
    local x = c:get("vdsnapshot", "s-lost")
    local rec = x and record(x)
    return rec and #rec.owed == 0 and #rec.done == 6 and x
  end, 10)
  t.ok(o, "the record completes: " .. tostring(((c:get("vdsnapshot", "s-lost") or {}).metadata or {}).annotations
    and c:get("vdsnapshot", "s-lost").metadata.annotations["vmsnap.io/steps"]))
  t.contains(table.concat(log, ","), "undo work Ready,undo freeze Ready")
end)

t.done()
