--- vmsnap.reconcile.manager: one cache for all the controllers of a process.
---
--- Controllers of one client (and one namespace scope) share a manager: one
--- informer, hence one watch and one copy of every object, per kind, with
--- the indexes every controller asked for. The manager also feeds its
--- caches the answers of the client's own writes (informer:observe), so a
--- pass never acts on a copy older than what this process wrote itself.
---
---     local m = manager.for_client(client)
---     local vds = m:informer("vdsnapshot", { indexes = { by_disk = fn } })
---     m:start(); assert(m:wait_synced(30))
---
--- Informers start when the first controller starts, and stop when the
--- last one that uses the manager stops.
local log = require("vmsnap.log")

local M = {}

---@class vmsnap.reconcile.Manager
local Manager = {}
Manager.__index = Manager

local function res_key(r) return r.group .. "/" .. r.plural end

--- The manager of a client for one namespace (nil: all namespaces),
--- made on first use.
---@param client vmsnap.k8s.Client
---@param namespace? string
---@return vmsnap.reconcile.Manager
function M.for_client(client, namespace)
  client.managers = client.managers or {}
  local scope = namespace or ""
  local m = client.managers[scope]
  if m then return m end
  m = setmetatable({ client = client, namespace = namespace, informers = {}, kinds = {}, users = 0,
    log = log.new("manager") }, Manager)
  client.managers[scope] = m
  client:observe(function(obj) m:observe(obj) end)
  return m
end

--- The shared informer of a kind (any spelling the client resolves), with
--- `opts.indexes` added. Started at once when the manager runs already.
---@param kind string|table
---@param opts? {indexes?: table<string, fun(obj: table): string[]>}
---@return vmsnap.k8s.Informer?, string?, string?
function Manager:informer(kind, opts)
  local r, err, code = self.client:resource(kind)
  if not r then return nil, err, code end
  local k = res_key(r)
  local inf = self.informers[k]
  if not inf then
    inf = self.client:informer(r, { namespace = self.namespace, all_namespaces = self.namespace == nil })
    self.informers[k] = inf
    self.kinds[(r.api_version or "") .. "/" .. r.kind] = inf
    if self.running then inf:start() end
  end
  inf:add_indexes(opts and opts.indexes)
  return inf
end

--- The informer of a kind if the manager has one (no new watch).
function Manager:find(kind)
  local r = self.client:resource(kind)
  return r and self.informers[res_key(r)] or nil
end

-- the answer of one of our writes, to the informer of its kind
function Manager:observe(obj)
  if type(obj.apiVersion) ~= "string" or type(obj.kind) ~= "string" then return end
  local inf = self.kinds[obj.apiVersion .. "/" .. obj.kind]
  if inf then inf:observe(obj) end
end

--- A controller starts using the manager: the informers start (once).
function Manager:start()
  self.users = self.users + 1
  if self.running then return end
  self.running = true
  for _, inf in pairs(self.informers) do inf:start() end
end

--- Wait until every informer has its initial list. Returns true, or nil, message.
function Manager:wait_synced(timeout)
  for k, inf in pairs(self.informers) do
    local ok, err = inf:wait_synced(timeout)
    if not ok then return nil, ("informer for %s: %s"):format(k, err) end
  end
  return true
end

--- A controller stops using the manager; the last one out stops the informers.
function Manager:stop()
  self.users = math.max(0, self.users - 1)
  if self.users > 0 or not self.running then return end
  self.running = false
  for _, inf in pairs(self.informers) do inf:stop() end
  -- a later start watches anew, from a fresh list
  self.informers, self.kinds = {}, {}
end

return M
