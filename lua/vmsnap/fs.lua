--- vmsnap.fs: files and directories.
---
--- Quick calls run inline; `write_atomic` and `copy` run on the thread pool
--- while other tasks continue. Failures return `nil, message, code` with an
--- errno name as the code (ENOENT, EACCES, ...).
local core = require("vmsnap.core.fs")

local setmetatable = setmetatable

local M = {}

--- mkdir -p
---@param path string
---@param mode? integer  default 0755
function M.mkdir_p(path, mode) return core.mkdir_p(path, mode) end

--- Remove a directory tree (a missing path is not an error).
function M.remove_tree(path) return core.remove_tree(path) end

--- Remove a file or an empty directory.
function M.remove(path) return core.remove(path) end

function M.rename(from, to) return core.rename(from, to) end

--- Set a file's size, creating it; growing leaves a hole (allocates nothing).
---@param path string
---@param size integer
function M.truncate(path, size) return core.truncate(path, size) end

--- `{type=, size=, allocated=, mode=, mtime=}`; `allocated` counts the blocks in use (sparse files).
function M.stat(path) return core.stat(path) end

function M.exists(path) return core.exists(path) end

--- Set a file's or directory's permission bits (`fs.chmod(path, 384)` for 0600).
---@param path string
---@param mode integer
function M.chmod(path, mode) return core.chmod(path, mode) end

--- Set the process's file mode creation mask; returns the previous one.
---@param mask integer
function M.umask(mask) return core.umask(mask) end

--- Sorted entry names of a directory.
function M.list(path) return core.list(path) end

function M.read_file(path) return core.read_file(path) end

---@class vmsnap.fs.WriteOpts
---@field mode? integer   default 0644
---@field fsync? boolean  default true

--- Replace `path` with `data` so that readers see the old or the new
--- content, never a mix: temp file, fsync, rename, fsync of the directory.
---@param path string
---@param data string
---@param opts? vmsnap.fs.WriteOpts
function M.write_atomic(path, data, opts) return core.write_atomic(path, data, opts) end

--- Copy a file, sparse-aware: a reflink (shared extents) when the
--- filesystem supports it, else only the data regions (SEEK_DATA/SEEK_HOLE)
--- are copied and holes stay holes. Returns `{method="reflink"|"sparse",
--- bytes=copied, size=}`.
---@param src string
---@param dst string
---@param opts? vmsnap.fs.WriteOpts
function M.copy(src, dst, opts) return core.copy(src, dst, opts) end

local TempDir = {}
TempDir.__index = TempDir
TempDir.__close = function(self) self:remove() end
TempDir.__tostring = function(self) return self.path end
function TempDir:remove()
  if self.path and not self.kept then core.remove_tree(self.path) end
end
--- Keep the directory when the object is closed.
function TempDir:keep() self.kept = true return self.path end

--- A new private directory under $TMPDIR (or /tmp). The returned object has
--- `.path`; closing it (`local d <close> = fs.tempdir()`) removes the tree.
---@param prefix? string
function M.tempdir(prefix)
  local path, err, code = core.tempdir(prefix)
  if not path then return nil, err, code end
  return setmetatable({ path = path }, TempDir)
end

return M
