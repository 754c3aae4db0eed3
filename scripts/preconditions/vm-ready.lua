-- preconditions/vm-ready.lua: a VM snapshot waits for its VM to be ready for
-- snapshotting: the VirtualMachineReady condition, computed in the same pass
-- (docs/behaviour.md b.4.1, b.4.2 step 6), is True.
return {
  applies_to = { "vm-snapshot" },
  order = 10,
  check = function(ctx, vms, facts)
    local c = ctx:get_condition("VirtualMachineReady")
    if facts.vm and c and c.status == "True" then return true end
    return false, "WaitingForTheVirtualMachine",
      ("Waiting for the virtual machine %q to be ready for snapshotting."):format(vms.spec.virtualMachineName)
  end,
}
