--- vmsnap.hooks: user hooks around the snapshot and restore workflows.
---
--- A hook is a Lua file returning a table of handlers keyed by hook point
--- (`pre_freeze = function(ctx) ... end`) and, optionally, `timeout`
--- (seconds, default 30; or a table per point), `on_error` ("fail" or
--- "continue"; or a table per point; default "fail" for pre_* hooks and
--- "continue" for the others), `selector` (a label selector over the VM's
--- labels) and `params` (defaults for ctx.params). Where hooks come from, on
--- every directory of the scripts search path (vmsnap.workflow.path()):
---   hooks.d/NAME.lua          installed: runs for every VM its selector
---                             matches (no selector: every VM)
---   hooks.d/POINT/NAME.lua    installed, one point: the file may return
---                             just the handler function
---   hooks/NAME.lua            a library hook: runs for the VMs whose
---                             annotation vmsnap.io/hooks names it
--- A file earlier on the path replaces a same-named later one. Installed hooks
--- run in file-name order, then the named ones in the annotation's order:
---   vmsnap.io/hooks: '["guest-command", {"name": "mysql", "params": {"hold": 60}}]'
---
--- Handlers run in a sandbox (allow-listed globals; `require` of
--- vmsnap.json/http/time/base64/yaml/quantity only; `os.execute` and
--- `io.popen` only in the directories named in $VMSNAP_HOOKS_ALLOW_OS) with
--- a context (ctx.vm, ctx.snapshot or ctx.restore — read-only copies —,
--- ctx.guest, ctx.k8s, ctx.log, ctx.params, ctx.deadline, ctx.point,
--- ctx.outcome), bounded in time (the task is cancelled at its timeout; a
--- busy loop is stopped by an instruction-count check) and in memory. A
--- handler returns nothing (success) or nil, message (failure).
---
--- Pairs unwind like `defer`: the partner of every pre hook that started —
--- post_snapshot for pre_snapshot, post_thaw for pre_freeze, post_restore
--- for pre_restore — runs later in reverse order, whatever the outcome.
--- What is pending and what ran is kept in the annotation vmsnap.io/hooks of
--- the snapshot or restore, so a restarted controller still unwinds.
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local task = require("vmsnap.task")
local metrics = require("vmsnap.metrics")
local vtime = require("vmsnap.time")
local log = require("vmsnap.log")
local deep = require("vmsnap.deep")
local workflow = require("vmsnap.workflow")
local select_ = require("vmsnap.apiserver.select")
local sandbox = require("vmsnap._sandbox")
local rtcore = require("vmsnap.core.runtime")
local errors = require("vmsnap.errors")

local M = {}

M.POINTS = { "pre_snapshot", "pre_freeze", "post_freeze", "post_thaw", "post_snapshot", "snapshot_failed",
  "pre_restore", "post_restore", "restore_failed" }
M.PARTNER = { pre_snapshot = "post_snapshot", pre_freeze = "post_thaw", pre_restore = "post_restore" }
M.ANNOTATION = "vmsnap.io/hooks"
M.DEFAULT_TIMEOUT = 30
M.MEMORY_LIMIT = 64 * 1024 * 1024 -- bytes a handler may grow the heap by
M.OUTPUT_LINES = 6 -- lines of output kept in the record: the first two, the last three
M.MAX_RUNS = 40                   -- runs kept in the record

local IS_POINT = {}
for _, p in ipairs(M.POINTS) do IS_POINT[p] = true end
local REQUIRABLE = { ["vmsnap.json"] = true, ["vmsnap.http"] = true, ["vmsnap.time"] = true,
  ["vmsnap.base64"] = true, ["vmsnap.yaml"] = true, ["vmsnap.quantity"] = true }

local hlog = log.new("hooks")

-- ------------------------------------------------------------ discovery

local function allow_os(dir)
  local env = os.getenv("VMSNAP_HOOKS_ALLOW_OS")
  if not env or env == "" then return false end
  for d in env:gmatch("[^:]+") do
    if d:gsub("/+$", "") == dir:gsub("/+$", "") then return true end
  end
  return false
end

