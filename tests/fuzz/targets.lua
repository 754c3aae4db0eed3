-- The Lua side of tests/fuzz/lua_fuzz.c: one function per target, each
-- given the fuzzer's bytes. A target returns normally for every input the
-- code handles (accepted or refused with a message) and raises only when an
-- invariant breaks — a raise that is not the code's own clear refusal, a
-- round trip that changes the value, an API answer of 500. lua_fuzz.c turns
-- a raise into abort(), which libFuzzer reports with the input.
--
-- Loaded with vmsnap_run_file; registers itself as package.loaded.fuzz_targets.
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local base64 = require("vmsnap.base64")
local fs = require("vmsnap.fs")
local quantity = require("vmsnap.quantity")
local select_ = require("vmsnap.apiserver.select")
local patch = require("vmsnap.apiserver.patch")
local config = require("vmsnap.k8s.config")

local M = {}

local function check(cond, fmt, ...)
  if not cond then error(("invariant: " .. fmt):format(...), 2) end
end

-- a decoder must either answer or refuse with a message; anything it raises
-- is a bug (a crash in C shows up by itself under ASan)
local function must_not_raise(what, fn, ...)
  local r = table.pack(pcall(fn, ...))
  if not r[1] then error(("%s raised: %s"):format(what, tostring(r[2])), 0) end
  return table.unpack(r, 2, r.n)
end

local T = {}

function T.yaml(s)
  local v, err = must_not_raise("yaml.load", yaml.load, s)
  if v == nil then
    check(err == nil or type(err) == "string", "yaml.load's error is a string")
    return
  end
  -- what was loaded can be written back and read again to the same JSON
  local text, derr = must_not_raise("yaml.dump", yaml.dump, v)
  local j1 = must_not_raise("json.encode", json.encode, v)
  if text and j1 then
    local again = must_not_raise("yaml.load (round trip)", yaml.load, text)
    local j2 = again ~= nil and json.encode(again) or nil
    check(j2 == j1, "yaml round trip changed the value: %s -> %s", tostring(j1), tostring(j2))
  else
    check(type(derr) == "string" or text, "yaml.dump failed without a message")
  end
  must_not_raise("yaml.load_all", yaml.load_all, s)
end

function T.json(s)
  local v, err = must_not_raise("json.decode", json.decode, s)
  if v == nil and err then return end
  local text, eerr = must_not_raise("json.encode", json.encode, v)
  if not text then
    check(type(eerr) == "string", "json.encode failed without a message")
    return
  end
  local again = must_not_raise("json.decode (round trip)", json.decode, text)
  local text2 = json.encode(again)
  check(text2 == text, "json round trip changed the value: %s -> %s", text, tostring(text2))
  must_not_raise("yaml.dump of JSON", yaml.dump, v)
end

