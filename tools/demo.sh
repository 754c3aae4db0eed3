#!/bin/sh
# `make demo`: run the runtime tour on a freshly built vmsnap.
set -eu
BUILD=${1:-build}
exec "$BUILD/vmsnap" scripts/examples/runtime-tour.lua tests/data/user-guide-manifests.yaml
