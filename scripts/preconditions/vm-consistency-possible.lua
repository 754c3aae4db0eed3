-- preconditions/vm-consistency-possible.lua: a running VM is snapshotted
-- under a freeze; when it cannot be frozen (not Running, or its agent is not
-- ready) and consistency is required, the snapshot waits
-- (docs/behaviour.md b.4.2 steps 9-10). A frozen VM counts as freezable:
-- the snapshot joins its freeze.
local freezes = require("vmsnap.freezes")

-- the reference's wording
local HEAD = "The snapshotting of virtual machine %q might result in an inconsistent snapshot: "
local NO_AGENT = "virtual machine agent is not ready and virtual machine cannot be frozen: "
  .. "waiting for virtual machine agent to be ready or virtual machine will stop"
local NOT_STOPPED = "waiting for the virtual machine to be Stopped"

return {
  applies_to = { "vm-snapshot" },
  order = 50,
  check = function(ctx, vms, facts)
    if vms.spec.requiredConsistency == false then return true end
    local vm = facts.vm
    local ok, phase, agent = freezes.can_freeze(vm)
    if ok or phase == "Stopped" then return true end
    return false, "PotentiallyInconsistent", HEAD:format(vm.metadata.name) .. (agent and NOT_STOPPED or NO_AGENT)
  end,
}
