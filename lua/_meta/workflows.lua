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

---Write annotations of the object of this pass (merge patch; json.null removes one).
---@return true|nil, string?, string?
function Context:annotate(values) end
---@type table  kept across passes in the annotation vmsnap.io/steps (workflows on steps)
Context.memo = {}

---A step of a workflow (vmsnap.reconcile.steps).
---@class vmsnap.reconcile.Step
---@field name string
---@field run fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): any   true | steps.pause() | steps.wait() | nil, message, code
---@field undo? fun(ctx: vmsnap.reconcile.Context, obj: table, outcome: string, facts: table): true|nil, string?, string?
---@field when? fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): boolean
---@field hold? boolean   given back at once when a later step of the pass fails (the freeze)
---@field phase? string   the phase the object shows while this step waits (default InProgress)
---@field doc? string

---@class vmsnap.reconcile.StepList
---@field after fun(self: vmsnap.reconcile.StepList, name: string, step: vmsnap.reconcile.Step): vmsnap.reconcile.Step
---@field before fun(self: vmsnap.reconcile.StepList, name: string, step: vmsnap.reconcile.Step): vmsnap.reconcile.Step
---@field replace fun(self: vmsnap.reconcile.StepList, name: string, run: function|vmsnap.reconcile.Step): vmsnap.reconcile.Step
---@field wrap fun(self: vmsnap.reconcile.StepList, name: string, fn: fun(run: function, ctx: vmsnap.reconcile.Context, obj: table, facts: table): any): vmsnap.reconcile.Step
---@field remove fun(self: vmsnap.reconcile.StepList, name: string): vmsnap.reconcile.Step
---@field find fun(self: vmsnap.reconcile.StepList, name: string): vmsnap.reconcile.Step?
---@field index fun(self: vmsnap.reconcile.StepList, name: string): integer?
---@field describe fun(self: vmsnap.reconcile.StepList): string

---@class vmsnap.reconcile.steps
---@field ANNOTATION string
---@field list fun(items: vmsnap.reconcile.Step[]): vmsnap.reconcile.StepList
---@field wait fun(reason: string, message: string, after?: number): table
---@field pause fun(after?: number): table
---@field release fun(ctx: vmsnap.reconcile.Context, name: string, outcome?: string): true|nil, string?, string?
---@field forget fun(ctx: vmsnap.reconcile.Context, name: string)
---@field owed fun(ctx: vmsnap.reconcile.Context, name: string): boolean
---@field fail fun(ctx: vmsnap.reconcile.Context, message: string, code?: string): true
---@field run fun(W: vmsnap.workflow.Workflow, ctx: vmsnap.reconcile.Context, obj: table): any
---@field finalize fun(W: vmsnap.workflow.Workflow, ctx: vmsnap.reconcile.Context, obj: table): true|nil, string?, string?
---@field capitalize fun(s: any): string
---@field sentence fun(s: any): string

