-- preconditions/vm-disks-not-resizing.lua: no disk of the VM is growing
-- (docs/behaviour.md b.4.2 step 7b).
local object = require("vmsnap.k8s.object")

return {
  applies_to = { "vm-snapshot" },
  order = 30,
  check = function(ctx, vms, facts)
    for _, d in ipairs(facts.disks) do
      if d.vd and object.is_true_current(d.vd, "Resizing") then
        return false, "BlockDevicesNotReady",
          ("Virtual disk is in the process of resizing: waiting for the virtual disk %q to be resized."):format(d.name)
      end
    end
    return true
  end,
}
