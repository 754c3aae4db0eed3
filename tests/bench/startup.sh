#!/bin/sh
# Startup of `vmsnap -e ''`: median wall time over 51 runs and peak RSS.
# Targets (issue 2): median under 10 ms, RSS under 8 MB — met by a -DVMSNAP_LAZY_LIBS=ON
# build (2.6 ms, 3 MB); a default build links libcurl and libmicrohttpd (10 ms, 9 MB:
# docs/lua-api.md).
set -eu
V=${1:-build/vmsnap}
N=51
times=$(for i in $(seq $N); do
	s=$(date +%s%N)
	"$V" -e ''
	e=$(date +%s%N)
	echo $(( (e - s) / 1000 ))
done | sort -n)
median=$(echo "$times" | sed -n "$(( (N + 1) / 2 ))p")
min=$(echo "$times" | head -1)
rss=$(/usr/bin/env time -f '%M' "$V" -e '' 2>&1 >/dev/null | tail -1) || rss=""
if [ -z "$rss" ]; then
	rss=$("$V" -e 'local f = io.open("/proc/self/status") for l in f:lines() do local v = l:match("^VmHWM:%s*(%d+)") if v then print(v) end end')
fi
printf 'startup: median %d.%03d ms (min %d.%03d ms) over %d runs\n' $((median / 1000)) $((median % 1000)) $((min / 1000)) $((min % 1000)) $N
printf 'startup: peak RSS %d KiB (%.1f MB)\n' "$rss" "$(echo "$rss" | awk '{print $1/1024}')"
