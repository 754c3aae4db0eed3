--- vmsnap.apiserver.loopback: the in-process transport of `vmsnap up`.
---
--- The controllers of `vmsnap up` run in the process that serves the API.
--- Over HTTPS each of their requests paid TLS, HTTP framing and sockets on
--- both sides; through this transport a request is queued for the server's
--- own task, which hands it to the handler (vmsnap.apiserver.handler.dispatch)
--- as a request object with the methods of a vmsnap.core.httpd request, as
--- its accept loop does with a request off the network; the answer comes
--- back as a vmsnap.http response. Everything else is as it was: the credential
--- is checked and RBAC decides, the request is counted in the server's
--- metrics, bodies are JSON both ways (no table is shared between the client
--- and the store), a watch is a stream of event lines.
---
---   task.spawn(srv.serve, srv)   -- answers them (they wait in a queue until it runs)
---   local c = k8s.client({ server = url, token = t, transport = loopback.transport(srv) })
---
--- The contract is vmsnap.http.request's: a response {status, headers,
--- body}, or with `stream` one with :read(timeout), :lines(timeout),
--- :read_all(timeout) and :close(); failures are nil, message, code
--- (ECONNREFUSED once the server is closed, CLOSED for a request or stream
--- the server's closing cut short, TIMEOUT when an answer is not in within
--- `timeout`).
local core = require("vmsnap.core.task")
local handler = require("vmsnap.apiserver.handler")
local http = require("vmsnap.http")

local M = {}

local STREAM_MAX = 16 << 20 -- bytes a stream may hold unread (the HTTP server's limit)

-- %HH decoded, but %00 kept as written (as the HTTP server reads a path)
local function unescape(s)
  if not s:find("%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", function(h)
    local n = tonumber(h, 16)
    return n ~= 0 and string.char(n) or nil
  end))
end

-- a query's pairs, '+' read as a space (as the HTTP server reads them)
local function parse_query(q, out)
  for part in q:gmatch("[^&]+") do
    local k, v = part:gsub("%+", " "):match("^([^=]*)=?(.*)$")
    out[unescape(k)] = unescape(v)
  end
  return out
end

-- ------------------------------------------------------------ the request

-- What the handler sees: a vmsnap.core.httpd request. An answer is either
-- whole (respond) or a stream (stream, write..., finish) read by the client
-- side as it comes.
local Req = {}
Req.__index = Req

local function wake(r)
  local t = r.waiter
  if t then
    r.waiter = nil
    core.wakeup(t)
  end
end

function Req:method() return self.m end
function Req:path() return self.p end
function Req:args()
  local out = {}
  for k, v in pairs(self.q) do out[k] = v end
  return out
end
function Req:header(name) return self.h[name:lower()] end
function Req:headers()
  local out = {}
  for k, v in pairs(self.h) do out[k] = v end
  return out
end
function Req:body()
  if #self.b > self.max_body then
    return nil, ("request body larger than %d bytes"):format(self.max_body), "TOO_LARGE"
  end
  return self.b
end
function Req:peer() return "in-process" end
function Req:client_cert() return false, nil end

local function answered(r)
  if r.state ~= "taken" then error("httpd: request already answered", 3) end
end

local function lower_keys(h)
  local out = {}
  for k, v in pairs(h or {}) do out[k:lower()] = v end
  return out
end

function Req:respond(code, hdrs, body)
  answered(self)
  self.state, self.status, self.rh, self.out = "answered", code, lower_keys(hdrs), body or ""
  wake(self)
  if self.gone then return nil, "httpd: the client went away", "CLOSED" end
  return true
end

function Req:stream(code, hdrs)
  answered(self)
  self.state, self.status, self.rh = "streaming", code, lower_keys(hdrs)
  self.parts, self.pend = {}, 0
  wake(self)
  if self.gone then return nil, "httpd: the client went away", "CLOSED" end
  return true
end

