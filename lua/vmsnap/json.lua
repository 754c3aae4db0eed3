--- vmsnap.json: JSON with the conventions Kubernetes objects need.
---
--- `decode` never raises on bad input: it returns `nil, message, "JSON_DECODE"`
--- with line and column. `null` is `vmsnap.null`; empty arrays decode to tables
--- with `vmsnap.array_mt` and encode back to `[]`. Integral numbers decode to
--- integers. Objects encode with sorted keys. The raw lua-cjson module stays
--- available as `require "cjson"` for code that prefers raising.
local core = require("vmsnap.core.json")

local M = {
  null = core.null,
  array_mt = core.array_mt,
}

--- syntax: value, err, code = json.decode(text)
---@param text string
---@return any value
---@return string? err
---@return string? code
function M.decode(text)
  return core.decode(text)
end

---@class vmsnap.json.EncodeOpts
---@field indent? string|integer  pretty-print with this indent (spaces if a number)

--- syntax: text, err, code = json.encode(value, opts)
---@param value any
---@param opts? vmsnap.json.EncodeOpts
---@return string? text
---@return string? err
---@return string? code
function M.encode(value, opts)
  return core.encode(value, opts)
end

--- Mark `t` (default: a new table) as an array.
---@param t? table
---@return table
function M.array(t)
  return setmetatable(t or {}, core.array_mt)
end

--- Is `t` marked as an array?
---@param t any
---@return boolean
function M.is_array(t)
  return core.is_array(t)
end

return M
