-- workflows/snapshot-schedule.lua: the VirtualMachineSnapshotSchedule
-- controller (docs/schedules.md).
--
-- Unlike the snapshot workflows, which run their steps once each towards
-- Ready, a schedule runs every step on every pass: it reads its spec, finds
-- the run that is due (at most one: the latest missed, within the starting
-- deadline), starts that run's snapshots as far as the concurrency caps
-- allow (the rest queue, in its status), decides which of its snapshots to
-- keep (`retention`: replace that step to bring your own policy,
-- docs/customizing.md), deletes the others with an Event naming the rule,
-- and writes its status. `vmsnap workflow show snapshot-schedule` prints
-- the steps; change one with workflows/snapshot-schedule.d/.
--
-- A snapshot belongs to the schedule when it carries the label
-- `vmsnap.io/schedule: NAME` in the schedule's namespace; nothing else is
-- ever deleted. Deleting the schedule leaves its snapshots (`vmsnap
-- schedule delete --cascade` removes them too).
local cron = require("vmsnap.cron")
local tz = require("vmsnap.tz")
local clock = require("vmsnap.clock")
local retention = require("vmsnap.retention")
local freezes = require("vmsnap.freezes")
local vtime = require("vmsnap.time")
local object = require("vmsnap.k8s.object")
local steps = require("vmsnap.reconcile.steps")
local errors = require("vmsnap.errors")
local metrics = require("vmsnap.metrics")

local W = {}

W.kind = "VirtualMachineSnapshotSchedule"

W.LABEL = "vmsnap.io/schedule"                 -- on each snapshot: the schedule's name
W.VM_LABEL = "vmsnap.io/schedule-vm"           -- and the VM's
W.SCHEDULED_AT = "vmsnap.io/scheduled-at"      -- the run's time (RFC 3339): what retention ages
W.RUN_NOW = "vmsnap.io/run-now"                -- on the schedule: a run asked for (`vmsnap schedule run-now`)
W.MAX_FROZEN = freezes.MAX_FROZEN              -- the schedule's caps, carried by its snapshots
W.MAX_FROZEN_PER_DRIVER = freezes.MAX_FROZEN_PER_DRIVER

local VM = "virtualmachines.virtualization.deckhouse.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local VMR = "virtualmachinerestores.virtualization.deckhouse.io"
local VD = "virtualdisks.virtualization.deckhouse.io"
local SC = "storageclasses.storage.k8s.io"
local G = "virtualization.deckhouse.io/v1alpha2"

local function terminal(s)
  local ph = s.status and s.status.phase
  return ph == "Ready" or ph == "Failed"
end

-- ------------------------------------------------------------ reading the spec

-- a LabelSelector's verdict on labels
local function selects(sel, labels)
  labels = labels or {}
  for k, v in pairs(sel.matchLabels or {}) do
    if labels[k] ~= v then return false end
  end
  for _, e in ipairs(sel.matchExpressions or {}) do
    local has, val = labels[e.key] ~= nil, labels[e.key]
    local inlist = false
    for _, x in ipairs(e.values or {}) do inlist = inlist or x == val end
    if e.operator == "In" and not inlist then return false end
    if e.operator == "NotIn" and inlist then return false end
    if e.operator == "Exists" and not has then return false end
    if e.operator == "DoesNotExist" and has then return false end
  end
  return true
end

