-- The hook sandbox against hooks that try to hurt the host (docs/hooks.md,
-- "Bounds and isolation"): each test runs a hostile hook through the
-- controllers' runner (vmsnap.hooks.run_one, in this process) and checks that
-- the hook gets a clear error or its timeout, that this process keeps
-- working, that its memory stays bounded and that the controller's
-- credentials are out of reach. The Kubernetes client a hook gets is tried
-- against a real `vmsnap serve` that requires a bearer token.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local hooks = require("vmsnap.hooks")
local h = require("helpers")

local dir <close> = assert(fs.tempdir("vmsnap-sandbox"))
local n = 0
--- Load `source` as a hook file; returns the loaded entry or nil, message.
local function hook(source)
  n = n + 1
  local file = ("%s/h%d.lua"):format(dir.path, n)
  assert(fs.write_atomic(file, source))
  local spec, err = hooks.load({ name = "h" .. n, file = file })
  if not spec then return nil, err end
  return { name = "h" .. n, spec = spec, params = {} }
end
local function run(source, base)
  local e = assert(hook(source))
  local t0 = task.now()
  local rec = hooks.run_one(e, "pre_snapshot", base or {})
  rec.took = task.now() - t0
  return rec
end

local function rss_mib()
  local s = fs.read_file("/proc/self/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)") or "0") / 1024
end
-- the host still works: its string methods, its JSON, its scheduler
local function host_ok()
  t.eq(("a-b"):gsub("-", "+"), "a+b", "the host's string methods")
  t.eq(json.encode(json.decode('{"a":[1]}')), '{"a":[1]}', "the host's JSON")
  local x = task.spawn(function() task.sleep(0.01) return 7 end)
  t.eq(task.wait(x, 2), 7, "the host's tasks")
end

t.test("getmetatable(\"\") is nothing in a hook: the host's string metatable, error objects and JSON arrays stay out of reach", function()
  local rec = run([[
    local json = require("vmsnap.json")
    return { pre_snapshot = function()
      local got = {}
      got.string_mt = getmetatable("") == nil
      string.gsub = nil                                  -- the hook's own copy
      got.method = ("a-b"):gsub("-", "+")                -- still the host's
      local ok, e = pcall(json.decode, "{")
      got.error_mt = getmetatable(e) == nil
      local arr = json.decode("[]") -- an empty array carries the host's array metatable
      got.array_mt = getmetatable(arr) == nil
      got.array_set = pcall(setmetatable, arr, { __index = function() return "x" end })
      got.rawset = pcall(function() return rawset({}, 1, 1) end)
      local own = setmetatable({}, { __index = { v = 1 } })
      got.own = getmetatable(own) ~= nil and own.v == 1
      return got
    end }
  ]])
  t.eq(rec.outcome, "ok", rec.message)
  local got = rec.results[1]
  t.eq(got.string_mt, true, "getmetatable('') is nil")
  t.eq(got.method, "a+b")
  t.eq(got.error_mt, true, "an error object's metatable is hidden")
  t.eq(got.array_mt, true, "a decoded array's metatable is hidden")
  t.eq(got.array_set, false, "and cannot be replaced")
  t.eq(got.rawset, false, "rawset is not available")
  t.eq(got.own, true, "a hook's own metatables work")
  host_ok()
end)

