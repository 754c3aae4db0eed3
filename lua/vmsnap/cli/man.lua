--- `vmsnap man`: the manual pages vmsnap(1) and vmsnap-COMMAND(1), made
--- from vmsnap.cli's command table and each command's help text (the
--- build writes them with `vmsnap man --dir`; `make install` installs them).
local cli = require("vmsnap.cli")
local fs = require("vmsnap.fs")

local M = {}

M.help = [[
usage: vmsnap man [COMMAND]      print vmsnap(1), or vmsnap-COMMAND(1), as roff
       vmsnap man --dir DIR      write every page into DIR (vmsnap.1, vmsnap-get.1, ...)

  vmsnap man snapshot | man -l -
]]

-- text as roff: no request or escape can come from it
local function roff(text)
  local out = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("\\", "\\e")
    if line:match("^[.']") then line = "\\&" .. line end
    out[#out + 1] = line
  end
  if out[#out] == "" then out[#out] = nil end
  return table.concat(out, "\n")
end

local function version()
  return (require("vmsnap").versions().vmsnap) or "0"
end

local function header(title, summary)
  return table.concat({
    (".TH %s 1 \"\" \"vmsnap %s\" \"vmsnap manual\""):format(title:upper(), version()),
    ".SH NAME",
    roff(title) .. " \\- " .. roff(summary),
  }, "\n") .. "\n"
end

--- The page of one command (nil when there is no such command).
function M.page(name)
  local entry
  for _, c in ipairs(cli.commands) do if c.name == name then entry = c end end
  if not entry then return nil end
  local mod = cli.module_of(name)
  local body = (mod and mod.help) or ("usage: vmsnap " .. name .. "\n\n" .. entry.summary .. "\n")
  return header("vmsnap-" .. name, entry.summary) .. ".SH DESCRIPTION\n.nf\n" .. roff(body) .. "\n.fi\n"
    .. ".SH SEE ALSO\n.BR vmsnap (1)\n"
end

--- vmsnap(1): the program, its options and every command.
function M.main_page()
  -- the program's own options: what `vmsnap --help` says before its commands
  local r = require("vmsnap.proc").run({ "/proc/self/exe", "--help" }, { timeout = 20 })
  local usage = (r and r.stdout or ""):match("^(.-)\n*" .. cli.GROUPS[1].title .. ":") or ""
  local parts = { header("vmsnap", "run Lua workflows that snapshot and restore virtual machines"),
    ".SH SYNOPSIS\n.nf\nvmsnap [options] [SCRIPT [args...]]\nvmsnap -e CODE [args...]\nvmsnap COMMAND [args...]\n.fi\n" }
  if usage ~= "" then parts[#parts + 1] = ".SH OPTIONS\n.nf\n" .. roff(usage) .. "\n.fi\n" end
  parts[#parts + 1] = ".SH COMMANDS\n"
  for _, g in ipairs(cli.GROUPS) do
    parts[#parts + 1] = ".SS " .. roff(g.title) .. "\n"
    for _, c in ipairs(g.commands) do
      parts[#parts + 1] = ".TP\n.B " .. c.name .. "\n" .. roff(c.summary) .. " (\\fBvmsnap\\-" .. c.name .. "\\fR(1))\n"
    end
  end
  local see = {}
  for _, c in ipairs(cli.commands) do see[#see + 1] = ".BR vmsnap\\-" .. c.name .. " (1)" end
  parts[#parts + 1] = ".SH SEE ALSO\n" .. table.concat(see, ",\n") .. "\n"
  return table.concat(parts)
end

function M.main(args)
  if args[1] == "-h" or args[1] == "--help" then io.stdout:write(M.help) return end
  if args[1] == "--dir" then
    local dir = args[2] or cli.usage("man: --dir needs a directory")
    assert(fs.mkdir_p(dir))
    local function put(name, text) assert(fs.write_atomic(dir .. "/" .. name, text, { mode = 420 })) end
    put("vmsnap.1", M.main_page())
    for _, c in ipairs(cli.commands) do put("vmsnap-" .. c.name .. ".1", M.page(c.name)) end
    return
  end
  if not args[1] then io.stdout:write(M.main_page()) return end
  local page = M.page(args[1])
  if not page then
    cli.usage(("man: no page for '%s': not a command%s"):format(args[1], cli.did_you_mean(args[1], cli.names())))
  end
  io.stdout:write(page)
end

return M
