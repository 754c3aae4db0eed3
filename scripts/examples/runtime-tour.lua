-- A tour of the vmsnap runtime: what `make demo` runs until the local
-- platform arrives.  usage: vmsnap scripts/examples/runtime-tour.lua MANIFESTS.yaml
local fs = require("vmsnap.fs")
local json = require("vmsnap.json")
local log = require("vmsnap.log")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local yaml = require("vmsnap.yaml")

local path = arg[1] or "tests/data/user-guide-manifests.yaml"

-- 1. The user guide's manifests, read as YAML and shown as JSON.
local text = assert(fs.read_file(path))
local docs = assert(yaml.load_all(text))
print(("== %d manifests from %s"):format(#docs, path))
for _, d in ipairs(docs) do
  print(("%-22s %s"):format(d.kind, assert(json.encode(d.spec))))
end

-- 2. Tasks: three "disks" snapshotted at once under one deadline; the slow
-- one is cancelled when the deadline passes, and its cleanup still runs.
print("== three disk copies in parallel, 0.3 s budget")
local function fake_snapshot(disk, seconds)
  local _ <close> = setmetatable({}, { __close = function()
    log.info("cleanup", { disk = disk })
  end })
  task.sleep(seconds)
  return disk .. " done"
end
local r = task.wait_all({
  task.spawn(function() return task.timeout(0.3, fake_snapshot, "root", 0.05) end),
  task.spawn(function() return task.timeout(0.3, fake_snapshot, "data", 0.1) end),
  task.spawn(function() return task.timeout(0.3, fake_snapshot, "slow", 5) end),
})
for _, res in ipairs(r) do print("  ", res[1] or ("failed: " .. res[2] .. " (" .. res[3] .. ")")) end

-- 3. A sparse disk image copied without reading its holes.
print("== sparse copy")
local dir <close> = assert(fs.tempdir("vmsnap-demo"))
local img, snap = dir.path .. "/disk.img", dir.path .. "/disk-snapshot.img"
assert(proc.run({ "truncate", "-s", "1G", img }, { check = true }))
assert(proc.run({ "sh", "-c", "echo 'guest data' | dd of=" .. img .. " bs=4k seek=1000 conv=notrunc status=none" }, { check = true }))
local c = assert(fs.copy(img, snap))
local st = assert(fs.stat(snap))
print(("  copied a %d MiB image by %s: %d bytes of data, %d KiB allocated"):format(
  c.size // 1048576, c.method, c.bytes, st.allocated // 1024))
local same = assert(proc.run({ "cmp", img, snap }))
print("  snapshot equals the source: " .. tostring(same.status == 0))
print("== done")
