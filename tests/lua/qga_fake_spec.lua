-- vmsnap.qga against tests/tools/fakeqga, an agent that misbehaves on demand
-- (hangs, garbage, half a reply, late replies, stale sync ids): the client
-- times out with QGA_TIMEOUT, and the next call resynchronises.
local t = require("tap")
local qga = require("vmsnap.qga")
local core = require("vmsnap.core.qga")
local task = require("vmsnap.task")
local h = require("helpers")

-- actions are consumed per command received, the connect's sync first
t.test("a hung agent gives QGA_TIMEOUT; the next call resyncs and works", function()
  local f <close> = h.fakeqga({ "ok", "hang", "ok", "ok" })
  local a <close> = assert(qga.connect(f.socket, { timeout = 0.3 }))
  local t0 = task.now()
  local r, msg, code = a:ping()
  t.eq(r, nil)
  t.eq(code, "QGA_TIMEOUT")
  t.contains(msg, "guest-ping")
  t.ok(task.now() - t0 < 1)
  t.ok(a:ping(), "after the resync")
end)

t.test("garbage before a reply is skipped", function()
  local f <close> = h.fakeqga({ "ok", "garbage", "garbage" })
  local a <close> = assert(qga.connect(f.socket, { timeout = 1 }))
  t.eq(assert(a:info()).version, "fake")
  t.eq(assert(a:call("guest-get-host-name")), "fake:guest-get-host-name")
end)

t.test("half a reply, then nothing: timeout, then the 0xFF resync drops the half", function()
  local f <close> = h.fakeqga({ "ok", "half", "ok", "ok" })
  local a <close> = assert(qga.connect(f.socket, { timeout = 0.3 }))
  local r, _, code = a:info()
  t.eq(r, nil)
  t.eq(code, "QGA_TIMEOUT")
  t.eq(assert(a:info()).version, "fake")
end)

t.test("a late reply to a timed-out command is never taken for the next one", function()
  -- connect sync ok; info answered after 600 ms (we give up at 300); the
  -- resync and the next command are answered at once
  local f <close> = h.fakeqga({ "ok", "late:600", "late:700", "ok" })
  local a <close> = assert(qga.connect(f.socket, { timeout = 0.3 }))
  local r, _, code = a:info()
  t.eq(code, "QGA_TIMEOUT")
  -- the resync itself is answered late (700 ms): the info reply (600 ms) comes
  -- first and must be dropped
  local p = a:call("guest-get-host-name", nil, 2)
  t.eq(p, "fake:guest-get-host-name", "not the stale info reply")
  _ = r
end)

t.test("a sync answered with a stale id first waits for its own id", function()
  local f <close> = h.fakeqga({ "stale", "ok" })
  local a <close> = assert(qga.connect(f.socket, { timeout = 1 }))
  t.ok(a:ping())
end)

t.test("a closed connection is CLOSED", function()
  local f = h.fakeqga({})
  local a <close> = assert(qga.connect(f.socket, { timeout = 1 }))
  t.ok(a:ping())
  f:stop()
  local r, _, code = a:ping()
  t.eq(r, nil)
  t.eq(code, "CLOSED")
  local none, _, c2 = qga.connect("unix:/nonexistent/qga.sock")
  t.eq(none, nil)
  t.eq(c2, "ENOENT")
  local _, _, c3 = qga.connect("vsock:x:y")
  t.eq(c3, "EINVAL")
end)

t.test("the framer: delimiters, strings with braces, garbage, oversize, byte by byte", function()
  local f = core.framer(64)
  local evs = f:feed('junk {"a": "}{\\"", "b": [1, {"c": 2}]}\n\255{"return": 1}')
  t.eq(#evs, 3)
  t.eq(evs[1], '{"a": "}{\\"", "b": [1, {"c": 2}]}')
  t.eq(evs[2], "delim")
  t.eq(evs[3], '{"return": 1}')
  -- a partial frame is dropped by a delimiter
  evs = f:feed('{"return": {"ver')
  t.eq(#evs, 0)
  evs = f:feed('\255{"return": 2}')
  t.eq(evs[1], "delim")
  t.eq(evs[2], '{"return": 2}')
  -- too long
  evs = f:feed("{" .. string.rep("x", 100) .. "}{}")
  t.eq(evs[1], false)
  t.eq(evs[#evs], "{}")
  -- an unterminated string ends at the line's end: garbage, not a swallowed reply
  evs = f:feed('{"a": "never closed\n{"ok": 1}\n')
  t.eq(evs[1], false)
  t.eq(evs[2], '{"ok": 1}')
  -- one byte at a time gives the same frames
  local text = '{"x": "a\\\\"}\n{"y": [1,2]}'
  local got = {}
  local g = core.framer()
  for i = 1, #text do
    for _, e in ipairs(g:feed(text:sub(i, i))) do got[#got + 1] = e end
  end
  t.eq(got[1], '{"x": "a\\\\"}')
  t.eq(got[2], '{"y": [1,2]}')
end)

t.done()
