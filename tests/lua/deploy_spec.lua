-- deploy/: the manifests render with `kubectl kustomize`, hold what a
-- restricted namespace demands, and the ClusterRole grants what the snapshot
-- controllers ask of the API — checked against every request a real
-- `vmsnap controller` makes (VMSNAP_K8S_AUDIT) while it runs a disk
-- snapshot, a VM snapshot of a running VM, a restore and deletions.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local yaml = require("vmsnap.yaml")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local DEPLOY = h.source .. "/deploy"
t.timeout = 150

local function render()
  local r = assert(proc.run({ "kubectl", "kustomize", DEPLOY }, { timeout = 60 }))
  assert(r.status == 0, r.stderr)
  local docs = {}
  for _, d in ipairs(assert(yaml.load_all(r.stdout))) do docs[#docs + 1] = d end
  return docs
end

local function find(docs, kind, name)
  for _, d in ipairs(docs) do
    if d.kind == kind and (not name or d.metadata.name == name) then return d end
  end
end

t.test("kubectl kustomize renders every part; the Deployment is restricted, probed and sized", function()
  local docs = render()
  for _, k in ipairs({ "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "ConfigMap", "Deployment", "Service" }) do
    t.ok(find(docs, k), k .. " rendered")
  end
  local d = find(docs, "Deployment", "vmsnap-controller")
  t.eq(d.metadata.namespace, "vmsnap-system")
  t.eq(d.spec.replicas, 2)
  local pod = d.spec.template.spec
  t.eq(pod.serviceAccountName, "vmsnap-controller")
  t.eq(pod.securityContext.runAsNonRoot, true)
  local c = pod.containers[1]
  t.eq(c.securityContext.readOnlyRootFilesystem, true)
  t.eq(c.securityContext.allowPrivilegeEscalation, false)
  t.eq(c.securityContext.capabilities.drop[1], "ALL")
  t.eq(c.livenessProbe.httpGet.path, "/healthz")
  t.eq(c.readinessProbe.httpGet.path, "/readyz")
  t.ok(c.resources.requests.cpu and c.resources.requests.memory, "requests")
  local args = table.concat(c.args, " ")
  t.contains(args, "--metrics-addr=0.0.0.0:8080")
  t.contains(args, "--health-addr=0.0.0.0:8081")
  -- the container's arguments are ones this vmsnap takes (its --help answers
  -- only when every flag before it parses)
  local argv = { h.vmsnap }
  for _, a in ipairs(c.args) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--help"
  local run = assert(proc.run(argv, { timeout = 20 }))
  t.eq(run.status, 0, "the Deployment's args parse: " .. tostring(run.stderr))
  t.contains(run.stdout, "usage: vmsnap controller")
  local env = {}
  for _, e in ipairs(c.env) do env[e.name] = e.value end
  t.eq(env.VMSNAP_SCRIPTS_PATH, "/etc/vmsnap/scripts", "the scripts path is the ConfigMap's mount")
  t.eq(find(docs, "Namespace").metadata.labels["pod-security.kubernetes.io/enforce"], "restricted")
  for _, k in ipairs({ "ClusterRole", "Role" }) do
    for _, rule in ipairs(find(docs, k).rules) do
      for _, f in ipairs({ "apiGroups", "resources", "verbs" }) do
        for _, v in ipairs(rule[f]) do t.ok(v ~= "*", k .. ": no wildcard in " .. f) end
      end
    end
  end
end)

t.test("the Grafana dashboard is JSON and shows only families that docs/metrics.md names", function()
  local json = require("vmsnap.json")
  local d = json.decode(assert(fs.read_file(DEPLOY .. "/grafana-dashboard.json")))
  t.ok(type(d) == "table" and #d.panels >= 8, "panels")
  local doc = assert(fs.read_file(h.source .. "/docs/metrics.md"))
  local n = 0
  for _, p in ipairs(d.panels) do
    for _, tg in ipairs(p.targets) do
      for name in tg.expr:gmatch("[%a_][%w_]*") do
        local family = name:match("^(.-)_bucket$") or name
        if family:match("^vmsnap_") or family:match("^workqueue_") or family:match("^controller_runtime_")
            or family:match("^leader_election_") then
          n = n + 1
          t.contains(doc, "`" .. family .. "`", p.title .. ": " .. family .. " is documented")
        end
      end
    end
  end
  t.ok(n >= 10, "the panels use the families")
end)

-- "group/resource[/sub]" and the verb of one request "METHOD PATH [watch]"
local function verb_of(line)
  local method, path, watch = line:match("^(%S+) (%S+)( ?w?a?t?c?h?)$")
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  local group, i
  if segs[1] == "api" then group, i = "", 3 else group, i = segs[2], 4 end
  local ns
  if segs[i] == "namespaces" and #segs >= i + 2 then ns, i = segs[i + 1], i + 2 end
  local res, name, sub = segs[i], segs[i + 1], segs[i + 2]
  if not res then return nil end
  local verb = ({ POST = "create", PUT = "update", PATCH = "patch", DELETE = name and "delete" or "deletecollection" })[method]
  if method == "GET" then verb = watch ~= "" and "watch" or (name and "get" or "list") end
  return group, sub and (res .. "/" .. sub) or res, verb, ns, name
end

local function allowed(rules, group, resource, verb, name)
  for _, r in ipairs(rules) do
    local g, rs, v = false, false, false
    for _, x in ipairs(r.apiGroups) do if x == group then g = true end end
    for _, x in ipairs(r.resources) do if x == resource then rs = true end end
    for _, x in ipairs(r.verbs) do if x == verb then v = true end end
    local n = not r.resourceNames
    for _, x in ipairs(r.resourceNames or {}) do if x == name then n = true end end
    if g and rs and v and n then return r end
  end
end

local install_rbac = h.install_deploy_rbac

-- `vmsnap controller` as in a pod of the Deployment: the container's
-- arguments (its $(POD_NAMESPACE) expanded; its 0.0.0.0 ports on 127.0.0.1
-- here), in-cluster config (the service host and port, the
-- ServiceAccount's files), nothing else
local function in_pod(srv, dir, audit)
  local c = find(render(), "Deployment", "vmsnap-controller").spec.template.spec.containers[1]
  local argv = { h.vmsnap }
  for _, a in ipairs(c.args) do
    a = a:gsub("%$%(POD_NAMESPACE%)", "vmsnap-system"):gsub("0%.0%.0%.0:%d+", function() return "127.0.0.1:" .. h.free_port() end)
    argv[#argv + 1] = a
  end
  local env = { PATH = os.getenv("PATH"), HOME = dir, VMSNAP_SCRIPTS_PATH = os.getenv("VMSNAP_SCRIPTS_PATH"),
    KUBERNETES_SERVICE_HOST = "127.0.0.1", KUBERNETES_SERVICE_PORT = tostring(srv.port),
    VMSNAP_SERVICE_ACCOUNT_DIR = dir, VMSNAP_K8S_AUDIT = audit }
  local ctl = assert(proc.spawn(argv,
    { stdout = "null", stderr = os.getenv("SPEC_DEBUG") and "inherit" or "null", env = h.child_env(env) }))
  return ctl, setmetatable({}, { __close = function()
    if ctl:running() then ctl:kill("TERM") end
    if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
    ctl:close()
  end })
end

t.test("in a pod, holding only deploy/'s roles, the controllers run every workflow; each request is granted", function()
  local probe <close>, why = h.qga_env()
  local vms = probe ~= nil
  if probe then probe:cleanup() else print("# without a running VM: " .. tostring(why)) end
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local G = "virtualization.deckhouse.io/v1alpha2"
  local pod <close> = assert(fs.tempdir("vmsnap-pod"))
  install_rbac(c, srv, pod.path)
  -- the whole of deploy/, as kubectl applies it: the server's dry run takes every object
  local rendered = assert(proc.run({ "kubectl", "kustomize", DEPLOY }, { timeout = 60 }))
  local dry = srv:kubectl({ "apply", "--dry-run=server", "-f", "-" }, { stdin = rendered.stdout })
  t.eq(dry.status, 0, dry.stderr)
  t.contains(dry.stdout, "deployment.apps/vmsnap-controller created (server dry run)")
  t.eq(c:get("deployments", "vmsnap-controller", { namespace = "vmsnap-system" }), nil, "a dry run stores nothing")
  local audit = pod.path .. "/audit"
  local ctl, _ <close> = in_pod(srv, pod.path, audit)
  local function ready(kind, name)
    local o = c:wait_for(kind, name, h.phase_is("Ready"), { timeout = 40 })
    assert(o, ("%s %s not Ready; the controller is %s"):format(kind, name, ctl:running() and "running" or "gone"))
    return o
  end
  -- a disk snapshot, then its deletion
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "dd" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  ready("vd", "dd")
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "dds" }, spec = { virtualDiskName = "dd" } }))
  ready("vdsnapshot", "dds")
  assert(c:delete("vdsnapshot", "dds"))
  assert(c:wait_for("vdsnapshot", "dds", function(o) return o == nil end, { timeout = 20 }))
  -- a VM snapshot of a running VM (its freeze), a restore beside it, deletions
  if vms then
    h.running_vm(c, "dvm", "droot")
    -- a hook around the freeze (a command in the guest before it and after the thaw)
    assert(c:patch("vm", "dvm", { metadata = { annotations = { ["vmsnap.io/hooks"] =
      '[{"name":"guest-command","params":{"pre_freeze":["true"],"post_thaw":["true"]}}]' } } }))
    assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "dvs" },
      spec = { virtualMachineName = "dvm", keepIPAddress = "Never" } }))
    local snap = ready("vmsnapshot", "dvs")
    local rec = require("vmsnap.json").decode(snap.metadata.annotations["vmsnap.io/hooks"] or "{}")
    t.ok(rec and next(rec), "the hooks ran and were recorded: " .. tostring(snap.metadata.annotations["vmsnap.io/hooks"]))
    assert(c:create({ apiVersion = G, kind = "VirtualMachineRestore", metadata = { name = "dvr" },
      spec = { virtualMachineSnapshotName = "dvs", nameReplacements = {
        { from = { kind = "VirtualMachine", name = "dvm" }, to = "dvm2" },
        { from = { kind = "VirtualDisk", name = "droot" }, to = "droot2" } } } }))
    ready("vmrestore", "dvr")
    -- a schedule: two runs asked for (run-now) under keepLast 1: the first is pruned
    local SCHED = "virtualmachinesnapshotschedules.vmsnap.io"
    assert(c:create({ apiVersion = "vmsnap.io/v1alpha1", kind = "VirtualMachineSnapshotSchedule",
      metadata = { name = "dsch", namespace = "default" },
      spec = { schedule = "@yearly", virtualMachineNames = { "dvm" }, retention = { keepLast = 1 } } }))
    for i = 1, 2 do
      assert(c:patch(SCHED, "dsch", { metadata = { annotations = { ["vmsnap.io/run-now"] = "r" .. i } } },
        { namespace = "default" }))
      local s = c:wait_for(SCHED, "dsch", function(o)
        local st = o and o.status or {}
        return st.lastRunNow == "r" .. i and st.lastRun and st.lastRun.ready == 1 and o
      end, { namespace = "default", timeout = 40 })
      t.ok(s, "the schedule's run " .. i .. " is Ready")
    end
    t.ok(c:wait_for(SCHED, "dsch", function(o) return o and o.status and o.status.held == 1 end,
      { namespace = "default", timeout = 20 }), "the older run was pruned")
    assert(c:delete("vmrestore", "dvr"))
    assert(c:delete("vmsnapshot", "dvs"))
    assert(c:wait_for("vmsnapshot", "dvs", function(o) return o == nil end, { timeout = 20 }))
  end
  task.sleep(0.5)
  ctl:kill("TERM")
  ctl:wait(10)
  local docs = render()
  local cluster = find(docs, "ClusterRole", "vmsnap-controller").rules
  local lease = find(docs, "Role", "vmsnap-leader-election")
  t.eq(lease.metadata.namespace, "vmsnap-system", "the Lease is in the controllers' own namespace")
  local lines = assert(fs.read_file(audit), "the controller wrote its requests")
  local used, n = {}, 0
  for line in lines:gmatch("[^\n]+") do
    local group, resource, verb, ns, name = verb_of(line)
    if group and not (group == "" and resource == nil) then
      n = n + 1
      local rule
      if group == "coordination.k8s.io" and resource == "leases" then
        rule = ns == "vmsnap-system" and allowed(lease.rules, group, resource, verb, name)
      else
        rule = allowed(cluster, group, resource, verb, name)
      end
      t.ok(rule, ("granted: %s %s/%s (%s)"):format(verb, group, resource, line))
      if rule then used[rule] = used[rule] or {} used[rule][verb .. " " .. resource] = true end
    end
  end
  t.ok(n >= 20, ("%d distinct requests seen"):format(n))
  -- what the role grants and this run did not use: only the grants of paths
  -- this run does not take, each named with its path
  local PAST_CACHE = "a read past the cache (a status write that conflicted, a miss before the cache synced)"
  local UNDO = "a restore undoing its creates after one was refused"
  local rare = {
    ["get virtualdisksnapshots"] = PAST_CACHE, ["get virtualmachinesnapshots"] = PAST_CACHE,
    ["get virtualmachinerestores"] = PAST_CACHE, ["get virtualmachineblockdeviceattachments"] = PAST_CACHE,
    ["get virtualmachinesnapshotschedules"] = PAST_CACHE,
    ["get volumesnapshotclasses"] = PAST_CACHE, ["get persistentvolumeclaims"] = PAST_CACHE,
    ["delete virtualmachines"] = UNDO, ["delete virtualdisks"] = UNDO, ["delete secrets"] = UNDO,
    ["delete virtualmachineblockdeviceattachments"] = UNDO, ["delete virtualmachineipaddresses"] = UNDO,
    ["create virtualmachineblockdeviceattachments"] = "a restore of a VM with an attached disk",
    ["create virtualmachineipaddresses"] = "a restore keeping the VM's address (keepIPAddress: Always)",
    ["list virtualmachineipaddresses"] = "a restore keeping the VM's address (its conflict check)",
    ["patch events"] = "an Event said again (its count)",
  }
  for _, r in ipairs(cluster) do
    for _, res in ipairs(r.resources) do
      for _, v in ipairs(r.verbs) do
        local key = v .. " " .. res
        if not (used[r] and used[r][key]) then
          local why = rare[key]
          if vms then
            t.ok(why, "granted and used by no path: " .. key)
          end
          if why then print(("# granted, used on a path this run does not take: %s (%s)"):format(key, why)) end
        end
      end
    end
  end
