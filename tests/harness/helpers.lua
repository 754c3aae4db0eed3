--- helpers: shared pieces of the Lua specs: paths from the environment
--- ctest sets, and real peers (the loopback HTTP server) that the spec
--- starts and always stops by PID.
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local task = require("vmsnap.task")

local M = {}

M.build = os.getenv("VMSNAP_BUILD_DIR") or "build"
M.source = os.getenv("VMSNAP_SOURCE_DIR") or "."
M.vmsnap = M.build .. "/vmsnap"

--- Start tests/tools/testhttpd; returns a server object with .port, .url
--- and :stop() (also its <close>).
function M.httpd()
  local dir = assert(fs.tempdir("vmsnap-httpd"))
  local pf = dir.path .. "/port"
  local p = assert(proc.spawn({ M.build .. "/tests/testhttpd", "--port-file", pf, "--max-seconds", "120" },
    { stdout = "null" }))
  local port
  for _ = 1, 500 do
    local s = fs.read_file(pf)
    if s then port = tonumber(s:match("%d+")) break end
    task.sleep(0.01)
  end
  if not port then
    p:kill("KILL")
    dir:remove()
    error("testhttpd did not start")
  end
  local srv = { port = port, url = "http://127.0.0.1:" .. port, proc = p }
  function srv:stop()
    if self.proc then
      self.proc:kill("KILL")
      self.proc:wait(5)
      self.proc:close()
      self.proc = nil
      dir:remove()
    end
  end
  return setmetatable(srv, { __close = function(s) s:stop() end })
end

-- this process's PID
local SELF_PID = (fs.read_file("/proc/self/stat") or ""):match("^(%d+)")

--- The environment of a vmsnap child of a test: `extra` and
--- VMSNAP_PARENT_PID, so that the child stops (as on SIGTERM) when the test
--- process goes, however it ends (a killed test left platforms running and
--- images mounted).
function M.child_env(extra)
  local env = { VMSNAP_PARENT_PID = SELF_PID }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

