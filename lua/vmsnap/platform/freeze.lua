--- vmsnap.platform.freeze: the VirtualMachine `freeze` and `unfreeze`
--- subresources of the local platform, served by the embedded API server
--- (`PUT /apis/subresources.virtualization.deckhouse.io/v1alpha2/namespaces/NS/virtualmachines/NAME/freeze`,
--- body `{"unfreezeTimeout": "30s"}`), done through the VM's guest agent (the
--- socket named by the annotation `vmsnap.io/agent`; the filesystems in
--- `vmsnap.io/freeze-mountpoints` when the VM lists them, else all).
---
--- As KubeVirt does, a non-zero unfreezeTimeout makes the platform thaw by
--- itself when nobody unfreezes in time: the VM's vmsnap-launcher (apart from
--- this process and its loop) is told the timeout with each freeze, and a
--- timer here does the same for an agent without a launcher.
local qga = require("vmsnap.qga")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local api = require("vmsnap.apiserver")
local deep = require("vmsnap.deep")

local M = {}
local plog = log.new("platform.freeze")

local go_duration = require("vmsnap.time").go_duration

local function agent_for(vm)
  local a = vm.metadata.annotations or {}
  local target = a["vmsnap.io/agent"]
  if not target then
    api.fail(409, "Conflict", ('virtualmachines.virtualization.deckhouse.io "%s": the VM has no guest agent to freeze through'):format(vm.metadata.name))
  end
  local mps = a["vmsnap.io/freeze-mountpoints"] and json.decode(a["vmsnap.io/freeze-mountpoints"])
  return target, type(mps) == "table" and mps or nil
end

local function agent_call(target, fn)
  local a, err = qga.connect(target, { timeout = 10 })
  if not a then api.fail(503, "ServiceUnavailable", "the guest agent is not reachable: " .. tostring(err)) end
  local _ <close> = a
  local r, e2 = fn(a)
  if r == nil then api.fail(500, "InternalError", tostring(e2)) end
  return r
end

--- Register freeze and unfreeze on an apiserver.Server.
function M.register(S)
  S.frozen = S.frozen or {}
  S.freeze_locks = S.freeze_locks or {}
  local function key(call) return (call.namespace or "") .. "/" .. call.name end
  -- freeze and unfreeze of one VM run one at a time, in the order they came
  -- (the agent serves one client at a time, and an unfreeze that overtook
  -- the freeze before it would leave the guest frozen)
  local function locked(k, fn)
    local ch = S.freeze_locks[k]
    if not ch then
      ch = task.channel(1)
      ch:send(true)
      S.freeze_locks[k] = ch
    end
    ch:recv()
    local ok, a, b = pcall(fn)
    ch:send(true)
    if not ok then error(a, 0) end
    return a, b
  end
  local function thaw(target, k, call)
    local st = S.frozen[k]
    S.frozen[k] = nil
    if st and st.timer and task.current() ~= st.timer then task.cancel(st.timer) end
    local r = agent_call(target, function(a) return a:fsfreeze_thaw() end)
    M.forget_lease(S, call or st.call)
    return r
  end
  S:subresource("subresources.virtualization.deckhouse.io", "v1alpha2", "virtualmachines", "freeze", function(_, call)
    if call.method ~= "PUT" then api.fail(405, "MethodNotAllowed", "freeze takes PUT") end
    return locked(key(call), function() return M.do_freeze(S, call, thaw, locked) end)
  end)
  S:subresource("subresources.virtualization.deckhouse.io", "v1alpha2", "virtualmachines", "unfreeze", function(_, call)
    if call.method ~= "PUT" then api.fail(405, "MethodNotAllowed", "unfreeze takes PUT") end
    return locked(key(call), function()
      local target = agent_for(call.object)
      thaw(target, key(call), call)
      return 200, nil
    end)
  end)
  M.key = key
end

--- Whoever thaws a guest (an unfreeze by anyone, the unfreeze timeout), the
--- freeze is over: vmsnap's freeze lease on the VM goes with it, so that no
--- snapshot takes a later cut for one made under this freeze.
function M.forget_lease(S, call)
  if not call then return end
  local r = S.reg:find("virtualization.deckhouse.io", "v1alpha2", "virtualmachines")
  local raw = r and S.store:get_raw(r.key, call.namespace or "", call.name)
  local old = raw and json.decode(raw)
  if type(old) ~= "table" or not (old.metadata.annotations or {})["vmsnap.io/frozen-by"] then return end
  local new = deep.copy(old)
  new.metadata.annotations["vmsnap.io/frozen-by"] = nil
  local ok, err = pcall(S.update_object, S, r, call.namespace, new, old, { manager = "vmsnap-platform" })
  if not ok then plog:warn("cannot remove the freeze lease", { vm = call.namespace .. "/" .. call.name, error = tostring(err) }) end
end

function M.do_freeze(S, call, thaw, locked)
  local key = M.key
  do
    local target, mps = agent_for(call.object)
    local timeout = 0
    if call.body and call.body.unfreezeTimeout ~= nil then
      timeout = go_duration(call.body.unfreezeTimeout)
      if not timeout then
        api.fail(400, "BadRequest", ('unfreezeTimeout: invalid duration "%s"'):format(tostring(call.body.unfreezeTimeout)))
      end
    end
    agent_call(target, function(a)
      if timeout > 0 then
        -- the VM's launcher thaws at the timeout by itself, whatever becomes
        -- of this process (a bare agent does not know the command: then only
        -- the timer below bounds the freeze)
        local ok, err, class = a:call("vmsnap-unfreeze-timeout", { seconds = timeout })
        if ok == nil and class ~= "CommandNotFound" then return nil, err end
      end
      local r, err
      if mps and #mps > 0 then r, err = a:fsfreeze_freeze_list(mps) else r, err = a:fsfreeze_freeze() end
      -- frozen already (a freeze asked again after its answer was lost on
      -- the way, or a freeze nobody here made): as KubeVirt's launcher does,
      -- the freeze stands and its unfreeze timeout starts again. (A freeze
      -- that failed half-way was undone by the agent: thawed, an error.)
      if r == nil and a:fsfreeze_status() == "frozen" then return "frozen already" end
      return r, err
    end)
    local k = key(call)
    local st = { gen = (S.frozen[k] and S.frozen[k].gen or 0) + 1, call = { namespace = call.namespace, name = call.name } }
    if S.frozen[k] and S.frozen[k].timer then task.cancel(S.frozen[k].timer) end
    S.frozen[k] = st
    if timeout > 0 then
      st.timer = task.spawn(function()
        task.sleep(timeout)
        -- under the VM's lock, as every freeze and thaw: a freeze in flight
        -- (one asked again re-arms the timeout) is not thawed behind its back
        pcall(locked, k, function()
          if S.frozen[k] ~= st then return end
          plog:warn("unfreezeTimeout passed: thawing", { vm = k, timeout = timeout })
          thaw(target, k)
        end)
      end)
    end
    return 200, nil
  end
end

return M
