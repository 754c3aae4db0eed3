--- vmsnap._sandbox (private): the environment hook scripts run in.
---
--- Hooks see an allow-listed set of globals plus what their caller gives
--- them; assigning a global raises, and so does reading an unknown one (a
--- typo should not silently be nil). os.execute, io.popen and io.open are
--- only there when the operator allows them. Nothing of the host is
--- reachable for writing: `getmetatable` answers only for the hook's own
--- tables (the string metatable, and the metatables of what the host hands
--- over, stay hidden), the libraries are copies, the modules a hook may
--- require and the objects it is given are read-only views, and a hook's
--- tables cannot have finalizers (they would run outside its bounds).
---
--- Time, memory and pattern cost are bounded by the task a handler runs in
--- (vmsnap.task.bounded with sandbox = true); see vmsnap.hooks.
local runtime = require("vmsnap.core.runtime")

local M = {}

-- not rawset: the read-only views are shared by every hook, and a rawset
-- on one would show through to the others
local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "print", "rawequal", "rawget",
  "rawlen", "select", "tonumber", "tostring",
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

-- the metatables hooks set themselves (the only ones getmetatable shows them)
local own = setmetatable({}, { __mode = "k" })

--- getmetatable for the sandbox: only the metatables a hook set itself (or
--- their __metatable). The string metatable and those of what the host hands
--- over (error objects, decoded JSON arrays, views) stay hidden: a hook that
--- changed one would change the host.
local function safe_getmetatable(v)
  if type(v) ~= "table" then return nil end
  local raw = debug.getmetatable(v)
  if raw == nil or not own[raw] then return nil end
  return getmetatable(v)
end

--- setmetatable for the sandbox: no finalizers. A __gc runs whenever the
--- collector gets to the object, in whatever task is running then, outside
--- the hook's deadline and memory bound.
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available in a hook (use a to-be-closed variable)", 2)
  end
  if type(t) == "table" and getmetatable(t) ~= nil and not own[debug.getmetatable(t)] then
    error("cannot change the metatable of a table the hook did not make", 2)
  end
  local r = setmetatable(t, mt)
  if type(mt) == "table" then own[mt] = true end
  return r
end

local views = setmetatable({}, { __mode = "k" })

--- A read-only view of a table (deep: the tables in it are views too; other
--- values as they are). Writing raises; its metatable is hidden.
---@param t table
---@param what? string  named in the error ("the module vmsnap.json")
function M.readonly(t, what)
  if type(t) ~= "table" or getmetatable(t) == false then return t end -- a view already
  local v = views[t]
  if v then return v end
  v = setmetatable({}, {
    __index = function(_, k) return M.readonly(t[k], what) end,
    __newindex = function() error((what or "this table") .. " is read-only in a hook", 2) end,
    __pairs = function()
      return function(_, k)
        local nk, nv = next(t, k)
        return nk, M.readonly(nv, what)
      end, v, nil
    end,
    __len = function() return #t end,
    __metatable = false,
  })
  views[t] = v
  return v
end

--- A copy of a value a hook hands back, as plain data: strings, numbers,
--- booleans and tables of them, without metatables; functions and other
--- values are dropped (top-level functions are kept when keep_functions).
--- Run it inside the hook's task: the hook's own __pairs or __tostring then
--- run under the hook's bounds, and what reaches the host cannot run hook
--- code. Raises past 100000 entries or 100 levels.
---@param v any
---@param keep_functions? boolean
function M.plain(v, keep_functions)
  local count = 0
  local function cp(x, depth)
    local tx = type(x)
    if tx == "string" or tx == "number" or tx == "boolean" then return x end
    if tx ~= "table" then return nil end
    if depth > 100 then error("the value a hook returned is nested too deep", 0) end
    local out = {}
    for k, val in pairs(x) do
      count = count + 1
      if count > 100000 then error("the value a hook returned is too large", 0) end
      local tk = type(k)
      if tk == "string" or tk == "number" then
        if depth == 0 and keep_functions and type(val) == "function" then
          out[k] = val
        else
          out[k] = cp(val, depth + 1)
        end
      end
    end
    return out
  end
  return cp(v, 0)
end

--- Build an environment table. flags: runtime.SANDBOX_* bits; opts.require:
--- the require the hook gets (default: none, unless the flags allow vmsnap.*);
--- opts.extra: names added to the environment.
---@param flags integer
---@param opts? {require?: function, extra?: table}
function M.env(flags, opts)
  opts = opts or {}
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  env.getmetatable = safe_getmetatable
  env.setmetatable = safe_setmetatable
  for name in pairs(SAFE_LIBS) do env[name] = copy(_G[name]) end
  env.os = {}
  for _, name in ipairs(SAFE_OS) do env.os[name] = os[name] end
  if flags & runtime.SANDBOX_ALLOW_OS ~= 0 then
    env.os.execute, env.os.remove, env.os.rename, env.os.tmpname = os.execute, os.remove, os.rename, os.tmpname
    env.io = { open = io.open, popen = io.popen, lines = io.lines, write = io.write, read = io.read }
  else
    env.io = {} -- so that io.popen says what is missing, not "undeclared global 'io'"
  end
  if opts.require then
    env.require = opts.require
  elseif flags & runtime.SANDBOX_ALLOW_REQUIRE ~= 0 then
    env.require = function(name)
      if type(name) ~= "string" or not name:match("^vmsnap%.") or name:match("^vmsnap%.core") or name:match("^vmsnap%._") then
        error("require of '" .. tostring(name) .. "' is not allowed in a hook", 2)
      end
      return M.readonly(require(name), "the module " .. name)
    end
  end
  env.coroutine = { isyieldable = coroutine.isyieldable, running = coroutine.running }
  for _, lib in ipairs({ "os", "io", "coroutine" }) do
    if env[lib] then
      setmetatable(env[lib], { __index = function(_, k)
        error(lib .. "." .. tostring(k) .. " is not available in the hook sandbox", 2)
      end, __metatable = false })
    end
  end
  for k, v in pairs(opts.extra or {}) do env[k] = v end
  return setmetatable(env, {
    __newindex = function(_, k)
      error("assignment to undeclared global '" .. tostring(k) .. "' (hooks keep state in locals)", 2)
    end,
    __index = function(_, k)
      error("undeclared global '" .. tostring(k) .. "' (not available in the hook sandbox)", 2)
    end,
    __metatable = false,
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
