-- workflows/vm-restore.lua: the VirtualMachineRestore controller.
--
-- Behaviour: docs/behaviour.md c (the ReadyToUse condition, the lifecycle,
-- nameReplacements, conflict validation), with vmsnap's
-- Decisions: transient errors are retried (1); the documented checks in full
-- — an existing Static address must hold the stored address, an existing
-- provisioning Secret must match in type and data (6); everything is
-- validated, including a server-side dry run of every create, before
-- anything is created; a restore that fails midway deletes what it created
-- (a transient failure is retried from what exists); restored disks get
-- back the labels and annotations they had at snapshot time, and an
-- attachment outside the snapshot that names the restored VM is a
-- conflict (13). Each object this restore creates carries the annotation
-- `virtualization.deckhouse.io/vmrestore: <restore uid>`, so that a pass
-- interrupted midway continues where it stopped instead of finding its own
-- objects in the way.
--
-- Hooks (vmsnap.hooks, docs/hooks.md), selected by the restored VM: pre_restore
-- after validation and before the first create (a failure fails the restore,
-- nothing created), post_restore at the end whatever the outcome, and
-- restore_failed.
--
-- The order of operations is W.steps (vmsnap.reconcile.steps); `vmsnap
-- workflow show vm-restore` prints it. The plan (W.plan) is what `vmsnap
-- restore vm --dry-run` prints. Change a step with an extension in
-- workflows/vm-restore.d/ (docs/customizing.md).
local json = require("vmsnap.json")
local deep = require("vmsnap.deep")
local hooks = require("vmsnap.hooks")
local steps = require("vmsnap.reconcile.steps")
local object = require("vmsnap.k8s.object")
local secret_format = require("vmsnap.snapshot_secret")
local errors = require("vmsnap.errors")
local condition = object.condition

local W = {}

W.kind = "VirtualMachineRestore"
--- vmsnap's own (the reference's restore has none): a restore deleted while
--- it creates takes back what it created before it goes (Decision 6); one
--- that ended keeps nothing owed, and goes at once.
W.finalizer = "vmsnap.io/vmrestore-cleanup"
W.condition = "VirtualMachineRestoreReady"
W.failed_reason = "VirtualMachineRestoreFailed"
--- Events (the reference's VirtualMachineRestore records none: Decision 14,
--- docs/behaviour.md): each phase entered, every wait that says something
--- new, and the failure (Warning).
W.events = { failed = "VirtualMachineRestoringFailed",
  wait = { Pending = "VirtualMachineRestoringPending" },
  phases = {
    InProgress = { "VirtualMachineRestoringStarted", function(vmr)
      return ("The restore from the virtual machine snapshot %q has started: every object is created."):format(
        vmr.spec.virtualMachineSnapshotName) end },
    Ready = { "VirtualMachineRestoringCompleted", function(vmr)
      return ("The restore from the virtual machine snapshot %q is complete."):format(vmr.spec.virtualMachineSnapshotName) end },
  } }
W.reasons = { RestoreConflict = "VirtualMachineRestoreConflict", HookFailed = "HookFailed" }
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


-- ------------------------------------------------------------ c.1

--- The VirtualMachineSnapshotReadyToUse condition; returns the snapshot.
function W.snapshot_ready_to_use(ctx, vmr)
  local name = vmr.spec.virtualMachineSnapshotName
  local vms = ctx:get(VMS, vmr.metadata.namespace, name)
  if vmr.metadata.deletionTimestamp then
    -- (the snapshot still serves the undo: its plan names what this restore made)
    ctx:condition(COND_RTU, "Unknown", "Unknown", "")
    return vms
  end
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
    metadata = { name = md.name, namespace = md.namespace, labels = deep.copy(md.labels), annotations = ann } }
  if obj.kind == "Secret" then
    out.type, out.data, out.stringData, out.immutable = obj.type, deep.copy(obj.data), deep.copy(obj.stringData), obj.immutable
  else
    out.spec = deep.copy(obj.spec or {})
  end
  return out
end

