--- vmsnap.apiserver.store: objects, resourceVersions and watch history in
--- SQLite (WAL).
---
--- One global counter is the resourceVersion (like etcd's revision): every
--- write takes the next value, stores the object's JSON and appends a history
--- row (the watch log), in one transaction; an acknowledged write survives a
--- crash of the process. History older than `history` revisions is compacted;
--- a watch from before the compaction point gets 410 Gone.
local sqlite = require("vmsnap.core.sqlite")
local json = require("vmsnap.json")

local M = {}
local Store = {}
Store.__index = Store

-- (cache_size: SQLite's own default, 2 MB; the file is in the kernel's page
-- cache anyway: 8 MB here was 6 MB more RSS with 1,000 snapshots stored and
-- no measurable gain: docs/performance.md)
local SCHEMA = [[
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA cache_size=-2000;
PRAGMA temp_store=MEMORY;
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects(
  id INTEGER PRIMARY KEY,
  res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS objects_key ON objects(res, ns, name);
CREATE INDEX IF NOT EXISTS objects_uid ON objects(uid);
CREATE INDEX IF NOT EXISTS objects_ns ON objects(ns);
CREATE INDEX IF NOT EXISTS objects_name ON objects(res, name);
CREATE TABLE IF NOT EXISTS history(
  rv INTEGER PRIMARY KEY, res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  type TEXT NOT NULL, body TEXT NOT NULL);
-- (no index on (res, rv): it was a fourth of the pages every write put in
-- the WAL; a watch from a resourceVersion reads the history after it in
-- order instead, 30-35 ms at most over the 100,000 revisions kept)
DROP INDEX IF EXISTS history_res;
CREATE TABLE IF NOT EXISTS owners(
  owner TEXT NOT NULL, res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  PRIMARY KEY(owner, res, ns, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_dep ON owners(res, ns, name);
]]

-- A store made before 2026-12-04 keeps its objects in a WITHOUT ROWID
-- table: there a row holds at most ~1,000 bytes in its page and the rest of
-- a body in overflow pages, written again with every update (6.3 pages to
-- the WAL per update of a 1.2 kB object, 4.0 in a table with rowids, whose
-- rows keep up to ~4,000 bytes in place: docs/performance.md). Moved over
-- once, in one transaction, when such a store is opened.
local MIGRATE = [[
BEGIN IMMEDIATE;
ALTER TABLE objects RENAME TO objects_before;
DROP INDEX IF EXISTS objects_uid;
DROP INDEX IF EXISTS objects_ns;
DROP INDEX IF EXISTS objects_name;
CREATE TABLE objects(
  id INTEGER PRIMARY KEY,
  res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL);
INSERT INTO objects(res, ns, name, uid, rv, body)
  SELECT res, ns, name, uid, rv, body FROM objects_before ORDER BY res, ns, name;
DROP TABLE objects_before;
COMMIT;
]]

local function must(v, err)
  if v == nil and err then error("store: " .. err, 2) end
  return v
end

--- Open (or create) the store at path.
---@param path string
---@param opts? {history?: integer}
function M.open(path, opts)
  opts = opts or {}
  local db, err, code = sqlite.open(path, { busy_timeout_ms = 200 })
  if not db then return nil, err, code end
  -- one server per store: hold the file's lock for the life of the connection
  -- (faster, too: no shared-memory index for the WAL)
  local ok
  ok, err, code = db:exec("PRAGMA locking_mode=EXCLUSIVE; BEGIN IMMEDIATE; COMMIT;")
  if ok then
    local q = db:prepare("SELECT sql FROM sqlite_master WHERE type='table' AND name='objects'")
    local sql = q and q:first()
    if q then q:finalize() end
    if type(sql) == "string" and sql:upper():find("WITHOUT%s+ROWID") then
      ok, err, code = db:exec(MIGRATE)
      if not ok then db:exec("ROLLBACK") end
    end
  end
  if ok then ok, err, code = db:exec(SCHEMA) end
  if not ok then
    db:close()
    if code == "SQLITE_BUSY" or code == "SQLITE_LOCKED" then
      return nil, ("%s is in use by another process (another vmsnap serve?)"):format(path), "EBUSY"
    end
    return nil, err, code
  end
  local self = setmetatable({ db = db, history = opts.history or 100000, since_compact = 0 }, Store)
  local q = {
    get = "SELECT body, rv FROM objects WHERE res=?1 AND ns=?2 AND name=?3",
    put = "INSERT OR REPLACE INTO objects(res, ns, name, uid, rv, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    -- an update of the same object (its uid unchanged) rewrites its row in
    -- place: REPLACE is a delete and an insert, and wrote every index again
    upd = "UPDATE objects SET rv=?4, body=?5 WHERE res=?1 AND ns=?2 AND name=?3 AND uid=?6",
    del = "DELETE FROM objects WHERE res=?1 AND ns=?2 AND name=?3",
    hist = "INSERT INTO history(rv, res, ns, name, type, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    setrv = "INSERT OR REPLACE INTO meta(k, v) VALUES('rv', ?1)",
    begin = "BEGIN IMMEDIATE",
    commit = "COMMIT",
    rollback = "ROLLBACK",
    list_all = "SELECT ns, name, body FROM objects WHERE res=?1 AND (ns, name) > (?2, ?3) ORDER BY ns, name LIMIT ?4",
    list_ns = "SELECT ns, name, body FROM objects WHERE res=?1 AND ns=?2 AND name > ?3 ORDER BY name LIMIT ?4",
    count = "SELECT count(*) FROM objects WHERE res=?1",
    by_name = "SELECT ns, name, body FROM objects WHERE res=?1 AND name=?2 ORDER BY ns",
    since = "SELECT rv, ns, name, type, body FROM history WHERE rv > ?2 AND res=?1 ORDER BY rv",
    by_uid = "SELECT res, ns, name, body FROM objects WHERE uid=?1",
    own_del = "DELETE FROM owners WHERE res=?1 AND ns=?2 AND name=?3",
    own_add = "INSERT OR IGNORE INTO owners(owner, res, ns, name) VALUES(?1, ?2, ?3, ?4)",
    dependents = "SELECT res, ns, name FROM owners WHERE owner=?1",
    orphans = [[SELECT DISTINCT o.res, o.ns, o.name FROM owners o
                LEFT JOIN objects x ON x.uid = o.owner WHERE x.uid IS NULL]],
    in_ns = "SELECT res, name FROM objects WHERE ns=?1",
    compact = "DELETE FROM history WHERE rv <= ?1",
    setcompact = "INSERT OR REPLACE INTO meta(k, v) VALUES('compacted', ?1)",
    marked = "SELECT res, ns, name, body FROM objects WHERE body LIKE ?1",
  }
  self.q = {}
  for k, sql in pairs(q) do
    self.q[k] = must(db:prepare(sql))
  end
  -- (each statement finalized at once: one left to the collector keeps the
  -- connection, and the file's lock, after Store:close)
  local function one(sql)
    local st = must(db:prepare(sql))
    local v = st:first()
    st:finalize()
    return v
  end
  self.rv = math.max(one("SELECT v FROM meta WHERE k='rv'") or 0, one("SELECT max(rv) FROM history") or 0,
    one("SELECT max(rv) FROM objects") or 0)
  self.compacted = one("SELECT v FROM meta WHERE k='compacted'") or 0
  return self
end

function Store:close()
  for _, st in pairs(self.q) do st:finalize() end
  self.db:close()
end

--- The stored JSON text and resourceVersion of one object, or nil.
function Store:get_raw(res, ns, name)
  return self.q.get:first(res, ns or "", name)
end

--- The decoded object, or nil.
function Store:get(res, ns, name)
  local body = self.q.get:first(res, ns or "", name)
  if not body then return nil end
  return (json.decode(body))
end

--- Rows {ns, name, body} of a resource after the (ns, name) position, up to limit.
function Store:page(res, ns, after_ns, after_name, limit)
  if ns then
    return self.q.list_ns:all(res, ns, after_name or "", limit)
  end
  return self.q.list_all:all(res, after_ns or "", after_name or "", limit)
end

--- Rows {ns, name, body} of the objects of a resource named `name` (in one
--- namespace, or in all, ordered by namespace): an index lookup.
function Store:named(res, ns, name)
  if ns then
    local body = self.q.get:first(res, ns, name)
    return body and { { ns, name, body } } or {}
  end
  return self.q.by_name:all(res, name)
end

--- Every stored object of a resource (in one namespace, or all), page by
--- page: fn(ns, name, body) for each, with the decoded object as a fourth
--- argument when decode is true (objects that do not decode are skipped).
function Store:each(res, ns, fn, decode)
  local after_ns, after_name = "", ""
  while true do
    local rows = self:page(res, ns, after_ns, after_name, 1000)
    for _, row in ipairs(rows) do
      after_ns, after_name = row[1], row[2]
      if decode then
        local obj = json.decode(row[3])
        if obj then fn(row[1], row[2], row[3], obj) end
      else
        fn(row[1], row[2], row[3])
      end
    end
    if #rows < 1000 then break end
  end
end

function Store:count(res)
  return self.q.count:first(res)
end

--- History rows {rv, ns, name, type, body} of a resource after rv.
function Store:since(res, rv)
  return self.q.since:all(res, rv)
end

function Store:by_uid(uid)
  return self.q.by_uid:first(uid)
end

function Store:dependents(uid)
  return self.q.dependents:all(uid)
end

--- Dependents whose owners are all gone (rows {res, ns, name}).
function Store:orphans()
  return self.q.orphans:all()
end

function Store:in_namespace(ns)
  return self.q.in_ns:all(ns)
end

--- Objects whose JSON contains `needle` (a LIKE pattern is built from it).
function Store:containing(needle)
  return self.q.marked:all("%" .. needle .. "%")
end

local function owner_uids(obj)
  local refs = obj.metadata and obj.metadata.ownerReferences
  local out = {}
  if type(refs) == "table" then
    for _, r in ipairs(refs) do
      if type(r) == "table" and type(r.uid) == "string" then out[#out + 1] = r.uid end
    end
  end
  return out
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

--- Write obj (a table) as the new state of (res, ns, name), or delete it
--- when typ is "DELETED". old, when given, is the state it replaces (its
--- owners' rows are then kept when they did not change). Assigns and
--- returns the new resourceVersion and the stored JSON text.
---
--- The newest resourceVersion is the largest in the history (every write
--- adds a row there); the meta row keeps it only for when compaction has
--- emptied the history (M.open reads the largest of the three).
function Store:write(res, ns, name, typ, obj, old)
  local q = self.q
  local rv = self.rv + 1
  obj.metadata.resourceVersion = tostring(rv)
  local body = assert(json.encode(obj))
  must(q.begin:run())
  local ok, err = pcall(function()
    if typ == "DELETED" then
      must(q.del:run(res, ns, name))
      must(q.own_del:run(res, ns, name))
    else
      local uid = obj.metadata.uid or ""
      local owners = owner_uids(obj)
      local in_place = typ == "MODIFIED" and must(q.upd:run(res, ns, name, rv, body, uid)) == 1
      if not in_place then must(q.put:run(res, ns, name, uid, rv, body)) end
      if not (in_place and old and same_list(owners, owner_uids(old))) then
        must(q.own_del:run(res, ns, name))
        for _, o in ipairs(owners) do
          must(q.own_add:run(o, res, ns, name))
        end
      end
    end
    must(q.hist:run(rv, res, ns, name, typ, body))
    must(q.commit:run())
  end)
  if not ok then
    q.rollback:run()
    error(err, 0)
  end
  self.rv = rv
  self.since_compact = self.since_compact + 1
  if self.since_compact >= 1000 then self:compact() end
  return rv, body
end

--- Drop history older than the retention window.
function Store:compact()
  self.since_compact = 0
  local upto = self.rv - self.history
  if upto > self.compacted then
    -- (before the history that holds the newest resourceVersion can go)
    self.q.setrv:run(self.rv)
    self.q.compact:run(upto)
    self.q.setcompact:run(upto)
    self.compacted = upto
  end
end

return M
