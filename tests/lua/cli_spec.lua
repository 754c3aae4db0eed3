-- The vmsnap program as users meet it: exit codes, messages, logging, limits.
local t = require("tap")
local h = require("helpers")
local fs = require("vmsnap.fs")
local json = require("vmsnap.json")
local proc = require("vmsnap.proc")

local dir <close> = assert(fs.tempdir("vmsnap-cli-spec"))

local function script(name, text)
  local p = dir.path .. "/" .. name
  assert(fs.write_atomic(p, text))
  return p
end

t.test("a script gets arg and ... like lua", function()
  local p = script("args.lua", "print(arg[0], #arg, ...)")
  local r = h.run_vmsnap({ p, "a", "b" })
  t.eq(r.status, 0)
  t.eq(r.stdout, p .. "\t2\ta\tb\n")
  r = h.run_vmsnap({ "-e", "print(...)", "x" })
  t.eq(r.stdout, "x\n")
  r = h.run_vmsnap({ "run", p, "z" })
  t.eq(r.stdout, p .. "\t1\tz\n")
end)

t.test("VMSNAP_PARENT_PID: a server whose parent is killed stops as on SIGTERM; without it, it runs on", function()
  local task = require("vmsnap.task")
  local function alive(pid) return fs.exists("/proc/" .. pid) and not (fs.read_file("/proc/" .. pid .. "/stat") or ""):match("%) Z") end
  for _, tie in ipairs({ true, false }) do
    local data = dir.path .. "/parent-" .. tostring(tie)
    local pidfile = data .. ".pid"
    -- the parent: starts `vmsnap serve`, says its PID, then waits to be killed
    local parent = script("parent-" .. tostring(tie) .. ".lua", ([[
      local proc = require("vmsnap.proc")
      local fs = require("vmsnap.fs")
      local me = fs.read_file("/proc/self/stat"):match("^(%%d+)")
      local env = %s and { VMSNAP_PARENT_PID = me } or nil
      local p = assert(proc.spawn({ %q, "serve", "--data", %q }, { stdout = "null", stderr = "null", env = env }))
      fs.write_atomic(%q, tostring(p:pid()))
      require("vmsnap.task").sleep(60)
    ]]):format(tostring(tie), h.vmsnap, data, pidfile))
    local pp = assert(proc.spawn({ h.vmsnap, parent }, { stdout = "null", stderr = "null" }))
    local deadline = task.now() + 10
    while not fs.exists(pidfile) and task.now() < deadline do task.sleep(0.05) end
    local child = tonumber(fs.read_file(pidfile) or "")
    t.ok(child, "the server started")
    task.sleep(0.5)
    pp:kill("KILL")
    pp:wait(5)
    pp:close()
    deadline = task.now() + 10
    while child and alive(child) and task.now() < deadline do task.sleep(0.1) end
    if tie then
      t.ok(not alive(child), "the server went with its parent")
    else
      t.ok(alive(child), "without the variable it runs on")
      proc.run({ "kill", "-TERM", tostring(child) }, { timeout = 5 })
      deadline = task.now() + 10
      while alive(child) and task.now() < deadline do task.sleep(0.1) end
    end
  end
end)

t.test("a syntax error prints file:line: and exits 1", function()
  local p = script("syntax.lua", "local x = 1\nlocal = 2\n")
  local r = h.run_vmsnap({ p })
  t.eq(r.status, 1)
  t.contains(r.stderr, "vmsnap: " .. p .. ":2:")
  r = h.run_vmsnap({ "--check", p })
  t.eq(r.status, 1)
  t.contains(r.stderr, p .. ":2:")
end)

t.test("a runtime error prints a traceback and exits 1", function()
  local p = script("runtime.lua", "local function f()\n  error('boom')\nend\nf()\n")
  local r = h.run_vmsnap({ p })
  t.eq(r.status, 1)
  t.contains(r.stderr, "vmsnap: " .. p .. ":2: boom")
  t.contains(r.stderr, "stack traceback:")
  t.contains(r.stderr, p .. ":4: in main chunk")
end)

t.test("usage errors exit 2", function()
  for _, args in ipairs({ { "--bogus" }, { "-e" }, { "--deadline", "x", "-e", "" },
                          { "--memory-limit", "lots", "-e", "" }, { "nosuchcommand" }, { "run" } }) do
    local r = h.run_vmsnap(args)
    t.eq(r.status, 2, table.concat(args, " "))
    t.ok(r.stderr:match("^vmsnap: "), r.stderr)
    t.eq(r.stderr:find("stack traceback", 1, true), nil, "no traceback for a usage error")
  end
end)

t.test("a script that returns nil, message exits 3", function()
  local r = h.run_vmsnap({ "-e", "return nil, 'snapshot failed'" })
  t.eq(r.status, 3)
  t.eq(r.stderr, "vmsnap: snapshot failed\n")
end)

