--- vmsnap.task: tasks (coroutines) on the event loop.
---
--- Every script runs as a task. Waiting calls (sleep, http, proc, ...) suspend
--- only the calling task. Cancelling a task raises CANCELLED at its wait point;
--- the error unwinds normally, so `<close>` variables run and may themselves
--- wait (a thaw, a cleanup request) during the cancel grace (default 5 s).
--- After that grace every line raises again, so `pcall` cannot keep a
--- cancelled task alive. A task's outcome after a cancel or deadline is
--- always `nil, message, "CANCELLED"|"TIMEOUT"`, whatever it returned.
local core = require("vmsnap.core.task")

local pack, unpack, remove, max = table.pack, table.unpack, table.remove, math.max
local setmetatable, error, type = setmetatable, error, type

local M = {}

--- Start `fn(...)` as a new task; returns the task at once.
--- A task spawned inside a task with a deadline inherits that deadline.
---@param fn function
---@return userdata task
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  return core.spawn(fn, ...)
end

--- Suspend the current task for `seconds`.
---@param seconds number
function M.sleep(seconds)
  return core.sleep(seconds)
end

--- Let other ready tasks run, then continue.
function M.yield()
  return core.sleep(0)
end

--- Wait for `t` to finish; returns its results, or `nil, message, code` if it
--- failed (code "ERROR" for a raised error, "CANCELLED", "TIMEOUT", "NOMEM"),
--- or `nil, message, "TIMEOUT"` if `timeout` seconds passed first.
---@param t userdata
---@param timeout? number
function M.wait(t, timeout)
  return core.wait(t, timeout)
end

--- Request cancellation of `t`; returns false if it had already finished or been cancelled.
---@param t userdata
---@return boolean
function M.cancel(t)
  return core.cancel(t)
end

--- "ready", "running", "waiting", "done", "failed" or "cancelled".
---@param t userdata
---@return string
function M.status(t)
  return core.status(t)
end

local function finished(t)
  local s = core.status(t)
  return s == "done" or s == "failed" or s == "cancelled"
end
M.is_finished = finished

--- The running task (nil outside a task).
function M.current()
  return core.current()
end

--- Monotonic time in seconds.
---@return number
function M.now()
  return core.now()
end

--- The absolute deadline (in `now()` seconds) of `t` or of the current task, if any.
function M.deadline(t)
  return core.deadline(t)
end

--- Number of live tasks.
function M.count()
  return core.count()
end

