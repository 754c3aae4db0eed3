--- vmsnap.reconcile.context: what a reconcile function gets besides the object.
---
---     function reconcile(ctx, obj)
---       local vd = ctx:get("VirtualDisk", obj.metadata.namespace, obj.spec.virtualDiskName)
---       obj.status = obj.status or {}
---       obj.status.phase = "Pending"
---       ctx:condition("VirtualDiskReady", "False", "WaitingForTheVirtualDisk", "...")
---       ctx:event("Normal", "Started", "snapshotting started")
---       return { requeue_after = 2 }
---     end
---
--- Changes to `obj.status` are written once, after the reconcile, and only
--- when the status changed (through the status subresource, re-applied on a
--- conflict). Reads go to the controller's caches where it has one.
local json = require("vmsnap.json")
local errors = require("vmsnap.errors")
local vtime = require("vmsnap.time")
local object = require("vmsnap.k8s.object")

local M = {}

---@class vmsnap.reconcile.Context
---@field client vmsnap.k8s.Client
---@field obj table
---@field log table
---@field controller vmsnap.reconcile.Controller
local Context = {}
Context.__index = Context

local deep = require("vmsnap.deep")
local copy, equal = deep.copy, deep.equal
M.equal = equal

function M.new(ctl, obj)
  return setmetatable({ controller = ctl, client = ctl.client, obj = obj, log = ctl.log:with({
    object = (obj.metadata.namespace and (obj.metadata.namespace .. "/") or "") .. obj.metadata.name }),
    original_status = copy(obj.status), base_rv = obj.metadata.resourceVersion }, Context)
end

--- An object of a kind (from the controller's cache when it watches the kind;
--- a miss is asked of the API, so that an object the cache has not caught up
--- on yet is not taken for absent).
function Context:get(kind, ns, name)
  local inf = self.controller:informer_for(kind)
  if inf then
    local obj = inf:get(ns, name)
    if obj then return obj end
    -- a controller with cache_reads trusts its synced cache: what it lacks
    -- does not exist (objects this process writes are cached at once; one
    -- made elsewhere shows with its watch event, which brings a new pass)
    if self.controller.opts.cache_reads and inf.synced then return nil end
  end
  local obj, err, reason = self.client:get(kind, name, { namespace = ns })
  if not obj and reason == "NotFound" then return nil end
  return obj, err, reason
end

--- An object of a kind, as Context:get finds it, or nil when it does not
--- exist; a failure of the API raises an error object with its code (the
--- pass fails, transiently for a transport or server error).
function Context:fetch(kind, ns, name)
  local obj, err, code = self:get(kind, ns, name)
  if obj == nil and err then error(errors.new(code or "ERROR", err), 0) end
  return obj
end

--- Cached objects of a watched kind whose index `index` has value.
function Context:by_index(kind, index, value)
  local inf = self.controller:informer_for(kind)
  if not inf then error(("by_index: the controller does not watch %s"):format(kind), 2) end
  return inf:by_index(index, value)
end

--- A reader with the client's get and list_all calls, answered by this
--- context (from the cache for the kinds the controller watches), for code
--- written against a client (vmsnap.csi.resolve_class).
function Context:reader()
  local ctx = self
  return {
    get = function(_, kind, name, opts)
      local obj, err, code = ctx:get(kind, opts and opts.namespace, name)
      if obj == nil and err == nil then return nil, ("%s %q not found"):format(kind, name), "NotFound" end
      return obj, err, code
    end,
    list_all = function(_, kind, opts)
      local ok, all = pcall(ctx.list, ctx, kind, opts and opts.namespace)
      if not ok then return nil, tostring(all), "ERROR" end
      return all
    end,
  }
end

--- Whether the index `index` of a watched kind holds any object under
--- `value` (no copy, no sort).
function Context:index_has(kind, index, value)
  local inf = self.controller:informer_for(kind)
  if not inf then error(("index_has: the controller does not watch %s"):format(kind), 2) end
  return inf:index_has(index, value)
