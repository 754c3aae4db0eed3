#!/bin/sh
# `make demo`: the runtime tour, then the local platform (vmsnap up) with the
# real kubectl running the user guide's disk snapshot and restore, and a proof
# that the restored disk holds exactly the data at snapshot time.
# Exits 0 only if all of it held.
set -eu
BUILD=${1:-build}
V="$BUILD/vmsnap"
"$V" scripts/examples/runtime-tour.lua tests/data/user-guide-manifests.yaml

echo
echo "== the local platform (vmsnap up) and kubectl"
DATA=$(mktemp -d /tmp/vmsnap-demo.XXXXXX)
"$V" up --data "$DATA" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$DATA"' EXIT INT TERM
i=0
while [ ! -s "$DATA/kubeconfig" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
export KUBECONFIG="$DATA/kubeconfig"
k() { echo "\$ kubectl $*"; kubectl --cache-dir "$DATA/kube-cache" "$@"; }
kq() { kubectl --cache-dir "$DATA/kube-cache" "$@"; }

k create namespace demo
kq -n demo apply -f - <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: i-linstor-thin-r2}
provisioner: local.vmsnap.io
allowVolumeExpansion: true
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: sds-replicated-volume}
driver: local.vmsnap.io
deletionPolicy: Delete
---
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDisk
metadata: {name: linux-vm-root}
spec:
  persistentVolumeClaim: {size: 64Mi, storageClassName: i-linstor-thin-r2}
---
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachine
metadata: {name: linux-vm}
spec:
  runPolicy: AlwaysOn
  blockDeviceRefs: [{kind: VirtualDisk, name: linux-vm-root}]
YAML
kq -n demo wait --for=jsonpath='{.status.phase}'=Running vm/linux-vm --timeout=60s >/dev/null
k -n demo get vd,vm
AGENT=$(kq -n demo get vm linux-vm -o jsonpath='{.metadata.annotations.vmsnap\.io/agent}')
ROOT=$(kq -n demo get vm linux-vm -o jsonpath='{.metadata.annotations.vmsnap\.io/freeze-mountpoints}' | sed 's/^\["//; s/"\]$//')
if [ -n "$AGENT" ]; then
	echo "the VM's guest agent: $AGENT (its root disk is mounted at $ROOT)"
	echo "data written before the snapshot" > "$ROOT/marker"
	sync
else
	echo "(no loop mounts here: the VM runs without an agent; it is stopped so that the snapshot is consistent)"
	kq -n demo patch vm linux-vm --type=merge -p '{"spec":{"runPolicy":"AlwaysOff"}}' >/dev/null
	kq -n demo wait --for=jsonpath='{.status.phase}'=Stopped vm/linux-vm --timeout=60s >/dev/null
fi
k get volumesnapshotclasses
echo "\$ kubectl apply -f - <<EOF ... (the user guide's VirtualDiskSnapshot)"
kq -n demo apply -f - <<'YAML'
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDiskSnapshot
metadata:
  name: linux-vm-root-snapshot
spec:
  requiredConsistency: true
  virtualDiskName: linux-vm-root
  volumeSnapshotClassName: sds-replicated-volume
YAML
kq -n demo wait --for=jsonpath='{.status.phase}'=Ready vdsnapshot/linux-vm-root-snapshot --timeout=60s
k -n demo get vdsnapshot
[ -n "$AGENT" ] && echo "data written after the snapshot" > "$ROOT/marker" && sync
echo "\$ kubectl apply -f - <<EOF ... (the user guide's VirtualDisk from the snapshot, named linux-vm-root-restored)"
kq -n demo apply -f - <<'YAML'
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualDisk
metadata:
  name: linux-vm-root-restored
spec:
  persistentVolumeClaim:
    size: 64Mi
    storageClassName: i-linstor-thin-r2
  dataSource:
    type: ObjectRef
    objectRef:
      kind: VirtualDiskSnapshot
      name: linux-vm-root-snapshot
YAML
kq -n demo wait --for=jsonpath='{.status.phase}'=Ready vd/linux-vm-root-restored --timeout=60s
k -n demo get vd
if [ -n "$AGENT" ]; then
	PVC=$(kq -n demo get vd linux-vm-root-restored -o jsonpath='{.status.target.persistentVolumeClaimName}')
	PV=$(kq -n demo get pvc "$PVC" -o jsonpath='{.spec.volumeName}')
	IMG=$(kq get pv "$PV" -o jsonpath='{.spec.csi.volumeHandle}')
	e2fsck -fy "$IMG" >/dev/null 2>&1 || true
	e2fsck -fn "$IMG" >/dev/null 2>&1
	M=$(mktemp -d /tmp/vmsnap-demo-mnt.XXXXXX)
	mount -o loop,ro "$IMG" "$M"
	GOT=$(cat "$M/marker")
	umount "$M"; rmdir "$M"
	echo "the restored disk says: \"$GOT\" (the live disk says: \"$(cat "$ROOT/marker")\")"
	[ "$GOT" = "data written before the snapshot" ] || { echo "demo: the restored data is wrong" >&2; exit 1; }
fi
echo
echo "summary: a consistent snapshot of a running VM's disk (frozen through its real guest agent,"
echo "thawed at the cut: $(kq -n demo get vdsnapshot linux-vm-root-snapshot -o jsonpath='{.metadata.annotations.vmsnap\.io/freeze-duration-ms}') ms), restored to a new disk that holds exactly the data at snapshot time."
