--- vmsnap.qga: the QEMU guest agent protocol on the loop.
---
---     local qga = require("vmsnap.qga")
---     local a <close> = assert(qga.connect("unix:/run/vm/qga.sock"))
---     assert(a:ping())
---     local n = assert(a:fsfreeze_freeze_list({ "/mnt/data" }))   -- frozen filesystems
---     assert(a:fsfreeze_thaw())
---     local r = assert(a:exec({ "/bin/sh", "-c", "echo hi" }, { timeout = 10 }))  -- r.exitcode, r.stdout
---
--- Targets: "unix:/path", "vsock:CID:PORT", or a character device path (inside
--- a guest). Before the first command, and after any command that timed out
--- or met garbage, the connection is resynchronised with guest-sync-delimited:
--- a 0xFF byte, then `{"execute":"guest-sync-delimited","arguments":{"id":N}}`;
--- everything up to the agent's 0xFF and every reply with another id is
--- dropped, so a stale reply is never taken for a new one.
---
--- Every command has a timeout (opts.timeout, default 10 s). Failures return
--- `nil, message, code`: the agent's error class ("GenericError",
--- "CommandNotFound", "CommandDisabled", ...), "QGA_TIMEOUT" when the agent did
--- not answer in time, "CLOSED" when the connection ended, "QGA_PROTOCOL" for
--- an answer that is not the protocol's. Commands run one at a time per agent
--- (a call from another task waits its turn).
local sock = require("vmsnap.sock")
local core = require("vmsnap.core.qga")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local b64 = require("vmsnap.base64")

local M = {}

---@class vmsnap.qga.Agent
---@field target string
local Agent = {}
Agent.__index = Agent

---@class vmsnap.qga.Opts
---@field timeout? number          seconds per command (default 10)
---@field connect_timeout? number  (default 5)

--- Connect to an agent (and synchronise). Returns the agent or nil, message, code.
---@param target string
---@param opts? vmsnap.qga.Opts
---@return vmsnap.qga.Agent?, string?, string?
function M.connect(target, opts)
  opts = opts or {}
  local c, err, code = sock.connect(target, opts.connect_timeout or 5)
  if not c then return nil, "qga: " .. tostring(err), code end -- err names the target
  local a = setmetatable({ target = target, conn = c, framer = core.framer(), frames = {}, fpos = 1,
    timeout = opts.timeout or 10, need_sync = true, sync_id = math.random(1, 1 << 30),
    lock = task.channel(1) }, Agent)
  a.lock:send(true)
  local ok, e2, c2 = a:sync()
  if not ok then
    c:close()
    return nil, e2, c2
  end
  return a
end

function Agent:close()
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
end
Agent.__close = Agent.close

-- the next event of the stream: a frame's text, "delim", or false (dropped)
function Agent:next_event(until_t)
  while true do
    if self.fpos <= #self.frames then
      local ev = self.frames[self.fpos]
      self.frames[self.fpos] = nil
      self.fpos = self.fpos + 1
      return ev
    end
    self.frames, self.fpos = {}, 1
    if not self.conn then return nil, "qga: the connection is closed", "CLOSED" end
    local left = until_t - task.now()
    if left <= 0 then return nil, "qga: the agent did not answer in time", "QGA_TIMEOUT" end
    local data, err, code = self.conn:read(left)
    if not data then
      if code == "TIMEOUT" then return nil, "qga: the agent did not answer in time", "QGA_TIMEOUT" end
      self:close()
      return nil, ("qga %s: %s"):format(self.target, err), code == "CLOSED" and "CLOSED" or code
    end
    self.frames = self.framer:feed(data)
  end
end

