-- The API server over HTTP: the semantics kubectl does not exercise on its
-- own (status codes, paging, watch resumption, admission, auth, TLS).
local t = require("tap")
local http = require("vmsnap.http")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.apiserver()
local G = "/apis/virtualization.deckhouse.io/v1alpha2"
local VDS = G .. "/namespaces/default/virtualdisksnapshots"

local function req(method, path, body, headers)
  local res = assert(srv:request({ method = method, path = path, body = body,
    headers = headers or { ["Content-Type"] = "application/json" }, timeout = 10 }))
  res.obj = json.decode(res.body)
  return res
end

local function vds(name, extra)
  local o = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = name }, spec = { virtualDiskName = "d" } }
  for k, v in pairs(extra or {}) do o[k] = v end
  return json.encode(o)
end

t.test("/version reports v1.32 and discovery negotiates the aggregated format", function()
  local v = req("GET", "/version")
  t.eq(v.obj.gitVersion, "v1.32.0")
  local agg = req("GET", "/apis", nil, { Accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json" })
  t.eq(agg.headers["content-type"], "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
  t.eq(agg.obj.kind, "APIGroupDiscoveryList")
  local legacy = req("GET", "/apis")
  t.eq(legacy.obj.kind, "APIGroupList")
  local rl = req("GET", G)
  local names = {}
  for _, r in ipairs(rl.obj.resources) do names[r.name] = r end
  t.ok(names["virtualdisksnapshots/status"], "status subresource listed")
  t.eq(names.virtualdisksnapshots.shortNames[1], "vdsnapshot")
end)

t.test("OpenAPI v3: root, GV documents by hash, immutable caching", function()
  local root = req("GET", "/openapi/v3")
  local ref = root.obj.paths["apis/virtualization.deckhouse.io/v1alpha2"].serverRelativeURL
  t.ok(ref:match("%?hash=%x+"), ref)
  local doc = req("GET", ref)
  t.eq(doc.headers["cache-control"], "public, immutable")
  local s = doc.obj.components.schemas["io.deckhouse.virtualization.v1alpha2.VirtualDiskSnapshot"]
  t.eq(s.properties.spec.required[1], "virtualDiskName")
  local p = doc.obj.paths["/apis/virtualization.deckhouse.io/v1alpha2/namespaces/{namespace}/virtualdisksnapshots/{name}"]
  t.eq(p.patch.requestBody.content["application/strategic-merge-patch+json"], nil)
  -- v2: a document without definitions (kubectl's path for kinds it cannot map)
  local v2 = req("GET", "/openapi/v2")
  t.eq(v2.status, 200)
  t.eq(v2.obj.swagger, "2.0")
  local pb = assert(srv:request({ path = "/openapi/v2", headers = { Accept = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf" } }))
  t.eq(pb.headers["content-type"], "application/octet-stream")
  t.eq(pb.body:sub(1, 5), "\n\0032.0")
end)

t.test("bad input: malformed JSON and YAML are 400, unknown resource 404, wrong method 405, oversize 413", function()
  local r = req("POST", VDS, '{"apiVersion": ')
  t.eq(r.status, 400)
  t.eq(r.obj.reason, "BadRequest")
  t.contains(r.obj.message, "the request body is not valid")
  r = req("POST", VDS, "a: [b", { ["Content-Type"] = "application/yaml" })
  t.eq(r.status, 400)
  t.contains(r.obj.message, "line")
  r = req("GET", G .. "/namespaces/default/nosuchthings")
  t.eq(r.status, 404)
  t.eq(r.obj.kind, "Status")
  r = req("PUT", VDS, vds("x"))
  t.eq(r.status, 405)
  t.eq(r.obj.reason, "MethodNotAllowed")
  r = req("POST", VDS, string.rep(" ", 3 * 1024 * 1024 + 10) .. "{}")
  t.eq(r.status, 413)
  t.eq(r.obj.reason, "RequestEntityTooLarge")
  r = req("POST", VDS, json.encode({ apiVersion = "v1", kind = "Secret", metadata = { name = "s" } }))
  t.eq(r.status, 400)
end)

t.test("hostile bodies are refused at once: nesting past 200 levels, a YAML alias bomb, a recursive alias, a body that is not an object", function()
  local deep = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"data":' ..
    ("["):rep(300) .. ("]"):rep(300) .. "}"
  local r = req("POST", "/api/v1/namespaces/default/configmaps", deep)
  t.eq(r.status, 400)
  t.contains(r.obj.message, "too many nested data structures (201)")
  -- 10^9 leaves in a few hundred bytes
  local lines = { 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]' }
  for i = 1, 8 do lines[#lines + 1] = ("a%d: &a%d [%s]"):format(i, i, ("*a" .. (i - 1) .. ","):rep(10):sub(1, -2)) end
  local bomb = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n" ..
    table.concat(lines, "\n"):gsub("[^\n]+", "  %0") .. "\n"
  local t0 = task.now()
  r = req("POST", "/api/v1/namespaces/default/configmaps", bomb, { ["Content-Type"] = "application/yaml" })
  local took = task.now() - t0
  t.eq(r.status, 400)
  t.contains(r.obj.message, "excessive aliasing")
  t.ok(took < 0.5, ("refused in %.3f s"):format(took))
  r = req("POST", "/api/v1/namespaces/default/configmaps", "a: &a [*a]", { ["Content-Type"] = "application/yaml" })
  t.eq(r.status, 400)
  for _, body in ipairs({ "[]", '"x"', "12", "null" }) do
    r = req("POST", "/api/v1/namespaces/default/configmaps", body)
    t.eq(r.status, 400, body)
  end
  -- the server is still answering others
  t.eq(req("GET", "/api/v1/namespaces/default/configmaps").status, 200)
end)

t.test("what once was a 500 is the right 4xx: media types, NaN, huge limits, mixed YAML keys, ill-typed metadata, %00", function()
  local CM = "/api/v1/namespaces/default/configmaps"
  local cm = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"mt"}}'
  local r = req("POST", CM, cm, { ["Content-Type"] = "text/plain" })
  t.eq(r.status, 415)
  t.eq(r.obj.reason, "UnsupportedMediaType")
  t.contains(r.obj.message, "accepted media types include: application/json, application/yaml")
  r = req("POST", CM, cm, {})
  t.eq(r.status, 415, "no Content-Type at all")
  r = req("POST", CM, cm, { ["Content-Type"] = "Application/JSON; charset=utf-8" })
  t.eq(r.status, 201, "media type names are case-insensitive, parameters ignored")
  for _, v in ipairs({ "NaN", "Infinity", "-Infinity", "0x10", "1e999" }) do
    r = req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"n","generation":' .. v .. '}}')
    t.eq(r.status, 400, v)
  end
  for _, v in ipairs({ "99999999999999999999", "abc", "1.5", "-99999999999999999999" }) do
    r = req("GET", CM .. "?limit=" .. v)
    t.eq(r.status, 400, "limit=" .. v)
    t.contains(r.obj.message, "limit")
  end
  t.eq(req("GET", CM .. "?limit=-5").status, 200, "a negative limit is no limit, as in Kubernetes")
  -- YAML: keys of several types in one mapping are read as their text
  r = req("POST", CM, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keys}\ndata: {1: one, b: bee, true: \"yes\"}\n",
    { ["Content-Type"] = "application/yaml" })
  t.eq(r.status, 201)
  t.eq(r.obj.data["1"], "one")
  t.eq(r.obj.data["true"], "yes")
  r = req("POST", VDS, "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualDiskSnapshot\nmetadata: {name: mixed}\nspec: {virtualDiskName: d, 1: x, 2.5: y}\n",
    { ["Content-Type"] = "application/yaml" })
  t.ok(r.status >= 200 and r.status < 500, "mixed spec keys: " .. r.status)
  -- metadata fields of the wrong type: the decoder's 400, on create and update
  for _, md in ipairs({ '{"name":"f1","finalizers":[{"a":1}]}', '{"name":"f2","finalizers":"x"}',
      '{"name":["f3"]}', '{"name":"f4","ownerReferences":["x"]}', '{"name":"f5","resourceVersion":5}',
      '{"name":"f6","generation":"1"}' }) do
    r = req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":' .. md .. '}')
    t.eq(r.status, 400, md)
    t.contains(r.obj.message, "ObjectMeta.metadata.", md)
  end
  local fin = req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"fin","finalizers":["a/b"]}}').obj
  t.eq(req("DELETE", CM .. "/fin").status, 200)
  fin = req("GET", CM .. "/fin").obj
  fin.metadata.finalizers = { { x = 1 } }
  r = req("PUT", CM .. "/fin", json.encode(fin))
  t.eq(r.status, 400, "a table as a finalizer of an object being deleted")
  fin.metadata.finalizers = json.array()
  t.eq(req("PUT", CM .. "/fin", json.encode(fin)).status, 200)
  -- %00 is not the end of the path
  req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}')
  r = req("GET", CM .. "/x%00junk")
  t.eq(r.status, 404, "/x%00junk is not /x")
  r = req("GET", CM .. "?labelSelector=a%00b")
  t.eq(r.status, 400)
end)

t.test("query booleans as Kubernetes reads them (watch=True is a watch); a merge patch that is not an object is 400", function()
  local CM = "/api/v1/namespaces/default/configmaps"
  req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"qb"},"data":{"a":"1"}}')
  for _, v in ipairs({ "True", "TRUE", "1", "t", "yes" }) do
    local res = assert(srv:request({ path = CM .. "?watch=" .. v .. "&fieldSelector=metadata.name%3Dqb", stream = true, timeout = 10 }))
    local line = res:read(5)
    res:close()
    t.contains(line or "", '"type":"ADDED"', "watch=" .. v .. " is a watch")
  end
  for _, v in ipairs({ "false", "FALSE", "0" }) do
    t.eq(req("GET", CM .. "?watch=" .. v).obj.kind, "ConfigMapList", "watch=" .. v .. " is a list")
  end
  -- server-side apply with force=True takes the field over
  local ap = { ["Content-Type"] = "application/apply-patch+yaml" }
  local doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: qb}\ndata: {a: mine}\n"
  t.eq(req("PATCH", CM .. "/qb?fieldManager=other", doc, ap).status, 409)
  local r = req("PATCH", CM .. "/qb?fieldManager=other&force=True", doc, ap)
  t.eq(r.status, 200)
  t.eq(r.obj.data.a, "mine")
  req("POST", VDS, vds("mp"))
  for _, body in ipairs({ "[1,2]", '"x"', "12", "[]" }) do
    for _, path in ipairs({ CM .. "/qb", VDS .. "/mp" }) do
      r = req("PATCH", path, body, { ["Content-Type"] = "application/merge-patch+json" })
      t.eq(r.status, 400, path .. " " .. body)
      t.contains(r.obj.message or "", "must be a JSON object")
    end
  end
  t.eq(req("GET", CM .. "/qb").obj.data.a, "mine", "nothing stored")
  t.eq(req("GET", CM .. "/qb").obj["1"], nil)
