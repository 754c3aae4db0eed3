-- vmsnap.reconcile against `vmsnap serve`: the work queue, status written
-- only when it changed, conditions, finalizers, events, requeues and
-- back-off, leader election and graceful shutdown.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local reconcile = require("vmsnap.reconcile")
local task = require("vmsnap.task")
local h = require("helpers")

t.test("queue: de-duplicates, re-queues a key changed while in work, backs off failures", function()
  local q = reconcile.Queue.new({ max_backoff = 1 })
  q:add("a"); q:add("b"); q:add("a")
  t.eq(q:len(), 2)
  t.eq(q:get(), "a")
  q:add("a") -- changed while a worker has it
  t.eq(q:len(), 1, "not queued twice while in work")
  q:done("a")
  t.eq(q:len(), 2, "queued again when the worker is done")
  t.eq(q:get(), "b"); q:done("b")
  t.eq(q:get(), "a"); q:done("a")
  local d1 = q:retry("x")
  local d2 = q:retry("x")
  local d3 = q:retry("x")
  t.ok(d1 < d2 and d2 < d3, "the back-off grows")
  t.eq(q:failures_of("x"), 3)
  q:forget("x")
  t.eq(q:failures_of("x"), 0)
  q:shutdown()
  t.eq(q:get(), nil)
  local q2 = reconcile.Queue.new()
  local t0 = task.now()
  q2:add_after("later", 0.2)
  q2:add_after("later", 0.5) -- the earlier pending delay wins
  t.eq(q2:get(), "later")
  t.ok(task.now() - t0 >= 0.19 and task.now() - t0 < 0.45)
  q2:shutdown()
end)

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

local function vds(name)
  return { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = name }, spec = { virtualDiskName = "disk-" .. name } }
end

local function eventually(pred, timeout)
  local until_t = task.now() + (timeout or 5)
  while task.now() < until_t do
    local v = pred()
    if v then return v end
    task.sleep(0.05)
  end
  return pred()
end

