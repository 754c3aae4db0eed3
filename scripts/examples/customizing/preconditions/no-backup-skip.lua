-- preconditions/no-backup-skip.lua: never snapshot a VM labelled
-- `backup: skip` (docs/customizing.md). A gate returns true (go on),
-- false, reason, message (wait: the snapshot stays Pending and says why) or
-- nil, message, code (fail: any code not listed as transient in
-- docs/errors.md ends the snapshot as Failed). Gates run before anything
-- touches the guest.
return {
  applies_to = { "vm-snapshot" },
  order = 5, -- before the built-in gates
  check = function(ctx, vms, facts)
    local labels = facts.vm and facts.vm.metadata.labels or {}
    if labels.backup == "skip" then
      return nil, ("the virtual machine %q is labelled backup: skip"):format(facts.vm.metadata.name), "Skipped"
    end
    return true
  end,
}
