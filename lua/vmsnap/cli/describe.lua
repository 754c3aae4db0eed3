--- `vmsnap describe KIND NAME`: one object's story on one screen — its
--- phase and conditions, its freeze (when, how long, part by part, who held
--- it with it), its hook runs, its workflow steps, its children and its
--- Events. For vmsnap's snapshot and restore kinds; any other kind shows
--- its phase, conditions and Events.
local cli = require("vmsnap.cli")
local kube = require("vmsnap.cli.kube")
local json = require("vmsnap.json")
local vtime = require("vmsnap.time")
local human = require("vmsnap.apiserver.table").human_duration

local M = {}

M.help = [[
usage: vmsnap describe KIND NAME [options]

What happened to one object, on one screen: phase and conditions, the
freeze (when, how long, its parts — the freeze call, the issue of the
VolumeSnapshots, the cut, the thaw — and the other snapshots that held it),
the hook runs (point, hook, outcome, ms), the workflow's steps (done, undos
owed), the children (a VM snapshot's disk snapshots and Secret, a disk
snapshot's VolumeSnapshot) and the Events, newest last.
KIND: vdsnapshot, vmsnapshot, vmrestore (short names, kinds or resources),
or any other kind (its phase, conditions and Events).

options:
]] .. kube.COMMON_HELP

local SPEC = {}
for k, v in pairs(kube.COMMON) do SPEC[k] = v end

local G = "virtualization.deckhouse.io"

local function ago(ts, now)
  local t = ts and vtime.parse(ts)
  if not t then return "" end
  return human(math.max(0, now - t))
end

local function ann(obj, key)
  return obj.metadata.annotations and obj.metadata.annotations[key]
end

local columns = kube.columns

local function target_of(obj)
  local spec = obj.spec or {}
  if spec.virtualDiskName then return "VirtualDisk " .. spec.virtualDiskName end
  if spec.virtualMachineName then return "VirtualMachine " .. spec.virtualMachineName end
  if spec.virtualMachineSnapshotName then return "VirtualMachineSnapshot " .. spec.virtualMachineSnapshotName end
end

-- the freeze a snapshot held (or holds): its own mark, or — a VM snapshot's
-- child, whose VolumeSnapshot its parent issued — its VolumeSnapshot's
local function freeze_of(o, vs)
  return tonumber(ann(o, "vmsnap.io/frozen-at") or ann(o, "vmsnap.io/freeze-held") or "")
    or (vs and tonumber(ann(vs, "vmsnap.io/frozen-at") or ""))
end

-- the VolumeSnapshots of a namespace by name (none when they cannot be listed)
local function volume_snapshots(c, ns)
  local out = {}
  for _, v in ipairs(c:list_all("volumesnapshots.snapshot.storage.k8s.io", { namespace = ns }) or {}) do
    out[v.metadata.name] = v
  end
  return out
end

