-- vmsnap.metrics (the Prometheus text format) and vmsnap.deep (deep copy
-- and equality, done in C).
local t = require("tap")
local metrics = require("vmsnap.metrics")
local deep = require("vmsnap.deep")
local json = require("vmsnap.json")

t.test("counters, gauges and histograms in the text format, families and series in a stable order", function()
  local reg = metrics.registry()
  local c = reg:counter("b_total", "Things done.\nTwo lines, a \\ too.", { "kind", "code" })
  c:inc({ "x", "200" })
  c:inc({ "x", "200" }, 2)
  c:inc({ 'q"uo\nte', 500 })
  local g = reg:gauge("a_depth", "Depth.", {})
  g:set({}, 7)
  g:dec({}, 2)
  local h = reg:histogram("c_seconds", "Latency.", { "op" }, { 1, 0.1 })
  h:observe({ "get" }, 0.05)
  h:observe({ "get" }, 0.5)
  h:observe({ "get" }, 3)
  t.eq(reg:render(), table.concat({
    "# HELP a_depth Depth.",
    "# TYPE a_depth gauge",
    "a_depth 5",
    "# HELP b_total Things done.\\nTwo lines, a \\\\ too.",
    "# TYPE b_total counter",
    'b_total{kind="q\\"uo\\nte",code="500"} 1',
    'b_total{kind="x",code="200"} 3',
    "# HELP c_seconds Latency.",
    "# TYPE c_seconds histogram",
    'c_seconds_bucket{op="get",le="0.1"} 1',
    'c_seconds_bucket{op="get",le="1"} 2',
    'c_seconds_bucket{op="get",le="+Inf"} 3',
    'c_seconds_sum{op="get"} 3.55',
    'c_seconds_count{op="get"} 3',
    "" }, "\n"))
  t.eq(c:get({ "x", "200" }), 3)
  t.eq(h:get({ "get" }), 3)
end)

t.test("misuse is an error that names the metric", function()
  local reg = metrics.registry()
  local c = reg:counter("x_total", "X.", { "a" })
  t.contains(t.pcall_err(function() c:inc({}) end), "x_total: 0 label value(s) for 1 label(s)")
  t.contains(t.pcall_err(function() c:inc({ "v" }, -1) end), "x_total: a counter only goes up")
  t.contains(t.pcall_err(function() c:set({ "v" }, 1) end), "x_total: only a gauge is set")
  t.contains(t.pcall_err(function() reg:gauge("x_total", "X.") end), "metric x_total is a counter, not a gauge")
  t.contains(t.pcall_err(function() reg:counter("bad-name", "X.") end), 'invalid metric name "bad-name"')
  t.contains(t.pcall_err(function() reg:histogram("h", "H.", { "le" }) end), 'invalid label name "le" of h')
  t.eq(reg:counter("x_total"), c, "declared again: the same family")
end)

t.test("deep copy and equality: values, arrays keep their marker, cycles and depth raise", function()
  local a = json.decode('{"a":[1,2,{"b":null,"c":[]}],"d":{"e":"x"},"n":1.5}')
  local b = deep.copy(a)
  t.ok(b ~= a and b.a ~= a.a and b.d ~= a.d, "new tables")
  t.eq(json.encode(b), json.encode(a))
  t.eq(getmetatable(b.a), getmetatable(a.a), "the array marker is kept")
  t.eq(json.encode(b.a[3].c), "[]", "an empty array stays an array")
  t.ok(deep.equal(a, b))
  b.d.e = "y"
  t.ok(not deep.equal(a, b))
  t.ok(deep.equal(1, 1.0), "numbers by value")
  t.ok(not deep.equal({}, { x = 1 }) and not deep.equal({ x = 1 }, {}), "a key on either side")
  t.ok(deep.equal(nil, nil) and not deep.equal(nil, false))
  t.eq(deep.copy("s"), "s")
  local cyc = {}
  cyc.self = cyc
  t.contains(t.pcall_err(function() deep.copy(cyc) end), "nested more than 1000 levels")
  local deepest = {}
  local cur = deepest
  for _ = 1, 1200 do cur.x = {}; cur = cur.x end
  t.contains(t.pcall_err(function() deep.copy(deepest) end), "nested more than 1000 levels")
  t.contains(t.pcall_err(function() deep.equal(deepest, deepest.x) end), "nested more than 1000 levels")
end)

t.done()
