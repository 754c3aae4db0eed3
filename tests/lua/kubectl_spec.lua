-- End to end: the real kubectl against `vmsnap serve` (a child process with
-- its own data directory; kubectl with a private --cache-dir).
local t = require("tap")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local proc = require("vmsnap.proc")
local h = require("helpers")

if not proc.run({ "kubectl", "version", "--client" }, { timeout = 30 }) then
  t.skip("kubectl tests", "kubectl is not installed")
  return t.done()
end

local srv <close> = h.apiserver()

local function k(args, o)
  return srv:kubectl(args, o)
end

local function ok(args, o)
  local r = k(args, o)
  if r.status ~= 0 then
    error(("kubectl %s: exit %d: %s"):format(table.concat(args, " "), r.status, r.stderr), 2)
  end
  return r.stdout
end

local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local GUIDE = h.source .. "/tests/data/user-guide-manifests.yaml"
local guide_text = assert(require("vmsnap.fs").read_file(GUIDE))

t.test("api-resources lists the virtualization kinds with short names", function()
  local out = ok({ "api-resources" })
  t.contains(out, "virtualdisksnapshots")
  local line = out:match("\n(virtualdisksnapshots[^\n]*)")
  t.contains(line, "vdsnapshot,vds")
  t.contains(line, "virtualization.deckhouse.io/v1alpha2")
  t.contains(line, "VirtualDiskSnapshot")
  t.contains(out, "volumesnapshotclasses")
  t.contains(out, "namespaces")
end)

t.test("the user guide's manifests apply as written, from stdin", function()
  local out = ok({ "apply", "-f", "-" }, { stdin = guide_text })
  t.contains(out, "virtualdisksnapshot.virtualization.deckhouse.io/linux-vm-root-snapshot created")
  t.contains(out, "virtualmachinerestore.virtualization.deckhouse.io/linux-vm-restore created")
  local again = ok({ "apply", "-f", "-" }, { stdin = guide_text })
  t.contains(again, "linux-vm-root-snapshot unchanged")
end)

t.test("apply of a changed manifest is configured; diff shows it first; delete -f removes it", function()
  local m = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineIPAddress
metadata: {name: ip-1}
spec: {type: Auto}
]]
  t.contains(ok({ "apply", "-f", "-" }, { stdin = m }), "virtualmachineipaddress.virtualization.deckhouse.io/ip-1 created")
  local changed = m:gsub("type: Auto", "type: Static, staticIP: 10.0.0.5")
  local d = k({ "diff", "-f", "-" }, { stdin = changed })
  t.eq(d.status, 1, d.stderr)
  t.contains(d.stdout, "+  staticIP: 10.0.0.5")
  t.contains(ok({ "apply", "-f", "-" }, { stdin = changed }), "ip-1 configured")
  t.eq(ok({ "get", "vmip", "ip-1", "-o", "jsonpath={.spec.staticIP}" }), "10.0.0.5")
  t.contains(ok({ "delete", "-f", "-" }, { stdin = changed }), 'virtualmachineipaddress.virtualization.deckhouse.io "ip-1" deleted')
  t.eq(k({ "get", "vmip", "ip-1" }).status, 1)
end)

t.test("built-ins: apply of a changed Secret (strategic merge) folds stringData into data", function()
  local m = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {user: admin}\n"
  t.contains(ok({ "apply", "-f", "-" }, { stdin = m }), "secret/creds created")
  t.contains(ok({ "apply", "-f", "-" }, { stdin = m:gsub("admin", "root") }), "secret/creds configured")
  local sec = json.decode(ok({ "get", "secret", "creds", "-o", "json" }))
  t.eq(sec.data.user, "cm9vdA==")
  t.eq(sec.stringData, nil)
  t.eq(sec.type, "Opaque")
  local out = lines(ok({ "get", "secret", "creds" }))
  t.ok(out[2]:match("^creds%s+Opaque%s+1%s+%d+s$"), out[2])
end)

