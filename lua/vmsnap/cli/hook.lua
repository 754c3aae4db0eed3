--- `vmsnap hook test FILE --vm NAME [--point P]`: run a hook against a VM and
--- show what it did; `vmsnap hook list [--vm NAME]`: the hooks on the path.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local hooks = require("vmsnap.hooks")
local json = require("vmsnap.json")

local M = {}

M.help = [[
usage: vmsnap hook test FILE --vm NAME [options]
       vmsnap hook list [--vm NAME]

test: load the hook FILE in the sandbox and run its handlers against the VM
NAME — its guest agent, the cluster's API — showing each handler's outcome,
duration and output (guest commands, their output and exit codes, ctx.log).
Nothing is frozen or snapshotted: the handlers run one after another in the
order of a snapshot (pre_snapshot, pre_freeze, post_freeze, post_thaw,
post_snapshot), or only --point. Exit 1 when a handler fails.

list: the hooks on the scripts path (hooks.d/ installed, hooks/ by name);
with --vm, the ones selected for that VM, in the order they would run.

options:
  --vm NAME               the VirtualMachine (test: required)
  --point P               run only this hook point
  --param KEY=VALUE       a parameter (repeatable; VALUE is JSON when it parses, else a string)
  --outcome O             ctx.outcome for post_* handlers (default Ready)
  --allow-os              allow os.execute and io.popen (as $VMSNAP_HOOKS_ALLOW_OS does for a directory)
]] .. kube.COMMON_HELP

local SPEC = { ["--vm"] = { "vm", true }, ["--point"] = { "point", true }, ["--param"] = { "param", true, true },
  ["--outcome"] = { "outcome", true }, ["--allow-os"] = { "allow_os", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local ORDER = { "pre_snapshot", "pre_freeze", "post_freeze", "post_thaw", "post_snapshot", "snapshot_failed",
  "pre_restore", "post_restore", "restore_failed" }

local function vm_of(c, o, ns)
  local vm, err, reason, st = c:get("vm", o.vm, { namespace = ns })
  if not vm then cli.fail(kube.error_text(err, reason, st)) end
  return vm
end

local function test(o, file)
  if not o.vm then cli.usage("hook test: --vm NAME is required") end
  local entry = { name = file:match("([^/]+)%.lua$") or file, file = file, allow_os = o.allow_os }
  local spec, err = hooks.load(entry)
  if not spec then cli.fail("error: " .. tostring(err)) end
  local points = {}
  if o.point then
    local known = false
    for _, p in ipairs(ORDER) do if p == o.point then known = true end end
    if not known then cli.usage(("hook test: --point %q is not a hook point (%s)"):format(o.point, table.concat(ORDER, ", "))) end
    if not spec[o.point] then cli.fail(("error: %s has no %s handler"):format(file, o.point)) end
    points = { o.point }
  else
    for _, p in ipairs(ORDER) do
      if spec[p] and not p:match("failed$") and not p:match("restore") then points[#points + 1] = p end
    end
    if #points == 0 then cli.fail("error: " .. file .. " has no snapshot handler; name one with --point") end
  end
  local params = {}
  for k, v in pairs(spec.params or {}) do params[k] = v end
  for _, kv in ipairs(o.param or {}) do
    local k, v = kv:match("^([^=]+)=(.*)$")
    if not k then cli.usage(("hook test: --param %q: expected KEY=VALUE"):format(kv)) end
    local decoded = json.decode(v)
    params[k] = decoded ~= nil and decoded or v
  end
  local c = kube.client(o)
  local ns = o.namespace or c.namespace
  local vm = vm_of(c, o, ns)
  local h = { name = entry.name, file = file, spec = spec, params = params }
  local snapshot = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineSnapshot",
    metadata = { name = "hook-test", namespace = ns }, spec = { virtualMachineName = vm.metadata.name }, status = {} }
  io.stdout:write(("hook %s against %s/%s (nothing is frozen or snapshotted)\n"):format(file, ns, vm.metadata.name))
  local failed = 0
  for _, p in ipairs(points) do
    local rec = hooks.run_one(h, p, { client = c, vm = vm, snapshot = snapshot,
      outcome = p:match("^post_") and (o.outcome or "Ready") or nil })
    io.stdout:write(("%-14s %-8s %5d ms%s\n"):format(p, rec.outcome, rec.ms,
      rec.on_error == "fail" and "" or "  (on_error: continue)"))
    for _, line in ipairs(rec.lines or {}) do io.stdout:write("    " .. line .. "\n") end
    if rec.outcome ~= "ok" then failed = failed + 1 end
  end
  io.stdout:flush()
  if failed > 0 then cli.fail(("error: %d handler(s) failed"):format(failed)) end
end

local function list(o)
  local found = hooks.discover()
  if o.vm then
    local c = kube.client(o)
    local vm = vm_of(c, o, o.namespace or c.namespace)
    local sel, err = hooks.for_vm(vm, found)
    if not sel then cli.fail("error: " .. tostring(err)) end
    for _, h in ipairs(sel) do
      local pts = {}
      for _, p in ipairs(ORDER) do if h.spec[p] then pts[#pts + 1] = p end end
      io.stdout:write(("%-20s %-40s %s\n"):format(h.name, table.concat(pts, ","), h.file))
    end
    return
  end
  for _, e in ipairs(found.installed) do
    io.stdout:write(("installed  %-20s %s%s\n"):format(e.name, e.file, e.allow_os and "  (os allowed)" or ""))
  end
  local names = {}
  for n in pairs(found.named) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local e = found.named[n]
    io.stdout:write(("by name    %-20s %s%s\n"):format(n, e.file, e.allow_os and "  (os allowed)" or ""))
  end
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if pos[1] == "test" then
    if not pos[2] then cli.usage("hook test: FILE is required") end
    if pos[3] then cli.usage(("hook test: unexpected argument '%s'"):format(pos[3])) end
    return test(o, pos[2])
  elseif pos[1] == "list" then
    return list(o)
  end
  cli.usage("hook: usage: vmsnap hook test FILE --vm NAME | vmsnap hook list")
end

return M
