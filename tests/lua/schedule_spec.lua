-- VirtualMachineSnapshotSchedules on the local platform, with the schedule
-- controller (`vmsnap controller --workflows snapshot-schedule`) on a fake
-- clock (a ConfigMap the test moves): a year of hourly runs under GFS
-- retention checked against an expectation computed here at 10 instants;
-- downtime across 5 runs giving one catch-up; the starting deadline;
-- suspend; a restore in progress protecting its snapshot; deletion with and
-- without --cascade; invalid specs named in the status.
--
-- In the year test the test itself completes each snapshot (Ready, and
-- consistent or not as it chooses) in place of the VM snapshot controller,
-- which is not run: 26,280 real VM snapshots do not fit in CI, and the
-- (The sanitizer build runs the first quarter: SPEC_HOURS in tests/CMakeLists.txt.)
-- retention under test needs inconsistent snapshots on demand. The
-- freeze-cap test (schedule_caps_spec.lua) runs every controller for real.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local vtime = require("vmsnap.time")
local json = require("vmsnap.json")
local h = require("helpers")

t.timeout = 900

local G = "virtualization.deckhouse.io/v1alpha2"
local SCHED = "virtualmachinesnapshotschedules.vmsnap.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local P, F = vtime.parse, vtime.format

local function stopped_vm(c, name, labels)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = name .. "-root" },
    spec = { persistentVolumeClaim = { size = "1Mi" } } }))
  assert(c:create({ apiVersion = G, kind = "VirtualMachine", metadata = { name = name, labels = labels },
    spec = { runPolicy = "AlwaysOff", blockDeviceRefs = { { kind = "VirtualDisk", name = name .. "-root" } } } }))
end

-- the schedule controller alone, on the fake clock default/clock (through
-- kubeconfig, default the server's own)
local function schedule_controller(srv, extra, kubeconfig)
  local argv = { h.vmsnap, "controller", "--kubeconfig", kubeconfig or srv.kubeconfig, "--workflows", "snapshot-schedule",
    "--fake-clock", "default/clock", "--leader-election-namespace", "default" }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  local p = assert(proc.spawn(argv, { stdout = "null", stderr = os.getenv("SPEC_DEBUG") and "inherit" or "null",
    env = h.child_env({ PATH = os.getenv("PATH"), HOME = os.getenv("HOME") }) }))
  return setmetatable({ p = p }, { __close = function(x)
    if x.p:running() then x.p:kill("TERM") end
    local r = x.p:wait(10)
    if not r then x.p:kill("KILL") x.p:wait(5) end
    x.p:close()
  end })
end

-- the fake clock's ConfigMap (kept from the last write: one request a move)
local clocks = setmetatable({}, { __mode = "k" })
local function set_clock(c, at)
  local cm = clocks[c] or c:get("configmaps", "clock", { namespace = "default" })
  if not cm then
    cm = assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "clock", namespace = "default" },
      data = { now = F(at) } }))
  else
    cm.data = { now = F(at) }
    cm = assert(c:update(cm))
  end
  clocks[c] = cm
end

