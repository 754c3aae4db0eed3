--- vmsnap.apiserver.cel: the Common Expression Language as CRD
--- `x-kubernetes-validations` rules use it.
---
---   local prog = assert(cel.compile("self.max > self.min"))
---   prog:eval({ self = { max = 3, min = 1 } })   --> true
---
--- Supported: literals (int, uint `1u`, double, string '..' "..", raw
--- r'..', bool, null, lists, maps), `! - * / % + < <= > >= == != in && ||
--- ?:`, field selection (and `__x__` escapes), indexing, the macros `has`,
--- `all`, `exists`, `exists_one`, `map`, `filter`, the functions `size`,
--- `int`, `uint`, `double`, `string`, `bool`, `type`, the type names, and the
--- string methods `startsWith endsWith contains matches replace lowerAscii
--- upperAscii trim split indexOf lastIndexOf join substring`. Anything else is
--- refused by compile, naming it. `&&` and `||` are commutative about errors
--- as in CEL (false && error is false). Every evaluation has a step budget
--- (M.BUDGET): past it the rule fails with "cost limit exceeded".
local json = require("vmsnap.json")
local regex = require("vmsnap.apiserver.regex")

local M = {}
M.BUDGET = 100000

local null = json.null

-- ------------------------------------------------------------ lexer

