--- vmsnap.cron: the standard 5-field cron schedule ("minute hour
--- day-of-month month day-of-week"), as crontab(5) and Kubernetes CronJobs
--- write it, in a time zone (vmsnap.tz).
---
---     local s = assert(cron.parse("30 2 * * 1-5", "Europe/Berlin"))
---     s:next(t)        --> the first run after instant t
---     s:last(t, since) --> the latest run in (since, t], or nil
---
--- Fields: `*`, `a`, `a-b`, `*/n`, `a-b/n`, `a/n` and lists of them; months
--- and weekdays also by name (JAN-DEC, SUN-SAT); weekday 7 is Sunday. When
--- both day fields are restricted a day matches either (crontab's rule).
--- Macros: @yearly (@annually), @monthly, @weekly, @daily (@midnight),
--- @hourly. Daylight saving: a local time in a spring-forward gap does not
--- run that day; a time in a fall-back fold runs once, at its first
--- occurrence — except that a schedule running every hour runs in both of
--- the fold's hours (docs/schedules.md).
local tz = require("vmsnap.tz")

local M = {}

local MACROS = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *", ["@hourly"] = "0 * * * *",
}

local FIELDS = {
  { name = "minute", lo = 0, hi = 59 },
  { name = "hour", lo = 0, hi = 23 },
  { name = "day of month", lo = 1, hi = 31 },
  { name = "month", lo = 1, hi = 12,
    names = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 } },
  { name = "day of week", lo = 0, hi = 7, names = { sun = 0, mon = 1, tue = 2, wed = 3, thu = 4, fri = 5, sat = 6 } },
}

local function value(f, s)
  if s:match("^%d+$") then return tonumber(s) end
  return f.names and f.names[s:lower()]
end

-- one field's set of values {[v] = true} and whether it is `*`
local function field(f, text)
  local set, any = {}, false
  for part in (text .. ","):gmatch("([^,]*),") do
    if part == "" then return nil, ("an empty list item in %q"):format(text) end
    local range, step = part:match("^([^/]+)/(.+)$")
    range = range or part
    local n = 1
    if step then
      n = step:match("^%d+$") and tonumber(step)
      if not n or n < 1 then return nil, ("step %q is not a whole number above 0"):format(step) end
    end
    local a, b
    if range == "*" then
      a, b = f.lo, f.hi
      if f.name == "day of week" then b = 6 end
      if not step or n == 1 then any = true end -- (*/1 is *)
    else
      local x, y = range:match("^([^-]+)-([^-]+)$")
      if x then
        a, b = value(f, x), value(f, y)
        if not a or not b then return nil, ("%q is not a value or a range"):format(range) end
      else
        a = value(f, range)
        if not a then return nil, ("%q is not a value"):format(range) end
        b = step and f.hi or a
      end
    end
    for _, v in ipairs({ a, b }) do
      if v < f.lo or v > f.hi then return nil, ("%d is out of range %d-%d"):format(v, f.lo, f.hi) end
    end
    if a > b then return nil, ("the range %q runs backwards"):format(range) end
    for v = a, b, n do set[f.name == "day of week" and v % 7 or v] = true end
  end
  return set, any
end

