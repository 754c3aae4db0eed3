--- vmsnap.yaml: YAML load and dump (libyaml), same null and array conventions as vmsnap.json.
---
--- Plain scalars resolve as Kubernetes' reader does (YAML 1.1 booleans such as
--- `yes`/`no`, null, integers, floats); quoted scalars stay strings. Dumping
--- quotes every string that would read back as another type, writes strings
--- with newlines as literal blocks, and sorts keys.
local core = require("vmsnap.core.yaml")

local M = {
  null = require("vmsnap.core.json").null,
  libyaml_version = core.libyaml_version,
}

--- The first document of `text` (nil when there is none).
--- syntax: value, err, code = yaml.load(text)
---@param text string
---@return any value
---@return string? err  "yaml: line L column C: problem"
---@return string? code "YAML_PARSE"
function M.load(text)
  return core.load(text)
end

--- Every non-empty document of `text`, as a list.
---@param text string
---@return table? docs
---@return string? err
---@return string? code
function M.load_all(text)
  return core.load_all(text)
end

---@class vmsnap.yaml.DumpOpts
---@field indent? integer  2..9, default 2

--- syntax: text, err, code = yaml.dump(value, opts)
---@param value any
---@param opts? vmsnap.yaml.DumpOpts
---@return string? text
---@return string? err
---@return string? code
function M.dump(value, opts)
  return core.dump(value, opts)
end

--- Each element of `docs` as a document, separated by `---`.
---@param docs table
---@param opts? vmsnap.yaml.DumpOpts
---@return string? text
---@return string? err
---@return string? code
function M.dump_all(docs, opts)
  return core.dump_all(docs, opts)
end

return M
