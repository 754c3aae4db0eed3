--- vmsnap.apiserver.regex: the regular expressions of OpenAPI `pattern`s, as
--- Kubernetes evaluates them (Go's RE2 syntax; a match anywhere in the
--- value unless anchored).
---
---   local re = assert(regex.compile("^[a-z]([-a-z0-9]*[a-z0-9])?$"))
---   re:find("my-disk")   --> true
---
--- Supported: literals and escapes (`\d \D \w \W \s \S`, `\.` and other
--- punctuation, `\t \n \r \f \v`), `.`, classes `[a-z_]` / `[^...]` (with
--- the same escapes), groups `( )`, `(?: )`, `(?P<name> )`, `(?<name> )`,
--- `|`, `* + ?` and `{n} {n,} {n,m}` (each lazy with a `?`), `^ $`, and
--- `(?i)` at the start. Anything else (back-references, look-around, other
--- flags) is refused by compile with a message naming it — a schema is never
--- checked against a pattern it only half understands. Matching works on
--- code points, backtracking with a step budget: a value whose match costs
--- more than the budget does not match (find returns nil, "budget").
local M = {}

M.BUDGET = 200000

local Regex = {}
Regex.__index = Regex

-- ------------------------------------------------------------ parsing

local function class_pred(ranges, negate, fold)
  return function(c)
    local lc = fold and (c >= 65 and c <= 90 and c + 32 or c) or c
    local uc = fold and (c >= 97 and c <= 122 and c - 32 or c) or c
    for _, r in ipairs(ranges) do
      if type(r) == "function" then
        if r(c) then return not negate end
      elseif (c >= r[1] and c <= r[2]) or (lc >= r[1] and lc <= r[2]) or (uc >= r[1] and uc <= r[2]) then
        return not negate
      end
    end
    return negate
  end
end

local function is_digit(c) return c >= 48 and c <= 57 end
local function is_word(c) return is_digit(c) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95 end
local function is_space(c) return c == 32 or (c >= 9 and c <= 13) end
local PERL = {
  d = is_digit, D = function(c) return not is_digit(c) end,
  w = is_word, W = function(c) return not is_word(c) end,
  s = is_space, S = function(c) return not is_space(c) end,
}
local CONTROL = { t = 9, n = 10, r = 13, f = 12, v = 11 }

local Parser = {}
Parser.__index = Parser

function Parser:err(msg)
  error({ regex_error = ("%s at offset %d"):format(msg, self.i - 1) }, 0)
end

function Parser:peek() return self.cps[self.i] end
function Parser:next()
  local c = self.cps[self.i]
  self.i = self.i + 1
  return c
end

