-- preconditions/disk-pvc-bound.lua: the disk's claim is Bound (docs/behaviour.md b.3.2 step 6).
return {
  applies_to = { "disk-snapshot" },
  order = 20,
  check = function(ctx, vds, facts)
    local target = facts.vd and facts.vd.status and facts.vd.status.target
    if not target or (target.persistentVolumeClaimName or "") == "" then return true end
    if facts.pvc and facts.pvc.status and facts.pvc.status.phase == "Bound" then return true end
    return false, "WaitingForTheVirtualDisk", "Waiting for the virtual disk's pvc to be in phase Bound."
  end,
}