-- the freeze this snapshot was under, and the other snapshots that held it
local function freeze_lines(c, obj, now)
  local lines = {}
  local ns = obj.metadata.namespace
  local vss
  local function vs_of(o)
    if o.kind ~= "VirtualDiskSnapshot" then return nil end
    vss = vss or volume_snapshots(c, ns)
    return vss[o.metadata.name]
  end
  local at = freeze_of(obj, vs_of(obj))
  local dur = ann(obj, "vmsnap.io/freeze-duration-ms")
  if not at and not dur then return lines end
  if at then
    local when = vtime.format(math.floor(at / 1000))
    lines[#lines + 1] = ("Frozen at:    %s (%s ago)"):format(when, ago(when, now))
  end
  if dur then
    local parts = ann(obj, "vmsnap.io/freeze-parts-ms")
    lines[#lines + 1] = ("Frozen for:   %s ms%s"):format(dur, parts and (" (" .. parts .. ")") or "")
  end
  lines[#lines + 1] = ("Budget:       %s s, thaw at %s"):format(ann(obj, "vmsnap.io/freeze-budget") or "30",
    ann(obj, "vmsnap.io/thaw-at") or "Cut")
  if at then
    local with = {}
    for _, kind in ipairs({ "virtualdisksnapshots." .. G, "virtualmachinesnapshots." .. G }) do
      local all = c:list_all(kind, { namespace = ns }) or {}
      for _, o in ipairs(all) do
        if o.metadata.uid ~= obj.metadata.uid and freeze_of(o, vs_of(o)) == at then
          with[#with + 1] = o.kind .. " " .. o.metadata.name
        end
      end
    end
    table.sort(with)
    lines[#lines + 1] = "Held with:    " .. (#with > 0 and table.concat(with, ", ") or "no other snapshot")
  end
  return lines
end

local function hook_lines(obj)
  local rec = json.decode(ann(obj, "vmsnap.io/hooks") or "null")
  if type(rec) ~= "table" or type(rec.runs) ~= "table" or #rec.runs == 0 then return nil end
  local rows = { { "POINT", "HOOK", "OUTCOME", "MS", "MESSAGE" } }
  for _, r in ipairs(rec.runs) do
    rows[#rows + 1] = { tostring(r.point or ""), tostring(r.hook or ""), tostring(r.outcome or ""), tostring(r.ms or ""),
      (tostring(r.message or ""):gsub("\n", " ")) }
  end
  return columns(rows, "  ")
end

local function steps_line(obj)
  local rec = json.decode(ann(obj, "vmsnap.io/steps") or "null")
  if type(rec) ~= "table" then return nil end
  local done = type(rec.done) == "table" and table.concat(rec.done, ", ") or ""
  local owed = type(rec.owed) == "table" and #rec.owed > 0 and table.concat(rec.owed, ", ") or "none"
  return ("Steps:        done: %s; undos owed: %s"):format(done ~= "" and done or "none", owed)
end

local function children_lines(c, obj)
  local rows = { { "KIND", "NAME", "PHASE", "DETAIL" } }
  local ns = obj.metadata.namespace
  if obj.kind == "VirtualMachineSnapshot" then
    for _, d in ipairs(c:list_all("virtualdisksnapshots." .. G, { namespace = ns }) or {}) do
      for _, ref in ipairs(d.metadata.ownerReferences or {}) do
        if ref.uid == obj.metadata.uid then
          local st = d.status or {}
          rows[#rows + 1] = { "VirtualDiskSnapshot", d.metadata.name, st.phase or "",
            st.consistent and "consistent" or "" }
        end
      end
    end
    local sname = obj.status and obj.status.virtualMachineSnapshotSecretName
    if sname and sname ~= "" then
      local s = c:get("secrets", sname, { namespace = ns })
      rows[#rows + 1] = { "Secret", sname, s and "" or "(missing)", "" }
    end
  elseif obj.kind == "VirtualDiskSnapshot" then
    local vsname = obj.status and obj.status.volumeSnapshotName
    if vsname and vsname ~= "" then
      local vs = c:get("volumesnapshots.snapshot.storage.k8s.io", vsname, { namespace = ns })
      local st = vs and vs.status or {}
      rows[#rows + 1] = { "VolumeSnapshot", vsname, vs and (st.readyToUse and "ReadyToUse" or "NotReady") or "(missing)",
        st.boundVolumeSnapshotContentName or "" }
    end
  end
  if #rows == 1 then return nil end
  return columns(rows, "  ")
end

local function event_lines(c, obj, now)
  local evs = c:list_all("events", { namespace = obj.metadata.namespace,
    field_selector = "involvedObject.name=" .. obj.metadata.name }) or {}
  local mine = {}
  for _, e in ipairs(evs) do
    local io_ = e.involvedObject or {}
    if (io_.uid == nil or io_.uid == obj.metadata.uid) and (io_.kind == nil or io_.kind == obj.kind) then mine[#mine + 1] = e end
  end
  local function when(e) return e.lastTimestamp or e.eventTime or e.metadata.creationTimestamp or "" end
  -- by time (whole seconds), then in the order the server stored them
  local function rv(e) return tonumber(e.metadata.resourceVersion or "") or 0 end
  table.sort(mine, function(a, b)
    if when(a) ~= when(b) then return when(a) < when(b) end
    return rv(a) < rv(b)
  end)
  if #mine == 0 then return "  <none>" end
  local rows = { { "TYPE", "REASON", "AGE", "FROM", "MESSAGE" } }
  for _, e in ipairs(mine) do
    local age = ago(when(e), now)
    if (e.count or 1) > 1 then age = ("%s (x%d)"):format(age, e.count) end
    rows[#rows + 1] = { e.type or "", e.reason or "", age, (e.source and e.source.component) or e.reportingComponent or "",
      ((e.message or ""):gsub("\n", " ")) }
  end
  return columns(rows, "  ")
end

--- The text `vmsnap describe` prints for obj (a client reads the rest).
function M.render(c, obj, now)
  now = now or vtime.now()
  local st = obj.status or {}
  local out = {}
  local function line(s) out[#out + 1] = s end
  line("Name:         " .. obj.metadata.name)
  if obj.metadata.namespace then line("Namespace:    " .. obj.metadata.namespace) end
  line(("Kind:         %s (%s)"):format(obj.kind, obj.apiVersion or ""))
  line(("Created:      %s (%s ago)"):format(obj.metadata.creationTimestamp or "", ago(obj.metadata.creationTimestamp, now)))
  if obj.metadata.deletionTimestamp then line("Deleting:     since " .. obj.metadata.deletionTimestamp) end
  local of = target_of(obj)
  if of then line("Of:           " .. of) end
  local phase = st.phase or ""
  if st.consistent ~= nil then phase = phase .. ", consistent: " .. tostring(st.consistent) end
  if phase ~= "" then line("Phase:        " .. phase) end
  if type(st.conditions) == "table" and #st.conditions > 0 then
    line("Conditions:")
    local rows = { { "TYPE", "STATUS", "REASON", "AGE", "MESSAGE" } }
    for _, cd in ipairs(st.conditions) do
      rows[#rows + 1] = { cd.type or "", cd.status or "", cd.reason or "", ago(cd.lastTransitionTime, now),
        ((cd.message or ""):gsub("\n", " ")) }
    end
    line(columns(rows, "  "))
  end
  local fl = freeze_lines(c, obj, now)
  if #fl > 0 then
    line("Freeze:")
    for _, l in ipairs(fl) do line("  " .. l) end
  end
  local sl = steps_line(obj)
  if sl then line(sl) end
  local hl = hook_lines(obj)
  if hl then
    line("Hooks:")
    line(hl)
  end
  local cl = children_lines(c, obj)
  if cl then
    line("Children:")
    line(cl)
  end
  line("Events:")
  line(event_lines(c, obj, now))
  return table.concat(out, "\n") .. "\n"
end

function M.main(args)
  local o, pos = kube.parse(args, SPEC)
  if o.help then io.stdout:write(M.help) return end
  if #pos ~= 2 then cli.usage("describe: give KIND and NAME (e.g. 'vmsnap describe vmsnapshot nightly')") end
  local c = kube.client(o)
  local r, err = c:resource(pos[1])
  if not r then cli.fail("error: " .. err) end
  local ns = r.namespaced and (o.namespace or c.namespace) or nil
  local obj, msg, reason, st = c:get(r, pos[2], { namespace = ns })
  if not obj then cli.fail(kube.error_text(msg, reason, st)) end
  obj.apiVersion = obj.apiVersion or r.api_version
  obj.kind = obj.kind or r.kind
  io.stdout:write(M.render(c, obj))
end

return M
