--- vmsnap.k8s.informer: list + watch into a local cache, with indexes and
--- event handlers, for controllers.
---
---     local inf = c:informer("vmsnapshot", {
---       indexes = { by_vm = function(o) return { o.spec.virtualMachineName } end },
---     })
---     inf:on(function(type, obj, old) queue:add(obj) end)
---     inf:start()
---     assert(inf:wait_synced(10))
---     for _, s in ipairs(inf:by_index("by_vm", "linux-vm")) do ... end
---
--- The cache follows the watch (which reconnects and relists by itself);
--- objects in the cache are shared: treat them as read-only.
---
--- `inf:observe(obj)` feeds the cache an object a write of this process
--- got back (the server's answer to a create, update or patch), so that a
--- controller never reads a copy older than its own last write. A version
--- is kept only when it is newer than the cached one (resourceVersions are
--- compared as numbers when both are numbers, as etcd's and vmsnap's are),
--- and the watch event for the same version later is not delivered twice;
--- an object the watch has seen deleted is not brought back by an answer
--- that comes after the DELETED event.
local task = require("vmsnap.task")
local errors = require("vmsnap.errors")
local log = require("vmsnap.log")

local M = {}

---@class vmsnap.k8s.Informer
local Informer = {}
Informer.__index = Informer

local function key(ns, name)
  return (ns or "") .. "/" .. name
end

--- Is resourceVersion a older than b? (false when it cannot be told)
local function older(a, b)
  local na, nb = tonumber(a), tonumber(b)
  if not na or not nb then return false end
  return na < nb
end
M.older = older

---@param client vmsnap.k8s.Client
---@param kind string|table
---@param opts? {namespace?: string, all_namespaces?: boolean, label_selector?: string, field_selector?: string, indexes?: table<string, fun(obj: table): string[]>, keep_managed_fields?: boolean}
function M.new(client, kind, opts)
  opts = opts or {}
  local label = type(kind) == "table" and (kind.plural and (kind.plural .. (kind.group ~= "" and ("." .. kind.group) or "")))
    or tostring(kind)
  return setmetatable({ client = client, kind = kind, label = label, opts = opts, store = {}, indexes = {},
    idx = {}, handlers = {}, synced = false, sync_ch = task.channel(), log = log.new("informer") }, Informer)
    :add_indexes(opts.indexes)
end

--- Add a handler fn(type, obj, old) for "ADDED", "MODIFIED" and "DELETED"
--- (called in the informer's task; an error is logged, not fatal).
function Informer:on(fn)
  self.handlers[#self.handlers + 1] = fn
  return fn
end

--- Remove a handler added with on().
function Informer:off(fn)
  for i, h in ipairs(self.handlers) do
    if h == fn then table.remove(self.handlers, i) return end
  end
end

local function index_values(self, name, fn, obj)
  local ok, vals = pcall(fn, obj)
  if not ok then
    self.log:error("index function failed", { kind = self.label, index = name, error = tostring(vals) })
    return nil
  end
  return type(vals) == "table" and vals or nil
end

local function index_remove(self, k, obj)
  for name, fn in pairs(self.indexes) do
    local m = self.idx[name]
    for _, v in ipairs(m and index_values(self, name, fn, obj) or {}) do
      if m[v] then
        m[v][k] = nil
        if next(m[v]) == nil then m[v] = nil end
      end
    end
  end
end

local function index_one(self, name, fn, k, obj)
  local m = self.idx[name]
  if not m then m = {}; self.idx[name] = m end
  for _, v in ipairs(index_values(self, name, fn, obj) or {}) do
    m[v] = m[v] or {}
    m[v][k] = true
  end
end

--- Add indexes (name -> fn(obj) returning the values to index the object
--- under); objects already cached are indexed at once. An index of the same
--- name must be the same function.
function Informer:add_indexes(indexes)
  for name, fn in pairs(indexes or {}) do
    local cur = self.indexes[name]
    if cur and cur ~= fn then error(("index '%s' is defined twice"):format(name), 2) end
    if not cur then
      self.indexes[name] = fn
      for k, obj in pairs(self.store) do index_one(self, name, fn, k, obj) end
    end
  end
  return self
end

local function deliver(self, etype, obj, old)
  for _, h in ipairs(self.handlers) do
    local ok, err = pcall(h, etype, obj, old)
    if not ok then
      if errors.code_of(err) == "CANCELLED" then error(err, 0) end -- the informer is going down
      self.log:error("handler failed", { kind = self.label, error = tostring(err) })
    end
  end
end

--- Apply a watch event {type, object} to the cache and tell the handlers.
function Informer:apply(ev)
  local obj = ev.object
  local md = obj.metadata or {}
  if not md.name then return end
  -- the cache keeps no managedFields (as client-go's controllers drop them):
  -- a third of a small object, read by no controller; a write of a cached
  -- object without them leaves the server's as they are
  if md.managedFields ~= nil and not self.opts.keep_managed_fields then md.managedFields = nil end
  local k = key(md.namespace, md.name)
  local old = self.store[k]
  if old and ev.type ~= "DELETED" and (old.metadata.resourceVersion == md.resourceVersion
      or older(md.resourceVersion, old.metadata.resourceVersion)) then
    return -- this version (or a newer one) came already, from a write of ours
  end
  if old and ev.type == "DELETED" and md.uid and old.metadata.uid and md.uid ~= old.metadata.uid then
    return -- the deletion of an earlier object of that name: the cache has its successor
  end
  if old then index_remove(self, k, old) end
  if ev.type == "DELETED" then
    self.store[k] = nil
    obj = old or obj
  else
    self.store[k] = obj
    for name, fn in pairs(self.indexes) do index_one(self, name, fn, k, obj) end
  end
  deliver(self, ev.type, obj, ev.type ~= "DELETED" and old or nil)
end

--- The answer of a write of this process: cached (and handed to the
--- handlers) when it is newer than what the cache holds. Objects this
--- informer does not select (another namespace, a selector) are ignored.
function Informer:observe(obj)
  local md = type(obj) == "table" and obj.metadata
  if not md or not md.name or not md.resourceVersion then return end
  if self.opts.namespace and self.opts.namespace ~= md.namespace then return end
  if self.opts.label_selector or self.opts.field_selector then return end
  local old = self.store[key(md.namespace, md.name)]
  if old and not older(old.metadata.resourceVersion, md.resourceVersion) then return end
  if not old then
    if not self.synced then return end -- the list brings it
    -- the watch is past this version and the object is not cached: it was
    -- deleted since (the answer of the write that deleted it, or of one
    -- before, can come after the DELETED event); it must not come back.
    -- Judged only on versions that are numbers, and only when the watch has
    -- handed over every event it holds (after a relist, the version is the
    -- list's while its events still wait in the queue)
    local w = self.watch
    local seen = w and tonumber(w.rv)
    local mine = tonumber(md.resourceVersion)
    if seen and mine and seen >= mine and w.qpos > #w.queue then return end
  end
  self:apply({ type = old and "MODIFIED" or "ADDED", object = obj })
end

--- Start the list + watch (a task). Returns the informer.
function Informer:start()
  if self.task then return self end
  self.task = task.spawn(function()
    local o = {}
    for k, v in pairs(self.opts) do o[k] = v end
    o.indexes = nil
    o.synced = true
    while not self.stopped do
      local w, err, code = self.client:watch(self.kind, o)
      if not w then
        self.log:warn("cannot watch", { kind = self.label, error = err, code = code })
        task.sleep(1)
      else
        self.watch = w
        local fails = 0
        while not self.stopped do
          local ev, e2, c2 = w:next()
          if not ev then
            -- the same watch again: it reconnects or lists again itself,
            -- and remembers what it reported (a new watch would not know
            -- what was deleted meanwhile, and the cache would keep it)
            fails = fails + 1
            self.log:warn("watch failed; retrying", { kind = self.label, error = e2, code = c2 })
            task.sleep(math.min(5, 0.2 * 2 ^ math.min(fails - 1, 5)))
          elseif ev.type == "SYNCED" then
            fails = 0
            self.synced = true
            self.sync_ch:close() -- wakes every wait_synced
          else
            fails = 0
            self:apply(ev)
          end
        end
        w:close()
        task.sleep(1)
      end
    end
  end)
  return self
end

--- Wait until the initial list is in the cache. Returns true, or nil, message, "TIMEOUT".
function Informer:wait_synced(timeout)
  if self.synced then return true end
  local _, _, code = self.sync_ch:recv(timeout)
  if self.synced then return true end
  return nil, "informer did not sync in time", code == "CLOSED" and "CLOSED" or "TIMEOUT"
end

--- The cached object, or nil.
function Informer:get(ns, name)
  if name == nil then ns, name = nil, ns end
  return self.store[key(ns, name)]
end

--- Every cached object (optionally in one namespace), sorted by namespace and name.
function Informer:list(ns)
  -- the keys sorted as plain strings (a comparator closure made this the
  -- hottest function of a snapshot burst)
  local keys = {}
  for k, obj in pairs(self.store) do
    if ns == nil or (obj.metadata.namespace or "") == ns then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local store = self.store
  for i = 1, #keys do keys[i] = store[keys[i]] end
  return keys
end

--- Call fn(obj) for every cached object, in no order (no copy, no sort).
function Informer:each(fn)
  for _, obj in pairs(self.store) do fn(obj) end
end

--- Objects whose index `name` contains `value`, sorted by namespace and name.
function Informer:by_index(name, value)
  if not self.indexes[name] then error(("no index named '%s'"):format(tostring(name)), 2) end
  local m = self.idx[name]
  local keys = {}
  for k in pairs((m and m[value]) or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for i, k in ipairs(keys) do out[i] = self.store[k] end
  return out
end

--- Whether the index `name` holds any object under `value` (no copy, no sort).
function Informer:index_has(name, value)
  if not self.indexes[name] then error(("no index named '%s'"):format(tostring(name)), 2) end
  local m = self.idx[name]
  return m ~= nil and m[value] ~= nil and next(m[value]) ~= nil
end

--- Stop watching.
function Informer:stop()
  self.stopped = true
  if self.watch then self.watch:close() end
  if self.task then task.cancel(self.task) end
end
Informer.__close = Informer.stop

return M
