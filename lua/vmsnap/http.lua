--- vmsnap.http: HTTP client on the event loop (libcurl multi-socket).
---
--- Many requests run at once from straight-line code in different tasks;
--- connections are reused and HTTP/2 is used where the server offers it
--- (over TLS, or with http_version = "2-prior-knowledge").
---
---   local http = require("vmsnap.http")
---   local res, err, code = http.request{ url = "http://127.0.0.1:8080/x", timeout = 5 }
---   -- res.status, res.headers["content-type"], res.body
---
--- HTTP status codes are results, not failures. Transport failures return
--- `nil, message, code` with code TIMEOUT, CLOSED, ECONNREFUSED, RESOLVE,
--- TLS, BAD_URL, TOO_LARGE or CURL.
local core = require("vmsnap.core.http")
local errors = require("vmsnap.errors")

local type, pairs, setmetatable, error = type, pairs, setmetatable, error
local lower, gmatch, match = string.lower, string.gmatch, string.match

local M = {}

---@class vmsnap.http.RequestOpts
---@field url string
---@field method? string            default "GET" ("POST" when a body is given)
---@field headers? table<string,string>
---@field body? string
---@field timeout? number           seconds for the whole transfer (none by default; a stream has none)
---@field connect_timeout? number   seconds to connect
---@field stream? boolean           return once the headers are in, with a body iterator
---@field max_body? integer         largest body kept in memory (default 256 MiB)
---@field http_version? string      "1.1", "2" (default: HTTP/2 over TLS when offered) or "2-prior-knowledge"
---@field unix_socket? string       connect to this unix socket instead
---@field connect_to? string[]      curl CONNECT_TO entries "host:port:connect-host:connect-port"
---@field tls? vmsnap.http.TlsOpts

---@class vmsnap.http.TlsOpts
---@field ca_file? string
---@field ca_data? string    PEM
---@field cert_file? string
---@field cert_data? string  PEM
---@field key_file? string
---@field key_data? string   PEM
---@field insecure? boolean  do not verify the server

--- Parse a raw header block into a table of lower-case names (repeated
--- headers are joined with ", ").
---@param raw string
---@return table<string,string>
function M.parse_headers(raw)
  local h = {}
  for line in gmatch(raw, "[^\r\n]+") do
    local name, value = match(line, "^([^:%s]+):%s*(.-)%s*$")
    if name then
      name = lower(name)
      h[name] = h[name] and (h[name] .. ", " .. value) or value
    end
  end
  return h
end

local Response = {}
Response.__index = Response

--- The next chunk of a streamed body, nil at its end, or nil, message, code.
---@param timeout? number
function Response:read(timeout)
  return self._req:await("data", timeout)
end

--- Iterate over the lines of a streamed body (without the newline). A
--- transport failure raises.
function Response:lines(timeout)
  local buf, pos = "", 1
  local done = false
  return function()
    while true do
      local nl = buf:find("\n", pos, true)
      if nl then
        local line = buf:sub(pos, nl - 1)
        pos = nl + 1
        return (line:gsub("\r$", ""))
      end
      if done then
        if pos <= #buf then
          local line = buf:sub(pos)
          pos = #buf + 1
          return line
        end
        return nil
      end
      local chunk, err, code = self:read(timeout)
      if chunk == nil and err then
        error(errors.new(code, err), 0)
      end
      if chunk == nil then
        done = true
      else
        buf = buf:sub(pos) .. chunk
        pos = 1
      end
    end
  end
end

--- Read the rest of a streamed body.
function Response:read_all(timeout)
  local parts = {}
  while true do
    local chunk, err, code = self:read(timeout)
    if chunk == nil then
      if err then return nil, err, code end
      return table.concat(parts)
    end
    parts[#parts + 1] = chunk
  end
end

--- Stop the transfer and release it (also done by `<close>` and the GC).
function Response:close()
  self._req:close()
end
Response.__close = Response.close

--- Give `class` (whose :read(timeout) keeps Response:read's contract) the
--- :lines() and :read_all() of a streamed response.
function M.reader(class)
  class.lines, class.read_all = Response.lines, Response.read_all
  return class
end

local close_owner = { __close = function(o) if o.req then o.req:close() end end }

--- Perform a request. Without `stream`, returns `{status, headers, body,
--- http_version}` when the transfer is complete. With `stream`, returns as
--- soon as the headers are in, with `:read()`, `:lines()`, `:read_all()`
--- and `:close()` for the body.
---@param opts vmsnap.http.RequestOpts
function M.request(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'request' (table expected, got " .. type(opts) .. ")", 2)
  end
  local req = core.new(opts)
  -- closes the transfer on every way out (error, cancel) unless a streamed
  -- response took it over
  local owner <close> = setmetatable({ req = req }, close_owner)
  local ok, err, code = req:start()
  if not ok then return nil, err, code end
  if opts.stream then
    ok, err, code = req:await("headers", opts.timeout)
    if not ok then return nil, err, code end
    local status, version, raw = req:info()
    local res = setmetatable({
      status = status, http_version = version, headers = M.parse_headers(raw), _req = req,
    }, Response)
    owner.req = nil -- the response owns it now
    return res
  end
  ok, err, code = req:await("done", opts.timeout)
  if not ok then return nil, err, code end
  local status, version, raw = req:info()
  return {
    status = status,
    http_version = version,
    headers = M.parse_headers(raw),
    body = req:take(),
  }
end

for _, m in pairs({ "GET", "DELETE", "HEAD" }) do
  M[m:lower()] = function(url, opts)
    local o = { method = m }
    for k, v in pairs(opts or {}) do o[k] = v end
    o.url = url
    return M.request(o)
  end
end

for _, m in pairs({ "POST", "PUT", "PATCH" }) do
  M[m:lower()] = function(url, body, opts)
    local o = { method = m }
    for k, v in pairs(opts or {}) do o[k] = v end
    o.url, o.body = url, body
    return M.request(o)
  end
end

--- libcurl's version, TLS library and whether it speaks HTTP/2.
function M.curl_version()
  return core.curl_version()
end

return M
