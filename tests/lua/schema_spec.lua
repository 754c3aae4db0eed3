-- Structural schema validation as the real API server does it: pattern,
-- format, x-kubernetes-list-type map/set, anyOf/oneOf/not, with its
-- messages; CRDs whose patterns cannot be checked are refused; the upstream
-- platform's CRDs (beside the clone) install and reject what they forbid.
local t = require("tap")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.apiserver()
local CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

local function req(method, path, body, ctype)
  local r = assert(srv:request({ method = method, path = path, body = body,
    headers = { ["Content-Type"] = ctype or "application/json" }, timeout = 20 }))
  r.obj = json.decode(r.body)
  return r
end

local function crd(name, spec_schema)
  return json.encode({ apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = name .. "s.test.vmsnap.io" },
    spec = { group = "test.vmsnap.io", scope = "Namespaced",
      names = { plural = name .. "s", singular = name, kind = name:sub(1, 1):upper() .. name:sub(2), listKind = name .. "List" },
      versions = { { name = "v1", served = true, storage = true, schema = { openAPIV3Schema = {
        type = "object", properties = { spec = spec_schema } } } } } } })
end

local W = "/apis/test.vmsnap.io/v1/namespaces/default/widgets"
local function widget(name, spec)
  return req("POST", W, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Widget", metadata = { name = name }, spec = spec }))
end

t.test("pattern, format, list-type map and set, anyOf/oneOf/not: enforced with the API server's messages", function()
  local r = req("POST", CRDS, crd("widget", { type = "object", properties = {
    code = { type = "string", pattern = "^[a-z]+(-[0-9]{2})?$" },
    when = { type = "string", format = "date-time" },
    blob = { type = "string", format = "byte" },
    small = { type = "integer", format = "int32" },
    ports = { type = "array", ["x-kubernetes-list-type"] = "map", ["x-kubernetes-list-map-keys"] = { "port", "protocol" },
      items = { type = "object", required = { "port" }, properties = { port = { type = "integer" }, protocol = { type = "string" } } } },
    tags = { type = "array", ["x-kubernetes-list-type"] = "set", items = { type = "string" } },
    either = { type = "string", anyOf = { { pattern = "^x" }, { pattern = "^y" } } },
    one = { type = "object", properties = { a = { type = "string" }, b = { type = "string" } },
      oneOf = { { required = { "a" } }, { required = { "b" } } } },
    notbad = { type = "string", ["not"] = { enum = { "bad" } } },
  } }))
  t.eq(r.status, 201, r.body)
  require("vmsnap.task").sleep(0.2)
  local ok = widget("w-ok", { code = "abc-12", when = "2026-12-01T10:00:00Z", blob = "aGVsbG8=", small = 5,
    ports = { { port = 80, protocol = "TCP" }, { port = 80, protocol = "UDP" } }, tags = { "a", "b" },
    either = "yes", one = { a = "1" }, notbad = "good" })
  t.eq(ok.status, 201, ok.body)
  local cases = {
    { { code = "ABC" }, "spec.code", [[Invalid value: "ABC": spec.code in body should match '^[a-z]+(-[0-9]{2})?$']] },
    { { code = "abc-1" }, "spec.code", "should match" },
    { { when = "yesterday" }, "spec.when", 'Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday"' },
    { { blob = "not base64!" }, "spec.blob", "must be of type byte" },
    { { small = 3000000000 }, "spec.small", "must be of type int32" },
    { { ports = { { port = 80, protocol = "TCP" }, { port = 80, protocol = "TCP" } } }, "spec.ports[1]",
      'Duplicate value: map[string]interface {}{"port":80, "protocol":"TCP"}' },
    { { tags = { "a", "b", "a" } }, "spec.tags[2]", 'Duplicate value: "a"' },
    { { either = "zzz" }, "spec.either", "must validate at least one schema (anyOf)" },
    { { one = { a = "1", b = "2" } }, "spec.one", "must validate one and only one schema (oneOf)" },
    { { one = {} }, "spec.one", "must validate one and only one schema (oneOf)" },
    { { notbad = "bad" }, "spec.notbad", "must not validate the schema (not)" },
  }
  for i, c in ipairs(cases) do
    r = widget("w-bad-" .. i, c[1])
    t.eq(r.status, 422, json.encode(c[1]))
    local cause = r.obj.details and r.obj.details.causes and r.obj.details.causes[1] or {}
    t.eq(cause.field, c[2], json.encode(c[1]))
    t.contains(r.obj.message or "", c[3])
  end
end)

t.test("ratcheting: a field as it was stored is not checked again when the CRD grew stricter; a changed one is", function()
  local c = json.decode(crd("rachet", { type = "object", properties = {
    name = { type = "string" }, size = { type = "integer" },
    ports = { type = "array", ["x-kubernetes-list-type"] = "map", ["x-kubernetes-list-map-keys"] = { "port" },
      items = { type = "object", properties = { port = { type = "integer" }, note = { type = "string" } } } } } }))
  c.spec.versions[1].subresources = { status = {} }
  c.spec.versions[1].schema.openAPIV3Schema.properties.status = { type = "object", properties = { phase = { type = "string" } } }
  t.eq(req("POST", CRDS, json.encode(c)).status, 201)
  require("vmsnap.task").sleep(0.2)
  local R = "/apis/test.vmsnap.io/v1/namespaces/default/rachets"
  local r = req("POST", R, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Rachet", metadata = { name = "old" },
    spec = { name = "UPPER", size = 500, ports = { { port = 1, note = "LOUD" }, { port = 2, note = "ok" } } } }))
  t.eq(r.status, 201, r.body)
  -- the CRD grows stricter: lower-case names, sizes up to 100, quiet notes
  local cur = req("GET", CRDS .. "/rachets.test.vmsnap.io").obj
  local props = cur.spec.versions[1].schema.openAPIV3Schema.properties.spec.properties
  props.name.pattern = "^[a-z]+$"
  props.size.maximum = 100
  props.ports.items.properties.note.pattern = "^[a-z]+$"
  r = req("PUT", CRDS .. "/rachets.test.vmsnap.io", json.encode(cur))
  t.eq(r.status, 200, r.body)
  require("vmsnap.task").sleep(0.2)
  -- a status write: the spec is as it was, and is not checked again
  local obj = req("GET", R .. "/old").obj
  obj.status = { phase = "Ready" }
  r = req("PUT", R .. "/old/status", json.encode(obj))
  t.eq(r.status, 200, "a status write of an object that breaks the new rules where it did not change: " .. r.body)
  -- a spec change elsewhere: the unchanged fields and list items pass, the changed item is checked
  r = req("PATCH", R .. "/old", '{"spec":{"ports":[{"port":1,"note":"LOUD"},{"port":2,"note":"NOW"}]}}',
    "application/merge-patch+json")
  t.eq(r.status, 422, r.body)
  t.eq(#r.obj.details.causes, 1, "only the changed item: " .. r.body)
  t.eq(r.obj.details.causes[1].field, "spec.ports[1].note")
  r = req("PATCH", R .. "/old", '{"spec":{"ports":[{"port":1,"note":"LOUD"},{"port":2,"note":"fine"}]}}',
    "application/merge-patch+json")
  t.eq(r.status, 200, "the old item with port 1 kept as it was: " .. r.body)
  r = req("PATCH", R .. "/old", '{"spec":{"size":600}}', "application/merge-patch+json")
  t.eq(r.status, 422, "a changed value meets the new rules")
  t.contains(r.obj.message or "", "spec.size in body should be less than or equal to 100")
  -- a new object meets every rule
  r = req("POST", R, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Rachet", metadata = { name = "new" },
    spec = { name = "UPPER" } }))
  t.eq(r.status, 422)
