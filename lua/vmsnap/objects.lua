--- vmsnap.objects: small helpers over Kubernetes objects and the messages of
--- the workflows (conditions of other objects, annotations, owners; the
--- spec's "capitalised, with a period" messages; a permanent-failure error).
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

--- "the disk ..." -> "The disk ..."
function M.capitalize(s)
  s = tostring(s)
  return s:sub(1, 1):upper() .. s:sub(2)
end

--- Capitalised, with a final period (the spec's condition messages).
function M.sentence(s)
  s = M.capitalize(s)
  if not s:find("%.$") then s = s .. "." end
  return s
end

-- a failure no retry fixes: raised with error(), caught by the workflow's reconcile
local Permanent = {}
Permanent.__tostring = function(e) return e.message end

--- A permanent failure (error value) with a message and an optional condition reason.
function M.permanent(message, reason)
  return setmetatable({ message = message, reason = reason }, Permanent)
end

--- Is e a permanent failure?
function M.is_permanent(e)
  return getmetatable(e) == Permanent
end

return M
