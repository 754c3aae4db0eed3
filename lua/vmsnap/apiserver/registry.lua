--- vmsnap.apiserver.registry: the resources the server serves — built-in
--- kinds and the kinds of stored CustomResourceDefinitions — and the
--- discovery and OpenAPI documents built from them.
local json = require("vmsnap.json")
local tbl = require("vmsnap.apiserver.table")

local M = {}
local null = json.null
local VERBS = { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" }

local function age() return { name = "Age", type = "date", jsonPath = ".metadata.creationTimestamp" } end
local function name_col() return { name = "Name", type = "string", format = "name", jsonPath = ".metadata.name",
  description = "Name must be unique within a namespace." } end

local function count_keys(t)
  local n = 0
  if type(t) == "table" then for _ in pairs(t) do n = n + 1 end end
  return n
end

local ACCESS = { ReadWriteOnce = "RWO", ReadOnlyMany = "ROX", ReadWriteMany = "RWX", ReadWriteOncePod = "RWOP" }
local function access_modes(list)
  if type(list) ~= "table" then return "" end
  local out = {}
  for i, m in ipairs(list) do out[i] = ACCESS[m] or m end
  return table.concat(out, ",")
end

local function ago(ts, now)
  local t = tbl.parse_time(ts)
  if not t then return "<unknown>" end
  return tbl.human_duration(now - t)
end

-- Built-in kinds: core v1, storage.k8s.io, coordination.k8s.io, apiextensions.k8s.io.
-- structural schemas of the built-in kinds' top-level fields (nested
-- objects kept as they are): unknown top-level fields are refused or pruned as
-- for custom resources, and `kubectl explain` has something to say
local function strmap(desc, format)
  return { type = "object", description = desc, additionalProperties = { type = "string", format = format } }
end
local function open(desc) return { type = "object", description = desc, ["x-kubernetes-preserve-unknown-fields"] = true } end
local function top(props) return { type = "object", properties = props } end
local SPEC_STATUS = top({ spec = open("The desired state (stored as given; nothing acts on it here)."),
  status = open("The observed state.") })

local function strings(desc) return { type = "array", description = desc, items = { type = "string" } } end
local RBAC_ROLE = top({
  rules = { type = "array", description = "The PolicyRules of this role.", items = { type = "object",
    required = { "verbs" },
    properties = { verbs = strings("Verbs (get, list, ...; * for all)."), apiGroups = strings("API groups (\"\" the core group)."),
      resources = strings("Resources (res, res/sub, */sub, *)."), resourceNames = strings("Names the rule is limited to."),
      nonResourceURLs = strings("Paths that are not resources (/metrics; a trailing * matches a prefix).") } } },
  aggregationRule = open("Not evaluated by vmsnap serve.") })
local RBAC_BINDING = top({
  subjects = { type = "array", description = "Who the role is bound to.", items = { type = "object", required = { "kind", "name" },
    properties = { kind = { type = "string", enum = { "User", "Group", "ServiceAccount" } }, name = { type = "string" },
      namespace = { type = "string" }, apiGroup = { type = "string" } } } },
  roleRef = { type = "object", description = "The role bound (it cannot be changed).", required = { "apiGroup", "kind", "name" },
    properties = { apiGroup = { type = "string", enum = { "rbac.authorization.k8s.io" } },
      kind = { type = "string", enum = { "Role", "ClusterRole" } }, name = { type = "string", minLength = 1 } } } })
RBAC_BINDING.required = { "roleRef" }
local BINDING_COLUMNS = { name_col(), { name = "Role", type = "string", cell = function(o)
  return type(o.roleRef) == "table" and (tostring(o.roleRef.kind) .. "/" .. tostring(o.roleRef.name)) or "" end }, age() }