t.test("categories and explain", function()
  local out = ok({ "get", "virtualization" })
  t.contains(out, "virtualdisksnapshot.virtualization.deckhouse.io/linux-vm-root-snapshot")
  t.contains(out, "virtualmachinerestore.virtualization.deckhouse.io/linux-vm-restore")
  out = ok({ "explain", "vdsnapshot.spec" })
  t.contains(out, "virtualDiskName")
  t.contains(out, "-required-")
  -- our CRDs describe what kubectl explain shows
  t.contains(ok({ "explain", "vmsnapshot" }), "A snapshot of a VirtualMachine and its disks.")
  t.contains(ok({ "explain", "vmsnapshot.spec.requiredConsistency" }), "frozen")
  t.contains(ok({ "explain", "vmrestore.spec.nameReplacements" }), "Names to give the restored objects")
end)

t.test("short names and categories are upstream's: delete vms deletes VM snapshots, not VMs; all holds only VMs of ours", function()
  local G = "apiVersion: virtualization.deckhouse.io/v1alpha2\n"
  local N = { "-n", "shortnames" }
  local function okn(args, o)
    local a = { table.unpack(args) }
    for _, x in ipairs(N) do a[#a + 1] = x end
    return ok(a, o)
  end
  ok({ "create", "namespace", "shortnames" })
  okn({ "apply", "-f", "-" }, { stdin = G .. "kind: VirtualMachine\nmetadata: {name: sn-vm}\nspec: {runPolicy: AlwaysOff, blockDeviceRefs: [{kind: VirtualDisk, name: sn-d}]}\n---\n" ..
    G .. "kind: VirtualMachineSnapshot\nmetadata: {name: sn-vms}\nspec: {virtualMachineName: sn-vm}\n---\n" ..
    G .. "kind: VirtualDisk\nmetadata: {name: sn-d}\nspec: {persistentVolumeClaim: {size: 1Mi}}\n---\n" ..
    G .. "kind: VirtualDiskSnapshot\nmetadata: {name: sn-vds}\nspec: {virtualDiskName: sn-d}\n" })
  local out = okn({ "get", "all", "-o", "name" })
  t.contains(out, "virtualmachine.virtualization.deckhouse.io/sn-vm")
  t.eq(out:find("virtualdisk", 1, true), nil, "no disks or disk snapshots in all")
  t.eq(out:find("virtualmachinesnapshot", 1, true), nil, "no VM snapshots in all")
  t.contains(okn({ "get", "vds", "-o", "name" }), "virtualdisksnapshot.virtualization.deckhouse.io/sn-vds")
  t.contains(okn({ "delete", "vms", "--all" }), 'virtualmachinesnapshot.virtualization.deckhouse.io "sn-vms" deleted')
  t.contains(okn({ "get", "vm", "-o", "name" }), "sn-vm", "the VM is still there")
  t.contains(okn({ "delete", "vds", "--all" }), '"sn-vds" deleted')
  t.contains(okn({ "get", "vd", "-o", "name" }), "sn-d", "the disk is still there")
  ok({ "delete", "namespace", "shortnames" })
end)

t.test("--sort-by on a spec field, apply --prune with the default allowlist, cluster-info, auth whoami and can-i", function()
  local G = "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualDiskSnapshot\n"
  local two = G .. "metadata: {name: sort-b, namespace: sorting, labels: {set: p}}\nspec: {virtualDiskName: zz}\n---\n" ..
    G .. "metadata: {name: sort-a, namespace: sorting, labels: {set: p}}\nspec: {virtualDiskName: yy}\n"
  ok({ "create", "namespace", "sorting" })
  ok({ "apply", "-f", "-" }, { stdin = two })
  local out = lines(ok({ "get", "vdsnapshot", "-n", "sorting", "--sort-by=.spec.virtualDiskName", "-o", "name" }))
  t.eq(table.concat(out, ","), "virtualdisksnapshot.virtualization.deckhouse.io/sort-a,virtualdisksnapshot.virtualization.deckhouse.io/sort-b")
  out = lines(ok({ "get", "vdsnapshot", "-n", "sorting", "--sort-by=.metadata.name" }))
  t.ok(out[2]:match("^sort%-a") and out[3]:match("^sort%-b"), table.concat(out, " | "))
  -- prune: the default allowlist (Endpoints, Pods, Deployments, ...) resolves; what left the manifest goes
  local CMX = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: sorting, labels: {set: p}}\n"
  ok({ "apply", "-f", "-" }, { stdin = CMX:format("keep") .. "---\n" .. CMX:format("drop") })
  local r = k({ "apply", "--prune", "-l", "set=p", "-n", "sorting", "-f", "-" }, { stdin = CMX:format("keep") })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "configmap/drop pruned")
  t.eq(k({ "get", "configmap", "drop", "-n", "sorting" }).status, 1, "gone")
  -- a custom resource is pruned when the allowlist names it
  r = k({ "apply", "--prune", "-l", "set=p", "-n", "sorting", "--prune-allowlist=virtualization.deckhouse.io/v1alpha2/VirtualDiskSnapshot",
    "-f", "-" }, { stdin = G .. "metadata: {name: sort-a, namespace: sorting, labels: {set: p}}\nspec: {virtualDiskName: yy}\n" })
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "virtualdisksnapshot.virtualization.deckhouse.io/sort-b pruned")
  t.contains(ok({ "cluster-info" }), "Kubernetes control plane is running at " .. srv.url)
  out = ok({ "auth", "whoami" })
  t.contains(out, "vmsnap-admin")
  t.contains(out, "system:masters")
  t.eq(k({ "auth", "can-i", "delete", "virtualdisksnapshots", "-n", "sorting" }).stdout, "yes\n")
  t.contains(ok({ "auth", "can-i", "--list" }), "*.*")
  ok({ "delete", "namespace", "sorting" })