--- Resynchronise: after this, the next reply belongs to the next command.
function Agent:sync(timeout)
  local until_t = task.now() + (timeout or self.timeout)
  self.sync_id = (self.sync_id % 0x3fffffff) + 1
  local id = self.sync_id
  -- drop what was buffered; 0xFF makes the agent drop a partial command of ours
  self.frames, self.fpos = {}, 1
  self.framer:reset()
  if not self.conn then return nil, "qga: the connection is closed", "CLOSED" end
  local ok, err, code = self.conn:write("\255" .. json.encode({ execute = "guest-sync-delimited",
    arguments = { id = id } }) .. "\n", until_t - task.now())
  if not ok then
    if code == "TIMEOUT" then return nil, "qga: the agent does not read", "QGA_TIMEOUT" end
    self:close()
    return nil, ("qga %s: %s"):format(self.target, err), code
  end
  local delimited = false
  while true do
    local ev, e2, c2 = self:next_event(until_t)
    if ev == nil then return nil, e2, c2 end
    if ev == "delim" then
      delimited = true
    elseif ev and delimited then
      local r = json.decode(ev)
      if type(r) == "table" and r["return"] == id then
        self.need_sync = false
        return true
      end
      -- a stale reply (another id) or an error about our 0xFF: keep reading
    end
  end
end

local function unlock(a) a.lock:send(true) end

--- Run one command: returns the agent's "return" value, or nil, message, code.
---@param name string          the QGA command ("guest-ping")
---@param args? table
---@param timeout? number
function Agent:call(name, args, timeout)
  local okl = self.lock:recv(timeout or self.timeout)
  if not okl then return nil, "qga: another command is still running", "QGA_TIMEOUT" end
  local guard <close> = setmetatable({}, { __close = function() unlock(self) end })
  local until_t = task.now() + (timeout or self.timeout)
  if self.need_sync then
    local ok, err, code = self:sync(until_t - task.now())
    if not ok then return nil, err, code end
  end
  local msg = json.encode({ execute = name, arguments = args })
  self.need_sync = true -- until the reply is in
  local ok, err, code = self.conn:write(msg .. "\n", until_t - task.now())
  if not ok then
    if code == "TIMEOUT" then return nil, "qga: the agent does not read", "QGA_TIMEOUT" end
    self:close()
    return nil, ("qga %s: %s"):format(self.target, err), code
  end
  while true do
    local ev, e2, c2 = self:next_event(until_t)
    if ev == nil then
      if c2 == "QGA_TIMEOUT" then
        e2 = ("qga: %s: no answer within %gs"):format(name, timeout or self.timeout)
      end
      return nil, e2, c2
    end
    if ev and ev ~= "delim" then
      local r = json.decode(ev)
      if type(r) ~= "table" then
        return nil, ("qga: %s: the answer is not JSON"):format(name), "QGA_PROTOCOL"
      end
      if r["return"] ~= nil then
        self.need_sync = false
        return r["return"]
      end
      if type(r.error) == "table" then
        self.need_sync = false
        return nil, ("qga: %s: %s"):format(name, tostring(r.error.desc)), r.error.class or "GenericError"
      end
      -- an event or something else: not ours
    end
  end
end

-- ------------------------------------------------------------ commands

local function cmd(name)
  return function(self, timeout) return self:call(name, nil, timeout) end
end

