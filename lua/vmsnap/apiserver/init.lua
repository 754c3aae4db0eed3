--- vmsnap.apiserver: an embedded Kubernetes-compatible API server.
---
--- HTTP is `vmsnap.core.httpd` (libmicrohttpd on the loop), storage is
--- `vmsnap.apiserver.store` (SQLite, WAL), and everything in between is here:
--- routing, discovery, OpenAPI, CRUD with the API's concurrency and
--- deletion rules, patches, server-side apply, Tables, watches, admission,
--- garbage collection and namespace lifecycle. See docs/apiserver.md.
---
---     local apiserver = require("vmsnap.apiserver")
---     local srv = assert(apiserver.new{ data = "/tmp/state", port = 0 })
---     srv:admission("VirtualDisk", function(op, new, old, req) ... end)
---     srv:serve()          -- runs until srv:close()
local httpd = require("vmsnap.core.httpd")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local fs = require("vmsnap.fs")
local pki = require("vmsnap.apiserver.pki")
local rbac = require("vmsnap.apiserver.rbac")
local vtime = require("vmsnap.time")
local store_mod = require("vmsnap.apiserver.store")
local registry = require("vmsnap.apiserver.registry")
local schema = require("vmsnap.apiserver.schema")
local patch = require("vmsnap.apiserver.patch")
local watch = require("vmsnap.apiserver.watch")

local M = {}
local Server = {}
Server.__index = Server

local null = json.null
local copy = schema.copy
local VERSION = { major = "1", minor = "32", gitVersion = "v1.32.0", gitCommit = "vmsnap",
  gitTreeState = "clean", buildDate = "2026-11-24T00:00:00Z", goVersion = "go1.23.4",
  compiler = "gc", platform = "linux/amd64" }

-- ------------------------------------------------------------ helpers

local now_text = require("vmsnap.time").format

local function uuid()
  local r = math.random
  return ("%08x-%04x-4%03x-%04x-%012x"):format(r(0, 0xffffffff), r(0, 0xffff), r(0, 0xfff),
    0x8000 | r(0, 0x3fff), r(0, 0xffffffffffff))
end

