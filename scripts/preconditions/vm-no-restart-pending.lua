-- preconditions/vm-no-restart-pending.lua: no change of the VM waits for a
-- restart (docs/behaviour.md b.4.2 step 8): the snapshot would store a
-- definition the running guest does not have.
return {
  applies_to = { "vm-snapshot" },
  order = 40,
  check = function(ctx, vms, facts)
    local vm = facts.vm
    if #(vm.status and vm.status.restartAwaitingChanges or {}) == 0 then return true end
    return false, "RestartAwaitingChanges",
      ("Waiting for the restart and approval of changes to virtual machine %q before taking the snapshot.")
        :format(vm.metadata.name)
  end,
}
