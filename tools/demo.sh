#!/bin/sh
# `make demo`: the runtime tour, then the embedded API server with the real
# kubectl running the user guide's commands against it.
set -eu
BUILD=${1:-build}
V="$BUILD/vmsnap"
"$V" scripts/examples/runtime-tour.lua tests/data/user-guide-manifests.yaml

echo
echo "== the local API server (vmsnap serve) and kubectl"
DATA=$(mktemp -d /tmp/vmsnap-demo.XXXXXX)
"$V" serve --data "$DATA" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$DATA"' EXIT INT TERM
i=0
while [ ! -s "$DATA/kubeconfig" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
export KUBECONFIG="$DATA/kubeconfig"
k() { echo "\$ kubectl $*"; kubectl --cache-dir "$DATA/kube-cache" "$@"; }
k get volumesnapshotclasses
echo "\$ kubectl apply -f - <<EOF ... (the user guide's VirtualDiskSnapshot)"
kubectl --cache-dir "$DATA/kube-cache" apply -f - <<'YAML'
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata:
  name: linux-vm-root-snapshot
spec:
  requiredConsistency: true
  virtualDiskName: linux-vm-root
  volumeSnapshotClassName: sds-replicated-volume
YAML
k get vdsnapshot
k patch vdsnapshot linux-vm-root-snapshot --subresource=status --type=merge -p '{"status":{"phase":"Ready","consistent":true}}'
k get vdsnapshot
k patch vdsnapshot linux-vm-root-snapshot --type=merge -p '{"spec":{"virtualDiskName":"other"}}' || true
k apply -f tests/data/user-guide-manifests.yaml
k get virtualization
echo "(the snapshot controllers that move these objects through their phases come with the local platform)"
