-- workflows/vm-snapshot.lua: the VirtualMachineSnapshot controller.
--
-- Behaviour: docs/behaviour.md b.4 (the snapshot Secret of b.4.3), with
-- vmsnap's Decisions: transient errors are retried (1); a cleanup
-- finalizer, and Failed and deletion thaw a guest this snapshot froze (2);
-- the children created before the freeze, one freeze for the whole VM,
-- every disk's VolumeSnapshot issued right after it, the thaw as soon as all
-- are cut (or at Ready with `vmsnap.io/thaw-at: Ready`) (3); a freeze budget
-- (4, `vmsnap.io/freeze-budget`); classes resolved when
-- spec.volumeSnapshotClasses is empty (5); the consistency claim proved at
-- the cut (8); every gate a file, run before the guest is touched, and the
-- children accepted by the server before it is touched too (9).
--
-- Hooks (docs/hooks.md): pre_snapshot when it starts (its partner
-- post_snapshot at the end, whatever the outcome; snapshot_failed on
-- failure), pre_freeze / post_freeze around the freeze, post_thaw after the
-- thaw (also when pre_freeze ran and the freeze never came).
--
-- The order of operations is W.steps (vmsnap.reconcile.steps); `vmsnap
-- workflow show vm-snapshot` prints it. Change a step with an extension in
-- workflows/vm-snapshot.d/ (docs/customizing.md); add a gate with a file in
-- preconditions/ (applies_to = {"vm-snapshot"}).
local csi = require("vmsnap.csi")
local json = require("vmsnap.json")
local freezes = require("vmsnap.freezes")
local hooks = require("vmsnap.hooks")
local task = require("vmsnap.task")
local errors = require("vmsnap.errors")
local workflow = require("vmsnap.workflow")
local steps = require("vmsnap.reconcile.steps")
local object = require("vmsnap.k8s.object")
local secret_format = require("vmsnap.snapshot_secret")
local vtime = require("vmsnap.time")

local W = {}

W.kind = "VirtualMachineSnapshot"
W.finalizer = "virtualization.deckhouse.io/vmsnapshot-protection"
W.SECRET_TYPE = secret_format.TYPE
W.condition = "VirtualMachineSnapshotReady"
W.failed_reason = "VirtualMachineSnapshotFailed"
W.reasons = { HookFailed = "HookFailed", Lost = "VirtualDiskSnapshotLost" }
W.events = { failed = "VirtualMachineSnapshottingFailed",
  wait = { Pending = "VirtualMachineSnapshottingPending", InProgress = "VirtualMachineSnapshottingInProgress" } }

local G = "virtualization.deckhouse.io/v1alpha2"
local VM = "virtualmachines.virtualization.deckhouse.io"
local VD = "virtualdisks.virtualization.deckhouse.io"
local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VMIP = "virtualmachineipaddresses.virtualization.deckhouse.io"
local VMBDA = "virtualmachineblockdeviceattachments.virtualization.deckhouse.io"
local VS = "volumesnapshots.snapshot.storage.k8s.io"
local COND_VM = "VirtualMachineReady"

-- Messages in the reference's wording, kept verbatim.
W.MSG = {
  VM_NOT_FOUND = "The virtual machine %q not found.",
  VM_DELETING = "The virtual machine %q is in process of deletion.",
  VM_PHASE = "The virtual machine %q is in the %q phase: waiting for it to reach the Running or Stopped phase.",
  NOT_DETECTED = "The VirtualMachineSnapshot resource has not been detected for the virtual machine yet.",
  STARTED = "The snapshotting process has started.",
  FROZEN = "The virtual machine %q is frozen for taking a snapshot.",
  THAWED = "The virtual machine %q is thawed.",
  PROGRESS = "Waiting for the virtual disk snapshots to be taken for the block devices of the virtual machine %q (%d/%d).",
  CHILD_FAILED = "the virtual disk snapshot %q is failed: cannot take snapshot. %s",
  LOST_ONE = "The underlying virtual disk snapshot (%s) is lost.",
  LOST_MANY = "The underlying virtual disk snapshots (%s) are lost.",
  COMPLETED = "The snapshotting process is completed.",
  NO_VMIP = "the virtual machine ip address %q not found",
  STATIC_UNNAMED = "not possible to use static ip address with omitted .spec.VirtualMachineIPAddress, please report a bug",
  NO_PROVISIONING = "the virtual machine provisioning secret %q not found",
  NO_VMBDA = "the virtual machine block device attachment %q not found",
  SECRET_FAILED = "failed to create restorer secret: %s",
}
local MSG = W.MSG

-- ------------------------------------------------------------ every pass