end)

t.test("a misspelled kind is `no matches for kind`; unknown fields of built-in kinds are refused; explain knows core kinds", function()
  local r = k({ "apply", "-f", "-" }, { stdin = "apiVersion: v1\nkind: ConfigMapp\nmetadata: {name: typo}\n" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'no matches for kind "ConfigMapp" in version "v1"')
  r = k({ "apply", "-f", "-" }, { stdin = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: junk}\nbogus: 1\n" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'strict decoding error: unknown field "bogus"')
  r = k({ "apply", "-f", "-" }, { stdin = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typed}\ndata: {a: 1}\n" })
  t.eq(r.status, 1, "a number where a string belongs")
  local out = ok({ "explain", "configmap.data" })
  t.contains(out, "KIND:       ConfigMap")
  t.contains(out, "map[string]string")
  t.contains(ok({ "explain", "secret" }), "stringData")
end)

t.test("get vdsnapshot prints NAME PHASE CONSISTENT AGE; status shows after a status patch", function()
  local out = lines(ok({ "get", "vdsnapshot" }))
  t.ok(out[1]:match("^NAME%s+PHASE%s+CONSISTENT%s+AGE$"), out[1])
  t.ok(out[2]:match("^linux%-vm%-root%-snapshot%s+%d+s$"), out[2])
  ok({ "patch", "vdsnapshot", "linux-vm-root-snapshot", "--subresource=status", "--type=merge",
    "-p", '{"status":{"phase":"Ready","consistent":true}}' })
  out = lines(ok({ "get", "vdsnapshot" }))
  t.ok(out[2]:match("^linux%-vm%-root%-snapshot%s+Ready%s+true%s+%d+s$"), out[2])
end)

t.test("defaults come from the CRD schema; status in a manifest is dropped", function()
  local vms = json.decode(ok({ "get", "vmsnapshot", "linux-vm-snapshot", "-o", "json" }))
  t.eq(vms.spec.keepIPAddress, "Never")
  t.eq(vms.spec.requiredConsistency, true)
  local out = ok({ "apply", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineSnapshot
metadata: {name: defaults}
spec: {virtualMachineName: vm1}
status: {phase: Ready}
]] })
  t.contains(out, "created")
  local d = json.decode(ok({ "get", "vmsnapshot", "defaults", "-o", "json" }))
  t.eq(d.spec.keepIPAddress, "Always")
  t.eq(d.spec.requiredConsistency, true)
  t.eq(d.status, nil)
  t.eq(d.metadata.generation, 1)
end)

t.test("create, AlreadyExists, -o yaml|json|jsonpath", function()
  local manifest = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata: {name: snap-1, labels: {app: demo}}
spec: {virtualDiskName: disk-1}
]]
  t.contains(ok({ "create", "-f", "-" }, { stdin = manifest }), "virtualdisksnapshot.virtualization.deckhouse.io/snap-1 created")
  local r = k({ "create", "-f", "-" }, { stdin = manifest })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'Error from server (AlreadyExists): error when creating "STDIN": virtualdisksnapshots.virtualization.deckhouse.io "snap-1" already exists')
  t.contains(ok({ "get", "vdsnapshot", "snap-1", "-o", "yaml" }), "virtualDiskName: disk-1")
  local obj = json.decode(ok({ "get", "vdsnapshot", "snap-1", "-o", "json" }))
  t.eq(obj.metadata.labels.app, "demo")
  t.ok(obj.metadata.uid and obj.metadata.creationTimestamp:match("Z$"))
  t.eq(ok({ "get", "vdsnapshot", "snap-1", "-o", "jsonpath={.spec.virtualDiskName}" }), "disk-1")
