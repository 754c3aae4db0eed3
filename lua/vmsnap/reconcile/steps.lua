--- vmsnap.reconcile.steps: workflows as declared steps.
---
--- A workflow declares its order of operations as data, and this engine
--- runs it, one pass at a time (docs/behaviour.md, Decision 10):
---
---     W.steps = steps.list{
---       { name = "gates",  phase = "Pending", run = W.gates },
---       { name = "freeze", when = W.needs_freeze, run = W.freeze, undo = W.thaw, hold = true },
---       { name = "cut",    run = W.wait_for_cut },
---       ...
---     }
---     function W.reconcile(ctx, obj) return steps.run(W, ctx, obj) end
---
--- Each pass runs the first unfinished step, and the ones after it for as
--- long as they finish. A step `run(ctx, obj, facts)` returns
---   true                            done: the next step runs in this pass
---   steps.pause(after)              done, but the pass ends here (the status is
---                                   written) and the next step runs `after` s later
---   steps.wait(reason, message, after)  not yet: the object shows why (phase
---                                   `step.phase`, default InProgress; the condition
---                                   `W.condition` False with reason and message);
---                                   looked at again on a change, or after `after` s
---   nil, message, code              failed: a transient code (vmsnap.errors) is
---                                   retried with back-off, any other ends the
---                                   workflow as Failed (reason `W.reasons[code]`
---                                   or `W.failed_reason`, a Warning Event
---                                   `W.events.failed`), once
--- Every phase change is logged at info (object, uid, from, to); a workflow
--- whose `W.events.phases[phase]` is `{reason, message}` (message: a string
--- or fn(obj) -> string) also records a Normal Event when it enters that
--- phase.
--- A step with `when = fn(ctx, obj, facts)` that returns false is skipped.
---
--- The finished steps are recorded in the annotation `vmsnap.io/steps`
--- (with `ctx.memo`, a small table a workflow keeps across passes), so a
--- restarted controller resumes at the first unfinished step. Steps must be
--- idempotent: a step that ran but was not recorded (a crash) runs again.
--- A workflow that ends (Ready or Failed) owing no undo, and whose record
--- owed none, is not recorded again: the record keeps its last pass in
--- progress (a terminal phase runs no step).
---
--- Undo works like `defer`: before a step with `undo` runs, the record says
--- its undo is owed; owed undos run in reverse step order when the workflow ends
--- (Ready, Failed or deleted), with the outcome ("Ready", "Failed",
--- "Deleted"). A step can end an undo early (`steps.release(ctx, "freeze")`,
--- the thaw at the cut) or drop it (`steps.forget`). A `hold` step (the
--- freeze) is also undone at once, with outcome "Retry", when a later step
--- of the same pass fails or the pass is cancelled: the guest is never held
--- while a pass waits out a back-off; the step runs again in a later pass.
local json = require("vmsnap.json")
local errors = require("vmsnap.errors")
local log = require("vmsnap.log")

local M = {}

M.ANNOTATION = "vmsnap.io/steps"

local slog = log.new("steps")

-- ------------------------------------------------------------ results

local Result = {}
Result.__index = Result

--- Not done yet: the object shows `reason` and `message`; look again after
--- `after` seconds (nil: when a watched object changes, and after
--- M.RECHECK seconds at the latest — an event lost on the way costs no more).
---@param reason string
---@param message string
---@param after? number
function M.wait(reason, message, after)
  return setmetatable({ kind = "wait", reason = reason, message = message, after = after }, Result)
end

--- Done, and end the pass here: the status is written now and the next
--- step runs in a pass `after` seconds later (default at once).
---@param after? number
function M.pause(after)
  return setmetatable({ kind = "pause", after = after or 0 }, Result)
end

function M.is_result(v) return getmetatable(v) == Result end

--- The longest a waiting object goes unlooked at (seconds).
M.RECHECK = 30

