--- vmsnap.tz: IANA time zones, read from the system's compiled zone files
--- (TZif, RFC 8536) and their POSIX TZ footer, for the schedules' cron
--- times. A zone answers two questions: the UTC offset at an instant, and
--- the instants a local wall-clock time names (none in a spring-forward gap,
--- two in a fall-back fold).
---
---     local z = assert(tz.zone("Europe/Berlin"))
---     z:offset(t)            --> 3600 or 7200
---     z:instants(wall)       --> { t } | { t1, t2 } | {}
---
--- "wall" is a local civil time written as seconds since the epoch as if
--- the zone were UTC (tz.civil gives one from a date).
local M = {}

M.DIR = "/usr/share/zoneinfo"

-- ------------------------------------------------------------ civil dates

--- Days since 1970-01-01 of a proleptic Gregorian date.
function M.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

--- The date of a day number: year, month, day, weekday (0 = Sunday).
function M.civil_from_days(z)
  local wd = (z + 4) % 7
  z = z + 719468
  local era = (z >= 0 and z or z - 146096) // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return y, m, d, wd
end

--- Wall seconds of a civil time.
function M.civil(y, mo, d, h, mi, s)
  return M.days_from_civil(y, mo, d) * 86400 + (h or 0) * 3600 + (mi or 0) * 60 + (s or 0)
end

--- The civil fields of wall seconds: {year, month, day, hour, min, sec, wday (0 = Sunday), yday (1-based)}.
function M.fields(wall)
  local days = wall // 86400
  local rem = wall - days * 86400
  local y, m, d, wd = M.civil_from_days(days)
  return { year = y, month = m, day = d, hour = rem // 3600, min = rem % 3600 // 60, sec = rem % 60, wday = wd,
    yday = days - M.days_from_civil(y, 1, 1) + 1 }
end

local function is_leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end
local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
function M.days_in_month(y, m) return m == 2 and is_leap(y) and 29 or MDAYS[m] end

-- ------------------------------------------------------------ POSIX TZ rules

-- "hh[:mm[:ss]]" with an optional sign, in seconds; and the rest
local function hms(s, pos)
  local sign, h, rest = s:match("^([+-]?)(%d%d?%d?)()", pos)
  if not h then return nil end
  local v, p = tonumber(h) * 3600, rest
  local mm, p2 = s:match("^:(%d%d)()", p)
  if mm then
    v, p = v + tonumber(mm) * 60, p2
    local ss, p3 = s:match("^:(%d%d)()", p)
    if ss then v, p = v + tonumber(ss), p3 end
  end
  return sign == "-" and -v or v, p
end

local function zname(s, pos)
  local q, p = s:match("^<([%w+-]+)>()", pos)
  if q then return q, p end
  return s:match("^(%a%a%a+)()", pos)
end

-- a rule date: Jn (1-365, no Feb 29), n (0-365), Mm.w.d; then [/time]
local function rule_date(s, pos)
  local r = {}
  local m, w, d, p = s:match("^M(%d%d?)%.(%d)%.(%d)()", pos)
  if m then
    r.kind, r.m, r.w, r.d = "M", tonumber(m), tonumber(w), tonumber(d)
  else
    local j, pj = s:match("^J(%d+)()", pos)
    if j then
      r.kind, r.n, p = "J", tonumber(j), pj
    else
      local n, pn = s:match("^(%d+)()", pos)
      if not n then return nil end
      r.kind, r.n, p = "n", tonumber(n), pn
    end
  end
  r.time = 7200
  if s:sub(p, p) == "/" then
    local t, pt = hms(s, p + 1)
    if not t then return nil end
    r.time, p = t, pt
  end
  return r, p
end

--- A POSIX TZ string ("CET-1CEST,M3.5.0,M10.5.0/3"): {std, dst?, start?, finish?} offsets east of UTC, or nil.
function M.posix(s)
  local std, p = zname(s, 1)
  if not std then return nil end
  local off
  off, p = hms(s, p)
  if not off then return nil end
  local r = { std_name = std, std = -off }
  if p > #s then return r end
  local dst
  dst, p = zname(s, p)
  if not dst then return nil end
  r.dst_name, r.dst = dst, r.std + 3600
  if p <= #s and s:sub(p, p) ~= "," then
    local doff
    doff, p = hms(s, p)
    if not doff then return nil end
    r.dst = -doff
  end
  if s:sub(p, p) ~= "," then return nil end
  r.start, p = rule_date(s, p + 1)
  if not r.start or s:sub(p, p) ~= "," then return nil end
  r.finish, p = rule_date(s, p + 1)
  if not r.finish or p <= #s then return nil end
  return r
end

-- the wall seconds (in the offset in force before it) a rule date names in year y
local function rule_wall(rd, y)
  local day
  if rd.kind == "J" then
    local n = rd.n
    day = M.days_from_civil(y, 1, 1) + n - 1
    if is_leap(y) and n >= 60 then day = day + 1 end
  elseif rd.kind == "n" then
    day = M.days_from_civil(y, 1, 1) + rd.n
  else
    local first = M.days_from_civil(y, rd.m, 1)
    local _, _, _, wd = M.civil_from_days(first)
    day = first + (rd.d - wd) % 7 + (rd.w - 1) * 7
    local last = first + M.days_in_month(y, rd.m) - 1
    while day > last do day = day - 7 end
  end
  return day * 86400 + rd.time
end

-- the offset a POSIX rule gives at UTC instant t
local function rule_offset(r, t)
  if not r.start then return r.std end
  local y = M.fields(t + r.std).year
  for _, yy in ipairs({ y - 1, y }) do
    -- DST from start (in standard time) to the next finish (in DST): in the
    -- same year north of the equator, in the next one south of it
    local b = rule_wall(r.start, yy) - r.std
    local e = rule_wall(r.finish, yy) - r.dst
    if e <= b then e = rule_wall(r.finish, yy + 1) - r.dst end
    if t >= b and t < e then return r.dst end
  end
  return r.std
