--- vmsnap._sandbox (private): the environment hook scripts run in.
---
--- Hooks see an allow-listed set of globals plus what their caller gives
--- them; assigning a global raises, and so does reading an unknown one (a
--- typo should not silently be nil). os.execute, io.popen and io.open are
--- only there when the operator allows them.
local runtime = require("vmsnap.core.runtime")

local M = {}

local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget",
  "rawlen", "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring",
  "type", "xpcall", "_VERSION",
}
local SAFE_LIBS = {
  string = true, table = true, math = true, utf8 = true,
}
local SAFE_OS = { "clock", "date", "difftime", "getenv", "time" }

local function copy(t)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  return r
end

--- Build an environment table. flags: runtime.SANDBOX_* bits.
---@param flags integer
---@param extra? table  names added to the environment
function M.env(flags, extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  for name in pairs(SAFE_LIBS) do env[name] = copy(_G[name]) end
  env.os = {}
  for _, name in ipairs(SAFE_OS) do env.os[name] = os[name] end
  if flags & runtime.SANDBOX_ALLOW_OS ~= 0 then
    env.os.execute, env.os.remove, env.os.rename, env.os.tmpname = os.execute, os.remove, os.rename, os.tmpname
    env.io = { open = io.open, popen = io.popen, lines = io.lines, write = io.write, read = io.read }
  else
    env.io = {} -- so that io.popen says what is missing, not "undeclared global 'io'"
  end
  if flags & runtime.SANDBOX_ALLOW_REQUIRE ~= 0 then
    env.require = function(name)
      if type(name) ~= "string" or not name:match("^vmsnap%.") or name:match("^vmsnap%.core") then
        error("require of '" .. tostring(name) .. "' is not allowed in a hook", 2)
      end
      return require(name)
    end
  end
  env.coroutine = { isyieldable = coroutine.isyieldable, running = coroutine.running }
  for _, lib in ipairs({ "os", "io", "coroutine" }) do
    if env[lib] then
      setmetatable(env[lib], { __index = function(_, k)
        error(lib .. "." .. tostring(k) .. " is not available in the hook sandbox", 2)
      end })
    end
  end
  if extra then
    for k, v in pairs(extra) do env[k] = v end
  end
  return setmetatable(env, {
    __newindex = function(_, k)
      error("assignment to undeclared global '" .. tostring(k) .. "' (hooks keep state in locals)", 2)
    end,
    __index = function(_, k)
      error("undeclared global '" .. tostring(k) .. "' (not available in the hook sandbox)", 2)
    end,
  })
end

--- Load a file as a chunk in `env`. Returns the function or nil, message, code.
function M.loadfile(path, env)
  local f, err = loadfile(path, "t", env)
  if not f then
    local code = err:match("No such file") and "ENOENT" or "SYNTAX"
    return nil, err, code
  end
  return f
end

return M
