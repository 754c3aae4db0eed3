--- vmsnap.reconcile: the controller framework the workflows run on.
---
--- A workflow is a function `reconcile(ctx, obj)` that looks at one object
--- and the world, takes at most one step, records what it saw, and says when
--- to look again. The framework watches the kinds (informers with indexes),
--- queues object keys (de-duplicated; failures requeued with back-off),
--- runs workers, writes status only when it changed, keeps conditions
--- (lastTransitionTime, observedGeneration), manages a finalizer, emits
--- Events, elects a leader on a Lease, and shuts down gracefully.
---
---     local reconcile = require("vmsnap.reconcile")
---     local ctl = reconcile.controller{
---       client = c, name = "vdsnapshot", kind = "VirtualDiskSnapshot",
---       finalizer = "virtualization.deckhouse.io/vdsnapshot-cleanup",
---       watches = { { kind = "VolumeSnapshot", map = function(vs) return { reconcile.key_of(vs) } end } },
---       reconcile = function(ctx, obj) ... return { requeue_after = 2 } end,
---       finalize = function(ctx, obj) ... return true end,   -- cleanup done
---     }
---     ctl:run()      -- until ctl:stop(); ctl:reconcile_key("ns/name") drives one object (CLI)
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local deep = require("vmsnap.deep")
local errors = require("vmsnap.errors")
local rtcore = require("vmsnap.core.runtime")
local Queue = require("vmsnap.reconcile.queue")
local Context = require("vmsnap.reconcile.context")
local leader = require("vmsnap.reconcile.leader")
local Manager = require("vmsnap.reconcile.manager")
local metrics = require("vmsnap.metrics")

-- the reconcile families, named as controller-runtime's, and the leader's
local function families()
  local reg = metrics.process()
  return {
    total = reg:counter("controller_runtime_reconcile_total",
      "Reconcile passes by controller and result (success, error, requeue, requeue_after).", { "controller", "result" }),
    errors = reg:counter("controller_runtime_reconcile_errors_total", "Reconcile passes that failed.", { "controller" }),
    time = reg:histogram("controller_runtime_reconcile_time_seconds", "Seconds per reconcile pass.", { "controller" },
      { 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 }),
    leader = reg:gauge("leader_election_master_status", "1 while this process leads the lease, else 0.", { "name" }),
  }
end

local M = {}

M.Queue = Queue
M.Context = Context
M.leader = leader
M.manager = Manager

--- "namespace/name" (or "name" for cluster-scoped objects).
function M.key_of(obj)
  local md = obj.metadata or {}
  if md.namespace and md.namespace ~= "" then return md.namespace .. "/" .. md.name end
  return md.name
end

function M.split_key(key)
  local ns, name = key:match("^(.-)/(.+)$")
  if not ns then return nil, key end
  return ns, name
end

---@class vmsnap.reconcile.Controller
local Controller = {}
Controller.__index = Controller

