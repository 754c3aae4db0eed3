--- vmsnap.reconcile.leader: leader election on a coordination.k8s.io/v1
--- Lease, as client-go does it: the holder renews `renewTime` every third of
--- the lease's duration; another candidate takes the lease over once
--- `renewTime + leaseDurationSeconds` has passed; every write is a
--- compare-and-swap on the Lease's resourceVersion. A leader that cannot
--- renew within the duration stops leading; a graceful stop releases the
--- lease so that a successor does not wait out the duration.
local task = require("vmsnap.task")
local vtime = require("vmsnap.time")
local log = require("vmsnap.log")

local M = {}

---@class vmsnap.reconcile.Elector
local Elector = {}
Elector.__index = Elector

local function micro_time(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%06dZ"):format(math.floor((t % 1) * 1e6))
end

--- opts: name (the Lease), namespace (default the client's), identity
--- (default host/pid), duration (seconds, default 15).
function M.new(client, opts)
  local guest = require("vmsnap.guest")
  return setmetatable({ client = client, name = opts.name, namespace = opts.namespace or client.namespace,
    identity = opts.identity or guest.holder(), duration = opts.duration or 15, log = log.new("leader"),
    leading = false }, Elector)
end

local function expired(lease, duration)
  local spec = lease.spec or {}
  if not spec.holderIdentity or spec.holderIdentity == "" then return true end
  local renew = vtime.parse(spec.renewTime)
  local d = spec.leaseDurationSeconds or duration
  return not renew or renew + d < os.time()
end

-- one attempt: true when we hold the lease afterwards
function Elector:try(again)
  local c = self.client
  local lease, err, reason = c:get("leases.coordination.k8s.io", self.name, { namespace = self.namespace })
  local now = micro_time(vtime.now())
  if not lease then
    if reason ~= "NotFound" then return nil, err end
    local created, cerr, cerr_reason = c:create({ apiVersion = "coordination.k8s.io/v1", kind = "Lease",
      metadata = { name = self.name, namespace = self.namespace },
      spec = { holderIdentity = self.identity, leaseDurationSeconds = math.ceil(self.duration),
        acquireTime = now, renewTime = now, leaseTransitions = 0 } })
    if created then return true end
    if cerr_reason ~= "AlreadyExists" then return nil, cerr end
    -- created meanwhile (the other controllers of this process start at once): look again now
    if not again then return self:try(true) end
    return false
  end
  local spec = lease.spec or {}
  local mine = spec.holderIdentity == self.identity
  -- a holder that was a process of this machine and is gone need not be waited out
  local id = spec.holderIdentity
  local dead = not mine and type(id) == "string" and id:match("^.-/.-/%d+/.+$") ~= nil
    and require("vmsnap.guest").holder_alive(id) == false
  if not mine and not dead and not expired(lease, self.duration) then return false end
  -- ours, renewed within the last third of its duration (by another controller of this
  -- process: they share the identity): leading, nothing to write
  local renewed = vtime.parse(spec.renewTime)
  if mine and renewed and renewed + self.duration / 3 > vtime.now() then return true end
  lease.spec = lease.spec or {}
  if not mine then
    lease.spec.holderIdentity = self.identity
    lease.spec.acquireTime = now
    lease.spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
  end
  lease.spec.renewTime = now
  lease.spec.leaseDurationSeconds = math.ceil(self.duration)
  local res, uerr, ureason = c:update(lease)
  if res then return true end
  -- another controller of this process got there first: look again now
  if ureason == "Conflict" then
    if not again then return self:try(true) end
    return false
  end
  -- the write's fate is unknown (a dropped connection, an answer that is
  -- not the Lease): not a loss; keep() gives up only after the duration
  return nil, uerr
end

--- Wait until this candidate leads (or stop() returns true). Returns true, or nil, message.
function Elector:acquire(stopped)
  while not (stopped and stopped()) and not self.stopped do
    local ok, err = self:try()
    if ok then
      self.leading = true
      self.renewed = task.now()
      return true
    end
    if ok == nil then self.log:debug("cannot reach the lease", { error = err }) end
    task.sleep(math.max(0.2, self.duration / 5))
  end
  return nil, "stopped before leading"
end

--- Renew until stopped or until renewing fails for the lease's duration.
function Elector:keep(stopped)
  self.wake = self.wake or task.channel(1)
  while self.leading and not self.stopped and not (stopped and stopped()) do
    self.wake:recv(math.max(0.1, self.duration / 3)) -- a renewal period, or stop()
    if self.stopped or (stopped and stopped()) then break end
    local ok = self:try()
    if ok then
      self.renewed = task.now()
    elseif task.now() - self.renewed > self.duration then
      self.leading = false
    elseif ok == false then
      -- someone else holds it now
      self.leading = false
    end
  end
end

function Elector:stop()
  self.stopped = true
  if self.wake then self.wake:send(true, 0) end -- the renew loop stops now, not at its next renewal
end

--- Give the lease up (a graceful stop), so a successor need not wait.
function Elector:release()
  if not self.leading then return end
  self.leading = false
  local lease = self.client:get("leases.coordination.k8s.io", self.name, { namespace = self.namespace })
  if lease and lease.spec and lease.spec.holderIdentity == self.identity then
    lease.spec.holderIdentity = ""
    self.client:update(lease)
  end
end

return M
