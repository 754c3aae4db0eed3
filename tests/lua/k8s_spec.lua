-- vmsnap.k8s against `vmsnap serve` (a child process), and against the fault
-- proxy in front of it for what a real server will not do on demand.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.apiserver()
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

local function vds(name, labels)
  return { apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
    metadata = { name = name, labels = labels }, spec = { virtualDiskName = "disk-" .. name } }
end

t.test("kinds resolve through discovery: short names, kinds, plural.group, objects", function()
  t.eq(assert(c:resource("vdsnapshot")).plural, "virtualdisksnapshots")
  t.eq(assert(c:resource("VirtualDiskSnapshot")).plural, "virtualdisksnapshots")
  t.eq(assert(c:resource("virtualdisksnapshots.virtualization.deckhouse.io")).kind, "VirtualDiskSnapshot")
  -- upstream's short names: vds and vms are the snapshots, not the disks and VMs
  t.eq(assert(c:resource("vds")).plural, "virtualdisksnapshots")
  t.eq(assert(c:resource("vms")).plural, "virtualmachinesnapshots")
  t.eq(assert(c:resource("vd")).plural, "virtualdisks")
  t.eq(assert(c:resource("vm")).plural, "virtualmachines")
  t.eq(assert(c:resource({ apiVersion = "v1", kind = "Secret" })).plural, "secrets")
  local r, err, reason = c:resource("nosuchthing")
  t.eq(r, nil)
  t.eq(reason, "NotFound")
  t.eq(err, 'the server doesn\'t have a resource type "nosuchthing"')
end)

t.test("a discovery miss refreshes: a CRD created later resolves", function()
  assert(c:resource("vdsnapshot"))
  task.sleep(1.1) -- refreshes are at most once a second
  local crd = { apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = "gadgets.example.com" },
    spec = { group = "example.com", scope = "Namespaced", names = { plural = "gadgets", singular = "gadget",
      kind = "Gadget", shortNames = { "gd" } },
      versions = { { name = "v1", served = true, storage = true,
        schema = { openAPIV3Schema = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } } } } } }
  assert(c:create(crd))
  t.eq(assert(c:resource("gd")).kind, "Gadget")
  local g = assert(c:create({ apiVersion = "example.com/v1", kind = "Gadget", metadata = { name = "g1" }, size = 3 }))
  t.eq(g.size, 3)
end)

t.test("get, create, update with optimistic concurrency, update_status", function()
  local o = assert(c:create(vds("snap-1", { app = "demo" })))
  t.ok(o.metadata.uid)
  local _, msg, reason, st = c:create(vds("snap-1"))
  t.eq(reason, "AlreadyExists")
  t.contains(msg, '"snap-1" already exists')
  t.eq(st.code, 409)
  local got = assert(c:get("vdsnapshot", "snap-1"))
  got.metadata.labels.tier = "gold"
  local upd = assert(c:update(got))
  t.eq(upd.metadata.labels.tier, "gold")
  got.metadata.labels.tier = "silver" -- got's resourceVersion is now stale
  local _, cmsg, creason = c:update(got)
  t.eq(creason, "Conflict")
  t.contains(cmsg, "the object has been modified")
  upd.status = { phase = "Ready", consistent = true }
  local s = assert(c:update_status(upd))
  t.eq(s.status.phase, "Ready")
  t.eq(s.metadata.generation, 1)
  local _, _, nreason, nst = c:get("vdsnapshot", "missing")
  t.eq(nreason, "NotFound")
  t.eq(nst.details.name, "missing")
end)