--- Every hook file on the search path: {installed = {...}, named = {name = ...}}.
--- Each entry: {name, file, dir, point (single-point files), allow_os}.
function M.discover()
  local installed, named, seen = {}, {}, {}
  for _, d in ipairs(workflow.path()) do
    local hd = d .. "/hooks.d"
    for _, f in ipairs(fs.list(hd) or {}) do
      local name = f:match("^(.+)%.lua$")
      if name and not seen["d/" .. f] then
        seen["d/" .. f] = true
        installed[#installed + 1] = { name = name, file = hd .. "/" .. f, dir = hd, allow_os = allow_os(hd), key = f }
      elseif IS_POINT[f] then
        for _, g in ipairs(fs.list(hd .. "/" .. f) or {}) do
          local n2 = g:match("^(.+)%.lua$")
          if n2 and not seen["d/" .. f .. "/" .. g] then
            seen["d/" .. f .. "/" .. g] = true
            installed[#installed + 1] = { name = n2, point = f, file = hd .. "/" .. f .. "/" .. g,
              dir = hd .. "/" .. f, allow_os = allow_os(hd .. "/" .. f) or allow_os(hd), key = g }
          end
        end
      end
    end
    for _, f in ipairs(fs.list(d .. "/hooks") or {}) do
      local name = f:match("^(.+)%.lua$")
      if name and not named[name] then
        named[name] = { name = name, file = d .. "/hooks/" .. f, dir = d .. "/hooks", allow_os = allow_os(d .. "/hooks") }
      end
    end
  end
  table.sort(installed, function(a, b)
    if a.key ~= b.key then return a.key < b.key end
    return (a.point or "") < (b.point or "")
  end)
  return { installed = installed, named = named }
end

--- The sandbox a hook file is loaded in (vmsnap._sandbox): the modules it
--- may require are read-only views.
function M.environment(entry)
  local flags = entry.allow_os and rtcore.SANDBOX_ALLOW_OS or 0
  return sandbox.env(flags, {
    require = function(name)
      if not REQUIRABLE[name] and not (entry.require_any and type(name) == "string" and name:match("^vmsnap%.[%w_.]+$")
          and not name:match("^vmsnap%.core") and not name:match("^vmsnap%._")) then
        error(("require of '%s' is not allowed in a hook (allowed: vmsnap.json, vmsnap.http, vmsnap.time, "
          .. "vmsnap.base64, vmsnap.yaml, vmsnap.quantity)"):format(tostring(name)), 2)
      end
      return sandbox.readonly(require(name), "the module " .. name)
    end,
  })
end

M.LOAD_TIMEOUT = 5 -- seconds a hook file's top level may run for

--- Load a hook file: its spec table (handlers by point, timeout, on_error,
--- selector, params, writes). Its top level runs bounded like a handler.
--- Errors name the file.
function M.load(entry)
  local chunk, err = sandbox.loadfile(entry.file, M.environment(entry))
  if not chunk then return nil, err end
  -- the file's table is copied as plain data inside the bounded task: the
  -- host reads the copy (a hook's __index would otherwise run in the host)
  local ok, spec, code = task.bounded({ timeout = M.LOAD_TIMEOUT, memory = M.MEMORY_LIMIT, grace = 0, sandbox = true },
    function()
      local s = chunk()
      if type(s) == "function" then return true, s end
      return true, type(s) == "table" and sandbox.plain(s, true) or s
    end)
  if not ok then return nil, ("%s: %s"):format(entry.file, tostring(spec):gsub("^[^:]*%.lua:%d+: ", "")), code end
  if type(spec) == "function" and entry.point then spec = { [entry.point] = spec } end
  if type(spec) ~= "table" then
    return nil, ("%s: a hook file must return a table of handlers keyed by hook point"):format(entry.file)
  end
  for k, v in pairs(spec) do
    if type(v) == "function" and not IS_POINT[k] then
      return nil, ("%s: %q is not a hook point (one of %s)"):format(entry.file, k, table.concat(M.POINTS, ", "))
    end
  end
  if entry.point and type(spec[entry.point]) ~= "function" then
    return nil, ("%s: a hook in hooks.d/%s/ needs a %s handler"):format(entry.file, entry.point, entry.point)
  end
  if spec.writes ~= nil and type(spec.writes) ~= "table" then
    return nil, ("%s: writes must be a list of the resources the hook may write (\"configmaps\", ...)"):format(entry.file)
  end
  return spec
end

--- The hooks selected for a VM, in order: [{name, file, spec, params, allow_os}].
--- An unknown name in the VM's annotation or a broken file is an error.
function M.for_vm(vm, found)
  found = found or M.discover()
  local labels = vm and vm.metadata and vm.metadata.labels or {}
  local out = {}
  for _, e in ipairs(found.installed) do
    local spec, err = M.load(e)
    if not spec then return nil, err end
    local sel, serr = select_.parse_labels(spec.selector)
    if serr then return nil, ("%s: selector: %s"):format(e.file, serr) end
    if not sel or sel(labels) then
      out[#out + 1] = { name = e.name, file = e.file, spec = spec, params = deep.copy(spec.params or {}), allow_os = e.allow_os,
        installed = true, point = e.point }
    end
  end
  local raw = vm and vm.metadata and vm.metadata.annotations and vm.metadata.annotations[M.ANNOTATION]
  if raw and raw ~= "" then
    local list = json.decode(raw)
    if type(list) ~= "table" then
      return nil, ("the annotation %s of virtual machine %q is not a JSON list of hook names"):format(M.ANNOTATION,
        tostring(vm.metadata.name))
    end
    for _, item in ipairs(list) do
      local name = type(item) == "table" and item.name or item
      if type(name) ~= "string" then
        return nil, ("the annotation %s: each entry is a hook name or {\"name\": ..., \"params\": {...}}"):format(M.ANNOTATION)
      end
      local e = found.named[name]
      if not e then
        return nil, ("the hook %q named in %s of virtual machine %q is not on the scripts path (hooks/%s.lua)")
          :format(name, M.ANNOTATION, tostring(vm.metadata.name), name)
      end
      local spec, err = M.load(e)
      if not spec then return nil, err end
      local params = deep.copy(spec.params or {})
      for k, v in pairs(type(item) == "table" and item.params or {}) do params[k] = v end
      out[#out + 1] = { name = name, file = e.file, spec = spec, params = params, allow_os = e.allow_os }
    end
  end
  return out
end

-- ------------------------------------------------------------ the context

local function frozen(t)
  local copy = deep.copy(t)
  local function lock(x)
    if type(x) ~= "table" then return x end
    local proxy = {}
    return setmetatable(proxy, {
      __index = function(_, k) return lock(x[k]) end,
      __newindex = function() error("the objects given to a hook are read-only", 2) end,
      __pairs = function() return function(_, k) local nk, v = next(x, k) return nk, lock(v) end, proxy, nil end,
      __len = function() return #x end,
      __metatable = false,
    })
  end
  return lock(copy)
end

local WRITE_VERBS = { "create", "update", "update_status", "patch", "apply", "delete" }

--- The Kubernetes client a hook gets (ctx.k8s): reads (get, list, list_all,
--- watch, wait_for) of namespaced objects in `ns` only; writes only to the
--- resources the hook's spec lists in `writes` (plurals, kinds or short
--- names, resolved like kubectl's), in `ns`. No credentials, no
--- configuration: the real client stays out of reach.
function M.scoped_client(client, ns, writes)
  local allowed = {}
  for _, w in ipairs(writes or {}) do
    local r = client:resource(w)
    if r then allowed[r.group .. "/" .. r.plural] = true end
  end
  local function scope(kind, opts, verb)
    local r, err, code = client:resource(kind)
    if not r then return nil, err, code end
    if not r.namespaced then
      return nil, ("hooks cannot %s %s: only objects of the namespace %q"):format(verb, r.plural, ns), "Forbidden"
    end
    opts = opts and deep.copy(opts) or {}
    if opts.namespace and opts.namespace ~= ns then
      return nil, ("hooks cannot %s %s in the namespace %q: only in %q"):format(verb, r.plural, opts.namespace, ns), "Forbidden"
    end
    opts.namespace, opts.all_namespaces = ns, nil
    return r, opts
  end
  local k = {}
  for _, verb in ipairs({ "get", "list", "list_all" }) do
    k[verb] = function(_, kind, a, b)
      local opts = a
      if verb == "get" then opts = b end
      local r, o, code = scope(kind, opts, verb)
      if not r then return nil, o, code end
      if verb == "get" then return client:get(r, a, o) end
      return client[verb](client, r, o)
    end
  end
  function k.wait_for(_, kind, name, pred, opts)
    local r, o, code = scope(kind, opts, "watch")
    if not r then return nil, o, code end
    return client:wait_for(r, name, pred, o)
  end
  function k.watch(_, kind, opts)
    local r, o, code = scope(kind, opts, "watch")
    if not r then return nil, o, code end
    local w, err, wcode = client:watch(r, o)
    if not w then return nil, err, wcode end
    -- the watch object knows its client: the hook gets its methods only
    return { next = function(_, timeout) return w:next(timeout) end, events = function(_, timeout) return w:events(timeout) end,
      close = function() return w:close() end }
  end
  for _, verb in ipairs(WRITE_VERBS) do
    k[verb] = function(_, a, b, c, d)
      local kind = (verb == "patch" or verb == "delete") and a or a
      local r, err, code = client:resource(kind)
      if not r then return nil, err, code end
      if not allowed[r.group .. "/" .. r.plural] then
        return nil, ("hooks may not %s %s: list it in the hook's writes"):format(verb, r.plural), "Forbidden"
      end
      local _, opts, ocode
      if verb == "patch" then
        _, opts, ocode = scope(r, d, verb)
        if not _ then return nil, opts, ocode end
        return client:patch(r, b, c, opts)
      elseif verb == "delete" then
        _, opts, ocode = scope(r, c, verb)
        if not _ then return nil, opts, ocode end
        return client:delete(r, b, opts)
      end
      _, opts, ocode = scope(r, b, verb)
      if not _ then return nil, opts, ocode end
      local obj = deep.copy(a)
      obj.metadata = obj.metadata or {}
      obj.metadata.namespace = ns
      return client[verb](client, obj, opts)
    end
  end
  return sandbox.readonly(k, "ctx.k8s")
end

-- at most n lines of a handler's output: all of them, or the first two and
-- the last n - 2 (where the outcome is) around a count of what was left out
local function some_lines(text, n)
  local all = {}
  for line in tostring(text):gmatch("[^\n]+") do all[#all + 1] = line end
  if #all <= n then return table.concat(all, "\n") end
  local out = { all[1], all[2], ("... (%d lines left out)"):format(#all - n) }
  for i = #all - (n - 3), #all do out[#out + 1] = all[i] end
  return table.concat(out, "\n")
end

--- The guest of the context: exec (with a timeout, output captured into
--- the run's output), spawn (a background command), and the processes a
--- timed-out hook left are killed.
-- one agent connection for one call
local function with_agent(gg, fn)
  local a, err, code = gg:agent()
  if not a then return nil, err, code end
  local r = table.pack(pcall(fn, a))
  a:close()
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

local function guest_for(run, client, vm)
  local g = {}
  local agent_guest, gerr
  local function get()
    if agent_guest then return agent_guest end
    if not vm then return nil, "no virtual machine for this hook" end
    local target = vm.metadata.annotations and vm.metadata.annotations["vmsnap.io/agent"]
    if not target then return nil, ("virtual machine %q has no guest agent reachable for exec"):format(vm.metadata.name) end
    agent_guest, gerr = require("vmsnap.guest").for_vm(client, vm, { socket = target, lease = false })
    return agent_guest, gerr
  end
  --- Run argv in the guest and wait: {exitcode, stdout, stderr}, or nil, message.
  function g.exec(_, argv, opts)
    opts = opts or {}
    local gg, err = get()
    if not gg then return nil, err end
    local list = {}
    for i, v in ipairs(argv) do list[i] = v end
    argv = list
    local left = run.deadline - task.now()
    local r, e2, code, pid = gg:exec(argv, { timeout = math.max(0.1, math.min(opts.timeout or left, left)),
      input = opts.input, env = opts.env })
    run:output(("$ %s"):format(table.concat(argv, " ")))
    if r then
      if r.stdout ~= "" then run:output(r.stdout) end
      if r.stderr ~= "" then run:output(r.stderr) end
      if r.exitcode ~= 0 then run:output(("(exit %s)"):format(tostring(r.exitcode))) end
      return { exitcode = r.exitcode, stdout = r.stdout, stderr = r.stderr, signal = r.signal }
    end
    if pid then run.guest_pids[#run.guest_pids + 1] = pid end
    if code == "TIMEOUT" and (opts.timeout == nil or opts.timeout >= left) then run.timed_out = true end
    run:output("(" .. tostring(e2) .. ")")
    return nil, e2, code
  end
  --- Start argv in the guest without waiting: a handle with pid, :status(), :wait(timeout).
  function g.spawn(_, argv, opts)
    opts = opts or {}
    local gg, err = get()
    if not gg then return nil, err end
    local list = {}
    for i, v in ipairs(argv) do list[i] = v end
    local pid, e2 = with_agent(gg, function(a) return a:exec_start(list, { input = opts.input, env = opts.env }) end)
    if not pid then return nil, e2 end
    run:output(("$ %s &  (pid %d)"):format(table.concat(list, " "), pid))
    local h = { pid = pid }
    function h.status() return with_agent(gg, function(a) return a:exec_status(pid) end) end
    function h.wait(_, timeout)
      local until_t = task.now() + (timeout or 30)
      while task.now() < until_t do
        local st, e3 = with_agent(gg, function(a) return a:exec_status(pid) end)
        if not st then return nil, e3 end
        if st.exited then return st end
        task.sleep(0.05)
      end
      return nil, ("pid %d in the guest did not finish within %gs"):format(pid, timeout or 30), "TIMEOUT"
    end
    return h
  end
  --- Is the guest agent reachable?
  function g.ping()
    local gg, err = get()
    if not gg then return nil, err end
    return gg:ping()
  end
  --- "frozen" or "thawed", as the agent says.
  function g.fsfreeze_status()
    local gg, err = get()
    if not gg then return nil, err end
    return gg:status()
  end
  g.kill_left = function()
    local gg = agent_guest
    for _, pid in ipairs(run.guest_pids) do
      if gg then pcall(gg.exec, gg, { "kill", "-9", tostring(pid) }, { timeout = 2 }) end
    end
  end
  return g
end

-- ------------------------------------------------------------ one run

local Run = {}
Run.__index = Run

function Run:output(text)
  for line in tostring(text):gmatch("[^\n]+") do self.lines[#self.lines + 1] = line end
end

local function setting(spec, key, point, default)
  local v = spec[key]
  if type(v) == "table" then v = v[point] end
  if v == nil then return default end
  return v
end

--- Run one handler of one hook. Returns a record {hook, point, outcome
--- ("ok"|"failed"|"timeout"|"error"), ms, output, message}.
function M.run_one(h, point, base)
  local spec = h.spec
  local fn = spec[point]
  local timeout = tonumber(setting(spec, "timeout", point, M.DEFAULT_TIMEOUT)) or M.DEFAULT_TIMEOUT
  local run = setmetatable({ name = h.name, point = point, timeout = timeout, lines = {}, guest_pids = {},
    deadline = task.now() + timeout }, Run)
  local g = guest_for(run, base.client, base.vm)
  local ns = base.namespace or (base.vm and type(base.vm) == "table" and base.vm.metadata and base.vm.metadata.namespace)
  local ctx = {
    point = point, params = frozen(h.params or {}), vm = base.vm and frozen(base.vm) or nil,
    snapshot = base.snapshot and frozen(base.snapshot) or nil, restore = base.restore and frozen(base.restore) or nil,
    outcome = base.outcome, guest = sandbox.readonly(g, "ctx.guest"), deadline = vtime.now() + timeout,
    k8s = base.client and ns and M.scoped_client(base.client, ns, spec.writes) or nil,
    log = function(...)
      local parts = {}
      for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
      local msg = table.concat(parts, " ")
      run:output(msg)
      hlog:info(msg, { hook = h.name, point = point })
    end,
    --- Sleep for `seconds` (at most until the hook's deadline).
    sleep = function(seconds)
      if type(seconds) ~= "number" or seconds < 0 then error("ctx.sleep: seconds must be a non-negative number", 2) end
      task.sleep(seconds)
    end,
  }
  ctx = sandbox.readonly(ctx, "ctx")
  local t0 = task.now()
  -- the handler's task: its deadline, memory and pattern cost are bounds no
  -- pcall of its own can hold back (vmsnap.task.bounded)
  -- What the handler returns or raises reaches the host as plain data
  -- (copied inside the task): a value of the hook's with metamethods would
  -- run hook code outside its bounds when the host looked at it.
  local r = table.pack(task.bounded({ timeout = timeout, memory = M.MEMORY_LIMIT, grace = 0, sandbox = true },
    function()
      local res = table.pack(xpcall(fn, function(e)
        if type(e) == "string" or errors.is_error(e) then return e end
        return tostring(e)
      end, ctx))
      if not res[1] then error(res[2], 0) end
      if res[2] == nil and res.n >= 3 and type(res[3]) ~= "string" and res[3] ~= nil then res[3] = tostring(res[3]) end
      for i = 2, res.n do res[i] = sandbox.plain(res[i]) end
      return true, table.unpack(res, 2, res.n)
    end))
  local rec = { hook = h.name, point = point, ms = math.floor((task.now() - t0) * 1000 + 0.5) }
  local msg
  if r[1] == true then
    if r[2] == nil and r[3] ~= nil then
      rec.outcome, msg = "failed", tostring(r[3])
    else
      rec.outcome = "ok"
      rec.results = table.pack(table.unpack(r, 2, r.n))
    end
  elseif r[3] == "TIMEOUT" then
    rec.outcome, msg = "timeout", ("hook %q exceeded its timeout of %gs at %s"):format(h.name, timeout, point)
  else
    rec.outcome = "error"
    msg = tostring(r[2]):gsub("^[^:]*%.lua:%d+: ", "")
    if r[3] == "NOMEM" then
      msg = ("hook %q exceeded its memory limit of %d MiB at %s"):format(h.name, M.MEMORY_LIMIT // 1048576, point)
    end
  end
  -- a handler that gave up because its deadline came (a guest command cut
  -- short at the hook's timeout) timed out too
  if (rec.outcome == "failed" or rec.outcome == "error") and (run.timed_out or task.now() >= run.deadline - 0.05) then
    rec.outcome = "timeout"
  end
  if rec.outcome == "timeout" then g.kill_left() end
  if msg then
    rec.message = msg
    run:output(msg)
  end
  rec.output = some_lines(table.concat(run.lines, "\n"), M.OUTPUT_LINES)
  rec.lines = run.lines -- all of it (not kept in the record)
  rec.on_error = setting(spec, "on_error", point, point:match("^pre_") and "fail" or "continue")
  return rec
end

--- Run the `point` handler of one hook file, as the controllers do (the
--- same sandbox, context, timeout and memory bound): what vmsnap_call_hook
--- runs. args: vm, snapshot, restore (objects, or anything), params,
--- outcome, namespace; opts.allow_os, opts.require_any. Returns the
--- handler's results, or nil, message (it failed); raises for an error, a
--- timeout (code TIMEOUT) or the memory bound (NOMEM).
function M.call(file, point, args, opts)
  opts = opts or {}
  if not IS_POINT[point] then
    error(("%q is not a hook point (one of %s)"):format(tostring(point), table.concat(M.POINTS, ", ")), 0)
  end
  local entry = { name = file:match("([^/]+)%.lua$") or file, file = file, allow_os = opts.allow_os,
    require_any = opts.require_any }
  local spec, err = M.load(entry)
  if not spec then error(err, 0) end
  if type(spec[point]) ~= "function" then return table.pack() end
  local params = deep.copy(spec.params or {})
  for k, v in pairs(type(args.params) == "table" and args.params or {}) do params[k] = v end
  local rec = M.run_one({ name = entry.name, spec = spec, params = params }, point,
    { vm = args.vm, snapshot = args.snapshot, restore = args.restore, outcome = args.outcome,
      namespace = args.namespace, client = opts.client })
  if rec.outcome == "ok" then return rec.results end
  if rec.outcome == "failed" then return table.pack(nil, rec.message) end
  errors.raise(rec.outcome == "timeout" and "TIMEOUT" or (rec.message:find("memory limit", 1, true) and "NOMEM" or "ERROR"),
    ("hook %s at %s: %s"):format(entry.name, point, rec.message), 0)
end

-- ------------------------------------------------------------ the runner

local Runner = {}
Runner.__index = Runner

--- A runner for one snapshot or restore (`o.object`) of a VM (`o.vm`):
--- o.client, o.ctx (a reconcile context: Events), o.hooks (selected; default
--- for_vm(o.vm)). Returns the runner, or nil, message, "HookFailed" when
--- the hooks cannot be selected (a bad annotation, a broken file).
function M.runner(o)
  local raw = o.object.metadata.annotations and o.object.metadata.annotations[M.ANNOTATION]
  local now_selected
  if not o.hooks and not raw then
    local err
    now_selected, err = M.for_vm(o.vm)
    if not now_selected then return nil, err, "HookFailed" end
  end
  local record = raw and json.decode(raw)
  if type(record) ~= "table" then record = { runs = json.array(), pending = {} } end
  record.runs = record.runs or json.array()
  record.pending = record.pending or {}
  -- the hooks: those selected when this object first ran hooks (kept in the
  -- record by name, and found again on the path — a changed VM annotation
  -- does not change them midway), else the VM's selection now
  local hooks = o.hooks
  if not hooks and type(record.selected) == "table" then
    local found = M.discover()
    hooks = {}
    for _, sel in ipairs(record.selected) do
      local e
      if sel.installed then
        for _, x in ipairs(found.installed) do
          if x.name == sel.name and x.point == sel.point then e = x end
        end
      else
        e = found.named[sel.name]
      end
      if e then
        local spec, err = M.load(e)
        if not spec then return nil, err, "HookFailed" end
        hooks[#hooks + 1] = { name = e.name, file = e.file, spec = spec, params = sel.params or {}, allow_os = e.allow_os,
          installed = sel.installed, point = e.point }
      end
    end
  end
  if not hooks then
    if not now_selected then
      local err
      now_selected, err = M.for_vm(o.vm)
      if not now_selected then return nil, err, "HookFailed" end
    end
    hooks = now_selected
  end
  if type(record.selected) ~= "table" and #hooks > 0 then
    record.selected = json.array()
    for _, h in ipairs(hooks) do
      record.selected[#record.selected + 1] = { name = h.name, installed = h.installed or nil, point = h.point,
        params = h.params }
    end
  end
  return setmetatable({ client = o.client, ctx = o.ctx, vm = o.vm, object = o.object, hooks = hooks,
    record = record, kind = o.kind or "snapshot" }, Runner)
end

function Runner:any(point)
  for _, h in ipairs(self.hooks) do if h.spec[point] then return true end end
  local p = self.record.pending[point]
  return p ~= nil and #p > 0
end

--- Write the record to the object's annotation.
function Runner:flush()
  local o = self.object
  local resource = o.kind == "VirtualMachineRestore" and "virtualmachinerestores.virtualization.deckhouse.io"
    or "virtualmachinesnapshots.virtualization.deckhouse.io"
  while #self.record.runs > M.MAX_RUNS do table.remove(self.record.runs, 1) end
  local values = { [M.ANNOTATION] = json.encode(self.record) }
  if self.ctx and self.ctx.obj == o then return self.ctx:annotate(values) end
  local res, err, code = self.client:patch(resource, o.metadata.name, { metadata = { annotations = values } },
    { namespace = o.metadata.namespace })
  if not res then return nil, err, code end
  o.metadata.annotations = res.metadata.annotations
  o.metadata.resourceVersion = res.metadata.resourceVersion
  return true
end

function Runner:base(outcome)
  local b = { client = self.client, vm = self.vm, outcome = outcome }
  b[self.kind] = self.object
  return b
end

function Runner:note(rec)
  metrics.process():histogram("vmsnap_hook_duration_seconds", "Seconds a hook handler ran, by point and outcome.",
    { "point", "outcome" }, { 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300 }):observe({ rec.point, rec.outcome }, rec.ms / 1000)
  local o = self.ctx and self.ctx.obj
  local line = { hook = rec.hook, point = rec.point, outcome = rec.outcome, ms = rec.ms,
    object = o and ((o.metadata.namespace or "") .. "/" .. o.metadata.name) or nil, uid = o and o.metadata.uid or nil }
  if rec.outcome == "ok" then hlog:info("hook ran", line) else
    line.message = rec.message
    hlog:warn("hook ran", line)
  end
  local kept = {}
  for k, v in pairs(rec) do if k ~= "lines" then kept[k] = v end end
  self.record.runs[#self.record.runs + 1] = kept
  if self.ctx then
    local reason = rec.outcome == "ok" and "HookSucceeded" or rec.outcome == "timeout" and "HookTimedOut" or "HookFailed"
    self.ctx:event(rec.outcome == "ok" and "Normal" or "Warning", reason,
      ("%s %s: %s in %d ms%s"):format(rec.hook, rec.point, rec.outcome, rec.ms,
        rec.output ~= "" and (": " .. rec.output:gsub("\n", " | ")) or ""))
  end
end

--- Run the handlers of `point`, in order. A failing handler whose on_error
--- is "fail" stops the point: returns nil, message (naming the hook), "HookFailed".
--- For a pre point, the partner of each hook is recorded as pending before
--- it starts. Returns true when all ran (or there were none).
function Runner:run(point, outcome)
  local list = {}
  for _, h in ipairs(self.hooks) do if h.spec[point] then list[#list + 1] = h end end
  if #list == 0 then return true end
  self.record["ran_" .. point] = true
  local partner = M.PARTNER[point]
  if partner then
    local p = self.record.pending[partner] or json.array()
    for _, h in ipairs(list) do if h.spec[partner] then p[#p + 1] = h.name end end
    self.record.pending[partner] = p
    local ok, err, code = self:flush()
    if not ok then return nil, err, code or "ERROR" end
  end
  local failure
  for i, h in ipairs(list) do
    local rec = M.run_one(h, point, self:base(outcome))
    self:note(rec)
    if rec.outcome ~= "ok" and rec.on_error == "fail" then
      failure = ("the hook %q failed at %s: %s"):format(h.name, point, tostring(rec.message))
      -- the ones after it never started: their partners are not owed
      if partner then
        local started = {}
        for j = 1, i do started[list[j].name] = true end
        local p = json.array()
        for _, n in ipairs(self.record.pending[partner]) do
          if started[n] or not self:selected(n) then p[#p + 1] = n end
        end
        self.record.pending[partner] = p
      end
      break
    end
  end
  self:flush()
  if failure then return nil, failure, "HookFailed" end
  return true
end

function Runner:selected(name)
  for _, h in ipairs(self.hooks) do if h.name == name then return h end end
end

--- Run the pending `partner` handlers (post_thaw, post_snapshot,
--- post_restore) in reverse order, whatever fails; then they are no longer
--- pending. Returns true, or nil, message for the first "fail" failure.
function Runner:unwind(partner, outcome)
  local p = self.record.pending[partner]
  if not p or #p == 0 then return true end
  local failure
  for i = #p, 1, -1 do
    local h = self:selected(p[i])
    if h and h.spec[partner] then
      local rec = M.run_one(h, partner, self:base(outcome))
      self:note(rec)
      if rec.outcome ~= "ok" and rec.on_error == "fail" and not failure then
        failure = ("the hook %q failed at %s: %s"):format(h.name, partner, tostring(rec.message))
      end
    end
  end
  self.record.pending[partner] = nil
  self:flush()
  if failure then return nil, failure, "HookFailed" end
  return true
end

--- Has this point run for the object already (kept in the record)?
function Runner:done(point)
  return self.record["ran_" .. point] == true
end

--- Remember that a point was handled (so a later pass does not repeat it).
function Runner:mark_done(point)
  self.record["ran_" .. point] = true
end

return M
