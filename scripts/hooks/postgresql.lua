-- hooks/postgresql.lua: PostgreSQL inside the guest, quiesced for the snapshot.
--
-- pre_freeze runs CHECKPOINT (the data files are written out, so recovery
-- from the snapshot replays little WAL) and, with params.backup = true (the
-- default), opens a session that calls pg_backup_start('vmsnap', fast) and
-- stays open (a non-exclusive backup lives as long as its session);
-- post_thaw ends that session, which ends the backup. The snapshot is then
-- also a valid base backup start point for tools that expect backup mode.
--
--   vmsnap.io/hooks: '[{"name": "postgresql", "params": {"user": "postgres"}}]'
--
-- params: psql ("psql"), user ("postgres"), database ("postgres"), host
-- (a socket directory or host), hold (seconds the backup session may stay, 120).
-- PostgreSQL older than 15 calls it pg_start_backup: set params.start_function.
---@type vmsnap.hooks.Hook
local H = { timeout = { pre_freeze = 60, post_thaw = 30 },
  params = { psql = "psql", user = "postgres", database = "postgres", hold = 120, backup = true,
    start_function = "pg_backup_start" } }

local APP = "vmsnap-hook"

local function psql(p, sql)
  local argv = { p.psql, "--no-psqlrc", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-U", p.user, "-d", p.database }
  if p.host then argv[#argv + 1] = "-h" argv[#argv + 1] = p.host end
  argv[#argv + 1] = "-c"
  argv[#argv + 1] = sql
  return argv
end

local function run(ctx, sql)
  local r, err = ctx.guest:exec(psql(ctx.params, sql), { env = { PGAPPNAME = APP .. "-ctl" } })
  if not r then return nil, err end
  if r.exitcode ~= 0 then return nil, (r.stderr:match("[^\n]*") or "psql failed") end
  return r.stdout
end

---@param ctx vmsnap.hooks.Context
function H.pre_freeze(ctx)
  local ok, err = run(ctx, "CHECKPOINT")
  if not ok then return nil, "CHECKPOINT: " .. err end
  ctx.log("checkpoint done")
  if not ctx.params.backup then return end
  local session, serr = ctx.guest:spawn(psql(ctx.params,
    ("SELECT %s('vmsnap', true); SELECT pg_sleep(%d)"):format(ctx.params.start_function, tonumber(ctx.params.hold) or 120)),
    { env = { PGAPPNAME = APP } })
  if not session then return nil, serr end
  while true do
    local n, qerr = run(ctx, ("SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
      .. "AND query LIKE '%%pg_sleep%%'"):format(APP))
    if not n then return nil, qerr end
    if tonumber(n) and tonumber(n) > 0 then
      ctx.log("backup mode started")
      return
    end
    local st = session:status()
    if st and st.exited then
      return nil, "the backup session ended: " .. ((st.stderr ~= "" and st.stderr or st.stdout):match("[^\n]*") or "")
    end
  end
end

---@param ctx vmsnap.hooks.Context
function H.post_thaw(ctx)
  if not ctx.params.backup then return end
  local out, err = run(ctx, ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '%s'"):format(APP))
  if not out then return nil, err end
  ctx.log("backup session ended")
end

return H
