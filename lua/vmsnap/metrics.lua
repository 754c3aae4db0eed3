--- vmsnap.metrics: counters, gauges and histograms, written in the
--- Prometheus text exposition format (version 0.0.4).
---
---   local metrics = require("vmsnap.metrics")
---   local reg = metrics.registry()
---   local req = reg:counter("apiserver_request_total", "Requests by verb, resource and code.",
---     { "verb", "resource", "code" })
---   req:inc({ "GET", "pods", "200" })
---   io.write(reg:render())
---
--- Label values (strings or numbers) are given in the order the metric
--- declared its label names.
--- A series is created by its first use; render() writes the families in
--- name order and their series in label order, so the output is stable.
local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

--- The default histogram buckets (seconds), as the Prometheus clients'.
M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local function escape_value(v)
  return (tostring(v):gsub('[\\\n"]', { ["\\"] = "\\\\", ["\n"] = "\\n", ['"'] = '\\"' }))
end

local function escape_help(v)
  return (tostring(v):gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

local function number(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if math.type(v) == "integer" then return tostring(v) end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  -- the shortest text that reads back as v
  for p = 15, 16 do
    local t = ("%." .. p .. "g"):format(v)
    if tonumber(t) == v then return t end
  end
  return ("%.17g"):format(v)
end

local function label_text(names, values, extra_name, extra_value)
  local parts = {}
  for i, n in ipairs(names) do parts[#parts + 1] = n .. '="' .. escape_value(values[i] or "") .. '"' end
  if extra_name then parts[#parts + 1] = extra_name .. '="' .. extra_value .. '"' end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ",") .. "}"
end

local Family = {}
Family.__index = Family

local NONE = {}

-- the series of these label values: found through a tree of the values
-- (self.index[v1][v2]...), so a known series costs no key string (every
-- API request observes three); a new one is made under its key
local function series(self, values)
  values = values or NONE
  local n = #self.labels
  local node = self.index
  if #values == n then
    for i = 1, n do
      node = node[values[i]]
      if not node then break end
    end
    if node and node.value then return node end
  end
  if #values ~= n then
    error(("%s: %d label value(s) for %d label(s)"):format(self.name, #values, #self.labels), 3)
  end
  local key = table.concat(values, "\0")
  local s = self.series[key]
  if not s then
    local parts = {}
    for i = 1, #values do parts[i] = tostring(values[i]) end
    s = { values = parts, value = 0 }
    if self.kind == "histogram" then
      s.counts, s.sum, s.count = {}, 0, 0
      for i = 1, #self.buckets do s.counts[i] = 0 end
    end
    self.series[key] = s
  end
  if n == 0 then
    self.index = s
  else
    node = self.index
    for i = 1, n - 1 do
      local v = values[i]
      node[v] = node[v] or {}
      node = node[v]
    end
    node[values[n]] = s
  end
  return s
end

--- Add n (default 1) to a counter or gauge.
function Family:inc(values, n)
  n = n or 1
  if self.kind == "counter" and n < 0 then error(self.name .. ": a counter only goes up", 2) end
  local s = series(self, values)
  s.value = s.value + n
end

--- Set a gauge.
function Family:set(values, v)
  if self.kind ~= "gauge" then error(self.name .. ": only a gauge is set", 2) end
  series(self, values).value = v
end

--- Subtract n (default 1) from a gauge.
function Family:dec(values, n)
  if self.kind ~= "gauge" then error(self.name .. ": only a gauge goes down", 2) end
  local s = series(self, values)
  s.value = s.value - (n or 1)
end

--- Record one observation in a histogram.
function Family:observe(values, v)
  if self.kind ~= "histogram" then error(self.name .. ": only a histogram observes", 2) end
  local s = series(self, values)
  -- counted in the first bucket that holds it; the text sums them up
  local b = self.buckets
  for i = 1, #b do
    if v <= b[i] then
      s.counts[i] = s.counts[i] + 1
      break
    end
  end
  s.sum, s.count = s.sum + v, s.count + 1
end

--- The current value of a counter or gauge series (0 when never used), or
--- for a histogram its count and sum.
function Family:get(values)
  local s = self.series[table.concat(values or {}, "\0")]
  if not s then return 0, 0 end
  if self.kind == "histogram" then return s.count, s.sum end
  return s.value
end

--- Forget every series (a gauge family that is rebuilt on each scrape).
function Family:reset() self.series, self.index = {}, {} end

function Family:render(out)
  out[#out + 1] = "# HELP " .. self.name .. " " .. escape_help(self.help)
  out[#out + 1] = "# TYPE " .. self.name .. " " .. self.kind
  local keys = {}
  for k in pairs(self.series) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local s = self.series[k]
    if self.kind == "histogram" then
      local sum = 0
      for i, le in ipairs(self.buckets) do
        sum = sum + s.counts[i]
        out[#out + 1] = self.name .. "_bucket" .. label_text(self.labels, s.values, "le", number(le)) .. " " .. sum
      end
      out[#out + 1] = self.name .. "_bucket" .. label_text(self.labels, s.values, "le", "+Inf") .. " " .. s.count
      out[#out + 1] = self.name .. "_sum" .. label_text(self.labels, s.values) .. " " .. number(s.sum)
      out[#out + 1] = self.name .. "_count" .. label_text(self.labels, s.values) .. " " .. s.count
    else
      out[#out + 1] = self.name .. label_text(self.labels, s.values) .. " " .. number(s.value)
    end
  end
end

local Registry = {}
Registry.__index = Registry

--- A new, empty registry.
function M.registry()
  return setmetatable({ families = {}, collectors = {} }, Registry)
end

local process_registry
--- The registry of this process's controllers, freezes and hooks (made on
--- first use): what `vmsnap controller --metrics-addr` and `vmsnap up`
--- serve on /metrics (docs/metrics.md names every family).
function M.process()
  if process_registry then return process_registry end
  process_registry = M.registry()
  -- the process itself, as the Prometheus clients name it, and the Lua heap
  local fs = require("vmsnap.fs")
  local reg = process_registry
  local rss = reg:gauge("process_resident_memory_bytes", "Resident memory size in bytes.", {})
  local cpu = reg:counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", {})
  local fds = reg:gauge("process_open_fds", "Number of open file descriptors.", {})
  local heap = reg:gauge("vmsnap_lua_heap_bytes", "Bytes of the Lua heap (collectgarbage count).", {})
  reg:collect(function()
    local st = fs.read_file("/proc/self/status") or ""
    local kb = tonumber(st:match("VmRSS:%s*(%d+)"))
    if kb then rss:set({}, kb * 1024) end
    local f = {}
    for x in ((fs.read_file("/proc/self/stat") or ""):match("%) (.*)$") or ""):gmatch("%S+") do f[#f + 1] = x end
    if f[13] then
      -- a counter that the kernel keeps: moved up to its value
      local now = (tonumber(f[12]) + tonumber(f[13])) / 100
      local was = cpu:get({})
      if now > was then cpu:inc({}, now - was) end
    end
    local list = fs.list("/proc/self/fd")
    if type(list) == "table" then fds:set({}, #list) end
    heap:set({}, math.floor(collectgarbage("count") * 1024))
  end)
  return process_registry
end

local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*$"

local function family(self, kind, name, help, labels, buckets)
  local f = self.families[name]
  if f then
    if f.kind ~= kind then error(("metric %s is a %s, not a %s"):format(name, f.kind, kind), 3) end
    return f
  end
  if type(name) ~= "string" or not name:match(NAME) then error(("invalid metric name %q"):format(tostring(name)), 3) end
  for _, l in ipairs(labels or {}) do
    if not l:match(LABEL) or l:sub(1, 2) == "__" or (kind == "histogram" and l == "le") then
      error(("invalid label name %q of %s"):format(l, name), 3)
    end
  end
  f = setmetatable({ kind = kind, name = name, help = help or name, labels = labels or {}, series = {}, index = {},
    buckets = buckets }, Family)
  self.families[name] = f
  return f
end

--- A counter (declared once; the same name again returns it).
function Registry:counter(name, help, labels) return family(self, "counter", name, help, labels) end

--- A gauge.
function Registry:gauge(name, help, labels) return family(self, "gauge", name, help, labels) end

--- A histogram with these upper bounds (sorted; default M.DEFAULT_BUCKETS).
function Registry:histogram(name, help, labels, buckets)
  local b = {}
  for i, v in ipairs(buckets or M.DEFAULT_BUCKETS) do b[i] = v end
  table.sort(b)
  return family(self, "histogram", name, help, labels, b)
end

--- A function run before each render (to set gauges from live state).
function Registry:collect(fn) self.collectors[#self.collectors + 1] = fn end

--- The exposition text of every family.
function Registry:render()
  for _, fn in ipairs(self.collectors) do fn(self) end
  local names = {}
  for n in pairs(self.families) do names[#names + 1] = n end
  table.sort(names)
  local out = {}
  for _, n in ipairs(names) do self.families[n]:render(out) end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

return M
