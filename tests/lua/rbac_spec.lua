-- vmsnap serve's authentication and RBAC, through real kubectl and through
-- vmsnap.k8s and raw HTTP: --token-file users, ServiceAccount tokens
-- (TokenRequest), client certificates' groups, impersonation, Roles,
-- ClusterRoles and their bindings, Kubernetes' 403 messages, and the self
-- reviews behind `kubectl auth can-i` and `whoami`.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")
local rbac = require("vmsnap.apiserver.rbac")
local h = require("helpers")

t.timeout = 60

local dir <close> = assert(fs.tempdir("vmsnap-rbac"))
local TOKENS = dir.path .. "/tokens.csv"
assert(fs.write_atomic(TOKENS, table.concat({
  "# users of this test",
  'tok-alice,alice,uid-a,"devs,qa"',
  "",
  "tok-bob,bob,uid-b",
  "tok-carol,carol,uid-c,ops",
}, "\n") .. "\n"))
local srv <close> = h.apiserver({ args = { "--token-file", TOKENS } })
local admin = assert(k8s.client({ kubeconfig = srv.kubeconfig }))

-- kubectl as the administrator, or with --token T (or other flags)
local function kubectl(args, token)
  local argv = {}
  if token then argv[#argv + 1] = "--token=" .. token end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = srv:kubectl(argv)
  return r.status, (r.stdout .. r.stderr):gsub("%s+$", "")
end
local function as(token)
  return assert(k8s.client({ server = srv.url, token = token, ca_data = srv.ca_data }))
end

t.test("a --token-file line is a user: kubectl auth whoami; no rule, no access; an unknown token is 401", function()
  local st, out = kubectl({ "auth", "whoami", "-o", "json" }, "tok-alice")
  t.eq(st, 0, out)
  local info = json.decode(out).status.userInfo
  t.eq(info.username, "alice")
  t.eq(info.uid, "uid-a")
  t.eq(table.concat(info.groups, ","), "devs,qa,system:authenticated")
  st, out = kubectl({ "get", "configmaps" }, "tok-alice")
  t.eq(st, 1)
  t.eq(out, 'Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" '
    .. 'in API group "" in the namespace "default"')
  st, out = kubectl({ "get", "configmaps", "-A" }, "tok-alice")
  t.contains(out, 'cannot list resource "configmaps" in API group "" at the cluster scope')
  st, out = kubectl({ "get", "configmaps" }, "tok-nobody")
  t.eq(st, 1)
  t.contains(out, "Unauthorized")
  -- discovery and the self reviews are every authenticated user's
  st, out = kubectl({ "api-resources", "--api-group=rbac.authorization.k8s.io", "-o", "name" }, "tok-bob")
  t.eq(st, 0, out)
  t.contains(out, "clusterrolebindings.rbac.authorization.k8s.io")
end)

t.test("a Role bound to a group in one namespace; kubectl auth can-i and --list answer from the same rules", function()
  local st, out = kubectl({ "create", "role", "cm-reader", "--verb=get,list,watch", "--resource=configmaps" })
  t.eq(st, 0, out)
  st, out = kubectl({ "create", "rolebinding", "devs-read", "--role=cm-reader", "--group=devs" })
  t.eq(st, 0, out)
  st, out = kubectl({ "get", "configmaps" }, "tok-alice")
  t.eq(st, 0, out)
  st, out = kubectl({ "get", "configmaps", "-n", "kube-system" }, "tok-alice")
  t.eq(out, 'Error from server (Forbidden): configmaps is forbidden: User "alice" cannot list resource "configmaps" '
    .. 'in API group "" in the namespace "kube-system"')
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps" }, "tok-alice")), "yes")
  local code, no = kubectl({ "auth", "can-i", "delete", "configmaps" }, "tok-alice")
  t.eq(code .. " " .. no, "1 no")
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps", "-n", "kube-system" }, "tok-alice")), "no")
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps" }, "tok-bob")), "no", "bob is not in devs")
  st, out = kubectl({ "auth", "can-i", "--list" }, "tok-alice")
  t.eq(st, 0, out)
  t.ok(out:find("configmaps%s+%[%]%s+%[%]%s+%[get list watch%]"), out)
  -- the same answer through the API, from a client that is not kubectl
  local r = assert(as("tok-alice"):request({ method = "POST", path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    body = { apiVersion = "authorization.k8s.io/v1", kind = "SelfSubjectAccessReview",
      spec = { resourceAttributes = { namespace = "default", verb = "watch", resource = "configmaps" } } } }))
  local status = json.decode(r.body).status
  t.eq(status.allowed, true)
  t.eq(status.reason, 'RBAC: allowed by RoleBinding "default/devs-read" of Role "cm-reader" to Group "devs"')
end)

t.test("resourceNames, subresources, non-resource URLs and a ClusterRole bound in one namespace", function()
  assert(admin:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "one" }, data = { a = "1" } }))
  assert(admin:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "two" }, data = { a = "2" } }))
  assert(admin:create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRole", metadata = { name = "one-only" },
    rules = { { apiGroups = { "" }, resources = { "configmaps" }, resourceNames = { "one" }, verbs = { "get", "update" } },
      { apiGroups = { "" }, resources = { "namespaces/status" }, verbs = { "get" } },
      { nonResourceURLs = { "/metrics" }, verbs = { "get" } } } }))
  assert(admin:create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "RoleBinding",
    metadata = { name = "bob-one", namespace = "default" },
    roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "one-only" },
    subjects = { { kind = "User", name = "bob" } } }))
  local bob = as("tok-bob")
  t.ok(bob:get("configmaps", "one"), "bob gets configmap one")
  local o, msg, reason, st = bob:get("configmaps", "two")
  t.eq(o, nil)
  t.eq(reason, "Forbidden")
  t.eq(msg, 'configmaps "two" is forbidden: User "bob" cannot get resource "configmaps" in API group "" in the namespace "default"')
  t.eq(st.details.name, "two")
  t.eq(st.details.kind, "configmaps")
  -- a RoleBinding grants in its namespace only, even for a ClusterRole
  local _, m2 = bob:get("configmaps", "one", { namespace = "kube-system" })
  t.contains(m2, 'in the namespace "kube-system"')
  -- a non-resource URL granted by a RoleBinding does not count (cluster scope only): 403
  local code, out = kubectl({ "get", "--raw", "/metrics" }, "tok-bob")
  t.eq(code, 1)
  t.eq(out, 'Error from server (Forbidden): forbidden: User "bob" cannot get path "/metrics"')
  assert(admin:create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRoleBinding",
    metadata = { name = "bob-metrics" }, roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "one-only" },
    subjects = { { kind = "User", name = "bob" } } }))
  code, out = kubectl({ "get", "--raw", "/metrics" }, "tok-bob")
  t.eq(code, 0)
  t.contains(out, "apiserver_request_total")
  -- a subresource is a resource of its own: namespaces/status is not namespaces
  t.ok(bob:request({ path = "/api/v1/namespaces/default/status" }), "namespaces/status is granted")
  local ns, nmsg = bob:get("namespaces", "default")
  t.eq(ns, nil)
  t.eq(nmsg, 'namespaces "default" is forbidden: User "bob" cannot get resource "namespaces" in API group "" at the cluster scope')