t.test("patch: merge, json, server-side apply with conflicts and force; dry run", function()
  assert(c:patch("vdsnapshot", "snap-1", { metadata = { labels = { p = "merge" } } }))
  assert(c:patch("vdsnapshot", "snap-1", { { op = "add", path = "/metadata/annotations", value = { a = "json" } } },
    { type = "json" }))
  local o = assert(c:get("vdsnapshot", "snap-1"))
  t.eq(o.metadata.labels.p, "merge")
  t.eq(o.metadata.annotations.a, "json")
  local cm = { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "ssa" }, data = { k = "v" } }
  assert(c:apply(cm, { field_manager = "one" }))
  assert(c:patch("configmap", "ssa", { data = { k = "other" } }, { field_manager = "two" }))
  local _, msg, reason, st = c:apply(cm, { field_manager = "one" })
  t.eq(reason, "Conflict")
  t.contains(msg, 'conflict with "two"')
  t.eq(st.details.causes[1].field, ".data.k")
  t.eq(assert(c:apply(cm, { field_manager = "one", force = true })).data.k, "v")
  local dry = assert(c:create(vds("dry-one"), { dry_run = true }))
  t.eq(dry.metadata.name, "dry-one")
  t.eq(select(3, c:get("vdsnapshot", "dry-one")), "NotFound")
end)

t.test("delete: preconditions, propagation, finalizers keep the object", function()
  local o = assert(c:create(vds("del-1")))
  local _, _, reason = c:delete("vdsnapshot", "del-1", { preconditions = { uid = "not-the-uid" } })
  t.eq(reason, "Conflict")
  local st = assert(c:delete("vdsnapshot", "del-1", { preconditions = { uid = o.metadata.uid }, propagation = "Background" }))
  t.eq(st.status, "Success")
  assert(c:create(vds("held")))
  assert(c:patch("vdsnapshot", "held", { metadata = { finalizers = { "test/hold" } } }))
  local kept = assert(c:delete("vdsnapshot", "held"))
  t.ok(kept.metadata.deletionTimestamp, "the answer is the object, marked for deletion")
end)

t.test("list: selectors, one page, and every page (1,000 objects)", function()
  local ts = {}
  for w = 1, 8 do
    ts[w] = task.spawn(function()
      for i = w, 1000, 8 do
        assert(c:create({ apiVersion = "v1", kind = "ConfigMap",
          metadata = { name = ("page-%04d"):format(i), labels = { bulk = "yes", odd = tostring(i % 2 == 1) } } }))
      end
    end)
  end
  assert(task.wait_all(ts, 60))
  local page = assert(c:list("configmap", { label_selector = "bulk=yes", limit = 300 }))
  t.eq(#page.items, 300)
  t.ok(page.metadata.continue, "a continue token")
  local n, last = 0, ""
  for obj in c:each("configmap", { label_selector = "bulk=yes", limit = 100 }) do
    n = n + 1
    t.ok(obj.metadata.name > last, "in order")
    last = obj.metadata.name
  end
  t.eq(n, 1000)
  local odd = assert(c:list_all("configmap", { label_selector = "bulk=yes,odd=true" }))
  t.eq(#odd, 500)
  local one = assert(c:list_all("configmap", { field_selector = "metadata.name=page-0007" }))
  t.eq(#one, 1)
  local all = assert(c:list_all("vdsnapshot", { all_namespaces = true }))
  t.ok(#all >= 2)
end)

t.test("watch: initial objects, changes, bookmarks when asked", function()
  local w <close> = assert(c:watch("vdsnapshot", { label_selector = "app=demo", synced = true }))
  local ev = assert(w:next(5))
  t.eq(ev.type, "ADDED")
  t.eq(ev.object.metadata.name, "snap-1")
  t.eq(assert(w:next(5)).type, "SYNCED")
  assert(c:patch("vdsnapshot", "snap-1", { metadata = { labels = { n = "1" } } }))
  ev = assert(w:next(5))
  t.eq(ev.type, "MODIFIED")
  t.eq(ev.object.metadata.labels.n, "1")
  assert(c:patch("vdsnapshot", "snap-1", { metadata = { labels = { app = "other" } } }))
  ev = assert(w:next(5))
  t.eq(ev.type, "DELETED", "it stopped matching the selector")
  local _, _, code = w:next(0.2)
  t.eq(code, "TIMEOUT")
end)

t.test("watch resumes after a server restart without losing changes", function()
  local w <close> = assert(c:watch("configmap", { field_selector = "metadata.name=restart-me", synced = true }))
  t.eq(assert(w:next(5)).type, "SYNCED")
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "restart-me" }, data = { v = "1" } }))
  t.eq(assert(w:next(5)).type, "ADDED")
  srv:stop()
  srv:start()
  assert(c:patch("configmap", "restart-me", { data = { v = "2" } }))
  local ev = assert(w:next(10))
  t.eq(ev.type, "MODIFIED")
  t.eq(ev.object.data.v, "2")
  t.ok(w.reconnects >= 1, "the stream was re-opened")
  t.eq(w.relists, 0, "from its resourceVersion, without a relist")
end)

