--- vmsnap.deep: deep copy and deep equality of decoded objects (tables of
--- tables; the array marker `vmsnap.array_mt` is kept by copies).
local M = {}

--- A deep copy of v (metatables are shared, not copied).
function M.copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = M.copy(x) end
  return setmetatable(t, getmetatable(v))
end

--- Do a and b hold the same values?
function M.equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do
    if not M.equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

return M
