-- The API server's connection limits against hostile clients
-- (tests/tools/connflood): idle and trickling connections cannot lock out a
-- normal client, a request header must arrive in time, and the total and
-- per-address limits hold. docs/apiserver.md, "Limits".
local t = require("tap")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local h = require("helpers")

local FLOOD = h.build .. "/tests/connflood"
-- the sanitizers make every TLS handshake several times slower: the
-- 100 ms bound is the release build's
local SANITIZED = (require("vmsnap.core.runtime").versions().build or ""):find("sanitize") ~= nil
local PROMPT = SANITIZED and 0.5 or 0.1


--- Start connflood; returns it once every connection is open.
local function flood(port, args)
  local ready = os.tmpname()
  os.remove(ready)
  local argv = { FLOOD, "--port", tostring(port), "--ready", ready }
  for _, a in ipairs(args) do argv[#argv + 1] = tostring(a) end
  local p = assert(proc.spawn(argv, { stdout = "capture", stderr = "inherit" }))
  local deadline = task.now() + 30
  while not fs.exists(ready) do
    if task.now() > deadline or not p:running() then
      p:kill("KILL"); p:wait(5)
      error("connflood did not open its connections")
    end
    task.sleep(0.02)
  end
  os.remove(ready)
  return setmetatable({ p = p }, { __close = function(f)
    if f.p:running() then f.p:kill("KILL") end
    f.p:wait(5)
  end })
end

--- Wait for connflood's report: {idle = {n, at}, trickle = {n, at}, refused = n}.
local function report(f, timeout)
  local res = assert(f.p:wait(timeout), "connflood did not end")
  local out = res.stdout or ""
  local r = {}
  local n, at = out:match("idle%-closed (%d+) ([%d.]+)")
  r.idle = { tonumber(n), tonumber(at) }
  n, at = out:match("trickle%-closed (%d+) ([%d.]+)")
  r.trickle = { tonumber(n), tonumber(at) }
  r.refused = tonumber(out:match("refused (%d+)"))
  assert(r.refused, "no report from connflood: " .. out)
  return r
end

--- The slowest of n authenticated GETs, in seconds.
local function slowest_get(srv, n)
  local worst = 0
  for _ = 1, n do
    local t0 = task.now()
    local r = assert(srv:get("/api/v1/namespaces/default/configmaps", { timeout = 10 }))
    assert(r.status == 200, r.status)
    worst = math.max(worst, task.now() - t0)
  end
  return worst
end

t.test("1,100 idle and 20 trickling connections: a normal client is served at once; the header timeout closes them all", function()
  local srv <close> = h.apiserver({ args = { "--request-header-timeout", "3s", "--idle-timeout", "60s" } })
  local f <close> = flood(srv.port, { "--idle", 1100, "--trickle", 20, "--tls", "--seconds", 12 })
  task.sleep(0.5) -- they are connected; let the server take them from its backlog
  local worst = slowest_get(srv, 10)
  print(("# with 1,120 hostile connections open: the slowest of 10 GETs (each a new TLS connection) took %.1f ms"):format(worst * 1000))
  t.ok(worst < PROMPT, ("served in < %d ms"):format(PROMPT * 1000))
  local r = report(f, 20)
  print("# " .. ("closed by the server: %d idle at %.2f s, %d trickling at %.2f s (header timeout 3 s)"):format(
    r.idle[1], r.idle[2], r.trickle[1], r.trickle[2]))
  t.eq(r.idle[1], 1100, "every idle connection closed")
  t.eq(r.trickle[1], 20, "every trickling connection closed, though it was never idle")
  t.ok(r.idle[2] >= 2.5 and r.idle[2] < 6, "at the header timeout")
  t.ok(r.trickle[2] >= 2.5 and r.trickle[2] < 6, "at the header timeout")
  t.eq(r.refused, 0, "none refused under the default limits")
  t.ok(slowest_get(srv, 3) < PROMPT)
end)

t.test("past the per-address limit a connection is closed at once; other addresses are still served", function()
  local srv <close> = h.apiserver({ args = { "--max-connections-per-ip", "50", "--request-header-timeout", "4s" } })
  -- one hostile address: 80 connections, 30 past its limit
  local f <close> = flood(srv.port, { "--source", "127.0.0.2", "--idle", 80, "--seconds", 3 })
  -- the test's own address is another one and is served meanwhile
  t.ok(slowest_get(srv, 3) < PROMPT)
  local r = report(f, 10)
  t.eq(r.refused, 30, "30 past the per-address limit of 50 refused")
  t.eq(r.idle[1], 0, "the 50 within the limit were held open for the 3 s")
end)

t.test("past the total limit connections wait for a free slot; the header timeout frees the slots", function()
  local srv <close> = h.apiserver({ args = { "--max-connections", "100", "--request-header-timeout", "3s" } })
  local floods = {}
  for i = 3, 5 do
    floods[#floods + 1] = flood(srv.port, { "--source", "127.0.0." .. i, "--idle", 45, "--seconds", 5 })
  end
  local t0 = task.now()
  local waited = slowest_get(srv, 1)
  print(("# a GET past the total limit of 100 (135 hostile connections) was served after %.2f s"):format(waited))
  t.ok(waited >= 1.5 and waited < 5, "it waited for the header timeout to free a slot")
  local closed = 0
  for _, fl in ipairs(floods) do
    local r = report(fl, 10)
    closed = closed + r.idle[1] + r.refused
    getmetatable(fl).__close(fl)
  end
  -- the 100 let in were closed at the header timeout; the rest were let in
  -- then and were still open when the floods ended
  t.ok(closed >= 90 and closed <= 110, ("%d of 135 closed by the server within 5 s"):format(closed))
  t.ok(task.now() - t0 < 10)
  t.ok(slowest_get(srv, 3) < PROMPT, "served at once when the flood is gone")
end)

t.test("a watch waiting for events outlives the idle and header timeouts", function()
  local srv <close> = h.apiserver({ args = { "--idle-timeout", "2s", "--request-header-timeout", "2s" } })
  local w = assert(srv:request({ path = "/api/v1/namespaces/default/configmaps?watch=true", stream = true, timeout = 10 }))
  task.sleep(4.5) -- past both timeouts, with nothing to say
  local body = json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "late" } })
  local c = assert(srv:request({ method = "POST", path = "/api/v1/namespaces/default/configmaps", body = body,
    headers = { ["Content-Type"] = "application/json" } }))
  t.eq(c.status, 201)
  local got = ""
  local deadline = task.now() + 5
  while not got:find('"late"') and task.now() < deadline do
    local chunk = w:read(deadline - task.now())
    if not chunk then break end
    got = got .. chunk
  end
  t.contains(got, '"ADDED"', "the watch still delivers after 4.5 s of silence")
  w:close()
