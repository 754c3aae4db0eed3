-- vmsnap.hooks without the platform: loading and the sandbox, selection
-- (hooks.d with selectors, hooks/ by name, the annotation), the runner's
-- pairs and unwinding against a real API server (`vmsnap serve`), workflow
-- extensions, and `vmsnap hook test|list` (the webhook example against a test
-- HTTP server).
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local hooks = require("vmsnap.hooks")
local workflow = require("vmsnap.workflow")
local h = require("helpers")

local dir <close> = assert(fs.tempdir("vmsnap-hookunits"))
local S = dir.path
for _, d in ipairs({ "hooks", "hooks.d", "hooks.d/pre_freeze", "workflows/vm-restore.d" }) do assert(fs.mkdir_p(S .. "/" .. d)) end
local function write(path, text) assert(fs.write_atomic(S .. "/" .. path, text)) end
workflow.add_path(S)

t.test("the example hooks load and declare their points", function()
  local want = { ["guest-command"] = "pre_freeze", mysql = "post_thaw", postgresql = "pre_freeze", webhook = "post_snapshot" }
  local found = hooks.discover()
  for name, point in pairs(want) do
    local e = found.named[name]
    t.ok(e, name .. " is found by name")
    local spec, err = hooks.load(e)
    t.ok(spec, err)
    t.eq(type(spec[point]), "function", name .. " has " .. point)
  end
end)

t.test("the sandbox: unknown points, forbidden requires, globals and os are clear errors", function()
  write("hooks/typo.lua", "return { pre_frezee = function() end }")
  local spec, err = hooks.load({ name = "typo", file = S .. "/hooks/typo.lua" })
  t.eq(spec, nil)
  t.contains(err, '"pre_frezee" is not a hook point')
  write("hooks/req.lua", 'local p = require("vmsnap.proc") return {}')
  spec, err = hooks.load({ name = "req", file = S .. "/hooks/req.lua" })
  t.eq(spec, nil)
  t.contains(err, "require of 'vmsnap.proc' is not allowed in a hook")
  write("hooks/glob.lua", "counter = 1 return {}")
  spec, err = hooks.load({ name = "glob", file = S .. "/hooks/glob.lua" })
  t.contains(err, "assignment to undeclared global 'counter'")
  write("hooks/osx.lua", 'return { pre_snapshot = function() return io.popen("id") end }')
  spec = assert(hooks.load({ name = "osx", file = S .. "/hooks/osx.lua" }))
  local rec = hooks.run_one({ name = "osx", spec = spec, params = {} }, "pre_snapshot", {})
  t.eq(rec.outcome, "error")
  t.contains(rec.message, "io.popen is not available in the hook sandbox")
  spec = assert(hooks.load({ name = "osx", file = S .. "/hooks/osx.lua", allow_os = true }))
  rec = hooks.run_one({ name = "osx", spec = spec, params = {} }, "pre_snapshot", {})
  t.eq(rec.outcome, "ok", "allowed for an operator's directory")
  -- the objects are read-only
  write("hooks/ro.lua", 'return { pre_snapshot = function(ctx) ctx.vm.metadata.name = "x" end }')
  spec = assert(hooks.load({ name = "ro", file = S .. "/hooks/ro.lua" }))
  rec = hooks.run_one({ name = "ro", spec = spec, params = {} }, "pre_snapshot",
    { vm = { metadata = { name = "vm1" } } })
  t.contains(rec.message, "read-only")
  -- a busy handler is stopped at its timeout; memory is bounded
  write("hooks/busy.lua", 'return { timeout = 0.3, pre_snapshot = function() while true do end end }')
  spec = assert(hooks.load({ name = "busy", file = S .. "/hooks/busy.lua" }))
  rec = hooks.run_one({ name = "busy", spec = spec, params = {} }, "pre_snapshot", {})
  t.eq(rec.outcome, "timeout")
  t.ok(rec.ms < 2000, "stopped near its timeout: " .. rec.ms .. " ms")
  write("hooks/hog.lua", 'return { pre_snapshot = function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100) .. i end end }')
  spec = assert(hooks.load({ name = "hog", file = S .. "/hooks/hog.lua" }))
  rec = hooks.run_one({ name = "hog", spec = spec, params = {} }, "pre_snapshot", {})
  t.eq(rec.outcome, "error")
  t.contains(rec.message, "exceeded its memory limit of 64 MiB")
  collectgarbage()
end)

