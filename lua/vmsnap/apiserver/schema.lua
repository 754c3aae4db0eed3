--- vmsnap.apiserver.schema: structural OpenAPI v3 schemas as CRDs carry them:
--- defaulting, pruning of unknown fields, and validation with the field paths
--- and messages of the Kubernetes API server.
---
--- `apply(schema, obj, opts)` defaults and validates obj in place. It returns
--- the list of causes (`{reason, field, message}`) and the list of unknown
--- field paths (pruned from obj unless opts.keep_unknown).
local json = require("vmsnap.json")

local M = {}

--- The quick checks of plain leaves (below); off only in the test that
--- compares them with the whole walk.
M.quick = true

local null = json.null

local deep = require("vmsnap.deep")
local copy, equal = deep.copy, deep.equal
M.copy = copy

local function quote(v)
  if type(v) == "string" then return ('"%s"'):format(v) end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

local function is_array(v)
  if type(v) ~= "table" then return false end
  if json.is_array(v) then return true end
  if next(v) == nil then return false end
  return #v > 0 and next(v, #v) == nil
end

local function type_of(v)
  if v == null then return "null" end
  local t = type(v)
  if t == "string" then return "string" end
  if t == "boolean" then return "boolean" end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" then return is_array(v) and "array" or "object" end
  return t
end

local regex = require("vmsnap.apiserver.regex")
local vtime = require("vmsnap.time")
local cel = require("vmsnap.apiserver.cel")

--- The compiled `pattern`, or nil and why it is not one vmsnap can check.
M.regex = regex.cached
--- The compiled CEL rule, or nil and why vmsnap cannot evaluate it.
M.rule = cel.cached

-- what a schema node's `field` compiles to, kept with the node for as long
-- as its CRD is served (the caches by text above are weak: a collection
-- would have thrown every compiled form away between two writes); false
-- when it does not compile (that CRD was refused)
local compiled = setmetatable({}, { __mode = "k" })
local function compiled_of(node, field, compile)
  local per = compiled[node]
  if not per then
    per = {}
    compiled[node] = per
  end
  local c = per[field]
  if c == nil then
    c = compile(node[field]) or false
    per[field] = c
  end
  return c or nil
end

local B64 = "^[A-Za-z0-9+/]*=?=?$"

-- the formats Kubernetes checks (the others are accepted as they are)
-- the date-times found good lately (a status write carries the same
-- lastTransitionTime again and again; parsing one is most of its check)
local good_times, n_good = {}, 0
local function date_time(v)
  if good_times[v] then return true end
  local ok = vtime.parse(v) ~= nil and v:match("^%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d") ~= nil
  if ok then
    if n_good >= 512 then good_times, n_good = {}, 0 end
    good_times[v], n_good = true, n_good + 1
  end
  return ok
end

local FORMATS = {
  ["date-time"] = date_time,
  date = function(v)
    local y, m, d = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
    return y ~= nil and tonumber(m) >= 1 and tonumber(m) <= 12 and tonumber(d) >= 1 and tonumber(d) <= 31
  end,
  byte = function(v) return #v % 4 == 0 and v:match(B64) ~= nil end,
  uuid = function(v) return v:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil end,
}

