--- vmsnap.apiserver.select: label and field selectors, as the Kubernetes API
--- parses them (`labelSelector=`, `fieldSelector=` query parameters).
---
--- `parse_labels(text)` and `parse_fields(text, allowed)` return a matcher
--- function, or `nil, message` for a malformed selector (the server answers
--- 400 BadRequest with that message).
local M = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- alphanumeric at both ends, `inner` characters between
local function ends_alnum(s, inner)
  return s:match("^%w$") ~= nil or s:match("^%w[" .. inner .. "]*%w$") ~= nil
end

-- a label key: optional DNS prefix and "/", then a name of at most 63 characters
local function valid_key(k)
  local prefix, name = k:match("^(.*)/(.*)$")
  if not prefix then name = k end
  if prefix and (#prefix == 0 or #prefix > 253 or prefix:match("[A-Z]") or not ends_alnum(prefix, "%w.-")) then
    return false
  end
  return #name > 0 and #name <= 63 and ends_alnum(name, "%w._-")
end

local function valid_value(v)
  return v == "" or (#v <= 63 and ends_alnum(v, "%w._-"))
end

-- split on commas that are outside parentheses
local function split_terms(text)
  local terms, depth, start = {}, 0, 1
  for i = 1, #text do
    local c = text:sub(i, i)
    if c == "(" then depth = depth + 1
    elseif c == ")" then depth = depth - 1
    elseif c == "," and depth == 0 then
      terms[#terms + 1] = text:sub(start, i - 1)
      start = i + 1
    end
  end
  terms[#terms + 1] = text:sub(start)
  return terms
end

local function parse_set(s)
  local inner = s:match("^%((.*)%)$")
  if not inner then return nil end
  local set = {}
  for v in (inner .. ","):gmatch("([^,]*),") do
    v = trim(v)
    if not valid_value(v) then return nil end
    set[v] = true
  end
  return set
end

local function requirement(term)
  term = trim(term)
  local bad = "unable to parse requirement: " .. term
  local k, rest
  k, rest = term:match("^(%S+)%s+notin%s*(%(.*%))$")
  if k then
    local set = parse_set(rest)
    if not set or not valid_key(k) then return nil, bad end
    return function(l) return l[k] == nil or not set[l[k]] end
  end
  k, rest = term:match("^(%S+)%s+in%s*(%(.*%))$")
  if k then
    local set = parse_set(rest)
    if not set or not valid_key(k) then return nil, bad end
    return function(l) return l[k] ~= nil and set[l[k]] == true end
  end
  local key, op, val = term:match("^([^!=<>%s]+)%s*([!=<>]=?=?)%s*(.-)$")
  if key and op ~= "" then
    if not valid_key(key) then return nil, bad end
    if op == "=" or op == "==" then
      if not valid_value(val) then return nil, bad end
      return function(l) return l[key] == val end
    elseif op == "!=" then
      if not valid_value(val) then return nil, bad end
      return function(l) return l[key] ~= val end
    elseif op == ">" or op == "<" then
      local n = tonumber(val)
      if not n or math.type(n) ~= "integer" then return nil, bad .. ": for 'gt', 'lt' operators, exactly one value is required and it must be an integer" end
      return function(l)
        local v = l[key] and tonumber(l[key])
        if not v then return false end
        if op == ">" then return v > n end
        return v < n
      end
    end
    return nil, bad
  end
  local neg, name = term:match("^(!?)%s*(%S+)$")
  if name and valid_key(name) then
    if neg == "!" then
      return function(l) return l[name] == nil end
    end
    return function(l) return l[name] ~= nil end
  end
  return nil, bad
end

--- A matcher over a labels table, or nil, message.
---@param text string?
---@return (fun(labels: table): boolean)?, string?
function M.parse_labels(text)
  if text == nil or trim(text) == "" then return nil end
  local reqs = {}
  for _, term in ipairs(split_terms(text)) do
    local f, err = requirement(term)
    if not f then return nil, err end
    reqs[#reqs + 1] = f
  end
  return function(labels)
    labels = labels or {}
    for i = 1, #reqs do
      if not reqs[i](labels) then return false end
    end
    return true
  end
end

-- split on unescaped commas; returns the raw terms
local function split_escaped(text, sep)
  local out, cur, i = {}, {}, 1
  while i <= #text do
    local c = text:sub(i, i)
    if c == "\\" and i < #text then
      cur[#cur + 1] = text:sub(i, i + 1)
      i = i + 2
    else
      if c == sep then
        out[#out + 1] = table.concat(cur)
        cur = {}
      else
        cur[#cur + 1] = c
      end
      i = i + 1
    end
  end
  out[#out + 1] = table.concat(cur)
  return out
end

local function unescape(s)
  return (s:gsub("\\(.)", "%1"))
end

--- The value of a dotted field path in obj, as a string (nil when absent).
function M.field_value(obj, path)
  local v = obj
  for part in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  if v == nil or type(v) == "table" then return nil end
  return tostring(v)
end

--- A matcher over an object for a field selector, or nil, message; and
--- third, the equalities it requires ({[field] = value}: with
--- `metadata.name` among them, a store can look the objects up by name
--- instead of reading them all). `allowed(field)` says whether a field may
--- be selected on.
---@param text string?
---@param allowed fun(field: string): boolean
function M.parse_fields(text, allowed)
  if text == nil or trim(text) == "" then return nil end
  local reqs = {}
  for _, term in ipairs(split_escaped(text, ",")) do
    term = trim(term)
    -- find the operator outside escapes
    local field, op, val
    local i = 1
    while i <= #term do
      local c = term:sub(i, i)
      if c == "\\" then
        i = i + 2
      elseif c == "!" and term:sub(i + 1, i + 1) == "=" then
        field, op, val = term:sub(1, i - 1), "!=", term:sub(i + 2)
        break
      elseif c == "=" then
        if term:sub(i + 1, i + 1) == "=" then
          field, op, val = term:sub(1, i - 1), "=", term:sub(i + 2)
        else
          field, op, val = term:sub(1, i - 1), "=", term:sub(i + 1)
        end
        break
      else
        i = i + 1
      end
    end
    if not field then
      return nil, ("invalid selector: '%s'; can't understand '%s'"):format(text, term)
    end
    field, val = unescape(trim(field)), unescape(val)
    if not allowed(field) then
      return nil, ('field label not supported: %s'):format(field)
    end
    reqs[#reqs + 1] = { field, op, val }
  end
  local equal = {}
  for _, r in ipairs(reqs) do
    if r[2] == "=" then
      -- two different values for one field match nothing: keep a marker
      if equal[r[1]] ~= nil and equal[r[1]] ~= r[3] then equal[r[1]] = false else equal[r[1]] = r[3] end
    end
  end
  return function(obj)
    for i = 1, #reqs do
      local r = reqs[i]
      local v = M.field_value(obj, r[1]) or ""
      if r[2] == "=" then
        if v ~= r[3] then return false end
      elseif v == r[3] then
        return false
      end
    end
    return true
  end, nil, equal
end

return M