t.test("informer: cache, indexes, handlers", function()
  local seen = {}
  local inf <close> = c:informer("vdsnapshot", {
    indexes = { by_disk = function(o) return { o.spec.virtualDiskName } end } })
  inf:on(function(typ, obj) seen[#seen + 1] = typ .. ":" .. obj.metadata.name end)
  inf:start()
  assert(inf:wait_synced(5))
  t.eq(inf:get("default", "snap-1").spec.virtualDiskName, "disk-snap-1")
  t.eq(#inf:by_index("by_disk", "disk-snap-1"), 1)
  assert(c:create(vds("inf-1")))
  for _ = 1, 50 do
    if inf:get("default", "inf-1") then break end
    task.sleep(0.05)
  end
  t.eq(#inf:by_index("by_disk", "disk-inf-1"), 1)
  assert(c:delete("vdsnapshot", "inf-1"))
  for _ = 1, 50 do
    if not inf:get("default", "inf-1") then break end
    task.sleep(0.05)
  end
  t.eq(inf:get("default", "inf-1"), nil)
  t.eq(#inf:by_index("by_disk", "disk-inf-1"), 0)
  t.contains(table.concat(seen, " "), "ADDED:inf-1")
  t.contains(table.concat(seen, " "), "DELETED:inf-1")
  t.ok(#inf:list("default") >= 2)
end)

t.test("wait_for: met, deletion, timeout", function()
  task.spawn(function()
    task.sleep(0.2)
    c:patch("vdsnapshot", "snap-1", { status = { phase = "Failed" } }, { subresource = "status" })
  end)
  local o = assert(c:wait_for("vdsnapshot", "snap-1", function(x) return x and x.status and x.status.phase == "Failed" end,
    { timeout = 5 }))
  t.eq(o.status.phase, "Failed")
  task.spawn(function()
    task.sleep(0.2)
    c:patch("vdsnapshot", "held", { metadata = { finalizers = json.null } })
  end)
  t.eq(c:wait_for("vdsnapshot", "held", function(x) return x == nil end, { timeout = 5 }), true)
  local snap = assert(c:get("vdsnapshot", "snap-1"))
  t.eq(c:wait_for(snap, function(x) return x.status.phase == "Failed" end, 5).metadata.name, "snap-1",
    "wait_for(obj, predicate, timeout)")
  local r, msg, code = c:wait_for("vdsnapshot", "snap-1", function() return false end, { timeout = 0.3 })
  t.eq(r, nil)
  t.eq(code, "TIMEOUT")
  t.contains(msg, "virtualdisksnapshots/snap-1")
end)

t.test("subresources: status through subresource(), another group's path", function()
  local st = assert(c:subresource("vdsnapshot", "snap-1", "status"))
  t.eq(st.metadata.name, "snap-1")
  local r, _, reason = c:subresource("vm", "nope", "freeze", { method = "PUT",
    group = "subresources.virtualization.deckhouse.io", body = { unfreezeTimeout = "30s" } })
  t.eq(r, nil)
  t.eq(reason, "NotFound")
end)

t.test("apply_manifest: the user guide's manifests, server-side", function()
  local text = assert(fs.read_file(h.source .. "/tests/data/user-guide-manifests.yaml"))
  local results, failed = c:apply_manifest(text)
  t.eq(failed, 0)
  t.eq(#results, 4)
  t.eq(results[1].object.kind, "VirtualDiskSnapshot")
  local bad, nfail = c:apply_manifest("apiVersion: v1\nkind: Nope\nmetadata: {name: x}\n")
  t.eq(nfail, 1)
  t.contains(bad[1].error, "document 1 (Nope x)")
end)

t.test("configuration: KUBECONFIG with several files merged, explicit context, errors", function()
  local d <close> = assert(fs.tempdir("vmsnap-kc"))
  local real = assert(fs.read_file(srv.kubeconfig))
  -- file 1 names the current context and a second context; file 2 has the cluster and user
  local server = real:match("server: (%S+)")
  local ca = real:match("certificate%-authority%-data: (%S+)")
  assert(fs.write_atomic(d.path .. "/a", ([[
apiVersion: v1
kind: Config
current-context: other
contexts:
- name: main
  context: {cluster: local, user: me, namespace: kube-system}
- name: other
  context: {cluster: missing, user: me}
]])))
  assert(fs.write_atomic(d.path .. "/b", ([[
apiVersion: v1
kind: Config
current-context: ignored-because-a-sets-it
clusters:
- name: local
  cluster: {server: "%s", certificate-authority-data: "%s"}
users:
- name: me
  user: {token: "%s"}
]]):format(server, ca, srv.token)))
  -- KUBECONFIG is read from the environment: run a child with it set
  local r = h.run_vmsnap({ "-e", [[
    local k8s = require("vmsnap.k8s")
    local c = assert(k8s.client({ context = "main" }))
    io.write(c.namespace, " ", assert(c:get("namespace", "default")).metadata.name, "\n")
    local none, e = k8s.client()
    io.write(tostring(none), " ", e, "\n")
  ]] }, { env = { KUBECONFIG = d.path .. "/a:" .. d.path .. "/b" }, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
  t.eq(lines[1], "kube-system default")
  t.eq(lines[2], 'nil context "other" names cluster "missing", which the kubeconfig lacks')
  local _, e2 = k8s.client({ kubeconfig = d.path .. "/nope" })
  t.contains(e2, "no kubeconfig found")
end)

t.test("transport failures: a closed port gives ECONNREFUSED after the deadline", function()
  local dead = assert(k8s.client({ server = "http://127.0.0.1:1", deadline = 0.5 }))
  local t0 = task.now()
  local r, msg, code = dead:request({ path = "/version" })
  t.eq(r, nil)
  t.eq(code, "ECONNREFUSED")
  t.contains(msg, "attempts")
  t.ok(task.now() - t0 < 3)
end)

t.test("vmsnap get and vmsnap apply", function()
  local env = { env = { KUBECONFIG = srv.kubeconfig }, timeout = 30 }
  local m = "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualDiskSnapshot\n" ..
    "metadata: {name: cli-1, labels: {via: cli}}\nspec: {virtualDiskName: d}\n---\n" ..
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cli-cm}\ndata: {a: b}\n"
  local r = h.run_vmsnap({ "apply", "-f", "-" }, { env = env.env, stdin = m, timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  t.eq(r.stdout, "virtualdisksnapshot.virtualization.deckhouse.io/cli-1 serverside-applied\nconfigmap/cli-cm serverside-applied\n")
  r = h.run_vmsnap({ "get", "vdsnapshot", "-l", "via=cli" }, env)
  t.eq(r.status, 0, r.stderr)
  local lines = {}
  for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
  t.ok(lines[1]:match("^NAME%s+PHASE%s+CONSISTENT%s+AGE$"), lines[1])
  t.ok(lines[2]:match("^cli%-1%s+%d+s$"), lines[2])
  r = h.run_vmsnap({ "get", "vdsnapshot", "cli-1", "-o", "json" }, env)
  t.eq(json.decode(r.stdout).spec.virtualDiskName, "d")
  r = h.run_vmsnap({ "get", "vdsnapshot,configmap", "-A", "-l", "via=cli", "-o", "name" }, env)
  t.eq(r.stdout, "virtualdisksnapshot.virtualization.deckhouse.io/cli-1\n")
  r = h.run_vmsnap({ "get", "vdsnapshot", "nope" }, env)
  t.eq(r.status, 1)
  t.eq(r.stderr, 'Error from server (NotFound): virtualdisksnapshots.virtualization.deckhouse.io "nope" not found\n')
  r = h.run_vmsnap({ "get", "vdsnapshot", "-n", "kube-public" }, env)
  t.eq(r.stderr, "No resources found in kube-public namespace.\n")
  r = h.run_vmsnap({ "get", "vdsnapshot", "-o", "xml" }, env)
  t.eq(r.status, 2)
  r = h.run_vmsnap({ "apply", "-f", "-" }, { env = env.env, timeout = 30,
    stdin = "apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualDiskSnapshot\nmetadata: {name: Bad}\nspec: {}\n" })
  t.eq(r.status, 1)
  t.contains(r.stderr, 'Error from server (Invalid): error when applying "STDIN": document 1 (VirtualDiskSnapshot Bad)')
end)

-- ------------------------------------------------------------ faults

local fp <close> = h.faultproxy(srv.port)
local fc = assert(k8s.client({ server = fp.url, token = srv.token, deadline = 20 }))
local CM = "/api/v1/namespaces/default/configmaps"

t.test("faults: 429 (Retry-After honoured) and 5xx bursts are retried for reads", function()
  fp:clear()
  fp:plan(CM .. "/page-0001", "429:1,500,503")
  local t0 = task.now()
  local o = assert(fc:get("configmap", "page-0001"))
  t.eq(o.metadata.name, "page-0001")
  t.ok(task.now() - t0 >= 1, "waited the Retry-After second")
  local st = fp:stats()
  t.eq(st.faulted, 3)
  t.eq(st.proxied >= 1, true)
end)

t.test("faults: retries end with the last answer when they run out", function()
  fp:clear()
  local quick = assert(k8s.client({ server = fp.url, token = srv.token, retries = 2, deadline = 10 }))
  fp:plan(CM .. "/page-0002", "503,503,503,503")
  local r, msg, reason, st = quick:get("configmap", "page-0002")
  t.eq(r, nil)
  t.eq(reason, "ServiceUnavailable")
  t.eq(st.code, 503)
  t.contains(msg, "injected 503")
  t.eq(fp:stats().faulted, 3, "the first try and two retries")
end)

t.test("faults: a connection dropped mid-body is retried for a read, not for a create", function()
  fp:clear()
  fp:plan(CM .. "/page-0003", "drop")
  t.eq(assert(fc:get("configmap", "page-0003")).metadata.name, "page-0003")
  fp:plan(CM, "drop")
  local r, msg, code = fc:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "maybe" } })
  t.eq(r, nil)
  t.eq(code, "CLOSED")
  t.ok(msg and #msg > 0)
  t.eq(fp:stats().proxied, 1, "the create was not sent again")
  t.eq(select(3, c:get("configmap", "maybe")), "NotFound")
end)

t.test("faults: a 500 on create is not retried; a 429 is (it was not processed)", function()
  fp:clear()
  fp:plan(CM, "500")
  local _, _, reason = fc:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "c500" } })
  t.eq(reason, "InternalError")
  fp:plan(CM, "429:0")
  assert(fc:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "c429" } }))
  t.eq(fp:stats().faulted, 2)
end)

t.test("faults: a slow answer times out per attempt; a read tries again", function()
  fp:clear()
  local impatient = assert(k8s.client({ server = fp.url, token = srv.token, timeout = 0.5, deadline = 10 }))
  fp:plan(CM .. "/page-0004", "slow:1500")
  local t0 = task.now()
  t.eq(assert(impatient:get("configmap", "page-0004")).metadata.name, "page-0004")
  t.ok(task.now() - t0 >= 0.5)
  fp:plan(CM, "slow:1500")
  local r, _, code = impatient:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "slowc" } })
  t.eq(r, nil)
  t.eq(code, "TIMEOUT")
