--- vmsnap.cli: the commands of the `vmsnap` program that are written in Lua.
---
--- `vmsnap COMMAND args...` runs `require("vmsnap.cli." .. COMMAND).main(args)`
--- when such a module exists. A command returns nothing (success), or
--- `nil, message` (failure, exit 3), or raises a USAGE error (exit 2), or
--- calls `cli.fail(message)` (the message as is, exit 1).
local errors = require("vmsnap.errors")

local M = {}

--- The commands, grouped as `vmsnap --help` shows them, with a one-line
--- summary each: the one table the help, the shell completions and the man
--- pages are made from (a command's own options come from its module's help).
M.GROUPS = {
  { title = "Basic commands", commands = {
    { name = "get", summary = "show Kubernetes objects (kubectl get, for vmsnap's kinds and more)" },
    { name = "describe", summary = "describe KIND NAME: phase, conditions, freeze, hooks, steps, children, Events" },
    { name = "apply", summary = "server-side apply of manifests (kubectl apply --server-side)" },
    { name = "delete", summary = "delete KIND NAME...: delete objects and wait until they are gone" },
  } },
  { title = "Snapshot and restore", commands = {
    { name = "snapshot", subcommands = { "disk", "vm" },
      summary = "snapshot disk|vm NAME: take a VirtualDiskSnapshot or VirtualMachineSnapshot (--wait)" },
    { name = "restore", subcommands = { "disk", "vm" },
      summary = "restore disk NAME --from SNAPSHOT | restore vm --from SNAPSHOT [--rename] [--dry-run]" },
    { name = "schedule", subcommands = { "create", "list", "describe", "run-now", "suspend", "resume", "prune", "delete" },
      summary = "schedule create|list|describe|run-now|suspend|resume|prune|delete: snapshots on a cron schedule, pruned" },
  } },
  { title = "Platform", commands = {
    { name = "up", summary = "the local platform: API, volumes, disks and the snapshot controllers" },
    { name = "serve", summary = "serve the embedded Kubernetes-compatible API" },
    { name = "controller", summary = "the snapshot controllers against any API server" },
    { name = "vm", subcommands = { "start", "stop", "migrate", "pause", "resume" },
      summary = "vm start|stop|migrate|pause|resume NAME: a VM of the local platform" },
  } },
  { title = "Hooks and workflows", commands = {
    { name = "hook", subcommands = { "test" },
      summary = "hook test FILE --vm NAME [--point P]: run a hook against a VM and show what it did" },
    { name = "workflow", subcommands = { "list", "show" },
      summary = "workflow list | show NAME: the workflows and their order of operations" },
    { name = "guest", subcommands = { "ping", "status", "freeze", "thaw", "exec", "thaw-orphans" },
      summary = "talk to a guest agent: ping, status, freeze, thaw, exec, thaw-orphans" },
  } },
  { title = "Advanced", commands = {
    { name = "run", summary = "run a Lua script (same as 'vmsnap SCRIPT')" },
    { name = "completion", subcommands = { "bash", "zsh", "fish" },
      summary = "completion bash|zsh|fish: the shell completion script" },
    { name = "man", summary = "man [COMMAND] | man --dir DIR: the manual pages" },
    { name = "version", summary = "print the versions of vmsnap and its libraries" },
    { name = "help", summary = "help for a command" },
  } },
}
M.commands = {}
for _, g in ipairs(M.GROUPS) do
  for _, c in ipairs(g.commands) do M.commands[#M.commands + 1] = c end
end

-- the edit distance of a and b (insertions, deletions, substitutions, swaps)
local function distance(a, b)
  local d = {}
  for i = 0, #a do d[i] = { [0] = i } end
  for j = 0, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      d[i][j] = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
        d[i][j] = math.min(d[i][j], d[i - 2][j - 2] + 1)
      end
    end
  end
  return d[#a][#b]
end

--- The candidate closest to word when it is a plausible typo of it, or nil.
---@param word string
---@param candidates string[]
function M.suggest(word, candidates)
  local best, bd
  for _, c in ipairs(candidates) do
    local d = distance(word, c)
    if (not bd or d < bd) and d <= math.max(1, math.min(2, #c // 3)) then best, bd = c, d end
  end
  return best
end

--- " (did you mean 'x'?)" for a mistyped word, or "".
function M.did_you_mean(word, candidates)
  local s = M.suggest(word, candidates)
  return s and (" (did you mean '%s'?)"):format(s) or ""
end

local function usage(msg)
  errors.raise("USAGE", msg .. " (see 'vmsnap --help')", 0)
end
M.usage = usage

--- A duration argument in seconds: "30s", "2m", "1h30m" or a number of
--- seconds; anything else (or not above zero) is a usage error naming it.
function M.duration(what, value)
  local d = value ~= nil and require("vmsnap.time").duration(value) or nil
  if not d or d <= 0 then
    usage(("%s must be a duration (30s, 2m, 1h) or a number of seconds, not '%s'"):format(what, tostring(value)))
  end
  return d
end

--- End a command with an error message printed as is (no traceback) and
--- exit status 1, the way kubectl reports a failed request.
function M.fail(msg)
  errors.raise("COMMAND", msg, 0)
end

-- a command's module, or nil when it has none (run, help, version: C's)
local function module_of(name)
  local ok, mod = pcall(require, "vmsnap.cli." .. name:gsub("%-", "_"))
  if ok and type(mod) == "table" then return mod end
end
M.module_of = module_of

--- The flags a command's help text lists (its option lines: "  -n, --namespace NS  ..."), sorted.
function M.flags_of(name)
  local mod = module_of(name)
  local seen, out = {}, {}
  for line in ((mod and mod.help) or ""):gmatch("[^\n]+") do
    local left = line:match("^%s%s?(%-.-)%s%s") or line:match("^%s%s?(%-%S+)$")
    for f in (left or ""):gmatch("%-%-?[%w][%w-]*") do
      if not seen[f] then seen[f] = true out[#out + 1] = f end
    end
  end
  if not seen["--help"] then out[#out + 1] = "--help" end
  table.sort(out)
  return out
end

--- The commands' list, grouped (what `vmsnap --help` and `vmsnap help` end with).
function M.commands_text()
  local out = {}
  for _, g in ipairs(M.GROUPS) do
    out[#out + 1] = g.title .. ":"
    for _, c in ipairs(g.commands) do out[#out + 1] = ("  %-11s %s"):format(c.name, c.summary) end
    out[#out + 1] = ""
  end
  out[#out + 1] = "Run 'vmsnap COMMAND --help' (or 'vmsnap help COMMAND') for a command's options."
  return table.concat(out, "\n") .. "\n"
end

function M.print_commands() io.stdout:write(M.commands_text()) end

local function names()
  local list = {}
  for i, c in ipairs(M.commands) do list[i] = c.name end
  return list
end
M.names = names

local function help(topic)
  if topic then
    -- a command module's own help text, else the summary of a built-in
    local mod = module_of(topic)
    if mod and mod.help then
      io.stdout:write(mod.help)
      return
    end
    for _, c in ipairs(M.commands) do
      if c.name == topic then
        io.stdout:write(c.name .. ": " .. c.summary .. "\n")
        return
      end
    end
    usage("no help for '" .. topic .. "': not a command" .. M.did_you_mean(topic, names()))
  end
  io.stdout:write("usage: vmsnap COMMAND [args...] | vmsnap [options] SCRIPT [args...]\n\n")
  M.print_commands()
  io.stdout:write("Run 'vmsnap --help' for the options.\n")
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
      usage("'" .. cmd .. "' is not a command, and no file of that name exists" .. M.did_you_mean(cmd, names()))
    end
    error(mod, 0)
  end
  return mod.main(rest)
end

return M
