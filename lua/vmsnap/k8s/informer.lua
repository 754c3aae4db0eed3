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
local task = require("vmsnap.task")
local log = require("vmsnap.log")

local M = {}

---@class vmsnap.k8s.Informer
local Informer = {}
Informer.__index = Informer

local function key(ns, name)
  return (ns or "") .. "/" .. name
end

---@param client vmsnap.k8s.Client
---@param kind string|table
---@param opts? {namespace?: string, all_namespaces?: boolean, label_selector?: string, field_selector?: string, indexes?: table<string, fun(obj: table): string[]>}
function M.new(client, kind, opts)
  opts = opts or {}
  return setmetatable({ client = client, kind = kind, opts = opts, store = {}, indexes = opts.indexes or {},
    idx = {}, handlers = {}, synced = false, sync_ch = task.channel(), log = log.new("informer") }, Informer)
end

--- Add a handler fn(type, obj, old) for "ADDED", "MODIFIED" and "DELETED"
--- (called in the informer's task; an error is logged, not fatal).
function Informer:on(fn)
  self.handlers[#self.handlers + 1] = fn
end

local function index_remove(self, k, obj)
  for name, fn in pairs(self.indexes) do
    local ok, vals = pcall(fn, obj)
    if ok and type(vals) == "table" then
      local m = self.idx[name]
      for _, v in ipairs(vals) do
        if m and m[v] then m[v][k] = nil end
      end
    end
  end
end

local function index_add(self, k, obj)
  for name, fn in pairs(self.indexes) do
    local ok, vals = pcall(fn, obj)
    if ok and type(vals) == "table" then
      local m = self.idx[name]
      if not m then m = {}; self.idx[name] = m end
      for _, v in ipairs(vals) do
        if v ~= nil then
          m[v] = m[v] or {}
          m[v][k] = true
        end
      end
    end
  end
end

function Informer:apply(ev)
  local obj = ev.object
  local md = obj.metadata or {}
  local k = key(md.namespace, md.name)
  local old = self.store[k]
  if old then index_remove(self, k, old) end
  if ev.type == "DELETED" then
    self.store[k] = nil
    obj = old or obj
  else
    self.store[k] = obj
    index_add(self, k, obj)
  end
  for _, h in ipairs(self.handlers) do
    local ok, err = pcall(h, ev.type, obj, ev.type ~= "DELETED" and old or nil)
    if not ok then self.log:error("handler failed", { kind = tostring(self.kind), error = tostring(err) }) end
  end
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
        self.log:warn("cannot watch", { kind = tostring(self.kind), error = err, code = code })
        task.sleep(1)
      else
        self.watch = w
        while not self.stopped do
          local ev, e2, c2 = w:next()
          if not ev then
            self.log:warn("watch failed; starting over", { kind = tostring(self.kind), error = e2, code = c2 })
            break
          end
          if ev.type == "SYNCED" then
            self.synced = true
            self.sync_ch:close() -- wakes every wait_synced
          else
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
  local out = {}
  for k, obj in pairs(self.store) do
    if ns == nil or (obj.metadata.namespace or "") == ns then out[#out + 1] = { k, obj } end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  for i, e in ipairs(out) do out[i] = e[2] end
  return out
end

--- Objects whose index `name` contains `value`.
function Informer:by_index(name, value)
  local m = self.idx[name]
  if not self.indexes[name] then error(("no index named '%s'"):format(tostring(name)), 2) end
  local out = {}
  for k in pairs((m and m[value]) or {}) do out[#out + 1] = self.store[k] end
  table.sort(out, function(a, b) return key(a.metadata.namespace, a.metadata.name) < key(b.metadata.namespace, b.metadata.name) end)
  return out
end

--- Stop watching.
function Informer:stop()
  self.stopped = true
  if self.watch then self.watch:close() end
  if self.task then task.cancel(self.task) end
end
Informer.__close = Informer.stop

return M