-- wait (polling an informer's cache) until pred(cache) is true
local function until_(what, pred, timeout)
  local deadline = vtime.now() + (timeout or 20)
  while vtime.now() < deadline do
    local v = pred()
    if v then return v end
    task.sleep(0.002)
  end
  error("timed out waiting for " .. what, 2)
end

local function names_of(inf, ns)
  local out = {}
  for _, s in ipairs(inf:list(ns)) do
    if not s.metadata.deletionTimestamp then out[#out + 1] = s.metadata.name end
  end
  table.sort(out)
  return out
end

-- ------------------------------------------------------------ the expectation, computed independently

-- the periods of a UTC instant, by os.date (not vmsnap.tz)
local function periods(at)
  return {
    hourly = os.date("!%Y-%m-%dT%H", at), daily = os.date("!%Y-%m-%d", at),
    weekly = os.date("!%G-W%V", at), monthly = os.date("!%Y-%m", at), yearly = os.date("!%Y", at),
  }
end

-- what the policy keeps of a VM's history (newest first: {name, at, consistent})
local function expected_keep(history, policy)
  local keep = {}
  local counted = {}
  for _, s in ipairs(history) do
    if s.consistent then counted[#counted + 1] = s end
  end
  for _, b in ipairs({ "hourly", "daily", "weekly", "monthly", "yearly" }) do
    local n = policy[b]
    if n then
      local seen, taken = {}, 0
      for _, s in ipairs(counted) do
        local p = periods(s.at)[b]
        if not seen[p] and taken < n then
          seen[p], taken = true, taken + 1
          keep[s.name] = true
        end
      end
    end
  end
  if counted[1] then keep[counted[1].name] = true end -- the newest consistent
  -- the newest, inconsistent, while newer than every consistent one
  if history[1] and not history[1].consistent then keep[history[1].name] = true end
  return keep
end

t.test("a year of hourly snapshots of 3 VMs under GFS 24/7/4/12: the kept set at 10 instants", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  for _, n in ipairs({ "a", "b", "c" }) do stopped_vm(c, n, { tier = "db" }) end
  stopped_vm(c, "other", { tier = "web" })
  local T0 = P("2027-01-01T00:00:00Z")
  set_clock(c, T0)
  local ctl <close> = schedule_controller(srv)
  local policy = { hourly = 24, daily = 7, weekly = 4, monthly = 12 }
  assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = "y", namespace = "default" },
    spec = { schedule = "@hourly", virtualMachineSelector = { matchLabels = { tier = "db" } },
      template = { spec = { requiredConsistency = false } }, retention = policy } }))
  local scheds = c:informer(SCHED, { namespace = "default" }):start()
  local snaps = c:informer(VMS, { namespace = "default" }):start()
  local _ <close> = setmetatable({}, { __close = function() scheds:stop() snaps:stop() end })
  assert(scheds:wait_synced(10))
  assert(snaps:wait_synced(10))
  until_("the schedule's first status", function()
    local s = scheds:get("default", "y")
    return s and s.status and s.status.startTime
  end)
  -- the consistency each snapshot gets: b is inconsistent one hour in 7; c has
  -- a 40-day stretch without a consistent snapshot (hours 5000-5959)
  local function consistent(vm, hour)
    if vm == "b" then return hour % 7 ~= 3 end
    if vm == "c" then return hour < 5000 or hour >= 5960 end
    return true
  end
  local history = { a = {}, b = {}, c = {} }
  local checks = { [1] = true, [30] = true, [200] = true, [1000] = true, [2500] = true, [4999] = true,
    [5500] = true, [5959] = true, [7000] = true, [8760] = true }
  local start = vtime.now()
  local checked = 0
  local HOURS = tonumber(os.getenv("SPEC_HOURS") or "") or 8760
  for hour = 1, HOURS do
    local at = T0 + hour * 3600
    set_clock(c, at)
    local when = F(at)
    until_("the run of " .. when, function()
      local s = scheds:get("default", "y")
      return s and s.status and s.status.lastScheduleTime == when
    end)
    for _, vm in ipairs({ "a", "b", "c" }) do
      local name = ("y-%s-%s"):format(vm, os.date("!%Y%m%d-%H%M", at))
      local obj = until_(name, function() return snaps:get("default", name) end)
      t.eq(obj.metadata.labels["vmsnap.io/schedule"], "y")
      t.eq(obj.metadata.annotations["vmsnap.io/scheduled-at"], when)
      local isc = consistent(vm, hour)
      obj.status = { phase = "Ready", consistent = isc or nil }
      assert(c:update_status(obj))
      table.insert(history[vm], 1, { name = name, at = at, consistent = isc })
    end
    if hour % 1000 == 0 and os.getenv("SPEC_DEBUG") then
      io.stderr:write(("# hour %d at %.1f s\n"):format(hour, vtime.now() - start))
    end
    if checks[hour] then
      local want = {}
      for _, vm in ipairs({ "a", "b", "c" }) do
        for name in pairs(expected_keep(history[vm], policy)) do want[#want + 1] = name end
      end
      table.sort(want)
      local wanted = table.concat(want, " ")
      local ok = pcall(until_, "the kept set at hour " .. hour, function()
        return table.concat(names_of(snaps, "default"), " ") == wanted
      end, 20)
      t.eq(table.concat(names_of(snaps, "default"), " "), wanted, "the kept set at hour " .. hour)
      if ok then checked = checked + 1 end
      -- the status says why each is kept
      pcall(until_, "the status at hour " .. hour, function()
        return scheds:get("default", "y").status.held == #want
      end, 10)
      local s = scheds:get("default", "y")
      t.eq(s.status.held, #want, "status.held at hour " .. hour)
      for _, e in ipairs(s.status.snapshots) do t.ok(e.keptBy and #e.keptBy > 0, e.name .. " has a reason") end
    end
  end
  if os.getenv("SPEC_DEBUG") then
    local m = srv:get("/metrics")
    for line in m.body:gmatch("[^\n]+") do
      if line:match("^apiserver_request_total") or line:match("^apiserver_request_duration_seconds_sum") or line:match("^apiserver_request_duration_seconds_count") then io.stderr:write(line, "\n") end
    end
  end
  local due = 0
  for hr in pairs(checks) do if hr <= HOURS then due = due + 1 end end
  t.eq(checked, due, "instants checked")
  -- in c's stretch without consistency the newest consistent one (hour 4999) stayed throughout
  local s = scheds:get("default", "y")
  io.stderr:write(("# a year of hourly runs (3 VMs, 26,280 snapshots) in %.1f s; %d held at the end\n"):format(
    vtime.now() - start, s.status.held))
  -- the newest consistent one is never deleted, even where the policy alone
  -- would: c's last consistent snapshot before a new inconsistent stretch,
  -- under a policy that counts inconsistent ones and keeps only 2
  local last = T0 + HOURS * 3600
  assert(c:patch(SCHED, "y", { spec = { retention = { keepLast = 2, consistentOnly = false, hourly = json.null,
    daily = json.null, weekly = json.null, monthly = json.null } } }, { namespace = "default" }))
  for i = 1, 5 do
    local at = last + i * 3600
    set_clock(c, at)
    until_("run " .. i, function()
      local x = scheds:get("default", "y")
      return x.status.lastScheduleTime == F(at)
    end)
    for _, vm in ipairs({ "a", "b", "c" }) do
      local name = ("y-%s-%s"):format(vm, os.date("!%Y%m%d-%H%M", at))
      local obj = until_(name, function() return snaps:get("default", name) end)
      obj.status = { phase = "Ready", consistent = vm ~= "c" or nil }
      assert(c:update_status(obj))
    end
  end
  local newest_c = ("y-c-%s"):format(os.date("!%Y%m%d-%H%M", last))
  until_("c pruned to its 2 newest and its newest consistent", function()
    local left = {}
    for _, n in ipairs(names_of(snaps, "default")) do
      if n:match("^y%-c%-") then left[#left + 1] = n end
    end
    return #left == 3 and left
  end)
  t.ok(snaps:get("default", newest_c) ~= nil, "the newest consistent snapshot of c stays")
  local x = scheds:get("default", "y")
  for _, e in ipairs(x.status.snapshots) do
    if e.name == newest_c then t.eq(table.concat(e.keptBy, ","), "newest consistent") end
  end
  -- a deletion's Event names the rule
  local evs = assert(c:list("events", { namespace = "default", field_selector = "reason=SnapshotPruned" }))
  t.ok(#evs.items > 0)
  local saw
  for _, e in ipairs(evs.items) do
    if e.message:find("outside the policy (keepLast 2)", 1, true) then saw = true end
  end
  t.ok(saw, "an Event names the rule that chose the deletion")
end)

local function vmsnap_cli(srv, args)
  local argv = { "schedule" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--kubeconfig"
  argv[#argv + 1] = srv.kubeconfig
  return h.run_vmsnap(argv)
end

t.test("downtime across 5 runs: one catch-up; the starting deadline; suspend; run-now; the CLI", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  stopped_vm(c, "d1")
  local T0 = P("2027-03-01T00:00:00Z")
  set_clock(c, T0)
  local r = vmsnap_cli(srv, { "create", "every10", "--schedule", "*/10 * * * *", "--vm", "d1", "--keep-last", "100" })
  t.eq(r.status, 0, r.stderr)
  r = vmsnap_cli(srv, { "create", "strict", "--schedule", "*/10 * * * *", "--vm", "d1", "--starting-deadline", "5m",
    "--keep-last", "100" })
  t.eq(r.status, 0, r.stderr)
  local function runs(name)
    local l = assert(c:list(VMS, { namespace = "default", label_selector = "vmsnap.io/schedule=" .. name }))
    local out = {}
    for _, x in ipairs(l.items) do out[#out + 1] = x.metadata.annotations["vmsnap.io/scheduled-at"] end
    table.sort(out)
    return out
  end
  local function status_of(name) return (c:get(SCHED, name, { namespace = "default" }) or {}).status or {} end
  do
    local ctl <close> = schedule_controller(srv)
    until_("the start", function() return status_of("every10").startTime and status_of("strict").startTime end)
    set_clock(c, T0 + 600)
    until_("the first run", function()
      return status_of("every10").lastScheduleTime == F(T0 + 600) and status_of("strict").lastScheduleTime == F(T0 + 600)
    end)
    t.eq(status_of("every10").nextScheduleTime, F(T0 + 1200))
  end
  -- the controller is down across 5 run times (10:20 ... 11:00), then back at 11:03
  set_clock(c, T0 + 3780)
  do
    local ctl <close> = schedule_controller(srv)
    until_("the catch-up", function() return status_of("every10").lastScheduleTime == F(T0 + 3600) end)
    task.sleep(1) -- a second run would come now if it were going to
    t.eq(table.concat(runs("every10"), " "), F(T0 + 600) .. " " .. F(T0 + 3600), "one catch-up, not five")
    -- 3 minutes late is within the deadline of 5 minutes: strict takes it too
    until_("strict's catch-up", function() return status_of("strict").lastScheduleTime == F(T0 + 3600) end)
  end
  -- down again, back 7 minutes after the run of 11:10: past strict's deadline
  set_clock(c, T0 + 4200 + 420)
  do
    local ctl <close> = schedule_controller(srv)
    until_("every10's late run", function() return status_of("every10").lastScheduleTime == F(T0 + 4200) end)
    until_("strict's skip", function() return status_of("strict").lastSkippedTime == F(T0 + 4200) end)
    t.eq(status_of("strict").lastScheduleTime, F(T0 + 3600), "strict did not run late")
    local evs = assert(c:list("events", { namespace = "default" }))
    local missed
    for _, e in ipairs(evs.items) do
      if e.reason == "MissedSchedule" and e.involvedObject.name == "strict" then missed = e.message end
    end
    t.contains(missed or "", "not started within startingDeadlineSeconds (300 s): skipped")
    -- suspend: no runs, and none taken on resume for the time it was suspended
    r = vmsnap_cli(srv, { "suspend", "every10" })
    t.eq(r.status, 0, r.stderr)
    until_("suspended", function()
      for _, x in ipairs(status_of("every10").conditions or {}) do
        if x.type == "Suspended" and x.status == "True" then return true end
      end
    end)
    t.eq(status_of("every10").nextScheduleTime, nil)
    set_clock(c, T0 + 4800)
    until_("the suspended run skipped", function() return status_of("every10").lastSkippedTime == F(T0 + 4800) end)
    local refused = vmsnap_cli(srv, { "run-now", "every10" })
    t.eq(refused.status, 1)
    t.contains(refused.stderr, 'schedule "every10" is suspended: resume it first')
    r = vmsnap_cli(srv, { "resume", "every10" })
    t.eq(r.status, 0, r.stderr)
    until_("resumed", function() return status_of("every10").nextScheduleTime == F(T0 + 5400) end)
    t.eq(status_of("every10").lastScheduleTime, F(T0 + 4200), "no run for the suspended time")
    -- run-now: a run at once
    r = vmsnap_cli(srv, { "run-now", "every10" })
    t.eq(r.status, 0, r.stderr)
    until_("the run asked for", function() return status_of("every10").lastScheduleTime == F(T0 + 4800) end)
    local n = #runs("every10")
    -- list and describe
    r = vmsnap_cli(srv, { "list" })
    t.eq(r.status, 0, r.stderr)
    t.contains(r.stdout, "every10")
    t.contains(r.stdout, "*/10 * * * *")
    until_("the status held", function() return status_of("every10").held == n end)
    r = vmsnap_cli(srv, { "describe", "every10" })
    t.eq(r.status, 0, r.stderr)
    t.contains(r.stdout, "Retention:     keepLast 100")
    t.contains(r.stdout, ("Snapshots (%d):"):format(n))
    t.contains(r.stdout, "in progress", "nothing completes them here: in progress, kept")
  end
end)

t.test("retention spares a snapshot a restore in progress uses; delete keeps snapshots unless --cascade; prune --dry-run", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  stopped_vm(c, "r1")
  local T0 = P("2027-05-01T00:00:00Z")
  set_clock(c, T0)
  local ctl <close> = schedule_controller(srv)
  local r = vmsnap_cli(srv, { "create", "keep2", "--schedule", "@hourly", "--vm", "r1", "--keep-last", "2" })
  t.eq(r.status, 0, r.stderr)
  local function status_of() return (c:get(SCHED, "keep2", { namespace = "default" }) or {}).status or {} end
  until_("the start", function() return status_of().startTime end)
  local names = {}
  local function run(i)
    local at = T0 + i * 3600
    set_clock(c, at)
    until_("run " .. i, function() return status_of().lastScheduleTime == F(at) end)
    local name = ("keep2-r1-%s"):format(os.date("!%Y%m%d-%H%M", at))
    local obj = until_(name, function() return c:get(VMS, name, { namespace = "default" }) end)
    obj.status = { phase = "Ready", consistent = true }
    assert(c:update_status(obj))
    names[i] = name
  end
  run(1)
  -- a restore of the first snapshot, in progress (no restore controller runs: it stays Pending)
  assert(c:create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = "back", namespace = "default" },
    spec = { virtualMachineSnapshotName = names[1] } }))
  for i = 2, 4 do run(i) end
  until_("two kept besides the protected one", function() return status_of().held == 3 end)
  local kept = {}
  for _, e in ipairs(status_of().snapshots) do kept[e.name] = table.concat(e.keptBy or {}, ",") end
  t.contains(kept[names[1]] or "", "in use by VirtualMachineRestore back")
  t.ok(kept[names[2]] == nil, "the unprotected old one went")
  t.ok(c:get(VMS, names[1], { namespace = "default" }) ~= nil, "the restore's snapshot exists")
  -- prune --dry-run names what would go and why, deleting nothing
  local sched = assert(c:get(SCHED, "keep2", { namespace = "default" }))
  sched.spec.retention = { keepLast = 1 }
  -- (the controller is stopped first, so that only the dry run judges)
  ctl.p:kill("TERM")
  ctl.p:wait(10)
  assert(c:update(sched))
  r = vmsnap_cli(srv, { "prune", "keep2", "--dry-run" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, ("would delete %s (r1, %s): outside the policy (keepLast 1)"):format(names[3], F(T0 + 3 * 3600)))
  t.contains(r.stdout, "1 would be deleted, 2 kept (dry run: nothing deleted)")
  t.ok(c:get(VMS, names[3], { namespace = "default" }) ~= nil, "the dry run deleted nothing")
  -- the restore ends: its snapshot may go
  local vmr = assert(c:get("virtualmachinerestores", "back", { namespace = "default" }))
  vmr.status = { phase = "Ready" }
  assert(c:update_status(vmr))
  r = vmsnap_cli(srv, { "prune", "keep2" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "deleted " .. names[1])
  t.contains(r.stdout, "deleted " .. names[3])
  -- delete without --cascade: the snapshots stay
  r = vmsnap_cli(srv, { "delete", "keep2" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "its 3 snapshots stay (--cascade deletes them)")
  t.ok(c:get(VMS, names[4], { namespace = "default" }) ~= nil)
  -- a new schedule of the same name, deleted with --cascade, takes them
  r = vmsnap_cli(srv, { "create", "keep2", "--schedule", "@hourly", "--vm", "r1" })
  t.eq(r.status, 0, r.stderr)
  r = vmsnap_cli(srv, { "delete", "keep2", "--cascade" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "deleted")
  local left = assert(c:list(VMS, { namespace = "default", label_selector = "vmsnap.io/schedule=keep2" }))
  t.eq(#left.items, 0, "--cascade deleted its snapshots")
end)

t.test("invalid schedules: the CLI and the server refuse them naming the field; the controller says why", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local cases = {
    { { "create", "x", "--schedule", "61 * * * *", "--vm", "a" }, 'spec.schedule: the minute field "61": 61 is out of range 0-59' },
    { { "create", "x", "--schedule", "@daily", "--vm", "a", "--time-zone", "Mars/Base" }, 'spec.timeZone: time zone "Mars/Base": unknown' },
    { { "create", "x", "--schedule", "@daily" }, "give --vm NAME... or --selector K=V" },
    { { "create", "x", "--schedule", "@daily", "--vm", "a", "--max-age", "soon" }, 'spec.retention.maxAge: "soon" is not a duration' },
    { { "create", "x", "--schedule", "@daily", "--vm", "a", "--daily", "-1" }, "--daily must be a whole number" },
    { { "create", "x", "--vm", "a" }, "--schedule is required" },
    { { "frobnicate", "x" }, "unknown verb 'frobnicate'" },
    { { "describe", "nope" }, 'schedule "nope" not found' },
  }
  for _, k in ipairs(cases) do
    local r = vmsnap_cli(srv, k[1])
    t.ok(r.status ~= 0, table.concat(k[1], " "))
    t.contains(r.stderr, k[2], table.concat(k[1], " "))
  end
  -- the server's own check: exactly one way of choosing VMs
  local _, err = c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = "both", namespace = "default" },
    spec = { schedule = "@daily", virtualMachineNames = { "a" }, virtualMachineSelector = { matchLabels = { a = "b" } } } })
  t.contains(tostring(err), "set exactly one of virtualMachineSelector and virtualMachineNames")
  -- a schedule the server takes but the controller cannot run says why
  set_clock(c, P("2027-01-01T00:00:00Z"))
  local ctl <close> = schedule_controller(srv)
  assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = "bad", namespace = "default" }, spec = { schedule = "0 0 31 2 *", virtualMachineNames = { "a" } } }))
  local s = until_("the Ready condition", function()
    local x = c:get(SCHED, "bad", { namespace = "default" })
    for _, cd in ipairs(x and x.status and x.status.conditions or {}) do
      if cd.type == "Ready" then return cd end
    end
  end)
  t.eq(s.status, "False")
  t.eq(s.reason, "InvalidSpec")
  t.contains(s.message, "never runs")
end)

t.test("API faults on every write the schedule makes: one snapshot per VM and run, pruning completes", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  for _, n in ipairs({ "f1", "f2", "f3" }) do stopped_vm(c, n) end
  local T0 = P("2027-07-01T00:00:00Z")
  set_clock(c, T0)
  local fp <close> = h.faultproxy(srv.port)
  local kc = srv.data .. "/kubeconfig-proxied"
  assert(require("vmsnap.fs").write_atomic(kc, (assert(require("vmsnap.fs").read_file(srv.kubeconfig)):gsub("server: %S+",
    "server: " .. fp.url))))
  local ctl <close> = schedule_controller(srv, nil, kc)
  assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = "flaky", namespace = "default" },
    spec = { schedule = "@hourly", virtualMachineNames = { "f1", "f2", "f3" }, retention = { keepLast = 1 } } }))
  local function status_of() return (c:get(SCHED, "flaky", { namespace = "default" }) or {}).status or {} end
  until_("the start", function() return status_of().startTime end)
  local V = "/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualmachinesnapshots"
  for hour = 1, 3 do
    -- refused, garbled and cut answers to its creates, deletes, Events and status writes
    fp:plan("POST " .. V .. "$", "500,drop,503,close")
    fp:plan("DELETE " .. V .. "/", "503,close,drop")
    fp:plan("PUT /apis/vmsnap.io/v1alpha1/namespaces/default/virtualmachinesnapshotschedules/flaky/status", "500,drop,close")
    fp:plan("POST /api/v1/namespaces/default/events", "500,close")
    local at = T0 + hour * 3600
    set_clock(c, at)
    until_("the run of hour " .. hour, function() return status_of().lastScheduleTime == F(at) end, 60)
    for _, vm in ipairs({ "f1", "f2", "f3" }) do
      local name = ("flaky-%s-%s"):format(vm, os.date("!%Y%m%d-%H%M", at))
      local obj = until_(name, function() return c:get(VMS, name, { namespace = "default" }) end, 60)
      obj.status = { phase = "Ready", consistent = true }
      assert(c:update_status(obj))
    end
    until_("one snapshot per VM after hour " .. hour, function()
      local l = c:list(VMS, { namespace = "default", label_selector = "vmsnap.io/schedule=flaky" })
      if not l or #l.items ~= 3 then return false end
      for _, x in ipairs(l.items) do
        if x.metadata.annotations["vmsnap.io/scheduled-at"] ~= F(at) then return false end
      end
      return true
    end, 60)
  end
  until_("the status caught up", function()
    local st = status_of()
    return st.held == 3 and st.lastRun and st.lastRun.ready == 3 and st.lastSuccessfulTime == F(T0 + 3 * 3600)
  end, 60)
  local stats = fp:stats()
  t.ok(stats.faulted >= 3 * 9, ("faults were met: %d of the %d requests"):format(stats.faulted, stats.requests))
  -- the deletes' faults came last: what is left of them is at most the last hour's
  t.ok(stats.pending <= 3, ("faults left unused: %d"):format(stats.pending))
