--- `vmsnap guest`: talk to a guest agent, for operators.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local guest = require("vmsnap.guest")
local json = require("vmsnap.json")
local task = require("vmsnap.task")

local M = {}

M.help = [[
usage: vmsnap guest COMMAND TARGET [options]
       vmsnap guest thaw-orphans [-n NS]

TARGET is an agent socket (unix:/path, vsock:CID:PORT, or a device path) or a
VM: -n NS NAME (its agent socket annotation, else the API's freeze subresources).

commands:
  ping              is the agent there?
  info              the agent's version and commands (socket)
  fsinfo            the guest's filesystems (socket)
  status            frozen or thawed
  freeze            freeze, hold until --budget runs out or Ctrl-C, then thaw
  thaw              thaw now
  exec -- ARGV...   run a program in the guest; prints its output, exits with 1
                    when its exit status is not 0 (socket)
  thaw-orphans      thaw every VM whose freeze lease is stale (its holder is gone
                    or its deadline passed)

options:
  --budget SECONDS        how long a freeze may last (default 10)
  --mountpoint PATH       freeze this filesystem only (repeatable)
  --timeout SECONDS       per agent command (default 10)
  --json                  print results as JSON
]] .. kube.COMMON_HELP

local SPEC = {
  ["--budget"] = { "budget", true }, ["--mountpoint"] = { "mountpoints", true, true },
  ["--timeout"] = { "timeout", true }, ["--json"] = { "json", false },
}
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local function target_guest(o, pos)
  local t = pos[1]
  if t and (t:match("^unix:") or t:match("^vsock:") or t:sub(1, 1) == "/") then
    return assert(guest.for_vm(nil, nil, { socket = t, timeout = tonumber(o.timeout) }))
  end
  if not t then cli.usage("guest: which TARGET? (unix:/path, or -n NS NAME)") end
  local c = kube.client(o)
  local vm, err, reason, st = c:get("virtualmachines.virtualization.deckhouse.io", t, { namespace = o.namespace })
  if not vm then cli.fail(kube.error_text(err, reason, st)) end
  local g, gerr = guest.for_vm(c, vm, { timeout = tonumber(o.timeout) })
  if not g then cli.fail("error: " .. gerr) end
  return g
end

local function show(o, v)
  if o.json or type(v) == "table" then
    io.stdout:write(json.encode(v, { indent = 2 }), "\n")
  else
    io.stdout:write(tostring(v), "\n")
  end
end

local function check(v, err, code)
  if v == nil then cli.fail(("error: %s (%s)"):format(tostring(err), tostring(code))) end
  return v
end

function M.main(args)
  local dashdash
  for i, a in ipairs(args) do
    if a == "--" then dashdash = i break end
  end
  local argv = {}
  if dashdash then
    argv = { table.unpack(args, dashdash + 1) }
    args = { table.unpack(args, 1, dashdash - 1) }
  end
  local o, pos = kube.parse(args, SPEC)
  if o.help or #pos == 0 then io.stdout:write(M.help) return end
  local cmd = table.remove(pos, 1)
  if cmd == "thaw-orphans" then
    local c = kube.client(o)
    local done = check(guest.thaw_orphans(c, { namespace = o.namespace }))
    for _, d in ipairs(done) do
      io.stdout:write(("%s/%s: %s (lease holder %s)\n"):format(d.namespace, d.name,
        d.ok and "thawed" or ("thaw failed: " .. tostring(d.error)), tostring(d.holder)))
    end
    if #done == 0 then io.stdout:write("no stale freeze leases\n") end
    return
  end
  local g = target_guest(o, pos)
  if cmd == "ping" then
    check(g:ping())
    io.stdout:write("ok\n")
  elseif cmd == "info" or cmd == "fsinfo" then
    if g.transport ~= "socket" then cli.fail("error: " .. cmd .. " needs the agent socket") end
    local a = check(g:agent())
    local v = check(cmd == "info" and a:info() or a:get_fsinfo())
    a:close()
    show(o, v)
  elseif cmd == "status" then
    show(o, check(g:status()))
  elseif cmd == "thaw" then
    check(g:thaw())
    io.stdout:write("thawed\n")
  elseif cmd == "freeze" then
    local budget = tonumber(o.budget or 10)
    if not budget or budget <= 0 then cli.usage("guest: --budget must be a positive number of seconds") end
    local f <close> = check(g:freeze({ budget = budget, mountpoints = o.mountpoints }))
    io.stdout:write(("frozen%s; thawing in %gs or on Ctrl-C\n"):format(f.count and (" (" .. f.count .. " filesystems)") or "",
      budget))
    io.stdout:flush()
    while not f.thawed do task.sleep(0.05) end
    check(f:thaw())
    io.stdout:write(("thawed after %.2fs%s\n"):format(f.duration, f.expired and " (the budget ran out)" or ""))
  elseif cmd == "exec" then
    if #argv == 0 then cli.usage("guest: exec needs a program after --") end
    local r = check(g:exec(argv, { timeout = tonumber(o.timeout or 30) }))
    io.stdout:write(r.stdout)
    io.stderr:write(r.stderr)
    if r.exitcode ~= 0 then cli.fail(("error: %s: exit status %s"):format(argv[1], tostring(r.exitcode or r.signal))) end
  else
    cli.usage(("guest: unknown command '%s'"):format(cmd))
  end
end

return M
