local t = require("tap")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")

t.test("run captures stdout, stderr and the exit status", function()
  local r = assert(proc.run({ "sh", "-c", "echo out; echo err >&2; exit 7" }))
  t.eq(r.stdout, "out\n")
  t.eq(r.stderr, "err\n")
  t.eq(r.status, 7)
  t.ok(r.pid > 0)
end)

t.test("stdin, env and cwd", function()
  local r = assert(proc.run({ "sh", "-c", 'cat; echo "$VMSNAP_T"; pwd' },
    { stdin = "from stdin\n", env = { VMSNAP_T = "x=1" }, cwd = "/" }))
  t.eq(r.stdout, "from stdin\nx=1\n/\n")
  local c = assert(proc.run({ "/usr/bin/env" }, { clear_env = true, env = { ONLY = "1" } }))
  t.eq(c.stdout, "ONLY=1\n")
end)

t.test("a missing program fails with ENOENT", function()
  local v, err, code = proc.run({ "/nonexistent/prog" })
  t.eq({ v, code }, { nil, "ENOENT" })
  t.contains(err, "/nonexistent/prog")
end)

t.test("timeout kills the process and returns the partial result", function()
  local t0 = task.now()
  local v, err, code, partial = proc.run({ "sh", "-c", "echo started; exec sleep 30" }, { timeout = 0.2 })
  t.eq({ v, code }, { nil, "TIMEOUT" })
  t.contains(err, "timed out after 0.2s")
  t.eq(partial.stdout, "started\n")
  t.ok(partial.signal, "killed by a signal")
  t.ok(task.now() - t0 < 5, "returned promptly")
end)

t.test("check turns a non-zero exit into EXIT with stderr", function()
  local v, err, code = proc.run({ "sh", "-c", "echo nope >&2; exit 3" }, { check = true })
  t.eq({ v, code }, { nil, "EXIT" })
  t.contains(err, "exit status 3: nope")
end)

t.test("processes run concurrently with other tasks", function()
  local t0 = task.now()
  local ts = {}
  for i = 1, 5 do ts[i] = task.spawn(proc.run, { "sleep", "0.3" }) end
  local rs = assert(task.wait_all(ts))
  for i = 1, 5 do t.eq(rs[i][1].status, 0) end
  t.ok(task.now() - t0 < 1.2, "five 0.3 s sleeps ran side by side")
end)

t.test("spawn, kill and wait", function()
  local p <close> = assert(proc.spawn({ "sleep", "30" }))
  t.eq(p:running(), true)
  t.eq(p:kill("TERM"), true)
  local r = assert(p:wait(5))
  t.eq(r.signal, 15)
  t.eq(p:running(), false)
  t.contains(t.pcall_err(p.kill, p, "NOPE"), "unknown signal 'NOPE'")
end)

t.test("bad argv raises", function()
  t.contains(t.pcall_err(proc.run, {}), "bad argument #1 to 'run'")
  t.contains(t.pcall_err(proc.run, "ls"), "bad argument #1 to 'run'")
end)

return t.done()