---A workflow module (workflows/NAME.lua): its order of operations is W.steps;
---an extension (workflows/NAME.d/*.lua) returns fun(W) and changes W.steps in place.
---@class vmsnap.workflow.Workflow
---@field kind string
---@field finalizer? string
---@field steps vmsnap.reconcile.StepList
---@field condition string               the main condition type
---@field failed_reason string           its reason on failure, unless W.reasons[code] says another
---@field reasons? table<string, string>
---@field events? {wait?: string|table<string, string>, failed?: string}
---@field message_style? "sentence"|"capitalize"
---@field observe? fun(ctx: vmsnap.reconcile.Context, obj: table): table?, string?, string?
---@field ready? fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): true|nil, string?, string?
---@field cleanup? fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): true|nil, string?, string?
---@field on_failed? fun(ctx: vmsnap.reconcile.Context, obj: table, message: string, code?: string)
---@field indexes? table<string, fun(obj: table): string[]>
---@field watches? fun(): {kind: string, map: fun(obj: table, ctl: table): string[]}[]

---A gate (preconditions/NAME.lua): true, or false, reason, message (wait), or nil, message, code (fail).
---@class vmsnap.workflow.Precondition
---@field applies_to string[]
---@field order? integer
---@field check fun(ctx: vmsnap.reconcile.Context, obj: table, facts: table): boolean?, string?, string?

---@class vmsnap.workflow
---@field path fun(): string[]
---@field add_path fun(dir: string)
---@field load fun(name: string): vmsnap.workflow.Workflow?, string?
---@field extensions fun(name: string): {name: string, path: string}[]
---@field preconditions fun(workflow_name: string): vmsnap.workflow.Precondition[]
---@field gates fun(name: string, ctx: vmsnap.reconcile.Context, obj: table, facts: table, default_reason: string): any

---A freeze as a snapshot holds it.
---@class vmsnap.freezes.Freeze
---@field at integer        the freeze's identity (ms since the epoch; the lease's `at`)
---@field deadline number   seconds since the epoch: a cut seen later proves nothing
---@field since number      when this snapshot began to rely on it
---@field foreign? boolean  frozen by something that left no vmsnap lease

---@class vmsnap.freezes
---@field FROZEN_AT string
---@field FREEZE_DURATION string
---@field THAW_AT string
---@field BUDGET string
---@field CUT string
---@field issued_by_parent fun(obj: table): boolean
---@field BY_PARENT string
---@field vm_frozen fun(vm: table?): boolean
---@field budget fun(obj: table): number
---@field thaw_at_ready fun(obj: table): boolean
---@field frozen_at fun(obj: table): integer?
---@field left fun(obj: table): boolean
---@field holders fun(ctx: vmsnap.reconcile.Context, vm: table, skip?: fun(obj: table): boolean): table[]
---@field can_unfreeze fun(ctx: vmsnap.reconcile.Context, obj: table, vm: table, skip?: fun(obj: table): boolean): boolean
---@field freeze_or_join fun(ctx: vmsnap.reconcile.Context, obj: table, vm: table): true|nil, string?, vmsnap.freezes.Freeze|string?
---@field current fun(ctx: vmsnap.reconcile.Context, vm: table?): table?
---@field still_held fun(obj: table, vm: table, freeze: vmsnap.freezes.Freeze?): boolean, string?
---@field held_now fun(ctx: vmsnap.reconcile.Context, obj: table, vm: table?, freeze: vmsnap.freezes.Freeze?): boolean, string?
---@field held_here fun(obj: table, vm: table?): boolean
---@field can_freeze fun(vm: table): boolean, string, boolean
---@field reached fun(obj: table, cut: boolean, ready: boolean, freeze: vmsnap.freezes.Freeze?): boolean, number?
---@field overrun fun(ctx: vmsnap.reconcile.Context, obj: table, step: string, what: string): string?, string?, string?
---@field leave fun(ctx: vmsnap.reconcile.Context, obj: table, vm: table?, opts?: {force?: boolean, skip?: fun(obj: table): boolean, freeze?: vmsnap.freezes.Freeze}): true|nil, number|false|string?, string?
---@field release_if_last fun(ctx: vmsnap.reconcile.Context, obj: table, vm: table?): true|nil, string?, string?

---@class vmsnap.snapshot_secret
---@field TYPE string
---@field stored fun(obj: table, api_version: string, kind: string): table
---@field encode fun(objs: {vm: table, vmip?: table, provisioner?: table, vmbdas?: table[]}): table<string, string>
---@field decode fun(secret: table): {vm: table, vmip?: table, provisioner?: table, vmbdas: table[]}?, string?, string?

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

---@class vmsnap.k8s.object
---@field condition fun(obj: table?, ctype: string): table?
---@field is_true fun(obj: table?, ctype: string): boolean
---@field is_true_current fun(obj: table, ctype: string): boolean
---@field annotation fun(obj: table, key: string): string?
---@field owner fun(obj: table, kind: string): string?
---@field owned_by fun(obj: table, owner: table): boolean
---@field owner_ref fun(obj: table, api_version: string, kind: string): table

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
