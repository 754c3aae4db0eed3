--- vmsnap.errors: the stable error codes and error objects.
---
--- Operations that fail return `nil, message, code`; `code` is one of the
--- constants below, a Kubernetes Status reason, a guest-agent error class or
--- an errno name. Misuse raises. See docs/errors.md.
local core = require("vmsnap.core.errors")

local M = {
  TIMEOUT = "TIMEOUT",
  CLOSED = "CLOSED",
  CANCELLED = "CANCELLED",
  NOMEM = "NOMEM",
  ERROR = "ERROR",
  JSON_DECODE = "JSON_DECODE",
  JSON_ENCODE = "JSON_ENCODE",
  YAML_PARSE = "YAML_PARSE",
  YAML_EMIT = "YAML_EMIT",
  QGA_TIMEOUT = "QGA_TIMEOUT",
  USAGE = "USAGE",
}

-- the codes a retry may fix: the transport, an overloaded or restarting
-- API server, a write that lost a race, an agent that did not answer yet.
-- Every other code is terminal: the operation failed for a reason no retry
-- changes (docs/errors.md lists both).
M.TRANSIENT = {
  TIMEOUT = true, CLOSED = true, CANCELLED = true, NOMEM = true, ERROR = true, JSON_DECODE = true,
  RESOLVE = true, TLS = true, CURL = true, TOO_LARGE = true, QGA_TIMEOUT = true,
  ECONNREFUSED = true, ECONNRESET = true, ECONNABORTED = true, EPIPE = true, EAGAIN = true, ETIMEDOUT = true,
  ENOTCONN = true, EHOSTUNREACH = true, ENETUNREACH = true, EINTR = true,
  -- Kubernetes Status reasons
  Conflict = true, TooManyRequests = true, ServiceUnavailable = true, InternalError = true,
  ServerTimeout = true, Timeout = true, Gone = true, Expired = true, Unauthorized = true,
  -- vmsnap's own
  BUSY = true, AGENT_NOT_READY = true, FROZEN_BY_OTHER = true, BAD_RESPONSE = true, UNDO_OWED = true,
}

--- May a retry fix a failure with this code? A missing code counts as
--- transient (a failure that does not say why is not taken as final).
---@param code string|nil
---@return boolean
function M.is_transient(code)
  return code == nil or M.TRANSIENT[code] == true
end

--- Create an error object (`tostring` gives the message).
---@param code string
---@param message string
---@return table
function M.new(code, message)
  return core.new(code, message)
end

--- Raise an error object with a code. `level` as for `error` (default 1: the caller's position).
---@param code string
---@param message string
---@param level? integer
function M.raise(code, message, level)
  if level == 0 then return core.raise(code, message, 0) end
  return core.raise(code, message, (level or 1) + 1)
end

--- Is `v` an error object?
---@param v any
---@return boolean
function M.is_error(v)
  return core.is_error(v)
end

--- The code carried by an error value (error object, or nil for plain strings).
---@param v any
---@return string|nil
function M.code_of(v)
  if core.is_error(v) then return v.code end
  return nil
end

return M
