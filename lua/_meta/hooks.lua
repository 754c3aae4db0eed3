---@meta
-- LuaCATS types of the hook model (vmsnap.hooks, docs/hooks.md): what a hook
-- file returns and what its handlers get. Point an editor's Lua language
-- server at this directory (.luarc.json: "workspace.library") and annotate a
-- hook with `---@type vmsnap.hooks.Hook` and its handlers with
-- `---@param ctx vmsnap.hooks.Context`.

---@alias vmsnap.hooks.Point
---| "pre_snapshot"    # before a VM snapshot starts (partner: post_snapshot)
---| "pre_freeze"      # just before the guest is frozen (partner: post_thaw)
---| "post_freeze"     # just after the freeze (qemu-ga refuses guest-exec while frozen)
---| "post_thaw"       # after the thaw; also when pre_freeze ran but no freeze came
---| "post_snapshot"   # at the end of the snapshot, whatever the outcome (ctx.outcome)
---| "snapshot_failed" # when the snapshot failed
---| "pre_restore"     # before a restore creates its objects (partner: post_restore)
---| "post_restore"    # at the end of the restore, whatever the outcome
---| "restore_failed"  # when the restore failed

---@alias vmsnap.hooks.Handler fun(ctx: vmsnap.hooks.Context): (nil|true|any), string?

---A hook file returns this table (a file in hooks.d/POINT/ may return just the handler).
---@class vmsnap.hooks.Hook
---@field timeout? number|table<vmsnap.hooks.Point, number>     seconds per handler (default 30)
---@field on_error? "fail"|"continue"|table<vmsnap.hooks.Point, "fail"|"continue">  default: "fail" for pre_*, "continue" otherwise
---@field selector? string            label selector over the VM's labels (installed hooks; default: every VM)
---@field params? table               defaults for ctx.params
---@field pre_snapshot? vmsnap.hooks.Handler
---@field pre_freeze? vmsnap.hooks.Handler
---@field post_freeze? vmsnap.hooks.Handler
---@field post_thaw? vmsnap.hooks.Handler
---@field post_snapshot? vmsnap.hooks.Handler
---@field snapshot_failed? vmsnap.hooks.Handler
---@field pre_restore? vmsnap.hooks.Handler
---@field post_restore? vmsnap.hooks.Handler
---@field restore_failed? vmsnap.hooks.Handler

---What a handler gets. The objects are read-only copies.
---@class vmsnap.hooks.Context
---@field point vmsnap.hooks.Point
---@field vm table                    the VirtualMachine (for a restore: the VM being restored)
---@field snapshot? table             the VirtualMachineSnapshot (snapshot points)
---@field restore? table              the VirtualMachineRestore (restore points)
---@field outcome? "Ready"|"Failed"|"Deleted"  post_snapshot, post_restore, *_failed
---@field params table                the hook's params, with the VM annotation's on top
---@field guest vmsnap.hooks.Guest     the VM's guest agent
---@field k8s vmsnap.k8s.Client        the controller's Kubernetes client
---@field deadline number             wall-clock time (epoch seconds) the handler is stopped at
---@field log fun(...: any)           a line of output (kept in the record and the Event, and logged)

---@class vmsnap.hooks.ExecResult
---@field exitcode integer
---@field signal? integer
---@field stdout string
---@field stderr string

---@class vmsnap.hooks.Process
---@field pid integer                 the process id in the guest
local Process = {}
---@return {exited: boolean, exitcode?: integer, stdout: string, stderr: string}?, string?
function Process:status() end
---@param timeout? number
---@return {exited: boolean, exitcode?: integer, stdout: string, stderr: string}?, string?, string?
function Process:wait(timeout) end

---The guest, through its agent. Commands run with the hook's remaining time as
---their timeout; a hook stopped at its timeout has the processes it left killed.
---@class vmsnap.hooks.Guest
local Guest = {}
---Run argv in the guest and wait for it.
---@param argv string[]
---@param opts? {timeout?: number, input?: string, env?: table<string,string>}
---@return vmsnap.hooks.ExecResult?, string?, string?
function Guest:exec(argv, opts) end
---Start argv in the guest without waiting (e.g. a session that holds a lock until post_thaw).
---@param argv string[]
---@param opts? {input?: string, env?: table<string,string>}
---@return vmsnap.hooks.Process?, string?
function Guest:spawn(argv, opts) end
---@return true?, string?
function Guest:ping() end
---@return "frozen"|"thawed"|nil, string?
function Guest:fsfreeze_status() end