end)

t.test("-A, -l and --show-labels", function()
  ok({ "create", "namespace", "other" })
  ok({ "apply", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata: {name: snap-x, namespace: other, labels: {app: other}}
spec: {virtualDiskName: d}
]] })
  local out = lines(ok({ "get", "vdsnapshot", "-A", "-l", "app in (demo,other)", "--show-labels" }))
  t.ok(out[1]:match("^NAMESPACE%s+NAME%s+PHASE%s+CONSISTENT%s+AGE%s+LABELS$"), out[1])
  t.eq(#out, 3)
  t.ok(out[2]:match("^default%s+snap%-1 .*app=demo$"), out[2])
  t.ok(out[3]:match("^other%s+snap%-x .*app=other$"), out[3])
  out = lines(ok({ "get", "vdsnapshot", "-A", "-l", "app!=demo" }))
  t.eq(#out, 3, "objects without the label match != too")
  local r = k({ "get", "vdsnapshot", "-l", "app in (" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "unable to parse requirement")
end)

t.test("replace with a stale resourceVersion is a Conflict; label and annotate", function()
  local cur = ok({ "get", "vdsnapshot", "snap-1", "-o", "json" })
  t.contains(ok({ "label", "vdsnapshot", "snap-1", "tier=gold" }), "labeled")
  t.contains(ok({ "annotate", "vdsnapshot", "snap-1", "note=hi" }), "annotated")
  local r = k({ "replace", "-f", "-" }, { stdin = cur })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on virtualdisksnapshots.virtualization.deckhouse.io "snap-1": the object has been modified; please apply your changes to the latest version and try again')
  local fresh = json.decode(ok({ "get", "vdsnapshot", "snap-1", "-o", "json" }))
  t.eq(fresh.metadata.labels.tier, "gold")
  t.eq(fresh.metadata.annotations.note, "hi")
  fresh.metadata.labels.replaced = "yes"
  t.contains(ok({ "replace", "-f", "-" }, { stdin = json.encode(fresh) }), "replaced")
end)

t.test("the spec of a snapshot is immutable: Invalid with the spec's message", function()
  local r = k({ "patch", "vdsnapshot", "snap-1", "--type=merge", "-p", '{"spec":{"virtualDiskName":"other"}}' })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'The VirtualDiskSnapshot "snap-1" is invalid: spec: VirtualDiskSnapshot is an idempotent resource: specification changes are not available')
end)

t.test("patch --type=merge and --type=json; strategic merge on a CR is 415", function()
  ok({ "apply", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDisk
metadata: {name: disk-p}
spec: {persistentVolumeClaim: {size: 1Gi}}
]] })
  t.contains(ok({ "patch", "vd", "disk-p", "--type=merge", "-p", '{"spec":{"persistentVolumeClaim":{"size":"2Gi"}}}' }), "patched")
  t.contains(ok({ "patch", "vd", "disk-p", "--type=json", "-p",
    '[{"op":"add","path":"/spec/persistentVolumeClaim/storageClassName","value":"fast"}]' }), "patched")
  local d = json.decode(ok({ "get", "vd", "disk-p", "-o", "json" }))
  t.eq(d.spec.persistentVolumeClaim.size, "2Gi")
  t.eq(d.spec.persistentVolumeClaim.storageClassName, "fast")
  t.eq(d.metadata.generation, 3)
  local r = k({ "patch", "vd", "disk-p", "-p", '{"spec":{}}' })
  t.eq(r.status, 1)
  t.contains(r.stderr, "application/strategic-merge-patch+json is not supported by virtualization.deckhouse.io/v1alpha2, Kind=VirtualDisk")
  t.contains(r.stderr, "accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
end)