t.test("--version names vmsnap and its libraries; --help and help", function()
  local r = h.run_vmsnap({ "--version" })
  t.eq(r.status, 0)
  for _, lib in ipairs({ "vmsnap ", "Lua 5.4", "libuv ", "libcurl ", "libyaml ", "lua-cjson " }) do
    t.contains(r.stdout, lib)
  end
  r = h.run_vmsnap({ "--help" })
  t.eq(r.status, 0)
  t.contains(r.stdout, "exit status")
  r = h.run_vmsnap({ "help" })
  t.eq(r.status, 0)
  t.contains(r.stdout, "commands:")
end)

t.test("--deadline fails a run with TIMEOUT", function()
  local r = h.run_vmsnap({ "--deadline", "0.2", "-e", "require('vmsnap.task').sleep(10)" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "deadline exceeded")
end)

t.test("--memory-limit fails a run with NOMEM, even inside pcall", function()
  local r = h.run_vmsnap({ "--memory-limit", "16m", "-e",
    "local t = {} pcall(function() for i = 1, 1e8 do t[i] = ('x'):rep(100) .. i end end) local u = {} for i = 1, 1e8 do u[i] = i end" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "not enough memory")
end)

t.test("SIGINT cancels the tasks, runs their cleanups and exits 130", function()
  local p = script("int.lua", [[
local task = require("vmsnap.task")
local _ <close> = setmetatable({}, { __close = function()
  task.sleep(0.05)
  io.stdout:write("cleanup ran\n")
  io.stdout:flush()
end })
io.stdout:write("ready\n") io.stdout:flush()
task.sleep(30)
]])
  local child = assert(proc.spawn({ h.vmsnap, p }))
  require("vmsnap.task").sleep(0.3)
  child:kill("INT")
  local r = assert(child:wait(10))
  t.eq(r.status, 130)
  t.eq(r.stdout, "ready\ncleanup ran\n")
  t.contains(r.stderr, "interrupted")
end)

t.test("SIGINT stops a script that is busy computing (no wait to raise at)", function()
  local child = assert(proc.spawn({ h.vmsnap, "-e",
    "io.stdout:write('ready\\n') io.stdout:flush() local i = 0 while true do i = i + 1 end" }))
  require("vmsnap.task").sleep(0.3)
  child:kill("INT")
  local r = assert(child:wait(10))
  t.eq(r.status, 130)
  t.eq(r.stdout, "ready\n")
  t.contains(r.stderr, "interrupted")
end)

t.test("logs are text by default and JSON lines with --log-json", function()
  local code = "local log = require('vmsnap.log') log.info('hello', {vm = 'vm 1', n = 3}) log.debug('hidden')"
  local r = h.run_vmsnap({ "-e", code })
  t.ok(r.stderr:match("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z INFO  script: hello n=3 vm=\"vm 1\"\n$")
    or r.stderr:match("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z INFO  script: hello vm=\"vm 1\" n=3\n$"), r.stderr)
  r = h.run_vmsnap({ "--log-json", "--log-level", "debug", "-e", code })
  local lines = {}
  for l in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = assert(json.decode(l)) end
  t.eq(#lines, 2)
  t.eq({ lines[1].level, lines[1].msg, lines[1].vm, lines[1].n, lines[1].subsystem },
       { "info", "hello", "vm 1", 3, "script" })
  t.eq(lines[2].level, "debug")
end)

t.test("--path finds user modules first (VMSNAP_PATH too)", function()
  assert(fs.mkdir_p(dir.path .. "/mods"))
  assert(fs.write_atomic(dir.path .. "/mods/mymod.lua", "return { answer = 42 }"))
  local r = h.run_vmsnap({ "--path", dir.path .. "/mods", "-e", "print(require('mymod').answer)" })
  t.eq(r.stdout, "42\n")
  r = assert(proc.run({ h.vmsnap, "-e", "print(require('mymod').answer)" },
    { env = { VMSNAP_PATH = dir.path .. "/mods" } }))
  t.eq(r.stdout, "42\n")
end)

t.test("a plugin loads from the plugin path and waits without blocking", function()
  local code = [[
local hello = require("vmsnap.plugins.hello")
local task = require("vmsnap.task")
local other = task.spawn(function() task.sleep(0.01) return "other ran" end)
assert(hello.nap(0.05))
print(hello.greet("vm"), task.wait(other), select(3, hello.greet("")))
]]
  local r = h.run_vmsnap({ "--plugin-path", h.build .. "/plugins/?.so", "-e", code })
  t.eq(r.stderr, "")
  t.eq(r.stdout, "hello, vm\tother ran\tEINVAL\n")
end)

t.test("vmsnap up on a data directory it cannot use: one clear line, exit 3, nothing left running", function()
  local d <close> = assert(require("vmsnap.fs").tempdir("vmsnap-badup"))
  assert(require("vmsnap.fs").write_atomic(d.path .. "/vms", "not a directory"))
  local r = h.run_vmsnap({ "up", "--data", d.path }, { timeout = 30 })
  t.eq(r.status, 3, r.stderr)
  t.contains(r.stderr, "vmsnap: up: the data directory " .. d.path .. ": ")
  t.contains(r.stderr, "Not a directory")
  t.ok(not r.stderr:find("traceback", 1, true), "no traceback: " .. r.stderr)
  t.ok(not r.stderr:find("WARN", 1, true), "no task failed behind it: " .. r.stderr)
end)

return t.done()
