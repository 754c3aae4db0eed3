--- `vmsnap serve`: the embedded Kubernetes-compatible API server on its own.
local apiserver = require("vmsnap.apiserver")
local cli = require("vmsnap.cli")
local fs = require("vmsnap.fs")
local pki = require("vmsnap.apiserver.pki")
local rtcore = require("vmsnap.core.runtime")

local M = {}

M.help = [[
usage: vmsnap serve --data DIR [options]   (vmsnap up adds the local platform)

Serve a Kubernetes-compatible API (the resources vmsnap uses) stored in
DIR/state.db, and write DIR/kubeconfig for kubectl and vmsnap:

    export KUBECONFIG=DIR/kubeconfig
    kubectl get virtualization

options:
  --data DIR              state directory (created if needed)            [required]
  --listen HOST:PORT      address to listen on (default 127.0.0.1:0; port 0 picks a
                          free port, or the one DIR/kubeconfig names when it is free)
  --token TOKEN           the bearer token to require (default: one made at the first
                          start and kept in DIR/pki/token)
  --token-file FILE       more users, one a line: token,user,uid[,"group1,group2"]
                          (Kubernetes' static token file); they get what RBAC
                          objects grant them
  --tls-cert FILE         serve HTTPS with this certificate (PEM) ... (default: one
  --tls-key FILE          ... and this key (PEM)       made by a CA of its own, DIR/pki)
  --client-ca FILE        also accept client certificates signed by this CA (PEM)
  --tls-ca FILE           the CA that signed --tls-cert, for the kubeconfig (default:
                          --tls-cert itself, right for a self-signed certificate)
  --tls-server-name NAME  the name in --tls-cert, for the kubeconfig when the
                          certificate does not name the listen address
  --crds DIR              also install the CustomResourceDefinitions in DIR (repeatable)
  --event-ttl SECONDS     how long Events are kept (default 3600)
  --history N             revisions of watch history kept (default 100000)
  --max-connections N     open connections at most (default 4096); past it, and past
  --max-connections-per-ip N  this many from one address (default 2048; loopback
                          clients all share 127.0.0.1), a connection is closed at once
  --idle-timeout D        close a connection idle this long (default 90s)
  --request-header-timeout D  close a connection whose request header (TLS
                          handshake included) is not in within D (default 32s)

The server speaks HTTPS only, and every request, from loopback too, must
carry the token (or a client certificate signed by --client-ca): the
kubeconfig carries both the CA and the token and is readable by its owner
alone. DIR is made the owner's alone (0700, files 0600). /healthz, /livez
and /readyz answer anyone.
The kubeconfig's token is the administrator's (group system:masters: every
request allowed). Other users — --token-file lines, ServiceAccounts'
tokens (`kubectl create token SA`), client certificates (CN the user, O
the groups) — are authorized by Roles, ClusterRoles and their bindings as
Kubernetes does it, 403 messages included; `kubectl auth can-i` works.
SIGINT or SIGTERM stops the server: watches end, the store is closed, exit
status 0 (a second SIGINT exits at once, 130).
]]

function M.parse(args)
  local o = { crds = {} }
  local i = 1
  local function value(flag)
    local v = args[i + 1]
    if v == nil or v:sub(1, 2) == "--" then cli.usage(flag .. " needs a value") end
    i = i + 2
    return v
  end
  while i <= #args do
    local a = args[i]
    local flag, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if flag then
      a = flag
      table.insert(args, i + 1, inline)
    end
    if a == "--data" then o.data = value(a)
    elseif a == "--listen" then o.listen = value(a)
    elseif a == "--token" then o.token = value(a)
    elseif a == "--token-file" then o.token_file = value(a)
    elseif a == "--tls-cert" then o.tls_cert = value(a)
    elseif a == "--tls-key" then o.tls_key = value(a)
    elseif a == "--client-ca" then o.client_ca = value(a)
    elseif a == "--tls-ca" then o.tls_ca = value(a)
    elseif a == "--tls-server-name" then o.tls_server_name = value(a)
    elseif a == "--crds" then o.crds[#o.crds + 1] = value(a)
    elseif a == "--event-ttl" then
      o.event_ttl = tonumber(value(a))
      if not o.event_ttl or o.event_ttl <= 0 then cli.usage("--event-ttl must be a positive number of seconds") end
    elseif a == "--history" then
      o.history = math.tointeger(tonumber(value(a)))
      if not o.history or o.history < 100 then cli.usage("--history must be an integer of at least 100") end
    elseif a == "--max-connections" or a == "--max-connections-per-ip" then
      local n = math.tointeger(tonumber(value(a)))
      if not n or n < (a == "--max-connections" and 1 or 0) then
        cli.usage(("serve: %s must be a whole number%s"):format(a, a == "--max-connections" and " of at least 1" or ""))
      end
      o[a == "--max-connections" and "max_connections" or "max_connections_per_ip"] = n
    elseif a == "--idle-timeout" or a == "--request-header-timeout" then
      local v = value(a)
      local d = require("vmsnap.time").duration(v)
      if not d or d < 1 or d ~= math.floor(d) then
        cli.usage(("serve: %s must be a duration of whole seconds, at least 1s (30s, 2m), got '%s'"):format(a, v))
      end
      o[a == "--idle-timeout" and "idle_timeout" or "header_timeout"] = math.tointeger(d)
    elseif a == "-h" or a == "--help" then
      io.stdout:write(M.help)
      os.exit(0)
    else
      cli.usage(("serve: unknown argument '%s'"):format(a))
    end
  end
  if not o.data then cli.usage("serve: --data DIR is required") end
  o.host, o.port = "127.0.0.1", 0
  if o.listen then
    local h, p = o.listen:match("^(.*):(%d+)$")
    if not h then cli.usage(("serve: --listen must be HOST:PORT, got '%s'"):format(o.listen)) end
    o.host, o.port = h, tonumber(p)
    if o.port > 65535 then cli.usage("serve: --listen port must be at most 65535") end
  end
  if (o.tls_cert == nil) ~= (o.tls_key == nil) then cli.usage("serve: --tls-cert and --tls-key go together") end
  if o.tls_ca and not o.tls_cert then cli.usage("serve: --tls-ca needs --tls-cert and --tls-key") end
  if o.token ~= nil and not o.token:match("^[%w%-%._~+/=]+$") then
    cli.usage("serve: --token must be printable ASCII without spaces (it goes into an HTTP header)")
  end
  if o.host == "localhost" then o.host = "127.0.0.1" end
  return o
end

--- Before the server opens its store: the process's umask 077, the data
--- directory the owner's alone, and the credentials it lacks (a serving
--- certificate from its own CA, a token) made in DIR/pki. Fills o.
function M.prepare(o)
  fs.umask(63) -- 077: whatever the server and the platform create is private
  local ok, err = pki.lock_down(o.data)
  if not ok then return nil, ("the data directory %s: %s"):format(o.data, tostring(err)) end
  if not o.tls_cert then
    local p, perr = pki.ensure(o.data, o.host)
    if not p then return nil, perr end
    o.tls_cert, o.tls_key, o.tls_ca = p.cert, p.key, p.ca
  end
  if not o.token and not o.client_ca then
    local tok, terr = pki.token(o.data)
    if not tok then return nil, terr end
    o.token = tok
  end
  return true
end

--- The built-in CRD directories: scripts/crds on the scripts path (installed,
--- it also holds vmsnap's own kinds), and in a source tree deploy/crds beside
--- it (vmsnap's own, where kustomize reads them).
local function builtin_crds()
  for _, d in ipairs(rtcore.scripts_dirs()) do
    if fs.exists(d .. "/crds") then
      local own = d .. "/../deploy/crds"
      return d .. "/crds", fs.exists(own) and own or nil
    end
  end
end

local function previous_port(data)
  local text = fs.read_file(data .. "/kubeconfig")
  return text and tonumber(text:match("server: https?://[%d.]+:(%d+)"))
end

--- apiserver.new's options from parsed arguments.
function M.server_options(o)
  local crds = {}
  local b, own = builtin_crds()
  if b then crds[1] = b end
  if own then crds[#crds + 1] = own end
  for _, d in ipairs(o.crds) do crds[#crds + 1] = d end
  return { data = o.data, host = o.host, port = o.port, token = o.token, token_file = o.token_file,
    tls_cert = o.tls_cert, tls_key = o.tls_key, client_ca = o.client_ca, tls_ca = o.tls_ca, crds = crds,
    event_ttl = o.event_ttl, history = o.history, idle_timeout = o.idle_timeout,
    header_timeout = o.header_timeout, max_connections = o.max_connections,
    max_connections_per_ip = o.max_connections_per_ip }
end

--- Listen (on the previous port when possible) and write DIR/kubeconfig.
function M.listen(srv, o)
  local port, err, code
  if o.port == 0 then
    local prev = previous_port(o.data)
    if prev then
      srv.opts.port = prev
      port = srv:listen()
      srv.opts.port = 0
    end
  end
  if not port then
    port, err, code = srv:listen()
    if not port then return nil, ("%s (%s)"):format(tostring(err), tostring(code)) end
  end
  local kc = o.data .. "/kubeconfig"
  local ok, werr = fs.write_atomic(kc, srv:kubeconfig({ tls_server_name = o.tls_server_name }), { mode = 384 })
  if not ok then return nil, "cannot write " .. kc .. ": " .. tostring(werr) end
  return port
end

function M.announce(srv, o, port, what)
  local log = require("vmsnap.log")
  if log.json() then
    -- JSON lines only: a log reader gets one record, not text
    log.new("serve"):info("listening", { what = what or "vmsnap API server",
      url = ("https://%s:%d"):format(o.host, port), data = o.data, kubeconfig = o.data .. "/kubeconfig" })
    return
  end
  io.stdout:write(("%s listening on https://%s:%d (state in %s)\n")
    :format(what or "vmsnap API server", o.host, port, o.data))
  io.stdout:write(("  export KUBECONFIG=%s/kubeconfig\n  kubectl get virtualization\n"):format(o.data))
  io.stdout:flush()
end

function M.main(args)
  local o = M.parse(args)
  collectgarbage("generational") -- a long-lived process: docs/performance.md, "Fourth round"
  local pok, perr0 = M.prepare(o)
  if not pok then return nil, "serve: " .. tostring(perr0) end
  local srv, err = apiserver.new(M.server_options(o))
  if not srv then return nil, "serve: " .. tostring(err) end
  local _ <close> = setmetatable({}, { __close = function() srv:close() end })
  local port, perr = M.listen(srv, o)
  if not port then return nil, "serve: " .. tostring(perr) end
  M.announce(srv, o, port)
  return srv:serve()
end

return M
