-- The API server's pure parts: selectors, patches, field ownership, schemas,
-- tables, quantities and the protobuf envelope.
local t = require("tap")
local json = require("vmsnap.json")
local select = require("vmsnap.apiserver.select")
local patch = require("vmsnap.apiserver.patch")
local schema = require("vmsnap.apiserver.schema")
local tbl = require("vmsnap.apiserver.table")
local quantity = require("vmsnap.quantity")
local protobuf = require("vmsnap.apiserver.protobuf")
local api = require("vmsnap.apiserver")

t.test("label selectors: =, ==, !=, in, notin, exists, !exists, gt/lt, AND", function()
  local function m(sel, labels)
    local f, err = select.parse_labels(sel)
    assert(f, err)
    return f(labels)
  end
  t.eq(m("app=web", { app = "web" }), true)
  t.eq(m("app==web", { app = "db" }), false)
  t.eq(m("app!=web", {}), true)
  t.eq(m("app in (web, db)", { app = "db" }), true)
  t.eq(m("app notin (web,db)", {}), true)
  t.eq(m("app notin (web,db)", { app = "web" }), false)
  t.eq(m("app", { app = "" }), true)
  t.eq(m("!app", { app = "x" }), false)
  t.eq(m("size>3", { size = "4" }), true)
  t.eq(m("size<3", { size = "x" }), false)
  t.eq(m("app=web,tier in (a,b)", { app = "web", tier = "c" }), false)
  t.eq(m("example.com/role=x", { ["example.com/role"] = "x" }), true)
  for _, bad in ipairs({ "app in (", "=x", "a b", "app=-bad-", "size>x", "Bad.Prefix/x=y" }) do
    local f, err = select.parse_labels(bad)
    t.eq(f, nil, bad)
    t.contains(err, "unable to parse requirement", bad)
  end
  t.eq(select.parse_labels(""), nil)
end)

t.test("field selectors: escapes, !=, allowed fields", function()
  local allow = function(f) return f == "metadata.name" or f == "involvedObject.name" end
  local f = assert(select.parse_fields("metadata.name=a\\,b", allow))
  t.eq(f({ metadata = { name = "a,b" } }), true)
  f = assert(select.parse_fields("involvedObject.name!=x,metadata.name==y", allow))
  t.eq(f({ metadata = { name = "y" }, involvedObject = { name = "z" } }), true)
  t.eq(f({ metadata = { name = "y" }, involvedObject = { name = "x" } }), false)
  local bad, err = select.parse_fields("spec.x=1", allow)
  t.eq(bad, nil)
  t.eq(err, "field label not supported: spec.x")
  bad, err = select.parse_fields("metadata.name", allow)
  t.contains(err, "invalid selector")
end)

t.test("merge patch (RFC 7386) and strategic merge of lists by name", function()
  local out = patch.merge({ a = 1, b = { c = 2, d = 3 }, l = { 1, 2 } }, { b = { c = json.null, e = 4 }, l = { 3 } })
  t.eq(json.encode(out), '{"a":1,"b":{"d":3,"e":4},"l":[3]}')
  local s = patch.strategic({ list = { { name = "a", v = 1 }, { name = "b", v = 2 } } },
    { list = { { name = "b", v = 3 }, { name = "c", v = 4 }, { name = "a", ["$patch"] = "delete" } },
      ["$setElementOrder/list"] = { { name = "b" } } })
  t.eq(json.encode(s), '{"list":[{"name":"b","v":3},{"name":"c","v":4}]}')
end)

