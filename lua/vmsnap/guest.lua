--- vmsnap.guest: a VM's guest agent, whatever the transport, and freezing
--- that never leaves a guest frozen.
---
---     local guest = require("vmsnap.guest")
---     local g = assert(guest.for_vm(client, vm))
---     do
---       local frozen <close> = assert(g:freeze{ budget = 10 })
---       ... issue the volume snapshots ...
---     end                     -- thawed here, whatever happened in between
---
--- Transports:
--- - "socket": the agent's socket (`opts.socket`, or the VM annotation
---   `vmsnap.io/agent`, e.g. "unix:/run/vm/qga.sock"), through vmsnap.qga;
--- - "api": the VM's freeze/unfreeze subresources
---   (`PUT /apis/subresources.virtualization.deckhouse.io/v1alpha2/namespaces/NS/virtualmachines/NAME/freeze`
---   with `unfreezeTimeout` = the budget, so the platform thaws by itself if
---   we die), the VM's AgentReady and FilesystemFrozen conditions for status.
---
--- A freeze is a to-be-closed guard: leaving its scope by any path (success,
--- error, timeout, cancellation) thaws. A budget timer thaws when the budget
--- runs out (the guard reports it). The freeze is recorded on the VM as a
--- lease (annotation `vmsnap.io/frozen-by`: holder, since, deadline), and
--- `guest.thaw_orphans` (`vmsnap guest thaw-orphans`, every controller start)
--- thaws guests whose lease holder is gone or whose deadline has passed.
local qga = require("vmsnap.qga")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local fs = require("vmsnap.fs")
local vtime = require("vmsnap.time")
local proc = require("vmsnap.proc")
local rtcore = require("vmsnap.core.runtime")

local M = {}

M.LEASE = "vmsnap.io/frozen-by"
M.AGENT = "vmsnap.io/agent"
M.MOUNTPOINTS = "vmsnap.io/freeze-mountpoints"
M.SUBRESOURCE_GROUP = "subresources.virtualization.deckhouse.io"

local glog = log.new("guest")

-- ------------------------------------------------------------ holders

local function proc_start(pid)
  local st = fs.read_file("/proc/" .. pid .. "/stat")
  if not st then return nil end
  -- the fields after the command (which may hold spaces) in parentheses
  local rest = st:match("%) (.*)$")
  if not rest then return nil end
  local i = 0
  for f in rest:gmatch("%S+") do
    i = i + 1
    if i == 20 then return f end -- field 22: start time in clock ticks since boot
  end
end

local function hostname()
  local h = fs.read_file("/proc/sys/kernel/hostname")
  return h and h:gsub("%s+$", "") or "unknown"
end

local function boot_id()
  local b = fs.read_file("/proc/sys/kernel/random/boot_id")
  return b and b:gsub("%s+$", "") or "?"
end

local self_holder
--- This process as a lease holder: "host/boot-id/pid/start-time".
function M.holder()
  if not self_holder then
    local stat = fs.read_file("/proc/self/stat") or ""
    local pid = stat:match("^(%d+)") or "0"
    self_holder = ("%s/%s/%s/%s"):format(hostname(), boot_id(), pid, proc_start("self") or proc_start(pid) or "?")
  end
  return self_holder
end

--- Is the holder of a lease still running? nil when it cannot be told from
--- here (another machine): then only the deadline decides.
function M.holder_alive(holder)
  local host, boot, pid, start = tostring(holder):match("^(.-)/(.-)/(%d+)/(.+)$")
  if not host then return false end
  if host ~= hostname() then return nil end
  if boot ~= boot_id() then return false end -- the machine rebooted since
  return proc_start(pid) == start
end

local function parse_lease(vm)
  local a = vm and vm.metadata and vm.metadata.annotations
  local raw = a and a[M.LEASE]
  if not raw then return nil end
  local l = json.decode(raw)
  if type(l) ~= "table" then return { holder = "?", deadline = "1970-01-01T00:00:00Z", raw = raw } end
  return l
end
M.parse_lease = parse_lease

--- When the freeze of a lease began (seconds since the epoch; ms precision
--- when the lease has `at`), or nil.
function M.lease_since(lease)
  local at = tonumber(lease.at)
  if at then return at / 1000 end
  return vtime.parse(lease.since)
end

