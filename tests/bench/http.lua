-- 100 concurrent requests to a loopback server that answers each after
-- 200 ms: wall time close to one request's means they ran concurrently.
local http = require("vmsnap.http")
local task = require("vmsnap.task")
local h = require("helpers")

local srv <close> = h.httpd()
local one0 = task.now()
assert(http.get(srv.url .. "/delay?ms=200"))
local one = task.now() - one0

for _, n in ipairs({ 100, 500 }) do
  local t0 = task.now()
  local ts = {}
  for i = 1, n do ts[i] = task.spawn(http.get, srv.url .. "/delay?ms=200") end
  local rs = assert(task.wait_all(ts))
  for i = 1, n do assert(rs[i][1].status == 200) end
  print(("http: %d concurrent 200 ms requests: %.0f ms wall (one alone: %.0f ms)"):format(n, (task.now() - t0) * 1000, one * 1000))
end

local t0 = task.now()
local N = 2000
for _ = 1, N do assert(http.get(srv.url .. "/delay?ms=0")) end
print(("http: %d sequential requests on a reused connection: %.0f us each"):format(N, (task.now() - t0) / N * 1e6))
