--- vmsnap.base64: standard base64 (RFC 4648), as Kubernetes uses for Secret
--- data and kubeconfig *-data fields.
local M = {}

local B = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC = {}
for i = 1, #B do DEC[B:byte(i)] = i - 1 end

--- Encode a string.
---@param s string
---@return string
function M.encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = (a << 16) | ((b or 0) << 8) | (c or 0)
    local d1, d2, d3, d4 = (n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63
    out[#out + 1] = B:sub(d1 + 1, d1 + 1) .. B:sub(d2 + 1, d2 + 1)
      .. (b and B:sub(d3 + 1, d3 + 1) or "=") .. (c and B:sub(d4 + 1, d4 + 1) or "=")
  end
  return table.concat(out)
end

--- Decode a string (whitespace ignored); nil for invalid input.
---@param s string
---@return string?
function M.decode(s)
  local out, acc, bits = {}, 0, 0
  s = s:gsub("%s", ""):gsub("=+$", "")
  for i = 1, #s do
    local v = DEC[s:byte(i)]
    if not v then return nil end
    acc = ((acc << 6) | v) & 0xffffff
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      out[#out + 1] = string.char((acc >> bits) & 0xff)
    end
  end
  return table.concat(out)
end

return M