t.test("JSON patch (RFC 6902): every operation, and failures that name the path", function()
  local doc = { a = { b = 1 }, l = json.array({ 1, 2, 3 }) }
  local out = assert(patch.json_patch(doc, json.decode([[
    [{"op":"add","path":"/a/c","value":2},{"op":"remove","path":"/a/b"},
     {"op":"replace","path":"/l/0","value":9},{"op":"add","path":"/l/-","value":4},
     {"op":"move","from":"/a/c","path":"/m"},{"op":"copy","from":"/m","path":"/n"},
     {"op":"test","path":"/n","value":2},{"op":"add","path":"/x~1y","value":true}] ]])))
  t.eq(json.encode(out), '{"a":{},"l":[9,2,3,4],"m":2,"n":2,"x/y":true}')
  t.eq(doc.a.b, 1, "the input is not modified")
  local bad, err = patch.json_patch(doc, json.decode('[{"op":"remove","path":"/nope"}]'))
  t.eq(bad, nil)
  t.contains(err, "/nope")
  bad, err = patch.json_patch(doc, json.decode('[{"op":"test","path":"/a/b","value":2}]'))
  t.contains(err, "testing value /a/b failed")
  bad, err = patch.json_patch(doc, json.decode('[{"op":"frob","path":"/a"}]'))
  t.contains(err, "frob")
end)