end

-- ------------------------------------------------------------ TZif

local function be(s, pos, n, signed)
  local v = 0
  for i = 0, n - 1 do v = v * 256 + s:byte(pos + i) end
  if signed and v >= 2 ^ (8 * n - 1) then v = v - math.tointeger(2 ^ (8 * n)) end
  return math.tointeger(v) or v
end

--- Parse the bytes of a TZif file: {times = {t...}, offsets = {o...} (the offset from each time on),
--- first = offset before the first transition, rule = POSIX footer or nil}, or nil, message.
function M.parse_tzif(data)
  if type(data) ~= "string" or #data < 44 or data:sub(1, 4) ~= "TZif" then return nil, "not a TZif file" end
  local version = data:sub(5, 5)
  local function header(pos)
    if #data < pos + 43 or data:sub(pos, pos + 3) ~= "TZif" then return nil end
    local h = {}
    for i, k in ipairs({ "isut", "isstd", "leap", "time", "type", "char" }) do h[k] = be(data, pos + 20 + (i - 1) * 4, 4) end
    return h
  end
  local h = header(1)
  if not h or h.type == 0 then return nil, "a TZif header without types" end
  local pos, tsize = 45, 4
  if version >= "2" then
    pos = pos + h.time * 5 + h.type * 6 + h.char + h.leap * 8 + h.isstd + h.isut
    h = header(pos)
    if not h or h.type == 0 then return nil, "a TZif v2 header without types" end
    pos, tsize = pos + 44, 8
  end
  local need = h.time * (tsize + 1) + h.type * 6 + h.char + h.leap * (tsize + 4) + h.isstd + h.isut
  if #data < pos + need - 1 then return nil, "a truncated TZif file" end
  local times, idx, types = {}, {}, {}
  for i = 1, h.time do times[i] = be(data, pos + (i - 1) * tsize, tsize, true) end
  pos = pos + h.time * tsize
  for i = 1, h.time do idx[i] = data:byte(pos + i - 1) + 1 end
  pos = pos + h.time
  for i = 1, h.type do types[i] = be(data, pos + (i - 1) * 6, 4, true) end
  pos = pos + h.type * 6 + h.char + h.leap * (tsize + 4) + h.isstd + h.isut
  local z = { times = times, offsets = {}, first = types[1] }
  for i = 1, h.time do
    local o = types[idx[i]]
    if o == nil then return nil, "a TZif transition names a missing type" end
    z.offsets[i] = o
  end
  if version >= "2" then
    local footer = data:match("^\n([^\n]*)\n", pos)
    if footer and footer ~= "" then
      z.rule = M.posix(footer)
      if not z.rule then return nil, ("a TZif footer that is not a POSIX TZ rule: %q"):format(footer) end
    end
  end
  return z
end

local Zone = {}
Zone.__index = Zone

--- The offset east of UTC, in seconds, at UTC instant t.
function Zone:offset(t)
  local times = self.times
  local n = #times
  if n == 0 or t >= times[n] then -- past the table: its POSIX rule, or its last offset
    if self.rule then return rule_offset(self.rule, t) end
    return n == 0 and self.first or self.offsets[n]
  end
  if t < times[1] then return self.first end
  local lo, hi = 1, n -- times[lo] <= t < times[hi]
  while hi - lo > 1 do
    local mid = (lo + hi) // 2
    if times[mid] <= t then lo = mid else hi = mid end
  end
  return self.offsets[lo]
end

--- The UTC instants at which the zone's clocks show `wall`, earliest first:
--- one, two (a fold) or none (a gap).
function Zone:instants(wall)
  -- offsets lie within [-26 h, +26 h]: any instant naming `wall` is within that of it
  local seen, out = {}, {}
  for _, probe in ipairs({ wall - 93600, wall - 50400, wall - 7200, wall, wall + 7200, wall + 50400, wall + 93600 }) do
    local o = self:offset(probe)
    if not seen[o] then
      seen[o] = true
      local t = wall - o
      if self:offset(t) == o then out[#out + 1] = t end
    end
  end
  table.sort(out)
  return out
end

--- Wall seconds at UTC instant t.
function Zone:wall(t) return t + self:offset(t) end

local cache = {}

--- A zone by IANA name ("Europe/Berlin"; "" or "UTC" is UTC), from
--- $TZDIR or /usr/share/zoneinfo; or nil and a message naming it.
function M.zone(name)
  if name == nil or name == "" or name == "UTC" or name == "Etc/UTC" then
    return setmetatable({ name = "UTC", times = {}, offsets = {}, first = 0 }, Zone)
  end
  if type(name) ~= "string" or #name > 128 or not name:match("^[%w_+-][%w_+/-]*$") or name:find("..", 1, true) then
    return nil, ("time zone %q: not an IANA zone name (such as Europe/Berlin)"):format(tostring(name))
  end
  if name:match("^right/") then
    return nil, ("time zone %q: the right/ zones count leap seconds; use %s"):format(name, name:sub(7))
  end
  if cache[name] then return cache[name] end
  local path = (os.getenv("TZDIR") or M.DIR) .. "/" .. name
  local f = io.open(path, "rb")
  if not f then return nil, ("time zone %q: unknown (no %s)"):format(name, path) end
  local data = f:read(65536)
  f:close()
  local z, err = M.parse_tzif(data)
  if not z then return nil, ("time zone %q: %s: %s"):format(name, path, err) end
  z.name = name
  cache[name] = setmetatable(z, Zone)
  return cache[name]
end

return M
