#!/bin/sh
# The controller's container image, from Debian packages and this tree,
# without a container registry (deploy/Containerfile needs one for its base):
#   1. vmsnap built for /usr in build-image/ and installed into a staging tree;
#   2. mmdebstrap makes a Debian root filesystem of the packages the
#      Containerfile's runtime stage installs, and copies the staging tree in;
#   3. podman imports it with the Containerfile's USER, ENTRYPOINT and CMD.
# usage: tools/image.sh [TAG]   (default localhost/vmsnap:latest)
# Prints the image's tag and size. Needs root, mmdebstrap and podman
# (tools/deps.sh image installs them).
set -eu
TAG=${1:-localhost/vmsnap:latest}
SUITE=${VMSNAP_IMAGE_SUITE:-bookworm}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$HERE/build-image"
W=$(mktemp -d /tmp/vmsnap-image.XXXXXX)
trap 'rm -rf "$W"' EXIT INT TERM

echo "image: building vmsnap for /usr in $BUILD"
cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
DESTDIR="$W/stage" cmake --install "$BUILD" >/dev/null

echo "image: the root filesystem ($SUITE, Debian packages only)"
mmdebstrap --quiet --variant=essential --mode=root \
	--include=liblua5.4-0,lua-cjson,libyaml-0-2,libcurl4,libuv1,libmicrohttpd12,libsqlite3-0,ca-certificates \
	--customize-hook="sync-in $W/stage /" \
	--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*' \
	--customize-hook='mkdir -p "$1"/etc/vmsnap/scripts "$1"/var/run/secrets/kubernetes.io/serviceaccount' \
	"$SUITE" "$W/rootfs.tar"

echo "image: importing as $TAG"
podman import --quiet \
	--change 'USER 65532:65532' \
	--change 'ENTRYPOINT ["/usr/bin/vmsnap"]' \
	--change 'CMD ["controller"]' \
	"$W/rootfs.tar" "$TAG" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$TAG")
echo "image: $TAG, $((size / 1024 / 1024)) MiB ($size bytes)"
