--- vmsnap.deep: deep copy and deep equality of decoded objects (tables of
--- tables; the array marker `vmsnap.array_mt` is kept by copies). Both are
--- done in C (a Lua copy was the hottest function of a snapshot burst); raw
--- access, metatables shared, not copied; more than 1000 levels of nesting
--- (a cycle) raise.
local rt = require("vmsnap.core.runtime")

local M = {}

--- A deep copy of v.
M.copy = rt.deepcopy

--- Do a and b hold the same values?
M.equal = rt.deepequal

return M