--- guest-ping
Agent.ping = cmd("guest-ping")
--- guest-info: version and supported commands
Agent.info = cmd("guest-info")
--- guest-get-osinfo
Agent.get_osinfo = cmd("guest-get-osinfo")
--- guest-get-fsinfo: mounted filesystems
Agent.get_fsinfo = cmd("guest-get-fsinfo")
--- guest-get-host-name
Agent.get_host_name = cmd("guest-get-host-name")
--- guest-network-get-interfaces
Agent.network_get_interfaces = cmd("guest-network-get-interfaces")
--- guest-fsfreeze-status: "thawed" or "frozen"
Agent.fsfreeze_status = cmd("guest-fsfreeze-status")
--- guest-fsfreeze-freeze: every filesystem (agents run by vmsnap's tests block it)
Agent.fsfreeze_freeze = cmd("guest-fsfreeze-freeze")
--- guest-fsfreeze-thaw: the number of filesystems thawed
Agent.fsfreeze_thaw = cmd("guest-fsfreeze-thaw")

--- guest-fsfreeze-freeze-list: freeze these mountpoints only; the number frozen.
---@param mountpoints string[]
function Agent:fsfreeze_freeze_list(mountpoints, timeout)
  if type(mountpoints) ~= "table" or #mountpoints == 0 then
    error("bad argument #1 to 'fsfreeze_freeze_list' (non-empty list of mountpoints expected)", 2)
  end
  return self:call("guest-fsfreeze-freeze-list", { mountpoints = json.array(mountpoints) }, timeout)
end

--- guest-exec: start argv; returns the pid. opts: env {"K=V", ...} or {K = V},
--- input (bytes for stdin), capture (default true).
function Agent:exec_start(argv, opts, timeout)
  opts = opts or {}
  if type(argv) ~= "table" or type(argv[1]) ~= "string" then
    error("bad argument #1 to 'exec' (argv with a program expected)", 2)
  end
  local args = { path = argv[1], arg = json.array({ table.unpack(argv, 2) }),
    ["capture-output"] = opts.capture ~= false }
  if opts.env then
    local env = json.array()
    for k, v in pairs(opts.env) do
      env[#env + 1] = type(k) == "number" and v or (k .. "=" .. tostring(v))
    end
    table.sort(env)
    args.env = env
  end
  if opts.input then args["input-data"] = b64.encode(opts.input) end
  local r, err, code = self:call("guest-exec", args, timeout)
  if not r then return nil, err, code end
  return r.pid
end

--- guest-exec-status: {exited, exitcode, signal, stdout, stderr, truncated} (output decoded).
function Agent:exec_status(pid, timeout)
  local r, err, code = self:call("guest-exec-status", { pid = pid }, timeout)
  if not r then return nil, err, code end
  return { exited = r.exited, exitcode = r.exitcode, signal = r.signal,
    stdout = r["out-data"] and b64.decode(r["out-data"]) or "", stderr = r["err-data"] and b64.decode(r["err-data"]) or "",
    truncated = r["out-truncated"] or r["err-truncated"] or false }
end

--- Run argv in the guest and wait for it: {exitcode, signal, stdout, stderr}.
--- After opts.timeout seconds (default 30) returns nil, message, "TIMEOUT"
--- and the pid (the process may still run in the guest).
function Agent:exec(argv, opts)
  opts = opts or {}
  local pid, err, code = self:exec_start(argv, opts)
  if not pid then return nil, err, code end
  local until_t = task.now() + (opts.timeout or 30)
  local delay = 0.01
  while true do
    local st, e2, c2 = self:exec_status(pid)
    if not st then return nil, e2, c2 end
    if st.exited then
      st.pid = pid
      return st
    end
    if task.now() + delay > until_t then
      return nil, ("qga: %s did not finish within %gs (pid %d in the guest)"):format(argv[1], opts.timeout or 30, pid),
        "TIMEOUT", pid
    end
    task.sleep(delay)
    delay = math.min(delay * 2, 0.2)
  end
end

--- guest-file-open: a handle. mode as fopen ("r", "w", "a", ...).
function Agent:file_open(path, mode, timeout)
  return self:call("guest-file-open", { path = path, mode = mode or "r" }, timeout)
end

--- guest-file-read: data (decoded) and eof.
function Agent:file_read(handle, count, timeout)
  local r, err, code = self:call("guest-file-read", { handle = handle, count = count or 65536 }, timeout)
  if not r then return nil, err, code end
  return b64.decode(r["buf-b64"] or ""), r.eof
end

--- guest-file-write: bytes written.
function Agent:file_write(handle, data, timeout)
  local r, err, code = self:call("guest-file-write", { handle = handle, ["buf-b64"] = b64.encode(data) }, timeout)
  if not r then return nil, err, code end
  return r.count
end

--- guest-file-close
function Agent:file_close(handle, timeout)
  local r, err, code = self:call("guest-file-close", { handle = handle }, timeout)
  if r == nil then return nil, err, code end
  return true
end

M.Agent = Agent
return M