local function lex(src)
  local toks, i, n = {}, 1, #src
  local function push(t, v) toks[#toks + 1] = { t = t, v = v, at = i } end
  while i <= n do
    local c = src:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif src:sub(i, i + 1) == "//" then
      i = (src:find("\n", i, true) or n) + 1
    elseif c:match("[%a_]") then
      local raw = (c == "r" or c == "R") and src:sub(i + 1, i + 1):match("['\"]")
      if raw then
        local q = src:sub(i + 1, i + 1)
        local e = src:find(q, i + 2, true)
        if not e then error({ cel = "unterminated string" }, 0) end
        push("str", src:sub(i + 2, e - 1))
        i = e + 1
      else
        local w = src:match("^[%w_]+", i)
        push("id", w)
        i = i + #w
      end
    elseif c:match("%d") or (c == "." and src:sub(i + 1, i + 1):match("%d")) then
      local hex = src:match("^0[xX]%x+", i)
      local num = hex or src:match("^%d*%.?%d*[eE][+-]?%d+", i) or src:match("^%d*%.%d+", i) or src:match("^%d+", i)
      i = i + #num
      if src:sub(i, i) == "u" or src:sub(i, i) == "U" then
        push("int", math.tointeger(tonumber(num)))
        i = i + 1
      elseif num:find("[.eE]") and not hex then
        push("double", tonumber(num))
      else
        local v = math.tointeger(tonumber(num))
        if not v then error({ cel = "integer literal out of range: " .. num }, 0) end
        push("int", v)
      end
    elseif c == "'" or c == '"' then
      if src:sub(i, i + 2) == c:rep(3) then error({ cel = "triple-quoted strings are not supported" }, 0) end
      local j, buf = i + 1, {}
      while true do
        local d = src:sub(j, j)
        if d == "" then error({ cel = "unterminated string" }, 0) end
        if d == c then break end
        if d == "\\" then
          local e = src:sub(j + 1, j + 1)
          local map = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"' }
          if not map[e] then error({ cel = "unsupported escape \\" .. e }, 0) end
          buf[#buf + 1] = map[e]
          j = j + 2
        else
          buf[#buf + 1] = d
          j = j + 1
        end
      end
      push("str", table.concat(buf))
      i = j + 1
    else
      local op = src:match("^[=!<>]=", i) or src:match("^&&", i) or src:match("^||", i) or c
      if not op:match("^[=!<>]=$") and not op:match("^&&$") and not op:match("^||$")
          and not ("!-*/%+<>?:.[](),{}"):find(op, 1, true) then
        error({ cel = ("unexpected character %q"):format(op) }, 0)
      end
      push("op", op)
      i = i + #op
    end
  end
  push("eof")
  return toks
end

-- ------------------------------------------------------------ parser

local P = {}
P.__index = P

function P:peek(v) local t = self.toks[self.i] return t.t == "op" and t.v == v end
function P:take() local t = self.toks[self.i] self.i = self.i + 1 return t end
function P:expect(v)
  if not self:peek(v) then error({ cel = ("expected %q"):format(v) }, 0) end
  self.i = self.i + 1
end

local MACROS = { all = true, exists = true, exists_one = true, map = true, filter = true }
local FUNCS = { size = true, int = true, uint = true, double = true, string = true, bool = true, type = true,
  has = true }
local METHODS = { size = true, startsWith = true, endsWith = true, contains = true, matches = true, replace = true,
  lowerAscii = true, upperAscii = true, trim = true, split = true, indexOf = true, lastIndexOf = true, join = true,
  substring = true, isSorted = true, sum = true, min = true, max = true }
local TYPES = { int = true, uint = true, double = true, string = true, bool = true, list = true, map = true,
  null_type = true, bytes = true, type = true }

function P:args()
  local a = {}
  if not self:peek(")") then
    repeat a[#a + 1] = self:expr() until not (self:peek(",") and self:take())
  end
  self:expect(")")
  return a
end

function P:primary()
  local t = self:take()
  if t.t == "int" then return { "lit", t.v } end
  if t.t == "double" then return { "lit", t.v + 0.0 } end
  if t.t == "str" then return { "lit", t.v } end
  if t.t == "id" then
    if t.v == "true" then return { "lit", true } end
    if t.v == "false" then return { "lit", false } end
    if t.v == "null" then return { "lit", null } end
    if self:peek("(") then
      self:take()
      if not FUNCS[t.v] then error({ cel = ("unsupported function %s()"):format(t.v) }, 0) end
      local a = self:args()
      if t.v == "has" then
        if #a ~= 1 or a[1][1] ~= "sel" then error({ cel = "has() takes a field selection" }, 0) end
        return { "has", a[1][2], a[1][3] }
      end
      return { "call", t.v, a }
    end
    if TYPES[t.v] and t.v ~= "type" then return { "typename", t.v } end
    return { "var", t.v }
  end
  if t.t == "op" and t.v == "(" then
    local e = self:expr()
    self:expect(")")
    return e
  end
  if t.t == "op" and t.v == "[" then
    local items = {}
    if not self:peek("]") then
      repeat items[#items + 1] = self:expr() until not (self:peek(",") and self:take())
    end
    self:expect("]")
    return { "list", items }
  end
  if t.t == "op" and t.v == "{" then
    local items = {}
    if not self:peek("}") then
      repeat
        local k = self:expr()
        self:expect(":")
        items[#items + 1] = { k, self:expr() }
      until not (self:peek(",") and self:take())
    end
    self:expect("}")
    return { "map", items }
  end
  error({ cel = ("unexpected %s"):format(t.v and tostring(t.v) or t.t) }, 0)
end

function P:member()
  local e = self:primary()
  while true do
    if self:peek(".") then
      self:take()
      local name = self:take()
      if name.t ~= "id" then error({ cel = "expected a field name" }, 0) end
      if self:peek("(") then
        self:take()
        if MACROS[name.v] then
          local v = self:take()
          if v.t ~= "id" then error({ cel = name.v .. "() needs a variable name first" }, 0) end
          self:expect(",")
          local a = { self:expr() }
          if self:peek(",") then self:take() a[2] = self:expr() end
          self:expect(")")
          e = { "macro", name.v, e, v.v, a[1], a[2] }
        elseif METHODS[name.v] then
          e = { "method", name.v, e, self:args() }
        else
          error({ cel = ("unsupported function %s()"):format(name.v) }, 0)
        end
      else
        e = { "sel", e, name.v }
      end
    elseif self:peek("[") then
      self:take()
      local k = self:expr()
      self:expect("]")
      e = { "index", e, k }
    else
      return e
    end
  end
end

function P:unary()
  if self:peek("!") then self:take() return { "not", self:unary() } end
  if self:peek("-") then self:take() return { "neg", self:unary() } end
  return self:member()
end

local BIN = {
  { ["*"] = true, ["/"] = true, ["%"] = true },
  { ["+"] = true, ["-"] = true },
  { ["<"] = true, ["<="] = true, [">"] = true, [">="] = true, ["=="] = true, ["!="] = true, ["in"] = true },
}

function P:binary(level)
  if level == 0 then return self:unary() end
  local e = self:binary(level - 1)
  while true do
    local t = self.toks[self.i]
    local op = (t.t == "op" and t.v) or (t.t == "id" and t.v == "in" and "in")
    if not (op and BIN[level][op]) then return e end
    self:take()
    e = { "bin", op, e, self:binary(level - 1) }
  end
end

function P:and_()
  local e = self:binary(3)
  while self:peek("&&") do self:take() e = { "and", e, self:binary(3) } end
  return e
end

function P:or_()
  local e = self:and_()
  while self:peek("||") do self:take() e = { "or", e, self:and_() } end
  return e
end

function P:expr()
  local c = self:or_()
  if self:peek("?") then
    self:take()
    local a = self:or_()
    self:expect(":")
    return { "cond", c, a, self:expr() }
  end
  return c
end

local Program = {}
Program.__index = Program

local function uses(node, name)
  if type(node) ~= "table" then return false end
  if node[1] == "var" and node[2] == name then return true end
  for _, x in ipairs(node) do
    if type(x) == "table" and uses(x, name) then return true end
  end
  return false
end

--- Compile a rule; returns a program (with .old: does it use oldSelf), or
--- nil and a message that names what is not supported.
function M.compile(src)
  if type(src) ~= "string" then return nil, "a rule must be a string" end
  local ok, res = pcall(function()
    local p = setmetatable({ toks = lex(src), i = 1 }, P)
    local e = p:expr()
    if p.toks[p.i].t ~= "eof" then error({ cel = "unexpected " .. tostring(p.toks[p.i].v) }, 0) end
    return e
  end)
  if not ok then
    if type(res) == "table" and res.cel then return nil, res.cel end
    error(res, 0)
  end
  return setmetatable({ ast = res, src = src, old = uses(res, "oldSelf") }, Program)
end

--- compile, keeping what it compiled by text (weakly: unused ones go).
M.cached = regex.memo(M.compile)

-- ------------------------------------------------------------ evaluation

local function fail(msg) error({ cel_eval = msg }, 0) end

-- the methods of the list library (not string methods of the same name)
local LIST_METHODS = { isSorted = true, sum = true, min = true, max = true, indexOf = true, lastIndexOf = true }

local function is_list(v)
  return type(v) == "table" and (json.is_array(v) or (#v > 0) or next(v) == nil)
end

local function cel_type(v)
  if v == null then return "null_type" end
  local t = type(v)
  if t == "boolean" then return "bool" end
  if t == "string" then return "string" end
  if t == "number" then return math.type(v) == "integer" and "int" or "double" end
  if t == "table" then
    if v.__celtype then return "type" end
    if json.is_array(v) or #v > 0 then return "list" end
    return "map"
  end
  return t
end

-- values, lists and maps by content; a type value ({__celtype = name}) is
-- equal to the same type's
local equal = require("vmsnap.deep").equal

local function size(v)
  if type(v) == "string" then return utf8.len(v) or #v end
  if type(v) == "table" then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return n
  end
  fail("no such overload: size(" .. cel_type(v) .. ")")
end

local function field(obj, name)
  name = name:gsub("^__(.-)__$", "%1")
  if type(obj) ~= "table" then fail("no such key: " .. name) end
  local v = obj[name]
  if v == nil then fail("no such key: " .. name) end
  return v
end

local eval

local METHOD_IMPL = {
  size = function(s) return size(s) end,
  startsWith = function(s, p) return s:sub(1, #p) == p end,
  endsWith = function(s, p) return p == "" or s:sub(-#p) == p end,
  contains = function(s, p) return s:find(p, 1, true) ~= nil end,
  matches = function(s, p)
    local re, err = regex.cached(p)
    if not re then fail("invalid regular expression: " .. err) end
    local r = re:find(s)
    if r == nil then fail("cost limit exceeded") end
    return r
  end,
  replace = function(s, old, new, n)
    if old == "" then fail("replace: empty search string") end
    local out, count, pos = {}, 0, 1
    while true do
      if n and n >= 0 and count >= n then break end
      local a, b = s:find(old, pos, true)
      if not a then break end
      out[#out + 1] = s:sub(pos, a - 1) .. new
      pos, count = b + 1, count + 1
    end
    out[#out + 1] = s:sub(pos)
    return table.concat(out)
  end,
  lowerAscii = function(s) return s:lower() end,
  upperAscii = function(s) return s:upper() end,
  trim = function(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end,
  split = function(s, sep)
    local out = json.array()
    if sep == "" then for _, c in utf8.codes(s) do out[#out + 1] = utf8.char(c) end return out end
    local pos = 1
    while true do
      local a, b = s:find(sep, pos, true)
      if not a then out[#out + 1] = s:sub(pos) break end
      out[#out + 1] = s:sub(pos, a - 1)
      pos = b + 1
    end
    return out
  end,
  indexOf = function(s, p) local a = s:find(p, 1, true) return a and (utf8.len(s:sub(1, a - 1)) or a - 1) or -1 end,
  lastIndexOf = function(s, p)
    local last = -1
    local pos = 1
    while true do
      local a = s:find(p, pos, true)
      if not a then break end
      last = utf8.len(s:sub(1, a - 1)) or a - 1
      pos = a + 1
    end
    return last
  end,
  join = function(list, sep)
    for _, v in ipairs(list) do if type(v) ~= "string" then fail("join: a list of strings is needed") end end
    return table.concat(list, sep or "")
  end,
  substring = function(s, a, b)
    local n = utf8.len(s) or #s
    b = b or n
    if a < 0 or b > n or a > b then fail("substring: index out of range") end
    local i = utf8.offset(s, a + 1) or (a + 1)
    local j = (utf8.offset(s, b + 1) or (b + 2)) - 1
    return s:sub(i, j)
  end,
}

local function arith(op, a, b)
  if op == "+" then
    if type(a) == "string" and type(b) == "string" then return a .. b end
    if type(a) == "table" and type(b) == "table" then
      local out = json.array()
      for _, v in ipairs(a) do out[#out + 1] = v end
      for _, v in ipairs(b) do out[#out + 1] = v end
      return out
    end
  end
  if type(a) ~= "number" or type(b) ~= "number" or math.type(a) ~= math.type(b) then
    fail(("no such overload: %s %s %s"):format(cel_type(a), op, cel_type(b)))
  end
  if op == "+" then return a + b end
  if op == "-" then return a - b end
  if op == "*" then return a * b end
  if (op == "/" or op == "%") and b == 0 and math.type(a) == "integer" then fail("division by zero") end
  if op == "/" then return math.type(a) == "integer" and (a // b) or a / b end
  return math.fmod(a, b)
end

local function compare(op, a, b)
  if op == "==" then return equal(a, b) end
  if op == "!=" then return not equal(a, b) end
  if op == "in" then
    if type(b) ~= "table" then fail("no such overload: in " .. cel_type(b)) end
    if is_list(b) and not (next(b) ~= nil and #b == 0) then
      for _, v in ipairs(b) do if equal(v, a) then return true end end
      return false
    end
    return b[a] ~= nil
  end
  local ta, tb = type(a), type(b)
  if not ((ta == "number" and tb == "number") or (ta == "string" and tb == "string")) then
    fail(("no such overload: %s %s %s"):format(cel_type(a), op, cel_type(b)))
  end
  if op == "<" then return a < b end
  if op == "<=" then return a <= b end
  if op == ">" then return a > b end
  return a >= b
end

local function truth(v, what)
  if type(v) ~= "boolean" then fail(("no such overload: %s %s"):format(what, cel_type(v))) end
  return v
end

local CALLS = {
  size = function(v) return size(v) end,
  int = function(v)
    if type(v) == "number" then
      local i = math.tointeger(v >= 0 and math.floor(v) or math.ceil(v))
      if not i then fail("int() range error") end
      return i
    end
    if type(v) == "string" then
      local i = v:match("^[+-]?%d+$") and math.tointeger(tonumber(v))
      if not i then fail(("cannot convert %q to int"):format(v)) end
      return i
    end
    fail("no such overload: int(" .. cel_type(v) .. ")")
  end,
  double = function(v)
    local d = tonumber(v)
    if not d then fail("no such overload: double(" .. cel_type(v) .. ")") end
    return d + 0.0
  end,
  string = function(v)
    if type(v) == "string" then return v end
    if type(v) == "number" or type(v) == "boolean" then return tostring(v) end
    fail("no such overload: string(" .. cel_type(v) .. ")")
  end,
  bool = function(v)
    if type(v) == "boolean" then return v end
    if v == "true" then return true elseif v == "false" then return false end
    fail("no such overload: bool(" .. cel_type(v) .. ")")
  end,
  type = function(v) return { __celtype = cel_type(v) } end,
}
CALLS.uint = CALLS.int

eval = function(node, env, st)
  st.steps = st.steps + 1
  if st.steps > st.budget then fail("cost limit exceeded") end
  local k = node[1]
  if k == "lit" then return node[2]
  elseif k == "var" then
    local v = env[node[2]]
    if v == nil then fail("undeclared reference to '" .. node[2] .. "'") end
    return v
  elseif k == "typename" then return { __celtype = node[2] }
  elseif k == "sel" then return field(eval(node[2], env, st), node[3])
  elseif k == "has" then
    local obj = eval(node[2], env, st)
    local name = node[3]:gsub("^__(.-)__$", "%1")
    if type(obj) ~= "table" then fail("no such overload: has() of " .. cel_type(obj)) end
    return obj[name] ~= nil and obj[name] ~= null
  elseif k == "index" then
    local obj, key = eval(node[2], env, st), eval(node[3], env, st)
    if type(obj) ~= "table" then fail("no such overload: index of " .. cel_type(obj)) end
    if math.type(key) == "integer" and (json.is_array(obj) or #obj > 0) then
      local v = obj[key + 1]
      if v == nil then fail("index out of range: " .. key) end
      return v
    end
    local v = obj[key]
    if v == nil then fail("no such key: " .. tostring(key)) end
    return v
  elseif k == "not" then return not truth(eval(node[2], env, st), "!")
  elseif k == "neg" then
    local v = eval(node[2], env, st)
    if type(v) ~= "number" then fail("no such overload: -" .. cel_type(v)) end
    return -v
  elseif k == "and" or k == "or" then
    -- CEL's commutative logic: a decisive side wins over an error on the other
    local stop = k == "or"
    local ok1, a = pcall(eval, node[2], env, st)
    if ok1 and truth(a, k) == stop then return stop end
    local b = eval(node[3], env, st)
    if truth(b, k) == stop then return stop end
    if not ok1 then error(a, 0) end
    return not stop
  elseif k == "cond" then
    if truth(eval(node[2], env, st), "?:") then return eval(node[3], env, st) end
    return eval(node[4], env, st)
  elseif k == "bin" then
    local op, a, b = node[2], eval(node[3], env, st), eval(node[4], env, st)
    if op == "+" or op == "-" or op == "*" or op == "/" or op == "%" then return arith(op, a, b) end
    return compare(op, a, b)
  elseif k == "list" then
    local out = json.array()
    for i, e in ipairs(node[2]) do out[i] = eval(e, env, st) end
    return out
  elseif k == "map" then
    local out = {}
    for _, kv in ipairs(node[2]) do out[eval(kv[1], env, st)] = eval(kv[2], env, st) end
    return out
  elseif k == "call" then
    local args = {}
    for i, a in ipairs(node[3]) do args[i] = eval(a, env, st) end
    if #args ~= 1 then fail(node[2] .. "() takes one argument") end
    return CALLS[node[2]](args[1])
  elseif k == "method" then
    local recv = eval(node[3], env, st)
    local args = {}
    for i, a in ipairs(node[4]) do args[i] = eval(a, env, st) end
    local f = METHOD_IMPL[node[2]]
    if type(recv) == "table" and LIST_METHODS[node[2]] then
      return M.list_method(node[2], recv, args[1])
    end
    if node[2] == "join" then
      if type(recv) ~= "table" then fail("no such overload: join on " .. cel_type(recv)) end
    elseif node[2] ~= "size" and type(recv) ~= "string" then
      fail(("no such overload: %s.%s()"):format(cel_type(recv), node[2]))
    end
    for _, a in ipairs(args) do
      if type(a) ~= "string" and math.type(a) ~= "integer" then fail("no such overload: " .. node[2]) end
    end
    return f(recv, table.unpack(args))
  elseif k == "macro" then
    local name, target, var, a1, a2 = node[2], eval(node[3], env, st), node[4], node[5], node[6]
    if type(target) ~= "table" then fail(("no such overload: %s on %s"):format(name, cel_type(target))) end
    local items = {}
    if is_list(target) then for _, v in ipairs(target) do items[#items + 1] = v end
    else for key in pairs(target) do items[#items + 1] = key end table.sort(items, function(x, y) return tostring(x) < tostring(y) end) end
    local saved = env[var]
    local function with(v, e) env[var] = v local r = eval(e, env, st) env[var] = saved return r end
    if name == "all" or name == "exists" then
      local want = name == "exists"
      local err
      for _, v in ipairs(items) do
        local ok, r = pcall(with, v, a1)
        env[var] = saved
        if ok then
          if truth(r, name) == want then return want end
        else err = err or r end
      end
      if err then error(err, 0) end
      return not want
    elseif name == "exists_one" then
      local n = 0
      for _, v in ipairs(items) do if truth(with(v, a1), name) then n = n + 1 end end
      return n == 1
    elseif name == "filter" then
      local out = json.array()
      for _, v in ipairs(items) do if truth(with(v, a1), name) then out[#out + 1] = v end end
      return out
    else -- map
      local out = json.array()
      for _, v in ipairs(items) do
        if a2 then
          if truth(with(v, a1), name) then out[#out + 1] = with(v, a2) end
        else
          out[#out + 1] = with(v, a1)
        end
      end
      return out
    end
  end
  fail("cannot evaluate " .. tostring(k))
end

--- The Kubernetes list library: isSorted, sum, min, max, indexOf, lastIndexOf.
function M.list_method(name, list, arg)
  local n = #list
  if name == "indexOf" or name == "lastIndexOf" then
    local from, to, step = 1, n, 1
    if name == "lastIndexOf" then from, to, step = n, 1, -1 end
    for i = from, to, step do if equal(list[i], arg) then return i - 1 end end
    return -1
  end
  for _, v in ipairs(list) do
    if type(v) ~= "number" and type(v) ~= "string" then fail(("no such overload: %s() of a list of %s"):format(name, cel_type(v))) end
  end
  if name == "isSorted" then
    for i = 2, n do if compare("<", list[i], list[i - 1]) then return false end end
    return true
  end
  if name == "sum" then
    local total = 0
    for _, v in ipairs(list) do total = arith("+", total, v) end
    return total
  end
  if n == 0 then fail(name .. "() of an empty list") end
  local best = list[1]
  for i = 2, n do
    if (name == "min" and compare("<", list[i], best)) or (name == "max" and compare(">", list[i], best)) then best = list[i] end
  end
  return best
end

--- Evaluate with the variables in env (self, oldSelf). Returns the value,
--- or nil and the evaluation error.
function Program:eval(env)
  local st = { steps = 0, budget = M.BUDGET }
  local e = {}
  for k, v in pairs(env) do e[k] = v end
  local ok, res = pcall(eval, self.ast, e, st)
  if not ok then
    if type(res) == "table" and res.cel_eval then return nil, res.cel_eval end
    return nil, tostring(res)
  end
  return res
end

return M
