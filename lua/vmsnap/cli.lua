--- vmsnap.cli: the commands of the `vmsnap` program that are written in Lua.
---
--- `vmsnap COMMAND args...` runs `require("vmsnap.cli." .. COMMAND).main(args)`
--- when such a module exists. A command returns nothing (success), or
--- `nil, message` (failure, exit 3), or raises a USAGE error (exit 2), or
--- calls `cli.fail(message)` (the message as is, exit 1).
local errors = require("vmsnap.errors")

local M = {}

--- The commands, with a one-line summary each; a command module adds itself here.
M.commands = {
  { name = "run", summary = "run a Lua script (same as 'vmsnap SCRIPT')" },
  { name = "help", summary = "help for a command" },
  { name = "version", summary = "print the versions of vmsnap and its libraries" },
  { name = "serve", summary = "serve the embedded Kubernetes-compatible API" },
  { name = "up", summary = "the local platform: API, volumes, disks and the snapshot controllers" },
  { name = "controller", summary = "the snapshot controllers against any API server" },
  { name = "snapshot", summary = "snapshot disk|vm NAME: take a VirtualDiskSnapshot or VirtualMachineSnapshot (--wait)" },
  { name = "restore", summary = "restore disk NAME --from SNAPSHOT | restore vm --from SNAPSHOT [--rename] [--dry-run]" },
  { name = "workflow", summary = "workflow list | show NAME: the workflows and their order of operations" },
  { name = "hook", summary = "hook test FILE --vm NAME [--point P]: run a hook against a VM and show what it did" },
  { name = "vm", summary = "vm start|stop|migrate|pause|resume NAME: a VM of the local platform" },
  { name = "get", summary = "show Kubernetes objects (kubectl get, for vmsnap's kinds and more)" },
  { name = "describe", summary = "describe KIND NAME: phase, conditions, freeze, hooks, steps, children, Events" },
  { name = "apply", summary = "server-side apply of manifests (kubectl apply --server-side)" },
  { name = "guest", summary = "talk to a guest agent: ping, status, freeze, thaw, exec, thaw-orphans" },
}

local function usage(msg)
  errors.raise("USAGE", msg .. " (see 'vmsnap --help')", 0)
end
M.usage = usage

--- End a command with an error message printed as is (no traceback) and
--- exit status 1, the way kubectl reports a failed request.
function M.fail(msg)
  errors.raise("COMMAND", msg, 0)
end

local function help(topic)
  if topic then
    -- a command module's own help text, else the summary of a built-in
    local ok, mod = pcall(require, "vmsnap.cli." .. topic:gsub("%-", "_"))
    if ok and type(mod) == "table" and mod.help then
      io.stdout:write(mod.help)
      return
    end
    for _, c in ipairs(M.commands) do
      if c.name == topic then
        io.stdout:write(c.name .. ": " .. c.summary .. "\n")
        return
      end
    end
    usage("no help for '" .. topic .. "': not a command")
  end
  io.stdout:write("usage: vmsnap COMMAND [args...] | vmsnap [options] SCRIPT [args...]\n\ncommands:\n")
  for _, c in ipairs(M.commands) do
    io.stdout:write(("  %-10s %s\n"):format(c.name, c.summary))
  end
  io.stdout:write("\nRun 'vmsnap --help' for the options.\n")
end

--- Entry point: arg[0] is the command, arg[1..] its arguments.
function M.main()
  local args = _G.arg or {}
  local cmd = args[0]
  local rest = {}
  for i = 1, #args do rest[i] = args[i] end
  if cmd == "help" then
    return help(rest[1])
  end
  if type(cmd) ~= "string" or not cmd:match("^[%w][%w%-]*$") then
    usage("bad command name")
  end
  local modname = "vmsnap.cli." .. cmd:gsub("%-", "_")
  local ok, mod = pcall(require, modname)
  if not ok then
    if tostring(mod):find("module '" .. modname .. "' not found", 1, true) then
      usage("'" .. cmd .. "' is not a command, and no file of that name exists")
    end
    error(mod, 0)
  end
  return mod.main(rest)
end

return M
