--- vmsnap.platform.attachments: VirtualMachineBlockDeviceAttachments of the
--- local platform (spec a.7): a disk hot-plugged into a VM shows in the VM's
--- status.blockDeviceRefs (hotplugged); the attachment is Attached once the VM
--- runs and the disk is Ready, Pending before, with status.virtualMachineName.
local reconcile = require("vmsnap.reconcile")

local M = {}

local function reconcile_att(ctx, b)
  b.status = b.status or {}
  local ns = b.metadata.namespace
  b.status.virtualMachineName = b.spec.virtualMachineName
  local vm = ctx:get("VirtualMachine", ns, b.spec.virtualMachineName)
  local ref = b.spec.blockDeviceRef or {}
  local vd = ref.kind == "VirtualDisk" and ctx:get("VirtualDisk", ns, ref.name)
  if b.metadata.deletionTimestamp then
    b.status.phase = "Terminating"
  elseif vm and vm.status and vm.status.phase == "Running" and vd and vd.status and vd.status.phase == "Ready" then
    b.status.phase = "Attached"
    ctx:condition("Attached", "True", "Attached", "")
  else
    b.status.phase = "Pending"
    ctx:condition("Attached", "False", "NotReady", not vm and ("The virtual machine %q not found."):format(tostring(b.spec.virtualMachineName))
      or "Waiting for the virtual machine to run and the disk to be ready.")
  end
  b.status.observedGeneration = b.metadata.generation
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
