-- A client nobody on this project wrote, in another language:
-- @kubernetes/client-node (pinned by tests/clients/node/package-lock.json,
-- installed by tools/deps.sh with npm ci) runs tests/clients/node/client.mjs
-- against `vmsnap serve` over TLS with the kubeconfig's token.
local t = require("tap")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local h = require("helpers")

local DIR = h.source .. "/tests/clients/node"
local node = proc.run({ "node", "--version" }, { timeout = 30 })
if not node or node.status ~= 0 then
  t.skip("@kubernetes/client-node", "node is not installed (tools/deps.sh installs it)")
  return t.done()
end
if not fs.exists(DIR .. "/node_modules/@kubernetes/client-node") then
  t.skip("@kubernetes/client-node", "not installed: run `make deps` (npm ci in tests/clients/node)")
  return t.done()
end

local srv <close> = h.apiserver()

t.test("@kubernetes/client-node: CRUD, every patch type, a status subresource, an Informer that sees add/update/delete", function()
  local r = assert(proc.run({ "node", DIR .. "/client.mjs", srv.kubeconfig }, { timeout = 90, cwd = DIR }))
  t.eq(r.status, 0, r.stderr)
  for _, step in ipairs({ "crud", "patches", "status subresource", "informer", "delete" }) do
    t.contains(r.stdout, "ok " .. step .. "\n", step)
  end
end)

t.done()