-- an escape after `\`: a code point, or a predicate for a Perl class
function Parser:escape()
  local c = self:next()
  if not c then self:err("trailing backslash") end
  local ch = utf8.char(c)
  if PERL[ch] then return nil, PERL[ch] end
  if CONTROL[ch] then return CONTROL[ch] end
  if ch:match("%p") then return c end
  self:err(("unsupported escape \\%s"):format(ch))
end

function Parser:class()
  local negate = false
  if self:peek() == 94 then negate = true self:next() end -- ^
  local ranges, first = {}, true
  while true do
    local c = self:next()
    if not c then self:err("missing ]") end
    if c == 93 and not first then break end -- ]
    first = false
    local lo, pred
    if c == 92 then lo, pred = self:escape() else lo = c end
    if pred then
      ranges[#ranges + 1] = pred
    elseif self:peek() == 45 and self.cps[self.i + 1] and self.cps[self.i + 1] ~= 93 then -- a-b
      self:next()
      local hi = self:next()
      if hi == 92 then
        local p2
        hi, p2 = self:escape()
        if p2 then self:err("a class cannot end a range") end
      end
      if hi < lo then self:err("invalid character class range") end
      ranges[#ranges + 1] = { lo, hi }
    else
      ranges[#ranges + 1] = { lo, lo }
    end
  end
  return { t = "char", pred = class_pred(ranges, negate, self.fold) }
end

function Parser:number()
  local n
  while self:peek() and is_digit(self:peek()) do
    n = (n or 0) * 10 + (self:next() - 48)
    if n > 1000 then self:err("repeat count too large (1000 at most)") end
  end
  return n
end

function Parser:atom()
  local c = self:next()
  if c == 40 then -- (
    if self:peek() == 63 then -- ?
      self:next()
      local k = self:next()
      if k == 58 then -- (?:
      elseif k == 80 or k == 60 then -- (?P<name> or (?<name>
        if k == 80 and self:next() ~= 60 then self:err("invalid named group") end
        repeat
          local x = self:next()
          if not x then self:err("invalid named group") end
        until x == 62
      else
        self:err("unsupported group (?" .. (k and utf8.char(k) or "") .. " (look-around and flags other than a leading (?i) are not supported)")
      end
    end
    local node = self:alt()
    if self:next() ~= 41 then self:err("missing )") end
    return node
  elseif c == 91 then return self:class() -- [
  elseif c == 46 then return { t = "char", pred = function(x) return x ~= 10 end } -- .
  elseif c == 94 then return { t = "bol" }
  elseif c == 36 then return { t = "eol" }
  elseif c == 92 then
    local lit, pred = self:escape()
    if pred then return { t = "char", pred = pred } end
    c = lit
  elseif c == 42 or c == 43 or c == 63 then self:err("missing argument to repetition operator")
  elseif c == 41 then self:err("unexpected )")
  end
  return { t = "char", pred = class_pred({ { c, c } }, false, self.fold) }
end

function Parser:repeated()
  local node = self:atom()
  while true do
    local c, min, max = self:peek(), nil, nil
    if c == 42 then min, max = 0, math.huge
    elseif c == 43 then min, max = 1, math.huge
    elseif c == 63 then min, max = 0, 1
    elseif c == 123 then -- {
      local save = self.i
      self:next()
      min = self:number()
      if min and self:peek() == 44 then
        self:next()
        max = self:number() or math.huge
      else
        max = min
      end
      if not min or self:peek() ~= 125 then
        self.i = save -- a literal {
        return node
      end
      if max < min then self:err("invalid repeat count") end
    else
      return node
    end
    self:next()
    local lazy = false
    if self:peek() == 63 then lazy = true self:next() end
    if node.t == "bol" or node.t == "eol" then self:err("repetition of an anchor") end
    node = { t = "rep", node = node, min = min, max = max, lazy = lazy }
  end
end

function Parser:seq()
  local items = {}
  while self:peek() and self:peek() ~= 124 and self:peek() ~= 41 do
    items[#items + 1] = self:repeated()
  end
  return { t = "seq", items = items }
end

function Parser:alt()
  local alts = { self:seq() }
  while self:peek() == 124 do
    self:next()
    alts[#alts + 1] = self:seq()
  end
  if #alts == 1 then return alts[1] end
  return { t = "alt", alts = alts }
end

local function codepoints(s)
  local cps = {}
  if utf8.len(s) then
    for _, c in utf8.codes(s) do cps[#cps + 1] = c end
  else
    for i = 1, #s do cps[i] = s:byte(i) end
  end
  return cps
end

--- Compile a pattern; returns a regex, or nil and a message.
---@param pattern string
function M.compile(pattern)
  if type(pattern) ~= "string" then return nil, "a pattern must be a string" end
  local p = setmetatable({ cps = codepoints(pattern), i = 1, fold = false }, Parser)
  if pattern:sub(1, 4) == "(?i)" then p.fold, p.i = true, 5 end
  local ok, node = pcall(function()
    local n = p:alt()
    if p:peek() then p:err("unexpected )") end
    return n
  end)
  if not ok then
    if type(node) == "table" and node.regex_error then return nil, node.regex_error end
    error(node, 0)
  end
  return setmetatable({ node = node, source = pattern, anchored = pattern:sub(1, 1) == "^" }, Regex)
end

--- `compile` (text -> value or nil, message) with what it compiled kept
--- by text, weakly (unused ones go); for regexes and CEL programs alike.
function M.memo(compile)
  local cache = setmetatable({}, { __mode = "v" })
  return function(text)
    local v = cache[text]
    if v then return v end
    local r, err = compile(text)
    if r then cache[text] = r end
    return r, err
  end
end

--- compile, keeping what it compiled by text (schemas and CEL's matches()
--- check the same patterns again and again).
M.cached = M.memo(M.compile)

-- ------------------------------------------------------------ matching

-- m(node, i, k): does node match at i, then k(j)? (continuation style)
local function matcher(s, budget)
  local n = #s
  local steps = 0
  local m
  local function tick()
    steps = steps + 1
    if steps > budget then error({ regex_budget = true }, 0) end
  end
  local function rep(node, i, count, k)
    tick()
    local sub = node.node
    if sub.t == "char" then
      -- a repeated single character: counted in a loop, then tried from
      -- the longest (or, lazy, the shortest) — no recursion per character
      local j, max = i, node.max
      while j - i < max and s[j] ~= nil and sub.pred(s[j]) do j = j + 1 end
      local top = j - i
      if top < node.min then return false end
      if node.lazy then
        for c = node.min, top do if k(i + c) then return true end end
      else
        for c = top, node.min, -1 do if k(i + c) then return true end end
      end
      return false
    end
    local function more()
      if count >= node.max then return false end
      return m(node.node, i, function(j)
        if j == i and count >= node.min then return false end -- an empty loop ends
        return rep(node, j, count + 1, k)
      end)
    end
    if count < node.min then return more() end
    if node.lazy then return k(i) or more() end
    return more() or k(i)
  end
  m = function(node, i, k)
    tick()
    local t = node.t
    if t == "char" then
      local c = s[i]
      return c ~= nil and node.pred(c) and k(i + 1)
    elseif t == "seq" then
      local items = node.items
      local function step(idx, j)
        if idx > #items then return k(j) end
        return m(items[idx], j, function(j2) return step(idx + 1, j2) end)
      end
      return step(1, i)
    elseif t == "alt" then
      for _, a in ipairs(node.alts) do
        if m(a, i, k) then return true end
      end
      return false
    elseif t == "rep" then
      return rep(node, i, 0, k)
    elseif t == "bol" then
      return i == 1 and k(i)
    elseif t == "eol" then
      return i == n + 1 and k(i)
    end
    return false
  end
  return m
end

--- Does the regex match somewhere in s? true / false, or nil, "budget" when
--- the match cost more than M.BUDGET steps.
---@param s string
function Regex:find(s)
  local cps = codepoints(s)
  local m = matcher(cps, M.BUDGET)
  local ok, res = pcall(function()
    local last = self.anchored and 1 or #cps + 1
    for start = 1, last do
      if m(self.node, start, function() return true end) then return true end
    end
    return false
  end)
  if not ok then
    -- past the step budget, or a Lua stack too deep for the value: no
    -- verdict, which the caller reports as not matching
    return nil, "budget"
  end
  return res
end

return M