--- Start `vmsnap serve` on a fresh data directory (or opts.data); returns an
--- object with .url, .port, .data, .kubeconfig, :kubectl(args, opts),
--- :stop(), :kill9(), :start() again, and <close> (stops, removes the dir).
function M.apiserver(opts)
  opts = opts or {}
  local dir = opts.data and { path = opts.data, remove = function() end } or assert(fs.tempdir("vmsnap-api"))
  local cache = assert(fs.tempdir("vmsnap-kcache"))
  local srv = { data = dir.path, kubeconfig = dir.path .. "/kubeconfig", cache = cache.path }
  function srv:start()
    fs.remove(self.kubeconfig)
    local argv = { M.vmsnap, opts.command or "serve", "--data", self.data }
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    if self.port and not opts.args then
      argv[#argv + 1] = "--listen"
      argv[#argv + 1] = "127.0.0.1:" .. self.port
    end
    if opts.log_file then argv = M.logging_to(opts.log_file, argv) end
    self.proc = assert(proc.spawn(argv, { stdout = "null", stderr = opts.stderr or "inherit", env = M.child_env(opts.env) }))
    for _ = 1, 1000 do
      local s = fs.read_file(self.kubeconfig)
      if s then
        self.port = tonumber(s:match(":(%d+)\n"))
        self.url = s:match("server: (%S+)")
        self.token = s:match("\n%s+token: (%S+)")
        local ca = s:match("certificate%-authority%-data: (%S+)")
        self.ca_data = ca and require("vmsnap.base64").decode(ca) or nil
        return self
      end
      if not self.proc:running() then break end
      task.sleep(0.01)
    end
    self.proc:kill("KILL")
    error("vmsnap serve did not start")
  end
  --- Stop the server (SIGTERM unless sig); an orderly stop must exit 0 (a
  --- service stopped by a signal), so a crash or a sanitizer report fails the caller.
  function srv:stop(sig)
    if self.proc then
      self.proc:kill(sig or "TERM")
      local r = self.proc:wait(10)
      if not r then
        self.proc:kill("KILL")
        self.proc:wait(5)
      end
      self.proc:close()
      self.proc = nil
      if not sig and (not r or r.status ~= 0) then
        error(("vmsnap serve did not stop cleanly: %s"):format(r and ("exit " .. tostring(r.status) ..
          (r.signal and (" signal " .. r.signal) or "")) or "hung"), 2)
      end
    end
  end
  function srv:kill9() self:stop("KILL") end
  --- An HTTP request to this server with its credentials (the CA and the
  --- token of its kubeconfig): opts as vmsnap.http.request's, with
  --- opts.path instead of a url (opts.auth = false: no token).
  function srv:request(o2)
    local http = require("vmsnap.http")
    local r = {}
    for k, v in pairs(o2) do r[k] = v end
    r.url = r.url or (self.url .. (r.path or "/"))
    r.path, r.auth = nil, nil
    r.headers = {}
    for k, v in pairs(o2.headers or {}) do r.headers[k] = v end
    if o2.auth ~= false and self.token and not r.headers.Authorization then r.headers.Authorization = "Bearer " .. self.token end
    r.tls = r.tls or { ca_data = self.ca_data }
    r.timeout = r.timeout or 30
    return http.request(r)
  end
  function srv:get(path, o2)
    local r = { method = "GET", path = path }
    for k, v in pairs(o2 or {}) do r[k] = v end
    return self:request(r)
  end
  --- Run kubectl against this server; returns the proc result.
  function srv:kubectl(args, o)
    local argv = { "kubectl", "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    o = o or {}
    return assert(proc.run(argv, { timeout = o.timeout or 60, stdin = o.stdin }))
  end
  srv:start()
  return setmetatable(srv, { __close = function(s)
    local ok, err = pcall(s.stop, s)
    M.unmount_under(s.data)
    dir:remove()
    cache:remove()
    if not ok then error(err, 0) end
  end })
end

--- Safety net for the platform's VM images: thaw, unmount and detach
--- whatever is still mounted under dir (a platform stops its VMs itself; what
--- it left is reported). Returns the mountpoints it had to handle.
function M.unmount_under(dir)
  local left = {}
  local r = proc.run({ "findmnt", "-rn", "-o", "TARGET" }, { timeout = 10 })
  for target in ((r and r.stdout) or ""):gmatch("[^\n]+") do
    if target:sub(1, #dir + 1) == dir .. "/" then left[#left + 1] = target end
  end
  for _, m in ipairs(left) do
    io.stdout:write("# left mounted by the platform: " .. m .. " (unmounting)\n")
    proc.run({ "fsfreeze", "-u", m }, { timeout = 10 })
    local u = proc.run({ "umount", m }, { timeout = 30 })
    if not u or u.status ~= 0 then proc.run({ "umount", "-l", m }, { timeout = 10 }) end
  end
  local l = proc.run({ "losetup", "-a" }, { timeout = 10 })
  for line in ((l and l.stdout) or ""):gmatch("[^\n]+") do
    local dev, file = line:match("^(/dev/loop%d+):.-%((.-)%)")
    if dev and file and file:sub(1, #dir + 1) == dir .. "/" then proc.run({ "losetup", "-d", dev }, { timeout = 10 }) end
  end
  return left
end

--- Start tests/tools/faultproxy in front of 127.0.0.1:upstream_port; returns
--- an object with .url, :plan(prefix, actions), :stats(), :clear(), :stop()
--- and <close>.
function M.faultproxy(upstream_port, opts)
  local http = require("vmsnap.http")
  local json = require("vmsnap.json")
  local dir = assert(fs.tempdir("vmsnap-fault"))
  local pf = dir.path .. "/port"
  local argv = { M.build .. "/tests/faultproxy", "--upstream", tostring(upstream_port),
    "--port-file", pf, "--max-seconds", "300" }
  -- vmsnap serve speaks HTTPS only: the proxy is its TLS client
  if not (opts and opts.plain) then argv[#argv + 1] = "--upstream-tls" end
  local p = assert(proc.spawn(argv, { stdout = "null", stderr = "inherit" }))
  local port
  for _ = 1, 500 do
    local s = fs.read_file(pf)
    if s then port = tonumber(s:match("%d+")) break end
    task.sleep(0.01)
  end
  if not port then
    p:kill("KILL")
    dir:remove()
    error("faultproxy did not start")
  end
  local fp = { port = port, url = "http://127.0.0.1:" .. port, proc = p }
  local function esc(s) return (s:gsub("[^%w%-%._~/:%$]", function(c) return ("%%%02X"):format(c:byte()) end)) end
  --- The next requests whose path starts with prefix get these actions, in turn.
  function fp:plan(prefix, actions)
    local r = assert(http.post(self.url .. "/_faults?match=" .. esc(prefix) .. "&do=" .. esc(actions), ""))
    assert(r.status == 200, "faultproxy plan refused")
  end
  function fp:stats() return json.decode(assert(http.get(self.url .. "/_faults")).body) end
  function fp:clear() assert(http.delete(self.url .. "/_faults")) end
  --- Close every proxied connection now (open watches included).
  function fp:reset() assert(http.post(self.url .. "/_faults/reset", "")) end
  function fp:stop()
    if self.proc then
      self.proc:kill("KILL")
      self.proc:wait(5)
      self.proc:close()
      self.proc = nil
      dir:remove()
    end
  end
  return setmetatable(fp, { __close = function(s) s:stop() end })
end

--- A real qemu-ga on a unix socket, with a small ext4 image loop-mounted in
--- a temporary directory: the only filesystem the tests freeze.
--- Safety: the agent runs with `-b guest-fsfreeze-freeze` (the global freeze
--- is refused), tests freeze through guest-fsfreeze-freeze-list with the
--- image's mountpoint, and the <close> thaws (through the agent, then with
--- fsfreeze -u as a fallback), stops the agent by PID, unmounts and detaches
--- in every outcome. Returns nil, why when loop mounts are not allowed here.
function M.qga_env()
  local dir = assert(fs.tempdir("vmsnap-qga"))
  local d = dir.path
  local env = { dir = d, mnt = d .. "/mnt", image = d .. "/disk.img", socket = "unix:" .. d .. "/qga.sock" }
  local function run(argv) return proc.run(argv, { timeout = 60 }) end
  assert(fs.mkdir_p(env.mnt))
  local r = run({ "truncate", "-s", "32M", env.image })
  assert(r and r.status == 0, "truncate failed")
  r = run({ "mkfs.ext4", "-q", "-F", env.image })
  if not r or r.status ~= 0 then dir:remove() return nil, "mkfs.ext4 failed or is missing" end
  r = run({ "mount", "-o", "loop", env.image, env.mnt })
  if not r or r.status ~= 0 then
    dir:remove()
    return nil, "loop mounts are not allowed here: " .. tostring(r and r.stderr)
  end
  env.mounted = true
  function env:start_agent()
    self.agent = assert(proc.spawn({ "qemu-ga", "-m", "unix-listen", "-p", d .. "/qga.sock", "-t", d,
      "-f", d .. "/qga.pid", "-b", "guest-fsfreeze-freeze" }, { stdout = "null", stderr = "null" }))
    -- the socket file exists from bind on; wait until the agent answers
    local qga = require("vmsnap.qga")
    for _ = 1, 500 do
      if fs.exists(d .. "/qga.sock") then
        local a = qga.connect(self.socket, { timeout = 2 })
        if a then a:close() return self end
      end
      task.sleep(0.01)
    end
    error("qemu-ga did not start")
  end
  function env:stop_agent()
    if self.agent then
      self.agent:kill("KILL")
      self.agent:wait(5)
      self.agent:close()
      self.agent = nil
      fs.remove(d .. "/qga.sock")
    end
  end
  --- Is the image's filesystem frozen? (A write with a short timeout tells.)
  function env:frozen()
    local w = proc.run({ "sh", "-c", "echo probe > " .. self.mnt .. "/probe" }, { timeout = 0.5, kill_grace = 0.2 })
    return w == nil
  end
  function env:cleanup()
    -- thaw through the agent, then directly; never leave it frozen
    if self.agent then
      local qga = require("vmsnap.qga")
      local a = qga.connect(self.socket, { timeout = 3 })
      if a then a:fsfreeze_thaw() a:close() end
    end
    run({ "fsfreeze", "-u", self.mnt })
    self:stop_agent()
    if self.mounted then
      local u = run({ "umount", self.mnt })
      if not u or u.status ~= 0 then run({ "umount", "-l", self.mnt }) end
      self.mounted = false
    end
    -- a loop device still attached to the image (mount -o loop normally detaches it)
    local l = run({ "losetup", "-j", self.image })
    for dev in ((l and l.stdout) or ""):gmatch("(/dev/loop%d+):") do run({ "losetup", "-d", dev }) end
    dir:remove()
  end
  env:start_agent()
  return setmetatable(env, { __close = function(e) e:cleanup() end })
end

--- argv run with its stderr appended to `file` (the process keeps its PID:
--- the shell execs it), for a spec that reads the log back (M.log_lines).
function M.logging_to(file, argv)
  local out = { "/bin/sh", "-c", 'f=$1; shift; exec "$@" 2>>"$f"', "sh", file }
  for _, a in ipairs(argv) do out[#out + 1] = a end
  return out
end

--- The last `n` lines of the log `file` that contain one of the plain
--- strings `words`, joined by " / " (a failure message's evidence).
function M.log_lines(file, words, n)
  local hits = {}
  for line in ((fs.read_file(file) or "") .. "\n"):gmatch("([^\n]*)\n") do
    for _, w in ipairs(words) do
      if line:find(w, 1, true) then hits[#hits + 1] = line break end
    end
  end
  return table.concat(hits, " / ", math.max(1, #hits - n + 1))
end

--- `vmsnap controller` talking to srv through the fault proxy fp: returns
--- the process and a to-be-closed guard that stops it (TERM, then KILL).
---   local ctl, _ <close> = h.controller_behind(srv, fp)
function M.controller_behind(srv, fp, opts)
  opts = opts or {}
  local kc = srv.data .. "/kubeconfig-proxied"
  assert(fs.write_atomic(kc, (assert(fs.read_file(srv.kubeconfig)):gsub("server: %S+", "server: " .. fp.url))))
  local argv = { M.vmsnap, "controller", "--kubeconfig", kc }
  if opts.log_file then argv = M.logging_to(opts.log_file, argv) end
  local ctl = assert(proc.spawn(argv, { stdout = "null", stderr = "inherit", env = M.child_env() }))
  return ctl, setmetatable({}, { __close = function()
    ctl:kill("TERM")
    if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
    ctl:close()
  end })
end

--- tests/tools/fakeqga on a unix socket with a list of actions; returns
--- {socket = "unix:...", stop()} with <close>.
function M.fakeqga(actions)
  local dir = assert(fs.tempdir("vmsnap-fakeqga"))
  local path = dir.path .. "/qga.sock"
  local argv = { M.build .. "/tests/fakeqga", "--socket", path, "--max-seconds", "120" }
  for _, a in ipairs(actions or {}) do argv[#argv + 1] = a end
  local p = assert(proc.spawn(argv, { stdout = "null" }))
  for _ = 1, 500 do
    if fs.exists(path .. ".ready") then break end
    task.sleep(0.01)
  end
  local f = { socket = "unix:" .. path, proc = p }
  function f:stop()
    if self.proc then
      self.proc:kill("KILL")
      self.proc:wait(5)
      self.proc:close()
      self.proc = nil
      dir:remove()
    end
  end
  return setmetatable(f, { __close = function(s) s:stop() end })
end

--- A MariaDB server of its own (Debian's mariadb-server-core) on a unix socket
--- in a temporary directory, no TCP: .socket, :sql(statement) → proc result
--- (mariadb client), :stop(), <close>. Returns nil, why when not installed.
function M.mariadb()
  local function which(name)
    local r = proc.run({ "sh", "-c", "command -v " .. name }, { timeout = 5 })
    return r and r.status == 0
  end
  if not (which("mariadbd") or fs.exists("/usr/sbin/mariadbd")) or not which("mariadb-install-db") or not which("mariadb") then
    return nil, "MariaDB is not installed (mariadb-server-core, mariadb-client)"
  end
  local dir = assert(fs.tempdir("vmsnap-mariadb"))
  local d = dir.path
  local inst = assert(proc.run({ "mariadb-install-db", "--no-defaults", "--datadir=" .. d .. "/data", "--user=root",
    "--auth-root-authentication-method=normal", "--skip-test-db" }, { timeout = 120 }))
  if inst.status ~= 0 then
    dir:remove()
    return nil, "mariadb-install-db failed: " .. tostring(inst.stderr)
  end
  local mariadbd = fs.exists("/usr/sbin/mariadbd") and "/usr/sbin/mariadbd" or "mariadbd"
  local p = assert(proc.spawn({ mariadbd, "--no-defaults", "--datadir=" .. d .. "/data", "--socket=" .. d .. "/sock",
    "--skip-networking", "--user=root", "--pid-file=" .. d .. "/pid", "--log-error=" .. d .. "/err.log" },
    { stdout = "null", stderr = "null" }))
  local db = { socket = d .. "/sock", dir = d, proc = p }
  function db:sql(statement, timeout)
    return assert(proc.run({ "mariadb", "--no-defaults", "--socket=" .. self.socket, "--user=root", "--batch",
      "--skip-column-names", "-e", statement }, { timeout = timeout or 30 }))
  end
  function db:stop()
    if self.proc then
      self.proc:kill("TERM")
      if not self.proc:wait(20) then self.proc:kill("KILL") self.proc:wait(5) end
      self.proc:close()
      self.proc = nil
      dir:remove()
    end
  end
  for _ = 1, 300 do
    if fs.exists(db.socket) and db:sql("SELECT 1", 5).status == 0 then
      return setmetatable(db, { __close = function(x) x:stop() end })
    end
    if not p:running() then break end
    task.sleep(0.05)
  end
  local log = fs.read_file(d .. "/err.log") or ""
  db:stop()
  return nil, "mariadbd did not start: " .. log:sub(-300)
end

--- `vmsnap up` (the local platform) on a fresh data directory: the same object
--- as helpers.apiserver.
function M.platform(opts)
  opts = opts or {}
  opts.command = "up"
  return M.apiserver(opts)
end

--- A wait_for predicate: the object is in phase p (returns the object).
function M.phase_is(p)
  return function(o) return o and o.status and o.status.phase == p and o end
end

--- A wait_for predicate: the object once its condition `ctype` has `reason`.
function M.reason_is(ctype, reason)
  local cond = require("vmsnap.k8s.object").condition
  return function(o)
    local x = o and cond(o, ctype)
    return x and x.reason == reason and o
  end
end

--- A running VM of the local platform with its root disk, once its agent is
--- ready (needs loop mounts: see M.qga_env). Returns the VM.
function M.running_vm(c, name, root, size)
  local G = "virtualization.deckhouse.io/v1alpha2"
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = root },
    spec = { persistentVolumeClaim = { size = size or "32Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = name },
    spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = root } } } }))
  return assert(c:wait_for("vm", name, function(o)
    for _, x in ipairs(o and o.status and o.status.conditions or {}) do
      if x.type == "AgentReady" and x.status == "True" then return o end
    end
  end, { timeout = 30 }))
end

--- deploy/'s Namespace, ServiceAccount, roles and bindings (rendered by
--- `kubectl kustomize`), created through client c as srv's administrator;
--- then the files a pod of the Deployment gets for that ServiceAccount
--- (`token` from the TokenRequest API, `ca.crt`, `namespace`) written to
--- dir, readable by any user (the image runs as 65532).
function M.install_deploy_rbac(c, srv, dir)
  local yaml = require("vmsnap.yaml")
  local r = assert(proc.run({ "kubectl", "kustomize", M.source .. "/deploy" }, { timeout = 60 }))
  assert(r.status == 0, r.stderr)
  for _, d in ipairs(assert(yaml.load_all(r.stdout))) do
    if d.kind == "Namespace" or d.kind == "ServiceAccount" or d.kind:match("Role") then assert(c:create(d)) end
  end
  local tr = assert(srv:request({ method = "POST", path = "/api/v1/namespaces/vmsnap-system/serviceaccounts/vmsnap-controller/token",
    headers = { ["Content-Type"] = "application/json" },
    body = '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}' }))
  assert(tr.status == 201, tr.body)
  local files = { token = require("vmsnap.json").decode(tr.body).status.token, ["ca.crt"] = srv.ca_data,
    namespace = "vmsnap-system" }
  for name, text in pairs(files) do assert(fs.write_atomic(dir .. "/" .. name, text, { mode = 420 })) end
  fs.chmod(dir, 493)
end

--- A port of 127.0.0.1 nobody listens on now.
function M.free_port()
  local httpd = require("vmsnap.core.httpd")
  local s = assert(httpd.listen({ host = "127.0.0.1", port = 0 }))
  local p = s:port()
  s:close()
  return p
end

--- The Events section of `kubectl describe KIND NAME` on srv (fails the
--- caller when kubectl does).
function M.described_events(srv, kind, name)
  local r = srv:kubectl({ "describe", kind, name })
  assert(r.status == 0, r.stderr)
  return r.stdout:match("Events:(.*)$") or ""
end

--- n requests to srv from `conc` tasks (default 8); make(i) gives the
--- request options of the i-th. Returns the rate (per second) and how many
--- did not answer `want`.
function M.requests(srv, n, make, want, conc)
  local task = require("vmsnap.task")
  local next_i, errors = 0, 0
  local t0 = task.now()
  local ts = {}
  for c = 1, conc or 8 do
    ts[c] = task.spawn(function()
      while true do
        next_i = next_i + 1
        local i = next_i
        if i > n then return end
        local res = srv:request(make(i))
        if not res or res.status ~= want then errors = errors + 1 end
      end
    end)
  end
  assert(task.wait_all(ts))
  return n / (task.now() - t0), errors
end

--- A bench's figure for the table `make bench` ends with (tests/bench/summary.lua):
--- appended to $VMSNAP_BENCH_ROWS as "key<TAB>text" when run.sh set it.
function M.bench_row(key, text)
  local path = os.getenv("VMSNAP_BENCH_ROWS")
  if not path or path == "" then return end
  local f = io.open(path, "a")
  if f then
    f:write(key, "\t", (tostring(text):gsub("[\t\n]", " ")), "\n")
    f:close()
  end
end

--- Run the vmsnap program with args; returns the proc result.
function M.run_vmsnap(args, opts)
  local argv = { M.vmsnap }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, opts or { timeout = 30 }))
end

return M
