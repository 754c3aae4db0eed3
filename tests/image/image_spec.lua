-- The controller image (tools/image.sh) run for real: podman starts the
-- image's own entrypoint as in a pod — the ServiceAccount's files mounted
-- where Kubernetes mounts them, KUBERNETES_SERVICE_HOST/PORT, user 65532,
-- a read-only root filesystem — against `vmsnap up --no-controllers` on
-- the host, holding only deploy/'s roles; a disk snapshot goes to Ready.
-- Run by `make check-image` (it builds the image first); not part of
-- `make check` (the image takes a minute to build).
local t = require("tap")
local k8s = require("vmsnap.k8s")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local h = require("helpers")

t.timeout = 120
local IMAGE = os.getenv("VMSNAP_IMAGE") or "localhost/vmsnap:latest"

local function podman(args, o)
  local argv = { "podman", "--runtime", "runc" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run(argv, { timeout = (o and o.timeout) or 60 }))
end

if podman({ "image", "exists", IMAGE }).status ~= 0 then
  t.skip("the image", IMAGE .. " is not built (make check-image builds it)")
  return t.done()
end

t.test("the image's controller, as in a pod with only deploy/'s roles, takes a disk snapshot to Ready", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local G = "virtualization.deckhouse.io/v1alpha2"
  local sa <close> = assert(fs.tempdir("vmsnap-image-sa"))
  h.install_deploy_rbac(c, srv, sa.path)
  local name = ("vmsnap-check-%d"):format(math.random(1e9))
  -- (the ulimits: this machine's container runtime may not raise them)
  local run = podman({ "run", "--detach", "--name", name, "--network=host", "--read-only",
    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
    "--volume", sa.path .. ":/var/run/secrets/kubernetes.io/serviceaccount:ro",
    "--env", "KUBERNETES_SERVICE_HOST=127.0.0.1", "--env", "KUBERNETES_SERVICE_PORT=" .. srv.port,
    IMAGE, "--log-json", "controller", "--leader-election-namespace=vmsnap-system" })
  t.eq(run.status, 0, run.stderr)
  local _ <close> = setmetatable({}, { __close = function() podman({ "rm", "--force", "--time", "5", name }) end })
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "idisk" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  assert(c:wait_for("vd", "idisk", h.phase_is("Ready"), { timeout = 30 }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "isnap" }, spec = { virtualDiskName = "idisk" } }))
  local s = c:wait_for("vdsnapshot", "isnap", h.phase_is("Ready"), { timeout = 60 })
  local logs = podman({ "logs", name }).stdout .. podman({ "logs", name }).stderr
  t.ok(s, "Ready; the container said:\n" .. logs)
  t.eq(s and s.status.consistent, true)
  -- it ran as the ServiceAccount, not as an administrator
  local lease = c:get("leases", "vmsnap-snapshot-controllers", { namespace = "vmsnap-system" })
  t.ok(lease and lease.spec.holderIdentity, "it leads through the Role's Lease")
  t.contains(logs, '"msg":"')
  local top = podman({ "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", name })
  t.contains(top.stdout, '65532:65532 "/usr/bin/vmsnap"')
  local size = podman({ "image", "inspect", "--format", "{{.Size}}", IMAGE }).stdout
  print(("# image %s: %.0f MiB"):format(IMAGE, (tonumber(size) or 0) / 1048576))
end)

t.done()
