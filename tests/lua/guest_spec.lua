-- vmsnap.qga and vmsnap.guest with a real qemu-ga on a unix socket, freezing
-- only an ext4 image loop-mounted in a temporary directory (see
-- helpers.qga_env for the safety rules), and a VM in `vmsnap serve` for the
-- lease and the API transport.
local t = require("tap")
local qga = require("vmsnap.qga")
local guest = require("vmsnap.guest")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local h = require("helpers")

if not proc.run({ "qemu-ga", "--version" }, { timeout = 10 }) then
  t.skip("guest agent tests", "qemu-ga is not installed (make deps)")
  return t.done()
end
local env <close>, why = h.qga_env()
if not env then
  t.skip("guest agent tests", why)
  return t.done()
end

t.test("qga: ping, info, status, errors as codes", function()
  local a <close> = assert(qga.connect(env.socket))
  t.ok(a:ping())
  local info = assert(a:info())
  t.ok(info.version:match("^%d+%.%d+"), info.version)
  t.eq(assert(a:fsfreeze_status()), "thawed")
  local r, msg, code = a:fsfreeze_freeze()
  t.eq(r, nil, "the global freeze is blocked for the tests")
  t.ok(code == "CommandNotFound" or code == "CommandDisabled", code)
  t.contains(msg, "guest-fsfreeze-freeze")
  r, msg, code = a:call("guest-no-such-command")
  t.eq(code, "CommandNotFound")
  t.ok(a:ping(), "the connection is still in step after errors")
  local fsi = assert(a:get_fsinfo())
  local found = false
  for _, f in ipairs(fsi) do if f.mountpoint == env.mnt then found = true end end
  t.ok(found, "get_fsinfo lists the test image's mountpoint")
  t.ok(a:get_host_name()["host-name"])
  local os_ = assert(a:get_osinfo())
  t.ok(os_.id or os_["kernel-release"], "osinfo")
  local ifs = assert(a:network_get_interfaces())
  t.ok(#ifs >= 1, "at least the loopback interface")
end)

t.test("qga: exec captures output and exit code, takes input, times out", function()
  local a <close> = assert(qga.connect(env.socket))
  local r = assert(a:exec({ "/bin/sh", "-c", "echo out; echo err >&2; exit 3" }))
  t.eq(r.exitcode, 3)
  t.eq(r.stdout, "out\n")
  t.eq(r.stderr, "err\n")
  r = assert(a:exec({ "/bin/cat" }, { input = "from stdin" }))
  t.eq(r.stdout, "from stdin")
  r = assert(a:exec({ "/bin/sh", "-c", "echo $VMSNAP_X" }, { env = { VMSNAP_X = "set" } }))
  t.eq(r.stdout, "set\n")
  local none, msg, code, pid = a:exec({ "/bin/sleep", "5" }, { timeout = 0.3 })
  t.eq(none, nil)
  t.eq(code, "TIMEOUT")
  t.ok(type(pid) == "number" and pid > 0, "the guest pid is reported")
  t.contains(msg, "pid " .. pid)
  assert(a:exec({ "/bin/kill", tostring(pid) }))
end)

t.test("qga: files", function()
  local a <close> = assert(qga.connect(env.socket))
  local hdl = assert(a:file_open(env.dir .. "/f.txt", "w"))
  t.eq(assert(a:file_write(hdl, "line\n")), 5)
  assert(a:file_close(hdl))
  hdl = assert(a:file_open(env.dir .. "/f.txt", "r"))
  local data, eof = a:file_read(hdl)
  t.eq(data, "line\n")
  t.eq(eof, true)
  assert(a:file_close(hdl))
  local _, _, code = a:file_open(env.dir .. "/missing/x", "r")
  t.eq(code, "GenericError")
end)

t.test("freeze of the image blocks a writer until the thaw", function()
  local g = assert(guest.for_vm(nil, nil, { socket = env.socket }))
  local f = assert(g:freeze({ budget = 10, mountpoints = { env.mnt } }))
  t.eq(f.count, 1)
  t.eq(assert(g:status()), "frozen")
  local w = assert(proc.spawn({ "sh", "-c", "echo data > " .. env.mnt .. "/written && echo done" },
    { stdout = "capture" }))
  local _ <close> = w
  task.sleep(0.5)
  t.ok(w:running(), "the writer is blocked while frozen")
  assert(f:thaw())
  local r = assert(w:wait(5))
  t.eq(r.stdout, "done\n", "it finishes after the thaw")
  t.eq(assert(g:status()), "thawed")
  t.ok(f.duration >= 0.5)
end)

t.test("the guard thaws when its scope ends with an error", function()
  local g = assert(guest.for_vm(nil, nil, { socket = env.socket }))
  local ok, err = pcall(function()
    local f <close> = assert(g:freeze({ budget = 10, mountpoints = { env.mnt } }))
    t.eq(assert(g:status()), "frozen")
    error("snapshot failed")
  end)
  t.eq(ok, false)
  t.contains(tostring(err), "snapshot failed")
  t.eq(assert(g:status()), "thawed")
  t.eq(env:frozen(), false, "the kernel agrees: writes go through")
end)

t.test("the budget thaws a guest nobody thaws, and the guard reports it", function()
  local g = assert(guest.for_vm(nil, nil, { socket = env.socket }))
  local f = assert(g:freeze({ budget = 0.3, mountpoints = { env.mnt } }))
  task.sleep(0.8)
  t.eq(f.expired, true)
  t.eq(f.thawed, true)
  t.eq(assert(g:status()), "thawed")
  t.ok(f:thaw(), "thaw after expiry is harmless")
  -- two thaws at once: the second waits for the first and gets its result
  local f2 = assert(g:freeze({ budget = 10, mountpoints = { env.mnt } }))
  local a1 = task.spawn(function() return f2:thaw() end)
  local a2 = task.spawn(function() return f2:thaw() end)
  local res = assert(task.wait_all({ a1, a2 }, 5))
  t.eq(res[1][1], true)
  t.eq(res[2][1], true)
  t.eq(assert(g:status()), "thawed")
end)

t.test("cancelling the task that froze thaws", function()
  local g = assert(guest.for_vm(nil, nil, { socket = env.socket }))
  local tk = task.spawn(function()
    local f <close> = assert(g:freeze({ budget = 30, mountpoints = { env.mnt } }))
    task.sleep(30)
  end)
  task.sleep(0.3)
  t.eq(assert(g:status()), "frozen")
  task.cancel(tk)
  local _, _, code = task.wait(tk, 10)
  t.eq(code, "CANCELLED")
  t.eq(assert(g:status()), "thawed")
end)

-- ------------------------------------------------------------ with a VM

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local function make_vm(name, annotations)
  return assert(c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachine",
    metadata = { name = name, annotations = annotations },
    spec = { runPolicy = "Manual", blockDeviceRefs = { { kind = "VirtualDisk", name = name .. "-root" } } } }))
