--- `vmsnap workflow list|show NAME`: the workflows on the scripts path, and
--- the order of operations of one (its steps, gates and extensions).
local cli = require("vmsnap.cli")
local workflow = require("vmsnap.workflow")

local M = {}

M.NAMES = { "disk-snapshot", "vm-snapshot", "disk-restore", "vm-restore", "snapshot-schedule" }

M.help = [[
usage: vmsnap workflow list
       vmsnap workflow show NAME

list   the workflows, the file each is loaded from and its extensions
show   the order of operations of one workflow: its steps (what each does,
       the phase it waits in, which have an undo), the gates (files in
       preconditions/) its "gates" step runs, and the extensions applied
       (workflows/NAME.d/*.lua), as the scripts path resolves them now

The scripts path: $VMSNAP_SCRIPTS_PATH (colon-separated), then the built-in
scripts. See docs/customizing.md.
]]

local function load(name)
  local w, err = workflow.load(name)
  if not w then cli.fail("error: " .. tostring(err)) end
  return w
end

local function show(name)
  local known = false
  for _, n in ipairs(M.NAMES) do known = known or n == name end
  if not known then
    cli.usage(("workflow: unknown workflow '%s' (known: %s)"):format(tostring(name), table.concat(M.NAMES, ", ")))
  end
  local w = load(name)
  local out = io.stdout
  out:write(("workflow %s (%s)\n  from %s\n"):format(name, w.kind, w.source))
  for _, e in ipairs(w.extensions or {}) do out:write(("  extended by %s\n"):format(e)) end
  out:write("\nsteps:\n")
  for line in (w.steps:describe() .. "\n"):gmatch("(.-)\n") do out:write("  " .. line .. "\n") end
  local gates = workflow.preconditions(name)
  if #gates > 0 then
    out:write("\ngates (run by the step \"gates\", in this order; the first that does not pass decides):\n")
    for _, p in ipairs(gates) do
      out:write(("  %3d  %-28s %s\n"):format(p.order or 50, p.name, p.source or ""))
    end
  end
end

function M.main(args)
  local verb = args[1]
  if verb == "-h" or verb == "--help" or verb == nil then io.stdout:write(M.help) return end
  if verb == "list" then
    if args[2] then cli.usage("workflow: list takes no argument") end
    for _, name in ipairs(M.NAMES) do
      local w = load(name)
      io.stdout:write(("%-14s %-24s %2d steps  %s%s\n"):format(name, w.kind, #w.steps, w.source,
        #(w.extensions or {}) > 0 and ("  (+" .. #w.extensions .. " extensions)") or ""))
    end
    return
  end
  if verb == "show" then
    if not args[2] or args[3] then cli.usage("workflow: usage: vmsnap workflow show NAME") end
    return show(args[2])
  end
  cli.usage(("workflow: unknown verb '%s' (list or show)"):format(tostring(verb)))
end

return M
