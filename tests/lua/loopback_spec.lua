-- The in-process transport (vmsnap.apiserver.loopback) that `vmsnap up`'s
-- controllers use: every answer is the one the same server gives over HTTP
-- (status, reason, body), the credential and RBAC decide as they do there,
-- watches stream and end, large and deferred answers arrive whole, and a
-- hung or closed server is a failure of the call, not a hang.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local apiserver = require("vmsnap.apiserver")
local loopback = require("vmsnap.apiserver.loopback")
local h = require("helpers")

local d <close> = assert(fs.tempdir("vmsnap-loopback"))
assert(fs.write_atomic(d.path .. "/tokens.csv", 'alice-token,alice,u-1,"team-a"\n'))
local s = assert(apiserver.new({ data = d.path, token = "admin-token", token_file = d.path .. "/tokens.csv",
  crds = { h.source .. "/scripts/crds" } }))
local port = assert(s:listen())
local server_task = task.spawn(function() return s:serve() end)
local URL = "http://127.0.0.1:" .. port
local function client(token, via_loopback)
  return assert(k8s.client({ server = URL, token = token, field_manager = "spec",
    transport = via_loopback and loopback.transport(s) or nil }))
end
local http_c, lb_c = client("admin-token", false), client("admin-token", true)

-- what an answer says, without what differs between two writes (uid, times, versions)
local function shape(o)
  if type(o) ~= "table" then return o end
  local out = {}
  for k, v in pairs(o) do
    if k ~= "uid" and k ~= "resourceVersion" and k ~= "creationTimestamp" and k ~= "time" and k ~= "managedFields" then
      out[k] = shape(v)
    end
  end
  return out
end
local function both(fn)
  local a = table.pack(fn(http_c, "h"))
  local b = table.pack(fn(lb_c, "l"))
  return a, b
end

t.test("the same answers as over HTTP: writes, reads, selectors and refusals", function()
  local a, b = both(function(c, p)
    local cm = { apiVersion = "v1", kind = "ConfigMap",
      metadata = { name = p .. "-cm", labels = { app = "x.y_z", tier = p } }, data = { k = "v" } }
    local created = assert(c:create(cm))
    local _, _, dup = c:create(cm)
    local patched = assert(c:patch("configmap", p .. "-cm", { data = { k2 = "ü" } }))
    local sel = assert(c:list("configmap", { label_selector = "app in (x.y_z,q),tier=" .. p .. ",!gone" }))
    local fsel = assert(c:list("configmap", { field_selector = "metadata.name=" .. p .. "-cm" }))
    local _, _, missing = c:get("configmap", "no-such")
    local _, bad_msg, bad = c:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualDiskSnapshot",
      metadata = { name = p .. "-bad" }, spec = {} })
    local _, _, badsel = c:list("configmap", { label_selector = "a in" })
    local del = assert(c:delete("configmap", p .. "-cm"))
    return shape(created), dup, shape(patched), #sel.items, #fsel.items, missing, bad, bad_msg, badsel, del ~= nil
  end)
  t.eq(a[2], "AlreadyExists")
  t.eq(a[4], 1)
  t.eq(a[6], "NotFound")
  t.eq(a[7], "Invalid")
  t.contains(a[8], "spec.virtualDiskName")
  t.eq(a[9], "BadRequest")
  a[1].metadata.name, b[1].metadata.name = nil, nil
  a[1].metadata.labels.tier, b[1].metadata.labels.tier = nil, nil
  a[3].metadata.name, b[3].metadata.name = nil, nil
  a[3].metadata.labels.tier, b[3].metadata.labels.tier = nil, nil
  a[8], b[8] = a[8]:gsub("h%-bad", "X"), b[8]:gsub("l%-bad", "X")
  t.eq(b, a)
end)

