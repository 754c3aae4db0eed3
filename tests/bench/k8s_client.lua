-- vmsnap.k8s against the Python Kubernetes client: the same 2,000 GETs and
-- 500 merge PATCHes of ConfigMaps against one `vmsnap serve`, each client a
-- child process timed for wall and CPU time (user + system). Prints figures
-- and ratios.   vmsnap --path tests/harness tests/bench/k8s_client.lua
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local h = require("helpers")

local srv <close> = h.apiserver({ stderr = "null" })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local ts = {}
for w = 1, 8 do
  ts[w] = task.spawn(function()
    for i = w - 1, 499, 8 do
      assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = ("bench-%03d"):format(i) },
        data = { a = "b" } }))
    end
  end)
end
assert(task.wait_all(ts))

local LUA = [[
local k8s = require("vmsnap.k8s")
local task = require("vmsnap.task")
local c = assert(k8s.client({ kubeconfig = arg[1] }))
local conc = tonumber(arg[2])
local function run(n, fn)
  local next_i, ts = 0, {}
  for w = 1, conc do
    ts[w] = task.spawn(function()
      while true do
        next_i = next_i + 1
        local i = next_i
        if i > n then return end
        assert(fn(i - 1))
      end
    end)
  end
  assert(task.wait_all(ts))
end
run(2000, function(i) return c:get("configmap", ("bench-%03d"):format(i % 500)) end)
run(500, function(i) return c:patch("configmap", ("bench-%03d"):format(i), { metadata = { labels = { lua = tostring(i) } } }) end)
]]

local function timed(argv)
  local full = { "/usr/bin/time", "-f", "TIME %e %U %S" }
  for _, a in ipairs(argv) do full[#full + 1] = a end
  local r = assert(proc.run(full, { timeout = 600 }))
  assert(r.status == 0, r.stderr)
  local e, u, s = r.stderr:match("TIME ([%d.]+) ([%d.]+) ([%d.]+)")
  return tonumber(e), tonumber(u) + tonumber(s)
end

local lw, lc = timed({ h.vmsnap, "-e", LUA, srv.kubeconfig, "1" })
local cw, cc = timed({ h.vmsnap, "-e", LUA, srv.kubeconfig, "8" })
print(("vmsnap.k8s, one call at a time:         wall %.2f s, cpu %.2f s"):format(lw, lc))
print(("vmsnap.k8s, 8 tasks at once:            wall %.2f s, cpu %.2f s"):format(cw, cc))
local py = "/usr/bin/python3"
local ok = proc.run({ py, "-c", "import kubernetes" }, { timeout = 30 })
if not ok or ok.status ~= 0 then
  print("python3-kubernetes is not installed (make deps); no comparison")
  return
end
local pw, pc = timed({ py, h.source .. "/tests/bench/k8s_client.py", srv.kubeconfig })
local tw, tc = timed({ py, h.source .. "/tests/bench/k8s_client.py", srv.kubeconfig, "8" })
print(("python3-kubernetes, one call at a time: wall %.2f s, cpu %.2f s"):format(pw, pc))
print(("python3-kubernetes, 8 pool threads:     wall %.2f s, cpu %.2f s"):format(tw, tc))
print(("ratios python / vmsnap: one at a time wall %.1fx, cpu %.1fx; concurrent wall %.1fx, cpu %.1fx"):format(
  pw / lw, pc / lc, tw / cw, tc / cc))