end)

t.test("names: a DNS subdomain of up to 253 characters (no 63 limit per label); namespaces are labels of 63", function()
  local CM = "/api/v1/namespaces/default/configmaps"
  local function cm(name) return json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = name } }) end
  t.eq(req("POST", CM, cm(("a"):rep(100))).status, 201, "100 characters, no dots")
  t.eq(req("POST", CM, cm(("b"):rep(253))).status, 201, "253 characters")
  local r = req("POST", CM, cm(("c"):rep(254)))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "must be no more than 253 characters")
  t.eq(r.obj.message:find("RFC 1123", 1, true), nil, "the length alone is said")
  r = req("POST", CM, cm("Bad_Name"))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "a lowercase RFC 1123 subdomain")
  r = req("POST", "/api/v1/namespaces", json.encode({ apiVersion = "v1", kind = "Namespace", metadata = { name = ("n"):rep(64) } }))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "must be no more than 63 characters")
end)

t.test("invalid UTF-8 is stored as U+FFFD, as Kubernetes does; every output of it is well-formed", function()
  local CM = "/api/v1/namespaces/default/configmaps"
  local r = req("POST", CM, '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bad-utf8"},"data":{"k":"a\xff\xfeb\xc3","k\x80":"v"}}')
  t.eq(r.status, 201)
  t.eq(r.obj.data.k, "a\u{FFFD}\u{FFFD}b\u{FFFD}")
  t.eq(r.obj.data["k\u{FFFD}"], "v")
  r = req("POST", CM, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad-utf8-yaml}\ndata: {k: \"a\xffb\"}\n",
    { ["Content-Type"] = "application/yaml" })
  t.ok(r.status == 201 or r.status == 400, "YAML with invalid UTF-8: " .. r.status)
  local out = h.run_vmsnap({ "get", "cm", "bad-utf8", "-o", "yaml", "--kubeconfig", srv.kubeconfig }, { timeout = 20 })
  t.eq(out.status, 0, out.stderr)
  t.contains(out.stdout, "a\u{FFFD}\u{FFFD}b\u{FFFD}")
  out = srv:kubectl({ "get", "cm", "bad-utf8", "-o", "json" })
  t.eq(out.status, 0, out.stderr)
  t.ok(utf8.len(out.stdout) ~= nil, "kubectl's output is well-formed UTF-8")
end)