t.test("the credential and RBAC decide as over HTTP; the request is counted", function()
  local function forbidden(via)
    local c = client("alice-token", via)
    local _, msg, reason = c:list("secrets", { namespace = "default" })
    return reason, msg
  end
  local hr, hm = forbidden(false)
  local lr, lm = forbidden(true)
  t.eq(lr, "Forbidden")
  t.eq({ lr, lm }, { hr, hm })
  local _, _, r401 = client("wrong", true):get("configmap", "x")
  t.eq(r401, "Unauthorized")
  local _, _, r401b = client(nil, true):get("configmap", "x")
  t.eq(r401b, "Unauthorized")
  local function count()
    local n = 0
    for _, sr in pairs(s.m_requests.series) do
      if sr.values[1] == "GET" and sr.values[4] == "configmaps" and sr.values[6] == "404" then n = n + sr.value end
    end
    return n
  end
  local before = count()
  lb_c:get("configmap", "not-here")
  t.eq(count(), before + 1, "a loopback GET is in apiserver_request_total")
end)

t.test("a watch streams events, ends with its timeout, and a closed one is let go by the server", function()
  local w <close> = assert(lb_c:watch("configmap", { namespace = "default", timeout_seconds = 1 }))
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w1" } }))
  local seen = {}
  local function until_name(typ, name)
    for _ = 1, 50 do
      local ev = assert(w:next(5))
      seen[#seen + 1] = ev.type
      if ev.type == typ and ev.object.metadata.name == name then return true end
    end
  end
  t.ok(until_name("ADDED", "w1"))
  assert(lb_c:patch("configmap", "w1", { data = { a = "1" } }))
  t.ok(until_name("MODIFIED", "w1"))
  task.sleep(2.5) -- past the stream's timeoutSeconds: it ends and reconnects from its version
  assert(lb_c:delete("configmap", "w1"))
  t.ok(until_name("DELETED", "w1"))
  t.ok(w.reconnects >= 1, "the stream ended at its timeout and was opened again")
  local n = s.watchers.n
  w:close()
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "w2" } }))
  t.eq(s.watchers.n, n - 1, "the server dropped the closed stream at its next write")
end)

t.test("the answer of the write that deletes an object comes after its DELETED event: the cache keeps no ghost", function()
  -- in one process the watch event is delivered before the writer reads
  -- its answer; fed to the cache afterwards (manager:observe), that answer
  -- must not bring the object back
  local manager = require("vmsnap.reconcile.manager")
  local m = manager.for_client(lb_c)
  local inf = assert(m:informer("configmap"))
  m:start()
  assert(m:wait_synced(5))
  local _ <close> = setmetatable({}, { __close = function() m:stop() end })
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "ghost", finalizers = { "x.io/hold" } } }))
  assert(lb_c:delete("configmap", "ghost"))
  for _ = 1, 100 do
    local o = inf:get("default", "ghost")
    if o and o.metadata.deletionTimestamp then break end
    task.sleep(0.01)
  end
  assert(lb_c:patch("configmap", "ghost", { metadata = { finalizers = json.null } }))
  task.sleep(0.1)
  t.eq(inf:get("default", "ghost"), nil, "the deleted object is not in the cache")
  -- a version the watch has not brought yet is still taken from an answer
  local fresh = assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "fresh" } }))
  t.ok(inf:get("default", "fresh") ~= nil, "the create's answer is cached at once")
  t.eq(inf:get("default", "fresh").metadata.resourceVersion, fresh.metadata.resourceVersion)
end)

