#!/bin/sh
# Build the libFuzzer target for the guest-agent reply framer with clang and
# run it for a while (default 10 s).  Skips (exit 77) when clang or libFuzzer
# is missing.  usage: tests/fuzz/run.sh BUILD_DIR [SECONDS]
set -u
BUILD=$1
SECONDS_=${2:-10}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC="$HERE/../.."
command -v clang >/dev/null 2>&1 || { echo "skip: clang is not installed"; exit 77; }
OUT="$BUILD/fuzz"
mkdir -p "$OUT/corpus"
if ! clang -g -O1 -fsanitize=fuzzer,address,undefined -I "$SRC/runtime/src/core" \
	"$SRC/runtime/src/core/qgaframe.c" "$HERE/qgaframe_fuzz.c" -o "$OUT/qgaframe_fuzz" 2>"$OUT/build.log"; then
	if grep -q "fuzzer" "$OUT/build.log"; then
		echo "skip: clang has no libFuzzer here"; cat "$OUT/build.log"; exit 77
	fi
	cat "$OUT/build.log"; exit 1
fi
# the seed corpus is read-only input; new inputs go to the build directory
"$OUT/qgaframe_fuzz" -max_total_time="$SECONDS_" -max_len=4096 -timeout=5 \
	"$OUT/corpus" "$HERE/corpus" 2>"$OUT/fuzz.log"
rc=$?
tail -3 "$OUT/fuzz.log"
exit $rc
