--- `vmsnap get`: show objects the way `kubectl get` does.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local json = require("vmsnap.json")
local yaml = require("vmsnap.yaml")

local M = {}

M.help = [[
usage: vmsnap get KIND[,KIND...] [NAME...] [options]

Show objects through the Kubernetes API (a cluster, or `vmsnap serve`): a
table with the resource's columns (the server's), or the objects themselves.
KIND is a short name (vds, vdsnapshot), a kind (VirtualDiskSnapshot) or a
resource (virtualdisksnapshots.virtualization.deckhouse.io).

options:
  -A, --all-namespaces    every namespace
  -l, --selector SEL      label selector (app=demo, 'tier in (a,b)')
  --field-selector SEL    field selector (metadata.name=x)
  -o, --output FORMAT     wide, yaml, json or name (default: a table)
  -w, --watch             after the table, a row for every change (one kind; until
                          interrupted)
  --show-managed-fields   keep metadata.managedFields in yaml and json (hidden
                          by default, as kubectl does)
]] .. kube.COMMON_HELP

local SPEC = {
  ["-A"] = { "all", false }, ["--all-namespaces"] = { "all", false },
  ["-l"] = { "selector", true }, ["--selector"] = { "selector", true },
  ["--field-selector"] = { "field_selector", true },
  ["-o"] = { "output", true }, ["--output"] = { "output", true },
  ["--show-managed-fields"] = { "managed_fields", false },
  ["-w"] = { "watch", false }, ["--watch"] = { "watch", false },
}
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

local function cell_text(v)
  if v == nil or v == json.null then return "" end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

