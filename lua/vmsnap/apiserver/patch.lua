--- vmsnap.apiserver.patch: the patch types of the Kubernetes API and
--- server-side apply field ownership (metadata.managedFields).
---
--- merge (RFC 7386), json (RFC 6902), strategic (for built-ins: a merge patch
--- whose lists of objects merge by `name`, with `$patch: delete`), and apply:
--- each field manager owns the leaf paths it set; an apply that changes a
--- field another manager owns is a conflict unless forced; fields a manager
--- applied before and no longer applies are removed when nobody else owns them.
local json = require("vmsnap.json")
local schema = require("vmsnap.apiserver.schema")

local M = {}
local null = json.null
local copy = schema.copy

local function is_object(v)
  return type(v) == "table" and v ~= null and not json.is_array(v) and (next(v) == nil or #v == 0)
end

local function is_list(v)
  return type(v) == "table" and v ~= null and (json.is_array(v) or (#v > 0))
end

local equal = require("vmsnap.deep").equal
M.equal = equal

--- Equal objects apart from the `time` of their managedFields entries (a
--- write that changes nothing else is not a change).
function M.equal_ignoring_times(a, b)
  local ma, mb = a.metadata and a.metadata.managedFields, b.metadata and b.metadata.managedFields
  if ma == nil or mb == nil or #ma ~= #mb then return equal(a, b) end
  local ta, tb = {}, {}
  for i = 1, #ma do ta[i], tb[i] = ma[i].time, mb[i].time; ma[i].time, mb[i].time = nil, nil end
  local same = equal(a, b)
  for i = 1, #ma do ma[i].time, mb[i].time = ta[i], tb[i] end
  return same
end

-- ------------------------------------------------------------ merge patch

--- RFC 7386: returns the patched copy.
function M.merge(target, patch)
  if not is_object(patch) then return copy(patch) end
  local out = is_object(target) and copy(target) or {}
  for k, v in pairs(patch) do
    if v == null then
      out[k] = nil
    else
      out[k] = M.merge(out[k], v)
    end
  end
  return out
end

-- ------------------------------------------------------------ strategic

local function strategic(target, patch)
  if not is_object(patch) then return copy(patch) end
  if patch["$patch"] == "replace" then
    local p = copy(patch)
    p["$patch"] = nil
    return p
  end
  local out = is_object(target) and copy(target) or {}
  for k, v in pairs(patch) do
    if type(k) == "string" and k:sub(1, 1) == "$" then
      -- directives ($setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...) are not modelled
    elseif v == null then
      out[k] = nil
    elseif is_list(v) and is_list(out[k]) and type(v[1]) == "table" and v[1].name ~= nil then
      -- lists of objects merge by name
      local merged = json.array()
      local index = {}
      for _, e in ipairs(out[k]) do
        merged[#merged + 1] = copy(e)
        if type(e) == "table" and e.name ~= nil then index[e.name] = #merged end
      end
      local deleted = {}
      for _, e in ipairs(v) do
        if type(e) == "table" and e["$patch"] == "delete" then
          deleted[e.name] = true
        elseif type(e) == "table" and e.name ~= nil and index[e.name] then
          merged[index[e.name]] = strategic(merged[index[e.name]], e)
        else
          merged[#merged + 1] = copy(e)
        end
      end
      local final = json.array()
      for _, e in ipairs(merged) do
        if not (type(e) == "table" and deleted[e.name]) then final[#final + 1] = e end
      end
      out[k] = final
    else
      out[k] = strategic(out[k], v)
    end
  end
  return out
end
M.strategic = strategic

-- ------------------------------------------------------------ JSON patch

local function unescape_ptr(s)
  return (s:gsub("~1", "/"):gsub("~0", "~"))
end

local function split_ptr(ptr)
  if ptr == "" then return {} end
  if ptr:sub(1, 1) ~= "/" then return nil end
  local parts = {}
  for p in (ptr:sub(2) .. "/"):gmatch("(.-)/") do parts[#parts + 1] = unescape_ptr(p) end
  return parts
end

local function resolve_parent(doc, parts)
  local cur = doc
  for i = 1, #parts - 1 do
    local k = parts[i]
    if is_list(cur) or json.is_array(cur) then
      k = tonumber(k)
      if not k then return nil end
      cur = cur[k + 1]
    elseif type(cur) == "table" then
      cur = cur[k]
    else
      return nil
    end
    if type(cur) ~= "table" or cur == null then return nil end
  end
  return cur
end

local function get_ptr(doc, parts)
  if #parts == 0 then return doc end
  local parent = resolve_parent(doc, parts)
  if not parent then return nil end
  local k = parts[#parts]
  if json.is_array(parent) or is_list(parent) then
    local n = tonumber(k)
    return n and parent[n + 1]
  end
  return parent[k]
end

local function remove_ptr(doc, parts)
  local parent = resolve_parent(doc, parts)
  if not parent then return false end
  local k = parts[#parts]
  if json.is_array(parent) or is_list(parent) then
    local n = tonumber(k)
    if not n or parent[n + 1] == nil then return false end
    table.remove(parent, n + 1)
    return true
  end
  if parent[k] == nil then return false end
  parent[k] = nil
  return true
end

local function add_ptr(doc, parts, value)
  local parent = resolve_parent(doc, parts)
  if not parent then return false end
  local k = parts[#parts]
  if json.is_array(parent) or is_list(parent) then
    if k == "-" then
      parent[#parent + 1] = value
      return true
    end
    local n = tonumber(k)
    if not n or n < 0 or n > #parent then return false end
    table.insert(parent, n + 1, value)
    return true
  end
  parent[k] = value
  return true
end

--- RFC 6902: returns the patched copy, or nil, message.
function M.json_patch(doc, ops)
  if not is_list(ops) and not json.is_array(ops) then
    return nil, "json patch must be an array of operations"
  end
  doc = copy(doc)
  for i, op in ipairs(ops) do
    if type(op) ~= "table" or type(op.op) ~= "string" or type(op.path) ~= "string" then
      return nil, ("operation %d: needs 'op' and 'path'"):format(i - 1)
    end
    local parts = split_ptr(op.path)
    if not parts then return nil, ("invalid path %q"):format(op.path) end
    if #parts == 0 then return nil, "the whole document cannot be patched" end
    local o = op.op
    if o == "add" then
      if op.value == nil then return nil, ("operation %d: 'add' needs 'value'"):format(i - 1) end
      if not add_ptr(doc, parts, copy(op.value)) then
        return nil, ("add operation does not apply: doc is missing path: %q"):format(op.path)
      end
    elseif o == "remove" then
      if not remove_ptr(doc, parts) then
        return nil, ("remove operation does not apply: doc is missing path: %q"):format(op.path)
      end
    elseif o == "replace" then
      if get_ptr(doc, parts) == nil then
        return nil, ("replace operation does not apply: doc is missing key: %s"):format(op.path)
      end
      remove_ptr(doc, parts)
      add_ptr(doc, parts, copy(op.value))
    elseif o == "move" or o == "copy" then
      local from = type(op.from) == "string" and split_ptr(op.from)
      if not from then return nil, ("operation %d: needs 'from'"):format(i - 1) end
      local v = get_ptr(doc, from)
      if v == nil then return nil, ("%s operation does not apply: doc is missing from path: %q"):format(o, op.from) end
      v = copy(v)
      if o == "move" then remove_ptr(doc, from) end
      if not add_ptr(doc, parts, v) then
        return nil, ("%s operation does not apply: doc is missing path: %q"):format(o, op.path)
      end
    elseif o == "test" then
      if not equal(get_ptr(doc, parts), op.value) then
        return nil, ("testing value %s failed"):format(op.path)
      end
    else
      return nil, ("unexpected kind of operation %q"):format(o)
    end
  end
  return doc
end

-- ------------------------------------------------------------ field ownership

-- Leaf paths are strings of keys joined by "\1"; lists are atomic leaves.
local SEP = "\1"

local SKIP_META = { name = true, namespace = true, uid = true, resourceVersion = true,
  generation = true, creationTimestamp = true, managedFields = true, deletionTimestamp = true,
  deletionGracePeriodSeconds = true, selfLink = true, generateName = true }

local function collect(v, prefix, out)
  if is_object(v) and next(v) ~= nil then
    for k, x in pairs(v) do
      collect(x, prefix .. SEP .. k, out)
    end
  else
    out[prefix] = v
  end
end

--- Leaf paths of the fields an object sets, mapped to their values.
--- `status` is included only when status_only, and is the only part then.
function M.leaves(obj, status_only)
  local out = {}
  for k, v in pairs(obj) do
    if k == "metadata" then
      if not status_only and type(v) == "table" then
        for mk, mv in pairs(v) do
          if not SKIP_META[mk] then collect(mv, SEP .. "metadata" .. SEP .. mk, out) end
        end
      end
    elseif k == "status" then
      if status_only then collect(v, SEP .. k, out) end
    elseif k ~= "apiVersion" and k ~= "kind" and not status_only then
      collect(v, SEP .. k, out)
    end
  end
  return out
end

-- the leaf paths where a and b differ (either may be nil): changed (b sets
-- it to another value) and removed (a had it, b has not), as a comparison
-- of their M.leaves would say, but walked side by side: a path's text is
-- made only for a difference (path: the keys down to here, depth d)
local function differ(a, b, path, d, changed, removed)
  if rawequal(a, b) then return end
  local ao = is_object(a) and next(a) ~= nil
  local bo = is_object(b) and next(b) ~= nil
  if ao and bo then
    for k, x in pairs(b) do
      path[d + 1] = k
      differ(a[k], x, path, d + 1, changed, removed)
    end
    for k, x in pairs(a) do
      if b[k] == nil then
        path[d + 1] = k
        differ(x, nil, path, d + 1, changed, removed)
      end
    end
    return
  end
  local here = SEP .. table.concat(path, SEP, 1, d)
  if ao then
    local gone = {}
    collect(a, here, gone)
    for p in pairs(gone) do removed[p] = true end
    if b ~= nil then changed[here] = true end
  elseif bo then
    local set = {}
    collect(b, here, set)
    for p in pairs(set) do changed[p] = true end
    if a ~= nil then removed[here] = true end
  elseif b == nil then
    removed[here] = true
  elseif a == nil or not equal(a, b) then
    changed[here] = true
  end
end

--- The leaf paths an update changes and removes (sets of M.leaves paths).
function M.changes(old, new, status_only)
  local changed, removed, path = {}, {}, {}
  if status_only then
    path[1] = "status"
    differ(old.status, new.status, path, 1, changed, removed)
    return changed, removed
  end
  local om = type(old.metadata) == "table" and old.metadata or {}
  local nm = type(new.metadata) == "table" and new.metadata or {}
  path[1] = "metadata"
  for k, v in pairs(nm) do
    if not SKIP_META[k] then
      path[2] = k
      differ(om[k], v, path, 2, changed, removed)
    end
  end
  for k, v in pairs(om) do
    if not SKIP_META[k] and nm[k] == nil then
      path[2] = k
      differ(v, nil, path, 2, changed, removed)
    end
  end
  local function top(k) return k ~= "metadata" and k ~= "status" and k ~= "apiVersion" and k ~= "kind" end
  for k, v in pairs(new) do
    if top(k) then
      path[1] = k
      differ(old[k], v, path, 1, changed, removed)
    end
  end
  for k, v in pairs(old) do
    if top(k) and new[k] == nil then
      path[1] = k
      differ(v, nil, path, 1, changed, removed)
    end
  end
  return changed, removed
end

--- ".spec.requiredConsistency" for a leaf path.
function M.path_text(p)
  return (p:gsub(SEP, "."))
end

local function value_at(obj, p)
  local v = obj
  for k in p:gmatch(SEP .. "([^" .. SEP .. "]*)") do
    if type(v) ~= "table" or v == null then return nil end
    v = v[k]
  end
  return v
end

local function remove_at(obj, p)
  local parts = {}
  for k in p:gmatch(SEP .. "([^" .. SEP .. "]*)") do parts[#parts + 1] = k end
  local chain, v = {}, obj
  for i = 1, #parts - 1 do
    if type(v) ~= "table" then return end
    chain[i] = v
    v = v[parts[i]]
  end
  if type(v) ~= "table" then return end
  v[parts[#parts]] = nil
  -- drop emptied parent maps
  for i = #parts - 1, 1, -1 do
    local parent = chain[i]
    local child = parent[parts[i]]
    if type(child) == "table" and next(child) == nil and not json.is_array(child) then
      parent[parts[i]] = nil
    else
      break
    end
  end
end

-- FieldsV1 {"f:spec":{"f:x":{}}} <-> a set of leaf paths
local function to_fields(set)
  local root = {}
  local paths = {}
  for p in pairs(set) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    local node = root
    for k in p:gmatch(SEP .. "([^" .. SEP .. "]*)") do
      local key = "f:" .. k
      node[key] = node[key] or {}
      node = node[key]
    end
  end
  return root
end

local function from_fields(f, prefix, out)
  local leaf = true
  for k, v in pairs(f) do
    if type(k) == "string" and k:sub(1, 2) == "f:" then
      leaf = false
      from_fields(v, prefix .. SEP .. k:sub(3), out)
    elseif k == "." then
      out[prefix] = true
    end
  end
  if leaf and prefix ~= "" then out[prefix] = true end
  return out
end

local function entries(obj)
  local md = obj.metadata or {}
  local list = {}
  if type(md.managedFields) == "table" then
    for _, e in ipairs(md.managedFields) do
      if type(e) == "table" and type(e.manager) == "string" then
        list[#list + 1] = {
          manager = e.manager, operation = e.operation or "Update", apiVersion = e.apiVersion,
          time = e.time, subresource = e.subresource,
          set = from_fields(type(e.fieldsV1) == "table" and e.fieldsV1 or {}, "", {}),
        }
      end
    end
  end
  return list
end

local function store_entries(obj, list)
  local out = json.array()
  for _, e in ipairs(list) do
    if next(e.set) ~= nil then
      out[#out + 1] = {
        manager = e.manager, operation = e.operation, apiVersion = e.apiVersion,
        time = e.time, fieldsType = "FieldsV1", fieldsV1 = to_fields(e.set),
        subresource = e.subresource,
      }
    end
  end
  obj.metadata.managedFields = #out > 0 and out or nil
end

local function find_entry(list, manager, operation, sub)
  for _, e in ipairs(list) do
    if e.manager == manager and e.operation == operation and e.subresource == sub then return e end
  end
end

-- the node of the FieldsV1 tree f at leaf path p, or nil
local function node_at(f, p)
  local node = f
  for k in p:gmatch(SEP .. "([^" .. SEP .. "]*)") do
    node = type(node) == "table" and node["f:" .. k]
    if not node then return nil end
  end
  return node
end

-- does the FieldsV1 tree f have a node at leaf path p?
local function has_node(f, p) return node_at(f, p) ~= nil end

-- does the FieldsV1 tree f hold leaf path p as a member of its set (a node
-- with no children, or one marked ".")?
local function owns(f, p)
  local node = node_at(f, p)
  if node == nil then return false end
  if type(node) ~= "table" or node["."] then return true end
  for k in pairs(node) do
    if type(k) == "string" and k:sub(1, 2) == "f:" then return false end
  end
  return true
end

-- An update's bookkeeping without reading every entry: only the entries
-- that hold a path the update takes or removes are parsed and written
-- again; the others are copied as they were stored.
local function record_changes(old, new, manager, api_version, now, sub, changed, removed)
  local list = {}
  for _, e in ipairs(type(old.metadata.managedFields) == "table" and old.metadata.managedFields or {}) do
    if type(e) == "table" and type(e.manager) == "string" then
      list[#list + 1] = { raw = e, manager = e.manager, operation = e.operation or "Update", subresource = e.subresource }
    end
  end
  local function parsed(e)
    if not e.set then
      local r = e.raw
      e.set = from_fields(type(r.fieldsV1) == "table" and r.fieldsV1 or {}, "", {})
      e.apiVersion, e.time = r.apiVersion, r.time
    end
    return e.set
  end
  local function drop(e, p)
    local f = e.raw and e.raw.fieldsV1
    if e.set or (type(f) == "table" and has_node(f, p)) then parsed(e)[p] = nil end
  end
  for p in pairs(removed) do
    for _, e in ipairs(list) do drop(e, p) end
  end
  if next(changed) ~= nil then
    local mine = find_entry(list, manager, "Update", sub)
    for _, e in ipairs(list) do
      if e ~= mine then
        for p in pairs(changed) do drop(e, p) end
      end
    end
    if not mine then
      mine = { manager = manager, operation = "Update", subresource = sub, set = {} }
      list[#list + 1] = mine
    end
    -- a manager writing again what it owns (a controller's status) keeps
    -- its entry's fields as stored: only the time and version are new
    local f = not mine.set and mine.raw.fieldsV1
    local same = type(f) == "table"
    if same then
      for p in pairs(changed) do
        if not owns(f, p) then same = false break end
      end
    end
    if same then
      mine.touched = true
    elseif type(f) == "table" then
      -- new fields for an entry that lost none: added to a copy of its
      -- tree (what parsing it into a set, adding and writing it out makes)
      local t = copy(f)
      for p in pairs(changed) do
        local node = t
        for k in p:gmatch(SEP .. "([^" .. SEP .. "]*)") do
          local key = "f:" .. k
          local child = node[key]
          if type(child) ~= "table" then
            child = {}
            node[key] = child
          end
          node = child
        end
      end
      mine.touched, mine.tree = true, t
    else
      local set = parsed(mine)
      for p in pairs(changed) do set[p] = true end
    end
    mine.time = now
    mine.apiVersion = api_version
  end
  local out = json.array()
  for _, e in ipairs(list) do
    if not e.set then
      local x = {}
      for k, v in pairs(e.raw) do
        if k ~= "fieldsV1" then x[k] = copy(v) end
      end
      x.fieldsV1 = e.tree or copy(e.raw.fieldsV1)
      if e.touched then x.time, x.apiVersion = e.time, e.apiVersion end
      out[#out + 1] = x
    elseif next(e.set) ~= nil then
      out[#out + 1] = { manager = e.manager, operation = e.operation, apiVersion = e.apiVersion,
        time = e.time, fieldsType = "FieldsV1", fieldsV1 = to_fields(e.set), subresource = e.subresource }
    end
  end
  new.metadata.managedFields = #out > 0 and out or nil
end

-- the FieldsV1 tree of the leaf paths under v, as collect would list them
local function tree(v)
  local node = {}
  for k, x in pairs(v) do
    node["f:" .. k] = (is_object(x) and next(x) ~= nil) and tree(x) or {}
  end
  return node
end

-- to_fields(M.leaves(obj)) of a new object, walked once (no leaf set, no
-- path texts)
local function fields_of(obj)
  local root = {}
  for k, v in pairs(obj) do
    if k == "metadata" then
      if type(v) == "table" then
        local m
        for mk, mv in pairs(v) do
          if not SKIP_META[mk] then
            m = m or {}
            m["f:" .. mk] = (is_object(mv) and next(mv) ~= nil) and tree(mv) or {}
          end
        end
        if m then root["f:metadata"] = m end
      end
    elseif k ~= "status" and k ~= "apiVersion" and k ~= "kind" then
      root["f:" .. k] = (is_object(v) and next(v) ~= nil) and tree(v) or {}
    end
  end
  return root
end
M.fields_of = fields_of

--- Record an Update by `manager`: it takes the leaf paths whose values
--- changed between old and new (all of new's on a create).
function M.record_update(old, new, manager, api_version, now, sub)
  if old == nil and sub == nil and type(new.metadata) == "table" and new.metadata.managedFields == nil then
    -- a create: the one entry owns every field
    local f = fields_of(new)
    new.metadata.managedFields = next(f) ~= nil and json.array({ { manager = manager, operation = "Update",
      apiVersion = api_version, time = now, fieldsType = "FieldsV1", fieldsV1 = f } }) or nil
    return
  end
  if old and type(old.metadata) == "table" then
    local changed, removed = M.changes(old, new, sub == "status")
    return record_changes(old, new, manager, api_version, now, sub, changed, removed)
  end
  return M.record_by_leaves(old, new, manager, api_version, now, sub)
end

--- record_update by its definition: every entry parsed into its leaf set,
--- the sets changed, every entry written out again (the walk above must
--- give what this gives: apiserver_units_spec)
function M.record_by_leaves(old, new, manager, api_version, now, sub)
  local list = entries(old or new)
  local status_only = sub == "status"
  local before = old and M.leaves(old, status_only) or {}
  local after = M.leaves(new, status_only)
  local changed = {}
  for p, v in pairs(after) do
    if not equal(before[p], v) then changed[p] = true end
  end
  for p in pairs(before) do
    if after[p] == nil then
      -- removed: nobody owns it any more
      for _, e in ipairs(list) do e.set[p] = nil end
    end
  end
  if next(changed) ~= nil then
    for _, e in ipairs(list) do
      if not (e.manager == manager and e.operation == "Update" and e.subresource == sub) then
        for p in pairs(changed) do e.set[p] = nil end
      end
    end
    local e = find_entry(list, manager, "Update", sub)
    if not e then
      e = { manager = manager, operation = "Update", apiVersion = api_version, subresource = sub, set = {} }
      list[#list + 1] = e
    end
    for p in pairs(changed) do e.set[p] = true end
    e.time = now
    e.apiVersion = api_version
  end
  store_entries(new, list)
end

local function deep_apply(live, applied)
  -- maps merge; everything else is replaced
  if not is_object(applied) or not is_object(live) then return copy(applied) end
  local out = copy(live)
  for k, v in pairs(applied) do
    out[k] = deep_apply(out[k], v)
  end
  return out
end

--- Server-side apply of `applied` (a decoded object) by `manager` onto live
--- (nil when the object does not exist). Returns the new object, or nil and
--- the conflicts {path_text, manager, apiVersion}.
function M.apply(live, applied, manager, force, api_version, now, sub)
  local status_only = sub == "status"
  local base = live and copy(live) or { metadata = {} }
  local list = entries(base)
  local mine = M.leaves(applied, status_only)
  local conflicts = {}
  for p, v in pairs(mine) do
    local lv = live and value_at(live, p)
    if live and not equal(lv, v) then
      for _, e in ipairs(list) do
        if e.manager ~= manager and e.set[p] then
          if force then
            e.set[p] = nil
          else
            conflicts[#conflicts + 1] = { path = M.path_text(p), manager = e.manager, apiVersion = e.apiVersion }
          end
        end
      end
    end
  end
  if #conflicts > 0 then
    table.sort(conflicts, function(a, b) return a.path < b.path end)
    return nil, conflicts
  end
  -- fields this manager applied before and no longer applies
  local prev = find_entry(list, manager, "Apply", sub)
  local result = base
  if prev then
    for p in pairs(prev.set) do
      if mine[p] == nil then
        local owned = false
        for _, e in ipairs(list) do
          if e ~= prev and e.set[p] then owned = true break end
        end
        if not owned then remove_at(result, p) end
      end
    end
  end
  for k, v in pairs(applied) do
    if k == "metadata" then
      for mk, mv in pairs(v) do
        if not SKIP_META[mk] or mk == "name" or mk == "namespace" then
          result.metadata[mk] = deep_apply(result.metadata[mk], mv)
        end
      end
    elseif k == "status" then
      if status_only then result.status = deep_apply(result.status, v) end
    elseif not status_only or k == "apiVersion" or k == "kind" then
      result[k] = deep_apply(result[k], v)
    end
  end
  if not prev then
    prev = { manager = manager, operation = "Apply", subresource = sub }
    list[#list + 1] = prev
  end
  prev.set = {}
  for p in pairs(mine) do prev.set[p] = true end
  prev.time = now
  prev.apiVersion = api_version
  store_entries(result, list)
  return result
end

--- The Conflict message of a failed apply.
function M.conflict_message(conflicts)
  local by = {}
  local order = {}
  for _, c in ipairs(conflicts) do
    local key = ('"%s" using %s'):format(c.manager, c.apiVersion or "v1")
    if not by[key] then by[key] = {}; order[#order + 1] = key end
    table.insert(by[key], c.path)
  end
  local n = #conflicts
  local parts = {}
  for _, key in ipairs(order) do
    local paths = by[key]
    if #paths == 1 then
      parts[#parts + 1] = ("conflict with %s: %s"):format(key, paths[1])
    else
      parts[#parts + 1] = ("conflicts with %s:\n- %s"):format(key, table.concat(paths, "\n- "))
    end
  end
  return ("Apply failed with %d conflict%s: %s"):format(n, n == 1 and "" or "s", table.concat(parts, "\n"))
end

return M