end)

t.test("the schedule controller killed (SIGKILL) in the middle of a run of 40 VMs: the restart finishes it, once", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local names = {}
  for i = 1, 40 do
    names[i] = ("k%02d"):format(i)
    stopped_vm(c, names[i])
  end
  local T0 = P("2027-08-01T00:00:00Z")
  set_clock(c, T0)
  assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = "kill", namespace = "default" },
    spec = { schedule = "@hourly", virtualMachineNames = names, retention = { keepLast = 1 } } }))
  local function status_of() return (c:get(SCHED, "kill", { namespace = "default" }) or {}).status or {} end
  local function count()
    local l = assert(c:list(VMS, { namespace = "default", label_selector = "vmsnap.io/schedule=kill" }))
    return #l.items, l.items
  end
  do
    -- (no cap on snapshots in flight: nothing completes them here)
    local ctl = schedule_controller(srv, { "--max-in-flight-per-driver", "0" })
    until_("the start", function() return status_of().startTime end)
    set_clock(c, T0 + 3600)
    until_("some of the run's snapshots", function() return count() >= 5 end, 20)
    ctl.p:kill("KILL") -- (not a <close> value: killed here, by PID)
    ctl.p:wait(5)
    ctl.p:close()
  end
  local made = count()
  io.stderr:write(("# killed after %d of 40 creates\n"):format(made))
  local ctl2 <close> = schedule_controller(srv, { "--max-in-flight-per-driver", "0" })
  local ok = pcall(until_, "the run finished", function()
    local st = status_of()
    return st.lastScheduleTime == F(T0 + 3600) and st.held == 40 and count() == 40
  end, 30)
  t.ok(ok, "the run finished: " .. json.encode(status_of()):sub(1, 600) .. (" (%d snapshots)"):format(count()))
  local n, items = count()
  t.eq(n, 40, "one snapshot per VM")
  local seen = {}
  for _, x in ipairs(items) do
    t.eq(x.metadata.annotations["vmsnap.io/scheduled-at"], F(T0 + 3600))
    seen[x.spec.virtualMachineName] = (seen[x.spec.virtualMachineName] or 0) + 1
  end
  for _, v in ipairs(names) do t.eq(seen[v], 1, v) end