t.test("the ghost rule judges only numeric versions, and not while the watch still holds events", function()
  local informer = require("vmsnap.k8s.informer")
  local function cm(name, rv) return { metadata = { namespace = "default", name = name, resourceVersion = rv } } end
  local inf = informer.new(nil, "configmap")
  inf.synced = true
  inf.watch = { rv = "100", queue = {}, qpos = 1 }
  inf:observe(cm("gone", "90"))
  t.eq(inf:get("default", "gone"), nil, "an answer older than the watch, for an uncached object, is dropped")
  inf:observe(cm("new", "101"))
  t.ok(inf:get("default", "new"), "a newer one is cached")
  -- a relist: its version is the watch's, its ADDED events still queued
  inf.watch = { rv = "200", queue = { { type = "ADDED", object = cm("queued", "150") } }, qpos = 1 }
  inf:observe(cm("queued", "150"))
  t.ok(inf:get("default", "queued"), "not judged while the watch has events to hand over")
  -- versions that are not numbers (another server's) say nothing of order
  inf.watch = { rv = "opaque-b", queue = {}, qpos = 1 }
  inf:observe(cm("opaque", "opaque-a"))
  t.ok(inf:get("default", "opaque"), "an answer with an opaque version is cached")
end)

t.test("a reader blocked on a stream is woken by its close; :lines() reads the event lines", function()
  local call = loopback.transport(s)
  local function watch_none()
    return assert(call({ path = "/api/v1/namespaces/default/configmaps", stream = true,
      query = { watch = "true", fieldSelector = "metadata.name=no-such-one" },
      headers = { Authorization = "Bearer admin-token" } }))
  end
  local res = watch_none()
  t.eq(res.status, 200)
  local reader = task.spawn(function() return table.pack(res:read()) end)
  task.sleep(0.2)
  res:close()
  local got = task.wait(reader, 2)
  t.ok(got, "the reader returned within 2 s of the close")
  t.eq(got and got[1], nil)
  t.eq(got and got[3], "CLOSED", "and says the stream was closed")
  -- the same stream type through the HTTP response's line reader
  local lr <close> = assert(call({ path = "/api/v1/namespaces/default/configmaps", stream = true,
    query = { watch = "true", fieldSelector = "metadata.name=lines-cm" },
    headers = { Authorization = "Bearer admin-token" } }))
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "lines-cm" } }))
  local line = lr:lines(5)()
  t.eq(json.decode(line).type, "ADDED")
  t.eq(json.decode(line).object.metadata.name, "lines-cm")
end)

t.test("an in-process server whose request task ended refuses at once instead of queueing", function()
  local d2 <close> = assert(fs.tempdir("vmsnap-loopback2"))
  local s2 = assert(apiserver.new({ data = d2.path, token = "t2", crds = { h.source .. "/scripts/crds" } }))
  assert(s2:listen())
  local st = task.spawn(function() return s2:serve() end)
  local _ <close> = setmetatable({}, { __close = function() s2:close() task.wait(st, 5) end })
  local c2 = assert(k8s.client({ server = "http://127.0.0.1:" .. s2.port, token = "t2",
    transport = loopback.transport(s2) }))
  assert(c2:get("namespace", "default"))
  -- the task answering in-process requests ends (an error, a cancel) while the server goes on
  local lt
  for _, x in ipairs(s2.tasks) do
    if s2.loopq and s2.loopq.waiter == x then lt = x end
  end
  t.ok(lt, "found the task that answers in-process requests")
  task.cancel(lt)
  task.sleep(0.05)
  local t0 = task.now()
  local res, _, code = c2:request({ path = "/api/v1/namespaces", deadline = 1, retries = 0 })
  t.eq(res, nil)
  t.eq(code, "ECONNREFUSED", "refused, not queued until a timeout")
  t.ok(task.now() - t0 < 1.5)
end)

t.test("a LIST over 1 MB (a streamed answer) arrives whole; a body over the limit is 413", function()
  local blob = string.rep("x", 4000)
  assert(lb_c:create({ apiVersion = "v1", kind = "Namespace", metadata = { name = "big" } }))
  for i = 1, 300 do
    assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = ("big-%03d"):format(i),
      namespace = "big" }, data = { blob = blob } }))
  end
  local l = assert(lb_c:list("configmap", { namespace = "big" }))
  t.eq(#l.items, 300)
  t.eq(l.items[300].metadata.name, "big-300")
  t.eq(#l.items[1].data.blob, 4000)
  local res, msg, reason = lb_c:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps",
    body = string.rep(" ", 3 * 1024 * 1024 + 10) .. "{}" })
  t.eq(res, nil)
  t.eq(reason, "RequestEntityTooLarge", msg)
