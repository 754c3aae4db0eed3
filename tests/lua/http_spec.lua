local t = require("tap")
local http = require("vmsnap.http")
local json = require("vmsnap.json")
local task = require("vmsnap.task")
local h = require("helpers")

local srv <close> = h.httpd()

t.test("GET returns status, headers and body", function()
  local res = assert(http.get(srv.url .. "/delay?ms=1"))
  t.eq(res.status, 200)
  t.eq(res.body, "ok")
  t.eq(res.headers["content-type"], "text/plain")
  t.eq(res.http_version, "1.1")
end)

t.test("POST sends the body; custom headers reach the server", function()
  local body = string.rep("x", 100000) .. "end"
  local res = assert(http.post(srv.url .. "/echo", body, { headers = { ["Content-Type"] = "text/x" } }))
  t.eq(res.body, body)
  local hr = assert(http.request({ url = srv.url .. "/headers", headers = { ["X-Vmsnap"] = "1" } }))
  t.contains(hr.body, "X-Vmsnap: 1")
  t.eq(hr.body:find("Expect:", 1, true), nil, "no Expect: 100-continue")
end)

t.test("an HTTP error status is a result, not a failure", function()
  local res = assert(http.get(srv.url .. "/status/404"))
  t.eq(res.status, 404)
  t.eq(res.body, "status")
end)

t.test("100 concurrent requests are in flight at the same time", function()
  local before = json.decode(assert(http.get(srv.url .. "/stats")).body)
  local t0 = task.now()
  local ts = {}
  for i = 1, 100 do
    ts[i] = task.spawn(function() return http.get(srv.url .. "/delay?ms=300") end)
  end
  local results = assert(task.wait_all(ts))
  local wall = task.now() - t0
  for i = 1, 100 do t.eq(results[i][1].status, 200) end
  local stats = json.decode(assert(http.get(srv.url .. "/stats")).body)
  -- the server saw all 100 waiting at once: they did not run one by one
  t.ok(stats.peak >= 100, "peak in-flight requests " .. stats.peak)
  t.eq(stats.total - before.total, 100)
  io.stdout:write(("# 100 x 300 ms requests took %.0f ms\n"):format(wall * 1000))
end)

t.test("connections are reused", function()
  local before = json.decode(assert(http.get(srv.url .. "/stats")).body).connections
  for _ = 1, 5 do assert(http.get(srv.url .. "/delay?ms=1")) end
  local after = json.decode(assert(http.get(srv.url .. "/stats")).body).connections
  t.ok(after - before <= 1, "at most one new connection for 6 sequential requests, got " .. (after - before))
end)

t.test("transport failures have codes", function()
  local v, err, code = http.get(srv.url .. "/delay?ms=2000", { timeout = 0.1 })
  t.eq({ v, code }, { nil, "TIMEOUT" })
  v, err, code = http.get("http://127.0.0.1:1/")
  t.eq({ v, code }, { nil, "ECONNREFUSED" })
  t.contains(err, "127.0.0.1:1")
  v, err, code = http.get(srv.url .. "/close")
  t.eq({ v, code }, { nil, "CLOSED" })
  v, err, code = http.get("ftp://127.0.0.1/")
  t.eq({ v, code }, { nil, "BAD_URL" })
end)

t.test("a streamed body is read line by line as it arrives", function()
  local res = assert(http.request({ url = srv.url .. "/stream?n=5&ms=20", stream = true }))
  t.eq(res.status, 200)
  local lines = {}
  for line in res:lines() do lines[#lines + 1] = line end
  res:close()
  t.eq(lines, { "line 1", "line 2", "line 3", "line 4", "line 5" })
end)

t.test("cancelling a task stops its request", function()
  local a = task.spawn(function() return http.get(srv.url .. "/delay?ms=5000") end)
  task.sleep(0.05)
  task.cancel(a)
  t.eq(select(3, task.wait(a)), "CANCELLED")
end)

t.test("bad options raise with the option named", function()
  t.contains(t.pcall_err(http.request, {}), "option 'url' is required")
  t.contains(t.pcall_err(http.request, { url = "http://x/", timeout = "soon" }), "option 'timeout' must be a number")
  t.contains(t.pcall_err(http.request, { url = "http://x/", http_version = "3" }), "http_version")
end)

return t.done()
