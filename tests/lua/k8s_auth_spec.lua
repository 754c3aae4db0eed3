-- vmsnap.k8s: TLS (CA and client certificates made here with openssl),
-- tls-server-name, exec credential plugins, the in-cluster service account
-- with a rotating token, and keeping credentials out of logs and errors.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local b64 = require("vmsnap.base64")
local h = require("helpers")

if not proc.run({ "openssl", "version" }, { timeout = 10 }) then
  t.skip("TLS tests", "openssl is not installed")
  return t.done()
end

local d <close> = assert(fs.tempdir("vmsnap-k8s-tls"))
local D = d.path
local function sh(cmd)
  assert(proc.run({ "sh", "-c", cmd }, { cwd = D, timeout = 60, check = true }))
end
local function read(name) return assert(fs.read_file(D .. "/" .. name)) end
local function write(name, text) assert(fs.write_atomic(D .. "/" .. name, text)) end

-- a CA; a server certificate for a DNS name only (so tls-server-name matters)
-- and one for 127.0.0.1; a client certificate; and an unrelated CA
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca 2>/dev/null")
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt -days 2 -subj /CN=other-ca 2>/dev/null")
sh("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=kubernetes.vmsnap.test 2>/dev/null")
sh("printf 'subjectAltName=DNS:kubernetes.vmsnap.test' > ext && openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 2 -extfile ext 2>/dev/null")
sh("openssl req -newkey rsa:2048 -nodes -keyout cli.key -out cli.csr -subj /CN=admin/O=system:masters 2>/dev/null")
sh("openssl x509 -req -in cli.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out cli.crt -days 2 2>/dev/null")

local srv <close> = h.apiserver({ args = { "--tls-cert", D .. "/srv.crt", "--tls-key", D .. "/srv.key",
  "--client-ca", D .. "/ca.crt", "--token", "tok-123", "--tls-ca", D .. "/ca.crt",
  "--tls-server-name", "kubernetes.vmsnap.test" } })
local port = srv.port

local function kubeconfig(name, cluster, user)
  local function block(tbl)
    local out = {}
    for k, v in pairs(tbl) do out[#out + 1] = ("      %s: %s"):format(k, json.encode(v)) end
    table.sort(out)
    return table.concat(out, "\n")
  end
  write(name, ([[
apiVersion: v1
kind: Config
current-context: c
clusters:
- name: x
  cluster:
%s
users:
- name: u
  user:
%s
contexts:
- name: c
  context: {cluster: x, user: u}
]]):format(block(cluster), next(user) and block(user) or "      {}"))
  return D .. "/" .. name
end

local server_url = ("https://127.0.0.1:%d"):format(port)

t.test("client certificate and CA from kubeconfig data; tls-server-name", function()
  local kc = kubeconfig("kc-data", { server = server_url, ["certificate-authority-data"] = b64.encode(read("ca.crt")),
    ["tls-server-name"] = "kubernetes.vmsnap.test" },
    { ["client-certificate-data"] = b64.encode(read("cli.crt")), ["client-key-data"] = b64.encode(read("cli.key")) })
  local c = assert(k8s.client({ kubeconfig = kc }))
  t.eq(assert(c:get("namespace", "default")).metadata.name, "default")
end)

t.test("client certificate and CA as files (relative to the kubeconfig)", function()
  local kc = kubeconfig("kc-files", { server = server_url, ["certificate-authority"] = "ca.crt",
    ["tls-server-name"] = "kubernetes.vmsnap.test" }, { ["client-certificate"] = "cli.crt", ["client-key"] = "cli.key" })
  local c = assert(k8s.client({ kubeconfig = kc }))
  t.eq(assert(c:list("namespace")).kind, "NamespaceList")
end)

t.test("verification failures are clear errors", function()
  -- the wrong CA
  local kc = kubeconfig("kc-wrong-ca", { server = server_url, ["certificate-authority"] = "other.crt",
    ["tls-server-name"] = "kubernetes.vmsnap.test" }, { token = "tok-123" })
  local c = assert(k8s.client({ kubeconfig = kc, deadline = 5 }))
  local r, msg, code = c:get("namespace", "default")
  t.eq(r, nil)
  t.eq(code, "TLS")
  t.contains(msg, "certificate authority")
  -- the right CA, but the name in the certificate is not 127.0.0.1
  kc = kubeconfig("kc-no-name", { server = server_url, ["certificate-authority"] = "ca.crt" }, { token = "tok-123" })
  c = assert(k8s.client({ kubeconfig = kc, deadline = 5 }))
  r, msg, code = c:get("namespace", "default")
  t.eq(code, "TLS")
  -- insecure-skip-tls-verify skips both checks
  kc = kubeconfig("kc-insecure", { server = server_url, ["insecure-skip-tls-verify"] = true }, { token = "tok-123" })
  c = assert(k8s.client({ kubeconfig = kc }))
  t.ok(c:get("namespace", "default"))
  -- no credentials at all: the server says so
  kc = kubeconfig("kc-anon", { server = server_url, ["insecure-skip-tls-verify"] = true }, {})
  c = assert(k8s.client({ kubeconfig = kc }))
  local _, _, reason = c:get("namespace", "default")
  t.eq(reason, "Unauthorized")
end)

t.test("tokens: inline, from a file (re-read when it changes), and the kubeconfig vmsnap serve wrote", function()
  local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
  t.ok(c:get("namespace", "default"), "serve's own kubeconfig works")
  write("token", "wrong\n")
  local kc = kubeconfig("kc-tokfile", { server = server_url, ["certificate-authority"] = "ca.crt",
    ["tls-server-name"] = "kubernetes.vmsnap.test" }, { tokenFile = "token" })
  c = assert(k8s.client({ kubeconfig = kc }))
  t.eq(select(3, c:get("namespace", "default")), "Unauthorized")
  write("token", "tok-123\n")
  t.ok(c:get("namespace", "default"), "the rotated token is used")
end)

t.test("exec credential plugin: token cached until its expiry, run again on 401", function()
  write("count", "")
  write("plugin.sh", [[
#!/bin/sh
# a test ExecCredential plugin: counts its runs; prints the token in $TOKEN_FILE
echo run >> "$COUNT_FILE"
case "$KUBERNETES_EXEC_INFO" in *ExecCredential*) ;; *) echo "no exec info" >&2; exit 3 ;; esac
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"%s"}}\n' "$(cat "$TOKEN_FILE")" "$EXPIRY"
]])
  sh("chmod +x plugin.sh")
  write("ptoken", "tok-123")
  local function client(expiry)
    local kc = kubeconfig("kc-exec", { server = server_url, ["certificate-authority"] = "ca.crt",
      ["tls-server-name"] = "kubernetes.vmsnap.test" }, { exec = {
        apiVersion = "client.authentication.k8s.io/v1", command = D .. "/plugin.sh",
        env = { { name = "COUNT_FILE", value = D .. "/count" }, { name = "TOKEN_FILE", value = D .. "/ptoken" },
          { name = "EXPIRY", value = expiry } }, interactiveMode = "Never" } })
    return assert(k8s.client({ kubeconfig = kc }))
  end
  local function runs() local _, n = read("count"):gsub("run", "") return n end
  local c = client("2099-01-01T00:00:00Z")
  for _ = 1, 3 do assert(c:get("namespace", "default")) end
  t.eq(runs(), 1, "cached until the expiry")
  -- an expired credential is fetched again for each request
  c = client("2000-01-01T00:00:00Z")
  assert(c:resource("namespace")) -- discovery first (its requests run the plugin too)
  write("count", "")
  for _ = 1, 2 do assert(c:get("namespace", "default")) end
  t.eq(runs(), 2, "one run per request")
  -- the server refuses the cached token: the plugin runs again once
  write("count", "")
  write("ptoken", "stale")
  c = client("2099-01-01T00:00:00Z")
  t.eq(select(3, c:get("namespace", "default")), "Unauthorized")
  t.eq(runs(), 2, "first run, then one more after the 401")
  -- a failing plugin is a clear error
  local kc = kubeconfig("kc-exec-bad", { server = server_url, ["insecure-skip-tls-verify"] = true },
    { exec = { apiVersion = "client.authentication.k8s.io/v1", command = "/bin/false" } })
  c = assert(k8s.client({ kubeconfig = kc }))
  local r, msg, code = c:get("namespace", "default")
  t.eq(r, nil)
  t.eq(code, "AUTH")
  t.contains(msg, "exec credential plugin /bin/false: exit status 1")
