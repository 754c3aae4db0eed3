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

t.test("random wide and deep objects encode as a plain sorted walk writes them", function()
  -- the encoder keeps one stack of keys for every level: a child with many
  -- keys moves it while its parent still has keys to write
  local rnd = math.random
  math.randomseed(16)
  local function key()
    local parts = { "a", "b", "ab", "a\0", "k", "\u{e9}", ("long"):rep(12), "" }
    return parts[rnd(#parts)] .. tostring(rnd(60))
  end
  local function value(d)
    local c = rnd(d > 3 and 3 or 6)
    if c == 1 then return rnd(-5, 5) end
    if c == 2 then return "s" .. rnd(100) end
    if c == 3 then return rnd(2) == 1 end
    if c == 4 then
      local a = json.array()
      for i = 1, rnd(0, 4) do a[i] = value(d + 1) end
      return a
    end
    local o = {}
    for _ = 1, rnd(0, c == 6 and 40 or 5) do o[key()] = value(d + 1) end
    if rnd(10) == 1 then o[rnd(3)] = "n" end -- a number key: the other way
    return o
  end
  local function ref(v)
    if type(v) ~= "table" then return json.encode(v) end
    local n, max = 0, 0
    for k in pairs(v) do
      n = n + 1
      max = math.type(k) == "integer" and k > 0 and math.max(max, k) or math.huge
    end
    if json.is_array(v) or (n > 0 and max == n) then
      local out = {}
      for i = 1, #v do out[i] = ref(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local ks, text = {}, {}
    for k in pairs(v) do
      ks[#ks + 1] = tostring(k)
      text[tostring(k)] = k
    end
    table.sort(ks)
    local out = {}
    for i, k in ipairs(ks) do out[i] = json.encode(k) .. ":" .. ref(v[text[k]]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  for _ = 1, 300 do
    local v = value(0)
    local got, err = json.encode(v)
    if got == nil then
      t.contains(err, "two keys written") -- 1 and "1" both drawn
    else
      local want = ref(v)
      if got ~= want then
        local i = 1
        while got:sub(i, i) == want:sub(i, i) do i = i + 1 end
        t.eq(got:sub(i - 40, i + 40), want:sub(i - 40, i + 40), "the first difference")
      end
    end
  end
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

t.test("decoding is RFC 8259's grammar: what it refuses names what it expected, and where", function()
  local cases = {
    { "1.", "a digit after the decimal point", 3 }, { "01", "a number (no leading zeros)", 1 }, { "+1", "a value", 1 },
    { ".5", "a value", 1 }, { "1e", "a digit of the exponent", 3 }, { "[1,]", "a value but found ']'", 4 },
    { '{"a":1,}', "a key (a string) but found '}'", 8 }, { "tru", "a value", 1 }, { "{} x", "the end of the text", 4 },
    { '"a\tb"', "control characters are escaped", 3 }, { '"\\x"', "an escape", 3 }, { '"\\u12"', "four hex digits", 2 },
    { '{"a" 1}', "':' but found '1'", 6 }, { "[1 2]", "',' or ']'", 4 }, { '"abc', "the string's end", 5 },
    { "", "a value but found the end", 1 }, { "[NaN]", "a value but found 'N'", 2 },
  }
  for _, c in ipairs(cases) do
    local v, err, code = json.decode(c[1])
    t.eq({ v, code }, { nil, "JSON_DECODE" }, c[1])
    t.contains(err, "json: expected ", c[1])
    t.contains(err, c[2], c[1])
    t.contains(err, ("at character %d (line 1 column %d)"):format(c[3], c[3]), c[1])
  end
end)

t.test("decoded numbers: integers exactly while they fit in 64 bits, integral values as integers, the rest floats", function()
  local function dec(s) local v = json.decode(s) return v, math.type(v) end
  t.eq({ dec("9223372036854775807") }, { math.maxinteger, "integer" })
  t.eq({ dec("-9223372036854775808") }, { math.mininteger, "integer" })
  t.eq({ dec("9007199254740993") }, { 9007199254740993, "integer" }, "not rounded through a double")
  t.eq(select(2, dec("9223372036854775808")), "float")
  t.eq(select(2, dec("18446744073709551615")), "float")
  t.eq({ dec("1e3") }, { 1000, "integer" })
  t.eq({ dec("1.0") }, { 1, "integer" })
  t.eq({ dec("-0") }, { 0, "integer" })
  t.eq({ dec("2.5e-3") }, { 0.0025, "float" })
  t.eq({ dec("-1.5E+2") }, { -150, "integer" })
  t.eq(select(3, json.decode("1e400")), "JSON_DECODE")
  -- a number's text longer than the decoder's own buffer
  t.eq(json.decode("1" .. ("0"):rep(300)), 1e300)
  t.eq(json.decode("0." .. ("0"):rep(99) .. "1"), 1e-100)
  -- strtod under a decimal comma would read 1.5 as 1
  t.eq(json.decode('{"x":1.5}').x, 1.5)
end)

t.test("\\u escapes: pairs make one character, half a pair is U+FFFD (as Go reads it), NUL is kept", function()
  t.eq(json.decode('"\\ud83d\\ude00"'), "\u{1F600}")
  t.eq(json.decode('"\\ud800x"'), "\u{FFFD}x")
  t.eq(json.decode('"\\udc00\\ud800"'), "\u{FFFD}\u{FFFD}")
  t.eq(json.decode('"a\\u0000b"'), "a\0b")
  t.eq(json.decode('"\\u00e9\\/\\b\\f\\n\\r\\t\\"\\\\"'), "\u{e9}/\b\f\n\r\t\"\\")
end)

t.test("random texts decode as lua-cjson decodes them (numbers compared by value, [] by emptiness)", function()
  local cjson = require("cjson")
  math.randomseed(4)
  local rnd = math.random
  local function ws() return ({ "", " ", "\n", "\t ", "\r\n" })[rnd(5)] end
  local function text(d)
    local c = rnd(d > 3 and 5 or 7)
    if c == 1 then return tostring(rnd(-1000, 1000)) end
    if c == 2 then return ({ "1.5", "-0.25", "1e3", "2E-2", "0", "123456.75" })[rnd(6)] end
    if c == 3 then return ({ '"a"', '""', '"\\u00e9\\n"', '"\u{e9}t\\"q"', '"\\ud83d\\ude00"' })[rnd(5)] end
    if c == 4 then return ({ "true", "false", "null" })[rnd(3)] end
    if c == 5 or c == 6 then
      local parts = {}
      for i = 1, rnd(0, 4) do parts[i] = ws() .. text(d + 1) .. ws() end
      return "[" .. ws() .. table.concat(parts, ",") .. "]"
    end
    local parts = {}
    for i = 1, rnd(0, 5) do parts[i] = ws() .. '"k' .. rnd(6) .. '"' .. ws() .. ":" .. text(d + 1) .. ws() end
    return "{" .. ws() .. table.concat(parts, ",") .. "}"
  end
  for _ = 1, 500 do
    local s = ws() .. text(0) .. ws()
    local mine = json.decode(s)
    t.ok(t.deep_eq(mine, cjson.decode(s)), s) -- (1 == 1.0 in Lua: by value)
    t.eq(json.encode(json.decode(json.encode(mine))), json.encode(mine), "a round trip: " .. s)
  end
end)

t.test("a decode past a task's memory bound is NOMEM, and the runtime decodes on afterwards", function()
  local task = require("vmsnap.task")
  local big = "[" .. ('{"a":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","c":[1,2,3]},'):rep(40000) .. "0]"
  local v, err, code = task.bounded({ memory = 1 << 20 }, function() return json.decode(big) end)
  t.eq({ v, code }, { nil, "NOMEM" }, tostring(err))
  t.eq(#assert(json.decode(big)), 40001)
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
