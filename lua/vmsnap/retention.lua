--- vmsnap.retention: which of a schedule's snapshots to keep, and why
--- (docs/schedules.md "Retention"). A pure function of the snapshots, the
--- policy and the time: the schedule workflow's `retention` step calls it,
--- `vmsnap schedule prune --dry-run` prints it, a user's own step may
--- replace it.
---
---     local d = retention.decide(snapshots, policy, now, zone)
---     d["s1"] --> { keep = true, why = { "newest consistent", "daily 2026-05-03" } }
---     d["s2"] --> { keep = false, rule = "outside the policy (hourly 24, daily 7)" }
---
--- A snapshot is {name, vm, at (seconds: when it was scheduled), phase,
--- consistent, protect? (a reason it must stay)}. The policy:
--- {keepLast?, hourly?, daily?, weekly?, monthly?, yearly?, maxAge? (seconds),
--- consistentOnly? (default true)}.
local tz = require("vmsnap.tz")

local M = {}

M.BUCKETS = { "hourly", "daily", "weekly", "monthly", "yearly" }

-- the period of a bucket kind a wall time falls in (memoized: a schedule
-- judges the same snapshots at every pass)
local memo, memo_n = {}, 0
local period_of
local function period(kind, wall)
  local m = memo[kind]
  if not m then m = {} memo[kind] = m end
  local p = m[wall]
  if not p then
    if memo_n >= 200000 then memo, memo_n = {}, 0 m = {} memo[kind] = m end -- bounded: a long-running controller
    p = period_of(kind, wall)
    m[wall], memo_n = p, memo_n + 1
  end
  return p
end
function period_of(kind, wall)
  local f = tz.fields(wall)
  if kind == "hourly" then return ("%04d-%02d-%02dT%02d"):format(f.year, f.month, f.day, f.hour) end
  if kind == "daily" then return ("%04d-%02d-%02d"):format(f.year, f.month, f.day) end
  if kind == "monthly" then return ("%04d-%02d"):format(f.year, f.month) end
  if kind == "yearly" then return ("%04d"):format(f.year) end
  -- ISO 8601 week: the week (Monday first) belongs to the year of its Thursday
  local day = wall // 86400
  local isowd = f.wday == 0 and 7 or f.wday
  local thursday = day + 4 - isowd
  local ty = tz.civil_from_days(thursday)
  local week = (thursday - tz.days_from_civil(ty, 1, 1)) // 7 + 1
  return ("%04d-W%02d"):format(ty, week)
end
M.period = period

--- Does the policy delete anything at all (some rule is set)?
function M.active(policy)
  if not policy then return false end
  if (policy.keepLast or 0) > 0 or policy.maxAge then return true end
  for _, b in ipairs(M.BUCKETS) do if (policy[b] or 0) > 0 then return true end end
  return false
end

-- is any rule other than maxAge set (one that chooses what to keep)?
local function chooses(policy)
  if (policy.keepLast or 0) > 0 then return true end
  for _, b in ipairs(M.BUCKETS) do if (policy[b] or 0) > 0 then return true end end
  return false
end