local function sorted(set, lo, hi)
  local l = {}
  for v = lo, hi do if set[v] then l[#l + 1] = v end end
  return l
end

local Schedule = {}
Schedule.__index = Schedule

local parsed, parsed_n = {}, 0 -- (text, zone) -> schedule: a controller parses each pass

--- Parse a schedule in a time zone (IANA name; nil or "" is UTC). Returns
--- the schedule, or nil and a message naming the field that is wrong.
--- (Cached: the same text and zone give the same schedule object.)
---@param text string
---@param zone? string
function M.parse(text, zone)
  local key = type(text) == "string" and (text .. "\0" .. tostring(zone or "")) or nil
  local hit = key and parsed[key]
  if hit then return hit end
  local s, err = M.parse_uncached(text, zone)
  if s and key then
    if parsed_n >= 1000 then parsed, parsed_n = {}, 0 end
    parsed[key], parsed_n = s, parsed_n + 1
  end
  return s, err
end

--- M.parse without its cache.
function M.parse_uncached(text, zone)
  if type(text) ~= "string" or text == "" then return nil, "the schedule is empty" end
  if #text > 256 then return nil, "the schedule is longer than 256 characters" end
  local src = text
  text = text:gsub("^%s+", ""):gsub("%s+$", "")
  if text:match("^C?R?O?N?_?TZ=") then
    return nil, "a time zone in the schedule text (CRON_TZ=, TZ=) is not accepted: set timeZone"
  end
  if text:sub(1, 1) == "@" then
    local m = MACROS[text:lower()]
    if not m then return nil, ("unknown macro %q (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)"):format(text) end
    text = m
  end
  local parts = {}
  for p in text:gmatch("%S+") do parts[#parts + 1] = p end
  if #parts ~= 5 then
    return nil, ("%q has %d fields; a schedule has 5: minute hour day-of-month month day-of-week"):format(src, #parts)
  end
  local z, zerr = tz.zone(zone)
  if not z then return nil, zerr end
  local s = setmetatable({ text = src, zone = z, sets = {}, any = {} }, Schedule)
  for i, f in ipairs(FIELDS) do
    local set, any = field(f, parts[i])
    if not set then return nil, ("the %s field %q: %s"):format(f.name, parts[i], any) end
    s.sets[i], s.any[i] = set, any
  end
  s.minutes = sorted(s.sets[1], 0, 59)
  s.hours = sorted(s.sets[2], 0, 23)
  s.every_hour = #s.hours == 24
  -- a schedule that can never run (30 February) is refused, not looped over
  local possible = false
  for m = 1, 12 do
    if s.sets[4][m] then
      for d = 1, tz.days_in_month(2024, m) do
        if s.sets[3][d] then possible = true end
      end
    end
  end
  if not possible and not s.any[5] and not s.any[3] then possible = true end -- a weekday rescues it
  if not possible then return nil, ("%q never runs: no month has that day"):format(src) end
  return s
end

-- does the day (civil fields) match the day fields and the month?
function Schedule:day_matches(f)
  if not self.sets[4][f.month] then return false end
  local dom, dow = self.sets[3][f.day], self.sets[5][f.wday]
  if self.any[3] or self.any[5] then
    return (self.any[3] or dom) and (self.any[5] or dow) and true or false
  end
  return dom or dow or false
end

--- The first run strictly after UTC instant t, or nil when none comes in
--- 8 years (a schedule such as "0 0 29 2 1" can wait that long).
function Schedule:next(t)
  local z = self.zone
  t = math.floor(t)
  -- from 3 hours before t's wall time: a fold's later hours (up to two in
  -- any zone) have walls before t's
  local start = (z:wall(t) - 3 * 3600) // 60 * 60
  local day0 = start // 86400
  local best, limit
  for day = day0, day0 + 366 * 8 + 2 do
    local base = day * 86400
    if limit and base > limit then break end
    local f = tz.fields(base)
    if self:day_matches(f) then
      for _, h in ipairs(self.hours) do
        for _, mi in ipairs(self.minutes) do
          local wall = base + h * 3600 + mi * 60
          if wall >= start and (not limit or wall <= limit) then
            local inst = z:instants(wall)
            local n = self.every_hour and #inst or math.min(#inst, 1)
            for i = 1, n do
              local u = inst[i]
              if u > t and (not best or u < best) then
                best = u
                -- a later wall may still be an earlier instant within a fold
                limit = limit or wall + 3 * 3600
              end
            end
            if limit and wall > limit then break end
          end
        end
      end
    end
  end
  return best
end

--- The latest run in (since, t] (since nil: any), or nil when there is none.
--- Looks back at most a year and a day further than `since` allows.
function Schedule:last(t, since)
  local found
  for _, back in ipairs({ 3600, 86400, 32 * 86400, 367 * 86400 }) do
    local from = t - back
    if since and from < since then from = since end
    local x = self:next(from)
    while x and x <= t do
      found = x
      x = self:next(x)
    end
    if found or (since and from <= since) then return found end
  end
  return found
end

return M