end
local vm = make_vm("vm-1", { ["vmsnap.io/agent"] = env.socket,
  ["vmsnap.io/freeze-mountpoints"] = json.encode({ env.mnt }) })

t.test("a freeze is leased on the VM and the lease goes with the thaw", function()
  local g = assert(guest.for_vm(c, vm))
  t.eq(g.transport, "socket")
  local f = assert(g:freeze({ budget = 10 }))
  local cur = assert(c:get("vm", "vm-1"))
  local lease = guest.parse_lease(cur)
  t.eq(lease.holder, guest.holder())
  t.eq(guest.holder_alive(lease.holder), true)
  assert(f:thaw())
  cur = assert(c:get("vm", "vm-1"))
  t.eq(guest.parse_lease(cur), nil)
end)

t.test("a live lease of another holder refuses a second freeze", function()
  local pid1 = require("vmsnap.fs").read_file("/proc/1/stat")
  local start = pid1 and pid1:match("%) (.*)$")
  local fields = {}
  for f in (start or ""):gmatch("%S+") do fields[#fields + 1] = f end
  local holder = guest.holder():gsub("/%d+/[^/]+$", "/1/" .. tostring(fields[20]))
  assert(c:patch("vm", "vm-1", { metadata = { annotations = { [guest.LEASE] = json.encode({ holder = holder,
    since = "2026-01-01T00:00:00Z", deadline = "2099-01-01T00:00:00Z" }) } } }))
  local g = assert(guest.for_vm(c, assert(c:get("vm", "vm-1"))))
  local r, msg, code = g:freeze({ budget = 5 })
  t.eq(r, nil)
  t.eq(code, "FROZEN_BY_OTHER")
  t.contains(msg, holder)
  t.eq(assert(g:status()), "thawed", "nothing was frozen")
  assert(c:patch("vm", "vm-1", { metadata = { annotations = { [guest.LEASE] = json.null } } }))
end)

t.test("kill -9 of the process that froze: its watchdog (vmsnap-launcher thaw-after) thaws within 1 s; thaw-orphans removes the lease", function()
  local child = assert(proc.spawn({ h.vmsnap, "-e", [[
    local guest = require("vmsnap.guest")
    local k8s = require("vmsnap.k8s")
    local c = assert(k8s.client({ kubeconfig = arg[1] }))
    local g = assert(guest.for_vm(c, assert(c:get("vm", "vm-1"))))
    local f = assert(g:freeze({ budget = 60 }))
    io.stdout:write("frozen\n") io.stdout:flush()
    require("vmsnap.task").sleep(60)
  ]], srv.kubeconfig }, { stdout = "capture" }))
  local _ <close> = child
  local lease
  for _ = 1, 100 do
    lease = guest.parse_lease(assert(c:get("vm", "vm-1")))
    if lease and env:frozen() then break end
    task.sleep(0.1)
  end
  t.ok(lease, "the child recorded its lease")
  child:kill("KILL")
  local killed = task.now()
  child:wait(5)
  local thawed
  while task.now() - killed < 3 do
    if not env:frozen() then thawed = task.now() - killed break end
  end
  t.ok(thawed and thawed < 1, ("thawed %.2f s after the kill"):format(thawed or -1))
  t.eq(guest.holder_alive(lease.holder), false, "its holder is gone")
  local r = h.run_vmsnap({ "guest", "thaw-orphans" }, { env = { KUBECONFIG = srv.kubeconfig }, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "default/vm-1: thawed")
  t.eq(env:frozen(), false)
  t.eq(guest.parse_lease(assert(c:get("vm", "vm-1"))), nil, "the lease is gone")
  r = h.run_vmsnap({ "guest", "thaw-orphans" }, { env = { KUBECONFIG = srv.kubeconfig }, timeout = 30 })
  t.contains(r.stdout, "no stale freeze leases")
end)

t.test("the API transport: freeze/unfreeze subresources; the server thaws after unfreezeTimeout", function()
  local g = assert(guest.for_vm(c, assert(c:get("vm", "vm-1")), { transport = "api" }))
  t.eq(g.transport, "api")
  do
    local f <close> = assert(g:freeze({ budget = 10 }))
    t.eq(env:frozen(), true)
  end
  t.eq(env:frozen(), false)
  -- nobody unfreezes: the server does, after unfreezeTimeout
  assert(c:subresource("vm", "vm-1", "freeze", { method = "PUT", group = guest.SUBRESOURCE_GROUP,
    body = { unfreezeTimeout = "1s" } }))
  t.eq(env:frozen(), true)
  task.sleep(1.5)
  t.eq(env:frozen(), false)
  local vm2 = make_vm("no-agent")
  local _, msg, reason = c:subresource("vm", "no-agent", "freeze", { method = "PUT", group = guest.SUBRESOURCE_GROUP,
    body = { unfreezeTimeout = "5s" } })
  t.eq(reason, "Conflict")
  t.contains(msg, "no guest agent")
  local _, _, r2 = c:subresource("vm", "vm-1", "freeze", { method = "PUT", group = guest.SUBRESOURCE_GROUP,
    body = { unfreezeTimeout = "soon" } })
  t.eq(r2, "BadRequest")
  _ = vm2
end)

t.test("a freeze asked again while frozen (its first answer lost) is 200 and starts the unfreeze timeout again", function()
  local function freeze(timeout)
    return c:subresource("vm", "vm-1", "freeze", { method = "PUT", group = guest.SUBRESOURCE_GROUP,
      body = { unfreezeTimeout = timeout } })
  end
  assert(freeze("1s"))
  t.eq(env:frozen(), true)
  task.sleep(0.5)
  local again, err, reason = freeze("2s")
  t.ok(again, "the second freeze is answered 200: " .. tostring(err) .. " " .. tostring(reason))
  -- past the first timeout: still frozen, the second one runs from its call
  task.sleep(1.0)
  t.eq(env:frozen(), true, "frozen past the first freeze's timeout")
  local thawed
  local t0 = task.now()
  while task.now() - t0 < 3 do
    if not env:frozen() then thawed = task.now() - t0 break end
    task.sleep(0.05)
  end
  t.ok(thawed and thawed < 1.6, ("thawed by the second timeout, %.2f s after the check"):format(thawed or -1))
  -- and an unfreeze ends it at once, as before
  assert(freeze("5s"))
  assert(freeze("5s"))
  assert(c:subresource("vm", "vm-1", "unfreeze", { method = "PUT", group = guest.SUBRESOURCE_GROUP }))
  t.eq(env:frozen(), false)
end)

t.test("vmsnap guest: ping, status, exec, freeze with a budget", function()
  local function run(args) return h.run_vmsnap(args, { timeout = 30 }) end
  t.eq(run({ "guest", "ping", env.socket }).stdout, "ok\n")
  t.eq(run({ "guest", "status", env.socket }).stdout, "thawed\n")
  local r = run({ "guest", "exec", env.socket, "--", "/bin/sh", "-c", "echo hi; exit 2" })
  t.eq(r.stdout, "hi\n")
  t.eq(r.status, 1)
  t.contains(r.stderr, "exit status 2")
  r = run({ "guest", "freeze", env.socket, "--mountpoint", env.mnt, "--budget", "0.3" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "frozen (1 filesystems)")
  t.contains(r.stdout, "the budget ran out")
  t.eq(env:frozen(), false)
  r = run({ "guest", "status", "unix:/nonexistent/qga.sock" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "ENOENT")
end)

t.test("a character device: qemu-ga on one end of a linked pty pair (socat), vmsnap on the other", function()
  if not proc.run({ "sh", "-c", "command -v socat" }, { timeout = 10 }) then
    return t.skip("character device", "socat is not installed (make deps)")
  end
  local d = env.dir
  local pair = assert(proc.spawn({ "socat", "PTY,link=" .. d .. "/tty-agent,raw,echo=0",
    "PTY,link=" .. d .. "/tty-host,raw,echo=0" }, { stdout = "null", stderr = "null" }))
  local _ <close> = pair
  for _ = 1, 200 do
    if require("vmsnap.fs").exists(d .. "/tty-host") then break end
    task.sleep(0.01)
  end
  local agent = assert(proc.spawn({ "qemu-ga", "-m", "isa-serial", "-p", d .. "/tty-agent", "-t", d,
    "-f", d .. "/qga-tty.pid", "-b", "guest-fsfreeze-freeze" }, { stdout = "null", stderr = "null" }))
  local _a <close> = agent
  local a, err
  for _ = 1, 50 do
    a, err = qga.connect(d .. "/tty-host", { timeout = 1 })
    if a then break end
    task.sleep(0.1)
  end
  t.ok(a, err)
  local _c <close> = a
  t.ok(a:ping())
  t.ok(a:info().version)
end)

t.test("the agent restarting between calls: the next call reconnects cleanly or fails with CLOSED", function()
  local a <close> = assert(qga.connect(env.socket))
  t.ok(a:ping())
  env:stop_agent()
  local r, _, code = a:ping()
  t.eq(r, nil)
  t.eq(code, "CLOSED")
  env:start_agent()
  -- (the agent listens again once start_agent's own probe is gone: under
  -- load a connect in between can be refused, as seen in make check)
  local b, err
  for _ = 1, 20 do
    b, err = qga.connect(env.socket)
    if b then break end
    task.sleep(0.05)
  end
  local _b <close> = assert(b, err)
  t.ok(b:ping())
end)

t.done()
