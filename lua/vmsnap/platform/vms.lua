--- vmsnap.platform.vms: the local platform's VirtualMachines (spec a.5):
--- phases Stopped/Starting/Running/Stopping driven by spec.runPolicy and
--- `vmsnap vm start|stop` (annotation vmsnap.io/power), status.blockDeviceRefs,
--- and BlockDevicesReady, AgentReady and FilesystemFrozen.
---
--- A running VM gets a guest agent: the platform loop-mounts the VM's root
--- disk image (formatting a blank one as ext4 first, as an installer would)
--- under DATA/vms/NS-NAME/root and starts a real qemu-ga on a unix socket
--- there, with the global freeze blocked (-b guest-fsfreeze-freeze); the VM is
--- annotated with the socket (vmsnap.io/agent) and the mountpoint
--- (vmsnap.io/freeze-mountpoints), which the freeze subresources use. When
--- loop mounts are not possible here (or the VM is annotated
--- vmsnap.io/no-agent: "true"), the VM runs without an agent.
local json = require("vmsnap.json")
local fs = require("vmsnap.fs")
local proc = require("vmsnap.proc")
local task = require("vmsnap.task")
local log = require("vmsnap.log")
local qga = require("vmsnap.qga")
local rtcore = require("vmsnap.core.runtime")
local reconcile = require("vmsnap.reconcile")
local volumes = require("vmsnap.platform.volumes")
local attachments = require("vmsnap.platform.attachments")
local vtime = require("vmsnap.time")

local M = {}

M.POWER = "vmsnap.io/power"
M.MIGRATE_UNTIL = "vmsnap.io/migrate-until" -- RFC 3339: phase Migrating until then
M.PAUSED = "vmsnap.io/paused"                -- "true": phase Pause
M.MAX_FREEZE = 300 -- seconds: the longest freeze a launcher lets through without an unfreeze timeout
local VD = "virtualdisks.virtualization.deckhouse.io"
local VMBDA = "virtualmachineblockdeviceattachments.virtualization.deckhouse.io"
local VMS = "virtualmachinesnapshots.virtualization.deckhouse.io"
local vlog = log.new("platform.vms")

local function run(argv, timeout)
  return proc.run(argv, { timeout = timeout or 60 })
end

local function dir_of(P, vm)
  return ("%s/vms/%s-%s"):format(P.data, vm.metadata.namespace, vm.metadata.name)
end

local function wants_running(vm)
  local policy = vm.spec.runPolicy or "AlwaysOnUnlessStoppedManually"
  local power = (vm.metadata.annotations or {})[M.POWER]
  if policy == "AlwaysOn" then return true end
  if policy == "AlwaysOff" then return false end
  if policy == "Manual" then return power == "on" end
  return power ~= "off"
end

local function pid_alive(pid)
  return pid and fs.exists("/proc/" .. pid .. "/stat")
end

--- vmsnap-launcher (runtime/src/launcher/launcher.c), or nil when it is not
--- there: the VM's agent then runs bare, and only the API server's timer
--- bounds a freeze.
function M.launcher()
  if M.launcher_path == nil then
    M.launcher_path = false
    for _, p in ipairs(rtcore.launcher_paths()) do
      if fs.exists(p) then M.launcher_path = p break end
    end
    if not M.launcher_path then vlog:warn("vmsnap-launcher not found: VM agents run without it") end
  end
  return M.launcher_path or nil
end