end

--- Objects of a kind (optionally in one namespace): from the cache when
--- the controller watches the kind, else from the API server.
function Context:list(kind, ns)
  local inf = self.controller:informer_for(kind)
  if inf then return inf:list(ns) end
  local all, err = self.client:list_all(kind, { namespace = ns, all_namespaces = ns == nil })
  if not all then error(("list %s: %s"):format(kind, err), 2) end
  return all
end

--- Look again after `seconds` (also: return {requeue_after = seconds}).
function Context:requeue_after(seconds)
  if not self.requeue or seconds < self.requeue then self.requeue = seconds end
end

-- ------------------------------------------------------------ conditions

--- The condition of a type, or nil.
function Context:get_condition(ctype)
  local st = self.obj.status
  for _, c in ipairs(st and st.conditions or {}) do
    if c.type == ctype then return c end
  end
end

--- Set a condition (metav1.Condition): lastTransitionTime moves only when the
--- status changes; observedGeneration is the object's generation.
function Context:condition(ctype, status, reason, message)
  local obj = self.obj
  obj.status = obj.status or {}
  obj.status.conditions = obj.status.conditions or json.array()
  local c = self:get_condition(ctype)
  if not c then
    c = { type = ctype }
    table.insert(obj.status.conditions, c)
  end
  if c.status ~= status then c.lastTransitionTime = vtime.format() end
  c.status = status
  c.reason = reason
  c.message = message or ""
  c.observedGeneration = obj.metadata.generation
  return c
end

--- Remove a condition of a type.
function Context:remove_condition(ctype)
  local st = self.obj.status
  if not st or not st.conditions then return end
  for i, c in ipairs(st.conditions) do
    if c.type == ctype then table.remove(st.conditions, i) return end
  end
end

-- ------------------------------------------------------------ status

--- Write obj.status if it changed (called by the framework after reconcile).
function Context:flush()
  local obj = self.obj
  if equal(obj.status, self.original_status) then return true end
  local c = self.client
  -- the status was computed from the copy this pass started with: write it
  -- against that copy's resourceVersion, whatever patches of our own (marks,
  -- finalizers) moved it on since — those come back as a Conflict below,
  -- where only a moved status makes the pass start again
  obj.metadata.resourceVersion = self.base_rv or obj.metadata.resourceVersion
  for _ = 1, 3 do
    local res, err, reason = c:update_status(obj, { field_manager = self.controller.name })
    if res then
      self.controller.counters.status_writes = self.controller.counters.status_writes + 1
      self.original_status = copy(res.status)
      obj.metadata.resourceVersion = res.metadata.resourceVersion
      self.base_rv = res.metadata.resourceVersion
      return true
    end
    if reason ~= "Conflict" then return nil, err, reason end
    -- someone else wrote. Metadata only (our own annotation patches, a
    -- finalizer): keep our status. The status itself: ours was computed from
    -- an older object (a cache behind the server) — reconcile again instead of
    -- overwriting what is newer.
    local fresh, ferr, freason = c:get(obj, obj.metadata.name, { namespace = obj.metadata.namespace })
    if not fresh then
      if freason == "NotFound" then return true end
      return nil, ferr, freason
    end
    if not equal(fresh.status, self.original_status) then
      return nil, "the status changed meanwhile: reconciling again", "Stale"
    end
    obj.metadata.resourceVersion = fresh.metadata.resourceVersion
  end
  return nil, "status update kept conflicting", "Conflict"
end

--- An answer of a write of ours to the object of this pass (an annotation
--- or finalizer patch): the copy takes its metadata, and when the status in
--- it is still the one this pass started from, the status write at the end
--- goes against the new version (nobody else wrote in between).
function Context:own_write(res)
  local obj = self.obj
  obj.metadata.annotations = res.metadata.annotations
  obj.metadata.finalizers = res.metadata.finalizers
  obj.metadata.resourceVersion = res.metadata.resourceVersion
  if equal(res.status, self.original_status) then self.base_rv = res.metadata.resourceVersion end
