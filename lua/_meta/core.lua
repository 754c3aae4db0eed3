---@meta
-- LuaCATS stubs for the private C modules vmsnap.core.* (runtime/src/).
-- Scripts use the public vmsnap.* modules built on them; these stubs let the
-- Lua language server check the library itself.

---@class vmsnap.core.task
---@field spawn fun(fn: function, ...): userdata
---@field spawn_within fun(seconds: number, fn: function, ...): userdata  task with deadline now+seconds
---@field current fun(): userdata?
---@field sleep fun(seconds: number): true
---@field suspend fun(timeout?: number): true|nil, string?, string?  wait until wakeup(task)
---@field wakeup fun(t: userdata): boolean  wake a task suspended by suspend()
---@field wait fun(t: userdata, timeout?: number): ...
---@field cancel fun(t: userdata): boolean
---@field status fun(t: userdata): string
---@field id fun(t: userdata): integer
---@field deadline fun(t?: userdata): number?
---@field now fun(): number
---@field count fun(): integer

---@class vmsnap.core.json
---@field decode fun(text: string): any, string?, string?
---@field encode fun(value: any, opts?: {indent?: string|integer}): string?, string?, string?
---@field is_array fun(t: any): boolean
---@field null lightuserdata
---@field array_mt table

---@class vmsnap.core.yaml
---@field load fun(text: string): any, string?, string?
---@field load_all fun(text: string): table?, string?, string?
---@field dump fun(value: any, opts?: {indent?: integer}): string?, string?, string?
---@field dump_all fun(docs: table, opts?: {indent?: integer}): string?, string?, string?
---@field libyaml_version string

---@class vmsnap.core.http.Request
---@field start fun(self): true|nil, string?, string?
---@field await fun(self, what: "headers"|"data"|"done", timeout?: number): any, string?, string?
---@field info fun(self): integer, string, string  status, http version, raw headers
---@field take fun(self): string
---@field close fun(self)

---@class vmsnap.core.http
---@field new fun(opts: vmsnap.http.RequestOpts): vmsnap.core.http.Request
---@field curl_version fun(): {version: string, ssl: string, http2: boolean}

---@class vmsnap.core.proc.Process
---@field wait fun(self, timeout?: number): table?, string?, string?, table?
---@field kill fun(self, sig?: string|integer): boolean?, string?, string?
---@field pid fun(self): integer
---@field running fun(self): boolean
---@field close fun(self)

---@class vmsnap.core.proc
---@field spawn fun(argv: string[], opts?: vmsnap.proc.Opts): vmsnap.core.proc.Process?, string?, string?

---@class vmsnap.core.fs
---@field mkdir_p fun(path: string, mode?: integer): true|nil, string?, string?
---@field tempdir fun(prefix?: string): string?, string?, string?
---@field remove_tree fun(path: string): true|nil, string?, string?
---@field remove fun(path: string): true|nil, string?, string?
---@field rename fun(from: string, to: string): true|nil, string?, string?
---@field stat fun(path: string): table?, string?, string?
---@field exists fun(path: string): boolean
---@field list fun(path: string): string[]?, string?, string?
---@field read_file fun(path: string): string?, string?, string?
---@field write_atomic fun(path: string, data: string, opts?: vmsnap.fs.WriteOpts): true|nil, string?, string?
---@field copy fun(src: string, dst: string, opts?: vmsnap.fs.WriteOpts): table?, string?, string?

---@class vmsnap.core.log
---@field write fun(level: integer, subsystem: string, message: string, fields?: table): boolean
---@field level fun(level?: integer): integer
---@field json fun(on?: boolean): boolean

---@class vmsnap.core.runtime
---@field memory fun(): {used: integer, peak: integer, limit: integer}
---@field fail_after fun(n: integer)  from the nth allocation on, allocations fail (0: off)
---@field versions fun(): table<string,string>
---@field params fun(): table
---@field sandbox fun(): integer
---@field registry_refs fun(): integer
---@field cancel_requested fun(): boolean
---@field scripts_dirs fun(): string[]  where the built-in scripts are (VMSNAP_SCRIPTS_DIR, installed, source tree)
---@field SANDBOX_ON integer
---@field SANDBOX_ALLOW_OS integer
---@field SANDBOX_ALLOW_REQUIRE integer

