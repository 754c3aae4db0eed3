#!/bin/sh
# After a failed `make check`: each failed spec's failing tests and their
# first lines, last, where a truncated CI log still shows them.
# usage: tools/failures.sh BUILD_DIR
log="$1/Testing/Temporary/LastTest.log"
[ -f "$log" ] || exit 0
echo "=== failed tests (from $log) ==="
awk '
  /^[0-9]+\/[0-9]+ Testing: / { spec = $3 }
  /^not ok / { print spec ": " $0; n = 8; next }
  n > 0 && /^  # / { print "    " substr($0, 1, 400); n--; next }
  { n = 0 }
' "$log"
