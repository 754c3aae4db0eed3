-- The command line from one table: `vmsnap --help` lists every command
-- (grouped), mistyped commands, kinds and flags get a suggestion and one
-- mention of --help, the shell completions (bash run for real) and the
-- man pages (rendered by man when it is installed) come from that table.
local t = require("tap")
local proc = require("vmsnap.proc")
local fs = require("vmsnap.fs")
local cli = require("vmsnap.cli")
local h = require("helpers")

local function vmsnap(...)
  local r = assert(proc.run({ h.vmsnap, ... }, { timeout = 20 }))
  return r.status, r.stdout, r.stderr
end

t.test("--help lists every command, grouped; every command module is in the table", function()
  local st, out = vmsnap("--help")
  t.eq(st, 0)
  for _, g in ipairs(cli.GROUPS) do t.contains(out, "\n" .. g.title .. ":\n") end
  for _, c in ipairs(cli.commands) do
    t.ok(out:find("\n  " .. c.name .. "%s+") ~= nil, c.name .. " in --help")
  end
  t.contains(out, "--memory-limit SIZE", "the program's options first")
  local listed = {}
  for _, c in ipairs(cli.commands) do listed[c.name] = true end
  for _, f in ipairs(assert(fs.list(h.source .. "/lua/vmsnap/cli"))) do
    local name = f:match("^(.-)%.lua$")
    if name and name ~= "kube" then t.ok(listed[name], "lua/vmsnap/cli/" .. f .. " is a command of the table") end
  end
  local _, out2 = vmsnap("help")
  t.contains(out2, "Snapshot and restore:\n  snapshot")
end)

t.test("mistyped commands, kinds and flags: the fix suggested, the error said once, exit 2", function()
  local cases = {
    { { "snapshto", "x" }, "vmsnap: 'snapshto' is not a command, and no file of that name exists (did you mean 'snapshot'?) (see 'vmsnap --help')\n" },
    { { "snapshot", "vmm", "x" }, "vmsnap: snapshot: 'vmm' is not something to snapshot: disk or vm (did you mean 'vm'?) (see 'vmsnap --help')\n" },
    { { "restore", "disc", "x", "--from", "s" }, "vmsnap: restore: 'disc' is not something to restore: disk or vm (did you mean 'disk'?) (see 'vmsnap --help')\n" },
    { { "snapshot", "disk", "x", "--wiat" }, "vmsnap: unknown flag '--wiat' (did you mean '--wait'?) (see 'vmsnap --help')\n" },
    { { "get", "vd", "--namspace", "x" }, "vmsnap: unknown flag '--namspace' (did you mean '--namespace'?) (see 'vmsnap --help')\n" },
    { { "snapshot" }, "vmsnap: snapshot: usage: vmsnap snapshot disk|vm NAME [--wait] (see 'vmsnap --help')\n" },
    { { "completion", "bsh" }, "vmsnap: completion: which shell? bash, zsh or fish (not 'bsh' (did you mean 'bash'?)) (see 'vmsnap --help')\n" },
    { { "help", "descibe" }, "vmsnap: no help for 'descibe': not a command (did you mean 'describe'?) (see 'vmsnap --help')\n" },
    { { "xyzzy-nothing" }, "vmsnap: 'xyzzy-nothing' is not a command, and no file of that name exists (see 'vmsnap --help')\n" },
  }
  for _, c in ipairs(cases) do
    local st, _, err = vmsnap(table.unpack(c[1]))
    t.eq(st, 2, table.concat(c[1], " "))
    t.eq(err, c[2])
  end
end)

t.test("bash completion, made from the table: commands, subcommands, a command's flags", function()
  local _, script = vmsnap("completion", "bash")
  local d <close> = assert(fs.tempdir("vmsnap-compl"))
  assert(fs.write_atomic(d.path .. "/c.bash", script))
  local function complete(line)
    local words = {}
    for w in line:gmatch("%S+") do words[#words + 1] = w end
    if line:sub(-1) == " " then words[#words + 1] = "" end
    local quoted = {}
    for i, w in ipairs(words) do quoted[i] = "'" .. w .. "'" end
    local sh = ("source %s/c.bash; COMP_WORDS=(%s); COMP_CWORD=%d; _vmsnap; printf '%%s\\n' \"${COMPREPLY[@]}\"")
      :format(d.path, table.concat(quoted, " "), #words - 1)
    local r = assert(proc.run({ "bash", "-c", sh }, { timeout = 10 }))
    t.eq(r.status, 0, r.stderr)
    return r.stdout
  end
  t.eq(complete("vmsnap sna"), "snapshot\n")
  t.eq(complete("vmsnap snapshot "), "disk\nvm\n")
  t.eq(complete("vmsnap get --all"), "--all-namespaces\n")
  t.contains(complete("vmsnap snapshot disk --w"), "--wait")
  t.contains(complete("vmsnap describe --"), "--kubeconfig")
  local _, zsh = vmsnap("completion", "zsh")
  t.ok(zsh:match("^#compdef vmsnap\n"), "zsh's header")
  local _, fish = vmsnap("completion", "fish")
  t.contains(fish, "complete -c vmsnap -n __fish_use_subcommand -a snapshot -d ")
  t.contains(fish, "complete -c vmsnap -n '__fish_seen_subcommand_from get' -l all-namespaces")
end)

t.test("man pages: vmsnap(1) and one per command, from the table and each command's help", function()
  local d <close> = assert(fs.tempdir("vmsnap-man"))
  local st = vmsnap("man", "--dir", d.path)
  t.eq(st, 0)
  for _, c in ipairs(cli.commands) do
    local page = assert(fs.read_file(d.path .. "/vmsnap-" .. c.name .. ".1"), c.name)
    t.contains(page, ".TH VMSNAP-" .. c.name:upper() .. " 1")
    local mod = cli.module_of(c.name)
    if mod and mod.help then t.contains(page, (mod.help:match("^usage: [^\n]*"))) end
  end
  local main = assert(fs.read_file(d.path .. "/vmsnap.1"))
  t.contains(main, ".SH OPTIONS")
  t.contains(main, ".B snapshot")
  -- built and installed with the program
  t.ok(fs.exists(h.build .. "/generated/man/vmsnap-describe.1"), "made by the build")
  if proc.run({ "man", "--version" }, { timeout = 10 }) then
    local r = assert(proc.run({ "man", "-l", d.path .. "/vmsnap-snapshot.1" }, { timeout = 20,
      env = { PATH = os.getenv("PATH"), MANPAGER = "cat", PAGER = "cat", MANWIDTH = "100", HOME = d.path } }))
    t.eq(r.status, 0, r.stderr)
    t.contains(r.stdout, "vmsnap snapshot disk NAME")
  end
end)

t.done()
