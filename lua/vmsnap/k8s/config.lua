--- vmsnap.k8s.config: where a client connects and how it authenticates —
--- kubeconfig files (KUBECONFIG, merged), the in-cluster service account, or
--- explicit options — and the credentials that change over time (token
--- files that rotate, exec plugins with an expiry).
---
--- A resolved config is {server, tls = {...}, namespace, auth = Auth}, where
--- Auth:headers(force_refresh) gives the headers to send (it may run an
--- exec plugin) and never appears in logs or errors.
local yaml = require("vmsnap.yaml")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")
local vtime = require("vmsnap.time")

local M = {}

-- where a pod has its ServiceAccount's token, ca.crt and namespace (the
-- environment's VMSNAP_SERVICE_ACCOUNT_DIR instead: a test "in a pod")
M.SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

local function dirname(p)
  return p:match("^(.*)/[^/]*$") or "."
end

local function resolve_path(base, p)
  if p == nil or p == "" then return nil end
  if p:sub(1, 1) == "/" then return p end
  if p:sub(1, 2) == "~/" then return (os.getenv("HOME") or "") .. p:sub(2) end
  return base .. "/" .. p
end

local b64decode = require("vmsnap.base64").decode


-- ------------------------------------------------------------ credentials

local Auth = {}
Auth.__index = Auth
-- keep credentials out of anything that prints the object
Auth.__tostring = function() return "k8s credentials (hidden)" end

local function new_auth(user, base, cluster_info)
  return setmetatable({ user = user or {}, base = base, cluster = cluster_info }, Auth)
end

-- a token file is re-read when it changes (service-account tokens rotate)
local function token_from_file(self, path)
  local st = fs.stat(path)
  if not st then return nil, ("cannot read the token file %s"):format(path) end
  if self.tf_path ~= path or self.tf_mtime ~= st.mtime or self.tf_size ~= st.size then
    local text, err = fs.read_file(path)
    if not text then return nil, ("cannot read the token file %s: %s"):format(path, err) end
    self.tf_path, self.tf_mtime, self.tf_size = path, st.mtime, st.size
    self.tf_token = text:gsub("%s+$", "")
  end
  return self.tf_token
end