---@class vmsnap.core.errors
---@field new fun(code: string, message: string): table
---@field raise fun(code: string, message: string, level?: integer)
---@field is_error fun(v: any): boolean
---@field metatable table

---@class vmsnap.core.sqlite.Stmt
---@field first fun(self: vmsnap.core.sqlite.Stmt, ...: any): ...
---@field run fun(self: vmsnap.core.sqlite.Stmt, ...: any): integer?, string?, string?
---@field all fun(self: vmsnap.core.sqlite.Stmt, ...: any): any[][]?, string?, string?
---@field each fun(self: vmsnap.core.sqlite.Stmt, ...: any): fun(): any[]?
---@field finalize fun(self: vmsnap.core.sqlite.Stmt)

---@class vmsnap.core.sqlite.Db
---@field exec fun(self: vmsnap.core.sqlite.Db, sql: string): boolean?, string?, string?
---@field prepare fun(self: vmsnap.core.sqlite.Db, sql: string): vmsnap.core.sqlite.Stmt?, string?, string?
---@field changes fun(self: vmsnap.core.sqlite.Db): integer
---@field last_rowid fun(self: vmsnap.core.sqlite.Db): integer
---@field close fun(self: vmsnap.core.sqlite.Db)

---@class vmsnap.core.sqlite
---@field open fun(path: string, opts?: {readonly?: boolean, busy_timeout_ms?: integer}): vmsnap.core.sqlite.Db?, string?, string?
---@field version fun(): string

---@class vmsnap.core.httpd.Request
---@field method fun(self): string
---@field path fun(self): string
---@field args fun(self): table<string,string>
---@field header fun(self, name: string): string?
---@field headers fun(self): table<string,string>
---@field body fun(self): string?, string?, string?
---@field peer fun(self): string?
---@field client_cert fun(self): boolean, string?
---@field respond fun(self, status: integer, headers?: table<string,string>, body?: string): boolean
---@field stream fun(self, status: integer, headers?: table<string,string>): boolean?, string?, string?
---@field write fun(self, data: string): boolean?, string?, string?
---@field finish fun(self)
---@field closed fun(self): boolean
---@field pending fun(self): integer

---@class vmsnap.core.httpd.Server
---@field port fun(self): integer
---@field stats fun(self): {connections: integer, max_connections: integer, header_timeouts: integer}
---@field accept fun(self, timeout?: number): vmsnap.core.httpd.Request?, string?, string?
---@field close fun(self)

---@class vmsnap.core.httpd
---@field listen fun(opts: {host?: string, port?: integer, tls_cert?: string, tls_key?: string, client_ca?: string, max_body?: integer, idle_timeout?: integer, header_timeout?: integer, max_connections?: integer, max_connections_per_ip?: integer}): vmsnap.core.httpd.Server?, string?, string?
---@field version fun(): string

---@class vmsnap.core.sock.Conn
---@field wait fun(self, what: "r"|"w", timeout?: number): boolean
---@field finish_connect fun(self): boolean?, string?, string?
---@field read_some fun(self): string?, string?, string?
---@field write_some fun(self, data: string, offset?: integer): integer?, string?, string?
---@field fd fun(self): integer
---@field close fun(self)

---@class vmsnap.core.sock
---@field open fun(target: string): vmsnap.core.sock.Conn?, boolean|string?, string?

---@class vmsnap.core.qga.Framer
---@field feed fun(self, bytes: string): (string|false)[]   frames' texts, "delim", or false for a dropped frame
---@field reset fun(self)

---@class vmsnap.core.qga
---@field framer fun(max_frame?: integer): vmsnap.core.qga.Framer