t.test("a controller: status and conditions written once, finalizer, events, requeue", function()
  local seen = {}
  local ctl = reconcile.controller({ client = c, name = "test-ctl", kind = "VirtualDiskSnapshot",
    finalizer = "test.vmsnap.io/cleanup",
    finalize = function(ctx, obj)
      seen["finalized:" .. obj.metadata.name] = true
      return true
    end,
    reconcile = function(ctx, obj)
      seen[obj.metadata.name] = (seen[obj.metadata.name] or 0) + 1
      obj.status = obj.status or {}
      obj.status.phase = "Ready"
      obj.status.observedGeneration = obj.metadata.generation
      ctx:condition("VirtualDiskSnapshotReady", "True", "VirtualDiskSnapshotReady", "ready")
      ctx:event("Normal", "Reconciled", "looked at it")
      if obj.metadata.name == "again" and seen.again < 3 then return { requeue_after = 0.2 } end
    end })
  local runner = task.spawn(function() return ctl:run() end)
  assert(c:create(vds("one")))
  local obj = eventually(function()
    local o = c:get("vdsnapshot", "one")
    return o and o.status and o.status.phase == "Ready" and o
  end)
  t.ok(obj, "reconciled to Ready")
  t.eq(obj.metadata.finalizers[1], "test.vmsnap.io/cleanup")
  local cond = obj.status.conditions[1]
  t.eq(cond.type, "VirtualDiskSnapshotReady")
  t.eq(cond.observedGeneration, 1)
  local rv, ltt = obj.metadata.resourceVersion, cond.lastTransitionTime
  -- nudge it: reconciled again, nothing changed, nothing written
  local writes = ctl:metrics().status_writes
  assert(c:patch("vdsnapshot", "one", { metadata = { labels = { nudge = "1" } } }))
  eventually(function() return seen.one >= 2 end)
  task.sleep(0.2)
  t.eq(ctl:metrics().status_writes, writes, "no status write when nothing changed")
  obj = assert(c:get("vdsnapshot", "one"))
  t.eq(obj.status.conditions[1].lastTransitionTime, ltt)
  t.ok(tonumber(obj.metadata.resourceVersion) > tonumber(rv), "only the label moved it")
  -- events: one Event, its count raised
  local evs = assert(c:list_all("events", { field_selector = "involvedObject.name=one" }))
  t.eq(#evs, 1)
  t.ok(evs[1].count >= 2, "the same event is counted, not repeated")
  t.eq(evs[1].source.component, "test-ctl")
  -- requeue_after
  assert(c:create(vds("again")))
  t.ok(eventually(function() return (seen.again or 0) >= 3 end, 5), "requeued until it said stop")
  -- deletion runs finalize, then the finalizer goes and the object with it
  assert(c:delete("vdsnapshot", "one"))
  t.ok(eventually(function() return select(3, c:get("vdsnapshot", "one")) == "NotFound" end), "deleted")
  t.ok(seen["finalized:one"])
  -- the counter moves once the finalizer's removal is answered (the object may be gone a moment before)
  eventually(function() return ctl:metrics().finalized == 1 end, 5)
  local m = ctl:metrics()
  t.ok(m.reconciles >= 5 and m.finalized == 1 and m.events >= 1, require("vmsnap.json").encode(m))
  ctl:stop()
  t.eq(task.wait(runner, 10), true)
end)

t.test("failures are retried with back-off; many quick changes are coalesced", function()
  local calls, fail_until = {}, 3
  local ctl = reconcile.controller({ client = c, name = "flaky", kind = "VirtualDiskSnapshot", workers = 2,
    max_backoff = 0.5,
    reconcile = function(ctx, obj)
      local n = (calls[obj.metadata.name] or 0) + 1
      calls[obj.metadata.name] = n
      if obj.metadata.name == "flaky" and n < fail_until then return nil, "transient failure" end
      if obj.metadata.name == "busy" then task.sleep(0.05) end -- changes pile up meanwhile
    end })
  local runner = task.spawn(function() return ctl:run() end)
  assert(c:create(vds("flaky")))
  t.ok(eventually(function() return (calls.flaky or 0) >= fail_until end), "retried until it worked")
  t.eq(ctl:metrics().errors >= 2, true)
  assert(c:create(vds("busy")))
  eventually(function() return calls.busy end)
  local before = calls.busy
  for i = 1, 20 do assert(c:patch("vdsnapshot", "busy", { metadata = { labels = { n = tostring(i) } } })) end
  task.sleep(0.5)
  t.ok(calls.busy - before < 20, ("20 changes, %d reconciles"):format(calls.busy - before))
  ctl:stop()
  task.wait(runner, 10)
end)

t.test("a watch's changed filter: a modification it rejects brings no pass, one it accepts does", function()
  local calls = 0
  local ctl = reconcile.controller({ client = c, name = "filtered", kind = "VirtualDiskSnapshot",
    watches = { { kind = "configmaps", map = function(cm) return { "default/" .. (cm.data and cm.data.owner or "") } end,
      changed = function(cm, old) return (cm.data or {}).watched ~= (old.data or {}).watched end } },
    reconcile = function(_, obj)
      if obj.metadata.name == "owned" then calls = calls + 1 end
    end })
  local runner = task.spawn(function() return ctl:run() end)
  assert(c:create(vds("owned")))
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w", namespace = "default" },
    data = { owner = "owned", watched = "1" } }))
  -- the object's own ADDED and the ConfigMap's (one pass or two: the queue merges a key's events)
  t.ok(eventually(function() return calls >= 1 end), "a pass")
  task.sleep(0.5)
  local before = calls
  for i = 1, 5 do assert(c:patch("configmaps", "w", { metadata = { labels = { n = tostring(i) } } }, { namespace = "default" })) end
  task.sleep(0.5)
  t.eq(calls, before, "label changes the filter rejects: no pass")
  assert(c:patch("configmaps", "w", { data = { watched = "2" } }, { namespace = "default" }))
  t.ok(eventually(function() return calls > before end), "a change it accepts: a pass")
  ctl:stop()
  task.wait(runner, 10)
end)

