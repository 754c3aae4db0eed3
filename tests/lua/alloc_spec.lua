-- Allocation-failure run: fail the Nth allocation for a range of N over
-- the core modules and check that each failure is reported (an error, or a
-- nil, message result) and that the runtime stays usable. Run under ASan in
-- the sanitizer build, this also proves no leak or corruption on those paths.
local t = require("tap")
local rt = require("vmsnap.core.runtime")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")
local task = require("vmsnap.task")

local doc = [[
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineRestore
metadata: {name: r, labels: {a: b}}
spec:
  virtualMachineSnapshotName: s
  nameReplacements:
    - from: {kind: VirtualMachine, name: a}
      to: b
    - from: {name: c}
      to: d
  empty: []
  text: |
    multi
    line
]]

local ops = {
  yaml_load = function() return yaml.load(doc) end,
  yaml_dump = function() return yaml.dump({ a = { 1, 2, { b = "c" } }, d = json.array() }) end,
  json_decode = function() return json.decode('{"a":[1,2,{"b":[]}],"c":"d"}') end,
  json_encode = function() return json.encode({ a = { 1, 2, { b = json.array() } }, c = "d" }) end,
  spawn_wait = function() return task.wait(task.spawn(function() return 1 end)) end,
}

for name, op in pairs(ops) do
  t.test("allocation failures in " .. name .. " are reported, not fatal", function()
    local failures = 0
    for n = 1, 60 do
      rt.fail_after(n)
      local ok, v = pcall(op)
      rt.fail_after(0)
      if not ok or v == nil then failures = failures + 1 end
    end
    t.ok(failures > 0, "some allocation failed")
    t.ok(op() ~= nil, "works again afterwards")
  end)
end

return t.done()