end)

t.test("ratcheting never skips a transition rule: an unchanged spec under an oldSelf rule is still checked", function()
  local c = json.decode(crd("lock", { type = "object", properties = { locked = { type = "boolean" }, x = { type = "string" } },
    ["x-kubernetes-validations"] = { { rule = "!has(oldSelf.locked) || !oldSelf.locked", message = "the lock is on" } } }))
  t.eq(req("POST", CRDS, json.encode(c)).status, 201)
  require("vmsnap.task").sleep(0.2)
  local L = "/apis/test.vmsnap.io/v1/namespaces/default/locks"
  t.eq(req("POST", L, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Lock", metadata = { name = "l" },
    spec = { locked = true } })).status, 201)
  -- a label only: the spec as it was, but its rule looks at oldSelf
  local r = req("PATCH", L .. "/l", '{"metadata":{"labels":{"a":"b"}}}', "application/merge-patch+json")
  t.eq(r.status, 422, r.body)
  t.contains(r.obj.message or "", "the lock is on")
end)

t.test("a CRD whose pattern cannot be checked is refused, naming the pattern", function()
  for _, p in ipairs({ "[a-z", "(?=x)y", "a\\1" }) do
    local r = req("POST", CRDS, crd("gadget", { type = "object", properties = { x = { type = "string", pattern = p } } }))
    t.eq(r.status, 422, p)
    t.contains(r.obj.message or "", "must be a valid regular expression", p)
    t.contains(r.obj.message or "", "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[x].pattern", p)
  end
end)

