local t = require("tap")
local yaml = require("vmsnap.yaml")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local h = require("helpers")

local function roundtrip(doc, what)
  local text = assert(yaml.dump(doc))
  local back, err = yaml.load(text)
  t.ok(back ~= nil, (what or "") .. " reloads: " .. tostring(err) .. "\n" .. text)
  t.eq(back, doc, what)
  return text
end

local function guide_docs()
  local docs = {}
  local text = fs.read_file(h.source .. "/tests/data/user-guide-manifests.yaml")
  for _, d in ipairs(assert(yaml.load_all(assert(text)))) do docs[#docs + 1] = d end
  return docs, text
end

t.test("the user guide's manifests load and dump back to equal data", function()
  local docs = guide_docs()
  t.eq(#docs, 4)
  t.eq(docs[1].kind, "VirtualDiskSnapshot")
  t.eq(docs[1].spec.requiredConsistency, true)
  t.eq(docs[2].spec.dataSource.objectRef.kind, "VirtualDiskSnapshot")
  t.eq(docs[2].spec.persistentVolumeClaim.size, "10Gi")
  t.eq(docs[3].spec.volumeSnapshotClasses[1].volumeSnapshotClassName, "sds-replicated-volume")
  t.eq(#docs[4].spec.nameReplacements, 4)
  t.eq(docs[4].spec.nameReplacements[2].to, "linux-vm-root-2")
  for i, d in ipairs(docs) do roundtrip(d, "manifest " .. i) end
  local all = assert(yaml.dump_all(docs))
  t.eq(yaml.load_all(all), docs)
end)

t.test("the manifests straight from shared/spec/user-guide.ru.txt, when present", function()
  local guide = fs.read_file(h.source .. "/../shared/spec/user-guide.ru.txt")
  if not guide then return end
  local n = 0
  for body in guide:gmatch("<<EOF\n(.-)\nEOF") do
    local doc = assert(yaml.load(body))
    roundtrip(doc, "guide manifest")
    n = n + 1
  end
  t.eq(n, 4)
end)

t.test("Kubernetes manifests: block scalars, comments, multi-doc, quoting", function()
  local text = [[
apiVersion: v1
kind: ConfigMap
metadata:
  name: cloud-init   # a comment
  labels: {app: "demo", tier: '01'}
  annotations:
    vmsnap.io/note: "yes"
data:
  user-data: |
    #cloud-config
    runcmd:
      - echo "hi"
  folded: >
    one
    two
  port: "8080"
  on: "on"
  empty: ""
  version: 1.10
---
---
kind: Secret
stringData:
  key: value
]]
  local docs = assert(yaml.load_all(text))
  t.eq(#docs, 2, "empty documents are skipped")
  local cm = docs[1]
  t.eq(cm.data["user-data"], '#cloud-config\nruncmd:\n  - echo "hi"\n')
  t.eq(cm.data.folded, "one two\n")
  t.eq(cm.data.port, "8080")
  t.eq(cm.metadata.labels.tier, "01")
  t.eq(cm.metadata.annotations["vmsnap.io/note"], "yes")
  t.eq(cm.data.version, 1.1)
  local out = roundtrip(cm)
  t.contains(out, "user-data: |")
  t.contains(out, 'port: "8080"')
  t.contains(out, 'note: "yes"')
end)

t.test("sequences of sequences (a nested sequence's end is not its parent's)", function()
  for text, want in pairs({ ["[[a], b]"] = '[["a"],"b"]', ["[[a]]"] = '[["a"]]', ["[a, [b], c]"] = '["a",["b"],"c"]',
      ["x: [[a], [b, [c]]]"] = '{"x":[["a"],["b",["c"]]]}', ["- - a\n  - b\n- c\n"] = '[["a","b"],"c"]',
      ["[[], [[]], {}]"] = "[[],[[]],{}]" }) do
    local v, err = yaml.load(text)
    t.eq(v and json.encode(v), want, text .. " " .. tostring(err))
  end
  -- and what dump writes of them reads back
  local v = { { "a", { "b" } }, "c" }
  t.eq(json.encode(yaml.load(assert(yaml.dump(v)))), json.encode(v))
end)

t.test("plain scalars resolve like Kubernetes' reader", function()
  local v = assert(yaml.load("a: yes\nb: off\nc: ~\nd: 0x1f\ne: 0o17\nf: -12\ng: .inf\nh: 2026-11-24\ni: '12'\nj: !!str 12\nk:\n"))
  t.eq(v.a, true)
  t.eq(v.b, false)
  t.eq(v.c, yaml.null)
  t.eq(v.d, 31)
  t.eq(v.e, 15)
  t.eq(v.f, -12)
  t.eq(v.g, math.huge)
  t.eq(v.h, "2026-11-24")
  t.eq(v.i, "12")
  t.eq(v.j, "12")
  t.eq(v.k, yaml.null)
end)

t.test("anchors, aliases and merge keys", function()
  local v = assert(yaml.load("base: &b {x: 1, y: 2}\nuse: *b\nmerged:\n  <<: *b\n  y: 3\n"))
  t.eq(v.use, { x = 1, y = 2 })
  t.eq(v.merged, { x = 1, y = 3 })
end)

t.test("parse errors carry line and column", function()
  local v, err, code = yaml.load("a: 1\nb: [1, 2\nc: 3\n")
  t.eq({ v, code }, { nil, "YAML_PARSE" })
  t.contains(err, "yaml: line ")
  t.ok(err:match("line %d+ column %d+"), err)
  v, err, code = yaml.load("a: *nope\n")
  t.eq(code, "YAML_PARSE")
  t.contains(err, "unknown alias")
end)

t.test("dump quotes what would read back as another type", function()
  local doc = { a = "true", b = "null", c = "123", d = "", e = "1.5", f = "plain", g = "yes", h = "a: b" }
  local text = roundtrip(doc)
  t.contains(text, "f: plain")
end)

t.test("empty containers and json interop", function()
  local doc = assert(json.decode('{"list":[],"map":{},"n":null,"nested":[{"a":[]}]}'))
  local text = roundtrip(doc)
  t.contains(text, "list: []")
  t.contains(text, "map: {}")
  t.eq(json.encode(assert(yaml.load(text))), '{"list":[],"map":{},"n":null,"nested":[{"a":[]}]}')
end)

t.test("dump failures return YAML_EMIT", function()
  t.eq(select(3, yaml.dump({ f = print })), "YAML_EMIT")
end)

t.test("aliases: a bomb is refused before it is expanded, a recursive alias is an error, ordinary aliases work", function()
  local lines = { 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]' }
  for i = 1, 9 do lines[#lines + 1] = ("a%d: &a%d [%s]"):format(i, i, ("*a" .. (i - 1) .. ","):rep(10):sub(1, -2)) end
  local t0 = os.clock()
  local v, err = yaml.load(table.concat(lines, "\n"))
  t.eq(v, nil)
  t.contains(err, "document contains excessive aliasing")
  t.ok(os.clock() - t0 < 0.5, "refused without expanding 10^10 leaves")
  v, err = yaml.load("a: &a [*a]")
  t.eq(v, nil)
  t.contains(err, "recursive")
  v = assert(yaml.load("base: &b {x: 1}\none: *b\ntwo: *b\n"))
  t.eq(v.one.x, 1)
  t.eq(v.two.x, 1)
  -- many small aliases (a real manifest's anchors) stay under the bound
  local many = { "base: &b [1, 2, 3]" }
  for i = 1, 2000 do many[#many + 1] = ("k%d: *b"):format(i) end
  t.eq(#assert(yaml.load(table.concat(many, "\n"))).k2000, 3)
end)

return t.done()
