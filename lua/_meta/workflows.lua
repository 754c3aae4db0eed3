---@meta
-- LuaCATS types of the library modules the workflows, preconditions and
-- workflow extensions use (their sources in lua/vmsnap/ carry the details).

---@class vmsnap.reconcile.Context
---@field client vmsnap.k8s.Client
---@field obj table                       the object being reconciled (a copy; its status is written after the pass)
---@field log table
local Context = {}
---An object of a kind (from the controller's cache when it watches the kind).
---@return table?
function Context:get(kind, namespace, name) end
---@return table[]
function Context:list(kind, namespace) end
---@return table?  the condition of that type on obj
function Context:get_condition(ctype) end
---Set a condition; lastTransitionTime moves only when the status changes.
function Context:condition(ctype, status, reason, message) end
function Context:remove_condition(ctype) end
---Record an Event ("Normal" or "Warning") on obj (or on `about`).
function Context:event(etype, reason, message, about) end
function Context:requeue_after(seconds) end

---A workflow module (workflows/NAME.lua): its steps are functions of this
---table; an extension (workflows/NAME.d/*.lua) returns fun(W) and replaces
---or wraps them in place.
---@class vmsnap.workflow.Workflow
---@field kind string
---@field finalizer? string
---@field fresh? boolean                  read the object from the API at each pass
---@field reconcile fun(ctx: vmsnap.reconcile.Context, obj: table): (true|{requeue_after: number}|nil), string?
---@field finalize? fun(ctx: vmsnap.reconcile.Context, obj: table): true?, string?
---@field watches? fun(): {kind: string, map: fun(obj: table, ctl: table): string[]}[]

---@class vmsnap.workflow.Precondition
---@field applies_to string[]
---@field order? integer
---@field check fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): boolean, string?, string?

---@class vmsnap.workflow
---@field path fun(): string[]
---@field add_path fun(dir: string)
---@field load fun(name: string): vmsnap.workflow.Workflow?, string?
---@field extensions fun(name: string): {name: string, path: string}[]
---@field preconditions fun(workflow_name: string): vmsnap.workflow.Precondition[]

---@class vmsnap.freezes
---@field FROZEN_AT string
---@field FREEZE_DURATION string
---@field THAW_AT string
---@field BUDGET string
---@field vm_frozen fun(vm: table?): boolean
---@field budget fun(obj: table): number
---@field thaw_at_ready fun(obj: table): boolean
---@field frozen_at fun(obj: table): integer?
---@field holders fun(client: vmsnap.k8s.Client, vm: table, skip?: fun(obj: table): boolean): table[]
---@field can_unfreeze fun(client: vmsnap.k8s.Client, obj: table, vm: table, skip?: fun(obj: table): boolean): boolean
---@field freeze_or_join fun(client: vmsnap.k8s.Client, obj: table, vm: table): true|nil, string?, string?
---@field leave fun(client: vmsnap.k8s.Client, obj: table, vm: table?, force?: boolean, skip?: fun(obj: table): boolean): true|nil, string?
---@field release_if_last fun(client: vmsnap.k8s.Client, obj: table, vm: table?): true|nil, string?

---@class vmsnap.csi
---@field resolve_class fun(client: vmsnap.k8s.Client, storage_class: string?): string?, string?, string?
---@field create_snapshot fun(client: vmsnap.k8s.Client, o: {namespace: string, name: string, pvc: string, class?: string, owner?: table, annotations?: table, labels?: table, finalizers?: string[]}): table?, string?, string?
---@field state fun(vs: table?): {cut: boolean, ready: boolean, restore_size?: integer, error?: string, creation_time?: string}
---@field wait fun(client: vmsnap.k8s.Client, namespace: string, name: string, what: "cut"|"ready", timeout?: number): table?, string?, string?
---@field pvc_from_snapshot fun(o: table): table
---@field delete_snapshot fun(client: vmsnap.k8s.Client, namespace: string, name: string, finalizer?: string): true?, string?, string?

---@class vmsnap.hooks
---@field POINTS vmsnap.hooks.Point[]
---@field PARTNER table<string, string>
---@field ANNOTATION string
---@field discover fun(): {installed: table[], named: table<string, table>}
---@field load fun(entry: {name: string, file: string, point?: string, allow_os?: boolean}): vmsnap.hooks.Hook?, string?
---@field for_vm fun(vm: table, found?: table): table[]?, string?
---@field run_one fun(h: table, point: vmsnap.hooks.Point, base: table): table
---@field runner fun(o: {client: vmsnap.k8s.Client, ctx?: vmsnap.reconcile.Context, vm?: table, object: table, kind?: "snapshot"|"restore", hooks?: table[]}): table

---@class vmsnap.objects
---@field condition fun(obj: table?, ctype: string): table?
---@field is_true fun(obj: table?, ctype: string): boolean
---@field is_true_current fun(obj: table, ctype: string): boolean
---@field annotation fun(obj: table, key: string): string?
---@field owner fun(obj: table, kind: string): string?
---@field capitalize fun(s: any): string
---@field sentence fun(s: any): string
---@field permanent fun(message: string, reason?: string): table
---@field is_permanent fun(e: any): boolean

---@class vmsnap.deep
---@field copy fun(v: any): any
---@field equal fun(a: any, b: any): boolean

---@class vmsnap.time
---@field parse fun(s: string?): number?   RFC 3339 → epoch seconds
---@field format fun(t?: number): string   epoch seconds → RFC 3339 (UTC)
---@field now fun(): number               wall clock, sub-second

---@class vmsnap.base64
---@field encode fun(s: string): string
---@field decode fun(s: string): string?

---@class vmsnap.quantity
---@field parse fun(q: string|number): integer?, string?
---@field format fun(bytes: integer): string
