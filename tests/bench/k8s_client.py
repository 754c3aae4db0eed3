# The Python Kubernetes client (Debian's python3-kubernetes) making the same
# calls as tests/bench/k8s_client.lua: 2,000 GETs and 500 merge PATCHes of
# ConfigMaps.  usage: python3 k8s_client.py KUBECONFIG [THREADS]
# With THREADS > 1 the calls go through the client's own thread pool
# (async_req=True), the way it runs requests concurrently.
import sys
from kubernetes import client, config

# python3-kubernetes 22 sends every patch as the first type it knows
# (json-patch); pick merge-patch, the usual workaround
_orig = client.ApiClient.select_header_content_type
def _merge_first(self, types):
    if 'application/merge-patch+json' in types:
        return 'application/merge-patch+json'
    return _orig(self, types)
client.ApiClient.select_header_content_type = _merge_first

config.load_kube_config(config_file=sys.argv[1])
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
if threads > 1:
    v1 = client.CoreV1Api(client.ApiClient(pool_threads=threads))
    # the connection pool must be as large as the thread pool
    v1.api_client.rest_client.pool_manager.connection_pool_kw['maxsize'] = threads
    gets = [v1.read_namespaced_config_map("bench-%03d" % (i % 500), "default", async_req=True) for i in range(2000)]
    for g in gets:
        g.get()
    patches = [v1.patch_namespaced_config_map("bench-%03d" % i, "default",
               {"metadata": {"labels": {"py": str(i)}}}, async_req=True) for i in range(500)]
    for p in patches:
        p.get()
else:
    v1 = client.CoreV1Api()
    for i in range(2000):
        v1.read_namespaced_config_map("bench-%03d" % (i % 500), "default")
    for i in range(500):
        v1.patch_namespaced_config_map("bench-%03d" % i, "default", {"metadata": {"labels": {"py": str(i)}}})
