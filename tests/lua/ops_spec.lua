-- What an operator sees of `vmsnap controller` (issue: run it in a real
-- cluster): /metrics, /healthz and /readyz on --metrics-addr and
-- --health-addr, the work queue's and the reconciles' families, the freeze
-- metrics of a real freeze (a running VM's loop-mounted root, a real
-- qemu-ga), and the log lines of a freeze and its thaw. The controller runs
-- as its own process against `vmsnap up --no-controllers`.
local t = require("tap")
local k8s = require("vmsnap.k8s")
local http = require("vmsnap.http")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local fs = require("vmsnap.fs")
local h = require("helpers")

local srv <close> = h.platform({ args = { "--no-controllers" } })
local c = assert(k8s.client({ kubeconfig = srv.kubeconfig }))
local G = "virtualization.deckhouse.io/v1alpha2"

local free_port = h.free_port

-- the value of one series in exposition text (nil when absent)
local function value(text, series)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
  end
end

t.test("bad addresses are usage errors that name the flag", function()
  for _, a in ipairs({ { "--metrics-addr", "localhost" }, { "--health-addr", "1.2.3.4:99999" },
    { "--leader-election-namespace", "Not_A_Name", "namespace name" } }) do
    local r = assert(proc.run({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig, a[1], a[2] }, { timeout = 20 }))
    t.eq(r.status, 2, r.stderr)
    t.contains(r.stderr, a[1])
    t.contains(r.stderr, a[3] or "HOST:PORT")
  end
end)

t.test("--log-json: the startup line is a JSON record too, and every line is one", function()
  local json = require("vmsnap.json")
  local p = assert(proc.spawn({ h.vmsnap, "--log-json", "controller", "--kubeconfig", srv.kubeconfig,
    "--leader-election-namespace", "default" }, { stdout = "capture", stderr = "capture" }))
  task.sleep(1.5)
  p:kill("TERM")
  local r = assert(p:wait(10))
  p:close()
  local running, n = false, 0
  for line in ((r.stdout or "") .. "\n" .. (r.stderr or "")):gmatch("[^\n]+") do
    if line ~= "vmsnap: interrupted" then
      n = n + 1
      local rec = json.decode(line)
      t.ok(type(rec) == "table" and rec.level, "a JSON record: " .. line)
      if rec and rec.msg == "running" and rec.subsystem == "controller" then running = true end
    end
  end
  t.ok(n >= 1 and running, "the startup record")
end)

local port = free_port()
local base = ("http://127.0.0.1:%d"):format(port)
local logf = os.tmpname()
local ctl = assert(proc.spawn({ h.vmsnap, "controller", "--kubeconfig", srv.kubeconfig,
  "--metrics-addr", "127.0.0.1:" .. port, "--health-addr", "127.0.0.1:" .. port },
  { stdout = "null", stderr = "capture" }))
local _ <close> = setmetatable({}, { __close = function()
  if ctl:running() then ctl:kill("TERM") end
  if not ctl:wait(10) then ctl:kill("KILL") ctl:wait(5) end
  ctl:close()
  os.remove(logf)
end })

local function get(path)
  local deadline = task.now() + 20
  while true do
    local r = http.request({ url = base .. path, timeout = 5 })
    if r or task.now() > deadline then return r end
    task.sleep(0.1)
  end
end

t.test("/readyz is 200 once every cache is synced; /healthz 200; other paths and methods are refused", function()
  local deadline, r = task.now() + 30, nil
  repeat
    r = get("/readyz")
    if r and r.status == 200 then break end
    task.sleep(0.1)
  until task.now() > deadline
  t.eq(r and r.status, 200, r and r.body)
  t.eq(r.body, "ok\n")
  t.eq(get("/healthz").status, 200)
  t.eq(get("/nope").status, 404)
  local p = http.request({ url = base .. "/metrics", method = "POST", body = "", timeout = 5 })
  t.eq(p.status, 405)
end)