---@class vmsnap.reconcile.Opts
---@field client vmsnap.k8s.Client
---@field name string                 controller name (logs, events' source, field manager)
---@field kind string                 the primary kind
---@field reconcile fun(ctx: vmsnap.reconcile.Context, obj: table): (table|boolean|nil), string?
---@field finalize? fun(ctx: vmsnap.reconcile.Context, obj: table): (boolean|nil), string?
---@field finalizer? string           added on the first reconcile; removed once finalize returns true
---@field watches? {kind: string, map: fun(obj: table): string[], indexes?: table, changed?: fun(obj: table, old: table): boolean}[]
---                                    (changed: a modification it returns false for brings no pass)
---@field indexes? table<string, fun(obj: table): string[]>   indexes on the primary kind
---@field namespace? string           watch one namespace (default all)
---@field workers? integer            (default 4)
---@field cache_reads? boolean        trust the synced cache: an object it lacks does not exist (no GET
---                                    that would only say 404)
---@field fresh? boolean               read the object from the API at each pass, not from the
---                                    cache (for reconciles whose actions must not come from a stale copy)
---@field max_backoff? number         seconds (default 20: a failing object is tried again at least this often, so that everything converges soon after an outage)
---@field resync? number              seconds between looks at every object even without a change
---                                    (default 300; 0 = never)
---@field leader_election? {name: string, namespace?: string, identity?: string, duration?: number}

--- A controller (not started). Controllers of one client share one cache
--- (vmsnap.reconcile.manager).
---@param opts vmsnap.reconcile.Opts
---@return vmsnap.reconcile.Controller
function M.controller(opts)
  assert(type(opts) == "table" and opts.client and opts.kind and type(opts.reconcile) == "function",
    "reconcile.controller: client, kind and reconcile are required")
  local self = setmetatable({
    opts = opts, client = opts.client, name = opts.name or opts.kind,
    manager = Manager.for_client(opts.client, opts.namespace),
    queue = Queue.new({ max_backoff = opts.max_backoff, name = opts.name or opts.kind }),
    m = families(),
    log = log.new("reconcile", { controller = opts.name or opts.kind }),
    counters = { reconciles = 0, errors = 0, requeues = 0, status_writes = 0, stale = 0, events = 0, finalized = 0,
      worker_restarts = 0 },
    stopping = false, healthy = true,
  }, Controller)
  return self
end

--- The cached informer of a kind (any spelling: "VirtualDisk", "vd",
--- "virtualdisks.virtualization.deckhouse.io") in the process's shared
--- cache, or nil when nobody watches it.
function Controller:informer_for(kind)
  return self.manager:find(kind)
end

-- the shared informers of the primary kind and the watched ones, feeding the queue
function Controller:start_informers()
  local o = self.opts
  local m = self.manager
  local primary, perr = m:informer(o.kind, { indexes = o.indexes })
  if not primary then return nil, perr end
  self.primary = primary
  self.subscriptions = {}
  local function subscribe(inf, fn) self.subscriptions[#self.subscriptions + 1] = { inf, inf:on(fn) } end
  subscribe(primary, function(_, obj) self.queue:add(M.key_of(obj)) end)
  for _, w in ipairs(o.watches or {}) do
    local inf, werr = m:informer(w.kind, { indexes = w.indexes })
    if not inf then return nil, werr end
    subscribe(inf, function(etype, obj, old)
      if w.changed and etype == "MODIFIED" and old and not w.changed(obj, old) then return end
      for _, src in ipairs({ obj, old }) do
        local ok, keys = pcall(w.map, src, self)
        if not ok and errors.code_of(keys) == "CANCELLED" then
          error(keys, 0) -- shutting down: not the mapping's fault
        elseif not ok then
          self.log:error("a watch's mapping failed", { kind = tostring(w.kind), error = tostring(keys),
            object = M.key_of(src) })
        elseif type(keys) == "table" then
          for _, k in ipairs(keys) do self.queue:add(k) end
        end
      end
    end)
  end
  m:start()
  self.manager_started = true
  return m:wait_synced(60)
end

-- an object being deleted: the finalize function until it is done, then our finalizer goes
function Controller:finalize_pass(ctx, obj)
  local fin = self.opts.finalizer
  if not (fin and ctx:has_finalizer(fin)) then return true end
  local done = true
  if self.opts.finalize then
    local ok, d, err, code = pcall(self.opts.finalize, ctx, obj)
    if not ok then return nil, tostring(d) end
    if d == nil and err then return nil, err, code end
    done = d
  end
  if done ~= true then return type(done) == "table" and done or { requeue_after = 1 } end
  local removed, rerr, rcode = ctx:remove_finalizer(fin)
  if not removed then return nil, rerr, rcode end
  self.counters.finalized = self.counters.finalized + 1
  return true
end

--- Reconcile one key now (what a worker calls for each queued key). Returns the
--- reconcile's result (a table like {requeue_after = s}, or true) or nil, err.
function Controller:reconcile_key(key)
  local ns, name = M.split_key(key)
  local obj
  if self.primary and not self.opts.fresh then
    obj = self.primary:get(ns, name)
  else
    local o, err, reason = self.client:get(self.opts.kind, name, { namespace = ns })
    if not o then
      if reason == "NotFound" then return true end
      return nil, err, reason
    end
    obj = o
  end
  if not obj then return true end -- gone
  -- work on a copy: the cached object stays as the server sent it
  obj = deep.copy(obj)
  local ctx = Context.new(self, obj)
  self.counters.reconciles = self.counters.reconciles + 1
  local fin = self.opts.finalizer
  if obj.metadata.deletionTimestamp then return self:finalize_pass(ctx, obj) end
  if fin and not ctx:has_finalizer(fin) then
    local added, aerr = ctx:add_finalizer(fin)
    if not added then return nil, aerr end
  end
  local ok, res, err, code = pcall(self.opts.reconcile, ctx, obj)
  if not ok then
    return nil, type(res) == "table" and tostring(res.message or res) or tostring(res)
  end
  if res == nil and err then
    -- a failed pass still shows what it found (a failure after a freeze says
    -- so on the object): the status is written, then the pass is retried
    ctx:flush()
    return nil, err, code
  end
  local wrote, werr, wcode = ctx:flush()
  if not wrote then
    -- computed from a stale copy: at once again, from the fresh one
    if wcode == "Stale" then
      self.counters.stale = self.counters.stale + 1
      return { requeue_after = 0 }
    end
    return nil, werr
  end
  if ctx.requeue and (type(res) ~= "table" or not res.requeue_after) then
    res = { requeue_after = ctx.requeue }
  end
  return res == nil and true or res
end

-- one queued key: a pass, whatever it raises (the pass fails, the worker goes on)
function Controller:process(key)
  local t0 = task.now()
  local ok, res, err, code = xpcall(self.reconcile_key, debug.traceback, self, key)
  local took = task.now() - t0
  self.m.time:observe({ self.name }, took)
  if took >= M.SLOW_PASS then
    -- a pass this long holds a worker (waits inside a pass: locks, retries)
    self.log:warn("a slow reconcile pass", { key = key, seconds = math.floor(took * 10 + 0.5) / 10 })
  end
  if not ok then
    if not self.stopping and errors.code_of(res) ~= "CANCELLED" then
      self.log:error("reconcile raised", { key = key, error = tostring(res) })
    end
    res, err, code = nil, tostring(res):match("^[^\n]*"), errors.code_of(res)
  end
  if res == nil and (self.stopping or rtcore.cancel_requested()) then
    -- the process or the controller is going down: not a failure to retry;
    -- the worker ends (waiting for the next key would hold the exit)
    self.queue:done(key)
    errors.raise("CANCELLED", "cancelled")
  elseif res == nil then
    self.counters.errors = self.counters.errors + 1
    self.m.total:inc({ self.name, "error" })
    self.m.errors:inc({ self.name })
    local delay = self.queue:retry(key)
    self.log:warn("reconcile failed; retrying", { key = key, error = tostring(err), code = code, after = delay })
  else
    self.queue:forget(key)
    if type(res) == "table" and res.requeue_after then
      self.counters.requeues = self.counters.requeues + 1
      self.m.total:inc({ self.name, res.requeue_after > 0 and "requeue_after" or "requeue" })
      self.queue:add_after(key, res.requeue_after)
    else
      self.m.total:inc({ self.name, "success" })
    end
  end
  self.queue:done(key)
end

function Controller:worker()
  while not self.stopping do
    local key = self.queue:get()
    if not key then return end
    self:process(key)
  end
end

-- a worker task; its end (normal or not) is reported on self.exits
function Controller:spawn_worker(i)
  self.workers[i] = task.spawn(function()
    local ok, err = pcall(self.worker, self)
    self.exits:send({ i = i, ok = ok, err = err })
  end)
end

M.SLOW_PASS = 10     -- seconds: a pass that takes longer is logged
M.CRASHES = 5        -- worker crashes ...
M.CRASH_WINDOW = 60  -- ... within this many seconds make a controller give up

-- restart workers that die, until stop(); a controller whose workers keep
-- dying gives up (stops, releases its lease) and reports unhealthy
function Controller:supervise(n)
  local alive, crashes = n, {}
  while alive > 0 do
    local ex = self.exits:recv()
    if not ex then break end
    alive = alive - 1
    if errors.code_of(ex.err) == "CANCELLED" or tostring(ex.err) == "cancelled" then
      self:stop() -- the process is going down
    elseif not self.stopping then
      self.log:error("a worker died; restarting it", { worker = ex.i, error = tostring(ex.err) })
      local now = task.now()
      crashes[#crashes + 1] = now
      while crashes[1] and crashes[1] < now - M.CRASH_WINDOW do table.remove(crashes, 1) end
      if #crashes >= M.CRASHES then
        self.log:error("workers keep dying: giving up the controller", { crashes = #crashes, window = M.CRASH_WINDOW })
        self.healthy = false
        self.gave_up = true
        self:stop()
      else
        self.counters.worker_restarts = self.counters.worker_restarts + 1
        self:spawn_worker(ex.i)
        alive = alive + 1
      end
    end
  end
end

-- one term: (with leader election) wait to lead, then work until stop() or
-- until the lease is lost
function Controller:term()
  local le = self.opts.leader_election
  if le then
    self.elector = leader.new(self.client, le)
    local ok, err = self.elector:acquire(function() return self.stopping end)
    if not ok then return nil, err end
    self.log:info("leading", { lease = le.name, identity = self.elector.identity })
    self.m.leader:set({ le.name }, 1)
  end
  local ok, err = self:start_informers()
  if not ok then self:shutdown() return nil, err end
  -- everything cached gets a first look
  for _, obj in ipairs(self.primary:list()) do self.queue:add(M.key_of(obj)) end
  local n = self.opts.workers or 4
  self.workers, self.exits = {}, task.channel(n)
  for i = 1, n do self:spawn_worker(i) end
  local helpers = {}
  local resync = self.opts.resync or 300
  if resync > 0 then
    -- a look at every object now and then: what no watch event said is seen anyway
    helpers[#helpers + 1] = task.spawn(function()
      while not self.stopping do
        task.sleep(resync)
        for _, obj in ipairs(self.primary:list()) do self.queue:add(M.key_of(obj)) end
      end
    end)
  end
  if self.elector then
    -- lose the lease: stop working (another replica takes over)
    helpers[#helpers + 1] = task.spawn(function()
      self.elector:keep(function() return self.stopping end)
      if not self.stopping then
        self.log:warn("lost the leader lease; stopping work")
        self.lost = true
      end
      self.m.leader:set({ self.opts.leader_election.name }, 0)
      self:halt()
    end)
  end
  self:supervise(n)
  for _, h in ipairs(helpers) do task.cancel(h) end
  self:shutdown()
  if self.gave_up then return nil, "the controller's workers keep dying" end
  return not self.lost or nil, self.lost and "lost the leader lease" or nil
end

--- Run until stop(): informers, workers, and (if configured) leader
--- election. A controller that loses its lease stops working and is a
--- candidate again (it does not end: a replica that could not renew for a
--- while must be able to lead again). Returns true after a stop, or nil,
--- message.
function Controller:run()
  while true do
    local ok, err = self:term()
    if not self.lost or self.stop_requested or self.gave_up then return ok, err end
    self.lost, self.stopping = false, false
    self.queue = Queue.new({ max_backoff = self.opts.max_backoff, name = self.name })
    self.counters.lease_losses = (self.counters.lease_losses or 0) + 1
    self.log:warn("a candidate for the leader lease again", { lease = self.opts.leader_election.name })
  end
end

-- no new work; workers finish the reconcile in hand
function Controller:halt()
  if self.stopping then return end
  self.stopping = true
  self.queue:shutdown()
  if self.elector then self.elector:stop() end
end

--- Stop for good: no new work; workers finish the reconcile in hand.
function Controller:stop()
  self.stop_requested = true
  self:halt()
end

function Controller:shutdown()
  for _, sub in ipairs(self.subscriptions or {}) do sub[1]:off(sub[2]) end
  self.subscriptions = {}
  if self.manager_started then
    self.manager_started = false
    self.manager:stop()
  end
  if self.elector then self.elector:release() end
end

--- Counters for metrics: reconciles, errors, requeues, status_writes, stale (a status computed from a copy older than the server's, reconciled again), events,
--- finalized, queue depth.
function Controller:metrics()
  local m = {}
  for k, v in pairs(self.counters) do m[k] = v end
  m.queue_depth = self.queue:len()
  return m
end

M.Controller = Controller
return M