-- stop a VM's agent and unmount its root image (thawing first: never leave it frozen)
function M.teardown(P, dir)
  local mnt = dir .. "/root"
  for _, s in ipairs({ "launcher.sock", "qga.sock" }) do
    if fs.exists(dir .. "/" .. s) then
      local a = qga.connect("unix:" .. dir .. "/" .. s, { timeout = 2 })
      if a then a:fsfreeze_thaw() a:close() break end
    end
  end
  run({ "fsfreeze", "-u", mnt }, 5)
  local pidtext = fs.read_file(dir .. "/qga.pid")
  local pid = pidtext and tonumber(pidtext:match("%d+"))
  local comm = pid and fs.read_file("/proc/" .. pid .. "/comm")
  if pid and comm and comm:match("qemu%-ga") then
    run({ "kill", "-9", tostring(pid) }, 5)
  end
  if P.agents[dir] then
    -- the launcher thaws what is frozen and stops the agent; KILL if it hangs
    P.agents[dir]:kill("TERM")
    if not P.agents[dir]:wait(8) then
      P.agents[dir]:kill("KILL")
      P.agents[dir]:wait(5)
    end
    P.agents[dir]:close()
    P.agents[dir] = nil
  end
  fs.remove(dir .. "/qga.sock")
  fs.remove(dir .. "/launcher.sock")
  fs.remove(dir .. "/qga.pid")
  local m = run({ "findmnt", "-n", "-o", "TARGET", mnt }, 5)
  if m and m.status == 0 then
    local u = run({ "umount", mnt }, 30)
    if not u or u.status ~= 0 then run({ "umount", "-l", mnt }, 10) end
  end
end

local setpriv_ok
local function has_setpriv()
  if setpriv_ok == nil then
    local r = run({ "setpriv", "--help" }, 5)
    setpriv_ok = r ~= nil and r.status == 0 and (r.stdout or ""):find("--pdeathsig", 1, true) ~= nil
  end
  return setpriv_ok
end