-- ------------------------------------------------------------ step lists

---@class vmsnap.reconcile.Step
---@field name string
---@field run fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): any
---@field undo? fun(ctx: vmsnap.reconcile.Context, obj: table, outcome: string, facts: table): any
---@field when? fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): boolean
---@field hold? boolean
---@field phase? string
---@field doc? string

local List = {}
List.__index = List

local function check_step(step, level)
  if type(step) ~= "table" or type(step.name) ~= "string" or type(step.run) ~= "function" then
    error("a step is a table with a name and a run function", level + 1)
  end
  if step.undo ~= nil and type(step.undo) ~= "function" then
    error(("step %q: undo must be a function"):format(step.name), level + 1)
  end
  return step
end

--- A list of steps, with the methods extensions use to change it.
---@param items vmsnap.reconcile.Step[]
function M.list(items)
  local l = setmetatable({}, List)
  local seen = {}
  for i, s in ipairs(items) do
    check_step(s, 2)
    if seen[s.name] then error(("two steps named %q"):format(s.name), 2) end
    seen[s.name] = true
    l[i] = s
  end
  return l
end

--- The index of the step named `name`, or nil.
function List:index(name)
  for i, s in ipairs(self) do if s.name == name then return i end end
end

--- The step named `name`, or nil.
function List:find(name)
  local i = self:index(name)
  return i and self[i]
end

