--- `vmsnap snapshot disk NAME` and `vmsnap snapshot vm NAME`: take a
--- VirtualDiskSnapshot or a VirtualMachineSnapshot, one-shot.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local controllers = require("vmsnap.controllers")
local json = require("vmsnap.json")

local M = {}

M.help = [[
usage: vmsnap snapshot disk NAME [options]
       vmsnap snapshot vm NAME [options]

Create a VirtualDiskSnapshot of the VirtualDisk NAME, or a VirtualMachineSnapshot
of the VirtualMachine NAME (all its disks under one freeze, its definition, its
IP address, its provisioning Secret, its hot-plugged disks). With --wait,
follow it to Ready or Failed, printing each step; when no snapshot controller is
running (vmsnap up, vmsnap controller), the reconcile runs in this process.

options:
  --name SNAP             the snapshot's name (default NAME-YYYYMMDDHHMMSS)
  --inconsistent          requiredConsistency: false (do not wait for a freeze)
  --freeze-budget SECONDS how long the guest may stay frozen (default 30)
  --thaw-at-ready         thaw when the snapshots are ready, not at the cut
  --wait                  follow it to Ready or Failed (exit 1 on Failed)
  --timeout DURATION      for --wait (30s, 5m, or seconds; default 5m)
  --allow-missing         create it even when NAME does not exist yet (it waits for
                          it, as the platform's own snapshots do); by default a
                          missing disk or VM is an error and nothing is created
disk:
  --class CLASS           the VolumeSnapshotClass (default: resolved from the disk's StorageClass)
vm:
  --keep-ip Always|Never  keep the VM's IP address in the snapshot (default Always)
  --class SC=VSC          the VolumeSnapshotClass for disks of StorageClass SC
                          (repeatable; default: resolved from each StorageClass)
]] .. kube.COMMON_HELP

local SPEC = { ["--name"] = { "name", true }, ["--class"] = { "class", true, true }, ["--wait"] = { "wait", false },
  ["--timeout"] = { "timeout", true }, ["--inconsistent"] = { "inconsistent", false },
  ["--keep-ip"] = { "keep_ip", true }, ["--freeze-budget"] = { "budget", true }, ["--thaw-at-ready"] = { "thaw_at_ready", false },
  ["--allow-missing"] = { "allow_missing", false } }
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local function progress(obj)
  if not (obj.status and obj.status.phase) then return end
  local c
  for _, x in ipairs(obj.status and obj.status.conditions or {}) do
    if x.type == "VirtualDiskSnapshotReady" or x.type == "VirtualMachineSnapshotReady" then c = x end
  end
  io.stdout:write(("%s  %-10s %s%s\n"):format(os.date("%H:%M:%S"), obj.status and obj.status.phase or "",
    c and c.reason or "", c and c.message ~= "" and (": " .. c.message) or ""))
  io.stdout:flush()
end

local function done(x) local p = x.status and x.status.phase return p == "Ready" or p == "Failed" end

-- follow a snapshot until done: through the running controllers, or with
-- the controllers run in this process while it waits
local function follow(c, kind, ns, name, timeout)
  local ok, here, started = pcall(controllers.run_here, c)
  if not ok then cli.fail("error: " .. tostring(here)) end
  local _ <close> = here
  if started then io.stdout:write("(no snapshot controller is running: reconciling here)\n") end
  local last
  return c:wait_for(kind, name, function(x)
    if not x then return true end
    local sig = json.encode(x.status or {})
    if sig ~= last then last = sig progress(x) end
    return done(x)
  end, { namespace = ns, timeout = timeout })
end

local function annotations(o)
  local a
  if o.budget then
    local b = cli.duration("snapshot: --freeze-budget", o.budget)
    a = { ["vmsnap.io/freeze-budget"] = tostring(b) }
  end
  if o.thaw_at_ready then
    a = a or {}
    a["vmsnap.io/thaw-at"] = "Ready"
  end
  return a
end

local function snapshot_vm(c, o, ns, vm)
  local classes
  for _, m in ipairs(o.class or {}) do
    local sc, vsc = m:match("^([^=]+)=(.+)$")
    if not sc then cli.usage(("snapshot: --class %q: expected SC=VSC (a StorageClass and its VolumeSnapshotClass)"):format(m)) end
    classes = classes or json.array()
    classes[#classes + 1] = { storageClassName = sc, volumeSnapshotClassName = vsc }
  end
  if o.keep_ip and o.keep_ip ~= "Always" and o.keep_ip ~= "Never" then
    cli.usage(("snapshot: --keep-ip must be Always or Never, not %q"):format(o.keep_ip))
  end
  local name = o.name or (vm .. "-" .. os.date("!%Y%m%d%H%M%S"))
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineSnapshot",
    metadata = { name = name, namespace = ns, annotations = annotations(o) },
    spec = { virtualMachineName = vm, keepIPAddress = o.keep_ip or "Always", requiredConsistency = not o.inconsistent,
      volumeSnapshotClasses = classes } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualmachinesnapshot.virtualization.deckhouse.io/%s created\n"):format(name))
  if not o.wait then return end
  local final, werr = follow(c, "vmsnapshot", ns, name, o.timeout)
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the snapshot is gone")) end
  if final.status.phase == "Failed" then cli.fail(("error: %s failed"):format(name)) end
  io.stdout:write(("%s is Ready%s: %d disk(s), secret %s\n"):format(name, final.status.consistent and " (consistent)" or "",
    #(final.status.virtualDiskSnapshotNames or {}), tostring(final.status.virtualMachineSnapshotSecretName)))
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if pos[1] and pos[1] ~= "disk" and pos[1] ~= "vm" then
    cli.usage(("snapshot: '%s' is not something to snapshot: disk or vm%s"):format(pos[1],
      cli.did_you_mean(pos[1], { "disk", "vm" })))
  end
  if not pos[2] then cli.usage("snapshot: usage: vmsnap snapshot disk|vm NAME [--wait]") end
  if pos[3] then cli.usage(("snapshot: unexpected argument '%s'"):format(pos[3])) end
  o.timeout = cli.duration("snapshot: --timeout", o.timeout or "300")
  annotations(o) -- (its arguments checked before anything is asked of the API)
  local c = kube.client(o)
  local ns = o.namespace or c.namespace
  -- what it names must exist: a typo would leave a snapshot Pending forever
  if not o.allow_missing then
    local kind = pos[1] == "vm" and "virtualmachines.virtualization.deckhouse.io" or "virtualdisks.virtualization.deckhouse.io"
    local found, ferr, freason, fst = c:get(kind, pos[2], { namespace = ns })
    if not found then
      if freason == "NotFound" then
        cli.fail(kube.error_text(ferr, freason, fst) .. "\n(nothing created; --allow-missing creates the snapshot anyway and it waits)")
      end
      cli.fail(kube.error_text(ferr, freason, fst))
    end
  end
  if pos[1] == "vm" then return snapshot_vm(c, o, ns, pos[2]) end
  if o.keep_ip then cli.usage("snapshot: --keep-ip is for vm snapshots") end
  if o.class and #o.class > 1 then cli.usage("snapshot: a disk snapshot takes one --class") end
  local disk = pos[2]
  local name = o.name or (disk .. "-" .. os.date("!%Y%m%d%H%M%S"))
  local obj, err, reason, st = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = name, namespace = ns, annotations = annotations(o) },
    spec = { virtualDiskName = disk, volumeSnapshotClassName = o.class and o.class[1],
      requiredConsistency = not o.inconsistent } })
  if not obj then cli.fail(kube.error_text(err, reason, st)) end
  io.stdout:write(("virtualdisksnapshot.virtualization.deckhouse.io/%s created\n"):format(name))
  if not o.wait then return end
  local final, werr = follow(c, "vdsnapshot", ns, name, o.timeout)
  if not final or final == true then cli.fail("error: " .. tostring(werr or "the snapshot is gone")) end
  if final.status.phase == "Failed" then cli.fail(("error: %s failed"):format(name)) end
  io.stdout:write(("%s is Ready%s\n"):format(name, final.status.consistent and " (consistent)" or ""))
end

return M