end)

t.test("ServiceAccounts: kubectl create token, its identity and groups, a binding, and the end of its token", function()
  assert(admin:create({ apiVersion = "v1", kind = "Namespace", metadata = { name = "team" } }))
  local st, out = kubectl({ "create", "serviceaccount", "robot", "-n", "team" })
  t.eq(st, 0, out)
  st, out = kubectl({ "create", "token", "robot", "-n", "team", "--duration=1h" })
  t.eq(st, 0, out)
  local tok = out
  t.ok(tok:match("^vmsnap%-sa%.%x+$"), tok)
  st, out = kubectl({ "auth", "whoami", "-o", "json" }, tok)
  local info = json.decode(out).status.userInfo
  t.eq(info.username, "system:serviceaccount:team:robot")
  t.eq(table.concat(info.groups, ","), "system:serviceaccounts,system:serviceaccounts:team,system:authenticated")
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps", "-n", "team" }, tok)), "no")
  st, out = kubectl({ "create", "rolebinding", "robot-view", "-n", "team", "--role=nope", "--serviceaccount=team:robot" })
  t.eq(st, 0, out)
  -- a binding to a role that does not exist is named in the denial
  st, out = kubectl({ "get", "configmaps", "-n", "team" }, tok)
  t.eq(out, 'Error from server (Forbidden): configmaps is forbidden: User "system:serviceaccount:team:robot" cannot list '
    .. 'resource "configmaps" in API group "" in the namespace "team": RBAC: role.rbac.authorization.k8s.io "nope" not found')
  -- roleRef cannot change
  st, out = kubectl({ "patch", "rolebinding", "robot-view", "-n", "team", "--type=merge", "-p", '{"roleRef":{"name":"other"}}' })
  t.eq(st, 1)
  t.contains(out, 'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"Role", Name:"other"}: cannot change roleRef')
  st, out = kubectl({ "create", "role", "nope", "-n", "team", "--verb=list", "--resource=configmaps" })
  t.eq(st, 0, out)
  t.eq(select(2, kubectl({ "get", "configmaps", "-n", "team", "-o", "name" }, tok)), "")
  -- too short a token
  st, out = kubectl({ "create", "token", "robot", "-n", "team", "--duration=5m" })
  t.eq(st, 1)
  t.contains(out, "may not specify a duration less than 10 minutes")
  st, out = kubectl({ "create", "token", "ghost", "-n", "team" })
  t.contains(out, 'serviceaccounts "ghost" not found')
  -- the account's deletion ends its tokens; one of the same name later does not revive them
  st, out = kubectl({ "delete", "serviceaccount", "robot", "-n", "team" })
  t.eq(st, 0, out)
  kubectl({ "create", "serviceaccount", "robot", "-n", "team" })
  st, out = kubectl({ "get", "configmaps", "-n", "team" }, tok)
  t.contains(out, "Unauthorized")
  -- tokens outlive a restart of the server
  st, out = kubectl({ "create", "token", "robot", "-n", "team" })
  local tok2 = out
  srv:stop()
  srv:start()
  admin = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  t.eq(select(2, kubectl({ "get", "configmaps", "-n", "team", "-o", "name" }, tok2)), "")
end)

