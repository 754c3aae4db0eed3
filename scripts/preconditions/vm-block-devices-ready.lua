-- preconditions/vm-block-devices-ready.lua: every block device of the VM is
-- ready, and every one of its disks is Ready (docs/behaviour.md b.4.2 step 7a-b).
local object = require("vmsnap.k8s.object")

return {
  applies_to = { "vm-snapshot" },
  order = 20,
  check = function(ctx, vms, facts)
    local vm = facts.vm
    local function no(text) return false, "BlockDevicesNotReady", text end
    if not object.is_true(vm, "BlockDevicesReady") then
      return no(("Block devices not ready: waiting for the block devices of the virtual machine %q to be ready.")
        :format(vm.metadata.name))
    end
    for _, d in ipairs(facts.disks) do
      if not d.vd or (d.vd.status and d.vd.status.phase) ~= "Ready" then
        return no(("Virtual disk not ready: waiting for the virtual disk %q to be Ready."):format(d.name))
      end
      if not object.is_true_current(d.vd, "Ready") then
        return no(("Virtual disk not ready: waiting for the Ready condition of the virtual disk %q to be True."):format(d.name))
      end
    end
    return true
  end,
}
