#!/bin/sh
# `make demo`: the runtime tour, then the local platform (vmsnap up) with the
# real kubectl running the user guide's disk snapshot and restore, then its VM
# snapshot and restore (under new names, next to the original), with proofs
# that the restored disks hold exactly the data at snapshot time.
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
kind: VirtualDisk
metadata: {name: blank-disk}
spec:
  persistentVolumeClaim: {size: 16Mi, storageClassName: i-linstor-thin-r2}
---
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachine
metadata: {name: linux-vm}
spec:
  runPolicy: AlwaysOn
  blockDeviceRefs: [{kind: VirtualDisk, name: linux-vm-root}]
---
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineBlockDeviceAttachment
metadata: {name: attach-blank-disk}
spec:
  virtualMachineName: linux-vm
  blockDeviceRef: {kind: VirtualDisk, name: blank-disk}
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
DISK_SUMMARY="$(kq -n demo get vdsnapshot linux-vm-root-snapshot -o jsonpath='{.metadata.annotations.vmsnap\.io/freeze-duration-ms}')"

echo
echo "== the whole VM: the user guide's VirtualMachineSnapshot and VirtualMachineRestore"
kq -n demo wait --for=jsonpath='{.status.phase}'=Attached vmbda/attach-blank-disk --timeout=60s >/dev/null
volume_of() { # the file behind a disk of the local platform
	_pvc=$(kq -n demo get vd "$1" -o jsonpath='{.status.target.persistentVolumeClaimName}')
	_pv=$(kq -n demo get pvc "$_pvc" -o jsonpath='{.spec.volumeName}')
	kq get pv "$_pv" -o jsonpath='{.spec.csi.volumeHandle}'
}
BLANK=$(volume_of blank-disk)
printf 'blank disk at VM snapshot time' | dd of="$BLANK" conv=notrunc status=none
[ -n "$AGENT" ] && echo "data written before the VM snapshot" > "$ROOT/marker" && sync
echo "\$ kubectl apply -f - <<EOF ... (the user guide's VirtualMachineSnapshot)"
kq -n demo apply -f - <<'YAML'
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineSnapshot
metadata:
  name: linux-vm-snapshot
spec:
  virtualMachineName: linux-vm
  volumeSnapshotClasses:
    - storageClassName: i-linstor-thin-r2
      volumeSnapshotClassName: sds-replicated-volume
  requiredConsistency: true
  keepIPAddress: Never
YAML
kq -n demo wait --for=jsonpath='{.status.phase}'=Ready vmsnapshot/linux-vm-snapshot --timeout=60s
k -n demo get vmsnapshot,vdsnapshot
printf 'BLANK DISK CHANGED LATER........' | dd of="$BLANK" conv=notrunc status=none
[ -n "$AGENT" ] && echo "data written after the VM snapshot" > "$ROOT/marker" && sync
echo "\$ kubectl apply -f - <<EOF ... (the user guide's VirtualMachineRestore with its nameReplacements)"
kq -n demo apply -f - <<'YAML'
apiVersion: virtualization.deckhouse.io/v1alpha2
kind: VirtualMachineRestore
metadata:
  name: linux-vm-restore
spec:
  virtualMachineSnapshotName: linux-vm-snapshot
  nameReplacements:
    - from:
        kind: VirtualMachine
        name: linux-vm
      to: linux-vm-2
    - from:
        kind: VirtualDisk
        name: linux-vm-root
      to: linux-vm-root-2
    - from:
        kind: VirtualDisk
        name: blank-disk
      to: blank-disk-2
    - from:
        kind: VirtualMachineBlockDeviceAttachment
        name: attach-blank-disk
      to: attach-blank-disk-2
YAML
kq -n demo wait --for=jsonpath='{.status.phase}'=Ready vmrestore/linux-vm-restore --timeout=60s
kq -n demo wait --for=jsonpath='{.status.phase}'=Ready vd/linux-vm-root-2 vd/blank-disk-2 --timeout=60s >/dev/null
kq -n demo wait --for=jsonpath='{.status.phase}'=Attached vmbda/attach-blank-disk-2 --timeout=60s >/dev/null
k -n demo get vmrestore
k -n demo get vm,vd,vmip,vmbda
GOT=$(dd if="$(volume_of blank-disk-2)" bs=30 count=1 status=none)
echo "the restored blank-disk-2 says: \"$GOT\""
[ "$GOT" = "blank disk at VM snapshot time" ] || { echo "demo: the restored blank disk is wrong" >&2; exit 1; }
if [ -n "$AGENT" ]; then
	kq -n demo wait --for=jsonpath='{.status.phase}'=Running vm/linux-vm-2 --timeout=60s >/dev/null
	ROOT2=$(kq -n demo get vm linux-vm-2 -o jsonpath='{.metadata.annotations.vmsnap\.io/freeze-mountpoints}' | sed 's/^\["//; s/"\]$//')
	i=0
	while [ ! -f "$ROOT2/marker" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	GOT=$(cat "$ROOT2/marker")
	echo "the restored VM linux-vm-2 (its own agent: $(kq -n demo get vm linux-vm-2 -o jsonpath='{.metadata.annotations.vmsnap\.io/agent}')) reads: \"$GOT\""
	[ "$GOT" = "data written before the VM snapshot" ] || { echo "demo: the restored VM's data is wrong" >&2; exit 1; }
fi
echo
echo "summary: a consistent snapshot of a running VM's disk (frozen through its real guest agent,"
echo "thawed at the cut: $DISK_SUMMARY ms), restored to a new disk that holds exactly the data at snapshot time;"
echo "then the whole VM ($(kq -n demo get vmsnapshot linux-vm-snapshot -o jsonpath='{.status.virtualDiskSnapshotNames}' | tr -cd ',' | wc -c | awk '{print $1 + 1}') disks under one freeze of $(kq -n demo get vmsnapshot linux-vm-snapshot -o jsonpath='{.metadata.annotations.vmsnap\.io/freeze-duration-ms}') ms, consistent: $(kq -n demo get vmsnapshot linux-vm-snapshot -o jsonpath='{.status.consistent}')),"
echo "restored under new names next to the original, with the data at snapshot time."
