--- vmsnap.sock: byte-stream connections on the loop — unix sockets
--- ("unix:/path"), vsock ("vsock:CID:PORT") and character devices (a path
--- such as "/dev/virtio-ports/org.qemu.guest_agent.0"). Every wait has a
--- timeout; failures return nil, message, code (TIMEOUT, CLOSED, ENOENT,
--- ECONNREFUSED, ...).
---
---     local sock = require("vmsnap.sock")
---     local c <close> = assert(sock.connect("unix:/run/qga.sock", 5))
---     assert(c:write('{"execute":"guest-ping"}\n', 5))
---     local bytes = c:read(5)
local core = require("vmsnap.core.sock")
local task = require("vmsnap.task")

local M = {}

---@class vmsnap.sock.Conn
local Conn = {}
Conn.__index = Conn

--- Connect; returns a connection or nil, message, code.
---@param target string
---@param timeout? number  seconds (default 10)
---@return vmsnap.sock.Conn?, string?, string?
function M.connect(target, timeout)
  local until_t = task.now() + (timeout or 10)
  local c, pending, code = core.open(target)
  local delay = 0.005
  while not c and code == "EAGAIN" and task.now() + delay < until_t do
    -- a unix socket's backlog is full: its server is busy; try again shortly
    task.sleep(delay)
    delay = math.min(delay * 2, 0.1)
    c, pending, code = core.open(target)
  end
  if not c then return nil, pending, code end
  if pending then
    if not c:wait("w", math.max(0.01, until_t - task.now())) then
      c:close()
      return nil, ("sock: connecting to %s timed out"):format(target), "TIMEOUT"
    end
    local ok, err, ecode = c:finish_connect()
    if not ok then
      c:close()
      return nil, ("%s: %s"):format(target, err), ecode
    end
  end
  return setmetatable({ c = c, target = target }, Conn)
end

--- Some bytes (what has arrived), or nil, message, code ("TIMEOUT" when
--- nothing came within timeout seconds, "CLOSED" at the end).
---@param timeout? number
function Conn:read(timeout)
  local until_t = timeout and (task.now() + timeout)
  while true do
    local data, err, code = self.c:read_some()
    if data then return data end
    if code ~= "EAGAIN" then return nil, err, code end
    local left = until_t and (until_t - task.now())
    if left and left <= 0 then return nil, "sock: nothing arrived within the timeout", "TIMEOUT" end
    if not self.c:wait("r", left) then
      return nil, "sock: nothing arrived within the timeout", "TIMEOUT"
    end
  end
end

--- Write all of data. Returns true, or nil, message, code.
---@param data string
---@param timeout? number
function Conn:write(data, timeout)
  local until_t = timeout and (task.now() + timeout)
  local off = 0
  while off < #data do
    local n, err, code = self.c:write_some(data, off)
    if not n then return nil, err, code end
    off = off + n
    if off < #data then
      local left = until_t and (until_t - task.now())
      if (left and left <= 0) or not self.c:wait("w", left) then
        return nil, "sock: the peer does not read (write timed out)", "TIMEOUT"
      end
    end
  end
  return true
end

function Conn:close()
  self.c:close()
end
Conn.__close = Conn.close

return M
