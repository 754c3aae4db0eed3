--- vmsnap.apiserver.pki: the credentials `vmsnap serve` and `vmsnap up`
--- create for themselves when none are given, in DATA/pki (0700, files 0600):
---
---   ca.crt, ca.key          a CA of its own (ECDSA P-256, 10 years)
---   server.crt, server.key  the serving certificate, signed by it, for
---                           127.0.0.1, localhost and the listen address
---   token                   the bearer token every request must present
---
--- Made once and reused, so a kubeconfig stays valid across restarts; the
--- serving certificate is made again when the listen address changes. The
--- certificates come from the `openssl` program (it is there wherever
--- vmsnap's dependencies are; docs/apiserver.md, "Authentication").
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")

local M = {}

local PRIVATE = 384 -- 0600

local function run(argv, dir)
  local r, err = proc.run(argv, { timeout = 60, cwd = dir })
  if not r then
    if tostring(err):find("ENOENT", 1, true) or tostring(err):find("No such file", 1, true) then
      return nil, "the openssl program is needed to create the server's certificate (install openssl, or pass --tls-cert and --tls-key)"
    end
    return nil, ("%s: %s"):format(argv[1], tostring(err))
  end
  if r.status ~= 0 then
    return nil, ("openssl %s failed: %s"):format(argv[2], (r.stderr or ""):match("[^\n]*"))
  end
  return true
end

--- 32 random bytes, as hex
local function random_hex()
  local f = assert(io.open("/dev/urandom", "rb"))
  local b = f:read(32)
  f:close()
  return (b:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

M.random_hex = random_hex

--- The subjectAltName entries for the listen host.
function M.alt_names(host)
  local names, seen = {}, {}
  local function add(n)
    if not seen[n] then seen[n] = true names[#names + 1] = n end
  end
  add("IP:127.0.0.1")
  add("DNS:localhost")
  if host and host ~= "" and host ~= "0.0.0.0" and host ~= "::" then
    if host:match("^%d+%.%d+%.%d+%.%d+$") or host:find(":", 1, true) then add("IP:" .. host) else add("DNS:" .. host) end
  end
  return table.concat(names, ",")
end

local function make_ca(dir)
  local ok, err = run({ "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key" }, dir)
  if not ok then return nil, err end
  return run({ "openssl", "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650",
    "-subj", "/CN=vmsnap-ca", "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt" }, dir)
end

local function make_server(dir, alt)
  local ok, err = run({ "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key" }, dir)
  if not ok then return nil, err end
  ok, err = run({ "openssl", "req", "-new", "-key", "server.key", "-subj", "/CN=vmsnap-apiserver", "-out", "server.csr" }, dir)
  if not ok then return nil, err end
  ok, err = fs.write_atomic(dir .. "/server.ext", ("subjectAltName=%s\nextendedKeyUsage=serverAuth\n"
    .. "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n"):format(alt), { mode = PRIVATE })
  if not ok then return nil, err end
  ok, err = run({ "openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
    "-CAcreateserial", "-sha256", "-days", "825", "-extfile", "server.ext", "-out", "server.crt" }, dir)
  fs.remove(dir .. "/server.csr")
  fs.remove(dir .. "/server.ext")
  fs.remove(dir .. "/ca.srl")
  if not ok then return nil, err end
  return fs.write_atomic(dir .. "/server.names", alt, { mode = PRIVATE })
end

--- Make (or reuse) DATA/pki's CA and serving certificate for a server
--- listening on host. Returns {ca=, cert=, key=} (paths), or nil, message.
---@param data string
---@param host? string
function M.ensure(data, host)
  local dir = data .. "/pki"
  local ok, err = fs.mkdir_p(dir, 448) -- 0700
  if not ok then return nil, err end
  fs.chmod(dir, 448)
  local old = fs.umask(63) -- 077: every file made here is the owner's alone
  local function done(...)
    fs.umask(old)
    return ...
  end
  if not (fs.exists(dir .. "/ca.crt") and fs.exists(dir .. "/ca.key")) then
    ok, err = make_ca(dir)
    if not ok then return done(nil, err) end
    fs.remove(dir .. "/server.crt")
  end
  local alt = M.alt_names(host)
  if not fs.exists(dir .. "/server.crt") or not fs.exists(dir .. "/server.key") or fs.read_file(dir .. "/server.names") ~= alt then
    ok, err = make_server(dir, alt)
    if not ok then return done(nil, err) end
  end
  for _, f in ipairs(fs.list(dir) or {}) do fs.chmod(dir .. "/" .. f, PRIVATE) end
  return done({ ca = dir .. "/ca.crt", cert = dir .. "/server.crt", key = dir .. "/server.key" })
end

--- The server's bearer token: DATA/pki/token, made at the first call (32
--- random bytes, hex). Returns the token or nil, message.
---@param data string
function M.token(data)
  local dir = data .. "/pki"
  local ok, err = fs.mkdir_p(dir, 448)
  if not ok then return nil, err end
  local token = fs.read_file(dir .. "/token")
  token = token and token:match("^%s*(%S+)%s*$")
  if not token then
    token = random_hex()
    ok, err = fs.write_atomic(dir .. "/token", token .. "\n", { mode = PRIVATE })
    if not ok then return nil, err end
  end
  fs.chmod(dir .. "/token", PRIVATE)
  return token
end

--- Make the data directory the owner's alone: it and the directories
--- vmsnap keeps in it 0700, their files 0600 (state.db and its journal, the
--- kubeconfig, volume and snapshot images, a VM's files). A VM's mounted
--- root filesystem (vms/NS-NAME/root) is the guest's and is not touched.
---@param data string
function M.lock_down(data)
  local ok, err = fs.mkdir_p(data, 448)
  if not ok then return nil, err end
  local function files_of(dir, depth)
    fs.chmod(dir, 448)
    for _, name in ipairs(fs.list(dir) or {}) do
      local p = dir .. "/" .. name
      local st = fs.stat(p)
      if st and st.type == "file" then
        fs.chmod(p, PRIVATE)
      elseif st and st.type == "directory" and depth > 0 then
        files_of(p, depth - 1)
      end
    end
  end
  files_of(data, 0)
  for _, sub in ipairs({ "pki", "volumes", "snapshots" }) do
    if fs.exists(data .. "/" .. sub) then files_of(data .. "/" .. sub, 0) end
  end
  if fs.exists(data .. "/vms") then files_of(data .. "/vms", 1) end
  return true
end

return M
