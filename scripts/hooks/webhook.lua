-- hooks/webhook.lua: tell another system how a snapshot or restore ended.
--
-- POSTs a JSON document to params.url at post_snapshot and post_restore
-- (whatever the outcome) and at snapshot_failed / restore_failed:
--   {"event": "post_snapshot", "outcome": "Ready", "namespace": ..., "vm": ...,
--    "snapshot": ..., "restore": ..., "consistent": true}
-- params: url (required), headers (a table), timeout (seconds, 10).
-- A notifier failing does not fail the snapshot (post hooks continue).
--
--   vmsnap.io/hooks: '[{"name": "webhook", "params": {"url": "https://ops.example/hooks/vmsnap"}}]'
local http = require("vmsnap.http")
local json = require("vmsnap.json")

---@type vmsnap.hooks.Hook
local H = { timeout = 15 }

local function notify(event)
  ---@param ctx vmsnap.hooks.Context
  return function(ctx)
    local url = ctx.params.url
    if type(url) ~= "string" or url == "" then return nil, "params.url is required" end
    local obj = ctx.snapshot or ctx.restore
    local body = json.encode({ event = event, outcome = ctx.outcome,
      namespace = obj and obj.metadata.namespace, vm = ctx.vm and ctx.vm.metadata.name,
      snapshot = ctx.snapshot and ctx.snapshot.metadata.name, restore = ctx.restore and ctx.restore.metadata.name,
      consistent = ctx.snapshot and ctx.snapshot.status and ctx.snapshot.status.consistent or nil })
    local headers = { ["Content-Type"] = "application/json" }
    for k, v in pairs(ctx.params.headers or {}) do headers[k] = v end
    local r, err = http.post(url, body, { headers = headers, timeout = tonumber(ctx.params.timeout) or 10 })
    if not r then return nil, err end
    if r.status >= 300 then return nil, ("%s answered %d"):format(url, r.status) end
    ctx.log(("%s notified (%d)"):format(url, r.status))
  end
end

H.post_snapshot = notify("post_snapshot")
H.snapshot_failed = notify("snapshot_failed")
H.post_restore = notify("post_restore")
H.restore_failed = notify("restore_failed")
return H
