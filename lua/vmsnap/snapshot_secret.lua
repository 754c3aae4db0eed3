--- vmsnap.snapshot_secret: the Secret a VirtualMachineSnapshot keeps the
--- VM's definition in (docs/behaviour.md a.8, b.4.3), written by the VM
--- snapshot and read by the restore.
---
--- Its type is `virtualmachine.virtualization.deckhouse.io/snapshot`; its
--- data keys are `vm`, `vmip`, `provisioner` (one object each) and `vmbdas`
--- (a JSON array of objects). Each value is base64 of the object's JSON, and
--- since a Secret's data is base64 on the wire, the API shows
--- base64(base64(JSON)).
---
---     local data = snapshot_secret.encode({ vm = vm, vmip = ip, vmbdas = { b1 } })
---     local objs = assert(snapshot_secret.decode(secret))   -- objs.vm, objs.vmip, ...
local json = require("vmsnap.json")
local base64 = require("vmsnap.base64")
local deep = require("vmsnap.deep")

local M = {}

M.TYPE = "virtualmachine.virtualization.deckhouse.io/snapshot"
--- Beside the Secret: the annotation of each child VirtualDiskSnapshot
--- with its disk's labels and annotations at snapshot time (JSON {labels,
--- annotations}; docs/behaviour.md Decision 13).
M.DISK_METADATA = "vmsnap.io/virtual-disk-metadata"
M.SINGLE = { "vm", "vmip", "provisioner" }
M.LISTS = { "vmbdas" }

--- A copy of obj as the Secret stores it: apiVersion and kind always set.
function M.stored(obj, api_version, kind)
  local o = deep.copy(obj)
  o.apiVersion = o.apiVersion or api_version
  o.kind = o.kind or kind
  return o
end

local function wrap(value)
  return base64.encode(base64.encode(json.encode(value)))
end

--- The Secret's data for the objects {vm, vmip?, provisioner?, vmbdas?}.
---@param objs {vm: table, vmip?: table, provisioner?: table, vmbdas?: table[]}
---@return table<string, string>
function M.encode(objs)
  if type(objs) ~= "table" or type(objs.vm) ~= "table" then
    error("bad argument #1 to 'encode' (a table with the VM expected)", 2)
  end
  local data = {}
  for _, k in ipairs(M.SINGLE) do
    if objs[k] ~= nil then data[k] = wrap(objs[k]) end
  end
  for _, k in ipairs(M.LISTS) do
    if objs[k] and #objs[k] > 0 then data[k] = wrap(json.array(objs[k])) end
  end
  return data
end

local function unwrap(secret, key, want_list)
  local v = secret.data and secret.data[key]
  if v == nil then return nil end
  local inner = type(v) == "string" and base64.decode(v)
  local raw = inner and base64.decode(inner)
  local obj = raw and json.decode(raw)
  local ok = type(obj) == "table" and (want_list or type(obj.metadata) == "table")
  if not ok then
    return nil, ("cannot decode %q of the snapshot secret %q"):format(key,
      tostring(secret.metadata and secret.metadata.name)), "Invalid"
  end
  return obj
end

--- The objects of a snapshot Secret: {vm, vmip?, provisioner?, vmbdas}
--- (vmbdas an array, maybe empty), or nil, message, "Invalid".
---@param secret table
function M.decode(secret)
  local out = {}
  for _, k in ipairs(M.SINGLE) do
    local obj, err, code = unwrap(secret, k)
    if err then return nil, err, code end
    out[k] = obj
  end
  if not out.vm then
    return nil, ("the snapshot secret %q has no virtual machine"):format(tostring(secret.metadata and secret.metadata.name)),
      "Invalid"
  end
  for _, k in ipairs(M.LISTS) do
    local list, err, code = unwrap(secret, k, true)
    if err then return nil, err, code end
    out[k] = list or {}
  end
  return out
end

return M
