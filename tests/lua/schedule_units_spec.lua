-- The pieces of snapshot schedules that need no server: time zones
-- (vmsnap.tz, checked against Python's zoneinfo over thousands of instants),
-- cron schedules (vmsnap.cron: fields, macros, errors naming the field,
-- daylight saving's gap and fold) and the retention policy (vmsnap.retention:
-- buckets, consistency, maxAge, what no rule deletes).
local t = require("tap")
local tz = require("vmsnap.tz")
local cron = require("vmsnap.cron")
local retention = require("vmsnap.retention")
local vtime = require("vmsnap.time")
local proc = require("vmsnap.proc")
local json = require("vmsnap.json")

local P = vtime.parse
local F = vtime.format

t.test("time zones: offsets at DST changes, far future from the POSIX footer, UTC, bad names", function()
  local z = assert(tz.zone("Europe/Berlin"))
  t.eq(z:offset(1774745999), 3600)
  t.eq(z:offset(1774746000), 7200)
  t.eq(z:offset(1792889999), 7200)
  t.eq(z:offset(1792890000), 3600)
  t.eq(z:offset(3802550400), 7200, "2090: past the transitions, from the footer")
  t.eq(assert(tz.zone("UTC")):offset(0), 0)
  t.eq(assert(tz.zone(nil)):offset(123), 0)
  -- a gap has no instant, a fold two
  t.eq(#z:instants(tz.civil(2026, 3, 29, 2, 30)), 0)
  local fold = z:instants(tz.civil(2026, 10, 25, 2, 30))
  t.eq(#fold, 2)
  t.eq(fold[2] - fold[1], 3600)
  t.eq(F(fold[1]), "2026-10-25T00:30:00Z")
  for _, bad in ipairs({ "../etc/passwd", "/etc/passwd", "Europe/../../x", "Nowhere/City", "a b", string.rep("x", 200),
    "right/Europe/Berlin" }) do
    local ok, err = tz.zone(bad)
    t.ok(ok == nil, bad)
    t.contains(err, "time zone", bad)
  end
  t.ok(tz.parse_tzif("TZif2" .. string.rep("\0", 10)) == nil, "a truncated file is refused")
  -- POSIX rules: southern hemisphere, J and n dates, <+03> names
  local r = assert(tz.posix("AEST-10AEDT,M10.1.0,M4.1.0/3"))
  t.eq(r.std, 36000)
  t.eq(r.dst, 39600)
  t.ok(tz.posix("<+03>-3") ~= nil)
  t.ok(tz.posix("EST5EDT,J60,300") ~= nil)
  t.ok(tz.posix("junk") == nil)
end)

t.test("time zones agree with Python's zoneinfo over 1970–2100 in 12 zones", function()
  local zones = { "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "America/Sao_Paulo",
    "Pacific/Chatham", "Europe/London", "Africa/Casablanca", "America/Santiago", "Asia/Tehran", "Pacific/Apia",
    "Europe/Moscow" }
  local instants = {}
  local x = 12345
  for i = 1, 400 do
    x = (x * 1103515245 + 12345) % 2147483648
    instants[i] = x * 2 -- up to 2106
  end
  local py = [==[
import json, sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo
q = json.load(sys.stdin)
out = {}
for name in q["zones"]:
    z = ZoneInfo(name)
    out[name] = [int(datetime.fromtimestamp(t, timezone.utc).astimezone(z).utcoffset().total_seconds()) for t in q["instants"]]
print(json.dumps(out))
]==]
  local r = proc.run({ "python3", "-c", py }, { stdin = json.encode({ zones = zones, instants = instants }), timeout = 60 })
  if not r or r.status ~= 0 then
    t.skip("zoneinfo oracle", "python3 zoneinfo not usable: " .. tostring(r and r.stderr))
    return
  end
  local want = json.decode(r.stdout)
  local bad = 0
  for _, name in ipairs(zones) do
    local z = assert(tz.zone(name))
    for i, inst in ipairs(instants) do
      if z:offset(inst) ~= want[name][i] then
        bad = bad + 1
        if bad < 5 then t.eq(z:offset(inst), want[name][i], ("%s at %s"):format(name, F(inst))) end
      end
    end
  end
  t.eq(bad, 0, "instants where the offsets differ")
end)

t.test("cron: fields, lists, ranges, steps, names, macros; next and last", function()
  local function runs(text, zone, from, n)
    local s = assert(cron.parse(text, zone))
    local out, x = {}, P(from)
    for _ = 1, n do
      x = s:next(x)
      out[#out + 1] = x and F(x) or "none"
    end
    return table.concat(out, " ")
  end
  t.eq(runs("*/20 * * * *", nil, "2026-01-01T00:00:00Z", 3), "2026-01-01T00:20:00Z 2026-01-01T00:40:00Z 2026-01-01T01:00:00Z")
  t.eq(runs("30 2 * * 1-5", nil, "2026-01-02T03:00:00Z", 2), "2026-01-05T02:30:00Z 2026-01-06T02:30:00Z",
    "a Friday after its run: Monday next")
  t.eq(runs("0 0 1 */3 *", nil, "2026-01-15T00:00:00Z", 2), "2026-04-01T00:00:00Z 2026-07-01T00:00:00Z")
  t.eq(runs("0 12 * JAN,jul SUN", nil, "2026-01-01T00:00:00Z", 2), "2026-01-04T12:00:00Z 2026-01-11T12:00:00Z")
  t.eq(runs("0 0 13 * 5", nil, "2026-02-01T00:00:00Z", 3), "2026-02-06T00:00:00Z 2026-02-13T00:00:00Z 2026-02-20T00:00:00Z",
    "both day fields set: either matches")
  t.eq(runs("0 0 * * 7", nil, "2026-01-01T00:00:00Z", 1), "2026-01-04T00:00:00Z", "7 is Sunday")
  t.eq(runs("0 0 29 2 *", nil, "2026-01-01T00:00:00Z", 2), "2028-02-29T00:00:00Z 2032-02-29T00:00:00Z")
  t.eq(runs("5/15 9-10 * * *", nil, "2026-01-01T00:00:00Z", 5),
    "2026-01-01T09:05:00Z 2026-01-01T09:20:00Z 2026-01-01T09:35:00Z 2026-01-01T09:50:00Z 2026-01-01T10:05:00Z")
  t.eq(runs("@hourly", nil, "2026-01-01T00:00:00Z", 2), "2026-01-01T01:00:00Z 2026-01-01T02:00:00Z")
  t.eq(runs("0 0 */1 * 1", nil, "2026-01-01T00:00:00Z", 2), "2026-01-05T00:00:00Z 2026-01-12T00:00:00Z",
    "*/1 is *: Mondays only, not the either-day rule")
  t.eq(runs("0 0 1 * */1", nil, "2026-01-02T00:00:00Z", 1), "2026-02-01T00:00:00Z", "the 1st only")
  t.eq(runs("@weekly", nil, "2026-01-01T00:00:00Z", 1), "2026-01-04T00:00:00Z")
  t.eq(runs("@yearly", nil, "2026-06-01T00:00:00Z", 1), "2027-01-01T00:00:00Z")
  t.eq(runs("@monthly", nil, "2026-01-31T10:00:00Z", 1), "2026-02-01T00:00:00Z")
  t.eq(runs("0 2 * * *", "Asia/Kolkata", "2026-01-01T00:00:00Z", 1), "2026-01-01T20:30:00Z", "02:00 IST")
  local s = assert(cron.parse("0 * * * *"))
  t.eq(F(s:last(P("2026-05-05T10:59:00Z"))), "2026-05-05T10:00:00Z")
  t.eq(F(s:last(P("2026-05-05T10:00:00Z"))), "2026-05-05T10:00:00Z", "a run at t is in (since, t]")
  t.eq(s:last(P("2026-05-05T10:30:00Z"), P("2026-05-05T10:00:00Z")), nil, "none after since")
  local y = assert(cron.parse("@yearly"))
  t.eq(F(y:last(P("2026-12-31T00:00:00Z"))), "2026-01-01T00:00:00Z", "a year back")
end)

t.test("cron: daylight saving — the gap skips, the fold runs once (twice for every-hour schedules)", function()
  local daily = assert(cron.parse("30 2 * * *", "Europe/Berlin"))
  -- 2026-03-29 02:30 does not exist in Berlin
  local x = daily:next(P("2026-03-28T02:00:00Z"))
  t.eq(F(x), "2026-03-30T00:30:00Z", "the gap's day has no run")
  x = daily:next(P("2026-10-24T02:00:00Z"))
  t.eq(F(x), "2026-10-25T00:30:00Z", "the fold's first 02:30")
  t.eq(F(daily:next(x)), "2026-10-26T01:30:00Z", "and not its second")
  local hourly = assert(cron.parse("30 * * * *", "Europe/Berlin"))
  local seq, y = {}, P("2026-10-24T23:00:00Z")
  for _ = 1, 4 do
    y = hourly:next(y)
    seq[#seq + 1] = F(y)
  end
  t.eq(table.concat(seq, " "), "2026-10-24T23:30:00Z 2026-10-25T00:30:00Z 2026-10-25T01:30:00Z 2026-10-25T02:30:00Z",
    "every hour, the fold's two 02:30s included")
  -- a two-hour fold (Antarctica/Troll goes from +02 to +00): every hour still runs
  local troll = assert(cron.parse("0 * * * *", "Antarctica/Troll"))
  local u, list = P("2026-10-24T23:00:00Z"), {}
  for _ = 1, 4 do u = troll:next(u) list[#list + 1] = F(u) end
  t.eq(table.concat(list, " "), "2026-10-25T00:00:00Z 2026-10-25T01:00:00Z 2026-10-25T02:00:00Z 2026-10-25T03:00:00Z")
end)

t.test("cron: errors name the field and the value", function()
  local cases = {
    { "", "empty" },
    { "* * * *", "has 4 fields" },
    { "61 * * * *", "the minute field \"61\": 61 is out of range 0-59" },
    { "* 24 * * *", "the hour field \"24\": 24 is out of range 0-23" },
    { "* * 0 * *", "the day of month field \"0\"" },
    { "* * * 13 *", "the month field \"13\"" },
    { "* * * FOO *", "the month field \"FOO\": \"FOO\" is not a value" },
    { "* * * * 8", "the day of week field \"8\"" },
    { "*/0 * * * *", "step \"0\" is not a whole number above 0" },
    { "5-1 * * * *", "the range \"5-1\" runs backwards" },
    { "1,,2 * * * *", "an empty list item" },
    { "@every 5m", "unknown macro" },
    { "CRON_TZ=UTC 0 * * * *", "set timeZone" },
    { "0 0 30 2 *", "never runs" },
    { string.rep("1 ", 200), "longer than 256" },
  }
  for _, c in ipairs(cases) do
    local s, err = cron.parse(c[1])
    t.ok(s == nil, c[1])
    t.contains(err or "", c[2], c[1])
  end
  local s, err = cron.parse("0 * * * *", "Mars/Olympus")
  t.ok(s == nil)
  t.contains(err, 'time zone "Mars/Olympus": unknown')
end)

-- ------------------------------------------------------------ retention

local UTC = assert(tz.zone("UTC"))

local function kept(d)
  local names = {}
  for name, x in pairs(d) do if x.keep then names[#names + 1] = name end end
  table.sort(names)
  return table.concat(names, " ")
end

t.test("retention: keepLast, buckets per period, the reasons kept and the rule that deletes", function()
  local snaps = {}
  local base = P("2026-03-01T00:00:00Z")
  for i = 0, 9 do
    snaps[#snaps + 1] = { name = ("d%d"):format(i), vm = "a", at = base + i * 86400 + 3600 * 23, phase = "Ready", consistent = true }
  end
  local d = retention.decide(snaps, { keepLast = 2, daily = 3 }, base + 10 * 86400, UTC)
  t.eq(kept(d), "d7 d8 d9")
  t.contains(table.concat(d.d9.why, ","), "last 1")
  t.contains(table.concat(d.d7.why, ","), "daily 2026-03-08")
  t.eq(d.d2.rule, "outside the policy (keepLast 2, daily 3)")
  -- weekly is ISO weeks: 2026-03-01 is a Sunday (week 9), 03-02 a Monday (week 10)
  d = retention.decide(snaps, { weekly = 3 }, base + 10 * 86400, UTC)
  t.eq(kept(d), "d0 d7 d9", "the newest of weeks 11, 10 and 9")
  t.eq(retention.period("weekly", P("2027-01-01T00:00:00Z")), "2026-W53")
  t.eq(retention.period("weekly", P("2026-12-28T00:00:00Z")), "2026-W53")
  t.eq(retention.period("weekly", P("2025-12-29T00:00:00Z")), "2026-W01")
  -- without rules nothing goes
  d = retention.decide(snaps, {}, base, UTC)
  t.eq(kept(d), "d0 d1 d2 d3 d4 d5 d6 d7 d8 d9")
end)

t.test("retention: inconsistent ones never fill a bucket; the newest consistent always stays; maxAge; protect", function()
  local base = P("2026-03-01T00:00:00Z")
  local snaps = {
    { name = "c1", vm = "a", at = base, phase = "Ready", consistent = true },
    { name = "i1", vm = "a", at = base + 3600, phase = "Ready", consistent = false },
    { name = "i2", vm = "a", at = base + 7200, phase = "Ready", consistent = false },
    { name = "f1", vm = "a", at = base + 3 * 3600, phase = "Failed" },
    { name = "p1", vm = "a", at = base + 4 * 3600, phase = "InProgress" },
    { name = "b1", vm = "b", at = base, phase = "Ready", consistent = true },
    { name = "b2", vm = "b", at = base + 3600, phase = "Ready", consistent = true },
  }
  local d = retention.decide(snaps, { keepLast = 1 }, base + 5 * 3600, UTC)
  t.eq(kept(d), "b2 c1 f1 i2 p1")
  t.eq(d.i1.rule, "inconsistent, and a newer snapshot exists (consistentOnly)")
  t.contains(table.concat(d.c1.why, ","), "last 1")
  t.contains(table.concat(d.i2.why, ","), "newest (inconsistent)")
  t.contains(table.concat(d.f1.why, ","), "last failure")
  t.contains(table.concat(d.p1.why, ","), "in progress")
  -- consistentOnly false: inconsistent ones count
  d = retention.decide(snaps, { keepLast = 1, consistentOnly = false }, base + 5 * 3600, UTC)
  t.eq(kept(d), "b2 c1 f1 i2 p1", "i2 is the last; c1 stays as the newest consistent")
  t.eq(d.c1.why[1], "newest consistent")
  -- maxAge: everything older goes but the newest consistent
  d = retention.decide({
    { name = "o1", vm = "a", at = base, phase = "Ready", consistent = true },
    { name = "o2", vm = "a", at = base + 86400, phase = "Ready", consistent = true },
    { name = "o3", vm = "a", at = base + 2 * 86400, phase = "Ready", consistent = true, protect = "in use by VirtualMachineRestore r1" },
  }, { keepLast = 10, maxAge = 3600, maxAgeText = "1h" }, base + 10 * 86400, UTC)
  t.eq(kept(d), "o3")
  t.eq(d.o2.rule, "older than maxAge 1h")
  local w = table.concat(d.o3.why, ",")
  t.contains(w, "newest consistent")
  t.contains(w, "in use by VirtualMachineRestore r1")
  -- a protected one stays whatever the policy says
  d = retention.decide({
    { name = "x1", vm = "a", at = base, phase = "Ready", consistent = true, protect = "in use by VirtualMachineRestore r" },
    { name = "x2", vm = "a", at = base + 60, phase = "Ready", consistent = true },
  }, { keepLast = 1 }, base + 120, UTC)
  t.eq(kept(d), "x1 x2")
end)

t.test("retention: maxAge alone keeps what is younger; a rule of 0 is no rule", function()
  local base = P("2026-03-01T00:00:00Z")
  local snaps = {}
  for i = 1, 5 do snaps[i] = { name = "h" .. i, vm = "a", at = base + i * 3600, phase = "Ready", consistent = true } end
  local d = retention.decide(snaps, { maxAge = 3 * 3600, maxAgeText = "3h" }, base + 6 * 3600, UTC)
  t.eq(kept(d), "h3 h4 h5", "younger than 3 h, and nothing else")
  t.eq(d.h4.why[1], "younger than maxAge")
  t.eq(d.h1.rule, "older than maxAge 3h")
  d = retention.decide(snaps, { daily = 0, keepLast = 0 }, base + 6 * 3600, UTC)
  t.eq(kept(d), "h1 h2 h3 h4 h5", "0 is no rule: nothing is deleted")
  t.ok(not retention.active({ keepLast = 0, hourly = 0 }))
  -- two failures newer than anything Ready: the newest stays, the other goes, and says why
  d = retention.decide({
    { name = "ok", vm = "a", at = base, phase = "Ready", consistent = true },
    { name = "f1", vm = "a", at = base + 60, phase = "Failed" },
    { name = "f2", vm = "a", at = base + 120, phase = "Failed" },
  }, { keepLast = 5 }, base + 200, UTC)
  t.eq(kept(d), "f2 ok")
  t.eq(d.f1.rule, "failed, and not the VM's newest snapshot")
end)

t.test("retention in a time zone: a day is the zone's day", function()
  local z = assert(tz.zone("Asia/Kolkata"))
  -- 19:00Z and 18:00Z on the same UTC day are two Kolkata days (00:30 and 23:30)
  local d = retention.decide({
    { name = "late", vm = "a", at = P("2026-05-01T19:00:00Z"), phase = "Ready", consistent = true },
    { name = "early", vm = "a", at = P("2026-05-01T18:00:00Z"), phase = "Ready", consistent = true },
  }, { daily = 2 }, P("2026-05-02T00:00:00Z"), z)
  t.eq(kept(d), "early late")
  t.contains(d.late.why[1], "daily 2026-05-02")
end)

t.test("the schedule workflow's spec check, and the pinned-snapshots example replacing its retention", function()
  local workflow = require("vmsnap.workflow")
  local h = require("helpers")
  local W = assert(workflow.load("snapshot-schedule"))
  local function sched(spec) return { metadata = { name = "s", namespace = "default" }, spec = spec } end
  t.ok(W.read_spec(sched({ schedule = "@daily", virtualMachineNames = { "a" } })))
  local _, err = W.read_spec(sched({ schedule = "@daily" }))
  t.contains(err, "set exactly one of virtualMachineSelector and virtualMachineNames")
  _, err = W.read_spec(sched({ schedule = "@daily", virtualMachineNames = { "a" }, retention = { maxAge = "0d" } }))
  t.contains(err, 'spec.retention.maxAge: "0d" is not a duration')
  _, err = W.read_spec(sched({ schedule = "@daily", virtualMachineSelector = { matchExpressions = {
    { key = "k", operator = "In" } } } }))
  t.contains(err, "k In needs values")
  t.eq(W.age("30d"), 30 * 86400)
  t.eq(W.age("1w3d"), 10 * 86400)
  t.eq(W.age("720h"), 720 * 3600)
  t.eq(W.age("soon"), nil)
  t.eq(W.snapshot_name(sched({}), "db", P("2027-03-01T01:30:00Z")), "s-db-20270301-0130")
  local a1 = W.snapshot_name(sched({}), "db", P("2027-03-01T01:30:07Z"), "2027-03-01T01:30:07Z/1")
  t.ok(a1:match("^s%-db%-20270301%-0130%-now%-%x%x%x%x%x%x%x%x$"), a1)
  t.eq(W.snapshot_name(sched({}), "db", P("2027-03-01T01:30:59Z"), "2027-03-01T01:30:07Z/1"), a1,
    "the same request, the same names (a pass repeated after a lost status write)")
  t.ok(W.snapshot_name(sched({}), "db", P("2027-03-01T01:30:07Z"), "2027-03-01T01:30:07Z/2") ~= a1, "another request")
  t.ok(#W.snapshot_name({ metadata = { name = string.rep("n", 200) } }, string.rep("v", 63), 0) <= 253)
  -- the worked example of docs/customizing.md, through the scripts path
  workflow.add_path(h.source .. "/scripts/examples/customizing")
  local X = assert(workflow.load("snapshot-schedule"))
  t.eq(#(X.extensions or {}), 1)
  local s = sched({ schedule = "@hourly", virtualMachineNames = { "a" }, retention = { keepLast = 1 } })
  local function snap(name, at, labels)
    return { metadata = { name = name, namespace = "default", labels = labels,
      annotations = { ["vmsnap.io/scheduled-at"] = at } }, spec = { virtualMachineName = "a" },
      status = { phase = "Ready", consistent = true } }
  end
  local facts = { spec = assert(X.read_spec(s)), now = P("2027-01-01T05:00:00Z"), restores = {}, snapshots = {
    snap("old", "2027-01-01T01:00:00Z", { ["vmsnap.io/pinned"] = "true" }),
    snap("mid", "2027-01-01T02:00:00Z"),
    snap("new", "2027-01-01T03:00:00Z") } }
  assert(X.steps:find("retention").run({}, s, facts))
  t.eq(facts.decisions.old.keep, true)
  t.eq(facts.decisions.old.why[1], "pinned")
  t.eq(facts.decisions.mid.keep, false)
  t.eq(facts.decisions.mid.rule, "outside the policy (keepLast 1)")
  t.eq(facts.decisions.new.keep, true)
end)

t.test("freeze slots: the caps, joins need none, and a fair order over schedules", function()
  local freezes = require("vmsnap.freezes")
  local guest = require("vmsnap.guest")
  freezes.reset_slots()
  local vms = {}
  local ctx = { list = function() return vms end }
  local function vm(name, frozen_drivers)
    local v = { metadata = { name = name, namespace = "default", annotations = {} } }
    if frozen_drivers then
      v.metadata.annotations[guest.LEASE] = json.encode({ holder = guest.holder(), at = 1,
        since = F(math.floor(vtime.now())), deadline = F(math.floor(vtime.now()) + 60), drivers = frozen_drivers })
    end
    vms[#vms + 1] = v
    return v
  end
  local function snap(name, sched, at, caps)
    local a = { ["vmsnap.io/scheduled-at"] = F(at) }
    for k, v in pairs(caps or {}) do a[k] = v end
    return { kind = "VirtualMachineSnapshot", metadata = { name = name, namespace = "default",
      labels = sched and { ["vmsnap.io/schedule"] = sched } or nil, annotations = a } }
  end
  local old = freezes.limits.frozen
  local old_d = freezes.limits.frozen_per_driver
  freezes.limits.frozen, freezes.limits.frozen_per_driver = 2, 0
  local _ <close> = setmetatable({}, { __close = function()
    freezes.limits.frozen, freezes.limits.frozen_per_driver = old, old_d
    freezes.reset_slots()
  end })
  local T = P("2027-01-01T00:00:00Z")
  vm("busy1", { "d" })
  -- one of two slots taken: schedule A's five waiters arrive first, B's one later
  local targets = {}
  for i = 1, 5 do targets["a" .. i] = vm("va" .. i) end
  targets.b1 = vm("vb1")
  local order = {}
  local function ask(name, sched, at)
    local ok, msg, code = freezes.slot(ctx, snap(name, sched, at), targets[name], { "d" })
    return ok, msg, code
  end
  for i = 1, 5 do ask("a" .. i, "A", T + i) end
  ask("b1", "B", T + 10)
  -- a slot is free: the head of the fair order takes it (a1); a2 waits behind b1
  local ok, msg, code = ask("a2", "A", T + 2)
  t.eq(ok, nil)
  t.eq(code, "QUEUED")
  t.contains(msg, "Waiting for a freeze slot: 2 of at most 2 guests frozen or next to freeze")
  ok = ask("a1", "A", T + 1)
  t.eq(ok, true, "the oldest of the first group")
  order[#order + 1] = "a1"
  -- a1's guest is frozen now (its lease); busy1 thaws: the next is B's first, not A's second
  vms[1].metadata.annotations = {}
  local a1 = targets.a1
  a1.metadata.annotations[guest.LEASE] = json.encode({ holder = guest.holder(), at = 2, since = F(math.floor(vtime.now())),
    deadline = F(math.floor(vtime.now()) + 60), drivers = { "d" } })
  t.eq(ask("a2", "A", T + 2), nil, "A's second waits")
  t.eq(ask("b1", "B", T + 10), true, "B's first goes before A's second")
  -- a VM frozen already is joined without a slot
  t.eq((freezes.slot(ctx, snap("j", nil, T), a1, { "d" })), true)
  -- per driver: with 1 per driver, a VM on another driver still goes
  freezes.reset_slots()
  freezes.limits.frozen, freezes.limits.frozen_per_driver = 10, 1
  local other = vm("other")
  local ok2, m2 = freezes.slot(ctx, snap("x", nil, T), vm("same"), { "d" })
  t.eq(ok2, nil)
  t.contains(m2, "guests with a disk on d frozen")
  t.eq((freezes.slot(ctx, snap("y", nil, T), other, { "e" })), true)
  -- a snapshot's own cap (a schedule's) is lower than the process's
  freezes.reset_slots()
  freezes.limits.frozen, freezes.limits.frozen_per_driver = 10, 0
  local ok3 = freezes.slot(ctx, snap("z", "S", T, { ["vmsnap.io/max-frozen"] = "1" }), vm("z1"), { "e" })
  t.eq(ok3, nil, "its own cap of 1, with guests frozen already")
  -- no cap at all: every request goes
  freezes.limits.frozen = 0
  t.eq((freezes.slot(ctx, snap("w", nil, T), vm("w1"), { "d" })), true)
end)

return t.done()
