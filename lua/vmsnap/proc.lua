--- vmsnap.proc: child processes without blocking the loop.
---
---   local proc = require("vmsnap.proc")
---   local r, err, code = proc.run({ "mkfs.ext4", "-q", img }, { timeout = 30 })
---   -- r.status (exit code), r.signal, r.stdout, r.stderr
---
--- `run` fails (`nil, message, code`) when the program cannot be started
--- (code ENOENT, EACCES, ...) or runs past `timeout` (code TIMEOUT: it is
--- sent SIGTERM, then SIGKILL after `kill_grace` seconds, and the partial
--- result is the fourth value). A non-zero exit status is a result, not a
--- failure; `check = true` turns it into one (code "EXIT").
local core = require("vmsnap.core.proc")

local type, error = type, error

local M = {}

---@class vmsnap.proc.Opts
---@field env? table<string,string>  added to the environment (a `false` value removes nothing; use clear_env)
---@field clear_env? boolean         start from an empty environment
---@field cwd? string
---@field stdin? string              data written to the child's standard input
---@field stdout? "capture"|"inherit"|"null"
---@field stderr? "capture"|"inherit"|"null"
---@field max_output? integer        bytes kept per stream (default 64 MiB)
---@field timeout? number            seconds (run only)
---@field kill_grace? number         seconds between SIGTERM and SIGKILL on timeout (default 2)
---@field check? boolean             a non-zero exit is a failure with code "EXIT"

local function check_argv(argv, fname)
  if type(argv) ~= "table" or type(argv[1]) ~= "string" then
    error("bad argument #1 to '" .. fname .. "' (argv table with a program expected)", 3)
  end
end

--- Start a process; returns a handle with :wait(timeout), :kill(sig), :pid(), :running(), :close().
---@param argv string[]
---@param opts? vmsnap.proc.Opts
function M.spawn(argv, opts)
  check_argv(argv, "spawn")
  return core.spawn(argv, opts)
end

--- Run a process to completion; see the module comment.
---@param argv string[]
---@param opts? vmsnap.proc.Opts
function M.run(argv, opts)
  check_argv(argv, "run")
  opts = opts or {}
  local p, err, code = core.spawn(argv, opts)
  if not p then return nil, err, code end
  local guard <close> = p -- kills the process if we are cancelled
  local r, werr, wcode, partial = p:wait(opts.timeout)
  if not r then
    if wcode == "TIMEOUT" then
      p:kill("TERM")
      r = p:wait(opts.kill_grace or 2)
      if not r then
        p:kill("KILL")
        r = p:wait(5)
      end
      return nil, ("%s: timed out after %gs"):format(argv[1], opts.timeout), "TIMEOUT", r or partial
    end
    return nil, werr, wcode
  end
  if opts.check and (r.status ~= 0 or r.signal) then
    local why = r.signal and ("killed by signal " .. r.signal) or ("exit status " .. r.status)
    local tail = r.stderr and r.stderr:sub(-400):gsub("%s+$", "") or ""
    return nil, ("%s: %s%s"):format(argv[1], why, tail ~= "" and (": " .. tail) or ""), "EXIT", r
  end
  return r
end

return M