t.test("impersonation (kubectl --as, --as-group) needs the impersonate verb; the administrator has it", function()
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps", "--as", "alice", "--as-group", "devs" })), "yes")
  t.eq(select(2, kubectl({ "auth", "can-i", "list", "configmaps", "--as", "alice" })), "no", "alice without devs")
  local st, out = kubectl({ "get", "configmaps", "--as", "bob" }, "tok-alice")
  t.eq(st, 1)
  t.eq(out, 'Error from server (Forbidden): users "bob" is forbidden: User "alice" cannot impersonate resource "users" '
    .. 'in API group "" at the cluster scope')
  assert(admin:create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRole", metadata = { name = "imp-bob" },
    rules = { { apiGroups = { "" }, resources = { "users" }, resourceNames = { "bob" }, verbs = { "impersonate" } } } }))
  assert(admin:create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRoleBinding", metadata = { name = "alice-imp" },
    roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "imp-bob" },
    subjects = { { kind = "User", name = "alice" } } }))
  st, out = kubectl({ "get", "configmap", "one", "-o", "name", "--as", "bob" }, "tok-alice")
  t.eq(st, 0, out)
  t.eq(out, "configmap/one")
  st, out = kubectl({ "get", "configmaps", "--as", "carol" }, "tok-alice")
  t.contains(out, 'users "carol" is forbidden')
end)

t.test("a client certificate's O is a group: system:masters may do anything, others what RBAC grants", function()
  if not proc.run({ "openssl", "version" }, { timeout = 10 }) then return t.skip("client certificates", "no openssl") end
  local d <close> = assert(fs.tempdir("vmsnap-rbac-tls"))
  local function sh(cmd) assert(proc.run({ "sh", "-c", cmd }, { cwd = d.path, timeout = 60, check = true })) end
  sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=rbac-ca 2>/dev/null")
  for _, who in ipairs({ { "root", "/CN=root/O=system:masters" }, { "dev", "/CN=dave/O=devs" } }) do
    sh(("openssl req -newkey rsa:2048 -nodes -keyout %s.key -out %s.csr -subj %s 2>/dev/null"):format(who[1], who[1], who[2]))
    sh(("openssl x509 -req -in %s.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out %s.crt -days 2 2>/dev/null"):format(who[1], who[1]))
  end
  local s2 <close> = h.apiserver({ args = { "--client-ca", d.path .. "/ca.crt", "--token-file", TOKENS } })
  local function client(name)
    return assert(k8s.client({ server = s2.url, ca_data = s2.ca_data, cert_file = d.path .. "/" .. name .. ".crt",
      key_file = d.path .. "/" .. name .. ".key" }))
  end
  t.ok(client("root"):create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "x" } }), "system:masters")
  local o, msg = client("dev"):get("configmaps", "x")
  t.eq(o, nil)
  t.eq(msg, 'configmaps "x" is forbidden: User "dave" cannot get resource "configmaps" in API group "" in the namespace "default"')
  t.ok(client("root"):create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "RoleBinding",
    metadata = { name = "devs-edit", namespace = "default" },
    roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "devs-cm" },
    subjects = { { kind = "Group", name = "devs" } } }))
  t.ok(client("root"):create({ apiVersion = "rbac.authorization.k8s.io/v1", kind = "ClusterRole", metadata = { name = "devs-cm" },
    rules = { { apiGroups = { "*" }, resources = { "*" }, verbs = { "get" } } } }))
  t.ok(client("dev"):get("configmaps", "x"), "granted once the ClusterRole exists (the policy is read again)")
