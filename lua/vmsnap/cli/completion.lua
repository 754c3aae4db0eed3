--- `vmsnap completion bash|zsh|fish`: the shell completion script, made
--- from vmsnap.cli's command table (commands, their subcommands) and each
--- command's help text (its flags) — nothing kept by hand.
local cli = require("vmsnap.cli")

local M = {}

M.help = [[
usage: vmsnap completion bash|zsh|fish

Print the completion script of a shell: commands, their subcommands and
their flags, from the same table as `vmsnap --help`.

  source <(vmsnap completion bash)                  # bash, this shell
  vmsnap completion bash > /etc/bash_completion.d/vmsnap
  source <(vmsnap completion zsh)                   # zsh (bashcompinit)
  vmsnap completion fish > ~/.config/fish/completions/vmsnap.fish
]]

local function words(list) return table.concat(list, " ") end

function M.bash()
  local out = { "# bash completion for vmsnap (made by `vmsnap completion bash`; do not edit)",
    "_vmsnap() {",
    "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" cmd=\"${COMP_WORDS[1]}\" w=\"\"",
    "  if [ \"$COMP_CWORD\" -eq 1 ]; then",
    ("    COMPREPLY=($(compgen -W \"%s --help --version\" -- \"$cur\"))"):format(words(cli.names())),
    "    return",
    "  fi",
    "  case \"$cmd\" in" }
  for _, c in ipairs(cli.commands) do
    local subs = c.subcommands and words(c.subcommands) or ""
    out[#out + 1] = ("    %s) w=\"%s\"; [ \"$COMP_CWORD\" -eq 2 ] && [ -n \"%s\" ] && [ \"${cur#-}\" = \"$cur\" ] && w=\"%s\" ;;")
      :format(c.name, words(cli.flags_of(c.name)), subs, subs)
  end
  out[#out + 1] = "    help) w=\"" .. words(cli.names()) .. "\" ;;"
  out[#out + 1] = "  esac"
  out[#out + 1] = "  COMPREPLY=($(compgen -W \"$w\" -- \"$cur\"))"
  out[#out + 1] = "}"
  out[#out + 1] = "complete -o default -F _vmsnap vmsnap"
  return table.concat(out, "\n") .. "\n"
end

function M.zsh()
  return "#compdef vmsnap\n# zsh completion for vmsnap (made by `vmsnap completion zsh`): the bash one, through bashcompinit\n"
    .. "autoload -U +X bashcompinit && bashcompinit\n" .. M.bash()
end

local function fish_quote(s) return "'" .. s:gsub("\\", "\\\\"):gsub("'", "\\'") .. "'" end

function M.fish()
  local out = { "# fish completion for vmsnap (made by `vmsnap completion fish`; do not edit)",
    "complete -c vmsnap -f" }
  for _, c in ipairs(cli.commands) do
    out[#out + 1] = ("complete -c vmsnap -n __fish_use_subcommand -a %s -d %s"):format(c.name, fish_quote(c.summary))
    local cond = "'__fish_seen_subcommand_from " .. c.name .. "'"
    for _, s in ipairs(c.subcommands or {}) do
      out[#out + 1] = ("complete -c vmsnap -n %s -a %s"):format(cond, s)
    end
    for _, f in ipairs(cli.flags_of(c.name)) do
      local long, short = f:match("^%-%-(.+)$"), f:match("^%-(%w)$")
      if long then out[#out + 1] = ("complete -c vmsnap -n %s -l %s"):format(cond, long)
      elseif short then out[#out + 1] = ("complete -c vmsnap -n %s -s %s"):format(cond, short) end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

function M.main(args)
  local shell = args[1]
  if shell == "-h" or shell == "--help" then io.stdout:write(M.help) return end
  if shell ~= "bash" and shell ~= "zsh" and shell ~= "fish" then
    cli.usage(("completion: which shell? bash, zsh or fish%s"):format(shell and
      ((" (not '%s'%s)"):format(shell, cli.did_you_mean(shell, { "bash", "zsh", "fish" }))) or ""))
  end
  if args[2] then cli.usage(("completion: unexpected argument '%s'"):format(args[2])) end
  io.stdout:write(M[shell]())
end

return M
