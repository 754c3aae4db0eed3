--- vmsnap.apiserver.controllers: the work a Kubernetes control plane does
--- behind the API, run inside the server: garbage collection by
--- ownerReferences (background, foreground and orphan), namespace
--- finalization, and the Event TTL.
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local schema = require("vmsnap.apiserver.schema")
local tbl = require("vmsnap.apiserver.table")

local M = {}
local copy = schema.copy

local function resource_for(S, key)
  return S.reg:by_key(key)[1]
end

local function try(what, fn, ...)
  local ok, err = pcall(fn, ...)
  if not ok then
    local msg = type(err) == "table" and err.status and err.status.message or tostring(err)
    log.debug("apiserver: " .. what .. " skipped", { error = msg })
  end
  return ok
end

local function without(list, item)
  local out = json.array()
  for _, x in ipairs(list or {}) do
    if x ~= item then out[#out + 1] = x end
  end
  return out
end

-- Delete a dependent (background) when none of its owners exists any more.
local function collect_dependent(S, res, ns, name)
  local r = resource_for(S, res)
  local obj = r and S.store:get(res, ns, name)
  if not obj or obj.metadata.deletionTimestamp then return false end
  for _, ref in ipairs(obj.metadata.ownerReferences or {}) do
    if S.store:by_uid(ref.uid) then return false end
  end
  return try("garbage collection", S.delete_object, S, r, ns ~= "" and ns or nil, name,
    { propagationPolicy = "Background" })
end

-- Dependents of the owners that went away since the last round (all
-- orphans at start-up, which finishes what a crash interrupted).
local function collect_orphans(S, full)
  local n = 0
  if full then
    for _, row in ipairs(S.store:orphans()) do
      if collect_dependent(S, row[1], row[2], row[3]) then n = n + 1 end
    end
  end
  local uids = S.gone
  S.gone = {}
  for _, uid in ipairs(uids) do
    for _, d in ipairs(S.store:dependents(uid)) do
      if collect_dependent(S, d[1], d[2], d[3]) then n = n + 1 end
    end
  end
  return n
end

-- Owners being deleted in the foreground or with orphaning (S.finishing:
-- registered when the finalizer is added; found by a scan at start-up).
local function finish_owners(S)
  local busy = false
  for key, at in pairs(S.finishing) do
    local row = { at.res, at.ns, at.name }
    local r = resource_for(S, row[1])
    local obj = r and S.store:get(row[1], row[2], row[3])
    local pending = {}
    if obj and obj.metadata.deletionTimestamp then
      for _, f in ipairs(obj.metadata.finalizers or {}) do
        if f == "foregroundDeletion" or f == "orphan" then pending[#pending + 1] = f end
      end
    end
    if #pending == 0 then S.finishing[key] = nil end
    for _, fin in ipairs(pending) do
      local uid = obj.metadata.uid
      local blocking = 0
      for _, d in ipairs(S.store:dependents(uid)) do
        local dr = resource_for(S, d[1])
        local dep = dr and S.store:get(d[1], d[2], d[3])
        if dep then
          local dns = d[2] ~= "" and d[2] or nil
          if fin == "orphan" then
            local new = copy(dep)
            local refs = json.array()
            for _, ref in ipairs(dep.metadata.ownerReferences or {}) do
              if ref.uid ~= uid then refs[#refs + 1] = ref end
            end
            new.metadata.ownerReferences = #refs > 0 and refs or nil
            try("orphaning", S.update_object, S, dr, dns, new, dep, { manager = "garbage-collector" })
          else
            if not dep.metadata.deletionTimestamp then
              try("foreground deletion", S.delete_object, S, dr, dns, d[3], { propagationPolicy = "Foreground" })
            end
            for _, ref in ipairs(dep.metadata.ownerReferences or {}) do
              if ref.uid == uid and ref.blockOwnerDeletion then blocking = blocking + 1 end
            end
          end
        end
      end
      if blocking == 0 then
        local cur = S.store:get(row[1], row[2], row[3])
        if cur then
          local new = copy(cur)
          new.metadata.finalizers = without(cur.metadata.finalizers, fin)
          if #new.metadata.finalizers == 0 then new.metadata.finalizers = nil end
          try("finalizer removal", S.update_object, S, r, row[2] ~= "" and row[2] or nil, new, cur,
            { manager = "garbage-collector" })
        end
      else
        busy = true
      end
    end
  end
  return busy
end

-- Terminating namespaces: delete their content, then the namespace.
local function finalize_namespaces(S)
  local nsr = S.reg:find("", "v1", "namespaces")
  local busy = false
  for _, row in ipairs(S.store:page(nsr.key, nil, "", "", 1e9)) do
    local ns = json.decode(row[3])
    if ns and ns.metadata.deletionTimestamp then
      local name = ns.metadata.name
      local left = 0
      for _, o in ipairs(S.store:in_namespace(name)) do
        local r = resource_for(S, o[1])
        if r then
          left = left + 1
          local obj = S.store:get(o[1], name, o[2])
          if obj and not obj.metadata.deletionTimestamp then
            try("namespace cleanup", S.delete_object, S, r, name, o[2], { propagationPolicy = "Background" })
          end
        end
      end
      if left == 0 then
        local new = copy(ns)
        new.spec = new.spec or {}
        new.spec.finalizers = nil
        local fins = ns.metadata.finalizers
        if fins == nil or #fins == 0 then
          -- gone: the last step of namespace deletion
          S:commit(nsr, nil, name, "DELETED", new, ns)
        end
      else
        busy = true
      end
    end
  end
  return busy
end

local function expire_events(S, now)
  local r = S.reg:find("", "v1", "events")
  local expired = {}
  S.store:each(r.key, nil, function(ns, name, _, ev)
    local t = tbl.parse_time(ev.lastTimestamp or ev.eventTime or ev.metadata.creationTimestamp)
    if t and now - t > S.event_ttl then expired[#expired + 1] = { ns, name } end
  end, true)
  for _, e in ipairs(expired) do try("event expiry", S.delete_object, S, r, e[1], e[2], {}) end
end

--- The controller loop (a task): runs when kicked, and periodically.
function M.run(S)
  local wake = task.channel(1)
  S.controller_wake = function()
    -- never blocks: the buffer holds one wake-up
    if wake:len() == 0 then wake:send(true) end
  end
  local last_ttl = 0
  -- a sweep at start-up finishes what a crash interrupted
  S.kicks.gc, S.kicks.namespaces = true, true
  for _, fin in ipairs({ "foregroundDeletion", "orphan" }) do
    for _, row in ipairs(S.store:containing('"' .. fin .. '"')) do
      S:finish_later(row[1], row[2], row[3])
    end
  end
  local full = true
  while not S.stopping do
    local busy = false
    if S.kicks.gc or S.kicks.namespaces then
      S.kicks.gc, S.kicks.namespaces = false, false
      local rounds = 0
      repeat
        rounds = rounds + 1
        local n = collect_orphans(S, full)
        full = false
        local b1 = finish_owners(S)
        local b2 = finalize_namespaces(S)
        busy = b1 or b2
      until (n == 0 and not S.kicks.gc) or rounds > 50
    end
    local now = os.time()
    -- the TTL check runs a few times per TTL, at most once a minute
    if now - last_ttl >= math.min(60, math.max(1, S.event_ttl / 4)) then
      last_ttl = now
      expire_events(S, now)
    end
    wake:recv(busy and 0.2 or math.min(5, math.max(0.5, S.event_ttl / 4)))
    if busy then S.kicks.gc = true end
  end
end

return M
