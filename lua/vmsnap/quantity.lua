--- vmsnap.quantity: Kubernetes resource quantities ("5Gi", "1500M", "10").
local M = {}

local BIN = { Ki = 1024, Mi = 1024 ^ 2, Gi = 1024 ^ 3, Ti = 1024 ^ 4, Pi = 1024 ^ 5, Ei = 1024 ^ 6 }
local DEC = { [""] = 1, k = 1e3, M = 1e6, G = 1e9, T = 1e12, P = 1e15, E = 1e18, m = 1e-3, u = 1e-6, n = 1e-9 }

--- The value of a quantity (a string or a number), rounded up to an integer,
--- or nil, message for malformed text.
---@param q string|number
---@return integer?, string?
function M.parse(q)
  if type(q) == "number" then return math.ceil(q) end
  if type(q) ~= "string" then return nil, "quantity must be a string or a number" end
  if q:match("^[+-]?%d*%.?%d+[eE][+-]?%d+$") then return math.ceil(tonumber(q)) end
  local num, suffix = q:match("^([+-]?%d*%.?%d+)([%a]*)$")
  if not num then
    num, suffix = q:match("^([+-]?%d+%.?)([%a]*)$")
  end
  local n = num and tonumber(num)
  if not n then return nil, ("invalid quantity %q"):format(q) end
  local mult = BIN[suffix] or DEC[suffix]
  if not mult then return nil, ("invalid quantity %q"):format(q) end
  local v = n * mult
  return math.tointeger(math.ceil(v)) or math.ceil(v)
end

--- A quantity text for bytes in binary units when exact ("5Gi"), else bytes.
function M.format(bytes)
  for _, s in ipairs({ "Ei", "Pi", "Ti", "Gi", "Mi", "Ki" }) do
    local m = BIN[s]
    if bytes >= m and bytes % m == 0 then return ("%d%s"):format(bytes // m, s) end
  end
  return tostring(math.tointeger(bytes) or bytes)
end

return M