--- May a snapshot join the freeze this lease records? Its deadline has not
--- passed and (when the lease names its budget) at least `margin` seconds
--- (default 40% of the budget, at least 0.5) of the budget are left: a
--- joiner's cut must come before the freeze's deadline.
function M.lease_joinable(lease, now, margin)
  now = now or vtime.now()
  local dl = vtime.parse(lease.deadline)
  if not dl or dl <= now then return false end
  local since, budget = M.lease_since(lease), tonumber(lease.budget)
  -- a joiner needs time for its own cut: at least 0.5 s, and 40% of the budget
  if since and budget then return now + (margin or math.max(0.5, 0.4 * budget)) < since + budget end
  return true
end

local locks = {}
M.LOCK_WARN = 5 -- seconds: a longer wait for the lock is logged, with who holds it
--- Serialize, within this process, the freeze decisions about one VM (who
--- freezes, who joins, who thaws last): returns a to-be-closed lock. `who`
--- (a snapshot's "Kind ns/name") is named when another waits long for it.
---@param vm table
---@param who? string
function M.lock(vm, who)
  local key = vm.metadata.namespace .. "/" .. vm.metadata.name
  local l = locks[key]
  if not l then
    l = { ch = task.channel(1) }
    l.ch:send(true)
    locks[key] = l
  end
  local v, err, code = l.ch:recv(0)
  if v == nil then
    -- (a watcher, so that the wait keeps its place in the line)
    local warn = task.spawn(function()
      task.sleep(M.LOCK_WARN)
      glog:warn("waiting for the freeze lock", { vm = key, by = who, held_by = l.holder,
        held_s = l.since and math.floor((task.now() - l.since) * 10 + 0.5) / 10, waited_s = M.LOCK_WARN })
    end)
    v, err, code = l.ch:recv()
    task.cancel(warn)
  end
  if v == nil then error(("waiting for the freeze lock of %s: %s"):format(key, tostring(err)), code == "CANCELLED" and 0 or 2) end
  l.holder, l.since = who, task.now()
  return setmetatable({}, { __close = function()
    l.holder, l.since = nil, nil
    l.ch:send(true)
  end })
end

--- Is this lease over (its holder gone, or its deadline passed)?
function M.lease_stale(lease, now)
  now = now or os.time()
  local dl = vtime.parse(lease.deadline)
  if not dl or dl <= now then return true end
  return M.holder_alive(lease.holder) == false
end

-- ------------------------------------------------------------ the guest

---@class vmsnap.guest.Guest
local Guest = {}
Guest.__index = Guest

---@class vmsnap.guest.Opts
---@field transport? "socket"|"api"   default: "socket" when the VM names its agent, else "api"
---@field socket? string              the agent's target ("unix:/path", "vsock:CID:PORT")
---@field timeout? number             seconds per agent command (default 10)
---@field lease? boolean              record the freeze on the VM (default true when a client is given)

--- The guest of a VM. vm: the VM object (or {metadata = {namespace, name}});
--- client: a vmsnap.k8s client (may be nil for a bare socket with opts.socket).
---@param client vmsnap.k8s.Client?
---@param vm table?
---@param opts? vmsnap.guest.Opts
---@return vmsnap.guest.Guest?, string?, string?
function M.for_vm(client, vm, opts)
  opts = opts or {}
  local ann = vm and vm.metadata and vm.metadata.annotations or {}
  local socket = opts.socket or ann[M.AGENT]
  local transport = opts.transport or (socket and "socket" or "api")
  if transport == "socket" and not socket then
    return nil, "guest: no agent socket (pass opts.socket or annotate the VM with " .. M.AGENT .. ")", "EINVAL"
  end
  if transport == "api" and not (client and vm) then
    return nil, "guest: the api transport needs a client and a VM", "EINVAL"
  end
  local mps
  if ann[M.MOUNTPOINTS] then mps = json.decode(ann[M.MOUNTPOINTS]) end
  return setmetatable({ client = client, vm = vm, transport = transport, socket = socket,
    timeout = opts.timeout or 10, lease = opts.lease ~= false and client ~= nil and vm ~= nil,
    mountpoints = type(mps) == "table" and mps or nil,
    name = vm and vm.metadata and ((vm.metadata.namespace or "") .. "/" .. vm.metadata.name) or socket }, Guest)
end

--- An agent connection (socket transport), opened per operation.
function Guest:agent()
  return qga.connect(self.socket, { timeout = self.timeout })
end

local function with_agent(self, fn)
  local a, err, code = self:agent()
  if not a then return nil, err, code end
  local _ <close> = a
  return fn(a)
end

local function vm_condition(vm, ctype)
  for _, c in ipairs(vm and vm.status and vm.status.conditions or {}) do
    if c.type == ctype then return c end
  end
end

function Guest:refresh_vm()
  local md = self.vm.metadata
  local vm, err, reason = self.client:get("virtualmachines.virtualization.deckhouse.io", md.name,
    { namespace = md.namespace })
  if not vm then return nil, err, reason end
  self.vm = vm
  return vm
end

--- Is the agent there? true, or nil, message, code.
function Guest:ping()
  if self.transport == "socket" then
    return with_agent(self, function(a)
      local r, err, code = a:ping()
      if r == nil then return nil, err, code end
      return true
    end)
  end
  local vm, err, reason = self:refresh_vm()
  if not vm then return nil, err, reason end
  local c = vm_condition(vm, "AgentReady")
  if c and c.status == "True" then return true end
  return nil, ("guest %s: the agent is not ready"):format(self.name), "AGENT_NOT_READY"
end

--- "frozen" or "thawed".
function Guest:status()
  if self.transport == "socket" then
    return with_agent(self, function(a) return a:fsfreeze_status() end)
  end
  local vm, err, reason = self:refresh_vm()
  if not vm then return nil, err, reason end
  local c = vm_condition(vm, "FilesystemFrozen")
  return (c and c.status == "True") and "frozen" or "thawed"
end

--- The guest's filesystems (guest-get-fsinfo); socket transport only.
function Guest:fsinfo()
  if self.transport ~= "socket" then
    return nil, "guest: fsinfo needs the agent socket (the api transport has no such call)", "UNSUPPORTED"
  end
  return with_agent(self, function(a) return a:get_fsinfo() end)
end

--- Run argv in the guest (see vmsnap.qga Agent:exec); socket transport only.
function Guest:exec(argv, opts)
  if self.transport ~= "socket" then
    return nil, "guest: exec needs the agent socket (the api transport has no such call)", "UNSUPPORTED"
  end
  return with_agent(self, function(a) return a:exec(argv, opts) end)
end

-- vmsnap_guest_frozen{vm}: 1 after a freeze of this process that answered,
-- 0 after a thaw that did (docs/metrics.md); passes the call's results on
local frozen_gauge
local function note_frozen(self, v, r, ...)
  if r ~= nil then
    frozen_gauge = frozen_gauge or require("vmsnap.metrics").process():gauge("vmsnap_guest_frozen",
      "1 while this process holds the VM's guest frozen.", { "vm" })
    frozen_gauge:set({ tostring(self.name) }, v)
  end
  return r, ...
end

-- the transport's freeze and thaw
function Guest:do_freeze(budget, mountpoints)
  if self.transport == "socket" then
    return note_frozen(self, 1, with_agent(self, function(a)
      local mps = mountpoints or self.mountpoints
      if mps and #mps > 0 then return a:fsfreeze_freeze_list(mps) end
      return a:fsfreeze_freeze()
    end))
  end
  local md = self.vm.metadata
  return note_frozen(self, 1, self.client:subresource("virtualmachines.virtualization.deckhouse.io", md.name, "freeze",
    { namespace = md.namespace, method = "PUT", group = M.SUBRESOURCE_GROUP,
      body = { unfreezeTimeout = ("%ds"):format(math.max(1, math.ceil(budget))) } }))
end

function Guest:do_thaw()
  if self.transport == "socket" then
    return note_frozen(self, 0, with_agent(self, function(a) return a:fsfreeze_thaw() end))
  end
  local md = self.vm.metadata
  return note_frozen(self, 0, self.client:subresource("virtualmachines.virtualization.deckhouse.io", md.name, "unfreeze",
    { namespace = md.namespace, method = "PUT", group = M.SUBRESOURCE_GROUP }))
end

--- do_thaw, tried up to 3 times (0.2 s, then 0.4 s apart) while it fails:
--- a thaw that is lost leaves a guest frozen until its unfreeze timeout.
function Guest:thaw_retrying()
  local r, err, code
  for attempt = 1, 3 do
    r, err, code = self:do_thaw()
    if r ~= nil then break end
    glog:warn("thaw failed, retrying", { vm = self.name, attempt = attempt, error = err })
    if attempt < 3 then task.sleep(0.2 * attempt) end
  end
  return r, err, code
end

-- ------------------------------------------------------------ leases

local function patch_annotation(self, value, rv)
  local md = self.vm.metadata
  local p = { metadata = { annotations = { [M.LEASE] = value == nil and json.null or value } } }
  if rv then p.metadata.resourceVersion = rv end
  return self.client:patch("virtualmachines.virtualization.deckhouse.io", md.name, p, { namespace = md.namespace })
end

function Guest:take_lease(budget, extra)
  -- the VM changes often (its controller writes its status): a lost race is
  -- tried again at once, a few times
  local ok, err, code
  for _ = 1, 4 do
    ok, err, code = self:try_take_lease(budget, extra)
    if ok or code ~= "Conflict" then break end
  end
  return ok, err, code
end

function Guest:try_take_lease(budget, extra)
  local vm, err, reason = self:refresh_vm()
  if not vm then return nil, err, reason end
  local cur = parse_lease(vm)
  if cur and cur.holder ~= M.holder() and not M.lease_stale(cur) then
    return nil, ("guest %s: frozen by %s until %s"):format(self.name, tostring(cur.holder), tostring(cur.deadline)),
      "FROZEN_BY_OTHER"
  end
  local now = vtime.now()
  -- `at`: the freeze's identity, in ms since the epoch (the holders' marks name it)
  local rec = { holder = M.holder(), since = vtime.format(math.floor(now)), budget = budget,
    at = math.floor(now * 1000), deadline = vtime.format(math.floor(now) + math.ceil(budget) + 5) }
  for k, v in pairs(extra or {}) do rec[k] = rec[k] == nil and v or rec[k] end -- (drivers: vmsnap.freezes' slots)
  local lease = json.encode(rec)
  -- the resourceVersion makes this a compare-and-swap
  local res, e2, r2 = patch_annotation(self, lease, vm.metadata.resourceVersion)
  if not res then return nil, ("guest %s: cannot record the freeze lease: %s"):format(self.name, e2), r2 end
  self.vm = res
  return true
end

--- Remove the lease if this process holds it (with `any`, also when its
--- holder is not known to be running).
function Guest:drop_lease(any)
  -- tried three times (a lease left behind keeps the VM from other
  -- snapshots until its deadline, when the orphan sweep takes it)
  local err
  for attempt = 1, 3 do
    local vm, gerr = self:refresh_vm()
    local cur = vm and parse_lease(vm)
    if vm and not (cur and (cur.holder == M.holder() or (any and M.holder_alive(cur.holder) ~= true))) then return end
    if vm then
      local ok, perr = patch_annotation(self, nil)
      if ok then return end
      err = perr
    else
      err = gerr
    end
    if attempt < 3 then task.sleep(0.2 * attempt) end
  end
  glog:warn("cannot remove the freeze lease", { vm = self.name, error = err })
end

-- ------------------------------------------------------------ freeze guard

---@class vmsnap.guest.Freeze
---@field expired boolean   the budget ran out and the guard thawed
---@field thawed boolean
---@field frozen_at number
---@field duration number?  seconds frozen (once thawed)
local Freeze = {}
Freeze.__index = Freeze

--- Freeze the guest: returns a to-be-closed guard, or nil, message, code.
--- opts.budget: seconds the guest may stay frozen (default 30); opts.mountpoints:
--- freeze these only (socket transport; default: the VM's
--- vmsnap.io/freeze-mountpoints, else every filesystem).
---@param opts? {budget?: number, mountpoints?: string[]}
---@return vmsnap.guest.Freeze?, string?, string?
function Guest:freeze(opts)
  opts = opts or {}
  local budget = opts.budget or 30
  if type(budget) ~= "number" or budget <= 0 then
    error("bad argument to 'freeze' (budget must be a positive number of seconds)", 2)
  end
  if self.lease then
    local ok, err, code = self:take_lease(budget)
    if not ok then return nil, err, code end
  end
  local guard = setmetatable({ guest = self, budget = budget, expired = false, thawed = false,
    done = task.channel() }, Freeze)
  local r, err, code = self:do_freeze(budget, opts.mountpoints)
  if r == nil then
    -- a freeze that failed half-way may have frozen some filesystems: thaw
    self:do_thaw()
    if self.lease then self:drop_lease() end
    return nil, ("guest %s: freeze failed: %s"):format(self.name, tostring(err)), code
  end
  guard.frozen_at = task.now()
  guard.count = type(r) == "number" and r or nil
  guard.watchdog = self:watchdog(budget, opts.mountpoints or self.mountpoints)
  guard.timer = task.spawn(function()
    task.sleep(budget)
    if not guard.thawed then
      guard.expired = true
      glog:warn("freeze budget ran out: thawing", { vm = self.name, budget = budget })
      guard:thaw()
    end
  end)
  return guard
end

--- For a freeze through the agent's socket: a process apart from this one
--- (`vmsnap-launcher thaw-after`) that thaws the guest when the budget has
--- passed, or at once when this process dies, so that neither a stalled
--- loop nor a killed process leaves the guest frozen. nil without a
--- launcher, for other transports, or for agents not on a unix socket.
function Guest:watchdog(budget, mountpoints)
  if self.transport ~= "socket" or not tostring(self.socket):match("^unix:") then return nil end
  local launcher
  for _, p in ipairs(rtcore.launcher_paths()) do
    if fs.exists(p) then launcher = p break end
  end
  if not launcher then return nil end
  local argv = { launcher, "thaw-after", ("%g"):format(budget), self.socket:sub(6) }
  for _, m in ipairs(mountpoints or {}) do argv[#argv + 1] = m end
  local p, err = proc.spawn(argv, { stdout = "null", stderr = "inherit" })
  if not p then glog:warn("cannot start the freeze watchdog", { vm = self.name, error = err }) end
  return p
end

--- Thaw (once; a later or concurrent call waits for the first and returns its
--- result). Returns true, or nil, message, code; guard.duration is the time frozen.
function Freeze:thaw()
  if self.thawed then
    if not self.finished then self.done:recv() end -- returns when the first thaw closes it
    return self.result, self.err, self.code
  end
  self.thawed = true
  local finish <close> = setmetatable({}, { __close = function()
    self.finished = true
    self.done:close()
  end })
  if self.timer and task.current() ~= self.timer then task.cancel(self.timer) end
  local g = self.guest
  local r, err, code = g:thaw_retrying()
  self.duration = task.now() - self.frozen_at
  if r ~= nil and self.watchdog then
    -- thawed: the watchdog goes without thawing (SIGUSR1 while it waits; past
    -- its deadline it is thawing already and ends by itself)
    self.watchdog:kill("USR1")
    if not self.watchdog:wait(6) then self.watchdog:kill("KILL") self.watchdog:wait(2) end
    self.watchdog:close()
    self.watchdog = nil
  end
  if r ~= nil and g.lease then g:drop_lease() end
  if r == nil then
    -- the lease stays: thaw_orphans will retry after its deadline
    self.result, self.err, self.code = nil, ("guest %s: thaw failed: %s"):format(g.name, tostring(err)), code
  else
    self.result = true
  end
  return self.result, self.err, self.code
end

Freeze.__close = function(self) self:thaw() end

--- Thaw outside of a guard (an operator's command, an orphan).
function Guest:thaw()
  local r, err, code = self:do_thaw()
  if r == nil then return nil, err, code end
  if self.lease then
    local vm = self:refresh_vm()
    if vm and parse_lease(vm) then patch_annotation(self, nil) end
  end
  return true
end

-- ------------------------------------------------------------ orphans

--- Thaw every VM whose freeze lease is stale (holder gone or deadline
--- passed), and remove the lease. Returns the list of {namespace, name,
--- holder, ok, error} handled.
---@param client vmsnap.k8s.Client
--- opts.expired_only: only leases whose deadline has passed (a controller's
--- sweep: a lease of its own dead predecessor is thawed and taken off by
--- the first snapshot of the VM that freezes, or at its deadline).
---@param opts? {namespace?: string, socket_for?: fun(vm: table): string?, expired_only?: boolean}
function M.thaw_orphans(client, opts)
  opts = opts or {}
  local vms, err, reason = client:list_all("virtualmachines.virtualization.deckhouse.io",
    { namespace = opts.namespace, all_namespaces = opts.namespace == nil })
  if not vms then return nil, err, reason end
  local done = {}
  for _, vm in ipairs(vms) do
    local lease = parse_lease(vm)
    local stale = lease and M.lease_stale(lease)
    if stale and opts.expired_only then
      local dl = vtime.parse(lease.deadline)
      stale = not dl or dl <= os.time()
    end
    if stale then
      local g, gerr = M.for_vm(client, vm, { socket = opts.socket_for and opts.socket_for(vm) or nil })
      local ok, terr
      if g then
        ok, terr = g:do_thaw()
        if ok ~= nil then
          -- a compare-and-swap: a lease taken meanwhile stays
          local p = { metadata = { resourceVersion = vm.metadata.resourceVersion,
            annotations = { [M.LEASE] = json.null } } }
          client:patch("virtualmachines.virtualization.deckhouse.io", vm.metadata.name, p,
            { namespace = vm.metadata.namespace })
        end
      else
        terr = gerr
      end
      glog:info("thawed an orphaned freeze", { vm = vm.metadata.namespace .. "/" .. vm.metadata.name,
        holder = lease.holder, ok = ok ~= nil, error = terr })
      done[#done + 1] = { namespace = vm.metadata.namespace, name = vm.metadata.name, holder = lease.holder,
        ok = ok ~= nil, error = terr }
    end
  end
  return done
end

return M