t.test("updates: each manager owns what it changed; untouched entries are kept as stored", function()
  local t1, t2, t3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"
  local function owners(obj)
    local out = {}
    for _, e in ipairs(obj.metadata.managedFields or {}) do
      local paths = {}
      local function walk(f, prefix)
        local leaf = true
        for k, v in pairs(f) do
          if k:sub(1, 2) == "f:" then leaf = false walk(v, prefix .. "." .. k:sub(3)) end
        end
        if leaf then paths[#paths + 1] = prefix end
      end
      walk(e.fieldsV1, "")
      table.sort(paths)
      out[e.manager .. (e.subresource and ("/" .. e.subresource) or "")] = table.concat(paths, " ")
    end
    return out
  end
  local created = { apiVersion = "v1", kind = "X", metadata = { name = "x", labels = { l = "1" } }, spec = { a = 1, b = 2 } }
  patch.record_update(nil, created, "maker", "v1", t1)
  t.eq(owners(created), { maker = ".metadata.labels.l .spec.a .spec.b" })
  -- another manager changes spec.a: it owns it now; the maker keeps the rest
  local upd = schema.copy(created)
  upd.spec.a = 10
  patch.record_update(created, upd, "editor", "v1", t2)
  t.eq(owners(upd), { maker = ".metadata.labels.l .spec.b", editor = ".spec.a" })
  -- a status write (the subresource's own entry); the others are as they were stored
  local st = schema.copy(upd)
  st.status = { phase = "Ready", conditions = json.array({ { type = "Ready", status = "True" } }) }
  patch.record_update(upd, st, "controller", "v1", t3, "status")
  t.eq(owners(st), { maker = ".metadata.labels.l .spec.b", editor = ".spec.a",
    ["controller/status"] = ".status.conditions .status.phase" })
  for _, e in ipairs(st.metadata.managedFields) do
    if e.manager == "maker" then t.eq(e.time, t1, "the maker's entry keeps its time") end
    if e.manager == "controller" then t.eq(e.time, t3) end
  end
  -- the editor removes spec.b and the label: the maker owns nothing and its entry goes
  local rm = schema.copy(st)
  rm.spec.b = nil
  rm.metadata.labels = nil
  patch.record_update(st, rm, "editor", "v1", t3)
  t.eq(owners(rm), { editor = ".spec.a", ["controller/status"] = ".status.conditions .status.phase" })
  -- an update that changes nothing changes no entry
  local same = schema.copy(rm)
  patch.record_update(rm, same, "someone", "v1", t3)
  t.eq(same.metadata.managedFields, rm.metadata.managedFields)
  -- the controller writes its own fields again: its entry is as it was but for the time and version
  local t4 = "2026-01-01T00:00:04Z"
  local again = schema.copy(rm)
  again.status.phase = "Failed"
  patch.record_update(rm, again, "controller", "v2", t4, "status")
  t.eq(owners(again), owners(rm))
  local function entry(o, m)
    for _, e in ipairs(o.metadata.managedFields) do if e.manager == m then return e end end
  end
  t.eq(entry(again, "controller").time, t4)
  t.eq(entry(again, "controller").apiVersion, "v2")
  t.eq(entry(again, "controller").fieldsV1, entry(rm, "controller").fieldsV1)
  t.eq(entry(again, "editor"), entry(rm, "editor"))
  -- and a field it did not own: added to its entry
  local more = schema.copy(again)
  more.status.progress = "50%"
  patch.record_update(again, more, "controller", "v2", t4, "status")
  t.eq(owners(more)["controller/status"], ".status.conditions .status.phase .status.progress")
  -- a field that another manager owned moves to the writer, who owns it as a leaf
  local took = schema.copy(more)
  took.spec.a = 11
  patch.record_update(more, took, "controller", "v2", t4)
  t.eq(owners(took).editor, nil, "the editor owned only spec.a: its entry goes")
  t.eq(owners(took).controller, ".spec.a")
end)

t.test("an update's changed and removed paths, walked side by side, are what its leaf sets say; a create's fields are its leaves", function()
  -- 4,000 random pairs (objects nested 4 deep, empty objects, lists, nulls;
  -- a copy, a copy with a new spec, an unrelated object) against the
  -- definition: changed = leaves of new whose value differs, removed =
  -- leaves of old that new lacks
  local rnd = 12345
  local function random(n) rnd = (rnd * 1103515245 + 12345) % 2147483648 return rnd % n + 1 end
  local function gen(depth)
    if depth > 3 or random(10) <= 3 then
      local c = random(5)
      if c == 1 then return random(3) elseif c == 2 then return "s" .. random(2) elseif c == 3 then return json.null
      elseif c == 4 then return json.array({ random(2) }) end
      return {}
    end
    local o = {}
    for _, k in ipairs({ "a", "b", "c", "d" }) do if random(2) == 1 then o[k] = gen(depth + 1) end end
    return o
  end
  local function obj()
    return { apiVersion = "v1", kind = "X", spec = gen(1), status = gen(1), extra = random(2) == 1 and gen(1) or nil,
      metadata = { name = "n", labels = gen(2), annotations = gen(2), resourceVersion = tostring(random(9)) } }
  end
  local function by_leaves(old, new, status_only)
    local before, after = patch.leaves(old, status_only), patch.leaves(new, status_only)
    local changed, removed = {}, {}
    for p, v in pairs(after) do if not patch.equal(before[p], v) then changed[p] = true end end
    for p in pairs(before) do if after[p] == nil then removed[p] = true end end
    return changed, removed
  end
  local differing = 0
  for i = 1, 4000 do
    local a = obj()
    local b = random(3) == 1 and obj() or schema.copy(a)
    if random(2) == 1 then b.spec = gen(1) end
    for _, status_only in ipairs({ false, true }) do
      local c1, r1 = by_leaves(a, b, status_only)
      local c2, r2 = patch.changes(a, b, status_only)
      if not (patch.equal(c1, c2) and patch.equal(r1, r2)) then
        t.eq({ changed = c2, removed = r2 }, { changed = c1, removed = r1 },
          ("pair %d (status only: %s): %s -> %s"):format(i, tostring(status_only), json.encode(a), json.encode(b)))
      end
      if next(c1) or next(r1) then differing = differing + 1 end
    end
  end
  t.ok(differing > 2000, "most pairs differ somewhere: " .. differing)
  -- a create's FieldsV1, walked once, is the tree of the object's leaf paths
  local function tree_of_leaves(o)
    local root = {}
    for p in pairs(patch.leaves(o, false)) do
      local node = root
      for k in p:gmatch("\1([^\1]*)") do
        node["f:" .. k] = node["f:" .. k] or {}
        node = node["f:" .. k]
      end
    end
    return root
  end
  for i = 1, 2000 do
    local o = obj()
    local want, got = tree_of_leaves(o), patch.fields_of(o)
    if not patch.equal(got, want) then t.eq(got, want, ("object %d: %s"):format(i, json.encode(o))) end
  end
  -- chains of updates by three managers, through the main object and
  -- status: each step's managedFields as the leaf-set definition gives them
  local managers = { "m1", "m2", "m3" }
  local steps = 0
  for chain = 1, 300 do
    local a = obj()
    patch.record_update(nil, a, "m1", "v1", "t0")
    for step = 1, 8 do
      local b = random(4) == 1 and obj() or schema.copy(a)
      if random(2) == 1 then b.spec = gen(1) end
      if random(2) == 1 then b.status = gen(1) end
      if random(3) == 1 then b.metadata.labels = gen(2) end
      b.metadata.managedFields = schema.copy(a.metadata.managedFields)
      local mgr, sub = managers[random(3)], random(3) == 1 and "status" or nil
      local fast, slow = schema.copy(b), schema.copy(b)
      patch.record_update(a, fast, mgr, "v1", "t" .. step, sub)
      patch.record_by_leaves(a, slow, mgr, "v1", "t" .. step, sub)
      steps = steps + 1
      if not patch.equal(fast.metadata.managedFields, slow.metadata.managedFields) then
        t.eq(fast.metadata.managedFields, slow.metadata.managedFields,
          ("chain %d step %d (%s %s): %s -> %s"):format(chain, step, mgr, tostring(sub), json.encode(a), json.encode(b)))
      end
      a = fast
    end
  end
  t.eq(steps, 2400)
end)

t.test("server-side apply: ownership, conflicts, force and removal of dropped fields", function()
  local now = "2026-01-01T00:00:00Z"
  local a = { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "x", labels = { a = "1" } }, data = { k = "v", j = "w" } }
  local live = assert(patch.apply(nil, a, "mgr-a", false, "v1", now))
  t.eq(live.data.k, "v")
  t.eq(live.metadata.managedFields[1].manager, "mgr-a")
  t.eq(live.metadata.managedFields[1].operation, "Apply")
  t.ok(live.metadata.managedFields[1].fieldsV1["f:data"]["f:k"], "fieldsV1 names the owned field")
  -- an update by someone else takes the field it changed
  local upd = schema.copy(live)
  upd.data.k = "changed"
  patch.record_update(live, upd, "editor", "v1", now)
  -- re-applying the old value conflicts
  local res, conflicts = patch.apply(upd, a, "mgr-a", false, "v1", now)
  t.eq(res, nil)
  t.eq(#conflicts, 1)
  t.eq(conflicts[1].path, ".data.k")
  t.eq(conflicts[1].manager, "editor")
  t.eq(patch.conflict_message(conflicts), 'Apply failed with 1 conflict: conflict with "editor" using v1: .data.k')
  -- force takes it back
  res = assert(patch.apply(upd, a, "mgr-a", true, "v1", now))
  t.eq(res.data.k, "v")
  -- dropping j from the applied config removes it (nobody else owns it)
  local b = schema.copy(a)
  b.data.j = nil
  res = assert(patch.apply(res, b, "mgr-a", false, "v1", now))
  t.eq(res.data.j, nil)
  t.eq(res.data.k, "v")
end)

t.test("schema: defaults, required, types, enums, bounds, pruning", function()
  local s = { type = "object", properties = { spec = { type = "object", required = { "name" },
    properties = { name = { type = "string", minLength = 1 }, on = { type = "boolean", default = true },
      mode = { type = "string", enum = { "A", "B" } }, n = { type = "integer", minimum = 1, maximum = 3 },
      list = { type = "array", maxItems = 1, items = { type = "string" } },
      any = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true },
      size = { ["x-kubernetes-int-or-string"] = true } } } } }
  local obj = { spec = { name = "", mode = "C", n = 5, list = { "a", 2 }, any = { x = 1 }, size = "1Gi", extra = 1 } }
  local causes, unknown = schema.apply(s, obj)
  local got = {}
  for _, c in ipairs(causes) do got[#got + 1] = c.field .. ": " .. c.message end
  table.sort(got)
  t.eq(table.concat(got, "\n"), table.concat({
    'spec.list: Too many: 2: must have at most 1 items',
    'spec.list[1]: Invalid value: "integer": spec.list[1] in body must be of type string: "integer"',
    'spec.mode: Unsupported value: "C": supported values: "A", "B"',
    'spec.n: Invalid value: 5: spec.n in body should be less than or equal to 3',
    'spec.name: Invalid value: "": spec.name in body should be at least 1 chars long',
  }, "\n"))
  t.eq(obj.spec.on, true, "defaulted")
  t.eq(unknown[1], "spec.extra")
  t.eq(obj.spec.extra, nil, "pruned")
  t.eq(obj.spec.any.x, 1, "preserved")
  causes = schema.apply(s, { spec = {} })
  t.eq(causes[1].field, "spec.name")
  t.eq(causes[1].message, "Required value")
end)

t.test("schema: maxProperties and minProperties count what is kept (defaults in, pruned fields out)", function()
  local s = { type = "object", properties = {
    labels = { type = "object", maxProperties = 2, minProperties = 1, additionalProperties = { type = "string" } },
    fixed = { type = "object", maxProperties = 1, properties = { a = { type = "string" }, b = { type = "string", default = "x" } } } } }
  local function check(obj)
    local got = {}
    for _, c in ipairs((schema.apply(s, obj))) do got[#got + 1] = c.field .. ": " .. c.reason .. ": " .. c.message end
    table.sort(got)
    return table.concat(got, "\n")
  end
  t.eq(check({ labels = { a = "1", b = "2" }, fixed = {} }), "", "at the bounds; b's default alone")
  t.eq(check({ labels = { a = "1", b = "2", c = "3" } }), "labels: FieldValueTooMany: Too many: 3: must have at most 2 properties")
  t.eq(check({ labels = {} }), "labels: FieldValueInvalid: Invalid value: 0: labels in body should have at least 1 properties")
  -- the default makes two; an unknown field (pruned) does not count
  t.eq(check({ fixed = { a = "1" } }), "fixed: FieldValueTooMany: Too many: 2: must have at most 1 properties")
  t.eq(check({ fixed = { zzz = "pruned" } }), "", "a pruned field is not counted")
end)

t.test("tables: human durations, JSONPath columns, filters", function()
  local H = tbl.human_duration
  t.eq(H(45), "45s")
  t.eq(H(182), "3m2s")
  t.eq(H(67 * 60), "67m")
  t.eq(H(5 * 3600 + 600), "5h10m")
  t.eq(H(3 * 86400), "3d")
  t.eq(H(-5), "<invalid>")
  t.eq(tbl.parse_time("1970-01-02T00:00:01Z"), 86401)
  local obj = { status = { conditions = { { type = "Ready", status = "False" }, { type = "InUse", status = "True" } } } }
  t.eq(tbl.jsonpath(obj, ".status.conditions[?(@.type=='InUse')].status")[1], "True")
  t.eq(tbl.jsonpath(obj, ".status.conditions[0].type")[1], "Ready")
  t.eq(#tbl.jsonpath(obj, ".status.conditions[*].type"), 2)
  local res = { columns = { { name = "Name", jsonPath = ".metadata.name" }, { name = "Ok", type = "boolean", jsonPath = ".status.ok" },
    { name = "Age", type = "date", jsonPath = ".metadata.creationTimestamp" } } }
  local row = tbl.row(res, { metadata = { name = "n", creationTimestamp = "1970-01-01T00:00:00Z" }, status = {} }, 60)
  t.eq(json.encode(row.cells), '["n",null,"60s"]')
  t.eq(row.object.kind, "PartialObjectMetadata")
end)

t.test("quantities", function()
  t.eq(quantity.parse("5Gi"), 5 * 1024 ^ 3 // 1)
  t.eq(quantity.parse("1500M"), 1500000000)
  t.eq(quantity.parse("10"), 10)
  t.eq(quantity.parse("1.5Ki"), 1536)
  t.eq(quantity.parse("1e3"), 1000)
  t.eq(quantity.parse(42), 42)
  t.eq(quantity.parse("5 Gi"), nil)
  t.eq(quantity.parse("5Qi"), nil)
  t.eq(quantity.format(5 * 1024 ^ 3), "5Gi")
  t.eq(quantity.format(1000), "1000")
end)

t.test("protobuf envelope of a Secret and a Namespace; other kinds are refused clearly", function()
  local function varint(n)
    local s = ""
    repeat
      local b = n & 0x7f
      n = n >> 7
      s = s .. string.char(n > 0 and (b | 0x80) or b)
    until n == 0
    return s
  end
  local function field(num, bytes) return varint(num << 3 | 2) .. varint(#bytes) .. bytes end
  local function entry(k, v) return field(1, k) .. field(2, v) end
  local meta = field(1, "s1") .. field(2, "") .. field(3, "ns") .. field(11, entry("app", "x"))
  local secret = field(1, meta) .. field(2, entry("user", "admin")) .. field(3, "Opaque")
  local env = "k8s\0" .. field(1, field(1, "v1") .. field(2, "Secret")) .. field(2, secret)
  local obj = assert(protobuf.decode(env, api.base64))
  t.eq(obj.kind, "Secret")
  t.eq(obj.metadata.name, "s1")
  t.eq(obj.metadata.generateName, nil, "empty proto2 strings are absent")
  t.eq(obj.metadata.labels.app, "x")
  t.eq(obj.data.user, "YWRtaW4=")
  local bad = "k8s\0" .. field(1, field(1, "v1") .. field(2, "Pod")) .. field(2, field(1, meta))
  local none, err = protobuf.decode(bad, api.base64)
  t.eq(none, nil)
  t.contains(err, "not Pod")
  none, err = protobuf.decode("k8s\0\255", api.base64)
  t.contains(err, "malformed protobuf body")
end)

t.test("base64 and names", function()
  t.eq(api.base64(""), "")
  t.eq(api.base64("a"), "YQ==")
  t.eq(api.base64("ab"), "YWI=")
  t.eq(api.base64("abc"), "YWJj")
  t.eq(api.is_subdomain("a.b-c"), true)
  t.eq(api.is_subdomain("A"), false)
  t.eq(api.is_subdomain("-a"), false)
  t.eq(api.is_subdomain(string.rep("a", 254)), false)
end)

t.test("schemas: validation judges an update's subtree as sent, whatever a first pass defaulted in it", function()
  local s = { type = "object", properties = { spec = { type = "object", properties = {
    x = { type = "object", properties = { d = { type = "string", default = "dflt" }, n = { type = "integer" } },
      ["x-kubernetes-validations"] = { { rule = "!has(self.d) || self.n >= 0", message = "n must not be negative with d" } } },
    y = { type = "string", maxLength = 3 } } } } }
  -- stored before the CRD grew its rule; the write omits the defaulted
  -- field (as sent, x is not as stored: it is checked, with d defaulted)
  local old = { spec = { x = { d = "dflt", n = -1 } } }
  local causes = schema.apply(s, { spec = { x = { n = -1 } } }, { old = old })
  t.eq(#causes, 1, "the changed subtree is checked: " .. json.encode(causes))
  t.eq(causes[1] and causes[1].field, "spec.x")
  -- the same answer when another field fails too
  causes = schema.apply(s, { spec = { x = { n = -1 }, y = "toolong" } }, { old = old })
  t.eq(#causes, 2, json.encode(causes))
  -- unchanged as stored: ratcheted
  causes = schema.apply(s, { spec = { x = { d = "dflt", n = -1 } } }, { old = old })
  t.eq(#causes, 0, json.encode(causes))
  -- and a write that passes is defaulted
  local ok = { spec = { x = { n = 1 } } }
  t.eq(#schema.apply(s, ok, { old = old }), 0)
  t.eq(ok.spec.x.d, "dflt")
end)

t.done()