t.test("selection: installed hooks by selector and file name, then named ones in annotation order", function()
  write("hooks.d/20-db.lua", 'return { selector = "app=db", pre_snapshot = function() end }')
  write("hooks.d/10-all.lua", 'return { pre_snapshot = function() end }')
  write("hooks.d/pre_freeze/15-one.lua", 'return function(ctx) end')
  write("hooks/named.lua", 'return { params = { a = 1, b = 2 }, pre_freeze = function() end }')
  local vm = { metadata = { name = "vm1", labels = { app = "db" },
    annotations = { ["vmsnap.io/hooks"] = '[{"name": "named", "params": {"b": 3}}]' } } }
  local list = assert(hooks.for_vm(vm))
  local names = {}
  for _, x in ipairs(list) do names[#names + 1] = x.name end
  t.eq(table.concat(names, ","), "10-all,15-one,20-db,named")
  t.eq(list[4].params.a, 1)
  t.eq(list[4].params.b, 3, "the annotation's params win")
  vm.metadata.labels.app = "web"
  names = {}
  for _, x in ipairs(assert(hooks.for_vm(vm))) do names[#names + 1] = x.name end
  t.eq(table.concat(names, ","), "10-all,15-one,named")
  vm.metadata.annotations["vmsnap.io/hooks"] = "not json"
  local _, err = hooks.for_vm(vm)
  t.contains(err, "is not a JSON list of hook names")
  vm.metadata.annotations["vmsnap.io/hooks"] = '["nope"]'
  _, err = hooks.for_vm(vm)
  t.contains(err, 'the hook "nope" named in vmsnap.io/hooks of virtual machine "vm1" is not on the scripts path')
  for _, f in ipairs({ "hooks.d/20-db.lua", "hooks.d/10-all.lua", "hooks.d/pre_freeze/15-one.lua" }) do fs.remove(S .. "/" .. f) end
end)

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

t.test("the runner: partners recorded before the pre half, unwound in reverse order whatever fails", function()
  local order = {}
  local function hook(name, fail_pre)
    return { name = name, params = {}, spec = {
      pre_freeze = function() order[#order + 1] = name .. ".pre" if fail_pre then return nil, "no" end end,
      post_thaw = function() order[#order + 1] = name .. ".post" error("post fails too") end,
      post_freeze = function() order[#order + 1] = name .. ".post_freeze" end,
    } }
  end
  local vms = assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "u1" },
    spec = { virtualMachineName = "vm1" } }))
  local r = hooks.runner({ client = c, object = vms, hooks = { hook("a"), hook("b", true), hook("c") } })
  local ok, err = r:run("pre_freeze")
  t.eq(ok, nil)
  t.eq(err, 'the hook "b" failed at pre_freeze: no')
  -- the record is on the object: c never started, so only a and b are owed
  local rec = json.decode(assert(c:get("vmsnapshot", "u1")).metadata.annotations["vmsnap.io/hooks"])
  t.eq(json.encode(rec.pending.post_thaw), '["a","b"]')
  t.eq(rec.ran_pre_freeze, true)
  -- a new runner (a later pass, another process) finds what is owed
  local r2 = hooks.runner({ client = c, object = assert(c:get("vmsnapshot", "u1")), hooks = { hook("a"), hook("b", true), hook("c") } })
  t.eq(r2:done("pre_freeze"), true)
  t.ok(r2:unwind("post_thaw"), "post hooks continue by default")
  t.eq(table.concat(order, " "), "a.pre b.pre b.post a.post")
  rec = json.decode(assert(c:get("vmsnapshot", "u1")).metadata.annotations["vmsnap.io/hooks"])
  t.eq(rec.pending.post_thaw, nil, "nothing owed any more")
  local outcomes = {}
  for _, x in ipairs(rec.runs) do outcomes[#outcomes + 1] = x.hook .. "." .. x.point .. "=" .. x.outcome end
  t.eq(table.concat(outcomes, " "), "a.pre_freeze=ok b.pre_freeze=failed b.post_thaw=error a.post_thaw=error")
  t.contains(rec.runs[3].output, "post fails too")
  -- unwinding twice runs nothing twice
  t.ok(r2:unwind("post_thaw"))
  t.eq(#order, 4)
end)

t.test("a workflow extension wraps a step in place; a broken one is a clear error", function()
  write("workflows/vm-restore.d/10-rename.lua", [[
return function(W)
  local rename = W.rename
  W.rename = function(rules, kind, name)
    local n = rename(rules, kind, name)
    if kind == "VirtualMachine" and n == name then return n .. "-restored" end
    return n
  end
end
]])
  local w = assert(workflow.load("vm-restore"))
  t.eq(w.rename({}, "VirtualMachine", "vm1"), "vm1-restored")
  t.eq(w.rename({ { from = { name = "vm1" }, to = "x" } }, "VirtualMachine", "vm1"), "x")
  t.eq(w.rename({}, "VirtualDisk", "d1"), "d1")
  t.eq(#w.extensions, 1)
  write("workflows/vm-restore.d/20-broken.lua", "return 42")
  local _, err = workflow.load("vm-restore")
  t.contains(err, "20-broken.lua: a workflow extension must return a function(W)")
  fs.remove(S .. "/workflows/vm-restore.d/20-broken.lua")
  fs.remove(S .. "/workflows/vm-restore.d/10-rename.lua")
  t.eq(assert(workflow.load("vm-restore")).rename({}, "VirtualMachine", "vm1"), "vm1", "the built-in step again")
end)

t.test("vmsnap hook test and list: the webhook example against an HTTP server", function()
  local web <close> = h.httpd()
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm1",
    annotations = { ["vmsnap.io/hooks"] = '["webhook", "named"]' } },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = "d" } } } }))
  local function vmsnap(args)
    local argv = { h.vmsnap }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    argv[#argv + 1] = "--kubeconfig"
    argv[#argv + 1] = srv.kubeconfig
    return assert(require("vmsnap.proc").run(argv, { timeout = 30, env = { VMSNAP_SCRIPTS_PATH = S } }))
  end
  local r = vmsnap({ "hook", "test", h.source .. "/scripts/hooks/webhook.lua", "--vm", "vm1", "--point", "post_snapshot",
    "--param", "url=" .. json.encode(web.url .. "/echo") })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("post_snapshot%s+ok"), r.stdout)
  t.contains(r.stdout, "/echo notified (200)")
  r = vmsnap({ "hook", "test", h.source .. "/scripts/hooks/webhook.lua", "--vm", "vm1", "--point", "snapshot_failed",
    "--param", "url=" .. web.url .. "/status/500" })
  t.eq(r.status, 1)
  t.contains(r.stdout, "answered 500")
  t.contains(r.stdout, "(on_error: continue)")
  r = vmsnap({ "hook", "test", h.source .. "/scripts/hooks/webhook.lua", "--vm", "vm1", "--point", "pre_frooze" })
  t.eq(r.status, 2)
  t.contains(r.stderr, '--point "pre_frooze" is not a hook point')
  r = vmsnap({ "hook", "test", h.source .. "/scripts/hooks/webhook.lua", "--vm", "nope" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "NotFound")
  r = vmsnap({ "hook", "list", "--vm", "vm1" })
  t.eq(r.status, 0, r.stderr)
  t.ok(r.stdout:find("^webhook%s+post_snapshot,snapshot_failed,post_restore,restore_failed"), r.stdout)
  t.ok(r.stdout:find("\nnamed%s+pre_freeze"), r.stdout)
end)

t.done()
