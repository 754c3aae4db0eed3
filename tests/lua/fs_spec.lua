local t = require("tap")
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")

local dir <close> = assert(fs.tempdir("vmsnap-fs-spec"))

t.test("mkdir_p, write_atomic, read_file, list, stat", function()
  local d = dir.path .. "/a/b/c"
  assert(fs.mkdir_p(d))
  assert(fs.mkdir_p(d), "idempotent")
  assert(fs.write_atomic(d .. "/f.txt", "hello", { mode = tonumber("600", 8) }))
  t.eq(fs.read_file(d .. "/f.txt"), "hello")
  assert(fs.write_atomic(d .. "/f.txt", "replaced"))
  t.eq(fs.read_file(d .. "/f.txt"), "replaced")
  t.eq(fs.list(d), { "f.txt" }, "no temp file left behind")
  local st = assert(fs.stat(d .. "/f.txt"))
  t.eq({ st.type, st.size }, { "file", 8 })
end)

t.test("failures return errno names", function()
  local v, err, code = fs.read_file(dir.path .. "/missing")
  t.eq({ v, code }, { nil, "ENOENT" })
  t.contains(err, "missing")
  t.eq(select(3, fs.write_atomic("/nonexistent-dir/x", "y")), "ENOENT")
  assert(fs.write_atomic(dir.path .. "/file", "x"))
  t.eq(select(3, fs.mkdir_p(dir.path .. "/file/sub")), "ENOTDIR")
end)

t.test("copy keeps a sparse file sparse", function()
  local src, dst = dir.path .. "/sparse.img", dir.path .. "/copy.img"
  -- 64 MiB file with two 1 MiB data regions
  assert(proc.run({ "truncate", "-s", "64M", src }, { check = true }))
  assert(proc.run({ "dd", "if=/dev/urandom", "of=" .. src, "bs=1M", "count=1", "seek=3", "conv=notrunc" }, { check = true }))
  assert(proc.run({ "dd", "if=/dev/urandom", "of=" .. src, "bs=1M", "count=1", "seek=40", "conv=notrunc" }, { check = true }))
  local r = assert(fs.copy(src, dst))
  t.eq(r.size, 64 * 1024 * 1024)
  local st = assert(fs.stat(dst))
  t.eq(st.size, 64 * 1024 * 1024)
  t.ok(st.allocated <= 8 * 1024 * 1024, "copy allocates ~2 MiB, not 64 (allocated " .. st.allocated .. ")")
  if r.method == "sparse" then t.eq(r.bytes, 2 * 1024 * 1024) end
  local cmp = assert(proc.run({ "cmp", src, dst }))
  t.eq(cmp.status, 0, "same content")
end)

t.test("copy of a missing source fails with ENOENT", function()
  t.eq(select(3, fs.copy(dir.path .. "/nope", dir.path .. "/x")), "ENOENT")
end)

t.test("tempdir removes itself when closed", function()
  local path
  do
    local d <close> = assert(fs.tempdir())
    path = d.path
    assert(fs.write_atomic(path .. "/x", "y"))
    t.eq(fs.exists(path), true)
  end
  t.eq(fs.exists(path), false)
end)

return t.done()
