-- Concurrency caps of schedules, with every controller of `vmsnap up` real:
-- 20 running VMs with agents (qemu-ga, loop-mounted images), one schedule
-- run of all of them. With maxFrozen 2, at no instant are more than 2
-- guests frozen (sampled from the VMs' freeze leases at every change), the
-- others wait as FreezeQueued, all 20 end Ready and consistent; the same
-- run uncapped is timed beside it. With maxInFlightPerDriver 4, at most 4
-- snapshots are in progress and the schedule's status lists the queued
-- ones. Skipped without loop mounts.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local task = require("vmsnap.task")
local vtime = require("vmsnap.time")
local h = require("helpers")

t.timeout = 600

local probe <close>, why = h.qga_env()
if not probe then
  t.skip("freeze caps", why)
  return t.done()
end
probe:cleanup()

local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local SCHED = "virtualmachinesnapshotschedules.vmsnap.io"
local LEASE = "vmsnap.io/frozen-by"
local N = 20
local F = vtime.format

t.test("20 VMs, a cap of 2 frozen guests: never more than 2 frozen, all Ready; timed beside the uncapped run", function()
  local srv <close> = h.platform({ args = { "--fake-clock", "default/clock", "--max-frozen", "0",
    "--max-frozen-per-driver", "0" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local T0 = vtime.parse("2027-01-01T00:00:00Z")
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "clock", namespace = "default" },
    data = { now = F(T0) } }))
  local function set_clock(at)
    local cm = assert(c:get("configmaps", "clock", { namespace = "default" }))
    cm.data.now = F(at)
    assert(c:update(cm))
  end
  -- a cut of 300 ms: each guest stays frozen long enough for overlaps to show
  assert(c:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass", metadata = { name = "slow" },
    driver = "local.vmsnap.io", deletionPolicy = "Delete", parameters = { cutLatency = "300ms" } }))
  local names = {}
  for i = 1, N do
    names[i] = ("g%02d"):format(i)
    h.running_vm(c, names[i], names[i] .. "-root", "16Mi")
  end
  -- the freeze leases, sampled at every change of a VM
  local vms = c:informer("virtualmachines", { namespace = "default" })
  local frozen, max_frozen = {}, 0
  local function count()
    local n = 0
    for _ in pairs(frozen) do n = n + 1 end
    return n
  end
  vms:on(function(etype, vm)
    local a = vm.metadata.annotations or {}
    frozen[vm.metadata.name] = (etype ~= "DELETED" and a[LEASE]) and true or nil
    max_frozen = math.max(max_frozen, count())
  end)
  vms:start()
  local snaps = c:informer(VMS, { namespace = "default" }):start()
  local _ <close> = setmetatable({}, { __close = function() vms:stop() snaps:stop() end })
  assert(vms:wait_synced(10))
  assert(snaps:wait_synced(10))
  t.eq(count(), 0, "nothing frozen before the run")

  local function schedule(name, concurrency)
    assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
      metadata = { name = name, namespace = "default" },
      spec = { schedule = "0 * * * *", virtualMachineNames = names, concurrency = concurrency,
        template = { spec = { volumeSnapshotClasses = { { storageClassName = "local", volumeSnapshotClassName = "slow" } } } } } }))
    local deadline = vtime.now() + 20
    repeat
      task.sleep(0.05)
      local s = c:get(SCHED, name, { namespace = "default" })
      if s and s.status and s.status.startTime then return end
    until vtime.now() > deadline
    error("the schedule " .. name .. " did not start")
  end
  -- one run of a schedule: returns seconds to all Ready, and what was seen meanwhile
  local function run(name, at, watch)
    max_frozen = count()
    local seen = { queued_reason = false, status_queued = 0, inflight = 0 }
    local start = vtime.now()
    set_clock(at)
    local deadline = vtime.now() + 240
    local ready
    repeat
      task.sleep(0.02)
      ready = 0
      local inflight = 0
      for _, s in ipairs(snaps:list("default")) do
        if (s.metadata.labels or {})["vmsnap.io/schedule"] == name then
          local ph = s.status and s.status.phase
          if ph == "Ready" then ready = ready + 1
          elseif ph == "Failed" then error(("%s failed: %s"):format(s.metadata.name, require("vmsnap.json").encode(s.status)))
          else inflight = inflight + 1 end
          for _, cd in ipairs(s.status and s.status.conditions or {}) do
            if cd.reason == "FreezeQueued" then seen.queued_reason = cd.message end
          end
        end
      end
      seen.inflight = math.max(seen.inflight, inflight)
      if watch then
        local sc = c:get(SCHED, name, { namespace = "default" })
        local q = sc and sc.status and sc.status.queued
        if q and #q > seen.status_queued then seen.status_queued, seen.queue_reason = #q, q[1].reason end
        for _, cd in ipairs(sc and sc.status and sc.status.conditions or {}) do
          if cd.type == "Queued" and cd.status == "True" then seen.condition = cd.message end
        end
      end
    until ready == N or vtime.now() > deadline
    t.eq(ready, N, name .. ": every snapshot Ready")
    return vtime.now() - start, seen
  end

  schedule("capped", { maxFrozen = 2 })
  local capped_s, seen = run("capped", T0 + 3600, true)
  local capped_max = max_frozen
  t.ok(capped_max <= 2, ("at most 2 guests frozen at once (saw %d)"):format(capped_max))
  t.eq(capped_max, 2, "the cap is used, not one at a time")
  t.contains(seen.queued_reason or "", "Waiting for a freeze slot: 2 of at most 2 guests frozen")
  t.contains(seen.condition or "", "wait for a freeze slot")
  for _, s in ipairs(snaps:list("default")) do
    if (s.metadata.labels or {})["vmsnap.io/schedule"] == "capped" then
      t.eq(s.status.consistent, true, s.metadata.name .. " is consistent")
    end
  end
  t.eq(count(), 0, "every guest thawed")
  assert(c:patch(SCHED, "capped", { spec = { suspend = true } }, { namespace = "default" }))

  schedule("free", nil)
  local free_s = run("free", T0 + 7200)
  local free_max = max_frozen
  t.ok(free_max > 2, ("uncapped, more than 2 are frozen at once (saw %d)"):format(free_max))
  assert(c:patch(SCHED, "free", { spec = { suspend = true } }, { namespace = "default" }))

  schedule("trickle", { maxInFlightPerDriver = 4 })
  local trickle_s, tseen = run("trickle", T0 + 10800, true)
  t.ok(tseen.inflight <= 4, ("at most 4 in progress on the driver (saw %d)"):format(tseen.inflight))
  t.ok(tseen.status_queued > 0, "the schedule's status listed queued snapshots")
  t.contains(tseen.queue_reason or "", "snapshots in progress on driver local.vmsnap.io (maxInFlightPerDriver 4)")
  -- the schedule's families, on the API's /metrics (vmsnap up serves its controllers' there too)
  local m = assert(srv:get("/metrics"))
  t.contains(m.body, 'vmsnap_schedule_snapshots_total{schedule="default/capped"} 20')
  t.contains(m.body, 'vmsnap_schedule_snapshots_total{schedule="default/trickle"} 20')
  t.contains(m.body, "vmsnap_freeze_slot_waiters 0")
  io.stderr:write(("# %d VMs, one run, 300 ms cuts: capped at 2 frozen %.1f s (max %d frozen); uncapped %.1f s (max %d frozen); "
    .. "4 in flight per driver %.1f s\n"):format(N, capped_s, capped_max, free_s, free_max, trickle_s))
  t.eq(count(), 0, "every guest thawed")
end)

return t.done()
