-- workflows/vm-restore.lua: the VirtualMachineRestore controller.
--
-- Behaviour: spec/snapshots.md c (handlers VirtualMachineSnapshotReadyToUse
-- and LifeCycle, nameReplacements, conflict validation), with vmsnap's
-- Decisions: transient errors are retried (1); the documented checks in full
-- — an existing Static address must hold the stored address, an existing
-- provisioning Secret must match in type and data (6); everything is
-- validated, including a server-side dry run of every create, before
-- anything is created; a create that fails midway deletes what this restore
-- created. Each object this restore creates carries the annotation
-- `virtualization.deckhouse.io/vmrestore: <restore uid>`, so that a pass
-- interrupted midway continues where it stopped instead of finding its own
-- objects in the way.
--
-- Hooks (vmsnap.hooks, docs/hooks.md), selected by the restored VM: pre_restore
-- after validation and before the first create (a failure fails the restore,
-- nothing created), post_restore at the end whatever the outcome, and
-- restore_failed.
--
-- The plan (W.plan) is what `vmsnap restore vm --dry-run` prints. Copy this
-- file to workflows/vm-restore.lua in a directory of VMSNAP_SCRIPTS_PATH to
-- change it; every step is a function of W.
local json = require("vmsnap.json")
local base64 = require("vmsnap.base64")
local hooks = require("vmsnap.hooks")
local objects = require("vmsnap.objects")
local condition, sentence = objects.condition, objects.sentence
local failure, is_failure = objects.permanent, objects.is_permanent

local W = {}

W.kind = "VirtualMachineRestore"
-- each pass reads the object from the API: a freeze, a hook or a create must
-- never follow from a copy the cache has not caught up on
W.fresh = true
W.RESTORE_ANNOTATION = "virtualization.deckhouse.io/vmrestore"
-- runtime state of the snapshotted objects that must not come back with them
W.RUNTIME_ANNOTATIONS = { "vmsnap.io/frozen-by", "vmsnap.io/agent", "vmsnap.io/freeze-mountpoints",
  "kubectl.kubernetes.io/last-applied-configuration" }

local G = "virtualization.deckhouse.io/v1alpha2"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VMIP = "virtualmachineipaddresses.virtualization.deckhouse.io"
local RESOURCE = {
  VirtualMachine = "virtualmachines.virtualization.deckhouse.io",
  VirtualDisk = "virtualdisks.virtualization.deckhouse.io",
  VirtualMachineIPAddress = VMIP,
  VirtualMachineBlockDeviceAttachment = "virtualmachineblockdeviceattachments.virtualization.deckhouse.io",
  Secret = "secrets",
}
local LABEL = {
  VirtualMachine = "virtual machine", VirtualDisk = "virtual disk",
  VirtualMachineIPAddress = "virtual machine ip address",
  VirtualMachineBlockDeviceAttachment = "virtual machine block device attachment", Secret = "provisioner secret",
}

local COND_RTU = "VirtualMachineSnapshotReadyToUse"
local COND = "VirtualMachineRestoreReady"


-- ------------------------------------------------------------ c.1

--- The VirtualMachineSnapshotReadyToUse condition; returns the snapshot.
function W.snapshot_ready_to_use(ctx, vmr)
  local name = vmr.spec.virtualMachineSnapshotName
  if vmr.metadata.deletionTimestamp then return ctx:condition(COND_RTU, "Unknown", "Unknown", "") end
  local vms = ctx:get(VMS, vmr.metadata.namespace, name)
  if not vms then
    ctx:condition(COND_RTU, "False", "VirtualMachineSnapshotNotFound", ("The virtual machine snapshot %q not found."):format(name))
    return nil
  end
  if vms.metadata.deletionTimestamp then
    ctx:condition(COND_RTU, "False", "VirtualMachineSnapshotNotReady",
      ("The virtual machine snapshot %q is in the process if deleting."):format(name))
    return vms
  end
  local r = condition(vms, "VirtualMachineSnapshotReady")
  if not (r and r.status == "True") or (vms.status and vms.status.phase) ~= "Ready" then
    ctx:condition(COND_RTU, "False", "VirtualMachineSnapshotNotReady",
      ("Waiting for the virtual machine snapshot %q to be ready for use."):format(name))
    return vms
  end
  if vms.metadata.generation ~= (vms.status and vms.status.observedGeneration) then
    ctx:condition(COND_RTU, "False", "VirtualMachineSnapshotNotReady",
      ("Waiting for the virtual machine snapshot %q to be observed in its latest state generation."):format(name))
    return vms
  end
  ctx:condition(COND_RTU, "True", "VirtualMachineSnapshotReadyToUse", "")
  return vms