--- Decision 13: the labels and annotations a disk had when its snapshot
--- was taken (recorded on the child by the VM snapshot; none for a child
--- of before, or one whose record is not a JSON object of string maps).
function W.disk_metadata(vds)
  local raw = (vds.metadata.annotations or {})[secret_format.DISK_METADATA]
  local ok, rec = pcall(json.decode, raw or "null")
  local out = {}
  if not ok or type(rec) ~= "table" then return out end
  for _, part in ipairs({ "labels", "annotations" }) do
    local m = rec[part]
    if type(m) == "table" and next(m) then
      local copy = {}
      for k, v in pairs(m) do
        if type(k) == "string" and type(v) == "string" then copy[k] = v end
      end
      if part == "annotations" then
        for _, k in ipairs(W.RUNTIME_ANNOTATIONS) do copy[k] = nil end
      end
      out[part] = next(copy) and copy or nil
    end
  end
  return out
end

--- c.2 steps 6-11: the objects this restore would create, in order (VMIP,
--- VM, VDs, VMBDAs, Secret), sanitised and renamed. Returns a plan
--- {items = {{kind, name, object}}}, or nil, message, code ("Pending" while
--- a child disk snapshot is missing).
function W.plan(ctx, vmr, vms)
  local ns = vmr.metadata.namespace
  local rules = vmr.spec.nameReplacements
  local sname = vms.status and vms.status.virtualMachineSnapshotSecretName or ""
  if sname == "" then return nil, ("the virtual machine snapshot %q has no secret"):format(vms.metadata.name), "Invalid" end
  local secret, err, code = ctx:get("secrets", ns, sname)
  if not secret then
    if not err then return nil, ("the virtual machine snapshot secret %q not found"):format(sname), "NotFound" end
    return nil, err, code
  end
  local objs, derr, dcode = secret_format.decode(secret)
  if not objs then return nil, derr, dcode end
  local items = {}
  local function add(obj)
    obj.metadata.namespace = ns
    obj.metadata.annotations = obj.metadata.annotations or {}
    obj.metadata.annotations[W.RESTORE_ANNOTATION] = vmr.metadata.uid
    items[#items + 1] = { kind = obj.kind, name = obj.metadata.name, object = obj }
  end
  local vm_t = W.sanitise(objs.vm)
  vm_t.apiVersion, vm_t.kind = vm_t.apiVersion or G, "VirtualMachine"
  if objs.vmip then
    local ip = W.sanitise(objs.vmip)
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
    local vds, verr, vcode = ctx:get(VDS, ns, n)
    if not vds then
      if not verr then return nil, ("The virtual disk snapshot %q not found."):format(n), "Pending" end
      return nil, verr, vcode
    end
    local kept = W.disk_metadata(vds)
    add({ apiVersion = G, kind = "VirtualDisk",
      metadata = { name = W.rename(rules, "VirtualDisk", vds.spec.virtualDiskName),
        labels = kept.labels, annotations = kept.annotations },
      spec = { dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = n } } } })
  end
  for _, b in ipairs(objs.vmbdas) do
    local t = W.sanitise(b)
    t.apiVersion, t.kind = t.apiVersion or G, "VirtualMachineBlockDeviceAttachment"
    t.metadata.name = W.rename(rules, "VirtualMachineBlockDeviceAttachment", t.metadata.name)
    t.spec.virtualMachineName = W.rename(rules, "VirtualMachine", t.spec.virtualMachineName)
    if t.spec.blockDeviceRef and t.spec.blockDeviceRef.kind == "VirtualDisk" then
      t.spec.blockDeviceRef.name = W.rename(rules, "VirtualDisk", t.spec.blockDeviceRef.name)
    end
    add(t)
  end
  if objs.provisioner then
    local sec = W.sanitise(objs.provisioner)
    sec.apiVersion, sec.kind = "v1", "Secret"
    sec.metadata.name = W.rename(rules, "Secret", sec.metadata.name)
    add(sec)
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

