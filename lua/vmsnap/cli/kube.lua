--- The kubectl-style flags shared by `vmsnap get` and `vmsnap apply`, and
--- kubectl's way of printing objects and errors.
local cli = require("vmsnap.cli")
local k8s = require("vmsnap.k8s")

local M = {}

M.COMMON_HELP = [[
  --kubeconfig FILE       the kubeconfig to use (default: $KUBECONFIG or ~/.kube/config)
  --context NAME          a context of the kubeconfig
  -n, --namespace NS      the namespace (default: the context's)
]]

--- Parse args into flags (spec: flag -> {key, takes_value}) and positionals.
function M.parse(args, spec)
  local o, pos = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local flag, inline = a:match("^(%-%-?[%w-]+)=(.*)$")
    if flag then a = flag end
    local s = spec[a]
    if s then
      if s[2] then
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then cli.usage(a .. " needs a value") end
        end
        if s[3] then
          o[s[1]] = o[s[1]] or {}
          table.insert(o[s[1]], v)
        else
          o[s[1]] = v
        end
      else
        if inline ~= nil then cli.usage(a .. " takes no value") end
        o[s[1]] = true
      end
    elseif a == "-h" or a == "--help" then
      o.help = true
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local flags = { "--help" }
      for k in pairs(spec) do flags[#flags + 1] = k end
      table.sort(flags)
      cli.usage(("unknown flag '%s'%s"):format(a, cli.did_you_mean(a, flags)))
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  return o, pos
end

M.COMMON = {
  ["--kubeconfig"] = { "kubeconfig", true },
  ["--context"] = { "context", true },
  ["-n"] = { "namespace", true },
  ["--namespace"] = { "namespace", true },
}

function M.client(o)
  local c, err = k8s.client({ kubeconfig = o.kubeconfig, context = o.context, namespace = o.namespace,
    field_manager = o.field_manager })
  if not c then cli.fail("error: " .. err) end
  return c
end

--- Rows of cells as kubectl aligns them (three spaces between columns, the
--- last one not padded), each line after indent; one string, no final newline.
function M.columns(rows, indent)
  local widths = {}
  for _, r in ipairs(rows) do
    for i, v in ipairs(r) do widths[i] = math.max(widths[i] or 0, utf8.len(v) or #v) end
  end
  local out = {}
  for _, r in ipairs(rows) do
    local parts = {}
    for i, v in ipairs(r) do
      parts[i] = i < #r and (v .. string.rep(" ", widths[i] - (utf8.len(v) or #v))) or v
    end
    out[#out + 1] = (indent or "") .. table.concat(parts, "   ")
  end
  return table.concat(out, "\n")
end

--- kubectl's report of a failed call.
function M.error_text(msg, reason, status, what)
  if type(status) == "table" and status.kind == "Status" then
    return ("Error from server (%s): %s%s"):format(reason or "Unknown", what and (what .. ": ") or "", msg)
  end
  return ("error: %s%s"):format(what and (what .. ": ") or "", msg)
end

--- "virtualdisksnapshot.virtualization.deckhouse.io" or "configmap".
function M.kind_group(r)
  local k = r.kind:lower()
  if r.group == "" then return k end
  return k .. "." .. r.group
end

return M
