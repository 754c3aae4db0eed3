local t = require("tap")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local vmsnap = require("vmsnap")

t.test("null and empty arrays survive a round trip", function()
  local text = '{"a":[],"b":{},"c":null,"d":[1,2],"e":"x"}'
  local v = assert(json.decode(text))
  t.eq(v.c, json.null)
  t.ok(json.is_array(v.a), "[] carries the array marker")
  t.eq(json.is_array(v.b), false)
  t.eq(json.encode(v), text)
end)

t.test("json and yaml share null and the array marker", function()
  t.eq(json.null, yaml.null)
  t.eq(json.null, vmsnap.null)
  t.eq(json.array_mt, vmsnap.array_mt)
  local y = assert(yaml.load("a: []\nb: null\n"))
  t.eq(json.encode(y), '{"a":[],"b":null}')
end)

t.test("integers stay integers; floats keep their value", function()
  local v = assert(json.decode('{"gen":3,"big":9007199254740991,"f":1.5,"e":1e3}'))
  t.eq(math.type(v.gen), "integer")
  t.eq(math.type(v.big), "integer")
  t.eq(v.f, 1.5)
  t.eq(json.encode({ x = 0.1 }), '{"x":0.1}')
  t.eq(json.encode({ x = 2^53 }), '{"x":9007199254740992}')
  t.eq(json.encode({ x = 1e300 }), '{"x":1e+300}')
end)

t.test("strings escape and unicode passes through", function()
  local s = 'quote " backslash \\ nl \n tab \t ctl \1 ünï'
  local text = assert(json.encode({ s = s }))
  t.eq(json.decode(text).s, s)
  t.contains(text, "\\u0001")
end)

t.test("objects encode with sorted keys; arrays by sequence or marker", function()
  t.eq(json.encode({ b = 1, a = { 3, 2 }, c = json.array() }), '{"a":[3,2],"b":1,"c":[]}')
  t.eq(json.encode({}), "{}")
  t.eq(json.encode({ [1] = "a", [3] = "c" }), '{"1":"a","3":"c"}')
end)

t.test("indent pretty-prints", function()
  t.eq(json.encode({ a = { 1 } }, { indent = 2 }), '{\n  "a": [\n    1\n  ]\n}')
end)

t.test("decode errors carry line and column and never raise", function()
  local v, err, code = json.decode('{\n  "a": 1,\n  "b": x\n}')
  t.eq({ v, code }, { nil, "JSON_DECODE" })
  t.contains(err, "line 3 column 8")
  v, err, code = json.decode('[1, []')
  t.eq({ v, code }, { nil, "JSON_DECODE" })
end)

t.test("encode failures return JSON_ENCODE", function()
  local v, err, code = json.encode({ f = print })
  t.eq({ v, code }, { nil, "JSON_ENCODE" })
  t.contains(err, "function")
  local cyc = {}
  cyc.self = cyc
  t.eq(select(3, json.encode(cyc)), "JSON_ENCODE")
  t.eq(select(3, json.encode(0 / 0)), "JSON_ENCODE")
  -- two keys with one name (the fuzzer: uninitialised sort entries, a SEGV)
  v, err, code = json.encode({ [1] = "a", ["1"] = "b", x = true })
  t.eq(code, "JSON_ENCODE")
  t.contains(err, 'two keys written "1"')
  t.eq(select(3, require("vmsnap.yaml").dump({ [true] = 1, ["true"] = 2 })), "YAML_EMIT")
end)

t.test("ill-formed UTF-8 and NULs: U+FFFD on decode and encode, NULs in keys kept apart", function()
  t.eq(json.decode('["a\xffb\xe2\x82"]')[1], "a\u{FFFD}b\u{FFFD}")
  t.eq(json.encode({ "x\xc3" }), '["x\u{FFFD}"]')
  t.eq(json.encode({ ["a\0b"] = 1, ["a\0c"] = 2, a = 0 }), '{"a":0,"a\\u0000b":1,"a\\u0000c":2}')
  for _, bad in ipairs({ "[NaN]", "[Infinity]", "[-Infinity]", "[0x1F]", "[1e999]", "1e999", '{"a":[-1e400]}' }) do
    t.eq(select(3, json.decode(bad)), "JSON_DECODE", bad)
  end
end)

t.test("strings that look like the empty-array marker's brackets are left alone", function()
  local v = assert(json.decode('{"s":"[]","t":"[ ]"}'))
  t.eq(v.s, "[]")
  t.eq(v.t, "[ ]")
end)

t.test("nesting: 200 levels decode and encode (a stack overflow at 200 before), 201 is a clear error", function()
  local text = ("["):rep(200) .. ("]"):rep(200)
  local v = assert(json.decode(text))
  t.eq(json.encode(v), text)
  local obj = ('{"a":'):rep(200) .. "1" .. ("}"):rep(200)
  t.eq(json.encode(assert(json.decode(obj))), obj)
  local r, err = json.decode(("["):rep(201) .. ("]"):rep(201))
  t.eq(r, nil)
  t.contains(err, "too many nested data structures (201)")
  local deep = {}
  local x = deep
  for _ = 1, 250 do x[1] = {} x = x[1] end
  local e, eerr = json.encode(deep)
  t.eq(e, nil)
  t.contains(eerr, "nesting deeper than 200")
end)

return t.done()
