-- The documentation stands alone: every link of README.md and docs/ and
-- every repository path they name in backquotes resolves inside the
-- repository, and none points at the team's workspace beside the clone.
local t = require("tap")
local fs = require("vmsnap.fs")
local h = require("helpers")

local ROOT = h.source
local TOP = { docs = true, tests = true, scripts = true, lua = true, deploy = true, tools = true, runtime = true,
  include = true }

local function docs()
  local files = { "README.md" }
  for _, dir in ipairs({ "docs", "docs/examples" }) do
    for _, name in ipairs(assert(fs.list(ROOT .. "/" .. dir))) do
      if name:match("%.md$") then files[#files + 1] = dir .. "/" .. name end
    end
  end
  table.sort(files)
  return files
end

local function exists(path)
  return fs.exists(ROOT .. "/" .. path)
end

-- "a/b/../c" -> "a/c"
local function normal(p)
  local out = {}
  for part in p:gmatch("[^/]+") do
    if part == ".." then table.remove(out) elseif part ~= "." then out[#out + 1] = part end
  end
  return table.concat(out, "/")
end

t.test("every Markdown link resolves to a file of the repository", function()
  local n, bad = 0, {}
  for _, f in ipairs(docs()) do
    local text = assert(fs.read_file(ROOT .. "/" .. f))
    local dir = f:match("^(.*)/[^/]*$") or ""
    for target in text:gmatch("%]%(([^)%s]+)%)") do
      if not target:match("^%a[%w+.-]*:") and not target:match("^#") then
        n = n + 1
        local path = normal((dir ~= "" and (dir .. "/") or "") .. target:gsub("#.*$", ""))
        if not exists(path) then bad[#bad + 1] = ("%s links to %s"):format(f, target) end
      end
    end
  end
  print(("# %d links"):format(n))
  t.eq(table.concat(bad, "\n"), "", "links that resolve to no file")
end)

t.test("every repository path named in backquotes exists", function()
  local n, bad = 0, {}
  for _, f in ipairs(docs()) do
    local text = assert(fs.read_file(ROOT .. "/" .. f))
    for quoted in text:gmatch("`([^`\n]+)`") do
      -- a path of the repository: a top-level folder, then plain name characters
      local first = quoted:match("^([%w_-]+)/")
      -- (a segment in capitals is a placeholder: tests/fuzz/corpus/TARGET/)
      if first and TOP[first] and quoted:match("^[%w_./-]+$") and not quoted:match("%.%.%.")
          and not quoted:match("/%u[%u_]+/?$") and not quoted:match("/%u[%u_]+/") then
        n = n + 1
        local p = quoted:gsub("/$", "")
        -- a test tool is named by its program, built from P.c
        if not (exists(p) or exists(p .. ".c")) then bad[#bad + 1] = ("%s names `%s`"):format(f, quoted) end
      end
    end
  end
  t.eq(table.concat(bad, "\n"), "", "paths that are not in the repository")
  t.ok(n > 50, n .. " paths checked")
end)

t.test("nothing cites the workspace beside the clone, or a spec file that is not shipped", function()
  local bad = {}
  for _, f in ipairs(docs()) do
    local text = assert(fs.read_file(ROOT .. "/" .. f))
    if text:find("../shared", 1, true) then bad[#bad + 1] = f .. " cites ../shared" end
    if text:find("spec/snapshots.md", 1, true) then bad[#bad + 1] = f .. " cites spec/snapshots.md" end
  end
  t.eq(table.concat(bad, "\n"), "")
  t.ok(not fs.exists(ROOT .. "/luac.out"), "no Lua bytecode file in the tree")
end)

t.done()
