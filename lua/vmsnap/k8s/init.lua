--- vmsnap.k8s: a Kubernetes client for scripts, on vmsnap.http (libcurl
--- multi on the loop): many requests and watches in flight at once from
--- straight-line Lua.
---
---     local k8s = require("vmsnap.k8s")
---     local c = assert(k8s.client())                 -- kubeconfig, or in-cluster
---     local vds = assert(c:get("vds", "snap-1"))     -- kinds resolve through discovery
---     for obj in c:each("VirtualDiskSnapshot", { label_selector = "app=demo" }) do ... end
---     local obj, msg, reason, status = c:create(manifest)
---
--- Failures return `nil, message, reason, status`: for an answer of the API
--- server, reason is the Status reason ("NotFound", "Conflict", "Invalid",
--- ...) and status the decoded Status; for a transport failure, reason is a
--- code ("TIMEOUT", "CLOSED", "ECONNREFUSED", "TLS", ...). Idempotent calls
--- are retried on 429 (honouring Retry-After), 5xx and broken connections,
--- with exponential back-off and jitter under an overall deadline; a create
--- is retried only when the request cannot have reached the server.
--- Credentials and Secret data never appear in logs or error messages.
local http = require("vmsnap.http")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local errors = require("vmsnap.errors")
local config = require("vmsnap.k8s.config")
local rtcore = require("vmsnap.core.runtime")

local M = {}

---@class vmsnap.k8s.Client
---@field namespace string  the default namespace (from the context, the service account or opts)
---@field server string
---@field field_manager string
local Client = {}
Client.__index = Client

local AGG_ACCEPT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"

-- codes of transport failures where the request never reached the server
local NOT_SENT = { ECONNREFUSED = true, RESOLVE = true, ENETUNREACH = true, EHOSTUNREACH = true,
  ECONNABORTED = false }
-- codes worth another attempt for an idempotent call
local TRANSIENT = { CLOSED = true, TIMEOUT = true, ECONNREFUSED = true, ECONNRESET = true, EPIPE = true,
  ETIMEDOUT = true, RESOLVE = true, ENETUNREACH = true, EHOSTUNREACH = true }

