-- preconditions/disk-consistency-possible.lua: a disk attached to a running
-- VM is snapshotted under a freeze; when the VM cannot be frozen (not
-- Running, or its agent is not ready) and consistency is required, the
-- snapshot waits (docs/behaviour.md b.3.2 step 7a). A frozen VM counts as
-- freezable: the snapshot joins its freeze.
local freezes = require("vmsnap.freezes")

-- the reference's wording
local HEAD = "The virtual machine %q with an attached virtual disk %q is %s: "
  .. "the snapshotting of virtual disk might result in an inconsistent snapshot: "
local NO_AGENT = "virtual machine agent is not ready and virtual machine cannot be frozen: "
  .. "waiting for virtual machine agent to be ready, or virtual machine will stop"
local NOT_STOPPED = "waiting for the virtual machine to be Stopped or the disk to be detached"

return {
  applies_to = { "disk-snapshot" },
  order = 30,
  check = function(ctx, vds, facts)
    local vm = facts.vm
    if not vm or vds.spec.requiredConsistency == false then return true end
    local ok, phase, agent = freezes.can_freeze(vm)
    if ok or phase == "Stopped" then return true end
    local head = HEAD:format(vm.metadata.name, vds.spec.virtualDiskName, phase)
    return false, "PotentiallyInconsistent", head .. (agent and NOT_STOPPED or NO_AGENT)
  end,
}