--- Wait for every task in `tasks`. Returns a list whose element i is the
--- packed results of tasks[i] (`{n=..., ...}`; a failed task gives
--- `{nil, message, code, n=3}`), or `nil, message, "TIMEOUT", partial` when
--- `timeout` seconds pass first.
---@param tasks userdata[]
---@param timeout? number
function M.wait_all(tasks, timeout)
  local deadline = timeout and core.now() + timeout
  local results = {}
  for i = 1, #tasks do
    local t = tasks[i]
    local r = pack(core.wait(t, deadline and max(0, deadline - core.now()) or nil))
    if r[1] == nil and r[3] == "TIMEOUT" and not finished(t) then
      return nil, ("timeout waiting for %d task(s)"):format(#tasks - i + 1), "TIMEOUT", results
    end
    results[i] = r
  end
  return results
end

--- Run `fn(...)` with a deadline `seconds` from now. Returns its results, or
--- `nil, "timed out after Ns", "TIMEOUT"` when the deadline passes: the
--- function is then cancelled (its `<close>` variables run) even if it is
--- busy computing or catches the error with pcall.
---@param seconds number
---@param fn function
function M.timeout(seconds, fn, ...)
  if type(seconds) ~= "number" or seconds < 0 then
    error("bad argument #1 to 'timeout' (non-negative number expected)", 2)
  end
  if type(fn) ~= "function" then
    error("bad argument #2 to 'timeout' (function expected, got " .. type(fn) .. ")", 2)
  end
  local child = core.spawn_within(seconds, fn, ...)
  -- if we are cancelled while waiting, the child is cancelled too and we
  -- wait for its cleanups before unwinding further
  local guard <close> = setmetatable({}, {
    __close = function()
      if not finished(child) then
        core.cancel(child)
        if coroutine.isyieldable() then pcall(core.wait, child) end
      end
    end,
  })
  local r = pack(core.wait(child))
  if r[1] == nil and r[3] == "TIMEOUT" and core.deadline(child) and core.now() >= core.deadline(child) - 0.001 then
    return nil, ("timed out after %gs"):format(seconds), "TIMEOUT"
  end
  return unpack(r, 1, r.n)
end

--- Run `fn(...)` as a task with bounds and wait for it (a hook's handler):
--- opts.timeout (seconds), opts.memory (bytes the Lua heap may grow by while
--- it and the tasks it spawns run; growth past it is refused, whatever C
--- function asks), opts.grace (seconds its cleanups get once a bound is hit;
--- 0: every line raises at once), opts.sandbox (string patterns are checked
--- for cost). A bound cannot be caught: once hit, the task is unwound even
--- through pcall. Returns fn's results, or nil, message, code ("TIMEOUT",
--- "NOMEM", "ERROR", "CANCELLED").
---@param opts {timeout?: number, memory?: integer, grace?: number, sandbox?: boolean}
---@param fn function
function M.bounded(opts, fn, ...)
  if type(opts) ~= "table" then error("bad argument #1 to 'bounded' (table expected, got " .. type(opts) .. ")", 2) end
  if type(fn) ~= "function" then
    error("bad argument #2 to 'bounded' (function expected, got " .. type(fn) .. ")", 2)
  end
  local child = core.spawn_bounded({ within = opts.timeout, memory = opts.memory, grace = opts.grace,
    sandbox = opts.sandbox }, fn, ...)
  local guard <close> = setmetatable({}, {
    __close = function()
      if not finished(child) then
        core.cancel(child)
        if coroutine.isyieldable() then pcall(core.wait, child) end
      end
    end,
  })
  local r = pack(core.wait(child))
  if r[1] == nil and r[3] == "TIMEOUT" and opts.timeout then
    return nil, ("timed out after %gs"):format(opts.timeout), "TIMEOUT"
  end
  if r[1] == nil and r[3] == "NOMEM" and opts.memory then
    return nil, ("exceeded its memory limit of %g MiB"):format(opts.memory / 1048576), "NOMEM"
  end
  return unpack(r, 1, r.n)
end

-- ---------------------------------------------------------------- channels

---@class vmsnap.task.Channel
local Channel = {}
Channel.__index = Channel

--- A channel: `send` blocks until a receiver takes the value (capacity 0) or
--- until there is room in the buffer (capacity n).
---@param capacity? integer
---@return vmsnap.task.Channel
function M.channel(capacity)
  capacity = capacity or 0
  if type(capacity) ~= "number" or capacity < 0 then
    error("bad argument #1 to 'channel' (non-negative integer expected)", 2)
  end
  return setmetatable({ cap = capacity, buf = {}, recvq = {}, sendq = {}, closed = false }, Channel)
end

local function abandon_on_exit(rec)
  return setmetatable({}, { __close = function() if not rec.done then rec.gone = true end end })
end

local function take_waiter(q)
  while #q > 0 do
    local w = remove(q, 1)
    if not w.gone then return w end
  end
end

local function drop(q, rec)
  for i = 1, #q do
    if q[i] == rec then remove(q, i) return end
  end
end

--- Send `value` (not nil). Returns true, or `nil, message, "CLOSED"|"TIMEOUT"`.
---@param value any
---@param timeout? number
function Channel:send(value, timeout)
  if value == nil then error("bad argument #1 to 'send' (value expected)", 2) end
  if self.closed then return nil, "channel closed", "CLOSED" end
  local r = take_waiter(self.recvq)
  if r then
    r.value, r.done = value, true
    core.wakeup(r.task)
    return true
  end
  if #self.buf < self.cap then
    self.buf[#self.buf + 1] = value
    return true
  end
  local me = { task = core.current(), value = value, done = false }
  if not me.task then error("cannot wait here: not in a task", 2) end
  self.sendq[#self.sendq + 1] = me
  local _ <close> = abandon_on_exit(me)
  local _, err, code = core.suspend(timeout)
  if me.done then return true end
  drop(self.sendq, me)
  if self.closed then return nil, "channel closed", "CLOSED" end
  return nil, err or "timeout", code or "TIMEOUT"
end

--- Receive a value. Returns it, or `nil, message, "CLOSED"|"TIMEOUT"`.
---@param timeout? number
function Channel:recv(timeout)
  if #self.buf > 0 then
    local v = remove(self.buf, 1)
    local s = take_waiter(self.sendq)
    if s then
      self.buf[#self.buf + 1] = s.value
      s.done = true
      core.wakeup(s.task)
    end
    return v
  end
  local s = take_waiter(self.sendq)
  if s then
    s.done = true
    core.wakeup(s.task)
    return s.value
  end
  if self.closed then return nil, "channel closed", "CLOSED" end
  local me = { task = core.current(), done = false }
  if not me.task then error("cannot wait here: not in a task", 2) end
  self.recvq[#self.recvq + 1] = me
  local _ <close> = abandon_on_exit(me)
  local _, err, code = core.suspend(timeout)
  if me.done then return me.value end
  drop(self.recvq, me)
  if self.closed then return nil, "channel closed", "CLOSED" end
  return nil, err or "timeout", code or "TIMEOUT"
end

--- Close the channel: waiting senders and receivers get CLOSED; buffered
--- values can still be received.
function Channel:close()
  if self.closed then return end
  self.closed = true
  for _, q in ipairs({ self.recvq, self.sendq }) do
    for i = 1, #q do
      if not q[i].gone then core.wakeup(q[i].task) end
    end
  end
end

--- Number of buffered values.
function Channel:len()
  return #self.buf
end

return M
