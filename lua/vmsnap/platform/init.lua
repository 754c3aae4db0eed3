--- vmsnap.platform: the local platform — the parts of the virtualization
--- platform that vmsnap does not own, as small controllers next to the
--- embedded API server: a provisioner and CSI snapshotter for file-backed
--- volumes (platform/volumes.lua), VirtualDisks (platform/disks.lua), and the
--- VMs' freeze subresources (platform/freeze.lua).
local k8s = require("vmsnap.k8s")
local loopback = require("vmsnap.apiserver.loopback")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local volumes = require("vmsnap.platform.volumes")
local disks = require("vmsnap.platform.disks")
local vms = require("vmsnap.platform.vms")

local M = {}

--- A client of an in-process server (its own address and credentials). Its
--- requests go to the server's handler in this process
--- (vmsnap.apiserver.loopback), not over HTTPS, unless
--- VMSNAP_LOOPBACK=0 (a comparison run of the benches).
function M.client_for(server)
  local tls = server.tls.cert ~= nil
  return assert(k8s.client({ server = ("%s://127.0.0.1:%d"):format(tls and "https" or "http", server.port),
    token = server.opts.token, ca_data = tls and (server.tls.server_ca or server.tls.cert) or nil,
    field_manager = "vmsnap-platform",
    transport = os.getenv("VMSNAP_LOOPBACK") ~= "0" and loopback.transport(server) or nil }))
end

--- Create the default StorageClass and VolumeSnapshotClass "local" when no
--- default exists.
function M.ensure_defaults(client)
  local scs = client:list_all("storageclasses.storage.k8s.io") or {}
  local have = false
  for _, sc in ipairs(scs) do
    if (sc.metadata.annotations or {})["storageclass.kubernetes.io/is-default-class"] == "true" then have = true end
  end
  if not have then
    client:create({ apiVersion = "storage.k8s.io/v1", kind = "StorageClass",
      metadata = { name = "local", annotations = { ["storageclass.kubernetes.io/is-default-class"] = "true" } },
      provisioner = volumes.DRIVER, reclaimPolicy = "Delete", volumeBindingMode = "Immediate",
      allowVolumeExpansion = true })
  end
  local classes = client:list_all("volumesnapshotclasses.snapshot.storage.k8s.io") or {}
  if #classes == 0 then
    client:create({ apiVersion = "snapshot.storage.k8s.io/v1", kind = "VolumeSnapshotClass",
      metadata = { name = "local", annotations = { ["snapshot.storage.kubernetes.io/is-default-class"] = "true" } },
      driver = volumes.DRIVER, deletionPolicy = "Delete" })
  end
end

--- Start the platform's controllers (tasks) against client; data is the
--- directory for volume and snapshot files. Returns the controllers, or
--- nil, message when the data directory cannot hold them.
function M.start(client, data, opts)
  opts = opts or {}
  for _, d in ipairs({ "volumes", "snapshots", "vms" }) do
    local ok, err = fs.mkdir_p(data .. "/" .. d)
    if not ok then return nil, ("the data directory %s: %s"):format(data, tostring(err)) end
  end
  if opts.defaults ~= false then M.ensure_defaults(client) end
  local ctls = volumes.controllers(client, data)
  ctls[#ctls + 1] = disks.controller(client)
  ctls[#ctls + 1] = vms.controller(client, data, { agents = opts.agents })
  vms.forget_freezes(client) -- the agents were torn down (thawed) above
  ctls[#ctls + 1] = require("vmsnap.platform.network").controller(client)
  ctls[#ctls + 1] = require("vmsnap.platform.attachments").controller(client)
  for _, c in ipairs(ctls) do
    c.task = task.spawn(function() return c:run() end)
  end
  return ctls
end

function M.stop(ctls)
  for _, c in ipairs(ctls or {}) do c:stop() end
  for _, c in ipairs(ctls or {}) do if c.task then task.wait(c.task, 10) end end
  -- the VMs' agents stop and their images are unmounted (thawed first)
  for _, c in ipairs(ctls or {}) do if c.teardown_all then c:teardown_all() end end
end

return M
