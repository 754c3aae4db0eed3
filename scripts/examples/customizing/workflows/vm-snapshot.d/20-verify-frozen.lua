-- workflows/vm-snapshot.d/20-verify-frozen.lua: a step after the freeze
-- that asks the guest agent whether its filesystems really are frozen, and
-- fails the snapshot (which thaws the guest) when they are not
-- (docs/customizing.md). An extension returns function(W) and changes
-- W.steps in place: before/after/replace/wrap/remove.
local steps = require("vmsnap.reconcile.steps")
local guest = require("vmsnap.guest")

return function(W)
  W.steps:after("freeze", {
    name = "verify-frozen",
    doc = "ask the guest agent that its filesystems are frozen",
    -- only when this snapshot took (or joined) a freeze
    when = function(ctx) return steps.owed(ctx, "freeze") end,
    run = function(ctx, vms, facts)
      local g, err, code = guest.for_vm(ctx.client, facts.vm)
      if not g then return nil, err, code end
      local state, serr, scode = g:status()
      if not state then return nil, serr, scode end -- an agent that does not answer: retried
      if state ~= "frozen" then
        return nil, ("the guest of %q reports %s after the freeze"):format(facts.vm.metadata.name, state), "NotFrozen"
      end
      ctx:event("Normal", "FreezeVerified", "The guest agent reports its filesystems frozen.")
      return true
    end,
  })
end
