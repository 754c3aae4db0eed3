--- vmsnap.apiserver.table: `meta.k8s.io/v1` Table responses (what `kubectl get`
--- prints), the JSONPath subset printer columns use, and Kubernetes' human
--- durations for the Age column.
local json = require("vmsnap.json")

local M = {}

local null = json.null

--- Kubernetes' HumanDuration ("45s", "3m2s", "67m", "5h10m", "3d").
---@param secs number
---@return string
function M.human_duration(secs)
  secs = math.floor(secs)
  if secs < -1 then return "<invalid>" end
  if secs < 0 then return "0s" end
  if secs < 120 then return secs .. "s" end
  local minutes = secs // 60
  if minutes < 10 then
    local s = secs % 60
    if s == 0 then return minutes .. "m" end
    return minutes .. "m" .. s .. "s"
  end
  if minutes < 180 then return minutes .. "m" end
  local hours = secs // 3600
  if hours < 8 then
    local m = minutes % 60
    if m == 0 then return hours .. "h" end
    return hours .. "h" .. m .. "m"
  end
  if hours < 48 then return hours .. "h" end
  if hours < 24 * 8 then
    local h = hours % 24
    if h == 0 then return (hours // 24) .. "d" end
    return (hours // 24) .. "d" .. h .. "h"
  end
  if hours < 24 * 365 * 2 then return (hours // 24) .. "d" end
  local years = hours // (24 * 365)
  if years < 8 then
    local d = (hours // 24) % 365
    if d == 0 then return years .. "y" end
    return years .. "y" .. d .. "d"
  end
  return years .. "y"
end

--- Seconds since the epoch of an RFC 3339 timestamp (see vmsnap.time).
M.parse_time = require("vmsnap.time").parse

-- ------------------------------------------------------------ JSONPath

-- Compile ".a.b", ".a[0]", ".a[*].b", ".a[?(@.type=='X')].status",
-- ".a[?(@.mounted==true)].name" into steps.
local function compile(path)
  local steps, i = {}, 1
  path = path:gsub("^{", ""):gsub("}$", "")
  if path:sub(1, 1) == "$" then path = path:sub(2) end
  while i <= #path do
    local c = path:sub(i, i)
    if c == "." then
      local name = path:match("^[^.%[]+", i + 1)
      if not name then return nil, "bad JSONPath " .. path end
      steps[#steps + 1] = { "key", name }
      i = i + 1 + #name
    elseif c == "[" then
      local close = path:find("]", i, true)
      if not close then return nil, "bad JSONPath " .. path end
      local inner = path:sub(i + 1, close - 1)
      if inner == "*" then
        steps[#steps + 1] = { "all" }
      elseif inner:match("^%-?%d+$") then
        steps[#steps + 1] = { "index", tonumber(inner) }
      else
        local fpath, op, lit = inner:match("^%?%(@%.([%w_.]+)%s*([=!]=)%s*['\"](.-)['\"]%)$")
        if not fpath then -- an unquoted literal: true, false, a number
          fpath, op, lit = inner:match("^%?%(@%.([%w_.]+)%s*([=!]=)%s*([%w.%-]+)%)$")
        end
        if fpath then
          steps[#steps + 1] = { "filter", fpath, op, lit }
        else
          local q = inner:match("^['\"](.-)['\"]$")
          if not q then return nil, "unsupported JSONPath " .. path end
          steps[#steps + 1] = { "key", q }
        end
      end
      i = close + 1
    else
      local name = path:match("^[^.%[]+", i)
      steps[#steps + 1] = { "key", name }
      i = i + #name
    end
  end
  return steps
end

local cache = setmetatable({}, { __mode = "k" })

local function get_path(v, dotted)
  for part in dotted:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

--- Evaluate a JSONPath against obj; returns the list of matches.
function M.jsonpath(obj, path)
  local steps = cache[path]
  if not steps then
    local err
    steps, err = compile(path)
    if not steps then return nil, err end
    cache[path] = steps
  end
  local cur = { obj }
  for _, st in ipairs(steps) do
    local nxt = {}
    for _, v in ipairs(cur) do
      if type(v) == "table" then
        if st[1] == "key" then
          if v[st[2]] ~= nil then nxt[#nxt + 1] = v[st[2]] end
        elseif st[1] == "index" then
          local n = st[2] < 0 and #v + st[2] + 1 or st[2] + 1
          if v[n] ~= nil then nxt[#nxt + 1] = v[n] end
        elseif st[1] == "all" then
          for _, e in ipairs(v) do nxt[#nxt + 1] = e end
        elseif st[1] == "filter" then
          for _, e in ipairs(v) do
            local fv = get_path(e, st[2])
            local s = fv ~= nil and tostring(fv) or nil
            if (st[3] == "==" and s == st[4]) or (st[3] == "!=" and s ~= st[4]) then
              nxt[#nxt + 1] = e
            end
          end
        end
      end
    end
    cur = nxt
  end
  return cur
end

-- ------------------------------------------------------------ cells

local function cell_value(col, obj, now)
  if col.cell then return col.cell(obj, now) end
  local vals = M.jsonpath(obj, col.jsonPath)
  if not vals or #vals == 0 then return null end
  local v = vals[1]
  if col.type == "date" then
    local t = M.parse_time(v)
    if not t then return null end
    return M.human_duration(now - t)
  end
  if col.type == "integer" then return math.tointeger(v) or null end
  if col.type == "number" then return tonumber(v) or null end
  if col.type == "boolean" then
    if type(v) == "boolean" then return v end
    return null
  end
  if type(v) == "table" then
    if #vals > 1 then
      local parts = {}
      for i, x in ipairs(vals) do parts[i] = type(x) == "table" and json.encode(x) or tostring(x) end
      return table.concat(parts, ",")
    end
    return json.encode(v)
  end
  if #vals > 1 then
    local parts = {}
    for i, x in ipairs(vals) do parts[i] = tostring(x) end
    return table.concat(parts, ",")
  end
  return tostring(v)
end

--- Column definitions of a resource (Name first unless the resource says otherwise).
function M.column_definitions(res)
  local defs = json.array()
  for _, col in ipairs(res.columns) do
    defs[#defs + 1] = {
      name = col.name,
      type = col.type or "string",
      format = col.format or (col.name == "Name" and "name" or ""),
      description = col.description or "",
      priority = col.priority or 0,
    }
  end
  return defs
end

local function partial(obj)
  local md = obj.metadata or {}
  local m = {
    name = md.name, namespace = md.namespace, uid = md.uid,
    resourceVersion = md.resourceVersion, creationTimestamp = md.creationTimestamp,
    generation = md.generation, labels = md.labels, annotations = md.annotations,
    deletionTimestamp = md.deletionTimestamp, ownerReferences = md.ownerReferences,
    finalizers = md.finalizers, generateName = md.generateName,
  }
  return { kind = "PartialObjectMetadata", apiVersion = "meta.k8s.io/v1", metadata = m }
end

--- One Table row for obj; `include` is the request's includeObject:
--- "Object" (the whole object: kubectl --sort-by), "None", or the default
--- "Metadata" (PartialObjectMetadata).
function M.row(res, obj, now, include)
  local cells = json.array()
  for i, col in ipairs(res.columns) do
    cells[i] = cell_value(col, obj, now)
  end
  local object
  if include == "Object" then object = obj
  elseif include ~= "None" then object = partial(obj) end
  return { cells = cells, object = object }
end

--- A Table of objs (decoded objects).
function M.table(res, objs, meta, now, no_headers, include)
  local rows = json.array()
  for i, o in ipairs(objs) do rows[i] = M.row(res, o, now, include) end
  return {
    kind = "Table",
    apiVersion = "meta.k8s.io/v1",
    metadata = meta,
    columnDefinitions = no_headers and null or M.column_definitions(res),
    rows = rows,
  }
end

return M