-- the emitters on any bytes: the input, cut at NUL and newline bytes, as
-- keys and values (nested every third piece); json.encode and yaml.dump
-- must answer with well-formed UTF-8 that reads back (ill-formed input
-- becomes U+FFFD), or refuse with a message
function T.emit(s)
  local root, cur, i = {}, nil, 0
  cur = root
  for piece in (s .. "\0"):gmatch("([^%z\n]*)[%z\n]") do
    i = i + 1
    if i % 3 == 0 then
      local sub = {}
      cur[piece] = sub
      cur = sub
    elseif i % 3 == 1 then
      cur[#cur + 1] = piece
    else
      cur["k" .. i .. piece] = piece
    end
    if i > 300 then break end
  end
  local j, jerr = must_not_raise("json.encode", json.encode, { root, s })
  check(j or type(jerr) == "string", "json.encode failed without a message")
  if j then
    check(utf8.len(j) ~= nil, "json.encode wrote ill-formed UTF-8")
    check(json.decode(j) ~= nil, "json.encode wrote what json.decode refuses")
  end
  local y, yerr = must_not_raise("yaml.dump", yaml.dump, { root, s })
  check(y or type(yerr) == "string", "yaml.dump failed without a message")
  if y then
    check(utf8.len(y) ~= nil, "yaml.dump wrote ill-formed UTF-8")
    local back, berr = must_not_raise("yaml.load of yaml.dump", yaml.load, y)
    check(back ~= nil, "yaml.dump wrote what yaml.load refuses: %s", tostring(berr))
  end
end

-- CEL rules and regular expressions from any bytes: compile answers or
-- refuses with a message; a compiled rule evaluates to a value or an error
-- message, within its budget, whatever self is
local cel = require("vmsnap.apiserver.cel")
local regex = require("vmsnap.apiserver.regex")
function T.cel(s)
  local rule, data = s:match("^(.-)\n(.*)$")
  rule = rule or s
  local prog, err = must_not_raise("cel.compile", cel.compile, rule)
  check(prog or type(err) == "string", "cel.compile failed without a message")
  if prog then
    local self = json.decode(data or "") or data or {}
    local v, eerr = must_not_raise("cel eval", prog.eval, prog, { self = self, oldSelf = self })
    check(v ~= nil or type(eerr) == "string", "cel eval failed without a message")
  end
  local re, rerr = must_not_raise("regex.compile", regex.compile, rule)
  check(re or type(rerr) == "string", "regex.compile failed without a message")
  if re then must_not_raise("regex find", re.find, re, data or rule) end
end

local kc_dir
function T.kubeconfig(s)
  kc_dir = kc_dir or assert(fs.tempdir("vmsnap-fuzz-kc"))
  local path = kc_dir.path .. "/config"
  assert(fs.write_atomic(path, s))
  -- loading resolves contexts, clusters and users; the credentials are not
  -- used (an exec plugin in a fuzzed file must never run)
  local cfg, err = must_not_raise("config.from_kubeconfig", config.from_kubeconfig, { kubeconfig = path })
  if not cfg then
    check(type(err) == "string", "a refused kubeconfig says why")
    return
  end
  check(type(cfg.server) == "string", "a loaded config has a server")
end

local SAMPLE = { metadata = { name = "vm-1", namespace = "default", labels = { app = "db", tier = "x" } },
  spec = { nodeName = "n1" }, status = { phase = "Ready" } }
-- the input is "LABEL SELECTOR\nFIELD SELECTOR" (or one text for both)
function T.selectors(s)
  local ls, fsel = s:match("^(.-)\n(.*)$")
  if not ls then ls, fsel = s, s end
  local m, err = must_not_raise("parse_labels", select_.parse_labels, ls)
  if m then must_not_raise("a label matcher", m, SAMPLE.metadata.labels) else check(err == nil or type(err) == "string", "label error") end
  local f, ferr = must_not_raise("parse_fields", select_.parse_fields, fsel, function() return true end)
  if f then must_not_raise("a field matcher", f, SAMPLE) else check(ferr == nil or type(ferr) == "string", "field error") end
end

-- the input is "DOCUMENT\nPATCH" (JSON both); every patch flavour is applied
function T.patch(s)
  local a, b = s:match("^(.-)\n(.*)$")
  if not a then return end
  local doc, patchdoc = json.decode(a), json.decode(b)
  if doc == nil or patchdoc == nil then return end
  local merged = must_not_raise("merge patch", patch.merge, doc, patchdoc)
  must_not_raise("json.encode (merged)", json.encode, merged)
  must_not_raise("strategic merge patch", patch.strategic, doc, patchdoc)
  local r, err = must_not_raise("json patch", patch.json_patch, doc, patchdoc)
  if r == nil then check(type(err) == "string", "a refused JSON patch says why") end
  if type(doc) == "table" then must_not_raise("leaves", patch.leaves, doc) end
end

function T.quantity(s)
  local n, err = must_not_raise("quantity.parse", quantity.parse, s)
  if n == nil then
    check(type(err) == "string", "a refused quantity says why")
    return
  end
  if math.type(n) == "integer" and n >= 0 then
    local text = must_not_raise("quantity.format", quantity.format, n)
    check(quantity.parse(text) == n, "quantity round trip: %s -> %s -> %s", s, tostring(text), tostring(quantity.parse(text)))
  end
end

-- ---------------------------------------------------------------- http

-- The API server's handler with a request parsed from raw bytes the way
-- libmicrohttpd presents it (method, percent-decoded path, decoded query
-- arguments, headers, body). An answer of 500 or more is a bug.
local S, S_dir, S_uses
local function server()
  if S and S_uses < 500 then S_uses = S_uses + 1 return S end
  if S then S:close() S_dir:remove() end
  S_dir = assert(fs.tempdir("vmsnap-fuzz-api"))
  S = assert(require("vmsnap.apiserver").new({ data = S_dir.path, platform_subresources = false }))
  S_uses = 0
  return S
end

local function unpct(s, plus)
  if plus then s = s:gsub("%+", " ") end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_request(raw)
  local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
  if not head then head, body = raw, "" end
  local line, rest = head:match("^([^\r\n]*)\r?\n?(.*)$")
  local method, target, version = line:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method or version:sub(1, 1) ~= "1" then return nil end -- refused by libmicrohttpd
  local headers = {}
  for l in rest:gmatch("[^\r\n]+") do
    local k, v = l:match("^([%w%-]+):%s*(.-)%s*$")
    if not k then return nil end -- a malformed header line: a 400 from libmicrohttpd
    headers[k:lower()] = v
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  local args = {}
  for kv in query:gmatch("[^&]+") do
    local k, v = kv:match("^([^=]*)=?(.*)$")
    args[unpct(k, true)] = unpct(v, true)
  end
  return { method = method, path = unpct(path), args = args, headers = headers, body = body }
end

function T.http(s)
  local r = parse_request(s)
  if not r then return end
  local answer = {}
  local req = {}
  function req.method() return r.method end
  function req.path() return r.path end
  function req.args() return r.args end
  function req.header(_, name) return r.headers[name:lower()] end
  function req.headers() return r.headers end
  function req.body() return r.body end
  function req.peer() return "127.0.0.1:1" end
  function req.client_cert() return false end
  function req.respond(_, status, _, body) answer.status, answer.body = status, body end
  function req.stream(_, status) answer.status = status return true end
  function req.write() return true end
  function req.finish() end
  function req.closed() return true end
  function req.pending() return 0 end
  local srv = server()
  must_not_raise("handler.dispatch", require("vmsnap.apiserver.handler").dispatch, srv, req)
  srv.watchers:close_all()
  check(answer.status, "the handler answered")
  check(answer.status < 500, "the server answered %d: %s", answer.status, tostring(answer.body):sub(1, 300))
end

--- Run one target with base64 input (what lua_fuzz.c calls).
function M.run(target, b64)
  local fn = T[target]
  if not fn then error("no fuzz target " .. tostring(target), 0) end
  fn(assert(base64.decode(b64)))
  return true
end

--- The target names.
function M.targets()
  local out = {}
  for k in pairs(T) do out[#out + 1] = k end
  table.sort(out)
  return out
end

package.loaded.fuzz_targets = M
return M