t.test("create: generateName, uid, creationTimestamp, generation; dryRun stores nothing", function()
  local r = req("POST", VDS, json.encode({ apiVersion = "virtualization.deckhouse.io/v1alpha2",
    kind = "VirtualDiskSnapshot", metadata = { generateName = "gen-" }, spec = { virtualDiskName = "d" } }))
  t.eq(r.status, 201)
  t.ok(r.obj.metadata.name:match("^gen%-%w%w%w%w%w$"), r.obj.metadata.name)
  t.ok(r.obj.metadata.uid:match("^%x+%-%x+%-4%x+%-%x+%-%x+$"))
  t.eq(r.obj.metadata.generation, 1)
  r = req("POST", VDS .. "?dryRun=All", vds("dry"))
  t.eq(r.status, 201)
  t.eq(req("GET", VDS .. "/dry").status, 404)
  r = req("POST", "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/nons/virtualdisksnapshots", vds("x"))
  t.eq(r.status, 404)
  t.eq(r.obj.message, 'namespaces "nons" not found')
end)

t.test("update: RV required for custom resources, 409 on a stale RV; status writes keep the generation", function()
  local c = req("POST", VDS, vds("upd")).obj
  local body = json.decode(vds("upd"))
  local r = req("PUT", VDS .. "/upd", json.encode(body))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
  body.metadata.resourceVersion = "1"
  r = req("PUT", VDS .. "/upd", json.encode(body))
  t.eq(r.status, 409)
  t.eq(r.obj.reason, "Conflict")
  t.eq(r.obj.details.kind, "virtualdisksnapshots")
  c.status = { phase = "Ready" }
  r = req("PUT", VDS .. "/upd/status", json.encode(c))
  t.eq(r.status, 200)
  t.eq(r.obj.status.phase, "Ready")
  t.eq(r.obj.metadata.generation, 1)
  -- the main resource ignores status
  local c2 = r.obj
  c2.status.phase = "Failed"
  c2.metadata.labels = { a = "b" }
  r = req("PUT", VDS .. "/upd", json.encode(c2))
  t.eq(r.obj.status.phase, "Ready")
  t.eq(r.obj.metadata.labels.a, "b")
  -- an update that changes nothing does not move the resourceVersion
  local rv = r.obj.metadata.resourceVersion
  r = req("PUT", VDS .. "/upd", json.encode(r.obj))
  t.eq(r.obj.metadata.resourceVersion, rv)
  t.eq(req("PUT", VDS .. "/missing", vds("missing")).status, 404)
end)

t.test("patch precondition: a patched resourceVersion that differs is a Conflict", function()
  local r = req("PATCH", VDS .. "/upd", '{"metadata":{"resourceVersion":"2","labels":{"x":"y"}}}',
    { ["Content-Type"] = "application/merge-patch+json" })
  t.eq(r.status, 409)
  r = req("PATCH", VDS .. "/upd", '[{"op":"test","path":"/spec/virtualDiskName","value":"zzz"}]',
    { ["Content-Type"] = "application/json-patch+json" })
  t.eq(r.status, 422)
end)

