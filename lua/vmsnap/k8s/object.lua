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

return M