--- The policy in words: "keepLast 3, hourly 24, daily 7, maxAge 30d".
function M.describe(policy)
  local parts = {}
  if (policy.keepLast or 0) > 0 then parts[#parts + 1] = "keepLast " .. policy.keepLast end
  for _, b in ipairs(M.BUCKETS) do
    if (policy[b] or 0) > 0 then parts[#parts + 1] = b .. " " .. policy[b] end
  end
  if policy.maxAge then parts[#parts + 1] = "maxAge " .. (policy.maxAgeText or (policy.maxAge .. "s")) end
  return table.concat(parts, ", ")
end

local function newest_first(a, b)
  if a.at ~= b.at then return a.at > b.at end
  return a.name > b.name
end

-- the decisions for one VM's snapshots (sorted newest first)
local function decide_vm(list, policy, now, zone, out)
  local only_consistent = policy.consistentOnly ~= false
  local keep = {}
  local function why(s, reason)
    keep[s] = keep[s] or {}
    table.insert(keep[s], reason)
  end
  local counted, newest_consistent, newest_ready, newest_counted = {}, nil, nil, nil
  for _, s in ipairs(list) do
    if s.phase == "Ready" then
      newest_ready = newest_ready or s
      if s.consistent then newest_consistent = newest_consistent or s end
      if s.consistent or not only_consistent then
        counted[#counted + 1] = s
        newest_counted = newest_counted or s
      end
    end
  end
  -- the rules that choose among the counted snapshots
  local ruled = {}
  for i = 1, math.min(policy.keepLast or 0, #counted) do
    ruled[counted[i]] = ruled[counted[i]] or {}
    table.insert(ruled[counted[i]], "last " .. i)
  end
  local walls = {}
  for i, s in ipairs(counted) do walls[i] = zone:wall(s.at) end
  for _, b in ipairs(M.BUCKETS) do
    local n = policy[b]
    if n and n > 0 then
      local seen, taken = {}, 0
      for i, s in ipairs(counted) do
        local p = period(b, walls[i])
        if not seen[p] then
          if taken >= n then break end
          seen[p], taken = true, taken + 1
          ruled[s] = ruled[s] or {}
          table.insert(ruled[s], b .. " " .. p)
        end
      end
    end
  end
  -- maxAge alone keeps every counted snapshot until it is too old
  if not chooses(policy) then
    for _, s in ipairs(counted) do ruled[s] = { "younger than maxAge" } end
  end
  local too_old = {}
  for _, s in ipairs(counted) do
    if ruled[s] then
      if policy.maxAge and now - s.at > policy.maxAge then
        too_old[s] = true
      else
        for _, r in ipairs(ruled[s]) do why(s, r) end
      end
    end
  end
  -- what no rule deletes
  if newest_consistent then why(newest_consistent, "newest consistent") end
  for _, s in ipairs(list) do
    if s.protect then why(s, s.protect) end
    if s.phase ~= "Ready" and s.phase ~= "Failed" then why(s, "in progress") end
  end
  -- an uncounted Ready one newer than every counted one is the VM's latest state
  if newest_ready and newest_ready ~= newest_counted and not newest_ready.consistent
    and (not newest_counted or newest_ready.at > newest_counted.at) then
    why(newest_ready, "newest (inconsistent)")
  end
  -- the newest failure, when nothing Ready came after it: why the last run failed
  for _, s in ipairs(list) do
    if s.phase == "Failed" then
      if not newest_ready or s.at > newest_ready.at then why(s, "last failure") end
      break
    end
  end
  local desc = M.describe(policy)
  for _, s in ipairs(list) do
    if keep[s] then
      out[s.name] = { keep = true, why = keep[s], vm = s.vm, at = s.at }
    else
      local rule
      if s.phase == "Failed" then
        rule = "failed, and not the VM's newest snapshot"
      elseif s.phase == "Ready" and only_consistent and not s.consistent then
        rule = "inconsistent, and a newer snapshot exists (consistentOnly)"
      elseif too_old[s] then
        rule = ("older than maxAge %s"):format(policy.maxAgeText or (policy.maxAge .. "s"))
      else
        rule = ("outside the policy (%s)"):format(desc)
      end
      out[s.name] = { keep = false, rule = rule, vm = s.vm, at = s.at }
    end
  end
end

--- Decide for every snapshot. `zone` is a vmsnap.tz zone (default UTC):
--- the periods are its calendar's. Without any rule in the policy every
--- snapshot is kept ("no retention policy").
function M.decide(snapshots, policy, now, zone)
  zone = zone or tz.zone("UTC")
  local out = {}
  if not M.active(policy) then
    for _, s in ipairs(snapshots) do out[s.name] = { keep = true, why = { "no retention policy" }, vm = s.vm, at = s.at } end
    return out
  end
  local by_vm, vms = {}, {}
  for _, s in ipairs(snapshots) do
    if not by_vm[s.vm] then by_vm[s.vm] = {} vms[#vms + 1] = s.vm end
    table.insert(by_vm[s.vm], s)
  end
  for _, vm in ipairs(vms) do
    table.sort(by_vm[vm], newest_first)
    decide_vm(by_vm[vm], policy, now, zone, out)
  end
  return out
end

return M
