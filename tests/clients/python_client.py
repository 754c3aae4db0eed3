# The Python Kubernetes client (Debian's python3-kubernetes) against
# `vmsnap serve`, as its users call it: typed CRUD of ConfigMaps, the dynamic
# client on a custom resource, Watch.stream with resourceVersion and a
# timeout, DynamicClient.watch, and server-side apply with force.
# usage: python3 python_client.py KUBECONFIG
# Prints "ok NAME" per step; the first failure raises (exit 1).
import json
import sys
import time

from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
api = client.ApiClient()
v1 = client.CoreV1Api(api)
NS = "default"


def ok(name):
    print("ok " + name, flush=True)


# typed CRUD
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"from": "python"}), data={"a": "1"})
created = v1.create_namespaced_config_map(NS, cm)
assert created.metadata.uid, created
got = v1.read_namespaced_config_map("py-cm", NS)
assert got.data == {"a": "1"}, got.data
got.data["a"] = "2"
replaced = v1.replace_namespaced_config_map("py-cm", NS, got)
assert replaced.data["a"] == "2"
got.metadata.resource_version = created.metadata.resource_version
try:
    v1.replace_namespaced_config_map("py-cm", NS, got)
    raise AssertionError("a stale resourceVersion was accepted")
except ApiException as e:
    assert e.status == 409, e.status
listed = v1.list_namespaced_config_map(NS, label_selector="from=python")
assert [i.metadata.name for i in listed.items] == ["py-cm"], listed.items
ok("typed crud")

# Watch.stream with resourceVersion and timeout_seconds (the client sends watch=True)
rv = listed.metadata.resource_version
w = watch.Watch()
seen = []
v1.patch_namespaced_config_map("py-cm", NS, {"data": {"a": "3"}})
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="from=python",
                   resource_version=rv, timeout_seconds=5):
    seen.append((ev["type"], ev["object"].data.get("a")))
    if ev["object"].data.get("a") == "3":
        w.stop()
assert ("MODIFIED", "3") in seen, seen
ok("watch stream")

# the watch ends by itself at timeout_seconds
t0 = time.time()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector="from=nobody", timeout_seconds=2):
    pass
assert time.time() - t0 < 10, time.time() - t0
ok("watch timeout")

# the dynamic client on a custom resource
dyn = dynamic.DynamicClient(api)
vds = dyn.resources.get(api_version="virtualization.deckhouse.io/v1alpha2", kind="VirtualDiskSnapshot")
body = {"apiVersion": "virtualization.deckhouse.io/v1alpha2", "kind": "VirtualDiskSnapshot",
        "metadata": {"name": "py-snap"}, "spec": {"virtualDiskName": "py-disk"}}
made = vds.create(body=body, namespace=NS)
assert made.metadata.name == "py-snap"
assert vds.get(name="py-snap", namespace=NS).spec.virtualDiskName == "py-disk"
names = [i.metadata.name for i in vds.get(namespace=NS).items]
assert "py-snap" in names, names
patched = vds.patch(name="py-snap", namespace=NS, body={"metadata": {"labels": {"p": "y"}}},
                    content_type="application/merge-patch+json")
assert patched.metadata.labels["p"] == "y"
ok("dynamic crud")

# DynamicClient.watch
events = []
for ev in dyn.watch(vds, namespace=NS, timeout=3):
    events.append(ev["type"])
    if ev["object"].metadata.name == "py-snap":
        break
assert events and events[0] == "ADDED", events
ok("dynamic watch")

# server-side apply: a conflict, then force=True takes the field (version 22
# sends an apply body only when it is given as text, with the name)
cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-apply"}, "data": {"k": "first"}}


def apply(manager, force=None):
    return cms.server_side_apply(body=json.dumps(doc), name="py-apply", namespace=NS,
                                 field_manager=manager, force_conflicts=force)


apply("py-one")
doc["data"]["k"] = "second"
try:
    apply("py-two")
    raise AssertionError("a field owned by another manager was taken without force")
except ApiException as e:
    assert e.status == 409, e.status
res = apply("py-two", True)
assert res.data["k"] == "second", res.data
ok("server-side apply force")

vds.delete(name="py-snap", namespace=NS)
v1.delete_namespaced_config_map("py-cm", NS)
try:
    v1.read_namespaced_config_map("py-cm", NS)
    raise AssertionError("deleted but still there")
except ApiException as e:
    assert e.status == 404, e.status
ok("delete")
