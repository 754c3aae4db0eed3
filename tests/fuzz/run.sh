#!/bin/sh
# Build the libFuzzer targets with clang (ASan+UBSan, a build of its own in
# BUILD_DIR/fuzz/build) and run each for a while: first every seed input
# (tests/fuzz/corpus/TARGET, plus the regression inputs of ../shared/repro
# when that directory is beside the clone), then new inputs for SECONDS.
# A crash, a sanitizer report or a broken invariant fails the run; the input
# is kept in BUILD_DIR/fuzz/artifacts. Skips (exit 77) without clang or
# libFuzzer.
#   usage: tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET [TARGET...]]
set -u
BUILD=$(cd "$1" && pwd)
shift
SECS=8
if [ $# -gt 0 ]; then SECS=$1; shift; fi
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
TARGETS=${*:-"yaml json emit cel kubeconfig selectors patch quantity http qgaframe"}
command -v clang >/dev/null 2>&1 || { echo "skip: clang is not installed"; exit 77; }
OUT="$BUILD/fuzz"
mkdir -p "$OUT/artifacts" "$OUT/seeds"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
if [ ! -f "$OUT/build/CMakeCache.txt" ]; then
	if ! CC=clang cmake -S "$SRC" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Debug -DVMSNAP_FUZZ=ON \
		-DVMSNAP_BUILD_CLI=OFF -DVMSNAP_BUILD_SHARED=OFF -DVMSNAP_BUILD_PLUGINS=OFF \
		-DVMSNAP_BUILD_TESTS=OFF >"$OUT/configure.log" 2>&1; then
		cat "$OUT/configure.log"; exit 1
	fi
fi
if ! cmake --build "$OUT/build" -j 2 --target lua_fuzz qgaframe_fuzz >"$OUT/build.log" 2>&1; then
	if grep -q "libclang_rt.fuzzer\|fsanitize=fuzzer" "$OUT/build.log"; then
		echo "skip: clang has no libFuzzer here (install libclang-rt-dev)"; tail -5 "$OUT/build.log"; exit 77
	fi
	cat "$OUT/build.log"; exit 1
fi
# the regression inputs beside the clone (test data; not part of the repository)
REPRO="$SRC/../shared/repro"
if [ -d "$REPRO" ]; then
	mkdir -p "$OUT/seeds/http" "$OUT/seeds/kubeconfig"
	for f in "$REPRO"/http-*.bin; do [ -f "$f" ] && cp "$f" "$OUT/seeds/http/"; done
	for f in "$REPRO"/kubeconfig-*; do [ -f "$f" ] && cp "$f" "$OUT/seeds/kubeconfig/"; done
fi
failed=0
for t in $TARGETS; do
	mkdir -p "$OUT/corpus/$t"
	dirs="$OUT/corpus/$t $HERE/corpus/$t"
	[ -d "$OUT/seeds/$t" ] && dirs="$dirs $OUT/seeds/$t"
	if [ "$t" = qgaframe ]; then
		exe="$OUT/build/qgaframe_fuzz"
	else
		exe="$OUT/build/lua_fuzz"
	fi
	# shellcheck disable=SC2086
	VMSNAP_FUZZ_TARGET=$t VMSNAP_FUZZ_TARGETS="$HERE/targets.lua" "$exe" -max_total_time="$SECS" \
		-max_len=8192 -timeout=10 -rss_limit_mb=3072 -detect_leaks=0 \
		-artifact_prefix="$OUT/artifacts/$t-" $dirs >"$OUT/$t.log" 2>&1
	rc=$?
	last=$(grep -E "^#[0-9]+" "$OUT/$t.log" | tail -1)
	echo "fuzz $t: ${last:-no runs} (exit $rc)"
	if [ $rc -ne 0 ]; then
		failed=$((failed + 1))
		tail -40 "$OUT/$t.log"
		ls -1 "$OUT/artifacts/$t-"* 2>/dev/null
	fi
done
exit $failed