end

-- ------------------------------------------------------------ the plan

--- c.4: the name an object of `kind` named `name` gets.
function W.rename(rules, kind, name)
  if name == nil or name == "" then return name end
  for _, r in ipairs(rules or {}) do
    local from = r.from or {}
    if ((from.kind or "") == "" or from.kind == kind) and from.name == name then return r.to end
  end
  return name
end

--- c.2 step 10: a sanitised copy (no uid, resourceVersion, status, owners...).
function W.sanitise(obj)
  local md = obj.metadata or {}
  local ann
  for k, v in pairs(md.annotations or {}) do
    ann = ann or {}
    ann[k] = v
  end
  for _, k in ipairs(W.RUNTIME_ANNOTATIONS) do if ann then ann[k] = nil end end
  if ann and next(ann) == nil then ann = nil end
  local out = { apiVersion = obj.apiVersion, kind = obj.kind,
    metadata = { name = md.name, namespace = md.namespace, labels = md.labels, annotations = ann } }
  if obj.kind == "Secret" then
    out.type, out.data, out.stringData, out.immutable = obj.type, obj.data, obj.stringData, obj.immutable
  else
    out.spec = json.decode(json.encode(obj.spec or {}))
  end
  return out
end

local function decode_value(secret, key)
  local v = secret.data and secret.data[key]
  if v == nil then return nil end
  local inner = base64.decode(v)
  local raw = inner and base64.decode(inner)
  local obj = raw and json.decode(raw)
  if type(obj) ~= "table" then error(failure(("cannot decode %q of the snapshot secret %q"):format(key, secret.metadata.name)), 0) end
  return obj
end

--- c.2 steps 6-11: the objects this restore would create, in order (VMIP,
--- VM, VDs, VMBDAs, Secret), sanitised and renamed. Returns a plan
--- {items = {{kind, name, object}}}; a missing child snapshot is
--- `nil, message, "pending"`; other problems raise failures.
function W.plan(ctx, vmr, vms)
  local ns = vmr.metadata.namespace
  local rules = vmr.spec.nameReplacements
  local sname = vms.status and vms.status.virtualMachineSnapshotSecretName or ""
  if sname == "" then error(failure(("the virtual machine snapshot %q has no secret"):format(vms.metadata.name)), 0) end
  local secret, err, code = ctx.client:get("secrets", sname, { namespace = ns })
  if not secret then
    if code == "NotFound" then error(failure(("the virtual machine snapshot secret %q not found"):format(sname)), 0) end
    error(err, 0)
  end
  local vm = decode_value(secret, "vm")
  if not vm then error(failure(("the virtual machine snapshot secret %q has no virtual machine"):format(sname)), 0) end
  local vmip = decode_value(secret, "vmip")
  local bdas = decode_value(secret, "vmbdas") or {}
  local prov = decode_value(secret, "provisioner")
  local items = {}
  local function add(obj)
    obj.metadata.namespace = ns
    obj.metadata.annotations = obj.metadata.annotations or {}
    obj.metadata.annotations[W.RESTORE_ANNOTATION] = vmr.metadata.uid
    items[#items + 1] = { kind = obj.kind, name = obj.metadata.name, object = obj }
  end
  local vm_t = W.sanitise(vm)
  vm_t.apiVersion, vm_t.kind = vm_t.apiVersion or G, "VirtualMachine"
  if vmip then
    local ip = W.sanitise(vmip)
    ip.apiVersion, ip.kind = ip.apiVersion or G, "VirtualMachineIPAddress"
    vm_t.spec.virtualMachineIPAddressName = ip.metadata.name
    ip.metadata.name = W.rename(rules, "VirtualMachineIPAddress", ip.metadata.name)
    add(ip)
  end
  vm_t.metadata.name = W.rename(rules, "VirtualMachine", vm_t.metadata.name)
  if vm_t.spec.virtualMachineIPAddressName then
    vm_t.spec.virtualMachineIPAddressName = W.rename(rules, "VirtualMachineIPAddress", vm_t.spec.virtualMachineIPAddressName)
  end
  for _, r in ipairs(vm_t.spec.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then r.name = W.rename(rules, "VirtualDisk", r.name) end
  end
  add(vm_t)
  for _, n in ipairs(vms.status.virtualDiskSnapshotNames or {}) do
    local vds, verr, vcode = ctx.client:get(VDS, n, { namespace = ns })
    if not vds then
      if vcode == "NotFound" then return nil, ("The virtual disk snapshot %q not found."):format(n), "pending" end
      error(verr, 0)
    end
    add({ apiVersion = G, kind = "VirtualDisk",
      metadata = { name = W.rename(rules, "VirtualDisk", vds.spec.virtualDiskName) },
      spec = { dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = n } } } })
  end
  for _, b in ipairs(bdas) do
    local t = W.sanitise(b)
    t.apiVersion, t.kind = t.apiVersion or G, "VirtualMachineBlockDeviceAttachment"
    t.metadata.name = W.rename(rules, "VirtualMachineBlockDeviceAttachment", t.metadata.name)
    t.spec.virtualMachineName = W.rename(rules, "VirtualMachine", t.spec.virtualMachineName)
    if t.spec.blockDeviceRef and t.spec.blockDeviceRef.kind == "VirtualDisk" then
      t.spec.blockDeviceRef.name = W.rename(rules, "VirtualDisk", t.spec.blockDeviceRef.name)
    end
    add(t)
  end
  if prov then
    local s = W.sanitise(prov)
    s.apiVersion, s.kind = "v1", "Secret"
    s.metadata.name = W.rename(rules, "Secret", s.metadata.name)
    add(s)
  end
  return { items = items }