local function print_table(tables, o, prefix_names, no_header)
  -- one header for the columns of each resource, kubectl style
  local out = {}
  for bi, t in ipairs(tables) do
    local cols = {}
    if o.all then cols[#cols + 1] = { name = "NAMESPACE", ns = true } end
    for ci, cd in ipairs(t.table.columnDefinitions or {}) do
      if (cd.priority or 0) == 0 or o.output == "wide" then
        cols[#cols + 1] = { name = cd.name:upper(), index = ci, is_name = cd.format == "name" or cd.name == "Name" }
      end
    end
    local rows = { {} }
    for i, col in ipairs(cols) do rows[1][i] = col.name end
    for _, row in ipairs(t.table.rows or {}) do
      local r = {}
      for i, col in ipairs(cols) do
        if col.ns then
          r[i] = (row.object and row.object.metadata and row.object.metadata.namespace) or ""
        else
          local text = cell_text(row.cells[col.index])
          if col.is_name and prefix_names then text = kube.kind_group(t.resource) .. "/" .. text end
          r[i] = text
        end
      end
      rows[#rows + 1] = r
    end
    if bi > 1 then out[#out + 1] = "" end
    if no_header then table.remove(rows, 1) end
    if #rows > 0 then out[#out + 1] = kube.columns(rows) end
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if #pos == 0 then cli.usage("get: which KIND? (e.g. 'vmsnap get vdsnapshot')") end
  local fmt = o.output
  if fmt and fmt ~= "wide" and fmt ~= "yaml" and fmt ~= "json" and fmt ~= "name" then
    cli.usage(("get: --output must be wide, yaml, json or name, not '%s'"):format(fmt))
  end
  local kinds = {}
  for k in pos[1]:gmatch("[^,]+") do kinds[#kinds + 1] = k end
  if o.watch and (#kinds > 1 or (fmt and fmt ~= "wide")) then
    cli.usage("get: --watch takes one kind and a table (no -o yaml, json or name)")
  end
  local c = kube.client(o)
  local names = { table.unpack(pos, 2) }
  if #names > 0 and #kinds > 1 then cli.usage("get: names can be given for one kind only") end
  local objects, tables, failures = {}, {}, {}
  for _, kind in ipairs(kinds) do
    local r, err = c:resource(kind)
    if not r then cli.fail("error: " .. err) end
    local ns = r.namespaced and not o.all and (o.namespace or c.namespace) or nil
    local function want_table() return fmt == nil or fmt == "wide" end
    if #names > 0 then
      for _, name in ipairs(names) do
        if want_table() then
          local res, msg, reason, st = c:request({ path = M.path(r, ns, name), accept = TABLE })
          if res then
            tables[#tables + 1] = { resource = r, table = json.decode(res.body) }
          else
            failures[#failures + 1] = kube.error_text(msg, reason, st)
          end
        else
          local obj, msg, reason, st = c:get(r, name, { namespace = ns })
          if obj then objects[#objects + 1] = { r, obj } else failures[#failures + 1] = kube.error_text(msg, reason, st) end
        end
      end
    else
      local q = { labelSelector = o.selector, fieldSelector = o.field_selector, limit = 500 }
      local rows_table, cont = nil, nil
      repeat
        q.continue = cont
        if want_table() then
          local res, msg, reason, st = c:request({ path = M.path(r, ns), query = q, accept = TABLE })
          if not res then cli.fail(kube.error_text(msg, reason, st)) end
          local tb = json.decode(res.body)
          if rows_table then
            for _, row in ipairs(tb.rows or {}) do table.insert(rows_table.rows, row) end
          else
            rows_table = tb
          end
          cont = tb.metadata and tb.metadata.continue
        else
          local page, msg, reason, st = c:list(r, { namespace = ns, all_namespaces = o.all,
            label_selector = o.selector, field_selector = o.field_selector, limit = 500, continue = cont })
          if not page then cli.fail(kube.error_text(msg, reason, st)) end
          for _, obj in ipairs(page.items or {}) do
            obj.apiVersion = obj.apiVersion or r.api_version
            obj.kind = obj.kind or r.kind
            objects[#objects + 1] = { r, obj }
          end
          cont = page.metadata and page.metadata.continue
        end
      until cont == nil or cont == ""
      if rows_table and #rows_table.rows > 0 then
        tables[#tables + 1] = { resource = r, table = rows_table }
      end
    end
  end
  if fmt == nil or fmt == "wide" then
    if #tables == 0 and #failures == 0 then
      local ns = o.namespace or c.namespace
      io.stderr:write(o.all and "No resources found\n" or ("No resources found in %s namespace.\n"):format(ns))
    elseif #tables > 0 then
      print_table(tables, o, #kinds > 1)
    end
  elseif fmt == "name" then
    for _, e in ipairs(objects) do io.stdout:write(kube.kind_group(e[1]), "/", e[2].metadata.name, "\n") end
  else
    local doc
    if #names == 1 and #objects == 1 then
      doc = objects[1][2]
    elseif #objects > 0 or #failures == 0 then
      local items = json.array()
      for i, e in ipairs(objects) do items[i] = e[2] end
      doc = { apiVersion = "v1", kind = "List", items = items, metadata = { resourceVersion = "" } }
    end
    if doc and not o.managed_fields then
      for _, e in ipairs(objects) do
        if type(e[2].metadata) == "table" then e[2].metadata.managedFields = nil end
      end
    end
    if doc then
      if fmt == "json" then
        io.stdout:write(json.encode(doc, { indent = 4 }), "\n")
      else
        io.stdout:write(yaml.dump(doc))
      end
    end
  end
  if #failures > 0 then cli.fail(table.concat(failures, "\n")) end
  if o.watch then M.watch(c, o, kinds[1], names, tables[1]) end
end

--- -w: a row for each change after the table (until the watch ends: Ctrl-C).
function M.watch(c, o, kind, names, first)
  local r = assert(c:resource(kind))
  local ns = r.namespaced and not o.all and (o.namespace or c.namespace) or nil
  local rv = first and first.table.metadata and first.table.metadata.resourceVersion or nil
  local fs = o.field_selector
  if #names == 1 then fs = (fs and (fs .. ",") or "") .. "metadata.name=" .. names[1] end
  local w, err = c:watch(r, { namespace = ns, all_namespaces = o.all, resource_version = rv,
    label_selector = o.selector, field_selector = fs })
  if not w then cli.fail("error: " .. tostring(err)) end
  local last = {}
  while true do
    local ev, werr, code = w:next()
    if not ev then
      if code == "CANCELLED" then return end
      cli.fail("error: the watch ended: " .. tostring(werr))
    end
    local obj = ev.object
    if type(obj) == "table" and obj.metadata and (#names ~= 1 or obj.metadata.name == names[1]) then
      local key = (obj.metadata.namespace or "") .. "/" .. obj.metadata.name
      local tb
      if ev.type ~= "DELETED" then
        local res = c:request({ path = M.path(r, obj.metadata.namespace, obj.metadata.name), accept = TABLE })
        tb = res and json.decode(res.body)
        last[key] = tb
      else
        tb = last[key]
        last[key] = nil
      end
      if tb then print_table({ { resource = r, table = tb } }, o, false, true) io.stdout:flush() end
    end
  end
end

--- The API path of a resource's collection or object.
function M.path(r, ns, name)
  local p = r.group == "" and ("/api/" .. r.version) or ("/apis/" .. r.group .. "/" .. r.version)
  if r.namespaced and ns then p = p .. "/namespaces/" .. ns end
  p = p .. "/" .. r.plural
  if name then p = p .. "/" .. name end
  return p
end

return M