end)

t.test("faults: a cut watch reconnects; answered with 410 it relists and reports the difference", function()
  fp:clear()
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "watched" }, data = { v = "0" } }))
  -- the list passes; its watch is cut after 200 ms; the reconnect is answered 410
  fp:plan(CM, "ok,cut:200,gone")
  local w <close> = assert(fc:watch("configmap", { field_selector = "metadata.name=watched", synced = true }))
  t.eq(assert(w:next(5)).type, "ADDED")
  t.eq(assert(w:next(5)).type, "SYNCED")
  t.eq(select(3, w:next(0.1)), "TIMEOUT") -- the watch request is open now
  task.sleep(0.4)                         -- it has been cut
  assert(c:patch("configmap", "watched", { data = { v = "1" } }))
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "unrelated" } }))
  local ev = assert(w:next(10))
  t.eq(ev.type, "MODIFIED")
  t.eq(ev.object.data.v, "1")
  t.eq(w.reconnects, 1)
  t.eq(w.relists, 1)
  t.eq(fp:stats().faulted, 2)
  -- and it goes on watching
  assert(c:patch("configmap", "watched", { data = { v = "2" } }))
  t.eq(assert(w:next(5)).object.data.v, "2")
end)

t.test("faults: a watch stream that goes silent and stays open past its timeoutSeconds is opened again; nothing it missed is lost", function()
  fp:clear()
  assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "stalled" }, data = { v = "0" } }))
  -- the list passes; the watch's answer passes for 200 ms, then nothing more, the connection left open
  fp:plan(CM, "ok,stall:200")
  local w <close> = assert(fc:watch("configmap", { field_selector = "metadata.name=stalled", synced = true,
    timeout_seconds = 2, idle_grace = 1 }))
  t.eq(assert(w:next(5)).type, "ADDED")
  t.eq(assert(w:next(5)).type, "SYNCED")
  t.eq(select(3, w:next(0.5)), "TIMEOUT") -- the watch request is open, and stalls
  assert(c:patch("configmap", "stalled", { data = { v = "1" } }))
  local t0 = task.now()
  local ev = assert(w:next(10))
  t.eq(ev.type, "MODIFIED")
  t.eq(ev.object.data.v, "1")
  t.eq(w.stalls, 1, "taken for dead once")
  t.ok(task.now() - t0 < 5, ("seen %.1f s after the change (timeoutSeconds 2 + grace 1)"):format(task.now() - t0))
  t.eq(fp:stats().faulted, 1)
