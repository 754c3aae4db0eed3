--- vmsnap.workflow: finding the workflows and preconditions users can
--- replace. A workflow is `workflows/NAME.lua` and a precondition
--- `preconditions/NAME.lua` in the first directory of the search path that
--- has it: the directories in $VMSNAP_SCRIPTS_PATH (colon-separated), then
--- those added with workflow.add_path, then the built-in scripts
--- (VMSNAP_SCRIPTS_DIR, the installed share/vmsnap/scripts, the source tree).
--- So a user's copy of a file replaces the built-in one, a new file in a
--- user's preconditions/ directory adds a check, and a file in
--- workflows/NAME.d/ wraps or replaces single steps of workflow NAME.
local fs = require("vmsnap.fs")
local rtcore = require("vmsnap.core.runtime")
local steps = require("vmsnap.reconcile.steps")

local M = {}

local extra = {}
local cache = {}

--- Put a directory in front of the built-in ones (after $VMSNAP_SCRIPTS_PATH).
function M.add_path(dir)
  table.insert(extra, 1, dir)
  cache = {}
end

--- The search path, first wins.
function M.path()
  local dirs = {}
  local env = os.getenv("VMSNAP_SCRIPTS_PATH")
  if env and env ~= "" then
    for d in env:gmatch("[^:]+") do dirs[#dirs + 1] = d end
  end
  for _, d in ipairs(extra) do dirs[#dirs + 1] = d end
  for _, d in ipairs(rtcore.scripts_dirs()) do dirs[#dirs + 1] = d end
  return dirs
end

local function load_file(path)
  local st = fs.stat(path)
  local c = cache[path]
  if c and st and c.mtime == st.mtime then return c.mod end
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, err end
  local ok, mod = pcall(chunk)
  if not ok then return nil, ("%s: %s"):format(path, tostring(mod)) end
  if type(mod) ~= "table" then return nil, path .. ": a workflow or precondition file must return a table" end
  mod.source = path
  cache[path] = { mtime = st and st.mtime, mod = mod }
  return mod
end

local function find(sub, name)
  for _, d in ipairs(M.path()) do
    local p = ("%s/%s/%s.lua"):format(d, sub, name)
    if fs.exists(p) then return p end
  end
end

--- The extensions of workflow NAME: workflows/NAME.d/*.lua on every
--- directory of the path (a file name earlier on the path wins), in file-name order.
function M.extensions(name)
  local seen, list = {}, {}
  for _, d in ipairs(M.path()) do
    local dir = ("%s/workflows/%s.d"):format(d, name)
    for _, f in ipairs(fs.list(dir) or {}) do
      if f:match("%.lua$") and not seen[f] then
        seen[f] = true
        list[#list + 1] = { name = f, path = dir .. "/" .. f }
      end
    end
  end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

--- The workflow module NAME (cached; reloaded when its file or an extension
--- changes). Extensions (workflows/NAME.d/*.lua) return a function(W) that
--- wraps or replaces steps of W in place; they are applied in order to a
--- fresh copy of the workflow, so a step they wrap is the one the others call.
function M.load(name)
  local p = find("workflows", name)
  if not p then return nil, ("workflow %q not found on the scripts path (%s)"):format(name, table.concat(M.path(), ":")) end
  local exts = M.extensions(name)
  if #exts == 0 then return load_file(p) end
  local sig = { p, tostring((fs.stat(p) or {}).mtime) }
  for _, e in ipairs(exts) do sig[#sig + 1] = e.path .. "@" .. tostring((fs.stat(e.path) or {}).mtime) end
  sig = table.concat(sig, "\n")
  local key = "workflow+" .. name
  if cache[key] and cache[key].sig == sig then return cache[key].mod end
  local chunk, err = loadfile(p, "t")
  if not chunk then return nil, err end
  local ok, mod = pcall(chunk)
  if not ok then return nil, ("%s: %s"):format(p, tostring(mod)) end
  if type(mod) ~= "table" then return nil, p .. ": a workflow file must return a table" end
  mod.source = p
  mod.extensions = {}
  for _, e in ipairs(exts) do
    local echunk, eerr = loadfile(e.path, "t")
    if not echunk then return nil, eerr end
    local eok, fn = pcall(echunk)
    if not eok then return nil, ("%s: %s"):format(e.path, tostring(fn)) end
    if type(fn) ~= "function" then return nil, e.path .. ": a workflow extension must return a function(W)" end
    local aok, aerr = pcall(fn, mod)
    if not aok then return nil, ("%s: %s"):format(e.path, tostring(aerr)) end
    mod.extensions[#mod.extensions + 1] = e.path
  end
  cache[key] = { sig = sig, mod = mod }
  return mod
end

--- The preconditions that apply to a workflow, ordered by `order` then
--- name; a file earlier on the path replaces a same-named later one.
function M.preconditions(workflow_name)
  local seen, list = {}, {}
  for _, d in ipairs(M.path()) do
    local files = fs.list(d .. "/preconditions") or {}
    for _, f in ipairs(files) do
      local name = f:match("^(.+)%.lua$")
      if name and not seen[name] then
        seen[name] = true
        local mod, err = load_file(d .. "/preconditions/" .. f)
        if not mod then error(err, 0) end
        local applies = false
        for _, w in ipairs(mod.applies_to or {}) do
          if w == workflow_name then applies = true end
        end
        if applies then
          mod.name = mod.name or name
          list[#list + 1] = mod
        end
      end
    end
  end
  table.sort(list, function(a, b)
    local oa, ob = a.order or 50, b.order or 50
    if oa ~= ob then return oa < ob end
    return a.name < b.name
  end)
  return list
end

--- Run the gates (preconditions) of a workflow, in order, as one step:
--- each `check(ctx, obj, facts)` returns true (passes), false, reason,
--- message (not yet: the step waits with them) or nil, message, code (the
--- workflow fails, or retries for a transient code). The first that does
--- not pass decides.
---@param name string   the workflow
---@param default_reason string   the reason of a gate that gives none
function M.gates(name, ctx, obj, facts, default_reason)
  for _, p in ipairs(M.preconditions(name)) do
    local ok, a, b = p.check(ctx, obj, facts)
    if ok == false then
      return steps.wait(a or default_reason, b or ("Waiting for the precondition " .. p.name .. "."))
    elseif ok == nil then
      return nil, a or ("the precondition " .. p.name .. " failed"), b
    end
  end
  return true
end

return M