end)

t.test("in-cluster: the service account's token (re-read when it rotates), CA and namespace", function()
  local hs <close> = h.httpd() -- echoes request headers at /headers
  local sa = D .. "/sa"
  assert(fs.mkdir_p(sa))
  assert(fs.write_atomic(sa .. "/token", "first-token"))
  assert(fs.write_atomic(sa .. "/namespace", "team-a\n"))
  local c = assert(k8s.client({ in_cluster = true, service_account_dir = sa, service_host = "127.0.0.1",
    service_port = tostring(hs.port), scheme = "http" }))
  t.eq(c.namespace, "team-a")
  local res = assert(c:request({ path = "/headers" }))
  t.contains(res.body, "Authorization: Bearer first-token")
  assert(fs.write_atomic(sa .. "/token", "second-token-rotated"))
  res = assert(c:request({ path = "/headers" }))
  t.contains(res.body, "Authorization: Bearer second-token-rotated")
  local none, err = k8s.client({ in_cluster = true, service_account_dir = D .. "/nope", service_host = "x", service_port = "1" })
  t.eq(none, nil)
  t.contains(err, "token is missing")
end)

t.test("tokens, client keys and Secret data stay out of logs and error messages", function()
  local r = h.run_vmsnap({ "--log-level", "debug", "-e", [[
    local k8s = require("vmsnap.k8s")
    local c = assert(k8s.client({ kubeconfig = arg[1] }))
    assert(c:apply({ apiVersion = "v1", kind = "Secret", metadata = { name = "s3cr3t-holder" },
      stringData = { password = "hunter2-very-secret" } }))
    local bad = assert(k8s.client({ server = arg[2], token = "tok-123", insecure = true, deadline = 1 }))
    local _, m1 = bad:get("secret", "s3cr3t-holder")
    local wrong = assert(k8s.client({ server = arg[2], token = "wrong-token-value", insecure = true }))
    local _, m2 = wrong:get("secret", "s3cr3t-holder")
    print(m1, m2, tostring(wrong.auth))
  ]], srv.kubeconfig, server_url }, { timeout = 30 })
  t.eq(r.status, 0, r.stderr)
  local all = r.stdout .. r.stderr
  t.ok(#all > 0)
  for _, secret in ipairs({ "tok-123", "wrong-token-value", "hunter2-very-secret", "aHVudGVyMi12ZXJ5LXNlY3JldA",
    "PRIVATE KEY" }) do
    t.eq(all:find(secret, 1, true), nil, secret .. " must not appear")
  end
  t.contains(r.stdout, "k8s credentials (hidden)")
end)

t.done()