local ALNUM = "bcdfghjklmnpqrstvwxz2456789"
local function random_suffix()
  local t = {}
  for i = 1, 5 do
    local k = math.random(#ALNUM)
    t[i] = ALNUM:sub(k, k)
  end
  return table.concat(t)
end

local base64 = require("vmsnap.base64").encode
M.base64 = base64

local SUBDOMAIN_MSG = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
local LABEL_MSG = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"

-- the shape of an RFC 1123 label, whatever its length
local function label_shape(s)
  return s:match("^[a-z0-9]$") ~= nil or s:match("^[a-z0-9][-a-z0-9]*[a-z0-9]$") ~= nil
end

-- a DNS subdomain as Kubernetes checks one: at most 253 characters, labels
-- of the label shape joined by dots (no per-label length limit)
local function subdomain_shape(s)
  if #s == 0 then return false end
  for part in (s .. "."):gmatch("(.-)%.") do
    if not label_shape(part) then return false end
  end
  return true
end

local function is_subdomain(s)
  return #s <= 253 and subdomain_shape(s)
end
M.is_subdomain = is_subdomain

local function group_resource(r)
  if r.group == "" then return r.plural end
  return r.plural .. "." .. r.group
end

local function kind_group(r)
  if r.group == "" then return r.kind end
  return r.kind .. "." .. r.group
end

-- ------------------------------------------------------------ errors

local HTTP_REASON = { [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
  [405] = "MethodNotAllowed", [406] = "NotAcceptable", [409] = "Conflict", [410] = "Gone",
  [413] = "RequestEntityTooLarge", [415] = "UnsupportedMediaType", [422] = "Invalid", [500] = "InternalError" }

--- A Status error value (raised through handlers, answered by dispatch).
local function fail(code, reason, message, details)
  error({ status = { kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
    message = message, reason = reason or HTTP_REASON[code], code = code, details = details } }, 0)
end
M.fail = fail

local function not_found(r, name)
  fail(404, "NotFound", ('%s "%s" not found'):format(group_resource(r), name),
    { name = name, group = r.group, kind = r.plural })
end

local function invalid(r, name, causes)
  local parts = {}
  local dc = json.array()
  for i, c in ipairs(causes) do
    parts[i] = (c.field and c.field ~= "" and (c.field .. ": ") or "") .. c.message
    dc[i] = { reason = c.reason or "FieldValueInvalid", message = c.message, field = c.field }
  end
  local list = #parts == 1 and parts[1] or ("[" .. table.concat(parts, ", ") .. "]")
  fail(422, "Invalid", ('%s "%s" is invalid: %s'):format(kind_group(r), name or "", list),
    { name = name, group = r.group, kind = r.kind, causes = dc })
end
M.invalid = invalid

local function conflict(r, name, why)
  fail(409, "Conflict", ('Operation cannot be fulfilled on %s "%s": %s'):format(group_resource(r), name, why),
    { name = name, group = r.group, kind = r.plural })
end

-- ------------------------------------------------------------ server

--- Create a server. opts: data (directory, required), host ("127.0.0.1"),
--- port (0 = any free port), token, tls_cert/tls_key/client_ca/tls_ca (PEM
--- file paths; tls_ca is the server certificate's CA, for kubeconfigs), crds (directories of CRD YAML to install), history (revisions of
--- watch history kept), event_ttl (seconds, default 3600), max_body, and the
--- connection limits of vmsnap.core.httpd: idle_timeout, header_timeout,
--- max_connections, max_connections_per_ip (docs/apiserver.md, "Limits").
function M.new(opts)
  assert(type(opts) == "table" and type(opts.data) == "string", "apiserver.new: opts.data is required")
  local ok, err, code = fs.mkdir_p(opts.data)
  if not ok then return nil, err, code end
  local st
  st, err, code = store_mod.open(opts.data .. "/state.db", { history = opts.history })
  if not st then return nil, err, code end
  local self = setmetatable({
    opts = opts, store = st, reg = registry.new(), admit = {}, warnings_for = {},
    event_ttl = opts.event_ttl or 3600, kicks = {}, stopping = false,
    gone = {},      -- uids deleted since the last garbage collection round
    finishing = {}, -- owners waiting for foreground deletion or orphaning
  }, Server)
  self.watchers = watch.new(self)
  -- /metrics: the requests as Kubernetes' API server counts them
  self.metrics = opts.metrics or require("vmsnap.metrics").registry()
  self.m_requests = self.metrics:counter("apiserver_request_total",
    "Counter of apiserver requests broken out for each verb, API group, version, resource, subresource and HTTP response code.",
    { "verb", "group", "version", "resource", "subresource", "code" })
  self.m_duration = self.metrics:histogram("apiserver_request_duration_seconds",
    "Response latency distribution in seconds for each verb, group, version, resource and subresource.",
    { "verb", "group", "version", "resource", "subresource" },
    { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 })
  self.metrics:collect(function(reg)
    local g = reg:gauge("apiserver_storage_objects", "Number of stored objects at the time of last check split by kind.",
      { "resource" })
    g:reset()
    local seen = {}
    for _, r in ipairs(self.reg.list) do
      if not seen[r.key] and not r.review then
        seen[r.key] = true
        local n = self.store:count(r.key)
        if n and n > 0 then g:set({ r.plural .. (r.group ~= "" and ("." .. r.group) or "") }, n) end
      end
    end
    reg:gauge("apiserver_registered_watchers", "Number of currently registered watchers.", {})
      :set({}, self.watchers.n)
    -- the listener's connection limits (docs/apiserver.md, Limits)
    local hs = self.http and self.http:stats()
    if hs then
      reg:gauge("vmsnap_apiserver_connections", "Open connections.", {}):set({}, hs.connections)
      reg:gauge("vmsnap_apiserver_max_connections", "The connection limit (--max-connections).", {})
        :set({}, hs.max_connections)
      reg:gauge("vmsnap_apiserver_header_timeouts", "Connections cut since the start for a request header not read in time.", {})
        :set({}, hs.header_timeouts)
    end
  end)
  local function read(path)
    if not path then return nil end
    local s, e = fs.read_file(path)
    if not s then error(e, 0) end
    return s
  end
  local okr, tls = pcall(function()
    return { cert = read(opts.tls_cert), key = read(opts.tls_key), ca = read(opts.client_ca),
      server_ca = read(opts.tls_ca) }
  end)
  if not okr then st:close(); return nil, tls, "ENOENT" end
  self.tls = tls
  if opts.token_file then
    local text, terr = fs.read_file(opts.token_file)
    local users, perr
    if text then users, perr = rbac.parse_token_file(text, opts.token_file) end
    if not users then
      st:close()
      return nil, "--token-file: " .. (perr or (opts.token_file .. ": " .. tostring(terr))), "EINVAL"
    end
    self.token_users = users
  end
  -- serve stored CRDs, then install the given ones
  for _, row in ipairs(st:page("apiextensions.k8s.io/customresourcedefinitions", nil, "", "", 1e9)) do
    local crd = json.decode(row[3])
    if crd and #registry.check_crd(crd) == 0 then self.reg:add_crd(crd) end
  end
  self:ensure_namespaces()
  for _, dir in ipairs(opts.crds or {}) do
    local okc, e = self:install_crds(dir)
    if not okc then st:close(); return nil, e, "INVALID" end
  end
  require("vmsnap.apiserver.admission").register_defaults(self)
  if opts.platform_subresources ~= false then
    require("vmsnap.platform.freeze").register(self)
  end
  return self
end

--- Serve a subresource with a Lua function, at
--- /apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME/SUB (GROUP may differ from the
--- resource's own, as for subresources.virtualization.deckhouse.io).
--- fn(S, call) runs in a task of its own (it may wait); call = {method, namespace,
--- name, body (decoded JSON or nil), object (the stored object)}. It returns
--- status, answer (a table, encoded as JSON), or raises through apiserver.fail.
---@param group string
---@param version string
---@param plural string   the resource's plural (the object must exist)
---@param sub string
---@param fn function
function Server:subresource(group, version, plural, sub, fn)
  self.subs = self.subs or {}
  self.subs[group .. "/" .. version .. "/" .. plural .. "/" .. sub] = fn
end

--- Register an admission function for a kind: fn(op, new, old, req) where
--- op is "CREATE", "UPDATE" or "DELETE"; it returns nothing to allow, or
--- `nil, causes` (a list of {field, message[, reason]}) or `nil, message` to
--- deny (422 Invalid), and may call req.warn(text) to add a Warning header.
function Server:admission(kind, fn)
  local list = self.admit[kind]
  if not list then list = {}; self.admit[kind] = list end
  list[#list + 1] = fn
end

-- ------------------------------------------------------------ identities

--- The administrator of the generated kubeconfig (system:masters).
function Server:admin_user()
  if not self.admin then self.admin = rbac.user(self.opts.admin_user or "vmsnap-admin", nil, { rbac.MASTERS }) end
  return self.admin
end

--- The RBAC objects as they are now (read again after a write of one).
function Server:rbac_policy()
  if not self.rbac then self.rbac = rbac.policy(self.store) end
  return self.rbac
end

local SA_TOKENS = "/pki/serviceaccount-tokens"

-- the ServiceAccount tokens issued and not expired, kept in DATA/pki
function Server:sa_tokens()
  if not self.issued then
    local text = fs.read_file(self.opts.data .. SA_TOKENS)
    local t = text and json.decode(text)
    self.issued = type(t) == "table" and t or {}
  end
  return self.issued
end

--- A new token of ServiceAccount sa, valid for secs; returns it and when
--- it expires (seconds since the epoch).
function Server:issue_token(sa, secs)
  local tokens, now = self:sa_tokens(), vtime.now()
  for t, e in pairs(tokens) do
    if type(e) ~= "table" or (tonumber(e.exp) or 0) <= now then tokens[t] = nil end
  end
  local token = "vmsnap-sa." .. pki.random_hex()
  local exp = math.floor(now + secs)
  tokens[token] = { namespace = sa.metadata.namespace, name = sa.metadata.name, uid = sa.metadata.uid, exp = exp }
  assert(fs.mkdir_p(self.opts.data .. "/pki", 448))
  assert(fs.write_atomic(self.opts.data .. SA_TOKENS, json.encode(tokens), { mode = 384 }))
  return token, exp
end

--- The user of bearer token t other than the administrator's: a
--- --token-file user, or the ServiceAccount a token was issued to (while
--- it is not expired and that account, the same uid, exists); else nil.
function Server:token_user(t)
  local u = self.token_users and self.token_users[t]
  if u then return u end
  local e = t:sub(1, 10) == "vmsnap-sa." and self:sa_tokens()[t]
  if type(e) ~= "table" or (tonumber(e.exp) or 0) <= vtime.now() then return nil end
  local sa = self.store:get("/serviceaccounts", e.namespace, e.name)
  if not sa or sa.metadata.uid ~= e.uid then return nil end
  return rbac.service_account_user(e.namespace, e.name, e.uid)
end

function Server:ensure_namespaces()
  local r = self.reg:find("", "v1", "namespaces")
  for _, ns in ipairs({ "default", "kube-system", "kube-public", "kube-node-lease" }) do
    if not self.store:get_raw(r.key, "", ns) then
      self:create_object(r, nil, { apiVersion = "v1", kind = "Namespace", metadata = { name = ns } }, {})
    end
  end
end

--- Create or update the CRDs in the YAML files of a directory.
function Server:install_crds(dir)
  local files, lerr = fs.list(dir)
  if not files then return nil, lerr end
  local r = self.reg:find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
  for _, f in ipairs(files) do
    if f:match("%.ya?ml$") then
      local text, rerr = fs.read_file(dir .. "/" .. f)
      if not text then return nil, rerr end
      local docs, err = yaml.load_all(text)
      if not docs then return nil, dir .. "/" .. f .. ": " .. tostring(err) end
      for _, crd in ipairs(docs) do
        if type(crd) == "table" and crd.kind == "CustomResourceDefinition" then
          local ok, e = pcall(function()
            local old = self.store:get(r.key, "", crd.metadata.name)
            if old then
              local new = copy(old)
              new.spec = crd.spec
              new.metadata.labels = crd.metadata.labels
              new.metadata.annotations = crd.metadata.annotations
              if not patch.equal(new.spec, old.spec) then
                self:update_object(r, nil, new, old, { manager = "vmsnap" })
              end
            else
              self:create_object(r, nil, crd, { manager = "vmsnap" })
            end
          end)
          if not ok then
            return nil, dir .. "/" .. f .. ": " .. (type(e) == "table" and e.status and e.status.message or tostring(e))
          end
        end
      end
    end
  end
  return true
end

-- ------------------------------------------------------------ write path

--- Persist and deliver one change; returns the stored JSON text.
function Server:commit(r, ns, name, typ, obj, old)
  local _, body = self.store:write(r.key, ns or "", name, typ, obj, old)
  self.watchers:emit(r.key, typ, obj, old, body)
  if r.group == rbac.GROUP then self.rbac = nil end
  if r.key == "apiextensions.k8s.io/customresourcedefinitions" then
    if typ == "DELETED" then
      local served = self.reg:by_key(obj.spec.group .. "/" .. obj.spec.names.plural)[1]
      self.reg:remove_crd(name)
      if served then self:drop_all(served) end
    else
      self.reg:add_crd(obj)
    end
  end
  if typ == "DELETED" then
    self.gone[#self.gone + 1] = obj.metadata.uid
    self:kick("gc")
  end
  return body
end

--- Delete every stored object of a resource at once (its CRD is gone).
function Server:drop_all(r)
  while true do
    local rows = self.store:page(r.key, nil, "", "", 1000)
    if #rows == 0 then break end
    for _, row in ipairs(rows) do
      local obj = json.decode(row[3])
      if obj then self:commit(r, row[1] ~= "" and row[1] or nil, row[2], "DELETED", obj, obj) end
    end
  end
end

--- Remember an owner whose foreground deletion or orphaning is pending.
function Server:finish_later(res, ns, name)
  self.finishing[res .. "\0" .. (ns or "") .. "\0" .. name] = { res = res, ns = ns or "", name = name }
end

function Server:kick(what)
  self.kicks[what] = true
  if self.controller_wake then self.controller_wake() end
end

local function check_meta_name(r, obj, causes)
  local name = obj.metadata.name
  if type(name) ~= "string" or name == "" then
    causes[#causes + 1] = { reason = "FieldValueRequired", field = "metadata.name",
      message = "Required value: name or generateName is required" }
    return
  end
  local max, shape_ok, shape_msg = 253, subdomain_shape(name), SUBDOMAIN_MSG
  if r.plural == "namespaces" then max, shape_ok, shape_msg = 63, label_shape(name), LABEL_MSG end
  if #name > max then
    causes[#causes + 1] = { field = "metadata.name",
      message = ('Invalid value: "%s": must be no more than %d characters'):format(name, max) }
  end
  if not shape_ok then
    causes[#causes + 1] = { field = "metadata.name", message = ('Invalid value: "%s": %s'):format(name, shape_msg) }
  end
end

local function check_meta_maps(obj, causes)
  local md = obj.metadata
  for _, f in ipairs({ "labels", "annotations" }) do
    local m = md[f]
    if m ~= nil and m ~= null then
      if type(m) ~= "table" then
        causes[#causes + 1] = { field = "metadata." .. f, message = "Invalid value: must be a map of strings" }
      else
        for k, v in pairs(m) do
          if type(v) ~= "string" then
            causes[#causes + 1] = { field = ("metadata.%s.%s"):format(f, k),
              message = ("Invalid value: %s: must be a string"):format(json.encode(v)) }
          end
        end
      end
    elseif m == null then
      md[f] = nil
    end
  end
  if md.finalizers == null then md.finalizers = nil end
end

-- The types ObjectMeta's fields decode to in Kubernetes: a value of another
-- type is the decoder's 400, before anything reads it.
local META_STRINGS = { "name", "generateName", "namespace", "uid", "resourceVersion",
  "creationTimestamp", "deletionTimestamp", "selfLink" }

local META_INTS = { "generation", "deletionGracePeriodSeconds" }

local function refuse_meta(r, field, v, want)
  fail(400, "BadRequest", ('%s in version "%s" cannot be handled as a %s: json: cannot unmarshal %s into Go struct field ObjectMeta.metadata.%s of type %s')
    :format(r.kind, r.version, r.kind, type(v) == "table" and "object" or type(v), field, want))
end

local function check_meta_types(r, md)
  for _, f in ipairs(META_STRINGS) do
    local v = md[f]
    if v ~= nil and v ~= null and type(v) ~= "string" then refuse_meta(r, f, v, "string") end
  end
  local fins = md.finalizers
  if fins ~= nil and fins ~= null then
    if type(fins) ~= "table" then refuse_meta(r, "finalizers", fins, "[]string") end
    for _, f in pairs(fins) do
      if type(f) ~= "string" then refuse_meta(r, "finalizers", f, "string") end
    end
  end
  local refs = md.ownerReferences
  if refs ~= nil and refs ~= null then
    if type(refs) ~= "table" then refuse_meta(r, "ownerReferences", refs, "[]v1.OwnerReference") end
    for _, ref in pairs(refs) do
      if type(ref) ~= "table" then refuse_meta(r, "ownerReferences", ref, "v1.OwnerReference") end
    end
  end
  for _, f in ipairs(META_INTS) do
    local v = md[f]
    if v ~= nil and v ~= null and math.type(v) ~= "integer" then refuse_meta(r, f, v, "int64") end
  end
end

-- type-specific defaulting of built-ins
local function builtin_defaults(r, obj, old)
  if r.key == "/secrets" then
    if obj.type == nil then obj.type = old and old.type or "Opaque" end
    if type(obj.stringData) == "table" then
      obj.data = obj.data or {}
      for k, v in pairs(obj.stringData) do obj.data[k] = base64(tostring(v)) end
      obj.stringData = nil
    end
  elseif r.key == "/namespaces" then
    obj.spec = obj.spec or {}
    if obj.spec.finalizers == nil then obj.spec.finalizers = json.array({ "kubernetes" }) end
    if not old then obj.status = { phase = "Active" } end
  elseif r.key == "/persistentvolumeclaims" or r.key == "/persistentvolumes" then
    if not old and (obj.status == nil or obj.status.phase == nil) then
      obj.status = obj.status or {}
      obj.status.phase = "Pending"
    end
  elseif r.key == "apiextensions.k8s.io/customresourcedefinitions" then
    local spec = obj.spec or {}
    local names = spec.names or {}
    local stored = json.array()
    for _, v in ipairs(spec.versions or {}) do
      if v.storage then stored[#stored + 1] = v.name end
    end
    obj.status = { acceptedNames = names, storedVersions = stored,
      conditions = json.array({
        { type = "NamesAccepted", status = "True", reason = "NoConflicts", message = "no conflicts found",
          lastTransitionTime = now_text() },
        { type = "Established", status = "True", reason = "InitialNamesAccepted",
          message = "the initial names have been accepted", lastTransitionTime = now_text() } }) }
  end
end

-- Run defaulting, schema validation and admission; raises Invalid/BadRequest.
function Server:validate(r, op, obj, old, req)
  local causes = {}
  check_meta_name(r, obj, causes)
  check_meta_maps(obj, causes)
  builtin_defaults(r, obj, old)
  if r.key == "apiextensions.k8s.io/customresourcedefinitions" then
    for _, c in ipairs(registry.check_crd(obj)) do causes[#causes + 1] = c end
  end
  local validation = req and req.field_validation or "Strict"
  local unknown
  local sc, un = schema.apply(r.schema, obj, { keep_unknown = false, old = old })
  unknown = un
  for _, c in ipairs(sc) do causes[#causes + 1] = c end
  if #unknown > 0 then
    if validation == "Strict" and #causes == 0 then
      local parts = {}
      for i, p in ipairs(unknown) do parts[i] = ('unknown field "%s"'):format(p) end
      fail(400, "BadRequest", ('%s in version "%s" cannot be handled as a %s: strict decoding error: %s')
        :format(r.kind, r.version, r.kind, table.concat(parts, ", ")))
    elseif validation == "Warn" and req then
      for _, p in ipairs(unknown) do req.warn(('unknown field "%s"'):format(p)) end
    end
  end
  if #causes > 0 then invalid(r, obj.metadata.name, causes) end
  for _, fn in ipairs(self.admit[r.kind] or {}) do
    local ok, res = fn(op, obj, old, req or { warn = function() end }, self)
    if ok == nil and res ~= nil then
      if type(res) == "string" then res = { { field = "", message = res } } end
      invalid(r, obj.metadata.name, res)
    end
  end
end

local function spec_changed(r, a, b)
  for k, v in pairs(a) do
    if k ~= "metadata" and not (k == "status" and r.status) and not patch.equal(v, b[k]) then return true end
  end
  for k in pairs(b) do
    if k ~= "metadata" and not (k == "status" and r.status) and a[k] == nil then return true end
  end
  return false
end

--- Create obj (already decoded); returns the stored object and its JSON.
function Server:create_object(r, ns, obj, o)
  o = o or {}
  if type(obj.metadata) ~= "table" then obj.metadata = {} end
  check_meta_types(r, obj.metadata)
  local md = obj.metadata
  obj.apiVersion = r.api_version
  obj.kind = r.kind
  if r.namespaced then
    md.namespace = ns
  else
    md.namespace = nil
  end
  if (md.name == nil or md.name == "") and type(md.generateName) == "string" and md.generateName ~= "" then
    md.name = md.generateName .. random_suffix()
  end
  if r.namespaced and ns then
    local nsr = self.reg:find("", "v1", "namespaces")
    local nso = self.store:get(nsr.key, "", ns)
    if not nso then
      fail(404, "NotFound", ('namespaces "%s" not found'):format(ns), { name = ns, kind = "namespaces" })
    end
    if nso.metadata.deletionTimestamp then
      fail(403, "Forbidden", ('%s "%s" is forbidden: unable to create new content in namespace %s because it is being terminated')
        :format(group_resource(r), tostring(md.name), ns),
        { name = md.name, group = r.group, kind = r.plural,
          causes = json.array({ { reason = "NamespaceTerminating", message = ("namespace %s is being terminated"):format(ns),
            field = "metadata.namespace" } }) })
    end
  end
  if r.status and not o.keep_status then obj.status = nil end
  md.uid = uuid()
  md.creationTimestamp = now_text()
  md.resourceVersion = nil
  md.deletionTimestamp = nil
  md.deletionGracePeriodSeconds = nil
  md.managedFields = nil
  if not r.builtin or r.key == "apiextensions.k8s.io/customresourcedefinitions" then md.generation = 1 end
  self:validate(r, "CREATE", obj, nil, o.req)
  if self.store:get_raw(r.key, ns or "", md.name) then
    fail(409, "AlreadyExists", ('%s "%s" already exists'):format(group_resource(r), md.name),
      { name = md.name, group = r.group, kind = r.plural })
  end
  if o.apply then
    obj = o.apply(obj)
  else
    patch.record_update(nil, obj, o.manager or "unknown", r.api_version, now_text(), nil)
  end
  if o.dry_run then return obj, json.encode(obj) end
  local body = self:commit(r, ns, md.name, "ADDED", obj, nil)
  return obj, body
end

--- Store new as the next state of old (both decoded); handles generation,
--- the status subresource, finalizers and deletion. Returns obj, body.
function Server:update_object(r, ns, new, old, o)
  o = o or {}
  local md = new.metadata
  check_meta_types(r, md)
  local omd = old.metadata
  new.apiVersion = r.api_version
  new.kind = r.kind
  md.name = omd.name
  if r.namespaced then md.namespace = omd.namespace else md.namespace = nil end
  md.uid = omd.uid
  md.creationTimestamp = omd.creationTimestamp
  md.deletionTimestamp = omd.deletionTimestamp
  md.deletionGracePeriodSeconds = omd.deletionGracePeriodSeconds
  md.generateName = omd.generateName
  if o.sub == "status" then
    -- only status changes through /status
    local keep = copy(old)
    keep.status = new.status
    keep.metadata.managedFields = md.managedFields
    keep.metadata.resourceVersion = md.resourceVersion
    new = keep
    md = new.metadata
  elseif r.status then
    new.status = copy(old.status)
  end
  md.generation = omd.generation
  -- (through /status the rest is the stored object's copy: no spec change)
  if md.generation and o.sub ~= "status" and spec_changed(r, new, old) then md.generation = omd.generation + 1 end
  if omd.deletionTimestamp and type(md.finalizers) == "table" then
    local had = {}
    for _, f in ipairs(omd.finalizers or {}) do had[f] = true end
    for _, f in ipairs(md.finalizers) do
      if not had[f] then
        invalid(r, md.name, { { reason = "FieldValueForbidden", field = "metadata.finalizers",
          message = "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"" .. f .. "\"}" } })
      end
    end
  end
  self:validate(r, "UPDATE", new, old, o.req)
  if not o.apply then
    patch.record_update(old, new, o.manager or "unknown", r.api_version, now_text(), o.sub)
  end
  md.resourceVersion = omd.resourceVersion
  if patch.equal_ignoring_times(new, old) then
    -- nothing changed (an apply that re-applies the same fields, too)
    return old, (self.store:get_raw(r.key, ns or "", md.name))
  end
  if o.dry_run then return new, json.encode(new) end
  if md.deletionTimestamp and (md.finalizers == nil or #md.finalizers == 0) and r.key ~= "/namespaces" then
    local body = self:commit(r, ns, md.name, "DELETED", new, old)
    return new, body
  end
  local body = self:commit(r, ns, md.name, "MODIFIED", new, old)
  return new, body
end

--- Delete (or mark for deletion); returns the Status or object to answer.
function Server:delete_object(r, ns, name, o)
  o = o or {}
  local obj = self.store:get(r.key, ns or "", name)
  if not obj then not_found(r, name) end
  local md = obj.metadata
  local pre = o.preconditions
  if type(pre) == "table" then
    if pre.uid and pre.uid ~= md.uid then
      conflict(r, name, ("Precondition failed: UID in precondition: %s, UID in object meta: %s"):format(pre.uid, md.uid))
    end
    if pre.resourceVersion and pre.resourceVersion ~= md.resourceVersion then
      conflict(r, name, ("Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %s")
        :format(pre.resourceVersion, md.resourceVersion))
    end
  end
  for _, fn in ipairs(self.admit[r.kind] or {}) do
    local ok, res = fn("DELETE", nil, obj, o.req or { warn = function() end }, self)
    if ok == nil and res ~= nil then
      if type(res) == "string" then res = { { field = "", message = res } } end
      invalid(r, name, res)
    end
  end
  if r.key == "/namespaces" then
    if md.deletionTimestamp then return obj end
    local new = copy(obj)
    new.metadata.deletionTimestamp = now_text()
    new.status = new.status or {}
    new.status.phase = "Terminating"
    if o.dry_run then return new end
    self:commit(r, ns, name, "MODIFIED", new, obj)
    self:kick("namespaces")
    return new
  end
  local policy = o.propagationPolicy
  if o.orphanDependents == true and not policy then policy = "Orphan" end
  local fins = {}
  for _, f in ipairs(md.finalizers or {}) do fins[#fins + 1] = f end
  local function add_fin(f)
    for _, x in ipairs(fins) do if x == f then return end end
    fins[#fins + 1] = f
  end
  if policy == "Foreground" then add_fin("foregroundDeletion") end
  if policy == "Orphan" then add_fin("orphan") end
  if #fins > 0 then
    local new = copy(obj)
    new.metadata.finalizers = json.array(fins)
    if not md.deletionTimestamp then
      new.metadata.deletionTimestamp = now_text()
      new.metadata.deletionGracePeriodSeconds = 0
    end
    if patch.equal(new, obj) then return obj end
    if o.dry_run then return new end
    self:commit(r, ns, name, "MODIFIED", new, obj)
    if policy == "Foreground" or policy == "Orphan" then
      self:finish_later(r.key, ns, name)
      self:kick("gc")
    end
    return new
  end
  if o.dry_run then
    return { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success",
      details = { name = name, group = r.group, kind = r.plural, uid = md.uid } }
  end
  self:commit(r, ns, name, "DELETED", obj, obj)
  return { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success",
    details = { name = name, group = r.group, kind = r.plural, uid = md.uid } }
end

-- ------------------------------------------------------------ serving

--- Listen and run until close(); also starts the controllers (garbage
--- collection, namespace finalization, event TTL) and the watch sweep.
function Server:listen()
  local o = self.opts
  local srv, err, code = httpd.listen{ host = o.host or "127.0.0.1", port = o.port or 0,
    tls_cert = self.tls.cert, tls_key = self.tls.key, client_ca = self.tls.ca,
    max_body = o.max_body or (3 * 1024 * 1024), idle_timeout = o.idle_timeout,
    header_timeout = o.header_timeout, max_connections = o.max_connections,
    max_connections_per_ip = o.max_connections_per_ip }
  if not srv then return nil, err, code end
  self.http = srv
  self.port = srv:port()
  return self.port
end

function Server:serve()
  if self.closed then return true end -- closed before this task first ran
  if not self.http then
    local ok, err, code = self:listen()
    if not ok then return nil, err, code end
  end
  local handler = require("vmsnap.apiserver.handler")
  local controllers = require("vmsnap.apiserver.controllers")
  self.tasks = {
    task.spawn(controllers.run, self),
    -- the requests of this process's own clients (vmsnap.apiserver.loopback)
    task.spawn(require("vmsnap.apiserver.loopback").serve, self),
    task.spawn(function()
      local n = 0
      while not self.stopping do
        task.sleep(1)
        n = n + 1
        self.watchers:sweep(os.time(), self.store.rv, n % 10 == 0)
      end
    end),
  }
  while not self.stopping do
    local req, err, code = self.http:accept()
    if not req then
      if code == "CLOSED" then break end
      log.warn("apiserver: accept failed", { error = err })
    else
      handler.dispatch(self, req)
    end
  end
  return true
end

--- Stop serving: end watches, stop the controllers, close the listener and the store.
function Server:close()
  if self.closed then return end
  self.closed = true
  self.stopping = true
  self.watchers:close_all()
  for _, t in ipairs(self.tasks or {}) do task.cancel(t) end
  if self.controller_wake then self.controller_wake() end
  if self.http then self.http:close() end
  -- the controllers end before their store closes (a cancelled task runs on
  -- to its next wait, and one that reached the store then found it closed)
  for _, t in ipairs(self.tasks or {}) do pcall(task.wait, t, 5) end
  self.store:close()
end

--- The kubeconfig text for this server.
function Server:kubeconfig(opts)
  opts = opts or {}
  local scheme = self.tls.cert and "https" or "http"
  local server = ("%s://%s:%d"):format(scheme, opts.host or self.opts.host or "127.0.0.1", self.port)
  local cluster = { server = server }
  if self.tls.cert then
    cluster["certificate-authority-data"] = base64(self.tls.server_ca or self.tls.cert)
    cluster["tls-server-name"] = opts.tls_server_name
  end
  local user = {}
  if self.opts.token then user.token = self.opts.token end
  if opts.client_cert then
    user["client-certificate"] = opts.client_cert
    user["client-key"] = opts.client_key
  end
  local doc = {
    apiVersion = "v1", kind = "Config", ["current-context"] = "vmsnap",
    clusters = { { name = "vmsnap", cluster = cluster } },
    users = { { name = "vmsnap", user = user } },
    contexts = { { name = "vmsnap", context = { cluster = "vmsnap", user = "vmsnap", namespace = "default" } } },
    preferences = {},
  }
  return yaml.dump(doc)
end

M.Server = Server
M.VERSION = VERSION
M.group_resource = group_resource
M.not_found = not_found
M.conflict = conflict
M.now_text = now_text
return M