t.test("a disk snapshot shows in the work queue's, the reconciles' and the phase families", function()
  assert(c:create({ apiVersion = G, kind = "VirtualDisk", metadata = { name = "md" }, spec = { persistentVolumeClaim = { size = "16Mi" } } }))
  assert(c:wait_for("vd", "md", h.phase_is("Ready"), { timeout = 20 }))
  assert(c:create({ apiVersion = G, kind = "VirtualDiskSnapshot", metadata = { name = "ms1" }, spec = { virtualDiskName = "md" } }))
  assert(c:wait_for("vdsnapshot", "ms1", h.phase_is("Ready"), { timeout = 20 }))
  local r = get("/metrics")
  t.eq(r.status, 200)
  t.contains(r.headers["content-type"], "text/plain; version=0.0.4")
  local m = r.body
  local name = 'name="disk-snapshot-controller"'
  t.ok((value(m, "workqueue_adds_total{" .. name .. "}") or 0) >= 1, "keys added")
  t.eq(value(m, "workqueue_depth{" .. name .. "}"), 0, "nothing left in the queue")
  t.ok((value(m, "workqueue_work_duration_seconds_count{" .. name .. "}") or 0) >= 1)
  t.ok((value(m, "workqueue_queue_duration_seconds_count{" .. name .. "}") or 0) >= 1)
  local passes = 0
  for _, res in ipairs({ "success", "requeue", "requeue_after", "error" }) do
    passes = passes + (value(m, ('controller_runtime_reconcile_total{controller="disk-snapshot-controller",result="%s"}')
      :format(res)) or 0)
  end
  -- (one pass when the VolumeSnapshot is ready before the pass that made it ends, two otherwise)
  t.ok(passes >= 1, ("passes counted by result: %d"):format(passes))
  t.eq(value(m, 'controller_runtime_reconcile_errors_total{controller="disk-snapshot-controller"}'), nil, "no failed pass")
  t.ok((value(m, 'controller_runtime_reconcile_time_seconds_count{controller="disk-snapshot-controller"}') or 0) >= 1)
  t.eq(value(m, 'vmsnap_snapshot_phase{kind="VirtualDiskSnapshot",phase="Ready"}'), 1)
  t.eq(value(m, 'vmsnap_snapshot_phase{kind="VirtualDiskSnapshot",phase="Failed"}'), 0)
  t.eq(value(m, 'leader_election_master_status{name="vmsnap-snapshot-controllers"}'), 1, "this replica leads")
  t.ok((value(m, "process_resident_memory_bytes") or 0) > 1e6, "the process's RSS")
  t.ok((value(m, "vmsnap_lua_heap_bytes") or 0) > 1e5, "the Lua heap")
  t.ok((value(m, "process_open_fds") or 0) > 3, "open descriptors")
  t.ok(value(m, "process_cpu_seconds_total") ~= nil, "CPU seconds")
end)

t.test("a VM snapshot's freeze: duration, frozen gauge back to 0, cut latency; and its log lines", function()
  local probe <close>, why = h.qga_env()
  if not probe then
    print("# skipped: " .. tostring(why))
    return
  end
  probe:cleanup()
  h.running_vm(c, "mvm", "mroot")
  assert(c:create({ apiVersion = G, kind = "VirtualMachineSnapshot", metadata = { name = "mvs" },
    spec = { virtualMachineName = "mvm" } }))
  local s = assert(c:wait_for("vmsnapshot", "mvs", h.phase_is("Ready"), { timeout = 30 }))
  t.eq(s.status.consistent, true)
  local m = get("/metrics").body
  local vm = 'vm="default/mvm"'
  local count = value(m, "vmsnap_freeze_duration_seconds_count{" .. vm .. "}") or 0
  t.ok(count >= 1, "the freeze observed")
  local secs = value(m, "vmsnap_freeze_duration_seconds_sum{" .. vm .. "}")
  local ms = tonumber(s.metadata.annotations["vmsnap.io/freeze-duration-ms"])
  if count == 1 then -- (a pass given back and taken again froze twice)
    t.ok(secs and math.abs(secs * 1000 - ms) < 2, ("the histogram says %s s, the annotation %s ms"):format(secs, ms))
  end
  t.eq(value(m, "vmsnap_guest_frozen{" .. vm .. "}"), 0, "thawed")
  -- the exposition as Prometheus's own linter reads it (Debian's prometheus
  -- package: tools/deps.sh), the controller's and the API server's
  if proc.run({ "promtool", "--version" }, { timeout = 10 }) then
    for what, text in pairs({ controller = m, apiserver = assert(srv:get("/metrics")).body }) do
      local lint = assert(proc.run({ "promtool", "check", "metrics" }, { stdin = text, timeout = 30 }))
      t.eq(lint.status, 0, what .. "'s /metrics: " .. lint.stdout .. lint.stderr)
    end
  else
    print("# promtool is not installed: the format is checked by metrics_spec only")
  end
  t.ok((value(m, "vmsnap_cut_latency_seconds_count") or 0) >= 1, "the cut's latency observed")
  t.ok((value(m, 'vmsnap_snapshot_phase{kind="VirtualMachineSnapshot",phase="Ready"}') or 0) == 1)
  -- the log lines, from the controller's stderr once it stops
  ctl:kill("TERM")
  local res = assert(ctl:wait(15))
  t.eq(res.status, 0, "a clean stop")
  t.ok(not (res.stderr or ""):find("interrupted", 1, true), "a clean stop says nothing alarming")
  local logs = res.stderr or ""
  t.contains(logs, "freeze: frozen")
  t.contains(logs, "vm=default/mvm")
  t.contains(logs, "VirtualMachineSnapshot default/mvs")
  t.contains(logs, "freeze: thawed")
  t.ok(logs:find("frozen_ms=" .. ms, 1, true) ~= nil, "the thaw's line says how long: " .. ms .. " ms")
  t.contains(logs, "steps: phase")
  t.contains(logs, "to=Ready")
end)

t.done()
