-- A second local user against `vmsnap up` (docs/apiserver.md,
-- "Authentication"): the user `nobody` (setpriv --reuid nobody) gets 401 for
-- every API request it can make — reads, the write that would select a hook
-- on a VM, the freeze subresource — and can read no file under the data
-- directory: not the kubeconfig, the token, the store, a volume image, nor
-- a VM's agent socket. The owner's own kubeconfig keeps working. Skipped
-- when this process cannot change its uid (not root) or `nobody` is missing.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local h = require("helpers")

local who = proc.run({ "id", "-u" }, { timeout = 5 })
local nobody = proc.run({ "id", "-u", "nobody" }, { timeout = 5 })
if not (who and who.stdout == "0\n" and nobody and nobody.status == 0) then
  t.skip("a second local user", "needs root and the user nobody")
  return t.done()
end

local srv <close> = h.platform()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"
assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "root-u" },
  spec = { persistentVolumeClaim = { size = "16Mi" } } }))
assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = "vm-u" },
  spec = { runPolicy = "AlwaysOn", blockDeviceRefs = { { kind = "VirtualDisk", name = "root-u" } } } }))
assert(c:create({ apiVersion = "v1", kind = "Secret", metadata = { name = "s-u" }, stringData = { password = "hunter2" } }))
assert(c:wait_for("vd", "root-u", h.phase_is("Ready"), { timeout = 20 }))
assert(c:wait_for("vm", "vm-u", h.phase_is("Running"), { timeout = 30 }))

-- run argv as nobody (no groups, no capabilities), from a directory it may enter
local function as_nobody(argv, stdin)
  local full = { "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--" }
  for _, a in ipairs(argv) do full[#full + 1] = a end
  return assert(proc.run(full, { timeout = 30, cwd = "/", stdin = stdin, env = { HOME = "/nonexistent" } }))
end

local function curl(method, path, body, ctype)
  local argv = { "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, srv.url .. path }
  if body then
    argv[#argv + 1] = "-H"
    argv[#argv + 1] = "Content-Type: " .. (ctype or "application/json")
    argv[#argv + 1] = "--data-binary"
    argv[#argv + 1] = body
  end
  return as_nobody(argv).stdout
end

t.test("every API request of another local user is 401: reads, the hook annotation, the freeze", function()
  local NS = "/api/v1/namespaces/default"
  local VMS = "/apis/" .. G .. "/namespaces/default/virtualmachines"
  t.eq(curl("GET", NS .. "/secrets/s-u"), "401", "read a Secret")
  t.eq(curl("GET", "/api/v1/secrets"), "401", "list Secrets")
  t.eq(curl("GET", "/version"), "401", "version")
  t.eq(curl("GET", "/apis"), "401", "discovery")
  t.eq(curl("PATCH", VMS .. "/vm-u", '{"metadata":{"annotations":{"vmsnap.io/hooks":"[\\"guest-command\\"]"}}}',
    "application/merge-patch+json"), "401", "select a hook on the VM")
  t.eq(curl("POST", "/apis/" .. G .. "/namespaces/default/virtualmachinesnapshots",
    '{"apiVersion":"' .. G .. '","kind":"VirtualMachineSnapshot","metadata":{"name":"x"},"spec":{"virtualMachineName":"vm-u"}}'),
    "401", "snapshot the VM")
  t.eq(curl("PUT", "/apis/subresources.virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachines/vm-u/freeze",
    "{}"), "401", "freeze the guest")
  t.eq(curl("GET", "/healthz"), "200", "health answers anyone (no data)")
  -- kubectl, as that user, with the server's address and a guessed token
  local k = as_nobody({ "kubectl", "--server", srv.url, "--insecure-skip-tls-verify", "--token", "guess",
    "get", "secrets", "-A" })
  t.ok(k.status ~= 0, "kubectl is refused")
  t.contains(k.stderr, "the server has asked for the client to provide credentials")
  -- and nothing changed
  local vm = assert(c:get("vm", "vm-u"))
  t.eq((vm.metadata.annotations or {})["vmsnap.io/hooks"], nil, "no hook was selected")
  t.eq(c:get("vmsnapshot", "x"), nil)
end)

t.test("no file under the data directory is readable by another local user, nor its agent socket", function()
  local targets = { srv.kubeconfig, srv.data .. "/state.db", srv.data .. "/pki/token", srv.data .. "/pki/ca.key",
    srv.data .. "/pki/server.key" }
  for _, f in ipairs(fs.list(srv.data .. "/volumes") or {}) do targets[#targets + 1] = srv.data .. "/volumes/" .. f end
  t.ok(#targets > 5, "a volume image among them")
  for _, f in ipairs(targets) do
    t.ok(fs.exists(f), f .. " exists")
    local r = as_nobody({ "cat", f })
    t.ok(r.status ~= 0, "nobody cannot read " .. f)
    t.eq(r.stdout, "", "nothing of " .. f)
  end
  local l = as_nobody({ "ls", srv.data })
  t.ok(l.status ~= 0, "nor list the directory")
  local vm = assert(c:get("vm", "vm-u"))
  local agent = (vm.metadata.annotations or {})["vmsnap.io/agent"]
  if agent then
    local s = as_nobody({ "socat", "-T", "2", "-", "UNIX-CONNECT:" .. agent:gsub("^unix:", "") },
      '{"execute":"guest-exec","arguments":{"path":"id"}}\n')
    t.ok(s.status ~= 0, "the agent socket refuses nobody")
    t.ok(not s.stdout:find("return", 1, true), "no answer from the agent: " .. s.stdout)
  end
  -- the owner still gets in
  t.eq(assert(c:get("secret", "s-u")).metadata.name, "s-u")
end)

t.done()