end)

t.test("two schedules whose snapshot names meet: the second's VM fails its run, named, nothing taken for done", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  stopped_vm(c, "db-a")
  stopped_vm(c, "a")
  local T0 = P("2027-09-01T00:00:00Z")
  set_clock(c, T0)
  local ctl <close> = schedule_controller(srv)
  for _, x in ipairs({ { "nightly", "db-a" }, { "nightly-db", "a" } }) do
    assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
      metadata = { name = x[1], namespace = "default" }, spec = { schedule = "@hourly", virtualMachineNames = { x[2] } } }))
  end
  local function status_of(n) return (c:get(SCHED, n, { namespace = "default" }) or {}).status or {} end
  until_("both started", function() return status_of("nightly").startTime and status_of("nightly-db").startTime end)
  set_clock(c, T0 + 3600)
  local failed = until_("one of them failed its VM", function()
    for _, n in ipairs({ "nightly", "nightly-db" }) do
      local run = status_of(n).lastRun
      if run and run.failed then return { n, run.failed[1] } end
    end
  end)
  t.contains(failed[2].message, 'A VirtualMachineSnapshot named "nightly-db-a-20270901-0100" exists and is not this schedule')
  local l = assert(c:list(VMS, { namespace = "default" }))
  t.eq(#l.items, 1, "one snapshot, of one of them")
end)

return t.done()