t.test("a hook cannot leave code for the host to run: finalizers are refused, trapped errors and results run inside the hook's bounds", function()
  local rec = run([[return { pre_snapshot = function()
    setmetatable({}, { __gc = function() while true do end end })
  end }]])
  t.eq(rec.outcome, "error")
  t.contains(rec.message, "__gc metamethods are not available in a hook")
  local trap = "setmetatable({}, { __tostring = function() while true do end end, __index = function() while true do end end })"
  rec = run("return { timeout = 0.3, pre_snapshot = function() error(" .. trap .. ") end }")
  t.eq(rec.outcome, "timeout", "an error value whose __tostring loops")
  t.ok(rec.took < 1.5, ("stopped in %.2f s"):format(rec.took))
  rec = run("return { timeout = 0.3, pre_snapshot = function() return nil, " .. trap .. " end }")
  t.eq(rec.outcome, "timeout", "a failure message whose __tostring loops")
  rec = run("return { timeout = 0.3, pre_snapshot = function() return setmetatable({}, { __pairs = function() while true do end end }) end }")
  t.eq(rec.outcome, "timeout", "a result whose __pairs loops")
  rec = run("return { pre_snapshot = function() return setmetatable({ a = 1 }, { __index = function() while true do end end }) end }")
  t.eq(rec.outcome, "ok")
  t.eq(getmetatable(rec.results[1]), nil, "a result reaches the host as plain data")
  t.eq(rec.results[1].b, nil, "whose missing fields are nil, not the hook's __index")
  -- the file's own table: copied plainly while it loads, within its bound
  local saved = hooks.LOAD_TIMEOUT
  hooks.LOAD_TIMEOUT = 0.3
  local e, err = hook("return setmetatable({}, { __pairs = function() while true do end end })")
  hooks.LOAD_TIMEOUT = saved
  t.eq(e, nil)
  t.contains(err, "timed out after 0.3s")
  e = assert(hook("return setmetatable({ pre_snapshot = function() end }, { __index = function() while true do end end })"))
  t.eq(e.spec.timeout, nil, "reading the loaded spec runs no hook code")
  host_ok()
end)

