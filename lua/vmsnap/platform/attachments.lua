--- vmsnap.platform.attachments: VirtualMachineBlockDeviceAttachments of the
--- local platform (spec a.7): a disk hot-plugged into a VM shows in the VM's
--- status.blockDeviceRefs (hotplugged; attached once this says Attached).
--- As on the real platform, an attachment is Attached only while its VM runs
--- (Running or Migrating) and its disk is Ready (or growing); before that it
--- is Pending, and its conditions say which of the two it waits for:
---   BlockDeviceReady     the disk exists and is Ready
---   VirtualMachineReady  the VM exists and runs (NotAttached while it is
---                        Stopped, Starting or Stopping)
---   Attached             both, so the disk is plugged in
local reconcile = require("vmsnap.reconcile")

local M = {}

local DISK_USABLE = { Ready = true, Resizing = true }
local VM_RUNS = { Running = true, Migrating = true }
local VM_BETWEEN = { Stopped = true, Starting = true, Stopping = true }

--- Whether a disk in this phase can be plugged into a running VM (a disk
--- that grows stays usable).
function M.disk_usable(phase) return DISK_USABLE[phase or ""] == true end

--- Whether a VM in this phase has its attachments plugged in.
function M.vm_runs(phase) return VM_RUNS[phase or ""] == true end

local function reconcile_att(ctx, b)
  b.status = b.status or {}
  local ns = b.metadata.namespace
  local vmname = b.spec.virtualMachineName
  b.status.virtualMachineName = vmname
  b.status.observedGeneration = b.metadata.generation
  if b.metadata.deletionTimestamp then
    b.status.phase = "Terminating"
    return true
  end
  local ref = b.spec.blockDeviceRef or {}
  local vd = ref.kind == "VirtualDisk" and ctx:get("VirtualDisk", ns, ref.name) or nil
  local disk_ok = vd and M.disk_usable(vd.status and vd.status.phase)
  if disk_ok then
    ctx:condition("BlockDeviceReady", "True", "BlockDeviceReady", "")
  elseif ref.kind ~= "VirtualDisk" then
    ctx:condition("BlockDeviceReady", "False", "BlockDeviceNotReady",
      ("The local platform attaches only a VirtualDisk, not a %s."):format(tostring(ref.kind)))
  elseif not vd then
    ctx:condition("BlockDeviceReady", "False", "BlockDeviceNotReady",
      ("VirtualDisk %q not found."):format(tostring(ref.name)))
  else
    ctx:condition("BlockDeviceReady", "False", "BlockDeviceNotReady",
      ("VirtualDisk %q is %s: waiting for it to be Ready."):format(ref.name, tostring(vd.status and vd.status.phase or "Pending")))
  end
  local vm = ctx:get("VirtualMachine", ns, vmname)
  local vphase = vm and vm.status and vm.status.phase or ""
  local vm_ok = vm and M.vm_runs(vphase)
  if vm_ok then
    ctx:condition("VirtualMachineReady", "True", "VirtualMachineReady", "")
  elseif not vm then
    ctx:condition("VirtualMachineReady", "False", "VirtualMachineNotReady",
      ("VirtualMachine %q not found."):format(ns .. "/" .. tostring(vmname)))
  elseif VM_BETWEEN[vphase] then
    ctx:condition("VirtualMachineReady", "False", "NotAttached",
      ("VirtualMachine %q is %s: waiting for the VirtualMachine to be Running."):format(vmname, vphase))
  else
    ctx:condition("VirtualMachineReady", "False", "VirtualMachineNotReady",
      ("Waiting for the VirtualMachine %q to be Running."):format(ns .. "/" .. vmname))
  end
  if disk_ok and vm_ok then
    b.status.phase = "Attached"
    ctx:condition("Attached", "True", "Attached", "")
  else
    b.status.phase = "Pending"
    ctx:condition("Attached", "False", "NotAttached",
      not disk_ok and "Waiting for block device to be ready." or "Waiting for virtual machine to be ready.")
  end
  return true
end

function M.controller(client)
  return reconcile.controller({ client = client, name = "local-attachments", kind = "VirtualMachineBlockDeviceAttachment",
    watches = {
      { kind = "VirtualMachine", map = function(vm, c)
        local keys = {}
        for _, b in ipairs(c.primary and c.primary:list(vm.metadata.namespace) or {}) do
          if b.spec.virtualMachineName == vm.metadata.name then keys[#keys + 1] = reconcile.key_of(b) end
        end
        return keys
      end },
      { kind = "VirtualDisk", map = function(vd, c)
        local keys = {}
        for _, b in ipairs(c.primary and c.primary:list(vd.metadata.namespace) or {}) do
          if b.spec.blockDeviceRef and b.spec.blockDeviceRef.name == vd.metadata.name then keys[#keys + 1] = reconcile.key_of(b) end
        end
        return keys
      end },
    },
    reconcile = reconcile_att })
end

return M
