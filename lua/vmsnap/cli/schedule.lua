--- `vmsnap schedule create|list|describe|run-now|suspend|resume|prune|delete`:
--- VirtualMachineSnapshotSchedules (docs/schedules.md).
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local workflow = require("vmsnap.workflow")
local vtime = require("vmsnap.time")
local clock = require("vmsnap.clock")
local json = require("vmsnap.json")
local retention = require("vmsnap.retention")

local M = {}

local SCHED = "virtualmachinesnapshotschedules.vmsnap.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local VMR = "virtualmachinerestores.virtualization.deckhouse.io"

M.help = [[
usage: vmsnap schedule create NAME --schedule CRON (--vm VM... | --selector K=V,...) [options]
       vmsnap schedule list
       vmsnap schedule describe NAME
       vmsnap schedule run-now NAME
       vmsnap schedule suspend|resume NAME
       vmsnap schedule prune NAME --dry-run
       vmsnap schedule delete NAME [--cascade]

VirtualMachineSnapshots of the chosen VMs on a cron schedule, kept by a
retention policy: the schedule controller (vmsnap up, vmsnap controller) runs
them. See docs/schedules.md.

create:
  --schedule CRON         5-field cron (minute hour day-of-month month
                          day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly
  --time-zone TZ          IANA zone of the schedule and the retention periods (default UTC)
  --vm NAME               a VM to snapshot (repeatable)
  --selector K=V,...      or the VMs with these labels
  --keep-last N           keep the newest N per VM
  --hourly N, --daily N, --weekly N, --monthly N, --yearly N
                          keep the newest of each of the last N such periods
  --max-age DURATION      delete what is older (720h, 30d, 2w)
  --count-inconsistent    let inconsistent snapshots fill the rules above
  --inconsistent          the snapshots' requiredConsistency: false
  --keep-ip Always|Never  the snapshots' keepIPAddress (default Always)
  --starting-deadline DURATION
                          skip a run not started within this of its time
  --max-frozen N, --max-frozen-per-driver N, --max-in-flight-per-driver N
                          this schedule's concurrency caps (docs/schedules.md)
  --annotation K=V        an annotation of every snapshot (vmsnap.io/hooks=...; repeatable)
  --suspend               create it suspended
  --dry-run               print the object instead of creating it
run-now                   take a run now (besides the schedule's own)
prune --dry-run           what retention would delete now, and why (without
                          --dry-run: delete it now, as the controller would)
delete --cascade          also delete the schedule's snapshots (by default they stay)
]] .. kube.COMMON_HELP

local SPEC = { ["--schedule"] = { "schedule", true }, ["--time-zone"] = { "tz", true }, ["--vm"] = { "vm", true, true },
  ["--selector"] = { "selector", true }, ["--keep-last"] = { "keepLast", true }, ["--hourly"] = { "hourly", true },
  ["--daily"] = { "daily", true }, ["--weekly"] = { "weekly", true }, ["--monthly"] = { "monthly", true },
  ["--yearly"] = { "yearly", true }, ["--max-age"] = { "maxAge", true },
  ["--count-inconsistent"] = { "count_inconsistent", false }, ["--inconsistent"] = { "inconsistent", false },
  ["--keep-ip"] = { "keep_ip", true }, ["--starting-deadline"] = { "deadline", true },
  ["--max-frozen"] = { "maxFrozen", true }, ["--max-frozen-per-driver"] = { "maxFrozenPerDriver", true },
  ["--max-in-flight-per-driver"] = { "maxInFlightPerDriver", true }, ["--annotation"] = { "annotation", true, true },
  ["--suspend"] = { "suspend", false }, ["--dry-run"] = { "dry_run", false }, ["--cascade"] = { "cascade", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

M.VERBS = { "create", "list", "describe", "run-now", "suspend", "resume", "prune", "delete" }

local function W()
  local w, err = workflow.load("snapshot-schedule")
  if not w then cli.fail("error: " .. tostring(err)) end
  return w
end

local function count(flag, v)
  local n = v and v:match("^%d+$") and tonumber(v)
  if not n then cli.usage(("schedule: %s must be a whole number, not '%s'"):format(flag, tostring(v))) end
  return n
end

local function build(name, o, ns)
  if not o.schedule then cli.usage("schedule create: --schedule is required (e.g. --schedule @daily)") end
  if (o.vm ~= nil) == (o.selector ~= nil) then cli.usage("schedule create: give --vm NAME... or --selector K=V, not both") end
  local spec = { schedule = o.schedule, timeZone = o.tz, suspend = o.suspend or nil }
  if o.vm then spec.virtualMachineNames = o.vm end
  if o.selector then
    local ml = {}
    for pair in o.selector:gmatch("[^,]+") do
      local k, v = pair:match("^%s*([^=%s]+)%s*=%s*([^=%s]*)%s*$")
      if not k then cli.usage(("schedule create: --selector: %q is not KEY=VALUE"):format(pair)) end
      ml[k] = v
    end
    spec.virtualMachineSelector = { matchLabels = ml }
  end
  local r = {}
  for _, k in ipairs({ "keepLast", "hourly", "daily", "weekly", "monthly", "yearly" }) do
    if o[k] then r[k] = count("--" .. k:gsub("%u", function(c) return "-" .. c:lower() end), o[k]) end
  end
  if o.maxAge then r.maxAge = o.maxAge end
  if o.count_inconsistent then r.consistentOnly = false end
  if next(r) then spec.retention = r end
  local c = {}
  for _, k in ipairs({ "maxFrozen", "maxFrozenPerDriver", "maxInFlightPerDriver" }) do
    if o[k] then
      c[k] = count("--" .. k:gsub("%u", function(x) return "-" .. x:lower() end), o[k])
      if c[k] < 1 then cli.usage("schedule create: a concurrency cap is at least 1") end
    end
  end
  if next(c) then spec.concurrency = c end
  if o.deadline then spec.startingDeadlineSeconds = math.floor(cli.duration("schedule create: --starting-deadline", o.deadline)) end
  local tspec = {}
  if o.inconsistent then tspec.requiredConsistency = false end
  if o.keep_ip then
    if o.keep_ip ~= "Always" and o.keep_ip ~= "Never" then
      cli.usage(("schedule create: --keep-ip must be Always or Never, not '%s'"):format(o.keep_ip))
    end
    tspec.keepIPAddress = o.keep_ip
  end
  local ann
  for _, a in ipairs(o.annotation or {}) do
    local k, v = a:match("^([^=]+)=(.*)$")
    if not k then cli.usage(("schedule create: --annotation: %q is not KEY=VALUE"):format(a)) end
    ann = ann or {}
    ann[k] = v
  end
  if next(tspec) or ann then spec.template = { spec = next(tspec) and tspec or nil, metadata = ann and { annotations = ann } or nil } end
  local obj = { apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
    metadata = { name = name, namespace = ns }, spec = spec }
  -- checked here as the controller will, so a mistake is named now
  local ok, err = W().read_spec(obj)
  if not ok then cli.usage("schedule create: " .. err) end
  return obj
end

local function get(c, name, ns)
  local s, err, code = c:get(SCHED, name, { namespace = ns })
  if not s then
    if code == "NotFound" then cli.fail(("error: schedule %q not found in namespace %q"):format(name, ns)) end
    cli.fail("error: " .. tostring(err))
  end
  return s
end

local function list(c, ns)
  local l, err = c:list(SCHED, { namespace = ns })
  if not l then cli.fail("error: " .. tostring(err)) end
  local rows = { { "NAME", "SCHEDULE", "TIME ZONE", "SUSPEND", "LAST", "NEXT", "HELD", "QUEUED" } }
  for _, s in ipairs(l.items) do
    local st = s.status or {}
    rows[#rows + 1] = { s.metadata.name, s.spec.schedule, s.spec.timeZone or "UTC", tostring(s.spec.suspend == true),
      st.lastScheduleTime or "-", st.nextScheduleTime or "-", tostring(st.held or 0), tostring(#(st.queued or {})) }
  end
  if #rows == 1 then io.stderr:write(("No schedules found in %s namespace.\n"):format(ns)) return end
  io.stdout:write(kube.columns(rows) .. "\n")
end

local function describe(s)
  local out = {}
  local function p(fmt, ...) out[#out + 1] = fmt:format(...) end
  local spec, st = s.spec, s.status or {}
  p("Name:          %s", s.metadata.name)
  p("Namespace:     %s", s.metadata.namespace)
  p("Schedule:      %s (%s)%s", spec.schedule, spec.timeZone or "UTC", spec.suspend and "  SUSPENDED" or "")
  if spec.virtualMachineNames then p("VMs:           %s", table.concat(spec.virtualMachineNames, ", "))
  else p("VM selector:   %s", json.encode(spec.virtualMachineSelector)) end
  local w = W()
  local rs = w.read_spec(s)
  local policy = rs and retention.describe(rs.policy) or ""
  p("Retention:     %s", policy ~= "" and policy or "none (every snapshot is kept)")
  if spec.startingDeadlineSeconds then p("Deadline:      %d s", spec.startingDeadlineSeconds) end
  if spec.concurrency then p("Concurrency:   %s", json.encode(spec.concurrency)) end
  p("Last run:      %s", st.lastScheduleTime or "never")
  p("Last success:  %s", st.lastSuccessfulTime or "never")
  p("Next run:      %s", st.nextScheduleTime or "-")
  if st.lastRun then
    p("Last run's snapshots: %d of %d Ready", st.lastRun.ready or 0, st.lastRun.virtualMachines or 0)
    for _, f in ipairs(st.lastRun.failed or {}) do p("  failed  %s  %s", f.virtualMachineName, f.message or "") end
  end
  p("Conditions:")
  for _, x in ipairs(st.conditions or {}) do p("  %-18s %-6s %-18s %s", x.type, x.status, x.reason or "", x.message or "") end
  if st.queued then
    p("Queued (%d):", #st.queued)
    for _, q in ipairs(st.queued) do p("  %s  %s  %s", q.virtualMachineName, q.scheduledAt, q.reason or "") end
  end
  p("Snapshots (%d):", st.held or 0)
  local rows = { { "NAME", "VM", "SCHEDULED", "PHASE", "CONSISTENT", "KEPT BY" } }
  for _, e in ipairs(st.snapshots or {}) do
    rows[#rows + 1] = { e.name, e.virtualMachineName, e.scheduledAt, e.phase or "", tostring(e.consistent == true),
      table.concat(e.keptBy or {}, ", ") }
  end
  out[#out + 1] = kube.columns(rows, "  ")
  io.stdout:write(table.concat(out, "\n") .. "\n")
end

-- the facts retention needs, from the API (as the controller's cache has them)
local function facts_of(c, s)
  local w = W()
  local ns = s.metadata.namespace
  local rs, err = w.read_spec(s)
  if not rs then cli.fail(("error: schedule %q: %s"):format(s.metadata.name, err)) end
  local snaps, e1 = c:list_all(VMS, { namespace = ns, label_selector = w.LABEL .. "=" .. s.metadata.name })
  if not snaps then cli.fail("error: " .. tostring(e1)) end
  local vmrs, e2 = c:list_all(VMR, { namespace = ns })
  -- without the restores nothing may be deleted: one of them may use a snapshot
  if not vmrs then cli.fail("error: cannot list the VirtualMachineRestores: " .. tostring(e2)) end
  return { spec = rs, snapshots = snaps, restores = w.restores_in_use(vmrs), now = math.floor(clock.now()) }, w
end

local function prune(c, s, dry)
  local facts, w = facts_of(c, s)
  local ctx = { client = c, log = require("vmsnap.log").new("schedule") }
  local step = w.steps:find("retention")
  local ok, err = step.run(ctx, s, facts)
  if not ok then cli.fail("error: retention: " .. tostring(err)) end
  local n, kept = 0, 0
  for _, cand in ipairs(facts.candidates or w.candidates(s, facts)) do
    local d = facts.decisions[cand.name]
    if w.prunable(cand, d) then
      n = n + 1
      if dry then
        io.stdout:write(("would delete %s (%s, %s): %s\n"):format(cand.name, cand.vm, vtime.format(cand.at), d.rule))
      else
        local _, derr, code = c:delete(VMS, cand.name, { namespace = s.metadata.namespace, preconditions = { uid = cand.object.metadata.uid } })
        if derr and code ~= "NotFound" then cli.fail("error: " .. tostring(derr)) end
        io.stdout:write(("deleted %s (%s, %s): %s\n"):format(cand.name, cand.vm, vtime.format(cand.at), d.rule))
      end
    else
      kept = kept + 1
    end
  end
  io.stdout:write(("%d %s, %d kept%s\n"):format(n, dry and "would be deleted" or "deleted", kept,
    dry and " (dry run: nothing deleted)" or ""))
end

local function delete(c, s, cascade)
  local ns = s.metadata.namespace
  local facts = cascade and facts_of(c, s) or nil
  local _, err, code = c:delete(SCHED, s.metadata.name, { namespace = ns })
  if err and code ~= "NotFound" then cli.fail("error: " .. tostring(err)) end
  io.stdout:write(("virtualmachinesnapshotschedule.vmsnap.io %q deleted\n"):format(s.metadata.name))
  if not cascade then
    local n = #((s.status or {}).snapshots or {})
    if n > 0 then io.stdout:write(("its %d snapshots stay (--cascade deletes them)\n"):format(n)) end
    return
  end
  local kept = 0
  for _, snap in ipairs(facts.snapshots) do
    local r = facts.restores[snap.metadata.name]
    if r then
      kept = kept + 1
      io.stdout:write(("kept %s: in use by VirtualMachineRestore %s\n"):format(snap.metadata.name, r))
    else
      local _, derr, dcode = c:delete(VMS, snap.metadata.name, { namespace = ns })
      if derr and dcode ~= "NotFound" then cli.fail("error: " .. tostring(derr)) end
      io.stdout:write(("virtualmachinesnapshot.virtualization.deckhouse.io %q deleted\n"):format(snap.metadata.name))
    end
  end
  if kept > 0 then return nil, ("%d snapshots in use by a restore in progress were kept"):format(kept) end
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help or #pos == 0 then io.stdout:write(M.help) return end
  local verb = pos[1]
  local known = false
  for _, v in ipairs(M.VERBS) do known = known or v == verb end
  if not known then
    cli.usage(("schedule: unknown verb '%s'%s (%s)"):format(verb, cli.did_you_mean(verb, M.VERBS), table.concat(M.VERBS, ", ")))
  end
  if verb == "list" then
    if pos[2] then cli.usage("schedule list takes no NAME") end
  elseif not pos[2] or pos[3] then
    cli.usage(("schedule %s: give one NAME"):format(verb))
  end
  if o.dry_run and verb ~= "create" and verb ~= "prune" then cli.usage("schedule: --dry-run is for create and prune") end
  if o.cascade and verb ~= "delete" then cli.usage("schedule: --cascade is for delete") end
  local c = kube.client(o)
  local ns = o.namespace or c:describe().namespace or "default"
  local name = pos[2]
  if verb == "create" then
    local obj = build(name, o, ns)
    if o.dry_run then io.stdout:write(json.encode(obj) .. "\n") return end
    local _, err, code = c:create(obj)
    if err then
      if code == "AlreadyExists" then cli.fail(("error: schedule %q already exists in namespace %q"):format(name, ns)) end
      cli.fail("error: " .. tostring(err))
    end
    io.stdout:write(("virtualmachinesnapshotschedule.vmsnap.io/%s created\n"):format(name))
    return
  end
  if verb == "list" then return list(c, ns) end
  local s = get(c, name, ns)
  if verb == "describe" then return describe(s) end
  if verb == "suspend" or verb == "resume" then
    local _, err = c:patch(SCHED, name, { spec = { suspend = verb == "suspend" } }, { namespace = ns })
    if err then cli.fail("error: " .. tostring(err)) end
    io.stdout:write(("virtualmachinesnapshotschedule.vmsnap.io/%s %s\n"):format(name, verb == "suspend" and "suspended" or "resumed"))
    return
  end
  if verb == "run-now" then
    if s.spec.suspend then cli.fail(("error: schedule %q is suspended: resume it first"):format(name)) end
    local req = vtime.format(math.floor(vtime.now())) .. "/" .. tostring(math.random(1, 1e9))
    local _, err = c:patch(SCHED, name, { metadata = { annotations = { [W().RUN_NOW] = req } } }, { namespace = ns })
    if err then cli.fail("error: " .. tostring(err)) end
    io.stdout:write(("virtualmachinesnapshotschedule.vmsnap.io/%s: a run was asked for (the controller takes it)\n"):format(name))
    return
  end
  if verb == "prune" then return prune(c, s, o.dry_run) end
  if verb == "delete" then return delete(c, s, o.cascade) end
end

return M
