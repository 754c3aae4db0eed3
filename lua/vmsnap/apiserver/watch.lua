--- vmsnap.apiserver.watch: watch streams. Writes are delivered synchronously
--- from the write path into each matching watcher's connection buffer (no
--- task per watcher); a sweep ends streams at their timeout, drops streams
--- whose client went away, and sends bookmarks.
local json = require("vmsnap.json")
local tbl = require("vmsnap.apiserver.table")
local registry = require("vmsnap.apiserver.registry")

local M = {}
local Watchers = {}
Watchers.__index = Watchers

function M.new(server)
  return setmetatable({ server = server, by_key = {}, n = 0 }, Watchers)
end

local function matches(w, obj)
  if obj == nil then return false end
  local md = obj.metadata or {}
  if w.ns and md.namespace ~= w.ns then return false end
  if w.labels and not w.labels(md.labels) then return false end
  if w.fields and not w.fields(obj) then return false end
  return true
end

local function frame(w, typ, obj, body)
  if w.table then
    local t = tbl.table(w.res, { obj }, { resourceVersion = obj.metadata.resourceVersion },
      os.time(), w.headers_sent, w.include)
    w.headers_sent = true
    return json.encode({ type = typ, object = t }) .. "\n"
  end
  if w.res.multi then
    -- in the version watched (a CRD with several served versions)
    body = registry.as_version(w.res, body or json.encode(obj))
  end
  return '{"type":"' .. typ .. '","object":' .. (body or json.encode(obj)) .. "}\n"
end

function Watchers:send(w, data)
  local ok = w.req:write(data)
  if not ok then self:remove(w) end
  return ok
end

--- Register a watcher; w = {req, res, ns, labels, fields, table, bookmarks, deadline}.
function Watchers:add(w)
  local list = self.by_key[w.res.key]
  if not list then
    list = {}
    self.by_key[w.res.key] = list
  end
  list[w] = true
  self.n = self.n + 1
  w.active = true
end

function Watchers:remove(w)
  if not w.active then return end
  w.active = false
  local list = self.by_key[w.res.key]
  if list then list[w] = nil end
  self.n = self.n - 1
  w.req:finish()
end

--- Deliver one event: typ is ADDED, MODIFIED or DELETED; old is the previous
--- state (for selector transitions); body is obj's stored JSON.
function Watchers:emit(key, typ, obj, old, body)
  local list = self.by_key[key]
  if not list or next(list) == nil then return end
  local frames = {} -- JSON frames by event type (and version watched), shared by the JSON watchers
  for w in pairs(list) do
    local now_m = typ ~= "DELETED" and matches(w, obj)
    local was_m = old ~= nil and matches(w, old)
    local t
    if typ == "DELETED" then
      if matches(w, obj) then t = "DELETED" end
    elseif now_m and was_m then
      t = "MODIFIED"
    elseif now_m then
      t = "ADDED"
    elseif was_m then
      t = "DELETED"
    end
    if t then
      local data
      if w.table then
        data = frame(w, t, obj)
      else
        -- the watchers of a CRD with several served versions each get theirs
        local fk = w.res.multi and (t .. " " .. w.res.api_version) or t
        data = frames[fk]
        if not data then
          data = frame(w, t, obj, body)
          frames[fk] = data
        end
      end
      self:send(w, data)
    end
  end
end

--- Start a stream for w after replaying `initial` (decoded objects, sent as
--- ADDED) or history rows since an RV.
function Watchers:start(w, initial, history, current_rv)
  local ctype = w.table and "application/json;as=Table;v=v1;g=meta.k8s.io" or "application/json"
  local ok = w.req:stream(200, { ["Content-Type"] = ctype, ["Cache-Control"] = "no-cache, private" })
  if not ok then return end
  self:add(w)
  for _, obj in ipairs(initial or {}) do
    if not self:send(w, frame(w, "ADDED", obj)) then return end
  end
  for _, row in ipairs(history or {}) do
    local obj = json.decode(row[5])
    if obj and matches(w, obj) then
      local typ = row[4]
      if not self:send(w, frame(w, typ, obj, row[5])) then return end
    end
  end
  if w.initial_end then
    self:bookmark(w, current_rv, true)
  end
end

function Watchers:bookmark(w, rv, initial_end)
  local obj = { kind = w.res.kind, apiVersion = w.res.api_version,
    metadata = { resourceVersion = tostring(rv), creationTimestamp = json.null } }
  if initial_end then
    obj.metadata.annotations = { ["k8s.io/initial-events-end"] = "true" }
  end
  self:send(w, json.encode({ type = "BOOKMARK", object = obj }) .. "\n")
end

--- End expired streams, forget closed ones, send bookmarks (every call).
function Watchers:sweep(now, rv, bookmarks)
  for _, list in pairs(self.by_key) do
    for w in pairs(list) do
      if w.req:closed() then
        self:remove(w)
      elseif w.deadline and now >= w.deadline then
        self:remove(w)
      elseif bookmarks and w.bookmarks then
        self:bookmark(w, rv)
      end
    end
  end
end

--- End every stream (server shutdown).
function Watchers:close_all()
  for _, list in pairs(self.by_key) do
    for w in pairs(list) do self:remove(w) end
  end
end

return M