t.test("list: limit and continue page through a consistent resourceVersion; selectors", function()
  for i = 1, 7 do req("POST", VDS, vds(("page-%02d"):format(i), { metadata = { name = ("page-%02d"):format(i), labels = { page = "yes" } } })) end
  local names, cont, rv = {}, nil, nil
  repeat
    local r = req("GET", VDS .. "?labelSelector=page%3Dyes&limit=3" .. (cont and ("&continue=" .. cont) or ""))
    t.eq(r.obj.kind, "VirtualDiskSnapshotList")
    rv = rv or r.obj.metadata.resourceVersion
    t.eq(r.obj.metadata.resourceVersion, rv)
    for _, it in ipairs(r.obj.items) do names[#names + 1] = it.metadata.name end
    cont = r.obj.metadata.continue
  until not cont
  t.eq(#names, 7)
  t.eq(names[1], "page-01")
  t.eq(names[7], "page-07")
  local r = req("GET", VDS .. "?fieldSelector=metadata.name%3Dpage-03")
  t.eq(#r.obj.items, 1)
  r = req("GET", VDS .. "?fieldSelector=spec.virtualDiskName%3Dd")
  t.eq(r.status, 400)
  t.contains(r.obj.message, "field label not supported: spec.virtualDiskName")
  r = req("GET", VDS .. "?continue=garbage")
  t.eq(r.status, 400)
end)

t.test("a name-pinned field selector is an index lookup with the same answers as a scan: across namespaces, with other terms, with limit", function()
  local NSX = "/api/v1/namespaces"
  for _, ns in ipairs({ "pin-a", "pin-b" }) do
    req("POST", NSX, json.encode({ apiVersion = "v1", kind = "Namespace", metadata = { name = ns } }))
    for _, n in ipairs({ "same", "other" }) do
      local r = req("POST", NSX .. "/" .. ns .. "/configmaps", json.encode({ apiVersion = "v1", kind = "ConfigMap",
        metadata = { name = n, labels = { ns = ns } } }))
      t.eq(r.status, 201, r.body)
    end
  end
  local function names(path)
    local r = req("GET", path)
    t.eq(r.status, 200, r.body)
    local out = {}
    for _, it in ipairs(r.obj.items) do out[#out + 1] = it.metadata.namespace .. "/" .. it.metadata.name end
    return table.concat(out, " "), r.obj
  end
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame"), "pin-a/same pin-b/same", "every namespace, in order")
  t.eq(names(NSX .. "/pin-b/configmaps?fieldSelector=metadata.name%3Dsame"), "pin-b/same")
  t.eq(names(NSX .. "/pin-b/configmaps?fieldSelector=metadata.name%3Dnone"), "")
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame,metadata.namespace%3Dpin-a"), "pin-a/same")
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame,metadata.name%3Dother"), "", "two names match nothing")
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame&labelSelector=ns%3Dpin-b"), "pin-b/same")
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name!%3Dsame,metadata.namespace%3Dpin-a"), "pin-a/other")
  -- paged: the same answer as without the index (a scan), with a continue token
  local first, obj = names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame&limit=1")
  t.eq(first, "pin-a/same")
  t.ok(obj.metadata.continue, "more to come")
  t.eq(names("/api/v1/configmaps?fieldSelector=metadata.name%3Dsame&limit=1&continue=" .. obj.metadata.continue), "pin-b/same")
  local one
  one, obj = names(NSX .. "/pin-a/configmaps?fieldSelector=metadata.name%3Dsame&limit=1")
  t.eq(one, "pin-a/same")
  t.eq(obj.metadata.continue, nil, "one object of a name in a namespace: nothing more")
  -- a watch pinned to a name starts with just that object
  local w = assert(srv:request({ method = "GET", path = NSX .. "/pin-a/configmaps?watch=true&fieldSelector=metadata.name%3Dsame&timeoutSeconds=1",
    timeout = 10 }))
  local evs = {}
  for line in w.body:gmatch("[^\n]+") do evs[#evs + 1] = json.decode(line).object.metadata.name end
  t.eq(table.concat(evs, " "), "same")
end)

t.test("/metrics: Prometheus text with the requests by verb, resource and code, and the stored objects (kubectl get --raw)", function()
  req("GET", VDS .. "/no-such")
  local out = srv:kubectl({ "get", "--raw", "/metrics" })
  t.eq(out.status, 0, out.stderr)
  local text = out.stdout
  t.contains(text, "# TYPE apiserver_request_total counter")
  t.ok(text:find('apiserver_request_total{verb="GET",group="virtualization.deckhouse.io",version="v1alpha2",'
    .. 'resource="virtualdisksnapshots",subresource="",code="404"} %d+'), "the 404 GET is counted")
  t.ok(text:find('apiserver_request_total{verb="LIST",group="",version="v1",resource="configmaps",subresource="",code="200"} %d+'),
    "LIST is its own verb")
  t.ok(text:find('apiserver_request_total{verb="POST",[^}]*resource="virtualdisksnapshots"[^}]*code="201"} %d+'), "creates")
  t.contains(text, "# TYPE apiserver_request_duration_seconds histogram")
  t.ok(text:find('apiserver_request_duration_seconds_bucket{verb="GET",[^}]*le="%+Inf"} %d+'), "buckets end in +Inf")
  t.ok(text:find('apiserver_storage_objects{resource="configmaps"} %d+'), "stored objects by resource")
  t.ok(text:find('\nvmsnap_apiserver_connections [1-9]%d*\n'), "open connections (this one at least)")
  t.ok(text:find('\nvmsnap_apiserver_max_connections 4096\n'), "the connection limit")
  local r = req("GET", "/metrics", nil, {})
  t.eq(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
  local anon = assert(srv:request({ method = "GET", path = "/metrics", auth = false, timeout = 10 }))
  t.eq(anon.status, 401, "not for anyone")
end)

t.test("deletecollection with a label selector; preconditions on delete", function()
  local r = req("DELETE", VDS .. "?labelSelector=page%3Dyes")
  t.eq(r.status, 200)
  t.eq(#req("GET", VDS .. "?labelSelector=page%3Dyes").obj.items, 0)
  local c = req("POST", VDS, vds("pre")).obj
  r = req("DELETE", VDS .. "/pre", json.encode({ preconditions = { uid = "not-it" } }))
  t.eq(r.status, 409)
  t.contains(r.obj.message, "Precondition failed: UID in precondition: not-it")
  r = req("DELETE", VDS .. "/pre", json.encode({ preconditions = { uid = c.metadata.uid } }))
  t.eq(r.status, 200)
  t.eq(r.obj.status, "Success")
  t.eq(r.obj.details.kind, "virtualdisksnapshots")
end)

local function watch(path)
  local res = assert(srv:request({ path = path, stream = true, timeout = 10 }))
  local it = res:lines()
  return res, function()
    local line = it()
    return line and json.decode(line)
  end
end

t.test("watch: from a resourceVersion, selector transitions, timeoutSeconds ends the stream", function()
  local base = req("GET", VDS).obj.metadata.resourceVersion
  local res, next_ev = watch(VDS .. "?watch=true&labelSelector=w%3D1&timeoutSeconds=3&resourceVersion=" .. base)
  local _ <close> = res
  req("POST", VDS, vds("w1", { metadata = { name = "w1", labels = { w = "1" } } }))
  req("POST", VDS, vds("w2"))
  req("PATCH", VDS .. "/w1", '{"metadata":{"labels":{"w":"2"}}}', { ["Content-Type"] = "application/merge-patch+json" })
  req("PATCH", VDS .. "/w2", '{"metadata":{"labels":{"w":"1"}}}', { ["Content-Type"] = "application/merge-patch+json" })
  req("DELETE", VDS .. "/w2")
  local got = {}
  for _ = 1, 4 do
    local ev = next_ev()
    got[#got + 1] = ev.type .. ":" .. ev.object.metadata.name
  end
  t.eq(table.concat(got, " "), "ADDED:w1 DELETED:w1 ADDED:w2 DELETED:w2")
  local t0 = task.now()
  t.eq(next_ev(), nil, "the stream ends")
  t.ok(task.now() - t0 < 4, "within timeoutSeconds")
end)

t.test("watch: sendInitialEvents replays existing objects, then the initial-events-end bookmark", function()
  local res, next_ev = watch(VDS .. "?watch=true&fieldSelector=metadata.name%3Dw1&resourceVersion=0&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=2")
  local _ <close> = res
  local ev = next_ev()
  t.eq(ev.type, "ADDED")
  t.eq(ev.object.metadata.name, "w1")
  ev = next_ev()
  t.eq(ev.type, "BOOKMARK")
  t.eq(ev.object.metadata.annotations["k8s.io/initial-events-end"], "true")
end)

t.test("watch: a Table watch sends column definitions once", function()
  local res = assert(srv:request({ path = VDS .. "?watch=true&timeoutSeconds=2&resourceVersion=0",
    stream = true, headers = { Accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json" } }))
  local _ <close> = res
  t.eq(res.headers["content-type"], "application/json;as=Table;v=v1;g=meta.k8s.io")
  local it = res:lines()
  local first = json.decode(it())
  local second = json.decode(it())
  t.eq(first.object.kind, "Table")
  t.eq(first.object.columnDefinitions[1].name, "Name")
  t.eq(second.object.columnDefinitions, json.null)
  t.eq(#second.object.rows, 1)
end)

t.test("events: field selectors on involvedObject and type", function()
  local EV = "/api/v1/namespaces/default/events"
  local old = "2020-01-01T00:00:00Z"
  req("POST", EV, json.encode({ apiVersion = "v1", kind = "Event", metadata = { name = "e1" },
    involvedObject = { kind = "VirtualDisk", name = "d1", namespace = "default" }, reason = "R", message = "m",
    type = "Normal", lastTimestamp = os.date("!%Y-%m-%dT%H:%M:%SZ") }))
  req("POST", EV, json.encode({ apiVersion = "v1", kind = "Event", metadata = { name = "e2" },
    involvedObject = { kind = "VirtualDisk", name = "d2", namespace = "default" }, reason = "R", message = "m",
    type = "Warning", lastTimestamp = old }))
  local r = req("GET", EV .. "?fieldSelector=involvedObject.name%3Dd1%2CinvolvedObject.kind%3DVirtualDisk")
  t.eq(#r.obj.items, 1)
  t.eq(r.obj.items[1].metadata.name, "e1")
  t.eq(#req("GET", EV .. "?fieldSelector=type%21%3DNormal").obj.items, 1)
end)

t.test("events older than --event-ttl are deleted", function()
  local s <close> = h.apiserver({ args = { "--event-ttl", "2" } })
  local EV = "/api/v1/namespaces/default/events"
  local function post(name, ts)
    return assert(s:request({ method = "POST", path = EV, body = json.encode({ apiVersion = "v1", kind = "Event", metadata = { name = name },
      involvedObject = { kind = "VirtualDisk", name = "d", namespace = "default" }, reason = "R", message = "m",
      type = "Normal", lastTimestamp = ts }), headers = { ["Content-Type"] = "application/json" } })).status
  end
  t.eq(post("old", "2020-01-01T00:00:00Z"), 201)
  t.eq(post("fresh", os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3600)), 201)
  local names
  for _ = 1, 40 do
    local list = json.decode(assert(s:get(EV)).body)
    names = {}
    for _, e in ipairs(list.items) do names[#names + 1] = e.metadata.name end
    if #names == 1 then break end
    task.sleep(0.1)
  end
  t.eq(table.concat(names, ","), "fresh")
end)

t.test("admission: VirtualDisk size checks and the restore size warning", function()
  local VD = G .. "/namespaces/default/virtualdisks"
  local function vd(name, size, ref)
    return json.encode({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDisk",
      metadata = { name = name }, spec = { persistentVolumeClaim = { size = size },
      dataSource = ref and { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = ref } } or nil } })
  end
  local r = req("POST", VD, vd("zero", "0"))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "virtual disk size must be greater than 0")
  -- a Ready snapshot whose VolumeSnapshot has restoreSize 5Gi
  local s = req("POST", VDS, vds("big")).obj
  s.status = { phase = "Ready", volumeSnapshotName = "big" }
  req("PUT", VDS .. "/big/status", json.encode(s))
  local VS = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots"
  local vs = req("POST", VS, json.encode({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshot",
    metadata = { name = "big" }, spec = { source = { persistentVolumeClaimName = "p" } } })).obj
  vs.status = { restoreSize = "5Gi", readyToUse = true }
  t.eq(req("PUT", VS .. "/big/status", json.encode(vs)).status, 200)
  r = req("POST", VD, vd("small", "1Gi", "big"))
  t.eq(r.status, 201)
  t.eq(r.headers["warning"], '299 - "The specified pvc size is insufficient: 1073741824 (1Gi) < 5368709120"')
  r = req("POST", VD, vd("enough", "6Gi", "big"))
  t.eq(r.headers["warning"], nil)
  -- once provisioned, the data source is fixed
  local d = r.obj
  d.status = { phase = "Ready" }
  req("PUT", VD .. "/enough/status", json.encode(d))
  r = req("PATCH", VD .. "/enough", '{"spec":{"dataSource":{"objectRef":{"name":"other"}}}}',
    { ["Content-Type"] = "application/merge-patch+json" })
  t.eq(r.status, 422)
  t.contains(r.obj.message, "data source cannot be changed if the VirtualDisk has already been provisioned")
end)

t.test("a CRD created through the API is served at once and removed with it", function()
  local CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
  local crd = { apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = "widgets.example.com" },
    spec = { group = "example.com", scope = "Namespaced",
      names = { plural = "widgets", singular = "widget", kind = "Widget" },
      versions = { { name = "v1", served = true, storage = true,
        schema = { openAPIV3Schema = { type = "object", properties = { spec = { type = "object",
          properties = { size = { type = "integer", minimum = 1 } } } } } } } } } }
  t.eq(req("POST", CRD, json.encode(crd)).status, 201)
  local W = "/apis/example.com/v1/namespaces/default/widgets"
  local r = req("POST", W, json.encode({ apiVersion = "example.com/v1", kind = "Widget", metadata = { name = "w" }, spec = { size = 0 } }))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "spec.size in body should be greater than or equal to 1")
  t.eq(req("POST", W, json.encode({ apiVersion = "example.com/v1", kind = "Widget", metadata = { name = "w" }, spec = { size = 2 } })).status, 201)
  t.eq(req("GET", "/apis/example.com/v1").status, 200)
  t.eq(req("DELETE", CRD .. "/widgets.example.com").status, 200)
  t.eq(req("GET", W).status, 404)
  -- its objects went with it
  t.eq(req("POST", CRD, json.encode(crd)).status, 201)
  t.eq(#req("GET", W).obj.items, 0)
  t.eq(req("DELETE", CRD .. "/widgets.example.com").status, 200)
end)

t.test("server-side apply of unchanged fields writes nothing; orphan deletion keeps the dependents", function()
  local cm = json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "ssa" }, data = { a = "b" } })
  local CM = "/api/v1/namespaces/default/configmaps"
  local ah = { ["Content-Type"] = "application/apply-patch+yaml" }
  local r1 = req("PATCH", CM .. "/ssa?fieldManager=me", cm, ah)
  t.eq(r1.status, 201)
  local r2 = req("PATCH", CM .. "/ssa?fieldManager=me", cm, ah)
  t.eq(r2.status, 200)
  t.eq(r2.obj.metadata.resourceVersion, r1.obj.metadata.resourceVersion)
  t.eq(req("PATCH", CM .. "/ssa", cm, ah).status, 422, "apply needs a field manager")
  local dep = json.encode({ apiVersion = "v1", kind = "Secret", metadata = { name = "dep",
    ownerReferences = { { apiVersion = "v1", kind = "ConfigMap", name = "ssa", uid = r1.obj.metadata.uid } } } })
  t.eq(req("POST", "/api/v1/namespaces/default/secrets", dep).status, 201)
  t.eq(req("DELETE", CM .. "/ssa", '{"propagationPolicy":"Orphan"}').status, 200)
  local left
  for _ = 1, 50 do
    left = req("GET", CM .. "/ssa").status
    if left == 404 then break end
    task.sleep(0.05)
  end
  t.eq(left, 404, "the owner is gone once its dependents are orphaned")
  local d = req("GET", "/api/v1/namespaces/default/secrets/dep")
  t.eq(d.status, 200)
  t.eq(d.obj.metadata.ownerReferences, nil)
end)

t.test("in process: apiserver.new, a Lua admission rule that denies and one that warns", function()
  local apiserver = require("vmsnap.apiserver")
  local d <close> = assert(fs.tempdir("vmsnap-inproc"))
  local s = assert(apiserver.new({ data = d.path, crds = { h.source .. "/scripts/crds" } }))
  s:admission("VirtualDisk", function(op, new, old, areq)
    if op == "CREATE" and not (new.metadata.labels and new.metadata.labels.team) then
      return nil, { { field = "metadata.labels", message = "Required value: every disk names its team" } }
    end
    if op == "CREATE" then areq.warn("team " .. new.metadata.labels.team .. " is over quota") end
  end)
  local port = assert(s:listen())
  local server_task = task.spawn(function() return s:serve() end)
  local url = "http://127.0.0.1:" .. port .. G .. "/namespaces/default/virtualdisks"
  local function post(labels)
    return assert(http.post(url, json.encode({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDisk",
      metadata = { name = "vd-" .. (labels and "ok" or "no"), labels = labels }, spec = {} }),
      { headers = { ["Content-Type"] = "application/json" } }))
  end
  local r = post(nil)
  t.eq(r.status, 422)
  t.contains(r.body, "metadata.labels: Required value: every disk names its team")
  r = post({ team = "db" })
  t.eq(r.status, 201)
  t.eq(r.headers["warning"], '299 - "team db is over quota"')
  s:close()
  t.ok(task.wait(server_task, 5), "serve returns after close")
end)

t.test("a second server on the same data directory is refused", function()
  local r = h.run_vmsnap({ "serve", "--data", srv.data })
  t.eq(r.status, 3)
  t.contains(r.stderr, "is in use by another process")
end)

t.test("a watch resumes from its resourceVersion after a restart; an old one gets 410", function()
  local rv = req("GET", VDS).obj.metadata.resourceVersion
  req("POST", VDS, vds("while-down-1"))
  srv:stop()
  srv:start()
  req("POST", VDS, vds("after-restart"))
  local res, next_ev = watch(VDS .. "?watch=true&timeoutSeconds=2&resourceVersion=" .. rv)
  local _ <close> = res
  t.eq(next_ev().object.metadata.name, "while-down-1")
  t.eq(next_ev().object.metadata.name, "after-restart")
end)

t.timeout = 90 -- 1,100 creates, each a commit over TLS
t.test("history compaction: watch and continue from before it are 410 Expired", function()
  local small <close> = h.apiserver({ args = { "--history", "100" } })
  local url = VDS
  for i = 1, 3 do
    small:request({ method = "POST", path = url, body = vds("early" .. i), headers = { ["Content-Type"] = "application/json" } })
  end
  local token = json.decode(assert(small:get(url .. "?limit=1")).body).metadata.continue
  t.ok(token, "a continue token")
  for i = 1, 1100 do
    small:request({ method = "POST", path = url, body = vds("c" .. i), headers = { ["Content-Type"] = "application/json" } })
  end
  local res = assert(small:request({ path = url .. "?watch=true&resourceVersion=5", stream = true, timeout = 10 }))
  local _ <close> = res
  local ev = json.decode(res:lines()())
  t.eq(ev.type, "ERROR")
  t.eq(ev.object.code, 410)
  t.eq(ev.object.reason, "Expired")
  t.contains(ev.object.message, "too old resource version: 5")
  local r = json.decode(assert(small:get(url .. "?limit=1&continue=" .. token)).body)
  t.eq(r.code, 410)
  t.eq(r.reason, "Expired")
  t.contains(r.message, "The provided continue parameter is too old")
end)

t.test("serve checks its arguments", function()
  local r = h.run_vmsnap({ "serve" })
  t.eq(r.status, 2)
  t.contains(r.stderr, "--data DIR is required")
  r = h.run_vmsnap({ "serve", "--data", "/tmp/x", "--tls-cert", "a" })
  t.eq(r.status, 2)
  t.contains(r.stderr, "--tls-cert and --tls-key go together")
  r = h.run_vmsnap({ "serve", "--data", "/tmp/x", "--token", "two words" })
  t.eq(r.status, 2)
  t.contains(r.stderr, "--token must be printable ASCII without spaces")
  t.contains(h.run_vmsnap({ "help", "serve" }).stdout, "usage: vmsnap serve --data DIR")
end)

t.test("authentication always: HTTPS with its own CA, a token on every request (loopback too), the state the owner's alone; kept across a restart", function()
  local s <close> = h.apiserver()
  t.ok(s.url:match("^https://127%.0%.0%.1:"), s.url)
  t.ok(s.token and #s.token == 64, "a generated 256-bit token in the kubeconfig")
  local r = assert(s:get("/api/v1/namespaces/default/secrets", { auth = false }))
  t.eq(r.status, 401, "no token, from loopback")
  t.eq(json.decode(r.body).reason, "Unauthorized")
  r = assert(s:get("/version", { auth = false }))
  t.eq(r.status, 401, "not even /version")
  r = assert(s:get("/api/v1/namespaces/default/secrets", { headers = { Authorization = "Bearer " .. ("0"):rep(64) } }))
  t.eq(r.status, 401, "a wrong token")
  r = assert(s:get("/healthz", { auth = false }))
  t.eq(r.status, 200, "health answers anyone")
  r = assert(s:get("/api/v1/namespaces/default/secrets"))
  t.eq(r.status, 200, "the kubeconfig's token")
  t.eq(http.get(s.url .. "/healthz", { timeout = 5 }), nil, "the certificate is the server's own CA's, not trusted without it")
  local plain = http.get((s.url:gsub("^https", "http")) .. "/healthz", { timeout = 5 })
  t.ok(plain == nil or plain.status >= 400, "no plain HTTP")
  -- the files: the directory 0700, every file 0600
  local function mode(p) return (assert(fs.stat(p)).mode or 0) & 511 end
  t.eq(mode(s.data), 448, "the data directory is 0700")
  for _, f in ipairs({ "kubeconfig", "state.db", "pki/ca.key", "pki/server.key", "pki/token" }) do
    t.eq(mode(s.data .. "/" .. f), 384, f .. " is 0600")
  end
  for _, f in ipairs(fs.list(s.data) or {}) do
    local st = fs.stat(s.data .. "/" .. f)
    if st.type == "file" then t.eq(st.mode & 511, 384, f .. " is 0600") end
  end
  local kc = fs.read_file(s.kubeconfig)
  s:stop()
  s:start()
  t.eq(fs.read_file(s.kubeconfig), kc, "the same CA, token and port after a restart")
  t.eq(assert(s:get("/api/v1/namespaces")).status, 200)
  local k = s:kubectl({ "get", "ns", "default", "-o", "name" })
  t.eq(k.status, 0, k.stderr)
  t.eq(k.stdout, "namespace/default\n")
end)

local function openssl(dir, cmd)
  assert(proc.run({ "sh", "-c", cmd }, { cwd = dir, timeout = 60, check = true }))
end

t.test("--token over TLS: requests without the bearer token are 401; kubectl uses the kubeconfig's", function()
  if not proc.run({ "openssl", "version" }, { timeout = 10 }) then
    return t.skip("token", "openssl is not installed")
  end
  local d <close> = assert(fs.tempdir("vmsnap-tok"))
  openssl(d.path, "openssl req -x509 -newkey rsa:2048 -nodes -keyout k.pem -out c.pem -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null")
  local s <close> = h.apiserver({ args = { "--token", "s3cret", "--tls-cert", d.path .. "/c.pem", "--tls-key", d.path .. "/k.pem" } })
  local tls = { ca_file = d.path .. "/c.pem" }
  local r = assert(http.get(s.url .. "/api/v1/namespaces", { tls = tls }))
  t.eq(r.status, 401)
  t.eq(json.decode(r.body).reason, "Unauthorized")
  r = assert(http.get(s.url .. "/api/v1/namespaces", { tls = tls, headers = { Authorization = "Bearer s3cret" } }))
  t.eq(r.status, 200)
  t.contains(fs.read_file(s.kubeconfig), "token: s3cret")
  if proc.run({ "kubectl", "version", "--client" }, { timeout = 30 }) then
    local k = s:kubectl({ "get", "ns", "default" })
    t.eq(k.status, 0, k.stderr)
  end
end)

t.test("TLS with client certificates (openssl-made CA, server and client certificates)", function()
  if not proc.run({ "openssl", "version" }, { timeout = 10 }) then
    return t.skip("TLS", "openssl is not installed")
  end
  local d <close> = assert(fs.tempdir("vmsnap-tls"))
  local function sh(cmd) openssl(d.path, cmd) end
  sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=vmsnap-test-ca 2>/dev/null")
  sh("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null")
  sh("printf 'subjectAltName=IP:127.0.0.1' > ext && openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 2 -extfile ext 2>/dev/null")
  sh("openssl req -newkey rsa:2048 -nodes -keyout cli.key -out cli.csr -subj /CN=admin 2>/dev/null")
  sh("openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out cli.crt -days 2 2>/dev/null")
  local p = d.path
  local s <close> = h.apiserver({ args = { "--tls-cert", p .. "/srv.crt", "--tls-key", p .. "/srv.key",
    "--client-ca", p .. "/ca.crt", "--tls-ca", p .. "/ca.crt" } })
  t.contains(fs.read_file(s.kubeconfig), "certificate-authority-data: ")
  t.ok(s.url:match("^https://"), s.url)
  local r = assert(http.get(s.url .. "/version", { tls = { ca_file = p .. "/ca.crt" } }))
  t.eq(r.status, 401, "no client certificate")
  r = assert(http.get(s.url .. "/version", { tls = { ca_file = p .. "/ca.crt", cert_file = p .. "/cli.crt", key_file = p .. "/cli.key" } }))
  t.eq(r.status, 200)
  t.eq(json.decode(r.body).gitVersion, "v1.32.0")
  local bad = http.get(s.url .. "/version", { timeout = 5 })
  t.ok(bad == nil, "the server certificate is not trusted without the CA")
end)

t.test("a stop with requests in flight (watches, creates, a request arriving while it closes) exits cleanly", function()
  for round = 1, 3 do
    local s = h.apiserver()
    local tasks = {}
    for i = 1, 20 do
      tasks[#tasks + 1] = task.spawn(function()
        if i % 2 == 0 then
          local r = s:request({ path = "/api/v1/namespaces/default/configmaps?watch=1", stream = true, timeout = 5 })
          if r then r:read_all(3) r:close() end
        else
          s:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps", timeout = 5,
            headers = { ["Content-Type"] = "application/json" },
            body = '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"x-"}}' })
        end
      end)
    end
    task.sleep(0.02 * round)
    local ok, err = pcall(s.stop, s) -- exit 0, or it raises with what happened
    t.ok(ok, ("round %d: %s"):format(round, tostring(err)))
    for _, x in ipairs(tasks) do task.wait(x, 10) end
    h.unmount_under(s.data)
    fs.remove_tree(s.data)
    fs.remove_tree(s.cache)
  end
end)

t.done()
