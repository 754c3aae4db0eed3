local t = require("tap")
local task = require("vmsnap.task")

t.test("spawn and wait return the task's values", function()
  local a = task.spawn(function(x, y) return x + y, "two" end, 1, 2)
  t.eq({ task.wait(a) }, { 3, "two" })
  t.eq(task.status(a), "done")
end)

t.test("a raised error becomes nil, message, ERROR", function()
  local a = task.spawn(function() error("boom") end)
  local v, msg, code = task.wait(a)
  t.eq(v, nil)
  t.contains(msg, "boom")
  t.eq(code, "ERROR")
  t.eq(task.status(a), "failed")
end)

t.test("sleeps interleave by time, not by spawn order", function()
  local order = {}
  local ts = {
    task.spawn(function() task.sleep(0.06) order[#order + 1] = "slow" end),
    task.spawn(function() task.sleep(0.01) order[#order + 1] = "fast" end),
  }
  task.wait_all(ts)
  t.eq(order, { "fast", "slow" })
end)

t.test("wait with a timeout returns TIMEOUT and leaves the task running", function()
  local a = task.spawn(function() task.sleep(0.2) return "late" end)
  local v, msg, code = task.wait(a, 0.02)
  t.eq({ v, code }, { nil, "TIMEOUT" })
  t.ok(msg)
  t.eq(task.wait(a), "late")
end)

t.test("timeout() cancels a sleeping function and runs its <close> handlers", function()
  local closed = false
  local v, msg, code = task.timeout(0.05, function()
    local _ <close> = setmetatable({}, { __close = function() closed = true end })
    task.sleep(10)
  end)
  t.eq({ v, code }, { nil, "TIMEOUT" })
  t.contains(msg, "timed out after 0.05s")
  t.ok(closed, "the <close> handler ran")
end)

t.test("a CPU-bound loop past its deadline fails with TIMEOUT even inside pcall", function()
  local v, _, code = task.timeout(0.05, function()
    while true do
      pcall(function() while true do end end)
    end
  end)
  t.eq({ v, code }, { nil, "TIMEOUT" })
end)

t.test("a CPU-bound loop inside plain coroutines past its deadline fails with TIMEOUT", function()
  -- tasks run without a Lua hook until a kill is due; the signal that
  -- sets one must find the coroutine that is running, however nested
  local v, _, code = task.timeout(0.05, function()
    coroutine.wrap(function()
      local co = coroutine.create(function() while true do end end)
      while true do pcall(coroutine.resume, co) end
    end)()
  end)
  t.eq({ v, code }, { nil, "TIMEOUT" })
  v, _, code = task.timeout(0.05, function()
    local co = coroutine.create(function() coroutine.yield() while true do end end)
    coroutine.resume(co)
    coroutine.resume(co)
  end)
  t.eq({ v, code }, { nil, "TIMEOUT" })
end)

t.test("a busy task is stopped at its own deadline, not at another task's", function()
  local t0 = task.now()
  -- a long deadline arms the timer first (and waits); then a short one computes
  local long = task.spawn(function()
    return task.timeout(0.4, function() task.sleep(0.01) while true do end end)
  end)
  task.sleep(0)
  local v, _, code = task.timeout(0.05, function() while true do end end)
  local short_took = task.now() - t0
  t.eq({ v, code }, { nil, "TIMEOUT" })
  t.ok(short_took < 0.3, "stopped at 0.05 s, not at the long deadline: " .. short_took)
  -- the timer fired for the short one; the long one must still be stopped
  t.eq(select(3, task.wait(long)), "TIMEOUT")
end)

t.test("coroutine.resume, wrap and close keep the base library's behaviour", function()
  local co = coroutine.create(function(a, b)
    local c = coroutine.yield(a + b)
    local d, e = coroutine.yield(c * 2)
    return d, e, "end"
  end)
  t.eq({ coroutine.resume(co, 1, 2) }, { true, 3 })
  t.eq({ coroutine.resume(co, 10) }, { true, 20 })
  t.eq({ coroutine.resume(co, "x", "y") }, { true, "x", "y", "end" })
  t.eq({ coroutine.resume(co) }, { false, "cannot resume dead coroutine" })
  t.eq({ coroutine.resume(coroutine.running()) }, { false, "cannot resume non-suspended coroutine" })
  local ok, err = pcall(coroutine.resume, 1)
  t.eq(ok, false)
  t.contains(err, "bad argument #1 to 'coroutine.resume' (thread expected, got number)")
  t.eq(select("#", coroutine.wrap(function() return table.unpack({}, 1, 200) end)()), 200)

  local w = coroutine.wrap(function(...) coroutine.yield(select("#", ...)) error("boom") end)
  t.eq(w(1, nil, 3), 3)
  ok, err = pcall(w)
  t.eq(ok, false)
  t.ok(err:match("^[^:]+:%d+: boom$"), "the error keeps its position: " .. err)
  t.eq({ pcall(w) }, { false, "cannot resume dead coroutine" })
  ok, err = pcall(coroutine.wrap(function() error({ code = 7 }) end))
  t.eq({ ok, err.code }, { false, 7 })

  local closed = {}
  local c = coroutine.create(function()
    local _ <close> = setmetatable({}, { __close = function() closed[#closed + 1] = "x" end })
    coroutine.yield(1)
  end)
  coroutine.resume(c)
  t.eq(coroutine.close(c), true)
  t.eq({ closed[1], coroutine.status(c) }, { "x", "dead" })
  c = coroutine.create(function()
    local _ <close> = setmetatable({}, { __close = function() error("in close", 0) end })
    coroutine.yield(1)
  end)
  coroutine.resume(c)
  t.eq({ coroutine.close(c) }, { false, "in close" })
  t.eq(coroutine.close(coroutine.create(print)), true)
  t.eq({ pcall(coroutine.close, coroutine.running()) }, { false, "cannot close a running coroutine" })
  local outer
  outer = coroutine.create(function()
    return coroutine.resume(coroutine.create(function() return pcall(coroutine.close, outer) end))
  end)
  local r = { coroutine.resume(outer) }
  t.eq({ r[1], r[2], r[3] }, { true, true, false })
  t.contains(r[4], "cannot close a normal coroutine")
end)

t.test("cancel raises CANCELLED at the wait; <close> handlers may still wait", function()
  local log = {}
  local a = task.spawn(function()
    local _ <close> = setmetatable({}, { __close = function()
      task.sleep(0.01) -- a cleanup that must do I/O (e.g. a thaw)
      log[#log + 1] = "cleaned"
    end })
    task.sleep(10)
    log[#log + 1] = "not reached"
  end)
  task.sleep(0.01)
  t.eq(task.cancel(a), true)
  local v, msg, code = task.wait(a)
  t.eq({ v, msg, code }, { nil, "cancelled", "CANCELLED" })
  t.eq(log, { "cleaned" })
  t.eq(task.cancel(a), false, "cancelling a finished task")
end)

t.test("a cancelled task that swallows the error still ends CANCELLED", function()
  local a = task.spawn(function()
    pcall(task.sleep, 10)
    return "swallowed"
  end)
  task.sleep(0.01)
  task.cancel(a)
  t.eq(select(3, task.wait(a)), "CANCELLED")
end)

t.test("a cancelled task cannot go on computing", function()
  local a = task.spawn(function()
    pcall(task.sleep, 10)
    while true do end
  end)
  task.sleep(0.01)
  task.cancel(a)
  t.eq(select(3, task.wait(a)), "CANCELLED")
end)

t.test("a task spawned inside timeout() inherits the deadline", function()
  local inner
  task.timeout(0.05, function()
    inner = task.spawn(function() task.sleep(10) end)
    task.sleep(10)
  end)
  t.eq(select(3, task.wait(inner)), "TIMEOUT")
end)

t.test("cancelling a task that never ran", function()
  local ran = false
  local a = task.spawn(function() ran = true end)
  task.cancel(a)
  t.eq(select(3, task.wait(a)), "CANCELLED")
  t.eq(ran, false)
end)

t.test("wait_all packs results in order, failures included", function()
  local r = task.wait_all({
    task.spawn(function() task.sleep(0.02) return 1 end),
    task.spawn(function() error("x") end),
    task.spawn(function() return nil, "soft", "CODE" end),
  })
  t.eq(r[1][1], 1)
  t.eq(r[2][3], "ERROR")
  t.eq({ r[3][1], r[3][2], r[3][3] }, { nil, "soft", "CODE" })
end)

t.test("wait_all with a timeout returns partial results", function()
  local v, _, code, partial = task.wait_all({
    task.spawn(function() return "a" end),
    task.spawn(function() task.sleep(1) end),
  }, 0.03)
  t.eq({ v, code }, { nil, "TIMEOUT" })
  t.eq(partial[1][1], "a")
end)

t.test("a task cannot wait for itself; waiting outside a task raises", function()
  local a
  a = task.spawn(function() return pcall(task.wait, a) end)
  local ok, err = task.wait(a)
  t.eq(ok, false)
  t.contains(err, "a task cannot wait for itself")
  local co = coroutine.wrap(function() return pcall(task.sleep, 0) end)
  local ok2, err2 = co()
  t.eq(ok2, false)
  t.contains(err2, "cannot wait here")
end)

t.test("channels: unbuffered handoff, buffering, timeouts, close", function()
  local ch = task.channel()
  local got = {}
  local r = task.spawn(function()
    for _ = 1, 3 do got[#got + 1] = ch:recv() end
  end)
  for i = 1, 3 do t.eq(ch:send(i), true) end
  task.wait(r)
  t.eq(got, { 1, 2, 3 })

  local b = task.channel(2)
  t.eq(b:send("x"), true)
  t.eq(b:send("y"), true)
  t.eq(select(3, b:send("z", 0.01)), "TIMEOUT")
  t.eq(b:recv(), "x")
  t.eq(b:len(), 1)

  local e = task.channel()
  t.eq(select(3, e:recv(0.01)), "TIMEOUT")
  local waiter = task.spawn(function() return e:recv() end)
  task.sleep(0.01)
  e:close()
  t.eq(select(3, task.wait(waiter)), "CLOSED")
  t.eq(select(3, e:send(1)), "CLOSED")
  t.contains(t.pcall_err(e.send, e, nil), "value expected")
end)

t.test("a receiver cancelled while waiting does not swallow a later value", function()
  local ch = task.channel()
  local r1 = task.spawn(function() return ch:recv() end)
  task.sleep(0.01)
  task.cancel(r1)
  task.wait(r1)
  local r2 = task.spawn(function() return ch:recv() end)
  task.sleep(0.01)
  t.eq(ch:send("v", 1), true)
  t.eq(task.wait(r2), "v")
end)

t.test("misuse raises with the argument named", function()
  t.contains(t.pcall_err(task.spawn, 42), "bad argument #1 to 'spawn'")
  t.contains(t.pcall_err(task.sleep, -1), "seconds must not be negative")
  t.contains(t.pcall_err(task.timeout, 1, "x"), "bad argument #2 to 'timeout'")
end)

return t.done()
