--- vmsnap.apiserver.rbac: who a request is from, and whether the RBAC
--- objects let them do it, as the Kubernetes API server decides.
---
--- A user is `{username, uid, groups, masters}` (M.user). The group system:masters may do
--- everything (the administrator of the generated kubeconfig is in it).
--- Every other user is allowed what the ClusterRoleBindings and the
--- RoleBindings of the request's namespace grant them, through the rules of
--- the (Cluster)Roles they name, plus what Kubernetes grants every
--- authenticated user (discovery, health, the self reviews). Aggregation of
--- ClusterRoles is not done. Denials read as Kubernetes words them
--- (`M.forbidden`).
local json = require("vmsnap.json")

local M = {}

M.GROUP = "rbac.authorization.k8s.io"
M.MASTERS = "system:masters"
M.AUTHENTICATED = "system:authenticated"

-- ------------------------------------------------------------ identities

local function in_group(user, g)
  for _, x in ipairs(user.groups or {}) do if x == g then return true end end
  return false
end

--- A user: its groups and system:authenticated; `masters` (may do
--- everything) decided once, here, not on every request.
function M.user(username, uid, groups)
  local gs = json.array()
  for _, g in ipairs(groups or {}) do gs[#gs + 1] = g end
  gs[#gs + 1] = M.AUTHENTICATED
  local u = { username = username, uid = uid, groups = gs }
  u.masters = in_group(u, M.MASTERS)
  return u
end

--- The identity of a ServiceAccount's tokens.
function M.service_account_user(ns, name, uid)
  return M.user(("system:serviceaccount:%s:%s"):format(ns, name), uid,
    { "system:serviceaccounts", "system:serviceaccounts:" .. ns })
end

-- one CSV field from position i: its text and the position after the comma
local function csv_field(line, i)
  if line:sub(i, i) == '"' then
    local out, j = {}, i + 1
    while true do
      local q = line:find('"', j, true)
      if not q then return nil, "an unterminated quoted field" end
      out[#out + 1] = line:sub(j, q - 1)
      if line:sub(q + 1, q + 1) == '"' then
        out[#out + 1] = '"'
        j = q + 2
      else
        local after = q + 1
        if after <= #line and line:sub(after, after) ~= "," then return nil, "text after a quoted field" end
        return table.concat(out), after + 1
      end
    end
  end
  local c = line:find(",", i, true)
  if not c then return line:sub(i), #line + 2 end
  return line:sub(i, c - 1), c + 1
end

--- Parse a static token file (kube-apiserver's --token-file): one user a
--- line, `token,user,uid[,"group1,group2"]`; blank lines and lines
--- starting with # are skipped. Returns {token -> user}, or nil and the
--- line that is wrong.
function M.parse_token_file(text, where)
  local users, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    line = line:gsub("\r$", "")
    if line:match("%S") and not line:match("^%s*#") then
      local fields, i = {}, 1
      while i <= #line + 1 do
        local f, nexti = csv_field(line, i)
        if not f then return nil, ("%s:%d: %s"):format(where, n, nexti) end
        fields[#fields + 1] = f
        i = nexti
        if i > #line + 1 then break end
      end
      local token, user, uid = fields[1], fields[2], fields[3]
      if #fields < 3 then
        return nil, ("%s:%d: a line is token,user,uid[,\"group,...\"]: %d field(s)"):format(where, n, #fields)
      end
      if token == "" or not token:match("^[%w%-%._~+/=]+$") then
        return nil, ("%s:%d: the token must be printable ASCII without spaces or commas"):format(where, n)
      end
      if user == "" then return nil, ("%s:%d: the user name is empty"):format(where, n) end
      if users[token] then return nil, ("%s:%d: the token of line %d again"):format(where, n, users[token].line) end
      local groups = {}
      for g in (fields[4] or ""):gmatch("[^,]+") do
        g = g:match("^%s*(.-)%s*$")
        if g ~= "" then groups[#groups + 1] = g end
      end
      users[token] = M.user(user, uid, groups)
      users[token].line = n
    end
  end
  for _, u in pairs(users) do u.line = nil end
  return users
end

--- The user of a verified client certificate's subject: CN the name, each
--- O a group.
function M.certificate_user(dn)
  local cn = dn and dn:match("CN=([^,/]+)")
  if not cn then return nil end
  local groups = {}
  for o in dn:gmatch("O=([^,/]+)") do groups[#groups + 1] = o end
  return M.user(cn, nil, groups)
end

-- ------------------------------------------------------------ requests

--- The verb of an HTTP request (Kubernetes's words).
function M.verb(method, has_name, watch)
  if method == "GET" or method == "HEAD" then
    if watch then return "watch" end
    return has_name and "get" or "list"
  end
  if method == "POST" then return "create" end
  if method == "PUT" then return "update" end
  if method == "PATCH" then return "patch" end
  if method == "DELETE" then return has_name and "delete" or "deletecollection" end
  return method:lower()
end

-- ------------------------------------------------------------ rules

local function has(list, v)
  for _, x in ipairs(type(list) == "table" and list or {}) do
    if x == v or x == "*" then return true end
  end
  return false
end

local function resource_matches(rule, resource, sub)
  local combined = sub ~= "" and (resource .. "/" .. sub) or resource
  for _, x in ipairs(type(rule.resources) == "table" and rule.resources or {}) do
    if x == "*" or x == combined then return true end
    if sub ~= "" and x == "*/" .. sub then return true end
  end
  return false
end

-- does rule allow the request a (resource or not)?
local function allows(rule, a)
  if type(rule) ~= "table" or not has(rule.verbs, a.verb) then return false end
  if a.resource then
    if not has(rule.apiGroups, a.group) or not resource_matches(rule, a.resource, a.subresource or "") then
      return false
    end
    local names = type(rule.resourceNames) == "table" and rule.resourceNames or {}
    if #names == 0 then return true end
    if (a.name or "") == "" then return false end
    for _, n in ipairs(names) do if n == a.name then return true end end
    return false
  end
  for _, u in ipairs(type(rule.nonResourceURLs) == "table" and rule.nonResourceURLs or {}) do
    if u == "*" or u == a.path then return true end
    if u:sub(-1) == "*" and a.path:sub(1, #u - 1) == u:sub(1, -2) then return true end
  end
  return false
end
M.allows = allows

-- what Kubernetes's bootstrap policy grants every authenticated user
-- (system:discovery, system:public-info-viewer, system:basic-user)
local BASIC = {
  { verbs = { "get" }, nonResourceURLs = { "/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*",
    "/version", "/version/", "/healthz", "/livez", "/readyz" } },
  { verbs = { "create" }, apiGroups = { "authorization.k8s.io" },
    resources = { "selfsubjectaccessreviews", "selfsubjectrulesreviews" } },
  { verbs = { "create" }, apiGroups = { "authentication.k8s.io" }, resources = { "selfsubjectreviews" } },
}
M.BASIC = BASIC

-- ------------------------------------------------------------ the policy

local function subject_matches(s, user, binding_ns)
  if type(s) ~= "table" then return false end
  if s.kind == "User" then return s.name == user.username end
  if s.kind == "Group" then return in_group(user, s.name) end
  if s.kind == "ServiceAccount" then
    local ns = (s.namespace ~= nil and s.namespace ~= "") and s.namespace or binding_ns
    return ns ~= nil and ("system:serviceaccount:%s:%s"):format(ns, tostring(s.name)) == user.username
  end
  return false
end

local function describe_subject(s, binding_ns)
  if s.kind == "ServiceAccount" then
    local ns = (s.namespace ~= nil and s.namespace ~= "") and s.namespace or binding_ns or ""
    return ("%s %q"):format(s.kind, tostring(s.name) .. "/" .. ns)
  end
  return ("%s %q"):format(tostring(s.kind), tostring(s.name))
end

--- The RBAC objects as they are now, read once: `store` is the server's
--- store. Rebuilt by the server after any write of an RBAC object.
function M.policy(store)
  local p = { roles = {}, cluster_roles = {}, crbs = {}, rbs = {} }
  store:each(M.GROUP .. "/clusterroles", nil, function(_, name, _, o) p.cluster_roles[name] = o end, true)
  store:each(M.GROUP .. "/roles", nil, function(ns, name, _, o) p.roles[ns .. "/" .. name] = o end, true)
  store:each(M.GROUP .. "/clusterrolebindings", nil, function(_, _, _, o) p.crbs[#p.crbs + 1] = o end, true)
  store:each(M.GROUP .. "/rolebindings", nil, function(ns, _, _, o)
    p.rbs[ns] = p.rbs[ns] or {}
    table.insert(p.rbs[ns], o)
  end, true)
  return p
end

-- visit(rules, source) for every (Cluster)Role bound to user that applies in
-- namespace ns (nil: the cluster scope); errs collects missing roles
local function each_bound(p, user, ns, visit, errs)
  local function role_of(ref, bns)
    if type(ref) ~= "table" then return nil end
    if ref.kind == "ClusterRole" then
      local r = p.cluster_roles[ref.name]
      if not r then errs[#errs + 1] = ('clusterrole.rbac.authorization.k8s.io "%s" not found'):format(tostring(ref.name)) end
      return r
    elseif ref.kind == "Role" and bns then
      local r = p.roles[bns .. "/" .. tostring(ref.name)]
      if not r then errs[#errs + 1] = ('role.rbac.authorization.k8s.io "%s" not found'):format(tostring(ref.name)) end
      return r
    end
  end
  -- each binding of the list (in namespace bns, nil for the cluster's) whose
  -- first subject that matches is user: its role's rules, with their source
  local function bindings(list, bns)
    for _, b in ipairs(list) do
      for _, s in ipairs(type(b.subjects) == "table" and b.subjects or {}) do
        if subject_matches(s, user, bns) then
          local role = role_of(b.roleRef, bns)
          local source = bns and ('RoleBinding "%s/%s" of %s "%s" to %s'):format(bns, b.metadata.name,
              tostring(b.roleRef.kind), tostring(b.roleRef.name), describe_subject(s, bns))
            or ('ClusterRoleBinding "%s" of ClusterRole "%s" to %s'):format(b.metadata.name,
              tostring(b.roleRef.name), describe_subject(s, nil))
          if role and visit(role.rules, source) then return true end
          break
        end
      end
    end
    return false
  end
  if bindings(p.crbs, nil) then return true end
  return ns ~= nil and ns ~= "" and bindings(p.rbs[ns] or {}, ns)
end

--- Is request a allowed to user under policy p? a: {verb, group, resource,
--- subresource, name, namespace} for a resource, {verb, path} otherwise.
--- Returns allowed, reason (RBAC's: which binding allowed it, or the roles
--- that were not found).
function M.authorize(p, user, a)
  if user.masters then return true, "" end
  if in_group(user, M.AUTHENTICATED) then
    for _, rule in ipairs(BASIC) do
      if allows(rule, a) then return true, "" end
    end
  end
  local reason
  local errs = {}
  local ok = each_bound(p, user, a.namespace, function(rules, source)
    for _, rule in ipairs(type(rules) == "table" and rules or {}) do
      if allows(rule, a) then
        reason = "RBAC: allowed by " .. source
        return true
      end
    end
  end, errs)
  if ok then return true, reason end
  if #errs == 1 then return false, "RBAC: " .. errs[1] end
  if #errs > 1 then return false, "RBAC: [" .. table.concat(errs, ", ") .. "]" end
  return false, ""
end

--- The rules user has in namespace ns (SelfSubjectRulesReview's answer):
--- resourceRules, nonResourceRules.
function M.rules(p, user, ns)
  local res, non = json.array(), json.array()
  local function add(rule)
    if type(rule) ~= "table" then return end
    local function arr(x) return json.array(type(x) == "table" and { table.unpack(x) } or {}) end
    if type(rule.nonResourceURLs) == "table" and #rule.nonResourceURLs > 0 then
      non[#non + 1] = { verbs = arr(rule.verbs), nonResourceURLs = arr(rule.nonResourceURLs) }
    else
      local r = { verbs = arr(rule.verbs), apiGroups = arr(rule.apiGroups), resources = arr(rule.resources) }
      if type(rule.resourceNames) == "table" and #rule.resourceNames > 0 then r.resourceNames = arr(rule.resourceNames) end
      res[#res + 1] = r
    end
  end
  if user.masters then
    add({ verbs = { "*" }, apiGroups = { "*" }, resources = { "*" } })
    add({ verbs = { "*" }, nonResourceURLs = { "*" } })
  end
  if in_group(user, M.AUTHENTICATED) then
    for _, rule in ipairs(BASIC) do add(rule) end
  end
  each_bound(p, user, ns, function(rules)
    for _, rule in ipairs(type(rules) == "table" and rules or {}) do add(rule) end
  end, {})
  return res, non
end

--- The message of a 403, as Kubernetes writes it, and its details.
---@return string message, table details
function M.forbidden(user, a, reason)
  local who = user and user.username or ""
  local msg
  if not a.resource then
    msg = ("User %q cannot %s path %q"):format(who, a.verb, a.path)
  else
    local resource = a.resource
    if (a.subresource or "") ~= "" then resource = resource .. "/" .. a.subresource end
    if (a.namespace or "") ~= "" then
      msg = ("User %q cannot %s resource %q in API group %q in the namespace %q"):format(who, a.verb, resource,
        a.group or "", a.namespace)
    else
      msg = ("User %q cannot %s resource %q in API group %q at the cluster scope"):format(who, a.verb, resource,
        a.group or "")
    end
  end
  if reason and reason ~= "" then msg = msg .. ": " .. reason end
  if not a.resource then return "forbidden: " .. msg, { } end
  local gr = a.group ~= "" and (a.resource .. "." .. a.group) or a.resource
  local details = { group = a.group, kind = a.resource, name = (a.name or "") ~= "" and a.name or nil }
  if (a.name or "") == "" then return ("%s is forbidden: %s"):format(gr, msg), details end
  return ("%s %q is forbidden: %s"):format(gr, a.name, msg), details
end

return M