end

-- ------------------------------------------------------------ validation

local function ours(vmr, obj)
  return obj and obj.metadata.annotations and obj.metadata.annotations[W.RESTORE_ANNOTATION] == vmr.metadata.uid
end

local function same_map(a, b)
  for k, v in pairs(a or {}) do if (b or {})[k] ~= v then return false end end
  for k in pairs(b or {}) do if (a or {})[k] == nil then return false end end
  return true
end

--- c.5 with Decision 6: for each planned item, `action` ("create",
--- "reuse", or "done" for an object this restore already created) and
--- `conflict` (a message) — the first conflict decides the restore.
function W.validate(ctx, vmr, plan)
  local ns = vmr.metadata.namespace
  local client = ctx.client
  for _, it in ipairs(plan.items) do
    local cur, err, code = client:get(RESOURCE[it.kind], it.name, { namespace = ns })
    if not cur and code ~= "NotFound" then error(err, 0) end
    local label = LABEL[it.kind]
    it.action = "create"
    if cur and ours(vmr, cur) then
      it.action = "done"
    elseif it.kind == "VirtualMachineIPAddress" then
      local want = it.object.spec.staticIP
      if cur then
        if (cur.status and cur.status.phase == "Attached") or (cur.status and (cur.status.virtualMachineName or "") ~= "") then
          it.conflict = ("the %s %q is already in use and cannot be used for the restored virtual machine"):format(label, it.name)
        elseif cur.spec.type == "Static" and want and (cur.spec.staticIP or (cur.status and cur.status.address)) ~= want then
          it.conflict = ("the %s %q has the address %q, not the stored %q, and cannot be used for the restored virtual machine")
            :format(label, it.name, tostring(cur.spec.staticIP or cur.status.address), want)
        else
          it.action = "reuse"
        end
      elseif want and want ~= "" then
        local all, lerr = client:list_all(VMIP, { namespace = ns })
        if not all then error(lerr, 0) end
        for _, other in ipairs(all) do
          if other.spec.staticIP == want or (other.status and other.status.address == want) then
            it.conflict = ("the set address %q is already in use by the different %s %q and cannot be used for the restored virtual machine")
              :format(want, label, other.metadata.name)
            break
          end
        end
      end
    elseif it.kind == "Secret" then
      if cur then
        if not same_map(cur.data, it.object.data) then
          it.conflict = ("the %s %q already exists and has not the same data content"):format(label, it.name)
        elseif (cur.type or "Opaque") ~= (it.object.type or "Opaque") then
          it.conflict = ("the %s %q already exists and has not the same type"):format(label, it.name)
        else
          it.action = "reuse"
        end
      end
    elseif cur then
      it.conflict = ("the %s %q already exists"):format(label, it.name)
    end
  end
  for _, it in ipairs(plan.items) do
    if it.conflict then return nil, it.conflict end
  end
  -- the server's own checks (admission, schema), without creating anything
  for _, it in ipairs(plan.items) do
    if it.action == "create" then
      local res, derr, dcode = client:create(it.object, { dry_run = true })
      if not res and dcode ~= "AlreadyExists" then
        if dcode == "Invalid" or dcode == "Forbidden" or dcode == "BadRequest" or dcode == "NotFound" then
          error(failure(("failed to create %s %q: %s"):format(it.kind, it.name, tostring(derr))), 0)
        end
        error(derr, 0)
      end
    end
  end
  return true