local function must_index(self, name, what)
  local i = self:index(name)
  if not i then
    local names = {}
    for _, s in ipairs(self) do names[#names + 1] = s.name end
    error(("%s: no step named %q (steps: %s)"):format(what, tostring(name), table.concat(names, ", ")), 3)
  end
  return i
end

local function insert(self, i, step, what)
  check_step(step, 3)
  if self:index(step.name) then error(("%s: a step named %q exists already"):format(what, step.name), 3) end
  table.insert(self, i, step)
  return step
end

--- Insert a step before the one named `name`.
function List:before(name, step) return insert(self, must_index(self, name, "before"), step, "before") end

--- Insert a step after the one named `name`.
function List:after(name, step) return insert(self, must_index(self, name, "after") + 1, step, "after") end

--- Replace the run function of a step (or the whole step, given a table).
function List:replace(name, run)
  local i = must_index(self, name, "replace")
  if type(run) == "table" then
    check_step(run, 2)
    self[i] = run
  elseif type(run) == "function" then
    self[i].run = run
  else
    error("replace: a run function or a step table expected", 2)
  end
  return self[i]
end

--- Wrap a step's run: `fn(run, ctx, obj, facts)` is called instead, and
--- may call `run(ctx, obj, facts)`.
function List:wrap(name, fn)
  local step = self[must_index(self, name, "wrap")]
  local inner = step.run
  step.run = function(ctx, obj, facts) return fn(inner, ctx, obj, facts) end
  return step
end

--- Remove the step named `name`.
function List:remove(name)
  return table.remove(self, must_index(self, name, "remove"))
end

--- The steps as text, one line each: the order of operations.
function List:describe()
  local out = {}
  for i, s in ipairs(self) do
    local marks = {}
    if s.phase then marks[#marks + 1] = "phase " .. s.phase end
    if s.when then marks[#marks + 1] = "conditional" end
    if s.undo then marks[#marks + 1] = s.hold and "undo (held)" or "undo" end
    out[#out + 1] = ("%2d. %-18s %s%s"):format(i, s.name, s.doc or "",
      #marks > 0 and ("  [" .. table.concat(marks, ", ") .. "]") or "")
  end
  return table.concat(out, "\n")
end

-- ------------------------------------------------------------ the record

local function set_of(list)
  local s = {}
  for _, v in ipairs(type(list) == "table" and list or {}) do
    if type(v) == "string" then s[v] = true end
  end
  return s
end

-- the record kept on the object: done steps, owed undos (in the order they
-- became owed), memo
local function read_record(obj)
  local raw = obj.metadata.annotations and obj.metadata.annotations[M.ANNOTATION]
  local r = raw and json.decode(raw)
  if raw and type(r) ~= "table" then
    slog:warn("the steps record is not JSON: starting from the first step", { object = obj.metadata.name })
  end
  if type(r) ~= "table" then r = {} end
  local owed = {}
  for _, v in ipairs(type(r.owed) == "table" and r.owed or {}) do
    if type(v) == "string" then owed[#owed + 1] = v end
  end
  return { done = set_of(r.done), owed = owed, memo = type(r.memo) == "table" and r.memo or {}, raw = raw,
    owed_stored = #owed > 0 }
end

local function encode_record(W, rec)
  local done = json.array()
  for _, s in ipairs(W.steps) do if rec.done[s.name] then done[#done + 1] = s.name end end
  local owed = json.array()
  for _, n in ipairs(rec.owed) do owed[#owed + 1] = n end
  return json.encode({ done = done, owed = owed, memo = next(rec.memo) and rec.memo or nil })
end

-- write the record when it changed; true, or nil, message, code
-- The record is written after the status the steps made: the two are
-- separate writes (an annotation, the status subresource), and a record
-- that ran ahead of its status — a kill between the two — would say
-- "finish done" over a status still InProgress, forever. Behind it, the
-- steps of the lost record run again, which they must bear anyway.
-- A terminal object (Ready or Failed) that owes nothing and was recorded
-- owing nothing needs no new record: those phases run no step, and a pass
-- over them marks every step done itself (one write fewer per snapshot).
local function save(ctx)
  local st = ctx.steps
  local text = encode_record(st.W, st.rec)
  if text == st.rec.raw then return true end
  local phase = st.obj.status and st.obj.status.phase
  if (phase == "Ready" or phase == "Failed") and #st.rec.owed == 0 and not st.rec.owed_stored then
    return ctx:flush()
  end
  local ok, err, code = ctx:flush()
  if not ok then return nil, err, code end
  ok, err, code = ctx:annotate({ [M.ANNOTATION] = text })
  if not ok then return nil, err, code end
  st.rec.raw = text
  st.rec.owed_stored = #st.rec.owed > 0
  return true
end

local function is_owed(rec, name)
  for i, n in ipairs(rec.owed) do if n == name then return i end end
end

-- ------------------------------------------------------------ messages

--- "the disk ..." -> "The disk ..." (condition messages start with a capital)
function M.capitalize(s)
  s = tostring(s)
  return s:sub(1, 1):upper() .. s:sub(2)
end

--- Capitalised, with a final period.
function M.sentence(s)
  s = M.capitalize(s)
  if not s:find("%.$") then s = s .. "." end
  return s
end

-- a workflow function, whatever it raises: an error object with a code
-- (vmsnap.errors) is that failure; any other raise is a bug or an error
-- nobody classified: transient (retried), and logged with its traceback
local function call(fn, what, ctx, obj, ...)
  local ok, a, b, c = xpcall(fn, debug.traceback, ctx, obj, ...)
  if not ok then
    if errors.is_error(a) then return nil, tostring(a), errors.code_of(a) end
    slog:error("a workflow step raised", { object = obj.metadata.name, step = what, error = tostring(a) })
    return nil, tostring(a):match("^[^\n]*"), "ERROR"
  end
  return a, b, c
end

-- ------------------------------------------------------------ undo

local function undo_one(ctx, step, outcome)
  local st = ctx.steps
  local a, b, c = call(step.undo, step.name .. " (undo)", ctx, st.obj, outcome, st.facts)
  if a == nil and b ~= nil then return nil, b, c end
  local i = is_owed(st.rec, step.name)
  if i then table.remove(st.rec.owed, i) end
  return true
end

--- Run the owed undo of step `name` now (e.g. the thaw at the cut).
--- Returns true (also when nothing was owed), or nil, message, code.
---@param ctx vmsnap.reconcile.Context
---@param name string
---@param outcome? string   default "Released"
function M.release(ctx, name, outcome)
  local st = assert(ctx.steps, "steps.release: not in a steps pass")
  if not is_owed(st.rec, name) then return true end
  local step = st.W.steps:find(name)
  if not step or not step.undo then
    table.remove(st.rec.owed, is_owed(st.rec, name))
    return true
  end
  local ok, err, code = undo_one(ctx, step, outcome or "Released")
  if not ok then return nil, err, code end
  return save(ctx)
end

--- The undo of step `name` is no longer owed (what the step did stays).
function M.forget(ctx, name)
  local st = assert(ctx.steps, "steps.forget: not in a steps pass")
  local i = is_owed(st.rec, name)
  if i then table.remove(st.rec.owed, i) end
end

--- Is the undo of step `name` owed (it started and was not undone)?
function M.owed(ctx, name)
  return ctx.steps ~= nil and is_owed(ctx.steps.rec, name) ~= nil
end

-- is a hold step owed (the guest held)?
local function holding(ctx)
  local st = ctx.steps
  for _, name in ipairs(st.rec.owed) do
    local step = st.W.steps:find(name)
    if step and step.hold then return true end
  end
  return false
end

-- run every owed undo, newest first; returns the first failure's message
local function unwind(ctx, outcome, only_held)
  local st = ctx.steps
  local first_err, first_code
  for i = #st.rec.owed, 1, -1 do
    local name = st.rec.owed[i]
    local step = st.W.steps:find(name)
    if not only_held or (step and step.hold) then
      if step and step.undo then
        local ok, err, code = undo_one(ctx, step, outcome)
        if not ok then
          slog:warn("an undo failed", { object = st.obj.metadata.name, step = name, error = err })
          first_err, first_code = first_err or err, first_code or code
        elseif only_held then
          st.rec.done[name] = nil -- taken again by a later pass
        end
      else
        table.remove(st.rec.owed, i)
      end
    end
  end
  return first_err, first_code
end

-- ------------------------------------------------------------ the pass

local function set_failed(W, ctx, obj, message, code)
  local st = obj.status
  -- condition messages start with a capital; most end with a period (the
  -- disk snapshot's, in the reference, do not gain one)
  local msg = W.message_style == "capitalize" and M.capitalize(message) or M.sentence(message)
  local reason = (W.reasons and code and W.reasons[code]) or W.failed_reason or "Failed"
  st.phase = "Failed"
  ctx:condition(W.condition, "False", reason, msg)
  if W.events and W.events.failed then ctx:event("Warning", W.events.failed, msg) end
  slog:warn("failed", { object = obj.metadata.namespace .. "/" .. obj.metadata.name, uid = obj.metadata.uid,
    kind = W.kind, reason = reason, message = msg })
  -- the undo of every started step, newest first; a failing undo is named
  -- in front of the message (the reference's "<error>, <message>")
  local uerr = unwind(ctx, "Failed")
  if uerr and not msg:lower():find(tostring(uerr):lower(), 1, true) then
    ctx:condition(W.condition, "False", reason, ("%s, %s"):format(tostring(uerr), msg))
  end
  if W.on_failed then W.on_failed(ctx, obj, message, code) end
end

--- End the workflow as Failed now (from a step or W.observe): condition,
--- Warning Event, the owed undos. Returns true (a reconcile result).
function M.fail(ctx, message, code)
  local st = assert(ctx.steps, "steps.fail: not in a steps pass")
  set_failed(st.W, ctx, st.obj, message, code)
  return true
end

local function condition_of(obj, ctype)
  for _, c in ipairs(obj.status and obj.status.conditions or {}) do
    if c.type == ctype then return c end
  end
end

local function show_wait(W, ctx, obj, step, r)
  local prev = condition_of(obj, W.condition)
  local changed = not prev or prev.status ~= "False" or prev.reason ~= r.reason or prev.message ~= r.message
  obj.status.phase = step.phase or "InProgress"
  ctx:condition(W.condition, "False", r.reason, r.message)
  local ev = W.events and W.events.wait
  if type(ev) == "table" then ev = ev[obj.status.phase] end
  if changed and ev then ctx:event("Normal", ev, r.message) end
  ctx:requeue_after(r.after or M.RECHECK)
end


-- the steps from the first unfinished one on
local function run_steps(W, ctx, obj, facts)
  local st = ctx.steps
  local rec = st.rec
  -- a pass cancelled while it holds a step (the process stops) gives it back
  local cancel_guard <close> = setmetatable({}, { __close = function(_, err)
    if err ~= nil and holding(ctx) then
      unwind(ctx, "Retry", true)
      pcall(save, ctx)
    end
  end })
  for _, step in ipairs(W.steps) do
    if not rec.done[step.name] then
      if step.when and not step.when(ctx, obj, facts) then
        rec.done[step.name] = true
      else
        if step.undo and not is_owed(rec, step.name) then
          -- write-ahead: owed before it starts, in the order of the steps (a
          -- step taken again after a give-back keeps its place)
          local at = #rec.owed + 1
          for i, n in ipairs(rec.owed) do
            local oi = W.steps:index(n)
            if oi and oi > W.steps:index(step.name) then at = i break end
          end
          table.insert(rec.owed, at, step.name)
          local ok, err, code = save(ctx)
          if not ok then return nil, err, code end
        end
        local r, msg, code = call(step.run, step.name, ctx, obj, facts)
        if r == true or (M.is_result(r) and r.kind == "pause") then
          rec.done[step.name] = true
          if r ~= true then
            local ok, err, scode = save(ctx)
            if not ok then return nil, err, scode end
            return { requeue_after = r.after }
          end
        elseif M.is_result(r) and r.kind == "wait" then
          show_wait(W, ctx, obj, step, r)
          return save(ctx)
        elseif obj.status.phase == "Failed" then
          return save(ctx) -- the step failed the workflow itself (steps.fail)
        elseif r == nil and errors.is_transient(code) then
          -- retried with back-off; a held step is given back at once, and says why
          if holding(ctx) and unwind(ctx, "Retry", true) == nil then
            local c = condition_of(obj, W.condition)
            ctx:condition(W.condition, "False", c and c.reason or "Retrying",
              M.sentence(("%s: the guest was thawed; retrying"):format(tostring(msg))))
          end
          save(ctx)
          return nil, msg, code
        elseif r == nil then
          set_failed(W, ctx, obj, msg, code)
          return save(ctx)
        else
          error(("step %q of %s returned %s: expected true, steps.wait(), steps.pause() or nil, message, code")
            :format(step.name, W.kind, tostring(r)), 0)
        end
      end
    end
  end
  -- every step done: the undos still owed run now (defer)
  unwind(ctx, obj.status.phase or "Ready")
  return save(ctx)
end

--- One pass of workflow W over obj (W.reconcile). W declares: kind, steps,
--- condition (the main condition type), failed_reason, reasons (code ->
--- condition reason), events ({wait =, failed =}), and optionally observe
--- (ctx, obj) -> facts (every pass, before the steps; nil, message, code
--- fails), ready(ctx, obj, facts) (every pass while Ready; nil, message,
--- code fails, e.g. a lost volume snapshot), on_failed(ctx, obj, message, code).
-- the pass changed the phase (and its status went out): a line, and the Event
-- the workflow names for the new phase
local function phase_changed(W, ctx, obj, was)
  local st = obj.status
  slog:info("phase", { object = obj.metadata.namespace .. "/" .. obj.metadata.name, uid = obj.metadata.uid,
    kind = W.kind, from = was or "", to = st.phase })
  local ev = W.events and W.events.phases and W.events.phases[st.phase]
  if ev then
    local msg = ev[2]
    if type(msg) == "function" then msg = msg(obj) end
    ctx:event("Normal", ev[1], msg or "")
  end
end

function M.run(W, ctx, obj)
  obj.status = obj.status or {}
  local st = obj.status
  local was = st.phase
  ctx.steps = { W = W, obj = obj, rec = read_record(obj) }
  ctx.memo = ctx.steps.rec.memo
  local facts, ferr, fcode = {}, nil, nil
  if W.observe then facts, ferr, fcode = call(W.observe, "observe", ctx, obj) end
  ctx.steps.facts = facts or {}
  local res, err, code
  if (st.phase or "") == "" then st.phase = "Pending" end
  -- the status this pass writes is of this generation (set first, so that
  -- it goes out with the pass's first write, not in a write of its own)
  st.observedGeneration = obj.metadata.generation
  if st.phase == "Failed" then
    -- terminal: the condition stays as it was; undos a crash left owed run now
    local c = ctx:get_condition(W.condition)
    ctx:condition(W.condition, "False", c and c.reason or W.failed_reason, c and c.message or "")
    if #ctx.steps.rec.owed > 0 then unwind(ctx, "Failed") end
    res, err, code = save(ctx)
  elseif not facts then
    if errors.is_transient(fcode) then return nil, ferr, fcode end
    set_failed(W, ctx, obj, ferr, fcode)
    res, err, code = save(ctx)
  elseif st.phase == "Ready" then
    -- a record left behind its status (the status went out in a failed
    -- pass, the record's own write did not): every step is done, and the
    -- undos still owed run now
    local rec = ctx.steps.rec
    for _, step in ipairs(W.steps) do rec.done[step.name] = true end
    if #rec.owed > 0 then unwind(ctx, "Ready") end
    if W.ready then
      local ok, rerr, rcode = call(W.ready, "ready", ctx, obj, facts)
      if not ok then
        if errors.is_transient(rcode) then return nil, rerr, rcode end
        set_failed(W, ctx, obj, rerr, rcode)
      end
    end
    res, err, code = save(ctx)
  else
    res, err, code = run_steps(W, ctx, obj, facts)
  end
  if res and st.phase ~= was then phase_changed(W, ctx, obj, was) end
  if res and (st.phase == "Failed" or st.phase == "Ready") and #ctx.steps.rec.owed > 0 then
    -- terminal with an undo that failed (the thaw's write lost, say): the
    -- status stands, and the pass is retried until the undo is done — a
    -- terminal object is otherwise not looked at again
    return nil, ("an undo is still owed: %s"):format(table.concat(ctx.steps.rec.owed, ", ")), "UNDO_OWED"
  end
  return res, err, code
end

--- Deletion (the workflow's finalizer): the owed undos, newest first, with
--- outcome "Deleted", then W.cleanup(ctx, obj) if any. Returns true when
--- the finalizer may go, or nil, message, code (retried).
function M.finalize(W, ctx, obj)
  obj.status = obj.status or {}
  ctx.steps = { W = W, obj = obj, rec = read_record(obj) }
  ctx.memo = ctx.steps.rec.memo
  local facts, ferr, fcode = {}, nil, nil
  if W.observe then facts, ferr, fcode = call(W.observe, "observe", ctx, obj) end
  if not facts then
    if errors.is_transient(fcode) then return nil, ferr, fcode end
    facts = {} -- what is gone does not keep the finalizer
  end
  ctx.steps.facts = facts
  local err, code = unwind(ctx, "Deleted")
  save(ctx)
  if err then return nil, err, code end
  if W.cleanup then
    local ok, cerr, ccode = call(W.cleanup, "cleanup", ctx, obj, facts)
    if not ok then return nil, cerr, ccode end
  end
  return true
end

return M