--- The schedule's spec, read and checked: {cron, zone, policy, deadline};
--- or nil and a message naming the field.
function W.read_spec(sched)
  local spec = sched.spec or {}
  local c, err = cron.parse(spec.schedule, spec.timeZone)
  if not c then
    local field = tostring(err):match("^time zone") and "spec.timeZone" or "spec.schedule"
    return nil, ("%s: %s"):format(field, err)
  end
  if (spec.virtualMachineSelector ~= nil) == (spec.virtualMachineNames ~= nil) then
    return nil, "spec: set exactly one of virtualMachineSelector and virtualMachineNames"
  end
  for _, e in ipairs(spec.virtualMachineSelector and spec.virtualMachineSelector.matchExpressions or {}) do
    if (e.operator == "In" or e.operator == "NotIn") and #(e.values or {}) == 0 then
      return nil, ("spec.virtualMachineSelector.matchExpressions: %s %s needs values"):format(e.key, e.operator)
    end
  end
  local r = spec.retention or {}
  local policy = { keepLast = r.keepLast, hourly = r.hourly, daily = r.daily, weekly = r.weekly, monthly = r.monthly,
    yearly = r.yearly, consistentOnly = r.consistentOnly }
  if r.maxAge ~= nil then
    local secs = W.age(r.maxAge)
    if not secs or secs <= 0 then
      return nil, ("spec.retention.maxAge: %q is not a duration (such as 720h, 30d, 2w)"):format(tostring(r.maxAge))
    end
    policy.maxAge, policy.maxAgeText = secs, r.maxAge
  end
  return { cron = c, zone = c.zone, policy = policy, deadline = spec.startingDeadlineSeconds }
end

--- Seconds of an age: a Go duration (720h) or days/weeks (30d, 2w, 1w3d).
function W.age(s)
  if type(s) ~= "string" then return nil end
  local d = vtime.go_duration(s)
  if d then return d end
  local total, pos = 0, 1
  while pos <= #s do
    local n, u, e = s:match("^(%d+)([dwh])()", pos)
    if not n then return nil end
    total = total + tonumber(n) * ({ d = 86400, w = 604800, h = 3600 })[u]
    pos = e
  end
  return total > 0 and total or nil
end

-- ------------------------------------------------------------ observing

--- The snapshots the restores in progress use: name -> the restore's name.
function W.restores_in_use(restores)
  local out = {}
  for _, r in ipairs(restores) do
    if not terminal(r) and r.spec and r.spec.virtualMachineSnapshotName then
      out[r.spec.virtualMachineSnapshotName] = r.metadata.name
    end
  end
  return out
end