t.test("memory: string.rep, .., table.concat, a table bomb and a YAML alias bomb stop at the hook's 64 MiB; the process stays small", function()
  collectgarbage()
  local before = rss_mib()
  local cases = {
    { "rep", [[local s = ("x"):rep(1 << 20) return #s:rep(1536)]] },
    { "concat operator", [[local s = "x" for _ = 1, 40 do s = s .. s end return #s]] },
    { "table.concat", [[local p = {} for i = 1, 1e8 do p[i] = "0123456789abcdef" end return #table.concat(p)]] },
    { "table bomb", [[local p = {} for i = 1, 1e9 do p[i] = { i } end return #p]] },
  }
  for _, c in ipairs(cases) do
    local rec = run("return { timeout = 20, pre_snapshot = function() " .. c[2] .. " end }")
    t.eq(rec.outcome, "error", c[1])
    t.contains(rec.message or "", "exceeded its memory limit of 64 MiB", c[1])
    print(("# %s: stopped in %.2f s"):format(c[1], rec.took))
  end
  local rec = run([[
    local yaml = require("vmsnap.yaml")
    return { pre_snapshot = function()
      local lines = { 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]' }
      for i = 1, 8 do
        local refs = {}
        for j = 1, 10 do refs[j] = "*a" .. (i - 1) end
        lines[#lines + 1] = ("a%d: &a%d [%s]"):format(i, i, table.concat(refs, ","))
      end
      return yaml.load(table.concat(lines, "\n"))
    end }
  ]])
  t.eq(rec.outcome, "failed", "the decoder refuses the bomb (nil, message)")
  t.contains(rec.message or "", "excessive aliasing")
  collectgarbage()
  local after = rss_mib()
  print(("# RSS %.0f MiB before, %.0f MiB after"):format(before, after))
  -- a sanitizer build keeps freed memory in quarantine (256 MiB) on top
  local sanitized = (require("vmsnap.core.runtime").versions().build or ""):find("sanitize")
  local bound = sanitized and 600 or 200
  t.ok(after - before < bound, ("the process grew by %.0f MiB (bound %d)"):format(after - before, bound))
  host_ok()
end)

t.test("time: a pcall loop, a pathological pattern and a host call with a trapped argument end at the hook's timeout or with an error", function()
  local rec = run([[return { timeout = 0.5, pre_snapshot = function()
    while true do pcall(function() while true do end end) end
  end }]])
  t.eq(rec.outcome, "timeout", "a pcall loop")
  t.ok(rec.took < 1.5, ("stopped in %.2f s"):format(rec.took))
  rec = run([[return { timeout = 5, pre_snapshot = function()
    return string.find(("a"):rep(5000), ("a*"):rep(50) .. "b")
  end }]])
  t.eq(rec.outcome, "error", "a pathological pattern")
  t.contains(rec.message or "", "pattern too costly for a hook")
  t.ok(rec.took < 1, ("refused in %.2f s"):format(rec.took))
  rec = run([[return { timeout = 5, pre_snapshot = function()
    return ("x"):rep(100000):gsub("(x*)*y", "z")
  end }]])
  t.eq(rec.outcome, "error", "gsub with nested repetition")
  rec = run([[return { timeout = 0.5, pre_snapshot = function(ctx)
    local trap = setmetatable({}, { __index = function() while true do end end })
    return ctx.sleep(trap)
  end }]])
  t.ok(rec.outcome == "error" or rec.outcome == "timeout", "a trapped argument: " .. tostring(rec.outcome))
  rec = run([[return { timeout = 5, pre_snapshot = function(ctx) ctx.sleep(0.1) ctx.log("slept") end }]])
  t.eq(rec.outcome, "ok", "ctx.sleep")
  t.contains(rec.output, "slept")
  host_ok()
end)

t.test("ctx.k8s: reads in the snapshot's namespace, writes only to what the hook declares, and no credentials anywhere", function()
  local TOKEN = "s3cr3t-" .. tostring(math.random(1e9))
  local srv <close> = h.apiserver({ args = { "--token", TOKEN } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "app", namespace = "default" }, data = { k = "v" } }))
  assert(c:create({ apiVersion = "v1", kind = "Namespace", metadata = { name = "other" } }))
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "secret-app", namespace = "other" }, data = { k = "v" } }))
  local base = { client = c, namespace = "default", vm = { metadata = { name = "vm1", namespace = "default" } } }
  -- everything a hook can reach from ctx, as strings
  local rec = run([[return { timeout = 10, pre_snapshot = function(ctx)
    local seen, found = {}, {}
    local function walk(v, depth)
      if type(v) == "string" then found[#found + 1] = v return end
      if type(v) ~= "table" or seen[v] or depth > 12 then return end
      seen[v] = true
      for k, x in pairs(v) do walk(k, depth + 1) walk(x, depth + 1) end
      local mt = getmetatable(v)
      if type(mt) == "table" then walk(mt, depth + 1) end
    end
    walk(ctx, 0)
    local direct = {}
    for _, k in ipairs({ "cfg", "client", "auth", "token", "headers" }) do direct[#direct + 1] = tostring(ctx.k8s[k]) end
    return table.concat(found, "\n"), table.concat(direct, ",")
  end }]], base)
  t.eq(rec.outcome, "ok", rec.message)
  t.ok(not rec.results[1]:find(TOKEN, 1, true), "the token is nowhere in what ctx reaches")
  t.eq(rec.results[2], "nil,nil,nil,nil,nil", "no client, configuration or credentials on ctx.k8s")
  rec = run([[return { pre_snapshot = function(ctx)
    local cm = assert(ctx.k8s:get("configmaps", "app"))
    local _, e1 = ctx.k8s:get("configmaps", "secret-app", { namespace = "other" })
    local _, e2 = ctx.k8s:list("namespaces")
    local _, e3 = ctx.k8s:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "x" } })
    return cm.data.k, e1, e2, e3
  end }]], base)
  t.eq(rec.outcome, "ok", rec.message)
  t.eq(rec.results[1], "v", "reads in its namespace")
  t.contains(rec.results[2], 'hooks cannot get configmaps in the namespace "other"')
  t.contains(rec.results[3], "hooks cannot list namespaces")
  t.contains(rec.results[4], "hooks may not create configmaps: list it in the hook's writes")
  rec = run([[return { writes = { "configmaps" }, pre_snapshot = function(ctx)
    return assert(ctx.k8s:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "from-hook", namespace = "other" } })).metadata.namespace
  end }]], base)
  t.eq(rec.outcome, "ok", rec.message)
  t.eq(rec.results[1], "default", "a declared write lands in the snapshot's namespace")
  t.ok(c:get("configmaps", "from-hook", { namespace = "default" }))
  t.eq(c:get("configmaps", "from-hook", { namespace = "other" }), nil)
end)

t.done()