end)

t.test("token files: every malformed line is refused with its file and line; serve does not start", function()
  local cases = {
    { "tok,user\n", ":1: a line is token,user,uid" },
    { "a,b,c\na,d,e\n", ":2: the token of line 1 again" },
    { 'x,y,z,"unterminated\n', ":1: an unterminated quoted field" },
    { "to ken,u,1\n", ":1: the token must be printable ASCII" },
    { "tok,,1\n", ":1: the user name is empty" },
  }
  for _, c in ipairs(cases) do
    local users, err = rbac.parse_token_file(c[1], "f.csv")
    t.eq(users, nil, c[1])
    t.contains(err, "f.csv" .. c[2])
  end
  local users = assert(rbac.parse_token_file('t1,u1,1,"a, b,c"\r\n# x\nt2,"u,2",2\n', "ok.csv"))
  t.eq(table.concat(users.t1.groups, "|"), "a|b|c|system:authenticated")
  t.eq(users.t2.username, "u,2")
  local bad = dir.path .. "/bad.csv"
  assert(fs.write_atomic(bad, "only-a-token\n"))
  local d2 <close> = assert(fs.tempdir("vmsnap-rbac-bad"))
  local r = assert(proc.run({ h.vmsnap, "serve", "--data", d2.path, "--token-file", bad }, { timeout = 20 }))
  t.ok(r.status ~= 0, "serve refuses to start")
  t.contains(r.stderr, "--token-file: " .. bad .. ":1: a line is token,user,uid")
end)

t.test("the rules as RBAC matches them (units): wildcards, */sub, prefixes, names", function()
  local allows = rbac.allows
  t.eq(allows({ verbs = { "*" }, apiGroups = { "*" }, resources = { "*" } }, { verb = "delete", group = "x", resource = "y" }), true)
  t.eq(allows({ verbs = { "get" }, apiGroups = { "" }, resources = { "*/status" } },
    { verb = "get", group = "", resource = "pods", subresource = "status" }), true)
  t.eq(allows({ verbs = { "get" }, apiGroups = { "" }, resources = { "*/status" } },
    { verb = "get", group = "", resource = "pods", subresource = "" }), false)
  t.eq(allows({ verbs = { "get" }, apiGroups = { "" }, resources = { "pods" } },
    { verb = "get", group = "", resource = "pods", subresource = "log" }), false, "a subresource is not its resource")
  t.eq(allows({ verbs = { "get" }, apiGroups = { "" }, resources = { "pods" }, resourceNames = { "a" } },
    { verb = "list", group = "", resource = "pods", name = "" }), false)
  t.eq(allows({ verbs = { "list" }, apiGroups = { "" }, resources = { "pods" }, resourceNames = { "a" } },
    { verb = "list", group = "", resource = "pods", name = "" }), false, "names never match a collection")
  t.eq(allows({ verbs = { "get" }, nonResourceURLs = { "/apis/*" } }, { verb = "get", path = "/apis/x/v1" }), true)
  t.eq(allows({ verbs = { "get" }, nonResourceURLs = { "/apis/*" } }, { verb = "get", path = "/api" }), false)
  t.eq(allows({ verbs = { "get" }, nonResourceURLs = { "/metrics" } }, { verb = "get", group = "", resource = "metrics" }), false)
end)

t.done()
