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

--- Run the vmsnap program with args; returns the proc result.
function M.run_vmsnap(args, opts)
  local argv = { M.vmsnap }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, opts or { timeout = 30 }))
end

return M
