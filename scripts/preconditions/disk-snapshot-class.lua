-- preconditions/disk-snapshot-class.lua: the VolumeSnapshotClass is known
-- before anything is done: given in spec.volumeSnapshotClassName (or, for
-- a VM snapshot's child on a server whose schema lacks that field, in the
-- annotation vmsnap.io/volume-snapshot-class), or resolved from the disk's
-- StorageClass (docs/behaviour.md, Decision 5).
-- No class, or several that fit, fails the snapshot naming the storage class.
local csi = require("vmsnap.csi")

return {
  applies_to = { "disk-snapshot" },
  order = 40,
  check = function(ctx, vds, facts)
    local given = vds.spec.volumeSnapshotClassName
      or (vds.metadata.annotations or {})[csi.CHILD_CLASS_ANNOTATION]
    if given and given ~= "" then
      ctx.memo.class = given
      return true
    end
    if ctx.memo.class then return true end
    local pvc, vd = facts.pvc, facts.vd
    local sc = pvc and pvc.spec.storageClassName or (vd and vd.status and vd.status.storageClassName)
    local class, err, code = csi.resolve_class(ctx:reader(), sc)
    if not class then return nil, err, code end
    ctx.memo.class = class
    return true
  end,
}