end

--- Write annotations of the object of this pass (a merge patch; json.null
--- removes one). Returns true, or nil, message, code.
---@param values table<string, string|userdata>
function Context:annotate(values)
  local obj = self.obj
  local res, err, code = self.client:patch(obj, obj.metadata.name, { metadata = { annotations = values } },
    { namespace = obj.metadata.namespace, field_manager = self.controller.name })
  if not res then return nil, err, code end
  self:own_write(res)
  return true
end

-- ------------------------------------------------------------ finalizers

function Context:has_finalizer(name)
  for _, f in ipairs(self.obj.metadata.finalizers or {}) do
    if f == name then return true end
  end
  return false
end

local function set_finalizers(self, list)
  local obj = self.obj
  local p = { metadata = { finalizers = #list > 0 and json.array(list) or json.null,
    resourceVersion = obj.metadata.resourceVersion } }
  local res, err, reason = self.client:patch(obj, obj.metadata.name, p,
    { namespace = obj.metadata.namespace, field_manager = self.controller.name })
  if not res then
    if reason == "NotFound" then return true end
    return nil, err, reason
  end
  self:own_write(res)
  return true
end

--- Add a finalizer (compare-and-swap on the resourceVersion).
function Context:add_finalizer(name)
  if self:has_finalizer(name) then return true end
  local list = {}
  for _, f in ipairs(self.obj.metadata.finalizers or {}) do list[#list + 1] = f end
  list[#list + 1] = name
  return set_finalizers(self, list)
end

--- Remove a finalizer.
function Context:remove_finalizer(name)
  if not self:has_finalizer(name) then return true end
  local list = {}
  for _, f in ipairs(self.obj.metadata.finalizers or {}) do
    if f ~= name then list[#list + 1] = f end
  end
  return set_finalizers(self, list)
end

-- ------------------------------------------------------------ events

local event_seq = 0

--- Record an Event on the object (or on `about`): type "Normal" or
--- "Warning". The same reason and message again raise the count of the
--- existing Event instead of creating another.
function Context:event(etype, reason, message, about)
  local obj = about or self.obj
  local ctl = self.controller
  ctl.recent_events = ctl.recent_events or {}
  local md = obj.metadata
  local key = (md.uid or md.name) .. "\0" .. etype .. "\0" .. reason .. "\0" .. (message or "")
  local now = vtime.format()
  local known = ctl.recent_events[key]
  if known then
    local res = self.client:patch("events", known.name, { count = known.count + 1, lastTimestamp = now },
      { namespace = known.namespace })
    if res then
      known.count = known.count + 1
      return true
    end
  end
  event_seq = event_seq + 1
  -- NAME.SUFFIX, cut (with a hash) to 253 characters however long the object's name is
  local name = object.bounded_name(md.name, ("%x%04x"):format(os.time(), event_seq % 0x10000), 253, ".")
  local ns = md.namespace or "default"
  local ev = { apiVersion = "v1", kind = "Event", metadata = { name = name, namespace = ns },
    involvedObject = { apiVersion = obj.apiVersion, kind = obj.kind, name = md.name, namespace = md.namespace,
      uid = md.uid, resourceVersion = md.resourceVersion },
    reason = reason, message = message or "", type = etype,
    source = { component = ctl.name }, reportingComponent = ctl.name,
    firstTimestamp = now, lastTimestamp = now, count = 1 }
  local res, err, r2 = self.client:create(ev)
  if not res then
    self.log:warn("cannot record an event", { reason = reason, error = err })
    return nil, err, r2
  end
  ctl.counters.events = ctl.counters.events + 1
  ctl.recent_events[key] = { name = name, namespace = ns, count = 1 }
  return true
end

M.Context = Context
return M
