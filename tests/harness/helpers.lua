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
    local argv = { M.vmsnap, "serve", "--data", self.data }
    for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
    if self.port and not opts.args then
      argv[#argv + 1] = "--listen"
      argv[#argv + 1] = "127.0.0.1:" .. self.port
    end
    self.proc = assert(proc.spawn(argv, { stdout = "null", stderr = opts.stderr or "inherit" }))
    for _ = 1, 1000 do
      local s = fs.read_file(self.kubeconfig)
      if s then
        self.port = tonumber(s:match(":(%d+)\n"))
        self.url = s:match("server: (%S+)")
        return self
      end
      if not self.proc:running() then break end
      task.sleep(0.01)
    end
    self.proc:kill("KILL")
    error("vmsnap serve did not start")
  end
  --- Stop the server (SIGTERM unless sig); an orderly stop must exit 130
  --- (cancelled), so a crash or a sanitizer report fails the caller.
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
      if not sig and (not r or r.status ~= 130) then
        error(("vmsnap serve did not stop cleanly: %s"):format(r and ("exit " .. tostring(r.status) ..
          (r.signal and (" signal " .. r.signal) or "")) or "hung"), 2)
      end
    end
  end
  function srv:kill9() self:stop("KILL") end
  --- Run kubectl against this server; returns the proc result.
  function srv:kubectl(args, o)
    local argv = { "kubectl", "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    o = o or {}
    return assert(proc.run(argv, { timeout = o.timeout or 60, stdin = o.stdin }))
  end
  srv:start()
  return setmetatable(srv, { __close = function(s)
    s:stop()
    dir:remove()
    cache:remove()
  end })
end

--- Start tests/tools/faultproxy in front of 127.0.0.1:upstream_port; returns
--- an object with .url, :plan(prefix, actions), :stats(), :clear(), :stop()
--- and <close>.
function M.faultproxy(upstream_port)
  local http = require("vmsnap.http")
  local json = require("vmsnap.json")
  local dir = assert(fs.tempdir("vmsnap-fault"))
  local pf = dir.path .. "/port"
  local p = assert(proc.spawn({ M.build .. "/tests/faultproxy", "--upstream", tostring(upstream_port),
    "--port-file", pf, "--max-seconds", "300" }, { stdout = "null" }))
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
  local function esc(s) return (s:gsub("[^%w%-%._~/:]", function(c) return ("%%%02X"):format(c:byte()) end)) end
  --- The next requests whose path starts with prefix get these actions, in turn.
  function fp:plan(prefix, actions)
    local r = assert(http.post(self.url .. "/_faults?match=" .. esc(prefix) .. "&do=" .. esc(actions), ""))
    assert(r.status == 200, "faultproxy plan refused")
  end
  function fp:stats() return json.decode(assert(http.get(self.url .. "/_faults")).body) end
  function fp:clear() assert(http.delete(self.url .. "/_faults")) end
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

--- Run the vmsnap program with args; returns the proc result.
function M.run_vmsnap(args, opts)
  local argv = { M.vmsnap }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, opts or { timeout = 30 }))
end

return M