end)

t.test("a subresource answered by a task of its own; one that hangs is a TIMEOUT; a closed server refuses", function()
  local calls = 0
  s:subresource("", "v1", "configmaps", "slow", function(_, call)
    calls = calls + 1
    if call.body and call.body.hang then task.sleep(30) end
    task.sleep(0.2)
    return 200, { kind = "Answer", name = call.name }
  end)
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "sub" } }))
  local t0 = task.now()
  local res = assert(lb_c:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps/sub/slow", body = {} }))
  t.eq(json.decode(res.body).name, "sub")
  -- (a timer runs from the loop's cached time: on a busy machine it ends up to a few
  -- tens of ms early by the clock task.now() reads)
  t.ok(task.now() - t0 >= 0.15, "it waited for the task's answer")
  t0 = task.now()
  local r2, _, code = lb_c:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps/sub/slow",
    body = { hang = true }, timeout = 0.3, idempotent = false })
  t.eq(r2, nil)
  t.eq(code, "TIMEOUT")
  t.ok(task.now() - t0 < 2, "the call ended at its timeout")
end)

t.test("other tasks run while one task asks in a loop", function()
  local ticks = 0
  local ticker = task.spawn(function()
    while true do
      task.sleep(0)
      ticks = ticks + 1
    end
  end)
  for _ = 1, 200 do lb_c:get("namespace", "default") end
  task.cancel(ticker)
  t.ok(ticks >= 150, ("the other task ran %d times in 200 requests"):format(ticks))
end)

t.test("vmsnap up's client of its own server (platform.client_for) goes in-process", function()
  local platform = require("vmsnap.platform")
  local pc = platform.client_for(s)
  t.ok(pc.transport ~= nil, "the platform's client has the in-process transport")
  local before = s.watchers.n
  local res = assert(pc:request({ path = "/api/v1/namespaces/default" }))
  t.eq(res.http_version, "in-process")
  t.eq(s.watchers.n, before)
end)

t.test("closing the server ends a request in flight in a subresource's task and a watch; later calls fail at once", function()
  assert(lb_c:create({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "sub-close" } }))
  local hung = task.spawn(function()
    return table.pack(lb_c:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps/sub-close/slow",
      body = { hang = true }, timeout = 20, idempotent = false, retries = 0 }))
  end)
  local res = assert(loopback.transport(s)({ path = "/api/v1/namespaces/default/configmaps", stream = true,
    query = { watch = "true", fieldSelector = "metadata.name=no-such-one" },
    headers = { Authorization = "Bearer admin-token" } }))
  local reader = task.spawn(function() return table.pack(res:read()) end)
  task.sleep(0.2)
  local t_close = task.now()
  s:close()
  local got = task.wait(hung, 3)
  t.ok(got, "the request in flight returned within 3 s of the close (its timeout is 20 s)")
  t.eq(got and got[1], nil)
  t.ok(got and (got[3] == "CLOSED" or got[3] == "ServiceUnavailable"), "as a failure of the call: " .. tostring(got and got[3]))
  t.ok(task.now() - t_close < 3)
  local ended = task.wait(reader, 3)
  t.ok(ended, "the watch's reader returned")
  t.eq(ended and ended[1], nil, "with no more data")
  t.ok(task.wait(server_task, 5), "serve returns after close")
  local t0 = task.now()
  local res, _, code = lb_c:request({ path = "/api/v1/namespaces", deadline = 1, retries = 0 })
  t.eq(res, nil)
  t.eq(code, "ECONNREFUSED")
  t.ok(task.now() - t0 < 1.5)
end)

return t.done()