t.test("CRD definitions are checked as the real server checks them: structural, one storage version, valid defaults", function()
  local function refused(body, want)
    local r = req("POST", CRDS, body)
    t.eq(r.status, 422, want)
    t.contains(r.obj.message or "", want)
  end
  refused(crd("thing", { type = "object", properties = { x = { description = "no type" } } }),
    "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[x].type: Required value: must not be empty for specified object fields")
  refused(crd("thing", { type = "object", properties = { n = { type = "integer", default = "seven" } } }),
    "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[n].default")
  refused(crd("thing", { type = "object", properties = { s = { type = "string", enum = { "a", "b" }, default = "c" } } }),
    "Unsupported value")
  local two = json.decode(crd("thing", { type = "object" }))
  two.spec.versions[2] = { name = "v2", served = true, storage = true, schema = two.spec.versions[1].schema }
  refused(json.encode(two), "must have exactly one version marked as storage version")
  two.spec.versions[1].storage, two.spec.versions[2].storage = false, false
  refused(json.encode(two), "must have exactly one version marked as storage version")
  -- value-only schemas (inside anyOf) need no type, and a good default is kept
  local r = req("POST", CRDS, crd("thing", { type = "object", properties = {
    n = { type = "integer", default = 7 }, v = { type = "string", anyOf = { { pattern = "^a" }, { maxLength = 2 } } } } }))
  t.eq(r.status, 201, r.body)
end)

t.test("a CRD with two served versions: an object is read in the version asked, whichever it was written in", function()
  local two = json.decode(crd("multi", { type = "object", properties = { x = { type = "string" } } }))
  two.spec.versions[2] = { name = "v2", served = true, storage = false, schema = two.spec.versions[1].schema }
  t.eq(req("POST", CRDS, json.encode(two)).status, 201)
  require("vmsnap.task").sleep(0.2)
  local V1, V2 = "/apis/test.vmsnap.io/v1/namespaces/default/multis", "/apis/test.vmsnap.io/v2/namespaces/default/multis"
  local r = req("POST", V2, json.encode({ apiVersion = "test.vmsnap.io/v2", kind = "Multi", metadata = { name = "m" }, spec = { x = "y" } }))
  t.eq(r.status, 201)
  t.eq(r.obj.apiVersion, "test.vmsnap.io/v2")
  t.eq(req("GET", V1 .. "/m").obj.apiVersion, "test.vmsnap.io/v1")
  t.eq(req("GET", V2 .. "/m").obj.apiVersion, "test.vmsnap.io/v2")
  local l = req("GET", V1).obj
  t.eq(l.apiVersion, "test.vmsnap.io/v1")
  t.eq(l.items[1].apiVersion, "test.vmsnap.io/v1")
  t.eq(l.items[1].spec.x, "y")
  r = req("PATCH", V1 .. "/m", '{"spec":{"x":"z"}}', "application/merge-patch+json")
  t.eq(r.obj.apiVersion, "test.vmsnap.io/v1", r.body)
  local w = assert(srv:request({ path = V2 .. "?watch=true", stream = true, timeout = 10 }))
  local line = w:read(5) or ""
  w:close()
  t.contains(line, '"apiVersion":"test.vmsnap.io/v2"', "a watch of v2 sees v2")
  -- one change seen by watchers of both versions at once: each in its own
  -- (each reads its initial event first, so both are registered before the change)
  local w1 = assert(srv:request({ path = V1 .. "?watch=true", stream = true, timeout = 10 }))
  local w2 = assert(srv:request({ path = V2 .. "?watch=true", stream = true, timeout = 10 }))
  t.contains(w1:read(5) or "", '"type":"ADDED"')
  t.contains(w2:read(5) or "", '"type":"ADDED"')
  r = req("PATCH", V1 .. "/m", '{"spec":{"x":"both"}}', "application/merge-patch+json")
  t.eq(r.status, 200, r.body)
  local e1, e2 = w1:read(5) or "", w2:read(5) or ""
  w1:close()
  w2:close()
  t.contains(e1, '"apiVersion":"test.vmsnap.io/v1"', "the v1 watcher gets v1")
  t.contains(e2, '"apiVersion":"test.vmsnap.io/v2"', "the v2 watcher gets v2")
end)

