-- preconditions/vm-snapshot-classes.lua: a VolumeSnapshotClass for every
-- disk of the VM, known before the guest is touched (docs/behaviour.md b.4.2
-- step 15, Decisions 5 and 9): from spec.volumeSnapshotClasses (the first
-- entry for the disk's storage class; none fails the snapshot), or resolved
-- from the storage class when the list is empty. The classes go into
-- ctx.memo.classes for the steps that create the children.
local csi = require("vmsnap.csi")

-- the reference's wording
local NO_CLASS = "the volume snapshot class not found: please define the volume snapshot class "
  .. "for the storage class %q and recreate resource"

local function class_for(ctx, vms, sc)
  local list = vms.spec.volumeSnapshotClasses or {}
  if #list == 0 then return csi.resolve_class(ctx.client, sc) end
  for _, m in ipairs(list) do
    if m.storageClassName == sc then return m.volumeSnapshotClassName end
  end
  return nil, NO_CLASS:format(sc), "ClassNotFound"
end

return {
  applies_to = { "vm-snapshot" },
  order = 60,
  check = function(ctx, vms, facts)
    local classes = {}
    for _, d in ipairs(facts.disks) do
      if not d.vd then return nil, ("the virtual disk %q not found"):format(d.name), "NotFound" end
      if not d.pvc then
        return nil, ("the persistent volume claim %q not found for the virtual disk %q"):format(d.pvc_name or "", d.name),
          "NotFound"
      end
      local sc = d.pvc.spec.storageClassName
      if not sc or sc == "" then
        return nil, ("the persistent volume claim %q doesn't have the storage class name"):format(d.pvc_name), "Invalid"
      end
      local class, err, code = class_for(ctx, vms, sc)
      if not class then return nil, err, code end
      classes[d.name] = class
    end
    ctx.memo.classes = classes
    return true
  end,
}
