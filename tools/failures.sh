#!/bin/sh
# After a failed `make check`: each failed spec's failing tests and their
# first lines, last, where a truncated CI log still shows them.
# usage: tools/failures.sh BUILD_DIR
log="$1/Testing/Temporary/LastTest.log"
[ -f "$log" ] || exit 0
echo "=== failed tests (from $log) ==="
awk '
  /^[0-9]+\/[0-9]+ Testing: / { spec = $3 }
  /^not ok / { print spec ": " $0; n = 8; first = 1; next }
  # the first detail line (the message of the assertion: what the object showed)
  # whole, in pieces of 300 up to 6,000 characters; the traceback cut short
  n > 0 && /^  # / {
    if (first) { for (i = 1; i <= length($0) && i <= 6000; i += 300) print "    " substr($0, i, 300) }
    else print "    " substr($0, 1, 200)
    first = 0; n--; next
  }
  { n = 0 }
' "$log"
