-- The inputs that crashed or 5xx'd earlier code (../shared/repro, beside the
-- clone; test data, not shipped), replayed as they were found: raw HTTP
-- requests over TLS against `vmsnap serve` (socat sends the bytes), a
-- kubeconfig through the loader and the CLI. The same files seed the fuzzer
-- (tests/fuzz/run.sh). Skipped when the directory is not there.
local t = require("tap")
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")
local k8s = require("vmsnap.k8s")
local h = require("helpers")

local REPRO = h.source .. "/../shared/repro"
local files = fs.list(REPRO)
if not files then
  t.skip("regression inputs", REPRO .. " is not beside the clone")
  return t.done()
end
table.sort(files)

local srv <close> = h.apiserver()

-- send raw bytes over TLS (the server's credential added after the
-- request line, as a client that has it would), return the status code of
-- the answer (or nil) and the answer
local function raw(bytes)
  bytes = bytes:gsub("^([^\r\n]*\r\n)", "%1Authorization: Bearer " .. srv.token .. "\r\n", 1)
  local r = assert(proc.run({ "socat", "-t", "5", "-T", "10", "-", "OPENSSL:127.0.0.1:" .. srv.port .. ",verify=0" },
    { stdin = bytes, timeout = 20 }))
  return tonumber((r.stdout or ""):match("^HTTP/1%.%d (%d%d%d)")), r.stdout or ""
end

local function alive()
  local status = raw("GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  return status == 200
end

for _, name in ipairs(files) do
  local path = REPRO .. "/" .. name
  if name:match("^http%-.*%.bin$") then
    t.test(name .. ": answered below 500 (505 only for a request line that is not HTTP/1.x), and the server stays up", function()
      local bytes = assert(fs.read_file(path))
      local version = bytes:match("^[^\r\n]* HTTP/(%d+%.%d+)\r\n")
      local status, answer = raw(bytes)
      t.ok(status, "an answer: " .. answer:sub(1, 80))
      if version and not version:match("^1%.") then
        -- RFC 9110 15.6.6, and what kube-apiserver (Go's net/http) answers
        t.eq(status, 505, "HTTP/" .. version .. " is not supported")
      else
        t.ok(status and status < 500, ("answered %s: %s"):format(tostring(status), answer:sub(-200)))
      end
      -- the same request as HTTP/1.1: the server's own answer, below 500
      local as11 = bytes:gsub("^([^\r\n]* )HTTP/%d+%.%d+\r\n", "%1HTTP/1.1\r\n", 1)
      local s11, a11 = raw(as11)
      t.ok(s11 and s11 < 500, ("as HTTP/1.1: %s: %s"):format(tostring(s11), a11:sub(-200)))
      t.ok(alive(), "the server answers afterwards")
    end)
  elseif name:match("^kubeconfig") then
    t.test(name .. ": a clear error from the loader and the CLI, no crash", function()
      local c, err = k8s.client({ kubeconfig = path })
      if c then
        t.ok(true, "loaded")
      else
        t.ok(type(err) == "string" and #err > 0, "a message: " .. tostring(err))
      end
      local r = h.run_vmsnap({ "get", "vm", "--kubeconfig", path }, { timeout = 30 })
      t.eq(r.signal, nil, "no signal")
      t.ok(r.status ~= 0, "the CLI refuses it")
      t.contains(r.stderr, "kubeconfig")
      t.ok(not r.stderr:find("stack traceback", 1, true), "a message, not a traceback: " .. r.stderr)
    end)
  end
end

t.done()