end)

t.test("in a pod, a rule taken from the ClusterRole is the exact 403 on the snapshot's condition, not a retry loop", function()
  local srv <close> = h.platform({ args = { "--no-controllers" } })
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  local G = "virtualization.deckhouse.io/v1alpha2"
  local pod <close> = assert(fs.tempdir("vmsnap-pod"))
  install_rbac(c, srv, pod.path)
  -- the controller may no longer create VolumeSnapshots
  local role = assert(c:get("clusterroles.rbac.authorization.k8s.io", "vmsnap-controller"))
  local taken = 0
  for _, rule in ipairs(role.rules) do
    if rule.resources[1] == "volumesnapshots" then
      local kept = require("vmsnap.json").array()
      for _, v in ipairs(rule.verbs) do if v ~= "create" then kept[#kept + 1] = v else taken = taken + 1 end end
      rule.verbs = kept
    end
  end
  t.eq(taken, 1, "the rule that lets it create VolumeSnapshots")
  assert(c:update(role))
  local ctl, _ <close> = in_pod(srv, pod.path)
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "fd" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  assert(c:wait_for("vd", "fd", h.phase_is("Ready"), { timeout = 30 }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "fds" }, spec = { virtualDiskName = "fd" } }))
  local o = c:wait_for("vdsnapshot", "fds", function(x) return x and x.status and x.status.phase == "Failed" and x end, { timeout = 30 })
  t.ok(o, "the snapshot failed; the controller is " .. (ctl:running() and "running" or "gone"))
  local cond = require("vmsnap.k8s.object").condition(o, "VirtualDiskSnapshotReady")
  -- the API's message as the condition's (capitalised, as the workflow's failures are)
  t.eq(cond.reason, "VirtualDiskSnapshotFailed")
  t.eq(cond.message, 'Volumesnapshots.snapshot.storage.k8s.io is forbidden: User "system:serviceaccount:vmsnap-system:vmsnap-controller" '
    .. 'cannot create resource "volumesnapshots" in API group "snapshot.storage.k8s.io" in the namespace "default"')
  t.eq(c:get("volumesnapshot", "fds"), nil, "no VolumeSnapshot")
end)

t.done()
