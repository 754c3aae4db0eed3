--- vmsnap.time: the RFC 3339 timestamps of the Kubernetes API ("2026-11-24T04:01:47Z").
local tz = require("vmsnap.tz")

local M = {}

--- Seconds since the epoch of an RFC 3339 timestamp (UTC "Z" or an offset),
--- or nil when s is not one. Fractions of a second are dropped.
---@param s any
---@return integer?
function M.parse(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, se, rest = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  rest = rest:gsub("^%.%d+", "")
  local off = 0
  if rest ~= "Z" and rest ~= "z" then
    local sign, oh, om = rest:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "+" and 1 or -1)
  end
  local days = tz.days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se) - off
end

--- Wall-clock seconds since the epoch, with the fraction.
---@return number
function M.now()
  return require("vmsnap.core.runtime").wallclock()
end

--- The RFC 3339 text (UTC, seconds) of a time (default: now).
---@param t? integer
---@return string
function M.format(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t) --[[@as string]]
end

local UNIT = { h = 3600, m = 60, s = 1, ms = 0.001, us = 1e-6, ["µs"] = 1e-6, ns = 1e-9 }

--- Seconds of a Go duration ("30s", "1m30s", "500ms", "2h", "0"), as the
--- Kubernetes API writes them (unfreezeTimeout, latencies); nil otherwise.
---@param s any
---@return number?
function M.go_duration(s)
  if type(s) ~= "string" or s == "" then return nil end
  if s == "0" then return 0 end
  local total, pos = 0, 1
  while pos <= #s do
    local num, unit, e = s:match("^(%d+%.?%d*)(%a+)()", pos)
    if not num or not UNIT[unit] then
      -- "µ" is two bytes, not %a
      num, e = s:match("^(%d+%.?%d*)µs()", pos)
      if not num then return nil end
      unit = "µs"
    end
    total = total + tonumber(num) * UNIT[unit]
    pos = e
  end
  return total
end

--- Seconds of a duration on a command line: a Go duration ("90s", "2m",
--- "1h30m", "500ms") or a plain number of seconds ("30"); nil for anything
--- else (a negative duration, "abc", "5 s", "1d").
---@param s any
---@return number?
function M.duration(s)
  if type(s) == "number" then return s >= 0 and s or nil end
  if type(s) == "string" and s:match("^%d+%.?%d*$") then return tonumber(s) end
  return M.go_duration(s)
end

return M