end

-- refusals no retry fixes; anything else (5xx, 429, timeouts, a lost
-- connection) is retried from the start (Decision 1)
local PERMANENT = { Forbidden = true, Invalid = true, BadRequest = true, NotFound = true,
  MethodNotAllowed = true, RequestEntityTooLarge = true, UnsupportedMediaType = true }

--- c.2 step 12: create in order; a failure deletes what this pass created
--- (newest first) and fails the restore — or, when a retry may fix it,
--- raises the error so that the pass runs again.
function W.create_all(ctx, vmr, plan)
  local client = ctx.client
  local made = {}
  local function undo()
    for i = #made, 1, -1 do
      local it = made[i]
      client:delete(RESOURCE[it.kind], it.name, { namespace = vmr.metadata.namespace })
    end
  end
  for _, it in ipairs(plan.items) do
    if it.action == "create" then
      local res, err, code = client:create(it.object)
      if not res then
        if code == "AlreadyExists" then
          local cur = client:get(RESOURCE[it.kind], it.name, { namespace = vmr.metadata.namespace })
          if not ours(vmr, cur) then
            undo()
            error(failure(("failed to create %s %q: it was created by someone else meanwhile"):format(it.kind, it.name)), 0)
          end
        else
          undo()
          local msg = ("failed to create %s %q: %s"):format(it.kind, it.name, tostring(err))
          if PERMANENT[code] then error(failure(msg), 0) end
          error(msg, 0)
        end
      else
        made[#made + 1] = it
      end
    end
  end
  return made
end

-- ------------------------------------------------------------ hooks

--- The hooks of this restore, selected by the VM it restores (the template
--- of the plan, or the restored VM in later passes), once per pass.
function W.hooks(ctx, vmr, vm)
  if not ctx.hook_runner then
    if not vm then
      local rec = json.decode(vmr.metadata.annotations and vmr.metadata.annotations[hooks.ANNOTATION] or "null")
      local name = type(rec) == "table" and rec.vm
      vm = name and ctx.client:get(RESOURCE.VirtualMachine, name, { namespace = vmr.metadata.namespace }) or nil
    end
    local ok, r = pcall(hooks.runner, { client = ctx.client, ctx = ctx, vm = vm, object = vmr, kind = "restore" })
    if not ok then error(failure(tostring(r)), 0) end
    ctx.hook_runner = r
  end
  return ctx.hook_runner
end

-- ------------------------------------------------------------ c.2

--- The lifecycle. Returns a reconcile result.
function W.lifecycle(ctx, vmr, vms)
  local st = vmr.status
  local ph = st.phase or ""
  if ph == "Ready" or ph == "Failed" or ph == "Terminating" then return true end
  if not ctx:get_condition(COND) then ctx:condition(COND, "Unknown", "Unknown", "") end
  if ph == "" then st.phase = "Pending" end
  if vmr.metadata.deletionTimestamp then
    st.phase = "Terminating"
    ctx:condition(COND, "Unknown", "Unknown", "")
    return true
  end
  if st.phase == "InProgress" then
    local hr = W.hooks(ctx, vmr)
    if hr:any("post_restore") then
      local ok, herr = hr:unwind("post_restore", "Ready")
      if not ok then error(failure(herr, "HookFailed"), 0) end
    end
    st.phase = "Ready"
    ctx:condition(COND, "True", "VirtualMachineRestoreReady", "")
    return true
  end
  local rtu = ctx:get_condition(COND_RTU)
  if not (rtu and rtu.status == "True") then
    st.phase = "Pending"
    ctx:condition(COND, "False", "VirtualMachineSnapshotNotReadyToUse",
      ("Waiting for the virtual machine snapshot %q to be ready to use."):format(vmr.spec.virtualMachineSnapshotName))
    return { requeue_after = 2 } -- the snapshot's watch brings it sooner; this is the safety net
  end
  if not vms then
    error(failure(("the virtual machine snapshot %q is nil, please report a bug"):format(vmr.spec.virtualMachineSnapshotName)), 0)
  end
  local plan, why, kind = W.plan(ctx, vmr, vms)
  if not plan then
    if kind == "pending" then
      st.phase = "Pending"
      ctx:condition(COND, "False", "VirtualMachineSnapshotNotReady", why)
      return { requeue_after = 2 }
    end
    error(why, 0)
  end
  local ok, conflict = W.validate(ctx, vmr, plan)
  if not ok then
    st.phase = "Failed"
    ctx:condition(COND, "False", "VirtualMachineRestoreConflict", sentence(conflict))
    return true
  end
  local vm_t
  for _, it in ipairs(plan.items) do if it.kind == "VirtualMachine" then vm_t = it.object end end
  local hr = W.hooks(ctx, vmr, vm_t)
  if #hr.hooks > 0 and not hr.record.vm then
    hr.record.vm = vm_t and vm_t.metadata.name -- later passes select by the restored VM
    local fok, ferr = hr:flush()
    if not fok then error(ferr, 0) end
  end
  if not hr:done("pre_restore") then
    local hok, herr, hkind = hr:run("pre_restore")
    if not hok then
      if hkind == "transient" then error(herr, 0) end
      error(failure(herr, "HookFailed"), 0)
    end
  end
  W.create_all(ctx, vmr, plan)
  st.phase = "InProgress"
  ctx:condition(COND, "False", "VirtualMachineSnapshotNotReady",
    ("The virtual machine %q is in the process of restore."):format(vms.spec.virtualMachineName))
  return { requeue_after = 0 }
end

--- The reconcile: ReadyToUse on every pass, then the lifecycle; failures are
--- terminal (Failed), other errors retried.
function W.reconcile(ctx, vmr)
  vmr.status = vmr.status or {}
  local vms = W.snapshot_ready_to_use(ctx, vmr)
  local ok, res, lerr = pcall(W.lifecycle, ctx, vmr, vms)
  if not ok then
    if is_failure(res) then
      vmr.status.phase = "Failed"
      ctx:condition(COND, "False", res.reason or "VirtualMachineRestoreFailed", sentence(res.message))
      res, lerr = true, nil
    else
      res, lerr = nil, tostring(res)
    end
  end
  if vmr.status.phase == "Failed" and ctx.hook_runner then
    -- the hooks owed: restore_failed (once), then post_restore of those whose pre_restore ran
    local hr = ctx.hook_runner
    if not hr:done("restore_failed") and hr:any("restore_failed") then
      hr:mark_done("restore_failed")
      hr:run("restore_failed", "Failed")
    end
    if hr:any("post_restore") then hr:unwind("post_restore", "Failed") end
  end
  vmr.status.observedGeneration = vmr.metadata.generation
  return res, lerr
end

--- What the controller watches: the snapshot it restores from.
function W.watches()
  return {
    { kind = VMS, map = function(vms, ctl)
      local keys = {}
      for _, r in ipairs(ctl.primary and ctl.primary:list(vms.metadata.namespace) or {}) do
        if r.spec.virtualMachineSnapshotName == vms.metadata.name then
          keys[#keys + 1] = r.metadata.namespace .. "/" .. r.metadata.name
        end
      end
      return keys
    end },
  }
end

return W
