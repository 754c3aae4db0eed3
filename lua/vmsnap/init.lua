--- vmsnap: the root module.
--- Shared sentinels and run-wide values; the rest lives in vmsnap.* modules.
local json = require("vmsnap.core.json")
local runtime = require("vmsnap.core.runtime")

local M = {
  _VERSION = runtime.versions().vmsnap,
}

--- The value that stands for JSON/YAML null (the same in vmsnap.json and vmsnap.yaml).
M.null = json.null

--- Metatable marking a table as an array, so that an empty one encodes as `[]`.
M.array_mt = json.array_mt

--- Named inputs set by the host (vmsnap_set_param), decoded from JSON.
M.params = runtime.params()

---@param v any
---@return boolean
function M.is_null(v)
  return v == M.null
end

--- Mark `t` (default: a new table) as an array and return it.
---@param t? table
---@return table
function M.array(t)
  return setmetatable(t or {}, M.array_mt)
end

--- Versions of vmsnap and the libraries it runs on.
---@return table<string,string>
function M.versions()
  return runtime.versions()
end

return M
