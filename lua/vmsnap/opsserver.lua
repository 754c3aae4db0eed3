--- vmsnap.opsserver: the operator's endpoints of a controller process, in
--- plain HTTP: `/metrics` (the process registry, vmsnap.metrics.process(),
--- in the Prometheus text format), `/healthz` (the loop answers; every
--- controller's workers alive; a leader's lease renewed in time) and
--- `/readyz` (every controller's cache synced). docs/metrics.md.
---
---     local ops = assert(opsserver.start({ addr = "127.0.0.1:8080", controllers = list }))
---     ...
---     ops:close()
local httpd = require("vmsnap.core.httpd")
local metrics = require("vmsnap.metrics")
local task = require("vmsnap.task")
local log = require("vmsnap.log")

local M = {}

local olog = log.new("ops")

--- Split "HOST:PORT" (":PORT" is 127.0.0.1); returns host, port or nil, message.
function M.parse_addr(s)
  local host, port = tostring(s or ""):match("^([%d.]*):(%d+)$")
  port = tonumber(port)
  if not host or not port or port > 65535 then
    return nil, ("%q is not an address: want HOST:PORT (an IPv4 address, e.g. 127.0.0.1:8080)"):format(tostring(s))
  end
  return host ~= "" and host or "127.0.0.1", port
end

-- what is wrong with the controllers, for /healthz or /readyz; nil when nothing
local function problems(list, what)
  local out = {}
  for _, c in ipairs(list or {}) do
    if what == "ready" then
      local ok = c.primary and c.primary.synced
      if c.elector and not c.elector.leading then ok = true end -- a candidate has nothing to sync
      if not ok then out[#out + 1] = c.name .. ": cache not synced" end
    else
      if c.healthy == false then out[#out + 1] = c.name .. ": workers keep dying" end
      local e = c.elector
      if e and e.leading and e.renewed and task.now() - e.renewed > (e.duration or 15) then
        out[#out + 1] = ("%s: leader lease not renewed for %.0f s"):format(c.name, task.now() - e.renewed)
      end
    end
  end
  return #out > 0 and table.concat(out, "\n") or nil
end

--- Serve the endpoints on opts.addr ("HOST:PORT") for opts.controllers (a
--- list, read at every request).
--- `opts.extra` is a function returning more exposition text (the API
--- server's own families, in `vmsnap up`). Returns the server ({port =,
--- close()}), or nil, message.
function M.start(opts)
  local host, port = M.parse_addr(opts.addr)
  if not host then return nil, port end
  local srv, err = httpd.listen({ host = host, port = port, max_connections = 64, max_connections_per_ip = 32 })
  if not srv then return nil, ("cannot listen on %s: %s"):format(opts.addr, tostring(err)) end
  local self = { port = srv:port(), http = srv }
  self.task = task.spawn(function()
    while true do
      local req, aerr, code = srv:accept()
      if not req then
        if code == "CLOSED" then return end
        olog:warn("accept failed", { error = aerr })
      else
        local path, method = req:path(), req:method()
        local plain = { ["Content-Type"] = "text/plain; charset=utf-8" }
        if method ~= "GET" and method ~= "HEAD" then
          req:respond(405, plain, "only GET\n")
        elseif path == "/metrics" then
          local text = metrics.process():render() .. (opts.extra and opts.extra() or "")
          req:respond(200, { ["Content-Type"] = metrics.CONTENT_TYPE }, text)
        elseif path == "/healthz" or path == "/livez" or path == "/readyz" then
          local bad = problems(opts.controllers, path == "/readyz" and "ready" or "health")
          if bad then req:respond(503, plain, bad .. "\n") else req:respond(200, plain, "ok\n") end
        else
          req:respond(404, plain, "not found: /metrics, /healthz, /readyz\n")
        end
      end
    end
  end)
  function self:close()
    if self.closed then return end
    self.closed = true
    self.http:close()
    task.cancel(self.task)
  end
  return self
end

--- The servers of `--metrics-addr` and `--health-addr` (one when both name
--- the same address; none when neither is given). Returns the list, or nil,
--- message. opts as start's.
function M.start_all(metrics_addr, health_addr, opts)
  local out, seen = {}, {}
  for _, a in ipairs({ metrics_addr or false, health_addr or false }) do
    if a and not seen[a] then
      seen[a] = true
      local o = {}
      for k, v in pairs(opts) do o[k] = v end
      o.addr = a
      local s, err = M.start(o)
      if not s then
        for _, x in ipairs(out) do x:close() end
        return nil, err
      end
      out[#out + 1] = s
      olog:info("serving", { addr = ("%s:%d"):format((M.parse_addr(a)), s.port),
        paths = (a == metrics_addr and "/metrics " or "") .. (a == health_addr and "/healthz /readyz" or "") })
    end
  end
  return out
end

return M
