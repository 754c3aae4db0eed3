--- vmsnap.apiserver.admission: the admission rules of the virtualization
--- API that the CRD schemas cannot express (docs/behaviour.md a.1-a.3, b.5):
--- snapshot and restore specs are immutable, a VirtualDisk's size must be
--- positive, a disk restored from a snapshot smaller than the snapshot gets
--- a warning, and a provisioned disk's data source cannot change; an RBAC
--- binding's roleRef cannot change.
---
--- Workflows add their own with `server:admission(kind, fn)`.
local quantity = require("vmsnap.quantity")
local patch = require("vmsnap.apiserver.patch")

local M = {}

local function immutable(kind)
  local msg = kind .. " is an idempotent resource: specification changes are not available"
  return function(op, new, old)
    if op == "UPDATE" and new.metadata.generation ~= old.metadata.generation then
      return nil, { { field = "spec", message = msg, reason = "FieldValueForbidden" } }
    end
  end
end

local function disk_size(op, new, old, req, S)
  if op == "DELETE" then return end
  local pvc = new.spec and new.spec.persistentVolumeClaim
  local size = type(pvc) == "table" and pvc.size or nil
  local bytes
  if size ~= nil then
    bytes = quantity.parse(size)
    if not bytes then
      return nil, { { field = "spec.persistentVolumeClaim.size",
        message = ('Invalid value: "%s": quantities must match the regular expression \'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$\''):format(tostring(size)) } }
    end
    if bytes <= 0 then
      return nil, { { field = "spec.persistentVolumeClaim.size", message = "virtual disk size must be greater than 0" } }
    end
  end
  if op == "UPDATE" then
    local oldpvc = old.spec and old.spec.persistentVolumeClaim
    local oldbytes = type(oldpvc) == "table" and oldpvc.size and quantity.parse(oldpvc.size)
    local provisioned = old.status and old.status.phase and old.status.phase ~= "Pending" and old.status.phase ~= ""
    if provisioned and not patch.equal(new.spec and new.spec.dataSource, old.spec and old.spec.dataSource) then
      return nil, { { field = "spec.dataSource",
        message = "data source cannot be changed if the VirtualDisk has already been provisioned" } }
    end
    if provisioned and bytes and oldbytes and bytes < oldbytes then
      return nil, { { field = "spec.persistentVolumeClaim.size",
        message = ("spec.persistentVolumeClaim.size value (%s) should be greater than or equal to the current value (%s)")
          :format(tostring(size), tostring(oldpvc.size)) } }
    end
    if size == nil or (oldbytes and bytes == oldbytes) then return end
  end
  -- restored from a snapshot: warn when smaller than the snapshot
  local ds = new.spec and new.spec.dataSource
  local ref = type(ds) == "table" and ds.objectRef
  if bytes and type(ref) == "table" and ref.kind == "VirtualDiskSnapshot" and type(ref.name) == "string" then
    local vds = S.store:get("virtualization.deckhouse.io/virtualdisksnapshots", new.metadata.namespace or "", ref.name)
    if vds and vds.status and vds.status.phase == "Ready" then
      local vs = S.store:get("snapshot.storage.k8s.io/volumesnapshots", new.metadata.namespace or "",
        vds.status.volumeSnapshotName or ref.name)
      local rs = vs and vs.status and vs.status.restoreSize
      local need = rs and quantity.parse(rs)
      if need and bytes < need then
        req.warn(("The specified pvc size is insufficient: %d (%s) < %d"):format(bytes, tostring(size), need))
      end
    end
  end
end

--- Register the built-in rules on a server.
-- a binding's roleRef is fixed at its creation (as Kubernetes has it)
local function fixed_role_ref(op, new, old)
  if op ~= "UPDATE" then return end
  local a, b = type(new.roleRef) == "table" and new.roleRef or {}, type(old.roleRef) == "table" and old.roleRef or {}
  if a.apiGroup ~= b.apiGroup or a.kind ~= b.kind or a.name ~= b.name then
    return nil, { { field = "roleRef", reason = "FieldValueInvalid",
      message = ('Invalid value: rbac.RoleRef{APIGroup:"%s", Kind:"%s", Name:"%s"}: cannot change roleRef')
        :format(tostring(a.apiGroup or ""), tostring(a.kind or ""), tostring(a.name or "")) } }
  end
end

function M.register_defaults(S)
  S:admission("RoleBinding", fixed_role_ref)
  S:admission("ClusterRoleBinding", fixed_role_ref)
  S:admission("VirtualDiskSnapshot", immutable("VirtualDiskSnapshot"))
  S:admission("VirtualMachineSnapshot", immutable("VirtualMachineSnapshot"))
  S:admission("VirtualMachineRestore", immutable("VirtualMachineRestore"))
  S:admission("VirtualDisk", disk_size)
end

return M
