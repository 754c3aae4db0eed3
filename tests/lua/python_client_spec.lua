-- A client nobody on this project wrote: Debian's python3-kubernetes
-- (tools/deps.sh installs it) runs tests/clients/python_client.py against
-- `vmsnap serve` with the generated kubeconfig (its CA and token).
local t = require("tap")
local proc = require("vmsnap.proc")
local h = require("helpers")

local PY = "/usr/bin/python3"
local probe = proc.run({ PY, "-c", "import kubernetes" }, { timeout = 30 })
if not probe or probe.status ~= 0 then
  t.skip("the Python kubernetes client", "python3-kubernetes is not installed (tools/deps.sh installs it)")
  return t.done()
end

local srv <close> = h.apiserver()

t.test("python3-kubernetes: typed and dynamic CRUD, Watch.stream, DynamicClient.watch, server-side apply with force", function()
  local r = assert(proc.run({ PY, h.source .. "/tests/clients/python_client.py", srv.kubeconfig }, { timeout = 90 }))
  t.eq(r.status, 0, r.stderr)
  for _, step in ipairs({ "typed crud", "watch stream", "watch timeout", "dynamic crud", "dynamic watch",
      "server-side apply force", "delete" }) do
    t.contains(r.stdout, "ok " .. step .. "\n", step)
  end
end)

t.done()