-- c.5 with Decision 6: the conflict of one planned item with what exists
-- (a message), or nothing; nil, message, code when the API failed
local function conflict_of(ctx, it, cur)
  local label = LABEL[it.kind]
  if it.kind == "VirtualMachineIPAddress" then
    local want = it.object.spec.staticIP
    if cur then
      if (cur.status and cur.status.phase == "Attached") or (cur.status and (cur.status.virtualMachineName or "") ~= "") then
        return ("the %s %q is already in use and cannot be used for the restored virtual machine"):format(label, it.name)
      elseif cur.spec.type == "Static" and want and (cur.spec.staticIP or (cur.status and cur.status.address)) ~= want then
        return ("the %s %q has the address %q, not the stored %q, and cannot be used for the restored virtual machine")
          :format(label, it.name, tostring(cur.spec.staticIP or cur.status.address), want)
      end
      it.action = "reuse"
    elseif want and want ~= "" then
      local all, lerr, lcode = ctx.client:list_all(VMIP, { namespace = it.object.metadata.namespace })
      if not all then return nil, lerr, lcode end
      for _, other in ipairs(all) do
        if other.spec.staticIP == want or (other.status and other.status.address == want) then
          return ("the set address %q is already in use by the different %s %q and cannot be used for the restored virtual machine")
            :format(want, label, other.metadata.name)
        end
      end
    end
  elseif it.kind == "Secret" then
    if cur then
      if not same_map(cur.data, it.object.data) then
        return ("the %s %q already exists and has not the same data content"):format(label, it.name)
      elseif (cur.type or "Opaque") ~= (it.object.type or "Opaque") then
        return ("the %s %q already exists and has not the same type"):format(label, it.name)
      end
      it.action = "reuse"
    end
  elseif cur then
    return ("the %s %q already exists"):format(label, it.name)
  end
end

