--- `vmsnap restore disk NAME --from SNAPSHOT`: a VirtualDisk from a snapshot;
--- `vmsnap restore vm --from SNAPSHOT`: a VirtualMachineRestore.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local json = require("vmsnap.json")
local workflow = require("vmsnap.workflow")
local controllers = require("vmsnap.controllers")
local quantity = require("vmsnap.quantity")

local M = {}

M.help = [[
usage: vmsnap restore disk NAME --from SNAPSHOT [options]
       vmsnap restore vm --from SNAPSHOT [options]

disk: create the VirtualDisk NAME from the VirtualDiskSnapshot SNAPSHOT
(dataSource ObjectRef). The disk is restored at the snapshot's size, then grown
to --size.

vm: create a VirtualMachineRestore of the VirtualMachineSnapshot SNAPSHOT: its
IP address, VM, disks, attachments and provisioning Secret come back, renamed
by --rename. Everything is checked before anything is created; --dry-run prints
that plan (each object, under which name, every conflict with the --rename that
avoids it, and what the server refuses of a dry run of each create) and creates
nothing (exit 1 when the restore would fail).

options:
  --from SNAPSHOT         the snapshot (required)
  --wait                  follow it to Ready (exit 1 if it fails)
  --timeout DURATION      for --wait (30s, 5m, or seconds; default 5m)
  --allow-missing         create it even when SNAPSHOT does not exist yet (it waits)
disk:
  --size SIZE             the disk's size (e.g. 10Gi; default: the snapshot's; at least
                          the snapshot's)
  --storage-class SC      the disk's storage class
vm:
  --name NAME             the restore's name (default SNAPSHOT-restore-YYYYMMDDHHMMSS)
  --rename KIND/OLD=NEW   restore the object OLD of KIND as NEW (repeatable; the
                          first match wins; OLD=NEW alone matches any kind), e.g.
                          --rename VirtualMachine/linux-vm=linux-vm-2
  --dry-run               print the plan, create nothing
]] .. kube.COMMON_HELP