t.test("apply --server-side creates, updates and reports field conflicts", function()
  local m = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDisk
metadata: {name: disk-ssa, labels: {tier: gold}}
spec: {persistentVolumeClaim: {size: 1Gi}}
]]
  t.contains(ok({ "apply", "--server-side", "-f", "-" }, { stdin = m }), "disk-ssa serverside-applied")
  ok({ "patch", "vd", "disk-ssa", "--type=merge", "-p", '{"spec":{"persistentVolumeClaim":{"size":"3Gi"}}}' })
  local r = k({ "apply", "--server-side", "-f", "-" }, { stdin = m })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'Apply failed with 1 conflict: conflict with "kubectl-patch" using virtualization.deckhouse.io/v1alpha2: .spec.persistentVolumeClaim.size')
  t.contains(ok({ "apply", "--server-side", "--force-conflicts", "-f", "-" }, { stdin = m }), "serverside-applied")
  local d = json.decode(ok({ "get", "vd", "disk-ssa", "-o", "json", "--show-managed-fields" }))
  t.eq(d.spec.persistentVolumeClaim.size, "1Gi")
  local managers = {}
  for _, e in ipairs(d.metadata.managedFields) do managers[e.manager .. "/" .. e.operation] = true end
  t.ok(managers["kubectl/Apply"], "kubectl owns its applied fields")
  -- a field dropped from the applied manifest is removed
  ok({ "apply", "--server-side", "-f", "-" }, { stdin = m:gsub("labels: {tier: gold}", "labels: {}") })
  d = json.decode(ok({ "get", "vd", "disk-ssa", "-o", "json" }))
  t.eq(d.metadata.labels and d.metadata.labels.tier, nil)
end)

