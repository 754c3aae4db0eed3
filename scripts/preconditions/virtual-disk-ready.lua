-- preconditions/virtual-disk-ready.lua: a disk snapshot waits for its disk
-- (docs/behaviour.md b.3.2 step 5): the disk exists and its VirtualDiskReady condition,
-- computed in the same pass, is True.
return {
  applies_to = { "disk-snapshot" },
  order = 10,
  check = function(ctx, vds, facts)
    local c = ctx:get_condition("VirtualDiskReady")
    if facts.vd and c and c.status == "True" then return true end
    return false, "WaitingForTheVirtualDisk",
      ("Waiting for the virtual disk %q to be ready for snapshotting."):format(vds.spec.virtualDiskName)
  end,
}