--- The VM's disks (status.blockDeviceRefs of kind VirtualDisk, hot-plugged
--- ones too), each {name, vd, pvc_name, pvc}.
function W.disks(ctx, vm)
  local ns = vm.metadata.namespace
  local out = {}
  for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then
      local d = { name = r.name, vd = ctx:fetch(VD, ns, r.name) }
      local target = d.vd and d.vd.status and d.vd.status.target
      d.pvc_name = target and target.persistentVolumeClaimName or ""
      if d.pvc_name ~= "" then d.pvc = ctx:fetch("persistentvolumeclaims", ns, d.pvc_name) end
      out[#out + 1] = d
    end
  end
  return out
end

--- The facts of a pass: the VM, its disks, the children; and the
--- VirtualMachineReady condition (b.4.1).
function W.observe(ctx, vms)
  local ns = vms.metadata.namespace
  local f = { vm = ctx:fetch(VM, ns, vms.spec.virtualMachineName) }
  f.disks = f.vm and W.disks(ctx, f.vm) or {}
  f.children = {}
  for i, n in ipairs(vms.status.virtualDiskSnapshotNames or {}) do f.children[i] = ctx:fetch(VDS, ns, n) or false end
  W.virtual_machine_ready(ctx, vms, f.vm)
  return f
end

--- b.4.1: the VirtualMachineReady condition.
function W.virtual_machine_ready(ctx, vms, vm)
  local name = vms.spec.virtualMachineName
  local function no(msg) return ctx:condition(COND_VM, "False", "VirtualMachineNotReadyForSnapshotting", msg) end
  if vms.status.phase == "Ready" then return ctx:condition(COND_VM, "True", "VirtualMachineReady", "") end
  if not vm then return no(MSG.VM_NOT_FOUND:format(name)) end
  if vm.metadata.deletionTimestamp then return no(MSG.VM_DELETING:format(name)) end
  local phase = vm.status and vm.status.phase or ""
  if phase ~= "Running" and phase ~= "Stopped" then return no(MSG.VM_PHASE:format(name, phase)) end
  local s = object.condition(vm, "Snapshotting")
  if not (s and s.status == "True") then return no(s and s.message ~= "" and s.message or MSG.NOT_DETECTED) end
  return ctx:condition(COND_VM, "True", "VirtualMachineReady", "")
end

--- While Ready (b.4.2 step 5): every child must still exist.
function W.ready(ctx, vms, facts)
  local missing = {}
  for i, n in ipairs(vms.status.virtualDiskSnapshotNames or {}) do
    if not facts.children[i] then missing[#missing + 1] = n end
  end
  if #missing == 1 then return nil, MSG.LOST_ONE:format(missing[1]), "Lost" end
  if #missing > 1 then return nil, MSG.LOST_MANY:format(table.concat(missing, ", ")), "Lost" end
  ctx:condition(W.condition, "True", "VirtualMachineSnapshotReady", "")
  return true
end

-- ------------------------------------------------------------ hooks

--- The hooks of this snapshot (selected by the VM), once per pass; nil,
--- message, "HookFailed" when they cannot be selected.
function W.hooks(ctx, vms, vm)
  if not ctx.hook_runner then
    local r, err, code = hooks.runner({ client = ctx.client, ctx = ctx, vm = vm, object = vms })
    if not r then return nil, err, code end
    ctx.hook_runner = r
  end
  return ctx.hook_runner
end

-- run a hook point once for this snapshot
local function run_hooks(ctx, vms, vm, point)
  local hr, err, code = W.hooks(ctx, vms, vm)
  if not hr then return nil, err, code end
  if hr:done(point) then return true end
  return hr:run(point)
end

-- the partners owed (post_thaw, post_snapshot) run, newest first
local function unwind_hooks(ctx, vms, vm, point, outcome)
  local hr = W.hooks(ctx, vms, vm)
  if not hr or not hr:any(point) then return true end
  return hr:unwind(point, outcome)
end

-- ------------------------------------------------------------ the Secret (b.4.3)

--- The VM's IP address object as the Secret keeps it (nil: nothing kept).
function W.stored_ip(ctx, vms, vm)
  local ipname = vm.status and vm.status.virtualMachineIPAddressName or ""
  if ipname == "" then return nil end -- no main network: nothing to keep
  local ip = ctx:fetch(VMIP, vm.metadata.namespace, ipname)
  if not ip then return nil, MSG.NO_VMIP:format(ipname), "NotFound" end
  ip = secret_format.stored(ip, G, "VirtualMachineIPAddress")
  local named = (vm.spec.virtualMachineIPAddressName or "") ~= ""
  if ip.spec.type == "Static" then
    if not named then return nil, MSG.STATIC_UNNAMED, "Invalid" end
    return ip
  end
  if vms.spec.keepIPAddress == "Never" then return named and ip or nil end
  -- Always + Auto: a copy converted to Static (the live object is not touched)
  ip.spec.type = "Static"
  ip.spec.staticIP = ip.status and ip.status.address
  return ip
end

--- The objects the Secret keeps: {vm, vmip, provisioner, vmbdas}.
function W.secret_objects(ctx, vms, vm)
  local ns = vm.metadata.namespace
  local objs = { vm = secret_format.stored(vm, G, "VirtualMachine"), vmbdas = {} }
  local ip, err, code = W.stored_ip(ctx, vms, vm)
  if err then return nil, err, code end
  objs.vmip = ip
  local prov = vm.spec.provisioning
  if prov and prov.type ~= "UserData" then
    local ref = prov.type == "SysprepRef" and prov.sysprepRef or prov.userDataRef
    if not ref then return nil, ("the virtual machine provisioning %s is empty"):format(tostring(prov.type)), "Invalid" end
    if ref.kind ~= "Secret" then return nil, ("unknown provisioning reference kind %q"):format(tostring(ref.kind)), "Invalid" end
    local sec = ctx:fetch("secrets", ns, ref.name)
    if not sec then return nil, MSG.NO_PROVISIONING:format(ref.name), "NotFound" end
    objs.provisioner = secret_format.stored(sec, "v1", "Secret")
  end
  for _, r in ipairs(vm.status.blockDeviceRefs or {}) do
    if r.hotplugged then
      local name = r.virtualMachineBlockDeviceAttachmentName or ""
      local b = name ~= "" and ctx:fetch(VMBDA, ns, name) or nil
      if not b then return nil, MSG.NO_VMBDA:format(name), "NotFound" end
      objs.vmbdas[#objs.vmbdas + 1] = secret_format.stored(b, G, "VirtualMachineBlockDeviceAttachment")
    end
  end
  return objs
end

-- ------------------------------------------------------------ children

--- The name of the child of a disk: `<disk>-<snapshot uid>` (b.4.2 step 14).
function W.child_name(vms, disk) return object.bounded_name(disk, vms.metadata.uid) end

--- Where a child's class goes when the served VirtualDiskSnapshot has no
--- spec.volumeSnapshotClassName (the current upstream CRD dropped it).
W.CLASS_ANNOTATION = csi.CHILD_CLASS_ANNOTATION
--- The annotation of a child that holds its disk's labels and annotations.
W.DISK_METADATA = secret_format.DISK_METADATA

--- The child VirtualDiskSnapshot of one disk, as it is created. The class is
--- in spec.volumeSnapshotClassName, or — on a server whose schema lacks it
--- (ctx.memo.no_class_field, learnt by the first create) — in an annotation: a
--- field the served schema lacks is never sent.
---
--- Each child records the disk's own labels and annotations of the moment
--- (W.DISK_METADATA, JSON {labels, annotations}), so a restored disk gets
--- them back (Decision 13; the reference restores disks without them).
function W.child_of(ctx, vms, d, marks)
  local class = ctx.memo.classes[d.name]
  local ann = {}
  for k, v in pairs(marks or {}) do ann[k] = v end
  if ctx.memo.no_class_field and class then ann[W.CLASS_ANNOTATION] = class end
  local md = d.vd and d.vd.metadata
  if md and (next(md.labels or {}) or next(md.annotations or {})) then
    ann[W.DISK_METADATA] = json.encode({ labels = md.labels, annotations = md.annotations })
  end
  if not next(ann) then ann = nil end
  return { apiVersion = G, kind = "VirtualDiskSnapshot",
    metadata = { name = W.child_name(vms, d.name), namespace = vms.metadata.namespace, annotations = ann,
      ownerReferences = json.array({ object.owner_ref(vms, G, W.kind) }) },
    spec = { virtualDiskName = d.name, volumeSnapshotClassName = not ctx.memo.no_class_field and class or nil,
      requiredConsistency = vms.spec.requiredConsistency ~= false } }
end

-- ------------------------------------------------------------ the steps

--- Every gate: the files in preconditions/ for vm-snapshot.
function W.gates(ctx, vms, facts)
  if not facts.vm then
    return steps.wait("WaitingForTheVirtualMachine",
      ("Waiting for the virtual machine %q to be ready for snapshotting."):format(vms.spec.virtualMachineName))
  end
  return workflow.gates("vm-snapshot", ctx, vms, facts, "WaitingForTheVirtualMachine")
end

--- pre_snapshot hooks, then InProgress (the status is written at once: the
--- VM shows Snapshotting/SnapshottingInProgress before anything is done).
function W.start(ctx, vms, facts)
  local ok, err, code = run_hooks(ctx, vms, facts.vm, "pre_snapshot")
  if not ok then return nil, err, code end
  vms.status.phase = "InProgress"
  ctx:event("Normal", "VirtualMachineSnapshottingStarted", MSG.STARTED)
  ctx:condition(W.condition, "False", "FileSystemFreezing", MSG.STARTED)
  return steps.pause()
end

-- the snapshot_failed hooks, once
local function failed_hooks(ctx, vms, vm)
  local hr = W.hooks(ctx, vms, vm)
  if hr and not hr:done("snapshot_failed") and hr:any("snapshot_failed") then
    hr:mark_done("snapshot_failed")
    hr:run("snapshot_failed", "Failed")
  end
end

--- The start's undo, when the snapshot ends: the children it was to issue
--- a VolumeSnapshot for and did not are told so (the verdict "none": they
--- fail), snapshot_failed (on failure), then post_snapshot.
function W.finish_hooks(ctx, vms, outcome, facts)
  for _, child in ipairs(facts.children or {}) do
    if child and freezes.issued_by_parent(child) and object.annotation(child, freezes.CUT) == nil
        and object.owned_by(child, vms) and not ctx:fetch(VS, child.metadata.namespace, child.metadata.name) then
      local ok, err, code = W.verdict(ctx, child, "none")
      if not ok then return nil, err, code end
    end
  end
  if outcome == "Failed" then failed_hooks(ctx, vms, facts.vm) end
  return unwind_hooks(ctx, vms, facts.vm, "post_snapshot", outcome)
end

--- A snapshot that failed before it started still runs snapshot_failed.
function W.on_failed(ctx, vms)
  failed_hooks(ctx, vms, ctx.steps.facts.vm)
end

--- b.4.2 step 13: the Secret with the VM's definition, before the freeze
--- (the freeze window holds only the cuts).
function W.store(ctx, vms, facts)
  local ns = vms.metadata.namespace
  local objs, err, code = W.secret_objects(ctx, vms, facts.vm)
  if not objs then return nil, err, code end
  local secret = { apiVersion = "v1", kind = "Secret", type = secret_format.TYPE,
    metadata = { name = vms.metadata.name, namespace = ns, ownerReferences = json.array({ object.owner_ref(vms, G, W.kind) }) },
    data = secret_format.encode(objs) }
  local res, cerr, ccode = ctx.client:create(secret)
  if not res and ccode == "AlreadyExists" then
    -- ours, from a pass that was not recorded?
    res = ctx:fetch("secrets", ns, vms.metadata.name)
    if not (res and object.owned_by(res, vms)) then return nil, MSG.SECRET_FAILED:format(cerr), "AlreadyExists" end
  elseif not res then
    return nil, MSG.SECRET_FAILED:format(cerr), ccode
  end
  vms.status.virtualMachineSnapshotSecretName = res.metadata.name
  return true
end

--- Does the snapshot freeze the guest: a VM that is not Stopped, and can
--- be frozen (Running with its agent, or frozen already)?
function W.needs_freeze(ctx, vms, facts)
  local vm = facts.vm
  if not vm or ctx.memo.issued ~= nil then return false end
  -- children made for no freeze of this snapshot (its VM was stopped then)
  -- go on as disk snapshots, each with its own freeze if its VM started
  local made, marked = false, false
  for _, child in ipairs(facts.children or {}) do
    if child then
      made = true
      marked = marked or freezes.issued_by_parent(child)
    end
  end
  if made and not marked then return false end
  local ok, phase = freezes.can_freeze(vm)
  return ok and phase ~= "Stopped"
end

--- b.4.2 step 12: one freeze for the whole VM (or the freeze it is under),
--- between the pre_freeze and post_freeze hooks.
function W.freeze(ctx, vms, facts)
  local vm = facts.vm
  -- a freeze slot first (the caps: docs/schedules.md "Concurrency"), so that
  -- no pre_freeze hook holds a database while the snapshot queues (also
  -- after a restart: the mark of a freeze the dead process made is no freeze)
  if not freezes.held_here(vms, vm) then
    local sok, why = freezes.slot(ctx, vms, freezes.current(ctx, vm))
    if not sok then return steps.wait("FreezeQueued", why, 0.5) end
  end
  local ok, err, code = run_hooks(ctx, vms, vm, "pre_freeze")
  if not ok then
    freezes.release_slot(vm)
    return nil, err, code
  end
  local fok, how, freeze = freezes.freeze_or_join(ctx, vms, vm)
  if not fok then
    if freeze == "QUEUED" then return steps.wait("FreezeQueued", how, 0.5) end
    if freeze == "BUSY" then return steps.wait("FileSystemFreezing", steps.sentence(how), 1) end
    if errors.is_transient(freeze) then return nil, how, freeze end
    return nil, ("freeze the virtual machine %q: %s"):format(vm.metadata.name, tostring(how)), freeze
  end
  ctx.memo.freeze = freeze
  if how ~= "held" then ctx:event("Normal", "VirtualMachineSnapshottingFrozen", MSG.FROZEN:format(vm.metadata.name)) end
  return run_hooks(ctx, vms, vm, "post_freeze")
end

-- the children owed a verdict on their cut: those whose VolumeSnapshot this
-- snapshot issued (freezes.BY_PARENT), each with its VolumeSnapshot's state
-- and the freeze it was issued under
local function judged_children(ctx, vms, facts)
  local out = {}
  for _, child in ipairs(facts.children) do
    if child and freezes.issued_by_parent(child) and object.owned_by(child, vms)
        and object.annotation(child, freezes.CUT) == nil then
      local vs = ctx:fetch(VS, child.metadata.namespace, child.metadata.name)
      local at = vs and freezes.frozen_at(vs)
      if at then out[#out + 1] = { child = child, at = at, state = csi.state(vs) } end
    end
  end
  return out
end

--- Tell a child what became of its cut (freezes.CUT): "consistent",
--- "inconsistent", or "none" (this snapshot ended before it issued the
--- child's VolumeSnapshot). A child gone needs no verdict.
function W.verdict(ctx, child, verdict)
  local _, err, code = ctx.client:patch(VDS, child.metadata.name,
    { metadata = { annotations = { [freezes.CUT] = verdict } } }, { namespace = child.metadata.namespace })
  if err and code ~= "NotFound" then return nil, err, code end
  return true
end

--- The freeze's undo: leave it (the thaw, unless another holder needs it;
--- forced at the budget), tell each child whether its cut was consistent,
--- then the post_thaw hooks owed.
function W.thaw(ctx, vms, outcome, facts)
  local vm = facts.vm
  local children = judged_children(ctx, vms, facts)
  local left_frozen = freezes.frozen_at(vms) ~= nil
  -- each child's verdict, before the thaw: its cut is seen, under this freeze
  local freeze = ctx.memo.freeze
  local held = freezes.held_now(ctx, vms, vm, freeze)
  local verdicts = {}
  for i, e in ipairs(children) do
    local st = e.state
    local cut = freezes.thaw_at_ready(vms) and st.ready or (not freezes.thaw_at_ready(vms) and st.cut)
    local this = freeze and tonumber(freeze.at) == e.at
    verdicts[i] = (held and this and cut and not st.error) and "consistent" or "inconsistent"
  end
  local ok, err, code = freezes.leave(ctx, vms, vm, { force = outcome == "Budget",
    -- (its children whose VolumeSnapshots it issued hold no freeze of their own)
    skip = function(s) return object.owned_by(s, vms) and freezes.issued_by_parent(s) end, freeze = ctx.memo.freeze })
  if not ok then return nil, err, code end
  if left_frozen and vm then ctx:event("Normal", "VirtualMachineSnapshottingThawed", MSG.THAWED:format(vm.metadata.name)) end
  for i, e in ipairs(children) do
    local ok, err, code = W.verdict(ctx, e.child, verdicts[i])
    if not ok then return nil, err, code end
  end
  return unwind_hooks(ctx, vms, vm, "post_thaw", outcome)
end

--- b.4.2 step 14, before the freeze (Decisions 3, 9): every child, created
--- while the guest still runs (the server accepting them is proved before the
--- guest is touched, and their own controllers' first passes are done by the
--- time the freeze answers). When this snapshot will freeze, each child is
--- marked freezes.BY_PARENT: this snapshot issues its VolumeSnapshot under
--- the freeze and judges its cut; the child itself neither freezes nor issues.
function W.children(ctx, vms, facts)
  local names = json.array()
  for i, d in ipairs(facts.disks) do names[i] = W.child_name(vms, d.name) end
  vms.status.virtualDiskSnapshotNames = names
  local marks = { [freezes.BUDGET] = tostring(freezes.budget(vms)),
    [freezes.THAW_AT] = freezes.thaw_at_ready(vms) and "Ready" or nil,
    [freezes.BY_PARENT] = W.needs_freeze(ctx, vms, facts) and "true" or nil }
  local failure, tasks = nil, {}
  for i, d in ipairs(facts.disks) do
    if not facts.children[i] then
      tasks[#tasks + 1] = task.spawn(function()
        local child = W.child_of(ctx, vms, d, marks)
        local res, err, code = ctx.client:create(child)
        if not res and not ctx.memo.no_class_field and child.spec.volumeSnapshotClassName
            and tostring(err):find('unknown field "spec.volumeSnapshotClassName"', 1, true) then
          -- the served schema has no such field (the upstream CRD): the class
          -- goes in an annotation, and the create is made again
          ctx.memo.no_class_field = true
          child = W.child_of(ctx, vms, d, marks)
          res, err, code = ctx.client:create(child)
        end
        if not res and code == "AlreadyExists" then
          -- ours, from a pass that was not recorded?
          res, err, code = ctx.client:get(VDS, child.metadata.name, { namespace = child.metadata.namespace })
          if res and not object.owned_by(res, vms) then
            res, err, code = nil, ("the virtual disk snapshot %q exists and is not this snapshot's"):format(
              child.metadata.name), "AlreadyExists"
          end
        end
        if not res then
          failure = failure or { ("create the virtual disk snapshot %q: %s"):format(child.metadata.name, tostring(err)), code }
          return
        end
        facts.children[i] = res
      end)
    end
  end
  task.wait_all(tasks)
  if failure then return nil, failure[1], failure[2] end
  return true
end

-- the children whose VolumeSnapshot this snapshot issues
-- (each with its disk, by name: the VM's disks may have changed since the
-- children were made)
local function by_parent(vms, facts)
  local disks, out = {}, {}
  for _, d in ipairs(facts.disks) do disks[d.name] = d end
  for _, child in ipairs(facts.children) do
    if child and freezes.issued_by_parent(child) and object.owned_by(child, vms) then
      out[#out + 1] = { child = child, disk = disks[child.spec.virtualDiskName] }
    end
  end
  return out
end

--- Decision 3: under the freeze, every child's VolumeSnapshot at once (one
--- task per disk), each marked with the freeze it was issued under. A
--- snapshot that did not freeze after all (its VM stopped meanwhile) gives
--- its children back their own VolumeSnapshots: the mark says "false".
function W.issue(ctx, vms, facts)
  -- (the freeze held now: one given back since is no freeze to issue under)
  local freeze = steps.owed(ctx, "freeze") and ctx.memo.freeze or nil
  local disk_wf = assert(workflow.load("disk-snapshot"))
  local failure, tasks = nil, {}
  for _, e in ipairs(by_parent(vms, facts)) do
    local child, d = e.child, e.disk
    -- (no look-up first: a VolumeSnapshot issued by an earlier pass is
    -- AlreadyExists, and kept; its mark says the freeze it was issued under)
    tasks[#tasks + 1] = task.spawn(function()
      local res, err, code
      if freeze and not (d and d.vd and d.pvc_name ~= "") then
        err, code = ("the virtual disk %q is not a ready block device of the virtual machine %q any more"):format(
          child.spec.virtualDiskName, vms.spec.virtualMachineName), "NotFound"
      elseif freeze then
        res, err, code = disk_wf.issue_volume_snapshot(ctx.client, child, { vd = d.vd, pvc = d.pvc },
          child.spec.volumeSnapshotClassName or ctx.memo.classes[child.spec.virtualDiskName], freeze.at)
      elseif not ctx:fetch(VS, child.metadata.namespace, child.metadata.name) then
        res, err, code = ctx.client:patch(VDS, child.metadata.name,
          { metadata = { annotations = { [freezes.BY_PARENT] = "false" } } }, { namespace = child.metadata.namespace })
        if not res and code == "NotFound" then res = true end
      else
        res = true
      end
      if not res then failure = failure or { err, code } end
    end)
  end
  task.wait_all(tasks)
  if failure then return nil, failure[1], failure[2] end
  ctx.memo.issued = freeze and freeze.at or false
  freezes.note(freeze, "issued")
  return true
end

-- the children's VolumeSnapshots: all cut? all ready? the first error
local function cuts(ctx, vms)
  local all_cut, all_ready = true, true
  for _, n in ipairs(vms.status.virtualDiskSnapshotNames or {}) do
    local st = csi.state(ctx:fetch(VS, vms.metadata.namespace, n))
    if st.error then return false, false, n, st.error end
    all_cut = all_cut and st.cut
    all_ready = all_ready and st.ready
  end
  return all_cut, all_ready
end

local function progress(vms, facts)
  local ready = 0
  for _, child in ipairs(facts.children) do
    if child and child.status and child.status.phase == "Ready" then ready = ready + 1 end
  end
  return steps.wait("Snapshotting", MSG.PROGRESS:format(vms.spec.virtualMachineName, ready, #facts.children))
end

local function child_failed(name, message)
  return nil, MSG.CHILD_FAILED:format(name, message or ""), "ChildFailed"
end

--- Decisions 3, 4, 8: wait until every VolumeSnapshot is cut (or ready with
--- thaw-at: Ready) or the budget is spent; judge the cut.
function W.cut(ctx, vms, facts)
  if not facts.vm then
    return nil, ("the virtual machine %q is gone while it was frozen for the snapshot"):format(vms.spec.virtualMachineName),
      "NotFound"
  end
  local all_cut, all_ready, bad, why = cuts(ctx, vms)
  if bad then
    local disk_wf = assert(workflow.load("disk-snapshot"))
    return child_failed(bad, disk_wf.MSG.VS_ERROR:format(bad, why))
  end
  local freeze = ctx.memo.freeze
  local reached, left = freezes.reached(vms, all_cut, all_ready, freeze)
  if reached then
    freezes.note(freeze, "cut")
    local held, hwhy = freezes.held_now(ctx, vms, facts.vm, freeze)
    ctx.memo.why = not held and hwhy or nil -- the thaw tells each child
    return true
  end
  if left > 0 then
    local w = progress(vms, facts)
    return steps.wait(w.reason, w.message, math.min(0.25, math.max(0.01, left)))
  end
  local why, err, code = freezes.overrun(ctx, vms, "freeze", "the volume snapshots were")
  if not why then return nil, err, code end
  ctx.memo.why = why
  if vms.spec.requiredConsistency ~= false then
    return nil, why .. ": the snapshot is not consistent", "Inconsistent"
  end
  return true
end

--- Leave the freeze: the thaw at the cut.
function W.thaw_at_cut(ctx)
  return steps.release(ctx, "freeze", "Cut")
end

--- b.4.2 step 16: every child Ready (a failed one fails the snapshot).
function W.wait_disks(ctx, vms, facts)
  local ready = 0
  for i, child in ipairs(facts.children) do
    if not child then return nil, ("the virtual disk snapshot %q not found"):format(vms.status.virtualDiskSnapshotNames[i]),
      "NotFound" end
    local c = object.condition(child, "VirtualDiskSnapshotReady")
    if (c and c.reason == "VirtualDiskSnapshotFailed") or (child.status and child.status.phase == "Failed") then
      return child_failed(child.metadata.name, c and c.message)
    end
    if child.status and child.status.phase == "Ready" then ready = ready + 1 end
  end
  if ready < #facts.children then return progress(vms, facts) end
  return true
end

--- b.4.2 step 19: status.resources.
function W.resources(ctx, vms, vm)
  local ns = vm.metadata.namespace
  local out = json.array()
  local function add(obj, api_version, kind)
    out[#out + 1] = { kind = obj.kind or kind, apiVersion = obj.apiVersion or api_version, name = obj.metadata.name }
  end
  add(vm, G, "VirtualMachine")
  local ipname = vm.status.virtualMachineIPAddressName or ""
  if vms.spec.keepIPAddress == "Always" and ipname ~= "" then
    local ip = ctx:fetch(VMIP, ns, ipname)
    if not ip then return nil, MSG.NO_VMIP:format(ipname), "NotFound" end
    add(ip, G, "VirtualMachineIPAddress")
  end
  local prov = vm.spec.provisioning
  local ref = prov and (prov.type == "SysprepRef" and prov.sysprepRef or prov.type == "UserDataRef" and prov.userDataRef)
  if ref and ref.kind == "Secret" then
    local sec = ctx:fetch("secrets", ns, ref.name)
    if sec then add(sec, "v1", "Secret") end
  end
  for _, r in ipairs(vm.status.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then
      local vd = ctx:fetch(VD, ns, r.name)
      if vd then add(vd, G, "VirtualDisk") end
      if (r.virtualMachineBlockDeviceAttachmentName or "") ~= "" then
        local b = ctx:fetch(VMBDA, ns, r.virtualMachineBlockDeviceAttachmentName)
        if b then add(b, G, "VirtualMachineBlockDeviceAttachment") end
      end
    end
  end
  return out
end

-- the freeze a child's cut was taken under (its VolumeSnapshot says it),
-- or false: none
local function cut_under(ctx, child)
  local vs = ctx:fetch(VS, child.metadata.namespace, child.metadata.name)
  return vs and freezes.frozen_at(vs) or false
end

local function freeze_text(at)
  if not at then return "no freeze" end
  return ("the freeze of %s (%s %d)"):format(vtime.format(math.floor(at / 1000)), freezes.FROZEN_AT, math.floor(at))
end

--- Decision 8 across the disks: the VM's disks are consistent together only
--- when they were cut at one moment — all under one freeze, or all with the
--- VM stopped (each child proved that of itself). A set cut under freezes of
--- their own (a VM stopped when its children were made and started before
--- all were cut; an agent that came late) is consistent disk by disk only.
--- Returns true, or false and why.
function W.one_cut(ctx, facts)
  local first, first_name
  for _, child in ipairs(facts.children) do
    if child then
      local at = cut_under(ctx, child)
      if first == nil then
        first, first_name = at, child.metadata.name
      elseif at ~= first then
        return false, ("the virtual disks were not cut at one moment: %q under %s, %q under %s"):format(
          first_name, freeze_text(first), child.metadata.name, freeze_text(at))
      end
    end
  end
  return true
end

--- b.4.2 steps 17-20: consistent when every child is and all were cut at
--- one moment, the resources, the post_snapshot hooks, Ready.
function W.finish(ctx, vms, facts)
  local consistent = true
  for _, child in ipairs(facts.children) do
    if not (child and child.status and child.status.consistent == true) then consistent = false end
  end
  if consistent then
    local why
    consistent, why = W.one_cut(ctx, facts)
    ctx.memo.why = ctx.memo.why or why
  end
  if not consistent and vms.spec.requiredConsistency ~= false then
    return nil, "the snapshot is not consistent: " .. (ctx.memo.why or "a virtual disk snapshot is not consistent"),
      "Inconsistent"
  end
  local ok, err, code = freezes.release_if_last(ctx, vms, facts.vm)
  if not ok then return nil, err, code end
  local res, rerr, rcode = W.resources(ctx, vms, facts.vm)
  if not res then return nil, rerr, rcode end
  vms.status.resources = res
  local hok, herr, hcode = steps.release(ctx, "start", "Ready")
  if not hok then return nil, herr, hcode end
  vms.status.consistent = consistent or nil
  vms.status.phase = "Ready"
  ctx:event("Normal", "VirtualMachineSnapshottingCompleted", MSG.COMPLETED)
  ctx:condition(W.condition, "True", "VirtualMachineReady", "") -- sic: the reference's reason at this moment
  return true
end

W.steps = steps.list({
  { name = "gates", phase = "Pending", run = W.gates, doc = "every precondition for vm-snapshot (preconditions/)" },
  { name = "start", phase = "Pending", run = W.start, undo = W.finish_hooks,
    doc = "pre_snapshot hooks; InProgress (undo: snapshot_failed, post_snapshot)" },
  { name = "store", run = W.store, doc = "the Secret with the VM's definition" },
  { name = "children", run = W.children, doc = "every child, before the guest is touched" },
  { name = "freeze", when = W.needs_freeze, run = W.freeze, undo = W.thaw, hold = true,
    doc = "pre_freeze hooks, one freeze for the VM, post_freeze hooks (undo: thaw, post_thaw)" },
  { name = "issue", run = W.issue, doc = "every child's VolumeSnapshot under the freeze, at once" },
  { name = "cut", when = function(ctx) return ctx.memo.freeze ~= nil and steps.owed(ctx, "freeze") end, run = W.cut,
    doc = "wait for every cut (or Ready) or the budget; judge the cut" },
  { name = "thaw", run = W.thaw_at_cut, doc = "leave the freeze: the last holder thaws" },
  { name = "disks", run = W.wait_disks, doc = "wait for every child to be Ready" },
  { name = "finish", run = W.finish, doc = "consistent, resources, post_snapshot hooks, Ready" },
})

-- ------------------------------------------------------------ watches

-- the snapshots still in progress, by "namespace/vm"
W.indexes = {
  active_by_vm = function(s)
    local ph = s.status and s.status.phase
    if ph == "Ready" or ph == "Failed" then return {} end
    return { s.metadata.namespace .. "/" .. s.spec.virtualMachineName }
  end,
}

--- What the controller watches (b.0.5): the VM, the children and their
--- VolumeSnapshots, the VM's disks.
function W.watches()
  local function of_vm(ctl, ns, vmname)
    local keys = {}
    for _, s in ipairs(ctl.primary:by_index("active_by_vm", ns .. "/" .. vmname)) do
      keys[#keys + 1] = ns .. "/" .. s.metadata.name
    end
    return keys
  end
  return {
    { kind = VM, map = function(vm, ctl) return of_vm(ctl, vm.metadata.namespace, vm.metadata.name) end },
    { kind = VDS, map = function(s)
      local o = object.owner(s, W.kind)
      return o and { s.metadata.namespace .. "/" .. o } or {}
    end },
    { kind = VS, map = function(vs, ctl)
      local vdsname = object.owner(vs, "VirtualDiskSnapshot")
      local inf = vdsname and ctl:informer_for(VDS)
      local child = inf and inf:get(vs.metadata.namespace, vdsname)
      local o = child and object.owner(child, W.kind)
      return o and { vs.metadata.namespace .. "/" .. o } or {}
    end },
    { kind = VD, map = function(vd, ctl)
      local keys = {}
      local inf = ctl:informer_for(VM)
      for _, vm in ipairs(inf and inf:list(vd.metadata.namespace) or {}) do
        for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or {}) do
          if r.kind == "VirtualDisk" and r.name == vd.metadata.name then
            for _, k in ipairs(of_vm(ctl, vm.metadata.namespace, vm.metadata.name)) do keys[#keys + 1] = k end
          end
        end
      end
      return keys
    end },
  }
end

return W