end)

-- the server's user + system CPU seconds so far
local function server_cpu(srv)
  local st = (fs.read_file("/proc/" .. srv.proc:pid() .. "/stat") or ""):match("%) (.*)$") or ""
  local f = {}
  for x in st:gmatch("%S+") do f[#f + 1] = x end
  return (tonumber(f[12]) + tonumber(f[13])) / 100
end

t.test("answers on a quiet keep-alive connection are not held back by the idle back-off", function()
  -- an idle TLS keep-alive connection makes the server back off its runs
  -- to 20 ms; an answer (a suspended request resumed) used to wait for two
  -- of them: 40 ms for every request of a client asking one at a time
  local srv <close> = h.apiserver({ stderr = "null" })
  srv:get("/api/v1/namespaces/default/configmaps") -- the connection is open
  task.sleep(0.3)                                   -- and idle: backed off
  local t0 = task.now()
  for _ = 1, 50 do
    local r = assert(srv:get("/api/v1/namespaces/default/configmaps", { timeout = 10 }))
    assert(r.status == 200, r.status)
  end
  local each = (task.now() - t0) / 50
  print(("# 50 GETs one after another on one connection: %.2f ms each"):format(each * 1000))
  t.ok(each < (SANITIZED and 0.015 or 0.01), "no request waits for the back-off (it cost 40 ms each)")
end)

t.test("a large answer arrives whole; a client that stops reading one costs the server no CPU", function()
  local srv <close> = h.apiserver({ stderr = "null" })
  local CM = "/api/v1/namespaces/default/configmaps"
  local big = ("x"):rep(700 * 1024)
  local c_t0 = task.now()
  -- 25 of 700 KB: 17.5 MB, more than a stream may hold unsent (16 MB), so
  -- it must go out in parts as the client takes it
  for i = 1, 25 do
    local r = assert(srv:request({ method = "POST", path = CM, headers = { ["Content-Type"] = "application/json" },
      body = json.encode({ apiVersion = "v1", kind = "ConfigMap", metadata = { name = "big" .. i }, data = { k = big } }) }))
    assert(r.status == 201, r.body)
  end
  print(("# 25 POSTs of 700 KB each: %.0f ms"):format((task.now() - c_t0) * 1000))
  local t0 = task.now()
  local r = assert(srv:get(CM, { timeout = 30 }))
  local took = task.now() - t0
  t.eq(r.status, 200)
  t.eq(tonumber(r.headers["content-length"]), #r.body, "sent with its length, not chunked")
  local list = json.decode(r.body)
  t.eq(#list.items, 25, "every item")
  t.eq(list.items[25].data.k, big, "the last byte too")
  print(("# a LIST of %.1f MB over HTTPS: %.0f ms"):format(#r.body / 1e6, took * 1000))
  -- a client that sends the request and reads nothing: the socket fills,
  -- and the server must wait for it quietly, not spin
  local py = [[
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="127.0.0.1")
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(("GET /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % sys.argv[3]).encode())
open(sys.argv[4], "w").write("sent")
time.sleep(4)
]]
  local ca = os.tmpname()
  assert(fs.write_atomic(ca, srv.ca_data))
  local mark = os.tmpname()
  os.remove(mark)
  local stall = assert(proc.spawn({ "python3", "-c", py, tostring(srv.port), ca, srv.token, mark },
    { stdout = "null", stderr = "inherit" }))
  local deadline = task.now() + 10
  while not fs.exists(mark) and stall:running() and task.now() < deadline do task.sleep(0.05) end
  t.ok(fs.exists(mark), "the stalled client asked")
  os.remove(mark)
  task.sleep(0.5) -- the server has filled the socket
  local c0 = server_cpu(srv)
  task.sleep(1.5)
  local used = server_cpu(srv) - c0
  print(("# server CPU over 1.5 s while a client does not read its 18 MB answer: %.2f s"):format(used))
  t.ok(stall:running(), "the client was still connected, not reading")
  t.ok(used < 0.3, "the server waits for the stalled client without spinning")
  local r2 = assert(srv:get(CM .. "/big1", { timeout = 10 }))
  t.eq(r2.status, 200, "and serves others meanwhile")
  stall:kill("KILL")
  stall:wait(5)
  stall:close()
  os.remove(ca)
end)

t.done()
