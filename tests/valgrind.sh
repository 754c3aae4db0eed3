#!/bin/sh
# Run the CLI's main paths under valgrind; any leak or memory error fails.
# usage: valgrind.sh VALGRIND VMSNAP SOURCE_DIR BUILD_DIR
set -u
VG=$1 V=$2 SRC=$3 BUILD=$4
fail=0
# run NAME EXPECTED_EXIT ARGS...: fails on a valgrind error or leak, and on
# an exit status other than the expected one
run() {
	name=$1
	want=$2
	shift 2
	out=$("$VG" --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
		--errors-for-leak-kinds=definite,indirect "$V" "$@" 2>&1 >/dev/null)
	rc=$?
	if [ $rc -ne "$want" ]; then
		echo "not ok - $name (exit $rc, expected $want)"
		echo "$out" | sed 's/^/  # /'
		fail=1
	else
		echo "ok - $name (exit $rc)"
	fi
}
run "version" 0 --version
run "empty chunk" 0 -e ''
run "syntax error" 1 -e 'local = 1'
run "runtime error" 1 -e 'error("x")'
run "tasks and channels" 0 -e '
local t = require("vmsnap.task")
local ch = t.channel()
local ts = {}
for i = 1, 50 do ts[i] = t.spawn(function() t.sleep(0.001 * (i % 5)) ch:send(i) end) end
for _ = 1, 50 do ch:recv() end
t.wait_all(ts)
t.timeout(0.02, function() t.sleep(1) end)'
run "json and yaml" 0 -e '
local json, yaml = require("vmsnap.json"), require("vmsnap.yaml")
local f = assert(io.open(arg[1])) local text = f:read("a") f:close()
for _, d in ipairs(assert(yaml.load_all(text))) do assert(yaml.load(yaml.dump(d))) assert(json.decode(json.encode(d))) end
assert(not yaml.load("a: [") and not json.decode("{"))' "$SRC/tests/data/user-guide-manifests.yaml"
export VMSNAP_BUILD_DIR="$BUILD" VMSNAP_SOURCE_DIR="$SRC"
run "http and proc" 0 --path "$SRC/tests/harness" -e '
local proc, http, task = require("vmsnap.proc"), require("vmsnap.http"), require("vmsnap.task")
local srv <close> = require("helpers").httpd()
local ts = {}
for i = 1, 10 do ts[i] = task.spawn(http.get, srv.url .. "/delay?ms=20") end
for _, r in ipairs(assert(task.wait_all(ts))) do assert(r[1].status == 200) end
assert(http.request({url = srv.url .. "/stream?n=3", stream = true}):read_all())
assert(proc.run({"sh", "-c", "echo hi"})).stdout:find("hi")'
run "cancelled run" 1 --deadline 0.2 -e 'require("vmsnap.task").sleep(5)'

# the guest agent client against the fake agent (sync, a hang, the resync)
F=$(mktemp -d /tmp/vmsnap-vgqga.XXXXXX)
"$BUILD/tests/fakeqga" --socket "$F/qga.sock" --max-seconds 120 ok hang ok ok ok >/dev/null 2>&1 &
fpid=$!
i=0
while [ ! -e "$F/qga.sock.ready" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
run "qga resync after a hang" 0 -e '
local qga = require("vmsnap.qga")
local a <close> = assert(qga.connect(arg[1], { timeout = 0.5 }))
local r, _, code = a:ping()
assert(r == nil and code == "QGA_TIMEOUT")
assert(a:ping())
assert(a:info().version == "fake")' "unix:$F/qga.sock"
kill $fpid 2>/dev/null
wait $fpid 2>/dev/null
rm -rf "$F"

# the API server: start, serve requests of each kind (and a watch), stop with SIGTERM
D=$(mktemp -d /tmp/vmsnap-vg.XXXXXX)
"$VG" --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect --log-file="$D/vg.log" \
	"$V" serve --data "$D/state" >/dev/null 2>&1 &
vpid=$!
i=0
while [ ! -s "$D/state/kubeconfig" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
url=$(sed -n 's/^ *server: //p' "$D/state/kubeconfig")
C="$url/apis/virtualization.deckhouse.io/v1alpha2/namespaces/default/virtualdisksnapshots"
J='Content-Type: application/json'
curl -s -m 30 "$url/version" >/dev/null
curl -s -m 30 -H "$J" -d '{"apiVersion":"virtualization.deckhouse.io/v1alpha2","kind":"VirtualDiskSnapshot","metadata":{"name":"a"},"spec":{"virtualDiskName":"d"}}' "$C" >/dev/null
curl -s -m 30 -X PATCH -H 'Content-Type: application/merge-patch+json' -d '{"metadata":{"labels":{"x":"y"}}}' "$C/a" >/dev/null
curl -s -m 30 -H 'Accept: application/json;as=Table;v=v1;g=meta.k8s.io' "$C" >/dev/null
curl -s -m 30 -H "$J" -d '{' "$C" >/dev/null
curl -s -m 5 "$C?watch=true&timeoutSeconds=1" >/dev/null
curl -s -m 30 "$url/openapi/v3" >/dev/null
curl -s -m 30 -X DELETE "$C/a" >/dev/null
# the client commands against it (vmsnap.k8s: discovery, Table, apply)
export KUBECONFIG="$D/state/kubeconfig"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: vg}\ndata: {a: b}\n' > "$D/cm.yaml"
run "apply" 0 apply -f "$D/cm.yaml"
run "get" 0 get configmap -A
run "get missing" 1 get configmap nope
# the hook and restore commands (a hook against a VM object; a refused webhook is a failed handler)
printf 'apiVersion: virtualization.deckhouse.io/v1alpha2\nkind: VirtualMachine\nmetadata: {name: vg}\nspec: {runPolicy: AlwaysOff, blockDeviceRefs: [{kind: VirtualDisk, name: d}]}\n' > "$D/vm.yaml"
run "apply vm" 0 apply -f "$D/vm.yaml"
run "hook list" 0 hook list --vm vg
run "hook test" 1 hook test "$SRC/scripts/hooks/webhook.lua" --vm vg --point post_snapshot --param 'url="http://127.0.0.1:1/x"'
run "restore vm dry-run of a missing snapshot" 1 restore vm --from nope --dry-run
run "workflow show" 0 workflow show vm-snapshot
run "workflow list" 0 workflow list
unset KUBECONFIG
kill -TERM $vpid
wait $vpid
rc=$?
if [ $rc -ne 0 ] || [ -s "$D/vg.log" ]; then
	echo "not ok - serve (exit $rc, expected 0: a service stopped by a signal)"
	sed 's/^/  # /' "$D/vg.log"
	fail=1
else
	echo "ok - serve (exit $rc)"
fi
rm -rf "$D"
exit $fail
