#!/bin/sh
# Run every benchmark and print its figures.  usage: tests/bench/run.sh [BUILD_DIR]
set -eu
BUILD=${1:-build}
HERE=$(cd "$(dirname "$0")" && pwd)
V="$BUILD/vmsnap"
export VMSNAP_BUILD_DIR="$BUILD" VMSNAP_SOURCE_DIR="$HERE/../.."
# each bench adds its figures for the closing table (summary.lua)
VMSNAP_BENCH_ROWS=$(mktemp)
export VMSNAP_BENCH_ROWS
trap 'rm -f "$VMSNAP_BENCH_ROWS"' EXIT
echo "== startup"
sh "$HERE/startup.sh" "$V"
echo "== tasks"
"$V" "$HERE/tasks.lua"
echo "== http"
"$V" --path "$HERE/../harness" "$HERE/http.lua"
echo "== apiserver"
"$V" --path "$HERE/../harness" "$HERE/apiserver.lua"
echo "== large answers: status writes, a watch replay, a LIST of 100k ConfigMaps"
"$V" --path "$HERE/../harness" "$HERE/list_watch.lua"
echo "== k8s client (vmsnap.k8s vs python3-kubernetes)"
"$V" --path "$HERE/../harness" "$HERE/k8s_client.lua"
echo "== guest agent (freeze -> thaw through a real qemu-ga)"
"$V" --path "$HERE/../harness" "$HERE/guest.lua"
echo "== the local platform's disk snapshots"
"$V" --path "$HERE/../harness" "$HERE/disk_snapshot.lua"
echo "== the local platform's VM snapshots and restores (4 disks, a real agent)"
"$V" --path "$HERE/../harness" "$HERE/vm_snapshot.lua"
echo "== scaling: the API server at 1k, 10k, 100k objects; bursts of snapshots up to 10,000 stored"
"$V" --path "$HERE/../harness" "$HERE/scaling.lua"
echo "== durability, concurrency and crash recovery (kill -9s)"
"$V" --path "$HERE/../harness" "$HERE/durability.lua"
"$V" "$HERE/summary.lua" "$VMSNAP_BENCH_ROWS"
