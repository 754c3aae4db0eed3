--- tap: the small test harness the Lua specs run under (`vmsnap SPEC`).
---
---   local t = require("tap")
---   t.test("name", function() t.eq(1 + 1, 2) end)
---   return t.done()
---
--- Each test runs as its own task with a time limit (t.timeout, default 20 s):
--- a test whose awaited step never completes fails instead of hanging.
--- `expect(n)` returns a callback that must be called n times before the
--- test ends (luv's expect). Output is TAP; the last line is
--- "N passed, N failed". A failure makes the run exit non-zero.
local task = require("vmsnap.task")

local M = { timeout = 20 }

local passed, failed, count = 0, 0, 0
local expectations

local function fmt(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" or depth > 4 then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = "[" .. fmt(k) .. "]=" .. fmt(v[k], depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
M.fmt = fmt

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then
    if type(a) == "number" and type(b) == "number" and a ~= a and b ~= b then return true end
    return false
  end
  for k, v in pairs(a) do
    if not deep_eq(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end
M.deep_eq = deep_eq

--- Assert deep equality.
function M.eq(got, want, what)
  if not deep_eq(got, want) then
    error(("%sexpected %s, got %s"):format(what and (what .. ": ") or "", fmt(want), fmt(got)), 2)
  end
end

--- Assert that `v` is truthy.
function M.ok(v, what)
  if not v then error((what or "expected a true value") .. ", got " .. fmt(v), 2) end
  return v
end

--- Assert that `s` contains `part` (plain).
function M.contains(s, part, what)
  if type(s) ~= "string" or not s:find(part, 1, true) then
    error(("%sexpected %s to contain %s"):format(what and (what .. ": ") or "", fmt(s), fmt(part)), 2)
  end
end

--- Call fn(...) expecting it to raise; returns the error message (tostring of the error value).
function M.pcall_err(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error("expected an error, the call succeeded", 2) end
  return tostring(err), err
end

--- A callback that must be called `n` times (default 1) before the test ends.
function M.expect(n)
  local e = { want = n or 1, got = 0 }
  expectations[#expectations + 1] = e
  return function(...) e.got = e.got + 1 return ... end
end

function M.test(name, fn)
  count = count + 1
  expectations = {}
  local t0 = task.now()
  local r = table.pack(task.timeout(M.timeout, function()
    return xpcall(fn, function(e)
      local msg = type(e) == "table" and (e.message or fmt(e)) or tostring(e)
      return debug.traceback(msg, 2)
    end)
  end))
  local ok, err = r[1], r[2]
  if ok == nil then err = "test did not finish: " .. tostring(r[2]) end
  if ok then
    for _, e in ipairs(expectations) do
      if e.got ~= e.want then
        ok, err = false, ("expected a callback %d time(s), it ran %d time(s)"):format(e.want, e.got)
      end
    end
  end
  local ms = (task.now() - t0) * 1000
  if ok then
    passed = passed + 1
    io.stdout:write(("ok %d - %s (%.0f ms)\n"):format(count, name, ms))
  else
    failed = failed + 1
    io.stdout:write(("not ok %d - %s\n"):format(count, name))
    io.stdout:write("  # " .. tostring(err):gsub("\n", "\n  # ") .. "\n")
  end
  io.stdout:flush()
end

--- Skip a test with a reason.
function M.skip(name, why)
  count = count + 1
  passed = passed + 1
  io.stdout:write(("ok %d - %s # SKIP %s\n"):format(count, name, why))
end

--- How many tests failed so far (a spec that prints its evidence on failure).
function M.failures()
  return failed
end

function M.done()
  io.stdout:write(("1..%d\n%d passed, %d failed\n"):format(count, passed, failed))
  io.stdout:flush()
  if failed > 0 then error(("%d test(s) failed"):format(failed), 0) end
end

return M
