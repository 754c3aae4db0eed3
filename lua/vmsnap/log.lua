--- vmsnap.log: leveled, structured logging to the runtime's sink.
---
--- Records are text for people (`2026-11-24T04:55:00.123Z INFO  task: msg k=v`)
--- or JSON lines for machines (`--log-json`, vmsnap_config_set_log_json).
---
---   local log = require("vmsnap.log")
---   log.info("snapshot ready", { name = "vm-1", ms = 120 })
---   local l = log.new("csi", { vm = "vm-1" })   -- subsystem and fixed fields
---   l:warn("slow cut")
local core = require("vmsnap.core.log")

local pairs, setmetatable, select, type, tostring = pairs, setmetatable, select, type, tostring

local M = {
  DEBUG = 10,
  INFO = 20,
  WARN = 30,
  ERROR = 40,
}

local level_by_name = { debug = 10, info = 20, warn = 30, warning = 30, error = 40 }

local Logger = {}
Logger.__index = Logger

local function merge(a, b)
  if not a then return b end
  if not b then return a end
  local r = {}
  for k, v in pairs(a) do r[k] = v end
  for k, v in pairs(b) do r[k] = v end
  return r
end

local function emit(self, level, msg, fields)
  if type(msg) ~= "string" then msg = tostring(msg) end
  return core.write(level, self.subsystem, msg, merge(self.fields, fields))
end

---@param msg string
---@param fields? table
function Logger:debug(msg, fields) return emit(self, 10, msg, fields) end
function Logger:info(msg, fields) return emit(self, 20, msg, fields) end
function Logger:warn(msg, fields) return emit(self, 30, msg, fields) end
function Logger:error(msg, fields) return emit(self, 40, msg, fields) end

--- A logger that adds `fields` to every record (and keeps this one's).
---@param fields table
function Logger:with(fields)
  return setmetatable({ subsystem = self.subsystem, fields = merge(self.fields, fields) }, Logger)
end

--- A logger for `subsystem` with fixed `fields`.
---@param subsystem string
---@param fields? table
function M.new(subsystem, fields)
  if type(subsystem) ~= "string" then
    error("bad argument #1 to 'new' (string expected, got " .. type(subsystem) .. ")", 2)
  end
  return setmetatable({ subsystem = subsystem, fields = fields }, Logger)
end

local default = M.new("script")
function M.debug(msg, fields) return emit(default, 10, msg, fields) end
function M.info(msg, fields) return emit(default, 20, msg, fields) end
function M.warn(msg, fields) return emit(default, 30, msg, fields) end
function M.error(msg, fields) return emit(default, 40, msg, fields) end

--- Get, or set with a number or a name ("debug", "info", "warn", "error"), the least level logged.
---@param level? integer|string
---@return integer previous
function M.level(level)
  if type(level) == "string" then
    local n = level_by_name[level]
    if not n then error("bad argument #1 to 'level' (unknown level '" .. level .. "')", 2) end
    level = n
  end
  return core.level(level)
end

--- Get, or set, whether records are JSON lines.
function M.json(on)
  return core.json(on)
end

--- printf-style convenience: log.infof("copied %d bytes", n)
function M.infof(fmt, ...) return emit(default, 20, fmt:format(...)) end
function M.warnf(fmt, ...) return emit(default, 30, fmt:format(...)) end
function M.errorf(fmt, ...) return emit(default, 40, fmt:format(...)) end
function M.debugf(fmt, ...)
  if select("#", ...) == 0 then return emit(default, 10, fmt) end
  return emit(default, 10, fmt:format(...))
end

return M