local SPEC = { ["--from"] = { "from", true }, ["--size"] = { "size", true }, ["--wait"] = { "wait", false },
  ["--timeout"] = { "timeout", true }, ["--storage-class"] = { "sc", true }, ["--rename"] = { "rename", true, true },
  ["--dry-run"] = { "dry_run", false }, ["--name"] = { "name", true }, ["--allow-missing"] = { "allow_missing", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

--- "KIND/OLD=NEW" or "OLD=NEW" → a nameReplacements rule.
function M.parse_rename(s)
  local kind, from, to = s:match("^([%w]*)/([^=/]+)=(.+)$")
  if not kind then
    from, to = s:match("^([^=/]+)=(.+)$")
    kind = ""
  end
  if not from then return nil, ("--rename %q: expected KIND/OLD=NEW or OLD=NEW"):format(s) end
  return { from = { kind = kind ~= "" and kind or nil, name = from }, to = to }
end

local function print_plan(plan)
  for _, it in ipairs(plan.items) do
    local what = it.action
    if it.conflict then
      what = ("CONFLICT: %s (--rename %s/%s=%s-2)"):format(it.conflict, it.kind, it.name, it.name)
    elseif it.refused then
      what = "REFUSED by the server: " .. it.refused
    end
    io.stdout:write(("  %-36s %-28s %s\n"):format(it.kind, it.name, what))
  end
end

-- what the restore workflow's plan and validate read through: the API
-- (a missing object is nil, as a controller's context answers)
local function api_context(c)
  return { client = c, get = function(_, kind, cns, name)
    local obj, err, code = c:get(kind, name, { namespace = cns })
    if not obj and code == "NotFound" then return nil end
    return obj, err, code
  end }
end

local function restore_vm(c, o, ns)
  local rules = json.array()
  for _, r in ipairs(o.rename or {}) do
    local rule, err = M.parse_rename(r)
    if not rule then cli.usage("restore: " .. err) end
    rules[#rules + 1] = rule
  end
  local vms, gerr, greason, gst = c:get("vmsnapshot", o.from, { namespace = ns })
  if not vms and not (o.allow_missing and greason == "NotFound" and not o.dry_run) then
    cli.fail(kube.error_text(gerr, greason, gst))
  end
  local KINDS = { "VirtualMachine", "VirtualDisk", "VirtualMachineBlockDeviceAttachment", "VirtualMachineIPAddress", "Secret" }
  for _, rule in ipairs(rules) do
    local k = rule.from.kind
    if k then
      local known = false
      for _, x in ipairs(KINDS) do if x == k then known = true end end
      if not known then
        cli.usage(("restore: --rename %s/%s=%s: a snapshot holds no kind %q (%s)%s"):format(k, rule.from.name, rule.to, k,
          table.concat(KINDS, ", "), cli.did_you_mean(k, KINDS)))
      end
    end
  end
  -- each rename names something the snapshot holds (a typo would rename nothing)
  if vms and #rules > 0 and (vms.status and vms.status.phase) == "Ready" then
    local ok0, plan0 = pcall(assert(workflow.load("vm-restore")).plan, api_context(c), { metadata = { name = "check", namespace = ns, uid = "check" },
      spec = { virtualMachineSnapshotName = o.from } }, vms)
    if ok0 and plan0 then
      local held = {}
      for _, it in ipairs(plan0.items) do held[#held + 1] = it.kind .. "/" .. it.name end
      for _, rule in ipairs(rules) do
        local hit = false
        for _, it in ipairs(plan0.items) do
          if it.name == rule.from.name and (not rule.from.kind or rule.from.kind == it.kind) then hit = true end
        end
        if not hit then
          cli.usage(("restore: --rename %s%s=%s matches nothing in the snapshot %q (it holds %s)"):format(
            rule.from.kind and (rule.from.kind .. "/") or "", rule.from.name, rule.to, o.from, table.concat(held, ", ")))
        end
      end
    end
  end
  if o.dry_run then
    if (vms.status and vms.status.phase) ~= "Ready" then
      cli.fail(("error: the virtual machine snapshot %q is %s, not Ready"):format(o.from, tostring(vms.status and vms.status.phase)))
    end
    local w = assert(workflow.load("vm-restore"))
    local vmr = { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineRestore",
      metadata = { name = o.name or "dry-run", namespace = ns, uid = "dry-run" },
      spec = { virtualMachineSnapshotName = o.from, nameReplacements = rules } }
    local ctx = api_context(c)
    local okp, plan, why = pcall(w.plan, ctx, vmr, vms)
    if not okp or not plan then cli.fail("error: " .. tostring(okp and why or plan)) end
    local okv, ok, conflict = pcall(w.validate, ctx, vmr, plan)
    if not okv then cli.fail("error: " .. tostring(ok)) end
    -- a conflict ends validate before its dry run: the other creates are asked anyway
    if not ok then
      local asked = false
      for _, it in ipairs(plan.items) do if it.refused then asked = true end end
      if not asked then pcall(w.dry_run, ctx, plan) end
    end
    io.stdout:write(("restore of %s/%s (dry run, nothing created; every create asked of the server):\n"):format(ns, o.from))
    print_plan(plan)
    if not ok then cli.fail("error: the restore would fail: " .. tostring(conflict)) end
    return
  end
  local name = o.name or (o.from .. "-restore-" .. os.date("!%Y%m%d%H%M%S"))
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineRestore",
    metadata = { name = name, namespace = ns },
    spec = { virtualMachineSnapshotName = o.from, nameReplacements = #rules > 0 and rules or nil } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualmachinerestore.virtualization.deckhouse.io/%s created\n"):format(name))
  if not o.wait then return end
  local ok, here, started = pcall(controllers.run_here, c, { workflows = { "vm-restore" } })
  if not ok then cli.fail("error: " .. tostring(here)) end
  local _ <close> = here
  if started then io.stdout:write("(no snapshot controller is running: reconciling here)\n") end
  local last
  local final, werr = c:wait_for("vmrestore", name, function(x)
    if not x then return true end
    local cnd
    for _, y in ipairs(x.status and x.status.conditions or {}) do
      if y.type == "VirtualMachineRestoreReady" then cnd = y end
    end
    local sig = json.encode({ x.status and x.status.phase, cnd and cnd.message })
    if sig ~= last and x.status and x.status.phase then
      last = sig
      io.stdout:write(("%s  %-10s %s%s\n"):format(os.date("%H:%M:%S"), x.status.phase, cnd and cnd.reason or "",
        cnd and cnd.message ~= "" and (": " .. cnd.message) or ""))
      io.stdout:flush()
    end
    local p = x.status and x.status.phase
    return p == "Ready" or p == "Failed"
  end, { namespace = ns, timeout = o.timeout })
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the restore is gone")) end
  if final.status.phase ~= "Ready" then cli.fail(("error: %s failed"):format(name)) end
  io.stdout:write(("%s is Ready\n"):format(name))
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if pos[1] and pos[1] ~= "disk" and pos[1] ~= "vm" then
    cli.usage(("restore: '%s' is not something to restore: disk or vm%s"):format(pos[1],
      cli.did_you_mean(pos[1], { "disk", "vm" })))
  end
  if not ((pos[1] == "disk" and pos[2]) or (pos[1] == "vm" and not pos[2])) then
    cli.usage("restore: usage: vmsnap restore disk NAME --from SNAPSHOT | vmsnap restore vm --from SNAPSHOT")
  end
  if not o.from then cli.usage("restore: --from SNAPSHOT is required") end
  o.timeout = cli.duration("restore: --timeout", o.timeout or "300")
  local c = kube.client(o)
  local ns = o.namespace or c.namespace
  if pos[1] == "vm" then
    if o.size or o.sc then cli.usage("restore: --size and --storage-class are for disk restores") end
    return restore_vm(c, o, ns)
  end
  if o.rename or o.dry_run or o.name then cli.usage("restore: --rename, --dry-run and --name are for vm restores") end
  local pvc = (o.size or o.sc) and { size = o.size, storageClassName = o.sc } or nil
  local want = o.size and quantity.parse(o.size)
  if o.size and not want then cli.usage(("restore: --size %q is not a quantity (e.g. 10Gi)"):format(o.size)) end
  if not o.allow_missing then
    local vds, verr, vreason, vst = c:get("virtualdisksnapshots.virtualization.deckhouse.io", o.from, { namespace = ns })
    if not vds then
      cli.fail(kube.error_text(verr, vreason, vst) .. (vreason == "NotFound" and
        "\n(nothing created; --allow-missing creates the disk anyway and it waits)" or ""))
    end
    -- a disk smaller than its snapshot cannot hold it
    local vsname = vds.status and vds.status.volumeSnapshotName
    local vs = vsname and c:get("volumesnapshots.snapshot.storage.k8s.io", vsname, { namespace = ns })
    local have = vs and vs.status and vs.status.restoreSize and quantity.parse(tostring(vs.status.restoreSize))
    if want and have and want < have then
      cli.usage(("restore: --size %s is smaller than the snapshot %q (%s): the disk needs at least that")
        :format(o.size, o.from, tostring(vs.status.restoreSize)))
    end
  end
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDisk",
    metadata = { name = pos[2], namespace = ns },
    spec = { persistentVolumeClaim = pvc,
      dataSource = { type = "ObjectRef", objectRef = { kind = "VirtualDiskSnapshot", name = o.from } } } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualdisk.virtualization.deckhouse.io/%s created\n"):format(pos[2]))
  if not o.wait then return end
  local last
  local final, werr = c:wait_for("vd", pos[2], function(x)
    if not x then return true end
    local ready
    for _, cnd in ipairs(x.status and x.status.conditions or {}) do if cnd.type == "Ready" then ready = cnd end end
    local sig = json.encode({ x.status and x.status.phase, ready and ready.message })
    if sig ~= last and x.status and x.status.phase then
      last = sig
      io.stdout:write(("%s  %-12s %s\n"):format(os.date("%H:%M:%S"), x.status and x.status.phase or "",
        ready and ready.message or ""))
      io.stdout:flush()
    end
    local p = x.status and x.status.phase
    if p == "Ready" and want then
      -- restored at the snapshot's size first, then grown to --size (b.5)
      return (quantity.parse(x.status.capacity or "0") or 0) >= want
    end
    return p == "Ready" or p == "Failed" or p == "PVCLost"
  end, { namespace = ns, timeout = o.timeout })
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the disk is gone")) end
  if final.status.phase ~= "Ready" then cli.fail(("error: %s is %s"):format(pos[2], final.status.phase)) end
  io.stdout:write(("%s is Ready (%s)\n"):format(pos[2], tostring(final.status.capacity)))
end

return M
