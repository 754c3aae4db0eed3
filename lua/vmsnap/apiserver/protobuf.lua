--- vmsnap.apiserver.protobuf: decoding of the Kubernetes protobuf envelope
--- for the kinds kubectl's generator commands send that way (`kubectl create
--- namespace|secret|configmap|serviceaccount|role|rolebinding|clusterrole|
--- clusterrolebinding|token`, `kubectl auth whoami|can-i`). Field numbers are those of k8s.io/api's
--- generated.proto. Answers are always JSON, which kubectl accepts.
local json = require("vmsnap.json")

local M = {}

-- Fields of a message: {num = {values...}}, each value a number or a string.
local function fields(buf)
  local out = {}
  local i, n = 1, #buf
  local function varint()
    local v, shift = 0, 0
    while true do
      if i > n then error("truncated varint", 0) end
      local b = buf:byte(i)
      i = i + 1
      v = v | ((b & 0x7f) << shift)
      if b < 0x80 then return v end
      shift = shift + 7
      if shift > 63 then error("varint too long", 0) end
    end
  end
  while i <= n do
    local key = varint()
    local num, wt = key >> 3, key & 7
    local v
    if wt == 0 then
      v = varint()
    elseif wt == 1 then
      v = buf:sub(i, i + 7); i = i + 8
    elseif wt == 2 then
      local len = varint()
      if i + len - 1 > n then error("truncated field", 0) end
      v = buf:sub(i, i + len - 1)
      i = i + len
    elseif wt == 5 then
      v = buf:sub(i, i + 3); i = i + 4
    else
      error("unsupported wire type " .. wt, 0)
    end
    local list = out[num]
    if not list then list = {}; out[num] = list end
    list[#list + 1] = v
  end
  return out
end

local function str(f, num)
  local v = f[num] and f[num][#f[num]]
  if v == nil or v == "" then return nil end -- proto2 sends empty strings explicitly
  return v
end

local function map(f, num, conv)
  if not f[num] then return nil end
  local m = {}
  for _, entry in ipairs(f[num]) do
    local e = fields(entry)
    local k = e[1] and e[1][1] or ""
    local v = e[2] and e[2][1] or ""
    m[k] = conv and conv(v) or v
  end
  return m
end

local function strings(f, num)
  if not f[num] then return nil end
  return json.array({ table.unpack(f[num]) })
end

local function object_meta(buf)
  local f = fields(buf or "")
  return {
    name = str(f, 1), generateName = str(f, 2), namespace = str(f, 3),
    labels = map(f, 11), annotations = map(f, 12), finalizers = strings(f, 14),
  }
end

local function sub(f, num)
  return f[num] and fields(f[num][1]) or nil
end

-- authorization.k8s.io/v1 ResourceAttributes and NonResourceAttributes
local function resource_attributes(f)
  if not f then return nil end
  return { namespace = str(f, 1), verb = str(f, 2), group = str(f, 3), version = str(f, 4),
    resource = str(f, 5), subresource = str(f, 6), name = str(f, 7) }
end

-- rbac.authorization.k8s.io/v1 PolicyRule, Subject, RoleRef
local function rules(f, num)
  local out = json.array()
  for _, raw in ipairs(f[num] or {}) do
    local r = fields(raw)
    out[#out + 1] = { verbs = strings(r, 1) or json.array(), apiGroups = strings(r, 2), resources = strings(r, 3),
      resourceNames = strings(r, 4), nonResourceURLs = strings(r, 5) }
  end
  return out
end
local function binding(f)
  local subjects = json.array()
  for _, raw in ipairs(f[2] or {}) do
    local x = fields(raw)
    subjects[#subjects + 1] = { kind = str(x, 1), apiGroup = str(x, 2), name = str(x, 3), namespace = str(x, 4) }
  end
  local ref = sub(f, 3) or {}
  return { subjects = #subjects > 0 and subjects or nil,
    roleRef = { apiGroup = str(ref, 1) or "", kind = str(ref, 2), name = str(ref, 3) } }
end

local KINDS = {
  Role = function(f) return { rules = rules(f, 2) } end,
  ClusterRole = function(f) return { rules = rules(f, 2) } end,
  RoleBinding = binding,
  ClusterRoleBinding = binding,
  ServiceAccount = function(f)
    return { automountServiceAccountToken = f[4] and f[4][1] ~= 0 or nil }
  end,
  -- authentication.k8s.io/v1 (`kubectl create token`)
  TokenRequest = function(f)
    local spec = sub(f, 2) or {}
    return { spec = { audiences = strings(spec, 1), expirationSeconds = spec[4] and spec[4][#spec[4]] or nil } }
  end,
  SelfSubjectReview = function() return {} end,
  SelfSubjectAccessReview = function(f)
    local spec = sub(f, 2) or {}
    local na = sub(spec, 2)
    return { spec = { resourceAttributes = resource_attributes(sub(spec, 1)),
      nonResourceAttributes = na and { path = str(na, 1), verb = str(na, 2) } or nil } }
  end,
  SelfSubjectRulesReview = function(f)
    local spec = sub(f, 2) or {}
    return { spec = { namespace = str(spec, 1) } }
  end,
  Namespace = function(f)
    local spec = f[2] and fields(f[2][1]) or {}
    return { spec = spec[1] and { finalizers = strings(spec, 1) } or nil }
  end,
  Secret = function(f, b64)
    return { data = map(f, 2, b64), type = str(f, 3), stringData = map(f, 4),
      immutable = f[5] and f[5][1] ~= 0 or nil }
  end,
  ConfigMap = function(f, b64)
    return { data = map(f, 2), binaryData = map(f, 3, b64), immutable = f[4] and f[4][1] ~= 0 or nil }
  end,
}

--- Decode a "k8s\0"-prefixed body into a table, or nil, message.
---@param body string
---@param base64 fun(s: string): string
function M.decode(body, base64)
  if body:sub(1, 4) ~= "k8s\0" then return nil, "not a Kubernetes protobuf envelope" end
  local ok, res = pcall(function()
    local env = fields(body:sub(5))
    local tm = env[1] and fields(env[1][1]) or {}
    local api_version, kind = str(tm, 1), str(tm, 2)
    local conv = KINDS[kind or ""]
    if not conv then
      return { unsupported = kind or "?" }
    end
    local raw = env[2] and env[2][1] or ""
    local f = fields(raw)
    local obj = conv(f, base64)
    obj.apiVersion, obj.kind = api_version, kind
    obj.metadata = object_meta(f[1] and f[1][1])
    return obj
  end)
  if not ok then return nil, "malformed protobuf body: " .. tostring(res) end
  if res.unsupported then
    return nil, ("protobuf bodies are accepted for Namespace, Secret, ConfigMap, ServiceAccount, the RBAC kinds, TokenRequest and the self-subject reviews only, not %s; send JSON"):format(res.unsupported)
  end
  return res
end

return M
