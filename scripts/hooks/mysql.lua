-- hooks/mysql.lua: MySQL / MariaDB inside the guest, quiesced across the freeze.
--
-- pre_freeze starts a client session in the guest that takes
-- FLUSH TABLES WITH READ LOCK (tables flushed, writes blocked) and then holds
-- it (SELECT SLEEP(hold)); the hook returns once the server shows that
-- session holding the lock. post_thaw kills the session, which releases the
-- lock. Should the controller die, the lock ends by itself after `hold`
-- seconds (keep it above the freeze budget).
--
--   vmsnap.io/hooks: '[{"name": "mysql", "params": {"socket": "/run/mysqld/mysqld.sock"}}]'
--
-- params: client ("mariadb"; or "mysql"), socket or host/port, user ("root"),
-- password (prefer a defaults file: defaults_file), hold (seconds, 120).
---@type vmsnap.hooks.Hook
local H = { timeout = { pre_freeze = 30, post_thaw = 30 }, params = { client = "mariadb", user = "root", hold = 120 } }

local MARK = "vmsnap_hook_lock"

-- the client's argv with the connection parameters
local function client(p, ...)
  local argv = { p.client }
  if p.defaults_file then argv[#argv + 1] = "--defaults-file=" .. p.defaults_file else argv[#argv + 1] = "--no-defaults" end
  if p.socket then argv[#argv + 1] = "--socket=" .. p.socket end
  if p.host then argv[#argv + 1] = "--host=" .. p.host end
  if p.port then argv[#argv + 1] = "--port=" .. tostring(p.port) end
  if p.user then argv[#argv + 1] = "--user=" .. p.user end
  if p.password then argv[#argv + 1] = "--password=" .. p.password end
  for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  return argv
end

-- the ids of the sessions holding our lock
local function holders(ctx)
  local r, err = ctx.guest:exec(client(ctx.params, "--batch", "--skip-column-names", "-e",
    ("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%%%s%%' AND INFO NOT LIKE '%%PROCESSLIST%%'"):format(MARK)))
  if not r then return nil, err end
  if r.exitcode ~= 0 then return nil, "cannot list the server's sessions: " .. (r.stderr:match("[^\n]*") or "") end
  local ids = {}
  for id in r.stdout:gmatch("%d+") do ids[#ids + 1] = id end
  return ids
end

---@param ctx vmsnap.hooks.Context
function H.pre_freeze(ctx)
  local p = ctx.params
  local session, err = ctx.guest:spawn(client(p, "-e",
    ("FLUSH TABLES WITH READ LOCK; SELECT SLEEP(%d) AS %s"):format(tonumber(p.hold) or 120, MARK)))
  if not session then return nil, err end
  -- the lock is held once the session sleeps (FLUSH ... came first)
  while true do
    local ids, herr = holders(ctx)
    if not ids then return nil, herr end
    if #ids > 0 then
      ctx.log(("tables flushed and locked (session %s)"):format(ids[1]))
      return
    end
    local st = session:status()
    if st and st.exited then
      return nil, ("the locking session ended: %s"):format((st.stderr ~= "" and st.stderr or st.stdout):match("[^\n]*"))
    end
  end
end

---@param ctx vmsnap.hooks.Context
function H.post_thaw(ctx)
  local ids, err = holders(ctx)
  if not ids then return nil, err end
  for _, id in ipairs(ids) do
    local r, kerr = ctx.guest:exec(client(ctx.params, "-e", "KILL " .. id))
    if not r then return nil, kerr end
    ctx.log(("lock released (session %s)"):format(id))
  end
end

return H
