--- `vmsnap apply -f FILE`: server-side apply of manifests, like
--- `kubectl apply --server-side`.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local fs = require("vmsnap.fs")

local M = {}

M.help = [[
usage: vmsnap apply -f FILE [-f FILE...] [options]

Server-side apply of every object in the files (YAML, several documents; '-'
reads standard input), in order, under the field manager "vmsnap". A field
another manager owns with a different value is a conflict unless
--force-conflicts is given.

options:
  -f, --filename FILE     a manifest file, or - (repeatable)
  --force-conflicts       take over fields other managers own
  --dry-run=server        validate on the server, store nothing
  --field-manager NAME    the field manager (default vmsnap)
]] .. kube.COMMON_HELP

local SPEC = {
  ["-f"] = { "files", true, true }, ["--filename"] = { "files", true, true },
  ["--force-conflicts"] = { "force", false },
  ["--dry-run"] = { "dry_run", true },
  ["--field-manager"] = { "field_manager", true },
}
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if #pos > 0 then cli.usage(("apply: unexpected argument '%s' (files go after -f)"):format(pos[1])) end
  if not o.files then cli.usage("apply: -f FILE is required") end
  if o.dry_run and o.dry_run ~= "server" then cli.usage("apply: --dry-run must be 'server'") end
  local c = kube.client(o)
  local failures = {}
  for _, f in ipairs(o.files) do
    local text, err
    if f == "-" then
      text = io.stdin:read("a")
    else
      text, err = fs.read_file(f)
      if not text then cli.fail(("error: cannot read %s: %s"):format(f, err)) end
    end
    local results, nfail = c:apply_manifest(text, { force = o.force, dry_run = o.dry_run ~= nil,
      namespace = o.namespace })
    if not results then cli.fail(("error: %s: %s"):format(f, nfail)) end
    for _, r in ipairs(results) do
      if r.object then
        local res = c:resource(r.object)
        io.stdout:write(("%s/%s serverside-applied%s\n"):format(res and kube.kind_group(res) or r.object.kind,
          r.object.metadata.name, o.dry_run and " (server dry run)" or ""))
      else
        failures[#failures + 1] = kube.error_text(r.error, r.reason, r.status,
          ('error when applying "%s"'):format(f == "-" and "STDIN" or f))
      end
    end
  end
  if #failures > 0 then cli.fail(table.concat(failures, "\n")) end
end

return M