local function run_exec(self, force)
  local e = self.user.exec
  local now = os.time()
  if not force and self.exec_cred and (not self.exec_expiry or now < self.exec_expiry - 10) then
    return self.exec_cred
  end
  if type(e.command) ~= "string" then return nil, "exec credential plugin: command is required" end
  local argv = { resolve_path(self.base, e.command:find("/") and e.command or nil) or e.command }
  for _, a in ipairs(e.args or {}) do argv[#argv + 1] = tostring(a) end
  local env = {}
  for _, kv in ipairs(e.env or {}) do
    if type(kv) == "table" and kv.name then env[kv.name] = tostring(kv.value or "") end
  end
  local api = e.apiVersion or "client.authentication.k8s.io/v1"
  local info = { apiVersion = api, kind = "ExecCredential", spec = { interactive = false } }
  if e.provideClusterInfo and self.cluster then info.spec.cluster = self.cluster end
  env.KUBERNETES_EXEC_INFO = json.encode(info)
  local r, err, code = proc.run(argv, { env = env, timeout = 60 })
  if not r then return nil, ("exec credential plugin %s: %s"):format(argv[1], err), code end
  if r.status ~= 0 then
    local tail = (r.stderr or ""):sub(-300):gsub("%s+$", "")
    return nil, ("exec credential plugin %s: exit status %d%s"):format(argv[1], r.status,
      tail ~= "" and (": " .. tail) or "")
  end
  local cred = json.decode(r.stdout or "")
  if type(cred) ~= "table" or cred.kind ~= "ExecCredential" or type(cred.status) ~= "table" then
    return nil, ("exec credential plugin %s: the output is not an ExecCredential"):format(argv[1])
  end
  if cred.apiVersion ~= api then
    return nil, ("exec credential plugin %s: apiVersion %s, expected %s"):format(argv[1], tostring(cred.apiVersion), api)
  end
  self.exec_cred = cred.status
  self.exec_expiry = vtime.parse(cred.status.expirationTimestamp)
  self.exec_runs = (self.exec_runs or 0) + 1
  return self.exec_cred
end

--- Headers (Authorization) and client-certificate TLS options for a request.
--- force: credentials were refused (401); refresh what can be refreshed.
function Auth:get(force)
  local u = self.user
  local headers, tls = {}, {}
  if u.exec then
    local cred, err, code = run_exec(self, force)
    if not cred then return nil, err, code or "AUTH" end
    if cred.token then headers.Authorization = "Bearer " .. cred.token end
    if cred.clientCertificateData then tls.cert_data = cred.clientCertificateData end
    if cred.clientKeyData then tls.key_data = cred.clientKeyData end
  elseif u.tokenFile or u["token-file"] then
    local t, err = token_from_file(self, u.tokenFile or u["token-file"])
    if not t then return nil, err, "AUTH" end
    headers.Authorization = "Bearer " .. t
  elseif u.token then
    headers.Authorization = "Bearer " .. u.token
  elseif u.username and u.password then
    headers.Authorization = "Basic " .. require("vmsnap.base64").encode(u.username .. ":" .. u.password)
  end
  return headers, tls
end

-- ------------------------------------------------------------ kubeconfig

-- the named entries of a list (whatever is not a mapping with a name is skipped:
-- a kubeconfig is read as kubectl reads it, never raising on its shape)
local function by_name(list)
  local m = {}
  if type(list) ~= "table" then return m end
  for _, e in ipairs(list) do
    if type(e) == "table" and type(e.name) == "string" then m[e.name] = e end
  end
  return m
end

--- Load and merge kubeconfig files (the first file that sets a value wins,
--- as kubectl does). Returns {clusters, users, contexts, current} with the
--- directory of the defining file kept per entry.
function M.load_kubeconfig(paths)
  local merged = { clusters = {}, users = {}, contexts = {} }
  local found = false
  for _, path in ipairs(paths) do
    local text = fs.read_file(path)
    if text then
      local doc, err = yaml.load(text)
      if doc == nil and err then return nil, ("kubeconfig %s: %s"):format(path, err) end
      if type(doc) == "table" then
        found = true
        local base = dirname(path)
        for _, kind in ipairs({ "clusters", "users", "contexts" }) do
          for name, e in pairs(by_name(doc[kind])) do
            if not merged[kind][name] then
              local v = e[kind:sub(1, -2)]
              merged[kind][name] = { value = type(v) == "table" and v or {}, base = base }
            end
          end
        end
        if not merged.current and type(doc["current-context"]) == "string" and doc["current-context"] ~= "" then
          merged.current = doc["current-context"]
        end
      end
    end
  end
  if not found then return nil, "no kubeconfig found in " .. table.concat(paths, ":") end
  return merged
end

local function kubeconfig_paths(explicit)
  if explicit then return { explicit } end
  local env = os.getenv("KUBECONFIG")
  local paths = {}
  if env and env ~= "" then
    for p in env:gmatch("[^:]+") do paths[#paths + 1] = p end
  else
    paths[1] = (os.getenv("HOME") or "") .. "/.kube/config"
  end
  return paths
end

local function file_or_data(base, file, data)
  if data and data ~= "" then
    local pem = b64decode(data)
    if not pem then return nil, nil, "is not valid base64" end
    return nil, pem
  end
  return resolve_path(base, file), nil
end

--- Resolve a kubeconfig into a connection config.
function M.from_kubeconfig(opts)
  local kc, err = M.load_kubeconfig(kubeconfig_paths(opts.kubeconfig))
  if not kc then return nil, err end
  local ctx_name = opts.context or kc.current
  if not ctx_name then return nil, "kubeconfig has no current-context; pass a context" end
  local ctx = kc.contexts[ctx_name]
  if not ctx then return nil, ("kubeconfig has no context %q"):format(ctx_name) end
  local cl = kc.clusters[ctx.value.cluster or ""]
  if not cl then return nil, ("context %q names cluster %q, which the kubeconfig lacks"):format(ctx_name, tostring(ctx.value.cluster)) end
  local us = kc.users[ctx.value.user or ""] or { value = {}, base = cl.base }
  local c, u = cl.value, us.value
  if type(c.server) ~= "string" or c.server == "" then
    return nil, ("cluster %q has no server"):format(ctx.value.cluster)
  end
  local tls = { insecure = c["insecure-skip-tls-verify"] == true }
  local e
  tls.ca_file, tls.ca_data, e = file_or_data(cl.base, c["certificate-authority"], c["certificate-authority-data"])
  if e then return nil, ("cluster %q: certificate-authority-data %s"):format(ctx.value.cluster, e) end
  tls.cert_file, tls.cert_data, e = file_or_data(us.base, u["client-certificate"], u["client-certificate-data"])
  if e then return nil, ("user %q: client-certificate-data %s"):format(ctx.value.user, e) end
  tls.key_file, tls.key_data, e = file_or_data(us.base, u["client-key"], u["client-key-data"])
  if e then return nil, ("user %q: client-key-data %s"):format(ctx.value.user, e) end
  local user = {}
  for k, v in pairs(u) do user[k] = v end
  if user.tokenFile then user.tokenFile = resolve_path(us.base, user.tokenFile) end
  local cluster_info = { server = c.server, ["certificate-authority-data"] = c["certificate-authority-data"],
    ["insecure-skip-tls-verify"] = c["insecure-skip-tls-verify"], ["tls-server-name"] = c["tls-server-name"] }
  return {
    server = c.server:gsub("/+$", ""),
    tls = tls,
    tls_server_name = c["tls-server-name"],
    namespace = ctx.value.namespace or "default",
    auth = new_auth(user, us.base, cluster_info),
    source = "kubeconfig context " .. ctx_name,
  }
end

--- The in-cluster config (service account), or nil, message.
function M.in_cluster(opts)
  local host = opts.service_host or os.getenv("KUBERNETES_SERVICE_HOST")
  local port = opts.service_port or os.getenv("KUBERNETES_SERVICE_PORT")
  if not host or host == "" or not port or port == "" then
    return nil, "not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set"
  end
  local dir = opts.service_account_dir or os.getenv("VMSNAP_SERVICE_ACCOUNT_DIR") or M.SA_DIR
  if not fs.exists(dir .. "/token") then
    return nil, ("not running in a cluster: %s/token is missing"):format(dir)
  end
  if host:find(":", 1, true) and not host:find("^%[") then host = "[" .. host .. "]" end
  local ns = fs.read_file(dir .. "/namespace")
  return {
    server = (opts.scheme or "https") .. "://" .. host .. ":" .. port,
    tls = { ca_file = fs.exists(dir .. "/ca.crt") and (dir .. "/ca.crt") or nil },
    namespace = ns and ns:gsub("%s+$", "") or "default",
    auth = new_auth({ tokenFile = dir .. "/token" }, dir),
    source = "in-cluster service account",
  }
end

--- Explicit options: server, token, token_file, ca_file/ca_data,
--- cert_file/cert_data, key_file/key_data, insecure, tls_server_name, namespace.
function M.explicit(opts)
  return {
    server = opts.server:gsub("/+$", ""),
    tls = { ca_file = opts.ca_file, ca_data = opts.ca_data, cert_file = opts.cert_file, cert_data = opts.cert_data,
      key_file = opts.key_file, key_data = opts.key_data, insecure = opts.insecure },
    tls_server_name = opts.tls_server_name,
    namespace = opts.namespace or "default",
    auth = new_auth({ token = opts.token, tokenFile = opts.token_file, exec = opts.exec }, "."),
    source = "explicit options",
  }
end

--- Resolve options into a connection config: explicit server, in-cluster
--- when asked (or when no kubeconfig exists and the service account does),
--- else the kubeconfig.
function M.resolve(opts)
  opts = opts or {}
  local cfg, err
  if opts.server then
    cfg = M.explicit(opts)
  elseif opts.in_cluster then
    cfg, err = M.in_cluster(opts)
  else
    cfg, err = M.from_kubeconfig(opts)
    if not cfg and not opts.kubeconfig and not os.getenv("KUBECONFIG") then
      local ic = M.in_cluster(opts)
      if ic then cfg, err = ic, nil end
    end
  end
  if not cfg then return nil, err end
  if opts.namespace then cfg.namespace = opts.namespace end
  return cfg
end

return M
