--- vmsnap.k8s.object: reading Kubernetes objects — conditions (metav1.Condition),
--- annotations, owners.
local M = {}

--- The condition of type ctype of obj, or nil.
function M.condition(obj, ctype)
  for _, c in ipairs(obj and obj.status and obj.status.conditions or {}) do
    if c.type == ctype then return c end
  end
end

--- Is that condition True?
function M.is_true(obj, ctype)
  local c = M.condition(obj, ctype)
  return c ~= nil and c.status == "True"
end

--- Is that condition True and about the object's current generation?
function M.is_true_current(obj, ctype)
  local c = M.condition(obj, ctype)
  return c ~= nil and c.status == "True" and (c.observedGeneration == nil or c.observedGeneration == obj.metadata.generation)
end

--- An annotation of obj, or nil.
function M.annotation(obj, key)
  return obj.metadata.annotations and obj.metadata.annotations[key]
end

--- The name of obj's owner of that kind, or nil.
function M.owner(obj, kind)
  for _, r in ipairs(obj.metadata.ownerReferences or {}) do
    if r.kind == kind then return r.name end
  end
end

--- Is obj owned by the object `owner` (same uid)?
function M.owned_by(obj, owner)
  for _, r in ipairs(obj.metadata.ownerReferences or {}) do
    if r.uid == owner.metadata.uid then return true end
  end
  return false
end

--- An owner reference to obj (controller, blocking its deletion).
function M.owner_ref(obj, api_version, kind)
  return { apiVersion = obj.apiVersion or api_version, kind = obj.kind or kind, name = obj.metadata.name,
    uid = obj.metadata.uid, controller = true, blockOwnerDeletion = true }
end

--- FNV-1a, 64 bits, as 16 upper-case hex digits (names, cache keys: not
--- for security).
function M.fnv64(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = h * 0x100000001b3
  end
  return ("%016X"):format(h)
end

--- A generated name `<head>-<tail>` that is a valid object name for any
--- valid head: when it would pass `max` characters (default 253, a DNS
--- subdomain), the head is cut and a hash of the whole name keeps it unique
--- (`<cut head>-<8 hex>-<tail>`). The tail (a uid) is kept whole. `sep`
--- (default "-") joins head and tail: "." for an Event's `<object>.<suffix>`.
---@param head string
---@param tail string
---@param max? integer
---@param sep? string
---@return string
function M.bounded_name(head, tail, max, sep)
  max, sep = max or 253, sep or "-"
  local name = head .. sep .. tail
  if #name <= max then return name end
  local hash = M.fnv64(name):sub(1, 8):lower()
  local keep = max - #tail - #hash - 2
  local cut = head:sub(1, math.max(0, keep)):gsub("[-.]+$", "")
  if cut == "" then return (hash .. sep .. tail):sub(1, max) end
  return cut .. "-" .. hash .. sep .. tail
end

return M
