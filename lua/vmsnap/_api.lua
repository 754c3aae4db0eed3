--- vmsnap._api (private): what vmsnap_call and vmsnap_call_hook run.
--- Each returns the JSON text of the results, and, when the callee
--- reported failure (`nil, message[, code]`), that message and code too.
local json = require("vmsnap.json")
local runtime = require("vmsnap.core.runtime")
local hooks = require("vmsnap.hooks")

local pack, unpack = table.pack, table.unpack

local M = {}

local function resolve(name)
  local mod, sep, fn = name:match("^(.-)([.:])([%w_]+)$")
  if not mod or mod == "" then
    local f = _G[name]
    if type(f) ~= "function" then return nil, "no global function '" .. name .. "'" end
    return f
  end
  local ok, m = pcall(require, mod)
  if not ok then
    -- maybe a global table
    m = _G[mod]
    if type(m) ~= "table" then return nil, "cannot find module '" .. mod .. "'" end
  end
  local f = type(m) == "table" and m[fn]
  if type(f) ~= "function" then return nil, "no function '" .. fn .. "' in '" .. mod .. "'" end
  if sep == ":" then
    return function(...) return f(m, ...) end
  end
  return f
end

local function results_json(r)
  local list = json.array()
  for i = 1, r.n do
    local v = r[i]
    if v == nil then v = json.null end
    list[i] = v
  end
  local text, err = json.encode(list)
  if not text then error("results cannot be encoded as JSON: " .. err, 0) end
  local msg, code
  if r.n >= 2 and r[1] == nil and type(r[2]) == "string" then
    msg, code = r[2], type(r[3]) == "string" and r[3] or nil
  end
  return text, msg, code
end

function M.call(name, args_json)
  local f, err = resolve(name)
  if not f then error("vmsnap_call: " .. err, 0) end
  local args, derr = json.decode(args_json)
  if derr then error("vmsnap_call: arguments: " .. derr, 0) end
  if type(args) ~= "table" then error("vmsnap_call: arguments must be a JSON array", 0) end
  return results_json(pack(f(unpack(args, 1, #args))))
end

function M.call_hook(script, point, args_json)
  local args, derr = json.decode(args_json)
  if derr then error("vmsnap_call_hook: arguments: " .. derr, 0) end
  if type(args) ~= "table" then error("vmsnap_call_hook: arguments must be a JSON object", 0) end
  -- the controllers' runner: the same sandbox, context, timeout and memory bound
  local flags = runtime.sandbox()
  local on = flags & runtime.SANDBOX_ON ~= 0
  local r = hooks.call(script, point, args, { allow_os = not on or flags & runtime.SANDBOX_ALLOW_OS ~= 0,
    require_any = not on or flags & runtime.SANDBOX_ALLOW_REQUIRE ~= 0 })
  return results_json(r)
end

return M