end)

t.test("faults: an informer whose watch and lists fail for a while forgets what was deleted meanwhile; garbled events are not objects", function()
  fp:clear()
  for _, n in ipairs({ "keep-a", "gone-b" }) do
    assert(c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = n, labels = { inf = "ghost" } } }))
  end
  local qc = assert(k8s.client({ server = fp.url, token = srv.token, retries = 0, deadline = 5 }))
  local inf <close> = qc:informer("configmap", { label_selector = "inf=ghost" })
  inf:start()
  assert(inf:wait_synced(10))
  t.ok(inf:get("default", "gone-b"))
  -- the watch is cut; reconnects and lists fail (a 500, garbage, an event as the answer) while gone-b is deleted
  fp:plan(CM, "cut:100,500,empty200,event200,junk200,503")
  fp:reset()
  task.sleep(0.3)
  assert(c:delete("configmap", "gone-b"))
  assert(c:patch("configmap", "keep-a", { data = { v = "after" } }))
  local ok = false
  for _ = 1, 100 do
    local a = inf:get("default", "keep-a")
    if not inf:get("default", "gone-b") and a and a.data and a.data.v == "after" then ok = true break end
    task.sleep(0.1)
  end
  t.ok(ok, "the deletion and the change are seen once the answers are good again")
  t.eq(fp:stats().faulted, 6, "every bad answer was given")
  for _, o in ipairs(inf:list()) do
    t.ok(type(o.metadata) == "table" and o.metadata.name, "only objects in the cache")
  end
  fp:clear()
end)

t.done()