---@class vmsnap.k8s.ClientOpts
---@field kubeconfig? string       a kubeconfig file (default: $KUBECONFIG, several files merged, or ~/.kube/config)
---@field context? string          a context of the kubeconfig (default: current-context)
---@field namespace? string        the default namespace
---@field in_cluster? boolean      use the service account (the default when there is no kubeconfig)
---@field service_account_dir? string
---@field server? string           explicit server URL (then token, token_file, ca_file, ca_data, cert_*, key_*, insecure, tls_server_name)
---@field token? string
---@field token_file? string
---@field ca_file? string
---@field ca_data? string
---@field cert_file? string
---@field cert_data? string
---@field key_file? string
---@field key_data? string
---@field insecure? boolean
---@field tls_server_name? string
---@field timeout? number          seconds per attempt of a request (default 30)
---@field deadline? number         seconds for all attempts of a call (default 60)
---@field retries? integer         attempts after the first (default 6)
---@field field_manager? string    for writes and server-side apply (default "vmsnap")
---@field user_agent? string
---@field transport? function      in place of vmsnap.http.request (vmsnap.apiserver.loopback: `vmsnap up`'s controllers)

--- A client. Returns nil, message when no configuration can be found.
---@param opts? vmsnap.k8s.ClientOpts
---@return vmsnap.k8s.Client?, string?
function M.client(opts)
  opts = opts or {}
  local cfg, err = config.resolve(opts)
  if not cfg then return nil, err end
  local connect_to
  local server = cfg.server
  if cfg.tls_server_name and cfg.tls_server_name ~= "" then
    -- verify (and send SNI for) tls-server-name while connecting to the real address
    local scheme, host, port = server:match("^(https?)://%[?([^%]/:]+)%]?:?(%d*)")
    port = port ~= "" and port or (scheme == "https" and "443" or "80")
    connect_to = { ("%s:%s:%s:%s"):format(cfg.tls_server_name, port, host, port) }
    server = server:gsub("^(https?://)[^/]+", "%1" .. cfg.tls_server_name .. ":" .. port)
  end
  local self = setmetatable({
    cfg = cfg, server = server, connect_to = connect_to, namespace = cfg.namespace,
    auth = cfg.auth, timeout = opts.timeout or 30, deadline = opts.deadline or 60,
    retries = opts.retries or 6, field_manager = opts.field_manager or "vmsnap",
    user_agent = opts.user_agent or ("vmsnap/" .. require("vmsnap").versions().vmsnap),
    log = log.new("k8s"), disc = nil, disc_at = -1e9, transport = opts.transport,
  }, Client)
  return self
end

--- Where the client connects and how it was configured (no credentials).
function Client:describe()
  return { server = self.cfg.server, namespace = self.namespace, source = self.cfg.source }
end

-- ------------------------------------------------------------ requests

local function encode_query(q)
  if type(q) == "string" then return q ~= "" and ("?" .. q) or "" end
  if not q then return "" end
  local keys = {}
  for k, v in pairs(q) do
    if v ~= nil and v ~= false then keys[#keys + 1] = k end
  end
  if #keys == 0 then return "" end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local v = tostring(q[k])
    parts[i] = k .. "=" .. v:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)
  end
  return "?" .. table.concat(parts, "&")
end
M.encode_query = encode_query

local function backoff(attempt)
  local d = math.min(5, 0.1 * 2 ^ attempt)
  return d / 2 + math.random() * d / 2 -- jitter: between half and all of it
end

-- the Status reason Kubernetes gives an HTTP status (client-go's table; a
-- 502 from a gateway in front of the server is the server being unavailable)
local REASON_OF = { [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
  [405] = "MethodNotAllowed", [409] = "Conflict", [410] = "Gone", [415] = "UnsupportedMediaType",
  [422] = "Invalid", [429] = "TooManyRequests", [500] = "InternalError", [502] = "ServiceUnavailable",
  [503] = "ServiceUnavailable", [504] = "Timeout" }

local function decode_status(res)
  local st = json.decode(res.body or "")
  if type(st) == "table" and st.kind == "Status" then
    -- a reason of a gateway's own for 429 or 5xx ("BadGateway"): the one
    -- Kubernetes would give, so that a retry is tried where one may help
    local r = REASON_OF[res.status]
    if r and (res.status == 429 or res.status >= 500) and not errors.TRANSIENT[st.reason or ""] then st.reason = r end
    return st
  end
  return { kind = "Status", status = "Failure", code = res.status,
    reason = REASON_OF[res.status] or "Unknown",
    message = ("the server answered %d%s"):format(res.status,
      (res.body and #res.body > 0 and #res.body < 200 and not res.body:find("[\0-\8]")) and (": " .. res.body) or "") }
end

---@class vmsnap.k8s.RequestOpts
---@field method? string
---@field path string               "/api/v1/namespaces" (query separately)
---@field query? table|string
---@field body? string|table        a table is sent as JSON
---@field content_type? string
---@field accept? string
---@field timeout? number
---@field deadline? number
---@field idempotent? boolean       default: true for GET, HEAD, PUT, DELETE
---@field stream? boolean           return once the headers are in (watches)

-- VMSNAP_K8S_AUDIT=FILE: every distinct "METHOD PATH [watch]" this process
-- asks of an API server is appended to FILE (what deploy/'s ClusterRole is
-- checked against: tests/lua/deploy_spec.lua)
local audit_file, audit_seen = os.getenv("VMSNAP_K8S_AUDIT"), {}
local function audit(method, path, query)
  local watch = type(query) == "table" and query.watch ~= nil and " watch" or ""
  local line = method .. " " .. path .. watch
  if audit_seen[line] then return end
  audit_seen[line] = true
  local f = io.open(audit_file, "a")
  if f then
    f:write(line, "\n")
    f:close()
  end
end

--- One API call with retries; returns the http response (2xx), or nil,
--- message, reason, status.
---@param o vmsnap.k8s.RequestOpts
function Client:request(o)
  local method = o.method or "GET"
  if audit_file then audit(method, o.path, o.query) end
  local idempotent = o.idempotent
  if idempotent == nil then
    idempotent = method == "GET" or method == "HEAD" or method == "PUT" or method == "DELETE"
  end
  local body = o.body
  if type(body) == "table" then body = assert(json.encode(body)) end
  -- (an in-process transport takes the path and query as they are)
  local url = not self.transport and (self.server .. o.path .. encode_query(o.query)) or nil
  local start = task.now()
  local deadline = start + (o.deadline or self.deadline)
  local refreshed = false
  local attempt = 0
  while true do
    local hdrs, tls_extra, acode = self.auth:get(refreshed == "now")
    if not hdrs then return nil, tls_extra, acode or "AUTH" end
    if refreshed == "now" then refreshed = true end
    hdrs["User-Agent"] = self.user_agent
    hdrs["Accept"] = o.accept or "application/json"
    if body then hdrs["Content-Type"] = o.content_type or "application/json" end
    local tls = self.cfg.tls
    if tls_extra.cert_data or tls_extra.key_data then
      -- an exec plugin's client certificate replaces the kubeconfig's
      tls = { ca_file = self.cfg.tls.ca_file, ca_data = self.cfg.tls.ca_data, insecure = self.cfg.tls.insecure,
        cert_data = tls_extra.cert_data, key_data = tls_extra.key_data }
    end
    local remaining = deadline - task.now()
    local ro = { url = url, method = method, headers = hdrs, body = body,
      timeout = (not o.stream) and math.max(0.05, math.min(o.timeout or self.timeout, remaining)) or nil,
      connect_timeout = math.max(0.05, math.min(10, remaining)),
      stream = o.stream, tls = tls, connect_to = self.connect_to }
    local res, err, code
    if self.transport then
      ro.path, ro.query = o.path, o.query
      res, err, code = self.transport(ro)
    else
      res, err, code = http.request(ro)
    end
    local again, wait
    if not res then
      if code == "TLS" then
        err = err .. " (check the server's certificate authority, or the client certificate)"
      end
      again = TRANSIENT[code] and (idempotent or NOT_SENT[code])
      if not again then return nil, err, code end
      wait = backoff(attempt)
      self.log:debug("request failed, retrying", { method = method, path = o.path, code = code })
    else
      local s = res.status
      if s >= 200 and s < 300 then return res end
      if o.stream then
        res.body = res:read_all(5) or ""
        res:close()
      end
      if s == 401 and not refreshed and self.auth.user.exec then
        refreshed = "now" -- credentials refused: run the plugin again once
        again, wait = true, 0
      elseif (s == 429 or (s >= 500 and s ~= 501)) and (idempotent or s == 429) then
        again = true
        local ra = tonumber(res.headers["retry-after"] or "")
        wait = math.max(backoff(attempt), ra and math.min(ra, 60) or 0)
        self.log:debug("retrying", { method = method, path = o.path, status = s })
      else
        local st = decode_status(res)
        return nil, st.message or ("HTTP " .. s), st.reason or "Unknown", st
      end
      if again and not (task.now() + wait < deadline and attempt < self.retries) then
        local st = decode_status(res)
        return nil, st.message or ("HTTP " .. s), st.reason or "Unknown", st
      end
    end
    attempt = attempt + 1
    -- the process is going down: what a cleanup sends gets one try, not a
    -- backoff that would hold the exit
    if attempt > self.retries or task.now() + wait >= deadline or rtcore.cancel_requested() then
      return nil, ("%s (after %d attempts in %.1fs)"):format(err, attempt, task.now() - start), code
    end
    if wait > 0 then task.sleep(wait) end
  end
end

local function decode_body(res)
  local obj, err = json.decode(res.body)
  if obj == nil then return nil, "the server's answer is not JSON: " .. tostring(err), "JSON_DECODE" end
  return obj
end

local function bad_answer(r, what, why)
  return nil, ("the server's answer to %s of %s is not the object asked for: %s"):format(what,
    r.plural or r.kind or "?", why), "BAD_RESPONSE"
end

--- The decoded answer when it is an object of the kind asked for (named
--- name, when given); else nil, message, "BAD_RESPONSE" (transient: a
--- proxy's error page, a watch event, `{}` taken for the object would be
--- worse than a retry).
local function decode_object(res, r, what, name)
  local obj, err, code = decode_body(res)
  if obj == nil then return nil, err, code end
  if type(obj) ~= "table" or json.is_array(obj) then return bad_answer(r, what, "not a JSON object") end
  if r.kind and obj.kind ~= r.kind then
    return bad_answer(r, what, ("its kind is %s"):format(obj.kind == nil and "missing" or tostring(obj.kind)))
  end
  local md = obj.metadata
  if type(md) ~= "table" then return bad_answer(r, what, "it has no metadata") end
  if type(md.name) ~= "string" or (name and md.name ~= name) then
    return bad_answer(r, what, ("its name is %s"):format(type(md.name) == "string" and ('"' .. md.name .. '"') or "missing"))
  end
  return obj
end

--- The decoded answer when it is a list: items an array of objects with
--- metadata.
local function decode_list(res, r)
  local obj, err, code = decode_body(res)
  if obj == nil then return nil, err, code end
  if type(obj) ~= "table" or type(obj.items) ~= "table" then return bad_answer(r, "a list", "it has no items") end
  if type(obj.kind) == "string" and not obj.kind:match("List$") then
    return bad_answer(r, "a list", ("its kind is %s"):format(obj.kind))
  end
  for i, it in ipairs(obj.items) do
    if type(it) ~= "table" or type(it.metadata) ~= "table" or type(it.metadata.name) ~= "string" then
      return bad_answer(r, "a list", ("item %d has no metadata.name"):format(i))
    end
  end
  return obj
end

-- ------------------------------------------------------------ discovery

local function add_resource(idx, list, r)
  list[#list + 1] = r
  local group_suffix = r.group ~= "" and ("." .. r.group) or ""
  local function put(key)
    key = key:lower()
    local cur = idx[key]
    -- the first (preferred group) wins, like kubectl's RESTMapper priorities
    if not cur then idx[key] = r end
  end
  put(r.plural)
  put(r.plural .. group_suffix)
  put(r.plural .. "." .. r.version .. group_suffix)
  if r.singular and r.singular ~= "" then put(r.singular); put(r.singular .. group_suffix) end
  put(r.kind)
  put(r.kind .. group_suffix)
  for _, s in ipairs(r.short or {}) do put(s) end
end

local function parse_aggregated(doc, idx, list)
  for _, g in ipairs(doc.items or {}) do
    local group = (g.metadata and g.metadata.name) or ""
    for vi, v in ipairs(g.versions or {}) do
      for _, res in ipairs(v.resources or {}) do
        local rk = res.responseKind or {}
        local r = { group = group, version = v.version, kind = rk.kind, plural = res.resource,
          singular = res.singularResource, namespaced = res.scope == "Namespaced",
          short = res.shortNames or {}, categories = res.categories or {}, verbs = res.verbs or {},
          preferred = vi == 1 }
        r.api_version = group == "" and v.version or (group .. "/" .. v.version)
        add_resource(idx, list, r)
      end
    end
  end
end

local function parse_legacy(rl, group, version, idx, list, preferred)
  for _, res in ipairs(rl.resources or {}) do
    if not res.name:find("/", 1, true) then
      local r = { group = group, version = version, kind = res.kind, plural = res.name,
        singular = res.singularName ~= "" and res.singularName or res.kind:lower(),
        namespaced = res.namespaced, short = res.shortNames or {}, categories = res.categories or {},
        verbs = res.verbs or {}, preferred = preferred }
      r.api_version = group == "" and version or (group .. "/" .. version)
      add_resource(idx, list, r)
    end
  end
end

--- Fetch the server's resources (aggregated discovery when offered).
function Client:discover()
  local idx, list = {}, {}
  local groups = {}
  for _, root in ipairs({ "/api", "/apis" }) do
    local res, err, reason, st = self:request({ path = root, accept = AGG_ACCEPT })
    if not res then return nil, err, reason, st end
    local doc, derr, dcode = decode_body(res)
    if not doc then return nil, derr, dcode end
    if doc.kind == "APIGroupDiscoveryList" then
      parse_aggregated(doc, idx, list)
    elseif doc.kind == "APIVersions" then
      groups[#groups + 1] = { name = "", versions = { "v1" } }
    elseif doc.kind == "APIGroupList" then
      for _, g in ipairs(doc.groups or {}) do
        local vs = {}
        local pref = g.preferredVersion and g.preferredVersion.version
        if pref then vs[1] = pref end
        for _, v in ipairs(g.versions or {}) do
          if v.version ~= pref then vs[#vs + 1] = v.version end
        end
        groups[#groups + 1] = { name = g.name, versions = vs }
      end
    end
  end
  -- the legacy documents, fetched in parallel
  local jobs, meta = {}, {}
  for _, g in ipairs(groups) do
    for vi, v in ipairs(g.versions) do
      local path = g.name == "" and ("/api/" .. v) or ("/apis/" .. g.name .. "/" .. v)
      meta[#meta + 1] = { g.name, v, vi == 1 }
      jobs[#jobs + 1] = task.spawn(function() return self:request({ path = path }) end)
    end
  end
  for i, t in ipairs(jobs) do
    local res = task.wait(t)
    if res then
      local rl = json.decode(res.body)
      if type(rl) == "table" then parse_legacy(rl, meta[i][1], meta[i][2], idx, list, meta[i][3]) end
    end
  end
  -- by apiVersion and kind, the first of the list (what a scan would find)
  local by_kind = {}
  for _, r in ipairs(list) do
    local k = r.api_version .. "\0" .. r.kind
    if by_kind[k] == nil then by_kind[k] = r end
  end
  self.disc = { idx = idx, list = list, by_kind = by_kind }
  self.disc_at = task.now()
  return self.disc
end

---@class vmsnap.k8s.Resource
---@field group string
---@field version string
---@field kind string
---@field plural string
---@field namespaced boolean
---@field api_version string

local function lookup(disc, what)
  if not disc then return nil end
  if type(what) == "table" then
    return disc.by_kind[tostring(what.apiVersion) .. "\0" .. tostring(what.kind)]
  end
  return disc.idx[tostring(what):lower()]
end

--- Resolve a kind — "vds", "VirtualDiskSnapshot", "virtualdisksnapshots",
--- "virtualdisksnapshots.virtualization.deckhouse.io", or an object with
--- apiVersion and kind — through discovery (cached; refreshed once on a miss).
---@return vmsnap.k8s.Resource?, string?, string?
function Client:resource(what)
  if type(what) == "table" and what.plural then return what end
  local r = lookup(self.disc, what)
  if r then return r end
  if task.now() - self.disc_at > 1 then
    local ok, err, reason = self:discover()
    if not ok then return nil, err, reason end
    r = lookup(self.disc, what)
    if r then return r end
  end
  local name = type(what) == "table" and (tostring(what.apiVersion) .. ", Kind=" .. tostring(what.kind)) or tostring(what)
  return nil, ('the server doesn\'t have a resource type "%s"'):format(name), "NotFound"
end

local function path_for(r, ns, name, sub, group_override)
  local group = group_override or r.group
  local p = group == "" and ("/api/" .. r.version) or ("/apis/" .. group .. "/" .. r.version)
  if r.namespaced and ns then p = p .. "/namespaces/" .. ns end
  p = p .. "/" .. r.plural
  if name then p = p .. "/" .. name end
  if sub then p = p .. "/" .. sub end
  return p
end

function Client:ns_of(r, opts, obj)
  if not r.namespaced then return nil end
  if opts and opts.all_namespaces then return nil end
  return (opts and opts.namespace) or (obj and obj.metadata and obj.metadata.namespace) or self.namespace
end

local function check_name(name, fname)
  if type(name) ~= "string" or name == "" then
    error(("bad argument to '%s' (object name expected)"):format(fname), 3)
  end
end

-- ------------------------------------------------------------ verbs

---@class vmsnap.k8s.Opts
---@field namespace? string
---@field dry_run? boolean
---@field field_manager? string

--- Get one object.
---@param kind string|table
---@param name string
---@param opts? vmsnap.k8s.Opts
function Client:get(kind, name, opts)
  check_name(name, "get")
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  local res, e2, reason2, st = self:request({ path = path_for(r, self:ns_of(r, opts), name) })
  if not res then return nil, e2, reason2, st end
  return decode_object(res, r, "a GET", name)
end

---@class vmsnap.k8s.ListOpts: vmsnap.k8s.Opts
---@field all_namespaces? boolean
---@field label_selector? string
---@field field_selector? string
---@field limit? integer
---@field continue? string
---@field resource_version? string

local function list_query(opts)
  return { labelSelector = opts.label_selector, fieldSelector = opts.field_selector,
    limit = opts.limit, continue = opts.continue, resourceVersion = opts.resource_version }
end

--- One page of a list: the List object (items, metadata.continue).
---@param kind string|table
---@param opts? vmsnap.k8s.ListOpts
function Client:list(kind, opts)
  opts = opts or {}
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  local res, e2, reason2, st = self:request({ path = path_for(r, self:ns_of(r, opts)), query = list_query(opts) })
  if not res then return nil, e2, reason2, st end
  return decode_list(res, r)
end

--- Every object, page by page (limit per page, default 500): an iterator.
--- A failure raises a vmsnap.errors object (code = the reason).
---@param kind string|table
---@param opts? vmsnap.k8s.ListOpts
---@return fun(): table?
function Client:each(kind, opts)
  opts = opts or {}
  local page, i, cont, done = nil, 0, nil, false
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.limit = opts.limit or 500
  return function()
    while true do
      if page and i < #page.items then
        i = i + 1
        return page.items[i]
      end
      if done then return nil end
      o.continue = cont
      local p, err, reason = self:list(kind, o)
      if not p then error(errors.new(reason or "ERROR", err), 2) end
      page, i = p, 0
      cont = p.metadata and p.metadata.continue
      if cont == nil or cont == "" then done = true end
    end
  end
end

--- Every object of all pages as an array (and the list's resourceVersion).
function Client:list_all(kind, opts)
  local out = {}
  local ok, err = pcall(function()
    for obj in self:each(kind, opts) do out[#out + 1] = obj end
  end)
  if not ok then return nil, tostring(err), errors.code_of(err) end
  return out
end

local function write_query(self, opts)
  return { dryRun = opts.dry_run and "All" or nil, fieldManager = opts.field_manager or self.field_manager,
    fieldValidation = opts.field_validation or "Strict" }
end

--- Be told of every object a write of this client gets back (create,
--- update, patch, delete with finalizers pending; never a dry run):
--- fn(obj). Caches use it to stay at least as new as their own writes.
---@param fn fun(obj: table)
function Client:observe(fn)
  self.observers = self.observers or {}
  self.observers[#self.observers + 1] = fn
end

local function written(self, opts, obj, ...)
  if obj and self.observers and not opts.dry_run and type(obj) == "table" and obj.kind ~= "Status"
    and type(obj.metadata) == "table" then
    for _, fn in ipairs(self.observers) do
      local ok, err = pcall(fn, obj)
      if not ok then self.log:error("write observer failed", { error = tostring(err) }) end
    end
  end
  return obj, ...
end

--- Create an object (its apiVersion and kind say where).
---@param obj table
---@param opts? vmsnap.k8s.Opts
function Client:create(obj, opts)
  opts = opts or {}
  local r, err, reason = self:resource(obj)
  if not r then return nil, err, reason end
  local res, e2, reason2, st = self:request({ method = "POST", path = path_for(r, self:ns_of(r, opts, obj)),
    query = write_query(self, opts), body = obj, idempotent = false })
  if not res then return nil, e2, reason2, st end
  return written(self, opts, decode_object(res, r, "a create"))
end

local function put(self, obj, opts, sub)
  opts = opts or {}
  local r, err, reason = self:resource(obj)
  if not r then return nil, err, reason end
  check_name(obj.metadata and obj.metadata.name, sub and "update_status" or "update")
  local res, e2, reason2, st = self:request({ method = "PUT",
    path = path_for(r, self:ns_of(r, opts, obj), obj.metadata.name, sub),
    query = write_query(self, opts), body = obj })
  if not res then return nil, e2, reason2, st end
  return written(self, opts, decode_object(res, r, sub and "a status update" or "an update", obj.metadata.name))
end

--- Replace an object (optimistic concurrency through metadata.resourceVersion).
function Client:update(obj, opts) return put(self, obj, opts, nil) end

--- Replace an object's status (the status subresource).
function Client:update_status(obj, opts) return put(self, obj, opts, "status") end

local PATCH_TYPES = { merge = "application/merge-patch+json", json = "application/json-patch+json",
  apply = "application/apply-patch+yaml", strategic = "application/strategic-merge-patch+json" }

---@class vmsnap.k8s.PatchOpts: vmsnap.k8s.Opts
---@field type? "merge"|"json"|"apply"|"strategic"   default "merge"
---@field force? boolean        server-side apply: take fields other managers own
---@field subresource? string   e.g. "status"

--- Patch an object.
---@param kind string|table
---@param name string
---@param p table|string
---@param opts? vmsnap.k8s.PatchOpts
function Client:patch(kind, name, p, opts)
  opts = opts or {}
  check_name(name, "patch")
  local ptype = opts.type or "merge"
  local ct = PATCH_TYPES[ptype]
  if not ct then error(("bad patch type '%s' (merge, json, apply or strategic)"):format(tostring(ptype)), 2) end
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  local q = write_query(self, opts)
  if ptype == "apply" then q.force = opts.force and "true" or nil end
  local res, e2, reason2, st = self:request({ method = "PATCH",
    path = path_for(r, self:ns_of(r, opts), name, opts.subresource), query = q, body = p,
    content_type = ct, idempotent = ptype ~= "json" })
  if not res then return nil, e2, reason2, st end
  return written(self, opts, decode_object(res, r, "a patch", name))
end

--- Server-side apply of one object (field manager: opts.field_manager or
--- the client's); creates it when absent.
---@param obj table
---@param opts? vmsnap.k8s.PatchOpts
function Client:apply(obj, opts)
  opts = opts or {}
  if type(obj) ~= "table" or type(obj.metadata) ~= "table" then
    error("bad argument #1 to 'apply' (object with metadata expected)", 2)
  end
  local r, err, reason = self:resource(obj)
  if not r then return nil, err, reason end
  local o = { type = "apply", force = opts.force, field_manager = opts.field_manager, dry_run = opts.dry_run,
    namespace = self:ns_of(r, opts, obj), subresource = opts.subresource }
  return self:patch(r, obj.metadata.name, obj, o)
end

--- Server-side apply of every document of a manifest (YAML text, or a list
--- of objects), in order, like `kubectl apply --server-side`. Returns the
--- list of results {object=} or {error=, reason=, status=} per document,
--- and the number that failed.
function Client:apply_manifest(manifest, opts)
  local docs = manifest
  if type(manifest) == "string" then
    local err
    docs, err = yaml.load_all(manifest)
    if not docs then return nil, err, "YAML_PARSE" end
  end
  local results, failed = {}, 0
  for i, d in ipairs(docs) do
    if type(d) == "table" and d.kind == "List" and type(d.items) == "table" then
      local sub = self:apply_manifest(d.items, opts)
      for _, x in ipairs(sub) do results[#results + 1] = x end
    elseif type(d) == "table" and next(d) ~= nil then
      local obj, err, reason, st = self:apply(d, opts)
      if obj then
        results[#results + 1] = { object = obj }
      else
        failed = failed + 1
        results[#results + 1] = { error = ("document %d (%s %s): %s"):format(i, tostring(d.kind),
          tostring(d.metadata and d.metadata.name), err), reason = reason, status = st, document = d }
      end
    end
  end
  return results, failed
end

---@class vmsnap.k8s.DeleteOpts: vmsnap.k8s.Opts
---@field propagation? "Background"|"Foreground"|"Orphan"
---@field preconditions? {uid?: string, resource_version?: string}
---@field grace_period? integer

--- Delete an object; returns the server's answer (a Status, or the object
--- when finalizers keep it for now).
function Client:delete(kind, name, opts)
  opts = opts or {}
  check_name(name, "delete")
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  local body = { kind = "DeleteOptions", apiVersion = "v1", propagationPolicy = opts.propagation,
    gracePeriodSeconds = opts.grace_period, dryRun = opts.dry_run and json.array({ "All" }) or nil }
  if opts.preconditions then
    body.preconditions = { uid = opts.preconditions.uid, resourceVersion = opts.preconditions.resource_version }
  end
  local res, e2, reason2, st = self:request({ method = "DELETE", path = path_for(r, self:ns_of(r, opts), name), body = body })
  if not res then return nil, e2, reason2, st end
  return written(self, opts, decode_body(res))
end

---@class vmsnap.k8s.SubresourceOpts: vmsnap.k8s.Opts
---@field method? string   default "GET"
---@field body? table|string
---@field group? string    another API group serving the subresource (e.g. "subresources.virtualization.deckhouse.io")
---@field query? table

--- Call a subresource, e.g. a VM's freeze:
--- `c:subresource("vm", "linux-vm", "freeze", {method = "PUT", group = "subresources.virtualization.deckhouse.io", body = {unfreezeTimeout = "30s"}})`.
--- Returns the decoded answer (or true for an empty one).
function Client:subresource(kind, name, sub, opts)
  opts = opts or {}
  check_name(name, "subresource")
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  local method = opts.method or "GET"
  local res, e2, reason2, st = self:request({ method = method,
    path = path_for(r, self:ns_of(r, opts), name, sub, opts.group), body = opts.body, query = opts.query,
    idempotent = method ~= "POST" })
  if not res then return nil, e2, reason2, st end
  if res.body == "" then return true end
  return decode_body(res)
end

-- ------------------------------------------------------------ watch

local Watch = {}
Watch.__index = Watch

local function key_of(obj)
  local md = obj.metadata or {}
  return (md.namespace or "") .. "/" .. (md.name or "")
end

---@class vmsnap.k8s.WatchOpts: vmsnap.k8s.ListOpts
---@field resource_version? string   start after this version (default: list first, events for what exists)
---@field bookmarks? boolean         also return BOOKMARK events
---@field synced? boolean            return {type = "SYNCED"} after the initial list's events
---@field timeout_seconds? integer   server-side length of one watch request (default 300; reconnects after)
---@field idle_grace? number          a stream still open this long after timeout_seconds is taken for dead and opened again (default 30)

--- A watch: `w:next([timeout])` returns the next event {type, object}, or
--- nil, message, code. Bookmarks move its resourceVersion; a broken stream
--- reconnects from the last version seen; 410 Gone relists and returns the
--- differences as ADDED/MODIFIED/DELETED. `for ev in w:events() do` iterates
--- (raising on failures); `w:close()` (also its `<close>`).
---@return vmsnap.k8s.Watch?, string?, string?
function Client:watch(kind, opts)
  opts = opts or {}
  local r, err, reason = self:resource(kind)
  if not r then return nil, err, reason end
  return setmetatable({ client = self, r = r, opts = opts, ns = self:ns_of(r, opts),
    rv = opts.resource_version, known = {}, queue = {}, qpos = 1, buf = "", reconnects = 0, relists = 0, stalls = 0,
    need_list = opts.resource_version == nil }, Watch)
end

---@class vmsnap.k8s.Watch
---@field reconnects integer  streams re-opened after a break
---@field relists integer     lists after 410 Gone
---@field stalls integer      streams opened again because they outlived timeoutSeconds (idle_grace)

function Watch:push(ev)
  self.queue[#self.queue + 1] = ev
end

-- list everything and queue the differences from what was seen
function Watch:relist()
  local c, o = self.client, self.opts
  local seen = {}
  local rv
  local lo = { namespace = self.ns, all_namespaces = o.all_namespaces or (self.r.namespaced and not self.ns),
    label_selector = o.label_selector, field_selector = o.field_selector, limit = 500 }
  local cont
  repeat
    lo.continue = cont
    local page, err, reason, st = c:list(self.r, lo)
    if not page then return nil, err, reason, st end
    rv = rv or page.metadata.resourceVersion
    for _, obj in ipairs(page.items or {}) do
      local k = key_of(obj)
      seen[k] = true
      local old = self.known[k]
      if old == nil then
        self:push({ type = "ADDED", object = obj })
      elseif old ~= obj.metadata.resourceVersion then
        self:push({ type = "MODIFIED", object = obj })
      end
      self.known[k] = obj.metadata.resourceVersion
    end
    cont = page.metadata.continue
  until cont == nil or cont == ""
  for k in pairs(self.known) do
    if not seen[k] then
      local ns, name = k:match("^(.-)/(.*)$")
      self:push({ type = "DELETED", object = { apiVersion = self.r.api_version, kind = self.r.kind,
        metadata = { namespace = ns ~= "" and ns or nil, name = name } } })
      self.known[k] = nil
    end
  end
  self.rv = rv
  return true
end

function Watch:connect()
  local c, o = self.client, self.opts
  local q = { watch = "true", allowWatchBookmarks = "true", resourceVersion = self.rv,
    timeoutSeconds = o.timeout_seconds or 300, labelSelector = o.label_selector, fieldSelector = o.field_selector }
  local res, err, reason, st = c:request({ path = path_for(self.r, self.ns), query = q, stream = true })
  if not res then return nil, err, reason, st end
  self.res = res
  self.buf, self.bpos, self.parts = "", 1, nil
  -- the server ends the request after timeoutSeconds: a stream open well
  -- past that is a peer that hangs (a half-open connection, a proxy that
  -- stopped passing bytes), and is opened again from the last version seen
  self.stream_deadline = task.now() + q.timeoutSeconds + (o.idle_grace or 30)
  return true
end

function Watch:drop_stream()
  if self.res then self.res:close() end
  self.res = nil
  self.buf, self.bpos, self.parts = "", 1, nil
end

--- The next event, or nil, message, code ("TIMEOUT" when none came in time).
---@param timeout? number
function Watch:next(timeout)
  if self.closed then return nil, "watch closed", "CLOSED" end
  local until_t = timeout and (task.now() + timeout)
  while true do
    if self.qpos <= #self.queue then
      local ev = self.queue[self.qpos]
      self.queue[self.qpos] = nil
      self.qpos = self.qpos + 1
      if self.qpos > #self.queue then self.queue, self.qpos = {}, 1 end
      return ev
    end
    if self.need_list then
      local ok, err, reason, st = self:relist()
      if not ok then return nil, err, reason, st end
      self.need_list = false
      if self.opts.synced and not self.synced_sent then
        self.synced_sent = true
        self:push({ type = "SYNCED" }) -- after the first list only
      end
    elseif not self.res then
      local ok, err, reason, st = self:connect()
      if not ok then
        if reason == "Gone" or reason == "Expired" then
          self.need_list = true
          self.relists = self.relists + 1
        else
          return nil, err, reason, st
        end
      end
    else
      -- lines are read from a position in the buffer (cutting the buffer
      -- for every line made a burst of events quadratic)
      local pos = self.bpos or 1
      local nl = self.buf:find("\n", pos, true)
      if nl then
        local line = self.buf:sub(pos, nl - 1)
        self.bpos = nl + 1
        local ev = json.decode(line)
        if type(ev) == "table" and type(ev.object) == "table" then
          local t, obj = ev.type, ev.object
          if t == "ERROR" then
            self:drop_stream()
            if obj.code == 410 then
              self.need_list = true
              self.relists = self.relists + 1
            else
              return nil, obj.message or "watch error", obj.reason or "ERROR", obj
            end
          elseif t ~= "BOOKMARK" and (type(obj.metadata) ~= "table" or type(obj.metadata.name) ~= "string"
              or (self.r.kind and obj.kind ~= nil and obj.kind ~= self.r.kind)) then
            -- not an object of this watch: the stream is garbled, and what
            -- it should have said is unknown; list again
            self:drop_stream()
            self.need_list = true
            self.relists = self.relists + 1
          else
            local rv = obj.metadata and obj.metadata.resourceVersion
            if rv and rv ~= "" then self.rv = rv end
            if t == "BOOKMARK" then
              if self.opts.bookmarks then return ev end
            else
              if t == "DELETED" then self.known[key_of(obj)] = nil
              else self.known[key_of(obj)] = rv end
              return ev
            end
          end
        end
      else
        local now = task.now()
        local wait = until_t and (until_t - now) or nil
        if wait and wait <= 0 then return nil, "no watch event within the timeout", "TIMEOUT" end
        local left = self.stream_deadline - now
        local chunk, err, code
        if left > 0 then chunk, err, code = self.res:read(wait and math.min(wait, left) or left) end
        if left <= 0 or (not chunk and code == "TIMEOUT" and not (wait and wait <= left)) then
          err, code = "the watch stream outlived its timeoutSeconds: taken for dead", "STALLED"
        end
        if chunk then
          if not chunk:find("\n", 1, true) then
            -- a long event in many pieces: joined once its end has come
            local parts = self.parts or {}
            parts[#parts + 1] = chunk
            self.parts = parts
          else
            local parts = self.parts
            self.parts = nil
            self.buf = self.buf:sub(pos) .. (parts and table.concat(parts) or "") .. chunk
            self.bpos = 1
          end
        elseif err and code == "TIMEOUT" and wait then
          return nil, "no watch event within the timeout", "TIMEOUT"
        else
          -- the stream ended or broke: reconnect from the last version seen
          self:drop_stream()
          self.reconnects = self.reconnects + 1
          if code == "STALLED" then self.stalls = self.stalls + 1 end
          if err then task.sleep(backoff(math.min(self.reconnects, 5))) end
        end
      end
    end
  end
end

--- Iterate over events; a failure raises a vmsnap.errors object.
function Watch:events(timeout)
  return function()
    local ev, err, code = self:next(timeout)
    if not ev then
      if code == "TIMEOUT" then return nil end
      error(errors.new(code or "ERROR", err), 2)
    end
    return ev
  end
end

function Watch:close()
  self.closed = true
  self:drop_stream()
end
Watch.__close = Watch.close

-- ------------------------------------------------------------ wait_for

--- Wait until predicate(obj) is true for the named object (obj is nil while
--- it does not exist, so `function(o) return o == nil end` waits for its
--- deletion). Returns the object (or true after a deletion), or nil,
--- message, "TIMEOUT". Also `c:wait_for(obj, predicate, timeout)` for an
--- object at hand (its apiVersion, kind, namespace and name).
---@param kind string|table
---@param name string
---@param predicate fun(obj: table?): boolean
---@param opts? {namespace?: string, timeout?: number}
function Client:wait_for(kind, name, predicate, opts)
  if type(kind) == "table" and kind.metadata and type(name) == "function" then
    local obj, timeout = kind, predicate
    return self:wait_for(obj, obj.metadata.name, name,
      { namespace = obj.metadata.namespace, timeout = type(timeout) == "table" and timeout.timeout or timeout })
  end
  opts = opts or {}
  check_name(name, "wait_for")
  local timeout = opts.timeout or 30
  local until_t = task.now() + timeout
  local w, err, reason = self:watch(kind, { namespace = opts.namespace, field_selector = "metadata.name=" .. name,
    synced = true })
  if not w then return nil, err, reason end
  local _ <close> = w
  local cur
  while true do
    local ev, e2, code, st = w:next(until_t - task.now())
    if not ev then
      if code == "TIMEOUT" then
        return nil, ("timed out after %gs waiting for %s/%s"):format(timeout, w.r.plural, name), "TIMEOUT"
      end
      return nil, e2, code, st
    end
    if ev.type == "ADDED" or ev.type == "MODIFIED" then
      cur = ev.object
    elseif ev.type == "DELETED" then
      cur = nil
    end
    if ev.type ~= "BOOKMARK" and (ev.type ~= "SYNCED" or cur == nil) then
      if predicate(cur) then return cur or true end
    end
  end
end

M.Client = Client
M.Watch = Watch
M.informer = function(client, kind, opts)
  return require("vmsnap.k8s.informer").new(client, kind, opts)
end

--- An informer (list + watch into a local cache with indexes); see vmsnap.k8s.informer.
function Client:informer(kind, opts)
  return require("vmsnap.k8s.informer").new(self, kind, opts)
end

return M
