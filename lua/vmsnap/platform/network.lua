--- vmsnap.platform.network: VirtualMachineIPAddresses of the local platform
--- (spec a.6): Auto addresses from a pool, Static ones as asked when free;
--- phase Bound, then Attached with status.virtualMachineName once a VM uses it.
--- Addresses are the cluster's, as the platform's VirtualMachineIPAddressLeases
--- are: one address is never held in two namespaces. One worker hands them
--- out, so that two claims are never given the same free address.
local reconcile = require("vmsnap.reconcile")

local M = {}

M.POOL = "10.66.0." -- .10 to .250

-- the addresses held by every other claim, in every namespace
local function in_use(ctx, self)
  local used = {}
  for _, ip in ipairs(ctx:list("VirtualMachineIPAddress", nil)) do
    if ip.metadata.uid ~= self.metadata.uid then
      if ip.status and ip.status.address then used[ip.status.address] = true end
      if ip.spec.staticIP then used[ip.spec.staticIP] = true end
    end
  end
  return used
end

local function user_vm(ctx, ip)
  for _, vm in ipairs(ctx:list("VirtualMachine", ip.metadata.namespace)) do
    local name = vm.spec.virtualMachineIPAddressName or (vm.status and vm.status.virtualMachineIPAddressName)
    if name == ip.metadata.name then return vm end
  end
end

local function reconcile_ip(ctx, ip)
  ip.status = ip.status or {}
  if not ip.status.address then
    local used = in_use(ctx, ip)
    if ip.spec.type == "Static" then
      if used[ip.spec.staticIP] then
        ip.status.phase = "Pending"
        ctx:condition("Bound", "False", "VirtualMachineIPAddressLeaseAlreadyExists",
          ("The address %s is in use."):format(tostring(ip.spec.staticIP)))
        return { requeue_after = 5 }
      end
      ip.status.address = ip.spec.staticIP
    else
      for i = 10, 250 do
        if not used[M.POOL .. i] then ip.status.address = M.POOL .. i break end
      end
      if not ip.status.address then
        ip.status.phase = "Pending"
        ctx:condition("Bound", "False", "NoFreeAddress", "The address pool is exhausted.")
        return { requeue_after = 5 }
      end
    end
  end
  ctx:condition("Bound", "True", "Bound", "")
  local vm = user_vm(ctx, ip)
  if vm then
    ip.status.phase = "Attached"
    ip.status.virtualMachineName = vm.metadata.name
    ctx:condition("Attached", "True", "Attached", "")
  else
    ip.status.phase = "Bound"
    ip.status.virtualMachineName = nil
    ctx:remove_condition("Attached")
  end
  ip.status.observedGeneration = ip.metadata.generation
  return true
end

--- The VirtualMachineIPAddress controller (not started).
function M.controller(client)
  return reconcile.controller({ client = client, name = "local-network", kind = "VirtualMachineIPAddress", workers = 1,
    watches = { { kind = "VirtualMachine", map = function(vm)
      local name = vm.spec.virtualMachineIPAddressName or (vm.status and vm.status.virtualMachineIPAddressName)
      return name and { vm.metadata.namespace .. "/" .. name } or {}
    end } },
    reconcile = reconcile_ip })
end

return M
