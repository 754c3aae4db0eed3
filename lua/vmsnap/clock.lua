--- vmsnap.clock: the schedule controller's "now", which a test may set
--- (docs/schedules.md "A fake clock").
---
--- By default it is the wall clock. With `--fake-clock NAMESPACE/NAME` (or
--- $VMSNAP_FAKE_CLOCK) it is the RFC 3339 time in `data.now` of that
--- ConfigMap, watched: whoever updates the ConfigMap moves the clock, and
--- every listener (the schedule controller requeues its schedules) hears it.
---
--- What the fake clock moves, and what it does not: it moves when the
--- schedules run (cron times, the starting deadline, the catch-up after
--- downtime), the ages retention judges (the snapshots' `vmsnap.io/scheduled-at`),
--- and the times the schedule writes into its status and its snapshots. It
--- does not move timers, the API server's timestamps (creationTimestamp,
--- Events, Leases), freeze budgets, or anything in the snapshot workflows.
local vtime = require("vmsnap.time")
local log = require("vmsnap.log")

local M = {}

local fake        -- seconds, when a fake clock is set
local source      -- "ns/name"
local listeners = setmetatable({}, { __mode = "k" })

--- Now, in seconds since the epoch (the fake clock's when one is set).
function M.now()
  if source then return fake end
  return vtime.now()
end

--- Is the clock a fake one (whose time only moves when told)?
function M.is_fake() return source ~= nil end

--- Call fn(now) whenever the fake clock moves (weakly held: keep fn alive).
function M.on_change(fn) listeners[fn] = true end

--- Parse "NAMESPACE/NAME" of a fake clock's ConfigMap; nil, message otherwise.
function M.parse_source(s)
  local ns, name = tostring(s or ""):match("^([a-z0-9][-a-z0-9]*)/([a-z0-9][-a-z0-9.]*)$")
  if not ns then return nil, ("%q is not NAMESPACE/NAME of a ConfigMap"):format(tostring(s)) end
  return ns, name
end

--- Follow the ConfigMap `spec` ("ns/name") through `client`: until it holds a
--- valid `data.now` the clock stands at 0 (the schedule controller waits). Returns
--- the informer (stop() it), or nil, message.
function M.follow(client, spec)
  local ns, name = M.parse_source(spec)
  if not ns then return nil, "fake clock: " .. name end
  source, fake = spec, 0
  local inf = client:informer("configmaps", { namespace = ns, field_selector = "metadata.name=" .. name })
  local clog = log.new("clock")
  inf:on(function(etype, cm)
    if etype == "DELETED" then return end
    local t = vtime.parse(cm.data and cm.data.now)
    if not t then
      clog:warn("the fake clock's ConfigMap has no valid data.now", { configmap = spec })
      return
    end
    if t ~= fake then
      fake = t
      for fn in pairs(listeners) do fn(t) end
    end
  end)
  inf:start()
  return inf
end

return M
