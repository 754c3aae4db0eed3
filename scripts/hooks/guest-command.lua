-- hooks/guest-command.lua: run a command in the guest at any hook point.
--
-- Select it on a VM with parameters naming a command per point — a string
-- (run with /bin/sh -c) or an argv list:
--
--   vmsnap.io/hooks: '[{"name": "guest-command", "params": {
--       "pre_freeze": "sync && /usr/local/bin/app-quiesce",
--       "post_thaw": ["/usr/local/bin/app-resume", "--now"]}}]'
--
-- A command that exits non-zero fails the hook (a failing pre hook aborts the
-- snapshot; its post partner still runs). params.timeout bounds each command
-- (default: the hook's own timeout).
---@type vmsnap.hooks.Hook
local H = { timeout = 60 }

local POINTS = { "pre_snapshot", "pre_freeze", "post_freeze", "post_thaw", "post_snapshot", "snapshot_failed",
  "pre_restore", "post_restore", "restore_failed" }

local function command(point)
  ---@param ctx vmsnap.hooks.Context
  return function(ctx)
    local cmd = ctx.params[point]
    if cmd == nil then return end
    local argv
    if type(cmd) == "string" then
      argv = { "/bin/sh", "-c", cmd }
    else
      argv = {}
      for i, v in ipairs(cmd) do argv[i] = v end
    end
    local r, err = ctx.guest:exec(argv, { timeout = ctx.params.timeout })
    if not r then return nil, err end
    if r.exitcode ~= 0 then
      local why = (r.stderr ~= "" and r.stderr or r.stdout):match("[^\n]*")
      return nil, ("%s exited with %d%s"):format(argv[#argv > 2 and 3 or 1], r.exitcode, why ~= "" and (": " .. why) or "")
    end
  end
end

for _, p in ipairs(POINTS) do H[p] = command(p) end
return H