t.test("leader election: one of two controllers works; the other takes over after a stop", function()
  local worked = { a = 0, b = 0 }
  local function make(id)
    return reconcile.controller({ client = c, name = "le-" .. id, kind = "VirtualDiskSnapshot",
      leader_election = { name = "vmsnap-test-leader", identity = id, duration = 1 },
      reconcile = function() worked[id] = worked[id] + 1 end })
  end
  local a, b = make("a"), make("b")
  local ra = task.spawn(function() return a:run() end)
  task.sleep(0.3)
  local rb = task.spawn(function() return b:run() end)
  eventually(function() return worked.a > 0 end)
  task.sleep(1)
  t.ok(worked.a > 0, "a leads")
  t.eq(worked.b, 0, "b waits")
  local lease = assert(c:get("leases.coordination.k8s.io", "vmsnap-test-leader"))
  t.eq(lease.spec.holderIdentity, "a")
  a:stop()
  task.wait(ra, 10)
  t.ok(eventually(function() return worked.b > 0 end, 5), "b took over")
  lease = assert(c:get("leases.coordination.k8s.io", "vmsnap-test-leader"))
  t.eq(lease.spec.holderIdentity, "b")
  t.eq(lease.spec.leaseTransitions, 1)
  b:stop()
  task.wait(rb, 10)
end)

t.test("a leader that loses its lease stops working and is a candidate again: it leads again once the lease is free", function()
  local seen = {}
  local a = reconcile.controller({ client = c, name = "le-again", kind = "VirtualDiskSnapshot",
    leader_election = { name = "vmsnap-test-again", identity = "again", duration = 1 },
    reconcile = function(_, obj) seen[obj.metadata.name] = (seen[obj.metadata.name] or 0) + 1 end })
  local ra = task.spawn(function() return a:run() end)
  assert(c:create(vds("again-1")))
  t.ok(eventually(function() return seen["again-1"] end, 5), "leads and works")
  -- another holder takes the lease (as after a renewal this one missed)
  local lease = assert(c:get("leases.coordination.k8s.io", "vmsnap-test-again"))
  lease.spec.holderIdentity = "intruder"
  lease.spec.renewTime = os.date("!%Y-%m-%dT%H:%M:%S.000000Z")
  -- held for 3 s (its renewTime is cut to the second: with the 1 s of this
  -- controller's own leases it could look expired at once, and the check
  -- below raced with the controller leading again)
  lease.spec.leaseDurationSeconds = 3
  assert(c:update(lease))
  task.sleep(0.8) -- a renewal period: the loss is seen
  assert(c:create(vds("again-2")))
  task.sleep(0.3)
  t.eq(seen["again-2"], nil, "no work while another holds the lease")
  -- the intruder does not renew: the lease expires, and the controller leads again
  t.ok(eventually(function() return seen["again-2"] end, 8), "leads again and catches up")
  t.ok(not task.is_finished(ra), "run() did not end")
  lease = assert(c:get("leases.coordination.k8s.io", "vmsnap-test-again"))
  t.eq(lease.spec.holderIdentity, "again")
  t.eq(a:metrics().lease_losses, 1)
  a:stop()
  t.eq(task.wait(ra, 10), true)
end)

t.test("graceful shutdown: the reconcile in hand finishes", function()
  local finished = false
  local ctl = reconcile.controller({ client = c, name = "slow", kind = "VirtualDiskSnapshot", workers = 1,
    reconcile = function(_, obj)
      if obj.metadata.name == "slow-one" then
        task.sleep(0.5)
        finished = true
      end
    end })
  local runner = task.spawn(function() return ctl:run() end)
  assert(c:create(vds("slow-one")))
  eventually(function() return ctl:metrics().reconciles > 0 end)
  task.sleep(0.1)
  ctl:stop()
  t.eq(task.wait(runner, 10), true)
  t.eq(finished, true)
end)

t.done()