t.test("Invalid and strict unknown-field errors name the fields", function()
  local r = k({ "create", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineSnapshot
metadata: {name: Bad_Name}
spec: {keepIPAddress: Sometimes}
]] })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'The VirtualMachineSnapshot "Bad_Name" is invalid:')
  t.contains(r.stderr, '* metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain')
  t.contains(r.stderr, '* spec.keepIPAddress: Unsupported value: "Sometimes": supported values: "Always", "Never"')
  t.contains(r.stderr, "* spec.virtualMachineName: Required value")
  r = k({ "create", "-f", "-" }, { stdin = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata: {name: unknown-field}
spec: {virtualDiskName: d, colour: blue}
]] })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'strict decoding error: unknown field "spec.colour"')
  r = k({ "get", "vdsnapshot", "nope" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'Error from server (NotFound): virtualdisksnapshots.virtualization.deckhouse.io "nope" not found')
  r = k({ "get", "nosuchthing" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'the server doesn\'t have a resource type "nosuchthing"')
end)

t.test("get -w prints a row per change", function()
  local w = assert(proc.spawn({ "kubectl", "--kubeconfig", srv.kubeconfig, "--cache-dir", srv.cache,
    "get", "vdsnapshot", "snap-1", "-w" }, { stdout = "capture", stderr = "capture" }))
  local _ <close> = w
  task.sleep(1)
  ok({ "patch", "vdsnapshot", "snap-1", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"InProgress"}}' })
  task.sleep(0.5)
  ok({ "patch", "vdsnapshot", "snap-1", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Ready"}}' })
  task.sleep(1)
  w:kill("TERM")
  local r = assert(w:wait(5))
  local out = lines(r.stdout)
  t.ok(out[1]:match("^NAME%s+PHASE"), r.stdout)
  t.ok(r.stdout:match("snap%-1%s+InProgress"), r.stdout)
  t.ok(r.stdout:match("snap%-1%s+Ready"), r.stdout)
end)

t.test("wait --for=jsonpath returns when the condition is met, and times out otherwise", function()
  local waiter = task.spawn(function()
    return k({ "wait", "--for=jsonpath={.status.phase}=Failed", "vdsnapshot/snap-1", "--timeout=15s" })
  end)
  task.sleep(1)
  ok({ "patch", "vdsnapshot", "snap-1", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Failed"}}' })
  local r = assert(task.wait(waiter))
  t.eq(r.status, 0, r.stderr)
  t.contains(r.stdout, "virtualdisksnapshot.virtualization.deckhouse.io/snap-1 condition met")
  r = k({ "wait", "--for=jsonpath={.status.phase}=Pending", "vdsnapshot/snap-1", "--timeout=1s" })
  t.eq(r.status, 1)
  t.contains(r.stderr, "timed out waiting for the condition on virtualdisksnapshots/snap-1")
end)

t.test("delete waits for finalizers; the object stays readable meanwhile", function()
  ok({ "patch", "vdsnapshot", "snap-1", "--type=merge", "-p", '{"metadata":{"finalizers":["test.vmsnap.io/hold"]}}' })
  local r = k({ "delete", "vdsnapshot", "snap-1", "--timeout=1s" })
  t.eq(r.status, 1)
  t.contains(r.stdout, 'virtualdisksnapshot.virtualization.deckhouse.io "snap-1" deleted')
  local obj = json.decode(ok({ "get", "vdsnapshot", "snap-1", "-o", "json" }))
  t.ok(obj.metadata.deletionTimestamp, "deletionTimestamp is set")
  r = k({ "patch", "vdsnapshot", "snap-1", "--type=merge", "-p",
    '{"metadata":{"finalizers":["test.vmsnap.io/hold","another"]}}' })
  t.eq(r.status, 1)
  t.contains(r.stderr, "no new finalizers can be added if the object is being deleted")
  local waiter = task.spawn(function() return k({ "wait", "--for=delete", "vdsnapshot/snap-1", "--timeout=15s" }) end)
  task.sleep(0.5)
  ok({ "patch", "vdsnapshot", "snap-1", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]' })
  r = assert(task.wait(waiter))
  t.eq(r.status, 0, r.stderr)
  t.eq(k({ "get", "vdsnapshot", "snap-1" }).status, 1)
end)

t.test("delete of an owner removes its children (background and foreground)", function()
  for _, cascade in ipairs({ "background", "foreground" }) do
    ok({ "apply", "-f", "-" }, { stdin = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\ndata: {a: b}\n" })
    local uid = ok({ "get", "cm", "owner", "-o", "jsonpath={.metadata.uid}" })
    for _, n in ipairs({ "child-1", "child-2" }) do
      ok({ "apply", "-f", "-" }, { stdin = ([[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata:
  name: %s
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "%s", blockOwnerDeletion: true}]
spec: {virtualDiskName: d}
]]):format(n, uid) })
    end
    ok({ "delete", "cm", "owner", "--cascade=" .. cascade })
    local gone = false
    for _ = 1, 50 do
      if ok({ "get", "vdsnapshot", "-o", "name" }):find("child%-") == nil then gone = true break end
      task.sleep(0.1)
    end
    t.ok(gone, cascade .. ": the children are gone")
  end
end)

t.test("describe shows the object's events", function()
  local uid = ok({ "get", "vdsnapshot", "linux-vm-root-snapshot", "-o", "jsonpath={.metadata.uid}" })
  ok({ "apply", "-f", "-" }, { stdin = ([[
apiVersion: v1
kind: Event
metadata: {name: ev-1}
involvedObject: {apiVersion: virtualization.deckhouse.io/v1alpha2, kind: VirtualDiskSnapshot,
  name: linux-vm-root-snapshot, namespace: default, uid: "%s"}
reason: SnapshotReady
message: the snapshot is ready
type: Normal
source: {component: vmsnap}
firstTimestamp: "%s"
lastTimestamp: "%s"
count: 1
]]):format(uid, os.date("!%Y-%m-%dT%H:%M:%SZ"), os.date("!%Y-%m-%dT%H:%M:%SZ")) })
  local out = ok({ "describe", "vdsnapshot", "linux-vm-root-snapshot" })
  t.contains(out, "Events:")
  t.ok(out:match("Normal%s+SnapshotReady%s+%d+s%s+vmsnap%s+the snapshot is ready"), out)
  local ev = lines(ok({ "get", "events" }))
  t.ok(ev[1]:match("^LAST SEEN%s+TYPE%s+REASON%s+OBJECT%s+MESSAGE$"), ev[1])
end)

t.test("create namespace and secret (protobuf bodies); a terminating namespace refuses content", function()
  t.contains(ok({ "create", "namespace", "p1" }), "namespace/p1 created")
  t.contains(ok({ "-n", "p1", "create", "secret", "generic", "s1", "--from-literal=user=admin" }), "secret/s1 created")
  local s = json.decode(ok({ "-n", "p1", "get", "secret", "s1", "-o", "json" }))
  t.eq(s.data.user, "YWRtaW4=")
  t.eq(s.type, "Opaque")
  local out = lines(ok({ "get", "ns", "p1" }))
  t.ok(out[2]:match("^p1%s+Active"), out[2])
  t.contains(ok({ "delete", "namespace", "p1", "--timeout=15s" }), 'namespace "p1" deleted')
  t.eq(k({ "get", "ns", "p1" }).status, 1)
  t.eq(k({ "-n", "p1", "get", "secret", "s1" }).status, 1)
end)

t.test("objects and resourceVersions survive kill -9 and a restart", function()
  local before = json.decode(ok({ "get", "vdsnapshot", "linux-vm-root-snapshot", "-o", "json" }))
  ok({ "label", "vdsnapshot", "linux-vm-root-snapshot", "durable=yes" })
  srv:kill9()
  srv:start()
  local after = json.decode(ok({ "get", "vdsnapshot", "linux-vm-root-snapshot", "-o", "json" }))
  t.eq(after.metadata.uid, before.metadata.uid)
  t.eq(after.metadata.labels.durable, "yes")
  t.ok(tonumber(after.metadata.resourceVersion) > tonumber(before.metadata.resourceVersion))
  t.eq(after.status.phase, "Ready")
  ok({ "label", "vdsnapshot", "linux-vm-root-snapshot", "after=restart" })
  local again = json.decode(ok({ "get", "vdsnapshot", "linux-vm-root-snapshot", "-o", "json" }))
  t.ok(tonumber(again.metadata.resourceVersion) > tonumber(after.metadata.resourceVersion), "the counter continues")
end)

t.done()
