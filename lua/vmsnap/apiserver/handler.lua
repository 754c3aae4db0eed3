--- vmsnap.apiserver.handler: one HTTP request of the API server — routing,
--- content negotiation and the verbs (get, list, watch, create, update,
--- patch, delete, deletecollection), answered with the API's Status errors.
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local errors = require("vmsnap.errors")
local log = require("vmsnap.log")
local api = require("vmsnap.apiserver")
local patch = require("vmsnap.apiserver.patch")
local selector = require("vmsnap.apiserver.select")
local tbl = require("vmsnap.apiserver.table")
local schema = require("vmsnap.apiserver.schema")
local registry = require("vmsnap.apiserver.registry")
local metrics = require("vmsnap.metrics")
local task = require("vmsnap.task")
local runtime = require("vmsnap.core.runtime")
local rbac = require("vmsnap.apiserver.rbac")
local vtime = require("vmsnap.time")

local M = {}
local fail = api.fail
local copy = schema.copy

local JSON = "application/json"
local TABLE_CT = "application/json;as=Table;v=v1;g=meta.k8s.io"
local AGG_CT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

local function warning_header(ctx)
  if #ctx.warnings == 0 then return nil end
  local parts = {}
  for i, w in ipairs(ctx.warnings) do
    parts[i] = '299 - "' .. w:gsub('[\\"]', "\\%0") .. '"'
  end
  return table.concat(parts, ", ")
end

-- the headers of an answer: its type, no caching, the request's warnings
local function headers(ctx, ctype, extra)
  local h = { ["Content-Type"] = ctype or JSON, ["Cache-Control"] = "no-cache, private" }
  local w = warning_header(ctx)
  if w then h["Warning"] = w end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

local function respond(req, ctx, code, body, ctype, extra)
  ctx.code = code
  req:respond(code, headers(ctx, ctype, extra), body)
end

local account, respond_items -- below

local function respond_obj(req, ctx, code, obj)
  respond(req, ctx, code, json.encode(obj))
end

local as_version = registry.as_version

-- ------------------------------------------------------------ request parsing

--- A boolean query parameter as Kubernetes reads one: absent is false, "0"
--- and "false" (any case) are false, anything else is true ("True", "1", "").
local function query_bool(v)
  if v == nil then return false end
  return not (v == "0" or v:lower() == "false")
end

local BODY_TYPES = "application/json, application/yaml, application/vnd.kubernetes.protobuf"

--- The body decoded as its Content-Type says (415 for a type that is not a
--- body type: text/plain, none at all). `as` is the patch's own media type,
--- when the body is a patch.
local function decode_body(req, ctype, as)
  ctype = ((ctype or ""):match("^[^;]*") or ""):gsub("%s", ""):lower()
  if not as and ctype ~= "application/json" and ctype ~= "application/yaml" and
      ctype ~= "application/vnd.kubernetes.protobuf" then
    fail(415, "UnsupportedMediaType", ("the body of the request was in an unknown format - accepted media types include: %s"):format(BODY_TYPES))
  end
  local body, err = req:body()
  if not body then
    fail(413, "RequestEntityTooLarge", "the request body is too large: " .. err)
  end
  if body == "" then fail(400, "BadRequest", "the request body is empty") end
  local obj
  if ctype == "application/yaml" or ctype == "application/apply-patch+yaml" then
    obj, err = yaml.load(body) -- mapping keys are read as text, as Kubernetes reads them
  elseif ctype == "application/vnd.kubernetes.protobuf" then
    obj, err = require("vmsnap.apiserver.protobuf").decode(body, api.base64)
    if not obj then fail(415, "UnsupportedMediaType", err) end
  else
    obj, err = json.decode(body)
  end
  if obj == nil then
    fail(400, "BadRequest", "the request body is not valid: " .. tostring(err))
  end
  return obj
end

local function wants_table(accept)
  return accept and accept:find("as=Table", 1, true) ~= nil
end

local function check_dry_run(args)
  local d = args.dryRun
  if d == nil or d == "" then return false end
  if d ~= "All" then
    fail(400, "BadRequest", ('Invalid value: "%s": supported values: "All"'):format(d))
  end
  return true
end

local function field_validation(args)
  local v = args.fieldValidation
  if v == nil or v == "" then return "Warn" end
  if v ~= "Strict" and v ~= "Warn" and v ~= "Ignore" then
    fail(400, "BadRequest", ('fieldValidation: Unsupported value: "%s": supported values: "Ignore", "Strict", "Warn"'):format(v))
  end
  return v
end

local function manager(args, req)
  local m = args.fieldManager
  if m and m ~= "" then
    if #m > 128 then fail(422, "Invalid", "fieldManager: Too long: may not be more than 128 bytes") end
    return m
  end
  local ua = req:header("User-Agent") or "unknown"
  return ua:match("^([^/ ]+)") or "unknown"
end

-- ------------------------------------------------------------ discovery and co

