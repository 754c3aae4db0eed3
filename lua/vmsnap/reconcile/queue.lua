--- vmsnap.reconcile.queue: the controller's work queue.
---
--- Keys, not objects. A key waiting in the queue is not added twice; a key
--- added while a worker has it is queued again when the worker is done (so
--- no change is missed and no key runs in two workers at once). `retry`
--- requeues a failed key after an exponential back-off (0.1 s doubling up to
--- max_backoff, with jitter) that `forget` resets; `add_after` delays a key.
local task = require("vmsnap.task")
local metrics = require("vmsnap.metrics")

local M = {}

---@class vmsnap.reconcile.Queue
local Queue = {}
Queue.__index = Queue

-- the work queue families, named as client-go's (label: the queue's name)
local function families()
  local reg = metrics.process()
  return {
    depth = reg:gauge("workqueue_depth", "Current depth of the work queue.", { "name" }),
    adds = reg:counter("workqueue_adds_total", "Keys added to the work queue.", { "name" }),
    retries = reg:counter("workqueue_retries_total", "Keys retried after a failed pass.", { "name" }),
    wait = reg:histogram("workqueue_queue_duration_seconds", "Seconds a key waited in the queue before a worker took it.",
      { "name" }, { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60 }),
    work = reg:histogram("workqueue_work_duration_seconds", "Seconds a worker spent on a key.",
      { "name" }, { 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60 }),
  }
end

--- A queue; `opts.name` labels its metrics (the controller's name).
function M.new(opts)
  opts = opts or {}
  local q = setmetatable({ items = {}, head = 1, tail = 0, queued = {}, processing = {}, dirty = {}, failures = {},
    timers = {}, max_backoff = opts.max_backoff or 20, closed = false, ch = task.channel(1 << 30),
    added_at = {}, taken_at = {}, name = opts.name or "queue", m = families() }, Queue)
  q.label = { q.name }
  q.m.depth:set(q.label, 0)
  return q
end

function Queue:len()
  return self.tail - self.head + 1
end

--- Queue a key (unless it is queued already).
function Queue:add(key)
  if self.closed or key == nil then return end
  if self.processing[key] then
    self.dirty[key] = true
    return
  end
  if self.queued[key] then return end
  self.queued[key] = true
  self.tail = self.tail + 1
  self.items[self.tail] = key
  self.added_at[key] = task.now()
  self.m.adds:inc(self.label)
  self.m.depth:set(self.label, self:len())
  self.ch:send(true)
end

--- Queue a key after a delay (the earliest pending delay wins).
function Queue:add_after(key, seconds)
  if self.closed then return end
  if not seconds or seconds <= 0 then return self:add(key) end
  local due = task.now() + seconds
  local cur = self.timers[key]
  if cur and cur.due <= due then return end
  if cur then task.cancel(cur.task) end
  local entry = { due = due }
  entry.task = task.spawn(function()
    task.sleep(seconds)
    if self.timers[key] == entry then self.timers[key] = nil end
    self:add(key)
  end)
  self.timers[key] = entry
end

--- The next key (waits); nil once the queue is shut down.
function Queue:get()
  while true do
    if self.closed then return nil end
    if self.head <= self.tail then
      local key = self.items[self.head]
      self.items[self.head] = nil
      self.head = self.head + 1
      if self.head > self.tail then self.items, self.head, self.tail = {}, 1, 0 end
      self.queued[key] = nil
      self.processing[key] = true
      local now = task.now()
      if self.added_at[key] then self.m.wait:observe(self.label, now - self.added_at[key]) end
      self.added_at[key], self.taken_at[key] = nil, now
      self.m.depth:set(self.label, self:len())
      return key
    end
    local ok = self.ch:recv()
    if not ok then return nil end
  end
end

--- The worker is done with key: queue it again if it changed meanwhile.
function Queue:done(key)
  self.processing[key] = nil
  if self.taken_at[key] then
    self.m.work:observe(self.label, task.now() - self.taken_at[key])
    self.taken_at[key] = nil
  end
  if self.dirty[key] then
    self.dirty[key] = nil
    self:add(key)
  end
end

--- Requeue a failed key after its back-off; returns the delay.
function Queue:retry(key)
  self.m.retries:inc(self.label)
  local d = self:backoff(key)
  self:add_after(key, d)
  return d
end

--- Count a failure of key and return its next back-off, without queueing it.
function Queue:backoff(key)
  local n = (self.failures[key] or 0) + 1
  self.failures[key] = n
  local d = math.min(self.max_backoff, 0.1 * 2 ^ (n - 1))
  return d * (0.75 + math.random() * 0.5)
end

--- Forget a key's failures (it succeeded).
function Queue:forget(key)
  self.failures[key] = nil
end

function Queue:failures_of(key)
  return self.failures[key] or 0
end

--- Stop: get() returns nil; pending delays are dropped.
function Queue:shutdown()
  self.closed = true
  for _, e in pairs(self.timers) do task.cancel(e.task) end
  self.timers = {}
  self.ch:close()
end

return M
