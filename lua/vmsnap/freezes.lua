--- vmsnap.freezes: who holds a VM's freeze, and what a cut under it proves
--- (docs/behaviour.md, Decisions 3, 4 and 8).
---
--- One freeze of a guest serves every snapshot of the VM's disks that is in
--- progress at the time: the disk snapshots of its disks, a VM snapshot and
--- its children. A snapshot that relies on the freeze carries the mark
--- `vmsnap.io/frozen-at` (the freeze's identity: ms since the epoch, the
--- `at` of the VM's freeze lease) from the moment it freezes or joins to the
--- moment it leaves. The holders of a freeze are the marked snapshots, and
--- the snapshots in progress that have not frozen yet and will join (the
--- lease still has budget left): the last holder out thaws. Freezing,
--- joining and leaving are decided under the VM's lock (guest.lock), so of
--- several holders leaving at once exactly one finds itself last.
---
--- A cut (a VolumeSnapshot's creationTime) proves consistency only when it
--- was seen while the snapshot still held the freeze that was live when its
--- VolumeSnapshot was issued, before that freeze's deadline: every thaw comes
--- after the last holder's cut was seen, or at the deadline (the budget, the
--- server's unfreeze timeout, the launcher's).
local json = require("vmsnap.json")
local guest = require("vmsnap.guest")
local vtime = require("vmsnap.time")
local steps = require("vmsnap.reconcile.steps")
local object = require("vmsnap.k8s.object")
local log = require("vmsnap.log")
local metrics = require("vmsnap.metrics")
local csi = require("vmsnap.csi")

local M = {}

local flog = log.new("freeze")
local FREEZE_BUCKETS = { 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 }
local fam -- (vmsnap_guest_frozen is the guest's own: vmsnap.guest)
local function families()
  if fam then return fam end
  local reg = metrics.process()
  fam = {
    waiting = reg:gauge("vmsnap_freeze_slot_waiters",
      "Snapshots waiting for a freeze slot (the --max-frozen caps) in this process.", {}),
    duration = reg:histogram("vmsnap_freeze_duration_seconds",
      "Seconds a guest was frozen, from the freeze call to the thaw's answer.", { "vm" }, FREEZE_BUCKETS),
    cut = reg:histogram("vmsnap_cut_latency_seconds",
      "Seconds from the last VolumeSnapshot issued under a freeze to its cut seen.", {}, FREEZE_BUCKETS),
  }
  return fam
end

-- "ns/name" of a VM; what a log line says of a snapshot
local function vm_key(vm) return (vm.metadata.namespace or "") .. "/" .. vm.metadata.name end
local function about(obj)
  return { by = ("%s %s/%s"):format(obj.kind or "?", obj.metadata.namespace or "", obj.metadata.name), uid = obj.metadata.uid }
end

M.FROZEN_AT = "vmsnap.io/frozen-at"             -- the freeze held (ms since the epoch)
M.FREEZE_DURATION = "vmsnap.io/freeze-duration-ms"
M.FREEZE_PARTS = "vmsnap.io/freeze-parts-ms"    -- "freeze=58 issue=12 cut=203 thaw=9" (M.parts)
M.FREEZE_HELD = "vmsnap.io/freeze-held"         -- FROZEN_AT's value once left: which freeze it held
                                                -- (its other holders share it: `vmsnap describe`)
M.THAW_AT = "vmsnap.io/thaw-at"                 -- "Cut" (default) or "Ready"
M.BUDGET = "vmsnap.io/freeze-budget"            -- seconds (default 30)
M.CUT = "vmsnap.io/cut"                         -- a VM snapshot's verdict on its child's cut:
                                                -- "consistent", "inconsistent", or "none"
                                                -- (it ended before it issued the child's VolumeSnapshot)
M.BY_PARENT = "vmsnap.io/issued-by-parent"      -- "true" on a VM snapshot's child: the VM snapshot
                                                -- issues its VolumeSnapshot (marked FROZEN_AT: the
                                                -- freeze it was issued under) and judges its cut

local VDS = "virtualdisksnapshots.virtualization.deckhouse.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local VM = "virtualmachines.virtualization.deckhouse.io"

local function annotation(obj, key)
  return obj.metadata.annotations and obj.metadata.annotations[key]
end

--- Is the VM frozen, as the snapshot controllers see it: FilesystemFrozen
--- True with reason Frozen?
function M.vm_frozen(vm)
  for _, c in ipairs(vm and vm.status and vm.status.conditions or {}) do
    if c.type == "FilesystemFrozen" then return c.status == "True" and c.reason == "Frozen" end
  end
  return false
end

--- Can the guest of `vm` be frozen for a snapshot now: Running with its
--- agent ready, or frozen already (a snapshot joins that freeze)? Also the
--- VM's phase and whether its agent is ready.
function M.can_freeze(vm)
  local phase = vm.status and vm.status.phase or ""
  local agent = object.is_true(vm, "AgentReady")
  return (phase == "Running" and agent) or M.vm_frozen(vm), phase, agent
end

--- The freeze budget of a snapshot, in seconds (annotation, default 30).
function M.budget(obj)
  local b = tonumber(annotation(obj, M.BUDGET) or "")
  return b and b > 0 and b or 30
end

--- Does the snapshot thaw at Ready (annotation `vmsnap.io/thaw-at: Ready`)
--- rather than at the cut?
function M.thaw_at_ready(obj)
  return annotation(obj, M.THAW_AT) == "Ready"
end

--- The freeze this snapshot holds: its identity (ms since the epoch), or nil.
function M.frozen_at(obj)
  return tonumber(annotation(obj, M.FROZEN_AT) or "")
end

--- Is `obj` a VM snapshot's child whose VolumeSnapshot its parent issues
--- (M.BY_PARENT "true"; "false" once given back)?
function M.issued_by_parent(obj)
  return annotation(obj, M.BY_PARENT) == "true"
end

--- Has the snapshot frozen (or joined) and left already?
function M.left(obj)
  return annotation(obj, M.FREEZE_DURATION) ~= nil
end

-- the VM's disks, by name
local function disks_of(vm)
  local disks = {}
  for _, r in ipairs(vm.status and vm.status.blockDeviceRefs or vm.spec and vm.spec.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then disks[r.name] = true end
  end
  return disks
end

--- The VM as this process sees it now: from the cache, which has this
--- process's own writes (a lease taken earlier in the same pass), or `vm`.
function M.current(ctx, vm)
  return vm and (ctx:get(VM, vm.metadata.namespace, vm.metadata.name) or vm) or nil
end

local function in_progress(s)
  return s.status and s.status.phase == "InProgress" and not s.metadata.deletionTimestamp and not M.left(s)
end

--- The holders of the VM's freeze other than those `skip(obj)` leaves out:
--- marked snapshots, and in-progress ones that will join it (when the lease
--- is joinable). Read from the process's cache where it has the kinds,
--- else from the API.
---
--- Will join: a disk snapshot that has not issued its VolumeSnapshot yet
--- (one issued without a freeze is never followed by one), and is no VM
--- snapshot's child whose parent issues it (the parent holds the freeze for
--- it); a VM snapshot that has not made its children yet, or made them to
--- issue their VolumeSnapshots itself (marked M.BY_PARENT) — one whose
--- children are not marked does not freeze (its VM was stopped, or could not
--- be frozen, when it made them).
---@param ctx vmsnap.reconcile.Context
function M.holders(ctx, vm, skip)
  vm = M.current(ctx, vm)
  local ns = vm.metadata.namespace
  local disks = disks_of(vm)
  local lease = guest.parse_lease(vm)
  local joinable = lease ~= nil and guest.lease_joinable(lease)
  local out, freezing_parents = {}, {}
  local function take(s, will_join)
    if skip and skip(s) then return end
    if M.frozen_at(s) or (joinable and will_join and in_progress(s)) then out[#out + 1] = s end
  end
  for _, s in ipairs(ctx:list(VDS, ns)) do
    if disks[s.spec.virtualDiskName] then
      local by_parent = M.issued_by_parent(s)
      if by_parent then
        local parent = object.owner(s, "VirtualMachineSnapshot")
        if parent then freezing_parents[parent] = true end
      end
      take(s, not by_parent and ((s.status or {}).volumeSnapshotName or "") == "")
    end
  end
  for _, s in ipairs(ctx:list(VMS, ns)) do
    if s.spec.virtualMachineName == vm.metadata.name then
      take(s, (s.status or {}).virtualDiskSnapshotNames == nil or freezing_parents[s.metadata.name] == true)
    end
  end
  return out
end

local function same(a, b) return a.kind == b.kind and a.metadata.name == b.metadata.name end

--- May `obj` thaw the VM: nobody else holds its freeze?
function M.can_unfreeze(ctx, obj, vm, skip)
  if not vm then return false end
  local others = M.holders(ctx, vm, function(s) return same(s, obj) or (skip ~= nil and skip(s)) end)
  return #others == 0
end

-- the mark, written through the pass's context when obj is its object
local function mark(ctx, obj, values)
  if ctx.obj == obj then return ctx:annotate(values) end
  local res, err, code = ctx.client:patch(obj, obj.metadata.name, { metadata = { annotations = values } },
    { namespace = obj.metadata.namespace })
  if not res then return nil, err, code end
  obj.metadata.annotations = res.metadata.annotations
  obj.metadata.resourceVersion = res.metadata.resourceVersion
  return true
end

-- VM key -> the `at` of the freeze this process made there and saw
-- answered (a lease is joinable, and a cut under it proves anything, only
-- for that freeze)
local confirmed = {}

-- join the freeze a lease of this process records (one it saw answered)
local function join(ctx, obj, g, lease, budget)
  local since = guest.lease_since(lease) or vtime.now()
  local at = tonumber(lease.at) or math.floor(since * 1000)
  local ok, merr, mcode = mark(ctx, obj, { [M.FROZEN_AT] = tostring(at) })
  if not ok then return nil, merr, mcode end
  local now = vtime.now()
  local line = about(obj)
  line.vm, line.at = g.name, at
  flog:info("joined a freeze", line)
  return true, "joined", { at = at, deadline = math.min(since + (tonumber(lease.budget) or budget),
    now + budget), since = now, frozen = now }
end

-- ------------------------------------------------------------ freeze slots

M.MAX_FROZEN = "vmsnap.io/max-frozen"                       -- a snapshot's own caps (a schedule's)
M.MAX_FROZEN_PER_DRIVER = "vmsnap.io/max-frozen-per-driver"

--- The process's caps (the controllers' --max-frozen, --max-frozen-per-driver,
--- --max-in-flight-per-driver; docs/schedules.md "Concurrency"): at most
--- `frozen` guests frozen at once in the cluster, `frozen_per_driver` with a
--- disk on one CSI driver; a schedule starts a snapshot only while fewer than
--- `in_flight_per_driver` are in progress on each of its VM's drivers. 0: no cap.
M.limits = { frozen = 16, frozen_per_driver = 8, in_flight_per_driver = 32 }

local SC = "storageclasses.storage.k8s.io"
local VD = "virtualdisks.virtualization.deckhouse.io"
local provisioners = {} -- StorageClass name -> {provisioner, at}: a class's provisioner is immutable

--- The CSI drivers of a VM's disks (sorted; "unknown" for a disk whose class is not found).
function M.drivers_of(ctx, vm)
  local out, seen = {}, {}
  local default
  for _, r in ipairs(vm.spec and vm.spec.blockDeviceRefs or {}) do
    if r.kind == "VirtualDisk" then
      local vd = ctx:get(VD, vm.metadata.namespace, r.name)
      local scname = vd and (vd.status and vd.status.storageClassName
        or vd.spec and vd.spec.persistentVolumeClaim and vd.spec.persistentVolumeClaim.storageClassName)
      local d
      local known = scname and provisioners[scname]
      if known and vtime.now() - known.at < 300 then
        d = known.provisioner
      else
        local sc
        if scname then sc = ctx:get(SC, nil, scname)
        else
          default = default or csi.default_storage_class(ctx:list(SC)) or false
          sc = default or nil
        end
        d = sc and sc.provisioner or "unknown"
        if sc and scname then provisioners[scname] = { provisioner = d, at = vtime.now() } end
      end
      if not seen[d] then seen[d] = true out[#out + 1] = d end
    end
  end
  table.sort(out)
  return out
end

local waiters = {}  -- snapshot key -> {since, group, seen, K, KD, drivers, vm, wake}
local reserved = {} -- VM key -> {drivers, until}: granted, lease not taken yet
local granted = {}  -- VM key -> the group its slot was granted to (while it is frozen)
local WAITER_TTL = 5

local function cap_of(obj, key, global)
  local own = tonumber(annotation(obj, key) or "")
  local g = (global and global > 0) and global or nil
  if own and own >= 1 then return g and math.min(g, own) or own end
  return g
end

local function snap_key(obj) return (obj.kind or "") .. "/" .. (obj.metadata.namespace or "") .. "/" .. obj.metadata.name end

--- The guests frozen now, as this process knows them: VMs with a live
--- freeze lease (their drivers from it), and the slots granted here whose
--- lease is not written yet. Returns {[vm key] = drivers}, count.
function M.frozen_now(ctx)
  local out, n = {}, 0
  local now = vtime.now()
  for _, vm in ipairs(ctx:list(VM)) do
    local lease = guest.parse_lease(vm)
    if lease and not guest.lease_stale(lease) then
      out[vm_key(vm)] = type(lease.drivers) == "table" and lease.drivers or {}
      n = n + 1
    end
  end
  for k, r in pairs(reserved) do
    if r["until"] < now then reserved[k] = nil
    elseif not out[k] then out[k] = r.drivers n = n + 1 end
  end
  return out, n
end

--- May `obj` freeze `vm` now, under the caps (the process's and the
--- snapshot's own annotations)? Waiting snapshots are served fairly: round
--- robin over schedules (a manual snapshot is its own group), oldest first
--- within one. Returns true (the slot is held for it until its lease is
--- written, or M.release_slot), or nil, message, "QUEUED". A group's guests
--- frozen now count as its first places in the order, so one schedule's
--- many snapshots take turns with another's few.
function M.slot(ctx, obj, vm, drivers)
  local K = cap_of(obj, M.MAX_FROZEN, M.limits.frozen)
  local KD = cap_of(obj, M.MAX_FROZEN_PER_DRIVER, M.limits.frozen_per_driver)
  local me = snap_key(obj)
  local vk = vm_key(vm)
  if not K and not KD then waiters[me] = nil return true end
  local frozen, n = M.frozen_now(ctx)
  if frozen[vk] then waiters[me] = nil return true end -- frozen (or granted) already: it joins
  local now = vtime.now()
  drivers = drivers or M.drivers_of(ctx, vm)
  local group = obj.metadata.labels and obj.metadata.labels["vmsnap.io/schedule"]
  group = group and ((obj.metadata.namespace or "") .. "/" .. group) or ("manual:" .. me)
  local w = waiters[me] or { since = vtime.parse(annotation(obj, "vmsnap.io/scheduled-at"))
    or vtime.parse(obj.metadata.creationTimestamp) or now }
  w.group, w.seen, w.K, w.KD, w.drivers, w.vm = group, now, K, KD, drivers, vk
  -- woken when a slot frees (M.slot_freed); the wait's own recheck is the fallback
  local ctl, key = ctx.controller, (obj.metadata.namespace and (obj.metadata.namespace .. "/") or "") .. obj.metadata.name
  w.wake = ctl and ctl.queue and function() ctl.queue:add(key) end or nil
  waiters[me] = w
  -- the frozen guests per driver
  local per_driver = {}
  for _, ds in pairs(frozen) do
    for _, d in ipairs(ds) do per_driver[d] = (per_driver[d] or 0) + 1 end
  end
  local list = {}
  for k, x in pairs(waiters) do
    if now - x.seen > WAITER_TTL then waiters[k] = nil
    elseif frozen[x.vm] then waiters[k] = nil
    else list[#list + 1] = { key = k, w = x } end
  end
  families().waiting:set({}, #list)
  -- the fair order: each group's first waiter (oldest first), then each one's second, ...
  table.sort(list, function(a, b)
    if a.w.since ~= b.w.since then return a.w.since < b.w.since end
    return a.key < b.key
  end)
  -- a group's frozen guests count as its first places: fair shares, not turns
  local rank, seen_in = {}, {}
  for k, g in pairs(granted) do
    if frozen[k] then seen_in[g] = (seen_in[g] or 0) + 1 else granted[k] = nil end
  end
  for _, e in ipairs(list) do
    seen_in[e.w.group] = (seen_in[e.w.group] or 0) + 1
    rank[e.key] = seen_in[e.w.group]
  end
  table.sort(list, function(a, b)
    if rank[a.key] ~= rank[b.key] then return rank[a.key] < rank[b.key] end
    if a.w.since ~= b.w.since then return a.w.since < b.w.since end
    return a.key < b.key
  end)
  -- admit in that order, as the caps allow: those ahead keep their slots
  local total, vms_in = n, {}
  local why
  for _, e in ipairs(list) do
    local x = e.w
    local fits = not vms_in[x.vm] and (not x.K or total < x.K)
    local full_driver
    if fits and x.KD then
      for _, d in ipairs(x.drivers) do
        if (per_driver[d] or 0) >= x.KD then fits, full_driver = false, d end
      end
    end
    if e.key == me then
      if fits then
        waiters[me] = nil
        families().waiting:set({}, #list - 1)
        -- held until its lease is written or M.release_slot (pre_freeze hooks may
        -- take minutes); the time is only a net for a path that never returns
        reserved[vk] = { drivers = drivers, ["until"] = now + 900 }
        granted[vk] = group
        return true
      end
      if vms_in[x.vm] then
        why = "another snapshot of the VM goes first"
      elseif x.K and total >= x.K then
        why = ("%d of at most %d guests frozen or next to freeze (%d ahead in the queue)"):format(math.min(total, x.K), x.K,
          total - n)
      else
        why = ("%d of at most %d guests with a disk on %s frozen"):format(per_driver[full_driver] or 0, x.KD, full_driver)
      end
      return nil, "Waiting for a freeze slot: " .. why .. ".", "QUEUED"
    end
    if fits then
      total = total + 1
      vms_in[x.vm] = true
      for _, d in ipairs(x.drivers) do per_driver[d] = (per_driver[d] or 0) + 1 end
    end
  end
  return true
end

--- A slot may have freed (a thaw, a grant given back): the waiting
--- snapshots look again now.
function M.slot_freed()
  for _, w in pairs(waiters) do
    if w.wake then w.wake() end
  end
end

--- Give back a slot granted for a VM whose freeze did not happen (the
--- lease, once written, holds the slot itself).
function M.release_slot(vm)
  if reserved[vm_key(vm)] then
    reserved[vm_key(vm)] = nil
    M.slot_freed()
  end
end

-- drop a lease this process took: its slot frees with it
local function drop_lease(g, any)
  g:drop_lease(any)
  M.slot_freed()
end

--- Forget every waiter and grant (tests).
function M.reset_slots()
  waiters, reserved, granted = {}, {}, {}
end

--- Does `obj` hold a freeze of `vm` that this process made and saw
--- answered? (Its mark alone may be a dead process's: freeze_or_join takes
--- such a mark off and freezes anew, through a slot like any freeze.)
function M.held_here(obj, vm)
  local at = M.frozen_at(obj)
  return at ~= nil and vm ~= nil and confirmed[vm_key(vm)] == at
end

--- Freeze the VM for `obj`, or join the freeze it is under. Returns true,
--- how ("frozen", "joined", "foreign": frozen by something that left no
--- lease, "held": obj holds it already) and the freeze {at = ms, deadline =
--- seconds since the epoch}; or nil, message, code ("BUSY" while another
--- live process holds the freeze, or while our own one is at the end of its
--- budget: wait for the thaw and freeze anew).
---@param ctx vmsnap.reconcile.Context
function M.freeze_or_join(ctx, obj, vm)
  local _ <close> = guest.lock(vm, about(obj).by)
  local budget = M.budget(obj)
  local g, gerr, gcode = guest.for_vm(ctx.client, vm, { transport = "api" })
  if not g then return nil, gerr, gcode end
  local cur, err, code = g:refresh_vm()
  if not cur then return nil, err, code end
  local lease = guest.parse_lease(cur)
  local held = M.frozen_at(obj)
  local vk = vm_key(cur)
  if held and confirmed[vk] ~= held then
    -- the mark of a freeze this process never saw answered: the mark is
    -- written before the freeze call, so a process killed before the answer
    -- (or whose call never reached the guest) leaves it behind, and a guest
    -- whose freezer died may have been thawed since (its launcher thaws
    -- then). Nothing says the guest is frozen under it: the mark goes, and
    -- the lease of that freeze with it (below); the snapshot freezes anew
    flog:warn("a freeze mark without a freeze this process saw: freezing anew", { vm = vk, at = held, by = about(obj).by })
    local mok, merr, mcode = mark(ctx, obj, { [M.FROZEN_AT] = json.null })
    if not mok then return nil, merr, mcode end
    held = nil
  end
  if held then
    local deadline = held / 1000 + budget
    if lease and tonumber(lease.at) == held then
      deadline = math.min(deadline, guest.lease_since(lease) + (tonumber(lease.budget) or budget))
    end
    local now = vtime.now()
    return true, "held", { at = held, deadline = deadline, since = now, frozen = now }
  end
  if lease and (lease.holder == guest.holder() or guest.holder_alive(lease.holder) == false)
      and (tonumber(lease.at) == nil or confirmed[vk] ~= tonumber(lease.at)) then
    -- a lease of this process for a freeze it never saw answered (a lease
    -- write or a freeze whose answer was lost, a cleanup that failed), or of
    -- a process that is gone (its freeze may never have been answered, and
    -- its death may have thawed the guest): no snapshot may join it, as
    -- nothing says the guest is frozen under it. Thawed to be sure and
    -- taken off; this snapshot freezes anew
    flog:warn("a freeze lease without a freeze this process saw: taking it off", { vm = vk, at = lease.at,
      holder = lease.holder })
    local r, terr, tcode = g:thaw_retrying()
    if r == nil then return nil, terr, tcode end
    drop_lease(g, true)
    lease = nil
  end
  if lease then
    -- (a dead holder's lease went above: what is left is ours or a live one's)
    local mine = lease.holder == guest.holder()
    if mine and guest.lease_joinable(lease) then
      reserved[vm_key(cur)] = nil -- frozen meanwhile by another: a slot the step took is not needed
      return join(ctx, obj, g, lease, budget)
    end
    if not guest.lease_stale(lease) or (mine and (vtime.parse(lease.deadline) or 0) > vtime.now()) then
      return nil, ("the virtual machine %q is frozen by %s until %s: waiting for the thaw"):format(
        vm.metadata.name, tostring(lease.holder), tostring(lease.deadline)), "BUSY"
    end
    -- expired: thaw what it left before freezing anew
    local r, terr, tcode = g:do_thaw()
    if r == nil then return nil, terr, tcode end
    drop_lease(g, true)
  end
  -- a slot: the one the step took before its pre_freeze hooks, or one now
  local held_slot = reserved[vm_key(cur)]
  local drivers = held_slot and held_slot.drivers or M.drivers_of(ctx, cur)
  if not held_slot then
    local sok, serr, scode = M.slot(ctx, obj, cur, drivers)
    if not sok then return nil, serr, scode end
  end
  local ok, lerr, lcode = g:take_lease(budget, { drivers = drivers })
  reserved[vm_key(cur)] = nil -- the lease holds the slot now
  if not ok then
    -- the write's answer may have been lost after the lease was written (a
    -- cut connection): a lease of this process that nobody holds would keep
    -- the VM from others until its deadline; taken off (only if ours)
    drop_lease(g)
    return nil, lerr, lcode
  end
  local at = tonumber(guest.parse_lease(g.vm).at)
  -- the mark first: a holder that fails to freeze leaves no unmarked freeze behind
  local mok, merr, mcode = mark(ctx, obj, { [M.FROZEN_AT] = tostring(at) })
  if not mok then
    drop_lease(g)
    return nil, merr, mcode
  end
  local t_freeze = vtime.now()
  local r, ferr, fcode, fstatus = g:do_freeze(budget)
  if r == nil then
    -- the freeze was refused (an answer, not a lost request): final
    if type(fstatus) == "table" then fcode = "FreezeFailed" end
    drop_lease(g)
    if M.vm_frozen(cur) then
      -- frozen by something that left no lease (the freeze was refused for
      -- that): held as it is; the last holder out thaws, as the reference does
      return true, "foreign", { at = at, deadline = at / 1000 + budget, foreign = true, since = t_freeze,
        frozen = vtime.now() }
    end
    -- the freeze may have happened all the same: the answer that came is
    -- the last attempt's, and an earlier one may have reached the guest
    -- before its answer was lost (a 5xx from a gateway says nothing of
    -- that). Thaw to be sure, and try again when that thaw is lost too (no
    -- lease says the guest is frozen any more; else only the unfreeze
    -- timeout would thaw it)
    g:thaw_retrying()
    mark(ctx, obj, { [M.FROZEN_AT] = json.null })
    return nil, ferr, fcode
  end
  confirmed[vk] = at
  local f = { at = at, deadline = at / 1000 + budget, since = t_freeze, frozen = vtime.now() }
  local line = about(obj)
  line.vm, line.budget, line.call_ms = vm_key(vm), budget, math.floor((f.frozen - t_freeze) * 1000 + 0.5)
  flog:info("frozen", line)
  return true, "frozen", f
end

--- Note the moment `what` ("issued": every VolumeSnapshot created; "cut":
--- the cut seen) of the freeze `freeze` (what freeze_or_join returned,
--- kept in the pass's memo); the first note of each counts.
function M.note(freeze, what)
  if freeze and not freeze[what] then
    freeze[what] = vtime.now()
    if what == "cut" and tonumber(freeze.issued) then families().cut:observe({}, freeze.cut - freeze.issued) end
  end
end

-- the parts of a freeze window, in ms: the freeze call, the VolumeSnapshots
-- issued, the wait for the cut, the thaw (from the cut seen to the thaw's
-- answer); a part whose moments are not known is left out
local PARTS = { { "freeze", "since", "frozen" }, { "issue", "frozen", "issued" }, { "cut", "issued", "cut" },
  { "thaw", "cut", "thawed" } }
function M.parts(freeze, thawed)
  local t, out = setmetatable({ thawed = thawed }, { __index = freeze }), {}
  for _, p in ipairs(PARTS) do
    local a, b = tonumber(t[p[2]]), tonumber(t[p[3]])
    if a and b then out[#out + 1] = ("%s=%d"):format(p[1], math.floor(math.max(0, b - a) * 1000 + 0.5)) end
  end
  return #out > 0 and table.concat(out, " ") or nil
end

--- Has the cut come for a snapshot whose VolumeSnapshots are `cut` (all
--- have a creationTime) and `ready`: the cut, or Ready with thaw-at: Ready?
--- Else false and the seconds left before the freeze's deadline (<= 0: the
--- budget is spent).
function M.reached(obj, cut, ready, freeze)
  if (M.thaw_at_ready(obj) and ready) or (not M.thaw_at_ready(obj) and cut) then return true end
  return false, (tonumber(freeze and freeze.deadline) or 0) - vtime.now()
end

--- The cut did not come within the budget (Decision 4): give the freeze
--- back now (the undo of the step named `step`, outcome "Budget") and say
--- so in a Warning Event. `what` names what was not cut ("the volume
--- snapshot was"). Returns the message, or nil, message, code.
function M.overrun(ctx, obj, step, what)
  local ok, err, code = steps.release(ctx, step, "Budget")
  if not ok then return nil, err, code end
  local msg = ("%s not cut within the freeze budget of %gs"):format(what, M.budget(obj))
  ctx:event("Warning", "FreezeBudgetExceeded", msg .. "; the guest was thawed")
  return msg
end

--- Was the guest still frozen for `obj` when its cut was seen (now)?
--- `freeze` is what freeze_or_join returned when the VolumeSnapshot was
--- issued ({at, deadline}); `vm` as it is now (M.current). Returns true, or
--- false and why not.
function M.still_held(obj, vm, freeze)
  local at = M.frozen_at(obj)
  if not at or not freeze or tonumber(freeze.at) ~= at then
    return false, "the volume snapshot was not issued under the freeze this snapshot holds"
  end
  if vtime.now() >= (tonumber(freeze.deadline) or 0) then
    return false, "the cut came after the freeze's deadline"
  end
  local lease = guest.parse_lease(vm)
  if freeze.foreign then
    if lease or not M.vm_frozen(vm) then return false, "the guest was thawed before the cut" end
  elseif not lease or tonumber(lease.at) ~= at then
    return false, "the guest was thawed before the cut"
  elseif confirmed[vm_key(vm)] ~= at then
    -- (a freeze of a process that is gone, recorded in a step's memo: its
    -- answer may never have come, its death may have thawed the guest)
    return false, "the freeze was not made by this process: nothing proves the guest stayed frozen"
  end
  return true
end

--- still_held for the VM as this process sees it now, under the VM's freeze
--- lock: a freeze attempt of another snapshot in this process (its lease
--- taken for the call, given back when the guest was frozen already) is over
--- before the cut is judged, so it is not taken for a thaw.
function M.held_now(ctx, obj, vm, freeze)
  if not vm then return false, "the virtual machine is gone" end
  local _ <close> = guest.lock(vm, about(obj).by)
  return M.still_held(obj, M.current(ctx, vm), freeze)
end

--- Leave the VM's freeze: thaw it when nobody else holds it (`opts.skip`
--- leaves holders out of that count) or when `opts.force` (the budget is
--- spent), drop the lease, remove the mark and record how long the guest
--- was frozen for this snapshot (`vmsnap.io/freeze-duration-ms`: from
--- `opts.freeze.since`, when the freeze call went out or the snapshot
--- joined, to the thaw), and its parts (`vmsnap.io/freeze-parts-ms`, M.parts) when
--- `opts.freeze` is the freeze held. Returns true, and when this call
--- thawed (seconds since the epoch; false when it did not); or nil,
--- message, code.
---@param ctx vmsnap.reconcile.Context
---@param opts? {force?: boolean, skip?: fun(obj: table): boolean, freeze?: table}
function M.leave(ctx, obj, vm, opts)
  opts = opts or {}
  local _ <close> = vm and guest.lock(vm, about(obj).by) or nil
  local at = M.frozen_at(obj)
  local thawed = false
  if vm and (at or opts.force) and (opts.force or M.can_unfreeze(ctx, obj, vm, opts.skip)) then
    -- the VM as this process sees it now (the cache has its own lease
    -- writes, also those of this pass): a freeze with no lease any more was
    -- thawed already (by the VM snapshot it belongs to, at the deadline),
    -- unless it was never ours
    local cur = M.current(ctx, vm)
    if guest.parse_lease(cur) or opts.force or M.vm_frozen(cur) then
      local g = guest.for_vm(ctx.client, vm, { transport = "api" })
      local r, terr, tcode = g:do_thaw()
      if r == nil then return nil, terr, tcode end
      thawed = vtime.now()
      drop_lease(g, true)
    end
  end
  local since = opts.freeze and tonumber(opts.freeze.since)
  -- how long the guest was frozen for obj, in ms: the annotation, the log line
  local from = since and math.floor(since * 1000) or at
  local frozen_ms = from and math.max(0, math.floor((thawed or vtime.now()) * 1000) - from)
  local parts = thawed and since and M.parts(opts.freeze, thawed) or nil
  if thawed then
    local k = vm_key(vm)
    if since then families().duration:observe({ k }, thawed - since) end
    local line = about(obj)
    line.vm, line.forced, line.frozen_ms, line.parts = k, opts.force or nil, frozen_ms, parts
    flog:info("thawed", line)
  end
  if at then
    local ok, err, code = mark(ctx, obj, { [M.FROZEN_AT] = json.null, [M.FREEZE_DURATION] = tostring(frozen_ms),
      [M.FREEZE_PARTS] = parts, [M.FREEZE_HELD] = tostring(at) })
    if not ok then return nil, err, code end
  end
  return true, thawed
end

--- A freeze lease of this process (or of a dead one) that nobody holds any
--- more is thawed (a holder that left it to this one, a crash between
--- leaving and thawing). Returns true, or nil, message, code.
function M.release_if_last(ctx, obj, vm)
  if not vm then return true end
  vm = M.current(ctx, vm)
  local lease = guest.parse_lease(vm)
  if not lease then return true end
  if lease.holder ~= guest.holder() and guest.holder_alive(lease.holder) ~= false then return true end
  local _ <close> = guest.lock(vm, about(obj).by)
  local left = M.holders(ctx, vm, function(s) return same(s, obj) end)
  if #left > 0 then return true end
  local g = guest.for_vm(ctx.client, vm, { transport = "api" })
  local r, err, code = g:do_thaw()
  if r == nil then return nil, err, code end
  drop_lease(g, true)
  local line = about(obj)
  line.vm = vm_key(vm)
  flog:info("thawed a freeze nobody holds any more", line)
  return true
end

return M