local function handle_meta(S, req, ctx, segs, accept)
  local n = #segs
  if n == 1 and (segs[1] == "version") then
    return respond_obj(req, ctx, 200, api.VERSION)
  end
  if n == 1 and (segs[1] == "healthz" or segs[1] == "readyz" or segs[1] == "livez") then
    return respond(req, ctx, 200, "ok", "text/plain; charset=utf-8")
  end
  if segs[1] == "openapi" then
    if segs[2] == "v2" and n == 2 then
      -- a document with no definitions: kubectl's client-side validation
      -- (its path for kinds it cannot map) finds nothing to check and says
      -- what the server says, `no matches for kind`; explain uses v3
      local function ld(num, str) return string.char(num << 3 | 2, #str) .. str end
      local doc = ld(1, "2.0") .. ld(2, ld(1, "vmsnap") .. ld(2, api.VERSION.gitVersion))
      if accept and accept:find("protobuf", 1, true) then
        return respond(req, ctx, 200, doc, "application/octet-stream")
      end
      return respond_obj(req, ctx, 200, { swagger = "2.0", info = { title = "vmsnap", version = api.VERSION.gitVersion },
        paths = {} })
    end
    if segs[2] == "v3" then
      local docs = S.reg:openapi()
      if n == 2 then return respond(req, ctx, 200, docs.root_text) end
      local key = table.concat(segs, "/", 3)
      local d = docs.gv[key]
      if d then
        return respond(req, ctx, 200, d.text, JSON, { ["Cache-Control"] = "public, immutable", ["Etag"] = '"' .. d.hash .. '"' })
      end
    end
    fail(404, "NotFound", "the server could not find the requested resource")
  end
  local agg = accept and accept:find("as=APIGroupDiscoveryList", 1, true) and accept:find("v=v2", 1, true)
  if n == 1 and segs[1] == "api" then
    if agg then return respond(req, ctx, 200, json.encode(S.reg:aggregated(true)), AGG_CT) end
    return respond_obj(req, ctx, 200, { kind = "APIVersions", versions = json.array({ "v1" }),
      serverAddressByClientCIDRs = json.array({ { clientCIDR = "0.0.0.0/0",
        serverAddress = ("127.0.0.1:%d"):format(S.port or 0) } }) })
  end
  if n == 1 and segs[1] == "apis" then
    if agg then return respond(req, ctx, 200, json.encode(S.reg:aggregated(false)), AGG_CT) end
    return respond_obj(req, ctx, 200, S.reg:group_list())
  end
  if n == 2 and segs[1] == "api" and segs[2] == "v1" then
    return respond_obj(req, ctx, 200, S.reg:resource_list("", "v1"))
  end
  if n == 2 and segs[1] == "apis" then
    for _, g in ipairs(S.reg:groups()) do
      if g.name == segs[2] then
        local doc = S.reg:group_doc(g)
        doc.kind, doc.apiVersion = "APIGroup", "v1"
        return respond_obj(req, ctx, 200, doc)
      end
    end
  end
  if n == 3 and segs[1] == "apis" and #S.reg:resources_of(segs[2], segs[3]) > 0 then
    return respond_obj(req, ctx, 200, S.reg:resource_list(segs[2], segs[3]))
  end
  return false
end

-- ------------------------------------------------------------ list and watch

-- the label and field matchers of a list or watch, and the object name a
-- field selector pins (metadata.name=X: looked up, not scanned; false when
-- it asks for two names at once, which nothing matches)
local function selectors(r, args)
  local labels, err = selector.parse_labels(args.labelSelector)
  if err then fail(400, "BadRequest", err) end
  local fields, equal
  fields, err, equal = selector.parse_fields(args.fieldSelector, function(f)
    return f == "metadata.name" or f == "metadata.namespace" or (r.fields and r.fields[f]) or false
  end)
  if err then fail(400, "BadRequest", err) end
  local name = equal and equal["metadata.name"]
  return labels, fields, name
end

-- the stored rows a name-pinned selection can match, by index
local function named_rows(S, r, ns, name)
  if name == false then return {} end
  return S.store:named(r.key, ns, name)
end

local function matches(obj, labels, fields)
  if labels and not labels(obj.metadata.labels) then return false end
  if fields and not fields(obj) then return false end
  return true
end

-- continue tokens: URL-safe base64 of {rv, ns, name} (no '+' to turn into a space)
local function encode_token(rv, ns, name)
  return (api.base64(json.encode({ rv = rv, ns = ns, name = name })):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

local function decode_token(tok)
  local raw = require("vmsnap.base64").decode((tok:gsub("[-_]", { ["-"] = "+", ["_"] = "/" })))
  local t = raw and json.decode(raw)
  if type(t) ~= "table" or type(t.rv) ~= "number" then return nil end
  return t
end

-- A list's body: head, the items joined by commas, tail. Over STREAM_OVER
-- bytes it is not joined (three copies of a 46 MB list peaked at 5.8x its
-- size): a stream of that length goes out, written by a task of its own in
-- parts of about STREAM_PART bytes, as fast as the client takes them (at most
-- STREAM_AHEAD bytes ahead), each part let go once written; a client that
-- takes nothing for STREAM_STALL seconds is cut off. The items were
-- read at one resourceVersion before the first byte goes out.
local STREAM_OVER, STREAM_PART, STREAM_AHEAD, STREAM_STALL, STREAM_COLLECT = 1 << 20, 512 << 10, 4 << 20, 60, 8 << 20
function respond_items(S, req, ctx, head, items, tail)
  local n = #items
  local total = #head + #tail + math.max(0, n - 1)
  for i = 1, n do total = total + #items[i] end
  if total <= STREAM_OVER then
    return respond(req, ctx, 200, head .. table.concat(items, ",") .. tail)
  end
  ctx.code = 200
  if not req:stream(200, headers(ctx), total) then return end
  local t0 = ctx.t0 or task.now()
  ctx.deferred = true
  task.spawn(function()
    local fine, err = pcall(function()
      local ok = req:write(head)
      local i, since_gc = 1, 0
      while ok and i <= n do
        -- a part of about STREAM_PART bytes (one item at least: an item is at
        -- most the body limit, so a part never nears the stream's 16 MB cap)
        local j, size = i, #items[i]
        while j < n and size + #items[j + 1] <= STREAM_PART do
          j = j + 1
          size = size + #items[j]
        end
        local part = table.concat(items, ",", i, j)
        for k = i, j do items[k] = false end
        ok = req:write(part) and (j == n or req:write(","))
        since_gc = since_gc + #part
        part = nil
        i = j + 1
        -- what was written is garbage: collected, and the memory given back,
        -- as it goes (at the collector's own pace, and with the C heap kept,
        -- the process grew to twice the body)
        if since_gc > STREAM_COLLECT then
          runtime.trim()
          since_gc = 0
        end
        local pause, pending, stuck = 0.001, req:pending(), task.now()
        while ok and pending > STREAM_AHEAD do
          -- a client that takes nothing for STREAM_STALL seconds is cut off
          if req:closed() or task.now() - stuck > STREAM_STALL then ok = false break end
          task.sleep(pause)
          pause = math.min(0.05, pause * 2)
          local now_pending = req:pending()
          if now_pending < pending then stuck = task.now() end
          pending = now_pending
        end
      end
      if ok then req:write(tail) end
    end)
    -- whatever happened (a cancellation too), the stream ends and is counted
    req:finish()
    ctx.deferred = false
    account(S, ctx, t0)
    items = nil
    runtime.trim() -- the memory back to the system
    if not fine then error(err, 0) end
  end)
end

local function list(S, req, ctx, r, ns, args, accept)
  local labels, fields, name = selectors(r, args)
  local limit = 0
  if args.limit ~= nil and args.limit ~= "" then
    limit = math.tointeger(tonumber(args.limit))
    if not limit or not args.limit:match("^[+-]?%d+$") then
      fail(400, "BadRequest", ('invalid value for limit: "%s": must be an integer from -9223372036854775808 to 9223372036854775807'):format(args.limit))
    end
    if limit < 0 then limit = 0 end
  end
  local rv = S.store.rv
  local after_ns, after_name = "", ""
  if args.continue and args.continue ~= "" then
    local t = decode_token(args.continue)
    if not t then fail(400, "BadRequest", "continue key is not valid: illegal base64 data") end
    if t.rv < S.store.compacted then
      fail(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")
    end
    rv, after_ns, after_name = t.rv, t.ns, t.name
  end
  local want_table = wants_table(accept)
  local fast = not labels and not fields and not want_table
  local items, objs = {}, {}
  local cont
  local page = limit > 0 and limit or 1000
  -- a name pinned by the field selector: the few rows of that name, by
  -- index (one at most in a namespace), unless they must be paged
  local pinned = name ~= nil and (ns ~= nil or limit == 0) and after_name == ""
  while true do
    local rows = pinned and named_rows(S, r, ns, name) or S.store:page(r.key, ns, after_ns, after_name, page)
    for _, row in ipairs(rows) do
      after_ns, after_name = row[1], row[2]
      if fast then
        items[#items + 1] = as_version(r, row[3])
      else
        local o = json.decode(row[3])
        if o and matches(o, labels, fields) then
          if r.multi then o.apiVersion = r.api_version end
          objs[#objs + 1] = o
          items[#items + 1] = as_version(r, row[3])
        end
      end
      if limit > 0 and #items >= limit then break end
    end
    if limit > 0 and #items >= limit then
      -- more to come?
      if not pinned and #S.store:page(r.key, ns, after_ns, after_name, 1) > 0 then
        cont = encode_token(rv, after_ns, after_name)
      end
      break
    end
    if pinned or #rows < page then break end
  end
  local meta = { resourceVersion = tostring(rv), continue = cont }
  if want_table then
    return respond(req, ctx, 200, json.encode(tbl.table(r, objs, meta, os.time(), false, args.includeObject)), TABLE_CT)
  end
  local head = json.encode({ apiVersion = r.api_version, kind = r.list_kind, metadata = meta })
  -- splice the stored JSON texts in without decoding them
  return respond_items(S, req, ctx, head:sub(1, -2) .. ',"items":[', items, "]}")
end

local function watch_stream(S, req, ctx, r, ns, args, accept)
  local labels, fields, name = selectors(r, args)
  local timeout = tonumber(args.timeoutSeconds)
  if not timeout or timeout <= 0 then timeout = 1800 + math.random(0, 1800) end
  local w = { req = req, res = r, ns = ns, labels = labels, fields = fields,
    table = wants_table(accept), include = args.includeObject, bookmarks = query_bool(args.allowWatchBookmarks),
    deadline = os.time() + timeout }
  local rv = args.resourceVersion
  local send_initial = query_bool(args.sendInitialEvents)
  if send_initial or rv == nil or rv == "" or rv == "0" then
    local initial = {}
    if name ~= nil then
      for _, row in ipairs(named_rows(S, r, ns, name)) do
        local o = json.decode(row[3])
        if o and matches(o, labels, fields) then initial[#initial + 1] = o end
      end
    else
      S.store:each(r.key, ns, function(_, _, _, o)
        if matches(o, labels, fields) then initial[#initial + 1] = o end
      end, true)
    end
    w.initial_end = send_initial and w.bookmarks
    return S.watchers:start(w, initial, nil, S.store.rv)
  end
  local n = tonumber(rv)
  if not n then fail(400, "BadRequest", ('resourceVersion: Invalid value: "%s": must be an integer'):format(rv)) end
  if n < S.store.compacted then
    -- the apiserver reports this inside a 200 stream
    local ok = req:stream(200, { ["Content-Type"] = w.table and TABLE_CT or JSON })
    if ok then
      req:write(json.encode({ type = "ERROR", object = { kind = "Status", apiVersion = "v1", metadata = {},
        status = "Failure", message = ("too old resource version: %d (%d)"):format(n, S.store.compacted + 1),
        reason = "Expired", code = 410 } }) .. "\n")
      req:finish()
    end
    return
  end
  local history = n < S.store.rv and S.store:since(r.key, n) or {}
  if ns then
    local kept = {}
    for _, row in ipairs(history) do
      if row[2] == ns then kept[#kept + 1] = row end
    end
    history = kept
  end
  return S.watchers:start(w, nil, history, S.store.rv)
end

-- ------------------------------------------------------------ reviews

-- a decoded JSON object (not an array, no keys but strings)
local function is_object(v)
  if type(v) ~= "table" or json.is_array(v) then return false end
  for k in pairs(v) do
    if type(k) ~= "string" then return false end
  end
  return true
end

--- SelfSubjectReview, SelfSubjectAccessReview, SelfSubjectRulesReview:
--- answered from the request and the RBAC objects, never stored.
local function review(S, req, ctx, r)
  local obj = decode_body(req, req:header("Content-Type"))
  if not is_object(obj) then fail(400, "BadRequest", "the body must be a JSON object") end
  obj.apiVersion, obj.kind = r.api_version, r.kind
  obj.metadata = type(obj.metadata) == "table" and obj.metadata or {}
  obj.metadata.creationTimestamp = obj.metadata.creationTimestamp or json.null
  local user = ctx.user
  if r.kind == "SelfSubjectReview" then
    local info = { username = user.username, groups = user.groups }
    if user.uid and user.uid ~= "" then info.uid = user.uid end
    obj.status = { userInfo = info }
  elseif r.kind == "SelfSubjectAccessReview" then
    local spec = type(obj.spec) == "table" and obj.spec or {}
    local ra, na = spec.resourceAttributes, spec.nonResourceAttributes
    if (ra == nil) == (na == nil) or (ra ~= nil and type(ra) ~= "table") or (na ~= nil and type(na) ~= "table") then
      api.invalid(r, "", { { field = "spec.resourceAttributes",
        message = "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified" } })
    end
    local a
    if ra then
      a = { verb = tostring(ra.verb or ""), group = tostring(ra.group or ""), resource = tostring(ra.resource or ""),
        subresource = tostring(ra.subresource or ""), name = tostring(ra.name or ""), namespace = tostring(ra.namespace or "") }
    else
      a = { verb = tostring(na.verb or ""), path = tostring(na.path or "") }
    end
    local allowed, reason = rbac.authorize(S:rbac_policy(), user, a)
    obj.status = { allowed = allowed, reason = reason ~= "" and reason or nil }
  else
    local ns = type(obj.spec) == "table" and obj.spec.namespace or nil
    local res, non = rbac.rules(S:rbac_policy(), user, type(ns) == "string" and ns or nil)
    obj.status = { incomplete = false, resourceRules = res, nonResourceRules = non }
  end
  return respond_obj(req, ctx, 201, obj)
end

--- TokenRequest (POST .../serviceaccounts/NAME/token): a token of that
--- ServiceAccount, valid for spec.expirationSeconds (default 3600, at least
--- 600) or until the account is deleted.
local function token_request(S, req, ctx, ns, name)
  local sa = S.store:get("/serviceaccounts", ns, name)
  if not sa then api.not_found(S.reg:find("", "v1", "serviceaccounts"), name) end
  local obj = decode_body(req, req:header("Content-Type"))
  if not is_object(obj) then fail(400, "BadRequest", "the body must be a JSON object") end
  local spec = type(obj.spec) == "table" and obj.spec or {}
  local secs = spec.expirationSeconds == nil and 3600 or math.tointeger(spec.expirationSeconds)
  if not secs or secs < 600 or secs > 2 ^ 32 then
    api.invalid({ kind = "TokenRequest", group = "authentication.k8s.io" }, name, { { field = "spec.expirationSeconds",
      message = ("Invalid value: %s: may not specify a duration less than 10 minutes"):format(tostring(spec.expirationSeconds)) } })
  end
  local token, exp = S:issue_token(sa, secs)
  obj.apiVersion, obj.kind = "authentication.k8s.io/v1", "TokenRequest"
  obj.metadata = { name = name, namespace = ns, creationTimestamp = json.null }
  obj.spec = { audiences = type(spec.audiences) == "table" and spec.audiences or json.array({ "https://kubernetes.default.svc" }),
    expirationSeconds = secs, boundObjectRef = spec.boundObjectRef }
  obj.status = { token = token, expirationTimestamp = vtime.format(exp) }
  return respond_obj(req, ctx, 201, obj)
end

-- ------------------------------------------------------------ object verbs

local function get(S, req, ctx, r, ns, name, accept, args)
  local body = S.store:get_raw(r.key, ns or "", name)
  if not body then api.not_found(r, name) end
  if wants_table(accept) then
    local o = json.decode(body)
    return respond(req, ctx, 200, json.encode(tbl.table(r, { o },
      { resourceVersion = o.metadata.resourceVersion }, os.time(), false, args and args.includeObject)), TABLE_CT)
  end
  return respond(req, ctx, 200, as_version(r, body))
end

-- a JSON object (a YAML mapping): a table with string keys only, not a list
local function check_identity(r, ns, name, obj)
  if not is_object(obj) then
    fail(400, "BadRequest", "the body must be a JSON object")
  end
  if obj.metadata ~= nil and not is_object(obj.metadata) then
    fail(400, "BadRequest", "metadata must be an object")
  end
  obj.metadata = obj.metadata or {}
  if obj.kind ~= nil and obj.kind ~= r.kind then
    fail(400, "BadRequest", ('%s in version "%s" cannot be handled as a %s: the kind in the body is %s')
      :format(tostring(obj.kind), r.version, r.kind, tostring(obj.kind)))
  end
  if obj.apiVersion ~= nil and obj.apiVersion ~= r.api_version then
    fail(400, "BadRequest", ('the API version in the data (%s) does not match the expected API version (%s)')
      :format(tostring(obj.apiVersion), r.api_version))
  end
  local bns = obj.metadata.namespace
  if r.namespaced and bns ~= nil and bns ~= "" and ns and bns ~= ns then
    fail(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
  end
  if name and obj.metadata.name ~= nil and obj.metadata.name ~= name then
    fail(400, "BadRequest", "the name of the object (" .. tostring(obj.metadata.name) .. ") does not match the name on the URL (" .. name .. ")")
  end
end

local function create(S, req, ctx, r, ns, args)
  local obj = decode_body(req, req:header("Content-Type"))
  check_identity(r, ns, nil, obj)
  local o = { manager = manager(args, req), dry_run = check_dry_run(args), req = ctx }
  ctx.field_validation = field_validation(args)
  local _, body = S:create_object(r, ns, obj, o)
  body = as_version(r, body)
  return respond(req, ctx, 201, body)
end

local function update(S, req, ctx, r, ns, name, sub, args)
  local obj = decode_body(req, req:header("Content-Type"))
  check_identity(r, ns, name, obj)
  local old = S.store:get(r.key, ns or "", name)
  if old and r.multi then old.apiVersion = r.api_version end -- in the version asked (as_version)
  if not old then api.not_found(r, name) end
  local rv = obj.metadata.resourceVersion
  if rv == nil or rv == "" then
    if not r.builtin then
      api.invalid(r, name, { { field = "metadata.resourceVersion",
        message = "Invalid value: 0x0: must be specified for an update" } })
    end
  elseif rv ~= old.metadata.resourceVersion then
    api.conflict(r, name, "the object has been modified; please apply your changes to the latest version and try again")
  end
  ctx.field_validation = field_validation(args)
  local _, body = S:update_object(r, ns, obj, old,
    { manager = manager(args, req), dry_run = check_dry_run(args), req = ctx, sub = sub })
  return respond(req, ctx, 200, as_version(r, body))
end

local PATCH_TYPES = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"

local function do_patch(S, req, ctx, r, ns, name, sub, args)
  local ctype = ((req:header("Content-Type") or ""):match("^[^;]+") or ""):gsub("%s", "")
  local kinds = { ["application/merge-patch+json"] = "merge", ["application/json-patch+json"] = "json",
    ["application/apply-patch+yaml"] = "apply", ["application/strategic-merge-patch+json"] = "strategic",
    ["application/apply-patch+cbor"] = false }
  local kind = kinds[ctype]
  if kind == "strategic" and not r.builtin then kind = nil end
  if not kind then
    if r.builtin then
      fail(415, "UnsupportedMediaType", ("the body of the request was in an unknown format - accepted media types include: %s, application/strategic-merge-patch+json"):format(PATCH_TYPES))
    end
    fail(415, "UnsupportedMediaType", ("the body of the request was in an unknown format - accepted media types include: %s"):format(PATCH_TYPES))
  end
  local p = decode_body(req, ctype, kind)
  local dry = check_dry_run(args)
  ctx.field_validation = field_validation(args)
  local mgr = manager(args, req)
  local old = S.store:get(r.key, ns or "", name)
  if old and r.multi then old.apiVersion = r.api_version end -- in the version asked (as_version)
  local now = api.now_text()
  if kind == "apply" then
    if args.fieldManager == nil or args.fieldManager == "" then
      fail(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
    end
    check_identity(r, ns, name, p)
    if p.kind == nil or p.apiVersion == nil then
      fail(400, "BadRequest", "apply patch must carry apiVersion and kind")
    end
    local force = query_bool(args.force)
    local function apply(live)
      local res, conflicts = patch.apply(live, p, mgr, force, r.api_version, now, sub)
      if not res then
        local dc = json.array()
        for i, c in ipairs(conflicts) do
          dc[i] = { reason = "FieldManagerConflict", field = c.path,
            message = ('conflict with "%s" using %s'):format(c.manager, c.apiVersion or r.api_version) }
        end
        fail(409, "Conflict", patch.conflict_message(conflicts), { causes = dc })
      end
      return res
    end
    if not old then
      if sub then api.not_found(r, name) end
      local _, body = S:create_object(r, ns, copy(p), { dry_run = dry, req = ctx,
        apply = function(obj) return apply(obj) end })
      return respond(req, ctx, 201, as_version(r, body))
    end
    local new = apply(old)
    local _, body = S:update_object(r, ns, new, old, { manager = mgr, dry_run = dry, req = ctx, sub = sub, apply = true })
    return respond(req, ctx, 200, as_version(r, body))
  end
  if not old then api.not_found(r, name) end
  local new, err
  if kind == "merge" then
    if not is_object(p) then fail(400, "BadRequest", "the body of the request is not a merge patch: a merge patch must be a JSON object") end
    new = patch.merge(old, p)
  elseif kind == "strategic" then
    if not is_object(p) then fail(400, "BadRequest", "the body of the request is not a strategic merge patch: it must be a JSON object") end
    new = patch.strategic(old, p)
  else
    new, err = patch.json_patch(old, p)
    if not new then fail(422, "Invalid", err) end
  end
  if type(new.metadata) ~= "table" then new.metadata = {} end
  local prv = new.metadata.resourceVersion
  if prv ~= nil and prv ~= old.metadata.resourceVersion then
    api.conflict(r, name, "the object has been modified; please apply your changes to the latest version and try again")
  end
  check_identity(r, ns, name, new)
  local _, body = S:update_object(r, ns, new, old, { manager = mgr, dry_run = dry, req = ctx, sub = sub })
  return respond(req, ctx, 200, as_version(r, body))
end

local function delete_opts(req, ctx, args)
  local o = {}
  local body = req:body()
  if body and body ~= "" then
    local d = json.decode(body)
    if type(d) ~= "table" then fail(400, "BadRequest", "the DeleteOptions body is not valid JSON") end
    o = d
  end
  if args.propagationPolicy then o.propagationPolicy = args.propagationPolicy end
  if args.orphanDependents then o.orphanDependents = query_bool(args.orphanDependents) end
  local pp = o.propagationPolicy
  if pp ~= nil and pp ~= "Background" and pp ~= "Foreground" and pp ~= "Orphan" then
    fail(422, "Invalid", ('DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "%s": supported values: "Background", "Foreground", "Orphan"'):format(tostring(pp)))
  end
  local dry = args.dryRun
  if type(o.dryRun) == "table" and o.dryRun[1] == "All" then dry = "All" end
  o.dry_run = check_dry_run({ dryRun = dry })
  o.req = ctx
  return o
end

local function delete(S, req, ctx, r, ns, name, args)
  local res = S:delete_object(r, ns, name, delete_opts(req, ctx, args))
  return respond_obj(req, ctx, 200, res)
end

local function delete_collection(S, req, ctx, r, ns, args)
  local labels, fields = selectors(r, args)
  local o = delete_opts(req, ctx, args)
  local victims = {}
  S.store:each(r.key, ns, function(ons, name, _, obj)
    if matches(obj, labels, fields) then victims[#victims + 1] = { ons, name } end
  end, true)
  for _, v in ipairs(victims) do
    pcall(S.delete_object, S, r, v[1] ~= "" and v[1] or nil, v[2], o)
  end
  return respond_obj(req, ctx, 200, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success",
    details = { group = r.group, kind = r.plural } })
end

-- ------------------------------------------------------------ routing

local function split(path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  return segs
end

-- equal strings, in a time that does not depend on where they differ (C: a
-- Lua loop of eight bytes a step was 3% of the server's time)
local same = runtime.same

-- The request's credential: the bearer token or a client certificate signed
-- by --client-ca. A server with neither configured (an embedding's own
-- choice; `vmsnap serve` always has one) lets everyone in.
-- who the request is from, or nil (401): a verified client certificate
-- (CN the name, O the groups), else the bearer token — the administrator's
-- (system:masters), a --token-file user's, or a ServiceAccount's
local function authenticate(S, req)
  local token = S.opts.token
  local ca = S.tls.ca
  if not token and not ca and not S.token_users then return S:admin_user() end
  if ca then
    local ok, dn = req:client_cert()
    if ok then return rbac.certificate_user(dn) or S:admin_user() end
  end
  local h = req:header("Authorization") or ""
  local t = h:match("^[Bb]earer%s+(%S+)%s*$")
  if not t then return nil end
  if token and same(t, token) then return S:admin_user() end
  return S:token_user(t)
end

-- 403 unless RBAC lets user do a (vmsnap.apiserver.rbac)
local function authorize(S, user, a)
  if user.masters then return end
  local allowed, reason = rbac.authorize(S:rbac_policy(), user, a)
  if allowed then return end
  local msg, details = rbac.forbidden(user, a, reason)
  fail(403, "Forbidden", msg, details)
end

-- Impersonate-User / Impersonate-Group (`kubectl --as`, `--as-group`): the
-- request then acts as that user, once RBAC lets the real one impersonate
-- each name (verb impersonate on users, groups or the serviceaccount)
local function impersonated(S, req, user)
  local as = req:header("Impersonate-User")
  local hs = (as or req:header("Impersonate-Group")) and req:headers() or {}
  if not as then
    if hs["impersonate-group"] then
      fail(500, "InternalError", "Internal error occurred: requested groups without impersonating a user")
    end
    return user
  end
  local sa_ns, sa_name = as:match("^system:serviceaccount:([^:]+):([^:]+)$")
  if sa_ns then
    authorize(S, user, { verb = "impersonate", group = "", resource = "serviceaccounts", name = sa_name, namespace = sa_ns })
  else
    authorize(S, user, { verb = "impersonate", group = "", resource = "users", name = as, namespace = "" })
  end
  local groups = {}
  for g in (hs["impersonate-group"] or ""):gmatch("[^,]+") do
    g = g:match("^%s*(.-)%s*$")
    if g ~= "" then
      authorize(S, user, { verb = "impersonate", group = "", resource = "groups", name = g, namespace = "" })
      groups[#groups + 1] = g
    end
  end
  if sa_ns then
    groups[#groups + 1] = "system:serviceaccounts"
    groups[#groups + 1] = "system:serviceaccounts:" .. sa_ns
  end
  return rbac.user(as, nil, groups)
end

-- what anyone may ask: is the server up (no data)
local PUBLIC = { ["/healthz"] = true, ["/livez"] = true, ["/readyz"] = true }
local VERB = { POST = "POST", PUT = "PUT", PATCH = "PATCH", DELETE = "DELETE", GET = "GET" }

local function handle(S, req, ctx)
  local method = req:method()
  local path = req:path()
  local accept = req:header("Accept")
  local segs = split(path)
  if not (method == "GET" and PUBLIC[path]) then
    ctx.user = authenticate(S, req)
    if not ctx.user then fail(401, "Unauthorized", "Unauthorized") end
    ctx.user = impersonated(S, req, ctx.user)
    -- a path that is not a resource: the rule's nonResourceURLs decide
    local resource_path = (segs[1] == "api" and #segs >= 3) or (segs[1] == "apis" and #segs >= 4)
    if not resource_path then authorize(S, ctx.user, { verb = rbac.verb(method, true, false), path = path }) end
  end
  if #segs == 0 then
    return respond_obj(req, ctx, 200, { paths = json.array({ "/api", "/api/v1", "/apis", "/metrics", "/openapi/v3",
      "/version", "/healthz" }) })
  end
  if method == "GET" and path == "/metrics" then
    -- with the families of the controllers in this process (vmsnap up)
    return respond(req, ctx, 200, S.metrics:render() .. metrics.process():render(), metrics.CONTENT_TYPE)
  end
  if method == "GET" and segs[1] ~= "api" and segs[1] ~= "apis" then
    if handle_meta(S, req, ctx, segs, accept) == false then
      fail(404, "NotFound", "the server could not find the requested resource")
    end
    return
  end
  if segs[1] ~= "api" and segs[1] ~= "apis" then
    fail(404, "NotFound", "the server could not find the requested resource")
  end
  if method == "GET" and #segs <= 3 and (#segs < 3 or segs[1] == "apis") then
    if handle_meta(S, req, ctx, segs, accept) ~= false then return end
    if #segs <= 2 then fail(404, "NotFound", "the server could not find the requested resource") end
  end
  local group, version, rest
  if segs[1] == "api" then
    group, version, rest = "", segs[2], 3
  else
    group, version, rest = segs[2], segs[3], 4
  end
  local args = req:args()
  local is_watch = false
  if segs[rest] == "watch" then
    is_watch = true
    rest = rest + 1
  end
  local ns, plural, name, sub
  local n = #segs - rest + 1
  if segs[rest] == "namespaces" and n >= 3 and not (n == 3 and (segs[rest + 2] == "status" or segs[rest + 2] == "finalize")) then
    ns, plural, name, sub = segs[rest + 1], segs[rest + 2], segs[rest + 3], segs[rest + 4]
    if segs[rest + 5] then fail(404, "NotFound", "the server could not find the requested resource") end
  else
    plural, name, sub = segs[rest], segs[rest + 1], segs[rest + 2]
    if segs[rest + 3] then fail(404, "NotFound", "the server could not find the requested resource") end
  end
  if query_bool(args.watch) then is_watch = true end
  if ctx.user and not ctx.user.masters then
    authorize(S, ctx.user, { verb = rbac.verb(method, name ~= nil, is_watch), group = group, resource = plural or "",
      subresource = sub or "", name = name or "", namespace = ns or "" })
  end
  if plural == "serviceaccounts" and group == "" and sub == "token" and ns and name and method == "POST" then
    return token_request(S, req, ctx, ns, name)
  end
  local subfn = sub and S.subs and S.subs[group .. "/" .. version .. "/" .. plural .. "/" .. sub]
  if subfn then
    return M.subresource(S, req, ctx, subfn, version, ns, plural, name, sub)
  end
  local r = plural and S.reg:find(group, version, plural)
  if not r then fail(404, "NotFound", "the server could not find the requested resource") end
  ctx.group, ctx.version, ctx.resource, ctx.subresource = group, version, plural, sub or ""
  ctx.verb = VERB[method] or method
  if method == "GET" then
    ctx.verb = is_watch and "WATCH" or (name and "GET" or "LIST")
  elseif method == "DELETE" and not name then
    ctx.verb = "DELETECOLLECTION"
  end
  if ns and not r.namespaced then fail(404, "NotFound", "the server could not find the requested resource") end
  if sub and (sub ~= "status" or not r.status) then
    fail(404, "NotFound", "the server could not find the requested resource")
  end
  if r.deprecated then
    ctx.warn(r.deprecation_warning or (("%s %s is deprecated"):format(r.api_version, r.kind)))
  end
  if r.review then
    if method ~= "POST" or name then
      fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    end
    return review(S, req, ctx, r)
  end
  if not name then
    if method == "GET" then
      if is_watch then return watch_stream(S, req, ctx, r, ns, args, accept) end
      return list(S, req, ctx, r, ns, args, accept)
    elseif method == "POST" then
      if r.namespaced and not ns then
        fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
      end
      return create(S, req, ctx, r, ns, args)
    elseif method == "DELETE" then
      return delete_collection(S, req, ctx, r, ns, args)
    end
    fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
  end
  if r.namespaced and not ns then fail(404, "NotFound", "the server could not find the requested resource") end
  if method == "GET" then
    if is_watch then
      args.fieldSelector = "metadata.name=" .. name
      return watch_stream(S, req, ctx, r, ns, args, accept)
    end
    return get(S, req, ctx, r, ns, name, accept, args)
  elseif method == "PUT" then
    return update(S, req, ctx, r, ns, name, sub, args)
  elseif method == "PATCH" then
    return do_patch(S, req, ctx, r, ns, name, sub, args)
  elseif method == "DELETE" and not sub then
    return delete(S, req, ctx, r, ns, name, args)
  end
  fail(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
end

-- count one answered request (apiserver_request_total, ..._duration_seconds):
-- a watch when it starts; a subresource answered by its own task counts there
function account(S, ctx, t0)
  if not (ctx.verb and S.m_requests) or ctx.deferred then return end
  local code = ctx.code or (ctx.verb == "WATCH" and 200) or nil
  if not code then return end
  S.m_requests:inc({ ctx.verb, ctx.group, ctx.version, ctx.resource, ctx.subresource, tostring(code) })
  if ctx.verb ~= "WATCH" then
    S.m_duration:observe({ ctx.verb, ctx.group, ctx.version, ctx.resource, ctx.subresource }, task.now() - t0)
  end
end

--- A subresource served by a Lua function: run it in a task of its own (it
--- may wait, on a guest agent say) and answer when it returns.
function M.subresource(S, req, ctx, fn, version, ns, plural, name, sub)
  local target
  for _, r in ipairs(S.reg.list) do
    if r.plural == plural and r.version == version then target = r break end
  end
  if not target then fail(404, "NotFound", "the server could not find the requested resource") end
  local obj = S.store:get(target.key, ns or "", name)
  if not obj then api.not_found(target, name) end
  local body = req:body()
  local decoded
  if body and body ~= "" then
    decoded = json.decode(body)
    if decoded == nil then fail(400, "BadRequest", "the request body is not valid JSON") end
  end
  local call = { method = req:method(), namespace = ns, name = name, body = decoded, object = obj,
    resource = target, subresource = sub }
  local t0 = task.now()
  -- counted when its task answers (a refusal before this point is not, as
  -- a request that names no resource is not)
  ctx.verb, ctx.group, ctx.version, ctx.resource, ctx.subresource =
    VERB[call.method] or call.method, target.group, version, plural, sub
  ctx.deferred = true
  local function answer_with(code, body)
    respond(req, ctx, code, body)
    ctx.deferred = false
    account(S, ctx, t0)
  end
  task.spawn(function()
    local ok, code, answer = pcall(fn, S, call)
    if not ok then
      local e = code
      if type(e) == "table" and e.status then
        return answer_with(e.status.code, json.encode(e.status))
      end
      log.error("apiserver: subresource failed", { sub = sub, error = tostring(e) })
      return answer_with(500, json.encode({ kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
        message = "Internal error occurred: " .. tostring(e), reason = "InternalError", code = 500 }))
    end
    answer_with(code or 200, answer == nil and "" or json.encode(answer))
  end)
end

--- Answer one request (never raises, but for the cancellation of its task).
function M.dispatch(S, req)
  local ctx = { warnings = {} }
  local seen = {}
  function ctx.warn(text)
    if not seen[text] then
      seen[text] = true
      ctx.warnings[#ctx.warnings + 1] = text
    end
  end
  local t0 = task.now()
  ctx.t0 = t0 -- a streamed answer is counted when its task ends
  local ok, err = xpcall(handle, function(e)
    if type(e) == "table" and e.status then return e end
    return { internal = e, trace = debug.traceback(tostring(e), 2) }
  end, S, req, ctx)
  if ok then return account(S, ctx, t0) end
  if err.status then
    respond_obj(req, ctx, err.status.code, err.status)
    return account(S, ctx, t0)
  end
  if errors.code_of(err.internal) == "CANCELLED" then
    -- the server is going down under this request (Kubernetes answers 503 then)
    local ok2 = pcall(respond_obj, req, ctx, 503, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
      message = "the server is shutting down", reason = "ServiceUnavailable", code = 503 })
    if not ok2 then error(err.internal, 0) end
    return
  end
  log.error("apiserver: internal error", { method = req:method(), path = req:path(), error = tostring(err.internal),
    trace = err.trace })
  respond_obj(req, ctx, 500, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
    message = "Internal error occurred: " .. tostring(err.internal), reason = "InternalError", code = 500 })
  account(S, ctx, t0)
end

return M