local BUILTINS = {
  { group = "", version = "v1", kind = "Namespace", plural = "namespaces", singular = "namespace",
    namespaced = false, short = { "ns" }, status = true, fields = { ["status.phase"] = true },
    schema = top({ spec = open("Spec defines the behavior of the Namespace (its finalizers)."),
      status = open("Status describes the current status of a Namespace (its phase).") }),
    columns = { name_col(), { name = "Status", type = "string", jsonPath = ".status.phase" }, age() } },
  { group = "", version = "v1", kind = "Secret", plural = "secrets", singular = "secret",
    namespaced = true, fields = { type = true },
    schema = top({ data = strmap("Data contains the secret data, each value base64-encoded.", "byte"),
      stringData = strmap("stringData allows specifying non-binary secret data in string form; it is merged into data on write."),
      type = { type = "string", description = "Used to facilitate programmatic handling of secret data." },
      immutable = { type = "boolean", description = "If set to true, the data cannot be updated." } }),
    columns = { name_col(), { name = "Type", type = "string", jsonPath = ".type" },
      { name = "Data", type = "integer", cell = function(o) return count_keys(o.data) end }, age() } },
  { group = "", version = "v1", kind = "ConfigMap", plural = "configmaps", singular = "configmap",
    namespaced = true, short = { "cm" },
    schema = top({ data = strmap("Data contains the configuration data: UTF-8 strings by key."),
      binaryData = strmap("BinaryData contains the binary data, each value base64-encoded.", "byte"),
      immutable = { type = "boolean", description = "If set to true, the data cannot be updated." } }),
    columns = { name_col(), { name = "Data", type = "integer",
      cell = function(o) return count_keys(o.data) + count_keys(o.binaryData) end }, age() } },
  { group = "", version = "v1", kind = "PersistentVolumeClaim", plural = "persistentvolumeclaims",
    singular = "persistentvolumeclaim", namespaced = true, short = { "pvc" }, status = true, schema = SPEC_STATUS,
    fields = { ["status.phase"] = true, ["spec.volumeName"] = true },
    columns = { name_col(), { name = "Status", type = "string", jsonPath = ".status.phase" },
      { name = "Volume", type = "string", jsonPath = ".spec.volumeName" },
      { name = "Capacity", type = "string", jsonPath = ".status.capacity.storage" },
      { name = "Access Modes", type = "string", cell = function(o) return access_modes(o.status and o.status.accessModes) end },
      { name = "StorageClass", type = "string", jsonPath = ".spec.storageClassName" },
      { name = "VolumeAttributesClass", type = "string", cell = function(o)
        return (o.spec and o.spec.volumeAttributesClassName) or "<unset>" end },
      age(), { name = "VolumeMode", type = "string", jsonPath = ".spec.volumeMode", priority = 1 } } },
  { group = "", version = "v1", kind = "PersistentVolume", plural = "persistentvolumes",
    singular = "persistentvolume", namespaced = false, short = { "pv" }, status = true, schema = SPEC_STATUS,
    fields = { ["status.phase"] = true },
    columns = { name_col(), { name = "Capacity", type = "string", jsonPath = ".spec.capacity.storage" },
      { name = "Access Modes", type = "string", cell = function(o) return access_modes(o.spec and o.spec.accessModes) end },
      { name = "Reclaim Policy", type = "string", jsonPath = ".spec.persistentVolumeReclaimPolicy" },
      { name = "Status", type = "string", jsonPath = ".status.phase" },
      { name = "Claim", type = "string", cell = function(o)
        local c = o.spec and o.spec.claimRef
        if type(c) ~= "table" then return "" end
        return (c.namespace or "") .. "/" .. (c.name or "") end },
      { name = "StorageClass", type = "string", jsonPath = ".spec.storageClassName" },
      { name = "VolumeAttributesClass", type = "string", cell = function(o)
        return (o.spec and o.spec.volumeAttributesClassName) or "<unset>" end },
      { name = "Reason", type = "string", jsonPath = ".status.reason" }, age() } },
  { group = "", version = "v1", kind = "Event", plural = "events", singular = "event",
    namespaced = true, short = { "ev" },
    fields = { ["involvedObject.kind"] = true, ["involvedObject.namespace"] = true,
      ["involvedObject.name"] = true, ["involvedObject.uid"] = true, ["involvedObject.apiVersion"] = true,
      ["involvedObject.resourceVersion"] = true, ["involvedObject.fieldPath"] = true,
      reason = true, reportingComponent = true, source = true, type = true },
    columns = {
      { name = "Last Seen", type = "string", cell = function(o, now)
        return ago(o.lastTimestamp or o.eventTime or o.metadata.creationTimestamp, now) end },
      { name = "Type", type = "string", jsonPath = ".type" },
      { name = "Reason", type = "string", jsonPath = ".reason" },
      { name = "Object", type = "string", cell = function(o)
        local io = o.involvedObject or {}
        return (io.kind or ""):lower() .. "/" .. (io.name or "") end },
      { name = "Subobject", type = "string", jsonPath = ".involvedObject.fieldPath", priority = 1 },
      { name = "Source", type = "string", cell = function(o)
        local s = o.source or {}
        return s.component or o.reportingComponent or "" end, priority = 1 },
      { name = "Message", type = "string", jsonPath = ".message" },
      { name = "First Seen", type = "string", cell = function(o, now)
        return ago(o.firstTimestamp or o.eventTime or o.metadata.creationTimestamp, now) end, priority = 1 },
      { name = "Count", type = "integer", cell = function(o) return o.count or 1 end, priority = 1 },
      { name = "Name", type = "string", format = "name", jsonPath = ".metadata.name", priority = 1 } } },
  { group = "storage.k8s.io", version = "v1", kind = "StorageClass", plural = "storageclasses",
    singular = "storageclass", namespaced = false, short = { "sc" },
    schema = top({ provisioner = { type = "string", description = "The volume plugin that provisions volumes of this class." },
      parameters = strmap("Parameters for the provisioner."),
      reclaimPolicy = { type = "string", description = "Delete or Retain: what happens to a released volume." },
      mountOptions = { type = "array", items = { type = "string" }, description = "Mount options of the volumes." },
      allowVolumeExpansion = { type = "boolean", description = "Whether volumes of this class can be expanded." },
      volumeBindingMode = { type = "string", description = "Immediate or WaitForFirstConsumer." },
      allowedTopologies = { type = "array", items = open("A topology selector term."), description = "Where volumes can be provisioned." } }),
    columns = { { name = "Name", type = "string", format = "name", cell = function(o)
        local a = o.metadata.annotations or {}
        if a["storageclass.kubernetes.io/is-default-class"] == "true" then return o.metadata.name .. " (default)" end
        return o.metadata.name end },
      { name = "Provisioner", type = "string", jsonPath = ".provisioner" },
      { name = "ReclaimPolicy", type = "string", cell = function(o) return o.reclaimPolicy or "Delete" end },
      { name = "VolumeBindingMode", type = "string", cell = function(o) return o.volumeBindingMode or "Immediate" end },
      { name = "AllowVolumeExpansion", type = "boolean", cell = function(o) return o.allowVolumeExpansion == true end },
      age() } },
  { group = "coordination.k8s.io", version = "v1", kind = "Lease", plural = "leases", singular = "lease",
    namespaced = true, schema = top({ spec = open("The specification of the Lease: holder, durations, times.") }),
    columns = { name_col(), { name = "Holder", type = "string", jsonPath = ".spec.holderIdentity" }, age() } },
  -- stored and served, nothing more (no controller runs them): what kubectl
  -- looks up for `apply --prune` (its default allowlist) and `cluster-info`
  { group = "", version = "v1", kind = "Pod", plural = "pods", singular = "pod", namespaced = true,
    short = { "po" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "", version = "v1", kind = "Service", plural = "services", singular = "service", namespaced = true,
    short = { "svc" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "", version = "v1", kind = "Endpoints", plural = "endpoints", singular = "endpoints", namespaced = true,
    short = { "ep" }, schema = top({ subsets = { type = "array", items = open("A set of addresses and ports."),
      description = "The addresses and ports behind a service." } }), columns = { name_col(), age() } },
  { group = "", version = "v1", kind = "ReplicationController", plural = "replicationcontrollers",
    singular = "replicationcontroller", namespaced = true, short = { "rc" }, status = true, categories = { "all" },
    schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "apps", version = "v1", kind = "Deployment", plural = "deployments", singular = "deployment",
    namespaced = true, short = { "deploy" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "apps", version = "v1", kind = "ReplicaSet", plural = "replicasets", singular = "replicaset",
    namespaced = true, short = { "rs" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "apps", version = "v1", kind = "StatefulSet", plural = "statefulsets", singular = "statefulset",
    namespaced = true, short = { "sts" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "apps", version = "v1", kind = "DaemonSet", plural = "daemonsets", singular = "daemonset",
    namespaced = true, short = { "ds" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "batch", version = "v1", kind = "Job", plural = "jobs", singular = "job", namespaced = true,
    status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "batch", version = "v1", kind = "CronJob", plural = "cronjobs", singular = "cronjob", namespaced = true,
    short = { "cj" }, status = true, categories = { "all" }, schema = SPEC_STATUS, columns = { name_col(), age() } },
  { group = "networking.k8s.io", version = "v1", kind = "Ingress", plural = "ingresses", singular = "ingress",
    namespaced = true, short = { "ing" }, status = true, schema = SPEC_STATUS, columns = { name_col(), age() } },
  -- identities and RBAC (vmsnap serve authorizes by them: vmsnap.apiserver.rbac)
  { group = "", version = "v1", kind = "ServiceAccount", plural = "serviceaccounts", singular = "serviceaccount",
    namespaced = true, short = { "sa" },
    schema = top({ secrets = { type = "array", items = open("A secret of this account.") },
      imagePullSecrets = { type = "array", items = open("A pull secret.") },
      automountServiceAccountToken = { type = "boolean", description = "Whether pods mount a token of this account." } }),
    columns = { name_col(), age() } },
  { group = "rbac.authorization.k8s.io", version = "v1", kind = "ClusterRole", plural = "clusterroles",
    singular = "clusterrole", namespaced = false, schema = RBAC_ROLE,
    columns = { name_col(), { name = "Created At", type = "date", cell = function(o) return o.metadata.creationTimestamp end } } },
  { group = "rbac.authorization.k8s.io", version = "v1", kind = "Role", plural = "roles", singular = "role",
    namespaced = true, schema = RBAC_ROLE,
    columns = { name_col(), { name = "Created At", type = "date", cell = function(o) return o.metadata.creationTimestamp end } } },
  { group = "rbac.authorization.k8s.io", version = "v1", kind = "ClusterRoleBinding", plural = "clusterrolebindings",
    singular = "clusterrolebinding", namespaced = false, schema = RBAC_BINDING, columns = BINDING_COLUMNS },
  { group = "rbac.authorization.k8s.io", version = "v1", kind = "RoleBinding", plural = "rolebindings",
    singular = "rolebinding", namespaced = true, schema = RBAC_BINDING, columns = BINDING_COLUMNS },
  -- reviews: created and answered, never stored (`kubectl auth whoami|can-i`)
  { group = "authentication.k8s.io", version = "v1", kind = "SelfSubjectReview", plural = "selfsubjectreviews",
    singular = "selfsubjectreview", namespaced = false, review = true, verbs = { "create" }, schema = SPEC_STATUS, columns = {} },
  { group = "authorization.k8s.io", version = "v1", kind = "SelfSubjectAccessReview",
    plural = "selfsubjectaccessreviews", singular = "selfsubjectaccessreview", namespaced = false, review = true,
    verbs = { "create" }, schema = SPEC_STATUS, columns = {} },
  { group = "authorization.k8s.io", version = "v1", kind = "SelfSubjectRulesReview",
    plural = "selfsubjectrulesreviews", singular = "selfsubjectrulesreview", namespaced = false, review = true,
    verbs = { "create" }, schema = SPEC_STATUS, columns = {} },
  { group = "apiextensions.k8s.io", version = "v1", kind = "CustomResourceDefinition",
    plural = "customresourcedefinitions", singular = "customresourcedefinition", namespaced = false,
    short = { "crd", "crds" }, status = true, categories = { "api-extensions" }, schema = SPEC_STATUS,
    columns = { name_col(), { name = "Created At", type = "date", cell = function(o)
      return o.metadata.creationTimestamp end } } },
}

local Registry = {}
Registry.__index = Registry

--- A new registry holding the built-in kinds.
function M.new()
  local self = setmetatable({ by_gvr = {}, list = {}, gen = 0 }, Registry)
  for _, b in ipairs(BUILTINS) do
    local r = {}
    for k, v in pairs(b) do r[k] = v end
    r.builtin = true
    r.list_kind = r.kind .. "List"
    r.api_version = r.group == "" and r.version or (r.group .. "/" .. r.version)
    r.key = r.group .. "/" .. r.plural
    r.short = r.short or {}
    r.categories = r.categories or {}
    self:add(r)
  end
  return self
end

function Registry:add(r)
  self.by_gvr[r.group .. "/" .. r.version .. "/" .. r.plural] = r
  self.list[#self.list + 1] = r
  self.gen = self.gen + 1
  self.docs = nil
end

--- The resource at group/version/plural, or nil.
function Registry:find(group, version, plural)
  return self.by_gvr[group .. "/" .. version .. "/" .. plural]
end

--- The resource serving a kind in an apiVersion, or nil.
function Registry:by_kind(api_version, kind)
  for _, r in ipairs(self.list) do
    if r.api_version == api_version and r.kind == kind then return r end
  end
end

--- Resources stored under a key (one per served version).
function Registry:by_key(key)
  local out = {}
  for _, r in ipairs(self.list) do
    if r.key == key then out[#out + 1] = r end
  end
  return out
end

local function convert_columns(cols)
  local out = { name_col() }
  local has_age = false
  for _, c in ipairs(cols or {}) do
    out[#out + 1] = { name = c.name, type = c.type or "string", format = c.format,
      description = c.description, priority = c.priority, jsonPath = c.jsonPath }
    if c.jsonPath == ".metadata.creationTimestamp" then has_age = true end
  end
  if not cols or #cols == 0 then out[#out + 1] = age() end
  return out
end

--- Problems with a CRD's names and versions (a list of causes), empty when fine.
function M.check_crd(crd)
  local causes = {}
  local spec = crd.spec or {}
  local names = spec.names or {}
  local function req(field, v)
    if type(v) ~= "string" or v == "" then
      causes[#causes + 1] = { reason = "FieldValueRequired", field = field, message = "Required value" }
    end
  end
  req("spec.group", spec.group)
  req("spec.names.plural", names.plural)
  req("spec.names.kind", names.kind)
  if spec.scope ~= "Namespaced" and spec.scope ~= "Cluster" then
    causes[#causes + 1] = { reason = "FieldValueNotSupported", field = "spec.scope",
      message = ('Unsupported value: %s: supported values: "Cluster", "Namespaced"'):format(json.encode(spec.scope or "")) }
  end
  if type(spec.versions) ~= "table" or #spec.versions == 0 then
    causes[#causes + 1] = { reason = "FieldValueRequired", field = "spec.versions", message = "Required value" }
  end
  -- the schemas as the real server checks them: structural (every field has
  -- a type), every pattern one the server can check (a schema is never half
  -- enforced), every default valid for its own schema
  local schema_mod = require("vmsnap.apiserver.schema")
  -- in_props: a field of the structure (needs a type); false inside
  -- anyOf/oneOf/allOf/not, which only validate values
  local function node(sch, path, depth, in_props)
    if type(sch) ~= "table" or depth > 64 then return end
    if in_props and sch.type == nil and not sch["x-kubernetes-int-or-string"]
        and not sch["x-kubernetes-preserve-unknown-fields"] then
      causes[#causes + 1] = { reason = "FieldValueRequired", field = path .. ".type",
        message = "Required value: must not be empty for specified object fields" }
    end
    if sch.pattern ~= nil then
      local ok, why = false, "not a string"
      if type(sch.pattern) == "string" then ok, why = schema_mod.regex(sch.pattern) end
      if not ok then
        causes[#causes + 1] = { reason = "FieldValueInvalid", field = path .. ".pattern",
          message = ('Invalid value: %s: must be a valid regular expression, but isn\'t: error parsing regexp: %s')
            :format(json.encode(sch.pattern), tostring(why)) }
      end
    end
    local xv = sch["x-kubernetes-validations"]
    if xv ~= nil then
      for i, rule in ipairs(type(xv) == "table" and xv or {}) do
        local ok, why = false, "a rule must be a string"
        if type(rule) == "table" and type(rule.rule) == "string" then ok, why = schema_mod.rule(rule.rule) end
        if ok and type(rule.messageExpression) == "string" then
          local mok, mwhy = schema_mod.rule(rule.messageExpression)
          if not mok then ok, why = false, "messageExpression: " .. tostring(mwhy) end
        end
        if not ok then
          causes[#causes + 1] = { reason = "FieldValueInvalid",
            field = ("%s.x-kubernetes-validations[%d].rule"):format(path, i - 1),
            message = ("Invalid value: %s: compilation failed: %s"):format(json.encode(type(rule) == "table" and rule.rule or rule),
              tostring(why)) }
        end
      end
    end
    if sch.default ~= nil and sch.default ~= json.null then
      local name = path:match("%[([^%]]+)%]$") or "default"
      for _, c in ipairs(schema_mod.check(sch, sch.default, name)) do
        causes[#causes + 1] = { reason = "FieldValueInvalid", field = path .. ".default", message = c.message }
      end
    end
    for k, sub in pairs(sch.properties or {}) do node(sub, ("%s.properties[%s]"):format(path, k), depth + 1, in_props) end
    if type(sch.items) == "table" then node(sch.items, path .. ".items", depth + 1, in_props) end
    if type(sch.additionalProperties) == "table" then
      node(sch.additionalProperties, path .. ".additionalProperties", depth + 1, in_props)
    end
    for _, kw in ipairs({ "anyOf", "oneOf", "allOf" }) do
      for i, sub in ipairs(type(sch[kw]) == "table" and sch[kw] or {}) do
        node(sub, ("%s.%s[%d]"):format(path, kw, i - 1), depth + 1, false)
      end
    end
    if type(sch["not"]) == "table" then node(sch["not"], path .. ".not", depth + 1, false) end
  end
  local storage = 0
  for i, v in ipairs(type(spec.versions) == "table" and spec.versions or {}) do
    if type(v) == "table" and v.storage == true then storage = storage + 1 end
    local sch = type(v) == "table" and type(v.schema) == "table" and v.schema.openAPIV3Schema
    if sch then node(sch, ("spec.versions[%d].schema.openAPIV3Schema"):format(i - 1), 0, true) end
  end
  if type(spec.versions) == "table" and #spec.versions > 0 and storage ~= 1 then
    causes[#causes + 1] = { reason = "FieldValueInvalid", field = "spec.versions",
      message = ("Invalid value: %d versions marked as storage: must have exactly one version marked as storage version"):format(storage) }
  end
  if #causes == 0 and crd.metadata.name ~= names.plural .. "." .. spec.group then
    causes[#causes + 1] = { reason = "FieldValueInvalid", field = "metadata.name",
      message = ('Invalid value: "%s": must be spec.names.plural+"."+spec.group'):format(crd.metadata.name) }
  end
  return causes
end

--- A stored object's JSON in the version r serves: a CRD with several
--- served versions converts as strategy None does (only apiVersion changes).
--- Stored JSON starts with its apiVersion (keys are sorted).
function M.as_version(r, raw)
  if not r.multi or type(raw) ~= "string" then return raw end
  local stored = raw:match('^{"apiVersion":"([^"]*)"')
  if not stored or stored == r.api_version then return raw end
  return '{"apiVersion":"' .. r.api_version .. raw:sub(#stored + 16) -- from the closing quote on
end

--- Serve the kinds of a stored CRD (replacing a previous version of it).
function Registry:add_crd(crd)
  self:remove_crd(crd.metadata.name)
  local spec = crd.spec
  local names = spec.names
  local served = 0
  for _, v in ipairs(spec.versions) do
    if v.served ~= false then served = served + 1 end
  end
  for _, v in ipairs(spec.versions) do
    if v.served ~= false then
      local sch = v.schema and v.schema.openAPIV3Schema
      local r = {
        group = spec.group, version = v.name, kind = names.kind,
        list_kind = names.listKind or (names.kind .. "List"),
        plural = names.plural, singular = names.singular or names.kind:lower(),
        namespaced = spec.scope == "Namespaced",
        short = names.shortNames or {}, categories = names.categories or {},
        status = v.subresources and v.subresources.status ~= nil,
        schema = sch, columns = convert_columns(v.additionalPrinterColumns),
        crd = crd.metadata.name, api_version = spec.group .. "/" .. v.name,
        key = spec.group .. "/" .. names.plural, storage = v.storage,
        deprecated = v.deprecated, deprecation_warning = v.deprecationWarning,
        fields = {}, multi = served > 1 or nil,
      }
      for _, sf in ipairs(v.selectableFields or {}) do
        if type(sf.jsonPath) == "string" then r.fields[sf.jsonPath:gsub("^%.", "")] = true end
      end
      self:add(r)
    end
  end
end

function Registry:remove_crd(name)
  local kept = {}
  for _, r in ipairs(self.list) do
    if r.crd == name then
      self.by_gvr[r.group .. "/" .. r.version .. "/" .. r.plural] = nil
    else
      kept[#kept + 1] = r
    end
  end
  if #kept ~= #self.list then
    self.list = kept
    self.gen = self.gen + 1
    self.docs = nil
  end
end

-- ------------------------------------------------------------ discovery

-- group -> ordered versions
function Registry:groups()
  local groups, order = {}, {}
  for _, r in ipairs(self.list) do
    if r.group ~= "" then
      local g = groups[r.group]
      if not g then
        g = { name = r.group, versions = {}, seen = {} }
        groups[r.group] = g
        order[#order + 1] = r.group
      end
      if not g.seen[r.version] then
        g.seen[r.version] = true
        g.versions[#g.versions + 1] = r.version
      end
    end
  end
  table.sort(order)
  local out = {}
  for i, name in ipairs(order) do out[i] = groups[name] end
  return out
end

function Registry:resources_of(group, version)
  local out = {}
  for _, r in ipairs(self.list) do
    if r.group == group and r.version == version then out[#out + 1] = r end
  end
  table.sort(out, function(a, b) return a.plural < b.plural end)
  return out
end

local function arr(t) return json.array(t or {}) end

--- The legacy APIResourceList of a group-version.
function Registry:resource_list(group, version)
  local res = json.array()
  for _, r in ipairs(self:resources_of(group, version)) do
    res[#res + 1] = { name = r.plural, singularName = r.singular, namespaced = r.namespaced,
      kind = r.kind, verbs = arr(r.verbs or VERBS), shortNames = #r.short > 0 and arr(r.short) or nil,
      categories = #r.categories > 0 and arr(r.categories) or nil }
    if r.status then
      res[#res + 1] = { name = r.plural .. "/status", singularName = "", namespaced = r.namespaced,
        kind = r.kind, verbs = arr({ "get", "patch", "update" }) }
    end
  end
  return { kind = "APIResourceList", apiVersion = "v1",
    groupVersion = group == "" and version or (group .. "/" .. version), resources = res }
end

function Registry:group_doc(g)
  local versions = json.array()
  for i, v in ipairs(g.versions) do
    versions[i] = { groupVersion = g.name .. "/" .. v, version = v }
  end
  return { name = g.name, versions = versions, preferredVersion = versions[1] }
end

function Registry:group_list()
  local groups = json.array()
  for i, g in ipairs(self:groups()) do groups[i] = self:group_doc(g) end
  return { kind = "APIGroupList", apiVersion = "v1", groups = groups }
end

local function aggregated_group(self, name, versions)
  local vs = json.array()
  for _, v in ipairs(versions) do
    local resources = json.array()
    for _, r in ipairs(self:resources_of(name, v)) do
      local rk = { group = r.group, version = r.version, kind = r.kind }
      resources[#resources + 1] = {
        resource = r.plural, singularResource = r.singular,
        scope = r.namespaced and "Namespaced" or "Cluster", responseKind = rk,
        verbs = arr(r.verbs or VERBS), shortNames = #r.short > 0 and arr(r.short) or nil,
        categories = #r.categories > 0 and arr(r.categories) or nil,
        subresources = r.status and arr({ { subresource = "status", responseKind = rk,
          verbs = arr({ "get", "patch", "update" }) } }) or nil,
      }
    end
    vs[#vs + 1] = { version = v, freshness = "Current", resources = resources }
  end
  return { metadata = { name = name ~= "" and name or nil, creationTimestamp = null }, versions = vs }
end

--- The aggregated (apidiscovery.k8s.io/v2) document for /api (legacy) or /apis.
function Registry:aggregated(legacy)
  local items = json.array()
  if legacy then
    items[1] = aggregated_group(self, "", { "v1" })
  else
    for _, g in ipairs(self:groups()) do
      items[#items + 1] = aggregated_group(self, g.name, g.versions)
    end
  end
  return { kind = "APIGroupDiscoveryList", apiVersion = "apidiscovery.k8s.io/v2", metadata = {}, items = items }
end

-- ------------------------------------------------------------ OpenAPI v3

local fnv = require("vmsnap.k8s.object").fnv64

local OBJECT_META = {
  type = "object",
  description = "ObjectMeta is metadata that all persisted resources must have.",
  properties = {
    name = { type = "string" }, generateName = { type = "string" }, namespace = { type = "string" },
    uid = { type = "string" }, resourceVersion = { type = "string" }, generation = { type = "integer", format = "int64" },
    creationTimestamp = { type = "string", format = "date-time" },
    deletionTimestamp = { type = "string", format = "date-time" },
    deletionGracePeriodSeconds = { type = "integer", format = "int64" },
    labels = { type = "object", additionalProperties = { type = "string" } },
    annotations = { type = "object", additionalProperties = { type = "string" } },
    finalizers = { type = "array", items = { type = "string" } },
    ownerReferences = { type = "array", items = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } },
    managedFields = { type = "array", items = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } },
  },
}

local function schema_name(r)
  -- apiserver convention: reversed group, version, kind
  local parts = {}
  for p in r.group:gmatch("[^.]+") do table.insert(parts, 1, p) end
  if #parts == 0 then parts = { "io", "k8s", "api", "core" } end
  return table.concat(parts, ".") .. "." .. r.version .. "." .. r.kind
end

local function gv_doc(self, group, version)
  local paths, schemas = {}, {
    ["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] = OBJECT_META,
    ["io.k8s.apimachinery.pkg.apis.meta.v1.Patch"] = { type = "object",
      description = "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body." },
  }
  local prefix = group == "" and "/api/v1" or ("/apis/" .. group .. "/" .. version)
  for _, r in ipairs(self:resources_of(group, version)) do
    local gvk = { group = group, version = version, kind = r.kind }
    local sname = schema_name(r)
    local s = {}
    if r.schema then
      for k, v in pairs(r.schema) do s[k] = v end
    else
      s.type = "object"
      s["x-kubernetes-preserve-unknown-fields"] = true
    end
    local props = {}
    for k, v in pairs(r.schema and r.schema.properties or {}) do props[k] = v end
    props.metadata = { ["$ref"] = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" }
    props.apiVersion = { type = "string", description = "APIVersion defines the versioned schema of this representation of an object." }
    props.kind = { type = "string", description = "Kind is a string value representing the REST resource this object represents." }
    s.properties = props
    s["x-kubernetes-group-version-kind"] = json.array({ gvk })
    schemas[sname] = s
    local ref = { ["$ref"] = "#/components/schemas/" .. sname }
    local patch_body = { schema = { ["$ref"] = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch" } }
    local params = json.array({
      { name = "fieldValidation", ["in"] = "query", schema = { type = "string" } },
      { name = "fieldManager", ["in"] = "query", schema = { type = "string" } },
      { name = "dryRun", ["in"] = "query", schema = { type = "string" } },
      { name = "force", ["in"] = "query", schema = { type = "boolean" } },
    })
    local content = { ["application/json-patch+json"] = patch_body, ["application/merge-patch+json"] = patch_body,
      ["application/apply-patch+yaml"] = patch_body }
    local item = (r.namespaced and (prefix .. "/namespaces/{namespace}/") or (prefix .. "/")) .. r.plural .. "/{name}"
    local coll = (r.namespaced and (prefix .. "/namespaces/{namespace}/") or (prefix .. "/")) .. r.plural
    local function op(action, extra)
      local o = { ["x-kubernetes-action"] = action, ["x-kubernetes-group-version-kind"] = gvk,
        parameters = params, responses = { ["200"] = { description = "OK", content = { ["application/json"] = { schema = ref } } } } }
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end
    paths[item] = { get = op("get"), put = op("put", { requestBody = { content = { ["application/json"] = { schema = ref } } } }),
      patch = op("patch", { requestBody = { content = content } }), delete = op("delete") }
    paths[coll] = { get = op("list"), post = op("post", { requestBody = { content = { ["application/json"] = { schema = ref } } } }) }
    if r.status then
      paths[item .. "/status"] = { get = op("get"), put = op("put"), patch = op("patch", { requestBody = { content = content } }) }
    end
  end
  return { openapi = "3.0.0", info = { title = "Kubernetes", version = "v1.32.0" },
    paths = paths, components = { schemas = schemas } }
end

--- The OpenAPI v3 root and the encoded group-version documents, with hashes.
function Registry:openapi()
  if self.docs then return self.docs end
  local docs = { root = { paths = {} }, gv = {} }
  local gvs = { { "", "v1" } }
  for _, g in ipairs(self:groups()) do
    for _, v in ipairs(g.versions) do gvs[#gvs + 1] = { g.name, v } end
  end
  for _, gv in ipairs(gvs) do
    local key = gv[1] == "" and "api/v1" or ("apis/" .. gv[1] .. "/" .. gv[2])
    local text = json.encode(gv_doc(self, gv[1], gv[2]))
    local hash = fnv(text) .. fnv(key .. text)
    docs.gv[key] = { text = text, hash = hash }
    docs.root.paths[key] = { serverRelativeURL = "/openapi/v3/" .. key .. "?hash=" .. hash }
  end
  docs.root_text = json.encode(docs.root)
  self.docs = docs
  return docs
end

return M