--- The schedule's VMs, its snapshots, the restores in progress.
function W.observe(ctx, sched)
  local ns = sched.metadata.namespace
  local spec = sched.spec or {}
  local f = { vms = {}, snapshots = {} }
  if spec.virtualMachineNames then
    for _, name in ipairs(spec.virtualMachineNames) do
      local vm = ctx:get(VM, ns, name)
      if vm then f.vms[#f.vms + 1] = vm else f.missing = f.missing or {} table.insert(f.missing, name) end
    end
  else
    for _, vm in ipairs(ctx:list(VM, ns)) do
      if selects(spec.virtualMachineSelector or {}, vm.metadata.labels) then f.vms[#f.vms + 1] = vm end
    end
    table.sort(f.vms, function(a, b) return a.metadata.name < b.metadata.name end)
  end
  for _, s in ipairs(ctx:by_index(VMS, "schedule", ns .. "/" .. sched.metadata.name)) do
    f.snapshots[#f.snapshots + 1] = s
  end
  f.restores = W.restores_in_use(ctx:list(VMR, ns))
  return f
end

-- ------------------------------------------------------------ the steps

--- The spec is valid (the Ready condition says what is wrong when not).
function W.validate(ctx, sched, facts)
  local s, err = W.read_spec(sched)
  if not s then return steps.wait("InvalidSpec", steps.sentence(err)) end
  facts.spec = s
  local st = sched.status
  if not st.startTime then st.startTime = vtime.format(math.floor(facts.now)) end
  return true
end

--- The run due now, if any: the latest scheduled time after the last run
--- (or the schedule's start), taken once however many were missed; skipped
--- past the starting deadline, or while suspended.
function W.due(ctx, sched, facts)
  local st, now = sched.status, facts.now
  local since = math.max(vtime.parse(st.lastScheduleTime) or 0, vtime.parse(st.lastSkippedTime) or 0,
    vtime.parse(st.startTime) or 0)
  local asked = object.annotation(sched, W.RUN_NOW)
  if asked and asked ~= st.lastRunNow then
    st.lastRunNow = asked
    if sched.spec.suspend then
      ctx:event("Warning", "RunNowRefused", "A run was asked for while the schedule is suspended: not taken.")
      return true
    end
    facts.run = { at = now, when = vtime.format(now), asked = asked }
    ctx:event("Normal", "RunNow", ("A run was asked for: snapshots of %s."):format(vtime.format(now)))
    return true
  end
  local due = facts.spec.cron:last(now, since)
  if not due then return true end
  local when = vtime.format(due)
  if sched.spec.suspend then
    st.lastSkippedTime = when
    return true
  end
  local deadline = facts.spec.deadline
  if deadline and now - due > deadline then
    st.lastSkippedTime = when
    ctx:event("Warning", "MissedSchedule", ("The run of %s was not started within startingDeadlineSeconds (%d s): skipped."):format(
      when, deadline))
    return true
  end
  facts.run = { at = due, when = when }
  return true
end

--- The snapshot of `vm` for the run at `at`; for a run asked for
--- (`asked`: the request), named after the request, so that a pass repeated
--- after its status write was lost makes the same snapshots, not new ones.
function W.snapshot_name(sched, vmname, at, asked)
  local tail = os.date("!%Y%m%d-%H%M", at)
  if asked then tail = tail .. "-now-" .. object.fnv64(tostring(asked)):sub(1, 8):lower() end
  return object.bounded_name(sched.metadata.name .. "-" .. vmname, tail, 253)
end

local drivers_of = freezes.drivers_of

-- the schedule's counter `name`, one series per schedule
local function count(name, help, sched)
  metrics.process():counter(name, help, { "schedule" }):inc({ sched.metadata.namespace .. "/" .. sched.metadata.name })
end

-- a queue entry as the status keeps it
local function queued(q, reason)
  return { virtualMachineName = q.vm, scheduledAt = q.when, asked = q.asked and true or nil,
    request = type(q.asked) == "string" and q.asked or nil, reason = reason }
end

--- The run's snapshots, and the ones queued from earlier runs, started as
--- far as `maxInFlightPerDriver` allows (the schedule's, else the
--- controller's): the others stay queued, in order.
function W.start(ctx, sched, facts)
  local st = sched.status
  local queue = {}
  for _, q in ipairs(st.queued or {}) do
    queue[#queue + 1] = { vm = q.virtualMachineName, when = q.scheduledAt, asked = q.asked and (q.request or true) or nil }
  end
  if facts.run then
    -- a newer run replaces what an older one still had queued for a VM
    local byvm = {}
    for i, q in ipairs(queue) do byvm[q.vm] = i end
    for _, vm in ipairs(facts.vms) do
      local i = byvm[vm.metadata.name]
      if i then queue[i].when, queue[i].asked = facts.run.when, facts.run.asked
      else queue[#queue + 1] = { vm = vm.metadata.name, when = facts.run.when, asked = facts.run.asked } end
    end
    st.lastScheduleTime = facts.run.when
    st.lastRun = { scheduledAt = facts.run.when, virtualMachines = #facts.vms, ready = 0 }
    if facts.missing then
      st.lastRun.failed = {}
      for _, name in ipairs(facts.missing) do
        table.insert(st.lastRun.failed, { virtualMachineName = name, message = "The virtual machine does not exist." })
      end
    end
  end
  if #queue == 0 then st.queued = nil return true end
  if sched.spec.suspend then
    -- suspended: nothing starts; what was queued waits for the resume
    local held = {}
    for _, q in ipairs(queue) do held[#held + 1] = queued(q, "the schedule is suspended") end
    st.queued = held
    return true
  end
  local conc = sched.spec.concurrency or {}
  local cap = conc.maxInFlightPerDriver or freezes.limits.in_flight_per_driver
  if cap == 0 then cap = nil end -- 0: no cap
  -- snapshots in progress per driver, over the namespace's VMs
  local inflight = {}
  local vms = {}
  for _, vm in ipairs(ctx:list(VM, sched.metadata.namespace)) do vms[vm.metadata.name] = vm end
  local drivers = {}
  local function of(vmname)
    if not drivers[vmname] then drivers[vmname] = vms[vmname] and drivers_of(ctx, vms[vmname]) or {} end
    return drivers[vmname]
  end
  for _, s in ipairs(ctx:list(VMS, sched.metadata.namespace)) do
    if not terminal(s) then
      for _, d in ipairs(of(s.spec.virtualMachineName)) do inflight[d] = (inflight[d] or 0) + 1 end
    end
  end
  local rest = {}
  for _, q in ipairs(queue) do
    local vm = vms[q.vm]
    local full
    for _, d in ipairs(of(q.vm)) do
      if cap and (inflight[d] or 0) >= cap then full = d end
    end
    if not vm then
      -- gone since it was queued: nothing to start
    elseif full then
      rest[#rest + 1] = queued(q,
        ("%d snapshots in progress on driver %s (maxInFlightPerDriver %d)"):format(inflight[full], full, cap))
    else
      local ok, err, code = W.create_snapshot(ctx, sched, vm, vtime.parse(q.when), q.asked)
      if not ok and code == "AlreadyExists" then
        -- ours from a pass before a restart, or another's of the same name
        local name = W.snapshot_name(sched, q.vm, vtime.parse(q.when), q.asked)
        local other = ctx:get(VMS, sched.metadata.namespace, name)
        local labels = other and other.metadata.labels or {}
        if other and (labels[W.LABEL] ~= sched.metadata.name or labels[W.VM_LABEL] ~= q.vm) then
          code, err = "NameTaken", ("a VirtualMachineSnapshot named %q exists and is not this schedule's snapshot of %q"):format(
            name, q.vm)
        end
      end
      if ok then
        count("vmsnap_schedule_snapshots_total", "Snapshots a schedule's runs created.", sched)
        for _, d in ipairs(of(q.vm)) do inflight[d] = (inflight[d] or 0) + 1 end
        facts.snapshots[#facts.snapshots + 1] = ok
      elseif code == "AlreadyExists" then
        -- made by a pass before a restart: done
      elseif errors.is_transient(code) then
        -- a lost or refused answer that may clear: it stays queued and is
        -- tried again (a create that did happen is AlreadyExists then)
        rest[#rest + 1] = queued(q, ("the create failed and is retried: %s"):format(tostring(err)))
        facts.retry = true
      else
        st.lastRun = st.lastRun or { scheduledAt = q.when, virtualMachines = 0, ready = 0 }
        st.lastRun.failed = st.lastRun.failed or {}
        table.insert(st.lastRun.failed, { virtualMachineName = q.vm, message = steps.sentence(err) })
        ctx:event("Warning", "SnapshotCreateFailed", ("Cannot create the snapshot of %q: %s"):format(q.vm, tostring(err)))
      end
    end
  end
  st.queued = #rest > 0 and rest or nil
  return true
end

--- Create the snapshot of `vm` for the run at `at` (an AlreadyExists is
--- a run started before a restart: fine).
function W.create_snapshot(ctx, sched, vm, at, asked)
  local spec = sched.spec
  local tmpl = spec.template or {}
  local md = tmpl.metadata or {}
  local labels, annotations = {}, {}
  for k, v in pairs(md.labels or {}) do labels[k] = v end
  for k, v in pairs(md.annotations or {}) do annotations[k] = v end
  labels[W.LABEL] = sched.metadata.name
  labels[W.VM_LABEL] = vm.metadata.name
  annotations[W.SCHEDULED_AT] = vtime.format(at)
  local conc = spec.concurrency or {}
  if conc.maxFrozen then annotations[W.MAX_FROZEN] = tostring(conc.maxFrozen) end
  if conc.maxFrozenPerDriver then annotations[W.MAX_FROZEN_PER_DRIVER] = tostring(conc.maxFrozenPerDriver) end
  local ts = tmpl.spec or {}
  local obj = { apiVersion = G, kind = "VirtualMachineSnapshot",
    metadata = { name = W.snapshot_name(sched, vm.metadata.name, at, asked), namespace = sched.metadata.namespace,
      labels = labels, annotations = annotations },
    spec = { virtualMachineName = vm.metadata.name,
      requiredConsistency = ts.requiredConsistency ~= false,
      keepIPAddress = ts.keepIPAddress or "Always", volumeSnapshotClasses = ts.volumeSnapshotClasses } }
  return ctx.client:create(obj)
end

local times, times_n = {}, 0 -- RFC 3339 text -> seconds (the same few thousand, every pass)
local function parse_time(text)
  if text == nil then return nil end
  local t = times[text]
  if t == nil then
    if times_n >= 100000 then times, times_n = {}, 0 end
    t = vtime.parse(text) or false
    times[text], times_n = t, times_n + 1
  end
  return t or nil
end

--- The snapshots as retention sees them: {name, vm, at, phase, consistent, protect}.
function W.candidates(sched, facts)
  local list = {}
  for _, s in ipairs(facts.snapshots) do
    if not s.metadata.deletionTimestamp then
      local at = parse_time(object.annotation(s, W.SCHEDULED_AT)) or parse_time(s.metadata.creationTimestamp) or 0
      local restore = facts.restores[s.metadata.name]
      list[#list + 1] = { name = s.metadata.name, vm = s.spec.virtualMachineName, at = at,
        phase = s.status and s.status.phase or "Pending", consistent = s.status and s.status.consistent == true,
        protect = restore and ("in use by VirtualMachineRestore " .. restore) or nil, object = s }
    end
  end
  return list
end

--- Retention: decide which snapshots stay (facts.decisions: name ->
--- {keep, why} or {keep = false, rule}). Replace this step for your own policy.
function W.retention(ctx, sched, facts)
  facts.candidates = W.candidates(sched, facts)
  facts.decisions = retention.decide(facts.candidates, facts.spec.policy, facts.now, facts.spec.zone)
  return true
end

--- Would prune delete candidate `c` under decision `d`? Only what retention
--- did not keep, and never a snapshot in progress or one a restore in
--- progress uses, whatever the decision (a replaced retention step included).
function W.prunable(c, d)
  return d ~= nil and d.keep == false and terminal(c.object) and not c.protect
end

--- Delete what retention did not keep (W.prunable), with an Event naming the rule.
function W.prune(ctx, sched, facts)
  local left = {}
  for _, c in ipairs(facts.candidates or W.candidates(sched, facts)) do
    local d = facts.decisions[c.name]
    if W.prunable(c, d) then
      local ok, err, code = ctx.client:delete(VMS, c.name, { namespace = sched.metadata.namespace,
        preconditions = { uid = c.object.metadata.uid } })
      if ok or code == "NotFound" then
        count("vmsnap_schedule_pruned_total", "Snapshots a schedule's retention deleted.", sched)
        ctx:event("Normal", "SnapshotPruned", ("Deleted VirtualMachineSnapshot %q of %q (%s): %s."):format(
          c.name, c.vm, vtime.format(c.at), d.rule))
      else
        ctx.log:warn("cannot delete a pruned snapshot", { snapshot = c.name, error = err })
        left[#left + 1] = c
      end
    else
      left[#left + 1] = c
    end
  end
  facts.held = left
  return true
end

--- The status: what it holds and why, the next run, the last run's outcome, conditions.
function W.report(ctx, sched, facts)
  local st = sched.status
  table.sort(facts.held, function(a, b)
    if a.at ~= b.at then return a.at > b.at end
    return a.name < b.name
  end)
  local list = {}
  local run = st.lastRun
  local ready, failed = 0, {}
  for _, c in ipairs(facts.held) do
    local d = facts.decisions[c.name]
    local when = vtime.format(c.at)
    list[#list + 1] = { name = c.name, virtualMachineName = c.vm, scheduledAt = when, phase = c.phase,
      consistent = c.consistent or nil, keptBy = d and d.keep and d.why or nil }
    if run and when == run.scheduledAt then
      if c.phase == "Ready" then ready = ready + 1 end
      if c.phase == "Failed" then
        local cond = object.condition(c.object, "VirtualMachineSnapshotReady")
        failed[#failed + 1] = { virtualMachineName = c.vm, snapshot = c.name,
          message = cond and cond.message ~= "" and cond.message or "Failed." }
      end
    end
  end
  st.snapshots = #list > 0 and list or nil
  st.held = #list
  if run then
    run.ready = ready
    -- the failures to start (no snapshot) as recorded, then its failed snapshots as they are now
    local failures = {}
    for _, f in ipairs(run.failed or {}) do
      if not f.snapshot then failures[#failures + 1] = f end
    end
    for _, f in ipairs(failed) do failures[#failures + 1] = f end
    run.failed = #failures > 0 and failures or nil
    if ready == run.virtualMachines and ready > 0 and not st.queued then st.lastSuccessfulTime = run.scheduledAt end
  end
  local nxt = facts.spec.cron:next(facts.now)
  st.nextScheduleTime = (not sched.spec.suspend and nxt) and vtime.format(nxt) or nil
  st.observedGeneration = sched.metadata.generation
  ctx:condition("Ready", "True", "Scheduled", nxt and ("Next run at %s."):format(vtime.format(nxt)) or "")
  if sched.spec.suspend then
    ctx:condition("Suspended", "True", "Suspended", "No new runs while spec.suspend is true.")
  else
    ctx:condition("Suspended", "False", "Active", "")
  end
  -- its snapshots started but waiting for a freeze slot (vmsnap.freezes' caps)
  local slots = 0
  for _, c in ipairs(facts.held) do
    local cond = c.phase == "InProgress" and object.condition(c.object, "VirtualMachineSnapshotReady")
    if cond and cond.reason == "FreezeQueued" then slots = slots + 1 end
  end
  if st.queued then
    ctx:condition("Queued", "True", "ConcurrencyLimit", ("%d snapshots wait to start: %s."):format(#st.queued, st.queued[1].reason))
  elseif slots > 0 then
    ctx:condition("Queued", "True", "FreezeSlots", ("%d snapshots wait for a freeze slot."):format(slots))
  else
    ctx:remove_condition("Queued")
  end
  if run and run.failed then
    local names = {}
    for _, f in ipairs(run.failed) do names[#names + 1] = ("%s: %s"):format(f.virtualMachineName, f.message) end
    ctx:condition("LastRunSucceeded", "False", "SnapshotsFailed", table.concat(names, " "))
  elseif run then
    ctx:condition("LastRunSucceeded", ready == run.virtualMachines and "True" or "Unknown",
      ready == run.virtualMachines and "AllReady" or "InProgress",
      ("%d of %d snapshots of the run of %s are Ready."):format(ready, run.virtualMachines, run.scheduledAt))
  end
  -- queued snapshots wait for others to end, some of which bring no pass of
  -- this schedule (another's, a manual one): look again soon
  if st.queued and not sched.spec.suspend then ctx:requeue_after(2) end
  -- on the wall clock, look again at the next run
  if nxt and not clock.is_fake() then ctx:requeue_after(math.max(1, math.min(nxt - facts.now, 300))) end
  return true
end

W.steps = steps.list({
  { name = "validate", run = W.validate, doc = "the cron schedule, time zone, VM selection and policy are valid" },
  { name = "due", run = W.due, doc = "the run due now, if any: the latest missed one, once (suspend, startingDeadlineSeconds)" },
  { name = "start", run = W.start, doc = "create the run's snapshots as the concurrency caps allow; queue the rest" },
  { name = "retention", run = W.retention, doc = "decide which snapshots stay and why (replaceable: your own policy)" },
  { name = "prune", run = W.prune, doc = "delete the others, an Event each naming the rule" },
  { name = "report", run = W.report, doc = "status: held snapshots and their buckets, next run, last run, conditions" },
})

--- Every step, every pass (a schedule never finishes): a step that waits
--- ends the pass with its reason on the Ready condition.
function W.reconcile(ctx, sched)
  -- a fake clock that holds no time yet: no pass (its first move requeues every schedule)
  if clock.is_fake() and clock.now() == 0 then return end
  sched.status = sched.status or {}
  local facts = W.observe(ctx, sched)
  facts.now = math.floor(clock.now())
  for _, step in ipairs(W.steps) do
    if not step.when or step.when(ctx, sched, facts) then
      local r, err, code = step.run(ctx, sched, facts)
      if r == nil then return nil, err, code end
      if steps.is_result(r) and r.kind == "wait" then
        ctx:condition("Ready", "False", r.reason, r.message)
        sched.status.nextScheduleTime = nil
        if r.after then ctx:requeue_after(r.after) end
        return
      end
    end
  end
  -- a create that failed transiently stays queued (the status says so): look again in a second
  if facts.retry then ctx:requeue_after(1) end
end

-- ------------------------------------------------------------ watches

--- The snapshots by schedule, on the VirtualMachineSnapshot informer.
local function by_schedule(s)
  local name = s.metadata.labels and s.metadata.labels[W.LABEL]
  return name and { s.metadata.namespace .. "/" .. name } or {}
end

function W.watches()
  local function all_in(ctl, ns)
    local keys = {}
    for _, s in ipairs(ctl.primary:list(ns)) do keys[#keys + 1] = ns .. "/" .. s.metadata.name end
    return keys
  end
  return {
    -- a snapshot's finalizers, step records and waits bring no pass: only what retention reads
    { kind = VMS, indexes = { schedule = by_schedule }, map = function(s) return by_schedule(s) end,
      changed = function(s, old)
        local a, b = s.status or {}, old.status or {}
        local ra, rb = object.condition(s, "VirtualMachineSnapshotReady"), object.condition(old, "VirtualMachineSnapshotReady")
        return a.phase ~= b.phase or a.consistent ~= b.consistent or (s.metadata.deletionTimestamp ~= nil) ~= (old.metadata.deletionTimestamp ~= nil)
          or (ra and ra.reason) ~= (rb and rb.reason)
          or (s.metadata.labels or {})[W.LABEL] ~= (old.metadata.labels or {})[W.LABEL]
          or object.annotation(s, W.SCHEDULED_AT) ~= object.annotation(old, W.SCHEDULED_AT)
      end },
    { kind = VM, map = function(vm, ctl) return all_in(ctl, vm.metadata.namespace) end },
    { kind = VMR, map = function(r, ctl) return all_in(ctl, r.metadata.namespace) end },
    -- cached for the VMs' CSI drivers (the caps), no pass of their own
    { kind = VD, map = function() return {} end },
    { kind = SC, map = function() return {} end },
  }
end

--- The fake clock's moves requeue every schedule (vmsnap.clock).
function W.on_start(ctl)
  local fn = function()
    if not ctl.primary then return end
    for _, s in ipairs(ctl.primary:list()) do ctl.queue:add(s.metadata.namespace .. "/" .. s.metadata.name) end
  end
  ctl.clock_listener = fn
  clock.on_change(fn)
end

return W
