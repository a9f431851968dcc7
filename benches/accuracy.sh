#!/usr/bin/env bash
# Accuracy of a rate limit under overload (issue 3): how many requests does a `key: global`
# limit admit when wrk offers far more than it allows, compared with `rate × seconds + burst`?
#
#   benches/accuracy.sh                      # rate 1000/s, burst 100, wrk -t2 -c64 -d10s
#   RATE=3000 BURST=100 DURATION=10 benches/accuracy.sh
#
# What it does, all on 127.0.0.1, everything it starts stopped by PID on exit:
#   1. `cargo build --release` (BUILD=0 skips it; SLUICE_BIN overrides target/release/sluice);
#   2. an NGINX upstream answering `return 200` (throwaway config in a temp dir);
#   3. sluice with one route and one `key: global` limit (RATE/s, burst BURST), admin listener on;
#   4. reads `sluice_requests_total{route="accuracy",outcome="forwarded"}` from /metrics, runs
#      wrk for DURATION s (its done() hook prints the exact duration and counts), reads it again;
#   5. admitted = the counter's increase; expected = RATE × wrk's measured duration + BURST
#      (the bucket starts full: nothing is sent through sluice before wrk); error in %.
# wrk's own 2xx count (requests - non-2xx) is printed as a cross-check: it can differ from the
# counter by the requests in flight when wrk stops (at most CONNS).
#
# Knobs (defaults): RATE=1000 BURST=100 DURATION=10 THREADS=2 CONNS=64 WORKERS=1 (sluice
# workers: leaves the other core to wrk and NGINX on a 2-core machine) UP_PORT=18291
# PROXY_PORT=18292 ADMIN_PORT=18293 BUILD=1. Needs nginx, wrk, curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RATE=${RATE:-1000}; BURST=${BURST:-100}; DURATION=${DURATION:-10}
THREADS=${THREADS:-2}; CONNS=${CONNS:-64}; WORKERS=${WORKERS:-1}
UP_PORT=${UP_PORT:-18291}; PROXY_PORT=${PROXY_PORT:-18292}; ADMIN_PORT=${ADMIN_PORT:-18293}
BIN=${SLUICE_BIN:-target/release/sluice}
ROUTE=accuracy

source benches/lib.sh
require_tools accuracy.sh nginx wrk curl
require_free_ports accuracy.sh "$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT"

scratch sluice-accuracy

build_sluice

# The upstream: NGINX, one worker, 200 "ok".
nginx_upstream "$UP_PORT"

# --- sluice: one route, one global limit.
{
  sluice_config_head
  cat <<EOF
routes:
  - name: $ROUTE
    upstream: api
    rate_limits:
      - name: global
        key: global
        rate: $RATE/s
        burst: $BURST
EOF
} >"$WORK/sluice.yaml"
start_sluice
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" ||
  { echo "accuracy.sh: sluice did not come up:" >&2; cat "$WORK/sluice.log" >&2; exit 1; }

forwarded() {
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk -v m="sluice_requests_total{route=\"$ROUTE\",outcome=\"forwarded\"}" \
      '$1 == m { n = $2 } END { print n + 0 }'
}

# wrk's done() hook: exact duration and counts (no response() hook: it would slow wrk down).
cat >"$WORK/done.lua" <<'EOF'
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("WRK requests=%d duration_us=%d non2xx=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout))
end
EOF

before=$(forwarded)
t0=$(date +%s.%N)
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$WORK/done.lua" "http://127.0.0.1:$PROXY_PORT/" | tee "$WORK/wrk.out"
t1=$(date +%s.%N)
after=$(forwarded)
line=$(grep '^WRK ' "$WORK/wrk.out")
field() { sed -n "s/.* $1=\([0-9-]*\).*/\1/p" <<<" $line"; }
requests=$(field requests); duration_us=$(field duration_us); non2xx=$(field non2xx)

awk -v rate="$RATE" -v burst="$BURST" -v before="$before" -v after="$after" \
  -v requests="$requests" -v dus="$duration_us" -v non2xx="$non2xx" -v t0="$t0" -v t1="$t1" \
  -v conns="$CONNS" -v threads="$THREADS" 'BEGIN {
  secs = dus / 1e6
  admitted = after - before
  expected = rate * secs + burst
  offered = requests / secs
  printf "\naccuracy: key: global, rate %d/s, burst %d; wrk -t%d -c%d, measured duration %.3f s\n", rate, burst, threads, conns, secs
  printf "  offered          %.0f req/s = %.1fx the limit (%d responses)\n", offered, offered / rate, requests
  printf "  admitted         %d (sluice_requests_total forwarded, +%d between scrapes %.2f s apart)\n", admitted, admitted, t1 - t0
  printf "  wrk 2xx          %d (requests - non-2xx; cross-check)\n", requests - non2xx
  printf "  expected         %.0f = %d/s x %.3f s + %d\n", expected, rate, secs, burst
  err = 100 * (admitted - expected) / expected
  printf "  error            %+.2f%% (target within +-2%%: %s)\n", err, (err <= 2 && err >= -2) ? "met" : "MISSED"
}'