t.test("CEL x-kubernetes-validations: rules, messages, transition rules with oldSelf, cost limits; a rule that cannot be compiled refuses the CRD", function()
  local r = req("POST", CRDS, crd("ruled", { type = "object",
    ["x-kubernetes-validations"] = { { rule = "self.max > self.min", message = "The maximum must be greater than the minimum" } },
    properties = {
      min = { type = "integer" }, max = { type = "integer" },
      name = { type = "string", ["x-kubernetes-validations"] = { { rule = "self.startsWith('n-') && size(self) <= 8" } } },
      frozen = { type = "string", ["x-kubernetes-validations"] = { { rule = "self == oldSelf", message = "frozen is immutable" } } },
      items = { type = "array", items = { type = "object", properties = { to = { type = "string" } } },
        ["x-kubernetes-validations"] = { { rule = "self.all(i, has(i.to) && size(i.to) >= 1)", message = "every item needs a to" } } },
    } }))
  t.eq(r.status, 201, r.body)
  require("vmsnap.task").sleep(0.2)
  local RU = "/apis/test.vmsnap.io/v1/namespaces/default/ruleds"
  local function ruled(name, spec)
    return req("POST", RU, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Ruled", metadata = { name = name }, spec = spec }))
  end
  t.eq(ruled("ok", { min = 1, max = 2, name = "n-a", frozen = "x", items = { { to = "a" } } }).status, 201)
  r = ruled("bad-1", { min = 2, max = 1 })
  t.eq(r.status, 422)
  t.contains(r.obj.message, 'spec: Invalid value: "object": The maximum must be greater than the minimum')
  r = ruled("bad-2", { min = 1, max = 2, name = "x-long-name" })
  t.contains(r.obj.message, "spec.name: Invalid value: \"string\": failed rule: self.startsWith('n-') && size(self) <= 8")
  r = ruled("bad-3", { min = 1, max = 2, items = { { to = "" } } })
  t.contains(r.obj.message, "every item needs a to")
  -- a transition rule: not on create, checked on update
  local cur = req("GET", RU .. "/ok").obj
  cur.spec.frozen = "y"
  r = req("PUT", RU .. "/ok", json.encode(cur))
  t.eq(r.status, 422)
  t.contains(r.obj.message, 'spec.frozen: Invalid value: "string": frozen is immutable')
  cur.spec.frozen = "x"
  cur.spec.max = 5
  t.eq(req("PUT", RU .. "/ok", json.encode(cur)).status, 200)
  -- a rule past the cost limit fails, it does not hang the server
  r = req("POST", CRDS, crd("costly", { type = "object", properties = { l = { type = "array", items = { type = "integer" },
    ["x-kubernetes-validations"] = { { rule = "self.all(x, self.all(y, self.all(z, x + y + z > 0)))" } } } } }))
  t.eq(r.status, 201)
  require("vmsnap.task").sleep(0.2)
  local many = {}
  for i = 1, 100 do many[i] = i end
  r = req("POST", "/apis/test.vmsnap.io/v1/namespaces/default/costlys", json.encode({ apiVersion = "test.vmsnap.io/v1",
    kind = "Costly", metadata = { name = "c" }, spec = { l = many } }))
  t.eq(r.status, 422)
  t.contains(r.obj.message, "cost limit exceeded")
  -- the list library and messageExpression
  r = req("POST", CRDS, crd("sorted", { type = "object", properties = { l = { type = "array", items = { type = "integer" } } },
    ["x-kubernetes-validations"] = { { rule = "self.l.isSorted() && self.l.sum() < 100",
      messageExpression = "'l must be sorted and sum below 100, it has ' + string(size(self.l)) + ' items'" } } }))
  t.eq(r.status, 201, r.body)
  require("vmsnap.task").sleep(0.2)
  local SO = "/apis/test.vmsnap.io/v1/namespaces/default/sorteds"
  local function sorted(name, l)
    return req("POST", SO, json.encode({ apiVersion = "test.vmsnap.io/v1", kind = "Sorted", metadata = { name = name }, spec = { l = l } }))
  end
  t.eq(sorted("s-ok", { 1, 2, 3 }).status, 201)
  r = sorted("s-bad", { 3, 1 })
  t.eq(r.status, 422)
  t.contains(r.obj.message, "l must be sorted and sum below 100, it has 2 items")
  -- rules that cannot be compiled refuse the CRD, naming them
  for _, bad in ipairs({ "self.max >", "duration(self.x) > duration('1s')", "self.x.bogus()" }) do
    r = req("POST", CRDS, crd("badrule", { type = "object", ["x-kubernetes-validations"] = { { rule = bad } } }))
    t.eq(r.status, 422, bad)
    t.contains(r.obj.message or "", "x-kubernetes-validations[0].rule", bad)
    t.contains(r.obj.message or "", "compilation failed", bad)
  end
end)

t.test("a pathological pattern against a long value answers in bounded time", function()
  t.eq(req("POST", CRDS, crd("slow", { type = "object", properties = { x = { type = "string", pattern = "^(a+)+$" } } })).status, 201)
  require("vmsnap.task").sleep(0.2)
  local t0 = require("vmsnap.task").now()
  local r = req("POST", "/apis/test.vmsnap.io/v1/namespaces/default/slows", json.encode({ apiVersion = "test.vmsnap.io/v1",
    kind = "Slow", metadata = { name = "s" }, spec = { x = ("a"):rep(3000) .. "!" } }))
  t.eq(r.status, 422)
  t.ok(require("vmsnap.task").now() - t0 < 3, "answered in < 3 s")
end)

t.test("the quick checks of plain leaves judge as the whole walk does: random objects against every CRD at hand", function()
  local schema = require("vmsnap.apiserver.schema")
  local deep = require("vmsnap.deep")
  local schemas = {}
  local dirs = { h.source .. "/scripts/crds", h.source .. "/deploy/crds",
    h.source .. "/../shared/upstream/dvp-crds", h.source .. "/../shared/upstream/dvp-crds/embedded" }
  for _, d in ipairs(dirs) do
    for _, f in ipairs(fs.exists(d) and assert(fs.list(d)) or {}) do
      if f:match("%.yaml$") then
        for _, doc in ipairs(assert(yaml.load_all(assert(fs.read_file(d .. "/" .. f))))) do
          if type(doc) == "table" and doc.kind == "CustomResourceDefinition" then
            for _, v in ipairs(doc.spec.versions or {}) do
              if v.schema and v.schema.openAPIV3Schema then schemas[#schemas + 1] = v.schema.openAPIV3Schema end
            end
          end
        end
      end
    end
  end
  t.ok(#schemas >= 10, #schemas .. " schemas")
  math.randomseed(20261204)
  local rnd = math.random
  local WRONG = { "x", 7, 2.5, true, json.null, {}, json.array({ 1 }) }
  -- a value for schema node s: mostly what it asks for, now and then not
  local function gen(s, d)
    if type(s) ~= "table" then return "x" end
    if rnd(12) == 1 then return WRONG[rnd(#WRONG)] end
    if type(s.enum) == "table" and #s.enum > 0 and rnd(4) > 1 then return deep.copy(s.enum[rnd(#s.enum)]) end
    local ty = s.type
    if ty == "string" then
      local pick = { "abc", "", "2026-12-01T00:00:00Z", "Ready", "not-in-any-enum", ("y"):rep(300), "a\u{e9}" }
      return pick[rnd(#pick)]
    elseif ty == "integer" then
      return ({ 0, 1, -3, 3000000000, 42 })[rnd(5)]
    elseif ty == "number" then
      return ({ 0, 1.5, -2, 1e9 })[rnd(4)]
    elseif ty == "boolean" then
      return rnd(2) == 1
    elseif ty == "array" then
      local a = json.array()
      if d < 6 then
        for i = 1, rnd(0, 3) do a[i] = gen(s.items, d + 1) end
      end
      return a
    end
    local o = {}
    if d < 6 then
      for k, ps in pairs(type(s.properties) == "table" and s.properties or {}) do
        if rnd(3) > 1 and k ~= "metadata" then o[k] = gen(ps, d + 1) end
      end
      if type(s.additionalProperties) == "table" and rnd(2) == 1 then o["k" .. rnd(9)] = gen(s.additionalProperties, d + 1) end
    end
    if rnd(10) == 1 then o["unknown" .. rnd(3)] = "u" end
    return o
  end
  local function judged(s, obj, old, quick)
    schema.quick = quick
    local o = deep.copy(obj)
    local causes, unknown = schema.apply(s, o, { keep_unknown = false, old = old and deep.copy(old) })
    schema.quick = true
    return { causes = causes, unknown = unknown, obj = o }
  end
  local n, refused = 0, 0
  for _ = 1, 8 do
    for _, s in ipairs(schemas) do
      local obj, old = gen(s, 0), nil
      if type(obj) ~= "table" or obj == json.null or json.is_array(obj) then obj = {} end
      if rnd(2) == 1 then
        old = gen(s, 0)
        if type(old) ~= "table" or old == json.null or json.is_array(old) then old = nil end
      end
      local fast, whole = judged(s, obj, old, true), judged(s, obj, old, false)
      n = n + 1
      if #whole.causes > 0 then refused = refused + 1 end
      if not deep.equal(fast, whole) then
        t.eq(json.encode(fast), json.encode(whole), "the same causes, unknown fields and object")
      end
    end
  end
  -- both kinds were judged: a test of accepted objects alone would miss a
  -- quick check that lets a bad value through
  t.ok(refused > n / 10 and refused < n, ("%d of %d objects refused"):format(refused, n))
end)

local UP = h.source .. "/../shared/upstream/dvp-crds"
if not fs.exists(UP) then
  t.skip("the upstream platform's CRDs", "not beside the clone: " .. UP)
  return t.done()
end

t.test("the upstream platform's CRDs install, and their schemas reject what they forbid", function()
  local n = 0
  for _, f in ipairs(assert(fs.list(UP))) do
    if f:match("%.yaml$") then
      local doc = assert(yaml.load(assert(fs.read_file(UP .. "/" .. f))))
      local name = doc.metadata.name
      local cur = req("GET", CRDS .. "/" .. name)
      local r
      if cur.status == 200 then
        doc.metadata.resourceVersion = cur.obj.metadata.resourceVersion
        r = req("PUT", CRDS .. "/" .. name, json.encode(doc))
      else
        r = req("POST", CRDS, json.encode(doc))
      end
      t.ok(r.status == 200 or r.status == 201, f .. ": " .. (r.obj and r.obj.message or r.body))
      n = n + 1
    end
  end
  t.ok(n >= 15, n .. " CRDs")
  require("vmsnap.task").sleep(0.3)
  local MAC = "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachinemacaddresses"
  local function mac(name, address)
    return req("POST", MAC, json.encode({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineMACAddress",
      metadata = { name = name }, spec = { address = address } }))
  end
  t.eq(mac("mac-ok", "aa:bb:cc:dd:ee:ff").status, 201)
  local r = mac("mac-bad", "aa:bb:cc")
  t.eq(r.status, 422)
  t.contains(r.obj.message, [[spec.address in body should match '^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$']])
  -- an upstream CEL rule: a restore's nameReplacements "to" must be 1..59 characters
  local VMOP = "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachineoperations"
  local op = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineOperation",
    metadata = { name = "op-start" }, spec = { type = "Start", virtualMachineName = "vm", force = true } }
  r = req("POST", VMOP, json.encode(op))
  t.eq(r.status, 422, r.body)
  t.contains(r.obj.message, "The `Start` operation cannot be performed forcibly.")
  op.spec.force = nil
  t.eq(req("POST", VMOP, json.encode(op)).status, 201)
end)

t.done()