--- Decision 13: an attachment that is not in the snapshot but names the
--- restored VM would plug a disk the snapshot did not hold into it (the
--- platform attaches by the VM's name): that is a conflict, named, until
--- the attachment is deleted or the VM renamed. Returns a message or nil;
--- nil, message, code when the API failed.
function W.stray_attachment(ctx, vmr, plan)
  local vmname, planned = nil, {}
  for _, it in ipairs(plan.items) do
    if it.kind == "VirtualMachine" then vmname = it.name end
    if it.kind == "VirtualMachineBlockDeviceAttachment" then planned[it.name] = true end
  end
  if not vmname then return nil end
  local all, err, code = ctx.client:list_all(RESOURCE.VirtualMachineBlockDeviceAttachment,
    { namespace = vmr.metadata.namespace })
  if not all then return nil, err, code end
  table.sort(all, function(a, b) return a.metadata.name < b.metadata.name end)
  for _, b in ipairs(all) do
    if b.spec.virtualMachineName == vmname and not planned[b.metadata.name] and not ours(vmr, b)
        and not b.metadata.deletionTimestamp then
      local ref = b.spec.blockDeviceRef or {}
      return ("the %s %q attaches the %s %q to the virtual machine %q and is not part of the snapshot: "
        .. "delete it or rename the virtual machine"):format(LABEL.VirtualMachineBlockDeviceAttachment,
        b.metadata.name, ref.kind == "VirtualDisk" and "virtual disk" or tostring(ref.kind), tostring(ref.name), vmname)
    end
  end
  return nil
end

--- c.5 with Decision 6: for each planned item, `action` ("create",
--- "reuse", or "done" for an object this restore already created) and
--- `conflict` (a message); then a server-side dry run of every create.
--- Returns true, or nil, message, code ("RestoreConflict" for the first
--- conflict, the server's reason for a refused dry run).
function W.validate(ctx, vmr, plan)
  local ns = vmr.metadata.namespace
  for _, it in ipairs(plan.items) do
    local cur, err, code = ctx.client:get(RESOURCE[it.kind], it.name, { namespace = ns })
    if not cur and code ~= "NotFound" then return nil, err, code end
    it.action = "create"
    if cur and ours(vmr, cur) then
      it.action = "done"
    else
      local conflict, lerr, lcode = conflict_of(ctx, it, cur)
      if lerr then return nil, lerr, lcode end
      it.conflict = conflict
    end
  end
  for _, it in ipairs(plan.items) do
    if it.conflict then return nil, it.conflict, "RestoreConflict" end
  end
  local stray, serr, scode = W.stray_attachment(ctx, vmr, plan)
  if serr then return nil, serr, scode end
  if stray then return nil, stray, "RestoreConflict" end
  return W.dry_run(ctx, plan)
end

--- The server's own checks (admission, schema) of every create of the plan
--- that has no conflict, without creating anything: each refusal is kept on
--- its item (`refused`). Returns true, or nil, the first refusal, its code.
function W.dry_run(ctx, plan)
  local first, fcode
  for _, it in ipairs(plan.items) do
    if it.action == "create" and not it.conflict then
      local res, derr, dcode = ctx.client:create(it.object, { dry_run = true })
      if not res and dcode ~= "AlreadyExists" then
        it.refused = tostring(derr)
        if not first then first, fcode = ("failed to create %s %q: %s"):format(it.kind, it.name, it.refused), dcode end
      end
    end
  end
  if first then return nil, first, fcode end
  return true
end

--- c.2 step 12: create in order. Returns true, or nil, message, code: a
--- refusal is terminal (the restore fails, and the create step's undo,
--- W.uncreate, deletes what it created), any other failure transient — what
--- was created stays, and the next pass goes on from it (each object carries
--- this restore's uid). An object of this restore that is being deleted (by
--- someone else: a restore never deletes while it goes on) is waited for.
function W.create_all(ctx, vmr, plan)
  local client = ctx.client
  local ns = vmr.metadata.namespace
  ctx.memo.created = ctx.memo.created or {}
  for _, it in ipairs(plan.items) do
    if it.action == "create" then
      local ref = it.kind .. "/" .. it.name
      -- named before the create: one whose answer is lost is ours all the same
      -- (the undo deletes only what carries this restore's uid)
      local known = false
      for _, x in ipairs(ctx.memo.created) do known = known or x == ref end
      if not known then ctx.memo.created[#ctx.memo.created + 1] = ref end
      local res, err, code = client:create(it.object)
      if not res and code == "AlreadyExists" then
        local cur, gerr, gcode = client:get(RESOURCE[it.kind], it.name, { namespace = ns })
        if not cur and gcode ~= "NotFound" then return nil, gerr, gcode end
        if not cur then
          return nil, ("%s %q went while it was created: trying again"):format(it.kind, it.name), "Conflict"
        end
        if not ours(vmr, cur) then
          return nil, ("failed to create %s %q: it was created by someone else meanwhile"):format(it.kind, it.name),
            "RestoreConflict"
        end
        if cur.metadata.deletionTimestamp then
          return nil, ("%s %q of this restore is being deleted: waiting to create it again"):format(it.kind, it.name),
            "Conflict"
        end
      elseif not res then
        return nil, ("failed to create %s %q: %s"):format(it.kind, it.name, tostring(err)), code
      end
    end
  end
  return true
end

--- The create step's undo: when the restore fails, or is deleted before it
--- is Ready, every object it created goes, newest first (those of the plan
--- that carry its uid, and those its record names). A delete that fails
--- leaves the undo owed: the next pass tries again (a deleted restore waits
--- behind its finalizer), so a restore that did not complete ends with
--- nothing of it left — but a deleted restore does not wait for good on a
--- delete the server refuses for a reason no retry changes (a 403): that
--- object stays, said so in an Event. A restore that is Ready (its record
--- still owing this undo: a record write that failed) deletes nothing.
function W.uncreate(ctx, vmr, outcome, facts)
  if outcome ~= "Failed" and outcome ~= "Deleted" then return true end
  if outcome == "Deleted" and vmr.status.phase == "Ready" then return true end
  local ns = vmr.metadata.namespace
  local refs, seen = {}, {}
  local function add(ref)
    if not seen[ref] then
      seen[ref] = true
      refs[#refs + 1] = ref
    end
  end
  local plan, perr, pcode
  if facts.vms then
    plan, perr, pcode = W.plan(ctx, vmr, facts.vms)
    -- (a plan that cannot be made for good — its Secret gone — leaves the record's names)
    if not plan and errors.is_transient(pcode) then return nil, perr, pcode end
  end
  for _, it in ipairs(plan and plan.items or {}) do add(it.kind .. "/" .. it.name) end
  for _, ref in ipairs(ctx.memo.created or {}) do add(ref) end
  for i = #refs, 1, -1 do
    local kind, name = refs[i]:match("^([^/]+)/(.+)$")
    local r = RESOURCE[kind]
    if r then
      local cur, err, code = ctx.client:get(r, name, { namespace = ns })
      if not cur and code ~= "NotFound" then return nil, err, code end
      if cur and ours(vmr, cur) and not cur.metadata.deletionTimestamp then
        local ok, derr, dcode = ctx.client:delete(r, name, { namespace = ns })
        if not ok and dcode ~= "NotFound" then
          if outcome ~= "Deleted" or errors.is_transient(dcode) then return nil, derr, dcode end
          ctx:event("Warning", "VirtualMachineRestoreCleanupFailed",
            ("%s %q of this restore could not be deleted and stays: %s"):format(kind, name, tostring(derr)))
        end
      end
    end
  end
  return true
end

-- ------------------------------------------------------------ hooks

--- The hooks of this restore, selected by the VM it restores (the template
--- of the plan, or the restored VM in later passes), once per pass; nil,
--- message, "HookFailed" when they cannot be selected.
function W.hooks(ctx, vmr, vm)
  if not ctx.hook_runner then
    if not vm then
      local rec = json.decode(vmr.metadata.annotations and vmr.metadata.annotations[hooks.ANNOTATION] or "null")
      local name = type(rec) == "table" and rec.vm
      vm = name and ctx:get(RESOURCE.VirtualMachine, vmr.metadata.namespace, name) or nil
    end
    local r, err, code = hooks.runner({ client = ctx.client, ctx = ctx, vm = vm, object = vmr, kind = "restore" })
    if not r then return nil, err, code end
    ctx.hook_runner = r
  end
  return ctx.hook_runner
end

-- ------------------------------------------------------------ the steps

-- the plan of this pass (made once per pass, validated once)
local function plan_of(ctx, vmr, facts)
  if facts.plan then return facts.plan end
  if not facts.vms then
    return nil, ("the virtual machine snapshot %q not found"):format(vmr.spec.virtualMachineSnapshotName), "NotFound"
  end
  local plan, err, code = W.plan(ctx, vmr, facts.vms)
  if not plan then return nil, err, code end
  local ok, verr, vcode = W.validate(ctx, vmr, plan)
  if not ok then return nil, verr, vcode end
  facts.plan = plan
  return plan
end

--- The facts of a pass: the snapshot, and the ReadyToUse condition (c.1).
function W.observe(ctx, vmr)
  if not ctx:get_condition(W.condition) then ctx:condition(W.condition, "Unknown", "Unknown", "") end
  return { vms = W.snapshot_ready_to_use(ctx, vmr) }
end

--- Wait for the snapshot to be ready to use.
function W.snapshot_ready(ctx, vmr)
  local rtu = ctx:get_condition(COND_RTU)
  if rtu and rtu.status == "True" then return true end
  return steps.wait("VirtualMachineSnapshotNotReadyToUse",
    ("Waiting for the virtual machine snapshot %q to be ready to use."):format(vmr.spec.virtualMachineSnapshotName))
end

--- The plan, its conflicts (Decision 6) and the server's dry run of every
--- create: everything is checked before anything is created.
function W.check(ctx, vmr, facts)
  local plan, err, code = plan_of(ctx, vmr, facts)
  if plan then return true end
  if code == "Pending" then return steps.wait("VirtualMachineSnapshotNotReady", err) end
  return nil, err, code
end

local function template_vm(plan)
  for _, it in ipairs(plan.items) do if it.kind == "VirtualMachine" then return it.object end end
end

--- pre_restore hooks, selected by the restored VM (later passes find it by
--- the name in the hooks' record).
function W.pre_restore(ctx, vmr, facts)
  local plan, err, code = plan_of(ctx, vmr, facts)
  if not plan then return nil, err, code end
  local vm_t = template_vm(plan)
  local hr, herr, hcode = W.hooks(ctx, vmr, vm_t)
  if not hr then return nil, herr, hcode end
  if #hr.hooks > 0 and not hr.record.vm then
    hr.record.vm = vm_t and vm_t.metadata.name
    local ok, ferr, fcode = hr:flush()
    if not ok then return nil, ferr, fcode end
  end
  if hr:done("pre_restore") then return true end
  return hr:run("pre_restore")
end

-- the restore_failed hooks, once
local function failed_hooks(ctx, vmr)
  local hr = ctx.hook_runner or W.hooks(ctx, vmr)
  if hr and not hr:done("restore_failed") and hr:any("restore_failed") then
    hr:mark_done("restore_failed")
    hr:run("restore_failed", "Failed")
  end
end

--- pre_restore's undo, when the restore ends: restore_failed (on failure),
--- then post_restore.
function W.post_restore(ctx, vmr, outcome)
  if outcome == "Failed" then failed_hooks(ctx, vmr) end
  local hr = W.hooks(ctx, vmr)
  if not hr or not hr:any("post_restore") then return true end
  return hr:unwind("post_restore", outcome)
end

--- A restore that failed before its hooks ran still runs restore_failed.
function W.on_failed(ctx, vmr)
  failed_hooks(ctx, vmr)
end

--- Create everything, in order (c.2 step 12); InProgress.
function W.create(ctx, vmr, facts)
  local plan, err, code = plan_of(ctx, vmr, facts)
  if not plan then return nil, err, code end
  local ok, cerr, ccode = W.create_all(ctx, vmr, plan)
  if not ok then return nil, cerr, ccode end
  vmr.status.phase = "InProgress"
  ctx:condition(W.condition, "False", "VirtualMachineSnapshotNotReady",
    ("The virtual machine %q is in the process of restore."):format(facts.vms.spec.virtualMachineName))
  return steps.pause()
end

--- The post_restore hooks, then Ready.
function W.finish(ctx, vmr)
  local ok, err, code = steps.release(ctx, "pre-restore", "Ready")
  if not ok then return nil, err, code end
  vmr.status.phase = "Ready"
  ctx:condition(W.condition, "True", "VirtualMachineRestoreReady", "")
  return true
end

W.steps = steps.list({
  { name = "snapshot-ready", phase = "Pending", run = W.snapshot_ready, doc = "wait for the snapshot to be ready to use" },
  { name = "check", phase = "Pending", run = W.check,
    doc = "the plan, its conflicts and a server-side dry run of every create" },
  { name = "pre-restore", phase = "Pending", run = W.pre_restore, undo = W.post_restore,
    doc = "pre_restore hooks (undo: restore_failed, post_restore)" },
  { name = "create", phase = "Pending", run = W.create, undo = W.uncreate,
    doc = "create every object in order (undo: a restore failed or deleted before Ready deletes them)" },
  { name = "finish", run = W.finish, doc = "post_restore hooks, Ready" },
})

--- What the controller watches: the snapshot it restores from.
function W.watches()
  return {
    { kind = VMS, map = function(vms, ctl)
      local keys = {}
      for _, r in ipairs(ctl.primary:by_index("by_snapshot", vms.metadata.namespace .. "/" .. vms.metadata.name)) do
        keys[#keys + 1] = r.metadata.namespace .. "/" .. r.metadata.name
      end
      return keys
    end },
  }
end

W.indexes = {
  by_snapshot = function(r) return { r.metadata.namespace .. "/" .. r.spec.virtualMachineSnapshotName } end,
}

return W
