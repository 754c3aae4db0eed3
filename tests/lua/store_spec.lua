-- The API server's store on real SQLite files: an update rewrites its row in
-- place and keeps its owners' rows unless they changed; the newest
-- resourceVersion survives a reopen even when compaction emptied the
-- history and the last write was a delete.
local t = require("tap")
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local store = require("vmsnap.apiserver.store")

local RES = "test.vmsnap.io/widgets"

local function obj(name, uid, owners)
  local refs
  if owners then
    refs = json.array()
    for i, o in ipairs(owners) do refs[i] = { apiVersion = "v1", kind = "ConfigMap", name = "o" .. i, uid = o } end
  end
  return { apiVersion = "test.vmsnap.io/v1", kind = "Widget",
    metadata = { name = name, namespace = "default", uid = uid, ownerReferences = refs }, spec = { n = 0 } }
end

local function names(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[3] end
  table.sort(out)
  return out
end

local function copy(v) return json.decode(json.encode(v)) end

t.test("an update rewrites the row; its owners' rows follow its ownerReferences, kept when they are the same", function()
  local dir <close> = assert(fs.tempdir("vmsnap-store"))
  local st = assert(store.open(dir.path .. "/state.db"))
  local a = obj("a", "uid-a", { "owner-1" })
  st:write(RES, "default", "a", "ADDED", a)
  t.eq(names(st:dependents("owner-1")), { "a" })
  -- the same owners: an update in place
  local a2 = copy(a)
  a2.spec.n = 1
  local rv2 = st:write(RES, "default", "a", "MODIFIED", a2, a)
  t.eq(st:get(RES, "default", "a").spec.n, 1)
  t.eq(select(2, st:get_raw(RES, "default", "a")), rv2)
  t.eq(names(st:dependents("owner-1")), { "a" })
  t.eq(st:by_uid("uid-a"), RES)
  -- other owners: the rows move with them
  local a3 = copy(a2)
  a3.metadata.ownerReferences = json.array({ { apiVersion = "v1", kind = "ConfigMap", name = "o2", uid = "owner-2" } })
  st:write(RES, "default", "a", "MODIFIED", a3, a2)
  t.eq(#st:dependents("owner-1"), 0)
  t.eq(names(st:dependents("owner-2")), { "a" })
  -- no old state given (a caller that has none): the owners are written again
  local a4 = copy(a3)
  a4.metadata.ownerReferences = nil
  st:write(RES, "default", "a", "MODIFIED", a4)
  t.eq(#st:dependents("owner-2"), 0)
  -- deleted and made again under the same name (a new uid): the row is
  -- replaced, found by its new uid only, even written as MODIFIED
  st:write(RES, "default", "a", "DELETED", a4)
  t.eq(st:get(RES, "default", "a"), nil)
  local b = obj("a", "uid-b", { "owner-3" })
  st:write(RES, "default", "a", "MODIFIED", b, a4)
  t.eq(st:get(RES, "default", "a").metadata.uid, "uid-b")
  t.eq(st:by_uid("uid-a"), nil)
  t.eq(st:by_uid("uid-b"), RES)
  t.eq(names(st:dependents("owner-3")), { "a" })
  t.eq(#st:named(RES, nil, "a"), 1)
  t.eq(#st:in_namespace("default"), 1)
  t.eq(st:count(RES), 1)
  -- every write is in the history, in order
  local types = {}
  for _, row in ipairs(st:since(RES, 0)) do types[#types + 1] = row[4] end
  t.eq(types, { "ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED", "MODIFIED" })
  st:close()
end)

t.test("the newest resourceVersion survives a reopen: after plain writes, and when compaction emptied the history", function()
  local dir <close> = assert(fs.tempdir("vmsnap-store"))
  local path = dir.path .. "/state.db"
  local st = assert(store.open(path))
  local a = obj("a", "uid-a")
  st:write(RES, "default", "a", "ADDED", a)
  local last = st:write(RES, "default", "a", "DELETED", a)
  st:close()
  st = assert(store.open(path))
  t.eq(st.rv, last, "a delete's resourceVersion, from the history")
  st:close()
  -- no history kept: the thousandth write compacts it all away, and that
  -- write is a delete (no object holds the newest resourceVersion either)
  st = assert(store.open(path, { history = 0 }))
  local b = obj("b", "uid-b")
  st:write(RES, "default", "b", "ADDED", b)
  for _ = 2, 999 do -- (compaction comes every 1,000 writes of a session)
    local nb = copy(b)
    nb.spec.n = st.rv
    st:write(RES, "default", "b", "MODIFIED", nb, b)
    b = nb
  end
  last = st:write(RES, "default", "b", "DELETED", b)
  t.eq(#st:since(RES, 0), 0, "the history is empty")
  t.eq(st:count(RES), 0)
  st:close()
  st = assert(store.open(path, { history = 0 }))
  t.eq(st.rv, last)
  local next_rv = st:write(RES, "default", "c", "ADDED", obj("c", "uid-c"))
  t.eq(next_rv, last + 1, "never a resourceVersion twice")
  st:close()
end)

t.test("a store of the earlier layout (objects WITHOUT ROWID) is moved over when opened, nothing lost", function()
  local sqlite = require("vmsnap.core.sqlite")
  local dir <close> = assert(fs.tempdir("vmsnap-store"))
  local path = dir.path .. "/state.db"
  local db = assert(sqlite.open(path))
  assert(db:exec([[
PRAGMA journal_mode=WAL;
CREATE TABLE meta(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE objects(res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  uid TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY(res, ns, name)) WITHOUT ROWID;
CREATE INDEX objects_uid ON objects(uid);
CREATE INDEX objects_ns ON objects(ns);
CREATE INDEX objects_name ON objects(res, name);
CREATE TABLE history(rv INTEGER PRIMARY KEY, res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  type TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX history_res ON history(res, rv);
CREATE TABLE owners(owner TEXT NOT NULL, res TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
  PRIMARY KEY(owner, res, ns, name)) WITHOUT ROWID;
INSERT INTO meta(k, v) VALUES('rv', 7);
]]))
  local ins = assert(db:prepare("INSERT INTO objects(res, ns, name, uid, rv, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"))
  for i = 1, 5 do
    local o = obj("w" .. i, "uid-" .. i)
    o.metadata.resourceVersion = tostring(i + 2)
    o.spec.n = i
    ins:run(RES, i % 2 == 0 and "default" or "other", "w" .. i, "uid-" .. i, i + 2, json.encode(o))
  end
  ins:finalize()
  db:close()
  local st = assert(store.open(path))
  local q = st.db:prepare("SELECT sql FROM sqlite_master WHERE type='table' AND name='objects'")
  local sql = q:first()
  q:finalize()
  t.ok(not sql:upper():find("WITHOUT ROWID"), sql)
  t.eq(st.rv, 7)
  t.eq(st:count(RES), 5)
  t.eq(st:get(RES, "default", "w4").spec.n, 4)
  t.eq(st:by_uid("uid-3"), RES)
  local names = {}
  for _, row in ipairs(st:page(RES, nil, "", "", 10)) do names[#names + 1] = row[1] .. "/" .. row[2] end
  t.eq(names, { "default/w2", "default/w4", "other/w1", "other/w3", "other/w5" }, "in (namespace, name) order")
  t.eq(#st:named(RES, nil, "w5"), 1)
  -- the look-ups by key go through the index, not a scan or a sort
  for _, sql2 in ipairs({ "SELECT body, rv FROM objects WHERE res=?1 AND ns=?2 AND name=?3",
      "SELECT ns, name, body FROM objects WHERE res=?1 AND (ns, name) > (?2, ?3) ORDER BY ns, name LIMIT ?4",
      "SELECT ns, name, body FROM objects WHERE res=?1 AND ns=?2 AND name > ?3 ORDER BY name LIMIT ?4" }) do
    local plan = {}
    local ex = st.db:prepare("EXPLAIN QUERY PLAN " .. sql2)
    for _, row in ipairs(ex:all()) do plan[#plan + 1] = row[4] end
    ex:finalize()
    local text = table.concat(plan, "; ")
    t.contains(text, "USING INDEX objects_key", sql2)
    t.ok(not text:find("TEMP B%-TREE"), text)
  end
  -- and the history after a resourceVersion by its rowids
  local ex = st.db:prepare("EXPLAIN QUERY PLAN SELECT rv, ns, name, type, body FROM history WHERE rv > ?2 AND res=?1 ORDER BY rv")
  local plan = ex:all()
  ex:finalize()
  t.contains(plan[1][4], "INTEGER PRIMARY KEY (rowid>?)")
  t.ok(not plan[2], "no sort")
  local w = st:get(RES, "default", "w2")
  w.spec.n = 20
  t.eq(st:write(RES, "default", "w2", "MODIFIED", w, st:get(RES, "default", "w2")), 8)
  t.eq(st:get(RES, "default", "w2").spec.n, 20)
  st:close()
  st = assert(store.open(path))
  t.eq(st:get(RES, "default", "w2").spec.n, 20, "and again after a reopen (no second move)")
  st:close()
end)

return t.done()