function Req:write(data)
  if self.state ~= "streaming" then error("httpd: write() needs stream() first", 2) end
  if self.gone or self.finished then return nil, "httpd: the client went away", "CLOSED" end
  if self.pend + #data > STREAM_MAX then
    return nil, ("httpd: the client is too slow (%d bytes pending)"):format(self.pend), "EOVERFLOW"
  end
  self.parts[#self.parts + 1] = data
  self.pend = self.pend + #data
  wake(self)
  return true
end

function Req:finish()
  if self.state == "streaming" and not self.finished then
    self.finished = true
    wake(self)
  end
end

function Req:closed()
  return self.gone or (self.state == "streaming" and self.finished) or false
end

function Req:pending() return self.pend or 0 end

-- wait (as the client) until the handler has answered or written more, or
-- the deadline (nil: none) passes; false at the deadline
local function await(r, deadline)
  local wait
  if deadline then
    wait = deadline - core.now()
    if wait <= 0 then return false end
  end
  r.waiter = core.current()
  local _, _, code = core.suspend(wait)
  r.waiter = nil
  return code ~= "TIMEOUT"
end

-- what the stream holds unread, as one string (nil when nothing)
local function take(r)
  local parts = r.parts
  if #parts == 0 then return nil end
  local s = #parts == 1 and parts[1] or table.concat(parts)
  r.parts, r.pend = {}, 0
  return s
end

-- ------------------------------------------------------------ the response

local Stream = {}
Stream.__index = Stream

local CUT = "the API server in this process closed"

--- The next chunk, nil at the end, or nil, message, code: TIMEOUT, or
--- CLOSED once this stream was closed or the server closed before the end.
function Stream:read(timeout)
  local r = self._r
  if self.whole then
    local s = self.whole
    self.whole = false
    return s ~= "" and s or nil
  end
  if self.whole == false then return nil end
  local deadline = timeout and (core.now() + timeout)
  while true do
    if r.gone then return nil, "the stream was closed", "CLOSED" end
    local s = take(r)
    if s then return s end
    if r.finished then return nil end
    if r.lq.dead then return nil, CUT, "CLOSED" end
    if not await(r, deadline) then return nil, "no data within the timeout", "TIMEOUT" end
  end
end

http.reader(Stream) -- :lines() and :read_all() over :read()

--- Stop reading: the handler's next write fails (the client went away), and
--- a task blocked in :read() on this stream returns CLOSED.
function Stream:close()
  local r = self._r
  if not r.gone then
    r.gone = true
    r.parts, r.pend = {}, 0
    r.lq.live[r] = nil
    wake(r)
  end
end
Stream.__close = Stream.close

-- the queue of a server's in-process requests; `live` holds every request
-- queued or being answered (weakly: one its client dropped goes with it)
local function queue_of(server)
  local q = server.loopq
  if not q then
    q = { head = 1, tail = 0, live = setmetatable({}, { __mode = "k" }) }
    server.loopq = q
  end
  return q
end

-- ------------------------------------------------------------ the transport

--- The server's side: run by Server:serve() as a task of its own, it answers
--- the queued requests one after another, as the HTTP server's accept loop
--- does (a handler's own tasks are then the server's, not the caller's: a
--- client's deadline or cancel does not reach them).
---@param server table  a vmsnap.apiserver server
function M.serve(server)
  local q = queue_of(server)
  -- however this ends (a cancel at close, an error), nothing queued or in
  -- flight (in a subresource's task, a watch) is answered any more: their
  -- callers are woken to see the server closed, and later ones are refused
  local _ <close> = setmetatable({}, { __close = function()
    q.dead = true
    for r in pairs(q.live) do wake(r) end
  end })
  while not server.stopping do
    if q.head > q.tail then
      q.head, q.tail = 1, 0
      q.waiter = core.current()
      core.suspend()
      q.waiter = nil
    else
      local r = q[q.head]
      q[q.head] = nil
      q.head = q.head + 1
      if not r.gone then handler.dispatch(server, r) end
    end
  end
end

--- A function with vmsnap.http.request's contract that hands each request to
--- `server`'s handler in this process (M.serve answers it). It also reads
--- opts.path and opts.query (a table or a string) when given, instead of
--- parsing opts.url.
---@param server table  a vmsnap.apiserver server
function M.transport(server)
  local max_body = server.opts.max_body or (3 * 1024 * 1024)
  return function(o)
    local lq = queue_of(server)
    if server.closed or server.stopping or lq.dead then
      return nil, "the API server in this process is closed", "ECONNREFUSED"
    end
    local path, q = o.path, o.query
    local args = {}
    if not path then
      local p, qs = (o.url or ""):match("^%a[%w+.-]*://[^/]*([^?]*)%??(.*)$")
      path, q = p ~= "" and p or "/", qs
    end
    if type(q) == "string" then
      parse_query((q:gsub("^%?", "")), args)
    elseif type(q) == "table" then
      for k, v in pairs(q) do
        if v ~= nil and v ~= false then args[k] = tostring(v) end
      end
    end
    local r = setmetatable({ m = o.method or (o.body and "POST" or "GET"), p = unescape(path), q = args,
      h = lower_keys(o.headers), b = o.body or "", max_body = max_body, state = "taken", lq = lq }, Req)
    -- the client going away (a cancel, an error, a timeout) ends its request
    local guard <close> = setmetatable({}, { __close = function()
      if not r.handed then
        r.gone = true
        lq.live[r] = nil
      end
    end })
    lq.tail = lq.tail + 1
    lq[lq.tail] = r
    lq.live[r] = true
    if lq.waiter then core.wakeup(lq.waiter) end
    local deadline = (not o.stream and o.timeout) and (core.now() + o.timeout) or nil
    while r.state == "taken" do
      if server.stopping or lq.dead then return nil, CUT, "CLOSED" end
      if not await(r, deadline) then return nil, "no answer within the timeout", "TIMEOUT" end
    end
    -- through the event loop once, as an answer off a socket comes: tasks
    -- woken only by each other (this one, the server's) would otherwise
    -- keep timers and I/O from ever running
    core.sleep(0)
    if o.stream then
      r.handed = true
      local res = setmetatable({ status = r.status, headers = r.rh, http_version = "in-process", _r = r }, Stream)
      if r.state == "answered" then res.whole = r.out end
      return res
    end
    if r.state == "streaming" then
      -- a streamed answer (a large LIST) read whole
      local acc = {}
      while true do
        local s = take(r)
        if s then
          acc[#acc + 1] = s
        elseif r.finished then
          break
        elseif lq.dead then
          return nil, CUT, "CLOSED"
        elseif not await(r, deadline) then
          return nil, "no answer within the timeout", "TIMEOUT"
        end
      end
      r.out = table.concat(acc)
    end
    return { status = r.status, headers = r.rh, http_version = "in-process", body = r.out }
  end
end

return M