-- the properties of an object schema that have defaults: {name, default}
-- pairs, kept with the node (a write used to go through every property)
local function defaults_of(props)
  local d = {}
  for name, ps in pairs(props or {}) do
    if ps.default ~= nil then d[#d + 1] = { name, ps.default } end
  end
  return d
end

-- the keys of a table in order: by text, all strings sorted without a
-- comparator (the Lua callback per comparison was most of a walk)
local function by_text(a, b) return tostring(a) < tostring(b) end
local function sorted_keys(v)
  local keys, strings = {}, true
  for k in pairs(v) do
    keys[#keys + 1] = k
    if strings and type(k) ~= "string" then strings = false end
  end
  if #keys > 1 then
    if strings then table.sort(keys) else table.sort(keys, by_text) end
  end
  return keys
end

local function unsorted_keys(v)
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  return keys
end

local apply_once -- below

local function join(path, key)
  if path == "" then return key end
  return path .. "." .. key
end

-- x-kubernetes-validations of s on v (oldv: the same field before an update;
-- a rule with oldSelf is a transition rule, checked only when there is one)
local function v_rules(s, v, path, out, oldv, vt)
  for _, r in ipairs(type(s["x-kubernetes-validations"]) == "table" and s["x-kubernetes-validations"] or {}) do
    local prog = type(r) == "table" and type(r.rule) == "string" and compiled_of(r, "rule", M.rule)
    if prog and (not prog.old or oldv ~= nil) then
      local res, err = prog:eval({ self = v, oldSelf = oldv })
      if res ~= true then
        local what = r.message or ("failed rule: " .. tostring(r.rule))
        if res == nil then
          what = ("%s: %s"):format(what, err)
        elseif type(r.messageExpression) == "string" then
          local mp = compiled_of(r, "messageExpression", M.rule)
          local m = mp and mp:eval({ self = v, oldSelf = oldv })
          if type(m) == "string" and m ~= "" then what = m end
        end
        local field = path
        if type(r.fieldPath) == "string" and r.fieldPath ~= "" then field = path .. r.fieldPath end
        out.causes[#out.causes + 1] = { reason = r.reason or "FieldValueInvalid", field = field,
          message = ('Invalid value: "%s": %s'):format(vt or "object", what) }
      end
    end
  end
end

local has_transition_rules -- below

-- list items' identities (x-kubernetes-list-type set and map): exact (1 and
-- "1" differ), a string's without encoding it; and how a duplicate is shown
local function item_id(x)
  local t = type(x)
  if t == "string" then return "s" .. x end
  if t == "number" then return "n" .. json.encode(x) end
  return "j" .. (json.encode(x) or "")
end
local function map_id(item, keys)
  if type(item) ~= "table" then return nil end
  if #keys == 1 then return item_id(item[keys[1]] == nil and null or item[keys[1]]) end
  local parts = {}
  for j, k in ipairs(keys) do parts[j] = item_id(item[k] == nil and null or item[k]) end
  return table.concat(parts, "\0")
end
local function shown_item(x)
  if type(x) == "string" then return quote(x) end
  return json.encode(x) or ""
end
local function shown_map(item, keys)
  local kv = {}
  for j, k in ipairs(keys) do kv[j] = ('"%s":%s'):format(k, json.encode(item[k] == nil and null or item[k]) or "") end
  return ("map[string]interface {}{%s}"):format(table.concat(kv, ", "))
end

-- what a leaf's check comes down to, worked out once per schema node: a
-- scalar whose only constraint is its type (and a string's enum of
-- strings) is accepted by a type test and a set look-up, without the walk
-- through every keyword below; anything else (or a value that fails the
-- quick test) goes the whole way, which says why
local LEAF_TYPES = { string = true, boolean = true, integer = true, number = true }
local NOT_LEAF = { "x-kubernetes-int-or-string", "x-kubernetes-validations", "anyOf", "oneOf", "not",
  "minLength", "maxLength", "pattern", "minimum", "maximum" }
local function leaf_plan(s)
  local p = {}
  local ty = s.type
  if not LEAF_TYPES[ty] then return p end
  for _, k in ipairs(NOT_LEAF) do
    if s[k] ~= nil then return p end
  end
  if ty ~= "string" and s.format == "int32" then return p end
  if ty == "string" then p.format = FORMATS[s.format] end
  if s.enum ~= nil then
    if ty ~= "string" or type(s.enum) ~= "table" then return p end
    local set = {}
    for _, e in ipairs(s.enum) do
      if type(e) == "string" then set[e] = true end
    end
    p.enum = set
  end
  p.leaf = ty
  return p
end
local plans = setmetatable({}, { __mode = "k" })
local math_type = math.type

-- does the quick test accept v for s (nothing to say, nothing to walk)?
local function quick_ok(s, v)
  local plan = plans[s]
  if not plan then
    plan = leaf_plan(s)
    plans[s] = plan
  end
  local leaf = M.quick and plan.leaf
  if leaf then
    local t = type(v)
    if t == leaf then
      return (not plan.enum or plan.enum[v]) and (not plan.format or plan.format(v))
    elseif t == "number" then
      return leaf == "number" or (leaf == "integer" and math_type(v) == "integer")
    end
  end
  return false
end

local function v_schema(s, v, path, out, oldv)
  if quick_ok(s, v) then return end
  -- defaults of the children first (structural defaulting happens before validation)
  local vt = type_of(v)
  if vt == "null" then
    if not s.nullable then
      out.causes[#out.causes + 1] = { reason = "FieldValueTypeInvalid", field = path,
        message = ('Invalid value: "null": %s in body must be of type %s: "null"'):format(path, s.type or "object") }
    end
    return
  end
  if s["x-kubernetes-int-or-string"] then
    if vt ~= "integer" and vt ~= "string" then
      out.causes[#out.causes + 1] = { reason = "FieldValueTypeInvalid", field = path,
        message = ('Invalid value: "%s": %s in body must be of type integer-or-string: "%s"'):format(vt, path, vt) }
    end
  elseif s.type then
    local ok = vt == s.type or (s.type == "number" and vt == "integer")
      or (s.type == "object" and vt == "array" and next(v) == nil)
      or (s.type == "array" and vt == "object" and next(v) == nil)
    if not ok then
      out.causes[#out.causes + 1] = { reason = "FieldValueTypeInvalid", field = path,
        message = ('Invalid value: "%s": %s in body must be of type %s: "%s"'):format(vt, path, s.type, vt) }
      return
    end
    vt = s.type
  end
  if s.enum then
    local found = false
    for _, e in ipairs(s.enum) do
      if e == v then found = true break end
    end
    if not found then
      local opts = {}
      for i, e in ipairs(s.enum) do opts[i] = quote(e) end
      out.causes[#out.causes + 1] = { reason = "FieldValueNotSupported", field = path,
        message = ("Unsupported value: %s: supported values: %s"):format(quote(v), table.concat(opts, ", ")) }
    end
  end
  if vt == "string" and type(v) == "string" then
    local n = utf8.len(v) or #v
    if s.minLength and n < s.minLength then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %s: %s in body should be at least %d chars long'):format(quote(v), path, s.minLength) }
    end
    if s.maxLength and n > s.maxLength then
      out.causes[#out.causes + 1] = { reason = "FieldValueTooLong", field = path,
        message = ('Too long: may not be more than %d bytes'):format(s.maxLength) }
    end
    if type(s.pattern) == "string" then
      local re = compiled_of(s, "pattern", M.regex)
      -- a pattern vmsnap cannot compile was refused with its CRD
      if re and not re:find(v) then
        out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
          message = ("Invalid value: %s: %s in body should match '%s'"):format(quote(v), path, s.pattern) }
      end
    end
    local fmt = s.format and FORMATS[s.format]
    if fmt and not fmt(v) then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %s: %s in body must be of type %s: %s'):format(quote(v), path, s.format, quote(v)) }
    end
  elseif (vt == "integer" or vt == "number") and type(v) == "number" then
    if s.minimum and v < s.minimum then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %s: %s in body should be greater than or equal to %s'):format(v, path, s.minimum) }
    end
    if s.maximum and v > s.maximum then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %s: %s in body should be less than or equal to %s'):format(v, path, s.maximum) }
    end
    if s.format == "int32" and (v < -2147483648 or v > 2147483647) then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %s: %s in body must be of type int32: "%s"'):format(v, path, v) }
    end
  elseif vt == "array" and type(v) == "table" then
    if s.minItems and #v < s.minItems then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ('Invalid value: %d: %s in body should have at least %d items'):format(#v, path, s.minItems) }
    end
    if s.maxItems and #v > s.maxItems then
      out.causes[#out.causes + 1] = { reason = "FieldValueTooMany", field = path,
        message = ("Too many: %d: must have at most %d items"):format(#v, s.maxItems) }
    end
    local lt = s["x-kubernetes-list-type"]
    local keys = lt == "map" and (s["x-kubernetes-list-map-keys"] or {}) or nil
    -- an item's identity: a map list's by its keys, a set's by its value
    local ids
    if lt == "map" or lt == "set" then
      ids = {}
      for i = 1, #v do ids[i] = lt == "set" and item_id(v[i]) or map_id(v[i], keys) end
    end
    if s.items then
      -- on an update the items of a map list are matched with the old ones
      -- by their keys (ratcheting: an item as it was is not checked again)
      local olds
      if out.old and lt == "map" and type(oldv) == "table" and #oldv > 0 then
        local by = {}
        for _, item in ipairs(oldv) do
          local id = map_id(item, keys)
          if id then by[id] = item end
        end
        olds = {}
        for i = 1, #v do olds[i] = ids[i] and by[ids[i]] end
      end
      local items = s.items
      for i = 1, #v do
        -- (a leaf the quick test accepts needs no path: none is made)
        if not quick_ok(items, v[i]) then M.walk(items, v, i, ("%s[%d]"):format(path, i - 1), out, olds) end
      end
    end
    if ids then
      local seen = {}
      for i = 1, #v do
        local id = ids[i]
        if id then
          if seen[id] then
            out.causes[#out.causes + 1] = { reason = "FieldValueDuplicate", field = ("%s[%d]"):format(path, i - 1),
              message = ("Duplicate value: %s"):format(lt == "set" and shown_item(v[i]) or shown_map(v[i], keys)) }
          end
          seen[id] = true
        end
      end
    end
  elseif vt == "object" and type(v) == "table" then
    local props = s.properties
    if s["x-kubernetes-embedded-resource"] then
      props = props or {}
    end
    if props then
      for _, d in ipairs(compiled_of(s, "properties", defaults_of)) do
        if v[d[1]] == nil then
          v[d[1]] = copy(d[2])
          if out.filled then out.filled[#out.filled + 1] = { v, d[1] } end
        end
      end
    end
    if s.maxProperties or s.minProperties then
      -- (counted as Kubernetes counts them: after the defaults, without the
      -- unknown fields pruning takes off; its reasons: TooMany, and Invalid)
      local any = s.additionalProperties ~= nil and s.additionalProperties ~= false
        or s["x-kubernetes-preserve-unknown-fields"] == true
      local n = 0
      local embedded = s["x-kubernetes-embedded-resource"]
      for k in pairs(v) do
        if any or (props and props[k])
            or (embedded and (k == "apiVersion" or k == "kind" or k == "metadata")) then n = n + 1 end
      end
      if s.maxProperties and n > s.maxProperties then
        out.causes[#out.causes + 1] = { reason = "FieldValueTooMany", field = path,
          message = ("Too many: %d: must have at most %d properties"):format(n, s.maxProperties) }
      end
      if s.minProperties and n < s.minProperties then
        out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
          message = ("Invalid value: %d: %s in body should have at least %d properties"):format(n, path, s.minProperties) }
      end
    end
    if s.required then
      for _, name in ipairs(s.required) do
        if v[name] == nil then
          out.causes[#out.causes + 1] = { reason = "FieldValueRequired", field = join(path, name),
            message = "Required value" }
        end
      end
    end
    -- (the first try goes in no order: see M.apply)
    local keys = not out.unsorted and sorted_keys(v) or nil
    local i, k = 0, nil
    while true do
      if keys then
        i = i + 1
        k = keys[i]
      else
        k = next(v, k)
      end
      if k == nil then break end
      local ps = props and props[k]
      if not ps and type(s.additionalProperties) == "table" then ps = s.additionalProperties end
      if ps then
        if not quick_ok(ps, v[k]) then
          M.walk(ps, v, k, join(path, tostring(k)), out, type(oldv) == "table" and oldv or nil)
        end
      elseif s.additionalProperties == true or s["x-kubernetes-preserve-unknown-fields"] then
        -- kept as is
      elseif props or s.additionalProperties == false or s.type == "object" then
        if not (s["x-kubernetes-embedded-resource"] and (k == "apiVersion" or k == "kind" or k == "metadata")) then
          out.unknown[#out.unknown + 1] = join(path, tostring(k))
          if not out.keep_unknown then v[k] = nil end
        end
      end
    end
  end
  if s.anyOf or s.oneOf or s["not"] then
    local function valid(sub)
      local o = { causes = {}, unknown = {}, keep_unknown = true }
      v_schema(sub, copy(v), path, o)
      return #o.causes == 0
    end
    if type(s.anyOf) == "table" then
      local any = false
      for _, sub in ipairs(s.anyOf) do if valid(sub) then any = true break end end
      if not any then
        out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
          message = ("Invalid value: %s: %s in body must validate at least one schema (anyOf)"):format(quote(v), path) }
      end
    end
    if type(s.oneOf) == "table" then
      local n = 0
      for _, sub in ipairs(s.oneOf) do if valid(sub) then n = n + 1 end end
      if n ~= 1 then
        out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
          message = ("Invalid value: %s: %s in body must validate one and only one schema (oneOf)"):format(quote(v), path) }
      end
    end
    if type(s["not"]) == "table" and valid(s["not"]) then
      out.causes[#out.causes + 1] = { reason = "FieldValueInvalid", field = path,
        message = ("Invalid value: %s: %s in body must not validate the schema (not)"):format(quote(v), path) }
    end
  end
  if s["x-kubernetes-validations"] ~= nil then v_rules(s, v, path, out, oldv, s.type or vt) end
end

--- The causes of value against schema s at path (nothing changed, nothing
--- pruned): a CRD's defaults are checked this way.
function M.check(s, value, path)
  local out = { causes = {}, unknown = {}, keep_unknown = true }
  v_schema(s, copy(value), path, out)
  return out.causes
end

-- does schema s hold, anywhere below, a rule with oldSelf (a transition
-- rule)? Kubernetes never ratchets those: a subtree under one is checked
-- even when it did not change. Kept with the node.
local transition = setmetatable({}, { __mode = "k" })
function has_transition_rules(s)
  if type(s) ~= "table" then return false end
  local known = transition[s]
  if known ~= nil then return known end
  transition[s] = false -- (a recursive schema ends here)
  local found = false
  for _, r in ipairs(type(s["x-kubernetes-validations"]) == "table" and s["x-kubernetes-validations"] or {}) do
    if type(r) == "table" and type(r.rule) == "string" and r.rule:find("oldSelf", 1, true) then found = true end
  end
  local function sub(x) if not found and has_transition_rules(x) then found = true end end
  for _, ps in pairs(type(s.properties) == "table" and s.properties or {}) do sub(ps) end
  sub(s.items)
  sub(s.additionalProperties)
  for _, k in ipairs({ "anyOf", "oneOf", "allOf" }) do
    for _, x in ipairs(type(s[k]) == "table" and s[k] or {}) do sub(x) end
  end
  sub(s["not"])
  transition[s] = found
  return found
end

--- Validate the value parent[key] against schema s (defaults already
--- applied by the parent). On an update (`out.old`), an object or list that
--- is as it was is not checked again: validation ratcheting, as Kubernetes
--- does it since 1.30 (a status write does not walk the spec; an object
--- stored before its CRD grew stricter can still be updated elsewhere).
function M.walk(s, parent, key, path, out, oldparent)
  local v, oldv = parent[key], oldparent and oldparent[key]
  if out.old and oldv ~= nil and (v == oldv or (type(v) == "table" and type(oldv) == "table" and equal(v, oldv)))
      and not has_transition_rules(s) then
    return
  end
  v_schema(s, v, path, out, oldv)
end

--- Default, prune and validate the parts of obj the schema describes
--- (everything but apiVersion, kind and metadata).
---@param schema table  the openAPIV3Schema
---@param obj table
---@param opts? {keep_unknown?: boolean}
---@return table causes, table unknown
function M.apply(schema, obj, opts)
  if not schema then return {}, {} end
  -- first in no order and pruning nothing: with no cause and no unknown
  -- field (nearly every write) that is the answer, and the fields were
  -- never sorted (a tenth of a write's validation); else again, in order
  local trial = { causes = {}, unknown = {}, keep_unknown = true, old = opts and opts.old, unsorted = true,
    filled = {} }
  apply_once(schema, obj, trial)
  if #trial.causes == 0 and #trial.unknown == 0 then return trial.causes, trial.unknown end
  -- the second pass sees the object as it came: the trial's defaults would
  -- make a subtree equal to the stored one, and ratcheting skip its fault
  local filled = trial.filled
  for i = #filled, 1, -1 do filled[i][1][filled[i][2]] = nil end
  local out = { causes = {}, unknown = {}, keep_unknown = opts and opts.keep_unknown, old = opts and opts.old }
  apply_once(schema, obj, out)
  return out.causes, out.unknown
end

function apply_once(schema, obj, out)
  local props = schema.properties or {}
  for name, ps in pairs(props) do
    if name ~= "metadata" and name ~= "apiVersion" and name ~= "kind" and obj[name] == nil and ps.default ~= nil then
      obj[name] = copy(ps.default)
      if out.filled then out.filled[#out.filled + 1] = { obj, name } end
    end
  end
  if schema.required then
    for _, name in ipairs(schema.required) do
      if name ~= "metadata" and name ~= "apiVersion" and name ~= "kind" and obj[name] == nil then
        out.causes[#out.causes + 1] = { reason = "FieldValueRequired", field = name, message = "Required value" }
      end
    end
  end
  for _, k in ipairs(out.unsorted and unsorted_keys(obj) or sorted_keys(obj)) do
    if k ~= "metadata" and k ~= "apiVersion" and k ~= "kind" then
      local ps = props[k]
      if ps then
        M.walk(ps, obj, k, k, out, out.old)
      elseif not schema["x-kubernetes-preserve-unknown-fields"] then
        out.unknown[#out.unknown + 1] = k
        if not out.keep_unknown then obj[k] = nil end
      end
    end
  end
  if schema["x-kubernetes-validations"] ~= nil then v_rules(schema, obj, "", out, out.old, "object") end
end

return M