-- mount the root image and start the agent; returns the agent target or nil, why
function M.start_agent(P, vm, image)
  local dir = dir_of(P, vm)
  local mnt = dir .. "/root"
  assert(fs.mkdir_p(mnt))
  local m = run({ "findmnt", "-n", "-o", "SOURCE", mnt }, 5)
  if not (m and m.status == 0) then
    local probe = run({ "blkid", "-p", image }, 10)
    if not probe or probe.status ~= 0 then
      local mk = run({ "mkfs.ext4", "-q", "-F", image }, 120)
      if not mk or mk.status ~= 0 then return nil, "cannot format the root disk: " .. tostring(mk and mk.stderr) end
    end
    local mo = run({ "mount", "-o", "loop", image, mnt }, 30)
    if not mo or mo.status ~= 0 then return nil, "loop mounts are not possible here: " .. tostring(mo and mo.stderr) end
  end
  if not P.agents[dir] or not P.agents[dir]:running() then
    fs.remove(dir .. "/qga.sock")
    -- an agent killed while frozen leaves this mark, and its successor would
    -- start "in frozen state" (refusing freezes) although the image was
    -- thawed at the teardown: the VM booted afresh
    fs.remove(dir .. "/qga.state.isfrozen")
    -- The agent sits behind vmsnap-launcher, as a real guest's agent sits
    -- behind the platform's launcher: the launcher is the agent's only
    -- client, enforces each freeze's unfreeze timeout on its own, and thaws
    -- when this process dies (a parent-death signal it catches) or stops
    -- it. The agent dies with the launcher. Without the launcher: the bare
    -- agent, under setpriv --pdeathsig KILL (qemu-ga ignores SIGTERM while
    -- frozen). The global freeze is always blocked.
    local agent = { "qemu-ga", "-m", "unix-listen", "-p", dir .. "/qga.sock", "-t", dir,
      "-f", dir .. "/qga.pid", "-b", "guest-fsfreeze-freeze" }
    local launcher = M.launcher()
    local argv, sock
    if launcher then
      argv = { launcher, "serve", "--socket", dir .. "/launcher.sock", "--agent-socket", dir .. "/qga.sock",
        "--max-freeze", tostring(M.MAX_FREEZE), "--" }
      for _, a in ipairs(agent) do argv[#argv + 1] = a end
      sock = dir .. "/launcher.sock"
    else
      argv = has_setpriv() and { "setpriv", "--pdeathsig", "KILL", table.unpack(agent) } or agent
      sock = dir .. "/qga.sock"
    end
    fs.remove(sock)
    local p, err = proc.spawn(argv, { stdout = "null", stderr = "inherit" })
    if not p then return nil, "cannot start the guest agent: " .. tostring(err) end
    P.agents[dir] = p
    P.sockets[dir] = sock
    for _ = 1, 300 do
      if fs.exists(sock) then break end
      task.sleep(0.01)
    end
  end
  return "unix:" .. P.sockets[dir], mnt
end

local function set_cond(ctx, t, status, reason, msg)
  if status == nil then return ctx:remove_condition(t) end
  ctx:condition(t, status, reason, msg or "")
end

local function annotate(ctx, vm, values)
  local ann = vm.metadata.annotations or {}
  local change = false
  for k, v in pairs(values) do
    if (ann[k] or json.null) ~= v then change = true end
  end
  if not change then return end
  local res = ctx.client:patch("vm", vm.metadata.name, { metadata = { annotations = values } },
    { namespace = vm.metadata.namespace })
  if res then
    vm.metadata.annotations = res.metadata.annotations
    vm.metadata.resourceVersion = res.metadata.resourceVersion
  end
end

local function reconcile_vm(P, ctx, vm)
  vm.status = vm.status or {}
  local st = vm.status
  local ns = vm.metadata.namespace
  -- block devices: the spec's disks and the attached VMBDAs; `attached`
  -- only while the VM runs (plugged() below, once the phase is known), as
  -- on the real platform, where it is the running instance's volume status
  local refs, usable, all_ready, root = json.array(), {}, true, nil
  for _, r in ipairs(vm.spec.blockDeviceRefs or {}) do
    local vd = r.kind == "VirtualDisk" and ctx:get(VD, ns, r.name) or nil
    local ready = vd and attachments.disk_usable(vd.status and vd.status.phase) or false
    if r.kind == "VirtualDisk" then
      all_ready = all_ready and ready
      root = root or vd
    end
    refs[#refs + 1] = { kind = r.kind, name = r.name, size = vd and vd.status and vd.status.capacity or "",
      attached = false, hotplugged = false }
    usable[#refs] = ready
  end
  for _, b in ipairs(ctx:list(VMBDA, ns)) do
    if b.spec.virtualMachineName == vm.metadata.name and b.spec.blockDeviceRef and not b.metadata.deletionTimestamp then
      local vd = b.spec.blockDeviceRef.kind == "VirtualDisk" and ctx:get(VD, ns, b.spec.blockDeviceRef.name)
      refs[#refs + 1] = { kind = b.spec.blockDeviceRef.kind, name = b.spec.blockDeviceRef.name,
        size = vd and vd.status and vd.status.capacity or "", attached = false,
        hotplugged = true, virtualMachineBlockDeviceAttachmentName = b.metadata.name }
      usable[#refs] = vd and attachments.disk_usable(vd.status and vd.status.phase) or false
    end
  end
  st.blockDeviceRefs = refs
  local function plugged(runs)
    for i, r in ipairs(refs) do r.attached = runs and usable[i] or false end
  end
  -- a.5: Snapshotting while a VM snapshot of it is Pending or InProgress
  local snapping
  for _, s in ipairs(ctx:list(VMS, ns)) do
    local ph = s.status and s.status.phase or ""
    if s.spec.virtualMachineName == vm.metadata.name and not s.metadata.deletionTimestamp then
      if ph == "InProgress" then snapping = "SnapshottingInProgress"
      elseif ph == "Pending" and not snapping then snapping = "WaitingForTheSnapshotToStart" end
    end
  end
  if snapping then
    set_cond(ctx, "Snapshotting", "True", snapping, "")
  else
    set_cond(ctx, "Snapshotting", nil)
  end
  set_cond(ctx, "BlockDevicesReady", all_ready and "True" or "False", all_ready and "BlockDevicesReady" or "BlockDevicesNotReady",
    all_ready and "" or "Waiting for the block devices to be ready.")
  -- its IP address (a stopped VM keeps one too): the named one, or one made for it (a.6)
  local ipname = vm.spec.virtualMachineIPAddressName or st.virtualMachineIPAddressName
  if not ipname then
    -- one made on an earlier pass (the cache may not show our status yet)
    for _, ip in ipairs(ctx:list("VirtualMachineIPAddress", ns)) do
      if (ip.metadata.labels or {})["virtualization.deckhouse.io/virtual-machine-uid"] == vm.metadata.uid then
        ipname = ip.metadata.name
      end
    end
  end
  if not ipname and not vm.metadata.deletionTimestamp then
    local made = ctx.client:create({ apiVersion = "virtualization.deckhouse.io/v1alpha2", kind = "VirtualMachineIPAddress",
      metadata = { generateName = vm.metadata.name .. "-", namespace = ns,
        labels = { ["virtualization.deckhouse.io/virtual-machine-uid"] = vm.metadata.uid },
        ownerReferences = json.array({ { apiVersion = vm.apiVersion, kind = vm.kind, name = vm.metadata.name,
          uid = vm.metadata.uid, controller = true, blockOwnerDeletion = true } }) },
      spec = { type = "Auto" } })
    if made then ipname = made.metadata.name end
  end
  st.virtualMachineIPAddressName = ipname
  local vmip = ipname and ctx:get("VirtualMachineIPAddress", ns, ipname)
  st.ipAddress = vmip and vmip.status and vmip.status.address or nil
  local dir = dir_of(P, vm)
  -- running as far as the last pass knew (Migrating and Pause are running too)
  local up = st.phase == "Running" or st.phase == "Migrating" or st.phase == "Pause"
  if vm.metadata.deletionTimestamp or not wants_running(vm) then
    if up or st.phase == "Starting" or st.phase == "Stopping" then
      st.phase = "Stopping"
      M.teardown(P, dir)
    end
    st.phase = "Stopped"
    plugged(false)
    set_cond(ctx, "AgentReady", nil)
    set_cond(ctx, "FilesystemFrozen", nil)
    annotate(ctx, vm, { ["vmsnap.io/agent"] = json.null, ["vmsnap.io/freeze-mountpoints"] = json.null })
    return true
  end
  if not all_ready then
    st.phase = "Pending"
    plugged(false)
    return { requeue_after = 1 }
  end
  if not up then st.phase = "Starting" end
  -- the agent, on the root disk's image
  local target, mnt
  local pvc = root and root.status and root.status.target and
    ctx:get("persistentvolumeclaims", ns, root.status.target.persistentVolumeClaimName)
  local pv = pvc and pvc.spec.volumeName and ctx:get("persistentvolumes", nil, pvc.spec.volumeName)
  local image = volumes.volume_file(pv)
  if image and P.agents_enabled and (vm.metadata.annotations or {})["vmsnap.io/no-agent"] ~= "true" then
    local why
    target, mnt = M.start_agent(P, vm, image)
    if not target then
      why = mnt
      vlog:warn("the VM runs without a guest agent", { vm = ns .. "/" .. vm.metadata.name, why = why })
      P.agents_enabled = not tostring(why):find("loop mounts", 1, true)
    end
  end
  if not up or not (st.stats and st.stats.lastStartTime) then
    -- the platform's status.stats.lastStartTime: kubectl's UPTIME column
    st.stats = st.stats or {}
    st.stats.lastStartTime = vtime.format()
  end
  st.phase = "Running"
  -- `vmsnap vm migrate` and `vm pause`: the phases a real VM passes through
  -- (the snapshot rules for them can then be tried here)
  local marks = vm.metadata.annotations or {}
  local migrate_until = vtime.parse(marks[M.MIGRATE_UNTIL])
  if migrate_until and migrate_until > os.time() then
    st.phase = "Migrating"
  elseif marks[M.PAUSED] == "true" then
    st.phase = "Pause"
  end
  st.nodeName = "local"
  plugged(true)
  if target then
    annotate(ctx, vm, { ["vmsnap.io/agent"] = target, ["vmsnap.io/freeze-mountpoints"] = json.encode({ mnt }) })
    local a = qga.connect(target, { timeout = 2 })
    local frozen
    if a then
      frozen = a:fsfreeze_status()
      a:close()
    end
    if a and frozen then
      set_cond(ctx, "AgentReady", "True", "AgentReady", "")
      if frozen == "frozen" then
        set_cond(ctx, "FilesystemFrozen", "True", "Frozen", "")
      else
        set_cond(ctx, "FilesystemFrozen", nil)
      end
    else
      set_cond(ctx, "AgentReady", "False", "AgentNotReady", "The guest agent does not answer.")
      set_cond(ctx, "FilesystemFrozen", nil)
    end
  else
    set_cond(ctx, "AgentReady", "False", "AgentNotReady", "The VM has no guest agent.")
    set_cond(ctx, "FilesystemFrozen", nil)
  end
  -- the agent's freeze state can change without an API write: look again soon
  return { requeue_after = 1 }
end

--- After a start: the VMs' agents were torn down (thawed) with whatever
--- froze them, so no freeze lease of before is true any more. Removing the
--- leases tells the snapshots that held them (their cut is no longer under
--- a freeze) before any controller acts on them.
function M.forget_freezes(client)
  local list = client:list_all("virtualmachines.virtualization.deckhouse.io", { all_namespaces = true }) or {}
  for _, vm in ipairs(list) do
    if (vm.metadata.annotations or {})["vmsnap.io/frozen-by"] then
      client:patch("virtualmachines.virtualization.deckhouse.io", vm.metadata.name,
        { metadata = { annotations = { ["vmsnap.io/frozen-by"] = json.null } } }, { namespace = vm.metadata.namespace })
      vlog:info("a freeze lease of before the start is gone with the agent", { vm = vm.metadata.namespace .. "/" .. vm.metadata.name })
    end
  end
end

--- The VM controller (not started). opts.agents = false runs VMs without agents.
function M.controller(client, data, opts)
  opts = opts or {}
  local P = { data = data, agents = {}, sockets = {}, agents_enabled = opts.agents ~= false }
  assert(fs.mkdir_p(data .. "/vms"))
  -- agents and mounts left by an earlier run (a crash): thaw, stop, unmount
  for _, d in ipairs(fs.list(data .. "/vms") or {}) do M.teardown(P, data .. "/vms/" .. d) end
  local ctl = reconcile.controller({ client = client, name = "local-vms", kind = "VirtualMachine",
    finalizer = "local.vmsnap.io/vm",
    watches = {
      { kind = VD, map = function(vd, c)
        local keys = {}
        for _, vm in ipairs(c.primary and c.primary:list(vd.metadata.namespace) or {}) do
          for _, r in ipairs(vm.spec.blockDeviceRefs or {}) do
            if r.kind == "VirtualDisk" and r.name == vd.metadata.name then keys[#keys + 1] = reconcile.key_of(vm) end
          end
        end
        return keys
      end },
      { kind = VMBDA, map = function(b) return { b.metadata.namespace .. "/" .. b.spec.virtualMachineName } end },
      { kind = VMS, map = function(s) return { s.metadata.namespace .. "/" .. s.spec.virtualMachineName } end },
      { kind = "VirtualMachineIPAddress", map = function(ip)
        return ip.status and ip.status.virtualMachineName and { ip.metadata.namespace .. "/" .. ip.status.virtualMachineName } or {}
      end },
      { kind = "persistentvolumeclaims", map = function() return {} end },
      { kind = "persistentvolumes", map = function() return {} end },
    },
    reconcile = function(ctx, vm) return reconcile_vm(P, ctx, vm) end,
    finalize = function(ctx, vm)
      M.teardown(P, dir_of(P, vm))
      return true
    end })
  ctl.platform_state = P
  --- stop every agent and unmount (platform shutdown)
  function ctl:teardown_all()
    for _, d in ipairs(fs.list(data .. "/vms") or {}) do M.teardown(P, data .. "/vms/" .. d) end
  end
  return ctl
end

return M
